"""Reads the data in ``mappings/`` (YAML), for this package (``mappings/automodel/``) and the compiler above it (torch-free).

Found next to the package: ``nemo_migrate/_data/mappings`` in an installed wheel, ``mappings/`` in the checkout.
Each file is parsed once per process, through a JSON cache keyed by the file's content (a cold CLI start does not
pay for YAML parsing); an entry that does not match its digest is ignored and rewritten, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _mappings() -> Path:
    for cand in (_HERE.parent / "_data" / "mappings", _HERE.parent / "mappings"):  # installed wheel, then checkout
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"nemo-migrate data folder 'mappings' not found next to {_HERE}")


MAPPINGS = _mappings()


def cache_dir() -> Path | None:
    base = os.environ.get("NEMO_MIGRATE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    path = Path(base) / "nemo-migrate" if base else Path.home() / ".cache" / "nemo-migrate"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        return None


@lru_cache(maxsize=None)
def load(relpath: str) -> Any:
    """``mappings/<relpath>`` (YAML) as plain data."""
    raw = (MAPPINGS / relpath).read_bytes()
    key = f"{relpath.replace('/', '__')}.{hashlib.sha256(raw).hexdigest()[:20]}.json"
    cache = cache_dir()
    hit = _read_entry(cache / key) if cache is not None else None
    if hit is not None:
        return hit
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=False).load(raw.decode("utf-8"))
    if cache is not None:
        tmp = cache / f"{key}.{os.getpid()}.tmp"
        try:
            text = json.dumps(data)
            tmp.write_text(hashlib.sha256(text.encode()).hexdigest() + "\n" + text, encoding="utf-8")
            os.replace(tmp, cache / key)
        except (OSError, TypeError, ValueError):
            with contextlib.suppress(OSError):
                tmp.unlink()
    return data


def _read_entry(path: Path) -> Any:
    """A cache entry's data, or None when it is missing, not a regular file, or does not match its digest."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            blob = fh.read(64 << 20)
        digest, _, text = blob.partition(b"\n")
        if hashlib.sha256(text).hexdigest().encode() != digest:
            return None
        return json.loads(text)
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
