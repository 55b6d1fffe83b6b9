#!/usr/bin/env bash
# The distillation experiment of BENCHMARKS.md: a tiny student distilled for MINUTES from a
# teacher pretrained by this project on Fashion-MNIST, against the same tiny preset trained
# from scratch for the same MINUTES, both on Fashion-MNIST train (labels unused); then the
# official k-NN protocol on test with train as memory, and the curve of the released model at
# every checkpoint (k-NN on the first 10k train / 2k test). Each run's schedule is sized to
# what it does in MINUTES on this 2-core machine (distillation 34 images/s: 650 steps of 64;
# training 47 images/s: 910 steps), so both anneal their learning rate within the same time;
# --max-minutes caps both.
#
#   bash scripts/fashion_mnist_distill.sh [TEACHER_RUN] [MINUTES] [DISTILL_STEPS] [SCRATCH_STEPS]
#
# TEACHER_RUN defaults to runs/fashion-mnist (written by scripts/fashion_mnist_knn.sh).
# Needs: apt-get install dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-runs/fashion-mnist}
minutes=${2:-20}
distill_steps=${3:-650}
scratch_steps=${4:-910}
if [ ! -f "$teacher/checkpoint.safetensors" ]; then
  echo "no teacher run in $teacher: run scripts/fashion_mnist_knn.sh first" >&2
  exit 1
fi
cargo build --release
bin=target/release/dinov2
# one device each, as the schedules above were sized (the CPU default is a device per core)
common=(--devices cpu:1 --data fashion-mnist-train --max-minutes "$minutes" --checkpoint-every 130 --keep-snapshots --overwrite --quiet)
$bin distill --teacher "$teacher" --student-preset tiny --out runs/distill-tiny --total-steps "$distill_steps" "${common[@]}"
$bin train --preset tiny --out runs/scratch-tiny --total-steps "$scratch_steps" "${common[@]}"
knn() { $bin eval knn --train fashion-mnist-train --test fashion-mnist-test "$@"; }
for run in runs/distill-tiny runs/scratch-tiny; do
  echo "== $run (released model: the EMA backbone)"
  knn --weights "$run" --json "$run/knn.json"
  echo "== $run curve (first 10k train / 2k test)"
  for f in $(ls "$run"/snapshots/teacher_step*.safetensors | sort -V); do
    step=${f##*teacher_step}; step=${step%.safetensors}
    top1=$(knn --weights "$f" --size 28 --limit-train 10000 --limit-test 2000 | awk '/k=20 /{print $3}')
    echo "step $step k=20 top-1 $top1"
  done | tee "$run/knn_curve.txt"
done
