#!/usr/bin/env bash
# Installs llama.cpp for the GGUF parity test and the peer benchmark into the cache (default <repo>/.cache, or
# $EMO_CACHE): node-llama-cpp 3.21.1 (its Node binding and, in the tarball, llama.cpp's source as
# llama/gitRelease.bundle) with its prebuilt CPU binary @node-llama-cpp/linux-x64 3.21.1. The other
# platforms' optional binaries (CUDA, Vulkan, ...) are left out, and node-llama-cpp's postinstall (which may
# download or build llama.cpp) is not run: the prebuilt binary is all the test loads. Idempotent; prints the
# install directory (holding node_modules/) on stdout.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${EMO_CACHE:-$repo_root/.cache}"
version=3.21.1
command -v npm >/dev/null || { echo "gguf parity: npm is not installed" >&2; exit 1; }
dir="$cache/node-llama-cpp-$version"
mkdir -p "$dir"
exec 9>"$dir/.lock"  # parallel test processes install once
flock 9
if [ ! -f "$dir/node_modules/@node-llama-cpp/linux-x64/package.json" ] ||
  [ ! -f "$dir/node_modules/node-llama-cpp/package.json" ]; then
  npm install --silent --no-save --no-audit --no-fund --ignore-scripts --omit=optional -E --prefix "$dir" \
    "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" >&2
fi
echo "$dir"
