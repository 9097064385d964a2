"""What Automodel 0.7 accepts: the one home of its config checks, for ``diff`` and for ``convert``'s pre-write check.

The knowledge is data in ``mappings/automodel/schema.yaml`` (per-field type / range / allowed values with the 0.7.0
source line that checks them, strict sections, dataset classes, strategies, torch optimizers), read through
:mod:`nemo_migrate.automodel` (Automodel 0.7's semantics, shared with the runtime); this module applies it, plus a
few named cross-field checks (global batch vs data parallelism, the LR scheduler's assertions, the parallel sizes
vs the world size, ``column_mapping`` roles, LoRA target selection, ...).

* :func:`rejections` -- every problem Automodel 0.7 would have with a plain config dict (values as its loader reads
  them), as :class:`Reject` records.  ``diff`` reports them for an Automodel YAML (migrate/diff.py).
* :func:`check_config` -- the same as compiler diagnostics AM300-AM349, each at the source line of the value that
  caused it (``TargetValue.provs``), for ``convert`` to call right before it renders a config.
* :func:`type_ok` -- a value against a schema type (``?int``, ``list[number]``, ...), also for ``diff``'s reader.

Torch-free and import-light: nothing here imports Automodel, torch or the user's code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .automodel import schedule
from .automodel.match import lora_conflicts
from .automodel.schema import MISSING as _MISSING
from .automodel.schema import allowed_keys, class_defaults, defaults, field_specs, schema, target_name
from .automodel.schema import strategy as _strategy
from .automodel.values import dtype_name, translate_all
from .diagnostics import Diagnostic, did_you_mean

PREFIX = {"reject": "Automodel 0.7 would reject this",  # 0.7 raises before or at the start of training
          "misread": "Automodel 0.7 would silently train something else",  # 0.7 accepts it and trains something else
          "declared": "Automodel 0.7 declares another type here",  # 0.7's dataclass declares another type; no conversion
          "refuse": "refused"}  # no run can use it (a non-finite number), whatever 0.7 does

# Diagnostic codes (AM300-AM349)
NONFINITE = "AM300"  # NaN / +-inf anywhere (a literal like 1e400 overflows)
TYPE = "AM301"  # a value of another type than 0.7 declares / needs
RANGE = "AM302"  # a number outside what 0.7 checks
CHOICE = "AM303"  # a string 0.7 does not know
REQUIRED = "AM304"  # a required section or dataset field missing
TARGET = "AM305"  # a section 0.7 instantiates has no `_target_`
UNKNOWN_KEY = "AM306"  # a key a strict section (dataclass, strategy, torch optimizer) does not take
NOT_MAPPING = "AM307"  # a section that is not a mapping
DTYPE = "AM308"  # a dtype string dtype_from_str does not know
BATCH = "AM310"  # global batch vs local batch x data parallelism
LR_SCHED = "AM311"  # OptimizerParamScheduler's assertions
COLUMNS = "AM312"  # column_mapping roles
LORA = "AM313"  # exclusive LoRA selectors
STRATEGY = "AM314"  # what a distributed strategy supports
MESH = "AM315"  # parallel sizes vs the world size
PIPELINE = "AM316"  # pipeline parallelism block and batch
CHECKPOINT = "AM317"  # checkpoint on msc:// storage
DATALOADER = "AM318"  # dataloader settings torch / 0.7 refuse together
PACKING = "AM319"  # packing strategy
TOKENIZER = "AM320"  # dataset.tokenizer without a model


@dataclass(frozen=True)
class Reject:
    """One thing Automodel 0.7 would refuse (or misread) in a config."""

    code: str
    key: str  # the Automodel path the problem is about
    what: str  # what 0.7 does, quoting its check, with the file:line of that check
    fix: str  # what the value must be
    also: tuple[str, ...] = ()  # other paths whose values take part (their origins are named too)
    effect: str = "reject"  # reject | misread | declared | refuse

    @property
    def message(self) -> str:
        return f"{PREFIX[self.effect]}: {self.what}"


# ---------------------------------------------------------------------------------------------- shared pieces

def get(cfg: Any, path: str, default: Any = None) -> Any:
    cur = cfg
    for p in path.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return default
        cur = cur[p]
    return cur


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def type_ok(v: Any, want: str) -> bool:
    """``v`` is of the schema type ``want`` (``?`` prefix: null allowed; ``number`` excludes NaN and infinities)."""
    if want.startswith("?"):
        if v is None:
            return True
        want = want[1:]
    if "|" in want:
        return any(type_ok(v, w) for w in want.split("|"))
    if want == "int":
        return _is_int(v)
    if want == "number":
        return _is_num(v) and finite(v)
    if want == "float":
        return isinstance(v, float) and finite(v)
    if want.startswith("list[") and want.endswith("]"):
        return isinstance(v, list) and all(type_ok(x, want[5:-1]) for x in v)
    if want == "str":
        return isinstance(v, str)
    if want == "bool":
        return isinstance(v, bool)
    if want == "dict":
        return isinstance(v, dict)
    return True


# ---------------------------------------------------------------------------------------------- the checks

def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_words(want: str) -> str:
    null = want.startswith("?")
    w = want.lstrip("?").replace("|", " or ")
    return w + (" or null" if null else "")


def _same(a: Any, b: Any, fold: str | None) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if fold == "lower" and isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return type(a) is type(b) and a == b


def _range_fail(v: Any, spec: dict) -> str | None:
    for bound, ok, word in (("min", lambda x, b: x >= b, ">="), ("max", lambda x, b: x <= b, "<="),
                            ("gt", lambda x, b: x > b, ">"), ("lt", lambda x, b: x < b, "<")):
        if bound in spec and _is_num(v) and not ok(v, spec[bound]):
            return f"{word} {spec[bound]}"
    return None


def _bounds_words(spec: dict) -> str:
    parts = [f"{w} {spec[b]}" for b, w in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")) if b in spec]
    return " and ".join(parts)


def _check_field(cfg: dict, path: str, v: Any, spec: dict, src: str | None = None) -> Iterator[Reject]:
    src = spec.get("src") or src or "its typed config"
    check = spec.get("check")
    quoted = f"{check} ({src})" if check else f"declared {spec.get('type')} ({src})"
    effect = spec.get("effect", "reject" if check else "declared")
    want = spec.get("type")
    if want and not type_ok(v, want):
        yield Reject(TYPE, path, f"{path} must be {_type_words(want)}, found {_shown(v)} ({type(v).__name__}); {quoted}",
                     spec.get("fix") or f"a value of type {_type_words(want)}", effect=effect)
        return
    if "one_of" in spec and not any(_same(v, a, spec.get("fold")) for a in spec["one_of"]):
        shown = ", ".join("null" if a is None else str(a).lower() if isinstance(a, bool) else str(a) for a in spec["one_of"])
        yield Reject(CHOICE, path, f"{path} is {_shown(v)}, not one of [{shown}]; {quoted}", spec.get("fix") or f"one of {shown}",
                     effect=effect)
        return
    items = v if isinstance(v, list) else [v]
    if "items" in spec and isinstance(v, list) and len(v) != spec["items"]:
        yield Reject(RANGE, path, f"{path} has {len(v)} values, needs {spec['items']}; {quoted}", f"{spec['items']} values", effect=effect)
        return
    for x in items:
        bad = _range_fail(x, spec)
        if bad:
            yield Reject(RANGE, path, f"{path} is {_shown(v)}, must be {_bounds_words(spec)}; {quoted}",
                         spec.get("fix") or f"a value {_bounds_words(spec)}", effect=effect)
            return


def _walk(v: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _walk(x, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x, prefix)
    else:
        yield prefix, v


def _nonfinite(cfg: dict) -> Iterator[Reject]:
    seen: set[str] = set()
    for path, v in _walk(cfg):
        if isinstance(v, float) and not math.isfinite(v) and path not in seen:
            seen.add(path)
            yield Reject(NONFINITE, path,
                         f"{path} is {v} (not a finite number; a literal like 1e400 overflows to inf). NeMo would train with it "
                         "silently and Automodel 0.7 loads it as float('{0}'); it does not stop an inf learning rate or weight "
                         "decay before training diverges (torch.optim only refuses a NaN or negative lr/eps/weight_decay)".format(v),
                         "a finite number", effect="refuse")


def _fields(cfg: dict) -> Iterator[Reject]:
    for path, spec in field_specs().items():
        v = get(cfg, path, _MISSING)
        if v is _MISSING or not all(finite(x) for _, x in _walk(v)):
            continue
        if spec.get("when") and not get(cfg, spec["when"]):
            continue
        yield from _check_field(cfg, path, v, spec)
    for path in schema()["dtype_paths"]:
        v = get(cfg, path, _MISSING)
        if isinstance(v, str) and not (path.startswith("model.") and v == "auto") and dtype_name(v) is None:
            yield Reject(DTYPE, path, f"{path} {v!r} is not a dtype shared/utils.py dtype_from_str knows: "
                         f"raise KeyError(f'Unknown dtype string: {{val}}') (shared/utils.py:70)", "bfloat16, bf16, float32 or float16")


def _sections(cfg: dict) -> Iterator[Reject]:
    s = schema()
    for name in s["required_sections"]:
        if cfg.get(name) is None:
            yield Reject(REQUIRED, name, f"section '{name}' is missing: the fine-tune recipe builds it unconditionally "
                         "(recipes/llm/train_ft.py:617, :742, :760, :872)", f"a `{name}:` section")
    for name, where in s["instantiated"].items():
        block = cfg.get(name)
        if isinstance(block, dict) and "_target_" not in block:
            yield Reject(TARGET, f"{name}._target_", f"section '{name}' has no `_target_`, and 0.7 builds it from its target "
                         f"({where}; components/config/loader.py:471 'No _target_ found to instantiate')",
                         f"`_target_:` naming the class that builds {name}")
    for name, block in cfg.items():
        mapping_needed = name in s["sections"] or name in s["instantiated"] or name in s["required_sections"]
        if mapping_needed and block is not None and not isinstance(block, dict):
            yield Reject(NOT_MAPPING, name, f"section '{name}' must be a mapping of keys, found {_shown(block)} "
                         "(recipes/_typed_config.py:88 'Expected a mapping-like config')", "a mapping")
            continue
        if not isinstance(block, dict):
            continue
        keys = allowed_keys(name, block, cfg)
        if keys is not None:
            src = s["sections"][name]["source"]
            for k in block:
                if k not in keys:
                    yield Reject(UNKNOWN_KEY, f"{name}.{k}", f"unknown key '{k}' in '{name}', which 0.7 builds strictly ({src}: "
                                 "unexpected keyword -> TypeError/ValueError)", did_you_mean(str(k), keys) or f"one of {', '.join(sorted(keys))}")
    pipe = get(cfg, "distributed.pipeline")
    if isinstance(pipe, dict):
        fields = set(s["pipeline_fields"])
        for k in pipe:
            if k not in fields:
                yield Reject(UNKNOWN_KEY, f"distributed.pipeline.{k}", f"unknown key '{k}' in distributed.pipeline: PipelineConfig"
                             "(**pipeline_dict) raises TypeError (recipes/_dist_utils.py:222)", did_you_mean(str(k), fields) or "a PipelineConfig field")
    for name in ("dataset", "validation_dataset"):
        block = cfg.get(name)
        spec = s["datasets"].get(target_name(block)) if isinstance(block, dict) else None
        for k in (spec or {}).get("required", []):
            if k not in block:
                yield Reject(REQUIRED, f"{name}.{k}", f"{name} has no '{k}', a required field of {spec['config']} "
                             "(missing argument -> TypeError)", f"`{k}:`")


def _optimizer(cfg: dict) -> Iterator[Reject]:
    block = cfg.get("optimizer")
    if not isinstance(block, dict):
        return
    spec = schema()["optimizers"].get(str(block.get("_target_") or ""))
    if spec is None:
        return
    kwargs = set(spec["kwargs"])
    for k, v in block.items():
        if k == "_target_":
            continue
        if k not in kwargs:
            yield Reject(UNKNOWN_KEY, f"optimizer.{k}", f"{block['_target_']} takes no '{k}': 0.7 calls factory(params=..., **kwargs) "
                         f"(components/optim/optimizer.py:535) -> TypeError", did_you_mean(str(k), kwargs) or f"one of {', '.join(sorted(kwargs))}")
        elif k in spec["fields"] and all(finite(x) for _, x in _walk(v)):
            yield from _check_field(cfg, f"optimizer.{k}", v, spec["fields"][k], spec["src"])


def _dp(cfg: dict, world: int) -> int | None:
    """The data-parallel size the StepScheduler gets (BaseRecipe._get_dp_group_size: the flattened dp mesh)."""
    strat = _strategy(cfg)
    if strat == "ddp":
        return world
    size = {k: _degree(get(cfg, f"distributed.{k}")) for k in ("tp_size", "cp_size", "pp_size")}
    dp = get(cfg, "distributed.dp_size")
    if _is_int(dp) and dp > 0:
        return dp
    non_dp = size["tp_size"] * size["cp_size"] * (size["pp_size"] if strat == "fsdp2" else 1)
    return world // non_dp if world % non_dp == 0 else None


def _degree(v: Any) -> int:
    """mesh_utils._degree: anything but a positive int counts as 1."""
    return v if _is_int(v) and v > 0 else 1


def _batch(cfg: dict, world: int | None) -> Iterator[Reject]:
    d = defaults()["step_scheduler"]
    gbs = get(cfg, "step_scheduler.global_batch_size", d["global_batch_size"])
    lbs = get(cfg, "step_scheduler.local_batch_size", d["local_batch_size"])
    if not world or not (_is_int(gbs) and _is_int(lbs) and gbs > 0 and lbs > 0):
        return
    dp = _dp(cfg, world)
    if dp is None:
        return  # the mesh check reports it
    also = ("step_scheduler.local_batch_size", "distributed.dp_size", "distributed.tp_size", "distributed.cp_size", "distributed.pp_size")
    if gbs % (lbs * dp) != 0:
        yield Reject(BATCH, "step_scheduler.global_batch_size",
                     f"global_batch_size {gbs} is not divisible by local_batch_size {lbs} x data-parallel size {dp} (world size {world}): "
                     "StepScheduler raises ValueError('global_batch_size ({gbs}) must be divisible by local_batch_size * dp_size') "
                     "(components/training/step_scheduler.py:117)",
                     f"a global batch that is a multiple of {lbs * dp}, or another micro-batch / parallel layout", also)
    elif gbs // (lbs * dp) < 1:
        yield Reject(BATCH, "step_scheduler.global_batch_size", f"global_batch_size {gbs} < local_batch_size {lbs} x dp {dp}: grad_acc_steps "
                     "< 1 raises ValueError (components/training/step_scheduler.py:123)", f"at least {lbs * dp}", also)


def _lr_scheduler(cfg: dict) -> Iterator[Reject]:
    block = cfg.get("lr_scheduler")
    if not isinstance(block, dict):
        return
    def ex(k: str) -> Any:
        return block.get(k, _MISSING)
    w = ex("lr_warmup_steps")
    if _is_num(w) and 0 < w < 1:
        yield Reject(LR_SCHED, "lr_scheduler.lr_warmup_steps", f"lr_warmup_steps {w} is a fraction: LRSchedulerConfig.build raises "
                     "ValueError('lr_warmup_steps must be an integer step count') (components/optim/optimizer.py:606)",
                     "a number of warmup steps")
        return
    torch_defaults = class_defaults("optimizer", get(cfg, "optimizer._target_"))
    lr = get(cfg, "optimizer.lr", torch_defaults.get("lr"))
    steps = get(cfg, "step_scheduler.max_steps")
    total = steps if _is_int(steps) and steps > 0 else None
    if not _is_num(lr) or not all(finite(x) for x in block.values() if _is_num(x)) or not finite(lr):
        return
    wd = get(cfg, "optimizer.weight_decay", torch_defaults.get("weight_decay"))
    wd_known = _is_num(wd) and finite(wd)
    p = schedule.build(block.get, base_lr=float(lr), base_wd=wd if wd_known else None, total_steps=total)
    for v in schedule.violations(p):
        if v.key in ("start_wd", "end_wd") and not wd_known:
            continue
        values = v.values
        if v.key == "lr_warmup_steps" and ex("lr_decay_steps") in (_MISSING, None):
            if not (_is_num(p.lr_warmup_steps) and total and p.lr_warmup_steps >= total):
                continue
            values += f" (lr_decay_steps defaults to the run's steps, at most max_steps {total})"
        fix, also = _LR_FIX[v.cond]
        what = f"{values}: OptimizerParamScheduler: {v.check}" if v.key in schedule.LR_KEYS else f"{values}: {v.check}"
        yield Reject(LR_SCHED, f"lr_scheduler.{v.key}", what, fix, also)


_LR_ALSO = ("optimizer.lr", "step_scheduler.max_steps", "lr_scheduler.lr_decay_steps")
_MIN_LR_FIX = "a min_lr between 0 and the peak learning rate"
_LR_FIX = {  # the assertion (schedule.Violation.cond) -> (what the value must be, the other paths that take part)
    "min_lr >= 0": (_MIN_LR_FIX, _LR_ALSO), "max_lr >= min_lr": (_MIN_LR_FIX, _LR_ALSO),
    "init_lr <= max_lr": ("an init_lr not above the peak learning rate", _LR_ALSO),
    "lr_decay_steps > 0": ("a positive number of decay steps", _LR_ALSO),
    "lr_warmup_steps < lr_decay_steps": ("fewer warmup steps than decay steps (NeMo's warmup >= max_steps cannot be expressed: "
                                         "set lr_decay_steps above the warmup)", _LR_ALSO),
    "wsd_decay_steps is set for WSD": ("set wsd_decay_steps", ()),
    "start_wd >= 0": ("a non-negative weight decay", ("optimizer.weight_decay",)),
    "end_wd >= start_wd": ("end_wd >= start_wd", ("lr_scheduler.start_wd", "optimizer.weight_decay")),
    "start_wd == end_wd for wd_incr_style constant": ("wd_incr_style linear or cosine, or equal start_wd and end_wd",
                                                      ("lr_scheduler.start_wd", "lr_scheduler.wd_incr_style")),
    "not both override and use-checkpoint": ("set use_checkpoint_opt_param_scheduler: false", ()),
}


def _columns(cfg: dict) -> Iterator[Reject]:
    for name in ("dataset", "validation_dataset"):
        block = cfg.get(name)
        if not isinstance(block, dict) or target_name(block) != "ColumnMappedTextInstructionDataset":
            continue
        cm = block.get("column_mapping")
        if not isinstance(cm, dict):
            continue
        roles = set(cm)
        ok = "answer" in roles and (roles == {"context", "question", "answer"} or (len(roles) == 2 and roles & {"context", "question"}))
        if not ok:
            yield Reject(COLUMNS, f"{name}.column_mapping", f"column_mapping roles {sorted(map(str, roles))}: ColumnMappedTextInstructionDataset needs "
                         "'answer' plus 'context' and/or 'question' and nothing else (assert 'answer' in column_mapping; "
                         "ValueError('Expected 2 or 3 columns in column_mapping'), "
                         "components/datasets/llm/column_mapped_text_instruction_dataset.py:263-281)",
                         "map the roles context / question / answer to the data's columns")


def _lora(cfg: dict) -> Iterator[Reject]:
    peft = cfg.get("peft")
    if not isinstance(peft, dict):
        return
    why = lora_conflicts(peft)
    if "match_all_linear" in why:
        yield Reject(LORA, "peft.match_all_linear", "match_all_linear: true with target_modules/exclude_modules: ModuleMatcher raises "
                     "ValueError('Expected target_modules/exclude_modules to be empty when match_all_linear is true') "
                     "(components/_peft/module_matcher.py:127)", "either match_all_linear or a module list", ("peft.target_modules",))
    if "exclusive" in why:
        yield Reject(LORA, "peft.exclude_modules", "target_modules with exclude_modules: ModuleMatcher raises ValueError('target_modules "
                     "and exclude_modules are mutually exclusive') (components/_peft/module_matcher.py:123)", "only one of the two lists",
                     ("peft.target_modules",))


def _distributed(cfg: dict, world: int | None) -> Iterator[Reject]:
    d = cfg.get("distributed")
    d = d if isinstance(d, dict) else {}
    strat = _strategy(cfg)
    s = schema()
    ac = d.get("activation_checkpointing")
    norm = ac.lower().replace("-", "_") if isinstance(ac, str) else ac
    ok_ac = {"false", "off", "none", "disabled", "no", "true", "on", "full", "enabled", "yes", "selective"}
    if not (ac is None or isinstance(ac, bool) or norm in ok_ac):
        yield Reject(STRATEGY, "distributed.activation_checkpointing", f"activation_checkpointing {_shown(ac)}: raise ValueError("
                     "'distributed.activation_checkpointing must be a boolean or one of 'full', 'selective', 'false'') "
                     "(recipes/_dist_utils.py:71)", "true, false or selective")
    elif norm == "selective" and strat not in ("fsdp2", "ddp"):
        yield Reject(STRATEGY, "distributed.activation_checkpointing", "selective activation checkpointing with strategy "
                     f"{strat}: raise ValueError('selective activation checkpointing is supported only for FSDP2 and DDP configs.') "
                     "(recipes/_dist_utils.py:185)", "true (full) activation checkpointing", ("distributed.strategy",))
    if strat not in s["strategies"]:
        return  # the field check reports the name
    canon = "megatron_fsdp" if strat in ("megatron-fsdp", "mfsdp") else strat
    for k in s["unsupported_sizes"].get(canon, []):
        if _degree(d.get(k)) > 1:
            yield Reject(STRATEGY, f"distributed.{k}", f"{k} {d.get(k)} with strategy {strat}: raise ValueError('{canon} does not support "
                         f"{k.replace('_size', '')} parallelism') (components/distributed/mesh_utils.py:76-95)",
                         f"{k}: 1, or strategy fsdp2", ("distributed.strategy",))
    pp = d.get("pp_size") or 1
    if _is_int(pp) and pp > 1 and d.get("pipeline") is None:
        yield Reject(PIPELINE, "distributed.pp_size", f"pp_size {pp} without a distributed.pipeline block: raise ValueError('`pp_size={pp}` "
                     "(> 1) enables pipeline parallelism but no `distributed.pipeline` block was provided') (recipes/_dist_utils.py:215)",
                     "a distributed.pipeline block (pp_schedule, pp_microbatch_size)")
    pipe = d.get("pipeline")
    if _is_int(pp) and pp > 1 and isinstance(pipe, dict):
        lbs = get(cfg, "step_scheduler.local_batch_size", 1)
        mbs = pipe.get("pp_microbatch_size", 1)
        if _is_int(lbs) and _is_int(mbs) and mbs > 0 and not lbs // mbs >= pp:
            yield Reject(PIPELINE, "step_scheduler.local_batch_size", f"local_batch_size {lbs} // pp_microbatch_size {mbs} < pp_size {pp}: "
                         "assert pp_batch_size // pp_microbatch_size >= self.mesh_context.pp_size (recipes/llm/train_ft.py:675)",
                         f"a local batch of at least {pp * mbs} with pipeline parallelism", ("distributed.pipeline.pp_microbatch_size", "distributed.pp_size"))
    if not world or strat == "ddp":
        return
    size = {k: _degree(d.get(k)) for k in ("tp_size", "cp_size", "pp_size", "ep_size", "dp_replicate_size")}
    non_dp = size["tp_size"] * size["cp_size"] * (size["pp_size"] if canon == "fsdp2" else 1)
    expr = "tp_size * cp_size * pp_size" if canon == "fsdp2" else "tp_size * cp_size"
    also = ("distributed.tp_size", "distributed.cp_size", "distributed.pp_size", "distributed.dp_size")
    dp = d.get("dp_size")
    if _is_int(dp) and dp > 0:
        if dp * non_dp > world:
            yield Reject(MESH, "distributed.dp_size", f"dp_size {dp} x {expr} ({non_dp}) = {dp * non_dp} processes, but the job launches "
                         f"{world}: init_device_mesh raises RuntimeError('Mesh should not be bigger than default world size') "
                         "(components/distributed/mesh_utils.py:141)", f"dp_size: null (world / ({expr})) or a launch of {dp * non_dp} processes", also)
            return
        if dp * non_dp < world:
            yield Reject(MESH, "distributed.dp_size", f"dp_size {dp} x {expr} ({non_dp}) = {dp * non_dp} processes, but the job launches "
                         f"{world}: init_device_mesh builds a mesh over the first {dp * non_dp} ranks only "
                         "(components/distributed/mesh_utils.py:141); the other ranks are outside every parallel group",
                         f"dp_size: null (world / ({expr})) or a launch of {dp * non_dp} processes", also, effect="misread")
            return
    elif world % non_dp:
        yield Reject(MESH, "distributed.tp_size", f"world size {world} is not divisible by {expr} = {non_dp}: raise ValueError('world_size "
                     f"({world}) must be divisible by ({expr})') (components/distributed/mesh_utils.py:118)",
                     f"parallel sizes whose product divides the {world} processes", also)
        return
    else:
        dp = world // non_dp
    if canon != "fsdp2":
        return
    rep = size["dp_replicate_size"]
    if dp % rep:
        yield Reject(MESH, "distributed.dp_replicate_size", f"dp {dp} is not a multiple of dp_replicate_size {rep}: raise ValueError('dp_size "
                     "must be a multiple of dp_replicate_size') (components/distributed/mesh_utils.py:309)", "a divisor of the dp size", also)
    elif rep >= dp and rep != 1:
        yield Reject(MESH, "distributed.dp_replicate_size", f"dp_replicate_size {rep} >= dp {dp}: raise ValueError('dp_replicate_size="
                     f"{rep} must be less than dp_size={dp}') (components/distributed/mesh_utils.py:311)", "a dp_replicate_size below the dp size", also)
    non_pp = dp * size["cp_size"] * size["tp_size"]
    if non_pp % size["ep_size"]:
        yield Reject(MESH, "distributed.ep_size", f"dp x cp x tp = {non_pp} is not a multiple of ep_size {size['ep_size']}: raise ValueError("
                     "f'{non_pp_size=} must be a multiple of {ep_size=}') (components/distributed/mesh_utils.py:318)",
                     "an ep_size that divides dp x cp x tp", also)


def _checkpoint(cfg: dict) -> Iterator[Reject]:
    ck = cfg.get("checkpoint")
    if not isinstance(ck, dict) or not str(ck.get("checkpoint_dir", "")).startswith("msc://"):
        return
    if ck.get("max_recent_checkpoints") is not None:
        yield Reject(CHECKPOINT, "checkpoint.max_recent_checkpoints", "max_recent_checkpoints with an msc:// checkpoint_dir: raise "
                     "ValueError('checkpoint.max_recent_checkpoints is only supported for local checkpoint directories') "
                     "(components/checkpoint/config.py:166)", "unset max_recent_checkpoints or use a local directory", ("checkpoint.checkpoint_dir",))
    sc = ck.get("save_consolidated", "final")
    if sc not in (False, "false", "False") and not (cfg.get("peft") and ck.get("model_save_format") == "torch_save"):
        yield Reject(CHECKPOINT, "checkpoint.checkpoint_dir", f"an msc:// checkpoint_dir with save_consolidated {sc}: raise ValueError("
                     "'Consolidated safetensors export ... is not compatible with remote cloud storage paths') "
                     "(components/checkpoint/config.py:184)", "save_consolidated: false, or a local directory", ("checkpoint.save_consolidated",))


def _dataloader(cfg: dict) -> Iterator[Reject]:
    for name in ("dataloader", "validation_dataloader"):
        dl = cfg.get(name)
        if not isinstance(dl, dict):
            continue
        tgt = dl.get("_target_")
        if tgt not in (None, "torch.utils.data.DataLoader", "torchdata.stateful_dataloader.StatefulDataLoader"):
            yield Reject(DATALOADER, f"{name}._target_", f"{name}._target_ {tgt!r}: raise ValueError('Unsupported dataloader _target_') "
                         "(recipes/_typed_config.py:256)", "leave _target_ out (0.7 always builds its own StatefulDataLoader)")
        ds = cfg.get("dataset" if name == "dataloader" else "validation_dataset")
        meg = isinstance(ds, dict) and str(ds.get("_target_", "")).rsplit(".", 1)[-1] in ("MegatronPretraining", "MegatronPretrainingConfig")
        if dl.get("dataloader_type") is not None and not meg:
            yield Reject(DATALOADER, f"{name}.dataloader_type", "dataloader_type for a non-Megatron dataset: raise ValueError('dataloader_type "
                         "is only supported by Megatron dataset configs') (recipes/_typed_config.py:281)", "drop dataloader_type")
        if meg and dl.get("dataloader_type") not in (None, "single", "cyclic"):
            yield Reject(DATALOADER, f"{name}.dataloader_type", f"dataloader_type {_shown(dl.get('dataloader_type'))}: raise ValueError("
                         "'Unsupported Megatron dataloader_type ...; expected single or cyclic') (recipes/_typed_config.py:271)",
                         "single or cyclic")
        workers = dl.get("num_workers", 0)
        if _is_int(workers) and workers == 0:
            if dl.get("persistent_workers") is True:
                yield Reject(DATALOADER, f"{name}.persistent_workers", "persistent_workers with num_workers 0: torch DataLoader raises ValueError("
                             "'persistent_workers option needs num_workers > 0') (torch/utils/data/dataloader.py)",
                             "persistent_workers: false, or num_workers > 0", (f"{name}.num_workers",))
            if dl.get("prefetch_factor") is not None:
                yield Reject(DATALOADER, f"{name}.prefetch_factor", "prefetch_factor with num_workers 0: torch DataLoader raises ValueError("
                             "'prefetch_factor option could only be specified in multiprocessing') (torch/utils/data/dataloader.py)",
                             "prefetch_factor: null, or num_workers > 0", (f"{name}.num_workers",))


def _packing(cfg: dict) -> Iterator[Reject]:
    ps = cfg.get("packed_sequence")
    if not isinstance(ps, dict) or not (_is_int(ps.get("packed_sequence_size")) and ps["packed_sequence_size"] > 0):
        return
    strat = ps.get("packing_strategy", "thd")
    if not (strat in ("thd", "neat") or (isinstance(strat, str) and "." in strat)):
        yield Reject(PACKING, "packed_sequence.packing_strategy", f"packing_strategy {_shown(strat)}: raise ValueError('Unknown target "
                     "...; expected one of ['neat', 'thd'] or a dotted path') (components/datasets/loader.py:304)", "thd or neat")


def _tokenizer(cfg: dict) -> Iterator[Reject]:
    for name in ("dataset",):
        tok = get(cfg, f"{name}.tokenizer")
        if isinstance(tok, dict) and "_target_" not in tok and "pretrained_model_name_or_path" not in tok:
            yield Reject(TOKENIZER, f"{name}.tokenizer", f"{name}.tokenizer has neither _target_ nor pretrained_model_name_or_path: "
                         "NeMoAutoTokenizer.from_pretrained(**tokenizer) misses its first argument -> TypeError "
                         "(recipes/llm/train_ft.py:408)", "pretrained_model_name_or_path: <the model's HF id or path>")


_CHECKS: tuple[Callable[..., Iterable[Reject]], ...] = (_optimizer, _fields, _sections, _lr_scheduler, _columns, _lora, _checkpoint,
                                                        _dataloader, _packing, _tokenizer)


def rejections(cfg: dict, world_size: int | None = None) -> list[Reject]:
    """Everything Automodel 0.7's own code would refuse (or misread) in ``cfg``, a config as its loader reads it
    (values through :func:`translate_all`); ``world_size`` (processes in all) enables the mesh and batch checks."""
    if not isinstance(cfg, dict):
        return [Reject(NOT_MAPPING, "", "the top level must be a mapping of sections", "a mapping")]
    out: list[Reject] = list(_nonfinite(cfg))
    for check in _CHECKS:
        out.extend(check(cfg))
    out.extend(_batch(cfg, world_size))
    out.extend(_distributed(cfg, world_size))
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in out:
        if (r.code, r.key) not in seen:
            seen.add((r.code, r.key))
            unique.append(r)
    return unique


# ---------------------------------------------------------------------------------------------- the pre-write check

def _unwrap(node: Any, prefix: str, tvs: dict[str, Any]) -> Any:
    """An ``emit.nest(targets)`` tree -> plain values, recording each TargetValue by path."""
    if isinstance(node, dict) and "__tv__" in node:
        tvs[prefix] = node["__tv__"]
        return copy.deepcopy(node["__tv__"].value)
    if isinstance(node, dict):
        return {k: _unwrap(v, f"{prefix}.{k}" if prefix else str(k), tvs) for k, v in node.items()}
    return node


def _owner(path: str, table: dict[str, Any]) -> str | None:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        p = ".".join(parts[:i])
        if p in table:
            return p
    return None


def check_config(config: dict, provs: Callable[[str], list] | None = None, *, world_size: int | None) -> list[Diagnostic]:
    """Errors (AM300-AM349) for everything Automodel 0.7 would reject in ``config``, each at the source line of the value.

    ``config`` is the config to be written: plain values, or the ``emit.nest(targets)`` tree (leaves
    ``{"__tv__": TargetValue}``); ``provs(path)`` gives the provenances of the value at an Automodel path (default: the
    TargetValues' own).  ``world_size``: processes of the launch (nproc x nnodes), for the mesh and batch checks."""
    tvs: dict[str, Any] = {}
    values = translate_all(_unwrap(config, "", tvs))
    if provs is None:
        def provs(path: str) -> list:
            owner = _owner(path, tvs)
            return list(tvs[owner].provs) if owner else []

    out: list[Diagnostic] = []
    for r in rejections(values, world_size):
        paths = [r.key, *r.also]
        found = [(p, list(provs(p) or [])) for p in paths]
        here = next((pv for _, ps in found for pv in ps if getattr(pv, "file", None)), None)
        origins = []
        for p, ps in found:
            shown = ", ".join(dict.fromkeys(str(pv) for pv in ps))
            if shown:
                origins.append(f"{p} from {shown}")
        rules = [tvs[o].rule for p in paths if (o := _owner(p, tvs)) and getattr(tvs[o], "rule", None)]
        rules = list(dict.fromkeys(rules))
        msg = r.message + (f" [{'; '.join(origins)}]" if origins else "")
        hint = f"in the NeMo job, change what gives {r.key} its value so that it is {r.fix}" if r.effect != "refuse" else \
            f"write {r.key.rsplit('.', 1)[-1]} as a finite number in the NeMo job"
        if rules:
            hint += f" (written by rule {', '.join(rules)}: `nemo-migrate explain {rules[0]}` names the NeMo knob)"
        out.append(Diagnostic("error", r.code, msg, key=r.key, hint=hint, **(here.where() if here is not None else {})))
    return out


def check_targets(targets: dict[str, Any], *, world_size: int | None) -> list[Diagnostic]:
    """:func:`check_config` on a variant's ``targets`` (dotted Automodel path -> TargetValue)."""
    from .emit import nest

    return check_config(nest(targets), None, world_size=world_size)
