#!/bin/bash
# Build here, pack what a run on the lent GPU machine needs into .carry/ (git-ignored):
# stripped release binaries (examples + op/golden test binaries), the golden files and
# Fashion-MNIST. Then call the device tool with carry [".gl", ".carry"] and
# `bash scripts/gpu/run.sh`. See scripts/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .carry && mkdir -p .carry/bin
cargo build --release --examples
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
  case "$name" in train|browser|data|classify) continue ;; esac
  cp "$exe" ".carry/bin/test-$name"
done
for e in bench train evaluate kernel_stats; do cp "target/release/examples/$e" .carry/bin/; done
strip .carry/bin/*
tar -C .carry/bin -cJf .carry/bin.tar.xz . && rm -rf .carry/bin
cp -r "${RESNET_WGPU_GOLDEN:-../shared/golden}" .carry/golden
mkdir -p .carry/fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .carry/fmnist/
du -sh .carry .gl
