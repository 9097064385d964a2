"""The rule engine: applies mappings/rules.yaml to an effective job.

1. Collect the knobs of the job: every value set anywhere (recipe knowledge, recipe.py, YAML, CLI), one
   ``<node>._target_`` knob per configured object (its class), plain dicts flattened to their keys, and the NeMo
   class defaults named by ``defaults`` columns (e.g. ``LoRA.dropout_position``).
2. Give every knob exactly one owning row: an exact path in a row's ``sources`` wins; otherwise the glob with the
   longest literal prefix.
3. Run every row that owns a knob (or is ``always``): its transform writes target values; its status and reason
   (possibly refined by the transform) become the bucket of every knob it owns.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .. import schema
from ..diagnostics import Diagnostics
from ..ir import STATUSES, Knob, KnobOutcome, Node, TargetValue, plain
from .context import Ctx, JobView, Note, Result, RuleBug, Transform
from .table import table
from .table import owner as _owner
from .transforms import TRANSFORMS


@lru_cache(maxsize=None)
def transforms() -> dict[str, Transform]:
    """Each row's transform, checked once against the registry (a row naming no registered function is our bug)."""
    missing = [f"{r.id}: {r.transform}" for r in table() if r.transform and r.transform not in TRANSFORMS]
    if missing:
        raise RuleBug(f"rows name transforms that do not exist: {', '.join(missing)}")
    return {r.id: TRANSFORMS[r.transform] for r in table() if r.transform}


def collect_knobs(job: JobView) -> dict[str, Knob]:
    knobs: dict[str, Knob] = {}
    root = job.tree
    knobs["_target_"] = Knob(value=root.cls, prov=root.prov)
    for path, child in root.walk():
        if isinstance(child, Node):
            knobs[f"{path}._target_"] = Knob(value=child.cls, prov=child.prov)
        elif isinstance(child.value, dict) and child.value and all(isinstance(k, str) for k in child.value):
            for k, v in child.value.items():
                knobs[f"{path}.{k}"] = Knob(value=v, prov=child.prov)
        else:
            knobs[path] = child
    # NeMo class defaults named by rows (the semantically relevant implicit values)
    for r in table():
        for s in r.defaults:
            if s in knobs or "." not in s:
                continue
            parent_path, _, leaf = s.rpartition(".")
            parent = root.get(parent_path)
            if isinstance(parent, Node) and leaf != "_target_":
                d = schema.default_knob(parent, leaf)
                if d is not None:
                    knobs[s] = d
    return dict(sorted(knobs.items(), key=lambda kv: _order(kv[0])))


def _order(path: str) -> tuple:
    return tuple(path.split("."))


def apply(job: JobView, diags: Diagnostics) -> tuple[dict[str, TargetValue], list[KnobOutcome], list[Note], Ctx]:
    fns = transforms()
    knobs = collect_knobs(job)
    owned: dict[str, list[str]] = {}
    for path in knobs:
        owned.setdefault(_owner(path) or "ROOT002", []).append(path)
    ctx = Ctx(job=job, knobs=knobs, diags=diags, owned=owned)
    outcomes: list[KnobOutcome] = []
    for rule in table():
        mine = owned.get(rule.id, [])
        if not mine and not rule.always:
            continue
        ctx.rule = rule
        ctx.written, ctx.pinned, ctx.launched, ctx.settled = [], [], [], {}
        res: Result | None = None
        if rule.id in fns:
            res = fns[rule.id](ctx)
        elif len(rule.targets) == 1 and rule.exact_sources:
            src = rule.exact_sources[0]
            kn = ctx.k(src)
            if kn is not None:
                ctx.set(rule.targets[0], kn.value, src)
        status = (res.status if res and res.status else rule.status)
        reason = (res.reason if res and res.reason else rule.reason)
        if status not in STATUSES:
            raise RuleBug(f"rule {rule.id}: status {status!r}")
        for p in ctx.written:
            if p in ctx.targets and ctx.targets[p].rule == rule.id:
                ctx.targets[p] = ctx.targets[p].model_copy(update={"status": status})
        for name in ctx.launched:
            ctx.launch.origin[name] = ctx.launch.origin[name].model_copy(update={"status": status})
        for s in {st for st, _ in ctx.settled.values()} - set(STATUSES):
            raise RuleBug(f"rule {rule.id}: status {s!r}")
        for path in mine:
            kn = knobs[path]
            own_status, own_reason = ctx.settled.get(path, (status, reason))
            outcomes.append(KnobOutcome(path=path, value=plain(kn.value), prov=kn.prov, rule=rule.id, status=own_status,
                                        targets=[] if path in ctx.settled else sorted(set(ctx.written) | set(ctx.pinned)),
                                        reason=own_reason))
            if rule.id == "ROOT002":
                diags.warning("NM400", f"no rule maps '{path}' ({kn.prov}); it is not migrated", key=path, **kn.prov.where())
        unsup = [p for p in mine if status == "unsupported"]
        if unsup and rule.id != "ROOT002":
            first = next((knobs[p] for p in unsup if knobs[p].prov.file), knobs[unsup[0]])
            shown = ", ".join(f"{p}={_short(knobs[p].value)}" for p in unsup[:4]) + (", ..." if len(unsup) > 4 else "")
            diags.warning("NM410", f"cannot be expressed in Automodel 0.7 [{rule.id}]: {shown}: {reason}",
                          key=unsup[0], **first.prov.where())
    outcomes.sort(key=lambda o: _order(o.path))
    return ctx.targets, outcomes, ctx.notes, ctx


def _short(v: Any) -> str:
    text = repr(plain(v))
    return text if len(text) <= 60 else text[:57] + "..."
