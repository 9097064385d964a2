"""`make nemo-check` (tools/nemo_oracle): the comparison logic on small hand-made pairs, the job list, the project side's
LR / micro-batch evaluation, and one end-to-end run with real NeMo 2.7.3 (skipped when .nemo-venv is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "nemo_oracle"))

import compare  # noqa: E402
import jobs as jobs_mod  # noqa: E402

NEMO_PY = ROOT / ".nemo-venv" / "bin" / "python"


def _n(**leaves):
    return {k.replace("__", "."): (v if isinstance(v, dict) and "src" in v else {"v": v, "src": "explicit"}) for k, v in leaves.items()}


def _o(**leaves):
    return {k.replace("__", "."): {"v": v, "prov": "recipe-default"} for k, v in leaves.items()}


def _pair(nemo_leaves, ours_leaves, **extra):
    nemo = {"status": "ok", "leaves": nemo_leaves, **{k: v for k, v in extra.items() if k.startswith("n_")}}
    ours = {"resolve": "ok", "convert": "ok", "leaves": ours_leaves}
    for k, v in extra.items():
        (nemo if k.startswith("n_") else ours)[k[2:]] = v
    return nemo, ours


def _kinds(t: compare.Tally) -> list[tuple[str, str]]:
    return sorted((d.kind, d.path) for d in t.disagreements if not d.accepted)


# ---------------------------------------------------------------------------------------------- values


def test_equal_job_has_no_disagreement():
    nemo, ours = _pair(_n(_target_="finetune", trainer__max_steps=100, optim__config__lr=1e-4, peft__dim=8),
                       _o(_target_="llm.api.finetune", trainer__max_steps=100, optim__config__lr=0.0001, peft__dim=8))
    t = compare.compare_job("j", nemo, ours)
    assert _kinds(t) == [] and t.values == 5 and t.equal == 5  # 4 leaves and the acceptance


def test_value_class_and_types_differ():
    nemo, ours = _pair(_n(model___target_={"v": "LlamaModel", "src": "explicit", "mro": ["GPTModel"], "own": []},
                          trainer__max_steps=100, trainer__devices=8, peft__dropout=0.0, trainer__sequence_parallel=False),
                       _o(model___target_="GPTModel", trainer__max_steps=99, trainer__devices=8.0, peft__dropout=0, trainer__sequence_parallel=0))
    t = compare.compare_job("j", nemo, ours)
    assert _kinds(t) == [("class", "model._target_"), ("value", "trainer.max_steps"), ("value", "trainer.sequence_parallel")]
    assert "base class" in [d for d in t.disagreements if d.kind == "class"][0].note


def test_defaults_only_nemo_and_only_ours():
    nemo, ours = _pair(
        _n(data__num_workers={"v": 8, "src": "default"},        # NeMo default, ours absent: not compared
           data__seed={"v": 1234, "src": "default"},            # NeMo default, ours sets the same: equal
           data__pin_memory={"v": True, "src": "default"},      # NeMo default, ours sets another value: differs
           data__seq_length={"v": 2048, "src": "explicit", "d": 2048},   # explicit at its class default, ours absent: equal
           data__micro_batch_size={"v": 2, "src": "explicit", "d": 4}),  # explicit, not the default, ours absent: only-nemo
        _o(data__seed=1234, data__pin_memory=False, data__bogus=1))
    t = compare.compare_job("j", nemo, ours)
    assert _kinds(t) == [("only-nemo", "data.micro_batch_size"), ("only-ours", "data.bogus"), ("value", "data.pin_memory")]
    assert t.equal_by_default == 1


def test_object_on_one_side_is_one_comparison():
    nemo, ours = _pair(_n(data__packed_sequence_specs={"v": None, "src": "default"}),
                       _o(data__packed_sequence_specs___target_="PackedSequenceSpecs", data__packed_sequence_specs__packed_sequence_size=2048))
    t = compare.compare_job("j", nemo, ours)
    assert _kinds(t) == [("value", "data.packed_sequence_specs")]
    assert t.disagreements[0].ours == {"_target_": "PackedSequenceSpecs", "packed_sequence_size": 2048}


def test_same_rules():
    assert compare.same("nemo.collections.llm.gpt.model.llama.LlamaModel", "LlamaModel", "model._target_")
    assert not compare.same("a.LlamaModel", "LlamaModel", "model.name")
    assert compare.same("torch.bfloat16", {"$callable": "torch.bfloat16"})
    assert not compare.same(True, 1) and compare.same(1, 1.0) and not compare.same("1", 1)
    assert compare.same([{"_target_": "x.TimingCallback"}], [{"_target_": "TimingCallback"}], "trainer.callbacks")


# ---------------------------------------------------------------------------------------------- acceptance, LR, micro-batches


def test_acceptance_both_ways_and_scope():
    ok = {"status": "ok", "leaves": _n(_target_="finetune")}
    refused = {"status": "refused", "refusal": "UnknownTypeError: cannot parse peft.dim=8"}
    converts = {"resolve": "ok", "convert": "ok", "leaves": _o(_target_="finetune")}
    scope = {"resolve": "refused", "diagnostics": [{"severity": "error", "code": "NM111", "message": "a T5"}]}
    nemo_says = {"resolve": "refused", "diagnostics": [{"severity": "error", "code": "NM213", "message": "GPUs"}]}
    policy = {"scope_codes": ["NM111"], "nemo_refusal_warnings": ["NM170"]}
    assert _kinds(compare.compare_job("a", refused, converts, policy)) == [("acceptance", "<job>")]
    assert _kinds(compare.compare_job("b", ok, nemo_says, policy)) == [("acceptance", "<job>")]
    t = compare.compare_job("c", ok, scope, policy)
    assert _kinds(t) == [] and t.not_compared and t.values == 0
    warned = {**converts, "diagnostics": [{"severity": "warning", "code": "NM170", "message": "NeMo >= 2.6 rejects peft.*"}]}
    assert _kinds(compare.compare_job("d", {**refused, "leaves": _n(_target_="finetune")}, warned, policy)) == []
    t = compare.compare_job("e", refused, nemo_says, policy)
    assert _kinds(t) == [] and "both refuse" in t.not_compared[0][1]


def test_lr_every_step():
    nemo, ours = _pair(_n(_target_="finetune"), _o(_target_="finetune"), n_lr=[0.0, 1e-4, 5e-5], o_lr=[0.0, 1e-4, 5e-5])
    assert _kinds(compare.compare_job("j", nemo, ours)) == []
    nemo["lr"] = [0.0, 1e-4, 5.001e-5]
    t = compare.compare_job("j", nemo, ours)
    assert _kinds(t) == [("lr", "lr[2]")] and "1 of 3 steps" in t.disagreements[0].note
    nemo["lr"] = [0.0, 1e-4]
    assert _kinds(compare.compare_job("j", nemo, ours)) == [("lr", "lr[len]")]


def test_micro_batches():
    m = {"dp": 4, "num_microbatches": 8, "micro_batch_size": 1, "global_batch_size": 32}
    nemo, ours = _pair(_n(_target_="finetune"), _o(_target_="finetune"), n_micro=m, o_micro=dict(m))
    assert _kinds(compare.compare_job("j", nemo, ours)) == []
    ours["micro"] = {**m, "num_microbatches": 2, "micro_batch_size": 4}
    assert _kinds(compare.compare_job("j", nemo, ours)) == [("micro-batches", "micro_batch_size"), ("micro-batches", "num_microbatches")]


def test_accepted_entries_match_path_job_and_kind():
    nemo, ours = _pair(_n(log__log_dir="/runs/2026-11-30"), _o())
    policy = {"accepted": [{"paths": ["log.log_dir"], "jobs": ["realworld/*"], "kinds": ["only-nemo"], "why": "clock"}]}
    assert compare.compare_job("realworld/x", nemo, ours, policy).accepted == 1
    assert compare.compare_job("recipe/x", nemo, ours, policy).differ == 1
    total = compare.merge([compare.compare_job("realworld/x", nemo, ours, policy), compare.compare_job("recipe/x", nemo, ours, policy)])
    text = "\n".join(compare.render(total))
    assert "ACCEPTED" in text and "recipe/x  log.log_dir" in text and "differ 1" in text


def test_policy_file_is_valid():
    import yaml

    policy = yaml.safe_load((ROOT / "tools" / "nemo_oracle" / "accepted.yaml").read_text())
    assert set(policy) == {"scope_codes", "nemo_refusal_warnings", "accepted"}
    for e in policy["accepted"]:
        assert e["why"] and e["citation"] and e["paths"] and set(e.get("kinds") or compare.KINDS) <= set(compare.KINDS)


# ---------------------------------------------------------------------------------------------- the job list


def test_job_list(tmp_path):
    rec = tmp_path / "nemo" / "collections" / "llm" / "recipes"
    rec.mkdir(parents=True)
    (rec / "llama3_8b.py").write_text('NAME = "llama3_8b"\ndef finetune_recipe(): pass\n')
    (rec / "mistral_nemo_12b.py").write_text('NAME = "mistral_nemo_base_12b"\ndef finetune_recipe(): pass\n')
    (rec / "t5_pretrain_only.py").write_text('NAME = "t5"\ndef pretrain_recipe(): pass\n')
    assert jobs_mod.recipe_names(tmp_path / "nemo") == ["llama3_8b", "mistral_nemo_base_12b"]
    js = jobs_mod.all_jobs(ROOT, tmp_path / "nemo")
    ids = [j["id"] for j in js]
    assert len(ids) == len(set(ids))
    assert {"golden/seed[fp16]", "golden/seed[fp8]", "recipe/mistral_nemo_base_12b[packed]", "recipe/llama3_8b[perf]"} <= set(ids)
    assert any(j["group"] == "lr-probe" and "-c20-" in j["id"] for j in js)  # constant_steps > 0
    rw = [j for j in js if j["group"] == "realworld"]
    assert rw and all(j["nemo"]["mode"] in ("cli", "notebook", "recipe") for j in rw)
    probe = next(j for j in js if j["group"] == "lr-probe")
    assert probe["nemo"]["argv"][-4:] == probe["ours"]["sets"]  # the same overrides on both sides


# ---------------------------------------------------------------------------------------------- the project side


def test_project_side_lr_and_micro_batches():
    pytest.importorskip("nemo_automodel")
    import ours

    t = {"optimizer.lr": 1e-4, "step_scheduler.max_steps": 6, "lr_scheduler.lr_warmup_steps": 2, "lr_scheduler.lr_decay_steps": 6,
         "lr_scheduler.init_lr": 0.0, "lr_scheduler.min_lr": 0.0, "lr_scheduler.lr_decay_style": "linear"}
    lr, how = ours.lr_series(t)
    assert how == "Automodel OptimizerParamScheduler"
    assert lr == pytest.approx([0.0, 5e-5, 1e-4, 7.5e-5, 5e-5, 2.5e-5])
    assert ours.lr_series({"optimizer.lr": 1e-4, "step_scheduler.max_steps": 3})[0] == [1e-4] * 3
    ss = {"step_scheduler.max_steps": 10}
    m = ours.micro_batches({**ss, "step_scheduler.global_batch_size": 32, "step_scheduler.local_batch_size": 2, "distributed.tp_size": 2}, 8)
    assert m == {"dp": 4, "num_microbatches": 4, "micro_batch_size": 2, "global_batch_size": 32}
    m = ours.micro_batches({**ss, "step_scheduler.global_batch_size": 32, "step_scheduler.local_batch_size": 8, "distributed.pp_size": 4,
                            "distributed.pipeline": {"pp_microbatch_size": 2}}, 16)
    assert m == {"dp": 4, "num_microbatches": 4, "micro_batch_size": 2, "global_batch_size": 32}
    assert "error" in ours.micro_batches({**ss, "step_scheduler.global_batch_size": 30, "step_scheduler.local_batch_size": 4}, 8)


def test_project_side_on_a_probe(tmp_path):
    pytest.importorskip("nemo_automodel")
    import ours

    job = next(j for j in jobs_mod.all_jobs(ROOT, tmp_path) if j["id"] == "lr/w10-c20-m0-s100")
    r = ours.run_job(job, tmp_path)
    assert r["resolve"] == "ok" and r["leaves"]["optim.lr_scheduler.constant_steps"]["v"] == 20
    assert len(r["lr"]) == 100 and r["micro"]["num_microbatches"] >= 1


# ---------------------------------------------------------------------------------------------- with real NeMo


@pytest.mark.skipif(not NEMO_PY.is_file(), reason="needs .nemo-venv (make nemo-venv): real NeMo 2.7.3 + NeMo-Run 0.11.1")
def test_real_nemo_end_to_end(tmp_path):
    p = subprocess.run([str(NEMO_PY), "tools/nemo_oracle/check.py", "--no-write", "--only", "golden/seed*",
                        "--only", "lr/w10-c20-*", "--only", "recipe/llama32_1b[none]"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 2), p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    # fact 1 of issue 14: real NeMo 2.7.3 refuses the seed's peft.* values from --yaml; ours says so (NM117, a warning
    # the check accepts), so it is no disagreement, and the job is still compared
    assert "ours='converts'" not in out and "differ 0" in out
    assert "leaves from a build with the driver's --eval-str-annotations" in out
    assert "jobs 4 (compared 4" in out and "LR compared at every step in 4 jobs" in out


def test_a_golden_case_without_a_command_is_shown_not_dropped(tmp_path):
    (tmp_path / "golden" / "new-case" / "input").mkdir(parents=True)
    (tmp_path / "golden" / "new-case" / "input" / "recipe.py").write_text("import nemo_run as run\n")
    js = jobs_mod.all_jobs(tmp_path, tmp_path / "nemo")
    job = next(j for j in js if j["id"] == "golden/new-case")
    assert job["nemo"]["mode"] == "unknown"
    t = compare.compare_job(job["id"], {"status": "unbuilt", "why": job["nemo"]["why"]}, {"resolve": "ok", "leaves": {}})
    assert t.not_compared and "GOLDEN" in t.not_compared[0][1] and t.differ == 0
