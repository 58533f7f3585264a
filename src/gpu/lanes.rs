//! Subgroup lanes for the workgroup reductions (`shaders/butterfly.wgsl`), and for the f32 conv
//! GEMMs on CPU adapters (`shaders/conv_fma.wgsl`, `ops::conv_shares_a`).
//!
//! Every kernel that combines values across a workgroup (batch norm's partial sums, the loss,
//! the reductions, the global average pool, the matrix-vector product, gradient clipping) does
//! so by butterfly: at level d = 1, 2, 4, ... each invocation takes the value of invocation
//! `lid ^ d`. Through workgroup memory each level costs a barrier. Where the device has subgroup
//! operations (wgpu's `SUBGROUP` feature, native only), the levels below the subgroup size go
//! through `subgroupShuffleXor` instead, without a barrier: 5 of a 64-thread workgroup's 6
//! levels on NVIDIA (32 lanes), 3 on lavapipe (8).
//!
//! That needs each subgroup to be a run of consecutive local invocation indices, which Vulkan
//! does not promise (drivers lay out one-dimensional workgroups so). [`probe`] checks it on the
//! device, once, before any reduction uses it. Both ways pair the same values in the same order,
//! so the results are the same bits either way ([`crate::Gpu::set_subgroup_reductions`] switches,
//! as `RESNET_WGPU_SUBGROUPS=0` does from the start).
//!
//! On a CPU adapter the same verified subgroups let the f32 conv GEMMs share reads of workgroup
//! memory: a row of a tile's threads needs the same values of A, and one lane per quad reads
//! them and broadcasts them to its subgroup (`subgroupBroadcast`), where each read is otherwise
//! a loop over the SIMD lanes. The same switch turns that off, again with the same bits.

use super::Gpu;

/// The reductions' engine: the file `kernel!` compiles between a lanes file and the kernel file.
#[doc(hidden)]
pub const REDUCING_ENGINE: &str = "butterfly.wgsl";

/// The engines whose kernels get a lanes file before them ([`super::Kernel::source`]): the
/// reductions' and the f32 conv engine (`shaders/conv_fma.wgsl`, whose tiles for CPU adapters
/// share reads of A between a subgroup's lanes; `ops::conv::conv_shares_a`).
#[doc(hidden)]
pub const LANES_ENGINES: [&str; 2] = [REDUCING_ENGINE, "conv_fma.wgsl"];

/// The files whose kernels get a lanes file before them (and before their engine, if any),
/// with the verified subgroups of [`crate::Gpu::conv_gemm_lanes`], not the reductions' lanes:
/// the GEMM for CPU adapters that shares A through a subgroup's lanes
/// (`shaders/gemm_lanes.wgsl`) and Winograd's transforms that move vec4s by quads of lanes
/// (`shaders/winograd_quads.wgsl`), which the host dispatches only with 4, 8 or 16 of them;
/// and the narrow convolutions (`shaders/conv_narrow.wgsl`), which share reads of their common
/// operand through those lanes where they exist and read it in each thread otherwise.
#[doc(hidden)]
pub const LANES_FILES: [&str; 3] = ["gemm_lanes.wgsl", "winograd_quads.wgsl", "conv_narrow.wgsl"];

/// The shader files whose kernels are declared with `reducing_kernel!` (every entry point of
/// each: they share one module), for the tools that compose sources themselves
/// (`tests/shaders.rs`, `examples/kernel_stats.rs`).
#[doc(hidden)]
pub const REDUCING_FILES: [&str; 6] = [
    "batchnorm.wgsl",
    "loss.wgsl",
    "matmul.wgsl",
    "optim.wgsl",
    "pool.wgsl",
    "reduce.wgsl",
];

/// `shaders/lanes_subgroup.wgsl`: exchanges through subgroup shuffles.
#[doc(hidden)]
pub const LANES_SUBGROUP: &str = include_str!("../../shaders/lanes_subgroup.wgsl");

/// `shaders/lanes_memory.wgsl`: no exchanges between lanes (every level through memory).
#[doc(hidden)]
pub const LANES_MEMORY: &str = include_str!("../../shaders/lanes_memory.wgsl");

/// The invocations the probe records: the largest reducing workgroup.
#[cfg(not(target_arch = "wasm32"))]
const PROBE_INVOCATIONS: u32 = 256;

#[cfg(not(target_arch = "wasm32"))]
const PROBE: super::Kernel = crate::kernel!("lanes_probe.wgsl", "lanes_probe");

/// The fewest lanes with which the reductions use subgroups unless asked
/// ([`crate::Gpu::set_subgroup_reductions`]). SwiftShader's 4-lane subgroups save two levels of
/// a 64-thread butterfly's six, and its shuffles cost more than the memory they save: its batch
/// norm partial sums ran 8-45% slower with them (a ResNet-18 32x32 step's profile, two rounds),
/// where lavapipe's 8 lanes made them 10-40% faster than the old tree.
const DEFAULT_MIN_LANES: u32 = 8;

/// The lanes the reductions use from the start on a device whose probe verified `verified` (0
/// for none): those unless they are fewer than [`DEFAULT_MIN_LANES`] or
/// `RESNET_WGPU_SUBGROUPS=0` turns them off.
pub(super) fn default_lanes(verified: u32) -> u32 {
    if subgroups_off_by_env() || verified < DEFAULT_MIN_LANES {
        0
    } else {
        verified
    }
}

/// Whether `RESNET_WGPU_SUBGROUPS=0` turns subgroups off from the start.
pub(super) fn subgroups_off_by_env() -> bool {
    std::env::var("RESNET_WGPU_SUBGROUPS").is_ok_and(|v| v.trim() == "0")
}

/// The lanes per subgroup that reductions on `gpu` may exchange values between: the adapter's
/// smallest subgroup size, where the device has the `SUBGROUP` feature and a probe dispatch found
/// every subgroup of a 256-thread workgroup to be a run of consecutive local invocation indices
/// (lane = index % size) of a power-of-two size at least that. A pipeline given larger
/// subgroups (AMD's 64 lanes against 32) keeps the pairs of the smaller size within them. None
/// otherwise, or where the probe fails.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn probe(gpu: &Gpu) -> Option<u32> {
    if !gpu.0.device.features().contains(wgpu::Features::SUBGROUP) {
        return None;
    }
    let min = gpu.0.device.adapter_info().subgroup_min_size;
    if min < 2 || !min.is_power_of_two() {
        return None;
    }
    let n = PROBE_INVOCATIONS;
    // A buffer of its own, not the pool's, whose statistics count the tensors' buffers.
    let out = gpu.0.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("subgroup probe"),
        size: u64::from(n) * 8,
        usage: super::STORAGE_USAGE,
        mapped_at_creation: false,
    });
    gpu.dispatch(&PROBE, &n, &[&out], super::grid_1d(1)).ok()?;
    let bytes = pollster::block_on(gpu.read_bytes(&out, u64::from(n) * 8)).ok()?;
    let words: &[u32] = bytemuck::cast_slice(&bytes);
    contiguous(words, min).then_some(min)
}

/// On the web the reductions use workgroup memory: wgpu's WebGPU backend does not ask the
/// browser for subgroups (`gpu/device.rs`).
#[cfg(target_arch = "wasm32")]
pub(super) fn probe(_gpu: &Gpu) -> Option<u32> {
    None
}

/// Whether the probe's (lane, size) pairs, one per local invocation index, show subgroups that
/// are runs of consecutive indices, each of a power-of-two size that is a multiple of `min`.
#[cfg(not(target_arch = "wasm32"))]
fn contiguous(words: &[u32], min: u32) -> bool {
    words.chunks_exact(2).enumerate().all(|(lid, pair)| {
        let (lane, size) = (pair[0], pair[1]);
        size.is_power_of_two() && size >= min && lane == lid as u32 % size
    })
}

#[cfg(test)]
mod tests {
    use super::contiguous;

    #[test]
    fn subgroups_must_be_runs_of_consecutive_indices() {
        let runs = |size: u32| -> Vec<u32> { (0..64).flat_map(|i| [i % size, size]).collect() };
        assert!(contiguous(&runs(8), 8));
        assert!(contiguous(&runs(64), 32));
        assert!(
            !contiguous(&runs(16), 32),
            "smaller than the adapter's smallest"
        );
        let mut swapped = runs(8);
        swapped.swap(0, 2); // lanes 0 and 1 of the first subgroup exchanged
        assert!(!contiguous(&swapped, 8));
        let odd: Vec<u32> = (0..60).flat_map(|i| [i % 12, 12]).collect();
        assert!(!contiguous(&odd, 4), "not a power of two");
    }
}
