//! CPU twin of the conv kernels (`shaders/conv.wgsl`): direct loops with f64 accumulation.
//!
//! Shapes: x `[N, C, H, W]`, w `[K, C, R, S]`, b `[K]`, y `[N, K, OH, OW]` with
//! `OH = (H + 2 * padding - R) / stride + 1` (likewise OW).

/// Output spatial size of a convolution (no validation: the caller checks the kernel fits).
fn out_size(
    h: usize,
    w: usize,
    r: usize,
    s: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    (
        (h + 2 * padding - r) / stride + 1,
        (w + 2 * padding - s) / stride + 1,
    )
}

/// Input row/column for output position `o` and kernel tap `t`, if inside the input.
fn tap(o: usize, t: usize, stride: usize, padding: usize, size: usize) -> Option<usize> {
    (o * stride + t).checked_sub(padding).filter(|&i| i < size)
}

/// Visit every (input, weight, output) index triple that a convolution multiplies together:
/// `y[yi] += w[wi] * x[xi]`. The forward pass and both gradients are sums over these triples.
fn for_each_tap(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let [n, c, h, wd] = x_shape;
    let [k, _, r, s] = w_shape;
    let (oh, ow) = out_size(h, wd, r, s, stride, padding);
    for ni in 0..n {
        for ki in 0..k {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((ni * k + ki) * oh + oy) * ow + ox;
                    for ci in 0..c {
                        for ri in 0..r {
                            let Some(iy) = tap(oy, ri, stride, padding, h) else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(ix) = tap(ox, si, stride, padding, wd) else {
                                    continue;
                                };
                                f(
                                    ((ni * c + ci) * h + iy) * wd + ix,
                                    ((ki * c + ci) * r + ri) * s + si,
                                    yi,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv2d(x, w) + b`. Returns the output and its shape `[N, K, OH, OW]`.
pub fn conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    b: Option<&[f32]>,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, wd] = x_shape;
    let [k, c2, r, s] = w_shape;
    assert_eq!(c, c2, "channel mismatch");
    let (oh, ow) = out_size(h, wd, r, s, stride, padding);
    let mut y = vec![0f64; n * k * oh * ow];
    if let Some(b) = b {
        for (i, v) in y.iter_mut().enumerate() {
            *v = b[(i / (oh * ow)) % k] as f64;
        }
    }
    for_each_tap(x_shape, w_shape, stride, padding, |xi, wi, yi| {
        y[yi] += w[wi] as f64 * x[xi] as f64;
    });
    (y.into_iter().map(|v| v as f32).collect(), [n, k, oh, ow])
}

/// Gradient of `conv2d` with respect to its input, given the upstream gradient `gy`
/// `[N, K, OH, OW]`. Returns `gx` of shape `x_shape`.
pub fn conv2d_backward_input(
    gy: &[f32],
    w: &[f32],
    w_shape: [usize; 4],
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let mut gx = vec![0f64; x_shape.iter().product()];
    for_each_tap(x_shape, w_shape, stride, padding, |xi, wi, yi| {
        gx[xi] += gy[yi] as f64 * w[wi] as f64;
    });
    gx.into_iter().map(|v| v as f32).collect()
}

/// Gradient of `conv2d` with respect to its weights, given the input `x` and the upstream
/// gradient `gy`. Returns `gw` of shape `w_shape`.
pub fn conv2d_backward_weight(
    x: &[f32],
    x_shape: [usize; 4],
    gy: &[f32],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let mut gw = vec![0f64; w_shape.iter().product()];
    for_each_tap(x_shape, w_shape, stride, padding, |xi, wi, yi| {
        gw[wi] += gy[yi] as f64 * x[xi] as f64;
    });
    gw.into_iter().map(|v| v as f32).collect()
}

/// Gradient of the bias: per-channel sum of `gy` `[N, K, OH, OW]`.
pub fn conv2d_backward_bias(gy: &[f32], gy_shape: [usize; 4]) -> Vec<f32> {
    let [n, k, oh, ow] = gy_shape;
    let hw = oh * ow;
    (0..k)
        .map(|ki| {
            (0..n)
                .map(|ni| {
                    gy[(ni * k + ki) * hw..][..hw]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect()
}

/// Inference's fused conv block (`ops::conv2d_bn_eval`): `conv2d(x, w)`, the eval-mode batch
/// norm with `bn = [gamma, beta, running_mean, running_var]` (each `[K]`) and `eps`, plus
/// `residual` when given, then a ReLU when `relu`. Returns the output and its shape.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bn_eval(
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    bn: [&[f32]; 4],
    eps: f32,
    residual: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, [usize; 4]) {
    let (y, shape) = conv2d(x, x_shape, w, w_shape, None, stride, padding);
    let [n, k, oh, ow] = shape;
    let [gamma, beta, mean, var] = bn;
    let y = super::batch_norm_eval(&y, n, k, oh * ow, gamma, beta, mean, var, eps, false);
    let y = match residual {
        Some(r) => super::add(&y, r),
        None => y,
    };
    let y = if relu { super::relu(&y) } else { y };
    (y, shape)
}
