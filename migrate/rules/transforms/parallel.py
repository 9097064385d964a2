"""Parallelism rows (PAR*): pipeline, data parallelism and the per-rank micro-batch."""

from __future__ import annotations

from typing import Any

from ..context import Ctx, Registry, Result, nemo_default
from .model import model_info

transform = Registry()


@transform
def pipeline(ctx: Ctx) -> Result | None:
    pp = int(ctx.v("trainer.strategy.pipeline_model_parallel_size", nemo_default("MegatronStrategy.pipeline_model_parallel_size")) or 1)
    ctx.set("distributed.pp_size", pp, "trainer.strategy.pipeline_model_parallel_size")
    if pp == 1:
        return None
    vpp = ctx.v("trainer.strategy.virtual_pipeline_model_parallel_size")
    gbs, mbs, dp = ctx.v("data.global_batch_size"), ctx.v("data.micro_batch_size"), ctx.dp
    per_rank = gbs // dp
    n_micro = per_rank // mbs
    block: dict[str, Any] = {
        "pp_schedule": "interleaved1f1b" if vpp else "1f1b",
        "pp_microbatch_size": mbs,
        "pp_seq_len": ctx.v("data.seq_length"),
    }
    shape = model_info(ctx)["shape"]
    if vpp and shape:
        stages = pp * vpp
        if shape["layers"] % stages == 0:
            block["layers_per_stage"] = shape["layers"] // stages
    ctx.set("distributed.pipeline", block, "trainer.strategy.pipeline_model_parallel_size", "trainer.strategy.virtual_pipeline_model_parallel_size", "data.micro_batch_size")
    ctx.set("step_scheduler.local_batch_size", per_rank, "data.global_batch_size", "data.micro_batch_size",
            note=f"= GBS/DP: {n_micro} pipeline micro-batches of {mbs}")
    if n_micro < pp:
        kn = ctx.k("data.global_batch_size")
        ctx.diags.error("NM510", f"with PP {pp}, Automodel needs at least {pp} pipeline micro-batches per step "
                        f"(local_batch_size // pp_microbatch_size >= pp_size) but NeMo's GBS/(MBS x DP) = {gbs}/({mbs} x {dp}) = {n_micro}",
                        hint="raise data.global_batch_size or lower the pipeline size", **(kn.prov.where() if kn else {}))
        return Result("unsupported", "too few micro-batches per step for Automodel's pipeline schedule")
    return Result("approximate", f"same pipeline micro-batching ({n_micro} micro-batches of {mbs} per data-parallel rank and step, "
                  f"no gradient accumulation), but Automodel's {block['pp_schedule']} schedule implementation differs from Megatron's"
                  + (" (virtual stages via layers_per_stage)" if vpp else ""))


@transform
def data_parallel(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.strategy.fsdp") != "megatron":
        ctx.set("distributed.strategy", "fsdp2", "trainer.strategy._target_")
    ctx.set("distributed.dp_size", None, "trainer.strategy._target_", note="none = world / (tp*cp*pp)")
    return None


@transform
def megatron_fsdp(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.strategy.fsdp") == "megatron":
        ctx.set("distributed.strategy", "megatron_fsdp", "trainer.strategy.fsdp")
        # MegatronFSDPConfig has no sequence_parallel (0.7 rejects the key); it only shards activations, the math is the same
        ctx.unset("distributed.sequence_parallel")
        return Result("approximate", "Megatron custom FSDP maps to Automodel's megatron_fsdp strategy (its own bucketing and overlap "
                      "settings; it has no sequence_parallel, which only changes activation memory)")
    return None


@transform
def local_batch(ctx: Ctx) -> Result | None:
    pp = int(ctx.v("trainer.strategy.pipeline_model_parallel_size", nemo_default("MegatronStrategy.pipeline_model_parallel_size")) or 1)
    if pp > 1:
        return Result("approximate", "with pipeline parallelism the micro-batch becomes distributed.pipeline.pp_microbatch_size (PAR002)")
    ctx.set("step_scheduler.local_batch_size", ctx.v("data.micro_batch_size"), "data.micro_batch_size")
    return None
