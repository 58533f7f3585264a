// Elementwise kernels over flat f32 buffers.
//
// Math (per element i < n):
//   relu_forward:   y[i]  = max(x[i], 0), a NaN kept (relu_value)
//   relu_backward:  gx[i] = gy[i] if y[i] > 0 or y[i] is a NaN, else 0 (relu_passes; y is the
//                   forward output)
//   relu_backward_inplace: g[i] = the same, gy replaced by gx in place
//   add:            out[i] = a[i] + b[i]
//   add_relu:       out[i] = relu_value(a[i] + b[i])
//   axpy:           y[i] += alpha * x[i]                      (in place)
//   scale:          out[i] = alpha * x[i]
//   scale_by:       out[i] = x[i] * s[0]                      (s: a one-element tensor)
//   fill:           out[i] = alpha
//
// Dispatch: one thread per element, 256 threads per workgroup; the grid is split over x and y to
// respect the 65,535-workgroups-per-dimension limit, so the linear index is
// (wg.x + wg.y * num_workgroups.x) * 256 + local index.
//
// The entry points ending in 4 are the same ops on vec4s: one thread per four elements, params.n
// the number of vec4s. The host uses them where n is a multiple of 4 (every activation of a
// ResNet but the 7x7 ones of odd batches), for a quarter of the threads, loads and stores: on
// lavapipe an add of 16M elements took 98-105 ms one element per thread and 22-28 ms four.
// Each element gets the same arithmetic either way.
//
// Bindings (group 0): 0 = Params (uniform); 1.. = the storage buffers named per entry point below.

struct Params {
    n: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// ---- unary: binding 1 = input (read), binding 2 = output (write) ----
@group(0) @binding(1) var<storage, read> un_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> un_y: array<f32>;

@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un_y[i] = relu_value(un_x[i]); }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un_y[i] = params.alpha * un_x[i]; }
}

// axpy: binding 1 = x (read), binding 2 = y (read_write, accumulated in place)
@compute @workgroup_size(256)
fn axpy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un_y[i] = un_y[i] + params.alpha * un_x[i]; }
}

// relu_backward_inplace: binding 1 = y (the forward output, read), binding 2 = g (read_write:
// gy in, gx out)
@compute @workgroup_size(256)
fn relu_backward_inplace(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un_y[i] = select(0.0, un_y[i], relu_passes(un_x[i])); }
}

// ---- fill: binding 1 = output ----
@group(0) @binding(1) var<storage, read_write> fill_y: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { fill_y[i] = params.alpha; }
}

// ---- binary: binding 1 = a, binding 2 = b, binding 3 = out ----
@group(0) @binding(1) var<storage, read> bin_a: array<f32>;
@group(0) @binding(2) var<storage, read> bin_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> bin_out: array<f32>;

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin_out[i] = bin_a[i] + bin_b[i]; }
}

@compute @workgroup_size(256)
fn add_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin_out[i] = relu_value(bin_a[i] + bin_b[i]); }
}

// relu_backward: a = y (forward output), b = gy, out = gx
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin_out[i] = select(0.0, bin_b[i], relu_passes(bin_a[i])); }
}

// scale_by: a = x, b = s (one element), out = x * s[0]
@compute @workgroup_size(256)
fn scale_by(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin_out[i] = bin_a[i] * bin_b[0]; }
}

// ---- four elements per thread (see the header); bindings as the scalar entry points ----
@group(0) @binding(1) var<storage, read> un4_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> un4_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn relu_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un4_y[i] = relu_value4(un4_x[i]); }
}

@compute @workgroup_size(256)
fn scale4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un4_y[i] = params.alpha * un4_x[i]; }
}

@compute @workgroup_size(256)
fn axpy4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un4_y[i] = un4_y[i] + params.alpha * un4_x[i]; }
}

@compute @workgroup_size(256)
fn relu_backward_inplace4(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { un4_y[i] = select(vec4<f32>(0.0), un4_y[i], relu_passes4(un4_x[i])); }
}

@group(0) @binding(1) var<storage, read_write> fill4_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn fill4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { fill4_y[i] = vec4<f32>(params.alpha); }
}

@group(0) @binding(1) var<storage, read> bin4_a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bin4_b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bin4_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn add4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin4_out[i] = bin4_a[i] + bin4_b[i]; }
}

@compute @workgroup_size(256)
fn add_relu4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) { bin4_out[i] = relu_value4(bin4_a[i] + bin4_b[i]); }
}

@compute @workgroup_size(256)
fn relu_backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i < params.n) {
        bin4_out[i] = select(vec4<f32>(0.0), bin4_b[i], relu_passes4(bin4_a[i]));
    }
}
