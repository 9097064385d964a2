"""Recipe and model rows (RCP001, MOD*): the HF model the job trains, its tokenizer, loss and recompute."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from ... import checkpoint, knowledge
from ..context import Ctx, Registry, Result, nemo_default
from .common import _mine

transform = Registry()

AUTOMODEL_RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
MODEL_TARGET = "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained"
MASKED_CE = "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"


def model_info(ctx: Ctx) -> dict[str, Any]:
    """The HF model id the job trains, its family and shape: --model > nemo://<id> > a guess from a local path."""
    if "model" in ctx.facts:
        return ctx.facts["model"]
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
            info.update(id=checkpoint.default_output(path), how="local", guessed=guess, arch=ckpt.arch, known=checkpoint.shape(ckpt),
                        config_class=_class_name(ckpt.cfg.get("_target_")))
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
    ctx.facts["model"] = info
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


@transform
def recipe_key(ctx: Ctx) -> Result | None:
    ctx.set("recipe", AUTOMODEL_RECIPE, "_target_")
    if ctx.job.tree.cls != "finetune":
        return Result("approximate", f"the factory returns {ctx.job.tree.cls}, not llm.finetune; migrated as a fine-tune")
    return None


# ---------------------------------------------------------------------------------------------- which model: recipe, restore path, --model

_VARIANT = re.compile(r"-(instruct|chat|it|hf|base)$", re.I)  # Meta-Llama-3-8B-Instruct is the 8B recipe's model, tuned
_SHAPE_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "ffn": "intermediate_size", "heads": "num_attention_heads",
               "kv_heads": "num_key_value_heads", "vocab": "vocab_size"}
_NEMO_SHAPE_KEYS = {"layers": "num_layers", "hidden": "hidden_size", "ffn": "ffn_hidden_size", "heads": "num_attention_heads",
                    "kv_heads": "num_query_groups"}
_NEMO_LOADS = ("NeMo builds the recipe's model and loads the restore checkpoint's weights into it (AutoResume -> "
               "MegatronStrategy.selective_restore; the checkpoint's own model config is not used)")


def _class_name(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if isinstance(target, str) and target else None


def _config_classes() -> dict[str, str]:
    """NeMo model config class -> the HF model its recipe imports (mappings/nemo2/recipes.yaml: config_class, hf_id)."""
    out: dict[str, str] = {}
    for _name, r in sorted(knowledge.recipes().items()):
        if r.get("config_class") and r.get("hf_id"):
            out.setdefault(r["config_class"], r["hf_id"])
    return out


def _class_of(hf_id: str | None) -> str | None:
    """The NeMo model config class a recipe uses for ``hf_id`` (or for the model it is a tuned variant of)."""
    by_id = {v: k for k, v in _config_classes().items()}
    while hf_id:
        if hf_id in by_id:
            return by_id[hf_id]
        base = _VARIANT.sub("", hf_id)
        hf_id = base if base != hf_id else None
    return None


def _shape_of(hf_id: str | None) -> dict[str, int] | None:
    models = knowledge.models()
    name = (models["models"].get(hf_id or "") or {}).get("shape")
    return models["llama_shapes"].get(name) if name else None


def _hf_dir_shape(path: str) -> dict[str, int] | None:
    """The shape of a local HF model directory from its config.json (read as JSON, nothing executed)."""
    try:
        cfg = json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    shape = {k: cfg.get(v) for k, v in _SHAPE_KEYS.items()}
    if shape["kv_heads"] is None:
        shape["kv_heads"] = shape["heads"]
    return shape if all(isinstance(v, int) and not isinstance(v, bool) for v in shape.values()) else None


def _recipe_model(ctx: Ctx) -> dict[str, Any] | None:
    """What the NeMo job's model config is: its class, the HF model that class is, its shape, and where it was set."""
    node = ctx.node("model.config")
    cls = node.cls if node is not None else (ctx.job.recipe_info or {}).get("config_class")
    hf = _config_classes().get(cls or "")
    if not cls or not hf:
        return None
    prov = node.prov if node is not None else None
    where = (f"recipe llm.{(prov.detail or '').split(' (')[0]}" if prov is not None and prov.kind == "recipe-default" and prov.detail
             else str(prov) if prov is not None else "the recipe")
    shape = dict(_shape_of(hf) or {})
    for key, field in _NEMO_SHAPE_KEYS.items():  # recipe.model.config.num_layers = ... and the like change what NeMo builds
        kn = ctx.k(f"model.config.{field}")
        if kn is not None and kn.prov.kind != "nemo-default" and isinstance(kn.value, int) and not isinstance(kn.value, bool):
            shape[key] = kn.value
            where = f"{where}; {field} from {kn.prov}"
    return {"cls": cls, "id": hf, "shape": shape or None, "where": where}


def _differs(a: dict[str, int] | None, b: dict[str, int] | None) -> list[str]:
    """The shape fields two models disagree on.  Not the vocabulary: NeMo restores the checkpoint's tokenizer with it
    (RestoreConfig.load_artifacts), and the model's embedding follows that tokenizer."""
    if not a or not b:
        return []
    return [f"{k} {a[k]} vs {b[k]}" for k in _NEMO_SHAPE_KEYS if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]]


def check_model_choice(ctx: Ctx, info: dict[str, Any]) -> None:
    """Say when the recipe's model and the restore path (or --model) are not the same model, and which one the
    migrated job trains: an error when NeMo itself could not load the restore checkpoint into the recipe's model."""
    rec = _recipe_model(ctx)
    path = info["restore"]
    if rec is None:
        return
    kn = ctx.k("resume.restore_config.path")
    where = kn.prov.where() if kn else {}
    restore_id = info.get("guessed") or (info["id"] if info["how"] in ("nemo", "hf", "guess", "local") else None)
    if info["how"] == "--model" and isinstance(path, str) and path:
        restore_id = path[len("nemo://"):].strip("/") if path.startswith("nemo://") else (
            path[len("hf://"):].strip("/") if path.startswith("hf://") else guess_hf_id(path, None)[0])
    if isinstance(path, str) and path and restore_id is not None:
        rshape = info["known"][1] if info.get("known") else _shape_of(restore_id)
        rcls = info.get("config_class") if info["how"] == "local" else _class_of(restore_id)
        what = f"the NeMo 2 checkpoint {path} ({rcls or info.get('arch')})" if info["how"] == "local" else f"'{path}' ({restore_id})"
        diff = _differs(rec["shape"], rshape)
        if diff:
            over = info["how"] == "--model"
            (ctx.diags.warning if over else ctx.diags.error)(
                "NM504", f"recipe and restore path name different models: the recipe's model config is {rec['cls']} ({rec['where']}; "
                f"{rec['id']}'s architecture) but the restore path is {what}, another shape ({', '.join(diff)}). {_NEMO_LOADS}, so the NeMo job "
                "stops with dist_checkpointing's 'Global shape mismatch'" + (f"; --model {info['id']} decides what the migrated job "
                                                                              "trains" if over else "; nothing is migrated from a job that cannot run"),
                key="resume.restore_config.path",
                hint=f"make them name one model: a factory or model config for {restore_id} (e.g. the llm.<model> recipe of that "
                     f"size), or a restore path holding {rec['id']}; or pass --model <HF id or HF directory> to choose what the "
                     f"migrated job trains", **where)
        elif rcls and rcls != rec["cls"] and rcls in _config_classes():  # a generic LlamaConfig in a checkpoint says nothing
            ctx.diags.warning(
                "NM504", f"recipe and restore path name different models: the recipe's model config is {rec['cls']} ({rec['where']}; "
                f"{rec['id']}'s architecture) but the restore path is {what}, whose recipe uses {rcls}. {_NEMO_LOADS}, so NeMo trained these "
                f"weights under {rec['cls']}'s settings (e.g. RoPE scaling, which the checkpoint's HF config.json may not share). "
                f"The restore path won: the migrated job loads {info['id']} with its own config.json", key="resume.restore_config.path",
                hint=f"if the job was meant for {restore_id}, use its recipe (model config {rcls}); if it was meant for {rec['id']}, "
                     f"pass --model {rec['id']} or point the restore path at it", **where)
    if info["how"] == "--model":
        mshape = _hf_dir_shape(info["id"]) or _shape_of(info["id"])
        diff = _differs(rec["shape"], mshape)
        if diff:
            ctx.diags.warning("NM504", f"--model {info['id']} is not the shape of the recipe's model config {rec['cls']} ({rec['where']}; "
                              f"{rec['id']}'s architecture): {', '.join(diff)}; --model won: the migrated job trains it, the NeMo job trained {rec['cls']}",
                              hint=f"pass --model with the weights the NeMo job trained ({rec['id']} or its HF export)")


_PATHLIKE = re.compile(r"^(/|~|\.{1,2}(/|$))|\\|^[A-Za-z]:|/.*/")


def _repo_id_problem(value: str) -> str | None:
    """Why ``value`` is not a Hugging Face repo id (huggingface_hub's own validator when it is installed)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # the same rules (huggingface_hub/utils/_validators.py)
        if value.count("/") > 1:
            return "a repo id is 'name' or 'namespace/name'"
        if not re.fullmatch(r"(\b[\w\-.]{1,96}\b/)?\b[\w\-.]{1,96}\b", value):
            return "a repo id uses letters, digits, '-', '_' and '.', does not start or end with '-' or '.', at most 96 characters"
        if "--" in value or ".." in value or value.endswith(".git"):
            return "a repo id has no '--' or '..' and does not end in .git"
        return None
    try:
        validate_repo_id(value)
    except HFValidationError as e:
        return str(e)
    return None


def check_model_arg(ctx: Ctx, value: str) -> bool:
    """--model must be a local HF model directory (config.json) or a valid HF repo id; anything else is an error."""
    hint = "pass --model <HF repo id, e.g. meta-llama/Llama-3.1-8B> or <local directory with config.json and the weights>"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 (os.fsdecode's surrogates): NM918 refuses it where it would be written
        return True
    p = Path(value).expanduser()
    try:
        exists, is_dir, has_cfg = p.exists(), p.is_dir(), (p / "config.json").is_file()
    except (OSError, ValueError):
        exists = is_dir = has_cfg = False
    if exists:
        if has_cfg:
            return True
        ctx.diags.error("NM503", f"--model {value}: " + ("the directory holds no config.json, so it is not a Hugging Face model directory"
                                                         if is_dir else "a file, not a Hugging Face model directory"),
                        hint=hint + ("; a NeMo 2 checkpoint converts with `nemo-migrate convert-checkpoint DIR -o DIR-hf`"
                                     if checkpoint.looks_like_checkpoint(p) else ""))
        return False
    if _PATHLIKE.search(value):
        ctx.diags.error("NM503", f"--model {value}: no such directory (a path; it is not a Hugging Face repo id either)",
                        hint=hint + "; if the directory is on another machine, convert there or pass the HF id of the same weights")
        return False
    why = _repo_id_problem(value)
    if why:
        ctx.diags.error("NM503", f"--model {value!r} is neither a local directory nor a valid Hugging Face repo id: {why}", hint=hint)
        return False
    return True


@transform
def model_from_restore(ctx: Ctx) -> Result | None:
    info = model_info(ctx)
    ctx.set("model._target_", MODEL_TARGET)
    path = info["restore"]
    if info["how"] == "--model" and not check_model_arg(ctx, info["id"]):
        return Result("unsupported", f"--model {info['id']} is not a model")
    check_model_choice(ctx, info)
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


@transform
def restore_extras(ctx: Ctx) -> Result | None:
    if ctx.v("resume.restore_config.adapter_path"):
        return Result("unsupported", "starting from an existing NeMo LoRA adapter: Automodel cannot load NeMo adapters; "
                      "export it with llm.export_ckpt(target='hf-peft') and merge it into the base, or start fresh")
    if ctx.v("resume.restore_config.load_optim_state"):
        return Result("unsupported", "restoring NeMo optimizer state is not possible in Automodel (fresh optimizer)")
    return None


@transform
def resume_policy(ctx: Ctx) -> Result | None:
    if ctx.v("resume.resume_from_directory") or ctx.v("resume.resume_from_path"):
        return Result("unsupported", "resuming a NeMo run's own checkpoint: Automodel cannot load NeMo distcp checkpoints")
    if ctx.v("resume.resume_if_exists"):
        return Result("exact", "both continue from the newest checkpoint of the run directory")
    ctx.note("warning", "Automodel resumes from the newest checkpoint in checkpoint.checkpoint_dir; NeMo's fine-tune started "
             "from the base weights at every launch. Use a new checkpoint_dir (or clear it) to start fresh.")
    return None


@transform
def tokenizer_source(ctx: Ctx) -> Result | None:
    tok = ctx.v("tokenizer", nemo_default("finetune.tokenizer"))
    mid = model_info(ctx)["id"]
    if mid:
        ctx.set("dataset.tokenizer.pretrained_model_name_or_path", mid, "tokenizer")
    if tok in ("model", None):
        return None
    if tok == "data":
        return Result("approximate", "tokenizer='data' (the data module's tokenizer); Automodel uses the model's")
    return Result("unsupported", f"a custom tokenizer ({tok!r}); Automodel's dataset.tokenizer takes an HF tokenizer directory")


@transform
def loss_reduction(ctx: Ctx) -> Result | None:
    ctx.set("loss_fn._target_", MASKED_CE)
    if ctx.v("model.config.calculate_per_token_loss"):
        return Result("exact", "per-token loss over the whole step in both (Megatron calculate_per_token_loss)")
    gbs, mbs, dp = ctx.v("data.global_batch_size"), ctx.v("data.micro_batch_size"), ctx.dp
    n = gbs // (mbs * dp) if isinstance(gbs, int) and isinstance(mbs, int) and mbs * dp else None
    if n == 1 and dp == 1 and mbs == 1:
        return Result("exact", "one micro-batch of one sample per step on one data-parallel rank: both reductions are the token mean of that sample")
    return None


@transform
def activation_checkpointing(ctx: Ctx) -> Result | None:
    g = ctx.v("model.config.recompute_granularity")
    if g in ("full",):
        ctx.set("distributed.activation_checkpointing", True, "model.config.recompute_granularity")
    elif g == "selective":
        ctx.set("distributed.activation_checkpointing", "selective", "model.config.recompute_granularity")
    elif g:
        return Result("approximate", f"recompute_granularity={g!r} mapped to no activation checkpointing")
    return None


@transform
def model_dropout(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        v = ctx.v(p)
        if v not in (None, 0, 0.0):
            return Result("unsupported", f"{p}={v}: the dropout of the pretrained architecture comes from its HF config.json")
    return None
