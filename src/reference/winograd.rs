//! Winograd F(2x2, 3x3) and F(4x4, 3x3): the CPU twins of `shaders/winograd.wgsl`'s
//! transforms (the same f32 operations in the same order), and the
//! stride-1, padding-1 3x3 convolution and its two gradients built from them with 16 (36) f32
//! GEMMs each, as `src/ops/conv/winograd.rs` runs them.

use crate::WinogradTile;

/// The 3x3 kernel of U's `row` and `col` as rows of taps: w[row, col] ([K, C, 3, 3], `c`
/// input channels), or with `flip` (the input gradient's kernel) w[col, row] turned by 180
/// degrees.
fn kernel(w: &[f32], c: usize, row: usize, col: usize, flip: bool) -> [[f32; 3]; 3] {
    let base = if flip { col * c + row } else { row * c + col } * 9;
    std::array::from_fn(|r| {
        std::array::from_fn(|cc| {
            let t = 3 * r + cc;
            w[base + if flip { 8 - t } else { t }]
        })
    })
}

/// The `A` x `A` patch of an `h` x `w` plane with its first value at row `y0`, column `x0`
/// (either may lie before the plane), zeros outside the plane.
fn patch<const A: usize>(plane: &[f32], [h, w]: [usize; 2], y0: isize, x0: isize) -> [[f32; A]; A] {
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            let (y, x) = (y0 + r as isize, x0 + c as isize);
            let inside = (0..h as isize).contains(&y) && (0..w as isize).contains(&x);
            if inside {
                plane[y as usize * w + x as usize]
            } else {
                0.0
            }
        })
    })
}

/// Write the `M` x `M` output tile `t` (+ `bias`) at row `oy`, column `ox` of image `img`'s
/// channel `kk` in y `[N, K, H, W]`, dropping its pixels past the plane's edge.
fn put_tile<const M: usize>(
    y: &mut [f32],
    [_, k, h, w]: [usize; 4],
    (img, kk): (usize, usize),
    (oy, ox): (usize, usize),
    t: &[[f32; M]; M],
    bias: f32,
) {
    for (a, row) in t.iter().enumerate() {
        for (b, val) in row.iter().enumerate() {
            if oy + a < h && ox + b < w {
                y[((img * k + kk) * h + oy + a) * w + ox + b] = val + bias;
            }
        }
    }
}

/// `tile(g)` for each kernel g of U's rows and columns, as U `[α², rows, cols]` from w `[K, C,
/// 3, 3]`: `U[ξ][k][c] = tile(w[k, c])[ξ / α][ξ % α]` with rows K and cols C; with `flip` (the
/// input gradient's kernel) `U[ξ][c][k]` from `w[k, c]` turned by 180 degrees, rows C and
/// cols K.
fn kernel_tiles<const A: usize>(
    w: &[f32],
    w_shape: [usize; 4],
    flip: bool,
    tile: impl Fn([[f32; 3]; 3]) -> [[f32; A]; A],
) -> Vec<f32> {
    let [k, c, r, s] = w_shape;
    assert_eq!((r, s), (3, 3), "Winograd needs 3x3 kernels");
    let (rows, cols) = if flip { (c, k) } else { (k, c) };
    let plane = rows * cols;
    let mut u = vec![0f32; A * A * plane];
    for i in 0..plane {
        let g = kernel(w, c, i / cols, i % cols, flip);
        store_tile(&mut u, &tile(g), plane, i);
    }
    u
}

/// F(2x2, 3x3)'s G g Gᵀ of a kernel g (rows of taps).
fn g_tile2([g0, g1, g2]: [[f32; 3]; 3]) -> [[f32; 4]; 4] {
    let g_row = |v: [f32; 3]| {
        [
            v[0],
            0.5 * (v[0] + v[1] + v[2]),
            0.5 * (v[0] - v[1] + v[2]),
            v[2],
        ]
    };
    let lin = |a: f32, b: f32| {
        [
            0.5 * (g0[0] + a * g1[0] + b * g2[0]),
            0.5 * (g0[1] + a * g1[1] + b * g2[1]),
            0.5 * (g0[2] + a * g1[2] + b * g2[2]),
        ]
    };
    [
        g_row(g0),
        g_row(lin(1.0, 1.0)),
        g_row(lin(-1.0, 1.0)),
        g_row(g2),
    ]
}

/// u B for a row u of Bᵀ d.
fn b_row(u: [f32; 4]) -> [f32; 4] {
    [u[0] - u[2], u[1] + u[2], u[2] - u[1], u[1] - u[3]]
}

/// F(2x2, 3x3)'s V `[16, C, P]` from x `[N, C, H, W]`: `V[ξ][c][p] = (Bᵀ d B)[ξ / 4][ξ % 4]`
/// for the 4x4 patch d of tile p = (n th_count + th) tw_count + tw at rows 2 th - 1.. and
/// columns 2 tw - 1.., zeros outside.
fn winograd_input2(x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    let [_, c, h, w] = x_shape;
    let plane = c * tiles(WinogradTile::F2, x_shape);
    let mut v = vec![0f32; 16 * plane];
    for (img, ch, ty, tx, i) in plane_items(x_shape, 2) {
        let xp = &x[(img * c + ch) * h * w..][..h * w];
        let (y0, x0) = (2 * ty as isize - 1, 2 * tx as isize - 1);
        let [d0, d1, d2, d3] = patch::<4>(xp, [h, w], y0, x0);
        let sub = |a: [f32; 4], b: [f32; 4]| std::array::from_fn(|i| a[i] - b[i]);
        let add = |a: [f32; 4], b: [f32; 4]| std::array::from_fn(|i| a[i] + b[i]);
        let rows = [
            b_row(sub(d0, d2)),
            b_row(add(d1, d2)),
            b_row(sub(d2, d1)),
            b_row(sub(d1, d3)),
        ];
        store_tile(&mut v, &rows, plane, i);
    }
    v
}

/// F(2x2, 3x3)'s output: y `[N, K, H, W]` from M `[16, K, P]`, each 2x2 output tile Aᵀ M A
/// (+ `b[k]`), its pixels past the output's edge dropped.
fn winograd_output2(m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let plane = k * tiles(WinogradTile::F2, y_shape);
    let mut y = vec![0f32; n * k * h * w];
    let a_row = |u: [f32; 4]| [u[0] + u[1] + u[2], u[1] - u[2] - u[3]];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 2) {
        let [m0, m1, m2, m3] = load_tile::<4>(m, plane, i);
        let s0 = a_row(std::array::from_fn(|i| m0[i] + m1[i] + m2[i]));
        let s1 = a_row(std::array::from_fn(|i| m1[i] - m2[i] - m3[i]));
        let bias = b.map_or(0.0, |b| b[kk]);
        put_tile(
            &mut y,
            y_shape,
            (img, kk),
            (2 * ty, 2 * tx),
            &[s0, s1],
            bias,
        );
    }
    y
}

/// F(2x2, 3x3)'s GY `[16, K, P]` from gy `[N, K, H, W]`: `GY[ξ][k][p] = (A dy Aᵀ)[ξ / 4][ξ %
/// 4]` for the 2x2 tile dy of tile p, zeros past the plane's edge.
fn winograd_gy2(gy: &[f32], y_shape: [usize; 4]) -> Vec<f32> {
    let [_, k, h, w] = y_shape;
    let plane = k * tiles(WinogradTile::F2, y_shape);
    let mut out = vec![0f32; 16 * plane];
    let a_col = |u: [f32; 2]| [u[0], u[0] + u[1], u[0] - u[1], -u[1]];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 2) {
        let gp = &gy[(img * k + kk) * h * w..][..h * w];
        let [dy0, dy1] = patch::<2>(gp, [h, w], 2 * ty as isize, 2 * tx as isize);
        let rows = [
            a_col(dy0),
            a_col([dy0[0] + dy1[0], dy0[1] + dy1[1]]),
            a_col([dy0[0] - dy1[0], dy0[1] - dy1[1]]),
            a_col([-dy1[0], -dy1[1]]),
        ];
        store_tile(&mut out, &rows, plane, i);
    }
    out
}

/// F(2x2, 3x3)'s gw `[K, C, 3, 3]` from dU `[16, K, C]`: `gw[k, c] = Gᵀ dU[.][k][c] G`.
fn winograd_weights_grad2(du: &[f32], k: usize, c: usize) -> Vec<f32> {
    let plane = k * c;
    let mut gw = vec![0f32; plane * 9];
    let gt_row = |u: [f32; 4]| {
        let h = 0.5 * (u[1] + u[2]);
        [u[0] + h, 0.5 * (u[1] - u[2]), h + u[3]]
    };
    for i in 0..plane {
        let [d0, d1, d2, d3] = load_tile::<4>(du, plane, i);
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

/// F(4x4, 3x3)'s V `[36, C, P]` from x (see [`winograd_input2`]): `Bᵀ d B` for the 6x6 patch at
/// rows 4 th - 1.. and columns 4 tw - 1.., zeros outside.
fn winograd_input4(x: &[f32], x_shape: [usize; 4]) -> Vec<f32> {
    let [_, c, h, w] = x_shape;
    let plane = c * tiles(WinogradTile::F4, x_shape);
    let mut v = vec![0f32; 36 * plane];
    for (img, ch, ty, tx, i) in plane_items(x_shape, 4) {
        let xp = &x[(img * c + ch) * h * w..][..h * w];
        let d = patch::<6>(xp, [h, w], 4 * ty as isize - 1, 4 * tx as isize - 1);
        store_tile(&mut v, &two_sided(d, bt6), plane, i);
    }
    v
}

/// F(4x4, 3x3)'s output: y `[N, K, H, W]` from M `[36, K, P]`, each 4x4 tile Aᵀ M A (+ `b[k]`),
/// its pixels past the output's edge dropped.
fn winograd_output4(m: &[f32], y_shape: [usize; 4], b: Option<&[f32]>) -> Vec<f32> {
    let [n, k, h, w] = y_shape;
    let plane = k * tiles(WinogradTile::F4, y_shape);
    let mut y = vec![0f32; n * k * h * w];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 4) {
        let t = two_sided(load_tile::<6>(m, plane, i), at4);
        let bias = b.map_or(0.0, |b| b[kk]);
        put_tile(&mut y, y_shape, (img, kk), (4 * ty, 4 * tx), &t, bias);
    }
    y
}

/// F(4x4, 3x3)'s GY `[36, K, P]` from gy (see [`winograd_gy2`]): `A dy Aᵀ` for the 4x4 tile dy,
/// zeros past the plane's edge.
fn winograd_gy4(gy: &[f32], y_shape: [usize; 4]) -> Vec<f32> {
    let [_, k, h, w] = y_shape;
    let plane = k * tiles(WinogradTile::F4, y_shape);
    let mut out = vec![0f32; 36 * plane];
    for (img, kk, ty, tx, i) in plane_items(y_shape, 4) {
        let gp = &gy[(img * k + kk) * h * w..][..h * w];
        let dy = patch::<4>(gp, [h, w], 4 * ty as isize, 4 * tx as isize);
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
        WinogradTile::F2 => kernel_tiles(w, w_shape, flip, g_tile2),
        WinogradTile::F4 => kernel_tiles(w, w_shape, flip, |g| two_sided(g, g6)),
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
