"""GPU-only checks (real FP8 on SM89+, NCCL, bf16 throughput smoke). Skipped without CUDA; run with
``pytest tests/runtime -m gpu`` on a GPU machine."""

import pytest
import torch

from rt_helpers import forward_backward_pair, metrics, run

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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_replicated_lora_base_equals_fsdp2_on_two_gpus(cfg_factory, tmp_path, capfd):
    """Issue 18: at 2 GPUs the frozen LoRA base is replicated (auto) and trains what FSDP2 sharding trains."""
    def f(mode):
        def m(c):
            _bf16(c)
            c["nemo_compat"] = {"frozen_base": mode}
        return m

    assert run(cfg_factory("shard.yaml", mutate=f("shard")), tmp_path / "s", max_steps=3, nproc=2) == 0
    capfd.readouterr()
    assert run(cfg_factory("auto.yaml", mutate=f("auto")), tmp_path / "a", max_steps=3, nproc=2) == 0
    assert "LoRA base replicated on every rank" in capfd.readouterr().out
    for x, y in zip(metrics(tmp_path / "s"), metrics(tmp_path / "a")):
        assert x["loss"] == pytest.approx(y["loss"], rel=2e-3)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="real FP8 needs SM 8.9+")
def test_cached_fp8_weight_equals_uncached_float8linear_on_gpu():
    """The cached float8 weight (both layouts) gives torchao's uncached Float8Linear's output and input gradient."""
    from types import SimpleNamespace

    from nemo_migrate.runtime.fp8 import convert_fp8

    spec = SimpleNamespace(recipe_name="tensorwise", enable_fsdp_float8_all_gather=False,
                           force_recompute_fp8_weight_in_bwd=False, emulate=False, filter_fqns=[])

    def model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(2048, 4096, bias=False), torch.nn.Linear(4096, 1024, bias=False))
        m = m.to("cuda", torch.bfloat16)
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    ref, fast = model(), model()
    convert_fp8(ref, spec)
    convert_fp8(fast, spec, frozen_base=True, replicated=True)
    for _ in range(2):
        y1, y2, g1, g2 = forward_backward_pair(ref, fast, (4, 512, 2048), device="cuda", dtype=torch.bfloat16)
        assert torch.equal(y1, y2)
        assert ((g1.float() - g2.float()).norm() / g1.float().norm()).item() < 1e-3
    assert "_w8" in fast[0].__dict__
