"""Precedence, NeMo's validation, and the semantics of the mappings (LR schedule, LoRA targets, model ids)."""
import math
import textwrap
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import MigrateError

SEED = Path(__file__).resolve().parent.parent / "golden" / "seed" / "input"


def conv(source=SEED, **kw):
    return convert(Options(source=source, **kw))


def variant(c, name):
    return next(v for v in c.variants if v.name == name)


# ---------------------------------------------------------------- precedence: factory < recipe.py < YAML < CLI

def test_precedence_chain_on_the_seed_job():
    c = conv(sets=["trainer.max_steps=77"])
    job = variant(c, "fp8").job
    tp = job.knob("trainer.strategy.tensor_model_parallel_size")
    assert tp.value == 4 and str(tp.prov) == "config-fp8.yaml:18"          # YAML beats the recipe's TP 8
    assert tp.replaced[-1].value == 8 and "LoRA branch" in str(tp.replaced[-1].prov)
    seq = job.knob("data.seq_length")
    assert str(seq.prov) == "config-fp8.yaml:3" and str(seq.replaced[0].prov) == "recipe.py:18"
    ms = job.knob("trainer.max_steps")
    assert ms.value == 77 and "--set" in str(ms.prov)                     # CLI beats YAML
    assert job.value("optim.lr_scheduler.max_steps") == 77                 # NeMo copies it into the scheduler


def test_run_sh_overrides_beat_yaml(tmp_path):
    import shutil
    d = tmp_path / "job"
    shutil.copytree(SEED, d)
    text = (d / "run.sh").read_text().replace("    -v", "    -v trainer.max_steps=20 optim.config.lr=2e-5")
    (d / "run.sh").write_text(text)
    job = variant(conv(d), "fp16").job
    assert job.value("trainer.max_steps") == 20 and job.value("optim.config.lr") == 2e-5
    assert str(job.knob("trainer.max_steps").prov).startswith("run.sh:")


# ---------------------------------------------------------------- NeMo validation as errors with file:line

def test_world_not_divisible_by_tp(tmp_path):
    with pytest.raises(MigrateError) as e:
        conv(sets=["trainer.strategy.tensor_model_parallel_size=8"])
    err = [d for d in e.value.diags.errors if d.code == "NM213"]
    assert err and "world 4" in err[0].message and err[0].hint


def test_gbs_not_divisible(tmp_path):
    with pytest.raises(MigrateError) as e:
        conv(sets=["data.global_batch_size=6", "data.micro_batch_size=4"])
    assert any(d.code == "NM214" for d in e.value.diags.errors)


def test_missing_dataset_root_is_reported(tmp_path):
    with pytest.raises(MigrateError) as e:
        conv(sets=["data.dataset_root=None"])
    assert any(d.code in ("NM202", "NM210") for d in e.value.diags.errors)


def test_template_must_end_with_label(tmp_path):
    with pytest.raises(MigrateError) as e:
        conv(sets=["data.dataset_kwargs.label_key=prompt"])
    assert any(d.code == "NM221" for d in e.value.diags.errors)


def test_all_errors_reported_together():
    with pytest.raises(MigrateError) as e:
        conv(sets=["trainer.max_stesp=5", "optim.config.lrr=1", "peft.dimm=4"])
    codes = [d.code for d in e.value.diags.errors]
    assert codes.count("NM201") == 3  # three typos, all reported in one run (same --set in both variants: once)


# ---------------------------------------------------------------- the LR schedule, step by step

def nemo_lr(step, lr, W, M, min_lr):
    """NeMo CosineAnnealing (constant_steps=0): nemo/core/optim/lr_scheduler.py (WarmupPolicy._get_warmup_lr, _cosine_annealing)."""
    if W > 0 and step <= W:
        return lr * (step + 1) / (W + 1)
    if step > M:
        return min_lr
    return (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - W) / (M - W))) + min_lr


def automodel_lr(n, s):
    """Automodel 0.7 OptimizerParamScheduler.get_lr (components/optim/scheduler.py), step(0) at construction, step(1) per step."""
    max_lr, init_lr, W, D, min_lr = s["max_lr"], s["init_lr"], s["lr_warmup_steps"], s["lr_decay_steps"], s["min_lr"]
    assert W < D and init_lr <= max_lr and D > 0  # its asserts
    if W > 0 and n <= W:
        return init_lr + (max_lr - init_lr) * n / W
    if n > D:
        return min_lr
    ratio = (n - W) / (D - W)
    return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (max_lr - min_lr)


@pytest.mark.parametrize("W,M,min_lr", [(50, 30, 0.0), (50, 50, 0.0), (50, 51, 0.0), (10, 100, 1e-6), (0, 40, 0.0), (1, 2, 0.0), (99, 1000, 1e-5)])
def test_lr_schedule_matches_nemo_every_step(W, M, min_lr):
    c = conv(sets=[f"optim.lr_scheduler.warmup_steps={W}", f"trainer.max_steps={M}", f"optim.lr_scheduler.min_lr={min_lr}"])
    t = {p: tv.value for p, tv in variant(c, "fp16").targets.items()}
    lr = t["optimizer.lr"]
    s = {"max_lr": lr, "init_lr": t["lr_scheduler.init_lr"], "lr_warmup_steps": t["lr_scheduler.lr_warmup_steps"],
         "lr_decay_steps": t["lr_scheduler.lr_decay_steps"], "min_lr": t["lr_scheduler.min_lr"]}
    for step in range(M):
        assert automodel_lr(step, s) == pytest.approx(nemo_lr(step, lr, W, M, min_lr), rel=1e-9, abs=1e-15), step


# ---------------------------------------------------------------- LoRA targets, model ids, FP8 + LoRA

def test_seed_lora_targets_and_fused_param_counts():
    v = variant(conv(), "fp16")
    assert v.targets["peft.target_modules"].value == ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]
    o = next(o for o in v.outcomes if o.path == "peft.target_modules")
    assert o.status == "approximate" and "87,818,240 vs 103,546,880" in o.reason  # reference §4.1 counts for 70B r=8


def test_local_checkpoint_guess_and_model_override(tmp_path):
    v = variant(conv(), "fp16")
    assert v.targets["model.pretrained_model_name_or_path"].value == "meta-llama/Llama-3.3-70B-Instruct"
    assert any(n.kind == "pre-step" and "export_ckpt" in n.text for n in v.notes)
    hf = tmp_path / "l33-hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    v = variant(conv(model=str(hf)), "fp16")
    assert v.targets["model.pretrained_model_name_or_path"].value == str(hf)


def test_fp8_with_lora_never_leaves_an_adapted_module_to_fp8():
    v = variant(conv(), "fp8")
    assert v.targets["fp8.enabled"].value is False
    assert v.targets["fp8.enabled"].status == "unsupported"
    v = variant(conv(sets=["peft.target_modules=['linear_qkv']"]), "fp8")
    assert v.targets["fp8.enabled"].value is True
    filt = v.targets["fp8.filter_fqns"].value
    assert {"q_proj", "k_proj", "v_proj", "lm_head"} <= set(filt) and "down_proj" not in filt


def test_warmup_longer_than_run_is_still_valid():
    v = variant(conv(), "fp16")  # warmup 50, max_steps 30 (the guide commented lr_warmup_steps out because of this)
    assert v.targets["lr_scheduler.lr_warmup_steps"].value == 50 and v.targets["lr_scheduler.lr_decay_steps"].value == 51


def test_dataset_and_eos():
    v = variant(conv(), "fp16")
    t = {p: tv.value for p, tv in v.targets.items()}
    assert t["dataset.path_or_dataset_id"] == "/mount/models/data/training.jsonl"
    assert t["validation_dataset.path_or_dataset_id"] == "/mount/models/data/validation.jsonl"
    assert t["dataset.column_mapping"] == {"context": "prompt", "answer": "completion"}
    assert t["dataset.tokenizer.add_eos_token"] is True and t["dataset.truncation"] == "longest_first"


def test_relative_hub_like_path_is_made_local(tmp_path):
    v = variant(conv(sets=["data.dataset_root=mydata"]), "fp16")
    # 'mydata/training.jsonl' would be taken for a Hub id by ColumnMappedTextInstructionDataset
    assert v.targets["dataset.path_or_dataset_id"].value == "./mydata/training.jsonl"


def test_epochs_exact_when_the_file_is_large_enough(tmp_path):
    import shutil
    d = tmp_path / "job"
    shutil.copytree(SEED, d)
    data = d / "data"
    data.mkdir()
    (data / "training.jsonl").write_text("".join('{"prompt": "p%d", "completion": "c"}\n' % i for i in range(240)))
    (data / "validation.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    v = variant(conv(d, sets=["data.dataset_root=data"]), "fp16")
    o = next(o for o in v.outcomes if o.rule == "SCH002")
    assert o.status == "exact"  # 240 >= GBS 8 x 30 steps
    (data / "training.jsonl").write_text('{"prompt": "p", "completion": "c"}\n' * 3)
    v = variant(conv(d, sets=["data.dataset_root=data"]), "fp16")
    assert next(o for o in v.outcomes if o.rule == "SCH002").status == "approximate"
