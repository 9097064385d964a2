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
