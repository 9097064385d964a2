"""Training end to end on CPU: grad accumulation, FSDP2/TP on 2 gloo processes, resume continuity, checkpoints,
full-FT export, PEFT reload, FP8 (emulated), the nemo_compat modes."""

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from rt_helpers import metrics, run, tiny_llama

# ------------------------------------------------------------------------------------------------- helpers


def _adapters(ckpt_root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt_root) / "LATEST" / "model" / "adapter_model.safetensors"))


def _ckpt_root(cfg_path: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(cfg_path.read_text())["checkpoint"]["checkpoint_dir"])


def _close(a: dict, b: dict, atol=1e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=k)


@contextlib.contextmanager
def trainer_for(cfg_path: Path, out: Path, proxy: str = "tiny"):
    from nemo_migrate.runtime.api import RunOptions, prepare
    from nemo_migrate.runtime.parallel import destroy
    from nemo_migrate.runtime.trainer import Trainer

    spec, cfg, run_dir, tok_path, tok_note = prepare(RunOptions(config=cfg_path, proxy_model=proxy, out=out,
                                                                checkpoint_dir="config"))
    tr = Trainer(spec, run_dir=run_dir, raw_cfg=cfg, tokenizer_path=tok_path, tokenizer_note=tok_note)
    try:
        tr.setup()
        yield tr
    finally:
        destroy(tr.env)


def _first_step(tr):
    tr.steps.set_epoch(0)
    return next(iter(tr.steps))


# ------------------------------------------------------------------------------------------------- equivalences


def test_grad_accumulation_8x1_equals_2x4(cfg_factory, tmp_path):
    a = cfg_factory("ga8.yaml", ckpt=True)
    b = cfg_factory("ga2.yaml", ckpt=True, mutate=lambda c: c["step_scheduler"].update(local_batch_size=4))
    assert run(a, tmp_path / "ra", max_steps=2) == 0
    assert run(b, tmp_path / "rb", max_steps=2) == 0
    la, lb = metrics(tmp_path / "ra"), metrics(tmp_path / "rb")
    assert [r["num_label_tokens"] for r in la] == [r["num_label_tokens"] for r in lb]
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    _close(_adapters(_ckpt_root(a)), _adapters(_ckpt_root(b)))


def test_fsdp2_two_processes_equal_one(cfg_factory, tmp_path):
    c1 = cfg_factory("one.yaml", ckpt=True)
    c2 = cfg_factory("two.yaml", ckpt=True)
    assert run(c1, tmp_path / "r1", max_steps=2) == 0
    assert run(c2, tmp_path / "r2", max_steps=2, nproc=2) == 0
    l1, l2 = metrics(tmp_path / "r1"), metrics(tmp_path / "r2")
    assert len(l1) == len(l2) == 2
    for x, y in zip(l1, l2):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["num_label_tokens"] == y["num_label_tokens"]
    _close(_adapters(_ckpt_root(c1)), _adapters(_ckpt_root(c2)))


def test_tensor_parallel_with_sequence_parallel_equals_one_process(cfg_factory, tmp_path):
    def tp(c):
        c["distributed"].update(tp_size=2, sequence_parallel=True)
        c["step_scheduler"]["global_batch_size"] = 4

    c1 = cfg_factory("tp1.yaml", ckpt=True, mutate=lambda c: c["step_scheduler"].update(global_batch_size=4))
    c2 = cfg_factory("tp2.yaml", ckpt=True, mutate=tp)
    assert run(c1, tmp_path / "r1", max_steps=2) == 0
    assert run(c2, tmp_path / "r2", max_steps=2, nproc=2) == 0
    for x, y in zip(metrics(tmp_path / "r1"), metrics(tmp_path / "r2")):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    _close(_adapters(_ckpt_root(c1)), _adapters(_ckpt_root(c2)), atol=1e-5)


# ------------------------------------------------------------------------------------------------- checkpoints


def _resume_cfg(c):
    c["peft"]["dropout"] = 0.1  # RNG state must be restored for identical dropout masks
    c["step_scheduler"].update(ckpt_every_steps=3, val_every_steps=2, global_batch_size=4)


def test_resume_continues_with_identical_losses(cfg_factory, tmp_path):
    a = cfg_factory("full.yaml", ckpt=True, mutate=_resume_cfg)
    assert run(a, tmp_path / "ra", max_steps=6) == 0
    full = metrics(tmp_path / "ra")
    assert [r["step"] for r in full] == list(range(6))
    root_a = _ckpt_root(a)
    assert sorted(p.name for p in root_a.iterdir()) == ["LATEST", "LOWEST_VAL", "epoch_0_step_2", "epoch_0_step_5",
                                                        "training.jsonl", "validation.jsonl"]  # 0.7's layout
    assert (root_a / "LOWEST_VAL").resolve().name == "epoch_0_step_5"  # the only checkpoint saved with a validation
    # "interrupted" run: only the step-2 checkpoint exists in its checkpoint_dir
    b = cfg_factory("resumed.yaml", ckpt=True, mutate=_resume_cfg)
    root_b = _ckpt_root(b)
    root_b.mkdir()
    shutil.copytree(root_a / "epoch_0_step_2", root_b / "epoch_0_step_2")
    (root_b / "LATEST").symlink_to("epoch_0_step_2")
    assert run(b, tmp_path / "rb", max_steps=6) == 0
    resumed = metrics(tmp_path / "rb")
    assert [r["step"] for r in resumed] == [3, 4, 5]
    for x, y in zip(full[3:], resumed):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-7)
        assert y["lr"] == x["lr"]
    vx = [r["val_loss"] for r in metrics(tmp_path / "ra", "val") if r["step"] >= 3]
    vy = [r["val_loss"] for r in metrics(tmp_path / "rb", "val")]
    assert vy == pytest.approx(vx, rel=1e-6)
    _close(_adapters(root_a), _adapters(root_b), atol=1e-6)
    # a finished run resumes to "nothing to do"
    assert run(b, tmp_path / "rb2", max_steps=6) == 0


def test_partial_corrupt_and_foreign_checkpoints_are_refused(cfg_factory, tmp_path, capsys):
    a = cfg_factory("base.yaml", ckpt=True, mutate=lambda c: c["step_scheduler"].update(ckpt_every_steps=1,
                                                                                       global_batch_size=2))
    assert run(a, tmp_path / "ra", max_steps=2) == 0
    root = _ckpt_root(a)
    good = root / "epoch_0_step_1"
    saved = tmp_path / "saved"
    shutil.copytree(root, saved, symlinks=True)
    capsys.readouterr()

    (good / ".nemo_migrate_checkpoint.json").unlink()  # interrupted save (no manifest)
    assert run(a, tmp_path / "rx", max_steps=3) == 1
    err = capsys.readouterr().err
    assert "incomplete" in err and "epoch_0_step_1" in err and "Hint:" in err
    assert not (tmp_path / "rx" / "metrics.jsonl").exists()

    shutil.rmtree(root)
    shutil.copytree(saved, root, symlinks=True)
    f = good / "model" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])  # truncated file
    assert run(a, tmp_path / "ry", max_steps=3) == 1
    assert "corrupt" in capsys.readouterr().err

    shutil.rmtree(root)
    shutil.copytree(saved, root, symlinks=True)
    (root / "epoch_0_step_7").mkdir()  # a newer partial save beside a good LATEST: used LATEST, and says so
    assert run(a, tmp_path / "rz", max_steps=3) == 0
    cap = capsys.readouterr()
    assert "epoch_0_step_7 is incomplete" in cap.out and "resuming from" in cap.err

    other = tmp_path / "other.yaml"
    other.write_text(a.read_text().replace("dim: 8", "dim: 4"))
    assert run(other, tmp_path / "rw", max_steps=4) == 1
    assert "different run" in capsys.readouterr().err


def test_full_finetune_consolidated_checkpoint_loads_and_generates(cfg_factory, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = cfg_factory("full.yaml", ckpt=True, peft=False,
                    mutate=lambda c: c["step_scheduler"].update(global_batch_size=2))
    assert run(c, tmp_path / "r", max_steps=2) == 0
    model_dir = _ckpt_root(c) / "LATEST" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    ids = tok("Q: alpha beta", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    # the saved weights are the trained ones (not the initial proxy)
    first = metrics(tmp_path / "r")[0]
    assert first["grad_norm"] > 0


def test_lora_run_adapter_reloads_in_peft_with_identical_logits(cfg_factory, tmp_path, tok_dir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    tiny_llama(vocab=320).save_pretrained(str(base_dir))
    for f in tok_dir.iterdir():
        shutil.copy(f, base_dir / f.name)
    c = cfg_factory("lora.yaml", ckpt=True, mutate=lambda c: c["optimizer"].update(lr=0.05))
    assert run(c, tmp_path / "r", max_steps=2, model_path=base_dir, merge=True) == 0
    adapter_dir = _ckpt_root(c) / "LATEST" / "model"
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    pm = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "r" / "merged"), local_files_only=True).eval()
    x = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        lp, lm = pm(input_ids=x).logits, merged(input_ids=x).logits
        lb = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)(input_ids=x).logits
    torch.testing.assert_close(lp, lm, rtol=1e-4, atol=1e-4)
    assert (lp - lb).abs().max() > 1e-3  # the adapter is not a no-op


# ------------------------------------------------------------------------------------------------- FP8


def test_fp8_conversion_keeps_lora_adapters_trainable():
    from types import SimpleNamespace

    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    from nemo_migrate.runtime import lora
    from nemo_migrate.runtime.fp8 import convert_fp8

    spec = SimpleNamespace(target_modules=["*_proj"], exclude_modules=[], match_all_linear=False, dim=8, alpha=16.0,
                           dropout=0.0, dropout_position="post", lora_A_init="xavier", lora_dtype=None)
    f8 = SimpleNamespace(recipe_name="tensorwise", enable_fsdp_float8_all_gather=False,
                         precompute_float8_dynamic_scale_for_fsdp=False, force_recompute_fp8_weight_in_bwd=False,
                         filter_fqns=["lm_head"], emulate=True)
    torch.manual_seed(0)
    plain = tiny_llama(dtype=torch.bfloat16)
    ref_count = None
    m = tiny_llama(dtype=torch.bfloat16)
    lora.apply_lora(plain, spec)
    ref_count = sum(p.numel() for p in plain.parameters() if p.requires_grad)
    targets = lora.find_targets(m, spec)
    converted = convert_fp8(m, f8)  # the frozen base linears first ...
    lora.apply_lora(m, spec, targets=targets)  # ... then LoRA around the Float8Linear
    assert len(converted) == 14 and "lm_head" not in converted
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == ref_count > 0
    mods = dict(m.named_modules())
    assert all(isinstance(mods[t], Float8Linear) and lora.is_lora(mods[t]) for t in targets)
    with torch.no_grad():
        for t in targets:
            mods[t].lora_B.weight.normal_(0, 0.02)
    m(input_ids=torch.randint(0, 320, (2, 16))).logits.float().sum().backward()
    for t in targets:
        assert mods[t].lora_A.weight.grad.abs().sum() > 0 and mods[t].lora_B.weight.grad.abs().sum() > 0
        assert mods[t].weight.grad is None
    # Automodel 0.7.0's order (LoRA first, then the float8 swap) drops every adapter:
    bad = tiny_llama(dtype=torch.bfloat16)
    lora.apply_lora(bad, spec)
    convert_to_float8_training(bad, config=__import__("nemo_migrate.runtime.fp8", fromlist=["x"]).torchao_config(f8),
                               module_filter_fn=lambda mod, n: "lm_head" not in n)
    assert sum(p.numel() for p in bad.parameters() if p.requires_grad) == 0


def test_fp8_emulated_lora_run(cfg_factory, tmp_path, capsys):
    def f(c):
        c["model"]["dtype"] = "bfloat16"
        c["distributed"].pop("mp_policy")
        c["fp8"] = {"enabled": True, "recipe_name": "tensorwise", "enable_fsdp_float8_all_gather": True,
                    "precompute_float8_dynamic_scale_for_fsdp": True, "filter_fqns": ["lm_head"], "emulate": True}
        c["step_scheduler"]["global_batch_size"] = 2

    c = cfg_factory("fp8.yaml", mutate=f)
    assert run(c, tmp_path / "r", max_steps=2) == 0
    out = capsys.readouterr().out
    assert "fp8: 14 linear(s) run in float8" in out and "16,384 trainable" in out
    assert all(r["grad_norm"] > 0 for r in metrics(tmp_path / "r"))


# ------------------------------------------------------------------------------------------------- nemo_compat


@pytest.mark.parametrize("mode", ["automodel", "nemo"])
def test_loss_reduction_modes_report_the_hand_formula(cfg_factory, tmp_path, mode):
    c = cfg_factory(f"{mode}.yaml", mutate=lambda c: c.update(nemo_compat={"loss_reduction": mode}))
    with trainer_for(c, tmp_path / "r") as tr:
        batches = _first_step(tr)
        with torch.no_grad():
            sums = [float(tr._forward_ce(b)) for b in batches]
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        assert len(set(counts)) > 1  # unequal label counts per micro-batch
        out = tr.train_step(batches)
    per_token = sum(sums) / sum(counts)
    mean_of_means = sum(s / n for s, n in zip(sums, counts)) / len(counts)
    assert out["loss"] == pytest.approx(per_token if mode == "automodel" else mean_of_means, rel=1e-5)
    assert abs(per_token - mean_of_means) > 1e-4


@pytest.mark.parametrize("master", ["none", "fp32"])
def test_master_weights(cfg_factory, tmp_path, master):
    def f(c):
        c["model"]["dtype"] = "bfloat16"
        c["distributed"].pop("mp_policy")  # 0.7 default policy: bf16 params, fp32 reduce
        c["nemo_compat"] = {"master_weights": master}

    with trainer_for(cfg_factory(f"mw-{master}.yaml", mutate=f), tmp_path / "r") as tr:
        trainable = {p.dtype for p in tr.model.parameters() if p.requires_grad}
        frozen = {p.dtype for p in tr.model.parameters() if not p.requires_grad}
        assert frozen == {torch.bfloat16}
        assert trainable == ({torch.float32} if master == "fp32" else {torch.bfloat16})
        seen = []
        h = tr.inner.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
        out = tr.train_step(_first_step(tr))
        h.remove()
        assert seen and set(seen) == {torch.bfloat16}  # compute stays bf16
        assert {p.dtype for p in tr.model.parameters() if p.requires_grad} == trainable
        st = tr.optimizer.state[next(p for p in tr.model.parameters() if p.requires_grad)]
        assert st["exp_avg"].dtype == (torch.float32 if master == "fp32" else torch.bfloat16)
        assert out["loss"] > 0


@pytest.mark.parametrize("on", [False, True])
def test_no_decay_1d(cfg_factory, tmp_path, on):
    def f(c):
        c["optimizer"]["weight_decay"] = 0.1
        c["nemo_compat"] = {"no_decay_1d": on}
        c["lr_scheduler"] = {"lr_warmup_steps": 1, "lr_decay_steps": 5}

    with trainer_for(cfg_factory(f"nd-{on}.yaml", peft=False, mutate=f), tmp_path / "r") as tr:
        tr.train_step(_first_step(tr))
        wd = {}
        for g in tr.optimizer.param_groups:
            for p in g["params"]:
                wd[id(p)] = g["weight_decay"]
        names = {id(p): n for n, p in tr.inner.named_parameters()}
        one_d = [i for i in wd if "norm" in names[i]]
        two_d = [i for i in wd if "proj" in names[i]]
        assert one_d and two_d
        assert all(wd[i] == pytest.approx(0.1) for i in two_d)
        assert all(wd[i] == (0.0 if on else pytest.approx(0.1)) for i in one_d)


def test_lora_tied_a_run_writes_equivalent_peft_adapters(cfg_factory, tmp_path):
    c = cfg_factory("tied.yaml", ckpt=True, mutate=lambda c: c.update(nemo_compat={"lora_tied_a": True}))
    assert run(c, tmp_path / "r", max_steps=2) == 0
    ad = _adapters(_ckpt_root(c))
    for layer in range(2):
        p = f"base_model.model.model.layers.{layer}"
        qa = ad[f"{p}.self_attn.q_proj.lora_A.weight"]
        assert torch.equal(qa, ad[f"{p}.self_attn.k_proj.lora_A.weight"])
        assert torch.equal(qa, ad[f"{p}.self_attn.v_proj.lora_A.weight"])
        assert torch.equal(ad[f"{p}.mlp.gate_proj.lora_A.weight"], ad[f"{p}.mlp.up_proj.lora_A.weight"])
        assert not torch.equal(qa, ad[f"{p}.self_attn.o_proj.lora_A.weight"][:, :64])
    extra = json.loads((_ckpt_root(c) / "LATEST" / "model" / "automodel_peft_config.json").read_text())
    assert extra["nemo_compat_lora_tied_a"] is True and len(extra["tied_groups"]) == 4


def test_metrics_file_and_plot(cfg_factory, tmp_path):
    c = cfg_factory("m.yaml", mutate=lambda c: c["step_scheduler"].update(val_every_steps=1, global_batch_size=2))
    assert run(c, tmp_path / "r", max_steps=2) == 0
    tr, va = metrics(tmp_path / "r"), metrics(tmp_path / "r", "val")
    assert len(tr) == 2 and len(va) == 2
    for key in ("step", "loss", "grad_norm", "lr", "num_label_tokens", "tokens_per_s", "peak_mem_gib"):
        assert key in tr[0]
    assert va[0]["num_label_tokens"] > 0 and va[0]["val_loss"] > 0
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000


def test_preemption_signal_checkpoints_and_stops(cfg_factory, tmp_path):
    c = cfg_factory("sig.yaml", ckpt=True, mutate=lambda c: c["step_scheduler"].update(global_batch_size=2))
    with trainer_for(c, tmp_path / "r") as tr:
        real = tr.train_step

        def step_then_signal(batches):
            tr.preemption.received = True  # as if SIGTERM arrived during this step (0.7's preemption_signal)
            return real(batches)

        tr.train_step = step_then_signal
        tr.train()
    assert [r["step"] for r in metrics(tmp_path / "r")] == [0]
    assert (_ckpt_root(c) / "LATEST").resolve().name == "epoch_0_step_0"
    assert run(c, tmp_path / "r2", max_steps=2) == 0  # and the next run resumes after it
    assert [r["step"] for r in metrics(tmp_path / "r2")] == [1]


def test_nonfinite_loss_stops_naming_the_step_and_saves_the_weights_before_it(cfg_factory, tmp_path, capsys):
    """A learning rate of 1e30 blows the adapters up after the first update: the next step's loss is not finite.
    The run stops with exit 1 and a message naming that step, without applying it, and the checkpoint it leaves
    holds the (finite) weights from before it."""
    import re

    c = cfg_factory("nan.yaml", ckpt=True, mutate=lambda c: (c["optimizer"].update(lr=1e30),
                                                             c["step_scheduler"].update(global_batch_size=2, ckpt_every_steps=100)))
    capsys.readouterr()
    assert run(c, tmp_path / "r", max_steps=6) == 1
    err = capsys.readouterr().err
    m = re.search(r"not finite at step (\d+)", err)
    assert m, err
    step = int(m.group(1))
    assert step >= 1 and "Traceback" not in err and "Hint:" in err
    rows = metrics(tmp_path / "r", "train")
    assert rows[-1]["step"] == step and rows[-1].get("nonfinite") is True
    assert all(r.get("nonfinite") is None for r in rows[:-1])
    saved = _adapters(_ckpt_root(c))
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
