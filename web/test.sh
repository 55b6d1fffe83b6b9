#!/usr/bin/env bash
# The browser test: serves web/www/ on localhost, opens it in headless Chromium on its
# software WebGPU adapter (SwiftShader), runs PCA on the sample photo and checks the patch
# features against the native `dinov2 embed` of the same image and weights (max abs error
# <= 1e-3) and that the pictures are not blank, runs patch matching offline (the service
# worker's cache serving the page's files), and checks the message a browser without WebGPU
# gets. Exit 0 on pass. Run web/build.sh first.
#
#   bash web/test.sh [--screenshots DIR]
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "web/test.sh: need root to run: $*" >&2; exit 1; fi
}
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
if [ ${#need[@]} -gt 0 ]; then
  echo "web/test.sh: installing ${need[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
[ -f www/pkg/dinov2_web_bg.wasm ] || { echo "web/test.sh: no web/www/pkg: run web/build.sh first" >&2; exit 1; }
mkdir -p target
# playwright-core has no dependencies: its tarball from the npm registry, checked against the
# registry's sha512, is all it needs (no npm, no browser download)
if [ ! -d node_modules/playwright-core ]; then
  node --input-type=module -e '
    import { createHash } from "node:crypto";
    import { writeFileSync } from "node:fs";
    const [url, integrity, out] = process.argv.slice(1);
    const body = Buffer.from(await (await fetch(url)).arrayBuffer());
    const got = "sha512-" + createHash("sha512").update(body).digest("base64");
    if (got !== integrity) { console.error(`${url}: integrity ${got}, expected ${integrity}`); process.exit(1); }
    writeFileSync(out, body);' \
    https://registry.npmjs.org/playwright-core/-/playwright-core-1.65.1.tgz \
    sha512-hqPpz7blSMPxWVdoeE1yiBSzXsKiVOd2k+kjCvmUywD2GPO2Dd9HfcWnq9NN0GHbNZDFgZ9JfBFr+X5/BLo0qw== \
    target/playwright-core.tgz
  rm -rf target/playwright-core && mkdir -p target/playwright-core node_modules
  tar -xzf target/playwright-core.tgz -C target/playwright-core --strip-components=1
  mv target/playwright-core node_modules/playwright-core
fi

# the references: the native CLI on the CPU backend, same images, weights and sizing
native() {
  (cd .. && cargo run --release --quiet -- "$@" --weights assets/tiny-fashion-mnist.safetensors --size 112 \
    --backend ndarray)
}
native embed -o web/target/reference.safetensors web/www/sample.jpg
native embed -o web/target/reference-b.safetensors web/www/sample-b.jpg
# "wrote FILE: N mutual nearest neighbours drawn, mean cosine similarity S"
matched=$(native match --top-k 40 -o web/target/reference-match.png web/www/sample.jpg web/www/sample-b.jpg 2>&1)
read -r matches similarity < <(sed -nE 's/.*: ([0-9]+) mutual .* similarity ([0-9.]+).*/\1 \2/p' <<<"$matched")
[ -n "${similarity:-}" ] || { echo "web/test.sh: no match count in \`dinov2 match\` output: $matched" >&2; exit 1; }
node test.mjs --reference target/reference.safetensors --reference-b target/reference-b.safetensors \
  --matches "$matches" --similarity "$similarity" --size 112 "$@"
