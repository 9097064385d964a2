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


_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _first_line(e: BaseException, n: int = 300) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= n else text[: n - 3] + "..."


def _canonical(name: str) -> str:
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def _local(p: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds for a parameter (a DTensor's shard; torchao's float8 wrapper's inner tensor)."""
    t = p.detach()
    t = getattr(t, "_local_tensor", t)
    inner = getattr(t, "_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else t


def tail_padding(labels: torch.Tensor, ignore: int = -100) -> int:
    flipped = labels.flip(dims=[1]) == ignore
    return int(torch.cumprod(flipped.int(), dim=1).sum().item())


class Trainer:
    def __init__(self, spec: Spec, *, run_dir: Path, raw_cfg: dict[str, Any], merge: bool = False,
                 tokenizer_path: str | None = None, tokenizer_note: str | None = None, stop_after: int | None = None,
                 resume: str = "auto"):
        self.spec = spec
        self.resume_mode = resume
        self.fingerprint: dict[str, Any] | None = None
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
        try:
            self.tok = load_tokenizer(self.tokenizer_path, add_bos_token=t.add_bos_token,
                                      add_eos_token=t.add_eos_token, trust_remote_code=self.spec.model.trust_remote_code)
        except RunError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the tokenizer files make transformers raise
            raise RunError(f"cannot load the tokenizer from {self.tokenizer_path} ({type(e).__name__}: "
                           f"{_first_line(e)})", key="dataset.tokenizer.pretrained_model_name_or_path",
                           hint="the tokenizer files are damaged or not a Hugging Face tokenizer; point "
                                "dataset.tokenizer.pretrained_model_name_or_path at a good one") from None
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
        if isinstance(self.train_loader, MapLoader) and len(self.train_loader) == 0:
            raise RunError(f"an epoch has no batch: {len(self.train_loader.sampler)} training sample(s) per rank, fewer "
                           f"than one batch of {self.train_loader.batch_size} with drop_last",
                           key="dataloader.drop_last", hint="use more data, a smaller step_scheduler.local_batch_size, "
                                                           "or dataloader.drop_last: false")
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

            try:
                adapter = load_file(c.init_adapter)
            except Exception as e:  # noqa: BLE001 - SafetensorError, OSError
                raise RunError(f"cannot read the adapter file ({_first_line(e)})", key="nemo_compat.init_adapter",
                               found=c.init_adapter, hint="give a PEFT adapter_model.safetensors") from None
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
        if spec.ckpt.enabled and (self.env is None or self.env.is_main):
            from .resume import data_digests, fingerprint

            self.fingerprint = fingerprint(spec, lr_scheduler=self.lr_scheduler, data_digests=data_digests(spec))
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
                decision = self._resume_decision(root)
            except CheckpointError as e:
                decision = {"error": str(e)}
        decision = ck.broadcast_obj(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        for n in decision["notes"]:
            self.log(f"note: {n}")
        if decision.get("fresh_dir"):
            self.spec.ckpt.checkpoint_dir = decision["fresh_dir"]
            Path(decision["fresh_dir"]).mkdir(parents=True, exist_ok=True)
        if decision["path"] is None:
            return
        path = Path(decision["path"])
        diffs = decision.get("changes") or []
        self._load_checkpoint(path, apply_new=bool(diffs), saved_step=decision.get("step"))
        self.resumed_from = path
        at = f"step {self.steps.step} of {self.steps.max_steps}"
        if diffs:
            from .resume import render

            self.log(f"==> resuming from {path} at {at} WITH CHANGED SETTINGS (--resume changed): {render(diffs, 40)}. "
                     "The new values apply from this step on; the weights, optimizer moments and data position are "
                     "the checkpoint's.")
            if self.env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "resume-changes.json").write_text(json.dumps(
                    {"resumed_from": str(path), "step": self.steps.step,
                     "changed": [{"key": k, "checkpoint": a, "now": b} for k, a, b in diffs]}, indent=1, default=str))
        else:
            self.log(f"==> resuming from {path} at {at} (checkpoint.checkpoint_dir holds it; saved "
                     f"{decision.get('created')}; training settings unchanged since). Pass --no-resume to start fresh "
                     "instead.")

    def _resume_decision(self, root: Path) -> dict[str, Any]:
        """Rank 0: which checkpoint to resume (or a fresh directory), after checking it against the current run."""
        from .resume import changes, render

        c = self.spec.ckpt
        if self.resume_mode == "never":
            new = ck.fresh_dir(root)
            notes = []
            if new != root:
                notes.append(f"not resuming (--no-resume): {root} holds checkpoints of an earlier run and is left "
                             f"as it is; this run's checkpoints go to {new} (resume them later with --set "
                             f"checkpoint.checkpoint_dir={new})")
            return {"path": None, "notes": notes, "fresh_dir": str(new) if new != root else None}
        path, notes, doc = ck.find_resume(root, c.restore_from)
        if doc is None:
            return {"path": None, "notes": notes}
        self._check_signature(doc.get("signature", {}), path)
        diffs = None
        if "training" not in doc:
            notes.append(f"checkpoint {path.name} does not record its training settings (saved by an earlier "
                         "nemo-migrate): settings changed since then cannot be listed.")
        elif self.fingerprint is not None:
            diffs = changes(doc["training"], self.fingerprint)
            if diffs and self.resume_mode != "changed":
                raise CheckpointError(
                    f"checkpoint {path} was trained with other settings than this run has: {render(diffs)}",
                    key="checkpoint.checkpoint_dir",
                    hint="pass --resume changed to resume it and train on with the new values, --no-resume to start "
                         "fresh (into a new checkpoint directory), or restore the settings it was saved with")
        return {"path": str(path), "notes": notes, "changes": diffs, "step": doc.get("step"),
                "created": doc.get("created")}

    def _check_signature(self, sig: dict[str, Any], path: Path) -> None:
        cur = self._signature()
        diffs = [k for k in cur if k in sig and sig[k] != cur[k]]
        if diffs:
            k = diffs[0]
            hint = ("pass --no-resume to start fresh (into a new checkpoint directory), use a fresh "
                    "checkpoint.checkpoint_dir, or restore the original settings")
            if k in ("world_size", "dp", "tp", "grad_acc_steps", "local_batch_size"):
                hint = ("the saved data position and RNG streams are per rank, so resume with the original "
                        "--nproc-per-node / parallel sizes / batch sizes, or pass --no-resume to start fresh")
            raise CheckpointError(f"checkpoint {path.name} belongs to a different run ({k} differs; --resume changed "
                                  "cannot apply this one)", key="checkpoint.checkpoint_dir", expected=cur[k],
                                  found=sig[k], hint=hint)

    def _load_checkpoint(self, path: Path, *, apply_new: bool = False, saved_step: int | None = None) -> None:
        """Load a verified checkpoint. Every file is checked before the collective that uses it, and all ranks agree
        on a failure, so a bad file is a message naming it (never a hang or a traceback). With ``apply_new``
        (--resume changed) the optimizer hyperparameters and the LR schedule are this run's, fast-forwarded."""
        from safetensors.torch import load_file

        from . import lora as lora_mod

        hint = (f"the checkpoint's files are damaged or were not written by this runtime: set checkpoint.restore_from "
                f"to another epoch_E_step_S dir, move {path} away, or pass --no-resume to start fresh")
        current = {"file": "model/"}

        def fail(e: BaseException) -> str:
            return (f"checkpoint {path} cannot be loaded: {current['file']} is not valid "
                    f"({type(e).__name__}: {_first_line(e)})")

        def step(label: str, fn):
            current["file"] = label
            try:
                return fn(), None
            except CheckpointError as e:
                return None, str(e.message)
            except _PASS_THROUGH:
                raise
            except BaseException as e:  # noqa: BLE001 - anything a damaged file makes the loaders raise (DCP: Base)
                return None, fail(e)

        def check(msg: str | None) -> None:
            msg = ck.agree(msg)
            if msg:
                raise CheckpointError(msg, key="checkpoint", hint=hint)

        model_dir = path / "model"
        params = {n: p for n, p in self.inner.named_parameters()}

        def read_model():
            if self.spec.peft is not None:
                adapter = load_file(str(model_dir / "adapter_model.safetensors"))
                try:
                    sd = lora_mod.trainable_keys_from_adapter(adapter, self.lora_info)
                except KeyError as e:
                    raise CheckpointError(f"checkpoint {path}: model/adapter_model.safetensors has no LoRA weights "
                                          f"for {e.args[0]}") from None
            else:
                if not self.env.is_main:
                    return {}
                sd = ck.load_hf_weights(model_dir)
                if getattr(self.hf_config, "tie_word_embeddings", False) and "lm_head.weight" not in sd:
                    emb = [k for k in sd if k.endswith("embed_tokens.weight")]
                    if emb:
                        sd["lm_head.weight"] = sd[emb[0]]
                missing = sorted({_canonical(k) for k in self.inner.state_dict()} - set(sd))
                if missing:
                    raise CheckpointError(f"checkpoint {path}: model/ lacks {len(missing)} weight(s), e.g. "
                                          f"{missing[0]}")
            canon = {_canonical(n): p for n, p in params.items()}
            for k, v in sd.items():
                p = params.get(k, canon.get(k))
                if p is not None and tuple(p.shape) != tuple(v.shape):
                    raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the model "
                                          f"{tuple(p.shape)}")
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise CheckpointError(f"checkpoint {path} holds non-finite weights ({k} has NaN/inf): it cannot "
                                          "be trained on")
            return sd

        label = "model/adapter_model.safetensors" if self.spec.peft is not None else "model/ (HF weights)"
        sd, msg = step(label, read_model)
        check(msg)
        ck.load_full(self.inner, sd, broadcast=self.spec.peft is None, strict=self.spec.peft is None)
        del sd
        snapshot = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        _, msg = step("optim/ (optimizer state)", lambda: ck.load_optimizer(self.optimizer, self.inner, path / "optim",
                                                                           partial=apply_new))
        check(msg)
        r = self.env.rank

        def small(rel: str):
            st = torch.load(path / rel, weights_only=True)
            if not isinstance(st, dict):
                raise CheckpointError(f"checkpoint {path}: {rel} does not hold a state dict (found "
                                      f"{type(st).__name__})")
            return st

        def load_steps():
            st = small("step_scheduler.pt")
            step_, epoch = st.get("step"), st.get("epoch")
            if not (isinstance(step_, int) and isinstance(epoch, int) and 0 <= epoch and 0 <= step_ and
                    (saved_step is None or step_ <= saved_step + 1)):
                raise CheckpointError(f"checkpoint {path}: step_scheduler.pt holds step {step_!r}, epoch {epoch!r}, "
                                      f"not the position of a checkpoint saved at step {saved_step}")
            self.steps.load_state_dict(st)

        _, msg = step("step_scheduler.pt", load_steps)
        if msg is None and self.lr_scheduler is not None and (path / "lr_scheduler.pt").is_file():
            def load_sched():
                st = small("lr_scheduler.pt")
                if apply_new:  # this run's schedule, at the checkpoint's step
                    n = st.get("num_steps")
                    if not isinstance(n, int) or n < 0:
                        raise CheckpointError(f"checkpoint {path}: lr_scheduler.pt has no step count")
                    self.lr_scheduler.num_steps = 0
                    self.lr_scheduler.step(n)
                else:
                    self.lr_scheduler.load_state_dict(st)
                lrs = [g["lr"] for g in self.optimizer.param_groups]
                if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in lrs):
                    raise CheckpointError(f"checkpoint {path}: lr_scheduler.pt gives the learning rate(s) {lrs}")

            if apply_new:
                for g, saved in zip(self.optimizer.param_groups, snapshot):
                    g.update(saved)  # the config's lr/betas/eps/weight decay, not the checkpoint's
            _, msg = step("lr_scheduler.pt", load_sched)
        elif msg is None and apply_new:
            for g, saved in zip(self.optimizer.param_groups, snapshot):
                g.update(saved)
            if self.lr_scheduler is not None:  # a schedule the checkpoint did not have: at the resumed step
                self.lr_scheduler.num_steps = 0
                self.lr_scheduler.step(self.steps.step)

        def load_loader():
            st = small(f"dataloader/dataloader_rank_{r}.pt")
            epoch, done = st.get("epoch"), st.get("yielded")
            if not (isinstance(epoch, int) and isinstance(done, int) and epoch >= 0 and done >= 0):
                raise CheckpointError(f"checkpoint {path}: dataloader_rank_{r}.pt holds epoch {epoch!r}, position "
                                      f"{done!r}")
            if isinstance(self.train_loader, MapLoader) and done > len(self.train_loader) and not apply_new:
                raise CheckpointError(f"checkpoint {path}: dataloader_rank_{r}.pt is at batch {done} of an epoch "
                                      f"of {len(self.train_loader)}")
            if "generator" in st:
                torch.Generator().set_state(st["generator"])  # a bad generator state fails here, not mid-training
            self.train_loader.load_state_dict(st)

        if msg is None:
            _, msg = step(f"dataloader/dataloader_rank_{r}.pt", load_loader)

        def load_rng():
            st = small(f"rng/rng_rank_{r}.pt")
            saved = ck.rng_state()
            try:
                ck.set_rng_state(st)  # a bad state fails here, not at the first step
            finally:
                ck.set_rng_state(saved)
            return st

        if msg is None:
            self.pending_rng, msg = step(f"rng/rng_rank_{r}.pt", load_rng)
        check(msg)

    def save_checkpoint(self, epoch: int, step: int, train_loss: float, val_losses: dict[str, float]) -> None:
        c = self.spec.ckpt
        if not c.enabled:
            return
        flag = self._nonfinite_flag()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag)
        bad = self._nonfinite_params() if float(flag) > 0 else []  # never a checkpoint of NaN/inf weights
        if bad:
            raise self._nonfinite_weights_error(bad, when=f"at step {step}, before its checkpoint is saved")
        from . import lora as lora_mod

        root = Path(c.checkpoint_dir)
        path = root / ck.step_dir_name(epoch, step)
        is_main = self.env.is_main
        prev = None
        if is_main and ((root / "LATEST").is_symlink() or (root / "LATEST").exists()):
            try:
                prev = (root / "LATEST").resolve()
            except (OSError, RuntimeError):
                prev = None
        final = self.steps.is_last_step

        def phase(fn) -> None:
            """Run one part of the save on every rank; any rank's I/O failure stops all of them cleanly."""
            err: BaseException | None = None
            try:
                fn()
            except _PASS_THROUGH:
                raise
            except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException; classified below
                err = e
            from .errors import io_reason

            reason = io_reason(err) if err is not None else None
            if err is not None and reason is None:
                ck.agree(f"rank {self.env.rank} failed while saving")
                raise err  # not an I/O failure: a bug, reported as an internal error
            msg = ck.agree(None if reason is None else reason[0])
            if msg:
                if is_main:
                    shutil.rmtree(path, ignore_errors=True)
                from .errors import io_hint

                raise CheckpointError(
                    f"saving the checkpoint of step {step} failed ({msg}); the partial {path} was removed and "
                    + (f"LATEST still points at {prev} (the last complete checkpoint)" if prev is not None else
                       "no complete checkpoint of this run exists yet"),
                    key="checkpoint.checkpoint_dir", hint=io_hint(reason[1] if reason else None, msg)
                    + "; rerun to resume from the last complete checkpoint")

        def prepare_dir() -> None:
            if is_main:
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True)

        phase(prepare_dir)
        ck.barrier()
        # model (gathered on every rank: a collective; written by rank 0)
        held = {"sd": ck.gather_full(self.inner, trainable_only=self.spec.peft is not None)}

        def write_model() -> None:
            if not is_main:
                return
            if self.spec.peft is not None:
                tensors = lora_mod.adapter_tensors(held["sd"], self.lora_info)
                ck.save_adapter(path / "model", tensors, self._adapter_config(), self._peft_extra(), self.tok)
            else:
                ck.save_hf_model(path / "model", self.hf_config, held["sd"], self.tok)

        phase(write_model)
        held.clear()
        phase(lambda: ck.save_optimizer(self.optimizer, self.inner, path / "optim"))
        r = self.env.rank

        def write_states() -> None:
            (path / "rng").mkdir(exist_ok=True)
            (path / "dataloader").mkdir(exist_ok=True)
            ck.save_small(ck.rng_state(), path / "rng" / f"rng_rank_{r}.pt")
            ck.save_small(self.train_loader.state_dict(), path / "dataloader" / f"dataloader_rank_{r}.pt")
            if is_main:
                ck.save_small(self.steps.state_dict(), path / "step_scheduler.pt")
                if self.lr_scheduler is not None:
                    ck.save_small(self.lr_scheduler.state_dict(), path / "lr_scheduler.pt")
                (path / "config.yaml").write_text(dump_yaml(self.raw_cfg))
                losses = {"train_loss": train_loss}
                if len(val_losses) == 1:
                    losses["val_loss"] = next(iter(val_losses.values()))
                else:
                    losses.update(val_losses)
                (path / "losses.json").write_text(json.dumps(losses, indent=2))

        phase(write_states)
        ck.barrier()
        removed: list[str] = []

        def publish() -> None:
            if is_main:
                ck.write_manifest(path, epoch=epoch, step=step, signature=self._signature(), training=self.fingerprint)
                ck.publish_latest(root, path)
                removed.extend(ck.apply_retention(root, c.max_recent_checkpoints))

        phase(publish)
        if is_main:
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
        try:
            self.optimizer.step()
        except RuntimeError as e:
            if "overflow" not in str(e):
                raise
            raise RunError(f"the optimizer update of step {self.steps.step} overflowed ({_first_line(e)}; learning "
                           f"rate {lr_applied:g}); nothing was saved from this "
                           "step", key="optimizer.lr",
                           hint="lower the learning rate (optimizer.lr, lr_scheduler.max_lr)") from None
        self.optimizer.zero_grad(set_to_none=True)
        # did the update leave every trainable weight finite? one fused norm over this rank's shards, reduced with
        # the loss below (no extra host sync); a weight NaN/inf anywhere stops the run before anything is saved
        bad_w = self._nonfinite_flag()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(1)
        if spec.fp8 is not None:
            from .fp8 import precompute_scales, wants_precompute

            if wants_precompute(spec.fp8, self.meshes.dp_shard_size):
                precompute_scales(self.model)
        flag = torch.tensor([1.0 if self._signal else 0.0], device=self.env.device)
        if spec.dist.tp > 1 and dist.is_initialized():  # TP shards differ across the TP group: reduce over all ranks
            dist.all_reduce(bad_w)
        packed = torch.cat([report.reshape(1), flag, bad_w.reshape(1).to(flag.device)])
        packed = self._all_reduce(packed)
        vals = torch.cat([packed, grad_norm.reshape(1).float().to(packed.device)]).tolist()
        if vals[1] > 0:
            self.steps.sigterm_flag = True
        out = {"loss": vals[0], "grad_norm": vals[3], "num_label_tokens": step_tokens, "num_tokens": step_nonpad,
               "lr": self.optimizer.param_groups[0]["lr"], "lr_applied": lr_applied}
        if vals[2] > 0:
            out["nonfinite_weights"] = True
        return out

    def _trainable(self) -> list[tuple[str, torch.Tensor]]:
        if getattr(self, "_trainable_cache", None) is None:
            self._trainable_cache = [(_canonical(n), p) for n, p in self.model.named_parameters() if p.requires_grad]
        return self._trainable_cache

    @torch.no_grad()
    def _nonfinite_flag(self) -> torch.Tensor:
        """1.0 when a trainable weight on this rank is NaN/inf, else 0.0 (a device tensor; no host sync).

        One fused L2 norm per dtype group (``torch._foreach_norm``): NaN/inf make it non-finite. Its fp32 sum of
        squares also overflows for weights beyond ~1e19, so a flagged step is confirmed tensor by tensor
        (``_nonfinite_params``) before the run is stopped."""
        ts = [t for t in (_local(p) for _, p in self._trainable()) if t.numel()]
        if not ts:
            return torch.zeros((), dtype=torch.float32, device=self.env.device)
        norms = torch._foreach_norm(ts, 2.0)
        total = torch.stack([n.float() for n in norms]).sum()
        return (~torch.isfinite(total)).float().to(self.env.device)

    @torch.no_grad()
    def _nonfinite_params(self) -> list[tuple[str, int]]:
        """(name, number of NaN/inf elements) of every trainable weight that has any, over all ranks (collective)."""
        named = self._trainable()
        counts = torch.tensor([int((~torch.isfinite(_local(p))).sum()) if _local(p).is_floating_point() else 0
                               for _, p in named] or [0], dtype=torch.float64, device=self.env.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        return [(n, int(c)) for (n, _), c in zip(named, counts.tolist()) if c > 0]

    def _nonfinite_weights_error(self, bad: list[tuple[str, int]], *, when: str, lr: float | None = None) -> RunError:
        last = getattr(self, "last_checkpoint", None)
        saved = (f"the last checkpoint with finite weights is {last}" if last is not None else
                 "no checkpoint of this run holds finite weights yet" if self.spec.ckpt.enabled else
                 "checkpointing is off")
        names = ", ".join(n for n, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        total = len(self._trainable())
        lr = self.optimizer.param_groups[0].get("lr") if lr is None else lr
        return RunError(f"the trainable weights are not finite {when}: {len(bad)} of {total} tensors hold NaN/inf "
                        f"({names}). The run stopped without saving them; {saved}",
                        hint=f"the learning rate applied was {lr:g}: lower it (optimizer.lr, lr_scheduler.max_lr), "
                             "check optimizer.eps / weight_decay, or train in bf16/fp32 instead of fp16")

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
                    if out.get("nonfinite_weights"):
                        self._stop_nonfinite_weights(epoch, out)
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

    def _stop_nonfinite_weights(self, epoch: int, out: dict[str, Any]) -> None:
        """The optimizer update of this step made a weight NaN/inf: nothing of it is saved (LATEST keeps pointing at
        the last checkpoint, whose weights were finite); stop with the step and the tensors named."""
        step = self.steps.step
        bad = self._nonfinite_params()
        if not bad:  # the fused check's fp32 overflow (weights beyond ~1e19), not NaN/inf: train on
            self.log(f"warning: step {step}: trainable weights beyond 1e19 in magnitude (finite); the loss will "
                     "likely diverge")
            return
        if self.env.is_main and self.metrics is not None:
            self.metrics.write({"type": "train", "step": step, "epoch": epoch, "loss": out["loss"],
                                "grad_norm": out["grad_norm"], "lr": out["lr"], "lr_applied": out["lr_applied"],
                                "num_label_tokens": out["num_label_tokens"], "num_tokens": out["num_tokens"],
                                "nonfinite": True, "nonfinite_weights": [n for n, _ in bad[:20]]})
        raise self._nonfinite_weights_error(bad, when=f"after the optimizer update of step {step}",
                                            lr=out["lr_applied"])

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
                 tokenizer_path: str | None, tokenizer_note: str | None, stop_after: int | None = None,
                 resume: str = "auto") -> int:
    """Run one process's share of the job; returns an exit code (errors are reported on rank 0)."""
    from .errors import io_error_message
    from .parallel import destroy

    tr = Trainer(spec, run_dir=run_dir, raw_cfg=raw_cfg, merge=merge, tokenizer_path=tokenizer_path,
                 tokenizer_note=tokenizer_note, stop_after=stop_after, resume=resume)
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
    except OSError as e:  # a write the disk refused (full, file-size limit, read-only) or a file that vanished
        if tr.env is None or tr.env.is_main:
            print(f"nemo-migrate run: error: {io_error_message(e)}", file=sys.stderr, flush=True)
        code = 1
    except torch.OutOfMemoryError as e:
        if tr.env is None or tr.env.is_main:
            first = str(e).split(". ")[0]
            print(f"nemo-migrate run: error: out of GPU memory ({first}). Hint: distributed.activation_checkpointing: true, "
                  "a smaller step_scheduler.local_batch_size, or more GPUs (FSDP2 shards the model)", file=sys.stderr, flush=True)
        code = 1
    except _PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001 - also DCP's CheckpointException (a BaseException)
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
