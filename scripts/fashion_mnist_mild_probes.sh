#!/usr/bin/env bash
# Same-minutes probes around the best recipe so far (BENCHMARKS.md, "Milder augmentations"):
# the width-256 tiny variant with geometric augmentations only, and one change at a time, each
# trained for 12 minutes on one CPU core, two side by side, each schedule sized to what it does
# in 12 minutes there (epochs of total/20 steps), then the official k-NN protocol (k=20) of the
# last teacher on the full test set with train as memory. The variants from "milder" on
# (BENCHMARKS.md, "Two probes that did not help" and "Fewer local crops") start from the
# "milder still" recipe and run one thread per matrix product in each process.
#
#   bash scripts/fashion_mnist_mild_probes.sh [OUT_DIR] [NAME...]   # needs python3 and dataset-fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/mild-probes}
shift || true
source scripts/fashion_mnist_lib.sh
tiny_variants "$out" <<'PY'
import sys
from tiny_variants import AUGMENTATIONS, MILD, write_variants
w256_mild = {"arch.embed_dim": 256, "arch.num_heads": 4, "arch.ffn_hidden": 1024, **MILD}
P14 = {"arch.patch_size": 14, "arch.pos_grid": 2}
# name: (steps in 12 minutes on one core, changes on top of w256_mild)
variants = {
    "mild": (640, {}),
    "batch_32": (1280, {"batch_size": 32}),
    "milder_crops": (640, {"crops.global_scale": [0.9, 1.0], "crops.local_scale": [0.3, 0.6]}),
    "momentum_996": (640, {"momentum_teacher": 0.996, "final_momentum_teacher": 0.996}),
    # around the milder recipe (both changes above), at one thread per matrix product
    "milder": (660, AUGMENTATIONS["milder"]),
    "milder_lr_x03": (660, {**AUGMENTATIONS["milder"], "base_lr": 0.0012}),
    # fewer local crops (fewer tokens per image, more images in the minutes)
    "milder_locals_0": (1000, AUGMENTATIONS["milder_nolocal"]),
    "milder_locals_2": (820, {**AUGMENTATIONS["milder"], "crops.n_local": 2}),
    # the control and the best of these again with another seed
    "milder_seed1": (660, {**AUGMENTATIONS["milder"], "seed": 1}),
    "milder_locals_0_seed1": (1000, {**AUGMENTATIONS["milder_nolocal"], "seed": 1}),
    # less invariance still, without local crops: no flips; no flips and whole-image global crops
    "milder_locals_0_noflip": (1000, {**AUGMENTATIONS["milder_nolocal"], "crops.flip_prob": 0.0}),
    "still": (1000, {**AUGMENTATIONS["milder_nolocal"], "crops.flip_prob": 0.0, "crops.global_scale": [1.0, 1.0]}),
    # the losses, without local crops: no KoLeo term; no iBOT term
    "nolocal_koleo_0": (1000, {**AUGMENTATIONS["milder_nolocal"], "koleo_loss_weight": 0.0}),
    "nolocal_ibot_0": (1000, {**AUGMENTATIONS["milder_nolocal"], "ibot_loss_weight": 0.0}),
    # more KoLeo (its removal cost 6.8 points)
    "nolocal_koleo_0.3": (1000, {**AUGMENTATIONS["milder_nolocal"], "koleo_loss_weight": 0.3}),
    "nolocal_koleo_1": (1000, {**AUGMENTATIONS["milder_nolocal"], "koleo_loss_weight": 1.0}),
    # more for the CLS token to gather with, without local crops: 4 register tokens; 6 blocks
    "nolocal_reg4": (850, {**AUGMENTATIONS["milder_nolocal"], "arch.num_register_tokens": 4}),
    "nolocal_depth6": (700, {**AUGMENTATIONS["milder_nolocal"], "arch.depth": 6}),
    # on a machine 2.7 times slower (no AVX-512; 32 images/s on one core for the control): the
    # control, a DINO/iBOT head of one linear layer (no MLP: the invariances in the backbone),
    # and patch 14 (a 2 x 2 grid at 28 px, 5 tokens instead of 17) at width 256 and 384
    "nolocal_slow": (360, AUGMENTATIONS["milder_nolocal"]),
    "nolocal_head1": (380, {**AUGMENTATIONS["milder_nolocal"], "dino_head.n_layers": 1}),
    "nolocal_p14": (1150, {**AUGMENTATIONS["milder_nolocal"], **P14}),
    "nolocal_p14_w384": (640, {**AUGMENTATIONS["milder_nolocal"], **P14, "arch.embed_dim": 384,
                               "arch.num_heads": 6, "arch.ffn_hidden": 1536}),
}
write_variants(sys.argv[1], {
    name: {"total_steps": steps, "epoch_length": steps // 20, "checkpoint_every": steps // 4,
           **w256_mild, **changes}
    for name, (steps, changes) in variants.items()
})
PY
run() {
  local name=$1
  RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1 $bin train --config "$out/$name.json" --data fashion-mnist-train --out "$out/$name" \
    --devices cpu:1 --max-minutes 12 --overwrite --quiet > "$out/$name.log" 2>&1
  RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1 $bin eval knn --train fashion-mnist-train --test fashion-mnist-test \
    --weights "$out/$name" --json "$out/$name.knn.json" > /dev/null
  echo "$name $(tail -n 1 "$out/$name.log" | cut -d';' -f1) k=20 $(python3 -c \
    "import json,sys; print(json.load(open(sys.argv[1]))['top1']['20'])" "$out/$name.knn.json")" > "$out/$name.knn"
}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(mild batch_32 milder_crops momentum_996)
for ((i = 0; i < ${#names[@]}; i += 2)); do
  if ((i + 1 < ${#names[@]})); then
    run "${names[i]}" & pid=$!; run "${names[i+1]}"; wait "$pid"
  else
    run "${names[i]}"
  fi
done
cat "$out"/*.knn
