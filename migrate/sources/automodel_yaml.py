"""Front end for Automodel YAML (reverse lowering, for ``diff``): read a config the way Automodel 0.7 reads it.

* YAML 1.1 plain-scalar rules (PyYAML), then ``translate_value`` on every string (``none`` -> None, ``true`` -> True,
  ``ast.literal_eval`` else the raw text) as nemo_automodel/components/config/loader.py does;
* the older forms the published guide uses: ``distributed._target_`` (stripped; the strategy comes from
  ``strategy:``), ``rng:`` (ignored; the seed is the top-level ``seed``), ``model.torch_dtype`` (alias of ``dtype``),
  ``match_all_linear`` together with ``target_modules`` (rejected since v0.4.0);
* validity findings: unknown keys in strict sections (mappings/automodel/schema.yaml), ``_target_`` that 0.7 drops,
  invalid dtype strings, a missing ``recipe:``/``loss_fn``/``optimizer``, legacy keys that do nothing.

What 0.7 accepts (types, strict sections, dataset classes, LoRA selectors, dtypes, the loader's value translation) is
read from the one home of that knowledge, :mod:`nemo_migrate.automodel` (shared with the runtime), and the type checks
of :mod:`nemo_migrate.automodel_rules`, which the pre-write check of ``convert`` also uses.

Every value keeps its file:line; nothing is executed and nothing is imported from the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..automodel.match import lora_conflicts
from ..automodel.schema import MISSING as _MISSING
from ..automodel.schema import allowed_keys, field_specs, schema
from ..automodel.values import dtype_name, translate_all
from ..automodel_rules import type_ok
from ..diagnostics import Diagnostics, did_you_mean
from .yaml_source import YamlError, _Builder, _mark, compose_file

FIND = "AM"


@dataclass
class AutomodelConfig:
    file: str
    values: dict[str, Any]
    pos: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    findings: Diagnostics = field(default_factory=Diagnostics)
    rejected: dict[str, str] = field(default_factory=dict)  # path -> why Automodel 0.7 refuses it

    def get(self, path: str, default: Any = None) -> Any:
        cur: Any = self.values
        for p in path.split("."):
            if not isinstance(cur, dict) or p not in cur:
                return default
            cur = cur[p]
        return cur

    def has(self, path: str) -> bool:
        return self.get(path, _MISSING) is not _MISSING

    def where(self, path: str) -> dict:
        line, col = self.pos.get(path, (None, None))
        out: dict[str, Any] = {"file": self.file}
        if line:
            out["line"] = line
            if col:
                out["col"] = col
        return out


__all__ = ["AutomodelConfig", "looks_like_automodel", "read_automodel_yaml"]


def looks_like_automodel(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    am = {"step_scheduler", "recipe", "loss_fn", "dist_env", "distributed", "dataset", "lr_scheduler", "optimizer", "checkpoint", "rng"}
    nemo = {"trainer", "data", "optim", "log", "resume", "run"}
    return len(am & set(data)) > len(nemo & set(data))


def read_automodel_yaml(path: Path, display: str, diags: Diagnostics) -> AutomodelConfig | None:
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    root = compose_file(path, display, diags, code=f"{FIND}101")
    if root is None:
        if not diags.has_errors:
            diags.error(f"{FIND}101", "empty file", file=display)
        return None
    if not isinstance(root, MappingNode):
        diags.error(f"{FIND}102", "top level must be a mapping of sections", file=display, **dict(zip(("line", "col"), _mark(root))))
        return None
    b = _Builder()
    pos: dict[str, tuple[int | None, int | None]] = {}

    def index(node: Any, prefix: str) -> None:
        if isinstance(node, MappingNode):
            for knode, vnode in node.value:
                key = knode.value if isinstance(knode.value, str) else str(knode.value)
                p = f"{prefix}.{key}" if prefix else key
                pos[p] = _mark(knode)
                index(vnode, p)
        elif isinstance(node, SequenceNode):
            for v in node.value:
                index(v, prefix)

    try:
        raw = b.value(root)
        index(root, "")
    except YamlError as e:
        diags.error(f"{FIND}101", str(e), file=display, line=e.line, col=e.col)
        return None
    cfg = AutomodelConfig(display, translate_all(raw), pos)
    _reverse_lower(cfg)
    return cfg


def _reverse_lower(cfg: AutomodelConfig) -> None:
    """Apply 0.7's treatment of older forms and record what real Automodel 0.7 would say about the file."""
    sch = schema()
    f = cfg.findings
    v = cfg.values
    top = set(sch["top_level"])
    for key in list(v):
        if key not in top:
            f.warning(f"{FIND}201", f"top-level '{key}' is not read by Automodel 0.7's LLM fine-tune recipe (ignored)", key=key,
                      hint=did_you_mean(key, top), **cfg.where(key))
    if "rng" in v:
        seed = v["rng"].get("seed") if isinstance(v["rng"], dict) else None
        f.warning(f"{FIND}202", f"'rng' is ignored by train_ft in every release; the seed is the top-level 'seed' "
                  f"({v.get('seed', 42)}{'' if 'seed' in v else ', the default'}), not rng.seed={seed}", key="rng",
                  hint="write `seed: <n>` at the top level", **cfg.where("rng"))
    if "recipe" not in v:
        f.note(f"{FIND}203", "no 'recipe:' key: `automodel cfg.yaml` needs it (python -m nemo_automodel.recipes.llm.train_ft -c works without)",
               key="recipe", hint="add `recipe: TrainFinetuneRecipeForNextTokenPrediction`", file=cfg.file)
    for required in ("model", "loss_fn", "optimizer", "dataset"):
        if required not in v:
            f.error(f"{FIND}204", f"section '{required}' is required by the fine-tune recipe", key=required, file=cfg.file)
    dist = v.get("distributed")
    if isinstance(dist, dict):
        tgt = dist.pop("_target_", None)
        for k in ("_recursive_", "_convert_"):
            dist.pop(k, None)
        if tgt is not None:
            becomes = dist.get("strategy", "fsdp2")
            extra = ""
            if isinstance(tgt, str) and tgt.endswith(("DDPManager", "MegatronFSDPManager")) and "strategy" not in dist:
                extra = f"; this asked for {tgt.rsplit('.', 1)[-1]} but runs as FSDP2 without `strategy:`"
            f.warning(f"{FIND}205", f"distributed._target_ is silently stripped by 0.7 (strategy: {becomes}){extra}",
                      key="distributed._target_", hint="write `strategy: fsdp2|megatron_fsdp|ddp`", **cfg.where("distributed._target_"))
        for k in ("dp_size", "dp_replicate_size", "tp_size", "cp_size", "pp_size", "ep_size"):
            if k in dist and dist[k] is None and k != "dp_size":
                pass
    for sect in list(v):  # a section that is not a mapping cannot be read at all
        if sect in sch["sections"] or sect in ("model", "optimizer", "loss_fn", "dataset", "validation_dataset", "dataloader"):
            if not isinstance(v[sect], dict):
                cfg.rejected[sect] = "not a mapping"
                f.error(f"{FIND}220", f"section '{sect}' must be a mapping of keys, found {_short(v[sect])}", key=sect, **cfg.where(sect))
                del v[sect]
    for path, spec in field_specs().items():
        want = spec.get("type")
        got = cfg.get(path, _MISSING)
        if want is None or got is _MISSING or type_ok(got, want):
            continue
        parent, _, leaf = path.rpartition(".")
        cfg.rejected[path] = f"expects {want}"
        f.error(f"{FIND}221", f"'{path}' expects {want.lstrip('?')}{' or null' if want.startswith('?') else ''}, found {_short(got)}", key=path,
                **cfg.where(path))
        holder = cfg.get(parent) if parent else v
        if isinstance(holder, dict):
            del holder[leaf]  # reason with Automodel's default from here on
    model = v.get("model")
    if isinstance(model, dict):
        if "torch_dtype" in model and "dtype" not in model:
            model["dtype"] = model.pop("torch_dtype")
            if "model.torch_dtype" in cfg.pos:
                cfg.pos["model.dtype"] = cfg.pos["model.torch_dtype"]
        elif "torch_dtype" in model:
            model.pop("torch_dtype")
        dt = model.get("dtype")
        if dt is not None and dt != "auto" and dtype_name(dt) is None:
            cfg.rejected["model.dtype"] = f"dtype_from_str({dt!r}) raises KeyError"
            f.error(f"{FIND}206", f"model dtype {dt!r} is not accepted by Automodel's dtype_from_str (KeyError)", key="model.dtype",
                    hint="use bfloat16 / bf16 / float32 / float16", **cfg.where("model.torch_dtype" if "model.torch_dtype" in cfg.pos else "model.dtype"))
    for sect, spec in sch["sections"].items():
        block = v.get(sect)
        if not isinstance(block, dict):
            continue
        for k in spec.get("dropped", []):
            if k in block and sect != "distributed":
                block.pop(k)
                f.warning(f"{FIND}207", f"{sect}.{k} is silently dropped by 0.7", key=f"{sect}.{k}", **cfg.where(f"{sect}.{k}"))
        for k, why in (spec.get("legacy") or {}).items():
            if k in block:
                f.warning(f"{FIND}208", f"{sect}.{k}: {why}", key=f"{sect}.{k}", **cfg.where(f"{sect}.{k}"))
        fields = allowed_keys(sect, block, v)
        if fields is not None:
            for k in block:
                if k not in fields:
                    cfg.rejected[f"{sect}.{k}"] = "unknown key"
                    f.error(f"{FIND}209", f"unknown key '{k}' in the strict section '{sect}' (0.7 raises TypeError/ValueError)",
                            key=f"{sect}.{k}", hint=did_you_mean(str(k), fields), **cfg.where(f"{sect}.{k}"))
    if isinstance(v.get("checkpoint"), dict) and "_target_" in v["checkpoint"]:
        cfg.rejected["checkpoint._target_"] = "TypeError"
    peft = v.get("peft")
    if isinstance(peft, dict):
        if isinstance(peft.get("target_modules"), str) and peft["target_modules"]:
            peft["target_modules"] = [peft["target_modules"]]
        conflicts = lora_conflicts(peft)
        if "match_all_linear" in conflicts:
            cfg.rejected["peft"] = "match_all_linear with target_modules/exclude_modules: ValueError since v0.4.0"
            f.error(f"{FIND}210", "match_all_linear: true together with target_modules/exclude_modules raises ValueError in Automodel >= 0.4 "
                    "(before, match_all_linear won and adapted every linear layer, lm_head included)", key="peft.match_all_linear",
                    hint="drop match_all_linear and list the projections, e.g. target_modules: ['*_proj']", **cfg.where("peft.match_all_linear"))
        if "exclusive" in conflicts:
            cfg.rejected["peft"] = "target_modules and exclude_modules are mutually exclusive"
            f.error(f"{FIND}211", "target_modules and exclude_modules are mutually exclusive (ValueError)", key="peft.exclude_modules",
                    **cfg.where("peft.exclude_modules"))
        if "_target_" not in peft:
            f.error(f"{FIND}212", "peft needs `_target_: nemo_automodel.components._peft.lora.PeftConfig` (it is built with instantiate())",
                    key="peft", **cfg.where("peft"))
    wandb = v.get("wandb")
    if isinstance(wandb, dict) and "save_dir" in wandb:
        f.warning(f"{FIND}213", "wandb.save_dir is passed to wandb.init(), which takes `dir`", key="wandb.save_dir", **cfg.where("wandb.save_dir"))
    for sect in ("dataset", "validation_dataset"):
        p = v.get(sect, {}).get("path_or_dataset_id") if isinstance(v.get(sect), dict) else None
        if isinstance(p, str):
            import re

            if re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", p):
                f.warning(f"{FIND}214", f"{sect}.path_or_dataset_id {p!r} looks like a Hub id: unless it exists locally, Automodel "
                          "downloads it from the Hub", key=f"{sect}.path_or_dataset_id", hint=f"write ./{p} for a local file",
                          **cfg.where(f"{sect}.path_or_dataset_id"))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
