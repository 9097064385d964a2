"""Comparison of one job as real NeMo builds it with the same job as nemo-migrate reads it (pure Python, no NeMo).

Inputs per job (JSON, see check.py and ours.py):

    nemo   {"status": "ok" | "refused" | "unbuilt", "refusal", "leaves": {path: {"v", "src", "d"?}}, "lr": [...],
            "micro": {...}}
           src: explicit (in the built config), default (the class signature's default, not in the config),
           adjusted (changed by NeMo's own code at launch: _validate_config, MegatronStrategy.setup); d: the
           signature's default of an explicit value
    ours   {"resolve": "ok" | "refused" | "crash", "convert": "ok" | "refused", "leaves": {path: {"v", "prov"}},
            "diagnostics": [...], "lr": [...], "micro": {...}}

Kinds of disagreement: acceptance (one side refuses the job), class (a ``_target_`` differs), value, only-nemo (NeMo
sets a value, not at its class default, that nemo-migrate does not have), only-ours (nemo-migrate has a path NeMo's
built job does not have at all), lr (the learning rate at some step), micro-batches (per step, or their size).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

KINDS = ("acceptance", "class", "value", "only-nemo", "only-ours", "lr", "micro-batches")
LR_RTOL, LR_ATOL = 1e-6, 1e-12


@dataclass
class Disagreement:
    job: str
    kind: str
    path: str
    ours: Any
    nemo: Any
    note: str = ""
    accepted: str | None = None  # the accepted.yaml entry's why, when listed there

    def line(self) -> str:
        note = f"  ({self.note})" if self.note else ""
        return f"{self.job}  {self.path}  ours={_show(self.ours)}  nemo={_show(self.nemo)}{note}"


@dataclass
class Tally:
    jobs: int = 0
    compared_jobs: int = 0
    values: int = 0
    equal: int = 0
    equal_by_default: int = 0
    lr_jobs: int = 0  # jobs whose LR was compared at every step
    lr_steps: int = 0
    micro_jobs: int = 0
    not_compared: list[tuple[str, str]] = field(default_factory=list)  # (job, why)
    leaves_only: list[tuple[str, str]] = field(default_factory=list)  # compared without LR / micro-batches (job, why)
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def differ(self) -> int:
        return len([d for d in self.disagreements if not d.accepted])

    @property
    def accepted(self) -> int:
        return len([d for d in self.disagreements if d.accepted])


def _show(v: Any, n: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def leaf(name: Any) -> Any:
    return name.rsplit(".", 1)[-1] if isinstance(name, str) else name


def same(a: Any, b: Any, path: str = "") -> bool:
    """Value equality as training sees it: bool is not a number, int 1 == float 1.0, class names compared on their
    last dotted component (``_target_`` and NeMo callables, written ``{"$callable": "pkg.mod.Name"}``)."""
    if isinstance(b, dict) and set(b) == {"$callable"}:
        b = b["$callable"]
        return isinstance(a, str) and leaf(a) == leaf(b) or (isinstance(a, dict) and set(a) == {"$callable"} and leaf(a["$callable"]) == leaf(b))
    if isinstance(a, dict) and set(a) == {"$callable"}:
        return same(b, a, path)
    if path.endswith("_target_"):
        return leaf(a) == leaf(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, path) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(same(a[k], b[k], f"{path}.{k}") for k in a)
    return type(a) is type(b) and a == b


def _refusal(ours: dict) -> str:
    errs = [f"[{d['code']}] {d['message']}" for d in ours.get("diagnostics", []) if d.get("severity") == "error"]
    return "; ".join(errs)[:300] or ours.get("crash", "refused")


def _codes(ours: dict, severity: str) -> set[str]:
    return {d["code"] for d in ours.get("diagnostics", []) if d.get("severity") == severity}


def compare_job(job_id: str, nemo: dict, ours: dict, policy: dict | None = None) -> Tally:
    """Compare one job; ``policy`` is accepted.yaml (scope_codes, nemo_refusal_warnings, accepted)."""
    policy = policy or {}
    t = Tally(jobs=1)
    out = t.disagreements

    def add(kind: str, path: str, o: Any, n: Any, note: str = "") -> None:
        out.append(Disagreement(job_id, kind, path, o, n, note))

    if ours.get("resolve") == "crash":
        add("acceptance", "<job>", f"nemo-migrate crashed: {ours.get('crash')}", nemo.get("status"))
        return _accept(t, policy)
    if nemo.get("status") == "unbuilt":
        t.not_compared.append((job_id, f"the driver could not build the job with NeMo: {nemo.get('why')}"))
        return t
    nemo_refuses = nemo.get("status") == "refused"
    ours_refuses = ours.get("resolve") != "ok"
    scope = set(policy.get("scope_codes") or {})
    t.values += 1  # the first value compared: whether the job runs at all
    if nemo_refuses and not ours_refuses:
        if _codes(ours, "warning") & set(policy.get("nemo_refusal_warnings") or []):
            t.equal += 1  # nemo-migrate converts it and warns that this NeMo release refuses it
        else:
            add("acceptance", "<job>", "converts", f"refused: {nemo.get('refusal')}")
    elif ours_refuses and not nemo_refuses:
        codes = _codes(ours, "error")
        if codes and codes <= scope:
            t.values -= 1
            t.not_compared.append((job_id, f"nemo-migrate refuses it as out of scope: {_refusal(ours)}"))
        else:
            add("acceptance", "<job>", f"refused: {_refusal(ours)}", "builds and passes _validate_config")
    else:
        t.equal += 1
    if ours_refuses or not nemo.get("leaves"):
        if ours_refuses and nemo_refuses:
            t.not_compared.append((job_id, f"both refuse it: ours {_refusal(ours)[:150]} | NeMo {str(nemo.get('refusal'))[:150]}"))
        return _accept(t, policy)
    t.compared_jobs = 1
    if ours.get("convert") != "ok":
        t.leaves_only.append((job_id, f"nemo-migrate writes no Automodel config: {_refusal(ours)}"))
    _leaves(t, nemo["leaves"], ours.get("leaves") or {}, add)
    _lr(t, nemo, ours, add)
    _micro(t, nemo, ours, add)
    return _accept(t, policy)


def _prefix_in(path: str, keys: dict) -> str | None:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        p = ".".join(parts[:i])
        if p in keys:
            return p
    return None


def _subtree(leaves: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v["v"] for k, v in sorted(leaves.items()) if k.startswith(prefix + ".")}


def _leaves(t: Tally, nl: dict, ol: dict, add) -> None:
    # a value on one side where the other side has a configured object (NeMo: packed_sequence_specs=None, ours:
    # PackedSequenceSpecs(...)) is one comparison at that path, not one per leaf of the object
    collapsed: dict[str, tuple[Any, Any]] = {}
    for path in set(ol) - set(nl):
        p = _prefix_in(path, nl)
        if p is not None and p not in ol:
            collapsed[p] = (_subtree(ol, p), nl[p]["v"])
    for path in set(nl) - set(ol):
        p = _prefix_in(path, ol)
        if p is not None and p not in nl:
            collapsed[p] = (ol[p]["v"], _subtree(nl, p))
    for p, (o, n) in sorted(collapsed.items()):
        t.values += 1
        if same(o, n, p):
            t.equal += 1
        else:
            add("value", p, o, n, "a value on one side, a configured object on the other")
    for path in sorted(set(nl) | set(ol)):
        if path in collapsed or any(path.startswith(c + ".") for c in collapsed):
            continue
        n, o = nl.get(path), ol.get(path)
        if n is None:
            t.values += 1
            add("only-ours", path, o["v"], "<no such parameter>", f"ours from {o.get('prov')}")
            continue
        if o is None:
            if n["src"] == "default":
                continue  # NeMo leaves it at the class default and so does nemo-migrate (it does not set it)
            t.values += 1
            if "d" in n and same(n["v"], n["d"], path):
                t.equal += 1
                t.equal_by_default += 1
            else:
                add("only-nemo", path, "<absent>", n["v"], f"NeMo {n['src']}")
            continue
        t.values += 1
        if same(o["v"], n["v"], path):
            t.equal += 1
        elif path.endswith("_target_"):
            base = leaf(o["v"]) in (n.get("mro") or [])
            add("class", path, o["v"], n["v"], (f"ours names a base class of NeMo's, which itself defines "
                                                f"{', '.join(n.get('own') or []) or 'only __init__'}") if base else f"ours from {o.get('prov')}")
        else:
            add("value", path, o["v"], n["v"], f"ours from {o.get('prov')}; NeMo {n['src']}")


def _lr(t: Tally, nemo: dict, ours: dict, add) -> None:
    a, b = ours.get("lr"), nemo.get("lr")
    if not isinstance(b, list) or not b:
        return
    if not isinstance(a, list):
        if ours.get("convert") == "ok":
            add("lr", "lr", ours.get("lr_how"), f"{len(b)} steps")
        return
    t.values += 1
    if len(a) != len(b):
        add("lr", "lr[len]", len(a), len(b), "schedule lengths differ")
        return
    t.lr_jobs, t.lr_steps = 1, len(b)
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if not math.isclose(x, y, rel_tol=LR_RTOL, abs_tol=LR_ATOL)]
    if not bad:
        t.equal += 1
        return
    i = bad[0]
    add("lr", f"lr[{i}]", a[i], b[i], f"{len(bad)} of {len(b)} steps differ, first at step {i}; last step ours={a[-1]:.6g} "
        f"nemo={b[-1]:.6g}; {nemo.get('lr_how', '')}")


def _micro(t: Tally, nemo: dict, ours: dict, add) -> None:
    a, b = ours.get("micro"), nemo.get("micro")
    if not isinstance(b, dict) or "num_microbatches" not in b or not isinstance(a, dict):
        return
    t.micro_jobs = 1
    for key in ("num_microbatches", "micro_batch_size", "global_batch_size"):
        t.values += 1
        if a.get(key) == b.get(key):
            t.equal += 1
        else:
            add("micro-batches", key, a.get(key, a.get("error")), b.get(key),
                f"ours dp={a.get('dp')}, nemo dp={b.get('dp')}")


def _accept(t: Tally, policy: dict) -> Tally:
    for d in t.disagreements:
        for entry in policy.get("accepted") or []:
            if d.kind in (entry.get("kinds") or KINDS) and \
                    any(fnmatch.fnmatchcase(d.path, p) for p in entry.get("paths") or ["*"]) and \
                    any(fnmatch.fnmatchcase(d.job, j) for j in entry.get("jobs") or ["*"]):
                d.accepted = entry.get("why", "accepted")
                break
    return t


def merge(tallies: list[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.jobs += t.jobs
        out.compared_jobs += t.compared_jobs
        out.values += t.values
        out.equal += t.equal
        out.equal_by_default += t.equal_by_default
        out.lr_jobs += t.lr_jobs
        out.lr_steps += t.lr_steps
        out.micro_jobs += t.micro_jobs
        out.not_compared += t.not_compared
        out.leaves_only += t.leaves_only
        out.disagreements += t.disagreements
    return out


def render(total: Tally, max_per_group: int | None = None) -> list[str]:
    """Every disagreement grouped by kind, then by path (jobs listed per line), and the counts."""
    lines: list[str] = []
    for accepted in (False, True):
        ds = [d for d in total.disagreements if bool(d.accepted) == accepted]
        if not ds:
            continue
        lines.append("=" * 100)
        lines.append("ACCEPTED (known modelling limits, tools/nemo_oracle/accepted.yaml)" if accepted else "DISAGREEMENTS")
        for kind in KINDS:
            group = [d for d in ds if d.kind == kind]
            if not group:
                continue
            lines.append("")
            lines.append(f"--- {kind}: {len(group)}")
            shown = group if max_per_group is None else group[:max_per_group]
            for d in sorted(shown, key=lambda d: (d.path, d.job)):
                lines.append("  " + d.line() + (f"  [accepted: {d.accepted}]" if accepted else ""))
            if len(shown) < len(group):
                lines.append(f"  ... {len(group) - len(shown)} more")
    if total.leaves_only:
        lines.append("")
        lines.append(f"--- leaves compared, LR and micro-batches not (no Automodel config is written): {len(total.leaves_only)} jobs")
        for job, why in sorted(total.leaves_only):
            lines.append(f"  {job}: {why}")
    if total.not_compared:
        lines.append("")
        lines.append(f"--- not compared: {len(total.not_compared)} jobs")
        for job, why in sorted(total.not_compared):
            lines.append(f"  {job}: {why}")
    lines.append("")
    lines.append(summary_line(total))
    return lines


def counts(total: Tally) -> dict[str, Any]:
    by_kind = {k: len([d for d in total.disagreements if d.kind == k and not d.accepted]) for k in KINDS}
    return {"jobs": total.jobs, "jobs_compared": total.compared_jobs, "jobs_not_compared": len(total.not_compared),
            "values_compared": total.values, "equal": total.equal, "equal_by_class_default": total.equal_by_default,
            "differ": total.differ, "accepted": total.accepted, "differ_by_kind": by_kind,
            "lr_jobs": total.lr_jobs, "lr_steps": total.lr_steps, "micro_batch_jobs": total.micro_jobs,
            "jobs_with_disagreements": len({d.job for d in total.disagreements if not d.accepted})}


def summary_line(total: Tally) -> str:
    c = counts(total)
    kinds = ", ".join(f"{k} {n}" for k, n in c["differ_by_kind"].items() if n)
    return (f"jobs {c['jobs']} (compared {c['jobs_compared']}, not compared {c['jobs_not_compared']}); values compared "
            f"{c['values_compared']}: equal {c['equal']}, differ {c['differ']}" + (f" ({kinds})" if kinds else "")
            + f", accepted {c['accepted']}; LR compared at every step in {c['lr_jobs']} jobs ({c['lr_steps']} steps), "
            f"micro-batches in {c['micro_batch_jobs']} jobs")
