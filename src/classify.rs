//! Inference: classify images with a trained network, from files (native) or from pixels in
//! memory (everywhere, including the browser).
//!
//! Preprocessing is torchvision's `Resize(size)` + `CenterCrop(size)` + `Normalize(mean, std)`;
//! grayscale or RGBA input is converted to the model's channel count.

use crate::data::{
    CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD,
    preprocess_rgba,
};
use crate::io::StateDict;
use crate::nn::{ResNet, Stem};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;

/// One class of a prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Class index.
    pub class: usize,
    /// Class name (the index as text when there are no labels).
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// A model plus its preprocessing and class names.
pub struct Classifier {
    /// The network (used in eval mode).
    pub model: ResNet,
    /// One name per class.
    pub labels: Vec<String>,
    /// Per-channel normalisation mean (values in `0..1`).
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f32>,
    /// Side of the square crop fed to the network.
    pub size: usize,
}

/// Safetensors metadata describing how a model's inputs are prepared and what its classes are,
/// read back by [`Classifier::from_state_dict`].
pub fn preprocessing_metadata(
    labels: &[String],
    mean: &[f32],
    std: &[f32],
    size: usize,
    config: &crate::nn::ResNetConfig,
) -> HashMap<String, String> {
    let json = |v: &[f32]| serde_json::to_string(v).expect("numbers serialise");
    HashMap::from([
        (
            "labels".to_string(),
            serde_json::to_string(labels).expect("strings serialise"),
        ),
        ("mean".to_string(), json(mean)),
        ("std".to_string(), json(std)),
        ("input_size".to_string(), size.to_string()),
        ("architecture".to_string(), config.to_string()),
    ])
}

/// Parse a labels file: one class name per line (blank trailing lines ignored). `name` is used in
/// errors; `classes` is the model's class count, which the line count must equal.
pub fn parse_labels(text: &str, name: &str, classes: usize) -> Result<Vec<String>> {
    let labels: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if labels.len() != classes {
        return Err(Error::format(
            name,
            format!(
                "has {} labels but the model has {classes} classes",
                labels.len()
            ),
        ));
    }
    Ok(labels)
}

impl Classifier {
    /// A classifier with the default preprocessing for the architecture and numeric labels:
    /// one input channel → 28-pixel crops with Fashion-MNIST's statistics; three channels and the
    /// CIFAR stem → 32 pixels, CIFAR-10's; three channels otherwise → 224 pixels, ImageNet's.
    pub fn new(model: ResNet) -> Classifier {
        let config = model.config();
        let c = config.in_channels;
        let labels = (0..config.num_classes).map(|i| i.to_string()).collect();
        let (size, mean, std) = match (c, config.stem) {
            (1, _) => (28, FASHION_MNIST_MEAN.to_vec(), FASHION_MNIST_STD.to_vec()),
            (3, Stem::Cifar) => (32, CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec()),
            (3, _) => (224, IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
            _ => (224, vec![0.5; c], vec![0.5; c]),
        };
        Classifier {
            model,
            labels,
            mean,
            std,
            size,
        }
    }

    /// A classifier for a state dict: the architecture is inferred, and the preprocessing and
    /// class names come from the file's metadata (as written by [`Classifier::metadata`], the
    /// train example and the browser trainer) where present, else from [`Classifier::new`].
    /// `name` names the file in errors.
    pub fn from_state_dict(gpu: &crate::Gpu, dict: &StateDict, name: &str) -> Result<Classifier> {
        let (model, _) = ResNet::from_state_dict(gpu, dict, None, true)?;
        let mut c = Classifier::new(model);
        let meta = dict.metadata();
        let numbers = |key: &str| -> Result<Option<Vec<f32>>> {
            meta.get(key)
                .map(|s| {
                    serde_json::from_str::<Vec<f32>>(s).map_err(|e| {
                        Error::format(
                            name,
                            format!("metadata `{key}` is not a JSON array of numbers: {e}"),
                        )
                    })
                })
                .transpose()
        };
        if let Some(s) = meta.get("input_size") {
            c.size = s
                .trim()
                .parse()
                .ok()
                .filter(|&v: &usize| v > 0)
                .ok_or_else(|| {
                    Error::format(
                        name,
                        format!("metadata `input_size` {s:?} is not a positive number"),
                    )
                })?;
        }
        let mean = numbers("mean")?.unwrap_or_else(|| c.mean.clone());
        let std = numbers("std")?.unwrap_or_else(|| c.std.clone());
        c = c
            .with_normalization(&mean, &std)
            .map_err(|e| Error::format(name, e))?;
        if let Some(s) = meta.get("labels") {
            let labels: Vec<String> = serde_json::from_str(s).map_err(|e| {
                Error::format(
                    name,
                    format!("metadata `labels` is not a JSON array of strings: {e}"),
                )
            })?;
            c = c.with_labels(labels).map_err(|e| Error::format(name, e))?;
        }
        Ok(c)
    }

    /// The preprocessing and class names as safetensors metadata (`labels`, `mean`, `std` as
    /// JSON arrays, `input_size`, `architecture`), so [`Classifier::from_state_dict`] restores
    /// them.
    pub fn metadata(&self) -> HashMap<String, String> {
        preprocessing_metadata(
            &self.labels,
            &self.mean,
            &self.std,
            self.size,
            self.model.config(),
        )
    }

    /// Set the class names (must match the class count).
    pub fn with_labels(mut self, labels: Vec<String>) -> Result<Classifier> {
        if labels.len() != self.model.config().num_classes {
            return Err(Error::Invalid(format!(
                "{} labels given for a model with {} classes",
                labels.len(),
                self.model.config().num_classes
            )));
        }
        self.labels = labels;
        Ok(self)
    }

    /// Set the normalisation; one value is repeated over every channel.
    pub fn with_normalization(mut self, mean: &[f32], std: &[f32]) -> Result<Classifier> {
        let c = self.model.config().in_channels;
        let expand = |v: &[f32], what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.to_vec()),
                n => Err(Error::Invalid(format!(
                    "{what} has {n} values; the model takes {c} channels (give 1 or {c})"
                ))),
            }
        };
        self.mean = expand(mean, "mean")?;
        self.std = expand(std, "std")?;
        if self.std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(Error::Invalid(format!(
                "std {:?} must be positive",
                self.std
            )));
        }
        Ok(self)
    }

    /// Set the crop size.
    pub fn with_size(mut self, size: usize) -> Classifier {
        self.size = size;
        self
    }

    /// Preprocess RGBA pixels (`width * height * 4` bytes) into the network's input layout.
    pub fn preprocess_rgba(&self, rgba: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
        let c = self.model.config().in_channels;
        preprocess_rgba(rgba, width, height, self.size, c, &self.mean, &self.std)
    }

    /// Logits `[N, classes]` for preprocessed images (`N * C * size * size` values).
    pub fn logits(&mut self, images: &[f32]) -> Result<Tensor> {
        let c = self.model.config().in_channels;
        let per = c * self.size * self.size;
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(Error::shape(
                "classify",
                format!(
                    "{} values are not a whole number of {c}x{}x{} images",
                    images.len(),
                    self.size,
                    self.size
                ),
            ));
        }
        let n = images.len() / per;
        let x = Tensor::from_slice(self.model.gpu(), &[n, c, self.size, self.size], images)?;
        self.model.infer(&x)
    }

    /// Top-`k` predictions per image for preprocessed images (async; works on the web).
    pub async fn classify_preprocessed(
        &mut self,
        images: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        let logits = self.logits(images)?;
        let probs = crate::ops::softmax(&logits)?.read().await?;
        let classes = self.model.config().num_classes;
        Ok(probs
            .chunks(classes)
            .map(|row| self.top_k(row, k))
            .collect())
    }

    /// Top-`k` predictions for RGBA pixels of any size (async; works on the web).
    pub async fn classify_rgba(
        &mut self,
        rgba: &[u8],
        width: usize,
        height: usize,
        k: usize,
    ) -> Result<Vec<Prediction>> {
        let x = self.preprocess_rgba(rgba, width, height)?;
        Ok(self.classify_preprocessed(&x, k).await?.remove(0))
    }

    fn top_k(&self, probs: &[f32], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                class: i,
                label: self.labels[i].clone(),
                probability: probs[i],
            })
            .collect()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::path::Path;

    impl Classifier {
        /// Load weights from a safetensors file, inferring the architecture and taking the
        /// preprocessing and class names from its metadata (see [`Classifier::from_state_dict`]).
        pub fn load(gpu: &crate::Gpu, weights: impl AsRef<Path>) -> Result<Classifier> {
            let path = weights.as_ref();
            let dict = crate::io::load_safetensors(path)?;
            Classifier::from_state_dict(gpu, &dict, &path.display().to_string())
        }

        /// Read class names from a file, one per line.
        pub fn with_labels_file(self, path: impl AsRef<Path>) -> Result<Classifier> {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let labels = parse_labels(
                &text,
                &path.display().to_string(),
                self.model.config().num_classes,
            )?;
            self.with_labels(labels)
        }

        /// Decode and preprocess an image file (JPEG/PNG).
        pub fn preprocess_file(&self, path: impl AsRef<Path>) -> Result<Vec<f32>> {
            let path = path.as_ref();
            let img = image::ImageReader::open(path)
                .map_err(|e| Error::io(path, e))?
                .with_guessed_format()
                .map_err(|e| Error::io(path, e))?
                .decode()
                .map_err(|e| {
                    Error::format(path.display(), format!("cannot decode the image: {e}"))
                })?;
            let c = self.model.config().in_channels;
            crate::data::preprocess_image(&img, self.size, c, &self.mean, &self.std)
        }

        /// Top-`k` predictions for each image file, run in batches of `batch` (blocking).
        pub fn classify_files(
            &mut self,
            paths: &[impl AsRef<Path>],
            k: usize,
            batch: usize,
        ) -> Result<Vec<Vec<Prediction>>> {
            let mut out = Vec::with_capacity(paths.len());
            for chunk in paths.chunks(batch.max(1)) {
                let mut images = Vec::new();
                for p in chunk {
                    images.extend(self.preprocess_file(p)?);
                }
                out.extend(pollster::block_on(self.classify_preprocessed(&images, k))?);
            }
            Ok(out)
        }
    }
}
