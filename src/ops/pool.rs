//! Pooling: max pool (with PyTorch-style argmax indices), average pool (count_include_pad = True)
//! and global average pool, forward and backward. See `shaders/pool.wgsl`.
//!
//! Windows are square (`kernel x kernel`), with equal stride and padding on both axes, no
//! dilation, floor mode: `OH = (H + 2 * padding - kernel) / stride + 1`. Backward passes are
//! gathers (each input element sums the gradients of the outputs that used it), so overlapping
//! windows need no atomics and results are deterministic.

use crate::autograd::Var;
use crate::gpu::{Kernel, flag, grid_1d, grid_for_elements};
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
    /// C: max_forward with BN finds a plane's channel.
    channels: u32,
}

const MAX_FORWARD: Kernel = reducing_kernel!("pool.wgsl", "max_forward");
const MAX_BACKWARD: Kernel = reducing_kernel!("pool.wgsl", "max_backward");
const AVG_FORWARD: Kernel = reducing_kernel!("pool.wgsl", "avg_forward");
const AVG_BACKWARD: Kernel = reducing_kernel!("pool.wgsl", "avg_backward");
const GAP_FORWARD: Kernel = reducing_kernel!("pool.wgsl", "gap_forward");
const GAP_FORWARD_SMALL: Kernel = reducing_kernel!("pool.wgsl", "gap_forward_small");
const GAP_BACKWARD: Kernel = reducing_kernel!("pool.wgsl", "gap_backward");

/// Planes reduced by one `gap_forward` workgroup.
const GAP_PLANES_PER_GROUP: usize = 4;
/// Planes of at most this many values take `gap_forward_small`, a thread per plane.
const GAP_SMALL_PLANE: usize = 64;

/// A checked pooling geometry.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn new(
        op: &'static str,
        x: [usize; 4],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Geometry> {
        let [n, c, h, w] = x;
        let what = format!(
            "input [{n}, {c}, {h}, {w}], kernel {kernel}, stride {stride}, padding {padding}"
        );
        if kernel == 0 || stride == 0 {
            return Err(Error::shape(
                op,
                format!("kernel and stride must be positive ({what})"),
            ));
        }
        if padding > kernel / 2 {
            return Err(Error::shape(
                op,
                format!("padding must be at most half the kernel size ({what})"),
            ));
        }
        if n * c * h * w == 0 {
            return Err(Error::shape(op, format!("empty input ({what})")));
        }
        if h + 2 * padding < kernel || w + 2 * padding < kernel {
            return Err(Error::shape(
                op,
                format!("output size would be zero or negative ({what})"),
            ));
        }
        let oh = (h + 2 * padding - kernel) / stride + 1;
        let ow = (w + 2 * padding - kernel) / stride + 1;
        let big = n * c * h.max(oh) * w.max(ow);
        if big >= u32::MAX as usize || h + 2 * padding + kernel >= i32::MAX as usize {
            return Err(Error::shape(
                op,
                format!("exceeds the u32 index range ({what})"),
            ));
        }
        Ok(Geometry {
            n,
            c,
            h,
            w,
            oh,
            ow,
            k: kernel,
            stride,
            pad: padding,
        })
    }

    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.oh, self.ow]
    }

    fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    fn params(&self) -> Params {
        Params {
            planes: (self.n * self.c) as u32,
            h: self.h as u32,
            w: self.w as u32,
            oh: self.oh as u32,
            ow: self.ow as u32,
            k: self.k as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            channels: self.c as u32,
        }
    }

    /// The window as max_forward's and the backward gathers' pipeline constants (`WK`, `WS`,
    /// `WP`).
    fn window_constants(&self) -> [(&'static str, f64); 3] {
        [
            ("WK", self.k as f64),
            ("WS", self.stride as f64),
            ("WP", self.pad as f64),
        ]
    }
}

/// Check that `gy` (f32) has the output shape of `geo`.
fn expect_out_grad(op: &'static str, gy: &Tensor, geo: &Geometry) -> Result<()> {
    let want = geo.out_shape();
    if gy.dtype() != DType::F32 || gy.shape() != want {
        return Err(Error::shape(
            op,
            format!(
                "gy must be an f32 tensor of the output shape {want:?} (input [{}, {}, {}, {}]), got {:?} {:?}",
                geo.n,
                geo.c,
                geo.h,
                geo.w,
                gy.dtype(),
                gy.shape()
            ),
        ));
    }
    Ok(())
}

/// 2-D max pooling of `x` (`[N, C, H, W]`). Returns the output and, per output element, the u32
/// index `h * W + w` of its maximum within its input plane (as PyTorch's `return_indices`).
/// Padding counts as `-inf`; the first maximum in the window wins.
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Tensor)> {
    max_forward("max_pool2d", x, kernel, stride, padding, false, None)
}

/// `relu(max_pool2d(x))`, which equals max pooling of `relu(x)`: a ReLU followed by a max pool
/// (a ResNet stem) in one pass whose backward needs the pooled output but not the ReLU's
/// full-size output. Returns the output and the argmax indices of `x`'s windows.
pub fn max_pool2d_relu(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Tensor)> {
    max_forward("max_pool2d_relu", x, kernel, stride, padding, true, None)
}

/// [`max_pool2d_relu`] of the batch norm of `x`, `(x - mean) * invstd * gamma + beta` per
/// channel (`bn` = [mean, invstd, gamma, beta], each `[C]`), without writing the batch norm's
/// output. The indices are the argmax of the normalized values.
pub(crate) fn max_pool2d_bn_relu(
    x: &Tensor,
    bn: [&Tensor; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Tensor, Tensor)> {
    max_forward(
        "max_pool2d_bn_relu",
        x,
        kernel,
        stride,
        padding,
        true,
        Some(bn),
    )
}

fn max_forward(
    op: &'static str,
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    relu: bool,
    bn: Option<[&Tensor; 4]>,
) -> Result<(Tensor, Tensor)> {
    let geo = Geometry::new(op, x.nchw(op, "x")?, kernel, stride, padding)?;
    let y = Tensor::uninit(x.gpu(), &geo.out_shape(), DType::F32, op)?;
    let idx = Tensor::uninit(x.gpu(), &geo.out_shape(), DType::U32, op)?;
    // Without BN the statistics are never read: x stands in for them.
    let [mean, invstd, gamma, beta] = bn.unwrap_or([x; 4]);
    let mut constants = geo.window_constants().to_vec();
    constants.extend([flag("RELU", relu), flag("BN", bn.is_some())]);
    x.gpu().dispatch_with(
        &MAX_FORWARD,
        &constants,
        &geo.params(),
        &[
            x.buffer(),
            y.buffer(),
            idx.buffer(),
            mean.buffer(),
            invstd.buffer(),
            gamma.buffer(),
            beta.buffer(),
        ],
        grid_for_elements(y.numel()),
    )?;
    Ok((y, idx))
}

/// Backward of [`max_pool2d`]: each input element receives the sum of `gy` over the outputs whose
/// argmax (`indices`) it is. The pooling geometry is needed to bound that search (a gather).
pub fn max_pool2d_backward(
    gy: &Tensor,
    indices: &Tensor,
    x_shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geo = Geometry::new("max_pool2d_backward", x_shape, kernel, stride, padding)?;
    max_backward("max_pool2d_backward", gy, indices, None, &geo)
}

/// Backward of [`max_pool2d_relu`] from its output `y`: [`max_pool2d_backward`] of `gy` zeroed
/// where `y <= 0` (a NaN `y` passes the gradient, as PyTorch's ReLU backward).
pub fn max_pool2d_relu_backward(
    gy: &Tensor,
    y: &Tensor,
    indices: &Tensor,
    x_shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "max_pool2d_relu_backward";
    let geo = Geometry::new(OP, x_shape, kernel, stride, padding)?;
    y.expect_f32_shape(OP, "y", "gy's", gy.shape())?;
    gy.expect_same_gpu(OP, y)?;
    max_backward(OP, gy, indices, Some(y), &geo)
}

/// Check max pooling's argmax `indices` against the output gradient `gy`: u32, of gy's shape,
/// on gy's device.
pub(crate) fn expect_indices(op: &'static str, indices: &Tensor, gy: &Tensor) -> Result<()> {
    if indices.dtype() != DType::U32 || indices.shape() != gy.shape() {
        return Err(Error::shape(
            op,
            format!(
                "indices must be a u32 tensor of gy's shape {:?}, got {:?} {:?}",
                gy.shape(),
                indices.dtype(),
                indices.shape()
            ),
        ));
    }
    gy.expect_same_gpu(op, indices)
}

fn max_backward(
    op: &'static str,
    gy: &Tensor,
    indices: &Tensor,
    relu_y: Option<&Tensor>,
    geo: &Geometry,
) -> Result<Tensor> {
    expect_out_grad(op, gy, geo)?;
    expect_indices(op, indices, gy)?;
    let gx = Tensor::uninit(gy.gpu(), &geo.x_shape(), DType::F32, op)?;
    let [wk, ws, wp] = geo.window_constants();
    gy.gpu().dispatch_with(
        &MAX_BACKWARD,
        &[wk, ws, wp, flag("RELU", relu_y.is_some())],
        &geo.params(),
        // Without the ReLU, y is never read: gy stands in for it.
        &[
            gy.buffer(),
            indices.buffer(),
            gx.buffer(),
            relu_y.unwrap_or(gy).buffer(),
        ],
        grid_for_elements(gx.numel()),
    )?;
    Ok(gx)
}

/// 2-D average pooling of `x` (`[N, C, H, W]`); zero padding is counted in the divisor
/// (`count_include_pad = True`, PyTorch's default).
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    const OP: &str = "avg_pool2d";
    let geo = Geometry::new(OP, x.nchw(OP, "x")?, kernel, stride, padding)?;
    let y = Tensor::uninit(x.gpu(), &geo.out_shape(), DType::F32, OP)?;
    x.gpu().dispatch(
        &AVG_FORWARD,
        &geo.params(),
        &[x.buffer(), y.buffer()],
        grid_for_elements(y.numel()),
    )?;
    Ok(y)
}

/// Backward of [`avg_pool2d`] for an input of shape `x_shape`.
pub fn avg_pool2d_backward(
    gy: &Tensor,
    x_shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "avg_pool2d_backward";
    let geo = Geometry::new(OP, x_shape, kernel, stride, padding)?;
    expect_out_grad(OP, gy, &geo)?;
    let gx = Tensor::uninit(gy.gpu(), &x_shape, DType::F32, OP)?;
    gy.gpu().dispatch_with(
        &AVG_BACKWARD,
        &geo.window_constants(),
        &geo.params(),
        &[gy.buffer(), gx.buffer()],
        grid_for_elements(gx.numel()),
    )?;
    Ok(gx)
}

fn gap_params(op: &'static str, x_shape: [usize; 4]) -> Result<Params> {
    let [n, c, h, w] = x_shape;
    let total = n * c * h * w;
    if total == 0 || total >= u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("input {x_shape:?} is empty or exceeds the u32 index range"),
        ));
    }
    Ok(Params {
        planes: (n * c) as u32,
        h: h as u32,
        w: w as u32,
        oh: 1,
        ow: 1,
        k: 1,
        stride: 1,
        pad: 0,
        channels: c as u32,
    })
}

/// Global average pooling: `[N, C, H, W] -> [N, C]`, the mean of each plane.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    let shape = x.nchw(OP, "x")?;
    let p = gap_params(OP, shape)?;
    let planes = shape[0] * shape[1];
    let y = Tensor::uninit(x.gpu(), &[shape[0], shape[1]], DType::F32, OP)?;
    let (kernel, groups) = if shape[2] * shape[3] <= GAP_SMALL_PLANE {
        (&GAP_FORWARD_SMALL, planes.div_ceil(256))
    } else {
        (&GAP_FORWARD, planes.div_ceil(GAP_PLANES_PER_GROUP))
    };
    x.gpu().dispatch(
        kernel,
        &p,
        &[x.buffer(), y.buffer()],
        grid_1d(groups as u32),
    )?;
    Ok(y)
}

/// Backward of [`global_avg_pool`]: `gx[n, c, h, w] = gy[n, c] / (H * W)`.
pub fn global_avg_pool_backward(gy: &Tensor, x_shape: [usize; 4]) -> Result<Tensor> {
    const OP: &str = "global_avg_pool_backward";
    let p = gap_params(OP, x_shape)?;
    if gy.dtype() != DType::F32 || gy.shape() != [x_shape[0], x_shape[1]] {
        return Err(Error::shape(
            OP,
            format!(
                "gy must be an f32 tensor of shape [{}, {}] for input {x_shape:?}, got {:?} {:?}",
                x_shape[0],
                x_shape[1],
                gy.dtype(),
                gy.shape()
            ),
        ));
    }
    let gx = Tensor::uninit(gy.gpu(), &x_shape, DType::F32, OP)?;
    gy.gpu().dispatch(
        &GAP_BACKWARD,
        &p,
        &[gy.buffer(), gx.buffer()],
        grid_for_elements(gx.numel()),
    )?;
    Ok(gx)
}

fn shape4(t: &Tensor) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

impl Var {
    /// 2-D max pooling; the backward keeps only the argmax indices.
    pub fn max_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        let (y, idx) = max_pool2d(self.tensor(), kernel, stride, padding)?;
        let x_shape = shape4(self.tensor());
        let saved = Var::any_tracked(&[self]).then_some(idx);
        Var::record("max_pool2d", &[self], y, move |gy| {
            let idx = saved.expect("saved when tracked");
            Ok(vec![Some(max_pool2d_backward(
                &gy, &idx, x_shape, kernel, stride, padding,
            )?)])
        })
    }

    /// `relu(max_pool2d(x))` (see [`max_pool2d_relu`]): a ReLU then a max pool, whose backward
    /// keeps the pooled output and the argmax indices rather than the ReLU's full-size output.
    pub fn max_pool2d_relu(&self, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        let (y, idx) = max_pool2d_relu(self.tensor(), kernel, stride, padding)?;
        let x_shape = shape4(self.tensor());
        let saved = Var::any_tracked(&[self]).then(|| (y.clone(), idx));
        Var::record("max_pool2d_relu", &[self], y, move |gy| {
            let (y, idx) = saved.expect("saved when tracked");
            Ok(vec![Some(max_pool2d_relu_backward(
                &gy, &y, &idx, x_shape, kernel, stride, padding,
            )?)])
        })
    }

    /// 2-D average pooling (count_include_pad = True); the backward keeps nothing but shapes.
    pub fn avg_pool2d(&self, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        let y = avg_pool2d(self.tensor(), kernel, stride, padding)?;
        let x_shape = shape4(self.tensor());
        Var::record("avg_pool2d", &[self], y, move |gy| {
            Ok(vec![Some(avg_pool2d_backward(
                &gy, x_shape, kernel, stride, padding,
            )?)])
        })
    }

    /// Global average pooling `[N, C, H, W] -> [N, C]`.
    pub fn global_avg_pool(&self) -> Result<Var> {
        let y = global_avg_pool(self.tensor())?;
        let x_shape = shape4(self.tensor());
        Var::record("global_avg_pool", &[self], y, move |gy| {
            Ok(vec![Some(global_avg_pool_backward(&gy, x_shape)?)])
        })
    }
}
