"""Liger kernels (fused RMSNorm, RoPE, SwiGLU and fused linear cross-entropy), as Automodel 0.7 applies them by
default (``model.use_liger_kernel: true``): on a CUDA device, with the package installed, without tensor parallelism.

The fused linear cross-entropy never materialises the logits: the loss is computed from the last hidden states
and the lm_head weight in chunks, in fp32 inside the kernel (the same math as 0.7's fp32-upcast masked CE)."""

from __future__ import annotations

from typing import Any


def liger_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model: Any, mspec, *, device, tp: int, ignore_index: int, compiled: bool = False) -> str | None:
    """Patch ``model`` in place; returns a description, or None when Liger is not used (and why is not an error).

    With torch.compile on the decoder layers only the fused linear cross-entropy is used: the compiler fuses
    RMSNorm, RoPE and SwiGLU itself (and with FP8, the casts into them), and Liger's RMSNorm kernel does not trace."""
    if not getattr(mspec, "use_liger_kernel", True) or device.type != "cuda" or tp > 1 or ignore_index != -100:
        return None
    if not liger_available():
        return None
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    if getattr(getattr(model, "config", None), "model_type", None) not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return None

    if compiled:
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=True, rope=False,
                                        rms_norm=False, swiglu=False)
        return "liger fused linear cross-entropy (RMSNorm, RoPE, SwiGLU left to torch.compile)"
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=True)
    return "liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU)"


def lce_sum(model: Any, kwargs: dict[str, Any], labels) -> Any:
    """Sum of token CE over labels != -100 through Liger's patched forward (labels already shifted)."""
    out = model(**kwargs, shift_labels=labels, num_items_in_batch=1, skip_logits=True)
    return out.loss if hasattr(out, "loss") else out[0]


ATTENTION = "nemo_sdpa"  # the runtime's SDPA: cuDNN attention where it applies, else transformers' own sdpa


def use_cudnn_attention(model: Any, mspec, *, device, log=None) -> str | None:
    """Run the model's SDPA attention on cuDNN's fused attention kernel where it applies (Hopper and newer, bf16/fp16,
    head dim 64 or 128, causal, no mask, no dropout); every other call goes to transformers' sdpa as before.

    transformers passes grouped KV heads to SDPA with ``enable_gqa``, which only the flash and efficient kernels take;
    cuDNN's kernel (about 1.9x FlashAttention-2's speed forward+backward on an H200 at Llama-8B's shape,
    bench/sdpa_backends.py) needs the KV heads repeated, which this does.  NEMO_MIGRATE_SDPA=torch keeps torch's
    own choice.  Returns a description, or None when not used."""
    import os

    import torch

    choice = os.environ.get("NEMO_MIGRATE_SDPA", "").strip().lower()
    if choice not in ("", "cudnn", "torch"):
        from .errors import RunError

        raise RunError("unknown attention choice", key="NEMO_MIGRATE_SDPA", found=choice, expected="cudnn (default on Hopper+), torch")
    cfg = getattr(model, "config", None)
    if (choice == "torch" or device.type != "cuda" or getattr(mspec, "attn_implementation", "sdpa") != "sdpa" or cfg is None
            or getattr(cfg, "_attn_implementation", None) != "sdpa" or torch.cuda.get_device_capability(device) < (9, 0)
            or not torch.backends.cudnn.is_available()):
        return None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, cudnn_sdpa_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    for c in {id(x): x for x in [cfg, *[getattr(cfg, k) for k in getattr(cfg, "sub_configs", {}) if getattr(cfg, k, None) is not None]]}.values():
        c._attn_implementation = ATTENTION
    return "attention: cuDNN fused attention (SDPA), KV heads repeated"


def _cudnn_applies(query, key, attention_mask, dropout: float, is_causal) -> bool:
    import torch

    return (attention_mask is None and not dropout and is_causal is not False and query.is_cuda
            and query.dtype in (torch.bfloat16, torch.float16) and query.shape[-1] in (64, 128)
            and query.shape[2] == key.shape[2] and query.shape[2] > 1)


def cudnn_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function signature: (B, heads, S, D) in, (B, S, heads, D) and no weights out."""
    if not _cudnn_applies(query, key, attention_mask, dropout, is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    import torch

    rep = query.shape[1] // key.shape[1]
    if rep > 1:
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, True, 0.0, True, False, scale=scaling)[0]
    return out.transpose(1, 2).contiguous(), None
