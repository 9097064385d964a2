"""Everything of a run lives under its run directory (--out): checkpoints in OUT/checkpoints unless the user names a
directory; resuming is said on stderr with where from and at which step (CPU, tiny proxy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rt_helpers import ROOT, metrics, run

GOLDEN = ROOT / "golden" / "seed" / "expected" / "config-fp16.yaml"  # checkpoint_dir: /app/output/... (the NeMo job's)


def _cfg(cfg_factory, name="c.yaml", **upd):
    def m(c):
        c["step_scheduler"].update(ckpt_every_steps=1, global_batch_size=2)
        c["checkpoint"].update(upd)

    return cfg_factory(name, ckpt=True, mutate=m)


def _config_dir(cfg: Path) -> Path:
    return Path(yaml.safe_load(cfg.read_text())["checkpoint"]["checkpoint_dir"])


def test_two_runs_with_different_out_never_share_state(cfg_factory, tmp_path, capsys):
    cfg = _cfg(cfg_factory)
    assert run(cfg, tmp_path / "a", max_steps=2, checkpoint_dir=None) == 0
    assert (tmp_path / "a" / "checkpoints" / "LATEST").resolve().name == "epoch_0_step_1"
    capsys.readouterr()
    assert run(cfg, tmp_path / "b", max_steps=2, checkpoint_dir=None) == 0
    cap = capsys.readouterr()
    assert "resuming" not in cap.out + cap.err and "nothing to do" not in cap.out + cap.err
    assert [r["step"] for r in metrics(tmp_path / "b")] == [0, 1]  # trained from the start, not resumed from a/
    assert (tmp_path / "b" / "checkpoints" / "LATEST").resolve().name == "epoch_0_step_1"
    assert not _config_dir(cfg).exists()  # the config's absolute checkpoint_dir was never written
    assert "the config's checkpoint.checkpoint_dir" in cap.out and "--checkpoint-dir config" in cap.out


def test_relative_checkpoint_dir_does_not_escape_out(cfg_factory, tmp_path, monkeypatch):
    cfg = _cfg(cfg_factory, checkpoint_dir="rel/ckpt")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run(cfg, tmp_path / "out", max_steps=2, checkpoint_dir=None) == 0
    assert sorted(p.name for p in work.iterdir()) == []  # nothing beside the working directory
    root = tmp_path / "out" / "checkpoints"
    assert (root / "LATEST").resolve().name == "epoch_0_step_1" and (root / "training.jsonl").is_file()
    saved = yaml.safe_load((root / "epoch_0_step_1" / "config.yaml").read_text())
    assert saved["checkpoint"]["checkpoint_dir"] == str(root)  # what Automodel reads when it resumes this one


def test_resume_is_said_on_stderr_with_where_and_step(cfg_factory, tmp_path, capsys):
    cfg = _cfg(cfg_factory)
    out = tmp_path / "r"
    assert run(cfg, out, max_steps=2, checkpoint_dir=None) == 0
    capsys.readouterr()
    assert run(cfg, out, max_steps=3, checkpoint_dir=None) == 0
    cap = capsys.readouterr()
    assert f"==> resuming from {out / 'checkpoints' / 'epoch_0_step_1'} at step 2 of 3" in cap.err
    assert "resuming from" not in cap.out
    assert [r["step"] for r in metrics(out)] == [0, 1, 2]
    # a finished run: "nothing to do" names the checkpoint and how to start fresh
    assert run(cfg, out, max_steps=3, checkpoint_dir=None) == 0
    err = capsys.readouterr().err
    assert f"nothing to do: the checkpoint {out / 'checkpoints' / 'epoch_0_step_2'} is already at step 3 of 3" in err
    assert "--no-resume" in err and "--out" in err


def test_config_directory_only_when_asked(cfg_factory, tmp_path):
    cfg = _cfg(cfg_factory)
    assert run(cfg, tmp_path / "a", max_steps=2, checkpoint_dir="config") == 0
    assert (_config_dir(cfg) / "LATEST").is_symlink() and not (tmp_path / "a" / "checkpoints").exists()
    explicit = tmp_path / "mine"
    assert run(cfg, tmp_path / "b", max_steps=2, checkpoint_dir=None,
               sets=[f"checkpoint.checkpoint_dir={explicit}"]) == 0
    assert (explicit / "LATEST").is_symlink() and not (tmp_path / "b" / "checkpoints").exists()
    other = tmp_path / "given"
    assert run(cfg, tmp_path / "c", max_steps=2, checkpoint_dir=str(other)) == 0
    assert (other / "LATEST").is_symlink()


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), NO_COLOR="1", COLUMNS="300")
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_golden_config_keeps_the_nemo_jobs_checkpoint_dir_out_of_the_run(data_dir, tmp_path):
    app = Path(yaml.safe_load(GOLDEN.read_text())["checkpoint"]["checkpoint_dir"])
    existed = app.exists()
    out = tmp_path / "run"
    r = _cli(GOLDEN, "--proxy-model", "tiny", "--max-steps", "1", "--out", out,
             "--set", f"dataset.path_or_dataset_id={data_dir / 'train.jsonl'}",
             "--set", f"validation_dataset.path_or_dataset_id={data_dir / 'val.jsonl'}",
             "--set", "distributed.tp_size=1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "checkpoints" / "LATEST" / "model" / "adapter_model.safetensors").is_file()
    assert existed or not app.exists()
    assert f"checkpoints go to {out / 'checkpoints'}" in r.stdout and str(app) in r.stdout
    lines = [json.loads(x) for x in (out / "checkpoints" / "training.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0]


def test_help_documents_the_checkpoint_directory(tmp_path):
    r = _cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and "--checkpoint-dir" in r.stdout and "OUT/checkpoints" in r.stdout


def test_run_given_a_nemo_file_names_convert(tmp_path):
    for src in (ROOT / "golden" / "seed" / "input" / "config-fp16.yaml",
                ROOT / "golden" / "nemo1-lora-hydra" / "input" / "conf" / "llama2_lora.yaml"):
        r = _cli(src, "--out", tmp_path / "never", cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "is a NeMo job" in r.stderr and "nemo-migrate convert" in r.stderr and "run --verify" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "never").exists()
