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
//                         so no reduction entry is a structural zero.
//                         GEMM per phase: M = C, N = batch*hc*wc, reduction = K*nr*ns
//   conv_backward_weight: part[z,k,j]   = sum_{i in chunk z} gy[i -> (n,oh,ow), k] * x[n,c,oh*st-pd+r, ow*st-pd+s]
//                         with j = (c*R + r)*S + s, i = (n*OH + oh)*OW + ow
//                         GEMM: M = K, N = C*R*S, reduction = batch*OH*OW split into `splits` chunks
//                         of `chunk` (a multiple of BK) along grid z (split-K; no float atomics)
//                         When the output tiles alone would leave the GPU idle (small batches),
//                         the reduction is split like the weight gradient's: split z writes its
//                         partial y at z * len(y), and conv_forward_reduce adds them and the bias.
//   conv_reduce_splits:   gw[j] = sum_{z < splits} part[z * K*C*R*S + j]
//   conv_forward_reduce:  y[j]  = b[k(j)] + sum_{z < splits} part[z * len(y) + j]
//
// Tiling (all GEMM entry points): a workgroup of 256 threads (16 x 16) computes a BM x BN output
// tile, looping over the reduction in BK-deep chunks. The tile is a compile-time variant: the host
// prepends `const TM`, `const TN` (the per-thread micro-tile, multiples of 4) and `const BK` to
// this file (src/ops/conv.rs, `ConvTile`), giving BM = 16 TM and BN = 16 TN: 64x64 (4x4, BK 16),
// 128x64, 64x128 (BK 16) and 128x128 (8x8, BK 8). Each chunk stages a [BK, BM] slice of the A
// operand and a [BK, BN] slice of B in workgroup memory (rows padded by one vec4 against bank
// conflicts), loaded from global memory one chunk ahead into registers so that the loads of chunk
// t+1 overlap the arithmetic on chunk t. Thread (tx, ty) = (tid % 16, tid / 16) owns rows
// 64 u + 4 ty + e (u < TM / 4, e < 4) and columns 64 v + 4 tx + e (v < TN / 4) of the tile, so its
// workgroup-memory reads are whole vec4s and a warp's reads of B are consecutive. Out-of-range
// rows, columns and reduction indices load zeros and store nothing, so any shape works.
//
// Geometry the loaders divide by is pipeline-overridable (KH, KW: the kernel size; NR, NS: the
// input gradient's taps per phase), so those divisions compile to multiplies; the remaining
// run-time divisions happen once per thread (its fixed pixel column) or once per chunk.
//
// Dispatch:
//   conv_forward / conv_backward_input (per phase): x*z = ceil(N / BN) column tiles (tile = wg.x + wg.z *
//     num_workgroups.x, split over z to respect 65,535 per dimension; surplus groups exit),
//     y = ceil(M / BM) row tiles. conv_forward with splits > 1: x = column tiles, z = splits.
//   conv_backward_weight: x = ceil(C*R*S / BN), y = ceil(K / BM), z = splits.
//   conv_reduce_splits / conv_forward_reduce: one thread per element of gw / y, 256 per
//     workgroup, linear index (wg.x + wg.y * num_workgroups.x) * 256 + local index.
//
// Bindings (group 0): 0 = Params (uniform), then per entry point:
//   conv_forward:         1 = x [N,C,H,W] (read), 2 = w [K,C,R,S] (read), 3 = b [K] (read; any
//                         buffer when has_bias == 0), 4 = y [N,K,OH,OW] (write; with split-K the
//                         partial results [splits,N,K,OH,OW], has_bias == 0)
//   conv_backward_input:  1 = gy [N,K,OH,OW] (read), 2 = w [K,C,R,S] (read), 3 = gx [N,C,H,W] (write)
//   conv_backward_weight: 1 = x [N,C,H,W] (read), 2 = gy [N,K,OH,OW] (read),
//                         3 = part [splits,K,C*R*S] (write; gw itself when splits == 1)
//   conv_reduce_splits:   1 = part [splits,K*C*R*S] (read), 2 = gw [K,C,R,S] (write)
//   conv_forward_reduce:  1 = part [splits,N,K,OH,OW] (read), 2 = b [K] (read; any buffer when
//                         has_bias == 0), 3 = y [N,K,OH,OW] (write)
// All indices are u32; the host checks that every tensor and GEMM extent fits.

struct Params {
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
    // conv_backward_input's phase: first tap (r0, s0) and tap counts (nr, ns); first pixel
    // (h0, w0) and pixel counts (hc, wc), both stepping by the stride.
    r0: u32,
    s0: u32,
    nr: u32,
    ns: u32,
    h0: u32,
    w0: u32,
    hc: u32,
    wc: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Kernel size and the input gradient's taps per phase (equal to p.kh, p.kw, and p.nr, p.ns
// where those are not 0: a phase no tap reaches has p.nr * p.ns = 0 and writes zeros).
override KH: u32 = 3u;
override KW: u32 = 3u;
override NR: u32 = 3u;
override NS: u32 = 3u;

const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const VM: u32 = TM / 4u;            // vec4 row groups per thread
const VN: u32 = TN / 4u;            // vec4 column groups per thread
const RA: u32 = BM / 4u + 1u;       // row stride of a_tile in vec4s (one vec4 of padding)
const RB: u32 = BN / 4u + 1u;
const LA: u32 = BM * BK / 256u;     // A elements each thread stages per chunk
const LB: u32 = BN * BK / 256u;     // B elements each thread stages per chunk

var<workgroup> a_tile: array<vec4<f32>, BK * RA>;  // A[kk, m] at [kk * RA + m / 4][m % 4]
var<workgroup> b_tile: array<vec4<f32>, BK * RB>;  // B[kk, n] at [kk * RB + n / 4][n % 4]

// acc[(4 u + e) * VN + v] holds C[64 u + 4 ty + e, 64 v + 4 tx .. 64 v + 4 tx + 3].
var<private> acc: array<vec4<f32>, TM * VN>;
var<private> ra: array<f32, LA>;  // staged A values of the next chunk
var<private> rb: array<f32, LB>;  // staged B values of the next chunk

fn clear_acc() {
    for (var i = 0u; i < TM * VN; i++) { acc[i] = vec4<f32>(0.0); }
}

// Tile row (or column) of micro-tile entry `i` of thread coordinate `t`.
fn tile_row(i: u32, t: u32) -> u32 {
    return 64u * (i / 4u) + 4u * t + i % 4u;
}

// Staging layouts. A "k-fast" operand is loaded with kk = tid % BK and row/column
// tid / BK + (256 / BK) i (consecutive threads read consecutive reduction indices); an
// "mn-fast" one with row/column tid % BN and kk = tid / BN + (256 / BN) i.
fn kfast_row(tid: u32, i: u32) -> u32 { return tid / BK + (256u / BK) * i; }
fn nfast_kk(tid: u32, i: u32) -> u32 { return tid / BN + (256u / BN) * i; }

fn store_a_kfast(tid: u32) {
    let kk = tid % BK;
    for (var i = 0u; i < LA; i++) {
        let m = kfast_row(tid, i);
        a_tile[kk * RA + m / 4u][m % 4u] = ra[i];
    }
}

fn store_b_kfast(tid: u32) {
    let kk = tid % BK;
    for (var i = 0u; i < LB; i++) {
        let n = kfast_row(tid, i);
        b_tile[kk * RB + n / 4u][n % 4u] = rb[i];
    }
}

fn store_b_nfast(tid: u32) {
    let n = tid % BN;
    for (var i = 0u; i < LB; i++) {
        let kk = nfast_kk(tid, i);
        b_tile[kk * RB + n / 4u][n % 4u] = rb[i];
    }
}

// Accumulate the staged chunk into the micro-tile: TM * TN fused multiply-adds per kk from
// VM + VN vec4 reads of workgroup memory.
fn multiply(tid: u32) {
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var kk = 0u; kk < BK; kk++) {
        var a: array<vec4<f32>, VM>;
        var b: array<vec4<f32>, VN>;
        for (var u = 0u; u < VM; u++) { a[u] = a_tile[kk * RA + ty + 16u * u]; }
        for (var v = 0u; v < VN; v++) { b[v] = b_tile[kk * RB + tx + 16u * v]; }
        for (var u = 0u; u < VM; u++) {
            for (var e = 0u; e < 4u; e++) {
                for (var v = 0u; v < VN; v++) {
                    let i = (4u * u + e) * VN + v;
                    acc[i] = fma(vec4<f32>(a[u][e]), b[v], acc[i]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// forward

@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read> fw_w: array<f32>;
@group(0) @binding(3) var<storage, read> fw_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> fw_y: array<f32>;

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

// A = w viewed as [K, CRS] (k-fast); B = im2col(x) [CRS, batch*OH*OW] (n-fast). This thread's B
// column is the output pixel `px`; `xbase` is the offset of its image, `ih0`/`iw0` the input
// position of its top-left tap.
fn fw_load(tid: u32, k0: u32, m0: u32, end: u32, valid: bool, xbase: u32, ih0: i32, iw0: i32) {
    let crs = p.in_c * KH * KW;
    let ka = k0 + tid % BK;
    for (var i = 0u; i < LA; i++) {
        let m = m0 + kfast_row(tid, i);
        var v = 0.0;
        if (m < p.out_c && ka < end) { v = fw_w[m * crs + ka]; }
        ra[i] = v;
    }
    let hw = p.in_h * p.in_w;
    for (var i = 0u; i < LB; i++) {
        let kb = k0 + nfast_kk(tid, i);
        var v = 0.0;
        if (valid && kb < end) {
            let c = kb / (KH * KW);
            let t = kb - c * (KH * KW);
            let r = t / KW;
            let ih = ih0 + i32(r);
            let iw = iw0 + i32(t - r * KW);
            if (ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
                v = fw_x[xbase + c * hw + u32(ih) * p.in_w + u32(iw)];
            }
        }
        rb[i] = v;
    }
}

@compute @workgroup_size(256)
fn conv_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let ohw = p.out_h * p.out_w;
    let ncols = p.batch * ohw;
    let crs = p.in_c * KH * KW;
    // Split-K (p.splits > 1, small grids): grid z is the split, which reduces over
    // [z * chunk, (z + 1) * chunk) and writes its partial result at z * len(y).
    var tile = wg.x + wg.z * nwg.x;
    var begin = 0u;
    var end = crs;
    var zofs = 0u;
    if (p.splits > 1u) {
        tile = wg.x;
        begin = wg.z * p.chunk;
        end = min(begin + p.chunk, crs);
        zofs = wg.z * ncols * p.out_c;
    }
    let n0 = tile * BN;
    let m0 = wg.y * BM;
    if (n0 >= ncols) { return; }
    let px = pixel(n0 + tid % BN, ncols, p.out_h, p.out_w);
    let xbase = px.img * p.in_c * p.in_h * p.in_w;
    let ih0 = i32(px.y * p.stride) - i32(p.pad);
    let iw0 = i32(px.x * p.stride) - i32(p.pad);
    clear_acc();
    fw_load(tid, begin, m0, end, px.valid, xbase, ih0, iw0);
    for (var k0 = begin; k0 < end; k0 += BK) {
        store_a_kfast(tid);
        store_b_nfast(tid);
        workgroupBarrier();
        if (k0 + BK < end) { fw_load(tid, k0 + BK, m0, end, px.valid, xbase, ih0, iw0); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var v = 0u; v < VN; v++) {
        for (var e = 0u; e < 4u; e++) {
            let n = n0 + 64u * v + 4u * tx + e;
            if (n >= ncols) { continue; }
            let img = n / ohw;
            let out = zofs + img * p.out_c * ohw + (n - img * ohw);
            for (var i = 0u; i < TM; i++) {
                let m = m0 + tile_row(i, ty);
                if (m >= p.out_c) { continue; }
                var bias = 0.0;
                if (p.has_bias != 0u) { bias = fw_b[m]; }
                fw_y[out + m * ohw] = acc[i * VN + v][e] + bias;
            }
        }
    }
}

@group(0) @binding(1) var<storage, read> fr_part: array<f32>;
@group(0) @binding(2) var<storage, read> fr_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> fr_y: array<f32>;

@compute @workgroup_size(256)
fn conv_forward_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let ohw = p.out_h * p.out_w;
    let len = p.batch * p.out_c * ohw;
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= len) { return; }
    var s = 0.0;
    if (p.has_bias != 0u) { s = fr_b[(j / ohw) % p.out_c]; }
    for (var z = 0u; z < p.splits; z++) { s += fr_part[z * len + j]; }
    fr_y[j] = s;
}

// ---------------------------------------------------------------------------------------------
// input gradient

@group(0) @binding(1) var<storage, read> bi_gy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_gx: array<f32>;

// A[c, (k,t,u)] = w[k,c,r0+st*t,s0+st*u] (k-fast); B[(k,t,u), (n,i,j)] = gy[n,k,oh,ow] with
// oh = (h0 + st*i + pd - r0 - st*t) / st (exact by the phase choice), where inside gy (n-fast).
// This thread's B column is pixel (n, i, j): `gbase` is the offset of image n in gy and
// (oh0, ow0) the gy position its first tap reads.
fn bi_load(tid: u32, k0: u32, m0: u32, krs: u32, valid: bool, gbase: u32, oh0: u32, ow0: u32) {
    let taps = NR * NS;
    let ka = k0 + tid % BK;
    let k = ka / taps;
    let t = ka - k * taps;
    let tr = t / NS;
    let wofs = (p.r0 + p.stride * tr) * KW + p.s0 + p.stride * (t - tr * NS);
    for (var i = 0u; i < LA; i++) {
        let c = m0 + kfast_row(tid, i);
        var v = 0.0;
        if (c < p.in_c && ka < krs) { v = bi_w[(k * p.in_c + c) * (KH * KW) + wofs]; }
        ra[i] = v;
    }
    let ohw = p.out_h * p.out_w;
    for (var i = 0u; i < LB; i++) {
        let kb = k0 + nfast_kk(tid, i);
        var v = 0.0;
        if (valid && kb < krs) {
            let kc = kb / taps;
            let t2 = kb - kc * taps;
            let dr = t2 / NS;
            let ds = t2 - dr * NS;
            if (oh0 >= dr && ow0 >= ds) {
                let oh = oh0 - dr;
                let ow = ow0 - ds;
                if (oh < p.out_h && ow < p.out_w) {
                    v = bi_gy[gbase + kc * ohw + oh * p.out_w + ow];
                }
            }
        }
        rb[i] = v;
    }
}

@compute @workgroup_size(256)
fn conv_backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) tid: u32) {
    let hw = p.in_h * p.in_w;
    let phw = p.hc * p.wc;
    let ncols = p.batch * phw;
    let krs = p.out_c * p.nr * p.ns;
    let n0 = (wg.x + wg.z * nwg.x) * BN;
    let m0 = wg.y * BM;
    if (n0 >= ncols) { return; }
    let px = pixel(n0 + tid % BN, ncols, p.hc, p.wc);
    let gbase = px.img * p.out_c * p.out_h * p.out_w;
    // (h + pd - r0) / st and (w + pd - s0) / st for this column: exact divisions.
    let oh0 = (p.h0 + p.stride * px.y + p.pad - p.r0) / p.stride;
    let ow0 = (p.w0 + p.stride * px.x + p.pad - p.s0) / p.stride;
    clear_acc();
    bi_load(tid, 0u, m0, krs, px.valid, gbase, oh0, ow0);
    for (var k0 = 0u; k0 < krs; k0 += BK) {
        store_a_kfast(tid);
        store_b_nfast(tid);
        workgroupBarrier();
        if (k0 + BK < krs) { bi_load(tid, k0 + BK, m0, krs, px.valid, gbase, oh0, ow0); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var v = 0u; v < VN; v++) {
        for (var e = 0u; e < 4u; e++) {
            let n = n0 + 64u * v + 4u * tx + e;
            if (n >= ncols) { continue; }
            let q = pixel(n, ncols, p.hc, p.wc);
            let out = q.img * p.in_c * hw + (p.h0 + p.stride * q.y) * p.in_w + p.w0 + p.stride * q.x;
            for (var i = 0u; i < TM; i++) {
                let c = m0 + tile_row(i, ty);
                if (c >= p.in_c) { continue; }
                bi_gx[out + c * hw] = acc[i * VN + v][e];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// weight gradient (split-K) and the reduction of its partial results

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_part: array<f32>;

// A[k, i] = gy[n,k,oh,ow] (k-fast); B[i, (c,r,s)] = x[n,c,oh*st-pd+r,ow*st-pd+s] (k-fast), where
// i < end indexes (n, oh, ow); this thread's B columns start at n0.
fn bw_load(tid: u32, k0: u32, end: u32, m0: u32, n0: u32, crs: u32) {
    let ohw = p.out_h * p.out_w;
    let ii = k0 + tid % BK;
    let inside = ii < end;
    let img = ii / ohw;
    let pix = ii - img * ohw;
    let oh = pix / p.out_w;
    let ow = pix - oh * p.out_w;
    let gbase = img * p.out_c * ohw + pix;
    for (var i = 0u; i < LA; i++) {
        let k = m0 + kfast_row(tid, i);
        var v = 0.0;
        if (inside && k < p.out_c) { v = bw_gy[gbase + k * ohw]; }
        ra[i] = v;
    }
    let hw = p.in_h * p.in_w;
    let xbase = img * p.in_c * hw;
    let ih0 = i32(oh * p.stride) - i32(p.pad);
    let iw0 = i32(ow * p.stride) - i32(p.pad);
    for (var i = 0u; i < LB; i++) {
        let j = n0 + kfast_row(tid, i);
        let c = j / (KH * KW);
        let t = j - c * (KH * KW);
        let r = t / KW;
        let ih = ih0 + i32(r);
        let iw = iw0 + i32(t - r * KW);
        var v = 0.0;
        if (inside && j < crs && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
            v = bw_x[xbase + c * hw + u32(ih) * p.in_w + u32(iw)];
        }
        rb[i] = v;
    }
}

@compute @workgroup_size(256)
fn conv_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let crs = p.in_c * KH * KW;
    let total = p.batch * p.out_h * p.out_w;
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    let begin = wg.z * p.chunk;
    let end = min(begin + p.chunk, total);
    clear_acc();
    bw_load(tid, begin, end, m0, n0, crs);
    for (var k0 = begin; k0 < end; k0 += BK) {
        store_a_kfast(tid);
        store_b_kfast(tid);
        workgroupBarrier();
        if (k0 + BK < end) { bw_load(tid, k0 + BK, end, m0, n0, crs); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    let base = wg.z * p.out_c * crs;
    for (var i = 0u; i < TM; i++) {
        let k = m0 + tile_row(i, ty);
        if (k >= p.out_c) { continue; }
        for (var v = 0u; v < VN; v++) {
            for (var e = 0u; e < 4u; e++) {
                let n = n0 + 64u * v + 4u * tx + e;
                if (n >= crs) { continue; }
                bw_part[base + k * crs + n] = acc[i * VN + v][e];
            }
        }
    }
}

@group(0) @binding(1) var<storage, read> rs_part: array<f32>;
@group(0) @binding(2) var<storage, read_write> rs_gw: array<f32>;

@compute @workgroup_size(256)
fn conv_reduce_splits(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let len = p.out_c * p.in_c * p.kh * p.kw;
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (j >= len) { return; }
    var s = 0.0;
    for (var z = 0u; z < p.splits; z++) { s += rs_part[z * len + j]; }
    rs_gw[j] = s;
}
