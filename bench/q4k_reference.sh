#!/usr/bin/env bash
# emo's q4_k export beside llama.cpp's own Q4_K_M of the same model (docs/export.md, "q4_k"):
#   1. emo export gguf MODEL as f32 and as q4_k;
#   2. llama-quantize (built into the download cache by bench/llama_peer.sh --build-only) turns the f32 file
#      into Q4_K_M, the reference;
#   3. the tensor types of the two 4-bit files side by side (bench_peer --gguf-types): the mix must agree;
#   4. held-out perplexity of the three files by llama.cpp's llama-perplexity over TEXT (the same tokens for
#      all three: llama.cpp tokenises TEXT with the tokenizer the files embed), --ctx tokens a chunk.
# Prints each perplexity, the 4-bit ones beside f32 and beside each other, and one JSON line.
set -euo pipefail

usage() {
  echo "usage: bench/q4k_reference.sh MODEL TEXT [--out DIR] [--ctx N] [--threads N]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
model="$1" text="$2"
shift 2
out="${TMPDIR:-/tmp}/emo_q4k_reference" ctx=256 threads=2
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --out) out="$2" ;;
    --ctx) ctx="$2" ;;
    --threads) threads="$2" ;;
    *) usage ;;
  esac
  shift 2
done
[ -f "$model/config.json" ] || { echo "q4k_reference: $model has no config.json" >&2; exit 1; }
[ -f "$text" ] || { echo "q4k_reference: no text file $text" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
emo="$repo_root/build/bin/emo"
bench_peer="$repo_root/build/bench/bench_peer"
[ -x "$emo" ] && [ -x "$bench_peer" ] || { echo "q4k_reference: run scripts/build first" >&2; exit 1; }
llama_bin="$(dirname "$("$repo_root/bench/llama_peer.sh" --build-only | tail -n 1)")"
mkdir -p "$out"

"$emo" export gguf "$model" -o "$out/emo-f32.gguf" --dtype f32 --force >/dev/null
"$emo" export gguf "$model" -o "$out/emo-q4_k.gguf" --dtype q4_k --force >/dev/null
"$llama_bin/llama-quantize" "$out/emo-f32.gguf" "$out/llama-q4_k_m.gguf" Q4_K_M >"$out/llama-quantize.log" 2>&1
types_rc=0
"$bench_peer" --gguf-types "$out/emo-q4_k.gguf" "$out/llama-q4_k_m.gguf" >"$out/types.txt" || types_rc=$?
cat "$out/types.txt"

perplexity() {  # FILE -> "PPL"
  "$llama_bin/llama-perplexity" -m "$1" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" >"$1.perplexity.log" 2>&1
  sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$1.perplexity.log"
}
f32="$(perplexity "$out/emo-f32.gguf")"
emo_q4k="$(perplexity "$out/emo-q4_k.gguf")"
llama_q4km="$(perplexity "$out/llama-q4_k_m.gguf")"
chunks="$(sed -n 's/.*calculating perplexity over \([0-9]*\) chunks.*/\1/p' "$out/emo-f32.gguf.perplexity.log")"
bytes() { stat -c %s "$1"; }
awk -v f="$f32" -v e="$emo_q4k" -v l="$llama_q4km" -v c="$chunks" -v n="$ctx" \
  -v fb="$(bytes "$out/emo-f32.gguf")" -v eb="$(bytes "$out/emo-q4_k.gguf")" \
  -v lb="$(bytes "$out/llama-q4_k_m.gguf")" -v same="$types_rc" 'BEGIN {
  printf "llama-perplexity over %d chunks of %d tokens:\n", c, n
  printf "  f32 export            %10.4f  %9d bytes\n", f, fb
  printf "  emo q4_k              %10.4f  %9d bytes  %+.3f%% vs f32\n", e, eb, 100 * (e / f - 1)
  printf "  llama-quantize Q4_K_M %10.4f  %9d bytes  %+.3f%% vs f32\n", l, lb, 100 * (l / f - 1)
  printf "  emo q4_k / llama.cpp Q4_K_M: %.4f\n", e / l
  printf "{\"bench\":\"q4k_reference\",\"chunks\":%d,\"ctx\":%d,\"ppl_f32\":%s,\"ppl_emo_q4_k\":%s,\"ppl_llama_q4_k_m\":%s,\"ratio_emo_over_llama\":%.6f,\"bytes_emo_q4_k\":%d,\"bytes_llama_q4_k_m\":%d,\"types_agree\":%s}\n", c, n, f, e, l, e / l, eb, lb, same == 0 ? "true" : "false"
}'
