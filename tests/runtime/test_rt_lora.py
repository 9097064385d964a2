"""LoRA: math against a direct computation, init, matching (0.7 module_matcher), tied-A, HF PEFT round trip."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rt_helpers import has_automodel, tiny_llama
from nemo_migrate.automodel.match import wildcard_match as our_wildcard_match
from nemo_migrate.runtime import lora


def _spec(**kw):
    d = dict(target_modules=["*_proj"], exclude_modules=[], match_all_linear=False, dim=4, alpha=8.0, dropout=0.0,
             dropout_position="post", lora_A_init="xavier", lora_dtype=None)
    d.update(kw)
    return SimpleNamespace(**d)


def _patched(pos: str, p: float = 0.5, bias: bool = True):
    torch.manual_seed(0)
    lin = nn.Linear(32, 24, bias=bias)
    W = lin.weight.detach().clone()
    b = lin.bias.detach().clone() if bias else torch.zeros(24)
    lora.patch_linear(lin, dim=4, alpha=8.0, dropout=p, dropout_position=pos, lora_A_init="xavier", lora_dtype=None)
    with torch.no_grad():
        lin.lora_B.weight.normal_()
    return lin, W, b


@pytest.mark.parametrize("pos", ["pre", "post"])
def test_lora_math_matches_direct_computation(pos):
    lin, W, b = _patched(pos)
    A, B = lin.lora_A.weight.detach(), lin.lora_B.weight.detach()
    x = torch.randn(3, 5, 32)
    scale = 8.0 / 4
    lin.train()
    torch.manual_seed(7)
    y = lin(x)
    torch.manual_seed(7)
    base = x @ W.T + b
    if pos == "pre":
        expected = base + (F.dropout(x, 0.5, True) @ A.T) @ B.T * scale
    else:
        expected = base + F.dropout((x @ A.T) @ B.T * scale, 0.5, True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    lin.eval()
    torch.testing.assert_close(lin(x), base + (x @ A.T) @ B.T * scale, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, base + (x @ A.T) @ B.T * scale)  # dropout really was active


def test_init_frozen_base_and_grads():
    torch.manual_seed(3)
    lin = nn.Linear(16, 8)
    lora.patch_linear(lin, dim=4, alpha=32, dropout=0.0, dropout_position="post", lora_A_init="xavier", lora_dtype=None)
    assert torch.count_nonzero(lin.lora_B.weight) == 0
    assert not lin.weight.requires_grad and not lin.bias.requires_grad
    assert lin.lora_A.weight.requires_grad and lin.lora_B.weight.requires_grad
    assert lin.lora_scale == 8.0
    # xavier -> xavier_normal_, anything else -> kaiming_uniform_(a=sqrt(5)), reproduced with the same RNG draws
    for method, ref in (("xavier", lambda t: nn.init.xavier_normal_(t)),
                        ("uniform", lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)))):
        torch.manual_seed(11)
        l2 = nn.Linear(16, 8)
        torch.manual_seed(12)
        lora.patch_linear(l2, dim=4, alpha=8, dropout=0.0, dropout_position="post", lora_A_init=method, lora_dtype=None)
        torch.manual_seed(12)
        expect = nn.Linear(16, 4, bias=False).weight.detach().clone()  # the module's own init draws first
        ref(expect)
        torch.testing.assert_close(l2.lora_A.weight.detach(), expect)
    lin(torch.randn(2, 16)).sum().backward()
    assert lin.weight.grad is None and lin.lora_B.weight.grad is not None


def test_lora_dtype_and_float_output():
    lin = nn.Linear(16, 16)
    lora.patch_linear(lin, dim=2, alpha=4, dropout=0.0, dropout_position="post", lora_A_init="x",
                      lora_dtype=torch.bfloat16)
    assert lin.lora_A.weight.dtype == torch.bfloat16 and lin.weight.dtype == torch.float32
    assert lin(torch.randn(3, 16)).dtype == torch.float32


NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.10.mlp.up_proj", "lm_head",
         "model.layers.1.self_attn.o_proj"]


@pytest.mark.parametrize("pattern,expected", [
    ("*_proj", [1, 1, 1, 0, 1]),
    ("q_proj", [0, 0, 0, 0, 0]),  # full-FQN matching: a bare leaf name matches nothing
    ("*.q_proj", [1, 0, 0, 0, 0]),
    ("*.layers.1.*", [0, 1, 0, 0, 1]),  # 0.7.0: `.*` after a numeric index means children, so not layers.10
    (".*mlp.*", [0, 1, 1, 0, 0]),
    ("model.layers.0.self_attn.q_proj", [1, 0, 0, 0, 0]),
])
def test_wildcard_matching(pattern, expected):
    assert [int(our_wildcard_match(pattern, n)) for n in NAMES] == expected


@pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")
@pytest.mark.automodel
def test_wildcard_matching_equals_real_automodel():
    from nemo_automodel.components._peft.module_matcher import wildcard_match

    pats = ["*_proj", "q_proj", "*.q_proj", "*.layers.1.*", "*layers.1.*", ".*mlp.*", "*mlp.fc.*", "*.layers.*.mlp.*",
            "model.*", "*", "*.layers.0.*.q_proj"]
    names = NAMES + ["model.layers.1", "model.layers.0.mlp.fc.x", "decoder.layers.0.self_attention.linear_qkv"]
    for p in pats:
        for n in names:
            assert our_wildcard_match(p, n) == wildcard_match(p, n), (p, n)


def test_matcher_modes_on_a_model():
    m = tiny_llama()
    assert len(lora.find_targets(m, _spec())) == 14
    all_lin = lora.find_targets(m, _spec(target_modules=[], match_all_linear=True))
    assert "lm_head" in all_lin and len(all_lin) == 15
    excl = lora.find_targets(m, _spec(target_modules=[], exclude_modules=["*lm_head", "*.down_proj"]))
    assert "lm_head" not in excl and not any(n.endswith("down_proj") for n in excl) and len(excl) == 12


def test_tied_a_equals_split_lora_with_identical_As():
    torch.manual_seed(0)
    base = tiny_llama()
    tied, split = copy.deepcopy(base), copy.deepcopy(base)
    info_t = lora.apply_lora(tied, _spec(), tied_a=True)
    lora.apply_lora(split, _spec(), tied_a=False)
    assert sorted(map(sorted, info_t.tied_groups)) == sorted(map(sorted, [
        [f"model.layers.{i}.self_attn.{p}_proj" for p in "qkv"] for i in range(2)] + [
        [f"model.layers.{i}.mlp.{p}_proj" for p in ("gate", "up")] for i in range(2)]))
    tmods, smods = dict(tied.named_modules()), dict(split.named_modules())
    with torch.no_grad():
        for n in info_t.targets:
            tmods[n].lora_B.weight.normal_()
            smods[n].lora_B.weight.copy_(tmods[n].lora_B.weight)
            smods[n].lora_A.weight.copy_(tmods[n].lora_A_module().weight)  # the three A's identical
    n_t = sum(p.numel() for p in tied.parameters() if p.requires_grad)
    n_s = sum(p.numel() for p in split.parameters() if p.requires_grad)
    assert n_s - n_t == 2 * (2 * 4 * 64 + 1 * 4 * 64)  # per layer: 2 A's saved in qkv, 1 in gate/up
    x = torch.randint(0, 320, (2, 9))
    tied.eval()
    split.eval()
    torch.testing.assert_close(tied(input_ids=x).logits, split(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    # gradients of the shared A equal the sum over the group's members in the split model
    tied.train()
    split.train()
    tied(input_ids=x).logits.sum().backward()
    split(input_ids=x).logits.sum().backward()
    g = sum(smods[f"model.layers.0.self_attn.{p}_proj"].lora_A.weight.grad for p in "qkv")
    torch.testing.assert_close(tmods["model.layers.0.self_attn.q_proj"].lora_A.weight.grad, g, rtol=1e-3,
                               atol=1e-4 * float(g.abs().max()))


def test_tied_a_pre_dropout_uses_one_mask_per_group():
    torch.manual_seed(0)
    m = tiny_llama()
    lora.apply_lora(m, _spec(dropout=0.5, dropout_position="pre"), tied_a=True)
    attn = m.model.layers[0].self_attn
    A = attn.q_proj.lora_A.weight.detach()
    with torch.no_grad():
        for p in (attn.q_proj, attn.k_proj, attn.v_proj):
            p.lora_B.weight.normal_()
    h = torch.randn(2, 5, 64)
    m.train()
    torch.manual_seed(5)
    outs = [attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)]
    torch.manual_seed(5)
    a = F.dropout(h, 0.5, True) @ A.T  # ONE dropout draw shared by q, k and v (NeMo's fused linear_qkv adapter)
    for mod, out in zip((attn.q_proj, attn.k_proj, attn.v_proj), outs):
        exp = F.linear(h, mod.weight, mod.bias) + (a * mod.lora_scale) @ mod.lora_B.weight.detach().T
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_peft_reload_gives_identical_logits(tmp_path, tied):
    peft = pytest.importorskip("peft")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ours = tiny_llama()
    base_sd = copy.deepcopy(ours.state_dict())
    info = lora.apply_lora(ours, _spec(dropout=0.1, dropout_position="pre"), tied_a=tied)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    full = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    save_file(lora.adapter_tensors(full, info), str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora.adapter_config(info, None, base_model="x", dropout=0.1)))
    base = tiny_llama()
    base.load_state_dict(base_sd)
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path))
    ours.eval()
    pm.eval()
    x = torch.randint(0, 320, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(pm(input_ids=x).logits, ours(input_ids=x).logits, rtol=1e-5, atol=1e-5)
        merged = tiny_llama()
        merged.load_state_dict(lora.merged_state_dict(full, info), strict=True)
        torch.testing.assert_close(merged(input_ids=x).logits, ours(input_ids=x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")
@pytest.mark.automodel
@pytest.mark.parametrize("pos", ["pre", "post"])
def test_forward_equals_real_automodel_linear_lora(pos):
    from nemo_automodel.components._peft.lora import LinearLoRA

    torch.manual_seed(0)
    lin = nn.Linear(32, 24)
    ref = LinearLoRA(copy.deepcopy(lin), dim=4, alpha=8, dropout=0.3, dropout_position=pos,
                     use_memory_efficient_lora=False)
    lora.patch_linear(lin, dim=4, alpha=8, dropout=0.3, dropout_position=pos, lora_A_init="xavier", lora_dtype=None)
    with torch.no_grad():
        ref.lora_B.weight.normal_()
        lin.lora_A.weight.copy_(ref.lora_A.weight)
        lin.lora_B.weight.copy_(ref.lora_B.weight)
    x = torch.randn(2, 3, 32)
    torch.manual_seed(1)
    a = ref(x)
    torch.manual_seed(1)
    torch.testing.assert_close(lin(x), a, rtol=1e-5, atol=1e-5)
