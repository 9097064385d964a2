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


def pytest_terminal_summary(terminalreporter):
    """How many inputs the fuzz targets tried (tests/test_fuzz.py); written to $FUZZ_RECORD as JSON when set."""
    try:
        import fuzz_stats
    except ImportError:
        return
    c = fuzz_stats.COUNT
    if not c["inputs"]:
        return
    terminalreporter.write_line(f"fuzz: {c['inputs']} inputs tried: {c['converted']} converted, {c['rejected']} rejected with "
                                "diagnostics, "
                                f"{c['crashed']} other exceptions (each fails the run; hypothesis counts its shrinking attempts too)")
    record = os.environ.get("FUZZ_RECORD")
    if record:
        import json
        import platform

        Path(record).write_text(json.dumps({"inputs": c["inputs"], "converted": c["converted"], "rejected": c["rejected"], "crashed": c["crashed"],
                                            "examples_per_target": int(os.environ.get("FUZZ_EXAMPLES", "150")),
                                            "python": platform.python_version(), "command": "make fuzz"}, indent=2) + "\n")
