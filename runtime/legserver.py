"""Many one-process runs in one Python process: ``python -m nemo_migrate.runtime.legserver``.

``run --verify`` trains several short legs of the same model (reference, migrated, attribution).  Started as one
process each, a leg spends most of its time on process start, imports and CUDA init; this server pays those once.
It reads one JSON request a line on stdin::

    {"config": "LEG/config.yaml", "out": "LEG/run", "log": "LEG/output.txt", "stop_after": 10,
     "model_path": null, "proxy_model": "tiny"}

runs it exactly as ``nemo-migrate run CONFIG --out OUT --stop-after N [--model-path P | --proxy-model X]`` would
(``api.run_main``, one process), with everything the run prints (file descriptors 1 and 2) going to ``log``, and
answers on its own stdout: ``{"ready": true}`` once started, ``{"accepted": true}`` when it takes a request and
``{"rc": N, "seconds": S, "last": false}`` when the run is over (``"last": true``: the server ends now).  Between runs it puts back what a run may change process-wide:
attributes of ``transformers.models.*`` modules and their classes (Liger patches some in place), torch.compile's
caches and configs, and the CUDA memory cache.  The modeling modules of the runtime's model families are imported
before the first run, so their state is known; a run that fails (rc != 0), or that imports a modeling module not
loaded before (its patched state could not be put back), ends the server: the next request goes to a fresh process.  Runs of more than one process
(``--nproc-per-node`` > 1) are not served here; they go through torchrun as always.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path


def _snapshot_transformers() -> dict:
    """What Liger (and anything like it) may patch: the namespaces of the loaded ``transformers.models`` modules and
    the attributes of the classes they define."""
    snap = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("transformers.models."):
            continue
        ns = dict(vars(mod))
        classes = {k: dict(vars(v)) for k, v in ns.items() if isinstance(v, type) and v.__module__ == name}
        snap[name] = (ns, classes)
    return snap


def _restore_transformers(snap: dict) -> None:
    for name, (ns, classes) in snap.items():
        mod = sys.modules.get(name)
        if mod is None:
            continue
        d = vars(mod)
        for k in [k for k in d if k not in ns]:
            del d[k]
        for k, v in ns.items():
            if d.get(k, ns) is not v:
                setattr(mod, k, v)
        for cname, attrs in classes.items():
            cls = ns[cname]
            now = vars(cls)
            for k in [k for k in now if k not in attrs and not k.startswith("__")]:
                delattr(cls, k)
            for k, v in attrs.items():
                if k in ("__dict__", "__weakref__", "__doc__"):
                    continue
                if now.get(k, attrs) is not v:
                    setattr(cls, k, v)


def _is_modeling(name: str) -> bool:
    """``transformers.models.<type>.modeling_<type>``: a model family's module (what Liger patches)."""
    parts = name.split(".")
    return len(parts) == 4 and parts[:2] == ["transformers", "models"] and parts[2] != "auto" and parts[3] == f"modeling_{parts[2]}"


class _Process:
    """What one run may leave behind in this process, saved before it and put back after it."""

    def __enter__(self):
        import torch._dynamo.config as dc
        import torch._inductor.config as ic

        self._configs = [(m, m.get_config_copy()) for m in (dc, ic)]
        self._tf = _snapshot_transformers()
        self.new_model_modules: list[str] = []
        self._env = dict(os.environ)
        self._cwd = os.getcwd()
        return self

    def __exit__(self, *exc):
        import torch
        import torch._dynamo

        torch._dynamo.reset()
        self.new_model_modules = sorted(n for n in sys.modules if n not in self._tf and _is_modeling(n))
        for mod, saved in self._configs:  # only what the run changed (setting a deprecated key warns)
            now = mod.get_config_copy()
            for k, v in saved.items():
                if now.get(k) is not v and now.get(k) != v:
                    setattr(mod, k, v)
        _restore_transformers(self._tf)
        os.environ.clear()
        os.environ.update(self._env)
        os.chdir(self._cwd)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


class _Redirect:
    """File descriptors 1 and 2 (and Python's streams on them) into ``path`` for the block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for target, saved in zip((1, 2), self._saved):
            os.dup2(saved, target)
            os.close(saved)


def serve(requests, answer) -> int:
    """Run each request of the iterable ``requests`` (dicts); ``answer(dict)`` replies.  Returns when the requests
    end, or after a run that failed (its exit code)."""
    from .api import RunOptions, run_main

    for req in requests:
        answer({"accepted": True})
        opts = RunOptions(config=Path(req["config"]), out=Path(req["out"]), stop_after=req.get("stop_after"),
                          model_path=Path(req["model_path"]) if req.get("model_path") else None,
                          proxy_model=req.get("proxy_model"))
        t0 = time.time()
        with _Process() as proc, _Redirect(Path(req["log"])):
            try:
                rc = run_main(opts)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - run_main reports what a user can cause; anything else ends here
                print(f"nemo-migrate run: internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                rc = 1
        last = rc != 0 or bool(proc.new_model_modules)
        answer({"rc": rc, "seconds": round(time.time() - t0, 3), "last": last})
        if last:
            return rc
    return 0


def main() -> int:
    # the replies go to the stdout this process started with; fd 1 itself is each run's log while it runs
    reply = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything else printed between runs goes to stderr, never into the replies

    def answer(msg: dict) -> None:
        reply.write(json.dumps(msg) + "\n")
        reply.flush()

    import importlib
    import importlib.util

    t0 = time.time()
    import torch  # noqa: F401 - paid once, before the first request

    from . import trainer  # noqa: F401
    from .models import model_types

    for t in model_types():
        try:
            importlib.import_module(f"transformers.models.{t}.modeling_{t}")
        except ImportError:
            pass
    if importlib.util.find_spec("liger_kernel") is not None:  # it imports modeling modules of its own
        importlib.import_module("liger_kernel.transformers.monkey_patch")
    answer({"ready": True, "seconds": round(time.time() - t0, 1)})
    requests = (json.loads(line) for line in sys.stdin if line.strip())
    return serve(requests, answer)


if __name__ == "__main__":
    sys.exit(main())
