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
