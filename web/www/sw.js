// Keeps a copy of the page's files, so that a reload works offline: network first (a rebuilt
// page is picked up at once), the cached copy when the network is gone.
const CACHE = 'dinov2-web';
const FILES = ['./', 'index.html', 'style.css', 'main.js', 'pkg/dinov2_web.js', 'pkg/dinov2_web_bg.wasm',
  'weights.safetensors', 'sample.jpg', 'sample-b.jpg'];
self.addEventListener('install', (e) => {
  self.skipWaiting();
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)));
});
// serve the page that registered the worker at once, not from its next load on
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', (e) => {
  if (e.request.method !== 'GET') return;
  e.respondWith(
    fetch(e.request)
      .then((response) => {
        const copy = response.clone();
        caches.open(CACHE).then((c) => c.put(e.request, copy));
        return response;
      })
      .catch(() => caches.match(e.request).then((hit) => hit ?? Response.error())),
  );
});
