"""The GPU benchmark harness runs end to end on CPU (tiny shape) and record.py derives the side-by-side ratios."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


def test_runtime_speed_and_record(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "runtime_speed.py"), "--shape", "tiny", "--variants", "bf16,full-bf16",
                        "--steps", "3", "--warmup", "1", "--seq", "64", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "b" / "runtime-speed-tiny.json").read_text())
    rows = {x["variant"]: x for x in doc["results"]}
    assert rows["bf16"]["exit"] == 0 and rows["bf16"]["measured_steps"] == 2 and rows["bf16"]["lora"] is True
    assert rows["full-bf16"]["trainable_params"] > rows["bf16"]["trainable_params"]  # full fine-tune trains every weight
    # the FLOP convention: LoRA counts 2/3 of full fine-tuning's 3 x forward
    assert rows["bf16"]["flop_per_token"] == pytest.approx(rows["full-bf16"]["flop_per_token"] * 2 / 3)
    # an Automodel benchmark JSON of the same shape: the ratio is ours / Automodel's tokens/s
    tps = rows["bf16"]["tokens_per_s_per_gpu"]
    am = {"total_steps": 6, "warmup_steps": 2, "training_steps": 4, "avg_iter_time_seconds": 32 * 4096 / (tps / 2),
          "avg_mfu_percent": 1.0, "world_size": 1, "global_batch_size": 32, "local_batch_size": 2, "seq_len": 4096}
    (tmp_path / "automodel-tiny.json").write_text(json.dumps(am))
    out = tmp_path / "results" / "2026-01-01-cpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "record.py"), "--ours", str(tmp_path / "b" / "runtime-speed-tiny.json"),
                        "--automodel", f"tiny={tmp_path / 'automodel-tiny.json'}", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["ratios"]["tiny"]["ours_bf16_vs_automodel_bf16"] == pytest.approx(2.0, rel=1e-3)
    assert (out.parent / "raw" / out.stem / "automodel-tiny.json").is_file()
