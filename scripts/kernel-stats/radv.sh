#!/usr/bin/env bash
# The conv kernels (and the others kernel_stats knows) compiled by Mesa's RADV for an AMD GPU
# this machine does not have: RADV's "null device" (RADV_FORCE_FAMILY, Mesa 22-25) compiles
# and reports statistics and assembly without hardware. Mesa 25.0 (Debian 13's) is the newest
# with the null device and has cooperative matrices on RDNA3, so the f16 tensor-core engine is
# compiled too; it runs inside the Debian 13 root of scripts/tensor-cores/setup.sh, where this
# script unpacks Mesa 25.0's Vulkan drivers beside Mesa 26 under /opt/mesa25 (once).
#
# Usage: scripts/kernel-stats/radv.sh OUT [FAMILY] [ROOT]
#   OUT     folder for stats.txt, stats.json, isa/ (one assembly file per kernel) and
#           loops.txt (scripts/kernel-stats/loops.py: each loop's instructions by kind)
#   FAMILY  the AMD chip to compile for (default navi31: RDNA3, wave32, WMMA)
#   ROOT    default /var/tmp/resnet-wgpu-trixie
# KERNEL_STATS_ONLY=TEXT keeps the kernels whose label or entry point contains TEXT.
#
# The counts are AMD's compiler's, not NVIDIA's: use them to compare two versions of a kernel
# (registers, spills, instructions per loop), not to predict another vendor's speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: radv.sh OUT [FAMILY] [ROOT]}
FAMILY=${2:-navi31}
ROOT=${3:-/var/tmp/resnet-wgpu-trixie}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
bash scripts/tensor-cores/setup.sh "$ROOT"
if [ ! -f "$ROOT/opt/mesa25/radeon.json" ]; then
    $SUDO chroot "$ROOT" bash -c "set -e; cd /tmp; apt-get update -qq
        apt-get download -qq mesa-vulkan-drivers/trixie
        rm -rf /opt/mesa25; dpkg -x mesa-vulkan-drivers_*.deb /opt/mesa25; rm mesa-vulkan-drivers_*.deb
        printf '%s\n' '{\"ICD\": {\"api_version\": \"1.4.305\", \"library_path\": \"/opt/mesa25/usr/lib/x86_64-linux-gnu/libvulkan_radeon.so\"}, \"file_format_version\": \"1.0.0\"}' > /opt/mesa25/radeon.json"
fi
cargo build --release --example kernel_stats
$SUDO cp target/release/examples/kernel_stats "$ROOT/tmp/kernel_stats"
$SUDO rm -rf "$ROOT/tmp/kernel-stats-out"
ONLY=()
if [ -n "${KERNEL_STATS_ONLY:-}" ]; then ONLY=(--only "$KERNEL_STATS_ONLY"); fi
$SUDO chroot "$ROOT" env RADV_FORCE_FAMILY="$FAMILY" VK_ICD_FILENAMES=/opt/mesa25/radeon.json \
    /tmp/kernel_stats --json /tmp/kernel-stats-out/stats.json --isa /tmp/kernel-stats-out/isa \
    "${ONLY[@]}" > /tmp/kernel-stats-radv.txt
mkdir -p "$OUT"
rm -rf "$OUT/isa"
cp -r "$ROOT/tmp/kernel-stats-out/isa" "$ROOT/tmp/kernel-stats-out/stats.json" "$OUT/"
mv /tmp/kernel-stats-radv.txt "$OUT/stats.txt"
python3 scripts/kernel-stats/loops.py "$OUT"/isa/*.txt | sed "s|$OUT/isa/||" > "$OUT/loops.txt"
grep -q ' pipelines, 0 failed' "$OUT/stats.txt" || { echo "some kernels failed to build: $OUT/stats.txt" >&2; exit 1; }
echo "RADV ($FAMILY) statistics in $OUT: stats.txt, loops.txt, isa/"
