"""Helpers for the runtime tests: data/config builders, run helpers, a tiny Llama (CPU)."""

from __future__ import annotations

import copy
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The models here are tiny: one intra-op thread is fastest, and it sidesteps an OpenMP wake-up stall seen on small
# 2-core CI machines (a 40x64 @ 64x64 fp32 matmul took 15 ms with 2 threads, 0.02 ms with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
         "phi chi psi omega red green blue cyan magenta yellow black white one two three four five six").split()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


_one_thread()


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        c = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7)))
        rows.append({"prompt": "Q: " + p, "completion": c})
    return rows


PEFT = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "target_modules": "*_proj", "dim": 8,
        "alpha": 16, "dropout": 0.0}


def base_config(data_dir: Path, tok_dir: Path, ckpt_dir: Path | None = None, *, peft: bool = True) -> dict:
    cm = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"
    cfg = {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "seed": 1234,
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 1, "max_steps": 3, "num_epochs": None,
                           "ckpt_every_steps": 100, "val_every_steps": None, "save_checkpoint_every_epoch": False,
                           "validate_on_checkpoint": False},
        "model": {"_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
                  "pretrained_model_name_or_path": "meta-llama/Llama-3.2-1B", "dtype": "float32"},
        "distributed": {"strategy": "fsdp2", "dp_size": None, "tp_size": 1, "cp_size": 1, "pp_size": 1,
                        "mp_policy": {"param_dtype": "float32", "reduce_dtype": "float32"}},
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {"_target_": cm, "path_or_dataset_id": str(data_dir / "train.jsonl"),
                    "column_mapping": {"context": "prompt", "answer": "completion"},
                    "tokenizer": {"pretrained_model_name_or_path": str(tok_dir), "add_eos_token": True}},
        "dataloader": {"shuffle": True},
        "validation_dataset": {"_target_": cm, "path_or_dataset_id": str(data_dir / "val.jsonl"),
                               "column_mapping": {"context": "prompt", "answer": "completion"}},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.01, "betas": [0.9, 0.98], "eps": 1e-8,
                      "weight_decay": 0.0},
        "clip_grad_norm": {"max_norm": 1.0},
        "checkpoint": {"enabled": ckpt_dir is not None, "checkpoint_dir": str(ckpt_dir or "/nonexistent")},
    }
    if peft:
        cfg["peft"] = copy.deepcopy(PEFT)
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cfg_path: Path, out: Path, *, nproc: int = 1, proxy: str | None = "tiny", model_path=None, sets=(),
        max_steps=None, merge=False, checkpoint_dir: str | None = "config") -> int:
    """``checkpoint_dir="config"``: these tests share a checkpoint_dir between runs with different --out on purpose
    (resume); None is the CLI's default (RUN_DIR/checkpoints)."""
    from nemo_migrate.runtime.api import RunOptions, run_main

    return run_main(RunOptions(config=Path(cfg_path), nproc_per_node=nproc, max_steps=max_steps,
                               model_path=model_path, proxy_model=None if model_path else proxy,
                               overrides=list(sets), out=Path(out), merge=merge, checkpoint_dir=checkpoint_dir))


def metrics(out: Path, kind: str = "train") -> list[dict]:
    p = Path(out) / "metrics.jsonl"
    return [r for r in (json.loads(x) for x in p.read_text().splitlines()) if r["type"] == kind]


def tiny_llama(vocab: int = 320, *, layers: int = 2, tie: bool = False, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      tie_word_embeddings=tie)
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32)


def has_automodel() -> bool:
    try:
        __import__("nemo_automodel")
    except Exception:  # noqa: BLE001
        return False
    return True


def forward_backward_pair(ref, fast, shape, **kw):
    """One forward and backward of ``ref`` and ``fast`` on the same random input and output gradient:
    ``(y_ref, y_fast, x_ref.grad, x_fast.grad)``, for tests that compare two implementations of a layer."""
    import torch

    x1 = torch.randn(*shape, requires_grad=True, **kw)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ref(x1), fast(x2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    return y1, y2, x1.grad, x2.grad
