"""The training loop: Automodel 0.7's ``TrainFinetuneRecipeForNextTokenPrediction`` for one resolved ``Spec``.

``setup`` builds, in order: process group and meshes, tokenizer, data, the model (``models.build_model``, then
``parallel.parallelize``, which owns the order of kernels, FP8, LoRA, activation checkpointing, TP, compile and
FSDP2), the optimizer and schedules, and the ``Checkpointer`` (``checkpointer.py``: save, resume, the run's
fingerprint, ``--merge``), which resumes when a checkpoint is there.

The loop (``train``): per optimizer step the label-token count of the step is all-reduced over DP once (host sync),
every micro-batch runs forward + masked CE + backward (FSDP2 gradient sync only on the last micro-batch, as
``defer_fsdp_grad_sync``), then gradients are clipped (always; max_norm default 1.0), the optimizer and the LR
scheduler step, and the loss, the preemption flag and the finite-weights flag (``guard.py``) are all-reduced in one
collective. No other host syncs per micro-batch. After the step: a NaN/inf loss or gradient stops the run (the
weights from before it are saved), a NaN/inf weight stops it unsaved; metrics, validation, checkpoint and GC follow
the StepScheduler's cadence; a preemption signal checkpoints and stops.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as ck
from .checkpointer import Checkpointer, TrainState
from .data import MapLoader, count_label_tokens
from .errors import RunError
from .guard import WeightGuard
from .inputs import build_loaders, build_tokenizer
from .loss import masked_ce_sum, microbatch_loss
from .metrics import Progress, RunLoggers, Timer, peak_mem_gib, plot_losses
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


class Preemption:
    """``step_scheduler.preemption_signal`` (0.7: SIGTERM) while training: a signal only sets ``received``; the step
    reduces it over the ranks with its loss and the StepScheduler then checkpoints and stops (``sigterm_flag``)."""

    def __init__(self, names: list[str]):
        self.names, self.received, self._old = names, False, {}

    def __enter__(self) -> Preemption:
        def handler(signum, frame):  # noqa: ARG001
            self.received = True

        try:
            for name in self.names:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}


def tail_padding(labels: torch.Tensor, ignore: int = -100) -> int:
    flipped = labels.flip(dims=[1]) == ignore
    return int(torch.cumprod(flipped.int(), dim=1).sum().item())


class Trainer:
    def __init__(self, spec: Spec, *, run_dir: Path, raw_cfg: dict[str, Any], merge: bool = False,
                 tokenizer_path: str | None = None, tokenizer_note: str | None = None, stop_after: int | None = None,
                 resume: str = "auto"):
        self.spec = spec
        self.resume_mode = resume
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
        self.ckpt: Checkpointer | None = None
        self.preemption = Preemption(spec.step.preemption_signal)

    def log(self, msg: str) -> None:
        if self.env is None or self.env.is_main:
            if self.progress is not None:
                self.progress.line(msg)
            else:
                print(msg, flush=True)

    def say(self, msg: str) -> None:
        """Rank 0, on stderr: what a user must not miss (resuming a checkpoint, and from where)."""
        if self.env is None or self.env.is_main:
            print(msg, file=sys.stderr, flush=True)

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
        ck.seed_all(spec.seed + env.rank)  # StatefulRNG(seed, ranked=True)
        for n in spec.notes:
            self.log(f"note: {n}")
        if self.tokenizer_note:
            self.log(self.tokenizer_note)
        self.tok = build_tokenizer(spec, self.tokenizer_path, announce=self.tokenizer_note is None, log=self.log)
        self.train_loader, self.val_loaders = build_loaders(spec, self.tok, self.meshes, env, log=self.log)
        self._build_model()
        self._build_optim()
        self.ckpt = Checkpointer(spec, TrainState(inner=self.inner, optimizer=self.optimizer,
                                                  lr_scheduler=self.lr_scheduler, steps=self.steps,
                                                  loader=self.train_loader, tok=self.tok, lora_info=self.lora_info,
                                                  hf_config=self.hf_config, num_params=self.num_params),
                                 env=env, run_dir=self.run_dir, raw_cfg=self.raw_cfg, guard=self.guard,
                                 resume_mode=self.resume_mode, log=self.log, meshes=self.meshes, say=self.say)
        self.ckpt.resume()

    def _model_vocab_hint(self) -> int | None:
        if self.tok is not None:
            return len(self.tok)
        if self.spec.train.kind == "mock":
            return int(self.spec.train.params.get("vocab_size", 1024))
        return None

    def _build_model(self) -> None:
        from .models import build_model, count_params
        from .parallel import parallelize

        spec, env = self.spec, self.env
        with ck.scoped_seed(spec.seed):  # unranked: every rank builds identical weights (and LoRA init) before sharding
            special = None if self.tok is None else {k: getattr(self.tok, k, None) for k in
                                                     ("pad_token_id", "bos_token_id", "eos_token_id")}
            model, desc, random_w = build_model(spec.model, tokenizer_vocab=self._model_vocab_hint(), device=env.device,
                                                special_ids=special)
            self.log(f"model: {desc}" + ("  [weights are RANDOM: this is a proxy, not the real model]"
                                         if random_w else ""))
            model.train()
            par = parallelize(model, spec, self.meshes, env=env, log=self.log, run_dir=self.run_dir)
        self.model, self.inner, self.lora_info, self.liger = par.model, par.inner, par.lora_info, par.liger
        self.hf_config = model.config
        self.guard = WeightGuard(self.model, env.device)
        total, trainable = count_params(self.inner)
        self.num_params, self.num_trainable = total, trainable
        self.log(f"parameters: {total:,} total, {trainable:,} trainable ({100.0 * trainable / max(total, 1):.3f}%)")
        d = spec.dist
        self.log(f"distributed: {d.strategy}, world {env.world_size} (dp {d.dp}"
                 + (f" = {d.dp_replicate} replicate x {d.dp // d.dp_replicate} shard" if d.dp_replicate > 1 else "")
                 + f", tp {d.tp}{' + sequence parallel' if d.sequence_parallel else ''}), device {env.device.type}, "
                 f"compute {d.param_dtype or d.autocast_dtype or str(par.storage).replace('torch.', '')}; "
                 f"grad accumulation {spec.step.grad_acc_steps} x local batch {spec.step.local_batch_size}")

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
            raise RunError(f"the optimizer update of step {self.steps.step} overflowed ({ck.first_line(e)}; learning "
                           f"rate {lr_applied:g}); nothing was saved from this "
                           "step", key="optimizer.lr",
                           hint="lower the learning rate (optimizer.lr, lr_scheduler.max_lr)") from None
        self.optimizer.zero_grad(set_to_none=True)
        # did the update leave every trainable weight finite? one fused norm over this rank's shards, reduced with
        # the loss below (no extra host sync); a weight NaN/inf anywhere stops the run before anything is saved
        bad_w = self.guard.flag()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step(1)
        if spec.fp8 is not None:
            from .fp8 import precompute_scales, wants_precompute

            if wants_precompute(spec.fp8, self.meshes.dp_shard_size):
                precompute_scales(self.model)
        flag = torch.tensor([1.0 if self.preemption.received else 0.0], device=self.env.device)
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
        with ck.scoped_seed(1 + self.env.rank):
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
    def train(self) -> None:
        env, steps = self.env, self.steps
        self.ckpt.restore_rng()
        is_main = env.is_main
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = RunLoggers(self.run_dir, append=self.ckpt.resumed_from is not None, cfg=self.raw_cfg,
                                      ckpt_dir=Path(self.spec.ckpt.checkpoint_dir) if self.spec.ckpt.enabled else None,
                                      run_name=self.run_dir.name)
        self.progress = Progress(steps.max_steps, start=steps.step, enabled=is_main)
        if steps.step >= steps.max_steps:
            self.say(f"nothing to do: the checkpoint {self.ckpt.resumed_from} is already at step {steps.step} of "
                     f"{steps.max_steps}; to train again from the start pass --no-resume (or another --out), to "
                     "train longer raise --max-steps")
        timer = Timer()
        last_loss = float("nan")
        done_here = 0
        try:
            with self.preemption:
                for epoch in steps.epochs:
                    steps.set_epoch(epoch)
                    if self.stop_after is not None and done_here >= self.stop_after:
                        break
                    for batches in steps:
                        out = self.train_step(batches)
                        done_here += 1
                        if out.get("nonfinite"):
                            self._stop_nonfinite(epoch, out)
                        if out.get("nonfinite_weights"):
                            self._stop_nonfinite_weights(epoch, out)
                        self._report(out, timer.lap())
                        last_loss = out["loss"]
                        val_losses = self._validate_all() if steps.is_val_step and self.val_loaders else {}
                        if steps.is_ckpt_step:
                            self.ckpt.save(epoch, steps.step, out["loss"], val_losses)
                        if steps.is_gc_step:
                            gc.collect()
                        timer.reset()
                        if self.stop_after is not None and done_here >= self.stop_after:
                            self.log(f"stopping after {done_here} step(s) (--stop-after); the schedule was not changed")
                            break
        except BaseException:
            failed = True
            raise
        else:
            failed = False
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.metrics is not None:
                self.metrics.close(failed=failed)
        self.final_loss = last_loss
        if steps.sigterm_flag:
            self.log("stopped by a preemption signal after checkpointing")

    def _report(self, out: dict[str, Any], dt: float) -> None:
        """The step's metrics line (rank 0) and progress."""
        if not self.env.is_main:
            return
        n = out["num_tokens"]
        rec = {"type": "train", "step": self.steps.step, "epoch": self.steps.epoch, "loss": out["loss"],
               "grad_norm": out["grad_norm"], "lr": out["lr"], "lr_applied": out["lr_applied"],
               "num_label_tokens": out["num_label_tokens"], "num_tokens": n, "tokens_per_s": n / max(dt, 1e-9),
               "tokens_per_s_per_gpu": n / max(dt, 1e-9) / self.env.world_size, "step_time_s": dt,
               "peak_mem_gib": peak_mem_gib(self.env.device)}
        self.metrics.write(rec)
        self.progress.step(rec)

    def _validate_all(self) -> dict[str, float]:
        val_losses: dict[str, float] = {}
        for name, loader in self.val_loaders.items():
            v = self.validate(name, loader)
            val_losses[name] = v["val_loss"]
            if self.env.is_main:
                self.metrics.write({"type": "val", "name": name, "step": self.steps.step, "epoch": self.steps.epoch,
                                    "val_loss": v["val_loss"], "num_label_tokens": v["num_label_tokens"],
                                    "lr": self.optimizer.param_groups[0]["lr"], "peak_mem_gib": peak_mem_gib(self.env.device)})
                self.log(f"validation[{name}] step {self.steps.step}: loss {v['val_loss']:.4f} "
                         f"over {v['num_label_tokens']} label tokens")
        return val_losses

    def _stop_nonfinite(self, epoch: int, out: dict[str, Any]) -> None:
        """A NaN/inf loss or gradient: the weights are left as they were before this step; save them and stop."""
        step = self.steps.step
        self._write_nonfinite(epoch, out)
        where = ""
        if self.spec.ckpt.enabled:
            self.ckpt.save(epoch, step, float("nan"), {})
            where = f"; the weights from before this step are saved in {self.ckpt.last}" if self.ckpt.last else ""
        raise RunError(f"the loss or gradient is not finite at step {step} (loss {out['loss']}, grad norm "
                       f"{out['grad_norm']}): stopped without applying it{where}",
                       hint="lower the learning rate, check the data of this step, or use bf16/fp32 instead of fp16")

    def _stop_nonfinite_weights(self, epoch: int, out: dict[str, Any]) -> None:
        """The optimizer update of this step made a weight NaN/inf: nothing of it is saved (LATEST keeps pointing at
        the last checkpoint, whose weights were finite); stop with the step and the tensors named."""
        step = self.steps.step
        bad = self.guard.bad()
        if not bad:  # the fused check's fp32 overflow (weights beyond ~1e19), not NaN/inf: train on
            self.log(f"warning: step {step}: trainable weights beyond 1e19 in magnitude (finite); the loss will "
                     "likely diverge")
            return
        self._write_nonfinite(epoch, out, nonfinite_weights=[n for n, _ in bad[:20]])
        raise self.guard.error(bad, when=f"after the optimizer update of step {step}", lr=out["lr_applied"],
                               saved=self.ckpt.finite_note())

    def _write_nonfinite(self, epoch: int, out: dict[str, Any], **extra: Any) -> None:
        if self.env.is_main and self.metrics is not None:
            self.metrics.write({"type": "train", "step": self.steps.step, "epoch": epoch, "loss": out["loss"],
                                "grad_norm": out["grad_norm"], "lr": out["lr"], "lr_applied": out["lr_applied"],
                                "num_label_tokens": out["num_label_tokens"], "num_tokens": out["num_tokens"],
                                "nonfinite": True, **extra})

    def finish(self) -> None:
        """--merge export, summary.json, loss.png and the summary line."""
        env, s = self.env, self.spec
        if self.merge:
            self.ckpt.export_merged()
        if not env.is_main:
            return
        (self.run_dir / "summary.json").write_text(json.dumps({
            "steps": self.steps.step, "final_loss": getattr(self, "final_loss", None),
            "total_params": self.num_params, "trainable_params": self.num_trainable,
            "grad_acc_steps": s.step.grad_acc_steps, "local_batch_size": s.step.local_batch_size,
            "world_size": env.world_size, "dp": s.dist.dp, "tp": s.dist.tp,
            "lora_tied_groups": len(self.lora_info.tied_groups) if self.lora_info else 0,
            "nemo_compat": {"lora_tied_a": s.compat.lora_tied_a, "loss_reduction": s.compat.loss_reduction,
                            "master_weights": s.compat.master_weights, "no_decay_1d": s.compat.no_decay_1d,
                            "lr_values": bool(s.compat.lr_values)}}, indent=2) + "\n")
        ok = plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png",
                         title=f"{Path(s.config_path).parent.name}/{Path(s.config_path).name}")
        last = self.ckpt.last
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
    except ck.PASS_THROUGH:
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
