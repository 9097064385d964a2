"""Distributed setup and ``parallelize``: the one place that turns a built HF model into the model the loop trains.

Mesh (FSDP2): ``(dp_replicate, dp_shard, tp)`` with ``dp = world / tp`` (cp = pp = 1 here); FSDP2 shards over
``dp_shard`` (HSDP replicates over ``dp_replicate``).

``parallelize(model, spec, meshes, env=...)`` applies, in this order (each step needs what the one before made):

0. trainability and storage: LoRA freezes the base, whose storage becomes the FSDP2 compute dtype (0.7); a full
   fine-tune with ``nemo_compat.master_weights: fp32`` keeps fp32 weights. The LoRA targets are found here, on the
   plain ``nn.Linear`` modules. First, because every later step copies or wraps the weights.
1. Liger kernels: patch the HF modules' forwards while they are still the plain HF modules.
2. FP8: the frozen base ``nn.Linear`` become torchao ``Float8Linear``. Before LoRA, so the adapters wrap the FP8
   linear (0.7.0 swaps after LoRA, and the swap drops every adapter).
3. LoRA: adapters on the targets (their init draws from the RNG: the caller's unranked seed), the initial adapter.
4. activation checkpointing (HF's, per decoder layer): before compile, so each compiled layer runs inside its
   checkpoint, and before FSDP2, which wraps the layers.
5. TP/SP: DTensor plans; after LoRA, so the adapters are sharded with their base (LoRA-aware styles).
6. torch.compile, per decoder layer: after TP, so it traces the DTensor layers.
7. FSDP2 (or DDP, or the replicated LoRA base) last: it shards the final parameters, per decoder layer and then the
   root. The choice between sharding and replicating the frozen LoRA base is made before step 0
   (``frozen_base_mode``), because FP8 (step 2) keeps a cached float8 weight only where the weight is whole.

Replicated LoRA base (``frozen_base_mode``; ``nemo_compat.frozen_base: auto | replicate | shard``): under LoRA the
frozen base gets no gradient and no optimizer state, so at N ranks it need not be sharded at all. With ``replicate``
every rank keeps the whole base (no all-gather per layer, no reshard) and only the adapters are data-parallel:
``ReplicatedGrads`` accumulates their gradients over the micro-batches in ``reduce_dtype`` (as FSDP2 does) and, at the
end of the last micro-batch's backward, all-reduces them in one flat buffer (mean over the dp ranks, as FSDP2), then
casts them back to the parameter dtype. ``auto`` replicates when all of: LoRA, ``strategy: fsdp2``, more than one
rank, tp = 1, no HSDP (``dp_replicate_size`` 1), no CPU offload, ``reshard_after_forward`` not set, every parameter
(base after step 0 and adapters) stored in ``param_dtype`` and ``output_dtype`` unset or equal to it (so the mixed
precision policy's casts are no-ops, as for one GPU below), a CUDA device, and the base's bytes at most
``REPLICATE_MAX_FRACTION`` of the device's memory. ``replicate`` skips only the device and memory tests (an error
if another condition fails); ``shard`` always keeps FSDP2. The numerics are FSDP2's (tests/runtime/test_rt_replicate.py).

FSDP2 on one process: a single process also gets a 1-rank mesh and keeps FSDP2, so its MixedPrecisionPolicy
(0.7 default: bf16 compute, fp32 reduce) applies as on N ranks -- a ``float32`` model trains with bf16 compute on 1
rank as on 8 (0.7.0 skips ``fully_shard`` on one rank and with it the policy; see README). One exception: on ONE CUDA
GPU, when every parameter is already stored in the policy's ``param_dtype`` (and there is no CPU offload), the model
runs unwrapped, as 0.7 does: the policy's casts would be no-ops there, and FSDP2 would only copy each layer's
weights in and out around every micro-batch. What differs then is said in a note at start: gradients accumulate over
micro-batches in ``param_dtype`` (FSDP2: ``reduce_dtype``); the policy's ``output_dtype`` is not applied either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

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


# ----------------------------------------------------------------------------------------------------------------
# parallelize: the order (see the module docstring)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Parallelized:
    model: nn.Module  # what the loop calls: FSDP2-sharded, DDP-wrapped, or the model itself
    inner: nn.Module  # the model itself (TP/FSDP2 shard its parameters in place): state dicts, optimizer
    lora_info: Any  # lora.LoraInfo, or None for a full fine-tune
    liger: str | None  # the Liger kernels applied (None: not used)
    storage: torch.dtype  # the dtype the model was built in
    frozen_base: str | None = None  # multi-rank FSDP2 LoRA: "replicate" or "shard" (frozen_base_mode), with why


def parallelize(model: nn.Module, spec, meshes: Meshes, *, env: DistEnv, log: Callable[[str], None] = print,
                run_dir=None) -> Parallelized:
    """Apply, in the documented order, what ``spec`` asks for; ``run_dir`` receives ``initial_adapter.safetensors``
    (``nemo_compat.save_init_adapter``). Call it under the unranked seed: step 3 draws the LoRA init."""
    from . import lora as lora_mod
    from .config import torch_dtype
    from .fp8 import convert_fp8
    from .kernels import apply_liger

    d = spec.dist
    storage = next(model.parameters()).dtype
    # 0. trainability and storage (and whether a LoRA base is replicated or sharded: step 2 needs to know)
    targets = ldt = None
    if spec.peft is not None:
        ldt = torch_dtype(spec.peft.lora_dtype) or (torch.float32 if spec.compat.master_weights == "fp32" else storage)
        targets = lora_mod.find_targets(model, spec.peft)
        if not targets:
            sample = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:4]
            raise RunError("peft matched no nn.Linear module (patterns match full module names)",
                           key="peft.target_modules", found=spec.peft.target_modules or spec.peft.exclude_modules,
                           hint=f"names look like {sample}; use e.g. '*_proj' or '*.q_proj'")
        for p in model.parameters():
            p.requires_grad_(False)
        if d.strategy == "fsdp2" and d.param_dtype in ("bfloat16", "float16"):
            cast_params(model, frozen=torch_dtype(d.param_dtype))  # 0.7: frozen storage = compute
    elif spec.compat.master_weights == "fp32":
        cast_params(model, trainable=torch.float32)
    replicate, why = frozen_base_mode(model, spec, env, lora_dtype=ldt)
    fb = None
    if spec.peft is not None and env.world_size > 1 and d.strategy == "fsdp2":
        fb = f"{'replicate' if replicate else 'shard'} ({why})"
        log(f"distributed: LoRA base {'replicated on every rank, adapters data-parallel' if replicate else 'sharded (FSDP2)'}"
            f" ({why})")  # bench/runtime_speed.py records this line
    # 1. Liger kernels
    liger = apply_liger(model, spec.model, device=env.device, tp=d.tp, ignore_index=spec.loss_ignore_index,
                        compiled=bool(spec.compile.enabled or d.enable_compile))
    if liger:
        log(f"kernels: {liger}")
    # 2. FP8 (the frozen base linears)
    if spec.fp8 is not None:
        converted = convert_fp8(model, spec.fp8, frozen_base=spec.peft is not None,
                                single_process=env.world_size == 1, replicated=replicate)
        log(f"fp8: {len(converted)} linear(s) run in float8 ({spec.fp8.recipe_name or 'tensorwise'}"
            f"{', emulated' if spec.fp8.emulate else ''})" + (
                "; LoRA adapters wrap the FP8 base linears and stay trainable" if spec.peft is not None else ""))
    # 3. LoRA
    lora_info = None
    if spec.peft is not None:
        p = spec.peft
        lora_info = lora_mod.apply_lora(model, p, targets=targets, tied_a=spec.compat.lora_tied_a, lora_dtype=ldt)
        initial_adapter(model, lora_info, spec.compat, run_dir=run_dir, is_main=env.is_main, log=log)
        tied = f", tied A in {len(lora_info.tied_groups)} group(s)" if lora_info.tied_groups else ""
        log(f"peft: LoRA on {len(targets)} linear(s), dim {p.dim}, alpha {p.alpha:g} (scale {p.alpha / p.dim:g}), "
            f"dropout {p.dropout:g} ({p.dropout_position}){tied}")
    # 4. activation checkpointing
    if d.activation_checkpointing:
        apply_activation_checkpointing(model)
    # 5. tensor / sequence parallelism
    if d.tp > 1:
        apply_tp(model, meshes.tp, sequence_parallel=d.sequence_parallel,
                 lora_dim=spec.peft.dim if spec.peft else None)
    # 6. torch.compile per decoder layer
    if spec.compile.enabled or d.enable_compile:
        compile_layers(model, spec.compile)
    # 7. FSDP2 / DDP
    if d.strategy != "fsdp2":
        wrapped = apply_ddp(model, env, d)
    elif replicate:
        wrapped = ReplicatedGrads.attach(model, meshes.dp_group, reduce_dtype=torch_dtype(d.reduce_dtype))
    elif plain_on_one_gpu(model, d, env):
        wrapped = model
        log("note: one GPU with every parameter in the compute dtype: FSDP2 wrapping skipped (as Automodel 0.7 "
            "does on one rank); gradients accumulate in that dtype")
    else:
        wrapped = apply_fsdp(model, meshes, d)
    return Parallelized(model=wrapped, inner=model, lora_info=lora_info, liger=liger, storage=storage, frozen_base=fb)


REPLICATE_MAX_FRACTION = 0.3  # auto: replicate a LoRA base of at most this share of one device's memory


def frozen_base_mode(model: nn.Module, spec, env: DistEnv, *, lora_dtype: torch.dtype | None) -> tuple[bool, str]:
    """(replicate the frozen LoRA base?, why): the rule in the module docstring. Call after step 0's casts."""
    d, want = spec.dist, spec.compat.frozen_base
    if spec.peft is None or d.strategy != "fsdp2" or env.world_size == 1:
        return False, "not a multi-rank FSDP2 LoRA run"
    if want == "shard":
        return False, "nemo_compat.frozen_base: shard"
    pdt = None if d.param_dtype is None else getattr(torch, d.param_dtype)
    base = [p for p in model.parameters()]
    blockers = [msg for bad, msg in (
        (d.tp > 1 or d.cp > 1, "tensor/context parallelism"),
        (d.dp_replicate > 1, "HSDP (dp_replicate_size > 1) asked for"),
        (d.offload, "CPU offload asked for"),
        (d.reshard_after_forward is not None, "reshard_after_forward set"),
        (pdt is None or lora_dtype != pdt or any(p.dtype != pdt for p in base),
         "parameters not all stored in mp_policy.param_dtype"),
        (d.output_dtype not in (None, d.param_dtype), "mp_policy.output_dtype differs from param_dtype"),
    ) if bad]
    if blockers:
        if want == "replicate":
            raise RunError(f"nemo_compat.frozen_base: replicate is not possible here: {'; '.join(blockers)}",
                           key="nemo_compat.frozen_base", found=want, hint="remove it (auto) or set it to shard")
        return False, blockers[0]
    if want == "replicate":
        return True, "nemo_compat.frozen_base: replicate"
    if env.device.type != "cuda":
        return False, "not a CUDA device (nemo_compat.frozen_base: replicate forces it)"
    nbytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in base}.values())
    mem = torch.cuda.get_device_properties(env.device).total_memory
    if nbytes > REPLICATE_MAX_FRACTION * mem:
        return False, (f"base {nbytes / 2**30:.1f} GiB > {REPLICATE_MAX_FRACTION:g} x {mem / 2**30:.0f} GiB device "
                       "memory")
    return True, f"base {nbytes / 2**30:.1f} GiB <= {REPLICATE_MAX_FRACTION:g} x {mem / 2**30:.0f} GiB device memory"


class ReplicatedGrads:
    """Data parallelism of the trainable parameters of a model whose frozen part is replicated (module docstring).

    Gradients of every micro-batch are added into one flat ``reduce_dtype`` buffer (a post-accumulate-grad hook;
    the parameter's own ``.grad`` is then dropped); at the end of a backward with gradient sync on, that buffer is
    all-reduced once (sum / world size: FSDP2's mean) and written back as each parameter's ``.grad`` in its own dtype.
    The model itself stays the module the loop calls (same parameter names); ``set_requires_gradient_sync`` is
    attached to it, the switch the loop already uses for FSDP2."""

    def __init__(self, model: nn.Module, group, reduce_dtype: torch.dtype | None):
        self.params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        self.group, self.world = group, dist.get_world_size(group)
        dt = reduce_dtype or (self.params[0].dtype if self.params else torch.float32)
        dev = self.params[0].device if self.params else torch.device("cpu")
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=dt, device=dev)
        self.views, off = {}, 0
        for p in self.params:
            self.views[p] = self.flat[off:off + p.numel()].view_as(p)
            off += p.numel()
        self.sync, self._queued = True, False
        with torch.no_grad():  # every rank starts from rank 0's adapters (the base was built identically)
            for p in self.params:
                dist.broadcast(p.data, src=dist.get_global_rank(group, 0), group=group)
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    @classmethod
    def attach(cls, model: nn.Module, group, *, reduce_dtype: torch.dtype | None) -> nn.Module:
        rg = cls(model, group, reduce_dtype)
        model.set_requires_gradient_sync = rg.set_requires_gradient_sync  # what the loop's _sync_ctx calls
        model.__dict__["_nm_replicated_grads"] = rg
        return model

    def set_requires_gradient_sync(self, flag: bool) -> None:
        self.sync = bool(flag)

    @torch.no_grad()
    def _on_grad(self, p: torch.Tensor) -> None:
        self.views[p].add_(p.grad)
        p.grad = None
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    @torch.no_grad()
    def _end_of_backward(self) -> None:
        self._queued = False
        if not self.sync:
            return
        if self.world > 1:
            dist.all_reduce(self.flat, group=self.group)
            self.flat.div_(self.world)
        for p in self.params:
            p.grad = self.views[p].to(p.dtype, copy=True)
        self.flat.zero_()


def is_replicated(model: nn.Module) -> bool:
    return "_nm_replicated_grads" in model.__dict__


def plain_on_one_gpu(model: nn.Module, dspec, env: DistEnv) -> bool:
    """The one case FSDP2 is skipped (module docstring): one CUDA process, no offload, every parameter already
    stored in ``param_dtype``."""
    return (dspec.strategy == "fsdp2" and env.world_size == 1 and env.device.type == "cuda" and not dspec.offload
            and dspec.param_dtype is not None
            and all(p.dtype == getattr(torch, dspec.param_dtype) for p in model.parameters()))


def initial_adapter(model: nn.Module, info, compat, *, run_dir, is_main: bool, log: Callable[[str], None]) -> None:
    """nemo_compat.init_adapter / save_init_adapter (run --verify: both legs start from the same LoRA A and B)."""
    from . import lora as lora_mod
    from .checkpoint import first_line

    if compat.init_adapter:
        from safetensors.torch import load_file

        try:
            adapter = load_file(compat.init_adapter)
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError
            raise RunError(f"cannot read the adapter file ({first_line(e)})", key="nemo_compat.init_adapter",
                           found=compat.init_adapter, hint="give a PEFT adapter_model.safetensors") from None
        for g in info.tied_groups:  # a tied group starts from its owner's A; the file must agree
            a0 = adapter.get(f"base_model.model.{g[0]}.lora_A.weight")
            for m in g[1:]:
                am = adapter.get(f"base_model.model.{m}.lora_A.weight")
                if a0 is not None and am is not None and not torch.equal(a0, am):
                    raise RunError(f"nemo_compat.init_adapter: {m} has its own A but the run ties it to {g[0]}",
                                   key="nemo_compat.init_adapter")
        try:
            want = lora_mod.trainable_keys_from_adapter(adapter, info)
        except KeyError as e:
            raise RunError(f"nemo_compat.init_adapter has no LoRA weights for {e.args[0]}",
                           key="nemo_compat.init_adapter") from None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in want.items():
                if k not in params or params[k].shape != v.shape:
                    raise RunError(f"nemo_compat.init_adapter: {k} does not fit this model", key="nemo_compat.init_adapter")
                params[k].copy_(v.to(params[k].dtype))
        log(f"peft: initial LoRA weights from {compat.init_adapter}")
    if compat.save_init_adapter and is_main and run_dir is not None:
        from pathlib import Path

        from safetensors.torch import save_file

        sd = {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in lora_mod.adapter_tensors(sd, info).items()},
                  str(Path(run_dir) / "initial_adapter.safetensors"))
