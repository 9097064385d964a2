"""Every golden case converts to exactly its expected files (the same check as `make golden`)."""
import pytest

from nemo_migrate import golden

CASES = golden.cases()


def test_there_are_golden_cases():
    names = {c.name for c in CASES}
    assert "seed" in names and len(names) >= 6


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case):
    files = golden.render(case)
    exp = case / "expected"
    assert sorted(files) == sorted(p.name for p in exp.iterdir())
    for name, text in files.items():
        assert text == (exp / name).read_text(encoding="utf-8"), f"{case.name}/{name} drifted: run `make golden-update` if intended"
