#!/usr/bin/env bash
# Installs what building and testing need on Debian: a Rust toolchain (if none is on PATH)
# and Mesa's Vulkan drivers, whose lavapipe is the software adapter wgpu uses without a GPU.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

need=()
# lavapipe's ICD file is how the Vulkan loader finds the software adapter
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  need+=(mesa-vulkan-drivers libvulkan1)
fi
if ! command -v cargo >/dev/null; then
  # Debian's newest Rust (1.96) ships as rustc-web; it builds this crate (edition 2024)
  need+=(rustc-web cargo-web)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
