// gemm_lanes.wgsl's 32-byte reads as two vec4<f32> reads each: the file the host puts before
// gemm_lanes.wgsl in the kernels it dispatches with WIDE off (gemm_wide.wgsl in the others), so
// that every module has these functions and needs no 64-bit integers; were WIDE set with it,
// they would read the same values.
//
// Math: none; floats 8 i .. 8 i + 7 of A and of B.
//
// Bindings: none of its own (A and B at 1 and 2, gemm_lanes.wgsl's `a` and `b`). No dispatch
// of its own.

fn wide_a(i: u32) -> array<vec4<f32>, 2> { return array<vec4<f32>, 2>(a[2u * i], a[2u * i + 1u]); }
fn wide_b(i: u32) -> array<vec4<f32>, 2> { return array<vec4<f32>, 2>(b[2u * i], b[2u * i + 1u]); }
