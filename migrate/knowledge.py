"""Loads the data in ``mappings/`` (the rule table, NeMo recipe knowledge, class signatures, Automodel defaults).

``mappings/`` holds data only.  This module finds it (source checkout or installed wheel), parses it once per
process and caches the parsed form in the user's cache directory (keyed by the files' content, each entry checked
against its digest) so that a cold CLI start does not pay for YAML parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .automodel import _data

_HERE = Path(__file__).resolve().parent


def _find(dirname: str) -> Path:
    for cand in (_HERE / "_data" / dirname, _HERE.parent / dirname):  # installed wheel, then the checkout
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"nemo-migrate data folder '{dirname}' not found next to {_HERE}")


MAPPINGS = _data.MAPPINGS
TEMPLATES = _find("templates")


def cache_dir() -> Path | None:
    """The user's cache folder (with its ``templates/`` subfolder for compiled templates), or None if not writable."""
    path = _data.cache_dir()
    if path is not None:
        try:
            (path / "templates").mkdir(exist_ok=True)
        except OSError:
            return None
    return path


def load(relpath: str) -> Any:
    """``mappings/<relpath>`` (YAML) as plain data, parsed once per process through the content-keyed JSON cache of
    :mod:`nemo_migrate.automodel._data` (one loader for the whole package)."""
    return _data.load(relpath)


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
