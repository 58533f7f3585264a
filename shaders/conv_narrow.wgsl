// Direct 2-D convolution for narrow layers (few channels), without conv.wgsl's GEMM tiles.
// A GEMM tile computes at least 4,096 outputs per workgroup (a 4x4 micro-tile per thread, 256
// threads): a layer of 8 output channels fills a quarter of the 32-row tile, and the weight
// gradient of 8 x 8 x 3 x 3 weights a seventh of it. These kernels compute only the outputs
// that exist (src/ops/conv/narrow.rs says where the host routes a convolution here).
//
// Math (NCHW, weights [K, C, R, S], stride st, padding pd, zero outside the input), as conv.wgsl:
//   narrow_forward:         y[n,k,oh,ow] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n,c,oh*st-pd+r, ow*st-pd+s]
//   narrow_backward_input:  gx[n,c,h,w]  = sum_{k,r,s} w[k,c,r,s] * gy[n,k,h+pd-r, w+pd-s]
//                           (stride 1 only; gy is zero outside)
//   narrow_backward_weight: part[z,k,j]  = sum_{i in split z} gy[n,k,oh,ow] * x[n,c,oh*st-pd+r, ow*st-pd+s]
//                           with j = (c*R + r)*S + s and i = (n*OH + oh)*OW + ow over the pixels
//                           [z * p.chunk, (z + 1) * p.chunk); with one split part is gw, else
//                           conv.wgsl's conv_reduce_splits sums the splits
//   narrow_gather4:         op4[(g*J + j)*VG + q][e] = src[(j / inner)*outer + j % inner + ch*stride]
//                           for channel ch = 16 g + 4 q + e (0 from the last channel on): the
//                           shared operand in groups of 16 channels, 4 to a vec4, as the kernels
//                           above read it. Forward: w, ch = k, j = c*R*S + r*S + s; input
//                           gradient: w, ch = c, j = k*R*S + r*S + s; weight gradient: gy,
//                           ch = k, j = the pixel i
// Each sum runs in the order written (c, then r, then s; k, r, s; i), in f32.
//
// Work split: a thread owns two pixels, flat indices 2t and 2t + 1 (forward: output pixels,
// input gradient: input pixels), and a group of up to 16 channels it writes (VG vec4
// accumulators per pixel, override), or, in the weight gradient, one tap j and up to 16 output
// channels k. Every thread of a workgroup walks the same reduction indices in the same order,
// so the operand that does not depend on the thread's pixels or tap (the weights; gy in the
// weight gradient) is read at the same address by all of them: a broadcast from cache on a
// GPU, and on a CPU driver one vec4 load for 4 channels (op4's layout, which narrow_gather4
// makes), which serves both pixels (on lavapipe two pixels per thread took the 8-channel 3x3
// forward pass and input gradient at 28x28 from 22-24 to 15-17 ms). The other operand is read
// per pixel, consecutive threads at consecutive pixels (or taps). No workgroup memory, no
// barriers.
//
// Dispatch (WG threads per workgroup, override):
//   narrow_forward:         x*z = ceil(N*OH*OW / (2 WG)) pixel groups (group = wg.x + wg.z *
//                           num_workgroups.x; surplus pixels store nothing), y = ceil(K / 16)
//                           channel groups
//   narrow_backward_input:  x*z = ceil(N*H*W / (2 WG)) pixel groups, y = ceil(C / 16)
//   narrow_backward_weight: x = ceil(C*R*S / WG) tap groups, y = ceil(K / 16), z = splits
//   narrow_gather4:         one thread per vec4 of op4, x*z as the forward's
//
// Bindings (group 0): 0 = params (uniform: Params; narrow_gather4: GatherParams), 1 = the
// per-thread operand (x; gy in the input gradient; narrow_gather4: src), 2 = the shared operand
// op4 (w's or gy's), 3 = the output (y, gx, part or op4), 4 = the bias b (forward only; any
// buffer when p.has_bias == 0).

// The convolution's shape (src/ops/conv/narrow.rs, NarrowParams).
struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    chunk: u32,      // narrow_backward_weight: pixels per split (grid z)
}

@group(0) @binding(0) var<uniform> p: Params;

// vec4 groups of channels per thread (1 to 4): ceil(min(channels written, 16) / 4).
override VG: u32 = 4u;

// Threads per workgroup: 64 in the pixel kernels; in the weight gradient as many as the taps
// rounded up to a multiple of 8, at most 256.
override WG: u32 = 64u;

// The kernel size: constant loop bounds.
override KH: u32 = 3u;
override KW: u32 = 3u;

@group(0) @binding(1) var<storage, read> n_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> n_out: array<f32>;

// The thread's sums for channels `first` .. + 15 (a0 .. a3, VG of them) at `out` + c * `step`,
// for the channels c below `count`.
fn store16(out: u32, step: u32, first: u32, count: u32,
           a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>) {
    store4(out, step, first, count, a0);
    if (VG > 1u) { store4(out, step, first + 4u, count, a1); }
    if (VG > 2u) { store4(out, step, first + 8u, count, a2); }
    if (VG > 3u) { store4(out, step, first + 12u, count, a3); }
}

fn store4(out: u32, step: u32, first: u32, count: u32, a: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        if (first + e < count) {
            n_out[out + (first + e) * step] = a[e];
        }
    }
}

@group(0) @binding(2) var<storage, read> n_op4: array<vec4<f32>>;

// ---------------------------------------------------------------- forward, input gradient

@group(0) @binding(4) var<storage, read> n_bias: array<f32>;

// b[k .. k + 3] (zero past K, or without a bias).
fn bias4(k: u32) -> vec4<f32> {
    var b = vec4<f32>();
    if (p.has_bias != 0u) {
        for (var e = 0u; e < 4u; e++) {
            if (k + e < p.out_c) { b[e] = n_bias[k + e]; }
        }
    }
    return b;
}

// The thread's sums, indexed by constants only: acc[q] for channels 4q .. 4q + 3 of its group
// at its first pixel (or its tap), acc[4 + q] at its second pixel.
var<private> acc: array<vec4<f32>, 8>;

// acc[q] += op4[at + q] * x for the VG vec4 groups (the weight gradient: one tap).
fn accumulate_one(at: u32, x: f32) {
    let x4 = vec4<f32>(x);
    acc[0] = fma(n_op4[at], x4, acc[0]);
    if (VG > 1u) { acc[1] = fma(n_op4[at + 1u], x4, acc[1]); }
    if (VG > 2u) { acc[2] = fma(n_op4[at + 2u], x4, acc[2]); }
    if (VG > 3u) { acc[3] = fma(n_op4[at + 3u], x4, acc[3]); }
}

// accumulate_one for two pixels, x0 at the first and x1 at the second: each vec4 of op4 is
// loaded once for both.
fn accumulate_two(at: u32, x0: f32, x1: f32) {
    let a = vec4<f32>(x0);
    let b = vec4<f32>(x1);
    let q0 = n_op4[at];
    acc[0] = fma(q0, a, acc[0]);
    acc[4] = fma(q0, b, acc[4]);
    if (VG > 1u) { let q = n_op4[at + 1u]; acc[1] = fma(q, a, acc[1]); acc[5] = fma(q, b, acc[5]); }
    if (VG > 2u) { let q = n_op4[at + 2u]; acc[2] = fma(q, a, acc[2]); acc[6] = fma(q, b, acc[6]); }
    if (VG > 3u) { let q = n_op4[at + 3u]; acc[3] = fma(q, a, acc[3]); acc[7] = fma(q, b, acc[7]); }
}

// Pixel `i` of planes `width` wide and `plane` pixels: (image, row, column).
fn pixel_at(i: u32, plane: u32, width: u32) -> vec3<u32> {
    return vec3<u32>(i / plane, (i % plane) / width, i % width);
}

@compute @workgroup_size(WG)
fn narrow_forward(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let plane = p.out_h * p.out_w;
    let i0 = 2u * ((wg.x + wg.z * nwg.x) * WG + lid);
    let valid0 = i0 < p.batch * plane;
    let valid1 = i0 + 1u < p.batch * plane;
    let y0 = pixel_at(i0, plane, p.out_w);
    let y1 = pixel_at(i0 + 1u, plane, p.out_w);
    let k0 = 16u * wg.y;
    let wbase = wg.y * p.in_c * KH * KW * VG;
    for (var c = 0u; c < p.in_c; c++) {
        let xc0 = (y0.x * p.in_c + c) * p.in_h;
        let xc1 = (y1.x * p.in_c + c) * p.in_h;
        for (var r = 0u; r < KH; r++) {
            let ih0 = i32(y0.y * p.stride + r) - i32(p.pad);
            let ih1 = i32(y1.y * p.stride + r) - i32(p.pad);
            let row0 = valid0 && ih0 >= 0 && ih0 < i32(p.in_h);
            let row1 = valid1 && ih1 >= 0 && ih1 < i32(p.in_h);
            for (var s = 0u; s < KW; s++) {
                let iw0 = i32(y0.z * p.stride + s) - i32(p.pad);
                let iw1 = i32(y1.z * p.stride + s) - i32(p.pad);
                var v0 = 0.0;
                var v1 = 0.0;
                if (row0 && iw0 >= 0 && iw0 < i32(p.in_w)) {
                    v0 = n_in[(xc0 + u32(ih0)) * p.in_w + u32(iw0)];
                }
                if (row1 && iw1 >= 0 && iw1 < i32(p.in_w)) {
                    v1 = n_in[(xc1 + u32(ih1)) * p.in_w + u32(iw1)];
                }
                accumulate_two(wbase + ((c * KH + r) * KW + s) * VG, v0, v1);
            }
        }
    }
    let b0 = bias4(k0);
    let b1 = bias4(k0 + 4u);
    let b2 = bias4(k0 + 8u);
    let b3 = bias4(k0 + 12u);
    if (valid0) {
        let out = y0.x * p.out_c * plane + y0.y * p.out_w + y0.z;
        store16(out, plane, k0, p.out_c, acc[0] + b0, acc[1] + b1, acc[2] + b2, acc[3] + b3);
    }
    if (valid1) {
        let out = y1.x * p.out_c * plane + y1.y * p.out_w + y1.z;
        store16(out, plane, k0, p.out_c, acc[4] + b0, acc[5] + b1, acc[6] + b2, acc[7] + b3);
    }
}

@compute @workgroup_size(WG)
fn narrow_backward_input(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let plane = p.in_h * p.in_w;
    let i0 = 2u * ((wg.x + wg.z * nwg.x) * WG + lid);
    let valid0 = i0 < p.batch * plane;
    let valid1 = i0 + 1u < p.batch * plane;
    let x0 = pixel_at(i0, plane, p.in_w);
    let x1 = pixel_at(i0 + 1u, plane, p.in_w);
    let c0 = 16u * wg.y;
    let wbase = wg.y * p.out_c * KH * KW * VG;
    for (var k = 0u; k < p.out_c; k++) {
        let gk0 = (x0.x * p.out_c + k) * p.out_h;
        let gk1 = (x1.x * p.out_c + k) * p.out_h;
        for (var r = 0u; r < KH; r++) {
            let oh0 = i32(x0.y + p.pad) - i32(r);
            let oh1 = i32(x1.y + p.pad) - i32(r);
            let row0 = valid0 && oh0 >= 0 && oh0 < i32(p.out_h);
            let row1 = valid1 && oh1 >= 0 && oh1 < i32(p.out_h);
            for (var s = 0u; s < KW; s++) {
                let ow0 = i32(x0.z + p.pad) - i32(s);
                let ow1 = i32(x1.z + p.pad) - i32(s);
                var v0 = 0.0;
                var v1 = 0.0;
                if (row0 && ow0 >= 0 && ow0 < i32(p.out_w)) {
                    v0 = n_in[(gk0 + u32(oh0)) * p.out_w + u32(ow0)];
                }
                if (row1 && ow1 >= 0 && ow1 < i32(p.out_w)) {
                    v1 = n_in[(gk1 + u32(oh1)) * p.out_w + u32(ow1)];
                }
                accumulate_two(wbase + ((k * KH + r) * KW + s) * VG, v0, v1);
            }
        }
    }
    if (valid0) {
        let out = x0.x * p.in_c * plane + x0.y * p.in_w + x0.z;
        store16(out, plane, c0, p.in_c, acc[0], acc[1], acc[2], acc[3]);
    }
    if (valid1) {
        let out = x1.x * p.in_c * plane + x1.y * p.in_w + x1.z;
        store16(out, plane, c0, p.in_c, acc[4], acc[5], acc[6], acc[7]);
    }
}

// ---------------------------------------------------------------- weight gradient

@compute @workgroup_size(WG)
fn narrow_backward_weight(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let rs = KH * KW;
    let crs = p.in_c * rs;
    let j = wg.x * WG + lid;
    let valid = j < crs;
    let c = j / rs;
    let r = (j % rs) / KW;
    let s = j % KW;
    let k0 = 16u * wg.y;
    let oplane = p.out_h * p.out_w;
    let pixels = p.batch * oplane;
    let begin = wg.z * p.chunk;
    let end = min(begin + p.chunk, pixels);
    // op4 of this channel group: VG vec4s per pixel.
    let gbase = wg.y * pixels * VG;
    // The pixel (n, oh, ow) of index i, stepped along with it.
    var n = begin / oplane;
    var oh = (begin % oplane) / p.out_w;
    var ow = begin % p.out_w;
    for (var i = begin; i < end; i++) {
        let ih = i32(oh * p.stride + r) - i32(p.pad);
        let iw = i32(ow * p.stride + s) - i32(p.pad);
        var v = 0.0;
        if (valid && ih >= 0 && ih < i32(p.in_h) && iw >= 0 && iw < i32(p.in_w)) {
            v = n_in[((n * p.in_c + c) * p.in_h + u32(ih)) * p.in_w + u32(iw)];
        }
        accumulate_one(gbase + i * VG, v);
        ow++;
        if (ow == p.out_w) {
            ow = 0u;
            oh++;
            if (oh == p.out_h) {
                oh = 0u;
                n++;
            }
        }
    }
    if (!valid) { return; }
    // part[z, k, j] at z K CRS + k CRS + j.
    store16(wg.z * p.out_c * crs + j, crs, k0, p.out_c, acc[0], acc[1], acc[2], acc[3]);
}

// ---------------------------------------------------------------- the shared operand's layout

struct GatherParams {
    groups: u32,   // channel groups of 16
    j_count: u32,  // J
    inner: u32,
    outer: u32,
    stride: u32,   // between channels in src
    channels: u32,
}

@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(3) var<storage, read_write> op4_out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn narrow_gather4(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let o = (wg.x + wg.z * nwg.x) * WG + lid;
    let per_group = gp.j_count * VG;
    if (o >= gp.groups * per_group) { return; }
    let g = o / per_group;
    let j = (o % per_group) / VG;
    let q = o % VG;
    let src = (j / gp.inner) * gp.outer + j % gp.inner;
    var v = vec4<f32>();
    for (var e = 0u; e < 4u; e++) {
        let ch = 16u * g + 4u * q + e;
        if (ch < gp.channels) { v[e] = n_in[src + ch * gp.stride]; }
    }
    op4_out[o] = v;
}
