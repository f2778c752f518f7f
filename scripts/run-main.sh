#!/usr/bin/env bash
# The main job: installs what is missing, builds, makes a small synthetic model on first run,
# and generates text with it. Usage: scripts/run-main.sh [--model FILE] [extra duet generate flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release duet
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
fi
"$duet" inspect "$model"
echo "--- generating with $model (random weights: the text is noise, the pipeline is real)"
"$duet" generate --model "$model" --prompt "Once upon a time" -n 32 --temperature 0 "$@"

# The real trained TinyStories model, when ../shared is present, shows real text.
stories=../shared/models/stories260K.gguf
if [ -f "$stories" ]; then
  echo "--- generating with $stories"
  "$duet" generate --model "$stories" --prompt "Once upon a time" -n 64 --temperature 0
fi
