// Drive the demo page in headless Chromium (system browser, WebGPU via SwiftShader or a GPU) and
// print the results as one JSON line prefixed with `RESULT `. Used by tests/browser.rs.
//
//   node web/test/drive.mjs --url http://127.0.0.1:PORT/?model=... --image fixture.png \
//        --out DIR [--steps 30] [--stem imagenet|cifar] [--chromium /usr/bin/chromium] [--timeout-s 400]
//
// It loads the page (which loads the model given in the URL), picks the image through the page's
// file input, reads the page's top-5 and the raw logits, times a few inferences, trains `steps`
// steps through the page's Train button, saves DIR/page.png, and reports every uncaught error
// and console error. It exits non-zero only when it cannot produce a result at all.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

function args() {
  const a = { steps: 30, stem: 'imagenet', chromium: process.env.CHROMIUM || '/usr/bin/chromium', 'timeout-s': 400 };
  const v = process.argv.slice(2);
  for (let i = 0; i < v.length; i += 2) a[v[i].replace(/^--/, '')] = v[i + 1];
  for (const k of ['url', 'image', 'out']) if (!a[k]) throw new Error(`missing --${k}`);
  return a;
}

const opt = args();
const deadline = Date.now() + Number(opt['timeout-s']) * 1000;
const left = () => Math.max(1000, deadline - Date.now());
mkdirSync(opt.out, { recursive: true });

const result = { problems: [], console: [] };
const browser = await chromium.launch({
  executablePath: opt.chromium,
  headless: true,
  args: [
    '--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-gpu-sandbox',
    '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync',
  ],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1040, height: 1000 } });
  page = await context.newPage();
  page.on('console', (m) => {
    result.console.push(`${m.type()}: ${m.text()}`);
    if (m.type() === 'error') result.problems.push(`console error: ${m.text()}`);
    // Chrome reports WebGPU validation errors (invalid WGSL, invalid pipelines) as warnings.
    else if (m.type() === 'warning' && /WGSL|WebGPU|\[Invalid |While calling \[/.test(m.text())) {
      result.problems.push(`WebGPU warning: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => result.problems.push(`uncaught error: ${e.message}`));
  page.on('requestfailed', (r) => result.problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) result.problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });

  result.browser = browser.version();
  await page.goto(opt.url, { timeout: left() });
  await page.waitForFunction(() => window.demo && window.demo.ready, null, { timeout: left() });
  const started = await page.evaluate(() => window.demo.ready);
  result.gpuStatus = await page.textContent('#gpu-status');
  if (!started) throw new Error(`the page could not start WebGPU: ${result.gpuStatus}`);
  result.limits = await page.evaluate(() => window.demo.engine.limits());

  // Inference on the fixture image, through the page's own file input.
  await page.waitForFunction(() => window.demo.classifier || window.demo.errors.length, null, { timeout: left() });
  result.modelStatus = await page.textContent('#model-status');
  if (!(await page.evaluate(() => !!window.demo.classifier))) {
    throw new Error(`the model did not load: ${result.modelStatus}`);
  }
  await page.setInputFiles('#image-input', opt.image);
  await page.waitForFunction(() => window.demo.last || window.demo.errors.length, null, { timeout: left() });
  const last = await page.evaluate(() => window.demo.last);
  if (!last) throw new Error(`classification failed: ${await page.textContent('#infer-time')}`);
  result.top = last.top;
  result.firstInferenceMs = last.firstMs;
  result.image = await page.evaluate(() => {
    const { rgba, width, height } = window.demo.lastImage;
    let sum = 0;
    for (let i = 0; i < rgba.length; i++) sum = (sum + rgba[i] * ((i % 251) + 1)) % 1000000007;
    return { width, height, checksum: sum };
  });
  result.logits = await page.evaluate(() => window.demo.logitsOfLastImage());
  result.inferenceMs = await page.evaluate(() => window.demo.benchmark(5));
  result.inferTimeText = await page.textContent('#infer-time');

  // Training through the page's panel.
  await page.waitForFunction(() => !document.getElementById('train-start').disabled, null, { timeout: left() });
  await page.fill('#train-steps', String(opt.steps));
  await page.selectOption('#train-stem', opt.stem);
  await page.click('#train-start');
  await page.waitForFunction(() => window.demo.train.done, null, { timeout: left(), polling: 500 });
  const t = await page.evaluate(() => window.demo.train);
  result.train = {
    steps: t.log.length,
    losses: t.log.map((m) => m.loss),
    accuracies: t.log.map((m) => m.accuracy),
    msPerStep: t.msPerStep,
    firstStepMs: t.log.length ? t.log[0].ms : null,
    test: t.test,
    error: t.error,
    status: await page.textContent('#train-status'),
  };
  result.pageErrors = await page.evaluate(() => window.demo.errors);
} catch (e) {
  result.failure = String(e && e.stack ? e.stack : e);
} finally {
  if (page) {
    try {
      await page.screenshot({ path: join(opt.out, 'page.png'), fullPage: true, timeout: 30000 });
      result.screenshot = join(opt.out, 'page.png');
    } catch (e) {
      result.problems.push(`screenshot failed: ${e.message}`);
    }
  }
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
