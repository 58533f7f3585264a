#!/bin/bash
# Runs on the lent GPU machine (see scripts/gpu/pack.sh): golden/op tests, the bench, and a
# full Fashion-MNIST training run, each under its own time limit, logs under $OUT.
# Usage: [TILE_SWEEP="--batch 128 --iters 3"] [F16_BENCH="--what models --models r18"] \
#        [F16_TILE_SWEEP="--batch 128 --iters 3"] [CHECKED_BENCH="--what convs"] [TORCH_REF=1] [AUTOTUNE_BENCH="--what models --models r18"] \
#        [CRS_BENCH="--what models --models r18"] [SINGLE_BENCH="--what models --models r18"] \
#        [ALGO_BENCH="--what all --models r18"] [AUTOTUNE_F16_BENCH="--what models --models r18"] \
#        [WINO2_BENCH="--what convs"] [F16_DOUBLE_BENCH="--what models --models r18"] \
#        bash scripts/gpu/run.sh [train-seconds] [bench-args...]
# TILE_SWEEP: first run `bench --what tiles` with these arguments (every conv pass of every
# ResNet-18 shape with each tile in turn, and the library's plan).
# F16_BENCH: also run the bench with --precision f16 (tensor cores) and these arguments, after
# the f32 one; the tensor-core test binary runs with RESNET_WGPU_EXPECT_TENSOR_CORES=1 there.
# F16_DOUBLE_BENCH: also run the bench with --precision f16 --f16-staging double (the f16
# engine's two staged copies, session 21) and these arguments: the comparison for F16_BENCH's
# default single copy.
# F16_TILE_SWEEP: also run `bench --what tiles --precision f16` with these arguments (each f16
# tile on every conv pass, and the f16 plan).
# CHECKED_BENCH: also run the bench with these arguments and RESNET_WGPU_SHADER_CHECKS=1
# (wgpu's index clamping and loop bounding back on), to measure what dropping them gains.
# TORCH_REF: first run scripts/gpu/pytorch_reference.py (PyTorch's figures on the same card, as
# the reference table measures them), when the machine has PyTorch.
# AUTOTUNE_F16_BENCH: also run the bench with --autotune --precision f16 and these arguments
# (both engines' tiles and Winograd on either timed per pass; the f32 engine runs where faster).
# AUTOTUNE_BENCH: also run the bench with --autotune and these arguments (every figure with the
# conv tiles tuned on this GPU; the tuned tiles and every tile's time end its output).
# CRS_BENCH: also run the bench with --order crs (the conv GEMMs' channel-major reduction
# everywhere) and these arguments, and the same with --precision f16 when F16_BENCH is set: the
# comparison for the default taps-outer order (ConvOrder::Rsc).
# SINGLE_BENCH: also run the bench with --staging single (one copy of each staged chunk in the
# f32 conv kernels, two barriers per chunk) and these arguments: the comparison for the default
# double staging (ConvStaging::Double).
# ALGO_BENCH: also run the bench with --algo direct (every conv by the implicit GEMM) and with
# --algo winograd (Winograd on every 3x3 stride-1 conv, with the tile per pass) and these
# arguments: the comparisons for the default (ConvAlgo::Auto: on GPUs Winograd F(4x4, 3x3) from
# 64 channels, F(2x2, 3x3) from 128).
# WINO2_BENCH: also run the bench with --winograd-tile 2 (F(2x2, 3x3), sessions 14-16's
# Winograd, where Auto runs it) and these arguments: the comparison for F(4x4, 3x3).
# Every bench writes its figures as JSON under $OUT too (so bench-args must not include --json).
set -u
TRAIN_S=${1:-300}; shift || true
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
export WGPU_BACKEND=vulkan RESNET_WGPU_GOLDEN=$PWD/.carry/golden
B=/tmp/bin && mkdir -p $B && tar -C $B -xJf .carry/bin.tar.xz
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
echo "== tests"; t0=$(date +%s)
for t in $B/test-*; do
  echo "-- $(basename $t)"
  expect=0; [ "$(basename $t)" = test-tensor_cores ] && expect=1
  RESNET_WGPU_EXPECT_TENSOR_CORES=$expect timeout 120 "$t" --test-threads 8 2>&1 | grep -E "test result|FAILED|panicked|failed" | head -20
done 2>&1 | tee "$OUT/tests.log"
echo "tests took $(( $(date +%s) - t0 )) s"
# What the driver's compiler made of each kernel (registers and the like; seconds).
echo "== kernel statistics"
timeout 60 $B/kernel_stats --json "$OUT/kernel-stats.json" 2>&1 | tee "$OUT/kernel-stats.txt" | tail -3
if [ -n "${TORCH_REF:-}" ]; then
  echo "== PyTorch reference"; t0=$(date +%s)
  PYTHONUNBUFFERED=1 timeout 150 python3 scripts/gpu/pytorch_reference.py --json "$OUT/torch.json" 2>&1 \
    | tee "$OUT/torch.txt"
  echo "PyTorch reference took $(( $(date +%s) - t0 )) s"
fi
# Each bench also writes its figures as JSON beside its text output.
if [ -n "${TILE_SWEEP:-}" ]; then
  echo "== conv tile sweep"; t0=$(date +%s)
  timeout 200 $B/bench --what tiles $TILE_SWEEP --json "$OUT/tiles.json" 2>&1 | tee "$OUT/tiles.txt"
  echo "tile sweep took $(( $(date +%s) - t0 )) s"
fi
echo "== bench"; t0=$(date +%s)
timeout 200 $B/bench "$@" --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
status=${PIPESTATUS[0]}
echo "bench took $(( $(date +%s) - t0 )) s"
if [ "$status" != 0 ] && [ "$status" != 124 ]; then
  # The first runs without wgpu's shader checks: if the driver rejected those kernels, the run
  # still measures something with the checks back on.
  echo "== bench failed ($status): again with RESNET_WGPU_SHADER_CHECKS=1"
  RESNET_WGPU_SHADER_CHECKS=1 timeout 200 $B/bench "$@" --json "$OUT/bench-checked-fallback.json" 2>&1 \
    | tee "$OUT/bench-checked-fallback.txt"
fi
if [ -n "${F16_BENCH:-}" ]; then
  echo "== bench --precision f16"
  timeout 200 $B/bench --precision f16 $F16_BENCH --json "$OUT/bench-f16.json" 2>&1 | tee "$OUT/bench-f16.txt"
fi
if [ -n "${F16_DOUBLE_BENCH:-}" ]; then
  echo "== bench --precision f16 --f16-staging double"
  timeout 200 $B/bench --precision f16 --f16-staging double $F16_DOUBLE_BENCH \
    --json "$OUT/bench-f16-double.json" 2>&1 | tee "$OUT/bench-f16-double.txt"
fi
if [ -n "${F16_TILE_SWEEP:-}" ]; then
  echo "== f16 conv tile sweep"
  timeout 200 $B/bench --what tiles --precision f16 $F16_TILE_SWEEP --json "$OUT/tiles-f16.json" 2>&1 \
    | tee "$OUT/tiles-f16.txt"
fi
if [ -n "${CRS_BENCH:-}" ]; then
  echo "== bench --order crs"
  timeout 200 $B/bench --order crs $CRS_BENCH --json "$OUT/bench-crs.json" 2>&1 | tee "$OUT/bench-crs.txt"
  if [ -n "${F16_BENCH:-}" ]; then
    echo "== bench --order crs --precision f16"
    timeout 200 $B/bench --order crs --precision f16 $CRS_BENCH --json "$OUT/bench-crs-f16.json" 2>&1 \
      | tee "$OUT/bench-crs-f16.txt"
  fi
fi
if [ -n "${SINGLE_BENCH:-}" ]; then
  echo "== bench --staging single"
  timeout 200 $B/bench --staging single $SINGLE_BENCH --json "$OUT/bench-single.json" 2>&1 \
    | tee "$OUT/bench-single.txt"
fi
if [ -n "${ALGO_BENCH:-}" ]; then
  for algo in direct winograd; do
    echo "== bench --algo $algo"
    timeout 200 $B/bench --algo $algo $ALGO_BENCH --json "$OUT/bench-$algo.json" 2>&1 \
      | tee "$OUT/bench-$algo.txt"
  done
fi
if [ -n "${WINO2_BENCH:-}" ]; then
  echo "== bench --winograd-tile 2"
  timeout 200 $B/bench --winograd-tile 2 $WINO2_BENCH --json "$OUT/bench-wino2.json" 2>&1 \
    | tee "$OUT/bench-wino2.txt"
fi
if [ -n "${CHECKED_BENCH:-}" ]; then
  echo "== bench with RESNET_WGPU_SHADER_CHECKS=1"
  RESNET_WGPU_SHADER_CHECKS=1 timeout 200 $B/bench $CHECKED_BENCH --json "$OUT/bench-checked.json" 2>&1 \
    | tee "$OUT/bench-checked.txt"
fi
if [ -n "${AUTOTUNE_BENCH:-}" ]; then
  echo "== bench --autotune"; t0=$(date +%s)
  timeout 200 $B/bench --autotune $AUTOTUNE_BENCH --json "$OUT/bench-autotune.json" 2>&1 \
    | tee "$OUT/bench-autotune.txt"
  echo "autotuned bench took $(( $(date +%s) - t0 )) s"
fi
if [ -n "${AUTOTUNE_F16_BENCH:-}" ]; then
  echo "== bench --autotune --precision f16"; t0=$(date +%s)
  timeout 200 $B/bench --autotune --precision f16 $AUTOTUNE_F16_BENCH \
    --json "$OUT/bench-autotune-f16.json" 2>&1 | tee "$OUT/bench-autotune-f16.txt"
  echo "autotuned f16 bench took $(( $(date +%s) - t0 )) s"
fi
if [ "$TRAIN_S" -gt 0 ]; then
  echo "== train"; t0=$(date +%s)
  timeout "$TRAIN_S" $B/train --data-dir .carry/fmnist --metrics-json "$OUT/metrics.jsonl" \
    --out /tmp/fm.safetensors --quiet 2>&1 | tee "$OUT/train.log"
  echo "train took $(( $(date +%s) - t0 )) s"
fi
