"""Merge GPU benchmark outputs into bench/results/<date>-<device>.json, with the side-by-side ratios.

    python bench/record.py --ours DIR_OR_JSON [...] [--automodel SHAPE=automodel-SHAPE.json ...] \
        [--automodel-log SHAPE=automodel-SHAPE.full.log ...] [--note TEXT ...] [--out bench/results/2026-11-22-h100.json]

--ours takes the runtime-speed-*.json files that bench/runtime_speed.py writes (one per run); --automodel the JSON that
Automodel 0.7.0's own benchmark recipe writes (`--benchmark.json_output_path`, see ../shared/bench/automodel-anchor).
Raw inputs are copied next to the result (bench/results/raw/<stem>/) so the numbers can be re-derived.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEAK = 989e12
# Automodel's benchmark FLOP/token for its LoRA workload (anchor README: 32.25 GFLOP/token for the 8B shape, 5.5 for 1B)
AUTOMODEL_FLOP_PER_TOKEN = {"llama8b": 32.25e9, "llama1b": 5.5e9}
TOKENS_PER_STEP = 32 * 4096  # global batch 32 x seq 4096 (the anchor workload)


def _automodel_row(shape: str, path: Path, log: Path | None) -> dict:
    d = json.loads(path.read_text())
    step = d["avg_iter_time_seconds"]
    tps = d["global_batch_size"] * d["seq_len"] / step / d["world_size"]
    row = {"system": "Automodel 0.7.0 benchmark recipe", "shape": shape, "variant": "bf16", "gpus": d["world_size"],
           "lora": True, "step_time_s": round(step, 3), "tokens_per_s_per_gpu": round(tps, 1),
           "mfu_pct_automodel_formula": round(d["avg_mfu_percent"], 1),
           "measured_steps": d["training_steps"], "warmup_steps_excluded": d["warmup_steps"],
           "setup_time_s": round(d.get("setup_time_seconds", 0), 1), "source": str(path.name)}
    if log and log.is_file():
        mem = [float(m) for m in re.findall(r"Max Memory Allocated: ([0-9.]+) GB", log.read_text())]
        if mem:
            row["peak_mem_gb_as_printed"] = max(mem)
    return row


def ratios_of(rows: list[dict]) -> dict:
    """ours/Automodel per shape and GPU count, FP8 over bf16, and 1 -> N GPU scaling efficiencies."""
    def tps(system: str, shape: str, variant: str, gpus: int = 1) -> float | None:
        for r in rows:
            if r["system"].startswith(system) and r["shape"] == shape and r["variant"] == variant and r.get("gpus", 1) == gpus \
                    and (r.get("exit", 0) == 0 or r.get("stopped_by_time_limit")):
                return r.get("tokens_per_s_per_gpu")
        return None

    ratios = {}
    for shape in sorted({r["shape"] for r in rows}):
        rs = {}
        for g in sorted({r.get("gpus", 1) for r in rows if r["shape"] == shape}):
            sfx = "" if g == 1 else f"_x{g}"  # 1-GPU keys keep their earlier names
            am = tps("Automodel", shape, "bf16", g)
            ours = {r["variant"]: r["tokens_per_s_per_gpu"] for r in rows
                    if r["system"] == "nemo-migrate runtime" and r["shape"] == shape and r.get("tokens_per_s_per_gpu")
                    and r.get("gpus", 1) == g and (r.get("exit", 0) == 0 or r.get("stopped_by_time_limit"))}
            best_bf16 = max((v for k, v in ours.items() if k.startswith("bf16")), default=None)
            best_fp8 = max((v for k, v in ours.items() if k.startswith("fp8")), default=None)
            if am:
                rs.update({f"ours_{k}_vs_automodel_bf16{sfx}": round(v / am, 3) for k, v in ours.items()
                           if k.startswith("bf16")})
            if best_fp8 and ours.get("bf16"):
                rs[f"best_fp8_vs_our_bf16_row{sfx}"] = round(best_fp8 / ours["bf16"], 3)
            if best_fp8 and best_bf16:
                rs[f"best_fp8_vs_our_fastest_bf16{sfx}"] = round(best_fp8 / best_bf16, 3)
            if g > 1:  # scaling efficiency: tokens/s/GPU at g GPUs over 1 GPU, same system and variant
                for v in ours:
                    one = tps("nemo-migrate", shape, v, 1)
                    if one and v.startswith("full-"):
                        rs[f"full_ft_{g}gpu_scaling_efficiency"] = round(ours[v] / one, 3)
                    elif one:
                        rs[f"ours_{v}_{g}gpu_scaling_efficiency"] = round(ours[v] / one, 3)
                am1 = tps("Automodel", shape, "bf16", 1)
                if am and am1:
                    rs[f"automodel_bf16_{g}gpu_scaling_efficiency"] = round(am / am1, 3)
        if rs:
            ratios[shape] = rs
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", type=Path, required=True)
    ap.add_argument("--automodel", nargs="*", default=[])
    ap.add_argument("--automodel-log", nargs="*", default=[])
    ap.add_argument("--automodel-env", type=Path, help="JSON {device, versions} of the Automodel runs' environment")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    raw = args.out.parent / "raw" / args.out.stem
    raw.mkdir(parents=True, exist_ok=True)
    rows, meta = [], {}
    for p in args.ours:
        d = json.loads(p.read_text())
        shutil.copy(p, raw / p.name)
        meta.setdefault("device", d["device"])
        meta.setdefault("versions", d["versions"])
        for r in d["results"]:
            r = {"system": "nemo-migrate runtime", **r, "run_command": d["command"]}
            if r.get("tokens_per_s_per_gpu") and r["shape"] in AUTOMODEL_FLOP_PER_TOKEN and r.get("lora", True):
                r["mfu_pct_automodel_formula"] = round(100 * r["tokens_per_s_per_gpu"] * AUTOMODEL_FLOP_PER_TOKEN[r["shape"]] / PEAK, 1)
            rows.append(r)
    logs = dict(a.split("=", 1) for a in args.automodel_log)
    for a in args.automodel:
        shape, path = a.split("=", 1)
        shutil.copy(path, raw / Path(path).name)
        log = Path(path).with_suffix(".full.log")  # automodel-TAG.json's own log first (several runs per shape)
        log = log if log.is_file() else Path(logs[shape]) if shape in logs else None
        if log is not None:
            shutil.copy(log, raw / log.name)
        row = _automodel_row(shape, Path(path), log)
        if args.automodel_env and args.automodel_env.is_file() and args.automodel_env.stat().st_size:
            row.update(json.loads(args.automodel_env.read_text()))
        rows.append(row)

    ratios = ratios_of(rows)
    doc = {"benchmark": "runtime speed, Automodel 0.7.0 LoRA benchmark workload (seq 4096, local batch 2, GBS 32, "
                        "LoRA dim 16 alpha 32 dropout 0.1 on *_proj, AdamW, random-init Llama shapes)",
           "date": args.out.stem[:10], **meta, "peak_flops": PEAK,
           "flop_formulas": {
               "mfu_pct": "ours: 3 x forward x 2/3 for LoRA (frozen weights get no weight grads), 3 x forward for full FT; "
                          "forward = 2 x matmul params + 4 x L x seq x H (causal attention counted in full)",
               "mfu_pct_automodel_formula": "Automodel's benchmark figure: 32.25 GFLOP/token (8B shape), 5.5 (1B shape)",
               "peak": "989 TFLOP/s dense BF16 (H100 SXM), for the FP8 rows too"},
           "method": "each run in its own process; the first 2 steps excluded (warm-up, compile); medians over the rest",
           "rerun": "see bench/README.md", "notes": args.note, "ratios": ratios, "results": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
