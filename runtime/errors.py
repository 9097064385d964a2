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
