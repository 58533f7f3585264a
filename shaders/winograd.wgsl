// Winograd transforms: the 3x3 convolutions of stride 1 and padding 1 (all but the first of
// each ResNet stage's) as 16 GEMMs with 4/9 of the direct convolution's multiply-adds
// (F(2x2, 3x3), the wino_* entry points) or 36 with a quarter of them (F(4x4, 3x3), wino4_*,
// after F(2x2, 3x3)'s), for all three passes (src/ops/conv/winograd.rs drives them; the GEMMs
// are conv.wgsl's conv_forward and conv_backward_weight, batched over grid z, or on CPU
// adapters gemm_lanes.wgsl's). On CPU adapters with subgroups of 8 or more lanes,
// winograd_quads.wgsl's kernels (compiled after this file) move F(4x4, 3x3)'s transformed
// values as vec4s instead: the same math, through the helpers below.
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
//                 is dropped); with the pipeline constant ACCUMULATE (the input gradient, no
//                 bias) y += that instead: the gradient that the input has so far, plus this
//                 one, in the order of elementwise.wgsl's axpy (y + 1 * value), so the same bits
// p = (n th_count + th) tw_count + tw counts the 2x2 tiles of a chunk of images [first, first +
// images), tiles = images th_count tw_count. B and A hold 0 and +-1 only, so V and the output
// are sums and differences; G halves.
//
// Weight gradient: with Z = Bᵀ d B (V) and dy the tile's 2x2 output gradient, the gradient of
// the product's left factor is (A dy Aᵀ) ⊙ Z, so summed over tiles and images
//   wino_gy:           GY[ξ][k][p] = (A dy Aᵀ)[i][j], dy = gy's tile p of channel k (zeros
//                      past the plane's edge)
//   (16 GEMMs)         dU[ξ][k][c] = sum_p GY[ξ][k][p] V[ξ][c][p] (on narrow layers P positions
//                      per GEMM, dU[ξ] its diagonal blocks: see du_at)
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
// but y without RESIDUAL): 7 storage buffers.

struct Params {
    count: u32,     // work items (threads that do something)
    channels: u32,  // the transformed planes' channels: C of x (wino_input), K of y or gy
    height: u32,    // the planes' height and width (equal for x, y and gy)
    width: u32,
    tiles_h: u32,   // m x m tiles per plane: ceil(height / m) x ceil(width / m), m = 2 or 4
    tiles_w: u32,
    tiles: u32,     // tiles of the chunk: images * tiles_h * tiles_w
    base: u32,      // offset of the chunk's first image in x, y or gy
    has_bias: u32,
    rows: u32,      // wino_weights, wino_weights_grad: rows and columns of each U[ξ] (dU[ξ])
    cols: u32,
    flip: u32,      // wino_weights: the input gradient's turned, transposed kernel
    eps: f32,       // wino_output_bn: the batch norm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;

// The epilogues' choices are pipeline constants rather than flags in the params, so that each
// transform compiles without a branch per stored value (RADV: wino4_output 698 instructions and
// 50 branches with a flag, 485 and 18 without; conv.wgsl's ACCUMULATE found the same):
// - ACCUMULATE: the plain output transforms add to what y holds (the input gradient's sum so
//   far) instead of writing it;
// - RESIDUAL, RELU: wino_output_bn's residual add and ReLU.
override ACCUMULATE: bool = false;
override RESIDUAL: bool = false;
override RELU: bool = false;

// An output transform's value v for y[at], plus the bias b, or (ACCUMULATE) added to what
// y[at] holds.
fn put(at: u32, v: f32, b: f32) {
    if (ACCUMULATE) {
        dst[at] = dst[at] + v;
    } else {
        dst[at] = v + b;
    }
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
// (Private arrays here are only ever indexed by constants, as in conv.wgsl: one run-time index
// can demote a whole array to slow local memory. Hence the spelled-out rows.)
fn store_tile(t: array<vec4<f32>, 4>, plane: u32, i: u32) {
    store_row4(t[0], i, plane);
    store_row4(t[1], 4u * plane + i, plane);
    store_row4(t[2], 8u * plane + i, plane);
    store_row4(t[3], 12u * plane + i, plane);
}

// dst[at + c plane] = u[c] for the four values of u.
fn store_row4(u: vec4<f32>, at: u32, plane: u32) {
    dst[at] = u.x;
    dst[at + plane] = u.y;
    dst[at + 2u * plane] = u.z;
    dst[at + 3u * plane] = u.w;
}

// Read work item i's 4x4 values from src's 16 planes of `plane` values each (M).
fn load_tile(plane: u32, i: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        load_row4(i, plane),
        load_row4(4u * plane + i, plane),
        load_row4(8u * plane + i, plane),
        load_row4(12u * plane + i, plane),
    );
}

// (src[at], src[at + plane], src[at + 2 plane], src[at + 3 plane]).
fn load_row4(at: u32, plane: u32) -> vec4<f32> {
    return vec4<f32>(src[at], src[at + plane], src[at + 2u * plane], src[at + 3u * plane]);
}

// The offset in w of the kernel of U's row and column: w[row, col] ([K, C, 3, 3]), or with
// flip != 0 w[col, row] (the input gradient's).
fn kernel_base(row: u32, col: u32) -> u32 {
    if (p.flip != 0u) { return (col * p.rows + row) * 9u; }
    return (row * p.cols + col) * 9u;
}

// Tap t (3 r + c) of the kernel at `base`: w[base + t], or turned by 180 degrees with flip != 0,
// w[base + 8 - t].
fn tap(base: u32, t: u32) -> f32 {
    return src[base + select(t, 8u - t, p.flip != 0u)];
}

@compute @workgroup_size(256)
fn wino_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let row = i / p.cols;
    let col = i - row * p.cols;
    let base = kernel_base(row, col);
    let g0 = vec3<f32>(tap(base, 0u), tap(base, 1u), tap(base, 2u));
    let g1 = vec3<f32>(tap(base, 3u), tap(base, 4u), tap(base, 5u));
    let g2 = vec3<f32>(tap(base, 6u), tap(base, 7u), tap(base, 8u));
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
    return vec4<f32>(
        plane_at(plane, y, x0),
        plane_at(plane, y, x0 + 1),
        plane_at(plane, y, x0 + 2),
        plane_at(plane, y, x0 + 3),
    );
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
    put(t.at, t.y0.x, b);
    if (t.right) { put(t.at + 1u, t.y0.y, b); }
    if (t.down) {
        put(t.at + p.width, t.y1.x, b);
        if (t.right) { put(t.at + p.width + 1u, t.y1.y, b); }
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

// Channel k's running statistics and affine parameters, read once per thread as conv.wgsl's
// conv_forward_bn does, not for every value stored (RADV merged those reads already; a
// compiler that cannot tell the bindings from dst need not).
fn bn_channel(k: u32) -> BnChannel {
    return BnChannel(bn_mean[k], bn_invstd(bn_var[k], p.eps), bn_gamma[k], bn_beta[k]);
}

fn bn_store(ch: BnChannel, j: u32, v: f32) {
    var y = bn_normalize(ch, v);
    if (RESIDUAL) { y = y + bn_res[j]; }
    if (RELU) { y = relu_value(y); }
    dst[j] = y;
}

@compute @workgroup_size(256)
fn wino_output_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile(i);
    let ch = bn_channel(t.k);
    bn_store(ch, t.at, t.y0.x);
    if (t.right) { bn_store(ch, t.at + 1u, t.y0.y); }
    if (t.down) {
        bn_store(ch, t.at + p.width, t.y1.x);
        if (t.right) { bn_store(ch, t.at + p.width + 1u, t.y1.y); }
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

// dU[ξ][row][col] of work item i = row * cols + col, for the weight gradient's transform:
// plane ξ of rows * cols values. (GEMMs that ran P positions ξ at once, src/ops/conv/winograd.rs
// `packed_positions`, stored only their diagonal blocks, dU[j P + q] for q < P, in this layout:
// conv.wgsl's bw_put with BLOCK_M.)
fn du_at(xi: u32, i: u32) -> f32 {
    return src[xi * p.rows * p.cols + i];
}

// A row of work item i's 4x4 tile of dU: positions first .. first + 3.
fn du_row4(first: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(du_at(first, i), du_at(first + 1u, i), du_at(first + 2u, i),
                     du_at(first + 3u, i));
}

@compute @workgroup_size(256)
fn wino_weights_grad(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let d = array<vec4<f32>, 4>(du_row4(0u, i), du_row4(4u, i), du_row4(8u, i), du_row4(12u, i));
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

// ---------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3): the same convolutions as 36 GEMMs with a quarter of the direct
// convolution's multiply-adds, for all three passes on the f32 engine (with the same GEMMs,
// chunks, Params, bindings and work items as F(2x2, 3x3) above; the f16 engine keeps
// F(2x2, 3x3), whose transforms grow values by at most 4, not about 50).
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
// the output, and the weight gradient's GY = A dy Aᵀ and gw = Gᵀ dU G as for F(2x2, 3x3)
// (the same entry points with a 4 after "wino", the same layouts with 36 planes, not 16).
//
// Each two-dimensional transform X M Yᵀ (Bᵀ d B, G g Gᵀ, Aᵀ M A, A dy Aᵀ, Gᵀ dU G) is one
// one-dimensional transform (bt6, g6, at4, a6, gt3: a vector times a matrix, written out with
// its common subexpressions) applied twice: to each row of the tile (M Yᵀ), whose result is
// transposed (Y Mᵀ), then to each row of that: Y Mᵀ Xᵀ = (X M Yᵀ)ᵀ, the tile by columns, which
// the stores write as such. The private arrays are indexed by constants only (as in
// conv.wgsl: one run-time index can demote a whole array to slow local memory), hence the
// spelled-out transposes, loads and stores. src/reference/winograd.rs is the CPU twin, the
// same operations in the same order.
//
// Dispatch: one thread per transformed column (U: rows * cols; V, GY: channels * tiles, each
// writing its 36 values), per tile and channel (wino4_output*: channels * tiles, each writing
// up to 16 pixels) or per weight's 3x3 (wino4_weights_grad: rows * cols), 256 per workgroup,
// linear index (wg.x + wg.y * num_workgroups.x) * 256 + local index; consecutive threads take
// consecutive tiles p (or columns), so the 36 writes (reads) of each are coalesced.
//
// Bindings: as above.

alias Vec3 = array<f32, 3>;
alias Vec4 = array<f32, 4>;
alias Vec6 = array<f32, 6>;

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

// The transposes between the two passes. transpose_rc: r rows of c values to c rows of r.
fn transpose_66(t: array<Vec6, 6>) -> array<Vec6, 6> {
    return array<Vec6, 6>(
        Vec6(t[0][0], t[1][0], t[2][0], t[3][0], t[4][0], t[5][0]),
        Vec6(t[0][1], t[1][1], t[2][1], t[3][1], t[4][1], t[5][1]),
        Vec6(t[0][2], t[1][2], t[2][2], t[3][2], t[4][2], t[5][2]),
        Vec6(t[0][3], t[1][3], t[2][3], t[3][3], t[4][3], t[5][3]),
        Vec6(t[0][4], t[1][4], t[2][4], t[3][4], t[4][4], t[5][4]),
        Vec6(t[0][5], t[1][5], t[2][5], t[3][5], t[4][5], t[5][5]),
    );
}

fn transpose_36(t: array<Vec6, 3>) -> array<Vec3, 6> {
    return array<Vec3, 6>(
        Vec3(t[0][0], t[1][0], t[2][0]),
        Vec3(t[0][1], t[1][1], t[2][1]),
        Vec3(t[0][2], t[1][2], t[2][2]),
        Vec3(t[0][3], t[1][3], t[2][3]),
        Vec3(t[0][4], t[1][4], t[2][4]),
        Vec3(t[0][5], t[1][5], t[2][5]),
    );
}

fn transpose_63(t: array<Vec3, 6>) -> array<Vec6, 3> {
    return array<Vec6, 3>(
        Vec6(t[0][0], t[1][0], t[2][0], t[3][0], t[4][0], t[5][0]),
        Vec6(t[0][1], t[1][1], t[2][1], t[3][1], t[4][1], t[5][1]),
        Vec6(t[0][2], t[1][2], t[2][2], t[3][2], t[4][2], t[5][2]),
    );
}

fn transpose_64(t: array<Vec4, 6>) -> array<Vec6, 4> {
    return array<Vec6, 4>(
        Vec6(t[0][0], t[1][0], t[2][0], t[3][0], t[4][0], t[5][0]),
        Vec6(t[0][1], t[1][1], t[2][1], t[3][1], t[4][1], t[5][1]),
        Vec6(t[0][2], t[1][2], t[2][2], t[3][2], t[4][2], t[5][2]),
        Vec6(t[0][3], t[1][3], t[2][3], t[3][3], t[4][3], t[5][3]),
    );
}

fn transpose_46(t: array<Vec6, 4>) -> array<Vec4, 6> {
    return array<Vec4, 6>(
        Vec4(t[0][0], t[1][0], t[2][0], t[3][0]),
        Vec4(t[0][1], t[1][1], t[2][1], t[3][1]),
        Vec4(t[0][2], t[1][2], t[2][2], t[3][2]),
        Vec4(t[0][3], t[1][3], t[2][3], t[3][3]),
        Vec4(t[0][4], t[1][4], t[2][4], t[3][4]),
        Vec4(t[0][5], t[1][5], t[2][5], t[3][5]),
    );
}

// Write the transformed tile whose column j is t[j]: value (r, j) to position ξ = 6 r + j of
// dst's 36 planes of `plane` values each (U, V or GY), for work item i.
fn store_columns6(t: array<Vec6, 6>, plane: u32, i: u32) {
    let s = 6u * plane;
    store6(t[0], i, s);
    store6(t[1], plane + i, s);
    store6(t[2], 2u * plane + i, s);
    store6(t[3], 3u * plane + i, s);
    store6(t[4], 4u * plane + i, s);
    store6(t[5], 5u * plane + i, s);
}

// dst[at + c stride] = v[c] for the six values of v.
fn store6(v: Vec6, at: u32, stride: u32) {
    dst[at] = v[0];
    dst[at + stride] = v[1];
    dst[at + 2u * stride] = v[2];
    dst[at + 3u * stride] = v[3];
    dst[at + 4u * stride] = v[4];
    dst[at + 5u * stride] = v[5];
}

// (src[at], src[at + stride], .., src[at + 5 stride]).
fn load6(at: u32, stride: u32) -> Vec6 {
    return Vec6(
        src[at],
        src[at + stride],
        src[at + 2u * stride],
        src[at + 3u * stride],
        src[at + 4u * stride],
        src[at + 5u * stride],
    );
}

// A row of work item i's 6x6 tile of dU: positions first .. first + 5 (du_at).
fn du_row6(first: u32, i: u32) -> Vec6 {
    return Vec6(du_at(first, i), du_at(first + 1u, i), du_at(first + 2u, i), du_at(first + 3u, i),
                du_at(first + 4u, i), du_at(first + 5u, i));
}

// Work item i's 6x6 values from src's 36 planes of `plane` values each (M), by rows.
fn load_tile6(plane: u32, i: u32) -> array<Vec6, 6> {
    return array<Vec6, 6>(
        load6(i, plane),
        load6(6u * plane + i, plane),
        load6(12u * plane + i, plane),
        load6(18u * plane + i, plane),
        load6(24u * plane + i, plane),
        load6(30u * plane + i, plane),
    );
}

@compute @workgroup_size(256)
fn wino4_weights(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let row = i / p.cols;
    let base = kernel_base(row, i - row * p.cols);
    let g = array<Vec3, 3>(
        Vec3(tap(base, 0u), tap(base, 1u), tap(base, 2u)),
        Vec3(tap(base, 3u), tap(base, 4u), tap(base, 5u)),
        Vec3(tap(base, 6u), tap(base, 7u), tap(base, 8u)),
    );
    let h = transpose_36(array<Vec6, 3>(g6(g[0]), g6(g[1]), g6(g[2])));
    let u = array<Vec6, 6>(g6(h[0]), g6(h[1]), g6(h[2]), g6(h[3]), g6(h[4]), g6(h[5]));
    store_columns6(u, p.rows * p.cols, i);
}

// src[plane + y * width + x], zero where (y, x) lies outside the plane (loaded from the
// plane's first element there and zeroed after, so that no load is out of bounds).
fn plane_at(plane: u32, y: i32, x: i32) -> f32 {
    let ok = (y >= 0) & (y < i32(p.height)) & (x >= 0) & (x < i32(p.width));
    let j = plane + u32(max(y, 0)) * p.width + u32(max(x, 0));
    return select(0.0, src[select(plane, j, ok)], ok);
}

// Row y of the 6x6 input patch from column x0 (zeros outside the plane).
fn patch_row6(plane: u32, y: i32, x0: i32) -> Vec6 {
    return Vec6(
        plane_at(plane, y, x0),
        plane_at(plane, y, x0 + 1),
        plane_at(plane, y, x0 + 2),
        plane_at(plane, y, x0 + 3),
        plane_at(plane, y, x0 + 4),
        plane_at(plane, y, x0 + 5),
    );
}

// Work item i's transformed input tile Bᵀ d B, by columns (store_columns6's order).
fn input_tile6(i: u32) -> array<Vec6, 6> {
    let t = item_of(i);
    let plane = plane_of(t);
    let y0 = 4 * i32(t.th) - 1;
    let x0 = 4 * i32(t.tw) - 1;
    return input_transform6(array<Vec6, 6>(
        patch_row6(plane, y0, x0),
        patch_row6(plane, y0 + 1, x0),
        patch_row6(plane, y0 + 2, x0),
        patch_row6(plane, y0 + 3, x0),
        patch_row6(plane, y0 + 4, x0),
        patch_row6(plane, y0 + 5, x0),
    ));
}

// Bᵀ d B of a 6x6 input patch d (by rows), by columns.
fn input_transform6(d: array<Vec6, 6>) -> array<Vec6, 6> {
    let h = transpose_66(array<Vec6, 6>(bt6(d[0]), bt6(d[1]), bt6(d[2]), bt6(d[3]), bt6(d[4]),
                                        bt6(d[5])));
    return array<Vec6, 6>(bt6(h[0]), bt6(h[1]), bt6(h[2]), bt6(h[3]), bt6(h[4]), bt6(h[5]));
}

@compute @workgroup_size(256)
fn wino4_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    store_columns6(input_tile6(i), p.channels * p.tiles, i);
}

// The output tile of work item i (channel k, tile q): Aᵀ M A by columns (y[c] is column c),
// its first pixel's offset in y, and how many of its rows and columns the output has (fewer
// than 4 at the last tiles of planes whose sides are not multiples of 4).
struct OutTile4 {
    k: u32,
    at: u32,
    rows: u32,
    cols: u32,
    y: array<Vec4, 4>,
}

fn output_tile4(i: u32) -> OutTile4 {
    let t = item_of(i);
    return output_tile4_of(t, load_tile6(p.channels * p.tiles, i));
}

// output_tile4 of work item t from its 6x6 values m of M (position 6 r + c in m[r][c]).
fn output_tile4_of(t: Item, m: array<Vec6, 6>) -> OutTile4 {
    let h = transpose_64(array<Vec4, 6>(at4(m[0]), at4(m[1]), at4(m[2]), at4(m[3]), at4(m[4]),
                                        at4(m[5])));
    let oy = 4u * t.th;
    let ox = 4u * t.tw;
    return OutTile4(
        t.ch,
        plane_of(t) + oy * p.width + ox,
        min(4u, p.height - oy),
        min(4u, p.width - ox),
        array<Vec4, 4>(at4(h[0]), at4(h[1]), at4(h[2]), at4(h[3])),
    );
}

// Column `col` of an output tile at y[at] (rows of the output: `rows`), through put.
fn put_column4(col: Vec4, at: u32, rows: u32, b: f32) {
    put(at, col[0], b);
    if (rows > 1u) { put(at + p.width, col[1], b); }
    if (rows > 2u) { put(at + 2u * p.width, col[2], b); }
    if (rows > 3u) { put(at + 3u * p.width, col[3], b); }
}

@compute @workgroup_size(256)
fn wino4_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    put_tile4(output_tile4(i));
}

// Output tile t into y (its pixels within the plane), plus the bias or added (put).
fn put_tile4(t: OutTile4) {
    var b = 0.0;
    if (p.has_bias != 0u) { b = bias[t.k]; }
    put_column4(t.y[0], t.at, t.rows, b);
    if (t.cols > 1u) { put_column4(t.y[1], t.at + 1u, t.rows, b); }
    if (t.cols > 2u) { put_column4(t.y[2], t.at + 2u, t.rows, b); }
    if (t.cols > 3u) { put_column4(t.y[3], t.at + 3u, t.rows, b); }
}

// Column `col` of an output tile at y[at] through wino_output_bn's epilogue (bn_store).
fn put_column4_bn(col: Vec4, ch: BnChannel, at: u32, rows: u32) {
    bn_store(ch, at, col[0]);
    if (rows > 1u) { bn_store(ch, at + p.width, col[1]); }
    if (rows > 2u) { bn_store(ch, at + 2u * p.width, col[2]); }
    if (rows > 3u) { bn_store(ch, at + 3u * p.width, col[3]); }
}

// wino4_output_bn: wino_output_bn's epilogue on F(4x4, 3x3)'s tiles.
@compute @workgroup_size(256)
fn wino4_output_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    put_tile4_bn(output_tile4(i));
}

// Output tile t into y through wino_output_bn's epilogue (bn_store).
fn put_tile4_bn(t: OutTile4) {
    let ch = bn_channel(t.k);
    put_column4_bn(t.y[0], ch, t.at, t.rows);
    if (t.cols > 1u) { put_column4_bn(t.y[1], ch, t.at + 1u, t.rows); }
    if (t.cols > 2u) { put_column4_bn(t.y[2], ch, t.at + 2u, t.rows); }
    if (t.cols > 3u) { put_column4_bn(t.y[3], ch, t.at + 3u, t.rows); }
}

// Row y of gy's 4x4 output tile from column x0 (zeros past the plane's edge).
fn gy_row4(plane: u32, y: i32, x0: i32) -> Vec4 {
    return Vec4(
        plane_at(plane, y, x0),
        plane_at(plane, y, x0 + 1),
        plane_at(plane, y, x0 + 2),
        plane_at(plane, y, x0 + 3),
    );
}

@compute @workgroup_size(256)
fn wino4_gy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    store_columns6(gy_tile6(i), p.channels * p.tiles, i);
}

// Work item i's transformed output gradient A dy Aᵀ, by columns (store_columns6's order).
fn gy_tile6(i: u32) -> array<Vec6, 6> {
    let t = item_of(i);
    let plane = plane_of(t);
    let oy = 4 * i32(t.th);
    let ox = 4 * i32(t.tw);
    return gy_transform6(array<Vec4, 4>(
        gy_row4(plane, oy, ox),
        gy_row4(plane, oy + 1, ox),
        gy_row4(plane, oy + 2, ox),
        gy_row4(plane, oy + 3, ox),
    ));
}

// A dy Aᵀ of a 4x4 output gradient tile dy (by rows), by columns.
fn gy_transform6(dy: array<Vec4, 4>) -> array<Vec6, 6> {
    let h = transpose_46(array<Vec6, 4>(a6(dy[0]), a6(dy[1]), a6(dy[2]), a6(dy[3])));
    return array<Vec6, 6>(a6(h[0]), a6(h[1]), a6(h[2]), a6(h[3]), a6(h[4]), a6(h[5]));
}

@compute @workgroup_size(256)
fn wino4_weights_grad(@builtin(workgroup_id) wg: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let d = array<Vec6, 6>(du_row6(0u, i), du_row6(6u, i), du_row6(12u, i), du_row6(18u, i),
                           du_row6(24u, i), du_row6(30u, i));
    let h = transpose_63(array<Vec3, 6>(gt3(d[0]), gt3(d[1]), gt3(d[2]), gt3(d[3]), gt3(d[4]),
                                        gt3(d[5])));
    // gw's column c is gt3(h[c]): gw[r][c] at i * 9 + 3 r + c.
    let c0 = gt3(h[0]);
    let c1 = gt3(h[1]);
    let c2 = gt3(h[2]);
    let at = i * 9u;
    dst[at] = c0[0];
    dst[at + 1u] = c1[0];
    dst[at + 2u] = c2[0];
    dst[at + 3u] = c0[1];
    dst[at + 4u] = c1[1];
    dst[at + 5u] = c2[1];
    dst[at + 6u] = c0[2];
    dst[at + 7u] = c1[2];
    dst[at + 8u] = c2[2];
}
