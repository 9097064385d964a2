"""Real public NeMo fine-tuning jobs (tests/realworld/<case>/): what NeMo trains, written down by hand from the input
and NeMo's source, held against what `nemo-migrate` makes of the same input.  See tests/realworld/README.md.

Per case: test_realworld[case] runs the case's command in process (typer's CliRunner, in a copy of the case's
input/ so nothing can touch the stored files); test_realworld_source[case] checks SOURCE.yaml and that every stored
input is byte-identical to what was fetched (sha256); test_realworld_case_file[case] checks that case.yaml is well
formed.  Many cases fail until the compiler handles that kind of job: that is the point, they are not xfail.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml

CORPUS = Path(__file__).resolve().parent / "realworld"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file()) if CORPUS.is_dir() else []
KINDS = {"nemo2-notebook", "nemo2-script", "nemo2-cli-sbatch", "nemo-run-export", "nemo1", "aligner", "diff"}
EXPECT_EXIT = {"ok": 0, "same": 0, "different": 2, "refused": 1}
SOURCE_FIELDS = ("repo", "path", "commit", "url", "fetched", "sha256", "extracted")


def _case(name: str) -> dict:
    return yaml.safe_load((CORPUS / name / "case.yaml").read_text())


# ---------------------------------------------------------------- comparison ----------------------------------------

def _leaf(v) -> str:
    return str(v).rsplit(".", 1)[-1]


def same(expected, actual, *, target_leaf: bool = False) -> bool:
    """Equality for hand-written expectations: floats with rel tol 1e-9, bools never equal to numbers, lists element by
    element, `_target_` values on the class leaf (`llm.SquadDataModule` == `SquadDataModule`)."""
    if target_leaf:
        return actual is not None and _leaf(expected) == _leaf(actual)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=0.0) if expected != actual else True
    if isinstance(expected, (int, float)) and isinstance(actual, str):  # diff rows print values as text
        try:
            return same(expected, float(actual))
        except ValueError:
            return False
    if isinstance(expected, list) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(same(e, a) for e, a in zip(expected, actual))
    return expected == actual


def _dig(tree, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check_ok(case: dict, report: dict, out: Path | None) -> list[str]:
    """Every mismatch between case.yaml (source / absent / target) and a convert --json report (+ written YAML)."""
    problems: list[str] = []
    variants = report.get("variants") or []
    if not variants:
        return ["the report has no variants"]
    if case.get("variant"):
        variants = [v for v in variants if case["variant"] in (v.get("name"), v.get("label"))]
        if not variants:
            return [f"no variant named {case['variant']!r} in the report"]
    for v in variants:
        knobs = {k["path"]: k.get("value") for k in v.get("knobs", [])}
        tag = f"[{v.get('name')}] " if len(variants) > 1 else ""
        for path, exp in (case.get("source") or {}).items():
            want = exp["value"]
            if path not in knobs:
                problems.append(f"{tag}{path}: expected {want!r} ({exp.get('from')}), not in the report")
            elif not same(want, knobs[path], target_leaf=path.endswith("_target_")):
                problems.append(f"{tag}{path}: expected {want!r} ({exp.get('from')}), report has {knobs[path]!r}")
        for path, why in (case.get("absent") or {}).items():
            if knobs.get(path) is not None:
                problems.append(f"{tag}{path}: expected absent ({why}), report has {knobs[path]!r}")
        if case.get("target"):
            if out is None or not v.get("output") or not (out / v["output"]).is_file():
                problems.append(f"{tag}no written config {v.get('output')!r} to check the target keys in")
                continue
            written = yaml.safe_load((out / v["output"]).read_text())
            for key, want in case["target"].items():
                try:
                    got = _dig(written, key)
                except KeyError:
                    problems.append(f"{tag}target {key}: expected {want!r}, not in {v['output']}")
                    continue
                if not same(want, got):
                    problems.append(f"{tag}target {key}: expected {want!r}, {v['output']} has {got!r}")
    return problems


def _path_match(expected: str, actual: str | None) -> bool:
    """A diagnostic's file names the refusal file: one path ends with the other (the compiler may print it relative to
    the input it was given, or absolute)."""
    if not actual:
        return False
    e, a = PurePosixPath(expected).parts, PurePosixPath(str(actual).replace("\\", "/")).parts
    n = min(len(e), len(a))
    return n > 0 and e[-n:] == a[-n:]


def refusal_locations(refusal: dict) -> list[tuple[int | None, int]]:
    if "locations" in refusal:
        return [(loc.get("cell"), loc["line"]) for loc in refusal["locations"]]
    lines = refusal["line"] if isinstance(refusal["line"], list) else [refusal["line"]]
    cells = refusal.get("cell")
    return [(cells, ln) for ln in lines]


def check_refused(case: dict, report: dict) -> list[str]:
    ref = case["refusal"]
    errors = [d for d in report.get("diagnostics", []) if d.get("severity") == "error"]
    if not errors:
        return ["no error diagnostic in the report"]
    want = refusal_locations(ref)
    for d in errors:
        if _path_match(ref["file"], d.get("file")) and any(
                d.get("line") == line and (cell is None or d.get("cell") == cell) for cell, line in want):
            return []
    got = [f"{d.get('file')}:{('cell ' + str(d['cell']) + ' ') if 'cell' in d else ''}{d.get('line')} "
           f"[{d.get('code')}] {d.get('message', '')[:100]}" for d in errors]
    return [f"no error at {ref['file']} {want} ({ref['why'][:120]}...); errors were: {got}"]


def check_diff(case: dict, report: dict) -> list[str]:
    rows: dict[str, dict] = {}
    for pair in report.get("pairs", []):
        for row in pair.get("rows", []):
            rows.setdefault(row["fact"], row)
    problems = []
    for fact, exp in (case.get("facts") or {}).items():
        row = rows.get(fact)
        if row is None:
            problems.append(f"fact {fact}: not in the diff ({exp.get('from')})")
            continue
        if exp.get("verdict") and row.get("verdict") != exp["verdict"]:
            problems.append(f"fact {fact}: expected {exp['verdict']}, diff says {row.get('verdict')}")
        for side in ("left", "right"):
            if side in exp:
                got = (row.get(side) or {}).get("value")
                if not same(exp[side], got):
                    problems.append(f"fact {fact}: {side} expected {exp[side]!r}, diff says {got!r}")
    return problems


# ---------------------------------------------------------------- running -------------------------------------------

def run_cli(args: list[str], cwd: Path, monkeypatch):
    from typer.testing import CliRunner

    from nemo_migrate.cli import app

    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, args)


def command_args(case: dict, out: Path) -> list[str]:
    args = shlex.split(case["command"])
    if args[0] == "convert":
        args += ["-o", str(out)]
    return args + ["--json"]


@pytest.mark.parametrize("name", CASES)
def test_realworld(name, tmp_path, monkeypatch):
    case = _case(name)
    work = tmp_path / "case"
    shutil.copytree(CORPUS / name / "input", work / "input")
    out = tmp_path / "out"
    r = run_cli(command_args(case, out), work, monkeypatch)
    assert r.exception is None or isinstance(r.exception, SystemExit), \
        f"the CLI raised {type(r.exception).__name__}: {r.exception}\n{r.output[-2000:]}"
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output[-2000:]
    want = EXPECT_EXIT[case["expect"]]
    try:
        report = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"exit {r.exit_code} (expected {want}); stdout is not the --json report:\n{r.output[-2000:]}")
    errors = [f"{d.get('file')}:{d.get('line')} [{d.get('code')}] {d.get('message', '')[:160]}"
              for d in report.get("diagnostics", []) if d.get("severity") == "error"]
    assert r.exit_code == want, f"exit {r.exit_code}, expected {want} ({case['expect']}); errors: {errors}"
    if case["kind"] == "diff":
        problems = check_diff(case, report)
    elif case["expect"] == "refused":
        problems = check_refused(case, report)
        if out.exists() and any(out.iterdir()):
            problems.append(f"a refused job wrote {sorted(p.name for p in out.iterdir())}")
    else:
        problems = check_ok(case, report, out)
    if case.get("then"):  # the way out the refusal's hint names: it must then convert, to the hand-derived values
        out2 = tmp_path / "out-then"
        r2 = run_cli(command_args(case["then"], out2), work, monkeypatch)
        assert "Traceback" not in r2.output, r2.output[-2000:]
        try:
            report2 = json.loads(r2.stdout)
        except ValueError:
            pytest.fail(f"then: exit {r2.exit_code}; stdout is not the --json report:\n{r2.output[-2000:]}")
        errors2 = [f"{d.get('file')}:{d.get('line')} [{d.get('code')}] {d.get('message', '')[:160]}"
                   for d in report2.get("diagnostics", []) if d.get("severity") == "error"]
        assert r2.exit_code == 0, f"then ({case['then']['command']}): exit {r2.exit_code}; errors: {errors2}"
        problems += check_ok(case, report2, out2)
    assert not problems, f"{len(problems)} mismatch(es) with the hand-derived expectations:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- the corpus itself ---------------------------------

@pytest.mark.parametrize("name", CASES)
def test_realworld_source(name):
    """SOURCE.yaml names every stored input with its origin, and the stored bytes are what was fetched."""
    d = CORPUS / name
    src = yaml.safe_load((d / "SOURCE.yaml").read_text())
    files = src["files"]
    stored = sorted(p.relative_to(d).as_posix() for p in (d / "input").rglob("*") if p.is_file())
    assert sorted(files) == stored, "SOURCE.yaml must list exactly the files under input/"
    for rel, e in files.items():
        missing = [f for f in SOURCE_FIELDS if not e.get(f)]
        assert not missing, f"{rel}: SOURCE.yaml lacks {missing}"
        assert re.fullmatch(r"[0-9a-f]{40}", e["commit"]), f"{rel}: commit must be 40 hex digits"
        assert e["url"] == f"https://github.com/{e['repo']}/blob/{e['commit']}/{e['path']}", f"{rel}: url"
        assert str(e["fetched"]) == "2026-11-30", f"{rel}: fetched"
        assert hashlib.sha256((d / rel).read_bytes()).hexdigest() == e["sha256"], f"{rel} was modified after fetching"


@pytest.mark.parametrize("name", CASES)
def test_realworld_case_file(name):
    """case.yaml is complete enough to be an oracle: every expectation says where it was read."""
    case, d = _case(name), CORPUS / name
    assert case["kind"] in KINDS
    assert case["expect"] in EXPECT_EXIT
    args = shlex.split(case["command"])
    assert args[0] in ("convert", "diff") and (args[0] == "diff") == (case["kind"] == "diff")
    for a in args[1:]:
        if a.startswith("input/"):
            assert (d / a).exists(), f"command names {a}, which is not stored"
    if case["kind"] == "diff":
        assert case["expect"] in ("same", "different", "refused") and (case["expect"] == "refused" or case.get("facts"))
        for fact, exp in (case.get("facts") or {}).items():
            assert exp.get("from"), f"fact {fact} has no `from`"
    elif case["expect"] == "refused":
        ref = case["refusal"]
        assert (d / ref["file"]).is_file() and ref.get("why"), "refusal needs an existing file and a why"
        assert refusal_locations(ref)
        if ref["file"].endswith(".ipynb"):
            assert all(cell for cell, _ in refusal_locations(ref)), "a notebook location needs its cell"
        if case.get("then"):  # the way out: a second command that must convert to the `source` values
            assert case["then"].get("command", "").startswith("convert ") and case["then"].get("why") and case.get("source")
            for path, exp in case["source"].items():
                assert set(exp) == {"value", "from"} and exp["from"], f"{path}: needs value and from"
    else:
        assert case["expect"] == "ok" and case.get("source"), "an ok case needs source expectations"
        for path, exp in case["source"].items():
            assert set(exp) == {"value", "from"} and exp["from"], f"{path}: needs value and from"
    assert case.get("notes"), "say what NeMo does here and the pitfalls"
    froms = [e["from"] for e in (case.get("source") or {}).values()] + [e["from"] for e in (case.get("facts") or {}).values()]
    for text in froms:  # every cited input location exists
        for f, cell, line in re.findall(r"(input/[\w./-]+\.ipynb) cell (\d+) line (\d+)", text):
            cells = json.loads((d / f).read_text())["cells"]
            src = cells[int(cell) - 1]["source"]
            src = "".join(src) if isinstance(src, list) else src
            assert cells[int(cell) - 1]["cell_type"] == "code" and int(line) <= len(src.split("\n")), text
        for f, line in re.findall(r"(input/[\w./-]+):(\d+)", text):
            assert int(line) <= len((d / f).read_text().split("\n")), text


def test_corpus_size_and_mix():
    kinds = [_case(n)["kind"] for n in CASES]
    assert len(CASES) >= 30
    assert kinds.count("diff") >= 2
    for k in ("nemo2-notebook", "nemo2-script", "nemo2-cli-sbatch", "nemo1", "aligner"):
        assert kinds.count(k) >= 2, k
    assert sum(_case(n)["expect"] == "refused" for n in CASES) >= 5


# ---------------------------------------------------------------- the harness can fail -------------------------------

def test_checks_catch_wrong_values():
    case = {"source": {"trainer.max_steps": {"value": 20, "from": "x"}, "data._target_": {"value": "SquadDataModule", "from": "x"},
                       "optim.config.lr": {"value": 1e-4, "from": "x"}, "trainer.strategy.sequence_parallel": {"value": False, "from": "x"}},
            "absent": {"peft._target_": "full fine-tune"}}
    good = {"variants": [{"name": "a", "knobs": [
        {"path": "trainer.max_steps", "value": 20}, {"path": "data._target_", "value": "nemo.collections.llm.SquadDataModule"},
        {"path": "optim.config.lr", "value": 0.0001 * (1 + 1e-12)}, {"path": "trainer.strategy.sequence_parallel", "value": False}]}]}
    assert check_ok(case, good, None) == []
    bad = {"variants": [{"name": "a", "knobs": [
        {"path": "trainer.max_steps", "value": 21}, {"path": "data._target_", "value": "DollyDataModule"},
        {"path": "optim.config.lr", "value": 1.0001e-4}, {"path": "trainer.strategy.sequence_parallel", "value": 0},
        {"path": "peft._target_", "value": "LoRA"}]}]}
    assert len(check_ok(case, bad, None)) == 5
    ref = {"refusal": {"file": "input/nb.ipynb", "cell": 7, "line": 4, "why": "w"}}
    assert check_refused(ref, {"diagnostics": [{"severity": "error", "file": "nb.ipynb", "cell": 7, "line": 4}]}) == []
    assert check_refused(ref, {"diagnostics": [{"severity": "error", "file": "nb.ipynb", "cell": 8, "line": 4}]})
    assert check_refused(ref, {"diagnostics": [{"severity": "warning", "file": "nb.ipynb", "cell": 7, "line": 4}]})
    assert check_refused({"refusal": {"file": "input/a/run.sh", "line": [3, 9], "why": "w"}},
                         {"diagnostics": [{"severity": "error", "file": "/tmp/x/input/a/run.sh", "line": 9}]}) == []
    assert check_diff({"facts": {"optimizer.lr": {"verdict": "differs", "left": 1e-4, "right": 1e-5, "from": "x"}}},
                      {"pairs": [{"rows": [{"fact": "optimizer.lr", "verdict": "differs",
                                            "left": {"value": "0.0001"}, "right": {"value": "1e-05"}}]}]}) == []
    assert check_diff({"facts": {"optimizer.lr": {"verdict": "same", "from": "x"}}},
                      {"pairs": [{"rows": [{"fact": "optimizer.lr", "verdict": "differs"}]}]})
