"""``distributed`` and ``dist_env``: strategy, parallel sizes against the world size, mixed precision, activation
checkpointing, process-group backend."""

from __future__ import annotations

from ...automodel.schema import schema, strategy_keys
from .check import FAILED, _Ctx, _bool, _d, _dtype, _float, _int, _section, _unknown
from .types import DistSpec


def _dist(cfg: dict, ctx: _Ctx, world_size: int) -> DistSpec:
    sec = dict(_section(cfg, "distributed", ctx) or {})
    strategy = str(sec.get("strategy", _d("distributed.strategy"))).lower()
    if strategy in ("megatron_fsdp", "megatron-fsdp", "mfsdp"):
        raise ctx.err("distributed.strategy", "megatron_fsdp is not implemented by the bundled runtime",
                      found=strategy, hint="use strategy: fsdp2 (same sharding semantics for training)")
    if strategy not in ("fsdp2", "ddp"):
        raise ctx.err("distributed.strategy", "unknown strategy", expected="fsdp2, ddp or megatron_fsdp",
                      found=strategy)
    _unknown(sec, strategy_keys(strategy), ctx, "distributed", what=f"not an option of strategy {strategy!r}")
    sizes = {}
    for key in ("tp_size", "pp_size", "cp_size", "ep_size", "dp_size", "dp_replicate_size"):
        v = sec.get(key)
        dflt = _d(f"distributed.{key}") if key != "dp_replicate_size" else None  # None: no HSDP
        sizes[key] = dflt if v is None else ctx.value(_int, v, f"distributed.{key}", dflt, minimum=1)
    tp, pp, cp, ep = sizes["tp_size"], sizes["pp_size"], sizes["cp_size"], sizes["ep_size"]
    unimplemented = []
    if pp > 1:
        if sec.get("pipeline") is None:
            unimplemented.append(ctx.err("distributed.pp_size", "pp_size > 1 needs a `distributed.pipeline` block in "
                                         "Automodel 0.7", found=pp))
        else:
            unimplemented.append(ctx.err("distributed.pp_size", "pipeline parallelism is not implemented by the bundled "
                                         "runtime", expected=1, found=pp,
                                         hint="--set distributed.pp_size=1 (FSDP2 over the freed ranks)"))
    if cp > 1:
        unimplemented.append(ctx.err("distributed.cp_size", "context parallelism is not implemented by the bundled "
                                     "runtime", expected=1, found=cp, hint="--set distributed.cp_size=1"))
    if ep > 1:
        unimplemented.append(ctx.err("distributed.ep_size", "expert parallelism (MoE) is not implemented by the bundled "
                                     "runtime", expected=1, found=ep, hint="--set distributed.ep_size=1"))
    if strategy == "ddp" and tp > 1:
        unimplemented.append(ctx.err("distributed.tp_size", "strategy ddp has no tensor parallelism in Automodel 0.7",
                                     found=tp))
    for e in unimplemented:
        ctx.add(e)
    if unimplemented:  # the mesh checks below would only repeat these
        return FAILED
    if world_size % (tp * cp * pp) != 0:
        raise ctx.err("distributed.tp_size",
                      f"world size {world_size} (--nproc-per-node) is not divisible by tp_size*cp_size*pp_size "
                      f"= {tp * cp * pp}", expected=f"a divisor of {world_size}", found=tp * cp * pp,
                      hint=f"--set distributed.tp_size=1, or run with --nproc-per-node {tp * cp * pp} (or a multiple)")
    dp = world_size // (tp * cp * pp)
    if sizes["dp_size"] is not None and sizes["dp_size"] != dp:
        ctx.add(ctx.err("distributed.dp_size", f"dp_size must equal world_size/(tp*cp*pp) = {dp}",
                        expected=dp, found=sizes["dp_size"], hint="set dp_size: null to derive it"))
    rep = sizes["dp_replicate_size"] or 1
    if rep > 1:
        if strategy != "fsdp2":
            ctx.add(ctx.err("distributed.dp_replicate_size", "HSDP (dp_replicate_size > 1) needs strategy fsdp2",
                            found=rep))
        elif dp % rep != 0 or rep >= dp:
            ctx.add(ctx.err("distributed.dp_replicate_size", f"must divide dp_size={dp} and be smaller than it",
                            found=rep))
    if sec.get("tp_plan") is not None:
        ctx.add(ctx.err("distributed.tp_plan", "custom TP plans are not supported by the bundled runtime (it uses "
                        "its Llama-family plan)", found=sec["tp_plan"], hint="remove tp_plan"))
    if sec.get("enable_async_tensor_parallel"):
        ctx.note("distributed.enable_async_tensor_parallel is ignored (plain DTensor TP).")
    if sec.get("patch_is_packed_sequence"):
        ctx.note("distributed.patch_is_packed_sequence is ignored (it only patches transformers' flash-attention "
                 "packing check).")
    ac = sec.get("activation_checkpointing", _d("distributed.activation_checkpointing"))
    if isinstance(ac, str):
        low = ac.lower().replace("-", "_")
        if low in ("false", "off", "none", "disabled", "no"):
            ac = False
        elif low in ("true", "on", "full", "enabled", "yes"):
            ac = True
        elif low == "selective":
            ctx.note("activation_checkpointing: selective runs as full activation checkpointing.")
            ac = True
        else:
            ctx.add(ctx.err("distributed.activation_checkpointing", "not a checkpointing mode",
                            expected="true/false/full/selective", found=ac))
    elif ac is None:
        ac = False
    elif not isinstance(ac, bool):
        ctx.add(ctx.err("distributed.activation_checkpointing", "not a checkpointing mode", found=ac))

    # mp_policy: 0.7's default MixedPrecisionPolicy (defaults.yaml; output None, cast_forward_inputs False)
    mp0 = _d("distributed.mp_policy")
    param_dtype, reduce_dtype, output_dtype = mp0.get("param_dtype"), mp0.get("reduce_dtype"), mp0.get("output_dtype")
    cast_inputs = bool(mp0.get("cast_forward_inputs", False))
    mp = sec.get("mp_policy")
    if mp is not None:
        if not isinstance(mp, dict):
            raise ctx.err("distributed.mp_policy", "must be a mapping", found=mp)
        _unknown(mp, frozenset(schema()["mp_policy_fields"]), ctx, "distributed.mp_policy",
                 what="a MixedPrecisionPolicy field")
        # A YAML-given policy starts from MixedPrecisionPolicy()'s own defaults (all None) as 0.7 does.
        param_dtype, reduce_dtype, output_dtype = (
            ctx.value(_dtype, mp.get(k), f"distributed.mp_policy.{k}", None)
            for k in ("param_dtype", "reduce_dtype", "output_dtype"))
        cast_inputs = ctx.value(_bool, mp.get("cast_forward_inputs", False), "distributed.mp_policy.cast_forward_inputs",
                                False)
    autocast = ctx.value(_dtype, sec.get("autocast_dtype"), "distributed.autocast_dtype", None)
    dist_env = _section(cfg, "dist_env", ctx) or {}
    backend = str(dist_env.get("backend", _d("dist_env.backend")))
    timeout = ctx.value(_float, dist_env.get("timeout_minutes", _d("dist_env.timeout_minutes")),
                        "dist_env.timeout_minutes", 1.0)
    if strategy == "ddp":
        param_dtype = reduce_dtype = output_dtype = None
    return DistSpec(
        strategy=strategy, world_size=world_size, tp=tp, cp=cp, pp=pp, dp=dp, dp_replicate=rep,
        sequence_parallel=ctx.value(_bool, sec.get("sequence_parallel", _d("distributed.sequence_parallel")),
                                    "distributed.sequence_parallel", False) if strategy == "fsdp2" else False,
        param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=output_dtype,
        cast_forward_inputs=cast_inputs, autocast_dtype=autocast, activation_checkpointing=bool(ac),
        defer_fsdp_grad_sync=ctx.value(_bool, sec.get("defer_fsdp_grad_sync", _d("distributed.defer_fsdp_grad_sync")),
                                       "distributed.defer_fsdp_grad_sync", True),
        reshard_after_forward=sec.get("reshard_after_forward"),
        enable_compile=bool(sec.get("enable_compile", False)),
        offload=sec.get("offload_policy") is not None,
        backend=backend, timeout_minutes=timeout,
    )
