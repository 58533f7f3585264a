//! Reductions: sum and mean (of everything, of rows, per channel). See `shaders/reduce.wgsl`.

use crate::autograd::Var;
use crate::gpu::{Kernel, grid_1d};
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    batch: u32,
    alpha: f32,
}

const SUM_ROWS: Kernel = reducing_kernel!("reduce.wgsl", "sum_rows");
const SUM_CHANNELS: Kernel = reducing_kernel!("reduce.wgsl", "sum_channels");
const ABS_MAX: Kernel = reducing_kernel!("reduce.wgsl", "abs_max");
const F16_SCALE: Kernel = reducing_kernel!("reduce.wgsl", "f16_scale");

/// Most workgroups of the first pass of [`f16_scale`]. A gradient of a ResNet-18 layer at batch
/// 128 has up to 25.7 million values; 256 workgroups (run 6's count, two per compute unit of an
/// H200) left the pass bound by memory latency (2.0 ms for the step's 20 gradients, about 370
/// GB/s). 4,096 fill any current GPU, and the second pass reads 16 partials per thread.
const ABS_MAX_GROUPS: usize = 4096;

/// The power of two `s` that brings `x`'s largest magnitude `m` into `[2^13, 2^14)`
/// (`s = 2^(13 - floor(log2 m))`; 1 when `m` is 0 or not finite), as a one-element tensor
/// computed on the GPU in two passes. The f16 conv engine multiplies gradients by it before
/// rounding them to f16, so that they keep f16's full precision, and divides the results by it.
pub fn f16_scale(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("f16_scale", DType::F32)?;
    let n = x.numel();
    let groups = n.div_ceil(256).clamp(1, ABS_MAX_GROUPS);
    let gpu = x.gpu();
    let partial = Tensor::uninit(gpu, &[groups], DType::F32, "f16_scale")?;
    let p = Params {
        rows: groups as u32,
        len: n as u32,
        batch: 1,
        alpha: 1.0,
    };
    gpu.dispatch(
        &ABS_MAX,
        &p,
        &[x.buffer(), partial.buffer()],
        grid_1d(groups as u32),
    )?;
    let out = Tensor::uninit(gpu, &[1], DType::F32, "f16_scale")?;
    let p = Params {
        rows: 1,
        len: groups as u32,
        ..p
    };
    gpu.dispatch(
        &F16_SCALE,
        &p,
        &[partial.buffer(), out.buffer()],
        grid_1d(1),
    )?;
    Ok(out)
}

/// Longest row one workgroup sums directly; longer inputs are reduced in two passes.
const ONE_PASS_MAX: usize = 1 << 16;

fn sum_rows_scaled(x: &Tensor, rows: usize, len: usize, alpha: f32) -> Result<Tensor> {
    let out = Tensor::uninit(x.gpu(), &[rows], DType::F32, "sum")?;
    let p = Params {
        rows: rows as u32,
        len: len as u32,
        batch: 1,
        alpha,
    };
    x.gpu().dispatch(
        &SUM_ROWS,
        &p,
        &[x.buffer(), out.buffer()],
        grid_1d(rows as u32),
    )?;
    Ok(out)
}

/// `alpha * sum(x)` as a one-element tensor; long inputs are reduced in two passes.
fn sum_all_scaled(x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_dtype("sum", DType::F32)?;
    let n = x.numel();
    if n <= ONE_PASS_MAX {
        return sum_rows_scaled(x, 1, n, alpha);
    }
    // First pass: rows of ONE_PASS_MAX/64 elements (the tail row is zero-padded by a copy).
    let len = 1024;
    let rows = n.div_ceil(len);
    let padded = if rows * len == n {
        x.clone()
    } else {
        let p = Tensor::zeros(x.gpu(), &[rows * len])?;
        x.gpu().copy(x.buffer(), p.buffer(), n as u64 * 4);
        p
    };
    let partial = sum_rows_scaled(&padded, rows, len, 1.0)?;
    sum_all_scaled(&partial, alpha)
}

/// Sum of all elements, shape `[1]`.
pub fn sum(x: &Tensor) -> Result<Tensor> {
    sum_all_scaled(x, 1.0)
}

/// Mean of all elements, shape `[1]`.
pub fn mean(x: &Tensor) -> Result<Tensor> {
    sum_all_scaled(x, 1.0 / x.numel() as f32)
}

/// Sum over the last dimension: `[.., L] -> [..]` (rank 1 input gives `[1]`).
pub fn sum_last(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("sum_last", DType::F32)?;
    let len = *x
        .shape()
        .last()
        .ok_or_else(|| Error::shape("sum_last", "scalar input"))?;
    let rows = x.numel() / len;
    let out = sum_rows_scaled(x, rows, len, 1.0)?;
    let shape = if x.rank() > 1 {
        x.shape()[..x.rank() - 1].to_vec()
    } else {
        vec![1]
    };
    out.reshape(&shape)
}

/// Per-channel sum of `[N, C, ...]` over every dimension but C: shape `[C]`. Used for bias
/// gradients (conv: `[N, K, H, W]`; linear: `[N, O]`).
pub fn sum_channels(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("sum_channels", DType::F32)?;
    if x.rank() < 2 {
        return Err(Error::shape(
            "sum_channels",
            format!("need rank >= 2, got {:?}", x.shape()),
        ));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let hw: usize = x.shape()[2..].iter().product();
    let out = Tensor::uninit(x.gpu(), &[c], DType::F32, "sum_channels")?;
    let p = Params {
        rows: c as u32,
        len: hw as u32,
        batch: n as u32,
        alpha: 1.0,
    };
    x.gpu().dispatch(
        &SUM_CHANNELS,
        &p,
        &[x.buffer(), out.buffer()],
        grid_1d(c as u32),
    )?;
    Ok(out)
}

impl Var {
    /// Sum of all elements; its gradient broadcasts the upstream scalar.
    pub fn sum(&self) -> Result<Var> {
        let out = sum(self.tensor())?;
        let shape = self.shape().to_vec();
        Var::record("sum", &[self], out, move |gy| {
            let ones = Tensor::full(gy.gpu(), &shape, 1.0)?;
            Ok(vec![Some(crate::ops::scale_by(&ones, &gy)?)])
        })
    }

    /// Mean of all elements.
    pub fn mean(&self) -> Result<Var> {
        let n = self.tensor().numel() as f32;
        self.sum()?.scale(1.0 / n)
    }
}
