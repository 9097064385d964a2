"""The project side of `make nemo-check`: what nemo-migrate believes each job trains, and what it emits.

    .venv/bin/python tools/nemo_oracle/ours.py JOBS.json OUT.json

Run with the project's venv (never with .nemo-venv).  For every job of jobs.py: ``nemo_migrate.convert.convert`` on the
same sources, factory, overrides and variant a user converts; the effective NeMo job that ``resolve`` built (captured
even when a later stage refuses), flattened by ``nemo_migrate.rules.collect_knobs``; the emitted Automodel targets; the LR
at every step of the emitted ``lr_scheduler`` section through Automodel 0.7.0's own ``LRSchedulerConfig.build`` /
``OptimizerParamScheduler`` on a dummy torch optimizer; and micro-batches per step through Automodel's own
``StepScheduler`` (grad_acc = GBS / (local_batch_size x DP), DP = world / (tp*cp*pp) as its mesh infers it, and with
pipeline parallelism local_batch_size // pp_microbatch_size pipeline micro-batches per accumulation step).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import nemo_migrate.convert as mc  # noqa: E402
from nemo_migrate import rules  # noqa: E402
from nemo_migrate.diagnostics import MigrateError  # noqa: E402
from nemo_migrate.ir import plain  # noqa: E402

LR_STEPS_MAX = 100_000  # a longer schedule is compared on its first steps only


def _json(v: Any) -> Any:
    v = plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _options(job: dict, empty: Path) -> mc.Options:
    o = job["ours"]
    if o.get("golden_case"):
        from nemo_migrate.golden import options_for

        return options_for(ROOT / o["golden_case"])
    opts = mc.Options(source=ROOT / o["source"] if o.get("source") else empty, factory=o.get("factory"),
                      sets=list(o.get("sets") or []), nproc_per_node=o.get("nproc"), nnodes=o.get("nnodes"))
    extra = list(o.get("extra") or [])
    while extra:  # the realworld case's command beyond `convert SOURCE`
        flag = extra.pop(0)
        val = extra.pop(0) if extra else None
        if flag == "--set":
            opts.sets.append(val)
        elif flag in ("--factory", "--launch-line", "--nproc-per-node", "--nnodes"):
            attr = {"--launch-line": "launch_line", "--nproc-per-node": "nproc_per_node"}.get(flag, flag.lstrip("-"))
            setattr(opts, attr, int(val) if attr != "factory" else val)
        else:
            raise SystemExit(f"ours.py: {job['id']}: unsupported convert argument {flag}")
    return opts


def lr_series(targets: dict[str, Any]) -> tuple[list[float] | None, str]:
    """The LR Automodel 0.7.0 uses at optimizer steps 0..max_steps-1 for the emitted config."""
    import torch
    from nemo_automodel.components.optim.optimizer import LRSchedulerConfig

    lr = targets.get("optimizer.lr")
    steps = targets.get("step_scheduler.max_steps")
    if not isinstance(lr, (int, float)) or not isinstance(steps, int) or steps <= 0:
        return None, f"not evaluated (optimizer.lr={lr!r}, step_scheduler.max_steps={steps!r})"
    n = min(steps, LR_STEPS_MAX)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(lr),
                          weight_decay=float(targets.get("optimizer.weight_decay") or 0.0))
    section = {k.split(".", 1)[1]: v for k, v in targets.items() if k.startswith("lr_scheduler.")}
    if not section and "lr_scheduler" not in targets:
        return [float(lr)] * n, "constant (no lr_scheduler section)"
    stub = type("StepSchedulerStub", (), {"epoch_len": None, "num_epochs": targets.get("step_scheduler.num_epochs"),
                                          "max_steps": steps})()
    try:
        sched = LRSchedulerConfig(**section).build(opt, stub)[0]
    except (AssertionError, ValueError, TypeError) as e:
        return None, f"Automodel rejects the lr_scheduler section: {type(e).__name__}: {e}"
    out = []
    for _ in range(n):
        out.append(float(opt.param_groups[0]["lr"]))
        sched.step(1)
    return out, "Automodel OptimizerParamScheduler"


def micro_batches(targets: dict[str, Any], world: int) -> dict[str, Any]:
    """Micro-batches per optimizer step and their size, as Automodel 0.7.0's StepScheduler and pipeline rule make them."""
    from nemo_automodel.components.distributed.mesh_utils import _infer_dp_size
    from nemo_automodel.components.training.step_scheduler import StepScheduler

    g = targets.get
    tp, cp, pp = (int(g(f"distributed.{k}_size") or 1) for k in ("tp", "cp", "pp"))
    try:
        dp = _infer_dp_size(g("distributed.dp_size"), world_size=world, non_dp_size=tp * cp * pp,
                            expression="tp_size * cp_size * pp_size", factors=(tp, cp, pp))
        lbs = int(g("step_scheduler.local_batch_size") or 1)
        ss = StepScheduler(global_batch_size=int(g("step_scheduler.global_batch_size")), local_batch_size=lbs, dp_size=dp,
                           dataloader=None, preemption_signal=None, max_steps=g("step_scheduler.max_steps"))
    except (ValueError, TypeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if pp > 1:
        pipe = g("distributed.pipeline") or {}
        pmbs = int(pipe.get("pp_microbatch_size", 1) if isinstance(pipe, dict) else 1)
        return {"dp": dp, "num_microbatches": ss.grad_acc_steps * (lbs // pmbs), "micro_batch_size": pmbs,
                "global_batch_size": ss.grad_acc_steps * lbs * dp}
    return {"dp": dp, "num_microbatches": ss.grad_acc_steps, "micro_batch_size": lbs, "global_batch_size": ss.grad_acc_steps * lbs * dp}


def run_job(job: dict, empty: Path) -> dict[str, Any]:
    captured: list = []
    orig = mc.resolve

    def recording_resolve(inp, diags, module=None):
        job_ = orig(inp, diags, module=module)
        captured.append((inp.variant, job_))
        return job_

    mc.resolve = recording_resolve
    out: dict[str, Any] = {"id": job["id"]}
    conv = None
    try:
        opts = _options(job, empty)
        conv = mc.convert(opts)
        diags = conv.diags
    except MigrateError as e:
        diags = e.diags
    finally:
        mc.resolve = orig
    want = job["ours"].get("variant")
    jobs_ = [j for v, j in captured if want is None or v == want]
    out["diagnostics"] = [{"severity": d.severity, "code": d.code, "message": d.message[:400]} for d in diags.sorted()
                          if d.severity != "note"]
    if not jobs_:
        out["resolve"] = "refused"
        return out
    ir = jobs_[-1]
    out["resolve"] = "ok"
    # `sbatch.*` is the launcher script's #SBATCH header (rules LCH007-LCH009): how the job is submitted, not part of the
    # job NeMo-Run builds, so NeMo has nothing to compare it with (tests/test_sbatch_in.py and tests/realworld check it)
    out["leaves"] = {p: {"v": _json(k.value), "prov": k.prov.kind} for p, k in rules.collect_knobs(ir).items()
                     if not p.startswith("sbatch.")}
    if conv is None:
        out["convert"] = "refused"
        return out
    vs = [v for v in conv.variants if want is None or v.name == want]
    v = vs[0]
    targets = {p: _json(t.value) for p, t in v.targets.items()}
    out["convert"] = "ok"
    out["targets"] = targets
    out["world"] = v.nproc * v.nnodes
    out["lr"], out["lr_how"] = lr_series(targets)
    out["micro"] = micro_batches(targets, out["world"])
    return out


def main(argv: list[str]) -> None:
    jobs = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    t0 = time.time()
    results = {}
    with tempfile.TemporaryDirectory(prefix="nemo-check-ours-") as tmp:
        for job in jobs:
            try:
                results[job["id"]] = run_job(job, Path(tmp))
            except Exception as e:  # noqa: BLE001 - a crash of the compiler is itself a finding
                import traceback

                results[job["id"]] = {"id": job["id"], "resolve": "crash", "crash": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc()[-2000:]}
    from importlib.metadata import version

    meta = {"seconds": round(time.time() - t0, 1), "nemo_migrate": version("nemo-migrate"),
            "nemo_automodel": version("nemo_automodel"), "torch": version("torch")}
    Path(argv[1]).write_text(json.dumps({"meta": meta, "jobs": results}), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
