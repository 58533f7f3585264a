// The f32 multiply engine of the conv kernels (conv.wgsl): exact f32 fused multiply-adds into
// each thread's register micro-tile. The host compiles conv.wgsl as: the tile constants (TM, TN,
// BK, TX), then this file, then conv.wgsl; conv_mma.wgsl is the f16 tensor-core alternative
// with the same interface:
//   engine_begin()       zero the accumulators (at a kernel's start)
//   put_a(kk, m, q, e, v) stage A[kk, m] of a chunk in workgroup memory; q and e are m's quad
//                        and lane (m = 4 q + e), for an engine that stores into vec4s
//   put_b(kk, n, q, e, v) stage B[kk, n] (n = 4 q + e)
//   multiply(tid)        accumulate the staged BK-deep chunk (between the body's barriers)
//   engine_flip()        with STAGES == 2: make the other copy of the tiles the one that put_a
//                        and put_b write and the next multiply reads (see conv.wgsl's loops)
//   engine_end(tid)      leave thread tid's micro-tile of C in `acc` (conv.wgsl's layout)
//   engine_live(live)    whether the thread multiplies, given whether its micro-tile holds an
//                        output (conv.wgsl's thread_live): all of a subgroup or none where its
//                        lanes share A (below)
//
// Math: acc[i * VN + v][e] += A[kk, tile_row(i, ty)] * B[kk, 4 TX v + 4 tx + e] for every kk of
// the chunk, with (tx, ty) = (tid % TX, tid / TX). No bindings of its own; no dispatch of its own.
//
// Shared A (SHARED_A in the tile's declarations, for CPU adapters): the TX threads of a row of
// threads read the same VM quads of A, and on a CPU adapter each read of workgroup memory is a
// loop over the SIMD lanes (docs/speed.md, "What bounds the GEMMs on lavapipe"). Where the
// host has verified that every subgroup is a run of consecutive threads within one thread row
// (TX a multiple of the subgroup size) and compiled a lanes file with subgroups
// (lanes_subgroup.wgsl: SUBGROUP_LANES > 1), the lanes of each subgroup read the VM quads of A
// of KG consecutive reduction steps at once (KG = steps_per_read(): lane l reads step l / VM,
// quad l % VM; with 8 lanes 2 steps of 16 x 4 micro-tiles, 4 of 8 x 4 and 4 x 4), and every lane
// takes the quads it multiplies through lanes_broadcast4: one read of A per KG steps instead of
// VM per step. The same multiply-adds in the same order: the same bits. The tiles declared with
// SHARED_A have tall micro-tiles (16 x 4, 8 x 4) where they are larger than 64 x 64 and 32 x
// 128, which keep 4 x 4: per step, 1 / KG read of A beside the one of B.
//
// Workgroup memory: STAGES (1 or 2, from the host's tile declarations) copies of a BK x BM tile
// of A and a BK x BN tile of B, rows padded by one vec4: 16 STAGES BK (BM / 4 + BN / 4 + 2)
// bytes (ConvTile::workgroup_bytes). Two copies let a chunk be staged while the one before it
// is multiplied, with one barrier per chunk instead of two.

const RA: u32 = BM / 4u + 1u;       // row stride of a_tile in vec4s (one vec4 of padding)
const RB: u32 = BN / 4u + 1u;

const SA: u32 = BK * RA;            // vec4s of one copy of a_tile
const SB: u32 = BK * RB;

// A[kk, m] of copy s at [s * SA + kk * RA + m / 4][m % 4],
// B[kk, n] at [s * SB + kk * RB + n / 4][n % 4].
var<workgroup> a_tile: array<vec4<f32>, STAGES * SA>;
var<workgroup> b_tile: array<vec4<f32>, STAGES * SB>;

// The copy put_a / put_b write and multiply reads: 0 or 1 times SA (a_at) and SB (b_at).
var<private> a_at: u32;
var<private> b_at: u32;

fn put_a(kk: u32, m: u32, q: u32, e: u32, v: f32) { a_tile[a_at + kk * RA + q][e] = v; }
fn put_b(kk: u32, n: u32, q: u32, e: u32, v: f32) { b_tile[b_at + kk * RB + q][e] = v; }

fn engine_flip() {
    if (STAGES == 2u) {
        a_at = SA - a_at;
        b_at = SB - b_at;
    }
}

// Whether this thread's subgroup shares its reads of A (see the header): declared so, with
// subgroups (SUBGROUP_LANES > 1) of enough lanes to read the VM quads.
fn shares_a() -> bool {
    return SHARED_A && SUBGROUP_LANES > 1u && SUBGROUP_LANES >= VM;
}

// Reduction steps whose A one read of workgroup memory brings: with A shared, the first lanes
// of a subgroup read the VM quads of KG consecutive steps at once (lane l: step l / VM, quad
// l % VM; 8 lanes: 2 steps of 16 x 4 micro-tiles, 4 of 8 x 4 and 4 x 4), at most 4 steps (BK,
// 8 or 16, is a multiple) and BROADCAST_LANES lanes (those lanes_broadcast4 has cases for),
// also where subgroups are wider (16 lanes: Mesa's lavapipe with 512-bit vectors). Else 1.
// Lane counts and VM are powers of two, so KG is 1, 2 or 4 (multiply's calls).
fn steps_per_read() -> u32 {
    if (shares_a()) { return min(min(SUBGROUP_LANES, BROADCAST_LANES) / VM, 4u); }
    return 1u;
}

// Quad u of the thread's rows of A at reduction step g of a read (a_tile index `at` of step g's
// quad 0 + u times the stride between its quads: TY, or 1 for SHARED_A's contiguous rows),
// given `own`, what this thread read (its quad 0 of step 0, or with A shared its lane's quad).
fn a_quad(own: vec4<f32>, at: u32, g: u32, u: u32) -> vec4<f32> {
    if (shares_a()) { return lanes_broadcast4(own, g * VM + u); }
    if (u == 0u) { return own; }
    return a_tile[at + u * select(TY, 1u, SHARED_A)];
}

fn engine_live(live: bool) -> bool {
    if (shares_a()) { return lanes_any(live); }
    return live;
}

// Accumulate the staged chunk into the micro-tile: TM * TN fused multiply-adds per kk from
// VM + VN vec4 reads of workgroup memory (VN + 1 / steps_per_read() with A shared). TM * VN is
// at most 16 (acc): 16 x 4, 8 x 8, 8 x 4, 4 x 8 or 4 x 4.
fn multiply(tid: u32) {
    // The thread's first quad of A (conv.wgsl's tile_row), or with A shared its lane's (its
    // step's and quad's).
    let kg = steps_per_read();
    var ta = a_at + tid / TX * select(1u, VM, SHARED_A);
    if (shares_a()) { ta += tid % (kg * VM) / VM * RA + tid % VM; }
    let tb = b_at + tid % TX;
    for (var k0 = 0u; k0 < BK; k0 += kg) {
        let own = a_tile[k0 * RA + ta];
        multiply_step(k0, own, ta, tb, 0u);
        if (kg > 1u) {
            multiply_step(k0 + 1u, own, ta, tb, 1u);
        }
        if (kg > 2u) {
            multiply_step(k0 + 2u, own, ta, tb, 2u);
            multiply_step(k0 + 3u, own, ta, tb, 3u);
        }
    }
}

// Reduction step kk of the chunk, step g of the read that brought `own` (multiply).
fn multiply_step(kk: u32, own: vec4<f32>, ta: u32, tb: u32, g: u32) {
    let at = kk * RA + ta;
    let a0 = a_quad(own, at, g, 0u);
    let b0 = b_tile[kk * RB + tb];
    acc[0u * VN] = fma(vec4<f32>(a0.x), b0, acc[0u * VN]);
    acc[1u * VN] = fma(vec4<f32>(a0.y), b0, acc[1u * VN]);
    acc[2u * VN] = fma(vec4<f32>(a0.z), b0, acc[2u * VN]);
    acc[3u * VN] = fma(vec4<f32>(a0.w), b0, acc[3u * VN]);
    if (VN == 2u) {
        let b1 = b_tile[kk * RB + tb + TX];
        acc[0u * VN + 1u] = fma(vec4<f32>(a0.x), b1, acc[0u * VN + 1u]);
        acc[1u * VN + 1u] = fma(vec4<f32>(a0.y), b1, acc[1u * VN + 1u]);
        acc[2u * VN + 1u] = fma(vec4<f32>(a0.z), b1, acc[2u * VN + 1u]);
        acc[3u * VN + 1u] = fma(vec4<f32>(a0.w), b1, acc[3u * VN + 1u]);
        if (VM == 2u) {
            let a1 = a_quad(own, at, g, 1u);
            acc[4u * VN + 1u] = fma(vec4<f32>(a1.x), b1, acc[4u * VN + 1u]);
            acc[5u * VN + 1u] = fma(vec4<f32>(a1.y), b1, acc[5u * VN + 1u]);
            acc[6u * VN + 1u] = fma(vec4<f32>(a1.z), b1, acc[6u * VN + 1u]);
            acc[7u * VN + 1u] = fma(vec4<f32>(a1.w), b1, acc[7u * VN + 1u]);
        }
    }
    if (VM >= 2u) {
        let a1 = a_quad(own, at, g, 1u);
        acc[4u * VN] = fma(vec4<f32>(a1.x), b0, acc[4u * VN]);
        acc[5u * VN] = fma(vec4<f32>(a1.y), b0, acc[5u * VN]);
        acc[6u * VN] = fma(vec4<f32>(a1.z), b0, acc[6u * VN]);
        acc[7u * VN] = fma(vec4<f32>(a1.w), b0, acc[7u * VN]);
    }
    if (VM == 4u) {
        let a2 = a_quad(own, at, g, 2u);
        acc[8] = fma(vec4<f32>(a2.x), b0, acc[8]);
        acc[9] = fma(vec4<f32>(a2.y), b0, acc[9]);
        acc[10] = fma(vec4<f32>(a2.z), b0, acc[10]);
        acc[11] = fma(vec4<f32>(a2.w), b0, acc[11]);
        let a3 = a_quad(own, at, g, 3u);
        acc[12] = fma(vec4<f32>(a3.x), b0, acc[12]);
        acc[13] = fma(vec4<f32>(a3.y), b0, acc[13]);
        acc[14] = fma(vec4<f32>(a3.z), b0, acc[14]);
        acc[15] = fma(vec4<f32>(a3.w), b0, acc[15]);
    }
}

fn engine_begin() {
    acc = array<vec4<f32>, 16>();
    a_at = 0u;
    b_at = 0u;
}

// The micro-tile is already in `acc`.
fn engine_end(tid: u32) {}
