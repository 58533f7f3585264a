//! The conv kernels' compiled variants: the uniform params, the tile declarations prepended to
//! `shaders/conv.wgsl` for each f32 tile and f16 fragment configuration, and the multiply
//! engine ([`Engine`]) that dispatches a GEMM of one of them.

use super::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Params {
    /// The input gradient's phase (conv.wgsl's `Phase`, a struct there, hence first: a uniform's
    /// struct members start at multiples of 16 bytes), or the tap window of the weights' crop
    /// and expansion.
    pub(super) r0: u32,
    pub(super) s0: u32,
    pub(super) nr: u32,
    pub(super) ns: u32,
    pub(super) h0: u32,
    pub(super) w0: u32,
    pub(super) hc: u32,
    pub(super) wc: u32,
    pub(super) batch: u32,
    pub(super) in_c: u32,
    pub(super) in_h: u32,
    pub(super) in_w: u32,
    pub(super) out_c: u32,
    pub(super) out_h: u32,
    pub(super) out_w: u32,
    pub(super) kh: u32,
    pub(super) kw: u32,
    pub(super) stride: u32,
    pub(super) pad: u32,
    pub(super) has_bias: u32,
    pub(super) chunk: u32,
    pub(super) splits: u32,
    /// The f16 engine's scaled operand (0: none, 1: A, 2: B); see `shaders/conv_mma.wgsl`.
    pub(super) scaled: u32,
    /// The split-K reduction's epilogue flag ([`EPI_ACCUMULATE`]).
    pub(super) epilogue: u32,
    /// conv_forward_bn's batch-norm epsilon.
    pub(super) eps: f32,
    /// conv_reduce_splits: the length of one partial result (gw's or gx's).
    pub(super) reduce_len: u32,
    /// GEMMs batched over grid z (0 or 1: one), for [`winograd`].
    pub(super) batched: u32,
    /// conv_backward_weight: the first partial result the dispatch writes.
    pub(super) z_base: u32,
}

/// conv_reduce_splits' epilogue flag: add to what the output holds instead of writing over it
/// ([`conv2d_backward_input_add`](super::conv2d_backward_input_add); the input gradient's GEMMs
/// and Winograd's output transform take the override constant `ACCUMULATE` instead).
pub(super) const EPI_ACCUMULATE: u32 = 4;

/// The override constants of inference's batch-norm epilogues (conv.wgsl's conv_forward_bn and
/// conv_forward_reduce_bn, winograd.wgsl's output transforms): the residual's add, the ReLU.
pub(super) fn bn_epilogue(residual: bool, relu: bool) -> [(&'static str, f64); 2] {
    [flag("RESIDUAL", residual), flag("RELU", relu)]
}

/// The bindings of an eval batch norm's epilogue in conv.wgsl's `conv_forward_bn` and
/// gemm_lanes.wgsl's `gemm_lanes_planes_bn`: 6-9 = gamma, beta, running mean, running var,
/// 10 = the residual (any buffer but the output without one).
pub(super) fn bn_bindings<'a>(
    bn: &'a EvalBatchNorm<'_>,
    residual: Option<&'a Tensor>,
) -> [(u32, &'a wgpu::Buffer); 5] {
    [
        (6, bn.gamma.buffer()),
        (7, bn.beta.buffer()),
        (8, bn.running_mean.buffer()),
        (9, bn.running_var.buffer()),
        (
            10,
            residual.map_or(bn.running_mean.buffer(), |r| r.buffer()),
        ),
    ]
}

/// The conv kernels of one tile variant.
pub(super) struct Kernels {
    pub(super) forward: Kernel,
    /// The forward pass with the eval-mode batch-norm epilogue ([`conv2d_bn_eval`]).
    pub(super) forward_bn: Kernel,
    pub(super) backward_input: Kernel,
    pub(super) backward_weight: Kernel,
}

/// The declarations conv.wgsl's tile variants start with: a TM x TN micro-tile per thread,
/// reduction chunks of BK, split-K planned in chunks of PLAN_BK (the tile's [`ConvTile::dims`]),
/// TX threads along the tile's columns (256 / TX along its rows), STAGES copies of the
/// staged chunk in workgroup memory ([`ConvStaging`]), and whether a row of threads' subgroups
/// share their reads of A (SHARED_A, `shaders/conv_fma.wgsl`; see [`conv_shares_a`]).
macro_rules! tile_consts {
    ($tm:literal, $tn:literal, $bk:literal, $plan_bk:literal, $tx:literal, $stages:literal) => {
        tile_consts!($tm, $tn, $bk, $plan_bk, $tx, $stages, false)
    };
    (
        $tm:literal,
        $tn:literal,
        $bk:literal,
        $plan_bk:literal,
        $tx:literal,
        $stages:literal,
        $shared:literal
    ) => {
        concat!(
            "const TM: u32 = ",
            $tm,
            "u;\nconst TN: u32 = ",
            $tn,
            "u;\nconst BK: u32 = ",
            $bk,
            "u;\nconst PLAN_BK: u32 = ",
            $plan_bk,
            "u;\nconst TX: u32 = ",
            $tx,
            "u;\nconst STAGES: u32 = ",
            $stages,
            "u;\nconst SHARED_A: bool = ",
            $shared,
            ";\n"
        )
    };
}

/// A tile staging chunks of the depth split-K is planned in.
macro_rules! f32_tile {
    ($tm:literal, $tn:literal, $bk:literal, $tx:literal, $stages:literal) => {
        tile_consts!($tm, $tn, $bk, $bk, $tx, $stages)
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
            conv_kernels!(f32_tile!(8, 4, 8, 64, $stages), "conv_fma.wgsl"),
            conv_kernels!(f32_tile!(8, 8, 8, 32, $stages), "conv_fma.wgsl"),
        ]
    };
}

/// The f32 kernels of every tile of [`ConvTile::ALL`] for CPU adapters whose subgroups can
/// share A ([`conv_shares_a`]), with `$stages` copies of the staged chunk: the same tiles with tall
/// micro-tiles (16 x 4 for 128 x 128 and 64 x 256, 8 x 4 for 128 x 64, 64 x 128 and 32 x 256),
/// and 64 x 64 and 32 x 128 with the 4 x 4 of [`f32_tiles`], whose quads of A a subgroup reads
/// once for several reduction steps.
macro_rules! f32_lanes_tiles {
    ($stages:literal) => {
        [
            conv_kernels!(
                tile_consts!(4, 4, 16, 16, 16, $stages, true),
                "conv_fma.wgsl"
            ),
            conv_kernels!(
                tile_consts!(8, 4, 16, 16, 16, $stages, true),
                "conv_fma.wgsl"
            ),
            conv_kernels!(
                tile_consts!(8, 4, 16, 16, 32, $stages, true),
                "conv_fma.wgsl"
            ),
            conv_kernels!(
                tile_consts!(16, 4, 8, 8, 32, $stages, true),
                "conv_fma.wgsl"
            ),
            conv_kernels!(
                tile_consts!(4, 4, 16, 16, 32, $stages, true),
                "conv_fma.wgsl"
            ),
            conv_kernels!(tile_consts!(8, 4, 8, 8, 64, $stages, true), "conv_fma.wgsl"),
            conv_kernels!(
                tile_consts!(16, 4, 8, 8, 64, $stages, true),
                "conv_fma.wgsl"
            ),
        ]
    };
}

/// The f32 kernels staging each chunk once ([`ConvStaging::Single`])...
pub(super) const F32_SINGLE: [Kernels; ConvTile::ALL.len()] = f32_tiles!(1);
/// ...in two alternating copies ([`ConvStaging::Double`])...
pub(super) const F32_DOUBLE: [Kernels; ConvTile::ALL.len()] = f32_tiles!(2);
/// ...and once in chunks half as deep as the tile's ([`ConvStaging::Shallow`]), with split-K
/// still planned in the tile's chunks. Each thread stages at least one value of A and two of B
/// per chunk (conv.wgsl's LA and LB): 32 x 256 keeps its chunks of 8 (its A's 32 rows are one
/// value per thread at that depth), in one copy; 64 x 256 stages chunks of 4.
pub(super) const F32_SHALLOW: [Kernels; ConvTile::ALL.len()] = [
    conv_kernels!(tile_consts!(4, 4, 8, 16, 16, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(8, 4, 8, 16, 16, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(4, 8, 8, 16, 16, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(8, 8, 4, 8, 16, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(4, 4, 8, 16, 32, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(8, 4, 8, 8, 64, 1), "conv_fma.wgsl"),
    conv_kernels!(tile_consts!(8, 8, 4, 8, 32, 1), "conv_fma.wgsl"),
];

/// The tall tiles of [`conv_shares_a`] with one copy of the staged chunk, and with two.
pub(super) const F32_LANES_SINGLE: [Kernels; ConvTile::ALL.len()] = f32_lanes_tiles!(1);
pub(super) const F32_LANES_DOUBLE: [Kernels; ConvTile::ALL.len()] = f32_lanes_tiles!(2);

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

pub(super) const REDUCE_SPLITS: Kernel = conv_elementwise!("conv_reduce_splits");
pub(super) const REDUCE_SPLITS4: Kernel = conv_elementwise!("conv_reduce_splits4");

/// Sum the `splits` partial results `[splits, len]` in `part` into `out` (`p.reduce_len` =
/// `len`): four outputs per thread where `len` is a multiple of 4, else one (the same bits).
pub(super) fn reduce_splits(
    gpu: &Gpu,
    p: &Params,
    part: &Tensor,
    out: &Tensor,
    len: usize,
) -> Result<()> {
    let (kernel, _, grid) = scalar_or_vec4(len, &REDUCE_SPLITS, &REDUCE_SPLITS4);
    gpu.dispatch(kernel, p, &[part.buffer(), out.buffer()], grid)
}
pub(super) const FORWARD_REDUCE: Kernel = conv_elementwise!("conv_forward_reduce");
pub(super) const FORWARD_REDUCE_BN: Kernel = conv_elementwise!("conv_forward_reduce_bn");
pub(super) const TAPS_CROP: Kernel = conv_elementwise!("conv_taps_crop");
pub(super) const TAPS_EXPAND: Kernel = conv_elementwise!("conv_taps_expand");
pub(super) const WEIGHTS_RSC: Kernel = conv_elementwise!("conv_weights_rsc");

/// The declarations conv_mma.wgsl needs for F x F fragments (`$f`, the literal F) and subgroups
/// of `$sg`, on a tile of 256 threads with a `$tm` x `$tn` micro-tile each (16 thread columns,
/// so 16 `$tm` x 16 `$tn`), reduction chunks of `$bk`, each subgroup `$fm` x `$fn` fragments,
/// `$stages` copies of the staged chunk.
macro_rules! mma_variant {
    (
        $f:literal,
        $sg:literal,
        $tm:literal,
        $tn:literal,
        $bk:literal,
        $fm:literal,
        $fn:literal,
        $stages:literal
    ) => {
        concat!(
            "enable f16;\nenable wgpu_cooperative_matrix;\n",
            f32_tile!($tm, $tn, $bk, 16, $stages),
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
/// [`MmaTile::ALL`], with `$stages` copies of the staged chunk: 64 x 64 with chunks of 32 and
/// each subgroup one row of two fragments; 128 x 64 and 128 x 128 with chunks of 16 (the
/// staging code holds at most 8 values of a chunk per thread) and each subgroup 2 x 2 and 2 x 4
/// fragments, so that every fragment loaded from workgroup memory feeds two to four multiplies
/// and every value staged from memory more of them.
macro_rules! mma_tiles {
    ($f:literal, $sg:literal, $stages:literal) => {
        [
            conv_kernels!(
                mma_variant!($f, $sg, 4, 4, 32, 1, 2, $stages),
                "conv_mma.wgsl"
            ),
            conv_kernels!(
                mma_variant!($f, $sg, 8, 4, 16, 2, 2, $stages),
                "conv_mma.wgsl"
            ),
            conv_kernels!(
                mma_variant!($f, $sg, 8, 8, 16, 2, 4, $stages),
                "conv_mma.wgsl"
            ),
        ]
    };
}

/// f16 tensor-core kernels (`shaders/conv_mma.wgsl`): 16 x 16 fragments with subgroups of 32
/// (NVIDIA through Vulkan, Apple)...
pub(super) const MMA_F16_SG32: [Kernels; 3] = mma_tiles!(16, 32, 1);
/// ...and 8 x 8 fragments with subgroups of 8 (Mesa's lavapipe).
pub(super) const MMA_F8_SG8: [Kernels; 3] = mma_tiles!(8, 8, 1);
/// Both with two copies of the staged chunk ([`mma_stages`]).
pub(super) const MMA_F16_SG32_DOUBLE: [Kernels; 3] = mma_tiles!(16, 32, 2);
pub(super) const MMA_F8_SG8_DOUBLE: [Kernels; 3] = mma_tiles!(8, 8, 2);

/// The f16 kernels of one fragment configuration: one copy of the staged chunk, and two.
pub(super) struct MmaKernels {
    pub(super) single: &'static [Kernels; 3],
    pub(super) double: &'static [Kernels; 3],
}

/// The configurations the f16 engine has kernels for, in order of preference.
pub(super) const MMA_VARIANTS: [(MmaConfig, MmaKernels); 2] = [
    (
        MmaConfig {
            fragment: 16,
            subgroup: 32,
        },
        MmaKernels {
            single: &MMA_F16_SG32,
            double: &MMA_F16_SG32_DOUBLE,
        },
    ),
    (
        MmaConfig {
            fragment: 8,
            subgroup: 8,
        },
        MmaKernels {
            single: &MMA_F8_SG8,
            double: &MMA_F8_SG8_DOUBLE,
        },
    ),
];

/// A tile of the f16 engine. Its workgroup memory holds both operands in f16 and one row of
/// fragments of the f32 result at a time (`shaders/conv_mma.wgsl`): with 16 x 16 fragments
/// and one copy of the staged operands 13.75 KiB for 64 x 64 (chunks of 32), 12.5 for 128 x 64
/// and 18.5 for 128 x 128 (the result's 32 or 64 rows at a time took 26.5, 25.3 and 26.75
/// KiB); with two copies ([`mma_stages`]) 23.25, 20.75 and 28.75 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// `fragment` and `stages` copies of the staged operands (a_sh, b_sh and c_sh in
    /// conv_mma.wgsl, with their padded row strides).
    pub fn workgroup_bytes(self, fragment: usize, stages: usize) -> u64 {
        let (bm, bn, bk) = self.dims();
        (stages * (2 * bm * (bk + 8) + 2 * bk * (bn + 8)) + 4 * fragment * (bn + 4)) as u64
    }

    /// The f16 tile standing in for the f32 engine's `tile` in a plan: the same tile where the
    /// f16 engine has it, else 64 x 64 (for 64 x 128, 32 x 128, 32 x 256 and 64 x 256).
    pub fn for_f32_tile(tile: ConvTile) -> MmaTile {
        match tile {
            ConvTile::T128x128 => MmaTile::T128x128,
            ConvTile::T128x64 => MmaTile::T128x64,
            ConvTile::T64x64
            | ConvTile::T64x128
            | ConvTile::T32x128
            | ConvTile::T32x256
            | ConvTile::T64x256 => MmaTile::T64x64,
        }
    }

    pub(super) fn index(self) -> usize {
        MmaTile::ALL
            .iter()
            .position(|&t| t == self)
            .expect("a tile")
    }
}

/// The f16 kernels for `config`, if they exist.
pub(super) fn mma_kernels(config: MmaConfig) -> Option<&'static MmaKernels> {
    MMA_VARIANTS
        .iter()
        .find(|(c, _)| *c == config)
        .map(|(_, kernels)| kernels)
}

/// Copies of the staged chunk in `gpu`'s f16 kernels with `tile`: two under
/// [`Gpu::set_f16_staging`]`(`[`ConvStaging::Double`]`)` where the device's workgroup memory
/// holds them, else one (the default; see [`ConvStaging::f16_from_env`]). Public for the tests.
#[doc(hidden)]
pub fn mma_stages(gpu: &Gpu, tile: MmaTile) -> usize {
    let fragment = gpu.mma_config().map_or(16, |c| c.fragment as usize);
    super::tiles::stages(gpu, gpu.f16_staging(), tile.workgroup_bytes(fragment, 2))
}

/// The configurations the f16 engine has kernels for ([`MmaConfig::supported`]).
pub(crate) fn mma_configs() -> impl Iterator<Item = MmaConfig> {
    MMA_VARIANTS.iter().map(|(c, _)| *c)
}

/// Whether `gpu`'s f32 conv GEMMs run the tiles whose subgroups share their reads of A
/// (`F32_LANES_*`, conv_fma.wgsl's SHARED_A): on a CPU adapter's plan, where every read of
/// workgroup memory is a loop over the SIMD lanes, with subgroups the reductions use
/// ([`Gpu::subgroup_lanes`]: runs of consecutive threads, verified on the device) of at least 4
/// lanes (the quads of A of a 16 x 4 micro-tile) and at most 16 (so that a row of threads of
/// these tiles, 16 or more, holds whole subgroups). Not under [`ConvStaging::Shallow`] (for
/// browsers, which have no subgroups), whose tiles are the usual ones. The same bits as
/// without.
#[doc(hidden)]
pub fn conv_shares_a(gpu: &Gpu) -> bool {
    gpu.plan_for() == crate::PlanFor::Cpu
        && gpu.conv_staging() != ConvStaging::Shallow
        && gpu.subgroup_lanes().is_some_and(|n| n >= 4)
        && (1..=16).contains(&gpu.subgroup_max_size())
}

/// The multiply engine of one conv dispatch: its kernels and tile.
#[derive(Clone, Copy)]
pub(super) struct Engine {
    pub(super) kernels: &'static Kernels,
    /// (rows, columns, reduction chunk) of a workgroup's tile.
    pub(super) dims: (usize, usize, usize),
    /// The f16 engine, which binds the operand scale at binding 5.
    pub(super) f16: bool,
}

/// The f16 engine's kernels when `gpu` runs convolutions in [`ConvPrecision::F16`].
pub(super) fn f16_kernels(gpu: &Gpu) -> Option<&'static MmaKernels> {
    match gpu.conv_precision() {
        ConvPrecision::F16 => gpu.mma_config().and_then(mma_kernels),
        ConvPrecision::F32 => None,
    }
}

/// gy's f16 operand scale ([`crate::ops::f16_scale`]), which the f16 engine multiplies gy by in
/// both backward passes, shared between them: the first pass on the f16 engine computes it
/// into `shared` and the other reads it there (with tuning, either pass may run either engine).
pub(super) type GyScale = std::cell::OnceCell<Tensor>;

/// The scale of [`GyScale`] for a pass on the f16 engine (`f16`), from `shared` or computed
/// now; None for the f32 engine, which binds no scale.
pub(super) fn gy_scale(f16: bool, gy: &Tensor, shared: &GyScale) -> Result<Option<Tensor>> {
    if !f16 {
        return Ok(None);
    }
    if let Some(scale) = shared.get() {
        return Ok(Some(scale.clone()));
    }
    let scale = crate::ops::f16_scale(gy)?;
    Ok(Some(shared.get_or_init(|| scale).clone()))
}

/// The engine and tile of one direct conv GEMM: the f32 engine's [`ConvTile`] or the f16
/// engine's [`MmaTile`]. Autotuning under [`ConvPrecision::F16`] times both engines and keeps
/// the faster ([`crate::ops::TunedConv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GemmTile {
    /// The exact f32 engine (`shaders/conv_fma.wgsl`).
    F32(ConvTile),
    /// The f16 tensor-core engine (`shaders/conv_mma.wgsl`).
    F16(MmaTile),
}

impl GemmTile {
    /// `tile` on `gpu`'s engine: the f16 engine's tile of the same rows
    /// ([`MmaTile::for_f32_tile`]) under [`ConvPrecision::F16`], else `tile` itself.
    pub fn on(gpu: &Gpu, tile: ConvTile) -> GemmTile {
        GemmTile::with_engine(f16_kernels(gpu).is_some(), tile)
    }

    /// `tile` on the f16 engine (its tile of the same rows) where `f16`, else on the f32 one.
    pub fn with_engine(f16: bool, tile: ConvTile) -> GemmTile {
        if f16 {
            GemmTile::F16(MmaTile::for_f32_tile(tile))
        } else {
            GemmTile::F32(tile)
        }
    }

    /// (rows, columns, reduction chunk) of a workgroup's tile.
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            GemmTile::F32(t) => t.dims(),
            GemmTile::F16(t) => t.dims(),
        }
    }
}

impl std::fmt::Display for GemmTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self {
            GemmTile::F32(_) => "f32",
            GemmTile::F16(_) => "f16",
        };
        let (m, n, _) = self.dims();
        write!(f, "{engine} {m}x{n}")
    }
}

impl Engine {
    /// The engine of `tile`. The f16 engine's kernels are those of the adapter's
    /// cooperative-matrix configuration; `gpu` must have one (a tile of the f16 engine comes
    /// from [`GemmTile::on`] or from tuning under [`ConvPrecision::F16`], which require it).
    pub(super) fn new(gpu: &Gpu, tile: GemmTile) -> Engine {
        match tile {
            GemmTile::F32(t) => Engine {
                kernels: t.kernels(gpu),
                dims: t.dims(),
                f16: false,
            },
            GemmTile::F16(t) => {
                let kernels = gpu
                    .mma_config()
                    .and_then(mma_kernels)
                    .expect("an f16 tile only where the f16 engine has kernels");
                let set = if mma_stages(gpu, t) == 2 {
                    kernels.double
                } else {
                    kernels.single
                };
                Engine {
                    kernels: &set[t.index()],
                    dims: t.dims(),
                    f16: true,
                }
            }
        }
    }

    /// The engine of `tile` when a pass has one (forced, or tuned), else `gpu`'s engine with the
    /// plan's tile `model()`: the f16 engine under [`ConvPrecision::F16`], with the f16 tile of
    /// the same rows ([`MmaTile::for_f32_tile`]), else the f32 one.
    pub(super) fn for_gpu(
        gpu: &Gpu,
        tile: Option<GemmTile>,
        model: impl FnOnce() -> ConvTile,
    ) -> Engine {
        Engine::new(gpu, tile.unwrap_or_else(|| GemmTile::on(gpu, model())))
    }

    /// Whether this engine's GEMM threads skip their multiplies where they store nothing
    /// (conv.wgsl's `SKIP_IDLE`, which [`Engine::dispatch`] sets): the f32 engine on a CPU
    /// adapter's plan, where a few consecutive threads share each SIMD instruction and skip
    /// together. On lavapipe ResNet-18's 32x32 step at batch 8, whose layer3 and layer4 GEMMs
    /// have 32 and 8 columns, took 12-20% less GPU time (`docs/speed.md`, "Idle threads skip
    /// their multiplies on CPU adapters").
    pub(super) fn skips_idle(&self, gpu: &Gpu) -> bool {
        !self.f16 && gpu.plan_for() == crate::PlanFor::Cpu
    }

    /// Record one conv GEMM: `buffers` at bindings 1..., and for the f16 engine the operand
    /// scale at binding 5 (`scale`, or any f32 buffer with `p.scaled == 0`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
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
    pub(super) fn dispatch_bound<'a>(
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
        if self.skips_idle(gpu) {
            let constants = [constants, &[flag("SKIP_IDLE", true)]].concat();
            return gpu.dispatch_bound(kernel, &constants, params, &bound, grid);
        }
        gpu.dispatch_bound(kernel, constants, params, &bound, grid)
    }
}

/// Every kernel set of both engines, in the order of [`CONV_SHADER_VARIANTS`].
const SETS: [&[Kernels]; 9] = [
    &F32_SINGLE,
    &F32_DOUBLE,
    &F32_SHALLOW,
    &F32_LANES_SINGLE,
    &F32_LANES_DOUBLE,
    &MMA_F16_SG32,
    &MMA_F8_SG8,
    &MMA_F16_SG32_DOUBLE,
    &MMA_F8_SG8_DOUBLE,
];

/// The kernel sets' variants in all.
const VARIANT_COUNT: usize = {
    let (mut n, mut set) = (0, 0);
    while set < SETS.len() {
        n += SETS[set].len();
        set += 1;
    }
    n
};

/// Each conv variant's prepended WGSL declarations and its engine file under `shaders/` (for the
/// shader tests, which compile `variant + engine + conv.wgsl`): every tile of every kernel set,
/// so that no variant a plan can run is left out.
#[doc(hidden)]
pub const CONV_SHADER_VARIANTS: [(&str, &str); VARIANT_COUNT] = {
    let mut all = [("", ""); VARIANT_COUNT];
    let (mut set, mut n) = (0, 0);
    while set < SETS.len() {
        let mut tile = 0;
        while tile < SETS[set].len() {
            let forward = &SETS[set][tile].forward;
            all[n] = (forward.variant, forward.engine);
            n += 1;
            tile += 1;
        }
        set += 1;
    }
    all
};
