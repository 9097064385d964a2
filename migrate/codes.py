"""The registry of diagnostic codes, mappings/diagnostics.yaml: what each NM/AM code means, why, and the way out.

`nemo-migrate explain CODE` prints an entry; tests/test_diagnostic_registry.py keeps the registry and the code in step
(every code reported is registered, every registered code is reported somewhere)."""

from __future__ import annotations

import re
import textwrap
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from . import knowledge

CODE = re.compile(r"^(NM|AM)\d{3}\Z")


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    severity: str  # error | warning | note, or two joined by " or " when the use site decides
    title: str
    explanation: str

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        if not set(v.split(" or ")) <= {"error", "warning", "note"}:
            raise ValueError(f"severity {v!r}: error, warning or note (two joined by ' or ')")
        return v


@lru_cache(maxsize=None)
def _data() -> tuple[dict[str, str], dict[str, Code]]:
    raw = knowledge.load("diagnostics.yaml")
    out: dict[str, Code] = {}
    for code, entry in raw["codes"].items():
        if not CODE.match(code):
            raise ValueError(f"mappings/diagnostics.yaml: {code!r} is not a code (NM000-NM999, AM000-AM999)")
        try:
            out[code] = Code.model_validate(entry)
        except ValidationError as e:
            raise ValueError(f"mappings/diagnostics.yaml: {code}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    return dict(raw["groups"]), out


def registry() -> dict[str, Code]:
    return _data()[1]


def group(code: str) -> str:
    """The group a code belongs to (``NM213`` -> the NM2xx line of the registry)."""
    return _data()[0].get(code[:3], "")


def render(code: str, width: int = 100) -> str:
    c = registry()[code]
    body = textwrap.fill(c.explanation, width=width, initial_indent="  ", subsequent_indent="  ",
                         break_on_hyphens=False, break_long_words=False)  # URLs stay whole
    return f"{code} ({c.severity}): {c.title}\n  {code[:3]}xx: {group(code)}\n{body}"
