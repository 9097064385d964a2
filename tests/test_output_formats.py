"""Diagnostics other tools consume: --output-format text|json|github|sarif and --statistics on convert and diff; paths
relative to the working directory on the terminal (absolute outside it) while the emitted files stay byte-identical."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nemo_migrate import codes, formats
from nemo_migrate.cli import app
from nemo_migrate.diagnostics import Diagnostic

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
GUIDE = ROOT / "golden" / "diff-guide" / "input"
SCHEMA = Path(__file__).resolve().parent / "data" / "sarif-schema-2.1.0.json"


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


@pytest.fixture
def typo(tmp_path, monkeypatch):
    """The seed job with one typo in its fp16 config, under tmp_path/jobs/seed; cwd = tmp_path."""
    d = tmp_path / "jobs" / "seed"
    shutil.copytree(SEED, d)
    (d / "config-fp16.yaml").write_text((d / "config-fp16.yaml").read_text().replace("  max_steps: 30", "  max_stpes: 30"))
    monkeypatch.chdir(tmp_path)
    return d


# ---------------------------------------------------------------------------------------------- text

def test_text_paths_are_relative_to_the_working_directory(typo, monkeypatch):
    r = cli("convert", "jobs/seed")
    assert r.exit_code == 1
    assert r.stderr.startswith("jobs/seed/config-fp16.yaml:13:3: error[NM201] [trainer.max_stpes]: "), r.stderr
    assert r.stderr.count("did you mean") == 1  # once, in the hint
    monkeypatch.chdir(typo)  # inside the job folder: the bare name
    assert cli("convert", ".").stderr.startswith("config-fp16.yaml:13:3: error[NM201]")
    monkeypatch.chdir(ROOT / "golden")  # outside: absolute
    assert cli("convert", typo).stderr.startswith(f"{typo}/config-fp16.yaml:13:3: error[NM201]")


def test_errors_are_not_buried_under_other_variants_warnings(typo):
    r = cli("convert", "jobs/seed")
    assert "config-fp8.yaml" not in r.stderr  # the fp8 warnings have nothing to do with the fp16 typo
    assert "warning[NM117]" in r.stderr  # a warning of the file with the error stays
    assert r.stderr.index("error[") < r.stderr.index("warning[")
    assert re.search(r"1 error; nothing written \(6 warnings not shown, in files without errors: --output-format json", r.stderr)
    q = cli("convert", "jobs/seed", "-q")
    assert q.exit_code == 1 and "warning[" not in q.stderr
    assert q.stderr.splitlines()[-1] == ("nemo-migrate: 1 error; nothing written (7 warnings not shown, -q: --output-format json "
                                         "lists every diagnostic)")
    full = json.loads(cli("convert", "jobs/seed", "--output-format", "json").stdout)["diagnostics"]
    assert sum(d["severity"] == "warning" for d in full) == 7  # nothing is lost: json lists them all


def test_emitted_files_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    outs = []
    for i, cwd in enumerate((ROOT, tmp_path)):
        monkeypatch.chdir(cwd)
        out = tmp_path / f"out{i}"
        assert cli("convert", SEED, "-o", out).exit_code == 0
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]
    assert outs[0]["config-fp8.yaml"] == (ROOT / "golden/seed/expected/config-fp8.yaml").read_bytes()


# ---------------------------------------------------------------------------------------------- json

def test_json_alias_and_paths(typo):
    a, b = cli("convert", "jobs/seed", "--json"), cli("convert", "jobs/seed", "--output-format", "json")
    assert a.exit_code == b.exit_code == 1 and a.stdout == b.stdout
    d = json.loads(a.stdout)["diagnostics"][0]
    assert (d["file"], d["path"], d["line"], d["code"]) == ("config-fp16.yaml", "jobs/seed/config-fp16.yaml", 13, "NM201")
    ok = json.loads(cli("convert", SEED, "--output-format", "json", "--statistics").stdout)
    assert ok["status"] == "plan" and {s["code"]: s["count"] for s in ok["statistics"]}["NM410"] == 3


def test_incompatible_options_are_refused():
    assert cli("convert", SEED, "--json", "--output-format", "sarif").exit_code == 1
    assert cli("convert", SEED, "--output-format", "xml").exit_code == 1
    r = cli("diff", GUIDE / "nemo2", GUIDE / "automodel", "--output-format", "github", "--statistics")
    assert r.exit_code == 1 and "--statistics" in r.stderr


# ---------------------------------------------------------------------------------------------- github

def test_github_escaping():
    d = Diagnostic("warning", "NM201", "100% sure, a: b", file="a,b:c.yaml", line=3, col=7, key="x.y", hint="h: 1, 2")
    (line,) = formats.github([d], lambda d: "dir/" + d.file)
    assert line == "::warning file=dir/a%2Cb%3Ac.yaml,line=3,col=7,title=NM201::[x.y] 100%25 sure, a: b%0Ahint: h: 1, 2"
    assert formats._gh_data("a%\r\nb") == "a%25%0D%0Ab" and formats._gh_prop("a,b:c%") == "a%2Cb%3Ac%25"
    (note,) = formats.github([Diagnostic("note", "NM004", "using x")], lambda d: None)
    assert note == "::notice title=NM004::using x"


def test_github_annotations_for_convert_and_diff(typo, monkeypatch):
    r = cli("convert", "jobs/seed", "--output-format", "github")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("::error file=jobs/seed/config-fp16.yaml,line=13,col=3,title=NM201::[trainer.max_stpes] No parameter")
    assert all(x.startswith(("::error ", "::warning ", "::notice ")) for x in lines)
    assert len(lines) == 8  # every diagnostic: a CI annotation per problem
    monkeypatch.chdir(ROOT)
    r = cli("diff", "golden/diff-guide/input/nemo2", "golden/diff-guide/input/automodel", "--output-format", "github")
    assert r.exit_code == 2
    assert ("::error file=golden/diff-guide/input/automodel/config-fp16.yaml,line=33,col=3,title=AM210::"
            "[peft.match_all_linear]") in r.stdout
    lr = [x for x in r.stdout.splitlines() if "[optimizer.lr]" in x]
    assert len(lr) == 2 and lr[0].startswith("::warning file=golden/diff-guide/input/automodel/config-fp16.yaml,line=86,title=NM702::")
    assert "nemo2 golden/diff-guide/input/nemo2/config-fp16.yaml:38" in lr[0]


# ---------------------------------------------------------------------------------------------- sarif

def _check_sarif(doc: dict) -> dict:
    assert doc["version"] == "2.1.0" and len(doc["runs"]) == 1
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert run["tool"]["driver"]["name"] == "nemo-migrate"
    assert [r["id"] for r in rules] == sorted({r["ruleId"] for r in run["results"]})
    for rule in rules:
        c = codes.registry()[rule["id"]]
        assert rule["shortDescription"]["text"] == c.title and c.explanation in rule["help"]["text"]
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"] and res["level"] in ("error", "warning", "note")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))  # the official schema, vendored (tests/data/)
    return run


def test_sarif_convert(typo):
    r = cli("convert", "jobs/seed", "--output-format", "sarif")
    assert r.exit_code == 1
    run = _check_sarif(json.loads(r.stdout))
    first = run["results"][0]
    assert first["ruleId"] == "NM201" and first["level"] == "error"
    assert first["locations"][0]["physicalLocation"] == {"artifactLocation": {"uri": "jobs/seed/config-fp16.yaml"},
                                                         "region": {"startLine": 13, "startColumn": 3}}
    assert "did you mean 'max_steps'" in first["message"]["text"]
    assert len(run["results"]) == 8


def test_sarif_diff_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = cli("diff", "golden/diff-guide/input/nemo2", "golden/diff-guide/input/automodel", "--output-format", "sarif")
    assert r.exit_code == 2
    run = _check_sarif(json.loads(r.stdout))
    assert {"AM210", "NM702"} <= {x["ruleId"] for x in run["results"]}
    # a file outside the working directory is a file: URI; special characters are percent-encoded
    d = tmp_path / "my job"
    shutil.copytree(SEED, d)
    (d / "config-fp16.yaml").write_text((d / "config-fp16.yaml").read_text().replace("max_steps:", "max_stpes:"))
    run = _check_sarif(json.loads(cli("convert", d, "--output-format", "sarif").stdout))
    assert run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (d / "config-fp16.yaml").as_uri()
    assert "%20" in (d / "config-fp16.yaml").as_uri()


# ---------------------------------------------------------------------------------------------- --statistics

def test_statistics(typo, monkeypatch):
    r = cli("convert", "jobs/seed", "--statistics")
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[:2] == [f"    3  NM410  warning  {codes.registry()['NM410'].title}",
                         f"    2  NM117  warning  {codes.registry()['NM117'].title}"]
    assert "    1  NM201  error    " in r.stderr and "max_stpes" not in r.stderr
    assert lines[-1] == "nemo-migrate: 1 error; nothing written"
    monkeypatch.chdir(ROOT)
    r = cli("diff", GUIDE / "nemo2", GUIDE / "automodel", "--statistics")
    assert r.exit_code == 2
    assert "   55  NM702  warning  " in r.stdout and "    2  AM210  error    " in r.stdout


def test_paths_and_short_names(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "c.yaml").write_text("")
    p = formats.Paths(tmp_path / "job", cwd=tmp_path)
    assert p.path("c.yaml") == os.path.join("job", "c.yaml")
    assert p.path("llama31_70b shipped default") == "llama31_70b shipped default"  # no file: as it is
    assert formats.Paths(tmp_path / "job", cwd=tmp_path / "elsewhere").path("c.yaml") == str(tmp_path / "job" / "c.yaml")
    assert p.origin("c.yaml:3, recipe default x (y), c.yaml:5") == "job/c.yaml:3, recipe default x (y), job/c.yaml:5"
    assert formats.short_names(["a/n/c.yaml", "a/m/c.yaml", "a/n/r.py"]) == {"a/n/c.yaml": "n/c.yaml", "a/m/c.yaml": "m/c.yaml",
                                                                            "a/n/r.py": "r.py"}


def test_did_you_mean_is_printed_once():
    r = CliRunner().invoke(app, ["convrt"])
    assert r.exit_code != 0
    assert r.output.lower().count("did you mean") == 1 and "'convert'" in r.output
