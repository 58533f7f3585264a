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
// Bindings (group 0):
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

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i = i + 1u) { acc[i] = 0.0; }

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
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                av[i] = a_tile[kk * AS_STRIDE + ty + 16u * i];
                bv[i] = b_tile[kk * BS_STRIDE + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + ty + 16u * i;
        if (row >= M) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + tx + 16u * j;
            if (col < N) {
                var v = acc[i * 4u + j];
                if (params.has_bias != 0u) { v = v + bias[col]; }
                c[row * N + col] = v;
            }
        }
    }
}
