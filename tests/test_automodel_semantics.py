"""Automodel 0.7's semantics live once (nemo_migrate.automodel): checked against the real nemo_automodel 0.7.0 code,
and `diff` and the runtime get the same answer from them (issue 16, item 1); the runtime's config check reports
every problem of a config together (item 8)."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import pytest

from nemo_migrate.automodel import match, schedule, schema, values

try:
    import nemo_automodel  # noqa: F401

    HAS_AUTOMODEL = True
except Exception:  # noqa: BLE001 - any import failure means "not available here"
    HAS_AUTOMODEL = False

needs_automodel = pytest.mark.skipif(not HAS_AUTOMODEL, reason="nemo_automodel 0.7.0 not importable")

STYLES = [("cosine", {}), ("linear", {}), ("constant", {}), ("inverse-square-root", {}),
          ("WSD", {"wsd_decay_steps": 6, "lr_wsd_decay_style": "linear"}),
          ("WSD", {"wsd_decay_steps": 6, "lr_wsd_decay_style": "cosine"}),
          ("WSD", {"wsd_decay_steps": 9, "lr_wsd_decay_style": "exponential"}),
          ("WSD", {"wsd_decay_steps": 3, "lr_wsd_decay_style": "minus_sqrt"})]


def _opt(lr=1e-3, wd=0.1):
    torch = pytest.importorskip("torch")
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr, weight_decay=wd)


# ---------------------------------------------------------------------------------------------- schedule


@needs_automodel
@pytest.mark.automodel
@pytest.mark.parametrize("style,extra", STYLES, ids=[f"{s}-{e.get('lr_wsd_decay_style', '')}" for s, e in STYLES])
def test_schedule_equals_real_scheduler_over_a_grid(style, extra):
    """lr_at / wd_at / violations against 0.7.0's OptimizerParamScheduler: step(0) at construction, step(1) per step."""
    from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler as Ref

    compared = refused = 0
    for warmup, decay, min_lr, init_lr in itertools.product((0, 1, 4, 12), (5, 12, 30), (0.0, 1e-5, 5e-4), (0.0, 1e-6)):
        kw = dict(init_lr=init_lr, max_lr=1e-3, min_lr=min_lr, lr_warmup_steps=warmup, lr_decay_steps=decay,
                  lr_decay_style=style, start_wd=0.0, end_wd=0.1, wd_incr_steps=decay, wd_incr_style="linear", **extra)
        s = schedule.LrSchedule(**kw)
        bad = schedule.violations(s)
        opt = _opt()
        try:
            ref = Ref(opt, **kw)
        except AssertionError:
            assert bad, f"0.7 refuses {kw}, schedule.violations does not"
            refused += 1
            continue
        assert not bad, f"0.7 accepts {kw}, schedule.violations says {bad}"
        for n in range(decay + 4):
            assert schedule.lr_at(s, n) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-18), (kw, n)
            assert schedule.wd_at(s, n) == pytest.approx(opt.param_groups[0]["weight_decay"], rel=1e-12, abs=1e-18)
            ref.step(1)
        compared += 1
    assert compared >= 40 and refused >= 4  # the grid holds both kinds (warmup >= decay is refused)


@needs_automodel
@pytest.mark.automodel
@pytest.mark.parametrize("section,total,lr,wd", [
    ({}, 30, 2e-4, 0.01),
    ({}, 50_000, 1e-4, 0.0),  # warmup capped at 1000
    ({"lr_warmup_steps": 3, "min_lr": 1e-6, "lr_decay_style": "linear"}, 20, 1e-3, 0.1),
    ({"init_lr": 0.0, "max_lr": 5e-4, "lr_decay_steps": 12, "wd_incr_style": "cosine", "end_wd": 0.2}, 40, 1e-3, 0.1),
    ({"lr_decay_style": "WSD", "wsd_decay_steps": 4, "lr_wsd_decay_style": "cosine"}, 25, 3e-4, 0.05),
])
def test_build_fills_what_lrschedulerconfig_build_fills(section, total, lr, wd):
    """schedule.build (defaults.yaml's formulas) gives the arguments 0.7's LRSchedulerConfig.build passes."""
    from types import SimpleNamespace

    from nemo_automodel.components.optim.optimizer import LRSchedulerConfig

    ref = LRSchedulerConfig(**section).build(_opt(lr, wd), SimpleNamespace(epoch_len=None, num_epochs=1, max_steps=total))[0]
    ours = schedule.build(section.get, base_lr=lr, base_wd=wd, total_steps=total)
    for key in schedule.LrSchedule.__dataclass_fields__:
        assert getattr(ours, key) == getattr(ref, key), key


def test_schedule_known_values_without_automodel():
    s = schedule.build({"lr_decay_style": "WSD", "wsd_decay_steps": 4, "lr_wsd_decay_style": "linear",
                        "lr_warmup_steps": 2, "init_lr": 0.0, "min_lr": 0.0}.get, base_lr=1.0, base_wd=0.1, total_steps=10)
    assert [round(x, 6) for x in schedule.lr_series(s, 11)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    inv = schedule.build({"lr_decay_style": "inverse-square-root", "lr_warmup_steps": 4}.get, base_lr=1.0, base_wd=0.0,
                         total_steps=100)
    assert schedule.lr_at(inv, 16) == pytest.approx(0.5) and schedule.lr_at(inv, 101) == pytest.approx(0.01)
    d = schedule.build({}.get, base_lr=2e-4, base_wd=0.01, total_steps=30)  # LRSchedulerConfig.build's defaults
    assert (d.lr_warmup_steps, d.lr_decay_steps, d.lr_decay_style) == (3, 30, "cosine")
    assert (d.init_lr, d.max_lr, d.min_lr, d.start_wd, d.end_wd) == (0.1 * 2e-4, 2e-4, 0.01 * 2e-4, 0.01, 0.01)
    assert schedule.build({}.get, base_lr=1.0, base_wd=0.0, total_steps=None).lr_warmup_steps is None
    assert [v.cond for v in schedule.violations(schedule.build({"lr_warmup_steps": 10}.get, base_lr=1.0, base_wd=0.0,
                                                               total_steps=10))] == ["lr_warmup_steps < lr_decay_steps"]
    with pytest.raises(ValueError, match="not supported"):
        schedule.lr_at(schedule.build({"lr_decay_style": "exp"}.get, base_lr=1.0, base_wd=0.0, total_steps=10), 5)


def test_the_runtime_scheduler_is_the_schedule():
    """runtime/optim.py's OptimizerParamScheduler only applies schedule.lr_at / wd_at to the param groups."""
    from nemo_migrate.runtime.optim import build_lr_scheduler

    for style, extra in STYLES:
        section = {"lr_decay_style": style, "lr_warmup_steps": 3, "min_lr": 1e-5, "wd_incr_style": "linear",
                   "start_wd": 0.0, **extra}
        opt = _opt(1e-3, 0.1)
        sch = build_lr_scheduler(opt, section, total_steps=20)
        s = schedule.build(section.get, base_lr=1e-3, base_wd=0.1, total_steps=20)
        for n in range(24):
            assert opt.param_groups[0]["lr"] == schedule.lr_at(s, n) and opt.param_groups[0]["weight_decay"] == schedule.wd_at(s, n)
            sch.step(1)


# ---------------------------------------------------------------------------------------------- matcher

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj", "model.layers.10.mlp.down_proj",
         "model.layers.1", "lm_head", "model.layers.0.mlp.fc.x", "decoder.layers.0.self_attention.linear_qkv",
         "model.embed_tokens", "model.layers.1.self_attn"]
PATTERNS = ["*_proj", "q_proj", "*.q_proj", "*.layers.1.*", "*layers.1.*", ".*mlp.*", "*mlp.fc.*", "*.layers.*.mlp.*",
            "model.*", "*", "*.layers.0.*.q_proj", "lm_head", "model.layers.1", "*.layers.1*"]


@pytest.mark.parametrize("pattern,expected", [
    ("*_proj", [1, 1, 1, 0, 0, 0, 0, 0, 0]),
    ("q_proj", [0] * 9),  # full-name matching: a bare leaf name matches nothing
    ("*.layers.1.*", [0, 1, 0, 1, 0, 0, 0, 0, 1]),  # `.*` after a numeric index: children or nothing, not layers.10
    ("*.layers.1*", [0, 1, 1, 1, 0, 0, 0, 0, 1]),
    ("lm_head", [0, 0, 0, 0, 1, 0, 0, 0, 0]),
])
def test_wildcard_cases(pattern, expected):
    assert [int(match.matches(pattern, n)) for n in NAMES] == expected


@needs_automodel
@pytest.mark.automodel
def test_matcher_equals_real_module_matcher():
    import torch.nn as nn
    from nemo_automodel.components._peft.module_matcher import ModuleMatcher, wildcard_match

    for p, n in itertools.product(PATTERNS, NAMES):
        assert match.wildcard_match(p, n) == wildcard_match(p, n), (p, n)
    lin, other = nn.Linear(2, 2), nn.LayerNorm(2)
    selections = [dict(target_modules=["*_proj"]), dict(target_modules="*.layers.1.*"), dict(exclude_modules=["lm_head"]),
                  dict(exclude_modules="*mlp*"), dict(match_all_linear=True), dict(), dict(target_modules=None)]
    for sel in selections:
        ref = ModuleMatcher(**sel)
        tm, ex, mal = match.selectors(sel.get("target_modules"), sel.get("exclude_modules"), sel.get("match_all_linear"))
        assert (tm, ex, mal) == (ref.target_modules, ref.exclude_modules, ref.match_all_linear), sel
        for n, mod in itertools.product(NAMES, (lin, other)):
            assert match.module_matches(n, isinstance(mod, nn.Linear), tm, ex, mal) == bool(ref.match(mod, n)), (sel, n)
    for bad in (dict(target_modules=["a"], exclude_modules=["b"]), dict(match_all_linear=True, target_modules=["a"]),
                dict(match_all_linear=True, exclude_modules="b")):
        with pytest.raises(ValueError):
            ModuleMatcher(**bad)
        assert match.lora_conflicts(bad), bad
    assert match.lora_conflicts({"target_modules": ["a"]}) == [] and match.lora_conflicts({"match_all_linear": True}) == []


def test_linear_modules_and_the_default_selection():
    mods = match.linear_modules(["self_attn.q_proj", "mlp.up_proj", "self_attn.q_proj"], 2)
    assert mods == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj",
                    "model.layers.1.mlp.up_proj", "lm_head"]
    tm, ex, mal = match.selectors(None, None, False)
    assert [m for m in mods if match.module_matches(m, True, tm, ex, mal)] == mods[:-1]  # '*_proj': lm_head is not adapted


# ---------------------------------------------------------------------------------------------- values

STRINGS = ["none", "None", "NONE", "true", "True", "TRUE", "false", "False", "10", "-3", "1e-8", "1e400", "0x10", "1_000",
           "[0.9, 0.999]", "(1, 2)", "{'a': 1}", "{a: 1}", "/data/t.jsonl", "*_proj", "bf16", "", " 5 ", "'q'", "1 +", "nan",
           "__import__('os')", "a" * 1001, "1" * 1001, "[" * 200 + "]" * 200, "b'x'", "1j", "...", "Ellipsis", "3.14.15"]


@needs_automodel
@pytest.mark.automodel
@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_translate_value_equals_automodels(text):
    from nemo_automodel.components.config.loader import translate_value

    ours, ref = values.translate_value(text), translate_value(text)
    assert type(ours) is type(ref) and (ours == ref or (isinstance(ref, float) and math.isnan(ref) and math.isnan(ours)))


@needs_automodel
@pytest.mark.automodel
def test_env_interpolation_equals_automodels(monkeypatch):
    from nemo_automodel.components.config.loader import resolve_yaml_env_vars

    env = {"DATA": "/d", "a.b": "dotted", "N": "8"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("NOPE_H11", raising=False)
    import os

    for text in ["$DATA/x.jsonl", "${DATA}/y", "${oc.env:DATA}", "${NOPE_H11,/fallback}", "${oc.env:NOPE_H11, dflt }",
                 "$a.b.", "${a.b}", "plain", "$N", "cost: $5", "${NOPE_H11,a,b}"]:
        assert values.resolve_env(text, os.environ) == resolve_yaml_env_vars(text), text
    with pytest.raises(KeyError):
        resolve_yaml_env_vars("$NOPE_H11")
    with pytest.raises(values.EnvVarMissing) as e:
        values.translate_all({"dataset": {"path": ["$NOPE_H11"]}}, environ=os.environ)
    assert (e.value.var, e.value.path) == ("NOPE_H11", "dataset.path[0]")
    assert values.translate_all({"_target_": "$X", "collate_fn": "1", "v": "$N"}, environ=os.environ) == \
        {"_target_": "$X", "collate_fn": "1", "v": 8}
    assert values.translate_all({"v": "$NOPE_H11"}) == {"v": "$NOPE_H11"}  # diff reads no environment


@needs_automodel
@pytest.mark.automodel
def test_dtype_table_equals_dtype_from_str():
    import torch
    from nemo_automodel.shared.utils import dtype_from_str

    for text in ["bf16", "BF16", "bfloat16", "torch.bfloat16", "float", "float32", "fp32", "fp16", "half", "torch.half",
                 "double", "torch.bf16", "TORCH.float16", "int", "long", "bool", "bf16-mixed", "auto", "torch.torch.float",
                 "float8", ""]:  # (not complex64/cfloat: 0.7.0's table maps them to the function torch.complex, :45-46)
        try:
            ref = dtype_from_str(text)
        except KeyError:
            ref = None
        ours = values.dtype_name(text)
        assert (ours and getattr(torch, ours)) == ref, text


# ---------------------------------------------------------------------------------------------- diff == run

YAML = """\
recipe: TrainFinetuneRecipeForNextTokenPrediction
seed: 7
step_scheduler: {{global_batch_size: 4, local_batch_size: 1, max_steps: 40, num_epochs: 100}}
model: {{_target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path: meta-llama/Llama-3.2-1B}}
loss_fn: {{_target_: nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy}}
optimizer: {{_target_: torch.optim.AdamW, lr: 3.0e-4, weight_decay: 0.01}}
dataset:
  _target_: nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset
  path_or_dataset_id: train.jsonl
  column_mapping: {{question: q, answer: a}}
lr_scheduler: {sched}
checkpoint: {{enabled: false}}
"""
SCHEDULERS = ["{}", "{lr_decay_style: linear, lr_warmup_steps: 5, min_lr: 1.0e-6}",
              "{lr_decay_style: WSD, wsd_decay_steps: 10, lr_wsd_decay_style: cosine, lr_warmup_steps: 4}",
              "{lr_decay_style: inverse-square-root, lr_warmup_steps: 8, min_lr: 5.0e-5}",
              "{lr_decay_style: constant, lr_warmup_steps: 2}", "{lr_decay_steps: 30, init_lr: 0.0}"]


def _diff_series(path: Path) -> list[float]:
    from nemo_migrate.diagnostics import Diagnostics
    from nemo_migrate.diff import automodel_side
    from nemo_migrate.semantics import facts

    side = automodel_side(path, path.name, Diagnostics(), None, None)
    return facts(side.view, side.ctx)["lr.schedule"].value


def _runtime_series(path: Path) -> list[float]:
    from nemo_migrate.runtime.api import RunOptions
    from nemo_migrate.runtime.config import effective_config
    from nemo_migrate.runtime.optim import StepScheduler, build_lr_scheduler
    from nemo_migrate.runtime.spec import resolve

    spec = resolve(effective_config(path), RunOptions(config=path, proxy_model="tiny"), file=str(path), check_files=False)

    class Loader:  # 1000 micro-batches: an epoch is longer than the run, so total steps = max_steps
        def __len__(self):
            return 1000

    steps = StepScheduler(grad_acc_steps=spec.step.grad_acc_steps, dataloader=Loader(), num_epochs=spec.step.num_epochs,
                          max_steps=spec.step.max_steps, ckpt_every_steps=None, save_checkpoint_every_epoch=False,
                          validate_on_checkpoint=False, val_every_steps=None)
    opt = _opt(spec.optim.kwargs["lr"], spec.optim.kwargs["weight_decay"])
    sch = build_lr_scheduler(opt, spec.lr_scheduler, total_steps=steps.total_steps)
    out = []
    for _ in range(steps.max_steps):
        out.append(opt.param_groups[0]["lr"])
        sch.step(1)
    return out


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_diff_and_the_runtime_get_the_same_lr_series(tmp_path, sched):
    """The point of issue 16: `diff` and `run` read one YAML into the same learning rate at every step (WSD and
    inverse-square-root included, which diff used to compute as cosine)."""
    pytest.importorskip("torch")
    p = tmp_path / "config.yaml"
    p.write_text(YAML.format(sched=sched))
    diff, run = _diff_series(p), _runtime_series(p)
    assert len(diff) == len(run) == 40 and diff == run
    if "WSD" in sched:  # stable at the peak until the last 10 steps, then down to min_lr
        assert diff[4:30] == pytest.approx([3e-4] * 26, rel=1e-12) and diff[29] == 3e-4 and diff[-1] < 3e-4
    if HAS_AUTOMODEL:  # and both are what real Automodel 0.7 computes for the YAML
        from types import SimpleNamespace

        import yaml
        from nemo_automodel.components.optim.optimizer import LRSchedulerConfig

        opt = _opt(3e-4, 0.01)
        section = {k: values.translate_value(v) for k, v in (yaml.safe_load(sched) or {}).items()}
        ref = LRSchedulerConfig(**section).build(opt, SimpleNamespace(epoch_len=None, num_epochs=100, max_steps=40))[0]
        real = []
        for _ in range(40):
            real.append(opt.param_groups[0]["lr"])
            ref.step(1)
        assert diff == pytest.approx(real, rel=1e-12, abs=1e-18)


# ---------------------------------------------------------------------------------------------- one schema

def test_the_runtime_and_diff_read_one_schema():
    """The section key sets are the YAML's: strict sections, strategies, dataset classes, the runtime's own section."""
    assert "_target_" in schema.section_keys("step_scheduler")  # 0.7 drops it (recipes/_typed_config.py:74-77)
    assert schema.strategy_keys("ddp") >= {"broadcast_buffers", "tp_size", "_target_"} and schema.strategy_keys("x") is None
    assert schema.dataset_fields("MockIterableDataset") == {"vocab_size", "seq_len", "num_samples", "batch_size",
                                                          "exclude_token_ids"}
    assert "nemo_compat" not in schema.top_level() and "lora_tied_a" in schema.ours("nemo_compat")
    assert schema.class_defaults("optimizer", "torch.optim.AdamW")["weight_decay"] == 0.01
    assert schema.class_defaults("optimizer", "torch.optim.Adam")["weight_decay"] == 0.0
    assert schema.default("lr_scheduler.lr_warmup_steps") is schema.MISSING  # a formula of the run
    assert schema.default("seed") == 42 and schema.default("peft.dim") == 8


# ---------------------------------------------------------------------------------------------- all errors at once

def test_the_runtime_reports_every_problem_of_a_config_together(tmp_path):
    from nemo_migrate.runtime.api import RunOptions
    from nemo_migrate.runtime.config import effective_config
    from nemo_migrate.runtime.errors import RunError
    from nemo_migrate.runtime.spec import ConfigErrors, resolve

    p = tmp_path / "bad.yaml"
    p.write_text((YAML.format(sched="{lr_warmup_steps: 50, lr_decay_steps: 10}") + textwrap.dedent("""\
        peft: {_target_: nemo_automodel.components._peft.lora.PeftConfig, rank: 8, dropout: 1.5}
        distributed: {strategy: fsdp2, cp_size: 2}
        nemo_compat: {tied_a: true}
        """)).replace("max_steps: 40", "max_step: 40"))
    lines: dict[str, str] = {}
    cfg = effective_config(p, lines=lines)
    with pytest.raises(ConfigErrors) as e:
        resolve(cfg, RunOptions(config=p, proxy_model="tiny", nproc_per_node=2), file=str(p), check_files=False, lines=lines)
    got = {x.key: x.file for x in e.value.errors}
    assert set(got) == {"step_scheduler.max_step", "distributed.cp_size", "peft.rank", "peft.dropout",
                        "nemo_compat.tied_a", "lr_scheduler.lr_warmup_steps"}, got
    text = p.read_text().splitlines()
    for key, where in got.items():  # each at its line
        line = int(where.rsplit(":", 1)[1])
        assert key.split(".")[0] in text[line - 1] or key.split(".")[-1] in text[line - 1], (key, where)
    msg = str(e.value)
    assert msg.startswith("6 problems in the config") and all(k in msg for k in got) and "did you mean `max_steps`" in msg
    assert isinstance(e.value, RunError) and e.value.key == "step_scheduler.max_step"  # the first, as before
    # one problem stays one plain paragraph
    p.write_text(YAML.format(sched="{}").replace("max_steps: 40", "max_step: 40"))
    with pytest.raises(RunError) as one:
        resolve(effective_config(p), RunOptions(config=p, proxy_model="tiny"), file=str(p), check_files=False)
    assert not isinstance(one.value, ConfigErrors) and "\n" not in str(one.value)
