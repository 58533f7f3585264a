//! Normalisation, augmentation and batching.
//!
//! An epoch is planned up front by [`epoch_batches`]: the sample order (shuffled by the caller's
//! [`Rng`] when one is given) and every sample's random augmentation parameters are all drawn from
//! that `Rng` before the first batch is built. Each batch is then a pure function of the plan, so
//! the same seed always gives the same batches, and the prefetching loader ([`prefetch_batches`],
//! native only) yields exactly what the synchronous iterator yields.

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Per-sample transform: optional random crop with zero padding and random horizontal flip, then
/// normalisation `(v / 255 - mean[c]) / std[c]` (always applied).
///
/// Padding is done on the raw pixels (value 0) before normalisation, as torchvision's
/// `RandomCrop(size, padding)` + `ToTensor` + `Normalize` does. The crop comes before the flip.
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// Random crop with this many pixels of zero padding on each side (0 = off).
    pub pad_crop: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
    /// Per-channel mean (pixels scaled to `0..1`).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Augment {
    /// Normalisation only, no random augmentation (evaluation).
    pub fn normalize(mean: &[f32], std: &[f32]) -> Augment {
        Augment {
            pad_crop: 0,
            hflip: false,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// The usual small-image training augmentation: pad-4 random crop and horizontal flip.
    pub fn crop_flip(mean: &[f32], std: &[f32]) -> Augment {
        Augment {
            pad_crop: 4,
            hflip: true,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    /// Whether the transform draws random numbers.
    pub fn is_random(&self) -> bool {
        self.pad_crop > 0 || self.hflip
    }

    fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::shape(
                "augment",
                format!(
                    "mean ({}) and std ({}) need one value per channel ({channels})",
                    self.mean.len(),
                    self.std.len()
                ),
            ));
        }
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(Error::shape(
                "augment",
                format!("std {:?} must be finite and non-zero", self.std),
            ));
        }
        Ok(())
    }

    /// Apply the transform to one CHW `u8` image with explicit random choices: crop offset
    /// `(dx, dy)` into the padded image (each `0..=2*pad_crop`) and `flip`. Writes `out` (CHW f32).
    /// Output pixel `(y, x)` is padded pixel `(y + dy, x' + dx)` where `x' = W-1-x` when flipped.
    pub fn apply(
        &self,
        src: &[u8],
        shape: [usize; 3],
        dx: usize,
        dy: usize,
        flip: bool,
        out: &mut [f32],
    ) {
        let [c, h, w] = shape;
        let p = self.pad_crop as isize;
        for ch in 0..c {
            let (m, s) = (self.mean[ch], self.std[ch]);
            let zero = -m / s;
            for y in 0..h {
                let sy = y as isize + dy as isize - p;
                let orow = &mut out[(ch * h + y) * w..(ch * h + y + 1) * w];
                if sy < 0 || sy >= h as isize {
                    orow.fill(zero);
                    continue;
                }
                let srow = &src[(ch * h + sy as usize) * w..(ch * h + sy as usize + 1) * w];
                for (x, o) in orow.iter_mut().enumerate() {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx as isize - p;
                    *o = if sx < 0 || sx >= w as isize {
                        zero
                    } else {
                        (srow[sx as usize] as f32 / 255.0 - m) / s
                    };
                }
            }
        }
    }
}

/// One batch: normalised images `[B, C, H, W]` and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `B*C*H*W` values, NCHW.
    pub images: Vec<f32>,
    /// `B` labels.
    pub labels: Vec<u32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Index in the data set of each sample.
    pub indices: Vec<usize>,
}

/// One sample of a planned epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Planned {
    index: usize,
    dx: u16,
    dy: u16,
    flip: bool,
}

/// A planned epoch: order, augmentation choices, batch layout.
#[derive(Clone, Debug)]
struct Plan {
    samples: Vec<Planned>,
    batch_size: usize,
    batches: usize,
    augment: Augment,
}

impl Plan {
    fn new(
        data: &Dataset,
        batch_size: usize,
        rng: Option<&mut Rng>,
        augment: &Augment,
        drop_last: bool,
    ) -> Result<Plan> {
        if batch_size == 0 {
            return Err(Error::shape(
                "epoch_batches",
                "batch size must be at least 1",
            ));
        }
        augment.check(data.channels)?;
        if augment.pad_crop > u16::MAX as usize / 2 {
            return Err(Error::shape(
                "epoch_batches",
                format!("pad_crop {} too large", augment.pad_crop),
            ));
        }
        let n = data.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut samples = Vec::with_capacity(n);
        match rng {
            Some(rng) => {
                rng.shuffle(&mut order);
                let span = 2 * augment.pad_crop + 1;
                for index in order {
                    let (mut dx, mut dy, mut flip) = (augment.pad_crop, augment.pad_crop, false);
                    if augment.pad_crop > 0 {
                        dx = rng.below(span);
                        dy = rng.below(span);
                    }
                    if augment.hflip {
                        flip = rng.next_u64() >> 63 == 1;
                    }
                    samples.push(Planned {
                        index,
                        dx: dx as u16,
                        dy: dy as u16,
                        flip,
                    });
                }
            }
            None => {
                if augment.is_random() {
                    return Err(Error::shape(
                        "epoch_batches",
                        "random augmentation (pad_crop/hflip) needs an Rng; pass Some(rng) or use \
                         Augment::normalize",
                    ));
                }
                let p = augment.pad_crop as u16;
                samples.extend(order.into_iter().map(|index| Planned {
                    index,
                    dx: p,
                    dy: p,
                    flip: false,
                }));
            }
        }
        let batches = if drop_last {
            n / batch_size
        } else {
            n.div_ceil(batch_size)
        };
        Ok(Plan {
            samples,
            batch_size,
            batches,
            augment: augment.clone(),
        })
    }

    fn batch(&self, data: &Dataset, k: usize) -> Batch {
        let start = k * self.batch_size;
        let end = (start + self.batch_size).min(self.samples.len());
        let shape3 = data.image_shape();
        let per = data.image_len();
        let b = end - start;
        let mut images = vec![0f32; b * per];
        let mut labels = Vec::with_capacity(b);
        let mut indices = Vec::with_capacity(b);
        for (s, out) in self.samples[start..end]
            .iter()
            .zip(images.chunks_exact_mut(per))
        {
            let src = data.image(s.index);
            self.augment
                .apply(src, shape3, s.dx as usize, s.dy as usize, s.flip, out);
            labels.push(data.labels[s.index]);
            indices.push(s.index);
        }
        Batch {
            images,
            labels,
            shape: [b, data.channels, data.height, data.width],
            indices,
        }
    }
}

/// Synchronous iterator over one epoch's batches (see [`epoch_batches`]).
pub struct EpochBatches<'a> {
    data: &'a Dataset,
    plan: Plan,
    next: usize,
}

impl Iterator for EpochBatches<'_> {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.plan.batches {
            return None;
        }
        let b = self.plan.batch(self.data, self.next);
        self.next += 1;
        Some(b)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.batches - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for EpochBatches<'_> {}

/// One epoch of batches of `batch_size` samples (the last one smaller unless `drop_last`).
///
/// With `shuffle_rng = Some(rng)` the order is a random permutation and `augment`'s random crop
/// and flip are drawn from the same `rng` (all at this call, so the `rng` state afterwards is fixed
/// and can be checkpointed). With `None` the order is the data set's and `augment` must not be
/// random (use [`Augment::normalize`]). Normalisation with `augment.mean`/`augment.std` is always
/// applied.
pub fn epoch_batches<'a>(
    dataset: &'a Dataset,
    batch_size: usize,
    shuffle_rng: Option<&mut Rng>,
    augment: &Augment,
    drop_last: bool,
) -> Result<EpochBatches<'a>> {
    let plan = Plan::new(dataset, batch_size, shuffle_rng, augment, drop_last)?;
    Ok(EpochBatches {
        data: dataset,
        plan,
        next: 0,
    })
}

/// Per-channel mean and (population) standard deviation of a data set's pixels scaled to `0..1`.
pub fn channel_stats(dataset: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let (c, plane) = (dataset.channels, dataset.height * dataset.width);
    let mut sum = vec![0u64; c];
    let mut sq = vec![0u64; c];
    for img in dataset.images.chunks_exact(dataset.image_len().max(1)) {
        for ch in 0..c {
            let (mut s, mut q) = (0u64, 0u64);
            for &v in &img[ch * plane..(ch + 1) * plane] {
                s += v as u64;
                q += v as u64 * v as u64;
            }
            sum[ch] += s;
            sq[ch] += q;
        }
    }
    let count = (dataset.len() * plane).max(1) as f64;
    let mut mean = Vec::with_capacity(c);
    let mut std = Vec::with_capacity(c);
    for ch in 0..c {
        let m = sum[ch] as f64 / count / 255.0;
        let var = (sq[ch] as f64 / count / (255.0 * 255.0) - m * m).max(0.0);
        mean.push(m as f32);
        std.push(var.sqrt() as f32);
    }
    (mean, std)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, sync_channel};
    use std::thread::JoinHandle;

    use super::*;

    /// Iterator over one epoch's batches prepared on a background thread (see [`prefetch_batches`]).
    /// Dropping it early stops the thread.
    pub struct PrefetchBatches {
        rx: Option<Receiver<Batch>>,
        thread: Option<JoinHandle<()>>,
        left: usize,
    }

    impl Iterator for PrefetchBatches {
        type Item = Batch;
        fn next(&mut self) -> Option<Batch> {
            let b = self.rx.as_ref()?.recv().ok();
            if b.is_some() {
                self.left -= 1;
            }
            b
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.left, Some(self.left))
        }
    }

    impl ExactSizeIterator for PrefetchBatches {}

    impl Drop for PrefetchBatches {
        fn drop(&mut self) {
            // Closing the channel makes the producer's next send fail, so it exits.
            drop(self.rx.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Like [`epoch_batches`], but the batches are built on a background thread, keeping up to
    /// `depth` (at least 1) ready batches queued, so loading overlaps GPU work. For the same `rng`
    /// state it yields exactly the batches [`epoch_batches`] yields (the plan is drawn here, on the
    /// caller's thread).
    pub fn prefetch_batches(
        dataset: Arc<Dataset>,
        batch_size: usize,
        shuffle_rng: Option<&mut Rng>,
        augment: &Augment,
        drop_last: bool,
        depth: usize,
    ) -> Result<PrefetchBatches> {
        let plan = Plan::new(&dataset, batch_size, shuffle_rng, augment, drop_last)?;
        let left = plan.batches;
        let (tx, rx) = sync_channel(depth.max(1));
        let thread = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || {
                for k in 0..plan.batches {
                    if tx.send(plan.batch(&dataset, k)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start the prefetch thread: {e}")))?;
        Ok(PrefetchBatches {
            rx: Some(rx),
            thread: Some(thread),
            left,
        })
    }
}
