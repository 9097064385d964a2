#!/bin/bash
# Issue 18, one device call on 1 x H200 (kind nvidia-h200; carry [".whl"] with the runtime wheels and this tree's
# nemo_migrate wheel): run --verify wall time with legs in one long-lived runtime process (tiny proxy, 10 steps, and
# the Llama-3.2-1B proxy, 20 steps), and 8B LoRA on one GPU (bf16, bf16-compile).  OUT must be set; RUNS picks a
# subset (default: all, in this order); BUDGET (s, default 560) skips what no longer fits:
#   RUNS=tests,verify-tiny,verify-1b,l8b,l8b-compile OUT=/tmp/o bash bench/h200_verify_speed.sh
# (The cuDNN-attention comparison of bench/results/2026-11-30-h200-verify.json ran this script at commit 9ce3901,
# RUNS=l8b,l8b-torch, where the runtime had that path.)
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT}"
RUNS=${RUNS:-tests,verify-tiny,verify-1b,l8b,l8b-compile}
BUDGET=${BUDGET:-560}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
want() { [[ ",$RUNS," == *",$1,"* ]] || return 1; local need=${2:-60}
  if (( $(date +%s) - T0 + need > BUDGET )); then echo "$1: skipped, does not fit BUDGET" | tee -a "$OUT/timeline.txt"; return 1; fi; }
T0=$(date +%s)
mkdir -p "$OUT"
stamp() { echo "$(date +%T) +$(( $(date +%s) - T0 ))s $*" | tee -a "$OUT/timeline.txt"; }
if want tests 90; then stamp tests; timeout 240 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_legserver.py 2>&1 \
  | tail -3 | tee "$OUT/tests.txt"; fi
verify() {  # NAME PROXY STEPS LIMIT
  stamp "$1"
  local t=$(date +%s)
  timeout "$4" python3 -m nemo_migrate.cli run --verify golden/seed/input --proxy-model "$2" --steps "$3" --data examples/data \
    --out "$OUT/$1" > "$OUT/$1.txt" 2>&1
  echo "$1: exit $? wall $(( $(date +%s) - t )) s" | tee -a "$OUT/timeline.txt"
  grep -E '^time:|PASS|FAIL' "$OUT/$1.txt" | cut -c1-240
}
want verify-tiny 60 && verify verify-tiny tiny 10 120
speed() {  # NAME VARIANT [env...]
  local name=$1 variant=$2; shift 2
  stamp "$name"
  env "$@" timeout 200 python3 bench/runtime_speed.py --shape llama8b --variants "$variant" --steps 6 --warmup 2 --out "$OUT/$name" \
    2>&1 | tail -2
}
want l8b 90 && speed l8b bf16
want verify-1b 150 && verify verify-1b llama-1b 20 $(( BUDGET - ($(date +%s) - T0) ))
want l8b-compile 100 && speed l8b-compile bf16-compile
stamp end
