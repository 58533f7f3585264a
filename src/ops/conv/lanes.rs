//! GEMMs for CPU adapters without workgroup memory or barriers (`shaders/gemm_lanes.wgsl`), and
//! the direct convolutions through them (`shaders/im2col.wgsl`).
//!
//! Mesa's lavapipe runs a workgroup's subgroups as coroutines that switch at each barrier, and
//! keeps every value that lives across a barrier in the coroutine's frame in memory; each load
//! is a loop over the SIMD lanes whose partial results round-trip through that frame. The tiled
//! kernels (`conv.wgsl`) stage their chunks through workgroup memory between barriers and spend
//! most of their time there. On a CPU the caches hold what workgroup memory would: these GEMMs
//! read their operands straight from the buffers, with one subgroup's lanes sharing A through
//! broadcasts (docs/speed.md, "GEMMs without barriers on CPU adapters").
//!
//! Winograd's GEMMs run on them directly (their operands are rows of whole vec4s). A direct
//! convolution (the strided 3x3s, the 1x1 shortcuts) first lays its input out as columns
//! (im2col: `C R S` rows of the chunk's output pixels), then:
//! - forward: `y = W col` (`gemm_lanes_planes`, storing into y's planes, with the bias, or in
//!   inference with the batch norm: `gemm_lanes_planes_bn`);
//! - weight gradient: `gw = gyᵀ colᵀ`, with gy laid out as rows the same way
//!   (`gemm_lanes_nt`; one partial result per chunk of images, summed by `reduce_splits`);
//! - input gradient: `colg = Wᵀ gy` (`gemm_lanes`, W transposed once), then col2im gathers
//!   each input pixel's taps.
//!
//! Each pass runs on chunks of images whose columns stay within the Winograd cap.

use super::plan::{Geometry, MAX_GRID};
use super::tune::ConvPass;
use super::winograd::{chunk_cap, scratch, scratch_or_kept};
use super::{EvalBatchNorm, bn_bindings, bn_epilogue, reduce_splits};
use crate::gpu::{ConvPrecision, Gpu, Kernel, flag};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{PlanFor, Result};

/// `shaders/gemm_lanes.wgsl`'s parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LanesParams {
    rows: u32,
    depth: u32,
    cols: u32,
    base: u32,
    plane: u32,
    valid: u32,
    has_bias: u32,
    eps: f32,
}

/// `A B`, `A Bᵀ`, and `W col` into a convolution's output planes, reading 16 bytes at a time
/// ([`with_reads`] gives their variants that read 32).
const GEMM_LANES: Kernel = vec4_reads(kernel!("gemm_lanes.wgsl", "gemm_lanes"));
const GEMM_LANES_NT: Kernel = vec4_reads(kernel!("gemm_lanes.wgsl", "gemm_lanes_nt"));
const GEMM_LANES_PLANES: Kernel = vec4_reads(kernel!("gemm_lanes.wgsl", "gemm_lanes_planes"));
const GEMM_LANES_PLANES_BN: Kernel = vec4_reads(kernel!("gemm_lanes.wgsl", "gemm_lanes_planes_bn"));

/// The reads of 8 floats that gemm_lanes.wgsl's `WIDE` path calls: one 32-byte load each, as
/// 64-bit integers (`shaders/gemm_wide.wgsl`, for devices with wgpu's `SHADER_INT64`), or two
/// vec4 loads (`shaders/gemm_wide_f32.wgsl`, the plain kernels' variant, whose `WIDE` is off).
#[doc(hidden)]
pub const GEMM_WIDE_READS: [&str; 2] = [
    include_str!("../../../shaders/gemm_wide_f32.wgsl"),
    include_str!("../../../shaders/gemm_wide.wgsl"),
];

/// `kernel` with the plain reads' file before it.
const fn vec4_reads(kernel: Kernel) -> Kernel {
    Kernel {
        variant: GEMM_WIDE_READS[0],
        ..kernel
    }
}

/// Whether the GEMMs here read 32 bytes at a time where the depth allows: where they run
/// ([`lanes_in_use`]), the wide reads are on ([`Gpu::conv_wide_reads`]) and the subgroups have
/// 8 lanes or more (gemm_lanes.wgsl's `read_a_wide` reads A_LANES 8's rows).
pub(super) fn wide_reads_in_use(gpu: &Gpu) -> bool {
    lanes_in_use(gpu) && gpu.conv_wide_reads() && gpu.conv_gemm_lanes().is_some_and(|n| n >= 8)
}

/// One of gemm_lanes.wgsl's kernels as it runs a GEMM of `depth` on `gpu`: with the 32-byte
/// reads of A (and of gemm_lanes_nt's B) where they are in use ([`wide_reads_in_use`]) and
/// `depth` is a multiple of 8 (so that every row of A,
/// and of B's transpose, starts 32-byte aligned): the kernel with gemm_wide.wgsl before it,
/// its `WIDE` constants and A and B bound again at 11 and 12: `WIDE_B` too (B's 32-byte
/// reads in gemm_lanes and the planes kernels) where `cols` is a multiple of 8. As it was
/// otherwise.
fn with_reads<'a>(
    gpu: &Gpu,
    kernel: &Kernel,
    [depth, cols]: [usize; 2],
    [a, b]: [&'a wgpu::Buffer; 2],
) -> (Kernel, Reads<'a>) {
    if !(wide_reads_in_use(gpu) && depth.is_multiple_of(8)) {
        let constants = [flag("WIDE", false), flag("WIDE_B", false)];
        let bound = Vec::new();
        return (*kernel, Reads { constants, bound });
    }
    let wide_b = kernel.entry != GEMM_LANES_NT.entry && cols.is_multiple_of(8);
    let bound = vec![(11, a), (12, b)];
    let kernel = Kernel {
        variant: GEMM_WIDE_READS[1],
        ..*kernel
    };
    let constants = [flag("WIDE", true), flag("WIDE_B", wide_b)];
    (kernel, Reads { constants, bound })
}

/// What [`with_reads`] adds to a dispatch: the `WIDE` and `WIDE_B` constants, and the bindings
/// of the 32-byte reads.
struct Reads<'a> {
    constants: [(&'static str, f64); 2],
    bound: Vec<(u32, &'a wgpu::Buffer)>,
}

/// The rows of a lane's micro-tile (`ROWS` in gemm_lanes.wgsl).
const ROWS: usize = 32;

const IM2COL: Kernel = kernel!("im2col.wgsl", "im2col");
const COL2IM: Kernel = kernel!("im2col.wgsl", "col2im");
const COL2IM_S2: Kernel = kernel!("im2col.wgsl", "col2im_s2");
const TRANSPOSE: Kernel = kernel!("im2col.wgsl", "transpose");

/// `shaders/im2col.wgsl`'s parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ColParams {
    images: u32,
    channels: u32,
    height: u32,
    width: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    first: u32,
    cols: u32,
    crs: u32,
    p0: u32,
    p1: u32,
    p2: u32,
}

/// Whether `gpu` runs these kernels at all: on a CPU adapter's plan, with subgroups of 4, 8 or
/// 16 lanes verified and in use ([`Gpu::conv_gemm_lanes`]: the kernels' layout; off with
/// `RESNET_WGPU_SUBGROUPS=0` or [`Gpu::set_subgroup_reductions`], as the shared A of the tiled
/// kernels is).
pub(super) fn lanes_in_use(gpu: &Gpu) -> bool {
    let lanes = gpu.conv_gemm_lanes().unwrap_or(0);
    gpu.plan_for() == PlanFor::Cpu
        && matches!(lanes, 4 | 8 | 16)
        && gpu.subgroup_max_size() == lanes
}

/// Whether a GEMM of `depth` and `cols` runs here: where [`lanes_in_use`], in f32, with rows of
/// whole vec4s (`depth` and `cols` multiples of 4).
pub(super) fn gemm_on_lanes(gpu: &Gpu, f16: bool, depth: usize, cols: usize) -> bool {
    !f16 && lanes_in_use(gpu) && depth.is_multiple_of(4) && cols.is_multiple_of(4)
}

/// `C[z] = A[z] B[z]` for the `batch` z ([`GEMM_LANES`]): A `[rows, depth]`, B `[depth, cols]`,
/// C `[rows, cols]` each, one z after another; `depth` and `cols` as [`gemm_on_lanes`] takes.
pub(super) fn gemm(
    gpu: &Gpu,
    dims: [usize; 3],
    batch: usize,
    operands: [&Tensor; 3],
) -> Result<()> {
    dispatch_gemm(gpu, &GEMM_LANES, dims, (batch, 0), operands)
}

/// `C[base + z] = A[z] B[z]ᵀ` for the `batch` z ([`GEMM_LANES_NT`]): A `[rows, depth]`,
/// B `[cols, depth]`, C `[rows, cols]` each, one z after another.
pub(super) fn gemm_nt(
    gpu: &Gpu,
    dims: [usize; 3],
    batch_base: (usize, usize),
    operands: [&Tensor; 3],
) -> Result<()> {
    dispatch_gemm(gpu, &GEMM_LANES_NT, dims, batch_base, operands)
}

/// [`gemm`] or [`gemm_nt`] on `kernel`.
fn dispatch_gemm(
    gpu: &Gpu,
    kernel: &Kernel,
    [rows, depth, cols]: [usize; 3],
    (batch, base): (usize, usize),
    [a, b, c]: [&Tensor; 3],
) -> Result<()> {
    let p = LanesParams {
        rows: rows as u32,
        depth: depth as u32,
        cols: cols as u32,
        base: base as u32,
        ..LanesParams::default()
    };
    let (kernel, reads) = with_reads(gpu, kernel, [depth, cols], [a.buffer(), b.buffer()]);
    let mut bound = vec![(1, a.buffer()), (2, b.buffer()), (3, c.buffer())];
    bound.extend(reads.bound);
    let grid = grid(gpu, rows, cols, batch);
    gpu.dispatch_bound(&kernel, &reads.constants, &p, &bound, grid)
}

/// The grid of a GEMM of `rows` x `cols` on these kernels: a workgroup is one subgroup, each
/// lane [`ROWS`] rows x 4 columns.
fn grid(gpu: &Gpu, rows: usize, cols: usize, batch: usize) -> [u32; 3] {
    let lanes = gpu.conv_gemm_lanes().unwrap_or(1) as usize;
    [cols.div_ceil(4 * lanes), rows.div_ceil(ROWS), batch].map(|n| n as u32)
}

/// Whether the direct convolution `g`'s `pass` can run here, in f32 ([`Geometry::route`] takes
/// it untuned and with no tile forced): where [`lanes_in_use`], with `C R S` taps (the forward
/// GEMM's reduction) and `K` output channels multiples of 4 (the columns are padded to 4). A 1x1
/// convolution's input gradient stays tiled: it is one GEMM there, whose output is gx's pixels
/// themselves (added to the gradient so far), where here it would take four dispatches and an
/// addition (lavapipe, the main job's 1x1/2 shortcuts: 9 ms against 23).
pub(super) fn takes(gpu: &Gpu, g: &Geometry, pass: ConvPass) -> bool {
    let [k, c, r, s] = g.w;
    gpu.conv_precision() == ConvPrecision::F32
        && lanes_in_use(gpu)
        && (c * r * s).is_multiple_of(4)
        && k.is_multiple_of(4)
        && (pass != ConvPass::InputGrad || r * s > 1)
}

/// A batch's output pixels, in chunks of images whose columns (`rows` each, the widest
/// operand laid out so) stay within the Winograd cap.
struct Chunks {
    images: usize,
    per_chunk: usize,
    plane: usize,
}

impl Chunks {
    fn new(gpu: &Gpu, g: &Geometry, rows: usize) -> Chunks {
        let cap = chunk_cap(gpu);
        let plane = g.oh * g.ow;
        let n = g.x[0];
        let per_chunk = (cap / (rows * plane + 4)).clamp(1, n);
        Chunks {
            images: n,
            per_chunk,
            plane,
        }
    }

    fn count(&self) -> usize {
        self.images.div_ceil(self.per_chunk)
    }

    /// (chunk, first image, images, columns: their pixels rounded up to a multiple of 4).
    fn iter(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        (0..self.count()).map(|i| {
            let first = i * self.per_chunk;
            let images = self.per_chunk.min(self.images - first);
            (i, first, images, (images * self.plane).next_multiple_of(4))
        })
    }

    /// The most columns of a chunk.
    fn most_cols(&self) -> usize {
        (self.per_chunk * self.plane).next_multiple_of(4)
    }
}

/// Lay `src`'s chunk out as columns into `col` (`[channels R S, cols]`): x's taps for `g`, or
/// with `taps == false` gy's pixels (a 1x1 convolution of stride 1 over the output planes).
fn im2col(
    gpu: &Gpu,
    g: &Geometry,
    src: &Tensor,
    taps: bool,
    (first, images, cols): (usize, usize, usize),
    col: &Tensor,
) -> Result<()> {
    let [_, c, h, w] = g.x;
    let [k, _, r, s] = g.w;
    let p = match taps {
        true => ColParams {
            channels: c as u32,
            height: h as u32,
            width: w as u32,
            kh: r as u32,
            kw: s as u32,
            stride: g.stride as u32,
            pad: g.padding as u32,
            ..ColParams::default()
        },
        false => ColParams {
            channels: k as u32,
            height: g.oh as u32,
            width: g.ow as u32,
            kh: 1,
            kw: 1,
            stride: 1,
            ..ColParams::default()
        },
    };
    let p = ColParams {
        images: images as u32,
        out_h: g.oh as u32,
        out_w: g.ow as u32,
        first: first as u32,
        cols: cols as u32,
        ..p
    };
    let rows = p.channels * p.kh * p.kw;
    let grid = [cols.div_ceil(256) as u32, rows, 1];
    gpu.dispatch_bound(
        &IM2COL,
        &[],
        &p,
        &[(1, src.buffer()), (3, col.buffer())],
        grid,
    )
}

/// What the forward pass's GEMM adds after the sums: a bias, or inference's batch norm.
pub(super) enum Out<'a> {
    Bias(Option<&'a Tensor>),
    BatchNorm {
        bn: &'a EvalBatchNorm<'a>,
        residual: Option<&'a Tensor>,
        relu: bool,
    },
}

/// y = conv(x, w) + b, or through inference's batch norm (+ residual) (+ ReLU). With `keep`,
/// also returns x's columns where the batch is one chunk (a tensor of its own, of their size),
/// for [`backward_weight`] to read.
pub(super) fn forward(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    w: &Tensor,
    out: Out<'_>,
    keep: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let gpu = x.gpu();
    let [k, c, r, s] = g.w;
    let crs = c * r * s;
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, op)?;
    let chunks = Chunks::new(gpu, g, crs);
    let keep = keep && chunks.count() == 1;
    let col = scratch_or_kept(op, gpu, crs * chunks.most_cols(), keep)?;
    for (_, first, images, cols) in chunks.iter() {
        im2col(gpu, g, x, true, (first, images, cols), &col)?;
        let p = LanesParams {
            rows: k as u32,
            depth: crs as u32,
            cols: cols as u32,
            base: first as u32,
            plane: chunks.plane as u32,
            valid: (images * chunks.plane) as u32,
            ..LanesParams::default()
        };
        let grid = grid(gpu, k, cols, 1);
        let mut bound = vec![(1, w.buffer()), (2, col.buffer()), (4, y.buffer())];
        let kernel = match &out {
            Out::Bias(_) => &GEMM_LANES_PLANES,
            Out::BatchNorm { .. } => &GEMM_LANES_PLANES_BN,
        };
        let (kernel, reads) = with_reads(gpu, kernel, [crs, cols], [w.buffer(), col.buffer()]);
        bound.extend(reads.bound);
        let [wide, wide_b] = reads.constants;
        match &out {
            Out::Bias(b) => {
                let p = LanesParams {
                    has_bias: b.is_some() as u32,
                    ..p
                };
                bound.push((5, b.unwrap_or(w).buffer()));
                gpu.dispatch_bound(&kernel, &[wide, wide_b], &p, &bound, grid)?;
            }
            Out::BatchNorm { bn, residual, relu } => {
                let p = LanesParams { eps: bn.eps, ..p };
                bound.extend(bn_bindings(bn, *residual));
                let [residual, relu] = bn_epilogue(residual.is_some(), *relu);
                let constants = [residual, relu, wide, wide_b];
                gpu.dispatch_bound(&kernel, &constants, &p, &bound, grid)?;
            }
        }
    }
    Ok((y, keep.then_some(col)))
}

/// gw `[K, C, R, S]` = the sum over the batch's pixels of gy's times x's taps. `kept`: x's
/// columns that the forward pass kept ([`forward`]), read instead of laying x out again.
pub(super) fn backward_weight(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    gy: &Tensor,
    kept: Option<&Tensor>,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let [k, c, r, s] = g.w;
    let crs = c * r * s;
    let chunks = Chunks::new(gpu, g, crs.max(k));
    // The forward kept one chunk's columns, the same as this one chunk's.
    let kept = kept.filter(|_| chunks.count() == 1);
    let col = match kept {
        Some(col) => col.clone(),
        None => scratch(op, gpu, crs * chunks.most_cols())?,
    };
    let gyt = scratch(op, gpu, k * chunks.most_cols())?;
    let gw = Tensor::uninit(gpu, &g.w, DType::F32, op)?;
    // One partial result per chunk, summed into gw; one chunk writes gw itself.
    let part = match chunks.count() {
        1 => None,
        n => Some(scratch(op, gpu, n * k * crs)?),
    };
    for (chunk, first, images, cols) in chunks.iter() {
        if kept.is_none() {
            im2col(gpu, g, x, true, (first, images, cols), &col)?;
        }
        im2col(gpu, g, gy, false, (first, images, cols), &gyt)?;
        let out = part.as_ref().unwrap_or(&gw);
        gemm_nt(gpu, [k, cols, crs], (1, chunk), [&gyt, &col, out])?;
    }
    if let Some(part) = &part {
        let mut p = g.params(false, 0, chunks.count());
        p.reduce_len = (k * crs) as u32;
        reduce_splits(gpu, &p, part, &gw, k * crs)?;
    }
    Ok(gw)
}

/// gx `[N, C, H, W]` = the input gradient of gy through w, or `sum` plus it, written over
/// `sum`.
pub(super) fn backward_input(
    op: &'static str,
    g: &Geometry,
    gy: &Tensor,
    w: &Tensor,
    sum: Option<Tensor>,
) -> Result<Tensor> {
    let gpu = gy.gpu();
    let [k, c, r, s] = g.w;
    let crs = c * r * s;
    let chunks = Chunks::new(gpu, g, crs.max(k));
    // Wᵀ [C R S, K]: operand A.
    let wt = Tensor::uninit(gpu, &[crs, k], DType::F32, op)?;
    let p = ColParams {
        channels: k as u32,
        crs: crs as u32,
        ..ColParams::default()
    };
    let grid = [crs.div_ceil(64) as u32, k as u32, 1];
    gpu.dispatch_with(&TRANSPOSE, &[], &p, &[w.buffer(), wt.buffer()], grid)?;
    let gyt = scratch(op, gpu, k * chunks.most_cols())?;
    let colg = scratch(op, gpu, crs * chunks.most_cols())?;
    let accumulate = sum.is_some();
    let gx = match sum {
        Some(sum) => sum,
        None => Tensor::uninit(gpu, &g.x, DType::F32, op)?,
    };
    let [_, _, h, wd] = g.x;
    let constants = [
        ("STRIDE", g.stride as f64),
        ("KH", r as f64),
        ("KW", s as f64),
        flag("ACCUMULATE", accumulate),
    ];
    for (_, first, images, cols) in chunks.iter() {
        im2col(gpu, g, gy, false, (first, images, cols), &gyt)?;
        gemm(gpu, [crs, k, cols], 1, [&wt, &gyt, &colg])?;
        let p = ColParams {
            images: images as u32,
            channels: c as u32,
            height: h as u32,
            width: wd as u32,
            out_h: g.oh as u32,
            out_w: g.ow as u32,
            pad: g.padding as u32,
            first: first as u32,
            cols: cols as u32,
            ..ColParams::default()
        };
        // The downsampling 3x3s by 2x2 blocks of pixels, each block's taps loaded once.
        let blocks = c * h.div_ceil(2) * wd.div_ceil(2);
        let (kernel, grid) =
            if (g.stride, r, s, g.padding) == (2, 3, 3, 1) && blocks.div_ceil(64) <= MAX_GRID {
                (&COL2IM_S2, [blocks.div_ceil(64) as u32, images as u32, 1])
            } else {
                (
                    &COL2IM,
                    [(h * wd).div_ceil(64) as u32, (images * c) as u32, 1],
                )
            };
        gpu.dispatch_with(kernel, &constants, &p, &[colg.buffer(), gx.buffer()], grid)?;
    }
    Ok(gx)
}
