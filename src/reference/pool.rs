//! CPU twin of `shaders/pool.wgsl`. Tensors are flat NCHW slices with explicit `[n, c, h, w]`
//! shapes; windows are square with equal stride and padding on both axes, floor mode.

/// Output size of a pooling window along one axis.
pub fn pool_out_size(len: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding - kernel) / stride + 1
}

/// Window of output `o` along one axis, as (start, end) clipped to `[0, len)`.
fn window(o: usize, len: usize, kernel: usize, stride: usize, padding: usize) -> (usize, usize) {
    let s = (o * stride) as isize - padding as isize;
    let e = (s + kernel as isize).min(len as isize);
    (s.max(0) as usize, e as usize)
}

/// Max pooling: output and the per-output argmax index `h * w_in + w` within its plane
/// (first maximum wins, a NaN wins as in PyTorch).
pub fn max_pool2d(
    x: &[f32],
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, Vec<u32>) {
    let [n, c, h, w] = shape;
    let (oh, ow) = (
        pool_out_size(h, kernel, stride, padding),
        pool_out_size(w, kernel, stride, padding),
    );
    let mut y = Vec::with_capacity(n * c * oh * ow);
    let mut idx = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for i in 0..oh {
            let (h0, h1) = window(i, h, kernel, stride, padding);
            for j in 0..ow {
                let (w0, w1) = window(j, w, kernel, stride, padding);
                let (mut best, mut best_i) = (f32::NEG_INFINITY, h0 * w + w0);
                for r in h0..h1 {
                    for q in w0..w1 {
                        let v = xp[r * w + q];
                        if v > best || v.is_nan() {
                            best = v;
                            best_i = r * w + q;
                        }
                    }
                }
                y.push(best);
                idx.push(best_i as u32);
            }
        }
    }
    (y, idx)
}

/// Backward of max pooling: `gx[plane][idx[o]] += gy[o]` (a scatter, fine on the CPU).
pub fn max_pool2d_backward(gy: &[f32], idx: &[u32], x_shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = x_shape;
    let per_plane = gy.len() / (n * c);
    let mut gx = vec![0.0f32; n * c * h * w];
    for (o, (&g, &i)) in gy.iter().zip(idx).enumerate() {
        gx[(o / per_plane) * h * w + i as usize] += g;
    }
    gx
}

/// A ReLU then max pooling, in that order (torchvision's stem): the output, and the input
/// gradient for the output gradient `gy`. The kernel (`max_pool2d_relu`) pools first and applies
/// the ReLU after; the tests check that the two agree.
pub fn relu_max_pool2d(
    x: &[f32],
    gy: &[f32],
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, Vec<f32>) {
    let relu = super::relu(x);
    let (y, idx) = max_pool2d(&relu, shape, kernel, stride, padding);
    let g = max_pool2d_backward(gy, &idx, shape);
    let gx = g
        .iter()
        .zip(&relu)
        .map(|(&g, &r)| if super::relu_passes(r) { g } else { 0.0 })
        .collect();
    (y, gx)
}

/// Divisor of an average-pool window with count_include_pad = True.
fn avg_divisor(
    i: usize,
    j: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> f32 {
    let span = |o: usize, len: usize| {
        let s = (o * stride) as isize - padding as isize;
        let e = (s + kernel as isize).min((len + padding) as isize);
        (e - s) as f32
    };
    span(i, h) * span(j, w)
}

/// Average pooling with count_include_pad = True.
pub fn avg_pool2d(
    x: &[f32],
    shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let [n, c, h, w] = shape;
    let (oh, ow) = (
        pool_out_size(h, kernel, stride, padding),
        pool_out_size(w, kernel, stride, padding),
    );
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for i in 0..oh {
            let (h0, h1) = window(i, h, kernel, stride, padding);
            for j in 0..ow {
                let (w0, w1) = window(j, w, kernel, stride, padding);
                let mut acc = 0f64;
                for r in h0..h1 {
                    for q in w0..w1 {
                        acc += xp[r * w + q] as f64;
                    }
                }
                y.push((acc / avg_divisor(i, j, h, w, kernel, stride, padding) as f64) as f32);
            }
        }
    }
    y
}

/// Backward of average pooling (a scatter of `gy / divisor` over each window).
pub fn avg_pool2d_backward(
    gy: &[f32],
    x_shape: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<f32> {
    let [n, c, h, w] = x_shape;
    let (oh, ow) = (
        pool_out_size(h, kernel, stride, padding),
        pool_out_size(w, kernel, stride, padding),
    );
    let mut gx = vec![0f64; n * c * h * w];
    for plane in 0..n * c {
        for i in 0..oh {
            let (h0, h1) = window(i, h, kernel, stride, padding);
            for j in 0..ow {
                let (w0, w1) = window(j, w, kernel, stride, padding);
                let g = gy[(plane * oh + i) * ow + j] as f64
                    / avg_divisor(i, j, h, w, kernel, stride, padding) as f64;
                for r in h0..h1 {
                    for q in w0..w1 {
                        gx[plane * h * w + r * w + q] += g;
                    }
                }
            }
        }
    }
    gx.into_iter().map(|v| v as f32).collect()
}

/// Global average pooling `[n, c, h, w] -> [n, c]`.
pub fn global_avg_pool(x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let hw = shape[2] * shape[3];
    x.chunks(hw)
        .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
        .collect()
}

/// Backward of global average pooling.
pub fn global_avg_pool_backward(gy: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    let hw = x_shape[2] * x_shape[3];
    gy.iter()
        .flat_map(|&g| std::iter::repeat_n(g / hw as f32, hw))
        .collect()
}
