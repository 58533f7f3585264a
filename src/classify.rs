//! Inference: classify images with a trained network, from files (native) or from pixels in
//! memory (everywhere, including the browser).
//!
//! Preprocessing is torchvision's `Resize(size)` + `CenterCrop(size)` + `Normalize(mean, std)`;
//! grayscale or RGBA input is converted to the model's channel count.

use crate::data::preprocess_rgba;
use crate::nn::ResNet;
use crate::tensor::Tensor;
use crate::{Error, Result};

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
    /// A classifier with ImageNet normalisation, 224-pixel crops and numeric labels. Mean and std
    /// of one value per channel are expected; single values are repeated over the channels.
    pub fn new(model: ResNet) -> Classifier {
        let c = model.config().in_channels;
        let labels = (0..model.config().num_classes)
            .map(|i| i.to_string())
            .collect();
        let (mean, std) = if c == 3 {
            (
                crate::data::IMAGENET_MEAN.to_vec(),
                crate::data::IMAGENET_STD.to_vec(),
            )
        } else {
            (vec![0.5; c], vec![0.5; c])
        };
        Classifier {
            model,
            labels,
            mean,
            std,
            size: 224,
        }
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
        /// Load weights from a safetensors file, inferring the architecture.
        pub fn load(gpu: &crate::Gpu, weights: impl AsRef<Path>) -> Result<Classifier> {
            let dict = crate::io::load_safetensors(weights.as_ref())?;
            let (model, _) = ResNet::from_state_dict(gpu, &dict, None, true)?;
            Ok(Classifier::new(model))
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
