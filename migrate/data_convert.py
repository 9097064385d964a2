"""``nemo-migrate convert-data``: NeMo chat JSONL -> the OpenAI ``messages`` JSONL Automodel's ChatDataset reads.

NeMo's chat rows (GPTSFTChatDataset, reference/nemo2-semantics.md §4.5) are ``{"system": ..., "mask": "User",
"conversations": [{"from": "User", "value": ...}, {"from": "Assistant", "value": ...}]}``.  Automodel 0.7 accepts
ShareGPT ``conversations`` only with lower-case roles (human/gpt/user/assistant...) and has no top-level
``system``, so such files fail there.  The converted row is ``{"messages": [{"role": "system", ...}, {"role":
"user", ...}, {"role": "assistant", ...}]}``: turns of the ``mask`` speaker (not trained in NeMo) become ``user``,
the others ``assistant`` (trained), so the same turns carry the loss.  Rows already in ``messages`` form pass
through.  Output is written atomically; an existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from . import fsio
from .diagnostics import Diagnostics, MigrateError


def convert_row(row: dict, lineno: int, display: str, diags: Diagnostics) -> dict | None:
    if isinstance(row.get("messages"), list):
        return {"messages": row["messages"], **({"tools": row["tools"]} if "tools" in row else {})}
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        diags.error("NM800", "a chat row needs 'conversations' (NeMo) or 'messages' (OpenAI)", file=display, line=lineno)
        return None
    mask = row.get("mask")
    speakers = [t.get("from") for t in conv if isinstance(t, dict)]
    if mask is None:
        mask = speakers[0] if speakers else None
    msgs = []
    if isinstance(row.get("system"), str) and row["system"]:
        msgs.append({"role": "system", "content": row["system"]})
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "value" not in t:
            diags.error("NM801", f"turn {i} has no 'value'", file=display, line=lineno)
            return None
        role = "user" if t.get("from") == mask else "assistant"
        msgs.append({"role": role, "content": str(t["value"])})
    if not any(m["role"] == "assistant" for m in msgs):
        diags.warning("NM802", "no turn would be trained (every turn is from the masked speaker)", file=display, line=lineno)
    return {"messages": msgs}


MAX_DEPTH = 200  # a chat row is a few levels deep; deeper JSON is refused before Python's recursion limit is
MAX_INT_DIGITS = 4000  # below Python's int/str conversion limit (4300 digits)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NumberError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _finite_float(text: str) -> float:
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):
        raise _NumberError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} overflows to {v}")
    return v


def _no_constant(text: str) -> None:
    raise _NumberError(f"{text} is not JSON (JSON has no NaN or Infinity)")


class _NumberError(ValueError):
    pass


def _too_deep(line: str) -> bool:
    depth = deepest = 0
    in_str = esc = False
    for c in line:
        if in_str:
            esc, in_str = (False, True) if esc else (c == "\\", c != '"')
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest > MAX_DEPTH


def _parse(line: str) -> object:
    if line.count("[") + line.count("{") > MAX_DEPTH and _too_deep(line):
        raise _NumberError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return json.loads(line, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)


def _check_dest(src: Path, dest: Path, force: bool, diags: Diagnostics) -> None:
    kind = fsio.not_a_file(dest)
    parent = next((p for p in dest.absolute().parents if fsio.not_a_file(p) != "missing"), None)
    pkind = (fsio.not_a_file(parent) or "a file") if parent is not None else "a directory"
    if pkind != "a directory":
        diags.error("NM923", f"cannot write {fsio.shown(dest)}: {fsio.shown(parent)} is {pkind}, not a directory",
                    hint="choose a destination in a directory")
    elif kind == "missing":
        pass
    elif kind is not None:
        diags.error("NM923", f"{fsio.shown(dest)} is {kind}, not a file: it is not replaced, even with --force",
                    hint="give the path of the JSONL file to write")
    elif not force:
        diags.error("NM803", f"{fsio.shown(dest)} exists", hint="pass --force to replace it")
    elif os.path.samefile(src, dest):
        diags.error("NM804", "the output would overwrite the input", hint="write the converted rows to another file")
    if diags.has_errors:
        raise MigrateError(diags)


def convert_file(src: Path, dest: Path | None, force: bool = False, stdout=None) -> tuple[int, Diagnostics]:
    """Convert ``src`` into ``dest``: every row or nothing (a temporary file next to ``dest``, renamed at the end and
    removed on every failure, interruption included).  ``dest`` None (``convert-data SRC -``): the rows go to
    ``stdout`` (default sys.stdout) once all of them converted."""
    diags = Diagnostics()
    display = fsio.shown(src)
    kind = fsio.not_a_file(src)
    if kind is not None:
        diags.error("NM001", f"{display} is {kind}, not a file nemo-migrate can read" if kind != "missing" else f"no such file: {display}")
        raise MigrateError(diags)
    if dest is not None:
        _check_dest(src, dest, force, diags)
    try:
        fh = os.fdopen(fsio.open_regular(src), "rb")
    except OSError as e:
        diags.error("NM100", f"cannot read {display}: {e.strerror or e}")
        raise MigrateError(diags) from None
    shown_dest = fsio.shown(dest) if dest is not None else "stdout"
    tmp: Path | None = None
    try:
        with fsio.interruptible(), fh:
            if dest is None:
                with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as out:
                    n = _convert_rows(fh, out, display, diags)
                    out.seek(0)
                    stream = stdout or sys.stdout
                    for chunk in iter(lambda: out.read(1 << 16), ""):
                        stream.write(chunk)
                    stream.flush()
                return n, diags
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
            except OSError as e:
                diags.error("NM923", f"cannot write into {fsio.shown(dest.parent)}: {e.strerror or e}",
                            hint="choose a destination in a directory you can write to")
                raise MigrateError(diags) from None
            tmp = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                n = _convert_rows(fh, out, display, diags)
                out.flush()
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), 0o644)
            os.replace(tmp, dest)
            tmp = None
    except fsio.Interrupted as e:
        diags.error("NM915", f"interrupted ({e}): {shown_dest} was not written")
        raise MigrateError(diags) from None
    except BrokenPipeError:
        diags.error("NM923", "stdout was closed before every row was written", hint="write the rows to a file: convert-data SRC DEST")
        raise MigrateError(diags) from None
    except OSError as e:
        diags.error("NM923", f"cannot write {shown_dest}: {e.strerror or e}; it was not written",
                    hint="free some space or fix the permissions, and run again")
        raise MigrateError(diags) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return n, diags


def _convert_rows(fh, out, display: str, diags: Diagnostics) -> int:
    """Every row of ``fh`` (bytes) into ``out`` (text); raises MigrateError after the last line if any row failed."""
    n = 0
    for lineno, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            diags.error("NM920", f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}", file=display, line=lineno,
                        col=e.start + 1, hint="JSONL is UTF-8: re-encode the file, e.g. iconv -f latin1 -t utf-8")
            continue
        if not line.strip():
            continue
        try:
            row = _parse(line)
        except _NumberError as e:
            diags.error("NM921", f"{e}: not a chat row nemo-migrate converts", file=display, line=lineno,
                        hint="fix or remove the line")
            continue
        except json.JSONDecodeError as e:
            diags.error("NM805", f"not JSON: {e.msg}", file=display, line=lineno, col=e.colno)
            continue
        except (ValueError, RecursionError) as e:
            diags.error("NM921", f"cannot read the JSON: {e}", file=display, line=lineno, hint="fix or remove the line")
            continue
        if not isinstance(row, dict):
            diags.error("NM805", "each line must be a JSON object", file=display, line=lineno)
            continue
        new = convert_row(row, lineno, display, diags)
        if new is not None and not diags.has_errors:
            text = json.dumps(new, ensure_ascii=False)
            if fsio.SURROGATE.search(text):
                diags.error("NM921", "a string holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode",
                            file=display, line=lineno, hint="fix or remove the line")
                continue
            out.write(text + "\n")
            n += 1
    if diags.has_errors:
        raise MigrateError(diags)
    return n
