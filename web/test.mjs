// The browser test driver (run by test.sh): a static server for www/, headless Chromium through
// playwright-core, the checks. One line per check; exit 1 with the reason on the first failure.
//
//   node test.mjs --reference FILE --reference-b FILE --matches N --similarity S --size N
//                 [--screenshots DIR]
import { createServer } from 'node:http';
import { readFile, mkdir } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const reference = opt('reference');
const referenceB = opt('reference-b');
const nativeMatches = Number(opt('matches'));
const nativeSimilarity = Number(opt('similarity'));
const size = opt('size', '112');
const screenshots = opt('screenshots');
const TOLERANCE = 1e-3;
const TIMEOUT_MS = 300_000;

function fail(message) {
  console.error(`web test FAILED: ${message}`);
  process.exit(1);
}

// `patch` [1, h, w, d] f32 of a safetensors file written by `dinov2 embed`.
async function readPatch(path) {
  const bytes = await readFile(path);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
  const info = header.patch;
  if (!info || info.dtype !== 'F32') fail(`${path}: no f32 tensor \`patch\``);
  const [start, end] = info.data_offsets;
  const data = bytes.subarray(8 + headerLen + start, 8 + headerLen + end);
  const values = new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  return { shape: info.shape, values };
}

const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm',
  '.jpg': 'image/jpeg', '.png': 'image/png', '.safetensors': 'application/octet-stream',
};
const root = new URL('./www/', import.meta.url).pathname;
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  const file = path.endsWith('/') ? `${path}index.html` : path;
  try {
    const body = await readFile(join(root, file));
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
  '--disable-breakpad'];

async function openPage(webgpu) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: webgpu ? [...FLAGS, '--enable-unsafe-webgpu'] : [...FLAGS, '--disable-webgpu'],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 1300 } });
  const log = [];
  page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.push(`page error: ${e.message}`));
  await page.goto(url);
  return { browser, page, log };
}

const status = (page) => page.evaluate(() => document.getElementById('status').textContent);

try {
  const { browser, page, log } = await openPage(true);
  const start = Date.now();
  try {
    await page.waitForFunction(
      () => window.dinov2Ready || document.getElementById('status').classList.contains('error'),
      null, { timeout: TIMEOUT_MS, polling: 250 });
  } catch {
    fail(`the page did not get ready in ${TIMEOUT_MS / 1000} s; status: ${await status(page)}; ${log.join(' | ')}`);
  }
  if (!(await page.evaluate(() => window.dinov2Ready))) fail(`page error: ${await status(page)}; ${log.join(' | ')}`);
  const adapter = await page.evaluate(() => document.getElementById('adapter').textContent);
  console.log(`page ready in ${((Date.now() - start) / 1000).toFixed(1)} s; ${adapter}`);

  // PCA of both sample photos: the browser's patch features against the native ones
  for (const [file, path, shot] of [['sample-b.jpg', referenceB, null], ['sample.jpg', reference, 'web-pca.png']]) {
    const ref = await readPatch(path);
    const got = await page.evaluate(([f, s]) => window.dinov2Test.pca(f, s), [file, size]);
    const [, h, w, d] = ref.shape;
    if (got.h !== h || got.w !== w || got.d !== d) fail(`${file}: patch grid ${got.h}x${got.w}x${got.d}, native ${h}x${w}x${d}`);
    let maxErr = 0;
    for (let i = 0; i < ref.values.length; i++) {
      const e = Math.abs(got.patch[i] - ref.values[i]);
      maxErr = Number.isNaN(e) ? Infinity : Math.max(maxErr, e);
    }
    console.log(`PCA of ${file}: ${h}x${w} patches of ${d}; max abs error against native \`dinov2 embed\` ` +
      `${maxErr.toExponential(2)}; ${got.colours} colours in the PCA map; ${await status(page)}`);
    if (!(maxErr <= TOLERANCE)) fail(`${file}: patch features differ from the native ones by ${maxErr} > ${TOLERANCE}`);
    if (got.colours < 16) fail(`${file}: the PCA map has ${got.colours} colours: blank`);
    if (screenshots && shot) {
      await mkdir(screenshots, { recursive: true });
      await page.locator('#pca-section').screenshot({ path: join(screenshots, shot) });
    }
  }

  // the rest runs offline: the service worker serves the sample photos from its cache
  const cached = await page.evaluate(() => window.dinov2Test.offlineReady());
  await page.context().setOffline(true);
  const matched = await page.evaluate((s) => window.dinov2Test.match('sample.jpg', 'sample-b.jpg', s), size);
  console.log(`matching, offline (${cached} files cached): ${matched.matches} mutual nearest patches drawn ` +
    `(native ${nativeMatches}), mean cosine ${matched.similarity.toFixed(4)} (native ${nativeSimilarity}), ` +
    `${matched.colours} colours; ${await status(page)}`);
  if (matched.matches < 1) fail('no patch matches');
  if (matched.matches !== nativeMatches || !(Math.abs(matched.similarity - nativeSimilarity) <= 1e-3)) {
    fail(`the matches differ from native \`dinov2 match\`: ${matched.matches} at mean cosine ${matched.similarity}, ` +
      `native ${nativeMatches} at ${nativeSimilarity}`);
  }
  if (matched.colours < 16) fail(`the matching picture has ${matched.colours} colours: blank`);
  if (screenshots) await page.locator('#match-section').screenshot({ path: join(screenshots, 'web-match.png') });
  await browser.close();

  // a browser without WebGPU gets a clear message instead of a broken page
  const plain = await openPage(false);
  await plain.page.waitForFunction(() => document.getElementById('status').classList.contains('error'), null,
    { timeout: 60_000 }).catch(() => {});
  const message = await status(plain.page);
  console.log(`without WebGPU: "${message}"`);
  if (!/no WebGPU/.test(message)) fail(`without WebGPU the page says "${message}"`);
  await plain.browser.close();
  console.log('web test passed');
} catch (e) {
  fail(e.stack ?? String(e));
} finally {
  server.close();
}
