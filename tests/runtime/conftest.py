"""Fixtures for the runtime tests: JSONL data and a tokenizer made here, config files (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rt_helpers import base_config, make_rows, write_yaml


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train.jsonl", 96, 1), ("val.jsonl", 12, 2)):
        with (d / name).open("w") as f:
            for r in make_rows(n, seed):
                f.write(json.dumps(r) + "\n")
    return d


@pytest.fixture(scope="session")
def tok_dir(data_dir) -> Path:
    from nemo_migrate.runtime.tokenizer import train_local_tokenizer

    rows = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()]
    return train_local_tokenizer([r["prompt"] + " " + r["completion"] for r in rows], data_dir / "tok", vocab_size=300)


@pytest.fixture
def cfg_factory(data_dir, tok_dir, tmp_path):
    def make(name: str = "cfg.yaml", *, ckpt: bool = False, peft: bool = True, mutate=None) -> Path:
        cfg = base_config(data_dir, tok_dir, tmp_path / f"ckpt-{Path(name).stem}" if ckpt else None, peft=peft)
        if mutate:
            mutate(cfg)
        return write_yaml(tmp_path / name, cfg)

    return make
