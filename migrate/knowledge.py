"""Loads the data in ``mappings/`` (the rule table, NeMo recipe knowledge, class signatures, Automodel defaults).

``mappings/`` holds data only.  This module finds it (source checkout or installed wheel), parses it once per
process and caches the parsed form next to the YAML (keyed by the files' size and mtime) so that a cold CLI
start does not pay for YAML parsing.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _find(dirname: str) -> Path:
    for cand in (_HERE.parent / dirname, _HERE / "_data" / dirname):
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
    """Parse ``mappings/<relpath>`` (YAML), through a JSON cache keyed by the file's size and mtime."""
    src = MAPPINGS / relpath
    st = src.stat()
    key = f"{relpath.replace('/', '__')}.{st.st_size}.{st.st_mtime_ns}.json"
    cache = cache_dir()
    if cache is not None:
        hit = cache / key
        if hit.is_file():
            try:
                return json.loads(hit.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
    data = _yaml_load(src.read_text(encoding="utf-8"))
    if cache is not None:
        try:
            tmp = cache / (key + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, cache / key)
        except (OSError, TypeError, ValueError):
            pass
    return data


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
