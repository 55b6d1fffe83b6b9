// The page: loads the wasm engine (../src/lib.rs, built by ../build.sh into pkg/) and the
// bundled weights, then runs PCA and patch matching on WebGPU. Nothing is fetched after load
// except what the user picks from disk, so the page keeps working offline once loaded
// (sw.js also caches it for reloads).
import init, { Engine } from './pkg/dinov2_web.js';

const $ = (id) => document.getElementById(id);
const BUNDLED = 'weights.safetensors';
const BUNDLED_LABEL =
  'bundled: the tiny preset (0.8M parameters, patch 7) trained by this project for 2000 steps on ' +
  'Fashion-MNIST (assets/tiny-fashion-mnist.safetensors) — features of 28 px clothes, coarse on photos';
let engine = null;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', error);
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fileBytes(file) {
  return new Uint8Array(await file.arrayBuffer());
}

function show(img, png) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the result is not a displayable PNG'));
    img.src = URL.createObjectURL(new Blob([png], { type: 'image/png' }));
  });
}

// Runs `work`, with its name on the status line while it runs and its time or error after.
async function busy(what, work) {
  status(`${what}…`);
  const start = performance.now();
  try {
    const result = await work();
    status(`${what}: done in ${((performance.now() - start) / 1000).toFixed(1)} s`);
    return result;
  } catch (e) {
    status(`${what}: ${e.message ?? e}`, true);
    throw e;
  }
}

let adapterText = '';

async function loadWeights(bytes, name, label) {
  engine = await busy(`Loading ${name}`, () => Engine.load(bytes, name));
  $('adapter').textContent = `WebGPU adapter: ${adapterText || engine.adapter()}`;
  $('weights-label').textContent = `${label ?? name} — ${engine.describe()}`;
}

async function pca(bytes, name) {
  const size = $('pca-size').value;
  const result = await busy(`PCA of ${name} at ${size} px`, () => engine.pca(bytes, name, size, $('pca-mask').checked));
  await show($('pca-out'), result.png);
  return result;
}

async function match(a, aName, b, bName) {
  const size = $('match-size').value;
  const result = await busy(`Matching ${aName} and ${bName} at ${size} px`, () => engine.matches(a, aName, b, bName, size, 40));
  await show($('match-out'), result.png);
  status(`${$('status').textContent}; ${result.matches} mutual nearest patches, mean cosine ${result.mean_similarity.toFixed(3)}`);
  return result;
}

// Distinct colours in the right half of a shown picture (the PCA map beside the image).
function distinctColours(img, rightHalf) {
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const x0 = rightHalf ? Math.floor(canvas.width / 2) : 0;
  const data = ctx.getImageData(x0, 0, canvas.width - x0, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  return seen.size;
}

function onFiles(input, drop, use) {
  input.addEventListener('change', () => input.files.length && use([...input.files]));
  if (!drop) return;
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files.length) use([...e.dataTransfer.files]);
  });
}

async function main() {
  if (!navigator.gpu) {
    status('This browser has no WebGPU (navigator.gpu is missing): use a recent Chrome or Edge, ' +
      'Safari 26+, or Firefox with WebGPU enabled, over https or localhost.', true);
    return;
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    status('This browser has WebGPU but no WebGPU adapter (blocked or unsupported GPU): try another ' +
      'browser, or enable WebGPU in its settings (chrome://flags/#enable-unsafe-webgpu).', true);
    return;
  }
  const info = adapter.info ?? {};
  adapterText = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' ') || 'unnamed';
  if (adapter.isFallbackAdapter || info.isFallbackAdapter) adapterText += ' (software fallback: slow)';
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {});
  status('Loading the engine (wasm)…');
  await init();
  const weights = await busy('Downloading the bundled weights', () => fetchBytes(BUNDLED));
  await loadWeights(weights, BUNDLED, BUNDLED_LABEL);

  const quietly = (promise) => promise.catch(() => {}); // errors are on the status line
  onFiles($('weights-file'), null, ([file]) => quietly(fileBytes(file).then((b) => loadWeights(b, file.name))));
  onFiles($('pca-file'), $('pca-drop'), ([file]) => quietly(fileBytes(file).then((b) => pca(b, file.name))));
  $('pca-sample').addEventListener('click', () => quietly(fetchBytes('sample.jpg').then((b) => pca(b, 'sample.jpg'))));
  const pick = async () => {
    const [a, b] = [$('match-a').files[0], $('match-b').files[0]];
    if (a && b) await quietly(match(await fileBytes(a), a.name, await fileBytes(b), b.name));
  };
  $('match-a').addEventListener('change', pick);
  $('match-b').addEventListener('change', pick);
  $('match-sample').addEventListener('click', async () => {
    const [a, b] = await Promise.all([fetchBytes('sample.jpg'), fetchBytes('sample-b.jpg')]);
    await quietly(match(a, 'sample.jpg', b, 'sample-b.jpg'));
  });

  // what the browser test (../test.mjs) drives
  window.dinov2Test = {
    adapter: () => engine.adapter(),
    // resolves once the service worker holds the page's files and serves this page
    offlineReady: async () => {
      await navigator.serviceWorker.ready;
      while (!navigator.serviceWorker.controller) await new Promise((r) => setTimeout(r, 100));
      const cache = await caches.open('dinov2-web');
      return (await cache.keys()).length;
    },
    async pca(url, size) {
      $('pca-size').value = size;
      const result = await pca(await fetchBytes(url), url);
      return { patch: Array.from(result.patch), h: result.h, w: result.w, d: result.d,
        colours: distinctColours($('pca-out'), true) };
    },
    async match(a, b, size) {
      $('match-size').value = size;
      const [x, y] = await Promise.all([fetchBytes(a), fetchBytes(b)]);
      const result = await match(x, a, y, b);
      return { matches: result.matches, similarity: result.mean_similarity, colours: distinctColours($('match-out'), false) };
    },
  };
  window.dinov2Ready = true;
}

main().catch((e) => status(`${e.message ?? e}`, true));
