"""Distributed setup: process group, DeviceMesh, tensor parallelism (DTensor plans, LoRA-aware), FSDP2/DDP,
activation checkpointing and per-layer torch.compile.

Mesh (FSDP2): ``(dp_replicate, dp_shard, tp)`` with ``dp = world / tp`` (cp = pp = 1 here); FSDP2 shards over
``dp_shard`` (HSDP replicates over ``dp_replicate``). A single process also gets a 1-rank group and keeps
FSDP2, so its MixedPrecisionPolicy applies as on N ranks (0.7.0 skips fully_shard on one rank and with it the
policy; see README).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import RunError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we initialised the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str, timeout_minutes: float) -> DistEnv:
    cuda = torch.cuda.is_available()
    use_nccl = cuda and backend == "nccl"
    be = "nccl" if use_nccl else "gloo"
    timeout = timedelta(minutes=max(float(timeout_minutes), 0.1))
    if dist.is_initialized():
        rank, ws = dist.get_rank(), dist.get_world_size()
        lr = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
    elif "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        lr = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(lr)
        dist.init_process_group(be, timeout=timeout,
                                device_id=torch.device("cuda", lr) if use_nccl else None)
        rank, ws, owns = dist.get_rank(), dist.get_world_size(), True
    else:
        lr, rank, ws = 0, 0, 1
        if cuda:
            torch.cuda.set_device(0)
        dist.init_process_group(be, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        owns = True
    device = torch.device("cuda", lr) if cuda else torch.device("cpu")
    return DistEnv(rank=rank, world_size=ws, local_rank=lr, device=device, owns_group=owns)


def destroy(env: DistEnv | None) -> None:
    if env is not None and env.owns_group and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        dist.destroy_process_group()


@dataclass
class Meshes:
    world: Any  # DeviceMesh (dp_replicate, dp_shard, tp)
    dp: Any  # flattened dp mesh (for counts / loss reductions)
    fsdp: Any  # mesh FSDP2 shards over (1-D dp_shard, or 2-D for HSDP)
    tp: Any | None

    @property
    def dp_group(self):
        return self.dp.get_group()

    @property
    def dp_rank(self) -> int:
        return self.dp.get_local_rank()

    @property
    def dp_shard_size(self) -> int:
        return self.world["dp_shard"].size()


def build_meshes(env: DistEnv, dspec) -> Meshes:
    from torch.distributed.device_mesh import init_device_mesh

    shard = dspec.dp // dspec.dp_replicate
    shape = (dspec.dp_replicate, shard, dspec.tp)
    if shape[0] * shape[1] * shape[2] != env.world_size:
        raise RunError(f"world size {env.world_size} does not match dp_replicate*dp_shard*tp = {shape}")
    mesh = init_device_mesh(env.device.type, shape, mesh_dim_names=("dp_replicate", "dp_shard", "tp"))
    dp = mesh["dp_replicate", "dp_shard"]._flatten("dp")
    fsdp = mesh["dp_replicate", "dp_shard"] if dspec.dp_replicate > 1 else mesh["dp_shard"]
    return Meshes(world=mesh, dp=dp, fsdp=fsdp, tp=mesh["tp"] if dspec.tp > 1 else None)


# ----------------------------------------------------------------------------------------------------------------
# Tensor parallelism (Llama-family blocks)
# ----------------------------------------------------------------------------------------------------------------

def _tp_styles():
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    def dist_param(mod: nn.Module, name: str, mesh, placements) -> None:
        p = getattr(mod, name)
        if isinstance(p, DTensor):
            return
        mod.register_parameter(name, nn.Parameter(distribute_tensor(p.data, mesh, placements),
                                                  requires_grad=p.requires_grad))

    class LoraColwise(ColwiseParallel):
        """Base W/b Shard(0); lora_A Shard(0) (rank dim) with its output all-gathered; lora_B Shard(0)."""

        def _partition_linear_fn(self, name, module, device_mesh):
            if name:  # called for every submodule; the root call handles everything
                return
            dist_param(module, "weight", device_mesh, [Shard(0)])
            if module.bias is not None:
                dist_param(module, "bias", device_mesh, [Shard(0)])
            if hasattr(module, "lora_B"):
                if "lora_A" in module._modules:
                    dist_param(module.lora_A, "weight", device_mesh, [Shard(0)])
                dist_param(module.lora_B, "weight", device_mesh, [Shard(0)])

    class LoraRowwise(RowwiseParallel):
        """Base W Shard(1), b Replicate; lora_A Shard(1) (input dim), lora_B Shard(1) (rank dim)."""

        def _partition_linear_fn(self, name, module, device_mesh):
            if name:
                return
            dist_param(module, "weight", device_mesh, [Shard(1)])
            if module.bias is not None:
                dist_param(module, "bias", device_mesh, [Replicate()])
            if hasattr(module, "lora_B"):
                if "lora_A" in module._modules:
                    dist_param(module.lora_A, "weight", device_mesh, [Shard(1)])
                dist_param(module.lora_B, "weight", device_mesh, [Shard(1)])

    return LoraColwise, LoraRowwise


def apply_tp(model: nn.Module, tp_mesh, *, sequence_parallel: bool, lora_dim: int | None) -> None:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (PrepareModuleInput, RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    from .models import decoder_layers

    tp = tp_mesh.size()
    cfg = model.config
    names = {n for n, _ in model.named_modules()}
    needed = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
              "mlp.up_proj", "mlp.down_proj"}
    if not all(f"model.layers.0.{n}" in names for n in needed):
        raise RunError(f"tensor parallelism supports Llama-family blocks (separate q/k/v/o and gate/up/down "
                       f"projections); {type(model).__name__} is not one", key="distributed.tp_size", found=tp,
                       hint="--set distributed.tp_size=1")
    heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    if heads % tp or kv % tp:
        raise RunError(f"attention heads ({heads}) and KV heads ({kv}) must be divisible by tp_size",
                       key="distributed.tp_size", found=tp)
    if lora_dim is not None and lora_dim % tp:
        raise RunError("with tensor parallelism the LoRA rank must be divisible by tp_size", key="peft.dim",
                       found=lora_dim, expected=f"a multiple of {tp}")
    LoraColwise, LoraRowwise = _tp_styles()
    # torch's styles re-create parameters with requires_grad=True (SequenceParallel norms, embeddings): restore the
    # trainability (frozen base under LoRA) afterwards.
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    sp = sequence_parallel
    top = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate(),
                                                 output_layouts=Shard(1) if sp else Replicate())}
    if sp:
        top["model.norm"] = SequenceParallel()
    if head is not None:
        top["lm_head"] = LoraColwise(input_layouts=Shard(1) if sp else Replicate(), output_layouts=Replicate())
    parallelize_module(model, tp_mesh, top)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    for layer in decoder_layers(model):
        plan = {
            "self_attn.q_proj": LoraColwise(), "self_attn.k_proj": LoraColwise(), "self_attn.v_proj": LoraColwise(),
            "self_attn.o_proj": LoraRowwise(output_layouts=Shard(1) if sp else Replicate()),
            "mlp.gate_proj": LoraColwise(), "mlp.up_proj": LoraColwise(),
            "mlp.down_proj": LoraRowwise(output_layouts=Shard(1) if sp else Replicate()),
        }
        if sp:
            plan.update({
                "input_layernorm": SequenceParallel(), "post_attention_layernorm": SequenceParallel(),
                "self_attn": PrepareModuleInput(input_kwarg_layouts={"hidden_states": Shard(1)},
                                                desired_input_kwarg_layouts={"hidden_states": Replicate()},
                                                use_local_output=True),
                "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                          use_local_output=True),
            })
        parallelize_module(layer, tp_mesh, plan)
    for n, p in model.named_parameters():
        if n in trainable:
            p.requires_grad_(trainable[n])


def apply_activation_checkpointing(model: nn.Module) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise RunError(f"{type(model).__name__} does not support activation checkpointing",
                       key="distributed.activation_checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_layers(model: nn.Module, cspec) -> None:
    from .models import decoder_layers

    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                int(getattr(cspec, "dynamo_cache_size_limit", 256) or 256))
    kw = {"fullgraph": cspec.fullgraph, "dynamic": cspec.dynamic}
    if cspec.mode and cspec.mode != "default":
        kw["mode"] = cspec.mode
    if cspec.backend:
        kw["backend"] = cspec.backend
    for layer in decoder_layers(model):
        layer.compile(**kw)


def mp_policy(dspec):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    def t(n):
        return None if n is None else getattr(torch, n)

    return MixedPrecisionPolicy(param_dtype=t(dspec.param_dtype), reduce_dtype=t(dspec.reduce_dtype),
                                output_dtype=t(dspec.output_dtype), cast_forward_inputs=dspec.cast_forward_inputs)


def apply_fsdp(model: nn.Module, meshes: Meshes, dspec) -> nn.Module:
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    from .models import decoder_layers

    kw = {"mesh": meshes.fsdp, "mp_policy": mp_policy(dspec),
          "offload_policy": CPUOffloadPolicy() if dspec.offload else OffloadPolicy()}
    raf = dspec.reshard_after_forward
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True if raf is None else raf, **kw)
    fully_shard(model, reshard_after_forward=False if raf is None else raf, **kw)
    return model


def apply_ddp(model: nn.Module, env: DistEnv, dspec) -> nn.Module:
    if env.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def cast_params(model: nn.Module, *, trainable: torch.dtype | None = None, frozen: torch.dtype | None = None) -> None:
    """Cast parameter storage (before sharding): trainable params to ``trainable``, frozen ones to ``frozen``.

    Shared parameters (tied embeddings) stay shared."""
    memo: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) in memo:
                mod._parameters[name] = memo[id(p)]
                continue
            want = trainable if p.requires_grad else frozen
            if want is not None and p.dtype != want and p.is_floating_point():
                new = nn.Parameter(p.data.to(want), requires_grad=p.requires_grad)
                memo[id(p)] = new
                mod._parameters[name] = new


def dp_all_reduce(t: torch.Tensor, meshes: Meshes | None) -> torch.Tensor:
    if meshes is not None and meshes.dp.size() > 1:
        dist.all_reduce(t, group=meshes.dp_group)
    return t
