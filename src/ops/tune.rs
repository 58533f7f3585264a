//! Conv autotuning: with [`Gpu::set_conv_autotune`] on, the first GEMM of each conv shape and
//! pass times every f32 tile ([`ConvTile::ALL`], each with its own split-K plan) on the device
//! and keeps the fastest for every later call, as cuDNN's benchmark mode does. Under
//! [`ConvPrecision::F16`] the f16 engine's tiles ([`MmaTile::ALL`]) are timed too, and the
//! fastest of both engines runs: the f32 engine where it is faster (as on the H200 of run 6,
//! where the f16 step was slower), the f16 one elsewhere. Where the shape
//! can run Winograd (a 3x3 kernel of stride 1 and padding 1, see
//! [`crate::ConvAlgo`]), the pass is also timed through it, with each of its tiles on the f32
//! engine ([`crate::WinogradTile`], unless [`Gpu::set_winograd_tile`] chose one), and under
//! [`crate::ConvAlgo::Auto`] the faster of the two algorithms runs, Winograd with its faster
//! tile: the thresholds of Auto's rule and the tile's cost model were estimated, and tuning
//! replaces them with this adapter's timings. On CPU adapters whose conv GEMMs run without
//! barriers ([`crate::ops::conv_gemms_without_barriers`]), the direct convolution through them
//! is a candidate too where it takes the pass, and the untuned plan's choice there. The
//! default plan comes from a [`TileModel`](super::TileModel), measured on one GPU (an H100) and
//! one CPU adapter; tuning fits the plan to whatever adapter runs it, at the cost of five or
//! more runs of each pass per shape and candidate at the start (for ResNet-18, about forty
//! training steps' worth of convolution work).
//!
//! Timing is wall-clock around [`Gpu::synchronize`]: a first run compiles the pipelines, a
//! second estimates the time, and enough repeats to fill [`TARGET_SECS`] (at most
//! [`MAX_REPEATS`]) give a figure. The candidates take turns for [`ROUNDS`] rounds and each
//! keeps its best figure: a GPU raises its clocks under sustained load (on an H200 the same
//! kernels ran up to 3.5x faster a few hundred milliseconds into a burst of work), and
//! candidates timed one after the other would favour the last ones. The model's choice (its
//! tile, and Auto's rule for Winograd) stays unless another is at least [`MARGIN`] faster, so
//! noise does not swap near-equal candidates. Tuning submits the work recorded so far first
//! (the training step's one-submit rule holds again once every shape is tuned). The trials read
//! the op's real inputs and write outputs of their own.
//!
//! Native only: the web cannot block on the GPU. Tuned tiles change a GEMM's summation order,
//! so results may differ by rounding from an untuned run (and from another tuned run that
//! picked differently); leave tuning off where runs must be reproducible to the bit.

use super::conv::{ConvTile, F16_WINOGRAD_TILE, GemmTile, MmaTile};
use crate::gpu::{ConvOrder, ConvPrecision, ConvStaging, Gpu, WinogradTile};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which GEMM of a convolution a tuned tile serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConvPass {
    /// The forward pass (also the inference kernels with batch norm fused in).
    Forward,
    /// The input gradient (one tile for all of its sub-pixel phases).
    InputGrad,
    /// The weight gradient.
    WeightGrad,
}

/// A conv shape and pass: the key of a tuned tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvKey {
    /// The GEMM.
    pub pass: ConvPass,
    /// Input shape `[N, C, H, W]`.
    pub x: [usize; 4],
    /// Weight shape `[K, C, R, S]`.
    pub w: [usize; 4],
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// The precision it was tuned under (which engines were candidates).
    pub precision: ConvPrecision,
    // The settings its candidates were timed with, since each changes their kernels:
    /// The f32 engine's reduction order ([`Gpu::set_conv_order`]).
    pub order: ConvOrder,
    /// The f32 engine's staging ([`Gpu::set_conv_staging`]).
    pub staging: ConvStaging,
    /// The f16 engine's staging ([`Gpu::set_f16_staging`]) where its tiles were candidates
    /// (under [`ConvPrecision::F16`]; else None).
    pub f16_staging: Option<ConvStaging>,
    /// The Winograd tile [`Gpu::set_winograd_tile`] chose, which is then the only one timed
    /// (None: both).
    pub winograd_tile: Option<WinogradTile>,
    /// Whether the GEMMs without barriers were candidates reading 32 bytes at a time
    /// ([`Gpu::set_conv_wide_reads`]; false where they were no candidates).
    pub wide_reads: bool,
}

/// The outcome of tuning one [`ConvKey`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedConv {
    /// The shape and pass.
    pub key: ConvKey,
    /// The engine and tile every later direct run uses (unless `lanes`).
    pub tile: GemmTile,
    /// The engine and tile the adapter's [`TileModel`](super::TileModel) would have used.
    pub model: GemmTile,
    /// Wall milliseconds per run of the pass with each f32 tile of [`ConvTile::ALL`], in order.
    pub millis: [f64; ConvTile::ALL.len()],
    /// Under [`ConvPrecision::F16`], wall milliseconds per run with each f16 tile of
    /// [`MmaTile::ALL`], in order (else None).
    pub f16_millis: Option<[f64; MmaTile::ALL.len()]>,
    /// Wall milliseconds per run of the pass through Winograd with its GEMMs on the f32 engine,
    /// with each tile of [`WinogradTile::ALL`] (None: not timed; where the shape can take it,
    /// both unless [`Gpu::set_winograd_tile`] chose one)...
    pub winograd_millis: [Option<f64>; 2],
    /// ...and with them on the f16 engine (F(2x2, 3x3)), under [`ConvPrecision::F16`].
    pub f16_winograd_millis: Option<f64>,
    /// Whether [`crate::ConvAlgo::Auto`]'s rule runs Winograd here without tuning.
    pub model_winograd: bool,
    /// The tile Winograd takes on the f32 engine without tuning (where timed).
    pub model_winograd_tile: WinogradTile,
    /// The tile tuned Winograd takes on the f32 engine: the model's unless the other is at
    /// least [`MARGIN`] faster.
    pub winograd_tile: WinogradTile,
    /// Whether later calls under [`crate::ConvAlgo::Auto`] run Winograd (then `tile` serves
    /// [`crate::ConvAlgo::Direct`] only). Under [`crate::ConvAlgo::Winograd`] they always do,
    /// untuned.
    pub winograd: bool,
    /// Whether tuned Winograd runs its GEMMs on the f16 engine: under [`ConvPrecision::F16`],
    /// unless the f32 engine was at least [`MARGIN`] faster.
    pub winograd_f16: bool,
    /// Wall milliseconds per run of the direct convolution on the GEMMs without barriers, where
    /// they take the pass (CPU adapters; [`crate::ops::conv_gemms_without_barriers`]): the
    /// untuned plan's direct choice there, instead of `model` (None: not timed).
    pub lanes_millis: Option<f64>,
    /// Whether later direct runs take the GEMMs without barriers instead of `tile`: where
    /// timed, unless `tile` was at least [`MARGIN`] faster.
    pub lanes: bool,
}

impl TunedConv {
    /// Every direct candidate timed, with its milliseconds: the f32 tiles, then the f16 ones.
    pub fn direct_millis(&self) -> Vec<(GemmTile, f64)> {
        let f32 = ConvTile::ALL
            .into_iter()
            .map(GemmTile::F32)
            .zip(self.millis);
        let f16 = self
            .f16_millis
            .into_iter()
            .flat_map(|ms| MmaTile::ALL.into_iter().map(GemmTile::F16).zip(ms));
        f32.chain(f16).collect()
    }

    /// Whether tuning chose another direct plan than the untuned one: another engine or tile
    /// than the model's, or the tiles instead of the GEMMs without barriers (or back).
    pub fn direct_moved(&self) -> bool {
        if self.lanes_millis.is_some() {
            !self.lanes
        } else {
            self.tile != self.model
        }
    }
}

/// One way of running a pass that tuning times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// The direct GEMM on this engine and tile.
    Gemm(GemmTile),
    /// Winograd with this tile, its GEMMs on the model's tiles of the f16 engine where `f16`
    /// (F(2x2, 3x3) only), else of the f32 one.
    Winograd { f16: bool, tile: WinogradTile },
    /// The direct convolution on the GEMMs without barriers (CPU adapters).
    Lanes,
}

/// What tuning needs of a shape that can run Winograd.
pub(crate) struct WinogradPlan {
    /// Whether [`crate::ConvAlgo::Auto`]'s rule runs it without tuning...
    pub rule: bool,
    /// ...and with which tile on the f32 engine.
    pub model_tile: WinogradTile,
    /// The f32 engine's tiles to time: both, or the one [`Gpu::set_winograd_tile`] chose.
    pub tiles: Vec<WinogradTile>,
}

/// Winograd's timings for [`choose`].
#[derive(Clone, Copy, Debug, Default)]
struct WinogradTimes {
    rule: bool,
    model_tile: WinogradTile,
    /// The f32 engine's, per tile of [`WinogradTile::ALL`].
    f32: [Option<f64>; 2],
    /// The f16 engine's (F(2x2, 3x3)).
    f16: Option<f64>,
}

/// Timed repeats aim at this many seconds per candidate...
pub const TARGET_SECS: f64 = 0.002;
/// ...with at most this many repeats.
pub const MAX_REPEATS: usize = 20;
/// Rounds in which every candidate is timed once; each keeps its fastest round.
pub const ROUNDS: usize = 3;
/// Another candidate replaces the model's choice only when it is at least this much faster (a
/// fraction).
pub const MARGIN: f64 = 0.03;

/// The tuning of `key`, tuning it now with `trial` (which runs the pass once as the given
/// candidate) if this is the key's first call; `model()` gives the model's engine and tile,
/// `lanes` whether the GEMMs without barriers take the pass (and the untuned plan runs them),
/// and `winograd` whether the shape can run Winograd (Some) and if so how. The f16 engine's
/// tiles are candidates under [`ConvPrecision::F16`] (`key.precision`).
pub(crate) fn tuned(
    gpu: &Gpu,
    key: ConvKey,
    model: impl FnOnce() -> GemmTile,
    lanes: bool,
    winograd: Option<WinogradPlan>,
    trial: impl FnMut(Candidate) -> Result<()>,
) -> Result<TunedConv> {
    if let Some(t) = gpu.tuned_conv(&key) {
        return Ok(t);
    }
    let f16 = key.precision == ConvPrecision::F16;
    let mut candidates: Vec<Candidate> = ConvTile::ALL
        .into_iter()
        .map(|t| Candidate::Gemm(GemmTile::F32(t)))
        .collect();
    if f16 {
        candidates.extend(MmaTile::ALL.map(|t| Candidate::Gemm(GemmTile::F16(t))));
    }
    if lanes {
        candidates.push(Candidate::Lanes);
    }
    let mut wino = WinogradTimes::default();
    if let Some(plan) = &winograd {
        wino.rule = plan.rule;
        wino.model_tile = plan.model_tile;
        for &tile in &plan.tiles {
            candidates.push(Candidate::Winograd { f16: false, tile });
        }
        if f16 {
            let tile = F16_WINOGRAD_TILE;
            candidates.push(Candidate::Winograd { f16: true, tile });
        }
    }
    let timed = time_candidates(gpu, &candidates, trial)?;
    let mut lanes_ms = None;
    for (c, &ms) in candidates.iter().zip(&timed) {
        match *c {
            Candidate::Winograd { f16: true, .. } => wino.f16 = Some(ms),
            Candidate::Winograd { f16: false, tile } => wino.f32[tile.index()] = Some(ms),
            Candidate::Lanes => lanes_ms = Some(ms),
            Candidate::Gemm(_) => {}
        }
    }
    let (f32_ms, rest) = timed.split_at(ConvTile::ALL.len());
    let f16_ms = &rest[..if f16 { MmaTile::ALL.len() } else { 0 }];
    let mut millis = [f64::INFINITY; ConvTile::ALL.len()];
    millis.copy_from_slice(f32_ms);
    let f16_millis = f16.then(|| {
        let mut ms = [f64::INFINITY; MmaTile::ALL.len()];
        ms.copy_from_slice(f16_ms);
        ms
    });
    let tuned = choose(key, model(), millis, f16_millis, lanes_ms, wino);
    gpu.record_tuned_conv(tuned.clone());
    Ok(tuned)
}

/// Wall milliseconds per run of `trial` as each of `candidates`.
#[cfg(not(target_arch = "wasm32"))]
fn time_candidates(
    gpu: &Gpu,
    candidates: &[Candidate],
    mut trial: impl FnMut(Candidate) -> Result<()>,
) -> Result<Vec<f64>> {
    use std::time::Instant;
    let mut timed = |c: Candidate, repeats: usize| -> Result<f64> {
        gpu.synchronize()?;
        let start = Instant::now();
        for _ in 0..repeats {
            trial(c)?;
        }
        gpu.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / repeats as f64)
    };
    let mut repeats = vec![1; candidates.len()];
    for (i, &c) in candidates.iter().enumerate() {
        timed(c, 1)?; // compiles the pipelines
        let estimate = timed(c, 1)?;
        repeats[i] = ((TARGET_SECS / estimate.max(1e-9)).ceil() as usize).clamp(1, MAX_REPEATS);
    }
    let mut millis = vec![f64::INFINITY; candidates.len()];
    for _ in 0..ROUNDS {
        for (i, &c) in candidates.iter().enumerate() {
            millis[i] = millis[i].min(1e3 * timed(c, repeats[i])?);
        }
    }
    Ok(millis)
}

/// The model's engine and tile unless another is at least [`MARGIN`] faster, then the
/// fastest; where timed (`lanes_ms`), the GEMMs without barriers unless that tile is at least
/// the margin faster; Winograd's tile on the f32 engine and its engine likewise (the model's
/// tile, and the f16 engine under [`ConvPrecision::F16`], unless the other is at least the margin
/// faster); and Winograd (where timed) against the direct choice, the model's algorithm
/// (`wino.rule`) unless the other is at least [`MARGIN`] faster.
fn choose(
    key: ConvKey,
    model: GemmTile,
    millis: [f64; ConvTile::ALL.len()],
    f16_millis: Option<[f64; MmaTile::ALL.len()]>,
    lanes_ms: Option<f64>,
    wino: WinogradTimes,
) -> TunedConv {
    let mut tuned = TunedConv {
        key,
        tile: model,
        model,
        millis,
        f16_millis,
        winograd_millis: wino.f32,
        f16_winograd_millis: wino.f16,
        model_winograd: wino.rule,
        model_winograd_tile: wino.model_tile,
        winograd_tile: wino.model_tile,
        winograd: false,
        winograd_f16: false,
        lanes_millis: lanes_ms,
        lanes: false,
    };
    let direct = tuned.direct_millis();
    let time = |t: GemmTile| {
        direct
            .iter()
            .find(|(d, _)| *d == t)
            .map_or(f64::INFINITY, |&(_, ms)| ms)
    };
    let (best, best_ms) = direct
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("tiles");
    if best_ms < (1.0 - MARGIN) * time(model) {
        tuned.tile = best;
    }
    tuned.lanes = lanes_ms.is_some_and(|lanes| time(tuned.tile) >= (1.0 - MARGIN) * lanes);
    let direct = match lanes_ms {
        Some(lanes) if tuned.lanes => lanes,
        _ => time(tuned.tile),
    };
    let tile_ms = |t: WinogradTile| wino.f32[t.index()].unwrap_or(f64::INFINITY);
    for t in WinogradTile::ALL {
        if tile_ms(t) < (1.0 - MARGIN) * tile_ms(tuned.winograd_tile) {
            tuned.winograd_tile = t;
        }
    }
    let f32_ms = wino.f32[tuned.winograd_tile.index()];
    tuned.winograd_f16 = match (f32_ms, wino.f16) {
        (Some(f32), Some(f16)) => f32 >= (1.0 - MARGIN) * f16,
        (None, Some(_)) => true,
        _ => false,
    };
    let winograd_millis = if tuned.winograd_f16 { wino.f16 } else { f32_ms };
    tuned.winograd = winograd_millis.is_some_and(|wino| {
        if tuned.model_winograd {
            direct >= (1.0 - MARGIN) * wino
        } else {
            wino < (1.0 - MARGIN) * direct
        }
    });
    tuned
}

#[cfg(target_arch = "wasm32")]
fn time_candidates(
    _gpu: &Gpu,
    _candidates: &[Candidate],
    _trial: impl FnMut(Candidate) -> Result<()>,
) -> Result<Vec<f64>> {
    Err(not_on_the_web())
}

/// Tuning waits on the GPU, which nothing on the web can.
fn not_on_the_web() -> Error {
    Error::Invalid("conv autotuning is not available on the web (it waits on the GPU)".into())
}

impl Gpu {
    /// Turn conv autotuning on or off for this device and its clones (see the module
    /// documentation of `ops::tune`). Turning it off keeps what was tuned for a later `true`.
    /// Fails on the web, where nothing can wait on the GPU.
    pub fn set_conv_autotune(&self, on: bool) -> Result<()> {
        if on && cfg!(target_arch = "wasm32") {
            return Err(not_on_the_web());
        }
        self.tuning().on = on;
        Ok(())
    }

    /// Whether conv autotuning is on ([`Gpu::set_conv_autotune`]).
    pub fn conv_autotune(&self) -> bool {
        self.tuning().on
    }

    /// Every conv shape and pass tuned so far, in the order they were tuned.
    pub fn tuned_convs(&self) -> Vec<TunedConv> {
        self.tuning().tuned.clone()
    }

    pub(crate) fn tuned_conv(&self, key: &ConvKey) -> Option<TunedConv> {
        self.tuning().tuned.iter().find(|t| t.key == *key).cloned()
    }

    fn record_tuned_conv(&self, tuned: TunedConv) {
        self.tuning().tuned.push(tuned);
    }

    /// Write every conv shape and pass tuned so far to `path` (JSON, with this adapter's name,
    /// backend and driver and this crate's version), for [`Gpu::load_conv_tuning`] in a later
    /// run to skip tuning them again. The file is written to a temporary name and renamed, so
    /// an earlier file at `path` survives a failed save.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_conv_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let file = TuningFile {
            format: TUNING_FORMAT.into(),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            adapter: AdapterId::of(self),
            convs: self.tuned_convs(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::io::write_atomically(path.as_ref(), |f| std::io::Write::write_all(f, &json))
    }

    /// Read the conv shapes and passes that [`Gpu::save_conv_tuning`] wrote to `path`: with
    /// autotuning on they run as tuned there, without being timed again (a shape the file
    /// tuned and this device tuned too takes the file's choice). Returns how many the file
    /// holds. Fails, naming the file and what differs, where it was tuned on another adapter
    /// or driver, or by another version of this crate, whose kernels may differ: tune again
    /// there.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_conv_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        let path = path.as_ref();
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let not_ours = |e: serde_json::Error| {
            Error::format(
                &shown,
                format!("not a conv tuning file of this crate ({e})"),
            )
        };
        // The format first: an older format's records would not parse as this one's.
        let header: TuningHeader = serde_json::from_slice(&bytes).map_err(not_ours)?;
        if header.format != TUNING_FORMAT {
            return Err(Error::format(
                &shown,
                format!(
                    "format {:?}, expected {TUNING_FORMAT:?}: tune again",
                    header.format
                ),
            ));
        }
        let file: TuningFile = serde_json::from_slice(&bytes).map_err(not_ours)?;
        let crate_version = env!("CARGO_PKG_VERSION");
        if file.crate_version != crate_version {
            return Err(Error::format(
                &shown,
                format!(
                    "tuned by resnet-wgpu {}, not this {crate_version}, whose kernels may \
                     differ: tune again",
                    file.crate_version
                ),
            ));
        }
        let here = AdapterId::of(self);
        if file.adapter != here {
            return Err(Error::format(
                &shown,
                format!(
                    "tuned on {}, not on this {}: tune again on this adapter",
                    file.adapter, here
                ),
            ));
        }
        let count = file.convs.len();
        let mut tuning = self.tuning();
        for t in file.convs {
            match tuning.tuned.iter_mut().find(|d| d.key == t.key) {
                Some(done) => *done = t,
                None => tuning.tuned.push(t),
            }
        }
        Ok(count)
    }

    fn tuning(&self) -> std::sync::MutexGuard<'_, ConvTuning> {
        self.0.conv_tuning.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `format` of a file of [`Gpu::save_conv_tuning`] (native only, as the file functions;
/// 2: Winograd timed with each tile, session 17; 3: keys name the order, stagings and Winograd
/// tile the candidates ran with; 4: the 32 x 256 and 64 x 256 tiles timed too, session 28; 5:
/// the GEMMs without barriers timed too on CPU adapters, session 33; 6: keys name those GEMMs'
/// read width, session 40).
#[cfg(not(target_arch = "wasm32"))]
const TUNING_FORMAT: &str = "resnet-wgpu conv tuning 6";

/// The first field of a [`TuningFile`], read alone first.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Deserialize)]
struct TuningHeader {
    format: String,
}

/// A file of [`Gpu::save_conv_tuning`].
#[cfg(not(target_arch = "wasm32"))]
#[derive(Serialize, Deserialize)]
struct TuningFile {
    format: String,
    crate_version: String,
    adapter: AdapterId,
    convs: Vec<TunedConv>,
}

/// The adapter and driver a tuning was measured on.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AdapterId {
    name: String,
    backend: String,
    driver: String,
}

#[cfg(not(target_arch = "wasm32"))]
impl AdapterId {
    fn of(gpu: &Gpu) -> AdapterId {
        let info = gpu.info();
        AdapterId {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl std::fmt::Display for AdapterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, driver {:?})",
            self.name, self.backend, self.driver
        )
    }
}

/// A device's tuning state (in [`Gpu`], shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct ConvTuning {
    on: bool,
    tuned: Vec<TunedConv>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConvKey {
        ConvKey {
            pass: ConvPass::Forward,
            x: [1, 2, 3, 4],
            w: [5, 2, 3, 3],
            stride: 1,
            padding: 1,
            precision: ConvPrecision::F32,
            order: ConvOrder::Rsc,
            staging: ConvStaging::Double,
            f16_staging: None,
            winograd_tile: None,
            wide_reads: false,
        }
    }

    fn f32(t: ConvTile) -> GemmTile {
        GemmTile::F32(t)
    }

    /// Times of the f32 tiles: `given` for the first, the later tiles' slower than any.
    fn ms(given: &[f64]) -> [f64; ConvTile::ALL.len()] {
        let mut all = [9.0; ConvTile::ALL.len()];
        all[..given.len()].copy_from_slice(given);
        all
    }

    #[test]
    fn records_survive_json_to_the_bit() {
        // Timings are arbitrary doubles: serde_json reads some of them back one ulp off unless
        // its float_roundtrip feature is on (Cargo.toml), and a loaded tuning must equal the
        // saved one.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut millis = [0.0; ConvTile::ALL.len()];
            for ms in &mut millis {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *ms = (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
            }
            let wino = WinogradTimes {
                f32: [Some(millis[0]), Some(millis[1])],
                ..WinogradTimes::default()
            };
            let t = choose(
                key(),
                f32(ConvTile::T64x64),
                millis,
                None,
                Some(millis[2]),
                wino,
            );
            let json = serde_json::to_string(&t).unwrap();
            let back: TunedConv = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t, "{json}");
        }
    }

    #[test]
    fn keeps_the_model_tile_within_the_margin() {
        let none = WinogradTimes::default();
        let choose = |model, millis| choose(key(), f32(model), millis, None, None, none);
        // 64x128 is the model's; 128x128 is 2% faster: noise, not a reason to switch.
        let t = choose(ConvTile::T64x128, ms(&[2.0, 3.0, 1.0, 0.98, 4.0]));
        assert_eq!(t.tile, f32(ConvTile::T64x128));
        // 5% faster: switch.
        let t = choose(ConvTile::T64x128, ms(&[2.0, 3.0, 1.0, 0.95, 4.0]));
        assert_eq!(t.tile, f32(ConvTile::T128x128));
        assert_eq!(t.model, f32(ConvTile::T64x128));
        // The fastest, not the first faster one.
        let t = choose(ConvTile::T128x128, ms(&[0.5, 0.4, 0.9, 1.0, 0.6]));
        assert_eq!(t.tile, f32(ConvTile::T128x64));
        assert!(!t.winograd && t.winograd_millis == [None; 2]);
    }

    #[test]
    fn winograd_against_the_chosen_tile_within_the_margin() {
        // The chosen tile (128x64, the model's) takes 1.0 ms; 64x64's 0.98 is within the margin.
        let millis = ms(&[0.98, 1.0, 2.0, 2.0, 2.0]);
        let t = |model_winograd, wino| {
            let times = WinogradTimes {
                rule: model_winograd,
                model_tile: WinogradTile::F4,
                f32: [None, Some(wino)],
                f16: None,
            };
            let t = choose(key(), f32(ConvTile::T128x64), millis, None, None, times);
            assert_eq!(t.tile, f32(ConvTile::T128x64));
            assert_eq!(t.model_winograd, model_winograd);
            t.winograd
        };
        // Auto's rule says direct: Winograd must be at least the margin faster.
        assert!(!t(false, 0.98));
        assert!(t(false, 0.95));
        // Auto's rule says Winograd: direct must be at least the margin faster.
        assert!(t(true, 1.02));
        assert!(!t(true, 1.05));
        // Never where the shape cannot run it.
        let none = WinogradTimes::default();
        let t = choose(key(), f32(ConvTile::T128x64), millis, None, None, none);
        assert!(!t.winograd);
    }

    #[test]
    fn chooses_between_the_engines_within_the_margin() {
        let f16 = GemmTile::F16;
        let key = ConvKey {
            precision: ConvPrecision::F16,
            ..key()
        };
        let model = f16(MmaTile::T128x64);
        let none = WinogradTimes::default();
        let choose = |millis, f16_millis| choose(key, model, millis, Some(f16_millis), None, none);
        // The model's f16 tile stays against an f32 tile 2% faster...
        let t = choose(ms(&[0.98, 2.0, 2.0, 2.0, 2.0]), [2.0, 1.0, 2.0]);
        assert_eq!(t.tile, model);
        // ...and gives way to one 5% faster, and to a faster f16 tile.
        let t = choose(ms(&[0.95, 2.0, 2.0, 2.0, 2.0]), [2.0, 1.0, 2.0]);
        assert_eq!(t.tile, f32(ConvTile::T64x64));
        assert_eq!(t.model, model);
        let t = choose(ms(&[0.95, 2.0, 2.0, 2.0, 2.0]), [2.0, 1.0, 0.9]);
        assert_eq!(t.tile, f16(MmaTile::T128x128));
        assert_eq!(
            t.direct_millis().len(),
            ConvTile::ALL.len() + MmaTile::ALL.len()
        );
        // Winograd's engine: the f16 one unless the f32 one is the margin faster; then
        // Winograd on that engine against the chosen direct tile.
        let wino = |f32_ms, f16_ms| {
            let times = WinogradTimes {
                model_tile: WinogradTile::F4,
                f32: [None, Some(f32_ms)],
                f16: Some(f16_ms),
                ..WinogradTimes::default()
            };
            let t = super::choose(
                key,
                model,
                ms(&[0.95, 2.0, 2.0, 2.0, 2.0]),
                Some([2.0, 1.0, 2.0]),
                None,
                times,
            );
            assert_eq!(t.tile, f32(ConvTile::T64x64));
            (t.winograd, t.winograd_f16)
        };
        assert_eq!(wino(0.89, 0.9), (true, true));
        assert_eq!(wino(0.8, 0.9), (true, false));
        assert_eq!(wino(0.8, 2.0), (true, false));
        assert_eq!(wino(2.0, 0.94), (false, true));
    }

    #[test]
    fn chooses_the_winograd_tile_within_the_margin() {
        // The direct tile takes 1.0 ms; Winograd's model tile is F(4x4, 3x3).
        let millis = ms(&[1.0, 2.0, 2.0, 2.0, 2.0]);
        let t = |f2, f4| {
            let times = WinogradTimes {
                rule: true,
                model_tile: WinogradTile::F4,
                f32: [Some(f2), Some(f4)],
                f16: None,
            };
            let t = choose(key(), f32(ConvTile::T64x64), millis, None, None, times);
            assert_eq!(t.model_winograd_tile, WinogradTile::F4);
            (t.winograd_tile, t.winograd)
        };
        // F(2x2, 3x3) 2% faster: the model's tile stays; 5% faster: it runs.
        assert_eq!(t(0.49, 0.5), (WinogradTile::F4, true));
        assert_eq!(t(0.475, 0.5), (WinogradTile::F2, true));
        // Winograd against direct with the chosen tile's time: F(2x2, 3x3) at 0.9 ms beats
        // the direct 1.0 where F(4x4, 3x3) took 2.0; neither beats a direct 0.5.
        assert_eq!(t(0.9, 2.0), (WinogradTile::F2, true));
        let times = WinogradTimes {
            model_tile: WinogradTile::F4,
            f32: [Some(0.9), Some(2.0)],
            ..WinogradTimes::default()
        };
        let fast = ms(&[0.5, 2.0, 2.0, 2.0, 2.0]);
        let t = choose(key(), f32(ConvTile::T64x64), fast, None, None, times);
        assert_eq!((t.winograd_tile, t.winograd), (WinogradTile::F2, false));
        // One tile timed (set with Gpu::set_winograd_tile): that one.
        let times = WinogradTimes {
            rule: true,
            model_tile: WinogradTile::F2,
            f32: [Some(0.5), None],
            f16: None,
        };
        let t = choose(key(), f32(ConvTile::T64x64), millis, None, None, times);
        assert_eq!((t.winograd_tile, t.winograd), (WinogradTile::F2, true));
    }
    #[test]
    fn the_gemms_without_barriers_stay_unless_a_tile_beats_them_by_the_margin() {
        // Where timed, they are the untuned plan's direct choice: the chosen tile (64x64, the
        // model's, 1.0 ms) must be the margin faster to replace them.
        let millis = ms(&[1.0, 2.0, 2.0, 2.0, 2.0]);
        let t = |lanes: Option<f64>, times: WinogradTimes| {
            choose(key(), f32(ConvTile::T64x64), millis, None, lanes, times)
        };
        let none = WinogradTimes::default();
        let kept = t(Some(1.02), none);
        assert!(kept.lanes && !kept.direct_moved(), "{kept:?}");
        assert_eq!(kept.lanes_millis, Some(1.02));
        let replaced = t(Some(1.05), none);
        assert!(!replaced.lanes && replaced.direct_moved(), "{replaced:?}");
        assert_eq!(replaced.tile, f32(ConvTile::T64x64));
        // Not timed: the tiles alone, as before.
        let untimed = t(None, none);
        assert!(!untimed.lanes && !untimed.direct_moved());
        // Winograd against them where they are the direct choice: 0.6 ms direct, so
        // Winograd's 0.7 loses though it beats the tile.
        let wino = |ms| WinogradTimes {
            model_tile: WinogradTile::F4,
            f32: [None, Some(ms)],
            ..WinogradTimes::default()
        };
        let t2 = t(Some(0.6), wino(0.7));
        assert!(t2.lanes && !t2.winograd, "{t2:?}");
        let t2 = t(Some(0.6), wino(0.5));
        assert!(t2.winograd, "{t2:?}");
    }
}
