// gemm_lanes.wgsl's 32-byte reads, where the device has 64-bit integers (wgpu's SHADER_INT64):
// the host puts this file before gemm_lanes.wgsl in the kernels it dispatches with WIDE on
// (src/ops/conv/lanes.rs, with_reads), gemm_wide_f32.wgsl in the others.
//
// Why: Mesa 22's lavapipe reads a value whose address differs per lane in a loop over the SIMD
// lanes, and each lane of each component waits there for a store to the stack to be forwarded
// (docs/speed.md, "Wide reads on CPU adapters"). That wait is per read, not per byte: a
// vec4<u64> read costs about what a vec4<f32> read does, and brings 8 floats instead of 4.
//
// Math: none; the 8 consecutive f32 of x[i] (x a vec4<u64> view of an f32 buffer), bit for bit
// (little-endian: each u64's low half is the first of its two floats).
//
// Bindings (group 0): 11 = A, 12 = B (read): the buffers bound at 1 and 2, as vec4<u64>s.
// The host reads them so only where the elements read are 32-byte aligned (gemm_lanes.wgsl,
// WIDE). No dispatch of its own.

@group(0) @binding(11) var<storage, read> a_wide: array<vec4<u64>>;
@group(0) @binding(12) var<storage, read> b_wide: array<vec4<u64>>;

// Floats 8 i .. 8 i + 7 of A and of B: the first four, then the last four.
fn wide_a(i: u32) -> array<vec4<f32>, 2> { return wide_floats(a_wide[i]); }
fn wide_b(i: u32) -> array<vec4<f32>, 2> { return wide_floats(b_wide[i]); }

fn wide_floats(v: vec4<u64>) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(vec4<f32>(low_f32(v.x), high_f32(v.x), low_f32(v.y), high_f32(v.y)),
                               vec4<f32>(low_f32(v.z), high_f32(v.z), low_f32(v.w), high_f32(v.w)));
}

fn low_f32(x: u64) -> f32 { return bitcast<f32>(u32(x & 0xfffffffflu)); }
fn high_f32(x: u64) -> f32 { return bitcast<f32>(u32(x >> 32u)); }
