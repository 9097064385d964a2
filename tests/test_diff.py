"""nemo-migrate diff: normal forms, one test per comparison rule, validity findings, the guide pair, golden pairs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate import golden
from nemo_migrate.diff import run_diff

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed"
GUIDE = ROOT / "tests" / "fixtures" / "guide"


def rows(result):
    return {r.fact: r for r in result.rows}


def seed_vs(tmp_path, edit=None, name="config-fp16.yaml", text=None):
    """The seed NeMo job vs its converted config, after editing the converted config's text."""
    src = text if text is not None else (SEED / "expected" / name).read_text()
    if edit:
        for old, new in edit:
            assert old in src, old
            src = src.replace(old, new)
    p = tmp_path / name
    p.write_text(src)
    [res] = run_diff(SEED / "input" / name, p)
    return res


# ---------------------------------------------------------------- a job and its own conversion: no difference

@pytest.mark.parametrize("case", [c for c in golden.cases() if not (c / "diff").exists()], ids=lambda c: c.name)
def test_nemo_job_vs_its_conversion_has_no_difference(case):
    opts = golden.options_for(case)
    results = run_diff(opts.source, case / "expected", sets=opts.sets, model=opts.model, nproc=opts.nproc_per_node, nnodes=opts.nnodes)
    for r in results:
        bad = [(x.fact, x.verdict) for x in r.rows if x.verdict not in ("same", "approximate")]
        assert not bad and not r.different, bad


# ---------------------------------------------------------------- normal forms

def test_number_spellings_compare_equal(tmp_path):
    r = seed_vs(tmp_path, [("  lr: 0.0001 ", "  lr: 1e-4   ")])
    assert rows(r)["optimizer.lr"].verdict == "same" and not r.different


def test_star_proj_equals_the_megatron_four(tmp_path):
    r = seed_vs(tmp_path, [("['*.q_proj', '*.k_proj', '*.v_proj', '*.o_proj', '*.gate_proj', '*.up_proj', '*.down_proj']", "'*_proj'")])
    assert rows(r)["lora.modules"].verdict == "approximate" and not r.different  # the shared-A approximation stays visible


def test_batches_compare_as_global_local_and_accumulation(tmp_path):
    r = seed_vs(tmp_path, [("  global_batch_size: 8 ", "  global_batch_size: 16 ")])
    rs = rows(r)
    assert rs["batch.global"].verdict == "differs" and rs["batch.grad_accum"].verdict == "differs"
    assert "16 (GBS 16 / (local 1 x dp 1))" in rs["batch.grad_accum"].right.shown


def test_lr_compares_as_the_rate_at_every_step(tmp_path):
    r = seed_vs(tmp_path, [("  init_lr: 1.96078431372549e-06 ", "  init_lr: 2.0e-06 ")])
    assert rows(r)["lr.schedule"].verdict == "differs"
    r = seed_vs(tmp_path, [("  lr_decay_steps: 51 ", "  lr_decay_steps: 60 ")])  # warmup 50 > 30 steps: decay never reached
    assert rows(r)["lr.schedule"].verdict == "same"


# ---------------------------------------------------------------- one case per comparison rule (the fact must flip)

FLIPS = {
    "model": [("meta-llama/Llama-3.3-70B-Instruct  #", "meta-llama/Llama-3.1-70B  #")],
    "precision.model_dtype": [("  dtype: bfloat16 ", "  dtype: float32  ")],
    "parallel.tp_size": [("  tp_size: 4 ", "  tp_size: 2 ")],
    "parallel.sequence_parallel": [("  sequence_parallel: false", "  sequence_parallel: true ")],
    "steps.max": [("  max_steps: 30 ", "  max_steps: 40 ")],
    "steps.epoch_cap": [("  num_epochs: null ", "  num_epochs: 3    ")],
    "optimizer.class": [("torch.optim.AdamW ", "torch.optim.Adam  ")],
    "optimizer.betas": [("[0.9, 0.98]", "[0.9, 0.95]")],
    "optimizer.eps": [("  eps: 1.0e-05 ", "  eps: 1.0e-08 ")],
    "optimizer.weight_decay": [("  weight_decay: 0.1 ", "  weight_decay: 0.0 ")],
    "clip_grad_norm": [("  max_norm: 1.0 ", "  max_norm: 0.5 ")],
    "lora.dim": [("  dim: 8 ", "  dim: 4 ")],
    "lora.alpha": [("  alpha: 16 ", "  alpha: 32 ")],
    "lora.dropout": [("  dropout: 0.1 ", "  dropout: 0.0 ")],
    "lora.dropout_position": [("  dropout_position: pre ", "  dropout_position: post")],
    "lora.A_init": [("  lora_A_init: xavier ", "  lora_A_init: kaiming")],
    "data.train": [("/mount/models/data/training.jsonl", "/other/training.jsonl")],
    "data.validation": [("/mount/models/data/validation.jsonl", "/other/validation.jsonl")],
    "data.train.columns": [("    context: prompt\n    answer: completion\n  answer_only", "    question: prompt\n    answer: completion\n  answer_only")],
    "data.seq_length": [("  truncation: longest_first ", "  truncation: do_not_truncate ")],
    "data.eos": [("    add_eos_token: true ", "    add_eos_token: false")],
    "data.answer_only_loss": [("  answer_only_loss_mask: true ", "  answer_only_loss_mask: false")],
    "data.shuffle": [("  shuffle: true ", "  shuffle: false")],
    "seed": [("seed: 1234 ", "seed: 42   ")],
    "validation.every_steps": [("  val_every_steps: 10 ", "  val_every_steps: 20 ")],
    "validation.on_checkpoint": [("  validate_on_checkpoint: false", "  validate_on_checkpoint: true ")],
    "checkpoint.every_steps": [("  ckpt_every_steps: 50 ", "  ckpt_every_steps: 10 ")],
    "checkpoint.every_epoch": [("  save_checkpoint_every_epoch: false", "  save_checkpoint_every_epoch: true ")],
    "checkpoint.dir": [("/app/output/cust-llama33-70b/checkpoints", "/elsewhere/checkpoints")],
    "checkpoint.keep": [("  max_recent_checkpoints: 1 ", "  max_recent_checkpoints: 5 ")],
    "dist.timeout_minutes": [("  timeout_minutes: 30 ", "  timeout_minutes: 1  ")],
    "optimizer.lr": [("  lr: 0.0001 ", "  lr: 0.0002 ")],
    "precision.master_weights": [("  dtype: bfloat16 ", "  dtype: float32  ")],
    "precision.grad_reduce": [("  sequence_parallel: false", "  mp_policy: {param_dtype: bfloat16, reduce_dtype: bfloat16}\n  sequence_parallel: false")],
    "parallel.cp_size": [("  cp_size: 1 ", "  cp_size: 2 ")],
    "parallel.pp_size": [("  pp_size: 1 ", "  pp_size: 2 ")],
    "parallel.strategy": [("  strategy: fsdp2 ", "  strategy: ddp   ")],
    "batch.local": [("  local_batch_size: 1 ", "  local_batch_size: 2 ")],
    "lora.modules": [("['*.q_proj', '*.k_proj', '*.v_proj', '*.o_proj', '*.gate_proj', '*.up_proj', '*.down_proj']", "['*.q_proj', '*.v_proj']")],
    "lora.scale": [("  alpha: 16 ", "  alpha: 32 ")],
    "lora.dora": [("  dim: 8 ", "  use_dora: true\n  dim: 8 ")],
    "lora.dtype": [("  dim: 8 ", "  lora_dtype: float32\n  dim: 8 ")],
    "loss.reduction": [("nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy", "mypkg.losses.FocalLoss")],
    "data.bos_forced": [("    add_eos_token: true ", "    add_eos_token: true\n    add_bos_token: true ")],
    "validation.limit_samples": [("/mount/models/data/validation.jsonl", "/mount/models/data/validation.jsonl\n  limit_dataset_samples: 16")],
    "checkpoint.enabled": [("  enabled: true ", "  enabled: false")],
}


@pytest.mark.parametrize("fact", sorted(FLIPS))
def test_comparison_rule_catches_a_change(tmp_path, fact):
    r = seed_vs(tmp_path, FLIPS[fact])
    rs = rows(r)
    assert rs[fact].verdict == "differs", (fact, rs[fact].left and rs[fact].left.shown, rs[fact].right and rs[fact].right.shown)
    assert r.different


def test_no_decay_and_world_size_flip(tmp_path):
    case = golden.ROOT / "llama3-8b-full-ft"
    text = (case / "expected" / "config.yaml").read_text()
    p = tmp_path / "config.yaml"
    p.write_text(text.replace("wd_mult: 0.0", "wd_mult: 1.0"))
    [r] = run_diff(case / "input", p)
    assert rows(r)["optimizer.no_decay_on_norms_biases"].verdict == "differs"
    p.write_text(text)
    (tmp_path / "run.sh").write_text((case / "expected" / "run.sh").read_text().replace("nproc=8;", "nproc=4;"))
    [r] = run_diff(case / "input", p)
    assert rows(r)["launch.processes"].verdict == "differs" and rows(r)["batch.grad_accum"].verdict == "differs"


def test_fp8_and_packing_and_lora_presence_flip(tmp_path):
    text = (SEED / "expected" / "config-fp16.yaml").read_text()
    text += "packed_sequence:\n  packed_sequence_size: 4096\n"
    assert rows(seed_vs(tmp_path, text=text))["data.packing"].verdict == "differs"
    r = seed_vs(tmp_path, text=_drop_section((SEED / "expected" / "config-fp16.yaml").read_text(), "peft"))
    assert rows(r)["lora.enabled"].verdict == "differs" and rows(r)["lora.dim"].verdict == "only-left"
    r = seed_vs(tmp_path, text=_drop_section((SEED / "expected" / "config-fp16.yaml").read_text(), "lr_scheduler"))
    assert rows(r)["lr.schedule"].verdict == "differs" and "constant" in rows(r)["lr.schedule"].right.shown
    fp8 = (SEED / "expected" / "config-fp8.yaml").read_text().replace("['*.q_proj', '*.k_proj', '*.v_proj', '*.o_proj', '*.gate_proj', '*.up_proj', '*.down_proj']", "['*.q_proj']")
    fp8 = fp8.replace("  enabled: false ", "  enabled: true  ")
    r = seed_vs(tmp_path, text=fp8, name="config-fp8.yaml")
    assert rows(r)["fp8"].verdict == "differs"


def _drop_section(text, name):
    out, skip = [], False
    for l in text.splitlines():
        if l.startswith(name + ":"):
            skip = True
            continue
        if skip and (l.startswith("  ") or not l.strip()):
            continue
        skip = False
        out.append(l)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- validity findings (as real Automodel 0.7 treats the file)

def codes(r):
    return {f.code for f in r.findings}


@pytest.mark.parametrize("edit,code", [
    ([("seed: 1234 ", "rng:\n  _target_: nemo_automodel.components.training.rng.StatefulRNG\n  seed: 7\nseed: 1234 ")], "AM202"),
    ([("  strategy: fsdp2 ", "  _target_: nemo_automodel.components.distributed.ddp.DDPManager\n  strategy: fsdp2 ")], "AM205"),
    ([("  target_modules: [", "  match_all_linear: true\n  target_modules: [")], "AM210"),
    ([("['*.q_proj', '*.k_proj', '*.v_proj', '*.o_proj', '*.gate_proj', '*.up_proj', '*.down_proj']", "['gate_proj', '*.up_proj']")], "AM215"),
    ([("  lr_decay_steps: 51 ", "  lr_decay_steps: 50 ")], "AM216"),
    ([("  max_steps: 30 ", "  max_steps: 30\n  max_stesp: 3 ")], "AM209"),
    ([("  dtype: bfloat16 ", "  dtype: bf16-mixed ")], "AM206"),
    ([("  enabled: true  ", "  enabled: true  ")], None),
])
def test_validity_findings(tmp_path, edit, code):
    r = seed_vs(tmp_path, edit)
    if code:
        assert code in codes(r), [f.render() for f in r.findings]
    else:
        assert not any(f.severity == "error" for f in r.findings)


def test_fp8_with_lora_finding(tmp_path):
    text = (SEED / "expected" / "config-fp8.yaml").read_text().replace("  enabled: false ", "  enabled: true  ")
    text = text.replace("[lm_head, down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj]", "[lm_head]")
    r = seed_vs(tmp_path, text=text, name="config-fp8.yaml")
    assert "AM217" in codes(r) and r.different


def test_unknown_key_did_you_mean(tmp_path):
    r = seed_vs(tmp_path, [("  max_steps: 30 ", "  max_steps: 30\n  max_stesp: 3 ")])
    f = next(f for f in r.findings if f.code == "AM209")
    assert "max_steps" in (f.hint or "") and f.line


# ---------------------------------------------------------------- the published guide's pair

@pytest.mark.parametrize("name", ["config-fp16.yaml", "config-fp8.yaml"])
def test_guide_pair_catches_the_known_drift(name):
    [r] = run_diff(SEED / "input" / name, GUIDE / name)
    rs = rows(r)
    for fact in ("optimizer.lr", "lr.schedule", "optimizer.eps", "optimizer.betas", "optimizer.weight_decay", "data.train",
                 "lora.modules", "lora.dropout_position", "data.eos", "seed", "dist.timeout_minutes"):
        assert rs[fact].verdict == "differs", fact
    assert "1.961e-06" in rs["lr.schedule"].left.shown  # NeMo's warmup from lr/51
    assert "../data/training.jsonl" in rs["data.train"].right.shown
    assert {"AM202", "AM205", "AM210"} <= codes(r)
    assert rs["lora.scale"].verdict in ("same", "differs")
    assert r.different


def test_directories_pair_by_name_and_cli_exit_codes(tmp_path):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "diff", str(SEED / "input"), str(GUIDE), "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    data = json.loads(r.stdout)
    assert [(p["left"]["label"], p["right"]["label"]) for p in data["pairs"]] == [("config-fp16.yaml", "config-fp16.yaml"), ("config-fp8.yaml", "config-fp8.yaml")]
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "diff", str(SEED / "input"), str(SEED / "expected")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "diff", str(SEED / "expected" / "config-fp16.yaml"), str(GUIDE / "config-fp16.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "optimizer.lr" in r.stdout  # two Automodel configs
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "diff", str(SEED / "input" / "config-fp16.yaml"), str(SEED / "input" / "config-fp8.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "trainer.plugins.fp8" in r.stdout  # two NeMo configs compare at the source
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "diff", str(tmp_path / "nope.yaml"), str(GUIDE)], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
