// Tiled matrix multiply with transpose flags, optionally adding a bias row.
//
// Math:
//   C[m, n] = sum_k opA[m, k] * opB[k, n]  (+ bias[n] when has_bias = 1)
//   opA = A      (A stored row-major [M, K]) when trans_a = 0,
//         A^T    (A stored row-major [K, M]) when trans_a = 1;
//   opB = B      (B stored row-major [K, N]) when trans_b = 0,
//         B^T    (B stored row-major [N, K]) when trans_b = 1.
//   C is row-major [M, N]. Accumulation in f32 with fma.
//
// Tiling: each workgroup (16 x 16 = 256 threads) computes a BM x BN = 64 x 64 block of C. The K
// dimension is walked in steps of BK = 16: each step stages a 64 x 16 slice of opA and a 16 x 64
// slice of opB in workgroup memory (zero-padded past the matrix edges; loads are coalesced along
// whichever dimension is contiguous in memory), then every thread accumulates a 4 x 4 register
// micro-tile. Thread (tx, ty) owns rows ty + 16 i and columns tx + 16 j (i, j < 4), so reads of the
// staged tiles and the final stores are contiguous across neighbouring threads.
//
// Dispatch grid: x = ceil(N / 64) column tiles; row tiles = ceil(M / 64) split over y and z to
// respect the 65,535 limit (row tile = wg.y + wg.z * num_workgroups.y; surplus groups exit).
//
// matvec, the same product for at most four rows of opA = A and opB = B^T (the linear layer at
// batch 1-4), is described above its entry point.
//
// Bindings (group 0, both entry points):
//   0 = Params (uniform)
//   1 = A     (read)        [M, K] or [K, M]
//   2 = B     (read)        [K, N] or [N, K]
//   3 = bias  (read)        [N]; any buffer (e.g. A) when has_bias = 0, it is then not read
//   4 = C     (read_write)  [M, N]

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    row_tiles: u32,
    _pad: u32,
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// Row stride of the staged tiles, padded by one to spread the transposing stores over banks.
const AS_STRIDE: u32 = 65u;
const BS_STRIDE: u32 = 65u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Staged tiles, indexed [kk * STRIDE + row-or-column].
var<workgroup> a_tile: array<f32, 1040>; // BK * AS_STRIDE
var<workgroup> b_tile: array<f32, 1040>; // BK * BS_STRIDE

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid3: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let row_tile = wg.y + wg.z * nwg.y;
    if (row_tile >= params.row_tiles) { return; }
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let row0 = row_tile * BM;
    let col0 = wg.x * BN;
    let tx = lid3.x;
    let ty = lid3.y;

    // Row i of the thread's micro-tile lives in acc_i (columns tx + 16 j in component j). Four
    // named vectors rather than a loop-indexed array: drivers may demote a private array indexed
    // by loop counters to slow local memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < K; k0 = k0 + BK) {
        // Stage opA[row0 .. row0 + 64, k0 .. k0 + 16]: 1024 values, 4 per thread.
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = lid + r * 256u;
            var mm: u32;
            var kk: u32;
            if (params.trans_a == 0u) { mm = e / BK; kk = e % BK; } else { mm = e % BM; kk = e / BM; }
            let gm = row0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < M && gk < K) {
                if (params.trans_a == 0u) { v = a[gm * K + gk]; } else { v = a[gk * M + gm]; }
            }
            a_tile[kk * AS_STRIDE + mm] = v;
        }
        // Stage opB[k0 .. k0 + 16, col0 .. col0 + 64].
        for (var r = 0u; r < 4u; r = r + 1u) {
            let e = lid + r * 256u;
            var nn: u32;
            var kk: u32;
            if (params.trans_b == 0u) { nn = e % BN; kk = e / BN; } else { nn = e / BK; kk = e % BK; }
            let gn = col0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < N && gk < K) {
                if (params.trans_b == 0u) { v = b[gk * N + gn]; } else { v = b[gn * K + gk]; }
            }
            b_tile[kk * BS_STRIDE + nn] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let ar = kk * AS_STRIDE + ty;
            let br = kk * BS_STRIDE + tx;
            let bv = vec4<f32>(b_tile[br], b_tile[br + 16u], b_tile[br + 32u], b_tile[br + 48u]);
            acc0 = fma(vec4<f32>(a_tile[ar]), bv, acc0);
            acc1 = fma(vec4<f32>(a_tile[ar + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(a_tile[ar + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(a_tile[ar + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }

    store_row(row0 + ty, col0 + tx, acc0);
    store_row(row0 + ty + 16u, col0 + tx, acc1);
    store_row(row0 + ty + 32u, col0 + tx, acc2);
    store_row(row0 + ty + 48u, col0 + tx, acc3);
}

// Store C[row, col + 16 j] = v[j] (+ bias) for the columns inside the matrix.
fn store_row(row: u32, col: u32, v: vec4<f32>) {
    if (row >= params.m) { return; }
    store(row, col, v.x);
    store(row, col + 16u, v.y);
    store(row, col + 32u, v.z);
    store(row, col + 48u, v.w);
}

fn store(row: u32, col: u32, v: f32) {
    if (col >= params.n) { return; }
    var out = v;
    if (params.has_bias != 0u) { out += bias[col]; }
    c[row * params.n + col] = out;
}

// ---- matvec: C = A B^T for M <= 4 (trans_a = 0, trans_b = 1) ----
// The linear layer at batch 1-4. The tiled kernel above runs ceil(N / 64) workgroups there, each
// walking all of K with at most 4 of its 64 rows in use: ResNet-50's 1 x 2048 x 1000 classifier
// took 0.94 ms of an H200 (16 workgroups, 128 steps of two barriers each). Here each workgroup
// computes MV_COLS = 8 columns of C for all M rows. The 32 threads of column n (lane = lid % 32)
// sum k = lane, lane + 32, ... of A[m, k] * B[n, k] with fma in that order, row m in component m
// of a vec4; each step reads 32 consecutive floats of B's row n (contiguous, B is [N, K]), and
// A's few rows come from cache. The 32 partial sums of a column then add up pairwise (butterfly.wgsl:
// lanes 0 + 1, 2 + 3, ..., then 0-1 + 2-3, ...), and lane 0 stores C[m, n] (+ bias[n]).
//
// Dispatch grid: ceil(N / 8) workgroups with linear index wg.x + wg.y * num_workgroups.x (y
// used beyond 65,535); threads of columns past N only join the barriers.
const MV_COLS: u32 = 8u;
const MV_LANES: u32 = 32u;

// The reducing workgroup size for butterfly.wgsl (matvec: segments of MV_LANES threads).
const REDUCE_WG: u32 = 256u;

@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let n = (wg.x + wg.y * nwg.x) * MV_COLS + lid / MV_LANES;
    let lane = lid % MV_LANES;
    var acc = vec4<f32>(0.0);
    if (n < N) {
        let row = n * K;
        for (var k = lane; k < K; k += MV_LANES) {
            let w = b[row + k];
            acc.x = fma(a[k], w, acc.x);
            if (M > 1u) { acc.y = fma(a[K + k], w, acc.y); }
            if (M > 2u) { acc.z = fma(a[2u * K + k], w, acc.z); }
            if (M > 3u) { acc.w = fma(a[3u * K + k], w, acc.w); }
        }
    }
    let v = group_sum4(lid, acc, MV_LANES);
    if (lane != 0u || n >= N) { return; }
    var bv = 0.0;
    if (params.has_bias != 0u) { bv = bias[n]; }
    c[n] = v.x + bv;
    if (M > 1u) { c[N + n] = v.y + bv; }
    if (M > 2u) { c[2u * N + n] = v.z + bv; }
    if (M > 3u) { c[3u * N + n] = v.w + bv; }
}
