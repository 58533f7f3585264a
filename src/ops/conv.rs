//! 2-D convolution (NCHW) as a tiled implicit GEMM, forward and both backward passes. See
//! `shaders/conv.wgsl` for the math, the tiling and the dispatch grids.
//!
//! Shapes: x `[N, C, H, W]`, w `[K, C, R, S]`, b `[K]`, y `[N, K, OH, OW]` with
//! `OH = (H + 2 * padding - R) / stride + 1` (likewise OW). The weight gradient reduces over
//! `N * OH * OW`, which can be long: it is split into chunks computed by separate workgroups
//! (split-K) whose partial results a second small kernel sums.

use crate::autograd::Var;
use crate::gpu::{Kernel, grid_1d};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    chunk: u32,
    splits: u32,
    r0: u32,
    s0: u32,
    nr: u32,
    ns: u32,
    h0: u32,
    w0: u32,
    hc: u32,
    wc: u32,
}

const FORWARD: Kernel = kernel!("conv.wgsl", "conv_forward");
const BACKWARD_INPUT: Kernel = kernel!("conv.wgsl", "conv_backward_input");
const BACKWARD_WEIGHT: Kernel = kernel!("conv.wgsl", "conv_backward_weight");
const REDUCE_SPLITS: Kernel = kernel!("conv.wgsl", "conv_reduce_splits");

/// Output tile of one workgroup (rows x columns of the GEMM) and reduction chunk; must match the
/// shader's `BM`, `BN`, `BK`.
const TILE_M: usize = 64;
const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// Largest grid dimension allowed by WebGPU.
const MAX_GRID: usize = 65_535;
/// Split-K: aim for at least this many workgroups in the weight gradient...
const SPLIT_TARGET_WORKGROUPS: usize = 1024;
/// ...but give each split at least this much of the reduction.
const SPLIT_MIN_CHUNK: usize = 256;
/// ...and keep the partial results below this many elements.
const SPLIT_MAX_PARTIAL: usize = 1 << 25;

/// Output height and width of a convolution: `((h + 2p - kernel) / stride + 1, ...)`, 0 where
/// the kernel does not fit the padded input or the stride is 0.
pub fn conv2d_output_size(
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let one = |size: usize| {
        let padded = size + 2 * padding;
        if stride == 0 || padded < kernel {
            0
        } else {
            (padded - kernel) / stride + 1
        }
    };
    (one(h), one(w))
}

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    x: [usize; 4],
    w: [usize; 4],
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn new(
        op: &'static str,
        x: [usize; 4],
        w: [usize; 4],
        stride: usize,
        padding: usize,
    ) -> Result<Geometry> {
        let [n, c, h, wd] = x;
        let [k, c2, r, s] = w;
        let shapes = || format!("x {x:?}, w {w:?}, stride {stride}, padding {padding}");
        if stride == 0 {
            return Err(Error::shape(
                op,
                format!("stride must be at least 1 ({})", shapes()),
            ));
        }
        if c != c2 {
            return Err(Error::shape(
                op,
                format!(
                    "input has {c} channels but the weights expect {c2} ({})",
                    shapes()
                ),
            ));
        }
        if x.contains(&0) || w.contains(&0) {
            return Err(Error::shape(op, format!("empty dimension ({})", shapes())));
        }
        if h + 2 * padding < r || wd + 2 * padding < s {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {r}x{s} is larger than the padded input {}x{} ({})",
                    h + 2 * padding,
                    wd + 2 * padding,
                    shapes()
                ),
            ));
        }
        let oh = (h + 2 * padding - r) / stride + 1;
        let ow = (wd + 2 * padding - s) / stride + 1;
        let g = Geometry {
            x,
            w,
            oh,
            ow,
            stride,
            padding,
        };
        // Every flat index the shaders form must fit in u32.
        let limit = u32::MAX as usize - 2 * TILE_M.max(TILE_N);
        let extents = [
            n * c * h * wd,
            k * c * r * s,
            n * k * oh * ow,
            padding + h.max(wd) + r.max(s),
            stride * oh.max(ow),
        ];
        if extents.iter().any(|&e| e > limit)
            || padding > i32::MAX as usize / 4
            || stride > i32::MAX as usize / 4
        {
            return Err(Error::shape(
                op,
                format!("problem exceeds the u32 index range ({})", shapes()),
            ));
        }
        Ok(g)
    }

    fn y_shape(&self) -> [usize; 4] {
        [self.x[0], self.w[0], self.oh, self.ow]
    }

    fn params(&self, has_bias: bool, chunk: usize, splits: usize) -> Params {
        let [n, c, h, w] = self.x;
        let [k, _, r, s] = self.w;
        Params {
            batch: n as u32,
            in_c: c as u32,
            in_h: h as u32,
            in_w: w as u32,
            out_c: k as u32,
            out_h: self.oh as u32,
            out_w: self.ow as u32,
            kh: r as u32,
            kw: s as u32,
            stride: self.stride as u32,
            pad: self.padding as u32,
            has_bias: has_bias as u32,
            chunk: chunk as u32,
            splits: splits as u32,
            r0: 0,
            s0: 0,
            nr: r as u32,
            ns: s as u32,
            h0: 0,
            w0: 0,
            hc: h as u32,
            wc: w as u32,
        }
    }

    /// Split-K plan of the weight gradient: (chunk, splits).
    fn weight_splits(&self) -> (usize, usize) {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        let total = n * self.oh * self.ow;
        let tiles = k.div_ceil(TILE_M) * (c * r * s).div_ceil(TILE_N);
        let max_by_len = total.div_ceil(SPLIT_MIN_CHUNK);
        let max_by_mem = (SPLIT_MAX_PARTIAL / (k * c * r * s)).max(1);
        let wanted = SPLIT_TARGET_WORKGROUPS.div_ceil(tiles);
        let splits = wanted.min(max_by_len).min(max_by_mem).clamp(1, MAX_GRID);
        let chunk = total.div_ceil(splits).next_multiple_of(TILE_K);
        (chunk, total.div_ceil(chunk))
    }
}

/// Grid for a GEMM of `m` rows and `n` columns: column tiles over x (and z past 65,535), row
/// tiles over y.
fn gemm_grid(op: &'static str, m: usize, n: usize) -> Result<[u32; 3]> {
    let col_tiles = n.div_ceil(TILE_N);
    let row_tiles = m.div_ceil(TILE_M);
    let x = col_tiles.min(MAX_GRID);
    let z = col_tiles.div_ceil(x);
    if row_tiles > MAX_GRID || z > MAX_GRID {
        return Err(Error::shape(
            op,
            format!("a {m} x {n} GEMM needs too many workgroups"),
        ));
    }
    Ok([x as u32, row_tiles as u32, z as u32])
}

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
    const OP: &str = "conv2d";
    let xs = x.nchw(OP, "input x [N, C, H, W]")?;
    let ws = w.nchw(OP, "weight w [K, C, R, S]")?;
    check_same_gpu(OP, x, w)?;
    let g = Geometry::new(OP, xs, ws, stride, padding)?;
    if let Some(b) = b {
        b.expect_f32_rank(OP, "bias b [K]", 1)?;
        check_same_gpu(OP, x, b)?;
        if b.shape()[0] != ws[0] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias has {} elements but the weights {ws:?} have {} output channels",
                    b.shape()[0],
                    ws[0]
                ),
            ));
        }
    }
    let ys = g.y_shape();
    let y = Tensor::uninit(x.gpu(), &ys, DType::F32, OP)?;
    let grid = gemm_grid(OP, ws[0], ys[0] * ys[2] * ys[3])?;
    let bias = b.map_or(w.buffer(), |b| b.buffer());
    x.gpu().dispatch(
        &FORWARD,
        &g.params(b.is_some(), 0, 1),
        &[x.buffer(), w.buffer(), bias, y.buffer()],
        grid,
    )?;
    Ok(y)
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
    const OP: &str = "conv2d_backward_input";
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    let ws = w.nchw(OP, "weight w [K, C, R, S]")?;
    check_same_gpu(OP, gy, w)?;
    let g = Geometry::new(OP, x_shape, ws, stride, padding)?;
    if gys != g.y_shape() {
        return Err(Error::shape(
            OP,
            format!(
                "gy has shape {gys:?} but x {x_shape:?} and w {ws:?} give outputs {:?}",
                g.y_shape()
            ),
        ));
    }
    let gx = Tensor::uninit(gy.gpu(), &x_shape, DType::F32, OP)?;
    let [n, c, h, wd] = x_shape;
    let [_, _, r, s] = ws;
    // One dispatch per sub-pixel phase: pixels h with (h + padding) % stride == a meet exactly the
    // taps r with r % stride == a (see the shader's header).
    let phase = |a: usize, size: usize, taps: usize| {
        let first = (a + stride - padding % stride) % stride;
        let count = if first < size {
            (size - first).div_ceil(stride)
        } else {
            0
        };
        let ntaps = if a < taps {
            (taps - a).div_ceil(stride)
        } else {
            0
        };
        (first, count, ntaps)
    };
    for a in 0..stride {
        let (h0, hc, nr) = phase(a, h, r);
        for b in 0..stride {
            let (w0, wc, ns) = phase(b, wd, s);
            if hc == 0 || wc == 0 {
                continue;
            }
            let mut p = g.params(false, 0, 1);
            (p.r0, p.s0, p.nr, p.ns) = (a as u32, b as u32, nr as u32, ns as u32);
            (p.h0, p.w0, p.hc, p.wc) = (h0 as u32, w0 as u32, hc as u32, wc as u32);
            let grid = gemm_grid(OP, c, n * hc * wc)?;
            gy.gpu().dispatch(
                &BACKWARD_INPUT,
                &p,
                &[gy.buffer(), w.buffer(), gx.buffer()],
                grid,
            )?;
        }
    }
    Ok(gx)
}

/// Number of split-K chunks [`conv2d_backward_weight`] uses for these shapes (for tests and
/// benchmarks).
pub fn conv2d_weight_grad_splits(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    Ok(
        Geometry::new("conv2d_backward_weight", x_shape, w_shape, stride, padding)?
            .weight_splits()
            .1,
    )
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
    const OP: &str = "conv2d_backward_weight";
    let xs = x.nchw(OP, "input x [N, C, H, W]")?;
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    check_same_gpu(OP, x, gy)?;
    let g = Geometry::new(OP, xs, w_shape, stride, padding)?;
    if gys != g.y_shape() {
        return Err(Error::shape(
            OP,
            format!(
                "gy has shape {gys:?} but x {xs:?} and w {w_shape:?} give outputs {:?}",
                g.y_shape()
            ),
        ));
    }
    let [k, c, r, s] = w_shape;
    let crs = c * r * s;
    let (chunk, splits) = g.weight_splits();
    let col_tiles = crs.div_ceil(TILE_N);
    let row_tiles = k.div_ceil(TILE_M);
    if col_tiles > MAX_GRID || row_tiles > MAX_GRID {
        return Err(Error::shape(
            OP,
            format!("weights {w_shape:?} need too many workgroups"),
        ));
    }
    let grid = [col_tiles as u32, row_tiles as u32, splits as u32];
    let params = g.params(false, chunk, splits);
    let gpu = x.gpu();
    let gw = Tensor::uninit(gpu, &w_shape, DType::F32, OP)?;
    if splits == 1 {
        gpu.dispatch(
            &BACKWARD_WEIGHT,
            &params,
            &[x.buffer(), gy.buffer(), gw.buffer()],
            grid,
        )?;
    } else {
        let part = Tensor::uninit(gpu, &[splits, k * crs], DType::F32, OP)?;
        gpu.dispatch(
            &BACKWARD_WEIGHT,
            &params,
            &[x.buffer(), gy.buffer(), part.buffer()],
            grid,
        )?;
        let groups = (k * crs).div_ceil(256) as u32;
        gpu.dispatch(
            &REDUCE_SPLITS,
            &params,
            &[part.buffer(), gw.buffer()],
            grid_1d(groups),
        )?;
    }
    Ok(gw)
}

impl Var {
    /// `conv2d(self, w) + b` (see [`conv2d`]), recording its backward. Only what the backward
    /// needs is kept: x when w is tracked (for gw), w when x is tracked (for gx). Gradients of
    /// untracked inputs (the network's input, frozen weights) are not computed.
    pub fn conv2d(&self, w: &Var, b: Option<&Var>, stride: usize, padding: usize) -> Result<Var> {
        let y = conv2d(
            self.tensor(),
            w.tensor(),
            b.map(|b| b.tensor()),
            stride,
            padding,
        )?;
        let x_shape = self.tensor().nchw("conv2d", "x")?;
        let w_shape = w.tensor().nchw("conv2d", "w")?;
        let need_gx = self.requires_grad();
        let need_gw = w.requires_grad();
        let need_gb = b.is_some_and(|b| b.requires_grad());
        let saved_x = need_gw.then(|| self.tensor().clone());
        let saved_w = need_gx.then(|| w.tensor().clone());
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        Var::record("conv2d", &inputs, y, move |gy| {
            let gx = match &saved_w {
                Some(w) => Some(conv2d_backward_input(gy, w, x_shape, stride, padding)?),
                None => None,
            };
            let gw = match &saved_x {
                Some(x) => Some(conv2d_backward_weight(x, gy, w_shape, stride, padding)?),
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
