//! Conv autotuning: with [`Gpu::set_conv_autotune`] on, the first GEMM of each conv shape and
//! pass times every f32 tile ([`ConvTile::ALL`], each with its own split-K plan) on the device
//! and keeps the fastest for every later call, as cuDNN's benchmark mode does. The default plan
//! comes from a [`TileModel`](super::TileModel), measured on one GPU (an H100) and one CPU
//! adapter; tuning fits the plan to whatever adapter runs it, at the cost of five or more runs
//! of each pass per shape and tile at the start (for ResNet-18, about forty training steps'
//! worth of convolution work).
//!
//! Timing is wall-clock around [`Gpu::synchronize`]: a first run compiles the pipelines, a
//! second estimates the time, and enough repeats to fill [`TARGET_SECS`] (at most
//! [`MAX_REPEATS`]) give a figure. The tiles take turns for [`ROUNDS`] rounds and each keeps its
//! best figure: a GPU raises its clocks under sustained load (on an H200 the same kernels ran
//! up to 3.5x faster a few hundred milliseconds into a burst of work), and tiles timed one
//! after the other would favour the last ones. The model's tile stays unless another is at least
//! [`MARGIN`] faster, so noise does not swap near-equal tiles. Tuning submits the work recorded
//! so far first (the training step's one-submit rule holds again once every shape is tuned).
//! The trials read the op's real inputs and write outputs of their own.
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
    /// The tile every later call uses.
    pub tile: ConvTile,
    /// The tile the adapter's [`TileModel`](super::TileModel) would have used.
    pub model: ConvTile,
    /// Wall milliseconds per run of the pass with each tile of [`ConvTile::ALL`], in order.
    pub millis: [f64; ConvTile::ALL.len()],
}

/// Timed repeats aim at this many seconds per tile...
pub const TARGET_SECS: f64 = 0.002;
/// ...with at most this many repeats.
pub const MAX_REPEATS: usize = 20;
/// Rounds in which every tile is timed once; each tile keeps its fastest round.
pub const ROUNDS: usize = 3;
/// Another tile replaces the model's only when it is at least this much faster (a fraction).
pub const MARGIN: f64 = 0.03;

/// The tuned tile for `key`, tuning it now with `trial` (which runs the pass once with the given
/// tile) if this is the key's first call; `model()` gives the model's choice.
pub(crate) fn tuned_tile(
    gpu: &Gpu,
    key: ConvKey,
    model: impl FnOnce() -> ConvTile,
    trial: impl FnMut(ConvTile) -> Result<()>,
) -> Result<ConvTile> {
    if let Some(t) = gpu.tuned_conv(&key) {
        return Ok(t.tile);
    }
    let tuned = choose(key, model(), time_tiles(gpu, trial)?);
    let tile = tuned.tile;
    gpu.record_tuned_conv(tuned);
    Ok(tile)
}

/// Wall milliseconds per run of `trial` with each tile of [`ConvTile::ALL`].
#[cfg(not(target_arch = "wasm32"))]
fn time_tiles(
    gpu: &Gpu,
    mut trial: impl FnMut(ConvTile) -> Result<()>,
) -> Result<[f64; ConvTile::ALL.len()]> {
    use std::time::Instant;
    let mut timed = |tile: ConvTile, repeats: usize| -> Result<f64> {
        gpu.synchronize()?;
        let start = Instant::now();
        for _ in 0..repeats {
            trial(tile)?;
        }
        gpu.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / repeats as f64)
    };
    let mut repeats = [1; ConvTile::ALL.len()];
    for (i, tile) in ConvTile::ALL.into_iter().enumerate() {
        timed(tile, 1)?; // compiles the pipelines
        let estimate = timed(tile, 1)?;
        repeats[i] = ((TARGET_SECS / estimate.max(1e-9)).ceil() as usize).clamp(1, MAX_REPEATS);
    }
    let mut millis = [f64::INFINITY; ConvTile::ALL.len()];
    for _ in 0..ROUNDS {
        for (i, tile) in ConvTile::ALL.into_iter().enumerate() {
            millis[i] = millis[i].min(1e3 * timed(tile, repeats[i])?);
        }
    }
    Ok(millis)
}

/// The model's tile unless another is at least [`MARGIN`] faster, then the fastest.
fn choose(key: ConvKey, model: ConvTile, millis: [f64; ConvTile::ALL.len()]) -> TunedConv {
    let index = |t: ConvTile| ConvTile::ALL.iter().position(|&a| a == t).expect("a tile");
    let best = (0..millis.len())
        .min_by(|&a, &b| millis[a].total_cmp(&millis[b]))
        .expect("tiles");
    let tile = if millis[best] < (1.0 - MARGIN) * millis[index(model)] {
        ConvTile::ALL[best]
    } else {
        model
    };
    TunedConv {
        key,
        tile,
        model,
        millis,
    }
}

#[cfg(target_arch = "wasm32")]
fn time_tiles(
    _gpu: &Gpu,
    _trial: impl FnMut(ConvTile) -> Result<()>,
) -> Result<[f64; ConvTile::ALL.len()]> {
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

    fn tuned_conv(&self, key: &ConvKey) -> Option<TunedConv> {
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
        // 64x128 is the model's; 128x128 is 2% faster: noise, not a reason to switch.
        let t = choose(key(), ConvTile::T64x128, [2.0, 3.0, 1.0, 0.98, 4.0]);
        assert_eq!(t.tile, ConvTile::T64x128);
        // 5% faster: switch.
        let t = choose(key(), ConvTile::T64x128, [2.0, 3.0, 1.0, 0.95, 4.0]);
        assert_eq!(t.tile, ConvTile::T128x128);
        assert_eq!(t.model, ConvTile::T64x128);
        // The fastest, not the first faster one.
        let t = choose(key(), ConvTile::T128x128, [0.5, 0.4, 0.9, 1.0, 0.6]);
        assert_eq!(t.tile, ConvTile::T128x64);
    }
}
