//! CPU twin of `shaders/optim.wgsl` (f64 arithmetic, PyTorch semantics).

/// One SGD step in place. `buf` is the momentum buffer (`None` before the first step; created
/// then). Dampening 0; weight decay coupled.
pub fn sgd_step(
    p: &mut [f32],
    g: &[f32],
    buf: &mut Option<Vec<f32>>,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
) {
    let (lr, mu, wd) = (lr as f64, momentum as f64, weight_decay as f64);
    let first = buf.is_none();
    if mu != 0.0 && first {
        *buf = Some(vec![0.0; p.len()]);
    }
    for i in 0..p.len() {
        let d = g[i] as f64 + wd * p[i] as f64;
        let step = if mu == 0.0 {
            d
        } else {
            let b = buf.as_mut().expect("created above");
            let nb = if first { d } else { mu * b[i] as f64 + d };
            b[i] = nb as f32;
            if nesterov { d + mu * nb } else { nb }
        };
        p[i] = (p[i] as f64 - lr * step) as f32;
    }
}

/// One Adam/AdamW step in place for step count `t` (1 on the first step); `m` and `v` start at 0.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    lr: f32,
    betas: (f32, f32),
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
) {
    let (lr, b1, b2, eps, wd) = (
        lr as f64,
        betas.0 as f64,
        betas.1 as f64,
        eps as f64,
        weight_decay as f64,
    );
    let bc1 = 1.0 - b1.powf(t as f64);
    let bc2 = 1.0 - b2.powf(t as f64);
    for i in 0..p.len() {
        let mut pv = p[i] as f64;
        let mut gv = g[i] as f64;
        if decoupled {
            pv *= 1.0 - lr * wd;
        } else {
            gv += wd * pv;
        }
        let mi = b1 * m[i] as f64 + (1.0 - b1) * gv;
        let vi = b2 * v[i] as f64 + (1.0 - b2) * gv * gv;
        m[i] = mi as f32;
        v[i] = vi as f32;
        let denom = vi.sqrt() / bc2.sqrt() + eps;
        p[i] = (pv - lr / bc1 * mi / denom) as f32;
    }
}

/// Clip `grads` in place by global L2 norm as `torch.nn.utils.clip_grad_norm_`; returns the norm.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt();
    let coef = (max_norm as f64 / (norm + 1e-6)).min(1.0);
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x = (*x as f64 * coef) as f32;
        }
    }
    norm as f32
}
