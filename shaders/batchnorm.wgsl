// Batch normalisation over NCHW (per channel c, over the M = N * HW values of that channel).
//
// Math (x viewed as [N, C, HW]; i = (n * C + c) * HW + p):
//   training forward:  mean[c] = (1/M) sum x,  var[c] = (1/M) sum (x - mean)^2  (biased),
//                      invstd[c] = 1 / sqrt(var[c] + eps)
//                      running_mean[c] = (1 - m) * running_mean[c] + m * mean[c]
//                      running_var[c]  = (1 - m) * running_var[c]  + m * var[c] * M / (M - 1)
//   eval forward:      mean = running_mean, invstd = 1 / sqrt(running_var + eps)
//   both:              y = gamma[c] * (x - mean[c]) * invstd[c] + beta[c]   (+ residual if RESIDUAL,
//                      then the ReLU if RELU, a NaN kept: a residual block's relu(bn(x) + identity))
//   backward:          dy = gy (if RELU: 0 where y <= 0, a NaN y passing, relu_passes),
//                      xhat = (x - mean) * invstd
//                      gbeta[c] = sum dy,  ggamma[c] = sum dy * xhat
//                      training: gx = gamma * invstd * (dy - gbeta / M - xhat * ggamma / M)
//                      eval:     gx = gamma * invstd * dy
//
// Reductions are two-level: the M values of a channel are cut into `chunks` chunks of `chunk_len`
// values; one PARTIAL_WG-thread workgroup per (channel, chunk) writes a partial result (its
// threads' results combined by butterfly.wgsl), then FIN_LANES threads per channel merge
// that channel's partials: each a strided share of them in order, then the threads' results
// by butterfly. Statistics use Welford's running mean / M2 per thread, updated
// four values at a time (block_add), and Chan's pairwise merge in the workgroup and the final
// merge (no E[x^2] - E[x]^2 cancellation).
//
// Entry points, dispatch grids and bindings (group 0; binding 0 is always Params, uniform):
//   stats_partial     grid: C * chunks workgroups of PARTIAL_WG threads (linear g = wg.x + wg.y *
//                     nwg.x; c = g / chunks, chunk = g % chunks)
//                     1 x [N*C*HW] (read), 2 partials [C * chunks * 3] (count, mean, M2) (write)
//   stats_finalize    grid: FIN_LANES threads per channel, PARTIAL_WG per workgroup (linear
//                     workgroup index as stats_partial's)
//                     1 partials [C * chunks * 3] (read), 2 mean [C] (write), 3 invstd [C] (write),
//                     4 running_mean [C] (read_write), 5 running_var [C] (read_write)
//   eval_stats        grid: one thread per channel (256 per workgroup)
//                     1 running_mean [C] (read), 2 running_var [C] (read), 3 mean [C] (write, a
//                     copy), 4 invstd [C] (write)
//   normalize         grid: one workgroup of 256 threads per 1024 elements (four per thread, see
//                     elements_base), split over x and y
//                     1 x, 2 mean [C], 3 stat [C] (invstd, or the variance with VAR_STAT),
//                     4 gamma [C], 5 beta [C] (all read), 6 y [N*C*HW] (write), 7 residual
//                     [N*C*HW] (read with RESIDUAL; any buffer but y otherwise)
//   backward_partial  grid: C * chunks workgroups as stats_partial
//                     1 x, 2 y (only read with RELU), 4 mean [C], 5 invstd [C] (all read),
//                     3 gy (read_write: with MASK_OUT the ReLU-masked gradient is written back
//                     over it, for a residual block's shortcut),
//                     6 partials [C * chunks * 2] (sum dy, sum dy * xhat) (write)
//   backward_finalize grid: as stats_finalize
//                     1 partials [C * chunks * 2], 2 gamma [C], 3 invstd [C] (read),
//                     4 ggamma [C], 5 gbeta [C], 6 coef [C * 3] (write):
//                     coef = (gamma * invstd, gbeta / M, ggamma / M), or (gamma * invstd, 0, 0) in eval
//   backward_input    grid: as normalize
//                     1 x, 2 y (only read when RELU), 3 gy, 4 mean, 5 invstd, 6 coef (read),
//                     7 gx [N*C*HW] (write): gx = coef0 * (dy - coef1 - xhat * coef2)
//   backward_input_inplace  backward_input with gx written over gy: grid as normalize;
//                     1 x, 2 y (only read when RELU; any buffer but gy otherwise), 4 mean,
//                     5 invstd, 6 coef (read), 3 gy [N*C*HW] (read_write: gy in, gx out)
//   normalize4, backward_input4, backward_input_inplace4, stats_partial4, backward_partial4:
//                     the same on vec4s where H * W is a multiple of 4, params.hw (and the
//                     chunk and steps) then counting vec4s (see there); bindings as theirs
//                     (backward_partial4 without 7)
//   With the pipeline constant POOLED, backward_partial and pooled_backward_input are the
//   backward of batch norm followed by a max pool with a ReLU after it (ops::pool's
//   max_pool2d_relu; a ResNet stem), without the pooling's full-size input gradient. The batch
//   norm's output gradient is then dy[p] = sum of gy[o] over the pooled outputs o whose argmax
//   idx[o] is p and whose output y[o] > 0: zero but at the windows' argmax elements.
//   backward_partial (POOLED): walks the pooled outputs (hw = OH * OW, chunks of them, RELU)
//                     with 2 y, 3 gy the pooled output and its gradient, 7 idx [N*C*OH*OW] u32
//                     (read; bound with any buffer otherwise), and x read at each output's
//                     argmax: the sums over dy's nonzeros. backward_finalize then runs with
//                     hw = H * W, the batch norm's count.
//   pooled_backward_input  grid: as normalize over x (hw = H * W)
//                     1 x [N*C*H*W] (read_write: x in, gx out), 2 y, 3 gy [N*C*OH*OW],
//                     4 mean, 5 invstd, 6 coef (read), 7 idx (read): dy gathered as
//                     pool.wgsl's max_backward gathers (window constants PK, PS, PP), then
//                     backward_input's gx

struct Params {
    channels: u32,   // C
    hw: u32,         // H * W
    batch: u32,      // N
    chunks: u32,     // reduction chunks per channel
    chunk_len: u32,  // values per chunk (the last chunk may be shorter)
    momentum: f32,
    eps: f32,
    element_step_q: u32,  // normalize, backward_input: 256 % hw
    element_step_c: u32,  // normalize, backward_input: (256 / hw) % C
    partial_step_q: u32,  // stats_partial, backward_partial: PARTIAL_WG % hw
    partial_step_n: u32,  // stats_partial, backward_partial: PARTIAL_WG / hw
    // POOLED: the max pool's input plane (in_h x in_w) and output plane (out_h x out_w).
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
}

// What a kernel does for the whole dispatch: pipeline constants, each set by the host only for
// the entry points that read it. As flags in the params they put uniform branches among the
// loads, and RADV issued the loads a group at a time, waiting for each group before the next
// (normalize4: each of x's four vec4 loads waited for before the next; docs/kernel-stats/).
// RELU:      normalize: the ReLU last (relu_value); backward_partial, backward_input: dy = gy
//            masked by the ReLU's output y (relu_passes: y > 0 or a NaN)
// VAR_STAT:  normalize: `stat` is the running variance (eval mode), not invstd
// RESIDUAL:  normalize: the residual added before the ReLU
// EVAL:      backward_finalize: eval mode's fixed statistics (no mean terms in gx)
// MASK_OUT:  backward_partial(4), with RELU (never POOLED): the masked gradient is written back
//            over gy, so that it leaves the dispatch as the ReLU's input gradient, which a
//            residual block's shortcut receives too (no relu_backward_inplace pass)
override RELU: bool = false;
override VAR_STAT: bool = false;
override RESIDUAL: bool = false;
override EVAL: bool = false;
override MASK_OUT: bool = false;

@group(0) @binding(0) var<uniform> params: Params;

// Threads of a partial-reduction workgroup (stats_partial, backward_partial): each reduces
// chunk_len / PARTIAL_WG values on its own, then the workgroup merges the threads' results in
// log2(PARTIAL_WG) butterfly levels (butterfly.wgsl; group_stats below). Equal to PARTIAL_WG
// in src/ops/batchnorm.rs, whose walk steps (partial_step_q, partial_step_n) assume it.
const PARTIAL_WG: u32 = 64u;
const REDUCE_WG: u32 = PARTIAL_WG;

fn group_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// The partial kernels' threads visit values j = start + lid + PARTIAL_WG t (t = 0, 1, ...) of their
// channel c, whose j-th value (j < M) sits in plane n = j / hw at offset q = j % hw, flat index
// (n * C + c) * hw + q. A walk keeps (n, q) for the thread's current j and steps it by
// PARTIAL_WG values with one compare and no division (PARTIAL_WG = partial_step_n * hw +
// partial_step_q, both from the host, partial_step_q < hw): a run-time integer division per value
// costs more than the rest of the loop.
fn walk_from(j: u32) -> vec2<u32> {
    let n = j / params.hw;
    return vec2<u32>(n, j - n * params.hw);
}

// The flat index of the walk's current value of channel c; steps the walk (n, q) to its next
// value.
fn walk_take(w: ptr<function, vec2<u32>>, c: u32) -> u32 {
    let i = ((*w).x * params.channels + c) * params.hw + (*w).y;
    (*w).y += params.partial_step_q;
    (*w).x += params.partial_step_n;
    if ((*w).y >= params.hw) {
        (*w).y -= params.hw;
        (*w).x += 1u;
    }
    return i;
}

// The flat indices of the walk's next four values (a round of the partial kernels).
fn walk_take4(w: ptr<function, vec2<u32>>, c: u32) -> vec4<u32> {
    let i0 = walk_take(w, c);
    let i1 = walk_take(w, c);
    let i2 = walk_take(w, c);
    let i3 = walk_take(w, c);
    return vec4<u32>(i0, i1, i2, i3);
}

// A round's indices with those past the chunk's end (`left` values remain, at least one)
// replaced by the first, so that every load of the round is in bounds and none needs a branch:
// the kernels load the repeats and leave their values out.
fn round_indices(i: vec4<u32>, left: u32) -> vec4<u32> {
    return select(vec4<u32>(i.x), i, vec4<u32>(1u, 2u, 3u, 4u) <= vec4<u32>(left));
}

// A thread's elements i, i + 256, i + 512 and i + 768 (see below), with those from `total` on
// replaced by i: the element passes load all four without a branch and guard only the stores
// (a branch around each load made RADV wait for it before the next, as in the partial sums).
fn element_indices(i: u32, total: u32) -> vec4<u32> {
    let j = vec4<u32>(i) + vec4<u32>(0u, 256u, 512u, 768u);
    return select(vec4<u32>(i), j, j < vec4<u32>(total));
}

// normalize and backward_input: each thread handles the four elements i, i + 256, i + 512 and
// i + 768 of its workgroup's block of 1024 (so a warp's loads stay consecutive). An element
// walk holds (offset in the plane, channel) of the current one, (q, c) with i = plane * hw + q
// and c = plane % C, and steps it by 256 elements without a division (element_step): q
// advances by element_step_q = 256 % hw and c by element_step_c = (256 / hw) % C (both from the
// host), plus a carry when q wraps (one subtraction keeps c below C, as c + element_step_c + 1 <
// 2C).
fn elements_base(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 1024u + lid;
}

// The channels of elements i, i + 256, i + 512 and i + 768.
fn element_channels(i: u32) -> vec4<u32> {
    let plane = i / params.hw;
    var q = i - plane * params.hw;
    let c0 = plane % params.channels;
    let c1 = element_step(&q, c0);
    let c2 = element_step(&q, c1);
    let c3 = element_step(&q, c2);
    return vec4<u32>(c0, c1, c2, c3);
}

// The channel 256 elements after one in channel c at plane offset q; steps q with it.
fn element_step(q: ptr<function, u32>, c: u32) -> u32 {
    var next = c + params.element_step_c;
    *q += params.element_step_q;
    if (*q >= params.hw) {
        *q -= params.hw;
        next += 1u;
    }
    if (next >= params.channels) { next -= params.channels; }
    return next;
}

// Values each partial-kernel thread (and partial results each finalize thread) loads before it
// uses any of them: with one load at a time per thread, too few are in flight to keep a GPU's
// memory busy, and a finalize thread would wait out one memory latency per chunk.
const ROUND: u32 = 4u;

// Add a block of `count` values (v0, then rest.x .. as many as count - 1; 1 <= count <= 4) to a
// running (count, mean, M2): Welford's update by blocks. With the block's values taken about the
// running mean mu (d = v - mu, sums s = sum d and q = sum d^2 over the block), the merged mean
// is mu + s / n and M2 grows by q - s^2 / n, n the merged count: one division per block instead
// of one per value, and no cancellation while mu is near the data. The first block is taken
// about its own first value, as no mean is known yet.
fn block_add(cnt: ptr<function, f32>, mu: ptr<function, f32>, m2: ptr<function, f32>, v0: f32,
             rest: vec3<f32>, count: u32) {
    if (*cnt == 0.0) { *mu = v0; }
    let m = *mu;
    let d = vec4<f32>(
        v0 - m,
        select(0.0, rest.x - m, count > 1u),
        select(0.0, rest.y - m, count > 2u),
        select(0.0, rest.z - m, count > 3u),
    );
    let n = *cnt + f32(count);
    let s = (d.x + d.y) + (d.z + d.w);
    let f = s / n;
    *mu = m + f;
    *m2 = *m2 + dot(d, d) - s * f;
    *cnt = n;
}

// block_add of the four values of v where `take`, without a branch: a branch would let
// compilers sink the load of v into it, after the loads before it have completed.
fn block_add_if(cnt: ptr<function, f32>, mu: ptr<function, f32>, m2: ptr<function, f32>,
                v: vec4<f32>, take: bool) {
    var n = *cnt;
    var mean = *mu;
    var q = *m2;
    block_add(&n, &mean, &q, v.x, v.yzw, 4u);
    *cnt = select(*cnt, n, take);
    *mu = select(*mu, mean, take);
    *m2 = select(*m2, q, take);
}

// Chan's merge of the partial t = (count, mean, M2) into the running (n, mean, m2).
fn chan_merge(n: ptr<function, f32>, mean: ptr<function, f32>, m2: ptr<function, f32>,
              t: vec3<f32>) {
    if (t.x > 0.0) {
        let na = *n;
        *n = na + t.x;
        let d = t.y - *mean;
        let f = t.x / *n;
        *mean = *mean + d * f;
        *m2 = *m2 + t.z + d * d * na * f;
    }
}

// The (count, mean, M2) triple of each segment of seg threads, each holding its own in v:
// butterfly.wgsl's levels with Chan's merge, the lower thread's triple first.
fn group_stats(lid: u32, v: vec3<f32>, seg: u32) -> vec3<f32> {
    bfly_begin(seg);
    var x = v;
    for (var d = 1u; d < seg; d = d << 1u) {
        let y = bfly_xor3(lid, x, d);
        let upper = bfly_upper(lid, d);
        var n = select(x.x, y.x, upper);
        var mean = select(x.y, y.y, upper);
        var m2 = select(x.z, y.z, upper);
        chan_merge(&n, &mean, &m2, select(y, x, upper));
        x = vec3<f32>(n, mean, m2);
    }
    return x;
}

// ---- stats_partial ----
@group(0) @binding(1) var<storage, read> sp_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sp_partials: array<f32>;

@compute @workgroup_size(PARTIAL_WG)
fn stats_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wg, nwg);
    let c = g / params.chunks;
    let k = g - c * params.chunks;
    var cnt = 0.0;
    var mu = 0.0;
    var m2 = 0.0;
    if (c < params.channels) {
        let m = params.batch * params.hw;
        let start = k * params.chunk_len;
        let end = min(start + params.chunk_len, m);
        var walk = walk_from(start + lid);
        for (var j = start + lid; j < end; j = j + ROUND * PARTIAL_WG) {
            // This thread's next ROUND values (fewer at the chunk's end), all loaded before the
            // first is used: without branches (round_indices), so that the loads are in flight
            // together; a branch around each load made RADV wait for it before the next.
            let left = (end - j + PARTIAL_WG - 1u) / PARTIAL_WG;
            let i = round_indices(walk_take4(&walk, c), left);
            let v = vec4<f32>(sp_x[i.x], sp_x[i.y], sp_x[i.z], sp_x[i.w]);
            block_add(&cnt, &mu, &m2, v.x, v.yzw, min(left, ROUND));
        }
    }
    let total = group_stats(lid, vec3<f32>(cnt, mu, m2), PARTIAL_WG);
    if (lid == 0u && c < params.channels) {
        let o = g * 3u;
        sp_partials[o] = total.x;
        sp_partials[o + 1u] = total.y;
        sp_partials[o + 2u] = total.z;
    }
}

// ---- stats_finalize ----
@group(0) @binding(1) var<storage, read> sf_partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> sf_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> sf_invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> sf_running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> sf_running_var: array<f32>;

// Threads per channel of the finalizing kernels (a power of two up to PARTIAL_WG), set by the
// host from the chunks per channel (src/ops/batchnorm.rs, finalize_lanes): enough for each to
// take one round of ROUND partials, at most PARTIAL_WG; 1, a thread merging its channel's
// partials alone, where there are at most ROUND.
override FIN_LANES: u32 = 1u;

// The channel of finalizing thread lid and its place among the channel's FIN_LANES threads.
fn finalize_channel(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec2<u32> {
    let c = group_index(wg, nwg) * (PARTIAL_WG / FIN_LANES) + lid / FIN_LANES;
    return vec2<u32>(c, lid % FIN_LANES);
}

@compute @workgroup_size(PARTIAL_WG)
fn stats_finalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let at = finalize_channel(wg, nwg, lid);
    let c = at.x;
    let live = c < params.channels;
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    // The thread's partials k = lane, lane + FIN_LANES, ..., ROUND loaded before they are
    // merged (a missing one past the last chunk reads as an empty partial, which the merge
    // skips), then the channel's threads' merged in butterfly.wgsl's pairs.
    if (live) {
        for (var k = at.y; k < params.chunks; k = k + ROUND * FIN_LANES) {
            let t0 = sf_triple(c, k);
            let t1 = sf_triple(c, k + FIN_LANES);
            let t2 = sf_triple(c, k + 2u * FIN_LANES);
            let t3 = sf_triple(c, k + 3u * FIN_LANES);
            chan_merge(&n, &mean, &m2, t0);
            chan_merge(&n, &mean, &m2, t1);
            chan_merge(&n, &mean, &m2, t2);
            chan_merge(&n, &mean, &m2, t3);
        }
    }
    let total = group_stats(lid, vec3<f32>(n, mean, m2), FIN_LANES);
    if (at.y != 0u || !live) { return; }
    sf_mean[c] = total.y;
    sf_invstd[c] = 1.0 / sqrt(total.z / total.x + params.eps);
    let m = params.momentum;
    let var_unbiased = total.z / max(total.x - 1.0, 1.0);
    sf_running_mean[c] = (1.0 - m) * sf_running_mean[c] + m * total.y;
    sf_running_var[c] = (1.0 - m) * sf_running_var[c] + m * var_unbiased;
}

// Partial (count, mean, M2) of chunk k of channel c; zeros past the last chunk (loaded from a
// safe index, without a branch around the loads).
fn sf_triple(c: u32, k: u32) -> vec3<f32> {
    let o = (c * params.chunks + min(k, params.chunks - 1u)) * 3u;
    let t = vec3<f32>(sf_partials[o], sf_partials[o + 1u], sf_partials[o + 2u]);
    return select(vec3<f32>(0.0), t, k < params.chunks);
}

// ---- eval_stats ----
@group(0) @binding(1) var<storage, read> es_running_mean: array<f32>;
@group(0) @binding(2) var<storage, read> es_running_var: array<f32>;
@group(0) @binding(3) var<storage, read_write> es_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> es_invstd: array<f32>;

@compute @workgroup_size(256)
fn eval_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wg, nwg, lid);
    if (c < params.channels) {
        es_mean[c] = es_running_mean[c];
        es_invstd[c] = 1.0 / sqrt(es_running_var[c] + params.eps);
    }
}

// ---- normalize ----
@group(0) @binding(1) var<storage, read> nm_x: array<f32>;
@group(0) @binding(2) var<storage, read> nm_mean: array<f32>;
@group(0) @binding(3) var<storage, read> nm_stat: array<f32>;
@group(0) @binding(4) var<storage, read> nm_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> nm_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> nm_y: array<f32>;
@group(0) @binding(7) var<storage, read> nm_res: array<f32>;

@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    // All loads of the four elements first, then the arithmetic and the stores.
    let j = element_indices(i, total);
    let x = vec4<f32>(nm_x[j.x], nm_x[j.y], nm_x[j.z], nm_x[j.w]);
    var r = vec4<f32>(0.0);
    if (RESIDUAL) {
        r = vec4<f32>(nm_res[j.x], nm_res[j.y], nm_res[j.z], nm_res[j.w]);
    }
    let c = element_channels(i);
    let y = vec4<f32>(nm_value(vec2<f32>(x.x, r.x), c.x), nm_value(vec2<f32>(x.y, r.y), c.y),
                      nm_value(vec2<f32>(x.z, r.z), c.z), nm_value(vec2<f32>(x.w, r.w), c.w));
    nm_y[i] = y.x;
    if (i + 256u < total) { nm_y[i + 256u] = y.y; }
    if (i + 512u < total) { nm_y[i + 512u] = y.z; }
    if (i + 768u < total) { nm_y[i + 768u] = y.w; }
}

// Output for e = (x, residual) in channel c: the normalized value, plus the residual when
// RESIDUAL, then the ReLU when RELU (the order of normalize followed by elementwise add_relu).
fn nm_value(e: vec2<f32>, c: u32) -> f32 {
    var invstd = nm_stat[c];
    if (VAR_STAT) { invstd = 1.0 / sqrt(invstd + params.eps); }
    var v = (e.x - nm_mean[c]) * invstd * nm_gamma[c] + nm_beta[c];
    if (RESIDUAL) { v = v + e.y; }
    if (RELU) { v = relu_value(v); }
    return v;
}

// The pooled backward (see the header): POOLED selects it; PK, PS and PP are the max pool's
// kernel, stride and padding (pool.wgsl's WK, WS, WP), so that its divisions by the stride
// compile to shifts or multiplies.
override POOLED: bool = false;
override PK: u32 = 3u;
override PS: u32 = 2u;
override PP: u32 = 1u;

// POOLED: the argmax index of each pooled output within its plane of x.
@group(0) @binding(7) var<storage, read> pool_idx: array<u32>;

// ---- backward_partial ----
@group(0) @binding(1) var<storage, read> bp_x: array<f32>;
@group(0) @binding(2) var<storage, read> bp_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> bp_gy: array<f32>;
@group(0) @binding(4) var<storage, read> bp_mean: array<f32>;
@group(0) @binding(5) var<storage, read> bp_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> bp_partials: array<f32>;

@compute @workgroup_size(PARTIAL_WG)
fn backward_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wg, nwg);
    let c = g / params.chunks;
    let k = g - c * params.chunks;
    var s_dy = 0.0;
    var s_dyx = 0.0;
    if (c < params.channels) {
        let mean = bp_mean[c];
        let invstd = bp_invstd[c];
        let m = params.batch * params.hw;
        let start = k * params.chunk_len;
        let end = min(start + params.chunk_len, m);
        var walk = walk_from(start + lid);
        for (var j = start + lid; j < end; j = j + ROUND * PARTIAL_WG) {
            // ROUND values (fewer at the chunk's end: the repeats round_indices makes count as
            // zeros), each round's loads issued together and the masked values written back
            // after all of them (see backward_partial4).
            let left = (end - j + PARTIAL_WG - 1u) / PARTIAL_WG;
            let i = round_indices(walk_take4(&walk, c), left);
            var dy = vec4<f32>(bp_gy[i.x], bp_gy[i.y], bp_gy[i.z], bp_gy[i.w]);
            // POOLED: x at the argmax of pooled output i's window.
            var xi = i;
            if (POOLED) {
                let arg = vec4<u32>(pool_idx[i.x], pool_idx[i.y], pool_idx[i.z], pool_idx[i.w]);
                xi = (i / params.hw) * (params.in_h * params.in_w) + arg;
            }
            let x = vec4<f32>(bp_x[xi.x], bp_x[xi.y], bp_x[xi.z], bp_x[xi.w]);
            var keep = vec4<bool>(true);
            if (RELU) {
                keep = relu_passes4(vec4<f32>(bp_y[i.x], bp_y[i.y], bp_y[i.z], bp_y[i.w]));
                dy = select(vec4<f32>(0.0), dy, keep);
            }
            let counted = vec4<u32>(1u, 2u, 3u, 4u) <= vec4<u32>(left);
            let d = select(vec4<f32>(0.0), dy, counted);
            let t = select(vec4<f32>(0.0), dy * (x - mean) * invstd, counted);
            s_dy = s_dy + d.x + d.y + d.z + d.w;
            s_dyx = s_dyx + t.x + t.y + t.z + t.w;
            if (MASK_OUT) {
                if (!keep.x) { bp_gy[i.x] = 0.0; }
                if (!keep.y) { bp_gy[i.y] = 0.0; }
                if (!keep.z) { bp_gy[i.z] = 0.0; }
                if (!keep.w) { bp_gy[i.w] = 0.0; }
            }
        }
    }
    let total = group_sum2(lid, vec2<f32>(s_dy, s_dyx), PARTIAL_WG);
    if (lid == 0u && c < params.channels) {
        bp_partials[g * 2u] = total.x;
        bp_partials[g * 2u + 1u] = total.y;
    }
}

// ---- backward_finalize ----
@group(0) @binding(1) var<storage, read> bf_partials: array<f32>;
@group(0) @binding(2) var<storage, read> bf_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> bf_invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> bf_ggamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> bf_gbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> bf_coef: array<f32>;

@compute @workgroup_size(PARTIAL_WG)
fn backward_finalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let at = finalize_channel(wg, nwg, lid);
    let c = at.x;
    let live = c < params.channels;
    // As in stats_finalize: each thread sums its partials, ROUND loaded at a time, then the
    // channel's threads' sums add up in butterfly.wgsl's pairs.
    var sums = vec2<f32>(0.0);
    if (live) {
        for (var k = at.y; k < params.chunks; k = k + ROUND * FIN_LANES) {
            let t0 = bf_pair(c, k);
            let t1 = bf_pair(c, k + FIN_LANES);
            let t2 = bf_pair(c, k + 2u * FIN_LANES);
            let t3 = bf_pair(c, k + 3u * FIN_LANES);
            sums = sums + t0 + t1 + t2 + t3;
        }
    }
    let total = group_sum2(lid, sums, FIN_LANES);
    if (at.y != 0u || !live) { return; }
    let gbeta = total.x;
    let ggamma = total.y;
    bf_ggamma[c] = ggamma;
    bf_gbeta[c] = gbeta;
    let inv_m = 1.0 / f32(params.batch * params.hw);
    bf_coef[c * 3u] = bf_gamma[c] * bf_invstd[c];
    bf_coef[c * 3u + 1u] = select(gbeta * inv_m, 0.0, EVAL);
    bf_coef[c * 3u + 2u] = select(ggamma * inv_m, 0.0, EVAL);
}

// Partial (sum dy, sum dy * xhat) of chunk k of channel c; zeros past the last chunk (loaded
// from a safe index, as sf_triple).
fn bf_pair(c: u32, k: u32) -> vec2<f32> {
    let o = (c * params.chunks + min(k, params.chunks - 1u)) * 2u;
    let t = vec2<f32>(bf_partials[o], bf_partials[o + 1u]);
    return select(vec2<f32>(0.0), t, k < params.chunks);
}

// ---- backward_input ----
@group(0) @binding(1) var<storage, read> bi_x: array<f32>;
@group(0) @binding(2) var<storage, read> bi_y: array<f32>;
@group(0) @binding(3) var<storage, read> bi_gy: array<f32>;
@group(0) @binding(4) var<storage, read> bi_mean: array<f32>;
@group(0) @binding(5) var<storage, read> bi_invstd: array<f32>;
@group(0) @binding(6) var<storage, read> bi_coef: array<f32>;
@group(0) @binding(7) var<storage, read_write> bi_gx: array<f32>;

@compute @workgroup_size(256)
fn backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    // All loads of the four elements first, then the arithmetic and the stores.
    let j = element_indices(i, total);
    let x = vec4<f32>(bi_x[j.x], bi_x[j.y], bi_x[j.z], bi_x[j.w]);
    let dy = bi_mask(j, vec4<f32>(bi_gy[j.x], bi_gy[j.y], bi_gy[j.z], bi_gy[j.w]));
    let g = bi_values(dy, x, element_channels(i));
    bi_gx[i] = g.x;
    if (i + 256u < total) { bi_gx[i + 256u] = g.y; }
    if (i + 512u < total) { bi_gx[i + 512u] = g.z; }
    if (i + 768u < total) { bi_gx[i + 768u] = g.w; }
}

// The upstream gradients g of elements j masked by the ReLU's outputs there when RELU (the
// four outputs loaded together).
fn bi_mask(j: vec4<u32>, g: vec4<f32>) -> vec4<f32> {
    if (!RELU) { return g; }
    let y = vec4<f32>(bi_y[j.x], bi_y[j.y], bi_y[j.z], bi_y[j.w]);
    return select(vec4<f32>(0.0), g, relu_passes4(y));
}

// bi_value of four elements (dy, x) in channels c.
fn bi_values(dy: vec4<f32>, x: vec4<f32>, c: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(bi_value(vec2<f32>(dy.x, x.x), c.x), bi_value(vec2<f32>(dy.y, x.y), c.y),
                     bi_value(vec2<f32>(dy.z, x.z), c.z), bi_value(vec2<f32>(dy.w, x.w), c.w));
}

// gx of an element with (dy, x) = e in channel c.
fn bi_value(e: vec2<f32>, c: u32) -> f32 {
    let xhat = (e.y - bi_mean[c]) * bi_invstd[c];
    return bi_coef[c * 3u] * (e.x - bi_coef[c * 3u + 1u] - xhat * bi_coef[c * 3u + 2u]);
}

// ---- backward_input_inplace: backward_input reading gy from and writing gx to binding 3 ----
// Each element is read before it is written, by the same thread, so the overwrite is safe.
@group(0) @binding(3) var<storage, read_write> bii_g: array<f32>;

@compute @workgroup_size(256)
fn backward_input_inplace(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    let j = element_indices(i, total);
    let x = vec4<f32>(bi_x[j.x], bi_x[j.y], bi_x[j.z], bi_x[j.w]);
    let dy = bi_mask(j, vec4<f32>(bii_g[j.x], bii_g[j.y], bii_g[j.z], bii_g[j.w]));
    let g = bi_values(dy, x, element_channels(i));
    bii_g[i] = g.x;
    if (i + 256u < total) { bii_g[i + 256u] = g.y; }
    if (i + 512u < total) { bii_g[i + 512u] = g.z; }
    if (i + 768u < total) { bii_g[i + 768u] = g.w; }
}

// ---- pooled_backward_input (see the header) ----
@group(0) @binding(1) var<storage, read_write> pbi_x: array<f32>;

@compute @workgroup_size(256)
fn pooled_backward_input(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    // Every load of the four elements first (indices past the end repeat i), the stores after:
    // with a branch around each element, and around each load of the window search below,
    // RADV waited for every load before the next (31 waits in a row per thread).
    let j = element_indices(i, total);
    let x = vec4<f32>(pbi_x[j.x], pbi_x[j.y], pbi_x[j.z], pbi_x[j.w]);
    let dy = vec4<f32>(pooled_dy(j.x), pooled_dy(j.y), pooled_dy(j.z), pooled_dy(j.w));
    let c = element_channels(i);
    let g1 = bi_value(vec2<f32>(dy.y, x.y), c.y);
    let g2 = bi_value(vec2<f32>(dy.z, x.z), c.z);
    let g3 = bi_value(vec2<f32>(dy.w, x.w), c.w);
    pbi_x[i] = bi_value(vec2<f32>(dy.x, x.x), c.x);
    if (i + 256u < total) { pbi_x[i + 256u] = g1; }
    if (i + 512u < total) { pbi_x[i + 512u] = g2; }
    if (i + 768u < total) { pbi_x[i + 768u] = g3; }
}

// dy of element i of x: the pooled gradient bi_gy summed over the outputs whose windows hold
// it, whose argmax it is and whose output bi_y is positive, in max_backward's order. At most
// ceil(PK / PS) outputs per axis hold it, from pool_first on: each candidate's three loads are
// issued whether or not it is one (an index outside the window reads the plane's first
// output), and `&`, not `&&`, joins the tests, so that no load sits behind a branch; the
// candidates past pool_end add zero.
fn pooled_dy(i: u32) -> f32 {
    let plane = i / params.hw;
    let q = i - plane * params.hw;
    let h = q / params.in_w;
    let w = q - h * params.in_w;
    let base = plane * params.out_h * params.out_w;
    let oh0 = pool_first(h);
    let ow0 = pool_first(w);
    let rows = pool_end(h, params.out_h);
    let cols = pool_end(w, params.out_w);
    let reach = (PK + PS - 1u) / PS;
    var acc = 0.0;
    for (var a = 0u; a < reach; a = a + 1u) {
        for (var b = 0u; b < reach; b = b + 1u) {
            let oh = oh0 + a;
            let ow = ow0 + b;
            let inside = (oh < rows) & (ow < cols);
            let o = select(base, base + oh * params.out_w + ow, inside);
            let hit = inside & (pool_idx[o] == q) & relu_passes(bi_y[o]);
            acc = acc + select(0.0, bi_gy[o], hit);
        }
    }
    return acc;
}

// First pooled output (inclusive) whose window covers coordinate i along one axis.
fn pool_first(i: u32) -> u32 {
    let ip = i + PP;
    if (ip < PK) { return 0u; }
    return (ip - PK) / PS + 1u;
}

// One past the last pooled output whose window covers coordinate i.
fn pool_end(i: u32, out_len: u32) -> u32 {
    return min((i + PP) / PS + 1u, out_len);
}

// ---- normalize4, backward_input4, backward_input_inplace4: vec4s ----
// normalize, backward_input and backward_input_inplace on vec4s of four consecutive elements,
// where H * W is a multiple of 4 so that no vec4 straddles two channel planes: a quarter of
// the threads, loads and stores. The host passes the plane in vec4s as params.hw (with the
// element steps for it), so elements_base and element_channels index vec4s: a thread takes
// the four vec4s i, i + 256, i + 512, i + 768 of its workgroup's 1024. The per-channel vectors
// are the scalar kernels' bindings, and each component gets the scalar kernels' arithmetic.
@group(0) @binding(1) var<storage, read> nm4_x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> nm4_y: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> nm4_res: array<vec4<f32>>;

@compute @workgroup_size(256)
fn normalize4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    let j = element_indices(i, total);
    let x = array<vec4<f32>, 4>(nm4_x[j.x], nm4_x[j.y], nm4_x[j.z], nm4_x[j.w]);
    var r = array<vec4<f32>, 4>();
    if (RESIDUAL) {
        r = array<vec4<f32>, 4>(nm4_res[j.x], nm4_res[j.y], nm4_res[j.z], nm4_res[j.w]);
    }
    let c = element_channels(i);
    let y1 = nm_value4(x[1], r[1], c.y);
    let y2 = nm_value4(x[2], r[2], c.z);
    let y3 = nm_value4(x[3], r[3], c.w);
    nm4_y[i] = nm_value4(x[0], r[0], c.x);
    if (i + 256u < total) { nm4_y[i + 256u] = y1; }
    if (i + 512u < total) { nm4_y[i + 512u] = y2; }
    if (i + 768u < total) { nm4_y[i + 768u] = y3; }
}

// nm_value of each component of x (residual r) in channel c.
fn nm_value4(x: vec4<f32>, r: vec4<f32>, c: u32) -> vec4<f32> {
    var invstd = nm_stat[c];
    if (VAR_STAT) { invstd = 1.0 / sqrt(invstd + params.eps); }
    var v = (x - nm_mean[c]) * invstd * nm_gamma[c] + nm_beta[c];
    if (RESIDUAL) { v = v + r; }
    if (RELU) { v = relu_value4(v); }
    return v;
}

@group(0) @binding(1) var<storage, read> bi4_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bi4_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bi4_gy: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> bi4_gx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_input4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    let j = element_indices(i, total);
    let x = array<vec4<f32>, 4>(bi4_x[j.x], bi4_x[j.y], bi4_x[j.z], bi4_x[j.w]);
    let g = bi_mask4(j, array<vec4<f32>, 4>(bi4_gy[j.x], bi4_gy[j.y], bi4_gy[j.z], bi4_gy[j.w]));
    let c = element_channels(i);
    let v1 = bi_value4(g[1], x[1], c.y);
    let v2 = bi_value4(g[2], x[2], c.z);
    let v3 = bi_value4(g[3], x[3], c.w);
    bi4_gx[i] = bi_value4(g[0], x[0], c.x);
    if (i + 256u < total) { bi4_gx[i + 256u] = v1; }
    if (i + 512u < total) { bi4_gx[i + 512u] = v2; }
    if (i + 768u < total) { bi4_gx[i + 768u] = v3; }
}

// bi_mask on vec4s: the upstream gradients g of vec4s j masked by the ReLU's outputs when RELU.
fn bi_mask4(j: vec4<u32>, g: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    if (!RELU) { return g; }
    let z = vec4<f32>(0.0);
    let y = array<vec4<f32>, 4>(bi4_y[j.x], bi4_y[j.y], bi4_y[j.z], bi4_y[j.w]);
    return array<vec4<f32>, 4>(select(z, g[0], relu_passes4(y[0])),
                               select(z, g[1], relu_passes4(y[1])),
                               select(z, g[2], relu_passes4(y[2])),
                               select(z, g[3], relu_passes4(y[3])));
}

// bi_value of each component of (dy, x) in channel c.
fn bi_value4(dy: vec4<f32>, x: vec4<f32>, c: u32) -> vec4<f32> {
    let xhat = (x - bi_mean[c]) * bi_invstd[c];
    return bi_coef[c * 3u] * (dy - bi_coef[c * 3u + 1u] - xhat * bi_coef[c * 3u + 2u]);
}

// backward_input4 reading gy from and writing gx to binding 3 (each vec4 read before the same
// thread writes it).
@group(0) @binding(3) var<storage, read_write> bii4_g: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_input_inplace4(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let total = params.batch * params.channels * params.hw;
    if (i >= total) { return; }
    let j = element_indices(i, total);
    let x = array<vec4<f32>, 4>(bi4_x[j.x], bi4_x[j.y], bi4_x[j.z], bi4_x[j.w]);
    let g = bi_mask4(j, array<vec4<f32>, 4>(bii4_g[j.x], bii4_g[j.y], bii4_g[j.z], bii4_g[j.w]));
    let c = element_channels(i);
    let v1 = bi_value4(g[1], x[1], c.y);
    let v2 = bi_value4(g[2], x[2], c.z);
    let v3 = bi_value4(g[3], x[3], c.w);
    bii4_g[i] = bi_value4(g[0], x[0], c.x);
    if (i + 256u < total) { bii4_g[i + 256u] = v1; }
    if (i + 512u < total) { bii4_g[i + 512u] = v2; }
    if (i + 768u < total) { bii4_g[i + 768u] = v3; }
}

// ---- stats_partial4, backward_partial4: the partial sums over vec4s ----
// stats_partial and backward_partial (not POOLED) where H * W is a multiple of 4: the host
// passes the plane, the chunk and the walk's steps counted in vec4s (params.hw, chunk_len,
// partial_step_q / _n), and a thread's walk visits vec4s j = start + lid + PARTIAL_WG t of its
// channel, ROUND of them loaded before any is used. stats_partial4 adds each vec4 to the
// running statistics as one block of four values (block_add); backward_partial4 adds its four
// terms to the sums. The partials cover the same chunks of values as the scalar kernels'
// (params.chunks is unchanged), only the order of the additions within a chunk differs.
@group(0) @binding(1) var<storage, read> sp4_x: array<vec4<f32>>;

@compute @workgroup_size(PARTIAL_WG)
fn stats_partial4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wg, nwg);
    let c = g / params.chunks;
    let k = g - c * params.chunks;
    var cnt = 0.0;
    var mu = 0.0;
    var m2 = 0.0;
    if (c < params.channels) {
        let m = params.batch * params.hw;
        let start = k * params.chunk_len;
        let end = min(start + params.chunk_len, m);
        var walk = walk_from(start + lid);
        for (var j = start + lid; j < end; j = j + ROUND * PARTIAL_WG) {
            let left = (end - j + PARTIAL_WG - 1u) / PARTIAL_WG;
            let i = round_indices(walk_take4(&walk, c), left);
            let v0 = sp4_x[i.x];
            let v1 = sp4_x[i.y];
            let v2 = sp4_x[i.z];
            let v3 = sp4_x[i.w];
            block_add(&cnt, &mu, &m2, v0.x, v0.yzw, 4u);
            block_add_if(&cnt, &mu, &m2, v1, left > 1u);
            block_add_if(&cnt, &mu, &m2, v2, left > 2u);
            block_add_if(&cnt, &mu, &m2, v3, left > 3u);
        }
    }
    let total = group_stats(lid, vec3<f32>(cnt, mu, m2), PARTIAL_WG);
    if (lid == 0u && c < params.channels) {
        let o = g * 3u;
        sp_partials[o] = total.x;
        sp_partials[o + 1u] = total.y;
        sp_partials[o + 2u] = total.z;
    }
}

@group(0) @binding(1) var<storage, read> bp4_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bp4_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bp4_gy: array<vec4<f32>>;

// With MASK_OUT, vec4 i's gradient masked by the ReLU (`masked`, kept where `keep`) written
// back over gy where the mask zeroes any of its values.
fn bp_write_masked4(i: u32, masked: vec4<f32>, keep: vec4<bool>) {
    if (MASK_OUT && !all(keep)) { bp4_gy[i] = masked; }
}

// (sum dy, sum dy * xhat) over the four values of a vec4.
fn bp_sums4(dy: vec4<f32>, x: vec4<f32>, mean: f32, invstd: f32) -> vec2<f32> {
    let t = dy * (x - mean) * invstd;
    return vec2<f32>((dy.x + dy.y) + (dy.z + dy.w), (t.x + t.y) + (t.z + t.w));
}

@compute @workgroup_size(PARTIAL_WG)
fn backward_partial4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wg, nwg);
    let c = g / params.chunks;
    let k = g - c * params.chunks;
    var s_dy = 0.0;
    var s_dyx = 0.0;
    if (c < params.channels) {
        let mean = bp_mean[c];
        let invstd = bp_invstd[c];
        let m = params.batch * params.hw;
        let start = k * params.chunk_len;
        let end = min(start + params.chunk_len, m);
        var walk = walk_from(start + lid);
        for (var j = start + lid; j < end; j = j + ROUND * PARTIAL_WG) {
            let left = (end - j + PARTIAL_WG - 1u) / PARTIAL_WG;
            let i = round_indices(walk_take4(&walk, c), left);
            // The round's gy, x and (RELU) y, all loads in flight together (see
            // stats_partial), and the masked gradients written back to gy after them: a store
            // between them keeps the loads after it where they may alias (RADV had issued y's
            // loads one per store). A repeated index (past the chunk's end) masks and writes
            // back the same values twice.
            var dy0 = bp4_gy[i.x];
            var dy1 = bp4_gy[i.y];
            var dy2 = bp4_gy[i.z];
            var dy3 = bp4_gy[i.w];
            let x0 = bp4_x[i.x];
            let x1 = bp4_x[i.y];
            let x2 = bp4_x[i.z];
            let x3 = bp4_x[i.w];
            var keep0 = vec4<bool>(true);
            var keep1 = vec4<bool>(true);
            var keep2 = vec4<bool>(true);
            var keep3 = vec4<bool>(true);
            if (RELU) {
                keep0 = relu_passes4(bp4_y[i.x]);
                keep1 = relu_passes4(bp4_y[i.y]);
                keep2 = relu_passes4(bp4_y[i.z]);
                keep3 = relu_passes4(bp4_y[i.w]);
                dy0 = select(vec4<f32>(0.0), dy0, keep0);
                dy1 = select(vec4<f32>(0.0), dy1, keep1);
                dy2 = select(vec4<f32>(0.0), dy2, keep2);
                dy3 = select(vec4<f32>(0.0), dy3, keep3);
            }
            let t0 = bp_sums4(dy0, x0, mean, invstd);
            let t1 = select(vec2<f32>(0.0), bp_sums4(dy1, x1, mean, invstd), left > 1u);
            let t2 = select(vec2<f32>(0.0), bp_sums4(dy2, x2, mean, invstd), left > 2u);
            let t3 = select(vec2<f32>(0.0), bp_sums4(dy3, x3, mean, invstd), left > 3u);
            s_dy = s_dy + t0.x + t1.x + t2.x + t3.x;
            s_dyx = s_dyx + t0.y + t1.y + t2.y + t3.y;
            bp_write_masked4(i.x, dy0, keep0);
            bp_write_masked4(i.y, dy1, keep1);
            bp_write_masked4(i.z, dy2, keep2);
            bp_write_masked4(i.w, dy3, keep3);
        }
    }
    let total = group_sum2(lid, vec2<f32>(s_dy, s_dyx), PARTIAL_WG);
    if (lid == 0u && c < params.channels) {
        bp_partials[g * 2u] = total.x;
        bp_partials[g * 2u + 1u] = total.y;
    }
}
