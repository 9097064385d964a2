"""The entry point: every section reader in order (the order of the reported errors), then the normalised spec.
Also the top-level sections that the runtime does not implement or read."""

from __future__ import annotations

from ...automodel.schema import schema, top_level
from .check import FAILED, ConfigErrors, _Ctx, _finite
from .data import _data
from .dist import _dist
from .model import _fp8, _model, _peft, _tokenizer
from .train import _ckpt, _clip, _compat, _compile, _grad_acc, _loss, _lr, _optim, _seed, _step
from .types import Spec, StepSpec


def resolve(cfg: dict, opts, *, file: str, check_files: bool = True, lines: dict[str, str] | None = None) -> Spec:
    """Check the effective config for the runtime and return the normalised spec.  Every problem is found before
    anything is raised: one RunError for a single problem, else :class:`ConfigErrors` listing all of them.
    ``lines`` maps dotted keys to where they were written (``file:line``), so that errors point at the line."""
    ctx = _Ctx(file, lines)
    world = int(opts.nproc_per_node)
    _finite(cfg, ctx)
    seed = ctx.section(_seed, cfg, ctx)
    ctx.section(_unsupported_sections, cfg, ctx)
    step = ctx.section(_step, cfg, ctx)
    dist = ctx.section(_dist, cfg, ctx, world)
    ga = ctx.section(_grad_acc, step, dist, ctx) if FAILED not in (step, dist) else FAILED
    model = ctx.section(_model, cfg, ctx, opts)
    tok = ctx.section(_tokenizer, cfg, ctx, model) if model is not FAILED else FAILED
    peft = ctx.section(_peft, cfg, ctx)
    fp8 = ctx.section(_fp8, cfg, ctx)
    if fp8 not in (None, FAILED) and dist is not FAILED and dist.tp > 1:
        ctx.add(ctx.err("fp8.enabled", "FP8 with tensor parallelism is not implemented by the bundled runtime",
                        hint="--set distributed.tp_size=1 or fp8.enabled=false"))
    compat = ctx.section(_compat, cfg, ctx)
    if compat is not FAILED and compat.lora_tied_a and peft is None:
        ctx.add(ctx.err("nemo_compat.lora_tied_a", "needs a peft section (it ties LoRA A matrices)"))
    loss = ctx.section(_loss, cfg, ctx)
    optim = ctx.section(_optim, cfg, ctx)
    lr = ctx.section(_lr, cfg, ctx)
    max_norm = ctx.section(_clip, cfg, ctx)
    data = ctx.section(_data, cfg, ctx, lbs=step["local_batch_size"] if step is not FAILED else 1,
                       attn=model.attn_implementation if model is not FAILED else None, check_files=check_files)
    ckpt = ctx.section(_ckpt, cfg, ctx, check_files=check_files)
    compile_ = ctx.section(_compile, cfg, ctx)
    if ctx.errors:
        raise ctx.errors[0] if len(ctx.errors) == 1 else ConfigErrors(ctx.errors)
    if ckpt.model_save_format == "torch_save":
        ctx.note("checkpoint.model_save_format torch_save: weights are written as safetensors (HF layout).")
    train, validation = data
    return Spec(config_path=file, seed=seed, model=model, tokenizer=tok, peft=peft, fp8=fp8, dist=dist,
                step=StepSpec(grad_acc_steps=ga, **step), loss_ignore_index=loss[0], loss_fp32_upcast=loss[1],
                optim=optim, lr_scheduler=lr, max_grad_norm=max_norm, train=train, validation=validation, ckpt=ckpt,
                compat=compat, compile=compile_, notes=ctx.notes)


def _unsupported_sections(cfg: dict, ctx: _Ctx) -> None:
    q = cfg.get("quantization")
    if isinstance(q, dict) and (q.get("load_in_4bit") or q.get("load_in_8bit")):
        raise ctx.err("quantization", "BitsAndBytes QLoRA is not implemented by the bundled runtime",
                      hint="remove the quantization section")
    qat = cfg.get("qat")
    if isinstance(qat, dict) and qat.get("enabled"):
        raise ctx.err("qat.enabled", "QAT is not implemented by the bundled runtime", found=True)
    for name in ("freeze_config", "domain_mixture", "neftune", "tool_call_eval"):
        if cfg.get(name) not in (None, {}, False):
            raise ctx.err(name, "this section is not implemented by the bundled runtime", hint=f"remove `{name}`")
    v = cfg.get("comet")
    if isinstance(v, dict) and v.get("enable", True) is not False:
        ctx.note("comet: not logged by the bundled runtime (wandb/mlflow/tensorboard sections and RUN_DIR/metrics.jsonl are).")
    if cfg.get("benchmark") is not None or str(cfg.get("recipe", "")).endswith("BenchmarkingRecipeForNextTokenPrediction"):
        ctx.note("benchmark recipe: run as the fine-tune loop (benchmark.* settings are ignored; see metrics.jsonl).")
    if cfg.get("rng") is not None:
        ctx.note("rng: ignored by 0.7's train_ft (the top-level seed is used).")
    known = top_level() | set(schema()["ours"])
    for k in sorted(cfg, key=str):
        if k not in known and not str(k).startswith("validation_dataset"):
            ctx.note(f"top-level section `{k}` is not read by Automodel 0.7's fine-tune recipe; ignored.")
