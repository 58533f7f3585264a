// Batched GEMMs for CPU adapters without workgroup memory or barriers (Winograd's,
// src/ops/conv/winograd.rs, and the direct convolutions', src/ops/conv/lanes.rs), the
// matrices row-major and packed one z after another:
//   gemm_lanes:    C[z] = A[z] B[z], A [rows, depth], B [depth, cols], C [rows, cols]
//                  (Winograd's M[ξ] = U[ξ] V[ξ]; a direct input gradient's Wᵀ gy)
//   gemm_lanes_nt: C[z] = A[z] B[z]ᵀ, A [rows, depth], B [cols, depth], C [rows, cols]
//                  (Winograd's dU[ξ] = GY[ξ] V[ξ]ᵀ, summed over a chunk's tiles; a direct
//                  weight gradient's gy colᵀ)
//   gemm_lanes_planes(_bn): y = W col, C's columns stored into a convolution's output planes
//                  with the bias, or with inference's batch norm (see plane_at)
//
// Why a kernel of its own: Mesa's lavapipe runs a workgroup's subgroups as coroutines that
// switch at each barrier, and every value live across a barrier goes to the coroutine's frame
// in memory. Each load (of workgroup or storage memory) is a loop over the SIMD lanes whose
// partial results then round-trip through that frame at every lane, so the tiled kernels
// (conv.wgsl), which stage chunks through workgroup memory between barriers, spend most of
// their time there (docs/speed.md, "GEMMs without barriers on CPU adapters"). On a CPU the
// caches hold what workgroup memory would; this kernel reads A and B straight from their
// buffers, has no barrier, and its lane loops stay in registers.
//
// Math: C[z][r][n] = sum over d ascending of A[z][r][d] B[z][d][n] (or B[z][n][d]), one fused
// multiply-add per term into one accumulator, as conv_fma.wgsl's engine does. (Mesa 22's
// lavapipe lowers fma to a multiply and an add, in every kernel alike.) Each accumulator takes
// its 4 steps of a group back to back (row4): lavapipe keeps the accumulators in memory, and
// then loads and stores each once per 4 steps instead of once per step (session 33: these
// GEMMs 12-17% faster in the main job's step, with the same bits).
//
// Dispatch: a workgroup is one subgroup (SUBGROUP_LANES = 4, 8 or 16 consecutive threads, as
// src/gpu/lanes.rs verifies; the host dispatches these kernels only then) and takes ROWS = 32
// rows x 4 SUBGROUP_LANES columns, each lane 32 rows x 4 columns (one vec4 of C's row per
// row). A is shared through the lanes: per 4 steps, lane l reads the vec4s of A's rows
// r0 + 8 i + l % 8 (i = 0..3) at those 4 steps (depth is a multiple of 4), and every lane
// takes its rows' values from lanes 0-7 (lanes_broadcast4); with 4 lanes (SwiftShader:
// A_LANES), rows r0 + 4 i + l (i = 0..7) from lanes 0-3, 8 reads per 4 steps. B is the lane's
// own (one vec4 per step, or for gemm_lanes_nt the vec4s of its 4 columns at 4 steps): with 8
// lanes, 2 vec4 reads per step for 128 multiply-adds (16 rows per lane read 1.5 per 64; with
// 32, lavapipe's main-job step ran about 5% faster, its weight gradients' GEMMs 18%,
// ResNet-18's inference at batch 1 20%; 64 rows per lane ran 2.6x slower, session 33). With
// WIDE (below), a read of A brings 8 steps, one load of 32 bytes, and so does one of nt's B;
// with WIDE_B, a read of B brings two lanes' quads, which shuffles hand out. Rows past `rows`
// and columns past `cols` (a multiple of 4) read the last row or column (with WIDE_B the
// last pair of quads) and are not stored. Grid (ceil(cols / (4 SUBGROUP_LANES)),
// ceil(rows / 32), batch; 1 for the planes). gemm_lanes_nt's matrix z goes to matrix
// `base + z` of the output (the host's partial results, one set per chunk of images).
//
// Bindings (group 0): 0 = Params (uniform); 1 = A (read), 2 = B (read), 3 = C (write;
// gemm_lanes, gemm_lanes_nt); gemm_lanes_planes 4 = y (write), 5 = bias [K] (read; any buffer
// when has_bias == 0); gemm_lanes_planes_bn 4 = y, 6-9 = gamma, beta, running mean, running var
// [K], 10 = the residual (read; any buffer but y without RESIDUAL); with gemm_wide.wgsl
// before this file (the host's choice where the device has 64-bit integers), 11 and 12 = A
// and B again, as vec4<u64>s (WIDE reads them there).

struct Params {
    rows: u32,
    depth: u32,   // a multiple of 4
    cols: u32,    // a multiple of 4
    base: u32,    // gemm_lanes_nt: the output matrix of z = 0; gemm_lanes_planes: y's image
    plane: u32,   // gemm_lanes_planes: the pixels of a plane of y
    valid: u32,   // gemm_lanes_planes: B's columns that are pixels (the rest are padding)
    has_bias: u32,
    eps: f32,     // gemm_lanes_planes_bn: the batch norm's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> bn_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> bn_beta: array<f32>;
@group(0) @binding(8) var<storage, read> bn_mean: array<f32>;
@group(0) @binding(9) var<storage, read> bn_var: array<f32>;
@group(0) @binding(10) var<storage, read> bn_res: array<f32>;

override RESIDUAL: bool = false;
override RELU: bool = false;
// Read A (and gemm_lanes_nt's B) 8 steps at a time, each read one 32-byte load through
// gemm_wide.wgsl where the device has 64-bit integers: half the reads of A (and of nt's B).
// The host sets it only with 8 lanes or more (A_LANES 8) and a depth that is a multiple of 8,
// so that every such read is 32-byte aligned. The same sums in the same order: the same bits.
override WIDE: bool = false;
// With WIDE, gemm_lanes' and the planes kernels' B read 32 bytes at a time too (b_steps_wide),
// where the columns are a multiple of 8 (so that each row's pairs of quads are 32-byte
// aligned): half the reads of B, and a few shuffles.
override WIDE_B: bool = false;

// Rows per lane (and per subgroup): acc[i] holds row r0 + i's 4 columns.
const ROWS: u32 = 32u;

// The lanes whose reads of A every lane takes (lanes_broadcast4): 8, or 4 where subgroups have
// 4 lanes (SwiftShader).
override A_LANES: u32 = min(SUBGROUP_LANES, 8u);
var<private> acc: array<vec4<f32>, ROWS>;

// Row i's 4 steps: a holds A's values of the row at the 4 steps, b[s] the lane's 4 columns of
// B at step s. One accumulator's steps back to back: lavapipe keeps the 128 accumulators in
// memory (its registers hold a few), and this way loads and stores each once per 4 steps
// rather than once per step. The sums' order is the same (step 0 first).
fn row4(a: vec4<f32>, b: array<vec4<f32>, 4>, i: u32) {
    var v = acc[i];
    v = fma(vec4<f32>(a.x), b[0], v);
    v = fma(vec4<f32>(a.y), b[1], v);
    v = fma(vec4<f32>(a.z), b[2], v);
    v = fma(vec4<f32>(a.w), b[3], v);
    acc[i] = v;
}

// Rows base .. base + 3 through the 4 steps that q holds (lane i's q is row base + i's).
fn rows4(q: vec4<f32>, b: array<vec4<f32>, 4>, base: u32) {
    row4(lanes_broadcast4(q, 0u), b, base + 0u);
    row4(lanes_broadcast4(q, 1u), b, base + 1u);
    row4(lanes_broadcast4(q, 2u), b, base + 2u);
    row4(lanes_broadcast4(q, 3u), b, base + 3u);
}

// Rows base .. base + 7 likewise, from lanes 0-7 (with 8 lanes or more).
fn rows8(q: vec4<f32>, b: array<vec4<f32>, 4>, base: u32) {
    rows4(q, b, base);
    row4(lanes_broadcast4(q, 4u), b, base + 4u);
    row4(lanes_broadcast4(q, 5u), b, base + 5u);
    row4(lanes_broadcast4(q, 6u), b, base + 6u);
    row4(lanes_broadcast4(q, 7u), b, base + 7u);
}

// The 4 steps that the lanes' reads of A hold (read i: rows A_LANES i .. A_LANES (i + 1) - 1;
// reads 4-7 only with 4 lanes), with b[s] the lane's 4 columns of B at step s.
fn gemm_steps(q: array<vec4<f32>, 8>, b: array<vec4<f32>, 4>) {
    if (A_LANES == 8u) {
        rows8(q[0], b, 0u);
        rows8(q[1], b, 8u);
        rows8(q[2], b, 16u);
        rows8(q[3], b, 24u);
    } else {
        rows4(q[0], b, 0u);
        rows4(q[1], b, 4u);
        rows4(q[2], b, 8u);
        rows4(q[3], b, 12u);
        rows4(q[4], b, 16u);
        rows4(q[5], b, 20u);
        rows4(q[6], b, 24u);
        rows4(q[7], b, 28u);
    }
}

// The vec4 index of the first 4 steps of A's row r0 + A_LANES i + lane % A_LANES (clamped to
// the last row) in matrix `z` of A, for i = 0..7: what the lane reads for its subgroup (the
// first ROWS / A_LANES of them).
fn a_rows(z: u32, r0: u32, lane: u32, d4: u32) -> array<u32, 8> {
    let last = p.rows - 1u;
    let r = r0 + lane % A_LANES;
    var at: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) {
        at[i] = (z + min(r + A_LANES * i, last)) * d4;
    }
    return at;
}

// A's reads at step group k (4 steps): 4, or 8 with 4 lanes.
fn read_a(at: array<u32, 8>, k: u32) -> array<vec4<f32>, 8> {
    var q: array<vec4<f32>, 8>;
    q[0] = a[at[0] + k];
    q[1] = a[at[1] + k];
    q[2] = a[at[2] + k];
    q[3] = a[at[3] + k];
    if (A_LANES == 4u) {
        q[4] = a[at[4] + k];
        q[5] = a[at[5] + k];
        q[6] = a[at[6] + k];
        q[7] = a[at[7] + k];
    }
    return q;
}

// A's reads at step group k of 8 steps (WIDE, with 8 lanes or more): read i's first 4 steps
// in the first array (as read_a at group 2 k), its last 4 in the second (group 2 k + 1), each
// read one 32-byte load (wide_a). at's indices are even where the depth is a multiple of 8.
fn read_a_wide(at: array<u32, 8>, k: u32) -> array<array<vec4<f32>, 8>, 2> {
    let r0 = wide_a(at[0] / 2u + k);
    let r1 = wide_a(at[1] / 2u + k);
    let r2 = wide_a(at[2] / 2u + k);
    let r3 = wide_a(at[3] / 2u + k);
    let zero = vec4<f32>(0.0);
    return array<array<vec4<f32>, 8>, 2>(
        array<vec4<f32>, 8>(r0[0], r1[0], r2[0], r3[0], zero, zero, zero, zero),
        array<vec4<f32>, 8>(r0[1], r1[1], r2[1], r3[1], zero, zero, zero, zero));
}

// The lane's ROWS x 4 micro-tile of C[wg.z] = A[wg.z] B[wg.z] (A shared by every z where
// a_stride is 0), into acc: rows r0 + i, columns 4 col + e; returns (r0, col).
fn multiply_nn(wg: vec3<u32>, lane: u32, a_stride: u32) -> vec2<u32> {
    let r0 = wg.y * ROWS;
    let quads = p.cols / 4u;
    let col = wg.x * SUBGROUP_LANES + lane;   // the lane's vec4 of B and C
    let d4 = p.depth / 4u;
    let at = a_rows(wg.z * a_stride, r0, lane, d4);
    var bi = wg.z * p.depth * quads + min(col, quads - 1u);
    acc = array<vec4<f32>, ROWS>();
    if (WIDE) {
        let pair0 = wg.x * (SUBGROUP_LANES / 2u);
        for (var k = 0u; k < d4 / 2u; k++) {
            let q = read_a_wide(at, k);
            var steps: array<array<vec4<f32>, 4>, 2>;
            if (WIDE_B) {
                steps = b_steps_wide(wg.z * p.depth + 8u * k, lane, pair0);
            } else {
                steps = array<array<vec4<f32>, 4>, 2>(b_steps(bi, quads),
                                                      b_steps(bi + 4u * quads, quads));
            }
            gemm_steps(q[0], steps[0]);
            gemm_steps(q[1], steps[1]);
            bi += 8u * quads;
        }
    } else {
        for (var k = 0u; k < d4; k++) {
            gemm_steps(read_a(at, k), b_steps(bi, quads));
            bi += 4u * quads;
        }
    }
    return vec2<u32>(r0, col);
}

// The lane's 4 columns of B at the 4 steps from vec4 bi on (rows `quads` vec4s apart).
fn b_steps(bi: u32, quads: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(b[bi], b[bi + quads], b[bi + 2u * quads], b[bi + 3u * quads]);
}

// The lane's 4 columns of B at the 8 steps from B's row `row` on (its first 4 steps, then its
// last 4), read 32 bytes at a time (WIDE_B). A subgroup's L lanes take L quads of columns, L / 2
// pairs of quads from pair0 on, which 32-byte reads fetch whole: 4 L pairs over the 8 steps,
// 4 reads per lane. Lane t's read i is row row + 2 i + t / (L / 2), pair pair0 + t % (L / 2)
// (clamped to the last pair: a column past cols reads a valid one and is not stored). So quad l
// of rows 2 i and 2 i + 1 lies in lanes l / 2 and L / 2 + l / 2, in the half l % 2 of their
// reads: two shuffles of each half (lanes_shuffle4), and lane l keeps its own half's.
fn b_steps_wide(row: u32, lane: u32, pair0: u32) -> array<array<vec4<f32>, 4>, 2> {
    // (At least 1: lanes_memory.wgsl's single lane, never dispatched here, still compiles.)
    let half_lanes = max(SUBGROUP_LANES / 2u, 1u);
    let pairs = p.cols / 8u;
    let first = (row + lane / half_lanes) * pairs + min(pair0 + lane % half_lanes, pairs - 1u);
    let sources = vec2<u32>(lane / 2u, half_lanes + lane / 2u);
    let odd = (lane & 1u) == 1u;
    let r0 = wide_b(first);
    let r1 = wide_b(first + 2u * pairs);
    let r2 = wide_b(first + 4u * pairs);
    let r3 = wide_b(first + 6u * pairs);
    return array<array<vec4<f32>, 4>, 2>(
        array<vec4<f32>, 4>(quad_of(r0, sources.x, odd), quad_of(r0, sources.y, odd),
                            quad_of(r1, sources.x, odd), quad_of(r1, sources.y, odd)),
        array<vec4<f32>, 4>(quad_of(r2, sources.x, odd), quad_of(r2, sources.y, odd),
                            quad_of(r3, sources.x, odd), quad_of(r3, sources.y, odd)));
}

// Lane `source`'s read's first quad, or its second where `odd`.
fn quad_of(read: array<vec4<f32>, 2>, source: u32, odd: bool) -> vec4<f32> {
    return select(lanes_shuffle4(read[0], source), lanes_shuffle4(read[1], source), odd);
}

// The lane's rows r0 .. r0 + ROWS - 1 (those below `rows`) of column quad `col` (if within
// `cols`) into C's matrix `z`.
fn store_c(z: u32, r0: u32, col: u32) {
    let quads = p.cols / 4u;
    if (col >= quads) { return; }
    let out = (z * p.rows + r0) * quads + col;
    for (var i = 0u; i < ROWS; i++) {
        if (r0 + i < p.rows) {
            c[out + i * quads] = acc[i];
        }
    }
}

@compute @workgroup_size(SUBGROUP_LANES)
fn gemm_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, p.rows);
    store_c(wg.z, at.x, at.y);
}

// A direct convolution's forward GEMM, y = W col (+ bias): A = W [rows = K, depth = C R S]
// for every z, B = the columns of a chunk of images (im2col.wgsl: image-major pixels, `valid`
// of them, padded to a multiple of 4), and C's column j, pixel j % plane of image j / plane,
// stored into y [N, K, plane] at image `base` + j / plane (gemm_lanes_planes_bn: through
// inference's batch norm instead of the bias). The index in y of row r0 of column 4 col + e,
// or NONE past the valid columns.
const NONE: u32 = 0xffffffffu;

fn plane_at(r0: u32, col: u32, e: u32) -> u32 {
    let j = 4u * col + e;
    if (j >= p.valid) { return NONE; }
    let image = divide(j, p.plane);
    return ((p.base + image) * p.rows + r0) * p.plane + j - image * p.plane;
}

@compute @workgroup_size(SUBGROUP_LANES)
fn gemm_lanes_planes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, 0u);
    let r0 = at.x;
    let out = plane_outs(r0, at.y);
    // Row by row, so that each row's bias is read once, not once per column (each read is a
    // loop over the SIMD lanes on a CPU adapter).
    for (var i = 0u; i < ROWS; i++) {
        let r = r0 + i;
        if (r >= p.rows) { break; }
        var b = 0.0;
        if (p.has_bias != 0u) { b = bias[r]; }
        for (var e = 0u; e < 4u; e++) {
            if (out[e] == NONE) { continue; }
            var v = acc[i][e];
            if (p.has_bias != 0u) { v += b; }
            y[out[e] + i * p.plane] = v;
        }
    }
}

// plane_at of the lane's four columns.
fn plane_outs(r0: u32, col: u32) -> array<u32, 4> {
    return array<u32, 4>(plane_at(r0, col, 0u), plane_at(r0, col, 1u), plane_at(r0, col, 2u),
                         plane_at(r0, col, 3u));
}

// gemm_lanes_planes with inference's batch norm (and residual and ReLU: RESIDUAL, RELU), as
// conv.wgsl's bn_out: batchnorm.wgsl's normalize, then elementwise.wgsl's add and ReLU. A loop
// of its own, not a flag in one shared with gemm_lanes_planes: an entry point that names the
// batch norm's buffers, even in a branch it never takes, needs them bound.
@compute @workgroup_size(SUBGROUP_LANES)
fn gemm_lanes_planes_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, 0u);
    let r0 = at.x;
    let out = plane_outs(r0, at.y);
    // Row by row, as gemm_lanes_planes: each row's channel values read once.
    for (var i = 0u; i < ROWS; i++) {
        let r = r0 + i;
        if (r >= p.rows) { break; }
        let ch = BnChannel(bn_mean[r], bn_invstd(bn_var[r], p.eps), bn_gamma[r], bn_beta[r]);
        for (var e = 0u; e < 4u; e++) {
            if (out[e] == NONE) { continue; }
            let j = out[e] + i * p.plane;
            var v = bn_normalize(ch, acc[i][e]);
            if (RESIDUAL) { v = v + bn_res[j]; }
            if (RELU) { v = relu_value(v); }
            y[j] = v;
        }
    }
}

@compute @workgroup_size(SUBGROUP_LANES)
fn gemm_lanes_nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let r0 = wg.y * ROWS;
    let quads = p.cols / 4u;
    let col = wg.x * SUBGROUP_LANES + lane;   // the lane's vec4 of C's rows
    let d4 = p.depth / 4u;
    let at = a_rows(wg.z * p.rows, r0, lane, d4);
    // B's rows of the lane's 4 columns (clamped as a quad).
    let b0 = (wg.z * p.cols + 4u * min(col, quads - 1u)) * d4;
    acc = array<vec4<f32>, ROWS>();
    if (WIDE) {
        // Each column's 8 steps in one read: its first 4 steps, then its last 4.
        for (var k = 0u; k < d4 / 2u; k++) {
            let q = read_a_wide(at, k);
            let c0 = wide_b(b0 / 2u + k);
            let c1 = wide_b((b0 + d4) / 2u + k);
            let c2 = wide_b((b0 + 2u * d4) / 2u + k);
            let c3 = wide_b((b0 + 3u * d4) / 2u + k);
            gemm_steps(q[0], column_steps(c0[0], c1[0], c2[0], c3[0]));
            gemm_steps(q[1], column_steps(c0[1], c1[1], c2[1], c3[1]));
        }
    } else {
        for (var k = 0u; k < d4; k++) {
            gemm_steps(read_a(at, k), column_steps(b[b0 + k], b[b0 + d4 + k],
                                                   b[b0 + 2u * d4 + k], b[b0 + 3u * d4 + k]));
        }
    }
    store_c(p.base + wg.z, r0, col);
}

// The lane's 4 columns at 4 steps, from each column's 4 steps (c0 .. c3): step s's vec4 holds
// component s of each.
fn column_steps(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>)
    -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(vec4<f32>(c0.x, c1.x, c2.x, c3.x), vec4<f32>(c0.y, c1.y, c2.y, c3.y),
                               vec4<f32>(c0.z, c1.z, c2.z, c3.z),
                               vec4<f32>(c0.w, c1.w, c2.w, c3.w));
}
