"""Validate an effective Automodel 0.7 config and resolve it into a normalised ``Spec`` -- before any training.

Every section is checked the way 0.7 checks it (strict dataclass sections reject unknown keys; lenient ones warn
here instead of ignoring silently), plus the runtime's own limits (what it does not implement fails clearly).
Nothing here imports torch at module import; a few checks import it lazily (optimizer signatures).
"""

from __future__ import annotations

import errno
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import parse_dtype
from .errors import RunError

# ----------------------------------------------------------------------------------------------------------------
# Known keys
# ----------------------------------------------------------------------------------------------------------------

KNOWN_TOP_LEVEL = {
    "recipe", "seed", "rng", "dist_env", "model", "distributed", "peft", "fp8", "compile", "quantization", "qat",
    "sdpa_method", "loss_fn", "optimizer", "lr_scheduler", "clip_grad_norm", "step_scheduler", "dataset",
    "dataloader", "validation_dataloader", "packed_sequence", "checkpoint", "wandb", "mlflow", "comet", "prewarm",
    "mfu", "embedding_row_repair", "neftune", "moe_metrics", "tool_call_eval", "nvtx", "freeze_config",
    "domain_mixture", "ci", "benchmark", "nemo_compat", "skypilot", "nemo_run", "mtp",
}

STEP_SCHEDULER_KEYS = {
    "global_batch_size", "local_batch_size", "num_epochs", "max_steps", "ckpt_every_steps",
    "save_checkpoint_every_epoch", "validate_on_checkpoint", "val_every_steps", "log_remote_every_steps",
    "loss_average_window_steps", "gc_every_steps", "start_step", "start_epoch", "preemption_signal",
    "dp_size", "dataloader",
}
DIST_SIZE_KEYS = {"tp_size", "pp_size", "cp_size", "ep_size", "dp_size", "dp_replicate_size"}
DIST_META_KEYS = {"strategy", "pipeline", "moe", "activation_checkpointing", "_target_", "_recursive_", "_convert_"}
FSDP2_KEYS = {
    "sequence_parallel", "tp_plan", "patch_is_packed_sequence", "mp_policy", "offload_policy", "autocast_dtype",
    "activation_checkpointing_scope", "defer_fsdp_grad_sync", "reshard_after_forward",
    "enable_async_tensor_parallel", "enable_compile", "enable_fsdp2_prefetch", "fsdp2_backward_prefetch_depth",
    "fsdp2_forward_prefetch_depth", "multimodal",
}
DDP_KEYS = {"activation_checkpointing_scope", "broadcast_buffers", "find_unused_parameters", "static_graph",
            "bucket_cap_mb", "gradient_as_bucket_view", "autocast_dtype"}
MP_POLICY_KEYS = {"param_dtype", "reduce_dtype", "output_dtype", "cast_forward_inputs", "_target_"}
PEFT_KEYS = {"target_modules", "exclude_modules", "match_all_linear", "dim", "alpha", "use_dora", "dropout",
             "dropout_position", "lora_A_init", "lora_dtype", "use_memory_efficient_lora", "use_triton",
             "moe_rank_scaling", "expert_weight_format", "_target_"}
FP8_KEYS = {"enabled", "recipe_name", "enable_fsdp_float8_all_gather", "precompute_float8_dynamic_scale_for_fsdp",
            "force_recompute_fp8_weight_in_bwd", "filter_fqns", "emulate", "_target_"}
LR_KEYS = {"lr_warmup_steps", "lr_decay_steps", "lr_decay_style", "init_lr", "max_lr", "min_lr", "start_wd",
           "end_wd", "wd_incr_steps", "wd_incr_style", "use_checkpoint_opt_param_scheduler",
           "override_opt_param_scheduler", "wsd_decay_steps", "lr_wsd_decay_style"}
CKPT_KEYS = {"enabled", "checkpoint_dir", "model_save_format", "model_cache_dir", "model_repo_id",
             "save_consolidated", "is_peft", "model_state_dict_keys", "is_async", "wait_for_staging", "cpu_offload",
             "allow_legacy_pickle_restore", "dequantize_base_checkpoint", "original_model_root_dir",
             "skip_task_head_prefixes_for_base_model", "single_rank_consolidation", "staging_dir", "v4_compatible",
             "legacy_paramwrapper_layout", "diffusers_compatible", "best_metric_key",
             "consolidation_timeout_minutes", "max_recent_checkpoints", "restore_from"}
COLUMN_MAPPED_KEYS = {"path_or_dataset_id", "column_mapping", "split", "name", "answer_only_loss_mask",
                      "seq_length", "padding", "truncation", "limit_dataset_samples", "use_hf_chat_template"}
CHAT_KEYS = {"path_or_dataset_id", "split", "name", "seq_length", "padding", "truncation", "start_of_turn_token",
             "chat_template", "shuffle_seed", "mask_reasoning_content", "mask_history", "unshifted",
             "skip_invalid_samples", "mask_generation_prompt"}  # ChatDatasetConfig's fields (0.7.0)
MOCK_KEYS = {"vocab_size", "seq_len", "num_samples", "batch_size", "exclude_token_ids"}
DATALOADER_KEYS = {"_target_", "shuffle", "group_by_length", "shuffle_buffer_size", "batch_size", "num_workers",
                   "pin_memory", "persistent_workers", "prefetch_factor", "drop_last", "collate_fn",
                   "dataloader_type", "dataset"}
PACKED_KEYS = {"packed_sequence_size", "packing_strategy", "max_packs", "prepacked", "num_proc",
               "drop_long_samples", "pad_to_multiple_of", "split_across_pack"}
COMPILE_KEYS = {"enabled", "mode", "fullgraph", "dynamic", "backend", "options", "dynamo_cache_size_limit"}
NEMO_COMPAT_KEYS = {"lora_tied_a", "loss_reduction", "master_weights", "no_decay_1d", "lr_values", "init_adapter",
                    "save_init_adapter"}
MODEL_KEYS = {"_target_", "pretrained_model_name_or_path", "config", "dtype", "torch_dtype", "attn_implementation",
              "force_hf", "trust_remote_code", "use_liger_kernel", "use_sdpa_patching", "sdpa_method", "backend",
              "load_base_model", "cache_dir", "revision", "output_hidden_states", "is_meta_device",
              "local_files_only", "low_cpu_mem_usage"}
MASKED_CE_KEYS = {"_target_", "fp32_upcast", "ignore_index", "reduction"}

_COLUMN_MAPPED = ("ColumnMappedTextInstructionDataset", "ColumnMappedTextInstructionDatasetConfig")
_MOCK = ("MockIterableDataset", "MockIterableDatasetConfig")
_CHAT = ("ChatDataset", "ChatDatasetConfig")
_PRETOKENIZED = ("nemo_migrate.pretokenized", "pretokenized")  # run --verify: samples tokenized as NeMo does
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")


# ----------------------------------------------------------------------------------------------------------------
# Normalised spec
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    source: str  # "pretrained" (local HF dir with weights) | "config" (random init from a local config) | "proxy"
    name: str | None  # the config's model id / path string (for messages, adapter_config, family detection)
    path: str | None  # local dir (pretrained / config source)
    proxy: str | None
    dtype: str  # "auto" or a torch dtype name
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    use_liger_kernel: bool = True  # 0.7's default: Liger's fused kernels where the package and a GPU are there


@dataclass
class TokenizerSpec:
    path: str | None  # a local dir with tokenizer files; None = train one on the run's text
    add_bos_token: bool = False
    add_eos_token: bool = False


@dataclass
class PeftSpec:
    target_modules: list[str]
    exclude_modules: list[str]
    match_all_linear: bool
    dim: int
    alpha: float
    dropout: float
    dropout_position: str
    lora_A_init: str
    lora_dtype: str | None


@dataclass
class Fp8Spec:
    recipe_name: str | None
    enable_fsdp_float8_all_gather: bool
    precompute_float8_dynamic_scale_for_fsdp: bool
    force_recompute_fp8_weight_in_bwd: bool
    filter_fqns: list[str]
    emulate: bool


@dataclass
class DistSpec:
    strategy: str
    world_size: int
    tp: int
    cp: int
    pp: int
    dp: int
    dp_replicate: int
    sequence_parallel: bool
    param_dtype: str | None
    reduce_dtype: str | None
    output_dtype: str | None
    cast_forward_inputs: bool
    autocast_dtype: str | None
    activation_checkpointing: bool
    defer_fsdp_grad_sync: bool
    reshard_after_forward: bool | None
    enable_compile: bool
    offload: bool
    backend: str
    timeout_minutes: float


@dataclass
class StepSpec:
    global_batch_size: int
    local_batch_size: int
    grad_acc_steps: int
    num_epochs: int | None
    max_steps: int | None
    ckpt_every_steps: int | None
    save_checkpoint_every_epoch: bool
    validate_on_checkpoint: bool
    val_every_steps: int | None
    gc_every_steps: int | None
    preemption_signal: list[str]


@dataclass
class DatasetSpec:
    kind: str  # "column_mapped" | "chat" | "mock"
    params: dict[str, Any]
    shuffle: bool | None
    batch_size: int | None
    drop_last: bool
    pin_memory: bool
    pad_seq_len_divisible: int | None
    packing: dict[str, Any] | None = None  # THD packing: packed_sequence_size, max_packs, pad_to_multiple_of


@dataclass
class OptimSpec:
    target: str  # e.g. torch.optim.AdamW
    kwargs: dict[str, Any]
    param_group_overrides: list[dict[str, Any]]


@dataclass
class CkptSpec:
    enabled: bool
    checkpoint_dir: str
    model_save_format: str
    save_consolidated: str  # "false" | "final" | "every"
    max_recent_checkpoints: int | None
    restore_from: str | None


@dataclass
class CompatSpec:
    lora_tied_a: bool = False
    loss_reduction: str = "automodel"
    master_weights: str = "none"
    no_decay_1d: bool = False
    lr_values: list[float] | None = None  # the LR applied at each optimizer step (replaces the scheduler's)
    init_adapter: str | None = None  # PEFT-format adapter file the LoRA weights start from
    save_init_adapter: bool = False  # write run_dir/initial_adapter.safetensors before the first step


@dataclass
class CompileSpec:
    enabled: bool = False
    mode: str | None = "default"
    fullgraph: bool = False
    dynamic: bool = False
    backend: str | None = None


@dataclass
class Spec:
    config_path: str
    seed: int
    model: ModelSpec
    tokenizer: TokenizerSpec
    peft: PeftSpec | None
    fp8: Fp8Spec | None
    dist: DistSpec
    step: StepSpec
    loss_ignore_index: int
    loss_fp32_upcast: bool
    optim: OptimSpec
    lr_scheduler: dict[str, Any] | None
    max_grad_norm: float
    train: DatasetSpec
    validation: dict[str, DatasetSpec]
    ckpt: CkptSpec
    compat: CompatSpec
    compile: CompileSpec
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Spec":
        d = dict(d)
        d["model"] = ModelSpec(**d["model"])
        d["tokenizer"] = TokenizerSpec(**d["tokenizer"])
        d["peft"] = PeftSpec(**d["peft"]) if d["peft"] else None
        d["fp8"] = Fp8Spec(**d["fp8"]) if d["fp8"] else None
        d["dist"] = DistSpec(**d["dist"])
        d["step"] = StepSpec(**d["step"])
        d["optim"] = OptimSpec(**d["optim"])
        d["train"] = DatasetSpec(**d["train"])
        d["validation"] = {k: DatasetSpec(**v) for k, v in d["validation"].items()}
        d["ckpt"] = CkptSpec(**d["ckpt"])
        d["compat"] = CompatSpec(**d["compat"])
        d["compile"] = CompileSpec(**d["compile"])
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, file: str, lines: dict[str, str] | None = None):
        self.file = file
        self.lines = lines or {}
        self.notes: list[str] = []

    def where(self, key: str) -> str:
        """``file:line`` (or ``--set ...``) of a dotted key, else of its nearest parent that has one, else the file."""
        k = key
        while k:
            if k in self.lines:
                return self.lines[k]
            k = k[:max(k.rfind("."), k.rfind("["), 0)]
        return self.file

    def err(self, key: str, message: str, **kw) -> RunError:
        return RunError(message, file=self.where(key), key=key, **kw)

    def note(self, msg: str) -> None:
        self.notes.append(msg)


def _section(cfg: dict, name: str, ctx: _Ctx, *, required: bool = False) -> dict | None:
    v = cfg.get(name)
    if v is None:
        if required:
            raise ctx.err(name, "this section is required", hint=f"add a `{name}:` section")
        return None
    if not isinstance(v, dict):
        raise ctx.err(name, "must be a mapping", found=v)
    return v


def _unknown(sec: dict, known: set[str], ctx: _Ctx, name: str, *, what: str | None = None) -> None:
    bad = sorted(k for k in sec if k not in known)
    if bad:
        import difflib

        k = bad[0]
        close = difflib.get_close_matches(k, sorted(known), n=1)
        raise ctx.err(f"{name}.{k}", f"unknown key in `{name}` ({what or 'a strict section in Automodel 0.7'})",
                      expected="one of " + ", ".join(sorted(x for x in known if not x.startswith("_"))),
                      found=k, hint=f"did you mean `{close[0]}`?" if close else "remove the key")


MAX_TOKENS = 2**21  # a sequence longer than this exceeds every model's context (and exhausts memory when padded)


def _int(v: Any, ctx: _Ctx, key: str, *, minimum: int | None = None, allow_none: bool = False,
         maximum: int | None = None) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise ctx.err(key, "must be an integer" + (" or null" if allow_none else ""), found=v)
    if minimum is not None and v < minimum:
        raise ctx.err(key, f"must be >= {minimum}", found=v)
    if maximum is not None and v > maximum:
        raise ctx.err(key, f"must be <= {maximum}", found=v)
    return v


def _float(v: Any, ctx: _Ctx, key: str, *, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.err(key, "must be a number", found=v)
    if not math.isfinite(float(v)):
        raise ctx.err(key, "must be a finite number", found=v)
    return float(v)


def _finite(node: Any, ctx: _Ctx, key: str = "") -> None:
    """Every number of the config is finite and at most 64 bits wide: ``inf``/``nan``/``1e400`` in an optimizer or
    schedule setting would train every weight into NaN (and nothing reads them elsewhere)."""
    todo = [(key, node)]
    while todo:
        k, v = todo.pop()
        if isinstance(v, dict):
            todo.extend((f"{k}.{x}" if k else str(x), y) for x, y in reversed(list(v.items())))
        elif isinstance(v, (list, tuple)):
            todo.extend((f"{k}[{i}]", y) for i, y in reversed(list(enumerate(v))))
        elif isinstance(v, float) and not math.isfinite(v):
            raise ctx.err(k, "is not a finite number: training with it would make the weights NaN", found=v,
                          hint="write a finite value (`.inf`, `.nan` and overflowing numbers such as `1e400` are not)"
                               + ("; a large finite max_norm such as 1e9 never clips" if k.endswith("max_norm")
                                  else ""))
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            raise ctx.err(k, "integer wider than 64 bits", found=f"{str(v)[:20]}... ({len(str(v))} digits)")


def _path(v: Any, ctx: _Ctx, key: str) -> Path:
    """A path-valued setting: a string the file system can look up (no NUL byte, not too long)."""
    if not isinstance(v, str) or not v:
        raise ctx.err(key, "must be a path (a non-empty string)", found=v)
    try:
        os.stat(v)
    except ValueError:
        raise ctx.err(key, "is not a usable path (it contains a NUL byte)", found=v) from None
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):  # does not exist: the caller says so in its own words
            raise ctx.err(key, f"is not a usable path ({e.strerror})", found=v if len(v) < 200 else v[:200] + "...") \
                from None
    return Path(v)


def _dtype(v: Any, ctx: _Ctx, key: str, **kw) -> str | None:
    return parse_dtype(v, file=ctx.where(key), key=key, **kw)


def _bool(v: Any, ctx: _Ctx, key: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.err(key, "must be true or false", found=v)
    return v


def _target_name(t: Any) -> str:
    return str(t or "").rsplit(".", 1)[-1].rsplit(":", 1)[-1]


def has_tokenizer_files(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_dir() and any((Path(path) / f).is_file() for f in _TOKENIZER_FILES)


def has_weights(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any(any(p.glob(g)) for g in _WEIGHT_GLOBS)


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

def _step(cfg: dict, ctx: _Ctx) -> dict:
    sec = _section(cfg, "step_scheduler", ctx) or {}
    _unknown(sec, STEP_SCHEDULER_KEYS, ctx, "step_scheduler")
    k = "step_scheduler."
    out = {
        "global_batch_size": _int(sec.get("global_batch_size", 32), ctx, k + "global_batch_size", minimum=1),
        "local_batch_size": _int(sec.get("local_batch_size", 1), ctx, k + "local_batch_size", minimum=1),
        "num_epochs": _int(sec.get("num_epochs", 10), ctx, k + "num_epochs", minimum=1, allow_none=True),
        "max_steps": _int(sec.get("max_steps"), ctx, k + "max_steps", minimum=1, allow_none=True),
        "ckpt_every_steps": _int(sec.get("ckpt_every_steps", 100), ctx, k + "ckpt_every_steps", minimum=1,
                                 allow_none=True),
        "save_checkpoint_every_epoch": _bool(sec.get("save_checkpoint_every_epoch", True), ctx,
                                             k + "save_checkpoint_every_epoch"),
        "validate_on_checkpoint": _bool(sec.get("validate_on_checkpoint", True), ctx, k + "validate_on_checkpoint"),
        "val_every_steps": _int(sec.get("val_every_steps"), ctx, k + "val_every_steps", minimum=1, allow_none=True),
        "gc_every_steps": _int(sec.get("gc_every_steps"), ctx, k + "gc_every_steps", minimum=1, allow_none=True),
    }
    for key in ("log_remote_every_steps", "loss_average_window_steps"):
        if key in sec:
            _int(sec[key], ctx, k + key, minimum=1)
    for key in ("start_step", "start_epoch"):
        if sec.get(key, 0) not in (0, None):
            raise ctx.err(k + key, "is not supported by the bundled runtime (it resumes from checkpoints instead)",
                          found=sec[key], hint="remove it; a rerun with the same checkpoint_dir resumes")
    sig = sec.get("preemption_signal", "SIGTERM")
    sigs = [] if sig is None else (sig if isinstance(sig, list) else [sig])
    import signal as _signal

    names = []
    for s in sigs:
        try:
            names.append(_signal.Signals(s).name if isinstance(s, int) else _signal.Signals[str(s).upper()].name)
        except (KeyError, ValueError):
            raise ctx.err(k + "preemption_signal", "not a signal name or number", found=s) from None
    for n in names:
        if n in ("SIGKILL", "SIGSTOP"):
            raise ctx.err(k + "preemption_signal", f"{n} cannot be caught, so it cannot trigger a checkpoint", found=n,
                          hint="SIGTERM (what schedulers send before killing a job) or SIGUSR1")
    out["preemption_signal"] = names
    return out


def _dist(cfg: dict, ctx: _Ctx, world_size: int) -> DistSpec:
    sec = dict(_section(cfg, "distributed", ctx) or {})
    strategy = str(sec.get("strategy", "fsdp2")).lower()
    if strategy in ("megatron_fsdp", "megatron-fsdp", "mfsdp"):
        raise ctx.err("distributed.strategy", "megatron_fsdp is not implemented by the bundled runtime",
                      found=strategy, hint="use strategy: fsdp2 (same sharding semantics for training)")
    if strategy not in ("fsdp2", "ddp"):
        raise ctx.err("distributed.strategy", "unknown strategy", expected="fsdp2, ddp or megatron_fsdp",
                      found=strategy)
    allowed = DIST_SIZE_KEYS | DIST_META_KEYS | (FSDP2_KEYS if strategy == "fsdp2" else DDP_KEYS)
    _unknown(sec, allowed, ctx, "distributed", what=f"not an option of strategy {strategy!r}")
    sizes = {}
    for key, default in (("tp_size", 1), ("pp_size", 1), ("cp_size", 1), ("ep_size", 1), ("dp_size", None),
                         ("dp_replicate_size", None)):
        v = sec.get(key)
        sizes[key] = default if v is None else _int(v, ctx, f"distributed.{key}", minimum=1)
    tp, pp, cp, ep = sizes["tp_size"], sizes["pp_size"], sizes["cp_size"], sizes["ep_size"]
    if pp > 1:
        if sec.get("pipeline") is None:
            raise ctx.err("distributed.pp_size", "pp_size > 1 needs a `distributed.pipeline` block in Automodel 0.7",
                          found=pp)
        raise ctx.err("distributed.pp_size", "pipeline parallelism is not implemented by the bundled runtime",
                      expected=1, found=pp, hint="--set distributed.pp_size=1 (FSDP2 over the freed ranks)")
    if cp > 1:
        raise ctx.err("distributed.cp_size", "context parallelism is not implemented by the bundled runtime",
                      expected=1, found=cp, hint="--set distributed.cp_size=1")
    if ep > 1:
        raise ctx.err("distributed.ep_size", "expert parallelism (MoE) is not implemented by the bundled runtime",
                      expected=1, found=ep, hint="--set distributed.ep_size=1")
    if strategy == "ddp" and tp > 1:
        raise ctx.err("distributed.tp_size", "strategy ddp has no tensor parallelism in Automodel 0.7", found=tp)
    if world_size % (tp * cp * pp) != 0:
        raise ctx.err("distributed.tp_size",
                      f"world size {world_size} (--nproc-per-node) is not divisible by tp_size*cp_size*pp_size "
                      f"= {tp * cp * pp}", expected=f"a divisor of {world_size}", found=tp * cp * pp,
                      hint=f"--set distributed.tp_size=1, or run with --nproc-per-node {tp * cp * pp} (or a multiple)")
    dp = world_size // (tp * cp * pp)
    if sizes["dp_size"] is not None and sizes["dp_size"] != dp:
        raise ctx.err("distributed.dp_size", f"dp_size must equal world_size/(tp*cp*pp) = {dp}",
                      expected=dp, found=sizes["dp_size"], hint="set dp_size: null to derive it")
    rep = sizes["dp_replicate_size"] or 1
    if rep > 1:
        if strategy != "fsdp2":
            raise ctx.err("distributed.dp_replicate_size", "HSDP (dp_replicate_size > 1) needs strategy fsdp2",
                          found=rep)
        if dp % rep != 0 or rep >= dp:
            raise ctx.err("distributed.dp_replicate_size", f"must divide dp_size={dp} and be smaller than it",
                          found=rep)
    if sec.get("tp_plan") is not None:
        raise ctx.err("distributed.tp_plan", "custom TP plans are not supported by the bundled runtime (it uses "
                      "its Llama-family plan)", found=sec["tp_plan"], hint="remove tp_plan")
    if sec.get("enable_async_tensor_parallel"):
        ctx.note("distributed.enable_async_tensor_parallel is ignored (plain DTensor TP).")
    if sec.get("patch_is_packed_sequence"):
        ctx.note("distributed.patch_is_packed_sequence is ignored (it only patches transformers' flash-attention "
                 "packing check).")
    ac = sec.get("activation_checkpointing", False)
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
            raise ctx.err("distributed.activation_checkpointing", "not a checkpointing mode",
                          expected="true/false/full/selective", found=ac)
    elif ac is None:
        ac = False
    elif not isinstance(ac, bool):
        raise ctx.err("distributed.activation_checkpointing", "not a checkpointing mode", found=ac)

    # mp_policy: 0.7 default MixedPrecisionPolicy(param bf16, reduce fp32, output None, cast_forward_inputs False)
    param_dtype, reduce_dtype, output_dtype, cast_inputs = "bfloat16", "float32", None, False
    mp = sec.get("mp_policy")
    if mp is not None:
        if not isinstance(mp, dict):
            raise ctx.err("distributed.mp_policy", "must be a mapping", found=mp)
        _unknown(mp, MP_POLICY_KEYS, ctx, "distributed.mp_policy", what="a MixedPrecisionPolicy field")
        # A YAML-given policy starts from MixedPrecisionPolicy()'s own defaults (all None) as 0.7 does.
        param_dtype = _dtype(mp.get("param_dtype"), ctx, "distributed.mp_policy.param_dtype")
        reduce_dtype = _dtype(mp.get("reduce_dtype"), ctx, "distributed.mp_policy.reduce_dtype")
        output_dtype = _dtype(mp.get("output_dtype"), ctx, "distributed.mp_policy.output_dtype")
        cast_inputs = _bool(mp.get("cast_forward_inputs", False), ctx, "distributed.mp_policy.cast_forward_inputs")
    autocast = _dtype(sec.get("autocast_dtype"), ctx, "distributed.autocast_dtype")
    dist_env = _section(cfg, "dist_env", ctx) or {}
    backend = str(dist_env.get("backend", "nccl"))
    timeout = _float(dist_env.get("timeout_minutes", 1), ctx, "dist_env.timeout_minutes")
    if strategy == "ddp":
        param_dtype = reduce_dtype = output_dtype = None
    return DistSpec(
        strategy=strategy, world_size=world_size, tp=tp, cp=cp, pp=pp, dp=dp, dp_replicate=rep,
        sequence_parallel=_bool(sec.get("sequence_parallel", False), ctx, "distributed.sequence_parallel")
        if strategy == "fsdp2" else False,
        param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=output_dtype,
        cast_forward_inputs=cast_inputs, autocast_dtype=autocast, activation_checkpointing=bool(ac),
        defer_fsdp_grad_sync=_bool(sec.get("defer_fsdp_grad_sync", True), ctx, "distributed.defer_fsdp_grad_sync"),
        reshard_after_forward=sec.get("reshard_after_forward"),
        enable_compile=bool(sec.get("enable_compile", False)),
        offload=sec.get("offload_policy") is not None,
        backend=backend, timeout_minutes=timeout,
    )


def _peft(cfg: dict, ctx: _Ctx) -> PeftSpec | None:
    sec = cfg.get("peft")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("peft", "must be a mapping", found=sec)
    _unknown(sec, PEFT_KEYS, ctx, "peft", what="a PeftConfig field")
    if "_target_" not in sec:
        raise ctx.err("peft._target_", "is required (0.7 builds the section with .instantiate())",
                      hint="_target_: nemo_automodel.components._peft.lora.PeftConfig")
    if _target_name(sec["_target_"]) != "PeftConfig":
        raise ctx.err("peft._target_", "the bundled runtime implements LoRA through PeftConfig only",
                      found=sec["_target_"], expected="nemo_automodel.components._peft.lora.PeftConfig")

    def as_list(v, key):
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise ctx.err(key, "must be a string or a list of strings", found=v)

    tm = as_list(sec.get("target_modules"), "peft.target_modules")
    ex = as_list(sec.get("exclude_modules"), "peft.exclude_modules")
    mal = _bool(sec.get("match_all_linear", False), ctx, "peft.match_all_linear")
    if not mal and not tm and not ex:
        ctx.note("peft: no target_modules/exclude_modules/match_all_linear given; using target_modules='*_proj' "
                 "(Automodel 0.7's default).")
        tm = ["*_proj"]
    if tm and ex:
        raise ctx.err("peft.exclude_modules", "target_modules and exclude_modules are mutually exclusive in 0.7",
                      found=ex, hint="keep only one of them")
    if mal and (tm or ex):
        raise ctx.err("peft.match_all_linear", "match_all_linear: true together with target_modules/exclude_modules "
                      "is a ValueError in Automodel 0.7", found=True, hint="drop target_modules or match_all_linear")
    if sec.get("use_dora"):
        raise ctx.err("peft.use_dora", "DoRA is not implemented by the bundled runtime", found=True,
                      hint="--set peft.use_dora=false")
    if sec.get("moe_rank_scaling"):
        ctx.note("peft.moe_rank_scaling is ignored (no MoE experts in the bundled runtime).")
    pos = sec.get("dropout_position", "post")
    if pos not in ("pre", "post"):
        raise ctx.err("peft.dropout_position", "must be pre or post", found=pos)
    dim = _int(sec.get("dim", 8), ctx, "peft.dim", minimum=1, maximum=65536)  # no layer is wider
    alpha = _float(sec.get("alpha", 32), ctx, "peft.alpha")
    dropout = _float(sec.get("dropout", 0.0), ctx, "peft.dropout")
    if not 0.0 <= dropout < 1.0:
        raise ctx.err("peft.dropout", "must be in [0, 1)", found=dropout)
    return PeftSpec(target_modules=tm, exclude_modules=ex, match_all_linear=mal, dim=dim, alpha=alpha,
                    dropout=dropout, dropout_position=pos, lora_A_init=str(sec.get("lora_A_init", "xavier")),
                    lora_dtype=_dtype(sec.get("lora_dtype"), ctx, "peft.lora_dtype"))


def _fp8(cfg: dict, ctx: _Ctx) -> Fp8Spec | None:
    sec = cfg.get("fp8")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("fp8", "must be a mapping", found=sec)
    extra = sorted(k for k in sec if k not in FP8_KEYS)
    if extra:
        ctx.note(f"fp8: unknown key(s) {', '.join(extra)} ignored (0.7 reads fp8 with dict.get).")
    if not sec.get("enabled", False):
        return None
    recipe = sec.get("recipe_name")
    if recipe not in (None, "tensorwise", "rowwise", "rowwise_with_gw_hp"):
        raise ctx.err("fp8.recipe_name", "not a torchao float8 recipe", found=recipe,
                      expected="tensorwise, rowwise or rowwise_with_gw_hp")
    ff = sec.get("filter_fqns") or []
    if isinstance(ff, str):
        ff = [ff]
    return Fp8Spec(recipe_name=recipe,
                   enable_fsdp_float8_all_gather=bool(sec.get("enable_fsdp_float8_all_gather", False)),
                   precompute_float8_dynamic_scale_for_fsdp=bool(sec.get("precompute_float8_dynamic_scale_for_fsdp",
                                                                         False)),
                   force_recompute_fp8_weight_in_bwd=bool(sec.get("force_recompute_fp8_weight_in_bwd", False)),
                   filter_fqns=[str(x) for x in ff], emulate=bool(sec.get("emulate", False)))


def _model(cfg: dict, ctx: _Ctx, opts) -> ModelSpec:
    sec = _section(cfg, "model", ctx, required=True)
    if "_target_" not in sec:
        raise ctx.err("model._target_", "is required", hint="_target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained")
    extra = sorted(k for k in sec if k not in MODEL_KEYS)
    if extra:
        ctx.note(f"model: key(s) {', '.join(extra)} are passed to the model in Automodel; the bundled runtime "
                 "ignores them.")
    target = str(sec["_target_"])
    from_config = target.endswith("from_config")
    if "dtype" in sec:
        dtype = _dtype(sec.get("dtype"), ctx, "model.dtype", allow_auto=True) or "auto"
    else:
        dtype = _dtype(sec.get("torch_dtype", "auto"), ctx, "model.torch_dtype",
                            allow_auto=True) or "auto"
    attn = sec.get("attn_implementation") or "sdpa"
    if attn not in ("sdpa", "eager", "flash_attention_2"):
        ctx.note(f"model.attn_implementation {attn!r} is not available in the bundled runtime; using sdpa.")
        attn = "sdpa"
    name = sec.get("pretrained_model_name_or_path")
    conf = sec.get("config")
    if isinstance(conf, dict):
        conf = conf.get("pretrained_model_name_or_path")
    if name is not None:
        _path(str(name), ctx, "model.pretrained_model_name_or_path")
    if conf is not None:
        _path(str(conf), ctx, "model.config")
    trust = bool(sec.get("trust_remote_code", False))
    liger = _bool(sec.get("use_liger_kernel", True), ctx, "model.use_liger_kernel")
    if opts.model_path is not None:
        p = Path(opts.model_path)
        if not (p / "config.json").is_file():
            raise RunError("--model-path is not a Hugging Face model directory (no config.json)", key="--model-path",
                           found=str(p), hint="point it at a local dir with config.json + *.safetensors")
        if not has_weights(p):
            raise RunError("--model-path has no weights (*.safetensors / pytorch_model*.bin)", key="--model-path",
                           found=str(p), hint="use --proxy-model to train random weights of this shape instead")
        return ModelSpec("pretrained", str(name or conf or p), str(p), None, dtype, attn, trust, liger)
    if opts.proxy_model:
        return ModelSpec("proxy", str(name or conf or ""), None, str(opts.proxy_model), dtype, attn, trust, liger)
    if from_config:
        if conf is None:
            raise ctx.err("model.config", "from_config needs `config:` (a local config dir or config.json)")
        cp = Path(str(conf))
        if cp.is_file() or (cp / "config.json").is_file():
            return ModelSpec("config", str(conf), str(cp.parent if cp.is_file() else cp), None, dtype, attn, trust, liger)
        raise ctx.err("model.config", "is not a local config (the bundled runtime has no hub access)", found=conf,
                      hint="--proxy-model tiny|llama-1b|llama-8b, or --set model.config=/path/to/config_dir")
    if name is None:
        raise ctx.err("model.pretrained_model_name_or_path", "is required for from_pretrained",
                      hint="--model-path DIR or --proxy-model tiny")
    p = Path(str(name))
    if p.is_dir():
        if not (p / "config.json").is_file() or not has_weights(p):
            raise ctx.err("model.pretrained_model_name_or_path", "local directory has no config.json/weights",
                          found=str(p), hint="--proxy-model tiny to run random weights of this shape")
        return ModelSpec("pretrained", str(name), str(p), None, dtype, attn, trust, liger)
    raise ctx.err("model.pretrained_model_name_or_path",
                  "the model is not on this machine and the runtime never downloads (no hub access)", found=str(name),
                  hint="pass --model-path /local/hf/dir, or --proxy-model tiny|llama-1b|llama-8b for random weights "
                       "of the same architecture family")


def _tokenizer(cfg: dict, ctx: _Ctx, model: ModelSpec) -> TokenizerSpec:
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    tok = ds.get("tokenizer")
    add_bos = add_eos = False
    tpath = None
    if tok is not None:
        if not isinstance(tok, dict):
            raise ctx.err("dataset.tokenizer", "must be a mapping", found=tok)
        add_bos = bool(tok.get("add_bos_token", False))
        add_eos = bool(tok.get("add_eos_token", False))
        tpath = tok.get("pretrained_model_name_or_path")
        if tpath is not None:
            tpath = str(_path(tpath, ctx, "dataset.tokenizer.pretrained_model_name_or_path"))
        if tpath is None and "_target_" not in tok:
            raise ctx.err("dataset.tokenizer.pretrained_model_name_or_path",
                          "is required when dataset.tokenizer has no _target_")
    candidates = [tpath, model.path if model.source == "pretrained" else None,
                  model.path if model.source == "config" else None,
                  model.name if model.source == "proxy" else None]
    for c in candidates:
        if c and has_tokenizer_files(c):
            return TokenizerSpec(str(c), add_bos, add_eos)
    return TokenizerSpec(None, add_bos, add_eos)


def _data_paths(params: dict, ctx: _Ctx, name: str, *, check_files: bool) -> None:
    paths = params["path_or_dataset_id"]
    plist = [paths] if isinstance(paths, str) else paths
    if not isinstance(plist, list) or not plist or not all(isinstance(x, str) for x in plist):
        raise ctx.err(f"{name}.path_or_dataset_id", "must be a path or a list of paths", found=paths)
    if check_files:
        for p in plist:
            _path(p, ctx, f"{name}.path_or_dataset_id")
            if not Path(p).exists():
                kind = ("looks like a Hugging Face Hub dataset id, and the bundled runtime reads local JSON/JSONL "
                        "only (no network)") if _HUB_ID.match(p) else "data file not found"
                raise ctx.err(f"{name}.path_or_dataset_id", kind, found=p,
                              hint=f"--set {name}.path_or_dataset_id=/path/to/file.jsonl")
            if Path(p).is_dir():
                raise ctx.err(f"{name}.path_or_dataset_id", "is a directory; give JSON/JSONL file(s)", found=p)
            if not Path(p).is_file():
                raise ctx.err(f"{name}.path_or_dataset_id", "is not a regular file (a FIFO or device would be read "
                              "forever)", found=p, hint="give JSON/JSONL file(s)")
            if Path(p).suffix.lower() == ".parquet":
                raise ctx.err(f"{name}.path_or_dataset_id", "Parquet files are not read by the bundled runtime "
                              "(local JSON/JSONL only)", found=p, hint="convert the rows to JSONL")


def _chat_params(params: dict, ctx: _Ctx, name: str, *, check_files: bool) -> None:
    """ChatDatasetConfig (0.7.0): its fields only; what the runtime cannot do fails here."""
    if "answer_only_loss_mask" in params:
        raise ctx.err(f"{name}.answer_only_loss_mask", f"unknown key in `{name}`: ChatDatasetConfig has no such "
                      "field (0.7 raises TypeError); ChatDataset always trains on the assistant tokens only",
                      found=params["answer_only_loss_mask"], hint=f"remove {name}.answer_only_loss_mask")
    _unknown(params, CHAT_KEYS, ctx, name, what="a ChatDatasetConfig field")
    if "path_or_dataset_id" not in params:
        raise ctx.err(f"{name}.path_or_dataset_id", "is required by ChatDataset")
    _data_paths(params, ctx, name, check_files=check_files)
    if params.get("seq_length") is not None:
        _int(params["seq_length"], ctx, f"{name}.seq_length", minimum=1, maximum=MAX_TOKENS)
    if params.get("padding") == "max_length" and params.get("seq_length") is None:
        raise ctx.err(f"{name}.padding", "padding: max_length needs seq_length (the tokenizer would pad to its "
                      "model_max_length)", found="max_length", hint=f"set {name}.seq_length")
    for k in ("mask_reasoning_content", "mask_history", "unshifted", "skip_invalid_samples", "mask_generation_prompt"):
        if k in params:
            _bool(params[k], ctx, f"{name}.{k}")
    if params.get("unshifted"):
        raise ctx.err(f"{name}.unshifted", "unshifted: true makes ChatDataset return a loss_mask instead of labels "
                      "(the diffusion-LM format); the next-token fine-tune recipe needs labels", found=True,
                      hint=f"remove {name}.unshifted")
    t = params.get("chat_template")
    if t is not None:
        if not isinstance(t, str):
            raise ctx.err(f"{name}.chat_template", "must be a Jinja template string or a path to a template file",
                          found=t)
        if "{%" not in t and "{{" not in t and check_files and ("\0" in t or len(t) > 4096 or not Path(t).is_file()):
            raise ctx.err(f"{name}.chat_template", "is neither a Jinja template nor an existing file (0.7 would use "
                          "the string itself as the template, rendering every conversation as that constant text)",
                          found=t, hint="give the template text, or the path of a .jinja / tokenizer_config.json file")
    if params.get("start_of_turn_token") is not None:
        ctx.note(f"{name}.start_of_turn_token: stored but never read by 0.7's ChatDataset (no effect).")
    for k in ("split", "shuffle_seed", "name"):
        if params.get(k) is not None:
            ctx.note(f"{name}.{k}: 0.7 applies it to Hub/Parquet datasets only; local JSON/JSONL files are read whole "
                     "and in order.")


def _packing(cfg: dict, ctx: _Ctx) -> dict[str, Any] | None:
    """``packed_sequence:`` as 0.7 resolves it (``make_packing_config``): THD packing when packed_sequence_size > 0."""
    ps = cfg.get("packed_sequence")
    if ps is None:
        return None
    if not isinstance(ps, dict):
        raise ctx.err("packed_sequence", "must be a mapping", found=ps)
    _unknown(ps, PACKED_KEYS, ctx, "packed_sequence", what="a packed_sequence field")
    k = "packed_sequence."
    size = _int(ps.get("packed_sequence_size", 0), ctx, k + "packed_sequence_size", maximum=MAX_TOKENS)
    if size <= 0:
        return None
    strategy = ps.get("packing_strategy", "thd")
    if strategy != "thd":
        raise ctx.err(k + "packing_strategy", "only THD packing (0.7's default) is implemented by the bundled runtime",
                      expected="thd", found=strategy, hint=f"--set {k}packing_strategy=thd")
    max_packs = _int(ps.get("max_packs"), ctx, k + "max_packs", minimum=1, allow_none=True)
    mult = _int(ps.get("pad_to_multiple_of", 1), ctx, k + "pad_to_multiple_of", minimum=1)
    if size % mult:
        raise ctx.err(k + "pad_to_multiple_of", f"packed_sequence_size ({size}) must be divisible by it (0.7 "
                      "ValueError)", found=mult)
    if ps.get("num_proc") is not None:
        _int(ps["num_proc"], ctx, k + "num_proc", minimum=1)
    if "drop_long_samples" in ps:
        ctx.note("packed_sequence.drop_long_samples is a NEAT-packing field; 0.7's THD packing ignores it and always "
                 "drops samples longer than packed_sequence_size.")
    if "split_across_pack" in ps:
        ctx.note("packed_sequence.split_across_pack is no longer read by 0.7 (no effect).")
    if _bool(ps.get("prepacked", False), ctx, k + "prepacked"):
        ctx.note("packed_sequence.prepacked: true: 0.7 skips loader-side packing and uses the default collater, so "
                 "the samples train unpacked.")
        return None
    return {"packed_sequence_size": size, "max_packs": max_packs, "pad_to_multiple_of": mult}


def _dataset(node: Any, loader: Any, ctx: _Ctx, name: str, loader_name: str, *, lbs: int,
             check_files: bool, packing: dict[str, Any] | None = None) -> DatasetSpec:
    if not isinstance(node, dict):
        raise ctx.err(name, "must be a mapping", found=node)
    if "_target_" not in node:
        raise ctx.err(f"{name}._target_", "is required")
    tname = _target_name(node["_target_"])
    params = {k: v for k, v in node.items() if k not in ("_target_", "tokenizer")}
    if tname in _COLUMN_MAPPED:
        _unknown(params, COLUMN_MAPPED_KEYS, ctx, name, what="a ColumnMappedTextInstructionDatasetConfig field")
        for req in ("path_or_dataset_id", "column_mapping"):
            if req not in params:
                raise ctx.err(f"{name}.{req}", "is required by ColumnMappedTextInstructionDataset")
        cm = params["column_mapping"]
        if not isinstance(cm, dict) or "answer" not in cm:
            raise ctx.err(f"{name}.column_mapping", "needs an `answer` column", found=cm)
        roles = set(cm)
        for role, col in cm.items():
            if not isinstance(col, str):
                raise ctx.err(f"{name}.column_mapping.{role}", "must be a column name (a string)", found=col)
        if not roles <= {"context", "question", "answer"} or len(cm) not in (2, 3):
            raise ctx.err(f"{name}.column_mapping", "roles must be answer plus context and/or question",
                          found=sorted(roles))
        _data_paths(params, ctx, name, check_files=check_files)
        for k in ("seq_length", "limit_dataset_samples"):
            if params.get(k) is not None:
                _int(params[k], ctx, f"{name}.{k}", minimum=1, maximum=MAX_TOKENS if k == "seq_length" else None)
        if params.get("padding") == "max_length" and params.get("seq_length") is None:
            raise ctx.err(f"{name}.padding", "padding: max_length needs seq_length (the tokenizer would pad to its "
                          "model_max_length)", found="max_length", hint=f"set {name}.seq_length")
        if params.get("use_hf_chat_template"):
            ctx.note(f"{name}.use_hf_chat_template: rows are formatted with the tokenizer's chat template when it has "
                     "one (system=context, user=question, assistant=answer), else as prompt/completion text (0.7).")
        kind = "column_mapped"
    elif tname in _CHAT:
        _chat_params(params, ctx, name, check_files=check_files)
        kind = "chat"
    elif tname in _MOCK:
        _unknown(params, MOCK_KEYS, ctx, name, what="a MockIterableDatasetConfig field")
        for k, top in (("vocab_size", 2**24), ("seq_len", MAX_TOKENS), ("num_samples", None), ("batch_size", 2**16)):
            if params.get(k) is not None:
                _int(params[k], ctx, f"{name}.{k}", minimum=1, maximum=top)
        ex = params.get("exclude_token_ids")
        if ex is not None and not (isinstance(ex, list) and all(isinstance(t, int) and not isinstance(t, bool) and
                                                                0 <= t < params.get("vocab_size", 1024) for t in ex)):
            raise ctx.err(f"{name}.exclude_token_ids", "must be a list of token ids below vocab_size", found=ex)
        kind = "mock"
    elif tname in _PRETOKENIZED:
        _unknown(params, {"path_or_dataset_id"}, ctx, name, what="a pretokenized dataset field")
        if not Path(str(params.get("path_or_dataset_id", ""))).is_file():
            raise ctx.err(f"{name}.path_or_dataset_id", "no such file (JSONL of input_ids/labels rows)",
                          found=params.get("path_or_dataset_id"))
        kind = "pretokenized"
    else:
        raise ctx.err(f"{name}._target_", "this dataset is not implemented by the bundled runtime",
                      found=node["_target_"],
                      expected="ColumnMappedTextInstructionDataset or ChatDataset (local JSON/JSONL), or "
                               "MockIterableDataset",
                      hint="convert the data to JSONL and use ColumnMappedTextInstructionDataset")
    loader = loader or {}
    if not isinstance(loader, dict):
        raise ctx.err(loader_name, "must be a mapping", found=loader)
    _unknown(loader, DATALOADER_KEYS, ctx, loader_name, what="a DataloaderConfig field")
    lt = loader.get("_target_")
    if lt not in (None, "torch.utils.data.DataLoader", "torchdata.stateful_dataloader.StatefulDataLoader"):
        raise ctx.err(f"{loader_name}._target_", "unsupported dataloader target", found=lt,
                      expected="torch.utils.data.DataLoader or torchdata.stateful_dataloader.StatefulDataLoader")
    if loader.get("group_by_length"):
        raise ctx.err(f"{loader_name}.group_by_length", "length-grouped sampling is not implemented by the bundled "
                      "runtime", found=True, hint=f"--set {loader_name}.group_by_length=false")
    if loader.get("dataloader_type") is not None:
        raise ctx.err(f"{loader_name}.dataloader_type", "only for Megatron datasets", found=loader["dataloader_type"])
    pad_div = None
    cf = loader.get("collate_fn")
    if cf is not None and cf != "default":
        tgt, kw = (cf.get("_target_"), {k: v for k, v in cf.items() if k != "_target_"}) if isinstance(cf, dict) \
            else (cf, {})
        if _target_name(tgt) != "default_collater":
            raise ctx.err(f"{loader_name}.collate_fn", "only the default collater is implemented", found=cf)
        bad = set(kw) - {"pad_seq_len_divisible"}
        if bad:
            raise ctx.err(f"{loader_name}.collate_fn", "unknown default_collater argument", found=sorted(bad))
        pad_div = kw.get("pad_seq_len_divisible")
    if loader.get("num_workers"):
        ctx.note(f"{loader_name}.num_workers: data is tokenised once at start, so batches are built in-process "
                 "(workers would only add start-up time).")
    bs = loader.get("batch_size", "__default__")
    if bs == "__default__":
        bs = lbs
    if kind != "mock" and bs is None:
        raise ctx.err(f"{loader_name}.batch_size", "batch_size=None only works for pre-batched (iterable) datasets")
    if packing is not None and kind == "mock":
        raise ctx.err("packed_sequence.packed_sequence_size", "packing needs a text dataset (ColumnMapped or Chat); "
                      f"`{name}` is the mock dataset, which yields ready-made batches",
                      found=packing["packed_sequence_size"], hint="--set packed_sequence.packed_sequence_size=0")
    if packing is not None and cf is not None and cf != "default":
        ctx.note(f"{loader_name}.collate_fn is replaced by the packed-sequence collater while packing (0.7).")
        pad_div = None
    return DatasetSpec(kind=kind, params=params, shuffle=loader.get("shuffle"),
                       batch_size=None if bs is None else _int(bs, ctx, f"{loader_name}.batch_size", minimum=1),
                       drop_last=bool(loader.get("drop_last", False)), pin_memory=bool(loader.get("pin_memory", False)),
                       pad_seq_len_divisible=pad_div, packing=None if kind == "mock" else packing)


_OPTIM_NUMBERS = {"lr", "eps", "weight_decay", "momentum", "dampening", "lr_decay", "initial_accumulator_value",
                  "rho", "lambd", "alpha", "t0", "max_iter", "momentum_decay"}
_TYPED_OPTIM = {
    "AdamConfig": ("torch.optim.Adam", {"lr": 1e-4, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}),
    "AdamWConfig": ("torch.optim.AdamW", {"lr": 1e-4, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}),
}


def _optim(cfg: dict, ctx: _Ctx) -> OptimSpec:
    sec = dict(_section(cfg, "optimizer", ctx, required=True))
    target = sec.pop("_target_", None)
    if target is None:
        raise ctx.err("optimizer._target_", "is required", hint="_target_: torch.optim.AdamW")
    overrides = sec.pop("param_group_overrides", None) or []
    if not isinstance(overrides, list):
        raise ctx.err("optimizer.param_group_overrides", "must be a list of {pattern, lr_mult, wd_mult}",
                      found=overrides)
    for i, o in enumerate(overrides):
        key = f"optimizer.param_group_overrides[{i}]"
        if not isinstance(o, dict) or "pattern" not in o:
            raise ctx.err(key, "needs a `pattern`", found=o)
        for m in ("lr_mult", "wd_mult"):
            if m in o:
                _float(o[m], ctx, f"{key}.{m}")
        bad = set(o) - {"pattern", "lr_mult", "wd_mult"}
        if bad:
            raise ctx.err(key, "unknown key", expected="pattern, lr_mult, wd_mult", found=sorted(bad))
        try:
            re.compile(str(o["pattern"]))
        except re.error as e:
            raise ctx.err(key + ".pattern", f"not a valid regular expression ({e})", found=o["pattern"]) from None
    short = _target_name(target)
    if short in _TYPED_OPTIM:
        cls_path, defaults = _TYPED_OPTIM[short]
        kwargs = {**defaults, **sec}
        kwargs.pop("fused", None) if short == "AdamConfig" else None
    elif str(target).startswith("torch.optim."):
        cls_path, kwargs = str(target), sec
    else:
        raise ctx.err("optimizer._target_", "the bundled runtime builds torch.optim optimizers only",
                      found=target, hint="_target_: torch.optim.AdamW (TE FusedAdam is not available here)")
    import importlib
    import inspect

    mod, _, name = cls_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        raise ctx.err("optimizer._target_", "no such optimizer in torch", found=target) from None
    params = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = sorted(k for k in kwargs if k not in params or k == "params")
        if bad:
            raise ctx.err(f"optimizer.{bad[0]}", f"{cls_path} does not take this argument",
                          expected=", ".join(k for k in params if k != "params"), found=bad[0])
    for k, v in kwargs.items():
        if k in _OPTIM_NUMBERS and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
            raise ctx.err(f"optimizer.{k}", "must be a number >= 0", found=v)
    if "betas" in kwargs:
        b = kwargs["betas"]
        if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x < 1.0 for x in b)):
            raise ctx.err("optimizer.betas", "must be two numbers in [0, 1)", found=b, hint="e.g. betas: [0.9, 0.999]")
        kwargs["betas"] = tuple(b)
    if "lr" not in kwargs:
        lr_default = params.get("lr")
        if lr_default is None or lr_default.default is inspect.Parameter.empty:
            raise ctx.err("optimizer.lr", "is required")
    return OptimSpec(target=cls_path, kwargs=kwargs, param_group_overrides=overrides)


def _lr(cfg: dict, ctx: _Ctx) -> dict | None:
    sec = cfg.get("lr_scheduler")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("lr_scheduler", "must be a mapping", found=sec)
    sec = {k: v for k, v in sec.items() if k != "_target_"}  # 0.7 silently drops a _target_ here
    _unknown(sec, LR_KEYS, ctx, "lr_scheduler", what="an LRSchedulerConfig field")
    w = sec.get("lr_warmup_steps")
    if w is not None and not isinstance(w, bool) and isinstance(w, (int, float)) and 0 < w < 1:
        raise ctx.err("lr_scheduler.lr_warmup_steps", "fractional warmup is not supported by 0.7", found=w,
                      hint="give an integer number of steps")
    for k in ("init_lr", "max_lr", "min_lr", "start_wd", "end_wd"):
        _float(sec.get(k), ctx, f"lr_scheduler.{k}", allow_none=True)
    for k in ("lr_warmup_steps", "lr_decay_steps", "wd_incr_steps", "wsd_decay_steps"):
        _int(sec.get(k), ctx, f"lr_scheduler.{k}", minimum=0, allow_none=True)
    for k in ("use_checkpoint_opt_param_scheduler", "override_opt_param_scheduler"):
        if sec.get(k) is not None:
            _bool(sec[k], ctx, f"lr_scheduler.{k}")
    style = sec.get("lr_decay_style", "cosine")
    if style not in ("cosine", "linear", "constant", "inverse-square-root", "WSD"):
        raise ctx.err("lr_scheduler.lr_decay_style", "unknown decay style", found=style,
                      expected="cosine, linear, constant, inverse-square-root or WSD")
    if style == "WSD" and sec.get("wsd_decay_steps") is None:
        raise ctx.err("lr_scheduler.wsd_decay_steps", "is required for lr_decay_style: WSD")
    wu, ds = sec.get("lr_warmup_steps"), sec.get("lr_decay_steps")
    if isinstance(wu, int) and isinstance(ds, int) and not wu < ds:
        raise ctx.err("lr_scheduler.lr_warmup_steps", "Automodel 0.7 asserts lr_warmup_steps < lr_decay_steps",
                      found={"lr_warmup_steps": wu, "lr_decay_steps": ds},
                      hint="for a warmup covering the whole run set lr_decay_steps = lr_warmup_steps + 1")
    if sec.get("wd_incr_style", "constant") not in ("constant", "linear", "cosine"):
        raise ctx.err("lr_scheduler.wd_incr_style", "unknown style", found=sec.get("wd_incr_style"))
    return sec


def _ckpt(cfg: dict, ctx: _Ctx, *, check_files: bool) -> CkptSpec:
    sec = _section(cfg, "checkpoint", ctx) or {}
    _unknown(sec, CKPT_KEYS, ctx, "checkpoint", what="a CheckpointingConfig field")
    enabled = _bool(sec.get("enabled", True), ctx, "checkpoint.enabled")
    d = str(_path(str(sec.get("checkpoint_dir", "checkpoints/")), ctx, "checkpoint.checkpoint_dir"))
    fmt = sec.get("model_save_format", "safetensors")
    if fmt not in ("safetensors", "torch_save"):
        raise ctx.err("checkpoint.model_save_format", "unknown format", expected="safetensors or torch_save",
                      found=fmt)
    sc = sec.get("save_consolidated", "final")
    sc = {True: "every", False: "false", None: "false"}.get(sc, sc) if isinstance(sc, (bool, type(None))) else sc
    if sc not in ("false", "final", "every"):
        raise ctx.err("checkpoint.save_consolidated", "unknown mode", expected="false, final or every", found=sc)
    mrc = _int(sec.get("max_recent_checkpoints"), ctx, "checkpoint.max_recent_checkpoints", minimum=1,
               allow_none=True)
    if enabled and check_files:
        p = Path(d)
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ctx.err("checkpoint.checkpoint_dir", f"cannot write checkpoints there ({e.strerror or e})", found=d,
                          hint="--set checkpoint.checkpoint_dir=/a/writable/dir (or checkpoint.enabled=false)") \
                from None
    if sec.get("is_async"):
        ctx.note("checkpoint.is_async: checkpoints are written synchronously by the bundled runtime.")
    rf = sec.get("restore_from")
    if rf is not None:
        _path(str(rf), ctx, "checkpoint.restore_from")
    return CkptSpec(enabled=enabled, checkpoint_dir=d, model_save_format=str(fmt), save_consolidated=str(sc),
                    max_recent_checkpoints=mrc, restore_from=None if rf is None else str(rf))


def _compat(cfg: dict, ctx: _Ctx) -> CompatSpec:
    sec = cfg.get("nemo_compat")
    if sec is None:
        return CompatSpec()
    if not isinstance(sec, dict):
        raise ctx.err("nemo_compat", "must be a mapping", found=sec)
    _unknown(sec, NEMO_COMPAT_KEYS, ctx, "nemo_compat", what="a runtime NeMo-compatibility switch")
    lr = sec.get("loss_reduction", "automodel")
    if lr not in ("automodel", "nemo"):
        raise ctx.err("nemo_compat.loss_reduction", "unknown reduction", expected="automodel or nemo", found=lr)
    mw = sec.get("master_weights", "none")
    mw = "none" if mw is None else mw
    if mw not in ("none", "fp32"):
        raise ctx.err("nemo_compat.master_weights", "unknown mode", expected="fp32 or none", found=mw)
    lrv = sec.get("lr_values")
    if lrv is not None and not (isinstance(lrv, list) and lrv and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in lrv)):
        raise ctx.err("nemo_compat.lr_values", "must be a non-empty list of learning rates (one per optimizer step)", found=lrv)
    ia = sec.get("init_adapter")
    if ia is not None and not _path(str(ia), ctx, "nemo_compat.init_adapter").is_file():
        raise ctx.err("nemo_compat.init_adapter", "no such adapter file", found=ia)
    return CompatSpec(lr_values=[float(x) for x in lrv] if lrv else None, init_adapter=None if ia is None else str(ia),
                      save_init_adapter=_bool(sec.get("save_init_adapter", False), ctx, "nemo_compat.save_init_adapter"),
                      lora_tied_a=_bool(sec.get("lora_tied_a", False), ctx, "nemo_compat.lora_tied_a"),
                      loss_reduction=lr, master_weights=mw,
                      no_decay_1d=_bool(sec.get("no_decay_1d", False), ctx, "nemo_compat.no_decay_1d"))


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
    for name in ("wandb", "mlflow", "comet"):
        v = cfg.get(name)
        if isinstance(v, dict) and v.get("enable", True) is not False:
            ctx.note(f"{name}: remote logging is off in the bundled runtime (metrics go to RUN_DIR/metrics.jsonl).")
    if cfg.get("benchmark") is not None or str(cfg.get("recipe", "")).endswith("BenchmarkingRecipeForNextTokenPrediction"):
        ctx.note("benchmark recipe: run as the fine-tune loop (benchmark.* settings are ignored; see metrics.jsonl).")
    if cfg.get("rng") is not None:
        ctx.note("rng: ignored by 0.7's train_ft (the top-level seed is used).")
    for k in sorted(cfg):
        if k not in KNOWN_TOP_LEVEL and not k.startswith("validation_dataset"):
            ctx.note(f"top-level section `{k}` is not read by Automodel 0.7's fine-tune recipe; ignored.")


def _loss(cfg: dict, ctx: _Ctx) -> tuple[int, bool]:
    sec = _section(cfg, "loss_fn", ctx)
    if sec is None:
        raise ctx.err("loss_fn", "is required by 0.7 (no default)",
                      hint="loss_fn: {_target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy}")
    t = _target_name(sec.get("_target_"))
    if t == "MaskedCrossEntropy":
        _unknown(sec, MASKED_CE_KEYS, ctx, "loss_fn", what="a MaskedCrossEntropy argument")
    elif t in ("FusedLinearCrossEntropy", "TEParallelCrossEntropy", "ChunkedCrossEntropy"):
        ctx.note(f"loss_fn {t}: computed as MaskedCrossEntropy (same sum-reduced token CE).")
    else:
        raise ctx.err("loss_fn._target_", "unknown loss", found=sec.get("_target_"),
                      expected="nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy")
    if sec.get("reduction", "sum") != "sum":
        raise ctx.err("loss_fn.reduction", "must stay 'sum' (the recipe divides by the label-token count)",
                      found=sec["reduction"])
    return int(sec.get("ignore_index", -100)), bool(sec.get("fp32_upcast", True))


def _compile(cfg: dict, ctx: _Ctx) -> CompileSpec:
    sec = cfg.get("compile")
    if not isinstance(sec, dict):
        return CompileSpec()
    extra = sorted(set(sec) - COMPILE_KEYS)
    if extra:
        ctx.note(f"compile: unknown key(s) {', '.join(extra)} ignored.")
    return CompileSpec(enabled=bool(sec.get("enabled", False)), mode=sec.get("mode", "default"),
                       fullgraph=bool(sec.get("fullgraph", False)), dynamic=bool(sec.get("dynamic", False)),
                       backend=sec.get("backend"))


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------

def resolve(cfg: dict, opts, *, file: str, check_files: bool = True, lines: dict[str, str] | None = None) -> Spec:
    """Check the effective config for the runtime and return the normalised spec (raises RunError). ``lines`` maps
    dotted keys to where they were written (``file:line``), so that errors point at the line."""
    ctx = _Ctx(file, lines)
    world = int(opts.nproc_per_node)
    _finite(cfg, ctx)
    seed = cfg.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ctx.err("seed", "must be an integer in [0, 2**62)", found=seed)
    _unsupported_sections(cfg, ctx)
    step = _step(cfg, ctx)
    dist = _dist(cfg, ctx, world)
    lbs, gbs = step["local_batch_size"], step["global_batch_size"]
    if gbs % (lbs * dist.dp) != 0:
        raise ctx.err("step_scheduler.global_batch_size",
                      f"must be divisible by local_batch_size * dp_size = {lbs} * {dist.dp}", found=gbs,
                      hint=f"use a multiple of {lbs * dist.dp}, or change --nproc-per-node / local_batch_size")
    ga = gbs // (lbs * dist.dp)
    model = _model(cfg, ctx, opts)
    tok = _tokenizer(cfg, ctx, model)
    peft = _peft(cfg, ctx)
    fp8 = _fp8(cfg, ctx)
    if fp8 is not None and dist.tp > 1:
        raise ctx.err("fp8.enabled", "FP8 with tensor parallelism is not implemented by the bundled runtime",
                      hint="--set distributed.tp_size=1 or fp8.enabled=false")
    compat = _compat(cfg, ctx)
    if compat.lora_tied_a and peft is None:
        raise ctx.err("nemo_compat.lora_tied_a", "needs a peft section (it ties LoRA A matrices)")
    ignore_index, fp32_upcast = _loss(cfg, ctx)
    optim = _optim(cfg, ctx)
    lr = _lr(cfg, ctx)
    clip = cfg.get("clip_grad_norm") or {}
    if not isinstance(clip, dict):
        raise ctx.err("clip_grad_norm", "must be a mapping", found=clip)
    bad = set(clip) - {"max_norm", "backend"}
    if bad:
        raise ctx.err(f"clip_grad_norm.{sorted(bad)[0]}", "unknown key", expected="max_norm, backend",
                      found=sorted(bad)[0])
    max_norm = clip.get("max_norm")
    max_norm = 1.0 if max_norm is None else _float(max_norm, ctx, "clip_grad_norm.max_norm")
    ds = cfg.get("dataset")
    dl = cfg.get("dataloader") if isinstance(cfg.get("dataloader"), dict) else {}
    if ds is None and isinstance(dl.get("dataset"), dict):
        ctx.note("dataloader.dataset is deprecated in 0.7; use a top-level dataset section.")
        ds = dl["dataset"]
    dl = {k: v for k, v in dl.items() if k != "dataset"}
    if ds is None:
        raise ctx.err("dataset", "this section is required")
    packing = _packing(cfg, ctx)
    train = _dataset(ds, dl, ctx, "dataset", "dataloader", lbs=lbs, check_files=check_files, packing=packing)
    vdl = cfg.get("validation_dataloader")
    validation: dict[str, DatasetSpec] = {}
    for key in sorted(k for k in cfg if k.startswith("validation_dataset")):
        if cfg[key] is None:
            continue
        vname = key.replace("validation_dataset", "")
        vname = vname[1:] if len(vname) > 1 and vname[0] in "_-." else vname
        validation[vname or "default"] = _dataset(cfg[key], vdl, ctx, key, "validation_dataloader", lbs=lbs,
                                                  check_files=check_files, packing=packing)
    if packing is not None and model.attn_implementation == "flash_attention_2":
        bad = [(n, d) for n, d in [("dataloader", train)] + [("validation_dataloader", v) for v in validation.values()]
               if (d.batch_size or 1) > 1]
        if bad:
            raise ctx.err(f"{bad[0][0]}.batch_size", "packed sequences with attn_implementation flash_attention_2 need "
                          "a batch of one pack: transformers' flash-attention path separates the packed samples (from "
                          "their position_ids) only for a single row", found=bad[0][1].batch_size,
                          hint="step_scheduler.local_batch_size: 1 (and validation_dataloader.batch_size: 1), or "
                               "model.attn_implementation: sdpa")
    ckpt = _ckpt(cfg, ctx, check_files=check_files)
    if ckpt.model_save_format == "torch_save":
        ctx.note("checkpoint.model_save_format torch_save: weights are written as safetensors (HF layout).")
    step_spec = StepSpec(grad_acc_steps=ga, **step)
    return Spec(config_path=file, seed=seed, model=model, tokenizer=tok, peft=peft, fp8=fp8, dist=dist,
                step=step_spec, loss_ignore_index=ignore_index, loss_fp32_upcast=fp32_upcast, optim=optim,
                lr_scheduler=lr, max_grad_norm=max_norm, train=train, validation=validation, ckpt=ckpt,
                compat=compat, compile=_compile(cfg, ctx), notes=ctx.notes)


__all__ = ["Spec", "resolve", "has_tokenizer_files"]
