//! Gradient clipping by global L2 norm (`torch.nn.utils.clip_grad_norm_`), entirely on the GPU.

use super::{CLIP_FINALIZE, CLIP_SCALE, CLIP_SCALE_GROUP, CLIP_SUMSQ, CLIP_SUMSQ_GROUP, Params};
use crate::gpu::{Gpu, WORKGROUP_1D, grid_1d, grid_for_elements};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Most workgroups one tensor's sum of squares uses (each thread strides over the rest).
const MAX_GROUPS: usize = 256;
/// Gradients one grouped dispatch reads or scales (`CLIP_SLOTS` in `shaders/optim.wgsl`): with
/// the partials or the factor, 8 storage buffers, which every device binds.
const GROUP_SLOTS: usize = 7;

/// `ClipGroupParams` in `shaders/optim.wgsl` (slot arrays padded to 8).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GroupParams {
    count: u32,
    base: u32,
    _pad: [u32; 2],
    start: [u32; 8],
    groups: [u32; 8],
    n: [u32; 8],
}

/// Compute the global L2 norm of `grads` and scale every gradient in place by
/// `min(1, max_norm / (norm + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`. The factor is computed
/// and applied on the GPU (no read-back); the norm (before clipping) is returned as a `[1]` tensor.
///
/// On GPUs seven gradients share each dispatch (a ResNet-18's 62 take 9 reading and 9 scaling,
/// instead of 62 each); CPU adapters, where that is slower, run one dispatch per gradient.
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f32) -> Result<Tensor> {
    clip_grad_norm_with(grads, max_norm, None)
}

/// [`clip_grad_norm`] with the dispatches chosen: `grouping` `Some(true)` reads and scales
/// seven gradients per dispatch, `Some(false)` one, `None` grouped except on CPU adapters
/// (lavapipe runs every case of the grouped kernels' switch under a mask). For tests and
/// measurements; all give the same bits.
#[doc(hidden)]
pub fn clip_grad_norm_with(
    grads: &[&Tensor],
    max_norm: f32,
    grouping: Option<bool>,
) -> Result<Tensor> {
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
    let grouped = grouping.unwrap_or_else(|| gpu.plan_for() == crate::PlanFor::Gpu);
    let total: usize = groups.iter().sum();
    let partials = Tensor::uninit(gpu, &[total], DType::F32, OP)?;
    // The partial sums of gradient i's workgroups follow those of gradients 0 .. i.
    let mut offset = 0;
    if grouped {
        for (slots, counts) in grads.chunks(GROUP_SLOTS).zip(groups.chunks(GROUP_SLOTS)) {
            let mut p = GroupParams {
                count: slots.len() as u32,
                base: offset as u32,
                ..Default::default()
            };
            let mut start = 0;
            for (s, (g, &count)) in slots.iter().zip(counts).enumerate() {
                (p.start[s], p.groups[s], p.n[s]) = (start, count as u32, g.numel() as u32);
                start += count as u32;
            }
            dispatch_group(gpu, &CLIP_SUMSQ_GROUP, &p, slots, &partials, [start, 1, 1])?;
            offset += start as usize;
        }
    } else {
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
    if grouped {
        for slots in grads.chunks(GROUP_SLOTS) {
            let mut p = GroupParams {
                count: slots.len() as u32,
                ..Default::default()
            };
            let mut start = 0u32;
            for (s, g) in slots.iter().enumerate() {
                (p.start[s], p.n[s]) = (start, g.numel() as u32);
                start += g.numel().div_ceil(WORKGROUP_1D as usize) as u32;
            }
            dispatch_group(gpu, &CLIP_SCALE_GROUP, &p, slots, &coef, grid_1d(start))?;
        }
    } else {
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
    }
    Ok(norm)
}

/// One grouped clipping dispatch: `slots` at bindings 1 ..= 7 (a placeholder where there are
/// fewer), `last` (the partials or the factor) at 8.
fn dispatch_group(
    gpu: &Gpu,
    kernel: &crate::gpu::Kernel,
    p: &GroupParams,
    slots: &[&Tensor],
    last: &Tensor,
    grid: [u32; 3],
) -> Result<()> {
    // Unused slots: no workgroup reaches them. The scale kernel binds its slots read-write,
    // so the placeholder must not be a buffer bound read-only here.
    let spare = Tensor::uninit(gpu, &[1], DType::F32, "clip_grad_norm")?;
    let mut bound: Vec<(u32, &wgpu::Buffer)> = (0..GROUP_SLOTS)
        .map(|s| {
            (
                s as u32 + 1,
                slots.get(s).map_or(spare.buffer(), |g| g.buffer()),
            )
        })
        .collect();
    bound.push((GROUP_SLOTS as u32 + 1, last.buffer()));
    gpu.dispatch_bound(kernel, &[], p, &bound, grid)
}
