"""`run --verify --against automodel` (migrate/verify/automodel.py).

The leg itself needs CUDA (Automodel 0.7.0's recipe does); what runs here: the leg's config checked by Automodel's own
config code, the initial adapters landing in Automodel's real LinearLoRA modules (and giving the runtime's outputs),
Automodel's FP8 swap after LoRA seen at module level, the comparison and verdict logic, and the CLI's refusals.
The GPU end-to-end check is tests/runtime/test_rt_gpu.py::test_verify_against_automodel_on_gpu."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate.verify import automodel as va
from nemo_migrate.verify import migrated_config
from nemo_migrate.verify.report import AutomodelLegInfo, LegRun

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
SEED_OUT = ROOT / "golden" / "seed" / "expected"


def _seed_leg_cfg(tmp_path: Path) -> dict:
    import yaml

    migrated = yaml.safe_load((SEED_OUT / "config-fp16.yaml").read_text())
    env = {"distributed": {"tp_size": 1, "cp_size": 1, "pp_size": 1, "dp_size": None}, "checkpoint": {"enabled": False},
           "dataset": {**migrated["dataset"], "path_or_dataset_id": str(tmp_path / "training.jsonl"),
                       "tokenizer": {**migrated["dataset"]["tokenizer"], "pretrained_model_name_or_path": str(tmp_path / "tok")}}}
    return migrated_config(migrated, env, tmp_path / "initial_adapter.safetensors")


def test_automodel_leg_config_points_at_this_machine_and_drops_runtime_sections(tmp_path):
    leg = _seed_leg_cfg(tmp_path)
    assert leg["nemo_compat"]["init_adapter"]
    cfg = va.automodel_config(leg, model_dir=tmp_path / "model", leg_dir=tmp_path / "leg")
    assert "nemo_compat" not in cfg  # runtime-only: Automodel would not know it
    assert cfg["model"]["pretrained_model_name_or_path"] == str(tmp_path / "model")
    assert cfg["checkpoint"]["enabled"] is False and cfg["checkpoint"]["checkpoint_dir"] == str(tmp_path / "leg" / "automodel")
    for k in ("peft", "optimizer", "lr_scheduler", "loss_fn", "dataloader", "step_scheduler", "seed", "clip_grad_norm"):
        assert cfg[k] == leg[k], k  # the sections that decide the training are passed through untouched
    assert cfg["dataset"]["path_or_dataset_id"] == str(tmp_path / "training.jsonl")
    assert leg["nemo_compat"]["init_adapter"]  # the input is not mutated
    with pytest.raises(ValueError, match="train_ft"):
        va.automodel_config({**leg, "recipe": "KnowledgeDistillationRecipeForNextTokenPrediction"}, model_dir=tmp_path, leg_dir=tmp_path)


def _leg(loss, labels, lr=None, tp=100):
    lr = lr or [1e-4] * len(loss)
    return LegRun(name="leg", dir="d", config="c", command=[], seconds=0.0,
                  steps=[{"step": i, "loss": x, "grad_norm": 1.0, "lr": r, "num_label_tokens": n}
                         for i, (x, n, r) in enumerate(zip(loss, labels, lr))], summary={"trainable_params": tp})


def _am(loss, labels, *, lora=14, fp8=0, tp=100, moved=28, total=28, lr=None):  # moved: adapters with a gradient
    leg = _leg(loss, labels, lr, tp)
    leg.automodel = AutomodelLegInfo.model_validate({
        "automodel_version": "0.7.0", "torch": "2.x",
        "setup": {"lora_modules": lora, "float8_modules": fp8, "trainable_params": tp},
        "adapters": {"copied": total, "not_in_automodel": [], "not_in_adapter": []},
        "trained": {"adapters_total": total, "adapters_with_gradient": moved, "adapters_moved": moved, "adapters_finite": True, "steps": len(loss)}})
    return leg


def test_against_verdict_match_and_each_way_it_differs():
    rt = _leg([2.0, 1.9, 1.8], [40, 41, 42])
    ok = va.summarize({"as_configured": va.compare(rt, _am([2.0, 1.9005, 1.8004], [40, 41, 42]))},
                      {"migrated": rt}, {"automodel": _am([2.0, 1.9005, 1.8004], [40, 41, 42])}, peft=True)
    assert ok.verdict == "match" and not ok.findings
    cases = {
        "loss": _am([2.0, 1.95, 1.8], [40, 41, 42]),
        "label tokens": _am([2.0, 1.9, 1.8], [40, 41, 43]),
        "learning rate": _am([2.0, 1.9, 1.8], [40, 41, 42], lr=[1e-4, 2e-4, 1e-4]),
        "trainable parameters": _am([2.0, 1.9, 1.8], [40, 41, 42], tp=0),
        "no LoRA-adapted modules": _am([2.0, 1.9, 1.8], [40, 41, 42], lora=0, fp8=14),
        "received a gradient": _am([2.0, 1.9, 1.8], [40, 41, 42], moved=0),
    }
    for what, am in cases.items():
        res = va.summarize({"as_configured": va.compare(rt, am)}, {"migrated": rt}, {"automodel": am}, peft=True)
        assert res.verdict == "differs" and any(what in f for f in res.findings), (what, res.findings)
    uncovered = _am([2.0, 1.9, 1.8], [40, 41, 42])
    uncovered.automodel.adapters.not_in_adapter = ["model.layers.0.mlp.down_proj.lora_A.weight"]
    res = va.summarize({"as_configured": va.compare(rt, uncovered)}, {"migrated": rt}, {"automodel": uncovered}, peft=True)
    assert res.verdict == "differs" and any("not in the initial adapters" in f for f in res.findings)
    extra = _am([2.0, 1.9, 1.8], [40, 41, 42])  # the reference's (NeMo's) targets may be more than the migrated ones
    extra.automodel.adapters.not_in_automodel = ["model.layers.0.mlp.down_proj.lora_A.weight"]
    assert va.summarize({"as_configured": va.compare(rt, extra)}, {"migrated": rt}, {"automodel": extra},
                        peft=True).verdict == "match"
    fp8 = va.summarize({}, {"migrated": rt}, {"automodel": cases["no LoRA-adapted modules"]}, peft=True)
    assert any("Float8Linear" in f for f in fp8.findings)


def test_the_dropout0_pair_decides_when_there_is_dropout():
    rt, rt0 = _leg([2.0, 1.9], [40, 41]), _leg([2.0, 1.88], [40, 41])
    noisy, exact = _am([2.0, 1.97], [40, 41]), _am([2.0, 1.8801], [40, 41])
    pairs = {"as_configured": va.compare(rt, noisy), "dropout0": va.compare(rt0, exact)}
    res = va.summarize(pairs, {"migrated": rt, "migrated-dropout0": rt0}, {"automodel": noisy, "automodel-dropout0": exact}, peft=True)
    assert res.decided_by == "dropout0" and res.verdict == "match"
    assert res.pairs["as_configured"].loss_envelope == "beyond"  # reported, but dropout masks differ by design


def test_the_exception_a_rank_raised_is_named_not_torchruns_wrapper():
    out = ("[rank0]:   File \".../nemo_automodel/components/optim/optimizer.py\", line 174, in _trainable_params_or_groups\n"
           "[rank0]:     raise ValueError(\"optimizer received no trainable parameters\")\n"
           "[rank0]: ValueError: optimizer received no trainable parameters\n"
           "E1122 16:20:33.953000 2042 torch/distributed/elastic/multiprocessing/api.py:986] failed (exitcode: 1)\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n")
    assert va._raised(out) == "ValueError: optimizer received no trainable parameters"
    assert va._raised("all fine\n") is None


def test_against_refuses_clearly_where_automodel_cannot_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", *a], capture_output=True, text=True, env=env, timeout=300)

    r = cli("--verify", str(SEED / "config-fp16.yaml"), "--against", "megatron", "--out", str(tmp_path / "v"))
    assert r.returncode == 1 and "only target is 'automodel'" in r.stderr and "Traceback" not in r.stderr
    r = cli(str(SEED_OUT / "config-fp16.yaml"), "--against", "automodel")
    assert r.returncode == 1 and "--against needs --verify" in r.stderr
    reason = va.unavailable()
    if reason is None:
        pytest.skip("Automodel can run here (GPU): the end-to-end GPU test covers it")
    r = cli("--verify", str(SEED / "config-fp16.yaml"), "--against", "automodel", "--proxy-model", "tiny", "--out", str(tmp_path / "v"))
    assert r.returncode == 1 and reason.split(":")[0] in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v").exists()  # refused before anything was written


# --------------------------------------------------------------------------- with the real nemo_automodel (CPU parts)

def _tiny_llama():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@pytest.mark.automodel
@pytest.mark.parametrize("tied", [False, True])
def test_initial_adapters_land_in_automodels_lora_and_give_the_runtimes_outputs(tied):
    """The runtime's initial adapter file, copied into Automodel's real LinearLoRA modules, gives the same logits as
    the runtime's LoRA (no dropout): key layout, scale (alpha/dim) and the shared-A duplication agree."""
    pytest.importorskip("nemo_automodel")
    import torch
    from nemo_automodel.components._peft.lora import PeftConfig, apply_lora_to_linear_modules

    from nemo_migrate.runtime import lora as rl
    from nemo_migrate.runtime.spec import PeftSpec

    targets = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]
    base = _tiny_llama()
    rt, am = copy.deepcopy(base), copy.deepcopy(base)
    spec = PeftSpec(target_modules=targets, exclude_modules=[], match_all_linear=False, dim=8, alpha=16.0, dropout=0.0,
                    dropout_position="pre", lora_A_init="xavier", lora_dtype=None)
    info = rl.apply_lora(rt, spec, tied_a=tied)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in rt.named_parameters():
            if ".lora_B." in n or ".lora_A." in n:
                p.normal_(0, 0.05)  # B = 0 at init would hide any mistake in A
    adapter = rl.adapter_tensors(rt.state_dict(), info)
    n_applied = apply_lora_to_linear_modules(am, PeftConfig(target_modules=targets, dim=8, alpha=16, dropout=0.0,
                                                            dropout_position="pre", use_memory_efficient_lora=False))
    assert n_applied == 14
    plan = va.adapter_targets(adapter, [n for n, _ in am.named_parameters()])
    assert plan["not_in_automodel"] == [] and plan["not_in_adapter"] == [] and len(plan["copy"]) == 28
    params = dict(am.named_parameters())
    for n, v in plan["copy"].items():
        va._assign(params[n], v)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    a, b = rt(input_ids=ids, labels=ids), am(input_ids=ids, labels=ids)
    with torch.no_grad():
        assert (a.logits - base(input_ids=ids).logits).abs().max() > 1e-3  # the adapters change the output
    torch.testing.assert_close(a.logits, b.logits, atol=2e-5, rtol=1e-5)
    a.loss.backward()
    b.loss.backward()  # and the adapters' gradients agree (a tied A's gradient is the sum over its members)
    g_rt = {n: p.grad for n, p in rt.named_parameters() if p.grad is not None}
    g_am = {n: p.grad for n, p in am.named_parameters() if p.grad is not None}
    for n, g in g_rt.items():
        if ".lora_A." in n and tied and any(n.startswith(grp[0]) for grp in info.tied_groups):
            grp = next(grp for grp in info.tied_groups if n.startswith(grp[0]))
            want = sum(g_am[f"{m}.lora_A.weight"] for m in grp)
        else:
            want = g_am[n]
        torch.testing.assert_close(g, want, atol=2e-6, rtol=1e-4)
    st = va.inspect_model(am)
    assert st.lora_modules == 14 and st.float8_modules == 0
    assert st.trainable_params == sum(v.numel() for v in plan["copy"].values())


@pytest.mark.automodel
def test_automodels_fp8_swap_after_lora_drops_the_adapters():
    """Automodel 0.7.0 applies LoRA, then torchao's swap (infrastructure._apply_peft_and_lower_precision): the
    LinearLoRA modules become Float8Linear with their base weight only; nothing is left to train.  The reference's
    'hypothesis, untested' (anchors-and-pitfalls, FP8 with LoRA), seen here at module level with Automodel's code."""
    pytest.importorskip("nemo_automodel")
    pytest.importorskip("torchao")
    from nemo_automodel.components._peft.lora import PeftConfig, apply_lora_to_linear_modules
    from nemo_automodel.components.quantization.fp8 import apply_fp8_to_model, build_fp8_config

    m = _tiny_llama()
    targets = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]
    assert apply_lora_to_linear_modules(m, PeftConfig(target_modules=targets, dim=16, alpha=32)) == 14
    before = va.inspect_model(m)
    assert before.lora_modules == 14 and before.trainable_params > 0
    m = apply_fp8_to_model(m, config=build_fp8_config({"enabled": True, "emulate": True, "filter_fqns": ["lm_head"]}))
    after = va.inspect_model(m)
    assert after.lora_modules == 0 and after.float8_modules == 14 and after.trainable_params == 0


@pytest.mark.automodel
def test_automodel_leg_config_is_accepted_by_automodels_config_code(tmp_path):
    pytest.importorskip("nemo_automodel")
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    import automodel_check as amc

    cfg = va.automodel_config(_seed_leg_cfg(tmp_path), model_dir=Path("meta-llama/Llama-3.3-70B-Instruct"), leg_dir=tmp_path / "leg")
    p = tmp_path / "leg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert amc.check_config(p) == []


# --------------------------------------------------------------------------- GPU: the real recipe, end to end

def _gpu_verify(tmp_path, *extra):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_verify import _verify

    return _verify(tmp_path, "--against", "automodel", "--jobs", "3", *extra)


_GPU_SKIP = va.unavailable()
gpu = pytest.mark.skipif(_GPU_SKIP is not None, reason=f"--against automodel cannot run here: {_GPU_SKIP}")


@gpu
@pytest.mark.gpu
@pytest.mark.automodel
def test_verify_against_automodel_on_gpu(tmp_path):
    r, out = _gpu_verify(tmp_path)
    rep = json.loads((out / "verify-report.json").read_text())["variants"][0]
    am = rep["against_automodel"]
    assert am is not None, r.stdout + r.stderr
    assert {"automodel", "automodel-dropout0", "migrated-dropout0"} <= set(rep["legs"])  # seed job: LoRA dropout 0.1
    assert am["automodel_setup"]["lora_modules"] == 14 and am["automodel_adapters"]["copied"] == 28
    assert am["automodel_adapters"]["not_in_automodel"] == [] and am["automodel_trained"]["adapters_with_gradient"] == 28
    d0 = am["pairs"]["dropout0"]
    assert d0["label_tokens_equal"] and d0["lr_max_rel_diff"] < 1e-6, d0
    assert am["verdict"] == "match", (am["findings"], r.stdout[-3000:])
    assert r.returncode == 0 and "against Automodel 0.7.0 (real recipe): MATCH" in r.stdout


@gpu
@pytest.mark.gpu
@pytest.mark.automodel
def test_verify_against_automodel_fp8_lora_on_gpu(tmp_path):
    """The seed fp8 job with FP8 switched on: Automodel 0.7.0 swaps the LoRA-adapted linears to Float8Linear, so its
    leg has nothing to train: verify reports that plainly and exits 2."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from test_verify import _job

    job, data = _job(tmp_path)
    (job / "config-fp8.yaml").write_text((SEED / "config-fp8.yaml").read_text())
    conv = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(job / "config-fp8.yaml"), "--recipe", str(job / "recipe.py"),
                    "--factory", "migration_recipe()", "-o", str(conv), "-q"], check=True, capture_output=True)
    doc = yaml.safe_load((conv / "config-fp8.yaml").read_text())
    doc["fp8"].update(enabled=True, filter_fqns=["lm_head"])
    (tmp_path / "migrated-fp8.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "verify"
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", str(job / "config-fp8.yaml"), "--recipe", str(job / "recipe.py"),
                        "--factory", "migration_recipe()", "--proxy-model", "tiny", "--steps", "4", "--data", str(data),
                        "--seq-length", "64", "--out", str(out), "--migrated", str(tmp_path / "migrated-fp8.yaml"),
                        "--against", "automodel", "--jobs", "3"], capture_output=True, text=True, timeout=1200)
    rep = json.loads((out / "verify-report.json").read_text())["variants"][0]
    am = rep["against_automodel"]
    assert am["verdict"] in ("failed", "differs"), am
    assert am["automodel_setup"]["lora_modules"] == 0 and am["automodel_setup"]["float8_modules"] > 0
    assert any("LoRA" in f for f in am["findings"])
    assert r.returncode == 2 and "finding:" in r.stdout
