"""The runtime's LoRA against the libraries (issue 17, item 9): Automodel 0.7's LinearLoRA is the reference of the
layer (bit-equal, forward and backward), peft is the reference of the export (its LoraConfig writes
adapter_config.json, its loader reads the adapter back, its merge_and_unload gives the runtime's merged bits). Where
peft's own layer differs from Automodel's numerics the difference is measured here (runtime/README.md, "Libraries")."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from nemo_migrate.runtime import lora
from rt_helpers import has_automodel, tiny_llama

peft = pytest.importorskip("peft")


def _spec(**kw):
    d = dict(target_modules=["*_proj"], exclude_modules=[], match_all_linear=False, dim=4, alpha=8.0, dropout=0.0,
             dropout_position="post", lora_A_init="xavier", lora_dtype=None)
    d.update(kw)
    return SimpleNamespace(**d)


def _three_layers(dtype, dim, alpha, pos, p):
    """Automodel's LinearLoRA, the runtime's patched linear and peft's lora.Linear over one base, same A and B."""
    from nemo_automodel.components._peft.lora import LinearLoRA
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(0)
    base = nn.Linear(96, 80, bias=True, dtype=dtype)
    am = LinearLoRA(copy.deepcopy(base), dim=dim, alpha=alpha, dropout=p, dropout_position=pos)
    with torch.no_grad():
        am.lora_B.weight.normal_(0, 0.05)
    rt = lora.patch_linear(copy.deepcopy(base), dim=dim, alpha=alpha, dropout=p, dropout_position=pos,
                           lora_A_init="xavier", lora_dtype=None)
    cfg = peft.LoraConfig(r=dim, lora_alpha=alpha, lora_dropout=p, init_lora_weights=False)
    pl = PeftLinear(copy.deepcopy(base), "default", config=cfg, r=dim, lora_alpha=alpha, lora_dropout=p,
                    init_lora_weights=False)
    with torch.no_grad():
        for A, B in ((rt.lora_A, rt.lora_B), (pl.lora_A["default"], pl.lora_B["default"])):
            A.weight.copy_(am.lora_A.weight)
            B.weight.copy_(am.lora_B.weight)
    return {"automodel": (am, am.lora_A, am.lora_B), "runtime": (rt, rt.lora_A, rt.lora_B),
            "peft": (pl, pl.lora_A["default"], pl.lora_B["default"])}


def _forward_backward(layers, dtype, train):
    torch.manual_seed(1)
    x0 = torch.randn(3, 17, 96, dtype=dtype)
    g = torch.randn(3, 17, 80, dtype=dtype, generator=torch.Generator().manual_seed(3))
    out = {}
    for name, (m, A, B) in layers.items():
        m.train(train)
        x = x0.clone().requires_grad_(True)
        torch.manual_seed(2)  # the same dropout draw for each
        y = m(x)
        y.backward(g)
        out[name] = [t.detach().float() for t in (y, x.grad, A.weight.grad, B.weight.grad)]
    return out


def _maxdiff(a, b):
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


needs_automodel = pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")


@needs_automodel
@pytest.mark.automodel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim,alpha,pos,p,train", [
    (8, 32, "post", 0.0, False), (6, 32, "post", 0.0, False), (16, 10, "pre", 0.0, True),
    (8, 16, "pre", 0.1, True), (8, 16, "post", 0.1, True), (6, 32, "post", 0.1, True)])
def test_runtime_layer_is_bit_equal_to_automodel_linear_lora(dtype, dim, alpha, pos, p, train):
    """Output, input gradient and both adapter gradients, with Automodel's default (memory-efficient) LoRA path."""
    r = _forward_backward(_three_layers(dtype, dim, alpha, pos, p), dtype, train)
    assert _maxdiff(r["runtime"], r["automodel"]) == 0.0


@needs_automodel
@pytest.mark.automodel
def test_peft_layer_differs_from_automodel_where_the_readme_says():
    """peft's lora.Linear scales after lora_B and drops out only the input: equal to Automodel's LinearLoRA for a
    power-of-two alpha/dim with no or ``pre`` dropout, different otherwise (runtime/README.md, Libraries)."""
    same = _forward_backward(_three_layers(torch.bfloat16, 8, 32, "pre", 0.1), torch.bfloat16, True)
    assert _maxdiff(same["peft"], same["automodel"]) == 0.0
    odd_scale = _forward_backward(_three_layers(torch.bfloat16, 6, 32, "pre", 0.0), torch.bfloat16, False)
    assert _maxdiff(odd_scale["peft"], odd_scale["automodel"]) > 0.0  # 32/6 applied after B: another rounding
    post = _forward_backward(_three_layers(torch.float32, 8, 16, "post", 0.1), torch.float32, True)
    assert _maxdiff(post["peft"], post["automodel"]) > 1e-2  # Automodel's default position has no peft equivalent


def _trained_lora(tied: bool, dtype=torch.float32):
    torch.manual_seed(0)
    model = tiny_llama(dtype=dtype)
    base_sd = copy.deepcopy(model.state_dict())
    info = lora.apply_lora(model, _spec(alpha=10.0, dim=6, dropout=0.1, dropout_position="pre"), tied_a=tied)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model.eval(), base_sd, info, full


def _export(tmp_path, full, info):
    from nemo_migrate.runtime import checkpoint as ck

    ck.save_adapter(tmp_path, lora.adapter_tensors(full, info),
                    lora.adapter_config(info, None, base_model="base", dropout=0.1))
    return tmp_path


@pytest.mark.parametrize("tied", [False, True])
def test_adapter_loads_in_peft_with_equal_outputs_and_peft_state_dict(tmp_path, tied):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    model, base_sd, info, full = _trained_lora(tied)
    out = _export(tmp_path, full, info)
    base = tiny_llama()
    base.load_state_dict(base_sd)
    pm = peft.PeftModel.from_pretrained(base, str(out)).eval()
    x = torch.randint(0, 320, (2, 13), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(input_ids=x).logits, pm(input_ids=x).logits
    # alpha/dim = 10/6: peft applies the scale after lora_B (one more rounding), so fp32-close, not bit-equal
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    saved = load_file(str(out / "adapter_model.safetensors"))
    again = get_peft_model_state_dict(pm)
    assert sorted(again) == sorted(saved) and all(torch.equal(again[k], saved[k]) for k in saved)


def test_adapter_config_is_what_peft_writes(tmp_path):
    _, _, info, full = _trained_lora(False)
    ours = json.loads((_export(tmp_path / "a", full, info) / "adapter_config.json").read_text())
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=6, lora_alpha=10.0, lora_dropout=0.1,
                          target_modules=info.targets, base_model_name_or_path="base", inference_mode=True)
    cfg.save_pretrained(str(tmp_path / "b"))
    theirs = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    theirs["target_modules"] = sorted(theirs["target_modules"])  # peft writes list(set): process-dependent order
    assert ours == theirs and ours["peft_version"] == peft.__version__
    assert ours["target_modules"] == sorted(info.targets)
    loaded = peft.PeftConfig.from_pretrained(str(tmp_path / "a"))
    assert loaded.r == 6 and loaded.lora_alpha == 10.0 and set(loaded.target_modules) == set(info.targets)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tied", [False, True])
def test_merge_is_bit_equal_to_peft_merge_and_unload(tmp_path, dtype, tied):
    """The runtime's merge (W + s * B @ A in fp32, rounded once to W's dtype) gives peft's merge_and_unload bits: peft
    loads a bf16 model's adapter in fp32 (autocast_adapter_dtype), so its ``weight.data += delta`` rounds once too."""
    model, base_sd, info, full = _trained_lora(tied, dtype)
    with torch.no_grad():
        for k in full:
            if ".lora_" in k:
                full[k] = full[k] * 20  # deltas as large as the weights: a double rounding would show
    ours = lora.merged_state_dict(full, info)
    base = tiny_llama(dtype=dtype)
    base.load_state_dict(base_sd)
    theirs = peft.PeftModel.from_pretrained(base, str(_export(tmp_path, full, info))).merge_and_unload().state_dict()
    assert sorted(theirs) == sorted(ours)
    changed = [k for k in ours if not torch.equal(ours[k], base_sd[k])]
    assert sorted(changed) == sorted(f"{t}.weight" for t in info.targets)
    bad = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert not bad, bad
    # and the peft way rounded per weight once: a bf16 delta added in bf16 would differ
    if dtype == torch.bfloat16:
        t = info.targets[0]
        A, B = full[f"{_owner(info, t)}.lora_A.weight"].float(), full[f"{t}.lora_B.weight"].float()
        twice = base_sd[f"{t}.weight"] + (info.scale * (B @ A)).to(dtype)
        assert not torch.equal(twice, ours[f"{t}.weight"])


def _owner(info, t):
    for g in info.tied_groups:
        if t in g:
            return g[0]
    return t
