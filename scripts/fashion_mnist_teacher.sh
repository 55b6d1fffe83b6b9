#!/usr/bin/env bash
# The larger teacher of BENCHMARKS.md's distillation experiment: the tiny recipe with a backbone
# twice as wide (256 wide, 4 heads of 64, FFN 1024: 3.2M parameters against 0.8M; depth, patch,
# crops and heads as the tiny preset), pretrained on Fashion-MNIST train (labels unused) for at
# most 60 minutes on the 2 CPU cores, then the official k-NN protocol on test with train as
# memory and the curve of the teacher kept at every checkpoint (first 10k train / 2k test).
# The schedule (5000 steps of 64) is sized to the hour at the ~92 images/s this run does on
# two 2026-11-30 cores. AUG=mild swaps the tiny preset's augmentations for geometric ones only:
# global crops of scale 0.8-1, local crops of 0.2-0.5, flips, no colour jitter, grayscale,
# solarisation or blur (BENCHMARKS.md, "Milder augmentations").
#
#   bash scripts/fashion_mnist_teacher.sh [RUN_DIR] [AUG]   # AUG: official (default) or mild
#                                                           # needs: apt-get install dataset-fashion-mnist
#   bash scripts/fashion_mnist_distill.sh RUN_DIR 15    # then: distil the tiny preset from it
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist-w256}
aug=${2:-official}
case $aug in official | mild) ;; *) echo "AUG must be official or mild, not $aug" >&2; exit 1 ;; esac
source scripts/fashion_mnist_lib.sh
mkdir -p "$run"
config="$run/config-w256.json"
$bin train --preset tiny --print-config > "$config.tmp"
python3 - "$config.tmp" "$aug" <<'PY'
import json, sys
path, aug = sys.argv[1:]
c = json.load(open(path))
c["arch"].update(embed_dim=256, num_heads=4, ffn_hidden=1024)
if aug == "mild":
    c["crops"].update(global_scale=[0.8, 1.0], local_scale=[0.2, 0.5], jitter_prob=0.0,
                      grayscale_prob=0.0, solarize_prob=0.0, blur_kernel=1)
json.dump(c, open(path, "w"), indent=1)
PY
mv "$config.tmp" "$config"
$bin train --config "$config" --data fashion-mnist-train --out "$run" --max-minutes 60 --keep-snapshots \
  --total-steps 5000 --checkpoint-every 500 --overwrite
echo "== wide teacher"; knn --weights "$run" --json "$run/knn.json"
echo "== curve (first 10k train / 2k test)"
knn_curve "$run"
