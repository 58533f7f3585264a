//! The settings that choose how the convolutions compute ([`Gpu`]'s `set_conv_*`): precision,
//! reduction order, staging, algorithm, Winograd tile, the plan's target, and the f16 engine's
//! fragment configuration. Each parses from the name its environment variable and the bench's
//! flags take.

use super::GpuInfo;
#[cfg(doc)]
use super::{Gpu, GpuOptions};
use crate::{Error, Result};

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
    pub(super) fn choose(asked: Option<PlanFor>, device_type: wgpu::DeviceType) -> PlanFor {
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
