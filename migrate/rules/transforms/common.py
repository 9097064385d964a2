"""Generic transforms many rows share: a knob at its NeMo default, or refused when set."""

from __future__ import annotations

from typing import Any

from ... import schema
from ..context import Ctx, Registry, Result

transform = Registry()


def _mine(ctx: Ctx) -> list[str]:
    return ctx.owned_by(ctx.rule.id) if ctx.rule else []


def _is_default(ctx: Ctx, path: str, value: Any) -> bool:
    parent_path, _, leaf = path.rpartition(".")
    parent = ctx.node(parent_path)
    if parent is not None:
        fs = schema.field_spec(parent, leaf)
        if fs is not None and not fs.required:
            return value == fs.default or (fs.default is None and value in (None, False, 0, [], {}, ""))
    return value in (None, False, 0, [], {}, "")


@transform
def nondefault_unsupported(ctx: Ctx) -> Result | None:
    odd = [(p, ctx.v(p)) for p in _mine(ctx) if not _is_default(ctx, p, ctx.v(p))]
    if odd:
        p, v = odd[0]
        return Result("unsupported", f"{p}={v!r}: {ctx.rule.reason}")
    return Result("dropped", "at its default, nothing to migrate")


@transform
def must_equal_one(ctx: Ctx) -> Result | None:
    for p in _mine(ctx):
        if ctx.v(p) not in (1, None):
            return Result("unsupported", f"{p}={ctx.v(p)}: NeMo's Megatron strategy does not use Lightning accumulation")
    return None
