//! Data sets, augmentation and batching.
//!
//! Everything here runs on the CPU. A [`Dataset`] holds `u8` images in NCHW order with `u32` labels
//! and class names; loaders exist for MNIST / Fashion-MNIST idx files ([`idx`]), CIFAR-10 binary
//! batches ([`cifar`]) and folders of JPEG/PNG images, one sub-folder per class ([`folder`]).
//! [`batch`] turns a data set into normalised, optionally augmented and shuffled `f32` batches,
//! deterministically from an [`Rng`], synchronously or (native only) prefetched on a background
//! thread.
//!
//! Parsing from bytes works everywhere (including wasm32); functions that read files are native-only.

pub mod batch;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod named;

pub use batch::{Augment, Batch, EpochBatches, channel_stats, epoch_batches};
#[cfg(not(target_arch = "wasm32"))]
pub use batch::{PrefetchBatches, prefetch_batches};
#[cfg(not(target_arch = "wasm32"))]
pub use cifar::load_cifar10_dir;
pub use cifar::{CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, parse_cifar10, parse_cifar10_meta};
pub use folder::{
    IMAGENET_MEAN, IMAGENET_STD, preprocess_image, preprocess_rgba, resize_center_crop,
};
#[cfg(not(target_arch = "wasm32"))]
pub use folder::{Progress, load_image_folder, load_image_folder_with_progress};
pub use idx::{
    FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IdxImages, MNIST_CLASSES,
    MNIST_MEAN, MNIST_STD, parse_idx, parse_idx_images, parse_idx_labels,
};
#[cfg(not(target_arch = "wasm32"))]
pub use idx::{
    FASHION_MNIST_DIRS, find_fashion_mnist_dir, load_fashion_mnist, load_idx, load_mnist_dir,
};
pub use named::{DATASET_NAMES, FOLDER_SPLIT_SEED, standard_normalization};
#[cfg(not(target_arch = "wasm32"))]
pub use named::{load_named, load_named_splits};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// An in-memory image classification data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `N*C*H*W` pixel values `0..=255`, NCHW order.
    pub images: Vec<u8>,
    /// `N` labels, each `< classes.len()`.
    pub labels: Vec<u32>,
    /// Channels per image (1 or 3).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names; label `k` is `classes[k]`.
    pub classes: Vec<String>,
}

/// How many samples [`Dataset::split`] holds out for validation: a count or a fraction of the set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Holdout {
    /// Exactly this many samples.
    Count(usize),
    /// This fraction (`0.0..=1.0`) of the samples, rounded to the nearest count.
    Fraction(f64),
}

impl From<usize> for Holdout {
    fn from(n: usize) -> Self {
        Holdout::Count(n)
    }
}
impl From<f64> for Holdout {
    fn from(f: f64) -> Self {
        Holdout::Fraction(f)
    }
}
impl From<f32> for Holdout {
    fn from(f: f32) -> Self {
        Holdout::Fraction(f as f64)
    }
}

impl Dataset {
    /// A data set from its parts, checking that the sizes agree and every label names a class.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        classes: Vec<String>,
    ) -> Result<Dataset> {
        let per = channels * height * width;
        if per == 0 {
            return Err(Error::Invalid(format!(
                "dataset: image shape {channels}x{height}x{width} is empty"
            )));
        }
        if images.len() != labels.len() * per {
            return Err(Error::Invalid(format!(
                "dataset: {} labels need {} pixel bytes ({}x{channels}x{height}x{width}), got {}",
                labels.len(),
                labels.len() * per,
                labels.len(),
                images.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes.len())
        {
            return Err(Error::Invalid(format!(
                "dataset: label {l} of sample {i} is out of range for {} classes",
                classes.len()
            )));
        }
        Ok(Dataset {
            images,
            labels,
            channels,
            height,
            width,
            classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Values per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The CHW pixels of sample `i`. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.image_len();
        &self.images[i * per..(i + 1) * per]
    }

    /// Number of samples per class (index = label).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new data set with the samples at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "dataset subset: index {bad} out of range for {} samples",
                self.len()
            )));
        }
        let per = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Ok(Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
        })
    }

    /// The first `min(limit, len())` samples.
    pub fn take(&self, limit: usize) -> Dataset {
        let n = limit.min(self.len());
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
        }
    }

    /// Split into `(train, val)` by a seeded random permutation: `val` receives `holdout` samples
    /// (a count, e.g. `5000usize`, or a fraction, e.g. `0.1`), `train` the rest. Both keep the
    /// original relative order of their samples. Not stratified.
    pub fn split(&self, holdout: impl Into<Holdout>, seed: u64) -> Result<(Dataset, Dataset)> {
        let n = self.len();
        let val_n = match holdout.into() {
            Holdout::Count(c) => c,
            Holdout::Fraction(f) => {
                if !(0.0..=1.0).contains(&f) {
                    return Err(Error::Invalid(format!(
                        "dataset split: fraction {f} is not in 0..=1"
                    )));
                }
                (f * n as f64).round() as usize
            }
        };
        if val_n > n {
            return Err(Error::Invalid(format!(
                "dataset split: cannot hold out {val_n} of {n} samples"
            )));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        Rng::new(seed).shuffle(&mut perm);
        let mut val_idx = perm[..val_n].to_vec();
        let mut train_idx = perm[val_n..].to_vec();
        val_idx.sort_unstable();
        train_idx.sort_unstable();
        Ok((self.subset(&train_idx)?, self.subset(&val_idx)?))
    }

    /// Append the samples of `other` (same image shape and classes).
    pub fn extend(&mut self, other: &Dataset) -> Result<()> {
        if self.image_shape() != other.image_shape() || self.classes != other.classes {
            return Err(Error::Invalid(format!(
                "dataset extend: shapes {:?} / {:?} or classes differ",
                self.image_shape(),
                other.image_shape()
            )));
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }
}

/// Class names as owned strings.
pub(crate) fn names(classes: &[&str]) -> Vec<String> {
    classes.iter().map(|s| s.to_string()).collect()
}
