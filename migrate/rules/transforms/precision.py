"""Precision and FP8 rows (PRC*, FP8*)."""

from __future__ import annotations

from ..context import Ctx, Registry, Result, nemo_default
from .model import model_info
from .peft import _family_map

transform = Registry()


@transform
def precision(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.precision") not in (None,):
        return Result("unsupported", f"trainer.precision={ctx.v('trainer.precision')!r}: NeMo Megatron jobs set precision through the plugin")
    plugins = ctx.node("trainer.plugins")
    if plugins is None or plugins.cls != "MegatronMixedPrecision":
        ctx.set("model.dtype", "float32")
        return Result("approximate", "no MegatronMixedPrecision plugin: fp32 assumed")
    p = ctx.v("trainer.plugins.precision")
    if p == "bf16-mixed":
        if ctx.lora:
            ctx.set("model.dtype", "bfloat16", "trainer.plugins.precision", "trainer.plugins.params_dtype")
            return Result("exact", "bf16 weights and compute for the frozen base, as NeMo's params_dtype=bf16 (master weights: see OPT007)")
        ctx.set("model.dtype", "float32", "trainer.plugins.precision", note="fp32 master weights; FSDP2 computes in bf16")
        return None
    if p == "32":
        ctx.set("model.dtype", "float32", "trainer.plugins.precision")
        ctx.set("distributed.mp_policy", {"param_dtype": "float32", "reduce_dtype": "float32"}, "trainer.plugins.precision")
        return Result("exact", "fp32 everywhere")
    if p == "16-mixed":
        ctx.set("model.dtype", "float16" if ctx.lora else "float32", "trainer.plugins.precision")
        ctx.set("distributed.mp_policy", {"param_dtype": "float16", "reduce_dtype": "float32"}, "trainer.plugins.precision")
        return Result("approximate", "fp16 compute without NeMo's dynamic loss scaling (Automodel has none); prefer bf16")
    return Result("unsupported", f"precision {p!r}")


@transform
def grad_reduce(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.plugins.grad_reduce_in_fp32", nemo_default("MegatronMixedPrecision.grad_reduce_in_fp32")):
        return None
    if ctx.targets.get("distributed.mp_policy"):
        return Result("dropped", "the precision policy above decides the reduce dtype")
    ctx.set("distributed.mp_policy", {"param_dtype": "bfloat16", "reduce_dtype": "bfloat16"}, "trainer.plugins.grad_reduce_in_fp32")
    return None


def _fp8_on(ctx: Ctx) -> bool:
    return ctx.v("trainer.plugins.fp8") not in (None, "", False)


def _adapted_leaves(ctx: Ctx) -> list[str]:
    pats = (ctx.targets.get("peft.target_modules").value if ctx.targets.get("peft.target_modules") else []) or []
    return sorted({p.rsplit(".", 1)[-1] for p in pats})


def _all_linear_leaves(ctx: Ctx) -> list[str]:
    return sorted({h.rsplit(".", 1)[-1] for e in _family_map(ctx).values() for h in e["hf"]})


@transform
def fp8(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        if ctx.v("trainer.plugins.fp8_recipe") not in (None, "delayed"):
            return Result("dropped", "fp8_recipe without fp8 has no effect")
        return None
    fmt = ctx.v("trainer.plugins.fp8")
    rec = ctx.v("trainer.plugins.fp8_recipe") or nemo_default("MegatronMixedPrecision.fp8_recipe")
    src = ("trainer.plugins.fp8", "trainer.plugins.fp8_recipe")
    filters = ["lm_head"]
    L = (model_info(ctx)["shape"] or {}).get("layers")
    if ctx.v("trainer.plugins.first_last_layers_bf16"):
        start = int(ctx.v("trainer.plugins.num_layers_at_start_in_bf16", nemo_default("MegatronMixedPrecision.num_layers_at_start_in_bf16")) or 0)
        end = int(ctx.v("trainer.plugins.num_layers_at_end_in_bf16", nemo_default("MegatronMixedPrecision.num_layers_at_end_in_bf16")) or 0)
        filters += [f"model.layers.{i}." for i in range(start)]
        if L:
            filters += [f"model.layers.{i}." for i in range(L - end, L)]
    gather = bool(ctx.v("trainer.plugins.fp8_param_gather") or ctx.v("trainer.plugins.fp8_params"))
    reasons = []
    if rec == "delayed":
        reasons.append("NeMo's TE delayed scaling (amax history) becomes torchao's dynamic tensorwise scaling, which TE's "
                       "delayed recipe cannot be made equal to (torchao removed delayed scaling, ao PR #1753)")
    elif rec == "tensorwise":
        reasons.append("TE current (per-tensor) scaling vs torchao dynamic tensorwise scaling: same scheme, different kernels")
    elif rec == "blockwise":
        reasons.append("TE 128x128 block scaling has no torchao float8 training recipe; rowwise is the nearest")
    else:
        ctx.set("fp8.enabled", False, *src)
        return Result("unsupported", f"fp8_recipe={rec!r} (MXFP8 needs Blackwell GPUs) has no torchao float8 equivalent")
    if fmt == "e4m3":
        reasons.append("'e4m3' uses E4M3 for gradients too; torchao uses E5M2 for gradients (as 'hybrid')")
    recipe_name = "rowwise" if rec == "blockwise" else "tensorwise"
    status = "approximate"
    enabled = True
    if ctx.lora:
        adapted = _adapted_leaves(ctx)
        rest = [x for x in _all_linear_leaves(ctx) if x not in adapted]
        filters += adapted
        evidence = ("Automodel 0.7.0 converts LoRA-patched linears to Float8Linear and drops the adapters "
                    "(measured on H100: trainable parameters 41,943,040 -> 0, then 'optimizer received no trainable parameters')")
        if not rest:
            enabled = False
            status = "unsupported"
            reasons.insert(0, f"FP8 + LoRA: {evidence}; every linear layer carries an adapter, so FP8 is switched off here. "
                              "`nemo-migrate run` keeps FP8 on the frozen base with bf16 adapters")
        else:
            reasons.insert(0, f"FP8 + LoRA: {evidence}; the adapted projections ({', '.join(adapted)}) are kept out of FP8 "
                              f"with filter_fqns, FP8 stays on {', '.join(rest)}")
        ctx.note("warning", "FP8 with LoRA cannot run as NeMo ran it on Automodel 0.7.0: see FP8001 in the report. "
                 "To keep FP8 on the frozen base weights with bf16 adapters, train the emitted config with the bundled runtime: "
                 "`nemo-migrate run CONFIG --set fp8.enabled=true --set \"fp8.filter_fqns=['lm_head']\"`.")
    ctx.set("fp8.enabled", enabled, *src)
    ctx.set("fp8.recipe_name", recipe_name, *src)
    ctx.set("fp8.enable_fsdp_float8_all_gather", gather and recipe_name == "tensorwise", "trainer.plugins.fp8_param_gather", "trainer.plugins.fp8_params")
    ctx.set("fp8.precompute_float8_dynamic_scale_for_fsdp", gather and recipe_name == "tensorwise", "trainer.plugins.fp8_param_gather", "trainer.plugins.fp8_params")
    ctx.set("fp8.filter_fqns", filters, *src, "trainer.plugins.first_last_layers_bf16")
    ctx.set("fp8.emulate", False, *src)
    if ctx.v("trainer.plugins.first_last_layers_bf16") and not L:
        reasons.append("the last layers' names need the model's layer count, which is unknown here: only the first layers are kept in bf16")
    return Result(status, "; ".join(reasons))


@transform
def fp8_delayed_knobs(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        return None
    if ctx.lora and ctx.targets.get("fp8.enabled") and ctx.targets["fp8.enabled"].value is False:
        return Result("unsupported", "FP8 is off in the emitted config (see FP8001)")
    if ctx.v("trainer.plugins.fp8_wgrad") is False:
        return Result("approximate", "fp8_wgrad=False (weight gradients in higher precision): torchao's nearest is recipe rowwise_with_gw_hp, not emitted")
    return Result("approximate", "delayed-scaling settings (margin, amax history and algorithm) have no dynamic-scaling equivalent; "
                  "torchao computes each scale from the current tensor")


@transform
def fp8_param_gather(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        return None
    if ctx.targets.get("fp8.enabled") and ctx.targets["fp8.enabled"].value is False:
        return Result("unsupported", "FP8 is off in the emitted config (see FP8001)")
    if ctx.v("trainer.plugins.fp8_param_gather") or ctx.v("trainer.plugins.fp8_params"):
        return Result("approximate", "NeMo keeps FP8 parameter copies and all-gathers them in FP8; FSDP2 float8 all-gather "
                      "casts the sharded bf16 weights to FP8 before gathering (same traffic, bf16 master copy)")
    return None


@transform
def fp8_bf16_layers(ctx: Ctx) -> Result | None:
    if not ctx.v("trainer.plugins.first_last_layers_bf16"):
        return None
    if not _fp8_on(ctx):
        return Result("dropped", "no FP8")
    return Result("exact", "the first/last transformer layers are kept out of FP8 with filter_fqns (FP8001)")
