"""Loads the data in ``mappings/`` (the rule table, NeMo recipe knowledge, class signatures, Automodel defaults).

``mappings/`` holds data only.  This module finds it (source checkout or installed wheel), parses it once per
process and caches the parsed form in the user's cache directory (keyed by the files' content, each entry checked
against its digest) so that a cold CLI start does not pay for YAML parsing.
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


def _find(dirname: str) -> Path:
    for cand in (_HERE / "_data" / dirname, _HERE.parent / dirname):  # installed wheel, then the checkout
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"nemo-migrate data folder '{dirname}' not found next to {_HERE}")


MAPPINGS = _find("mappings")
TEMPLATES = _find("templates")


def _yaml_load(text: str) -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=False)
    return y.load(text)


def cache_dir() -> Path | None:
    base = os.environ.get("NEMO_MIGRATE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    path = Path(base) / "nemo-migrate" if base else Path.home() / ".cache" / "nemo-migrate"
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "templates").mkdir(exist_ok=True)
        return path
    except OSError:
        return None


@lru_cache(maxsize=None)
def load(relpath: str) -> Any:
    """Parse ``mappings/<relpath>`` (YAML), through a JSON cache keyed by the file's content.

    A cache entry is ``<sha256 of the JSON>\\n<JSON>``: one that does not match its digest (truncated, overwritten,
    written by something else) is ignored and rewritten, never trusted."""
    src = MAPPINGS / relpath
    raw = src.read_bytes()
    key = f"{relpath.replace('/', '__')}.{hashlib.sha256(raw).hexdigest()[:20]}.json"
    cache = cache_dir()
    if cache is not None:
        hit = _read_entry(cache / key)
        if hit is not None:
            return hit
    data = _yaml_load(raw.decode("utf-8"))
    if cache is not None:
        tmp = cache / (key + f".{os.getpid()}.tmp")
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


def classes() -> dict[str, Any]:
    return load("nemo2/classes.yaml")


def factories() -> dict[str, Any]:
    return load("nemo2/factories.yaml")


def recipes() -> dict[str, Any]:
    return load("nemo2/recipes.yaml")


def modules() -> dict[str, Any]:
    return load("modules.yaml")


def rules() -> list[dict[str, Any]]:
    return load("rules.yaml")["rules"]


def models() -> dict[str, Any]:
    return load("models.yaml")


def automodel_defaults() -> dict[str, Any]:
    return load("automodel/defaults.yaml")
