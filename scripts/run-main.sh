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
"$duet" generate --model "$model" --prompt "Once upon a time" -n 32 --temperature 0 "$@"
