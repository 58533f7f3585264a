// resnet-wgpu browser demo: classification with top-5 bars, and training in the page.
//
// URL parameters: ?model=<url of a .safetensors file>&labels=<url of a labels .txt/.json>
// loads weights at start-up. `window.demo` exposes the state for scripting and for the
// headless test (web/test/drive.mjs).

import init, { Engine, webgpuAvailable } from './pkg/resnet_wgpu.js';

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 2048; // larger pictures are first downscaled by the browser

const FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
  'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

const demo = {
  engine: null,
  classifier: null,
  modelName: null,
  lastImage: null, // {rgba, width, height}
  last: null, // {top, ms, firstMs}
  inferTimes: [],
  data: null, // Fashion-MNIST subset
  trainer: null,
  train: { running: false, done: false, log: [], error: null, msPerStep: null, test: null },
  errors: [],
  ready: null,
};
window.demo = demo;

function setStatus(el, text, kind) {
  el.textContent = text;
  if (kind !== undefined) el.className = `status ${kind}`;
}

function report(where, err) {
  const msg = err && err.message ? err.message : String(err);
  demo.errors.push(`${where}: ${msg}`);
  return msg;
}

// ---------- WebGPU ----------

async function adapterDescription(engine) {
  let text = engine.adapter;
  try {
    const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    const i = a && a.info;
    if (i) {
      const parts = [i.vendor, i.architecture, i.device, i.description].filter((s) => s);
      if (parts.length) text = `${parts.join(' · ')} (WebGPU)`;
    }
  } catch (_) { /* keep wgpu's description */ }
  return text;
}

async function start() {
  const status = $('gpu-status');
  await init();
  if (!webgpuAvailable()) {
    setStatus(status, 'WebGPU is not available in this browser, so nothing can run here. '
      + 'Use a browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), '
      + 'served over https or from localhost.', 'error');
    document.body.classList.add('no-webgpu');
    return false;
  }
  try {
    demo.engine = await Engine.create();
  } catch (e) {
    setStatus(status, report('webgpu', e), 'error');
    document.body.classList.add('no-webgpu');
    return false;
  }
  const lim = demo.engine.limits();
  const mib = (b) => `${Math.round(b / 1048576)} MiB`;
  setStatus(status, `Adapter: ${await adapterDescription(demo.engine)} — storage binding `
    + `${mib(lim.maxStorageBufferBindingSize)}, workgroup memory ${lim.maxComputeWorkgroupStorageSize / 1024} KiB`, 'ok');
  return true;
}

// ---------- classification ----------

function parseLabels(text, name) {
  const t = text.trim();
  if (name.endsWith('.json') || t.startsWith('[')) {
    const v = JSON.parse(t);
    if (!Array.isArray(v)) throw new Error(`${name}: expected a JSON array of class names`);
    return v.map(String);
  }
  return t.split(/\r?\n/).map((s) => s.trim());
}

let pendingLabels = null;

function useClassifier(clf, name) {
  if (demo.classifier) demo.classifier.free();
  demo.classifier = clf;
  demo.modelName = name;
  demo.inferTimes = [];
  $('model-status').textContent = `${name}: ${clf.architecture}, ${clf.parameters.toLocaleString()} parameters, `
    + `${clf.inputSize}×${clf.inputSize} input, ${clf.numClasses} classes`;
  $('model-status').className = '';
  if (demo.lastImage) classifyCurrent();
}

function loadClassifier(bytes, name) {
  const options = pendingLabels ? { labels: pendingLabels } : {};
  try {
    useClassifier(demo.engine.loadClassifier(bytes, options), name);
  } catch (e) {
    $('model-status').textContent = `Could not load ${name}: ${report('load', e)}`;
    $('model-status').className = 'error-text';
  }
}

async function imageToRgba(blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const scale = Math.min(1, MAX_SIDE / Math.max(bmp.width, bmp.height));
  const width = Math.max(1, Math.round(bmp.width * scale));
  const height = Math.max(1, Math.round(bmp.height * scale));
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0, width, height);
  bmp.close();
  return { rgba: new Uint8Array(ctx.getImageData(0, 0, width, height).data.buffer), width, height };
}

function showPreview({ rgba, width, height }) {
  const preview = $('preview');
  const side = 224;
  const s = Math.min(side / width, side / height);
  preview.width = Math.max(1, Math.round(width * s));
  preview.height = Math.max(1, Math.round(height * s));
  const src = document.createElement('canvas');
  src.width = width;
  src.height = height;
  src.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), width, height), 0, 0);
  const ctx = preview.getContext('2d');
  ctx.imageSmoothingEnabled = width > preview.width;
  ctx.drawImage(src, 0, 0, preview.width, preview.height);
  preview.hidden = false;
  $('drop-hint').hidden = true;
}

function renderTop(top) {
  const list = $('top5');
  list.replaceChildren();
  for (const p of top) {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'label';
    name.textContent = p.label;
    const bar = document.createElement('span');
    bar.className = 'bar';
    const fill = document.createElement('span');
    fill.style.width = `${Math.max(0.5, p.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement('span');
    pct.className = 'pct';
    pct.textContent = `${(p.probability * 100).toFixed(1)}%`;
    li.append(name, bar, pct);
    list.append(li);
  }
}

let classifying = null;
async function classifyCurrent() {
  if (!demo.classifier || !demo.lastImage) return;
  if (classifying) await classifying.catch(() => {});
  const { rgba, width, height } = demo.lastImage;
  const run = (async () => {
    const t0 = performance.now();
    const top = await demo.classifier.classify(rgba, width, height, Math.min(5, demo.classifier.numClasses));
    const ms = performance.now() - t0;
    demo.inferTimes.push(ms);
    const first = demo.inferTimes[0];
    demo.last = { top, ms, firstMs: first };
    renderTop(top);
    $('infer-time').textContent = demo.inferTimes.length === 1
      ? `${ms.toFixed(1)} ms per inference (first run, includes shader compilation)`
      : `${ms.toFixed(1)} ms per inference (first run ${first.toFixed(0)} ms, with shader compilation)`;
  })();
  classifying = run;
  try {
    await run;
  } catch (e) {
    $('infer-time').textContent = `Classification failed: ${report('classify', e)}`;
  } finally {
    if (classifying === run) classifying = null;
  }
}

async function setImage(img) {
  demo.lastImage = img;
  showPreview(img);
  if (!demo.classifier) {
    $('infer-time').textContent = 'Load weights or train a model to classify this image.';
    return;
  }
  await classifyCurrent();
}

async function onImageFile(file) {
  if (!file) return;
  try {
    await setImage(await imageToRgba(file));
  } catch (e) {
    $('infer-time').textContent = `Could not read ${file.name}: ${report('image', e)}`;
  }
}

// Timing helper (also used by the test): `n` inferences on the current image, median in ms.
demo.benchmark = async (n = 5) => {
  const { rgba, width, height } = demo.lastImage;
  const times = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await demo.classifier.classify(rgba, width, height, 5);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
};

demo.logitsOfLastImage = async () => {
  const { rgba, width, height } = demo.lastImage;
  return Array.from(await demo.classifier.logits(rgba, width, height));
};

function wireClassify() {
  const zone = $('drop-zone');
  const input = $('image-input');
  zone.addEventListener('click', () => input.click());
  zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') input.click(); });
  input.addEventListener('change', () => onImageFile(input.files[0]));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    onImageFile(e.dataTransfer.files[0]);
  });
  $('model-input').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (f) loadClassifier(new Uint8Array(await f.arrayBuffer()), f.name);
  });
  $('labels-input').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    try {
      pendingLabels = parseLabels(await f.text(), f.name);
      $('model-status').textContent = `${pendingLabels.length} labels from ${f.name}; they apply to the next weights loaded.`;
      $('model-status').className = 'muted';
    } catch (err) {
      $('model-status').textContent = `Could not read labels: ${report('labels', err)}`;
      $('model-status').className = 'error-text';
    }
  });
  $('sample-button').addEventListener('click', () => {
    const d = demo.data && demo.data.test;
    if (!d) return;
    const i = Math.floor(Math.random() * d.count);
    setImage(grayToRgba(d.images.subarray(i * 784, (i + 1) * 784), 28, 28));
  });
}

async function loadFromUrlParams() {
  const q = new URLSearchParams(location.search);
  const model = q.get('model');
  if (!model) return;
  const labels = q.get('labels');
  if (labels) {
    const r = await fetch(labels);
    if (!r.ok) throw new Error(`${labels}: HTTP ${r.status}`);
    pendingLabels = parseLabels(await r.text(), labels);
  }
  const r = await fetch(model);
  if (!r.ok) throw new Error(`${model}: HTTP ${r.status}`);
  loadClassifier(new Uint8Array(await r.arrayBuffer()), model.split('/').pop());
}

// ---------- Fashion-MNIST subset ----------

function parseIdx(buf, name) {
  const v = new DataView(buf);
  const magic = v.getUint32(0);
  if (magic >> 8 !== 0x08) throw new Error(`${name}: not an unsigned-byte idx file`);
  const dims = magic & 0xff;
  const shape = [];
  for (let i = 0; i < dims; i++) shape.push(v.getUint32(4 + 4 * i));
  const data = new Uint8Array(buf, 4 + 4 * dims);
  if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`${name}: truncated`);
  return { shape, data };
}

async function fetchIdx(name) {
  const r = await fetch(`data/fashion-mnist/${name}`);
  if (!r.ok) throw new Error(`data/fashion-mnist/${name}: HTTP ${r.status} (run web/build.sh to generate the subset)`);
  return parseIdx(await r.arrayBuffer(), name);
}

async function loadData() {
  const [ti, tl, vi, vl] = await Promise.all([
    fetchIdx('train-images-idx3-ubyte'), fetchIdx('train-labels-idx1-ubyte'),
    fetchIdx('t10k-images-idx3-ubyte'), fetchIdx('t10k-labels-idx1-ubyte'),
  ]);
  const set = (im, lb) => ({ images: im.data, labels: new Uint32Array(lb.data), count: lb.shape[0] });
  demo.data = { train: set(ti, tl), test: set(vi, vl) };
}

function grayToRgba(gray, width, height) {
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = gray[i];
    rgba[4 * i + 3] = 255;
  }
  return { rgba, width, height };
}

// ---------- training ----------

function drawChart() {
  const canvas = $('loss-chart');
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const log = demo.train.log;
  const pad = { l: 44, r: 44, t: 14, b: 26 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const total = Math.max(demo.train.planned || 1, log.length, 2);
  const maxLoss = Math.max(2.5, ...log.map((m) => m.loss).filter(Number.isFinite));
  const x = (i) => pad.l + (pw * i) / (total - 1);
  const yl = (v) => pad.t + ph * (1 - Math.min(v, maxLoss) / maxLoss);
  const ya = (v) => pad.t + ph * (1 - v);
  ctx.font = '11px system-ui, sans-serif';
  ctx.strokeStyle = '#e2e5ea';
  ctx.fillStyle = '#6b7280';
  ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const yy = pad.t + (ph * k) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText((maxLoss * (1 - k / 4)).toFixed(1), pad.l - 6, yy + 4);
    ctx.textAlign = 'left';
    ctx.fillText(`${100 - 25 * k}%`, w - pad.r + 6, yy + 4);
  }
  ctx.textAlign = 'center';
  ctx.fillText('step', pad.l + pw / 2, h - 6);
  ctx.textAlign = 'left';
  ctx.fillStyle = '#2563eb'; ctx.fillText('loss', pad.l + 6, pad.t + 12);
  ctx.fillStyle = '#16a34a'; ctx.fillText('batch accuracy', pad.l + 40, pad.t + 12);
  if (log.length === 0) return;
  const line = (pts, color, width) => {
    ctx.strokeStyle = color; ctx.lineWidth = width;
    ctx.beginPath();
    pts.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
    ctx.stroke();
  };
  const ema = (key) => {
    let s = null;
    return log.map((m) => (s = s === null ? m[key] : 0.9 * s + 0.1 * m[key]));
  };
  line(log.map((m, i) => [x(i), yl(m.loss)]), 'rgba(37, 99, 235, 0.3)', 1);
  line(ema('loss').map((v, i) => [x(i), yl(v)]), '#2563eb', 2);
  line(ema('accuracy').map((v, i) => [x(i), ya(v)]), '#16a34a', 2);
}

function trainOptions() {
  return {
    steps: Math.max(1, parseInt($('train-steps').value, 10) || 1),
    batchSize: Math.max(2, parseInt($('train-batch').value, 10) || 32),
    lr: parseFloat($('train-lr').value) || 0.05,
    widths: $('train-widths').value.split(',').map(Number),
    stem: $('train-stem').value,
  };
}

let stopRequested = false;

async function runTraining() {
  const t = demo.train;
  if (t.running || !demo.data) return;
  const opts = trainOptions();
  const d = demo.data.train;
  Object.assign(t, { running: true, done: false, log: [], error: null, msPerStep: null, test: null, planned: opts.steps });
  stopRequested = false;
  $('train-start').disabled = true;
  $('train-stop').disabled = false;
  $('train-use').disabled = true;
  $('train-download').disabled = true;
  const status = $('train-status');
  status.className = 'muted';
  try {
    if (demo.trainer) demo.trainer.free();
    demo.trainer = null;
    demo.trainer = demo.engine.createTrainer(d.images, d.labels, 1, 28, 28, FASHION_CLASSES, {
      widths: opts.widths, layers: [1, 1, 1, 1], stem: opts.stem, batchSize: opts.batchSize, lr: opts.lr,
      schedule: 'constant', seed: 1,
    });
    status.textContent = `${demo.trainer.architecture}, ${demo.trainer.parameters.toLocaleString()} parameters — `
      + `compiling kernels and running the first step…`;
    const times = [];
    for (let i = 0; i < opts.steps && !stopRequested; i++) {
      const t0 = performance.now();
      const m = await demo.trainer.step();
      const ms = performance.now() - t0;
      if (i > 0) times.push(ms); // the first step compiles the pipelines
      t.log.push({ step: m.step, epoch: m.epoch, loss: m.loss, accuracy: m.accuracy, ms });
      const sorted = [...times].sort((a, b) => a - b);
      t.msPerStep = sorted.length ? sorted[Math.floor(sorted.length / 2)] : ms;
      status.textContent = `step ${m.step}/${opts.steps} · epoch ${m.epoch + 1} · loss ${m.loss.toFixed(3)} · `
        + `batch accuracy ${(m.accuracy * 100).toFixed(0)}% · ${t.msPerStep.toFixed(0)} ms/step`;
      drawChart();
    }
    status.textContent += ' · evaluating on the test subset…';
    const test = demo.data.test;
    t.test = await demo.trainer.evaluate(test.images, test.labels);
    status.textContent = `${t.log.length} steps, final loss ${t.log[t.log.length - 1].loss.toFixed(3)}, `
      + `${t.msPerStep.toFixed(0)} ms/step — test accuracy ${(t.test.accuracy * 100).toFixed(1)}% `
      + `on ${t.test.count} held-out images (loss ${t.test.loss.toFixed(3)})`;
    $('train-use').disabled = false;
    $('train-download').disabled = false;
  } catch (e) {
    t.error = report('train', e);
    status.textContent = `Training failed: ${t.error}`;
    status.className = 'error-text';
  } finally {
    t.running = false;
    t.done = true;
    $('train-start').disabled = false;
    $('train-stop').disabled = true;
  }
}

async function trainedBytes() {
  return demo.trainer.exportSafetensors();
}

function wireTrain() {
  $('train-start').addEventListener('click', runTraining);
  $('train-stop').addEventListener('click', () => { stopRequested = true; });
  $('train-use').addEventListener('click', async () => {
    try {
      const bytes = await trainedBytes();
      useClassifier(demo.engine.loadClassifier(bytes, {}), 'trained in this page');
    } catch (e) {
      $('model-status').textContent = `Could not use the trained model: ${report('use', e)}`;
    }
  });
  $('train-download').addEventListener('click', async () => {
    const bytes = await trainedBytes();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    a.download = 'fashion-resnet.safetensors';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
  window.addEventListener('resize', drawChart);
  drawChart();
}

// ---------- start-up ----------

demo.ready = (async () => {
  wireClassify();
  wireTrain();
  let ok = false;
  try {
    ok = await start();
  } catch (e) {
    setStatus($('gpu-status'), `Could not start: ${report('start', e)}`, 'error');
  }
  if (!ok) {
    $('train-status').textContent = 'Training needs WebGPU.';
    return false;
  }
  try {
    await loadFromUrlParams();
  } catch (e) {
    $('model-status').textContent = `Could not load the model: ${report('load', e)}`;
    $('model-status').className = 'error-text';
  }
  try {
    await loadData();
    $('train-status').textContent = `Fashion-MNIST subset: ${demo.data.train.count} training and `
      + `${demo.data.test.count} test images. Press Train.`;
    $('train-start').disabled = false;
    $('sample-button').disabled = false;
  } catch (e) {
    $('train-status').textContent = `No training data: ${report('data', e)}`;
    $('train-status').className = 'error-text';
  }
  return true;
})();
