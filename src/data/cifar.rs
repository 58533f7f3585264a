//! CIFAR-10 binary version (`cifar-10-batches-bin`): each record is one label byte followed by
//! 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32x32 row-major), so CHW already.

use super::{Dataset, names};
use crate::error::{Error, Result};

/// The standard CIFAR-10 class names, label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Per-channel mean of the CIFAR-10 training images (pixels scaled to `0..1`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 1 + PIXELS;

/// Parse one CIFAR-10 binary batch file (any number of records) with the standard class names.
/// `name` (usually the path) is used in errors.
pub fn parse_cifar10(bytes: &[u8], name: &str) -> Result<Dataset> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::format(
            name,
            format!(
                "CIFAR-10 binary length {} is not a positive multiple of the {RECORD}-byte record \
                 (1 label byte + 3x32x32 pixels)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as usize >= CIFAR10_CLASSES.len() {
            return Err(Error::format(
                name,
                format!("record {i} has label {} (CIFAR-10 labels are 0..9)", rec[0]),
            ));
        }
        labels.push(rec[0] as u32);
        images.extend_from_slice(&rec[1..]);
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: names(&CIFAR10_CLASSES),
    })
}

/// Parse `batches.meta.txt` (one class name per line, blank lines ignored); there must be 10.
pub fn parse_cifar10_meta(text: &str, name: &str) -> Result<Vec<String>> {
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if classes.len() != CIFAR10_CLASSES.len() {
        return Err(Error::format(
            name,
            format!(
                "expected 10 class names, one per line, found {}",
                classes.len()
            ),
        ));
    }
    Ok(classes)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use super::*;

    /// Load the training set (`data_batch_1.bin` .. `data_batch_5.bin`) or the test set
    /// (`test_batch.bin`) from `dir` (or from `dir/cifar-10-batches-bin` when `dir` is the parent
    /// of the extracted archive). Class names come from `batches.meta.txt` when present.
    pub fn load_cifar10_dir(dir: impl AsRef<Path>, train: bool) -> Result<Dataset> {
        let mut dir = dir.as_ref().to_path_buf();
        let nested = dir.join("cifar-10-batches-bin");
        if !dir.join("test_batch.bin").exists()
            && !dir.join("data_batch_1.bin").exists()
            && nested.is_dir()
        {
            dir = nested;
        }
        let files: Vec<String> = if train {
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
        } else {
            vec!["test_batch.bin".to_string()]
        };
        let mut all: Option<Dataset> = None;
        for f in files {
            let path = dir.join(f);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let part = parse_cifar10(&bytes, &path.display().to_string())?;
            match &mut all {
                None => all = Some(part),
                Some(d) => d.extend(&part)?,
            }
        }
        let mut data = all.expect("at least one batch file");
        let meta = dir.join("batches.meta.txt");
        if meta.is_file() {
            let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(&meta, e))?;
            data.classes = parse_cifar10_meta(&text, &meta.display().to_string())?;
        }
        Ok(data)
    }
}
