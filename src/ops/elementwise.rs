//! Elementwise ops: relu, add, scale, fill, axpy. See `shaders/elementwise.wgsl`.

use crate::autograd::Var;
use crate::gpu::{Kernel, grid_for_elements, scalar_or_vec4};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    _pad: [u32; 2],
}

const RELU_FORWARD: Kernel = kernel!("elementwise.wgsl", "relu_forward");
const RELU_BACKWARD: Kernel = kernel!("elementwise.wgsl", "relu_backward");
const RELU_BACKWARD_INPLACE: Kernel = kernel!("elementwise.wgsl", "relu_backward_inplace");
const ADD: Kernel = kernel!("elementwise.wgsl", "add");
const ADD_RELU: Kernel = kernel!("elementwise.wgsl", "add_relu");
const AXPY: Kernel = kernel!("elementwise.wgsl", "axpy");
const SCALE: Kernel = kernel!("elementwise.wgsl", "scale");
const SCALE_BY: Kernel = kernel!("elementwise.wgsl", "scale_by");
const FILL: Kernel = kernel!("elementwise.wgsl", "fill");
const RELU_FORWARD4: Kernel = kernel!("elementwise.wgsl", "relu_forward4");
const RELU_BACKWARD4: Kernel = kernel!("elementwise.wgsl", "relu_backward4");
const RELU_BACKWARD_INPLACE4: Kernel = kernel!("elementwise.wgsl", "relu_backward_inplace4");
const ADD4: Kernel = kernel!("elementwise.wgsl", "add4");
const ADD_RELU4: Kernel = kernel!("elementwise.wgsl", "add_relu4");
const AXPY4: Kernel = kernel!("elementwise.wgsl", "axpy4");
const SCALE4: Kernel = kernel!("elementwise.wgsl", "scale4");
const FILL4: Kernel = kernel!("elementwise.wgsl", "fill4");

/// An elementwise op's kernel, one element per thread, and its four-element twin.
type Pair = (&'static Kernel, &'static Kernel);

/// The kernel, parameters and grid for `n` elements ([`scalar_or_vec4`]).
fn plan(kernels: Pair, n: usize, alpha: f32) -> (&'static Kernel, Params, [u32; 3]) {
    let (kernel, units, grid) = scalar_or_vec4(n, kernels.0, kernels.1);
    (kernel, params(units, alpha), grid)
}

fn params(n: usize, alpha: f32) -> Params {
    Params {
        n: n as u32,
        alpha,
        _pad: [0; 2],
    }
}

fn check_n(op: &'static str, n: usize) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{n} elements exceed the u32 index range"),
        ));
    }
    Ok(())
}

fn unary(op: &'static str, kernels: Pair, x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_dtype(op, DType::F32)?;
    check_n(op, x.numel())?;
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32, op)?;
    let (k, p, grid) = plan(kernels, x.numel(), alpha);
    x.gpu().dispatch(k, &p, &[x.buffer(), y.buffer()], grid)?;
    Ok(y)
}

/// Check the two operands of an elementwise kernel: f32, one device, one shape.
fn expect_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    a.expect_dtype(op, DType::F32)?;
    b.expect_dtype(op, DType::F32)?;
    a.expect_same_gpu(op, b)?;
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    check_n(op, a.numel())
}

fn binary(op: &'static str, kernels: Pair, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    expect_pair(op, a, b)?;
    let out = Tensor::uninit(a.gpu(), a.shape(), DType::F32, op)?;
    let (k, p, grid) = plan(kernels, a.numel(), 0.0);
    a.gpu()
        .dispatch(k, &p, &[a.buffer(), b.buffer(), out.buffer()], grid)?;
    Ok(out)
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary("relu", (&RELU_FORWARD, &RELU_FORWARD4), x, 0.0)
}

/// Gradient of relu given its output `y` and upstream gradient `gy`: `gy`, zeroed where
/// `y <= 0` as PyTorch's (so a NaN `y` passes the gradient, where a mask `y > 0` would not).
pub fn relu_backward(y: &Tensor, gy: &Tensor) -> Result<Tensor> {
    binary("relu_backward", (&RELU_BACKWARD, &RELU_BACKWARD4), y, gy)
}

/// [`relu_backward`] taking `gy` by value: when no other handle shares its buffer
/// ([`Tensor::is_unique`]) the gradient is written over it, without allocating.
pub fn relu_backward_consume(y: &Tensor, gy: Tensor) -> Result<Tensor> {
    if !gy.is_unique() {
        return relu_backward(y, &gy);
    }
    relu_backward_in_place(y, &gy)?;
    Ok(gy)
}

/// Mask `g` by the ReLU output `y` in place (`g = 0` where `y <= 0`); the caller makes sure no
/// other handle needs `g`'s old values.
pub(crate) fn relu_backward_in_place(y: &Tensor, g: &Tensor) -> Result<()> {
    const OP: &str = "relu_backward";
    expect_pair(OP, y, g)?;
    let kernels = (&RELU_BACKWARD_INPLACE, &RELU_BACKWARD_INPLACE4);
    let (k, p, grid) = plan(kernels, y.numel(), 0.0);
    g.gpu().dispatch(k, &p, &[y.buffer(), g.buffer()], grid)
}

/// `a + b` (same shapes).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", (&ADD, &ADD4), a, b)
}

/// `max(a + b, 0)`: a residual join fused with its relu.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add_relu", (&ADD_RELU, &ADD_RELU4), a, b)
}

/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary("scale", (&SCALE, &SCALE4), x, alpha)
}

/// `x * s[0]` where `s` holds one element (an upstream scalar gradient, say).
pub fn scale_by(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    if s.numel() != 1 {
        return Err(Error::shape(
            "scale_by",
            format!("scale must hold one element, got {:?}", s.shape()),
        ));
    }
    x.expect_dtype("scale_by", DType::F32)?;
    s.expect_dtype("scale_by", DType::F32)?;
    let out = Tensor::uninit(x.gpu(), x.shape(), DType::F32, "scale_by")?;
    x.gpu().dispatch(
        &SCALE_BY,
        &params(x.numel(), 0.0),
        &[x.buffer(), s.buffer(), out.buffer()],
        grid_for_elements(x.numel()),
    )?;
    Ok(out)
}

/// `y += alpha * x`, in place.
pub fn axpy(y: &Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    y.expect_dtype("axpy", DType::F32)?;
    x.expect_dtype("axpy", DType::F32)?;
    if x.shape() != y.shape() {
        return Err(Error::shape(
            "axpy",
            format!("shapes differ: {:?} vs {:?}", x.shape(), y.shape()),
        ));
    }
    let (k, p, grid) = plan((&AXPY, &AXPY4), x.numel(), alpha);
    y.gpu().dispatch(k, &p, &[x.buffer(), y.buffer()], grid)
}

/// Set every element of `y` to `value`, in place (ordered with recorded work).
pub fn fill(y: &Tensor, value: f32) -> Result<()> {
    y.expect_dtype("fill", DType::F32)?;
    let (k, p, grid) = plan((&FILL, &FILL4), y.numel(), value);
    y.gpu().dispatch(k, &p, &[y.buffer()], grid)
}

impl Var {
    /// `max(x, 0)`, recording its backward (which keeps only the output).
    pub fn relu(&self) -> Result<Var> {
        let y = relu(self.tensor())?;
        let saved = Var::any_tracked(&[self]).then(|| y.clone());
        Var::record("relu", &[self], y, move |gy| {
            let y = saved.expect("saved when tracked");
            Ok(vec![Some(relu_backward_consume(&y, gy)?)])
        })
    }

    /// `a + b`; the gradient flows unchanged to both.
    pub fn add(&self, other: &Var) -> Result<Var> {
        let out = add(self.tensor(), other.tensor())?;
        Var::record("add", &[self, other], out, |gy| {
            Ok(vec![Some(gy.clone()), Some(gy.clone())])
        })
    }

    /// `max(a + b, 0)` in one kernel, recording one backward for both inputs.
    pub fn add_relu(&self, other: &Var) -> Result<Var> {
        let y = add_relu(self.tensor(), other.tensor())?;
        let saved = Var::any_tracked(&[self, other]).then(|| y.clone());
        Var::record("add_relu", &[self, other], y, move |gy| {
            let g = relu_backward_consume(&saved.expect("saved when tracked"), gy)?;
            Ok(vec![Some(g.clone()), Some(g)])
        })
    }

    /// `alpha * x`.
    pub fn scale(&self, alpha: f32) -> Result<Var> {
        let out = scale(self.tensor(), alpha)?;
        Var::record("scale", &[self], out, move |gy| {
            Ok(vec![Some(scale(&gy, alpha)?)])
        })
    }

    /// A view with another shape (same element count); the gradient is reshaped back.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let out = self.tensor().reshape(shape)?;
        let orig = self.shape().to_vec();
        Var::record("reshape", &[self], out, move |gy| {
            Ok(vec![Some(gy.reshape(&orig)?)])
        })
    }
}
