"""The jobs `make nemo-check` builds twice: with real NeMo 2.7.3 (check.py) and with nemo-migrate (ours.py).

Standard library only: both venvs import it.  A job is a JSON-able dict:

    id      unique name, e.g. ``golden/seed[fp16]``, ``recipe/llama3_8b[lora]``, ``lr/w10-c20-m0-s100``
    group   golden | realworld | recipe | lr-probe | validate-probe
    nemo    how a user runs it with NeMo (check.py):
              mode  cli       ``nemo ARGV`` (NeMo-Run's console script; ``nemo llm finetune --factory ...``)
                    recipe    ``python FILE ARGV`` in cwd (the file runs as __main__: its run.cli.main parses ARGV,
                              or it calls run.run itself)
                    notebook  the notebook's code cells in order (shell lines and cells skipped)
              cwd, file, argv, entry (a recipe file that has no CLI: the driver calls run.cli.main(entry) with ARGV,
              a workaround named in the output)
    ours    the same job for nemo-migrate (ours.py): source (relative to the repository; None = an empty folder),
            factory, sets, variant, nproc, nnodes

What each job's NeMo command is was read from the job's own files (golden/<case>/input/run.sh and args,
tests/realworld/<case>/input); the ``nemo llm finetune`` argument lists of the sbatch cases are the scripts' lines
with ``${SLURM_GPUS_PER_NODE}`` taken from their ``#SBATCH --gpus-per-node`` header.
"""

from __future__ import annotations

import re
from pathlib import Path

# golden case -> list of (variant, nemo spec, ours spec); the run.sh lines are quoted in the comment
_SEED = ["--factory", "migration_recipe()", "--yes", "--yaml", "config-{v}.yaml", "-v"]  # torchrun --nproc_per_node=4 recipe.py ...
GOLDEN: dict[str, list[tuple[str | None, dict, dict]]] = {
    "seed": [(v, {"mode": "recipe", "file": "recipe.py", "argv": [a.format(v=v) for a in _SEED]}, {})
             for v in ("fp16", "fp8")],
    "diff-guide/input/nemo2": [(v, {"mode": "recipe", "file": "recipe.py", "argv": [a.format(v=v) for a in _SEED]}, {})
                               for v in ("fp16", "fp8")],
    # torchrun --nproc_per_node=8 recipe.py --factory 'full_ft(max_steps=600)' --yes --yaml config.yaml
    "llama3-8b-full-ft": [(None, {"mode": "recipe", "file": "recipe.py",
                                  "argv": ["--factory", "full_ft(max_steps=600)", "--yes", "--yaml", "config.yaml"]}, {})],
    # torchrun --nnodes=4 --nproc_per_node=8 ... recipe.py --factory long_context_sft --yes   (recipe.py has no main block)
    "llama31-70b-pp-cp": [(None, {"mode": "recipe", "file": "recipe.py", "entry": "llm.finetune",
                                  "argv": ["--factory", "long_context_sft", "--yes"]}, {})],
    # python recipe.py --yes
    "llama32-1b-squad-packed-dora": [(None, {"mode": "recipe", "file": "recipe.py", "argv": ["--yes"]}, {})],
    # torchrun --nproc_per_node=1 recipe.py --yes
    "phi3-lora-fp8-partial": [(None, {"mode": "recipe", "file": "recipe.py", "argv": ["--yes"]}, {})],
    # torchrun --nproc_per_node=2 recipe.py --factory "qwen25_7b(...)" --yes --yaml config.yaml <overrides>; golden args:
    # --set data.global_batch_size=32 (appended as one more override on the NeMo side)
    "qwen25-7b-cli-overrides": [(None, {"mode": "recipe", "file": "recipe.py", "argv": [
        "--factory", "qwen25_7b(num_gpus_per_node=2, peft_scheme='lora')", "--yes", "--yaml", "config.yaml",
        "trainer.max_steps=200", "optim.config.lr=2e-4", 'peft.target_modules=["linear_qkv","linear_proj"]', "peft.dim=16",
        "peft.alpha=32", "data.global_batch_size=32"]}, {})],
    # python recipe.py (its main block calls run.run with a SlurmExecutor)
    "slurm-chat-qwen": [(None, {"mode": "recipe", "file": "recipe.py", "argv": []}, {})],
}

# tests/realworld NeMo 2 launcher cases: the fine-tune line of the script, as NeMo's CLI receives it
_KAUST = ["trainer.max_steps=250", "trainer.limit_val_batches=10", "optim.lr_scheduler.warmup_steps=50", "data.global_batch_size=8"]
REALWORLD_CLI: dict[str, list[str]] = {
    # nemo llm finetune --factory "qwen3_30b_a3b(peft_scheme=none)" -y
    "nemo2-cli-baseten-qwen3-30b-a3b-full": ["llm", "finetune", "--factory", "qwen3_30b_a3b(peft_scheme=none)", "-y"],
    "nemo2-cli-sbatch-kaust-llama31-8b-lora-2gpu": [
        "llm", "finetune", "--factory", "llama31_8b", "--yes", "trainer.devices=2", *_KAUST,
        "resume.restore_config.path=/sw/rl9g/dl/workshop/models/llama/model/"],
    "nemo2-cli-sbatch-kaust-llama31-8b-peft-none-tp8": [
        "llm", "finetune", "--factory", "llama31_8b", "--yes", "peft=none", "trainer.strategy.tensor_model_parallel_size=8",
        "trainer.devices=8", *_KAUST, "resume.restore_config.path=/sw/rl9g/dl/workshop/models/llama/model/"],
    "nemo2-cli-sbatch-kaust-mixtral-8x7b-tp4-ep2": [
        "llm", "finetune", "--factory", "mixtral_8x7b", "--yes", "trainer.devices=8", "trainer.strategy.expert_model_parallel_size=2",
        "trainer.strategy.tensor_model_parallel_size=4", "trainer.strategy.sequence_parallel=True", *_KAUST,
        "resume.restore_config.path=/sw/rl9g/dl/workshop/models/mixtral/model/"],
}

# every finetune recipe x these factory arguments
RECIPE_MODES = {"lora": "(peft_scheme='lora')", "none": "(peft_scheme='none')", "defaults": "",
                "packed": "(packed_sequence=True)", "perf": "(performance_mode=True)"}

# LR-schedule probes on llama32_1b: (warmup_steps, constant_steps, min_lr, max_steps)
LR_PROBES = [(50, 0, 0.0, 1000), (0, 0, 0.0, 100), (10, 0, 1e-5, 100), (100, 0, 0.0, 100), (150, 0, 0.0, 100),
             (10, 20, 0.0, 100), (10, 20, 1e-5, 100), (0, 20, 0.0, 100), (10, 90, 0.0, 100), (10, 200, 0.0, 100),
             (5, 10, 1e-6, 37), (25, 0, 1e-5, 37), (1, 0, 0.0, 2), (3, 3, 2e-5, 500)]


# Probes of what NeMo changes or refuses at launch (llm.api._validate_config), on llama32_1b (8 GPUs, TP 1, PP 1)
VALIDATE_PROBES = {
    "sp-with-tp1": ["trainer.strategy.sequence_parallel=True"],                       # silently switched off
    "vpp-with-pp1": ["trainer.strategy.virtual_pipeline_model_parallel_size=2"],      # silently set to None
    "cp2-squad": ["trainer.strategy.context_parallel_size=2"],                        # asserts calculate_per_token_loss
    "cp2-per-token-loss": ["trainer.strategy.context_parallel_size=2", "model.config.calculate_per_token_loss=True"],
    "tp3-of-8": ["trainer.strategy.tensor_model_parallel_size=3"],                    # 8 GPUs not divisible by TP 3
}


def recipe_names(nemo_pkg: Path) -> list[str]:
    """The factory names NeMo registers for llm.finetune: every recipe module with a finetune_recipe, under its NAME
    (``mistral_nemo_12b.py`` registers ``mistral_nemo_base_12b``).  check.py verifies the list against NeMo's registry."""
    out = []
    for f in sorted((nemo_pkg / "collections" / "llm" / "recipes").glob("*.py")):
        text = f.read_text(encoding="utf-8")
        if "def finetune_recipe(" not in text:
            continue
        m = re.search(r'^NAME\s*=\s*["\']([\w.]+)["\']', text, re.M)
        out.append(m.group(1) if m else f.stem)
    return sorted(out)


def _yaml_scalar(text: str, key: str) -> str | None:
    m = re.search(rf"^{key}:\s*(.+?)\s*$", text, re.M)
    return m.group(1).strip("'\"") if m else None


def all_jobs(root: Path, nemo_pkg: Path) -> list[dict]:
    jobs: list[dict] = []
    for case, variants in GOLDEN.items():
        base = f"golden/{case}" if "/" in case else f"golden/{case}/input"
        if not (root / base).is_dir():
            continue
        for variant, nemo, ours in variants:  # ours: golden/<case>/input with golden/<case>/args, as `make golden` converts it
            jobs.append({"id": f"golden/{case.split('/')[0]}" + (f"[{variant}]" if variant else ""), "group": "golden",
                         "nemo": {"cwd": base, **nemo},
                         "ours": {"source": base, "variant": variant, **ours,
                                  "golden_case": None if "/" in case else f"golden/{case}"}})
    known = {c.split("/")[0] for c in GOLDEN}
    for case in sorted(p.parent.parent.name for p in (root / "golden").glob("*/input/recipe.py")) + \
            sorted(p.parent.parent.parent.name for p in (root / "golden").glob("*/input/*/recipe.py")):
        if case not in known:  # a NeMo 2 golden case this table does not know yet: shown as not compared
            known.add(case)
            jobs.append({"id": f"golden/{case}", "group": "golden", "nemo": {"mode": "unknown", "why": (
                f"golden/{case} has a recipe.py but no command in tools/nemo_oracle/jobs.py GOLDEN (read its run.sh)")},
                "ours": {"source": f"golden/{case}/input", "golden_case": f"golden/{case}"}})
    rw = root / "tests" / "realworld"
    for case in sorted(p.name for p in rw.iterdir() if (p / "case.yaml").is_file()) if rw.is_dir() else []:
        text = (rw / case / "case.yaml").read_text(encoding="utf-8")
        kind, expect, command = _yaml_scalar(text, "kind"), _yaml_scalar(text, "expect"), _yaml_scalar(text, "command")
        if not (kind or "").startswith("nemo2") or expect != "ok" or not command:
            continue
        words = command.split()
        src = f"tests/realworld/{case}/{words[1]}"
        if case in REALWORLD_CLI:
            nemo = {"mode": "cli", "cwd": str(Path(src).parent), "argv": REALWORLD_CLI[case]}
        elif src.endswith(".ipynb"):
            nemo = {"mode": "notebook", "cwd": str(Path(src).parent), "file": Path(src).name, "argv": []}
        elif src.endswith(".py"):
            nemo = {"mode": "recipe", "cwd": str(Path(src).parent), "file": Path(src).name, "argv": []}
        else:
            nemo = {"mode": "unknown", "why": f"no NeMo command known for {src} (add it to REALWORLD_CLI)"}
        jobs.append({"id": f"realworld/{case}", "group": "realworld", "nemo": nemo,
                     "ours": {"source": src, "extra": words[2:]}})
    for name in recipe_names(nemo_pkg):
        for mode, call in RECIPE_MODES.items():
            factory = name + call
            jobs.append({"id": f"recipe/{name}[{mode}]", "group": "recipe",
                         "nemo": {"mode": "cli", "cwd": ".", "argv": ["llm", "finetune", "--factory", factory, "--yes"]},
                         "ours": {"source": None, "factory": factory}})
    for w, c, m, s in LR_PROBES:
        sets = [f"optim.lr_scheduler.warmup_steps={w}", f"optim.lr_scheduler.constant_steps={c}",
                f"optim.lr_scheduler.min_lr={m}", f"trainer.max_steps={s}"]
        jobs.append({"id": f"lr/w{w}-c{c}-m{m:g}-s{s}", "group": "lr-probe",
                     "nemo": {"mode": "cli", "cwd": ".", "argv": ["llm", "finetune", "--factory", "llama32_1b", "--yes", *sets]},
                     "ours": {"source": None, "factory": "llama32_1b", "sets": sets}})
    for name, sets in VALIDATE_PROBES.items():
        jobs.append({"id": f"probe/{name}", "group": "validate-probe",
                     "nemo": {"mode": "cli", "cwd": ".", "argv": ["llm", "finetune", "--factory", "llama32_1b", "--yes", *sets]},
                     "ours": {"source": None, "factory": "llama32_1b", "sets": sets}})
    return jobs
