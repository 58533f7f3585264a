//! Stochastic gradient descent with momentum, Nesterov and coupled weight decay (`torch.optim.SGD`
//! with dampening 0).

use super::{
    FLAG_FIRST, FLAG_VARIANT, GroupKernel, Optimizer, ParamUpdate, Params, SGD_MOMENTUM,
    SGD_MOMENTUM_GROUP, SGD_MOMENTUM_GROUP2, SGD_MOMENTUM4, SGD_PLAIN, SGD_PLAIN4, check_state,
    check_updates, counter_tensor, group_kernel, owned, parse_slot, plan_groups, read_counter,
};
use crate::gpu::{Gpu, WORKGROUP_1D, grid_1d, scalar_or_vec4};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// SGD: `d = g + λ·p`; with momentum μ, `buf = d` on a parameter's first step and
/// `buf = μ·buf + d` afterwards; `p -= lr·(nesterov ? d + μ·buf : buf)` (`p -= lr·d` when μ = 0).
#[derive(Debug)]
pub struct Sgd {
    /// Momentum μ (0 disables the momentum buffer).
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Coupled L2 weight decay λ.
    pub weight_decay: f32,
    buffers: BTreeMap<usize, Tensor>,
    steps: u64,
    gpu: Option<Gpu>,
    /// Whether momentum updates share dispatches (None: where the device runs that faster; see
    /// [`Sgd::with_grouping`]).
    grouping: Option<bool>,
}

impl Sgd {
    /// SGD with momentum `momentum`, Nesterov if `nesterov`, weight decay `weight_decay`.
    pub fn new(momentum: f32, nesterov: bool, weight_decay: f32) -> Sgd {
        Sgd {
            momentum,
            nesterov,
            weight_decay,
            buffers: BTreeMap::new(),
            steps: 0,
            gpu: None,
            grouping: None,
        }
    }

    /// Update eight tensors per dispatch (`true`; two where the device binds fewer than 24
    /// storage buffers per stage, one where fewer than 6) or one (`false`), instead of
    /// choosing by the plan (grouped on GPUs, not on CPU adapters, where it is slower). For
    /// tests and measurements; all give the same bits.
    #[doc(hidden)]
    pub fn with_grouping(mut self, grouping: bool) -> Sgd {
        self.grouping = Some(grouping);
        self
    }
}

/// Parameter tensors one `sgd_momentum_group` dispatch updates at most (`GROUP_SLOTS` in
/// `shaders/optim.wgsl`)...
const GROUP_SLOTS: usize = 8;
/// ...binding three storage buffers for each (24: within Metal's 29).
const PER_SLOT: u32 = 3;
/// The grouped kernels, most slots first: eight tensors, or two (6 storage buffers, within
/// WebGPU's default 8) where the device binds fewer than 24.
static GROUPS: [GroupKernel; 2] = [
    GroupKernel {
        kernel: &SGD_MOMENTUM_GROUP,
        slots: GROUP_SLOTS,
    },
    GroupKernel {
        kernel: &SGD_MOMENTUM_GROUP2,
        slots: 2,
    },
];

/// `GroupParams` in `shaders/optim.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GroupParams {
    count: u32,
    flags: u32,
    first: u32,
    _pad0: u32,
    momentum: f32,
    weight_decay: f32,
    _pad1: [u32; 2],
    start: [u32; GROUP_SLOTS],
    n: [u32; GROUP_SLOTS],
    lr: [f32; GROUP_SLOTS],
}

impl Sgd {
    /// SGD with momentum, `group.slots` tensors per dispatch, in the order of `updates`
    /// ([`plan_groups`]).
    fn step_grouped(&mut self, updates: &[ParamUpdate<'_>], group: &GroupKernel) -> Result<()> {
        let ranges = plan_groups(updates, group.slots);
        for r in ranges {
            self.dispatch_group(&updates[r], group)?;
        }
        Ok(())
    }

    /// One dispatch of `kernel` over `group` (at most `kernel.slots` updates), each updating its
    /// momentum buffer in place (a new one on its first step).
    fn dispatch_group(&mut self, group: &[ParamUpdate<'_>], kernel: &GroupKernel) -> Result<()> {
        let Some(first) = group.first() else {
            return Ok(());
        };
        let gpu = first.param.gpu().clone();
        let fresh = group
            .iter()
            .map(|u| self.fresh_buffer(u))
            .collect::<Result<Vec<_>>>()?;
        let mut p = GroupParams {
            count: group.len() as u32,
            flags: if self.nesterov { 1 } else { 0 },
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            ..Default::default()
        };
        // Unused slots bind placeholders, never read or written (no workgroup reaches them).
        let spare_read = Tensor::uninit(&gpu, &[1], DType::F32, "sgd")?;
        let spare_write = Tensor::uninit(&gpu, &[1], DType::F32, "sgd")?;
        let mut bound: Vec<(u32, &wgpu::Buffer)> = Vec::with_capacity(3 * kernel.slots);
        let mut workgroups = 0u32;
        for s in 0..kernel.slots {
            let b = PER_SLOT * s as u32;
            let (Some(u), Some(fresh)) = (group.get(s), fresh.get(s)) else {
                bound.extend([
                    (b + 1, spare_write.buffer()),
                    (b + 2, spare_read.buffer()),
                    (b + 3, spare_write.buffer()),
                ]);
                continue;
            };
            let n = u.param.numel();
            p.start[s] = workgroups;
            p.n[s] = n as u32;
            p.lr[s] = u.lr;
            if fresh.is_some() {
                p.first |= 1 << s;
            }
            workgroups += n.div_ceil(WORKGROUP_1D as usize) as u32;
            let buf = fresh.as_ref().unwrap_or_else(|| &self.buffers[&u.slot]);
            bound.extend([
                (b + 1, u.param.buffer()),
                (b + 2, u.grad.buffer()),
                (b + 3, buf.buffer()),
            ]);
        }
        gpu.dispatch_bound(kernel.kernel, &[], &p, &bound, grid_1d(workgroups))?;
        drop(bound);
        for (u, fresh) in group.iter().zip(fresh) {
            if let Some(t) = fresh {
                self.buffers.insert(u.slot, t);
            }
        }
        Ok(())
    }

    /// A new momentum buffer for `u`'s first step (the kernel writes it without reading it),
    /// or None where its slot has one. It joins the state once the update is recorded, so that
    /// a failed first update leaves the next step still the first.
    fn fresh_buffer(&self, u: &ParamUpdate<'_>) -> Result<Option<Tensor>> {
        if self.buffers.contains_key(&u.slot) {
            return Ok(None);
        }
        Tensor::uninit(u.param.gpu(), u.param.shape(), DType::F32, "sgd").map(Some)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, updates: &[ParamUpdate<'_>]) -> Result<()> {
        const OP: &str = "sgd";
        check_updates(OP, updates)?;
        if self.nesterov && self.momentum <= 0.0 {
            return Err(Error::shape(
                OP,
                "Nesterov momentum requires a positive momentum",
            ));
        }
        for u in updates {
            if self.momentum != 0.0
                && let Some(buf) = self.buffers.get(&u.slot)
            {
                check_state(OP, "momentum", u.slot, buf, u.param)?;
            }
        }
        let grouped = (self.momentum != 0.0)
            .then(|| group_kernel(updates, &GROUPS, PER_SLOT, self.grouping))
            .flatten();
        if let Some(group) = grouped {
            self.step_grouped(updates, group)?;
        }
        for u in updates.iter().filter(|_| grouped.is_none()) {
            let n = u.param.numel();
            let mut p = Params {
                n: n as u32,
                lr: u.lr,
                weight_decay: self.weight_decay,
                momentum: self.momentum,
                ..Default::default()
            };
            let gpu = u.param.gpu();
            if self.momentum == 0.0 {
                let (kernel, units, grid) = scalar_or_vec4(n, &SGD_PLAIN, &SGD_PLAIN4);
                p.n = units as u32;
                gpu.dispatch(kernel, &p, &[u.param.buffer(), u.grad.buffer()], grid)?;
                continue;
            }
            let fresh = self.fresh_buffer(u)?;
            p.flags = if self.nesterov { FLAG_VARIANT } else { 0 }
                | if fresh.is_some() { FLAG_FIRST } else { 0 };
            let buf = fresh.as_ref().unwrap_or_else(|| &self.buffers[&u.slot]);
            let (kernel, units, grid) = scalar_or_vec4(n, &SGD_MOMENTUM, &SGD_MOMENTUM4);
            p.n = units as u32;
            gpu.dispatch(
                kernel,
                &p,
                &[u.param.buffer(), u.grad.buffer(), buf.buffer()],
                grid,
            )?;
            if let Some(t) = fresh {
                self.buffers.insert(u.slot, t);
            }
        }
        self.steps += 1;
        if let Some(u) = updates.first() {
            self.gpu = Some(u.param.gpu().clone());
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.buffers.len() + 1);
        for (slot, t) in &self.buffers {
            out.push((format!("momentum.{slot}"), t.deep_clone()?));
        }
        if let Some(gpu) = &self.gpu {
            out.push(("step".into(), counter_tensor(gpu, self.steps)?));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        const OP: &str = "sgd.load_state";
        let mut buffers = BTreeMap::new();
        let mut steps = 0;
        for (name, t) in state {
            self.gpu.get_or_insert_with(|| t.gpu().clone());
            if name == "step" {
                steps = read_counter(OP, &name, &t)?;
                continue;
            }
            match parse_slot(OP, &name)? {
                ("momentum", slot) => {
                    t.expect_dtype(OP, DType::F32)?;
                    buffers.insert(slot, owned(t)?);
                }
                _ => return Err(Error::shape(OP, format!("unexpected SGD state {name:?}"))),
            }
        }
        self.buffers = buffers;
        self.steps = steps;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
