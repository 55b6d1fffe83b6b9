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
# `dinov2 train --resume` refuses a config other than the run's own, so this script writes each
# continuation's checkpoint with its config replaced in the safetensors header (the tensors,
# the optimiser state and the step stay the run's): --resume then accepts the new recipe.
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
import json, os, struct, sys
from tiny_variants import GEOMETRIC_ONLY, MILD, MILD_CROPS, apply
src, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
changes = {"control": {}, "mild_crops": MILD_CROPS, "geometric_only": GEOMETRIC_ONLY, "both": MILD}
with open(src, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data_start = 8 + n
meta = header["__metadata__"]
for name in names:
    c = json.loads(meta["config"])
    c["total_steps"] *= 2
    c["checkpoint_every"] = 210
    apply(c, changes[name])
    header["__metadata__"] = dict(meta, config=json.dumps(c, separators=(",", ":")))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(f"{out}/{name}", exist_ok=True)
    json.dump(c, open(f"{out}/{name}/config.json", "w"), indent=1)
    tmp = f"{out}/{name}/checkpoint.safetensors.tmp"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(struct.pack("<Q", len(text)) + text)
        f.seek(data_start)
        while chunk := f.read(1 << 24):
            g.write(chunk)
    os.replace(tmp, f"{out}/{name}/checkpoint.safetensors")
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
