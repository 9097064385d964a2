"""NeMo 1.0 / NeMo-Aligner rows (N1*): settings kept as nemo1.<path>, Aligner's epochs."""

from __future__ import annotations

import math
from pathlib import Path

from ...sources.nemo1 import aligner_steps_per_epoch, count_samples
from ..context import Ctx, Registry, Result
from .common import _mine

transform = Registry()


@transform
def early_stopping(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.exp_manager.create_early_stopping_callback"):
        patience = ctx.v("nemo1.exp_manager.early_stopping_callback_params.patience")
        return Result("unsupported", f"early stopping on val_loss (patience {patience}): Automodel 0.7 has none, so training runs to max_steps")
    return None


@transform
def amp_o2(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.megatron_amp_O2"):
        return Result("exact", "megatron_amp_O2: half-precision weights with fp32 master copies in the optimizer (see OPT007 for the master copies)")
    return None


@transform
def nemo1_model_misc(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.fsdp"):
        return Result("exact", "NeMo 1.0 torch FSDP and Automodel's FSDP2 shard the same model; the math is unchanged")
    return None


@transform
def unused_peft_settings(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.peft.lora_tuning.weight_tying"):
        return Result("unsupported", "LoRA weight tying across layers has no Automodel equivalent")
    if ctx.v("nemo1.model.peft.lora_tuning.variant") == "canonical":
        return Result("exact", "variant canonical: separate q/k/v and gate/up adapters (CanonicalLoRA)")
    return None

_MIRRORED = {"label_key": "data.dataset_kwargs.label_key", "prompt_template": "data.dataset_kwargs.prompt_template",
             "truncation_field": "data.dataset_kwargs.truncation_field", "add_eos": "data.dataset_kwargs.add_eos",
             "add_bos": "data.dataset_kwargs.add_bos", "add_sep": "data.dataset_kwargs.add_sep", "max_seq_length": "data.seq_length"}


@transform
def validation_mirror(ctx: Ctx) -> Result | None:
    for key, train_path in _MIRRORED.items():
        v = ctx.v(f"nemo1.model.data.validation_ds.{key}")
        if v is not None and v != ctx.v(train_path):
            return Result("unsupported", f"validation_ds.{key}={v!r} differs from the training setting {ctx.v(train_path)!r}; "
                          "Automodel formats validation data like the training data")
    metric = ctx.v("nemo1.model.data.validation_ds.metric.name")
    if metric not in (None, "loss"):
        return Result("unsupported", f"validation metric {metric!r}: Automodel validates with the loss only")
    return None


@transform
def test_ds(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.data.test_ds.file_names"):
        return Result("unsupported", "test files are evaluated after training by the NeMo 1.0 script; Automodel has no test pass")
    return None


@transform
def chat_tokens(ctx: Ctx) -> Result | None:
    if ctx.v("data.chat"):
        return Result("approximate", "NeMo's chat prompt tokens are replaced by the tokenizer's chat template (see DAT001)")
    return None


@transform
def nemo1_defaults_note(ctx: Ctx) -> Result | None:
    node = ctx.node("nemo1")
    if node is not None and node.prov.detail:
        ctx.note("info", node.prov.detail)
    return None


def automodel_epoch_len(samples: int, gbs: int, lbs: int, dp: int) -> int:
    """Optimizer steps per epoch in Automodel 0.7: StatefulDistributedSampler(drop_last=True) gives each DP rank
    samples // dp, the loader makes ceil(. / local_batch) micro-batches, StepScheduler.epoch_len = ceil(. / grad_acc)."""
    grad_acc = max(gbs // (lbs * dp), 1)
    return math.ceil(math.ceil((samples // dp) / lbs) / grad_acc)


@transform
def aligner_epochs(ctx: Ctx) -> Result | None:
    """NeMo-Aligner's SupervisedTrainer: epochs always cap the run (SCH002's up-sampling is NeMo 2's and NeMo 1.0's)."""
    e = ctx.v("trainer.max_epochs", 1)
    limit = ctx.v("nemo1.trainer.sft.limit_train_batches", 1.0)
    if not isinstance(e, int) or isinstance(e, bool) or e < 1:
        kn = ctx.k("trainer.max_epochs")
        ctx.diags.error("NM249", f"trainer.sft.max_epochs={e!r}: NeMo-Aligner's SupervisedTrainer loops over range(max_epochs), so nothing "
                        "would train", key="trainer.sft.max_epochs", hint="set a positive number of epochs", **(kn.prov.where() if kn else {}))
        return Result("unsupported", f"max_epochs={e!r}")
    ms = ctx.v("trainer.max_steps")
    by_epochs = not isinstance(ctx.v("nemo1.trainer.sft.max_steps"), int) or ctx.v("nemo1.trainer.sft.max_steps") < 0
    ctx.unset("step_scheduler.num_epochs")  # SCH002 follows max_steps, as NeMo 2 and NeMo 1.0 up-sample; Aligner does not
    if ctx.v("nemo1.model.data.sample") and not by_epochs:
        ctx.set("step_scheduler.num_epochs", None, "trainer.max_epochs", "nemo1.model.data.sample", note="follow max_steps")
        return Result("approximate", "model.data.sample=True up-samples the training file to max_steps x GBS samples, so no epoch ends the run; "
                      "Automodel iterates epochs of the file (num_epochs follows max_steps), each with a short last step")
    ctx.set("step_scheduler.num_epochs", e, "trainer.max_epochs")
    found: list[Result] = []
    if ms is None and ctx.node("optim.lr_scheduler") is not None:  # epoch-driven, data not readable: the LR schedule's length is unknown
        found.append(_aligner_unknown_schedule(ctx, e))
    partial = not (limit is None or limit == 1 or (isinstance(limit, float) and limit > 1.0))
    gbs, lbs = ctx.v("data.global_batch_size"), ctx.v("data.micro_batch_size")
    n = count_samples([str(f) for f in ctx.v("data.train_files") or []], Path(ctx.job.data_dir) if ctx.job.data_dir else None)
    if partial and e > 1:
        found.append(Result("unsupported", f"limit_train_batches={limit}: NeMo-Aligner trains only part of each epoch; Automodel has no per-epoch limit"))
    elif n is not None and isinstance(gbs, int) and isinstance(lbs, int) and gbs > 0 and lbs > 0:
        per, am = aligner_steps_per_epoch(n, gbs, limit), automodel_epoch_len(n, gbs, lbs, ctx.dp)
        if per == am:
            found.append(Result("exact", f"{n} samples, GBS {gbs}: {per} steps per epoch in both"))
        else:
            found.append(Result("approximate", f"{n} samples, GBS {gbs}: NeMo-Aligner runs {per} full steps per epoch and drops {n - per * gbs} "
                                f"samples (reshuffled each epoch); Automodel runs {am} steps per epoch, the last one short" +
                                ("; step_scheduler.max_steps keeps NeMo's step count" if isinstance(ms, int) else "")))
    if not found:
        return None
    rank = {"unsupported": 0, "approximate": 1, "exact": 2}
    worst = min(found, key=lambda r: rank[r.status or "approximate"])
    shown = [r.reason or "" for r in found if r.status != "exact" or worst.status == "exact"]  # an exact part is not news next to a finding
    return Result(worst.status, "; ".join(shown))


def _aligner_unknown_schedule(ctx: Ctx, epochs: int) -> Result:
    """Epoch-driven Aligner run without its data: NeMo sizes the scheduler from len(train dataloader) x max_epochs.  The
    decay is left to Automodel's total steps (lr_decay_steps unset), and the row says what NeMo does instead."""
    w = int(ctx.v("optim.lr_scheduler.warmup_steps") or 0)  # a CosineAnnealingScheduler: its class defaults apply
    c = int(ctx.v("optim.lr_scheduler.constant_steps") or 0)
    gbs = ctx.v("data.global_batch_size")
    ctx.unset("lr_scheduler.lr_decay_steps")
    t = f"T = {epochs} x (samples // {gbs})"
    if c <= 0:
        return Result("approximate", f"the cosine decays over NeMo's {t} steps and over Automodel's total steps (lr_decay_steps unset): the same "
                      "when the sample count is a multiple of GBS")
    if w > 0:
        ctx.unset("lr_scheduler.init_lr")
        ctx.set("lr_scheduler.init_lr", 0.0, "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.warmup_steps",
                note="constant_steps > 0: NeMo warms up linearly from 0")
    return Result("unsupported", f"max_steps -1 with constant_steps={c}: NeMo's LR decays until {t} minus {c} and then holds min_lr (min_lr "
                  f"right after the {w} warm-up steps when T <= {w + c}); the training file is not readable here, so lr_decay_steps is left "
                  f"to Automodel's total steps: set lr_scheduler.lr_decay_steps = max(T - {c}, {w + 1}), or convert where the file exists")


@transform
def nemo1_batch_mirror(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        key = p.rsplit(".", 1)[1]
        v, trained = ctx.v(p), ctx.v(f"data.{key}")
        if v != trained:
            return Result("dropped", f"model.{key}={v} is overwritten by model.data.train_ds.{key}={trained}, which is what trains (BAT001/BAT002)")
    return None
