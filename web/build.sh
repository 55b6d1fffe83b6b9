#!/usr/bin/env bash
# Builds the browser page into web/www/: the engine (this crate, wasm32) with its JS glue in
# www/pkg/, the bundled weights and the sample photos. Needs only Debian packages and
# crates.io: Debian's rustc-web builds the wasm32 standard library itself (build-std), and
# wasm-bindgen-cli is built once with cargo into a cache outside the clone.
#
#   bash web/build.sh            # then serve web/www/ (web/test.sh does, and tests it)
#
# DINOV2_WEB_TOOLS (default ~/.cache/dinov2-web): where wasm-bindgen-cli is installed.
# DINOV2_WEB_TARGET (default web/target): the wasm build folder.
set -euo pipefail
cd "$(dirname "$0")"
WASM_BINDGEN=0.2.130 # must equal the wasm-bindgen crate pinned in Cargo.toml

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "web/build.sh: need root to run: $*" >&2; exit 1; fi
}

# Debian's Rust 1.96 with its standard library sources; lld-22 is the linker rust-lld calls
need=()
for p in rustc-web cargo-web rust-web-src rust-web-llvm lld-22; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "web/build.sh: installing ${need[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

tools=${DINOV2_WEB_TOOLS:-$HOME/.cache/dinov2-web}
if ! "$tools/bin/wasm-bindgen" --version 2>/dev/null | grep -q " $WASM_BINDGEN\$"; then
  echo "web/build.sh: building wasm-bindgen-cli $WASM_BINDGEN into $tools (once, a few minutes)" >&2
  # not --locked: its lock file names a yanked crate. --debug: it builds in 1 min 40 s instead
  # of 3 min 20 s and then takes 28 s instead of 5 s on the page's wasm (measured on 2 cores)
  cargo install --quiet --debug wasm-bindgen-cli --version "$WASM_BINDGEN" --root "$tools"
fi

export CARGO_TARGET_DIR=${DINOV2_WEB_TARGET:-$PWD/target}
RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release \
  --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort
rm -rf www/pkg
"$tools/bin/wasm-bindgen" --target web --no-typescript --remove-name-section --remove-producers-section \
  --out-dir www/pkg "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/dinov2_web.wasm"
cp ../assets/tiny-fashion-mnist.safetensors www/weights.safetensors
cp ../assets/images/astronaut.jpg www/sample.jpg
cp ../assets/images/rocket.jpg www/sample-b.jpg

size() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
wasm=www/pkg/dinov2_web_bg.wasm
echo "web/build.sh: built web/www/: $wasm $(size "$(stat -c %s "$wasm")")" \
  "($(size "$(gzip -9 -c "$wasm" | wc -c)") gzipped), weights $(size "$(stat -c %s www/weights.safetensors)")"
