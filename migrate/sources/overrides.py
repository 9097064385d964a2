"""The NeMo-side dotted command-line override grammars: the one home of each (``--set`` and launch lines use these).

* **NeMo-Run** (NeMo 2: ``key=value``, ``key+=value``, ...): :func:`parse_override`. NeMo-Run's override regex is
  ``^([\\w\\[\\]\\.]+)\\s*(=|\\+=|-=|\\*=|/=|\\|=|&=)\\s*(.+)$`` without DOTALL: values are single-line and
  non-empty; the value stays text until it is parsed by the annotation of the parameter it lands on
  (reference/nemo2-semantics.md §7.3).  ``Config[pkg.Class]`` and factory names replace the node they are assigned to.
  Hand-written on purpose: NeMo-Run's parser lives in nemo_run (never imported) and is this one regex.
* **Hydra** (NeMo 1.0 / NeMo-Aligner: ``key=value``, ``+key=value``, ``++key=value``, ``~key[=value]``):
  :func:`parse_hydra_override`, Hydra 1.3's own grammar and value typing (``OverridesParser``: ``yes`` stays a
  string, ``1e-4`` is a float, ``a,b`` is a sweep), imported only when a NeMo 1 job is read.
* **Automodel** (``--section.key value`` / ``--set section.key=value`` on a migrated YAML) is a third grammar on
  purpose, in ``runtime/config.py`` ``apply_override`` (0.7's ``parse_cli_argv`` + ``set_by_dotted`` +
  ``translate_value``): there ``1e-4`` is a float by a regex, ``none``/``true`` are case-insensitive, and missing
  sections are created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..diagnostics import Diagnostics
from ..ir import Provenance
from .yaml_source import NodeSpec, Override

_OVERRIDE = re.compile(r"^([\w\[\]\.]+)\s*(=|\+=|-=|\*=|/=|\|=|&=)\s*(.+)$")
_CONFIG = re.compile(r"^(Config|Partial)\[([\w\.]+)\]$")


def override_key(text: str) -> str:
    """The dotted key an override sets, in NeMo-Run (``k=v``, ``k+=v``) and Hydra (``+k=v``, ``++k=v``, ``~k``) forms
    alike, also when its value is not known (a shell variable): for matching ``--set`` keys against launch lines."""
    return text.lstrip("+~").partition("=")[0].rstrip("+-*/|&").strip()


def parse_override(text: str, prov: Provenance, diags: Diagnostics) -> Override | None:
    m = _OVERRIDE.match(text)
    if not m:
        hint = None
        if "=" not in text:
            hint = "overrides are key=value (e.g. trainer.max_steps=100)"
        elif text.endswith("="):
            hint = "NeMo-Run rejects empty values; use key=None to clear a value"
        elif "\n" in text:
            hint = "values must be on one line; write '\\n' inside single quotes for a newline"
        diags.error("NM120", f"invalid override {text!r} (NeMo-Run: \"Invalid argument format\")", hint=hint, **prov.where())
        return None
    key, op, raw = m.group(1), m.group(2), m.group(3)
    if op in ("|=", "&="):
        diags.error("NM120", f"operator '{op}' in {text!r} is not supported by this compiler", key=key, **prov.where())
        return None
    cm = _CONFIG.match(raw.strip())
    p = prov.model_copy(update={"detail": prov.detail or f"{key}{op}{raw}"})
    if cm:
        return Override(key, op, NodeSpec(target=cm.group(2), partial=cm.group(1) == "Partial"), p, raw=raw)
    return Override(key, op, raw, p, raw=raw)


# ---------------------------------------------------------------------------------------------- Hydra (NeMo 1.0)

HYDRA_FORMS = "key=value, +key=value (add), ++key=value (add or override), ~key or ~key=value (delete)"


@dataclass
class HydraOverride:
    op: str  # "change" | "add" | "force_add" | "delete"
    key: str
    value: Any  # Hydra's typed value (str, int, float, bool, None, list, dict); for "delete" None unless ~key=value
    has_value: bool  # ~key=value (delete only when the value matches; Hydra: ~key=null is ~key)


@lru_cache(maxsize=1)
def _hydra_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_hydra_override(text: str, prov: Provenance, diags: Diagnostics) -> HydraOverride | None:
    """One Hydra command-line override, parsed by Hydra 1.3's own grammar (``OverridesParser.parse_override``)."""
    try:
        ov = _hydra_parser().parse_override(text)
    except Exception as e:  # noqa: BLE001 - Hydra's grammar errors (HydraException) and anything odd input makes ANTLR raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        diags.error("NM120", f"invalid Hydra override {text!r} (Hydra: {first})",
                    hint=f"{HYDRA_FORMS}; quote a value with spaces or special characters: key='a value'", **prov.where())
        return None
    key = ov.key_or_group
    if ov.package is not None or "/" in key:
        diags.error("NM120", f"Hydra override {text!r} selects a config group or package; NeMo 1.0's fine-tuning "
                    "configs have none (Hydra: \"looks like a config group override\")", key=key,
                    hint=f"{HYDRA_FORMS}; set the keys themselves (e.g. model.optim.lr=1e-4)", **prov.where())
        return None
    if ov.is_sweep_override():
        diags.error("NM120", f"Hydra override {text!r} is a sweep (one job per value, only with --multirun)", key=key,
                    hint=f"give one value; quote a value holding a comma: {key}='a,b'", **prov.where())
        return None
    op = {"CHANGE": "change", "ADD": "add", "FORCE_ADD": "force_add", "DEL": "delete"}[ov.type.name]
    value = ov.value()
    return HydraOverride(op=op, key=key, value=value, has_value=op == "delete" and value is not None)
