"""Automodel 0.7's config schema: the sections and the keys each accepts, per-field checks, and what an absent key
means, read from ``mappings/automodel/schema.yaml`` and ``defaults.yaml`` (the one home of that data).

The runtime's own extension (``nemo_compat:``) is declared there too, under ``ours:``: Automodel 0.7 ignores it.
"""

from __future__ import annotations

import ast
import operator
from functools import lru_cache
from typing import Any, Mapping

from ._data import load

MISSING: Any = object()  # "no value written here"


def schema() -> dict[str, Any]:
    return load("automodel/schema.yaml")


def defaults() -> dict[str, Any]:
    return load("automodel/defaults.yaml")


@lru_cache(maxsize=None)
def field_specs() -> dict[str, dict[str, Any]]:
    """Per-path checks, with the `validation_*` twins of dataset/dataloader paths filled in."""
    s = schema()
    out = dict(s["fields"])
    for alias, twin in s["aliases"].items():
        for path, spec in s["fields"].items():
            if path.startswith(twin + "."):
                out.setdefault(alias + path[len(twin):], spec)
    return out


def top_level() -> frozenset[str]:
    """Top-level keys the LLM fine-tune recipe reads (anything else is ignored by Automodel 0.7)."""
    return frozenset(schema()["top_level"])


def ours(section: str) -> frozenset[str]:
    """Keys of one of the runtime's own sections (``nemo_compat``)."""
    return frozenset(schema()["ours"][section]["fields"])


def section_keys(section: str) -> frozenset[str]:
    """Every key a section accepts: its fields and the keys 0.7 drops silently."""
    spec = schema()["sections"][section]
    return frozenset(spec["fields"]) | frozenset(spec.get("dropped", []))


def strategy_keys(strategy: str) -> frozenset[str] | None:
    """The keys ``distributed:`` accepts with ``strategy`` (None: not a strategy 0.7 knows)."""
    s = schema()
    if strategy not in s["strategies"]:
        return None
    d = s["sections"]["distributed"]
    return frozenset(d["common"]) | frozenset(s["strategies"][strategy]) | frozenset(d.get("dropped", []))


def dataset_fields(name: str) -> frozenset[str] | None:
    """The fields of a dataset class's typed config, by the last component of ``_target_`` (None: not known here)."""
    spec = schema()["datasets"].get(name)
    return None if spec is None else frozenset(spec["fields"])


def target_name(block: Any) -> str:
    return str(block.get("_target_") or "").rsplit(".", 1)[-1] if isinstance(block, dict) else ""


def strategy(cfg: dict) -> str:
    dist = cfg.get("distributed") if isinstance(cfg, dict) else None
    s = dist.get("strategy", "fsdp2") if isinstance(dist, dict) else "fsdp2"
    return s.lower() if isinstance(s, str) else "fsdp2"


def allowed_keys(section: str, block: dict, cfg: dict | None = None) -> set[str] | None:
    """The keys a strict section accepts in 0.7 (None: not strict, or a class whose fields are not known here)."""
    s = schema()
    spec = s["sections"].get(section)
    if not spec or not spec.get("strict"):
        return None
    keys = set(section_keys(section))
    if section in ("dataset", "validation_dataset"):
        name = target_name(block)
        fields = dataset_fields(name)
        if fields is not None:
            return set(fields) | {"_target_", "tokenizer"}
        if name not in ("", "ColumnMappedTextInstructionDataset"):
            return None  # another class: its fields are not known here
    if section == "distributed":
        by_strategy = strategy_keys(strategy({"distributed": block} if cfg is None else cfg))
        if by_strategy is not None:
            keys = set(by_strategy)
    return keys


# ---------------------------------------------------------------------------------------------- defaults

def class_defaults(section: str, target: Any) -> dict[str, Any]:
    """The keyword arguments (and their defaults) of the class a section's ``_target_`` names, by class name
    (``optimizer``, ``loss_fn``: defaults.yaml ``_by_class``); {} for a class not known here."""
    return defaults()[section]["_by_class"].get(str(target or "").rsplit(".", 1)[-1], {})


def default(path: str) -> Any:
    """0.7's value of an absent key (``MISSING`` where defaults.yaml has none, or where it is a formula of the run:
    those are computed by :func:`formula` where they are used)."""
    d = defaults()
    parts = path.split(".")
    if len(parts) == 1:
        v = d.get(parts[0], MISSING)
        return v.get("_value", MISSING) if isinstance(v, dict) and "_value" in v else MISSING
    cur: Any = d
    for p in parts:
        if not isinstance(cur, dict) or p not in cur:
            return MISSING
        cur = cur[p]
    return MISSING if isinstance(cur, dict) and "_formula" in cur else cur


_OPS = {ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv, ast.Add: operator.add, ast.Sub: operator.sub}


def formula(value: Any, env: Mapping[str, Any]) -> Any:
    """A default of defaults.yaml: a constant, or ``{_formula: "min(1000, total_steps // 10)"}`` evaluated over
    ``env`` (names such as ``total_steps``, ``optimizer.lr``); an unknown (None) operand gives None."""
    if not (isinstance(value, dict) and "_formula" in value):
        return value
    expr = value["_formula"]

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return n.value
        if isinstance(n, (ast.Name, ast.Attribute)):
            return env[ast.unparse(n)]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b = ev(n.left), ev(n.right)
            return None if a is None or b is None else _OPS[type(n.op)](a, b)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("min", "max") and not n.keywords:
            args = [ev(a) for a in n.args]
            return None if any(a is None for a in args) else (min if n.func.id == "min" else max)(args)
        raise ValueError(f"defaults.yaml: unsupported formula {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)
