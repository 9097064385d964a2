"""runtime/kernels.py use_cudnn_attention: the model's SDPA on cuDNN's fused kernel (Hopper+), KV heads repeated;
elsewhere transformers' own sdpa, unchanged.  CPU: the choice and the fallback; GPU: the same numbers as sdpa."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nemo_migrate.runtime.errors import RunError  # noqa: E402
from nemo_migrate.runtime.kernels import ATTENTION, use_cudnn_attention  # noqa: E402


class _Spec:
    attn_implementation = "sdpa"


def _tiny(seed: int = 0, device: str = "cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64, vocab_size=128, max_position_embeddings=256)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


def test_not_used_on_cpu_and_a_bad_choice_is_named(monkeypatch):
    m = _tiny()
    assert use_cudnn_attention(m, _Spec(), device=torch.device("cpu")) is None
    assert m.config._attn_implementation == "sdpa"
    monkeypatch.setenv("NEMO_MIGRATE_SDPA", "fastest")
    with pytest.raises(RunError, match="NEMO_MIGRATE_SDPA"):
        use_cudnn_attention(m, _Spec(), device=torch.device("cpu"))


def test_where_cudnn_does_not_apply_it_is_transformers_sdpa_exactly():
    """On CPU (and with a mask, dropout, other head dims) the registered function hands the call to transformers' sdpa."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from nemo_migrate.runtime.kernels import cudnn_sdpa_forward

    AttentionInterface.register(ATTENTION, cudnn_sdpa_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    m = _tiny()
    ids = torch.randint(0, 128, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    ref = [m(input_ids=ids).logits, m(input_ids=ids, attention_mask=mask).logits]
    m.config._attn_implementation = ATTENTION
    got = [m(input_ids=ids).logits, m(input_ids=ids, attention_mask=mask).logits]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="cuDNN attention path: Hopper+")
def test_cudnn_attention_matches_sdpa_forward_and_backward_on_gpu(monkeypatch):
    """bf16, GQA 4/2 heads of 64: logits and every gradient agree with transformers' sdpa (flash) to bf16 rounding."""
    ids = torch.randint(0, 128, (2, 256), device="cuda")
    outs = []
    for use in (False, True):
        m = _tiny(0, "cuda", torch.bfloat16)
        if use:
            assert use_cudnn_attention(m, _Spec(), device=torch.device("cuda")) is not None
            assert m.config._attn_implementation == ATTENTION
        logits = m(input_ids=ids).logits
        logits.float().square().mean().backward()
        outs.append((logits.float(), {n: p.grad.float() for n, p in m.named_parameters()}))
    (l0, g0), (l1, g1) = outs
    assert (l0 - l1).abs().max() <= 0.02 * l0.abs().max()
    for n in g0:
        assert (g0[n] - g1[n]).norm() <= 0.02 * g0[n].norm() + 1e-6, n
    monkeypatch.setenv("NEMO_MIGRATE_SDPA", "torch")
    assert use_cudnn_attention(_tiny(0, "cuda", torch.bfloat16), _Spec(), device=torch.device("cuda")) is None
