#!/bin/bash
# The next GPU run's call (docs/gpu-runs/README.md, "The plan"): scripts/gpu/run.sh with every
# comparison set. On the device machine, after `bash scripts/gpu/pack.sh` here (carry .gl and
# .carry, timeout_s 600): `bash scripts/gpu/plan.sh`. Here, before that, and in CI:
# `PREFLIGHT=1 bash scripts/gpu/plan.sh` runs each of its f32 benches on the no-op device at
# full size (run.sh's PREFLIGHT), so that the plan the GPU will run is known to run through.
# Each variable already set, even to nothing, is kept: a second call on a warm machine sets the
# parts the first ran to nothing (ALGO_BENCH= ...). RUN_BUDGET_S and OUT pass through to run.sh.
set -u
cd "$(dirname "$0")/../.."
# plan_part NAME ARGS: export NAME=ARGS unless NAME is set already.
plan_part() { [ -n "${!1+set}" ] || export "$1=$2"; }
plan_part TORCH_REF "1"
plan_part ALGO_BENCH "--batch 128 --iters 5 --what all --models r18"
plan_part WINO2_BENCH "--batch 128 --iters 5 --what convs"
plan_part NO_SUBGROUPS_BENCH "--batch 128 --iters 10 --what memory"
plan_part F16_BENCH "--batch 128 --iters 5 --what models --models r18"
plan_part F16_DOUBLE_BENCH "--batch 128 --iters 5 --what models --models r18"
plan_part SINGLE_BENCH "--batch 128 --iters 5 --what models --models r18"
plan_part R50_CONV_BENCH "--batch 128 --iters 5"
plan_part AUTOTUNE_BENCH "--batch 128 --iters 5 --what models --models r18"
plan_part AUTOTUNE_F16_BENCH "--batch 128 --iters 5 --what models --models r18"
plan_part TILE_SWEEP "--batch 128 --iters 3"
plan_part F16_TILE_SWEEP "--batch 128 --iters 3"
exec bash scripts/gpu/run.sh 0 --batch 128 --iters 10 --what all --models r18,main --families 40
