"""Building and running the legs of ``run --verify``.

Every leg is the bundled runtime (``nemo-migrate run``) in its own process on a config written here: the reference
leg (reference.py), the migrated leg (the emitted Automodel YAML with this machine's data, tokenizer and process
count), and the attribution legs: the migrated leg with one admitted approximation removed, i.e. with the keys that
express it taken from the reference leg's config (``APPROXIMATIONS``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .report import LegRun


class VerifyError(Exception):
    pass


@dataclass(frozen=True)
class Approximation:
    rule: str  # the rule whose bucket admits it
    removed_means: str
    from_reference: tuple[str, ...]  # the config keys that express it: removing it takes them from the reference leg


APPROXIMATIONS = {
    "lora_fused_vs_split": Approximation("PEFT002", "one A shared by q/k/v and by gate/up (NeMo's fused adapters)",
                                         ("nemo_compat.lora_tied_a",)),
    "loss_reduction": Approximation("MOD007", "NeMo's mean of per-micro-batch token means", ("nemo_compat.loss_reduction",)),
    "master_weights": Approximation("OPT007", "fp32 master copies of the trainable parameters",
                                    ("nemo_compat.master_weights", "nemo_compat.no_decay_1d")),
    "tokenization": Approximation("DAT002", "the samples tokenized as NeMo's GPTSFTDataset does", ("dataset",)),
    "lr_schedule": Approximation("LRS001", "NeMo's learning rate at every step", ("nemo_compat.lr_values",)),
    "fp8_scaling": Approximation("FP8001", "BF16, as the reference leg (Transformer Engine's delayed-scaling FP8 cannot run here)",
                                 ("fp8",)),
}


def without(base: dict, reference: dict, names: list[str]) -> dict:
    """The migrated leg's config with the approximations ``names`` removed."""
    cfg = json.loads(json.dumps(base))
    for n in names:
        for path in APPROXIMATIONS[n].from_reference:
            *parents, leaf = path.split(".")
            src, dst = reference, cfg
            for p in parents:
                src, dst = src.get(p) or {}, dst.setdefault(p, {})
            if leaf in src:
                dst[leaf] = json.loads(json.dumps(src[leaf]))
            else:
                dst.pop(leaf, None)
    return cfg


# ---------------------------------------------------------------------------------------------- inputs and configs

def yaml_load(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def yaml_dump(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000)


def data_files(job, data: Path | None) -> tuple[Path, Path | None]:
    """The training (and validation) JSONL: ``--data``, else the job's dataset_root."""
    root = data
    if root is None:
        r = job.value("data.dataset_root")
        root = Path(str(r)) if r else None
    if root is None or not Path(root).exists():
        raise VerifyError(f"the job's data ({job.value('data.dataset_root')}) is not on this machine; pass --data DIR "
                          "(a directory with training.jsonl and validation.jsonl, as NeMo's FineTuningDataModule reads)")
    root = Path(root)
    if root.is_file():
        return root, None
    train = root / "training.jsonl"
    if not train.is_file():
        raise VerifyError(f"{root} has no training.jsonl (NeMo's FineTuningDataModule layout)")
    val = root / "validation.jsonl"
    return train, val if val.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise VerifyError(f"{path}:{n}: not JSON ({e.msg})") from None
    if not rows:
        raise VerifyError(f"{path} is empty")
    return rows


def environment(migrated: dict, *, nproc: int, seq_length: int | None, tok_dir: Path, train: Path) -> tuple[dict[str, Any], list[str]]:
    """What both legs need to run here (local data and tokenizer, this machine's process count, no checkpoints), and
    notes on what that changes."""
    tp = int((migrated.get("distributed") or {}).get("tp_size") or 1)
    notes = []
    if nproc % tp:
        notes.append(f"tp_size {tp} -> {math.gcd(tp, nproc)} ({nproc} process(es) here; the math is the same at any TP)")
        tp = math.gcd(tp, nproc)
    ds = dict(migrated["dataset"])
    ds["path_or_dataset_id"] = str(train)
    ds["tokenizer"] = {**(ds.get("tokenizer") or {}), "pretrained_model_name_or_path": str(tok_dir)}
    if seq_length:
        ds["seq_length"] = seq_length
    env = {"distributed": {"tp_size": tp, "cp_size": 1, "pp_size": 1, "dp_size": None}, "checkpoint": {"enabled": False}, "dataset": ds}
    return env, notes


def migrated_config(migrated: dict, env: dict[str, Any], init_adapter: Path | None) -> dict:
    """The migrated leg: the Automodel YAML with this machine's environment, no validation or checkpoints, starting
    from the reference leg's initial adapters."""
    cfg = json.loads(json.dumps(migrated))
    for k, v in env.items():
        cfg[k] = {**(cfg.get(k) or {}), **v} if isinstance(v, dict) else v
    cfg.pop("validation_dataset", None)
    cfg.pop("validation_dataloader", None)
    cfg["step_scheduler"] = {**cfg["step_scheduler"], "val_every_steps": 10 ** 9, "ckpt_every_steps": 10 ** 9}
    if init_adapter is not None:
        cfg.setdefault("nemo_compat", {})["init_adapter"] = str(init_adapter)
    return cfg


# ---------------------------------------------------------------------------------------------- running legs

@dataclass(frozen=True)
class LegRunner:
    """How every runtime leg of one verification runs: steps, processes, the model, where, and the log."""
    work: Path
    steps: int
    nproc: int
    model_path: Path | None
    proxy_model: str | None
    log: Callable[[str], Any]
    jobs: int = 1

    def run(self, name: str, cfg: dict) -> LegRun:
        leg_dir = self.work / name
        leg_dir.mkdir(parents=True, exist_ok=True)
        (leg_dir / "config.yaml").write_text(yaml_dump({k: v for k, v in cfg.items() if not k.startswith("_")}))
        cmd = [sys.executable, "-m", "nemo_migrate.cli", "run", str(leg_dir / "config.yaml"), "--out", str(leg_dir / "run"),
               "--stop-after", str(self.steps), "--nproc-per-node", str(self.nproc)]
        if self.model_path:
            cmd += ["--model-path", str(self.model_path)]
        elif self.proxy_model:
            cmd += ["--proxy-model", self.proxy_model]
        self.log(f"leg {name}: {' '.join(shlex.quote(c) for c in cmd[2:])}")
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        (leg_dir / "output.txt").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
            raise VerifyError(f"leg '{name}' failed (exit {r.returncode}); its output is in {leg_dir / 'output.txt'}:\n{tail}")
        metrics = [json.loads(x) for x in (leg_dir / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        sp = leg_dir / "run" / "summary.json"
        return LegRun(name=name, dir=str(leg_dir), config=str(leg_dir / "config.yaml"), command=cmd[2:], seconds=round(time.time() - t0, 1),
                      steps=[m for m in metrics if m.get("type") == "train"], summary=json.loads(sp.read_text()) if sp.is_file() else {})

    def run_all(self, todo: dict[str, dict]) -> dict[str, LegRun]:
        """Independent legs, ``jobs`` at a time."""
        if self.jobs > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                futs = {name: pool.submit(self.run, name, cfg) for name, cfg in todo.items()}
                return {name: f.result() for name, f in futs.items()}
        return {name: self.run(name, cfg) for name, cfg in todo.items()}
