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

pub use device::GpuOptions;
#[doc(hidden)]
pub use lanes::{
    LANES_ENGINES, LANES_FILES, LANES_MEMORY, LANES_SUBGROUP, REDUCING_ENGINE, REDUCING_FILES,
};
pub use pool::PoolStats;
pub use profile::{KernelTime, gpu_span_nanos};

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

/// How the convolutions multiply ([`Gpu::set_conv_precision`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConvPrecision {
    /// f32 operands and f32 fused multiply-adds: the exact path, on every adapter (the default).
    #[default]
    F32,
    /// Operands rounded to f16 (gradients scaled by a power of two first, so they stay out of
    /// f16's subnormal range), multiplied by cooperative matrices (tensor cores) and accumulated
    /// in f32; inputs, outputs and weights stay f32 tensors. Needs a device opened with
    /// [`GpuOptions::tensor_cores`] on an adapter with a usable configuration.
    F16,
}

impl std::str::FromStr for ConvPrecision {
    type Err = Error;
    /// `f32` or `f16`.
    fn from_str(s: &str) -> Result<ConvPrecision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(ConvPrecision::F32),
            "f16" => Ok(ConvPrecision::F16),
            other => Err(Error::Invalid(format!(
                "conv precision {other:?}: expected f32 or f16"
            ))),
        }
    }
}

/// The order in which the conv GEMMs run their reductions ([`Gpu::set_conv_order`]; see
/// "Reduction order" in `shaders/conv.wgsl`). Both give the same sums up to f32 rounding.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConvOrder {
    /// Taps outer, channels inner, wherever the reduced channels split into whole chunks (all
    /// but the first convolution of a ResNet), channel-major elsewhere: one bounds check per
    /// staged chunk and no divisions per element. The forward and input-gradient passes of
    /// kernels larger than 1x1 read the weights from a `[K, R, S, C]` copy, one small dispatch
    /// each, and so reduce taps outer only where their GEMM has enough columns (output pixels)
    /// to amortize it: at least 1,024 (the default).
    #[default]
    Rsc,
    /// Channel-major everywhere, as the weights `[K, C, R, S]` lie: an im2col index computed
    /// per staged element.
    Crs,
}

impl ConvOrder {
    /// [`ConvOrder::Rsc`] unless `RESNET_WGPU_CONV_ORDER=crs`: the order a new [`Gpu`] starts
    /// with.
    pub fn from_env() -> ConvOrder {
        env_setting("RESNET_WGPU_CONV_ORDER", ConvOrder::Rsc, "rsc")
    }
}

impl std::str::FromStr for ConvOrder {
    type Err = Error;
    /// `rsc` or `crs`.
    fn from_str(s: &str) -> Result<ConvOrder> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsc" => Ok(ConvOrder::Rsc),
            "crs" => Ok(ConvOrder::Crs),
            other => Err(Error::Invalid(format!(
                "conv order {other:?}: expected rsc or crs"
            ))),
        }
    }
}

/// What this crate plans its kernels for. A GPU runs thousands of threads and wants many
/// workgroups in flight; a CPU adapter (lavapipe, SwiftShader, WARP) runs a workgroup per core
/// and wants a few large ones. The plan decides:
/// - the conv tiles and split reductions ([`crate::ops::TileModel::for_gpu`]);
/// - when [`ConvAlgo::Auto`] runs Winograd (64 or 128 channels and 1,024 output pixels on a
///   GPU, 16 channels on a CPU adapter);
/// - whether the narrow layers' direct kernels run (`shaders/conv_narrow.wgsl`, CPU adapters
///   only);
/// - whether the optimizers and gradient clipping group several tensors per dispatch (GPUs).
///
/// A new [`Gpu`] plans for its adapter's type ([`PlanFor::for_device_type`]) unless
/// [`GpuOptions::plan_for`] or `RESNET_WGPU_PLAN_FOR` (`gpu` or `cpu`) says otherwise. Planning
/// a CPU adapter as a GPU runs on it every kernel a GPU would run, with the GPU's splits: the
/// tests check the GPU's plan that way. The conv staging follows the adapter itself
/// ([`ConvStaging::for_adapter`]): it works around how an adapter fills workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFor {
    /// Discrete, integrated and virtual GPUs, and adapters of unknown type (as on the web).
    Gpu,
    /// Adapters that run on the CPU.
    Cpu,
}

impl PlanFor {
    /// [`PlanFor::Cpu`] for a [`wgpu::DeviceType::Cpu`], [`PlanFor::Gpu`] for every other type.
    pub fn for_device_type(device_type: wgpu::DeviceType) -> PlanFor {
        if device_type == wgpu::DeviceType::Cpu {
            PlanFor::Cpu
        } else {
            PlanFor::Gpu
        }
    }

    /// The plan of a new [`Gpu`] on an adapter of `device_type`: `asked` where given, else
    /// `RESNET_WGPU_PLAN_FOR` where set, else the adapter's type.
    fn choose(asked: Option<PlanFor>, device_type: wgpu::DeviceType) -> PlanFor {
        let by_type = PlanFor::for_device_type(device_type);
        let name = match by_type {
            PlanFor::Gpu => "the adapter's type (gpu)",
            PlanFor::Cpu => "the adapter's type (cpu)",
        };
        asked.unwrap_or_else(|| env_setting("RESNET_WGPU_PLAN_FOR", by_type, name))
    }
}

impl std::str::FromStr for PlanFor {
    type Err = Error;
    /// `gpu` or `cpu`.
    fn from_str(s: &str) -> Result<PlanFor> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gpu" => Ok(PlanFor::Gpu),
            "cpu" => Ok(PlanFor::Cpu),
            other => Err(Error::Invalid(format!(
                "plan {other:?}: expected gpu or cpu"
            ))),
        }
    }
}

/// How the conv GEMMs stage reduction chunks in workgroup memory: the f32 engine's
/// ([`Gpu::set_conv_staging`]; see `shaders/conv_fma.wgsl`) and, separately, the f16 engine's
/// ([`Gpu::set_f16_staging`]; `shaders/conv_mma.wgsl`). All give the same sums, bit for bit.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ConvStaging {
    /// Two copies, where the device's workgroup memory holds them (25 KiB for the f32 engine's
    /// largest tiles, 28.75 KiB for the f16 engine's: native adapters, and browsers whose
    /// adapter offers 32 KiB; not WebGPU's default 16 KiB, where the kernels stage one): each
    /// chunk is staged into one copy while the chunk before it is multiplied from the other,
    /// so a workgroup waits at one barrier per chunk instead of two. The f32 engine's default
    /// but on CPU adapters in a browser.
    #[default]
    Double,
    /// One copy: stage a chunk, wait, multiply it, wait before staging the next. The f16
    /// engine's default.
    Single,
    /// One copy of chunks half as deep (8 reduction steps, 4 for the 128 x 128 tile), with
    /// twice as many barriers: a quarter of `Double`'s workgroup memory. The default on CPU
    /// adapters in a browser ([`ConvStaging::for_adapter`]). For the f16 engine (which
    /// browsers do not run), the same as `Single`.
    Shallow,
}

impl ConvStaging {
    /// The staging a new [`Gpu`] on `adapter` starts with: `RESNET_WGPU_CONV_STAGING`
    /// (`double`, `single` or `shallow`) where set, else [`ConvStaging::Shallow`] for a CPU
    /// adapter in a browser and [`ConvStaging::Double`] everywhere else.
    ///
    /// WebGPU zero-fills a workgroup's memory before its first instruction, and Chromium's CPU
    /// adapter (SwiftShader) does that in each 4-lane subgroup, 64 times per 256-thread
    /// workgroup, with one store per element spelled out in the compiled kernel: the time to
    /// compile a kernel and to run a workgroup grow with the memory it declares. In the
    /// browser test (`tests/browser.rs`), the page's training step took 608 ms with two copies
    /// (its first step, which compiles the kernels, 44 s), 435-437 with one (26-34 s), and
    /// 330-372 with one shallow copy (16-17 s). Native code asks wgpu not to zero-fill (the
    /// kernels never read memory they have not written), and on lavapipe the stagings ran
    /// within a few percent of each other (`docs/gpu-runs/`).
    pub fn for_adapter(adapter: &GpuInfo) -> ConvStaging {
        let in_browser_cpu = adapter.backend == wgpu::Backend::BrowserWebGpu
            && adapter.device_type == wgpu::DeviceType::Cpu;
        let (default, name) = if in_browser_cpu {
            (ConvStaging::Shallow, "shallow")
        } else {
            (ConvStaging::Double, "double")
        };
        env_setting("RESNET_WGPU_CONV_STAGING", default, name)
    }

    /// The f16 engine's staging a new [`Gpu`] starts with: `RESNET_WGPU_F16_STAGING` (`double`
    /// or `single`) where set, else [`ConvStaging::Single`]. Two copies halve the f16 engine's
    /// barriers, whose chunks are short (8 cooperative-matrix multiplies per subgroup between
    /// barriers for 128 x 128), but on RADV they cost the 128 x 128 tile 192 VGPRs against
    /// 120-132 (`docs/speed.md`, "Two staged copies in the f16 engine"); which is faster on a
    /// GPU is not measured yet.
    pub fn f16_from_env() -> ConvStaging {
        env_setting("RESNET_WGPU_F16_STAGING", ConvStaging::Single, "single")
    }
}

impl std::str::FromStr for ConvStaging {
    type Err = Error;
    /// `double`, `single` or `shallow`.
    fn from_str(s: &str) -> Result<ConvStaging> {
        match s.trim().to_ascii_lowercase().as_str() {
            "double" => Ok(ConvStaging::Double),
            "single" => Ok(ConvStaging::Single),
            "shallow" => Ok(ConvStaging::Shallow),
            other => Err(Error::Invalid(format!(
                "conv staging {other:?}: expected double, single or shallow"
            ))),
        }
    }
}

/// How the 3x3 convolutions of stride 1 and padding 1 (all but the first of each ResNet
/// stage's) run their three passes and inference's fused conv block ([`Gpu::set_conv_algo`]).
/// Other kernel sizes and strides always run direct. Under [`ConvPrecision::F16`] Winograd's
/// GEMMs run on the f16 engine.
///
/// Winograd F(4x4, 3x3) (`shaders/winograd.wgsl`; [`WinogradTile`]) runs 36 GEMMs with a
/// quarter of the direct convolution's multiply-adds, between transforms that move about 9
/// bytes per output pixel and channel; F(2x2, 3x3) 16 GEMMs with 4/9 of them and 16 bytes. Their
/// sums are not the direct ones bit for bit: the transforms add and subtract inputs before the
/// products (errors of a few times f32 rounding on the sums, relative to the output's scale;
/// tested against the goldens at the same tolerance as the direct convolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgo {
    /// Winograd where the channels are many enough for the saved arithmetic to outweigh the
    /// transforms' traffic on the adapter (on GPUs at least 64 input and output channels for
    /// F(4x4, 3x3), 128 for F(2x2, 3x3); 16 on CPU adapters), its GEMMs, padded to their
    /// tiles, do at most 3/4 of the multiply-adds of the direct convolution's GEMM, padded
    /// likewise (not so on small batches of small planes), and on GPUs the batch has at least
    /// 1,024 output pixels; direct elsewhere.
    /// With conv autotuning on ([`Gpu::set_conv_autotune`]) each such convolution's passes are
    /// timed both ways instead, and the faster runs. On CPU adapters, in f32 and without
    /// autotuning, the other passes of layers of at most 16 channels run direct kernels without
    /// GEMM tiles (`shaders/conv_narrow.wgsl`; [`crate::ops::conv2d_narrow`] says which).
    #[default]
    Auto,
    /// Winograd on every such convolution.
    Winograd,
    /// The implicit GEMM everywhere, in place of Winograd and the narrow kernels: every product
    /// of the direct convolution summed in f32.
    Direct,
}

impl ConvAlgo {
    /// [`ConvAlgo::Auto`] unless `RESNET_WGPU_CONV_ALGO` is `winograd` or `direct`: the
    /// algorithm a new [`Gpu`] starts with.
    pub fn from_env() -> ConvAlgo {
        env_setting("RESNET_WGPU_CONV_ALGO", ConvAlgo::Auto, "auto")
    }
}

/// The conv setting environment variable `var` names, else `default` (`default_name` in the
/// warning printed when the value does not parse).
fn env_setting<T: std::str::FromStr<Err = Error>>(var: &str, default: T, default_name: &str) -> T {
    match std::env::var(var) {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("warning: {var}: {e}; using {default_name}");
            default
        }),
        Err(_) => default,
    }
}

impl std::str::FromStr for ConvAlgo {
    type Err = Error;
    /// `auto`, `winograd` or `direct`.
    fn from_str(s: &str) -> Result<ConvAlgo> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ConvAlgo::Auto),
            "winograd" => Ok(ConvAlgo::Winograd),
            "direct" => Ok(ConvAlgo::Direct),
            other => Err(Error::Invalid(format!(
                "conv algorithm {other:?}: expected auto, winograd or direct"
            ))),
        }
    }
}

/// The output tile of the Winograd convolutions that run their GEMMs on the f32 engine
/// ([`Gpu::set_winograd_tile`]; unless set, chosen per convolution and pass: the one whose
/// GEMMs do fewer multiply-adds, counting the padding of their last column tile, which is
/// F(4x4, 3x3) except on the smallest batches of small planes, such as ResNet's 7x7 layer4 at
/// batch 8, whose 32 tiles fill half of a 64-column GEMM tile). Winograd's GEMMs on the f16
/// engine always run
/// [`WinogradTile::F2`]: F(4x4, 3x3)'s transforms grow values by up to 49 times (F(2x2, 3x3)'s
/// by 4), too much for f16's 11-bit significands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum WinogradTile {
    /// F(2x2, 3x3) (`shaders/winograd.wgsl`): 16 GEMMs, 4/9 of the direct convolution's
    /// multiply-adds; the transformed tensors hold 4 values per output pixel and channel.
    F2,
    /// F(4x4, 3x3): 36 GEMMs, a quarter of the direct convolution's
    /// multiply-adds; 2.25 transformed values per output pixel and channel (planes whose sides
    /// are multiples of 4). Its transforms' coefficients (up to 8, and 1/3, 1/15) round more than
    /// F(2x2, 3x3)'s: on random 3x3 convolutions of 16-128 channels in f32 on lavapipe, the
    /// largest error against the exact sums is 3e-6 to 1.2e-5 of the output's RMS (F(2x2, 3x3):
    /// up to 2.7e-6). The points of its transforms (0, 1, -1, 1/2, -2) are those Barabasz et al.
    /// (2020) found most accurate, 3.5 times more than Lavin & Gray's 0, +-1, +-2. The conv
    /// goldens pass through it at the direct convolution's tolerance.
    #[default]
    F4,
}

impl WinogradTile {
    /// Both tiles, smaller first.
    pub const ALL: [WinogradTile; 2] = [WinogradTile::F2, WinogradTile::F4];

    /// The tile's place in [`WinogradTile::ALL`].
    pub fn index(self) -> usize {
        match self {
            WinogradTile::F2 => 0,
            WinogradTile::F4 => 1,
        }
    }

    /// `RESNET_WGPU_WINOGRAD_TILE` ([`WinogradTile::parse_choice`]), else None (the choice per
    /// convolution): the setting a new [`Gpu`] starts with.
    pub fn from_env() -> Option<WinogradTile> {
        match std::env::var("RESNET_WGPU_WINOGRAD_TILE") {
            Ok(v) => WinogradTile::parse_choice(&v).unwrap_or_else(|e| {
                eprintln!("warning: RESNET_WGPU_WINOGRAD_TILE: {e}; using auto");
                None
            }),
            Err(_) => None,
        }
    }

    /// `auto` (None: the choice per convolution) or a tile (`2`, `4`, ...: its `FromStr`).
    pub fn parse_choice(s: &str) -> Result<Option<WinogradTile>> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        s.parse().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "Winograd tile {s:?}: expected auto, 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))"
            ))
        })
    }

    /// Output pixels per tile side (2 or 4).
    pub fn m(self) -> usize {
        match self {
            WinogradTile::F2 => 2,
            WinogradTile::F4 => 4,
        }
    }

    /// Transformed values per tile side, m + 2 for the 3x3 kernel.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Positions of a transformed tile: the number of GEMMs (16 or 36).
    pub fn positions(self) -> usize {
        self.alpha() * self.alpha()
    }
}

impl std::fmt::Display for WinogradTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "F({m}x{m}, 3x3)", m = self.m())
    }
}

impl std::str::FromStr for WinogradTile {
    type Err = Error;
    /// `2` or `4` (also `2x2`, `4x4`, `f2`, `f4`).
    fn from_str(s: &str) -> Result<WinogradTile> {
        match s.trim().to_ascii_lowercase().as_str() {
            "2" | "2x2" | "f2" => Ok(WinogradTile::F2),
            "4" | "4x4" | "f4" => Ok(WinogradTile::F4),
            other => Err(Error::Invalid(format!(
                "Winograd tile {other:?}: expected 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))"
            ))),
        }
    }
}

/// A cooperative-matrix configuration the f16 conv engine has kernels for: F x F x F fragments
/// (f16 x f16 + f32) on an adapter whose subgroups have `subgroup` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaConfig {
    /// Fragment size F (8 or 16).
    pub fragment: u32,
    /// Invocations per subgroup.
    pub subgroup: u32,
}

impl MmaConfig {
    /// The configurations `shaders/conv_mma.wgsl` is compiled for (see `ops::conv`), in order
    /// of preference.
    pub fn supported() -> Vec<MmaConfig> {
        crate::ops::conv::mma_configs().collect()
    }

    /// Whether `shaders/conv_mma.wgsl` is compiled for this configuration.
    pub fn has_kernels(&self) -> bool {
        crate::ops::conv::mma_configs().any(|c| c == *self)
    }

    /// The most workgroup memory the f16 engine's tiles declare with these fragments and one
    /// copy of the staged operands, in bytes: the adapter must allow that much
    /// ([`crate::ops::MmaTile::workgroup_bytes`]; two copies where it allows them).
    pub fn workgroup_bytes(&self) -> u64 {
        crate::ops::MmaTile::ALL
            .iter()
            .map(|t| t.workgroup_bytes(self.fragment as usize, 1))
            .max()
            .unwrap_or(0)
    }
}

impl std::fmt::Display for MmaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.fragment;
        write!(
            f,
            "{n}x{n}x{n} f16 x f16 + f32 fragments with subgroups of {} ({} bytes of workgroup \
             memory)",
            self.subgroup,
            self.workgroup_bytes()
        )
    }
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
