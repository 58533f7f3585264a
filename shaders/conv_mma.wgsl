// The f16 tensor-core multiply engine of the conv kernels (conv.wgsl), with the interface of
// conv_fma.wgsl (engine_begin, put_a, put_b, multiply, engine_flip, engine_end, engine_live;
// STAGES copies of the staged tiles, as there): the A and B operands are rounded to f16 as
// they are staged, and each subgroup multiplies F x F fragments of them with cooperative matrices
// (`wgpu_cooperative_matrix`: tensor cores on NVIDIA, simdgroup matrices on Apple),
// accumulating in f32. Needs the adapter features SHADER_F16, SUBGROUP and
// EXPERIMENTAL_COOPERATIVE_MATRIX with an F x F x F f16 x f16 + f32 configuration.
//
// The host prepends, besides TM, TN and BK: `enable f16; enable wgpu_cooperative_matrix;`, the
// fragment size F (8 or 16), the adapter's subgroup size SG, the fragments per subgroup FM x FN,
// and the aliases MatA, MatB, MatC for coop_matFxF<f16, A>, <f16, B> and <f32, C>.
//
// Math: C[m, n] = unscale * sum_kk f16(scale_a * A[kk, m]) * f16(scale_b * B[kk, n]), the sum
// over the whole reduction in f32. Operands are clamped to f16's finite range (+-65504) before
// rounding. The scales keep small gradients out of f16's subnormal range: p.scaled says which
// operand (1: A, 2: B, 0: neither) is multiplied by s = mma_scale[0], a power of two the host
// computed from that tensor's largest magnitude (src/ops/conv.rs, `f16_scale`), and the result
// is multiplied by 1 / s, exactly.
//
// Work split: the workgroup's 256 threads form 256 / SG subgroups; subgroup g owns the FM x FN
// fragments of C at rows (g % SGM) * F * FM and columns (g / SGM) * F * FN of the BM x BN tile
// (SGM = BM / (F * FM) subgroups along M; the host picks FM and FN so that the subgroups cover
// the tile exactly). Assumes subgroup g is the invocations [g * SG, (g + 1) * SG), as Vulkan
// drivers lay out one-dimensional workgroups.
//
// Workgroup memory: a_sh holds A as [m][kk] (row stride LDA), b_sh B as [kk][n] (LDB), both f16,
// STAGES copies of each (copy s at s SA and s SB); c_sh receives one row of fragments of C (F
// rows, stride LDC) at a time from coopStoreT, from where engine_end gathers each thread's
// micro-tile into conv.wgsl's `acc` layout, so the epilogues are shared with the f32 engine:
// 18.5 KiB for the 128x128 tile with one copy, 28.75 KiB with two (MmaTile::workgroup_bytes).
// Row strides are multiples of 8 halves (16 bytes), as fragment loads want, and so are the
// copies' sizes. Two copies let a chunk be staged while the one before it is multiplied, with
// one barrier per chunk instead of two (conv.wgsl's loops).
//
// Bindings (group 0): 5 = mma_scale (read; [s]; any f32 buffer when p.scaled == 0). No dispatch
// of its own.

const LDA: u32 = BK + 8u;
const LDB: u32 = BN + 8u;
const LDC: u32 = BN + 4u;
const SGM: u32 = BM / (F * FM);
const F16_MAX: f32 = 65504.0;
const SA: u32 = BM * LDA;           // halves of one copy of a_sh
const SB: u32 = BK * LDB;

var<workgroup> a_sh: array<f16, STAGES * SA>;
var<workgroup> b_sh: array<f16, STAGES * SB>;
var<workgroup> c_sh: array<f32, F * LDC>;

// The copy put_a / put_b write and multiply reads (with STAGES == 2): the second where `upper`.
var<private> upper: bool;

// Where that copy starts in a_sh and b_sh. A select of two constants rather than an offset
// variable flipping between them, so that a compiler knows its range and keeps folding each
// access's constant part into the instruction (RADV, 128x128 forward: 175 ALU instructions per
// chunk against 239 with the variable, 133 with one copy; docs/speed.md).
fn a_at() -> u32 { return select(0u, SA, STAGES == 2u && upper); }
fn b_at() -> u32 { return select(0u, SB, STAGES == 2u && upper); }

@group(0) @binding(5) var<storage, read> mma_scale: array<f32>;

var<private> scale_a: f32;
var<private> scale_b: f32;
var<private> unscale: f32;

// The subgroup's accumulators: fragment (i, j) of its FM x FN block is c{4 i + j}.
var<private> c0: MatC;
var<private> c1: MatC;
var<private> c2: MatC;
var<private> c3: MatC;
var<private> c4: MatC;
var<private> c5: MatC;
var<private> c6: MatC;
var<private> c7: MatC;

fn engine_begin() {
    c0 = MatC();
    c1 = MatC();
    c2 = MatC();
    c3 = MatC();
    c4 = MatC();
    c5 = MatC();
    c6 = MatC();
    c7 = MatC();
    upper = false;
    let s = mma_scale[0];
    scale_a = select(1.0, s, p.scaled == 1u);
    scale_b = select(1.0, s, p.scaled == 2u);
    unscale = select(1.0, 1.0 / s, p.scaled != 0u);
}

fn engine_flip() {
    upper = !upper;
}

// Subgroups multiply together here, and SKIP_IDLE is never set for this engine.
fn engine_live(live: bool) -> bool { return live; }

fn to_f16(v: f32) -> f16 {
    return f16(clamp(v, -F16_MAX, F16_MAX));
}

fn put_a(kk: u32, m: u32, q: u32, e: u32, v: f32) {
    a_sh[a_at() + m * LDA + kk] = to_f16(v * scale_a);
}

fn put_b(kk: u32, n: u32, q: u32, e: u32, v: f32) {
    b_sh[b_at() + kk * LDB + n] = to_f16(v * scale_b);
}

fn multiply(tid: u32) {
    let g = tid / SG;
    let row0 = (g % SGM) * (F * FM);
    let col0 = (g / SGM) * (F * FN);
    let lda = LDA;
    let ldb = LDB;
    for (var kf = 0u; kf < BK; kf += F) {
        let ia0 = a_at() + row0 * LDA + kf;
        let a0 = coopLoadT<MatA>(&a_sh[ia0], lda);
        let ib0 = b_at() + kf * LDB + col0;
        let b0 = coopLoadT<MatB>(&b_sh[ib0], ldb);
        let ib1 = ib0 + F;
        let b1 = coopLoadT<MatB>(&b_sh[ib1], ldb);
        c0 = coopMultiplyAdd(a0, b0, c0);
        c1 = coopMultiplyAdd(a0, b1, c1);
        if (FN == 4u) {
            let ib2 = ib0 + 2u * F;
            let b2 = coopLoadT<MatB>(&b_sh[ib2], ldb);
            let ib3 = ib0 + 3u * F;
            let b3 = coopLoadT<MatB>(&b_sh[ib3], ldb);
            c2 = coopMultiplyAdd(a0, b2, c2);
            c3 = coopMultiplyAdd(a0, b3, c3);
            if (FM == 2u) {
                let ia1 = ia0 + F * LDA;
                let a1 = coopLoadT<MatA>(&a_sh[ia1], lda);
                c4 = coopMultiplyAdd(a1, b0, c4);
                c5 = coopMultiplyAdd(a1, b1, c5);
                c6 = coopMultiplyAdd(a1, b2, c6);
                c7 = coopMultiplyAdd(a1, b3, c7);
            }
        } else if (FM == 2u) {
            let ia1 = ia0 + F * LDA;
            let a1 = coopLoadT<MatA>(&a_sh[ia1], lda);
            c4 = coopMultiplyAdd(a1, b0, c4);
            c5 = coopMultiplyAdd(a1, b1, c5);
        }
    }
}

// Store the subgroup's fragments in tile rows [F h, F h + F) (fragment row h of the tile; the
// subgroup's are row0 / F .. row0 / F + FM - 1) into c_sh.
fn store_chunk(tid: u32, h: u32) {
    let g = tid / SG;
    let row0 = (g % SGM) * (F * FM);
    let col0 = (g / SGM) * (F * FN);
    let i = h - row0 / F;  // wraps past FM below the subgroup's rows
    if (i >= FM) { return; }
    let ldc = LDC;
    let i0 = col0;
    let i1 = i0 + F;
    let i2 = i0 + 2u * F;
    let i3 = i0 + 3u * F;
    if (i == 0u) {
        coopStoreT(c0, &c_sh[i0], ldc);
        coopStoreT(c1, &c_sh[i1], ldc);
        if (FN == 4u) {
            coopStoreT(c2, &c_sh[i2], ldc);
            coopStoreT(c3, &c_sh[i3], ldc);
        }
    } else {
        coopStoreT(c4, &c_sh[i0], ldc);
        coopStoreT(c5, &c_sh[i1], ldc);
        if (FN == 4u) {
            coopStoreT(c6, &c_sh[i2], ldc);
            coopStoreT(c7, &c_sh[i3], ldc);
        }
    }
}

// C[r, 64 v + 4 tx .. + 3] of c_sh's row r (unscaled).
fn c_quad(r: u32, v: u32, tx: u32) -> vec4<f32> {
    let i = r * LDC + 64u * v + 4u * tx;
    return vec4<f32>(c_sh[i], c_sh[i + 1u], c_sh[i + 2u], c_sh[i + 3u]) * unscale;
}

// acc rows i0 .. i0 + 3 from c_sh rows r .. r + 3. Called with constant i0 only: `acc` must
// never be indexed at run time (see conv.wgsl).
fn gather_rows(i0: u32, r: u32, tx: u32) {
    acc[(i0 + 0u) * VN] = c_quad(r, 0u, tx);
    acc[(i0 + 1u) * VN] = c_quad(r + 1u, 0u, tx);
    acc[(i0 + 2u) * VN] = c_quad(r + 2u, 0u, tx);
    acc[(i0 + 3u) * VN] = c_quad(r + 3u, 0u, tx);
    if (VN == 2u) {
        acc[(i0 + 0u) * VN + 1u] = c_quad(r, 1u, tx);
        acc[(i0 + 1u) * VN + 1u] = c_quad(r + 1u, 1u, tx);
        acc[(i0 + 2u) * VN + 1u] = c_quad(r + 2u, 1u, tx);
        acc[(i0 + 3u) * VN + 1u] = c_quad(r + 3u, 1u, tx);
    }
}

// The acc rows of thread tid that fragment row h of the tile (c_sh) holds: acc[0 .. 3] are
// tile rows 4 ty .. 4 ty + 3, acc[4 .. 7] (TM = 8) rows 64 + 4 ty ..; F rows (8 or 16) hold
// all four or none.
fn gather_chunk(tid: u32, h: u32) {
    let tx = tid % 16u;
    let lo = F * h;
    let r0 = 4u * (tid / 16u);
    if (r0 >= lo && r0 < lo + F) {
        gather_rows(0u, r0 - lo, tx);
    }
    if (TM == 8u) {
        let r1 = 64u + r0;
        if (r1 >= lo && r1 < lo + F) {
            gather_rows(4u, r1 - lo, tx);
        }
    }
}

// The tile's C, one row of fragments (F rows) at a time, through c_sh into each thread's `acc`.
fn engine_end(tid: u32) {
    for (var h = 0u; h < BM / F; h++) {
        if (h > 0u) {
            workgroupBarrier();
        }
        store_chunk(tid, h);
        workgroupBarrier();
        gather_chunk(tid, h);
    }
}
