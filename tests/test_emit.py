"""The YAML writer: what it writes reads back as exactly the target values, in PyYAML (YAML 1.1, what Automodel's
loader uses) and in ruamel.yaml (YAML 1.2)."""
import math

import pytest
import yaml as pyyaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from nemo_migrate import emit, golden
from nemo_migrate.ir import Provenance, TargetValue

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["yes", "no", "on", "off", "~", "null", "1e-4", "0x10", "010", "1:30", "2024-01-01", "*.q_proj", "$HOME",
                     "a: b", "- x", "#c", "'q'", '"dq"', "tab\tx", "new\nline", "[1]", "{a: 1}", "@x", "`x`", "%x", "!x", "|", ">"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=5), st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), scalars, max_size=3))


def _same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


def _render(v):
    tv = TargetValue(value=v, rule="T001", status="exact", provs=[Provenance(kind="cli", detail="x=1")])
    return emit.render_config({"sect.key": tv, "sect.other": TargetValue(value=1, rule="T002", status="approximate")}, ["header"])


@settings(max_examples=400, deadline=None)
@given(values)
def test_round_trip_pyyaml_and_ruamel(v):
    text = _render(v)
    a = pyyaml.safe_load(text)["sect"]
    b = YAML(typ="safe", pure=True).load(text)["sect"]
    assert _same(a["key"], v), (text, a["key"])
    assert _same(b["key"], v), (text, b["key"])
    assert a["other"] == 1 and b["other"] == 1


CONVERT_CASES = [c for c in golden.cases() if not (c / "diff").exists()]


@pytest.mark.parametrize("case", CONVERT_CASES, ids=[c.name for c in CONVERT_CASES])
def test_golden_outputs_read_back_as_their_targets(case):
    conv = golden.convert(golden.options_for(case))
    for v in conv.variants:
        data = pyyaml.safe_load(v.text)
        for path, tv in v.targets.items():
            cur = data
            for p in path.split("."):
                cur = cur[p]
            assert _same(cur, tv.value), (path, cur, tv.value)
