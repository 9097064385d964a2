"""`nemo-migrate run --verify` on CPU: a tiny Llama proxy, a tokenizer trained here, data written here.

The reference leg is lowered from the NeMo job by migrate/verify/reference.py (not by the rule table); the migrated leg is
convert's output.  With every admitted approximation removed, the migrated leg must match the reference (the rows
marked exact); the published guide's hand-written YAML must fail that check (it changes the learning rate)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate.verify import ENVELOPES, envelope_of, nemo_lr, nemo_tokenize

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
GUIDE = ROOT / "tests" / "fixtures" / "guide"


def test_nemo_lr_formula():
    # CosineAnnealing with warmup: lr*(s+1)/(W+1) up to and including W, then cosine to min_lr at max_steps
    assert nemo_lr(0, lr=1.0, warmup=4, max_steps=10, min_lr=0.0) == pytest.approx(1 / 5)
    assert nemo_lr(4, lr=1.0, warmup=4, max_steps=10, min_lr=0.0) == pytest.approx(1.0)
    assert nemo_lr(7, lr=1.0, warmup=4, max_steps=10, min_lr=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert nemo_lr(10, lr=1.0, warmup=4, max_steps=10, min_lr=0.1) == pytest.approx(0.1)
    assert nemo_lr(11, lr=1.0, warmup=4, max_steps=10, min_lr=0.1) == pytest.approx(0.1)
    # the seed job: warmup 50 > max_steps 30, so every step is in warmup
    assert [nemo_lr(s, lr=1e-4, warmup=50, max_steps=30, min_lr=0) for s in (0, 29)] == pytest.approx([1e-4 / 51, 30e-4 / 51])


class _WordTok:
    """Whitespace tokenizer with NeMo's view of HF tokenizers (tokenize() adds no special tokens)."""
    eos_token_id, bos_token_id = 1, 0

    def __init__(self):
        self.vocab = {}

    def tokenize(self, s):
        return s.split()

    def convert_tokens_to_ids(self, toks):
        return [self.vocab.setdefault(t, len(self.vocab) + 10) for t in toks]


def test_nemo_tokenize_template_pieces_eos_mask_and_truncation():
    tok = _WordTok()
    kw = dict(template="Q: {prompt} A: {completion}", label_key="completion", truncation_fields=["prompt"], add_bos=False,
              add_eos=True, add_sep=False, answer_only_loss=True)
    s = nemo_tokenize({"prompt": "a b c d", "completion": "x y"}, tok, seq_length=64, **kw)
    full = s["full"]
    assert len(full) == 1 + 4 + 1 + 2 + 1 and full[-1] == 1  # Q: | a b c d | A: | x y | </s>
    assert s["context_len"] == 6
    assert s["input_ids"] == full[:-1] and s["labels"][:5] == [-100] * 5 and s["labels"][5:] == full[6:]
    # over length: the overflow comes out of the truncation field (prompt), the answer and EOS stay
    t = nemo_tokenize({"prompt": "a b c d", "completion": "x y"}, tok, seq_length=8, **kw)
    assert len(t["full"]) == 8 and t["full"][-3:] == full[-3:] and t["context_len"] == 5


def test_legs_log_nowhere_but_their_run_directory():
    """A migrated job with W&B / MLflow sections (NeMo's WandbLogger maps to `wandb:`): the legs drop them, so a
    verification neither needs credentials nor adds runs to the team's dashboards."""
    from nemo_migrate.verify.legs import migrated_config

    mig = {"step_scheduler": {"max_steps": 5}, "dataset": {}, "wandb": {"project": "team"}, "mlflow": {"experiment_name": "e"},
           "tensorboard": {}, "validation_dataset": {}}
    cfg = migrated_config(mig, {"checkpoint": {"enabled": False}}, None)
    assert not {"wandb", "mlflow", "tensorboard", "validation_dataset"} & set(cfg) and mig["wandb"] == {"project": "team"}


def test_envelopes_are_automodels_profiles():
    assert ENVELOPES["standard"] == (1e-5, 0.002, 5e-3, 0.002)
    assert envelope_of([2.0, 2.0], [2.0, 2.0])[0] == "strict"
    assert envelope_of([2.0, 2.0], [2.0, 2.0 + 0.004])[0] == "standard"  # 5e-3 + 0.2% x 2 later
    assert envelope_of([2.0, 2.0], [2.0 + 0.006, 2.0])[0] == "relaxed"  # first step: standard allows 1e-5 + 0.2% x 2 = 0.004, relaxed 0.0151
    assert envelope_of([2.0], [2.5])[0] == "beyond"


torch = pytest.importorskip("torch")


def _job(tmp_path: Path) -> tuple[Path, Path]:
    job = tmp_path / "nemo2"
    job.mkdir()
    for f in ("recipe.py", "config-fp16.yaml", "run.sh"):
        (job / f).write_text((SEED / f).read_text())
    data = tmp_path / "data"
    data.mkdir()
    with (data / "training.jsonl").open("w") as fh:
        for i in range(96):
            fh.write(json.dumps({"prompt": f"Question {i}: what is {i % 7} times {i % 5}?", "completion": f"It is {(i % 7) * (i % 5)}."}) + "\n")
    return job, data


def _verify(tmp_path, *extra):
    job, data = _job(tmp_path)
    out = tmp_path / "verify"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", str(job / "config-fp16.yaml"), "--recipe", str(job / "recipe.py"),
                        "--factory", "migration_recipe()", "--proxy-model", "tiny", "--steps", "4", "--data", str(data),
                        "--seq-length", "64", "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=900)
    return r, out


def test_verify_seed_job_on_cpu(tmp_path):
    """The seed job folder (fp16 and fp8 variants): every leg of fp16 trains; the fp8 legs have the same effective
    runtime config (convert switches FP8 off, FP8001), so they are not trained again but reused, and said so.  The
    console shows a progress line per leg and no internal command line."""
    job, data = _job(tmp_path)
    (job / "config-fp8.yaml").write_text((SEED / "config-fp8.yaml").read_text())
    out = tmp_path / "verify"
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", str(job), "--proxy-model", "tiny", "--steps", "4",
                        "--data", str(data), "--seq-length", "64", "--out", str(out)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((out / "verify-report.json").read_text())
    v, v8 = rep["variants"]
    assert (v["variant"], v8["variant"]) == ("fp16", "fp8")
    assert v["verdict"] == "pass" and v["exact_rows_envelope"] in ("strict", "standard")
    assert {a["approximation"] for a in v["attribution"]} >= {"lora_fused_vs_split", "loss_reduction", "master_weights"}
    assert v["checks"]["lr"]["max_rel_diff"] < 1e-9  # convert reproduces NeMo's warmup exactly
    tp = v["checks"]["trainable_parameters"]
    assert tp["reference"] < tp["migrated"]  # one shared A for q/k/v and gate/up in NeMo
    assert len(v["legs"]["reference"]["loss"]) == 4 and (out / "fp16" / "loss-curves.png").is_file()
    assert "PASS" in r.stdout
    # the fp8 legs: reused, with the same numbers, and the report says so
    n = len(v["legs"])
    assert not any("reused_from" in leg for leg in v["legs"].values())
    assert {k: leg["reused_from"] for k, leg in v8["legs"].items()} == {k: f"fp16/{k}" for k in v["legs"]}
    assert v8["legs"]["migrated"]["loss"] == v["legs"]["migrated"]["loss"] and v8["verdict"] == "pass"
    assert any("not run again" in note for note in v8["notes"])
    assert len(list((out / "fp8" / "legs").glob("*/run"))) == 0  # nothing trained for fp8
    # progress on stderr: one start and one done line per trained leg, one line per reused leg; no command lines
    err = r.stderr.splitlines()
    assert f"leg 1/{2 * n}: fp16/reference ..." in err
    assert sum(bool(re.match(rf"leg \d+/{2 * n}: fp16/\S+ done in [\d.]+ s", x)) for x in err) == n
    assert sum("its result is reused" in x for x in err) == n
    assert not any("nemo_migrate.cli" in x or "--stop-after" in x for x in r.stderr.splitlines() + r.stdout.splitlines())
    assert "--stop-after" in (out / "verify.log").read_text()  # the command lines are in the log
    # every leg ran in one long-lived runtime process (started once), and the time is accounted for
    assert [p.name for p in (out / "legservers").iterdir()] == ["legserver-1.log"]
    t = rep["timing"]
    assert (t["legs_trained"], t["legs_reused"], t["runtime_processes"]) == (n, n, 1) and t["total_s"] >= t["legs_s"]
    assert any(x.startswith(f"time: {t['total_s']} s in all") for x in err)


def test_verify_data_that_cannot_be_used_is_named(tmp_path):
    """--data that does not exist, or rows without the template's fields: said about that data, before any leg."""
    job, data = _job(tmp_path)
    base = [sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", str(job / "config-fp16.yaml"), "--recipe", str(job / "recipe.py"),
            "--factory", "migration_recipe()", "--proxy-model", "tiny", "--steps", "2", "--seq-length", "64", "--out", str(tmp_path / "v")]
    r = subprocess.run([*base, "--data", str(tmp_path / "no-such-dir")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and f"--data {tmp_path / 'no-such-dir'}: no such file or directory" in r.stderr
    assert "pass --data" not in r.stderr and "Traceback" not in r.stderr
    (data / "training.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    r = subprocess.run([*base, "--data", str(data)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "training.jsonl:1: no 'prompt', 'completion' field" in r.stderr and "leg 1/" not in r.stderr


def test_verify_catches_the_guides_learning_rate(tmp_path):
    """The published guide's YAML trains at 1e-5 without warmup: verify fails it (exit 2) and says why."""
    r, out = _verify(tmp_path, "--migrated", str(GUIDE / "config-fp16.yaml"))
    assert r.returncode == 2, r.stdout + r.stderr
    v = json.loads((out / "verify-report.json").read_text())["variants"][0]
    assert v["verdict"] == "fail" and v["checks"]["lr"]["max_rel_diff"] > 0.4  # 1e-6 flat vs NeMo's 1e-4/51 warmup start
    assert "match_all_linear" in v["rejected"]  # and real Automodel 0.7 rejects the file (ValueError)
    assert "lr_schedule" in v["unflagged_differences"]


def test_verify_fp8_attributes_fp8_and_runs_legs_in_parallel(tmp_path):
    """The seed fp8 job with FP8 switched on for the runtime (emulated on CPU): FP8's effect is its own attribution
    row (removed = BF16 like the reference), the exact rows still pass, and --jobs runs the attribution legs at once."""
    job, data = _job(tmp_path)
    (job / "config-fp8.yaml").write_text((SEED / "config-fp8.yaml").read_text())
    conv = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(job / "config-fp8.yaml"), "--recipe", str(job / "recipe.py"),
                    "--factory", "migration_recipe()", "-o", str(conv), "-q"], check=True, capture_output=True)
    text = (conv / "config-fp8.yaml").read_text()
    assert "enabled: false" in text.split("fp8:", 1)[1].split("\n")[1]  # convert keeps FP8 off for real Automodel 0.7 (FP8001)
    import yaml

    doc = yaml.safe_load(text)
    doc["fp8"].update(enabled=True, filter_fqns=["lm_head"], emulate=True)
    (tmp_path / "migrated-fp8.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "verify"
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", str(job / "config-fp8.yaml"), "--recipe", str(job / "recipe.py"),
                        "--factory", "migration_recipe()", "--proxy-model", "tiny", "--steps", "3", "--data", str(data),
                        "--seq-length", "64", "--out", str(out), "--migrated", str(tmp_path / "migrated-fp8.yaml"), "--jobs", "3"],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    v = json.loads((out / "verify-report.json").read_text())["variants"][0]
    assert v["verdict"] == "pass" and v["exact_rows_envelope"] in ("strict", "standard")
    assert "fp8_scaling" in {a["approximation"] for a in v["attribution"]}
    legs = v["legs"]
    assert "fp8" not in yaml.safe_load(Path(legs["migrated-without-fp8_scaling"]["config"]).read_text())
    assert yaml.safe_load(Path(legs["migrated"]["config"]).read_text())["fp8"]["enabled"] is True
    assert all(len(l["loss"]) == 3 for l in legs.values())


def test_with_jobs_a_migrated_config_that_does_not_run_is_still_the_finding(tmp_path):
    """--jobs > 1 trains the migrated leg together with the attribution legs: when the migrated config does not run,
    the verdict is still 'fail, the migrated config does not run' (not a crash, not another leg's error)."""
    conv = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(SEED), "-o", str(conv), "-q"], check=True, capture_output=True)
    import yaml

    doc = yaml.safe_load((conv / "config-fp16.yaml").read_text())
    doc["peft"]["target_modules"] = ["*.no_such_projection"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(doc))
    r, out = _verify(tmp_path, "--migrated", str(tmp_path / "broken.yaml"), "--jobs", "3")
    assert r.returncode == 2, r.stdout + r.stderr
    v = json.loads((out / "verify-report.json").read_text())["variants"][0]
    assert v["verdict"] == "fail" and v["migrated_vs_reference"] == "the migrated config does not run"
    assert "leg 'migrated' failed" in v["rejected"] and "use e.g. '*_proj'" in v["rejected"]
    assert "migrated does not run" in r.stderr + r.stdout
