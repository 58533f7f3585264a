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
// multiply-add per term into one accumulator, as conv_fma.wgsl's engine does.
//
// Dispatch: each subgroup (of SUBGROUP_LANES = 8 or 16 consecutive threads, as
// src/gpu/lanes.rs verifies; the host dispatches these kernels only then) takes 16 rows x
// 4 SUBGROUP_LANES columns, each lane 16 rows x 4 columns (one vec4 of C's row per row). A is
// shared through the lanes: per 4 steps, lane l reads the vec4 of A's rows r0 + l % 8 and
// r0 + 8 + l % 8 at those 4 steps (depth is a multiple of 4), and every lane takes its rows'
// values from lanes 0-7 (lanes_broadcast4); B is the lane's own (one vec4 per step, or for
// gemm_lanes_nt the vec4s of its 4 columns at 4 steps): 1.5 vec4 reads per step for 64
// multiply-adds. Rows past `rows` and columns past `cols` (a multiple of 4) read the last row
// or column and are not stored.
//   gemm_lanes, gemm_lanes_planes(_bn): workgroups of 64 threads, a tile of 32 rows x 128
//                  columns; grid (ceil(cols / 128), ceil(rows / 32), batch; 1 for the planes)
//   gemm_lanes_nt: workgroups of one subgroup; grid (ceil(cols / (4 SUBGROUP_LANES)),
//                  ceil(rows / 16), batch). C's matrix z goes to matrix `base + z` of the
//                  output (the host's partial results, one set per chunk of images).
//
// Bindings (group 0): 0 = Params (uniform); 1 = A (read), 2 = B (read), 3 = C (write;
// gemm_lanes, gemm_lanes_nt); gemm_lanes_planes 4 = y (write), 5 = bias [K] (read; any buffer
// when has_bias == 0); gemm_lanes_planes_bn 4 = y, 6-9 = gamma, beta, running mean, running var
// [K], 10 = the residual (read; any buffer but y without RESIDUAL).

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

// Row i of the subgroup's 16 is acc[i]: its 4 columns.
var<private> acc: array<vec4<f32>, 16>;

// Step s (0-3) of the 4 that lo (rows 0-7) and hi (rows 8-15) hold, with bq the lane's 4
// columns of B at that step.
fn gemm_step(lo: vec4<f32>, hi: vec4<f32>, s: u32, bq: vec4<f32>) {
    acc[0] = fma(vec4<f32>(lanes_broadcast4(lo, 0u)[s]), bq, acc[0]);
    acc[1] = fma(vec4<f32>(lanes_broadcast4(lo, 1u)[s]), bq, acc[1]);
    acc[2] = fma(vec4<f32>(lanes_broadcast4(lo, 2u)[s]), bq, acc[2]);
    acc[3] = fma(vec4<f32>(lanes_broadcast4(lo, 3u)[s]), bq, acc[3]);
    acc[4] = fma(vec4<f32>(lanes_broadcast4(lo, 4u)[s]), bq, acc[4]);
    acc[5] = fma(vec4<f32>(lanes_broadcast4(lo, 5u)[s]), bq, acc[5]);
    acc[6] = fma(vec4<f32>(lanes_broadcast4(lo, 6u)[s]), bq, acc[6]);
    acc[7] = fma(vec4<f32>(lanes_broadcast4(lo, 7u)[s]), bq, acc[7]);
    acc[8] = fma(vec4<f32>(lanes_broadcast4(hi, 0u)[s]), bq, acc[8]);
    acc[9] = fma(vec4<f32>(lanes_broadcast4(hi, 1u)[s]), bq, acc[9]);
    acc[10] = fma(vec4<f32>(lanes_broadcast4(hi, 2u)[s]), bq, acc[10]);
    acc[11] = fma(vec4<f32>(lanes_broadcast4(hi, 3u)[s]), bq, acc[11]);
    acc[12] = fma(vec4<f32>(lanes_broadcast4(hi, 4u)[s]), bq, acc[12]);
    acc[13] = fma(vec4<f32>(lanes_broadcast4(hi, 5u)[s]), bq, acc[13]);
    acc[14] = fma(vec4<f32>(lanes_broadcast4(hi, 6u)[s]), bq, acc[14]);
    acc[15] = fma(vec4<f32>(lanes_broadcast4(hi, 7u)[s]), bq, acc[15]);
}

// The lanes' 16 x 4 micro-tiles of C[wg.z] = A[wg.z] B[wg.z] (A shared by every z where
// a_stride is 0), into acc: rows r0 + i, columns 4 col + e (gemm_lanes' layout).
fn multiply_nn(wg: vec3<u32>, li: u32, a_stride: u32) -> vec2<u32> {
    let lane = li % SUBGROUP_LANES;
    let sg = li / SUBGROUP_LANES;
    // Subgroups side by side along the columns: 128 / (4 lanes) of them per 16 rows.
    let across = 32u / SUBGROUP_LANES;
    let r0 = wg.y * 32u + sg / across * 16u;
    let quads = p.cols / 4u;
    let col = wg.x * 32u + sg % across * SUBGROUP_LANES + lane;   // the lane's vec4 of B and C
    let d4 = p.depth / 4u;
    // The lane's rows of A (clamped), as vec4 indices of their first 4 steps.
    let a_lo = (wg.z * a_stride + min(r0 + lane % 8u, p.rows - 1u)) * d4;
    let a_hi = (wg.z * a_stride + min(r0 + 8u + lane % 8u, p.rows - 1u)) * d4;
    var bi = wg.z * p.depth * quads + min(col, quads - 1u);
    acc = array<vec4<f32>, 16>();
    for (var k = 0u; k < d4; k++) {
        let lo = a[a_lo + k];
        let hi = a[a_hi + k];
        gemm_step(lo, hi, 0u, b[bi]);
        gemm_step(lo, hi, 1u, b[bi + quads]);
        gemm_step(lo, hi, 2u, b[bi + 2u * quads]);
        gemm_step(lo, hi, 3u, b[bi + 3u * quads]);
        bi += 4u * quads;
    }
    return vec2<u32>(r0, col);
}

@compute @workgroup_size(64)
fn gemm_lanes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, p.rows);
    let r0 = at.x;
    let col = at.y;
    let quads = p.cols / 4u;
    if (col < quads) {
        let out = (wg.z * p.rows + r0) * quads + col;
        for (var i = 0u; i < 16u; i++) {
            if (r0 + i < p.rows) {
                c[out + i * quads] = acc[i];
            }
        }
    }
}

// q = n / d for n < 2^24 through f32 (a CPU's lanes divide floats as vectors, integers one
// lane at a time): the quotient rounded, then corrected by one either way.
fn divide(n: u32, d: u32) -> u32 {
    var q = u32(f32(n) / f32(d));
    if (q * d > n) { q -= 1u; }
    if ((q + 1u) * d <= n) { q += 1u; }
    return q;
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

@compute @workgroup_size(64)
fn gemm_lanes_planes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, 0u);
    let r0 = at.x;
    for (var e = 0u; e < 4u; e++) {
        let out = plane_at(r0, at.y, e);
        if (out == NONE) { continue; }
        for (var i = 0u; i < 16u; i++) {
            if (r0 + i < p.rows) {
                var v = acc[i][e];
                if (p.has_bias != 0u) { v += bias[r0 + i]; }
                y[out + i * p.plane] = v;
            }
        }
    }
}

// gemm_lanes_planes with inference's batch norm (and residual and ReLU: RESIDUAL, RELU), as
// conv.wgsl's bn_out: batchnorm.wgsl's normalize, then elementwise.wgsl's add and ReLU. A loop
// of its own, not a flag in one shared with gemm_lanes_planes: an entry point that names the
// batch norm's buffers, even in a branch it never takes, needs them bound.
@compute @workgroup_size(64)
fn gemm_lanes_planes_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let at = multiply_nn(wg, li, 0u);
    let r0 = at.x;
    for (var e = 0u; e < 4u; e++) {
        let out = plane_at(r0, at.y, e);
        if (out == NONE) { continue; }
        for (var i = 0u; i < 16u; i++) {
            let r = r0 + i;
            if (r < p.rows) {
                let j = out + i * p.plane;
                let invstd = 1.0 / sqrt(bn_var[r] + p.eps);
                var v = (acc[i][e] - bn_mean[r]) * invstd * bn_gamma[r] + bn_beta[r];
                if (RESIDUAL) { v = v + bn_res[j]; }
                if (RELU) { v = relu_value(v); }
                y[j] = v;
            }
        }
    }
}

@compute @workgroup_size(SUBGROUP_LANES)
fn gemm_lanes_nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let r0 = wg.y * 16u;
    let quads = p.cols / 4u;
    let col = wg.x * SUBGROUP_LANES + lane;   // the lane's vec4 of C's rows
    let d4 = p.depth / 4u;
    let a_lo = (wg.z * p.rows + min(r0 + lane % 8u, p.rows - 1u)) * d4;
    let a_hi = (wg.z * p.rows + min(r0 + 8u + lane % 8u, p.rows - 1u)) * d4;
    // B's rows of the lane's 4 columns (clamped as a quad).
    let b0 = (wg.z * p.cols + 4u * min(col, quads - 1u)) * d4;
    acc = array<vec4<f32>, 16>();
    for (var k = 0u; k < d4; k++) {
        let lo = a[a_lo + k];
        let hi = a[a_hi + k];
        let c0 = b[b0 + k];
        let c1 = b[b0 + d4 + k];
        let c2 = b[b0 + 2u * d4 + k];
        let c3 = b[b0 + 3u * d4 + k];
        gemm_step(lo, hi, 0u, vec4<f32>(c0.x, c1.x, c2.x, c3.x));
        gemm_step(lo, hi, 1u, vec4<f32>(c0.y, c1.y, c2.y, c3.y));
        gemm_step(lo, hi, 2u, vec4<f32>(c0.z, c1.z, c2.z, c3.z));
        gemm_step(lo, hi, 3u, vec4<f32>(c0.w, c1.w, c2.w, c3.w));
    }
    if (col < quads) {
        let out = ((p.base + wg.z) * p.rows + r0) * quads + col;
        for (var i = 0u; i < 16u; i++) {
            if (r0 + i < p.rows) {
                c[out + i * quads] = acc[i];
            }
        }
    }
}
