// Winograd F(4x4, 3x3) transforms: the 3x3 convolutions of stride 1 and padding 1 as 36 GEMMs
// with a quarter of the direct convolution's multiply-adds (F(2x2, 3x3), winograd.wgsl: 4/9),
// for all three passes on the f32 engine (src/ops/conv/winograd.rs drives them, with the same
// GEMMs, chunks and Params as F(2x2, 3x3); the f16 engine keeps F(2x2, 3x3), whose transforms
// grow values by at most 4, not about 50).
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015): the output
// splits into 4x4 tiles; tile (th, tw) of a plane reads the 6x6 input patch d at rows
// 4 th - 1 .. 4 th + 4 and columns 4 tw - 1 .. 4 tw + 4 (zero outside the input: the padding),
// and with g a 3x3 kernel
//   y_tile = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
// with the Toom-Cook matrices of the points 0, 1, -1, 1/2, -2 and infinity (Barabasz et al.,
// "Error analysis and improving the accuracy of Winograd convolution for deep neural
// networks", 2020: on random 128-channel convolutions in f32, the largest error is 1.3e-5 of
// the output's RMS against 4.5e-5 with Lavin & Gray's 0, +-1, +-2; F(2x2, 3x3): 2.2e-6):
//   Bᵀ = [1 -3/2   -2  3/2    1  0]   G = [    1      0      0]   Aᵀ = [1  1  1    1   1  0]
//        [0   -1  1/2  5/2    1  0]       [  1/3    1/3    1/3]        [0  1 -1  1/2  -2  0]
//        [0    1 -5/2  1/2    1  0]       [ -1/3    1/3   -1/3]        [0  1  1  1/4   4  0]
//        [0   -2   -1    2    1  0]       [-16/15 -8/15  -4/15]        [0  1 -1  1/8  -8  1]
//        [0  1/2   -1 -1/2    1  0]       [ 1/15  -2/15   4/15]
//        [0    1 -3/2   -2  3/2  1]       [    0      0      1]
// Summed over input channels, the products ⊙ become, for each of the 36 positions ξ = 6 i + j
// of the 6x6 transformed tile, a GEMM: M[ξ][k][p] = sum_c U[ξ][k][c] V[ξ][c][p], with U, V,
// the output, and the weight gradient's GY = A dy Aᵀ and gw = Gᵀ dU G as in winograd.wgsl
// (same entry points with a 4 after "wino", same layouts with 36 planes instead of 16).
//
// Each two-dimensional transform X M Yᵀ (Bᵀ d B, G g Gᵀ, Aᵀ M A, A dy Aᵀ, Gᵀ dU G) is one
// one-dimensional transform (bt6, g6, at4, a6, gt3: a vector times a matrix, written out with
// its common subexpressions) applied twice: to each row of the tile, writing the results as
// columns; then to each row of that. The first pass gives (M Yᵀ)ᵀ = Y Mᵀ, the second
// (Y Mᵀ Xᵀ)ᵀ = X M Yᵀ. src/reference/winograd.rs is the CPU twin, the same operations in the
// same order.
//
// Dispatch: one thread per transformed column (U: rows * cols; V, GY: channels * tiles, each
// writing its 36 values), per tile and channel (wino4_output*: channels * tiles, each writing
// up to 16 pixels) or per weight's 3x3 (wino4_weights_grad: rows * cols), 256 per workgroup,
// linear index (wg.x + wg.y * num_workgroups.x) * 256 + local index; consecutive threads take
// consecutive tiles p (or columns), so the 36 writes (reads) of each are coalesced.
//
// Bindings (group 0), as winograd.wgsl's: 0 = Params (uniform); 1 = the source (read: w, x, M,
// gy or dU), 2 = the destination (write: U, V, y, GY or gw); wino4_output also 3 = bias [K]
// (read; any buffer when has_bias == 0); wino4_output_bn 4-7 = gamma, beta, running mean,
// running var [K], 8 = the residual (read; any buffer but y without EPI_RESIDUAL).

struct Params {
    count: u32,     // work items (threads that do something)
    channels: u32,  // the transformed planes' channels: C of x (wino4_input), K of y or gy
    height: u32,    // the planes' height and width (equal for x, y and gy)
    width: u32,
    tiles_h: u32,   // 4x4 tiles per plane: ceil(height / 4) x ceil(width / 4)
    tiles_w: u32,
    tiles: u32,     // tiles of the chunk: images * tiles_h * tiles_w
    base: u32,      // offset of the chunk's first image in x, y or gy
    has_bias: u32,
    rows: u32,      // wino4_weights, wino4_weights_grad: rows and columns of each U[ξ] (dU[ξ])
    cols: u32,
    flip: u32,      // wino4_weights: the input gradient's turned, transposed kernel
    epilogue: u32,  // wino4_output_bn: EPI_RELU | EPI_RESIDUAL
    eps: f32,       // wino4_output_bn: the batch norm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;

alias Vec3 = array<f32, 3>;
alias Vec4 = array<f32, 4>;
alias Vec6 = array<f32, 6>;

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// Bᵀ d for a column d (d B for a row).
fn bt6(d: Vec6) -> Vec6 {
    let t = d[3] - d[1];
    let e = d[4] - d[2];
    let a = e + 1.5 * d[3];
    let b = 1.5 * d[2] + d[3] - d[1];
    return Vec6(
        d[0] - d[2] + e + 1.5 * t,
        a + b,
        a - b,
        e + 2.0 * t,
        e - 0.5 * t,
        d[5] - d[3] - t + 1.5 * e,
    );
}

// G g for a column g of a kernel (g Gᵀ for a row).
fn g6(g: Vec3) -> Vec6 {
    let s = g[0] + g[2];
    return Vec6(
        g[0],
        (1.0 / 3.0) * (s + g[1]),
        (-1.0 / 3.0) * (s - g[1]),
        (-1.0 / 15.0) * (16.0 * g[0] + 8.0 * g[1] + 4.0 * g[2]),
        (1.0 / 15.0) * (g[0] - 2.0 * g[1] + 4.0 * g[2]),
        g[2],
    );
}

// Aᵀ m for a column m of M (m A for a row).
fn at4(m: Vec6) -> Vec4 {
    let s = m[1] + m[2];
    let d = m[1] - m[2];
    return Vec4(
        m[0] + s + m[3] + m[4],
        d + 0.5 * m[3] - 2.0 * m[4],
        s + 0.25 * m[3] + 4.0 * m[4],
        d + 0.125 * m[3] - 8.0 * m[4] + m[5],
    );
}

// A y for a column y of an output tile's gradient (y Aᵀ for a row).
fn a6(y: Vec4) -> Vec6 {
    let e = y[0] + y[2];
    let o = y[1] + y[3];
    return Vec6(
        y[0],
        e + o,
        e - o,
        y[0] + 0.5 * y[1] + 0.25 * y[2] + 0.125 * y[3],
        y[0] - 2.0 * y[1] + 4.0 * y[2] - 8.0 * y[3],
        y[3],
    );
}

// Gᵀ u for a column u of dU (u G for a row).
fn gt3(u: Vec6) -> Vec3 {
    let s = u[1] + u[2];
    let d = u[1] - u[2];
    return Vec3(
        u[0] + (1.0 / 3.0) * d + (1.0 / 15.0) * (u[4] - 16.0 * u[3]),
        (1.0 / 3.0) * s - (1.0 / 15.0) * (8.0 * u[3] + 2.0 * u[4]),
        (1.0 / 3.0) * d + (4.0 / 15.0) * (u[4] - u[3]) + u[5],
    );
}

// Write work item i's 6x6 transformed values, value (r, c) to position ξ = 6 r + c of dst's 36
// planes of `plane` values each (U, V or GY).
fn store_tile(t: array<Vec6, 6>, plane: u32, i: u32) {
    for (var r = 0u; r < 6u; r++) {
        for (var c = 0u; c < 6u; c++) {
            dst[(6u * r + c) * plane + i] = t[r][c];
        }
    }
}

@compute @workgroup_size(256)
fn wino4_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let row = i / p.cols;
    let col = i - row * p.cols;
    // Tap t of g at w[base + t] (forward) or w[base + 8 - t] (turned).
    var base = (row * p.cols + col) * 9u;
    if (p.flip != 0u) { base = (col * p.rows + row) * 9u; }
    var g: array<Vec3, 3>;
    for (var r = 0u; r < 3u; r++) {
        for (var c = 0u; c < 3u; c++) {
            let t = 3u * r + c;
            g[r][c] = src[base + select(t, 8u - t, p.flip != 0u)];
        }
    }
    // g Gᵀ by rows, as columns of h (h = G gᵀ); then G g Gᵀ = (h Gᵀ)ᵀ.
    var h: array<Vec3, 6>;
    for (var r = 0u; r < 3u; r++) {
        let v = g6(g[r]);
        for (var c = 0u; c < 6u; c++) { h[c][r] = v[c]; }
    }
    var u: array<Vec6, 6>;
    for (var r = 0u; r < 6u; r++) {
        let v = g6(h[r]);
        for (var c = 0u; c < 6u; c++) { u[c][r] = v[c]; }
    }
    store_tile(u, p.rows * p.cols, i);
}

// Work item i of the transforms over planes (wino4_input, wino4_gy, the output's): channel
// i / tiles, tile i % tiles of the chunk, which lies in image n at tile row th and column tw.
struct Item {
    ch: u32,
    n: u32,
    th: u32,
    tw: u32,
}

fn item_of(i: u32) -> Item {
    let ch = i / p.tiles;
    let q = i - ch * p.tiles;
    let per_image = p.tiles_h * p.tiles_w;
    let n = q / per_image;
    let t = q - n * per_image;
    let th = t / p.tiles_w;
    return Item(ch, n, th, t - th * p.tiles_w);
}

// Offset of the item's plane (its image and channel) in x, y or gy.
fn plane_of(t: Item) -> u32 {
    return p.base + (t.n * p.channels + t.ch) * p.height * p.width;
}

// src[plane + y * width + x], zero where (y, x) lies outside the plane (loaded from the
// plane's first element there and zeroed after, so that no load is out of bounds).
fn at(plane: u32, y: i32, x: i32) -> f32 {
    let ok = (y >= 0) & (y < i32(p.height)) & (x >= 0) & (x < i32(p.width));
    let j = plane + u32(max(y, 0)) * p.width + u32(max(x, 0));
    return select(0.0, src[select(plane, j, ok)], ok);
}

@compute @workgroup_size(256)
fn wino4_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let y0 = 4 * i32(t.th) - 1;
    let x0 = 4 * i32(t.tw) - 1;
    // d B by rows, as columns of h (h = Bᵀ dᵀ); then Bᵀ d B = (h B)ᵀ.
    var h: array<Vec6, 6>;
    for (var r = 0; r < 6; r++) {
        var d: Vec6;
        for (var c = 0; c < 6; c++) { d[c] = at(plane, y0 + r, x0 + c); }
        let v = bt6(d);
        for (var c = 0u; c < 6u; c++) { h[c][r] = v[c]; }
    }
    var v: array<Vec6, 6>;
    for (var r = 0u; r < 6u; r++) {
        let b = bt6(h[r]);
        for (var c = 0u; c < 6u; c++) { v[c][r] = b[c]; }
    }
    store_tile(v, p.channels * p.tiles, i);
}

// The output tile of work item i (channel k, tile q): Aᵀ M A, and its first pixel's offset in
// y with how many of its rows and columns the output has (fewer than 4 at the last tiles of
// planes whose sides are not multiples of 4).
struct OutTile {
    k: u32,
    at: u32,
    rows: u32,
    cols: u32,
    y: array<Vec4, 4>,
}

fn output_tile(i: u32) -> OutTile {
    let t = item_of(i);
    let plane = p.channels * p.tiles;
    // M A by rows, as columns of h (h = Aᵀ Mᵀ, 4x6); then Aᵀ M A = (h A)ᵀ.
    var h: array<Vec6, 4>;
    for (var r = 0u; r < 6u; r++) {
        var m: Vec6;
        for (var c = 0u; c < 6u; c++) { m[c] = src[(6u * r + c) * plane + i]; }
        let v = at4(m);
        for (var c = 0u; c < 4u; c++) { h[c][r] = v[c]; }
    }
    var y: array<Vec4, 4>;
    for (var r = 0u; r < 4u; r++) {
        let v = at4(h[r]);
        for (var c = 0u; c < 4u; c++) { y[c][r] = v[c]; }
    }
    let oy = 4u * t.th;
    let ox = 4u * t.tw;
    return OutTile(
        t.ch,
        plane_of(t) + oy * p.width + ox,
        min(4u, p.height - oy),
        min(4u, p.width - ox),
        y,
    );
}

@compute @workgroup_size(256)
fn wino4_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile(i);
    var b = 0.0;
    if (p.has_bias != 0u) { b = bias[t.k]; }
    for (var r = 0u; r < t.rows; r++) {
        for (var c = 0u; c < t.cols; c++) {
            dst[t.at + r * p.width + c] = t.y[r][c] + b;
        }
    }
}

// wino4_output_bn: inference's conv + eval-mode batch norm (+ residual) (+ ReLU), as
// conv.wgsl's conv_forward_bn applies them to the conv's output v (no conv bias):
// y = relu?((v - mean[k]) / sqrt(var[k] + eps) * gamma[k] + beta[k] (+ res)), in that order.
@group(0) @binding(4) var<storage, read> bn_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> bn_beta: array<f32>;
@group(0) @binding(6) var<storage, read> bn_mean: array<f32>;
@group(0) @binding(7) var<storage, read> bn_var: array<f32>;
@group(0) @binding(8) var<storage, read> bn_res: array<f32>;

const EPI_RELU: u32 = 1u;
const EPI_RESIDUAL: u32 = 2u;

@compute @workgroup_size(256)
fn wino4_output_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile(i);
    let k = t.k;
    for (var r = 0u; r < t.rows; r++) {
        for (var c = 0u; c < t.cols; c++) {
            let j = t.at + r * p.width + c;
            var y = (t.y[r][c] - bn_mean[k]) * (1.0 / sqrt(bn_var[k] + p.eps)) * bn_gamma[k]
                + bn_beta[k];
            if ((p.epilogue & EPI_RESIDUAL) != 0u) { y = y + bn_res[j]; }
            if ((p.epilogue & EPI_RELU) != 0u) { y = max(y, 0.0); }
            dst[j] = y;
        }
    }
}

@compute @workgroup_size(256)
fn wino4_gy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let oy = 4 * i32(t.th);
    let ox = 4 * i32(t.tw);
    // dy Aᵀ by rows, as columns of h (h = A dyᵀ, 6x4); then A dy Aᵀ = (h Aᵀ)ᵀ. Zeros past the
    // plane's edge.
    var h: array<Vec4, 6>;
    for (var r = 0; r < 4; r++) {
        var dy: Vec4;
        for (var c = 0; c < 4; c++) { dy[c] = at(plane, oy + r, ox + c); }
        let v = a6(dy);
        for (var c = 0u; c < 6u; c++) { h[c][r] = v[c]; }
    }
    var g: array<Vec6, 6>;
    for (var r = 0u; r < 6u; r++) {
        let v = a6(h[r]);
        for (var c = 0u; c < 6u; c++) { g[c][r] = v[c]; }
    }
    store_tile(g, p.channels * p.tiles, i);
}

@compute @workgroup_size(256)
fn wino4_weights_grad(@builtin(workgroup_id) wg: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let plane = p.rows * p.cols;
    // dU G by rows, as columns of h (h = Gᵀ dUᵀ, 3x6); then Gᵀ dU G = (h G)ᵀ.
    var h: array<Vec6, 3>;
    for (var r = 0u; r < 6u; r++) {
        var u: Vec6;
        for (var c = 0u; c < 6u; c++) { u[c] = src[(6u * r + c) * plane + i]; }
        let v = gt3(u);
        for (var c = 0u; c < 3u; c++) { h[c][r] = v[c]; }
    }
    for (var r = 0u; r < 3u; r++) {
        let v = gt3(h[r]);
        for (var c = 0u; c < 3u; c++) { dst[i * 9u + 3u * c + r] = v[c]; }
    }
}
