// Reductions of a tensor or its rows or channels, each workgroup's threads' partial results
// combined by butterfly.wgsl.
//
// Math:
//   sum_rows:      out[r] = alpha * sum_{j < len} x[r * len + j]          (x viewed as [rows, len])
//   sum_channels:  out[c] = alpha * sum_{n < N, p < HW} x[(n * C + c) * HW + p]   (x is [N, C, HW])
//   abs_max:       out[g] = max |x[j]| over j = g * 256 + lid + t * rows * 256 (t >= 0, j < len):
//                  workgroup g's share of a grid-strided pass (rows = number of workgroups)
//   f16_scale:     out[0] = 2^(13 - e) where 2^e <= m = max_{j < len} x[j] < 2^(e + 1), so that
//                  m * out[0] lies in [2^13, 2^14) (f16 holds up to 65504); 1 where m is 0 or not
//                  finite. The power of two a tensor is multiplied by before rounding to f16
//                  (shaders/conv_mma.wgsl), computed from abs_max's partial maxima.
//
// Dispatch: one workgroup of 256 threads per output element (row or channel; abs_max: per
// partial maximum; f16_scale: a single workgroup); the grid is split over x and y to respect the
// 65,535 limit (index = wg.x + wg.y * num_workgroups.x). Each thread accumulates a strided
// partial sum (or maximum), then the workgroup combines the 256 partials in butterfly.wgsl's
// pairs (group_sum, group_max).
//
// Bindings (group 0): 0 = Params (uniform), 1 = x (read), 2 = out (read_write).

struct Params {
    rows: u32,   // sum_rows: rows;           sum_channels: C
    len: u32,    // sum_rows: row length;     sum_channels: HW
    batch: u32,  // sum_channels: N (unused by sum_rows)
    alpha: f32,  // scale applied to each result (1 for a sum, 1/count for a mean)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// The reducing workgroup size for butterfly.wgsl (group_sum, group_max over all 256 threads).
const REDUCE_WG: u32 = 256u;

@compute @workgroup_size(256)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = wg.x + wg.y * nwg.x;
    var acc = 0.0;
    if (r < params.rows) {
        let base = r * params.len;
        for (var j = lid; j < params.len; j = j + 256u) { acc = acc + x[base + j]; }
    }
    let total = group_sum(lid, acc, REDUCE_WG);
    if (lid == 0u && r < params.rows) { out[r] = total * params.alpha; }
}

@compute @workgroup_size(256)
fn sum_channels(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = wg.x + wg.y * nwg.x;
    var acc = 0.0;
    if (c < params.rows) {
        let count = params.batch * params.len;
        for (var j = lid; j < count; j = j + 256u) {
            let n = j / params.len;
            let p = j - n * params.len;
            acc = acc + x[(n * params.rows + c) * params.len + p];
        }
    }
    let total = group_sum(lid, acc, REDUCE_WG);
    if (lid == 0u && c < params.rows) { out[c] = total * params.alpha; }
}

@compute @workgroup_size(256)
fn abs_max(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = wg.x + wg.y * nwg.x;
    var m = 0.0;
    if (g < params.rows) {
        for (var j = g * 256u + lid; j < params.len; j = j + params.rows * 256u) {
            m = max(m, abs(x[j]));
        }
    }
    let total = group_max(lid, m, REDUCE_WG);
    if (lid == 0u && g < params.rows) { out[g] = total; }
}

@compute @workgroup_size(256)
fn f16_scale(@builtin(local_invocation_index) lid: u32) {
    var m = 0.0;
    for (var j = lid; j < params.len; j = j + 256u) { m = max(m, x[j]); }
    let total = group_max(lid, m, REDUCE_WG);
    if (lid == 0u) {
        var s = 1.0;
        // A finite (exponent bits not all ones), positive maximum.
        let finite = (bitcast<u32>(total) & 0x7f800000u) != 0x7f800000u;
        if (finite && total > 0.0) {
            let e = frexp(total).exp - 1;  // total = fract * 2^(e + 1), fract in [0.5, 1)
            s = ldexp(1.0, clamp(13 - e, -126, 127));
        }
        out[0] = s;
    }
}
