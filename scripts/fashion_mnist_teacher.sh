#!/usr/bin/env bash
# The larger teacher of BENCHMARKS.md's distillation experiment: the tiny recipe with a backbone
# twice as wide (256 wide, 4 heads of 64, FFN 1024: 3.2M parameters against 0.8M; depth, patch,
# crops and heads as the patch-7 tiny preset before 2026-12-01, tiny_variants.PATCH7), pretrained on Fashion-MNIST train (labels unused) for at
# most MINUTES (default 60) on the 2 CPU cores, then the official k-NN protocol on test with train as
# memory and the curve of the teacher kept at every checkpoint (first 10k train / 2k test).
# STEPS (default 5000, sized to the hour at the ~92 images/s of two 2026-11-30 cores; 5900 at
# the ~111 images/s since `train` keeps each device's matrix products on its own thread) is the
# schedule's length. AUG picks the augmentations, as scripts/tiny_variants.py defines them:
# official (the tiny preset's), mild (geometric only: global crops 0.8-1, local 0.2-0.5, flips)
# milder (crops 0.9-1 and 0.3-0.6, constant EMA momentum 0.996; BENCHMARKS.md, "Milder
# augmentations"), milder_nolocal (milder without local crops; "Fewer local crops") or
# nolocal_noflip_koleo03 (milder_nolocal without flips, KoLeo weight 0.3; "Less invariance").
# AUG=preset keeps the current tiny preset whole (patch 14, its own augmentations; the
# teacher of the patch-14 pairs in BENCHMARKS.md) and changes only the width (and DEPTH).
#
# WIDTH (default 256) sets the backbone's width: WIDTH/64 heads of 64, FFN 4 x WIDTH. The
# environment's DEPTH (default: the recipe's, 4) sets its number of blocks, and MINUTES
# (default 60) the cap on the training's wall time. The depth-6 teacher of the 2026-12-02 pair:
#   DEPTH=6 MINUTES=95 bash scripts/fashion_mnist_teacher.sh runs/d6 preset 10000 256
#
#   bash scripts/fashion_mnist_teacher.sh [RUN_DIR] [AUG] [STEPS] [WIDTH]   # needs dataset-fashion-mnist
#   bash scripts/fashion_mnist_distill.sh RUN_DIR 15    # then: distil the tiny preset from it
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/fashion-mnist-w256}
aug=${2:-official}
steps=${3:-5000}
width=${4:-256}
depth=${DEPTH:-}
minutes=${MINUTES:-60}
case $aug in preset | official | mild | milder | milder_nolocal | nolocal_noflip_koleo03) ;;
  *) echo "AUG must be preset, official, mild, milder, milder_nolocal or nolocal_noflip_koleo03, not $aug" >&2; exit 1 ;; esac
source scripts/fashion_mnist_lib.sh
mkdir -p "$run"
config="$run/config-w$width${depth:+-d$depth}.json"
$bin train --preset tiny --print-config > "$config.tmp"
PYTHONPATH=scripts python3 - "$config.tmp" "$aug" "$width" "$depth" <<'PY'
import sys
from tiny_variants import AUGMENTATIONS, PATCH7, rewrite
path, aug, width, depth = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
base = {} if aug == "preset" else {**PATCH7, **AUGMENTATIONS[aug]}
arch = {"arch.embed_dim": width, "arch.num_heads": width // 64, "arch.ffn_hidden": 4 * width}
if depth:
    arch["arch.depth"] = int(depth)
rewrite(path, {**base, **arch})
PY
mv "$config.tmp" "$config"
$bin train --config "$config" --data fashion-mnist-train --out "$run" --max-minutes "$minutes" --keep-snapshots \
  --total-steps "$steps" --checkpoint-every $((steps / 10)) --overwrite
echo "== wide teacher"; knn --weights "$run" --json "$run/knn.json"
echo "== curve (first 10k train / 2k test)"
knn_curve "$run"
