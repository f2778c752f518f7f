#!/usr/bin/env bash
# The main job: installs what is missing, builds, makes a small synthetic model on first run,
# and serves it with a local Duet cluster -- the router, 2 prefill nodes and 1 decode node as
# separate processes on loopback -- sending a few prompts through the public gRPC API and
# printing the completions. Then the same with the real TinyStories model when ../shared has it.
#
# Usage: scripts/run-main.sh [--model FILE] [extra `duet cluster` flags, e.g. --backend cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release duet  # also builds duet-router, duet-prefill-node, duet-decode-node
duet=build/release/tools/duet/duet

model=""
if [ "${1:-}" = "--model" ]; then
  model="$2"
  shift 2
fi
if [ -z "$model" ]; then
  model=build/models/tiny-f32.gguf
  if [ ! -f "$model" ]; then
    mkdir -p build/models
    "$duet" make-model --shape tiny --dtype f32 --seed 1 -o "$model"
  fi
  echo "--- a local cluster serving $model (random weights: the text is noise, the pipeline is real)"
else
  echo "--- a local cluster serving $model"
fi
"$duet" cluster --model "$model" --port 0 --prefill 2 --decode 1 \
    --prompt "Once upon a time" --prompt "The little dog" --prompt "In a faraway land" \
    -n 32 --temperature 0 "$@"

# The real trained TinyStories model, when ../shared is present, shows real text.
stories=../shared/models/stories260K.gguf
if [ -f "$stories" ]; then
  echo
  echo "--- a local cluster serving $stories"
  "$duet" cluster --model "$stories" --port 0 --prefill 2 --decode 1 \
      --prompt "Once upon a time" --prompt "The little dog" --prompt "Lily and Ben" \
      -n 64 --temperature 0 "$@"
fi
