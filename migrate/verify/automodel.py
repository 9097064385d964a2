"""``run --verify --against automodel``: the migrated YAML trained by the REAL Automodel 0.7 recipe, beside the runtime.

The migrated leg of ``run --verify`` is the bundled runtime executing Automodel 0.7's semantics.  This checks that
runtime itself: the same YAML goes to ``nemo_automodel.recipes.llm.train_ft.TrainFinetuneRecipeForNextTokenPrediction``
(started by ``torchrun -m nemo_migrate.verify.automodel``, i.e. :func:`main`), from the same weights (a proxy is saved
to disk first, and every leg loads it), the same data file, tokenizer and seed, and the same initial LoRA A and B (the
reference leg's step-0 adapters are copied into Automodel's ``LinearLoRA`` modules after ``setup()``).  Nothing of
Automodel is patched: the leg only stops the loop after ``--steps`` optimizer steps (``step_scheduler.max_steps`` is
capped after ``setup()``, so the LR schedule is the configured one), records what ``build_model`` returned (LoRA and
FP8 modules, trainable parameters: also when ``setup()`` then fails on it) and reads Automodel's own ``training.jsonl``.

What it reports: per-step loss and grad norm of the runtime leg vs Automodel's (the same envelopes as the rest of
verify), the learning rate and label tokens of every step (label tokens must be equal: same samples, same order),
trainable parameters, LoRA-adapted modules, FP8 (``Float8Linear``) modules, and whether every adapter moved in
training.  LoRA dropout draws its masks from each framework's own RNG stream, so when the config has dropout the
pair is run a second time with dropout 0: that deterministic pair is what decides ``match``.

Automodel 0.7.0's recipe needs CUDA (``setup()`` calls ``torch.cuda.reset_peak_memory_stats``; its model loader puts
the model on ``torch.device("cuda", current_device())``), so this runs on GPU machines only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .report import (EXACT, AgainstAutomodel, AutomodelAdapters, AutomodelLegInfo, AutomodelSetup, AutomodelTrained, LabelTokens, LegRun,
                     PairComparison, envelope_of)

AUTOMODEL_VERSION = "0.7.0"
RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
PREFIX = "base_model.model."  # the runtime's adapter files use PEFT's key layout


def unavailable() -> str | None:
    """Why ``--against automodel`` cannot run here (None: it can)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec("nemo_automodel") is None:
        return ("nemo_automodel is not importable: pip install --no-deps nemo-automodel==0.7.0 plus the packages in "
                "requirements/automodel-check.txt (on a GPU machine without network, carry the wheels)")
    try:
        v = version("nemo-automodel")
    except PackageNotFoundError:
        v = "unknown"
    if v != AUTOMODEL_VERSION:
        return f"nemo-automodel {v} is installed; --against automodel checks the emitted YAML against {AUTOMODEL_VERSION}"
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'nemo-migrate[runtime]')"
    if not torch.cuda.is_available():
        return ("no CUDA device: Automodel 0.7.0's recipe cannot run on CPU (setup() calls "
                "torch.cuda.reset_peak_memory_stats and its model loader places the model on cuda:current_device())")
    return None


# ---------------------------------------------------------------------------------------------- config and legs

def automodel_config(leg_cfg: dict, *, model_dir: Path, leg_dir: Path) -> dict:
    """The migrated leg's YAML as Automodel runs it: the same sections, this machine's model dir, no checkpoints.

    ``leg_cfg`` is the runtime leg's config (legs.migrated_config: local data, tokenizer and process count already in
    it); the runtime-only ``nemo_compat`` section is removed."""
    cfg = json.loads(json.dumps(leg_cfg))
    cfg.pop("nemo_compat", None)
    recipe = cfg.get("recipe", RECIPE)
    if recipe != RECIPE:
        raise ValueError(f"recipe {recipe!r}: --against automodel runs {RECIPE} (llm/train_ft) only")
    model = dict(cfg.get("model") or {})
    model["pretrained_model_name_or_path"] = str(model_dir)
    cfg["model"] = model
    ck = dict(cfg.get("checkpoint") or {})
    ck.update(enabled=False, checkpoint_dir=str(leg_dir / "automodel"))  # training.jsonl lands here
    ck.pop("restore_from", None)
    cfg["checkpoint"] = ck
    from .legs import LOGGERS

    for k in LOGGERS:
        cfg.pop(k, None)
    return cfg


def adapter_targets(adapter: dict[str, Any], param_names: list[str]) -> dict[str, Any]:
    """Which of Automodel's LoRA parameters each adapter tensor goes to.

    Returns {"copy": {automodel_param: tensor}, "not_in_automodel": [adapter keys with no LoRA parameter there],
    "not_in_adapter": [Automodel LoRA parameters the file does not cover]}."""
    lora = [n for n in param_names if ".lora_A." in n or ".lora_B." in n]
    have = set(lora)
    copy, missing = {}, []
    for k, v in adapter.items():
        name = k[len(PREFIX):] if k.startswith(PREFIX) else k
        if name in have:
            copy[name] = v
        else:
            missing.append(name)
    return {"copy": copy, "not_in_automodel": sorted(missing), "not_in_adapter": sorted(have - set(copy))}


def inspect_model(model) -> AutomodelSetup:
    """LoRA-adapted and FP8 modules, trainable parameters (DTensor numel is the global size)."""
    lora, fp8, kinds = [], [], {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and hasattr(m, "lora_B"):
            lora.append(name)
        if type(m).__name__ == "Float8Linear":
            fp8.append(name)
    from nemo_migrate.runtime.models import count_params

    total, trainable = count_params(model)
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name in lora:
        kinds[name.rsplit(".", 1)[-1]] = kinds.get(name.rsplit(".", 1)[-1], 0) + 1
    return AutomodelSetup(lora_modules=len(lora), lora_module_kinds=kinds, float8_modules=len(fp8), float8_examples=fp8[:4],
                          trainable_params=trainable, total_params=total, trainable_examples=trainable_names[:4])


def run_leg(name: str, leg_cfg: dict, *, model_dir: Path, init_adapter: Path | None, work: Path, steps: int,
            nproc: int, log, progress=None, prefix: str = "") -> LegRun:
    """One Automodel leg in its own torchrun; returns the leg as it ran or raises AutomodelLegError."""
    leg_dir = work / name
    leg_dir.mkdir(parents=True, exist_ok=True)
    cfg = automodel_config(leg_cfg, model_dir=model_dir, leg_dir=leg_dir)
    import yaml

    (leg_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000))
    report = leg_dir / "automodel-leg.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "nemo_migrate.verify.automodel", str(leg_dir / "config.yaml"), "--steps", str(steps), "--report", str(report)]
    if init_adapter is not None:
        cmd += ["--init-adapter", str(init_adapter)]
    log(f"    {prefix}{name} (Automodel {AUTOMODEL_VERSION}): torchrun {' '.join(shlex.quote(c) for c in cmd[3:])}")
    i = progress.start(prefix + name, f"(Automodel {AUTOMODEL_VERSION}'s own recipe)") if progress is not None else 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(leg_dir / "hf-datasets"), "WANDB_MODE": "disabled"}
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (leg_dir / "output.txt").write_text(r.stdout + r.stderr)
    info = _leg_info(report)
    jl = leg_dir / "automodel" / "training.jsonl"
    rows = [json.loads(x) for x in jl.read_text().splitlines() if x.strip()] if jl.is_file() else []
    if progress is not None:
        progress.done(i, prefix + name, time.time() - t0, ok=r.returncode == 0 and bool(rows))
    if r.returncode != 0 or not rows:
        raised = _raised(r.stdout + r.stderr)
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-10:])
        raise AutomodelLegError(f"Automodel leg '{name}' failed (exit {r.returncode})" + (f": {raised}" if raised else "")
                                + f"; its output is in {leg_dir / 'output.txt'}:\n{tail}", info=info, output=str(leg_dir / "output.txt"),
                                raised=raised)
    steps_ = [{"step": int(x["step"]), "loss": x.get("loss"), "grad_norm": x.get("grad_norm"), "lr": x.get("lr"),
               "num_label_tokens": x.get("num_label_tokens"), "num_tokens": x.get("num_tokens_per_step")} for x in rows]
    setup = info.setup if info is not None and info.setup is not None else AutomodelSetup()
    return LegRun(name=name, dir=str(leg_dir), config=str(leg_dir / "config.yaml"), command=cmd[1:], seconds=round(time.time() - t0, 1),
                  steps=steps_, summary={"trainable_params": setup.trainable_params}, automodel=info)


def _leg_info(path: Path) -> AutomodelLegInfo | None:
    """What the leg recorded inside Automodel (None: it stopped before recording anything readable)."""
    try:
        return AutomodelLegInfo.model_validate_json(path.read_text())
    except (OSError, ValueError):  # not written, or cut short by the rank's failure
        return None


def _raised(text: str) -> str | None:
    """The exception a rank raised (``[rank0]: ValueError: ...``), not torchrun's ChildFailedError around it."""
    import re

    found = None
    for line in text.splitlines():
        m = re.match(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception)\b.*)$", line.strip())
        if m and "ChildFailedError" not in m.group(1) and ":" in m.group(1):
            found = m.group(1)
    return found


class AutomodelLegError(RuntimeError):
    def __init__(self, msg: str, *, info: AutomodelLegInfo | None, output: str, raised: str | None = None):
        super().__init__(msg)
        self.info, self.output, self.raised = info, output, raised


def compare(runtime_leg: LegRun, automodel_leg: LegRun) -> PairComparison:
    """Runtime (Automodel 0.7 semantics) vs real Automodel, step by step."""
    n = min(len(runtime_leg.steps), len(automodel_leg.steps))
    env_loss, rows = envelope_of(runtime_leg.series("loss")[:n], automodel_leg.series("loss")[:n])
    env_gn, _ = envelope_of(runtime_leg.series("grad_norm")[:n], automodel_leg.series("grad_norm")[:n])
    lr_r, lr_a = runtime_leg.series("lr")[:n], automodel_leg.series("lr")[:n]
    lr_rel = max((abs(a - b) / max(abs(b), 1e-30) for a, b in zip(lr_r, lr_a)), default=0.0)
    lab_r, lab_a = runtime_leg.column("num_label_tokens", n), automodel_leg.column("num_label_tokens", n)
    return PairComparison(steps=n, loss_envelope=env_loss, grad_norm_envelope=env_gn, max_abs_loss_diff=max((r.abs_diff for r in rows), default=0.0),
                          lr_max_rel_diff=lr_rel, label_tokens_equal=lab_r == lab_a, label_tokens=LabelTokens(runtime=lab_r[:5], automodel=lab_a[:5]),
                          per_step=rows)


def no_lora_finding(setup: AutomodelSetup) -> str:
    return ("Automodel has no LoRA-adapted modules after setup()"
            + (f" ({setup.float8_modules} Float8Linear modules: torchao's swap replaced the LinearLoRA modules and "
               "kept only their base weights)" if setup.float8_modules else ""))


def summarize(pairs: dict[str, PairComparison], runtime_legs: dict[str, LegRun], automodel_legs: dict[str, LegRun],
              peft: bool) -> AgainstAutomodel:
    """The verdict: ``match`` when the deterministic pair is within the standard envelope, the LR agrees, the label
    tokens are equal, the trainable parameter counts are equal and (LoRA) every adapter trained; else ``differs``."""
    decide = pairs.get("dropout0") or pairs.get("as_configured")
    findings = []
    am_info = next(iter(automodel_legs.values())).automodel if automodel_legs else None
    setup = (am_info.setup if am_info is not None else None) or AutomodelSetup()
    adapters = am_info.adapters if am_info is not None else None
    trained = am_info.trained if am_info is not None else None
    rt_tp = next(iter(runtime_legs.values())).summary.get("trainable_params") if runtime_legs else None
    if rt_tp is not None and setup.trainable_params is not None and rt_tp != setup.trainable_params:
        findings.append(f"trainable parameters: runtime {rt_tp:,}, Automodel {setup.trainable_params:,}")
    if peft:
        if not setup.lora_modules:
            findings.append(no_lora_finding(setup))
        if adapters is not None and adapters.not_in_adapter:  # they start from Automodel's own random A: the legs do not start alike
            findings.append(f"{len(adapters.not_in_adapter)} of Automodel's LoRA parameters are not in the initial adapters "
                            f"(e.g. {adapters.not_in_adapter[0]})")
        # adapter tensors with no LoRA parameter in Automodel (adapters.not_in_automodel) are reported, not a finding:
        # the file holds the reference leg's (NeMo's) targets, which may be more than the migrated config's
        if trained is not None and trained.adapters_with_gradient != trained.adapters_total:
            findings.append(f"{trained.adapters_with_gradient} of {trained.adapters_total} adapter tensors received a "
                            "gradient in training")
    if decide is not None:
        if decide.loss_envelope not in EXACT:
            findings.append(f"loss: '{decide.loss_envelope}' envelope (max |dloss| {decide.max_abs_loss_diff:.3g})")
        if decide.lr_max_rel_diff > 1e-6:
            findings.append(f"learning rate differs (max relative {decide.lr_max_rel_diff:.2e})")
        if not decide.label_tokens_equal:
            findings.append(f"label tokens per step differ: runtime {decide.label_tokens.runtime} vs Automodel "
                            f"{decide.label_tokens.automodel}")
    return AgainstAutomodel(verdict="match" if not findings and decide is not None else "differs", findings=findings,
                            decided_by="dropout0" if "dropout0" in pairs else "as_configured", pairs=pairs,
                            automodel_setup=setup, automodel_adapters=adapters, automodel_trained=trained)


def _run_once(name: str, cfg: dict, *, done: dict | None, memo: dict, prefix: str, progress, **kw) -> LegRun:
    """``run_leg``, unless a leg with the same config, weights, initial adapters and steps ran before (another variant's):
    then its result, marked ``reused_from``."""
    if done is None:
        return run_leg(name, cfg, progress=progress, prefix=prefix, **kw)
    from .legs import _by_content, _Done

    key = "automodel:" + json.dumps(_by_content({"config": cfg, "model": str(kw["model_dir"]), "init": str(kw["init_adapter"]),
                                                 "steps": kw["steps"], "nproc": kw["nproc"]}, memo), sort_keys=True, default=str)
    prev = done.get(key)
    if prev is not None:
        if progress is not None:
            progress.reused(prefix + name, prev.label)
        if prev.error is not None:
            raise prev.error
        return prev.leg.model_copy(update={"name": name, "seconds": 0.0, "reused_from": prev.label})
    done[key] = rec = _Done(prefix + name)
    try:
        rec.leg = run_leg(name, cfg, progress=progress, prefix=prefix, **kw)
    except AutomodelLegError as e:
        rec.error = e
        raise
    return rec.leg


def against_automodel(base: dict, dropout0: dict | None, legs: dict[str, LegRun], init: Path | None, *, work: Path, model_dir: Path,
                      steps: int, nproc: int, log: Callable[[str], Any], progress=None, prefix: str = "", done: dict | None = None,
                      memo: dict | None = None) -> AgainstAutomodel:
    """The migrated config run by the real Automodel 0.7 recipe; its legs join ``legs`` (so they are plotted and
    compared with the reference too) and the runtime-vs-Automodel comparison is returned."""
    runs = [("as_configured", "migrated", "automodel", base)]
    if dropout0 is not None:
        runs.append(("dropout0", "migrated-dropout0", "automodel-dropout0", dropout0))
    pairs: dict[str, PairComparison] = {}
    am_legs: dict[str, LegRun] = {}
    for key, rt_name, am_name, cfg in runs:
        try:
            am_legs[am_name] = _run_once(am_name, cfg, done=done, memo={} if memo is None else memo, prefix=prefix, progress=progress,
                                         model_dir=model_dir, init_adapter=init, work=work, steps=steps, nproc=nproc, log=log)
        except AutomodelLegError as e:
            setup = (e.info.setup if e.info is not None else None) or AutomodelSetup()
            res = AgainstAutomodel(verdict="failed", findings=[f"Automodel 0.7.0 stopped: {e.raised or 'see ' + e.output}"], error=str(e),
                                   automodel_output=e.output, automodel_setup=setup,
                                   automodel_adapters=e.info.adapters if e.info is not None else None, pairs=pairs)
            if base.get("peft") and setup.lora_modules == 0:
                res.findings.append(no_lora_finding(setup))
            return res
        except ValueError as e:
            return AgainstAutomodel(verdict="failed", findings=[str(e)], error=str(e), pairs=pairs)
        legs[am_name] = am_legs[am_name]
        pairs[key] = compare(legs[rt_name], am_legs[am_name])
    return summarize(pairs, {n: legs[n] for _, n, _, _ in runs}, am_legs, peft=bool(base.get("peft")))


# ---------------------------------------------------------------------------------------------- the leg itself

def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _assign(p, value) -> None:
    import torch

    v = value.to(device=p.device if not hasattr(p, "device_mesh") else p.to_local().device, dtype=p.dtype)
    with torch.no_grad():
        if hasattr(p, "device_mesh"):  # DTensor (FSDP2 / TP): shard the full value the way p is sharded
            from torch.distributed.tensor import distribute_tensor

            p.copy_(distribute_tensor(v, p.device_mesh, p.placements))
        else:
            p.copy_(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nemo_migrate.verify.automodel",
                                 description="Train an Automodel 0.7 YAML with Automodel's own llm/train_ft recipe (under torchrun).")
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--init-adapter", default=None)
    a = ap.parse_args(argv)

    import torch
    import torch.distributed as dist
    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    rank0 = int(os.environ.get("RANK", "0")) == 0
    report = AutomodelLegInfo(automodel_version=AUTOMODEL_VERSION, torch=torch.__version__)

    def write():
        if rank0:
            report.write(Path(a.report))

    import nemo_automodel.recipes.llm.train_ft as train_ft

    built = train_ft.build_model

    def observed_build_model(*args, **kwargs):  # records what Automodel built, even if setup() then fails on it
        m = built(*args, **kwargs)
        report.setup = inspect_model(m.parts[0] if hasattr(m, "parts") else m)
        write()
        return m

    train_ft.build_model = observed_build_model
    trainer = TrainFinetuneRecipeForNextTokenPrediction(load_yaml_config(a.config))
    trainer.setup()
    model = trainer.model_parts[0]
    params = dict(model.named_parameters())
    if a.init_adapter:
        from safetensors.torch import load_file

        plan = adapter_targets(load_file(a.init_adapter), list(params))
        for n, v in plan["copy"].items():
            _assign(params[n], v)
        report.adapters = AutomodelAdapters(copied=len(plan["copy"]), not_in_automodel=plan["not_in_automodel"],
                                            not_in_adapter=plan["not_in_adapter"])
        write()
    lora_names = [n for n in params if ".lora_A." in n or ".lora_B." in n]
    before = {n: _full(params[n].detach()).float().cpu().clone() for n in lora_names}
    trainer.step_scheduler.max_steps = min(int(trainer.step_scheduler.max_steps), a.steps)
    trainer.run_train_validation_loop()
    moved = sum(1 for n in lora_names if not torch.equal(before[n], _full(params[n].detach()).float().cpu()))
    finite = all(bool(torch.isfinite(_full(params[n].detach())).all()) for n in lora_names)
    # an adapter "trained" when the optimizer saw a gradient for it (Adam's first moment is non-zero); a bf16 weight
    # may still read unchanged after a few small-LR steps, so the moved count is reported but does not decide
    state = {}
    for opt in trainer.optimizer:
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state.get(p) or {}
                if "exp_avg" in st:
                    state[id(p)] = float(_full(st["exp_avg"]).abs().sum())
    with_grad = sum(1 for n in lora_names if state.get(id(params[n]), 0.0) > 0.0)
    report.trained = AutomodelTrained(adapters_total=len(lora_names), adapters_with_gradient=with_grad, adapters_moved=moved,
                                      adapters_finite=finite, steps=int(trainer.step_scheduler.step))
    write()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
