"""Optimizer and LR-schedule rows (OPT*, LRS*)."""

from __future__ import annotations

from typing import Any

from ..context import Ctx, Registry, Result, nemo_default

transform = Registry()

NO_DECAY_PATTERN = r"(\.bias|norm\.weight)$"


@transform
def optimizer_class(ctx: Ctx) -> Result | None:
    optim = ctx.node("optim")
    cfg = ctx.node("optim.config")
    if cfg is not None and cfg.cls != "OptimizerConfig":
        ctx.set("optimizer._target_", "torch.optim.AdamW")
        return Result("unsupported", f"optimizer config {cfg.cls} is not Megatron's OptimizerConfig; AdamW emitted as a placeholder")
    if optim is None or optim.cls != "MegatronOptimizerModule":
        ctx.set("optimizer._target_", "torch.optim.AdamW")
        return Result("unsupported", f"optimizer module {optim.cls if optim else None} is not Megatron's; AdamW emitted as a placeholder")
    name = ctx.v("optim.config.optimizer", nemo_default("OptimizerConfig.optimizer"))
    if name == "adam":
        decoupled = ctx.v("optim.config.decoupled_weight_decay", nemo_default("OptimizerConfig.decoupled_weight_decay"))
        ctx.set("optimizer._target_", "torch.optim.AdamW" if decoupled else "torch.optim.Adam", "optim.config.optimizer")
        return None
    if name == "sgd":
        ctx.set("optimizer._target_", "torch.optim.SGD", "optim.config.optimizer")
        ctx.set("optimizer.momentum", ctx.v("optim.config.sgd_momentum", nemo_default("OptimizerConfig.sgd_momentum")), "optim.config.sgd_momentum")
        return Result("exact", "Megatron 'sgd' = torch.optim.SGD with momentum")
    ctx.set("optimizer._target_", "torch.optim.AdamW", "optim.config.optimizer")
    return Result("unsupported", f"optimizer {name!r} has no mapping; AdamW emitted as a placeholder")


@transform
def betas(ctx: Ctx) -> Result | None:
    if ctx.v("optim.config.optimizer", nemo_default("OptimizerConfig.optimizer")) != "adam":
        return Result("dropped", "not an Adam optimizer")
    ctx.set("optimizer.betas", [float(ctx.v(f"optim.config.adam_beta{i}", nemo_default(f"OptimizerConfig.adam_beta{i}"))) for i in (1, 2)],
            "optim.config.adam_beta1", "optim.config.adam_beta2")
    return None


@transform
def weight_decay(ctx: Ctx) -> Result | None:
    wd = float(ctx.v("optim.config.weight_decay", nemo_default("OptimizerConfig.weight_decay")))
    ctx.set("optimizer.weight_decay", wd, "optim.config.weight_decay")
    if wd == 0 or ctx.lora:
        if ctx.lora and wd:
            return Result("exact", "every LoRA adapter weight is 2-D, so Megatron's no-decay rule for biases and 1-D parameters changes nothing")
        return None
    if ctx.node("optim.lr_scheduler") is None:
        return Result("approximate", "Megatron skips weight decay on biases and 1-D parameters; without an lr_scheduler Automodel "
                      "cannot apply a per-group wd_mult, so every parameter is decayed")
    ctx.set("optimizer.param_group_overrides", [{"pattern": NO_DECAY_PATTERN, "wd_mult": 0.0}], "optim.config.weight_decay",
            note="no decay on biases and norms, as Megatron")
    return None


@transform
def clip_grad(ctx: Ctx) -> Result | None:
    c = ctx.v("optim.config.clip_grad", nemo_default("OptimizerConfig.clip_grad"))
    if c is None or c <= 0:
        ctx.set("clip_grad_norm.max_norm", 1.0e9, "optim.config.clip_grad", note="never clips (Automodel always clips)")
        return Result("exact", "no clipping in NeMo (clip_grad <= 0); Automodel always clips, so a norm no step reaches is used")
    ctx.set("clip_grad_norm.max_norm", float(c), "optim.config.clip_grad")
    return None


@transform
def master_weights(ctx: Ctx) -> Result | None:
    if ctx.v("optim.config.fp16"):
        return Result("approximate", "fp16 training with a loss-scaled Megatron optimizer; Automodel has no loss scaling")
    custom = [p for p in ("optim.config.main_params_dtype", "optim.config.main_grads_dtype", "optim.config.exp_avg_dtype",
                          "optim.config.exp_avg_sq_dtype") if ctx.v(p) not in (None, "torch.float32")]
    if custom or ctx.v("optim.config.use_precision_aware_optimizer"):
        return Result("approximate", f"precision-aware optimizer state ({', '.join(custom) or 'use_precision_aware_optimizer'}) has no torch.optim equivalent")
    if not ctx.v("optim.config.bf16"):
        return Result("exact", "fp32 parameters and optimizer state in both")
    if ctx.lora:
        return Result("approximate", "NeMo trains the adapters through fp32 master copies (bf16 compute); with model dtype bfloat16 "
                      "Automodel's torch AdamW updates bf16 adapters and keeps bf16 moments")
    return Result("exact", "model dtype float32 keeps fp32 master weights and fp32 Adam moments while FSDP2 computes in bf16 (see PRC001)")


@transform
def lr_schedule(ctx: Ctx) -> Result | None:
    sched = ctx.node("optim.lr_scheduler")
    if sched is None:
        return Result("exact", "no LR scheduler: constant learning rate in both (no lr_scheduler section)")
    if sched.cls != "CosineAnnealingScheduler":
        return Result("unsupported", f"scheduler {sched.cls} has no mapping")
    if not isinstance(ctx.v("optim.config.lr"), (int, float)):
        return Result("unsupported", "the learning rate is unknown, so the schedule cannot be built")
    lr = float(ctx.v("optim.config.lr"))
    w = int(ctx.v("optim.lr_scheduler.warmup_steps") or 0)  # a CosineAnnealingScheduler: its class defaults apply
    c = int(ctx.v("optim.lr_scheduler.constant_steps") or 0)
    min_lr = float(ctx.v("optim.lr_scheduler.min_lr") or 0.0)
    m = int(ctx.v("optim.lr_scheduler.max_steps"))
    src = ("optim.lr_scheduler.warmup_steps", "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.min_lr", "optim.lr_scheduler.max_steps", "optim.config.lr")
    if min_lr > lr:
        kn = ctx.k("optim.lr_scheduler.min_lr")
        ctx.diags.error("NM520", f"min_lr {min_lr} is above the learning rate {lr}: NeMo's CosineAnnealing raises", **(kn.prov.where() if kn else {}))
    if c > 0:  # NeMo's warmup-anneal-hold variant (warm-up from 0, cosine until max_steps - C, then min_lr)
        try:
            vals, how = nemo_cosine_hold(lr, w, c, m, min_lr)
        except ValueError as e:
            kn = ctx.k("optim.lr_scheduler.constant_steps")
            ctx.diags.error("NM247", str(e), key="optim.lr_scheduler.constant_steps", **(kn.prov.where() if kn else {}))
            return Result("unsupported", str(e))
        own = {"lr_warmup_steps": ("optim.lr_scheduler.warmup_steps",), "min_lr": ("optim.lr_scheduler.min_lr",),
               "init_lr": ("optim.config.lr", "optim.lr_scheduler.warmup_steps"), "max_lr": ("optim.config.lr",),
               "lr_decay_steps": ("optim.lr_scheduler.max_steps", "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.warmup_steps")}
        for key, v in vals.items():
            ctx.set(f"lr_scheduler.{key}", v, *own.get(key, src), note=how if key == "lr_decay_steps" else None)
        return Result("exact", f"constant_steps={c}: {how}")
    ctx.set("lr_scheduler.lr_decay_style", "cosine", *src)
    ctx.set("lr_scheduler.lr_warmup_steps", w, "optim.lr_scheduler.warmup_steps")
    ctx.set("lr_scheduler.init_lr", lr / (w + 1) if w > 0 else lr, "optim.config.lr", "optim.lr_scheduler.warmup_steps",
            note="lr/(W+1) = NeMo's first warmup step" if w > 0 else None)
    ctx.set("lr_scheduler.min_lr", min_lr, "optim.lr_scheduler.min_lr")
    decay = m if w < m else w + 1
    ctx.set("lr_scheduler.lr_decay_steps", decay, "optim.lr_scheduler.max_steps", "optim.lr_scheduler.warmup_steps",
            note=None if w < m else f"warmup {w} >= max_steps {m}: W+1 keeps every step in warmup, as NeMo")
    return None


@transform
def sched_interval(ctx: Ctx) -> Result | None:
    if ctx.v("optim.lr_scheduler.interval", nemo_default("CosineAnnealingScheduler.interval")) != "step" \
            or ctx.v("optim.lr_scheduler.frequency", nemo_default("CosineAnnealingScheduler.frequency")) != 1:
        return Result("unsupported", "the scheduler is not stepped once per optimizer step")
    return None


def nemo_cosine_hold(lr: float, warmup: int, constant: int, max_steps: int, min_lr: float) -> tuple[dict[str, Any], str]:
    """Automodel OptimizerParamScheduler settings for NeMo's CosineAnnealing with constant_steps > 0 (the same LR at every
    optimizer step s, 0-based).  NeMo (nemo/core/optim/lr_scheduler.py, WarmupAnnealHoldPolicy.get_lr with
    _linear_warmup_with_cosine_annealing): s <= W: lr*s/W; W < s <= W+D: min + (lr-min)*(1+cos(pi*(s-W)/D))/2 with
    D = max_steps - C - W; afterwards min_lr.  Raises ValueError where NeMo itself fails."""
    w, c, m = warmup, constant, max_steps
    d = m - c - w
    if lr <= min_lr:
        raise ValueError(f"lr {lr} <= min_lr {min_lr}: NeMo's CosineAnnealing with constant_steps asserts max_lr > min_lr at the first step")
    if w == 0 and d == 0:
        raise ValueError(f"warmup_steps=0 and max_steps {m} == constant_steps {c}: NeMo's CosineAnnealing divides by zero at the first step")
    if w == 0 and d < 0:
        return ({"lr_decay_style": "constant", "lr_warmup_steps": 0, "init_lr": min_lr, "max_lr": min_lr, "min_lr": min_lr, "lr_decay_steps": 1},
                f"max_steps {m} < constant_steps {c} without warmup: NeMo holds min_lr {min_lr} from the first step (constant LR min_lr)")
    vals: dict[str, Any] = {"lr_decay_style": "cosine", "lr_warmup_steps": w, "min_lr": min_lr, "lr_decay_steps": max(m - c, w + 1)}
    if w > 0:
        vals["init_lr"] = 0.0
    if d <= 0:
        return vals, (f"max_steps {m} <= warmup {w} + constant_steps {c}: NeMo warms up linearly from 0 (lr*s/{w}) and holds min_lr from "
                      f"step {w + 1} on (lr_decay_steps {w + 1})")
    return vals, (f"NeMo warms up linearly from 0 (lr*s/{w}), decays by cosine to min_lr at step {m - c} and holds it for the last {c} steps "
                  f"(lr_decay_steps {m - c})")
