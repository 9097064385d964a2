"""`nemo-migrate explain` for every code and rule a user can see, buckets that agree with `convert`, and facts a user
can read (public source URLs pinned to the releases, or files shipped in the package)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nemo_migrate import codes, knowledge, rules
from nemo_migrate.cli import _buckets, app

ROOT = Path(__file__).resolve().parent.parent
CODE_LITERAL = re.compile(r"""["'(]((?:NM|AM)\d{3})\b""")
URL = re.compile(r"https://github\.com/(NVIDIA|NVIDIA-NeMo|huggingface|Lightning-AI)/[\w.-]+/blob/[\w.-]+/[^\s)]+")
PINNED = {"NVIDIA/NeMo": {"v2.7.3", "v2.1.0", "v1.23.0"}, "NVIDIA-NeMo/Automodel": {"v0.7.0"}, "NVIDIA/NeMo-Run": {"v0.11.1"},
          "NVIDIA/NeMo-Aligner": {"v0.7.0"}, "huggingface/transformers": {"v5.18.0"}, "Lightning-AI/pytorch-lightning": {"2.5.0"}}


def explain(key: str):
    return CliRunner().invoke(app, ["explain", key])


@lru_cache(maxsize=None)
def codes_in_source() -> frozenset[str]:
    """Every NM/AM code the product's code can print (literal codes in migrate/, runtime/, automodel/)."""
    found = set()
    for folder in ("migrate", "runtime", "automodel"):
        for f in (ROOT / folder).rglob("*.py"):
            found.update(CODE_LITERAL.findall(f.read_text(encoding="utf-8")))
    return frozenset(found)


def test_every_code_the_product_prints_is_explained():
    printed = codes_in_source()
    assert len(printed) > 150  # the scan finds the codes (a broken regex would find none)
    missing = []
    for code in sorted(printed | set(codes.registry())):
        r = explain(code)
        if r.exit_code != 0 or not r.stdout.startswith(f"{code} (") or len(r.stdout.splitlines()) < 3:
            missing.append((code, r.exit_code, r.output[:120]))
    assert not missing


@pytest.mark.parametrize("code", ["NM213", "NM219", "NM502", "AM210", "nm213", " am210 "])
def test_codes_named_in_the_issue_explain(code):
    r = explain(code)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(code.strip().upper())


def test_every_rule_explains_with_every_bucket_it_can_give():
    for rule in rules.table():
        r = explain(rule.id.lower())
        assert r.exit_code == 0, (rule.id, r.output)
        out = r.stdout
        assert out.startswith(f"{rule.id}: "), out
        bucket_line = next(line for line in out.splitlines() if line.startswith("  bucket:"))
        for b in _buckets(rule):
            assert b in bucket_line, (rule.id, b, bucket_line)


def test_fp8001_buckets_include_what_convert_reports():
    # the seed job's fp8 variant: FP8 over LoRA on every linear -> FP8001 unsupported (the row's static bucket is exact)
    r = CliRunner().invoke(app, ["convert", str(ROOT / "golden/seed/input"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    seen: dict[str, set[str]] = {}
    for v in report["variants"]:
        for k in v["knobs"]:
            seen.setdefault(k["rule"], set()).add(k["status"])
    assert "unsupported" in seen["FP8001"] and rules.by_id()["FP8001"].status == "exact"
    for rid, statuses in seen.items():
        text = explain(rid).stdout
        bucket_line = next(line for line in text.splitlines() if line.startswith("  bucket:"))
        for s in statuses:
            assert s in bucket_line, (rid, s, bucket_line)


def test_unknown_code_fails_with_a_suggestion():
    r = explain("NM9999")
    assert r.exit_code == 1
    r = explain("PEFT0066")
    assert r.exit_code == 1 and "PEFT006" in r.output


def _fact_parts(fact: str) -> list[str]:
    return [p.strip() for p in fact.split("; ") if p.strip()]


def test_every_fact_is_readable_by_a_user():
    problems = []
    for rule in rules.table():
        if rule.id == "ROOT002":  # the catch-all row has no source to cite
            assert rule.fact == "-"
            continue
        fact = rule.fact
        if re.search(r"\[[ANPWM]\]|§|shared/|reference/", fact):
            problems.append((rule.id, "cites a file the package does not ship", fact))
        urls = [m.group(0) for m in URL.finditer(fact)]
        shipped = re.findall(r"\bmappings/[\w/.-]+\.\w+", fact)
        docs = re.findall(r"https://slurm\.schedmd\.com/\w+\.html", fact)  # Slurm's manual pages (sbatch(1)): not in git
        if not urls and not shipped and not docs:
            problems.append((rule.id, "no URL or shipped file", fact))
        for t in shipped:
            if not (knowledge.MAPPINGS / t.removeprefix("mappings/")).is_file():
                problems.append((rule.id, f"{t} is not in the package", fact))
        for u in urls:
            m = re.match(r"https://github\.com/([\w-]+/[\w.-]+)/blob/([\w.-]+)/", u)
            if m.group(2) not in PINNED.get(m.group(1), set()):
                problems.append((rule.id, f"{u}: not pinned to the release it describes", fact))
        for p in re.findall(r"https://github\.com/\S+", fact):
            if not URL.fullmatch(p.rstrip(").,;")):
                problems.append((rule.id, f"malformed URL {p}", fact))
    assert not problems, problems[:5]


def test_automodel_fact_anchors_point_into_the_070_source():
    """Every Automodel v0.7.0 URL names a file of the 0.7.0 wheel and a line inside it (where the wheel is installed)."""
    am = pytest.importorskip("nemo_automodel")
    base = Path(am.__file__).resolve().parent.parent
    checked = 0
    for rule in rules.table():
        for m in re.finditer(r"https://github\.com/NVIDIA-NeMo/Automodel/blob/v0\.7\.0/(nemo_automodel/[\w/.]+\.py)(?:#L(\d+))?", rule.fact):
            f = base / m.group(1)
            assert f.is_file(), (rule.id, m.group(0))
            if m.group(2):
                assert int(m.group(2)) <= len(f.read_text(encoding="utf-8").splitlines()), (rule.id, m.group(0))
            checked += 1
    assert checked > 50


def test_diagnostic_explanations_cite_no_unshipped_file():
    for code, c in codes.registry().items():
        assert not re.search(r"shared/reference|reference/[\w-]+\.md|§", c.explanation), code


def test_rules_filter_status_and_json():
    r = CliRunner().invoke(app, ["rules", "PEFT", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows and all("peft" in (x["id"] + " ".join(x["sources"] + x["targets"])).lower() for x in rows)
    assert {"PEFT001", "PEFT006"} <= {x["id"] for x in rows}
    r = CliRunner().invoke(app, ["rules", "--status", "unsupported", "--json"])
    ids = {x["id"] for x in json.loads(r.stdout)}
    assert "FP8001" in ids and "ROOT002" in ids and "PEFT006" not in ids  # FP8001: its transform may decide unsupported
    r = CliRunner().invoke(app, ["rules", "--status", "bogus"])
    assert r.exit_code == 1
    r = CliRunner().invoke(app, ["rules", "no-such-knob-anywhere"])
    assert r.exit_code == 1
    r = CliRunner().invoke(app, ["rules", "fp8"])
    assert r.exit_code == 0 and "FP8001" in r.stdout and "PEFT006" not in r.stdout
