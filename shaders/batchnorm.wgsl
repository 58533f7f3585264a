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
//                     4 running_mean [C] (read_write), 5 running_var [C] (read_write),
//                     6 gamma [C], 7 beta [C] (read), 8 channel [C] vec4 (write): normalize's
//                     record (mean, invstd, gamma, beta)
//   eval_stats        grid: one thread per channel (256 per workgroup)
//                     1 running_mean [C] (read), 2 running_var [C] (read), 3 mean [C] (write, a
//                     copy), 4 invstd [C] (write)
//   channel_record    grid: as eval_stats
//                     1 running_mean [C], 2 running_var [C], 3 gamma [C], 4 beta [C] (read),
//                     5 channel [C] vec4 (write): normalize's record in eval mode
//   normalize         grid: one workgroup of 256 threads per 1024 units (vec4s of x, four per
//                     thread, see "The element passes"), split over x and y
//                     1 x, 2 channel [C] vec4 (read), 3 y [N*C*HW] (write), 4 residual
//                     [N*C*HW] (read with RESIDUAL; any buffer but y otherwise)
//   backward_partial  grid: C * chunks workgroups as stats_partial
//                     1 x, 2 y (only read with RELU), 4 mean [C], 5 invstd [C] (all read),
//                     3 gy (read_write: with MASK_OUT the ReLU-masked gradient is written back
//                     over it, for a residual block's shortcut),
//                     6 partials [C * chunks * 2] (sum dy, sum dy * xhat) (write)
//   backward_finalize grid: as stats_finalize
//                     1 partials [C * chunks * 2], 2 gamma [C], 3 invstd [C], 8 mean [C] (read),
//                     4 ggamma [C], 5 gbeta [C], 6 coef [C] vec4, 7 coef2 [C] (write): the
//                     input gradient's records (mean, invstd, coef0, coef1) and coef2, with
//                     coef = (gamma * invstd, gbeta / M, ggamma / M), or (gamma * invstd, 0, 0) in eval
//   backward_input    grid: as normalize
//                     1 x, 2 y (only read when RELU), 3 gy, 4 coef, 5 coef2 (read),
//                     6 gx [N*C*HW] (write): gx = coef0 * (dy - coef1 - xhat * coef2)
//   backward_input_inplace  backward_input with gx written over gy: grid as normalize;
//                     1 x, 2 y (only read when RELU; any buffer but gy otherwise), 4 coef,
//                     5 coef2 (read), 3 gy [N*C*HW] (read_write: gy in, gx out)
//   stats_partial4, backward_partial4: the partial sums on vec4s where H * W is a multiple of
//                     4, params.hw (and the chunk and steps) then counting vec4s (see there);
//                     bindings as theirs (backward_partial4 without 7)
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
//   pooled_backward_input  grid: one workgroup of 256 threads per 1024 values of x (hw = H * W)
//                     1 x [N*C*H*W] (read_write: x in, gx out), 2 y, 3 gy [N*C*OH*OW],
//                     4 coef, 5 coef2, 7 idx (read): dy gathered as
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
// (normalize on vec4s: each of x's four vec4 loads waited for before the next;
// docs/kernel-stats/).
// RELU:      normalize: the ReLU last (relu_value); backward_partial, backward_input: dy = gy
//            masked by the ReLU's output y (relu_passes: y > 0 or a NaN)
// RESIDUAL:  normalize: the residual added before the ReLU
// EVAL:      backward_finalize: eval mode's fixed statistics (no mean terms in gx)
// MASK_OUT:  backward_partial(4), with RELU (never POOLED): the masked gradient is written back
//            over gy, so that it leaves the dispatch as the ReLU's input gradient, which a
//            residual block's shortcut receives too (no relu_backward_inplace pass)
override RELU: bool = false;
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

// The element passes (normalize, backward_input: units of vec4s, see there) and
// pooled_backward_input (values): each thread handles the four units i, i + 256, i + 512 and
// i + 768 of its workgroup's block of 1024 (so a warp's loads stay consecutive). An element
// walk holds (offset in the plane, channel) of the current one, (q, c) with i = plane * hw + q
// and c = plane % C, and steps it to the thread's next without a division (element_step): q
// advances by element_step_q and c by element_step_c, from the host (256 % hw and (256 / hw) %
// C with hw counted in units; 1024 % hw and (1024 / hw) % C where the walk counts values and a
// unit is 4), plus a carry when q wraps (one subtraction keeps c below C, as c + element_step_c
// + 1 < 2C).
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
@group(0) @binding(6) var<storage, read> sf_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> sf_beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> sf_channel: array<vec4<f32>>;

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
    let invstd = bn_invstd(total.z / total.x, params.eps);
    sf_mean[c] = total.y;
    sf_invstd[c] = invstd;
    sf_channel[c] = vec4<f32>(total.y, invstd, sf_gamma[c], sf_beta[c]);
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
        es_invstd[c] = bn_invstd(es_running_var[c], params.eps);
    }
}

// ---- channel_record ----
// normalize's record per channel, (mean, invstd, gamma, beta), in eval mode: from the running
// mean and variance (invstd as eval_stats computes it).
@group(0) @binding(1) var<storage, read> cr_mean: array<f32>;
@group(0) @binding(2) var<storage, read> cr_var: array<f32>;
@group(0) @binding(3) var<storage, read> cr_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> cr_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> cr_channel: array<vec4<f32>>;

@compute @workgroup_size(256)
fn channel_record(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wg, nwg, lid);
    if (c < params.channels) {
        let invstd = bn_invstd(cr_var[c], params.eps);
        cr_channel[c] = vec4<f32>(cr_mean[c], invstd, cr_gamma[c], cr_beta[c]);
    }
}

// ---- The element passes: normalize, backward_input, backward_input_inplace ----
// A unit is a vec4 of x: values 4u .. 4u + 3 of the flat array. Each thread takes the four units
// i, i + 256, i + 512 and i + 768 of its workgroup's 1024 (elements_base; so a warp's loads stay
// consecutive), all their loads first, then the arithmetic and the stores. QUAD_CHANNELS (from
// the host) is how many channel planes one unit's values can lie in:
//   1  H * W a multiple of 4: one plane; params.hw and the element steps count units
//   2  H * W of 4 or more, not a multiple of 4: at most two (a unit crosses at most one plane
//      boundary); params.hw counts values, the element steps 1024 values
//   4  H * W of 1, 2 or 3: each value's channel computed on its own (a division per value)
// Every value gets its own channel's arithmetic, whatever the plane's size: the same bits as
// with one value per thread. With QUAD_CHANNELS 2 or 4 the last unit may reach past x's end into
// the buffer's padding (tensors' buffers hold whole vec4s): those values are stored as zeros.
//
// The per-channel values come as records of vec4s: one load for a channel's values where
// separate vectors took one each. On a CPU adapter each load is a loop over the SIMD lanes,
// whose cost grows with the values it loads; the records pay most where a unit's values lie in
// two channels (7x7 planes), whose values ran one per thread and loaded their channel's values
// each (docs/speed.md, "Batch norm's channel records").
override QUAD_CHANNELS: u32 = 1u;

// The units of x, the last one partly padding where x's length is not a multiple of 4.
fn element_units() -> u32 {
    let n = params.batch * params.channels * params.hw;
    if (QUAD_CHANNELS == 1u) { return n; }
    return (n + 3u) / 4u;
}

// The channels of the values of units i, i + 256, i + 512 and i + 768 (row k: unit k's four).
fn unit_channels(i: u32) -> array<vec4<u32>, 4> {
    if (QUAD_CHANNELS == 4u) {
        let lanes = vec4<u32>(0u, 1u, 2u, 3u);
        let first = 4u * i;
        return array<vec4<u32>, 4>(
            ((vec4<u32>(first) + lanes) / params.hw) % params.channels,
            ((vec4<u32>(first + 1024u) + lanes) / params.hw) % params.channels,
            ((vec4<u32>(first + 2048u) + lanes) / params.hw) % params.channels,
            ((vec4<u32>(first + 3072u) + lanes) / params.hw) % params.channels);
    }
    // The walk of element_channels, over units (QUAD_CHANNELS 1) or values (2).
    let start = select(i, 4u * i, QUAD_CHANNELS == 2u);
    let plane = start / params.hw;
    var q = start - plane * params.hw;
    let c0 = plane % params.channels;
    let u0 = unit_split(q, c0);
    let c1 = element_step(&q, c0);
    let u1 = unit_split(q, c1);
    let c2 = element_step(&q, c1);
    let u2 = unit_split(q, c2);
    let c3 = element_step(&q, c2);
    return array<vec4<u32>, 4>(u0, u1, u2, unit_split(q, c3));
}

// The channels of a unit whose first value lies at offset q of a plane of channel c: with
// QUAD_CHANNELS 2, its values from the plane's end on lie in the next channel.
fn unit_split(q: u32, c: u32) -> vec4<u32> {
    if (QUAD_CHANNELS == 1u) { return vec4<u32>(c); }
    let next = select(c + 1u, 0u, c + 1u == params.channels);
    let past = vec4<u32>(q) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(params.hw);
    return select(vec4<u32>(c), vec4<u32>(next), past);
}

// Unit u's value v, or zero for a value past x's end (the padding of the last unit).
fn in_x(v: vec4<f32>, u: u32) -> vec4<f32> {
    if (QUAD_CHANNELS == 1u) { return v; }
    let past = vec4<u32>(4u * u) + vec4<u32>(0u, 1u, 2u, 3u) >=
        vec4<u32>(params.batch * params.channels * params.hw);
    return select(v, vec4<f32>(0.0), past);
}

// The record of each value's channel c, from those loaded: the first value's alone where a
// unit lies in one plane; the first and last values' where it may cross into a second; with
// `more`, the middle two values', where each value may lie in a plane of its own.
fn unit_records(c: vec4<u32>, first: vec4<f32>, last: vec4<f32>, more: array<vec4<f32>, 2>)
    -> array<vec4<f32>, 4> {
    if (QUAD_CHANNELS == 1u) { return array<vec4<f32>, 4>(first, first, first, first); }
    if (QUAD_CHANNELS == 2u) {
        return array<vec4<f32>, 4>(first, select(first, last, c.y != c.x),
                                   select(first, last, c.z != c.x), last);
    }
    return array<vec4<f32>, 4>(first, more[0], more[1], last);
}

// The records' field f (0-3) of each value, as a vec4 over the unit's values.
fn field(k: array<vec4<f32>, 4>, f: u32) -> vec4<f32> {
    return vec4<f32>(k[0][f], k[1][f], k[2][f], k[3][f]);
}

// ---- normalize ----
// nm_channel: per channel (mean, invstd, gamma, beta), from stats_finalize (training) or
// channel_record (eval mode).
@group(0) @binding(1) var<storage, read> nm_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> nm_channel: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> nm_y: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> nm_res: array<vec4<f32>>;

@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let units = element_units();
    if (i >= units) { return; }
    let j = element_indices(i, units);
    let x = array<vec4<f32>, 4>(nm_x[j.x], nm_x[j.y], nm_x[j.z], nm_x[j.w]);
    var r = array<vec4<f32>, 4>();
    if (RESIDUAL) {
        r = array<vec4<f32>, 4>(nm_res[j.x], nm_res[j.y], nm_res[j.z], nm_res[j.w]);
    }
    let c = unit_channels(i);
    let y1 = nm_value4(x[1], r[1], nm_records(c[1]));
    let y2 = nm_value4(x[2], r[2], nm_records(c[2]));
    let y3 = nm_value4(x[3], r[3], nm_records(c[3]));
    nm_y[i] = in_x(nm_value4(x[0], r[0], nm_records(c[0])), i);
    if (i + 256u < units) { nm_y[i + 256u] = in_x(y1, i + 256u); }
    if (i + 512u < units) { nm_y[i + 512u] = in_x(y2, i + 512u); }
    if (i + 768u < units) { nm_y[i + 768u] = in_x(y3, i + 768u); }
}

// The channel records of a unit's values in channels c.
fn nm_records(c: vec4<u32>) -> array<vec4<f32>, 4> {
    var more = array<vec4<f32>, 2>();
    if (QUAD_CHANNELS == 4u) { more = array<vec4<f32>, 2>(nm_channel[c.y], nm_channel[c.z]); }
    var last = vec4<f32>(0.0);
    if (QUAD_CHANNELS != 1u) { last = nm_channel[c.w]; }
    return unit_records(c, nm_channel[c.x], last, more);
}

// Output of a unit's values x (residual r) with their channels' records k: the normalized
// values, plus the residual when RESIDUAL, then the ReLU when RELU (the order of normalize
// followed by elementwise add_relu).
fn nm_value4(x: vec4<f32>, r: vec4<f32>, k: array<vec4<f32>, 4>) -> vec4<f32> {
    var v = (x - field(k, 0u)) * field(k, 1u) * field(k, 2u) + field(k, 3u);
    if (RESIDUAL) { v = v + r; }
    if (RELU) { v = relu_value4(v); }
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
@group(0) @binding(6) var<storage, read_write> bf_coef: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> bf_coef2: array<f32>;
@group(0) @binding(8) var<storage, read> bf_mean: array<f32>;

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
    let invstd = bf_invstd[c];
    let coef0 = bf_gamma[c] * invstd;
    let coef1 = select(gbeta * inv_m, 0.0, EVAL);
    let coef2 = select(ggamma * inv_m, 0.0, EVAL);
    bf_coef[c] = vec4<f32>(bf_mean[c], invstd, coef0, coef1);
    bf_coef2[c] = coef2;
}

// Partial (sum dy, sum dy * xhat) of chunk k of channel c; zeros past the last chunk (loaded
// from a safe index, as sf_triple).
fn bf_pair(c: u32, k: u32) -> vec2<f32> {
    let o = (c * params.chunks + min(k, params.chunks - 1u)) * 2u;
    let t = vec2<f32>(bf_partials[o], bf_partials[o + 1u]);
    return select(vec2<f32>(0.0), t, k < params.chunks);
}

// ---- backward_input, backward_input_inplace (the element passes above) ----
// Per channel from backward_finalize: bi_coef's record (mean, invstd, coef0, coef1) and
// bi_coef2's coef2 (a second record of one value: a CPU adapter's load costs about as much per
// value as per load, so a padded vec4 would cost more than the values it holds).
@group(0) @binding(1) var<storage, read> bi_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bi_y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bi_gy: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bi_coef: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bi_coef2: array<f32>;
@group(0) @binding(6) var<storage, read_write> bi_gx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let units = element_units();
    if (i >= units) { return; }
    let j = element_indices(i, units);
    let gx = bi_units(i, j, array<vec4<f32>, 4>(bi_gy[j.x], bi_gy[j.y], bi_gy[j.z], bi_gy[j.w]));
    bi_gx[i] = gx[0];
    if (i + 256u < units) { bi_gx[i + 256u] = gx[1]; }
    if (i + 512u < units) { bi_gx[i + 512u] = gx[2]; }
    if (i + 768u < units) { bi_gx[i + 768u] = gx[3]; }
}

// gx of thread i's four units j (element_indices) from their upstream gradients gy, all loads
// before the arithmetic: bi_value4 of each, the values past x's end zero.
fn bi_units(i: u32, j: vec4<u32>, gy: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    let x = array<vec4<f32>, 4>(bi_x[j.x], bi_x[j.y], bi_x[j.z], bi_x[j.w]);
    let g = bi_mask4(j, gy);
    let c = unit_channels(i);
    return array<vec4<f32>, 4>(in_x(bi_value4(g[0], x[0], c[0]), i),
                               in_x(bi_value4(g[1], x[1], c[1]), i + 256u),
                               in_x(bi_value4(g[2], x[2], c[2]), i + 512u),
                               in_x(bi_value4(g[3], x[3], c[3]), i + 768u));
}

// The upstream gradients g of units j masked by the ReLU's outputs there when RELU.
fn bi_mask4(j: vec4<u32>, g: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    if (!RELU) { return g; }
    let z = vec4<f32>(0.0);
    let y = array<vec4<f32>, 4>(bi_y[j.x], bi_y[j.y], bi_y[j.z], bi_y[j.w]);
    return array<vec4<f32>, 4>(select(z, g[0], relu_passes4(y[0])),
                               select(z, g[1], relu_passes4(y[1])),
                               select(z, g[2], relu_passes4(y[2])),
                               select(z, g[3], relu_passes4(y[3])));
}

// gx of a unit's values (dy, x) in channels c: coef0 * (dy - coef1 - xhat * coef2), xhat =
// (x - mean) * invstd, each value with its channel's record.
fn bi_value4(dy: vec4<f32>, x: vec4<f32>, c: vec4<u32>) -> vec4<f32> {
    var more = array<vec4<f32>, 2>();
    var more2 = array<vec4<f32>, 2>();
    if (QUAD_CHANNELS == 4u) {
        more = array<vec4<f32>, 2>(bi_coef[c.y], bi_coef[c.z]);
        more2 = array<vec4<f32>, 2>(vec4<f32>(bi_coef2[c.y]), vec4<f32>(bi_coef2[c.z]));
    }
    var last = vec4<f32>(0.0);
    var last2 = vec4<f32>(0.0);
    if (QUAD_CHANNELS != 1u) {
        last = bi_coef[c.w];
        last2 = vec4<f32>(bi_coef2[c.w]);
    }
    let k = unit_records(c, bi_coef[c.x], last, more);
    let k2 = unit_records(c, vec4<f32>(bi_coef2[c.x]), last2, more2);
    let xhat = (x - field(k, 0u)) * field(k, 1u);
    return field(k, 2u) * (dy - field(k, 3u) - xhat * field(k2, 0u));
}

// backward_input reading gy from and writing gx to binding 3: each unit is read before the same
// thread writes it, so the overwrite is safe.
@group(0) @binding(3) var<storage, read_write> bii_g: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_input_inplace(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = elements_base(wg, nwg, lid);
    let units = element_units();
    if (i >= units) { return; }
    let j = element_indices(i, units);
    let gx = bi_units(i, j, array<vec4<f32>, 4>(bii_g[j.x], bii_g[j.y], bii_g[j.z], bii_g[j.w]));
    bii_g[i] = gx[0];
    if (i + 256u < units) { bii_g[i + 256u] = gx[1]; }
    if (i + 512u < units) { bii_g[i + 512u] = gx[2]; }
    if (i + 768u < units) { bii_g[i + 768u] = gx[3]; }
}


// ---- pooled_backward_input (see the header) ----
// One value per element (the pooled gradient's gather is per value); bi_coef's and bi_coef2's
// records.
@group(0) @binding(1) var<storage, read_write> pbi_x: array<f32>;
@group(0) @binding(2) var<storage, read> pbi_y: array<f32>;
@group(0) @binding(3) var<storage, read> pbi_gy: array<f32>;

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
    let g1 = pbi_value(vec2<f32>(dy.y, x.y), c.y);
    let g2 = pbi_value(vec2<f32>(dy.z, x.z), c.z);
    let g3 = pbi_value(vec2<f32>(dy.w, x.w), c.w);
    pbi_x[i] = pbi_value(vec2<f32>(dy.x, x.x), c.x);
    if (i + 256u < total) { pbi_x[i + 256u] = g1; }
    if (i + 512u < total) { pbi_x[i + 512u] = g2; }
    if (i + 768u < total) { pbi_x[i + 768u] = g3; }
}

// gx of an element with (dy, x) = e in channel c (bi_value4's arithmetic on one value).
fn pbi_value(e: vec2<f32>, c: u32) -> f32 {
    let k = bi_coef[c];
    let xhat = (e.y - k.x) * k.y;
    return k.z * (e.x - k.w - xhat * bi_coef2[c]);
}

// dy of element i of x: the pooled gradient pbi_gy summed over the outputs whose windows hold
// it, whose argmax it is and whose output pbi_y is positive, in max_backward's order. At most
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
            let hit = inside & (pool_idx[o] == q) & relu_passes(pbi_y[o]);
            acc = acc + select(0.0, pbi_gy[o], hit);
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
