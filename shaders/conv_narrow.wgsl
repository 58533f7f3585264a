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
// Each sum runs in the order written (c, then r, then s; k, r, s; i), one fused multiply-add
// per term, in f32.
//
// Work split: a thread owns two pixels, flat indices 2t and 2t + 1 (forward: output pixels,
// input gradient: input pixels), and a group of up to 16 channels it writes (VG vec4
// accumulators per pixel, override), or, in the weight gradient, one tap j and up to 16 output
// channels k. Every thread of a workgroup walks the same reduction indices in the same order,
// so the operand that does not depend on the thread's pixels or tap (the weights; gy in the
// weight gradient) is the same for all of them at each index: op4's layout (which
// narrow_gather4 makes) holds it as one vec4 per 4 channels, which serves both pixels (on
// lavapipe two pixels per thread took the 8-channel 3x3 forward pass and input gradient at
// 28x28 from 22-24 to 15-17 ms). The other operand is read per pixel, consecutive threads at
// consecutive pixels (or taps). No workgroup memory, no barriers.
//
// Shared reads through the lanes: where the host compiles this file with subgroup lanes
// (src/gpu/lanes.rs; CPU adapters: lavapipe's 8, SwiftShader's 4), the reduction runs in
// blocks of OP_LANES indices, lane l reading index t + l's vec4s of op4 once and every lane
// taking them from it in turn (lanes_broadcast4), in the same order, so the same bits. Each
// read on a CPU driver is a loop over the SIMD lanes, even where all lanes read one address:
// on lavapipe (a 2-core AMD EPYC, AVX2; docs/speed.md, "Narrow kernels read through the
// lanes") the main job's 1 -> 32 stem at 28x28 and batch 128 took 39-42 ms instead of 195-205
// in the weight gradient and 28-40 instead of 73-74 in the forward pass, and an 8 -> 8 3x3
// conv at 28x28 and batch 128 45-54 instead of 145 ms in its forward pass and its input
// gradient each. Without subgroups (the web; lanes_memory.wgsl) OP_LANES is 1 and each thread
// reads every index's op4 itself.
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

// ---------------------------------------------------------------- the reduction, by lanes

// The three kernels' reductions, told apart by a constant at each call.
const FORWARD: u32 = 0u;
const INPUT_GRAD: u32 = 1u;
const WEIGHT_GRAD: u32 = 2u;

// Lanes that read op4, one reduction index each, and hand what they read to every lane
// (lanes_broadcast4): the subgroups' lanes up to BROADCAST_LANES (8 on lavapipe, 4 on
// SwiftShader); 1 without subgroups, where each thread reads every index's op4 itself.
override OP_LANES: u32 = min(SUBGROUP_LANES, BROADCAST_LANES);

// The thread's sums, indexed by constants only: acc[q] for channels 4q .. 4q + 3 of its group
// at its first pixel (or its tap), acc[4 + q] at its second pixel.
var<private> acc: array<vec4<f32>, 8>;

// The forward pass's and the input gradient's two pixels per thread, (image, row, column)
// each, and whether they exist.
var<private> px0: vec3<u32>;
var<private> px1: vec3<u32>;
var<private> pvalid0: bool;
var<private> pvalid1: bool;

// The weight gradient's tap (c, r, s) per thread, whether it exists, and its current pixel
// (image, row, column), stepped along with the reduction index.
var<private> wtap: vec3<u32>;
var<private> wvalid: bool;
var<private> wpx: vec3<u32>;

// Pixel `i` of planes `width` wide and `plane` pixels: (image, row, column).
fn pixel_at(i: u32, plane: u32, width: u32) -> vec3<u32> {
    return vec3<u32>(i / plane, (i % plane) / width, i % width);
}

// The VG vec4s of op4 from `at` (zeros unless `ok`).
fn op4_at(at: u32, ok: bool) -> array<vec4<f32>, 4> {
    var q = array<vec4<f32>, 4>();
    if (ok) {
        q[0] = n_op4[at];
        if (VG > 1u) { q[1] = n_op4[at + 1u]; }
        if (VG > 2u) { q[2] = n_op4[at + 2u]; }
        if (VG > 3u) { q[3] = n_op4[at + 3u]; }
    }
    return q;
}

// In every lane, lane `l`'s q (a constant `l` at each call).
fn from_lane(q: array<vec4<f32>, 4>, l: u32) -> array<vec4<f32>, 4> {
    var w = array<vec4<f32>, 4>();
    w[0] = lanes_broadcast4(q[0], l);
    if (VG > 1u) { w[1] = lanes_broadcast4(q[1], l); }
    if (VG > 2u) { w[2] = lanes_broadcast4(q[2], l); }
    if (VG > 3u) { w[3] = lanes_broadcast4(q[3], l); }
    return w;
}

// acc[q] += w[q] x0 at the first pixel (or the tap) and acc[4 + q] += w[q] x1 at the second.
fn accumulate(w: array<vec4<f32>, 4>, x0: f32, x1: f32, two: bool) {
    let a = vec4<f32>(x0);
    let b = vec4<f32>(x1);
    acc[0] = fma(w[0], a, acc[0]);
    if (VG > 1u) { acc[1] = fma(w[1], a, acc[1]); }
    if (VG > 2u) { acc[2] = fma(w[2], a, acc[2]); }
    if (VG > 3u) { acc[3] = fma(w[3], a, acc[3]); }
    if (two) {
        acc[4] = fma(w[0], b, acc[4]);
        if (VG > 1u) { acc[5] = fma(w[1], b, acc[5]); }
        if (VG > 2u) { acc[6] = fma(w[2], b, acc[6]); }
        if (VG > 3u) { acc[7] = fma(w[3], b, acc[7]); }
    }
}

// x[n, c, h, w], 0 outside the planes (or where !ok).
fn x_at(ok: bool, n: u32, c: u32, h: i32, w: i32) -> f32 {
    if (ok && h >= 0 && h < i32(p.in_h) && w >= 0 && w < i32(p.in_w)) {
        return n_in[((n * p.in_c + c) * p.in_h + u32(h)) * p.in_w + u32(w)];
    }
    return 0.0;
}

// gy[n, k, h, w], 0 outside the planes (or where !ok).
fn gy_at(ok: bool, n: u32, k: u32, h: i32, w: i32) -> f32 {
    if (ok && h >= 0 && h < i32(p.out_h) && w >= 0 && w < i32(p.out_w)) {
        return n_in[((n * p.out_c + k) * p.out_h + u32(h)) * p.out_w + u32(w)];
    }
    return 0.0;
}

// One term of the sum, at reduction index t, with op4's vec4s w there: the weight gradient's
// pixel t at the thread's tap (then its next pixel); the forward pass's t = (c R + r) S + s
// and the input gradient's t = (k R + r) S + s at both pixels.
fn term(kind: u32, t: u32, w: array<vec4<f32>, 4>) {
    if (kind == WEIGHT_GRAD) {
        let h = i32(wpx.y * p.stride + wtap.y) - i32(p.pad);
        let w0 = i32(wpx.z * p.stride + wtap.z) - i32(p.pad);
        accumulate(w, x_at(wvalid, wpx.x, wtap.x, h, w0), 0.0, false);
        wpx.z++;
        if (wpx.z == p.out_w) {
            wpx.z = 0u;
            wpx.y++;
            if (wpx.y == p.out_h) {
                wpx.y = 0u;
                wpx.x++;
            }
        }
        return;
    }
    let c = t / (KH * KW);
    let r = (t / KW) % KH;
    let s = t % KW;
    if (kind == FORWARD) {
        let h0 = i32(px0.y * p.stride + r) - i32(p.pad);
        let h1 = i32(px1.y * p.stride + r) - i32(p.pad);
        let w0 = i32(px0.z * p.stride + s) - i32(p.pad);
        let w1 = i32(px1.z * p.stride + s) - i32(p.pad);
        accumulate(w, x_at(pvalid0, px0.x, c, h0, w0), x_at(pvalid1, px1.x, c, h1, w1), true);
    } else {
        let h0 = i32(px0.y + p.pad) - i32(r);
        let h1 = i32(px1.y + p.pad) - i32(r);
        let w0 = i32(px0.z + p.pad) - i32(s);
        let w1 = i32(px1.z + p.pad) - i32(s);
        accumulate(w, gy_at(pvalid0, px0.x, c, h0, w0), gy_at(pvalid1, px1.x, c, h1, w1), true);
    }
}

// The terms of indices t .. t + n - 1 (n <= OP_LANES), in order, index t + l's op4 from
// lane l's q: each lane index a constant, as lanes_broadcast4 needs.
fn block(kind: u32, t: u32, n: u32, q: array<vec4<f32>, 4>) {
    term(kind, t, from_lane(q, 0u));
    if (OP_LANES > 1u && n > 1u) { term(kind, t + 1u, from_lane(q, 1u)); }
    if (OP_LANES > 2u && n > 2u) { term(kind, t + 2u, from_lane(q, 2u)); }
    if (OP_LANES > 3u && n > 3u) { term(kind, t + 3u, from_lane(q, 3u)); }
    if (OP_LANES > 4u && n > 4u) { term(kind, t + 4u, from_lane(q, 4u)); }
    if (OP_LANES > 5u && n > 5u) { term(kind, t + 5u, from_lane(q, 5u)); }
    if (OP_LANES > 6u && n > 6u) { term(kind, t + 6u, from_lane(q, 6u)); }
    if (OP_LANES > 7u && n > 7u) { term(kind, t + 7u, from_lane(q, 7u)); }
}

// The thread's sums over the reduction indices `begin` .. `end` - 1 in order, index t's op4 at
// `base` + t VG: in blocks of OP_LANES indices, lane l of each reading index t + l's.
fn reduce(kind: u32, begin: u32, end: u32, base: u32, lid: u32) {
    let lane = lid % OP_LANES;
    for (var t = begin; t < end; t += OP_LANES) {
        block(kind, t, min(OP_LANES, end - t), op4_at(base + (t + lane) * VG, t + lane < end));
    }
}

// ---------------------------------------------------------------- the kernels

// The forward pass's or the input gradient's sums (`kind`) at the thread's two pixels, of
// pixel group `group` in planes `width` wide of `plane` pixels, over the `count` reduction
// indices of channel group `cg`.
fn pixel_sums(kind: u32, group: u32, cg: u32, lid: u32, plane: u32, width: u32, count: u32) {
    let i0 = 2u * (group * WG + lid);
    pvalid0 = i0 < p.batch * plane;
    pvalid1 = i0 + 1u < p.batch * plane;
    px0 = pixel_at(i0, plane, width);
    px1 = pixel_at(i0 + 1u, plane, width);
    reduce(kind, 0u, count, cg * count * VG, lid);
}

@compute @workgroup_size(WG)
fn narrow_forward(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let plane = p.out_h * p.out_w;
    pixel_sums(FORWARD, wg.x + wg.z * nwg.x, wg.y, lid, plane, p.out_w, p.in_c * KH * KW);
    let k0 = 16u * wg.y;
    let b0 = bias4(k0);
    let b1 = bias4(k0 + 4u);
    let b2 = bias4(k0 + 8u);
    let b3 = bias4(k0 + 12u);
    if (pvalid0) {
        let out = px0.x * p.out_c * plane + px0.y * p.out_w + px0.z;
        store16(out, plane, k0, p.out_c, acc[0] + b0, acc[1] + b1, acc[2] + b2, acc[3] + b3);
    }
    if (pvalid1) {
        let out = px1.x * p.out_c * plane + px1.y * p.out_w + px1.z;
        store16(out, plane, k0, p.out_c, acc[4] + b0, acc[5] + b1, acc[6] + b2, acc[7] + b3);
    }
}

@compute @workgroup_size(WG)
fn narrow_backward_input(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let plane = p.in_h * p.in_w;
    pixel_sums(INPUT_GRAD, wg.x + wg.z * nwg.x, wg.y, lid, plane, p.in_w, p.out_c * KH * KW);
    let c0 = 16u * wg.y;
    if (pvalid0) {
        let out = px0.x * p.in_c * plane + px0.y * p.in_w + px0.z;
        store16(out, plane, c0, p.in_c, acc[0], acc[1], acc[2], acc[3]);
    }
    if (pvalid1) {
        let out = px1.x * p.in_c * plane + px1.y * p.in_w + px1.z;
        store16(out, plane, c0, p.in_c, acc[4], acc[5], acc[6], acc[7]);
    }
}

@compute @workgroup_size(WG)
fn narrow_backward_weight(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let rs = KH * KW;
    let crs = p.in_c * rs;
    let j = wg.x * WG + lid;
    wvalid = j < crs;
    wtap = vec3<u32>(j / rs, (j % rs) / KW, j % KW);
    let oplane = p.out_h * p.out_w;
    let pixels = p.batch * oplane;
    let begin = wg.z * p.chunk;
    wpx = pixel_at(begin, oplane, p.out_w);
    // op4 of this channel group: VG vec4s per pixel.
    reduce(WEIGHT_GRAD, begin, min(begin + p.chunk, pixels), wg.y * pixels * VG, lid);
    if (!wvalid) { return; }
    // part[z, k, j] at z K CRS + k CRS + j.
    store16(wg.z * p.out_c * crs + j, crs, 16u * wg.y, p.out_c, acc[0], acc[1], acc[2], acc[3]);
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
