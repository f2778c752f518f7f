#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test with ctest.
# Usage: scripts/test.sh [preset]   (release by default; also debug, asan)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
scripts/install-deps.sh
scripts/build.sh "$preset"
ctest --preset "$preset"
