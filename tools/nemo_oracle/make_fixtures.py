"""Regenerate tests/fixtures/nemorun_export/<case>/{job.yaml,COMMAND} with real NeMo 2.7.3 + NeMo-Run 0.11.1.

    python tools/nemo_oracle/make_fixtures.py [CASE ...]     # from the repository root; needs .nemo-venv

Each case is first exported exactly as a user would type it; when real NeMo refuses, the refusal is recorded in
COMMAND and the export is made again with the driver's documented workarounds (tools/nemo_oracle/export_job.py).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / ".nemo-venv" / "bin" / "python"
DRIVER = ROOT / "tools" / "nemo_oracle" / "export_job.py"
OUT = ROOT / "tests" / "fixtures" / "nemorun_export"
WORKAROUNDS = ["--eval-str-annotations", "--enum-values"]

# name: (golden dir or None, driver mode args, the user's command line after `python recipe.py` / `nemo`)
GOLDEN = {
    "seed-fp16": ("seed", [], ["--factory", "migration_recipe()", "--yes", "--yaml", "config-fp16.yaml", "-v"]),
    "seed-fp8": ("seed", [], ["--factory", "migration_recipe()", "--yes", "--yaml", "config-fp8.yaml", "-v"]),
    "llama3-8b-full-ft": ("llama3-8b-full-ft", [], ["--factory", "full_ft(max_steps=600)", "--yes", "--yaml", "config.yaml"]),
    "llama31-70b-pp-cp": ("llama31-70b-pp-cp", ["--entry", "llm.finetune"], ["--factory", "long_context_sft", "--yes"]),
    "llama32-1b-squad-packed-dora": ("llama32-1b-squad-packed-dora", [], ["--yes"]),
    "phi3-lora-fp8-partial": ("phi3-lora-fp8-partial", [], ["--yes"]),
    "qwen25-7b-cli-overrides": ("qwen25-7b-cli-overrides", [], [
        "--factory", "qwen25_7b(num_gpus_per_node=2, peft_scheme='lora')", "--yes", "--yaml", "config.yaml",
        "trainer.max_steps=200", "optim.config.lr=2e-4", 'peft.target_modules=["linear_qkv","linear_proj"]',
        "peft.dim=16", "peft.alpha=32"]),
    "slurm-chat-qwen": ("slurm-chat-qwen", ["--entry", "llm.finetune"], ["--factory", "chat_lora", "--yes"]),
}
PLAIN = {
    "llama3_8b": [],
    "llama31_8b": ["peft=none"],
    "llama32_1b": ["trainer.max_steps=100"],
    "llama31_70b": [],
    "qwen25_7b": ["peft=none"],
    "mistral_7b": [],
    "gemma2_9b": [],
    "phi3_mini_4k_instruct": ["peft=none"],
    "mixtral_8x7b": [],
    "nemotron3_8b": [],
}

FORMATS = {"llama32_1b-formats": ("llama32_1b", ["peft=none", "trainer.max_steps=100"])}


def _versions() -> str:
    code = ("import importlib.metadata as m, platform; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('nemo-toolkit','nemo-run','megatron-core','lightning','torch','fiddle')) + ', python ' + platform.python_version())")
    return subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _export(argv: list[str], cwd: Path, job: Path) -> tuple[bool, str]:
    """Success is the file written: NeMo-Run prints some CLI parse errors and still exits 0."""
    p = subprocess.run([str(PY), str(DRIVER), *argv], cwd=cwd, capture_output=True, text=True)
    text = (p.stderr + p.stdout).splitlines()
    err = [ln for ln in text if re.match(r"^([\w.]*(Error|Exception|Exit)\b|Unexpected error)", ln)] or [ln for ln in text if ln.strip()]
    return p.returncode == 0 and job.is_file(), (err[-1][:400] if err else f"exit {p.returncode}")


def make(name: str, versions: str) -> str:
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    job = dest / "job.yaml"
    job.unlink(missing_ok=True)
    if name in GOLDEN:
        gdir, mode, args = GOLDEN[name]
        src = ROOT / "golden" / gdir / "input"
        user = f"cd golden/{gdir}/input && python recipe.py {shlex.join(args)} --to-yaml job.yaml"
        base = ["recipe", *mode, str(src / "recipe.py"), *args, "--to-yaml", str(job)]
        cwd = src
    elif name in FORMATS:  # one job in the three formats NeMo-Run writes
        factory, extra = FORMATS[name]
        args = ["llm", "finetune", "--factory", factory, *extra]
        user = f"nemo {shlex.join(args)} --to-yaml job.yaml --to-json job.json --to-toml job.toml"
        base = ["nemo", *args, "--to-yaml", str(job), "--to-json", str(dest / "job.json"), "--to-toml", str(dest / "job.toml")]
        cwd = ROOT
    else:
        args = ["llm", "finetune", "--factory", name, *PLAIN[name]]
        user = f"nemo {shlex.join(args)} --to-yaml job.yaml"
        base = ["nemo", *args, "--to-yaml", str(job)]
        cwd = ROOT
    lines = [f"# {name}: NeMo-Run's export of the built job, written by tools/nemo_oracle/make_fixtures.py",
             f"# {versions}", user]
    for i in range(len(WORKAROUNDS) + 1):  # as typed first, then one more documented workaround at a time
        used = [base[0], *WORKAROUNDS[:i], *base[1:]]
        ok, msg = _export(used, cwd, job)
        if ok:
            if i:
                lines.append(f"# exported with the driver's workarounds {' '.join(WORKAROUNDS[:i])}")
            break
        lines.append(f"# real NeMo 2.7.3 refuses this command: {msg}" if i == 0 else
                     f"# with the workarounds {' '.join(WORKAROUNDS[:i])} it still fails: {msg}")
    if mode_note := (GOLDEN.get(name, (None, []))[1]):
        lines.append(f"# recipe.py does not call run.cli.main, so the command above alone exports nothing: the driver's "
                     f"{' '.join(mode_note)} loads the file as __main__ without its main block and calls "
                     f"run.cli.main({mode_note[-1]}) with these arguments (see export_job.py)")
    driver = [str(DRIVER.relative_to(ROOT)), *[str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in used]]
    lines.append("# as run: .nemo-venv/bin/python " + shlex.join(driver))
    (dest / "COMMAND").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"{name}: {'ok' if job.is_file() else 'NO EXPORT'} ({msg if not ok else ''})"


if __name__ == "__main__":
    names = sys.argv[1:] or [*GOLDEN, *PLAIN, *FORMATS]
    v = _versions()
    with ThreadPoolExecutor(2) as pool:
        for line in pool.map(lambda n: make(n, v), names):
            print(line, flush=True)
