"""Error messages as a user sees them: file:line:col, the key path, expected vs found, a hint; every error of a
file in one run; did-you-mean from the NeMo 2 signatures, worded as NeMo-Run words it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"


def test_all_errors_of_a_file_together_with_locations_and_hints(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 10\npeft:\n  dim: 8\n  alpah: 16\noptim:\n  config:\n    lr: fast\n")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(bad), "--recipe", str(SEED / "recipe.py"),
                        "--factory", "migration_recipe()", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr
    assert "bad.yaml:2:3: error[NM201] [trainer.max_stepz]: No parameter named 'max_stepz' exists for Trainer" in err
    assert "did you mean 'max_steps'" in err
    assert "bad.yaml:5:3: error[NM201] [peft.alpah]" in err and "did you mean 'alpha'" in err
    assert "bad.yaml:8:5: error[NM202] [optim.config.lr]: 'optim.config.lr' expects float, found 'fast'" in err
    assert "3 errors; nothing written" in err
    assert not (tmp_path / "out").exists()


def test_yaml_syntax_error_points_at_the_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1, 2\npeft:\n  dim: 8\n")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(bad), "--recipe", str(SEED / "recipe.py"),
                        "--factory", "migration_recipe()"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.yaml:3:" in r.stderr and "YAML syntax error" in r.stderr


def test_recipe_py_problems_name_the_line(tmp_path):
    (tmp_path / "recipe.py").write_text(
        "import nemo_run as run\nfrom nemo.collections import llm\n\n\ndef job():\n"
        "    recipe = llm.llama3_8b.finetune_recipe(peft_scheme='lora', num_gpus_per_node=2)\n"
        "    recipe.trainer.max_stepz = 5\n"
        "    recipe.peft.dimm = 4\n    return recipe\n\n\nrun.cli.main(llm.finetune, default_factory=job)\n")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(tmp_path / "recipe.py")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "recipe.py:7:" in r.stderr and "max_stepz" in r.stderr and "did you mean 'max_steps'" in r.stderr
    assert "recipe.py:8:" in r.stderr and "dimm" in r.stderr and "did you mean 'dim'" in r.stderr
