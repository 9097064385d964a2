"""The LoRA-base FP8 path (FrozenFloat8Linear): same forward and grad_input as torchao's Float8Linear, no weight
gradient work, and a cached float8 weight that gives the same result (torchao emulation, so it runs on CPU)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from rt_helpers import forward_backward_pair

pytest.importorskip("torchao")

from nemo_migrate.runtime.fp8 import convert_fp8  # noqa: E402


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128, bias=True), nn.Linear(128, 32, bias=False))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("cache", [False, True])
def test_frozen_fp8_linear_matches_torchao(cache):
    spec = SimpleNamespace(recipe_name="tensorwise", enable_fsdp_float8_all_gather=False,
                           force_recompute_fp8_weight_in_bwd=False, emulate=True, filter_fqns=[])
    ref, fast = _model(), _model()
    convert_fp8(ref, spec)
    convert_fp8(fast, spec, frozen_base=True, single_process=cache)
    assert type(fast[0]).__name__ == "FrozenFloat8Linear" and type(ref[0]).__name__ == "Float8Linear"
    for _ in range(2):  # the second pass uses the cached float8 weight when cache=True
        y1, y2, g1, g2 = forward_backward_pair(ref, fast, (4, 16, 64))
        assert torch.equal(y1, y2) and torch.equal(g1, g2)
    assert all(p.grad is None for p in fast.parameters())


def test_trainable_weight_keeps_torchaos_path():
    spec = SimpleNamespace(recipe_name="tensorwise", enable_fsdp_float8_all_gather=False,
                           force_recompute_fp8_weight_in_bwd=False, emulate=True, filter_fqns=[])
    m = _model()
    convert_fp8(m, spec, frozen_base=True)
    m[0].weight.requires_grad_(True)
    m(torch.randn(2, 16, 64)).sum().backward()
    assert m[0].weight.grad is not None  # a trainable weight still gets its gradient


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="real FP8 needs SM 8.9+")
def test_fused_cast_equals_torchaos_cast_on_gpu():
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole, LinearMMConfig

    from nemo_migrate.runtime.fp8 import _frozen_class

    cast = _frozen_class().fp8_cast
    for shape in ((8192, 4096), (512, 14336)):
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 3
        for dt in (torch.float8_e4m3fn, torch.float8_e5m2):
            a = hp_tensor_to_float8_dynamic(x, dt, LinearMMConfig(), gemm_input_role=GemmInputRole.INPUT)
            b = cast(x, dt, LinearMMConfig(), GemmInputRole.INPUT)
            assert torch.equal(a._scale, b._scale)
            assert torch.equal(a._data.view(torch.uint8), b._data.view(torch.uint8))
