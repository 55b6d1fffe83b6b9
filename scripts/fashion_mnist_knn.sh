#!/usr/bin/env bash
# The Fashion-MNIST experiment of BENCHMARKS.md: pretrain the tiny preset on Fashion-MNIST
# train (60k images, labels unused) for at most 60 minutes, then the official k-NN protocol on
# test (10k) with train as memory, for the trained teacher, the same network at
# initialisation, and raw pixels; the linear probe of the trained teacher; plus a learning curve from the teacher kept at every
# checkpoint (k-NN on the first 10k train / 2k test images).
#
#   bash scripts/fashion_mnist_knn.sh [RUN_DIR]        # needs: apt-get install dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist}
source scripts/fashion_mnist_lib.sh
# a device per core (the CPU backend's default): 70 images/s on the 2 cores of the machine
# BENCHMARKS.md's hour-long tiny run used, so the schedule is sized to the hour there (4000
# steps of 64; a faster machine finishes it early: 200 images/s on 2 AVX-512 EPYC cores),
# checkpoints every 400 steps for the curve
$bin train --preset tiny --data fashion-mnist-train --out "$run" --max-minutes 60 --keep-snapshots \
  --total-steps 4000 --checkpoint-every 400
echo "== trained teacher"; knn --weights "$run" --json "$run/knn_trained.json"
echo "== trained teacher, linear probe"
$bin eval linear --weights "$run" --train fashion-mnist-train --test fashion-mnist-test --json "$run/linear_trained.json"
echo "== same network at initialisation"; knn --weights "$run/init_backbone.safetensors" --size 28 --json "$run/knn_init.json"
echo "== raw pixels"; knn --raw-pixels --size 28 --json "$run/knn_pixels.json"
echo "== curve (first 10k train / 2k test)"
knn_curve "$run"
