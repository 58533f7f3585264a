//! Row-wise softmax and the fused softmax + cross-entropy loss. See `shaders/loss.wgsl`.
//!
//! Labels are a `U32` tensor `[N]` of class indices. The kernel cannot report errors, so a label
//! outside `0..K` that reaches it turns that row's loss (hence the mean loss) and gradient into NaN.
//! Upload labels with [`upload_labels`], which checks the range on the host, to get an error
//! instead.

use crate::autograd::Var;
use crate::gpu::{Gpu, Kernel, grid_1d};
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    smoothing: f32,
    grad_scale: f32,
    nan_bits: u32,
    _pad: [u32; 3],
}

const SOFTMAX_ROWS: Kernel = reducing_kernel!("loss.wgsl", "softmax_rows");
const SOFTMAX_XENT: Kernel = reducing_kernel!("loss.wgsl", "softmax_xent");

fn rows_classes(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    logits.expect_f32_rank(op, "logits", 2)?;
    let (n, k) = (logits.shape()[0], logits.shape()[1]);
    if logits.numel() > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("logits {:?} exceed the u32 index range", logits.shape()),
        ));
    }
    Ok((n, k))
}

fn params(rows: usize, classes: usize, smoothing: f32, grad_scale: f32) -> Params {
    Params {
        rows: rows as u32,
        classes: classes as u32,
        smoothing,
        grad_scale,
        nan_bits: f32::NAN.to_bits(),
        _pad: [0; 3],
    }
}

/// Upload class labels as a `U32` tensor `[N]`, checking that each is below `classes`.
pub fn upload_labels(gpu: &Gpu, labels: &[u32], classes: usize) -> Result<Tensor> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes)
    {
        return Err(Error::shape(
            "labels",
            format!("label {l} at index {i} is out of range for {classes} classes"),
        ));
    }
    Tensor::from_u32(gpu, &[labels.len()], labels)
}

/// Row-wise softmax of `[N, K]` logits (probabilities for inference).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    let (n, k) = rows_classes("softmax", logits)?;
    let probs = Tensor::uninit(logits.gpu(), &[n, k], DType::F32, "softmax")?;
    logits.gpu().dispatch(
        &SOFTMAX_ROWS,
        &params(n, k, 0.0, 0.0),
        &[logits.buffer(), probs.buffer()],
        grid_1d(n as u32),
    )?;
    Ok(probs)
}

/// Mean cross-entropy of `[N, K]` logits against `U32` labels `[N]`, with label smoothing
/// `label_smoothing` in `[0, 1]` (PyTorch's: target = (1-ε)·onehot + ε/K).
///
/// Returns the loss `[1]` and the logits' gradient `[N, K]` for an upstream gradient of 1,
/// `(softmax - target) / N`, both from one fused kernel (plus the batch-mean reduction).
/// A label `>= K` yields NaN (see the module docs); [`upload_labels`] rules that out.
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    label_smoothing: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    let (n, k) = rows_classes(OP, logits)?;
    logits.expect_same_gpu(OP, labels)?;
    if labels.dtype() != DType::U32 || labels.shape() != [n] {
        return Err(Error::shape(
            OP,
            format!(
                "labels must be a U32 tensor of shape [{n}] for logits {:?}, got {:?} {:?}",
                logits.shape(),
                labels.dtype(),
                labels.shape()
            ),
        ));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::shape(
            OP,
            format!("label_smoothing must lie in [0, 1], got {label_smoothing}"),
        ));
    }
    let gpu = logits.gpu();
    let row_loss = Tensor::uninit(gpu, &[n], DType::F32, OP)?;
    let glogits = Tensor::uninit(gpu, &[n, k], DType::F32, OP)?;
    gpu.dispatch(
        &SOFTMAX_XENT,
        &params(n, k, label_smoothing, 1.0 / n as f32),
        &[
            logits.buffer(),
            labels.buffer(),
            row_loss.buffer(),
            glogits.buffer(),
        ],
        grid_1d(n as u32),
    )?;
    let loss = crate::ops::mean(&row_loss)?;
    Ok((loss, glogits))
}

impl Var {
    /// Mean cross-entropy against `labels` (see [`cross_entropy`]); a `[1]` value whose backward
    /// scales the fused gradient by the upstream scalar. Labels get no gradient.
    pub fn cross_entropy(&self, labels: &Tensor, label_smoothing: f32) -> Result<Var> {
        let (loss, glogits) = cross_entropy(self.tensor(), labels, label_smoothing)?;
        let saved = Var::any_tracked(&[self]).then_some(glogits);
        Var::record("cross_entropy", &[self], loss, move |gy| {
            let g = saved.expect("saved when tracked");
            Ok(vec![Some(crate::ops::scale_by(&g, &gy)?)])
        })
    }
}
