#!/usr/bin/env bash
# bench/llama_peer.sh's argument parsing: --help prints the usage, and every bad argument is refused with
# exit 2 and a message naming it, before anything is fetched or built.
set -uo pipefail
script="$1/bench/llama_peer.sh"
failures=0
expect() {  # EXIT_CODE TEXT ARGS...: the script exits EXIT_CODE and prints TEXT
  local code="$1" text="$2"
  shift 2
  local out rc
  out="$("$script" "$@" 2>&1)"
  rc=$?
  if [ "$rc" != "$code" ] || ! grep -qF -- "$text" <<<"$out"; then
    echo "FAIL: llama_peer.sh $* exited $rc (expected $code) printing: $out"
    failures=$((failures + 1))
  fi
}
expect 0 "usage: bench/llama_peer.sh" --help
expect 2 "unknown argument '--bogus'" --bogus
expect 2 "--rounds '0' is not a positive integer" --rounds 0
expect 2 "--threads 'two' is not a positive integer" --threads two
expect 2 "--rounds needs a value" --rounds
expect 2 "--sets: 'half' is not full or pruned" --sets full,half
expect 2 "--formats: 'q3' is not f32, bf16, int8 or q4" --formats f32,q3
expect 2 "--llama-wait-policy 'spin' is not passive or active" --llama-wait-policy spin
[ "$failures" = 0 ] && echo "llama_peer.sh arguments: all refused as expected"
exit $((failures > 0))
