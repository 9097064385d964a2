"""A restricted evaluator for Python expressions, used instead of ``eval``: nothing is ever executed.

It folds literals, names bound to known values, arithmetic, comparisons, boolean logic and conditional
expressions.  Anything else raises :class:`NotStatic` with the node, so callers can report "not understood"
at the right line.
"""

from __future__ import annotations

import ast
import operator
from typing import Any, Callable, Mapping


class NotStatic(Exception):
    def __init__(self, node: ast.AST, why: str):
        self.node = node
        self.why = why
        super().__init__(why)


_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_MAX_POW = 64
_MAX_LEN = 10_000_000


def _guard(value: Any, node: ast.AST) -> Any:
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > _MAX_LEN:
        raise NotStatic(node, "value too large")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4096:
        raise NotStatic(node, "number too large")
    return value


def evaluate(node: ast.AST, names: Mapping[str, Any] | Callable[[str, ast.AST], Any] | None = None) -> Any:
    """Fold ``node`` to a Python value or raise NotStatic."""

    def lookup(name: str, n: ast.AST) -> Any:
        if callable(names):
            return names(name, n)
        if names is not None and name in names:
            return names[name]
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        raise NotStatic(n, f"name '{name}' is not known statically")

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name):
            return lookup(n.id, n)
        if isinstance(n, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in n.elts]
            return vals if isinstance(n, ast.List) else tuple(vals)
        if isinstance(n, ast.Dict):
            if any(k is None for k in n.keys):
                raise NotStatic(n, "dict unpacking (**) is not static")
            return {ev(k): ev(v) for k, v in zip(n.keys, n.values)}
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand)
            if isinstance(n.op, ast.Not):
                return not v
            if isinstance(n.op, ast.USub):
                return -v
            if isinstance(n.op, ast.UAdd):
                return +v
            raise NotStatic(n, "unsupported unary operator")
        if isinstance(n, ast.BinOp):
            op = _BIN.get(type(n.op))
            if op is None:
                raise NotStatic(n, "unsupported operator")
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and isinstance(b, (int, float)) and abs(b) > _MAX_POW:
                raise NotStatic(n, "exponent too large")
            if isinstance(n.op, ast.Mult) and isinstance(b, int) and isinstance(a, (str, list, tuple)):
                if len(a) * max(b, 0) > _MAX_LEN:
                    raise NotStatic(n, "value too large")
            if isinstance(n.op, ast.Mult) and isinstance(a, int) and isinstance(b, (str, list, tuple)):
                if len(b) * max(a, 0) > _MAX_LEN:
                    raise NotStatic(n, "value too large")
            try:
                return _guard(op(a, b), n)
            except NotStatic:
                raise
            except Exception as e:  # noqa: BLE001 - a user expression that would fail at run time too
                raise NotStatic(n, f"cannot fold: {type(e).__name__}: {e}") from None
        if isinstance(n, ast.BoolOp):
            if isinstance(n.op, ast.And):
                v: Any = True
                for e in n.values:
                    v = ev(e)
                    if not v:
                        return v
                return v
            v = False
            for e in n.values:
                v = ev(e)
                if v:
                    return v
            return v
        if isinstance(n, ast.Compare):
            left = ev(n.left)
            for op, comp in zip(n.ops, n.comparators):
                right = ev(comp)
                fn = _CMP.get(type(op))
                if fn is None:
                    raise NotStatic(n, "unsupported comparison")
                try:
                    ok = fn(left, right)
                except Exception as e:  # noqa: BLE001
                    raise NotStatic(n, f"cannot compare: {e}") from None
                if not ok:
                    return False
                left = right
            return True
        if isinstance(n, ast.IfExp):
            return ev(n.body) if ev(n.test) else ev(n.orelse)
        if isinstance(n, ast.JoinedStr):
            parts = []
            for v in n.values:
                if isinstance(v, ast.Constant):
                    parts.append(str(v.value))
                elif isinstance(v, ast.FormattedValue) and v.format_spec is None and v.conversion == -1:
                    parts.append(str(ev(v.value)))
                else:
                    raise NotStatic(v, "formatted value with a spec is not folded")
            return "".join(parts)
        raise NotStatic(n, f"{type(n).__name__} is not a static value")

    return ev(node)


def evaluate_source(expr: str, names: Mapping[str, Any] | None = None) -> Any:
    """Evaluate a small expression given as text (used by mappings/ 'derive' entries)."""
    tree = ast.parse(expr, mode="eval")
    return evaluate(tree.body, names)
