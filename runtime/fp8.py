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


def torchao_config(spec, *, fsdp: bool = True):
    """``fsdp=False``: the weights are never FSDP-sharded (replicated LoRA base), so no float8 all-gather."""
    _quiet_torchao()
    from torchao.float8 import Float8LinearConfig

    if spec.recipe_name in (None, "tensorwise"):
        return Float8LinearConfig(enable_fsdp_float8_all_gather=spec.enable_fsdp_float8_all_gather and fsdp,
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


_FROZEN_CLS = None


def _frozen_class():
    """Float8Linear for a frozen weight (LoRA base): torchao's backward always computes grad_weight (two casts and
    a third GEMM per linear, then thrown away); here the backward computes grad_input only, and where the weight
    is whole on every rank (one process, or the replicated LoRA base) the frozen weight is cast to float8 once and
    kept, in both layouts ``torch._scaled_mm`` wants (it never changes): W^T column-major for the forward and W
    column-major for the input gradient, so no step casts or transposes a frozen weight again (torchao's mm would
    copy a row-major second operand to column-major on every backward). The bf16 weight stays (state dicts, merged
    export)."""
    global _FROZEN_CLS
    if _FROZEN_CLS is not None:
        return _FROZEN_CLS
    from torchao.float8.config import ScalingGranularity
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole
    from torchao.float8.distributed_utils import tensor_already_casted_to_fp8

    from torchao.float8.float8_training_tensor import Float8TrainingTensor
    from torchao.float8.float8_utils import EPS

    def _bits_and_scale(x: torch.Tensor, dtype: torch.dtype):
        # torchao's tensorwise dynamic scaling (amax in float64 for the scale, saturated cast), as one fused kernel
        amax = x.abs().amax().to(torch.float64)
        scale = (torch.finfo(dtype).max / torch.clamp(amax, min=EPS)).to(torch.float32)
        fmax = torch.finfo(dtype).max
        return (x.to(torch.float32) * scale).clamp(-fmax, fmax).to(dtype), scale

    fused = {}
    from torch.distributed.tensor import DTensor

    def cast(x: torch.Tensor, dtype: torch.dtype, mm_config, role):
        if x.device.type != "cuda" or isinstance(x, DTensor):
            return hp_tensor_to_float8_dynamic(x, dtype, mm_config, gemm_input_role=role)
        fn = fused.get("fn")
        if fn is None:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            fn = fused["fn"] = torch.compile(_bits_and_scale, dynamic=False)
        bits, scale = fn(x, dtype)
        return Float8TrainingTensor(bits, scale, x.dtype, linear_mm_config=mm_config, gemm_input_role=role)

    class _FrozenMM(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w_t, mm_config, config, cached):
            w8_bwd = None
            if cached is not None:
                w8, w8_bwd = cached
            elif tensor_already_casted_to_fp8(w_t):  # FSDP2 float8 all-gather already produced it
                w8 = w_t
            else:
                w8 = cast(w_t, config.cast_config_weight.target_dtype, mm_config, GemmInputRole.WEIGHT)
            x8 = cast(x, config.cast_config_input.target_dtype, mm_config, GemmInputRole.INPUT)
            ctx.w8, ctx.w8_bwd, ctx.mm_config, ctx.config = w8, w8_bwd, mm_config, config
            shape = x8.shape
            out = torch.mm(x8.reshape(-1, shape[-1]), w8)
            return out.reshape(*shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            shape = grad_out.shape
            g8 = cast(grad_out.reshape(-1, shape[-1]), ctx.config.cast_config_grad_output.target_dtype, ctx.mm_config,
                      GemmInputRole.GRAD_OUTPUT)
            gi = torch.mm(g8, ctx.w8.t() if ctx.w8_bwd is None else ctx.w8_bwd)
            return gi.reshape(*shape[:-1], gi.shape[-1]), None, None, None, None

    class FrozenFloat8Linear(Float8Linear):
        cache_weight = False

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if self.weight.requires_grad:
                return super().forward(input)
            if torch.is_autocast_enabled():
                input = input.to(torch.get_autocast_gpu_dtype())
            cached = None
            if self.cache_weight and not tensor_already_casted_to_fp8(self.weight):
                cached = self.__dict__.get("_w8")
                if cached is None:
                    cached = self.__dict__["_w8"] = self.cached_fp8_weight()
            out = _FrozenMM.apply(input, self.weight.t(), self.linear_mm_config, self.config, cached)
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
            return out

        @torch.no_grad()
        def cached_fp8_weight(self):
            """(W^T for the forward, W for the input gradient): one float8 cast, both column-major, one scale."""
            w8 = cast(self.weight.t(), self.config.cast_config_weight.target_dtype, self.linear_mm_config,
                      GemmInputRole.WEIGHT)
            w8_bwd = Float8TrainingTensor(w8._data.contiguous().t(), w8._scale, w8._orig_dtype,
                                          linear_mm_config=self.linear_mm_config, gemm_input_role=GemmInputRole.WEIGHT)
            return w8, w8_bwd

    FrozenFloat8Linear.tensorwise = ScalingGranularity.TENSORWISE
    FrozenFloat8Linear.fp8_cast = staticmethod(cast)
    _FROZEN_CLS = FrozenFloat8Linear
    return _FROZEN_CLS


def convert_fp8(model: nn.Module, spec, *, frozen_base: bool = False, single_process: bool = False,
                replicated: bool = False) -> list[str]:
    """Swap eligible linears for Float8Linear in place; returns the converted FQNs.

    ``frozen_base`` (a LoRA run: the base weights never train): tensorwise linears use the grad-input-only
    backward (FrozenFloat8Linear); ``single_process`` or ``replicated`` (the weights are whole on every rank: the
    replicated LoRA base, parallel.frozen_base_mode) also keeps each weight's float8 copies between steps;
    ``replicated`` turns FSDP's float8 all-gather off (nothing is gathered)."""
    cfg = torchao_config(spec, fsdp=not replicated)
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
    converted = [n for n, m in model.named_modules() if isinstance(m, Float8Linear)]
    if frozen_base and spec.recipe_name in (None, "tensorwise"):
        cls = _frozen_class()
        mods = dict(model.named_modules())
        for n in converted:
            m = mods[n]
            if type(m) is Float8Linear:
                m.__class__ = cls
                m.cache_weight = single_process or replicated
    return converted


def wants_precompute(spec, dp_shard: int) -> bool:
    return (spec is not None and spec.precompute_float8_dynamic_scale_for_fsdp
            and spec.recipe_name in (None, "tensorwise") and spec.enable_fsdp_float8_all_gather and dp_shard > 1)


def precompute_scales(model: nn.Module) -> None:
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    precompute_float8_dynamic_scale_for_fsdp(model)
