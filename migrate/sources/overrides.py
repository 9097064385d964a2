"""Dotted command-line overrides as NeMo-Run reads them (``key=value``, ``key+=value``, ...).

NeMo-Run's override regex is ``^([\\w\\[\\]\\.]+)\\s*(=|\\+=|-=|\\*=|/=|\\|=|&=)\\s*(.+)$`` without DOTALL:
values are single-line and non-empty; the value stays text until it is parsed by the annotation of the
parameter it lands on (reference/nemo2-semantics.md §7.3).  ``Config[pkg.Class]`` and factory names replace
the node they are assigned to.
"""

from __future__ import annotations

import re

from ..diagnostics import Diagnostics
from ..ir import Provenance
from .yaml_source import NodeSpec, Override

_OVERRIDE = re.compile(r"^([\w\[\]\.]+)\s*(=|\+=|-=|\*=|/=|\|=|&=)\s*(.+)$")
_CONFIG = re.compile(r"^(Config|Partial)\[([\w\.]+)\]$")


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
