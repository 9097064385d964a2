"""Load an Automodel 0.7 YAML the way ``nemo_automodel.components.config`` does, without importing torch.

* ``yaml.safe_load``'s values, read by ``safe_yaml.load`` (bounded size, aliases and depth; tags refused; every key's
  line kept for messages) (YAML 1.1, so ``1e-8`` is a string until ``translate_value``), then every value as
  Automodel's loader reads it (:func:`nemo_migrate.automodel.values.translate_all`: env interpolation ``${VAR}``,
  ``${VAR,default}``, ``$VAR``, ``${oc.env:VAR[,default]}``, then ``translate_value``; ``_target_`` and ``*_fn``
  strings verbatim: Automodel resolves them to Python objects, the runtime maps the known ones itself).
* ``--set a.b.c=value`` follows Automodel's CLI override: ``translate_value`` on the value, ``set_by_dotted`` creating
  missing intermediate mappings (replacing a non-mapping in the way).
* dtype strings use ``dtype_from_str``'s table (:func:`nemo_migrate.automodel.values.dtype_name`: case-insensitive,
  optional ``torch.`` prefix, only ``bf16`` as short alias: ``fp32``/``fp16``/``bf16-mixed`` are rejected as
  Automodel rejects them).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ..automodel.values import FLOAT_DTYPES, EnvVarMissing, dtype_name, translate_all, translate_value
from .errors import RunError


def _read(v: Any, *, file: str | None, key: str = "", path: str = "") -> Any:
    """``v`` as Automodel's loader reads it, with the process environment; a missing variable is a RunError."""
    try:
        return translate_all(v, key, environ=os.environ, path=path)
    except EnvVarMissing as e:
        raise RunError(f"environment variable {e.var!r} is not set (needed by {e.token!r})", file=file, key=e.path or None,
                       hint=f"export {e.var}=... or write the value into the YAML") from None


def read_config_bytes(p: Path) -> bytes:
    """The bytes of a config file; a FIFO, device, directory or missing file is refused without reading it."""
    from .safe_yaml import MAX_BYTES

    if not p.exists():
        raise RunError("config file not found", file=str(p), hint="pass the YAML that `nemo-migrate convert` wrote")
    if not p.is_file():
        raise RunError("the config is not a regular file (a directory, FIFO or device)", file=str(p),
                       hint="pass the YAML file itself")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise RunError(f"cannot read the config ({e.strerror or e})", file=str(p)) from None
    return data


def load_yaml(path: str | Path, lines: dict[str, str] | None = None) -> dict[str, Any]:
    """Read a YAML config into plain dicts/lists with Automodel's scalar rules applied (``yaml.safe_load``'s values,
    through the bounded loader of ``safe_yaml``). ``lines``, when given, receives ``{dotted key: "file:line"}``."""
    from .safe_yaml import YamlError, load

    p = Path(path)
    try:
        raw, where = load(read_config_bytes(p))
    except YamlError as e:
        loc = f"{p}:{e.line}" if e.line else str(p)
        raise RunError(e.message, file=loc, hint=e.hint) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RunError("the top level of the config must be a mapping", file=str(p), found=type(raw).__name__)
    if lines is not None:
        lines.update({k: f"{p}:{n}" for k, n in where.items()})
    return _read(raw, file=str(p))


def apply_override(cfg: dict[str, Any], item: str, *, file: str | None = None,
                   lines: dict[str, str] | None = None) -> None:
    """Apply one ``section.key=value`` override in place (Automodel's ``set_by_dotted`` + ``translate_value``).

    Automodel 0.7's grammar, kept apart on purpose from the NeMo-side ones in ``migrate/sources/overrides.py``
    (NeMo-Run's ``key=value``/``key+=value`` typed later by the parameter's annotation; Hydra's ``+key``/``~key`` with
    its own value grammar): here any missing section is created, and the value is typed by ``translate_value``
    (case-insensitive ``none``/``true``, a float regex), as 0.7's ``parse_args_and_load_config`` does."""
    if "=" not in item:
        raise RunError("a --set override must look like section.key=value", key=item, found=item,
                       hint="e.g. --set dataset.path_or_dataset_id=/data/train.jsonl")
    dotted, value = item.split("=", 1)
    dotted = dotted.strip().lstrip("-")
    if not dotted or any(not p for p in dotted.split(".")):
        raise RunError("the key of a --set override is empty or has an empty segment", key=item, found=dotted)
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = _read(translate_value(value), file=file, key=parts[-1], path=dotted)
    if lines is not None:  # the value now comes from the command line
        for k in [k for k in lines if k == dotted or k.startswith((dotted + ".", dotted + "["))]:
            del lines[k]
        lines[dotted] = f"--set {item}"


def effective_config(path: str | Path, overrides: list[str] | None = None,
                     max_steps: int | None = None, lines: dict[str, str] | None = None) -> dict[str, Any]:
    """The config with ``--set`` overrides and ``--max-steps`` applied; ``lines`` (optional) receives where each
    key was written (``file:line`` or ``--set ...``)."""
    cfg = load_yaml(path, lines)
    for item in overrides or []:
        apply_override(cfg, item, file="--set", lines=lines)
    if max_steps is not None:
        cfg.setdefault("step_scheduler", {})
        if not isinstance(cfg["step_scheduler"], dict):
            cfg["step_scheduler"] = {}
        cfg["step_scheduler"]["max_steps"] = int(max_steps)
        if lines is not None:
            lines["step_scheduler.max_steps"] = f"--max-steps {int(max_steps)}"
    return cfg


def dump_yaml(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False, default_flow_style=None, width=120)


def parse_dtype(val: Any, *, file: str | None, key: str, allow_auto: bool = False,
                floating: bool = True) -> str | None:
    """Canonical dtype name for a YAML dtype string, as ``dtype_from_str`` accepts it (None stays None)."""
    if val is None:
        return None
    if allow_auto and isinstance(val, str) and val.lower() == "auto":
        return "auto"
    name = dtype_name(val)
    if name is not None and (not floating or name in FLOAT_DTYPES):
        return name
    hints = {"fp32": "float32", "fp16": "float16", "bf16-mixed": "bfloat16", "16-mixed": "float16",
             "32": "float32", "fp64": "float64"}
    alt = hints.get(str(val).lower())
    raise RunError("not a dtype Automodel 0.7 accepts", file=file, key=key, found=val,
                   expected="one of float32, bfloat16, float16, float64 (or bf16, torch.<name>)"
                   + (", auto" if allow_auto else ""),
                   hint=f"write {alt!r}" if alt else None)


def torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)
