"""Compiler-style diagnostics: ``path:line:col: severity[CODE]: message`` plus a hint.

Every problem the compiler finds becomes a :class:`Diagnostic`.  Front ends and passes append to a
:class:`Diagnostics` sink instead of raising, so that all problems of a file are reported together.
:class:`MigrateError` is raised only to stop a pass once errors make going on pointless; the CLI turns it
into exit code 1 and prints every diagnostic collected so far.  No traceback ever reaches the user.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Iterable, Literal

from . import fsio

Severity = Literal["error", "warning", "note"]
_ORDER = {"error": 0, "warning": 1, "note": 2}


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    col: int | None = None
    key: str | None = None
    hint: str | None = None
    cell: int | None = None  # a notebook's cell (1-based over all cells); line is then within the cell

    def __post_init__(self) -> None:
        """Text from the job (a file name, a value) is shown escaped: it may hold a newline, a terminal escape or bytes
        that are not UTF-8, none of which may reach the terminal or the JSON output raw."""
        for name in ("file", "message", "key", "hint"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, fsio.shown(getattr(self, name)))

    def location(self, path: str | None = None) -> str:
        """``file[:cell N][:line[:col]]``; ``path`` shows the file under another name (the terminal shows it relative to
        the working directory, the report relative to the job)."""
        if not self.file:
            return ""
        loc = path or self.file
        if self.cell is not None:
            loc += f":cell {self.cell}"
        if self.line is not None:
            loc += f":{self.line}"
            if self.col is not None:
                loc += f":{self.col}"
        return loc

    def render(self, path: str | None = None) -> str:
        loc = self.location(path)
        head = f"{loc}: " if loc else ""
        key = f" [{self.key}]" if self.key else ""
        text = f"{head}{self.severity}[{self.code}]{key}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Diagnostics:
    """An ordered, de-duplicated collection of diagnostics."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, severity: Severity, code: str, message: str, **where) -> Diagnostic:
        d = Diagnostic(severity, code, message, **where)
        if d not in self.items:
            self.items.append(d)
        return d

    def error(self, code: str, message: str, **where) -> Diagnostic:
        return self.add("error", code, message, **where)

    def warning(self, code: str, message: str, **where) -> Diagnostic:
        return self.add("warning", code, message, **where)

    def note(self, code: str, message: str, **where) -> Diagnostic:
        return self.add("note", code, message, **where)

    def extend(self, other: Iterable[Diagnostic]) -> None:
        for d in other:
            if d not in self.items:
                self.items.append(d)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(
            self.items,
            key=lambda d: (d.file or "~", d.cell or 0, d.line or 0, d.col or 0, _ORDER[d.severity], d.code, d.message),
        )

    def render(self) -> str:
        return "\n".join(d.render() for d in self.sorted())

    def to_json(self) -> list[dict]:
        return [d.to_json() for d in self.sorted()]

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise MigrateError(self)


class MigrateError(Exception):
    """Stops the pipeline; carries every diagnostic collected so far (never shown as a traceback)."""

    def __init__(self, diags: Diagnostics | Diagnostic | str, code: str = "NM000"):
        if isinstance(diags, str):
            d = Diagnostics()
            d.error(code, diags)
            diags = d
        elif isinstance(diags, Diagnostic):
            d = Diagnostics()
            d.items.append(diags)
            diags = d
        self.diags = diags
        super().__init__(diags.render())


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str | None:
    """A ``did you mean 'x'?`` hint for a misspelt key, or None when nothing is close."""
    cands = sorted(set(candidates))
    close = difflib.get_close_matches(word, cands, n=n, cutoff=0.6)
    if not close:
        # try the last component of dotted keys
        leaf = word.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, cands, n=n, cutoff=0.6)
    if not close:
        return None
    quoted = " or ".join(f"'{c}'" for c in close)
    return f"did you mean {quoted}?"


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=str)
