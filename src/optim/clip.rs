//! Gradient clipping by global L2 norm (`torch.nn.utils.clip_grad_norm_`), entirely on the GPU.

use super::{CLIP_FINALIZE, CLIP_SCALE, CLIP_SUMSQ, Params};
use crate::gpu::grid_for_elements;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Most workgroups one tensor's sum of squares uses (each thread strides over the rest).
const MAX_GROUPS: usize = 256;

/// Compute the global L2 norm of `grads` and scale every gradient in place by
/// `min(1, max_norm / (norm + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`. The factor is computed
/// and applied on the GPU (no read-back); the norm (before clipping) is returned as a `[1]` tensor.
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f32) -> Result<Tensor> {
    const OP: &str = "clip_grad_norm";
    let first = grads
        .first()
        .ok_or_else(|| Error::shape(OP, "no gradients given"))?;
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        return Err(Error::shape(
            OP,
            format!("max_norm must be positive and finite, got {max_norm}"),
        ));
    }
    let gpu = first.gpu();
    let mut groups = Vec::with_capacity(grads.len());
    for (i, g) in grads.iter().enumerate() {
        g.expect_dtype(OP, DType::F32)?;
        first.expect_same_gpu(OP, g)?;
        if g.numel() > u32::MAX as usize {
            return Err(Error::shape(
                OP,
                format!("gradient {i} {:?} exceeds the u32 index range", g.shape()),
            ));
        }
        if grads[..i].iter().any(|h| h.same_storage(g)) {
            return Err(Error::shape(
                OP,
                format!("gradient {i} shares a buffer with an earlier one"),
            ));
        }
        groups.push(g.numel().div_ceil(256).min(MAX_GROUPS));
    }
    let total: usize = groups.iter().sum();
    let partials = Tensor::uninit(gpu, &[total], DType::F32, OP)?;
    let mut offset = 0;
    for (g, &count) in grads.iter().zip(&groups) {
        let p = Params {
            n: g.numel() as u32,
            offset: offset as u32,
            ..Default::default()
        };
        gpu.dispatch(
            &CLIP_SUMSQ,
            &p,
            &[g.buffer(), partials.buffer()],
            [count as u32, 1, 1],
        )?;
        offset += count;
    }
    let norm = Tensor::uninit(gpu, &[1], DType::F32, OP)?;
    let coef = Tensor::uninit(gpu, &[1], DType::F32, OP)?;
    let p = Params {
        offset: total as u32,
        max_norm,
        ..Default::default()
    };
    gpu.dispatch(
        &CLIP_FINALIZE,
        &p,
        &[partials.buffer(), norm.buffer(), coef.buffer()],
        [1, 1, 1],
    )?;
    for g in grads {
        let p = Params {
            n: g.numel() as u32,
            ..Default::default()
        };
        gpu.dispatch(
            &CLIP_SCALE,
            &p,
            &[coef.buffer(), g.buffer()],
            grid_for_elements(g.numel()),
        )?;
    }
    Ok(norm)
}
