//! Winograd F(2x2, 3x3): the CPU twins of `shaders/winograd.wgsl`'s transforms (the same f32
//! operations in the same order), and the stride-1, padding-1 3x3 convolution and its two
//! gradients built from them with 16 f32 GEMMs each, as `src/ops/conv/winograd.rs` runs them.

/// U `[16, rows, cols]` from w `[K, C, 3, 3]`: `U[ξ][k][c] = (G w[k, c] Gᵀ)[ξ / 4][ξ % 4]` with
/// rows K and cols C; with `flip` (the input gradient's kernel) `U[ξ][c][k]` from `w[k, c]` turned
/// by 180 degrees, rows C and cols K.
pub fn winograd_weights(w: &[f32], w_shape: [usize; 4], flip: bool) -> Vec<f32> {
    let [k, c, r, s] = w_shape;
    assert_eq!((r, s), (3, 3), "Winograd F(2x2, 3x3) needs 3x3 kernels");
    let (rows, cols) = if flip { (c, k) } else { (k, c) };
    let plane = rows * cols;
    let mut u = vec![0f32; 16 * plane];
    let g_row = |v: [f32; 3]| {
        [
            v[0],
            0.5 * (v[0] + v[1] + v[2]),
            0.5 * (v[0] - v[1] + v[2]),
            v[2],
        ]
    };
    for row in 0..rows {
        for col in 0..cols {
            let (kk, cc) = if flip { (col, row) } else { (row, col) };
            let base = (kk * c + cc) * 9;
            let tap = |t: usize| w[base + if flip { 8 - t } else { t }];
            let g = |i: usize| [tap(3 * i), tap(3 * i + 1), tap(3 * i + 2)];
            let (g0, g1, g2) = (g(0), g(1), g(2));
            let lin = |a: f32, b: f32| {
                [
                    0.5 * (g0[0] + a * g1[0] + b * g2[0]),
                    0.5 * (g0[1] + a * g1[1] + b * g2[1]),
                    0.5 * (g0[2] + a * g1[2] + b * g2[2]),
                ]
            };
            let rows4 = [
                g_row(g0),
                g_row(lin(1.0, 1.0)),
                g_row(lin(-1.0, 1.0)),
                g_row(g2),
            ];
            for (i, rw) in rows4.iter().enumerate() {
                for (j, v) in rw.iter().enumerate() {
                    u[(4 * i + j) * plane + row * cols + col] = *v;
                }
            }
        }
    }
    u
}

/// u B for a row u of Bᵀ d.
fn b_row(u: [f32; 4]) -> [f32; 4] {
    [u[0] - u[2], u[1] + u[2], u[2] - u[1], u[1] - u[3]]
}

/// V `[16, C, P]` from x `[N, C, H, W]`: `V[ξ][c][p] = (Bᵀ d B)[ξ / 4][ξ % 4]` for the 4x4 patch
/// d of tile p = (n th_count + th) tw_count + tw at rows 2 th - 1.. and columns 2 tw - 1..,
/// zeros outside.
pub fn winograd_input(x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = x_shape;
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = n * th * tw;
    let plane = c * tiles;
    let mut v = vec![0f32; 16 * plane];
    for img in 0..n {
        for ch in 0..c {
            let xp = &x[(img * c + ch) * h * w..][..h * w];
            let at = |y: isize, xx: isize| {
                if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                    0.0
                } else {
                    xp[y as usize * w + xx as usize]
                }
            };
            for ty in 0..th {
                for tx in 0..tw {
                    let (y0, x0) = (2 * ty as isize - 1, 2 * tx as isize - 1);
                    let d = |r: isize| {
                        [
                            at(y0 + r, x0),
                            at(y0 + r, x0 + 1),
                            at(y0 + r, x0 + 2),
                            at(y0 + r, x0 + 3),
                        ]
                    };
                    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                    let sub = |a: [f32; 4], b: [f32; 4]| std::array::from_fn(|i| a[i] - b[i]);
                    let add = |a: [f32; 4], b: [f32; 4]| std::array::from_fn(|i| a[i] + b[i]);
                    let rows = [
                        b_row(sub(d0, d2)),
                        b_row(add(d1, d2)),
                        b_row(sub(d2, d1)),
                        b_row(sub(d1, d3)),
                    ];
                    let p = (img * th + ty) * tw + tx;
                    for (i, rw) in rows.iter().enumerate() {
                        for (j, val) in rw.iter().enumerate() {
                            v[(4 * i + j) * plane + ch * tiles + p] = *val;
                        }
                    }
                }
            }
        }
    }
    v
}

/// y `[N, K, H, W]` from M `[16, K, P]`: each 2x2 output tile is Aᵀ M A (+ `b[k]`), its pixels
/// past the output's edge dropped.
pub fn winograd_output(m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = n * th * tw;
    let plane = k * tiles;
    let mut y = vec![0f32; n * k * h * w];
    let a_row = |u: [f32; 4]| [u[0] + u[1] + u[2], u[1] - u[2] - u[3]];
    for img in 0..n {
        for kk in 0..k {
            let bias = b.map_or(0.0, |b| b[kk]);
            for ty in 0..th {
                for tx in 0..tw {
                    let p = (img * th + ty) * tw + tx;
                    let at = |xi: usize| m[xi * plane + kk * tiles + p];
                    let row = |i: usize| [at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3)];
                    let (m0, m1, m2, m3) = (row(0), row(1), row(2), row(3));
                    let s0 = a_row(std::array::from_fn(|i| m0[i] + m1[i] + m2[i]));
                    let s1 = a_row(std::array::from_fn(|i| m1[i] - m2[i] - m3[i]));
                    for (a, s) in [s0, s1].iter().enumerate() {
                        for (bb, val) in s.iter().enumerate() {
                            let (oy, ox) = (2 * ty + a, 2 * tx + bb);
                            if oy < h && ox < w {
                                y[((img * k + kk) * h + oy) * w + ox] = val + bias;
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// The 16 GEMMs: `M[ξ]` `[rows, cols]` = `U[ξ]` `[rows, depth]` `V[ξ]` `[depth, cols]`, each sum
/// in f32 in order of the reduction index, as the GPU's GEMM adds.
fn gemms(u: &[f32], v: &[f32], rows: usize, depth: usize, cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; 16 * rows * cols];
    for xi in 0..16 {
        let u = &u[xi * rows * depth..][..rows * depth];
        let v = &v[xi * depth * cols..][..depth * cols];
        let m = &mut m[xi * rows * cols..][..rows * cols];
        for r in 0..rows {
            for d in 0..depth {
                let a = u[r * depth + d];
                for (out, b) in m[r * cols..][..cols].iter_mut().zip(&v[d * cols..][..cols]) {
                    *out = a.mul_add(*b, *out);
                }
            }
        }
    }
    m
}

/// The 3x3 convolution of stride 1 and padding 1 of x `[N, C, H, W]` with w `[K, C, 3, 3]`
/// (+ b) by Winograd F(2x2, 3x3): y `[N, K, H, W]`.
pub fn conv2d_winograd(
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    assert_eq!(w_shape[1], c, "channel mismatch");
    let tiles = n * h.div_ceil(2) * wd.div_ceil(2);
    let u = winograd_weights(w, w_shape, false);
    let v = winograd_input(x, x_shape);
    winograd_output(&gemms(&u, &v, k, c, tiles), [n, k, h, wd], b)
}

/// The input gradient of [`conv2d_winograd`]: gx `[N, C, H, W]` from gy `[N, K, H, W]`, the
/// convolution of gy with the kernel turned by 180 degrees and its channels swapped.
pub fn conv2d_backward_input_winograd(
    gy: &[f32],
    w: &[f32],
    w_shape: [usize; 4],
    x_shape: [usize; 4],
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    let tiles = n * h.div_ceil(2) * wd.div_ceil(2);
    let u = winograd_weights(w, w_shape, true);
    let v = winograd_input(gy, [n, k, h, wd]);
    winograd_output(&gemms(&u, &v, c, k, tiles), x_shape, None)
}

/// GY `[16, K, P]` from gy `[N, K, H, W]`: `GY[ξ][k][p] = (A dy Aᵀ)[ξ / 4][ξ % 4]` for the 2x2
/// tile dy of tile p, zeros past the plane's edge.
pub fn winograd_gy(gy: &[f32], y_shape: [usize; 4]) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = n * th * tw;
    let plane = k * tiles;
    let mut out = vec![0f32; 16 * plane];
    let a_col = |u: [f32; 2]| [u[0], u[0] + u[1], u[0] - u[1], -u[1]];
    for img in 0..n {
        for kk in 0..k {
            let gp = &gy[(img * k + kk) * h * w..][..h * w];
            let at = |y: usize, x: usize| if y < h && x < w { gp[y * w + x] } else { 0.0 };
            for ty in 0..th {
                for tx in 0..tw {
                    let (oy, ox) = (2 * ty, 2 * tx);
                    let dy0 = [at(oy, ox), at(oy, ox + 1)];
                    let dy1 = [at(oy + 1, ox), at(oy + 1, ox + 1)];
                    let rows = [
                        a_col(dy0),
                        a_col([dy0[0] + dy1[0], dy0[1] + dy1[1]]),
                        a_col([dy0[0] - dy1[0], dy0[1] - dy1[1]]),
                        a_col([-dy1[0], -dy1[1]]),
                    ];
                    let p = (img * th + ty) * tw + tx;
                    for (i, rw) in rows.iter().enumerate() {
                        for (j, v) in rw.iter().enumerate() {
                            out[(4 * i + j) * plane + kk * tiles + p] = *v;
                        }
                    }
                }
            }
        }
    }
    out
}

/// gw `[K, C, 3, 3]` from dU `[16, K, C]`: `gw[k, c] = Gᵀ dU[.][k][c] G`.
pub fn winograd_weights_grad(du: &[f32], k: usize, c: usize) -> Vec<f32> {
    let plane = k * c;
    let mut gw = vec![0f32; plane * 9];
    let gt_row = |u: [f32; 4]| {
        let h = 0.5 * (u[1] + u[2]);
        [u[0] + h, 0.5 * (u[1] - u[2]), h + u[3]]
    };
    for i in 0..plane {
        let d = |r: usize| std::array::from_fn::<f32, 4, _>(|j| du[(4 * r + j) * plane + i]);
        let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
        let h: [f32; 4] = std::array::from_fn(|j| 0.5 * (d1[j] + d2[j]));
        let rows = [
            gt_row(std::array::from_fn(|j| d0[j] + h[j])),
            gt_row(std::array::from_fn(|j| 0.5 * (d1[j] - d2[j]))),
            gt_row(std::array::from_fn(|j| h[j] + d3[j])),
        ];
        for (r, rw) in rows.iter().enumerate() {
            gw[i * 9 + 3 * r..][..3].copy_from_slice(rw);
        }
    }
    gw
}

/// The weight gradient of [`conv2d_winograd`]: gw `[K, C, 3, 3]` from x `[N, C, H, W]` and gy
/// `[N, K, H, W]`, `dU[ξ] = GY[ξ] V[ξ]ᵀ` summed over all tiles in order.
pub fn conv2d_backward_weight_winograd(
    x: &[f32],
    x_shape: [usize; 4],
    gy: &[f32],
    w_shape: [usize; 4],
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    let tiles = n * h.div_ceil(2) * wd.div_ceil(2);
    let v = winograd_input(x, x_shape);
    let g = winograd_gy(gy, [n, k, h, wd]);
    let mut du = vec![0f32; 16 * k * c];
    for xi in 0..16 {
        for kk in 0..k {
            let a = &g[(xi * k + kk) * tiles..][..tiles];
            for cc in 0..c {
                let b = &v[(xi * c + cc) * tiles..][..tiles];
                du[(xi * k + kk) * c + cc] =
                    a.iter().zip(b).fold(0f32, |s, (a, b)| a.mul_add(*b, s));
            }
        }
    }
    winograd_weights_grad(&du, k, c)
}
