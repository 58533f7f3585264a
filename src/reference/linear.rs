//! CPU twin of `shaders/matmul.wgsl` and the linear layer (f64 accumulation).

/// `C[m, n] = op(A) op(B)` with `op(A)` `[m, k]` and `op(B)` `[k, n]`. `a` is stored `[m, k]`
/// (or `[k, m]` when `trans_a`), `b` is stored `[k, n]` (or `[n, k]` when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: A length");
    assert_eq!(b.len(), k * n, "matmul: B length");
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            c[i * n + j] = acc as f32;
        }
    }
    c
}

/// `y = x wᵀ + b`: `x` `[n, i]`, `w` `[o, i]`, `b` `[o]`; returns `[n, o]`.
pub fn linear(x: &[f32], w: &[f32], b: Option<&[f32]>, n: usize, i: usize, o: usize) -> Vec<f32> {
    let mut y = matmul(x, w, n, i, o, false, true);
    if let Some(b) = b {
        for row in y.chunks_mut(o) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    y
}

/// Gradients of [`linear`] for upstream `gy` `[n, o]`: `(gx [n, i], gw [o, i], gb [o])`.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    n: usize,
    i: usize,
    o: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let gx = matmul(gy, w, n, o, i, false, false);
    let gw = matmul(gy, x, o, n, i, true, false);
    let gb = (0..o)
        .map(|c| (0..n).map(|r| gy[r * o + c] as f64).sum::<f64>() as f32)
        .collect();
    (gx, gw, gb)
}
