// Where each invocation of a 256-thread workgroup sits in its subgroup, for src/gpu/lanes.rs,
// which lets butterfly.wgsl exchange values between lanes (lanes_subgroup.wgsl) only where every
// subgroup is a run of consecutive local invocation indices: lane = lid % size.
//
// Math: out[2 lid] = subgroup_invocation_id, out[2 lid + 1] = subgroup_size, for lid < 256 (the
// largest reducing workgroup). Needs the adapter feature SUBGROUP.
//
// Dispatch: one workgroup. Bindings (group 0): 0 = Params (uniform: the invocations to record,
// 256), 1 = out [512] u32 (read_write).

struct Params {
    invocations: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn lanes_probe(@builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) size: u32) {
    if (lid < params.invocations) {
        out[2u * lid] = lane;
        out[2u * lid + 1u] = size;
    }
}
