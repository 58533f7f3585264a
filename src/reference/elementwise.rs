//! CPU twins of `shaders/elementwise.wgsl` and `shaders/reduce.wgsl`.

/// `max(x, 0)`, NaNs kept ([`relu_value`] of each value).
pub fn relu(x: &[f32]) -> Vec<f32> {
    x.iter().copied().map(relu_value).collect()
}

/// PyTorch's ReLU of one value: `v` where it is positive or a NaN (a NaN propagates, where
/// `f32::max` would return 0), else 0.
pub fn relu_value(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() { v } else { 0.0 }
}

/// Gradient of relu from its output `y`: `gy` where [`relu_passes`], else 0.
pub fn relu_backward(y: &[f32], gy: &[f32]) -> Vec<f32> {
    y.iter()
        .zip(gy)
        .map(|(&y, &g)| if relu_passes(y) { g } else { 0.0 })
        .collect()
}

/// Whether PyTorch's ReLU backward passes the gradient at the ReLU's output `y`: where `y` is
/// positive or a NaN (its `threshold_backward` zeroes it where `y <= 0`).
pub fn relu_passes(y: f32) -> bool {
    y > 0.0 || y.is_nan()
}

/// `a + b`.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// Sum in f64, returned as f32.
pub fn sum(x: &[f32]) -> f32 {
    x.iter().map(|v| *v as f64).sum::<f64>() as f32
}

/// Per-channel sums of `[n, c, hw]`.
pub fn sum_channels(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    (0..c)
        .map(|ch| {
            let mut acc = 0f64;
            for b in 0..n {
                for p in 0..hw {
                    acc += x[(b * c + ch) * hw + p] as f64;
                }
            }
            acc as f32
        })
        .collect()
}
