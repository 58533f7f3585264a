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
//   conv_reduce_splits:   gw[j] = sum_{z < splits} part[z * K*C*R*S + j]
//
// Tiling (all GEMM entry points): a workgroup of 256 threads computes a BM x BN = 64 x 64 output
// tile, looping over the reduction in BK = 16 deep chunks. Each chunk stages a [BK, BM] slice of
// the A operand and a [BK, BN] slice of B in workgroup memory (rows padded to 68 floats against
// bank conflicts; 8.5 KiB in all), loaded from global memory one chunk ahead into registers so the
// loads of chunk t+1 overlap the arithmetic on chunk t. Thread (tx, ty) = (tid % 16, tid / 16)
// owns a 4 x 4 register micro-tile: rows 4*ty..4*ty+3 and columns 4*tx..4*tx+3 of the tile. Out of
// range rows, columns and reduction indices load zeros and store nothing, so any shape works.
// Tile sizes are `const`, not `override`: they size private register arrays, which WGSL requires
// to be constant-sized.
//
// Dispatch:
//   conv_forward / conv_backward_input (per phase): x*z = ceil(N / 64) column tiles (tile = wg.x + wg.z *
//     num_workgroups.x, split over z to respect 65,535 per dimension; surplus groups exit),
//     y = ceil(M / 64) row tiles.
//   conv_backward_weight: x = ceil(C*R*S / 64), y = ceil(K / 64), z = splits.
//   conv_reduce_splits: one thread per element of gw, 256 per workgroup, linear index
//     (wg.x + wg.y * num_workgroups.x) * 256 + local index.
//
// Bindings (group 0): 0 = Params (uniform), then per entry point:
//   conv_forward:         1 = x [N,C,H,W] (read), 2 = w [K,C,R,S] (read), 3 = b [K] (read; any
//                         buffer when has_bias == 0), 4 = y [N,K,OH,OW] (write)
//   conv_backward_input:  1 = gy [N,K,OH,OW] (read), 2 = w [K,C,R,S] (read), 3 = gx [N,C,H,W] (write)
//   conv_backward_weight: 1 = x [N,C,H,W] (read), 2 = gy [N,K,OH,OW] (read),
//                         3 = part [splits,K,C*R*S] (write; gw itself when splits == 1)
//   conv_reduce_splits:   1 = part [splits,K*C*R*S] (read), 2 = gw [K,C,R,S] (write)
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
    chunk: u32,   // conv_backward_weight: reduction length per split (multiple of BK)
    splits: u32,  // conv_backward_weight / conv_reduce_splits: number of partial results
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

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
// Row stride of the workgroup tiles in vec4s: 16 vec4 = 64 floats of data + 1 vec4 padding.
const ROW: u32 = 17u;

var<workgroup> a_tile: array<vec4<f32>, 272>;  // [BK][ROW] vec4: A[kk, m]
var<workgroup> b_tile: array<vec4<f32>, 272>;  // [BK][ROW] vec4: B[kk, n]

var<private> acc: array<vec4<f32>, 4>;  // acc[i][j] = C[4*ty + i, 4*tx + j]
var<private> ra: array<f32, 4>;         // staged A values of the next chunk
var<private> rb: array<f32, 4>;         // staged B values of the next chunk

fn clear_acc() {
    for (var i = 0u; i < 4u; i++) { acc[i] = vec4<f32>(0.0); }
}

// Store the staged registers into the tiles. A "k-fast" operand was loaded with kk = tid % 16 and
// row/column tid / 16 + 16 i; an "mn-fast" one with kk = tid / 64 + 4 i and row/column tid % 64.
fn store_a_kfast(tid: u32) {
    let kk = tid % BK;
    for (var i = 0u; i < 4u; i++) {
        let m = tid / BK + 16u * i;
        a_tile[kk * ROW + m / 4u][m % 4u] = ra[i];
    }
}

fn store_b_kfast(tid: u32) {
    let kk = tid % BK;
    for (var i = 0u; i < 4u; i++) {
        let n = tid / BK + 16u * i;
        b_tile[kk * ROW + n / 4u][n % 4u] = rb[i];
    }
}

fn store_b_nfast(tid: u32) {
    let n = tid % BN;
    for (var i = 0u; i < 4u; i++) {
        let kk = tid / BN + 4u * i;
        b_tile[kk * ROW + n / 4u][n % 4u] = rb[i];
    }
}

// Accumulate the staged chunk into the micro-tile.
fn multiply(tid: u32) {
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var kk = 0u; kk < BK; kk++) {
        let a = a_tile[kk * ROW + ty];
        let b = b_tile[kk * ROW + tx];
        acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
        acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
        acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
        acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
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

// A = w viewed as [K, CRS] (k-fast); B = im2col(x) [CRS, batch*OH*OW] (n-fast).
fn fw_load(tid: u32, k0: u32, m0: u32, crs: u32, px: Pixel) {
    let ka = k0 + tid % BK;
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + tid / BK + 16u * i;
        var v = 0.0;
        if (m < p.out_c && ka < crs) { v = fw_w[m * crs + ka]; }
        ra[i] = v;
    }
    let rs = p.kh * p.kw;
    let ih0 = i32(px.y * p.stride) - i32(p.pad);
    let iw0 = i32(px.x * p.stride) - i32(p.pad);
    for (var i = 0u; i < 4u; i++) {
        let kb = k0 + tid / BN + 4u * i;
        var v = 0.0;
        if (px.valid && kb < crs) {
            let c = kb / rs;
            let t = kb - c * rs;
            let r = t / p.kw;
            let s = t - r * p.kw;
            let ih = ih0 + i32(r);
            let iw = iw0 + i32(s);
            if (ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
                v = fw_x[((px.img * p.in_c + c) * p.in_h + u32(ih)) * p.in_w + u32(iw)];
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
    let crs = p.in_c * p.kh * p.kw;
    let n0 = (wg.x + wg.z * nwg.x) * BN;
    let m0 = wg.y * BM;
    if (n0 >= ncols) { return; }
    let px = pixel(n0 + tid % BN, ncols, p.out_h, p.out_w);
    clear_acc();
    fw_load(tid, 0u, m0, crs, px);
    for (var k0 = 0u; k0 < crs; k0 += BK) {
        store_a_kfast(tid);
        store_b_nfast(tid);
        workgroupBarrier();
        if (k0 + BK < crs) { fw_load(tid, k0 + BK, m0, crs, px); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + 4u * ty + i;
        if (m >= p.out_c) { break; }
        var bias = 0.0;
        if (p.has_bias != 0u) { bias = fw_b[m]; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + 4u * tx + j;
            if (n >= ncols) { break; }
            let img = n / ohw;
            fw_y[(img * p.out_c + m) * ohw + (n - img * ohw)] = acc[i][j] + bias;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// input gradient

@group(0) @binding(1) var<storage, read> bi_gy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_gx: array<f32>;

// A[c, (k,t,u)] = w[k,c,r0+st*t,s0+st*u] (k-fast); B[(k,t,u), (n,i,j)] = gy[n,k,oh,ow] with
// oh = (h0 + st*i + pd - r0 - st*t) / st (exact by the phase choice), where inside gy (n-fast).
// `px` holds (n, i, j) of this thread's B column.
fn bi_load(tid: u32, k0: u32, m0: u32, krs: u32, px: Pixel) {
    let rs = p.kh * p.kw;
    let taps = p.nr * p.ns;
    let ka = k0 + tid % BK;
    let k = ka / taps;
    let t = ka - k * taps;
    let tr = t / p.ns;
    let wofs = (p.r0 + p.stride * tr) * p.kw + p.s0 + p.stride * (t - tr * p.ns);
    for (var i = 0u; i < 4u; i++) {
        let c = m0 + tid / BK + 16u * i;
        var v = 0.0;
        if (c < p.in_c && ka < krs) { v = bi_w[(k * p.in_c + c) * rs + wofs]; }
        ra[i] = v;
    }
    // (h + pd - r0) / st and (w + pd - s0) / st for this column: exact divisions.
    let oh0 = (p.h0 + p.stride * px.y + p.pad - p.r0) / p.stride;
    let ow0 = (p.w0 + p.stride * px.x + p.pad - p.s0) / p.stride;
    for (var i = 0u; i < 4u; i++) {
        let kb = k0 + tid / BN + 4u * i;
        var v = 0.0;
        if (px.valid && kb < krs) {
            let kc = kb / taps;
            let t2 = kb - kc * taps;
            let dr = t2 / p.ns;
            let ds = t2 - dr * p.ns;
            if (oh0 >= dr && ow0 >= ds) {
                let oh = oh0 - dr;
                let ow = ow0 - ds;
                if (oh < p.out_h && ow < p.out_w) {
                    v = bi_gy[((px.img * p.out_c + kc) * p.out_h + oh) * p.out_w + ow];
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
    clear_acc();
    bi_load(tid, 0u, m0, krs, px);
    for (var k0 = 0u; k0 < krs; k0 += BK) {
        store_a_kfast(tid);
        store_b_nfast(tid);
        workgroupBarrier();
        if (k0 + BK < krs) { bi_load(tid, k0 + BK, m0, krs, px); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    for (var i = 0u; i < 4u; i++) {
        let c = m0 + 4u * ty + i;
        if (c >= p.in_c) { break; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + 4u * tx + j;
            if (n >= ncols) { break; }
            let q = pixel(n, ncols, p.hc, p.wc);
            let h = p.h0 + p.stride * q.y;
            let w = p.w0 + p.stride * q.x;
            bi_gx[(q.img * p.in_c + c) * hw + h * p.in_w + w] = acc[i][j];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// weight gradient (split-K) and the reduction of its partial results

@group(0) @binding(1) var<storage, read> bw_x: array<f32>;
@group(0) @binding(2) var<storage, read> bw_gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_part: array<f32>;

struct Tap {
    valid: bool,
    c: u32,
    r: u32,
    s: u32,
}

// A[k, i] = gy[n,k,oh,ow] (k-fast); B[i, (c,r,s)] = x[n,c,oh*st-pd+r,ow*st-pd+s] (k-fast), where
// i < end indexes (n, oh, ow). `taps` are this thread's four B columns.
fn bw_load(tid: u32, k0: u32, end: u32, m0: u32, taps: array<Tap, 4>) {
    let ohw = p.out_h * p.out_w;
    let ii = k0 + tid % BK;
    let inside = ii < end;
    let img = ii / ohw;
    let pix = ii - img * ohw;
    let oh = pix / p.out_w;
    let ow = pix - oh * p.out_w;
    for (var i = 0u; i < 4u; i++) {
        let k = m0 + tid / BK + 16u * i;
        var v = 0.0;
        if (inside && k < p.out_c) { v = bw_gy[(img * p.out_c + k) * ohw + pix]; }
        ra[i] = v;
    }
    let ih0 = i32(oh * p.stride) - i32(p.pad);
    let iw0 = i32(ow * p.stride) - i32(p.pad);
    for (var i = 0u; i < 4u; i++) {
        let tap = taps[i];
        var v = 0.0;
        let ih = ih0 + i32(tap.r);
        let iw = iw0 + i32(tap.s);
        if (inside && tap.valid && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
            v = bw_x[((img * p.in_c + tap.c) * p.in_h + u32(ih)) * p.in_w + u32(iw)];
        }
        rb[i] = v;
    }
}

@compute @workgroup_size(256)
fn conv_backward_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let rs = p.kh * p.kw;
    let crs = p.in_c * rs;
    let total = p.batch * p.out_h * p.out_w;
    let n0 = wg.x * BN;
    let m0 = wg.y * BM;
    let begin = wg.z * p.chunk;
    let end = min(begin + p.chunk, total);
    var taps: array<Tap, 4>;
    for (var i = 0u; i < 4u; i++) {
        let j = n0 + tid / BK + 16u * i;
        let c = j / rs;
        let t = j - c * rs;
        let r = t / p.kw;
        taps[i] = Tap(j < crs, c, r, t - r * p.kw);
    }
    clear_acc();
    bw_load(tid, begin, end, m0, taps);
    for (var k0 = begin; k0 < end; k0 += BK) {
        store_a_kfast(tid);
        store_b_kfast(tid);
        workgroupBarrier();
        if (k0 + BK < end) { bw_load(tid, k0 + BK, end, m0, taps); }
        multiply(tid);
        workgroupBarrier();
    }
    let tx = tid % 16u;
    let ty = tid / 16u;
    let base = wg.z * p.out_c * crs;
    for (var i = 0u; i < 4u; i++) {
        let k = m0 + 4u * ty + i;
        if (k >= p.out_c) { break; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + 4u * tx + j;
            if (n >= crs) { break; }
            bw_part[base + k * crs + n] = acc[i][j];
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
