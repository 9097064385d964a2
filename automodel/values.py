"""How Automodel 0.7 reads a value of its YAML: ``translate_value``, env interpolation, the dtype table.

Paths are in the nemo_automodel-0.7.0 wheel (``.venv/lib/python3.11/site-packages/nemo_automodel``).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import Any, Mapping

from ._data import load

# components/config/loader.py:142-149
_SPECIAL = {"none": None, "None": None, "true": True, "True": True, "false": False, "False": False}


def translate_value(v: Any) -> Any:
    """components/config/loader.py:121-162 ``translate_value``: a string becomes None/True/False, else
    ``ast.literal_eval``'s literal, else stays the string (over 1000 characters: never evaluated)."""
    if not isinstance(v, str):
        return v
    if v in _SPECIAL:
        return _SPECIAL[v]
    if len(v) > 1000:
        return v
    try:
        return ast.literal_eval(v)
    except Exception:  # noqa: BLE001 - loader.py:160 catches every Exception
        return v


# components/config/loader.py:207 and :228 (``${VAR}``, ``${VAR,default}``, ``${oc.env:VAR}``; ``$VAR``, ``$a.b``)
BRACED = re.compile(r"\$\{([^}]+)\}")
DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)")


class EnvVarMissing(KeyError):
    """loader.py:204 raises KeyError for a variable that is not set and has no default."""

    def __init__(self, var: str, token: str, path: str = ""):
        super().__init__(var)
        self.var, self.token, self.path = var, token, path


def resolve_env(value: str, environ: Mapping[str, str], path: str = "") -> str:
    """components/config/loader.py:193-232 ``resolve_yaml_env_vars`` on one string (braced forms first)."""
    if "$" not in value:
        return value

    def get(var: str, default: str | None, token: str) -> str:
        if var in environ:
            return environ[var]
        if default is not None:
            return default
        raise EnvVarMissing(var, token, path)

    def braced(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("oc.env:"):
            expr = expr[len("oc.env:"):].strip()
        var, default = (s.strip() for s in expr.split(",", 1)) if "," in expr else (expr, None)
        return get(var, default, m.group(0))

    value = BRACED.sub(braced, value)
    return DOLLAR.sub(lambda m: get(m.group(1), None, m.group(0)), value)


def translate_all(v: Any, key: str = "", *, environ: Mapping[str, str] | None = None, path: str = "") -> Any:
    """A config tree as ConfigNode._wrap reads it (components/config/loader.py:388-410): ``_target_`` and ``*_fn``
    strings are import paths (kept verbatim), every other string scalar goes through env interpolation (only when
    ``environ`` is given: the static ``diff`` does not read the user's environment) and ``translate_value``."""
    if isinstance(v, dict):
        return {k: translate_all(x, str(k), environ=environ, path=f"{path}.{k}" if path else str(k)) for k, x in v.items()}
    if isinstance(v, list):
        return [translate_all(x, "", environ=environ, path=f"{path}[{i}]") for i, x in enumerate(v)]
    if key == "_target_" or key.endswith("_fn"):
        return v
    if environ is not None and isinstance(v, str) and "$" in v:
        v = resolve_env(v, environ, path)
    return translate_value(v)


# -- dtypes --------------------------------------------------------------------------------------------------

FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


@lru_cache(maxsize=None)
def _dtypes() -> dict[str, str]:
    return load("automodel/schema.yaml")["dtypes"]


def dtype_name(val: Any) -> str | None:
    """The torch dtype (attribute name) shared/utils.py ``dtype_from_str`` gives a string, None where it raises
    KeyError: the lower-cased string, then ``torch.`` + it, looked up in its table (shared/utils.py:41-70)."""
    if not isinstance(val, str):
        return None
    low = val.lower()
    table = _dtypes()
    return table.get(low) or table.get("torch." + low)


def normalize_dtype(dt: Any) -> str:
    """A dtype setting as a name to compare and show: ``auto`` for None/auto, else the torch dtype it means (the
    lower-cased text where dtype_from_str refuses it)."""
    if dt is None or dt == "auto":
        return "auto"
    return dtype_name(dt) or str(dt).lower().replace("torch.", "")
