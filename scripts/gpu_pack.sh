#!/usr/bin/env bash
# Pack what scripts/gpu_checks.sh needs on a GPU machine that has no Rust toolchain and no
# network (the device tool's lent machine): the release binary and the test binary, stripped and xz-compressed,
# the Vulkan loader's Debian packages (and Fashion-MNIST, below), all under .gpu/ (ignored by
# git; about 25 MB, 56 with FASHION_MNIST=1). Run it here, then on the GPU machine, with .gpu carried along:
#
#     bash scripts/gpu_pack.sh
#     (on the GPU machine, in the repository root) bash scripts/gpu_checks.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
cargo build --release --bin dinov2
strip -o .gpu/dinov2 target/release/dinov2
xz -T0 -6 -f .gpu/dinov2
# the test binary, for the kernel tests on the GPU (the fused kernels against their references)
suite=$(cargo test --release --test suite --no-run 2>&1 | sed -n 's/.*(\(target\/release\/deps\/suite-[0-9a-f]*\)).*/\1/p')
strip -o .gpu/suite "$suite"
xz -T0 -6 -f .gpu/suite
# the Vulkan loader, for an amd64 machine whatever this one is (the device tool's README recipe)
lists=$(mktemp -d)
mkdir -p "$lists/partial"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
apt-get "${apt_opts[@]}" update -qq
rm -f .gpu/*.deb
(cd .gpu && apt-get "${apt_opts[@]}" download libvulkan1 libglvnd0 libgl1 libglx0 libegl1 libgles2 libopengl0)
rm -rf "$lists"
# Fashion-MNIST (31 MB) only when asked: with it the pack and the working tree pass the device
# tool's 64 MiB limit on what travels
rm -rf .gpu/fashion-mnist
if [ "${FASHION_MNIST:-0}" = 1 ]; then
    mkdir -p .gpu/fashion-mnist
    cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
fi
du -sh .gpu
