//! CPU twin of `shaders/batchnorm.wgsl` (PyTorch `BatchNorm2d` semantics, f64 accumulation).
//! `x` is a flat `[n, c, hw]` slice; per-channel vectors have `c` elements.

fn channel_values(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    ch: usize,
) -> impl Iterator<Item = (usize, f64)> + '_ {
    (0..n)
        .flat_map(move |b| (0..hw).map(move |p| (b * c + ch) * hw + p))
        .map(|i| (i, x[i] as f64))
}

/// Output of [`batch_norm_train`].
pub struct BnTrainOut {
    /// Normalised output (after the ReLU when asked).
    pub y: Vec<f32>,
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// `1 / sqrt(biased batch variance + eps)` per channel.
    pub invstd: Vec<f32>,
    /// Updated running mean.
    pub running_mean: Vec<f32>,
    /// Updated running variance (blended with the unbiased batch variance).
    pub running_var: Vec<f32>,
}

/// Training-mode batch norm.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    momentum: f32,
    eps: f32,
    relu: bool,
) -> BnTrainOut {
    let m = (n * hw) as f64;
    let mut out = BnTrainOut {
        y: vec![0.0; x.len()],
        mean: vec![0.0; c],
        invstd: vec![0.0; c],
        running_mean: running_mean.to_vec(),
        running_var: running_var.to_vec(),
    };
    let mom = momentum as f64;
    for ch in 0..c {
        let mean = channel_values(x, n, c, hw, ch).map(|(_, v)| v).sum::<f64>() / m;
        let ss = channel_values(x, n, c, hw, ch)
            .map(|(_, v)| (v - mean) * (v - mean))
            .sum::<f64>();
        let invstd = 1.0 / (ss / m + eps as f64).sqrt();
        out.mean[ch] = mean as f32;
        out.invstd[ch] = invstd as f32;
        out.running_mean[ch] = ((1.0 - mom) * running_mean[ch] as f64 + mom * mean) as f32;
        out.running_var[ch] =
            ((1.0 - mom) * running_var[ch] as f64 + mom * ss / (m - 1.0).max(1.0)) as f32;
        for (i, v) in channel_values(x, n, c, hw, ch) {
            let y = (v - mean) * invstd * gamma[ch] as f64 + beta[ch] as f64;
            out.y[i] = if relu {
                super::relu_value(y as f32)
            } else {
                y as f32
            };
        }
    }
    out
}

/// Eval-mode batch norm with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    relu: bool,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for ch in 0..c {
        let invstd = 1.0 / (running_var[ch] as f64 + eps as f64).sqrt();
        for (i, v) in channel_values(x, n, c, hw, ch) {
            let o = (v - running_mean[ch] as f64) * invstd * gamma[ch] as f64 + beta[ch] as f64;
            y[i] = if relu {
                super::relu_value(o as f32)
            } else {
                o as f32
            };
        }
    }
    y
}

/// Backward of batch norm: `(gx, ggamma, gbeta)`. `mean`/`invstd` are the statistics the forward
/// used; `y` is read only for the ReLU mask. With `eval` the statistics are constants
/// (`gx = dy * gamma * invstd`), else they are the batch's own.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    y: &[f32],
    gy: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    relu: bool,
    eval: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    let mut gx = vec![0.0; x.len()];
    let mut ggamma = vec![0.0; c];
    let mut gbeta = vec![0.0; c];
    let dy = |i: usize| {
        if relu && y[i] <= 0.0 {
            0.0
        } else {
            gy[i] as f64
        }
    };
    for ch in 0..c {
        let (mu, is) = (mean[ch] as f64, invstd[ch] as f64);
        let (mut s_dy, mut s_dyx) = (0.0, 0.0);
        for (i, v) in channel_values(x, n, c, hw, ch) {
            s_dy += dy(i);
            s_dyx += dy(i) * (v - mu) * is;
        }
        ggamma[ch] = s_dyx as f32;
        gbeta[ch] = s_dy as f32;
        let k = gamma[ch] as f64 * is;
        for (i, v) in channel_values(x, n, c, hw, ch) {
            let xhat = (v - mu) * is;
            gx[i] = if eval {
                k * dy(i)
            } else {
                k * (dy(i) - s_dy / m - xhat * s_dyx / m)
            } as f32;
        }
    }
    (gx, ggamma, gbeta)
}
