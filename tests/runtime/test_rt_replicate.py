"""Multi-rank LoRA with the frozen base replicated (parallel.frozen_base_mode / ReplicatedGrads): at world size 2 on
CPU (gloo) it trains the same losses as FSDP2 sharding the base, and as one process; the rule that picks it."""

from types import SimpleNamespace

import pytest
import torch

from rt_helpers import metrics, run


def _losses(out) -> list[float]:
    return [r["loss"] for r in metrics(out)] + [r["grad_norm"] for r in metrics(out)]  # Adam hides a grad scale


def _cfg(cfg_factory, name, frozen_base, *, bf16=False, ckpt=False):
    def mutate(c):
        c["step_scheduler"]["global_batch_size"] = 4
        c["nemo_compat"] = {"frozen_base": frozen_base}
        if bf16:
            c["model"]["dtype"] = "bfloat16"
            c["distributed"]["mp_policy"] = {"param_dtype": "bfloat16", "reduce_dtype": "float32"}

    return cfg_factory(name, mutate=mutate, ckpt=ckpt)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, data_dir, tok_dir):
    from rt_helpers import base_config, write_yaml

    out = {}
    for bf16 in (False, True):
        d = tmp_path_factory.mktemp(f"shard-bf16-{bf16}")
        cfg = base_config(data_dir, tok_dir)
        cfg["step_scheduler"]["global_batch_size"] = 4
        cfg["nemo_compat"] = {"frozen_base": "shard"}
        if bf16:
            cfg["model"]["dtype"] = "bfloat16"
            cfg["distributed"]["mp_policy"] = {"param_dtype": "bfloat16", "reduce_dtype": "float32"}
        assert run(write_yaml(d / "c.yaml", cfg), d / "run", max_steps=3, nproc=2) == 0
        out[bf16] = _losses(d / "run")
        assert len(out[bf16]) == 6
    return out


def test_replicated_base_equals_fsdp2_fp32(cfg_factory, tmp_path, sharded, capfd):
    cfg = _cfg(cfg_factory, "rep.yaml", "replicate", ckpt=True)
    assert run(cfg, tmp_path / "run", max_steps=3, nproc=2) == 0
    got = _losses(tmp_path / "run")
    assert got == pytest.approx(sharded[False], rel=1e-5)
    assert got[2] != got[0]  # it trained
    assert "LoRA base replicated on every rank" in capfd.readouterr().out
    assert any((tmp_path / "ckpt-rep").rglob("*.safetensors"))  # the adapter checkpoint of replicated ranks


def test_replicated_base_equals_fsdp2_bf16_fp32_reduce(cfg_factory, tmp_path, sharded):
    # bf16 parameters, fp32 gradient reduction: gradients accumulate over micro-batches in fp32 as FSDP2's do
    cfg = _cfg(cfg_factory, "rep16.yaml", "replicate", bf16=True)
    assert run(cfg, tmp_path / "run", max_steps=3, nproc=2) == 0
    got = _losses(tmp_path / "run")
    assert got == pytest.approx(sharded[True], rel=2e-3)


def _spec(**dist):
    d = dict(strategy="fsdp2", tp=1, cp=1, dp_replicate=1, offload=False, reshard_after_forward=None,
             param_dtype="float32", output_dtype=None)
    d.update(dist)
    return SimpleNamespace(peft=object(), dist=SimpleNamespace(**d), compat=SimpleNamespace(frozen_base="auto"))


def _env(world=2, device="cpu"):
    return SimpleNamespace(world_size=world, device=torch.device(device))


def test_rule_auto_keeps_fsdp2_off_cuda_and_for_explicit_sharding():
    from nemo_migrate.runtime.parallel import frozen_base_mode

    m = torch.nn.Linear(4, 4)
    assert frozen_base_mode(m, _spec(), _env(), lora_dtype=torch.float32) == (False, "not a CUDA device "
                                                                               "(nemo_compat.frozen_base: replicate forces it)")
    assert not frozen_base_mode(m, _spec(), _env(world=1), lora_dtype=torch.float32)[0]
    for kw, why in ((dict(tp=2), "tensor"), (dict(dp_replicate=2), "HSDP"), (dict(offload=True), "offload"),
                    (dict(reshard_after_forward=True), "reshard"), (dict(param_dtype="bfloat16"), "param_dtype")):
        rep, reason = frozen_base_mode(m, _spec(**kw), _env(), lora_dtype=torch.float32)
        assert not rep and why in reason


def test_rule_forced_replicate_and_shard():
    from nemo_migrate.runtime.errors import RunError
    from nemo_migrate.runtime.parallel import frozen_base_mode

    m = torch.nn.Linear(4, 4)
    s = _spec()
    s.compat.frozen_base = "replicate"
    assert frozen_base_mode(m, s, _env(), lora_dtype=torch.float32)[0]
    s.compat.frozen_base = "shard"
    assert not frozen_base_mode(m, s, _env(), lora_dtype=torch.float32)[0]
    s = _spec(tp=2)
    s.compat.frozen_base = "replicate"
    with pytest.raises(RunError, match="tensor/context parallelism"):
        frozen_base_mode(m, s, _env(), lora_dtype=torch.float32)


def test_unknown_frozen_base_value_is_a_config_error(cfg_factory, tmp_path, capsys):
    cfg = _cfg(cfg_factory, "bad.yaml", "sometimes")
    assert run(cfg, tmp_path / "run", max_steps=1) != 0
    assert "nemo_compat.frozen_base" in capsys.readouterr().err


def test_grads_accumulate_in_reduce_dtype_and_sync_only_when_asked():
    """One process (gloo world 1): two bf16 backwards without sync keep the fp32 sum; the sync writes the mean."""
    import torch.distributed as dist

    from nemo_migrate.runtime.parallel import ReplicatedGrads, is_replicated

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        m = torch.nn.Linear(8, 1, bias=False).to(torch.bfloat16)
        ReplicatedGrads.attach(m, dist.group.WORLD, reduce_dtype=torch.float32)
        assert is_replicated(m)
        x = torch.randn(3, 8, dtype=torch.bfloat16)
        m.set_requires_gradient_sync(False)
        m(x).sum().backward()
        assert m.weight.grad is None  # held in the fp32 buffer
        m.set_requires_gradient_sync(True)
        m(x).sum().backward()
        want = 2 * x.float().sum(0, keepdim=True)
        assert m.weight.grad.dtype == torch.bfloat16
        torch.testing.assert_close(m.weight.grad.float(), want.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)
        m.weight.grad = None
        m(x).sum().backward()  # the buffer was cleared by the sync
        torch.testing.assert_close(m.weight.grad.float(), (want / 2).to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)
    finally:
        if own:
            dist.destroy_process_group()
