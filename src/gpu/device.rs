//! Adapter and device acquisition.
//!
//! [`Gpu::new`] honours wgpu's usual environment variables: `WGPU_BACKEND` (e.g. `vulkan`, `metal`,
//! `dx12`, `gl`, `webgpu`), `WGPU_ADAPTER_NAME` (a substring of the adapter name) and
//! `WGPU_POWER_PREF` (`low` / `high`). It asks for the adapter's real limits, so large tensors are
//! not capped at WebGPU's conservative defaults.

use super::Gpu;
use crate::{Error, Result};

/// Options for [`Gpu::with_options`].
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` means every backend compiled in (overridden by `WGPU_BACKEND`).
    pub backends: Option<wgpu::Backends>,
    /// Substring of the adapter name to pick (overridden by `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Ask for WebGPU's default limits instead of the adapter's real ones.
    pub default_limits: bool,
    /// Ask for wgpu's experimental cooperative-matrix feature (with `shader-f16` and subgroups)
    /// where the adapter has a configuration the f16 conv engine can use, so that
    /// [`Gpu::set_conv_precision`](super::Gpu::set_conv_precision) can select
    /// [`ConvPrecision::F16`](super::ConvPrecision::F16) (tensor cores on NVIDIA, simdgroup
    /// matrices on Apple). Off by default: wgpu marks the feature experimental. Native only.
    pub tensor_cores: bool,
    /// Compile the kernels with all of wgpu's runtime checks (`Some(true)`) or without index
    /// clamping and loop bounding (`Some(false)`, which this crate's kernels do not need; see
    /// [`Gpu::shader_checks`](super::Gpu::shader_checks)). `None`, the default, is `Some(false)`
    /// unless `RESNET_WGPU_SHADER_CHECKS=1`; that variable turns the checks on in every case.
    pub shader_checks: Option<bool>,
    /// Plan the kernels for a GPU or a CPU adapter whatever the adapter's type
    /// ([`PlanFor`](super::PlanFor)); `None`, the default, plans for the adapter's type unless
    /// `RESNET_WGPU_PLAN_FOR` (`gpu` or `cpu`) is set.
    pub plan_for: Option<super::PlanFor>,
}

/// Whether `RESNET_WGPU_SHADER_CHECKS=1` asks for wgpu's runtime checks.
fn checks_from_env() -> bool {
    std::env::var("RESNET_WGPU_SHADER_CHECKS").is_ok_and(|v| v == "1")
}

impl GpuOptions {
    /// Whether the kernels get wgpu's runtime checks: asked for here or by the environment.
    fn checks(&self) -> bool {
        checks_from_env() || self.shader_checks.unwrap_or(false)
    }
}

/// The features the f16 conv engine needs (requested only with [`GpuOptions::tensor_cores`]).
const MMA_FEATURES: wgpu::Features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP);

/// The f16 x f16 + f32 cooperative-matrix configuration of `adapter` that the f16 conv engine
/// (`shaders/conv_mma.wgsl`) has a variant for (the first of [`super::MmaConfig::supported`] that
/// the adapter offers, with its fixed subgroup size, and whose every tile fits the adapter's
/// workgroup memory: autotuning runs them all). None when there is none.
/// `room` is the workgroup memory the device was given.
#[cfg(not(target_arch = "wasm32"))]
fn mma_config(adapter: &wgpu::Adapter, room: u32) -> Option<super::MmaConfig> {
    if !adapter.features().contains(MMA_FEATURES) {
        return None;
    }
    let info = adapter.get_info();
    if info.subgroup_min_size != info.subgroup_max_size {
        return None;
    }
    let offered = adapter.cooperative_matrix_properties();
    let room = u64::from(room);
    super::MmaConfig::supported().into_iter().find(|config| {
        let f = config.fragment;
        config.subgroup == info.subgroup_min_size
            && config.workgroup_bytes() <= room
            && offered.iter().any(|c| {
                (c.m_size, c.n_size, c.k_size) == (f, f, f)
                    && c.ab_type == wgpu::CooperativeScalarType::F16
                    && c.cr_type == wgpu::CooperativeScalarType::F32
            })
    })
}

fn no_adapter_help(backends: wgpu::Backends) -> String {
    format!(
        "no GPU adapter found for backends {backends:?}. Install a GPU driver with Vulkan, Metal or \
         DX12 support; on a machine without a GPU install Mesa's lavapipe software Vulkan driver \
         (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`). Set WGPU_BACKEND to choose a backend \
         and WGPU_ADAPTER_NAME to choose an adapter."
    )
}

/// The limits to request from `adapter`. Native: the adapter's real limits. On the web: WebGPU's
/// defaults, raised to the adapter's values only for what the kernels use (buffer and binding
/// sizes, storage buffers per stage, workgroup size and memory, grid size), so a page asks for no
/// more than the defaults unless the adapter offers more. `default_limits` forces the defaults.
fn requested_limits(adapter: &wgpu::Limits, default_limits: bool) -> wgpu::Limits {
    let defaults = wgpu::Limits::default().using_alignment(adapter.clone());
    if default_limits {
        return defaults;
    }
    if cfg!(target_arch = "wasm32") {
        wgpu::Limits {
            max_buffer_size: adapter.max_buffer_size,
            max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: adapter.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: adapter.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: adapter.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: adapter.max_compute_workgroup_size_x,
            max_compute_workgroup_size_y: adapter.max_compute_workgroup_size_y,
            max_compute_workgroup_size_z: adapter.max_compute_workgroup_size_z,
            max_compute_workgroups_per_dimension: adapter.max_compute_workgroups_per_dimension,
            ..defaults
        }
    } else {
        adapter.clone()
    }
}

/// Features this crate uses when the adapter offers them: subgroups for the reductions
/// (`gpu/lanes.rs`) and 64-bit integers for the wide reads of the GEMMs without barriers
/// ([`Gpu::set_conv_wide_reads`]), natively. wgpu 30's WebGPU backend does not ask browsers for
/// their `subgroups` feature (and a browser's WGSL would need `enable subgroups;`, which naga's
/// WGSL front end rejects), so the web keeps the workgroup-memory reductions; WebGPU has no
/// 64-bit integers.
fn optional_features() -> wgpu::Features {
    let features = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
    if cfg!(target_arch = "wasm32") {
        features
    } else {
        features | wgpu::Features::SUBGROUP | wgpu::Features::SHADER_INT64
    }
}

impl Gpu {
    /// Acquire the default adapter and a device with its real limits (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Gpu> {
        pollster::block_on(Self::new_async(GpuOptions::default()))
    }

    /// The default adapter with convolutions in `precision`: for [`ConvPrecision::F16`](super::ConvPrecision::F16)
    /// (`super::ConvPrecision`) the device is opened with [`GpuOptions::tensor_cores`], and an
    /// adapter without usable tensor cores is an error that says why (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_conv_precision(precision: super::ConvPrecision) -> Result<Gpu> {
        let gpu = Self::with_options(GpuOptions {
            tensor_cores: precision == super::ConvPrecision::F16,
            ..Default::default()
        })?;
        gpu.set_conv_precision(precision)?;
        Ok(gpu)
    }

    /// Acquire an adapter according to `options` (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::new_async(options))
    }

    /// Acquire an adapter and device asynchronously (the only way on wasm32).
    pub async fn new_async(options: GpuOptions) -> Result<Gpu> {
        let chosen = wgpu::Backends::from_env().or(options.backends);
        // Without a choice, try the primary backends (Vulkan, Metal, DX12, WebGPU) first and
        // OpenGL only if none of them has an adapter: probing GL is noisy and rarely wanted.
        let attempts = match chosen {
            Some(b) => vec![b],
            // In a browser only WebGPU runs compute shaders (WebGL cannot).
            None if cfg!(target_arch = "wasm32") => vec![wgpu::Backends::BROWSER_WEBGPU],
            None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY],
        };
        let mut last_err = None;
        for backends in attempts {
            match Self::adapter_for(backends, &options).await {
                Ok(adapter) => return Self::open(adapter, &options).await,
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::NoAdapter(no_adapter_help(wgpu::Backends::all()))))
    }

    async fn adapter_for(backends: wgpu::Backends, options: &GpuOptions) -> Result<wgpu::Adapter> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let wanted_name = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .or(options.adapter_name.clone())
            .map(|s| s.to_lowercase());
        Ok(match wanted_name {
            #[cfg(not(target_arch = "wasm32"))]
            Some(name) => {
                let adapters = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&name))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "no adapter name contains {name:?} (WGPU_ADAPTER_NAME); available: {names:?}"
                        ))
                    })?
            }
            _ => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env()
                        .unwrap_or(wgpu::PowerPreference::HighPerformance),
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(format!("{e}; {}", no_adapter_help(backends))))?,
        })
    }

    async fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let limits = requested_limits(&adapter.limits(), options.default_limits);
        let mut features = adapter.features() & optional_features();
        #[cfg(not(target_arch = "wasm32"))]
        let mma = options
            .tensor_cores
            .then(|| mma_config(&adapter, limits.max_compute_workgroup_storage_size))
            .flatten();
        #[cfg(target_arch = "wasm32")]
        let mma: Option<super::MmaConfig> = None;
        let mut descriptor = wgpu::DeviceDescriptor {
            label: Some("resnet-wgpu"),
            required_limits: limits,
            ..Default::default()
        };
        if mma.is_some() {
            features |= MMA_FEATURES;
            // SAFETY: the caller opted in (`GpuOptions::tensor_cores`); the feature is only used
            // by conv_mma.wgsl, whose variants are checked against the adapter's configurations
            // (`mma_config`) and whose results the tests compare with the CPU reference.
            descriptor.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        descriptor.required_features = features;
        let (device, queue) = adapter
            .request_device(&descriptor)
            .await
            .map_err(|e| Error::NoAdapter(format!("requesting a device failed: {e}")))?;
        let gpu = Gpu::build(device, queue, options.plan_for, options.checks());
        gpu.set_mma(mma, options.tensor_cores);
        Ok(gpu)
    }

    /// Wrap a device and queue owned by the application (e.g. a renderer's): the device's own
    /// limits and features are used, and the kernels are planned for its adapter's type (or as
    /// `RESNET_WGPU_PLAN_FOR` says). The crate works within WebGPU's default limits and without
    /// optional features: with `TIMESTAMP_QUERY` it can profile, with `SUBGROUP` (native) its
    /// reductions use subgroup shuffles, and with `SHADER_INT64` (native) a CPU adapter's GEMMs
    /// read 32 bytes at a time ([`Gpu::set_conv_wide_reads`]). The f16 conv engine needs the
    /// adapter too ([`Gpu::from_adapter_device`]).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        Gpu::build(device, queue, None, checks_from_env())
    }

    /// [`Gpu::from_device`] for a device of `adapter`, with the f16 conv engine
    /// ([`ConvPrecision::F16`](super::ConvPrecision::F16)) where the application opened the
    /// device with the features it needs (`EXPERIMENTAL_COOPERATIVE_MATRIX`, `SHADER_F16` and
    /// `SUBGROUP`) and the adapter offers a cooperative-matrix configuration it has kernels for,
    /// as [`GpuOptions::tensor_cores`] gives a device this crate opens. Only the adapter lists
    /// its configurations; on the web this is [`Gpu::from_device`].
    pub fn from_adapter_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Gpu {
        Self::wrap(adapter, device, queue, None, checks_from_env())
    }

    /// [`Gpu::from_adapter_device`] with the settings of `options` that concern the kernels:
    /// [`GpuOptions::plan_for`] and [`GpuOptions::shader_checks`]. With
    /// [`GpuOptions::tensor_cores`] the device must have been opened with the f16 engine's
    /// features. The other fields choose and open an adapter, which the application has done:
    /// setting them is an error, as is asking for tensor cores on a device without those features.
    pub fn from_adapter_device_with(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &GpuOptions,
    ) -> Result<Gpu> {
        let opening = [
            ("backends", options.backends.is_some()),
            ("adapter_name", options.adapter_name.is_some()),
            ("default_limits", options.default_limits),
        ];
        if let Some((field, _)) = opening.iter().find(|(_, set)| *set) {
            return Err(Error::Invalid(format!(
                "GpuOptions::{field} chooses or opens an adapter, but this device was opened by \
                 the application: leave it unset"
            )));
        }
        if options.tensor_cores && !device.features().contains(MMA_FEATURES) {
            return Err(Error::Invalid(format!(
                "GpuOptions::tensor_cores: the device was opened without {:?}, which the f16 \
                 conv engine needs",
                MMA_FEATURES - device.features()
            )));
        }
        Ok(Self::wrap(
            adapter,
            device,
            queue,
            options.plan_for,
            options.checks(),
        ))
    }

    /// An application's device of `adapter`, with the f16 engine where the device has its
    /// features and the adapter a configuration for it.
    fn wrap(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        plan_for: Option<super::PlanFor>,
        shader_checks: bool,
    ) -> Gpu {
        let opened_for_mma = device.features().contains(MMA_FEATURES);
        #[cfg(not(target_arch = "wasm32"))]
        let mma = opened_for_mma
            .then(|| mma_config(adapter, device.limits().max_compute_workgroup_storage_size))
            .flatten();
        #[cfg(target_arch = "wasm32")]
        let (mma, _) = (None, adapter);
        let gpu = Gpu::build(device, queue, plan_for, shader_checks);
        gpu.set_mma(mma, opened_for_mma);
        gpu
    }
}
