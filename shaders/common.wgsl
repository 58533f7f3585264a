// Helpers that every kernel module may call. Kernel::source (src/gpu/mod.rs) prepends this
// file to each module, after a variant's declarations (whose `enable` directives must come
// first) and before the engine and the kernel file; tests/shaders.rs and
// examples/kernel_stats.rs compose their sources the same way. No bindings, no entry points.
//
// Math:
//   linear_index(wg, nwg, lid): the index of local invocation lid of a 256-thread workgroup
//                   in a one-dimensional grid split over x and y (workgroup wg.x + wg.y * nwg.x),
//                   as the kernels of one thread per element (or vec4) dispatch it
//   is_nan(v):      whether v is a NaN, from its bits: WGSL lets implementations assume that
//                   no float is a NaN, and drivers do fold `v != v` to false (lavapipe's max
//                   pool had let a later, smaller value replace a NaN)
//   relu_value(v):  PyTorch's ReLU: v where it is positive or a NaN (a NaN propagates), else
//                   0. Not max(v, 0), which WGSL leaves to the implementation for a NaN (GPUs
//                   return the other operand, so a NaN would vanish behind finite values)
//   relu_value4(v): relu_value of each component
//   relu_passes(y): whether the ReLU's backward passes the gradient at its output y: where y is
//                   positive or a NaN, as PyTorch's (threshold_backward: zero where y <= 0).
//                   The mask y > 0 would drop it at a NaN. relu_passes4: of each component
//   BnChannel, bn_invstd(var, eps), bn_normalize(ch, v): inference's batch norm of one
//                   channel, (v - mean) * invstd * gamma + beta with invstd = 1 / sqrt(var +
//                   eps), in batchnorm.wgsl's normalize order: the fused conv epilogues
//                   (conv.wgsl, winograd.wgsl, gemm_lanes.wgsl) share it, so that they give the
//                   separate kernels' bits; batchnorm.wgsl's statistics take their invstd from
//                   bn_invstd too; bn_normalize4: of four values of one channel
//   divide(n, d):   n / d for n < 2^24, through f32 (a CPU adapter's lanes divide floats as
//                   vectors, integers one lane at a time): the quotient rounded, then
//                   corrected by one either way (gemm_lanes.wgsl, im2col.wgsl)

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * 256u + lid;
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn relu_value(v: f32) -> f32 {
    return select(0.0, v, (v > 0.0) | is_nan(v));
}

fn relu_value4(v: vec4<f32>) -> vec4<f32> {
    let nan = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return select(vec4<f32>(0.0), v, (v > vec4<f32>(0.0)) | nan);
}

fn relu_passes(y: f32) -> bool {
    return (y > 0.0) | is_nan(y);
}

fn relu_passes4(y: vec4<f32>) -> vec4<bool> {
    let nan = (bitcast<vec4<u32>>(y) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return (y > vec4<f32>(0.0)) | nan;
}

struct BnChannel {
    mean: f32,
    invstd: f32,
    gamma: f32,
    beta: f32,
}

fn bn_invstd(variance: f32, eps: f32) -> f32 {
    return 1.0 / sqrt(variance + eps);
}

fn bn_normalize(ch: BnChannel, v: f32) -> f32 {
    return (v - ch.mean) * ch.invstd * ch.gamma + ch.beta;
}

// bn_normalize of four values of one channel, each as bn_normalize computes it.
fn bn_normalize4(ch: BnChannel, v: vec4<f32>) -> vec4<f32> {
    return (v - ch.mean) * ch.invstd * ch.gamma + ch.beta;
}

fn divide(n: u32, d: u32) -> u32 {
    var q = u32(f32(n) / f32(d));
    if (q * d > n) { q -= 1u; }
    if ((q + 1u) * d <= n) { q += 1u; }
    return q;
}
