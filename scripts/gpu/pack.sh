#!/bin/bash
# Build here, pack what a run on the lent GPU machine needs into .carry/ (git-ignored):
# stripped release binaries (examples + op/golden test binaries), the golden files and
# Fashion-MNIST; and, when .gl/ holds none yet, the Vulkan loader's .debs (git-ignored too).
# Then call the device tool with carry [".gl", ".carry"] and `bash scripts/gpu/run.sh`. See
# scripts/gpu/run.sh.
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
# The Vulkan loader for the device machine, which has the NVIDIA driver but may lack the loader:
# run.sh unpacks these .debs there (the device tool's README).
if ! ls .gl/*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .carry .gl
