#!/usr/bin/env bash
# The Fashion-MNIST experiment of BENCHMARKS.md: pretrain the tiny preset on Fashion-MNIST
# train (60k images, labels unused) on a schedule fitted to 60 minutes, then the official k-NN
# protocol on test (10k) with train as memory, for the trained teacher, the same network at
# initialisation, and raw pixels; a learning curve from the teacher kept at every checkpoint
# (k-NN on the first 10k train / 2k test images); and the linear probe of the trained teacher,
# with the official sweep and with the 2x2 grid of patch tokens added (--grid).
#
#   bash scripts/fashion_mnist_knn.sh [RUN_DIR]        # needs: apt-get install dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist}
source scripts/fashion_mnist_lib.sh
# the preset's schedule, its length fitted to 60 minutes on this machine (a timed probe of a few
# steps, undone; the warm-ups and the last layer's freeze keep their share of it): BENCHMARKS.md's
# run of 2026-12-03 did 18105 steps, with a device per core on 2 AVX-512 cores
$bin train --preset tiny --data fashion-mnist-train --out "$run" --fit-minutes 60 --keep-snapshots --overwrite
echo "== trained teacher"; knn --weights "$run" --json "$run/knn_trained.json"
echo "== same network at initialisation"; knn --weights "$run/init_backbone.safetensors" --size 28 --json "$run/knn_init.json"
echo "== raw pixels"; knn --raw-pixels --size 28 --json "$run/knn_pixels.json"
echo "== curve (first 10k train / 2k test)"
knn_curve "$run"
echo "== trained teacher, linear probe"
$bin eval linear --weights "$run" --train fashion-mnist-train --test fashion-mnist-test --json "$run/linear_trained.json"
echo "== trained teacher, linear probe with the 2x2 grid of patch tokens"
$bin eval linear --weights "$run" --train fashion-mnist-train --test fashion-mnist-test --grid --json "$run/linear_grid.json"
