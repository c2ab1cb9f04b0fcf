#!/usr/bin/env bash
# Full-size Flux.1-dev LoRA steps on an NVIDIA GPU at 1024² (4096 image + 512 text tokens):
# bf16 and fp8 bases, with and without block streaming; prints s/it and peak device memory
# (nvidia-smi, sampled every 200 ms, minus the idle reading).
#
# Build here:  cargo build --release --example bench --features cuda
# Run there:   BENCH=target/release/examples/bench scripts/gpu_check.sh
# Needs no checkpoint (`--random dev`); pass MODEL=/path/flux1-dev.safetensors to use a file.
set -euo pipefail
BENCH=${BENCH:-target/release/examples/bench}
SRC=${MODEL:+--model $MODEL}
SRC=${SRC:---random dev}
STEPS=${STEPS:-3}
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
run() {
  local label=$1; shift
  local log; log=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$log.mem" &
  local mon=$!
  "$BENCH" $SRC --backend cuda --resolution 1024 --text-tokens 512 --steps "$STEPS" "$@" > "$log" 2>&1 || echo "$label: FAILED (see $log)"
  kill $mon; wait $mon 2>/dev/null || true
  local peak; peak=$(sort -n "$log.mem" | tail -1)
  echo "== $label: peak device $((peak - idle)) MiB (nvidia-smi, idle $idle MiB subtracted)"
  grep -E "step|load|estimate" "$log" || cat "$log"
}
run "bf16"            --base-dtype bf16
run "fp8"             --base-dtype fp8
run "bf16 + swap 20"  --base-dtype bf16 --blocks-to-swap 20
run "fp8 + swap 20"   --base-dtype fp8  --blocks-to-swap 20
