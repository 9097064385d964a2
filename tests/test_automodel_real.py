"""Every emitted Automodel config must be accepted by the REAL nemo-automodel 0.7.0 package.

The checks themselves live in tests/automodel_check.py (Automodel's own config code, stage by
stage).  This module skips as a whole where nemo_automodel is not importable.  To run it:

    pip install -r requirements/automodel-check.txt
    pip install --no-deps -r requirements/automodel-check-nodeps.txt
    python -m pytest tests/test_automodel_real.py -q
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("nemo_automodel", reason="nemo-automodel is not installed (see requirements/automodel-check.txt)")

import yaml  # noqa: E402  (after the skip: only needed where the checks run)

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import automodel_check as amc  # noqa: E402

pytestmark = pytest.mark.automodel

ROOT = _TESTS.parent
GOLDEN_CONFIGS = sorted(ROOT.glob("golden/*/expected/*.yaml"))
GUIDE_DIR = ROOT / "tests" / "fixtures" / "guide"  # copy of ../shared/seed-example/automodel (the published guide's configs)
GUIDE_CONFIGS = [GUIDE_DIR / "config-fp16.yaml", GUIDE_DIR / "config-fp8.yaml"]

_REPORTS: dict[Path, amc.CheckReport] = {}


def report_for(path: Path) -> amc.CheckReport:
    """Run the checks once per file per session."""
    path = Path(path).resolve()
    if path not in _REPORTS:
        _REPORTS[path] = amc.run_checks(path)
    return _REPORTS[path]


def _fmt(problems: list[str]) -> str:
    return "\n".join(f"  - {p}" for p in problems) or "  (none)"


# --------------------------------------------------------------------------- our compiler's outputs


def test_golden_configs_exist():
    assert GOLDEN_CONFIGS, "no golden/*/expected/*.yaml found: nothing would be checked"
    assert (ROOT / "golden" / "seed" / "expected" / "config-fp16.yaml") in GOLDEN_CONFIGS


@pytest.mark.parametrize("path", GOLDEN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "golden")))
def test_golden_config_accepted_by_automodel(path):
    _accepted(path)


# --------------------------------------------------------------------------- the real-world corpus's outputs

REALWORLD = ROOT / "tests" / "realworld"


def _realworld_conversions() -> list[tuple[str, str]]:
    """(case, convert command) for every corpus case that must convert: its command, or the way out after a refusal."""
    out = []
    for case_dir in sorted(p for p in REALWORLD.iterdir() if (p / "case.yaml").is_file()):
        case = yaml.safe_load((case_dir / "case.yaml").read_text())
        cmd = case["command"] if case["expect"] == "ok" else (case.get("then") or {}).get("command")
        if cmd and cmd.startswith("convert "):
            out.append((case_dir.name, cmd))
    return out


@pytest.mark.parametrize("name,command", _realworld_conversions(), ids=[n for n, _ in _realworld_conversions()])
def test_realworld_config_accepted_by_automodel(name, command, tmp_path, monkeypatch):
    import shlex
    import shutil

    from typer.testing import CliRunner

    from nemo_migrate.cli import app

    work = tmp_path / "case"
    shutil.copytree(REALWORLD / name / "input", work / "input")
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, shlex.split(command)[0:] + ["-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output[-3000:]
    configs = sorted((tmp_path / "out").glob("*.yaml"))
    assert configs, "convert wrote no config"
    for path in configs:
        _accepted(path)


def _accepted(path):
    rep = report_for(path)
    assert rep.problems == [], f"Automodel {amc.AUTOMODEL_VERSION} rejects {path}:\n{_fmt(rep.problems)}"

    raw = yaml.safe_load(path.read_text())
    # The stages really ran (a stage that silently did nothing must not pass).
    assert rep.info.get("recipe"), rep.info
    assert "device_mesh" in rep.info, rep.info
    assert rep.info.get("loss_fn"), rep.info
    assert rep.info.get("dataset_config"), rep.info
    if raw.get("peft") is not None and not rep.info.get("lora_check_skipped"):
        assert rep.info["lora_applied"] > 0
        if raw["peft"].get("target_modules"):
            assert rep.info["lora_applied"] == rep.info["lora_expected"]
    if raw.get("lr_scheduler") is not None:
        lrs = rep.info["lr"]  # LR at step 0, 1 and the last step, from Automodel's scheduler
        assert 0 in lrs and (1 in lrs or rep.info["max_steps"] <= 1), lrs
        assert all(lr >= 0.0 for lr in lrs.values()), lrs
    if (raw.get("fp8") or {}).get("enabled") and raw.get("peft") is not None:
        assert rep.info["lora_modules_left_to_fp8"] == []


# --------------------------------------------------------------------------- negative control


@pytest.mark.skipif(
    not all(p.exists() for p in GUIDE_CONFIGS), reason=f"migration-guide YAMLs not found in {GUIDE_DIR}"
)
@pytest.mark.parametrize("path", GUIDE_CONFIGS, ids=lambda p: p.name)
def test_migration_guide_config_is_stale_for_automodel_07(path):
    problems = report_for(path).problems
    assert problems, f"{path} was expected to be rejected by Automodel 0.7"
    assert any(p.startswith("[peft]") and "match_all_linear" in p and "ValueError" in p for p in problems), _fmt(
        problems
    )
    assert any("distributed._target_" in p for p in problems), _fmt(problems)
    assert any("'rng'" in p for p in problems), _fmt(problems)
    assert any(p.startswith("[recipe]") for p in problems), _fmt(problems)


@pytest.mark.skipif(not GUIDE_CONFIGS[1].exists(), reason=f"migration-guide YAMLs not found in {GUIDE_DIR}")
def test_migration_guide_fp8_config_leaves_lora_to_float8(tmp_path):
    """Even with match_all_linear dropped, the guide's fp8 + LoRA config (filter_fqns: [lm_head])
    would let torchao swap every LoRA-adapted projection to Float8Linear."""
    cfg = yaml.safe_load(GUIDE_CONFIGS[1].read_text())
    del cfg["peft"]["match_all_linear"]
    path = tmp_path / "guide-fp8-no-match-all-linear.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rep = amc.run_checks(path)
    _assert_caught(rep.problems, "fp8", "LoRA-adapted", "model.layers.0.self_attn.q_proj")
    assert rep.info["lora_applied"] == 14 and len(rep.info["lora_modules_left_to_fp8"]) == 14


# --------------------------------------------------------------------------- the checker can fail

BASE_CONFIG: dict = {
    "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
    "seed": 1234,
    "dist_env": {"backend": "nccl", "timeout_minutes": 30},
    "step_scheduler": {
        "global_batch_size": 8,
        "local_batch_size": 1,
        "max_steps": 30,
        "num_epochs": None,
        "val_every_steps": 10,
        "ckpt_every_steps": 10,
    },
    "model": {
        "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": "meta-llama/Llama-3.1-8B",
        "dtype": "bfloat16",
    },
    "peft": {
        "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
        "target_modules": ["*.q_proj", "*.v_proj", "*.down_proj"],
        "dim": 8,
        "alpha": 16,
        "dropout": 0.1,
    },
    "distributed": {"strategy": "fsdp2", "dp_size": None, "tp_size": 2, "cp_size": 1, "pp_size": 1},
    "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
    "fp8": {"enabled": False, "recipe_name": "tensorwise", "filter_fqns": ["lm_head"]},
    "dataset": {
        "_target_": "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset."
        "ColumnMappedTextInstructionDataset",
        "path_or_dataset_id": "/nonexistent/train.jsonl",
        "column_mapping": {"context": "prompt", "answer": "completion"},
        "seq_length": 4096,
        "truncation": True,
        "tokenizer": {"pretrained_model_name_or_path": "meta-llama/Llama-3.1-8B", "add_eos_token": True},
    },
    "dataloader": {"shuffle": True},
    "validation_dataset": {
        "_target_": "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset."
        "ColumnMappedTextInstructionDataset",
        "path_or_dataset_id": "/nonexistent/val.jsonl",
        "column_mapping": {"context": "prompt", "answer": "completion"},
    },
    "optimizer": {
        "_target_": "torch.optim.AdamW",
        "lr": 1.0e-4,
        "betas": [0.9, 0.98],
        "eps": 1.0e-8,
        "weight_decay": 0.01,
    },
    "lr_scheduler": {"lr_decay_style": "cosine", "lr_warmup_steps": 5, "init_lr": 0.0, "min_lr": 0.0},
    "clip_grad_norm": {"max_norm": 1.0},
    "checkpoint": {"enabled": True, "checkpoint_dir": "/nonexistent/ckpt", "model_save_format": "safetensors"},
}


def _write(tmp_path: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _mutated(**sections) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    for dotted, value in sections.items():
        keys = dotted.split("__")
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return cfg


_DELETE = object()


def _assert_caught(problems: list[str], stage: str, *needles: str) -> None:
    hits = [p for p in problems if p.startswith(f"[{stage}]") and all(n in p for n in needles)]
    assert hits, f"expected a [{stage}] problem containing {needles}, got:\n{_fmt(problems)}"


def test_baseline_config_is_accepted(tmp_path):
    """The broken configs below differ from this one by one key, so each problem is caused by that key."""
    rep = amc.run_checks(_write(tmp_path, BASE_CONFIG))
    assert rep.problems == [], _fmt(rep.problems)
    assert rep.info["lora_applied"] == rep.info["lora_expected"] == 6  # 3 patterns x 2 layers
    assert rep.info["world_size"] == 2 and rep.info["dp_size"] == 1
    assert rep.info["lr"][0] == 0.0 and rep.info["lr"][1] == pytest.approx(2.0e-5)


def test_checker_catches_unknown_step_scheduler_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(step_scheduler__grad_acc_steps=4)))
    _assert_caught(problems, "typed", "step_scheduler", "TypeError", "grad_acc_steps")


def test_checker_catches_pattern_matching_nothing(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(peft__target_modules=["gate_proj"])))
    _assert_caught(problems, "peft", "'gate_proj'", "matches no module")
    _assert_caught(problems, "peft", "LoRA adapted no module")


def test_checker_catches_one_dead_pattern_among_good_ones(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(peft__target_modules=["*.q_proj", "*.linear_qkv"])))
    _assert_caught(problems, "peft", "'*.linear_qkv'", "matches no module")
    assert not any("'*.q_proj'" in p for p in problems), _fmt(problems)


def test_checker_catches_lora_left_to_fp8(tmp_path):
    cfg = _mutated(fp8={"enabled": True, "recipe_name": "tensorwise", "filter_fqns": ["lm_head"]})
    rep = amc.run_checks(_write(tmp_path, cfg))
    _assert_caught(rep.problems, "fp8", "LoRA-adapted", "model.layers.0.self_attn.q_proj")
    assert len(rep.info["lora_modules_left_to_fp8"]) == 6


def test_checker_accepts_lora_filtered_from_fp8(tmp_path):
    cfg = _mutated(
        fp8={"enabled": True, "recipe_name": "tensorwise", "filter_fqns": ["lm_head", "q_proj", "v_proj", "down_proj"]}
    )
    rep = amc.run_checks(_write(tmp_path, cfg))
    assert rep.problems == [], _fmt(rep.problems)
    assert rep.info["lora_modules_left_to_fp8"] == []


def test_checker_catches_match_all_linear_with_target_modules(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(peft__match_all_linear=True)))
    _assert_caught(problems, "peft", "ValueError", "match_all_linear")


def test_checker_catches_unknown_peft_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(peft__lora_alpha=16)))
    _assert_caught(problems, "peft", "TypeError", "lora_alpha")


def test_checker_catches_warmup_not_below_decay(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(lr_scheduler__lr_warmup_steps=50)))
    _assert_caught(
        problems, "lr_scheduler", "LRSchedulerConfig.build", "AssertionError", "lr_warmup_steps < self.lr_decay_steps"
    )


def test_checker_catches_init_lr_above_max_lr(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(lr_scheduler__init_lr=1.0)))
    _assert_caught(problems, "lr_scheduler", "AssertionError", "init_lr <= self.max_lr")


def test_checker_catches_unknown_lr_scheduler_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(lr_scheduler__warmup_steps=5)))
    _assert_caught(problems, "typed", "lr_scheduler", "warmup_steps")


def test_checker_catches_bad_grad_accumulation(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(step_scheduler__local_batch_size=3)))
    _assert_caught(problems, "lr_scheduler", "StepSchedulerConfig.build", "global_batch_size (8) must be divisible")


def test_checker_catches_unknown_distributed_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(distributed__world_size=8)))
    _assert_caught(problems, "distributed", "world_size")


def test_checker_catches_pp_without_pipeline_block(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(distributed__pp_size=2)))
    _assert_caught(problems, "distributed", "ValueError", "pipeline")


def test_checker_catches_bad_mesh(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(distributed__dp_size=4, distributed__dp_replicate_size=3)))
    _assert_caught(problems, "distributed", "create_distributed_setup_from_config", "dp_replicate_size")


def test_checker_finds_a_valid_dp_when_dp_size_is_null(tmp_path):
    # ep_size=4 with tp=1 needs dp*cp*tp divisible by 4: dp=1..3 fail in Automodel's mesh code, dp=4 works.
    rep = amc.run_checks(_write(tmp_path, _mutated(distributed__tp_size=1, distributed__ep_size=4)))
    assert rep.problems == [], _fmt(rep.problems)
    assert rep.info["world_size"] == 4 and rep.info["dp_size"] == 4 and rep.info["grad_acc_steps"] == 2


def test_checker_catches_legacy_distributed_target(tmp_path):
    cfg = _mutated(distributed___target_="nemo_automodel.components.distributed.fsdp2.FSDP2Manager")
    problems = amc.check_config(_write(tmp_path, cfg))
    _assert_caught(problems, "ignored", "distributed._target_")


def test_checker_catches_unknown_dataset_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(dataset__answer_only_loss=True)))
    _assert_caught(problems, "typed", "dataset", "answer_only_loss")


def test_checker_catches_unknown_dataloader_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(dataloader__micro_batch_size=2)))
    _assert_caught(problems, "typed", "dataloader", "micro_batch_size")


def test_checker_catches_unknown_checkpoint_key(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(checkpoint__save_top_k=3)))
    _assert_caught(problems, "typed", "checkpoint", "save_top_k")


def test_checker_catches_bad_optimizer_kwarg(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(optimizer__momentum=0.9)))
    _assert_caught(problems, "lr_scheduler", "optimizer.build", "momentum")


def test_checker_catches_bad_dtype(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(model__dtype="bf16-mixed")))
    _assert_caught(problems, "typed", "model", "bf16-mixed")


def test_checker_catches_unresolvable_target(tmp_path):
    problems = amc.check_config(
        _write(tmp_path, _mutated(loss_fn___target_="nemo_automodel.components.loss.NoSuchLoss"))
    )
    _assert_caught(problems, "load")


def test_checker_catches_unknown_recipe(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(recipe="TrainFinetuneRecipeForNothing")))
    _assert_caught(problems, "recipe", "Unknown recipe class")


def test_checker_catches_missing_recipe(tmp_path):
    problems = amc.check_config(_write(tmp_path, _mutated(recipe=_DELETE)))
    _assert_caught(problems, "recipe", "no top-level `recipe:`")


def test_checker_catches_ignored_top_level_key(tmp_path):
    cfg = _mutated(rng={"_target_": "nemo_automodel.components.training.rng.StatefulRNG", "seed": 1, "ranked": True})
    problems = amc.check_config(_write(tmp_path, cfg))
    _assert_caught(problems, "ignored", "'rng'")


def test_checker_never_raises(tmp_path):
    missing = amc.check_config(tmp_path / "does-not-exist.yaml")
    assert missing and missing[0].startswith("[load]"), missing
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("step_scheduler: [unclosed\n")
    assert amc.check_config(garbage)
    not_a_mapping = _write(tmp_path, {"distributed": [1, 2]}, "list.yaml")
    problems = amc.check_config(not_a_mapping)
    assert problems
    for p in problems:
        assert re.match(r"^\[[a-z_]+\] ", p), p


def test_expected_lora_count_definition():
    model = amc.build_tiny_model("meta-llama/Llama-3.1-8B")
    assert amc.expected_lora_count(model, ["*.q_proj", "*.k_proj"]) == 4
    assert amc.expected_lora_count(model, ["gate_proj"]) == 2  # leaf name matches; Automodel's matcher does not
    phi = amc.build_tiny_model("microsoft/Phi-3-mini-4k-instruct")
    assert amc.expected_lora_count(phi, ["*.qkv_proj", "*.gate_up_proj"]) == 4


def test_checker_leaves_no_global_state(tmp_path):
    import signal

    import torch.distributed as dist

    before = signal.getsignal(signal.SIGTERM)
    assert amc.check_config(_write(tmp_path, BASE_CONFIG)) == []
    assert not dist.is_initialized()  # the fake process group is torn down
    assert signal.getsignal(signal.SIGTERM) is before  # StepScheduler's SIGTERM handler is released
