"""The pre-write check (migrate/automodel_rules.py): every check rejects a config and accepts a near-identical one,
and real nemo-automodel 0.7.0 agrees on both (where it is importable); every golden output passes with no error.

Each CASE is one check: ``bad`` and ``good`` are the same base config with one or two keys changed.  The oracle runs
both through tests/automodel_check.py's ``run_checks`` (Automodel's own config code, stage by stage) plus the stages
that checker does not cover, each calling the real 0.7 code: the device mesh and StepScheduler at the case's exact
world size, the train/validation dataloaders built from a local JSONL with a stand-in tokenizer, the LoRA forward in
train mode, the RNG seeding, the tokenizer's signature, train_ft's pipeline-batch assertion (executed from its own
source), the pipeline schedule lookup, and the tokenizer's padding/truncation strategies.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import math
import random
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from nemo_migrate.diagnostics import MigrateError

from nemo_migrate.automodel.schema import field_specs
from nemo_migrate.automodel.values import translate_all
from nemo_migrate.automodel_rules import check_config, check_targets, rejections
from nemo_migrate.convert import Options, convert
from nemo_migrate.diff import _world_from_run_sh
from nemo_migrate.golden import cases as golden_cases
from nemo_migrate.golden import options_for
from nemo_migrate.ir import Provenance

ROOT = Path(__file__).resolve().parent.parent
DELETE = object()
CM = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"

BASE: dict = {
    "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
    "seed": 1234,
    "dist_env": {"backend": "nccl", "timeout_minutes": 30},
    "step_scheduler": {"global_batch_size": 8, "local_batch_size": 1, "max_steps": 30, "num_epochs": None,
                       "val_every_steps": 10, "ckpt_every_steps": 10},
    "model": {"_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
              "pretrained_model_name_or_path": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16"},
    "peft": {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "target_modules": ["*.q_proj", "*.v_proj"],
             "dim": 8, "alpha": 16, "dropout": 0.1, "dropout_position": "pre"},
    "distributed": {"strategy": "fsdp2", "dp_size": None, "tp_size": 1, "cp_size": 1, "pp_size": 1, "ep_size": 1},
    "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
    "dataset": {"_target_": CM, "path_or_dataset_id": "@TRAIN@", "column_mapping": {"context": "prompt", "answer": "completion"},
                "seq_length": 64, "truncation": "longest_first", "padding": "do_not_pad",
                "tokenizer": {"pretrained_model_name_or_path": "meta-llama/Llama-3.1-8B", "add_eos_token": True}},
    "dataloader": {"shuffle": True, "num_workers": 0, "pin_memory": False},
    "validation_dataset": {"_target_": CM, "path_or_dataset_id": "@VAL@", "column_mapping": {"context": "prompt", "answer": "completion"},
                           "seq_length": 64, "truncation": "longest_first"},
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1.0e-4, "betas": [0.9, 0.98], "eps": 1.0e-8, "weight_decay": 0.01},
    "lr_scheduler": {"lr_decay_style": "cosine", "lr_warmup_steps": 5, "init_lr": 0.0, "min_lr": 0.0},
    "clip_grad_norm": {"max_norm": 1.0},
    "checkpoint": {"enabled": True, "checkpoint_dir": "/nonexistent/ckpt", "model_save_format": "safetensors", "max_recent_checkpoints": 2},
}
PIPE = {"distributed.pp_size": 2, "distributed.pipeline": {"pp_schedule": "1f1b", "pp_microbatch_size": 1}}


def mutate(base: dict, changes: dict) -> dict:
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return cfg


@dataclass
class Case:
    id: str
    code: str  # what check_config must report for `bad` ...
    key: str  # ... at this Automodel path
    bad: dict
    good: dict
    world: int = 2
    real: str = "reject"  # what real Automodel 0.7 does with `bad`: reject | accept (non-finite: ours refuses on purpose) | misread
    needle: str = ""  # a piece of the real rejection (stage name or message)
    observe: Callable[[dict], bool] | None = None  # for accept/misread: what real 0.7 did instead


CASES = [
    # AM300 non-finite numbers (brief item 5): refused whatever 0.7 does
    Case("nonfinite-lr-nan", "AM300", "optimizer.lr", {"optimizer.lr": float("nan")}, {"optimizer.lr": 2e-4}, needle="Invalid learning rate"),
    Case("nonfinite-wd-1e400", "AM300", "optimizer.weight_decay", {"optimizer.weight_decay": "1e400"}, {"optimizer.weight_decay": "1e-4"},
         real="accept", observe=lambda info: info["loaded"]["optimizer.weight_decay"] == math.inf),
    Case("nonfinite-lr-inf", "AM300", "optimizer.lr", {"optimizer.lr": "1e400"}, {"optimizer.lr": "1e-4"},
         real="accept", observe=lambda info: info["loaded"]["optimizer.lr"] == math.inf),
    # AM301 types
    Case("type-seed", "AM301", "seed", {"seed": 1.5}, {"seed": 7}, needle="Seed must be a non-negative integer"),
    Case("type-max-steps", "AM301", "step_scheduler.max_steps", {"step_scheduler.max_steps": "thirty"}, {"step_scheduler.max_steps": "30"}),
    Case("type-packed-size-null", "AM301", "packed_sequence.packed_sequence_size", {"packed_sequence.packed_sequence_size": None},
         {"packed_sequence.packed_sequence_size": 0}, needle="'>' not supported"),
    Case("type-betas-int", "AM301", "optimizer.betas", {"optimizer.betas": [0, 0.99]}, {"optimizer.betas": [0.0, 0.99]},
         needle="betas must be either both floats"),
    Case("type-tp-float-misread", "AM301", "distributed.tp_size", {"distributed.tp_size": 2.0}, {"distributed.tp_size": 2},
         real="misread", observe=lambda info: info["mesh"]["tp"] == 1),
    Case("type-limit-samples", "AM301", "validation_dataset.limit_dataset_samples", {"validation_dataset.limit_dataset_samples": 1.5},
         {"validation_dataset.limit_dataset_samples": 2}, needle="[dataset]"),
    # AM302 ranges
    Case("range-val-every-steps", "AM302", "step_scheduler.val_every_steps", {"step_scheduler.val_every_steps": 0},
         {"step_scheduler.val_every_steps": None}, needle="val_every_steps must be greater than 0"),
    Case("range-ckpt-every-steps", "AM302", "step_scheduler.ckpt_every_steps", {"step_scheduler.ckpt_every_steps": -1},
         {"step_scheduler.ckpt_every_steps": 5}, needle="ckpt_every_steps must be greater than 0"),
    Case("range-max-steps", "AM302", "step_scheduler.max_steps", {"step_scheduler.max_steps": 0}, {"step_scheduler.max_steps": 20},
         needle="max_steps must be greater than 0"),
    Case("range-seed", "AM302", "seed", {"seed": -3}, {"seed": 3}, needle="Seed must be a non-negative integer"),
    Case("range-lora-dim", "AM302", "peft.dim", {"peft.dim": 0}, {"peft.dim": 4}, needle="ZeroDivisionError"),
    Case("range-lora-dropout", "AM302", "peft.dropout", {"peft.dropout": 1.5}, {"peft.dropout": 0.5}, needle="dropout probability"),
    Case("range-max-recent-ckpt", "AM302", "checkpoint.max_recent_checkpoints", {"checkpoint.max_recent_checkpoints": 0},
         {"checkpoint.max_recent_checkpoints": 1}, needle="max_recent_checkpoints must be unset or a positive integer"),
    Case("range-num-workers", "AM302", "dataloader.num_workers", {"dataloader.num_workers": -1}, {"dataloader.num_workers": 1},
         needle="num_workers option should be non-negative"),
    Case("range-beta", "AM302", "optimizer.betas", {"optimizer.betas": [0.9, 1.0]}, {"optimizer.betas": [0.9, 0.999]},
         needle="Invalid beta parameter at index 1"),
    Case("range-weight-decay", "AM302", "optimizer.weight_decay", {"optimizer.weight_decay": -0.1}, {"optimizer.weight_decay": 0.1},
         needle="Invalid weight_decay value"),
    Case("range-eps", "AM302", "optimizer.eps", {"optimizer.eps": -1e-8}, {"optimizer.eps": 1e-6}, needle="Invalid epsilon value"),
    # AM303 allowed values
    Case("choice-dropout-position", "AM303", "peft.dropout_position", {"peft.dropout_position": "middle"}, {"peft.dropout_position": "post"},
         needle="dropout position can only be pre/post"),
    Case("choice-decay-style", "AM303", "lr_scheduler.lr_decay_style", {"lr_scheduler.lr_decay_style": "exponential"},
         {"lr_scheduler.lr_decay_style": "linear"}, needle="decay style is not supported"),
    Case("choice-save-format", "AM303", "checkpoint.model_save_format", {"checkpoint.model_save_format": "pt"},
         {"checkpoint.model_save_format": "torch_save"}, needle="Unsupported model save format"),
    Case("choice-strategy", "AM303", "distributed.strategy", {"distributed.strategy": "zero3"}, {"distributed.strategy": "ddp"},
         needle="Unknown strategy"),
    Case("choice-fp8-recipe", "AM303", "fp8.recipe_name",
         {"fp8": {"enabled": True, "recipe_name": "bogus", "filter_fqns": ["q_proj", "v_proj", "lm_head"]}},
         {"fp8": {"enabled": True, "recipe_name": "rowwise", "filter_fqns": ["q_proj", "v_proj", "lm_head"]}}, needle="recipe_name bogus"),
    Case("choice-padding", "AM303", "dataset.padding", {"dataset.padding": "left"}, {"dataset.padding": "longest"}, needle="PaddingStrategy"),
    Case("choice-truncation", "AM303", "validation_dataset.truncation", {"validation_dataset.truncation": "yes please"},
         {"validation_dataset.truncation": "only_first"}, needle="TruncationStrategy"),
    Case("choice-pp-schedule", "AM303", "distributed.pipeline.pp_schedule",
         {**PIPE, "step_scheduler.local_batch_size": 2, "distributed.pipeline.pp_schedule": "zigzag"},
         {**PIPE, "step_scheduler.local_batch_size": 2, "distributed.pipeline.pp_schedule": "gpipe"}, needle="Unknown schedule name"),
    # AM304 / AM305 / AM307 sections
    Case("required-loss-fn", "AM304", "loss_fn", {"loss_fn": DELETE}, {}, needle="[loss_fn]"),
    Case("required-column-mapping", "AM304", "validation_dataset.column_mapping", {"validation_dataset.column_mapping": DELETE}, {},
         needle="column_mapping"),
    Case("target-dataset", "AM305", "dataset._target_", {"dataset._target_": DELETE}, {}, needle="No _target_ found to instantiate"),
    Case("target-peft", "AM305", "peft._target_", {"peft._target_": DELETE}, {}, needle="No _target_ found to instantiate"),
    Case("target-loss-fn", "AM305", "loss_fn._target_", {"loss_fn": {"reduction": "sum"}}, {}, needle="No _target_ found to instantiate"),
    Case("not-a-mapping", "AM307", "checkpoint", {"checkpoint": "/ckpt"}, {}, needle="checkpoint"),
    # AM306 unknown keys in strict sections
    Case("unknown-step-scheduler-key", "AM306", "step_scheduler.grad_acc_steps", {"step_scheduler.grad_acc_steps": 4}, {}, needle="grad_acc_steps"),
    Case("unknown-strategy-option", "AM306", "distributed.sequence_parallel", {"distributed.strategy": "ddp", "distributed.sequence_parallel": False},
         {"distributed.strategy": "ddp"}, needle="Unknown options for strategy 'ddp'"),
    Case("unknown-optimizer-kwarg", "AM306", "optimizer.momentum", {"optimizer.momentum": 0.9}, {"optimizer.amsgrad": True}, needle="momentum"),
    Case("unknown-chat-dataset-key", "AM306", "validation_dataset.column_mapping",
         {"validation_dataset._target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset"},
         {"validation_dataset._target_": "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset",
          "validation_dataset.column_mapping": DELETE}, needle="column_mapping"),
    Case("unknown-pipeline-key", "AM306", "distributed.pipeline.microbatch_size",
         {**PIPE, "step_scheduler.local_batch_size": 2, "distributed.pipeline.microbatch_size": 1},
         {**PIPE, "step_scheduler.local_batch_size": 2}, needle="microbatch_size"),
    # AM308 dtypes
    Case("dtype-lora", "AM308", "peft.lora_dtype", {"peft.lora_dtype": "fp32"}, {"peft.lora_dtype": "float32"}, needle="Unknown dtype string"),
    Case("dtype-model", "AM308", "model.dtype", {"model.dtype": "bf16-mixed"}, {"model.dtype": "bf16"}, needle="bf16-mixed"),
    # AM310 global batch vs data parallelism (world size 2 -> dp 2)
    Case("batch-divisibility", "AM310", "step_scheduler.global_batch_size", {"step_scheduler.global_batch_size": 7},
         {"step_scheduler.global_batch_size": 6}, needle="must be divisible by local_batch_size * dp_size"),
    Case("batch-too-small", "AM310", "step_scheduler.global_batch_size",
         {"step_scheduler.global_batch_size": 2, "step_scheduler.local_batch_size": 2}, {"step_scheduler.global_batch_size": 4,
                                                                                     "step_scheduler.local_batch_size": 2},
         needle="must be divisible"),
    # AM311 the LR scheduler's assertions
    Case("lr-warmup-vs-steps", "AM311", "lr_scheduler.lr_warmup_steps", {"lr_scheduler.lr_warmup_steps": 30},
         {"lr_scheduler.lr_warmup_steps": 29}, needle="lr_warmup_steps < self.lr_decay_steps"),
    Case("lr-warmup-vs-decay", "AM311", "lr_scheduler.lr_warmup_steps", {"lr_scheduler.lr_warmup_steps": 50, "lr_scheduler.lr_decay_steps": 40},
         {"lr_scheduler.lr_warmup_steps": 50, "lr_scheduler.lr_decay_steps": 51}, needle="lr_warmup_steps < self.lr_decay_steps"),
    Case("lr-init-above-max", "AM311", "lr_scheduler.init_lr", {"lr_scheduler.init_lr": 1.0}, {"lr_scheduler.init_lr": 1e-4},
         needle="init_lr <= self.max_lr"),
    Case("lr-min-negative", "AM311", "lr_scheduler.min_lr", {"lr_scheduler.min_lr": -1e-6}, {"lr_scheduler.min_lr": 1e-6},
         needle="self.min_lr >= 0.0"),
    Case("lr-fraction-warmup", "AM311", "lr_scheduler.lr_warmup_steps", {"lr_scheduler.lr_warmup_steps": 0.1},
         {"lr_scheduler.lr_warmup_steps": 3}, needle="must be an integer step count"),
    Case("lr-override-checkpoint", "AM311", "lr_scheduler.override_opt_param_scheduler", {"lr_scheduler.override_opt_param_scheduler": True},
         {"lr_scheduler.override_opt_param_scheduler": True, "lr_scheduler.use_checkpoint_opt_param_scheduler": False},
         needle="both override and use-checkpoint are set"),
    Case("lr-wd-constant", "AM311", "lr_scheduler.end_wd", {"lr_scheduler.end_wd": 0.1}, {"lr_scheduler.end_wd": 0.1, "lr_scheduler.wd_incr_style": "linear"},
         needle="start_wd == self.end_wd"),
    Case("lr-wsd", "AM311", "lr_scheduler.lr_decay_style", {"lr_scheduler.lr_decay_style": "WSD"},
         {"lr_scheduler.lr_decay_style": "WSD", "lr_scheduler.wsd_decay_steps": 10, "lr_scheduler.lr_wsd_decay_style": "cosine"},
         needle="wsd_decay_steps is not None"),
    # AM312 column_mapping roles
    Case("columns-roles", "AM312", "dataset.column_mapping", {"dataset.column_mapping": {"prompt": "prompt", "answer": "completion"}},
         {"dataset.column_mapping": {"question": "prompt", "answer": "completion"}}, needle="[dataset]"),
    Case("columns-no-answer", "AM312", "validation_dataset.column_mapping", {"validation_dataset.column_mapping": {"context": "prompt"}},
         {"validation_dataset.column_mapping": {"context": "prompt", "question": "prompt", "answer": "completion"}}, needle="answer"),
    # AM313 LoRA selection
    Case("lora-match-all-linear", "AM313", "peft.match_all_linear", {"peft.match_all_linear": True},
         {"peft.match_all_linear": True, "peft.target_modules": DELETE}, needle="match_all_linear"),
    Case("lora-target-and-exclude", "AM313", "peft.exclude_modules", {"peft.exclude_modules": ["*.o_proj"]},
         {"peft.exclude_modules": ["*.o_proj"], "peft.target_modules": DELETE}, needle="mutually exclusive"),
    # AM314 what a strategy supports
    Case("strategy-ddp-tp", "AM314", "distributed.tp_size", {"distributed.strategy": "ddp", "distributed.tp_size": 2},
         {"distributed.strategy": "fsdp2", "distributed.tp_size": 2}, needle="ddp does not support tensor parallelism"),
    Case("strategy-ac-value", "AM314", "distributed.activation_checkpointing", {"distributed.activation_checkpointing": "sometimes"},
         {"distributed.activation_checkpointing": "selective"}, needle="activation_checkpointing must be a boolean"),
    Case("strategy-selective-megatron", "AM314", "distributed.activation_checkpointing",
         {"distributed.strategy": "megatron_fsdp", "distributed.activation_checkpointing": "selective"},
         {"distributed.strategy": "megatron_fsdp", "distributed.activation_checkpointing": True}, needle="selective activation checkpointing"),
    # AM315 parallel sizes vs the world size (world 2 unless said)
    Case("mesh-world-divisibility", "AM315", "distributed.tp_size", {"distributed.tp_size": 3}, {"distributed.tp_size": 2},
         needle="must be divisible by (tp_size * cp_size * pp_size)"),
    Case("mesh-explicit-dp-too-big", "AM315", "distributed.dp_size", {"distributed.dp_size": 4}, {"distributed.dp_size": 2},
         needle="Mesh should not be bigger"),
    Case("mesh-ep", "AM315", "distributed.ep_size", {"distributed.ep_size": 4}, {"distributed.ep_size": 2}, needle="must be a multiple of ep_size"),
    Case("mesh-replicate", "AM315", "distributed.dp_replicate_size", {"distributed.dp_replicate_size": 4}, {"distributed.dp_replicate_size": 2},
         world=4, needle="dp_replicate_size=4 must be less than dp_size=4"),
    Case("mesh-replicate-divides", "AM315", "distributed.dp_replicate_size", {"distributed.dp_replicate_size": 3},
         {"distributed.dp_replicate_size": 2}, world=4, needle="dp_size must be a multiple of dp_replicate_size"),
    # AM316 pipeline parallelism
    Case("pipeline-missing-block", "AM316", "distributed.pp_size", {"distributed.pp_size": 2}, {**PIPE, "step_scheduler.local_batch_size": 2},
         needle="no `distributed.pipeline` block"),
    Case("pipeline-batch", "AM316", "step_scheduler.local_batch_size", {**PIPE}, {**PIPE, "step_scheduler.local_batch_size": 2},
         needle="must be >= pp_size 2"),
    # AM317 checkpoint on msc://
    Case("checkpoint-msc-recent", "AM317", "checkpoint.max_recent_checkpoints",
         {"checkpoint.checkpoint_dir": "msc://bucket/ckpt", "checkpoint.save_consolidated": False},
         {"checkpoint.checkpoint_dir": "msc://bucket/ckpt", "checkpoint.save_consolidated": False, "checkpoint.max_recent_checkpoints": DELETE},
         needle="only supported for local checkpoint directories"),
    Case("checkpoint-msc-consolidated", "AM317", "checkpoint.checkpoint_dir",
         {"checkpoint.checkpoint_dir": "msc://bucket/ckpt", "checkpoint.max_recent_checkpoints": DELETE},
         {"checkpoint.checkpoint_dir": "msc://bucket/ckpt", "checkpoint.max_recent_checkpoints": DELETE, "checkpoint.save_consolidated": False},
         needle="not compatible with remote cloud storage"),
    # AM318 dataloader
    Case("dataloader-persistent", "AM318", "dataloader.persistent_workers", {"dataloader.persistent_workers": True},
         {"dataloader.persistent_workers": True, "dataloader.num_workers": 1}, needle="persistent_workers option needs num_workers > 0"),
    Case("dataloader-prefetch", "AM318", "validation_dataloader.prefetch_factor", {"validation_dataloader": {"prefetch_factor": 2}},
         {"validation_dataloader": {"prefetch_factor": 2, "num_workers": 1}}, needle="prefetch_factor option could only be specified"),
    Case("dataloader-target", "AM318", "dataloader._target_", {"dataloader._target_": "torch.utils.data.Dataset"},
         {"dataloader._target_": "torch.utils.data.DataLoader"}, needle="Unsupported dataloader _target_"),
    # AM319 packing strategy
    Case("packing-strategy", "AM319", "packed_sequence.packing_strategy",
         {"packed_sequence": {"packed_sequence_size": 128, "packing_strategy": "zigzag"}},
         {"packed_sequence": {"packed_sequence_size": 0, "packing_strategy": "zigzag"}}, needle="Unknown target 'zigzag'"),
    # AM320 tokenizer
    Case("tokenizer-no-model", "AM320", "dataset.tokenizer", {"dataset.tokenizer": {"add_eos_token": True}}, {}, needle="[tokenizer]"),
]


# ---------------------------------------------------------------------------------------------- (a) our check

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_check_rejects_bad_and_accepts_good(case):
    bad = check_config(mutate(BASE, case.bad), None, world_size=case.world)
    assert any(d.code == case.code and d.key == case.key for d in bad), "\n".join(d.render() for d in bad) or "(nothing)"
    assert all(d.severity == "error" and "AM300" <= d.code <= "AM349" for d in bad)
    good = check_config(mutate(BASE, case.good), None, world_size=case.world)
    assert good == [], "\n".join(d.render() for d in good)


def test_messages_say_what_automodel_does():
    d = next(d for d in check_config(mutate(BASE, {"step_scheduler.val_every_steps": 0}), None, world_size=2))
    assert d.message.startswith("Automodel 0.7 would reject this: ")
    assert "val_every_steps must be greater than 0 if not None" in d.message and "step_scheduler.py:154" in d.message
    assert d.hint and "positive number of steps" in d.hint
    misread = check_config(mutate(BASE, {"distributed.tp_size": 2.0}), None, world_size=2)
    assert misread[0].message.startswith("Automodel 0.7 would silently train something else: ")
    refused = check_config(mutate(BASE, {"optimizer.lr": "1e400"}), None, world_size=2)
    assert refused[0].code == "AM300" and refused[0].message.startswith("refused: optimizer.lr is inf")


def test_world_size_decides_batch_and_mesh():
    cfg = mutate(BASE, {"step_scheduler.global_batch_size": 12})
    assert check_config(cfg, None, world_size=4) == []  # dp 4, 12 = 3 x 4
    assert [d.code for d in check_config(cfg, None, world_size=8)] == ["AM310"]  # dp 8
    assert [d.code for d in check_config(mutate(BASE, {"distributed.tp_size": 4}), None, world_size=6)] == ["AM315"]
    assert check_config(mutate(BASE, {"distributed.tp_size": 4}), None, world_size=None) == []  # unknown world: not judged


def test_location_is_the_first_provenance_with_a_file():
    provs = {"step_scheduler.val_every_steps": [Provenance(kind="nemo-default", detail="Trainer.val_check_interval"),
                                                Provenance(kind="yaml", file="cfg.yaml", line=16, col=3)]}
    [d] = check_config(mutate(BASE, {"step_scheduler.val_every_steps": 0}), lambda p: provs.get(p, []), world_size=2)
    assert (d.file, d.line, d.col, d.key) == ("cfg.yaml", 16, 3, "step_scheduler.val_every_steps")
    assert "NeMo default (Trainer.val_check_interval), cfg.yaml:16" in d.message
    [d] = check_config(mutate(BASE, {"step_scheduler.val_every_steps": 0}), None, world_size=2)
    assert d.file is None  # no provenance: no location, never a crash


def _seed_copy(tmp_path: Path, old: str, new: str) -> Path:
    src = ROOT / "golden" / "seed" / "input"
    dst = tmp_path / "job"
    dst.mkdir()
    for f in src.iterdir():
        text = f.read_text()
        if f.name == "config-fp16.yaml":
            assert old in text
            text = text.replace(old, new)
        (dst / f.name).write_text(text)
    (dst / "config-fp8.yaml").unlink()
    (dst / "run.sh").write_text((src / "run.sh").read_text())
    return dst


def _compile(job: Path):
    """`convert` refuses the job (exit 1, nothing written): the AM3xx errors of config-fp16.yaml, as convert reports them."""
    (job / "config-fp8.yaml").unlink(missing_ok=True)
    with pytest.raises(MigrateError) as e:
        convert(Options(source=job))
    return [d for d in e.value.diags.errors if d.code.startswith("AM3")]


def test_compiled_job_error_points_at_the_nemo_source(tmp_path):
    [d] = _compile(_seed_copy(tmp_path, "  val_check_interval: 10", "  val_check_interval: 0"))
    assert (d.code, d.key, d.file, d.line) == ("AM302", "step_scheduler.val_every_steps", "config-fp16.yaml", 16)
    assert "SCH003" in d.hint


def test_compiled_job_non_finite_literal_is_refused_at_its_line(tmp_path):
    diags = _compile(_seed_copy(tmp_path, "    lr: 0.0001", "    lr: 1e400"))
    lr = [d for d in diags if d.key == "optimizer.lr"]
    assert lr and lr[0].code == "AM300" and (lr[0].file, lr[0].line) == ("config-fp16.yaml", 38)
    assert all(d.code == "AM300" for d in diags)  # the derived init_lr is refused too, nothing else is claimed


def test_compiled_job_lora_rank_zero(tmp_path):
    # NeMo builds LoRA with dim 0 without a word; Automodel 0.7 divides alpha by it
    [d] = _compile(_seed_copy(tmp_path, "  dim: 8", "  dim: 0"))
    assert (d.code, d.key, d.file, d.line) == ("AM302", "peft.dim", "config-fp16.yaml", 43)
    assert "alpha / dim" in d.message and "PEFT003" in d.hint


# ---------------------------------------------------------------------------------------------- no false positives

GOLDEN_YAMLS = sorted(ROOT.glob("golden/*/expected/*.yaml"))


@pytest.mark.parametrize("path", GOLDEN_YAMLS, ids=lambda p: str(p.relative_to(ROOT / "golden")))
def test_golden_outputs_pass(path):
    import yaml

    world = _world_from_run_sh(path, path.name)
    assert world, f"no world size for {path}"
    assert rejections(translate_all(yaml.safe_load(path.read_text())), world[0]) == []


@pytest.mark.parametrize("case", [c for c in golden_cases() if not (c / "diff").is_file()], ids=lambda c: c.name)
def test_golden_jobs_compile_to_configs_that_pass(case):
    conv = convert(options_for(case))
    for v in conv.variants:
        assert check_targets(v.targets, world_size=v.nproc * v.nnodes) == [], v.output


def test_diff_guide_is_unchanged():
    from nemo_migrate.golden import render

    case = ROOT / "golden" / "diff-guide"
    for name, text in render(case).items():
        assert text == (case / "expected" / name).read_text(), name


def test_diff_reports_the_new_checks(tmp_path):
    import yaml

    from nemo_migrate.diff import run_diff

    bad = mutate(BASE, {"step_scheduler.val_every_steps": 0, "peft.dropout": 1.5})
    for name, cfg in (("a.yaml", BASE), ("b.yaml", bad)):
        (tmp_path / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    [r] = run_diff(tmp_path / "a.yaml", tmp_path / "b.yaml", nproc=2)
    assert sorted((f.code, f.key) for f in r.findings if f.severity == "error") == [
        ("AM302", "peft.dropout"), ("AM302", "step_scheduler.val_every_steps")]
    assert r.different


def test_never_raises_on_hostile_values():
    rng = random.Random(0)
    junk = [None, True, 0, -1, 1.5, float("nan"), "x", "1e400", [], [1, "a"], {}, {"a": {"b": None}}, 2 ** 70]
    paths = sorted(field_specs()) + ["distributed", "peft", "dataset", "optimizer._target_", "lr_scheduler", "packed_sequence",
                                           "dataloader", "checkpoint", "model", "distributed.pipeline", "dataset.tokenizer", ""]
    for _ in range(400):
        cfg = copy.deepcopy(BASE)
        for _ in range(rng.randint(1, 6)):
            p = rng.choice(paths)
            with contextlib.suppress(TypeError, AttributeError):  # a parent replaced by a scalar earlier
                cfg = mutate(cfg, {p: rng.choice(junk)}) if p else cfg
        for world in (None, 0, 1, 3, 8):
            for d in check_config(cfg, None, world_size=world):
                assert d.severity == "error" and d.code.startswith("AM3")
    assert check_config([], None, world_size=2)[0].code == "AM307"  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- (b) real Automodel

class _Tok:
    """Stand-in tokenizer: the dataset constructors only set pad_token and keep a reference."""

    pad_token = "<pad>"
    eos_token = "</s>"
    pad_token_id = 0
    eos_token_id = 2
    bos_token_id = 1
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # ChatDataset requires one

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called at build
        raise NotImplementedError


@contextlib.contextmanager
def _rng_kept():
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _pp_assertion():
    """train_ft's own pipeline-batch assertion, compiled from its source (TrainFinetuneRecipe.setup)."""
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction as R

    tree = ast.parse(textwrap.dedent(inspect.getsource(R.setup)))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.Assert) and "pp_microbatch_size" in ast.unparse(n.test))
    return compile(ast.Module([node], []), inspect.getsourcefile(R), "exec")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    pytest.importorskip("nemo_automodel", reason="nemo-automodel is not installed (see requirements/automodel-check.txt)")
    tests = str(Path(__file__).resolve().parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import datasets.config
    import torch
    import yaml
    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.components.training.rng import StatefulRNG
    from nemo_automodel.recipes import _dist_utils
    from nemo_automodel.recipes._typed_config import RecipeConfig
    from nemo_automodel.recipes.base_recipe import BaseRecipe

    import automodel_check as amc

    base = tmp_path_factory.mktemp("real")
    datasets.config.HF_DATASETS_CACHE = str(base / "hf-cache")
    for name in ("train", "val"):
        (base / f"{name}.jsonl").write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(4)))
    pp_assert = _pp_assertion()
    counter = iter(range(10_000))

    def run(cfg: dict, world: int) -> tuple[list[str], dict]:
        text = yaml.safe_dump(cfg, sort_keys=False).replace("@TRAIN@", str(base / "train.jsonl")).replace("@VAL@", str(base / "val.jsonl"))
        path = base / f"cfg{next(counter)}.yaml"
        path.write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = amc.run_checks(path)
        problems = list(rep.problems)
        info: dict[str, Any] = dict(rep.info)

        def stage(name: str, fn: Callable[[], Any]) -> None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn()
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - every failure of 0.7's code is a rejection
                problems.append(f"[{name}] {type(e).__name__}: {' '.join(str(e).split())[:300]}")

        try:
            node = load_yaml_config(path)
        except Exception:  # noqa: BLE001 - already a [load] problem
            return problems, info
        rc = RecipeConfig(node)
        info["loaded"] = {p: node.get(p, None) for p in ("optimizer.lr", "optimizer.weight_decay")}

        def seed() -> None:
            with _rng_kept():
                StatefulRNG(seed=node.get("seed", 42), ranked=True)

        def mesh_and_steps() -> None:
            with amc._fake_process_group(world):
                setup = _dist_utils.create_distributed_setup_from_config(node, world_size=world)
                mesh = setup.mesh_context.device_mesh
                names = mesh.mesh_dim_names if mesh is not None else ()
                info["mesh"] = {str(n.value if hasattr(n, "value") else n): mesh[n].size() for n in names}
                dp = BaseRecipe._get_dp_group_size(types.SimpleNamespace(device_mesh=mesh))
                sched = rc.step_scheduler.build(range(400), dp, node.get("step_scheduler.local_batch_size", 1))
                if sched.sig_handler is not None:
                    sched.sig_handler.release()
                pp = setup.mesh_context.pp_size if mesh is not None else 1
                if pp > 1:
                    env = {"pp_batch_size": node.get("step_scheduler.local_batch_size", 1),
                           "pp_microbatch_size": node.get("distributed.pipeline.pp_microbatch_size", 1),
                           "self": types.SimpleNamespace(mesh_context=types.SimpleNamespace(pp_size=pp))}
                    exec(pp_assert, {}, env)  # noqa: S102 - 0.7's own assertion statement
                    from torch.distributed.pipelining.schedules import get_schedule_class

                    get_schedule_class(node.get("distributed.pipeline.pp_schedule", "1f1b"))

        def loaders() -> None:
            for dl in [rc.dataloader, *rc.validation_dataloaders.values()]:
                dl.build(dp_rank=0, dp_world_size=1, tokenizer=_Tok())

        def lora_forward() -> None:
            from nemo_automodel.components._peft.lora import apply_lora_to_linear_modules

            model = amc.build_tiny_model(str(node.get("model.pretrained_model_name_or_path", "")))
            apply_lora_to_linear_modules(model, node.peft.instantiate(), quantization_config=None, skip_freeze=True)
            model.train()
            model(torch.tensor([[1, 2, 3, 4]]))

        def tokenizer_signature() -> None:
            from nemo_automodel._transformers.auto_tokenizer import NeMoAutoTokenizer

            tok = node.get("dataset.tokenizer", None)
            if tok is not None and "_target_" not in tok:
                inspect.signature(NeMoAutoTokenizer.from_pretrained).bind(**tok.to_dict(), trust_remote_code=False)

        def tokenizer_strategies() -> None:
            from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

            for sect in ("dataset", "validation_dataset"):
                for key, enum in (("padding", PaddingStrategy), ("truncation", TruncationStrategy)):
                    v = node.get(f"{sect}.{key}", None)
                    if isinstance(v, str):
                        enum(v)

        stage("seed", seed)
        stage("mesh", mesh_and_steps)
        stage("loss_fn", lambda: rc.loss_fn.build())
        stage("model", lambda: node.model if "_target_" in node.model else node.model.instantiate())
        stage("optimizer", lambda: rc.optimizer.build(amc.build_tiny_model(), is_peft=False))
        stage("dataset", loaders)
        stage("tokenizer", tokenizer_signature)
        stage("tokenizer", tokenizer_strategies)
        if node.get("peft", None) is not None:
            stage("lora-forward", lora_forward)
        return problems, info

    return run


@pytest.mark.automodel
def test_real_automodel_accepts_the_base(real):
    problems, info = real(BASE, 2)
    assert problems == [], problems
    assert info["mesh"]["dp_shard"] == 2 and info["lora_applied"] == 4


@pytest.mark.automodel
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_real_automodel_agrees(case, real):
    good, _ = real(mutate(BASE, case.good), case.world)
    assert good == [], "real Automodel 0.7 rejects the config our check accepts:\n" + "\n".join(good)
    bad, info = real(mutate(BASE, case.bad), case.world)
    if case.real == "reject":
        assert bad, "real Automodel 0.7 accepts the config our check rejects"
        assert any(case.needle in p for p in bad), "\n".join(bad)
    else:  # 0.7 takes it without a word; our check refuses on purpose (non-finite) or because 0.7 misreads it
        assert bad == [], "\n".join(bad)
        assert case.observe is not None and case.observe(info), info
