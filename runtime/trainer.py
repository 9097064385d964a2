"""The training loop: Automodel 0.7's ``TrainFinetuneRecipeForNextTokenPrediction`` for one resolved ``Spec``.

Per optimizer step: the label-token count of the step is all-reduced over DP once (host sync), every micro-batch
runs forward + masked CE + backward (FSDP2 gradient sync only on the last micro-batch, as ``defer_fsdp_grad_sync``),
then gradients are clipped (always; max_norm default 1.0), the optimizer and the LR scheduler step, and the loss is
all-reduced for reporting. No other host syncs per micro-batch.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as ck
from .config import dump_yaml
from .data import DistributedSamplerOrder, MapLoader, MockLoader, count_label_tokens
from .errors import CheckpointError, RunError
from .loss import masked_ce_sum, microbatch_loss
from .metrics import MetricsWriter, Progress, Timer, peak_mem_gib, plot_losses
from .spec import Spec


def _quiet() -> None:
    import warnings

    for name in ("torchao", "torch.utils._pytree", "transformers.modeling_utils", "torch.distributed.checkpoint",
                 "torch.distributed.tensor._redistribute"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass


@contextmanager
def scoped_seed(seed: int):
    import numpy as np

    saved = ck.rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    try:
        yield
    finally:
        ck.set_rng_state(saved)


def seed_all(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def tail_padding(labels: torch.Tensor, ignore: int = -100) -> int:
    flipped = labels.flip(dims=[1]) == ignore
    return int(torch.cumprod(flipped.int(), dim=1).sum().item())


class Trainer:
    def __init__(self, spec: Spec, *, run_dir: Path, raw_cfg: dict[str, Any], merge: bool = False,
                 tokenizer_path: str | None = None, tokenizer_note: str | None = None, stop_after: int | None = None):
        self.spec = spec
        self.stop_after = stop_after
        self.run_dir = Path(run_dir)
        self.raw_cfg = raw_cfg
        self.merge = merge
        self.tokenizer_path = tokenizer_path if tokenizer_path is not None else spec.tokenizer.path
        self.tokenizer_note = tokenizer_note
        self.env = None
        self.meshes = None
        self.tok = None
        self.lora_info = None
        self.liger = None
        self.progress = None
        self.metrics = None
        self._signal = False

    # ------------------------------------------------------------------------------------------------ utils
    def log(self, msg: str) -> None:
        if self.env is None or self.env.is_main:
            if self.progress is not None:
                self.progress.line(msg)
            else:
                print(msg, flush=True)

    @property
    def dp_size(self) -> int:
        return self.spec.dist.dp

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.meshes is not None and self.meshes.dp.size() > 1:
            dist.all_reduce(t, group=self.meshes.dp_group)
        return t

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        from .parallel import build_meshes, init_distributed

        _quiet()
        spec = self.spec
        self.env = env = init_distributed(spec.dist.backend, spec.dist.timeout_minutes)
        if env.world_size != spec.dist.world_size:
            raise RunError(f"launched with {env.world_size} processes but the config was checked for "
                           f"{spec.dist.world_size}", key="--nproc-per-node")
        self.meshes = build_meshes(env, spec.dist)
        seed_all(spec.seed + env.rank)  # StatefulRNG(seed, ranked=True)
        for n in spec.notes:
            self.log(f"note: {n}")
        if self.tokenizer_note:
            self.log(self.tokenizer_note)
        self._build_tokenizer()
        self._build_data()
        self._build_model()
        self._build_optim()
        self._resume()

    def _build_tokenizer(self) -> None:
        from .tokenizer import load_tokenizer

        if self.tokenizer_path is None:
            self.tok = None
            return
        t = self.spec.tokenizer
        self.tok = load_tokenizer(self.tokenizer_path, add_bos_token=t.add_bos_token, add_eos_token=t.add_eos_token,
                                  trust_remote_code=self.spec.model.trust_remote_code)
        if self.tokenizer_note is None:
            self.log(f"tokenizer: {self.tokenizer_path}")

    def _dataset(self, ds, key: str):
        from .data import build_dataset

        return build_dataset(ds, self.tok, key=key, log=self.log)

    def _loader(self, ds_spec, dataset, *, train: bool):
        m = self.meshes
        if ds_spec.kind == "mock":
            p = ds_spec.params
            if self.spec.dist.sequence_parallel and p.get("seq_len", 1024) % self.spec.dist.tp:
                raise RunError("with sequence parallelism the mock seq_len must be divisible by tp_size",
                               key="dataset.seq_len", found=p.get("seq_len"))
            if ds_spec.batch_size is not None and train:
                self.log("note: the mock dataset yields batches of its own batch_size; dataloader.batch_size ignored.")
            return MockLoader(vocab_size=p.get("vocab_size", 1024), seq_len=p.get("seq_len", 1024),
                              num_samples=p.get("num_samples", 1000000), batch_size=p.get("batch_size", 1),
                              exclude_token_ids=p.get("exclude_token_ids"), seed=self.spec.seed + (0 if train else 7),
                              dp_rank=m.dp_rank)
        pad_div = ds_spec.pad_seq_len_divisible
        if self.spec.fp8 is not None and not ds_spec.packing:
            # float8 GEMMs need the token dim divisible by 16 (torch._scaled_mm); padded positions carry label -100
            pad_div = math.lcm(pad_div or 1, 16)
        if self.spec.dist.sequence_parallel and self.spec.dist.tp > 1:
            # sequence parallelism shards the sequence dim evenly: pad batches to a multiple of tp (labels -100)
            pad_div = math.lcm(pad_div or 1, self.spec.dist.tp)
        shuffle = True if ds_spec.shuffle is None else bool(ds_spec.shuffle)
        sampler = DistributedSamplerOrder(len(dataset), num_replicas=m.dp.size(), rank=m.dp_rank, shuffle=shuffle,
                                          seed=self.spec.seed, drop_last=True)
        return MapLoader(dataset, batch_size=ds_spec.batch_size, sampler=sampler, drop_last=ds_spec.drop_last,
                         pad_seq_len_divisible=pad_div,
                         pin_memory=ds_spec.pin_memory and self.env.device.type == "cuda")

    def _build_data(self) -> None:
        spec = self.spec
        if self.tok is None and (spec.train.kind != "mock" or any(v.kind != "mock" for v in spec.validation.values())):
            raise RunError("a tokenizer is required for text datasets")
        train_ds = self._dataset(spec.train, "dataset")
        if train_ds is not None and train_ds.num_masked_out and self.env.is_main:
            self.log(f"note: {train_ds.num_masked_out} training sample(s) have every label masked (answer truncated "
                     "away); 0.7 serves the next sample in their place.")
        self.train_loader = self._loader(spec.train, train_ds, train=True)
        self.val_loaders = {}
        for name, v in spec.validation.items():
            key = "validation_dataset" if name == "default" else f"validation_dataset_{name}"
            self.val_loaders[name] = self._loader(v, self._dataset(v, key), train=False)
        n_train = len(train_ds) if train_ds is not None else None
        if n_train is not None:
            self.log(f"data: {n_train} training {getattr(train_ds, 'unit', 'samples')}, {len(self.train_loader)} "
                     "micro-batches per epoch per rank; "
                     f"validation: {', '.join(f'{k}={len(v.sampler.indices(0))}' for k, v in self.val_loaders.items() if isinstance(v, MapLoader)) or 'none'}")

    def _model_vocab_hint(self) -> int | None:
        if self.tok is not None:
            return len(self.tok)
        if self.spec.train.kind == "mock":
            return int(self.spec.train.params.get("vocab_size", 1024))
        return None

    def _build_model(self) -> None:
        from . import lora as lora_mod
        from .config import torch_dtype
        from .fp8 import convert_fp8
        from .models import build_model, count_params
        from .parallel import (apply_activation_checkpointing, apply_ddp, apply_fsdp, apply_tp, cast_params,
                               compile_layers)

        spec, env = self.spec, self.env
        with scoped_seed(spec.seed):  # unranked: every rank builds identical weights before sharding
            special = None if self.tok is None else {k: getattr(self.tok, k, None) for k in
                                                     ("pad_token_id", "bos_token_id", "eos_token_id")}
            model, desc, random_w = build_model(spec.model, tokenizer_vocab=self._model_vocab_hint(), device=env.device,
                                                special_ids=special)
            self.log(f"model: {desc}" + ("  [weights are RANDOM: this is a proxy, not the real model]"
                                         if random_w else ""))
            storage = next(model.parameters()).dtype
            model.train()
            targets = None
            if spec.peft is not None:
                targets = lora_mod.find_targets(model, spec.peft)
                if not targets:
                    sample = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:4]
                    raise RunError("peft matched no nn.Linear module (patterns match full module names)",
                                   key="peft.target_modules", found=spec.peft.target_modules or spec.peft.exclude_modules,
                                   hint=f"names look like {sample}; use e.g. '*_proj' or '*.q_proj'")
                for p in model.parameters():
                    p.requires_grad_(False)
                if spec.dist.strategy == "fsdp2" and spec.dist.param_dtype in ("bfloat16", "float16"):
                    cast_params(model, frozen=torch_dtype(spec.dist.param_dtype))  # 0.7: frozen storage = compute
            elif spec.compat.master_weights == "fp32":
                cast_params(model, trainable=torch.float32)
            from .kernels import apply_liger

            self.liger = apply_liger(model, spec.model, device=env.device, tp=spec.dist.tp,
                                     ignore_index=spec.loss_ignore_index,
                                     compiled=bool(spec.compile.enabled or spec.dist.enable_compile))
            if self.liger:
                self.log(f"kernels: {self.liger}")
            if spec.fp8 is not None:
                converted = convert_fp8(model, spec.fp8, frozen_base=spec.peft is not None,
                                        single_process=env.world_size == 1)
                self.log(f"fp8: {len(converted)} linear(s) run in float8 ({spec.fp8.recipe_name or 'tensorwise'}"
                         f"{', emulated' if spec.fp8.emulate else ''})" + (
                             "; LoRA adapters wrap the FP8 base linears and stay trainable"
                             if spec.peft is not None else ""))
            if spec.peft is not None:
                ldt = torch_dtype(spec.peft.lora_dtype) or (
                    torch.float32 if spec.compat.master_weights == "fp32" else storage)
                self.lora_info = lora_mod.apply_lora(model, spec.peft, targets=targets,
                                                     tied_a=spec.compat.lora_tied_a, lora_dtype=ldt)
                self._initial_adapter(model)
                tied = f", tied A in {len(self.lora_info.tied_groups)} group(s)" if self.lora_info.tied_groups else ""
                self.log(f"peft: LoRA on {len(targets)} linear(s), dim {spec.peft.dim}, alpha {spec.peft.alpha:g} "
                         f"(scale {spec.peft.alpha / spec.peft.dim:g}), dropout {spec.peft.dropout:g} "
                         f"({spec.peft.dropout_position}){tied}")
        self.hf_config = model.config
        if spec.dist.activation_checkpointing:
            apply_activation_checkpointing(model)
        if spec.dist.tp > 1:
            apply_tp(model, self.meshes.tp, sequence_parallel=spec.dist.sequence_parallel,
                     lora_dim=spec.peft.dim if spec.peft else None)
        if spec.compile.enabled or spec.dist.enable_compile:
            compile_layers(model, spec.compile)
        self.inner = model
        one_gpu_plain = (spec.dist.strategy == "fsdp2" and env.world_size == 1 and env.device.type == "cuda"
                         and not spec.dist.offload and spec.dist.param_dtype is not None
                         and all(p.dtype == getattr(torch, spec.dist.param_dtype) for p in model.parameters()))
        if one_gpu_plain:
            # one GPU and every parameter already in the compute dtype: FSDP2 would only copy each layer's weights
            # in and out around every micro-batch; Automodel 0.7 also trains unwrapped on one rank
            self.model = model
            self.log("note: one GPU with every parameter in the compute dtype: FSDP2 wrapping skipped (as Automodel 0.7 "
                     "does on one rank); gradients accumulate in that dtype")
        elif spec.dist.strategy == "fsdp2":
            self.model = apply_fsdp(model, self.meshes, spec.dist)
        else:
            self.model = apply_ddp(model, env, spec.dist)
        total, trainable = count_params(self.inner)
        self.num_params, self.num_trainable = total, trainable
        self.log(f"parameters: {total:,} total, {trainable:,} trainable ({100.0 * trainable / max(total, 1):.3f}%)")
        d = spec.dist
        self.log(f"distributed: {d.strategy}, world {env.world_size} (dp {d.dp}"
                 + (f" = {d.dp_replicate} replicate x {d.dp // d.dp_replicate} shard" if d.dp_replicate > 1 else "")
                 + f", tp {d.tp}{' + sequence parallel' if d.sequence_parallel else ''}), device {env.device.type}, "
                 f"compute {d.param_dtype or d.autocast_dtype or str(storage).replace('torch.', '')}; "
                 f"grad accumulation {spec.step.grad_acc_steps} x local batch {spec.step.local_batch_size}")

    def _initial_adapter(self, model) -> None:
        """nemo_compat.init_adapter / save_init_adapter (run --verify: both legs start from the same LoRA A and B)."""
        from . import lora as lora_mod

        c = self.spec.compat
        if c.init_adapter:
            from safetensors.torch import load_file

            adapter = load_file(c.init_adapter)
            if self.lora_info.tied_groups:  # a tied group starts from its owner's A; the file must agree
                for g in self.lora_info.tied_groups:
                    a0 = adapter.get(f"base_model.model.{g[0]}.lora_A.weight")
                    for m in g[1:]:
                        am = adapter.get(f"base_model.model.{m}.lora_A.weight")
                        if a0 is not None and am is not None and not torch.equal(a0, am):
                            raise RunError(f"nemo_compat.init_adapter: {m} has its own A but the run ties it to {g[0]}",
                                           key="nemo_compat.init_adapter")
            try:
                want = lora_mod.trainable_keys_from_adapter(adapter, self.lora_info)
            except KeyError as e:
                raise RunError(f"nemo_compat.init_adapter has no LoRA weights for {e.args[0]}",
                               key="nemo_compat.init_adapter") from None
            params = dict(model.named_parameters())
            with torch.no_grad():
                for k, v in want.items():
                    if k not in params or params[k].shape != v.shape:
                        raise RunError(f"nemo_compat.init_adapter: {k} does not fit this model", key="nemo_compat.init_adapter")
                    params[k].copy_(v.to(params[k].dtype))
            self.log(f"peft: initial LoRA weights from {c.init_adapter}")
        if c.save_init_adapter and (self.env is None or self.env.is_main):
            from safetensors.torch import save_file

            sd = {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in lora_mod.adapter_tensors(sd, self.lora_info).items()},
                      str(self.run_dir / "initial_adapter.safetensors"))

    def _build_optim(self) -> None:
        from .optim import StepScheduler, build_lr_scheduler, build_optimizer

        spec = self.spec
        self.optimizer, warns = build_optimizer(self.inner, spec.optim, no_decay_1d=spec.compat.no_decay_1d,
                                                tp=spec.dist.tp)
        for w in warns:
            self.log(f"warning: {w}")
        if spec.optim.param_group_overrides and spec.lr_scheduler is None:
            self.log("note: optimizer.param_group_overrides take effect through the LR scheduler (as in 0.7); "
                     "without an lr_scheduler section their lr_mult/wd_mult are not applied.")
        s = spec.step
        self.steps = StepScheduler(grad_acc_steps=s.grad_acc_steps, dataloader=self.train_loader,
                                   num_epochs=s.num_epochs, max_steps=s.max_steps, ckpt_every_steps=s.ckpt_every_steps,
                                   save_checkpoint_every_epoch=s.save_checkpoint_every_epoch,
                                   validate_on_checkpoint=s.validate_on_checkpoint, val_every_steps=s.val_every_steps,
                                   gc_every_steps=s.gc_every_steps)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, spec.lr_scheduler, total_steps=self.steps.total_steps)
        if spec.compat.lr_values:
            from .optim import ExplicitLR

            self.lr_scheduler = ExplicitLR(self.optimizer, spec.compat.lr_values)
            self.log(f"note: nemo_compat.lr_values: the learning rate of each step is given ({len(spec.compat.lr_values)} "
                     "values); the lr_scheduler section is not used")
        lr = self.optimizer.param_groups[0]["lr"]
        self.log(f"schedule: {self.steps.max_steps} steps max, {self.steps.num_epochs} epoch(s) of "
                 f"{self.steps.epoch_len} steps; lr {lr:.3e} at step 0"
                 + ("" if self.lr_scheduler else " (constant: no lr_scheduler section)"))

    # ------------------------------------------------------------------------------------------------ checkpoint
    def _signature(self) -> dict[str, Any]:
        s = self.spec
        return {"model": s.model.name, "source": s.model.source, "proxy": s.model.proxy,
                "peft": None if s.peft is None else {"dim": s.peft.dim, "alpha": s.peft.alpha,
                                                    "targets": sorted(self.lora_info.targets),
                                                    "tied_a": s.compat.lora_tied_a},
                "world_size": self.env.world_size, "dp": s.dist.dp, "tp": s.dist.tp,
                "grad_acc_steps": s.step.grad_acc_steps, "local_batch_size": s.step.local_batch_size,
                "num_params": self.num_params}

    def _resume(self) -> None:
        c = self.spec.ckpt
        if not c.enabled:
            return
        root = Path(c.checkpoint_dir)
        decision: dict[str, Any] = {}
        if self.env.is_main:
            try:
                path, notes, doc = ck.find_resume(root, c.restore_from)
                if doc is not None:
                    self._check_signature(doc.get("signature", {}), path)
                decision = {"path": None if path is None else str(path), "notes": notes}
            except CheckpointError as e:
                decision = {"error": str(e)}
        decision = ck.broadcast_obj(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        for n in decision["notes"]:
            self.log(f"note: {n}")
        if decision["path"] is None:
            return
        path = Path(decision["path"])
        self.log(f"resuming from {path} (auto-resume: checkpoint.checkpoint_dir has a checkpoint)")
        self._load_checkpoint(path)
        self.resumed_from = path

    def _check_signature(self, sig: dict[str, Any], path: Path) -> None:
        cur = self._signature()
        diffs = [k for k in cur if k in sig and sig[k] != cur[k]]
        if diffs:
            k = diffs[0]
            hint = "use a fresh checkpoint.checkpoint_dir, or restore the original settings"
            if k in ("world_size", "dp", "tp", "grad_acc_steps", "local_batch_size"):
                hint = ("the saved data position and RNG streams are per rank, so resume with the original "
                        "--nproc-per-node / parallel sizes / batch sizes, or " + hint.split(", or")[0])
            raise CheckpointError(f"checkpoint {path.name} belongs to a different run ({k} differs)",
                                  key="checkpoint.checkpoint_dir", expected=cur[k], found=sig[k], hint=hint)

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        from . import lora as lora_mod

        model_dir = path / "model"
        if self.spec.peft is not None:
            adapter = load_file(str(model_dir / "adapter_model.safetensors"))
            sd = lora_mod.trainable_keys_from_adapter(adapter, self.lora_info)
            ck.load_full(self.inner, sd, broadcast=False, strict=False)
        else:
            sd = ck.load_hf_weights(model_dir) if self.env.is_main else {}
            if self.env.is_main and getattr(self.hf_config, "tie_word_embeddings", False) and "lm_head.weight" not in sd:
                emb = [k for k in sd if k.endswith("embed_tokens.weight")]
                if emb:
                    sd["lm_head.weight"] = sd[emb[0]]
            ck.load_full(self.inner, sd, broadcast=True, strict=True)
        ck.load_optimizer(self.optimizer, self.inner, path / "optim")
        self.steps.load_state_dict(torch.load(path / "step_scheduler.pt", weights_only=True))
        if self.lr_scheduler is not None and (path / "lr_scheduler.pt").is_file():
            self.lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
        r = self.env.rank
        self.train_loader.load_state_dict(torch.load(path / "dataloader" / f"dataloader_rank_{r}.pt",
                                                     weights_only=True))
        self.pending_rng = torch.load(path / "rng" / f"rng_rank_{r}.pt", weights_only=True)

    def save_checkpoint(self, epoch: int, step: int, train_loss: float, val_losses: dict[str, float]) -> None:
        c = self.spec.ckpt
        if not c.enabled:
            return
        from . import lora as lora_mod

        root = Path(c.checkpoint_dir)
        path = root / ck.step_dir_name(epoch, step)
        is_main = self.env.is_main
        if is_main:
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
        ck.barrier()
        final = self.steps.is_last_step
        # model
        if self.spec.peft is not None:
            sd = ck.gather_full(self.inner, trainable_only=True)
            if is_main:
                tensors = lora_mod.adapter_tensors(sd, self.lora_info)
                ck.save_adapter(path / "model", tensors, self._adapter_config(), self._peft_extra(), self.tok)
        else:
            sd = ck.gather_full(self.inner, trainable_only=False)
            if is_main:
                ck.save_hf_model(path / "model", self.hf_config, sd, self.tok)
        del sd
        ck.save_optimizer(self.optimizer, self.inner, path / "optim")
        r = self.env.rank
        (path / "rng").mkdir(exist_ok=True)
        (path / "dataloader").mkdir(exist_ok=True)
        torch.save(ck.rng_state(), path / "rng" / f"rng_rank_{r}.pt")
        torch.save(self.train_loader.state_dict(), path / "dataloader" / f"dataloader_rank_{r}.pt")
        if is_main:
            torch.save(self.steps.state_dict(), path / "step_scheduler.pt")
            if self.lr_scheduler is not None:
                torch.save(self.lr_scheduler.state_dict(), path / "lr_scheduler.pt")
            (path / "config.yaml").write_text(dump_yaml(self.raw_cfg))
            losses = {"train_loss": train_loss}
            if len(val_losses) == 1:
                losses["val_loss"] = next(iter(val_losses.values()))
            else:
                losses.update(val_losses)
            (path / "losses.json").write_text(json.dumps(losses, indent=2))
        ck.barrier()
        if is_main:
            ck.write_manifest(path, epoch=epoch, step=step, signature=self._signature())
            ck.publish_latest(root, path)
            removed = ck.apply_retention(root, c.max_recent_checkpoints)
            self.log(f"checkpoint: {path}" + (" (final)" if final else "")
                     + (f"; removed {', '.join(removed)} (max_recent_checkpoints)" if removed else ""))
        ck.barrier()
        self.last_checkpoint = path

    def _adapter_config(self) -> dict[str, Any]:
        from . import lora as lora_mod

        return lora_mod.adapter_config(self.lora_info, self.spec.peft, base_model=str(self.spec.model.name or ""),
                                       dropout=self.spec.peft.dropout)

    def _peft_extra(self) -> dict[str, Any]:
        p = self.spec.peft
        return {"target_modules": p.target_modules, "exclude_modules": p.exclude_modules,
                "match_all_linear": p.match_all_linear, "dim": p.dim, "alpha": p.alpha, "dropout": p.dropout,
                "dropout_position": p.dropout_position, "lora_A_init": p.lora_A_init, "lora_dtype": p.lora_dtype,
                "nemo_compat_lora_tied_a": self.spec.compat.lora_tied_a,
                "tied_groups": self.lora_info.tied_groups}

    # ------------------------------------------------------------------------------------------------ step
    def _sync_ctx(self, last: bool):
        m = self.model
        if hasattr(m, "set_requires_gradient_sync"):
            m.set_requires_gradient_sync(last or not self.spec.dist.defer_fsdp_grad_sync)
            return nullcontext()
        if hasattr(m, "no_sync") and not last:
            return m.no_sync()
        return nullcontext()

    def _autocast(self):
        a = self.spec.dist.autocast_dtype
        if a is None:
            return nullcontext()
        return torch.autocast(self.env.device.type, dtype=getattr(torch, a))

    def _forward_ce(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dev = self.env.device
        nb = dev.type == "cuda"
        labels = batch["labels"].to(dev, non_blocking=nb)
        kwargs = {"input_ids": batch["input_ids"].to(dev, non_blocking=nb), "use_cache": False}
        if "position_ids" in batch:
            kwargs["position_ids"] = batch["position_ids"].to(dev, non_blocking=nb)
            if self.spec.dist.sequence_parallel and self.spec.dist.tp > 1:
                # packed batches (position ids restarting per sample): the block-diagonal causal mask of the full
                # sequence; the model itself would size it from the sequence-sharded embeddings
                from .data import packed_causal_mask

                mask = packed_causal_mask(self.hf_config, kwargs["position_ids"])
                if mask is not None:
                    kwargs["attention_mask"] = mask
        elif self.spec.dist.sequence_parallel and self.spec.dist.tp > 1:
            # with sequence parallelism the embeddings leave the embedding layer sharded on the sequence dim, so
            # HF would derive rotary positions from the local length; give it the full positions
            ids = kwargs["input_ids"]
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=dev).unsqueeze(0).expand(ids.shape[0], -1)
        # attention_mask is not passed: the collater pads on the right only, so causal attention never lets a real
        # token see padding and SDPA can take its causal kernel; padded positions carry label -100.
        with self._autocast():
            if getattr(self, "liger", None):
                from .kernels import lce_sum

                return lce_sum(self.model, kwargs, labels)
            out = self.model(**kwargs)
            logits = out.logits if hasattr(out, "logits") else out
            ce = masked_ce_sum(logits, labels, ignore_index=self.spec.loss_ignore_index,
                               fp32_upcast=self.spec.loss_fp32_upcast)
        return ce

    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        spec = self.spec
        ign = spec.loss_ignore_index
        mb_tokens = [count_label_tokens(b["labels"], ign) for b in batches]
        nonpad = sum(b["labels"].numel() - tail_padding(b["labels"]) for b in batches)
        counts = torch.tensor([sum(mb_tokens), nonpad], dtype=torch.int64, device=self.env.device)
        counts = self._all_reduce(counts).tolist()
        step_tokens, step_nonpad = int(counts[0]), int(counts[1])
        n = len(batches)
        lr_applied = self.optimizer.param_groups[0]["lr"]
        report = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for i, b in enumerate(batches):
            with self._sync_ctx(i == n - 1):
                ce = self._forward_ce(b)
                bw, rep = microbatch_loss(ce, mode=spec.compat.loss_reduction, mb_tokens=mb_tokens[i],
                                          step_tokens=step_tokens, num_microbatches=n, dp_size=self.dp_size)
                bw.backward()
            report += rep.float()
        grad_norm = self.clip_grad_norm(spec.max_grad_norm)
        finite = torch.isfinite(report.detach().reshape(1).float().to(grad_norm.device)).all() & torch.isfinite(grad_norm)
        bad = self._all_reduce((~finite).float().reshape(1)).item() > 0
        if bad:  # NaN/inf: do not let it into the weights; the caller stops the run
            self.optimizer.zero_grad(set_to_none=True)
            rep_all = self._all_reduce(report.reshape(1).clone()).item()
            return {"loss": rep_all, "grad_norm": float(grad_norm), "num_label_tokens": step_tokens,
                    "num_tokens": step_nonpad, "lr": lr_applied, "lr_applied": lr_applied, "nonfinite": True}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(1)
        if spec.fp8 is not None:
            from .fp8 import precompute_scales, wants_precompute

            if wants_precompute(spec.fp8, self.meshes.dp_shard_size):
                precompute_scales(self.model)
        flag = torch.tensor([1.0 if self._signal else 0.0], device=self.env.device)
        packed = torch.cat([report.reshape(1), flag])
        packed = self._all_reduce(packed)
        vals = torch.cat([packed, grad_norm.reshape(1).float().to(packed.device)]).tolist()
        if vals[1] > 0:
            self.steps.sigterm_flag = True
        return {"loss": vals[0], "grad_norm": vals[2], "num_label_tokens": step_tokens, "num_tokens": step_nonpad,
                "lr": self.optimizer.param_groups[0]["lr"], "lr_applied": lr_applied}

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Global L2 norm over all trainable grads (DTensor-aware, one all-reduce per placement group); clip."""
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # pragma: no cover
            DTensor = ()
        groups: dict[Any, list[torch.Tensor]] = {}
        for p in self.model.parameters():
            g = p.grad
            if g is None:
                continue
            if isinstance(g, DTensor):
                key = (id(g.device_mesh), tuple(g.placements), g.dtype)
                groups.setdefault(key, [g.device_mesh, []])[1].append(g._local_tensor)
            else:
                groups.setdefault((None, (), g.dtype), [None, []])[1].append(g)
        total = torch.zeros((), dtype=torch.float32, device=self.env.device)
        for key, (mesh, grads) in groups.items():
            norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)  # fp32 accumulation even for bf16 grads
            sq = torch.stack(norms).pow(2).sum().to(total.device)
            if mesh is not None:
                for d, pl in enumerate(key[1]):
                    if pl.is_shard() or pl.is_partial():
                        dist.all_reduce(sq, group=mesh.get_group(d))
            total += sq
        total = total.sqrt()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for key, (mesh, grads) in groups.items():
            torch._foreach_mul_(grads, coef.to(grads[0].device, grads[0].dtype))
        return total

    @torch.no_grad()
    def validate(self, name: str, loader) -> dict[str, Any]:
        self.model.eval()
        total = torch.zeros((), dtype=torch.float32, device=self.env.device)
        tokens = 0
        with scoped_seed(1 + self.env.rank):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(0)
            it = iter(loader)
            limit = None if isinstance(loader, MapLoader) else max(1, self.spec.step.grad_acc_steps)
            for i, b in enumerate(it):
                if limit is not None and i >= limit:
                    break
                total += self._forward_ce(b).float()
                tokens += count_label_tokens(b["labels"], self.spec.loss_ignore_index)
        packed = torch.stack([total, torch.tensor(float(tokens), device=total.device)])
        packed = self._all_reduce(packed).tolist()
        self.model.train()
        return {"val_loss": packed[0] / max(packed[1], 1e-8), "num_label_tokens": int(packed[1])}

    # ------------------------------------------------------------------------------------------------ loop
    def _install_signals(self) -> None:
        def handler(signum, frame):  # noqa: ARG001
            self._signal = True

        self._old_handlers = {}
        try:
            for name in self.spec.step.preemption_signal:
                sig = getattr(signal, name)
                self._old_handlers[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            self._old_handlers = {}

    def _restore_signals(self) -> None:
        for sig, h in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, h)

    def train(self) -> None:
        env = self.env
        if getattr(self, "pending_rng", None) is not None:
            ck.set_rng_state(self.pending_rng)
            self.pending_rng = None
        is_main = env.is_main
        resumed = getattr(self, "resumed_from", None) is not None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", append=resumed)
        self.progress = Progress(self.steps.max_steps, start=self.steps.step, enabled=is_main)
        if self.steps.step >= self.steps.max_steps:
            self.log(f"nothing to do: the checkpoint is already at step {self.steps.step} of {self.steps.max_steps}")
        self._install_signals()
        timer = Timer()
        last_loss = float("nan")
        done_here = 0
        try:
            for epoch in self.steps.epochs:
                self.steps.set_epoch(epoch)
                if self.stop_after is not None and done_here >= self.stop_after:
                    break
                for batches in self.steps:
                    out = self.train_step(batches)
                    done_here += 1
                    if out.get("nonfinite"):
                        self._stop_nonfinite(epoch, out)
                    dt = timer.lap()
                    rec = {"type": "train", "step": self.steps.step, "epoch": self.steps.epoch,
                           "loss": out["loss"], "grad_norm": out["grad_norm"], "lr": out["lr"],
                           "lr_applied": out["lr_applied"],
                           "num_label_tokens": out["num_label_tokens"], "num_tokens": out["num_tokens"],
                           "tokens_per_s": out["num_tokens"] / max(dt, 1e-9),
                           "tokens_per_s_per_gpu": out["num_tokens"] / max(dt, 1e-9) / env.world_size,
                           "step_time_s": dt, "peak_mem_gib": peak_mem_gib(env.device)}
                    last_loss = out["loss"]
                    if is_main:
                        self.metrics.write(rec)
                        self.progress.step(rec)
                    val_losses: dict[str, float] = {}
                    if self.steps.is_val_step and self.val_loaders:
                        for name, loader in self.val_loaders.items():
                            v = self.validate(name, loader)
                            val_losses[name] = v["val_loss"]
                            if is_main:
                                self.metrics.write({"type": "val", "name": name, "step": self.steps.step,
                                                    "epoch": self.steps.epoch, "val_loss": v["val_loss"],
                                                    "num_label_tokens": v["num_label_tokens"]})
                                self.log(f"validation[{name}] step {self.steps.step}: loss {v['val_loss']:.4f} "
                                         f"over {v['num_label_tokens']} label tokens")
                    if self.steps.is_ckpt_step:
                        self.save_checkpoint(epoch, self.steps.step, out["loss"], val_losses)
                    if self.steps.is_gc_step:
                        gc.collect()
                    timer.reset()
                    if self.stop_after is not None and done_here >= self.stop_after:
                        self.log(f"stopping after {done_here} step(s) (--stop-after); the schedule was not changed")
                        break
        finally:
            self._restore_signals()
            if self.progress is not None:
                self.progress.close()
            if self.metrics is not None:
                self.metrics.close()
        self.final_loss = last_loss
        if self.steps.sigterm_flag:
            self.log("stopped by a preemption signal after checkpointing")

    def _stop_nonfinite(self, epoch: int, out: dict[str, Any]) -> None:
        """A NaN/inf loss or gradient: the weights are left as they were before this step; save them and stop."""
        step = self.steps.step
        if self.env.is_main and self.metrics is not None:
            self.metrics.write({"type": "train", "step": step, "epoch": epoch, "loss": out["loss"],
                                "grad_norm": out["grad_norm"], "lr": out["lr"], "lr_applied": out["lr_applied"],
                                "num_label_tokens": out["num_label_tokens"], "num_tokens": out["num_tokens"],
                                "nonfinite": True})
        where = ""
        if self.spec.ckpt.enabled:
            self.save_checkpoint(epoch, step, float("nan"), {})
            last = getattr(self, "last_checkpoint", None)
            where = f"; the weights from before this step are saved in {last}" if last else ""
        raise RunError(f"the loss or gradient is not finite at step {step} (loss {out['loss']}, grad norm "
                       f"{out['grad_norm']}): stopped without applying it{where}",
                       hint="lower the learning rate, check the data of this step, or use bf16/fp32 instead of fp16")

    def finish(self) -> None:
        """--merge export, loss.png and the summary line."""
        from . import lora as lora_mod

        env = self.env
        if self.merge:
            if self.spec.peft is None:
                self.log("note: --merge only applies to LoRA runs; a full fine-tune's checkpoint is already a full "
                         "HF model.")
            else:
                sd = ck.gather_full(self.inner, trainable_only=False)
                if env.is_main:
                    merged = lora_mod.merged_state_dict({k: v for k, v in sd.items()}, self.lora_info)
                    out = self.run_dir / "merged"
                    if out.exists():
                        shutil.rmtree(out)
                    ck.save_hf_model(out, self.hf_config, merged, self.tok)
                    self.log(f"merged model (base + LoRA, HF safetensors): {out}")
                del sd
        if env.is_main:
            import json as _json

            s = self.spec
            (self.run_dir / "summary.json").write_text(_json.dumps({
                "steps": self.steps.step, "final_loss": getattr(self, "final_loss", None),
                "total_params": self.num_params, "trainable_params": self.num_trainable,
                "grad_acc_steps": s.step.grad_acc_steps, "local_batch_size": s.step.local_batch_size,
                "world_size": env.world_size, "dp": s.dist.dp, "tp": s.dist.tp,
                "lora_tied_groups": len(self.lora_info.tied_groups) if self.lora_info else 0,
                "nemo_compat": {"lora_tied_a": s.compat.lora_tied_a, "loss_reduction": s.compat.loss_reduction,
                                "master_weights": s.compat.master_weights, "no_decay_1d": s.compat.no_decay_1d,
                                "lr_values": bool(s.compat.lr_values)}}, indent=2) + "\n")
            ok = plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png",
                             title=f"{Path(self.spec.config_path).parent.name}/{Path(self.spec.config_path).name}")
            last = getattr(self, "last_checkpoint", None)
            self.log(f"done: {self.steps.step} step(s); metrics {self.run_dir / 'metrics.jsonl'}"
                     + (f", plot {self.run_dir / 'loss.png'}" if ok else "")
                     + (f", last checkpoint {last}" if last else ""))


def run_training(spec: Spec, *, run_dir: Path, raw_cfg: dict[str, Any], merge: bool,
                 tokenizer_path: str | None, tokenizer_note: str | None, stop_after: int | None = None) -> int:
    """Run one process's share of the job; returns an exit code (errors are reported on rank 0)."""
    from .parallel import destroy

    tr = Trainer(spec, run_dir=run_dir, raw_cfg=raw_cfg, merge=merge, tokenizer_path=tokenizer_path,
                 tokenizer_note=tokenizer_note, stop_after=stop_after)
    code = 0
    try:
        tr.setup()
        tr.train()
        tr.finish()
    except RunError as e:
        if tr.env is None or tr.env.is_main:
            print(f"nemo-migrate run: error: {e}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except torch.OutOfMemoryError as e:
        if tr.env is None or tr.env.is_main:
            first = str(e).split(". ")[0]
            print(f"nemo-migrate run: error: out of GPU memory ({first}). Hint: distributed.activation_checkpointing: true, "
                  "a smaller step_scheduler.local_batch_size, or more GPUs (FSDP2 shards the model)", file=sys.stderr, flush=True)
        code = 1
    except Exception as e:  # noqa: BLE001
        if os.environ.get("NEMO_MIGRATE_DEBUG"):
            raise
        tb = traceback.format_exc()
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / f"traceback-rank{tr.env.rank if tr.env else 0}.txt").write_text(tb)
        except OSError:
            pass
        if tr.env is None or tr.env.is_main:
            print(f"nemo-migrate run: internal error: {type(e).__name__}: {e}\n  the traceback is in "
                  f"{Path(run_dir) / 'traceback-rank0.txt'}; rerun with NEMO_MIGRATE_DEBUG=1 to see it",
                  file=sys.stderr, flush=True)
        code = 1
    finally:
        destroy(tr.env)
    return code
