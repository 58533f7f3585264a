// 2-D convolution (NCHW, weights [K, C, R, S]) as a tiled implicit GEMM.
//
// Math (stride st, padding pd, zero outside the input):
//   conv_forward:         y[n,k,oh,ow]  = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n,c,oh*st-pd+r, ow*st-pd+s]
//                         GEMM: M = K, N = batch*OH*OW, reduction = C*R*S
//   conv_backward_input:  gx[n,c,h,w]   = sum_{k,r,s} w[k,c,r,s] * gy[n,k,(h+pd-r)/st,(w+pd-s)/st]
//                         (only where the divisions are exact and land inside gy)
//                         Sub-pixel decomposition: one dispatch per phase (a, b) in [0, st)^2
//                         covers the pixels h = h0 + st*i (i < hc) with (h + pd) % st == a, which
//                         only taps r = r0 + st*t (t < nr, r0 = a) reach exactly (likewise w, s);
//                         so no reduction entry is a structural zero. Phases that no tap
//                         reaches (kernel smaller than the stride) only hold zeros: the host
//                         clears gx and skips them.
//                         GEMM per phase: M = C, N = batch*hc*wc, reduction = K*nr*ns
//                         Merged (override MERGED, taps outer only): the st*st phases in one
//                         dispatch, grid x = column tile * st*st + phase with phase = a*st + b,
//                         each workgroup computing its phase's taps and pixels from (a, b) as
//                         the host does; the phases' GEMMs then share the device instead of
//                         running one after another, and neighbouring workgroups (which a
//                         device starts together, or a CPU driver hands one thread) mix heavy
//                         and light phases.
//                         When a phase's output tiles alone would leave the GPU idle (small
//                         batches, late layers), its reduction is split like the forward's: split
//                         z writes the phase's pixels of a partial gx at z * len(gx), every phase
//                         with the same number of splits, and conv_reduce_splits sums them.
//                         With ACCUMULATE (override), gx += the result instead (the gradient
//                         the input has so far from its other consumers, summed here rather
//                         than in a pass of its own); split, conv_reduce_splits adds instead
//                         (EPI_ACCUMULATE in p.epilogue). Either adds in the order of
//                         elementwise.wgsl's axpy (gx + 1 * result), so the same bits.
//   conv_backward_weight: part[z,k,j]   = sum_{i in chunk z} gy[i -> (n,oh,ow), k] * x[n,c,oh*st-pd+r, ow*st-pd+s]
//                         with j = (c*R + r)*S + s, i = (n*OH + oh)*OW + ow
//                         GEMM: M = K, N = C*R*S, reduction = batch*OH*OW split into `splits` chunks
//                         of `chunk` (a multiple of BK) along grid z (split-K; no float atomics)
//                         Batched (p.batched = B > 1): B GEMMs alike, x and gy of GEMM b at b
//                         times their lengths, split s of GEMM b at grid z = s B + b writing
//                         partial p.z_base + z: Winograd's 16 (winograd.wgsl), each a 1x1
//                         convolution's weight gradient over one image of 1 x tiles pixels.
//                         Block-diagonal (BLOCK_M, BLOCK_N > 0: Winograd's packed positions,
//                         src/ops/conv/winograd.rs, 1x1): only the diagonal blocks of BLOCK_M
//                         rows by BLOCK_N columns are wanted, and the epilogue stores those
//                         alone, block b's rows at k BLOCK_N of a partial of K x BLOCK_N; a
//                         thread none of whose micro-tile lies in one skips the multiplies with
//                         SKIP_IDLE (thread_live).
//   conv_forward (cont.): When the output tiles alone would leave the GPU idle (small batches),
//                         the reduction is split like the weight gradient's: split z writes its
//                         partial y at z * len(y), and conv_forward_reduce adds them and the bias.
//                         Batched (p.batched = B > 1, no split, no bias): grid z runs B GEMMs
//                         alike, GEMM z reading x at z * len(x) and w at z * len(w) and writing
//                         y at z * len(y): Winograd's 16, each the 1x1 convolution of one image
//                         of 1 x tiles pixels.
//   conv_reduce_splits:   out[j] = sum_{z < splits} part[z * len + j], len = p.reduce_len: gw from
//                         the weight gradient's partials (len = K*C*R*S) or gx from the input
//                         gradient's (len = batch*C*H*W; out[j] += the sum with
//                         EPI_ACCUMULATE); conv_reduce_splits4 the same on vec4s where len is
//                         a multiple of 4
//   conv_forward_reduce:  y[j]  = b[k(j)] + sum_{z < splits} part[z * len(y) + j]
//   conv_taps_crop, conv_taps_expand: the weights cut to the taps that reach the input, and the
//                         weight gradient expanded back (see "tap windows" at the end).
//   conv_forward_bn:      inference's conv + eval-mode batch norm (+ residual) (+ ReLU) in one pass:
//                         y[n,k,oh,ow] = relu?((v - mean[k]) / sqrt(var[k] + eps) * gamma[k] + beta[k]
//                                              (+ res[n,k,oh,ow])) with v the bias-free conv output;
//                         conv_forward_reduce_bn applies the same to the sum of split partials.
//                         The operations and their order are those of the separate kernels
//                         (batchnorm.wgsl normalize, elementwise.wgsl add / add_relu).
//
// Tiling (all GEMM entry points): a workgroup of 256 threads (TX columns x TY = 256 / TX rows)
// computes a BM x BN output tile, looping over the reduction in BK-deep chunks. The tile is a
// compile-time variant: the host prepends `const TM`, `const TN` (the per-thread micro-tile,
// multiples of 4), `const BK`, `const PLAN_BK` (the chunk depth the host plans split-K in: BK,
// or twice BK for the shallow kernels below) and `const TX` to this file (src/ops/conv.rs,
// `ConvTile`), giving
// BM = TY TM and BN = TX TN: with 16 x 16 threads 64x64 (4x4, BK 16), 128x64, 64x128 (BK 16) and
// 128x128 (8x8, BK 8); with 32 x 8 threads 32x128 (4x4, BK 16), for GEMMs of 32 rows or fewer
// (narrow layers), which the 64-row tiles would half waste; and for CPU adapters, where a tile's
// rate follows its multiply-adds per value read from workgroup memory, 32x256 (64 x 4 threads, 8x4,
// BK 8) for the same GEMMs and 64x256 (32 x 8 threads, 8x8, BK 8) for those of 64 rows. CPU
// adapters whose subgroups can share reads of A (const SHARED_A, conv_fma.wgsl) lay the same
// tiles out with tall micro-tiles: 16x4 for 128x128 (32 x 8 threads) and 64x256 (64 x 4), 8x4
// for 128x64, 64x128 (32 x 8) and 32x256. Between those constants and this file comes the
// multiply engine: conv_fma.wgsl (exact f32 fused multiply-adds, each thread its micro-tile)
// or conv_mma.wgsl (operands rounded to f16, cooperative-matrix multiplies by subgroups, f32
// accumulation; 64x64 with BK 32, 128x64 and 128x128 with BK 16), which stage the chunks
// (put_a, put_b), multiply them, and leave each thread's micro-tile in `acc` for the epilogues
// here. Each chunk stages a [BK, BM] slice of the A
// operand and a [BK, BN] slice of B in workgroup memory (rows padded by one vec4 against bank
// conflicts), loaded from global memory one chunk ahead into registers so that the loads of chunk
// t+1 overlap the arithmetic on chunk t. The tile declarations' STAGES says how many copies of the
// staged chunk the engine keeps (the host's ConvStaging, one setting per engine: 2 only where the
// device's workgroup memory holds them; the f16 engine keeps one unless asked for two). With one,
// each chunk is stored, a barrier, multiplied, a barrier (before the next store overwrites it).
// ConvStaging::Shallow stages one copy of chunks half as deep (BK 8, 4 for 128x128 and 64x256;
// 32x256 keeps its 8, of one A value per thread; f32 engine only), with splits planned in the usual
// depth (PLAN_BK), so that it sums in the same order: a quarter of the workgroup memory of two
// copies, for browsers' CPU adapters, where zero-filling workgroup memory costs per element. With
// two (the *_store functions, then engine_flip between copies), chunk t+1 is stored into the other
// copy right after chunk t's multiply, and one barrier per chunk separates the two.
// Thread (tx, ty) = (tid % TX, tid / TX) owns rows 4 TY u + 4 ty + e (u < TM / 4, e < 4) and
// columns 4 TX v + 4 tx + e (v < TN / 4) of the tile, so its workgroup-memory reads are whole vec4s
// and a warp's reads of B are consecutive; with SHARED_A (CPU adapters) rows TM ty + i
// (i < TM) instead, contiguous, so that a thread row of 16 x 4 micro-tiles lies within one
// 32-row block of a packed Winograd weight gradient and its subgroups skip the other blocks
// whole (thread_live). tile_row gives either. Out-of-range rows, columns and reduction
// indices load zeros and store nothing, so any shape works.
//
// Geometry the loaders divide by is pipeline-overridable (KH, KW: the kernel size; NR, NS: the
// input gradient's taps per phase), so those divisions compile to multiplies; the remaining
// run-time divisions happen once per thread (its fixed pixel column) or once per chunk.
//
// Reduction order (override TAPS_OUTER; the host's ConvOrder). Channel-major reduces over
// j = (c R + r) S + s, as the weights [K, C, R, S] lie: every staged element of the im2col
// operand decomposes its own j (divisions by the kernel size, four bounds checks). Taps outer
// reduces over j = (r S + s) C + c: where the reduced channels (C in the forward, K in the input
// gradient) are a multiple of BK, each chunk lies in one tap, so a thread checks its pixel's
// bounds once per chunk and steps through its elements one channel plane apart (the tap and
// first channel advance chunk by chunk, taps_begin / taps_next). The forward and the input
// gradient then read A from a [K, R, S, C] copy of the weights (conv_weights_rsc), whose loads
// stay consecutive: k-fast over c in the forward, m-fast over c (store_a_mfast) in the input
// gradient. The weight gradient's GEMM columns become (tap, c), with C a multiple of BN so that a
// tile lies in one tap; its epilogue writes gw in [K, C, R, S] either way. The products summed
// are the same in both orders; only the order of the f32 additions differs.
//
// Dispatch:
//   conv_forward, conv_forward_bn / conv_backward_input (per phase): x*z = ceil(N / BN) column tiles (tile = wg.x + wg.z *
//     num_workgroups.x, split over z to respect 65,535 per dimension; surplus groups exit),
//     y = ceil(M / BM) row tiles. conv_forward and conv_backward_input with splits > 1:
//     x = column tiles, z = splits; conv_forward batched: x = column tiles, z = the GEMM.
//     conv_backward_input merged: x = the largest phase's column tiles times the phases,
//     interleaved (a smaller phase's surplus groups exit), z = splits.
//   conv_backward_weight: x = ceil(C*R*S / BN), y = ceil(K / BM), z = splits (batched: splits
//     times the GEMMs).
//   conv_reduce_splits / conv_forward_reduce / conv_forward_reduce_bn / conv_weights_rsc: one
//     thread per element written (gw, gx / y) or read (the weights), 256 per workgroup, linear
//     index (wg.x + wg.y * num_workgroups.x) * 256 + local index; conv_reduce_splits4 one
//     thread per four elements written. conv_taps_crop /
//     conv_taps_expand: the same with one thread per row (k, c) of the weights.
//
// Bindings (group 0): 0 = Params (uniform), then per entry point:
//   conv_forward:         1 = x [N,C,H,W] (read), 2 = w [K,C,R,S] (read; [K,R,S,C] taps
//                         outer), 3 = b [K] (read; any buffer when has_bias == 0),
//                         4 = y [N,K,OH,OW] (write, bound as vec4s; with split-K the partial
//                         results [splits,N,K,OH,OW], has_bias == 0)
//   conv_backward_input:  1 = gy [N,K,OH,OW] (read), 2 = w [K,C,R,S] (read; [K,R,S,C] taps
//                         outer), 3 = gx [N,C,H,W]
//                         (write; with split-K the partial results [splits,N,C,H,W])
//   conv_backward_weight: 1 = x [N,C,H,W] (read), 2 = gy [N,K,OH,OW] (read),
//                         3 = part [splits,K,C*R*S] (write; gw itself when splits == 1)
//   conv_reduce_splits(4): 1 = part [splits,len] (read), 2 = gw [K,C,R,S] or gx [N,C,H,W] (write)
//   conv_taps_crop / conv_taps_expand: 1 = the weights (or the window's weight gradient) (read),
//                         2 = the window's weights (or the whole weight gradient) (write)
//   conv_weights_rsc:     1 = w [K,C,R,S] (read), 2 = the copy [K,R,S,C] (write)
//   conv_forward_reduce:  1 = part [splits,N,K,OH,OW] (read), 2 = b [K] (read; any buffer when
//                         has_bias == 0), 3 = y [N,K,OH,OW] (write)
//   conv_forward_bn:      1 = x, 2 = w, 4 = y as conv_forward (no bias, no split), 6 = gamma [K],
//                         7 = beta [K], 8 = running mean [K], 9 = running var [K] (all read),
//                         10 = res [N,K,OH,OW] (read; any buffer but y without RESIDUAL):
//                         8 storage buffers (9 with conv_mma.wgsl), WebGPU's default limit
//   conv_forward_reduce_bn: 1 = part (read), 4 = y (write), 6-10 as conv_forward_bn
//   With conv_mma.wgsl, the three GEMM entry points also bind 5 = the f16 operand scale (see
//   there; p.scaled selects the operand).
// All indices are u32; the host checks that every tensor and GEMM extent fits.

// A sub-pixel phase of the input gradient: first tap (r0, s0) and tap counts (nr, ns); first
// pixel (h0, w0) and pixel counts (hc, wc), both stepping by the stride.
struct Phase {
    r0: u32,
    s0: u32,
    nr: u32,
    ns: u32,
    h0: u32,
    w0: u32,
    hc: u32,
    wc: u32,
}

struct Params {
    // conv_backward_input's phase (unless MERGED); conv_taps_crop's and conv_taps_expand's
    // window (its first tap and size in r0, s0, nr, ns). First: a struct member of a uniform
    // starts at a multiple of 16 bytes.
    phase: Phase,
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    chunk: u32,   // split-K (weight gradient, small forward): reduction per split (multiple of BK)
    splits: u32,  // number of partial results (1: no split)
    scaled: u32,  // the f16 engine's scaled operand (conv_mma.wgsl); unused by the f32 engine
    epilogue: u32,  // conv_reduce_splits(4): EPI_ACCUMULATE
    eps: f32,       // conv_forward_bn, conv_forward_reduce_bn: the batch norm's epsilon
    // Split-K of the two backward passes: the length of one partial result (gw's, or gx's for
    // the input gradient), which conv_reduce_splits sums.
    reduce_len: u32,
    // GEMMs batched over grid z (Winograd's 16, winograd.wgsl; 0 or 1: none). conv_forward:
    // each with its own x, w and y at z times their lengths (no split, no bias);
    // conv_backward_weight: z = split * batched + GEMM, x and gy at the GEMM's offsets.
    batched: u32,
    // conv_backward_weight: the first partial result this dispatch writes (part index z_base
    // + z; Winograd's chunks of images write side by side).
    z_base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Kernel size and the input gradient's taps per phase (equal to p.kh, p.kw, p.phase.nr,
// p.phase.ns). The host dispatches no phase that no tap reaches (nr * ns = 0, a kernel smaller
// than the stride): it clears gx for those pixels instead.
override KH: u32 = 3u;
override KW: u32 = 3u;
override NR: u32 = 3u;
override NS: u32 = 3u;

// The input gradient's phases in one dispatch (see the header; needs TAPS_OUTER): each
// workgroup's phase comes from grid x, and its tap counts replace NR and NS. false: one phase
// per dispatch, given in Params.
override MERGED: bool = false;

// The reduction's order (see "Reduction order" in the header). false: channel-major, as the
// weights [K, C, R, S] lie; any shape. true: taps outer, channels inner, where the host has
// checked that every chunk lies in one tap (the reduced channels are a multiple of BK; for the
// weight gradient, C a multiple of BN).
override TAPS_OUTER: bool = false;

// The input gradient adds to what gx holds (the gradient so far; never with a split, whose
// reduction adds instead, EPI_ACCUMULATE): a constant, so that the other GEMMs' epilogues keep
// their plain stores (a uniform flag cost RADV two scalar loads, a branch and a second store
// sequence per element stored).
override ACCUMULATE: bool = false;

// conv_forward_bn's and conv_forward_reduce_bn's epilogue: add the residual (binding 10), then
// the ReLU. Constants for the same reason (RADV, 128x64 tile: 2,416 instructions and 85
// branches with them as flags).
override RESIDUAL: bool = false;
override RELU: bool = false;

// The GEMMs' threads that store nothing skip their multiplies (thread_live). Set by the host
// for the f32 engine (conv_fma.wgsl, whose threads multiply their own micro-tiles; the f16
// engine's subgroups multiply together) on a CPU adapter's plan, where 4 to 8 consecutive
// threads share each SIMD instruction, so that whole SIMD groups skip. Not on a GPU's, whose
// warps of 32 rarely skip whole: there the chunk loops keep no branch, since RADV sank the next
// chunk's loads past one, after the multiply they should overlap.
override SKIP_IDLE: bool = false;

// conv_backward_weight of a block-diagonal GEMM (see the header): the wanted blocks' rows and
// columns, 0 for a whole GEMM.
override BLOCK_M: u32 = 0u;
override BLOCK_N: u32 = 0u;

const TY: u32 = 256u / TX;          // thread rows (TX thread columns)
const BM: u32 = TY * TM;
const BN: u32 = TX * TN;
const VM: u32 = TM / 4u;            // vec4 row groups per thread (1, 2 or 4)
const VN: u32 = TN / 4u;            // vec4 column groups per thread (1 or 2)
const LA: u32 = BM * BK / 256u;     // A elements each thread stages per chunk (1, 2, 4 or 8)
const LB: u32 = BN * BK / 256u;     // B elements each thread stages per chunk (2, 4 or 8)

// Private arrays are only ever indexed by constants, never by loop counters: drivers keep such
// arrays in registers, while one run-time index can demote a whole array to slow local memory.
// Hence the spelled-out sequences below; branches on TM, VN, LA, LB are compile-time constant.
// acc[i * VN + v] holds C[tile_row(i, ty), 4 TX v + 4 tx .. 4 TX v + 4 tx + 3] (16 = the largest
// TM * VN).
var<private> acc: array<vec4<f32>, 16>;
var<private> ra: array<Staged, 8>;  // A values of the next chunk (LA used)
var<private> rb: array<Staged, 8>;  // B values of the next chunk (LB used)

// One loaded element of the next chunk: its value, and whether that is what the chunk holds
// there (false: the element lies in the padding or past the reduction's end, and the chunk
// holds a zero). Every loader loads unconditionally, from a safe index (0, or a clamped row)
// where the element is out of range, and the store (`staged`) makes it a zero after the
// multiply: a branch around each load made RADV wait for every load before the next (an
// `s_waitcnt vmcnt(0)` per element, the loads of a chunk one after another), and a select right
// after the load would wait for it before the multiply; this way a chunk's loads are in flight
// together and overlap the multiply of the chunk before. The loaders join their conditions
// with `&`, not `&&`: short-circuit joins become branches, over which SwiftShader's compiler
// (Chromium's WebGPU without a GPU) took minutes. Rows of A past the GEMM's rows (and columns
// past its columns) are never stored by the epilogues, so they load any element.
struct Staged {
    v: f32,
    ok: bool,
}

fn staged(e: Staged) -> f32 {
    return select(0.0, e.v, e.ok);
}

// Tile row of micro-tile row `i` of thread row `t` (see the header: contiguous with SHARED_A).
fn tile_row(i: u32, t: u32) -> u32 {
    if (SHARED_A) { return TM * t + i; }
    return 4u * TY * (i / 4u) + 4u * t + i % 4u;
}

// Staging layouts. A "k-fast" operand is loaded with kk = tid % BK and row/column
// tid / BK + (256 / BK) i (consecutive threads read consecutive reduction indices); an
// "n-fast" one with column tid % BN and kk = tid / BN + (256 / BN) i. put_a and put_b also take
// the row (column) as its quad and lane, m = 4 q + e, for the f32 engine's vec4 tiles: a
// thread's k-fast rows share the lane and step the quad by a constant, so that each store's
// address is one base plus a constant (a compiler cannot split (m + 16 i) / 4 itself: u32 sums
// wrap).
fn kfast_row(tid: u32, i: u32) -> u32 { return tid / BK + (256u / BK) * i; }
fn nfast_kk(tid: u32, i: u32) -> u32 { return tid / BN + (256u / BN) * i; }
const KQ: u32 = 64u / BK;           // the quad step between a thread's k-fast rows (256 / BK / 4)

fn store_a_kfast(tid: u32) {
    let kk = tid % BK;
    let q = tid / BK / 4u;
    let e = tid / BK % 4u;
    put_a(kk, kfast_row(tid, 0u), q, e, staged(ra[0]));
    if (LA >= 2u) {
        put_a(kk, kfast_row(tid, 1u), q + KQ, e, staged(ra[1]));
    }
    if (LA >= 4u) {
        put_a(kk, kfast_row(tid, 2u), q + 2u * KQ, e, staged(ra[2]));
        put_a(kk, kfast_row(tid, 3u), q + 3u * KQ, e, staged(ra[3]));
    }
    if (LA == 8u) {
        put_a(kk, kfast_row(tid, 4u), q + 4u * KQ, e, staged(ra[4]));
        put_a(kk, kfast_row(tid, 5u), q + 5u * KQ, e, staged(ra[5]));
        put_a(kk, kfast_row(tid, 6u), q + 6u * KQ, e, staged(ra[6]));
        put_a(kk, kfast_row(tid, 7u), q + 7u * KQ, e, staged(ra[7]));
    }
}

// A staged "m-fast" (consecutive threads on consecutive rows m = tid % BM, kk = tid / BM +
// (256 / BM) i): the input gradient's taps-outer A, whose rows (input channels) are consecutive
// in the weights' [K, R*S, C] copy.
fn mfast_kk(tid: u32, i: u32) -> u32 { return tid / BM + (256u / BM) * i; }

fn store_a_mfast(tid: u32) {
    let m = tid % BM;
    let q = tid % BM / 4u;
    let e = tid % 4u;
    put_a(mfast_kk(tid, 0u), m, q, e, staged(ra[0]));
    if (LA >= 2u) {
        put_a(mfast_kk(tid, 1u), m, q, e, staged(ra[1]));
    }
    if (LA >= 4u) {
        put_a(mfast_kk(tid, 2u), m, q, e, staged(ra[2]));
        put_a(mfast_kk(tid, 3u), m, q, e, staged(ra[3]));
    }
    if (LA == 8u) {
        put_a(mfast_kk(tid, 4u), m, q, e, staged(ra[4]));
        put_a(mfast_kk(tid, 5u), m, q, e, staged(ra[5]));
        put_a(mfast_kk(tid, 6u), m, q, e, staged(ra[6]));
        put_a(mfast_kk(tid, 7u), m, q, e, staged(ra[7]));
    }
}

fn store_b_kfast(tid: u32) {
    let kk = tid % BK;
    let q = tid / BK / 4u;
    let e = tid / BK % 4u;
    put_b(kk, kfast_row(tid, 0u), q, e, staged(rb[0]));
    put_b(kk, kfast_row(tid, 1u), q + KQ, e, staged(rb[1]));
    if (LB >= 4u) {
        put_b(kk, kfast_row(tid, 2u), q + 2u * KQ, e, staged(rb[2]));
        put_b(kk, kfast_row(tid, 3u), q + 3u * KQ, e, staged(rb[3]));
    }
    if (LB == 8u) {
        put_b(kk, kfast_row(tid, 4u), q + 4u * KQ, e, staged(rb[4]));
        put_b(kk, kfast_row(tid, 5u), q + 5u * KQ, e, staged(rb[5]));
        put_b(kk, kfast_row(tid, 6u), q + 6u * KQ, e, staged(rb[6]));
        put_b(kk, kfast_row(tid, 7u), q + 7u * KQ, e, staged(rb[7]));
    }
}

fn store_b_nfast(tid: u32) {
    let n = tid % BN;
    let q = tid % BN / 4u;
    let e = tid % 4u;
    put_b(nfast_kk(tid, 0u), n, q, e, staged(rb[0]));
    put_b(nfast_kk(tid, 1u), n, q, e, staged(rb[1]));
    if (LB >= 4u) {
        put_b(nfast_kk(tid, 2u), n, q, e, staged(rb[2]));
        put_b(nfast_kk(tid, 3u), n, q, e, staged(rb[3]));
    }
    if (LB == 8u) {
        put_b(nfast_kk(tid, 4u), n, q, e, staged(rb[4]));
        put_b(nfast_kk(tid, 5u), n, q, e, staged(rb[5]));
        put_b(nfast_kk(tid, 6u), n, q, e, staged(rb[6]));
        put_b(nfast_kk(tid, 7u), n, q, e, staged(rb[7]));
    }
}

// Per-kernel output offsets the epilogues need beyond Params (set at the kernel's start).
var<private> out_base: u32;
// The forward's offset of its GEMM's weights (batched GEMMs, p.batched > 1; else 0).
var<private> w_base: u32;

// Taps-outer order: the tap and the first channel of the chunk the next load stages. The
// forward and input-gradient loaders advance them chunk by chunk (taps_next), so that no
// division by the channel count happens per chunk.
var<private> chunk_tap: u32;
var<private> chunk_ch: u32;

fn taps_begin(k0: u32, channels: u32) {
    chunk_tap = k0 / channels;
    chunk_ch = k0 - chunk_tap * channels;
}

fn taps_next(channels: u32) {
    chunk_ch += BK;
    if (chunk_ch == channels) {
        chunk_ch = 0u;
        chunk_tap += 1u;
    }
}

// Each entry point has its own loaders (fw_*, bi_*, bw_*) and epilogue (*_put, *_row, *_emit),
// alike in shape: WGSL has no function parameters of function type, and one shared epilogue
// that touched all three outputs would bind all three buffers (at clashing binding numbers) to
// every entry point that calls it.

// ---------------------------------------------------------------------------------------------
// forward

@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read> fw_w: array<f32>;
@group(0) @binding(3) var<storage, read> fw_b: array<f32>;
// y as vec4s: an epilogue stores a thread's four consecutive columns as one vec4 where they lie
// one after another in y, 16-byte aligned, and single values elsewhere (y_store4). On
// lavapipe each store is a loop over the SIMD lanes, and four scalar stores per row of a
// micro-tile took about a sixth of layer1's forward GEMMs in the main job. The host rounds every
// tensor's buffer up to whole vec4s (Gpu::alloc_storage), so the last values are in bounds.
@group(0) @binding(4) var<storage, read_write> fw_y: array<vec4<f32>>;

struct Pixel {
    valid: bool,
    img: u32,
    y: u32,
    x: u32,
}

// Decompose a flat pixel index n < count of [batch, height, width].
fn pixel(n: u32, count: u32, height: u32, width: u32) -> Pixel {
    let hw = height * width;
    let img = n / hw;
    let rem = n - img * hw;
    let y = rem / width;
    return Pixel(n < count, img, y, rem - y * width);
}

// Pixels n .. n + 3 of [batch, height, width]: one decomposition, then carries instead of
// divisions.
fn pixel_quad(n: u32, height: u32, width: u32) -> array<Pixel, 4> {
    let count = p.batch * height * width;
    let q0 = pixel(n, count, height, width);
    let q1 = pixel_next(q0, n, count, height, width);
    let q2 = pixel_next(q1, n + 1u, count, height, width);
    return array<Pixel, 4>(q0, q1, q2, pixel_next(q2, n + 2u, count, height, width));
}

// The pixel after q (flat index n + 1 < count, or not valid) of [batch, height, width].
fn pixel_next(q: Pixel, n: u32, count: u32, height: u32, width: u32) -> Pixel {
    var r = q;
    r.valid = n + 1u < count;
    r.x += 1u;
    if (r.x == width) {
        r.x = 0u;
        r.y += 1u;
        if (r.y == height) {
            r.y = 0u;
            r.img += 1u;
        }
    }
    return r;
}

// The epilogues' output columns: for each of the thread's columns n .. n + 3 (cols_lo) and
// n + 4 TX .. n + 4 TX + 3 (cols_hi, VN == 2), its offset in the output without the row's
// term, or NO_COL past the GEMM's columns. Set once per thread from two pixel decompositions
// (y_cols, gx_cols), instead of one per stored element.
var<private> cols_lo: vec4<u32>;
var<private> cols_hi: vec4<u32>;
const NO_COL: u32 = 0xffffffffu;

// A = w viewed as [K, CRS] (k-fast): element (m, ka), zero past the split's `end`.
fn fw_a(m: u32, ka: u32, end: u32) -> Staged {
    let ok = (m < p.out_c) & (ka < end);
    return Staged(fw_w[w_base + select(0u, m * (p.in_c * KH * KW) + ka, ok)], ok);
}

// B = im2col(x) [CRS, batch*OH*OW] (n-fast): element kb of this thread's column, the output
// pixel whose image starts at `xbase` and whose top-left tap reads input (ih0, iw0).
fn fw_bv(kb: u32, end: u32, valid: bool, xbase: u32, ih0: i32, iw0: i32) -> Staged {
    let c = kb / (KH * KW);
    let t = kb - c * (KH * KW);
    let r = t / KW;
    let ih = ih0 + i32(r);
    let iw = iw0 + i32(t - r * KW);
    let ok = valid & (kb < end) & (ih >= 0) & (ih < i32(p.in_h)) & (iw >= 0) & (iw < i32(p.in_w));
    let i = xbase + c * p.in_h * p.in_w + u32(ih) * p.in_w + u32(iw);
    return Staged(fw_x[select(0u, i, ok)], ok);
}

fn fw_load(tid: u32, k0: u32, m0: u32, end: u32, valid: bool, xbase: u32, ih0: i32, iw0: i32) {
    if (TAPS_OUTER) {
        fw_load_taps(tid, m0, valid, xbase, ih0, iw0);
        return;
    }
    let ka = k0 + tid % BK;
    ra[0] = fw_a(m0 + kfast_row(tid, 0u), ka, end);
    if (LA >= 2u) {
        ra[1] = fw_a(m0 + kfast_row(tid, 1u), ka, end);
    }
    if (LA >= 4u) {
        ra[2] = fw_a(m0 + kfast_row(tid, 2u), ka, end);
        ra[3] = fw_a(m0 + kfast_row(tid, 3u), ka, end);
    }
    if (LA == 8u) {
        ra[4] = fw_a(m0 + kfast_row(tid, 4u), ka, end);
        ra[5] = fw_a(m0 + kfast_row(tid, 5u), ka, end);
        ra[6] = fw_a(m0 + kfast_row(tid, 6u), ka, end);
        ra[7] = fw_a(m0 + kfast_row(tid, 7u), ka, end);
    }
    rb[0] = fw_bv(k0 + nfast_kk(tid, 0u), end, valid, xbase, ih0, iw0);
    rb[1] = fw_bv(k0 + nfast_kk(tid, 1u), end, valid, xbase, ih0, iw0);
    if (LB >= 4u) {
        rb[2] = fw_bv(k0 + nfast_kk(tid, 2u), end, valid, xbase, ih0, iw0);
        rb[3] = fw_bv(k0 + nfast_kk(tid, 3u), end, valid, xbase, ih0, iw0);
    }
    if (LB == 8u) {
        rb[4] = fw_bv(k0 + nfast_kk(tid, 4u), end, valid, xbase, ih0, iw0);
        rb[5] = fw_bv(k0 + nfast_kk(tid, 5u), end, valid, xbase, ih0, iw0);
        rb[6] = fw_bv(k0 + nfast_kk(tid, 6u), end, valid, xbase, ih0, iw0);
        rb[7] = fw_bv(k0 + nfast_kk(tid, 7u), end, valid, xbase, ih0, iw0);
    }
}

// Taps-outer staging of the chunk at (chunk_tap, chunk_ch): A = the weights in [K, R*S, C]
// order (conv_weights_rsc), element (m, kk) at (m * R*S + tap) * C + chunk_ch + kk; B = x at the
// chunk's tap for BK consecutive channels, element (kk, this thread's pixel) one channel plane
// apart per kk. One bounds check per chunk instead of one per element, and no divisions.
fn fw_load_taps(tid: u32, m0: u32, valid: bool, xbase: u32, ih0: i32, iw0: i32) {
    // After the last chunk the loop loads once more (see fw_gemm), past the reduction's last
    // tap: tap 0 keeps those indices inside the tensors.
    let t = select(0u, chunk_tap, chunk_tap < KH * KW);
    let rsc = KH * KW * p.in_c;
    let a = (m0 + tid / BK) * rsc + t * p.in_c + chunk_ch + tid % BK;
    let astep = (256u / BK) * rsc;
    ra[0] = fw_at(m0 + kfast_row(tid, 0u), a);
    if (LA >= 2u) {
        ra[1] = fw_at(m0 + kfast_row(tid, 1u), a + astep);
    }
    if (LA >= 4u) {
        ra[2] = fw_at(m0 + kfast_row(tid, 2u), a + 2u * astep);
        ra[3] = fw_at(m0 + kfast_row(tid, 3u), a + 3u * astep);
    }
    if (LA == 8u) {
        ra[4] = fw_at(m0 + kfast_row(tid, 4u), a + 4u * astep);
        ra[5] = fw_at(m0 + kfast_row(tid, 5u), a + 5u * astep);
        ra[6] = fw_at(m0 + kfast_row(tid, 6u), a + 6u * astep);
        ra[7] = fw_at(m0 + kfast_row(tid, 7u), a + 7u * astep);
    }
    let r = t / KW;
    let ih = ih0 + i32(r);
    let iw = iw0 + i32(t - r * KW);
    let ok = valid & (ih >= 0) & (ih < i32(p.in_h)) & (iw >= 0) & (iw < i32(p.in_w));
    let hw = p.in_h * p.in_w;
    let b = select(0u, xbase + u32(ih) * p.in_w + u32(iw), ok) + (chunk_ch + tid / BN) * hw;
    let bstep = (256u / BN) * hw;
    rb[0] = Staged(fw_x[b], ok);
    rb[1] = Staged(fw_x[b + bstep], ok);
    if (LB >= 4u) {
        rb[2] = Staged(fw_x[b + 2u * bstep], ok);
        rb[3] = Staged(fw_x[b + 3u * bstep], ok);
    }
    if (LB == 8u) {
        rb[4] = Staged(fw_x[b + 4u * bstep], ok);
        rb[5] = Staged(fw_x[b + 5u * bstep], ok);
        rb[6] = Staged(fw_x[b + 6u * bstep], ok);
        rb[7] = Staged(fw_x[b + 7u * bstep], ok);
    }
    taps_next(p.in_c);
}

// The weight at index i of the [K, R*S, C] copy for row m; rows past the output channels are
// never stored, so they read any weight (the first).
fn fw_at(m: u32, i: u32) -> Staged {
    return Staged(fw_w[w_base + select(0u, i, m < p.out_c)], true);
}

// Store v[e] at y's flat index i[e] for each e with ok[e]: as one vec4 where all four are
// stored, one after another (one image) from a multiple of 4, else one value at a time.
fn y_store4(i: vec4<u32>, ok: vec4<bool>, v: vec4<f32>) {
    if (all(ok) & (i.w == i.x + 3u) & (i.x % 4u == 0u)) {
        fw_y[i.x / 4u] = v;
        return;
    }
    if (ok.x) { fw_y[i.x / 4u][i.x % 4u] = v.x; }
    if (ok.y) { fw_y[i.y / 4u][i.y % 4u] = v.y; }
    if (ok.z) { fw_y[i.z / 4u][i.z % 4u] = v.z; }
    if (ok.w) { fw_y[i.w / 4u][i.w % 4u] = v.w; }
}

// Store y (or this split's partial y, at out_base) for GEMM row m (channel) at the output
// columns `cols` (cols_lo or cols_hi; NO_COL: none).
fn fw_put4(m: u32, cols: vec4<u32>, v: vec4<f32>) {
    let base = out_base + m * p.out_h * p.out_w;
    y_store4(cols + vec4<u32>(base), cols != vec4<u32>(NO_COL), v);
}

// Offset in y [N, K, OH, OW] of output pixel q without the channel's term (q.img K + m) OH OW.
fn y_col(q: Pixel) -> u32 {
    if (!q.valid) { return NO_COL; }
    return (q.img * p.out_c * p.out_h + q.y) * p.out_w + q.x;
}

// y_col of columns n .. n + 3 (output pixels of the batch).
fn y_cols(n: u32) -> vec4<u32> {
    let q = pixel_quad(n, p.out_h, p.out_w);
    return vec4<u32>(y_col(q[0]), y_col(q[1]), y_col(q[2]), y_col(q[3]));
}

// The forward epilogues' cols_lo and cols_hi for this thread's first column n.
fn fw_cols(n: u32) {
    cols_lo = y_cols(n);
    if (VN == 2u) { cols_hi = y_cols(n + 4u * TX); }
}

fn fw_row(m: u32, v0: vec4<f32>, v1: vec4<f32>) {
    if (m >= p.out_c) { return; }
    var bias = 0.0;
    if (p.has_bias != 0u) { bias = fw_b[m]; }
    fw_put4(m, cols_lo, v0 + vec4<f32>(bias));
    if (VN == 2u) {
        fw_put4(m, cols_hi, v1 + vec4<f32>(bias));
    }
}

fn fw_emit(tid: u32, m0: u32, n0: u32) {
    let ty = tid / TX;
    fw_cols(n0 + 4u * (tid % TX));
    fw_row(m0 + tile_row(0u, ty), acc[0u * VN], acc[0u * VN + 1u]);
    fw_row(m0 + tile_row(1u, ty), acc[1u * VN], acc[1u * VN + 1u]);
    fw_row(m0 + tile_row(2u, ty), acc[2u * VN], acc[2u * VN + 1u]);
    fw_row(m0 + tile_row(3u, ty), acc[3u * VN], acc[3u * VN + 1u]);
    if (TM >= 8u) {
        fw_row(m0 + tile_row(4u, ty), acc[4u * VN], acc[4u * VN + 1u]);
        fw_row(m0 + tile_row(5u, ty), acc[5u * VN], acc[5u * VN + 1u]);
        fw_row(m0 + tile_row(6u, ty), acc[6u * VN], acc[6u * VN + 1u]);
        fw_row(m0 + tile_row(7u, ty), acc[7u * VN], acc[7u * VN + 1u]);
    }
    if (TM == 16u) {
        fw_row(m0 + tile_row(8u, ty), acc[8u], acc[8u]);
        fw_row(m0 + tile_row(9u, ty), acc[9u], acc[9u]);
        fw_row(m0 + tile_row(10u, ty), acc[10u], acc[10u]);
        fw_row(m0 + tile_row(11u, ty), acc[11u], acc[11u]);
        fw_row(m0 + tile_row(12u, ty), acc[12u], acc[12u]);
        fw_row(m0 + tile_row(13u, ty), acc[13u], acc[13u]);
        fw_row(m0 + tile_row(14u, ty), acc[14u], acc[14u]);
        fw_row(m0 + tile_row(15u, ty), acc[15u], acc[15u]);
    }
}

// Stage the forward's loaded chunk (ra, rb) in workgroup memory.
fn fw_store(tid: u32) {
    store_a_kfast(tid);
    store_b_nfast(tid);
}

// Whether thread tid's micro-tile of the tile at (m0, n0) holds an output the epilogue stores:
// a row below `rows` and a column below `cols` (the GEMM's), and with BLOCK_M (the weight
// gradient's block-diagonal GEMMs) one in a diagonal block. With SKIP_IDLE a thread without one
// skips its multiplies: the padding of a GEMM smaller than its tile (a layer of 8 or 16 channels
// in a 32-row tile, a ragged last column tile) and the discarded blocks. The thread's rows are
// tile_row(4 u + e, ty) and its columns 4 TX v + 4 tx + e (u < VM, v < VN, e < 4). Always true
// without SKIP_IDLE. Called in uniform control flow (engine_live may be a subgroup operation).
fn thread_live(tid: u32, m0: u32, n0: u32, rows: u32, cols: u32) -> bool {
    if (!SKIP_IDLE) { return true; }
    let r = m0 + tile_row(0u, tid / TX);
    let c = n0 + 4u * (tid % TX);
    var live = (r < rows) & (c < cols);
    if (BLOCK_M > 0u) {
        let bm = max(BLOCK_M, 1u);      // no division by a constant zero, which WGSL rejects
        let bn = max(BLOCK_N, 1u);
        var diagonal = false;
        for (var u = 0u; u < VM; u++) {
            for (var v = 0u; v < VN; v++) {
                // The 4 x 4 part's row and column blocks overlap: it holds a diagonal output.
                let r0 = m0 + tile_row(4u * u, tid / TX);
                let c0 = c + 4u * TX * v;
                diagonal |= (r0 / bm <= (c0 + 3u) / bn) & ((r0 + 3u) / bm >= c0 / bn);
            }
        }
        live &= diagonal;
    }
    // The engine may need a subgroup's lanes to multiply together (conv_fma.wgsl's shared A).
    return engine_live(live);
}

// The GEMM of one forward tile, leaving the thread's micro-tile in `acc`. Returns the tile's
// first row (channel) and column (pixel), or column NO_TILE for the surplus groups of the grid.
fn fw_gemm(wg: vec3<u32>, nwg: vec3<u32>, tid: u32) -> vec2<u32> {
    let ncols = p.batch * p.out_h * p.out_w;
    // Split-K (p.splits > 1, small grids): grid z is the split, which reduces over
    // [z * chunk, (z + 1) * chunk) and writes its partial result at z * len(y).
    var tile = wg.x + wg.z * nwg.x;
    var begin = 0u;
    var end = p.in_c * KH * KW;
    out_base = 0u;
    w_base = 0u;
    // Batched GEMMs (p.batched > 1): grid z is the GEMM, whose x, w and y follow the one before.
    var x_base = 0u;
    if (p.splits > 1u) {
        tile = wg.x;
        begin = wg.z * p.chunk;
        end = min(begin + p.chunk, end);
        out_base = wg.z * ncols * p.out_c;
    } else if (p.batched > 1u) {
        tile = wg.x;
        out_base = wg.z * ncols * p.out_c;
        w_base = wg.z * p.out_c * end;
        x_base = wg.z * p.batch * p.in_c * p.in_h * p.in_w;
    }
    let n0 = tile * BN;
    let m0 = wg.y * BM;
    if (n0 >= ncols) { return vec2<u32>(0u, NO_TILE); }
    let px = pixel(n0 + tid % BN, ncols, p.out_h, p.out_w);
    let xbase = x_base + px.img * p.in_c * p.in_h * p.in_w;
    let ih0 = i32(px.y * p.stride) - i32(p.pad);
    let iw0 = i32(px.x * p.stride) - i32(p.pad);
    let live = thread_live(tid, m0, n0, p.out_c, ncols);
    engine_begin();
    if (TAPS_OUTER) { taps_begin(begin, p.in_c); }
    fw_load(tid, begin, m0, end, px.valid, xbase, ih0, iw0);
    if (STAGES == 2u) {
        fw_store(tid);
        workgroupBarrier();
    }
    for (var k0 = begin; k0 < end; k0 += BK) {
        if (STAGES == 1u) {
            fw_store(tid);
            workgroupBarrier();
        }
        // The next chunk's loads, in flight during this chunk's multiply. After the last chunk
        // this loads one past the end, which the loaders keep inside the tensors and no
        // multiply reads: with a branch around it, compilers merge the two paths' registers
        // with copies that wait for the loads before the multiply.
        fw_load(tid, k0 + BK, m0, end, px.valid, xbase, ih0, iw0);
        if (live) { multiply(tid); }
        // With two copies, the next chunk goes into the other one, after the last chunk too: a
        // store on some iterations only would let compilers sink the loads into its branch,
        // after the multiply.
        if (STAGES == 2u) {
            engine_flip();
            fw_store(tid);
        }
        workgroupBarrier();
    }
    engine_end(tid);
    return vec2<u32>(m0, n0);
}

const NO_TILE: u32 = 0xffffffffu;

@compute @workgroup_size(256)
fn conv_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let t = fw_gemm(wg, nwg, tid);
    if (t.y == NO_TILE) { return; }
    fw_emit(tid, t.x, t.y);
}

// The split-K partial results [splits, len] that the three reduce kernels (conv_forward_reduce,
// conv_forward_reduce_bn, conv_reduce_splits) sum.
@group(0) @binding(1) var<storage, read> split_part: array<f32>;
@group(0) @binding(2) var<storage, read> fr_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> fr_y: array<f32>;

// Sum over the splits of element j of split_part: four independent loads and sums at a time
// (one running sum would leave a thread one load in flight, and the reduce kernels have only
// one thread per output element), in a fixed order, ((s0 + s1) + (s2 + s3)) with s_k summing
// the splits z = k mod 4, so results stay deterministic.
fn sum_splits(j: u32, len: u32) -> f32 {
    var s = vec4<f32>(0.0);
    var z = 0u;
    for (; z + 4u <= p.splits; z += 4u) {
        s += vec4<f32>(
            split_part[z * len + j],
            split_part[(z + 1u) * len + j],
            split_part[(z + 2u) * len + j],
            split_part[(z + 3u) * len + j],
        );
    }
    for (; z < p.splits; z++) { s.x += split_part[z * len + j]; }
    return (s.x + s.y) + (s.z + s.w);
}

@compute @workgroup_size(256)
fn conv_forward_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let ohw = p.out_h * p.out_w;
    let len = p.batch * p.out_c * ohw;
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= len) { return; }
    var bias = 0.0;
    if (p.has_bias != 0u) { bias = fr_b[(j / ohw) % p.out_c]; }
    fr_y[j] = bias + sum_splits(j, len);
}

// ---------------------------------------------------------------------------------------------
// forward fused with an eval-mode batch norm, a residual and a ReLU (inference)

@group(0) @binding(6) var<storage, read> bn_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> bn_beta: array<f32>;
@group(0) @binding(8) var<storage, read> bn_mean: array<f32>;
@group(0) @binding(9) var<storage, read> bn_var: array<f32>;
@group(0) @binding(10) var<storage, read> bn_res: array<f32>;

// conv_reduce_splits': add to what the output holds.
const EPI_ACCUMULATE: u32 = 4u;

// The running statistics and affine parameters of one output channel.
fn bn_channel(c: u32) -> BnChannel {
    return BnChannel(bn_mean[c], bn_invstd(bn_var[c], p.eps), bn_gamma[c], bn_beta[c]);
}

// y[j] from the conv output v of channel ch, in batchnorm.wgsl's `normalize` order and then
// elementwise.wgsl's `add_relu` (or `add`), so that the result matches those kernels run apart.
fn bn_out(ch: BnChannel, j: u32, v: f32) -> f32 {
    var y = bn_normalize(ch, v);
    if (RESIDUAL) { y = y + bn_res[j]; }
    if (RELU) { y = relu_value(y); }
    return y;
}

// fw_put4 through the batch norm (bn_out) (never split: out_base 0). A column past the end
// reads the residual at 0 and stores nothing.
fn fb_put4(ch: BnChannel, m: u32, cols: vec4<u32>, v: vec4<f32>) {
    let ok = cols != vec4<u32>(NO_COL);
    let j = select(vec4<u32>(0u), cols + vec4<u32>(m * p.out_h * p.out_w), ok);
    let y = vec4<f32>(bn_out(ch, j.x, v.x), bn_out(ch, j.y, v.y), bn_out(ch, j.z, v.z),
                      bn_out(ch, j.w, v.w));
    y_store4(j, ok, y);
}

fn fb_row(m: u32, v0: vec4<f32>, v1: vec4<f32>) {
    if (m >= p.out_c) { return; }
    let ch = bn_channel(m);
    fb_put4(ch, m, cols_lo, v0);
    if (VN == 2u) {
        fb_put4(ch, m, cols_hi, v1);
    }
}

fn fb_emit(tid: u32, m0: u32, n0: u32) {
    let ty = tid / TX;
    fw_cols(n0 + 4u * (tid % TX));
    fb_row(m0 + tile_row(0u, ty), acc[0u * VN], acc[0u * VN + 1u]);
    fb_row(m0 + tile_row(1u, ty), acc[1u * VN], acc[1u * VN + 1u]);
    fb_row(m0 + tile_row(2u, ty), acc[2u * VN], acc[2u * VN + 1u]);
    fb_row(m0 + tile_row(3u, ty), acc[3u * VN], acc[3u * VN + 1u]);
    if (TM >= 8u) {
        fb_row(m0 + tile_row(4u, ty), acc[4u * VN], acc[4u * VN + 1u]);
        fb_row(m0 + tile_row(5u, ty), acc[5u * VN], acc[5u * VN + 1u]);
        fb_row(m0 + tile_row(6u, ty), acc[6u * VN], acc[6u * VN + 1u]);
        fb_row(m0 + tile_row(7u, ty), acc[7u * VN], acc[7u * VN + 1u]);
    }
    if (TM == 16u) {
        fb_row(m0 + tile_row(8u, ty), acc[8u], acc[8u]);
        fb_row(m0 + tile_row(9u, ty), acc[9u], acc[9u]);
        fb_row(m0 + tile_row(10u, ty), acc[10u], acc[10u]);
        fb_row(m0 + tile_row(11u, ty), acc[11u], acc[11u]);
        fb_row(m0 + tile_row(12u, ty), acc[12u], acc[12u]);
        fb_row(m0 + tile_row(13u, ty), acc[13u], acc[13u]);
        fb_row(m0 + tile_row(14u, ty), acc[14u], acc[14u]);
        fb_row(m0 + tile_row(15u, ty), acc[15u], acc[15u]);
    }
}

// Only without split-K (p.splits == 1): a split forward runs conv_forward for its partial
// results and conv_forward_reduce_bn for the epilogue.
@compute @workgroup_size(256)
fn conv_forward_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) tid: u32) {
    let t = fw_gemm(wg, nwg, tid);
    if (t.y == NO_TILE) { return; }
    fb_emit(tid, t.x, t.y);
}

@compute @workgroup_size(256)
fn conv_forward_reduce_bn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let ohw = p.out_h * p.out_w;
    let len = p.batch * p.out_c * ohw;
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= len) { return; }
    fw_y[j / 4u][j % 4u] = bn_out(bn_channel((j / ohw) % p.out_c), j, sum_splits(j, len));
}

// ---------------------------------------------------------------------------------------------
// input gradient

@group(0) @binding(1) var<storage, read> bi_gy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_gx: array<f32>;

// The workgroup's sub-pixel phase (set at conv_backward_input's start).
var<private> ph: Phase;

// Phase a along one axis of `size` pixels and `taps` taps: (first pixel, pixel count, tap
// count), as the host's input_plan computes them.
fn phase_axis(a: u32, size: u32, taps: u32) -> vec3<u32> {
    let st = p.stride;
    let first = (a + st - p.pad % st) % st;
    let count = select(0u, (size - first + st - 1u) / st, first < size);
    let ntaps = select(0u, (taps - a + st - 1u) / st, a < taps);
    return vec3<u32>(first, count, ntaps);
}

// Phase `phase` = a * stride + b of a merged dispatch.
fn merged_phase(phase: u32) -> Phase {
    let a = phase / p.stride;
    let b = phase - a * p.stride;
    let rows = phase_axis(a, p.in_h, KH);
    let cols = phase_axis(b, p.in_w, KW);
    return Phase(a, b, rows.z, cols.z, rows.x, cols.x, rows.y, cols.y);
}

// The taps-outer loader's tap counts: the constants, or a merged dispatch's phase's.
fn phase_nr() -> u32 { return select(NR, ph.nr, MERGED); }
fn phase_ns() -> u32 { return select(NS, ph.ns, MERGED); }

// Under MERGED, the phase's tap (tr, tu) of chunk_tap = tr * ns + tu, advanced with it
// (bi_taps_next) instead of divided out per chunk: ns is no constant there, and a run-time
// division cost RADV about 25 instructions of the chunk loop (with the constant NS, the
// division costs less than the advance).
var<private> bi_tr: u32;
var<private> bi_tu: u32;

fn bi_taps_begin(k0: u32) {
    taps_begin(k0, p.out_c);
    if (MERGED) {
        bi_tr = chunk_tap / ph.ns;
        bi_tu = chunk_tap - bi_tr * ph.ns;
    }
}

fn bi_taps_next() {
    let tap = chunk_tap;
    taps_next(p.out_c);
    if (MERGED && chunk_tap != tap) {
        bi_tu += 1u;
        if (bi_tu == ph.ns) {
            bi_tu = 0u;
            bi_tr += 1u;
        }
    }
}

// A[c, (k,t,u)] = w[k,c,r0+st*t,s0+st*u] (k-fast): element (c, ka) given ka's weight offset.
fn bi_a(c: u32, k: u32, wofs: u32, inside: bool) -> Staged {
    let ok = (c < p.in_c) & inside;
    return Staged(bi_w[select(0u, (k * p.in_c + c) * (KH * KW) + wofs, ok)], ok);
}

// B[(k,t,u), (n,i,j)] = gy[n,k,oh,ow] with oh = (h0 + st*i + pd - r0 - st*t) / st (exact by the
// phase choice), where inside gy (n-fast). This thread's column is pixel (n, i, j): `gbase` is
// the offset of image n in gy and (oh0, ow0) the gy position its first tap reads.
fn bi_bv(kb: u32, end: u32, valid: bool, gbase: u32, oh0: u32, ow0: u32) -> Staged {
    let kc = kb / (NR * NS);
    let t = kb - kc * (NR * NS);
    let dr = t / NS;
    let ds = t - dr * NS;
    // oh0 < dr (or ow0 < ds) wraps oh (ow) past the gradient's extent: the bounds check covers it.
    let oh = oh0 - dr;
    let ow = ow0 - ds;
    let ok = valid & (kb < end) & (oh < p.out_h) & (ow < p.out_w);
    let i = gbase + kc * p.out_h * p.out_w + oh * p.out_w + ow;
    return Staged(bi_gy[select(0u, i, ok)], ok);
}

// Stage the chunk at reduction index k0; indices from `end` on (the reduction's or this split's
// end) load zeros.
fn bi_load(tid: u32, k0: u32, m0: u32, end: u32, valid: bool, gbase: u32, oh0: u32, ow0: u32) {
    if (TAPS_OUTER) {
        bi_load_taps(tid, m0, valid, gbase, oh0, ow0);
        return;
    }
    let ka = k0 + tid % BK;
    let k = ka / (NR * NS);
    let t = ka - k * (NR * NS);
    let tr = t / NS;
    let wofs = (ph.r0 + p.stride * tr) * KW + ph.s0 + p.stride * (t - tr * NS);
    let inside = ka < end;
    ra[0] = bi_a(m0 + kfast_row(tid, 0u), k, wofs, inside);
    if (LA >= 2u) {
        ra[1] = bi_a(m0 + kfast_row(tid, 1u), k, wofs, inside);
    }
    if (LA >= 4u) {
        ra[2] = bi_a(m0 + kfast_row(tid, 2u), k, wofs, inside);
        ra[3] = bi_a(m0 + kfast_row(tid, 3u), k, wofs, inside);
    }
    if (LA == 8u) {
        ra[4] = bi_a(m0 + kfast_row(tid, 4u), k, wofs, inside);
        ra[5] = bi_a(m0 + kfast_row(tid, 5u), k, wofs, inside);
        ra[6] = bi_a(m0 + kfast_row(tid, 6u), k, wofs, inside);
        ra[7] = bi_a(m0 + kfast_row(tid, 7u), k, wofs, inside);
    }
    rb[0] = bi_bv(k0 + nfast_kk(tid, 0u), end, valid, gbase, oh0, ow0);
    rb[1] = bi_bv(k0 + nfast_kk(tid, 1u), end, valid, gbase, oh0, ow0);
    if (LB >= 4u) {
        rb[2] = bi_bv(k0 + nfast_kk(tid, 2u), end, valid, gbase, oh0, ow0);
        rb[3] = bi_bv(k0 + nfast_kk(tid, 3u), end, valid, gbase, oh0, ow0);
    }
    if (LB == 8u) {
        rb[4] = bi_bv(k0 + nfast_kk(tid, 4u), end, valid, gbase, oh0, ow0);
        rb[5] = bi_bv(k0 + nfast_kk(tid, 5u), end, valid, gbase, oh0, ow0);
        rb[6] = bi_bv(k0 + nfast_kk(tid, 6u), end, valid, gbase, oh0, ow0);
        rb[7] = bi_bv(k0 + nfast_kk(tid, 7u), end, valid, gbase, oh0, ow0);
    }
}

// Taps-outer staging of the chunk at (chunk_tap, chunk_ch): the reduction index is the phase's
// tap t = (tr, tu) times K plus k. A = the weights in [K, R*S, C] order, element (c, kk) at
// ((chunk_ch + kk) * R*S + tap) * C + c, staged m-fast (consecutive threads, consecutive c);
// B = gy at the tap's offset for BK consecutive channels k, one gy plane apart per kk.
fn bi_load_taps(tid: u32, m0: u32, valid: bool, gbase: u32, oh0: u32, ow0: u32) {
    // Past the reduction's last tap (the loop's load after the last chunk), tap 0 keeps the
    // indices inside the tensors.
    let past = chunk_tap >= phase_nr() * phase_ns();
    let t = select(chunk_tap, 0u, past);
    var tr = t / NS;
    var tu = t - tr * NS;
    if (MERGED) {
        tr = select(bi_tr, 0u, past);
        tu = select(bi_tu, 0u, past);
    }
    let tap = (ph.r0 + p.stride * tr) * KW + ph.s0 + p.stride * tu;
    // Rows past the input channels are never stored: they read the last channel's weights.
    let c = min(m0 + tid % BM, p.in_c - 1u);
    let a = ((chunk_ch + tid / BM) * (KH * KW) + tap) * p.in_c + c;
    let astep = (256u / BM) * (KH * KW) * p.in_c;
    ra[0] = Staged(bi_w[a], true);
    if (LA >= 2u) {
        ra[1] = Staged(bi_w[a + astep], true);
    }
    if (LA >= 4u) {
        ra[2] = Staged(bi_w[a + 2u * astep], true);
        ra[3] = Staged(bi_w[a + 3u * astep], true);
    }
    if (LA == 8u) {
        ra[4] = Staged(bi_w[a + 4u * astep], true);
        ra[5] = Staged(bi_w[a + 5u * astep], true);
        ra[6] = Staged(bi_w[a + 6u * astep], true);
        ra[7] = Staged(bi_w[a + 7u * astep], true);
    }
    // oh0 < tr (or ow0 < tu) wraps the row (column) past the gradient's extent: the bounds
    // check covers it.
    let oh = oh0 - tr;
    let ow = ow0 - tu;
    let ok = valid & (oh < p.out_h) & (ow < p.out_w);
    let ohw = p.out_h * p.out_w;
    let b = select(0u, gbase + oh * p.out_w + ow, ok) + (chunk_ch + tid / BN) * ohw;
    let bstep = (256u / BN) * ohw;
    rb[0] = Staged(bi_gy[b], ok);
    rb[1] = Staged(bi_gy[b + bstep], ok);
    if (LB >= 4u) {
        rb[2] = Staged(bi_gy[b + 2u * bstep], ok);
        rb[3] = Staged(bi_gy[b + 3u * bstep], ok);
    }
    if (LB == 8u) {
        rb[4] = Staged(bi_gy[b + 4u * bstep], ok);
        rb[5] = Staged(bi_gy[b + 5u * bstep], ok);
        rb[6] = Staged(bi_gy[b + 6u * bstep], ok);
        rb[7] = Staged(bi_gy[b + 7u * bstep], ok);
    }
    bi_taps_next();
}

// Store gx (or this split's partial gx, at out_base) for GEMM row c at output column `col` (see
// cols_lo), or add to it (ACCUMULATE).
fn bi_put(c: u32, col: u32, v: f32) {
    if (col == NO_COL) { return; }
    let j = out_base + col + c * p.in_h * p.in_w;
    if (ACCUMULATE) {
        bi_gx[j] = bi_gx[j] + v;
    } else {
        bi_gx[j] = v;
    }
}

// Offset in gx [N, C, H, W] of this phase's pixel q = (img, i, j), at h = h0 + st i and
// w = w0 + st j, without the channel's term.
fn gx_col(q: Pixel) -> u32 {
    if (!q.valid) { return NO_COL; }
    let h = ph.h0 + p.stride * q.y;
    let w = ph.w0 + p.stride * q.x;
    return (q.img * p.in_c * p.in_h + h) * p.in_w + w;
}

// gx_col of columns n .. n + 3 (the phase's pixels of the batch).
fn gx_cols(n: u32) -> vec4<u32> {
    let q = pixel_quad(n, ph.hc, ph.wc);
    return vec4<u32>(gx_col(q[0]), gx_col(q[1]), gx_col(q[2]), gx_col(q[3]));
}

fn bi_row(c: u32, v0: vec4<f32>, v1: vec4<f32>) {
    if (c >= p.in_c) { return; }
    bi_put(c, cols_lo.x, v0.x);
    bi_put(c, cols_lo.y, v0.y);
    bi_put(c, cols_lo.z, v0.z);
    bi_put(c, cols_lo.w, v0.w);
    if (VN == 2u) {
        bi_put(c, cols_hi.x, v1.x);
        bi_put(c, cols_hi.y, v1.y);
        bi_put(c, cols_hi.z, v1.z);
        bi_put(c, cols_hi.w, v1.w);
    }
}

fn bi_emit(tid: u32, m0: u32, n0: u32) {
    let ty = tid / TX;
    let n = n0 + 4u * (tid % TX);
    cols_lo = gx_cols(n);
    if (VN == 2u) { cols_hi = gx_cols(n + 4u * TX); }
    bi_row(m0 + tile_row(0u, ty), acc[0u * VN], acc[0u * VN + 1u]);
    bi_row(m0 + tile_row(1u, ty), acc[1u * VN], acc[1u * VN + 1u]);
    bi_row(m0 + tile_row(2u, ty), acc[2u * VN], acc[2u * VN + 1u]);
    bi_row(m0 + tile_row(3u, ty), acc[3u * VN], acc[3u * VN + 1u]);
    if (TM >= 8u) {
        bi_row(m0 + tile_row(4u, ty), acc[4u * VN], acc[4u * VN + 1u]);
        bi_row(m0 + tile_row(5u, ty), acc[5u * VN], acc[5u * VN + 1u]);
        bi_row(m0 + tile_row(6u, ty), acc[6u * VN], acc[6u * VN + 1u]);
        bi_row(m0 + tile_row(7u, ty), acc[7u * VN], acc[7u * VN + 1u]);
    }
    if (TM == 16u) {
        bi_row(m0 + tile_row(8u, ty), acc[8u], acc[8u]);
        bi_row(m0 + tile_row(9u, ty), acc[9u], acc[9u]);
        bi_row(m0 + tile_row(10u, ty), acc[10u], acc[10u]);
        bi_row(m0 + tile_row(11u, ty), acc[11u], acc[11u]);
        bi_row(m0 + tile_row(12u, ty), acc[12u], acc[12u]);
        bi_row(m0 + tile_row(13u, ty), acc[13u], acc[13u]);
        bi_row(m0 + tile_row(14u, ty), acc[14u], acc[14u]);
        bi_row(m0 + tile_row(15u, ty), acc[15u], acc[15u]);
    }
}

// Stage the input gradient's loaded chunk (ra, rb) in workgroup memory.
fn bi_store(tid: u32) {
    if (TAPS_OUTER) { store_a_mfast(tid); } else { store_a_kfast(tid); }
    store_b_nfast(tid);
}

@compute @workgroup_size(256)
fn conv_backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) tid: u32) {
    // The column tile and the phase: merged, grid x interleaves the phases (x = tile *
    // stride^2 + phase); else the phase is Params', and grid z carries the column tiles past
    // 65,535 unless it is the split. The loop's bounds come from this local copy of the phase:
    // Tint's uniformity analysis (browsers') takes whatever is read back from a private
    // variable for non-uniform, and the chunk loop holds barriers.
    var tile = wg.x;
    var phase = p.phase;
    if (MERGED) {
        let phases = p.stride * p.stride;
        tile = wg.x / phases;
        phase = merged_phase(wg.x - tile * phases);
    } else if (p.splits == 1u) {
        tile = wg.x + wg.z * nwg.x;
    }
    ph = phase;
    let ncols = p.batch * phase.hc * phase.wc;
    // Split-K (p.splits > 1, small grids): split z reduces over [z * chunk, (z + 1) * chunk)
    // (empty for some splits of a phase with few taps: those write zeros) and writes its
    // partial gx at z * len(gx). A merged phase's chunk is the host's: its reduction over the
    // splits, rounded up to whole chunks of PLAN_BK.
    var begin = 0u;
    var end = p.out_c * phase.nr * phase.ns;
    out_base = 0u;
    if (p.splits > 1u) {
        var chunk = p.chunk;
        if (MERGED) {
            chunk = (end + p.splits - 1u) / p.splits;
            chunk = (chunk + PLAN_BK - 1u) / PLAN_BK * PLAN_BK;
        }
        begin = wg.z * chunk;
        end = min(begin + chunk, end);
        out_base = wg.z * p.reduce_len;
    }
    let n0 = tile * BN;
    let m0 = wg.y * BM;
    if (n0 >= ncols) { return; }
    let px = pixel(n0 + tid % BN, ncols, phase.hc, phase.wc);
    let gbase = px.img * p.out_c * p.out_h * p.out_w;
    // (h + pd - r0) / st and (w + pd - s0) / st for this column: exact divisions.
    let oh0 = (phase.h0 + p.stride * px.y + p.pad - phase.r0) / p.stride;
    let ow0 = (phase.w0 + p.stride * px.x + p.pad - phase.s0) / p.stride;
    let live = thread_live(tid, m0, n0, p.in_c, ncols);
    engine_begin();
    // A split past the phase's taps has nothing to load (and writes zeros).
    if (begin < end) {
        if (TAPS_OUTER) { bi_taps_begin(begin); }
        bi_load(tid, begin, m0, end, px.valid, gbase, oh0, ow0);
        if (STAGES == 2u) {
            bi_store(tid);
            workgroupBarrier();
        }
    }
    for (var k0 = begin; k0 < end; k0 += BK) {
        if (STAGES == 1u) {
            bi_store(tid);
            workgroupBarrier();
        }
        // The next chunk, even after the last (see fw_gemm).
        bi_load(tid, k0 + BK, m0, end, px.valid, gbase, oh0, ow0);
        if (live) { multiply(tid); }
        if (STAGES == 2u) {
            engine_flip();
            bi_store(tid);
        }
        workgroupBarrier();
    }
    engine_end(tid);
    bi_emit(tid, m0, n0);
}

// ---------------------------------------------------------------------------------------------
// weight gradient (split-K) and the reduction of its partial results

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_part: array<f32>;

// A[k, i] = gy[n,k,oh,ow] (k-fast): element (k, this thread's reduction index i) at index j
// of gy, zero past the reduction's end (!inside) or the output channels.
fn bw_a(k: u32, j: u32, inside: bool) -> Staged {
    let ok = inside & (k < p.out_c);
    return Staged(bw_gy[bw_gy_base + select(0u, j, ok)], ok);
}

// Offsets of a batched weight gradient's GEMM in x and gy (0 unless p.batched > 1).
var<private> bw_x_base: u32;
var<private> bw_gy_base: u32;

// B[i, (c,r,s)] = x[n,c,oh*st-pd+r,ow*st-pd+s] (k-fast): column j for this thread's i, whose
// image starts at xbase and whose top-left tap reads input (ih0, iw0).
fn bw_bv(j: u32, crs: u32, inside: bool, xbase: u32, ih0: i32, iw0: i32) -> Staged {
    let c = j / (KH * KW);
    let t = j - c * (KH * KW);
    let r = t / KW;
    let ih = ih0 + i32(r);
    let iw = iw0 + i32(t - r * KW);
    let ok = inside & (j < crs) & (ih >= 0) & (ih < i32(p.in_h)) & (iw >= 0) & (iw < i32(p.in_w));
    let i = xbase + c * p.in_h * p.in_w + u32(ih) * p.in_w + u32(iw);
    return Staged(bw_x[select(0u, i, ok)], ok);
}

// The weight gradient's reduction walk: this thread's pixel (image, row, column) of the batch's
// outputs, ii = k0 + tid % BK for the chunk at k0, advanced by BK pixels per chunk (bw_walk_next)
// with additions and two compares instead of two run-time divisions per chunk.
var<private> walk_img: u32;
var<private> walk_oh: u32;
var<private> walk_ow: u32;
// BK pixels as (images, rows, columns), each part below its extent.
var<private> walk_step: vec3<u32>;

fn bw_walk_begin(ii: u32) {
    let ohw = p.out_h * p.out_w;
    walk_img = ii / ohw;
    let pix = ii - walk_img * ohw;
    walk_oh = pix / p.out_w;
    walk_ow = pix - walk_oh * p.out_w;
    let rows = BK / p.out_w;
    walk_step = vec3<u32>(rows / p.out_h, rows % p.out_h, BK % p.out_w);
}

fn bw_walk_next() {
    walk_img += walk_step.x;
    walk_oh += walk_step.y;
    walk_ow += walk_step.z;
    if (walk_ow >= p.out_w) {
        walk_ow -= p.out_w;
        walk_oh += 1u;
    }
    if (walk_oh >= p.out_h) {
        walk_oh -= p.out_h;
        walk_img += 1u;
    }
}

fn bw_load(tid: u32, k0: u32, end: u32, m0: u32, n0: u32, crs: u32) {
    let ohw = p.out_h * p.out_w;
    let inside = k0 + tid % BK < end;
    let img = walk_img;
    let oh = walk_oh;
    let ow = walk_ow;
    bw_walk_next();
    // gy at this thread's pixel for channels m0 + kfast_row(tid, i), one gy plane apart.
    let a = (img * p.out_c + m0 + tid / BK) * ohw + oh * p.out_w + ow;
    let astep = (256u / BK) * ohw;
    ra[0] = bw_a(m0 + kfast_row(tid, 0u), a, inside);
    if (LA >= 2u) {
        ra[1] = bw_a(m0 + kfast_row(tid, 1u), a + astep, inside);
    }
    if (LA >= 4u) {
        ra[2] = bw_a(m0 + kfast_row(tid, 2u), a + 2u * astep, inside);
        ra[3] = bw_a(m0 + kfast_row(tid, 3u), a + 3u * astep, inside);
    }
    if (LA == 8u) {
        ra[4] = bw_a(m0 + kfast_row(tid, 4u), a + 4u * astep, inside);
        ra[5] = bw_a(m0 + kfast_row(tid, 5u), a + 5u * astep, inside);
        ra[6] = bw_a(m0 + kfast_row(tid, 6u), a + 6u * astep, inside);
        ra[7] = bw_a(m0 + kfast_row(tid, 7u), a + 7u * astep, inside);
    }
    let xbase = bw_x_base + img * p.in_c * p.in_h * p.in_w;
    let ih0 = i32(oh * p.stride) - i32(p.pad);
    let iw0 = i32(ow * p.stride) - i32(p.pad);
    if (TAPS_OUTER) {
        bw_load_b_taps(tid, n0, inside, xbase, ih0, iw0);
        return;
    }
    rb[0] = bw_bv(n0 + kfast_row(tid, 0u), crs, inside, xbase, ih0, iw0);
    rb[1] = bw_bv(n0 + kfast_row(tid, 1u), crs, inside, xbase, ih0, iw0);
    if (LB >= 4u) {
        rb[2] = bw_bv(n0 + kfast_row(tid, 2u), crs, inside, xbase, ih0, iw0);
        rb[3] = bw_bv(n0 + kfast_row(tid, 3u), crs, inside, xbase, ih0, iw0);
    }
    if (LB == 8u) {
        rb[4] = bw_bv(n0 + kfast_row(tid, 4u), crs, inside, xbase, ih0, iw0);
        rb[5] = bw_bv(n0 + kfast_row(tid, 5u), crs, inside, xbase, ih0, iw0);
        rb[6] = bw_bv(n0 + kfast_row(tid, 6u), crs, inside, xbase, ih0, iw0);
        rb[7] = bw_bv(n0 + kfast_row(tid, 7u), crs, inside, xbase, ih0, iw0);
    }
}

// Taps-outer order: column j = tap * C + c, and C is a multiple of BN, so the whole tile lies
// in the tap bw_tap (set at the kernel's start).
var<private> bw_tap: u32;

// Taps-outer B of the chunk: x at the tile's tap, for this thread's pixel (at xbase, top-left
// tap reading (ih0, iw0)) and the columns' consecutive channels, one channel plane apart per
// row. One bounds check per chunk instead of one per element, and no divisions.
fn bw_load_b_taps(tid: u32, n0: u32, inside: bool, xbase: u32, ih0: i32, iw0: i32) {
    let r = bw_tap / KW;
    let ih = ih0 + i32(r);
    let iw = iw0 + i32(bw_tap - r * KW);
    let ok = inside & (ih >= 0) & (ih < i32(p.in_h)) & (iw >= 0) & (iw < i32(p.in_w));
    let hw = p.in_h * p.in_w;
    let c = n0 - bw_tap * p.in_c + tid / BK;
    let b = select(0u, xbase + u32(ih) * p.in_w + u32(iw), ok) + c * hw;
    let bstep = (256u / BK) * hw;
    rb[0] = Staged(bw_x[b], ok);
    rb[1] = Staged(bw_x[b + bstep], ok);
    if (LB >= 4u) {
        rb[2] = Staged(bw_x[b + 2u * bstep], ok);
        rb[3] = Staged(bw_x[b + 3u * bstep], ok);
    }
    if (LB == 8u) {
        rb[4] = Staged(bw_x[b + 4u * bstep], ok);
        rb[5] = Staged(bw_x[b + 5u * bstep], ok);
        rb[6] = Staged(bw_x[b + 6u * bstep], ok);
        rb[7] = Staged(bw_x[b + 7u * bstep], ok);
    }
}

// Store this split's partial gw (at out_base, [K, C, R, S] in either order) for GEMM row k and
// column j: (c, r, s), or (tap, c) in taps-outer order.
fn bw_put(k: u32, j: u32, v: f32) {
    let crs = p.in_c * KH * KW;
    if (j >= crs) { return; }
    if (BLOCK_M > 0u) {
        // A block-diagonal GEMM (1x1): row k's diagonal block b alone, its BLOCK_N columns at
        // k BLOCK_N (the partial is out_c x BLOCK_N: the blocks one after another).
        let bn = max(BLOCK_N, 1u);      // no division by a constant zero, which WGSL rejects
        let b = k / max(BLOCK_M, 1u);
        if (j / bn == b) { bw_part[out_base + k * bn + j - b * bn] = v; }
        return;
    }
    var i = j;
    if (TAPS_OUTER) { i = (j - bw_tap * p.in_c) * (KH * KW) + bw_tap; }
    bw_part[out_base + k * crs + i] = v;
}

fn bw_row(k: u32, j: u32, v0: vec4<f32>, v1: vec4<f32>) {
    if (k >= p.out_c) { return; }
    bw_put(k, j, v0.x);
    bw_put(k, j + 1u, v0.y);
    bw_put(k, j + 2u, v0.z);
    bw_put(k, j + 3u, v0.w);
    if (VN == 2u) {
        bw_put(k, j + 4u * TX, v1.x);
        bw_put(k, j + 4u * TX + 1u, v1.y);
        bw_put(k, j + 4u * TX + 2u, v1.z);
        bw_put(k, j + 4u * TX + 3u, v1.w);
    }
}

fn bw_emit(tid: u32, m0: u32, n0: u32) {
    let ty = tid / TX;
    let j = n0 + 4u * (tid % TX);
    bw_row(m0 + tile_row(0u, ty), j, acc[0u * VN], acc[0u * VN + 1u]);
    bw_row(m0 + tile_row(1u, ty), j, acc[1u * VN], acc[1u * VN + 1u]);
    bw_row(m0 + tile_row(2u, ty), j, acc[2u * VN], acc[2u * VN + 1u]);
    bw_row(m0 + tile_row(3u, ty), j, acc[3u * VN], acc[3u * VN + 1u]);
    if (TM >= 8u) {
        bw_row(m0 + tile_row(4u, ty), j, acc[4u * VN], acc[4u * VN + 1u]);
        bw_row(m0 + tile_row(5u, ty), j, acc[5u * VN], acc[5u * VN + 1u]);
        bw_row(m0 + tile_row(6u, ty), j, acc[6u * VN], acc[6u * VN + 1u]);
        bw_row(m0 + tile_row(7u, ty), j, acc[7u * VN], acc[7u * VN + 1u]);
    }
    if (TM == 16u) {
        bw_row(m0 + tile_row(8u, ty), j, acc[8u], acc[8u]);
        bw_row(m0 + tile_row(9u, ty), j, acc[9u], acc[9u]);
        bw_row(m0 + tile_row(10u, ty), j, acc[10u], acc[10u]);
        bw_row(m0 + tile_row(11u, ty), j, acc[11u], acc[11u]);
        bw_row(m0 + tile_row(12u, ty), j, acc[12u], acc[12u]);
        bw_row(m0 + tile_row(13u, ty), j, acc[13u], acc[13u]);
        bw_row(m0 + tile_row(14u, ty), j, acc[14u], acc[14u]);
        bw_row(m0 + tile_row(15u, ty), j, acc[15u], acc[15u]);
    }
}

// Stage the weight gradient's loaded chunk (ra, rb) in workgroup memory.
fn bw_store(tid: u32) {
    store_a_kfast(tid);
    store_b_kfast(tid);
}

@compute @workgroup_size(256)
fn conv_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let crs = p.in_c * KH * KW;
    let total = p.batch * p.out_h * p.out_w;
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    // Batched (p.batched > 1): grid z is split * batched + the GEMM.
    var split = wg.z;
    bw_x_base = 0u;
    bw_gy_base = 0u;
    if (p.batched > 1u) {
        split = wg.z / p.batched;
        let gemm = wg.z - split * p.batched;
        bw_x_base = gemm * p.in_c * p.in_h * p.in_w * p.batch;
        bw_gy_base = gemm * p.out_c * total;
    }
    let begin = split * p.chunk;
    let end = min(begin + p.chunk, total);
    out_base = (p.z_base + wg.z) * p.out_c * select(crs, BLOCK_N, BLOCK_M > 0u);
    if (TAPS_OUTER) { bw_tap = n0 / p.in_c; }
    bw_walk_begin(begin + tid % BK);
    let live = thread_live(tid, m0, n0, p.out_c, crs);
    engine_begin();
    bw_load(tid, begin, end, m0, n0, crs);
    if (STAGES == 2u) {
        bw_store(tid);
        workgroupBarrier();
    }
    for (var k0 = begin; k0 < end; k0 += BK) {
        if (STAGES == 1u) {
            bw_store(tid);
            workgroupBarrier();
        }
        // The next chunk, even after the last (see fw_gemm).
        bw_load(tid, k0 + BK, end, m0, n0, crs);
        if (live) { multiply(tid); }
        if (STAGES == 2u) {
            engine_flip();
            bw_store(tid);
        }
        workgroupBarrier();
    }
    engine_end(tid);
    bw_emit(tid, m0, n0);
}

@group(0) @binding(2) var<storage, read_write> rs_out: array<f32>;

@compute @workgroup_size(256)
fn conv_reduce_splits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= p.reduce_len) { return; }
    let s = sum_splits(j, p.reduce_len);
    if ((p.epilogue & EPI_ACCUMULATE) != 0u) {
        rs_out[j] = rs_out[j] + s;
    } else {
        rs_out[j] = s;
    }
}

// conv_reduce_splits on vec4s, where p.reduce_len is a multiple of 4 (the host's choice): one
// thread per four consecutive outputs, vec4 loads and stores, and for each component the sums
// and order of sum_splits, so the same bits.
@group(0) @binding(1) var<storage, read> split_part4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> rs4_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn conv_reduce_splits4(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let len = p.reduce_len / 4u;
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= len) { return; }
    // s_k sums the splits z = k mod 4, as sum_splits' components do.
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    var z = 0u;
    for (; z + 4u <= p.splits; z += 4u) {
        s0 += split_part4[z * len + j];
        s1 += split_part4[(z + 1u) * len + j];
        s2 += split_part4[(z + 2u) * len + j];
        s3 += split_part4[(z + 3u) * len + j];
    }
    for (; z < p.splits; z++) { s0 += split_part4[z * len + j]; }
    let s = (s0 + s1) + (s2 + s3);
    if ((p.epilogue & EPI_ACCUMULATE) != 0u) {
        rs4_out[j] = rs4_out[j] + s;
    } else {
        rs4_out[j] = s;
    }
}

// ---------------------------------------------------------------------------------------------
// tap windows: a convolution whose input is so small that some taps only ever read padding (a
// 3x3 kernel on a 1x1 map reaches it with its centre tap only) runs its three GEMMs on the
// window of taps that reach the input, as a smaller kernel with less padding and the same
// output size. The host crops the weights to the window for the forward pass and the input
// gradient and expands the weight gradient back, with zeros at the other taps (checked through
// the conv passes against the CPU reference). Params: p.kh, p.kw the kernel; p.phase.r0,
// p.phase.s0 the window's first tap and p.phase.nr, p.phase.ns its size; p.reduce_len the rows
// K*C.

@group(0) @binding(1) var<storage, read> tw_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> tw_dst: array<f32>;

// One thread per row kc < K*C (p.reduce_len), which copies that row's taps: no division per
// element.
// dst[kc, r, s] = src[kc, r0 + r, s0 + s] (src [K*C, kh, kw], dst [K*C, nr, ns]).
@compute @workgroup_size(256)
fn conv_taps_crop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let kc = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (kc >= p.reduce_len) { return; }
    let win = p.phase;
    let src = kc * p.kh * p.kw + win.r0 * p.kw + win.s0;
    let dst = kc * win.nr * win.ns;
    for (var r = 0u; r < win.nr; r++) {
        for (var s = 0u; s < win.ns; s++) {
            tw_dst[dst + r * win.ns + s] = tw_src[src + r * p.kw + s];
        }
    }
}

// The weights in taps-outer order for the forward and input-gradient GEMMs:
// dst[k, t, c] = src[k, c, t] (src [K, C, R*S], dst [K, R*S, C]); one thread per element, read
// in order. p.out_c = K, p.in_c = C; KH, KW the kernel.
@compute @workgroup_size(256)
fn conv_weights_rsc(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= p.out_c * p.in_c * KH * KW) { return; }
    let kc = j / (KH * KW);
    let t = j - kc * (KH * KW);
    let k = kc / p.in_c;
    let c = kc - k * p.in_c;
    tw_dst[(k * (KH * KW) + t) * p.in_c + c] = tw_src[j];
}

// dst[kc, r, s] = src[kc, r - r0, s - s0] inside the window, else 0 (src [K*C, nr, ns],
// dst [K*C, kh, kw]).
@compute @workgroup_size(256)
fn conv_taps_expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let kc = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (kc >= p.reduce_len) { return; }
    let win = p.phase;
    let src = kc * win.nr * win.ns;
    let dst = kc * p.kh * p.kw;
    for (var r = 0u; r < p.kh; r++) {
        for (var s = 0u; s < p.kw; s++) {
            var v = 0.0;
            if (r >= win.r0 && r < win.r0 + win.nr && s >= win.s0 && s < win.s0 + win.ns) {
                v = tw_src[src + (r - win.r0) * win.ns + s - win.s0];
            }
            tw_dst[dst + r * p.kw + s] = v;
        }
    }
}
