"""YAML loading and --set overrides follow Automodel 0.7's rules (translate_value, env interpolation, set_by_dotted)."""

import pytest

from nemo_migrate.automodel.values import translate_value
from nemo_migrate.runtime.config import apply_override, effective_config, load_yaml, parse_dtype
from nemo_migrate.runtime.errors import RunError


def test_translate_value():
    assert translate_value("none") is None and translate_value("None") is None
    assert translate_value("true") is True and translate_value("False") is False
    assert translate_value("10") == 10 and translate_value("1e-8") == 1e-8
    assert translate_value("[0.9, 0.999]") == [0.9, 0.999]
    assert translate_value("/data/t.jsonl") == "/data/t.jsonl"
    assert translate_value("*_proj") == "*_proj"
    assert translate_value(3) == 3


def test_yaml_scalars_env_and_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/mnt/d")
    monkeypatch.delenv("NOT_SET_VAR", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("""
optimizer: {_target_: torch.optim.AdamW, eps: 1e-8, lr: '3e-4'}
distributed: {dp_size: none, tp_size: '2'}
dataset: {path_or_dataset_id: '${DATA_ROOT}/train.jsonl', other: '${NOT_SET_VAR,/fallback}', x: '${oc.env:DATA_ROOT}'}
list: ['1', 'true', abc]
""")
    cfg = load_yaml(p)
    assert cfg["optimizer"]["eps"] == 1e-8 and cfg["optimizer"]["lr"] == 3e-4  # PyYAML keeps 1e-8 a str; translated
    assert cfg["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert cfg["distributed"]["dp_size"] is None and cfg["distributed"]["tp_size"] == 2
    assert cfg["dataset"]["path_or_dataset_id"] == "/mnt/d/train.jsonl"
    assert cfg["dataset"]["other"] == "/fallback" and cfg["dataset"]["x"] == "/mnt/d"
    assert cfg["list"] == [1, True, "abc"]


def test_missing_env_var_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_VAR", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("dataset: {path_or_dataset_id: '${NOPE_VAR}/x'}\n")
    with pytest.raises(RunError, match="NOPE_VAR"):
        load_yaml(p)


def test_set_by_dotted_creates_nodes_and_translates(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("step_scheduler: {max_steps: 10}\nmodel: 5\n")
    cfg = effective_config(p, ["step_scheduler.max_steps=20", "peft.dim=16", "model.dtype=bf16",
                               "peft.target_modules=['*.q_proj']", "distributed.dp_size=none"], max_steps=None)
    assert cfg["step_scheduler"]["max_steps"] == 20
    assert cfg["peft"] == {"dim": 16, "target_modules": ["*.q_proj"]}
    assert cfg["model"] == {"dtype": "bf16"}  # a non-mapping in the way is replaced
    assert cfg["distributed"]["dp_size"] is None
    assert effective_config(p, [], max_steps=7)["step_scheduler"]["max_steps"] == 7
    with pytest.raises(RunError, match="section.key=value"):
        apply_override({}, "no-equals-sign")


@pytest.mark.parametrize("val,ok", [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("torch.float32", "float32"),
                                    ("FLOAT", "float32"), ("half", "float16")])
def test_dtype_table(val, ok):
    assert parse_dtype(val, file="f", key="k") == ok


@pytest.mark.parametrize("val", ["fp32", "fp16", "bf16-mixed", "int8x"])
def test_dtype_rejects_what_0_7_rejects(val):
    with pytest.raises(RunError) as e:
        parse_dtype(val, file="f.yaml", key="model.dtype")
    assert "model.dtype" in str(e.value) and repr(val) in str(e.value)
