#!/usr/bin/env bash
# emo beside llama.cpp on identical weights (docs/inference.md, "emo beside llama.cpp").
#   1. llama.cpp's source: the git bundle in node-llama-cpp's npm tarball (scripts/fetch-npm, the version of
#      the GGUF parity test), cloned into the download cache (default <repo>/.cache, or $EMO_CACHE) as
#      llama.cpp-COMMIT/src; llama-bench built there natively (Release, GGML_NATIVE, no curl) into
#      llama.cpp-COMMIT/build. Both are kept: a rerun skips them. The build takes 10-20 minutes on 2 cores.
#      llama-quantize and llama-perplexity are built beside it (the Q4_K_M reference of docs/export.md).
#   2. emo's bench_peer (build/bench/bench_peer, from scripts/build) writes the model once into the models
#      directory (default <cache>/peer-models, about 19 GB): emo checkpoints in f32/bf16/int8/q4 and their
#      GGUF exports in f32/bf16/Q8_0/Q4_0/Q4_K_M, full and pruned to 12.5% of the experts.
#   3. bench_peer runs the rounds (default 5: about 15 minutes) and prints the table and one JSON line.
# Run the benchmark with nothing else running on the machine; --build-only first builds llama-bench apart
# from it.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/llama_peer.sh [--build-only] [--rounds N] [--threads N] [--models DIR]
                           [--sets full,pruned] [--formats f32,bf16,int8,q4] [--llama-wait-policy P]
  --build-only   fetch and build llama-bench, llama-quantize and llama-perplexity (cached), then stop
  --rounds N     paired rounds, alternating which engine goes first (default 5)
  --threads N    threads of each engine (default 2)
  --models DIR   where the models are written once (default <cache>/peer-models)
  --sets LIST    full, pruned (12.5% of the experts) or both (default)
  --formats LIST emo formats of f32, bf16, int8, q4 (paired with GGUF f32, bf16, Q8_0, and q4 with both
                 Q4_0 and Q4_K_M; default all)
  --llama-wait-policy passive|active
                 OMP_WAIT_POLICY of llama.cpp's threads (default passive: they sleep between graph
                 nodes; active: they spin, as emo's pool does)
EOF
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${EMO_CACHE:-$repo_root/.cache}"
node_llama_cpp=node-llama-cpp@3.21.1  # the version tests/gguf_parity/setup.sh installs
build_only=0 rounds=5 threads=2 models="$cache/peer-models" sets=full,pruned formats=f32,bf16,int8,q4 wait_policy=passive

positive() {  # NAME VALUE: VALUE must be a positive integer
  case "$2" in
    '' | *[!0-9]* | 0*) echo "llama_peer: $1 '$2' is not a positive integer" >&2; exit 2 ;;
  esac
}
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --build-only) build_only=1; shift; continue ;;
    --rounds | --threads | --models | --sets | --formats | --llama-wait-policy)
      [ $# -ge 2 ] || { echo "llama_peer: $1 needs a value" >&2; exit 2; } ;;
    *) echo "llama_peer: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  case "$1" in
    --rounds) positive --rounds "$2"; rounds="$2" ;;
    --threads) positive --threads "$2"; threads="$2" ;;
    --models) models="$2" ;;
    --sets)
      for s in ${2//,/ }; do
        case "$s" in full | pruned) ;; *) echo "llama_peer: --sets: '$s' is not full or pruned" >&2; exit 2 ;; esac
      done
      sets="$2" ;;
    --formats)
      for f in ${2//,/ }; do
        case "$f" in f32 | bf16 | int8 | q4) ;; *) echo "llama_peer: --formats: '$f' is not f32, bf16, int8 or q4" >&2; exit 2 ;; esac
      done
      formats="$2" ;;
    --llama-wait-policy)
      case "$2" in passive | active) ;; *) echo "llama_peer: --llama-wait-policy '$2' is not passive or active" >&2; exit 2 ;; esac
      wait_policy="$2" ;;
  esac
  shift 2
done

# llama.cpp's source from the npm tarball, cloned once per commit.
package="$("$repo_root/scripts/fetch-npm" "$node_llama_cpp")"
bundle="$package/llama/gitRelease.bundle"
[ -f "$bundle" ] || { echo "llama_peer: $node_llama_cpp has no llama/gitRelease.bundle ($bundle)" >&2; exit 1; }
commit="$(git bundle list-heads "$bundle" | awk '$2 == "HEAD" { print $1 }')"
[ -n "$commit" ] || { echo "llama_peer: $bundle names no HEAD commit" >&2; exit 1; }
llama="$cache/llama.cpp-$commit"
llama_bench="$llama/build/bin/llama-bench"
mkdir -p "$llama"
exec 9>"$llama/.lock"  # two runs build once
flock 9
if [ ! -d "$llama/src/.git" ]; then
  tmp="$(mktemp -d "$llama/.clone.XXXXXX")"
  git clone -q "$bundle" "$tmp/src"
  git -C "$tmp/src" -c advice.detachedHead=false checkout -q "$commit"
  mv "$tmp/src" "$llama/src"
  rmdir "$tmp"
fi
targets=(llama-bench llama-quantize llama-perplexity)
missing=0
for t in "${targets[@]}"; do [ -x "$llama/build/bin/$t" ] || missing=1; done
if [ "$missing" = 1 ]; then
  echo "llama_peer: building ${targets[*]} ($commit) in $llama/build (10-20 minutes on 2 cores)" >&2
  cmake -S "$llama/src" -B "$llama/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$llama/build" --target "${targets[@]}" -j "$(nproc)" >&2  # stdout: the path alone
fi
flock -u 9
[ "$build_only" = 1 ] && { echo "$llama_bench"; exit 0; }

bench_peer="$repo_root/build/bench/bench_peer"
[ -x "$bench_peer" ] || { echo "llama_peer: $bench_peer is missing: run scripts/build first" >&2; exit 1; }
mkdir -p "$models"
"$bench_peer" --write "$models"
exec "$bench_peer" --models "$models" --llama-bench "$llama_bench" --rounds "$rounds" --threads "$threads" \
  --sets "$sets" --formats "$formats" --llama-wait-policy "$wait_policy"
