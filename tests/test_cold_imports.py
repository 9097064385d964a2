"""What a cold `nemo-migrate convert` loads (issue 18): only what the conversion uses.

The CLI runs in a fresh process, through `nemo_migrate.cli.main` as the console script does; a probe writes the
process's sys.modules (and the garbage collector's state) when main() exits.  No timing here: the modules are what
the cold-start time (bench/convert_speed.py) is made of, so these tests guard the gains.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"

PROBE = """
import gc, json, sys
out = sys.argv.pop(1)
sys.argv[0] = "nemo-migrate"
from nemo_migrate import cli
if sys.argv[1:2] == ["--full-app"]:  # the whole app, as before the single-command dispatch
    del sys.argv[1]
    cli._app_for = lambda argv: cli.app
try:
    cli.main()
finally:
    with open(out, "w") as fh:
        json.dump({"modules": sorted(sys.modules), "gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}, fh)
"""

# never on convert's path: the terminal UI (stdout is a pipe here), the runtime and its stack, other commands' modules,
# NeMo 1.0's Hydra, a second YAML library
NEVER = ("rich", "torch", "transformers", "huggingface_hub", "safetensors", "numpy", "peft", "nemo", "nemo_run", "hydra",
         "omegaconf", "yaml", "nemo_migrate.runtime", "nemo_migrate.verify", "nemo_migrate.diff", "nemo_migrate.semantics",
         "nemo_migrate.data_convert", "nemo_migrate.golden", "nemo_migrate.codes")


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    probe = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k != "NEMO_MIGRATE_DEBUG"}
    r = subprocess.run([sys.executable, "-c", PROBE, str(probe), *args], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "NO_COLOR": "1", "NEMO_MIGRATE_CACHE": str(tmp_path / "cache")})
    return r, json.loads(probe.read_text())


def loaded(mods: list[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in mods)


def test_convert_of_the_seed_loads_only_what_it_uses(tmp_path):
    r, seen = run(tmp_path, "convert", str(SEED), "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "config-fp8.yaml").read_text() == (SEED.parent / "expected" / "config-fp8.yaml").read_text()
    mods = seen["modules"]
    assert "nemo_migrate.convert" in mods and "tree_sitter" in mods and "jinja2" in mods  # run.sh parsed, templates rendered
    assert [m for m in NEVER if loaded(mods, m)] == []


def test_json_report_and_plan_load_no_more(tmp_path):
    for args in (["--json"], []):  # no -o: nothing written (no lock, no staging)
        r, seen = run(tmp_path, "convert", str(SEED), *args)
        assert r.returncode == 0, r.stderr
        assert [m for m in NEVER + ("filelock",) if loaded(seen["modules"], m)] == []


def test_recipe_folder_without_a_launcher_loads_no_shell_parser(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    for name in ("recipe.py", "config-fp16.yaml", "config-fp8.yaml"):
        shutil.copy(SEED / name, job / name)
    r, seen = run(tmp_path, "convert", str(job), "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "config-fp16.yaml").is_file()
    assert not loaded(seen["modules"], "tree_sitter") and not loaded(seen["modules"], "tree_sitter_bash")


def test_collector_is_paused_only_for_the_imports(tmp_path):
    """convert imports with the collector paused and freezes what the imports made; the conversion runs with it on."""
    r, seen = run(tmp_path, "convert", str(SEED), "-q")
    assert r.returncode == 0, r.stderr
    assert seen["gc_enabled"] is True
    assert seen["frozen"] > 10_000  # typer, pydantic and the compiler's modules, moved out of the collector's reach
    r, seen = run(tmp_path, "rules", "PEFT006")  # other commands: the collector as Python sets it
    assert r.returncode == 0, r.stderr
    assert seen["gc_enabled"] is True and seen["frozen"] == 0


def test_single_command_dispatch_is_the_same_command(tmp_path):
    """main() builds only the command it runs; help, usage errors and exit codes are those of the whole app."""
    for args in (["convert", "--help"], ["convert"], ["convert", "--bogus"], ["convert", str(tmp_path / "missing"), "-q"],
                 ["convert", str(SEED), "--launcher", "nope"], ["explain", "NM213"], ["rules", "--status", "nope"],
                 ["convrt"], ["--help"]):
        lean, _ = run(tmp_path, *args)
        full, _ = run(tmp_path, "--full-app", *args)
        assert (lean.returncode, lean.stdout, lean.stderr) == (full.returncode, full.stdout, full.stderr), args
    assert "Usage: nemo-migrate convert [OPTIONS] SOURCE" in run(tmp_path, "convert", "--help")[0].stdout
