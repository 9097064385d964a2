"""The named transforms of mappings/rules.yaml.

Each function receives the rule context (:class:`nemo_migrate.rules.Ctx`), writes Automodel values with ``ctx.set`` and
may refine the row's bucket by returning a :class:`~nemo_migrate.rules.Result`.  Facts are cited in the rows.
"""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from pathlib import Path
from typing import Any

from . import checkpoint, knowledge, recipes, schema
from .ir import Knob, Node
from .rules import Ctx, Result

AUTOMODEL_RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
MODEL_TARGET = "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained"
PEFT_TARGET = "nemo_automodel.components._peft.lora.PeftConfig"
COLUMN_MAPPED = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"
SQUAD = "nemo_automodel.components.datasets.llm.squad.make_squad_dataset"
CHAT = "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset"
MEGATRON = "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining"
MASKED_CE = "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"
NO_DECAY_PATTERN = r"(\.bias|norm\.weight)$"
_HUB_LIKE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\Z")


# ---------------------------------------------------------------------------------------------- helpers

def _mine(ctx: Ctx) -> list[str]:
    return ctx.owned_by(ctx.rule.id) if ctx.rule else []


def _is_default(ctx: Ctx, path: str, value: Any) -> bool:
    parent_path, _, leaf = path.rpartition(".")
    parent = ctx.node(parent_path)
    if parent is not None:
        fs = schema.field_spec(parent, leaf)
        if fs is not None and not fs.required:
            return value == fs.default or (fs.default is None and value in (None, False, 0, [], {}, ""))
    return value in (None, False, 0, [], {}, "")


def model_info(ctx: Ctx) -> dict[str, Any]:
    """The HF model id the job trains, its family and shape: --model > nemo://<id> > a guess from a local path."""
    if "model" in ctx.cache:
        return ctx.cache["model"]
    rinfo = ctx.job.recipe_info or {}
    path = ctx.v("resume.restore_config.path")
    info: dict[str, Any] = {"id": None, "how": None, "restore": path}
    if ctx.job.model_override:
        info.update(id=ctx.job.model_override, how="--model")
    elif isinstance(path, str) and path.startswith("nemo://"):
        info.update(id=path[len("nemo://"):].strip("/"), how="nemo")
    elif isinstance(path, str) and path.startswith("hf://"):
        info.update(id=path[len("hf://"):].strip("/"), how="hf")
    elif isinstance(path, str) and path:
        guess, score = guess_hf_id(path, rinfo.get("hf_id"))
        info.update(id=guess, how="guess", score=score)
        ckpt, info["unreadable"] = _local_checkpoint(path)
        if ckpt is not None:  # the checkpoint is here: convert-checkpoint makes the HF directory the job starts from
            info.update(id=checkpoint.default_output(path), how="local", guessed=guess, arch=ckpt.arch, known=checkpoint.shape(ckpt))
    elif rinfo.get("hf_id"):
        info.update(id=rinfo["hf_id"], how="recipe")
    models = knowledge.models()
    m = models["models"].get(info.get("guessed") or info["id"] or "", {})
    info["family"] = m.get("family") or rinfo.get("family") or "llama"
    shape = m.get("shape")
    if shape is None and rinfo.get("hf_id") in models["models"]:
        shape = models["models"][rinfo["hf_id"]].get("shape")
    info["shape"] = models["llama_shapes"].get(shape) if shape else None
    if info.get("known"):  # the checkpoint's own family and shape
        info["family"], info["shape"] = info["known"]
    ctx.cache["model"] = info
    return info


def _local_checkpoint(path: str) -> tuple[Any, str | None]:
    """The NeMo 2 model checkpoint at ``path`` when it is readable on this machine and convertible, else why not."""
    if not checkpoint.looks_like_checkpoint(path):
        return None, "not a NeMo 2 checkpoint directory on this machine (it usually lives on the cluster)"
    ckpt, diags = checkpoint.inspect(path)
    if diags.has_errors or ckpt is None:
        return None, "convert-checkpoint cannot convert it: " + (diags.errors[0].message if diags.errors else "unreadable")
    if ckpt.peft is not None:
        return None, "it is a LoRA adapter checkpoint, not a model"
    return ckpt, None


def _norm_name(s: str) -> str:
    s = s.rstrip("/").rsplit("/", 1)[-1].lower()
    s = re.sub(r"\.(nemo|ckpt|tar)$", "", s)
    s = re.sub(r"(_v\d+(\.\d+)*|-v\d+(\.\d+)*)$", "", s)
    s = re.sub(r"[-_](nemo|mcore|megatron)(?=$|[-_])", "", s)  # llama-3-8b-instruct-nemo: NeMo's copy of the HF model
    s = re.sub(r"(\d)_(\d)", r"\1.\2", s)
    s = s.replace("_", "-").replace("meta-llama-", "llama-")
    return s


def guess_hf_id(local: str, recipe_hf: str | None) -> tuple[str | None, float]:
    """Best HF id for a local NeMo checkpoint directory name (e.g. llama-3_3-70b-instruct_v0.0.1)."""
    ids = list(knowledge.models()["models"]) + [r["hf_id"] for r in knowledge.recipes().values() if r.get("hf_id")]
    ids = sorted(set(ids))
    parts = [p for p in local.rstrip("/").split("/") if p]
    names = [_norm_name(p) for p in parts[-2:]]  # the file, and the folder it sits in (.../llama-3-8b-instruct-nemo_v1.0/x.nemo)
    best, score = None, 0.0
    for i in ids:
        cand = _norm_name(i)
        sc = max(difflib.SequenceMatcher(None, name, cand).ratio() for name in names) if names else 0.0
        if sc > score:
            best, score = i, sc
    if score < 0.75:
        return recipe_hf, score
    return best, score


# ---------------------------------------------------------------------------------------------- recipe & model

def recipe_key(ctx: Ctx) -> Result | None:
    ctx.set("recipe", AUTOMODEL_RECIPE, "_target_")
    if ctx.job.tree.cls != "finetune":
        return Result("approximate", f"the factory returns {ctx.job.tree.cls}, not llm.finetune; migrated as a fine-tune")
    return None


def model_from_restore(ctx: Ctx) -> Result | None:
    info = model_info(ctx)
    ctx.set("model._target_", MODEL_TARGET)
    path = info["restore"]
    if info["id"] is None:
        kn = ctx.k("resume.restore_config.path")
        if isinstance(path, str) and path:
            ctx.diags.error("NM500", f"the base model is the NeMo checkpoint '{path}', whose Hugging Face model cannot be told from its "
                            "name; Automodel 0.7 loads Hugging Face checkpoints only", key="resume.restore_config.path",
                            hint="pass --model <HF id or local HF directory with the same weights> (export the checkpoint to HF "
                                 "format with NeMo first if it holds weights of your own)", **(kn.prov.where() if kn else {}))
        else:
            ctx.diags.error("NM500", "no base model: the job restores no checkpoint (resume.restore_config.path is not set) "
                            "and no --model was given", hint="pass --model <HF id or local HF directory>", **(kn.prov.where() if kn else {}))
        return Result("unsupported", "no base model to start from")
    if info["how"] == "--model":
        ctx.set("model.pretrained_model_name_or_path", info["id"], note="--model")
        if isinstance(path, str) and path and not path.startswith("nemo://"):
            ctx.note("pre-step", _export_step(path))
            return Result("approximate", f"--model {info['id']} replaces the local NeMo checkpoint {path}: export it to HF format first (see the pre-step) so both start from the same weights")
        if isinstance(path, str) and path.startswith("nemo://") and path[7:] != info["id"]:
            return Result("approximate", f"--model {info['id']} replaces the recipe's {path}")
        return None
    if info["how"] == "local":
        ctx.set("model.pretrained_model_name_or_path", info["id"], "resume.restore_config.path", note=f"{path} converted by the pre-step")
        ctx.note("pre-step", _export_step(path, runnable=True))
        return Result("exact", f"the NeMo 2 {info['arch']} checkpoint {path} is on this machine: `nemo-migrate convert-checkpoint` "
                      f"(run.sh pre-step) converts its own weights to {info['id']}, which the job loads")
    if info["how"] in ("nemo", "hf", "recipe"):
        ctx.set("model.pretrained_model_name_or_path", info["id"], "resume.restore_config.path")
        if info["how"] == "hf":
            kn = ctx.k("resume.restore_config.path")
            ctx.diags.warning("NM501", f"AutoResume accepts only nemo:// paths ('{path}' would fail in NeMo); migrated as HF id {info['id']}",
                              **(kn.prov.where() if kn else {}))
        return None
    # a local NeMo checkpoint: Automodel cannot load it
    kn = ctx.k("resume.restore_config.path")
    ctx.set("model.pretrained_model_name_or_path", info["id"], "resume.restore_config.path", note=f"guessed from {path}")
    ctx.diags.warning(
        "NM502",
        f"restore path '{path}' is a local NeMo {'1.0 (.nemo)' if str(path).endswith('.nemo') else '2'} checkpoint, which Automodel cannot load; "
        f"guessed the HF model '{info['id']}' from its name (similarity {info.get('score', 0):.2f})"
        + (f"; not converted: {info['unreadable']}" if info.get("unreadable") and not str(path).endswith(".nemo") else ""),
        key="resume.restore_config.path",
        hint="if the checkpoint holds weights of your own, export it to HF format (see the report's pre-step) and pass --model <that directory>"
             + ("" if str(path).endswith(".nemo") else ", or convert the job where the checkpoint is readable"),
        **(kn.prov.where() if kn else {}),
    )
    ctx.note("pre-step", _export_step(path))
    rhf = (ctx.job.recipe_info or {}).get("hf_id")
    return Result("approximate", f"local NeMo checkpoint {path}: Automodel loads HF checkpoints only, so the HF id "
                  f"'{info['id']}' was guessed from the directory name" + (f" (the recipe's own id is {rhf})" if rhf and rhf != info["id"] else ""))


def _export_step(path: str, runnable: bool = False) -> str:
    if runnable:  # run.sh / sbatch.sh run it when CONVERT_CHECKPOINT=1
        cmd = checkpoint.command(path, checkpoint.default_output(path))
        return checkpoint.Command(f"convert the NeMo 2 checkpoint to Hugging Face format (once; no NeMo needed, `pip install "
                                  f"'nemo-migrate[runtime]'`): {cmd}   (run.sh / sbatch.sh run it first when CONVERT_CHECKPOINT=1)", cmd.argv)
    if path.endswith(".nemo"):
        out = path[: -len(".nemo")] + "-hf"
        return ("convert the NeMo 1.0 .nemo checkpoint to Hugging Face format with NeMo's converter for its family (once, where NeMo is "
                f"installed), e.g. for Llama:  python NeMo/scripts/checkpoint_converters/convert_llama_nemo_to_hf.py --input_name_or_path "
                f"{path} --output_path {out}  then convert with --model {out}")
    return (f"convert the NeMo 2 checkpoint to Hugging Face format where it is readable (once; no NeMo needed):  "
            f"{checkpoint.command(path, checkpoint.default_output(path))}  (or with NeMo installed: "
            f"python -c \"from nemo.collections import llm; llm.export_ckpt(path='{path}', target='hf', output_path='{path.rstrip('/')}-hf')\")"
            f"  then convert with --model {path.rstrip('/')}-hf")


def restore_extras(ctx: Ctx) -> Result | None:
    if ctx.v("resume.restore_config.adapter_path"):
        return Result("unsupported", "starting from an existing NeMo LoRA adapter: Automodel cannot load NeMo adapters; "
                      "export it with llm.export_ckpt(target='hf-peft') and merge it into the base, or start fresh")
    if ctx.v("resume.restore_config.load_optim_state"):
        return Result("unsupported", "restoring NeMo optimizer state is not possible in Automodel (fresh optimizer)")
    return None


def resume_policy(ctx: Ctx) -> Result | None:
    if ctx.v("resume.resume_from_directory") or ctx.v("resume.resume_from_path"):
        return Result("unsupported", "resuming a NeMo run's own checkpoint: Automodel cannot load NeMo distcp checkpoints")
    if ctx.v("resume.resume_if_exists"):
        return Result("exact", "both continue from the newest checkpoint of the run directory")
    ctx.note("warning", "Automodel resumes from the newest checkpoint in checkpoint.checkpoint_dir; NeMo's fine-tune started "
             "from the base weights at every launch. Use a new checkpoint_dir (or clear it) to start fresh.")
    return None


def tokenizer_source(ctx: Ctx) -> Result | None:
    tok = ctx.v("tokenizer", "model")
    mid = model_info(ctx)["id"]
    if mid:
        ctx.set("dataset.tokenizer.pretrained_model_name_or_path", mid, "tokenizer")
    if tok in ("model", None):
        return None
    if tok == "data":
        return Result("approximate", "tokenizer='data' (the data module's tokenizer); Automodel uses the model's")
    return Result("unsupported", f"a custom tokenizer ({tok!r}); Automodel's dataset.tokenizer takes an HF tokenizer directory")


def loss_reduction(ctx: Ctx) -> Result | None:
    ctx.set("loss_fn._target_", MASKED_CE)
    if ctx.v("model.config.calculate_per_token_loss"):
        return Result("exact", "per-token loss over the whole step in both (Megatron calculate_per_token_loss)")
    gbs, mbs, dp = ctx.v("data.global_batch_size"), ctx.v("data.micro_batch_size"), ctx.dp
    n = gbs // (mbs * dp) if isinstance(gbs, int) and isinstance(mbs, int) and mbs * dp else None
    if n == 1 and dp == 1 and mbs == 1:
        return Result("exact", "one micro-batch of one sample per step on one data-parallel rank: both reductions are the token mean of that sample")
    return None


def activation_checkpointing(ctx: Ctx) -> Result | None:
    g = ctx.v("model.config.recompute_granularity")
    if g in ("full",):
        ctx.set("distributed.activation_checkpointing", True, "model.config.recompute_granularity")
    elif g == "selective":
        ctx.set("distributed.activation_checkpointing", "selective", "model.config.recompute_granularity")
    elif g:
        return Result("approximate", f"recompute_granularity={g!r} mapped to no activation checkpointing")
    return None


def model_dropout(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        v = ctx.v(p)
        if v not in (None, 0, 0.0):
            return Result("unsupported", f"{p}={v}: the dropout of the pretrained architecture comes from its HF config.json")
    return None


# ---------------------------------------------------------------------------------------------- parallelism

def pipeline(ctx: Ctx) -> Result | None:
    pp = int(ctx.v("trainer.strategy.pipeline_model_parallel_size", 1) or 1)
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


def nondefault_unsupported(ctx: Ctx) -> Result | None:
    odd = [(p, ctx.v(p)) for p in _mine(ctx) if not _is_default(ctx, p, ctx.v(p))]
    if odd:
        p, v = odd[0]
        return Result("unsupported", f"{p}={v!r}: {ctx.rule.reason}")
    return Result("dropped", "at its default, nothing to migrate")


def launch_size(ctx: Ctx) -> Result | None:
    ctx.cache["launch"] = {"nproc_per_node": int(ctx.v("trainer.devices", 1)), "nnodes": int(ctx.v("trainer.num_nodes", 1))}
    ctx.written.append("run.sh")
    return None


def data_parallel(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.strategy.fsdp") != "megatron":
        ctx.set("distributed.strategy", "fsdp2", "trainer.strategy._target_")
    ctx.set("distributed.dp_size", None, "trainer.strategy._target_", note="none = world / (tp*cp*pp)")
    return None


def megatron_fsdp(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.strategy.fsdp") == "megatron":
        ctx.set("distributed.strategy", "megatron_fsdp", "trainer.strategy.fsdp")
        # MegatronFSDPConfig has no sequence_parallel (0.7 rejects the key); it only shards activations, the math is the same
        ctx.unset("distributed.sequence_parallel")
        return Result("approximate", "Megatron custom FSDP maps to Automodel's megatron_fsdp strategy (its own bucketing and overlap "
                      "settings; it has no sequence_parallel, which only changes activation memory)")
    return None


def local_batch(ctx: Ctx) -> Result | None:
    pp = int(ctx.v("trainer.strategy.pipeline_model_parallel_size", 1) or 1)
    if pp > 1:
        return Result("approximate", "with pipeline parallelism the micro-batch becomes distributed.pipeline.pp_microbatch_size (PAR002)")
    ctx.set("step_scheduler.local_batch_size", ctx.v("data.micro_batch_size"), "data.micro_batch_size")
    return None


# ---------------------------------------------------------------------------------------------- steps & cadence

def _train_file(ctx: Ctx) -> Path | None:
    root = ctx.v("data.dataset_root")
    if not isinstance(root, str) or not root:
        return None
    p = Path(root)
    if not p.is_absolute() and ctx.job.data_dir:
        p = Path(ctx.job.data_dir) / p
    f = p / "training.jsonl"
    return f if f.is_file() else None


def _count_lines(path: Path, cap: int) -> int:
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
                if n >= cap:
                    break
    return n


def epochs(ctx: Ctx) -> Result | None:
    if ctx.has("nemo1.trainer.sft.max_steps"):
        return Result("exact", "NeMo-Aligner: max_epochs caps the run (N1013 writes num_epochs)")
    ctx.set("step_scheduler.num_epochs", None, "trainer.max_epochs", note="follow max_steps")
    for p in ("trainer.min_epochs", "trainer.min_steps"):
        if ctx.v(p) not in (None, 0):
            return Result("unsupported", f"{p}={ctx.v(p)}: Automodel has no minimum-length setting")
    gbs, steps = ctx.v("data.global_batch_size"), ctx.v("trainer.max_steps")
    f = _train_file(ctx)
    if f is not None and isinstance(gbs, int) and isinstance(steps, int) and steps > 0:
        need = gbs * steps
        n = _count_lines(f, need)
        if n >= need:
            return Result("exact", f"{f.name} has at least GBS x max_steps = {need} samples, so no epoch ends inside the run "
                          "(NeMo's up-sampling and Automodel's epochs read the same samples count)")
        return Result("approximate", f"{f.name} holds {n} samples < GBS x max_steps = {need}: NeMo repeats the file inside steps; "
                      f"Automodel runs ceil(steps / steps-per-epoch) epochs with a short last step in each epoch")
    return None


def val_every(ctx: Ctx) -> Result | None:
    if _validation_off(ctx):
        return Result("exact", "validation is off (limit_val_batches=0), so its cadence is never used (SCH012)")
    v = ctx.v("trainer.val_check_interval")
    if v is None:
        return Result("approximate", "val_check_interval=None validates once per (up-sampled) epoch in NeMo, i.e. at the end; Automodel validates at the last step")
    if isinstance(v, bool):
        return Result("unsupported", f"val_check_interval={v!r}")
    if isinstance(v, int) or (isinstance(v, float) and v > 1 and v.is_integer()):
        ctx.set("step_scheduler.val_every_steps", int(v), "trainer.val_check_interval")
        if ctx.v("trainer.check_val_every_n_epoch") not in (None, 1):
            return Result("approximate", "check_val_every_n_epoch is ignored (one up-sampled epoch in NeMo)")
        return None
    if isinstance(v, float) and 0 < v <= 1:
        steps = ctx.v("trainer.max_steps")
        n = max(1, int(v * math.ceil(steps * 1.005))) if isinstance(steps, int) and steps > 0 else None
        if n:
            ctx.set("step_scheduler.val_every_steps", n, "trainer.val_check_interval", "trainer.max_steps")
        return Result("approximate", f"val_check_interval={v} is a fraction of NeMo's up-sampled epoch (~max_steps x 1.005 steps): every {n} steps")
    return Result("unsupported", f"val_check_interval={v!r}")


def _validation_off(ctx: Ctx) -> bool:
    v = ctx.v("trainer.limit_val_batches")
    return v == 0 and not isinstance(v, bool)


def validation_off(ctx: Ctx) -> Result | None:
    if _validation_off(ctx):
        for path in ("validation_dataset", "validation_dataloader", "step_scheduler.val_every_steps"):
            ctx.unset(path)
    return None


def limit_val(ctx: Ctx) -> Result | None:
    v = ctx.v("trainer.limit_val_batches")
    if v is None or v == 1.0 or v is True:
        return None
    if _data_kind(ctx) == "megatron":
        return Result("exact", "sizes the Megatron validation split (validation_dataset.num_val_samples, DAT015)")
    if (_data_kind(ctx) == "chat" or ctx.v("data.chat")) and v != 0:
        # ChatDatasetConfig has no sample limit (0.7 rejects limit_dataset_samples there): validation reads the whole file
        return Result("approximate", f"limit_val_batches={v}: Automodel 0.7's ChatDataset has no sample limit, so each validation "
                      "reads the whole validation file (the validation loss is averaged over more samples; training is the same)")
    gbs = ctx.v("data.global_batch_size")
    if isinstance(v, int) and not isinstance(v, bool):
        if v == 0:
            return Result("exact", "limit_val_batches=0 switches validation off in both (SCH012 leaves out the validation sections)")
        ctx.set("validation_dataset.limit_dataset_samples", v * gbs, "trainer.limit_val_batches", "data.global_batch_size",
                note=f"{v} batches x GBS {gbs}")
        return Result("approximate", f"{v} NeMo validation batches of GBS {gbs} samples = the first {v * gbs} samples (limit_dataset_samples must not exceed the file)")
    if isinstance(v, float) and 0 < v < 1:
        return Result("unsupported", f"limit_val_batches={v} is a fraction of the validation set; set validation_dataset.limit_dataset_samples to that many samples")
    return Result("unsupported", f"limit_val_batches={v!r}")


def must_equal_one(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        if ctx.v(p) not in (1, None):
            return Result("unsupported", f"{p}={ctx.v(p)}: NeMo's Megatron strategy does not use Lightning accumulation")
    return None


def callbacks(ctx: Ctx) -> Result | None:
    items = ctx.v("trainer.callbacks") or []
    unknown = []
    for cb in items:
        cls = cb.cls if isinstance(cb, Node) else str(cb)
        if cls == "TimingCallback" or cls == "MegatronCommOverlapCallback":
            continue
        if cls == "GarbageCollectionCallback" and isinstance(cb, Node):
            n = schema.value(cb, "gc_interval_train")
            if isinstance(n, int):
                ctx.set("step_scheduler.gc_every_steps", n, "trainer.callbacks")
            continue
        unknown.append(cls)
    if unknown:
        return Result("unsupported", f"callbacks without an Automodel equivalent: {', '.join(unknown)}")
    if any(isinstance(cb, Node) and cb.cls == "GarbageCollectionCallback" for cb in items):
        return Result("exact", "GarbageCollectionCallback -> step_scheduler.gc_every_steps; timing and comm-overlap callbacks do not change the math")
    return None


def enable_checkpointing(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.enable_checkpointing") is False:
        ctx.set("checkpoint.enabled", False, "trainer.enable_checkpointing")
    return None


# ---------------------------------------------------------------------------------------------- optimizer

def optimizer_class(ctx: Ctx) -> Result | None:
    optim = ctx.node("optim")
    cfg = ctx.node("optim.config")
    if cfg is not None and cfg.cls != "OptimizerConfig":
        ctx.set("optimizer._target_", "torch.optim.AdamW")
        return Result("unsupported", f"optimizer config {cfg.cls} is not Megatron's OptimizerConfig; AdamW emitted as a placeholder")
    if optim is None or optim.cls != "MegatronOptimizerModule":
        ctx.set("optimizer._target_", "torch.optim.AdamW")
        return Result("unsupported", f"optimizer module {optim.cls if optim else None} is not Megatron's; AdamW emitted as a placeholder")
    name = ctx.v("optim.config.optimizer", "adam")
    if name == "adam":
        decoupled = ctx.v("optim.config.decoupled_weight_decay", True)
        ctx.set("optimizer._target_", "torch.optim.AdamW" if decoupled else "torch.optim.Adam", "optim.config.optimizer")
        return None
    if name == "sgd":
        ctx.set("optimizer._target_", "torch.optim.SGD", "optim.config.optimizer")
        ctx.set("optimizer.momentum", ctx.v("optim.config.sgd_momentum", 0.9), "optim.config.sgd_momentum")
        return Result("exact", "Megatron 'sgd' = torch.optim.SGD with momentum")
    ctx.set("optimizer._target_", "torch.optim.AdamW", "optim.config.optimizer")
    return Result("unsupported", f"optimizer {name!r} has no mapping; AdamW emitted as a placeholder")


def betas(ctx: Ctx) -> Result | None:
    if ctx.v("optim.config.optimizer", "adam") != "adam":
        return Result("dropped", "not an Adam optimizer")
    ctx.set("optimizer.betas", [float(ctx.v("optim.config.adam_beta1", 0.9)), float(ctx.v("optim.config.adam_beta2", 0.999))],
            "optim.config.adam_beta1", "optim.config.adam_beta2")
    return None


def weight_decay(ctx: Ctx) -> Result | None:
    wd = float(ctx.v("optim.config.weight_decay", 0.0))
    ctx.set("optimizer.weight_decay", wd, "optim.config.weight_decay")
    if wd == 0 or ctx.lora:
        if ctx.lora and wd:
            return Result("exact", "every LoRA adapter weight is 2-D, so Megatron's no-decay rule for biases and 1-D parameters changes nothing")
        return None
    if ctx.node("optim.lr_scheduler") is None:
        return Result("approximate", "Megatron skips weight decay on biases and 1-D parameters; without an lr_scheduler Automodel "
                      "cannot apply a per-group wd_mult, so every parameter is decayed")
    ctx.set("optimizer.param_group_overrides", [{"pattern": NO_DECAY_PATTERN, "wd_mult": 0.0}], "optim.config.weight_decay",
            note="no decay on biases and norms, as Megatron")
    return None


def clip_grad(ctx: Ctx) -> Result | None:
    c = ctx.v("optim.config.clip_grad", 1.0)
    if c is None or c <= 0:
        ctx.set("clip_grad_norm.max_norm", 1.0e9, "optim.config.clip_grad", note="never clips (Automodel always clips)")
        return Result("exact", "no clipping in NeMo (clip_grad <= 0); Automodel always clips, so a norm no step reaches is used")
    ctx.set("clip_grad_norm.max_norm", float(c), "optim.config.clip_grad")
    return None


def master_weights(ctx: Ctx) -> Result | None:
    if ctx.v("optim.config.fp16"):
        return Result("approximate", "fp16 training with a loss-scaled Megatron optimizer; Automodel has no loss scaling")
    custom = [p for p in ("optim.config.main_params_dtype", "optim.config.main_grads_dtype", "optim.config.exp_avg_dtype",
                          "optim.config.exp_avg_sq_dtype") if ctx.v(p) not in (None, "torch.float32")]
    if custom or ctx.v("optim.config.use_precision_aware_optimizer"):
        return Result("approximate", f"precision-aware optimizer state ({', '.join(custom) or 'use_precision_aware_optimizer'}) has no torch.optim equivalent")
    if not ctx.v("optim.config.bf16"):
        return Result("exact", "fp32 parameters and optimizer state in both")
    if ctx.lora:
        return Result("approximate", "NeMo trains the adapters through fp32 master copies (bf16 compute); with model dtype bfloat16 "
                      "Automodel's torch AdamW updates bf16 adapters and keeps bf16 moments")
    return Result("exact", "model dtype float32 keeps fp32 master weights and fp32 Adam moments while FSDP2 computes in bf16 (see PRC001)")


def lr_schedule(ctx: Ctx) -> Result | None:
    sched = ctx.node("optim.lr_scheduler")
    if sched is None:
        return Result("exact", "no LR scheduler: constant learning rate in both (no lr_scheduler section)")
    if sched.cls != "CosineAnnealingScheduler":
        return Result("unsupported", f"scheduler {sched.cls} has no mapping")
    if not isinstance(ctx.v("optim.config.lr"), (int, float)):
        return Result("unsupported", "the learning rate is unknown, so the schedule cannot be built")
    lr = float(ctx.v("optim.config.lr"))
    w = int(ctx.v("optim.lr_scheduler.warmup_steps", 0) or 0)
    c = int(ctx.v("optim.lr_scheduler.constant_steps", 0) or 0)
    min_lr = float(ctx.v("optim.lr_scheduler.min_lr", 0.0) or 0.0)
    m = int(ctx.v("optim.lr_scheduler.max_steps", ctx.v("trainer.max_steps", 10)))
    src = ("optim.lr_scheduler.warmup_steps", "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.min_lr", "optim.lr_scheduler.max_steps", "optim.config.lr")
    if min_lr > lr:
        kn = ctx.k("optim.lr_scheduler.min_lr")
        ctx.diags.error("NM520", f"min_lr {min_lr} is above the learning rate {lr}: NeMo's CosineAnnealing raises", **(kn.prov.where() if kn else {}))
    if c > 0:  # NeMo's warmup-anneal-hold variant (warm-up from 0, cosine until max_steps - C, then min_lr)
        try:
            vals, how = nemo_cosine_hold(lr, w, c, m, min_lr)
        except ValueError as e:
            kn = ctx.k("optim.lr_scheduler.constant_steps")
            ctx.diags.error("NM247", str(e), key="optim.lr_scheduler.constant_steps", **(kn.prov.where() if kn else {}))
            return Result("unsupported", str(e))
        own = {"lr_warmup_steps": ("optim.lr_scheduler.warmup_steps",), "min_lr": ("optim.lr_scheduler.min_lr",),
               "init_lr": ("optim.config.lr", "optim.lr_scheduler.warmup_steps"), "max_lr": ("optim.config.lr",),
               "lr_decay_steps": ("optim.lr_scheduler.max_steps", "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.warmup_steps")}
        for key, v in vals.items():
            ctx.set(f"lr_scheduler.{key}", v, *own.get(key, src), note=how if key == "lr_decay_steps" else None)
        return Result("exact", f"constant_steps={c}: {how}")
    ctx.set("lr_scheduler.lr_decay_style", "cosine", *src)
    ctx.set("lr_scheduler.lr_warmup_steps", w, "optim.lr_scheduler.warmup_steps")
    ctx.set("lr_scheduler.init_lr", lr / (w + 1) if w > 0 else lr, "optim.config.lr", "optim.lr_scheduler.warmup_steps",
            note=f"lr/(W+1) = NeMo's first warmup step" if w > 0 else None)
    ctx.set("lr_scheduler.min_lr", min_lr, "optim.lr_scheduler.min_lr")
    decay = m if w < m else w + 1
    ctx.set("lr_scheduler.lr_decay_steps", decay, "optim.lr_scheduler.max_steps", "optim.lr_scheduler.warmup_steps",
            note=None if w < m else f"warmup {w} >= max_steps {m}: W+1 keeps every step in warmup, as NeMo")
    return None


def sched_interval(ctx: Ctx) -> Result | None:
    if ctx.v("optim.lr_scheduler.interval", "step") != "step" or ctx.v("optim.lr_scheduler.frequency", 1) != 1:
        return Result("unsupported", "the scheduler is not stepped once per optimizer step")
    return None


# ---------------------------------------------------------------------------------------------- PEFT

def peft_scheme(ctx: Ctx) -> Result | None:
    peft = ctx.node("peft")
    if peft is None:
        return Result("exact", "full fine-tuning (no PEFT) in both: no peft section")
    if peft.cls not in _LORA_CLASSES:
        ctx.diags.error("NM533", f"PEFT method {peft.cls} has no Automodel equivalent (Automodel 0.7 trains LoRA/DoRA only)",
                        key="peft", **peft.prov.where())
        return Result("unsupported", f"PEFT method {peft.cls} has no Automodel equivalent")
    ctx.set("peft._target_", PEFT_TARGET, "peft._target_")
    if peft.cls == "DoRA":
        ctx.set("peft.use_dora", True, "peft._target_")
        return Result("approximate", "DoRA: Automodel's use_dora (nn.Linear only) recomputes the magnitude normalisation its own way; "
                      "NeMo's DoRA also applies a dropout correction term")
    if peft.cls == "CanonicalLoRA":
        return Result("exact", "CanonicalLoRA trains one adapter per HF projection, as Automodel")
    if peft.cls != "LoRA":
        return Result("unsupported", f"PEFT method {peft.cls} has no Automodel equivalent")
    return None


_LORA_CLASSES = ("LoRA", "DoRA", "CanonicalLoRA")


def _lora(ctx: Ctx) -> Node | None:
    peft = ctx.node("peft")
    return peft if peft is not None and peft.cls in _LORA_CLASSES else None


def _family_map(ctx: Ctx) -> dict[str, Any]:
    fam = model_info(ctx)["family"]
    return knowledge.modules()["families"].get(fam) or knowledge.modules()["families"]["llama"]


def translate_targets(ctx: Ctx, targets: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Megatron patterns -> (HF patterns, fused Megatron names with a shared A, untranslatable patterns)."""
    fmap = _family_map(ctx)
    seg = knowledge.modules()["segments"]
    out: list[str] = []
    seen: set[str] = set()
    shared: list[str] = []
    bad: list[str] = []
    parents: dict[str, set[str]] = {}
    for e in fmap.values():
        for h in e["hf"]:
            hp, _, hl = h.rpartition(".")
            parents.setdefault(hl, set()).add(hp)
    names: dict[str, list[str]] = {}  # Megatron leaf -> the HF names its patterns end with
    for leaf, entry in fmap.items():
        for h in entry["hf"]:
            hparent, hleaf = h.rsplit(".", 1) if "." in h else ("", h)
            qualified = len(parents.get(hleaf, ())) > 1
            names.setdefault(leaf, []).append(f"{hparent}.{hleaf}" if qualified and hparent else hleaf)
    for t in targets:
        parts = t.split(".")
        leaf = parts[-1]
        entry = fmap.get(leaf)
        if entry is None:
            bad.append(t)
            continue
        if entry.get("shared_a") and len(entry["hf"]) > 1:
            shared.append(t)
        head = ".".join(seg.get(p, p) for p in parts[:-1])
        if head and not head.startswith("*"):
            head = "*" + head if head.startswith(".") else head if head.startswith("model.") else "*." + head
        for name in names[leaf]:
            pat = f"{head}.{name}" if head else "*." + name
            if pat not in seen:
                seen.add(pat)
                out.append(pat)
    return out, shared, bad


def lora_params(ctx: Ctx, targets: list[str], fused: bool) -> int | None:
    """Trainable LoRA parameters on a Llama-shaped model (NeMo fused adapters when fused=True)."""
    shape = model_info(ctx)["shape"]
    if shape is None or model_info(ctx)["family"] != "llama":
        return None
    r = int(ctx.v("peft.dim", 32))
    h, f, L = shape["hidden"], shape["ffn"], shape["layers"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    per = 0
    leaves = {t.split(".")[-1] for t in targets}
    if "linear_qkv" in leaves:
        per += (r * h + r * (h + 2 * kv)) if fused else 3 * r * h + r * (h + 2 * kv)
    for q, out_dim in (("linear_q", h), ("linear_k", kv), ("linear_v", kv)):
        if q in leaves:
            per += r * h + r * out_dim
    if "linear_proj" in leaves:
        per += r * h + r * h
    if "linear_fc1" in leaves:
        per += (r * h + r * 2 * f) if fused else 2 * r * h + r * 2 * f
    for q in ("linear_fc1_gate", "linear_fc1_up"):
        if q in leaves:
            per += r * h + r * f
    if "linear_fc2" in leaves:
        per += r * f + r * h
    if any("layers." in t for t in targets):
        return None
    return per * L


def lora_targets(ctx: Ctx) -> Result | None:
    peft = _lora(ctx)
    if peft is None:
        return Result("dropped", "no PEFT") if ctx.node("peft") is None else Result("unsupported", "not a LoRA method (see PEFT001)")
    targets = list(ctx.v("peft.target_modules") or [])
    excl = list(ctx.v("peft.exclude_modules") or [])
    canonical = list(knowledge.modules()["canonical_targets"])
    note = None
    if not targets and excl:
        targets = [t for t in canonical if t not in excl]
        note = f"exclude_modules={excl}: the other linear layers of the transformer blocks"
    if not targets:
        ctx.diags.error("NM530", "LoRA has no target modules", key="peft.target_modules")
        return Result("unsupported", "no targets")
    if peft.cls == "CanonicalLoRA":
        bad_fused = [t for t in targets if t.split(".")[-1] in ("linear_qkv", "linear_fc1")]
        if bad_fused:
            ctx.diags.error("NM531", f"CanonicalLoRA rejects fused targets {bad_fused} (NeMo asserts)", key="peft.target_modules")
    pats, shared, bad = translate_targets(ctx, targets)
    kn = ctx.k("peft.target_modules")
    if bad:
        ctx.diags.warning("NM532", f"LoRA targets {bad} have no known HF name for the {model_info(ctx)['family']} family; they are not migrated",
                          key="peft.target_modules", **(kn.prov.where() if kn else {}))
    ctx.set("peft.target_modules", pats, "peft.target_modules", note=note)
    if bad:
        return Result("unsupported", f"untranslatable targets {bad}")
    if shared and peft.cls in ("LoRA", "DoRA"):
        nemo_n, hf_n = lora_params(ctx, targets, True), lora_params(ctx, targets, False)
        counts = f" ({nemo_n:,} vs {hf_n:,} trainable parameters on {model_info(ctx)['id']})" if nemo_n and hf_n else ""
        return Result("approximate", f"NeMo's LoRA on the fused {', '.join(t.split('.')[-1] for t in shared)} shares one A matrix across "
                      f"q/k/v (gate/up); Automodel trains a separate A per projection{counts}, so the trajectory differs "
                      "(`nemo-migrate run --verify` measures it; its runtime has a tied-A mode)")
    if note:
        return Result("approximate", note + "; NeMo's exclude semantics are approximated on the four canonical targets")
    return None


def lora_init(ctx: Ctx) -> Result | None:
    if _lora(ctx) is None:
        return Result("dropped", "no PEFT") if ctx.node("peft") is None else Result("unsupported", "not a LoRA method (see PEFT001)")
    a = ctx.v("peft.lora_A_init_method", "xavier")
    b = ctx.v("peft.lora_B_init_method", "zero")
    if a == "xavier":
        ctx.set("peft.lora_A_init", "xavier", "peft.lora_A_init_method")
    elif a == "kaiming":
        ctx.set("peft.lora_A_init", "kaiming", "peft.lora_A_init_method", note="kaiming_uniform(a=sqrt(5))")
    else:
        ctx.set("peft.lora_A_init", "xavier", "peft.lora_A_init_method")
        return Result("unsupported", f"lora_A_init_method={a!r}: Automodel initialises A with xavier_normal or kaiming_uniform only")
    if b != "zero":
        return Result("unsupported", f"lora_B_init_method={b!r}: Automodel always starts B at zero")
    return None


def lora_dtype(ctx: Ctx) -> Result | None:
    v = ctx.v("peft.lora_dtype")
    if v is None or _lora(ctx) is None:
        return None
    name = str(v).replace("torch.", "")
    name = {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name not in ("float32", "float16", "bfloat16"):
        return Result("unsupported", f"lora_dtype={v!r}")
    ctx.set("peft.lora_dtype", name, "peft.lora_dtype")
    return None


# ---------------------------------------------------------------------------------------------- precision & FP8

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


def grad_reduce(ctx: Ctx) -> Result | None:
    if ctx.v("trainer.plugins.grad_reduce_in_fp32", True):
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


def fp8(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        if ctx.v("trainer.plugins.fp8_recipe") not in (None, "delayed"):
            return Result("dropped", "fp8_recipe without fp8 has no effect")
        return None
    fmt = ctx.v("trainer.plugins.fp8")
    rec = ctx.v("trainer.plugins.fp8_recipe", "delayed") or "delayed"
    src = ("trainer.plugins.fp8", "trainer.plugins.fp8_recipe")
    filters = ["lm_head"]
    L = (model_info(ctx)["shape"] or {}).get("layers")
    if ctx.v("trainer.plugins.first_last_layers_bf16"):
        start = int(ctx.v("trainer.plugins.num_layers_at_start_in_bf16", 0) or 0)
        end = int(ctx.v("trainer.plugins.num_layers_at_end_in_bf16", 0) or 0)
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


def fp8_delayed_knobs(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        return None
    if ctx.lora and ctx.targets.get("fp8.enabled") and ctx.targets["fp8.enabled"].value is False:
        return Result("unsupported", "FP8 is off in the emitted config (see FP8001)")
    if ctx.v("trainer.plugins.fp8_wgrad") is False:
        return Result("approximate", "fp8_wgrad=False (weight gradients in higher precision): torchao's nearest is recipe rowwise_with_gw_hp, not emitted")
    return Result("approximate", "delayed-scaling settings (margin, amax history and algorithm) have no dynamic-scaling equivalent; "
                  "torchao computes each scale from the current tensor")


def fp8_param_gather(ctx: Ctx) -> Result | None:
    if not _fp8_on(ctx):
        return None
    if ctx.targets.get("fp8.enabled") and ctx.targets["fp8.enabled"].value is False:
        return Result("unsupported", "FP8 is off in the emitted config (see FP8001)")
    if ctx.v("trainer.plugins.fp8_param_gather") or ctx.v("trainer.plugins.fp8_params"):
        return Result("approximate", "NeMo keeps FP8 parameter copies and all-gathers them in FP8; FSDP2 float8 all-gather "
                      "casts the sharded bf16 weights to FP8 before gathering (same traffic, bf16 master copy)")
    return None


def fp8_bf16_layers(ctx: Ctx) -> Result | None:
    if not ctx.v("trainer.plugins.first_last_layers_bf16"):
        return None
    if not _fp8_on(ctx):
        return Result("dropped", "no FP8")
    return Result("exact", "the first/last transformer layers are kept out of FP8 with filter_fqns (FP8001)")


# ---------------------------------------------------------------------------------------------- data

def _jsonl(root: str, name: str) -> str:
    p = posixpath.join(root, name)
    if not posixpath.isabs(p) and _HUB_LIKE.match(p):
        p = "./" + p  # a relative 'dir/file.jsonl' would be taken for a Hub id (schema §6.2)
    return p


def _file_arg(files: list[str]) -> Any:
    fixed = [("./" + f if not posixpath.isabs(f) and _HUB_LIKE.match(f) else f) for f in files]
    return fixed[0] if len(fixed) == 1 else fixed


def _converted(path: str) -> str:
    base, ext = posixpath.splitext(path)
    return f"{base}.messages{ext or '.jsonl'}"


def _chat(ctx: Ctx, train: list[str], val: list[str], src: tuple[str, ...]) -> Result:
    ctx.set("dataset._target_", CHAT, *src)
    ctx.set("dataset.path_or_dataset_id", _file_arg([_converted(f) for f in train]), *src)
    if val:
        ctx.set("validation_dataset._target_", CHAT, *src)
        ctx.set("validation_dataset.path_or_dataset_id", _file_arg([_converted(f) for f in val]), *src)
    for f in train + val:
        ctx.note("pre-step", f"convert NeMo chat data to OpenAI messages: nemo-migrate convert-data {shlex_quote(f)} {shlex_quote(_converted(f))}")
    hf_template = bool(ctx.v("data.use_hf_tokenizer_chat_template") or ctx.v("data.dataset_kwargs.use_hf_tokenizer_chat_template"))
    return Result("approximate", "NeMo chat data (ShareGPT 'conversations' with from: User/Assistant and a top-level 'system', which "
                  "Automodel 0.7's case-sensitive role map rejects) is converted to OpenAI 'messages' by the pre-step; "
                  + ("both format the turns with the tokenizer's chat template" if hf_template else
                     "NeMo wraps turns in its own special tokens (<extra_id_0/1/2>), Automodel applies the tokenizer's chat template")
                  + "; loss on assistant turns in both")


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _data_meta(ctx: Ctx) -> dict[str, Any]:
    """The `data:` entry of the data module's class in mappings/nemo2/classes.yaml (how the rules map it)."""
    data = ctx.node("data")
    return dict((knowledge.classes().get(data.cls) or {}).get("data") or {}) if data is not None else {}


def _data_kind(ctx: Ctx) -> str | None:
    """sft | squad | chat | files | megatron; a SquadDataModule given a dataset_root reads its files: 'sft'."""
    kind = _data_meta(ctx).get("kind")
    if kind == "squad" and ctx.v("data.dataset_root") is not None:
        return "sft"
    return kind


def _files_mapped(ctx: Ctx) -> bool:
    """The data module becomes ColumnMappedTextInstructionDataset over JSONL files (prompt template and all)."""
    return _data_kind(ctx) in ("sft", "files") and not ctx.v("data.chat")


ENV_NOTE = "Automodel expands NEMO_DATASETS_CACHE when it loads the file, as NeMo"  # an intended ${VAR,default} (see NM600)


def _nemo_datasets_cache(ctx: Ctx) -> str:
    """NeMo's NEMO_DATASETS_CACHE (nemo/lightning/base.py:26-29) as an Automodel 0.7 YAML string: the job's own
    environment (run.sh, then the executor's env_vars) when it sets one, else Automodel's ${VAR,default}
    interpolation (components/config/loader.py resolve_yaml_env_vars) over NeMo's default ~/.cache/nemo/datasets."""
    env = dict(ctx.job.launch_env)
    ex = ctx.v("executor.env_vars")
    if isinstance(ex, dict):
        env.update({str(k): str(v) for k, v in ex.items()})
    if env.get("NEMO_DATASETS_CACHE"):
        return env["NEMO_DATASETS_CACHE"].rstrip("/")
    home = env["NEMO_HOME"].rstrip("/") if env.get("NEMO_HOME") else "$HOME/.cache/nemo"
    return "${NEMO_DATASETS_CACHE," + home + "/datasets}"


def _sft_root(ctx: Ctx) -> tuple[str, tuple[str, ...]]:
    cache = _data_meta(ctx).get("cache")
    if ctx.v("data.dataset_root") is None and cache:
        return f"{_nemo_datasets_cache(ctx)}/{cache}", ("data._target_",)
    return str(ctx.v("data.dataset_root")), ("data.dataset_root",)


def dataset_source(ctx: Ctx) -> Result | None:
    data = ctx.node("data")
    cls = data.cls if data else None
    meta, kind = _data_meta(ctx), _data_kind(ctx)
    if kind == "sft":
        root, src = _sft_root(ctx)
        note = ENV_NOTE if "${" in root else None
        ctx.set("dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("dataset.path_or_dataset_id", _jsonl(root, "training.jsonl"), *src, note=note)
        ctx.set("validation_dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("validation_dataset.path_or_dataset_id", _jsonl(root, "validation.jsonl"), *src, note=note)
        if src == ("data._target_",):
            ctx.note("pre-step", meta["prestep"].replace("{root}", root))
            return Result(meta.get("status", "approximate"), meta["reason"])
        if cls == "SquadDataModule":
            return Result("exact", f"SquadDataModule(dataset_root={root!r}) reads training.jsonl and validation.jsonl there and downloads "
                          "SQuAD only when training.jsonl is missing (squad.py:72, 87-91); ColumnMappedTextInstructionDataset reads the same files")
        if not posixpath.isabs(root):
            return Result("exact", f"relative dataset_root {root!r}: both resolve it against the directory the job is launched from")
        return None
    if kind == "files":
        train = [str(x) for x in (ctx.v("data.train_files") or [])]
        val = [str(x) for x in (ctx.v("data.validation_files") or [])]
        if ctx.v("data.chat"):
            return _chat(ctx, train, val, ("data.train_files", "data.validation_files", "data.chat"))
        npy = [f for f in train + val if f.endswith(".npy")]
        ctx.set("dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("dataset.path_or_dataset_id", _file_arg(train), "data.train_files")
        if val:
            ctx.set("validation_dataset._target_", COLUMN_MAPPED, "data._target_")
            ctx.set("validation_dataset.path_or_dataset_id", _file_arg(val), "data.validation_files")
        if npy:
            return Result("unsupported", f"pre-packed .npy files {npy} cannot be read by Automodel; point at the JSONL they were packed from "
                          "and let packed_sequence pack them")
        if len(train) > 1:
            return Result("exact", f"{len(train)} training files are read as one dataset in both (sampling ratios: DAT013)")
        return None
    if kind == "squad":
        ctx.set("dataset._target_", SQUAD, "data._target_")
        ctx.set("dataset.dataset_name", "rajpurkar/squad", "data._target_")
        ctx.set("dataset.split", "train", "data._target_")
        ctx.set("validation_dataset._target_", SQUAD, "data._target_")
        ctx.set("validation_dataset.dataset_name", "rajpurkar/squad", "data._target_")
        ctx.set("validation_dataset.split", "validation", "data._target_")
        return Result("approximate", "SQuAD from the Hub: NeMo validates on 5% held out of the train split, Automodel on the validation split; "
                      "both prompt 'Context: ... Question: ... Answer: ' (Automodel applies a chat template when the tokenizer has one)")
    if kind == "chat":
        root = str(ctx.v("data.dataset_root"))
        return _chat(ctx, [_jsonl(root, "training.jsonl")], [_jsonl(root, "validation.jsonl")], ("data._target_", "data.dataset_root"))
    if kind == "megatron":
        for sect, split in (("dataset", "train"), ("validation_dataset", "validation")):
            ctx.set(f"{sect}._target_", MEGATRON, "data._target_")
            ctx.set(f"{sect}.splits_to_build", split, "data._target_")
        ctx.note("pre-step", "Automodel builds its Megatron dataset helpers from C++ source at the first run "
                 "(components/datasets/llm/megatron/megatron_utils.py compile_helper): the container needs a C++ compiler and ninja")
        return Result("approximate", "PreTrainingDataModule and Automodel's MegatronPretraining build the train and validation splits "
                      "of the same Megatron .bin/.idx blend with the same algorithm: GPTDataset's document, sample and shuffle indices "
                      "(_build_document_index, _build_shuffle_index, build_sample_idx) and the blending of BlendedMegatronDatasetBuilder "
                      "are the same code in megatron-core 0.16.1 (NeMo 2.7.3) and Automodel 0.7.0's vendored copy "
                      "(components/datasets/llm/megatron/), and both train on every token (measured on a two-prefix blend: identical "
                      "input_ids, labels and loss masks for all 640 train and 240 validation samples); they differ in which labels "
                      "are masked as padding when the tokenizer's pad id occurs inside the documents (megatron-core: every such "
                      "label; Automodel: the trailing pad run only) and in the loss reduction (MOD007)")
    return Result("unsupported", f"data module {cls} has no mapping")


def sampling_probabilities(ctx: Ctx) -> Result | None:
    probs = ctx.v("data.concat_sampling_probabilities")
    files = ctx.v("data.train_files") or []
    if not probs or len(files) <= 1:
        return None
    return Result("approximate", f"NeMo samples the {len(files)} files with probabilities {probs} (a blended dataset); Automodel concatenates "
                  "them, so each file weighs by its size: the mix matches only if the probabilities are proportional to the file sizes")


def column_mapping(ctx: Ctx) -> Result | None:
    if not _files_mapped(ctx):
        return Result("dropped", "no column mapping for this data module")
    tmpl = ctx.v("data.dataset_kwargs.prompt_template", "{input} {output}")
    label = ctx.v("data.dataset_kwargs.label_key", "output")
    if not isinstance(tmpl, str) or not isinstance(label, str):
        return Result("unsupported", "prompt_template/label_key are not strings")
    tmpl = tmpl.encode().decode("unicode_escape") if "\\" in tmpl else tmpl
    parts = re.split(r"({\w+})", tmpl)
    keys = [p[1:-1] for p in parts if re.fullmatch(r"{\w+}", p)]
    literals = [p for p in parts if not re.fullmatch(r"{\w+}", p)]
    roles = ["context", "question"]
    mapping: dict[str, str] = {}
    prompt_keys = [k for k in keys if k != label]
    for role, k in zip(roles, prompt_keys):
        mapping[role] = k
    mapping["answer"] = label
    ctx.set("dataset.column_mapping", dict(mapping), "data.dataset_kwargs.prompt_template", "data.dataset_kwargs.label_key")
    ctx.set("validation_dataset.column_mapping", dict(mapping), "data.dataset_kwargs.prompt_template", "data.dataset_kwargs.label_key")
    spaced = literals[0] == "" and literals[-1] == "" and all(x == " " for x in literals[1:-1])
    if len(prompt_keys) > 2:
        return Result("unsupported", f"the template has {len(prompt_keys)} prompt fields; ColumnMapped takes at most two (context, question)")
    if not prompt_keys:
        return Result("unsupported", "the template has no prompt field")
    if not spaced:
        lit = [x for x in literals if x not in ("", " ")]
        return Result("unsupported", f"the template adds text {lit!r} around the fields; ColumnMappedTextInstructionDataset only joins "
                      "fields with single spaces, so that text is lost (pre-format the JSONL into the fields)")
    return Result("approximate", f"'{tmpl}' is the same text as ColumnMapped's '<context> <question> <answer>', but the tokens differ: "
                  "NeMo tokenizes each template piece on its own (the answer without its leading space) and trains every answer token "
                  "and the EOS; Automodel tokenizes prompt + ' ' + answer in one piece and masks as many tokens as the prompt alone has. "
                  "With byte-level BPE tokenizers (Llama 3, Qwen) the prompt's trailing space is a token of its own, so the first "
                  "answer token is not trained (found by `run --verify`'s tokenization check; real Automodel 0.7 does the same)")


def seq_truncation(ctx: Ctx) -> Result | None:
    if ctx.node("data") is None:
        return None
    seq = ctx.v("data.seq_length")
    specs = ctx.node("data.packed_sequence_specs")
    size = schema.value(specs, "packed_sequence_size", -1) if specs else -1
    if isinstance(size, int) and size > 0:
        seq = size
    if _data_kind(ctx) == "megatron":
        for sect in ("dataset", "validation_dataset"):
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
        return Result("exact", f"samples of {seq} tokens cut from the concatenated documents of the blend in both "
                      "(GPTDatasetConfig.sequence_length; no truncation)")
    for sect in ("dataset", "validation_dataset"):
        if _data_kind(ctx) == "squad":
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
            ctx.set(f"{sect}.truncation", True, "data.seq_length")
        else:
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
            ctx.set(f"{sect}.truncation", "longest_first", "data.seq_length", "data.dataset_kwargs.truncation_field")
    method = ctx.v("data.dataset_kwargs.truncation_method", "right")
    field = ctx.v("data.dataset_kwargs.truncation_field", "input")
    return Result("approximate", f"samples longer than {seq} tokens: NeMo removes the overflow from {field!r} (truncation_method={method!r}) "
                  "and keeps the answer; the HF tokenizer cuts the end of prompt+answer. Identical when no sample is longer")


def special_tokens(ctx: Ctx) -> Result | None:
    if ctx.node("data") is None or _data_kind(ctx) in ("squad", "megatron"):
        if _data_kind(ctx) == "megatron":
            return Result("exact", "pre-tokenized Megatron documents: the EOD tokens are in the .bin files (no tokenizer EOS/BOS added at load)")
        return Result("approximate", "SQuAD: Automodel's SQuAD builder appends EOS itself") if ctx.node("data") else None
    eos = ctx.v("data.dataset_kwargs.add_eos", True)
    bos = ctx.v("data.dataset_kwargs.add_bos", False)
    if eos:
        ctx.set("dataset.tokenizer.add_eos_token", True, "data.dataset_kwargs.add_eos")
    if bos:
        ctx.set("dataset.tokenizer.add_bos_token", True, "data.dataset_kwargs.add_bos")
    return Result("approximate", f"NeMo {'appends EOS' if eos else 'adds no EOS'} and {'adds' if bos else 'adds no'} BOS; Automodel 0.7 adds "
                  "them only when the tokenizer declares add_eos_token/add_bos_token, and a Llama-3 tokenizer's post-processor adds BOS "
                  "by itself (`run --verify` checks the token ids)")


def padding(ctx: Ctx) -> Result | None:
    specs = ctx.node("data.packed_sequence_specs")
    if specs is not None and (schema.value(specs, "packed_sequence_size", -1) or -1) > 0:
        return Result("exact", "with packing NeMo pads each pack to the pack size; Automodel's packer does the same (padding each sample would defeat packing)")
    if ctx.v("data.dataset_kwargs.pad_to_max_length"):
        ctx.set("dataset.padding", "max_length", "data.dataset_kwargs.pad_to_max_length")
        ctx.set("validation_dataset.padding", "max_length", "data.dataset_kwargs.pad_to_max_length")
    return None


def seed(ctx: Ctx) -> Result | None:
    s = ctx.v("data.seed", 1234)
    ctx.set("seed", int(s), "data.seed")
    if _data_kind(ctx) == "megatron":
        for sect in ("dataset", "validation_dataset"):
            ctx.set(f"{sect}.seed", int(s), "data.seed")
        return Result("exact", f"data.seed={s} seeds the Megatron document and sample shuffles in both (GPTDatasetConfig.random_seed), "
                      "so the samples come in the same order")
    return None


def loader_workers(ctx: Ctx) -> Result | None:
    shuffle = ctx.v("data.shuffle", True) is not False
    if _data_kind(ctx) != "megatron":  # a Megatron dataset is read in its own (seeded) order by a Megatron sampler (DAT016)
        ctx.set("dataloader.shuffle", shuffle, "data.shuffle", note="NeMo's sample mapping is shuffled" if shuffle else None)
    for k in ("num_workers", "pin_memory", "persistent_workers"):
        v = ctx.v(f"data.{k}")
        if v is not None:
            if k == "persistent_workers" and not ctx.v("data.num_workers"):
                continue
            ctx.set(f"dataloader.{k}", v, f"data.{k}")
    if not shuffle:
        return Result("approximate", "shuffle=False: Automodel reads the files in order too, but NeMo also up-samples the data to fill the steps")
    if ctx.v("data.drop_last", True) is False:
        return Result("approximate", "drop_last=False: Automodel's sampler always drops the last partial batch")
    return None


def packing(ctx: Ctx) -> Result | None:
    specs = ctx.node("data.packed_sequence_specs")
    if specs is None:
        return None
    size = schema.value(specs, "packed_sequence_size", -1)
    if not isinstance(size, int) or size <= 0:
        return Result("exact", "packed_sequence_size <= 0: no packing in both")
    ctx.set("packed_sequence.packed_sequence_size", size, "data.packed_sequence_specs.packed_sequence_size")
    return Result("approximate", "NeMo packs offline into .npy files with its own bin-packing and weights each pack's token mean equally; "
                  "Automodel packs on the fly (THD) and averages over all tokens of the step")


def nemo_download(ctx: Ctx) -> Result | None:
    if not ctx.v("data.force_redownload") or _data_kind(ctx) != "sft":
        return None
    return Result("approximate", "force_redownload=True: NeMo downloads and re-splits the data into its JSONL files at every launch "
                  "(Dolly also redraws its random context/instruction order); the migrated job reads the files the last NeMo run wrote")


def _nemo_val_samples(ctx: Ctx) -> tuple[int | None, float | None]:
    """PreTrainingDataModule.build's validation size (pre_training.py:284-327): (num_val_samples, None), or
    (None, limit_val_batches) when a fraction <= 1.0 makes NeMo build the whole validation split."""
    gbs, steps = ctx.v("data.global_batch_size"), ctx.v("trainer.max_steps")
    vci = ctx.v("trainer.val_check_interval")
    lvb = ctx.v("trainer.limit_val_batches")
    vci, lvb = (1.0 if vci is None else vci), (1.0 if lvb is None else lvb)  # Lightning's values for None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (gbs, steps, vci, lvb)) or not vci or not gbs:
        return None, None
    if isinstance(lvb, float) and 0.0 < lvb <= 1.0:
        return None, lvb
    nts = ctx.v("data.num_train_samples")
    try:
        iters = int(nts / gbs) if isinstance(nts, int) and not isinstance(nts, bool) else steps
        return int((iters // vci + 1) * lvb * gbs), None
    except (ArithmeticError, ValueError):  # inf / nan from a hostile value: leave the size to Automodel
        return None, None


def megatron_dataset(ctx: Ctx) -> Result | None:
    if _data_kind(ctx) != "megatron":
        return Result("unsupported", "a PreTrainingDataModule setting on another data module")
    raw = ctx.v("data.paths")
    paths = raw if isinstance(raw, (list, dict)) else [raw]  # NeMo wraps a single path in a list (pre_training.py:201-202)
    data = ctx.node("data")
    for sect in ("dataset", "validation_dataset"):
        ctx.set(f"{sect}.paths", paths, "data.paths")
        for k in ("split", "index_mapping_dir", "num_dataset_builder_threads", "mmap_bin_files"):
            kn = ctx.k(f"data.{k}") or schema.default_knob(data, k)
            if kn is None or kn.value is None or (k == "split" and isinstance(paths, dict)):
                continue
            ctx.set(f"{sect}.{k}", kn.value, f"data.{k}", provs=[] if ctx.has(f"data.{k}") else [kn.prov])
    if ctx.v("data.num_train_samples") is not None:
        ctx.set("dataset.num_train_samples", ctx.v("data.num_train_samples"), "data.num_train_samples")
    ctx.unset("validation_dataset.limit_dataset_samples")  # SCH004's ColumnMapped key: MegatronPretrainingConfig rejects it
    nv, frac = _nemo_val_samples(ctx)
    user_nv = ctx.v("data.num_val_samples")
    why = ("data.num_val_samples", "trainer.max_steps", "trainer.val_check_interval", "trainer.limit_val_batches", "data.global_batch_size")
    status = "exact"
    if frac is not None:
        ctx.set("validation_dataset.trainer_limit_val_batches", frac, "trainer.limit_val_batches",
                note="a fraction: the whole validation split, as NeMo")
        val = f"limit_val_batches={frac} builds the whole validation split in both"
    elif user_nv is not None or nv is not None:
        ctx.set("validation_dataset.num_val_samples", user_nv if user_nv is not None else nv, *why,
                note=None if user_nv is not None else "NeMo: (max_steps // val_check_interval + 1) x limit_val_batches x GBS")
        val = ("the validation size is NeMo's, written out because Automodel's formula lacks NeMo's + 1 round "
               "(pre_training.py:295-296 vs megatron_dataset.py:302-306)")
    else:
        status = "approximate"
        val = ("the validation size could not be computed from the trainer settings, so Automodel's own formula (without NeMo's "
               "+ 1 validation round, megatron_dataset.py:302-306) sizes the validation split")
    reason = ("the same blend (paths and weights through get_blend_from_list), split ratios, index cache and sample counts feed the "
              "same Megatron builder: num_train_samples = max_steps x GBS in both (pre_training.py:284-293, megatron_dataset.py:281-295); "
              f"{val}; the test split is never built")
    if isinstance(raw, str):
        reason += (f"; the single path {raw!r} is a dataset prefix in NeMo (wrapped in a list), so it is written as a one-element "
                   "list: Automodel would read a lone string as a glob or a JSON blend file (megatron_dataset.py:217-223)")
    return Result(status, reason)


def megatron_sampler(ctx: Ctx) -> Result | None:
    t = ctx.v("data.dataloader_type", "single")
    if t in ("single", "cyclic"):
        ctx.set("dataloader.dataloader_type", t, "data.dataloader_type")
        return None
    return Result("unsupported", f"dataloader_type={t!r}: Automodel 0.7's Megatron sampler is 'single' or 'cyclic' "
                  "(recipes/_typed_config.py:268-281)")


# ---------------------------------------------------------------------------------------------- checkpoints & logs

def checkpoint_dir(ctx: Ctx) -> Result | None:
    if ctx.node("log") is None:
        ctx.set("checkpoint.checkpoint_dir", "nemo_experiments/default/checkpoints")
        return Result("approximate", "no NeMoLogger: Lightning's defaults; Automodel writes to this folder")
    dirpath = ctx.v("log.ckpt.dirpath") if ctx.node("log.ckpt") else None
    explicit = ctx.v("log.explicit_log_dir")
    if dirpath:
        ctx.set("checkpoint.checkpoint_dir", dirpath, "log.ckpt.dirpath")
    elif explicit:
        ctx.set("checkpoint.checkpoint_dir", posixpath.join(explicit, "checkpoints"), "log.explicit_log_dir")
    else:
        base = ctx.v("log.log_dir") or "nemo_experiments"
        name = ctx.v("log.name") or "default"
        ctx.set("checkpoint.checkpoint_dir", posixpath.join(base, name, "checkpoints"), "log.log_dir", "log.name")
    if ctx.v("trainer.enable_checkpointing") is not False:
        ctx.set("checkpoint.enabled", True, "log._target_", status="exact")
    ctx.set("checkpoint.model_save_format", "safetensors", "log._target_", status="exact")
    return None


def ckpt_every(ctx: Ctx) -> Result | None:
    steps = ctx.v("trainer.max_steps")
    if ctx.node("log.ckpt") is None:
        ctx.set("step_scheduler.ckpt_every_steps", steps, "trainer.max_steps", note="at the end only")
        return Result("approximate", "no ModelCheckpoint in NeMoLogger; checkpoint once at the end")
    n = ctx.v("log.ckpt.every_n_train_steps")
    if n:
        ctx.set("step_scheduler.ckpt_every_steps", int(n), "log.ckpt.every_n_train_steps")
        return None
    ctx.set("step_scheduler.ckpt_every_steps", steps, "trainer.max_steps", note="at the end (save_last)")
    return Result("exact", "no periodic checkpoints; the last one is saved at the end in both")


def retention(ctx: Ctx) -> Result | None:
    k = ctx.v("log.ckpt.save_top_k")
    if k is None or ctx.node("log.ckpt") is None:
        return None
    if k == -1:
        return Result("exact", "save_top_k=-1 keeps every checkpoint; Automodel keeps all by default")
    if k == 0:
        return Result("approximate", "save_top_k=0 keeps only the last checkpoint")
    ctx.set("checkpoint.max_recent_checkpoints", int(k), "log.ckpt.save_top_k")
    return None


def tensorboard(ctx: Ctx) -> Result | None:
    if ctx.node("log.tensorboard") is not None:
        ctx.note("warning", "TensorBoard logging is not migrated: Automodel 0.7 has no TensorBoard logger; "
                 "per-step metrics are written to <checkpoint_dir>/training.jsonl (or configure wandb)")
        return Result("dropped", "Automodel 0.7 has no TensorBoard logger (no effect on training); metrics go to <checkpoint_dir>/training.jsonl")
    return None


def wandb(ctx: Ctx) -> Result | None:
    w = ctx.node("log.wandb")
    if w is None:
        return None
    for k in ("project", "entity", "name", "group", "tags", "notes"):
        v = schema.value(w, k)
        if v is not None:
            ctx.set(f"wandb.{k}", v, f"log.wandb.{k}")
    if schema.value(w, "save_dir") not in (None, "."):
        ctx.set("wandb.dir", schema.value(w, "save_dir"), "log.wandb.save_dir", note="wandb.init(dir=...)")
    return Result("exact", "Weights & Biases run settings (rank 0 logs)")


def extra_loggers(ctx: Ctx) -> Result | None:
    if ctx.v("log.extra_loggers"):
        return Result("unsupported", "extra Lightning loggers have no Automodel equivalent")
    return None


def cadence_flags(ctx: Ctx) -> Result | None:
    ctx.set("step_scheduler.save_checkpoint_every_epoch", False)
    ctx.set("step_scheduler.validate_on_checkpoint", False)
    return None


def dist_env(ctx: Ctx) -> Result | None:
    ctx.set("dist_env.backend", "nccl")
    ctx.set("dist_env.timeout_minutes", 30)
    return None


def answer_only_loss(ctx: Ctx) -> Result | None:
    kn = ctx.k("data.dataset_kwargs.answer_only_loss")
    if kn is None:
        return None  # no dataset_kwargs: the dataset's own default (answer-only) applies
    on = bool(kn.value)
    if ctx.targets.get("dataset._target_") is not None and ctx.targets["dataset._target_"].value == CHAT:
        # ChatDataset has no switch: its chat template marks the assistant turns and only those are trained on
        if not on:
            return Result("unsupported", "answer_only_loss=False: Automodel's ChatDataset always masks everything but the assistant turns")
        return Result("exact", "ChatDataset trains on the assistant turns only, as NeMo's chat answer_only_loss")
    ctx.set("dataset.answer_only_loss_mask", on, "data.dataset_kwargs.answer_only_loss")
    return None


# ---------------------------------------------------------------------------------------------- NeMo-Run executors

def _static(value: Any) -> bool:
    """False for an executor argument recipe.py computes at run time (kept as '<source text>')."""
    return not (isinstance(value, str) and value.startswith("<") and value.endswith(">"))


def _slurm(ctx: Ctx) -> dict[str, Any]:
    return ctx.cache.setdefault("slurm", {"sbatch": [], "env": [], "mounts": [], "srun_args": [], "image": None})


def executor_size(ctx: Ctx) -> Result | None:
    """Nodes and processes per node: the trainer decides (it sized the parallel plan); the executor must agree."""
    kind = ctx.v("executor._target_")
    devices, num_nodes = int(ctx.v("trainer.devices", 1)), int(ctx.v("trainer.num_nodes", 1))
    ntasks = ctx.v("executor.ntasks_per_node", 1)
    nodes = ctx.v("executor.nodes", 1) if kind == "SlurmExecutor" else 1
    launcher = ctx.v("executor.launcher")
    odd = []
    if _static(ntasks) and ntasks != devices:
        odd.append(f"{ntasks} processes per node (ntasks_per_node) but trainer.devices={devices}")
    if _static(nodes) and nodes != num_nodes:
        odd.append(f"{nodes} nodes but trainer.num_nodes={num_nodes}")
    if launcher not in (None, "torchrun", "ft") and _static(launcher):
        odd.append(f"launcher={launcher!r} (the migrated job is started by torchrun)")
    if kind != "SlurmExecutor":
        ctx.written.append("run.sh")
        if odd:
            return Result("approximate", f"run.{kind}: {'; '.join(odd)}; run.sh follows the trainer (Lightning refuses a mismatch)")
        return None
    sl = _slurm(ctx)
    gpus = ctx.v("executor.gpus_per_node")
    sl.update(nodes=num_nodes, nproc_per_node=devices, gpus_per_node=gpus if isinstance(gpus, int) else devices)
    cpus = ctx.v("executor.cpus_per_task")
    if isinstance(cpus, int):
        sl["sbatch"].append(("cpus-per-task", str(cpus)))
    ctx.written.append("sbatch.sh")
    if odd:
        return Result("approximate", f"run.SlurmExecutor: {'; '.join(odd)}; sbatch.sh follows the trainer, since Lightning refuses a mismatch")
    return None


def executor_container(ctx: Ctx) -> Result | None:
    image = ctx.v("executor.container_image")
    if ctx.v("executor._target_") != "SlurmExecutor" or not image:
        return Result("dropped", "no container image")
    if not _static(image):
        return Result("unsupported", f"container_image is computed at run time ({image}); set CONTAINER_IMAGE for sbatch.sh")
    _slurm(ctx)["image"] = image
    ctx.written.append("sbatch.sh")
    ctx.note("warning", f"sbatch.sh keeps the container image {image}: it must provide nemo_automodel 0.7 (NeMo 2 framework images do not); "
                        "override with CONTAINER_IMAGE=... sbatch sbatch.sh")
    return None


_SBATCH_FIELDS = {"account": "account", "partition": "partition", "time": "time", "mem": "mem", "gres": "gres", "network": "network"}


def executor_slurm_options(ctx: Ctx) -> Result | None:
    kind = ctx.v("executor._target_")
    env = ctx.v("executor.env_vars")
    env_items = sorted(env.items()) if isinstance(env, dict) else []
    skipped = [f"env_vars.{k}" for k, v in env_items if not _static(v)]
    env_items = [(k, str(v)) for k, v in env_items if _static(v)]
    if kind != "SlurmExecutor":
        ctx.cache.setdefault("env", []).extend(env_items)
        ctx.written.append("run.sh")
        return Result("unsupported", f"computed at run time: {', '.join(skipped)}") if skipped else None
    sl = _slurm(ctx)
    sl["env"].extend(env_items)
    for key, flag in _SBATCH_FIELDS.items():
        v = ctx.v(f"executor.{key}")
        if v in (None, ""):
            continue
        if not _static(v):
            skipped.append(key)
            continue
        sl[key] = v
        sl["sbatch"].append((flag, str(v)))
    if ctx.v("executor.exclusive"):
        sl["sbatch"].append(("exclusive", None))
    prefix = ctx.v("executor.job_name_prefix")
    name = ctx.v("log.name") or "automodel"
    sl["job_name"] = f"{prefix if prefix and _static(prefix) else ''}{name}"
    extra = ctx.v("executor.additional_parameters") or {}
    if isinstance(extra, dict):
        for k, v in sorted(extra.items()):
            if _static(v):
                sl["sbatch"].append((str(k).replace("_", "-"), None if v is True else str(v)))
            else:
                skipped.append(f"additional_parameters.{k}")
    for key, dest in (("container_mounts", "mounts"), ("srun_args", "srun_args")):
        v = ctx.v(f"executor.{key}") or []
        if isinstance(v, list) and all(_static(x) for x in v):
            sl[dest].extend(str(x) for x in v)
        elif v:
            skipped.append(key)
    ctx.written.append("sbatch.sh")
    if skipped:
        return Result("unsupported", f"computed at run time, so not in sbatch.sh: {', '.join(skipped)}")
    return None


# ---------------------------------------------------------------------------------------------- NeMo 1.0 / Aligner settings

def early_stopping(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.exp_manager.create_early_stopping_callback"):
        patience = ctx.v("nemo1.exp_manager.early_stopping_callback_params.patience")
        return Result("unsupported", f"early stopping on val_loss (patience {patience}): Automodel 0.7 has none, so training runs to max_steps")
    return None


def amp_o2(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.megatron_amp_O2"):
        return Result("exact", "megatron_amp_O2: half-precision weights with fp32 master copies in the optimizer (see OPT007 for the master copies)")
    return None


def nemo1_model_misc(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.fsdp"):
        return Result("exact", "NeMo 1.0 torch FSDP and Automodel's FSDP2 shard the same model; the math is unchanged")
    return None


def unused_peft_settings(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.peft.lora_tuning.weight_tying"):
        return Result("unsupported", "LoRA weight tying across layers has no Automodel equivalent")
    if ctx.v("nemo1.model.peft.lora_tuning.variant") == "canonical":
        return Result("exact", "variant canonical: separate q/k/v and gate/up adapters (CanonicalLoRA)")
    return None


_MIRRORED = {"label_key": "data.dataset_kwargs.label_key", "prompt_template": "data.dataset_kwargs.prompt_template",
             "truncation_field": "data.dataset_kwargs.truncation_field", "add_eos": "data.dataset_kwargs.add_eos",
             "add_bos": "data.dataset_kwargs.add_bos", "add_sep": "data.dataset_kwargs.add_sep", "max_seq_length": "data.seq_length"}


def validation_mirror(ctx: Ctx) -> Result | None:
    for key, train_path in _MIRRORED.items():
        v = ctx.v(f"nemo1.model.data.validation_ds.{key}")
        if v is not None and v != ctx.v(train_path):
            return Result("unsupported", f"validation_ds.{key}={v!r} differs from the training setting {ctx.v(train_path)!r}; "
                          "Automodel formats validation data like the training data")
    metric = ctx.v("nemo1.model.data.validation_ds.metric.name")
    if metric not in (None, "loss"):
        return Result("unsupported", f"validation metric {metric!r}: Automodel validates with the loss only")
    return None


def test_ds(ctx: Ctx) -> Result | None:
    if ctx.v("nemo1.model.data.test_ds.file_names"):
        return Result("unsupported", "test files are evaluated after training by the NeMo 1.0 script; Automodel has no test pass")
    return None


def chat_tokens(ctx: Ctx) -> Result | None:
    if ctx.v("data.chat"):
        return Result("approximate", "NeMo's chat prompt tokens are replaced by the tokenizer's chat template (see DAT001)")
    return None


# ---------------------------------------------------------------------------------------------- NeMo 1.0 / Aligner: script, epochs, LR hold

def nemo1_defaults_note(ctx: Ctx) -> Result | None:
    node = ctx.node("nemo1")
    if node is not None and node.prov.detail:
        ctx.note("info", node.prov.detail)
    return None


def automodel_epoch_len(samples: int, gbs: int, lbs: int, dp: int) -> int:
    """Optimizer steps per epoch in Automodel 0.7: StatefulDistributedSampler(drop_last=True) gives each DP rank
    samples // dp, the loader makes ceil(. / local_batch) micro-batches, StepScheduler.epoch_len = ceil(. / grad_acc)."""
    grad_acc = max(gbs // (lbs * dp), 1)
    return math.ceil(math.ceil((samples // dp) / lbs) / grad_acc)


def aligner_epochs(ctx: Ctx) -> Result | None:
    """NeMo-Aligner's SupervisedTrainer: epochs always cap the run (SCH002's up-sampling is NeMo 2's and NeMo 1.0's)."""
    from .sources.nemo1 import aligner_steps_per_epoch, count_samples

    e = ctx.v("trainer.max_epochs", 1)
    limit = ctx.v("nemo1.trainer.sft.limit_train_batches", 1.0)
    if not isinstance(e, int) or isinstance(e, bool) or e < 1:
        kn = ctx.k("trainer.max_epochs")
        ctx.diags.error("NM249", f"trainer.sft.max_epochs={e!r}: NeMo-Aligner's SupervisedTrainer loops over range(max_epochs), so nothing "
                        "would train", key="trainer.sft.max_epochs", hint="set a positive number of epochs", **(kn.prov.where() if kn else {}))
        return Result("unsupported", f"max_epochs={e!r}")
    ms = ctx.v("trainer.max_steps")
    by_epochs = not isinstance(ctx.v("nemo1.trainer.sft.max_steps"), int) or ctx.v("nemo1.trainer.sft.max_steps") < 0
    ctx.unset("step_scheduler.num_epochs")  # SCH002 follows max_steps, as NeMo 2 and NeMo 1.0 up-sample; Aligner does not
    if ctx.v("nemo1.model.data.sample") and not by_epochs:
        ctx.set("step_scheduler.num_epochs", None, "trainer.max_epochs", "nemo1.model.data.sample", note="follow max_steps")
        return Result("approximate", "model.data.sample=True up-samples the training file to max_steps x GBS samples, so no epoch ends the run; "
                      "Automodel iterates epochs of the file (num_epochs follows max_steps), each with a short last step")
    ctx.set("step_scheduler.num_epochs", e, "trainer.max_epochs")
    found: list[Result] = []
    if ms is None and ctx.node("optim.lr_scheduler") is not None:  # epoch-driven, data not readable: the LR schedule's length is unknown
        found.append(_aligner_unknown_schedule(ctx, e))
    partial = not (limit is None or limit == 1 or (isinstance(limit, float) and limit > 1.0))
    gbs, lbs = ctx.v("data.global_batch_size"), ctx.v("data.micro_batch_size")
    n = count_samples([str(f) for f in ctx.v("data.train_files") or []], Path(ctx.job.data_dir) if ctx.job.data_dir else None)
    if partial and e > 1:
        found.append(Result("unsupported", f"limit_train_batches={limit}: NeMo-Aligner trains only part of each epoch; Automodel has no per-epoch limit"))
    elif n is not None and isinstance(gbs, int) and isinstance(lbs, int) and gbs > 0 and lbs > 0:
        per, am = aligner_steps_per_epoch(n, gbs, limit), automodel_epoch_len(n, gbs, lbs, ctx.dp)
        if per == am:
            found.append(Result("exact", f"{n} samples, GBS {gbs}: {per} steps per epoch in both"))
        else:
            found.append(Result("approximate", f"{n} samples, GBS {gbs}: NeMo-Aligner runs {per} full steps per epoch and drops {n - per * gbs} "
                                f"samples (reshuffled each epoch); Automodel runs {am} steps per epoch, the last one short" +
                                ("; step_scheduler.max_steps keeps NeMo's step count" if isinstance(ms, int) else "")))
    if not found:
        return None
    rank = {"unsupported": 0, "approximate": 1, "exact": 2}
    worst = min(found, key=lambda r: rank[r.status or "approximate"])
    shown = [r.reason or "" for r in found if r.status != "exact" or worst.status == "exact"]  # an exact part is not news next to a finding
    return Result(worst.status, "; ".join(shown))


def _aligner_unknown_schedule(ctx: Ctx, epochs: int) -> Result:
    """Epoch-driven Aligner run without its data: NeMo sizes the scheduler from len(train dataloader) x max_epochs.  The
    decay is left to Automodel's total steps (lr_decay_steps unset), and the row says what NeMo does instead."""
    w = int(ctx.v("optim.lr_scheduler.warmup_steps", 0) or 0)
    c = int(ctx.v("optim.lr_scheduler.constant_steps", 0) or 0)
    gbs = ctx.v("data.global_batch_size")
    ctx.unset("lr_scheduler.lr_decay_steps")
    t = f"T = {epochs} x (samples // {gbs})"
    if c <= 0:
        return Result("approximate", f"the cosine decays over NeMo's {t} steps and over Automodel's total steps (lr_decay_steps unset): the same "
                      "when the sample count is a multiple of GBS")
    if w > 0:
        ctx.unset("lr_scheduler.init_lr")
        ctx.set("lr_scheduler.init_lr", 0.0, "optim.lr_scheduler.constant_steps", "optim.lr_scheduler.warmup_steps",
                note="constant_steps > 0: NeMo warms up linearly from 0")
    return Result("unsupported", f"max_steps -1 with constant_steps={c}: NeMo's LR decays until {t} minus {c} and then holds min_lr (min_lr "
                  f"right after the {w} warm-up steps when T <= {w + c}); the training file is not readable here, so lr_decay_steps is left "
                  f"to Automodel's total steps: set lr_scheduler.lr_decay_steps = max(T - {c}, {w + 1}), or convert where the file exists")


def nemo_cosine_hold(lr: float, warmup: int, constant: int, max_steps: int, min_lr: float) -> tuple[dict[str, Any], str]:
    """Automodel OptimizerParamScheduler settings for NeMo's CosineAnnealing with constant_steps > 0 (the same LR at every
    optimizer step s, 0-based).  NeMo (nemo/core/optim/lr_scheduler.py, WarmupAnnealHoldPolicy.get_lr with
    _linear_warmup_with_cosine_annealing): s <= W: lr*s/W; W < s <= W+D: min + (lr-min)*(1+cos(pi*(s-W)/D))/2 with
    D = max_steps - C - W; afterwards min_lr.  Raises ValueError where NeMo itself fails."""
    w, c, m = warmup, constant, max_steps
    d = m - c - w
    if lr <= min_lr:
        raise ValueError(f"lr {lr} <= min_lr {min_lr}: NeMo's CosineAnnealing with constant_steps asserts max_lr > min_lr at the first step")
    if w == 0 and d == 0:
        raise ValueError(f"warmup_steps=0 and max_steps {m} == constant_steps {c}: NeMo's CosineAnnealing divides by zero at the first step")
    if w == 0 and d < 0:
        return ({"lr_decay_style": "constant", "lr_warmup_steps": 0, "init_lr": min_lr, "max_lr": min_lr, "min_lr": min_lr, "lr_decay_steps": 1},
                f"max_steps {m} < constant_steps {c} without warmup: NeMo holds min_lr {min_lr} from the first step (constant LR min_lr)")
    vals: dict[str, Any] = {"lr_decay_style": "cosine", "lr_warmup_steps": w, "min_lr": min_lr, "lr_decay_steps": max(m - c, w + 1)}
    if w > 0:
        vals["init_lr"] = 0.0
    if d <= 0:
        return vals, (f"max_steps {m} <= warmup {w} + constant_steps {c}: NeMo warms up linearly from 0 (lr*s/{w}) and holds min_lr from "
                      f"step {w + 1} on (lr_decay_steps {w + 1})")
    return vals, (f"NeMo warms up linearly from 0 (lr*s/{w}), decays by cosine to min_lr at step {m - c} and holds it for the last {c} steps "
                  f"(lr_decay_steps {m - c})")


def nemo1_batch_mirror(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        key = p.rsplit(".", 1)[1]
        v, trained = ctx.v(p), ctx.v(f"data.{key}")
        if v != trained:
            return Result("dropped", f"model.{key}={v} is overwritten by model.data.train_ds.{key}={trained}, which is what trains (BAT001/BAT002)")
    return None
