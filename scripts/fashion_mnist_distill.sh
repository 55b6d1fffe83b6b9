#!/usr/bin/env bash
# The distillation experiment of BENCHMARKS.md: a tiny student distilled for MINUTES from a
# teacher pretrained by this project on Fashion-MNIST, against the same tiny preset trained
# from scratch for the same MINUTES, both on Fashion-MNIST train (labels unused); then the
# official k-NN protocol on test with train as memory, and the curve of the released model at
# every checkpoint (k-NN on the first 10k train / 2k test). The two runs go side by side, one
# CPU core each. Each run's schedule is sized to what it does in MINUTES on one core of the
# 2026-11-30 machine (DISTILL_RATE and SCRATCH_RATE images/s, measured by a 20-step probe of
# each before the runs unless given), so both anneal their learning rate within the same time;
# --max-minutes caps both.
#
#   bash scripts/fashion_mnist_distill.sh [TEACHER_RUN] [MINUTES] [DISTILL_RATE] [SCRATCH_RATE]
#   AUG=milder OUT=runs/pair bash scripts/fashion_mnist_distill.sh ...
#
# TEACHER_CACHE=1 distils with `--teacher-cache` (the teacher's outputs for every training image
# and its mirror image computed once at the start, inside the minutes; the distillation's
# schedule is sized to the minutes left after it, as the probe measures it).
# INIT_HEADS=1 distils with `--init-heads-from-teacher` (the student's heads start as the
# teacher's: a teacher as wide as the student, e.g. the depth-6 one of BENCHMARKS.md).
# INIT_BACKBONE=1 distils with `--init-backbone-from-teacher` (the student's backbone starts as
# the teacher's, its blocks taken evenly from a deeper teacher of the student's width, as
# DistilBERT does; e.g. 4 of the depth-6 teacher's 6 blocks).
# SEED (default 0) seeds both students (their initialisation, crops and masks).
# AUG (official, mild or milder; scripts/tiny_variants.py) swaps both students' augmentations:
# the same recipe for both, the patch-7 tiny preset's own by default. AUG=preset runs both
# students with the current tiny preset as it is (patch 14; the pair of 2026-12-02). OUT (default runs) holds the two
# run folders, distill-tiny and scratch-tiny. Each process runs one thread for everything,
# its matrix products included (MATMUL_NUM_THREADS=1: two side by side otherwise spin waiting
# for each other's cores; the pairs in BENCHMARKS.md before 2026-12-01 ran without it).
# TEACHER_RUN defaults to runs/fashion-mnist-w256 (written by scripts/fashion_mnist_teacher.sh;
# runs/fashion-mnist, from scripts/fashion_mnist_knn.sh, is a teacher as wide as the student).
# Needs: apt-get install dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-runs/fashion-mnist-w256}
minutes=${2:-15}
if [ ! -f "$teacher/checkpoint.safetensors" ]; then
  echo "no teacher run in $teacher: run scripts/fashion_mnist_teacher.sh first" >&2
  exit 1
fi
aug=${AUG:-official}
out=${OUT:-runs}
source scripts/fashion_mnist_lib.sh
mkdir -p "$out"
# both recipes: the patch-7 tiny preset the pairs before 2026-12-02 were run with
# (tiny_variants.PATCH7) with AUG's augmentations, or the current preset (AUG=preset); the distillation's as `distill --student-preset` makes it from a preset
# (no teacher-temperature warm-up: the teacher is trained), its heads' prototypes and teacher
# filled in by `distill` from the teacher run
$bin train --preset tiny --print-config > "$out/scratch.json"
PYTHONPATH=scripts python3 - "$out" "$aug" "${SEED:-0}" <<'PY'
import json, sys
from tiny_variants import AUGMENTATIONS, PATCH7, rewrite
out, aug, seed = sys.argv[1:]
rewrite(f"{out}/scratch.json", {"seed": int(seed), **({} if aug == "preset" else {**PATCH7, **AUGMENTATIONS[aug]})})
c = json.load(open(f"{out}/scratch.json"))
json.dump(c, open(f"{out}/distill.json", "w"), indent=1)
rewrite(f"{out}/distill.json", {"drop_path_rate": 0.0, "warmup_teacher_temp": c["teacher_temp"]})
PY
# one core each, side by side (the CPU default is a device per core)
one_thread=(env RAYON_NUM_THREADS=1 MATMUL_NUM_THREADS=1)
one_core=(--devices cpu:1 --data fashion-mnist-train --overwrite --quiet)
cache=()
[ "${TEACHER_CACHE:-0}" = 1 ] && cache=(--teacher-cache)
heads=()
[ "${INIT_HEADS:-0}" = 1 ] && heads=(--init-heads-from-teacher)
[ "${INIT_BACKBONE:-0}" = 1 ] && heads+=(--init-backbone-from-teacher)
distill() { "${one_thread[@]}" $bin distill --teacher "$teacher" --config "$out/distill.json" ${cache[@]+"${cache[@]}"} ${heads[@]+"${heads[@]}"} "$@"; }
scratch() { "${one_thread[@]}" $bin train --config "$out/scratch.json" "$@"; }
# images/s of 20 steps (after the teacher cache, if any), both probes at once as the runs will
# be; the seconds the cache took
rate() { "$@" --steps 20 "${one_core[@]}" 2>&1 | sed -n 's/.* steps, \([0-9.]*\) images\/s.*/\1/p'; }
cache_seconds=0
if [ $# -ge 4 ]; then distill_rate=$3; scratch_rate=$4; else
  probe=$(mktemp -d)
  distill --out "$probe/d" --steps 20 "${one_core[@]}" > "$probe/d.log" 2>&1 &
  pid=$!
  # the scratch probe beside the distillation's steps, not beside its cache
  if [ ${#cache[@]} -gt 0 ]; then
    while kill -0 "$pid" 2>/dev/null && ! grep -q '^cached the teacher' "$probe/d.log"; do sleep 1; done
  fi
  rate scratch --out "$probe/s" > "$probe/s.rate"
  wait "$pid" || { cat "$probe/d.log" >&2; exit 1; }
  distill_rate=$(sed -n 's/.* steps, \([0-9.]*\) images\/s.*/\1/p' "$probe/d.log")
  cache_seconds=0
  if [ ${#cache[@]} -gt 0 ]; then
    cache_seconds=$(sed -n 's/^cached the teacher.* in \([0-9.]*\) s$/\1/p' "$probe/d.log")
  fi
  scratch_rate=$(cat "$probe/s.rate")
  if [ -z "$distill_rate" ] || [ -z "$scratch_rate" ] || [ -z "$cache_seconds" ]; then
    echo "the 20-step probes gave no rate (or no cache time): $(cat "$probe/d.log")" >&2
    exit 1
  fi
  rm -rf "$probe"
fi
steps() { python3 -c "print(int($1 * (60 * $minutes - $2) / 64))"; }
distill_steps=$(steps "$distill_rate" "$cache_seconds"); scratch_steps=$(steps "$scratch_rate" 0)
if [ "$distill_steps" -lt 20 ]; then
  echo "the teacher cache (${cache_seconds} s) leaves no time for distillation in $minutes minutes" >&2
  exit 1
fi
echo "distillation $distill_rate images/s (teacher cache ${cache_seconds} s): $distill_steps steps; from scratch $scratch_rate images/s: $scratch_steps steps"
# each schedule keeps the recipe's shape: its epoch length scales with its steps, so the
# warm-ups (learning rate, teacher temperature) and the last layer's freeze stay the same
# fractions of the run (`--total-steps` alone keeps them as many steps as in the 10500-step
# preset: the patch-14 pairs of 2026-12-02 ran with warm-ups longer than most of their runs)
PYTHONPATH=scripts python3 - "$out/distill.json" "$distill_steps" "$out/scratch.json" "$scratch_steps" <<'PY'
import json, sys
from tiny_variants import rewrite
for path, steps in zip(sys.argv[1::2], map(int, sys.argv[2::2])):
    c = json.load(open(path))
    rewrite(path, {"total_steps": steps, "epoch_length": max(1, round(c["epoch_length"] * steps / c["total_steps"]))})
PY
every() { echo $(( ($1 + 4) / 5 )); }
common=(--max-minutes "$minutes" --keep-snapshots "${one_core[@]}")
distill --out "$out/distill-tiny" --total-steps "$distill_steps" --checkpoint-every "$(every "$distill_steps")" "${common[@]}" &
pid=$!
scratch --out "$out/scratch-tiny" --total-steps "$scratch_steps" --checkpoint-every "$(every "$scratch_steps")" "${common[@]}"
wait "$pid"
for run in "$out/distill-tiny" "$out/scratch-tiny"; do
  echo "== $run (released model: the EMA backbone)"
  knn --weights "$run" --json "$run/knn.json"
  echo "== $run curve (first 10k train / 2k test)"
  knn_curve "$run"
done
