//! MNIST / Fashion-MNIST idx files (`*-images-idx3-ubyte`, `*-labels-idx1-ubyte`), raw or gzipped.
//!
//! Format: a big-endian header `00 00 08 <ndims>` (unsigned bytes), then `ndims` big-endian `u32`
//! dimension sizes, then the data. Images have 3 dims (count, rows, cols), labels 1 (count).

use std::io::Read;

use super::{Dataset, names};
use crate::error::{Error, Result};

/// Fashion-MNIST class names, label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// MNIST class names (the digits).
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
/// Per-channel mean of the Fashion-MNIST training images (pixels scaled to `0..1`).
pub const FASHION_MNIST_MEAN: [f32; 1] = [0.2860];
/// Per-channel standard deviation of the Fashion-MNIST training images.
pub const FASHION_MNIST_STD: [f32; 1] = [0.3530];
/// Per-channel mean of the MNIST training images.
pub const MNIST_MEAN: [f32; 1] = [0.1307];
/// Per-channel standard deviation of the MNIST training images.
pub const MNIST_STD: [f32; 1] = [0.3081];

/// Images parsed from an idx3 file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// `count * rows * cols` bytes, row-major.
    pub data: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// Rows (height).
    pub rows: usize,
    /// Columns (width).
    pub cols: usize,
}

/// Gunzip `bytes` if they start with the gzip magic `1f 8b`, else borrow them unchanged.
pub(crate) fn maybe_gunzip<'a>(bytes: &'a [u8], name: &str) -> Result<std::borrow::Cow<'a, [u8]>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| Error::format(name, format!("bad gzip data: {e}")))?;
        Ok(std::borrow::Cow::Owned(out))
    } else {
        Ok(std::borrow::Cow::Borrowed(bytes))
    }
}

/// Parse an idx header expecting unsigned-byte data with `ndims` dimensions; returns the dims and
/// the data, checked to have exactly the size the header announces.
fn parse_header<'a>(bytes: &'a [u8], name: &str, ndims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let what = if ndims == 3 {
        "images (idx3)"
    } else {
        "labels (idx1)"
    };
    if bytes.len() < 4 {
        return Err(Error::format(
            name,
            format!(
                "not an idx file: {} bytes is shorter than the 4-byte magic number",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = 0x0800 | ndims as u32;
    if magic != expected {
        return Err(Error::format(
            name,
            format!("wrong magic number 0x{magic:08x} for idx {what}: expected 0x{expected:08x}"),
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(Error::format(
            name,
            format!("truncated header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let body = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let body =
        body.ok_or_else(|| Error::format(name, format!("header sizes {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != body {
        let kind = if data.len() < body {
            "truncated file"
        } else {
            "trailing bytes"
        };
        return Err(Error::format(
            name,
            format!(
                "{kind}: header announces {} = {body} data bytes, found {}",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

/// Parse an idx3 image file (raw or gzipped). `name` (usually the path) is used in errors.
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<IdxImages> {
    let bytes = maybe_gunzip(bytes, name)?;
    let (dims, data) = parse_header(&bytes, name, 3)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(Error::format(
            name,
            format!("empty image size {}x{}", dims[1], dims[2]),
        ));
    }
    Ok(IdxImages {
        data: data.to_vec(),
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
    })
}

/// Parse an idx1 label file (raw or gzipped). `name` (usually the path) is used in errors.
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<u32>> {
    let bytes = maybe_gunzip(bytes, name)?;
    let (_, data) = parse_header(&bytes, name, 1)?;
    Ok(data.iter().map(|&b| b as u32).collect())
}

/// Build a 1-channel [`Dataset`] from the bytes of an idx3 image file and an idx1 label file
/// (each raw or gzipped), with the given class names (e.g. [`FASHION_MNIST_CLASSES`]).
pub fn parse_idx(
    images: &[u8],
    images_name: &str,
    labels: &[u8],
    labels_name: &str,
    classes: &[&str],
) -> Result<Dataset> {
    let imgs = parse_idx_images(images, images_name)?;
    let labs = parse_idx_labels(labels, labels_name)?;
    if imgs.count != labs.len() {
        return Err(Error::format(
            images_name,
            format!(
                "image/label count mismatch: {} images but {labels_name} has {} labels",
                imgs.count,
                labs.len()
            ),
        ));
    }
    if let Some((i, &l)) = labs
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes.len())
    {
        return Err(Error::format(
            labels_name,
            format!(
                "label {l} at index {i} is out of range for {} classes",
                classes.len()
            ),
        ));
    }
    Ok(Dataset {
        images: imgs.data,
        labels: labs,
        channels: 1,
        height: imgs.rows,
        width: imgs.cols,
        classes: names(classes),
    })
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Default places searched for Fashion-MNIST, after the `FASHION_MNIST_DIR` environment
    /// variable: the Debian package `dataset-fashion-mnist`, then `./data/fashion-mnist`.
    pub const FASHION_MNIST_DIRS: [&str; 2] =
        ["/usr/share/datasets/fashion-mnist", "data/fashion-mnist"];

    fn read(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }

    /// Load an idx image file and an idx label file (raw or gzipped).
    pub fn load_idx(
        images_path: impl AsRef<Path>,
        labels_path: impl AsRef<Path>,
        classes: &[&str],
    ) -> Result<Dataset> {
        let (ip, lp) = (images_path.as_ref(), labels_path.as_ref());
        parse_idx(
            &read(ip)?,
            &ip.display().to_string(),
            &read(lp)?,
            &lp.display().to_string(),
            classes,
        )
    }

    /// `dir/stem` or `dir/stem.gz`, whichever exists (raw first).
    fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
        let raw = dir.join(stem);
        if raw.is_file() {
            return Ok(raw);
        }
        let gz = dir.join(format!("{stem}.gz"));
        if gz.is_file() {
            return Ok(gz);
        }
        Err(Error::io(
            &raw,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {stem} nor {stem}.gz found"),
            ),
        ))
    }

    /// Load the training (`train-*`) or test (`t10k-*`) split of an MNIST-style directory holding
    /// `{train,t10k}-images-idx3-ubyte[.gz]` and `{train,t10k}-labels-idx1-ubyte[.gz]`.
    pub fn load_mnist_dir(dir: impl AsRef<Path>, train: bool, classes: &[&str]) -> Result<Dataset> {
        let dir = dir.as_ref();
        let prefix = if train { "train" } else { "t10k" };
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        load_idx(images, labels, classes)
    }

    /// The first Fashion-MNIST directory found: `$FASHION_MNIST_DIR`, then [`FASHION_MNIST_DIRS`].
    pub fn find_fashion_mnist_dir() -> Option<PathBuf> {
        let env = std::env::var_os("FASHION_MNIST_DIR").map(PathBuf::from);
        env.into_iter()
            .chain(FASHION_MNIST_DIRS.iter().map(PathBuf::from))
            .find(|d| {
                d.join("t10k-labels-idx1-ubyte").is_file()
                    || d.join("t10k-labels-idx1-ubyte.gz").is_file()
                    || d.join("train-labels-idx1-ubyte").is_file()
                    || d.join("train-labels-idx1-ubyte.gz").is_file()
            })
    }

    /// Load Fashion-MNIST (train or test split) from `dir`, or from the default location
    /// ([`find_fashion_mnist_dir`]) when `dir` is `None`.
    pub fn load_fashion_mnist(dir: Option<&Path>, train: bool) -> Result<Dataset> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => find_fashion_mnist_dir().ok_or_else(|| {
                Error::Invalid(format!(
                    "Fashion-MNIST not found: set FASHION_MNIST_DIR or install it in one of {} \
                     (Debian: apt install dataset-fashion-mnist)",
                    FASHION_MNIST_DIRS.join(", ")
                ))
            })?,
        };
        load_mnist_dir(dir, train, &FASHION_MNIST_CLASSES)
    }
}
