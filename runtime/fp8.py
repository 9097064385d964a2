"""torchao float8 training with Automodel 0.7's ``fp8:`` semantics, made LoRA-safe.

0.7.0 patches LoRA first and then lets torchao swap every eligible ``nn.Linear`` for a fresh ``Float8Linear``, which
drops the adapters (measured: 41,943,040 trainable parameters -> 0). Here the frozen base linears are converted
FIRST and the LoRA branch is attached around the Float8Linear afterwards (``lora.apply_lora``), so the base GEMM
runs in FP8 while ``lora_A``/``lora_B`` stay in their own dtype and trainable.

Module filter (0.7): skipped when any ``filter_fqns`` entry is a substring of the FQN, when it is not an
``nn.Linear``, or when either weight dim is not divisible by 16. Recipes: None/``tensorwise`` build a
``Float8LinearConfig`` with the three knobs; ``rowwise``/``rowwise_with_gw_hp`` use ``from_recipe_name``.
Differences from 0.7: ``emulate`` is honoured for the recipe configs too (0.7 ignores it there), and a failed
conversion is an error instead of a silent fallback to bf16.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn as nn

from .errors import RunError


def _quiet_torchao() -> None:
    logging.getLogger("torchao").setLevel(logging.ERROR)


def fp8_filter(module: nn.Module, name: str, filter_fqns: list[str]) -> bool:
    if any(f in name for f in filter_fqns):
        return False
    if not isinstance(module, nn.Linear):
        return False
    w = module.weight
    return w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0


def torchao_config(spec):
    _quiet_torchao()
    from torchao.float8 import Float8LinearConfig

    if spec.recipe_name in (None, "tensorwise"):
        return Float8LinearConfig(enable_fsdp_float8_all_gather=spec.enable_fsdp_float8_all_gather,
                                  force_recompute_fp8_weight_in_bwd=spec.force_recompute_fp8_weight_in_bwd,
                                  emulate=spec.emulate)
    cfg = Float8LinearConfig.from_recipe_name(spec.recipe_name)
    if spec.recipe_name == "rowwise":
        import torch._inductor.config as ic

        ic.emulate_precision_casts = True
    if spec.emulate:
        cfg = dataclasses.replace(cfg, emulate=True)
    return cfg


def has_fp8_hardware() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def convert_fp8(model: nn.Module, spec) -> list[str]:
    """Swap eligible linears for Float8Linear in place; returns the converted FQNs."""
    cfg = torchao_config(spec)
    if not cfg.emulate and not has_fp8_hardware():
        raise RunError("FP8 needs an SM 8.9+ GPU (H100 or newer), or emulation", key="fp8.emulate", found=False,
                       hint="--set fp8.emulate=true for a (slow, numerically equivalent) emulated run, or "
                            "fp8.enabled=false")
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    filt = list(spec.filter_fqns)
    try:
        convert_to_float8_training(model, config=cfg, module_filter_fn=lambda m, n: fp8_filter(m, n, filt))
    except Exception as e:  # noqa: BLE001 - report clearly instead of 0.7's silent bf16 fallback
        raise RunError(f"torchao float8 conversion failed: {type(e).__name__}: {e}", key="fp8",
                       hint="set fp8.enabled=false, or add the failing modules to fp8.filter_fqns") from None
    return [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]


def wants_precompute(spec, dp_shard: int) -> bool:
    return (spec is not None and spec.precompute_float8_dynamic_scale_for_fsdp
            and spec.recipe_name in (None, "tensorwise") and spec.enable_fsdp_float8_all_gather and dp_shard > 1)


def precompute_scales(model: nn.Module) -> None:
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    precompute_float8_dynamic_scale_for_fsdp(model)
