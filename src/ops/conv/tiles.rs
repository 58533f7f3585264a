//! The GEMM tiles ([`ConvTile`]) and the model that picks one per GEMM and adapter
//! ([`TileModel`]), with its split-K plans.

use super::*;

/// Output tile of one conv workgroup (GEMM rows x columns). Larger tiles do more arithmetic per
/// byte staged and run faster on large GPUs, but leave fewer workgroups and waste more on
/// ragged edges; [`TileModel::choose`] weighs the two per GEMM and adapter.
/// `RESNET_WGPU_CONV_TILE` (for example `128x64`) forces one tile everywhere, for tuning on a
/// new adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// 32 x 256, 8 x 4 per thread (threads 64 columns by 4 rows), chunk 8: the same GEMMs as
    /// 32 x 128, with twice the multiply-adds per value a thread reads from workgroup memory,
    /// on CPU adapters (see [`TileModel::CPU`]).
    T32x256,
    /// 64 x 256, 8 x 8 per thread (threads 32 columns by 8 rows), chunk 8: GEMMs of 64 rows
    /// (64-channel layers), which 128 x 128's 8 x 8 micro-tile would half waste, on CPU adapters
    /// (see [`TileModel::CPU`]).
    T64x256,
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
pub(super) fn cpu_cores() -> usize {
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
    /// tiles) by 1.18x, and at batch 64 (196 tiles) lost to it. 32 x 256 and 64 x 256 came
    /// after run 6 and have not run on a GPU: rate 0 keeps them out of a GPU's plans until a
    /// tile sweep measures them (`bench --what tiles` times them with the others).
    pub const GPU: TileModel = TileModel {
        rates: [0.85, 1.0, 0.85, 0.82, 0.71, 0.0, 0.0],
        full_grid: 396,
    };

    /// GPUs running the f16 engine, whose tiles stand in for the f32 ones
    /// ([`MmaTile::for_f32_tile`]): 128 x 128 runs f16 128 x 128, 128 x 64 f16 128 x 64, the
    /// others f16 64 x 64. Not measured yet. On the H200 (run 6) the 64 x 64 f16 kernels ran at
    /// the f32 64 x 64 tile's speed, so they are bound by staging operands from memory, not by
    /// the multiplies: the rates are the values staged per multiply-add, relative to 128 x 128's
    /// (1/64 of one per multiply-add, 128 x 64's 1/43, 64 x 64's 1/32). 64 x 128 and 32 x 128,
    /// which the f16 engine runs as 64 x 64, get a quarter, so that the model picks 64 x 64
    /// itself; 32 x 256 and 64 x 256, as in [`TileModel::GPU`], none.
    pub const GPU_F16: TileModel = TileModel {
        rates: [0.5, 0.67, 0.25, 1.0, 0.25, 0.0, 0.0],
        full_grid: 396,
    };

    /// CPU adapters (lavapipe, SwiftShader): measured with lavapipe on 2 cores, where the
    /// 128 x 128 tile is the fastest (8-10 GFLOP/s on the large shapes against 5-6 for 64 x 64)
    /// and two workgroups per core keep every core busy (lavapipe runs a thread per core):
    /// `full_grid` is a 2-core machine's, which [`TileModel::for_gpu`] scales to the
    /// machine's cores ([`TileModel::cpu_with_cores`]). With 16 workgroups to fill, the model
    /// chose 64 x 64 tiles for ResNet-18's late layers at batch 1, and the conv passes ran
    /// 10-23% slower on 2 cores (`bench --what convs --batch 1`). 32 x 128 ran at 0.75-0.85 of
    /// 64 x 64's rate on full tiles (`bench --what tiles --batch 2`). Every load of workgroup
    /// memory there is a loop over the SIMD lanes (`docs/speed.md`, "What bounds the GEMMs on
    /// lavapipe"), so a tile's rate follows its multiply-adds per value loaded, and session 28
    /// added two tiles for GEMMs of 32 and 64 rows with larger micro-tiles. 32 x 256 (8 x 4) ran
    /// ResNet-18's 3x3 convs of layer1-3 at 1.05-1.2 times 32 x 128's rate and 0.64-0.75 of
    /// 128 x 128's (the same sweep), and the 36 GEMMs of 32 rows of a Winograd F(4x4) pass of
    /// the main job's layer1 (32 channels at 28x28, batch 128) in 77-82 ms against 93-105 on
    /// 32 x 128. 64 x 256 (8 x 8, as 128 x 128) ran the forward passes and input gradients of
    /// 64 rows (ResNet-18's layer1 and stem at 224x224) at 1.2-1.4 times 64 x 128's rate and
    /// 128-row ones at 0.9-1.0 of 128 x 128's once padding is counted, but weight gradients at
    /// 0.8-1.0 of 64 x 128's: 0.9 between the two. Where subgroups share A
    /// ([`conv_shares_a`]), a sweep after their reads of A spanned several steps (session 31,
    /// `docs/gpu-runs/lavapipe-shared-a-steps-tiles.txt`) puts 128 x 64 at 0.84-0.86 and 64 x
    /// 128 at 0.83-0.88; a model re-rated so (and 32 x 128 at 0.55) ran ResNet-18's inference
    /// faster but the main job's step slower in three interleaved rounds, so this one stays
    /// (`docs/gpu-runs/lavapipe-session31-experiments.txt`; session 30's sweep and re-rate:
    /// `lavapipe-shared-a-tiles.txt`, within noise).
    pub const CPU: TileModel = TileModel {
        rates: [0.6, 0.65, 0.8, 1.0, 0.5, 0.7, 0.9],
        full_grid: 4,
    };

    /// [`TileModel::CPU`] for a machine with `cores` cores: two workgroups per core.
    pub fn cpu_with_cores(cores: usize) -> TileModel {
        TileModel {
            full_grid: 2 * cores.max(1),
            ..TileModel::CPU
        }
    }

    /// The model for `gpu`'s plan ([`Gpu::plan_for`]): [`TileModel::CPU`] for CPU adapters,
    /// else [`TileModel::GPU`] (also where the type is unknown, as on the web), or
    /// [`TileModel::GPU_F16`] when `gpu` runs the f16 engine.
    pub fn for_gpu(gpu: &Gpu) -> TileModel {
        TileModel::for_engine(gpu, f16_kernels(gpu).is_some())
    }

    /// The model for `gpu`'s plan running the f16 engine where `f16`, else the f32 one.
    pub fn for_engine(gpu: &Gpu, f16: bool) -> TileModel {
        if gpu.plan_for() == crate::PlanFor::Cpu {
            TileModel::cpu_with_cores(cpu_cores())
        } else if f16 {
            TileModel::GPU_F16
        } else {
            TileModel::GPU
        }
    }

    /// The relative rate of `tile` on full tiles.
    pub fn rate(&self, tile: ConvTile) -> f64 {
        self.rates[tile.index()]
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
    pub(super) fn split_below(&self) -> usize {
        (self.full_grid / 4).max(2)
    }

    /// Splits of a reduction of `len` whose output fills `tiles` workgroups (the forward pass,
    /// one input-gradient phase): one unless the tiles alone are too few to fill the device and
    /// the reduction is long enough for chunks of [`FILL_MIN_CHUNK`].
    pub(super) fn fill_splits(&self, tiles: usize, len: usize) -> usize {
        if tiles >= self.split_below() || len < 2 * FILL_MIN_CHUNK {
            return 1;
        }
        (self.full_grid / tiles).min(len / FILL_MIN_CHUNK).max(1)
    }

    /// Split-K of the weight gradient aims at this many workgroups.
    pub(super) fn split_target(&self) -> usize {
        2 * self.full_grid
    }

    /// Splits of a weight gradient's reduction of `len` whose output fills `tiles` workgroups
    /// and whose partial results take `partial` values per split: towards
    /// [`TileModel::split_target`] workgroups, each split at least [`SPLIT_MIN_CHUNK`] long,
    /// all partial results within `budget` values (one split at the least), at most `most`.
    pub(super) fn weight_grad_splits(
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
pub(super) const FILL_MIN_CHUNK: usize = 128;

impl ConvTile {
    /// Every tile.
    pub const ALL: [ConvTile; 7] = [
        ConvTile::T64x64,
        ConvTile::T128x64,
        ConvTile::T64x128,
        ConvTile::T128x128,
        ConvTile::T32x128,
        ConvTile::T32x256,
        ConvTile::T64x256,
    ];

    /// (rows, columns, reduction chunk).
    pub fn dims(self) -> (usize, usize, usize) {
        match self {
            ConvTile::T64x64 => (64, 64, 16),
            ConvTile::T128x64 => (128, 64, 16),
            ConvTile::T64x128 => (64, 128, 16),
            ConvTile::T128x128 => (128, 128, 8),
            ConvTile::T32x128 => (32, 128, 16),
            ConvTile::T32x256 => (32, 256, 8),
            ConvTile::T64x256 => (64, 256, 8),
        }
    }

    /// Bytes of workgroup memory the tile's f32 kernels declare with `stages` copies of the
    /// staged chunk (a_tile and b_tile in conv_fma.wgsl, rows padded by one vec4).
    pub fn workgroup_bytes(self, stages: usize) -> u64 {
        let (bm, bn, bk) = self.dims();
        (16 * stages * bk * (bm / 4 + bn / 4 + 2)) as u64
    }

    /// The tile's f32 kernels under `gpu`'s staging ([`conv_stages`]), with tall micro-tiles
    /// whose subgroups share A where `gpu` allows ([`conv_shares_a`]).
    pub(super) fn kernels(self, gpu: &Gpu) -> &'static Kernels {
        let double = conv_stages(gpu, self) == 2;
        let set = match (gpu.conv_staging(), conv_shares_a(gpu)) {
            (ConvStaging::Shallow, _) => &F32_SHALLOW,
            (_, true) if double => &F32_LANES_DOUBLE,
            (_, true) => &F32_LANES_SINGLE,
            _ if double => &F32_DOUBLE,
            _ => &F32_SINGLE,
        };
        &set[self.index()]
    }

    /// The tile's place in [`ConvTile::ALL`] (and in the tables indexed alike).
    pub(super) fn index(self) -> usize {
        ConvTile::ALL
            .iter()
            .position(|&t| t == self)
            .expect("a tile")
    }

    /// Parse a tile's name (its [`Display`](std::fmt::Display): `64x64`, `128x64`, `64x128`,
    /// `128x128`, `32x128`, `32x256` or `64x256`).
    pub fn parse(s: &str) -> Option<ConvTile> {
        ConvTile::ALL
            .into_iter()
            .find(|t| s.trim() == t.to_string())
    }

    /// Every tile's name, comma-separated (for messages that list the choices).
    pub fn names() -> String {
        let names: Vec<String> = ConvTile::ALL.iter().map(ToString::to_string).collect();
        names.join(", ")
    }
}

/// A tile's name, rows x columns: `128x64`.
impl std::fmt::Display for ConvTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, n, _) = self.dims();
        write!(f, "{m}x{n}")
    }
}

pub(crate) fn forced_tile() -> Option<ConvTile> {
    static FORCED: std::sync::OnceLock<Option<ConvTile>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let v = std::env::var("RESNET_WGPU_CONV_TILE").ok()?;
        let t = ConvTile::parse(&v);
        if t.is_none() {
            eprintln!(
                "warning: RESNET_WGPU_CONV_TILE={v:?} is not one of {}; ignored",
                ConvTile::names()
            );
        }
        t
    })
}

/// Copies of the staged chunk in `gpu`'s f32 kernels with `tile`: two under
/// [`ConvStaging::Double`] where the device's workgroup memory holds them (WebGPU's default
/// 16 KiB holds none of the tiles twice), else one (of chunks half as deep under
/// [`ConvStaging::Shallow`]). Public for the tests.
#[doc(hidden)]
pub fn conv_stages(gpu: &Gpu, tile: ConvTile) -> usize {
    stages(gpu, gpu.conv_staging(), tile.workgroup_bytes(2))
}

/// Copies of the staged chunk an engine keeps under `staging`: two where it asks for them and
/// `double_bytes` (a tile's workgroup memory with two) fit the device, else one. The rule of
/// both engines ([`conv_stages`], [`super::mma_stages`]).
pub(super) fn stages(gpu: &Gpu, staging: ConvStaging, double_bytes: u64) -> usize {
    let room = gpu.limits().max_compute_workgroup_storage_size as u64;
    if staging == ConvStaging::Double && double_bytes <= room {
        2
    } else {
        1
    }
}
