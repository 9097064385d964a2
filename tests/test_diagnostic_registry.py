"""Every diagnostic code is registered with its explanation (mappings/diagnostics.yaml), and `nemo-migrate explain`
works for every code and every rule.  The scan reads the source: a code literal ("NM213"), or an f-string
f"{PREFIX}101" whose PREFIX the same file binds to "NM"/"AM"."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nemo_migrate import codes, rules
from nemo_migrate.cli import app

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("migrate", "runtime", "automodel")
CODE = re.compile(r"^(NM|AM)\d{3}\Z")


def _prefixes(tree: ast.AST) -> dict[str, str]:
    """Names a file binds to a code prefix: `FIND = "AM"`, or a parameter `code_prefix: str = "NM"`."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant) and node.value.value in ("NM", "AM"):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value.value
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            for a, d in zip(args[len(args) - len(node.defaults):], node.defaults):
                if isinstance(d, ast.Constant) and d.value in ("NM", "AM"):
                    out[a.arg] = d.value
            for a, d in zip(node.kwonlyargs, node.kw_defaults):
                if isinstance(d, ast.Constant) and d.value in ("NM", "AM"):
                    out[a.arg] = d.value
    return out


def _code_of(node: ast.AST, prefixes: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.match(node.value):
        return node.value
    if isinstance(node, ast.JoinedStr) and len(node.values) == 2:
        head, tail = node.values
        if isinstance(head, ast.FormattedValue) and isinstance(head.value, ast.Name) and head.value.id in prefixes \
                and isinstance(tail, ast.Constant) and re.fullmatch(r"\d{3}", str(tail.value)):
            return prefixes[head.value.id] + tail.value
    return None


def scan() -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """(code -> where it is used, code -> the severities of the direct `x.error/warning/note(code, ...)` calls)."""
    used: dict[str, list[str]] = {}
    severity: dict[str, set[str]] = {}
    for d in SCANNED:
        for f in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            prefixes = _prefixes(tree)
            for node in ast.walk(tree):
                code = _code_of(node, prefixes)
                if code:
                    used.setdefault(code, []).append(f"{f.relative_to(ROOT)}:{node.lineno}")
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("error", "warning", "note") \
                        and node.args and (code := _code_of(node.args[0], prefixes)):
                    severity.setdefault(code, set()).add(node.func.attr)
    return used, severity


USED, SEVERITY = scan()
REGISTRY = codes.registry()


def test_the_scan_sees_literal_and_prefixed_codes():
    assert "NM213" in USED and "NM600" in USED  # literals
    assert "AM101" in USED and "NM203" in USED  # f"{FIND}101" (sources/automodel_yaml.py), f"{code_prefix}203" (schema.py)
    assert _code_of(ast.parse('f"{P}204"').body[0].value, {"P": "NM"}) == "NM204"
    assert _code_of(ast.parse('"NM12"').body[0].value, {}) is None


def test_every_code_used_is_registered():
    missing = {c: USED[c][:2] for c in sorted(set(USED) - set(REGISTRY))}
    assert not missing, f"add these codes to mappings/diagnostics.yaml: {missing}"


def test_every_registered_code_is_used():
    unused = sorted(set(REGISTRY) - set(USED))
    assert not unused, f"registered in mappings/diagnostics.yaml but reported nowhere: {unused}"


def test_registered_severity_covers_how_each_code_is_reported():
    wrong = {c: (REGISTRY[c].severity, sorted(s)) for c, s in SEVERITY.items()
             if c in REGISTRY and not s <= set(REGISTRY[c].severity.split(" or "))}
    assert not wrong, wrong


def test_entries_are_explained_and_grouped():
    for code, entry in REGISTRY.items():
        assert entry.title and not entry.title.endswith("."), code
        assert len(entry.explanation) >= 20, code
        assert codes.group(code), f"{code}: no group {code[:3]} in mappings/diagnostics.yaml"


def test_a_malformed_entry_is_refused():
    with pytest.raises(ValueError, match="severity"):
        codes.Code.model_validate({"severity": "fatal", "title": "t", "explanation": "x"})
    with pytest.raises(ValueError, match="expalnation|Extra"):
        codes.Code.model_validate({"severity": "error", "title": "t", "expalnation": "x"})


runner = CliRunner()


@pytest.mark.parametrize("code", sorted(REGISTRY))
def test_explain_every_code(code):
    r = runner.invoke(app, ["explain", code.lower()])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"{code} ({REGISTRY[code].severity}): {REGISTRY[code].title}")


def test_explain_nm213_the_example_in_its_own_help():
    assert "NM213" in runner.invoke(app, ["explain", "--help"]).output
    r = runner.invoke(app, ["explain", "NM213"])
    assert r.exit_code == 0 and "divisible" in r.output


@pytest.mark.parametrize("rule", [r.id for r in rules.table()])
def test_explain_every_rule(rule):
    r = runner.invoke(app, ["explain", rule])
    assert r.exit_code == 0 and r.output.startswith(f"{rule}: "), r.output


def test_explain_an_unknown_code_suggests_close_ones():
    r = runner.invoke(app, ["explain", "NM2134"])
    assert r.exit_code == 1 and "NM213" in r.output
