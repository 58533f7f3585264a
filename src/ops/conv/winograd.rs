//! Winograd F(m x m, 3x3) for the 3x3 convolutions of stride 1 and padding 1: the forward pass,
//! the input gradient (itself such a convolution, of gy with the kernel turned by 180 degrees
//! and its channels swapped) and the weight gradient, each as α² GEMMs (α = m + 2) over the
//! m x m output tiles: F(4x4, 3x3) (36 GEMMs, a quarter of the direct convolution's
//! multiply-adds) or F(2x2, 3x3) (16 GEMMs, 4/9 of them; the f16 engine's), chosen per pass
//! ([`tile_for`], [`Gpu::set_winograd_tile`]). `shaders/winograd.wgsl` has the math of both.
//!
//! A forward pass (or input gradient): the weights' transform U `[α², rows, depth]` (one
//! dispatch), then per chunk of images the input's transform V `[α², depth, tiles]`, the α²
//! GEMMs `M[ξ] = U[ξ] V[ξ]` (`conv_forward` of a 1x1 convolution over the tiles, batched over
//! grid z: the direct kernels' tiles, staging and plan) and the output transform into y (or
//! gx). The weight gradient: per chunk the transforms V of x and GY of gy, and the α² GEMMs
//! `dU[ξ] = GY[ξ] V[ξ]ᵀ` (`conv_backward_weight`, batched and split like the direct one's),
//! whose partial results over splits and chunks one reduction sums; then dU's transform into
//! gw. The transformed tensors hold α²/m² values per output pixel and channel (4 for F(2x2),
//! 2.25 for F(4x4) where the planes' sides are multiples of 4); the chunks keep each below
//! [`WINOGRAD_CHUNK_ELEMENTS`] (ResNet-18 at 224x224, batch 128, F(4x4): layer1 in four chunks,
//! layer2 in two, layer3 in two, layer4 in one).

use super::lanes::{self, gemm_on_lanes};
use super::tune::ConvPass;
use super::{
    Engine, EvalBatchNorm, GemmTile, Geometry, GyScale, MAX_GRID, SPLIT_MIN_CHUNK, TileModel,
    bn_epilogue, conv_shares_a, reduce_splits, taps_outer,
};
use crate::gpu::{ConvAlgo, Gpu, Kernel, WinogradTile, flag, grid_for_elements};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use wgpu::Buffer;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    channels: u32,
    height: u32,
    width: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles: u32,
    base: u32,
    has_bias: u32,
    rows: u32,
    cols: u32,
    flip: u32,
    eps: f32,
}

/// A kernel of `shaders/winograd_quads.wgsl`, compiled after winograd.wgsl (and a lanes file).
macro_rules! quads_kernel {
    ($entry:literal) => {
        kernel!("winograd_quads.wgsl", $entry, "", "winograd.wgsl")
    };
}

/// A Winograd tile's transforms (the same Params in every shader).
struct Kernels {
    weights: Kernel,
    input: Transform,
    output: Transform,
    /// Inference's output transform with the batch norm (residual, ReLU) in its epilogue.
    output_bn: Transform,
    gy: Transform,
    weights_grad: Kernel,
}

/// A transform between a tensor's planes and the transformed tensor (V, GY or M), and where
/// it has them, its twins that move values as vec4s by quads of subgroup lanes
/// (`shaders/winograd_quads.wgsl`: the same values, fewer memory accesses on CPU adapters).
struct Transform {
    plain: Kernel,
    quads: Option<Quads>,
}

/// A transform's twins by quads of lanes: the transformed values as vec4s (`any`), and also
/// the planes' rows (`rows`, for planes whose width is a multiple of 4).
struct Quads {
    any: Kernel,
    rows: Kernel,
    /// Whether `rows` also reads the planes' values one at a time (binding 1): the input's
    /// patches reach a value past each end of a row's aligned vec4.
    rows_reads_scalars: bool,
}

/// How a transform's kernel reaches memory, which sets its bindings.
#[derive(Clone, Copy, PartialEq)]
enum Access {
    /// winograd.wgsl's: every value a scalar.
    Plain,
    /// The transformed tensor as vec4s.
    Quads,
    /// The planes' rows as vec4s too, and with `scalars` the input's values past each end of
    /// a row's vec4.
    Rows { scalars: bool },
}

impl Access {
    /// The bindings of a transform of x or gy (`src`) into V or GY (`dst`).
    fn transform_bindings<'a>(self, src: &'a Buffer, dst: &'a Buffer) -> Vec<(u32, &'a Buffer)> {
        match self {
            Access::Plain => vec![(1, src), (2, dst)],
            Access::Quads => vec![(1, src), (9, dst)],
            Access::Rows { scalars: true } => vec![(1, src), (9, dst), (10, src)],
            Access::Rows { scalars: false } => vec![(9, dst), (10, src)],
        }
    }

    /// The bindings of an output transform's M and of its output (y or gx).
    fn output_slots(self) -> (u32, u32) {
        match self {
            Access::Plain => (1, 2),
            Access::Quads => (10, 2),
            Access::Rows { .. } => (10, 9),
        }
    }

    /// The bindings of an output transform from M (`m`) into y or gx (`out`), with `bias`.
    fn output_bindings<'a>(
        self,
        m: &'a Buffer,
        out: &'a Buffer,
        bias: &'a Buffer,
    ) -> [(u32, &'a Buffer); 3] {
        let (m_at, out_at) = self.output_slots();
        [(m_at, m), (out_at, out), (3, bias)]
    }

    /// The bindings of an output transform with the batch norm from M (`m`) into y (`out`),
    /// with the batch norm's channel vectors (gamma, beta, running mean, running variance)
    /// and the residual (`res`; any buffer but `out` without one).
    fn output_bn_bindings<'a>(
        self,
        m: &'a Buffer,
        out: &'a Buffer,
        [gamma, beta, mean, var]: [&'a Buffer; 4],
        res: &'a Buffer,
    ) -> [(u32, &'a Buffer); 7] {
        let (m_at, out_at) = self.output_slots();
        let res_at = match self {
            Access::Rows { .. } => 11,
            Access::Plain | Access::Quads => 8,
        };
        [
            (m_at, m),
            (out_at, out),
            (4, gamma),
            (5, beta),
            (6, mean),
            (7, var),
            (res_at, res),
        ]
    }
}

impl Transform {
    /// The kernel for a chunk of `tiles` tiles on planes `width` wide, and how it reaches
    /// memory: by quads where [`winograd_transforms_by_quads`] and `tiles` is a multiple of 4 (each
    /// quad then lies in one channel, and each plane holds whole vec4s), by rows too where
    /// `width` is a multiple of 4 (a tile's row then starts an aligned vec4).
    fn kernel(&self, gpu: &Gpu, tiles: usize, width: usize) -> (&Kernel, Access) {
        match &self.quads {
            Some(quads) if tiles.is_multiple_of(4) && winograd_transforms_by_quads(gpu) => {
                match width.is_multiple_of(4) {
                    true => {
                        let scalars = quads.rows_reads_scalars;
                        (&quads.rows, Access::Rows { scalars })
                    }
                    false => (&quads.any, Access::Quads),
                }
            }
            _ => (&self.plain, Access::Plain),
        }
    }
}

/// Whether F(4x4, 3x3)'s transforms move vec4s by quads of lanes here: where the GEMMs
/// without barriers run (a CPU adapter's plan with verified subgroups) on subgroups of 8 or 16
/// lanes (lavapipe). SwiftShader's 4 lanes run them at about half the plain transforms' speed
/// (its shuffles cost more than the accesses they save; docs/speed.md, "Winograd's transforms
/// by quads of lanes"). For tests and benchmarks.
pub fn winograd_transforms_by_quads(gpu: &Gpu) -> bool {
    lanes::lanes_in_use(gpu) && gpu.conv_gemm_lanes().is_some_and(|n| n >= 8)
}

const F2_KERNELS: Kernels = Kernels {
    weights: kernel!("winograd.wgsl", "wino_weights"),
    input: Transform {
        plain: kernel!("winograd.wgsl", "wino_input"),
        quads: None,
    },
    output: Transform {
        plain: kernel!("winograd.wgsl", "wino_output"),
        quads: None,
    },
    output_bn: Transform {
        plain: kernel!("winograd.wgsl", "wino_output_bn"),
        quads: None,
    },
    gy: Transform {
        plain: kernel!("winograd.wgsl", "wino_gy"),
        quads: None,
    },
    weights_grad: kernel!("winograd.wgsl", "wino_weights_grad"),
};

const F4_KERNELS: Kernels = Kernels {
    weights: kernel!("winograd.wgsl", "wino4_weights"),
    input: Transform {
        plain: kernel!("winograd.wgsl", "wino4_input"),
        quads: Some(Quads {
            any: quads_kernel!("wino4_input_quads"),
            rows: quads_kernel!("wino4_input_rows"),
            rows_reads_scalars: true,
        }),
    },
    output: Transform {
        plain: kernel!("winograd.wgsl", "wino4_output"),
        quads: Some(Quads {
            any: quads_kernel!("wino4_output_quads"),
            rows: quads_kernel!("wino4_output_rows"),
            rows_reads_scalars: false,
        }),
    },
    output_bn: Transform {
        plain: kernel!("winograd.wgsl", "wino4_output_bn"),
        quads: Some(Quads {
            any: quads_kernel!("wino4_output_bn_quads"),
            rows: quads_kernel!("wino4_output_bn_rows"),
            rows_reads_scalars: false,
        }),
    },
    gy: Transform {
        plain: kernel!("winograd.wgsl", "wino4_gy"),
        quads: Some(Quads {
            any: quads_kernel!("wino4_gy_quads"),
            rows: quads_kernel!("wino4_gy_rows"),
            rows_reads_scalars: false,
        }),
    },
    weights_grad: kernel!("winograd.wgsl", "wino4_weights_grad"),
};

fn kernels(tile: WinogradTile) -> &'static Kernels {
    match tile {
        WinogradTile::F2 => &F2_KERNELS,
        WinogradTile::F4 => &F4_KERNELS,
    }
}

/// The only tile Winograd runs with its GEMMs on the f16 engine: F(2x2, 3x3), whose
/// transforms grow values by at most 4; F(4x4, 3x3)'s grow them up to 49 times, more than the
/// f16 operands hold.
pub(crate) const F16_TILE: WinogradTile = WinogradTile::F2;

/// The tiles Winograd may run with its GEMMs on the f32 engine: the one
/// [`Gpu::set_winograd_tile`] set, else both (chosen per pass by [`tile_for`], or by tuning).
pub(super) fn f32_tiles(gpu: &Gpu) -> Vec<WinogradTile> {
    gpu.winograd_tile()
        .map_or(WinogradTile::ALL.to_vec(), |t| vec![t])
}

/// The tile `pass` of `g` runs Winograd with, its GEMMs on the f16 engine (`f16`) or the f32
/// one: [`F16_TILE`] on the f16 engine; on the f32 one the gpu's [`Gpu::winograd_tile`], else
/// the tile whose GEMMs do fewer multiply-adds ([`gemm_macs`]).
pub(super) fn tile_for(gpu: &Gpu, f16: bool, g: &Geometry, pass: ConvPass) -> WinogradTile {
    if f16 {
        return F16_TILE;
    }
    if let Some(tile) = gpu.winograd_tile() {
        return tile;
    }
    let cost = |t| gemm_macs(gpu, g, pass, t);
    if cost(WinogradTile::F4) <= cost(WinogradTile::F2) {
        WinogradTile::F4
    } else {
        WinogradTile::F2
    }
}

/// The multiply-adds of the GEMMs of `pass` of `g` through `tile`, without the factor both tiles
/// share (the channels the forward pass and the input gradient reduce over, the weight
/// gradient's input channels): α² times the rows and columns, padded to the f32 model's GEMM
/// tile, for the forward pass and the input gradient (whose columns are the output tiles:
/// F(4x4, 3x3) has a quarter as many as F(2x2, 3x3), which on small batches of small planes
/// leaves most of a column tile empty), α² times the output channels and the output tiles for
/// the weight gradient (which reduces over the tiles).
fn gemm_macs(gpu: &Gpu, g: &Geometry, pass: ConvPass, tile: WinogradTile) -> usize {
    let [n, c, h, w] = g.x;
    let rows = if pass == ConvPass::InputGrad {
        c
    } else {
        g.w[0]
    };
    let tiles = n * h.div_ceil(tile.m()) * w.div_ceil(tile.m());
    let gemm = if pass == ConvPass::WeightGrad {
        rows * tiles
    } else {
        let model = TileModel::for_engine(gpu, false);
        let (bm, bn, _) = model.choose(rows, tiles, tile.positions()).dims();
        rows.next_multiple_of(bm) * tiles.next_multiple_of(bn)
    };
    tile.positions() * gemm
}

/// The tiles a Winograd pass may run on `gpu`: the f32 engine's ([`f32_tiles`]), and
/// [`F16_TILE`] where the f16 engine runs (under [`crate::ConvPrecision::F16`] tuning times
/// both engines).
fn tiles_in_use(gpu: &Gpu) -> Vec<WinogradTile> {
    let mut tiles = f32_tiles(gpu);
    if super::f16_kernels(gpu).is_some() && !tiles.contains(&F16_TILE) {
        tiles.push(F16_TILE);
    }
    tiles
}

/// The default cap on the elements of each transient buffer (V, M, GY): 64 MiB, half WebGPU's
/// default largest storage binding ([`Gpu::set_winograd_chunk_elements`]). The pool keeps each
/// size it has served, so this bounds what Winograd adds to a step's memory: a few such
/// buffers (ResNet-18 at batch 128: two to four of 64 MiB, about 3% of its step's 2.7 GB).
pub const WINOGRAD_CHUNK_ELEMENTS: usize = 1 << 24;

/// Under [`ConvAlgo::Auto`] without tuning, Winograd F(2x2, 3x3) runs on GPUs where the input
/// and output channels are both at least this many. Estimated for an H200 (4.8 TB/s against
/// about 30 TFLOP/s in the GEMMs), not yet measured: the transforms move about 16 (C + K) bytes
/// per output pixel, which at 64 channels costs about as much as the 5/9 of the multiply-adds
/// they save, and at 128 about a third of it. Conv autotuning times both algorithms instead.
const GPU_MIN_CHANNELS_F2: usize = 128;
/// F(4x4, 3x3)'s: it moves about 9 (C + K) bytes per output pixel to save 3/4 of the
/// multiply-adds, which at 64 channels (ResNet's layer1) by the same estimate costs less than
/// half of what it saves.
const GPU_MIN_CHANNELS_F4: usize = 64;
/// On CPU adapters (lavapipe), where moving data is cheap next to arithmetic: from 16.
const CPU_MIN_CHANNELS: usize = 16;
/// On GPUs, under [`ConvAlgo::Auto`], also at least this many output pixels in the batch: on
/// small batches a GPU's time goes to dispatches and their gaps more than to arithmetic, and
/// Winograd adds three dispatches per pass (an estimate, not yet measured on a GPU).
const GPU_MIN_PIXELS: usize = 1024;

/// Under [`ConvAlgo::Auto`], Winograd's GEMMs (with the padding of their last tiles) must do at
/// most this fraction of the direct GEMM's multiply-adds (padded likewise): on small batches
/// of small planes the padding takes back what the transforms save, and the margin below 1 is
/// for the transforms' own work, the weights' among them (α² values per pair of channels,
/// whatever the batch). On lavapipe (`docs/gpu-runs/lavapipe-auto-rule.txt`), ResNet-18's
/// 512-channel 7x7 convolutions at batch 2, where F(2x2, 3x3)'s GEMMs do 0.89 times the
/// direct GEMM's multiply-adds, took 87-98 ms per pass through Winograd against 58-59 direct;
/// at batch 4 (0.44 times) 81-112 against 112-121, and the 256-channel 14x14 ones at batch 1
/// (0.44 times) 22-28 against 28-32. The threshold lies between 0.44 and 0.89; no share
/// nearer to it was measured.
const AUTO_MAX_GEMM_SHARE: f64 = 0.75;

/// Whether `g` can run Winograd on `gpu`: a 3x3 kernel of stride 1 and padding 1 whose single
/// image's transformed tensors fit the cap with each tile in use (so that the route does not
/// depend on the engine). The weight gradient also needs [`weight_grad_fits`].
pub(super) fn fits(gpu: &Gpu, g: &Geometry) -> bool {
    let [_, c, _, _] = g.x;
    let [k, _, r, s] = g.w;
    (r, s, g.stride, g.padding) == (3, 3, 1, 1)
        && tiles_in_use(gpu)
            .into_iter()
            .all(|t| Chunks::new(gpu, g.x, c.max(k), t).fits())
}

/// Whether the weight gradient of `g` (where it [`fits`]) can run Winograd on `gpu`: unless the
/// partial results of its chunks of images, one per chunk at the least, would exceed the
/// transforms' cap (wide layers on large planes, such as 512 channels at 56x56 and batch 128:
/// 64 chunks of 4M values; not ResNet's), where it stays direct.
pub(super) fn weight_grad_fits(gpu: &Gpu, g: &Geometry) -> bool {
    let [_, c, _, _] = g.x;
    let k = g.w[0];
    tiles_in_use(gpu).into_iter().all(|t| {
        let batch = Chunks::new(gpu, g.x, c.max(k), t);
        batch.count() * batch.xi * k * c <= batch.cap
    })
}

/// [`ConvAlgo::Auto`]'s rule without tuning, for a `g` that [`fits`]: enough channels, GEMMs
/// of at most [`AUTO_MAX_GEMM_SHARE`] of the direct GEMM's multiply-adds in the forward pass
/// (both padded to their tiles), and on GPUs enough output pixels.
pub(super) fn auto_rule(gpu: &Gpu, g: &Geometry) -> bool {
    let c = g.x[1];
    let cpu = gpu.plan_for() == crate::PlanFor::Cpu;
    let f16 = super::f16_kernels(gpu).is_some();
    let tile = tile_for(gpu, f16, g, ConvPass::Forward);
    let min_channels = match (cpu, tile) {
        (true, _) => CPU_MIN_CHANNELS,
        (false, WinogradTile::F2) => GPU_MIN_CHANNELS_F2,
        (false, WinogradTile::F4) => GPU_MIN_CHANNELS_F4,
    };
    // The direct forward GEMM padded to the f32 model's tile as Winograd's are (narrow layers
    // pad their rows either way), 9 taps per input channel.
    let (k, pixels) = g.forward_gemm();
    let (bm, bn, _) = g.forward_tile(&TileModel::for_engine(gpu, false)).dims();
    let direct = 9 * k.next_multiple_of(bm) * pixels.next_multiple_of(bn);
    let share = gemm_macs(gpu, g, ConvPass::Forward, tile) as f64 / direct as f64;
    c.min(k) >= min_channels && share <= AUTO_MAX_GEMM_SHARE && (cpu || pixels >= GPU_MIN_PIXELS)
}

/// Whether `g` (where it [`fits`]) runs Winograd on `gpu` without tuning: under
/// [`ConvAlgo::Winograd`], or [`ConvAlgo::Auto`] by its rule.
pub(super) fn by_rule(gpu: &Gpu, g: &Geometry) -> bool {
    match gpu.conv_algo() {
        ConvAlgo::Auto => auto_rule(gpu, g),
        ConvAlgo::Winograd => true,
        ConvAlgo::Direct => false,
    }
}

/// Which passes of the convolution run Winograd with these shapes on `gpu`:
/// [[`crate::ops::conv2d`], [`crate::ops::conv2d_backward_input`],
/// [`crate::ops::conv2d_backward_weight`]] (for tests and benchmarks). With conv autotuning on,
/// a pass already tuned reports its tuned choice; one not yet tuned, the rule's. A pass the
/// narrow kernels take ([`crate::ops::conv2d_narrow`]) runs no Winograd.
pub fn conv2d_winograd(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<[bool; 3]> {
    let tiles = conv2d_winograd_tiles(gpu, x_shape, w_shape, stride, padding)?;
    Ok(tiles.map(|t| t.is_some()))
}

/// [`conv2d_winograd`] with the tile each pass that runs Winograd runs it with.
pub fn conv2d_winograd_tiles(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<[Option<WinogradTile>; 3]> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    if g.tap_window().is_some() {
        return Ok([None; 3]);
    }
    let pass = |pass| match g.known_route(gpu, pass) {
        _ if super::narrow::takes(gpu, &g, pass) => None,
        super::Route::Winograd { tile, .. } => Some(tile),
        super::Route::Direct(_) | super::Route::Lanes => None,
    };
    Ok([
        pass(ConvPass::Forward),
        pass(ConvPass::InputGrad),
        pass(ConvPass::WeightGrad),
    ])
}

/// The forward pass: y `[N, K, H, W]` from x `[N, C, H, W]` and w `[K, C, 3, 3]`, plus the
/// epilogue: the conv's bias ([`super::conv2d`]), or inference's batch norm
/// ([`super::conv2d_bn_eval`]). The GEMMs run on the f16 engine where `f16` (every pass here
/// takes that flag: the gpu's engine, or the one tuning chose), else on the f32 engine, with
/// `tile` (every pass: [`tile_for`]'s, or tuning's; F(2x2, 3x3) on the f16 engine). With
/// `keep`, also returns x's transform V `[α², C, tiles]` where the batch is one chunk and its
/// GEMMs run without barriers, for [`backward_weight`] to read.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    w: &Tensor,
    epilogue: Epilogue<'_>,
    f16: bool,
    tile: WinogradTile,
    keep: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let [_, c, _, _] = g.x;
    let k = g.w[0];
    let gpu = x.gpu();
    let u = weights(op, gpu, tile, w, k, c, false)?;
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, op)?;
    let v = convolve(op, gpu, tile, x, g.x, &u, k, epilogue, f16, None, keep, &y)?;
    Ok((y, v))
}

/// What the output transform adds to the convolution.
#[derive(Clone, Copy)]
pub(super) enum Epilogue<'a> {
    /// The conv's bias, if any.
    Bias(Option<&'a Tensor>),
    /// Added to what the output holds (the input gradient's `sum`, no bias).
    Accumulate,
    /// Inference's eval-mode batch norm, residual and ReLU: y = relu?(batch_norm_eval(v)
    /// (+ residual)) of the convolution's output v, with `conv_forward_bn`'s arithmetic.
    BatchNorm {
        bn: &'a EvalBatchNorm<'a>,
        residual: Option<&'a Tensor>,
        relu: bool,
    },
}

/// The input gradient: gx `[N, C, H, W]` from gy `[N, K, H, W]` and w `[K, C, 3, 3]`.
/// `scale`: gy's f16 operand scale, shared with the weight gradient ([`super::gy_scale`]).
/// With `sum`, the output transform adds gx to it and returns it.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_input(
    op: &'static str,
    g: &Geometry,
    gy: &Tensor,
    w: &Tensor,
    scale: &GyScale,
    f16: bool,
    tile: WinogradTile,
    sum: Option<Tensor>,
) -> Result<Tensor> {
    let [n, c, h, wd] = g.x;
    let k = g.w[0];
    let gpu = gy.gpu();
    let u = weights(op, gpu, tile, w, c, k, true)?;
    let (gx, epilogue) = match sum {
        Some(sum) => (sum, Epilogue::Accumulate),
        None => (
            Tensor::uninit(gpu, &g.x, DType::F32, op)?,
            Epilogue::Bias(None),
        ),
    };
    let scale = transformed_gy_scale(gy, f16, scale)?;
    convolve(
        op,
        gpu,
        tile,
        gy,
        [n, k, h, wd],
        &u,
        c,
        epilogue,
        f16,
        scale.as_ref(),
        false,
        &gx,
    )?;
    Ok(gx)
}

/// The f16 engine's operand scale for gy's transforms (Bᵀ d B in the input gradient, A dy Aᵀ in
/// the weight gradient, [`F16_TILE`]'s), None with the f32 engine: a quarter of
/// the direct passes' (`shared`, or computed into it), since each transformed value sums up to
/// four of gy's, so that the largest stays within [2^13, 2^14) after scaling, below f16's
/// largest finite value.
fn transformed_gy_scale(gy: &Tensor, f16: bool, shared: &GyScale) -> Result<Option<Tensor>> {
    match super::gy_scale(f16, gy, shared)? {
        Some(s) => crate::ops::scale(&s, 0.25).map(Some),
        None => Ok(None),
    }
}

/// `tile`'s U `[α², rows, cols]` from w `[K, C, 3, 3]`: rows K and cols C, or with `flip` (the
/// input gradient's kernel) rows C and cols K.
fn weights(
    op: &'static str,
    gpu: &Gpu,
    tile: WinogradTile,
    w: &Tensor,
    rows: usize,
    cols: usize,
    flip: bool,
) -> Result<Tensor> {
    let u = Tensor::uninit(gpu, &[tile.positions(), rows, cols], DType::F32, op)?;
    let p = Params {
        count: (rows * cols) as u32,
        rows: rows as u32,
        cols: cols as u32,
        flip: flip as u32,
        ..Params::default()
    };
    gpu.dispatch(
        &kernels(tile).weights,
        &p,
        &[w.buffer(), u.buffer()],
        grid_for_elements(rows * cols),
    )?;
    Ok(u)
}

/// The weight gradient: gw `[K, C, 3, 3]` from x `[N, C, H, W]` and gy `[N, K, H, W]`.
/// `scale`: gy's f16 operand scale, shared with the input gradient ([`super::gy_scale`]).
/// `kept`: x's transform V that the forward pass with this tile kept ([`forward`]), read
/// instead of transforming x again.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_weight(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    gy: &Tensor,
    scale: &GyScale,
    f16: bool,
    tile: WinogradTile,
    kept: Option<&Tensor>,
) -> Result<Tensor> {
    let [_, c, _, _] = g.x;
    let k = g.w[0];
    let gpu = x.gpu();
    let batch = Chunks::new(gpu, g.x, c.max(k), tile);
    let (chunks, most, xi) = (batch.count(), batch.most(), batch.xi);
    let lanes = batch
        .iter()
        .all(|(_, _, tiles)| gemm_on_lanes(gpu, f16, tiles, c));
    // The forward kept V only where its one chunk's GEMMs ran without barriers, as these do.
    let kept = kept.filter(|_| lanes && chunks == 1);
    let v = match kept {
        Some(v) => v.clone(),
        None => scratch(op, gpu, xi * c * most)?,
    };
    let gyt = scratch(op, gpu, xi * k * most)?;
    let du = Tensor::uninit(gpu, &[xi, k, c], DType::F32, op)?;
    if lanes {
        // dU[ξ] = GY[ξ] V[ξ]ᵀ per chunk, into dU itself for one chunk, else into a partial
        // result per chunk that one reduction sums.
        let part = match chunks {
            1 => None,
            _ => Some(scratch(op, gpu, chunks * xi * k * c)?),
        };
        for (chunk, first, tiles) in batch.iter() {
            if kept.is_none() {
                batch.transform(gpu, &kernels(tile).input, x, &v, c, first, tiles)?;
            }
            batch.transform(gpu, &kernels(tile).gy, gy, &gyt, k, first, tiles)?;
            let out = part.as_ref().unwrap_or(&du);
            lanes::gemm_nt(gpu, [k, tiles, c], (xi, chunk * xi), [&gyt, &v, out])?;
        }
        if let Some(part) = &part {
            let mut p = g.params(false, 0, chunks);
            p.reduce_len = (xi * k * c) as u32;
            reduce_splits(gpu, &p, part, &du, xi * k * c)?;
        }
        return weights_grad(op, gpu, tile, g, &du);
    }
    // The GEMMs: rows k, columns c, reduced over a chunk's tiles, `pack` positions ξ at a time
    // ([`packed_positions`]: `gemms` GEMMs of rows pk and columns pc), split like the direct
    // weight gradient's (towards the model's target of workgroups per dispatch, in chunks of
    // at least SPLIT_MIN_CHUNK tiles), the partial results of all chunks within the
    // transforms' cap (one per chunk at the least: weight_grad_fits).
    let model = TileModel::for_engine(gpu, f16);
    let reach = most.div_ceil(SPLIT_MIN_CHUNK);
    let skipped = if !f16 && conv_shares_a(gpu) {
        SKIPPED_COST
    } else {
        1.0
    };
    let pack = packed_positions(&model, xi, k, c, reach, skipped);
    let (gemms, pk, pc) = (xi / pack, pack * k, pack * c);
    let gemm_tile = model.choose(pk, pc, gemms * reach);
    let engine = Engine::new(gpu, GemmTile::with_engine(f16, gemm_tile));
    let (tile_m, tile_n, tile_k) = engine.dims;
    let grid_tiles = gemms * pk.div_ceil(tile_m) * pc.div_ceil(tile_n);
    // Each split's partial result holds the GEMMs' diagonal blocks alone: xi k x c, whatever
    // the packing (conv.wgsl's bw_put with BLOCK_M).
    let partial = chunks * xi * k * c;
    let most_splits = MAX_GRID / gemms;
    let splits = model.weight_grad_splits(grid_tiles, most, partial, batch.cap, most_splits);
    let part = scratch(op, gpu, splits * partial)?;
    // With the f16 engine, GY (operand A) is scaled.
    let scale = transformed_gy_scale(gy, f16, scale)?;
    for (chunk, first, tiles) in batch.iter() {
        batch.transform(gpu, &kernels(tile).input, x, &v, c, first, tiles)?;
        batch.transform(gpu, &kernels(tile).gy, gy, &gyt, k, first, tiles)?;
        // Every split of every chunk writes its partial result (zeros past a short chunk's
        // end), so that the reduction sums chunks * splits of them. GEMM j reads the planes
        // of the positions j pack .. (j + 1) pack, which lie one after another in V and GY.
        let gg = Geometry::new(op, [1, pc, 1, tiles], [pk, pc, 1, 1], 1, 0)?;
        // Of each packed GEMM only the P diagonal blocks of k x c are wanted: the epilogue
        // stores those alone, one after another, and where the engine skips idle threads, one
        // whose micro-tile holds none of them is idle.
        let mut constants = gg.gemm_constants(taps_outer(gpu, c, tile_n)).to_vec();
        if pack > 1 {
            constants.extend([("BLOCK_M", k as f64), ("BLOCK_N", c as f64)]);
        }
        let chunk_len = tiles.div_ceil(splits).next_multiple_of(tile_k);
        let mut p = gg.params(false, chunk_len, splits);
        p.batched = gemms as u32;
        p.z_base = (chunk * splits * gemms) as u32;
        p.scaled = scale.is_some() as u32;
        engine.dispatch(
            gpu,
            &engine.kernels.backward_weight,
            &constants,
            &p,
            &[v.buffer(), gyt.buffer(), part.buffer()],
            scale.as_ref().unwrap_or(x).buffer(),
            [
                pc.div_ceil(tile_n) as u32,
                pk.div_ceil(tile_m) as u32,
                (splits * gemms) as u32,
            ],
        )?;
    }
    // dU [xi, k, c]: GEMM j's block q is position j pack + q.
    let mut p = g.params(false, 0, chunks * splits);
    p.reduce_len = (xi * k * c) as u32;
    reduce_splits(gpu, &p, &part, &du, xi * k * c)?;
    weights_grad(op, gpu, tile, g, &du)
}

/// gw `[K, C, 3, 3]` from dU `[α², K, C]` (the weight gradient's last transform).
fn weights_grad(
    op: &'static str,
    gpu: &Gpu,
    tile: WinogradTile,
    g: &Geometry,
    du: &Tensor,
) -> Result<Tensor> {
    let (k, c) = (g.w[0], g.w[1]);
    let gw = Tensor::uninit(gpu, &g.w, DType::F32, op)?;
    let p = Params {
        count: (k * c) as u32,
        rows: k as u32,
        cols: c as u32,
        ..Params::default()
    };
    gpu.dispatch(
        &kernels(tile).weights_grad,
        &p,
        &[du.buffer(), gw.buffer()],
        grid_for_elements(k * c),
    )?;
    Ok(gw)
}

/// The cost of a multiply-add that a packed weight gradient's GEMM skips (a discarded block's,
/// or padding's), relative to one it does, where whole subgroups skip them
/// ([`packed_positions`]): what their staging and barriers cost. On lavapipe, the main job's
/// layer1 (32 channels) took 75-77 ms per weight gradient packed in fours on 128 x 128 (a
/// quarter of the multiply-adds wanted) against 103-108 in pairs on 64 x 64 (half), and
/// layer2's (64) 61-62 ms in pairs on 128 x 128 against 87-90 unpacked on 64 x 64. Any cost
/// below 0.5 picks both, and 128 channels stay unpacked.
const SKIPPED_COST: f64 = 0.25;

/// How many positions ξ each of the weight gradient's GEMMs runs (1, 2, 4 or 8, dividing
/// `xi`): the GEMMs `dU[ξ] = GY[ξ] V[ξ]ᵀ` are `k x c`, which on narrow layers fills a fraction
/// of any GEMM tile (32 x 32: a quarter of 64 x 64), and the kernels' tiles have 256 threads
/// of at least 4 x 4 values. P positions at once multiply GY's `P k` rows (the P positions'
/// planes lie one after another) by V's `P c`: the `P k x P c` product holds the P wanted
/// blocks on its diagonal (the others, one position's GY with another's V, are discarded),
/// for P times the multiply-adds but up to P times fewer padded ones. Chosen by the tile
/// model as the fewest multiply-adds per unit of the tile's rate, padding included (`reach`:
/// the split-K chunks each GEMM may take, for the tile's choice); the GEMMs store the wanted
/// blocks alone, so packing adds no memory. On a CPU adapter the threads skip the multiplies
/// where their micro-tiles hold none of the wanted outputs ([`Engine::skips_idle`]), whole
/// subgroups together; where the subgroups share A ([`conv_shares_a`]), whose tiles give each thread
/// row contiguous rows, a subgroup of 8 lanes lies in one 32 x 32 block, so the discarded
/// blocks and the padding cost little more than their staging: each of their multiply-adds
/// counts `skipped` ([`SKIPPED_COST`]) of a wanted one, and elsewhere a whole one. With it
/// the main job's 32 channels pack in fours (128 x 128, a quarter wanted) and 64 in pairs.
fn packed_positions(
    model: &TileModel,
    xi: usize,
    k: usize,
    c: usize,
    reach: usize,
    skipped: f64,
) -> usize {
    let cost = |pack: usize| {
        let (gemms, m, n) = (xi / pack, pack * k, pack * c);
        let tile = model.choose(m, n, gemms * reach);
        let (bm, bn, _) = tile.dims();
        let padded = m.next_multiple_of(bm) * n.next_multiple_of(bn);
        let wanted = pack * k * c;
        let work = wanted as f64 + skipped * (padded - wanted) as f64;
        gemms as f64 * work / model.rate(tile)
    };
    [1, 2, 4, 8]
        .into_iter()
        .filter(|&pack| xi.is_multiple_of(pack))
        .min_by(|a, b| cost(*a).total_cmp(&cost(*b)))
        .unwrap_or(1)
}

/// `out` `[N, K, H, W]` = the 3x3 stride-1 padding-1 convolution of `src` (`shape` `[N, C, H,
/// W]`) with `tile`'s transformed weights `u` `[α², K, C]` (+ the epilogue), a chunk of images
/// at a time; with the f16 engine (`f16`), `src`'s transform scaled by `scale` (none:
/// unscaled). With `keep`, returns `src`'s transform V where the batch is one chunk whose GEMMs
/// run without barriers (a tensor of its own, of V's size).
#[allow(clippy::too_many_arguments)]
fn convolve(
    op: &'static str,
    gpu: &Gpu,
    tile: WinogradTile,
    src: &Tensor,
    shape: [usize; 4],
    u: &Tensor,
    k: usize,
    epilogue: Epilogue<'_>,
    f16: bool,
    scale: Option<&Tensor>,
    keep: bool,
    out: &Tensor,
) -> Result<Option<Tensor>> {
    let c = shape[1];
    let batch = Chunks::new(gpu, shape, c.max(k), tile);
    let len = batch.xi * c * batch.most();
    let keep = keep && batch.count() == 1 && gemm_on_lanes(gpu, f16, c, batch.most());
    let v = scratch_or_kept(op, gpu, len, keep)?;
    let m = scratch(op, gpu, batch.xi * k * batch.most())?;
    for (_, first, tiles) in batch.iter() {
        batch.transform(gpu, &kernels(tile).input, src, &v, c, first, tiles)?;
        gemm(op, gpu, batch.xi, [k, c, tiles], u, &v, f16, scale, &m)?;
        let grid = grid_for_elements(k * tiles);
        // The plain output transform, with a bias or (`accumulate`) adding to `out`.
        let output = |bias: Option<&Tensor>, accumulate: bool| {
            let p = Params {
                has_bias: bias.is_some() as u32,
                ..batch.params(k, first, tiles)
            };
            let add = [flag("ACCUMULATE", accumulate)];
            let (kernel, access) = kernels(tile).output.kernel(gpu, tiles, shape[3]);
            let bound =
                access.output_bindings(m.buffer(), out.buffer(), bias.unwrap_or(&m).buffer());
            gpu.dispatch_bound(kernel, &add, &p, &bound, grid)
        };
        match epilogue {
            Epilogue::Bias(bias) => output(bias, false)?,
            Epilogue::Accumulate => output(None, true)?,
            Epilogue::BatchNorm { bn, residual, relu } => {
                let p = Params {
                    eps: bn.eps,
                    ..batch.params(k, first, tiles)
                };
                let (kernel, access) = kernels(tile).output_bn.kernel(gpu, tiles, shape[3]);
                let channels = [bn.gamma, bn.beta, bn.running_mean, bn.running_var];
                let bound = access.output_bn_bindings(
                    m.buffer(),
                    out.buffer(),
                    channels.map(Tensor::buffer),
                    residual.map_or(bn.running_mean.buffer(), |r| r.buffer()),
                );
                let flags = bn_epilogue(residual.is_some(), relu);
                gpu.dispatch_bound(kernel, &flags, &p, &bound, grid)?;
            }
        }
    }
    Ok(keep.then_some(v))
}

/// A transient buffer of at least `elements` values (V, M or GY; `lanes.rs`'s columns),
/// rounded up to a power of two: the pool reuses a freed buffer only for the same size, and the
/// transformed tensors of different layers (each within the chunk cap, itself a power of two)
/// then share a few sizes instead of caching one buffer per layer.
pub(super) fn scratch(op: &'static str, gpu: &Gpu, elements: usize) -> Result<Tensor> {
    Tensor::uninit(gpu, &[elements.next_power_of_two()], DType::F32, op)
}

/// [`scratch`] for an operand a pass lays out, or with `keep` a tensor of exactly `elements`
/// values, kept for the weight gradient: it outlives the pass, so no other layer's layout could
/// reuse it, and rounding it up would only waste memory.
pub(super) fn scratch_or_kept(
    op: &'static str,
    gpu: &Gpu,
    elements: usize,
    keep: bool,
) -> Result<Tensor> {
    match keep {
        true => Tensor::uninit(gpu, &[elements], DType::F32, op),
        false => scratch(op, gpu, elements),
    }
}

/// The most values of one transformed tensor (or laid-out operand, `lanes.rs`) per chunk of
/// images: the Winograd cap, within the device's largest storage binding.
pub(super) fn chunk_cap(gpu: &Gpu) -> usize {
    let binding = gpu.limits().max_storage_buffer_binding_size as usize / 4;
    gpu.winograd_chunk_elements().min(binding)
}

/// A batch's m x m output tiles, in chunks of images whose transformed tensors (α² values per
/// tile and channel) stay within the device's cap.
struct Chunks {
    /// The planes' shape `[N, _, H, W]` (input and output alike).
    shape: [usize; 4],
    /// The transformed tile's positions α² (the GEMMs).
    xi: usize,
    /// Tiles per plane along each axis.
    tiles_h: usize,
    tiles_w: usize,
    /// Images per chunk (the last may hold fewer).
    images: usize,
    /// The most values of each transient buffer.
    cap: usize,
    /// The widest transformed tensor's channels.
    channels: usize,
}

impl Chunks {
    /// The chunks of `tile`s of a batch of `shape` whose widest transformed tensor has
    /// `channels`.
    fn new(gpu: &Gpu, shape: [usize; 4], channels: usize, tile: WinogradTile) -> Chunks {
        let [n, _, h, w] = shape;
        let (tiles_h, tiles_w) = (h.div_ceil(tile.m()), w.div_ceil(tile.m()));
        let cap = chunk_cap(gpu);
        let xi = tile.positions();
        Chunks {
            shape,
            xi,
            tiles_h,
            tiles_w,
            images: (cap / (xi * channels * tiles_h * tiles_w)).clamp(1, n),
            cap,
            channels,
        }
    }

    fn count(&self) -> usize {
        self.shape[0].div_ceil(self.images)
    }

    /// Whether a chunk's transformed tensors fit the cap: not where one image's alone exceed
    /// it (hundreds of channels on planes of hundreds of pixels a side), which stay direct.
    fn fits(&self) -> bool {
        self.xi * self.channels * self.tiles_h * self.tiles_w <= self.cap
    }

    /// Tiles of the largest chunk.
    fn most(&self) -> usize {
        self.images * self.tiles_h * self.tiles_w
    }

    /// (index, first image, tiles) of each chunk.
    fn iter(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let n = self.shape[0];
        (0..n)
            .step_by(self.images)
            .enumerate()
            .map(move |(i, first)| {
                (
                    i,
                    first,
                    self.images.min(n - first) * self.tiles_h * self.tiles_w,
                )
            })
    }

    /// A transform's params for `tiles` tiles of planes of `channels` from image `first`.
    fn params(&self, channels: usize, first: usize, tiles: usize) -> Params {
        let [_, _, h, w] = self.shape;
        Params {
            count: (channels * tiles) as u32,
            channels: channels as u32,
            height: h as u32,
            width: w as u32,
            tiles_h: self.tiles_h as u32,
            tiles_w: self.tiles_w as u32,
            tiles: tiles as u32,
            base: (first * channels * h * w) as u32,
            ..Params::default()
        }
    }

    /// Record `transform` (the input's or gy's) from `src`'s chunk into `dst`.
    #[allow(clippy::too_many_arguments)]
    fn transform(
        &self,
        gpu: &Gpu,
        transform: &Transform,
        src: &Tensor,
        dst: &Tensor,
        channels: usize,
        first: usize,
        tiles: usize,
    ) -> Result<()> {
        let (kernel, access) = transform.kernel(gpu, tiles, self.shape[3]);
        gpu.dispatch_bound(
            kernel,
            &[],
            &self.params(channels, first, tiles),
            &access.transform_bindings(src.buffer(), dst.buffer()),
            grid_for_elements(channels * tiles),
        )
    }
}

/// `M[ξ]` `[rows, cols]` = `U[ξ]` `[rows, depth]` `V[ξ]` `[depth, cols]` for the `xi` ξ: the
/// direct forward kernel of a 1x1 convolution of one image of 1 x cols pixels, batched over
/// grid z (with the f16 engine, `f16`, V scaled by `scale` when given).
#[allow(clippy::too_many_arguments)]
fn gemm(
    op: &'static str,
    gpu: &Gpu,
    xi: usize,
    [rows, depth, cols]: [usize; 3],
    u: &Tensor,
    v: &Tensor,
    f16: bool,
    scale: Option<&Tensor>,
    m: &Tensor,
) -> Result<()> {
    if gemm_on_lanes(gpu, f16, depth, cols) {
        return lanes::gemm(gpu, [rows, depth, cols], xi, [u, v, m]);
    }
    let g = Geometry::new(op, [1, depth, 1, cols], [rows, depth, 1, 1], 1, 0)?;
    let tile = TileModel::for_engine(gpu, f16).choose(rows, cols, xi);
    let engine = Engine::new(gpu, GemmTile::with_engine(f16, tile));
    let (tile_m, tile_n, tile_k) = engine.dims;
    let col_tiles = cols.div_ceil(tile_n);
    if col_tiles > MAX_GRID {
        return Err(Error::shape(
            op,
            format!("a chunk of {cols} Winograd tiles needs too many workgroups"),
        ));
    }
    let mut p = g.params(false, 0, 1);
    p.batched = xi as u32;
    // The f16 engine's operand B (V) scaled.
    p.scaled = if scale.is_some() { 2 } else { 0 };
    engine.dispatch(
        gpu,
        &engine.kernels.forward,
        &g.gemm_constants(taps_outer(gpu, depth, tile_k)),
        &p,
        &[v.buffer(), u.buffer(), u.buffer(), m.buffer()],
        scale.unwrap_or(u).buffer(),
        [col_tiles as u32, rows.div_ceil(tile_m) as u32, xi as u32],
    )
}
