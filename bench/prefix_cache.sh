#!/usr/bin/env bash
# Prefix caching and KV-aware routing, end to end: `duet loadgen` against local clusters
# (`duet cluster`, Vulkan nodes) on a synthetic 4k-context model, one JSON per run in OUT_DIR
# and a summary (bench/prefix_cache.json-style) on stdout.
#
#   bench/prefix_cache.sh [BUILD_DIR] [OUT_DIR]
#
# Workloads (closed loop, one client, so TTFT is the prefill itself and not queueing):
#   system: every request = one 2,000-token system prompt + its own 200-token question,
#           16 output tokens; 1 prefill + 1 decode node, cache off vs on; one warm-up request.
#   turns:  2 conversations of 4 turns (each turn adds the reply and a new 200-token message to
#           a 1,000-token start), cache off vs on.
#   tenants: 3 different 1,000-token system prompts over 2 prefill nodes (+1 decode node),
#           round-robin vs cache-aware routing: the cluster-wide hit rate and TTFT.
set -euo pipefail
BUILD=${1:-build/release}
OUT=${2:-/tmp/duet-prefix-bench}
DUET="$BUILD/tools/duet/duet"
mkdir -p "$OUT"
MODEL="$OUT/tiny-4k-q8_0.gguf"
[ -f "$MODEL" ] || "$DUET" make-model --shape tiny-4k --dtype q8_0 --seed 7 -o "$MODEL" >/dev/null
PORT=${PORT:-50261}

run() {  # name, cluster flags..., --, loadgen flags...
  local name=$1; shift
  local cluster=() loadgen=()
  while [ "$1" != "--" ]; do cluster+=("$1"); shift; done; shift
  loadgen=("$@")
  "$DUET" cluster --model "$MODEL" --port "$PORT" --backend vulkan --kv-blocks 1024 \
      --log-level "${LOG_LEVEL:-info}" "${cluster[@]}" > "$OUT/$name.cluster.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    grep -q "duet cluster: serving" "$OUT/$name.cluster.log" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || { cat "$OUT/$name.cluster.log"; exit 1; }
    sleep 0.5
  done
  "$DUET" loadgen --addr "127.0.0.1:$PORT" --concurrency 1 --seed 3 --json "$OUT/$name.json" \
      "${loadgen[@]}" > "$OUT/$name.txt" 2>/dev/null
  kill -INT $pid; wait $pid || true
  /usr/bin/python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["runs"][0]
print(f'{sys.argv[2]:<22} TTFT mean {r["ttft_ms"]["mean"]:8.1f} ms  p50 {r["ttft_ms"]["p50"]:8.1f}'
      f'  p99 {r["ttft_ms"]["p99"]:8.1f}  hit rate {100 * r["prefix_cache_hit_rate"]:5.1f}%'
      f'  ({r["requests"]} requests)')
PY
}

# Every run first sends one unmeasured request per shared prefix (--warmup; the same prefixes,
# other suffixes), as vLLM's benchmark_prefix_caching warms up; a cache-off run pays it too.
SYSTEM=(--shared-prefix-len 2000 --prompt-len 200 --output-len 16 --warmup 1)
run system-cache-off --prefill 1 --decode 1 --set scheduler.enable_prefix_caching=false -- \
    --requests 6 "${SYSTEM[@]}"
run system-cache-on --prefill 1 --decode 1 -- --requests 12 "${SYSTEM[@]}"
TURNS=(--requests 2 --turns 4 --shared-prefix-len 1000 --num-prefixes 2 --prompt-len 200
       --output-len 16)
run turns-cache-off --prefill 1 --decode 1 --set scheduler.enable_prefix_caching=false -- "${TURNS[@]}"
run turns-cache-on --prefill 1 --decode 1 -- "${TURNS[@]}"
TENANTS=(--requests 18 --shared-prefix-len 1000 --num-prefixes 3 --prompt-len 100 --output-len 16)
run tenants-round-robin --prefill 2 --decode 1 --set router.routing_policy=round_robin -- "${TENANTS[@]}"
run tenants-cache-aware --prefill 2 --decode 1 --set router.routing_policy=cache_aware -- "${TENANTS[@]}"
echo "JSON per run in $OUT"
