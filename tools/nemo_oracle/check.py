"""`make nemo-check`: what nemo-migrate believes NeMo trains vs what real NeMo 2.7.3 + NeMo-Run 0.11.1 build.

    .nemo-venv/bin/python tools/nemo_oracle/check.py [--only GLOB] [--out DIR] [--max-per-group N]

One process imports NeMo once and builds every job of tools/nemo_oracle/jobs.py the way a user runs it, through
NeMo-Run's own CLI code path (``nemo llm finetune ...``: NeMo-Run's console app; ``python recipe.py ...``: the file
run as ``__main__``, its ``run.cli.main`` parsing factory, ``--yaml`` and dotted overrides; notebooks: their code
cells in order).  ``run.run`` / ``run.Experiment.add`` are replaced by a capture that raises before anything runs:
the captured ``run.Partial`` is the job.  Meanwhile the project's venv runs tools/nemo_oracle/ours.py on the same
jobs (a separate process: the product never shares a process with NeMo).  Then, per job (compare.py):

* every leaf of the built config, flattened to dotted paths with normalized values (class leaf names for
  ``_target_``, enum values, dtypes as 'torch.bfloat16'), and the class defaults of every configured class read from
  its signature with ``inspect`` (what fiddle does not hold), against ``nemo_migrate.rules.collect_knobs`` of the job
  nemo-migrate resolved;
* what NeMo changes at launch, by NeMo's own code: ``llm.api._validate_config`` run on the built model, data module
  and strategy (its assertions are NeMo refusing the job; its silent fixes, e.g. sequence_parallel off with TP 1,
  are read back), and ``MegatronStrategy.setup``'s copy of ``trainer.max_steps`` into the LR scheduler
  (megatron_strategy.py:513, one assignment, done by the driver);
* the LR at every step: NeMo's own scheduler object (``optim.lr_scheduler.scheduler(model, optimizer)``, e.g.
  nemo.core.optim.lr_scheduler.CosineAnnealing) stepped on a dummy torch optimizer, against the emitted
  ``lr_scheduler`` section through Automodel 0.7.0's OptimizerParamScheduler (ours.py);
* micro-batches per step: megatron.core.num_microbatches_calculator with GBS, MBS and DP = world / (TP*PP*CP)
  (megatron.core.parallel_state), against Automodel's StepScheduler (ours.py).

Workarounds, all in this driver (no NeMo file is edited), each named in the output of the jobs that needed it:

* Transformer Engine is absent: the model config is built for ``_validate_config`` on a COPY with the fusions that
  need TE switched off (FUSIONS); the compared leaves come from the config itself.
* A data module whose constructor needs the network (a tokenizer download) is replaced, for ``_validate_config``
  and the micro-batch count only, by an instance of the same class holding the configured values.
* ``--eval-str-annotations`` (export_job.py): NeMo 2.7.3 rejects ``peft.*`` values from ``--yaml``/the command line
  (string annotations in llm/peft/lora.py).  The job is first built as typed (that refusal is the acceptance result);
  its leaves are then compared from a build with the annotations evaluated.
* ``--entry FN``: a recipe file without ``run.cli.main``/``run.run`` runs nothing; its factory is built with
  ``run.cli.main(FN)`` as NeMo-Run would if the file had the call (the acceptance result records that it runs nothing).
* Notebooks: code cells in order; ``!``/``%`` lines and ``%%bash``-like cells are skipped, ``%%writefile`` writes into
  a temporary copy of the notebook's folder, ``getpass``/``input`` return '', writes outside that copy are refused,
  the network is off (HF offline); a cell that fails is reported and the next one runs.  The first launch of
  ``llm.finetune`` is the job.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import copy
import dataclasses
import datetime as _dt
import enum
import fnmatch
import getpass
import importlib
import inspect
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import jobs as jobs_mod  # noqa: E402

PROJECT_PY = ROOT / ".venv" / "bin" / "python"
FUSIONS = ("apply_rope_fusion", "bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion",
           "persist_layer_norm", "gradient_accumulation_fusion", "moe_permute_fusion", "cross_entropy_loss_fusion")
LR_STEPS_MAX = 100_000


class Launched(BaseException):
    """Raised by the captured run.run: carries the job and stops whatever was launching it."""

    def __init__(self, task: Any, how: str, executor: Any = None):
        super().__init__(how)
        self.task, self.how, self.executor = task, how, executor


class Refused(Exception):
    pass


# ------------------------------------------------------------------------------------------------ environment

def _isolate_env(tmp: Path) -> None:
    """Before NeMo is imported: caches under a temporary folder, no network, no telemetry."""
    for k in ("NEMO_HOME", "NEMO_DATASETS_CACHE", "NEMO_MODELS_CACHE", "NEMORUN_HOME", "HF_HOME", "TRITON_CACHE_DIR"):
        os.environ[k] = str(tmp / k.lower())
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "WANDB_MODE": "disabled", "NEMORUN_SHOW_WARNINGS": "0", "TOKENIZERS_PARALLELISM": "false"})


_DEPTH = [0]
_BUF: list = []


@contextlib.contextmanager
def _silenced(log):
    """NeMo and NeMo-Run print a lot (logging handlers hold the original streams): fds 1 and 2 go to the log file,
    sys.stdout/sys.stderr to a buffer whose tail is the error message of a failed build.  One buffer for the
    process (a handler created meanwhile keeps it), emptied when the outermost use starts."""
    if _DEPTH[0]:
        _DEPTH[0] += 1
        try:
            yield _BUF[0]
        finally:
            _DEPTH[0] -= 1
        return
    if not _BUF:
        _BUF.append(_Buffer())
    buf = _BUF[0]
    buf.seek(0)
    buf.truncate()
    _DEPTH[0] = 1
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        _DEPTH[0] = 0
        log.write(buf.getvalue())
        log.flush()


class _Buffer(io.TextIOWrapper):
    """A text buffer with a real file descriptor (faulthandler.enable() in megatron asks sys.stderr for one)."""

    def __init__(self):
        super().__init__(tempfile.TemporaryFile(), encoding="utf-8", errors="replace")

    def getvalue(self) -> str:
        self.flush()
        pos = self.tell()
        self.seek(0)
        text = self.read()
        self.seek(pos)
        return text


def _err_tail(buf: "_Buffer", exc: BaseException | None) -> str:
    lines = [ln.strip() for ln in buf.getvalue().splitlines() if ln.strip()]
    hits = [ln for ln in lines if ln.startswith(("Unexpected error", "Error:")) or "Error" in ln.split(":")[0]]
    if exc is not None and not isinstance(exc, (SystemExit, _click_exits())):
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        text = f"{type(exc).__name__}: {exc}" if str(exc) else \
            f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {where.line}" if where else type(exc).__name__
    else:
        text = hits[-1] if hits else (lines[-1] if lines else f"{type(exc).__name__ if exc else 'no launch'}")
    text = " ".join(text.split())
    m = re.search(r"Failed to parse '.*?' as ([\w.\[\]]+=.+?): \{", text)  # NeMo-Run's nested parse error: say which argument
    if m:
        inner = re.search(r"Failed to parse '(.*?)' as (\w[\w\[\], ]*): (Unsupported type: [\w\[\], ]+)", text)
        text = f"{text.split(':')[0]}: cannot parse {m.group(1)}" + (f" ({inner.group(3)})" if inner else "")
    return text[:400]


def _click_exits() -> tuple:
    import click

    return (click.exceptions.Exit, click.exceptions.Abort)


# ------------------------------------------------------------------------------------------------ NeMo side

class Nemo:
    """Real NeMo 2.7.3 + NeMo-Run 0.11.1, imported once."""

    def __init__(self, log):
        self.log = log
        t = time.time()
        with _silenced(log):
            import fiddle as fdl
            import nemo_run as run
            import torch
            from nemo.collections import llm
            from nemo.collections.llm import api
            from nemo_run.cli import api as cli_api
            from nemo_run.cli import cli_parser
        self.import_s = time.time() - t
        self.fdl, self.run, self.torch, self.llm, self.api, self.cli_api, self.cli_parser = fdl, run, torch, llm, api, cli_api, cli_parser

        self.other_launches: list[str] = []

        def launch(task, how, executor):
            name = getattr(fdl.get_callable(task), "__name__", "") if isinstance(task, fdl.Buildable) else type(task).__name__
            if name == "finetune":
                raise Launched(task, how, executor)
            self.other_launches.append(f"{how} launches {name} (not the job; skipped)")  # e.g. llm.import_ckpt first

        def captured_run(fn_or_script=None, *a, **k):
            launch(fn_or_script if fn_or_script is not None else k.get("fn_or_script"), "run.run", k.get("executor"))

        class CapturedExperiment:
            def __init__(self, *a, **k):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def add(self, task, *a, **k):
                launch(task, "run.Experiment.add", k.get("executor"))

            def run(self, *a, **k):
                raise Refused("run.Experiment.run with nothing added")

        run.run = captured_run
        run.Experiment = CapturedExperiment

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {p: version(p) for p in ("nemo-toolkit", "nemo-run", "megatron-core", "lightning", "torch", "fiddle")} | \
            {"python": sys.version.split()[0]}

    # -- launching ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _eval_str_annotations(self):
        """export_job.py's --eval-str-annotations, reversible: NeMo-Run reads a parameter's annotation with a plain
        inspect.signature, so `from __future__ import annotations` (llm/peft/lora.py since 2.6) gives it the string
        'int' and it rejects every value; here the signature is read with eval_str=True."""
        cp = self.cli_parser
        orig_sig, orig_inspect = cp._signature, cp.inspect

        def _signature(fn):
            try:
                if fn is not dict:
                    return inspect.signature(fn, eval_str=True)
            except Exception:  # noqa: BLE001 - an annotation that does not evaluate: NeMo-Run's own reading
                pass
            return orig_sig(fn)

        def signature(obj, *a, **k):
            if not k.get("eval_str"):
                try:
                    return inspect.signature(obj, *a, eval_str=True, **k)
                except Exception:  # noqa: BLE001
                    pass
            return inspect.signature(obj, *a, **k)

        ns = types.SimpleNamespace(**{n: getattr(inspect, n) for n in dir(inspect) if not n.startswith("__")})
        ns.signature = signature
        cp._signature, cp.inspect = _signature, ns
        try:
            yield
        finally:
            cp._signature, cp.inspect = orig_sig, orig_inspect

    def launch(self, job: dict, workaround: bool = False, verbose: bool = False) -> tuple[Any, str, list[str]]:
        """(the launched run.Partial or None, the error text, notes); the executor it was launched on is self.executor."""
        self.executor = None
        self.other_launches = []
        spec = job["nemo"]
        notes: list[str] = []
        cwd0, argv0, path0, env0 = os.getcwd(), sys.argv, list(sys.path), dict(os.environ)
        main0 = sys.modules.get("__main__")
        tmp = None
        task, err = None, ""
        with _silenced(self.log) as buf, (self._eval_str_annotations() if workaround else contextlib.nullcontext()):
            exc: BaseException | None = None
            try:
                cwd = ROOT / spec.get("cwd", ".")
                if spec["mode"] == "notebook":
                    tmp = Path(tempfile.mkdtemp(prefix="nemo-check-nb-"))
                    shutil.copytree(cwd, tmp, dirs_exist_ok=True)
                    cwd = tmp
                os.chdir(cwd)
                if spec["mode"] == "cli":
                    argv = [*spec["argv"], *(["-v"] if verbose else [])]
                    sys.argv = ["nemo", *argv]
                    app = self.cli_api.create_cli()
                    app(args=argv, standalone_mode=False)
                elif spec["mode"] == "recipe":
                    self._recipe(cwd / spec["file"], spec.get("entry"), spec["argv"], notes)
                elif spec["mode"] == "notebook":
                    self._notebook(cwd / spec["file"], cwd, notes)
                else:
                    raise Refused(spec.get("why", f"unknown mode {spec['mode']}"))
            except Launched as launched:
                task, self.executor = launched.task, launched.executor
                notes += self.other_launches
                notes.append(f"launched through {launched.how}")
            except BaseException as e:  # noqa: BLE001 - NeMo's refusal (or the job's own failure), recorded
                exc = e
            finally:
                os.chdir(cwd0)
                sys.argv, sys.path[:] = argv0, path0
                os.environ.clear()
                os.environ.update(env0)
                if main0 is not None:
                    sys.modules["__main__"] = main0
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            if task is None:
                err = _err_tail(buf, exc) if exc is not None or buf.getvalue() else "the command launches nothing"
                if err.rstrip(":").endswith("Unexpected error") and spec["mode"] == "cli" and not verbose:
                    return self.launch(job, workaround, verbose=True)  # NeMo-Run printed an empty message: ask it with -v
                if exc is None and not err.startswith(("Unexpected", "Error")):
                    err = "the command launches nothing (" + err + ")"
        return task, err, notes

    def _recipe(self, file: Path, entry: str | None, argv: list[str], notes: list[str]) -> None:
        sys.path.insert(0, str(file.parent))
        sys.argv = [file.name, *argv]
        if entry is None:
            runpy.run_path(str(file), run_name="__main__")
            return
        # --entry: the file's functions in a __main__ module (its main block does not run), then run.cli.main(entry)
        mod = types.ModuleType("__main__")
        mod.__file__ = str(file)
        mod.__dict__["__name__"] = "__nemo_oracle_recipe__"
        exec(compile(file.read_text(encoding="utf-8"), str(file), "exec"), mod.__dict__)  # noqa: S102 - the oracle runs NeMo jobs
        mod.__dict__["__name__"] = "__main__"
        sys.modules["__main__"] = mod
        modname, _, attr = entry.rpartition(".")
        fn = getattr(importlib.import_module("nemo.collections." + modname if modname == "llm" else modname), attr)
        notes.append(f"workaround --entry {entry}: {file.name} calls neither run.cli.main nor run.run")
        self.run.cli.main(fn)

    def _notebook(self, file: Path, folder: Path, notes: list[str]) -> None:
        ns: dict[str, Any] = {"__name__": "__main__", "__file__": str(file)}
        folder = folder.resolve()

        def inside(p: Any) -> bool:
            try:
                return Path(os.path.abspath(os.fspath(p))).resolve().is_relative_to(folder)
            except TypeError:
                return True

        real_open, real_makedirs, real_mkdir = builtins.open, os.makedirs, os.mkdir

        def guarded_open(f, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and not isinstance(f, int) and not inside(f):
                raise PermissionError(f"nemo-check: the notebook writes {f} outside its folder (refused)")
            return real_open(f, mode, *a, **k)

        def guarded_makedirs(p, *a, **k):
            if not inside(p):
                raise PermissionError(f"nemo-check: the notebook creates {p} outside its folder (refused)")
            return real_makedirs(p, *a, **k)

        def guarded_mkdir(p, *a, **k):
            if not inside(p):
                raise PermissionError(f"nemo-check: the notebook creates {p} outside its folder (refused)")
            return real_mkdir(p, *a, **k)

        saved = (builtins.open, builtins.input, os.makedirs, os.mkdir, getpass.getpass)
        builtins.open, os.makedirs, os.mkdir = guarded_open, guarded_makedirs, guarded_mkdir
        builtins.input = getpass.getpass = lambda *a, **k: ""
        try:
            for i, cell in enumerate(json.loads(file.read_text(encoding="utf-8"))["cells"], 1):
                if cell.get("cell_type") != "code":
                    continue
                src = "".join(cell.get("source", []))
                head = src.lstrip().split("\n", 1)[0]
                if head.startswith("%%writefile"):
                    name = head.split()[-1]
                    if inside(folder / name):
                        (folder / name).write_text(src.lstrip().split("\n", 1)[1] if "\n" in src.lstrip() else "", encoding="utf-8")
                    continue
                if head.startswith("%%") and not head.startswith("%%capture"):
                    continue
                lines = [(ln[: len(ln) - len(ln.lstrip())] + "pass") if ln.lstrip().startswith(("!", "%")) else ln
                         for ln in src.splitlines()]
                try:
                    exec(compile("\n".join(lines), f"{file.name}:cell {i}", "exec"), ns)  # noqa: S102
                except Launched:
                    notes.append(f"notebook cell {i} launches the fine-tune")
                    raise
                except Exception as e:  # noqa: BLE001 - the notebook's environment (data, network): go on
                    notes.append(f"cell {i} fails here: {type(e).__name__}: {' '.join(str(e).split())[:120]}")
        finally:
            builtins.open, builtins.input, os.makedirs, os.mkdir, getpass.getpass = saved

    # -- reading the built job ----------------------------------------------------------------------------------

    def norm(self, v: Any) -> Any:
        fdl, torch = self.fdl, self.torch
        if isinstance(v, fdl.Buildable):
            out = {"_target_": _name(fdl.get_callable(v))}
            out.update({str(k): self.norm(x) for k, x in v.__arguments__.items()})
            return out
        if isinstance(v, enum.Enum):
            return self.norm(v.value)
        if isinstance(v, torch.dtype):
            return str(v)
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return v
        if isinstance(v, float):
            return v if v == v and abs(v) != float("inf") else repr(v)
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, (list, tuple)):
            return [self.norm(x) for x in v]
        if isinstance(v, dict):
            return {str(k): self.norm(x) for k, x in v.items()}
        if inspect.isclass(v) or inspect.isfunction(v) or inspect.isbuiltin(v) or isinstance(v, types.MethodType):
            return {"$callable": f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', _name(v))}"}
        if dataclasses.is_dataclass(v):
            return {"_target_": type(v).__name__, **{f.name: self.norm(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        return f"<{type(v).__name__}>"

    def defaults(self, fn: Any) -> dict[str, Any]:
        """Parameter defaults of a class or function, from its signature (dataclass default_factory called)."""
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return {}
        factories = {f.name: f.default_factory for f in dataclasses.fields(fn)} if inspect.isclass(fn) and dataclasses.is_dataclass(fn) else {}
        out = {}
        for name, p in sig.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is inspect.Parameter.empty:
                continue
            d = p.default
            if d is dataclasses._HAS_DEFAULT_FACTORY and factories.get(name) not in (None, dataclasses.MISSING):  # type: ignore[attr-defined]
                try:
                    d = factories[name]()
                except Exception as e:  # noqa: BLE001 - e.g. a Mamba stack spec without mamba_ssm installed
                    d = f"<default_factory fails here: {type(e).__name__}>"
            out[name] = d
        return out

    def flatten(self, cfg: Any, prefix: str = "", out: dict | None = None) -> dict[str, dict]:
        """Dotted leaves of a built config: explicit values, and every other parameter at its signature default."""
        fdl = self.fdl
        out = {} if out is None else out
        fn = fdl.get_callable(cfg)
        out[prefix + "_target_"] = {"v": _name(fn), "src": "explicit"}
        if inspect.isclass(fn) and fn is not dict:  # for the report: base classes, and what the class itself redefines
            out[prefix + "_target_"]["mro"] = [k.__name__ for k in fn.__mro__[1:] if k is not object]
            out[prefix + "_target_"]["own"] = sorted(k for k, v in vars(fn).items() if callable(v) and not k.startswith("__"))
        args = cfg.__arguments__
        defaults = self.defaults(fn) if fn is not dict else {}
        for k, v in args.items():
            p = prefix + str(k)
            if isinstance(v, fdl.Buildable):
                self.flatten(v, p + ".", out)
                if fdl.get_callable(v) is dict:
                    self._sink_defaults(fn, str(k), v, p + ".", out)
            elif isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
                for kk, vv in v.items():
                    out[f"{p}.{kk}"] = {"v": self.norm(vv), "src": "explicit"}
            else:
                out[p] = {"v": self.norm(v), "src": "explicit"}
                if k in defaults:
                    out[p]["d"] = self.norm(defaults[k])
        for k, d in defaults.items():
            if k not in args and not isinstance(d, fdl.Buildable):
                out[prefix + k] = {"v": self.norm(d), "src": "default"}
        return out

    def flatten_object(self, obj: Any, prefix: str, out: dict) -> None:
        """An object handed to run.run (the executor): a dataclass instance, whose fields at their default are defaults."""
        out[prefix + "_target_"] = {"v": type(obj).__name__, "src": "explicit"}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            v = getattr(obj, f.name)
            d = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if dataclasses.is_dataclass(v) and not isinstance(v, type) and not _eq(v, d):
                self.flatten_object(v, f"{prefix}{f.name}.", out)
            elif isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
                for kk, vv in v.items():
                    out[f"{prefix}{f.name}.{kk}"] = {"v": self.norm(vv), "src": "explicit"}
            elif d is not dataclasses.MISSING and _eq(v, d):
                if not dataclasses.is_dataclass(v):
                    out[prefix + f.name] = {"v": self.norm(v), "src": "default"}
            else:
                out[prefix + f.name] = {"v": self.norm(v), "src": "explicit"} | ({"d": self.norm(d)} if d is not dataclasses.MISSING else {})

    def _sink_defaults(self, owner: Any, arg: str, cfg: Any, prefix: str, out: dict) -> None:
        """A kwargs dict passed on to another NeMo function: its keys' defaults are that function's (a FineTuningDataModule's
        dataset_kwargs go to llm.gpt.data.core.create_sft_dataset)."""
        from nemo.collections.llm.gpt.data.core import create_sft_dataset
        from nemo.collections.llm.gpt.data.fine_tuning import FineTuningDataModule

        if arg == "dataset_kwargs" and inspect.isclass(owner) and issubclass(owner, FineTuningDataModule):
            for k, d in self.defaults(create_sft_dataset).items():
                key = prefix + k
                if key in out:
                    out[key].setdefault("d", self.norm(d))
                else:
                    out[key] = {"v": self.norm(d), "src": "default"}

    # -- NeMo's launch-time code: _validate_config, MegatronStrategy.setup, LR, micro-batches ----------------------

    def _build(self, cfg: Any, what: str) -> Any:
        fdl = self.fdl
        try:
            return fdl.build(cfg)
        except Exception as e:  # noqa: BLE001
            text = " ".join(str(e).split())
            if any(w in text for w in ("URLError", "offline", "Connection", "resolve host", "HTTPError", "Max retries",
                                       "OfflineModeIsEnabled", "HF_HUB_OFFLINE", "LocalEntryNotFound", "403", "404")) or \
                    isinstance(e, (OSError, ConnectionError)):
                return None
            raise Refused(f"{what} constructor raises {type(e).__name__}: {text[:300]}") from None

    def launch_time(self, task: Any, leaves: dict, notes: list[str]) -> str | None:
        """Run what NeMo runs on the built job before training; returns NeMo's refusal, or None."""
        fdl = self.fdl
        tr = getattr(task, "trainer", None)
        if not isinstance(tr, fdl.Buildable) or not isinstance(getattr(tr, "strategy", None), fdl.Buildable):
            return None
        model_cfg = copy.deepcopy(task.model)
        cfg = getattr(model_cfg, "config", None)
        if isinstance(cfg, fdl.Buildable):
            params = set(self.defaults(fdl.get_callable(cfg)))
            off = [f for f in FUSIONS if f in params]
            for f in off:
                setattr(cfg, f, False)
        model = self._build(model_cfg, "the model")
        if model is None and isinstance(cfg, fdl.Buildable):  # a constructor that needs the network: the config is what is read
            model = types.SimpleNamespace(config=self._build(cfg, "the model config"))
            notes.append(f"{fdl.get_callable(model_cfg).__name__}'s constructor needs the network here: its config stands in")
        data = self._build(task.data, "the data module")
        if data is None:
            cls = fdl.get_callable(task.data)
            data = cls.__new__(cls)
            for k, v in {**self.defaults(cls), **task.data.__arguments__}.items():
                try:
                    setattr(data, k, fdl.build(v) if isinstance(v, fdl.Buildable) else v)
                except Exception:  # noqa: BLE001 - a read-only property
                    pass
            notes.append(f"{cls.__name__}'s constructor needs the network here: a stand-in holds its configured values")
        strategy = self._build(tr.strategy, "the strategy")
        devices = tr.__arguments__.get("devices", self.defaults(fdl.get_callable(tr)).get("devices"))
        if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
            # Lightning's Trainer reads a device string as CUDAAccelerator.parse_devices does ("2" -> 2, "0,1" -> [0, 1])
            from lightning.fabric.utilities.device_parser import _normalize_parse_gpu_string_input

            devices = _normalize_parse_gpu_string_input(devices)
            leaves["trainer.devices"] = {"v": self.norm(devices), "src": "adjusted", "was": leaves["trainer.devices"]["v"]}
        nodes = tr.__arguments__.get("num_nodes", 1)
        if not isinstance(devices, (int, list)) or isinstance(devices, bool):
            notes.append(f"trainer.devices={devices!r}: the device count is only known on the machine; not validated")
            return None
        trainer = types.SimpleNamespace(strategy=strategy, num_devices=len(devices) if isinstance(devices, list) else devices,
                                        num_nodes=nodes, max_steps=tr.__arguments__.get("max_steps", -1))
        plugins = getattr(tr, "plugins", None)
        if isinstance(plugins, fdl.Buildable):  # Lightning's Trainer hands its precision plugin to the strategy
            strategy.precision_plugin = self._build(plugins, "the precision plugin")
        attrs = vars(strategy)  # plain attributes, and properties over a `_name` attribute (pipeline_dtype)
        names = [k for k in self.defaults(type(strategy)) if k in attrs or (
            attrs.get(f"_{k}") is not None and isinstance(getattr(type(strategy), k, None), property))]
        before = {k: copy.copy(getattr(strategy, k)) for k in names}
        try:
            with _silenced(self.log):
                self.api._validate_config(model, data, trainer)
        except AssertionError as e:
            return f"llm.api._validate_config: AssertionError: {e}"
        finally:
            for k in names:  # NeMo's silent fixes (sequence_parallel, VPP, pipeline_dtype), read as NeMo reads them
                v, key = getattr(strategy, k), f"trainer.strategy.{k}"
                if key in leaves and not _eq(before[k], v):
                    leaves[key] = {"v": self.norm(v), "src": "adjusted", "was": leaves[key]["v"]}
            self._data, self._trainer = data, trainer
        return None

    def lr(self, task: Any, leaves: dict) -> tuple[list[float] | None, str]:
        fdl, torch = self.fdl, self.torch
        optim = getattr(task, "optim", None)
        steps = leaves.get("trainer.max_steps", {}).get("v")
        if not isinstance(optim, fdl.Buildable) or not isinstance(steps, int) or steps <= 0:
            return None, f"not evaluated (optim={type(optim).__name__}, trainer.max_steps={steps!r})"
        lr = leaves.get("optim.config.lr", {}).get("v")
        wd = leaves.get("optim.config.weight_decay", {}).get("v") or 0.0
        n = min(steps, LR_STEPS_MAX)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(lr), weight_decay=float(wd))
        sched_cfg = getattr(optim, "lr_scheduler", None)
        if not isinstance(sched_cfg, fdl.Buildable):
            return [float(lr)] * n, "constant (no lr_scheduler)"
        module = fdl.build(sched_cfg)
        module.max_steps = steps  # MegatronStrategy.setup: self.model.optim.lr_scheduler.max_steps = trainer.max_steps
        leaves["optim.lr_scheduler.max_steps"] = {"v": steps, "src": "adjusted",
                                                  "was": leaves.get("optim.lr_scheduler.max_steps", {}).get("v")}
        with _silenced(self.log):
            sched = module.scheduler(None, opt)["lr_scheduler"]["scheduler"]
            out = []
            for _ in range(n):
                out.append(float(opt.param_groups[0]["lr"]))
                opt.step()
                sched.step()
        return out, f"{type(sched).__module__}.{type(sched).__name__}"

    def micro(self, leaves: dict) -> dict[str, Any]:
        from megatron.core import num_microbatches_calculator as mc

        g = lambda p, d=None: leaves.get(p, {}).get("v", d)  # noqa: E731
        data, trainer = getattr(self, "_data", None), getattr(self, "_trainer", None)
        if data is None or trainer is None:
            return {"error": "not validated"}
        tp, pp = (g(f"trainer.strategy.{k}_model_parallel_size", 1) for k in ("tensor", "pipeline"))
        cp = g("trainer.strategy.context_parallel_size", 1)
        world = trainer.num_devices * trainer.num_nodes
        dp = world // (tp * pp * cp)  # megatron.core.parallel_state.initialize_model_parallel
        gbs, mbs = data.global_batch_size, data.micro_batch_size
        try:
            mc.destroy_num_microbatches_calculator()
            with _silenced(self.log):
                mc.init_num_microbatches_calculator(rank=0, rampup_batch_size=getattr(data, "rampup_batch_size", None),
                                                    global_batch_size=gbs, micro_batch_size=mbs, data_parallel_size=dp,
                                                    decrease_batch_size_if_needed=False)
            return {"dp": dp, "num_microbatches": mc.get_num_microbatches(), "micro_batch_size": mc.get_micro_batch_size(),
                    "global_batch_size": mc.get_current_global_batch_size()}
        except Exception as e:  # noqa: BLE001
            return {"dp": dp, "error": f"{type(e).__name__}: {e}"}
        finally:
            mc.destroy_num_microbatches_calculator()

    # -- one job -------------------------------------------------------------------------------------------------

    def job(self, job: dict) -> dict[str, Any]:
        if job["nemo"]["mode"] == "unknown":
            return {"status": "unbuilt", "why": job["nemo"]["why"]}
        task, err, notes = self.launch(job)
        res: dict[str, Any] = {"status": "ok", "notes": notes}
        if task is None and job["nemo"]["mode"] == "notebook":
            return {"status": "unbuilt", "why": f"no cell launched llm.finetune here ({err})", "notes": notes}
        if task is None:
            res.update(status="refused", refusal=err)
            task, err2, notes2 = self.launch(job, workaround=True)
            if task is None:
                if "launches nothing" in err and job["nemo"].get("entry") is None:
                    return res
                res["notes"] = notes + notes2 + [f"with --eval-str-annotations too: {err2}"]
                return res
            res["notes"] = notes2 + ["leaves from a build with the driver's --eval-str-annotations (what the job means)"]
        elif job["nemo"].get("entry"):
            res.update(status="refused", refusal=f"python {job['nemo']['file']} runs nothing: it calls neither run.cli.main nor run.run")
        if not isinstance(task, self.fdl.Buildable) or getattr(self.fdl.get_callable(task), "__name__", "") != "finetune":
            return {"status": "unbuilt", "why": f"the launched task is {type(task).__name__} "
                    f"{getattr(self.fdl.get_callable(task), '__name__', '') if isinstance(task, self.fdl.Buildable) else ''}, not llm.finetune",
                    "notes": notes}
        leaves = self.flatten(task)
        if dataclasses.is_dataclass(self.executor) and not isinstance(self.executor, type):
            self.flatten_object(self.executor, "executor.", leaves)
        self._data = self._trainer = None
        try:
            refusal = self.launch_time(task, leaves, res["notes"])
        except Refused as e:
            refusal = str(e)
        if refusal and res["status"] == "ok":
            res.update(status="refused", refusal=refusal)
        elif refusal:
            res["notes"].append(f"also: {refusal}")
        try:
            res["lr"], res["lr_how"] = self.lr(task, leaves)
        except Exception as e:  # noqa: BLE001
            res["lr"], res["lr_how"] = None, f"NeMo's scheduler fails: {type(e).__name__}: {e}"
        res["micro"] = self.micro(leaves)
        res["leaves"] = leaves
        return res


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001
        return a is b


# ------------------------------------------------------------------------------------------------ driver

def _load_policy() -> dict:
    import yaml

    return yaml.safe_load((HERE / "accepted.yaml").read_text(encoding="utf-8")) or {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="job id glob (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where nemo-check-<date>.txt/.json go")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--max-per-group", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (NeMo's log, both sides' JSON)")
    ap.add_argument("--project-python", default=str(PROJECT_PY), help="the project venv's python (runs ours.py)")
    args = ap.parse_args(argv)
    t0 = time.time()
    nemo_pkg = next(Path(p) for p in sys.path if (Path(p) / "nemo" / "collections" / "llm").is_dir()) / "nemo"
    jobs = jobs_mod.all_jobs(ROOT, nemo_pkg)
    if args.only:
        jobs = [j for j in jobs if any(fnmatch.fnmatchcase(j["id"], g) for g in args.only)]
    tmp = Path(tempfile.mkdtemp(prefix="nemo-check-"))
    (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    ours_proc = subprocess.Popen([args.project_python, str(HERE / "ours.py"), str(tmp / "jobs.json"), str(tmp / "ours.json")],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _isolate_env(tmp)
    log = open(tmp / "nemo.log", "w", encoding="utf-8")  # noqa: SIM115
    say = print
    say(f"nemo-check: {len(jobs)} jobs; importing NeMo (its output goes to {tmp / 'nemo.log'})", flush=True)
    nemo = Nemo(log)
    say(f"nemo-check: NeMo imported in {nemo.import_s:.1f} s", flush=True)
    names = set(jobs_mod.recipe_names(nemo_pkg))
    from nemo_run.config import get_type_namespace

    ns = get_type_namespace(nemo.llm.finetune)
    import catalogue

    reg = {key[-1] for key in catalogue._get_all([ns])}
    if not args.only and names - reg:
        say(f"nemo-check: WARNING recipe names not registered as llm.finetune factories: {sorted(names - reg)}")
    t_nemo = time.time()
    nemo_res: dict[str, dict] = {}
    for i, job in enumerate(jobs, 1):
        try:
            nemo_res[job["id"]] = nemo.job(job)
        except Exception as e:  # noqa: BLE001 - a driver bug must not hide the other jobs
            import traceback

            nemo_res[job["id"]] = {"status": "unbuilt", "why": f"driver error {type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc()[-1500:]}
        if i % 50 == 0:
            say(f"nemo-check: built {i}/{len(jobs)} with NeMo ({time.time() - t_nemo:.0f} s)", flush=True)
    t_nemo = time.time() - t_nemo
    out_text, _ = ours_proc.communicate()
    if ours_proc.returncode != 0:
        say(out_text)
        say("nemo-check: the project side (ours.py) failed")
        return 1
    ours = json.loads((tmp / "ours.json").read_text(encoding="utf-8"))
    (tmp / "nemo.json").write_text(json.dumps(nemo_res, default=str), encoding="utf-8")
    policy = _load_policy()
    tallies = [compare.compare_job(j["id"], nemo_res[j["id"]], ours["jobs"][j["id"]], policy) for j in jobs]
    total = compare.merge(tallies)
    wall = time.time() - t0
    lines = [f"# nemo-check {_dt.datetime.now().isoformat(timespec='seconds')}: nemo-migrate's NeMo knowledge vs real NeMo",
             f"# NeMo side: {', '.join(f'{k} {v}' for k, v in nemo.versions().items())}",
             f"# project side: nemo-migrate {ours['meta']['nemo_migrate']}, nemo_automodel {ours['meta']['nemo_automodel']}, "
             f"torch {ours['meta']['torch']}",
             "# command: " + ("make nemo-check" if os.environ.get("MAKELEVEL") else " ".join([".nemo-venv/bin/python tools/nemo_oracle/check.py", *(argv if argv is not None else sys.argv[1:])])),
             f"# time: {wall:.0f} s wall (NeMo import {nemo.import_s:.0f} s, NeMo builds {t_nemo:.0f} s, project side "
             f"{ours['meta']['seconds']:.0f} s in parallel)", ""]
    notes = [(j["id"], n) for j in jobs for n in nemo_res[j["id"]].get("notes", []) if "workaround" in n or "stand-in" in n or "leaves from" in n]
    if notes:
        lines.append("--- driver workarounds used")
        lines += [f"  {job}: {n}" for job, n in notes]
        lines.append("")
    cells = [(j["id"], n) for j in jobs for n in nemo_res[j["id"]].get("notes", []) if n.startswith(("cell ", "notebook cell", "run.run launches"))]
    if cells:
        lines.append("--- notebooks as run here (a failing cell is skipped; the job is what the fine-tune launch receives)")
        lines += [f"  {job}: {n}" for job, n in cells]
        lines.append("")
    lines += compare.render(total, args.max_per_group)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"nemo-check-{_dt.date.today().isoformat()}"
        stem.with_suffix(".txt").write_text(text, encoding="utf-8")
        stamp = Path(sys.prefix) / ".installed"  # written by `make nemo-venv`: fresh=0|1 seconds=N
        build = dict(kv.split("=", 1) for kv in stamp.read_text().split() if "=" in kv) if stamp.is_file() else {}
        summary = {"date": _dt.date.today().isoformat(),
                   "command": "make nemo-check" if os.environ.get("MAKELEVEL") else "python " + " ".join(sys.argv),
                   "seconds": {"wall": round(wall, 1), "nemo_import": round(nemo.import_s, 1), "nemo_builds": round(t_nemo, 1),
                               "project_side": ours["meta"]["seconds"],
                               "nemo_venv_build": {"fresh": build.get("fresh") == "1", "seconds": int(build["seconds"])} if build.get("seconds") else None}, "versions": {"nemo_side": nemo.versions(), "project_side": ours["meta"]},
            "counts": compare.counts(total),
            "by_group": {g: compare.counts(compare.merge([t for j, t in zip(jobs, tallies) if j["group"] == g]))
                         for g in sorted({j["group"] for j in jobs})}}
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"nemo-check: wrote {stem}.txt and {stem}.json")
    if args.keep:
        print(f"nemo-check: kept {tmp} (nemo.log, jobs.json, nemo.json, ours.json)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if total.differ == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
