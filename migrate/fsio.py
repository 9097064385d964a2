"""Files as users point us at them: refuse what is not a regular file before opening it (a FIFO or /dev/zero would
hang a read, a directory or a symlink loop would crash it), and turn SIGTERM/SIGHUP into an exception while a write
is under way so that its temporary files are removed on every exit path.  Shared by convert, diff and convert-data;
imports nothing heavy (convert-data starts fast)."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def not_a_file(p: Path) -> str | None:
    """What a path is when it is not a regular file that can be read ('a directory', 'a FIFO (named pipe)'...)."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "a broken symbolic link" if p.is_symlink() else "missing"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if e.errno == errno.ENOTDIR:  # a parent is a file
            return "missing"
        return f"unreadable ({e.strerror or e})"
    except RuntimeError:  # pathlib on Python < 3.13 reports some loops this way
        return "a symbolic link loop"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe)"
    if not stat.S_ISREG(st.st_mode):
        return "a device or socket"
    return None


class NotAFile(OSError):
    pass


def open_regular(p: Path) -> int:
    """A read-only descriptor of ``p``, refused (NotAFile) unless it is a regular file.  Opened without blocking, so
    that a path swapped for a FIFO after a check cannot hang the open."""
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            raise NotAFile(errno.EINVAL, f"{kind}, not a regular file", str(p))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_bytes(p: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (NotAFile otherwise); with ``limit``, at most that many."""
    fd = open_regular(p)
    with os.fdopen(fd, "rb") as fh:
        return fh.read() if limit is None else fh.read(limit)


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # what a terminal, a shell line or a comment cannot show as is
SURROGATE = re.compile(r"[\ud800-\udfff]")  # a byte of a file name that is not UTF-8 (os.fsdecode's surrogateescape)


def odd_text(s: str) -> str | None:
    """Why ``s`` cannot be shown on one line as is (a control character, bytes that are not UTF-8), or None."""
    if CONTROL.search(s):
        return "a control character (newline, tab, escape...)"
    if SURROGATE.search(s):
        return "bytes that are not UTF-8"
    return None


def shown(p: Path | str) -> str:
    """A path for a message: control characters and undecodable bytes escaped (never a raw newline or escape)."""
    s = str(p)
    return s if odd_text(s) is None else "".join(ascii(c)[1:-1] if CONTROL.match(c) or SURROGATE.match(c) else c for c in s)


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived while a write was under way (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` (so ``finally`` clauses run and temporary
    files go); the previous handlers are restored after it.  Only in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM/SIGHUP are only recorded in the yielded list (a commit that must finish: a
    few renames); the caller decides what to do with them afterwards."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    sigs = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in sigs}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
