//! 2-D convolution (NCHW) as a tiled implicit GEMM, forward and both backward passes. See
//! `shaders/conv.wgsl` for the math, the tiling and the dispatch grids.
//!
//! Shapes: x `[N, C, H, W]`, w `[K, C, R, S]`, b `[K]`, y `[N, K, OH, OW]` with
//! `OH = (H + 2 * padding - R) / stride + 1` (likewise OW). The weight gradient reduces over
//! `N * OH * OW`, which can be long: it is split into chunks computed by separate workgroups
//! (split-K) whose partial results a second small kernel sums; the forward pass does the same
//! when its output alone cannot fill the device (small batches).
//!
//! Each GEMM runs in one of seven tile variants ([`ConvTile`]), or under
//! [`ConvPrecision::F16`] on the f16 engine's tiles ([`MmaTile`]); a [`TileModel`] for the
//! adapter picks the tile and the split-K plan per shape, and autotuning ([`crate::ops::tune`])
//! can replace its choice of tile, engine ([`GemmTile`]) and algorithm.
//!
//! On CPU adapters, layers of at most 16 channels and shallow convolutions (few taps) run direct
//! kernels without GEMM tiles (the `narrow` submodule), whose tiles would compute mostly padding
//! there.
//!
//! The 3x3 convolutions of stride 1 and padding 1 run Winograd where [`crate::ConvAlgo`] says
//! so (the `winograd` submodule): transforms around 36 of these GEMMs, batched, with a quarter
//! of the multiply-adds (F(4x4, 3x3)), or 16 with 4/9 of them (F(2x2, 3x3), the f16 engine's
//! and [`crate::WinogradTile::F2`]).
//!
//! This file holds the ops; the submodules, their parts: `kernels` (the uniform params, the
//! compiled tile variants and the multiply engine that dispatches them), `tiles` (the tiles and
//! the tile model), `plan` (the geometry, tap windows, input-gradient phases, each pass's route
//! and the grids), `winograd` and `narrow`.

mod kernels;
mod lanes;
mod narrow;
mod plan;
mod tiles;
mod winograd;

pub(crate) use kernels::mma_configs;
pub use kernels::{CONV_SHADER_VARIANTS, GemmTile, MmaTile, conv_shares_a, mma_stages};
pub use lanes::GEMM_WIDE_READS;
pub(crate) use plan::WEIGHT_COPY_MIN_COLUMNS;
pub use plan::{conv2d_output_size, conv2d_taps};
pub(crate) use tiles::forced_tile;
pub use tiles::{ConvTile, TileModel, conv_stages};
pub(crate) use winograd::F16_TILE as F16_WINOGRAD_TILE;
pub use winograd::{
    WINOGRAD_CHUNK_ELEMENTS, conv2d_winograd, conv2d_winograd_tiles, winograd_transforms_by_quads,
};

use kernels::{
    EPI_ACCUMULATE, Engine, F32_DOUBLE, F32_LANES_DOUBLE, F32_LANES_SINGLE, F32_SHALLOW,
    F32_SINGLE, FORWARD_REDUCE, FORWARD_REDUCE_BN, GyScale, Kernels, Params, TAPS_CROP,
    TAPS_EXPAND, WEIGHTS_RSC, bn_bindings, bn_epilogue, f16_kernels, gy_scale, reduce_splits,
};
use plan::{Geometry, MAX_GRID, Route, SPLIT_MIN_CHUNK, gemm_grid, taps_outer};

use super::tune::{self, Candidate, ConvKey, ConvPass, TunedConv};
use crate::autograd::Var;
use crate::gpu::{
    ConvAlgo, ConvOrder, ConvPrecision, ConvStaging, Gpu, Kernel, MmaConfig, WinogradTile, flag,
    grid_1d, scalar_or_vec4,
};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

fn check_same_gpu(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    a.expect_same_gpu(op, b)
}

/// `y = conv2d(x, w) + b`: x `[N, C, H, W]`, w `[K, C, R, S]`, optional b `[K]`, square
/// `stride` and zero `padding` on every side. Returns y `[N, K, OH, OW]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_tiled(x, w, b, stride, padding, None)
}

/// Whether `gpu` runs the conv GEMMs without workgroup memory or barriers
/// (`shaders/gemm_lanes.wgsl`: on a CPU adapter's plan with subgroups of 4, 8 or 16 lanes,
/// [`Gpu::conv_gemm_lanes`]): Winograd's, and the direct convolutions' through
/// `shaders/im2col.wgsl` where their operands' rows are whole vec4s, no tile is forced and
/// autotuning did not find a tile faster (for tests and benchmarks).
pub fn conv_gemms_without_barriers(gpu: &Gpu) -> bool {
    lanes::lanes_in_use(gpu)
}

/// Whether those GEMMs read 32 bytes at a time where a GEMM's depth allows
/// ([`Gpu::set_conv_wide_reads`], with subgroups of 8 lanes or more; for tuning keys, tests and
/// benchmarks).
pub fn conv_gemm_wide_reads(gpu: &Gpu) -> bool {
    lanes::wide_reads_in_use(gpu)
}

/// Which passes of the convolution run the narrow kernels on `gpu` (`shaders/conv_narrow.wgsl`:
/// on CPU adapters, layers of at most 16 channels and shallow convolutions of few taps):
/// [[`conv2d`], [`conv2d_backward_input`], [`conv2d_backward_weight`]] (for tests and
/// benchmarks).
pub fn conv2d_narrow(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<[bool; 3]> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    Ok(
        [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad]
            .map(|pass| narrow::takes(gpu, &g, pass)),
    )
}

/// [`conv2d`] with a given tile instead of [`TileModel::choose`]'s (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_tiled(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    let tile = tile.map(|t| GemmTile::on(x.gpu(), t));
    forward(x, w, b, stride, padding, tile, false).map(|f| f.y)
}

/// What a forward pass returns: y, and what it leaves for the backward passes.
struct Forward {
    y: Tensor,
    /// The weights' taps-outer copy, when the pass made one ([`Geometry::weights_copy`]; of the
    /// window's weights when it ran a window of taps), which the input gradient can read
    /// instead of copying again.
    copied: Option<Tensor>,
    /// x as the pass laid it out for its GEMM, when asked to keep it and the weight gradient
    /// reads the same layout.
    laid_out: Option<LaidOut>,
}

impl Forward {
    fn of(y: Tensor) -> Forward {
        Forward {
            y,
            copied: None,
            laid_out: None,
        }
    }
}

/// x as a forward pass on the GEMMs without barriers laid it out for its GEMM, in one chunk
/// ([`Gpu::set_conv_keep_laid_out`]): the weight gradient's GEMM reads the same operand, which
/// the backward then need not lay out again.
enum LaidOut {
    /// Winograd's transform V `[α², C, tiles]` with this tile.
    Winograd(WinogradTile, Tensor),
    /// A direct convolution's columns `[C R S, pixels]` (`shaders/im2col.wgsl`).
    Columns(Tensor),
}

impl LaidOut {
    /// V, where laid out with `tile`.
    fn winograd(&self, tile: WinogradTile) -> Option<&Tensor> {
        match self {
            LaidOut::Winograd(t, v) if *t == tile => Some(v),
            _ => None,
        }
    }

    /// The columns, where laid out so.
    fn columns(&self) -> Option<&Tensor> {
        match self {
            LaidOut::Columns(col) => Some(col),
            LaidOut::Winograd(..) => None,
        }
    }
}

/// Whether the weight gradient of `g` will read what a forward pass on `route` lays out: it
/// takes the same route (Winograd with the same tile, or the GEMMs without barriers), as far as
/// known before it runs (an untuned pass's rule or its tuned route: autotuning may yet choose
/// another, and the kept layout then goes unread).
fn weight_grad_reads(gpu: &Gpu, g: &Geometry, route: Route) -> bool {
    !narrow::takes(gpu, g, ConvPass::WeightGrad)
        && g.known_route(gpu, ConvPass::WeightGrad) == route
}

/// [`conv2d_tiled`] with a given engine and tile. With `keep`, x laid out for the weight
/// gradient is kept where the pass runs its GEMM without barriers ([`LaidOut`]).
fn forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    tile: Option<GemmTile>,
    keep: bool,
) -> Result<Forward> {
    const OP: &str = "conv2d";
    let g = forward_geometry(OP, x, w, stride, padding)?;
    if let Some(win) = g.tap_window() {
        // The weight gradient crops the same window: it reads what the window laid out.
        let w = g.crop_taps(OP, w, win)?;
        return forward(x, &w, b, stride, win.padding, tile, keep);
    }
    if let Some(b) = b {
        b.expect_f32_rank(OP, "bias b [K]", 1)?;
        check_same_gpu(OP, x, b)?;
        if b.shape()[0] != g.w[0] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias has {} elements but the weights {:?} have {} output channels",
                    b.shape()[0],
                    g.w,
                    g.w[0]
                ),
            ));
        }
    }
    let gpu = x.gpu();
    if tile.is_none() && narrow::takes(gpu, &g, ConvPass::Forward) {
        return Ok(Forward::of(narrow::forward(OP, &g, x, w, b)?));
    }
    let model = TileModel::for_gpu(gpu);
    let tile = match g.route(
        gpu,
        ConvPass::Forward,
        tile,
        || g.forward_tile(&model),
        |c| match c {
            Candidate::Gemm(t) => forward(x, w, b, stride, padding, Some(t), false).map(drop),
            Candidate::Winograd { f16, tile } => {
                let epilogue = winograd::Epilogue::Bias(b);
                winograd::forward(OP, &g, x, w, epilogue, f16, tile, false).map(drop)
            }
            Candidate::Lanes => lanes::forward(OP, &g, x, w, lanes::Out::Bias(b), false).map(drop),
        },
    )? {
        route @ Route::Winograd { f16, tile } => {
            let epilogue = winograd::Epilogue::Bias(b);
            let keep = keep && weight_grad_reads(gpu, &g, route);
            let (y, v) = winograd::forward(OP, &g, x, w, epilogue, f16, tile, keep)?;
            return Ok(Forward {
                laid_out: v.map(|v| LaidOut::Winograd(tile, v)),
                ..Forward::of(y)
            });
        }
        Route::Lanes => {
            let keep = keep && weight_grad_reads(gpu, &g, Route::Lanes);
            let (y, col) = lanes::forward(OP, &g, x, w, lanes::Out::Bias(b), keep)?;
            return Ok(Forward {
                laid_out: col.map(LaidOut::Columns),
                ..Forward::of(y)
            });
        }
        Route::Direct(tile) => tile,
    };
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, OP)?;
    let (m, n) = g.forward_gemm();
    let engine = Engine::for_gpu(gpu, tile, || g.forward_tile(&model));
    let (chunk, splits) = g.forward_splits(&model, engine.dims);
    let taps_outer = g.forward_taps_outer(gpu, engine.dims);
    let copy = g.weights_copy(OP, w, taps_outer)?;
    let wk = copy.as_ref().unwrap_or(w);
    let bias = b.map_or(w.buffer(), |b| b.buffer());
    if splits == 1 {
        let grid = gemm_grid(OP, m, n, engine.dims)?;
        engine.dispatch(
            gpu,
            &engine.kernels.forward,
            &g.gemm_constants(taps_outer),
            &g.params(b.is_some(), 0, 1),
            &[x.buffer(), wk.buffer(), bias, y.buffer()],
            w.buffer(),
            grid,
        )?;
    } else {
        let part = forward_partials(OP, &g, &engine, x, wk, taps_outer, chunk, splits)?;
        gpu.dispatch(
            &FORWARD_REDUCE,
            &g.params(b.is_some(), chunk, splits),
            &[part.buffer(), bias, y.buffer()],
            crate::gpu::grid_for_elements(y.numel()),
        )?;
    }
    Ok(Forward {
        copied: copy,
        ..Forward::of(y)
    })
}

/// The validated geometry of a forward convolution of x `[N, C, H, W]` with w `[K, C, R, S]`.
fn forward_geometry(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Geometry> {
    let xs = x.nchw(op, "input x [N, C, H, W]")?;
    let ws = w.nchw(op, "weight w [K, C, R, S]")?;
    check_same_gpu(op, x, w)?;
    Geometry::new(op, xs, ws, stride, padding)
}

/// A split-K forward pass's first dispatch (the output tiles alone are too few to fill the
/// GPU): split z of the reduction, over grid z, writes its partial output at z * len(y).
/// `w` is in the GEMM's order ([`Geometry::weights_copy`]). Returns the partials
/// `[splits, len(y)]` for a reduce kernel to sum.
#[allow(clippy::too_many_arguments)]
fn forward_partials(
    op: &'static str,
    g: &Geometry,
    engine: &Engine,
    x: &Tensor,
    w: &Tensor,
    taps_outer: bool,
    chunk: usize,
    splits: usize,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let (m, n) = g.forward_gemm();
    let (tile_m, tile_n, _) = engine.dims;
    let grid = [
        n.div_ceil(tile_n) as u32,
        m.div_ceil(tile_m) as u32,
        splits as u32,
    ];
    let part = Tensor::uninit(gpu, &[splits, m * n], DType::F32, op)?;
    engine.dispatch(
        gpu,
        &engine.kernels.forward,
        &g.gemm_constants(taps_outer),
        &g.params(false, chunk, splits),
        &[x.buffer(), w.buffer(), w.buffer(), part.buffer()],
        w.buffer(),
        grid,
    )?;
    Ok(part)
}

/// The eval-mode batch norm (PyTorch's `BatchNorm2d.eval()`) that [`conv2d_bn_eval`] applies
/// to a convolution's output: per-output-channel tensors of shape `[K]` and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct EvalBatchNorm<'a> {
    /// Scale (`weight` in PyTorch).
    pub gamma: &'a Tensor,
    /// Shift (`bias` in PyTorch).
    pub beta: &'a Tensor,
    /// Running mean.
    pub running_mean: &'a Tensor,
    /// Running variance.
    pub running_var: &'a Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Inference's conv block in one kernel: `batch_norm_eval(conv2d(x, w))`, plus `residual` when
/// given, then a ReLU when `relu`. x `[N, C, H, W]`, w `[K, C, R, S]` (no conv bias: fold one
/// into `running_mean` as `mean - b`), residual of the output's shape `[N, K, OH, OW]`.
///
/// The same arithmetic, in the same order, as [`conv2d`], [`crate::ops::batch_norm_eval`] and
/// [`crate::ops::add_relu`] (or [`crate::ops::add`]) run one after another
/// ([`conv2d_bn_eval_unfused`]), but the convolution's output is normalised in registers
/// instead of making three more passes over memory. Needs 8 storage buffers per shader stage
/// (WebGPU's default limit; 9 with the f16 engine); on a device with fewer it runs the separate
/// kernels. Where the convolution runs Winograd ([`crate::ConvAlgo`]), its output transform
/// applies the batch norm (7 storage buffers). Where a CPU adapter's plan runs the forward
/// pass on its narrow kernels ([`conv2d_narrow`]), which have no such epilogue, the separate
/// kernels run. Records no gradient: for training use the [`Var`] ops.
pub fn conv2d_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    conv2d_bn_eval_tiled(x, w, stride, padding, bn, residual, relu, None)
}

/// [`conv2d_bn_eval`] with a given tile instead of [`TileModel::choose`]'s (for tests).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bn_eval_tiled(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_bn_eval";
    let g = forward_geometry(OP, x, w, stride, padding)?;
    if let Some(win) = g.tap_window() {
        let w = g.crop_taps(OP, w, win)?;
        return conv2d_bn_eval_tiled(x, &w, stride, win.padding, bn, residual, relu, tile);
    }
    crate::ops::batchnorm::expect_channel_vectors(
        OP,
        ("weights", w),
        g.w[0],
        &[
            ("batch-norm gamma", bn.gamma),
            ("batch-norm beta", bn.beta),
            ("batch-norm running_mean", bn.running_mean),
            ("batch-norm running_var", bn.running_var),
        ],
    )?;
    if let Some(r) = residual {
        r.expect_f32_shape(OP, "residual", "the output's", &g.y_shape())?;
        check_same_gpu(OP, x, r)?;
    }
    let gpu = x.gpu();
    // The narrow kernels have no batch-norm epilogue; they and a batch-norm pass beat the
    // tiled GEMMs (with barriers) that would take the fused pass on a CPU adapter.
    if tile.is_none() && narrow::takes(gpu, &g, ConvPass::Forward) {
        return conv2d_bn_eval_unfused(x, w, stride, padding, bn, residual, relu);
    }
    let model = TileModel::for_gpu(gpu);
    // The plain forward's route: the same GEMMs, tuned once for both.
    let route = g.route(
        gpu,
        ConvPass::Forward,
        tile.map(|t| GemmTile::on(gpu, t)),
        || g.forward_tile(&model),
        |c| match c {
            Candidate::Gemm(t) => forward(x, w, None, stride, padding, Some(t), false).map(drop),
            Candidate::Winograd { f16, tile } => {
                let epilogue = winograd::Epilogue::Bias(None);
                winograd::forward(OP, &g, x, w, epilogue, f16, tile, false).map(drop)
            }
            Candidate::Lanes => {
                lanes::forward(OP, &g, x, w, lanes::Out::Bias(None), false).map(drop)
            }
        },
    )?;
    let tile = match route {
        // Winograd's output transform applies the batch norm (7 storage buffers).
        Route::Winograd { f16, tile } if gpu.limits().max_storage_buffers_per_shader_stage >= 7 => {
            let epilogue = winograd::Epilogue::BatchNorm { bn, residual, relu };
            return Ok(winograd::forward(OP, &g, x, w, epilogue, f16, tile, false)?.0);
        }
        Route::Winograd { .. } => None,
        Route::Lanes => {
            let out = lanes::Out::BatchNorm { bn, residual, relu };
            return Ok(lanes::forward(OP, &g, x, w, out, false)?.0);
        }
        Route::Direct(tile) => tile,
    };
    let engine = Engine::for_gpu(gpu, tile, || g.forward_tile(&model));
    if gpu.limits().max_storage_buffers_per_shader_stage < 8 + engine.f16 as u32 {
        return conv2d_bn_eval_unfused(x, w, stride, padding, bn, residual, relu);
    }
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, OP)?;
    let (chunk, splits) = g.forward_splits(&model, engine.dims);
    let taps_outer = g.forward_taps_outer(gpu, engine.dims);
    let copy = g.weights_copy(OP, w, taps_outer)?;
    let wk = copy.as_ref().unwrap_or(w);
    let mut params = g.params(false, chunk, splits);
    params.eps = bn.eps;
    let flags = bn_epilogue(residual.is_some(), relu);
    let bn_bound = bn_bindings(bn, residual);
    if splits == 1 {
        let (m, n) = g.forward_gemm();
        let mut bound = vec![(1, x.buffer()), (2, wk.buffer()), (4, y.buffer())];
        bound.extend(bn_bound);
        let mut constants = g.gemm_constants(taps_outer).to_vec();
        constants.extend(flags);
        engine.dispatch_bound(
            gpu,
            &engine.kernels.forward_bn,
            &constants,
            &params,
            bound,
            w.buffer(),
            gemm_grid(OP, m, n, engine.dims)?,
        )?;
    } else {
        let part = forward_partials(OP, &g, &engine, x, wk, taps_outer, chunk, splits)?;
        let mut bound = vec![(1, part.buffer()), (4, y.buffer())];
        bound.extend(bn_bound);
        gpu.dispatch_bound(
            &FORWARD_REDUCE_BN,
            &flags,
            &params,
            &bound,
            crate::gpu::grid_for_elements(y.numel()),
        )?;
    }
    Ok(y)
}

/// [`conv2d_bn_eval`] as separate kernels: [`conv2d`], [`crate::ops::batch_norm_eval`] (with
/// the ReLU when there is no residual) and [`crate::ops::add_relu`] or [`crate::ops::add`]. The
/// fallback on devices with too few storage buffers and for the narrow kernels, and the fused
/// kernel's reference in tests.
#[doc(hidden)]
pub fn conv2d_bn_eval_unfused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let y = conv2d(x, w, None, stride, padding)?;
    let y = crate::ops::batch_norm_eval(
        &y,
        bn.gamma,
        bn.beta,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        relu && residual.is_none(),
    )?;
    match residual {
        None => Ok(y),
        Some(r) if relu => crate::ops::add_relu(&y, r),
        Some(r) => crate::ops::add(&y, r),
    }
}

/// Gradient of [`conv2d`] with respect to its input: gy `[N, K, OH, OW]`, w `[K, C, R, S]`, the
/// input's shape `x_shape`. Returns gx of shape `x_shape`.
pub fn conv2d_backward_input(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_backward_input_tiled(gy, w, x_shape, stride, padding, None)
}

/// [`conv2d_backward_input`] with a given tile (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_backward_input_tiled(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    input_grad_with_tile(gy, w, x_shape, stride, padding, tile, None)
}

/// `sum` plus [`conv2d_backward_input`]`(gy, w, x_shape, stride, padding)`, written over `sum`,
/// which it returns: the gradient of an input that has another from its other consumers (a
/// residual block's input has its shortcut's). Where the plan's kernels can (the GEMMs, their
/// split-K reduction and Winograd's output transform) they add as they write gx, so the sum
/// costs a read of `sum` instead of a pass of its own; otherwise [`axpy`](super::axpy) adds
/// after. The same bits as that `axpy` after [`conv2d_backward_input`] either way.
pub fn conv2d_backward_input_add(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    sum: Tensor,
) -> Result<Tensor> {
    conv2d_backward_input_add_tiled(gy, w, x_shape, stride, padding, sum, None)
}

/// [`conv2d_backward_input_add`] with a given tile (for tests).
#[doc(hidden)]
pub fn conv2d_backward_input_add_tiled(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    sum: Tensor,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    input_grad_with_tile(gy, w, x_shape, stride, padding, tile, Some(sum))
}

/// [`backward_input`] of the tensor-level functions: a given f32 tile or the plan's, gy's own
/// f16 scale, and no copy of the weights from a forward.
fn input_grad_with_tile(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
    sum: Option<Tensor>,
) -> Result<Tensor> {
    let tile = tile.map(|t| GemmTile::on(gy.gpu(), t));
    let scale = GyScale::new();
    backward_input(gy, w, None, x_shape, stride, padding, tile, &scale, sum)
}

/// `sum + gx` written over `sum` (when given), for the paths whose kernels do not add as they
/// write: as the tape's accumulation would.
fn add_to(sum: Option<Tensor>, gx: Tensor) -> Result<Tensor> {
    match sum {
        Some(sum) => {
            super::axpy(&sum, 1.0, &gx)?;
            Ok(sum)
        }
        None => Ok(gx),
    }
}

/// [`conv2d_backward_input_tiled`] with a given engine and tile, gy's f16 operand scale shared
/// with the weight gradient, and the weights' taps-outer copy (`copied`, [`forward`]'s) when
/// the caller has it; with `sum`, [`conv2d_backward_input_add`].
#[allow(clippy::too_many_arguments)]
fn backward_input(
    gy: &Tensor,
    w: &Tensor,
    copied: Option<&Tensor>,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<GemmTile>,
    scale: &GyScale,
    sum: Option<Tensor>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    let ws = w.nchw(OP, "weight w [K, C, R, S]")?;
    check_same_gpu(OP, gy, w)?;
    if let Some(sum) = &sum {
        sum.expect_f32_shape(OP, "the gradient so far", "the input's", &x_shape)?;
        check_same_gpu(OP, gy, sum)?;
    }
    let g = Geometry::new(OP, x_shape, ws, stride, padding)?;
    g.expect_y_shape(OP, gys)?;
    if let Some(win) = g.tap_window() {
        let w = g.crop_taps(OP, w, win)?;
        return backward_input(
            gy,
            &w,
            copied,
            x_shape,
            stride,
            win.padding,
            tile,
            scale,
            sum,
        );
    }
    let gpu = gy.gpu();
    if tile.is_none() && narrow::takes(gpu, &g, ConvPass::InputGrad) {
        return add_to(sum, narrow::backward_input(OP, &g, gy, w)?);
    }
    let model = TileModel::for_gpu(gpu);
    // Tuned, one tile serves every phase; the model's is that of the first phase.
    let tile = match g.route(
        gpu,
        ConvPass::InputGrad,
        tile,
        || g.input_plan(gpu, &model, None).model_tile(&model),
        |c| match c {
            // Timed into gradients of their own: `sum` is written once, by the choice.
            Candidate::Gemm(t) => {
                let t = Some(t);
                backward_input(gy, w, copied, x_shape, stride, padding, t, scale, None).map(drop)
            }
            Candidate::Winograd { f16, tile } => {
                winograd::backward_input(OP, &g, gy, w, scale, f16, tile, None).map(drop)
            }
            Candidate::Lanes => lanes::backward_input(OP, &g, gy, w, None).map(drop),
        },
    )? {
        Route::Winograd { f16, tile } => {
            return winograd::backward_input(OP, &g, gy, w, scale, f16, tile, sum);
        }
        Route::Lanes => return lanes::backward_input(OP, &g, gy, w, sum),
        Route::Direct(tile) => tile,
    };
    let accumulate = sum.is_some();
    let gx = match sum {
        Some(sum) => sum,
        None => Tensor::uninit(gpu, &x_shape, DType::F32, OP)?,
    };
    let plan = g.input_plan(gpu, &model, tile);
    // The f16 engine scales gy (operand B) by a power of two that keeps it clear of f16's
    // subnormals; the f32 engine binds no scale. The phases share one engine.
    let f16 = plan.phases.first().is_some_and(|ph| ph.engine.f16);
    let scale = gy_scale(f16, gy, scale)?;
    let scale_buffer = scale.as_ref().map_or(w.buffer(), |t| t.buffer());
    let len = x_shape.iter().product::<usize>();
    // With split-K the phases write partial results, which a reduce kernel sums into gx.
    let part = match plan.splits {
        1 => None,
        splits => Some(Tensor::uninit(gpu, &[splits, len], DType::F32, OP)?),
    };
    let out = part.as_ref().unwrap_or(&gx);
    // The GEMMs add into the sum only without a split; with one, the reduction does.
    let gemms_add = accumulate && part.is_none();
    // A phase that no tap reaches (a kernel smaller than the stride, as in the 1x1 stride-2
    // downsampling convs: three of four pixels) only has zeros to write: one clear does that
    // for all of them, instead of a GEMM dispatch each with an empty reduction. A sum the
    // GEMMs add into keeps its values there.
    if plan.skips_pixels && !gemms_add {
        gpu.clear(out.buffer());
    }
    let [k, c, r, s] = ws;
    // The phases that reduce taps outer read the weights' [K, R, S, C] copy: the forward's
    // when the caller has it, else one made here.
    let taps = plan.phases.iter().any(|ph| g.input_taps_outer(gpu, ph));
    let copy = match copied {
        Some(t) if taps && t.shape() == [k, r, s, c] => Some(t.clone()),
        _ => g.weights_copy(OP, w, taps)?,
    };
    let wk = copy.as_ref().unwrap_or(w);
    let mut p = g.params(false, 0, plan.splits);
    p.scaled = if f16 { 2 } else { 0 };
    p.reduce_len = len as u32;
    let add = flag("ACCUMULATE", gemms_add);
    if plan.merges(&g, gpu) {
        // One dispatch for all phases, grid x = column tile * phases + phase, z = split: the
        // shader derives each workgroup's phase, its taps and pixels (NR and NS go unused).
        let ph = &plan.phases[0];
        let (tile_m, tile_n, _) = ph.engine.dims;
        let cols = plan.phases.iter().map(|ph| ph.cols).max().unwrap_or(0);
        let grid = [
            (cols.div_ceil(tile_n) * plan.phases.len()) as u32,
            ph.rows.div_ceil(tile_m) as u32,
            plan.splits as u32,
        ];
        let [kh, kw, order] = g.gemm_constants(true);
        let constants = [
            kh,
            kw,
            ("NR", 1.0),
            ("NS", 1.0),
            order,
            ("MERGED", 1.0),
            add,
        ];
        ph.engine.dispatch(
            gpu,
            &ph.engine.kernels.backward_input,
            &constants,
            &p,
            &[gy.buffer(), wk.buffer(), out.buffer()],
            scale_buffer,
            grid,
        )?;
    } else {
        for ph in &plan.phases {
            let taps = g.input_taps_outer(gpu, ph);
            p.chunk = ph.chunk as u32;
            (p.r0, p.s0, p.nr, p.ns) = (ph.r0 as u32, ph.s0 as u32, ph.nr as u32, ph.ns as u32);
            (p.h0, p.w0, p.hc, p.wc) = (ph.h0 as u32, ph.w0 as u32, ph.hc as u32, ph.wc as u32);
            let mut grid = gemm_grid(OP, ph.rows, ph.cols, ph.engine.dims)?;
            if plan.splits > 1 {
                // Split only with few tiles: the column tiles fit x alone, and z is the split.
                grid[2] = plan.splits as u32;
            }
            let [kh, kw, order] = g.gemm_constants(taps);
            let constants = [
                kh,
                kw,
                ("NR", ph.nr as f64),
                ("NS", ph.ns as f64),
                order,
                add,
            ];
            ph.engine.dispatch(
                gpu,
                &ph.engine.kernels.backward_input,
                &constants,
                &p,
                &[
                    gy.buffer(),
                    if taps { wk } else { w }.buffer(),
                    out.buffer(),
                ],
                scale_buffer,
                grid,
            )?;
        }
    }
    if let Some(part) = &part {
        let mut p = g.params(false, 0, plan.splits);
        p.reduce_len = len as u32;
        if accumulate {
            p.epilogue = EPI_ACCUMULATE;
        }
        reduce_splits(gpu, &p, part, &gx, len)?;
    }
    Ok(gx)
}

/// Number of split-K chunks [`conv2d`] uses for these shapes on `gpu` (1: no split; for tests
/// and benchmarks).
pub fn conv2d_forward_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    let model = TileModel::for_gpu(gpu);
    let engine = Engine::for_gpu(gpu, None, || g.forward_tile(&model));
    Ok(g.forward_splits(&model, engine.dims).1)
}

/// Which of the three conv passes reduce taps outer ([`crate::ConvOrder::Rsc`]) with these
/// shapes on `gpu`, with `tile` or the plan's: [forward (and [`conv2d_bn_eval`]), input gradient
/// (any of its phases), weight gradient] (for tests and benchmarks). The first two then read a
/// `[K, R, S, C]` copy of the weights, one dispatch more each, unless the kernel (or the window
/// of taps they run, [`conv2d_taps`]) is 1x1; with a larger kernel they reduce taps outer only
/// when their GEMM has at least 1,024 columns (output pixels of the batch, or of an input-
/// gradient phase), which amortize the copy.
pub fn conv2d_taps_outer(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<[bool; 3]> {
    let g = Geometry::windowed("conv2d", x_shape, w_shape, stride, padding)?;
    let c = g.w[1];
    let model = TileModel::for_gpu(gpu);
    let tile = tile.map(|t| GemmTile::on(gpu, t));
    let forward = Engine::for_gpu(gpu, tile, || g.forward_tile(&model));
    let input = g
        .input_plan(gpu, &model, tile)
        .phases
        .iter()
        .any(|ph| g.input_taps_outer(gpu, ph));
    let weight = Engine::for_gpu(gpu, tile, || g.weight_tile(&model));
    Ok([
        g.forward_taps_outer(gpu, forward.dims),
        input,
        taps_outer(gpu, c, weight.dims.1),
    ])
}

/// Number of split-K chunks [`conv2d_backward_weight`] uses for these shapes on `gpu` (for
/// tests and benchmarks).
pub fn conv2d_weight_grad_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d_backward_weight", x_shape, w_shape, stride, padding)?;
    let model = TileModel::for_gpu(gpu);
    let engine = Engine::for_gpu(gpu, None, || g.weight_tile(&model));
    Ok(g.weight_splits(&model, engine.dims).1)
}

/// Number of split-K chunks [`conv2d_backward_input`] uses for these shapes on `gpu` (1: no
/// split; for tests and benchmarks).
pub fn conv2d_input_grad_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d_backward_input", x_shape, w_shape, stride, padding)?;
    Ok(g.input_plan(gpu, &TileModel::for_gpu(gpu), None).splits)
}

/// GEMM dispatches of [`conv2d_backward_input`]'s direct plan for these shapes on `gpu`, with
/// `tile` or the plan's: one per sub-pixel phase that taps reach, or one for all of them where
/// they merge (every phase reducing taps outer; for tests and benchmarks).
pub fn conv2d_input_grad_gemms(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<usize> {
    let g = Geometry::windowed("conv2d_backward_input", x_shape, w_shape, stride, padding)?;
    let tile = tile.map(|t| GemmTile::on(gpu, t));
    let plan = g.input_plan(gpu, &TileModel::for_gpu(gpu), tile);
    Ok(if plan.merges(&g, gpu) {
        1
    } else {
        plan.phases.len()
    })
}

/// Gradient of [`conv2d`] with respect to its weights: x `[N, C, H, W]`, gy `[N, K, OH, OW]`, the
/// weights' shape `w_shape`. Returns gw of shape `w_shape`.
pub fn conv2d_backward_weight(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_backward_weight_tiled(x, gy, w_shape, stride, padding, None)
}

/// [`conv2d_backward_weight`] with a given tile (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_backward_weight_tiled(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    let tile = tile.map(|t| GemmTile::on(x.gpu(), t));
    backward_weight(x, gy, w_shape, stride, padding, tile, &GyScale::new(), None)
}

/// [`conv2d_backward_weight_tiled`] with a given engine and tile, gy's f16 operand scale
/// shared with the input gradient, and x as the forward pass laid it out, if it kept it (read
/// where this pass's route reads the same layout).
#[allow(clippy::too_many_arguments)]
fn backward_weight(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<GemmTile>,
    scale: &GyScale,
    laid_out: Option<&LaidOut>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_weight";
    let xs = x.nchw(OP, "input x [N, C, H, W]")?;
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    check_same_gpu(OP, x, gy)?;
    let g = Geometry::new(OP, xs, w_shape, stride, padding)?;
    g.expect_y_shape(OP, gys)?;
    if let Some(win) = g.tap_window() {
        let [k, c, _, _] = w_shape;
        let window = [k, c, win.taps.0, win.taps.1];
        let gw = backward_weight(x, gy, window, stride, win.padding, tile, scale, laid_out)?;
        return g.expand_taps(OP, &gw, win);
    }
    let [k, c, r, s] = w_shape;
    let crs = c * r * s;
    let gpu = x.gpu();
    if tile.is_none() && narrow::takes(gpu, &g, ConvPass::WeightGrad) {
        return narrow::backward_weight(OP, &g, x, gy);
    }
    let model = TileModel::for_gpu(gpu);
    let tile = match g.route(
        gpu,
        ConvPass::WeightGrad,
        tile,
        || g.weight_tile(&model),
        |c| match c {
            Candidate::Gemm(t) => {
                backward_weight(x, gy, w_shape, stride, padding, Some(t), scale, None).map(drop)
            }
            Candidate::Winograd { f16, tile } => {
                winograd::backward_weight(OP, &g, x, gy, scale, f16, tile, None).map(drop)
            }
            Candidate::Lanes => lanes::backward_weight(OP, &g, x, gy, None).map(drop),
        },
    )? {
        Route::Winograd { f16, tile } => {
            let v = laid_out.and_then(|l| l.winograd(tile));
            return winograd::backward_weight(OP, &g, x, gy, scale, f16, tile, v);
        }
        Route::Lanes => {
            let col = laid_out.and_then(LaidOut::columns);
            return lanes::backward_weight(OP, &g, x, gy, col);
        }
        Route::Direct(tile) => tile,
    };
    let engine = Engine::for_gpu(gpu, tile, || g.weight_tile(&model));
    let (chunk, splits) = g.weight_splits(&model, engine.dims);
    let (tile_m, tile_n, _) = engine.dims;
    // Taps outer when each column tile lies in one tap.
    let taps_outer = taps_outer(gpu, c, tile_n);
    let col_tiles = crs.div_ceil(tile_n);
    let row_tiles = k.div_ceil(tile_m);
    if col_tiles > MAX_GRID || row_tiles > MAX_GRID {
        return Err(Error::shape(
            OP,
            format!("weights {w_shape:?} need too many workgroups"),
        ));
    }
    let grid = [col_tiles as u32, row_tiles as u32, splits as u32];
    let mut params = g.params(false, chunk, splits);
    params.reduce_len = (k * crs) as u32;
    // The f16 engine scales gy (operand A) by a power of two that keeps it clear of f16's
    // subnormals.
    let scale = gy_scale(engine.f16, gy, scale)?;
    if engine.f16 {
        params.scaled = 1;
    }
    let scale_buffer = scale.as_ref().map_or(x.buffer(), |t| t.buffer());
    let gw = Tensor::uninit(gpu, &w_shape, DType::F32, OP)?;
    let part = match splits {
        1 => None,
        _ => Some(Tensor::uninit(gpu, &[splits, k * crs], DType::F32, OP)?),
    };
    engine.dispatch(
        gpu,
        &engine.kernels.backward_weight,
        &g.gemm_constants(taps_outer),
        &params,
        &[
            x.buffer(),
            gy.buffer(),
            part.as_ref().unwrap_or(&gw).buffer(),
        ],
        scale_buffer,
        grid,
    )?;
    if let Some(part) = &part {
        reduce_splits(gpu, &params, part, &gw, k * crs)?;
    }
    Ok(gw)
}

impl Var {
    /// `conv2d(self, w) + b` (see [`conv2d`]), recording its backward. Only what the backward
    /// needs is kept: x when w is tracked (for gw), w when x is tracked (for gx), with the
    /// forward's taps-outer copy of w when it made one ([`crate::ConvOrder::Rsc`]), which the
    /// input gradient reads instead of copying w again. On a CPU adapter's plan, x as the
    /// forward's GEMM laid it out is kept too when w is tracked, for gw's GEMM to read
    /// ([`Gpu::set_conv_keep_laid_out`]). Gradients of untracked inputs (the
    /// network's input, frozen weights) are not computed.
    pub fn conv2d(&self, w: &Var, b: Option<&Var>, stride: usize, padding: usize) -> Result<Var> {
        let need_gx = self.requires_grad();
        let need_gw = w.requires_grad();
        let need_gb = b.is_some_and(|b| b.requires_grad());
        let Forward {
            y,
            copied,
            laid_out,
        } = forward(
            self.tensor(),
            w.tensor(),
            b.map(|b| b.tensor()),
            stride,
            padding,
            None,
            need_gw && self.tensor().gpu().conv_keep_laid_out(),
        )?;
        let x_shape = self.tensor().nchw("conv2d", "x")?;
        let w_shape = w.tensor().nchw("conv2d", "w")?;
        let saved_x = need_gw.then(|| self.tensor().clone());
        // With the forward's taps-outer copy of w, if it made one, for the input gradient to
        // read instead of copying again.
        let saved_w = need_gx.then(|| (w.tensor().clone(), copied));
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        Var::record_accumulating("conv2d", &inputs, y, move |gy, so_far| {
            let gy = &gy;
            // Passes on the f16 engine scale gy by the same power of two: computed once.
            let scale = GyScale::new();
            let gx = match &saved_w {
                // x's gradient so far (a residual block's input, from its shortcut when this is
                // the block's first conv) is added as gx is written.
                Some((w, copied)) => Some(backward_input(
                    gy,
                    w,
                    copied.as_ref(),
                    x_shape,
                    stride,
                    padding,
                    None,
                    &scale,
                    so_far.take(0),
                )?),
                None => None,
            };
            let gw = match &saved_x {
                Some(x) => Some(backward_weight(
                    x,
                    gy,
                    w_shape,
                    stride,
                    padding,
                    None,
                    &scale,
                    laid_out.as_ref(),
                )?),
                None => None,
            };
            let mut grads = vec![gx, gw];
            if has_bias {
                grads.push(if need_gb {
                    Some(crate::ops::sum_channels(gy)?)
                } else {
                    None
                });
            }
            Ok(grads)
        })
    }
}
