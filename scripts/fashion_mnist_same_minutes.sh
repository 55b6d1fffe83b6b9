#!/usr/bin/env bash
# The same-minutes sweep of BENCHMARKS.md: the tiny recipe and seven variants (wider, deeper,
# milder crops, smaller batches, smaller patches), each trained for 12 minutes on one CPU core,
# two side by side, each schedule sized to what its model does in 12 minutes on one core of the
# 2026-11-30 machine (the rates in the table below; epochs of total/20 steps as the tiny
# preset's 2000/100), then k-NN (k=20) of the last teacher on the first 10k train / 2k test
# images.
#
#   bash scripts/fashion_mnist_same_minutes.sh [OUT_DIR]   # needs python3 and dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/same-minutes}
source scripts/fashion_mnist_lib.sh
tiny_variants "$out" <<'PY'
import sys
from tiny_variants import write_variants
# name: (steps in 12 minutes on one core, changes)
variants = {
    "base": (1200, {}),
    "width_192": (720, {"arch.embed_dim": 192, "arch.num_heads": 3, "arch.ffn_hidden": 768}),
    "width_256": (630, {"arch.embed_dim": 256, "arch.num_heads": 4, "arch.ffn_hidden": 1024}),
    "depth_6": (740, {"arch.depth": 6}),
    "mild_crops": (1200, {"crops.global_scale": [0.6, 1.0], "crops.local_scale": [0.25, 0.5]}),
    "batch_32": (2400, {"batch_size": 32}),
    "patch_4": (335, {"arch.patch_size": 4, "arch.pos_grid": 7, "crops.local_size": 12}),
    "width_384": (357, {"arch.embed_dim": 384, "arch.num_heads": 6, "arch.ffn_hidden": 1536}),
}
write_variants(sys.argv[1], {
    name: {"total_steps": steps, "epoch_length": steps // 20, "checkpoint_every": steps // 4, **changes}
    for name, (steps, changes) in variants.items()
})
PY
run() {
  local name=$1
  RAYON_NUM_THREADS=1 $bin train --config "$out/$name.json" --data fashion-mnist-train --out "$out/$name" \
    --devices cpu:1 --max-minutes 12 --overwrite --quiet > "$out/$name.log" 2>&1
  top1=$(knn --weights "$out/$name" --size 28 --limit-train 10000 --limit-test 2000 | awk '/k=20 /{print $3}')
  echo "$name $(tail -n 1 "$out/$name.log" | cut -d';' -f1) k=20 $top1" > "$out/$name.knn"
}
names=(base width_192 width_256 depth_6 mild_crops batch_32 patch_4 width_384)
for ((i = 0; i < ${#names[@]}; i += 2)); do
  run "${names[i]}" & pid=$!; run "${names[i+1]}"; wait "$pid"
done
cat "$out"/*.knn
