//! Data sets by name, as the examples' `--dataset` option takes them.

use super::{
    CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD,
};

/// The names [`load_named`] accepts.
pub const DATASET_NAMES: [&str; 4] = ["fashion-mnist", "mnist", "cifar10", "folder"];

/// Seed of the 80/20 split of a single image folder, fixed so that training and evaluation hold
/// out the same images.
pub const FOLDER_SPLIT_SEED: u64 = 0x7E57;

/// The usual normalisation (mean, std per channel) of a named data set; `None` for folders, whose
/// statistics come from their training images.
pub fn standard_normalization(name: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    match name {
        "fashion-mnist" => Some((FASHION_MNIST_MEAN.to_vec(), FASHION_MNIST_STD.to_vec())),
        "mnist" => Some((MNIST_MEAN.to_vec(), MNIST_STD.to_vec())),
        "cifar10" => Some((CIFAR10_MEAN.to_vec(), CIFAR10_STD.to_vec())),
        _ => None,
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::load_named;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::data::Dataset;
    use crate::error::{Error, Result};
    use std::path::Path;

    /// Load the training (`train = true`) or test split of a named data set from `dir` (only
    /// Fashion-MNIST has a default location). `folder`: a folder with `train/` and `test/` (or
    /// `val/`) sub-folders of class folders uses them; a single folder of class folders is split
    /// 80/20 with [`FOLDER_SPLIT_SEED`]. Folder images are resized and center-cropped to `size`
    /// with `channels` channels. Returns the data set and the loader's warnings (skipped files).
    pub fn load_named(
        name: &str,
        dir: Option<&Path>,
        train: bool,
        size: usize,
        channels: usize,
    ) -> Result<(Dataset, Vec<String>)> {
        let need =
            || dir.ok_or_else(|| Error::Invalid(format!("--dataset {name} needs --data-dir DIR")));
        let ds = match name {
            "fashion-mnist" => super::super::load_fashion_mnist(dir, train)?,
            "mnist" => super::super::load_mnist_dir(need()?, train, &super::super::MNIST_CLASSES)?,
            "cifar10" => super::super::load_cifar10_dir(need()?, train)?,
            "folder" => {
                let d = need()?;
                let test_dir = ["test", "val"]
                    .iter()
                    .map(|s| d.join(s))
                    .find(|p| p.is_dir());
                return match (d.join("train").is_dir(), test_dir) {
                    (true, Some(t)) => {
                        let p = if train { d.join("train") } else { t };
                        super::super::load_image_folder(p, size, channels)
                    }
                    _ => {
                        let (all, warnings) = super::super::load_image_folder(d, size, channels)?;
                        let hold = (all.len() / 5).max(1);
                        let (tr, te) = all.split(hold, FOLDER_SPLIT_SEED)?;
                        Ok((if train { tr } else { te }, warnings))
                    }
                };
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown data set {other:?}: expected one of {}",
                    DATASET_NAMES.join(", ")
                )));
            }
        };
        Ok((ds, Vec::new()))
    }
}
