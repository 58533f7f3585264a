//! Winograd F(2x2, 3x3) and F(4x4, 3x3): the CPU twins of `shaders/winograd.wgsl`'s
//! transforms (the same f32 operations in the same order), and the
//! stride-1, padding-1 3x3 convolution and its two gradients built from them with 16 (36) f32
//! GEMMs each, as `src/ops/conv/winograd.rs` runs them.

use crate::WinogradTile;

/// U `[16, rows, cols]` from w `[K, C, 3, 3]`: `U[ξ][k][c] = (G w[k, c] Gᵀ)[ξ / 4][ξ % 4]` with
/// rows K and cols C; with `flip` (the input gradient's kernel) `U[ξ][c][k]` from `w[k, c]` turned
/// by 180 degrees, rows C and cols K.
fn winograd_weights2(w: &[f32], w_shape: [usize; 4], flip: bool) -> Vec<f32> {
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
fn winograd_input2(x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
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
fn winograd_output2(m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
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

/// GY `[16, K, P]` from gy `[N, K, H, W]`: `GY[ξ][k][p] = (A dy Aᵀ)[ξ / 4][ξ % 4]` for the 2x2
/// tile dy of tile p, zeros past the plane's edge.
fn winograd_gy2(gy: &[f32], y_shape: [usize; 4]) -> Vec<f32> {
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
fn winograd_weights_grad2(du: &[f32], k: usize, c: usize) -> Vec<f32> {
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

/// The F(4x4, 3x3) transforms' one-dimensional steps (`winograd.wgsl`'s functions of the same
/// names): Bᵀ d, G g, Aᵀ m, A y and Gᵀ u for a column (a row times the transposed matrix).
fn bt6(d: [f32; 6]) -> [f32; 6] {
    let t = d[3] - d[1];
    let e = d[4] - d[2];
    let a = e + 1.5 * d[3];
    let b = 1.5 * d[2] + d[3] - d[1];
    [
        d[0] - d[2] + e + 1.5 * t,
        a + b,
        a - b,
        e + 2.0 * t,
        e - 0.5 * t,
        d[5] - d[3] - t + 1.5 * e,
    ]
}

fn g6(g: [f32; 3]) -> [f32; 6] {
    let s = g[0] + g[2];
    [
        g[0],
        (1.0 / 3.0) * (s + g[1]),
        (-1.0 / 3.0) * (s - g[1]),
        (-1.0 / 15.0) * (16.0 * g[0] + 8.0 * g[1] + 4.0 * g[2]),
        (1.0 / 15.0) * (g[0] - 2.0 * g[1] + 4.0 * g[2]),
        g[2],
    ]
}

fn at4(m: [f32; 6]) -> [f32; 4] {
    let (s, d) = (m[1] + m[2], m[1] - m[2]);
    [
        m[0] + s + m[3] + m[4],
        d + 0.5 * m[3] - 2.0 * m[4],
        s + 0.25 * m[3] + 4.0 * m[4],
        d + 0.125 * m[3] - 8.0 * m[4] + m[5],
    ]
}

fn a6(y: [f32; 4]) -> [f32; 6] {
    let (e, o) = (y[0] + y[2], y[1] + y[3]);
    [
        y[0],
        e + o,
        e - o,
        y[0] + 0.5 * y[1] + 0.25 * y[2] + 0.125 * y[3],
        y[0] - 2.0 * y[1] + 4.0 * y[2] - 8.0 * y[3],
        y[3],
    ]
}

fn gt3(u: [f32; 6]) -> [f32; 3] {
    let (s, d) = (u[1] + u[2], u[1] - u[2]);
    [
        u[0] + (1.0 / 3.0) * d + (1.0 / 15.0) * (u[4] - 16.0 * u[3]),
        (1.0 / 3.0) * s - (1.0 / 15.0) * (8.0 * u[3] + 2.0 * u[4]),
        (1.0 / 3.0) * d + (4.0 / 15.0) * (u[4] - u[3]) + u[5],
    ]
}

/// `f` applied to each row of `t`, the results written as columns.
fn rows_to_columns<const R: usize, const C: usize, const O: usize>(
    t: [[f32; C]; R],
    f: fn([f32; C]) -> [f32; O],
) -> [[f32; R]; O] {
    let mut out = [[0.0; R]; O];
    for (r, row) in t.into_iter().enumerate() {
        for (c, v) in f(row).into_iter().enumerate() {
            out[c][r] = v;
        }
    }
    out
}

/// X t Xᵀ for the one-dimensional transform `f` (a column u to X u): `f` on the rows written
/// as columns, twice, as `winograd.wgsl` computes it.
fn two_sided<const N: usize, const O: usize>(
    t: [[f32; N]; N],
    f: fn([f32; N]) -> [f32; O],
) -> [[f32; O]; O] {
    rows_to_columns(rows_to_columns(t, f), f)
}

/// Write tile `t` (α x α) of work item `i` to position ξ = α r + c of `dst`'s α² planes of
/// `plane` values each.
fn store_tile<const A: usize>(dst: &mut [f32], t: &[[f32; A]; A], plane: usize, i: usize) {
    for (r, row) in t.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            dst[(A * r + c) * plane + i] = *v;
        }
    }
}

/// Work item `i`'s α x α values from `src`'s α² planes of `plane` values each.
fn load_tile<const A: usize>(src: &[f32], plane: usize, i: usize) -> [[f32; A]; A] {
    std::array::from_fn(|r| std::array::from_fn(|c| src[(A * r + c) * plane + i]))
}

/// The work items of the plane transforms: (image, channel, tile row, tile column, item
/// index: channel * tiles + p) for the `m` x `m` output tiles of planes `shape` `[N, C, H, W]`,
/// p = (n th_count + th) tw_count + tw.
fn plane_items(
    [n, c, h, w]: [usize; 4],
    m: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize, usize)> {
    let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
    let tiles = n * th * tw;
    (0..c).flat_map(move |ch| {
        (0..tiles).map(move |p| {
            let (img, t) = (p / (th * tw), p % (th * tw));
            (img, ch, t / tw, t % tw, ch * tiles + p)
        })
    })
}

/// F(4x4, 3x3)'s U `[36, rows, cols]` (see [`winograd_weights2`]): `G g Gᵀ`.
fn winograd_weights4(w: &[f32], w_shape: [usize; 4], flip: bool) -> Vec<f32> {
    let [k, c, r, s] = w_shape;
    assert_eq!((r, s), (3, 3), "Winograd F(4x4, 3x3) needs 3x3 kernels");
    let (rows, cols) = if flip { (c, k) } else { (k, c) };
    let plane = rows * cols;
    let mut u = vec![0f32; 36 * plane];
    for i in 0..plane {
        let (row, col) = (i / cols, i % cols);
        let base = if flip { col * c + row } else { row * c + col } * 9;
        let g: [[f32; 3]; 3] = std::array::from_fn(|r| {
            std::array::from_fn(|cc| {
                let t = 3 * r + cc;
                w[base + if flip { 8 - t } else { t }]
            })
        });
        store_tile(&mut u, &two_sided(g, g6), plane, i);
    }
    u
}

/// F(4x4, 3x3)'s V `[36, C, P]` from x (see [`winograd_input2`]): `Bᵀ d B` for the 6x6 patch at
/// rows 4 th - 1.. and columns 4 tw - 1.., zeros outside.
fn winograd_input4(x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    let [n, c, h, w] = x_shape;
    let plane = c * n * h.div_ceil(4) * w.div_ceil(4);
    let mut v = vec![0f32; 36 * plane];
    for (img, ch, ty, tx, i) in plane_items(x_shape, 4) {
        let xp = &x[(img * c + ch) * h * w..][..h * w];
        let (y0, x0) = (4 * ty as isize - 1, 4 * tx as isize - 1);
        let d = std::array::from_fn(|r| {
            std::array::from_fn(|cc| {
                let (y, xx) = (y0 + r as isize, x0 + cc as isize);
                let inside = (0..h as isize).contains(&y) && (0..w as isize).contains(&xx);
                if inside {
                    xp[y as usize * w + xx as usize]
                } else {
                    0.0
                }
            })
        });
        store_tile(&mut v, &two_sided(d, bt6), plane, i);
    }
    v
}

/// F(4x4, 3x3)'s output: y `[N, K, H, W]` from M `[36, K, P]`, each 4x4 tile Aᵀ M A (+ `b[k]`),
/// its pixels past the output's edge dropped.
fn winograd_output4(m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let plane = k * n * h.div_ceil(4) * w.div_ceil(4);
    let mut y = vec![0f32; n * k * h * w];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 4) {
        let bias = b.map_or(0.0, |b| b[kk]);
        let t = two_sided(load_tile::<6>(m, plane, i), at4);
        for (a, row) in t.iter().enumerate() {
            for (bb, val) in row.iter().enumerate() {
                let (oy, ox) = (4 * ty + a, 4 * tx + bb);
                if oy < h && ox < w {
                    y[((img * k + kk) * h + oy) * w + ox] = val + bias;
                }
            }
        }
    }
    y
}

/// F(4x4, 3x3)'s GY `[36, K, P]` from gy (see [`winograd_gy2`]): `A dy Aᵀ` for the 4x4 tile dy,
/// zeros past the plane's edge.
fn winograd_gy4(gy: &[f32], y_shape: [usize; 4]) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let plane = k * n * h.div_ceil(4) * w.div_ceil(4);
    let mut out = vec![0f32; 36 * plane];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 4) {
        let gp = &gy[(img * k + kk) * h * w..][..h * w];
        let dy = std::array::from_fn(|r| {
            std::array::from_fn(|c| {
                let (oy, ox) = (4 * ty + r, 4 * tx + c);
                if oy < h && ox < w {
                    gp[oy * w + ox]
                } else {
                    0.0
                }
            })
        });
        store_tile(&mut out, &two_sided(dy, a6), plane, i);
    }
    out
}

/// F(4x4, 3x3)'s gw `[K, C, 3, 3]` from dU `[36, K, C]`: `gw[k, c] = Gᵀ dU[.][k][c] G`.
fn winograd_weights_grad4(du: &[f32], k: usize, c: usize) -> Vec<f32> {
    let plane = k * c;
    let mut gw = vec![0f32; plane * 9];
    for i in 0..plane {
        let t = two_sided(load_tile::<6>(du, plane, i), gt3);
        for (r, row) in t.iter().enumerate() {
            gw[i * 9 + 3 * r..][..3].copy_from_slice(row);
        }
    }
    gw
}

/// The α² GEMMs: `M[ξ]` `[rows, cols]` = `U[ξ]` `[rows, depth]` `V[ξ]` `[depth, cols]`, each sum
/// in f32 in order of the reduction index, as the GPU's GEMM adds.
fn gemms(xi: usize, u: &[f32], v: &[f32], rows: usize, depth: usize, cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; xi * rows * cols];
    for xi in 0..xi {
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

/// `tile`'s weight transform U `[α², rows, cols]` from w `[K, C, 3, 3]`: rows K and cols C, or
/// with `flip` (the input gradient's kernel turned by 180 degrees) rows C and cols K.
fn weights(tile: WinogradTile, w: &[f32], w_shape: [usize; 4], flip: bool) -> Vec<f32> {
    match tile {
        WinogradTile::F2 => winograd_weights2(w, w_shape, flip),
        WinogradTile::F4 => winograd_weights4(w, w_shape, flip),
    }
}

/// `tile`'s input transform V `[α², C, P]` from planes `[N, C, H, W]`.
fn input(tile: WinogradTile, x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    match tile {
        WinogradTile::F2 => winograd_input2(x, x_shape),
        WinogradTile::F4 => winograd_input4(x, x_shape),
    }
}

/// `tile`'s output transform: y `[N, K, H, W]` from M `[α², K, P]` (+ b).
fn output(tile: WinogradTile, m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
    match tile {
        WinogradTile::F2 => winograd_output2(m, y_shape, b),
        WinogradTile::F4 => winograd_output4(m, y_shape, b),
    }
}

/// Output tiles of a batch of planes `[N, _, H, W]`.
fn tiles(tile: WinogradTile, [n, _, h, w]: [usize; 4]) -> usize {
    n * h.div_ceil(tile.m()) * w.div_ceil(tile.m())
}

/// The 3x3 convolution of stride 1 and padding 1 of x `[N, C, H, W]` with w `[K, C, 3, 3]`
/// (+ b) by Winograd with `tile`: y `[N, K, H, W]`.
pub fn conv2d_winograd(
    tile: WinogradTile,
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    b: Option<&[f32]>,
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    assert_eq!(w_shape[1], c, "channel mismatch");
    let u = weights(tile, w, w_shape, false);
    let v = input(tile, x, x_shape);
    let m = gemms(tile.positions(), &u, &v, k, c, tiles(tile, x_shape));
    output(tile, &m, [n, k, h, wd], b)
}

/// The input gradient of [`conv2d_winograd`]: gx `[N, C, H, W]` from gy `[N, K, H, W]`, the
/// convolution of gy with the kernel turned by 180 degrees and its channels swapped.
pub fn conv2d_backward_input_winograd(
    tile: WinogradTile,
    gy: &[f32],
    w: &[f32],
    w_shape: [usize; 4],
    x_shape: [usize; 4],
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    let u = weights(tile, w, w_shape, true);
    let v = input(tile, gy, [n, k, h, wd]);
    let m = gemms(tile.positions(), &u, &v, c, k, tiles(tile, x_shape));
    output(tile, &m, x_shape, None)
}

/// The weight gradient of [`conv2d_winograd`]: gw `[K, C, 3, 3]` from x `[N, C, H, W]` and gy
/// `[N, K, H, W]`, `dU[ξ] = GY[ξ] V[ξ]ᵀ` summed over all tiles in order.
pub fn conv2d_backward_weight_winograd(
    tile: WinogradTile,
    x: &[f32],
    x_shape: [usize; 4],
    gy: &[f32],
    w_shape: [usize; 4],
) -> Vec<f32> {
    let [n, c, h, wd] = x_shape;
    let k = w_shape[0];
    let tiles = tiles(tile, x_shape);
    let v = input(tile, x, x_shape);
    let g = match tile {
        WinogradTile::F2 => winograd_gy2(gy, [n, k, h, wd]),
        WinogradTile::F4 => winograd_gy4(gy, [n, k, h, wd]),
    };
    let mut du = vec![0f32; tile.positions() * k * c];
    for xi in 0..tile.positions() {
        for kk in 0..k {
            let a = &g[(xi * k + kk) * tiles..][..tiles];
            for cc in 0..c {
                let b = &v[(xi * c + cc) * tiles..][..tiles];
                du[(xi * k + kk) * c + cc] =
                    a.iter().zip(b).fold(0f32, |s, (a, b)| a.mul_add(*b, s));
            }
        }
    }
    match tile {
        WinogradTile::F2 => winograd_weights_grad2(&du, k, c),
        WinogradTile::F4 => winograd_weights_grad4(&du, k, c),
    }
}
