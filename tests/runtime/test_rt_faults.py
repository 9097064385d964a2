"""Runtime faults with real signals: a training process killed (SIGTERM, as a scheduler's preemption, or SIGKILL)
is rerun and resumes from its last complete checkpoint, continuing with the losses of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rt_helpers import metrics

ROOT = Path(__file__).resolve().parents[2]


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nemo_migrate.cli", "run", str(cfg), "--out", str(out), "--proxy-model", "tiny",
            "--checkpoint-dir", "config", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_from_its_last_checkpoint_with_the_same_losses(cfg_factory, tmp_path, sig):
    def mutate(c):
        c["step_scheduler"].update(global_batch_size=8, max_steps=200, ckpt_every_steps=1)

    victim = cfg_factory(f"victim-{sig}.yaml", ckpt=True, mutate=mutate)
    ref = cfg_factory(f"ref-{sig}.yaml", ckpt=True, mutate=mutate)
    out = tmp_path / "victim"
    p = subprocess.Popen(_cmd(victim, out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mfile = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if mfile.is_file() and sum('"train"' in l for l in mfile.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed:\n" + (p.stdout.read() if p.stdout else "")
    p.send_signal(getattr(signal, sig))
    log, _ = p.communicate(timeout=120)
    assert p.returncode != 0 or sig == "SIGTERM", log
    assert "Traceback" not in log
    killed_at = max(r["step"] for r in metrics(out))
    # the rerun (same config, same checkpoint_dir) resumes after the newest complete checkpoint
    r = subprocess.run(_cmd(victim, tmp_path / "rerun", "--stop-after", "3"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming from" in r.stderr
    resumed = metrics(tmp_path / "rerun")
    first = resumed[0]["step"]
    assert 1 <= first <= killed_at + 1 and [x["step"] for x in resumed] == [first, first + 1, first + 2]
    # an uninterrupted run over the same steps: identical losses where both ran
    u = subprocess.run(_cmd(ref, tmp_path / "ref", "--stop-after", str(first + 3)), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert u.returncode == 0, u.stdout + u.stderr
    full = {x["step"]: x for x in metrics(tmp_path / "ref")}
    for x in metrics(out) + resumed:
        if x["step"] in full:
            assert x["loss"] == pytest.approx(full[x["step"]]["loss"], rel=1e-5, abs=1e-6), x["step"]
            assert x["lr"] == pytest.approx(full[x["step"]]["lr"], rel=1e-9)
