"""The rule engine: applies mappings/rules.yaml to an effective job.

1. Collect the knobs of the job: every value set anywhere (recipe knowledge, recipe.py, YAML, CLI), one
   ``<node>._target_`` knob per configured object (its class), plain dicts flattened to their keys, and the NeMo
   class defaults named by ``always`` rows (e.g. ``LoRA.dropout_position``).
2. Give every knob exactly one owning row: an exact path in a row's ``sources`` wins; otherwise the glob with the
   longest literal prefix.
3. Run every row that owns a knob (or is ``always``): its transform writes target values; its status and reason
   (possibly refined by the transform) become the bucket of every knob it owns.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from . import knowledge, schema
from .diagnostics import Diagnostics
from .ir import STATUSES, Knob, KnobOutcome, Node, Provenance, Status, TargetValue, leaf_knobs
from .resolve import Job


@dataclass(frozen=True)
class Rule:
    id: str
    sources: tuple[str, ...]
    reads: tuple[str, ...]
    targets: tuple[str, ...]
    transform: str | None
    status: Status
    reason: str
    fact: str
    always: bool
    defaults: tuple[str, ...]
    test: dict | None

    @property
    def exact_sources(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if "*" not in s)

    @property
    def globs(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if "*" in s)


@lru_cache(maxsize=None)
def table() -> tuple[Rule, ...]:
    out = []
    for r in knowledge.rules():
        t = r.get("target") or []
        out.append(Rule(
            id=r["id"],
            sources=tuple(r.get("sources") or ()),
            reads=tuple(r.get("reads") or ()),
            targets=tuple([t] if isinstance(t, str) else t),
            transform=r.get("transform"),
            status=r.get("status", "exact"),
            reason=r.get("reason", ""),
            fact=r.get("fact", ""),
            always=bool(r.get("always")),
            defaults=tuple(r.get("defaults") or ()),
            test=r.get("test"),
        ))
    return tuple(out)


def by_id() -> dict[str, Rule]:
    return {r.id: r for r in table()}


@lru_cache(maxsize=None)
def _exact_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for r in table():
        for s in r.exact_sources:
            idx.setdefault(s, r.id)
    return idx


@lru_cache(maxsize=None)
def _glob_list() -> tuple[tuple[int, str, str], ...]:
    out = []
    for r in table():
        for g in r.globs:
            out.append((len(g.split("*", 1)[0]), g, r.id))
    out.sort(key=lambda x: -x[0])
    return tuple(out)


def owner(path: str) -> str | None:
    rid = _exact_index().get(path)
    if rid is not None:
        return rid
    for _, g, rid in _glob_list():
        if g.endswith(".*") and (path.startswith(g[:-2] + ".") and fnmatch.fnmatchcase(path, g)):
            return rid
        if not g.endswith(".*") and fnmatch.fnmatchcase(path, g):
            return rid
    return None


# ------------------------------------------------------------------------------------------------ knobs


def collect_knobs(job: Job) -> dict[str, Knob]:
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


# ------------------------------------------------------------------------------------------------ context


@dataclass
class Result:
    status: Status | None = None
    reason: str | None = None


@dataclass
class Note:
    rule: str
    kind: str  # "pre-step" | "warning" | "info"
    text: str


@dataclass
class Ctx:
    job: Job
    knobs: dict[str, Knob]
    diags: Diagnostics
    targets: dict[str, TargetValue] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    rule: Rule | None = None
    written: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    owned: dict[str, list[str]] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)

    def owned_by(self, rule_id: str) -> list[str]:
        return self.owned.get(rule_id, [])

    # reading the source
    def k(self, path: str) -> Knob | None:
        if path in self.knobs:
            return self.knobs[path]
        got = schema.get(self.job.tree, path)
        if isinstance(got, Knob):
            return got
        return None

    def v(self, path: str, default: Any = None) -> Any:
        kn = self.k(path)
        return default if kn is None else kn.value

    def node(self, path: str) -> Node | None:
        n = self.job.tree.get(path) if path else self.job.tree
        return n if isinstance(n, Node) else None

    def has(self, path: str) -> bool:
        return path in self.knobs

    def provs(self, *paths: str) -> list[Provenance]:
        """Where the values at ``paths`` came from (class defaults only when nothing was set explicitly)."""
        out: list[Provenance] = []
        for p in paths:
            kn = self.k(p)
            if kn is not None and kn.prov not in out and (p in self.knobs or kn.prov.kind != "nemo-default"):
                out.append(kn.prov)
        explicit = [x for x in out if x.kind != "nemo-default"]
        return explicit or out

    # writing the target
    def set(self, path: str, value: Any, *from_paths: str, note: str | None = None, provs: list[Provenance] | None = None,
            status: Status | None = None) -> None:
        """Write a target value; ``status`` pins this value's bucket (otherwise it gets the row's final bucket)."""
        assert self.rule is not None
        prev = self.targets.get(path)
        if prev is not None and prev.rule != self.rule.id and prev.value != value:
            raise AssertionError(f"rules {prev.rule} and {self.rule.id} both write {path}")
        ps = list(provs or []) + self.provs(*from_paths)
        self.targets[path] = TargetValue(value=value, rule=self.rule.id, status=status or self.rule.status, provs=ps, note=note)
        if status is None:
            self.written.append(path)
        else:
            self.pinned.append(path)

    def unset(self, path: str) -> None:
        for p in [t for t in self.targets if t == path or t.startswith(path + ".")]:
            del self.targets[p]

    def note(self, kind: str, text: str) -> None:
        assert self.rule is not None
        n = Note(self.rule.id, kind, text)
        if n not in self.notes:
            self.notes.append(n)

    # facts about the job
    @property
    def lora(self) -> bool:
        return isinstance(self.job.tree.get("peft"), Node)

    @property
    def world(self) -> int:
        return int(self.v("trainer.devices", 1)) * int(self.v("trainer.num_nodes", 1))

    @property
    def dp(self) -> int:
        mp = int(self.v("trainer.strategy.tensor_model_parallel_size", 1)) * int(self.v("trainer.strategy.pipeline_model_parallel_size", 1)) * int(
            self.v("trainer.strategy.context_parallel_size", 1))
        return max(self.world // mp, 1)


Transform = Callable[[Ctx], "Result | None"]


def apply(job: Job, diags: Diagnostics) -> tuple[dict[str, TargetValue], list[KnobOutcome], list[Note], Ctx]:
    from . import transforms  # the named functions rows point at

    knobs = collect_knobs(job)
    owned: dict[str, list[str]] = {}
    for path in knobs:
        rid = owner(path)
        if rid is None:
            rid = "ROOT002"
        owned.setdefault(rid, []).append(path)
    ctx = Ctx(job=job, knobs=knobs, diags=diags, owned=owned)
    outcomes: list[KnobOutcome] = []
    for rule in table():
        mine = owned.get(rule.id, [])
        if not mine and not rule.always:
            continue
        ctx.rule = rule
        ctx.written = []
        ctx.pinned = []
        res: Result | None = None
        if rule.transform:
            fn: Transform | None = getattr(transforms, rule.transform, None)
            if fn is None:
                raise AssertionError(f"rule {rule.id}: no transform named {rule.transform}")
            res = fn(ctx)
        elif len(rule.targets) == 1 and rule.exact_sources:
            src = rule.exact_sources[0]
            kn = ctx.k(src)
            if kn is not None:
                ctx.set(rule.targets[0], kn.value, src)
        status = (res.status if res and res.status else rule.status)
        reason = (res.reason if res and res.reason else rule.reason)
        assert status in STATUSES, status
        for p in ctx.written:
            if p in ctx.targets and ctx.targets[p].rule == rule.id:
                ctx.targets[p] = ctx.targets[p].model_copy(update={"status": status})
        for path in mine:
            kn = knobs[path]
            outcomes.append(KnobOutcome(path=path, value=_plain(kn.value), prov=kn.prov, rule=rule.id, status=status,
                                        targets=sorted(set(ctx.written) | set(ctx.pinned)), reason=reason))
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
    text = repr(_plain(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(v: Any) -> Any:
    from .ir import plain

    return plain(v)
