#!/usr/bin/env python3
"""Benchmark: `nemo-migrate convert` of the bundled seed job, cold CLI start included (a new process each run).

Writes bench/results/convert-speed-<date>-<host>.json with the median, the per-phase breakdown of one in-process run
(imports of each library, first and warm conversion) and the versions.  Run: `make bench-convert`.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
RUNS = int(os.environ.get("RUNS", "15"))


def cli() -> list[str]:
    exe = shutil.which("nemo-migrate", path=str(Path(sys.executable).parent)) or shutil.which("nemo-migrate")
    return [exe] if exe else [sys.executable, "-m", "nemo_migrate.cli"]


def phases() -> dict[str, float]:
    """One process, the way `nemo-migrate convert` runs (cli._import_convert): typer, then the compiler's imports with
    the cyclic garbage collector paused and their objects frozen, the conversions with it on, and the frozen exit.
    "interpreter exit" is from the end of the warm conversion until the process has gone (measured from outside)."""
    code = r"""
import time, json, os, gc, atexit
from pathlib import Path
T=[('start', time.perf_counter())]
os.environ.setdefault('PYDANTIC_DISABLE_PLUGINS', '__all__')
import typer; T.append(('import typer', time.perf_counter()))
gc.disable()
import pydantic; from pydantic import BaseModel; T.append(('import pydantic', time.perf_counter()))
import nemo_migrate.ir; T.append(('nemo_migrate.ir models', time.perf_counter()))
import jinja2; T.append(('import jinja2', time.perf_counter()))
import ruamel.yaml; T.append(('import ruamel.yaml', time.perf_counter()))
from nemo_migrate.convert import Options, convert; T.append(('import rest of migrate', time.perf_counter()))
gc.freeze(); gc.enable(); atexit.register(gc.freeze)
c = convert(Options(source=Path(%r))); T.append(('first conversion', time.perf_counter()))
c = convert(Options(source=Path(%r))); T.append(('warm conversion', time.perf_counter()))
print(json.dumps({b: round(1000*(t1-t0), 1) for (a, t0), (b, t1) in zip(T, T[1:])} | {'_end': time.time()}), flush=True)
""" % (str(SEED), str(SEED))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    gone = time.time()
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["interpreter exit"] = round(1000 * (gone - res.pop("_end")), 1)
    return res


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = cli() + ["convert", str(SEED), "-o", str(out), "--force", "-q"]
        subprocess.run(cmd, capture_output=True, check=True)  # warm the caches (mappings JSON, template bytecode)
        times = []
        for _ in range(RUNS):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t)
    import importlib.metadata as md

    def ver(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    result = {
        "benchmark": "nemo-migrate convert golden/seed/input -o OUT --force -q (new process per run)",
        "command": "make bench-convert   (RUNS=%d)" % RUNS,
        "date": datetime.date.today().isoformat(),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": RUNS,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "target_s": 0.3,
        "phases_ms_one_process": phases(),
        "versions": {p: ver(p) for p in ("nemo-migrate", "typer", "click", "pydantic", "pydantic-core", "jinja2", "ruamel.yaml", "ruamel.yaml.clib", "rich")},
        "env": {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE",)},
    }
    dest = ROOT / "bench" / "results" / f"convert-speed-{result['date']}-{platform.node() or 'host'}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
