"""Automodel 0.7's learning-rate (and weight-decay) schedule as pure functions.

``OptimizerParamScheduler`` (components/optim/scheduler.py) sets every param group's lr at step(0) on construction
and step(1) after each optimizer step; :func:`lr_at` is its ``get_lr`` at ``num_steps`` = n, so the lr of optimizer
step n (0-based) is ``lr_at(s, n)``.  ``LRSchedulerConfig.build`` (components/optim/optimizer.py:587-653) fills the
unset fields from the run; those values are the formulas of mappings/automodel/defaults.yaml (:func:`build`).
The runtime's scheduler (runtime/optim.py) and ``diff`` (migrate/semantics.py) both compute the lr here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .schema import defaults, formula


@dataclass(frozen=True)
class LrSchedule:
    """OptimizerParamScheduler's arguments (scheduler.py:78-94), values as given (0.7 converts only max_lr)."""

    init_lr: Any
    max_lr: Any
    min_lr: Any
    lr_warmup_steps: Any
    lr_decay_steps: Any
    lr_decay_style: Any
    start_wd: Any
    end_wd: Any
    wd_incr_steps: Any
    wd_incr_style: Any
    use_checkpoint_opt_param_scheduler: Any = True
    override_opt_param_scheduler: Any = False
    wsd_decay_steps: Any = None
    lr_wsd_decay_style: Any = None


def build(get: Callable[[str], Any], *, base_lr: Any, base_wd: Any, total_steps: Any) -> LrSchedule:
    """LRSchedulerConfig.build: ``get(key)`` is the lr_scheduler key's value (None when unset); an unset one takes
    defaults.yaml's value over the optimizer's group-0 ``lr``/``weight_decay`` and the run's total steps
    (min(num_epochs x epoch_len, max_steps))."""
    env = {"optimizer.lr": base_lr, "optimizer.weight_decay": base_wd, "total_steps": total_steps}
    table = defaults()["lr_scheduler"]
    kw = {}
    for key in LrSchedule.__dataclass_fields__:
        v = get(key)
        kw[key] = formula(table[key], env) if v is None else v
    return LrSchedule(**kw)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Violation:
    key: str  # the lr_scheduler key the failed assertion is about
    cond: str  # the condition, in words of the keys
    check: str  # the assertion as 0.7's source writes it, with its line
    values: str  # the values that fail it


# the learning-rate assertions (what diff's LR schedule and the scheduler's arguments must satisfy)
LR_KEYS = ("min_lr", "init_lr", "lr_decay_steps", "lr_warmup_steps")


def violations(s: LrSchedule) -> list[Violation]:
    """The assertions of OptimizerParamScheduler.__init__ (scheduler.py:125-151) and of its step(0) (get_wd,
    scheduler.py:206) that ``s`` fails, in the order 0.7 checks them; a non-numeric value is not judged here."""
    out: list[Violation] = []
    init, mx, mn = s.init_lr, s.max_lr, s.min_lr
    if all(_num(x) for x in (init, mx, mn)):
        if not mn >= 0.0:
            out.append(Violation("min_lr", "min_lr >= 0", "assert self.min_lr >= 0.0 (scheduler.py:125)", f"min_lr {mn:g}"))
        if not mx >= mn:
            out.append(Violation("min_lr", "max_lr >= min_lr", "assert self.max_lr >= self.min_lr (scheduler.py:126)",
                                 f"min_lr {mn:g} > max_lr {mx:g}"))
        if not init <= mx:
            out.append(Violation("init_lr", "init_lr <= max_lr", "assert self.init_lr <= self.max_lr (scheduler.py:127)",
                                 f"init_lr {init:g} > max_lr {mx:g}"))
    w, d = s.lr_warmup_steps, s.lr_decay_steps
    if _num(d) and not d > 0:
        out.append(Violation("lr_decay_steps", "lr_decay_steps > 0", "assert self.lr_decay_steps > 0 (scheduler.py:134)",
                             f"lr_decay_steps {d}"))
    elif _num(d) and _num(w) and not w < d:
        out.append(Violation("lr_warmup_steps", "lr_warmup_steps < lr_decay_steps",
                             "assert self.lr_warmup_steps < self.lr_decay_steps (scheduler.py:135)",
                             f"lr_warmup_steps {w} >= lr_decay_steps {d}"))
    if s.lr_decay_style == "WSD" and s.wsd_decay_steps is None:
        out.append(Violation("lr_decay_style", "wsd_decay_steps is set for WSD",
                             "assert self.wsd_decay_steps is not None (components/optim/scheduler.py:139)",
                             "lr_decay_style WSD without wsd_decay_steps"))
    start, end = s.start_wd, s.end_wd
    if _num(start) and _num(end):
        if not start >= 0.0:
            out.append(Violation("start_wd", "start_wd >= 0", "assert self.start_wd >= 0.0 (scheduler.py:143)",
                                 f"start_wd {start:g}"))
        elif not end >= start:
            out.append(Violation("end_wd", "end_wd >= start_wd", "assert self.end_wd >= self.start_wd (scheduler.py:144)",
                                 f"end_wd {end:g} < start_wd {start:g}"))
        elif s.wd_incr_style == "constant" and start != end:
            out.append(Violation("end_wd", "start_wd == end_wd for wd_incr_style constant",
                                 "assert self.start_wd == self.end_wd (scheduler.py:206, at step(0))",
                                 f"wd_incr_style constant with start_wd {start:g} != end_wd {end:g}"))
    if s.override_opt_param_scheduler is True and s.use_checkpoint_opt_param_scheduler is not False:
        out.append(Violation("override_opt_param_scheduler", "not both override and use-checkpoint",
                             "assert not self.use_checkpoint_opt_param_scheduler, 'both override and use-checkpoint are "
                             "set.' (scheduler.py:151)",
                             "override_opt_param_scheduler with use_checkpoint_opt_param_scheduler (default true)"))
    return out


def lr_at(s: LrSchedule, n: int, *, max_lr: Any = None, min_lr: Any = None) -> float:
    """OptimizerParamScheduler.get_lr at num_steps = n (scheduler.py:226-287); ``max_lr``/``min_lr``: a param
    group's own values (scheduler.py:234-235).  ValueError for a decay style 0.7 does not support."""
    mx = float(s.max_lr if max_lr is None else max_lr)
    mn = float(s.min_lr if min_lr is None else min_lr)
    init, w, d, style = float(s.init_lr), s.lr_warmup_steps, s.lr_decay_steps, s.lr_decay_style
    if w > 0 and n <= w:  # linear warmup from init_lr
        return init + ((mx - init) * float(n) / float(w))
    if style == "constant":
        return mx
    if n > d:
        return mn
    if style == "inverse-square-root":
        lr = mx * max(w, 1) ** 0.5 / (max(n, 1) ** 0.5)
        return float(max(mn, lr))
    ratio = float(n - w) / float(d - w)
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    elif style == "WSD":
        anneal_start = d - s.wsd_decay_steps
        if n <= anneal_start:
            coeff = 1.0
        else:
            r = float(n - anneal_start) / float(s.wsd_decay_steps)
            wsd = s.lr_wsd_decay_style
            if wsd == "linear":
                coeff = 1.0 - r
            elif wsd == "cosine":
                coeff = 0.5 * (math.cos(math.pi * r) + 1.0)
            elif wsd == "exponential":
                coeff = (2.0 * math.pow(0.5, r)) - 1.0
            elif wsd == "minus_sqrt":
                coeff = 1.0 - math.sqrt(r)
            else:  # scheduler.py:285 assert coeff is not None
                raise ValueError(f"lr_wsd_decay_style {wsd!r} is not supported for WSD")
    else:
        raise ValueError(f"{style} decay style is not supported.")
    return mn + coeff * (mx - mn)


def wd_at(s: LrSchedule, n: int) -> float:
    """OptimizerParamScheduler.get_wd at num_steps = n (scheduler.py:196-222)."""
    if n > s.wd_incr_steps or s.wd_incr_style == "constant":
        return s.end_wd
    ratio = float(n) / float(s.wd_incr_steps)
    if s.wd_incr_style == "linear":
        coeff = ratio
    elif s.wd_incr_style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
    else:
        raise ValueError(f"{s.wd_incr_style} weight decay increment style is not supported.")
    return s.start_wd + coeff * (s.end_wd - s.start_wd)


def lr_series(s: LrSchedule, steps: int) -> list[float]:
    """The lr of optimizer steps 0 .. steps-1."""
    return [lr_at(s, n) for n in range(steps)]
