// Winograd F(2x2, 3x3) transforms: the 3x3 convolutions of stride 1 and padding 1 (all but the
// first of each ResNet stage's) as 16 GEMMs with 4/9 of the direct convolution's
// multiply-adds, for all three passes (src/ops/conv/winograd.rs drives them; the GEMMs are
// conv.wgsl's conv_forward and conv_backward_weight, batched over grid z).
//
// Math (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015): the output
// splits into 2x2 tiles; tile (th, tw) of a plane reads the 4x4 input patch d at rows
// 2 th - 1 .. 2 th + 2 and columns 2 tw - 1 .. 2 tw + 2 (zero outside the input: the padding),
// and with g a 3x3 kernel
//   y_tile = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//   Bᵀ = [1  0 -1  0]    G = [1    0    0  ]    Aᵀ = [1  1  1  0]
//        [0  1  1  0]        [1/2  1/2  1/2]         [0  1 -1 -1]
//        [0 -1  1  0]        [1/2 -1/2  1/2]
//        [0  1  0 -1]        [0    0    1  ]
// Summed over input channels, the products ⊙ become, for each of the 16 positions ξ = 4 i + j
// of the 4x4 transformed tile, a GEMM: M[ξ][k][p] = sum_c U[ξ][k][c] V[ξ][c][p], with
//   wino_weights: U[ξ][row][col] = (G g Gᵀ)[i][j], g = w[row, col] ([K, C, 3, 3]: rows = K,
//                 cols = C); with flip != 0, g = w[col, row] turned by 180 degrees (the input
//                 gradient's kernel: rows = C, cols = K)
//   wino_input:   V[ξ][c][p]    = (Bᵀ d B)[i][j] for channel c of the tile p of the chunk
//   wino_output:  y[n, k, 2 th + a, 2 tw + b] = (Aᵀ M[.][k][p] A)[a][b] (+ b[k]), only where
//                 the output has that pixel (odd sizes: the last tile's second row or column
//                 is dropped)
// p = (n th_count + th) tw_count + tw counts the 2x2 tiles of a chunk of images [first, first +
// images), tiles = images th_count tw_count. B and A hold 0 and +-1 only, so V and the output
// are sums and differences; G halves.
//
// Weight gradient: with Z = Bᵀ d B (V) and dy the tile's 2x2 output gradient, the gradient of
// the product's left factor is (A dy Aᵀ) ⊙ Z, so summed over tiles and images
//   wino_gy:           GY[ξ][k][p] = (A dy Aᵀ)[i][j], dy = gy's tile p of channel k (zeros
//                      past the plane's edge)
//   (16 GEMMs)         dU[ξ][k][c] = sum_p GY[ξ][k][p] V[ξ][c][p]
//   wino_weights_grad: gw[k, c] = Gᵀ dU[.][k][c] G (3x3 from 4x4)
//
// Dispatch: one thread per column of the transformed values (U: rows * cols; V, GY: channels
// * tiles, each writing its 16 values), per tile and channel (wino_output: channels * tiles,
// each writing up to 4 pixels) or per weight's 3x3 (wino_weights_grad: rows * cols), 256 per
// workgroup, linear index (wg.x + wg.y * num_workgroups.x) * 256 + local index; consecutive
// threads take consecutive tiles p (or columns), so the 16 writes (reads) of each are
// coalesced.
//
// Bindings (group 0): 0 = Params (uniform); 1 = the source (read: w, x, M, gy or dU), 2 = the
// destination (write: U, V, y, GY or gw); wino_output also 3 = bias [K] (read; any buffer
// when has_bias == 0); wino_output_bn (the output transform with inference's batch norm, see
// there) 4-7 = gamma, beta, running mean, running var [K], 8 = the residual (read; any buffer
// but y without EPI_RESIDUAL): 7 storage buffers.

struct Params {
    count: u32,     // work items (threads that do something)
    channels: u32,  // the transformed planes' channels: C of x (wino_input), K of y or gy
    height: u32,    // the planes' height and width (equal for x, y and gy)
    width: u32,
    tiles_h: u32,   // 2x2 tiles per plane: ceil(height / 2) x ceil(width / 2)
    tiles_w: u32,
    tiles: u32,     // tiles of the chunk: images * tiles_h * tiles_w
    base: u32,      // offset of the chunk's first image in x, y or gy
    has_bias: u32,
    rows: u32,      // wino_weights, wino_weights_grad: rows and columns of each U[ξ] (dU[ξ])
    cols: u32,
    flip: u32,      // wino_weights: the input gradient's turned, transposed kernel
    epilogue: u32,  // wino_output_bn: EPI_RELU | EPI_RESIDUAL
    eps: f32,       // wino_output_bn: the batch norm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// u B for a row u of Bᵀ d (and Bᵀ d itself, by rows).
fn b_row(u: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(u.x - u.z, u.y + u.z, u.z - u.y, u.y - u.w);
}

// v Gᵀ for a row v of G g (and G g itself, by rows).
fn g_row(v: vec3<f32>) -> vec4<f32> {
    return vec4<f32>(v.x, 0.5 * (v.x + v.y + v.z), 0.5 * (v.x - v.y + v.z), v.z);
}

// u A for a row u of Aᵀ M.
fn a_row(u: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(u.x + u.y + u.z, u.y - u.z - u.w);
}

// Write work item i's 4x4 transformed values, value (r, c) to position ξ = 4 r + c of
// dst's 16 planes of `plane` values each (U, V or GY).
fn store_tile(t: array<vec4<f32>, 4>, plane: u32, i: u32) {
    for (var r = 0u; r < 4u; r++) {
        let u = t[r];
        dst[(4u * r) * plane + i] = u.x;
        dst[(4u * r + 1u) * plane + i] = u.y;
        dst[(4u * r + 2u) * plane + i] = u.z;
        dst[(4u * r + 3u) * plane + i] = u.w;
    }
}

// Read work item i's 4x4 values from src's 16 planes of `plane` values each (M or dU).
fn load_tile(plane: u32, i: u32) -> array<vec4<f32>, 4> {
    var t: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        t[r] = vec4<f32>(
            src[(4u * r) * plane + i],
            src[(4u * r + 1u) * plane + i],
            src[(4u * r + 2u) * plane + i],
            src[(4u * r + 3u) * plane + i],
        );
    }
    return t;
}

@compute @workgroup_size(256)
fn wino_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let row = i / p.cols;
    let col = i - row * p.cols;
    // Tap t of g at w[base + t] (forward) or w[base + 8 - t] (turned).
    var base = (row * p.cols + col) * 9u;
    if (p.flip != 0u) { base = (col * p.rows + row) * 9u; }
    var g: array<f32, 9>;
    for (var t = 0u; t < 9u; t++) {
        g[t] = src[base + select(t, 8u - t, p.flip != 0u)];
    }
    let g0 = vec3<f32>(g[0], g[1], g[2]);
    let g1 = vec3<f32>(g[3], g[4], g[5]);
    let g2 = vec3<f32>(g[6], g[7], g[8]);
    // G g, row by row, then each row times Gᵀ.
    let u = array<vec4<f32>, 4>(
        g_row(g0),
        g_row(0.5 * (g0 + g1 + g2)),
        g_row(0.5 * (g0 - g1 + g2)),
        g_row(g2),
    );
    store_tile(u, p.rows * p.cols, i);
}

// Work item i of the transforms over planes (wino_input, wino_gy, the output's): channel
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

// Row `r` (0..3) of the 4x4 patch of input plane `plane` (offset in src) at rows from `y0` and
// columns from `x0` (both may lie one before the plane: the padding), zeros outside. Loads
// from a safe index (the plane's first element) where outside and zeroes after.
fn patch_row(plane: u32, y0: i32, x0: i32, r: i32) -> vec4<f32> {
    let y = y0 + r;
    let row_ok = (y >= 0) & (y < i32(p.height));
    let at = plane + u32(max(y, 0)) * p.width;
    var v: vec4<f32>;
    for (var c = 0; c < 4; c++) {
        let x = x0 + c;
        let ok = row_ok & (x >= 0) & (x < i32(p.width));
        v[c] = select(0.0, src[select(plane, at + u32(max(x, 0)), ok)], ok);
    }
    return v;
}

@compute @workgroup_size(256)
fn wino_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let y0 = 2 * i32(t.th) - 1;
    let x0 = 2 * i32(t.tw) - 1;
    let d0 = patch_row(plane, y0, x0, 0);
    let d1 = patch_row(plane, y0, x0, 1);
    let d2 = patch_row(plane, y0, x0, 2);
    let d3 = patch_row(plane, y0, x0, 3);
    // Bᵀ d, row by row, then each row times B.
    let v = array<vec4<f32>, 4>(b_row(d0 - d2), b_row(d1 + d2), b_row(d2 - d1), b_row(d1 - d3));
    store_tile(v, p.channels * p.tiles, i);
}

// The output tile of work item i (channel k, tile q): its two rows, its first pixel's offset
// in y (at), and whether it has a second column and row (odd sizes: not the last ones).
struct OutTile {
    k: u32,
    at: u32,
    right: bool,
    down: bool,
    y0: vec2<f32>,
    y1: vec2<f32>,
}

fn output_tile(i: u32) -> OutTile {
    let t = item_of(i);
    let m = load_tile(p.channels * p.tiles, i);
    let oy = 2u * t.th;
    let ox = 2u * t.tw;
    // Aᵀ M, row by row, then each row times A.
    return OutTile(
        t.ch,
        plane_of(t) + oy * p.width + ox,
        ox + 1u < p.width,
        oy + 1u < p.height,
        a_row(m[0] + m[1] + m[2]),
        a_row(m[1] - m[2] - m[3]),
    );
}

@compute @workgroup_size(256)
fn wino_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile(i);
    var b = 0.0;
    if (p.has_bias != 0u) { b = bias[t.k]; }
    dst[t.at] = t.y0.x + b;
    if (t.right) { dst[t.at + 1u] = t.y0.y + b; }
    if (t.down) {
        dst[t.at + p.width] = t.y1.x + b;
        if (t.right) { dst[t.at + p.width + 1u] = t.y1.y + b; }
    }
}

// wino_output_bn: inference's conv + eval-mode batch norm (+ residual) (+ ReLU), as
// conv.wgsl's conv_forward_bn applies them to the conv's output v (no conv bias):
// y = relu?((v - mean[k]) / sqrt(var[k] + eps) * gamma[k] + beta[k] (+ res)), in that order.
@group(0) @binding(4) var<storage, read> bn_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> bn_beta: array<f32>;
@group(0) @binding(6) var<storage, read> bn_mean: array<f32>;
@group(0) @binding(7) var<storage, read> bn_var: array<f32>;
@group(0) @binding(8) var<storage, read> bn_res: array<f32>;

const EPI_RELU: u32 = 1u;
const EPI_RESIDUAL: u32 = 2u;

fn bn_store(k: u32, j: u32, v: f32) {
    var y = (v - bn_mean[k]) * (1.0 / sqrt(bn_var[k] + p.eps)) * bn_gamma[k] + bn_beta[k];
    if ((p.epilogue & EPI_RESIDUAL) != 0u) { y = y + bn_res[j]; }
    if ((p.epilogue & EPI_RELU) != 0u) { y = max(y, 0.0); }
    dst[j] = y;
}

@compute @workgroup_size(256)
fn wino_output_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile(i);
    bn_store(t.k, t.at, t.y0.x);
    if (t.right) { bn_store(t.k, t.at + 1u, t.y0.y); }
    if (t.down) {
        bn_store(t.k, t.at + p.width, t.y1.x);
        if (t.right) { bn_store(t.k, t.at + p.width + 1u, t.y1.y); }
    }
}

// A u for a column u = (u0, u1) of a 2x2 tile (and u Aᵀ for a row).
fn a_col(u: vec2<f32>) -> vec4<f32> {
    return vec4<f32>(u.x, u.x + u.y, u.x - u.y, -u.y);
}

// The value of gy's plane `plane` at (y, x), zero past the plane's edge (odd sizes).
fn gy_at(plane: u32, y: u32, x: u32) -> f32 {
    let ok = (y < p.height) & (x < p.width);
    return select(0.0, src[select(plane, plane + y * p.width + x, ok)], ok);
}

@compute @workgroup_size(256)
fn wino_gy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let oy = 2u * t.th;
    let ox = 2u * t.tw;
    // A dy: rows (dy0, dy0 + dy1, dy0 - dy1, -dy1) of the tile's rows dy0, dy1; then each
    // row times Aᵀ.
    let dy0 = vec2<f32>(gy_at(plane, oy, ox), gy_at(plane, oy, ox + 1u));
    let dy1 = vec2<f32>(gy_at(plane, oy + 1u, ox), gy_at(plane, oy + 1u, ox + 1u));
    let v = array<vec4<f32>, 4>(a_col(dy0), a_col(dy0 + dy1), a_col(dy0 - dy1), a_col(-dy1));
    store_tile(v, p.channels * p.tiles, i);
}

// u G for a row u of Gᵀ dU (3 values from 4).
fn gt_row(u: vec4<f32>) -> vec3<f32> {
    let h = 0.5 * (u.y + u.z);
    return vec3<f32>(u.x + h, 0.5 * (u.y - u.z), h + u.w);
}

@compute @workgroup_size(256)
fn wino_weights_grad(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let d = load_tile(p.rows * p.cols, i);
    // Gᵀ dU, row by row, then each row times G.
    let h = 0.5 * (d[1] + d[2]);
    let g0 = gt_row(d[0] + h);
    let g1 = gt_row(0.5 * (d[1] - d[2]));
    let g2 = gt_row(h + d[3]);
    let at = i * 9u;
    dst[at] = g0.x;
    dst[at + 1u] = g0.y;
    dst[at + 2u] = g0.z;
    dst[at + 3u] = g1.x;
    dst[at + 4u] = g1.y;
    dst[at + 5u] = g1.z;
    dst[at + 6u] = g2.x;
    dst[at + 7u] = g2.y;
    dst[at + 8u] = g2.z;
}
