"""GPU-only checks (real FP8 on SM89+, NCCL, bf16 throughput smoke). Skipped without CUDA; run with
``pytest tests/runtime -m gpu`` on a GPU machine."""

import pytest
import torch

from rt_helpers import metrics, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _bf16(c, gbs=8):
    c["model"]["dtype"] = "bfloat16"
    c["distributed"].pop("mp_policy", None)  # 0.7 default policy: bf16 compute, fp32 reduce
    c["step_scheduler"]["global_batch_size"] = gbs


def test_lora_bf16_on_gpu(cfg_factory, tmp_path):
    c = cfg_factory("g.yaml", mutate=_bf16)
    assert run(c, tmp_path / "r", max_steps=3) == 0
    m = metrics(tmp_path / "r")
    assert len(m) == 3 and all(r["peak_mem_gib"] > 0 for r in m)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="real FP8 needs SM 8.9+")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_real_fp8_lora_keeps_adapters_trainable(cfg_factory, tmp_path, capsys, recipe):
    def f(c):
        _bf16(c)
        c["fp8"] = {"enabled": True, "recipe_name": recipe, "enable_fsdp_float8_all_gather": recipe == "tensorwise",
                    "precompute_float8_dynamic_scale_for_fsdp": recipe == "tensorwise", "filter_fqns": ["lm_head"],
                    "emulate": False}

    assert run(cfg_factory(f"fp8-{recipe}.yaml", mutate=f), tmp_path / "r", max_steps=3) == 0
    out = capsys.readouterr().out
    assert "fp8: 14 linear(s) run in float8" in out and "16,384 trainable" in out
    assert all(r["grad_norm"] > 0 for r in metrics(tmp_path / "r"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_two_gpus_equal_one(cfg_factory, tmp_path):
    def f(c):
        c["step_scheduler"]["global_batch_size"] = 8
    c1, c2 = cfg_factory("a.yaml", mutate=f), cfg_factory("b.yaml", mutate=f)
    assert run(c1, tmp_path / "r1", max_steps=2) == 0
    assert run(c2, tmp_path / "r2", max_steps=2, nproc=2) == 0
    for x, y in zip(metrics(tmp_path / "r1"), metrics(tmp_path / "r2")):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)


def test_llama_1b_proxy_lora_throughput_smoke(cfg_factory, tmp_path):
    """Not a benchmark: the 1B-shape LoRA step runs on one GPU and reports tokens/s and memory."""
    def f(c):
        _bf16(c, gbs=4)
        c["dataset"]["seq_length"] = 512
        c["dataset"]["truncation"] = True

    assert run(cfg_factory("1b.yaml", mutate=f), tmp_path / "r", max_steps=3, proxy="llama-1b") == 0
    m = metrics(tmp_path / "r")
    assert m[-1]["tokens_per_s"] > 0 and m[-1]["peak_mem_gib"] > 1
