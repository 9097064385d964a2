"""Runtime speed on a GPU: the bundled runtime (`nemo-migrate run`) on the workload of Automodel's LoRA benchmark.

Llama-3.1-8B / Llama-3.2-1B shapes (the runtime's proxies, runtime/proxies/llama-*.json, random weights), LoRA dim 16 alpha 32 dropout 0.1
on all `*_proj`, seq 4096 (Automodel's mock dataset), local batch 2, global batch 32 (16 micro-batches per step on
one GPU), AdamW, BF16 (and FP8 tensorwise, LoRA adapters kept trainable).  Each variant runs in its own process
for --steps optimizer steps; the first --warmup steps are excluded and medians are taken over the rest.

FLOP/token is Automodel's LoRA convention (as the anchor's hf_peft_bench.py: forward 2 x matmul params + causal
attention counted in full, x3 for forward+backward, x2/3 because frozen weights get no weight gradients); MFU is
over 989 TFLOP/s dense BF16 (H100 SXM), for the FP8 rows too.

    python bench/runtime_speed.py --shape llama1b --variants bf16,bf16-compile --steps 12 --out DIR
writes DIR/runtime-speed-<shape>.json and prints a table; bench/record.py merges such files (and Automodel's own
benchmark JSON from ../shared/bench/automodel-anchor) into bench/results/<date>-<device>.json with the ratios.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK = 989e12

VARIANTS = {
    # name: (fp8, compile, activation checkpointing, liger); "full-" variants train every weight (no LoRA)
    "bf16": (False, False, False, True),
    "bf16-compile": (False, True, False, True),
    "bf16-ac": (False, False, True, True),
    "bf16-compile-ac": (False, True, True, True),
    "bf16-noliger": (False, False, False, False),
    "fp8": (True, False, False, True),
    "fp8-ac": (True, False, True, True),
    "fp8-compile": (True, True, False, True),
    "fp8-compile-ac": (True, True, True, True),
    "full-bf16": (False, False, False, True),
    "full-bf16-ac": (False, False, True, True),
}
# "-shard" variants: the same with the LoRA base FSDP2-sharded at 2+ GPUs (nemo_compat.frozen_base: shard, the path
# before issue 18); the plain names leave the choice to the runtime (auto: replicated base on GPUs that hold it)
VARIANTS.update({f"{k}-shard": v for k, v in list(VARIANTS.items()) if not k.startswith("full-")})


def flops_per_token(cfg: dict, seq: int, lora: bool = True) -> float:
    H, L, V, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * (H // cfg["num_attention_heads"])
    fwd = 2 * (L * (H * (H + 2 * kv) + H * H + 3 * H * I) + H * V) + L * 4 * seq * H
    return 3 * fwd * 2 / 3 if lora else 3 * fwd


# the model configs: the runtime's proxy shapes (the same as ../shared/bench/automodel-anchor/llama*/config.json)
SHAPES = {"tiny": ROOT / "bench" / "shapes" / "tiny" / "config.json",
          "llama1b": ROOT / "runtime" / "proxies" / "llama-1b.json",
          "llama8b": ROOT / "runtime" / "proxies" / "llama-8b.json"}


def shape_dir_for(shape: str, out: Path) -> Path:
    """A directory holding the shape's config.json (what `model.config` of from_config takes)."""
    d = out / "shapes" / shape
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(SHAPES[shape].read_text())
    return d


def config_for(shape_dir: Path, variant: str, seq: int, work: Path) -> dict:
    fp8, compile_, ac, liger = VARIANTS[variant]
    cfg = {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "seed": 42,
        "step_scheduler": {"global_batch_size": 32, "local_batch_size": 2, "max_steps": 1000, "ckpt_every_steps": 100000,
                           "val_every_steps": 100000},
        "model": {"_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_config", "config": str(shape_dir),
                  "torch_dtype": "bf16", "use_liger_kernel": liger},
        "distributed": {"strategy": "fsdp2", "tp_size": 1, "cp_size": 1, "activation_checkpointing": ac},
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {"_target_": "nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset",
                    "vocab_size": 100, "seq_len": seq, "num_samples": 1000000, "batch_size": 2},
        "dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": None},
        "optimizer": {"_target_": "torch.optim.AdamW", "betas": [0.9, 0.999], "eps": 1e-8, "lr": 1e-5, "weight_decay": 0.01},
        "checkpoint": {"enabled": False},
    }
    if not variant.startswith("full-"):
        cfg = {**{k: v for k, v in cfg.items() if k != "distributed"},
               "peft": {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "target_modules": "*_proj",
                        "dim": 16, "alpha": 32, "dropout": 0.1},
               "distributed": cfg["distributed"]}
    if variant.endswith("-shard"):
        cfg["nemo_compat"] = {"frozen_base": "shard"}
    if compile_:
        cfg["compile"] = {"enabled": True, "dynamic": False}
    if fp8:
        cfg["fp8"] = {"enabled": True, "recipe_name": "tensorwise", "enable_fsdp_float8_all_gather": True,
                      "precompute_float8_dynamic_scale_for_fsdp": True, "filter_fqns": ["lm_head"]}
    return cfg


def run_variant(shape: str, variant: str, steps: int, warmup: int, seq: int, out: Path, timeout: int,
                nproc: int = 1) -> dict:
    import yaml

    shape_dir = shape_dir_for(shape, out)
    work = out / (f"{shape}-{variant}" + (f"-x{nproc}" if nproc > 1 else ""))
    work.mkdir(parents=True, exist_ok=True)
    cfgd = config_for(shape_dir, variant, seq, work)
    (work / "config.yaml").write_text(yaml.safe_dump(cfgd, sort_keys=False))
    cmd = [sys.executable, "-m", "nemo_migrate.cli", "run", str(work / "config.yaml"), "--out", str(work / "run"),
           "--stop-after", str(steps)] + (["--nproc-per-node", str(nproc)] if nproc > 1 else [])
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rc, log = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = "timeout", ((e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")) + "\n[timeout]"
    (work / "output.txt").write_text(log)
    res = {"shape": shape, "variant": variant, "gpus": nproc, "lora": not variant.startswith("full-"), "command": " ".join(cmd[1:]), "exit": rc, "wall_s": round(time.time() - t0, 1)}
    mfile = work / "run" / "metrics.jsonl"
    steps_m = [json.loads(l) for l in mfile.read_text().splitlines() if '"train"' in l] if mfile.is_file() else []
    res["steps_done"] = len(steps_m)
    if rc != 0:
        res["error"] = "\n".join(l for l in log.splitlines() if "error" in l.lower() or "memory" in l.lower())[-600:]
    meas = steps_m[warmup:]
    if meas:
        mcfg = json.loads((shape_dir / "config.json").read_text())
        fpt = flops_per_token(mcfg, seq, lora=res["lora"])
        tps = statistics.median(m["tokens_per_s_per_gpu"] for m in meas)
        res.update({
            "measured_steps": len(meas), "warmup_steps_excluded": warmup,
            "tokens_per_s_per_gpu": round(tps, 1), "step_time_s": round(statistics.median(m["step_time_s"] for m in meas), 3),
            "model_tflops_per_gpu": round(tps * fpt / 1e12, 1), "mfu_pct": round(100 * tps * fpt / PEAK, 1),
            "flop_per_token": fpt, "peak_mem_gib": round(max(m["peak_mem_gib"] for m in steps_m), 1),
            "loss_first_last": [steps_m[0]["loss"], steps_m[-1]["loss"]],
        })
    summ = work / "run" / "summary.json"
    if summ.is_file():
        s = json.loads(summ.read_text())
        res["trainable_params"] = s.get("trainable_params")
    res["kernels"] = "; ".join(l.split("kernels: ", 1)[1] for l in log.splitlines() if "kernels: " in l) or None
    res["fp8_line"] = next((l for l in log.splitlines() if l.startswith("fp8:")), None)
    res["frozen_base_line"] = next((l for l in log.splitlines() if "LoRA base" in l), None)
    return res


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for m in ("torch", "transformers", "torchao", "liger-kernel", "triton"):
        try:
            out[m] = version(m)
        except PackageNotFoundError:
            out[m] = None
    return out


def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return "cpu"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama1b", choices=list(SHAPES))
    ap.add_argument("--variants", default="bf16")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--timeout", type=int, default=540)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--nproc", default="1", help="GPUs per run; a comma list runs each variant at each size")
    ap.add_argument("--tag", default="", help="suffix of the output file name (several calls into one --out)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (bench/speed_h200x2.sh's time limit; the run in progress gets it too): record what was measured so far,
    # run no further variant, write the JSON
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    results = []
    for v, n in [(v, int(n)) for v in args.variants.split(",") for n in args.nproc.split(",")]:
        if stop:
            break
        res = run_variant(args.shape, v, args.steps, args.warmup, args.seq, args.out, args.timeout, n)
        if stop:
            res["stopped_by_time_limit"] = True  # its measured steps (if any) are still real steps
        ac = v[:-6] + "-ac-shard" if v.endswith("-shard") else f"{v}-ac"
        if res["exit"] != 0 and "out of memory" in (res.get("error") or "").lower() and ac in VARIANTS and not stop:
            results.append(res)  # recorded: this setting does not fit; the same with activation checkpointing
            res = run_variant(args.shape, ac, args.steps, args.warmup, args.seq, args.out, args.timeout, n)
        results.append(res)
        print(json.dumps({k: res.get(k) for k in ("shape", "variant", "gpus", "exit", "tokens_per_s_per_gpu", "mfu_pct", "peak_mem_gib",
                                                  "step_time_s", "measured_steps", "trainable_params", "error")}), flush=True)
    doc = {"benchmark": "runtime speed, Automodel LoRA benchmark workload", "date": _dt.date.today().isoformat(),
           "device": device(), "versions": versions(), "peak_flops": PEAK,
           "flop_formula": "3 x forward x 2/3 for LoRA (frozen weights get no weight grads), 3 x forward for full "
                           "fine-tuning; forward = 2 x matmul params + 4 x L x seq x H",
           "command": "python bench/runtime_speed.py " + " ".join(sys.argv[1:]), "results": results}
    (args.out / f"runtime-speed-{args.shape}{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'variant':<18} {'tok/s/GPU':>10} {'MFU%':>6} {'mem GiB':>8} {'s/step':>7}")
    for r in results:
        print(f"{r['variant']:<18} {r.get('tokens_per_s_per_gpu', '-')!s:>10} {r.get('mfu_pct', '-')!s:>6} "
              f"{r.get('peak_mem_gib', '-')!s:>8} {r.get('step_time_s', '-')!s:>7}  exit {r['exit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
