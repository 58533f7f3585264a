//! The GPU context: device and queue (owned or borrowed), a pipeline cache, a buffer pool, command
//! recording with one submit per step, and asynchronous read-back.
//!
//! Ops record compute dispatches into one pending command encoder, consecutive dispatches into
//! one compute pass (each dispatch is its own usage scope, so wgpu still places the barriers
//! between a write and the reads that follow). A copy, a clear or a timed dispatch ends the pass.
//! The encoder is submitted ([`Gpu::flush`]) when a read-back needs the results, when data is
//! uploaded into a recycled buffer, or when the caller asks. Shapes reach shaders through a
//! `#[repr(C)]` params struct bound as a uniform at binding 0 of group 0; storage buffers follow
//! at bindings 1, 2, ...

mod device;
mod lanes;
mod pool;
mod profile;
mod settings;

pub use device::GpuOptions;
#[doc(hidden)]
pub use lanes::{
    LANES_ENGINES, LANES_FILES, LANES_MEMORY, LANES_SUBGROUP, REDUCING_ENGINE, REDUCING_FILES,
};
pub use pool::PoolStats;
pub use profile::{KernelTime, gpu_span_nanos};
pub use settings::{
    ConvAlgo, ConvOrder, ConvPrecision, ConvStaging, MmaConfig, PlanFor, WinogradTile,
};

use crate::{Error, Result};
use pool::BufferPool;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

/// A compute kernel: one entry point of one WGSL file under `shaders/`, optionally a compile-time
/// variant of it (WGSL declarations prepended to the file, e.g. the conv tile sizes) and an engine
/// (a second WGSL file between the two, e.g. the conv kernels' f32 or f16 multiply engine).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// File name under `shaders/`, e.g. `conv.wgsl`.
    pub file: &'static str,
    /// The declarations prepended to the file ("" for none).
    pub variant: &'static str,
    /// File name under `shaders/` of the engine compiled between `variant` and `file` ("" for none).
    pub engine: &'static str,
    /// WGSL text of the engine ("" for none).
    pub engine_source: &'static str,
    /// WGSL text of the file.
    pub file_source: &'static str,
    /// Entry point name.
    pub entry: &'static str,
}

impl Kernel {
    /// Whether the module gets a lanes file before its engine (its engine is one of
    /// [`LANES_ENGINES`], or its file one of [`LANES_FILES`]), and its pipelines the subgroup
    /// lanes in use.
    pub fn takes_lanes(&self) -> bool {
        LANES_ENGINES.contains(&self.engine) || LANES_FILES.contains(&self.file)
    }

    /// The module's WGSL source: `variant`, the helpers every module shares
    /// ([`COMMON_SHADER`]), the engine, then the file. They are kept apart and joined only
    /// here, so that the binary holds each shader file once, not once per variant: with the
    /// conv kernels' 21 variants, the wasm module took 2.79 MiB with the sources joined at
    /// compile time, and 1.46 MiB with them joined here. A kernel of one of [`LANES_ENGINES`]
    /// (the reductions, the f32 conv engine) gets a lanes file before its engine:
    /// [`LANES_SUBGROUP`] where `subgroup_lanes`, else [`LANES_MEMORY`].
    pub fn source(&self, subgroup_lanes: bool) -> String {
        let lanes = match (self.takes_lanes(), subgroup_lanes) {
            (false, _) => "",
            (true, true) => LANES_SUBGROUP,
            (true, false) => LANES_MEMORY,
        };
        [
            self.variant,
            COMMON_SHADER,
            lanes,
            self.engine_source,
            self.file_source,
        ]
        .concat()
    }
}

/// `shaders/common.wgsl`: the helpers (`linear_index`, `is_nan`, `relu_value`, `relu_passes`)
/// that [`Kernel::source`] puts into every module, after the variant's declarations, whose
/// `enable` directives come first.
#[doc(hidden)]
pub const COMMON_SHADER: &str = include_str!("../../shaders/common.wgsl");

/// Declare a [`Kernel`] of a file whose entry points reduce across workgroups through
/// `shaders/butterfly.wgsl` (every entry point of such a file: they share one module).
#[macro_export]
#[doc(hidden)]
macro_rules! reducing_kernel {
    ($file:literal, $entry:literal) => {
        $crate::kernel!($file, $entry, "", "butterfly.wgsl")
    };
}

/// Declare a [`Kernel`] from a shader file name and entry point.
#[macro_export]
#[doc(hidden)]
macro_rules! kernel {
    ($file:literal, $entry:literal) => {
        $crate::kernel!($file, $entry, "")
    };
    ($file:literal, $entry:literal, $variant:literal) => {
        $crate::gpu::Kernel {
            file: $file,
            variant: $variant,
            engine: "",
            engine_source: "",
            file_source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
            entry: $entry,
        }
    };
    ($file:literal, $entry:literal, $variant:expr, $engine:literal) => {
        $crate::gpu::Kernel {
            file: $file,
            variant: $variant,
            engine: $engine,
            engine_source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $engine)),
            file_source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file)),
            entry: $entry,
        }
    };
}

/// The conv math state: the adapter's usable f16 configuration and the chosen precision.
#[derive(Clone, Copy, Debug, Default)]
struct ConvMath {
    mma: Option<MmaConfig>,
    /// Whether the device was opened asking for tensor cores (for error messages).
    requested: bool,
    precision: ConvPrecision,
    order: ConvOrder,
    staging: ConvStaging,
    f16_staging: ConvStaging,
    algo: ConvAlgo,
    /// The fewest GEMM columns for which the taps-outer order copies the weights.
    weight_copy_min_columns: usize,
    /// The most elements of each transient buffer of the Winograd transforms.
    winograd_chunk: usize,
    /// The f32 engine's Winograd tile (None: chosen per convolution).
    winograd_tile: Option<WinogradTile>,
    /// Whether training's convolutions on the GEMMs without barriers keep x as laid out for
    /// the weight gradient.
    keep_laid_out: bool,
    /// Whether the GEMMs without barriers read 32 bytes at a time where they can.
    wide_reads: bool,
}

/// Threads per workgroup of the one-dimensional (elementwise) kernels.
pub const WORKGROUP_1D: u32 = 256;

/// Adapter description.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)` or `NVIDIA H100`.
    pub name: String,
    /// Backend in use.
    pub backend: wgpu::Backend,
    /// Driver description.
    pub driver: String,
    /// Kind of adapter (discrete, integrated, CPU, ...); `Other` where unknown.
    pub device_type: wgpu::DeviceType,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}", self.name, self.backend)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

#[derive(Default)]
struct Pending {
    /// The compute pass that untimed dispatches share, open on `encoder` (declared first so that
    /// it is dropped, which ends it, before the encoder). One pass per dispatch cost 1.5 us more
    /// CPU time per dispatch on this project's 2-core machine, recording and submitting. Never
    /// open while profiling: timed dispatches get passes of their own.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// The dispatches' params slots and bind groups.
    bindings: Bindings,
    /// Timestamp queries of every dispatch while [`Gpu::start_profiling`] is in effect.
    profiler: Option<profile::Profiler>,
}

/// Uniform slots kept by their content and bind groups kept by what they bind, so that a loop
/// of identical steps (the same params, the pool's same buffers) records each dispatch without
/// creating a bind group or writing its params again: creating a bind group was 58% of a small
/// dispatch's recording time on this project's 2-core machine (27% of a ResNet-18 32x32 step's
/// recording). Slots are written on the host and uploaded at the submit, one `write_buffer` per
/// slot buffer. When [`MAX_SLOTS`] are taken, the recorded work is submitted first and the
/// slots start over (an unsubmitted dispatch must never see its slot rewritten); the bind
/// groups start over past [`MAX_BIND_GROUPS`] or when the pool destroys its buffers.
#[derive(Default)]
struct Bindings {
    /// Params bytes -> (slot buffer, byte offset).
    slots: HashMap<Vec<u8>, (usize, u64)>,
    /// Slots handed out since the slots last started over.
    used: u64,
    buffers: Vec<SlotBuffer>,
    groups: HashMap<GroupKey, wgpu::BindGroup>,
    /// Bind groups created since the `Gpu` was made (for tests).
    created: u64,
}

/// A uniform buffer of [`BUFFER_SLOTS`] params slots, its host copy, and the byte range
/// written since the last submit.
struct SlotBuffer {
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
    dirty: Option<std::ops::Range<usize>>,
}

/// What a bind group binds: the pipeline whose layout it has, the params slot, the buffers.
#[derive(PartialEq, Eq, Hash)]
struct GroupKey {
    pipeline: wgpu::ComputePipeline,
    slot: (usize, u64),
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Params slots per uniform buffer...
const BUFFER_SLOTS: u64 = 256;
/// ...and in all, before the slots start over (a training step takes a few hundred, most the
/// same every step; those that change every step, such as Adam's step counts, take new ones).
const MAX_SLOTS: u64 = 4096;
/// Bind groups kept before they start over.
const MAX_BIND_GROUPS: usize = 8192;

type PipelineKey = (ModuleKey, &'static str, Vec<(&'static str, u64)>);

/// (file, variant, engine, with subgroup lanes) of a shader module.
type ModuleKey = (&'static str, &'static str, &'static str, bool);

pub(crate) struct GpuInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: GpuInfo,
    limits: wgpu::Limits,
    /// Bytes between uniform slots: [`UNIFORM_SIZE`] rounded up to the offset alignment.
    uniform_stride: u64,
    modules: Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pool: Mutex<BufferPool>,
    pending: Mutex<Pending>,
    total_dispatches: std::sync::atomic::AtomicU64,
    total_submits: std::sync::atomic::AtomicU64,
    conv_math: Mutex<ConvMath>,
    /// What the kernels are planned for ([`Gpu::plan_for`]).
    plan_for: PlanFor,
    /// Compile shaders with wgpu's runtime checks ([`GpuOptions::shader_checks`],
    /// `RESNET_WGPU_SHADER_CHECKS=1`); see [`TRUSTED_CHECKS`].
    shader_checks: bool,
    /// Conv autotuning ([`Gpu::set_conv_autotune`]).
    pub(crate) conv_tuning: Mutex<crate::ops::tune::ConvTuning>,
    /// The subgroup lanes the device's reductions may use (`lanes::probe`; 0 for none).
    lanes_verified: std::sync::atomic::AtomicU32,
    /// The lanes they use now ([`Gpu::set_subgroup_reductions`]; 0: workgroup memory only).
    lanes_in_use: std::sync::atomic::AtomicU32,
    /// The lanes of the conv GEMMs without barriers (`shaders/gemm_lanes.wgsl`) now: the
    /// verified ones from the start however few, 0 where [`Gpu::set_subgroup_reductions`] or
    /// `RESNET_WGPU_SUBGROUPS=0` turned subgroups off ([`Gpu::conv_gemm_lanes`]).
    gemm_lanes: std::sync::atomic::AtomicU32,
    /// The adapter's largest subgroup size (0 where unknown).
    subgroup_max_size: u32,
}

/// The runtime checks this crate's own kernels are compiled with (unless
/// `RESNET_WGPU_SHADER_CHECKS=1` asks for all of wgpu's): no index clamping and no loop
/// bounding. By default wgpu (as naga) clamps every run-time index into a workgroup or private
/// array with a `min`, and gives every loop a hidden 64-bit iteration counter that it checks and
/// decrements each time round. In the conv kernels' inner loops (a few fused multiply-adds per
/// workgroup-memory read) that is several extra instructions per iteration, and the counter's
/// extra exit keeps drivers from unrolling them. The kernels do not need either: every loop
/// runs over a bounded range, and every workgroup and private array index is within its array
/// by construction (each shader's header gives the layout; the tests run every kernel on
/// ragged shapes against the CPU reference). Buffer accesses keep the driver's robust buffer
/// access where Vulkan offers it, and integer divisions keep their divide-by-zero guard (one
/// select, next to a division's many instructions). Browsers apply their own checks whatever is
/// asked here.
const TRUSTED_CHECKS: wgpu::ShaderRuntimeChecks = wgpu::ShaderRuntimeChecks {
    bounds_checks: false,
    force_loop_bounding: false,
    ..wgpu::ShaderRuntimeChecks::checked()
};

/// A handle to a GPU device. Cheap to clone; all clones share the device, caches and pool.
#[derive(Clone)]
pub struct Gpu(pub(crate) Arc<GpuInner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.0.info)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const UNIFORM_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::UNIFORM.union(wgpu::BufferUsages::COPY_DST);
const READBACK_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);
/// Every params struct is padded into a uniform slot of this size (rounded up to the adapter's
/// uniform offset alignment).
const UNIFORM_SIZE: u64 = 256;

impl Gpu {
    // On wasm32 the wgpu handles are not `Send`; the `Arc` still shares them within the one
    // thread there, and keeps `Gpu` `Send + Sync` on native.
    #[allow(clippy::arc_with_non_send_sync)]
    /// A `Gpu` on `device`, described and planned for the adapter it was opened on (unless
    /// `plan_for` says otherwise; see [`PlanFor`]).
    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        plan_for: Option<PlanFor>,
        shader_checks: bool,
    ) -> Gpu {
        let adapter = device.adapter_info();
        let info = GpuInfo {
            name: adapter.name,
            backend: adapter.backend,
            driver: adapter.driver_info,
            device_type: adapter.device_type,
        };
        let limits = device.limits();
        let uniform_stride =
            UNIFORM_SIZE.next_multiple_of(limits.min_uniform_buffer_offset_alignment.max(1) as u64);
        let staging = ConvStaging::for_adapter(&info);
        let plan_for = PlanFor::choose(plan_for, info.device_type);
        let subgroup_max_size = device.adapter_info().subgroup_max_size;
        let int64 = device.features().contains(wgpu::Features::SHADER_INT64);
        let gpu = Gpu(Arc::new(GpuInner {
            device,
            queue,
            info,
            limits,
            uniform_stride,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            pool: Mutex::default(),
            pending: Mutex::default(),
            total_dispatches: Default::default(),
            total_submits: Default::default(),
            conv_math: Mutex::new(ConvMath {
                order: ConvOrder::from_env(),
                staging,
                f16_staging: ConvStaging::f16_from_env(),
                algo: ConvAlgo::from_env(),
                weight_copy_min_columns: crate::ops::conv::WEIGHT_COPY_MIN_COLUMNS,
                winograd_chunk: crate::ops::conv::WINOGRAD_CHUNK_ELEMENTS,
                winograd_tile: WinogradTile::from_env(),
                keep_laid_out: std::env::var("RESNET_WGPU_KEEP_LAID_OUT")
                    .map_or(true, |v| v != "0"),
                wide_reads: int64
                    && std::env::var("RESNET_WGPU_WIDE_READS").map_or(true, |v| v != "0"),
                ..ConvMath::default()
            }),
            plan_for,
            shader_checks,
            conv_tuning: Mutex::default(),
            lanes_verified: Default::default(),
            lanes_in_use: Default::default(),
            gemm_lanes: Default::default(),
            subgroup_max_size,
        }));
        let lanes = lanes::probe(&gpu).unwrap_or(0);
        gpu.0.lanes_verified.store(lanes, Relaxed);
        gpu.0
            .lanes_in_use
            .store(lanes::default_lanes(lanes), Relaxed);
        let off = lanes::subgroups_off_by_env();
        gpu.0.gemm_lanes.store(if off { 0 } else { lanes }, Relaxed);
        gpu
    }

    /// The lanes per subgroup between which workgroup reductions exchange values with subgroup
    /// operations instead of workgroup memory (`shaders/butterfly.wgsl`), or None where they
    /// use memory alone: on devices without wgpu's `SUBGROUP` feature or whose subgroups are not
    /// runs of consecutive invocations, on the web, by default where subgroups have fewer than
    /// 8 lanes (SwiftShader's 4 shuffle slower than memory), after `RESNET_WGPU_SUBGROUPS=0` or
    /// [`Gpu::set_subgroup_reductions`]`(false)`. The results are the same bits either way. On a
    /// CPU adapter's plan the f32 conv GEMMs use the same lanes to share their reads of A
    /// ([`crate::ops::conv_shares_a`]).
    pub fn subgroup_lanes(&self) -> Option<u32> {
        Some(self.0.lanes_in_use.load(Relaxed)).filter(|&n| n > 0)
    }

    /// The lanes per subgroup of the conv GEMMs without workgroup memory or barriers
    /// (`shaders/gemm_lanes.wgsl`, which a CPU adapter's plan runs with 4, 8 or 16; see
    /// [`crate::ops::conv_gemms_without_barriers`]): the verified subgroups from the start,
    /// even where the reductions leave them alone (SwiftShader's 4 lanes, with which these
    /// GEMMs still run 1.5x faster than the tiled kernels), None on the web, after
    /// `RESNET_WGPU_SUBGROUPS=0` or [`Gpu::set_subgroup_reductions`]`(false)`.
    #[doc(hidden)]
    pub fn conv_gemm_lanes(&self) -> Option<u32> {
        Some(self.0.gemm_lanes.load(Relaxed)).filter(|&n| n > 0)
    }

    /// The adapter's largest subgroup size (0 where wgpu does not know it).
    pub(crate) fn subgroup_max_size(&self) -> u32 {
        self.0.subgroup_max_size
    }

    /// Let the reductions (and on a CPU adapter's plan the f32 conv GEMMs) use subgroup
    /// operations (`on`, wherever the device has usable ones, however few their lanes; see
    /// [`Gpu::subgroup_lanes`]) or workgroup memory alone, from now on (every clone of this
    /// `Gpu` shares it). Asking for subgroups on a device without
    /// usable ones is an error.
    pub fn set_subgroup_reductions(&self, on: bool) -> Result<()> {
        let verified = self.0.lanes_verified.load(Relaxed);
        if on && verified == 0 {
            return Err(Error::Invalid(format!(
                "adapter {} has no subgroups the reductions can use (they need wgpu's SUBGROUP \
                 feature, native only, and subgroups that are runs of consecutive invocations)",
                self.0.info
            )));
        }
        let lanes = if on { verified } else { 0 };
        self.0.lanes_in_use.store(lanes, Relaxed);
        self.0.gemm_lanes.store(lanes, Relaxed);
        Ok(())
    }

    pub(crate) fn set_mma(&self, mma: Option<MmaConfig>, requested: bool) {
        let mut math = lock(&self.0.conv_math);
        math.mma = mma;
        math.requested = requested;
    }

    /// The cooperative-matrix configuration the f16 conv engine uses on this device, if any.
    pub fn mma_config(&self) -> Option<MmaConfig> {
        lock(&self.0.conv_math).mma
    }

    /// Choose how convolutions multiply from now on (every clone of this `Gpu` shares it).
    /// [`ConvPrecision::F16`] fails, naming what is missing, unless the device was opened with
    /// [`GpuOptions::tensor_cores`] (or by the application with the engine's features, handed
    /// in through [`Gpu::from_adapter_device`]) on an adapter offering a configuration the f16
    /// engine has kernels for.
    pub fn set_conv_precision(&self, precision: ConvPrecision) -> Result<()> {
        let mut math = lock(&self.0.conv_math);
        if precision == ConvPrecision::F16 && math.mma.is_none() {
            let why = if math.requested {
                let configs: Vec<String> = MmaConfig::supported()
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                format!(
                    "adapter {} offers no cooperative-matrix configuration the f16 conv engine \
                     has kernels for (it needs the features EXPERIMENTAL_COOPERATIVE_MATRIX, \
                     SHADER_F16 and SUBGROUP, a fixed subgroup size, the workgroup memory of \
                     the engine's tiles and one of: {})",
                    self.0.info,
                    configs.join("; ")
                )
            } else {
                "the device was not opened for it: GpuOptions::tensor_cores does, and an \
                 application's device needs the features EXPERIMENTAL_COOPERATIVE_MATRIX, \
                 SHADER_F16 and SUBGROUP and Gpu::from_adapter_device"
                    .to_string()
            };
            return Err(Error::Invalid(format!(
                "ConvPrecision::F16 is not available: {why}"
            )));
        }
        math.precision = precision;
        Ok(())
    }

    /// How convolutions multiply ([`Gpu::set_conv_precision`]).
    pub fn conv_precision(&self) -> ConvPrecision {
        lock(&self.0.conv_math).precision
    }

    /// Choose the conv GEMMs' reduction order from now on (every clone of this `Gpu` shares
    /// it; a new `Gpu` starts with [`ConvOrder::from_env`]).
    pub fn set_conv_order(&self, order: ConvOrder) {
        lock(&self.0.conv_math).order = order;
    }

    /// The conv GEMMs' reduction order ([`Gpu::set_conv_order`]).
    pub fn conv_order(&self) -> ConvOrder {
        lock(&self.0.conv_math).order
    }

    /// Choose how many copies of a chunk the f32 conv GEMMs stage from now on (every clone of
    /// this `Gpu` shares it; a new `Gpu` starts with [`ConvStaging::for_adapter`]).
    pub fn set_conv_staging(&self, staging: ConvStaging) {
        lock(&self.0.conv_math).staging = staging;
    }

    /// The f32 conv GEMMs' staging ([`Gpu::set_conv_staging`]).
    pub fn conv_staging(&self) -> ConvStaging {
        lock(&self.0.conv_math).staging
    }

    /// Choose how many copies of a chunk the f16 engine's conv GEMMs stage from now on
    /// ([`ConvPrecision::F16`]; two only where the device's workgroup memory holds them; every
    /// clone of this `Gpu` shares it; a new `Gpu` starts with [`ConvStaging::f16_from_env`]).
    pub fn set_f16_staging(&self, staging: ConvStaging) {
        lock(&self.0.conv_math).f16_staging = staging;
    }

    /// The f16 engine's staging ([`Gpu::set_f16_staging`]).
    pub fn f16_staging(&self) -> ConvStaging {
        lock(&self.0.conv_math).f16_staging
    }

    /// Choose the algorithm of the 3x3 convolutions of stride 1 from now on (every clone of
    /// this `Gpu` shares it; a new `Gpu` starts with [`ConvAlgo::from_env`]).
    pub fn set_conv_algo(&self, algo: ConvAlgo) {
        lock(&self.0.conv_math).algo = algo;
    }

    /// The algorithm of the 3x3 convolutions of stride 1 ([`Gpu::set_conv_algo`]).
    pub fn conv_algo(&self) -> ConvAlgo {
        lock(&self.0.conv_math).algo
    }

    /// Choose the output tile of the Winograd convolutions whose GEMMs run on the f32 engine from
    /// now on, None to choose it per convolution and pass ([`WinogradTile`]; every clone of this
    /// `Gpu` shares it; a new `Gpu` starts with [`WinogradTile::from_env`]). Shapes already
    /// tuned keep the choice that tuning made with the setting of the time.
    pub fn set_winograd_tile(&self, tile: Option<WinogradTile>) {
        lock(&self.0.conv_math).winograd_tile = tile;
    }

    /// The f32 engine's Winograd tile, None where chosen per convolution
    /// ([`Gpu::set_winograd_tile`]).
    pub fn winograd_tile(&self) -> Option<WinogradTile> {
        lock(&self.0.conv_math).winograd_tile
    }

    /// The most elements each of the Winograd transforms' two transient buffers holds (the
    /// batch is transformed in chunks of images that fit): 2^24 (64 MiB) unless set; small
    /// values for tests of the chunking.
    #[doc(hidden)]
    pub fn set_winograd_chunk_elements(&self, elements: usize) {
        lock(&self.0.conv_math).winograd_chunk = elements;
    }

    pub(crate) fn winograd_chunk_elements(&self) -> usize {
        lock(&self.0.conv_math).winograd_chunk
    }

    /// Whether a training step's convolutions whose GEMMs run without barriers (on a CPU
    /// adapter's plan: [`crate::ops::conv_gemms_without_barriers`]) keep their input x as their
    /// forward GEMM read it, Winograd's transform V or a direct convolution's columns, for the
    /// weight gradient to read instead of laying x out again (every clone of this `Gpu` shares
    /// it). On by default, unless `RESNET_WGPU_KEEP_LAID_OUT=0`: faster, and more memory
    /// between the forward pass and the backward (F(4x4, 3x3)'s V holds 2.25 values per value
    /// of x, a 3x3 convolution's columns 9 per output pixel and input channel). Only where the
    /// batch is laid out in one chunk; other plans never lay x out so.
    pub fn set_conv_keep_laid_out(&self, keep: bool) {
        lock(&self.0.conv_math).keep_laid_out = keep;
    }

    /// Whether training's convolutions keep x as laid out ([`Gpu::set_conv_keep_laid_out`]).
    pub fn conv_keep_laid_out(&self) -> bool {
        lock(&self.0.conv_math).keep_laid_out
    }

    /// Let the conv GEMMs without barriers (on a CPU adapter's plan:
    /// [`crate::ops::conv_gemms_without_barriers`]) read their operands 32 bytes at a time, as
    /// 64-bit integers, where the depth allows (`on`), or 16 bytes as vec4s of f32 (every clone
    /// of this `Gpu` shares it). A CPU adapter's lanes read a value whose address differs per
    /// lane one lane at a time, whatever its width up to 32 bytes, so the wide reads halve the
    /// reads of A and B: on lavapipe the main job's step's GEMMs ran 1.3-1.7x faster
    /// (`docs/speed.md`, "Wide reads on CPU adapters"). The same bits either way. On by default
    /// where the device has wgpu's `SHADER_INT64` feature (native only), unless
    /// `RESNET_WGPU_WIDE_READS=0`; asking for them on a device without it is an error. They run
    /// with subgroups of 8 lanes or more ([`crate::ops::conv_gemm_wide_reads`]).
    pub fn set_conv_wide_reads(&self, on: bool) -> Result<()> {
        if on
            && !self
                .0
                .device
                .features()
                .contains(wgpu::Features::SHADER_INT64)
        {
            return Err(Error::Invalid(format!(
                "adapter {} has no 64-bit integers for wide reads (they need wgpu's \
                 SHADER_INT64 feature, native only)",
                self.0.info
            )));
        }
        lock(&self.0.conv_math).wide_reads = on;
        Ok(())
    }

    /// Whether the GEMMs without barriers read 32 bytes at a time ([`Gpu::set_conv_wide_reads`]).
    pub fn conv_wide_reads(&self) -> bool {
        lock(&self.0.conv_math).wide_reads
    }

    /// The fewest GEMM columns for which [`ConvOrder::Rsc`] copies a kernel's weights (1,024
    /// unless set; 0 for tests that need the copy on small shapes).
    #[doc(hidden)]
    pub fn set_conv_weight_copy_min_columns(&self, columns: usize) {
        lock(&self.0.conv_math).weight_copy_min_columns = columns;
    }

    pub(crate) fn conv_weight_copy_min_columns(&self) -> usize {
        lock(&self.0.conv_math).weight_copy_min_columns
    }

    /// The adapter's name, backend and driver.
    pub fn info(&self) -> &GpuInfo {
        &self.0.info
    }

    /// What the kernels are planned for: the adapter's type unless [`GpuOptions::plan_for`] or
    /// `RESNET_WGPU_PLAN_FOR` said otherwise ([`PlanFor`]).
    pub fn plan_for(&self) -> PlanFor {
        self.0.plan_for
    }

    /// The device's limits (the adapter's real limits unless asked otherwise).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }

    /// The device's enabled features.
    pub fn features(&self) -> wgpu::Features {
        self.0.device.features()
    }

    /// The underlying wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }

    /// The underlying wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }

    /// Buffer pool counters.
    pub fn pool_stats(&self) -> PoolStats {
        lock(&self.0.pool).stats
    }

    /// Number of command submissions to the queue since the `Gpu` was made.
    pub fn submit_count(&self) -> u64 {
        self.0
            .total_submits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether kernels are compiled with all of wgpu's runtime checks ([`GpuOptions::shader_checks`]
    /// or `RESNET_WGPU_SHADER_CHECKS=1` when the `Gpu` was made) rather than without index
    /// clamping and loop bounding, which this crate's kernels do not need (the default).
    pub fn shader_checks(&self) -> bool {
        self.0.shader_checks
    }

    /// Number of compute dispatches recorded since the `Gpu` was made.
    pub fn dispatch_count(&self) -> u64 {
        self.0
            .total_dispatches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Restart the peak-memory counts: [`PoolStats::peak_bytes`] becomes the bytes allocated now
    /// and [`PoolStats::peak_live_bytes`] the bytes in use now, so the next peaks are those of
    /// the work that follows (call [`Gpu::trim_pool`] first to drop cached buffers from the
    /// baseline).
    pub fn reset_peak_memory(&self) {
        let mut pool = lock(&self.0.pool);
        pool.stats.peak_bytes = pool.stats.bytes_allocated;
        pool.stats.peak_live_bytes = pool.stats.bytes_allocated - pool.stats.bytes_cached;
    }

    /// Destroy the buffers cached in the pool (those in use are untouched).
    pub fn trim_pool(&self) {
        // The bind groups hold the buffers the pool destroys: they go first.
        lock(&self.0.pending).bindings.groups.clear();
        lock(&self.0.pool).trim();
    }

    /// Number of compiled pipelines in the cache.
    pub fn pipeline_count(&self) -> usize {
        lock(&self.0.pipelines).len()
    }

    /// Take a storage buffer of `bytes` bytes from the pool, checking the device's limits
    /// (`what` names the tensor in the error, formatted only then). Its contents are
    /// unspecified. The buffer holds whole vec4s (its size rounded up to 16 bytes), so that a
    /// kernel may bind any tensor as `array<vec4<f32>>` and reach its last values (conv.wgsl's
    /// forward output).
    pub(crate) fn alloc_storage(
        &self,
        bytes: u64,
        what: impl FnOnce() -> String,
    ) -> Result<wgpu::Buffer> {
        let limits = &self.0.limits;
        if bytes > limits.max_buffer_size {
            return Err(Error::Limit {
                what: what(),
                limit: "max_buffer_size",
                needed: bytes,
                available: limits.max_buffer_size,
            });
        }
        let size = bytes.max(16).next_multiple_of(16);
        Ok(lock(&self.0.pool).take(&self.0.device, size, STORAGE_USAGE))
    }

    pub(crate) fn release(&self, buf: wgpu::Buffer) {
        lock(&self.0.pool).give(buf);
    }

    /// Write `data` into `buf`. Any recorded work is submitted first, because `buf` may be a
    /// recycled buffer that recorded dispatches still read.
    pub(crate) fn write(&self, buf: &wgpu::Buffer, data: &[u8]) {
        self.flush();
        self.0.queue.write_buffer(buf, 0, data);
    }

    /// Record a clear of `buf` to zero, ordered with the recorded dispatches.
    pub(crate) fn clear(&self, buf: &wgpu::Buffer) {
        let mut pending = lock(&self.0.pending);
        let enc = self.encoder(&mut pending);
        enc.clear_buffer(buf, 0, None);
    }

    /// Record a buffer-to-buffer copy, ordered with the recorded dispatches.
    pub(crate) fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        let mut pending = lock(&self.0.pending);
        let enc = self.encoder(&mut pending);
        enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
    }

    fn encoder<'a>(&self, pending: &'a mut Pending) -> &'a mut wgpu::CommandEncoder {
        // End the shared pass: what comes next (a copy, a clear, a timed pass) is ordered after it.
        pending.pass = None;
        pending.encoder.get_or_insert_with(|| {
            self.0
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    fn pipeline(
        &self,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
    ) -> wgpu::ComputePipeline {
        // A reducing kernel or f32 conv kernel exchanges values between the lanes of subgroups
        // of this size, a GEMM without barriers between those of its own.
        let lanes = match kernel.takes_lanes() {
            true if LANES_FILES.contains(&kernel.file) => self.conv_gemm_lanes(),
            true => self.subgroup_lanes(),
            false => None,
        };
        let lanes_constant = lanes.map(|n| ("SUBGROUP_LANES", f64::from(n)));
        let module_key = (kernel.file, kernel.variant, kernel.engine, lanes.is_some());
        let key: PipelineKey = (
            module_key,
            kernel.entry,
            (constants.iter().chain(&lanes_constant))
                .map(|(k, v)| (*k, v.to_bits()))
                .collect(),
        );
        if let Some(p) = lock(&self.0.pipelines).get(&key) {
            return p.clone();
        }
        let constants: Vec<_> = constants.iter().copied().chain(lanes_constant).collect();
        let module = {
            let mut modules = lock(&self.0.modules);
            modules
                .entry(module_key)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.file),
                        source: wgpu::ShaderSource::Wgsl(kernel.source(lanes.is_some()).into()),
                    };
                    if self.0.shader_checks {
                        self.0.device.create_shader_module(desc)
                    } else {
                        // SAFETY: `kernel` is one of this crate's shaders (`kernel!` embeds
                        // them from shaders/), whose loops terminate and whose array indices
                        // stay in bounds, as TRUSTED_CHECKS requires.
                        unsafe {
                            self.0
                                .device
                                .create_shader_module_trusted(desc, TRUSTED_CHECKS)
                        }
                    }
                })
                .clone()
        };
        let pipeline = self
            .0
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // The kernels write the workgroup memory they read (behind a barrier)
                    // first, so zero-filling it would be wasted work. Browsers zero-fill
                    // anyway, as WebGPU requires ([`ConvStaging::for_adapter`]).
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        lock(&self.0.pipelines).insert(key, pipeline.clone());
        pipeline
    }

    /// The uniform slot holding `params`: (slot buffer index, offset), taking a new one (and
    /// writing it on the host, for the submit to upload) the first time these bytes are seen.
    fn uniform_slot(&self, pending: &mut Pending, params: &[u8]) -> (usize, u64) {
        if let Some(&slot) = pending.bindings.slots.get(params) {
            return slot;
        }
        if pending.bindings.used == MAX_SLOTS {
            // Every slot is taken: submit what was recorded (which reads the slots as they
            // are), then start over.
            self.submit_locked(pending);
            let b = &mut pending.bindings;
            b.slots.clear();
            b.groups.clear();
            b.used = 0;
        }
        let stride = self.0.uniform_stride;
        let b = &mut pending.bindings;
        let index = (b.used / BUFFER_SLOTS) as usize;
        let offset = (b.used % BUFFER_SLOTS) * stride;
        b.used += 1;
        if index == b.buffers.len() {
            let size = BUFFER_SLOTS * stride;
            b.buffers.push(SlotBuffer {
                buffer: self.0.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size,
                    usage: UNIFORM_USAGE,
                    mapped_at_creation: false,
                }),
                bytes: vec![0; size as usize],
                dirty: None,
            });
        }
        let buf = &mut b.buffers[index];
        let start = offset as usize;
        buf.bytes[start..start + params.len()].copy_from_slice(params);
        buf.bytes[start + params.len()..start + stride as usize].fill(0);
        let end = start + stride as usize;
        buf.dirty = Some(match buf.dirty.take() {
            Some(d) => d.start.min(start)..d.end.max(end),
            None => start..end,
        });
        b.slots.insert(params.to_vec(), (index, offset));
        (index, offset)
    }

    /// The bind group of `pipeline` with params slot `slot` and `buffers`, created the first time.
    fn bind_group(
        &self,
        pending: &mut Pending,
        pipeline: &wgpu::ComputePipeline,
        slot: (usize, u64),
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let key = GroupKey {
            pipeline: pipeline.clone(),
            slot,
            buffers: buffers.iter().map(|&(i, b)| (i, b.clone())).collect(),
        };
        let b = &mut pending.bindings;
        if let Some(group) = b.groups.get(&key) {
            return group.clone();
        }
        if b.groups.len() >= MAX_BIND_GROUPS {
            b.groups.clear();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &b.buffers[slot.0].buffer,
                offset: slot.1,
                size: std::num::NonZeroU64::new(UNIFORM_SIZE),
            }),
        }];
        entries.extend(buffers.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: buf.as_entire_binding(),
        }));
        let group = self.0.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        b.created += 1;
        b.groups.insert(key, group.clone());
        group
    }

    /// Bind groups created since this `Gpu` was made: after a first training step, a loop of
    /// identical ones creates none (for tests).
    #[doc(hidden)]
    pub fn bind_groups_created(&self) -> u64 {
        lock(&self.0.pending).bindings.created
    }

    /// Record one dispatch of `kernel` with `params` at binding 0 and `buffers` at bindings 1...
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) -> Result<()> {
        self.dispatch_with(kernel, &[], params, buffers, grid)
    }

    /// [`Gpu::dispatch`] with pipeline-overridable constants (tile sizes and the like).
    pub(crate) fn dispatch_with<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        params: &P,
        buffers: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) -> Result<()> {
        let bound: Vec<(u32, &wgpu::Buffer)> = (1..).zip(buffers.iter().copied()).collect();
        self.dispatch_bound(kernel, constants, params, &bound, grid)
    }

    /// [`Gpu::dispatch_with`] with each buffer's binding number given (for kernels whose
    /// bindings are not consecutive).
    pub(crate) fn dispatch_bound<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        grid: [u32; 3],
    ) -> Result<()> {
        let limits = &self.0.limits;
        let max = limits.max_compute_workgroups_per_dimension;
        if let Some(&g) = grid.iter().find(|&&g| g > max) {
            return Err(Error::Limit {
                what: format!("kernel {}::{} grid {grid:?}", kernel.file, kernel.entry),
                limit: "max_compute_workgroups_per_dimension",
                needed: g as u64,
                available: max as u64,
            });
        }
        for (_, b) in buffers {
            if b.size() > limits.max_storage_buffer_binding_size {
                return Err(Error::Limit {
                    what: format!("a buffer bound to {}::{}", kernel.file, kernel.entry),
                    limit: "max_storage_buffer_binding_size",
                    needed: b.size(),
                    available: limits.max_storage_buffer_binding_size,
                });
            }
        }
        if grid.contains(&0) {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel, constants);
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() as u64 <= UNIFORM_SIZE,
            "params struct larger than {UNIFORM_SIZE} bytes"
        );
        let mut pending = lock(&self.0.pending);
        let slot = self.uniform_slot(&mut pending, bytes);
        let bind_group = self.bind_group(&mut pending, &pipeline, slot, buffers);
        if pending.profiler.is_some() {
            // Timed: a pass of its own, with timestamps at its beginning and end.
            self.encoder(&mut pending);
            let Pending {
                encoder, profiler, ..
            } = &mut *pending;
            let enc = encoder.as_mut().expect("encoder created above");
            let timestamp_writes = profiler
                .as_mut()
                .map(|p| p.next_pass(&self.0.device, kernel));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        } else {
            if pending.pass.is_none() {
                let pass = self
                    .encoder(&mut pending)
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("dispatches"),
                        timestamp_writes: None,
                    })
                    .forget_lifetime();
                pending.pass = Some(pass);
            }
            let pass = pending.pass.as_mut().expect("pass opened above");
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        self.0
            .total_dispatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Submit everything recorded so far. Cheap when nothing is pending.
    pub fn flush(&self) {
        self.submit();
    }

    /// [`Gpu::flush`], returning the submission's index when there was anything to submit.
    fn submit(&self) -> Option<wgpu::SubmissionIndex> {
        // Submit while holding the lock: otherwise another thread could submit later-recorded
        // work (or write a recycled buffer) before this encoder reaches the queue.
        let mut pending = lock(&self.0.pending);
        self.submit_locked(&mut pending)
    }

    /// [`Gpu::submit`] with the pending work's lock held: upload the params slots written
    /// since the last submit, then submit the encoder.
    fn submit_locked(&self, pending: &mut Pending) -> Option<wgpu::SubmissionIndex> {
        for buf in &mut pending.bindings.buffers {
            if let Some(range) = buf.dirty.take() {
                let offset = range.start as u64;
                self.0
                    .queue
                    .write_buffer(&buf.buffer, offset, &buf.bytes[range]);
            }
        }
        pending.pass = None;
        let mut enc = pending.encoder.take()?;
        if let Some(profiler) = pending.profiler.as_mut() {
            profiler.resolve(&self.0.device, &mut enc);
        }
        let index = self.0.queue.submit([enc.finish()]);
        self.0
            .total_submits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(index)
    }

    /// Submit the recorded work and wait until the GPU has finished it (native only; a no-op
    /// wait on the web, where the browser schedules completion).
    pub fn synchronize(&self) -> Result<()> {
        self.flush();
        #[cfg(not(target_arch = "wasm32"))]
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        Ok(())
    }

    /// Copy `bytes` bytes of `src` to the host.
    pub(crate) async fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        Ok(self.read_many(&[(src, bytes)]).await?.remove(0))
    }

    /// Copy the first `bytes` bytes of each buffer to the host with one submit and one wait
    /// (through one staging buffer), rather than one round trip per buffer.
    pub(crate) async fn read_many(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Result<Vec<Vec<u8>>> {
        self.start_read(srcs).finish().await
    }

    /// Record copies of `srcs` (buffer, bytes) into one staging buffer, submit everything
    /// recorded so far and request the mapping, without waiting: the returned [`Readback`]
    /// yields the bytes once the GPU has reached this point. Meanwhile more work can be recorded
    /// and submitted (a training loop keeps one step in flight this way).
    pub(crate) fn start_read(&self, srcs: &[(&wgpu::Buffer, u64)]) -> Readback {
        let sizes: Vec<u64> = srcs
            .iter()
            .map(|(_, b)| (*b).max(4).next_multiple_of(4))
            .collect();
        let total: u64 = sizes.iter().sum::<u64>().max(4);
        let staging = lock(&self.0.pool).take(&self.0.device, total, READBACK_USAGE);
        let mut ranges = Vec::with_capacity(srcs.len());
        {
            let mut pending = lock(&self.0.pending);
            let enc = self.encoder(&mut pending);
            let mut offset = 0;
            for ((src, bytes), size) in srcs.iter().zip(&sizes) {
                enc.copy_buffer_to_buffer(src, 0, &staging, offset, *size);
                ranges.push(offset as usize..(offset + bytes) as usize);
                offset += size;
            }
        }
        let submission = self.submit();
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Readback {
            gpu: self.clone(),
            staging,
            ranges,
            submission,
            rx,
        }
    }
}

/// A boolean pipeline-overridable constant (WGSL `override NAME: bool`) as
/// [`Gpu::dispatch_with`] takes it: 1 for true, 0 for false.
pub(crate) fn flag(name: &'static str, on: bool) -> (&'static str, f64) {
    (name, f64::from(u8::from(on)))
}

/// Split `workgroups` one-dimensional workgroups into a grid that respects the 65,535 per-dimension
/// limit. Shaders recover the linear index as `wg.x + wg.y * num_workgroups.x`.
pub fn grid_1d(workgroups: u32) -> [u32; 3] {
    const MAX: u32 = 65_535;
    if workgroups <= MAX {
        [workgroups, 1, 1]
    } else {
        [MAX, workgroups.div_ceil(MAX), 1]
    }
}

/// Grid for one thread per element over `n` elements with [`WORKGROUP_1D`] threads per group.
pub fn grid_for_elements(n: usize) -> [u32; 3] {
    grid_1d((n as u64).div_ceil(WORKGROUP_1D as u64) as u32)
}

/// A pass over `n` values by a kernel with a vec4 twin, one thread per unit: `four` over the
/// `n / 4` vec4s where `n` is a multiple of 4, else `one` over the `n` values. Returns the
/// kernel, the number of units (what its `n` parameter counts) and the grid.
pub(crate) fn scalar_or_vec4(
    n: usize,
    one: &'static Kernel,
    four: &'static Kernel,
) -> (&'static Kernel, usize, [u32; 3]) {
    let (kernel, units) = if n.is_multiple_of(4) {
        (four, n / 4)
    } else {
        (one, n)
    };
    (kernel, units, grid_for_elements(units))
}

/// A read-back in flight (see [`Gpu::start_read`]): copies recorded and submitted, mapping
/// requested. [`Readback::finish`] waits for exactly that submission, not for work submitted
/// after it.
pub(crate) struct Readback {
    gpu: Gpu,
    staging: wgpu::Buffer,
    ranges: Vec<std::ops::Range<usize>>,
    submission: Option<wgpu::SubmissionIndex>,
    rx: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl Readback {
    /// The bytes of each source, in order.
    pub(crate) async fn finish(self) -> Result<Vec<Vec<u8>>> {
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .0
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: self.submission.clone(),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        let _ = &self.submission;
        self.rx
            .await
            .map_err(|_| Error::Gpu("buffer mapping was cancelled".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a read-back buffer failed: {e}")))?;
        let data = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e}")))?;
            self.ranges
                .iter()
                .map(|r| view[r.clone()].to_vec())
                .collect()
        };
        self.staging.unmap();
        self.gpu.release(self.staging);
        Ok(data)
    }
}
