//! Learning-rate schedules, evaluated on the host per step.

use std::f64::consts::PI;

/// A learning-rate schedule: [`Schedule::lr_at`] maps a base rate and a 0-based step to a rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `base · gamma^(step / step_size)` (integer division), as `torch.optim.lr_scheduler.StepLR`
    /// stepped once per `step`.
    Step {
        /// Steps between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Linear warm-up `base · (step + 1) / warmup` over the first `warmup` steps, then cosine
    /// annealing from `base` at step `warmup` to `base · min_lr_frac` at step `total` (held there).
    Cosine {
        /// Warm-up steps (0 for none).
        warmup: usize,
        /// Step at which the minimum is reached.
        total: usize,
        /// Final rate as a fraction of the base rate.
        min_lr_frac: f32,
    },
    /// `torch.optim.lr_scheduler.OneCycleLR` with cosine annealing (two phases): from
    /// `base / div_factor` up to `base` (the maximum) over the first `pct_start` of `total`
    /// steps, then down to `base / div_factor / final_div_factor` at step `total - 1` (held there).
    OneCycle {
        /// Total number of steps.
        total: usize,
        /// Fraction of the steps spent increasing the rate.
        pct_start: f32,
        /// Initial rate = base / div_factor.
        div_factor: f32,
        /// Final rate = initial rate / final_div_factor.
        final_div_factor: f32,
    },
}

fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0)
}

impl Schedule {
    /// The learning rate at 0-based `step` for base (or maximum) rate `base_lr`.
    pub fn lr_at(&self, base_lr: f32, step: usize) -> f32 {
        let base = base_lr as f64;
        let lr = match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * (gamma as f64).powi((step / step_size.max(1)).min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine {
                warmup,
                total,
                min_lr_frac,
            } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    let min = base * min_lr_frac as f64;
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    let progress = ((step - warmup) as f64 / span).min(1.0);
                    min + (base - min) * 0.5 * (1.0 + (PI * progress).cos())
                }
            }
            Schedule::OneCycle {
                total,
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial = base / div_factor as f64;
                let min = initial / final_div_factor as f64;
                let last = total.max(1) as f64 - 1.0;
                let step = (step as f64).min(last);
                // Phase ends as torch computes them: float(pct_start * total) - 1, total - 1.
                let end1 = (pct_start as f64 * total as f64) - 1.0;
                if step <= end1 {
                    // Runs of fewer than 1 / pct_start steps have no rise (end1 <= 0, where
                    // torch divides by zero): they start at the peak.
                    let pct = if end1 > 0.0 { step / end1 } else { 1.0 };
                    cos_anneal(initial, base, pct)
                } else {
                    let span = last - end1;
                    let pct = if span > 0.0 {
                        (step - end1) / span
                    } else {
                        1.0
                    };
                    cos_anneal(base, min, pct)
                }
            }
        };
        lr as f32
    }
}
