#!/usr/bin/env bash
# The headline speculative-decoding number, measured many times: stories260K, n-gram prompt
# lookup, batch 1, the repetitive prompt of bench/speculative.sh, `duet bench-spec --repeat 3`
# run ROUNDS times in a row (each run its own engine and warm-up). Prints each run's speedups of
# adaptive and fixed over off and their medians over the runs; one JSON per run in OUT_DIR.
# This VM's plain decoding rate moves 30-50% between runs, so one run says little.
#
#   bench/speculative_rounds.sh [BUILD_DIR] [OUT_DIR] [ROUNDS] [extra bench-spec flags...]
#
# e.g. `bench/speculative_rounds.sh build/release /tmp/spec-rounds 10 --vk-cpu-threads 0`.
set -euo pipefail
BUILD=${1:-build/release}
OUT=${2:-/tmp/duet-spec-rounds}
ROUNDS=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
DUET="$BUILD/tools/duet/duet"
STORIES=${STORIES:-"$(dirname "$0")/../../shared/models/stories260K.gguf"}
REPETITIVE="Lily said: I like the red ball. Lily said: I like the red ball. Lily said: I like the red ball."
mkdir -p "$OUT"
rate() {  # json, mode -> decode tokens/s
  grep -o "\"mode\": \"$2\", [^}]*" "$1" | sed -E 's/.*"decode_tokens_per_s": ([0-9.e+-]+).*/\1/'
}
speedups=()
for ((r = 0; r < ROUNDS; ++r)); do
  json="$OUT/round-$r.json"
  "$DUET" bench-spec --backend vulkan --batch 1 --repeat 3 --model "$STORIES" --speculation ngram \
      --gen 128 --prompt "$REPETITIVE" --json "$json" "$@" >/dev/null 2>&1
  off=$(rate "$json" off); adaptive=$(rate "$json" adaptive); fixed=$(rate "$json" fixed)
  line=$(awk -v o="$off" -v a="$adaptive" -v f="$fixed" \
    'BEGIN { printf "%.1f %.1f %.1f %.2f %.2f", o, a, f, a / o, f / o }')
  echo "round $r: off adaptive fixed tok/s, adaptive and fixed speedup: $line"
  speedups+=("$line")
done
printf '%s\n' "${speedups[@]}" | awk '
  { a[NR] = $4; f[NR] = $5 }
  function median(x, n,   i, j, t) {
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
    return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
  }
  END {
    n = NR; lo_a = a[1]; hi_a = a[1]; lo_f = f[1]; hi_f = f[1]
    for (i = 1; i <= n; ++i) { if (a[i] < lo_a) lo_a = a[i]; if (a[i] > hi_a) hi_a = a[i];
                               if (f[i] < lo_f) lo_f = f[i]; if (f[i] > hi_f) hi_f = f[i] }
    printf "%d rounds: adaptive median %.2fx (%.2f-%.2fx), fixed median %.2fx (%.2f-%.2fx)\n",
           n, median(a, n), lo_a, hi_a, median(f, n), lo_f, hi_f
  }'
