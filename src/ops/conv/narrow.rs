//! Direct convolutions of narrow layers (`shaders/conv_narrow.wgsl`): a thread per two pixels
//! and up to 16 channels (a thread per tap in the weight gradient), so that only outputs that
//! exist are computed. The GEMM tiles compute at least 4,096 outputs per workgroup, most of them
//! padding when a layer has 8 or 16 channels; and they stage their reduction in chunks, little
//! of which is work when a convolution has few taps (a stem on one to three channels, a 1x1
//! convolution of few channels). [`takes`] says where [`crate::ConvAlgo::Auto`] routes a pass
//! here. Where the device has the verified subgroup lanes of [`Gpu::conv_gemm_lanes`], the
//! kernels read the operand all threads share through them, a block of reduction indices per
//! subgroup, with the same bits (`docs/speed.md`, "Narrow kernels read through the lanes").

use super::plan::{Geometry, gemm_grid};
use super::reduce_splits;
use super::tune::ConvPass;
use crate::Result;
use crate::gpu::{ConvAlgo, ConvPrecision, Gpu, Kernel};
use crate::kernel;
use crate::tensor::{DType, Tensor};

const FORWARD: Kernel = kernel!("conv_narrow.wgsl", "narrow_forward");
const BACKWARD_INPUT: Kernel = kernel!("conv_narrow.wgsl", "narrow_backward_input");
const BACKWARD_WEIGHT: Kernel = kernel!("conv_narrow.wgsl", "narrow_backward_weight");
const GATHER4: Kernel = kernel!("conv_narrow.wgsl", "narrow_gather4");

/// Channels one thread sums (four vec4 accumulators per pixel).
const GROUP: usize = 16;
/// Pixels one thread of the forward pass and the input gradient sums.
const PIXELS_PER_THREAD: usize = 2;
/// The most taps `C x R x S` of a shallow convolution, whose forward pass and weight gradient
/// run here whatever the output channels K, unless the GEMMs without barriers take them: a stem
/// on one to three input channels (9 or 27 taps of 3 x 3), a 1x1 convolution of up to 32
/// channels. Its forward GEMM reduces over so few values that staging them in a tile costs more
/// than the multiplies, and its weight gradient's GEMM has as few columns, padded to the tile's
/// 64 or 128. On lavapipe (2 cores), the main job's steps at batch 128 (ms per pass, forward /
/// weight gradient, these kernels against the GEMM tiles): the 1 -> 32 stem at 28x28 12 / 19
/// against 32-34 / 106-121, 1 -> 64 26 / 39 against 50 / 104, 3 -> 32 28 / 38 against 48 / 108,
/// and the 1x1/2 32 -> 64 shortcut at 14x14 16 / 23 (with its gather) against 17-20 / 31.
///
/// The GEMMs without barriers (`lanes.rs`, session 32) take taps and K in multiples of 4: not
/// the stems, but the 1x1 convolutions. Against them (session 34, `docs/speed.md`, "Narrow
/// kernels against the GEMMs without barriers"), at batch 128, forward and weight gradient
/// together: 32 -> 64 1x1/2 at 28x28 38 against 15 ms, 16 -> 64 at 28x28 84 against 45, 8 -> 64
/// 53 against 39, 4 -> 32 23 against 23.
const SHALLOW_TAPS: usize = 32;
/// Threads per workgroup of the pixel kernels.
const WORKGROUP: usize = 64;
/// The most threads per workgroup of the weight gradient (one per tap).
const MAX_TAP_WORKGROUP: usize = 256;
/// Pixels one split of the weight gradient sums at least.
const MIN_SPLIT_PIXELS: usize = 256;
/// Workgroups the weight gradient's splits aim for.
const TARGET_WORKGROUPS: usize = 64;

/// conv_narrow.wgsl's `Params`: the convolution's shape, and the weight gradient's pixels per
/// split.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NarrowParams {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    chunk: u32,
}

impl NarrowParams {
    fn new(g: &Geometry, has_bias: bool, chunk: usize) -> NarrowParams {
        let [n, c, h, w] = g.x;
        NarrowParams {
            batch: n as u32,
            in_c: c as u32,
            in_h: h as u32,
            in_w: w as u32,
            out_c: g.w[0] as u32,
            out_h: g.oh as u32,
            out_w: g.ow as u32,
            stride: g.stride as u32,
            pad: g.padding as u32,
            has_bias: has_bias as u32,
            chunk: chunk as u32,
        }
    }
}

/// conv_narrow.wgsl's `GatherParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    groups: u32,
    j_count: u32,
    inner: u32,
    outer: u32,
    stride: u32,
    channels: u32,
}

/// Whether `pass` of the convolution `g` runs here: on CPU adapters, under [`ConvAlgo::Auto`]
/// without autotuning (which times the GEMM tiles and Winograd) and under
/// [`ConvPrecision::F32`], where the GEMM's rows (K in the forward pass and the weight
/// gradient, C in the input gradient) are at most 16, for the input gradient at stride 1 (the
/// GEMM's sub-pixel phases skip the taps that a strided gradient never reaches; a thread per
/// pixel here would test them all, and a version by phase, tried, beat the GEMM on the 3x3/2
/// conv of 8 channels, 22 against 33-36 ms, but lost on 16 channels and on 1x1 kernels), and
/// where Auto's rule does not run the pass through Winograd: the forward pass and input
/// gradient always, the weight gradient where the GEMMs without barriers run Winograd's (16 ->
/// 16 channels at 14x14, batch 128: 7 ms against 22-23 here; session 34). The forward pass and
/// the weight gradient of a shallow convolution, of at most [`SHALLOW_TAPS`] taps `C x R x S`,
/// run here whatever K, unless the GEMMs without barriers take them: see there.
///
/// On lavapipe (2 cores; `docs/gpu-runs/lavapipe-narrow.txt`), the narrow layers of the
/// training test's model at batch 32, ms per pass (forward / input gradient / weight gradient),
/// these kernels against the GEMM tiles and Winograd: 8 -> 8 channels at 28x28 24-26 / 23-25 /
/// 23-24 against 62-65 / 71-73 / 90-97; the 1 -> 8 stem 5 / - / 6 against 21 / - / 78; 16 -> 16
/// at 14x14 21-22 / 20-22 / 19-20 against Winograd's 18-19 / 18-19 / 65-67, so that conv's
/// weight gradient alone comes here. At 32 rows the GEMM won (a trial with the limit at 64):
/// 19 / 18 / 27 against 7 / 8 / 18 for 32 -> 32 at 7x7.
pub(super) fn takes(gpu: &Gpu, g: &Geometry, pass: ConvPass) -> bool {
    let [k, c, r, s] = g.w;
    let shallow = c * r * s <= SHALLOW_TAPS;
    let here = gpu.plan_for() == crate::PlanFor::Cpu
        && gpu.conv_algo() == ConvAlgo::Auto
        && !gpu.conv_autotune()
        && gpu.conv_precision() == ConvPrecision::F32;
    let winograd = g.winograd_fits(gpu, pass) && super::winograd::auto_rule(gpu, g);
    // The GEMMs without barriers (where subgroups allow them) beat these kernels on shallow
    // convolutions of more channels, and on Winograd's weight gradient (see above).
    let lanes = super::lanes::lanes_in_use(gpu);
    match pass {
        ConvPass::Forward => {
            here && !winograd && (k <= GROUP || (shallow && !super::lanes::takes(gpu, g, pass)))
        }
        ConvPass::WeightGrad => {
            here && ((k <= GROUP && !(winograd && lanes))
                || (shallow && !super::lanes::takes(gpu, g, pass)))
        }
        // Winograd keeps the input gradient it takes (16 channels on a CPU adapter): a little
        // faster there than these kernels.
        ConvPass::InputGrad => here && !winograd && c <= GROUP && g.stride == 1,
    }
}

/// The kernels' overrides: vec4 groups of `channels` per thread (`VG`), `workgroup` threads
/// (`WG`) and the kernel size (`KH`, `KW`).
fn constants(g: &Geometry, channels: usize, workgroup: usize) -> [(&'static str, f64); 4] {
    [
        ("VG", vg(channels) as f64),
        ("WG", workgroup as f64),
        ("KH", g.w[2] as f64),
        ("KW", g.w[3] as f64),
    ]
}

/// vec4 groups per thread for `channels` written.
fn vg(channels: usize) -> usize {
    channels.min(GROUP).div_ceil(4)
}

/// Grid of `threads` over x (and z past the per-dimension limit) in workgroups of
/// [`WORKGROUP`], and `channels` in groups of [`GROUP`] over y: the GEMM kernels' grid, with
/// channel groups for row tiles and pixel groups for column tiles.
fn pixel_grid(op: &'static str, threads: usize, channels: usize) -> Result<[u32; 3]> {
    gemm_grid(op, channels, threads, (GROUP, WORKGROUP, 0))
}

/// The shared operand as the kernels read it (conv_narrow.wgsl's op4): `src`'s `channels` in
/// groups of 16, 4 to a vec4, for each j < `j_count` at `(j / inner) * outer + j % inner`, the
/// channels `stride` apart.
#[allow(clippy::too_many_arguments)]
fn gather4(
    op: &'static str,
    g: &Geometry,
    src: &Tensor,
    channels: usize,
    j_count: usize,
    inner: usize,
    outer: usize,
    stride: usize,
) -> Result<Tensor> {
    let gpu = src.gpu();
    let groups = channels.div_ceil(GROUP);
    let vecs = groups * j_count * vg(channels);
    let op4 = Tensor::uninit(gpu, &[vecs, 4], DType::F32, op)?;
    let p = GatherParams {
        groups: groups as u32,
        j_count: j_count as u32,
        inner: inner as u32,
        outer: outer as u32,
        stride: stride as u32,
        channels: channels as u32,
    };
    gpu.dispatch_bound(
        &GATHER4,
        &constants(g, channels, WORKGROUP),
        &p,
        &[(1, src.buffer()), (3, op4.buffer())],
        pixel_grid(op, vecs, 1)?,
    )?;
    Ok(op4)
}

/// y = conv(x, w) + b.
pub(super) fn forward(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let [k, c, r, s] = g.w;
    let crs = c * r * s;
    // w[k, j] with j = (c, r, s).
    let w4 = gather4(op, g, w, k, crs, crs, 0, crs)?;
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, op)?;
    gpu.dispatch_with(
        &FORWARD,
        &constants(g, k, WORKGROUP),
        &NarrowParams::new(g, b.is_some(), 0),
        &[
            x.buffer(),
            w4.buffer(),
            y.buffer(),
            b.map_or(w.buffer(), |b| b.buffer()),
        ],
        pixel_grid(op, (g.x[0] * g.oh * g.ow).div_ceil(PIXELS_PER_THREAD), k)?,
    )?;
    Ok(y)
}

/// gx of the convolution `g` (stride 1) from gy and w.
pub(super) fn backward_input(
    op: &'static str,
    g: &Geometry,
    gy: &Tensor,
    w: &Tensor,
) -> Result<Tensor> {
    let gpu = gy.gpu();
    let [k, c, r, s] = g.w;
    // w[k, c, r, s] by channel c for j = (k, r, s).
    let w4 = gather4(op, g, w, c, k * r * s, r * s, c * r * s, r * s)?;
    let gx = Tensor::uninit(gpu, &g.x, DType::F32, op)?;
    let [n, _, h, wd] = g.x;
    gpu.dispatch_with(
        &BACKWARD_INPUT,
        &constants(g, c, WORKGROUP),
        &NarrowParams::new(g, false, 0),
        &[gy.buffer(), w4.buffer(), gx.buffer()],
        pixel_grid(op, (n * h * wd).div_ceil(PIXELS_PER_THREAD), c)?,
    )?;
    Ok(gx)
}

/// gw of the convolution `g` from x and gy: a thread per tap, the pixels split over grid z
/// where the taps alone are few workgroups, the splits summed by conv.wgsl's reduce kernel.
pub(super) fn backward_weight(
    op: &'static str,
    g: &Geometry,
    x: &Tensor,
    gy: &Tensor,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let [k, c, r, s] = g.w;
    let crs = c * r * s;
    let plane = g.oh * g.ow;
    let pixels = g.x[0] * plane;
    // gy[n, k, pixel] by channel k for j = the pixel (n, oh, ow).
    let gy4 = gather4(op, g, gy, k, pixels, plane, k * plane, plane)?;
    // A workgroup as wide as the taps (a multiple of 8, SIMD-friendly), within bounds.
    let wg = crs.next_multiple_of(8).min(MAX_TAP_WORKGROUP);
    let fixed = crs.div_ceil(wg) * k.div_ceil(GROUP);
    let splits = TARGET_WORKGROUPS
        .div_ceil(fixed)
        .min(pixels.div_ceil(MIN_SPLIT_PIXELS))
        .max(1);
    let chunk = pixels.div_ceil(splits);
    let splits = pixels.div_ceil(chunk);
    let len = k * crs;
    let gw = Tensor::uninit(gpu, &g.w, DType::F32, op)?;
    let part = if splits > 1 {
        Tensor::uninit(gpu, &[splits, len], DType::F32, op)?
    } else {
        gw.clone()
    };
    gpu.dispatch_with(
        &BACKWARD_WEIGHT,
        &constants(g, k, wg),
        &NarrowParams::new(g, false, chunk),
        &[x.buffer(), gy4.buffer(), part.buffer()],
        [
            crs.div_ceil(wg) as u32,
            k.div_ceil(GROUP) as u32,
            splits as u32,
        ],
    )?;
    if splits > 1 {
        let mut params = g.params(false, chunk, splits);
        params.reduce_len = len as u32;
        reduce_splits(gpu, &params, &part, &gw, len)?;
    }
    Ok(gw)
}
