//! Elementwise ops: relu, add, scale, fill, axpy. See `shaders/elementwise.wgsl`.

use crate::autograd::Var;
use crate::gpu::{Kernel, grid_for_elements};
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

fn unary(op: &'static str, k: &Kernel, x: &Tensor, alpha: f32) -> Result<Tensor> {
    x.expect_dtype(op, DType::F32)?;
    check_n(op, x.numel())?;
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32, op)?;
    x.gpu().dispatch(
        k,
        &params(x.numel(), alpha),
        &[x.buffer(), y.buffer()],
        grid_for_elements(x.numel()),
    )?;
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

fn binary(op: &'static str, k: &Kernel, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    expect_pair(op, a, b)?;
    let out = Tensor::uninit(a.gpu(), a.shape(), DType::F32, op)?;
    a.gpu().dispatch(
        k,
        &params(a.numel(), 0.0),
        &[a.buffer(), b.buffer(), out.buffer()],
        grid_for_elements(a.numel()),
    )?;
    Ok(out)
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary("relu", &RELU_FORWARD, x, 0.0)
}

/// Gradient of relu given its output `y` and upstream gradient `gy`.
pub fn relu_backward(y: &Tensor, gy: &Tensor) -> Result<Tensor> {
    binary("relu_backward", &RELU_BACKWARD, y, gy)
}

/// [`relu_backward`] taking `gy` by value: when no other handle shares its buffer
/// ([`Tensor::is_unique`]) the gradient is written over it, without allocating.
pub fn relu_backward_consume(y: &Tensor, gy: Tensor) -> Result<Tensor> {
    const OP: &str = "relu_backward";
    if !gy.is_unique() {
        return relu_backward(y, &gy);
    }
    expect_pair(OP, y, &gy)?;
    gy.gpu().dispatch(
        &RELU_BACKWARD_INPLACE,
        &params(y.numel(), 0.0),
        &[y.buffer(), gy.buffer()],
        grid_for_elements(y.numel()),
    )?;
    Ok(gy)
}

/// `a + b` (same shapes).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", &ADD, a, b)
}

/// `max(a + b, 0)`: a residual join fused with its relu.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add_relu", &ADD_RELU, a, b)
}

/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    unary("scale", &SCALE, x, alpha)
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
    y.gpu().dispatch(
        &AXPY,
        &params(x.numel(), alpha),
        &[x.buffer(), y.buffer()],
        grid_for_elements(x.numel()),
    )
}

/// Set every element of `y` to `value`, in place (ordered with recorded work).
pub fn fill(y: &Tensor, value: f32) -> Result<()> {
    y.expect_dtype("fill", DType::F32)?;
    y.gpu().dispatch(
        &FILL,
        &params(y.numel(), value),
        &[y.buffer()],
        grid_for_elements(y.numel()),
    )
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
