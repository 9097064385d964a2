"""Optimizer, LR scheduler and step scheduler with Automodel 0.7 semantics (re-implemented, not imported).

* Optimizer: ``_target_`` (torch.optim.*) called with the YAML kwargs verbatim on the trainable params.
  ``param_group_overrides`` put params whose name matches ``re.search(pattern)`` (first match wins) in their own
  group carrying ``lr_mult``/``wd_mult``; every group keeps the base lr/wd and the *scheduler* applies the
  multipliers (so, as in 0.7, they do nothing without an ``lr_scheduler`` section). ``nemo_compat.no_decay_1d``
  additionally splits biases and 1-D params of each group into a ``wd_mult: 0`` sibling (weight decay 0 even
  without a scheduler).
* ``OptimizerParamScheduler``: 0.7's scheduler on a torch optimizer: the schedule (warmup, cosine/linear/constant/
  WSD/inverse-square-root decay, weight-decay increment), its assertions and the values of absent keys are
  :mod:`nemo_migrate.automodel.schedule`'s (the functions ``diff`` computes the LR with); this class only applies
  them to the param groups: ``step(0)`` at construction, ``step(1)`` per optimizer step, per-group multipliers.
* ``StepScheduler``: grad_acc = GBS/(LBS*dp); yields lists of micro-batches (a short list at epoch end still
  counts as a step); val/ckpt/last-step predicates and state exactly as 0.7 (state saves step+1).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import asdict, replace
from math import ceil
from typing import Any, Iterator

import torch

from ..automodel import schedule
from .errors import RunError

_CKPT_WRAP = "_checkpoint_wrapped_module."


def _canonical(name: str) -> str:
    return name.replace(_CKPT_WRAP, "").replace("_orig_mod.", "")


def param_groups(model: torch.nn.Module, overrides: list[dict[str, Any]], *, no_decay_1d: bool
                 ) -> tuple[list, list[str]]:
    """Trainable params (flat list, or groups) and warnings."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise RunError("the optimizer received no trainable parameters",
                       hint="check peft.target_modules: they match full module names such as "
                            "model.layers.0.self_attn.q_proj ('*.q_proj' or '*_proj', not 'q_proj')")
    warnings = []
    if not overrides and not no_decay_1d:
        return [p for _, p in named], warnings
    compiled = [re.compile(str(o["pattern"])) for o in overrides]
    default: list = []
    matched: list[list] = [[] for _ in overrides]
    for n, p in named:
        cn = _canonical(n)
        for i, rx in enumerate(compiled):
            if rx.search(cn):
                matched[i].append((cn, p))
                break
        else:
            default.append((cn, p))
    raw = []
    if default:
        raw.append(({}, default))
    for i, o in enumerate(overrides):
        if not matched[i]:
            warnings.append(f"optimizer.param_group_overrides pattern {o['pattern']!r} matched no parameters; "
                            "skipped")
            continue
        raw.append(({"lr_mult": float(o.get("lr_mult", 1.0)), "wd_mult": float(o.get("wd_mult", 1.0))}, matched[i]))
    groups = []
    for extra, members in raw:
        if no_decay_1d:
            decay = [p for n, p in members if not (p.ndim <= 1 or n.endswith(".bias"))]
            nodecay = [p for n, p in members if p.ndim <= 1 or n.endswith(".bias")]
            if decay:
                groups.append({"params": decay, **extra})
            if nodecay:
                groups.append({"params": nodecay, **extra, "wd_mult": 0.0, "weight_decay": 0.0})
        else:
            groups.append({"params": [p for _, p in members], **extra})
    # group 0 carries the base lr/wd the scheduler reads: keep a decaying group first
    groups.sort(key=lambda g: g.get("weight_decay") == 0.0)
    return groups, warnings


def build_optimizer(model: torch.nn.Module, ospec, *, no_decay_1d: bool, tp: int) -> tuple[Any, list[str]]:
    mod, _, name = ospec.target.rpartition(".")
    cls = getattr(importlib.import_module(mod), name)
    kwargs = dict(ospec.kwargs)
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    if tp > 1 and "foreach" not in kwargs:
        import inspect

        if "foreach" in inspect.signature(cls).parameters:
            kwargs["foreach"] = False
    params, warnings = param_groups(model, ospec.param_group_overrides, no_decay_1d=no_decay_1d)
    try:
        opt = cls(params, **kwargs)
    except (TypeError, ValueError) as e:
        raise RunError(f"{ospec.target} rejected its arguments: {e}", key="optimizer") from None
    return opt, warnings


# ----------------------------------------------------------------------------------------------------------------
# LR scheduler (0.7 OptimizerParamScheduler)
# ----------------------------------------------------------------------------------------------------------------

def _as_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _set_group_mults(optimizer) -> None:
    """Each group's constructed lr / weight_decay as ``lr_mult`` / ``wd_mult`` relative to group 0, unless it carries
    its own (components/optim/scheduler.py:26-51 ``_set_group_mults``)."""
    base_lr = _as_float(optimizer.param_groups[0]["lr"])
    base_wd = _as_float(optimizer.param_groups[0].get("weight_decay", 0.0))
    for g in optimizer.param_groups:
        lr, wd = _as_float(g["lr"]), _as_float(g.get("weight_decay", 0.0))
        if "lr_mult" not in g and "max_lr" not in g and "min_lr" not in g:
            g["lr_mult"] = lr / base_lr if base_lr and lr is not None else 1.0
        if "wd_mult" not in g:
            g["wd_mult"] = wd / base_wd if base_wd and wd is not None else 1.0


class OptimizerParamScheduler:
    """components/optim/scheduler.py OptimizerParamScheduler: arguments as its ``__init__`` takes them."""

    def __init__(self, optimizer, **kwargs: Any):
        self.optimizer = optimizer
        self.schedule = schedule.LrSchedule(**kwargs)
        bad = schedule.violations(self.schedule)
        if bad:
            raise RunError(f"Automodel 0.7 asserts {bad[0].cond}", key="lr_scheduler",
                           found={k: kwargs.get(k) for k in ("init_lr", "max_lr", "min_lr", "lr_warmup_steps",
                                                             "lr_decay_steps")},
                           hint="for a warmup covering the whole run set lr_decay_steps > lr_warmup_steps")
        self.num_steps = 0
        _set_group_mults(optimizer)
        self.step(0)

    def __getattr__(self, name: str) -> Any:  # init_lr, max_lr, lr_warmup_steps, ...: the schedule's arguments
        if name != "schedule" and name in schedule.LrSchedule.__dataclass_fields__:
            return getattr(self.schedule, name)
        raise AttributeError(name)

    def step(self, increment: int) -> None:
        self.num_steps += increment
        wd = schedule.wd_at(self.schedule, self.num_steps)
        for g in self.optimizer.param_groups:
            lr = schedule.lr_at(self.schedule, self.num_steps, max_lr=g.get("max_lr"), min_lr=g.get("min_lr"))
            g["lr"] = lr * g.get("lr_mult", 1.0)
            g["weight_decay"] = wd * g.get("wd_mult", 1.0)

    _STATE = ("max_lr", "lr_warmup_steps", "num_steps", "lr_decay_style", "lr_decay_steps", "min_lr", "start_wd",
              "end_wd", "wd_incr_style", "wd_incr_steps")  # scheduler.py state_dict

    def state_dict(self) -> dict[str, Any]:
        return {k: self.num_steps if k == "num_steps" else getattr(self.schedule, k) for k in self._STATE}

    def load_state_dict(self, sd: dict[str, Any]) -> None:  # use_checkpoint_opt_param_scheduler=True (0.7 default)
        self.schedule = replace(self.schedule, **{k: sd[k] for k in self._STATE if k != "num_steps"})
        self.num_steps = 0
        self.step(sd["num_steps"])


class ExplicitLR:
    """nemo_compat.lr_values: the learning rate of every optimizer step given as a list (``run --verify`` passes
    NeMo's schedule, computed from NeMo's formula); the last value holds after the list ends."""

    def __init__(self, optimizer, values: list[float]):
        self.optimizer, self.values, self.num_steps = optimizer, [float(v) for v in values], 0
        for g in optimizer.param_groups:
            g.setdefault("lr_mult", 1.0)
        self.step(0)

    def step(self, increment: int) -> None:
        self.num_steps += increment
        lr = self.values[min(self.num_steps, len(self.values) - 1)]
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "values": self.values}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.num_steps = 0
        self.step(int(sd["num_steps"]))


def build_lr_scheduler(optimizer, cfg: dict[str, Any] | None, *, total_steps: int):
    """LRSchedulerConfig.build: absent keys from the optimizer's group 0 and the run's total steps."""
    if cfg is None:
        return None
    g0 = optimizer.param_groups[0]
    s = schedule.build(cfg.get, base_lr=g0["lr"], base_wd=g0.get("weight_decay", 0.0), total_steps=total_steps)
    return OptimizerParamScheduler(optimizer, **asdict(s))


# ----------------------------------------------------------------------------------------------------------------
# Step scheduler (0.7 StepScheduler)
# ----------------------------------------------------------------------------------------------------------------

class StepScheduler:
    def __init__(self, *, grad_acc_steps: int, dataloader, num_epochs: int | None, max_steps: int | None,
                 ckpt_every_steps: int | None, save_checkpoint_every_epoch: bool, validate_on_checkpoint: bool,
                 val_every_steps: int | None, gc_every_steps: int | None = None):
        self.grad_acc_steps = grad_acc_steps
        self.dataloader = dataloader
        self.step = 0
        self.epoch = 0
        try:
            self.epoch_len = ceil(len(dataloader) / grad_acc_steps)
        except (TypeError, NotImplementedError):
            self.epoch_len = None
        if num_epochs is None:
            num_epochs = 10 if (self.epoch_len is None or max_steps is None) else ceil(max_steps / self.epoch_len)
        self.num_epochs = num_epochs
        if max_steps is None:
            if self.epoch_len is None:
                raise RunError("step_scheduler.max_steps is required for an iterable dataset")
            max_steps = num_epochs * self.epoch_len
        self.max_steps = max_steps
        if ckpt_every_steps is None:
            ckpt_every_steps = max(1, max_steps // 2) if self.epoch_len is None else self.epoch_len
        self.ckpt_every_steps = ckpt_every_steps
        self.save_checkpoint_every_epoch = save_checkpoint_every_epoch
        self.validate_on_checkpoint = validate_on_checkpoint
        self.val_every_steps = val_every_steps
        self.gc_every_steps = gc_every_steps
        self.sigterm_flag = False

    @property
    def total_steps(self) -> int:
        if self.epoch_len is not None:
            return min(self.num_epochs * self.epoch_len, self.max_steps)
        return self.max_steps

    def __iter__(self) -> Iterator[list]:
        if self.step >= self.max_steps:
            return
        buf = []
        for batch in self.dataloader:
            buf.append(batch)
            if len(buf) == self.grad_acc_steps:
                yield buf
                self.step += 1
                buf = []
                if self.step >= self.max_steps or self.sigterm_flag:
                    return
        if buf:
            yield buf
            self.step += 1
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataloader.set_epoch(epoch)

    @property
    def epochs(self):
        for e in range(self.epoch, self.num_epochs):
            if self.step >= self.max_steps or self.sigterm_flag:
                return
            yield e

    @property
    def is_last_batch(self) -> bool:
        return self.epoch_len is not None and self.step % self.epoch_len == self.epoch_len - 1

    @property
    def is_last_step(self) -> bool:
        if self.step + 1 >= self.max_steps:
            return True
        if self.num_epochs is not None and self.epoch + 1 >= self.num_epochs:
            return self.is_last_batch
        return False

    @property
    def is_ckpt_step(self) -> bool:
        periodic = self.step % self.ckpt_every_steps == self.ckpt_every_steps - 1
        boundary = self.save_checkpoint_every_epoch and self.is_last_batch
        return periodic or boundary or self.is_last_step or self.sigterm_flag

    @property
    def is_val_step(self) -> bool:
        v = bool(self.val_every_steps) and self.step % self.val_every_steps == self.val_every_steps - 1
        return (v or (self.validate_on_checkpoint and self.is_ckpt_step)) and not self.sigterm_flag

    @property
    def is_gc_step(self) -> bool:
        return self.gc_every_steps is not None and self.step % self.gc_every_steps == 0

    def state_dict(self) -> dict[str, int]:
        return {"step": min(self.max_steps, self.step + 1), "epoch": self.epoch}

    def load_state_dict(self, s: dict[str, int]) -> None:
        self.step, self.epoch = int(s["step"]), int(s["epoch"])
