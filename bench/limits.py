"""Large-input limits: a 10 MB YAML and a 10,000-line recipe.py must convert or fail cleanly within 10 s, with bounded
memory.  Each case runs `nemo-migrate convert` in a fresh process; wall time and the child's peak RSS are recorded.

    python bench/limits.py [--out bench/results/limits-<date>-<host>.json]

tests/test_limits.py builds the same inputs and checks the outcome (exit 0 or 1, a diagnostic, no traceback); the
time limit is checked here, not in a timed test.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
MB = 1 << 20


def _base_yaml() -> str:
    return (SEED / "config-fp16.yaml").read_text()


def case_comments(d: Path) -> Path:
    """10 MB of comments around the real config (copied wiki pages do this)."""
    block = "# " + "x" * 98 + "\n"
    (d / "config.yaml").write_text(block * (5 * MB // len(block)) + _base_yaml() + block * (5 * MB // len(block)))
    return d / "config.yaml"


def case_long_list(d: Path) -> Path:
    """A 10 MB flow list as one value (peft.target_modules)."""
    items = ", ".join(f"layers.{i}.linear_qkv" for i in range(10 * MB // 22))
    (d / "config.yaml").write_text(_base_yaml().replace("peft:\n", f"peft:\n  target_modules: [{items}]\n", 1))
    return d / "config.yaml"


def case_many_keys(d: Path) -> Path:
    """10 MB of distinct keys under data.dataset_kwargs (a run.Config(dict): every key is a knob)."""
    lines = [f"    key_{i:07d}: value_{i:07d}" for i in range(10 * MB // 34)]
    text = _base_yaml().replace("  dataset_kwargs:\n", "  dataset_kwargs:\n" + "\n".join(lines) + "\n", 1)
    (d / "config.yaml").write_text(text)
    return d / "config.yaml"


def case_many_unknown(d: Path) -> Path:
    """10 MB of misspelt top-level trainer keys: every one is an error (all reported together)."""
    lines = [f"  max_stepz_{i:07d}: {i}" for i in range(10 * MB // 26)]
    (d / "config.yaml").write_text(_base_yaml().replace("trainer:\n", "trainer:\n" + "\n".join(lines) + "\n", 1))
    return d / "config.yaml"


def case_under_limit(d: Path) -> Path:
    """10 MB that stays under the value limit: 150,000 LoRA target patterns and long prompt strings."""
    items = ", ".join(f"layers.{i}.linear_qkv" for i in range(150_000))
    prompt = "{prompt} " + "lorem ipsum " * (6 * MB // 12) + "{completion}"
    text = _base_yaml().replace("peft:\n", f"peft:\n  target_modules: [{items}]\n", 1)
    text = text.replace("    prompt_template: '{prompt} {completion}'", f"    prompt_template: '{prompt}'", 1)
    (d / "config.yaml").write_text(text)
    return d / "config.yaml"


def case_alias_bomb(d: Path) -> Path:
    """A billion-laughs YAML (anchors and aliases) padded to 10 MB."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    pad = "# " + "y" * 98 + "\n"
    (d / "config.yaml").write_text(pad * (10 * MB // len(pad)) + "\n".join(lines) + "\n")
    return d / "config.yaml"


def case_recipe_10k(d: Path) -> Path:
    """recipe.py of 10,000 lines: a factory of 9,980 statements."""
    body = []
    for i in range(9_980):
        body.append(["    recipe.trainer.max_steps = %d" % (100 + i), "    recipe.optim.config.lr = %r" % (1e-4 / (1 + i % 7)),
                     "    recipe.peft.dim = %d" % (8 + i % 4 * 8), "    steps_%d = %d" % (i, i)][i % 4])
    text = ("import nemo_run as run\nfrom nemo.collections import llm\n\n\ndef job() -> run.Partial:\n"
            "    recipe = llm.llama3_8b.finetune_recipe(dir='/r', name='n', num_nodes=1, num_gpus_per_node=8, peft_scheme='lora')\n"
            "    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root='/d', global_batch_size=8, micro_batch_size=1)\n"
            + "\n".join(body) + "\n    return recipe\n\n\nif __name__ == '__main__':\n    run.cli.main(llm.finetune, default_factory=job)\n")
    (d / "recipe.py").write_text(text)
    return d / "recipe.py"


def case_recipe_10k_deep(d: Path) -> Path:
    """recipe.py of 10,000 lines, one expression nested 5,000 deep (parser limits)."""
    text = ("import nemo_run as run\nfrom nemo.collections import llm\n\n\ndef job() -> run.Partial:\n"
            "    recipe = llm.llama3_8b.finetune_recipe(peft_scheme='lora')\n    recipe.trainer.max_steps = (\n"
            + "(\n" * 5000 + "1\n" + ")\n" * 5000 + "    )\n    return recipe\n\n\nrun.cli.main(llm.finetune, default_factory=job)\n")
    (d / "recipe.py").write_text(text)
    return d / "recipe.py"


CASES = {
    "yaml-10mb-comments": (case_comments, True),
    "yaml-10mb-long-list": (case_long_list, True),
    "yaml-10mb-many-keys": (case_many_keys, True),
    "yaml-10mb-many-unknown-keys": (case_many_unknown, True),
    "yaml-10mb-under-the-value-limit": (case_under_limit, True),
    "yaml-10mb-alias-bomb": (case_alias_bomb, True),
    "recipe-py-10k-lines": (case_recipe_10k, False),
    "recipe-py-10k-lines-deep-nesting": (case_recipe_10k_deep, False),
}


def command(path: Path, out: Path, uses_seed_recipe: bool) -> list[str]:
    cmd = [sys.executable, "-m", "nemo_migrate.cli", "convert", str(path), "-o", str(out), "--force", "-q"]
    if uses_seed_recipe:
        cmd += ["--recipe", str(SEED / "recipe.py"), "--factory", "migration_recipe()"]
    return cmd


def run_case(name: str, work: Path, timeout: float = 120.0) -> dict:
    make, seed_recipe = CASES[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    path = make(d)
    size = path.stat().st_size
    lines = path.read_text().count("\n")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(command(path, d / "out", seed_recipe), capture_output=True, text=True, timeout=timeout,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    except subprocess.TimeoutExpired:
        return {"case": name, "bytes": size, "lines": lines, "exit": None, "wall_s": None, "timed_out_after_s": timeout,
                "traceback": False, "first_error": None, "stderr_bytes": 0}
    wall = time.perf_counter() - t0
    return {"case": name, "bytes": size, "lines": lines, "exit": r.returncode, "wall_s": round(wall, 2),
            "traceback": "Traceback" in r.stderr, "first_error": next((l for l in r.stderr.splitlines() if "error" in l), None),
            "stderr_bytes": len(r.stderr)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            res = run_case(name, Path(tmp))
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            res["peak_rss_mb_at_most"] = round(max(peak, before) / 1024, 1)
            res["within_10s"] = res["wall_s"] is not None and res["wall_s"] <= 10.0
            res["clean"] = res["exit"] in (0, 1) and not res["traceback"]
            results.append(res)
            print(f"{name:36s} {res['bytes'] / MB:6.1f} MB {res['lines']:>8d} lines  exit {res['exit']}  {res['wall_s'] if res['wall_s'] is not None else 'timeout'} s  "
                  f"peak RSS <= {res['peak_rss_mb_at_most']} MB  {'ok' if res['clean'] and res['within_10s'] else 'FAIL'}")
    doc = {
        "benchmark": "large-input limits (10 MB YAML, 10,000-line recipe.py): convert or fail cleanly within 10 s",
        "date": _dt.date.today().isoformat(), "host": platform.node(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "command": "python bench/limits.py",
        "note": "peak RSS is the largest child so far (RUSAGE_CHILDREN), so it is an upper bound per case; each child runs under a 4 GiB address-space limit",
        "results": results,
    }
    out = args.out or ROOT / "bench" / "results" / f"limits-{doc['date']}-vm.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["clean"] and r["within_10s"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
