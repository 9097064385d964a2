"""Large inputs (bench/limits.py builds them): a 10 MB YAML or a 10,000-line recipe.py converts or fails cleanly,
with a located diagnostic and never a traceback.  Their time (within 10 s) and memory are measured by
`python bench/limits.py`, not asserted here (no timed tests); the timeout below only guards against a hang."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import limits  # noqa: E402


@pytest.mark.parametrize("name", list(limits.CASES))
def test_large_input_converts_or_fails_cleanly(tmp_path, name):
    res = limits.run_case(name, tmp_path, timeout=600)
    assert res["exit"] in (0, 1), res
    assert not res["traceback"], res
    if res["exit"] == 1:
        assert res["first_error"] and ":" in res["first_error"] and "error[" in res["first_error"], res
