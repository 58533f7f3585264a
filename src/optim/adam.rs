//! Adam with coupled L2 weight decay (`torch.optim.Adam`) and with decoupled weight decay
//! (`torch.optim.AdamW`), amsgrad off.

use super::{
    ADAM, ADAM_GROUP, ADAM_GROUP2, ADAM4, FLAG_FIRST, FLAG_VARIANT, GroupKernel, Optimizer,
    ParamUpdate, Params, check_state, check_updates, counter_tensor, group_kernel, owned,
    parse_slot, plan_groups, read_counter,
};
use crate::gpu::{Gpu, WORKGROUP_1D, grid_1d, scalar_or_vec4};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

#[derive(Debug)]
struct SlotState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// Adam / AdamW. With `decoupled`, `p *= 1 - lr·λ` before the Adam update (AdamW); otherwise
/// `g += λ·p` (Adam's L2 penalty). Then `m = β1·m + (1-β1)·g`, `v = β2·v + (1-β2)·g²`,
/// `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)` with `t` the parameter's step count.
#[derive(Debug)]
pub struct AdamW {
    /// Exponential decay rates of the first and second moments.
    pub betas: (f32, f32),
    /// Term added to the denominator.
    pub eps: f32,
    /// Weight decay λ.
    pub weight_decay: f32,
    /// Decoupled (AdamW) or coupled L2 (Adam) weight decay.
    pub decoupled: bool,
    slots: BTreeMap<usize, SlotState>,
    steps: u64,
    gpu: Option<Gpu>,
    /// Whether updates share dispatches (None: where the device runs that faster; see
    /// [`AdamW::with_grouping`]).
    grouping: Option<bool>,
}

impl AdamW {
    fn new(betas: (f32, f32), eps: f32, weight_decay: f32, decoupled: bool) -> AdamW {
        AdamW {
            betas,
            eps,
            weight_decay,
            decoupled,
            slots: BTreeMap::new(),
            steps: 0,
            gpu: None,
            grouping: None,
        }
    }

    #[allow(clippy::self_named_constructors)]
    /// AdamW (`torch.optim.AdamW`; its defaults are betas (0.9, 0.999), eps 1e-8, weight decay 1e-2).
    pub fn adamw(betas: (f32, f32), eps: f32, weight_decay: f32) -> AdamW {
        Self::new(betas, eps, weight_decay, true)
    }

    /// Adam with L2 weight decay added to the gradient (`torch.optim.Adam`).
    pub fn adam(betas: (f32, f32), eps: f32, weight_decay: f32) -> AdamW {
        Self::new(betas, eps, weight_decay, false)
    }
}

/// The step size `lr / (1 - β1^t)` and `sqrt(1 - β2^t)` of step `t`: as torch, the bias
/// corrections in double precision on the host.
fn bias_corrections(lr: f32, (b1, b2): (f32, f32), t: u64) -> (f32, f32) {
    let bc1 = 1.0 - (b1 as f64).powf(t as f64);
    let bc2 = 1.0 - (b2 as f64).powf(t as f64);
    ((lr as f64 / bc1) as f32, bc2.sqrt() as f32)
}

/// Parameter tensors one `adam_group` dispatch updates at most (`ADAM_SLOTS` in
/// `shaders/optim.wgsl`)...
const GROUP_SLOTS: usize = 5;
/// ...binding four storage buffers for each (20).
const PER_SLOT: u32 = 4;
/// The grouped kernels, most slots first: five tensors, or two (8 storage buffers, WebGPU's
/// default limit) where the device binds fewer than 20.
static GROUPS: [GroupKernel; 2] = [
    GroupKernel {
        kernel: &ADAM_GROUP,
        slots: GROUP_SLOTS,
    },
    GroupKernel {
        kernel: &ADAM_GROUP2,
        slots: 2,
    },
];

/// `AdamGroupParams` in `shaders/optim.wgsl` (slot arrays padded to 8).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GroupParams {
    count: u32,
    flags: u32,
    first: u32,
    _pad0: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    start: [u32; 8],
    n: [u32; 8],
    lr: [f32; 8],
    step_size: [f32; 8],
    bc2_sqrt: [f32; 8],
}

impl AdamW {
    /// Update five tensors per dispatch (`true`; two where the device binds fewer than 20
    /// storage buffers per stage, one where fewer than 8) or one (`false`), instead of
    /// choosing by the plan (grouped on GPUs, not on CPU adapters, where it is slower). For
    /// tests and measurements; all give the same bits.
    #[doc(hidden)]
    pub fn with_grouping(mut self, grouping: bool) -> AdamW {
        self.grouping = Some(grouping);
        self
    }

    /// One dispatch of `kernel` over `group` (at most `kernel.slots` updates), each updating its
    /// moments in place (new ones on its first step).
    fn dispatch_group(&mut self, group: &[ParamUpdate<'_>], kernel: &GroupKernel) -> Result<()> {
        const OP: &str = "adam";
        let Some(first) = group.first() else {
            return Ok(());
        };
        let gpu = first.param.gpu().clone();
        let mut p = GroupParams {
            count: group.len() as u32,
            flags: if self.decoupled { FLAG_VARIANT } else { 0 },
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
            ..Default::default()
        };
        let mut steps = Vec::with_capacity(group.len());
        for u in group {
            steps.push(self.state_for(u)?.step + 1);
        }
        // Unused slots bind placeholders, never read or written (no workgroup reaches them).
        let spare_read = Tensor::uninit(&gpu, &[1], DType::F32, OP)?;
        let spare_write = Tensor::uninit(&gpu, &[1], DType::F32, OP)?;
        let mut bound: Vec<(u32, &wgpu::Buffer)> = Vec::with_capacity(4 * kernel.slots);
        let mut workgroups = 0u32;
        for s in 0..kernel.slots {
            let b = PER_SLOT * s as u32;
            let (Some(u), Some(&step)) = (group.get(s), steps.get(s)) else {
                let (r, w) = (spare_read.buffer(), spare_write.buffer());
                bound.extend([(b + 1, w), (b + 2, r), (b + 3, w), (b + 4, w)]);
                continue;
            };
            let state = &self.slots[&u.slot];
            let n = u.param.numel();
            (p.step_size[s], p.bc2_sqrt[s]) = bias_corrections(u.lr, self.betas, step);
            p.start[s] = workgroups;
            p.n[s] = n as u32;
            p.lr[s] = u.lr;
            if step == 1 {
                p.first |= 1 << s;
            }
            workgroups += n.div_ceil(WORKGROUP_1D as usize) as u32;
            bound.extend([
                (b + 1, u.param.buffer()),
                (b + 2, u.grad.buffer()),
                (b + 3, state.exp_avg.buffer()),
                (b + 4, state.exp_avg_sq.buffer()),
            ]);
        }
        gpu.dispatch_bound(kernel.kernel, &[], &p, &bound, grid_1d(workgroups))?;
        drop(bound);
        for (u, step) in group.iter().zip(steps) {
            self.slots.get_mut(&u.slot).expect("made above").step = step;
        }
        Ok(())
    }

    /// The state of `u`'s slot, with fresh moments at step 0 where it has taken no step yet
    /// (the first step writes them without reading them).
    fn state_for(&mut self, u: &ParamUpdate<'_>) -> Result<&mut SlotState> {
        Ok(match self.slots.entry(u.slot) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let gpu = u.param.gpu();
                e.insert(SlotState {
                    exp_avg: Tensor::uninit(gpu, u.param.shape(), DType::F32, "adam")?,
                    exp_avg_sq: Tensor::uninit(gpu, u.param.shape(), DType::F32, "adam")?,
                    step: 0,
                })
            }
        })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, updates: &[ParamUpdate<'_>]) -> Result<()> {
        const OP: &str = "adam";
        check_updates(OP, updates)?;
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(Error::shape(
                OP,
                format!("betas must lie in [0, 1), got ({b1}, {b2})"),
            ));
        }
        for u in updates {
            if let Some(s) = self.slots.get(&u.slot) {
                check_state(OP, "exp_avg", u.slot, &s.exp_avg, u.param)?;
                check_state(OP, "exp_avg_sq", u.slot, &s.exp_avg_sq, u.param)?;
            }
        }
        let grouped = group_kernel(updates, &GROUPS, PER_SLOT, self.grouping);
        if let Some(group) = grouped {
            let ranges = plan_groups(updates, group.slots);
            for r in ranges {
                self.dispatch_group(&updates[r], group)?;
            }
        }
        for u in updates.iter().filter(|_| grouped.is_none()) {
            let n = u.param.numel();
            let gpu = u.param.gpu();
            let t = self.state_for(u)?.step + 1;
            let (step_size, bc2_sqrt) = bias_corrections(u.lr, self.betas, t);
            let p = Params {
                n: n as u32,
                flags: if self.decoupled { FLAG_VARIANT } else { 0 }
                    | if t == 1 { FLAG_FIRST } else { 0 },
                lr: u.lr,
                weight_decay: self.weight_decay,
                momentum: b1,
                beta2: b2,
                eps: self.eps,
                step_size,
                bc2_sqrt,
                ..Default::default()
            };
            let state = self.slots.get_mut(&u.slot).expect("made above");
            let (kernel, units, grid) = scalar_or_vec4(n, &ADAM, &ADAM4);
            let p = Params {
                n: units as u32,
                ..p
            };
            gpu.dispatch(
                kernel,
                &p,
                &[
                    u.param.buffer(),
                    u.grad.buffer(),
                    state.exp_avg.buffer(),
                    state.exp_avg_sq.buffer(),
                ],
                grid,
            )?;
            state.step = t;
        }
        self.steps += 1;
        if let Some(u) = updates.first() {
            self.gpu = Some(u.param.gpu().clone());
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.slots.len() + 1);
        for (slot, s) in &self.slots {
            out.push((format!("exp_avg.{slot}"), s.exp_avg.deep_clone()?));
            out.push((format!("exp_avg_sq.{slot}"), s.exp_avg_sq.deep_clone()?));
            out.push((
                format!("step.{slot}"),
                counter_tensor(s.exp_avg.gpu(), s.step)?,
            ));
        }
        if let Some(gpu) = &self.gpu {
            out.push(("step".into(), counter_tensor(gpu, self.steps)?));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        const OP: &str = "adam.load_state";
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        let mut t = BTreeMap::new();
        let mut steps = 0;
        for (name, tensor) in state {
            self.gpu.get_or_insert_with(|| tensor.gpu().clone());
            if name == "step" {
                steps = read_counter(OP, &name, &tensor)?;
                continue;
            }
            match parse_slot(OP, &name)? {
                ("exp_avg", slot) => {
                    tensor.expect_dtype(OP, DType::F32)?;
                    m.insert(slot, owned(tensor)?);
                }
                ("exp_avg_sq", slot) => {
                    tensor.expect_dtype(OP, DType::F32)?;
                    v.insert(slot, owned(tensor)?);
                }
                ("step", slot) => {
                    t.insert(slot, read_counter(OP, &name, &tensor)?);
                }
                _ => return Err(Error::shape(OP, format!("unexpected Adam state {name:?}"))),
            }
        }
        let mut slots = BTreeMap::new();
        for (slot, exp_avg) in m {
            let (Some(exp_avg_sq), Some(step)) = (v.remove(&slot), t.remove(&slot)) else {
                return Err(Error::shape(
                    OP,
                    format!("slot {slot}: exp_avg without exp_avg_sq or step"),
                ));
            };
            if step == 0 {
                return Err(Error::shape(
                    OP,
                    format!("slot {slot}: step.{slot} is 0 but moments are present"),
                ));
            }
            if exp_avg_sq.shape() != exp_avg.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "slot {slot}: exp_avg {:?} and exp_avg_sq {:?} differ",
                        exp_avg.shape(),
                        exp_avg_sq.shape()
                    ),
                ));
            }
            slots.insert(
                slot,
                SlotState {
                    exp_avg,
                    exp_avg_sq,
                    step,
                },
            );
        }
        if let Some(slot) = v.keys().chain(t.keys()).next() {
            return Err(Error::shape(
                OP,
                format!("slot {slot}: state without exp_avg"),
            ));
        }
        self.slots = slots;
        self.steps = steps;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
