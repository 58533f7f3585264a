// Optimizer updates (PyTorch semantics) and gradient clipping by global norm. All in place.
//
// Math, per element i < n (p = parameter, g = gradient, lr = learning rate, wd = weight decay):
//   sgd_plain:     p -= lr * (g + wd * p)                                   (momentum 0)
//   sgd_momentum:  d = g + wd * p
//                  buf' = d                      on the first step (first = 1)
//                  buf' = momentum * buf + d     afterwards              (dampening 0)
//                  p -= lr * (nesterov ? d + momentum * buf' : buf')
//   sgd_momentum_group: sgd_momentum for up to 8 parameter tensors at once (sgd_momentum_group2:
//                  up to 2, for devices with fewer storage buffers)
//   adam_group:    adam for up to 5 parameter tensors at once (adam_group2: up to 2)
//   adam:          decoupled (AdamW): p *= 1 - lr * wd;  coupled (Adam): g' = g + wd * p
//                  m' = m + (1 - beta1) * (g' - m)                        (torch's lerp)
//                  v' = beta2 * v + (1 - beta2) * g' * g'
//                  p -= step_size * m' / (sqrt(v') / bc2_sqrt + eps)
//                  (m = v = 0 on the first step, when first = 1)
//                  with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) computed on
//                  the host for step count t.
//   clip_sumsq:    partials[offset + w] = sum of x[i]^2 over the elements workgroup w visits
//   clip_finalize: norm[0] = sqrt(sum_j partials[j], j < count);
//                  coef[0] = min(1, max_norm / (norm[0] + 1e-6))              (torch.nn.utils)
//   clip_scale:    g[i] *= coef[0]
//   clip_sumsq_group, clip_scale_group: clip_sumsq and clip_scale for up to 7 tensors at once
//
// Optimizer state is updated in place, as the parameters are (Optimizer::state() copies it). On
// the first step the state bindings are written without being read (a fresh buffer is bound).
//
// Dispatch: the update kernels and clip_scale run one thread per element, 256 per workgroup, the
// grid split over x and y (index = (wg.x + wg.y * num_workgroups.x) * 256 + local index);
// the grouped updates and clip_scale_group the same over the concatenated workgroups
// of their slots (see there). clip_sumsq runs `groups` (<= 256) one-dimensional workgroups of
// 256 threads, each thread striding over x by groups * 256, then a workgroup reduction (butterfly.wgsl);
// clip_sumsq_group the same for each slot in turn along x. clip_finalize runs one workgroup.
//
// Bindings (group 0; 0 = Params uniform in every entry point):
//   sgd_plain:     1 = p (read_write) [n], 2 = g (read) [n]
//   sgd_momentum:  1 = p (read_write) [n], 2 = g (read) [n], 3 = buf (read_write) [n]
//   sgd_momentum_group: 0 = GroupParams (uniform); slot s < 8 at 3 s + 1 .. 3 s + 3 as
//                  sgd_momentum's 1 .. 3 (unused slots bound to placeholders: one read-only
//                  and one read-write buffer for all of them); 24 storage buffers, within
//                  Metal's 29. sgd_momentum_group2: slots 0 and 1 alone, 6 storage buffers
//   adam:          1 = p (read_write) [n], 2 = g (read) [n], 3 = exp_avg (read_write) [n],
//                  4 = exp_avg_sq (read_write) [n]
//   adam_group:    0 = AdamGroupParams (uniform); slot s < 5 at 4 s + 1 .. 4 s + 4 as adam's
//                  1 .. 4 (unused slots bound to placeholders as sgd_momentum_group's);
//                  20 storage buffers. adam_group2: slots 0 and 1 alone, 8 storage buffers
//   clip_sumsq:    1 = x (read) [n], 2 = partials (read_write) [>= offset + groups]
//   clip_finalize: 1 = partials (read) [>= count], 2 = norm (read_write) [1],
//                  3 = coef (read_write) [1]
//   clip_scale:    1 = coef (read) [1], 2 = g (read_write) [n]
//   clip_sumsq_group: 0 = ClipGroupParams (uniform), 1 .. 7 = slot s's x at s + 1 (read),
//                  8 = partials (read_write): 8 storage buffers, WebGPU's default limit
//   clip_scale_group: 0 = ClipGroupParams, 1 .. 7 = slot s's g at s + 1 (read_write),
//                  8 = coef (read)
//                  (unused slots of both bound to a placeholder, never read or written)

struct Params {
    n: u32,
    flags: u32,      // bit 0: sgd nesterov / adam decoupled; bit 1: first step
    offset: u32,     // clip_sumsq: first partial slot; clip_finalize: number of partials
    _pad0: u32,
    lr: f32,
    weight_decay: f32,
    momentum: f32,   // sgd momentum; adam beta1
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
    max_norm: f32,
}

@group(0) @binding(0) var<uniform> params: Params;

fn elem_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

// ---- parameter updates ----
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> state1: array<f32>;
@group(0) @binding(4) var<storage, read_write> state2: array<f32>;

@compute @workgroup_size(256)
fn sgd_plain(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    p[i] = plain_step(p[i], g[i]);
}

// One element of SGD without momentum: p' from the parameter pv and the gradient gv.
fn plain_step(pv: f32, gv: f32) -> f32 {
    let d = gv + params.weight_decay * pv;
    return pv - params.lr * d;
}

// One element of SGD with momentum (see the header): (p', buf') from the parameter pv, the
// gradient gv and the old momentum buffer's value old (unread on the first step). Shared by
// sgd_momentum and sgd_momentum_group, so that both compute the same bits.
fn momentum_step(pv: f32, gv: f32, old: f32, first: bool, nesterov: bool, momentum: f32,
                 weight_decay: f32, lr: f32) -> vec2<f32> {
    let d = gv + weight_decay * pv;
    var buf = d;
    if (!first) { buf = momentum * old + d; }
    var step = buf;
    if (nesterov) { step = d + momentum * buf; }
    return vec2<f32>(pv - lr * step, buf);
}

@compute @workgroup_size(256)
fn sgd_momentum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let first = (params.flags & 2u) != 0u;
    var old = 0.0;
    if (!first) { old = state1[i]; }
    let r = momentum_step(p[i], g[i], old, first, (params.flags & 1u) != 0u, params.momentum,
                          params.weight_decay, params.lr);
    state1[i] = r.y;
    p[i] = r.x;
}

// ---- SGD with momentum, GROUP_SLOTS parameters per dispatch ----
// Slot s (< gp.count) updates one parameter tensor of gp.n[s] elements with learning rate
// gp.lr[s] over the workgroups [gp.start[s], gp.start[s + 1]) of the linear workgroup index
// (gp.start[0] = 0; the last slot's range runs to the grid's end, its surplus workgroups
// exit). Bit s of gp.first: the slot's first step. One dispatch instead of one per tensor: a
// ResNet-18 step's 62 become 8, most of them tensors of a few hundred elements whose own
// dispatches cost more than their work.
const GROUP_SLOTS: u32 = 8u;

struct GroupParams {
    count: u32,      // slots in use, 1..=GROUP_SLOTS
    flags: u32,      // bit 0: nesterov
    first: u32,      // bit s: slot s takes its first step
    _pad0: u32,
    momentum: f32,
    weight_decay: f32,
    _pad1: u32,
    _pad2: u32,
    start: array<vec4<u32>, 2>,  // slot s at [s / 4][s % 4]
    n: array<vec4<u32>, 2>,
    lr: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<uniform> gp: GroupParams;
@group(0) @binding(1) var<storage, read_write> gp0: array<f32>;
@group(0) @binding(3) var<storage, read_write> gb0: array<f32>;
@group(0) @binding(4) var<storage, read_write> gp1: array<f32>;
@group(0) @binding(5) var<storage, read> gg1: array<f32>;
@group(0) @binding(6) var<storage, read_write> gb1: array<f32>;
@group(0) @binding(7) var<storage, read_write> gp2: array<f32>;
@group(0) @binding(8) var<storage, read> gg2: array<f32>;
@group(0) @binding(9) var<storage, read_write> gb2: array<f32>;
@group(0) @binding(10) var<storage, read_write> gp3: array<f32>;
@group(0) @binding(11) var<storage, read> gg3: array<f32>;
@group(0) @binding(12) var<storage, read_write> gb3: array<f32>;
@group(0) @binding(13) var<storage, read_write> gp4: array<f32>;
@group(0) @binding(14) var<storage, read> gg4: array<f32>;
@group(0) @binding(15) var<storage, read_write> gb4: array<f32>;
@group(0) @binding(16) var<storage, read_write> gp5: array<f32>;
@group(0) @binding(17) var<storage, read> gg5: array<f32>;
@group(0) @binding(18) var<storage, read_write> gb5: array<f32>;
@group(0) @binding(19) var<storage, read_write> gp6: array<f32>;
@group(0) @binding(20) var<storage, read> gg6: array<f32>;
@group(0) @binding(21) var<storage, read_write> gb6: array<f32>;
@group(0) @binding(22) var<storage, read_write> gp7: array<f32>;
@group(0) @binding(23) var<storage, read> gg7: array<f32>;
@group(0) @binding(24) var<storage, read_write> gb7: array<f32>;
@group(0) @binding(2) var<storage, read> gg0: array<f32>;

// (p', buf') of element i of slot s, from its parameter, gradient and old buffer values.
fn group_step(s: u32, pv: f32, gv: f32, old: f32) -> vec2<f32> {
    let first = (gp.first & (1u << s)) != 0u;
    return momentum_step(pv, gv, old, first, (gp.flags & 1u) != 0u, gp.momentum,
                         gp.weight_decay, gp.lr[s / 4u][s % 4u]);
}

// The slot of a grouped dispatch's workgroup w (linear index): the last of its `count` slots
// whose first workgroup (increasing; slots 0-3 in lo, 4-7 in hi: a params struct's start[0]
// and start[1]) is at most w. Two vectors rather than the array, which a function would hold
// as a private array indexed at run time. Shared by the grouped updates and clipping kernels.
fn group_slot(w: u32, count: u32, lo: vec4<u32>, hi: vec4<u32>) -> u32 {
    var s = 0u;
    for (var k = 1u; k < count; k++) {
        if (w >= select(hi, lo, k < 4u)[k % 4u]) { s = k; }
    }
    return s;
}

// Where thread lid of a grouped element-wise dispatch's workgroup w works: (s, i, n), its
// slot s (group_slot), the element i of slot s's tensor and that tensor's size n (i >= n past
// its end). start_lo / start_hi and n_lo / n_hi: a params struct's start and n, as group_slot
// takes them. Shared by sgd_momentum_group(2), adam_group(2) and clip_scale_group.
fn group_place(w: u32, lid: u32, count: u32, start_lo: vec4<u32>, start_hi: vec4<u32>,
               n_lo: vec4<u32>, n_hi: vec4<u32>) -> vec3<u32> {
    let s = group_slot(w, count, start_lo, start_hi);
    let first = select(start_hi, start_lo, s < 4u)[s % 4u];
    return vec3<u32>(s, (w - first) * 256u + lid, select(n_hi, n_lo, s < 4u)[s % 4u]);
}

@compute @workgroup_size(256)
fn sgd_momentum_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let at = group_place(wg.x + wg.y * nwg.x, lid, gp.count, gp.start[0], gp.start[1],
                         gp.n[0], gp.n[1]);
    if (at.y >= at.z) { return; }
    let s = at.x;
    let i = at.y;
    // The buffer is read on the first step too (a fresh one, whose values the step ignores).
    switch s {
        case 0u: { let r = group_step(0u, gp0[i], gg0[i], gb0[i]); gb0[i] = r.y; gp0[i] = r.x; }
        case 1u: { let r = group_step(1u, gp1[i], gg1[i], gb1[i]); gb1[i] = r.y; gp1[i] = r.x; }
        case 2u: { let r = group_step(2u, gp2[i], gg2[i], gb2[i]); gb2[i] = r.y; gp2[i] = r.x; }
        case 3u: { let r = group_step(3u, gp3[i], gg3[i], gb3[i]); gb3[i] = r.y; gp3[i] = r.x; }
        case 4u: { let r = group_step(4u, gp4[i], gg4[i], gb4[i]); gb4[i] = r.y; gp4[i] = r.x; }
        case 5u: { let r = group_step(5u, gp5[i], gg5[i], gb5[i]); gb5[i] = r.y; gp5[i] = r.x; }
        case 6u: { let r = group_step(6u, gp6[i], gg6[i], gb6[i]); gb6[i] = r.y; gp6[i] = r.x; }
        default: { let r = group_step(7u, gp7[i], gg7[i], gb7[i]); gb7[i] = r.y; gp7[i] = r.x; }
    }
}

// sgd_momentum_group's first two slots alone: bindings 1 .. 6, within WebGPU's default limit of
// 8 storage buffers, for devices that bind fewer than the 24 of eight slots.
@compute @workgroup_size(256)
fn sgd_momentum_group2(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let at = group_place(wg.x + wg.y * nwg.x, lid, gp.count, gp.start[0], gp.start[1],
                         gp.n[0], gp.n[1]);
    if (at.y >= at.z) { return; }
    let s = at.x;
    let i = at.y;
    if (s == 0u) {
        let r = group_step(0u, gp0[i], gg0[i], gb0[i]); gb0[i] = r.y; gp0[i] = r.x;
    } else {
        let r = group_step(1u, gp1[i], gg1[i], gb1[i]); gb1[i] = r.y; gp1[i] = r.x;
    }
}

// The constants of an Adam update: flags bit 0 decoupled, bit 1 first step.
struct AdamConsts {
    flags: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

// One element of Adam / AdamW (see the header): (p', m', v') from the parameter pv, the gradient
// gv and the old moments m_in, v_in (unread on the first step). Shared by adam and adam_group,
// so that both compute the same bits.
fn adam_step(pv_in: f32, gv_in: f32, m_in: f32, v_in: f32, k: AdamConsts) -> vec3<f32> {
    var pv = pv_in;
    var gv = gv_in;
    if ((k.flags & 1u) != 0u) {
        pv = pv * (1.0 - k.lr * k.weight_decay);
    } else {
        gv = gv + k.weight_decay * pv;
    }
    var m0 = 0.0;
    var v0 = 0.0;
    if ((k.flags & 2u) == 0u) {
        m0 = m_in;
        v0 = v_in;
    }
    let m = m0 + (1.0 - k.beta1) * (gv - m0);
    let v = k.beta2 * v0 + (1.0 - k.beta2) * gv * gv;
    let denom = sqrt(v) / k.bc2_sqrt + k.eps;
    return vec3<f32>(pv - k.step_size * (m / denom), m, v);
}

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    var m_in = 0.0;
    var v_in = 0.0;
    if ((params.flags & 2u) == 0u) {
        m_in = state1[i];
        v_in = state2[i];
    }
    let k = AdamConsts(params.flags, params.lr, params.weight_decay, params.momentum,
                       params.beta2, params.eps, params.step_size, params.bc2_sqrt);
    let r = adam_step(p[i], g[i], m_in, v_in, k);
    state1[i] = r.y;
    state2[i] = r.z;
    p[i] = r.x;
}

// ---- Adam / AdamW, ADAM_SLOTS parameters per dispatch ----
// As sgd_momentum_group, with slot s's step size ap.step_size[s] and bias correction
// ap.bc2_sqrt[s] (each tensor keeps its own step count) and four bindings per slot.
const ADAM_SLOTS: u32 = 5u;

struct AdamGroupParams {
    count: u32,      // slots in use, 1..=ADAM_SLOTS
    flags: u32,      // bit 0: decoupled
    first: u32,      // bit s: slot s takes its first step
    _pad0: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    start: array<vec4<u32>, 2>,  // slot s at [s / 4][s % 4]
    n: array<vec4<u32>, 2>,
    lr: array<vec4<f32>, 2>,
    step_size: array<vec4<f32>, 2>,
    bc2_sqrt: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<uniform> ap: AdamGroupParams;
@group(0) @binding(1) var<storage, read_write> aw0: array<f32>;
@group(0) @binding(3) var<storage, read_write> am0: array<f32>;
@group(0) @binding(4) var<storage, read_write> av0: array<f32>;
@group(0) @binding(5) var<storage, read_write> aw1: array<f32>;
@group(0) @binding(6) var<storage, read> ag1: array<f32>;
@group(0) @binding(7) var<storage, read_write> am1: array<f32>;
@group(0) @binding(8) var<storage, read_write> av1: array<f32>;
@group(0) @binding(9) var<storage, read_write> aw2: array<f32>;
@group(0) @binding(10) var<storage, read> ag2: array<f32>;
@group(0) @binding(11) var<storage, read_write> am2: array<f32>;
@group(0) @binding(12) var<storage, read_write> av2: array<f32>;
@group(0) @binding(13) var<storage, read_write> aw3: array<f32>;
@group(0) @binding(14) var<storage, read> ag3: array<f32>;
@group(0) @binding(15) var<storage, read_write> am3: array<f32>;
@group(0) @binding(16) var<storage, read_write> av3: array<f32>;
@group(0) @binding(17) var<storage, read_write> aw4: array<f32>;
@group(0) @binding(18) var<storage, read> ag4: array<f32>;
@group(0) @binding(19) var<storage, read_write> am4: array<f32>;
@group(0) @binding(20) var<storage, read_write> av4: array<f32>;
@group(0) @binding(2) var<storage, read> ag0: array<f32>;

// (p', m', v') of element i of slot s.
fn adam_group_step(s: u32, pv: f32, gv: f32, m_in: f32, v_in: f32) -> vec3<f32> {
    let first = select(0u, 2u, (ap.first & (1u << s)) != 0u);
    let k = AdamConsts(ap.flags | first, ap.lr[s / 4u][s % 4u], ap.weight_decay, ap.beta1,
                       ap.beta2, ap.eps, ap.step_size[s / 4u][s % 4u],
                       ap.bc2_sqrt[s / 4u][s % 4u]);
    return adam_step(pv, gv, m_in, v_in, k);
}

@compute @workgroup_size(256)
fn adam_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let at = group_place(wg.x + wg.y * nwg.x, lid, ap.count, ap.start[0], ap.start[1],
                         ap.n[0], ap.n[1]);
    if (at.y >= at.z) { return; }
    let s = at.x;
    let i = at.y;
    // The moments are read on the first step too (fresh buffers, whose values the step ignores).
    switch s {
        case 0u: {
            let r = adam_group_step(0u, aw0[i], ag0[i], am0[i], av0[i]);
            am0[i] = r.y;
            av0[i] = r.z;
            aw0[i] = r.x;
        }
        case 1u: {
            let r = adam_group_step(1u, aw1[i], ag1[i], am1[i], av1[i]);
            am1[i] = r.y;
            av1[i] = r.z;
            aw1[i] = r.x;
        }
        case 2u: {
            let r = adam_group_step(2u, aw2[i], ag2[i], am2[i], av2[i]);
            am2[i] = r.y;
            av2[i] = r.z;
            aw2[i] = r.x;
        }
        case 3u: {
            let r = adam_group_step(3u, aw3[i], ag3[i], am3[i], av3[i]);
            am3[i] = r.y;
            av3[i] = r.z;
            aw3[i] = r.x;
        }
        default: {
            let r = adam_group_step(4u, aw4[i], ag4[i], am4[i], av4[i]);
            am4[i] = r.y;
            av4[i] = r.z;
            aw4[i] = r.x;
        }
    }
}

// adam_group's first two slots alone: bindings 1 .. 8, WebGPU's default limit of 8 storage
// buffers, for devices that bind fewer than the 20 of five slots.
@compute @workgroup_size(256)
fn adam_group2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let at = group_place(wg.x + wg.y * nwg.x, lid, ap.count, ap.start[0], ap.start[1],
                         ap.n[0], ap.n[1]);
    if (at.y >= at.z) { return; }
    let s = at.x;
    let i = at.y;
    if (s == 0u) {
        let r = adam_group_step(0u, aw0[i], ag0[i], am0[i], av0[i]);
        am0[i] = r.y;
        av0[i] = r.z;
        aw0[i] = r.x;
    } else {
        let r = adam_group_step(1u, aw1[i], ag1[i], am1[i], av1[i]);
        am1[i] = r.y;
        av1[i] = r.z;
        aw1[i] = r.x;
    }
}

// ---- sgd_plain4, sgd_momentum4, adam4: four elements per thread ----
// The per-tensor updates on vec4s where a tensor's size is a multiple of 4 (the host's choice;
// params.n then counts vec4s): a quarter of the threads, loads and stores. Each component goes
// through the scalar kernels' own step function (plain_step, momentum_step, adam_step), so the
// bits are theirs. Bindings as the scalar kernels'.
@group(0) @binding(1) var<storage, read_write> p4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> state14: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> state24: array<vec4<f32>>;

@compute @workgroup_size(256)
fn sgd_plain4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let pv = p4[i];
    let gv = g4[i];
    p4[i] = vec4<f32>(plain_step(pv.x, gv.x), plain_step(pv.y, gv.y), plain_step(pv.z, gv.z),
                      plain_step(pv.w, gv.w));
}

@compute @workgroup_size(256)
fn sgd_momentum4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let first = (params.flags & 2u) != 0u;
    let nesterov = (params.flags & 1u) != 0u;
    var old = vec4<f32>(0.0);
    if (!first) { old = state14[i]; }
    let pv = p4[i];
    let gv = g4[i];
    let m = params.momentum;
    let wd = params.weight_decay;
    let lr = params.lr;
    let r0 = momentum_step(pv.x, gv.x, old.x, first, nesterov, m, wd, lr);
    let r1 = momentum_step(pv.y, gv.y, old.y, first, nesterov, m, wd, lr);
    let r2 = momentum_step(pv.z, gv.z, old.z, first, nesterov, m, wd, lr);
    let r3 = momentum_step(pv.w, gv.w, old.w, first, nesterov, m, wd, lr);
    state14[i] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    p4[i] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
}

@compute @workgroup_size(256)
fn adam4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    var m_in = vec4<f32>(0.0);
    var v_in = vec4<f32>(0.0);
    if ((params.flags & 2u) == 0u) {
        m_in = state14[i];
        v_in = state24[i];
    }
    let k = AdamConsts(params.flags, params.lr, params.weight_decay, params.momentum,
                       params.beta2, params.eps, params.step_size, params.bc2_sqrt);
    let pv = p4[i];
    let gv = g4[i];
    let r0 = adam_step(pv.x, gv.x, m_in.x, v_in.x, k);
    let r1 = adam_step(pv.y, gv.y, m_in.y, v_in.y, k);
    let r2 = adam_step(pv.z, gv.z, m_in.z, v_in.z, k);
    let r3 = adam_step(pv.w, gv.w, m_in.w, v_in.w, k);
    state14[i] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    state24[i] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    p4[i] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
}

// ---- clipping ----
// The reducing workgroup size for butterfly.wgsl (clip_sumsq, clip_finalize).
const REDUCE_WG: u32 = 256u;

@group(0) @binding(1) var<storage, read> sq_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_partials: array<f32>;

@compute @workgroup_size(256)
fn clip_sumsq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let stride = nwg.x * 256u;
    var acc = 0.0;
    for (var i = wg.x * 256u + lid; i < params.n; i = i + stride) {
        let v = sq_x[i];
        acc = fma(v, v, acc);
    }
    let total = group_sum(lid, acc, REDUCE_WG);
    if (lid == 0u) { sq_partials[params.offset + wg.x] = total; }
}

@group(0) @binding(1) var<storage, read> fin_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> fin_norm: array<f32>;
@group(0) @binding(3) var<storage, read_write> fin_coef: array<f32>;

@compute @workgroup_size(256)
fn clip_finalize(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var j = lid; j < params.offset; j = j + 256u) { acc = acc + fin_partials[j]; }
    let total = group_sum(lid, acc, REDUCE_WG);
    if (lid == 0u) {
        let norm = sqrt(total);
        fin_norm[0] = norm;
        fin_coef[0] = min(1.0, params.max_norm / (norm + 1e-6));
    }
}

@group(0) @binding(1) var<storage, read> sc_coef: array<f32>;
@group(0) @binding(2) var<storage, read_write> sc_g: array<f32>;

@compute @workgroup_size(256)
fn clip_scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i < params.n) { sc_g[i] = sc_g[i] * sc_coef[0]; }
}

// ---- clipping, CLIP_SLOTS tensors per dispatch ----
// As sgd_momentum_group: the dispatch's workgroups are its slots' in turn, slot s from workgroup
// cp.start[s] (increasing), cp.groups[s] of them; a workgroup finds its slot and runs that
// slot's case of a switch. Each slot's workgroups do exactly what clip_sumsq's or clip_scale's
// would in a dispatch of its own: local workgroup index w - start[s], the same strides, the
// same sums; clip_sumsq_group writes workgroup w's partial at cp.base + w, which is where the
// per-tensor dispatches, one after another, put it. So both compute the same bits.
const CLIP_SLOTS: u32 = 7u;

struct ClipGroupParams {
    count: u32,      // slots in use, 1..=CLIP_SLOTS
    base: u32,       // clip_sumsq_group: the partial of the dispatch's first workgroup
    _pad0: u32,
    _pad1: u32,
    start: array<vec4<u32>, 2>,   // slot s at [s / 4][s % 4]
    groups: array<vec4<u32>, 2>,  // workgroups of slot s
    n: array<vec4<u32>, 2>,       // elements of slot s
}

@group(0) @binding(0) var<uniform> cp: ClipGroupParams;
@group(0) @binding(1) var<storage, read> cx0: array<f32>;
@group(0) @binding(2) var<storage, read> cx1: array<f32>;
@group(0) @binding(3) var<storage, read> cx2: array<f32>;
@group(0) @binding(4) var<storage, read> cx3: array<f32>;
@group(0) @binding(5) var<storage, read> cx4: array<f32>;
@group(0) @binding(6) var<storage, read> cx5: array<f32>;
@group(0) @binding(7) var<storage, read> cx6: array<f32>;
@group(0) @binding(8) var<storage, read_write> cx_partials: array<f32>;

@group(0) @binding(1) var<storage, read_write> cg0: array<f32>;
@group(0) @binding(2) var<storage, read_write> cg1: array<f32>;
@group(0) @binding(3) var<storage, read_write> cg2: array<f32>;
@group(0) @binding(4) var<storage, read_write> cg3: array<f32>;
@group(0) @binding(5) var<storage, read_write> cg4: array<f32>;
@group(0) @binding(6) var<storage, read_write> cg5: array<f32>;
@group(0) @binding(7) var<storage, read_write> cg6: array<f32>;
@group(0) @binding(8) var<storage, read> cg_coef: array<f32>;

// Element i of slot s's tensor (clip_sumsq_group).
fn clip_x(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return cx0[i]; }
        case 1u: { return cx1[i]; }
        case 2u: { return cx2[i]; }
        case 3u: { return cx3[i]; }
        case 4u: { return cx4[i]; }
        case 5u: { return cx5[i]; }
        default: { return cx6[i]; }
    }
}

@compute @workgroup_size(256)
fn clip_sumsq_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = group_slot(wg.x, cp.count, cp.start[0], cp.start[1]);
    let stride = cp.groups[s / 4u][s % 4u] * 256u;
    let n = cp.n[s / 4u][s % 4u];
    var acc = 0.0;
    for (var i = (wg.x - cp.start[s / 4u][s % 4u]) * 256u + lid; i < n; i = i + stride) {
        let v = clip_x(s, i);
        acc = fma(v, v, acc);
    }
    let total = group_sum(lid, acc, REDUCE_WG);
    if (lid == 0u) { cx_partials[cp.base + wg.x] = total; }
}

@compute @workgroup_size(256)
fn clip_scale_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let at = group_place(wg.x + wg.y * nwg.x, lid, cp.count, cp.start[0], cp.start[1],
                         cp.n[0], cp.n[1]);
    if (at.y >= at.z) { return; }
    let s = at.x;
    let i = at.y;
    let c = cg_coef[0];
    switch s {
        case 0u: { cg0[i] = cg0[i] * c; }
        case 1u: { cg1[i] = cg1[i] * c; }
        case 2u: { cg2[i] = cg2[i] * c; }
        case 3u: { cg3[i] = cg3[i] * c; }
        case 4u: { cg4[i] = cg4[i] * c; }
        case 5u: { cg5[i] = cg5[i] * c; }
        default: { cg6[i] = cg6[i] * c; }
    }
}
