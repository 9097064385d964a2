"""Steps and cadence rows (SCH*): epochs, validation and checkpoint cadence, callbacks."""

from __future__ import annotations

import math
from pathlib import Path

from ... import schema
from ...ir import Node
from ..context import Ctx, Registry, Result
from .data import _data_kind

transform = Registry()


def _train_file(ctx: Ctx) -> Path | None:
    root = ctx.v("data.dataset_root")
    if not isinstance(root, str) or not root:
        return None
    p = Path(root)
    if not p.is_absolute() and ctx.job.data_dir:
        p = Path(ctx.job.data_dir) / p
    f = p / "training.jsonl"
    return f if f.is_file() else None


def _count_lines(path: Path, cap: int) -> int:
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
                if n >= cap:
                    break
    return n


@transform
def epochs(ctx: Ctx) -> Result | None:
    if ctx.has("nemo1.trainer.sft.max_steps"):
        return Result("exact", "NeMo-Aligner: max_epochs caps the run (N1013 writes num_epochs)")
    ctx.set("step_scheduler.num_epochs", None, "trainer.max_epochs", note="follow max_steps")
    for p in ("trainer.min_epochs", "trainer.min_steps"):
        if ctx.v(p) not in (None, 0):
            return Result("unsupported", f"{p}={ctx.v(p)}: Automodel has no minimum-length setting")
    gbs, steps = ctx.v("data.global_batch_size"), ctx.v("trainer.max_steps")
    f = _train_file(ctx)
    if f is not None and isinstance(gbs, int) and isinstance(steps, int) and steps > 0:
        need = gbs * steps
        n = _count_lines(f, need)
        if n >= need:
            return Result("exact", f"{f.name} has at least GBS x max_steps = {need} samples, so no epoch ends inside the run "
                          "(NeMo's up-sampling and Automodel's epochs read the same samples count)")
        return Result("approximate", f"{f.name} holds {n} samples < GBS x max_steps = {need}: NeMo repeats the file inside steps; "
                      f"Automodel runs ceil(steps / steps-per-epoch) epochs with a short last step in each epoch")
    return None


@transform
def val_every(ctx: Ctx) -> Result | None:
    if _validation_off(ctx):
        return Result("exact", "validation is off (limit_val_batches=0), so its cadence is never used (SCH012)")
    v = ctx.v("trainer.val_check_interval")
    if v is None:
        return Result("approximate", "val_check_interval=None validates once per (up-sampled) epoch in NeMo, i.e. at the end; Automodel validates at the last step")
    if isinstance(v, bool):
        return Result("unsupported", f"val_check_interval={v!r}")
    if isinstance(v, int) or (isinstance(v, float) and v > 1 and v.is_integer()):
        ctx.set("step_scheduler.val_every_steps", int(v), "trainer.val_check_interval")
        if ctx.v("trainer.check_val_every_n_epoch") not in (None, 1):
            return Result("approximate", "check_val_every_n_epoch is ignored (one up-sampled epoch in NeMo)")
        return None
    if isinstance(v, float) and 0 < v <= 1:
        steps = ctx.v("trainer.max_steps")
        n = max(1, int(v * math.ceil(steps * 1.005))) if isinstance(steps, int) and steps > 0 else None
        if n:
            ctx.set("step_scheduler.val_every_steps", n, "trainer.val_check_interval", "trainer.max_steps")
        return Result("approximate", f"val_check_interval={v} is a fraction of NeMo's up-sampled epoch (~max_steps x 1.005 steps): every {n} steps")
    return Result("unsupported", f"val_check_interval={v!r}")


def _validation_off(ctx: Ctx) -> bool:
    v = ctx.v("trainer.limit_val_batches")
    return v == 0 and not isinstance(v, bool)


@transform
def validation_off(ctx: Ctx) -> Result | None:
    if _validation_off(ctx):
        for path in ("validation_dataset", "validation_dataloader", "step_scheduler.val_every_steps"):
            ctx.unset(path)
    return None


@transform
def limit_val(ctx: Ctx) -> Result | None:
    v = ctx.v("trainer.limit_val_batches")
    if v is None or v == 1.0 or v is True:
        return None
    if _data_kind(ctx) == "megatron":
        return Result("exact", "sizes the Megatron validation split (validation_dataset.num_val_samples, DAT015)")
    if (_data_kind(ctx) == "chat" or ctx.v("data.chat")) and v != 0:
        # ChatDatasetConfig has no sample limit (0.7 rejects limit_dataset_samples there): validation reads the whole file
        return Result("approximate", f"limit_val_batches={v}: Automodel 0.7's ChatDataset has no sample limit, so each validation "
                      "reads the whole validation file (the validation loss is averaged over more samples; training is the same)")
    gbs = ctx.v("data.global_batch_size")
    if isinstance(v, int) and not isinstance(v, bool):
        if v == 0:
            return Result("exact", "limit_val_batches=0 switches validation off in both (SCH012 leaves out the validation sections)")
        ctx.set("validation_dataset.limit_dataset_samples", v * gbs, "trainer.limit_val_batches", "data.global_batch_size",
                note=f"{v} batches x GBS {gbs}")
        return Result("approximate", f"{v} NeMo validation batches of GBS {gbs} samples = the first {v * gbs} samples (limit_dataset_samples must not exceed the file)")
    if isinstance(v, float) and 0 < v < 1:
        return Result("unsupported", f"limit_val_batches={v} is a fraction of the validation set; set validation_dataset.limit_dataset_samples to that many samples")
    return Result("unsupported", f"limit_val_batches={v!r}")


@transform
def callbacks(ctx: Ctx) -> Result | None:
    items = ctx.v("trainer.callbacks") or []
    unknown = []
    for cb in items:
        cls = cb.cls if isinstance(cb, Node) else str(cb)
        if cls == "TimingCallback" or cls == "MegatronCommOverlapCallback":
            continue
        if cls == "GarbageCollectionCallback" and isinstance(cb, Node):
            n = schema.value(cb, "gc_interval_train")
            if isinstance(n, int):
                ctx.set("step_scheduler.gc_every_steps", n, "trainer.callbacks")
            continue
        unknown.append(cls)
    if unknown:
        return Result("unsupported", f"callbacks without an Automodel equivalent: {', '.join(unknown)}")
    if any(isinstance(cb, Node) and cb.cls == "GarbageCollectionCallback" for cb in items):
        return Result("exact", "GarbageCollectionCallback -> step_scheduler.gc_every_steps; timing and comm-overlap callbacks do not change the math")
    return None


@transform
def enable_checkpointing(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.enable_checkpointing") is False:
        ctx.set("checkpoint.enabled", False, "trainer.enable_checkpointing")
    return None


@transform
def cadence_flags(ctx: Ctx) -> Result | None:
    ctx.set("step_scheduler.save_checkpoint_every_epoch", False)
    ctx.set("step_scheduler.validate_on_checkpoint", False)
    return None
