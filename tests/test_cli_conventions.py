"""CLI conventions (issue 17 items 6 and 8): --version, python -m, completion, argument help, convert-data to stdout,
stale files in OUT, the pre-commit hook, the CI workflow, the constraints file, the example data and README figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml
from typer.testing import CliRunner

from nemo_migrate.cli import app
from nemo_migrate.emit import stale_outputs

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden/seed/input"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nemo_migrate", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "NO_COLOR": "1"})


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_version_names_the_package_and_the_targets():
    r = cli("--version")  # also proves `python -m nemo_migrate`
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"nemo-migrate {version('nemo-migrate')}\n")
    assert "Automodel 0.7 (0.7.0)" in r.stdout and "NeMo 2 2.0-2.7" in r.stdout and "NeMo-Run 0.11.1" in r.stdout
    assert invoke("-V").stdout == r.stdout


def test_python_m_runs_commands():
    r = cli("explain", "NM213")
    assert r.returncode == 0 and r.stdout.startswith("NM213 (error)")
    r = cli("explain", "NOPE123")
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_help_shows_argument_help_once_and_completion():
    r = invoke("convert", "--help")
    assert r.exit_code == 0
    assert "A NeMo job: a folder" in r.stdout  # the Argument's help string (typer 0.24 + click 8.5 dropped it)
    assert "Positional arguments" not in r.stdout and r.stdout.count("SOURCE ") == 1
    assert "Where to write the OpenAI-messages JSONL" in invoke("convert-data", "--help").stdout
    top = invoke("--help").stdout
    assert "--install-completion" in top and "--version" in top


def test_completion_script_for_bash():
    env = {**os.environ, "_NEMO_MIGRATE_COMPLETE": "complete_bash", "COMP_WORDS": "nemo-migrate con", "COMP_CWORD": "1"}
    r = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'nemo-migrate'; from nemo_migrate.cli import main; main()"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert {"convert", "convert-data", "convert-checkpoint"} <= set(r.stdout.split())


CHAT = {"system": "s", "mask": "User", "conversations": [{"from": "User", "value": "hi"}, {"from": "Assistant", "value": "yo"}]}


def test_convert_data_dash_writes_stdout(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n")
    r = cli("convert-data", src, "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["messages"][1] == {"role": "user", "content": "hi"}
    assert not (tmp_path / "-").exists()
    assert "wrote 2 rows to stdout" in r.stderr
    # all or nothing: a bad row leaves stdout empty
    src.write_text(json.dumps(CHAT) + "\nnot json\n")
    r = cli("convert-data", src, "-", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "" and "NM805" in r.stderr
    # ./- is still a file named -
    src.write_text(json.dumps(CHAT) + "\n")
    r = cli("convert-data", src, "./-", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "-").is_file()


def test_check_notices_a_stale_sbatch_and_convert_never_deletes_it(tmp_path):
    out = tmp_path / "out"
    r = invoke("convert", SEED, "-o", out, "--launcher", "slurm", "-q")
    assert r.exit_code == 0, r.output
    assert (out / "sbatch.sh").is_file()
    (out / "config-mine.yaml").write_text("# my own notes, not generated\n")
    (out / "notes.md").write_text("mine\n")
    assert stale_outputs(out, {"config-fp16.yaml", "config-fp8.yaml", "run.sh", "migration-report.md"}) == ["sbatch.sh"]
    r = invoke("convert", SEED, "-o", out, "--check", "-q")
    assert r.exit_code == 2, r.output
    assert "sbatch.sh" in r.stderr and "stale" in r.stderr and "config-mine.yaml" not in r.output
    r = invoke("convert", SEED, "-o", out, "--check", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["stale"] == ["sbatch.sh"]
    r = invoke("convert", SEED, "-o", out, "-q", "--force")  # the report differs too (it named `sbatch sbatch.sh`)
    assert r.exit_code == 0, r.output
    assert "sbatch.sh" in r.stderr and "rm " in r.stderr
    assert (out / "sbatch.sh").is_file() and (out / "config-mine.yaml").is_file()
    (out / "sbatch.sh").unlink()
    r = invoke("convert", SEED, "-o", out, "--check", "-q")
    assert r.exit_code == 0, r.output


def test_pre_commit_hook_runs_convert_check():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = [h for h in hooks if h["id"] == "nemo-migrate-check"]
    assert hook["entry"].split()[:3] == ["nemo-migrate", "convert", "--check"]
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    assert re.search(hook["files"], "nemo2/config-fp16.yaml") and re.search(hook["files"], "nemo2/recipe.py")
    assert "nemo-migrate-check" in (ROOT / "README.md").read_text()


def test_golden_workflow_runs_the_golden_gate():
    wf = yaml.safe_load((ROOT / ".github/workflows/golden.yml").read_text())
    runs = [s.get("run", "") for s in wf["jobs"]["golden"]["steps"]]
    assert any("python -m nemo_migrate.golden check" in x for x in runs)
    assert any("-c requirements/constraints.txt" in x for x in runs)
    assert (ROOT / "docs/ci.md").is_file()


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"{path.name}: {line!r} is not name==version"
            out[re.sub(r"[-_.]+", "-", name).lower()] = ver
    return out


def test_constraints_pin_what_was_tested():
    c = _pins(ROOT / "requirements/constraints.txt")
    assert c["torch"] == "2.13.0" and c["transformers"] == "5.18.0"
    for name, ver in _pins(ROOT / "requirements/runtime.txt").items():  # the runtime's exact pins agree
        assert c.get(name) == ver, name
    for dep in ("typer", "click", "pydantic", "rich", "jinja2", "ruamel-yaml", "filelock", "tree-sitter", "tree-sitter-bash"):
        assert dep in c, dep
    assert c["typer"].startswith("0.24.")  # pyproject: typer>=0.24,<0.25
    readme = (ROOT / "README.md").read_text()
    assert "-c requirements/constraints.txt -e '.[runtime]' --extra-index-url https://download.pytorch.org/whl/cpu" in readme


def test_example_data_is_written_by_the_script(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples/make_data.py"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("training.jsonl", "validation.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "examples/data" / name).read_bytes(), name
    rows = [json.loads(x) for x in (ROOT / "examples/data/training.jsonl").read_text().splitlines()]
    assert len(rows) >= 200 and all(set(x) == {"prompt", "completion"} for x in rows)


def test_make_example_ends_with_the_next_command():
    text = (ROOT / "Makefile").read_text()
    body = text.split("\nexample:", 1)[1].split("\n\n", 1)[0].splitlines()
    assert body[-1].strip().startswith("@echo") and "nemo-migrate" in body[-1]


def test_readme_diff_figures_match_the_golden_output():
    summary = (ROOT / "golden/diff-guide/expected/diff.txt").read_text()
    counts = dict(re.findall(r"^(config-\w+)\.yaml vs \S+: .*?, (\d+) differ", summary, re.M))
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"reports (\d+) differences for `config-fp16\.yaml` and (\d+) for `config-fp8\.yaml`", readme)
    assert m, "the README states the guide pair's difference counts"
    assert (m.group(1), m.group(2)) == (counts["config-fp16"], counts["config-fp8"])
