// Optimizer updates (PyTorch semantics) and gradient clipping by global norm. All in place.
//
// Math, per element i < n (p = parameter, g = gradient, lr = learning rate, wd = weight decay):
//   sgd_plain:     p -= lr * (g + wd * p)                                   (momentum 0)
//   sgd_momentum:  d = g + wd * p
//                  buf' = d                      on the first step (first = 1)
//                  buf' = momentum * buf + d     afterwards              (dampening 0)
//                  p -= lr * (nesterov ? d + momentum * buf' : buf')
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
//
// Optimizer state is updated out of place (state in -> state out, primed above), so state
// tensors handed out by Optimizer::state() stay valid snapshots. On the first step the state-in
// bindings are not read (any buffer, e.g. g, may be bound).
//
// Dispatch: the update kernels and clip_scale run one thread per element, 256 per workgroup, the
// grid split over x and y (index = (wg.x + wg.y * num_workgroups.x) * 256 + local index).
// clip_sumsq runs `groups` (<= 65,535) one-dimensional workgroups of 256 threads, each thread
// striding over x by groups * 256, then a workgroup tree reduction. clip_finalize runs one
// workgroup.
//
// Bindings (group 0; 0 = Params uniform in every entry point):
//   sgd_plain:     1 = p (read_write) [n], 2 = g (read) [n]
//   sgd_momentum:  1 = p (read_write) [n], 2 = g (read) [n], 3 = buf (read) [n],
//                  4 = buf' (read_write) [n]
//   adam:          1 = p (read_write) [n], 2 = g (read) [n], 3 = exp_avg (read) [n],
//                  4 = exp_avg_sq (read) [n], 5 = exp_avg' (read_write) [n],
//                  6 = exp_avg_sq' (read_write) [n]
//   clip_sumsq:    1 = x (read) [n], 2 = partials (read_write) [>= offset + groups]
//   clip_finalize: 1 = partials (read) [>= count], 2 = norm (read_write) [1],
//                  3 = coef (read_write) [1]
//   clip_scale:    1 = coef (read) [1], 2 = g (read_write) [n]

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
@group(0) @binding(3) var<storage, read> state1_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> sgd_buf_out: array<f32>;
@group(0) @binding(4) var<storage, read> state2_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> state1_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> state2_out: array<f32>;

@compute @workgroup_size(256)
fn sgd_plain(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let pv = p[i];
    let d = g[i] + params.weight_decay * pv;
    p[i] = pv - params.lr * d;
}

@compute @workgroup_size(256)
fn sgd_momentum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let pv = p[i];
    let d = g[i] + params.weight_decay * pv;
    var buf = d;
    if ((params.flags & 2u) == 0u) { buf = params.momentum * state1_in[i] + d; }
    sgd_buf_out[i] = buf;
    var step = buf;
    if ((params.flags & 1u) != 0u) { step = d + params.momentum * buf; }
    p[i] = pv - params.lr * step;
}

@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = elem_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    var pv = p[i];
    var gv = g[i];
    if ((params.flags & 1u) != 0u) {
        pv = pv * (1.0 - params.lr * params.weight_decay);
    } else {
        gv = gv + params.weight_decay * pv;
    }
    var m0 = 0.0;
    var v0 = 0.0;
    if ((params.flags & 2u) == 0u) {
        m0 = state1_in[i];
        v0 = state2_in[i];
    }
    let m = m0 + (1.0 - params.momentum) * (gv - m0);
    let v = params.beta2 * v0 + (1.0 - params.beta2) * gv * gv;
    state1_out[i] = m;
    state2_out[i] = v;
    let denom = sqrt(v) / params.bc2_sqrt + params.eps;
    p[i] = pv - params.step_size * (m / denom);
}

// ---- clipping ----
var<workgroup> partial: array<f32, 256>;

fn tree_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { partial[lid] = partial[lid] + partial[lid + s]; }
        workgroupBarrier();
    }
    return partial[0];
}

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
    let total = tree_sum(lid, acc);
    if (lid == 0u) { sq_partials[params.offset + wg.x] = total; }
}

@group(0) @binding(1) var<storage, read> fin_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> fin_norm: array<f32>;
@group(0) @binding(3) var<storage, read_write> fin_coef: array<f32>;

@compute @workgroup_size(256)
fn clip_finalize(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var j = lid; j < params.offset; j = j + 256u) { acc = acc + fin_partials[j]; }
    let total = tree_sum(lid, acc);
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
