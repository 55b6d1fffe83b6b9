#!/usr/bin/env bash
# Issue 3's measurements on a real GPU in one run of under 10 minutes (each step has its own time
# limit, so a hung step costs only its share): the WGSL kernels against their composed
# references and burn's built-in attention, the kernel tests, training throughput against the CPU backend,
# self-deduplication of a million embeddings on the GPU, ViT-g/14's memory against the plan,
# and a short Fashion-MNIST run on wgpu with its k-NN top-1. One log and four JSON files land
# in OUT_DIR (gpu_checks.log, kernels.json, memory.json, curate.json, fm_knn.json).
#
#     bash scripts/gpu_checks.sh OUT_DIR
#
# With the device tool (one call, .gpu packed first): run(command="bash scripts/gpu_checks.sh
# $OUT", carry=[".gpu"], timeout_s=600), then give_back. BENCHMARKS.md says where each number
# goes.
#
# On a machine without a Rust toolchain run `bash scripts/gpu_pack.sh` first where there is one
# and carry .gpu/ along: the binary, the Vulkan loader and the data are taken from there.
# Elsewhere the release build in target/ is used (DINOV2=PATH picks another binary).
# QUICK=1: small shapes on the CPU backend, a check of the script itself on any machine (not a
# measurement).
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
bin=${DINOV2:-target/release/dinov2}
if [ -f .gpu/dinov2.xz ] && [ -z "${DINOV2:-}" ]; then
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/dinov2.xz'), open('/tmp/dinov2', 'wb'))"
    chmod +x /tmp/dinov2
    bin=/tmp/dinov2
fi
if [ -f .gpu/suite.xz ]; then
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/suite.xz'), open('/tmp/suite', 'wb'))"
    chmod +x /tmp/suite
fi
# the Vulkan loader and the GL dispatch libraries NVIDIA's Vulkan driver (libGLX_nvidia) needs
if ls .gpu/*.deb >/dev/null 2>&1; then
    for f in .gpu/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ] && export VK_DRIVER_FILES=$icd
if [ -d .gpu/fashion-mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
fi
export DINOV2_PROGRESS_EVERY=${DINOV2_PROGRESS_EVERY:-30}

# step NAME SECONDS COMMAND...: runs it under a time limit; its whole output is appended to
# OUT_DIR/gpu_checks.log, its end printed (few files: the device tool brings back at most 8)
logs=$(mktemp -d)
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most $limit s): $*" | tee -a "$out/gpu_checks.log"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    cat "$logs/$name.log" >>"$out/gpu_checks.log"
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$out/gpu_checks.log"
    tail -n 30 "$logs/$name.log" | cut -c1-300
}

if [ "${QUICK:-0}" = 1 ]; then
    b=ndarray kernels=(--quick --runs 1) memory=(--presets tiny --global-size 28 --local-size 14)
    n=5000 minutes=0.3 limit=(--limit-train 5000 --limit-test 1000)
else
    b=wgpu kernels=(--runs 5) memory=(--presets vitg14) n=1000000 minutes=1 limit=()
fi
step info 20 "$bin" info
if ! grep -q "DiscreteGpu\|IntegratedGpu" "$logs/info.log"; then
    echo "warning: dinov2 info lists no hardware GPU; the measurements below are not a GPU's"
    VK_LOADER_DEBUG=error,warn,driver "$bin" info 2>&1 | grep -v "^$" | tail -n 25
fi
step kernels 200 "$bin" bench kernels --backend $b "${kernels[@]}" --json "$out/kernels.json"
# the kernel tests (both attention shapes, gradients, f16 where the adapter has shader-f16)
[ -x /tmp/suite ] && step tests 120 /tmp/suite kernels:: --test-threads 8 --nocapture
step memory 90 "$bin" bench memory "${memory[@]}" --backend $b --json "$out/memory.json"
step curate 90 "$bin" bench curate --n $n --backend $b --json "$out/curate.json"
step train 60 "$bin" bench train --backends ndarray,$b
if [ -d /usr/share/datasets/fashion-mnist ]; then
    step fm_train 100 "$bin" train --backend $b --data fashion-mnist-train --fit-minutes $minutes --out /tmp/fm --overwrite
    step fm_knn 40 "$bin" eval knn --backend $b --weights /tmp/fm --train fashion-mnist-train --test fashion-mnist-test "${limit[@]}" --json "$out/fm_knn.json" --quiet
fi
echo "== done in $SECONDS s"
