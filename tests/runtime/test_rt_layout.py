"""The runtime's checkpoints are Automodel 0.7.0's: loaded here with nemo_automodel's own checkpoint code
(``components/checkpoint/checkpointing.py`` Checkpointer.load_model / load_optimizer / load_on_dp_ranks /
load_on_global_ranks, ``checkpoint/utils.py`` find_latest_checkpoint / resolve_restore_from_to_checkpoint_dir,
``training/rng.py`` StatefulRNG). CPU, tiny proxy, 1 process and gloo 2 processes. Skips without nemo_automodel."""

import json
import random
from pathlib import Path

import pytest
import torch

from rt_helpers import has_automodel, metrics, run, tiny_llama

pytestmark = pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7 is not importable")

SCHED = {"lr_warmup_steps": 2, "lr_decay_steps": 10, "lr_decay_style": "cosine", "min_lr": 0.001}


def _train(cfg_factory, tmp_path, *, peft: bool, nproc: int = 1, name: str = "c.yaml") -> Path:
    def m(c):
        c["step_scheduler"].update(ckpt_every_steps=2, val_every_steps=2, global_batch_size=2 * nproc)
        c["lr_scheduler"] = dict(SCHED)

    cfg = cfg_factory(name, ckpt=True, peft=peft, mutate=m)
    out = tmp_path / f"run-{nproc}-{peft}"
    assert run(cfg, out, max_steps=4, nproc=nproc, checkpoint_dir=None) == 0
    return out / "checkpoints"


def _checkpointer(root: Path, *, peft: bool, dp_rank: int = 0):
    from nemo_automodel.components.checkpoint.checkpointing import Checkpointer
    from nemo_automodel.components.checkpoint.config import CheckpointingConfig

    return Checkpointer(CheckpointingConfig(checkpoint_dir=str(root), model_save_format="safetensors", is_peft=peft),
                        dp_rank=dp_rank, tp_rank=0, pp_rank=0)


def _am_scheduler(opt):
    from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler

    # other values than the run's: the checkpoint's must win (use_checkpoint_opt_param_scheduler, 0.7's default)
    return OptimizerParamScheduler(opt, init_lr=0.0, max_lr=0.5, min_lr=0.0, lr_warmup_steps=0, lr_decay_steps=99,
                                   lr_decay_style="linear", start_wd=0.0, end_wd=0.0, wd_incr_steps=99,
                                   wd_incr_style="constant")


class _Recorder:
    def load_state_dict(self, sd):
        self.sd = sd


def _check_pointers_and_states(root: Path, nproc: int) -> Path:
    from nemo_automodel.components.checkpoint.utils import (find_latest_checkpoint,
                                                            resolve_restore_from_to_checkpoint_dir)
    from nemo_automodel.components.training.rng import StatefulRNG

    step = root / "epoch_0_step_3"
    assert Path(find_latest_checkpoint(root)) == step
    assert Path(resolve_restore_from_to_checkpoint_dir(root, "LOWEST_VAL")).name in ("epoch_0_step_1", "epoch_0_step_3")
    train = [json.loads(x) for x in (root / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train] == [0, 1, 2, 3] and {"loss", "grad_norm", "lr", "tps", "timestamp"} <= set(train[0])
    assert [json.loads(x)["step"] for x in (root / "validation.jsonl").read_text().splitlines()] == [1, 3]
    losses = json.loads((step / "losses.json").read_text())
    assert set(losses) == {"train_loss", "val_loss"}
    assert not (step / "lr_scheduler.pt").exists() and not (step / ".incomplete").exists()
    for dp in range(nproc):
        rec = _Recorder()
        _checkpointer(root, peft=False, dp_rank=dp).load_on_dp_ranks(rec, "dataloader", str(step))
        assert isinstance(rec.sd["yielded"], int) and rec.sd["epoch"] == 0
    saved = torch.load(step / "rng" / "rng_global_rank_0.pt", weights_only=True)
    rng = StatefulRNG(seed=7, ranked=False)  # seeds everything with 7 ...
    _checkpointer(root, peft=False).load_on_global_ranks(rng, "rng", str(step))  # ... then restores the saved state
    assert torch.equal(torch.get_rng_state(), saved["torch_rng_state"])
    assert random.getstate()[1] == tuple(saved["random_rng_state"][1])
    assert sorted(p.name for p in (step / "rng").iterdir()) == [f"rng_global_rank_{r}.pt" for r in range(nproc)]
    steps = torch.load(step / "step_scheduler.pt", weights_only=True)
    assert steps == {"step": 4, "epoch": 0}  # 0.7's StepScheduler.state_dict: the next step
    return step


def _check_loader_resumes_at_the_same_sample(root: Path, step: Path, nproc: int) -> None:
    """0.7's loader (torchdata StatefulDataLoader over StatefulDistributedSampler, as ParallelAwareDataloader builds
    it) given the runtime's dataloader file continues at the sample the runtime would take next."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    from nemo_migrate.runtime.data import DistributedSamplerOrder

    for dp in range(nproc):
        ds = list(range(96))  # conftest's train.jsonl: 96 rows; base_config: seed 1234, shuffle, batch size 1
        sampler = StatefulDistributedSampler(ds, num_replicas=nproc, rank=dp, shuffle=True, seed=1234, drop_last=True)
        dl = StatefulDataLoader(ds, batch_size=1, sampler=sampler, collate_fn=list)
        _checkpointer(root, peft=False, dp_rank=dp).load_on_dp_ranks(dl, "dataloader", str(step))
        sampler.set_epoch(0)
        k = torch.load(step / "dataloader" / f"dataloader_dp_rank_{dp}.pt", weights_only=True)["yielded"]
        order = DistributedSamplerOrder(96, num_replicas=nproc, rank=dp, shuffle=True, seed=1234).indices(0)
        assert k == 8 and next(iter(dl)) == order[k:k + 1]


def _check_optimizer(ckpt, step: Path, model, n_params: int) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sched = _am_scheduler(opt)
    ckpt.load_optimizer(opt, model, str(step), [sched])
    assert len(opt.state) == n_params and all(float(s["step"]) == 4.0 for s in opt.state.values())
    assert all(s["exp_avg_sq"].abs().sum() > 0 for s in opt.state.values())
    assert sched.num_steps == 4 and sched.lr_decay_style == "cosine" and sched.max_lr == pytest.approx(0.01)


def _full_ft_loads(root: Path, nproc: int) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    step = _check_pointers_and_states(root, nproc)
    _check_loader_resumes_at_the_same_sample(root, step, nproc)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(step / "model"), dtype=torch.float32)
    ckpt = _checkpointer(root, peft=False)
    ckpt.load_model(model, str(step / "model"))
    ref = load_file(str(step / "model" / "model.safetensors"))
    sd = model.state_dict()
    assert len(ref) == len(sd) and all(torch.equal(sd[k], v) for k, v in ref.items())
    _check_optimizer(ckpt, step, model, len(list(model.parameters())))


def test_full_finetune_checkpoint_loads_with_automodel(cfg_factory, tmp_path):
    _full_ft_loads(_train(cfg_factory, tmp_path, peft=False), nproc=1)


def test_gloo_two_process_checkpoint_loads_with_automodel(cfg_factory, tmp_path):
    _full_ft_loads(_train(cfg_factory, tmp_path, peft=False, nproc=2), nproc=2)


def test_lora_checkpoint_loads_with_automodel(cfg_factory, tmp_path, tok_dir):
    from safetensors.torch import load_file

    from nemo_automodel.components._peft.lora import PeftConfig, apply_lora_to_linear_modules

    root = _train(cfg_factory, tmp_path, peft=True)
    step = _check_pointers_and_states(root, 1)
    model = tiny_llama(320)  # the proxy "tiny"'s shape (LoRA on the projections: the vocabulary does not matter)
    n = apply_lora_to_linear_modules(model, PeftConfig(target_modules="*_proj", dim=8, alpha=16, dropout=0.0))
    assert n == 14
    ckpt = _checkpointer(root, peft=True)
    ckpt.load_model(model, str(step / "model"))
    ref = load_file(str(step / "model" / "adapter_model.safetensors"))
    sd = model.state_dict()
    assert len(ref) == 28 and all(torch.equal(sd[k.removeprefix("base_model.model.")], v) for k, v in ref.items())
    _check_optimizer(ckpt, step, model, 28)


def test_automodel_written_checkpoint_resumes_in_the_runtime(cfg_factory, tmp_path, capsys):
    """The reverse: a checkpoint Automodel 0.7's Checkpointer writes (from the state 0.7 loaded out of a runtime
    checkpoint) resumes in the runtime exactly like the runtime's own checkpoint."""
    import shutil

    from safetensors.torch import load_file
    from torchdata.stateful_dataloader import StatefulDataLoader
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
    from transformers import AutoConfig, AutoModelForCausalLM

    from nemo_automodel.components.checkpoint.checkpointing import save_config
    from nemo_automodel.components.training.rng import StatefulRNG

    root_a = _train(cfg_factory, tmp_path, peft=False)
    src = root_a / "epoch_0_step_3"
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src / "model"), dtype=torch.float32)
    ck_a = _checkpointer(root_a, peft=False)
    ck_a.load_model(model, str(src / "model"))
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    sched = _am_scheduler(opt)
    ck_a.load_optimizer(opt, model, str(src), [sched])
    ds = list(range(96))
    dl = StatefulDataLoader(ds, batch_size=1, collate_fn=list,
                            sampler=StatefulDistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=1234))
    ck_a.load_on_dp_ranks(dl, "dataloader", str(src))
    rng = StatefulRNG(seed=7, ranked=False)
    ck_a.load_on_global_ranks(rng, "rng", str(src))

    root_b = tmp_path / "written-by-automodel"
    ck_b = _checkpointer(root_b, peft=False)
    dst = root_b / "epoch_0_step_3"
    ck_b.lifecycle.reserve(str(dst))
    ck_b.save_on_global_ranks(rng, "rng", str(dst))  # first: nothing below draws random numbers, but be sure
    ck_b.save_model(model, str(dst))
    ck_b.save_optimizer(opt, model, str(dst), [sched])
    ck_b.save_on_dp_ranks(dl, "dataloader", str(dst))
    shutil.copy(src / "step_scheduler.pt", dst / "step_scheduler.pt")
    save_config(__import__("yaml").safe_load((src / "config.yaml").read_text()), str(dst))
    ck_b.lifecycle.publish(str(dst), best_val_metric=None, metric_key=None)
    assert not (dst / ".nemo_migrate_checkpoint.json").exists() and list((dst / "model").glob("shard-*.safetensors"))

    cfg = tmp_path / "c.yaml"
    # auto-detected, an unverifiable foreign checkpoint is refused, naming the way to resume it
    assert run(cfg, tmp_path / "auto", max_steps=6, checkpoint_dir=str(root_b)) == 1
    assert "checkpoint.restore_from=" in capsys.readouterr().err
    assert run(cfg, tmp_path / "from-a", max_steps=6, checkpoint_dir=str(root_a)) == 0
    assert run(cfg, tmp_path / "from-b", max_steps=6, checkpoint_dir=str(root_b),
               sets=["checkpoint.restore_from=epoch_0_step_3"]) == 0
    cap = capsys.readouterr()
    assert f"==> resuming from {dst} at step 4 of 6" in cap.err and "written by Automodel 0.7" in cap.out
    a, b = metrics(tmp_path / "from-a"), metrics(tmp_path / "from-b")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 5]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-6)
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
    wa = load_file(str(root_a / "epoch_0_step_5" / "model" / "model.safetensors"))
    wb = load_file(str(root_b / "epoch_0_step_5" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6) for k in wa)


def test_checkpoint_of_the_old_layout_is_refused_clearly(cfg_factory, tmp_path, capsys):
    root = _train(cfg_factory, tmp_path, peft=True)
    m = root / "epoch_0_step_3" / ".nemo_migrate_checkpoint.json"
    doc = json.loads(m.read_text())
    doc["format"] = "nemo-migrate-runtime-checkpoint/1"
    m.write_text(json.dumps(doc))
    capsys.readouterr()
    assert run(tmp_path / "c.yaml", tmp_path / "run-1-True", max_steps=6, checkpoint_dir=None) == 1
    err = capsys.readouterr().err
    assert "earlier nemo-migrate in its own layout" in err and "--no-resume" in err and "Traceback" not in err


@pytest.mark.parametrize("section,package,module", [("wandb", "wandb", "wandb"), ("mlflow", "mlflow", "mlflow"),
                                                    ("tensorboard", "tensorboard", "torch.utils.tensorboard")])
def test_logger_section_without_its_package_is_an_error(cfg_factory, tmp_path, capsys, monkeypatch, section, package, module):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # not importable here (installed or not)
    cfg = cfg_factory(mutate=lambda c: c.update({section: {"project": "x"} if section == "wandb" else {}}))
    assert run(cfg, tmp_path / "r", max_steps=1) == 1
    err = capsys.readouterr().err
    assert f"`{section}:` section" in err and f"pip install {package}" in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    # switched off, the section is no error
    off = cfg_factory("off.yaml", mutate=lambda c: c.update({section: {"enable": False}}))
    assert run(off, tmp_path / "r2", max_steps=1) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Automodel 0.7.0's train_ft recipe needs CUDA")
def test_automodel_train_ft_resumes_a_runtime_checkpoint(cfg_factory, tmp_path, tok_dir):
    """Real Automodel: its llm/train_ft recipe (under torchrun, as verify/automodel.py starts it) resumes the
    runtime's checkpoint at step 4 and trains on like the runtime's own resume."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from rt_helpers import ROOT

    model_dir = tmp_path / "model"  # one real HF dir both sides load (the runtime with --model-path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tiny_llama(len(tok)).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))

    def m(c):
        c["step_scheduler"].update(ckpt_every_steps=2, global_batch_size=2)
        c["lr_scheduler"] = dict(SCHED)
        c["model"]["pretrained_model_name_or_path"] = str(model_dir)
        c["dataset"]["tokenizer"]["pretrained_model_name_or_path"] = str(model_dir)

    cfg = cfg_factory("gpu.yaml", ckpt=True, peft=False, mutate=m)
    out = tmp_path / "rt"
    assert run(cfg, out, max_steps=4, proxy=None, model_path=model_dir, checkpoint_dir=None) == 0
    root = out / "checkpoints"
    mine = tmp_path / "rt-resume"
    shutil.copytree(root, mine, symlinks=True)
    assert run(cfg, tmp_path / "rt2", max_steps=6, proxy=None, model_path=model_dir, checkpoint_dir=str(mine)) == 0

    am = yaml.safe_load((root / "epoch_0_step_3" / "config.yaml").read_text())
    am["step_scheduler"]["max_steps"] = 6
    am["checkpoint"] = {"enabled": True, "checkpoint_dir": str(root), "model_save_format": "safetensors"}
    (tmp_path / "am.yaml").write_text(yaml.safe_dump(am))
    script = tmp_path / "train_ft.py"
    script.write_text("import sys\nfrom nemo_automodel.components.config.loader import load_yaml_config\n"
                      "from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction as R\n"
                      "r = R(load_yaml_config(sys.argv[1]))\nr.setup()\nr.run_train_validation_loop()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                        str(script), str(tmp_path / "am.yaml")], capture_output=True, text=True, env=env, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    assert f"Loading checkpoint from {root / 'epoch_0_step_3'}" in log, log[-6000:]
    recs = [json.loads(x) for x in (root / "training.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [0, 1, 2, 3, 4, 5]  # the runtime's 0-3, then Automodel's 4 and 5
    ours = {x["step"]: x for x in metrics(tmp_path / "rt2")}
    for x in recs[4:]:  # the same weights, optimizer moments, LR schedule position and data position
        assert x["lr"] == pytest.approx(ours[x["step"]]["lr"], rel=1e-6)
        assert x["num_label_tokens"] == ours[x["step"]]["num_label_tokens"]
        assert x["loss"] == pytest.approx(ours[x["step"]]["loss"], rel=2e-3)


def test_tensorboard_section_writes_scalars(cfg_factory, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_factory(mutate=lambda c: (c["step_scheduler"].update(global_batch_size=2, val_every_steps=2),
                                        c.update(tensorboard={"log_dir": str(tmp_path / "tb")})))
    assert run(cfg, tmp_path / "r", max_steps=2) == 0
    ev = EventAccumulator(str(tmp_path / "tb"))
    ev.Reload()
    loss = [(e.step, e.value) for e in ev.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in metrics(tmp_path / "r")]
    assert [e.step for e in ev.Scalars("val/default/val_loss")] == [1]


def test_tensorboard_section_with_an_unknown_key_is_an_error(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c.update(tensorboard={"logdir": str(tmp_path / "tb")}))
    assert run(cfg, tmp_path / "r", max_steps=1) == 1
    err = capsys.readouterr().err
    assert "tensorboard.logdir" in err and "log_dir" in err and not (tmp_path / "tb").exists()
