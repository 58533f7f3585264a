// Exchanges between a subgroup's lanes for butterfly.wgsl's levels d < SUBGROUP_LANES: the value
// of lane ^ d, through subgroupShuffleXor (needs the adapter feature SUBGROUP); for the f32
// conv engine's shared A (conv_fma.wgsl), the GEMMs without barriers (gemm_lanes.wgsl) and the
// narrow convolutions' shared reads (conv_narrow.wgsl), a lane's value in every lane
// (subgroupBroadcast), whether any lane's flag is set (subgroupAny) and, for the GEMMs' 32-byte
// reads of B, a lane's value in the lanes that ask for it (subgroupShuffle); for Winograd's
// transforms by quads (winograd_quads.wgsl), the 4x4 transpose of each quad of lanes' vectors
// (subgroupShuffle). The host compiles this file into those kernels
// where it verified (src/gpu/lanes.rs) that each subgroup is a run of consecutive local
// invocation indices (lane = lid % size, so lid ^ d for d < size is lane ^ d of the same
// subgroup), and sets SUBGROUP_LANES to the adapter's smallest subgroup size: a pipeline given
// larger subgroups still has the pairs d < SUBGROUP_LANES within them.
//
// No bindings or entry points.

override SUBGROUP_LANES: u32 = 1u;

fn lanes_xor(v: f32, d: u32) -> f32 { return subgroupShuffleXor(v, d); }
fn lanes_xor2(v: vec2<f32>, d: u32) -> vec2<f32> { return subgroupShuffleXor(v, d); }
fn lanes_xor3(v: vec3<f32>, d: u32) -> vec3<f32> { return subgroupShuffleXor(v, d); }
fn lanes_xor4(v: vec4<f32>, d: u32) -> vec4<f32> { return subgroupShuffleXor(v, d); }

// Lane `lane`'s v, in every lane: `lane` is a constant below SUBGROUP_LANES and
// BROADCAST_LANES at every call, and subgroupBroadcast takes its lane as a constant
// expression, hence the cases (each call site folds to one of them).
const BROADCAST_LANES: u32 = 8u;   // the lanes lanes_broadcast4 has cases for

fn lanes_broadcast4(v: vec4<f32>, lane: u32) -> vec4<f32> {
    switch lane {
        case 0u: { return subgroupBroadcast(v, 0u); }
        case 1u: { return subgroupBroadcast(v, 1u); }
        case 2u: { return subgroupBroadcast(v, 2u); }
        case 3u: { return subgroupBroadcast(v, 3u); }
        case 4u: { return subgroupBroadcast(v, 4u); }
        case 5u: { return subgroupBroadcast(v, 5u); }
        case 6u: { return subgroupBroadcast(v, 6u); }
        default: { return subgroupBroadcast(v, 7u); }
    }
}

fn lanes_any(b: bool) -> bool { return subgroupAny(b); }

// Lane `source`'s v, `source` a lane of this subgroup that may differ per lane (subgroupShuffle):
// the GEMMs without barriers' 32-byte reads of B (gemm_lanes.wgsl), each lane's columns from
// the lane that read them.
fn lanes_shuffle4(v: vec4<f32>, source: u32) -> vec4<f32> { return subgroupShuffle(v, source); }

// The 4x4 transpose of each quad of lanes' vectors: lane 4 q + j (j = lane & 3, `lane` the
// caller's subgroup_invocation_id) gets (lane 4 q + e's w[j] for e = 0..3). In step k lane
// 4 q + j reads its component e = j + k (mod 4) from lane 4 q + e, which sends its w[e - k]:
// every index is a function of the lane alone, so each shuffle is a fixed permutation.
fn lanes_quad_transpose(w: vec4<f32>, lane: u32) -> vec4<f32> {
    let j = lane & 3u;
    let q = lane - j;
    var o = vec4<f32>();
    for (var k = 0u; k < 4u; k++) {
        let e = (j + k) & 3u;
        o[e] = subgroupShuffle(w[(j - k) & 3u], q + e);
    }
    return o;
}
