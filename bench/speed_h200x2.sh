#!/bin/bash
# Issue 18 side by side, one device call on 2 x H200 (kind nvidia-h200-x2; carry [".anchor"]), under 9 minutes
# (NG=4 on nvidia-h200-x4 for issue 20: the multi-GPU rows at 4 GPUs):
#   the runtime (bench/runtime_speed.py) and Automodel 0.7.0's own benchmark recipe (.anchor, copied from
#   ../shared/bench/automodel-anchor with its wheels under .anchor/whl), Automodel's LoRA benchmark workload.
#   bash bench/speed_h200x2.sh            # writes $OUT/<date>-h200x2.json (bench/record.py), raw/, logs/
# Most important numbers first; every run has its own time limit, and a run that no longer fits the budget
# (BUDGET seconds from the start, default 500) is skipped and listed in the JSON's notes:
#   1. 1B bf16, 2 GPUs: ours (auto: replicated LoRA base) | 2. Automodel       3. 8B bf16, 2 GPUs: ours | 4. Automodel
#   5. 8B fp8-compile, 2 GPUs: ours | 6. 8B bf16-compile, 2 GPUs: ours (our best bf16, for the FP8 ratio)
#   7. 1B, 1 GPU: ours on GPU 0 and Automodel on GPU 1 AT THE SAME TIME (for the scaling efficiencies; noted)
#   8. 1B bf16-shard, 2 GPUs: ours with the base FSDP2-sharded (the path before issue 18: what replicating bought)
# Env: RUNS (comma-separated run names to do, e.g. ours-l8b-x2,am-l8b-x2,1gpu-pair; default all), PY (python with the runtime's wheels, default python3), A (anchor folder, default .anchor), BUDGET, OUT;
# for a CPU smoke test of this script only: S1B/S8B (shapes, default llama1b/llama8b) and SEQ (default 4096).
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT}"
PY=${PY:-python3}
A=$(cd "${A:-.anchor}" && pwd)
BUDGET=${BUDGET:-500}
NG=${NG:-2}   # GPUs of the multi-GPU rows (4 on nvidia-h200-x4: issue 20)
S1B=${S1B:-llama1b} S8B=${S8B:-llama8b} SEQ=${SEQ:-4096}
T0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/ours" "$OUT/am" "$OUT/logs"
NOTES_F=$OUT/logs/notes.txt; : > "$NOTES_F"   # a file: background runs add to it too
note() { echo "$*" >> "$NOTES_F"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

# run_limited NAME SECONDS CMD...: in its own process group; SIGTERM at the limit (torchrun passes it on to its
# workers, which run in sessions of their own), SIGKILL 15 s later
run_limited() {
  local name=$1 lim=$2; shift 2
  local t1=$(date +%s)
  setsid "$@" > "$OUT/logs/$name.txt" 2>&1 < /dev/null &
  local pid=$!
  setsid bash -c "sleep $lim; kill -TERM -- -$pid; sleep 15; kill -KILL -- -$pid" > /dev/null 2>&1 < /dev/null &
  local watch=$!
  wait $pid; local rc=$?
  kill -- -$watch 2>/dev/null; wait $watch 2>/dev/null
  echo "$(date +%T) $name rc=$rc $(( $(date +%s) - t1 ))s (limit ${lim}s)"
  [ $rc -ne 0 ] && note "$name: exit $rc after $(( $(date +%s) - t1 )) s (limit $lim s); log logs/$name.txt"
  return 0
}

# fits NAME WANT MIN: sets LIM, the limit for a run that wants WANT s and needs at least MIN s; fails if it does not fit
fits() {
  if [ -n "${RUNS:-}" ] && [[ ",$RUNS," != *",$1,"* ]]; then return 1; fi   # RUNS=ours-l1b-x2,am-l1b-x2,...: only those
  local l=$(( $(left) - 5 ))
  if [ $l -lt "$3" ]; then note "$1: skipped, ${l} s of the budget left (needs >= $3 s)"; echo "$(date +%T) skip $1"; return 1; fi
  LIM=$(( l < $2 ? l : $2 ))
}

# ours TAG SHAPE VARIANT NPROC STEPS WANT MIN [GPU]
ours() {
  fits "ours-$1" "$6" "$7" || return 0
  local lim=$LIM cuda=()
  [ -n "${8:-}" ] && cuda=(env CUDA_VISIBLE_DEVICES=$8)
  run_limited "ours-$1" "$lim" "${cuda[@]}" "$PY" bench/runtime_speed.py --shape "$2" --variants "$3" --nproc "$4" \
    --steps "$5" --warmup 2 --seq "$SEQ" --timeout $((lim + 60)) --out "$OUT/ours" --tag="-$1"
}

am_setup() {
  [ -d /tmp/site/nemo_automodel ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$A"/whl/*.whl > "$OUT/logs/am-pip.txt" 2>&1 || note "automodel wheel install failed"
  mkdir -p /tmp/site; echo "run = None  # measurement shim: the benchmark recipe only reads wandb.run" > /tmp/site/wandb.py
  PYTHONPATH=/tmp/site python3 - > "$OUT/am/automodel-env.json" <<'EOF'
import json, importlib.metadata as m, torch
v = {}
for n in ("nemo_automodel", "torch", "transformers", "torchao", "liger-kernel", "triton"):
    try:
        v[n] = m.version(n)
    except m.PackageNotFoundError:
        v[n] = None
print(json.dumps({"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "versions": v}))
EOF
}

# automodel TAG SHAPE NPROC WANT MIN [GPU]: Automodel 0.7.0's benchmark recipe (as .anchor/run_automodel.sh, N GPUs)
automodel() {
  fits "am-$1" "$4" "$5" || return 0
  local lim=$LIM
  sed "s#LLAMA_DIR#$A/$2#" "$A/am-bench-8b-lora.yaml" > "/tmp/am-$1.yaml"
  local cmd=(torchrun --standalone --nproc-per-node "$3" -m nemo_automodel.recipes.llm.benchmark -c "/tmp/am-$1.yaml"
             --benchmark.json_output_path "$OUT/am/automodel-$1.json")
  echo "cd /tmp && PYTHONPATH=/tmp/site ${6:+CUDA_VISIBLE_DEVICES=$6 }${cmd[*]}  (yaml: $A/am-bench-8b-lora.yaml, LLAMA_DIR=$2)" > "$OUT/am/automodel-$1.cmd"
  run_limited "am-$1" "$lim" env -C /tmp PYTHONPATH=/tmp/site ${6:+CUDA_VISIBLE_DEVICES=$6} "${cmd[@]}"
  cp "$OUT/logs/am-$1.txt" "$OUT/am/automodel-$1.full.log"
}

echo "$(date +%T) start; budget ${BUDGET}s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/logs/gpus.txt" 2>&1
am_setup &   # wheel install overlaps the first run (CPU only)
SETUP=$!
ours   l1b-x$NG      $S1B bf16 $NG 10 110 70
wait $SETUP
automodel l1b-x$NG   $S1B $NG 120 60
ours   l8b-x$NG      $S8B bf16 $NG 8 130 90
automodel l8b-x$NG   $S8B $NG ${AM8_WANT:-130} 80 # AM8_WANT: its limit (Automodel builds the 8B for minutes)
ours   l8b-fp8c-x$NG $S8B fp8-compile $NG 8 150 110
ours   l8b-bf16c-x$NG $S8B bf16-compile $NG 8 140 100
if fits "1gpu-pair" 100 70; then   # two 1-GPU runs side by side, one per GPU
  ours l1b-x1 $S1B bf16 1 10 "$LIM" 60 0 &
  P1=$!
  automodel l1b-x1 $S1B 1 "$LIM" 60 1
  wait $P1
  note "1-GPU 1B rows: ours on GPU 0 and Automodel on GPU 1 ran at the same time"
fi
ours   l1b-shard-x$NG $S1B bf16-shard $NG 10 100 60

RES=$(date +%F)-h200x$NG   # copy $OUT/$RES.json and $OUT/raw/$RES/ into bench/results/
# merge (bench/record.py computes ours/Automodel per GPU count and the 1 -> 2 GPU scaling efficiencies)
AMS=()
for f in "$OUT"/am/automodel-*.json; do
  [ -f "$f" ] || continue
  t=$(basename "$f" .json); t=${t#automodel-}; [ "$t" = env ] && continue
  s=$S1B; case $t in l8b*) s=$S8B;; esac
  AMS+=("$s=$f")   # its log: automodel-$t.full.log beside it
  note "automodel $t command: $(cat "$OUT/am/automodel-$t.cmd" 2>/dev/null)"
done
NOTE_ARGS=(); while IFS= read -r n; do NOTE_ARGS+=(--note "$n"); done < "$NOTES_F"
"$PY" bench/record.py --ours "$OUT"/ours/runtime-speed-*.json ${AMS[@]:+--automodel "${AMS[@]}"} \
  --automodel-env "$OUT/am/automodel-env.json" "${NOTE_ARGS[@]}" \
  --out "$OUT/$RES.json" > "$OUT/logs/record.txt" 2>&1 || { echo "record.py failed"; cat "$OUT/logs/record.txt"; }
echo "$(date +%T) done in $(( $(date +%s) - T0 ))s"
"$PY" - "$OUT/$RES.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{'system':<10} {'shape':<8} {'variant':<18} {'GPUs':>4} {'tok/s/GPU':>10} {'s/step':>7} {'peak':>7} exit")
for r in d["results"]:
    mem = r.get("peak_mem_gib", r.get("peak_mem_gb_as_printed", "-"))
    print(f"{r['system'][:10]:<10} {r['shape']:<8} {r['variant']:<18} {r.get('gpus', 1):>4} "
          f"{r.get('tokens_per_s_per_gpu', '-')!s:>10} {r.get('step_time_s', '-')!s:>7} {mem!s:>7} {r.get('exit', 0)}")
print(json.dumps(d["ratios"], indent=1))
for n in d["notes"]:
    print("note:", n)
EOF
