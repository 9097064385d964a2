"""The training loop's sections: ``seed``, ``step_scheduler`` (and the gradient-accumulation arithmetic),
``loss_fn``, ``optimizer``, ``lr_scheduler``, ``clip_grad_norm``, ``checkpoint``, ``nemo_compat`` and ``compile``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from ...automodel.schema import class_defaults, ours, schema, section_keys
from .check import _Ctx, _bool, _d, _float, _int, _path, _section, _target_name, _unknown
from .types import CkptSpec, CompatSpec, CompileSpec, DistSpec, OptimSpec


def _seed(cfg: dict, ctx: _Ctx) -> int:
    seed = cfg.get("seed", _d("seed"))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ctx.err("seed", "must be an integer in [0, 2**62)", found=seed)
    return seed


def _step(cfg: dict, ctx: _Ctx) -> dict:
    sec = _section(cfg, "step_scheduler", ctx) or {}
    _unknown(sec, section_keys("step_scheduler"), ctx, "step_scheduler")
    k = "step_scheduler."

    def val(key: str, fn: Callable[..., Any], **kw: Any) -> Any:
        return ctx.value(fn, sec.get(key, _d(k + key)), k + key, _d(k + key), **kw)

    out = {
        "global_batch_size": val("global_batch_size", _int, minimum=1),
        "local_batch_size": val("local_batch_size", _int, minimum=1),
        "num_epochs": val("num_epochs", _int, minimum=1, allow_none=True),
        "max_steps": val("max_steps", _int, minimum=1, allow_none=True),
        "ckpt_every_steps": val("ckpt_every_steps", _int, minimum=1, allow_none=True),
        "save_checkpoint_every_epoch": val("save_checkpoint_every_epoch", _bool),
        "validate_on_checkpoint": val("validate_on_checkpoint", _bool),
        "val_every_steps": val("val_every_steps", _int, minimum=1, allow_none=True),
        "gc_every_steps": val("gc_every_steps", _int, minimum=1, allow_none=True),
    }
    for key in ("log_remote_every_steps", "loss_average_window_steps"):
        if key in sec:
            ctx.value(_int, sec[key], k + key, None, minimum=1)
    for key in ("start_step", "start_epoch"):
        if sec.get(key, 0) not in (0, None):
            ctx.add(ctx.err(k + key, "is not supported by the bundled runtime (it resumes from checkpoints instead)",
                            found=sec[key], hint="remove it; a rerun with the same checkpoint_dir resumes"))
    sig = sec.get("preemption_signal", _d(k + "preemption_signal"))
    sigs = [] if sig is None else (sig if isinstance(sig, list) else [sig])
    import signal as _signal

    names = []
    for s in sigs:
        try:
            n = _signal.Signals(s).name if isinstance(s, int) else _signal.Signals[str(s).upper()].name
        except (KeyError, ValueError):
            ctx.add(ctx.err(k + "preemption_signal", "not a signal name or number", found=s))
            continue
        if n in ("SIGKILL", "SIGSTOP"):
            ctx.add(ctx.err(k + "preemption_signal", f"{n} cannot be caught, so it cannot trigger a checkpoint", found=n,
                            hint="SIGTERM (what schedulers send before killing a job) or SIGUSR1"))
        names.append(n)
    out["preemption_signal"] = names
    return out


def _grad_acc(step: dict, dist: DistSpec, ctx: _Ctx) -> int:
    lbs, gbs = step["local_batch_size"], step["global_batch_size"]
    if gbs % (lbs * dist.dp) != 0:
        raise ctx.err("step_scheduler.global_batch_size",
                      f"must be divisible by local_batch_size * dp_size = {lbs} * {dist.dp}", found=gbs,
                      hint=f"use a multiple of {lbs * dist.dp}, or change --nproc-per-node / local_batch_size")
    return gbs // (lbs * dist.dp)


def _loss(cfg: dict, ctx: _Ctx) -> tuple[int, bool]:
    sec = _section(cfg, "loss_fn", ctx)
    if sec is None:
        raise ctx.err("loss_fn", "is required by 0.7 (no default)",
                      hint="loss_fn: {_target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy}")
    t = _target_name(sec.get("_target_"))
    kw = class_defaults("loss_fn", "MaskedCrossEntropy")  # its arguments and their defaults
    if t == "MaskedCrossEntropy":
        _unknown(sec, set(kw) | {"_target_"}, ctx, "loss_fn", what="a MaskedCrossEntropy argument")
    elif t in ("FusedLinearCrossEntropy", "TEParallelCrossEntropy", "ChunkedCrossEntropy"):
        ctx.note(f"loss_fn {t}: computed as MaskedCrossEntropy (same sum-reduced token CE).")
    else:
        raise ctx.err("loss_fn._target_", "unknown loss", found=sec.get("_target_"),
                      expected="nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy")
    if sec.get("reduction", kw["reduction"]) != "sum":
        raise ctx.err("loss_fn.reduction", "must stay 'sum' (the recipe divides by the label-token count)",
                      found=sec["reduction"])
    return int(sec.get("ignore_index", kw["ignore_index"])), bool(sec.get("fp32_upcast", kw["fp32_upcast"]))


_OPTIM_NUMBERS = {"lr", "eps", "weight_decay", "momentum", "dampening", "lr_decay", "initial_accumulator_value",
                  "rho", "lambd", "alpha", "t0", "max_iter", "momentum_decay"}


def _optim(cfg: dict, ctx: _Ctx) -> OptimSpec:
    sec = dict(_section(cfg, "optimizer", ctx, required=True))
    target = sec.pop("_target_", None)
    if target is None:
        raise ctx.err("optimizer._target_", "is required", hint="_target_: torch.optim.AdamW")
    overrides = sec.pop("param_group_overrides", None) or []
    if not isinstance(overrides, list):
        raise ctx.err("optimizer.param_group_overrides", "must be a list of {pattern, lr_mult, wd_mult}",
                      found=overrides)
    for i, o in enumerate(overrides):
        key = f"optimizer.param_group_overrides[{i}]"
        if not isinstance(o, dict) or "pattern" not in o:
            raise ctx.err(key, "needs a `pattern`", found=o)
        for m in ("lr_mult", "wd_mult"):
            if m in o:
                _float(o[m], ctx, f"{key}.{m}")
        bad = set(o) - {"pattern", "lr_mult", "wd_mult"}
        if bad:
            raise ctx.err(key, "unknown key", expected="pattern, lr_mult, wd_mult", found=sorted(bad))
        try:
            re.compile(str(o["pattern"]))
        except re.error as e:
            raise ctx.err(key + ".pattern", f"not a valid regular expression ({e})", found=o["pattern"]) from None
    short = _target_name(target)
    typed = class_defaults("optimizer", short)
    if "_builds" in typed:  # 0.7's typed optimizer config (AdamConfig, AdamWConfig): its own defaults
        cls_path = typed["_builds"]
        kwargs = {**{k: v for k, v in typed.items() if not k.startswith("_")}, **sec}
        kwargs.pop("fused", None) if short == "AdamConfig" else None
    elif str(target).startswith("torch.optim."):
        cls_path, kwargs = str(target), sec
    else:
        raise ctx.err("optimizer._target_", "the bundled runtime builds torch.optim optimizers only",
                      found=target, hint="_target_: torch.optim.AdamW (TE FusedAdam is not available here)")
    import importlib
    import inspect

    mod, _, name = cls_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        raise ctx.err("optimizer._target_", "no such optimizer in torch", found=target) from None
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = sorted(k for k in kwargs if k not in params or k == "params")
        if bad:
            raise ctx.err(f"optimizer.{bad[0]}", f"{cls_path} does not take this argument",
                          expected=", ".join(k for k in params if k != "params"), found=bad[0])
    for k, v in kwargs.items():
        if k in _OPTIM_NUMBERS and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            raise ctx.err(f"optimizer.{k}", "must be a number >= 0", found=v)
    if "betas" in kwargs:
        b = kwargs["betas"]
        if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x < 1.0 for x in b)):
            raise ctx.err("optimizer.betas", "must be two numbers in [0, 1)", found=b, hint="e.g. betas: [0.9, 0.999]")
        kwargs["betas"] = tuple(b)
    if "lr" not in kwargs:
        lr_default = params.get("lr")
        if lr_default is None or lr_default.default is inspect.Parameter.empty:
            raise ctx.err("optimizer.lr", "is required")
    return OptimSpec(target=cls_path, kwargs=kwargs, param_group_overrides=overrides)


def _lr(cfg: dict, ctx: _Ctx) -> dict | None:
    sec = cfg.get("lr_scheduler")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("lr_scheduler", "must be a mapping", found=sec)
    sec = {k: v for k, v in sec.items() if k != "_target_"}  # 0.7 silently drops a _target_ here
    _unknown(sec, section_keys("lr_scheduler"), ctx, "lr_scheduler", what="an LRSchedulerConfig field")
    w = sec.get("lr_warmup_steps")
    if w is not None and not isinstance(w, bool) and isinstance(w, (int, float)) and 0 < w < 1:
        raise ctx.err("lr_scheduler.lr_warmup_steps", "fractional warmup is not supported by 0.7", found=w,
                      hint="give an integer number of steps")
    for k in ("init_lr", "max_lr", "min_lr", "start_wd", "end_wd"):
        ctx.value(_float, sec.get(k), f"lr_scheduler.{k}", None, allow_none=True)
    for k in ("lr_warmup_steps", "lr_decay_steps", "wd_incr_steps", "wsd_decay_steps"):
        ctx.value(_int, sec.get(k), f"lr_scheduler.{k}", None, minimum=0, allow_none=True)
    for k in ("use_checkpoint_opt_param_scheduler", "override_opt_param_scheduler"):
        if sec.get(k) is not None:
            ctx.value(_bool, sec[k], f"lr_scheduler.{k}", None)
    style = sec.get("lr_decay_style", _d("lr_scheduler.lr_decay_style"))
    if style not in ("cosine", "linear", "constant", "inverse-square-root", "WSD"):
        raise ctx.err("lr_scheduler.lr_decay_style", "unknown decay style", found=style,
                      expected="cosine, linear, constant, inverse-square-root or WSD")
    if style == "WSD" and sec.get("wsd_decay_steps") is None:
        raise ctx.err("lr_scheduler.wsd_decay_steps", "is required for lr_decay_style: WSD")
    wu, ds = sec.get("lr_warmup_steps"), sec.get("lr_decay_steps")
    if isinstance(wu, int) and isinstance(ds, int) and not wu < ds:
        raise ctx.err("lr_scheduler.lr_warmup_steps", "Automodel 0.7 asserts lr_warmup_steps < lr_decay_steps",
                      found={"lr_warmup_steps": wu, "lr_decay_steps": ds},
                      hint="for a warmup covering the whole run set lr_decay_steps = lr_warmup_steps + 1")
    if sec.get("wd_incr_style", _d("lr_scheduler.wd_incr_style")) not in ("constant", "linear", "cosine"):
        raise ctx.err("lr_scheduler.wd_incr_style", "unknown style", found=sec.get("wd_incr_style"))
    return sec


def _clip(cfg: dict, ctx: _Ctx) -> float:
    clip = cfg.get("clip_grad_norm") or {}
    if not isinstance(clip, dict):
        raise ctx.err("clip_grad_norm", "must be a mapping", found=clip)
    known = section_keys("clip_grad_norm")
    bad = sorted((str(k) for k in clip if k not in known))
    if bad:
        raise ctx.err(f"clip_grad_norm.{bad[0]}", "unknown key", expected=", ".join(schema()["sections"]["clip_grad_norm"]
                                                                                ["fields"]), found=bad[0])
    max_norm = clip.get("max_norm")
    return _d("clip_grad_norm.max_norm") if max_norm is None else _float(max_norm, ctx, "clip_grad_norm.max_norm")


def _ckpt(cfg: dict, ctx: _Ctx, *, check_files: bool) -> CkptSpec:
    sec = _section(cfg, "checkpoint", ctx) or {}
    _unknown(sec, section_keys("checkpoint"), ctx, "checkpoint", what="a CheckpointingConfig field")
    enabled = ctx.value(_bool, sec.get("enabled", _d("checkpoint.enabled")), "checkpoint.enabled", False)
    d = str(_path(str(sec.get("checkpoint_dir", _d("checkpoint.checkpoint_dir"))), ctx, "checkpoint.checkpoint_dir"))
    fmt = sec.get("model_save_format", _d("checkpoint.model_save_format"))
    if fmt not in ("safetensors", "torch_save"):
        raise ctx.err("checkpoint.model_save_format", "unknown format", expected="safetensors or torch_save",
                      found=fmt)
    sc = sec.get("save_consolidated", _d("checkpoint.save_consolidated"))
    sc = {True: "every", False: "false", None: "false"}.get(sc, sc) if isinstance(sc, (bool, type(None))) else sc
    if sc not in ("false", "final", "every"):
        raise ctx.err("checkpoint.save_consolidated", "unknown mode", expected="false, final or every", found=sc)
    mrc = _int(sec.get("max_recent_checkpoints"), ctx, "checkpoint.max_recent_checkpoints", minimum=1,
               allow_none=True)
    if enabled and check_files:
        p = Path(d)
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ctx.err("checkpoint.checkpoint_dir", f"cannot write checkpoints there ({e.strerror or e})", found=d,
                          hint="--set checkpoint.checkpoint_dir=/a/writable/dir (or checkpoint.enabled=false)") \
                from None
    if sec.get("is_async"):
        ctx.note("checkpoint.is_async: checkpoints are written synchronously by the bundled runtime.")
    rf = sec.get("restore_from")
    if rf is not None:
        _path(str(rf), ctx, "checkpoint.restore_from")
    return CkptSpec(enabled=enabled, checkpoint_dir=d, model_save_format=str(fmt), save_consolidated=str(sc),
                    max_recent_checkpoints=mrc, restore_from=None if rf is None else str(rf))


def _compat(cfg: dict, ctx: _Ctx) -> CompatSpec:
    sec = cfg.get("nemo_compat")
    if sec is None:
        return CompatSpec()
    if not isinstance(sec, dict):
        raise ctx.err("nemo_compat", "must be a mapping", found=sec)
    _unknown(sec, ours("nemo_compat"), ctx, "nemo_compat", what="a runtime NeMo-compatibility switch")
    lr = sec.get("loss_reduction", "automodel")
    if lr not in ("automodel", "nemo"):
        raise ctx.err("nemo_compat.loss_reduction", "unknown reduction", expected="automodel or nemo", found=lr)
    mw = sec.get("master_weights", "none")
    mw = "none" if mw is None else mw
    if mw not in ("none", "fp32"):
        raise ctx.err("nemo_compat.master_weights", "unknown mode", expected="fp32 or none", found=mw)
    lrv = sec.get("lr_values")
    if lrv is not None and not (isinstance(lrv, list) and lrv and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in lrv)):
        raise ctx.err("nemo_compat.lr_values", "must be a non-empty list of learning rates (one per optimizer step)", found=lrv)
    fb = sec.get("frozen_base", "auto")
    if fb not in ("auto", "replicate", "shard"):
        raise ctx.err("nemo_compat.frozen_base", "unknown mode", expected="auto, replicate or shard", found=fb)
    ia = sec.get("init_adapter")
    if ia is not None and not _path(str(ia), ctx, "nemo_compat.init_adapter").is_file():
        raise ctx.err("nemo_compat.init_adapter", "no such adapter file", found=ia)
    return CompatSpec(lr_values=[float(x) for x in lrv] if lrv else None, init_adapter=None if ia is None else str(ia),
                      save_init_adapter=_bool(sec.get("save_init_adapter", False), ctx, "nemo_compat.save_init_adapter"),
                      lora_tied_a=_bool(sec.get("lora_tied_a", False), ctx, "nemo_compat.lora_tied_a"),
                      loss_reduction=lr, master_weights=mw, frozen_base=fb,
                      no_decay_1d=_bool(sec.get("no_decay_1d", False), ctx, "nemo_compat.no_decay_1d"))


def _compile(cfg: dict, ctx: _Ctx) -> CompileSpec:
    sec = cfg.get("compile")
    if not isinstance(sec, dict):
        return CompileSpec()
    extra = sorted(str(k) for k in set(sec) - section_keys("compile"))
    if extra:
        ctx.note(f"compile: unknown key(s) {', '.join(extra)} ignored.")
    return CompileSpec(enabled=bool(sec.get("enabled", False)), mode=sec.get("mode", "default"),
                       fullgraph=bool(sec.get("fullgraph", False)), dynamic=bool(sec.get("dynamic", False)),
                       backend=sec.get("backend"))
