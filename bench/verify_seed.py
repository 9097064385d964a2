"""GPU evidence for `run --verify`: the user's seed job (golden/seed/input: fp16 and fp8 variants) verified with a
Llama-3.2-1B-shaped proxy (random weights) on synthetic instruction data written here, 20 steps per leg.

    python bench/verify_seed.py OUT_DIR [--variant fp16|fp8] [--steps 20] [--proxy llama-1b] [--jobs 3] [--against automodel]
        [--nproc-per-node N]

For fp8, convert emits `fp8.enabled: false` (Automodel 0.7.0 drops LoRA adapters under FP8, rule FP8001); the
migrated leg here is that config with FP8 switched back on for the bundled runtime (tensorwise, frozen base in FP8,
adapters in bf16, lm_head excluded) -- what `nemo-migrate run ... --set fp8.enabled=true --set fp8.filter_fqns=[lm_head]`
trains -- so the report measures FP8's effect (attribution `fp8_scaling`).
Writes OUT_DIR/verify-report.json, OUT_DIR/verify.log and OUT_DIR/<variant>/loss-curves.png (plus the legs' logs under
OUT_DIR/work).  Without --variant both variants are verified; the fp8 legs whose effective runtime config equals an fp16
leg's (FP8 off, as convert emits it) are not trained again (legs.<name>.reused_from in the report)."""
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = Path(sys.argv[1])
    steps = sys.argv[sys.argv.index("--steps") + 1] if "--steps" in sys.argv else "20"
    proxy = sys.argv[sys.argv.index("--proxy") + 1] if "--proxy" in sys.argv else "llama-1b"
    work = out / "work"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    words = "model data train answer question token layer weight batch step learning rate value system result".split()
    with (data / "training.jsonl").open("w") as fh:
        for i in range(1024):
            q = " ".join(rng.choice(words) for _ in range(rng.randint(8, 60)))
            a = " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
            fh.write(json.dumps({"prompt": f"Question {i}: {q}?", "completion": f"{a}."}) + "\n")
    src = ROOT / "golden" / "seed" / "input"
    variant = sys.argv[sys.argv.index("--variant") + 1] if "--variant" in sys.argv else None
    target = [str(src / f"config-{variant}.yaml"), "--recipe", str(src / "recipe.py"), "--factory", "migration_recipe()"] if variant else [str(src)]
    jobs = sys.argv[sys.argv.index("--jobs") + 1] if "--jobs" in sys.argv else "1"
    extra = ["--against", sys.argv[sys.argv.index("--against") + 1]] if "--against" in sys.argv else []
    if "--nproc-per-node" in sys.argv:
        extra += ["--nproc-per-node", sys.argv[sys.argv.index("--nproc-per-node") + 1]]
    if variant == "fp8":
        conv = work / "converted"
        subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", target[0], "--recipe", target[2], "--factory", target[4],
                        "-o", str(conv), "--force"], check=True, stdout=subprocess.DEVNULL)
        from ruamel.yaml import YAML

        y = YAML()
        doc = y.load((conv / "config-fp8.yaml").read_text())
        doc["fp8"]["enabled"] = True
        doc["fp8"]["filter_fqns"] = ["lm_head"]
        import torch

        doc["fp8"]["emulate"] = not torch.cuda.is_available()  # CPU check runs only: torchao's emulated FP8
        with (work / "migrated-fp8-runtime.yaml").open("w") as fh:
            y.dump(doc, fh)
        extra += ["--migrated", str(work / "migrated-fp8-runtime.yaml")]
    cmd = [sys.executable, "-m", "nemo_migrate.cli", "run", "--verify", *target, "--proxy-model", proxy,
           "--steps", steps, "--data", str(data), "--out", str(work / "verify"), "--jobs", jobs, *extra]
    print("command: nemo-migrate " + " ".join(cmd[3:]), flush=True)
    r = subprocess.run(cmd, text=True)
    v = work / "verify"
    for name in ("verify-report.json", "verify.log"):  # verify.log: each leg's progress, command line and seconds
        if (v / name).is_file():
            shutil.copy(v / name, out / name)
    for p in list(v.glob("*/loss-curves.png")) + list(v.glob("loss-curves.png")):
        name = p.parent.name if p.parent != v else (variant or "all")
        (out / name).mkdir(exist_ok=True)
        shutil.copy(p, out / name / "loss-curves.png")
    print(f"exit {r.returncode}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
