// Pooling over NCHW planes (P = N * C planes of H x W; outputs OH x OW; square kernel K, stride S,
// padding PAD, no dilation, floor mode, OH = (H + 2 PAD - K) / S + 1).
//
// Math (per plane; window of output (oh, ow) = rows oh*S - PAD .. oh*S - PAD + K - 1, same for cols):
//   max_forward:   y = max over the window (padding counts as -inf); idx = h * W + w of the first
//                  maximum in row-major window order (NaN wins, as in PyTorch)
//   max_backward:  gx[h, w] = sum of gy[oh, ow] over the outputs whose window holds (h, w) and whose
//                  idx is h * W + w  (a gather: each input element reads, nothing is scattered)
//   With the pipeline constant BN, max_forward pools the batch norm of x instead of x:
//                  v = (x - mean[c]) * invstd[c] * gamma[c] + beta[c] per element of channel c
//                  (batchnorm.wgsl normalize's expression), so that a batch norm followed by
//                  the pool never writes its full-size output; idx is the argmax of v.
//   With the pipeline constant RELU, both fuse a ReLU after the pooling: max_forward writes
//   relu_value(y) (max(y, 0), a NaN kept), and max_backward only sums gy[oh, ow] where that
//   output y[oh, ow] > 0. Since the ReLU is monotone this equals max pooling of relu(x), with
//   its gradient: a window whose maximum is positive has the same first maximum in x and in
//   relu(x), and a window whose maximum is not positive passes no gradient either way.
//   avg_forward:   y = (sum over the window clipped to the image) / D, where D counts the window
//                  clipped to the padded image (count_include_pad = True, PyTorch's default)
//   avg_backward:  gx[h, w] = sum of gy[oh, ow] / D(oh, ow) over the outputs whose window holds (h, w)
//   gap_forward:   y[p] = (1 / HW) sum_{q < HW} x[p * HW + q]
//   gap_backward:  gx[i] = gy[i / HW] / HW
//
// Dispatch: one thread per output element (max_forward, avg_forward), per input element
// (max_backward, avg_backward, gap_backward), 256 threads per workgroup, linear index
// (wg.x + wg.y * num_workgroups.x) * 256 + local index (grid split over x and y).
// gap_forward: 4 planes per 256-thread workgroup (64 threads per plane, whose sums butterfly.wgsl adds), linear
// workgroup index wg.x + wg.y * num_workgroups.x. gap_forward_small, for planes of at most 64
// values (7x7 and smaller: a ResNet's last feature maps): one thread per plane summing it in
// order, 256 planes per workgroup, linear index as the elementwise kernels' (64 threads would
// mostly idle, and combine their handful of values in six levels).
//
// max_forward, max_backward and avg_backward also take the window as pipeline constants WK, WS,
// WP.
//
// Bindings (group 0): 0 = Params (uniform), then
//   max_forward:  1 x [P*H*W] (read), 2 y [P*OH*OW] (write), 3 idx [P*OH*OW] u32 (write),
//                 4 mean, 5 invstd, 6 gamma, 7 beta [C] (read when BN; any buffers otherwise)
//   max_backward: 1 gy [P*OH*OW] (read), 2 idx [P*OH*OW] u32 (read), 3 gx [P*H*W] (write),
//                 4 y [P*OH*OW] (read when RELU; any buffer but gx otherwise)
//   avg_forward:  1 x (read), 2 y (write)
//   avg_backward: 1 gy (read), 2 gx (write)
//   gap_forward, gap_forward_small:  1 x [P*HW] (read), 2 y [P] (write)
//   gap_backward: 1 gy [P] (read), 2 gx [P*HW] (write)

struct Params {
    planes: u32,  // N * C
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
    channels: u32,  // C (max_forward with BN: the channel of plane p is p % C)
}

@group(0) @binding(0) var<uniform> params: Params;

// The window (kernel, stride, padding) of max_forward and the backward gathers, as
// pipeline-overridable constants equal to params.k, params.stride and params.pad, so that the
// gathers' divisions by the stride compile to shifts or multiplies and the max pool's loops
// over the window unroll. No defaults: a pipeline that uses them without setting them fails to
// build.
override WK: u32;
override WS: u32;
override WP: u32;

// A ReLU after the max pooling (see the header); false by default.
override RELU: bool = false;
// max_forward pools the batch norm of x (see the header); false by default.
override BN: bool = false;

// First output index (inclusive) whose window covers input coordinate `i` along one axis.
fn first_out(i: u32) -> u32 {
    let ip = i + WP;
    if (ip < WK) { return 0u; }
    return (ip - WK) / WS + 1u;
}

// One past the last output index whose window covers input coordinate `i`, clamped to `out_len`.
fn end_out(i: u32, out_len: u32) -> u32 {
    return min((i + WP) / WS + 1u, out_len);
}

// Divisor of output (oh, ow) with count_include_pad = True.
fn avg_divisor(oh: u32, ow: u32) -> f32 {
    let hs = i32(oh * params.stride) - i32(params.pad);
    let ws = i32(ow * params.stride) - i32(params.pad);
    let he = min(hs + i32(params.k), i32(params.h + params.pad));
    let we = min(ws + i32(params.k), i32(params.w + params.pad));
    return f32((he - hs) * (we - ws));
}

// The input window of output element o = (plane, oh, ow), clipped to the input, and the offset of
// its input plane.
struct Window {
    base: u32,
    oh: u32,
    ow: u32,
    h0: u32,
    w0: u32,
    h1: u32,
    w1: u32,
}

fn window(o: u32) -> Window {
    let plane_out = params.oh * params.ow;
    let plane = o / plane_out;
    let r = o - plane * plane_out;
    let oh = r / params.ow;
    let ow = r - oh * params.ow;
    let hs = i32(oh * params.stride) - i32(params.pad);
    let ws = i32(ow * params.stride) - i32(params.pad);
    return Window(
        plane * params.h * params.w,
        oh,
        ow,
        u32(max(hs, 0)),
        u32(max(ws, 0)),
        u32(min(hs + i32(params.k), i32(params.h))),
        u32(min(ws + i32(params.k), i32(params.w))),
    );
}

// ---- max_forward ----
@group(0) @binding(1) var<storage, read> mf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mf_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> mf_idx: array<u32>;
@group(0) @binding(4) var<storage, read> mf_mean: array<f32>;
@group(0) @binding(5) var<storage, read> mf_invstd: array<f32>;
@group(0) @binding(6) var<storage, read> mf_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> mf_beta: array<f32>;

@compute @workgroup_size(256)
fn max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.planes * params.oh * params.ow) { return; }
    let win = window(o);
    let base = win.base;
    let hs = i32(win.oh * WS) - i32(WP);
    let ws = i32(win.ow * WS) - i32(WP);
    // -inf, from a runtime value: WGSL forbids constant expressions that evaluate to an infinity
    // (Chrome's Tint rejects the module; naga accepts it).
    var best = bitcast<f32>(0xff800000u | (params.k & 0u));
    // The window's first tap inside the input.
    let first = win.h0 * params.w + win.w0;
    var best_i = first;
    // With BN, the batch norm of the plane's channel.
    var mean = 0.0;
    var invstd = 1.0;
    var gamma = 1.0;
    var beta = 0.0;
    if (BN) {
        let c = (o / (params.oh * params.ow)) % params.channels;  // window()'s plane
        mean = mf_mean[c];
        invstd = mf_invstd[c];
        gamma = mf_gamma[c];
        beta = mf_beta[c];
    }
    // All WK x WK taps in row-major order, each loaded whether or not it lies in the input (a
    // tap outside reads the first one inside) and compared only if it does, with selects: no
    // load waits behind a branch (RADV had loaded the clipped window one tap at a time), and
    // the taps inside are compared in the clipped loops' order.
    for (var a = 0u; a < WK; a = a + 1u) {
        for (var b = 0u; b < WK; b = b + 1u) {
            let h = hs + i32(a);
            let w = ws + i32(b);
            let inside = (h >= i32(win.h0)) & (h < i32(win.h1)) & (w >= i32(win.w0)) &
                (w < i32(win.w1));
            let i = select(first, u32(h) * params.w + u32(w), inside);
            var v = mf_x[base + i];
            if (BN) { v = (v - mean) * invstd * gamma + beta; }
            // A NaN is taken, and once best is one nothing but a NaN replaces it (a compiler
            // that assumes no NaNs may turn `v > best` into `!(v <= best)`).
            let take = inside & (is_nan(v) | (!is_nan(best) & (v > best)));
            best = select(best, v, take);
            best_i = select(best_i, i, take);
        }
    }
    mf_y[o] = select(best, relu_value(best), RELU);
    mf_idx[o] = best_i;
}

// The outputs whose windows hold input element i = (plane, h, w): rows oh0..oh1, columns
// ow0..ow1 of the output plane starting at `base`; `pixel` = h * W + w within the input plane.
struct Reach {
    base: u32,
    pixel: u32,
    oh0: u32,
    oh1: u32,
    ow0: u32,
    ow1: u32,
}

fn reach_of(i: u32) -> Reach {
    let plane_in = params.h * params.w;
    let plane = i / plane_in;
    let r = i - plane * plane_in;
    let h = r / params.w;
    let w = r - h * params.w;
    return Reach(
        plane * params.oh * params.ow,
        r,
        first_out(h),
        end_out(h, params.oh),
        first_out(w),
        end_out(w, params.ow),
    );
}

// ---- max_backward ----
@group(0) @binding(1) var<storage, read> mb_gy: array<f32>;
@group(0) @binding(2) var<storage, read> mb_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_gx: array<f32>;
@group(0) @binding(4) var<storage, read> mb_y: array<f32>;

@compute @workgroup_size(256)
fn max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.planes * params.h * params.w) { return; }
    let reach = reach_of(i);
    let base = reach.base;
    // At most ceil(WK / WS) outputs per axis hold the element, from oh0 / ow0 on. Each
    // candidate's loads are issued whether or not it is one (outside the reach: the plane's
    // first output) and `&`, not `&&`, joins the tests, so that no load waits behind a branch
    // (RADV had waited for each load before the next); the candidates outside add zero, so the
    // sum is in the same order as over the reach alone.
    let most = (WK + WS - 1u) / WS;
    var acc = 0.0;
    for (var a = 0u; a < most; a = a + 1u) {
        for (var b = 0u; b < most; b = b + 1u) {
            let oh = reach.oh0 + a;
            let ow = reach.ow0 + b;
            let inside = (oh < reach.oh1) & (ow < reach.ow1);
            let o = select(base, base + oh * params.ow + ow, inside);
            var hit = inside & (mb_idx[o] == reach.pixel);
            if (RELU) { hit = hit & relu_passes(mb_y[o]); }
            acc = acc + select(0.0, mb_gy[o], hit);
        }
    }
    mb_gx[i] = acc;
}

// ---- avg_forward ----
@group(0) @binding(1) var<storage, read> af_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> af_y: array<f32>;

@compute @workgroup_size(256)
fn avg_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.planes * params.oh * params.ow) { return; }
    let win = window(o);
    let base = win.base;
    var acc = 0.0;
    for (var h = win.h0; h < win.h1; h = h + 1u) {
        for (var w = win.w0; w < win.w1; w = w + 1u) {
            acc = acc + af_x[base + h * params.w + w];
        }
    }
    af_y[o] = acc / avg_divisor(win.oh, win.ow);
}

// ---- avg_backward ----
@group(0) @binding(1) var<storage, read> ab_gy: array<f32>;
@group(0) @binding(2) var<storage, read_write> ab_gx: array<f32>;

@compute @workgroup_size(256)
fn avg_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.planes * params.h * params.w) { return; }
    let reach = reach_of(i);
    let base = reach.base;
    var acc = 0.0;
    for (var oh = reach.oh0; oh < reach.oh1; oh = oh + 1u) {
        for (var ow = reach.ow0; ow < reach.ow1; ow = ow + 1u) {
            acc = acc + ab_gy[base + oh * params.ow + ow] / avg_divisor(oh, ow);
        }
    }
    ab_gx[i] = acc;
}

// ---- gap_forward ----
@group(0) @binding(1) var<storage, read> gf_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> gf_y: array<f32>;

// The reducing workgroup size for butterfly.wgsl (gap_forward: segments of 64 threads).
const REDUCE_WG: u32 = 256u;

@compute @workgroup_size(256)
fn gap_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let lane = lid & 63u;
    let p = (wg.x + wg.y * nwg.x) * 4u + (lid >> 6u);
    let hw = params.h * params.w;
    var acc = 0.0;
    if (p < params.planes) {
        let base = p * hw;
        for (var q = lane; q < hw; q = q + 64u) { acc = acc + gf_x[base + q]; }
    }
    let total = group_sum(lid, acc, 64u);
    if (lane == 0u && p < params.planes) { gf_y[p] = total / f32(hw); }
}

@compute @workgroup_size(256)
fn gap_forward_small(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let p = (wg.x + wg.y * nwg.x) * 256u + lid;
    if (p >= params.planes) { return; }
    let hw = params.h * params.w;
    let base = p * hw;
    var acc = 0.0;
    for (var q = 0u; q < hw; q++) { acc = acc + gf_x[base + q]; }
    gf_y[p] = acc / f32(hw);
}

// ---- gap_backward ----
@group(0) @binding(1) var<storage, read> gb_gy: array<f32>;
@group(0) @binding(2) var<storage, read_write> gb_gx: array<f32>;

@compute @workgroup_size(256)
fn gap_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    let hw = params.h * params.w;
    if (i >= params.planes * hw) { return; }
    gb_gx[i] = gb_gy[i / hw] / f32(hw);
}
