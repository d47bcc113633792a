#!/usr/bin/env bash
# Browser test of the `emo analyze` report (docs/analysis.md), run by ctest as "browser_report":
#   1. with the emo binary: a tokenizer, dataset and two tiny models (EMO and standard routing, one training
#      step from random weights) from the three-domain fixture, then `emo analyze A --compare B`;
#   2. report_test.js opens report.html in headless Debian chromium through playwright-core (fetched into the
#      cache by scripts/fetch-npm), finds no console error and no network request, clicks a cluster, sees its
#      snippets, and saves a screenshot.
# Usage: tests/browser/run.sh EMO_BINARY WORK_DIR
# Exit 77 (ctest SKIP_RETURN_CODE) when node or chromium is absent, unless CI is set (CI installs both).
set -euo pipefail
emo="$1"
work="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
chromium="${CHROMIUM:-/usr/bin/chromium}"
missing=""
command -v node >/dev/null 2>&1 || missing="node"
[ -x "$chromium" ] || missing="$missing chromium ($chromium)"
if [ -n "$missing" ]; then
  echo "browser test: missing$([ -n "$missing" ] && echo " $missing")" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  exit 77
fi
playwright="$("$repo_root/scripts/fetch-npm" playwright-core@1.65.1)"

rm -rf "$work"
mkdir -p "$work"
"$emo" tokenizer train --corpus "$here/fixture/train.jsonl" --vocab-size 320 -o "$work/tokenizer" >/dev/null 2>&1
"$emo" corpus tokenize --corpus "$here/fixture" --tokenizer "$work/tokenizer/tokenizer.json" --split train \
  --out "$work/train.bin" >/dev/null 2>&1
tiny="model.d=32 model.layers=2 model.heads=2 model.kv_heads=2 model.experts=9 model.top_k=3 model.expert_width=16
      batch.row_length=64 batch.micro_batch_rows=2 batch.global_batch_rows=2 schedule.warmup_steps=1
      run.validate_every=0 data.tokenizer=$work/tokenizer/tokenizer.json"
for mode in emo standard; do
  # shellcheck disable=SC2086
  "$emo" --threads 1 train --out "$work/$mode" --data "$work/train.bin" --steps 1 --no-progress $tiny \
    routing.mode=$mode >"$work/train_$mode.log" 2>&1 || { cat "$work/train_$mode.log" >&2; exit 1; }
done
"$emo" analyze "$work/emo/checkpoints/step-00000001" --compare "$work/standard/checkpoints/step-00000001" --name emo \
  --compare-name standard --data "$work/train.bin" --tokenizer "$work/tokenizer/tokenizer.json" --clusters 8 \
  --max-tokens 3000 -o "$work/analysis" >"$work/analyze.log" 2>&1 || { cat "$work/analyze.log" >&2; exit 1; }
CHROMIUM="$chromium" node "$here/report_test.js" "$playwright" "$work/analysis/report.html" "$work/report.png"
