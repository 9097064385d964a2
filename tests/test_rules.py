"""Every row of mappings/rules.yaml has a test: its `test:` case runs through the whole pipeline here."""
from pathlib import Path

import pytest

from nemo_migrate import rules
from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import MigrateError

FIX = Path(__file__).parent / "fixtures" / "rules"
ROWS = list(rules.table())


def _tree(targets):
    root = {}
    for path, tv in targets.items():
        cur = root
        parts = path.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = tv.value
    return root


_MISSING = object()


def _lookup(tree, path):
    cur = tree
    for p in path.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return _MISSING
        cur = cur[p]
    return cur


def _plain(x):
    return [_plain(i) for i in x] if isinstance(x, (list, tuple)) else x


def run_case(case):
    if case.get("factory") in ("nemo1", "aligner"):  # a NeMo 1.0 / NeMo-Aligner job; `set` entries are Hydra overrides
        return convert(Options(source=FIX / f"{case['factory']}.yaml", sets=list(case.get("set", []))))
    if case.get("factory") in ("slurm", "slurm-extra"):  # recipe.py that launches on a NeMo-Run SlurmExecutor
        return convert(Options(source=FIX / f"{case['factory'].replace('-', '_')}.py", sets=list(case.get("set", []))))
    opts = Options(source=FIX / "config.yaml", recipe=FIX / "recipe.py", factory=case.get("factory"), sets=list(case.get("set", [])))
    return convert(opts)


def test_table_is_well_formed():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate rule ids"
    seen = {}
    for r in ROWS:
        assert r.status in ("exact", "approximate", "dropped", "unsupported"), r.id
        assert r.reason and r.fact, f"{r.id}: every row needs a reason and a fact"
        assert r.test is not None, f"{r.id}: every row needs a test case"
        for s in r.exact_sources:
            assert s not in seen, f"{s} is owned by both {seen[s]} and {r.id}"
            seen[s] = r.id
        for d in r.defaults:
            assert d in r.exact_sources, f"{r.id}: default {d} is not one of its sources"
    from nemo_migrate.rules.transforms import TRANSFORMS
    for r in ROWS:
        if r.transform:
            assert callable(TRANSFORMS.get(r.transform)), f"{r.id}: transform {r.transform} missing"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_rule_row(row):
    case = row.test
    if "error" in case:
        with pytest.raises(MigrateError) as ei:
            run_case(case)
        assert case["error"] in [d.code for d in ei.value.diags.errors]
        return
    conv = run_case(case)
    v = conv.variants[0]
    tree = _tree(v.targets)
    own = False  # the case checks a value this row wrote (or its bucket, below): it can fail for this row
    for path, want in (case.get("expect") or {}).items():
        if path.startswith("launch."):  # a launch fact (run.sh / sbatch.sh), written by this row
            name = path.removeprefix("launch.")
            got = _plain(getattr(v.launch, name, _MISSING))
            assert got == want, f"{row.id}: {path} = {got!r}, expected {want!r}"
            own |= v.launch.origin[name].rule == row.id
            assert ("sbatch.sh" in conv.files) == (v.launch.executor == "slurm")
            continue
        got = _lookup(tree, path)
        if want is None:
            assert got is _MISSING or got is None, f"{row.id}: {path} should be absent/null, got {got!r}"
            own |= any(t == path or t.startswith(path + ".") or path.startswith(t + ".") for t in row.targets)  # the row decides it
        else:
            assert got is not _MISSING, f"{row.id}: {path} missing from the emitted config"
            if isinstance(want, float):
                assert got == pytest.approx(want, rel=1e-12), f"{row.id}: {path} = {got!r}, expected {want!r}"
            else:
                assert got == want, f"{row.id}: {path} = {got!r}, expected {want!r}"
            tv_rules = {tv.rule for p, tv in v.targets.items() if p == path or p.startswith(path + ".") or path.startswith(p + ".")}
            assert tv_rules, path
            own |= tv_rules == {row.id}
    if "status" in case:
        set_paths = [s.split("=", 1)[0].rstrip("+-*/") for s in case.get("set", [])]
        mine = [o for o in v.outcomes if o.rule == row.id]
        assert mine, f"{row.id}: owns no knob in this case"
        if set_paths:
            relevant = [o for o in mine if any(o.path == p or o.path.startswith(p + ".") for p in set_paths)] or mine
        else:
            relevant = mine
        assert {o.status for o in relevant} == {case["status"]}, f"{row.id}: {[(o.path, o.status, o.reason) for o in relevant]}"
    assert own or "status" in case, f"{row.id}: the case checks no value this row writes and not its bucket"


def test_every_knob_in_exactly_one_bucket():
    conv = run_case({})
    v = conv.variants[0]
    paths = [o.path for o in v.outcomes]
    assert len(paths) == len(set(paths))
    knobs = rules.collect_knobs(v.job)
    assert set(paths) == set(knobs)
    assert not [o for o in v.outcomes if o.rule == "ROOT002"], "a knob fell through to the catch-all row"
