#!/usr/bin/env bash
# Installs the Debian 12 packages Duet builds and runs with, skipping what is already there.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-14-dev
  libabsl-dev libspdlog-dev libpcre2-dev libxxhash-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev
  libvulkan-dev mesa-vulkan-drivers glslc vulkan-tools
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-protobuf python3-yaml prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# npm for the dashboard's schema check (below); a Node.js that brings its own npm will do.
command -v npm > /dev/null || missing+=(nodejs npm)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# From the npm registry, into build/npm: TypeScript and Grafana's dashboard schema, which the
# deploy_dashboard_schema test checks deploy/grafana against (tools/check_dashboard_schema.sh;
# it skips, saying so, where they could not be installed).
NPM_DIR="$(cd "$(dirname "$0")/.." && pwd)/build/npm"
NPM_PACKAGES=(typescript@5.9.3 @grafana/schema@13.2.3)
if [ -f "$NPM_DIR/node_modules/@grafana/schema/package.json" ] &&
   grep -q '"version": "13.2.3"' "$NPM_DIR/node_modules/@grafana/schema/package.json" &&
   [ -x "$NPM_DIR/node_modules/.bin/tsc" ]; then
  echo "install-deps: npm packages present"
elif mkdir -p "$NPM_DIR" &&
     npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save "${NPM_PACKAGES[@]}" > /dev/null; then
  echo "install-deps: installed ${NPM_PACKAGES[*]} in $NPM_DIR"
else
  echo "install-deps: warning: npm could not install ${NPM_PACKAGES[*]}; the dashboard schema test will skip"
fi
