"""The command line as a user runs it: exit codes, --check, --force, --json, safe writes, determinism, run.sh."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"


def cli(*args, env=None, cwd=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd)


def test_convert_dir_writes_the_four_files(tmp_path):
    out = tmp_path / "out"
    r = cli("convert", SEED, "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config-fp16.yaml", "config-fp8.yaml", "migration-report.md", "run.sh"]
    assert os.stat(out / "run.sh").st_mode & stat.S_IXUSR
    assert (out / "config-fp8.yaml").read_text() == (ROOT / "golden/seed/expected/config-fp8.yaml").read_text()


def test_convert_single_yaml_with_recipe(tmp_path):
    out = tmp_path / "out"
    r = cli("convert", SEED / "config-fp16.yaml", "--recipe", SEED / "recipe.py", "--factory", "migration_recipe()",
            "--nproc-per-node", "8", "--set", "trainer.max_steps=100", "-o", out)
    assert r.returncode == 0, r.stderr
    text = (out / "config-fp16.yaml").read_text()
    assert "max_steps: 100" in text and "--set trainer.max_steps=100" in text
    assert "nproc=8" in (out / "run.sh").read_text()


def test_check_exit_codes_and_never_writes(tmp_path):
    out = tmp_path / "out"
    assert cli("convert", SEED, "-o", out).returncode == 0
    assert cli("convert", SEED, "-o", out, "--check").returncode == 0
    (out / "config-fp8.yaml").write_text("edited\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = cli("convert", SEED, "-o", out, "--check")
    assert r.returncode == 2 and "config-fp8.yaml" in r.stderr and "+recipe:" in r.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = cli("convert", SEED, "-o", tmp_path / "nothing-here", "--check")
    assert r.returncode == 2 and not (tmp_path / "nothing-here").exists()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.sh").write_text("my own script\n")
    r = cli("convert", SEED, "-o", out)
    assert r.returncode == 1 and "--force" in r.stderr
    assert (out / "run.sh").read_text() == "my own script\n"
    assert not (out / "config-fp8.yaml").exists()  # a failed conversion leaves OUT as it was
    assert cli("convert", SEED, "-o", out, "--force").returncode == 0
    assert (out / "run.sh").read_text().startswith("#!/usr/bin/env bash")


def test_never_overwrites_the_nemo_inputs(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(SEED, job)
    before = (job / "config-fp8.yaml").read_text()
    r = cli("convert", job, "-o", job, "--force")
    assert r.returncode == 1 and "NM010" in r.stderr
    assert (job / "config-fp8.yaml").read_text() == before


def test_errors_exit_1_with_location_and_no_traceback(tmp_path):
    r = cli("convert", SEED, "-o", tmp_path / "o", "--set", "trainer.strategy.tensor_model_parallel_size=8")
    assert r.returncode == 1
    assert "config-fp16.yaml" not in r.stderr or "error[NM213]" in r.stderr
    assert "Traceback" not in r.stderr and "error[NM213]" in r.stderr
    r = cli("convert", tmp_path / "missing")
    assert r.returncode == 1 and "NM001" in r.stderr and "Traceback" not in r.stderr


def test_json_report(tmp_path):
    r = cli("convert", SEED, "--json")
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["status"] == "plan" and [v["name"] for v in data["variants"]] == ["fp16", "fp8"]
    fp8 = data["variants"][1]
    assert sum(fp8["counts"].values()) == len(fp8["knobs"])
    assert fp8["targets"]["distributed.tp_size"]["value"] == 4
    r = cli("convert", SEED, "--json", "--set", "peft.dimm=3")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "error"


@pytest.mark.parametrize("seed", ["0", "1", "12345"])
def test_deterministic_across_hash_seeds(tmp_path, seed):
    out = tmp_path / f"o{seed}"
    assert cli("convert", SEED, "-o", out, env={"PYTHONHASHSEED": seed}).returncode == 0
    for p in out.iterdir():
        assert p.read_bytes() == (ROOT / "golden/seed/expected" / p.name).read_bytes(), p.name


def test_convert_and_diff_do_not_import_torch():
    code = ("import sys; from nemo_migrate.cli import app; from typer.testing import CliRunner;"
            "r = CliRunner().invoke(app, ['convert', %r, '--json']); assert r.exit_code == 0, r.output;"
            "r = CliRunner().invoke(app, ['diff', %r, %r, '--json']); assert r.exit_code == 0, r.output;"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'torchao') if m in sys.modules]; assert not bad, bad"
            % (str(SEED), str(SEED), str(ROOT / "golden/seed/expected")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_explain_and_rules():
    r = cli("explain", "PEFT006")
    assert r.returncode == 0 and "dropout_position" in r.stdout and "fact" in r.stdout
    assert cli("explain", "PEFT06").returncode == 1
    r = cli("rules")
    assert r.returncode == 0 and "LRS001" in r.stdout


FAKE_TORCHRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_OUT"
"""


def _fake_bin(tmp_path):
    b = tmp_path / "bin"
    b.mkdir()
    (b / "torchrun").write_text(FAKE_TORCHRUN)
    (b / "torchrun").chmod(0o755)
    return b


def test_emitted_run_sh_runs_torchrun_with_the_config(tmp_path):
    out = tmp_path / "out"
    assert cli("convert", SEED, "-o", out).returncode == 0
    b = _fake_bin(tmp_path)
    args_file = tmp_path / "args"
    env = {**os.environ, "PATH": f"{b}:{os.environ['PATH']}", "FAKE_OUT": str(args_file)}
    r = subprocess.run(["bash", str(out / "run.sh"), "fp8", "--step_scheduler.max_steps", "5"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = args_file.read_text().splitlines()
    assert "--nproc-per-node=4" in args and "nemo_automodel.recipes.llm.train_ft" in args
    assert args[args.index("-c") + 1] == str((out / "config-fp8.yaml").resolve())
    assert args[-2:] == ["--step_scheduler.max_steps", "5"]
    r = subprocess.run(["bash", str(out / "run.sh"), "bf16"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_hostile_values_stay_inert(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(SEED, job)
    evil = '$(touch pwned); rm -rf ~ `touch pwned2`'
    (job / "run.sh").write_text((job / "run.sh").read_text().replace("set -ex", f"set -ex\nexport EVIL='{evil}'"))
    out = tmp_path / "out"
    hm = tmp_path / "m$(touch pwned4)"  # a real HF-shaped directory whose name is hostile
    hm.mkdir()
    (hm / "config.json").write_text("{}")
    r = cli("convert", job, "-o", out, "--set", f"log.name='x; touch pwned3'", "--model", str(hm))
    assert r.returncode == 0, r.stderr
    b = _fake_bin(tmp_path)
    env = {**os.environ, "PATH": f"{b}:{os.environ['PATH']}", "FAKE_OUT": str(tmp_path / "args")}
    r = subprocess.run(["bash", str(out / "run.sh"), "fp8"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("pwned", "pwned2", "pwned3", "pwned4"):
        assert not (tmp_path / name).exists() and not (out / name).exists()
    assert "export EVIL=" in (out / "run.sh").read_text()
