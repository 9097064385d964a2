"""Building and running the legs of ``run --verify``.

Every leg is the bundled runtime (``nemo-migrate run``) on a config written here: the reference
leg (reference.py), the migrated leg (the emitted Automodel YAML with this machine's data, tokenizer and process
count), and the attribution legs: the migrated leg with one admitted approximation removed, i.e. with the keys that
express it taken from the reference leg's config (``APPROXIMATIONS``).  One-process legs run in long-lived runtime
processes (``LegServers``, runtime/legserver.py: process start, imports and CUDA init are paid once, not per leg);
legs of several processes are each their own ``nemo-migrate run`` under torchrun.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .report import LegRun


class VerifyError(Exception):
    pass


LOGGERS = ("wandb", "mlflow", "comet", "tensorboard")  # sections no leg keeps: a leg logs nowhere but its run directory


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
    """The training (and validation) JSONL: ``--data``, else the job's dataset_root.  What is wrong with the data
    named is said about that data (a ``--data`` given is never answered with "pass --data")."""
    layout = "NeMo's FineTuningDataModule reads DIR/training.jsonl (and DIR/validation.jsonl), one JSON object a line"
    if data is None:
        r = job.value("data.dataset_root")
        root = Path(str(r)) if r else None
        if root is None or not root.exists():
            raise VerifyError(f"the job's data ({r}) is not on this machine; pass --data DIR ({layout})")
        what = f"the job's dataset_root {root}"
    else:
        root, what = Path(data), f"--data {data}"
        if not root.exists():
            raise VerifyError(f"{what}: no such file or directory ({layout}, or give the JSONL file itself)")
    if root.is_file():
        return root, None
    train = root / "training.jsonl"
    if not train.is_file():
        try:
            seen = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        except OSError as e:
            raise VerifyError(f"{what}: cannot be read ({e.strerror})") from None
        found = f"it holds {', '.join(seen[:8])}{' ...' if len(seen) > 8 else ''}" if seen else "it is empty"
        raise VerifyError(f"{what}: no training.jsonl in it ({found}); {layout}, or give the JSONL file itself")
    val = root / "validation.jsonl"
    return train, val if val.is_file() else None


def read_jsonl(path: Path, need: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a JSONL file: each a JSON object with the fields ``need`` (the job's prompt template reads them)."""
    rows = []
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise VerifyError(f"{path}: cannot be read ({e.strerror})") from None
    with fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise VerifyError(f"{path}:{n}: not JSON ({e.msg}); the training data is one JSON object a line") from None
                if not isinstance(row, dict):
                    raise VerifyError(f"{path}:{n}: a JSON {type(row).__name__}, not an object; the training data is one JSON object a line "
                                      f"with the fields {', '.join(need) or 'of the prompt template'}")
                missing = [k for k in need if k not in row]
                if missing:
                    raise VerifyError(f"{path}:{n}: no {', '.join(repr(k) for k in missing)} field (the row has "
                                      f"{', '.join(map(repr, sorted(row))) or 'no fields'}); the job's prompt template reads "
                                      f"{', '.join(need)}: give the job's own data, or --set data.dataset_kwargs.prompt_template=... "
                                      "/ label_key=... to the fields this data has")
                rows.append(row)
        except UnicodeDecodeError:
            raise VerifyError(f"{path}: not UTF-8 text (a JSONL file is needed)") from None
    if not rows:
        raise VerifyError(f"{path} is empty: no training rows")
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
    """The migrated leg: the Automodel YAML with this machine's environment, no validation, checkpoints or remote
    loggers (a verification's short legs are not the job's runs), starting from the reference leg's initial adapters."""
    cfg = json.loads(json.dumps(migrated))
    for k, v in env.items():
        cfg[k] = {**(cfg.get(k) or {}), **v} if isinstance(v, dict) else v
    for k in ("validation_dataset", "validation_dataloader", *LOGGERS):
        cfg.pop(k, None)
    cfg["step_scheduler"] = {**cfg["step_scheduler"], "val_every_steps": 10 ** 9, "ckpt_every_steps": 10 ** 9}
    if init_adapter is not None:
        cfg.setdefault("nemo_compat", {})["init_adapter"] = str(init_adapter)
    return cfg


# ---------------------------------------------------------------------------------------------- running legs

class Progress:
    """``leg 3/14: fp8/migrated ...`` on the console (with the seconds each leg took) and, with every leg's command
    line, in OUT/verify.log; the internal command lines are not printed (they are in the log and the report)."""

    def __init__(self, total: int, log: Callable[[str], Any], logfile: Path | None = None):
        self.total, self.log, self.logfile = total, log, logfile
        self.n = 0
        self.t0 = time.time()
        self._lock = threading.Lock()

    def record(self, text: str) -> None:
        if self.logfile is not None:
            with self._lock, self.logfile.open("a", encoding="utf-8") as fh:
                fh.write(text.rstrip("\n") + "\n")

    def say(self, text: str) -> None:
        self.log(text)
        self.record(f"[{time.time() - self.t0:7.1f} s] {text}")

    def start(self, label: str, what: str = "") -> int:
        with self._lock:
            self.n += 1
            i = self.n
        self.total = max(self.total, i)
        self.say(f"leg {i}/{self.total}: {label}{(' ' + what) if what else ''} ...")
        return i

    def done(self, i: int, label: str, seconds: float, ok: bool = True) -> None:
        self.say(f"leg {i}/{self.total}: {label} {'done' if ok else 'FAILED'} in {seconds:.1f} s ({time.time() - self.t0:.0f} s elapsed)")

    def reused(self, label: str, same_as: str) -> None:
        with self._lock:
            self.n += 1
            i = self.n
        self.total = max(self.total, i)
        self.say(f"leg {i}/{self.total}: {label}: same runtime config as {same_as}, its result is reused (not run again)")


def _digest(path: Path, memo: dict[str, str]) -> str:
    """Content digest of a file or of a directory's files (names and bytes), once per path."""
    key = str(path)
    if key not in memo:
        h = hashlib.sha256()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            h.update(str(f.relative_to(path) if f != path else "").encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        memo[key] = h.hexdigest()
    return memo[key]


OUTPUT_KEYS = frozenset({"checkpoint_dir", "log_dir"})  # where a run writes: compared as written, never by content


def _by_content(node: Any, memo: dict[str, str]) -> Any:
    """``node`` with every local input file or directory path replaced by its content digest (an output location,
    ``OUTPUT_KEYS``, stays as written: what is in it, maybe being written right now, does not decide the leg)."""
    if isinstance(node, dict):
        return {k: v if k in OUTPUT_KEYS else _by_content(v, memo) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_by_content(v, memo) for v in node]
    if isinstance(node, str) and ("/" in node or os.sep in node):
        try:
            p = Path(node)
            if p.exists():
                return "content:" + _digest(p, memo)
        except (OSError, ValueError):
            pass
    return node


def effective_key(cfg: dict, *, steps: int, nproc: int, model_path: Path | None, proxy_model: str | None, memo: dict[str, str]) -> str:
    """What decides a leg's result: the runtime's effective config of ``cfg`` (its own reading: defaults filled in,
    ``fp8.enabled: false`` the same as no fp8 section), with local files by content, and the steps run."""
    try:
        from nemo_migrate.runtime.api import RunOptions
        from nemo_migrate.runtime.spec import resolve

        spec = resolve(json.loads(json.dumps(cfg)), RunOptions(config=Path("leg.yaml"), nproc_per_node=nproc, model_path=model_path,
                                                                proxy_model=proxy_model, stop_after=steps),
                       file="leg.yaml", check_files=False).to_dict()
        spec.pop("config_path", None)
        spec.pop("notes", None)
        eff: Any = spec
    except Exception:  # noqa: BLE001 - the runtime refuses it: the leg runs and says why; compare the config as written
        eff = {"raw": cfg, "model_path": str(model_path), "proxy_model": proxy_model, "nproc": nproc}
    return json.dumps({"steps": steps, "config": _by_content(eff, memo)}, sort_keys=True, default=str)


class LegServers:
    """Up to ``size`` long-lived ``python -m nemo_migrate.runtime.legserver`` processes, each running one-process legs
    one after another (a leg's output goes to its own output.txt).  A server whose leg failed, or that died, is not
    used again; the next leg starts a fresh one.  What a server printed outside its legs is in ``logdir``."""

    def __init__(self, size: int, logdir: Path):
        self.size, self.logdir = max(1, size), logdir
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._lock = threading.Lock()
        self._live = 0
        self._n = 0
        self._all: list[subprocess.Popen] = []
        self.start_seconds: list[float] = []  # each server's start (imports, model modules) until it was ready

    def _start(self) -> subprocess.Popen:
        with self._lock:
            self._n += 1
            n = self._n
        self.logdir.mkdir(parents=True, exist_ok=True)
        with (self.logdir / f"legserver-{n}.log").open("w") as err:
            # servers side by side share the CPU cores (as torchrun's workers do), not each take them all
            env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.size)), **os.environ, "PYTHONUNBUFFERED": "1"}
            p = subprocess.Popen([sys.executable, "-m", "nemo_migrate.runtime.legserver"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        p.log = self.logdir / f"legserver-{n}.log"  # type: ignore[attr-defined]
        p.ready = False  # type: ignore[attr-defined]
        self._all.append(p)
        return p

    def prewarm(self) -> None:
        """Start one server now: its imports and CUDA init overlap with what verify does before the first leg."""
        with self._lock:
            if self._live >= self.size:
                return
            self._live += 1
        self._idle.put(self._start())

    def _acquire(self) -> subprocess.Popen:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            start = self._live < self.size
            if start:
                self._live += 1
        return self._start() if start else self._idle.get()

    @staticmethod
    def _hang_up(p: subprocess.Popen) -> None:
        """End of requests: the server finishes when its stdin closes."""
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass

    @staticmethod
    def _reap(p: subprocess.Popen) -> None:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def _drop(self, p: subprocess.Popen) -> None:
        self._hang_up(p)
        self._reap(p)
        with self._lock:
            self._live -= 1

    def _reply(self, p: subprocess.Popen) -> dict | None:
        assert p.stdout is not None
        while True:
            line = p.stdout.readline()
            if not line:
                return None
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict):
                return msg

    def run(self, req: dict) -> tuple[int, str]:
        """Run one leg; returns (exit code, what to say about a server that died while running it)."""
        while True:
            p = self._acquire()
            msg = self._send(p, req) if p.poll() is None else None
            if msg is not None and msg.get("accepted"):
                break
            self._drop(p)  # ended before it took the leg (killed while idle, or it did not start): not this leg's doing
            if not p.ready:  # type: ignore[attr-defined]
                return (p.returncode or 1), f"the runtime process did not start (exit {p.returncode}); see {p.log}"  # type: ignore[attr-defined]
        msg = self._reply(p)
        if msg is None or "rc" not in msg:
            self._drop(p)
            return (p.returncode or 1), f"the runtime process running it ended (exit {p.returncode})"
        if msg.get("last") or p.poll() is not None:
            self._drop(p)  # a failed leg (or one that loaded a model family new to it) ends its server
        else:
            self._idle.put(p)
        return int(msg["rc"]), ""

    def _send(self, p: subprocess.Popen, req: dict) -> dict | None:
        try:
            if not p.ready:  # type: ignore[attr-defined]
                ready = self._reply(p)
                if ready is None:
                    return None
                p.ready = True  # type: ignore[attr-defined]
                self.start_seconds.append(float(ready.get("seconds", 0.0)))
            assert p.stdin is not None
            p.stdin.write(json.dumps(req) + "\n")
            p.stdin.flush()
            return self._reply(p)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        for p in self._all:  # every server hangs up first, so they end side by side
            if p.poll() is None:
                self._hang_up(p)
        for p in self._all:
            self._reap(p)
            if p.stdout:
                p.stdout.close()


@dataclass
class _Done:
    label: str
    leg: LegRun | None = None
    error: Exception | None = None  # a VerifyError, or verify.automodel's AutomodelLegError


@dataclass(frozen=True)
class LegRunner:
    """How every runtime leg of one verification runs: steps, processes, the model, where, and the log.  Legs whose
    effective runtime config equals one already run (``done``, shared by the variants) are not run again."""
    work: Path
    steps: int
    nproc: int
    model_path: Path | None
    proxy_model: str | None
    log: Callable[[str], Any]
    jobs: int = 1
    progress: Progress | None = None
    prefix: str = ""  # the variant's name in progress lines ("fp8/") when there are several
    done: dict[str, _Done] = field(default_factory=dict)
    memo: dict[str, str] = field(default_factory=dict)
    servers: LegServers | None = None  # one-process legs run there (else each leg is its own process)

    def _progress(self) -> Progress:
        return self.progress or Progress(0, self.log)

    def key(self, cfg: dict) -> str:
        return effective_key(cfg, steps=self.steps, nproc=self.nproc, model_path=self.model_path, proxy_model=self.proxy_model, memo=self.memo)

    def _write(self, name: str, cfg: dict) -> Path:
        leg_dir = self.work / name
        leg_dir.mkdir(parents=True, exist_ok=True)
        (leg_dir / "config.yaml").write_text(yaml_dump({k: v for k, v in cfg.items() if not k.startswith("_")}))
        return leg_dir

    def _reuse(self, name: str, cfg: dict, prev: _Done) -> LegRun:
        leg_dir = self._write(name, cfg)  # the leg's own config stays next to the others, for reading
        self._progress().reused(self.prefix + name, prev.label)
        if prev.error is not None:
            raise prev.error
        assert prev.leg is not None
        return prev.leg.model_copy(update={"name": name, "config": str(leg_dir / "config.yaml"), "seconds": 0.0, "reused_from": prev.label})

    def run(self, name: str, cfg: dict) -> LegRun:
        key = self.key(cfg)
        if key in self.done:
            return self._reuse(name, cfg, self.done[key])
        label = self.prefix + name
        self.done[key] = rec = _Done(label)
        prog = self._progress()
        i, t0 = prog.start(label), time.time()
        try:
            rec.leg = self._run(name, cfg, label)
        except VerifyError as e:
            prog.done(i, label, time.time() - t0, ok=False)
            rec.error = e
            raise
        prog.done(i, label, time.time() - t0)
        return rec.leg

    def _run(self, name: str, cfg: dict, label: str) -> LegRun:
        leg_dir = self._write(name, cfg)
        cmd = [sys.executable, "-m", "nemo_migrate.cli", "run", str(leg_dir / "config.yaml"), "--out", str(leg_dir / "run"),
               "--stop-after", str(self.steps), "--nproc-per-node", str(self.nproc)]
        if self.model_path:
            cmd += ["--model-path", str(self.model_path)]
        elif self.proxy_model:
            cmd += ["--proxy-model", self.proxy_model]
        self._progress().record(f"    {label}: nemo-migrate {' '.join(shlex.quote(c) for c in cmd[3:])}")
        t0 = time.time()
        if self.servers is not None and self.nproc == 1:
            rc, died = self.servers.run({"config": str(leg_dir / "config.yaml"), "out": str(leg_dir / "run"), "log": str(leg_dir / "output.txt"),
                                         "stop_after": self.steps, "model_path": str(self.model_path) if self.model_path else None,
                                         "proxy_model": None if self.model_path else self.proxy_model})
            try:
                text = (leg_dir / "output.txt").read_text(errors="replace")
            except OSError:
                text = ""
            text += f"\n{died}" if died else ""
        else:
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            rc, text = r.returncode, r.stdout + r.stderr
            (leg_dir / "output.txt").write_text(text)
        if rc != 0:
            tail = "\n".join(text.strip().splitlines()[-8:])
            raise VerifyError(f"leg '{label}' failed (exit {rc}); its output is in {leg_dir / 'output.txt'}:\n{tail}")
        metrics = [json.loads(x) for x in (leg_dir / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        sp = leg_dir / "run" / "summary.json"
        return LegRun(name=name, dir=str(leg_dir), config=str(leg_dir / "config.yaml"), command=cmd[2:], seconds=round(time.time() - t0, 1),
                      steps=[m for m in metrics if m.get("type") == "train"], summary=json.loads(sp.read_text()) if sp.is_file() else {})

    def run_all(self, todo: dict[str, dict]) -> dict[str, LegRun]:
        """Independent legs, ``jobs`` at a time; a leg whose config is the same as another's runs once."""
        firsts: dict[str, str] = {}
        for name, cfg in todo.items():
            key = self.key(cfg)
            if key not in self.done:
                firsts.setdefault(key, name)
        fresh = {n: todo[n] for n in firsts.values()}
        out: dict[str, LegRun] = {}
        if self.jobs > 1 and len(fresh) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                futs = {name: pool.submit(self.run, name, cfg) for name, cfg in fresh.items()}
                out.update({name: f.result() for name, f in futs.items()})
        else:
            out.update({name: self.run(name, cfg) for name, cfg in fresh.items()})
        for name, cfg in todo.items():
            if name not in out:
                out[name] = self.run(name, cfg)  # same config as a leg run before: reused
        return {name: out[name] for name in todo}
