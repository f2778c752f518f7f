#!/usr/bin/env bash
# Speculative decoding: decode tokens/s with speculation off, adaptive (what a node runs) and
# fixed (drafting every step), at batch 1 and 8, with acceptance rates (`duet bench-spec`,
# greedy, outputs checked identical to the plain run). One JSON per run in OUT_DIR and the
# tables on stdout.
#
#   bench/speculative.sh [BUILD_DIR] [OUT_DIR]
#
# Runs: stories260K (../shared/models) with n-gram prompt lookup (TinyStories prompts, and a
# repetitive prompt whose greedy continuation repeats: high acceptance; 5 rounds, and once more
# at batch 1 with lavapipe's dispatches inline), with its own Q4_0
# self-draft, and with itself as the draft model (every draft accepted: the mechanism's upper
# bound); a synthetic tiny-4k model in F16 with its Q4_0 self-draft; a synthetic
# SmolLM2-135M-shaped model in F16 (random weights, whose greedy output repeats, so its
# drafts are nearly all accepted) with its Q4_0 self-draft and with n-gram lookup, at batch 1
# only (a pass takes ~0.1 s on lavapipe). Vulkan (lavapipe without a GPU).
set -euo pipefail
BUILD=${1:-build/release}
OUT=${2:-/tmp/duet-spec-bench}
DUET="$BUILD/tools/duet/duet"
STORIES=${STORIES:-"$(dirname "$0")/../../shared/models/stories260K.gguf"}
mkdir -p "$OUT"
SYNTH="$OUT/tiny-4k-f16.gguf"
[ -f "$SYNTH" ] || "$DUET" make-model --shape tiny-4k --dtype f16 --seed 7 -o "$SYNTH" >/dev/null
SMOL="$OUT/smollm2-135m-f16.gguf"
[ -f "$SMOL" ] || "$DUET" make-model --shape smollm2-135m --dtype f16 --seed 7 -o "$SMOL" >/dev/null
PROMPTS=(--prompt "Once upon a time, there was a little girl named Lily."
         --prompt "One day, a boy named Tim went to the park."
         --prompt "The sun was shining and the birds were singing."
         --prompt "Tom had a big red ball.")
run() {  # name, bench-spec flags... (BATCH=1,8 unless set)
  local name=$1; shift
  echo "== $name"
  "$DUET" bench-spec --backend vulkan --batch "${BATCH:-1,8}" --repeat "${REPEAT:-3}" --json "$OUT/$name.json" "$@" 2>/dev/null
}
run stories-ngram --model "$STORIES" --speculation ngram --gen 128 "${PROMPTS[@]}"
REPETITIVE="Lily said: I like the red ball. Lily said: I like the red ball. Lily said: I like the red ball."
REPEAT=${REPEAT:-5} run stories-ngram-repetitive --model "$STORIES" --speculation ngram --gen 128 \
    --prompt "$REPETITIVE"
# The same with lavapipe running each dispatch on the calling thread (--vk-cpu-threads 0): a
# plain step of this tiny model is ~3x faster there (no worker wake-ups per dispatch), so the
# extra compute of the verify rows weighs more.
BATCH=1 REPEAT=${REPEAT:-5} run stories-ngram-repetitive-inline --vk-cpu-threads 0 \
    --model "$STORIES" --speculation ngram --gen 128 --prompt "$REPETITIVE"
run stories-self-q4_0 --model "$STORIES" --speculation self --gen 128 "${PROMPTS[@]}"
run stories-draft-itself --model "$STORIES" --speculation draft --draft-model "$STORIES" --gen 128 "${PROMPTS[@]}"
run tiny-4k-f16-self-q4_0 --model "$SYNTH" --speculation self --gen 64 --prompt-len 32
BATCH=1 run smollm2-135m-f16-self-q4_0 --model "$SMOL" --speculation self --gen 48 --prompt-len 16
BATCH=1 run smollm2-135m-f16-ngram --model "$SMOL" --speculation ngram --gen 48 --prompt-len 16
