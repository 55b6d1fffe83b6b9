#!/usr/bin/env bash
# The plateau experiment of BENCHMARKS.md ("Milder augmentations"): a finished Fashion-MNIST
# run (default: the width-256 teacher of scripts/fashion_mnist_teacher.sh, whose k-NN curve is
# flat over its last 3000 steps) trained 12 minutes further, from its final checkpoint, four
# ways: its own recipe (the control), milder crops, geometric augmentations only (no colour
# jitter, grayscale, solarisation or blur), and both. Each continuation's schedule is twice the
# run's length, so it restarts at about half the peak learning rate and a teacher momentum of
# about 0.995 (the run had annealed both). One CPU core each, two side by side; then k=20 on the
# first 10k train / 2k test images at every checkpoint, and the official k-NN protocol on the
# full test set for the last teacher of each.
#
#   bash scripts/fashion_mnist_plateau.sh [RUN_DIR] [OUT_DIR]   # needs python3, dataset-fashion-mnist
#
# Each continuation starts from a copy of the run's checkpoint with the new recipe in its header
# (tiny_variants.continue_run), which `dinov2 train --resume` then accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist-w256}
out=${2:-runs/plateau}
if [ ! -f "$run/checkpoint.safetensors" ]; then
  echo "no finished run in $run: run scripts/fashion_mnist_teacher.sh first" >&2
  exit 1
fi
source scripts/fashion_mnist_lib.sh
names=(control mild_crops geometric_only both)
PYTHONPATH=scripts python3 - "$run/checkpoint.safetensors" "$out" "${names[@]}" <<'PY'
import sys
from tiny_variants import GEOMETRIC_ONLY, MILD, MILD_CROPS, apply, continue_run
src, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
changes = {"control": {}, "mild_crops": MILD_CROPS, "geometric_only": GEOMETRIC_ONLY, "both": MILD}
def edit(name):
    def edit(c):
        c["total_steps"] *= 2
        c["checkpoint_every"] = 210
        apply(c, changes[name])
    return edit
for name in names:
    continue_run(src, f"{out}/{name}", edit(name))
PY
go() {
  local name=$1
  RAYON_NUM_THREADS=1 $bin train --config "$out/$name/config.json" --data fashion-mnist-train --out "$out/$name" \
    --resume --devices cpu:1 --max-minutes 12 --keep-snapshots --quiet > "$out/$name.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do
  go "${names[i]}" & pid=$!; go "${names[i+1]}"; wait "$pid"
done
for name in "${names[@]}"; do
  echo "== $name: curve (first 10k train / 2k test)"; knn_curve "$out/$name"
  echo "== $name: full test"; knn --weights "$out/$name" --json "$out/$name/knn.json"
done
