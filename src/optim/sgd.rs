//! Stochastic gradient descent with momentum, Nesterov and coupled weight decay (`torch.optim.SGD`
//! with dampening 0).

use super::{
    FLAG_FIRST, FLAG_VARIANT, Optimizer, ParamUpdate, Params, SGD_MOMENTUM, SGD_PLAIN, check_state,
    check_updates, counter_tensor, parse_slot, read_counter,
};
use crate::gpu::{Gpu, grid_for_elements};
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
        }
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
        for u in updates {
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
                gpu.dispatch(
                    &SGD_PLAIN,
                    &p,
                    &[u.param.buffer(), u.grad.buffer()],
                    grid_for_elements(n),
                )?;
                continue;
            }
            let old = self.buffers.get(&u.slot);
            p.flags = if self.nesterov { FLAG_VARIANT } else { 0 }
                | if old.is_none() { FLAG_FIRST } else { 0 };
            let new = Tensor::uninit(gpu, u.param.shape(), DType::F32, OP)?;
            let old_buf = old.map_or(u.grad.buffer(), |t| t.buffer());
            gpu.dispatch(
                &SGD_MOMENTUM,
                &p,
                &[u.param.buffer(), u.grad.buffer(), old_buf, new.buffer()],
                grid_for_elements(n),
            )?;
            self.buffers.insert(u.slot, new);
        }
        self.steps += 1;
        if let Some(u) = updates.first() {
            self.gpu = Some(u.param.gpu().clone());
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .buffers
            .iter()
            .map(|(slot, t)| (format!("momentum.{slot}"), t.clone()))
            .collect();
        if let Some(gpu) = &self.gpu
            && let Ok(c) = counter_tensor(gpu, self.steps)
        {
            out.push(("step".into(), c));
        }
        out
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
                    buffers.insert(slot, t);
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
