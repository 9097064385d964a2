"""The verify package's parts that need no training: the typed report (verify-report.json keeps its layout), the
reference leg's NeMo defaults (from NeMo's class tables, not literals), NeMo's LR without a scheduler, and removing an
approximation from the migrated leg (the keys that express it taken from the reference leg)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_migrate import schema
from nemo_migrate.verify import APPROXIMATIONS, VerifyReport, reference_config
from nemo_migrate.verify.legs import without
from nemo_migrate.verify.reference import nemo_lr, nemo_lr_values, sft_settings
from nemo_migrate.verify.report import AgainstAutomodel, AutomodelSetup, Checks, LRCheck, TokenizationParity, VariantResult

ROOT = Path(__file__).resolve().parent.parent
RECORDED = sorted((ROOT / "bench" / "verify").glob("*/*/verify-report.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_recorded_reports_read_back_unchanged(path):
    """Every report verify wrote on GPUs reads into the typed report and writes out as the same JSON (keys, values;
    also the key order, except in a failed Automodel leg's record, whose keys move after `pairs`)."""
    raw = json.loads(path.read_text())
    back = VerifyReport.model_validate(raw).to_json()
    assert back == raw
    failed_am = any((v.get("against_automodel") or {}).get("verdict") == "failed" for v in raw["variants"])
    if not failed_am:
        assert json.dumps(back) == json.dumps(raw)


def test_recorded_reports_exist():
    assert len(RECORDED) >= 4


def test_keys_only_some_reports_have_are_written_only_when_set():
    parity = TokenizationParity(same=True, samples=[])
    lr = LRCheck(migrated=[1e-4], nemo=[1e-4], max_rel_diff=0.0, worst_step=0)
    common = dict(variant="fp16", config="config-fp16.yaml", verdict="fail", exact_rows_envelope="beyond", notes=[],
                  admitted_approximations={}, unflagged_differences=[], comparisons={}, attribution=[], legs={}, plot=None)
    did_not_run = VariantResult(**common, migrated_vs_reference="the migrated config does not run", rejected="leg failed",
                                checks=Checks(tokenization=parity, lr=lr, trainable_parameters={})).to_json()
    assert did_not_run["rejected"] == "leg failed" and "against_automodel" not in did_not_run
    assert list(did_not_run["checks"]) == ["tokenization", "lr", "trainable_parameters"]
    assert list(did_not_run["checks"]["tokenization"]) == ["same", "samples"]
    ran = VariantResult(**common, migrated_vs_reference="standard", against_automodel=None,
                        checks=Checks(tokenization=TokenizationParity(same=False, error="ValueError: x", samples=[]), lr=lr,
                                      trainable_parameters={"reference": 3}, tokens_per_step={}, label_tokens_per_step={},
                                      micro_batches_per_step={})).to_json()
    assert "rejected" not in ran and ran["against_automodel"] is None  # null without --against, as before
    assert list(ran["checks"]["tokenization"]) == ["same", "error", "samples"]
    failed = AgainstAutomodel(verdict="failed", findings=["x"], error="x", pairs={}).to_json()
    assert list(failed) == ["verdict", "findings", "error", "pairs"]
    stopped = AgainstAutomodel(verdict="failed", findings=[], error="x", automodel_output="o.txt", automodel_setup=AutomodelSetup(),
                               automodel_adapters=None, pairs={}).to_json()
    assert stopped["automodel_setup"] == {} and stopped["automodel_adapters"] is None and "automodel_trained" not in stopped
    with pytest.raises(ValueError):
        VerifyReport.model_validate({**json.loads(RECORDED[0].read_text()), "verdcit": "pass"})  # a misspelt key is refused


# ---------------------------------------------------------------------------------------------- the reference leg

class _Node:
    def __init__(self, cls: str):
        self.cls = cls


class _Job:
    """The part of resolve.Job the reference leg reads: ``value(path)`` (None where the job holds None) and ``get``."""

    def __init__(self, values: dict, nodes: dict | None = None):
        self.values, self.nodes = values, nodes or {}

    def value(self, path, fallback=None):
        return self.values.get(path, fallback)

    def get(self, path):
        return self.nodes.get(path)


BASE = {"data.global_batch_size": 8, "data.micro_batch_size": 1, "trainer.max_steps": 10, "optim.config.lr": 1e-4}
MIGRATED = {"model": {"pretrained_model_name_or_path": "m"}, "seed": 7}
ENV = {"distributed": {"tp_size": 1}, "dataset": {"tokenizer": {"pretrained_model_name_or_path": "t"}}}


def test_nemo_defaults_come_from_nemos_class_tables():
    """Where the job holds None, the reference uses NeMo's class default (classes.yaml), e.g. Megatron's
    OptimizerConfig.weight_decay 0.01, not a number written in verify (issue 16, item 2)."""
    cfg, _ = reference_config(_Job(BASE), MIGRATED, ENV, [1e-4], None, "llama")
    opt = schema.spec("OptimizerConfig").fields
    assert cfg["optimizer"]["weight_decay"] == opt["weight_decay"].default == 0.01
    assert cfg["optimizer"]["betas"] == [opt["adam_beta1"].default, opt["adam_beta2"].default] == [0.9, 0.999]
    assert cfg["optimizer"]["eps"] == opt["adam_eps"].default and cfg["clip_grad_norm"]["max_norm"] == opt["clip_grad"].default
    assert cfg["seed"] == 7
    cfg, _ = reference_config(_Job(BASE), {"model": {}}, ENV, [1e-4], None, "llama")
    assert cfg["seed"] == schema.spec("FineTuningDataModule").fields["seed"].default == 1234
    # the job's own value wins over the table
    cfg, _ = reference_config(_Job({**BASE, "optim.config.weight_decay": 0.1}), MIGRATED, ENV, [1e-4], None, "llama")
    assert cfg["optimizer"]["weight_decay"] == 0.1
    # LoRA: the defaults of the job's PEFT class (DoRA's alpha is 64, LoRA's 32)
    for cls, alpha in (("LoRA", 32), ("DoRA", 64)):
        cfg, _ = reference_config(_Job({**BASE, "peft.target_modules": ["linear_qkv"]}, {"peft": _Node(cls)}), MIGRATED, ENV, [1e-4],
                                  None, "llama")
        assert cfg["peft"]["alpha"] == alpha and cfg["peft"]["dim"] == 32 and cfg["peft"]["dropout_position"] == "pre"
        assert cfg["nemo_compat"]["lora_tied_a"] is (cls == "LoRA")  # NeMo's LoRA fuses q/k/v (one A)
    sft = sft_settings(_Job({}))
    assert sft == {"template": "{input} {output}", "label_key": "output", "truncation_fields": ["input"], "add_bos": False,
                   "add_eos": True, "add_sep": False, "answer_only_loss": True, "truncation_method": "right"}


def test_nemo_lr_without_a_scheduler_is_constant():
    """MegatronOptimizerModule without lr_scheduler keeps the rate (the former copy decayed it with a cosine to 0)."""
    assert nemo_lr_values(_Job(BASE), 4) == [1e-4] * 4
    sched = {**BASE, "optim.lr_scheduler": object(), "optim.lr_scheduler.warmup_steps": 2, "optim.lr_scheduler.max_steps": None,
             "optim.lr_scheduler.min_lr": None, "optim.lr_scheduler.constant_steps": None}
    assert nemo_lr_values(_Job(sched), 4) == [nemo_lr(s, lr=1e-4, warmup=2, max_steps=10, min_lr=0.0) for s in range(4)]


def test_removing_an_approximation_takes_its_keys_from_the_reference_leg():
    base = {"peft": {"dim": 8}, "dataset": {"path_or_dataset_id": "train.jsonl"}, "fp8": {"enabled": True},
            "nemo_compat": {"init_adapter": "a.safetensors"}}
    ref = {"dataset": {"_target_": "nemo_migrate.pretokenized"}, "nemo_compat": {"loss_reduction": "nemo", "master_weights": "fp32",
                                                                                 "no_decay_1d": True, "lr_values": [1.0], "lora_tied_a": True}}
    assert without(base, ref, []) == base
    everything = without(base, ref, list(APPROXIMATIONS))
    assert everything == {"peft": {"dim": 8}, "dataset": ref["dataset"],
                          "nemo_compat": {"init_adapter": "a.safetensors", "lora_tied_a": True, "loss_reduction": "nemo",
                                          "master_weights": "fp32", "no_decay_1d": True, "lr_values": [1.0]}}
    assert without(base, ref, ["fp8_scaling"]) == {k: v for k, v in base.items() if k != "fp8"}  # BF16, like the reference
    assert without(base, ref, ["master_weights"])["nemo_compat"] == {"init_adapter": "a.safetensors", "master_weights": "fp32",
                                                                      "no_decay_1d": True}
    assert base["nemo_compat"] == {"init_adapter": "a.safetensors"}  # the input is not changed
