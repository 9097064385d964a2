"""``nemo-migrate diff``: compare what two jobs will actually do.

Each side is a NeMo 2 job (compiled with the rule table, so every value keeps its NeMo provenance and the bucket of
its rule) or an Automodel YAML (read as 0.7 reads it, absent keys filled with 0.7's defaults).  Both are reduced to
the facts of :mod:`nemo_migrate.semantics` and compared fact by fact: same / differs / approximate (equal after a mapping
the rule table marks approximate: a known, explained difference) / only one side.  Automodel-side validity findings
(keys 0.7 ignores or rejects) are reported with them.  Exit: 0 no semantic difference, 2 differences, 1 error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import knowledge, rules
from .convert import Options, Variant, convert
from .detect import Kind, detect
from .diagnostics import Diagnostic, Diagnostics, MigrateError
from .automodel.match import matches
from .automodel.schema import MISSING as _MISSING
from .semantics import Fact, FactCtx, View, facts, linear_modules, lr_schedule, same_value
from .sources.automodel_yaml import AutomodelConfig, read_automodel_yaml


# ---------------------------------------------------------------------------------------------- views

class NemoView(View):
    """A NeMo 2 job as the compiler maps it (every value with its NeMo origin and its rule's bucket)."""

    def __init__(self, variant: Variant):
        self.v = variant
        self.label = variant.label
        self.reasons = {}
        for o in variant.outcomes:
            self.reasons.setdefault((o.rule, o.status), o.reason)
        self._tree: dict[str, Any] = {}
        for p, tv in variant.targets.items():
            cur = self._tree
            parts = p.split(".")
            for q in parts[:-1]:
                cur = cur.setdefault(q, {})
            cur[parts[-1]] = tv.value

    def _tv(self, path: str):
        t = self.v.targets
        if path in t:
            return t[path]
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            pre = ".".join(parts[:i])
            if pre in t:
                return t[pre]
        return None

    def explicit(self, path: str) -> Any:
        cur: Any = self._tree
        for p in path.split("."):
            if not isinstance(cur, dict) or p not in cur:
                return _MISSING
            cur = cur[p]
        return cur

    def origin(self, path: str) -> str | None:
        from .emit import _short_prov

        tv = self._tv(path)
        if tv is None:
            return None
        ps = []
        for p in tv.provs:
            s = _short_prov(p)
            if s not in ps:
                ps.append(s)
        return ", ".join(ps[:3]) if ps else f"{tv.rule} (implied by the NeMo job)"

    def rule_status(self, rule_id: str):
        for o in self.v.outcomes:
            if o.rule == rule_id:
                return o.status, f"[{rule_id}] {o.reason}"
        return None

    def status(self, path: str):
        tv = self._tv(path)
        if tv is None or tv.status not in ("approximate", "unsupported"):
            return None
        reason = self.reasons.get((tv.rule, tv.status)) or rules.by_id()[tv.rule].reason
        return tv.status, f"[{tv.rule}] {reason}"


class AutomodelView(View):
    def __init__(self, cfg: AutomodelConfig):
        self.cfg = cfg
        self.label = cfg.file

    def explicit(self, path: str) -> Any:
        return self.cfg.get(path, _MISSING)

    def origin(self, path: str) -> str | None:
        if path in self.cfg.pos and self.cfg.pos[path][0]:
            return f"{self.cfg.file}:{self.cfg.pos[path][0]}"
        return None


# ---------------------------------------------------------------------------------------------- sides

@dataclass
class Side:
    kind: str  # "nemo2" | "automodel"
    label: str
    view: View
    ctx: FactCtx
    rejected: dict[str, str] = field(default_factory=dict)
    findings: list[Diagnostic] = field(default_factory=list)
    facts: dict[str, Fact] = field(default_factory=dict)


def _model_ctx(model_id: Any, world: int | None, note: str | None) -> FactCtx:
    m = knowledge.models()["models"].get(str(model_id) if model_id else "", {})
    shape = knowledge.models()["llama_shapes"].get(m.get("shape", ""), {})
    return FactCtx(world=world, world_note=note, family=m.get("family", "llama"), layers=shape.get("layers", 4))


def nemo_sides(source: Path, recipe: Path | None, sets: list[str], nproc: int | None, nnodes: int | None, model: str | None) -> list[Side]:
    conv = convert(Options(source=source, recipe=recipe, sets=list(sets), nproc_per_node=nproc, nnodes=nnodes, model=model))
    out = []
    for v in conv.variants:
        view = NemoView(v)
        world = v.nproc * v.nnodes
        out.append(Side("nemo2", v.output, view, _model_ctx(view.get("model.pretrained_model_name_or_path"), world, None),
                        findings=[d for d in conv.diags.items if d.severity != "note"]))
    return out


_RUNSH_VARIANT = re.compile(r"config=\"\$here\"/'?([^'\s;]+)'?; nproc=(\d+); nnodes=(\d+)")


def _world_from_run_sh(path: Path, config_name: str) -> tuple[int, str] | None:
    """nproc x nnodes for a config, from a run.sh next to it (the form `convert` writes, or a torchrun line)."""
    run_sh = path.parent / "run.sh"
    if not run_sh.is_file():
        return None
    text = run_sh.read_text(encoding="utf-8", errors="replace")
    for m in _RUNSH_VARIANT.finditer(text):
        if m.group(1) == config_name:
            return int(m.group(2)) * int(m.group(3)), f"{run_sh.name}"
    m = re.search(r"--nproc[-_]per[-_]node[= ](\d+)", text)
    if m:
        n = re.search(r"--nnodes[= ](\d+)", text)
        return int(m.group(1)) * (int(n.group(1)) if n else 1), f"{run_sh.name}"
    return None


def automodel_side(path: Path, display: str, diags: Diagnostics, nproc: int | None, nnodes: int | None) -> Side:
    cfg = read_automodel_yaml(path, display, diags)
    if cfg is None:
        raise MigrateError(diags)
    view = AutomodelView(cfg)
    world, note = None, None
    if nproc:
        world, note = nproc * (nnodes or 1), "--nproc-per-node"
    else:
        got = _world_from_run_sh(path, path.name)
        if got:
            world, note = got
    ctx = _model_ctx(view.get("model.pretrained_model_name_or_path"), world, note)
    _semantic_findings(cfg, view, ctx)
    return Side("automodel", display, view, ctx, rejected=dict(cfg.rejected), findings=list(cfg.findings.items))


def _semantic_findings(cfg: AutomodelConfig, view: AutomodelView, ctx: FactCtx) -> None:
    """Findings that need the architecture or the step count: LoRA patterns matching nothing, warmup >= decay."""
    if isinstance(cfg.get("peft"), dict) and "peft" not in cfg.rejected:
        pats = cfg.get("peft.target_modules") or []
        mods = linear_modules(ctx.family, ctx.layers)
        for p in pats if isinstance(pats, list) else [pats]:
            if not any(matches(str(p), m) for m in mods):
                cfg.findings.warning("AM215", f"LoRA pattern {p!r} matches no module of a {ctx.family}-family model: patterns are matched "
                                     "against the full module name (model.layers.0.mlp.gate_proj)", key="peft.target_modules",
                                     hint=f"write '*.{p}' or '*{p}'" if "*" not in str(p) else None, **cfg.where("peft.target_modules"))
        fp8 = cfg.get("fp8")
        if isinstance(fp8, dict) and fp8.get("enabled"):
            filt = [str(x) for x in (fp8.get("filter_fqns") or [])]
            exposed = [m for m in mods if any(matches(str(p), m) for p in (pats if isinstance(pats, list) else [pats]))
                       and not any(f in m for f in filt)]
            if cfg.get("peft.match_all_linear"):
                exposed = [m for m in mods if not any(f in m for f in filt)]
            if exposed:
                cfg.findings.error("AM217", f"fp8 is enabled with LoRA and {len(exposed)} adapted linear(s) (e.g. {exposed[0]}) are not in "
                                   "filter_fqns: Automodel 0.7.0 converts them to Float8Linear and drops their adapters (measured on H100: "
                                   "trainable parameters 41,943,040 -> 0, then 'optimizer received no trainable parameters')",
                                   key="fp8.enabled", hint="put the adapted projections in fp8.filter_fqns, or run with `nemo-migrate run`",
                                   **cfg.where("fp8.enabled"))
    steps = cfg.get("step_scheduler.max_steps")
    if isinstance(steps, int) and steps > 0 and isinstance(cfg.get("lr_scheduler"), dict):
        _, _, rej = lr_schedule(view, steps)
        if rej:
            cfg.rejected["lr_scheduler"] = rej
            cfg.findings.error("AM216", f"lr_scheduler: {rej}", key="lr_scheduler.lr_warmup_steps",
                               hint="lr_warmup_steps must be below lr_decay_steps (the total steps when unset)", **cfg.where("lr_scheduler"))
    # everything else Automodel 0.7 would refuse, from the same checks convert runs before it writes (AM300-AM349)
    from .automodel_rules import rejections

    covered = set(cfg.rejected) | {f.key for f in cfg.findings.items if f.severity == "error" and f.key}
    for r in rejections(cfg.values, ctx.world):
        if any(r.key == k or r.key.startswith(k + ".") for k in covered):
            continue
        cfg.rejected.setdefault(r.key, r.what)
        cfg.findings.error(r.code, r.message, key=r.key, hint=r.fix if r.fix.startswith("did you mean") else f"write {r.key} as {r.fix}",
                           **cfg.where(r.key))


def _kind_of(path: Path, diags: Diagnostics) -> str:
    """Which side reads ``path``: the one detector (``detect``) decides; a YAML that does not parse, or a file of no
    known kind, goes to the Automodel reader, which reports where it breaks."""
    kind = detect(path, diags)
    return "automodel" if kind.automodel or kind in (Kind.YAML, Kind.UNKNOWN) else "nemo2"


# ---------------------------------------------------------------------------------------------- comparing

@dataclass
class Row:
    fact: str
    left: Fact | None
    right: Fact | None
    verdict: str  # same | differs | approximate | only-left | only-right
    note: str = ""

    @property
    def marker(self) -> str:
        return {"same": " ", "differs": "~", "approximate": "≈", "only-left": "-", "only-right": "+"}[self.verdict]


@dataclass
class PairResult:
    left: Side
    right: Side
    rows: list[Row]

    def counts(self) -> dict[str, int]:
        c = {"same": 0, "approximate": 0, "differs": 0, "only-left": 0, "only-right": 0}
        for r in self.rows:
            c[r.verdict] += 1
        return c

    @property
    def findings(self) -> list[Diagnostic]:
        return [f for f in self.left.findings + self.right.findings if f.code.startswith("AM")]

    @property
    def different(self) -> bool:
        c = self.counts()
        return bool(c["differs"] or c["only-left"] or c["only-right"] or any(f.severity == "error" for f in self.findings))


def source_facts(side: Side) -> dict[str, Fact]:
    """The effective NeMo 2 knobs themselves (two NeMo jobs compare at the source, before any mapping)."""
    from .semantics import fmt_num

    v: Variant = side.view.v  # type: ignore[attr-defined]
    out = {}
    for o in v.outcomes:
        val = o.value
        out[o.path] = Fact(o.path, val, fmt_num(val) if not isinstance(val, (list, dict)) else str(val), str(o.prov))
    return out


def compare(left: Side, right: Side) -> PairResult:
    if left.kind == "nemo2" and right.kind == "nemo2":
        left.facts, right.facts = source_facts(left), source_facts(right)
        return _rows(left, right)
    # both sides judged on the same architecture and world size (the one either side knows)
    # each side keeps the world size it knows; a side that does not say is judged with the other side's
    wl = left.ctx.world or right.ctx.world
    wr = right.ctx.world or left.ctx.world
    note_l = left.ctx.world_note if left.ctx.world else ("assumed from the other side" if wl else None)
    note_r = right.ctx.world_note if right.ctx.world else ("assumed from the other side" if wr else None)
    family, layers = (left.ctx.family, left.ctx.layers) if left.kind == "nemo2" or left.ctx.layers != 4 else (right.ctx.family, right.ctx.layers)
    lctx = FactCtx(wl, note_l, family, layers)
    rctx = FactCtx(wr, note_r, family, layers)
    left.facts = facts(left.view, lctx, left.rejected)
    right.facts = facts(right.view, rctx, right.rejected)
    return _rows(left, right)


def _rows(left: Side, right: Side) -> PairResult:
    names = list(left.facts) + [n for n in right.facts if n not in left.facts]
    rows = []
    for n in names:
        a, b = left.facts.get(n), right.facts.get(n)
        if a is None:
            rows.append(Row(n, None, b, "only-right"))
            continue
        if b is None:
            rows.append(Row(n, a, None, "only-left"))
            continue
        if a.rejected or b.rejected:
            rows.append(Row(n, a, b, "differs", "; ".join(f"{s} side: Automodel 0.7 rejects it ({x.rejected})"
                                                         for s, x in (("left", a), ("right", b)) if x.rejected)))
            continue
        if same_value(a.value, b.value):
            st = a.status or b.status
            rows.append(Row(n, a, b, "approximate", st[1]) if st else Row(n, a, b, "same"))
        else:
            rows.append(Row(n, a, b, "differs"))
    return PairResult(left, right, rows)


def run_diff(a: Path, b: Path, recipe: Path | None = None, sets: list[str] | None = None, nproc: int | None = None,
             nnodes: int | None = None, model: str | None = None) -> list[PairResult]:
    diags = Diagnostics()
    for p in (a, b):
        if not p.exists():
            diags.error("NM001", f"no such file or directory: {p}")
    if diags.has_errors:
        raise MigrateError(diags)
    ka, kb = _kind_of(a, diags), _kind_of(b, diags)
    sets = sets or []

    def sides(p: Path, kind: str) -> list[Side]:
        if kind == "nemo2":
            yaml_file = p.is_file() and p.suffix in (".yaml", ".yml")
            src_recipe = recipe if recipe is not None else (p.parent / "recipe.py" if yaml_file and (p.parent / "recipe.py").is_file() else None)
            return nemo_sides(p, src_recipe if p.is_file() else recipe, sets, nproc, nnodes, model)
        files = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file()) if p.is_dir() else [p]
        return [automodel_side(f, f.name if p.is_dir() else str(f), diags, nproc, nnodes) for f in files]

    la, lb = sides(a, ka), sides(b, kb)
    pairs: list[tuple[Side, Side]] = []
    if len(la) == 1 and len(lb) == 1:
        pairs = [(la[0], lb[0])]
    else:
        names_b = {Path(s.label).name: s for s in lb}
        for s in la:
            other = names_b.get(Path(s.label).name)
            if other is None:
                diags.warning("NM700", f"{s.label} has no counterpart named {Path(s.label).name} in {b}")
            else:
                pairs.append((s, other))
        if not pairs:
            diags.error("NM701", f"no pairs of configs with the same file name in {a} and {b}")
            raise MigrateError(diags)
    return [compare(x, y) for x, y in pairs]


# ---------------------------------------------------------------------------------------------- output

def to_json(results: list[PairResult]) -> dict[str, Any]:
    def fj(f: Fact | None) -> dict | None:
        if f is None:
            return None
        return {"value": f.shown, "from": f.origin, **({"rejected": f.rejected} if f.rejected else {})}

    out = {"tool": "nemo-migrate diff", "pairs": []}
    for r in results:
        out["pairs"].append({
            "left": {"kind": r.left.kind, "label": r.left.label},
            "right": {"kind": r.right.kind, "label": r.right.label},
            "summary": r.counts(),
            "different": r.different,
            "rows": [{"fact": x.fact, "verdict": x.verdict, "left": fj(x.left), "right": fj(x.right), **({"note": x.note} if x.note else {})}
                     for x in r.rows],
            "findings": [d.to_json() for d in r.findings],
        })
    return out


def summary_line(r: PairResult) -> str:
    c = r.counts()
    errs = sum(1 for f in r.findings if f.severity == "error")
    return (f"{r.left.label} vs {r.right.label}: {c['same']} same, {c['approximate']} approximate, {c['differs']} differ, "
            f"{c['only-left'] + c['only-right']} only one side; {len(r.findings)} finding(s) on the Automodel side ({errs} error(s))")


def render_plain(results: list[PairResult], show_all: bool = False) -> str:
    lines: list[str] = []
    for r in results:
        lines.append(f"--- {r.left.kind}: {r.left.label}")
        lines.append(f"+++ {r.right.kind}: {r.right.label}")
        for row in r.rows:
            if row.verdict == "same" and not show_all:
                continue
            lines.append(f"{row.marker} {row.fact}  ({row.verdict})")
            if row.left is not None:
                lines.append(f"    - {row.left.shown}    [{row.left.origin}]")
            if row.right is not None:
                lines.append(f"    + {row.right.shown}    [{row.right.origin}]")
            if row.note:
                lines.append(f"      {row.note}")
        for f in r.findings:
            lines.append("! " + f.render().replace("\n", "\n  "))
        lines.append(summary_line(r))
        lines.append("")
    return "\n".join(lines)
