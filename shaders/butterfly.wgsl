// Workgroup reductions by butterfly, the engine of every kernel file that reduces across
// invocations (batchnorm, loss, matmul's matvec, optim's clipping, pool's global average, reduce).
// The host compiles it between one of the lane files (lanes_subgroup.wgsl, lanes_memory.wgsl)
// and the kernel file, which defines REDUCE_WG, its reducing entry points' workgroup size.
//
// Math: each invocation of a segment of `seg` consecutive invocations (by
// local_invocation_index lid; seg a power of two dividing REDUCE_WG, the segments aligned to it)
// ends with the whole segment's result. Level d = 1, 2, 4, ..., seg / 2 combines the values of
// lid and lid ^ d, the one of the lower index first:
//   group_sum, group_sum2, group_sum4:  x + y (componentwise)
//   group_max:                          max(lower, upper)
//   (batchnorm.wgsl's group_stats:      Chan's merge of (count, mean, M2), lower first)
// These are the pairs of a binary tree over contiguous ranges (values 0 and 1, then 0-1 and
// 2-3, ...), so every invocation computes the same bits, and so does every subgroup size: a
// level through a subgroup's lanes gives what the same level through workgroup memory gives.
//
// Levels d < SUBGROUP_LANES exchange values between a subgroup's lanes with
// subgroupShuffleXor (lanes_subgroup.wgsl: SUBGROUP_LANES is the adapter's smallest subgroup
// size, set by the host where it has verified that subgroups are runs of consecutive lid, as
// lane = lid % size needs); with lanes_memory.wgsl (SUBGROUP_LANES = 1) every level goes
// through workgroup memory. A level there stores the value at lid, waits at a barrier and reads
// lid ^ d's: two buffers of REDUCE_WG values, alternating per level, so that a level's stores
// never overwrite values the level before still reads (one barrier per level); one barrier
// before the first such level lets the reads of an earlier reduction finish.
//
// Call from uniform control flow: every invocation of the workgroup, with the same seg.
// No bindings or entry points of its own.

var<workgroup> bfly_f32: array<f32, 2u * REDUCE_WG>;
var<workgroup> bfly_vec2: array<vec2<f32>, 2u * REDUCE_WG>;
var<workgroup> bfly_vec3: array<vec3<f32>, 2u * REDUCE_WG>;
var<workgroup> bfly_vec4: array<vec4<f32>, 2u * REDUCE_WG>;

// Where level d's buffer starts: the two alternate with log2(d).
fn bfly_buffer(d: u32) -> u32 {
    return (countTrailingZeros(d) & 1u) * REDUCE_WG;
}

// Before a reduction over segments of seg: a barrier if any level goes through memory.
fn bfly_begin(seg: u32) {
    if (seg > SUBGROUP_LANES) { workgroupBarrier(); }
}

// Whether lid is the upper of the pair at level d.
fn bfly_upper(lid: u32, d: u32) -> bool {
    return (lid & d) != 0u;
}

// The value of invocation lid ^ d, for invocation lid holding v, at level d.
fn bfly_xor(lid: u32, v: f32, d: u32) -> f32 {
    if (d < SUBGROUP_LANES) { return lanes_xor(v, d); }
    let b = bfly_buffer(d);
    bfly_f32[b + lid] = v;
    workgroupBarrier();
    return bfly_f32[b + (lid ^ d)];
}

fn bfly_xor2(lid: u32, v: vec2<f32>, d: u32) -> vec2<f32> {
    if (d < SUBGROUP_LANES) { return lanes_xor2(v, d); }
    let b = bfly_buffer(d);
    bfly_vec2[b + lid] = v;
    workgroupBarrier();
    return bfly_vec2[b + (lid ^ d)];
}

fn bfly_xor3(lid: u32, v: vec3<f32>, d: u32) -> vec3<f32> {
    if (d < SUBGROUP_LANES) { return lanes_xor3(v, d); }
    let b = bfly_buffer(d);
    bfly_vec3[b + lid] = v;
    workgroupBarrier();
    return bfly_vec3[b + (lid ^ d)];
}

fn bfly_xor4(lid: u32, v: vec4<f32>, d: u32) -> vec4<f32> {
    if (d < SUBGROUP_LANES) { return lanes_xor4(v, d); }
    let b = bfly_buffer(d);
    bfly_vec4[b + lid] = v;
    workgroupBarrier();
    return bfly_vec4[b + (lid ^ d)];
}

// Addition is commutative bit for bit, so both invocations of a pair add in either order.
fn group_sum(lid: u32, v: f32, seg: u32) -> f32 {
    bfly_begin(seg);
    var x = v;
    for (var d = 1u; d < seg; d = d << 1u) { x = x + bfly_xor(lid, x, d); }
    return x;
}

fn group_sum2(lid: u32, v: vec2<f32>, seg: u32) -> vec2<f32> {
    bfly_begin(seg);
    var x = v;
    for (var d = 1u; d < seg; d = d << 1u) { x = x + bfly_xor2(lid, x, d); }
    return x;
}

fn group_sum4(lid: u32, v: vec4<f32>, seg: u32) -> vec4<f32> {
    bfly_begin(seg);
    var x = v;
    for (var d = 1u; d < seg; d = d << 1u) { x = x + bfly_xor4(lid, x, d); }
    return x;
}

// max is not (a NaN or a signed zero may come out of either operand), so the lower goes first.
fn group_max(lid: u32, v: f32, seg: u32) -> f32 {
    bfly_begin(seg);
    var x = v;
    for (var d = 1u; d < seg; d = d << 1u) {
        let y = bfly_xor(lid, x, d);
        x = select(max(x, y), max(y, x), bfly_upper(lid, d));
    }
    return x;
}
