"""Checkpoint and logging rows (CKP*, LOG*)."""

from __future__ import annotations

import posixpath

from ... import schema
from ..context import Ctx, Registry, Result

transform = Registry()


@transform
def checkpoint_dir(ctx: Ctx) -> Result | None:
    if ctx.node("log") is None:
        ctx.set("checkpoint.checkpoint_dir", "nemo_experiments/default/checkpoints")
        return Result("approximate", "no NeMoLogger: Lightning's defaults; Automodel writes to this folder")
    dirpath = ctx.v("log.ckpt.dirpath") if ctx.node("log.ckpt") else None
    explicit = ctx.v("log.explicit_log_dir")
    if dirpath:
        ctx.set("checkpoint.checkpoint_dir", dirpath, "log.ckpt.dirpath")
    elif explicit:
        ctx.set("checkpoint.checkpoint_dir", posixpath.join(explicit, "checkpoints"), "log.explicit_log_dir")
    else:
        base = ctx.v("log.log_dir") or "nemo_experiments"
        name = ctx.v("log.name") or "default"
        ctx.set("checkpoint.checkpoint_dir", posixpath.join(base, name, "checkpoints"), "log.log_dir", "log.name")
    if ctx.v("trainer.enable_checkpointing") is not False:
        ctx.set("checkpoint.enabled", True, "log._target_", status="exact")
    ctx.set("checkpoint.model_save_format", "safetensors", "log._target_", status="exact")
    return None


@transform
def ckpt_every(ctx: Ctx) -> Result | None:
    steps = ctx.v("trainer.max_steps")
    if ctx.node("log.ckpt") is None:
        ctx.set("step_scheduler.ckpt_every_steps", steps, "trainer.max_steps", note="at the end only")
        return Result("approximate", "no ModelCheckpoint in NeMoLogger; checkpoint once at the end")
    n = ctx.v("log.ckpt.every_n_train_steps")
    if n:
        ctx.set("step_scheduler.ckpt_every_steps", int(n), "log.ckpt.every_n_train_steps")
        return None
    ctx.set("step_scheduler.ckpt_every_steps", steps, "trainer.max_steps", note="at the end (save_last)")
    return Result("exact", "no periodic checkpoints; the last one is saved at the end in both")


@transform
def retention(ctx: Ctx) -> Result | None:
    k = ctx.v("log.ckpt.save_top_k")
    if k is None or ctx.node("log.ckpt") is None:
        return None
    if k == -1:
        return Result("exact", "save_top_k=-1 keeps every checkpoint; Automodel keeps all by default")
    if k == 0:
        return Result("approximate", "save_top_k=0 keeps only the last checkpoint")
    ctx.set("checkpoint.max_recent_checkpoints", int(k), "log.ckpt.save_top_k")
    return None


@transform
def tensorboard(ctx: Ctx) -> Result | None:
    if ctx.node("log.tensorboard") is not None:
        ctx.note("warning", "TensorBoard logging is not migrated: Automodel 0.7 has no TensorBoard logger; "
                 "per-step metrics are written to <checkpoint_dir>/training.jsonl (or configure wandb)")
        return Result("dropped", "Automodel 0.7 has no TensorBoard logger (no effect on training); metrics go to <checkpoint_dir>/training.jsonl")
    return None


@transform
def wandb(ctx: Ctx) -> Result | None:
    w = ctx.node("log.wandb")
    if w is None:
        return None
    for k in ("project", "entity", "name", "group", "tags", "notes"):
        v = schema.value(w, k)
        if v is not None:
            ctx.set(f"wandb.{k}", v, f"log.wandb.{k}")
    if schema.value(w, "save_dir") not in (None, "."):
        ctx.set("wandb.dir", schema.value(w, "save_dir"), "log.wandb.save_dir", note="wandb.init(dir=...)")
    return Result("exact", "Weights & Biases run settings (rank 0 logs)")


@transform
def extra_loggers(ctx: Ctx) -> Result | None:
    if ctx.v("log.extra_loggers"):
        return Result("unsupported", "extra Lightning loggers have no Automodel equivalent")
    return None
