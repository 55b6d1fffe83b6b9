# Shared by the Fashion-MNIST scripts (sourced, from the repository root): the release build,
# the k-NN protocol on Fashion-MNIST (train as memory, test as queries) and the learning curve
# of the teachers kept at every checkpoint of a run.
cargo build --release
bin=target/release/dinov2
knn() { $bin eval knn --train fashion-mnist-train --test fashion-mnist-test "$@"; }
# k=20 top-1 of every RUN/snapshots/teacher_step*.safetensors on the first 10k train / 2k test
# images (a cheaper estimate), printed and written to RUN/knn_curve.txt
knn_curve() {
  local run=$1 f step top1
  for f in $(ls "$run"/snapshots/teacher_step*.safetensors | sort -V); do
    step=${f##*teacher_step}; step=${step%.safetensors}
    top1=$(knn --weights "$f" --size 28 --limit-train 10000 --limit-test 2000 | awk '/k=20 /{print $3}')
    echo "step $step k=20 top-1 $top1"
  done | tee "$run/knn_curve.txt"
}
# OUT/tiny.json (the patch-7 tiny recipe the sweeps started from: tiny_variants.PATCH7), then
# the Python read from stdin, run with OUT as its argument and scripts/ on its path (for
# tiny_variants.write_variants)
tiny_variants() {
  mkdir -p "$1"
  $bin train --preset tiny --print-config > "$1/tiny.json"
  PYTHONPATH=scripts python3 -c 'import sys, tiny_variants as t; t.rewrite(sys.argv[1], t.PATCH7)' "$1/tiny.json"
  PYTHONPATH=scripts python3 - "$1"
}
