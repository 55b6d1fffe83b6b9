#!/usr/bin/env bash
# The short-schedule sweep of BENCHMARKS.md: the tiny recipe compressed to 300 steps (epochs of
# 30 steps, so every warm-up completes) and one change at a time, each run on one thread, two
# at a time (on 2 cores two 1-thread runs do ~1.7x the images of one 2-thread run), then k-NN
# (k=20) of the teacher at steps 100/200/300 on the first 10k train / 2k test images.
#
#   bash scripts/fashion_mnist_sweep.sh [OUT_DIR]      # needs python3 and dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/sweep}
source scripts/fashion_mnist_lib.sh
tiny_variants "$out" <<'PY'
import sys
from tiny_variants import write_variants
schedule = {"total_steps": 300, "epoch_length": 30, "checkpoint_every": 100}
variants = {
    "base": {},
    "lr_x3": {"base_lr": 0.012},
    "softmax_centering": {"centering": "centering"},
    "prototypes_256": {"dino_head.n_prototypes": 256, "ibot_head.n_prototypes": 256},
    "teacher_temp_0.04": {"teacher_temp": 0.04},
    "light_aug": {"crops.solarize_prob": 0.0, "crops.jitter_prob": 0.3},
    "mild_crops_koleo_0.3": {"crops.global_scale": [0.7, 1.0], "crops.local_scale": [0.25, 0.6],
                             "koleo_loss_weight": 0.3},
    "no_ibot": {"ibot_loss_weight": 0.0},
    "patch_embed_lr_1_no_layer_decay": {"patch_embed_lr_mult": 1.0, "layerwise_decay": 1.0},
    "no_blur": {"crops.blur_kernel": 1},
    "patch_4_width_64": {"arch.patch_size": 4, "arch.embed_dim": 64, "arch.num_heads": 1,
                         "arch.ffn_hidden": 256, "arch.pos_grid": 7, "crops.local_size": 12},
    # the same images as the others in twice the steps
    "batch_32": {"batch_size": 32, "total_steps": 600, "epoch_length": 60},
}
write_variants(sys.argv[1], {name: {**schedule, **changes} for name, changes in variants.items()})
print(" ".join(variants))
PY
run() {
  local name=$1
  RAYON_NUM_THREADS=1 $bin train --config "$out/$name.json" --data fashion-mnist-train --out "$out/$name" \
    --devices cpu:1 --overwrite --keep-snapshots --quiet
  for f in $(ls "$out/$name"/snapshots/teacher_step*.safetensors | sort -V); do
    step=${f##*teacher_step}; step=${step%.safetensors}
    top1=$(knn --weights "$f" --size 28 --limit-train 10000 --limit-test 2000 | awk '/k=20 /{print $3}')
    echo "$name step $step k=20 $top1"
  done > "$out/$name.knn"
}
names=(base lr_x3 softmax_centering prototypes_256 teacher_temp_0.04 light_aug mild_crops_koleo_0.3 no_ibot
  patch_embed_lr_1_no_layer_decay no_blur patch_4_width_64 batch_32)
for ((i = 0; i < ${#names[@]}; i += 2)); do
  run "${names[i]}" & run "${names[i+1]}" & wait
done
cat "$out"/*.knn
