"""What a job will actually do, in one normal form (for ``diff``).

Both kinds of job reduce to an *effective Automodel 0.7 view*: an Automodel YAML over 0.7's defaults, or a NeMo 2
job through the compiler (each value carrying the bucket of the rule that wrote it).  :func:`facts` then computes
the same normalized facts from either view: the learning rate at every step, the set of modules LoRA adapts on the
model's architecture, global/local batch and accumulation, loss reduction, EOS, truncation, dropout position,
optimizer constants, epoch cap, seed, data paths, precision, FP8, cadences.
"""

from __future__ import annotations

import math
import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable

from . import knowledge
from .automodel import match, schedule
from .automodel.schema import MISSING as _MISSING
from .automodel.schema import default as automodel_default
from .automodel.schema import class_defaults, schema
from .automodel.values import normalize_dtype
from .ir import Status


# ---------------------------------------------------------------------------------------------- views

class View(ABC):
    """Effective values of an Automodel job: explicit ones with their origin, else 0.7's default."""

    label: str

    @abstractmethod
    def explicit(self, path: str) -> Any:
        """The value written for ``path``, or _MISSING."""

    @abstractmethod
    def origin(self, path: str) -> str | None:
        """Where the value of ``path`` came from (file:line, rule), or None."""

    def status(self, path: str) -> tuple[Status, str] | None:
        return None

    def rule_status(self, rule_id: str) -> tuple[Status, str] | None:
        """The bucket a rule of the table gave this job (compiled NeMo side only)."""
        return None

    def get(self, path: str, default: Any = _MISSING) -> Any:
        v = self.explicit(path)
        if v is not _MISSING:
            return v
        d = automodel_default(path)
        return d if d is not _MISSING else (None if default is _MISSING else default)

    def where(self, *paths: str) -> str:
        out: list[str] = []
        for p in paths:
            o = self.origin(p)
            for item in (o.split(", ") if o else []):
                if item not in out:
                    out.append(item)
        if not out:
            return "Automodel 0.7 default"
        return ", ".join(out[:4]) + (", ..." if len(out) > 4 else "")


# ---------------------------------------------------------------------------------------------- facts

@dataclass
class Fact:
    name: str
    value: Any  # a comparable normal form
    shown: str  # how it is displayed
    origin: str
    status: tuple[Status, str] | None = None  # the rule's bucket on a compiled NeMo side
    rejected: str | None = None  # Automodel 0.7 would refuse this


@dataclass
class FactCtx:
    world: int | None = None  # processes in all; None = unknown
    world_note: str | None = None
    family: str = "llama"
    layers: int = 4


def fmt_num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x).lower() if isinstance(x, bool) else "null"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _status(view: View, *paths: str) -> tuple[Status, str] | None:
    worst: tuple[Status, str] | None = None
    rank = {"exact": 0, "dropped": 0, "approximate": 1, "unsupported": 2}
    for p in paths:
        s = view.status(p)
        if s and (worst is None or rank[s[0]] > rank[worst[0]]):
            worst = s
    return worst if worst and worst[0] in ("approximate", "unsupported") else None


# -- learning rate ------------------------------------------------------------------------------

def lr_schedule(view: View, total: int | None) -> tuple[list[float] | None, str, str | None]:
    """LR at each optimizer step 0..total-1 as Automodel 0.7 computes it (OptimizerParamScheduler, step(0) then step(1)
    per step: nemo_migrate.automodel.schedule, which the runtime's scheduler uses too).  Returns (series, description,
    rejection)."""
    lr = view.get("optimizer.lr")
    if not isinstance(lr, (int, float)):
        return None, "unknown (no optimizer.lr)", None
    lr = float(lr)
    if view.explicit("lr_scheduler") is _MISSING:
        return ([lr] * total if total else None), f"constant {lr:.6g} (no lr_scheduler)", None
    if not total:
        return None, "unknown (no max_steps)", None

    def explicit(k: str) -> Any:
        v = view.explicit(f"lr_scheduler.{k}")
        return None if v is _MISSING else v

    p = schedule.build(explicit, base_lr=lr, base_wd=None, total_steps=total)  # the arguments 0.7 passes, defaults included
    W, D, init, mx, mn, style = int(p.lr_warmup_steps), int(p.lr_decay_steps), float(p.init_lr), float(p.max_lr), float(p.min_lr), \
        str(p.lr_decay_style)
    desc = f"{style}: warmup {W} from {init:.4g}, peak {mx:.4g}, to {mn:.4g} at step {D}"
    violations = [v for v in schedule.violations(p) if v.key in schedule.LR_KEYS]  # OptimizerParamScheduler's assertions
    if not W < D:
        return None, desc, f"lr_warmup_steps {W} >= lr_decay_steps {D}: AssertionError in OptimizerParamScheduler"
    if init > mx or mn > mx or D <= 0:
        return None, desc, "init_lr/min_lr above max_lr or decay steps <= 0: AssertionError"
    if violations:
        return None, desc, f"{violations[0].values}: AssertionError ({violations[0].check})"
    if style == "WSD" and p.wsd_decay_steps is None:
        return None, desc + " (no wsd_decay_steps)", None  # 0.7 asserts; reported with the file's other rejections
    try:
        return schedule.lr_series(p, total), desc, None
    except (ValueError, TypeError, ZeroDivisionError) as e:  # a style 0.7 does not support: reported with the rest
        return None, f"{desc} ({e})", None


def _series_shown(s: list[float] | None, desc: str) -> str:
    if not s:
        return desc
    pts = sorted({0, 1, len(s) // 2, len(s) - 1} & set(range(len(s))))
    return desc + "; lr@" + ", @".join(f"{i}={s[i]:.4g}" for i in pts)


# -- LoRA module sets ---------------------------------------------------------------------------

def linear_modules(family: str, layers: int) -> list[str]:
    """The linear modules of a ``family`` model (its HF module names, mappings/modules.yaml) of ``layers`` blocks."""
    fam = knowledge.modules()["families"].get(family) or knowledge.modules()["families"]["llama"]
    return match.linear_modules((h for e in fam.values() for h in e["hf"]), layers)


def adapted(view: View, ctx: FactCtx) -> tuple[list[str] | None, str | None]:
    """The linear modules 0.7's LoRA would adapt, as 'leaf' (every layer) or 'leaf[layers]'; or a rejection."""
    tm = view.get("peft.target_modules") or []
    ex = view.get("peft.exclude_modules") or []
    mal = bool(view.get("peft.match_all_linear"))
    if isinstance(tm, str):
        tm = [tm]
    if isinstance(ex, str):
        ex = [ex]
    if mal and (tm or ex):
        return None, "match_all_linear with target_modules: ValueError"
    if tm and ex:
        return None, "target_modules with exclude_modules: ValueError"
    tm, ex, mal = match.selectors(tm, ex, mal)
    hit = [m for m in linear_modules(ctx.family, ctx.layers) if match.module_matches(m, True, tm, ex, mal)]
    by_leaf: dict[str, list[int]] = {}
    for m in hit:
        if m == "lm_head":
            by_leaf.setdefault("lm_head", [])
            continue
        _, _, i, rest = m.split(".", 3)
        by_leaf.setdefault(rest.rsplit(".", 1)[-1], []).append(int(i))
    out = []
    for leaf, ls in by_leaf.items():
        out.append(leaf if leaf == "lm_head" or len(ls) == ctx.layers else f"{leaf}[{','.join(map(str, ls))}]")
    return sorted(out), None


# -- the fact table -----------------------------------------------------------------------------

def _norm_path(p: Any) -> Any:
    return posixpath.normpath(p) if isinstance(p, str) and p else p


def facts(view: View, ctx: FactCtx, rejected: dict[str, str] | None = None) -> dict[str, Fact]:
    rejected = rejected or {}
    out: dict[str, Fact] = {}

    def add(name: str, value: Any, paths: Iterable[str], shown: str | None = None, rej: str | None = None,
            rules: Iterable[str] = ()) -> None:
        paths = list(paths)
        rj = rej or next((rejected[p] for p in paths if p in rejected), None)
        st = _status(view, *paths)
        for rid in rules:  # an approximation with no Automodel key of its own (e.g. fp32 master weights)
            rs = view.rule_status(rid)
            if rs and rs[0] in ("approximate", "unsupported") and st is None:
                st = rs
        out[name] = Fact(name, value, shown if shown is not None else fmt_num(value) if not isinstance(value, (list, dict)) else str(value),
                         view.where(*paths), st, rj)

    g = view.get
    add("model", g("model.pretrained_model_name_or_path"), ["model.pretrained_model_name_or_path"])
    dtype = normalize_dtype(g("model.dtype"))
    add("precision.model_dtype", dtype, ["model.dtype"])
    master = "fp32 master weights and Adam moments" if dtype in ("float32", "float64") else f"none ({dtype} weights, {dtype} Adam moments)"
    add("precision.master_weights", master, ["model.dtype"], rules=["OPT007"])
    mp = g("distributed.mp_policy") or {}
    add("precision.grad_reduce", str((mp or {}).get("reduce_dtype", "float32")), ["distributed.mp_policy"])
    for k in ("tp_size", "cp_size", "pp_size", "ep_size"):
        add(f"parallel.{k}", int(g(f"distributed.{k}") or 1), [f"distributed.{k}"])
    add("parallel.sequence_parallel", bool(g("distributed.sequence_parallel")), ["distributed.sequence_parallel"])
    add("parallel.strategy", str(g("distributed.strategy") or "fsdp2"), ["distributed.strategy"])
    if ctx.world:
        add("launch.processes", ctx.world, ["run.sh"], shown=f"{ctx.world}" + (f" ({ctx.world_note})" if ctx.world_note else ""))
    gbs, lbs = g("step_scheduler.global_batch_size"), g("step_scheduler.local_batch_size")
    add("batch.global", gbs, ["step_scheduler.global_batch_size"])
    add("batch.local", lbs, ["step_scheduler.local_batch_size"])
    if ctx.world and isinstance(gbs, int) and isinstance(lbs, int):
        mp_size = int(g("distributed.tp_size") or 1) * int(g("distributed.cp_size") or 1) * int(g("distributed.pp_size") or 1)
        dp = ctx.world // mp_size if mp_size and ctx.world % mp_size == 0 else None
        if dp and gbs % (lbs * dp) == 0:
            add("batch.grad_accum", gbs // (lbs * dp), ["step_scheduler.global_batch_size", "step_scheduler.local_batch_size"],
                shown=f"{gbs // (lbs * dp)} (GBS {gbs} / (local {lbs} x dp {dp}))")
        else:
            add("batch.grad_accum", None, ["step_scheduler.global_batch_size"], shown=f"GBS {gbs} not divisible by local {lbs} x dp {dp}",
                rej="global_batch_size not divisible by local_batch_size x dp")
    steps = g("step_scheduler.max_steps")
    add("steps.max", steps, ["step_scheduler.max_steps"])
    ep = g("step_scheduler.num_epochs")
    add("steps.epoch_cap", ep, ["step_scheduler.num_epochs"],
        shown="none (follows max_steps)" if ep is None else f"{ep} epochs (training stops at min(max_steps, {ep} x steps per epoch))")
    total = steps if isinstance(steps, int) and steps > 0 else None
    series, desc, rej = lr_schedule(view, total)
    add("lr.schedule", series, ["lr_scheduler.lr_warmup_steps", "lr_scheduler.init_lr", "lr_scheduler.lr_decay_steps", "lr_scheduler.min_lr",
                                "lr_scheduler.lr_decay_style", "optimizer.lr", "lr_scheduler"], shown=_series_shown(series, desc), rej=rej)
    opt = str(g("optimizer._target_") or "")
    od = class_defaults("optimizer", opt)  # what 0.7's optimizer class uses for an absent key (defaults.yaml)
    wd = g("optimizer.weight_decay")
    wd = float(wd) if isinstance(wd, (int, float)) else float(od.get("weight_decay", 0.0))
    cls = opt.rsplit(".", 1)[-1]
    add("optimizer.class", "Adam(W) without weight decay" if wd == 0 and cls in ("Adam", "AdamW") else cls, ["optimizer._target_"],
        shown=cls + (" (no weight decay: Adam = AdamW)" if wd == 0 and cls in ("Adam", "AdamW") else ""))
    add("optimizer.lr", float(g("optimizer.lr")) if isinstance(g("optimizer.lr"), (int, float)) else g("optimizer.lr"), ["optimizer.lr"])
    betas = g("optimizer.betas")
    betas = betas if isinstance(betas, (list, tuple)) else od.get("betas")
    add("optimizer.betas", [float(x) for x in betas] if isinstance(betas, (list, tuple)) else None, ["optimizer.betas"])
    eps = g("optimizer.eps")
    eps = eps if isinstance(eps, (int, float)) else od.get("eps")
    add("optimizer.eps", float(eps) if isinstance(eps, (int, float)) else None, ["optimizer.eps"])
    add("optimizer.weight_decay", wd, ["optimizer.weight_decay"])
    pgo = g("optimizer.param_group_overrides") or []
    no_decay = any(isinstance(x, dict) and float(x.get("wd_mult", 1.0)) == 0.0 for x in pgo)
    lora_on = view.explicit("peft") is not _MISSING and view.get("peft") is not None
    add("optimizer.no_decay_on_norms_biases",
        "n/a (no weight decay)" if not wd else ("n/a (LoRA: every trainable weight is 2-D)" if lora_on else no_decay),
        ["optimizer.param_group_overrides"])
    clip = g("clip_grad_norm.max_norm")
    add("clip_grad_norm", float(clip if isinstance(clip, (int, float)) else automodel_default("clip_grad_norm.max_norm")),
        ["clip_grad_norm.max_norm"])
    loss = str(g("loss_fn._target_") or "")
    known = schema()["losses"]
    add("loss.reduction", "sum / label tokens of the whole step" if loss in known else f"unknown ({loss or 'no loss_fn'})", ["loss_fn._target_"],
        rej=None if loss else "loss_fn is required")
    has_peft = view.explicit("peft") is not _MISSING and g("peft") is not None
    add("lora.enabled", has_peft, ["peft._target_"])
    if has_peft:
        mods, rj = adapted(view, ctx)
        add("lora.modules", mods, ["peft.target_modules", "peft.exclude_modules", "peft.match_all_linear"],
            shown=(", ".join(mods) if mods else "nothing: no module matches") if mods is not None else "rejected", rej=rj or (None if mods else "no module matches the patterns"))
        dim, alpha = g("peft.dim"), g("peft.alpha")
        add("lora.dim", dim, ["peft.dim"])
        add("lora.alpha", alpha, ["peft.alpha"])
        if isinstance(dim, (int, float)) and isinstance(alpha, (int, float)) and dim:
            add("lora.scale", alpha / dim, ["peft.alpha", "peft.dim"], shown=f"{alpha / dim:g} (alpha/dim)")
        add("lora.dropout", float(g("peft.dropout") or 0.0), ["peft.dropout"])
        add("lora.dropout_position", g("peft.dropout_position"), ["peft.dropout_position"])
        add("lora.A_init", "xavier_normal" if g("peft.lora_A_init") == "xavier" else "kaiming_uniform(a=sqrt(5))", ["peft.lora_A_init"])
        add("lora.dtype", normalize_dtype(g("peft.lora_dtype")) if g("peft.lora_dtype") else f"model dtype ({dtype})", ["peft.lora_dtype"])
        add("lora.dora", bool(g("peft.use_dora")), ["peft.use_dora"])
    for sect, label in (("dataset", "data.train"), ("validation_dataset", "data.validation")):
        present = view.explicit(sect) is not _MISSING
        if not present:
            if sect == "validation_dataset":
                add(label, None, [sect], shown="none (no validation)")
            continue
        tgt = str(g(f"{sect}._target_") or "").rsplit(".", 1)[-1]
        src = g(f"{sect}.path_or_dataset_id") or g(f"{sect}.dataset_name")
        add(label, [tgt, _norm_path(src)], [f"{sect}.path_or_dataset_id", f"{sect}.dataset_name", f"{sect}._target_"], shown=f"{tgt}({src})")
        cm = g(f"{sect}.column_mapping")
        if cm is not None:
            add(f"{label}.columns", dict(sorted(cm.items())) if isinstance(cm, dict) else cm, [f"{sect}.column_mapping"])
    seq, trunc = g("dataset.seq_length"), g("dataset.truncation")
    capped = trunc not in (None, False, "do_not_truncate") and seq
    add("data.seq_length", seq if capped else None, ["dataset.seq_length", "dataset.truncation"],
        shown=f"{seq} tokens, truncation {trunc}" if capped else f"no cap (truncation {trunc}{', seq_length ' + str(seq) if seq else ''})")
    tok = g("dataset.tokenizer") or {}
    eos = bool(tok.get("add_eos_token")) if isinstance(tok, dict) else False
    bos = bool(tok.get("add_bos_token")) if isinstance(tok, dict) else False
    add("data.eos", "appended" if eos else "not added (0.7 default)", ["dataset.tokenizer.add_eos_token", "dataset.tokenizer"])
    add("data.bos_forced", "yes" if bos else "tokenizer's own behaviour", ["dataset.tokenizer.add_bos_token", "dataset.tokenizer"])
    add("data.answer_only_loss", bool(g("dataset.answer_only_loss_mask", True)), ["dataset.answer_only_loss_mask"])
    add("data.packing", int(g("packed_sequence.packed_sequence_size") or 0), ["packed_sequence.packed_sequence_size"],
        shown=str(g("packed_sequence.packed_sequence_size") or 0) + (" (no packing)" if not g("packed_sequence.packed_sequence_size") else ""))
    add("data.shuffle", g("dataloader.shuffle") is not False, ["dataloader.shuffle"])
    add("seed", g("seed"), ["seed"])
    add("validation.every_steps", g("step_scheduler.val_every_steps"), ["step_scheduler.val_every_steps"])
    add("validation.limit_samples", g("validation_dataset.limit_dataset_samples"), ["validation_dataset.limit_dataset_samples"],
        shown=str(g("validation_dataset.limit_dataset_samples") or "full pass"))
    add("validation.on_checkpoint", bool(g("step_scheduler.validate_on_checkpoint")), ["step_scheduler.validate_on_checkpoint"])
    add("checkpoint.enabled", bool(g("checkpoint.enabled")), ["checkpoint.enabled"])
    add("checkpoint.every_steps", g("step_scheduler.ckpt_every_steps"), ["step_scheduler.ckpt_every_steps"])
    add("checkpoint.every_epoch", bool(g("step_scheduler.save_checkpoint_every_epoch")), ["step_scheduler.save_checkpoint_every_epoch"])
    add("checkpoint.dir", _norm_path(g("checkpoint.checkpoint_dir")), ["checkpoint.checkpoint_dir"])
    add("checkpoint.keep", g("checkpoint.max_recent_checkpoints"), ["checkpoint.max_recent_checkpoints"],
        shown=str(g("checkpoint.max_recent_checkpoints") or "all"))
    fp8_on = bool(g("fp8.enabled")) if view.explicit("fp8") is not _MISSING else False
    add("fp8", [fp8_on, g("fp8.recipe_name") or "tensorwise", sorted(g("fp8.filter_fqns") or [])] if fp8_on else False,
        ["fp8.enabled", "fp8.recipe_name", "fp8.filter_fqns", "fp8"],
        shown=(f"on, {g('fp8.recipe_name') or 'tensorwise'}, filter {g('fp8.filter_fqns') or []}" if fp8_on else "off"))
    add("dist.timeout_minutes", g("dist_env.timeout_minutes"), ["dist_env.timeout_minutes"])
    return out


# ---------------------------------------------------------------------------------------------- comparing

def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return False
        if a and all(isinstance(x, float) for x in a[:3]) and all(isinstance(x, (int, float)) for x in b[:3]):
            return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(a, b))
        return all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return a == b
