// Write a small Fashion-MNIST subset (uncompressed idx files) for the demo page to fetch.
//
//   node web/tools/fashion-subset.mjs [source dir] [train count] [test count]
//
// The source defaults to $FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist (Debian package
// dataset-fashion-mnist), holding the four .gz (or uncompressed) idx files. Output:
// web/data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte. The first N images of each
// split are taken (Fashion-MNIST's order is already class-balanced to within a few percent).
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = process.argv[2] || process.env.FASHION_MNIST_DIR || '/usr/share/datasets/fashion-mnist';
const counts = { train: +(process.argv[3] || 2048), t10k: +(process.argv[4] || 512) };
const out = join(here, '..', 'data', 'fashion-mnist');

function read(name) {
  for (const [file, unzip] of [[`${name}.gz`, true], [name, false]]) {
    const p = join(src, file);
    if (existsSync(p)) return unzip ? gunzipSync(readFileSync(p)) : readFileSync(p);
  }
  throw new Error(`${join(src, name)}(.gz) not found: install Fashion-MNIST `
    + '(Debian: apt-get install dataset-fashion-mnist) or pass its directory');
}

function slice(buf, n, name) {
  const dims = buf[3];
  const shape = [];
  for (let i = 0; i < dims; i++) shape.push(buf.readUInt32BE(4 + 4 * i));
  if (n > shape[0]) throw new Error(`${name} has only ${shape[0]} items, ${n} asked`);
  const per = shape.slice(1).reduce((a, b) => a * b, 1);
  const head = Buffer.from(buf.subarray(0, 4 + 4 * dims));
  head.writeUInt32BE(n, 4);
  return Buffer.concat([head, buf.subarray(4 + 4 * dims, 4 + 4 * dims + n * per)]);
}

mkdirSync(out, { recursive: true });
for (const split of ['train', 't10k']) {
  for (const kind of ['images-idx3', 'labels-idx1']) {
    const name = `${split}-${kind}-ubyte`;
    writeFileSync(join(out, name), slice(read(name), counts[split], name));
  }
}
console.log(`wrote ${counts.train} training and ${counts.t10k} test images to ${out}`);
