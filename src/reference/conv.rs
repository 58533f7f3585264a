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
    let mut y = vec![0f32; n * k * oh * ow];
    for ni in 0..n {
        for ki in 0..k {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[ki] as f64);
                    for ci in 0..c {
                        for ri in 0..r {
                            let Some(iy) = tap(oy, ri, stride, padding, h) else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(ix) = tap(ox, si, stride, padding, wd) else {
                                    continue;
                                };
                                acc += w[((ki * c + ci) * r + ri) * s + si] as f64
                                    * x[((ni * c + ci) * h + iy) * wd + ix] as f64;
                            }
                        }
                    }
                    y[((ni * k + ki) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    (y, [n, k, oh, ow])
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
    let [n, c, h, wd] = x_shape;
    let [k, _, r, s] = w_shape;
    let (oh, ow) = out_size(h, wd, r, s, stride, padding);
    let mut gx = vec![0f64; n * c * h * wd];
    for ni in 0..n {
        for ki in 0..k {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = gy[((ni * k + ki) * oh + oy) * ow + ox] as f64;
                    for ci in 0..c {
                        for ri in 0..r {
                            let Some(iy) = tap(oy, ri, stride, padding, h) else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(ix) = tap(ox, si, stride, padding, wd) else {
                                    continue;
                                };
                                gx[((ni * c + ci) * h + iy) * wd + ix] +=
                                    g * w[((ki * c + ci) * r + ri) * s + si] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
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
    let [n, c, h, wd] = x_shape;
    let [k, _, r, s] = w_shape;
    let (oh, ow) = out_size(h, wd, r, s, stride, padding);
    let mut gw = vec![0f64; k * c * r * s];
    for ni in 0..n {
        for ki in 0..k {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = gy[((ni * k + ki) * oh + oy) * ow + ox] as f64;
                    for ci in 0..c {
                        for ri in 0..r {
                            let Some(iy) = tap(oy, ri, stride, padding, h) else {
                                continue;
                            };
                            for si in 0..s {
                                let Some(ix) = tap(ox, si, stride, padding, wd) else {
                                    continue;
                                };
                                gw[((ki * c + ci) * r + ri) * s + si] +=
                                    g * x[((ni * c + ci) * h + iy) * wd + ix] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
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
