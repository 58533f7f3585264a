//! A device of wgpu's no-op backend that stands in for a GPU the machine lacks. No kernel runs
//! (what the kernels would write stays zero) and nothing waits, but wgpu still checks every call
//! against the limits it was given, and this crate plans, allocates, records and submits exactly
//! as on a GPU with those limits. So the whole of a full-size step (an H100's ResNet-18 at
//! 224x224 and batch 128) runs here in a second or two: its calls checked, its pool memory
//! counted to the byte, and its host time (recording and submitting) measured. One difference
//! from the GPU: whether subgroups can serve the reductions is probed by running a kernel, so
//! here they use workgroup memory, which changes kernel variants but no dispatch or buffer.

#![allow(dead_code)] // the bench and the tests use different parts

use resnet_wgpu::{Gpu, GpuOptions, PlanFor, Result};

/// The limits this crate reads, as wgpu 30 reports them for an NVIDIA H100 through Vulkan:
/// 48 KiB of workgroup memory, 1,024 invocations, 65,535 workgroups per dimension, bindings of up
/// to `i32::MAX` bytes (wgpu's cap of the driver's 4 GiB), buffers of up to 4 GiB less 2 MiB
/// (the largest single allocation NVIDIA's drivers report), and storage buffers per stage far
/// beyond the 29 the widest kernel binds. The other limits are WebGPU's defaults.
pub fn h100_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_buffer_size: (4 << 30) - (2 << 20),
        max_storage_buffer_binding_size: i32::MAX as u64,
        max_storage_buffers_per_shader_stage: 1 << 16,
        max_compute_workgroup_storage_size: 48 << 10,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        max_compute_workgroup_size_y: 1024,
        max_compute_workgroup_size_z: 64,
        max_compute_workgroups_per_dimension: 65_535,
        min_uniform_buffer_offset_alignment: 64,
        min_storage_buffer_offset_alignment: 16,
        ..wgpu::Limits::default()
    }
}

/// A [`Gpu`] on wgpu's no-op backend with `limits`, the features a GPU offers this crate
/// (timestamps, f16 arithmetic, subgroups of 32 lanes) and its kernels planned for `plan`.
/// wgpu's no-op adapter calls itself a CPU, so the plan is given here.
pub fn noop_gpu(limits: wgpu::Limits, plan: PlanFor) -> Result<Gpu> {
    let features =
        wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::NOOP;
    desc.backend_options.noop = wgpu::NoopBackendOptions {
        enable: true,
        limits: Some(limits.clone()),
        features: Some(features),
        device_type: None,
        subgroup_min_size: Some(32),
        subgroup_max_size: Some(32),
    };
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .map_err(|e| resnet_wgpu::Error::NoAdapter(format!("wgpu's no-op backend: {e}")))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("no-op"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    }))
    .map_err(|e| resnet_wgpu::Error::NoAdapter(format!("wgpu's no-op device: {e}")))?;
    let options = GpuOptions {
        plan_for: Some(plan),
        ..Default::default()
    };
    Gpu::from_adapter_device_with(&adapter, device, queue, &options)
}
