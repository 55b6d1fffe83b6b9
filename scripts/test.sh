#!/usr/bin/env bash
# The test command (README, .ci/run): the native test suite and the browser build side by
# side, then the browser test. A cargo build leaves one of two cores idle for long stretches
# (one large crate at a time) and the test suite keeps about one busy, so the wasm build,
# run next to them, mostly fills the idle core. Its log goes to web/target/build.log and is
# printed where it fails.
#
#   bash scripts/setup.sh && bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# the packages first, while nothing else runs (apt never touches a toolchain in use)
bash web/build.sh --packages
mkdir -p web/target
log=web/target/build.log
bash web/build.sh > "$log" 2>&1 &
web=$!
trap 'pkill -P "$web" 2>/dev/null; kill "$web" 2>/dev/null || true' EXIT
cargo test --release
if ! wait "$web"; then
  cat "$log" >&2
  echo "scripts/test.sh: web/build.sh failed (log above, also in $log)" >&2
  exit 1
fi
trap - EXIT
tail -n 1 "$log"
bash web/test.sh
