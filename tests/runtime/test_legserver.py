"""runtime/legserver.py and verify's LegServers: one-process runs in one long-lived process train exactly what their
own `nemo-migrate run` process trains; a failed run, or a server that died, never reaches the next run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from nemo_migrate.verify.legs import LegServers  # noqa: E402

KEYS = ("step", "loss", "grad_norm", "lr", "num_label_tokens", "num_tokens")


def _steps(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [tuple(r.get(k) for k in KEYS) for r in rows if r.get("type") == "train"]


def _req(cfg: Path, out: Path, steps: int = 2) -> dict:
    return {"config": str(cfg), "out": str(out / "run"), "log": str(out / "output.txt"), "stop_after": steps,
            "model_path": None, "proxy_model": "tiny"}


def _own_process(cfg: Path, out: Path, steps: int = 2) -> None:
    subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", str(cfg), "--out", str(out), "--stop-after", str(steps),
                    "--proxy-model", "tiny"], check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_runs_in_one_server_train_what_their_own_processes_train(cfg_factory, tmp_path):
    """Three different runs one after another in one server (LoRA, full fine-tune, LoRA with other settings): each
    one's losses and gradient norms are bit-identical to the same run as its own process, and one server ran them."""
    def other(c):
        c["peft"].update(dim=4, dropout=0.1)
        c["optimizer"]["lr"] = 3e-3

    cfgs = [cfg_factory("lora.yaml"), cfg_factory("full.yaml", peft=False), cfg_factory("other.yaml", mutate=other)]
    servers = LegServers(1, tmp_path / "servers")
    try:
        for i, cfg in enumerate(cfgs):
            rc, died = servers.run(_req(cfg, tmp_path / f"served-{i}"))
            assert (rc, died) == (0, ""), (tmp_path / f"served-{i}" / "output.txt").read_text()
    finally:
        servers.close()
    assert [p.name for p in (tmp_path / "servers").iterdir()] == ["legserver-1.log"]  # one process ran all three
    for i, cfg in enumerate(cfgs):
        _own_process(cfg, tmp_path / f"own-{i}")
        served, own = _steps(tmp_path / f"served-{i}" / "run"), _steps(tmp_path / f"own-{i}")
        assert len(served) == 2 and served == own, (i, served, own)
        assert "nemo-migrate run:" in (tmp_path / f"served-{i}" / "output.txt").read_text()  # the run's own output, in its log
    assert _steps(tmp_path / "served-0" / "run") != _steps(tmp_path / "served-2" / "run")


def test_a_failed_run_ends_its_server_and_a_dead_server_is_replaced(cfg_factory, tmp_path):
    """A run that fails says why in its own log and ends its server; the next run gets a fresh process.  A server
    killed while idle is replaced without failing the next run."""
    bad = cfg_factory("bad.yaml", mutate=lambda c: c["peft"].update(target_modules=["*.no_such_projection"]))
    good = cfg_factory("good.yaml")
    servers = LegServers(1, tmp_path / "servers")
    try:
        rc, _ = servers.run(_req(bad, tmp_path / "bad"))
        assert rc == 1 and "no_such_projection" in (tmp_path / "bad" / "output.txt").read_text()
        rc, died = servers.run(_req(good, tmp_path / "good"))
        assert (rc, died) == (0, "")
        assert len(list((tmp_path / "servers").iterdir())) == 2
        servers._all[-1].kill()  # the idle server dies (as on a host's OOM killer)
        servers._all[-1].wait()
        rc, died = servers.run(_req(good, tmp_path / "again"))
        assert (rc, died) == (0, "")
        assert _steps(tmp_path / "again" / "run") == _steps(tmp_path / "good" / "run")
    finally:
        servers.close()
    assert all(p.poll() is not None for p in servers._all)  # close() leaves no process behind


def test_a_run_that_loads_a_model_family_new_to_the_server_ends_it(cfg_factory, tmp_path):
    """A model family whose modeling module the server had not loaded (OLMo here): what the run patched there could
    not be put back, so the server ends after it (exit 0, the run's result stands) and the next run gets a fresh one."""
    olmo = tmp_path / "olmo.json"
    olmo.write_text(json.dumps({"model_type": "olmo", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512,
                                "max_position_embeddings": 512}))
    cfg = cfg_factory("olmo.yaml")
    servers = LegServers(1, tmp_path / "servers")
    try:
        for name in ("a", "b"):
            rc, died = servers.run({**_req(cfg, tmp_path / name), "proxy_model": str(olmo)})
            assert (rc, died) == (0, ""), (tmp_path / name / "output.txt").read_text()
    finally:
        servers.close()
    assert "olmo" in (tmp_path / "a" / "output.txt").read_text()
    assert len(list((tmp_path / "servers").iterdir())) == 2 and _steps(tmp_path / "a" / "run") == _steps(tmp_path / "b" / "run")


def test_what_a_run_patches_in_transformers_is_put_back():
    """Liger patches module functions and classes of transformers' modeling modules: they are put back after a run,
    and a run that loads a modeling module not loaded before is flagged (the server ends after it)."""
    from transformers.models.llama import modeling_llama as ml

    from nemo_migrate.runtime.legserver import _is_modeling, _Process

    import torch._inductor.config as ic

    rope, fwd, casts = ml.apply_rotary_pos_emb, ml.LlamaForCausalLM.forward, ic.emulate_precision_casts
    with _Process() as proc:
        ic.emulate_precision_casts = not casts  # FP8 rowwise sets it
        ml.apply_rotary_pos_emb = lambda *a: None
        ml.LlamaForCausalLM.forward = lambda *a: None
        ml.LlamaForCausalLM.extra = 1
        ml.something_new = 2
    assert ml.apply_rotary_pos_emb is rope and ml.LlamaForCausalLM.forward is fwd
    assert not hasattr(ml.LlamaForCausalLM, "extra") and not hasattr(ml, "something_new")
    assert proc.new_model_modules == [] and ic.emulate_precision_casts is casts
    assert _is_modeling("transformers.models.qwen2.modeling_qwen2") and not _is_modeling("transformers.models.auto.modeling_auto")
