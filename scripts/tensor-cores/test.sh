#!/usr/bin/env bash
# Run the f16 tensor-core tests (tests/tensor_cores.rs) on Mesa 26's lavapipe inside the root
# scripts/tensor-cores/setup.sh made, where the f16 engine must run
# (RESNET_WGPU_EXPECT_TENSOR_CORES=1): the test binary is built here and copied in.
#
# Usage: scripts/tensor-cores/test.sh [ROOT]   (default /var/tmp/resnet-wgpu-trixie)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-/var/tmp/resnet-wgpu-trixie}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
BIN=$(cargo test --release --test tensor_cores --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
if [ -z "$BIN" ]; then
    echo "building the tensor_cores test binary failed" >&2
    cargo test --release --test tensor_cores --no-run
    exit 1
fi
$SUDO cp "$BIN" "$ROOT/tmp/tensor_cores"
# Two tests at a time, as cargo runs them: most of the time is lavapipe compiling the f16
# engine's kernels, each on its test's thread (on CI's 2-core machine, from a cold shader cache:
# 163 s against 341 one at a time).
$SUDO chroot "$ROOT" env RESNET_WGPU_EXPECT_TENSOR_CORES=1 /tmp/tensor_cores --test-threads=2
