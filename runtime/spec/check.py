"""Shared by every section reader: the validation context (:class:`_Ctx`, which records every problem so that all
are reported together as :class:`ConfigErrors`), Automodel 0.7's defaults (``_d``), section and unknown-key checks,
and the value checkers (``_int``, ``_float``, ``_path``, ``_dtype``, ``_bool``, ``_finite``)."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any, Callable

from ...automodel.schema import MISSING, default
from ..config import parse_dtype
from ..errors import RunError


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
