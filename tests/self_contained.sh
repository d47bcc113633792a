#!/bin/sh
# The repository stands on its own: no tracked file may point outside it (a sibling `shared` folder a clone
# does not have) or to internal notes and issue numbers. What users need of the EMO specification is in
# docs/emo.md. Usage: self_contained.sh SOURCE_DIR
set -eu
root=${1:?usage: self_contained.sh SOURCE_DIR}
cd "$root"
# This file names the patterns, so it is the one file not checked.
pattern="\.\./shared|/work/shared|shared/docs/|/tmp/notes|[Ii]ssues? #?[0-9]+|closing note"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  files=$(git ls-files)
else
  files=$(find . -path ./.git -prune -o -path ./build -prune -o -path ./.cache -prune -o -type f -print)
fi
hits=$(printf '%s\n' "$files" | grep -v -e '^$' -e 'self_contained\.sh$' | tr '\n' '\0' | xargs -0 grep -I -n -E "$pattern" -- || true)
if [ -n "$hits" ]; then
  echo "[self-contained] files point outside the repository or to internal notes/issues:"
  echo "$hits"
  exit 1
fi
echo "[self-contained] $(printf '%s\n' "$files" | wc -l) files checked: none points outside the repository"
