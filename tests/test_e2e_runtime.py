"""From a NeMo job to training steps: convert, then `nemo-migrate run` the emitted config on CPU (tiny proxy model,
tokenizer trained by the run, data written here) for the data forms convert emits: chat (NeMo-Aligner chat job,
after `convert-data`) and packed sequences (a NeMo 2 job with packed_sequence_specs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _train_lines(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]


def test_aligner_chat_job_converts_and_trains(tmp_path):
    case = ROOT / "golden" / "aligner-sft-chat"
    out = tmp_path / "am"
    r = cli("convert", case / "input", "-o", out)
    assert r.returncode == 0, r.stderr
    for split in ("train_chat", "val_chat"):  # the pre-step the report names
        r = cli("convert-data", case / "input" / "data" / f"{split}.jsonl", tmp_path / f"{split}.messages.jsonl")
        assert r.returncode == 0, r.stderr
    r = cli("run", out / "sft_chat.yaml", "--proxy-model", "tiny", "--max-steps", "2", "--out", tmp_path / "run",
            "--set", f"dataset.path_or_dataset_id={tmp_path / 'train_chat.messages.jsonl'}",
            "--set", f"validation_dataset.path_or_dataset_id={tmp_path / 'val_chat.messages.jsonl'}",
            "--set", "distributed.tp_size=1", "--set", f"checkpoint.checkpoint_dir={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = _train_lines(tmp_path / "run")
    assert len(steps) == 2 and all(s["num_label_tokens"] > 0 for s in steps)


def test_packed_nemo_job_converts_and_trains_packed(tmp_path):
    job = tmp_path / "nemo2"
    job.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"input": f"Context: item {i}. Question: what is item {i}?", "output": f"It is number {i}."} for i in range(80)]
    for split in ("training", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "recipe.py").write_text(f'''
import nemo_run as run
from nemo.collections import llm


def packed() -> run.Partial:
    recipe = llm.llama32_1b.finetune_recipe(name="packed", num_gpus_per_node=1, peft_scheme="lora")
    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="{data}", seq_length=128, micro_batch_size=1,
                             global_batch_size=4,
                             packed_sequence_specs=run.Config(llm.PackedSequenceSpecs, packed_sequence_size=128))
    recipe.trainer.max_steps = 3
    return recipe


if __name__ == "__main__":
    run.cli.main(llm.finetune, default_factory=packed)
''')
    out = tmp_path / "am"
    r = cli("convert", job, "-o", out)
    assert r.returncode == 0, r.stderr
    cfg = (out / "config.yaml").read_text()
    assert "packed_sequence_size: 128" in cfg
    r = cli("run", out / "config.yaml", "--proxy-model", "tiny", "--out", tmp_path / "run",
            "--set", f"checkpoint.checkpoint_dir={tmp_path / 'ckpt'}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "packing[dataset]" in r.stdout and "packs of 128 tokens" in r.stdout
    steps = _train_lines(tmp_path / "run")
    assert len(steps) == 3 and all(s["num_label_tokens"] > 0 for s in steps)
