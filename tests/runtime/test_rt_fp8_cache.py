"""The cached float8 weight of a frozen LoRA base (FrozenFloat8Linear.cached_fp8_weight): computed once, both layouts
``torch._scaled_mm`` wants, same results as torchao's uncached Float8Linear (emulation: runs on CPU); a replicated
base (parallel.frozen_base_mode) caches too and turns FSDP's float8 all-gather off."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from rt_helpers import forward_backward_pair

pytest.importorskip("torchao")

from nemo_migrate.runtime.fp8 import convert_fp8  # noqa: E402


def _spec(all_gather=False):
    return SimpleNamespace(recipe_name="tensorwise", enable_fsdp_float8_all_gather=all_gather,
                           force_recompute_fp8_weight_in_bwd=False, emulate=True, filter_fqns=[])


def _model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 96, bias=True), nn.Linear(96, 32, bias=False))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_fp8_weight_is_cast_once_and_kept():
    m = _model()
    convert_fp8(m, _spec(), frozen_base=True, replicated=True)
    x = torch.randn(2, 8, 64)
    y0 = m(x)
    w8, w8_bwd = m[0].__dict__["_w8"]
    with torch.no_grad():
        m[0].weight.mul_(2)  # the cache is not recomputed: a frozen weight never changes in training
    assert m[0].__dict__["_w8"][0] is w8
    assert torch.equal(m(x), y0)
    ref = _model()
    convert_fp8(ref, _spec(), frozen_base=True)  # uncached: reads the weight every step
    with torch.no_grad():
        ref[0].weight.mul_(2)
    assert not torch.equal(ref(x), y0)


def test_both_cached_layouts_are_column_major_with_one_scale():
    m = _model()
    convert_fp8(m, _spec(), frozen_base=True, single_process=True)
    w8, w8_bwd = m[0].cached_fp8_weight()
    assert w8._data.shape == (64, 96) and w8._data.stride() == (1, 64)  # W^T, column-major (forward)
    assert w8_bwd._data.shape == (96, 64) and w8_bwd._data.stride() == (1, 96)  # W, column-major (grad input)
    assert w8_bwd._scale is w8._scale
    assert torch.equal(w8_bwd._data.view(torch.uint8), w8._data.t().view(torch.uint8))
    assert w8._data.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("mode", [dict(single_process=True), dict(replicated=True)])
def test_cached_equals_torchaos_float8linear(mode):
    ref, fast = _model(), _model()
    convert_fp8(ref, _spec())  # torchao's own Float8Linear (weight cast every forward)
    convert_fp8(fast, _spec(), frozen_base=True, **mode)
    assert fast[0].cache_weight
    for _ in range(3):
        y1, y2, g1, g2 = forward_backward_pair(ref, fast, (3, 8, 64))
        assert torch.equal(y1, y2) and torch.equal(g1, g2)


def test_replicated_base_has_no_fsdp_float8_all_gather():
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    sharded, rep = _model(), _model()
    convert_fp8(sharded, _spec(all_gather=True), frozen_base=True)
    convert_fp8(rep, _spec(all_gather=True), frozen_base=True, replicated=True)
    assert isinstance(sharded[0].weight, WeightWithDynamicFloat8CastTensor) and not sharded[0].cache_weight
    assert not isinstance(rep[0].weight, WeightWithDynamicFloat8CastTensor) and rep[0].cache_weight
    assert not rep[0].config.enable_fsdp_float8_all_gather
