import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = ROOT.parent / "shared"
SEED = ROOT / "golden" / "seed" / "input"  # a copy of ../shared/seed-example/nemo2 (the user's job)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NEMO_MIGRATE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
