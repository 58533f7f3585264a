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
    /// conv_forward_bn's epilogue flags ([`EPI_RELU`], [`EPI_RESIDUAL`]).
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

/// conv_forward_bn epilogue flag: a ReLU last.
pub(super) const EPI_RELU: u32 = 1;
/// conv_forward_bn epilogue flag: add the residual (binding 10) before the ReLU.
pub(super) const EPI_RESIDUAL: u32 = 2;

/// The conv kernels of one tile variant.
pub(super) struct Kernels {
    pub(super) forward: Kernel,
    /// The forward pass with the eval-mode batch-norm epilogue ([`conv2d_bn_eval`]).
    pub(super) forward_bn: Kernel,
    pub(super) backward_input: Kernel,
    pub(super) backward_weight: Kernel,
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
pub(super) const F32_SINGLE: [Kernels; 5] = f32_tiles!(1);
/// ...and in two alternating copies ([`ConvStaging::Double`]).
pub(super) const F32_DOUBLE: [Kernels; 5] = f32_tiles!(2);

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
pub(super) const MMA_F16_SG32: [Kernels; 3] = mma_tiles!(16, 32);
/// ...and 8 x 8 fragments with subgroups of 8 (Mesa's lavapipe).
pub(super) const MMA_F8_SG8: [Kernels; 3] = mma_tiles!(8, 8);

/// The configurations the f16 engine has kernels for, in order of preference.
pub(super) const MMA_VARIANTS: [(MmaConfig, &[Kernels; 3]); 2] = [
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

    pub(super) fn index(self) -> usize {
        MmaTile::ALL
            .iter()
            .position(|&t| t == self)
            .expect("a tile")
    }
}

/// The f16 kernels for `config`, one set per [`MmaTile`], if they exist.
pub(super) fn mma_kernels(config: MmaConfig) -> Option<&'static [Kernels; 3]> {
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
pub(super) struct Engine {
    pub(super) kernels: &'static Kernels,
    /// (rows, columns, reduction chunk) of a workgroup's tile.
    pub(super) dims: (usize, usize, usize),
    /// The f16 engine, which binds the operand scale at binding 5.
    pub(super) f16: bool,
}

/// The f16 engine's kernels when `gpu` runs convolutions in [`ConvPrecision::F16`].
pub(super) fn f16_kernels(gpu: &Gpu) -> Option<&'static [Kernels; 3]> {
    match gpu.conv_precision() {
        ConvPrecision::F16 => gpu.mma_config().and_then(mma_kernels),
        ConvPrecision::F32 => None,
    }
}

/// The operand scale the f16 engine multiplies gy by in both backward passes
/// ([`crate::ops::f16_scale`]): `given` when the caller computed it for the other pass, else
/// computed here; None for the f32 engine, which binds no scale.
pub(super) fn gy_scale(f16: bool, gy: &Tensor, given: Option<&Tensor>) -> Result<Option<Tensor>> {
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
    pub(super) fn for_gpu(gpu: &Gpu, tile: impl FnOnce() -> ConvTile) -> Engine {
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
