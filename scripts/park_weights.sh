#!/usr/bin/env bash
# Move the published fp16 weights (zoo/*/model.safetensors, ~22 MB each, tracked) out of the working
# tree before a GPU command, so the tree plus the carried .whl/.data stays under the device's 64 MiB;
# put them back after (the device never needs them).
#   bash scripts/park_weights.sh park      # before `run`
#   bash scripts/park_weights.sh restore   # after it (git status is clean again)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${PARKED:-/tmp/againzoo-parked}
case "${1:-}" in
  park)
    for f in zoo/*/model.safetensors; do
      [ -e "$f" ] || continue
      mkdir -p "$store/$(dirname "$f")" && mv "$f" "$store/$f" && echo "parked $f"
    done ;;
  restore)
    [ -d "$store/zoo" ] || { echo "nothing parked in $store"; exit 0; }
    (cd "$store" && find zoo -name model.safetensors) | while read -r f; do
      mkdir -p "$(dirname "$f")" && mv "$store/$f" "$f" && echo "restored $f"
    done ;;
  *) echo "usage: $0 park|restore" >&2; exit 2 ;;
esac
