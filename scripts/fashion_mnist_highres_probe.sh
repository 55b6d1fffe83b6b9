#!/usr/bin/env bash
# The high-resolution probe of BENCHMARKS.md ("Larger crops at the end"): does the recipe's
# high-resolution phase (DINOv2 adapts to 518 px at the end) lift k-NN on 28-px Fashion-MNIST,
# where larger crops are upsampled images seen through smaller patches? A finished run (default:
# the width-256 "milder still" teacher of scripts/fashion_mnist_teacher.sh) continued for 10
# minutes at larger crops, two ways side by side on one CPU core each: global crops of 56 px and
# local crops of 28 (an 8 x 8 grid of 7-px patches, from 4 x 4), and 42 and 21 (6 x 6). Each
# continuation's schedule is twice the run's length with its second half in the `highres`
# phase, so it restarts at about half the peak learning rate; then k=20 on the first 10k train /
# 2k test images for the last teacher at its training size, and for the run itself at 28, 42
# and 56 px (the size of the k-NN images, upsampled, without any adaptation).
#
#   bash scripts/fashion_mnist_highres_probe.sh [RUN_DIR] [OUT_DIR]   # needs python3, dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist-w256-milder}
out=${2:-runs/highres-probe}
if [ ! -f "$run/checkpoint.safetensors" ]; then
  echo "no finished run in $run: run scripts/fashion_mnist_teacher.sh first" >&2
  exit 1
fi
source scripts/fashion_mnist_lib.sh
PYTHONPATH=scripts python3 - "$run/checkpoint.safetensors" "$out" <<'PY'
import sys
from tiny_variants import continue_run
src, out = sys.argv[1:]
for global_size, local_size in ((56, 28), (42, 21)):
    def edit(c):
        done = c["total_steps"]
        c["total_steps"] = 2 * done
        c["highres"] = {"steps": done, "global_size": global_size, "local_size": local_size}
        c["checkpoint_every"] = 50
    continue_run(src, f"{out}/g{global_size}", edit)
PY
go() {
  RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1 $bin train --config "$out/$1/config.json" --data fashion-mnist-train \
    --out "$out/$1" --resume --devices cpu:1 --max-minutes 10 --keep-snapshots --quiet > "$out/$1.log" 2>&1
}
go g56 & pid=$!; go g42; wait "$pid"
subset() { knn --limit-train 10000 --limit-test 2000 "$@" | awk '/k=20 /{print $3}'; }
for size in 28 42 56; do
  echo "the run itself at $size px: k=20 $(subset --weights "$run" --size "$size")"
done
for size in 56 42; do
  last=$(ls "$out/g$size"/snapshots/teacher_step*.safetensors | sort -V | tail -n 1)
  echo "continued at $size px: $(tail -n 1 "$out/g$size.log" | cut -d';' -f1), k=20 at $size px $(subset --weights "$last" --size "$size")"
done | tee "$out/summary.txt"
