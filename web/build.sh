#!/bin/sh
# Build the browser demo: the wasm package in web/pkg and the Fashion-MNIST subset in web/data.
# Then serve web/ over http, e.g. `python3 -m http.server -d web 8000`, and open
# http://localhost:8000/ in a browser with WebGPU.
#
# Needs: rustup target add wasm32-unknown-unknown; wasm-bindgen-cli of the same version as the
# wasm-bindgen crate in Cargo.lock; node (for the data subset); Fashion-MNIST (dataset-fashion-mnist).
set -eu
cd "$(dirname "$0")/.."
cargo build --lib --release --target wasm32-unknown-unknown
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  target/wasm32-unknown-unknown/release/resnet_wgpu.wasm
node web/tools/fashion-subset.mjs
ls -l web/pkg/resnet_wgpu_bg.wasm
