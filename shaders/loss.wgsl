// Row-wise softmax and the fused softmax + cross-entropy (loss and logits' gradient in one pass).
//
// Math, for a row z of K logits (row r of an [N, K] tensor), m = max_j z_j, s = sum_j exp(z_j - m):
//   softmax_rows:  p_j = exp(z_j - m) / s
//   softmax_xent:  target t_j = (1 - eps) [j == y_r] + eps / K         (label smoothing eps, as PyTorch)
//                  row_loss[r] = log s - (1 - eps) (z_y - m) - (eps / K) sum_j (z_j - m)
//                              = -sum_j t_j log p_j
//                  glogits[r, j] = (p_j - t_j) * grad_scale     (grad_scale = 1/N for the batch mean)
//                  An out-of-range label (y_r >= K) makes row_loss[r] and the row's gradient NaN
//                  (NaN comes in through params.nan_bits so no compiler can fold it away); the host
//                  API validates labels it can see, see src/ops/loss.rs.
//   The batch mean of row_loss is taken afterwards by the reduction kernels.
//
// Dispatch: one workgroup of 256 threads per row; the row grid is split over x and y to respect the
// 65,535 limit (row = wg.x + wg.y * num_workgroups.x). Threads stride over the row's K entries and
// combine their partial max / sums with butterfly.wgsl's reductions (every thread gets the results).
//
// Bindings (group 0):
//   softmax_rows:  0 = Params, 1 = logits (read) [N, K], 2 = probs (read_write) [N, K]
//   softmax_xent:  0 = Params, 1 = logits (read) [N, K], 2 = labels (read, u32) [N],
//                  3 = row_loss (read_write) [N], 4 = glogits (read_write) [N, K]

struct Params {
    rows: u32,
    classes: u32,
    smoothing: f32,
    grad_scale: f32,
    nan_bits: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;

// The reducing workgroup size for butterfly.wgsl (a row's maximum and sums over 256 threads).
const REDUCE_WG: u32 = 256u;

fn row_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// Row maximum, then (sum_j exp(z_j - m), sum_j (z_j - m)).
fn row_stats(lid: u32, base: u32) -> vec3<f32> {
    let k = params.classes;
    var mx = -3.402823e38;
    for (var j = lid; j < k; j = j + 256u) { mx = max(mx, logits[base + j]); }
    let m = group_max(lid, mx, REDUCE_WG);
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < k; j = j + 256u) {
        let d = logits[base + j] - m;
        acc = acc + vec2<f32>(exp(d), d);
    }
    let sums = group_sum2(lid, acc, REDUCE_WG);
    return vec3<f32>(m, sums.x, sums.y);
}

@group(0) @binding(2) var<storage, read_write> probs: array<f32>;

@compute @workgroup_size(256)
fn softmax_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wg, nwg);
    if (r >= params.rows) { return; }
    let base = r * params.classes;
    let st = row_stats(lid, base);
    let inv = 1.0 / st.y;
    for (var j = lid; j < params.classes; j = j + 256u) {
        probs[base + j] = exp(logits[base + j] - st.x) * inv;
    }
}

@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> glogits: array<f32>;

@compute @workgroup_size(256)
fn softmax_xent(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wg, nwg);
    if (r >= params.rows) { return; }
    let k = params.classes;
    let base = r * k;
    let st = row_stats(lid, base);
    let m = st.x;
    let inv_s = 1.0 / st.y;
    let y = labels[r];
    let valid = y < k;
    let eps = params.smoothing;
    let uniform_t = eps / f32(k);
    let nan = bitcast<f32>(params.nan_bits);
    if (lid == 0u) {
        var loss = nan;
        if (valid) {
            loss = log(st.y) - (1.0 - eps) * (logits[base + y] - m) - uniform_t * st.z;
        }
        row_loss[r] = loss;
    }
    for (var j = lid; j < k; j = j + 256u) {
        let p = exp(logits[base + j] - m) * inv_s;
        var t = uniform_t;
        if (j == y) { t = t + (1.0 - eps); }
        var g = (p - t) * params.grad_scale;
        if (!valid) { g = nan; }
        glogits[base + j] = g;
    }
}
