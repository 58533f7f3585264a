//! 2-D convolution (NCHW) as a tiled implicit GEMM, forward and both backward passes. See
//! `shaders/conv.wgsl` for the math, the tiling and the dispatch grids.
//!
//! Shapes: x `[N, C, H, W]`, w `[K, C, R, S]`, b `[K]`, y `[N, K, OH, OW]` with
//! `OH = (H + 2 * padding - R) / stride + 1` (likewise OW). The weight gradient reduces over
//! `N * OH * OW`, which can be long: it is split into chunks computed by separate workgroups
//! (split-K) whose partial results a second small kernel sums; the forward pass does the same
//! when its output alone cannot fill the device (small batches).
//!
//! Each GEMM runs in one of five tile variants ([`ConvTile`]); a [`TileModel`] for the adapter
//! picks the tile and the split-K plan per shape.
//!
//! The 3x3 convolutions of stride 1 and padding 1 run Winograd F(2x2, 3x3) where
//! [`crate::ConvAlgo`] says so (the `winograd` submodule): transforms around 16 of these GEMMs,
//! batched, with 4/9 of the multiply-adds.

mod winograd;

pub use winograd::{WINOGRAD_CHUNK_ELEMENTS, conv2d_winograd};

use super::tune::{self, Candidate, ConvKey, ConvPass, TunedConv};
use crate::autograd::Var;
use crate::gpu::{
    ConvAlgo, ConvOrder, ConvPrecision, ConvStaging, Gpu, Kernel, MmaConfig, grid_1d,
    scalar_or_vec4,
};
use crate::kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    in_c: u32,
    in_h: u32,
    in_w: u32,
    out_c: u32,
    out_h: u32,
    out_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    chunk: u32,
    splits: u32,
    r0: u32,
    s0: u32,
    nr: u32,
    ns: u32,
    h0: u32,
    w0: u32,
    hc: u32,
    wc: u32,
    /// The f16 engine's scaled operand (0: none, 1: A, 2: B); see `shaders/conv_mma.wgsl`.
    scaled: u32,
    /// conv_forward_bn's epilogue flags ([`EPI_RELU`], [`EPI_RESIDUAL`]).
    epilogue: u32,
    /// conv_forward_bn's batch-norm epsilon.
    eps: f32,
    /// conv_reduce_splits: the length of one partial result (gw's or gx's).
    reduce_len: u32,
    /// GEMMs batched over grid z (0 or 1: one), for [`winograd`].
    batched: u32,
    /// conv_backward_weight: the first partial result the dispatch writes.
    z_base: u32,
}

/// conv_forward_bn epilogue flag: a ReLU last.
const EPI_RELU: u32 = 1;
/// conv_forward_bn epilogue flag: add the residual (binding 10) before the ReLU.
const EPI_RESIDUAL: u32 = 2;

/// The conv kernels of one tile variant.
struct Kernels {
    forward: Kernel,
    /// The forward pass with the eval-mode batch-norm epilogue ([`conv2d_bn_eval`]).
    forward_bn: Kernel,
    backward_input: Kernel,
    backward_weight: Kernel,
}

/// The declarations conv.wgsl's f32 tile variants start with: a TM x TN micro-tile per thread,
/// reduction chunks of BK, TX threads along the tile's columns (256 / TX along its rows), and
/// STAGES copies of the staged chunk in workgroup memory ([`ConvStaging`]).
macro_rules! f32_tile {
    ($tm:literal, $tn:literal, $bk:literal, $tx:literal, $stages:literal) => {
        concat!(
            "const TM: u32 = ",
            $tm,
            "u;\nconst TN: u32 = ",
            $tn,
            "u;\nconst BK: u32 = ",
            $bk,
            "u;\nconst TX: u32 = ",
            $tx,
            "u;\nconst STAGES: u32 = ",
            $stages,
            "u;\n"
        )
    };
}

macro_rules! conv_kernels {
    ($variant:expr, $engine:literal) => {
        Kernels {
            forward: kernel!("conv.wgsl", "conv_forward", $variant, $engine),
            forward_bn: kernel!("conv.wgsl", "conv_forward_bn", $variant, $engine),
            backward_input: kernel!("conv.wgsl", "conv_backward_input", $variant, $engine),
            backward_weight: kernel!("conv.wgsl", "conv_backward_weight", $variant, $engine),
        }
    };
}

/// The f32 kernels of every tile of [`ConvTile::ALL`], in that order, with `$stages` copies of
/// the staged chunk.
macro_rules! f32_tiles {
    ($stages:literal) => {
        [
            conv_kernels!(f32_tile!(4, 4, 16, 16, $stages), "conv_fma.wgsl"),
            conv_kernels!(f32_tile!(8, 4, 16, 16, $stages), "conv_fma.wgsl"),
            conv_kernels!(f32_tile!(4, 8, 16, 16, $stages), "conv_fma.wgsl"),
            conv_kernels!(f32_tile!(8, 8, 8, 16, $stages), "conv_fma.wgsl"),
            conv_kernels!(f32_tile!(4, 4, 16, 32, $stages), "conv_fma.wgsl"),
        ]
    };
}

/// The f32 kernels staging each chunk once ([`ConvStaging::Single`])...
const F32_SINGLE: [Kernels; 5] = f32_tiles!(1);
/// ...and in two alternating copies ([`ConvStaging::Double`]).
const F32_DOUBLE: [Kernels; 5] = f32_tiles!(2);

/// A conv.wgsl entry point that is no GEMM (the split-K reductions and the tap-window copies,
/// one thread per element or weight row): it uses no tile, but the file needs one declared to
/// compile.
macro_rules! conv_elementwise {
    ($entry:literal) => {
        kernel!(
            "conv.wgsl",
            $entry,
            f32_tile!(4, 4, 16, 16, 1),
            "conv_fma.wgsl"
        )
    };
}

const REDUCE_SPLITS: Kernel = conv_elementwise!("conv_reduce_splits");
const REDUCE_SPLITS4: Kernel = conv_elementwise!("conv_reduce_splits4");

/// Sum the `splits` partial results `[splits, len]` in `part` into `out` (`p.reduce_len` =
/// `len`): four outputs per thread where `len` is a multiple of 4, else one (the same bits).
fn reduce_splits(gpu: &Gpu, p: &Params, part: &Tensor, out: &Tensor, len: usize) -> Result<()> {
    let (kernel, _, grid) = scalar_or_vec4(len, &REDUCE_SPLITS, &REDUCE_SPLITS4);
    gpu.dispatch(kernel, p, &[part.buffer(), out.buffer()], grid)
}
const FORWARD_REDUCE: Kernel = conv_elementwise!("conv_forward_reduce");
const FORWARD_REDUCE_BN: Kernel = conv_elementwise!("conv_forward_reduce_bn");
const TAPS_CROP: Kernel = conv_elementwise!("conv_taps_crop");
const TAPS_EXPAND: Kernel = conv_elementwise!("conv_taps_expand");
const WEIGHTS_RSC: Kernel = conv_elementwise!("conv_weights_rsc");

/// The declarations conv_mma.wgsl needs for F x F fragments (`$f`, the literal F) and subgroups
/// of `$sg`, on a tile of 256 threads with a `$tm` x `$tn` micro-tile each (16 thread columns,
/// so 16 `$tm` x 16 `$tn`), reduction chunks of `$bk`, each subgroup `$fm` x `$fn` fragments.
macro_rules! mma_variant {
    ($f:literal, $sg:literal, $tm:literal, $tn:literal, $bk:literal, $fm:literal, $fn:literal) => {
        concat!(
            "enable f16;\nenable wgpu_cooperative_matrix;\n",
            f32_tile!($tm, $tn, $bk, 16, 1),
            "const F: u32 = ",
            $f,
            "u;\nconst SG: u32 = ",
            $sg,
            "u;\n",
            "const FM: u32 = ",
            $fm,
            "u;\nconst FN: u32 = ",
            $fn,
            "u;\n",
            "alias MatA = coop_mat",
            $f,
            "x",
            $f,
            "<f16, A>;\n",
            "alias MatB = coop_mat",
            $f,
            "x",
            $f,
            "<f16, B>;\n",
            "alias MatC = coop_mat",
            $f,
            "x",
            $f,
            "<f32, C>;\n",
        )
    };
}

/// The f16 engine's kernels for one fragment configuration, one set per tile of
/// [`MmaTile::ALL`]: 64 x 64 with chunks of 32 and each subgroup one row of two fragments;
/// 128 x 64 and 128 x 128 with chunks of 16 (the staging code holds at most 8 values of a
/// chunk per thread) and each subgroup 2 x 2 and 2 x 4 fragments, so that every fragment loaded
/// from workgroup memory feeds two to four multiplies and every value staged from memory more
/// of them. One copy of the staged chunk: two (as the f32 kernels stage, [`ConvStaging`]) cost
/// the 128 x 128 tile 120 -> 156 registers on RADV (`docs/kernel-stats/`).
macro_rules! mma_tiles {
    ($f:literal, $sg:literal) => {
        [
            conv_kernels!(mma_variant!($f, $sg, 4, 4, 32, 1, 2), "conv_mma.wgsl"),
            conv_kernels!(mma_variant!($f, $sg, 8, 4, 16, 2, 2), "conv_mma.wgsl"),
            conv_kernels!(mma_variant!($f, $sg, 8, 8, 16, 2, 4), "conv_mma.wgsl"),
        ]
    };
}

/// f16 tensor-core kernels (`shaders/conv_mma.wgsl`): 16 x 16 fragments with subgroups of 32
/// (NVIDIA through Vulkan, Apple)...
const MMA_F16_SG32: [Kernels; 3] = mma_tiles!(16, 32);
/// ...and 8 x 8 fragments with subgroups of 8 (Mesa's lavapipe).
const MMA_F8_SG8: [Kernels; 3] = mma_tiles!(8, 8);

/// The configurations the f16 engine has kernels for, in order of preference.
const MMA_VARIANTS: [(MmaConfig, &[Kernels; 3]); 2] = [
    (
        MmaConfig {
            fragment: 16,
            subgroup: 32,
        },
        &MMA_F16_SG32,
    ),
    (
        MmaConfig {
            fragment: 8,
            subgroup: 8,
        },
        &MMA_F8_SG8,
    ),
];

/// A tile of the f16 engine. Its workgroup memory holds both operands in f16 and one row of
/// fragments of the f32 result at a time (`shaders/conv_mma.wgsl`): with 16 x 16 fragments
/// 13.75 KiB for 64 x 64 (chunks of 32), 12.5 for 128 x 64 and 18.5 for 128 x 128 (the
/// result's 32 or 64 rows at a time took 26.5, 25.3 and 26.75 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaTile {
    /// 64 x 64, reduction chunks of 32.
    T64x64,
    /// 128 x 64, chunks of 16.
    T128x64,
    /// 128 x 128, chunks of 16.
    T128x128,
}

impl MmaTile {
    /// Every f16 tile, in the order of the kernel sets.
    pub const ALL: [MmaTile; 3] = [MmaTile::T64x64, MmaTile::T128x64, MmaTile::T128x128];

    /// (rows, columns, reduction chunk).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            MmaTile::T64x64 => (64, 64, 32),
            MmaTile::T128x64 => (128, 64, 16),
            MmaTile::T128x128 => (128, 128, 16),
        }
    }

    /// Bytes of workgroup memory the tile's kernels declare with fragments of `fragment` x
    /// `fragment` (a_sh, b_sh and c_sh in conv_mma.wgsl, with their padded row strides).
    pub fn workgroup_bytes(self, fragment: usize) -> u64 {
        let (bm, bn, bk) = self.dims();
        (2 * bm * (bk + 8) + 2 * bk * (bn + 8) + 4 * fragment * (bn + 4)) as u64
    }

    /// The f16 tile standing in for the f32 engine's `tile` in a plan: the same tile where the
    /// f16 engine has it, else 64 x 64 (for 64 x 128 and 32 x 128).
    pub fn for_f32_tile(tile: ConvTile) -> MmaTile {
        match tile {
            ConvTile::T128x128 => MmaTile::T128x128,
            ConvTile::T128x64 => MmaTile::T128x64,
            ConvTile::T64x64 | ConvTile::T64x128 | ConvTile::T32x128 => MmaTile::T64x64,
        }
    }

    fn index(self) -> usize {
        MmaTile::ALL
            .iter()
            .position(|&t| t == self)
            .expect("a tile")
    }
}

/// The f16 kernels for `config`, one set per [`MmaTile`], if they exist.
fn mma_kernels(config: MmaConfig) -> Option<&'static [Kernels; 3]> {
    MMA_VARIANTS
        .iter()
        .find(|(c, _)| *c == config)
        .map(|(_, kernels)| *kernels)
}

/// The configurations the f16 engine has kernels for ([`MmaConfig::supported`]).
pub(crate) fn mma_configs() -> impl Iterator<Item = MmaConfig> {
    MMA_VARIANTS.iter().map(|(c, _)| *c)
}

/// The multiply engine of one conv dispatch: its kernels and tile.
#[derive(Clone, Copy)]
struct Engine {
    kernels: &'static Kernels,
    /// (rows, columns, reduction chunk) of a workgroup's tile.
    dims: (usize, usize, usize),
    /// The f16 engine, which binds the operand scale at binding 5.
    f16: bool,
}

/// The f16 engine's kernels when `gpu` runs convolutions in [`ConvPrecision::F16`].
fn f16_kernels(gpu: &Gpu) -> Option<&'static [Kernels; 3]> {
    match gpu.conv_precision() {
        ConvPrecision::F16 => gpu.mma_config().and_then(mma_kernels),
        ConvPrecision::F32 => None,
    }
}

/// The operand scale the f16 engine multiplies gy by in both backward passes
/// ([`crate::ops::f16_scale`]): `given` when the caller computed it for the other pass, else
/// computed here; None for the f32 engine, which binds no scale.
fn gy_scale(f16: bool, gy: &Tensor, given: Option<&Tensor>) -> Result<Option<Tensor>> {
    match (f16, given) {
        (false, _) => Ok(None),
        (true, Some(scale)) => Ok(Some(scale.clone())),
        (true, None) => crate::ops::f16_scale(gy).map(Some),
    }
}

impl Engine {
    /// `gpu`'s engine: the f16 one under [`ConvPrecision::F16`], else the f32 one with `tile`
    /// (chosen by the caller's plan unless forced).
    /// The f16 engine takes the f16 tile of the same rows as the plan's f32 tile
    /// ([`MmaTile::for_f32_tile`]).
    fn for_gpu(gpu: &Gpu, tile: impl FnOnce() -> ConvTile) -> Engine {
        if let Some(kernels) = f16_kernels(gpu) {
            let t = MmaTile::for_f32_tile(tile());
            return Engine {
                kernels: &kernels[t.index()],
                dims: t.dims(),
                f16: true,
            };
        }
        let tile = tile();
        Engine {
            kernels: tile.kernels(conv_stages(gpu, tile)),
            dims: tile.dims(),
            f16: false,
        }
    }

    /// Record one conv GEMM: `buffers` at bindings 1..., and for the f16 engine the operand
    /// scale at binding 5 (`scale`, or any f32 buffer with `p.scaled == 0`).
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        params: &Params,
        buffers: &[&wgpu::Buffer],
        scale: &wgpu::Buffer,
        grid: [u32; 3],
    ) -> Result<()> {
        let bound: Vec<(u32, &wgpu::Buffer)> = (1..).zip(buffers.iter().copied()).collect();
        self.dispatch_bound(gpu, kernel, constants, params, bound, scale, grid)
    }

    /// [`Engine::dispatch`] with each buffer's binding number given.
    #[allow(clippy::too_many_arguments)]
    fn dispatch_bound<'a>(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        params: &Params,
        mut bound: Vec<(u32, &'a wgpu::Buffer)>,
        scale: &'a wgpu::Buffer,
        grid: [u32; 3],
    ) -> Result<()> {
        if self.f16 {
            bound.push((5, scale));
        }
        gpu.dispatch_bound(kernel, constants, params, &bound, grid)
    }
}

/// (variant, engine) of each kernel set named.
macro_rules! shader_variants {
    ($($set:ident[$i:literal]),* $(,)?) => {
        [$(($set[$i].forward.variant, $set[$i].forward.engine)),*]
    };
}

/// Each conv variant's prepended WGSL declarations and its engine file under `shaders/` (for the
/// shader tests, which compile `variant + engine + conv.wgsl`).
#[doc(hidden)]
pub const CONV_SHADER_VARIANTS: [(&str, &str); 16] = shader_variants![
    F32_SINGLE[0],
    F32_SINGLE[1],
    F32_SINGLE[2],
    F32_SINGLE[3],
    F32_SINGLE[4],
    F32_DOUBLE[0],
    F32_DOUBLE[1],
    F32_DOUBLE[2],
    F32_DOUBLE[3],
    F32_DOUBLE[4],
    MMA_F16_SG32[0],
    MMA_F16_SG32[1],
    MMA_F16_SG32[2],
    MMA_F8_SG8[0],
    MMA_F8_SG8[1],
    MMA_F8_SG8[2],
];

/// Output tile of one conv workgroup (GEMM rows x columns). Larger tiles do more arithmetic per
/// byte staged and run faster on large GPUs, but leave fewer workgroups and waste more on
/// ragged edges; [`TileModel::choose`] weighs the two per GEMM and adapter.
/// `RESNET_WGPU_CONV_TILE` (for example `128x64`) forces one tile everywhere, for tuning on a
/// new adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvTile {
    /// 64 x 64, 4 x 4 per thread, reduction chunk 16.
    T64x64,
    /// 128 x 64, 8 x 4 per thread, chunk 16.
    T128x64,
    /// 64 x 128, 4 x 8 per thread, chunk 16.
    T64x128,
    /// 128 x 128, 8 x 8 per thread, chunk 8.
    T128x128,
    /// 32 x 128, 4 x 4 per thread (threads 32 columns by 8 rows), chunk 16: GEMMs of 32 rows
    /// or fewer (narrow layers' channels), which 64-row tiles would at least half waste.
    T32x128,
}

/// How the conv tiles trade off on one kind of adapter: their relative rates on full tiles
/// and the number of workgroups that fills the device. The GEMM plans (tile, split-K) follow
/// from it; [`TileModel::for_gpu`] picks the model for an adapter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileModel {
    /// Relative rate of each tile of [`ConvTile::ALL`], in that order.
    pub rates: [f64; ConvTile::ALL.len()],
    /// Workgroups that fill the device: fewer leave compute units idle, so smaller tiles or
    /// split reductions pay.
    pub full_grid: usize,
}

/// The machine's cores, asked once: on Linux `available_parallelism` reads the cgroup's CPU
/// quota from files each time, which cost 40% of the CPU time recording a training step on
/// lavapipe when every conv plan asked.
fn cpu_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

impl TileModel {
    /// Discrete and integrated GPUs. Rates measured on an H200 through Vulkan (run 5 in
    /// `docs/gpu-runs/`): `bench --what tiles --batch 128`, every ResNet-18 conv pass with each
    /// tile, on the 14 passes of 128 channels or more whose rows were timed at full clocks.
    /// Relative to 128 x 64 (27-33 TFLOP/s on layer2-4's 3x3 convs, the fastest on 12 of the
    /// 14), 64 x 64 and 64 x 128 ran at a median 0.85, 128 x 128 at 0.82 and 32 x 128 at 0.71.
    /// (Run 3 on an H100 had put the 128-row tiles at half the others': those figures were taken
    /// with wgpu's runtime checks compiled in, and partly while the clocks were low.) A Hopper
    /// GPU has 132 compute units, and three of these 256-thread workgroups per unit fill it: on
    /// layer4's 3x3 convs at batch 128 (392 tiles of 128 x 64), 128 x 64 beat 64 x 64 (784
    /// tiles) by 1.18x, and at batch 64 (196 tiles) lost to it.
    pub const GPU: TileModel = TileModel {
        rates: [0.85, 1.0, 0.85, 0.82, 0.71],
        full_grid: 396,
    };

    /// GPUs running the f16 engine, whose tiles stand in for the f32 ones
    /// ([`MmaTile::for_f32_tile`]): 128 x 128 runs f16 128 x 128, 128 x 64 f16 128 x 64, the
    /// others f16 64 x 64. Not measured yet. On the H200 (run 6) the 64 x 64 f16 kernels ran at
    /// the f32 64 x 64 tile's speed, so they are bound by staging operands from memory, not by
    /// the multiplies: the rates are the values staged per multiply-add, relative to 128 x 128's
    /// (1/64 of one per multiply-add, 128 x 64's 1/43, 64 x 64's 1/32). 64 x 128 and 32 x 128,
    /// which the f16 engine runs as 64 x 64, get a quarter, so that the model picks 64 x 64
    /// itself.
    pub const GPU_F16: TileModel = TileModel {
        rates: [0.5, 0.67, 0.25, 1.0, 0.25],
        full_grid: 396,
    };

    /// CPU adapters (lavapipe, SwiftShader): measured with lavapipe on 2 cores, where the
    /// 128 x 128 tile is the fastest (8-10 GFLOP/s on the large shapes against 5-6 for 64 x 64)
    /// and two workgroups per core keep every core busy (lavapipe runs a thread per core):
    /// `full_grid` is a 2-core machine's, which [`TileModel::for_gpu`] scales to the
    /// machine's cores ([`TileModel::cpu_with_cores`]). With 16 workgroups to fill, the model
    /// chose 64 x 64 tiles for ResNet-18's late layers at batch 1, and the conv passes ran
    /// 10-23% slower on 2 cores (`bench --what convs --batch 1`). 32 x 128 ran at 0.75-0.85 of
    /// 64 x 64's rate on full tiles (`bench --what tiles --batch 2`).
    pub const CPU: TileModel = TileModel {
        rates: [0.6, 0.65, 0.8, 1.0, 0.5],
        full_grid: 4,
    };

    /// [`TileModel::CPU`] for a machine with `cores` cores: two workgroups per core.
    pub fn cpu_with_cores(cores: usize) -> TileModel {
        TileModel {
            full_grid: 2 * cores.max(1),
            ..TileModel::CPU
        }
    }

    /// The model for `gpu`'s adapter: [`TileModel::CPU`] for CPU adapters, else
    /// [`TileModel::GPU`] (also where the type is unknown, as on the web), or
    /// [`TileModel::GPU_F16`] when `gpu` runs the f16 engine.
    pub fn for_gpu(gpu: &Gpu) -> TileModel {
        if gpu.info().device_type == wgpu::DeviceType::Cpu {
            TileModel::cpu_with_cores(cpu_cores())
        } else if f16_kernels(gpu).is_some() {
            TileModel::GPU_F16
        } else {
            TileModel::GPU
        }
    }

    /// The tile for an `m x n` GEMM (with `extra` workgroups along a third axis, such as
    /// split-K chunks): the best product of the tile's rate, the share of the tiles' area that is
    /// real work, and how full the grid is. `RESNET_WGPU_CONV_TILE` overrides.
    pub fn choose(&self, m: usize, n: usize, extra: usize) -> ConvTile {
        if let Some(t) = forced_tile() {
            return t;
        }
        let score = |i: usize| {
            let (bm, bn, _) = ConvTile::ALL[i].dims();
            let tiles = m.div_ceil(bm) * n.div_ceil(bn) * extra.max(1);
            let used = (m * n) as f64 / (m.next_multiple_of(bm) * n.next_multiple_of(bn)) as f64;
            let occupancy = (tiles as f64 / self.full_grid as f64).min(1.0);
            self.rates[i] * used * occupancy
        };
        let mut best = 0;
        for i in 1..ConvTile::ALL.len() {
            if score(i) > score(best) * 1.0001 {
                best = i;
            }
        }
        ConvTile::ALL[best]
    }

    /// The forward pass and the input gradient split their reduction when their output tiles
    /// fill less than a quarter of the device (small batches, late layers), and always when
    /// they are one workgroup.
    fn split_below(&self) -> usize {
        (self.full_grid / 4).max(2)
    }

    /// Splits of a reduction of `len` whose output fills `tiles` workgroups (the forward pass,
    /// one input-gradient phase): one unless the tiles alone are too few to fill the device and
    /// the reduction is long enough for chunks of [`FILL_MIN_CHUNK`].
    fn fill_splits(&self, tiles: usize, len: usize) -> usize {
        if tiles >= self.split_below() || len < 2 * FILL_MIN_CHUNK {
            return 1;
        }
        (self.full_grid / tiles).min(len / FILL_MIN_CHUNK).max(1)
    }

    /// Split-K of the weight gradient aims at this many workgroups.
    fn split_target(&self) -> usize {
        2 * self.full_grid
    }

    /// Splits of a weight gradient's reduction of `len` whose output fills `tiles` workgroups
    /// and whose partial results take `partial` values per split: towards
    /// [`TileModel::split_target`] workgroups, each split at least [`SPLIT_MIN_CHUNK`] long,
    /// all partial results within `budget` values (one split at the least), at most `most`.
    fn weight_grad_splits(
        &self,
        tiles: usize,
        len: usize,
        partial: usize,
        budget: usize,
        most: usize,
    ) -> usize {
        let max_by_len = len.div_ceil(SPLIT_MIN_CHUNK);
        let max_by_mem = (budget / partial).max(1);
        let wanted = self.split_target().div_ceil(tiles);
        wanted.min(max_by_len).min(max_by_mem).clamp(1, most)
    }
}

/// Split-K chunks of the forward pass and the input gradient hold at least this many reduction
/// indices.
const FILL_MIN_CHUNK: usize = 128;

impl ConvTile {
    /// Every tile.
    pub const ALL: [ConvTile; 5] = [
        ConvTile::T64x64,
        ConvTile::T128x64,
        ConvTile::T64x128,
        ConvTile::T128x128,
        ConvTile::T32x128,
    ];

    /// (rows, columns, reduction chunk).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            ConvTile::T64x64 => (64, 64, 16),
            ConvTile::T128x64 => (128, 64, 16),
            ConvTile::T64x128 => (64, 128, 16),
            ConvTile::T128x128 => (128, 128, 8),
            ConvTile::T32x128 => (32, 128, 16),
        }
    }

    /// Bytes of workgroup memory the tile's f32 kernels declare with `stages` copies of the
    /// staged chunk (a_tile and b_tile in conv_fma.wgsl, rows padded by one vec4).
    pub fn workgroup_bytes(self, stages: usize) -> u64 {
        let (bm, bn, bk) = self.dims();
        (16 * stages * bk * (bm / 4 + bn / 4 + 2)) as u64
    }

    fn kernels(self, stages: usize) -> &'static Kernels {
        let set = if stages == 2 {
            &F32_DOUBLE
        } else {
            &F32_SINGLE
        };
        let i = ConvTile::ALL
            .iter()
            .position(|&t| t == self)
            .expect("a tile");
        &set[i]
    }

    /// Parse `64x64`, `128x64`, `64x128`, `128x128` or `32x128`.
    pub fn parse(s: &str) -> Option<ConvTile> {
        ConvTile::ALL.into_iter().find(|t| {
            let (m, n, _) = t.dims();
            s.trim() == format!("{m}x{n}")
        })
    }
}

pub(crate) fn forced_tile() -> Option<ConvTile> {
    static FORCED: std::sync::OnceLock<Option<ConvTile>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let v = std::env::var("RESNET_WGPU_CONV_TILE").ok()?;
        let t = ConvTile::parse(&v);
        if t.is_none() {
            eprintln!(
                "warning: RESNET_WGPU_CONV_TILE={v:?} is not one of 64x64, 128x64, 64x128, 128x128, 32x128; ignored"
            );
        }
        t
    })
}

/// Copies of the staged chunk in `gpu`'s f32 kernels with `tile`: two under
/// [`ConvStaging::Double`] where the device's workgroup memory holds them (WebGPU's default
/// 16 KiB holds none of the tiles twice), else one. Public for the tests.
#[doc(hidden)]
pub fn conv_stages(gpu: &Gpu, tile: ConvTile) -> usize {
    let room = gpu.limits().max_compute_workgroup_storage_size as u64;
    if gpu.conv_staging() == ConvStaging::Double && tile.workgroup_bytes(2) <= room {
        2
    } else {
        1
    }
}

/// Whether a conv GEMM on `gpu` reduces taps outer ([`ConvOrder::Rsc`]): over `channels` in
/// chunks of `chunk` (the tile's BK; for the weight gradient, whose columns hold the taps, its
/// BN), every chunk must lie in one tap.
fn taps_outer(gpu: &Gpu, channels: usize, chunk: usize) -> bool {
    gpu.conv_order() == ConvOrder::Rsc && channels.is_multiple_of(chunk)
}

/// Taps outer, the forward and input-gradient GEMMs of kernels larger than 1x1 read a
/// `[K, R, S, C]` copy of the weights, which moves 8 bytes per weight, while the GEMM does one
/// multiply-add per weight and column. At an H200's ratio (about 15 T multiply-adds/s in these
/// kernels to 4.8 TB/s) the copy costs 25 / columns of the GEMM's time: these many columns
/// keep it near 2%, below what the order saves. GEMMs with fewer (layer2-4 at batch 1) keep
/// the channel-major order, which reads the weights as they lie.
pub(crate) const WEIGHT_COPY_MIN_COLUMNS: usize = 1024;

/// Largest grid dimension allowed by WebGPU.
const MAX_GRID: usize = 65_535;
/// Split-K of the weight gradient (aiming at [`TileModel`]'s target of workgroups) gives each
/// split at least this much of the reduction...
const SPLIT_MIN_CHUNK: usize = 256;
/// ...and keep the partial results below this many elements.
const SPLIT_MAX_PARTIAL: usize = 1 << 25;

/// Output height and width of a convolution: `((h + 2p - kernel) / stride + 1, ...)`, 0 where
/// the kernel does not fit the padded input or the stride is 0.
pub fn conv2d_output_size(
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let one = |size: usize| {
        let padded = size + 2 * padding;
        if stride == 0 || padded < kernel {
            0
        } else {
            (padded - kernel) / stride + 1
        }
    };
    (one(h), one(w))
}

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    x: [usize; 4],
    w: [usize; 4],
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn new(
        op: &'static str,
        x: [usize; 4],
        w: [usize; 4],
        stride: usize,
        padding: usize,
    ) -> Result<Geometry> {
        let [n, c, h, wd] = x;
        let [k, c2, r, s] = w;
        let shapes = || format!("x {x:?}, w {w:?}, stride {stride}, padding {padding}");
        if stride == 0 {
            return Err(Error::shape(
                op,
                format!("stride must be at least 1 ({})", shapes()),
            ));
        }
        if c != c2 {
            return Err(Error::shape(
                op,
                format!(
                    "input has {c} channels but the weights expect {c2} ({})",
                    shapes()
                ),
            ));
        }
        if x.contains(&0) || w.contains(&0) {
            return Err(Error::shape(op, format!("empty dimension ({})", shapes())));
        }
        if h + 2 * padding < r || wd + 2 * padding < s {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {r}x{s} is larger than the padded input {}x{} ({})",
                    h + 2 * padding,
                    wd + 2 * padding,
                    shapes()
                ),
            ));
        }
        let oh = (h + 2 * padding - r) / stride + 1;
        let ow = (wd + 2 * padding - s) / stride + 1;
        let g = Geometry {
            x,
            w,
            oh,
            ow,
            stride,
            padding,
        };
        // Every flat index the shaders form must fit in u32.
        let limit = u32::MAX as usize - 2 * 128;
        let extents = [
            n * c * h * wd,
            k * c * r * s,
            n * k * oh * ow,
            padding + h.max(wd) + r.max(s),
            stride * oh.max(ow),
        ];
        if extents.iter().any(|&e| e > limit)
            || padding > i32::MAX as usize / 4
            || stride > i32::MAX as usize / 4
        {
            return Err(Error::shape(
                op,
                format!("problem exceeds the u32 index range ({})", shapes()),
            ));
        }
        Ok(g)
    }

    /// The shader's overridable kernel size.
    fn kernel_size(&self) -> [(&'static str, f64); 2] {
        [("KH", self.w[2] as f64), ("KW", self.w[3] as f64)]
    }

    /// The overridable constants of a GEMM pass: the kernel size and the reduction order.
    fn gemm_constants(&self, taps_outer: bool) -> [(&'static str, f64); 3] {
        let [kh, kw] = self.kernel_size();
        [kh, kw, ("TAPS_OUTER", taps_outer as u8 as f64)]
    }

    /// Whether the forward pass on `gpu` reduces taps outer with tiles of `dims`.
    fn forward_taps_outer(&self, gpu: &Gpu, dims: (usize, usize, usize)) -> bool {
        taps_outer(gpu, self.x[1], dims.2) && self.weight_copy_pays(gpu, self.forward_gemm().1)
    }

    /// Whether an input-gradient phase on `gpu` reduces taps outer.
    fn input_taps_outer(&self, gpu: &Gpu, ph: &InputPhase) -> bool {
        taps_outer(gpu, self.w[0], ph.engine.dims.2) && self.weight_copy_pays(gpu, ph.cols)
    }

    /// Whether a GEMM of `columns` amortizes the weights' taps-outer copy (none for 1x1
    /// kernels, whose weights lie the same in both orders): [`WEIGHT_COPY_MIN_COLUMNS`].
    fn weight_copy_pays(&self, gpu: &Gpu, columns: usize) -> bool {
        self.w[2] * self.w[3] == 1 || columns >= gpu.conv_weight_copy_min_columns()
    }

    /// The copy of `w` that the forward and input-gradient GEMMs read when `taps_outer`:
    /// `[K, R, S, C]`. None where they read `w` itself (channel-major, or a 1x1 kernel, whose
    /// weights lie the same in both orders).
    fn weights_copy(
        &self,
        op: &'static str,
        w: &Tensor,
        taps_outer: bool,
    ) -> Result<Option<Tensor>> {
        let [k, c, r, s] = self.w;
        if !taps_outer || r * s == 1 {
            return Ok(None);
        }
        let out = Tensor::uninit(w.gpu(), &[k, r, s, c], DType::F32, op)?;
        w.gpu().dispatch_with(
            &WEIGHTS_RSC,
            &self.kernel_size(),
            &self.params(false, 0, 1),
            &[w.buffer(), out.buffer()],
            crate::gpu::grid_for_elements(w.numel()),
        )?;
        Ok(Some(out))
    }

    fn y_shape(&self) -> [usize; 4] {
        [self.x[0], self.w[0], self.oh, self.ow]
    }

    fn params(&self, has_bias: bool, chunk: usize, splits: usize) -> Params {
        let [n, c, h, w] = self.x;
        let [k, _, r, s] = self.w;
        Params {
            batch: n as u32,
            in_c: c as u32,
            in_h: h as u32,
            in_w: w as u32,
            out_c: k as u32,
            out_h: self.oh as u32,
            out_w: self.ow as u32,
            kh: r as u32,
            kw: s as u32,
            stride: self.stride as u32,
            pad: self.padding as u32,
            has_bias: has_bias as u32,
            chunk: chunk as u32,
            splits: splits as u32,
            r0: 0,
            s0: 0,
            nr: r as u32,
            ns: s as u32,
            h0: 0,
            w0: 0,
            hc: h as u32,
            wc: w as u32,
            scaled: 0,
            epilogue: 0,
            eps: 0.0,
            reduce_len: 0,
            batched: 0,
            z_base: 0,
        }
    }

    /// Split-K plan of the forward pass with tiles of `dims`: (chunk, splits); one split unless
    /// the output tiles alone are too few to fill the GPU and the reduction is long.
    fn forward_splits(&self, model: &TileModel, dims: (usize, usize, usize)) -> (usize, usize) {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        let (tile_m, tile_n, tile_k) = dims;
        let tiles = k.div_ceil(tile_m) * (n * self.oh * self.ow).div_ceil(tile_n);
        let crs = c * r * s;
        let splits = model.fill_splits(tiles, crs);
        if splits == 1 {
            return (crs, 1);
        }
        let chunk = crs.div_ceil(splits).next_multiple_of(tile_k);
        (chunk, crs.div_ceil(chunk))
    }

    /// The forward GEMM's rows (output channels) and columns (output pixels of the batch).
    fn forward_gemm(&self) -> (usize, usize) {
        (self.w[0], self.x[0] * self.oh * self.ow)
    }

    /// Tile of the forward pass.
    fn forward_tile(&self, model: &TileModel) -> ConvTile {
        let (m, n) = self.forward_gemm();
        model.choose(m, n, 1)
    }

    /// Fail unless `gy` has the shape of this convolution's output (the backward passes).
    fn expect_y_shape(&self, op: &'static str, gy: [usize; 4]) -> Result<()> {
        if gy != self.y_shape() {
            return Err(Error::shape(
                op,
                format!(
                    "gy has shape {gy:?} but x {:?} and w {:?} give outputs {:?}",
                    self.x,
                    self.w,
                    self.y_shape()
                ),
            ));
        }
        Ok(())
    }

    /// Tile of the weight gradient: split-K can fill the grid, so only the chunks' minimum
    /// length limits the third axis.
    fn weight_tile(&self, model: &TileModel) -> ConvTile {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        model.choose(
            k,
            c * r * s,
            (n * self.oh * self.ow).div_ceil(SPLIT_MIN_CHUNK),
        )
    }

    /// Split-K plan of the weight gradient with tiles of `dims`: (chunk, splits).
    fn weight_splits(&self, model: &TileModel, dims: (usize, usize, usize)) -> (usize, usize) {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        let (tile_m, tile_n, tile_k) = dims;
        let total = n * self.oh * self.ow;
        let tiles = k.div_ceil(tile_m) * (c * r * s).div_ceil(tile_n);
        let partial = k * c * r * s;
        let splits = model.weight_grad_splits(tiles, total, partial, SPLIT_MAX_PARTIAL, MAX_GRID);
        let chunk = total.div_ceil(splits).next_multiple_of(tile_k);
        (chunk, total.div_ceil(chunk))
    }
}

/// The taps of a kernel that reach the input, when some never do (the input is smaller than
/// the kernel's reach: a 3x3 kernel with padding 1 on a 1x1 map reads only padding with all but
/// its centre tap). The convolution is then the one of that window of taps with `padding` less
/// `first` and the same output size, and its GEMMs skip reductions over zeros (8/9 of
/// ResNet-18's layer4 3x3 convs on 32x32 images). See "tap windows" in `shaders/conv.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TapWindow {
    /// First tap of the window, along both axes.
    first: usize,
    /// Window size (rows, columns of taps).
    taps: (usize, usize),
    /// The smaller convolution's padding.
    padding: usize,
}

impl Geometry {
    /// The window of taps that reach the input, if it is smaller than the kernel and the
    /// smaller convolution has this one's output size with symmetric padding (the same first
    /// tap along both axes).
    fn tap_window(&self) -> Option<TapWindow> {
        let [_, _, h, wd] = self.x;
        let [_, _, r, s] = self.w;
        let (stride, padding) = (self.stride, self.padding);
        // Taps t reach input row oh * stride - padding + t inside [0, size) for some output oh.
        // None where no tap does (outputs of padding only, which the full kernel handles).
        let axis = |size: usize, taps: usize, out: usize| {
            let first = padding.saturating_sub((out - 1) * stride);
            let last = (taps - 1).min(size - 1 + padding);
            let count = (last + 1).checked_sub(first).filter(|&n| n > 0)?;
            Some((first, count))
        };
        let (r0, nr) = axis(h, r, self.oh)?;
        let (s0, ns) = axis(wd, s, self.ow)?;
        if r0 != s0 || (nr, ns) == (r, s) {
            return None;
        }
        let padding = padding - r0;
        let oh = (h + 2 * padding).checked_sub(nr)? / stride + 1;
        let ow = (wd + 2 * padding).checked_sub(ns)? / stride + 1;
        ((oh, ow) == (self.oh, self.ow)).then_some(TapWindow {
            first: r0,
            taps: (nr, ns),
            padding,
        })
    }

    /// Params of the tap-window copies: the kernel, the window, and the K*C rows to copy.
    fn window_params(&self, win: TapWindow) -> Params {
        let [k, c, _, _] = self.w;
        let len = k * c;
        let mut p = self.params(false, 0, 1);
        (p.r0, p.s0) = (win.first as u32, win.first as u32);
        (p.nr, p.ns) = (win.taps.0 as u32, win.taps.1 as u32);
        p.reduce_len = len as u32;
        p
    }

    /// `w` cut to the window's taps: `[K, C, nr, ns]`.
    fn crop_taps(&self, op: &'static str, w: &Tensor, win: TapWindow) -> Result<Tensor> {
        let [k, c, _, _] = self.w;
        self.copy_taps(op, &TAPS_CROP, w, [k, c, win.taps.0, win.taps.1], win)
    }

    /// The window's weight gradient `[K, C, nr, ns]` placed in the kernel's `[K, C, R, S]`,
    /// zeros at the taps that reach no input.
    fn expand_taps(&self, op: &'static str, gw: &Tensor, win: TapWindow) -> Result<Tensor> {
        self.copy_taps(op, &TAPS_EXPAND, gw, self.w, win)
    }

    /// Run a tap-window copy `kernel` from `src` into a new tensor of `shape`.
    fn copy_taps(
        &self,
        op: &'static str,
        kernel: &Kernel,
        src: &Tensor,
        shape: [usize; 4],
        win: TapWindow,
    ) -> Result<Tensor> {
        let [k, c, _, _] = self.w;
        let out = Tensor::uninit(src.gpu(), &shape, DType::F32, op)?;
        src.gpu().dispatch(
            kernel,
            &self.window_params(win),
            &[src.buffer(), out.buffer()],
            grid_1d((k * c).div_ceil(256) as u32),
        )?;
        Ok(out)
    }
}

/// The taps of each kernel axis the GEMMs of [`conv2d`] and its gradients run over for these
/// shapes: the kernel's, or fewer when some taps reach no input (for tests and benchmarks).
pub fn conv2d_taps(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<(usize, usize)> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    Ok(g.tap_window()
        .map_or((w_shape[2], w_shape[3]), |win| win.taps))
}

/// One sub-pixel phase of the input gradient (see the shader's header): its first tap and tap
/// counts, its first pixel and pixel counts, its GEMM, multiply engine and split-K chunk.
struct InputPhase {
    r0: usize,
    s0: usize,
    nr: usize,
    ns: usize,
    h0: usize,
    w0: usize,
    hc: usize,
    wc: usize,
    /// GEMM rows (input channels) and columns (this phase's pixels of the batch).
    rows: usize,
    cols: usize,
    engine: Engine,
    /// Reduction indices per split (the whole reduction without split-K).
    chunk: usize,
}

/// How a pass of a convolution runs ([`Geometry::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Winograd F(2x2, 3x3) ([`winograd`]).
    Winograd,
    /// The direct GEMM, with this tile (None: the model's plan).
    Direct(Option<ConvTile>),
}

/// The input gradient's dispatches: the phases that taps reach, their common number of splits,
/// and whether some pixels are reached by no tap (and only hold zeros).
struct InputPlan {
    phases: Vec<InputPhase>,
    splits: usize,
    skips_pixels: bool,
}

impl InputPlan {
    /// The model's tile for the first phase (the tuner's baseline for the whole gradient).
    fn model_tile(&self, model: &TileModel) -> ConvTile {
        self.phases
            .first()
            .map_or(ConvTile::T64x64, |ph| model.choose(ph.rows, ph.cols, 1))
    }

    /// Whether the phases run as one dispatch (conv.wgsl's MERGED): every one of the stride's
    /// phases (at least two) reduces taps outer on the same tile, so that the shader can
    /// derive each workgroup's phase from grid x, which interleaves them (column tile times the
    /// phases plus the phase, within one grid dimension).
    /// One after another, each phase's GEMM must fill the device on its own, with the short
    /// reductions of the lightest phases (a quarter of the taps of a 3x3 stride-2 kernel's
    /// heaviest) and a drain between phases; together the phases' workgroups share it.
    fn merges(&self, g: &Geometry, gpu: &Gpu) -> bool {
        let Some(first) = self.phases.first() else {
            return false;
        };
        let dims = first.engine.dims;
        self.phases.len() >= 2
            && self.phases.len() == g.stride * g.stride
            && self.phases.iter().all(|ph| {
                ph.engine.dims == dims
                    && ph.cols.div_ceil(dims.1) * self.phases.len() <= MAX_GRID
                    && ph.rows.div_ceil(dims.0) <= MAX_GRID
                    && g.input_taps_outer(gpu, ph)
            })
    }
}

impl Geometry {
    /// How one pass runs: the direct GEMM with `given` when the caller forces a tile; else with
    /// autotuning on (and the f32 engine, and no tile forced by `RESNET_WGPU_CONV_TILE`) the
    /// tuned algorithm and tile, tuning them now if this shape and pass are new (`model` gives
    /// the model's tile, `trial` runs the pass once as a candidate); else Winograd where the
    /// shape fits it and [`winograd::by_rule`] says so, and the model's plan otherwise.
    /// [`crate::ConvAlgo::Winograd`] runs Winograd wherever the shape fits it, untuned.
    fn route(
        &self,
        gpu: &Gpu,
        pass: ConvPass,
        given: Option<ConvTile>,
        model: impl FnOnce() -> ConvTile,
        trial: impl FnMut(Candidate) -> Result<()>,
    ) -> Result<Route> {
        if given.is_some() {
            return Ok(Route::Direct(given));
        }
        let fits = self.winograd_fits(gpu, pass);
        if !self.tunes(gpu) || (fits && gpu.conv_algo() == ConvAlgo::Winograd) {
            return Ok(self.untuned_route(gpu, fits));
        }
        let rule = fits.then(|| winograd::auto_rule(gpu, self));
        let tuned = tune::tuned(gpu, self.key(pass), model, rule, trial)?;
        Ok(self.tuned_route(gpu, &tuned))
    }

    /// The route of a pass as [`Geometry::route`] would take it, without tuning: a tuned
    /// shape's tuned route, else the rule's (for [`conv2d_winograd`]).
    pub(super) fn known_route(&self, gpu: &Gpu, pass: ConvPass) -> Route {
        let fits = self.winograd_fits(gpu, pass);
        match gpu.tuned_conv(&self.key(pass)) {
            Some(t) if self.tunes(gpu) && !(fits && gpu.conv_algo() == ConvAlgo::Winograd) => {
                self.tuned_route(gpu, &t)
            }
            _ => self.untuned_route(gpu, fits),
        }
    }

    /// Whether `pass` can run Winograd ([`winograd::fits`]).
    fn winograd_fits(&self, gpu: &Gpu, pass: ConvPass) -> bool {
        winograd::fits(gpu, self)
            && (pass != ConvPass::WeightGrad || winograd::weight_grad_fits(gpu, self))
    }

    /// Whether the passes are tuned: autotuning on, the f32 engine, no tile forced.
    fn tunes(&self, gpu: &Gpu) -> bool {
        gpu.conv_autotune() && f16_kernels(gpu).is_none() && forced_tile().is_none()
    }

    fn untuned_route(&self, gpu: &Gpu, fits: bool) -> Route {
        if fits && winograd::by_rule(gpu, self) {
            Route::Winograd
        } else {
            Route::Direct(None)
        }
    }

    fn tuned_route(&self, gpu: &Gpu, tuned: &TunedConv) -> Route {
        if tuned.winograd && gpu.conv_algo() == ConvAlgo::Auto {
            Route::Winograd
        } else {
            Route::Direct(Some(tuned.tile))
        }
    }

    fn key(&self, pass: ConvPass) -> ConvKey {
        ConvKey {
            pass,
            x: self.x,
            w: self.w,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Plan the input gradient: one GEMM per sub-pixel phase, tiles of `tile` unless the model
    /// chooses. Pixels h with (h + padding) % stride == a meet exactly the taps r with
    /// r % stride == a.
    fn input_plan(&self, gpu: &Gpu, model: &TileModel, tile: Option<ConvTile>) -> InputPlan {
        let [n, c, h, wd] = self.x;
        let [k, _, r, s] = self.w;
        let (stride, padding) = (self.stride, self.padding);
        // (first pixel, pixel count, tap count) of phase a along an axis.
        let phase = |a: usize, size: usize, taps: usize| {
            let first = (a + stride - padding % stride) % stride;
            let count = if first < size {
                (size - first).div_ceil(stride)
            } else {
                0
            };
            let ntaps = if a < taps {
                (taps - a).div_ceil(stride)
            } else {
                0
            };
            (first, count, ntaps)
        };
        let mut phases = Vec::new();
        let mut skips_pixels = false;
        for a in 0..stride {
            for b in 0..stride {
                let ((h0, hc, nr), (w0, wc, ns)) = (phase(a, h, r), phase(b, wd, s));
                if hc == 0 || wc == 0 {
                    continue;
                }
                if nr * ns == 0 {
                    skips_pixels = true;
                    continue;
                }
                let cols = n * hc * wc;
                let engine =
                    Engine::for_gpu(gpu, || tile.unwrap_or_else(|| model.choose(c, cols, 1)));
                phases.push(InputPhase {
                    r0: a,
                    s0: b,
                    nr,
                    ns,
                    h0,
                    w0,
                    hc,
                    wc,
                    rows: c,
                    cols,
                    engine,
                    chunk: k * nr * ns,
                });
            }
        }
        // The phases write one gx (or one set of partials), so they run one after the other:
        // each must fill the GPU on its own, splitting its reduction when its tiles are too few.
        // They share one number of splits, that of the phase that wants most, so that one
        // reduce sums all pixels; a phase with fewer taps gets shorter chunks (or empty ones,
        // which write zeros).
        let wanted = phases
            .iter()
            .map(|ph| {
                let (bm, bn, _) = ph.engine.dims;
                model.fill_splits(ph.rows.div_ceil(bm) * ph.cols.div_ceil(bn), ph.chunk)
            })
            .max()
            .unwrap_or(1);
        let splits = wanted.min((SPLIT_MAX_PARTIAL / (n * c * h * wd)).max(1));
        if splits > 1 {
            for ph in &mut phases {
                ph.chunk = ph.chunk.div_ceil(splits).next_multiple_of(ph.engine.dims.2);
            }
        }
        InputPlan {
            phases,
            splits,
            skips_pixels,
        }
    }
}

/// Grid for a GEMM of `m` rows and `n` columns in tiles of `dims`: column tiles over x (and z
/// past 65,535), row tiles over y.
fn gemm_grid(
    op: &'static str,
    m: usize,
    n: usize,
    dims: (usize, usize, usize),
) -> Result<[u32; 3]> {
    let (tile_m, tile_n, _) = dims;
    let col_tiles = n.div_ceil(tile_n);
    let row_tiles = m.div_ceil(tile_m);
    let x = col_tiles.min(MAX_GRID);
    let z = col_tiles.div_ceil(x);
    if row_tiles > MAX_GRID || z > MAX_GRID {
        return Err(Error::shape(
            op,
            format!("a {m} x {n} GEMM needs too many workgroups"),
        ));
    }
    Ok([x as u32, row_tiles as u32, z as u32])
}

fn check_same_gpu(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    a.expect_same_gpu(op, b)
}

/// `y = conv2d(x, w) + b`: x `[N, C, H, W]`, w `[K, C, R, S]`, optional b `[K]`, square
/// `stride` and zero `padding` on every side. Returns y `[N, K, OH, OW]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_tiled(x, w, b, stride, padding, None)
}

/// [`conv2d`] with a given tile instead of [`TileModel::choose`]'s (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_tiled(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    forward(x, w, b, stride, padding, tile).map(|(y, _)| y)
}

/// [`conv2d_tiled`], also returning the weights' taps-outer copy when it made one
/// ([`Geometry::weights_copy`]; of the window's weights when it ran a window of taps), which the
/// input gradient can read instead of copying again.
fn forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "conv2d";
    let g = forward_geometry(OP, x, w, stride, padding)?;
    if let Some(win) = g.tap_window() {
        let w = g.crop_taps(OP, w, win)?;
        return forward(x, &w, b, stride, win.padding, tile);
    }
    if let Some(b) = b {
        b.expect_f32_rank(OP, "bias b [K]", 1)?;
        check_same_gpu(OP, x, b)?;
        if b.shape()[0] != g.w[0] {
            return Err(Error::shape(
                OP,
                format!(
                    "bias has {} elements but the weights {:?} have {} output channels",
                    b.shape()[0],
                    g.w,
                    g.w[0]
                ),
            ));
        }
    }
    let gpu = x.gpu();
    let model = TileModel::for_gpu(gpu);
    let tile = match g.route(
        gpu,
        ConvPass::Forward,
        tile,
        || g.forward_tile(&model),
        |c| match c {
            Candidate::Tile(t) => conv2d_tiled(x, w, b, stride, padding, Some(t)).map(drop),
            Candidate::Winograd => {
                winograd::forward(OP, &g, x, w, winograd::Epilogue::Bias(b)).map(drop)
            }
        },
    )? {
        Route::Winograd => {
            let epilogue = winograd::Epilogue::Bias(b);
            return Ok((winograd::forward(OP, &g, x, w, epilogue)?, None));
        }
        Route::Direct(tile) => tile,
    };
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, OP)?;
    let (m, n) = g.forward_gemm();
    let engine = Engine::for_gpu(gpu, || tile.unwrap_or_else(|| g.forward_tile(&model)));
    let (chunk, splits) = g.forward_splits(&model, engine.dims);
    let taps_outer = g.forward_taps_outer(gpu, engine.dims);
    let copy = g.weights_copy(OP, w, taps_outer)?;
    let wk = copy.as_ref().unwrap_or(w);
    let bias = b.map_or(w.buffer(), |b| b.buffer());
    if splits == 1 {
        let grid = gemm_grid(OP, m, n, engine.dims)?;
        engine.dispatch(
            gpu,
            &engine.kernels.forward,
            &g.gemm_constants(taps_outer),
            &g.params(b.is_some(), 0, 1),
            &[x.buffer(), wk.buffer(), bias, y.buffer()],
            w.buffer(),
            grid,
        )?;
    } else {
        let part = forward_partials(OP, &g, &engine, x, wk, taps_outer, chunk, splits)?;
        gpu.dispatch(
            &FORWARD_REDUCE,
            &g.params(b.is_some(), chunk, splits),
            &[part.buffer(), bias, y.buffer()],
            crate::gpu::grid_for_elements(y.numel()),
        )?;
    }
    Ok((y, copy))
}

/// The validated geometry of a forward convolution of x `[N, C, H, W]` with w `[K, C, R, S]`.
fn forward_geometry(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Geometry> {
    let xs = x.nchw(op, "input x [N, C, H, W]")?;
    let ws = w.nchw(op, "weight w [K, C, R, S]")?;
    check_same_gpu(op, x, w)?;
    Geometry::new(op, xs, ws, stride, padding)
}

/// A split-K forward pass's first dispatch (the output tiles alone are too few to fill the
/// GPU): split z of the reduction, over grid z, writes its partial output at z * len(y).
/// `w` is in the GEMM's order ([`Geometry::weights_copy`]). Returns the partials
/// `[splits, len(y)]` for a reduce kernel to sum.
#[allow(clippy::too_many_arguments)]
fn forward_partials(
    op: &'static str,
    g: &Geometry,
    engine: &Engine,
    x: &Tensor,
    w: &Tensor,
    taps_outer: bool,
    chunk: usize,
    splits: usize,
) -> Result<Tensor> {
    let gpu = x.gpu();
    let (m, n) = g.forward_gemm();
    let (tile_m, tile_n, _) = engine.dims;
    let grid = [
        n.div_ceil(tile_n) as u32,
        m.div_ceil(tile_m) as u32,
        splits as u32,
    ];
    let part = Tensor::uninit(gpu, &[splits, m * n], DType::F32, op)?;
    engine.dispatch(
        gpu,
        &engine.kernels.forward,
        &g.gemm_constants(taps_outer),
        &g.params(false, chunk, splits),
        &[x.buffer(), w.buffer(), w.buffer(), part.buffer()],
        w.buffer(),
        grid,
    )?;
    Ok(part)
}

/// The eval-mode batch norm (PyTorch's `BatchNorm2d.eval()`) that [`conv2d_bn_eval`] applies
/// to a convolution's output: per-output-channel tensors of shape `[K]` and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct EvalBatchNorm<'a> {
    /// Scale (`weight` in PyTorch).
    pub gamma: &'a Tensor,
    /// Shift (`bias` in PyTorch).
    pub beta: &'a Tensor,
    /// Running mean.
    pub running_mean: &'a Tensor,
    /// Running variance.
    pub running_var: &'a Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Inference's conv block in one kernel: `batch_norm_eval(conv2d(x, w))`, plus `residual` when
/// given, then a ReLU when `relu`. x `[N, C, H, W]`, w `[K, C, R, S]` (no conv bias: fold one
/// into `running_mean` as `mean - b`), residual of the output's shape `[N, K, OH, OW]`.
///
/// The same arithmetic, in the same order, as [`conv2d`], [`crate::ops::batch_norm_eval`] and
/// [`crate::ops::add_relu`] (or [`crate::ops::add`]) run one after another
/// ([`conv2d_bn_eval_unfused`]), but the convolution's output is normalised in registers
/// instead of making three more passes over memory. Needs 8 storage buffers per shader stage
/// (WebGPU's default limit; 9 with the f16 engine); on a device with fewer it runs the separate
/// kernels. Where the convolution runs Winograd ([`crate::ConvAlgo`]), its output transform
/// applies the batch norm (7 storage buffers). Records no gradient: for training use the
/// [`Var`] ops.
pub fn conv2d_bn_eval(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    conv2d_bn_eval_tiled(x, w, stride, padding, bn, residual, relu, None)
}

/// [`conv2d_bn_eval`] with a given tile instead of [`TileModel::choose`]'s (for tests).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bn_eval_tiled(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_bn_eval";
    let g = forward_geometry(OP, x, w, stride, padding)?;
    if let Some(win) = g.tap_window() {
        let w = g.crop_taps(OP, w, win)?;
        return conv2d_bn_eval_tiled(x, &w, stride, win.padding, bn, residual, relu, tile);
    }
    crate::ops::batchnorm::expect_channel_vectors(
        OP,
        ("weights", w),
        g.w[0],
        &[
            ("batch-norm gamma", bn.gamma),
            ("batch-norm beta", bn.beta),
            ("batch-norm running_mean", bn.running_mean),
            ("batch-norm running_var", bn.running_var),
        ],
    )?;
    if let Some(r) = residual {
        r.expect_f32_shape(OP, "residual", "the output's", &g.y_shape())?;
        check_same_gpu(OP, x, r)?;
    }
    let gpu = x.gpu();
    let model = TileModel::for_gpu(gpu);
    // The plain forward's route: the same GEMMs, tuned once for both.
    let route = g.route(
        gpu,
        ConvPass::Forward,
        tile,
        || g.forward_tile(&model),
        |c| match c {
            Candidate::Tile(t) => conv2d_tiled(x, w, None, stride, padding, Some(t)).map(drop),
            Candidate::Winograd => {
                winograd::forward(OP, &g, x, w, winograd::Epilogue::Bias(None)).map(drop)
            }
        },
    )?;
    let tile = match route {
        // Winograd's output transform applies the batch norm (7 storage buffers).
        Route::Winograd if gpu.limits().max_storage_buffers_per_shader_stage >= 7 => {
            let epilogue = winograd::Epilogue::BatchNorm { bn, residual, relu };
            return winograd::forward(OP, &g, x, w, epilogue);
        }
        Route::Winograd => None,
        Route::Direct(tile) => tile,
    };
    let engine = Engine::for_gpu(gpu, || tile.unwrap_or_else(|| g.forward_tile(&model)));
    if gpu.limits().max_storage_buffers_per_shader_stage < 8 + engine.f16 as u32 {
        return conv2d_bn_eval_unfused(x, w, stride, padding, bn, residual, relu);
    }
    let y = Tensor::uninit(gpu, &g.y_shape(), DType::F32, OP)?;
    let (chunk, splits) = g.forward_splits(&model, engine.dims);
    let taps_outer = g.forward_taps_outer(gpu, engine.dims);
    let copy = g.weights_copy(OP, w, taps_outer)?;
    let wk = copy.as_ref().unwrap_or(w);
    let mut params = g.params(false, chunk, splits);
    params.epilogue =
        if relu { EPI_RELU } else { 0 } | if residual.is_some() { EPI_RESIDUAL } else { 0 };
    params.eps = bn.eps;
    let bn_bound = [
        (6, bn.gamma.buffer()),
        (7, bn.beta.buffer()),
        (8, bn.running_mean.buffer()),
        (9, bn.running_var.buffer()),
        (
            10,
            residual.map_or(bn.running_mean.buffer(), |r| r.buffer()),
        ),
    ];
    if splits == 1 {
        let (m, n) = g.forward_gemm();
        let mut bound = vec![(1, x.buffer()), (2, wk.buffer()), (4, y.buffer())];
        bound.extend(bn_bound);
        engine.dispatch_bound(
            gpu,
            &engine.kernels.forward_bn,
            &g.gemm_constants(taps_outer),
            &params,
            bound,
            w.buffer(),
            gemm_grid(OP, m, n, engine.dims)?,
        )?;
    } else {
        let part = forward_partials(OP, &g, &engine, x, wk, taps_outer, chunk, splits)?;
        let mut bound = vec![(1, part.buffer()), (4, y.buffer())];
        bound.extend(bn_bound);
        gpu.dispatch_bound(
            &FORWARD_REDUCE_BN,
            &[],
            &params,
            &bound,
            crate::gpu::grid_for_elements(y.numel()),
        )?;
    }
    Ok(y)
}

/// [`conv2d_bn_eval`] as separate kernels: [`conv2d`], [`crate::ops::batch_norm_eval`] (with
/// the ReLU when there is no residual) and [`crate::ops::add_relu`] or [`crate::ops::add`]. The
/// fallback on devices with too few storage buffers, and the fused kernel's reference in tests.
#[doc(hidden)]
pub fn conv2d_bn_eval_unfused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &EvalBatchNorm<'_>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let y = conv2d(x, w, None, stride, padding)?;
    let y = crate::ops::batch_norm_eval(
        &y,
        bn.gamma,
        bn.beta,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        relu && residual.is_none(),
    )?;
    match residual {
        None => Ok(y),
        Some(r) if relu => crate::ops::add_relu(&y, r),
        Some(r) => crate::ops::add(&y, r),
    }
}

/// Gradient of [`conv2d`] with respect to its input: gy `[N, K, OH, OW]`, w `[K, C, R, S]`, the
/// input's shape `x_shape`. Returns gx of shape `x_shape`.
pub fn conv2d_backward_input(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_backward_input_tiled(gy, w, x_shape, stride, padding, None)
}

/// [`conv2d_backward_input`] with a given tile (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_backward_input_tiled(
    gy: &Tensor,
    w: &Tensor,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    backward_input(gy, w, None, x_shape, stride, padding, tile, None)
}

/// [`conv2d_backward_input_tiled`] with gy's f16 operand scale and the weights' taps-outer copy
/// (`copied`, [`forward`]'s) when the caller has them.
#[allow(clippy::too_many_arguments)]
fn backward_input(
    gy: &Tensor,
    w: &Tensor,
    copied: Option<&Tensor>,
    x_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
    scale: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_input";
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    let ws = w.nchw(OP, "weight w [K, C, R, S]")?;
    check_same_gpu(OP, gy, w)?;
    let g = Geometry::new(OP, x_shape, ws, stride, padding)?;
    g.expect_y_shape(OP, gys)?;
    if let Some(win) = g.tap_window() {
        let w = g.crop_taps(OP, w, win)?;
        return backward_input(gy, &w, copied, x_shape, stride, win.padding, tile, scale);
    }
    let gpu = gy.gpu();
    let model = TileModel::for_gpu(gpu);
    // Tuned, one tile serves every phase; the model's is that of the first phase.
    let tile = match g.route(
        gpu,
        ConvPass::InputGrad,
        tile,
        || g.input_plan(gpu, &model, None).model_tile(&model),
        |c| match c {
            Candidate::Tile(t) => {
                backward_input(gy, w, copied, x_shape, stride, padding, Some(t), scale).map(drop)
            }
            Candidate::Winograd => winograd::backward_input(OP, &g, gy, w, scale).map(drop),
        },
    )? {
        Route::Winograd => return winograd::backward_input(OP, &g, gy, w, scale),
        Route::Direct(tile) => tile,
    };
    let gx = Tensor::uninit(gpu, &x_shape, DType::F32, OP)?;
    // The f16 engine scales gy (operand B) by a power of two that keeps it clear of f16's
    // subnormals; the f32 engine binds no scale.
    let f16 = f16_kernels(gpu).is_some();
    let scale = gy_scale(f16, gy, scale)?;
    let scale_buffer = scale.as_ref().map_or(w.buffer(), |t| t.buffer());
    let plan = g.input_plan(gpu, &model, tile);
    let len = x_shape.iter().product::<usize>();
    // With split-K the phases write partial results, which a reduce kernel sums into gx.
    let part = match plan.splits {
        1 => None,
        splits => Some(Tensor::uninit(gpu, &[splits, len], DType::F32, OP)?),
    };
    let out = part.as_ref().unwrap_or(&gx);
    // A phase that no tap reaches (a kernel smaller than the stride, as in the 1x1 stride-2
    // downsampling convs: three of four pixels) only has zeros to write: one clear does that
    // for all of them, instead of a GEMM dispatch each with an empty reduction.
    if plan.skips_pixels {
        gpu.clear(out.buffer());
    }
    let [k, c, r, s] = ws;
    // The phases that reduce taps outer read the weights' [K, R, S, C] copy: the forward's
    // when the caller has it, else one made here.
    let taps = plan.phases.iter().any(|ph| g.input_taps_outer(gpu, ph));
    let copy = match copied {
        Some(t) if taps && t.shape() == [k, r, s, c] => Some(t.clone()),
        _ => g.weights_copy(OP, w, taps)?,
    };
    let wk = copy.as_ref().unwrap_or(w);
    let mut p = g.params(false, 0, plan.splits);
    p.scaled = if f16 { 2 } else { 0 };
    p.reduce_len = len as u32;
    if plan.merges(&g, gpu) {
        // One dispatch for all phases, grid x = column tile * phases + phase, z = split: the
        // shader derives each workgroup's phase, its taps and pixels (NR and NS go unused).
        let ph = &plan.phases[0];
        let (tile_m, tile_n, _) = ph.engine.dims;
        let cols = plan.phases.iter().map(|ph| ph.cols).max().unwrap_or(0);
        let grid = [
            (cols.div_ceil(tile_n) * plan.phases.len()) as u32,
            ph.rows.div_ceil(tile_m) as u32,
            plan.splits as u32,
        ];
        let [kh, kw, order] = g.gemm_constants(true);
        let constants = [kh, kw, ("NR", 1.0), ("NS", 1.0), order, ("MERGED", 1.0)];
        ph.engine.dispatch(
            gpu,
            &ph.engine.kernels.backward_input,
            &constants,
            &p,
            &[gy.buffer(), wk.buffer(), out.buffer()],
            scale_buffer,
            grid,
        )?;
    } else {
        for ph in &plan.phases {
            let taps = g.input_taps_outer(gpu, ph);
            p.chunk = ph.chunk as u32;
            (p.r0, p.s0, p.nr, p.ns) = (ph.r0 as u32, ph.s0 as u32, ph.nr as u32, ph.ns as u32);
            (p.h0, p.w0, p.hc, p.wc) = (ph.h0 as u32, ph.w0 as u32, ph.hc as u32, ph.wc as u32);
            let mut grid = gemm_grid(OP, ph.rows, ph.cols, ph.engine.dims)?;
            if plan.splits > 1 {
                // Split only with few tiles: the column tiles fit x alone, and z is the split.
                grid[2] = plan.splits as u32;
            }
            let [kh, kw, order] = g.gemm_constants(taps);
            let constants = [kh, kw, ("NR", ph.nr as f64), ("NS", ph.ns as f64), order];
            ph.engine.dispatch(
                gpu,
                &ph.engine.kernels.backward_input,
                &constants,
                &p,
                &[
                    gy.buffer(),
                    if taps { wk } else { w }.buffer(),
                    out.buffer(),
                ],
                scale_buffer,
                grid,
            )?;
        }
    }
    if let Some(part) = &part {
        let mut p = g.params(false, 0, plan.splits);
        p.reduce_len = len as u32;
        reduce_splits(gpu, &p, part, &gx, len)?;
    }
    Ok(gx)
}

/// Number of split-K chunks [`conv2d`] uses for these shapes on `gpu` (1: no split; for tests
/// and benchmarks).
pub fn conv2d_forward_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    let model = TileModel::for_gpu(gpu);
    let engine = Engine::for_gpu(gpu, || g.forward_tile(&model));
    Ok(g.forward_splits(&model, engine.dims).1)
}

/// Which of the three conv passes reduce taps outer ([`crate::ConvOrder::Rsc`]) with these
/// shapes on `gpu`, with `tile` or the plan's: [forward (and [`conv2d_bn_eval`]), input gradient
/// (any of its phases), weight gradient] (for tests and benchmarks). The first two then read a
/// `[K, R, S, C]` copy of the weights, one dispatch more each, unless the kernel (or the window
/// of taps they run, [`conv2d_taps`]) is 1x1; with a larger kernel they reduce taps outer only
/// when their GEMM has at least 1,024 columns (output pixels of the batch, or of an input-
/// gradient phase), which amortize the copy.
pub fn conv2d_taps_outer(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<[bool; 3]> {
    let mut g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    if let Some(win) = g.tap_window() {
        let [k, c, _, _] = w_shape;
        let window = [k, c, win.taps.0, win.taps.1];
        g = Geometry::new("conv2d", x_shape, window, stride, win.padding)?;
    }
    let c = g.w[1];
    let model = TileModel::for_gpu(gpu);
    let forward = Engine::for_gpu(gpu, || tile.unwrap_or_else(|| g.forward_tile(&model)));
    let input = g
        .input_plan(gpu, &model, tile)
        .phases
        .iter()
        .any(|ph| g.input_taps_outer(gpu, ph));
    let weight = Engine::for_gpu(gpu, || tile.unwrap_or_else(|| g.weight_tile(&model)));
    Ok([
        g.forward_taps_outer(gpu, forward.dims),
        input,
        taps_outer(gpu, c, weight.dims.1),
    ])
}

/// Number of split-K chunks [`conv2d_backward_weight`] uses for these shapes on `gpu` (for
/// tests and benchmarks).
pub fn conv2d_weight_grad_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d_backward_weight", x_shape, w_shape, stride, padding)?;
    let model = TileModel::for_gpu(gpu);
    let engine = Engine::for_gpu(gpu, || g.weight_tile(&model));
    Ok(g.weight_splits(&model, engine.dims).1)
}

/// Number of split-K chunks [`conv2d_backward_input`] uses for these shapes on `gpu` (1: no
/// split; for tests and benchmarks).
pub fn conv2d_input_grad_splits(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let g = Geometry::new("conv2d_backward_input", x_shape, w_shape, stride, padding)?;
    Ok(g.input_plan(gpu, &TileModel::for_gpu(gpu), None).splits)
}

/// GEMM dispatches of [`conv2d_backward_input`]'s direct plan for these shapes on `gpu`, with
/// `tile` or the plan's: one per sub-pixel phase that taps reach, or one for all of them where
/// they merge (every phase reducing taps outer; for tests and benchmarks).
pub fn conv2d_input_grad_gemms(
    gpu: &Gpu,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<usize> {
    const OP: &str = "conv2d_backward_input";
    let mut g = Geometry::new(OP, x_shape, w_shape, stride, padding)?;
    if let Some(win) = g.tap_window() {
        let [k, c, _, _] = w_shape;
        g = Geometry::new(
            OP,
            x_shape,
            [k, c, win.taps.0, win.taps.1],
            stride,
            win.padding,
        )?;
    }
    let plan = g.input_plan(gpu, &TileModel::for_gpu(gpu), tile);
    Ok(if plan.merges(&g, gpu) {
        1
    } else {
        plan.phases.len()
    })
}

/// Gradient of [`conv2d`] with respect to its weights: x `[N, C, H, W]`, gy `[N, K, OH, OW]`, the
/// weights' shape `w_shape`. Returns gw of shape `w_shape`.
pub fn conv2d_backward_weight(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_backward_weight_tiled(x, gy, w_shape, stride, padding, None)
}

/// [`conv2d_backward_weight`] with a given tile (for tests and tuning).
#[doc(hidden)]
pub fn conv2d_backward_weight_tiled(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
) -> Result<Tensor> {
    backward_weight(x, gy, w_shape, stride, padding, tile, None)
}

/// [`conv2d_backward_weight_tiled`] with gy's f16 operand scale when the caller has it.
fn backward_weight(
    x: &Tensor,
    gy: &Tensor,
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
    tile: Option<ConvTile>,
    scale: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "conv2d_backward_weight";
    let xs = x.nchw(OP, "input x [N, C, H, W]")?;
    let gys = gy.nchw(OP, "output gradient gy [N, K, OH, OW]")?;
    check_same_gpu(OP, x, gy)?;
    let g = Geometry::new(OP, xs, w_shape, stride, padding)?;
    g.expect_y_shape(OP, gys)?;
    if let Some(win) = g.tap_window() {
        let [k, c, _, _] = w_shape;
        let window = [k, c, win.taps.0, win.taps.1];
        let gw = backward_weight(x, gy, window, stride, win.padding, tile, scale)?;
        return g.expand_taps(OP, &gw, win);
    }
    let [k, c, r, s] = w_shape;
    let crs = c * r * s;
    let gpu = x.gpu();
    let model = TileModel::for_gpu(gpu);
    let tile = match g.route(
        gpu,
        ConvPass::WeightGrad,
        tile,
        || g.weight_tile(&model),
        |c| match c {
            Candidate::Tile(t) => {
                backward_weight(x, gy, w_shape, stride, padding, Some(t), scale).map(drop)
            }
            Candidate::Winograd => winograd::backward_weight(OP, &g, x, gy, scale).map(drop),
        },
    )? {
        Route::Winograd => return winograd::backward_weight(OP, &g, x, gy, scale),
        Route::Direct(tile) => tile,
    };
    let engine = Engine::for_gpu(gpu, || tile.unwrap_or_else(|| g.weight_tile(&model)));
    let (chunk, splits) = g.weight_splits(&model, engine.dims);
    let (tile_m, tile_n, _) = engine.dims;
    // Taps outer when each column tile lies in one tap.
    let taps_outer = taps_outer(gpu, c, tile_n);
    let col_tiles = crs.div_ceil(tile_n);
    let row_tiles = k.div_ceil(tile_m);
    if col_tiles > MAX_GRID || row_tiles > MAX_GRID {
        return Err(Error::shape(
            OP,
            format!("weights {w_shape:?} need too many workgroups"),
        ));
    }
    let grid = [col_tiles as u32, row_tiles as u32, splits as u32];
    let mut params = g.params(false, chunk, splits);
    params.reduce_len = (k * crs) as u32;
    // The f16 engine scales gy (operand A) by a power of two that keeps it clear of f16's
    // subnormals.
    let scale = gy_scale(engine.f16, gy, scale)?;
    if engine.f16 {
        params.scaled = 1;
    }
    let scale_buffer = scale.as_ref().map_or(x.buffer(), |t| t.buffer());
    let gw = Tensor::uninit(gpu, &w_shape, DType::F32, OP)?;
    let part = match splits {
        1 => None,
        _ => Some(Tensor::uninit(gpu, &[splits, k * crs], DType::F32, OP)?),
    };
    engine.dispatch(
        gpu,
        &engine.kernels.backward_weight,
        &g.gemm_constants(taps_outer),
        &params,
        &[
            x.buffer(),
            gy.buffer(),
            part.as_ref().unwrap_or(&gw).buffer(),
        ],
        scale_buffer,
        grid,
    )?;
    if let Some(part) = &part {
        reduce_splits(gpu, &params, part, &gw, k * crs)?;
    }
    Ok(gw)
}

impl Var {
    /// `conv2d(self, w) + b` (see [`conv2d`]), recording its backward. Only what the backward
    /// needs is kept: x when w is tracked (for gw), w when x is tracked (for gx), with the
    /// forward's taps-outer copy of w when it made one ([`crate::ConvOrder::Rsc`]), which the
    /// input gradient reads instead of copying w again. Gradients of untracked inputs (the
    /// network's input, frozen weights) are not computed.
    pub fn conv2d(&self, w: &Var, b: Option<&Var>, stride: usize, padding: usize) -> Result<Var> {
        let (y, copied) = forward(
            self.tensor(),
            w.tensor(),
            b.map(|b| b.tensor()),
            stride,
            padding,
            None,
        )?;
        let x_shape = self.tensor().nchw("conv2d", "x")?;
        let w_shape = w.tensor().nchw("conv2d", "w")?;
        let need_gx = self.requires_grad();
        let need_gw = w.requires_grad();
        let need_gb = b.is_some_and(|b| b.requires_grad());
        let saved_x = need_gw.then(|| self.tensor().clone());
        // With the forward's taps-outer copy of w, if it made one, for the input gradient to
        // read instead of copying again.
        let saved_w = need_gx.then(|| (w.tensor().clone(), copied));
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        Var::record("conv2d", &inputs, y, move |gy| {
            let gy = &gy;
            // Both passes of the f16 engine scale gy by the same power of two: computed once.
            let both = saved_w.is_some() && saved_x.is_some();
            let scale = gy_scale(both && f16_kernels(gy.gpu()).is_some(), gy, None)?;
            let gx = match &saved_w {
                Some((w, copied)) => Some(backward_input(
                    gy,
                    w,
                    copied.as_ref(),
                    x_shape,
                    stride,
                    padding,
                    None,
                    scale.as_ref(),
                )?),
                None => None,
            };
            let gw = match &saved_x {
                Some(x) => Some(backward_weight(
                    x,
                    gy,
                    w_shape,
                    stride,
                    padding,
                    None,
                    scale.as_ref(),
                )?),
                None => None,
            };
            let mut grads = vec![gx, gw];
            if has_bias {
                grads.push(if need_gb {
                    Some(crate::ops::sum_channels(gy)?)
                } else {
                    None
                });
            }
            Ok(grads)
        })
    }
}
