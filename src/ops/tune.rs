//! Conv autotuning: with [`Gpu::set_conv_autotune`] on, the first GEMM of each conv shape and
//! pass times every f32 tile ([`ConvTile::ALL`], each with its own split-K plan) on the device
//! and keeps the fastest for every later call, as cuDNN's benchmark mode does. Where the shape
//! can run Winograd F(2x2, 3x3) (a 3x3 kernel of stride 1 and padding 1, see
//! [`crate::ConvAlgo`]), the pass is also timed through it, and under [`crate::ConvAlgo::Auto`]
//! the faster of the two algorithms runs: the thresholds of Auto's rule were estimated for one
//! GPU, and tuning replaces them with this adapter's timings. The default plan comes from a
//! [`TileModel`](super::TileModel), measured on one GPU (an H100) and one CPU adapter; tuning
//! fits the plan to whatever adapter runs it, at the cost of five or more runs of each pass per
//! shape and candidate at the start (for ResNet-18, about forty training steps' worth of
//! convolution work).
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

use super::conv::ConvTile;
use crate::gpu::Gpu;
use crate::{Error, Result};

/// Which GEMM of a convolution a tuned tile serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// The forward pass (also the inference kernels with batch norm fused in).
    Forward,
    /// The input gradient (one tile for all of its sub-pixel phases).
    InputGrad,
    /// The weight gradient.
    WeightGrad,
}

/// A conv shape and pass: the key of a tuned tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

/// The outcome of tuning one [`ConvKey`].
#[derive(Clone, Debug, PartialEq)]
pub struct TunedConv {
    /// The shape and pass.
    pub key: ConvKey,
    /// The tile every later direct run uses.
    pub tile: ConvTile,
    /// The tile the adapter's [`TileModel`](super::TileModel) would have used.
    pub model: ConvTile,
    /// Wall milliseconds per run of the pass with each tile of [`ConvTile::ALL`], in order.
    pub millis: [f64; ConvTile::ALL.len()],
    /// Wall milliseconds per run of the pass through Winograd F(2x2, 3x3), where the shape can
    /// take it (else None).
    pub winograd_millis: Option<f64>,
    /// Whether [`crate::ConvAlgo::Auto`]'s rule runs Winograd here without tuning.
    pub model_winograd: bool,
    /// Whether later calls under [`crate::ConvAlgo::Auto`] run Winograd (then `tile` serves
    /// [`crate::ConvAlgo::Direct`] only). Under [`crate::ConvAlgo::Winograd`] they always do.
    pub winograd: bool,
}

/// One way of running a pass that tuning times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// The direct GEMM with this tile.
    Tile(ConvTile),
    /// Winograd F(2x2, 3x3) (its GEMMs on the model's tiles).
    Winograd,
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
/// candidate) if this is the key's first call; `model()` gives the model's tile, and `winograd`
/// whether the shape can run Winograd (Some) and if so whether Auto's rule would.
pub(crate) fn tuned(
    gpu: &Gpu,
    key: ConvKey,
    model: impl FnOnce() -> ConvTile,
    winograd: Option<bool>,
    trial: impl FnMut(Candidate) -> Result<()>,
) -> Result<TunedConv> {
    if let Some(t) = gpu.tuned_conv(&key) {
        return Ok(t);
    }
    let mut candidates: Vec<Candidate> = ConvTile::ALL.into_iter().map(Candidate::Tile).collect();
    if winograd.is_some() {
        candidates.push(Candidate::Winograd);
    }
    let timed = time_candidates(gpu, &candidates, trial)?;
    let mut millis = [f64::INFINITY; ConvTile::ALL.len()];
    millis.copy_from_slice(&timed[..ConvTile::ALL.len()]);
    let winograd_millis = winograd.map(|_| timed[ConvTile::ALL.len()]);
    let tuned = choose(
        key,
        model(),
        millis,
        winograd.unwrap_or(false),
        winograd_millis,
    );
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

/// The model's tile unless another is at least [`MARGIN`] faster, then the fastest; and
/// Winograd (where timed) against that tile, the model's choice (`model_winograd`) unless the
/// other is at least [`MARGIN`] faster.
fn choose(
    key: ConvKey,
    model: ConvTile,
    millis: [f64; ConvTile::ALL.len()],
    model_winograd: bool,
    winograd_millis: Option<f64>,
) -> TunedConv {
    let index = |t: ConvTile| ConvTile::ALL.iter().position(|&a| a == t).expect("a tile");
    let best = (0..millis.len())
        .min_by(|&a, &b| millis[a].total_cmp(&millis[b]))
        .expect("tiles");
    let tile = if millis[best] < (1.0 - MARGIN) * millis[index(model)] {
        ConvTile::ALL[best]
    } else {
        model
    };
    let direct = millis[index(tile)];
    let winograd = winograd_millis.is_some_and(|wino| {
        if model_winograd {
            direct >= (1.0 - MARGIN) * wino
        } else {
            wino < (1.0 - MARGIN) * direct
        }
    });
    TunedConv {
        key,
        tile,
        model,
        millis,
        winograd_millis,
        model_winograd,
        winograd,
    }
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

    fn tuning(&self) -> std::sync::MutexGuard<'_, ConvTuning> {
        self.0.conv_tuning.lock().unwrap_or_else(|e| e.into_inner())
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
        }
    }

    #[test]
    fn keeps_the_model_tile_within_the_margin() {
        let choose = |model, millis| choose(key(), model, millis, false, None);
        // 64x128 is the model's; 128x128 is 2% faster: noise, not a reason to switch.
        let t = choose(ConvTile::T64x128, [2.0, 3.0, 1.0, 0.98, 4.0]);
        assert_eq!(t.tile, ConvTile::T64x128);
        // 5% faster: switch.
        let t = choose(ConvTile::T64x128, [2.0, 3.0, 1.0, 0.95, 4.0]);
        assert_eq!(t.tile, ConvTile::T128x128);
        assert_eq!(t.model, ConvTile::T64x128);
        // The fastest, not the first faster one.
        let t = choose(ConvTile::T128x128, [0.5, 0.4, 0.9, 1.0, 0.6]);
        assert_eq!(t.tile, ConvTile::T128x64);
        assert!(!t.winograd && t.winograd_millis.is_none());
    }

    #[test]
    fn winograd_against_the_chosen_tile_within_the_margin() {
        // The chosen tile (128x64, the model's) takes 1.0 ms; 64x64's 0.98 is within the margin.
        let millis = [0.98, 1.0, 2.0, 2.0, 2.0];
        let t = |model_winograd, wino| {
            let t = choose(key(), ConvTile::T128x64, millis, model_winograd, Some(wino));
            assert_eq!(t.tile, ConvTile::T128x64);
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
        assert!(!choose(key(), ConvTile::T128x64, millis, false, None).winograd);
    }
}
