#!/usr/bin/env bash
# A Debian 13 (trixie) root with Mesa 26's lavapipe from trixie-backports, whose Vulkan driver
# offers cooperative matrices (VK_KHR_cooperative_matrix, 8x8x8 f16 fragments): the f16
# tensor-core conv engine runs there on a machine without a GPU. Debian 12's lavapipe (Mesa 22)
# has no cooperative matrices, and Mesa 26 needs a newer C library than Debian 12's, hence a
# separate root rather than a library path. Needs root (debootstrap, chroot); about 5 minutes.
#
# Usage: scripts/tensor-cores/setup.sh [ROOT]   (default /var/tmp/resnet-wgpu-trixie)
set -euo pipefail
ROOT=${1:-/var/tmp/resnet-wgpu-trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
if [ -x "$ROOT/usr/bin/vulkaninfo" ]; then
    echo "tensor-core test root already at $ROOT"
    exit 0
fi
command -v debootstrap >/dev/null || $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
$SUDO debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >/dev/null
echo "deb $MIRROR trixie-backports main" | $SUDO tee "$ROOT/etc/apt/sources.list.d/backports.list" >/dev/null
$SUDO chroot "$ROOT" apt-get update -qq
$SUDO chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t trixie-backports mesa-vulkan-drivers libvulkan1 vulkan-tools >/dev/null
$SUDO chroot "$ROOT" dpkg-query -W mesa-vulkan-drivers
