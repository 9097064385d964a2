"""Validate an effective Automodel 0.7 config and resolve it into a normalised ``Spec`` -- before any training.

Every section is checked the way 0.7 checks it (strict dataclass sections reject unknown keys; lenient ones warn
here instead of ignoring silently), plus the runtime's own limits (what it does not implement fails clearly).
Which keys a section takes and what an absent key means are Automodel 0.7's schema and defaults
(:mod:`nemo_migrate.automodel.schema`, from mappings/automodel/*.yaml; the runtime's own ``nemo_compat`` section is
declared there too).  Every problem of a config is reported together: one RunError listing each with its
``file:line`` and key (:class:`ConfigErrors`), as the compiler reports its diagnostics.
Nothing here imports torch at module import; a few checks import it lazily (optimizer signatures).
"""

from __future__ import annotations

import errno
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..automodel.match import lora_conflicts
from ..automodel.schema import MISSING, class_defaults, dataset_fields, default, ours, schema, section_keys, \
    strategy_keys, top_level
from .config import parse_dtype
from .errors import RunError

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
    frozen_base: str = "auto"  # LoRA at N ranks: replicate the frozen base or shard it (parallel.frozen_base_mode)


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

class ConfigErrors(RunError):
    """Every problem of a config, reported together (``errors``: one RunError each, in the order they were found);
    its own file/key/message are the first one's."""

    def __init__(self, errors: list[RunError]):
        self.errors = list(errors)
        e = errors[0]
        super().__init__(e.message, file=e.file, key=e.key, expected=e.expected, found=e.found, hint=e.hint)

    def render(self) -> str:
        return (f"{len(self.errors)} problems in the config (all of them; fix them together):\n"
                + "\n".join(f"  - {e.render()}" for e in self.errors))


FAILED: Any = object()  # a section whose check failed (its errors are recorded)


class _Ctx:
    def __init__(self, file: str, lines: dict[str, str] | None = None):
        self.file = file
        self.lines = lines or {}
        self.notes: list[str] = []
        self.errors: list[RunError] = []

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

    def add(self, e: RunError) -> None:
        """Record a problem and go on (one per value: a later consequence of the same value, or of a value inside
        it or around it, is not repeated)."""
        def related(a: str, b: str) -> bool:
            return a == b or a.startswith((b + ".", b + "[")) or b.startswith((a + ".", a + "["))

        if e.key is None or not any(x.key and related(x.key, e.key) for x in self.errors):
            self.errors.append(e)

    def section(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run one section's check; a problem it raises is recorded and FAILED stands for its result."""
        try:
            return fn(*args, **kw)
        except RunError as e:
            self.add(e)
            return FAILED

    def value(self, fn: Callable[..., Any], v: Any, key: str, fallback: Any, **kw: Any) -> Any:
        """Check one value (``fn(v, ctx, key, **kw)``); a problem is recorded and ``fallback`` stands in for it, so
        that the rest of the section is checked too."""
        try:
            return fn(v, self, key, **kw)
        except RunError as e:
            self.add(e)
            return fallback

    def note(self, msg: str) -> None:
        self.notes.append(msg)


def _d(path: str) -> Any:
    """Automodel 0.7's value of an absent key (mappings/automodel/defaults.yaml)."""
    v = default(path)
    if v is MISSING:
        raise KeyError(f"mappings/automodel/defaults.yaml has no default for {path}")
    return v


def _section(cfg: dict, name: str, ctx: _Ctx, *, required: bool = False) -> dict | None:
    v = cfg.get(name)
    if v is None:
        if required:
            raise ctx.err(name, "this section is required", hint=f"add a `{name}:` section")
        return None
    if not isinstance(v, dict):
        raise ctx.err(name, "must be a mapping", found=v)
    return v


def _unknown(sec: dict, known: set[str] | frozenset[str], ctx: _Ctx, name: str, *, what: str | None = None) -> None:
    """Every key of ``sec`` that is not in ``known`` is recorded as a problem (the section is checked on)."""
    import difflib

    for k in sorted((k for k in sec if k not in known), key=str):
        close = difflib.get_close_matches(str(k), sorted(known), n=1)
        ctx.add(ctx.err(f"{name}.{k}", f"unknown key in `{name}` ({what or 'a strict section in Automodel 0.7'})",
                        expected="one of " + ", ".join(sorted(x for x in known if not x.startswith("_"))),
                        found=k, hint=f"did you mean `{close[0]}`?" if close else "remove the key"))


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
            ctx.add(ctx.err(k, "is not a finite number: training with it would make the weights NaN", found=v,
                            hint="write a finite value (`.inf`, `.nan` and overflowing numbers such as `1e400` are not)"
                                 + ("; a large finite max_norm such as 1e9 never clips" if k.endswith("max_norm")
                                    else "")))
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            ctx.add(ctx.err(k, "integer wider than 64 bits", found=f"{str(v)[:20]}... ({len(str(v))} digits)"))


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
    _unknown(sec, section_keys("step_scheduler"), ctx, "step_scheduler")
    k = "step_scheduler."

    def val(key: str, fn: Callable[..., Any], **kw: Any) -> Any:
        return ctx.value(fn, sec.get(key, _d(k + key)), k + key, _d(k + key), **kw)

    out = {
        "global_batch_size": val("global_batch_size", _int, minimum=1),
        "local_batch_size": val("local_batch_size", _int, minimum=1),
        "num_epochs": val("num_epochs", _int, minimum=1, allow_none=True),
        "max_steps": val("max_steps", _int, minimum=1, allow_none=True),
        "ckpt_every_steps": val("ckpt_every_steps", _int, minimum=1, allow_none=True),
        "save_checkpoint_every_epoch": val("save_checkpoint_every_epoch", _bool),
        "validate_on_checkpoint": val("validate_on_checkpoint", _bool),
        "val_every_steps": val("val_every_steps", _int, minimum=1, allow_none=True),
        "gc_every_steps": val("gc_every_steps", _int, minimum=1, allow_none=True),
    }
    for key in ("log_remote_every_steps", "loss_average_window_steps"):
        if key in sec:
            ctx.value(_int, sec[key], k + key, None, minimum=1)
    for key in ("start_step", "start_epoch"):
        if sec.get(key, 0) not in (0, None):
            ctx.add(ctx.err(k + key, "is not supported by the bundled runtime (it resumes from checkpoints instead)",
                            found=sec[key], hint="remove it; a rerun with the same checkpoint_dir resumes"))
    sig = sec.get("preemption_signal", _d(k + "preemption_signal"))
    sigs = [] if sig is None else (sig if isinstance(sig, list) else [sig])
    import signal as _signal

    names = []
    for s in sigs:
        try:
            n = _signal.Signals(s).name if isinstance(s, int) else _signal.Signals[str(s).upper()].name
        except (KeyError, ValueError):
            ctx.add(ctx.err(k + "preemption_signal", "not a signal name or number", found=s))
            continue
        if n in ("SIGKILL", "SIGSTOP"):
            ctx.add(ctx.err(k + "preemption_signal", f"{n} cannot be caught, so it cannot trigger a checkpoint", found=n,
                            hint="SIGTERM (what schedulers send before killing a job) or SIGUSR1"))
        names.append(n)
    out["preemption_signal"] = names
    return out


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


def _peft(cfg: dict, ctx: _Ctx) -> PeftSpec | None:
    sec = cfg.get("peft")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("peft", "must be a mapping", found=sec)
    _unknown(sec, section_keys("peft"), ctx, "peft", what="a PeftConfig field")
    if "_target_" not in sec:
        raise ctx.err("peft._target_", "is required (0.7 builds the section with .instantiate())",
                      hint="_target_: nemo_automodel.components._peft.lora.PeftConfig")
    if _target_name(sec["_target_"]) != "PeftConfig":
        raise ctx.err("peft._target_", "the bundled runtime implements LoRA through PeftConfig only",
                      found=sec["_target_"], expected="nemo_automodel.components._peft.lora.PeftConfig")

    def as_list(v, c, key):
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise c.err(key, "must be a string or a list of strings", found=v)

    def val(key: str, fn: Callable[..., Any], fallback: Any = MISSING, **kw: Any) -> Any:
        d = _d(f"peft.{key}")
        return ctx.value(fn, sec.get(key, d), f"peft.{key}", d if fallback is MISSING else fallback, **kw)

    tm = ctx.value(as_list, sec.get("target_modules"), "peft.target_modules", [])
    ex = ctx.value(as_list, sec.get("exclude_modules"), "peft.exclude_modules", [])
    mal = val("match_all_linear", _bool)
    conflicts = lora_conflicts({"target_modules": tm, "exclude_modules": ex, "match_all_linear": mal})
    if not mal and not tm and not ex:
        ctx.note("peft: no target_modules/exclude_modules/match_all_linear given; using target_modules='*_proj' "
                 "(Automodel 0.7's default).")
        tm = ["*_proj"]
    if "exclusive" in conflicts:
        ctx.add(ctx.err("peft.exclude_modules", "target_modules and exclude_modules are mutually exclusive in 0.7",
                        found=ex, hint="keep only one of them"))
    if "match_all_linear" in conflicts:
        ctx.add(ctx.err("peft.match_all_linear", "match_all_linear: true together with target_modules/exclude_modules "
                        "is a ValueError in Automodel 0.7", found=True, hint="drop target_modules or match_all_linear"))
    if sec.get("use_dora"):
        ctx.add(ctx.err("peft.use_dora", "DoRA is not implemented by the bundled runtime", found=True,
                        hint="--set peft.use_dora=false"))
    if sec.get("moe_rank_scaling"):
        ctx.note("peft.moe_rank_scaling is ignored (no MoE experts in the bundled runtime).")
    pos = sec.get("dropout_position", _d("peft.dropout_position"))
    if pos not in ("pre", "post"):
        ctx.add(ctx.err("peft.dropout_position", "must be pre or post", found=pos))
    dim = val("dim", _int, minimum=1, maximum=65536)  # no layer is wider
    alpha = val("alpha", _float)
    dropout = val("dropout", _float)
    if not 0.0 <= dropout < 1.0:
        ctx.add(ctx.err("peft.dropout", "must be in [0, 1)", found=dropout))
    return PeftSpec(target_modules=tm, exclude_modules=ex, match_all_linear=mal, dim=dim, alpha=alpha,
                    dropout=dropout, dropout_position=pos, lora_A_init=str(sec.get("lora_A_init", _d("peft.lora_A_init"))),
                    lora_dtype=ctx.value(_dtype, sec.get("lora_dtype"), "peft.lora_dtype", None))


def _fp8(cfg: dict, ctx: _Ctx) -> Fp8Spec | None:
    sec = cfg.get("fp8")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("fp8", "must be a mapping", found=sec)
    extra = sorted(str(k) for k in sec if k not in section_keys("fp8"))  # 0.7 reads fp8 with dict.get
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
    extra = sorted(str(k) for k in sec if k not in section_keys("model"))
    if extra:
        ctx.note(f"model: key(s) {', '.join(extra)} are passed to the model in Automodel; the bundled runtime "
                 "ignores them.")
    target = str(sec["_target_"])
    from_config = target.endswith("from_config")
    key = "model.dtype" if "dtype" in sec else "model.torch_dtype"
    dtype = ctx.value(_dtype, sec.get(key.split(".")[1], _d("model.dtype")), key, "auto", allow_auto=True) or "auto"
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
    liger = ctx.value(_bool, sec.get("use_liger_kernel", True), "model.use_liger_kernel", True)
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
    _unknown(params, dataset_fields("ChatDataset"), ctx, name, what="a ChatDatasetConfig field")
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
    _unknown(ps, section_keys("packed_sequence"), ctx, "packed_sequence", what="a packed_sequence field")
    k = "packed_sequence."
    size = _int(ps.get("packed_sequence_size", _d(k + "packed_sequence_size")), ctx, k + "packed_sequence_size",
                maximum=MAX_TOKENS)
    if size <= 0:
        return None
    strategy = ps.get("packing_strategy", _d(k + "packing_strategy"))
    if strategy != "thd":
        raise ctx.err(k + "packing_strategy", "only THD packing (0.7's default) is implemented by the bundled runtime",
                      expected="thd", found=strategy, hint=f"--set {k}packing_strategy=thd")
    max_packs = _int(ps.get("max_packs"), ctx, k + "max_packs", minimum=1, allow_none=True)
    mult = _int(ps.get("pad_to_multiple_of", _d(k + "pad_to_multiple_of")), ctx, k + "pad_to_multiple_of", minimum=1)
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
    if _bool(ps.get("prepacked", _d(k + "prepacked")), ctx, k + "prepacked"):
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
        _unknown(params, dataset_fields("ColumnMappedTextInstructionDataset"), ctx, name,
                 what="a ColumnMappedTextInstructionDatasetConfig field")
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
        _unknown(params, dataset_fields("MockIterableDataset"), ctx, name, what="a MockIterableDatasetConfig field")
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
    _unknown(loader, section_keys("dataloader"), ctx, loader_name, what="a DataloaderConfig field")
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
    typed = class_defaults("optimizer", short)
    if "_builds" in typed:  # 0.7's typed optimizer config (AdamConfig, AdamWConfig): its own defaults
        cls_path = typed["_builds"]
        kwargs = {**{k: v for k, v in typed.items() if not k.startswith("_")}, **sec}
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
    _unknown(sec, section_keys("lr_scheduler"), ctx, "lr_scheduler", what="an LRSchedulerConfig field")
    w = sec.get("lr_warmup_steps")
    if w is not None and not isinstance(w, bool) and isinstance(w, (int, float)) and 0 < w < 1:
        raise ctx.err("lr_scheduler.lr_warmup_steps", "fractional warmup is not supported by 0.7", found=w,
                      hint="give an integer number of steps")
    for k in ("init_lr", "max_lr", "min_lr", "start_wd", "end_wd"):
        ctx.value(_float, sec.get(k), f"lr_scheduler.{k}", None, allow_none=True)
    for k in ("lr_warmup_steps", "lr_decay_steps", "wd_incr_steps", "wsd_decay_steps"):
        ctx.value(_int, sec.get(k), f"lr_scheduler.{k}", None, minimum=0, allow_none=True)
    for k in ("use_checkpoint_opt_param_scheduler", "override_opt_param_scheduler"):
        if sec.get(k) is not None:
            ctx.value(_bool, sec[k], f"lr_scheduler.{k}", None)
    style = sec.get("lr_decay_style", _d("lr_scheduler.lr_decay_style"))
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
    if sec.get("wd_incr_style", _d("lr_scheduler.wd_incr_style")) not in ("constant", "linear", "cosine"):
        raise ctx.err("lr_scheduler.wd_incr_style", "unknown style", found=sec.get("wd_incr_style"))
    return sec


def _ckpt(cfg: dict, ctx: _Ctx, *, check_files: bool) -> CkptSpec:
    sec = _section(cfg, "checkpoint", ctx) or {}
    _unknown(sec, section_keys("checkpoint"), ctx, "checkpoint", what="a CheckpointingConfig field")
    enabled = ctx.value(_bool, sec.get("enabled", _d("checkpoint.enabled")), "checkpoint.enabled", False)
    d = str(_path(str(sec.get("checkpoint_dir", _d("checkpoint.checkpoint_dir"))), ctx, "checkpoint.checkpoint_dir"))
    fmt = sec.get("model_save_format", _d("checkpoint.model_save_format"))
    if fmt not in ("safetensors", "torch_save"):
        raise ctx.err("checkpoint.model_save_format", "unknown format", expected="safetensors or torch_save",
                      found=fmt)
    sc = sec.get("save_consolidated", _d("checkpoint.save_consolidated"))
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
    _unknown(sec, ours("nemo_compat"), ctx, "nemo_compat", what="a runtime NeMo-compatibility switch")
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
    fb = sec.get("frozen_base", "auto")
    if fb not in ("auto", "replicate", "shard"):
        raise ctx.err("nemo_compat.frozen_base", "unknown mode", expected="auto, replicate or shard", found=fb)
    ia = sec.get("init_adapter")
    if ia is not None and not _path(str(ia), ctx, "nemo_compat.init_adapter").is_file():
        raise ctx.err("nemo_compat.init_adapter", "no such adapter file", found=ia)
    return CompatSpec(lr_values=[float(x) for x in lrv] if lrv else None, init_adapter=None if ia is None else str(ia),
                      save_init_adapter=_bool(sec.get("save_init_adapter", False), ctx, "nemo_compat.save_init_adapter"),
                      lora_tied_a=_bool(sec.get("lora_tied_a", False), ctx, "nemo_compat.lora_tied_a"),
                      loss_reduction=lr, master_weights=mw, frozen_base=fb,
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


def _loss(cfg: dict, ctx: _Ctx) -> tuple[int, bool]:
    sec = _section(cfg, "loss_fn", ctx)
    if sec is None:
        raise ctx.err("loss_fn", "is required by 0.7 (no default)",
                      hint="loss_fn: {_target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy}")
    t = _target_name(sec.get("_target_"))
    kw = class_defaults("loss_fn", "MaskedCrossEntropy")  # its arguments and their defaults
    if t == "MaskedCrossEntropy":
        _unknown(sec, set(kw) | {"_target_"}, ctx, "loss_fn", what="a MaskedCrossEntropy argument")
    elif t in ("FusedLinearCrossEntropy", "TEParallelCrossEntropy", "ChunkedCrossEntropy"):
        ctx.note(f"loss_fn {t}: computed as MaskedCrossEntropy (same sum-reduced token CE).")
    else:
        raise ctx.err("loss_fn._target_", "unknown loss", found=sec.get("_target_"),
                      expected="nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy")
    if sec.get("reduction", kw["reduction"]) != "sum":
        raise ctx.err("loss_fn.reduction", "must stay 'sum' (the recipe divides by the label-token count)",
                      found=sec["reduction"])
    return int(sec.get("ignore_index", kw["ignore_index"])), bool(sec.get("fp32_upcast", kw["fp32_upcast"]))


def _compile(cfg: dict, ctx: _Ctx) -> CompileSpec:
    sec = cfg.get("compile")
    if not isinstance(sec, dict):
        return CompileSpec()
    extra = sorted(str(k) for k in set(sec) - section_keys("compile"))
    if extra:
        ctx.note(f"compile: unknown key(s) {', '.join(extra)} ignored.")
    return CompileSpec(enabled=bool(sec.get("enabled", False)), mode=sec.get("mode", "default"),
                       fullgraph=bool(sec.get("fullgraph", False)), dynamic=bool(sec.get("dynamic", False)),
                       backend=sec.get("backend"))


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------

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


def _seed(cfg: dict, ctx: _Ctx) -> int:
    seed = cfg.get("seed", _d("seed"))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ctx.err("seed", "must be an integer in [0, 2**62)", found=seed)
    return seed


def _grad_acc(step: dict, dist: DistSpec, ctx: _Ctx) -> int:
    lbs, gbs = step["local_batch_size"], step["global_batch_size"]
    if gbs % (lbs * dist.dp) != 0:
        raise ctx.err("step_scheduler.global_batch_size",
                      f"must be divisible by local_batch_size * dp_size = {lbs} * {dist.dp}", found=gbs,
                      hint=f"use a multiple of {lbs * dist.dp}, or change --nproc-per-node / local_batch_size")
    return gbs // (lbs * dist.dp)


def _clip(cfg: dict, ctx: _Ctx) -> float:
    clip = cfg.get("clip_grad_norm") or {}
    if not isinstance(clip, dict):
        raise ctx.err("clip_grad_norm", "must be a mapping", found=clip)
    known = section_keys("clip_grad_norm")
    bad = sorted((str(k) for k in clip if k not in known))
    if bad:
        raise ctx.err(f"clip_grad_norm.{bad[0]}", "unknown key", expected=", ".join(schema()["sections"]["clip_grad_norm"]
                                                                                ["fields"]), found=bad[0])
    max_norm = clip.get("max_norm")
    return _d("clip_grad_norm.max_norm") if max_norm is None else _float(max_norm, ctx, "clip_grad_norm.max_norm")


def _data(cfg: dict, ctx: _Ctx, *, lbs: int, attn: str | None, check_files: bool
          ) -> tuple[DatasetSpec, dict[str, DatasetSpec]]:
    """The training dataset and every validation dataset, each with its dataloader (all checked)."""
    ds = cfg.get("dataset")
    dl = cfg.get("dataloader") if isinstance(cfg.get("dataloader"), dict) else {}
    if ds is None and isinstance(dl.get("dataset"), dict):
        ctx.note("dataloader.dataset is deprecated in 0.7; use a top-level dataset section.")
        ds = dl["dataset"]
    dl = {k: v for k, v in dl.items() if k != "dataset"}
    if ds is None:
        raise ctx.err("dataset", "this section is required")
    packing = ctx.section(_packing, cfg, ctx)
    packing = None if packing is FAILED else packing
    train = ctx.section(_dataset, ds, dl, ctx, "dataset", "dataloader", lbs=lbs, check_files=check_files,
                        packing=packing)
    vdl = cfg.get("validation_dataloader")
    validation: dict[str, DatasetSpec] = {}
    for key in sorted((k for k in cfg if str(k).startswith("validation_dataset")), key=str):
        if cfg[key] is None:
            continue
        vname = key.replace("validation_dataset", "")
        vname = vname[1:] if len(vname) > 1 and vname[0] in "_-." else vname
        validation[vname or "default"] = ctx.section(_dataset, cfg[key], vdl, ctx, key, "validation_dataloader",
                                                     lbs=lbs, check_files=check_files, packing=packing)
    if FAILED in (train, *validation.values()):
        return FAILED
    if packing is not None and attn == "flash_attention_2":
        bad = [(n, d) for n, d in [("dataloader", train)] + [("validation_dataloader", v) for v in validation.values()]
               if (d.batch_size or 1) > 1]
        if bad:
            raise ctx.err(f"{bad[0][0]}.batch_size", "packed sequences with attn_implementation flash_attention_2 need "
                          "a batch of one pack: transformers' flash-attention path separates the packed samples (from "
                          "their position_ids) only for a single row", found=bad[0][1].batch_size,
                          hint="step_scheduler.local_batch_size: 1 (and validation_dataloader.batch_size: 1), or "
                               "model.attn_implementation: sdpa")
    return train, validation


__all__ = ["ConfigErrors", "Spec", "has_tokenizer_files", "has_weights", "resolve"]
