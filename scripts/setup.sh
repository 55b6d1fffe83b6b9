#!/usr/bin/env bash
# Installs what building and testing need on Debian: a Rust toolchain (if none new enough is
# on PATH) and Mesa's Vulkan drivers, whose lavapipe is the software adapter wgpu uses
# without a GPU.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

# edition 2024 needs Rust 1.85
rust_ok() {
  command -v cargo >/dev/null || return 1
  local v; v=$(cargo --version | awk '{print $2}')
  [ "$(printf '%s\n1.85.0\n' "$v" | sort -V | head -n1)" = "1.85.0" ]
}

need=()
# lavapipe's ICD file is how the Vulkan loader finds the software adapter
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  need+=(mesa-vulkan-drivers libvulkan1)
fi
# cargo fetches crates over TLS
if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then
  need+=(ca-certificates)
fi
if ! rust_ok; then
  # Debian's newest Rust (1.96) ships as rustc-web/cargo-web, installed as /usr/bin/cargo
  need+=(rustc-web cargo-web)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if ! rust_ok; then
  echo "setup: cargo on PATH is $(cargo --version 2>/dev/null || echo missing); 1.85 or newer is needed" >&2
  echo "setup: Debian's is /usr/bin/cargo (package cargo-web); put /usr/bin first on PATH" >&2
  exit 1
fi
