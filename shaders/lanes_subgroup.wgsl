// Exchanges between a subgroup's lanes for butterfly.wgsl's levels d < SUBGROUP_LANES: the value
// of lane ^ d, through subgroupShuffleXor (needs the adapter feature SUBGROUP). The host compiles
// this file into the reducing kernels where it verified (src/gpu/lanes.rs) that each subgroup is
// a run of consecutive local invocation indices (lane = lid % size, so lid ^ d for d < size is
// lane ^ d of the same subgroup), and sets SUBGROUP_LANES to the adapter's smallest subgroup size:
// a pipeline given larger subgroups still has the pairs d < SUBGROUP_LANES within them.
//
// No bindings or entry points.

override SUBGROUP_LANES: u32 = 1u;

fn lanes_xor(v: f32, d: u32) -> f32 { return subgroupShuffleXor(v, d); }
fn lanes_xor2(v: vec2<f32>, d: u32) -> vec2<f32> { return subgroupShuffleXor(v, d); }
fn lanes_xor3(v: vec3<f32>, d: u32) -> vec3<f32> { return subgroupShuffleXor(v, d); }
fn lanes_xor4(v: vec4<f32>, d: u32) -> vec4<f32> { return subgroupShuffleXor(v, d); }
