"""User-facing errors of the runtime: one paragraph each (file, key, expected vs found, hint), never a traceback."""

from __future__ import annotations

from typing import Any

_MISSING = object()


class RunError(Exception):
    """A problem the user can fix (bad config, missing file, unsupported combination).

    ``str(err)`` is the paragraph shown to the user.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 expected: Any = _MISSING, found: Any = _MISSING, hint: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = ": ".join(x for x in (self.file, self.key) if x)
        parts = [f"{where}: {self.message}" if where else self.message]
        detail = []
        if self.expected is not _MISSING:
            detail.append(f"expected {self.expected}")
        if self.found is not _MISSING:
            detail.append(f"found {self.found!r}")
        if detail:
            parts[0] = parts[0].rstrip(".") + f" ({', '.join(detail)})."
        elif not parts[0].endswith("."):
            parts[0] += "."
        if self.hint:
            parts.append(f"Hint: {self.hint}")
        return " ".join(parts)


class CheckpointError(RunError):
    """A checkpoint that cannot be resumed from (partial, corrupt, incompatible)."""


def io_reason(exc: BaseException) -> tuple[str, int | None] | None:
    """(what failed, errno) when ``exc`` is a failed read/write (an OSError anywhere in its chain, a DCP
    CheckpointException holding one, or torch's / safetensors' own I/O messages), else None."""
    import re

    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, tuple):  # DCP's wrapped failure: (exception, traceback summary)
            todo.extend(y for y in x if isinstance(y, BaseException))
            continue
        if isinstance(x, OSError) and (x.errno is not None or x.strerror):
            where = f"{x.filename}: " if x.filename else ""
            return f"{where}{x.strerror or x}", x.errno
        text = str(x)
        m = re.search(r"(No space left on device|File too large|Disk quota exceeded|Read-only file system|"
                      r"Permission denied|file write failed|IoError\([^)]*\))", text)
        if m and not isinstance(x, OSError):
            return m.group(1), None
        todo.extend([x.__cause__, x.__context__])
        failures = getattr(x, "failures", None)
        if isinstance(failures, dict):
            todo.extend(failures.values())
    return None


def io_hint(errno_: int | None = None, text: str = "") -> str:
    import errno

    if errno_ in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission" in text or "Read-only" in text:
        return "write elsewhere (--out, checkpoint.checkpoint_dir) or fix the permissions"
    if errno_ in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, None):
        return ("free disk space, raise the quota or the file-size limit (`ulimit -f`), or write elsewhere (--out, "
                "checkpoint.checkpoint_dir)")
    return "check the path: a file where a directory is expected (or the reverse), or a name the file system refuses"


def io_error_message(e: OSError) -> str:
    """One paragraph for a failed read or write the user can act on (full disk, file-size limit, permissions)."""
    what = e.filename or "a file"
    why = e.strerror or str(e)
    return f"cannot write or read {what}: {why}. Hint: {io_hint(e.errno, why)}"
