"""Launch rows (PAR008, LCH*): how many processes on how many nodes, and the NeMo-Run executor or an sbatch script's #SBATCH header as run.sh / sbatch.sh facts."""

from __future__ import annotations

import re
from typing import Any

from ... import fsio
from ...emit import sbatch_plain
from ..context import Ctx, Registry, Result, nemo_default

transform = Registry()


@transform
def launch_size(ctx: Ctx) -> Result | None:
    ctx.set("launch.nproc_per_node", int(ctx.v("trainer.devices", 1)), "trainer.devices")
    ctx.set("launch.nnodes", int(ctx.v("trainer.num_nodes", 1)), "trainer.num_nodes")
    return None


@transform
def dist_env(ctx: Ctx) -> Result | None:
    ctx.set("dist_env.backend", "nccl")
    ctx.set("dist_env.timeout_minutes", 30)
    return None


def _static(value: Any) -> bool:
    """False for an executor argument recipe.py computes at run time (kept as '<source text>')."""
    return not (isinstance(value, str) and value.startswith("<") and value.endswith(">"))


@transform
def executor_size(ctx: Ctx) -> Result | None:
    """Nodes and processes per node: the trainer decides (it sized the parallel plan); the executor must agree."""
    kind = ctx.v("executor._target_")
    devices, num_nodes = int(ctx.v("trainer.devices", 1)), int(ctx.v("trainer.num_nodes", 1))
    ntasks = ctx.v("executor.ntasks_per_node", nemo_default("SlurmExecutor.ntasks_per_node"))
    nodes = ctx.v("executor.nodes", nemo_default("SlurmExecutor.nodes")) if kind == "SlurmExecutor" else 1
    launcher = ctx.v("executor.launcher")
    odd = []
    if _static(ntasks) and ntasks != devices:
        odd.append(f"{ntasks} processes per node (ntasks_per_node) but trainer.devices={devices}")
    if _static(nodes) and nodes != num_nodes:
        odd.append(f"{nodes} nodes but trainer.num_nodes={num_nodes}")
    if launcher not in (None, "torchrun", "ft") and _static(launcher):
        odd.append(f"launcher={launcher!r} (the migrated job is started by torchrun)")
    if kind != "SlurmExecutor":
        ctx.set("launch.executor", "local", "executor._target_")
        if odd:
            return Result("approximate", f"run.{kind}: {'; '.join(odd)}; run.sh follows the trainer (Lightning refuses a mismatch)")
        return None
    ctx.set("launch.executor", "slurm", "executor._target_")
    gpus = ctx.v("executor.gpus_per_node")
    if isinstance(gpus, int):
        ctx.set("launch.gpus_per_node", gpus, "executor.gpus_per_node")
    else:
        ctx.set("launch.gpus_per_node", devices, "trainer.devices")
    cpus = ctx.v("executor.cpus_per_task")
    if isinstance(cpus, int):
        ctx.set("launch.cpus_per_task", cpus, "executor.cpus_per_task")
    if odd:
        return Result("approximate", f"run.SlurmExecutor: {'; '.join(odd)}; sbatch.sh follows the trainer, since Lightning refuses a mismatch")
    return None


@transform
def executor_container(ctx: Ctx) -> Result | None:
    image = ctx.v("executor.container_image")
    if ctx.v("executor._target_") != "SlurmExecutor" or not image:
        return Result("dropped", "no container image")
    if not _static(image):
        return Result("unsupported", f"container_image is computed at run time ({image}); set CONTAINER_IMAGE for sbatch.sh")
    ctx.set("launch.image", image, "executor.container_image")
    ctx.note("warning", f"sbatch.sh keeps the container image {image}: it must provide nemo_automodel 0.7 (NeMo 2 framework images do not); "
                        "override with CONTAINER_IMAGE=... sbatch sbatch.sh")
    return None


_SBATCH_FIELDS = ("account", "partition", "time", "mem", "gres", "network")  # SlurmExecutor fields written as #SBATCH --<field>


@transform
def executor_slurm_options(ctx: Ctx) -> Result | None:
    kind = ctx.v("executor._target_")
    env = ctx.v("executor.env_vars")
    env_items = sorted(env.items()) if isinstance(env, dict) else []
    skipped = [f"env_vars.{k}" for k, v in env_items if not _static(v)]
    env_items = [(k, str(v)) for k, v in env_items if _static(v)]
    env_from = ("executor.env_vars", *(f"executor.env_vars.{k}" for k, _ in env_items))
    ctx.set("launch.env", env_items, *env_from)
    if kind != "SlurmExecutor":
        return Result("unsupported", f"computed at run time: {', '.join(skipped)}") if skipped else None
    sbatch: list[tuple[str, str | None]] = []
    froms: list[str] = []
    for key in _SBATCH_FIELDS:
        v = ctx.v(f"executor.{key}")
        if v in (None, ""):
            continue
        if not _static(v):
            skipped.append(key)
            continue
        sbatch.append((key, str(v)))
        froms.append(f"executor.{key}")
    if ctx.v("executor.exclusive"):
        sbatch.append(("exclusive", None))
        froms.append("executor.exclusive")
    extra = ctx.v("executor.additional_parameters") or {}
    if isinstance(extra, dict):
        froms.append("executor.additional_parameters")
        for k, v in sorted(extra.items()):
            if _static(v):
                sbatch.append((str(k).replace("_", "-"), None if v is True else str(v)))
                froms.append(f"executor.additional_parameters.{k}")
            else:
                skipped.append(f"additional_parameters.{k}")
    ctx.set("launch.sbatch", sbatch, *froms)
    prefix = ctx.v("executor.job_name_prefix")
    name = ctx.v("log.name") or "automodel"
    ctx.set("launch.job_name", f"{prefix if prefix and _static(prefix) else ''}{name}", "executor.job_name_prefix", "log.name")
    for key in ("container_mounts", "srun_args"):
        v = ctx.v(f"executor.{key}") or []
        if isinstance(v, list) and all(_static(x) for x in v):
            ctx.set(f"launch.{key.removeprefix('container_')}", [str(x) for x in v], f"executor.{key}")
        elif v:
            skipped.append(key)
    if skipped:
        return Result("unsupported", f"computed at run time, so not in sbatch.sh: {', '.join(skipped)}")
    return None


# ---------------------------------------------------------------- an sbatch script's #SBATCH header (LCH007-LCH009)

def _gres_gpus(gres: str) -> int | None:
    """The GPU count of a --gres value (``gpu:a100:4`` -> 4), None when it names no GPU count."""
    counts = [int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)(?=,|$)", gres)]
    return sum(counts) if counts else None


def _header_knobs(ctx: Ctx) -> list[str]:
    """The #SBATCH options this row owns, in the script's order."""
    paths = [p for p in ctx.owned_by(ctx.rule.id) if p != "sbatch._target_"] if ctx.rule else []
    return sorted(paths, key=lambda p: (ctx.k(p).prov.line or 0, p))


@transform
def sbatch_header(ctx: Ctx) -> Result | None:
    """The allocation and bookkeeping options of an sbatch script's #SBATCH header, carried into sbatch.sh as written."""
    if ctx.v("executor._target_") is not None:  # recipe.py's NeMo-Run executor decides the launch (LCH002-LCH006)
        return Result("unsupported", "the job launches on a NeMo-Run executor, whose settings sbatch.sh follows; set these there")
    ctx.set("launch.executor", "slurm", "sbatch._target_")
    sbatch: list[tuple[str, str | None]] = []
    froms: list[str] = []
    for path in _header_knobs(ctx):
        kn, field = ctx.k(path), path.removeprefix("sbatch.")
        value, where, flag = kn.value, kn.prov, field.replace("_", "-")
        if field == "job_name":
            ctx.set("launch.job_name", str(value), path)
        elif field == "cpus_per_task" and str(value).isdigit():
            ctx.set("launch.cpus_per_task", int(value), path)
        elif value in ("", None):
            ctx.note("info", f"#SBATCH --{flag} is empty at {where}: sbatch.sh leaves it out (the cluster's default); set it there if the cluster needs one")
        elif value is not True and not sbatch_plain(str(value)):
            ctx.note("warning", f"#SBATCH --{flag}={fsio.shown(str(value))} ({where}) is left out of sbatch.sh: not a plain #SBATCH value (NM611)")
            ctx.settle(path, "dropped", "left out of sbatch.sh: not a plain #SBATCH value (sbatch reads directives unquoted); "
                                        "add it to sbatch.sh by hand if the cluster needs it (NM611)")
            ctx.diags.warning("NM611", f"#SBATCH --{flag}={fsio.shown(str(value))} is left out of sbatch.sh: sbatch reads directives unquoted, "
                              "so only plain values can be written", key=path, **where.where(),
                              hint=f"fill in the value (a placeholder?) with plain characters, or add #SBATCH --{flag}=... to sbatch.sh by hand")
        else:
            sbatch.append((flag, None if value is True else str(value)))
            froms.append(path)
    gres = ctx.v("sbatch.gres")
    if gres is not None and _gres_gpus(str(gres)) in (None, int(ctx.v("trainer.devices", 1))) and sbatch_plain(str(gres)):
        sbatch.append(("gres", str(gres)))
        froms.append("sbatch.gres")
    ctx.set("launch.sbatch", sbatch, "sbatch._target_", *froms)
    return None


@transform
def sbatch_size(ctx: Ctx) -> Result | None:
    """The header's size options: sbatch.sh asks for what the job trains on (one task per node, whose torchrun starts a
    process per GPU); what says otherwise is left out, with why in the report."""
    devices, num_nodes = int(ctx.v("trainer.devices", 1)), int(ctx.v("trainer.num_nodes", 1))
    odd: list[str] = []
    for path in _header_knobs(ctx):
        kn, field = ctx.k(path), path.removeprefix("sbatch.")
        said = f"#SBATCH --{field.replace('_', '-')}={kn.value} ({kn.prov})"
        if field == "nodes":
            if str(kn.value) != str(num_nodes):
                odd.append(f"{said} but trainer.num_nodes={num_nodes}")
        elif field == "gpus_per_node":
            if str(kn.value) != str(devices):
                odd.append(f"{said} but trainer.devices={devices}")
        elif field == "gres":
            n = _gres_gpus(str(kn.value))
            if n is not None and n != devices:
                ctx.note("info", f"{said} is left out of sbatch.sh: it asks for {n} GPUs per node, the job trains on {devices} (--gpus-per-node={devices})")
        elif field in ("ntasks_per_node", "ntasks", "gpus_per_task"):
            ctx.note("info", f"{said} is left out of sbatch.sh: it starts one task per node (--ntasks-per-node=1), whose torchrun starts {devices} processes")
        else:  # gpus (-G): a total
            ctx.note("info", f"{said} is left out of sbatch.sh: it asks --gpus-per-node={devices} on each of its {num_nodes} node(s)")
    if odd:
        return Result("approximate", f"{'; '.join(odd)}: sbatch.sh follows the trainer ({num_nodes} node(s) x {devices} GPUs), since Lightning refuses a mismatch")
    return None
