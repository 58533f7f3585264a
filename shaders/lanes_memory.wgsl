// butterfly.wgsl, conv_fma.wgsl and conv_narrow.wgsl without subgroup operations (adapters
// without the SUBGROUP feature, the web, or RESNET_WGPU_SUBGROUPS=0): SUBGROUP_LANES = 1, so
// every level of a reduction goes through workgroup memory, every thread of a conv GEMM reads
// its own A and every thread of a narrow convolution its own weights (or gy), and these
// exchanges are never called (but for lanes_broadcast4 from lane 0 of 1 in conv_narrow.wgsl,
// which is the thread's own value).
//
// No bindings or entry points.

const SUBGROUP_LANES: u32 = 1u;
const BROADCAST_LANES: u32 = 1u;

fn lanes_xor(v: f32, d: u32) -> f32 { return v; }
fn lanes_xor2(v: vec2<f32>, d: u32) -> vec2<f32> { return v; }
fn lanes_xor3(v: vec3<f32>, d: u32) -> vec3<f32> { return v; }
fn lanes_xor4(v: vec4<f32>, d: u32) -> vec4<f32> { return v; }
fn lanes_broadcast4(v: vec4<f32>, lane: u32) -> vec4<f32> { return v; }
fn lanes_any(b: bool) -> bool { return b; }
fn lanes_quad_transpose(w: vec4<f32>, lane: u32) -> vec4<f32> { return w; }
fn lanes_shuffle4(v: vec4<f32>, source: u32) -> vec4<f32> { return v; }
