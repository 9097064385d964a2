"""Python source as users have it: ``.py`` files (UTF-8, with or without a BOM, written for the NeMo container's
Python 3.12) and Jupyter notebooks (``.ipynb``: code cells in order, ``!`` lines and ``%%bash`` cells as shell
commands, ``%%writefile`` cells as files).  Nothing is executed: this module only turns them into text that
:mod:`ast` parses on the host's Python (3.10+), with a map back to the user's positions.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MAX_SOURCE_BYTES = 20_000_000


class SourceError(Exception):
    def __init__(self, message: str, line: int | None = None, cell: int | None = None, col: int | None = None):
        super().__init__(message)
        self.line, self.cell, self.col = line, cell, col


@dataclass
class Shell:
    """Shell text found in a notebook: a ``%%bash`` cell or a ``!command`` line."""

    cell: int
    line: int  # first line of the text within the cell
    text: str
    bang: bool = False  # a `!command` line: IPython expands {python expressions} and $names in it
    names: dict | None = None  # `!` lines: the notebook's plain values when the line runs (set by the interpreter)


@dataclass
class PySource:
    display: str
    text: str  # what ast parses (notebook magics replaced by `pass`, Python 3.12 f-strings rewritten)
    cells: list[tuple[int, int]] | None = None  # notebooks: line n of `text` -> (cell, line within the cell)
    shell: list[Shell] = field(default_factory=list)
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # %%writefile name -> (cell, text)
    is_notebook: bool = False

    def locate(self, line: int | None) -> tuple[int | None, int | None]:
        """(cell, line) of a line of ``text`` (cell None for plain files)."""
        if line is None or self.cells is None:
            return None, line
        if 1 <= line <= len(self.cells):
            return self.cells[line - 1]
        return None, line


def read_source(path: Path, display: str) -> PySource:
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise SourceError(f"file is {size:,} bytes; the limit is {MAX_SOURCE_BYTES:,}")
        raw = path.read_bytes()
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 BOM is valid Python
    except UnicodeDecodeError as e:
        raise SourceError(f"not UTF-8 text (byte {e.start})") from None
    if path.suffix == ".ipynb":
        return notebook_source(text, display)
    return PySource(display=display, text=text)


# ---------------------------------------------------------------------------------------------- notebooks

_SHELL_CELL = re.compile(r"^%%(bash|sh|script\s+(?:bash|sh))\b")
_WRITEFILE = re.compile(r"^%%writefile(?:\s+-a)?\s+(\S+)\s*$")
_PY_CELL_MAGICS = ("%%time", "%%timeit", "%%capture", "%%prun")


def notebook_source(text: str, display: str) -> PySource:
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise SourceError(f"not a Jupyter notebook (invalid JSON: {e})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        raise SourceError("not a Jupyter notebook (no 'cells' list)")
    out: list[str] = []
    cmap: list[tuple[int, int]] = []
    src = PySource(display=display, text="", cells=cmap, is_notebook=True)
    for ci, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        body = cell.get("source", "")
        if isinstance(body, list):
            body = "".join(str(x) for x in body)
        if not isinstance(body, str):
            continue
        lines = body.split("\n")
        first = lines[0].strip() if lines else ""
        m = _WRITEFILE.match(first)
        if m:
            src.files[m.group(1)] = (ci, "\n".join(lines[1:]))
            continue
        if _SHELL_CELL.match(first):
            src.shell.append(Shell(ci, 2, "\n".join(lines[1:])))
            continue
        start = 0
        if first.startswith("%%"):
            if not first.startswith(_PY_CELL_MAGICS):
                continue  # another cell magic (%%html, %%javascript...): not Python
            lines[0] = ""
        cont: Shell | None = None  # a `!command \` that goes on over the next lines
        for li, line in enumerate(lines[start:], start=1):
            stripped = line.lstrip()
            indent = line[: len(line) - len(stripped)]
            if cont is not None:
                cont.text += "\n" + line
                if not line.rstrip().endswith("\\"):
                    cont = None
                line = ""
            elif stripped.startswith("!"):
                src.shell.append(Shell(ci, li, stripped[1:], bang=True))
                if stripped.rstrip().endswith("\\"):
                    cont = src.shell[-1]
                line = indent + f"__nm_shell__({len(src.shell) - 1})"  # the interpreter notes the names IPython would expand
            elif stripped.startswith("%") or stripped.startswith("?") or (stripped.endswith("?") and re.match(r"^[\w.]+\?+$", stripped)):
                line = indent + "pass"
            out.append(line)
            cmap.append((ci, li))
    src.text = "\n".join(out) + "\n"
    return src


# ---------------------------------------------------------------------------------------------- parsing

def parse(src: PySource) -> ast.Module:
    """Parse with the host's ast; on Python < 3.12, f-strings that need PEP 701 are rewritten first."""
    try:
        return ast.parse(src.text, filename=src.display)
    except SyntaxError as first:
        if sys.version_info >= (3, 12):
            raise
        try:
            rewritten = rewrite_fstrings(src.text)
        except SourceError:
            raise first from None
        if rewritten == src.text:
            raise
        try:
            tree = ast.parse(rewritten, filename=src.display)
        except SyntaxError:
            raise first from None
        src.text = rewritten
        return tree


# A Python 3.12 f-string (PEP 701: the same quotes nested inside, backslashes and comments in fields) is rewritten
# into __nm_fstr__("literal", __nm_fv__((expr), "conversion", spec), ...), which the interpreter folds exactly as
# Python formats the f-string.  Line breaks are kept so that every later line keeps its number.

_PREFIX = re.compile(r"([rRbBuUfF]{0,2})$")


def rewrite_fstrings(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
            continue
        if c in "'\"":
            m = _PREFIX.search(text, max(0, i - 2), i)
            prefix = m.group(1) if m else ""
            if prefix and i - len(prefix) > 0 and (text[i - len(prefix) - 1].isalnum() or text[i - len(prefix) - 1] == "_"):
                prefix = ""
            if "f" in prefix.lower():
                del out[len(out) - len(prefix):]  # drop the prefix characters already copied
                end, call = _fstring(text, i, prefix)
                out.append(call)
                i = end
                continue
            end = _skip_string(text, i, prefix)
            out.append(text[i:end])
            i = end
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _quote_at(text: str, i: int) -> str:
    q = text[i]
    return q * 3 if text.startswith(q * 3, i) else q


def _skip_string(text: str, i: int, prefix: str) -> int:
    q = _quote_at(text, i)
    j = i + len(q)
    raw = "r" in prefix.lower()
    while j < len(text):
        if text[j] == "\\" and not raw:
            j += 2
            continue
        if text[j] == "\\" and raw:
            j += 2
            continue
        if text.startswith(q, j):
            return j + len(q)
        if len(q) == 1 and text[j] == "\n":
            raise SourceError("unterminated string")
        j += 1
    raise SourceError("unterminated string")


def _literal(chunk: str, prefix: str, q: str) -> str:
    """The Python value of a literal piece of an f-string, as a source literal."""
    if not chunk:
        return ""
    p = prefix.lower().replace("f", "")
    try:
        value = ast.literal_eval(f"{p}{q}{chunk}{q}")
    except (SyntaxError, ValueError) as e:
        raise SourceError(f"f-string literal: {e}") from None
    return repr(value)


def _fstring(text: str, i: int, prefix: str) -> tuple[int, str]:
    """Parse the f-string starting at the quote at ``i``; return (end index, replacement text)."""
    q = _quote_at(text, i)
    j = i + len(q)
    raw = "r" in prefix.lower()
    parts: list[str] = []
    chunk: list[str] = []
    start = i
    while True:
        if j >= len(text):
            raise SourceError("unterminated f-string")
        if text.startswith(q, j):
            j += len(q)
            break
        c = text[j]
        if c == "\\":
            chunk.append(text[j:j + 2])
            j += 2
            continue
        if c == "{" and text.startswith("{{", j):
            chunk.append("{{")
            j += 2
            continue
        if c == "}" and text.startswith("}}", j):
            chunk.append("}}")
            j += 2
            continue
        if c == "{":
            lit = "".join(chunk).replace("{{", "{").replace("}}", "}")
            if lit:
                parts.append(_literal(lit, prefix, q))
            chunk = []
            j, field_ = _field(text, j + 1, prefix, q)
            parts.append(field_)
            continue
        if len(q) == 1 and c == "\n":
            raise SourceError("unterminated f-string")
        chunk.append(c)
        j += 1
    lit = "".join(chunk).replace("{{", "{").replace("}}", "}")
    if lit:
        parts.append(_literal(lit, prefix, q))
    del raw
    call = "__nm_fstr__(" + ", ".join(parts) + ")"
    missing = text.count("\n", start, j) - call.count("\n")
    if missing > 0:
        call = call[:-1] + "\n" * missing + ")"
    return j, call


def _field(text: str, j: int, prefix: str, q: str) -> tuple[int, str]:
    """A replacement field after its ``{``: (index after its ``}``, ``__nm_fv__((expr), conv, spec)``)."""
    depth = 0
    expr: list[str] = []
    conv = ""
    while True:
        if j >= len(text):
            raise SourceError("unterminated f-string field")
        c = text[j]
        if c in "'\"":
            m = _PREFIX.search(text, max(0, j - 2), j)
            p = m.group(1) if m else ""
            if "f" in p.lower():
                del expr[len(expr) - len(p):]
                end, call = _fstring(text, j, p)
                expr.append(call)
            else:
                end = _skip_string(text, j, p)
                expr.append(text[j:end])
            j = end
            continue
        if c == "#":
            k = text.find("\n", j)
            j = len(text) if k < 0 else k
            continue
        if c in "([{":
            depth += 1
        elif c in ")]" or (c == "}" and depth > 0):
            depth -= 1
        elif depth == 0 and c == "}":
            return j + 1, _fv("".join(expr), conv, None)
        elif depth == 0 and c == "!" and not text.startswith("!=", j):
            conv = text[j + 1]
            j += 2
            continue
        elif depth == 0 and c == ":":
            j, spec = _spec(text, j + 1, prefix, q)
            return j, _fv("".join(expr), conv, spec)
        elif depth == 0 and c == "=" and text[j + 1:j + 2] in ("}", "!", ":") and (not expr or expr[-1] not in "=!<>"):
            raise SourceError("self-documenting f-string fields ({x=}) are not rewritten")
        expr.append(c)
        j += 1


def _spec(text: str, j: int, prefix: str, q: str) -> tuple[int, str]:
    parts: list[str] = []
    chunk: list[str] = []
    while True:
        if j >= len(text):
            raise SourceError("unterminated format spec")
        c = text[j]
        if c == "}":
            if chunk:
                parts.append(repr("".join(chunk)))
            return j + 1, "__nm_fstr__(" + ", ".join(parts) + ")"
        if c == "{":
            if chunk:
                parts.append(repr("".join(chunk)))
                chunk = []
            j, f = _field(text, j + 1, prefix, q)
            parts.append(f)
            continue
        chunk.append(c)
        j += 1


def _fv(expr: str, conv: str, spec: str | None) -> str:
    return f"__nm_fv__(({expr}), {conv!r}, {spec if spec is not None else repr('')})"
