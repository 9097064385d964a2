"""Run outputs: RUN_DIR/metrics.jsonl (one line per optimizer step, plus validation lines), a progress display
(rich bar on a terminal, plain lines otherwise) and RUN_DIR/loss.png."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, path: Path, *, append: bool):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a" if append else "w", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        try:
            self.f.write(json.dumps(rec, sort_keys=False) + "\n")
            self.f.flush()
        except OSError as e:  # a full disk / file-size limit: name the file in the message
            self.broken = True
            if e.filename is None:
                e.filename = str(self.path)
            raise

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            if not getattr(self, "broken", False):
                raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Rank-0 progress: a rich bar when stdout is a terminal, plain ``step ...`` lines otherwise."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, rich_ok: bool | None = None):
        self.enabled = enabled
        self.total = total
        self.bar = None
        if not enabled:
            return
        tty = sys.stdout.isatty() if rich_ok is None else rich_ok
        if tty:
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

                self.bar = RP(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              TextColumn("{task.fields[info]}"), transient=False)
                self.bar.start()
                self.task = self.bar.add_task("train", total=total, completed=start, info="")
            except Exception:  # noqa: BLE001 - fall back to plain lines
                self.bar = None

    def step(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = (f"loss {rec['loss']:.4f} | lr {rec['lr']:.3e} | grad_norm {_fmt(rec['grad_norm'])} | "
                f"{rec['tokens_per_s']:,.0f} tok/s | mem {rec['peak_mem_gib']:.2f} GiB")
        if self.bar is not None:
            self.bar.update(self.task, completed=rec["step"] + 1, info=info)
        else:
            print(f"step {rec['step']} [{rec['step'] + 1}/{self.total}] | epoch {rec['epoch']} | {info} | "
                  f"label tokens {rec['num_label_tokens']}", flush=True)

    def line(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def plot_losses(metrics_path: Path, out: Path, title: str = "") -> bool:
    recs = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in recs if r.get("type") == "train" and math.isfinite(r.get("loss", 0))]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("type") == "val"]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", lw=1.2)
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation loss", lw=1.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return True


def peak_mem_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except Exception:  # noqa: BLE001
        return 0.0


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt

    def reset(self) -> None:
        self.t = time.perf_counter()


# ----------------------------------------------------------------------------------------------------------------
# Every sink of a run's metrics
# ----------------------------------------------------------------------------------------------------------------

def _section(cfg: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """A logger section the config turns on (``name: {...}`` without ``enable: false``), else None."""
    sec = (cfg or {}).get(name)
    if not isinstance(sec, dict) or sec.get("enable", True) is False:
        return None
    return {k: v for k, v in sec.items() if k != "enable"}


_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard"}


def check_loggers(cfg: dict[str, Any]) -> list[str]:
    """The logger sections the config turns on, each importable; a section whose package is missing is a RunError
    naming it (checked before training starts)."""
    import importlib

    from .errors import RunError

    on = []
    for name, module in _PACKAGES.items():
        sec = _section(cfg, name)
        if sec is None:
            continue
        if name == "tensorboard":  # the runtime's own section: its keys are known (wandb/mlflow take any init kwarg)
            from ..automodel.schema import ours

            bad = sorted(set(sec) - ours("tensorboard"), key=str)
            if bad:
                raise RunError("unknown key in the runtime's tensorboard section", key=f"tensorboard.{bad[0]}",
                               expected=", ".join(sorted(ours("tensorboard"))), found=bad[0])
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - missing, or broken on import: either way it cannot log
            pip = "tensorboard" if name == "tensorboard" else name
            raise RunError(f"the config has a `{name}:` section but the package {pip} is not importable", key=name,
                           hint=f"pip install {pip}, or remove the `{name}` section (or set {name}.enable: false)") \
                from None
        on.append(name)
    return on


def automodel_record(rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(file, record) as 0.7's train_ft writes them in the checkpoint dir (``recipes/llm/train_ft.py``:
    ``training.jsonl`` / ``validation[_<name>].jsonl``, ``MetricsSample.to_dict`` in ``loggers/metric_logger.py``)."""
    from datetime import datetime, timezone

    ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = {"step": rec["step"], "epoch": rec["epoch"], "timestamp": ts}
    if rec.get("type") == "val":
        name = rec.get("name", "default")
        return ("validation.jsonl" if name == "default" else f"validation_{name}.jsonl",
                head | {"val_loss": rec["val_loss"], "lr": rec.get("lr"), "num_label_tokens": rec["num_label_tokens"],
                        "mem": rec.get("peak_mem_gib")})
    return "training.jsonl", head | {
        "loss": rec["loss"], "grad_norm": rec["grad_norm"], "lr": rec["lr"], "mem": rec.get("peak_mem_gib"),
        "tps": rec.get("tokens_per_s"), "tps_per_gpu": rec.get("tokens_per_s_per_gpu"), "mfu": None,
        "num_tokens_per_step": rec.get("num_tokens"), "num_label_tokens": rec["num_label_tokens"]}


class RunLoggers:
    """Rank 0's metrics: RUN_DIR/metrics.jsonl (the runtime's), the checkpoint dir's ``training.jsonl`` and
    ``validation*.jsonl`` (0.7's, appended as 0.7's ``build_metric_logger`` does), and TensorBoard / W&B / MLflow when
    the config has their section (``check_loggers``). Same ``write``/``close`` as ``MetricsWriter``.

    W&B and MLflow get what 0.7's train_ft gives them: its record of the step (``automodel_record``; a named validation
    set's metrics prefixed ``val_<name>/`` in W&B) every ``step_scheduler.log_remote_every_steps`` training steps, a
    W&B run named after the model unless ``wandb.name`` is set, and an MLflow run (``loggers.MLflowConfig``; named
    after the run directory unless ``mlflow.run_name`` is set, where 0.7 lets MLflow pick a name) in its experiment,
    with the config as params (flattened to ``mlflow.flatten_depth`` levels) and as ``config.yaml``, resumed from the
    checkpoint dir's ``mlflow_run_id`` (or ``MLFLOW_RUN_ID``), ended FAILED when training raised."""

    def __init__(self, run_dir: Path, *, append: bool, ckpt_dir: Path | None = None,
                 cfg: dict[str, Any] | None = None, run_name: str = ""):
        self.main = MetricsWriter(Path(run_dir) / "metrics.jsonl", append=append)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.files: dict[str, MetricsWriter] = {}
        self.tb = self.wandb = self.mlflow = None
        cfg = cfg or {}
        self.remote_every = int((cfg.get("step_scheduler") or {}).get("log_remote_every_steps") or 1)
        on = check_loggers(cfg)
        if "tensorboard" in on:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(_section(cfg, "tensorboard").get("log_dir")
                                                or Path(run_dir) / "tensorboard"))
        if "wandb" in on:
            self.wandb = _started("wandb", _start_wandb, cfg, run_name)
        if "mlflow" in on:
            self.mlflow = _started("mlflow", _start_mlflow, cfg, self.ckpt_dir, run_name)

    def write(self, rec: dict[str, Any]) -> None:
        self.main.write(rec)
        name, am = automodel_record(rec)
        if self.ckpt_dir is not None and "nonfinite" not in rec:
            if name not in self.files:
                self.files[name] = MetricsWriter(self.ckpt_dir / name, append=True)
            self.files[name].write(am)
        scalars = {k: float(v) for k, v in rec.items()
                   if k not in ("type", "name", "step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        train = rec.get("type") == "train"
        prefix = "train" if train else f"val/{rec.get('name', 'default')}"
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, rec["step"])
        if train and rec["step"] % self.remote_every:
            return
        if self.wandb is not None:
            if train:
                self.wandb.log(am, step=rec["step"])
            else:
                metrics = {k: v for k, v in am.items() if k not in ("step", "epoch", "timestamp")}
                val = rec.get("name", "default")
                self.wandb.log(metrics if val == "default" else {f"val_{val}/{k}": v for k, v in metrics.items()}, step=rec["step"])
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in am.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                                and math.isfinite(v)}, step=rec["step"])

    def close(self, failed: bool = False) -> None:
        for w in self.files.values():
            w.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run(status="FAILED" if failed else "FINISHED")
        self.main.close()


def model_name(cfg: dict[str, Any]) -> str | None:
    """0.7's ``_get_model_name``: the model's id or path (or its config's)."""
    m = cfg.get("model") or {}
    if m.get("pretrained_model_name_or_path") is not None:
        return str(m["pretrained_model_name_or_path"])
    c = m.get("config")
    if isinstance(c, dict):
        return c.get("pretrained_model_name_or_path")
    return str(c) if c is not None else None


def _started(name: str, start, *args):
    """``start(*args)``; what the logger's package refuses (no credentials, a tracking server that does not answer, a
    bad URI) is a RunError naming the section, not an internal error."""
    from .errors import RunError

    try:
        return start(*args)
    except Exception as e:  # noqa: BLE001 - the logger library's own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"could not start its run: {type(e).__name__}: {first[:400]}", key=name,
                       hint=f"fix the `{name}:` section or the environment it needs (credentials, tracking server, "
                            f"{'WANDB_MODE=offline' if name == 'wandb' else 'MLFLOW_TRACKING_URI'}), or remove the section") from None


def _start_wandb(cfg: dict[str, Any], run_name: str):
    """0.7's ``WandbConfig.build``: every key of the section goes to ``wandb.init`` (project ``automodel`` unless
    given), the run is named after the model unless ``name`` is set, with the whole config."""
    import wandb

    kw = {k: v for k, v in _section(cfg, "wandb").items() if v is not None}
    kw.setdefault("project", "automodel")
    if not kw.get("name"):
        mn = model_name(cfg)
        kw["name"] = "_".join(mn.split("/")[-2:]) if mn else run_name
    return wandb.init(**kw, config=cfg, settings=wandb.Settings(silent=True))


def flatten_params(params: dict[str, Any], max_depth: int | None = 1, prefix: str = "", _depth: int = 0) -> dict[str, str]:
    """MLflow params as 0.7 logs them: dicts split into dotted keys up to ``max_depth`` levels (None: all), the rest
    (lists too) as strings."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and (max_depth is None or _depth < max_depth):
            out.update(flatten_params(v, max_depth, key, _depth + 1))
        else:
            out[key] = str(v)
    return out


def _start_mlflow(cfg: dict[str, Any], ckpt_dir: Path | None, run_name: str):
    """0.7's ``MLflowConfig.build``: the experiment (made with ``artifact_location`` when new), a run resumed from
    ``MLFLOW_RUN_ID`` or the checkpoint dir's ``mlflow_run_id`` (``resume``, default true) or started (and its id
    written there), ``description`` as the note tag, and for a new run the config as params and ``config.yaml``."""
    import os

    import mlflow

    sec = _section(cfg, "mlflow")
    if sec.get("tracking_uri"):
        mlflow.set_tracking_uri(sec["tracking_uri"])
    name = sec.get("experiment_name") or "automodel-experiment"
    exp = mlflow.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else mlflow.create_experiment(name=name, artifact_location=sec.get("artifact_location"))
    tags = dict(sec.get("tags") or {})
    if sec.get("description") is not None:
        tags["mlflow.note.content"] = str(sec["description"])
    sidecar = ckpt_dir / "mlflow_run_id" if ckpt_dir is not None else None
    resume_id = os.environ.get("MLFLOW_RUN_ID") or (
        sidecar.read_text().strip() if sec.get("resume", True) and sidecar is not None and sidecar.is_file() else None)
    run = mlflow.start_run(experiment_id=exp_id, run_id=resume_id or None, run_name=sec.get("run_name") or run_name, tags=tags)
    if resume_id is None:
        if sidecar is not None:
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            sidecar.write_text(run.info.run_id)
        mlflow.log_params(flatten_params(cfg, sec.get("flatten_depth", 1)))
        mlflow.log_dict(cfg, "config.yaml")
    return run
