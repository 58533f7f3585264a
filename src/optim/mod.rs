//! Optimizers (SGD with momentum/Nesterov, Adam, AdamW), learning-rate schedules and gradient
//! clipping by global norm. The updates run on the GPU (`shaders/optim.wgsl`) and follow
//! `torch.optim` exactly: on GPUs (not CPU adapters, where it is slower) SGD with momentum
//! updates eight parameter tensors per dispatch and Adam/AdamW five where the device binds 24
//! storage buffers per shader stage (native adapters, Metal's 29 included), two where it binds
//! WebGPU's default 8; elsewhere one dispatch per tensor.
//!
//! Each parameter is identified by a stable `slot` (its index in the model's parameter list), the
//! key of its optimizer state. [`Optimizer::state`] returns that state as named tensors
//! (`momentum.<slot>`, `exp_avg.<slot>`, `exp_avg_sq.<slot>`, `step.<slot>` and a global `step`)
//! for checkpoints; [`Optimizer::load_state`] restores it exactly. State tensors are updated in
//! place, as the parameters are: `state` returns copies, which later steps never modify.

mod adam;
mod clip;
mod schedule;
mod sgd;

pub use adam::AdamW;
pub use clip::{clip_grad_norm, clip_grad_norm_with};
pub use schedule::Schedule;
pub use sgd::Sgd;

use crate::gpu::Kernel;
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use std::collections::HashSet;

/// One parameter tensor to update: its stable slot, the parameter (updated in place), its
/// gradient and the learning rate to use.
#[derive(Clone, Copy, Debug)]
pub struct ParamUpdate<'a> {
    /// Stable index of the parameter: the key of its optimizer state.
    pub slot: usize,
    /// The parameter, updated in place.
    pub param: &'a Tensor,
    /// Its gradient (same shape), left unchanged.
    pub grad: &'a Tensor,
    /// Learning rate for this step.
    pub lr: f32,
}

/// A first-order optimizer. Its state (momentum buffers, Adam's moments) is updated in place,
/// as the parameters are.
pub trait Optimizer {
    /// Update every parameter in `updates` once; counts as one step.
    fn step(&mut self, updates: &[ParamUpdate<'_>]) -> Result<()>;
    /// The state as named tensors, for checkpoints: copies, which later steps leave as they are.
    fn state(&self) -> Result<Vec<(String, Tensor)>>;
    /// Replace the state with one returned by [`Optimizer::state`] (of the same optimizer kind).
    /// Tensors that other handles share are copied first, since the updates write the state in
    /// place. Reads the step counters back from the GPU, so it is blocking (native only).
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()>;
    /// Number of steps taken (restored by [`Optimizer::load_state`]).
    fn steps(&self) -> u64;
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n: u32,
    pub flags: u32,
    pub offset: u32,
    pub _pad0: u32,
    pub lr: f32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub max_norm: f32,
}

pub(crate) const SGD_PLAIN: Kernel = reducing_kernel!("optim.wgsl", "sgd_plain");
pub(crate) const SGD_MOMENTUM: Kernel = reducing_kernel!("optim.wgsl", "sgd_momentum");
pub(crate) const SGD_MOMENTUM_GROUP: Kernel = reducing_kernel!("optim.wgsl", "sgd_momentum_group");
pub(crate) const SGD_MOMENTUM_GROUP2: Kernel =
    reducing_kernel!("optim.wgsl", "sgd_momentum_group2");
pub(crate) const ADAM: Kernel = reducing_kernel!("optim.wgsl", "adam");
pub(crate) const ADAM_GROUP: Kernel = reducing_kernel!("optim.wgsl", "adam_group");
pub(crate) const ADAM_GROUP2: Kernel = reducing_kernel!("optim.wgsl", "adam_group2");
pub(crate) const SGD_PLAIN4: Kernel = reducing_kernel!("optim.wgsl", "sgd_plain4");
pub(crate) const SGD_MOMENTUM4: Kernel = reducing_kernel!("optim.wgsl", "sgd_momentum4");
pub(crate) const ADAM4: Kernel = reducing_kernel!("optim.wgsl", "adam4");
pub(crate) const CLIP_SUMSQ: Kernel = reducing_kernel!("optim.wgsl", "clip_sumsq");
pub(crate) const CLIP_FINALIZE: Kernel = reducing_kernel!("optim.wgsl", "clip_finalize");
pub(crate) const CLIP_SCALE: Kernel = reducing_kernel!("optim.wgsl", "clip_scale");
pub(crate) const CLIP_SUMSQ_GROUP: Kernel = reducing_kernel!("optim.wgsl", "clip_sumsq_group");
pub(crate) const CLIP_SCALE_GROUP: Kernel = reducing_kernel!("optim.wgsl", "clip_scale_group");

pub(crate) const FLAG_VARIANT: u32 = 1;
pub(crate) const FLAG_FIRST: u32 = 2;

/// A grouped update kernel: `slots` tensors per dispatch, `per_slot` storage buffers each.
pub(crate) struct GroupKernel {
    pub kernel: &'static Kernel,
    pub slots: usize,
}

/// The grouped kernel of `variants` (most slots first, each binding `per_slot` storage buffers
/// per tensor) that updates `updates` on their device, if any: the first whose buffers the
/// device binds per shader stage (24 of SGD's and 20 of Adam's eight and five slots fit native
/// GPUs and Metal's 29; two slots fit WebGPU's default 8), where grouping runs by default
/// unless `asked` says otherwise: on GPUs, not on CPU adapters. A GPU runs only the switch case
/// of a workgroup's tensor (the same for all its threads), but lavapipe runs every case under a
/// mask: there SGD's eight tensors per dispatch took 4.8x the time of a dispatch per tensor
/// (ResNet-18 CIFAR step at batch 2: 241 against 50 ms). All updates must be on one device.
pub(crate) fn group_kernel(
    updates: &[ParamUpdate<'_>],
    variants: &'static [GroupKernel],
    per_slot: u32,
    asked: Option<bool>,
) -> Option<&'static GroupKernel> {
    let first = updates.first()?;
    let gpu = first.param.gpu();
    let by_default = || gpu.plan_for() == crate::PlanFor::Gpu;
    let one_device = || {
        updates
            .iter()
            .all(|u| u.param.expect_same_gpu("optimizer", first.param).is_ok())
    };
    if !asked.unwrap_or_else(by_default) || !one_device() {
        return None;
    }
    let bound = gpu.limits().max_storage_buffers_per_shader_stage;
    variants.iter().find(|v| v.slots as u32 * per_slot <= bound)
}

/// `t` as an optimizer's own state, which its updates write in place: `t` itself where no other
/// handle shares its buffer, else a copy.
pub(crate) fn owned(t: Tensor) -> Result<Tensor> {
    if t.is_unique() { Ok(t) } else { t.deep_clone() }
}

/// Split `updates` into the ranges that one grouped dispatch each updates, in order: at most
/// `slots` tensors, and a new dispatch wherever an update's parameter is read or written by an
/// earlier update of the current one, or its gradient (the one buffer it reads) is an earlier
/// update's parameter. wgpu rejects a buffer bound both read-only and read-write in one
/// dispatch; per tensor in order, the earlier update reads the buffer before the later one
/// writes it, and so do the split dispatches. (The state tensors are the optimizer's own,
/// bound nowhere else.)
pub(crate) fn plan_groups(
    updates: &[ParamUpdate<'_>],
    slots: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let (mut read, mut written) = (HashSet::new(), HashSet::new());
    for (i, u) in updates.iter().enumerate() {
        let (r, w) = (u.grad.buffer(), u.param.buffer());
        let clash = read.contains(w) || written.contains(w) || written.contains(r);
        if i - start == slots || clash {
            ranges.push(start..i);
            start = i;
            read.clear();
            written.clear();
        }
        read.insert(r.clone());
        written.insert(w.clone());
    }
    if start < updates.len() {
        ranges.push(start..updates.len());
    }
    ranges
}

/// Check every update: f32 parameter and gradient of one shape on one device, distinct slots,
/// a finite learning rate.
pub(crate) fn check_updates(op: &'static str, updates: &[ParamUpdate<'_>]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for u in updates {
        u.param.expect_dtype(op, DType::F32)?;
        u.grad.expect_dtype(op, DType::F32)?;
        u.param.expect_same_gpu(op, u.grad)?;
        if u.param.shape() != u.grad.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "slot {}: gradient {:?} does not match parameter {:?}",
                    u.slot,
                    u.grad.shape(),
                    u.param.shape()
                ),
            ));
        }
        if u.param.same_storage(u.grad) {
            return Err(Error::shape(
                op,
                format!("slot {}: gradient and parameter share a buffer", u.slot),
            ));
        }
        if u.param.numel() > u32::MAX as usize {
            return Err(Error::shape(
                op,
                format!(
                    "slot {}: {:?} exceeds the u32 index range",
                    u.slot,
                    u.param.shape()
                ),
            ));
        }
        if !u.lr.is_finite() {
            return Err(Error::shape(
                op,
                format!("slot {}: learning rate {} is not finite", u.slot, u.lr),
            ));
        }
        if !seen.insert(u.slot) {
            return Err(Error::shape(
                op,
                format!("slot {} appears twice in one step", u.slot),
            ));
        }
    }
    Ok(())
}

/// Check that a state tensor matches its parameter.
pub(crate) fn check_state(
    op: &'static str,
    name: &str,
    slot: usize,
    state: &Tensor,
    param: &Tensor,
) -> Result<()> {
    if state.shape() != param.shape() || state.dtype() != DType::F32 {
        return Err(Error::shape(
            op,
            format!(
                "state {name}.{slot} is {:?} {:?} but the parameter is {:?}",
                state.dtype(),
                state.shape(),
                param.shape()
            ),
        ));
    }
    param.expect_same_gpu(op, state)
}

/// A one-element tensor holding a step counter (f32: exact up to 2^24 steps).
pub(crate) fn counter_tensor(gpu: &crate::gpu::Gpu, value: u64) -> Result<Tensor> {
    Tensor::from_slice(gpu, &[1], &[value as f32])
}

/// Read a one-element step counter back (blocking; native only).
pub(crate) fn read_counter(op: &'static str, name: &str, t: &Tensor) -> Result<u64> {
    if t.numel() != 1 || t.dtype() != DType::F32 {
        return Err(Error::shape(
            op,
            format!(
                "state {name} must be a one-element f32 tensor, got {:?} {:?}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let v = t.to_vec()?[0];
        if !(v >= 0.0 && v.fract() == 0.0) {
            return Err(Error::shape(
                op,
                format!("state {name} holds {v}, not a step count"),
            ));
        }
        Ok(v as u64)
    }
    #[cfg(target_arch = "wasm32")]
    {
        Err(Error::Invalid(format!(
            "{op}: loading optimizer state needs a blocking read-back, unavailable on wasm32"
        )))
    }
}

/// Split a state name `prefix.slot` into its parts.
pub(crate) fn parse_slot<'a>(op: &'static str, name: &'a str) -> Result<(&'a str, usize)> {
    name.rsplit_once('.')
        .and_then(|(p, s)| s.parse::<usize>().ok().map(|s| (p, s)))
        .ok_or_else(|| Error::shape(op, format!("unexpected optimizer state name {name:?}")))
}
