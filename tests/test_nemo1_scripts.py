"""NeMo 1.0 and NeMo-Aligner jobs launched the way their docs launch them: a run.sh calling the training script with
Hydra overrides and no YAML (the script's shipped default config), SteerLM / CAI SFT, --config-name pointing at a
shipped or an unknown config, full SFT, epoch-based Aligner runs, and NeMo's CosineAnnealing with constant_steps
checked against Automodel's scheduler at every step."""
import json
import math
from pathlib import Path

import pytest

from nemo_migrate import knowledge
from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import Diagnostics, MigrateError
from nemo_migrate.ir import Provenance
from nemo_migrate.sources import nemo1
from nemo_migrate.rules.transforms.nemo1 import automodel_epoch_len
from nemo_migrate.rules.transforms.optim import nemo_cosine_hold

NEMO = "/opt/NeMo/examples/nlp/language_modeling/tuning"
ALIGNER = "/opt/NeMo-Aligner/examples/nlp/gpt"


def _job(tmp_path: Path, run_sh: str, files: dict[str, str] | None = None) -> Path:
    (tmp_path / "run.sh").write_text(run_sh)
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def _t(conv, path):
    tv = conv.variants[0].targets.get(path)
    return None if tv is None else tv.value


def _errors(ei, code):
    return [d for d in ei.value.diags.errors if d.code == code]


def _chat_rows(n: int) -> str:
    row = {"system": "", "mask": "User", "conversations": [{"from": "User", "value": "q"}, {"from": "Assistant", "value": "a"}]}
    return "".join(json.dumps(row) + "\n" for _ in range(n))


# ---------------------------------------------------------------------------------------------- the formulas

def nemo_lr(step: int, *, lr: float, warmup: int, constant: int, max_steps: int, min_lr: float) -> float:
    """NeMo's CosineAnnealing (nemo/core/optim/lr_scheduler.py, NeMo v2.0.0; the same class in NeMo 1.x): the LR the
    optimizer uses at 0-based step ``step`` (torch's _LRScheduler: last_epoch = step)."""
    decay_steps = max_steps - (constant + warmup)  # WarmupAnnealHoldPolicy.__init__

    def linear_warmup_with_cosine_annealing(s):  # _linear_warmup_with_cosine_annealing(max_lr=base_lr, ...)
        assert lr > min_lr
        if warmup > 0 and s <= warmup:
            return lr * float(s) / float(warmup)
        if s > warmup + decay_steps:
            return min_lr
        decay_ratio = float(s - warmup) / float(decay_steps)
        assert 0.0 <= decay_ratio <= 1.0
        return min_lr + 0.5 * (math.cos(math.pi * decay_ratio) + 1.0) * (lr - min_lr)

    # WarmupAnnealHoldPolicy.get_lr with CosineAnnealing's _get_warmup_lr / _get_constant_lr / _get_lr
    if warmup > 0 and step <= warmup:
        if constant == 0:
            return lr * (step + 1) / (warmup + 1)
        return linear_warmup_with_cosine_annealing(step)
    if constant > 0 and (warmup + decay_steps) < step <= max_steps:
        return linear_warmup_with_cosine_annealing(step)
    if step > max_steps:
        return min_lr
    if constant == 0:  # _cosine_annealing(lr, step - W, max_steps - W, min_lr)
        return (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (max_steps - warmup))) + min_lr
    return linear_warmup_with_cosine_annealing(step)


def automodel_lr(num_steps: int, *, base_lr: float, sched: dict) -> float:
    """Automodel 0.7 LRSchedulerConfig.build + OptimizerParamScheduler (components/optim/{optimizer,scheduler}.py):
    the LR at num_steps = the optimizer step (step(0) at construction, step(1) after each optimizer step)."""
    init_lr = sched.get("init_lr", 0.1 * base_lr)
    max_lr = float(sched.get("max_lr", base_lr))
    min_lr = sched.get("min_lr", 0.01 * base_lr)
    warm, decay, style = sched["lr_warmup_steps"], sched["lr_decay_steps"], sched.get("lr_decay_style", "cosine")
    assert min_lr >= 0.0 and max_lr >= min_lr and init_lr <= max_lr  # OptimizerParamScheduler.__init__
    assert decay > 0 and warm < decay
    if warm > 0 and num_steps <= warm:
        return init_lr + (max_lr - init_lr) * float(num_steps) / float(warm)
    if style == "constant":
        return max_lr
    if num_steps > decay:
        return min_lr
    ratio = float(num_steps - warm) / float(decay - warm)
    assert 0.0 <= ratio <= 1.0
    return min_lr + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (max_lr - min_lr)


def _sched_of(conv) -> dict:
    return {p.split(".", 1)[1]: tv.value for p, tv in conv.variants[0].targets.items() if p.startswith("lr_scheduler.")}


CASES = [  # (lr, warmup, constant_steps, max_steps, min_lr): decay over [W, M - C], or M <= W + C (min_lr after warm-up)
    (6e-6, 1, 200, 800, 5e-6),        # NeMo-Aligner SteerLM docs
    (3e-5, 10, 1000, 1000, 9e-7),     # NeMo-Aligner gpt_sft.yaml with ~1000 steps: min_lr from step 11
    (3e-5, 10, 1000, 8, 9e-7),        # fewer steps than the warm-up
    (3e-5, 10, 1000, 1011, 9e-7),     # one decay step
    (3e-5, 10, 1000, 5000, 9e-7),
    (1e-4, 50, 100, 1000, 0.0),
    (1e-4, 0, 100, 1000, 1e-5),       # no warm-up
    (1e-4, 0, 2000, 1000, 1e-5),      # no warm-up, max_steps < constant_steps: min_lr from the first step
    (2e-5, 10, 1, 10, 0.0),           # max_steps == warmup
]


@pytest.mark.parametrize("lr,w,c,m,min_lr", CASES)
def test_constant_steps_schedule_is_the_same_lr_at_every_step(lr, w, c, m, min_lr):
    sched, _ = nemo_cosine_hold(lr, w, c, m, min_lr)
    for s in range(m + 3):  # every step that trains (0..m-1), and a few beyond
        want = nemo_lr(s, lr=lr, warmup=w, constant=c, max_steps=m, min_lr=min_lr)
        got = automodel_lr(s, base_lr=lr, sched=sched)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-18), (s, sched)


def test_constant_steps_schedule_matches_automodel_own_scheduler():
    """The same check through real Automodel 0.7's OptimizerParamScheduler (torch on CPU)."""
    torch = pytest.importorskip("torch")
    sched_mod = pytest.importorskip("nemo_automodel.components.optim.scheduler")
    for lr, w, c, m, min_lr in CASES:
        vals, _ = nemo_cosine_hold(lr, w, c, m, min_lr)
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        s = sched_mod.OptimizerParamScheduler(
            optimizer=opt, init_lr=vals.get("init_lr", 0.1 * lr), max_lr=vals.get("max_lr", lr), min_lr=vals["min_lr"],
            lr_warmup_steps=vals["lr_warmup_steps"], lr_decay_steps=vals["lr_decay_steps"], lr_decay_style=vals["lr_decay_style"],
            start_wd=0.0, end_wd=0.0, wd_incr_steps=m, wd_incr_style="constant")
        for step in range(m):
            want = nemo_lr(step, lr=lr, warmup=w, constant=c, max_steps=m, min_lr=min_lr)
            assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), (lr, w, c, m, step)
            s.step(1)


def test_the_old_mapping_was_wrong_at_the_first_steps():
    """Why LRS001 treats constant_steps > 0 apart: the lr/(W+1) start and decay over max_steps are not NeMo's hold variant."""
    lr, w, c, m, min_lr = 3e-5, 10, 1000, 1000, 9e-7
    old = {"init_lr": lr / (w + 1), "lr_warmup_steps": w, "lr_decay_steps": m, "min_lr": min_lr}
    assert automodel_lr(0, base_lr=lr, sched=old) != pytest.approx(nemo_lr(0, lr=lr, warmup=w, constant=c, max_steps=m, min_lr=min_lr))
    assert automodel_lr(500, base_lr=lr, sched=old) > 10 * nemo_lr(500, lr=lr, warmup=w, constant=c, max_steps=m, min_lr=min_lr)


@pytest.mark.parametrize("lr,w,c,m,min_lr,what", [(1e-5, 10, 100, 500, 1e-5, "max_lr > min_lr"), (1e-4, 0, 100, 100, 0.0, "divides by zero")])
def test_constant_steps_settings_that_fail_in_nemo_are_errors(lr, w, c, m, min_lr, what):
    with pytest.raises(ValueError, match=what):
        nemo_cosine_hold(lr, w, c, m, min_lr)


# ---------------------------------------------------------------------------------------------- docs-style launches, no YAML

STEERLM = f"""#!/bin/bash
# SteerLM attribute-conditioned SFT, as NeMo-Aligner's docs launch it (no YAML: the script's gpt_sft.yaml)
python {ALIGNER}/train_gpt_sft.py \\
     trainer.num_nodes=1 \\
     trainer.devices=8 \\
     trainer.precision=bf16 \\
     trainer.sft.max_epochs=1 \\
     trainer.sft.max_steps=800 \\
     trainer.sft.val_check_interval=800 \\
     trainer.sft.save_interval=800 \\
     model.megatron_amp_O2=True \\
     model.restore_from_path=/models/llama3-70b.nemo \\
     model.tensor_model_parallel_size=8 \\
     model.optim.lr=6e-6 \\
     model.optim.sched.constant_steps=200 \\
     model.optim.sched.warmup_steps=1 \\
     model.optim.sched.min_lr=5e-6 \\
     model.answer_only_loss=True \\
     model.data.chat=True \\
     model.data.num_workers=0 \\
     model.data.chat_prompt_tokens.system_turn_start=\\'\\<extra_id_0\\>\\' \\
     model.data.train_ds.max_seq_length=4096 \\
     model.data.train_ds.micro_batch_size=1 \\
     model.data.train_ds.global_batch_size=128 \\
     model.data.train_ds.file_path=data/oasst/train_labeled_2ep.jsonl \\
     model.data.train_ds.hf_dataset=True \\
     model.data.validation_ds.file_path=data/oasst/val_labeled.jsonl \\
     exp_manager.explicit_log_dir=/results/acsft_70b
"""


def test_steerlm_sft_from_the_docs_uses_the_shipped_aligner_config(tmp_path):
    conv = convert(Options(source=_job(tmp_path, STEERLM)))
    v = conv.variants[0]
    assert v.output == "gpt_sft.yaml"
    notes = [d for d in conv.diags.items if d.code == "NM241"]
    assert notes and "NeMo-Aligner v0.7.0" in notes[0].message and notes[0].file == "run.sh"
    assert _t(conv, "step_scheduler.max_steps") == 800 and _t(conv, "step_scheduler.num_epochs") == 1
    assert _t(conv, "step_scheduler.global_batch_size") == 128 and _t(conv, "distributed.tp_size") == 8
    assert _t(conv, "optimizer.lr") == pytest.approx(6e-6)
    assert "peft" not in {p.split(".")[0] for p in v.targets}  # gpt_sft.yaml: peft_scheme none
    # the defaults' release is in the report
    assert "NVIDIA/NeMo-Aligner v0.7.0 (0d72d282" in conv.files["migration-report.md"]
    # LR: the same at every step as NeMo's CosineAnnealing with constant_steps=200 over trainer.sft.max_steps=800
    sched = _sched_of(conv)
    assert sched["init_lr"] == 0.0 and sched["lr_decay_steps"] == 600
    for s in range(800):
        assert automodel_lr(s, base_lr=6e-6, sched=sched) == pytest.approx(nemo_lr(s, lr=6e-6, warmup=1, constant=200, max_steps=800, min_lr=5e-6),
                                                                           rel=1e-12), s
    # the header and the report name the shipped config, not where it is installed
    assert str(knowledge.MAPPINGS) not in conv.files["gpt_sft.yaml"] + conv.files["migration-report.md"]


CAI = """#!/bin/bash
# SL-CAI (Constitutional AI) step 3 from NeMo-Aligner's docs: epoch-based (trainer.sft.max_steps keeps -1)
python examples/nlp/gpt/train_gpt_sft.py \\
   model.megatron_amp_O2=True \\
   model.restore_from_path=/models/mistral/mistral-7b.nemo \\
   model.data.num_workers=0 \\
   model.data.train_ds.micro_batch_size=1 \\
   model.data.train_ds.global_batch_size=128 \\
   model.data.train_ds.file_path=data/cai_revisions.jsonl \\
   model.data.train_ds.max_seq_length=4096 \\
   model.data.validation_ds.file_path=data/cai_revisions.jsonl \\
   model.data.chat=True \\
   exp_manager.explicit_log_dir=/results/sl_cai \\
   model.optim.lr=1e-6 \\
   trainer.devices=8 \\
   trainer.sft.max_epochs=2 \\
   trainer.sft.val_check_interval=50 \\
   trainer.sft.save_interval=50
"""


def test_cai_epoch_based_run_sizes_steps_and_lr_from_the_data(tmp_path):
    conv = convert(Options(source=_job(tmp_path, CAI, {"data/cai_revisions.jsonl": _chat_rows(1000)})))
    per = 1000 // 128  # NeMo-Aligner: samples // GBS full steps per epoch, the remainder dropped
    assert _t(conv, "step_scheduler.max_steps") == 2 * per
    assert _t(conv, "step_scheduler.num_epochs") == 2
    n1013 = next(o for o in conv.variants[0].outcomes if o.rule == "N1013")
    assert n1013.status == "approximate" and "drops 104 samples" in n1013.reason  # Automodel: a short 8th step per epoch
    sched = _sched_of(conv)  # gpt_sft.yaml: warmup 10, constant_steps 1000, min_lr 9e-7; 14 steps stay in warm-up
    for s in range(2 * per):
        assert automodel_lr(s, base_lr=1e-6, sched=sched) == pytest.approx(
            nemo_lr(s, lr=1e-6, warmup=10, constant=1000, max_steps=2 * per, min_lr=9e-7), rel=1e-12, abs=1e-18)


def test_epoch_based_run_whose_data_divides_evenly_is_exact(tmp_path):
    run = CAI.replace("global_batch_size=128", "global_batch_size=8").replace("trainer.devices=8", "trainer.devices=1")
    conv = convert(Options(source=_job(tmp_path, run, {"data/cai_revisions.jsonl": _chat_rows(96)})))
    assert _t(conv, "step_scheduler.max_steps") == 2 * 12 and _t(conv, "step_scheduler.num_epochs") == 2
    assert next(o for o in conv.variants[0].outcomes if o.rule == "N1013").status == "exact"
    assert automodel_epoch_len(96, 8, 1, 1) == 12


def test_epoch_based_run_without_the_data_runs_by_epochs_and_says_the_schedule_is_unknown(tmp_path):
    conv = convert(Options(source=_job(tmp_path, CAI)))  # data/cai_revisions.jsonl is not there
    assert _t(conv, "step_scheduler.num_epochs") == 2
    assert _t(conv, "step_scheduler.max_steps") is None  # Automodel: num_epochs x epoch_len
    sched = _sched_of(conv)
    assert "lr_decay_steps" not in sched  # no silent guess of NeMo's decay length
    assert sched["init_lr"] == 0.0 and sched["lr_warmup_steps"] == 10  # the hold variant warms up from 0
    n1013 = [o for o in conv.variants[0].outcomes if o.rule == "N1013"]
    assert n1013 and {o.status for o in n1013} == {"unsupported"}
    assert "lr_decay_steps = max(T - 1000, 11)" in n1013[0].reason and "T = 2 x (samples // 128)" in n1013[0].reason
    assert any(d.code == "NM410" and "N1013" in d.message for d in conv.diags.items)
    # the way out the reason names: the step count, from the data or given
    conv = convert(Options(source=tmp_path, sets=["trainer.sft.max_steps=14"]))
    assert _t(conv, "step_scheduler.max_steps") == 14 and _t(conv, "step_scheduler.num_epochs") == 2
    assert _sched_of(conv)["lr_decay_steps"] == 11


def test_epoch_based_run_without_the_data_and_a_plain_cosine_is_approximate(tmp_path):
    conv = convert(Options(source=_job(tmp_path, CAI), sets=["model.optim.sched.constant_steps=0"]))
    assert "lr_decay_steps" not in _sched_of(conv)
    assert {o.status for o in conv.variants[0].outcomes if o.rule == "N1013"} == {"approximate"}


def test_epoch_based_run_with_a_constant_lr_needs_no_step_count(tmp_path):
    conv = convert(Options(source=_job(tmp_path, CAI), sets=["~model.optim.sched"]))
    assert _t(conv, "step_scheduler.num_epochs") == 2
    assert _t(conv, "step_scheduler.max_steps") is None  # Automodel runs num_epochs epochs
    assert not _sched_of(conv)  # no lr_scheduler section: a constant LR in both


def test_aligner_step_limit_keeps_the_epoch_cap(tmp_path):
    """NeMo-Aligner stops at min(max_steps, max_epochs x steps per epoch): a 1-epoch file ends a 1000-step run early."""
    run = CAI + "   trainer.sft.max_steps=1000\n"
    run = run.replace("trainer.sft.max_epochs=2", "trainer.sft.max_epochs=1").replace("   trainer.sft.save_interval=50\n", "   trainer.sft.save_interval=50 \\\n")
    conv = convert(Options(source=_job(tmp_path, run, {"data/cai_revisions.jsonl": _chat_rows(1024)})))
    assert _t(conv, "step_scheduler.max_steps") == 1000 and _t(conv, "step_scheduler.num_epochs") == 1
    assert next(o for o in conv.variants[0].outcomes if o.rule == "N1013").status == "exact"  # 1024 = 8 x 128


NEMO1_LORA = f"""#!/bin/bash
# NeMo 1.0 LoRA as NeMo's docs launch it: the script's own config plus overrides
torchrun --nproc_per_node=8 {NEMO}/megatron_gpt_finetuning.py \\
    trainer.devices=8 \\
    trainer.num_nodes=1 \\
    trainer.precision=bf16 \\
    trainer.max_steps=1000 \\
    trainer.val_check_interval=100 \\
    model.restore_from_path=/models/llama2-7b.nemo \\
    model.peft.peft_scheme=lora \\
    model.global_batch_size=32 \\
    model.micro_batch_size=1 \\
    model.tensor_model_parallel_size=2 \\
    "model.data.train_ds.file_names=[/data/squad/train.jsonl]" \\
    "model.data.validation_ds.file_names=[/data/squad/val.jsonl]" \\
    exp_manager.create_early_stopping_callback=False
"""


def test_nemo1_lora_without_yaml_uses_the_shipped_finetuning_config(tmp_path):
    conv = convert(Options(source=_job(tmp_path, NEMO1_LORA)))
    v = conv.variants[0]
    assert v.output == "megatron_gpt_finetuning.yaml"
    assert _t(conv, "peft.dim") == 32 and _t(conv, "peft.alpha") == 32  # lora_tuning defaults of NeMo v2.1.0
    assert _t(conv, "step_scheduler.max_steps") == 1000 and _t(conv, "step_scheduler.global_batch_size") == 32
    sched = _sched_of(conv)  # warmup 50, constant_steps 0: LRS001's exact mapping
    assert sched["lr_warmup_steps"] == 50 and sched["lr_decay_steps"] == 1000
    for s in range(1000):
        assert automodel_lr(s, base_lr=1e-4, sched=sched) == pytest.approx(nemo_lr(s, lr=1e-4, warmup=50, constant=0, max_steps=1000, min_lr=0.0),
                                                                           rel=1e-12, abs=1e-18)
    assert "NVIDIA/NeMo v2.1.0 (633cb602" in conv.files["migration-report.md"]


def test_nemo1_constant_steps_is_exact_too(tmp_path):
    conv = convert(Options(source=_job(tmp_path, NEMO1_LORA), sets=["model.optim.sched.constant_steps=100"]))
    sched = _sched_of(conv)
    for s in range(1000):
        assert automodel_lr(s, base_lr=1e-4, sched=sched) == pytest.approx(nemo_lr(s, lr=1e-4, warmup=50, constant=100, max_steps=1000, min_lr=0.0),
                                                                           rel=1e-12, abs=1e-18)


def test_nemo1_max_steps_minus_one_is_refused_as_nemo_refuses_it(tmp_path):
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, NEMO1_LORA.replace("trainer.max_steps=1000", "trainer.max_steps=-1"))))
    d = _errors(ei, "NM246")[0]
    assert d.file == "run.sh" and "positive integer" in d.message
    assert not _errors(ei, "NM220")  # not NeMo 2's reason


def test_megatron_gpt_sft_is_full_sft_with_a_constant_lr(tmp_path):
    run = f"""#!/bin/bash
torchrun --nproc_per_node=8 {NEMO}/megatron_gpt_sft.py \\
  model.restore_from_path=/models/llama2-7b.nemo trainer.max_steps=1000 trainer.precision=bf16 trainer.devices=8 \\
  model.data.train_ds.file_names=[/d/train.jsonl] model.data.validation_ds.file_names=[/d/val.jsonl] \\
  model.global_batch_size=64 model.micro_batch_size=1 model.tensor_model_parallel_size=4
"""
    conv = convert(Options(source=_job(tmp_path, run)))
    v = conv.variants[0]
    assert not [p for p in v.targets if p.startswith("peft")]
    assert not _sched_of(conv)  # megatron_gpt_sft.yaml (NeMo v1.23.0) has no optim.sched
    assert _t(conv, "optimizer.lr") == pytest.approx(3e-5)
    assert not [o for o in v.outcomes if o.path.startswith("nemo1.model.peft")]
    assert not [o for o in v.outcomes if o.status == "unsupported"]  # test_ds ??? is read with .get(): no test set
    assert "NVIDIA/NeMo v1.23.0 (d2283e36" in conv.files["migration-report.md"]


def test_megatron_gpt_sft_ignores_a_peft_scheme(tmp_path):
    run = f"python {NEMO}/megatron_gpt_sft.py +model.peft.peft_scheme=lora model.restore_from_path=/models/llama2-7b.nemo " \
          "model.data.train_ds.file_names=[/d/t.jsonl] model.data.validation_ds.file_names=[/d/v.jsonl]\n"
    conv = convert(Options(source=_job(tmp_path, run)))
    assert not [p for p in conv.variants[0].targets if p.startswith("peft")]
    assert any(d.code == "NM245" and d.severity == "warning" for d in conv.diags.items)


# ---------------------------------------------------------------------------------------------- --config-path / --config-name

SFT_YAML = """# a NeMo-Aligner SFT config kept next to run.sh
trainer:
  devices: 4
  sft:
    max_steps: 200
    val_check_interval: 50
model:
  restore_from_path: /models/llama3-8b.nemo
  peft:
    peft_scheme: lora
    lora_tuning:
      adapter_dim: 16
  data:
    train_ds:
      file_path: /data/train.jsonl
      global_batch_size: 32
      micro_batch_size: 2
    validation_ds:
      file_path: /data/val.jsonl
"""


def test_config_name_in_the_job_directory_is_the_users_yaml(tmp_path):
    run = f"python {ALIGNER}/train_gpt_sft.py --config-path=conf --config-name=my_sft model.optim.lr=2e-5\n"
    conv = convert(Options(source=_job(tmp_path, run, {"conf/my_sft.yaml": SFT_YAML})))
    assert conv.variants[0].output == "my_sft.yaml"
    assert _t(conv, "peft.dim") == 16 and _t(conv, "peft.alpha") == 16  # Aligner: alpha = adapter_dim
    assert _t(conv, "step_scheduler.max_steps") == 200
    tv = conv.variants[0].targets["step_scheduler.global_batch_size"]
    assert tv.value == 32 and any(p.file == "conf/my_sft.yaml" for p in tv.provs)
    assert not [d for d in conv.diags.items if d.code == "NM241"]


def test_config_name_of_a_shipped_config_in_the_container_uses_the_shipped_copy(tmp_path):
    run = (f"python {ALIGNER}/train_gpt_sft.py --config-path={ALIGNER}/conf --config-name=gpt_sft trainer.sft.max_steps=100 "
           "model.restore_from_path=/models/llama3-8b.nemo model.data.train_ds.file_path=/d/t.jsonl model.data.validation_ds.file_path=/d/v.jsonl\n")
    conv = convert(Options(source=_job(tmp_path, run)))
    note = next(d for d in conv.diags.items if d.code == "NM241")
    assert note.severity == "note" and "--config-name gpt_sft" in note.message and note.line == 1
    assert _t(conv, "step_scheduler.max_steps") == 100


def test_unknown_config_name_is_a_located_error(tmp_path):
    run = f"echo start\npython {ALIGNER}/train_gpt_sft.py --config-path=/workspace/configs --config-name=gtp_sft trainer.sft.max_steps=10\n"
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, run)))
    d = _errors(ei, "NM006")[0]
    assert (d.file, d.line) == ("run.sh", 2) and "gtp_sft" in d.message and "gpt_sft" in d.hint
    assert not _errors(ei, "NM007")  # not the NeMo 2 "no recipe.py" error


def test_steerlm2_is_refused_with_the_reason(tmp_path):
    run = f"python {ALIGNER}/train_steerlm2.py --config-path={ALIGNER}/conf --config-name=gpt_sft trainer.sft.max_steps=800\n"
    with pytest.raises(MigrateError) as ei:  # refused at its line (by the launcher front end, or here)
        convert(Options(source=_job(tmp_path, run)))
    assert any(d.file == "run.sh" and d.line == 1 and "steerlm" in d.message.lower() for d in ei.value.diags.errors)
    # this front end's own refusal, for a launch line the launcher front end hands over
    launch = type("L", (), {"file": "run.sh", "line": 1, "script": f"{ALIGNER}/train_steerlm2.py", "config_name": None, "config_path": None})()
    d = Diagnostics()
    assert nemo1.locate_config(tmp_path, launch, d) is None
    err = next(x for x in d.errors if x.code == "NM242")
    assert (err.file, err.line) == ("run.sh", 1) and "KL" in err.message and "train_gpt_sft.py" in err.hint


def test_hydra_scripts_are_the_table_keys():
    names = nemo1.hydra_scripts()
    assert {"megatron_gpt_finetuning.py", "megatron_gpt_sft.py", "train_gpt_sft.py", "train_steerlm2.py"} <= names
    table = knowledge.load("nemo1/scripts.yaml")["scripts"]
    for name, e in table.items():
        assert {"format", "config", "label", "source"} <= set(e), name
        assert len(e["source"]["commit"]) == 40, name
        if e["format"] != "unsupported":
            head = nemo1.defaults_path(e).read_text().splitlines()[:6]
            assert any(e["source"]["commit"] in line for line in head), f"{e['defaults']}: header must name the commit"


# ---------------------------------------------------------------------------------------------- full SFT, shell variables

FULL_SFT = """# NeMo 1.0 full fine-tune: a megatron_gpt_sft.yaml-style config, no model.peft
trainer:
  devices: 8
  precision: bf16
  max_steps: 300
model:
  restore_from_path: /models/llama2-7b.nemo
  global_batch_size: 64
  micro_batch_size: 1
  tensor_model_parallel_size: 2
  data:
    train_ds:
      file_names: [/data/train.jsonl]
    validation_ds:
      file_names: [/data/val.jsonl]
"""


def test_full_sft_yaml_gets_no_peft_defaults(tmp_path):
    (tmp_path / "sft.yaml").write_text(FULL_SFT)
    conv = convert(Options(source=tmp_path / "sft.yaml"))
    v = conv.variants[0]
    assert not [p for p in v.targets if p.startswith("peft")]
    assert not [o for o in v.outcomes if o.path.startswith(("nemo1.model.peft", "peft."))]
    assert "megatron_gpt_sft.yaml of NVIDIA/NeMo v1.23.0" in conv.files["migration-report.md"]


def test_full_sft_yaml_launched_with_the_finetuning_script(tmp_path):
    run = f"torchrun --nproc_per_node=8 {NEMO}/megatron_gpt_finetuning.py --config-path=. --config-name=sft\n"
    conv = convert(Options(source=_job(tmp_path, run, {"sft.yaml": FULL_SFT})))
    v = conv.variants[0]
    assert not [p for p in v.targets if p.startswith("peft")]
    assert not [o for o in v.outcomes if o.path.startswith("nemo1.model.peft")]  # no adapter/LoRA defaults merged in
    assert any(d.code == "NM245" for d in conv.diags.items)  # said: read as full fine-tuning


def test_peft_scheme_none_drops_the_shipped_peft_settings(tmp_path):
    conv = convert(Options(source=_job(tmp_path, NEMO1_LORA.replace("peft_scheme=lora", "peft_scheme=none"))))
    assert not [p for p in conv.variants[0].targets if p.startswith("peft")]
    assert not [o for o in conv.variants[0].outcomes if o.path.startswith("nemo1.model.peft")]


def test_unknown_shell_variable_in_an_override_names_the_variable(tmp_path):
    run = NEMO1_LORA.replace("model.restore_from_path=/models/llama2-7b.nemo", "model.restore_from_path='${CKPT_DIR}/llama2.nemo'")
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, run)))
    d = _errors(ei, "NM243")[0]
    assert "CKPT_DIR" in d.message and d.key == "model.restore_from_path" and d.file == "run.sh"
    assert "--set model.restore_from_path=" in d.hint
    assert not _errors(ei, "NM233")  # not an OmegaConf interpolation error


def test_shell_variable_check_on_values_from_the_launcher():
    """The NeMo-1 side alone: a ${VAR} value from the launch line is an error; ${name} of a config key is OmegaConf's."""
    d = Diagnostics()
    prov = Provenance(kind="cli", file="run.sh", line=3)
    leaves = {"name": nemo1.Leaf("x", prov), "a": nemo1.Leaf("${MODEL}", prov), "b": nemo1.Leaf("run_${name}", prov),
              "c": nemo1.Leaf("$HOME/x", prov), "d": nemo1.Leaf("${MODEL}", Provenance(kind="cli", detail="--set"))}
    nemo1._shell_variables(leaves, d)
    assert sorted(x.key for x in d.errors) == ["a", "c"]


def test_no_yaml_and_no_script_known_is_still_the_nemo2_error(tmp_path):
    (tmp_path / "run.sh").write_text("torchrun --nproc_per_node=2 train.py --lr 1e-4\n")
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=tmp_path))
    assert not _errors(ei, "NM242") and not _errors(ei, "NM006")


def test_hostile_config_names_and_data_paths_give_diagnostics(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    run = f"python {ALIGNER}/train_gpt_sft.py --config-path=../../elsewhere --config-name=../x trainer.sft.max_steps=10\n"
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(job, run)))
    assert _errors(ei, "NM006")
    # an epoch-driven run whose "training file" is a device or a directory: not read, the run is sized by epochs
    conv = convert(Options(source=_job(job, CAI.replace("data/cai_revisions.jsonl", "/dev/zero"))))
    assert _t(conv, "step_scheduler.max_steps") is None
    assert nemo1.count_samples(["/dev/zero"], None) is None and nemo1.count_samples([str(tmp_path)], None) is None
