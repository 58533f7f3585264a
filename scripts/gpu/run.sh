#!/bin/bash
# Runs on the lent GPU machine (see scripts/gpu/pack.sh): golden/op tests, the bench, and a
# full Fashion-MNIST training run, each under its own time limit, logs under $OUT.
# Usage: [TILE_SWEEP="--batch 128 --iters 3"] [F16_BENCH="--what models --models r18"] \
#        [F16_TILE_SWEEP="--batch 128 --iters 3"] [CHECKED_BENCH="--what convs"] [TORCH_REF=1] [AUTOTUNE_BENCH="--what models --models r18"] \
#        [CRS_BENCH="--what models --models r18"] [SINGLE_BENCH="--what models --models r18"] \
#        [ALGO_BENCH="--what all --models r18"] [AUTOTUNE_F16_BENCH="--what models --models r18"] \
#        [WINO2_BENCH="--what convs"] [F16_DOUBLE_BENCH="--what models --models r18"] \
#        [R50_CONV_BENCH="--batch 128 --iters 5"] [NO_SUBGROUPS_BENCH="--what memory"] \
#        bash scripts/gpu/run.sh [train-seconds] [bench-args...]
# TILE_SWEEP: also run `bench --what tiles` with these arguments (every conv pass of every
# ResNet-18 shape with each tile in turn, and the library's plan), after the other benches.
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
# R50_CONV_BENCH: also run `bench --what convs --conv-shapes r50` with these arguments: the conv
# table for ResNet-50's 23 distinct shapes (mostly 1x1), convs-r50.txt.
# NO_SUBGROUPS_BENCH: also run the bench with RESNET_WGPU_SUBGROUPS=0 (every level of the
# workgroup reductions through workgroup memory, session 25) and these arguments: the
# comparison for the default subgroup shuffles.
# Every bench writes its figures as JSON under $OUT too (so bench-args must not include --json).
# PREFLIGHT=1: not on the GPU machine but here, before a call, with the same variables and
# arguments: every f32 bench of the call as the call would run it, on wgpu's no-op backend with
# an H100's limits (`bench --noop`, one iteration, no warm-up), from target/release/examples
# (`cargo build --release --examples` first). No kernel runs, but each bench goes through its
# arguments and its full-size calls, so a bench that would fail on the GPU fails here, before
# device time is spent on it. The tests, the driver's statistics, PyTorch, the f16 and
# autotuned benches and the training run are left out. Logs under $OUT (default
# /tmp/preflight); the script's status says whether every bench ran through.
# RUN_BUDGET_S (default 570, under the device tool's 600 s per call): the whole script's time.
# Each part gets at most what is left of it, and a part that would get under 30 s is skipped
# with a line saying so, so that the call ends on its own, its logs complete, and the parts
# that come first (tests, the driver's statistics, PyTorch, the main bench) are the ones that
# run. A session's device time is 15 minutes in all, the machine's start included: set the
# budget to what the call may take.
set -u
TRAIN_S=${1:-300}; shift || true
PREFLIGHT=${PREFLIGHT:-}
if [ -n "$PREFLIGHT" ]; then
  OUT=${OUT:-/tmp/preflight}; mkdir -p "$OUT"
  RUN_BUDGET_S=${RUN_BUDGET_S:-3600}
fi
deadline=$(( $(date +%s) + ${RUN_BUDGET_S:-570} ))
failed=()
# part NAME CAP: print NAME and set $lim to CAP seconds or what is left of the budget, if less;
# fails (and says so) when that is under 30 s.
part() {
  local left=$(( deadline - $(date +%s) ))
  lim=$(( left < $2 ? left : $2 ))
  if [ "$lim" -lt 30 ]; then echo "== $1: skipped, $left s left of RUN_BUDGET_S"; return 1; fi
  echo "== $1"
}
# bench NAME ARGS...: the bench with ARGS, its table in $OUT/NAME.txt and its JSON in
# $OUT/NAME.json, at most 200 s; returns the bench's status (0 when skipped).
bench() {
  local name=$1; shift
  if [ -n "$PREFLIGHT" ]; then
    case " $* " in
      *" --precision f16 "*|*" --autotune "*) echo "== $name: not in the preflight"; return 0 ;;
    esac
    set -- "$@" --noop --iters 1 --warmup-ms 0
  fi
  part "$name: bench $*" 200 || return 0
  local t0=$(date +%s)
  timeout "$lim" $B/bench "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
  local status=${PIPESTATUS[0]}
  echo "$name took $(( $(date +%s) - t0 )) s"
  [ "$status" = 0 ] || failed+=("$name ($status)")
  return "$status"
}
if [ -n "$PREFLIGHT" ]; then
  B=target/release/examples
  TRAIN_S=0 TORCH_REF=
else
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done; ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  export WGPU_BACKEND=vulkan RESNET_WGPU_GOLDEN=$PWD/.carry/golden
  B=/tmp/bin && mkdir -p $B && tar -C $B -xJf .carry/bin.tar.xz
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv \
    2>&1 | tee "$OUT/nvidia-smi.txt"
  echo "== tests"; t0=$(date +%s)
  for t in $B/test-*; do
    part "$(basename $t)" 120 || continue
    expect=0; [ "$(basename $t)" = test-tensor_cores ] && expect=1
    RESNET_WGPU_EXPECT_TENSOR_CORES=$expect timeout "$lim" "$t" --test-threads 8 2>&1 \
      | grep -E "test result|FAILED|panicked|failed" | head -20
  done 2>&1 | tee "$OUT/tests.log"
  echo "tests took $(( $(date +%s) - t0 )) s"
  # What the driver's compiler made of each kernel (registers and the like; seconds).
  if part "kernel statistics" 60; then
    timeout "$lim" $B/kernel_stats --json "$OUT/kernel-stats.json" 2>&1 | tee "$OUT/kernel-stats.txt" | tail -3
  fi
  if [ -n "${TORCH_REF:-}" ] && part "PyTorch reference" 150; then
    t0=$(date +%s)
    PYTHONUNBUFFERED=1 timeout "$lim" python3 scripts/gpu/pytorch_reference.py --json "$OUT/torch.json" \
      2>&1 | tee "$OUT/torch.txt"
    echo "PyTorch reference took $(( $(date +%s) - t0 )) s"
  fi
fi
bench bench "$@"
status=$?
if [ "$status" != 0 ] && [ "$status" != 124 ]; then
  # The first runs without wgpu's shader checks: if the driver rejected those kernels, the run
  # still measures something with the checks back on.
  echo "== bench failed ($status): again with RESNET_WGPU_SHADER_CHECKS=1"
  RESNET_WGPU_SHADER_CHECKS=1 bench bench-checked-fallback "$@"
fi
# The comparisons, most telling first, so that the budget cuts the least telling: the
# algorithms and Winograd tiles, the reductions without subgroups (short), the f16 engine and its stagings, the f32 staging, ResNet-50's
# conv shapes, tuning, the old reduction order and the shader checks, and last the tile sweeps
# (every tile on every pass: the longest).
if [ -n "${ALGO_BENCH:-}" ]; then
  for algo in direct winograd; do bench bench-$algo --algo $algo $ALGO_BENCH; done
fi
[ -n "${WINO2_BENCH:-}" ] && bench bench-wino2 --winograd-tile 2 $WINO2_BENCH
[ -n "${NO_SUBGROUPS_BENCH:-}" ] && RESNET_WGPU_SUBGROUPS=0 bench bench-no-subgroups $NO_SUBGROUPS_BENCH
[ -n "${F16_BENCH:-}" ] && bench bench-f16 --precision f16 $F16_BENCH
[ -n "${F16_DOUBLE_BENCH:-}" ] && bench bench-f16-double --precision f16 --f16-staging double $F16_DOUBLE_BENCH
[ -n "${SINGLE_BENCH:-}" ] && bench bench-single --staging single $SINGLE_BENCH
[ -n "${R50_CONV_BENCH:-}" ] && bench convs-r50 --what convs --conv-shapes r50 $R50_CONV_BENCH
[ -n "${AUTOTUNE_BENCH:-}" ] && bench bench-autotune --autotune $AUTOTUNE_BENCH
[ -n "${AUTOTUNE_F16_BENCH:-}" ] && bench bench-autotune-f16 --autotune --precision f16 $AUTOTUNE_F16_BENCH
if [ -n "${CRS_BENCH:-}" ]; then
  bench bench-crs --order crs $CRS_BENCH
  [ -n "${F16_BENCH:-}" ] && bench bench-crs-f16 --order crs --precision f16 $CRS_BENCH
fi
[ -n "${CHECKED_BENCH:-}" ] && RESNET_WGPU_SHADER_CHECKS=1 bench bench-checked $CHECKED_BENCH
[ -n "${TILE_SWEEP:-}" ] && bench tiles --what tiles $TILE_SWEEP
[ -n "${F16_TILE_SWEEP:-}" ] && bench tiles-f16 --what tiles --precision f16 $F16_TILE_SWEEP
if [ "$TRAIN_S" -gt 0 ] && part "train" "$TRAIN_S"; then
  t0=$(date +%s)
  timeout "$lim" $B/train --data-dir .carry/fmnist --metrics-json "$OUT/metrics.jsonl" \
    --out /tmp/fm.safetensors --quiet 2>&1 | tee "$OUT/train.log"
  echo "train took $(( $(date +%s) - t0 )) s"
fi
echo "== done, $(( deadline - $(date +%s) )) s of RUN_BUDGET_S left"
if [ -n "$PREFLIGHT" ]; then
  [ ${#failed[@]} = 0 ] && { echo "preflight: every bench ran through"; exit 0; }
  echo "preflight: failed: ${failed[*]}"; exit 1
fi
