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
pub use native::{load_named, load_named_splits};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::data::{Dataset, Progress};
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
        let need = || folder_dir(name, dir);
        let ds = match name {
            "fashion-mnist" => super::super::load_fashion_mnist(dir, train)?,
            "mnist" => super::super::load_mnist_dir(need()?, train, &super::super::MNIST_CLASSES)?,
            "cifar10" => super::super::load_cifar10_dir(need()?, train)?,
            "folder" => {
                let d = need()?;
                return match split_folders(d) {
                    Some((train_dir, test_dir)) => {
                        let p = if train { train_dir } else { test_dir };
                        super::super::load_image_folder(p, size, channels)
                    }
                    None => {
                        let (all, warnings) = super::super::load_image_folder(d, size, channels)?;
                        let (tr, te) = split_folder(all)?;
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

    /// The training and test splits of a named data set, as [`load_named`] gives them, with the
    /// warnings of both loads: a single image folder (no `train/`) is decoded once and split,
    /// not once per split. `progress(decoded, total)` follows the decoding of folder images
    /// (one folder after another); the other data sets load without calling it.
    pub fn load_named_splits(
        name: &str,
        dir: Option<&Path>,
        size: usize,
        channels: usize,
        progress: &Progress<'_>,
    ) -> Result<(Dataset, Dataset, Vec<String>)> {
        if name != "folder" {
            let (train, _) = load_named(name, dir, true, size, channels)?;
            let (test, _) = load_named(name, dir, false, size, channels)?;
            return Ok((train, test, Vec::new()));
        }
        let d = folder_dir(name, dir)?;
        let load =
            |p: &Path| super::super::load_image_folder_with_progress(p, size, channels, progress);
        match split_folders(d) {
            Some((train_dir, test_dir)) => {
                let (train, mut warnings) = load(&train_dir)?;
                let (test, more) = load(&test_dir)?;
                warnings.extend(more);
                Ok((train, test, warnings))
            }
            None => {
                let (all, warnings) = load(d)?;
                let (train, test) = split_folder(all)?;
                Ok((train, test, warnings))
            }
        }
    }

    fn folder_dir<'a>(name: &str, dir: Option<&'a Path>) -> Result<&'a Path> {
        dir.ok_or_else(|| Error::Invalid(format!("--dataset {name} needs --data-dir DIR")))
    }

    /// `d/train` and `d/test` (or `d/val`) where `d` has both.
    fn split_folders(d: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        let test = ["test", "val"]
            .iter()
            .map(|s| d.join(s))
            .find(|p| p.is_dir())?;
        let train = d.join("train");
        train.is_dir().then_some((train, test))
    }

    /// The 80/20 split of a single folder's images: (training, test).
    fn split_folder(all: Dataset) -> Result<(Dataset, Dataset)> {
        let hold = (all.len() / 5).max(1);
        all.split(hold, FOLDER_SPLIT_SEED)
    }
}
