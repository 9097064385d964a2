"""`nemo-migrate run` end to end on a golden config, as a user runs it from the shell (CPU, proxy model)."""

import json
import os
import subprocess
import sys

from rt_helpers import ROOT

GOLDEN = ROOT / "golden" / "seed" / "expected" / "config-fp16.yaml"


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_golden_config_runs_end_to_end(data_dir, tmp_path):
    out = tmp_path / "run"
    r = _cli(GOLDEN, "--proxy-model", "tiny", "--max-steps", "2", "--out", out, "--merge",
             "--set", f"dataset.path_or_dataset_id={data_dir / 'train.jsonl'}",
             "--set", f"validation_dataset.path_or_dataset_id={data_dir / 'val.jsonl'}",
             "--set", "distributed.tp_size=1", "--set", f"checkpoint.checkpoint_dir={tmp_path / 'ckpt'}",
             "--set", "step_scheduler.val_every_steps=2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "weights are RANDOM" in r.stdout and "trained a byte-level BPE tokenizer locally" in r.stdout
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["type"] == "train"]
    assert [x["step"] for x in train] == [0, 1] and all(x["num_label_tokens"] > 0 for x in train)
    assert [x["step"] for x in lines if x["type"] == "val"] == [1]
    assert (out / "loss.png").stat().st_size > 1000
    ckpt = tmp_path / "ckpt" / "LATEST" / "model"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "config.json").is_file()
    assert "Traceback" not in r.stderr


def test_golden_config_as_is_fails_clearly(tmp_path):
    r = _cli(GOLDEN, "--proxy-model", "tiny", cwd=tmp_path)
    assert r.returncode == 1
    assert "distributed.tp_size" in r.stderr and "world size 1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_runtime_never_imports_migrate():
    bad = [p for p in (ROOT / "runtime").rglob("*.py")
           if any(line.lstrip().startswith(("import migrate", "from migrate")) for line in p.read_text().splitlines())]
    assert not bad
    code = ("import sys; import nemo_migrate.runtime.api, nemo_migrate.runtime.spec, nemo_migrate.runtime.config; "
            "assert 'migrate' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))
                          ).returncode == 0
