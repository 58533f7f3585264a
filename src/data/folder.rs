//! Image preprocessing (torchvision-style `Resize(size)` + `CenterCrop(size)`) and folders of
//! images with one sub-folder per class (torchvision `ImageFolder` layout).

use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Pixel};

use crate::error::{Error, Result};

/// ImageNet per-channel mean (torchvision pretrained weights).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (torchvision pretrained weights).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn check_target(op: &'static str, size: usize, channels: usize) -> Result<()> {
    if size == 0 || size > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("target size {size} must be in 1..=u32::MAX"),
        ));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::shape(
            op,
            format!("channels must be 1 (luma) or 3 (RGB), got {channels}"),
        ));
    }
    Ok(())
}

fn check_norm(op: &'static str, channels: usize, mean: &[f32], std: &[f32]) -> Result<()> {
    if mean.len() != channels || std.len() != channels {
        return Err(Error::shape(
            op,
            format!(
                "mean ({}) and std ({}) need one value per channel ({channels})",
                mean.len(),
                std.len()
            ),
        ));
    }
    if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(Error::shape(
            op,
            format!("std {std:?} must be finite and non-zero"),
        ));
    }
    Ok(())
}

/// Python's `round` (half to even), as torchvision uses for the crop offset.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        r as i64 - 1
    } else {
        r as i64
    }
}

/// Output size of torchvision `Resize(size)` for a `w x h` image: the shorter side becomes `size`,
/// the longer side `int(size * long / short)`.
fn resized_dims(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, ((size as u128 * h as u128) / w as u128) as usize)
    } else {
        (((size as u128 * w as u128) / h as u128) as usize, size)
    }
}

/// Resize (triangle filter) so the shorter side is `size`, center crop `size x size`, and write CHW.
fn resize_crop_buffer<P>(img: &ImageBuffer<P, Vec<u8>>, size: usize) -> Vec<u8>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = resized_dims(w, h, size);
    let resized;
    let src = if (rw, rh) == (w, h) {
        img
    } else {
        resized = image::imageops::resize(img, rw as u32, rh as u32, FilterType::Triangle);
        &resized
    };
    let top = round_half_even((rh - size) as f64 / 2.0) as usize;
    let left = round_half_even((rw - size) as f64 / 2.0) as usize;
    let c = P::CHANNEL_COUNT as usize;
    let raw: &[u8] = src.as_raw();
    let mut out = vec![0u8; c * size * size];
    for y in 0..size {
        let row = &raw[((top + y) * rw + left) * c..((top + y) * rw + left + size) * c];
        for x in 0..size {
            for ch in 0..c {
                out[(ch * size + y) * size + x] = row[x * c + ch];
            }
        }
    }
    out
}

/// Convert any image to 8-bit luma (gray images are kept; colour images use the ITU-R 601-2
/// weights of PIL's `convert("L")`; alpha is dropped).
fn to_luma(img: &DynamicImage) -> image::GrayImage {
    match img {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => img.to_luma8(),
        _ => {
            let rgb = img.to_rgb8();
            image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0;
                let l = (r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16;
                image::Luma([l as u8])
            })
        }
    }
}

/// Convert `img` to `channels` (1 = luma, 3 = RGB: alpha dropped, gray replicated), resize it so
/// its shorter side is `size` (bilinear / triangle filter, antialiased when shrinking) and center
/// crop `size x size`, like torchvision's `Resize(size)` + `CenterCrop(size)`. Returns `u8` CHW.
pub fn resize_center_crop(img: &DynamicImage, size: usize, channels: usize) -> Result<Vec<u8>> {
    check_target("resize_center_crop", size, channels)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::shape(
            "resize_center_crop",
            "the image is empty (0 pixels)",
        ));
    }
    Ok(if channels == 1 {
        resize_crop_buffer(&to_luma(img), size)
    } else {
        resize_crop_buffer(&img.to_rgb8(), size)
    })
}

/// Normalise `u8` CHW pixels: `(v / 255 - mean[c]) / std[c]`.
pub(crate) fn normalize_chw(pixels: &[u8], channels: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let plane = pixels.len() / channels;
    pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / plane;
            (v as f32 / 255.0 - mean[c]) / std[c]
        })
        .collect()
}

/// [`resize_center_crop`] then normalise: returns `channels x size x size` `f32` values
/// `(v / 255 - mean[c]) / std[c]`, ready for a network (e.g. with [`IMAGENET_MEAN`]/[`IMAGENET_STD`]).
pub fn preprocess_image(
    img: &DynamicImage,
    size: usize,
    channels: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<f32>> {
    check_target("preprocess_image", size, channels)?;
    check_norm("preprocess_image", channels, mean, std)?;
    Ok(normalize_chw(
        &resize_center_crop(img, size, channels)?,
        channels,
        mean,
        std,
    ))
}

/// [`preprocess_image`] for RGBA pixels in memory (`width * height * 4` bytes, row-major), e.g. a
/// browser canvas or a decoded frame.
pub fn preprocess_rgba(
    rgba: &[u8],
    width: usize,
    height: usize,
    size: usize,
    channels: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<f32>> {
    let expected = width.checked_mul(height).and_then(|p| p.checked_mul(4));
    if expected != Some(rgba.len()) || width > u32::MAX as usize || height > u32::MAX as usize {
        return Err(Error::shape(
            "preprocess_rgba",
            format!(
                "{width}x{height} RGBA needs {width}*{height}*4 bytes, got {}",
                rgba.len()
            ),
        ));
    }
    let buf = image::RgbaImage::from_raw(width as u32, height as u32, rgba.to_vec())
        .expect("length checked");
    preprocess_image(&DynamicImage::ImageRgba8(buf), size, channels, mean, std)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::data::Dataset;

    const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

    /// A callback told `(images decoded, images in all)` while a folder loads.
    pub type Progress<'a> = dyn Fn(usize, usize) + Sync + 'a;

    fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = e.map_err(|e| Error::io(dir, e))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                entries.push(path);
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// All files under `dir` (recursively), sorted by path.
    fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for p in read_dir_sorted(dir)? {
            if p.is_dir() {
                files_under(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }

    fn is_image(path: &Path) -> bool {
        path.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
    }

    fn decode(path: &Path) -> std::result::Result<DynamicImage, String> {
        image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())
    }

    /// Decode `path` and resize + center-crop it to `size` x `size` with `channels`, or say why
    /// it is skipped.
    fn decode_resized(
        path: &Path,
        size: usize,
        channels: usize,
    ) -> std::result::Result<Vec<u8>, String> {
        match decode(path) {
            Ok(img) if img.width() > 0 && img.height() > 0 => {
                resize_center_crop(&img, size, channels).map_err(|e| e.to_string())
            }
            Ok(_) => Err("empty image".into()),
            Err(e) => Err(format!("cannot decode: {e}")),
        }
    }

    /// [`decode_resized`] of every file, in order, on as many threads as the machine has cores
    /// (each takes the next file as it finishes one): decoding dominates loading a folder.
    /// `progress(done, total)` follows each file, from whichever thread decoded it.
    fn decode_all(
        files: &[PathBuf],
        size: usize,
        channels: usize,
        progress: &Progress<'_>,
    ) -> Vec<std::result::Result<Vec<u8>, String>> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(files.len());
        let next = AtomicUsize::new(0);
        let finished = AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = files.get(i) else {
                    return done;
                };
                done.push((i, decode_resized(f, size, channels)));
                progress(finished.fetch_add(1, Ordering::Relaxed) + 1, files.len());
            }
        };
        let mut out: Vec<_> = (0..files.len()).map(|_| Err(String::new())).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut done = work();
            for w in workers {
                // A worker panics only where decoding itself panicked: pass that on.
                done.extend(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            for (i, r) in done {
                out[i] = r;
            }
        });
        out
    }

    /// Load a folder holding one sub-folder per class (class names = sorted sub-folder names,
    /// labels in that order; sub-folders are searched recursively). Every `.jpg`/`.jpeg`/`.png`
    /// file is decoded, converted to `channels` (1 = luma, 3 = RGB) and resized + center-cropped
    /// to `size x size` as in [`resize_center_crop`], on all of the machine's cores. Files that
    /// cannot be decoded, files with other extensions and class folders without images are
    /// skipped with a warning naming them (the second return value). A folder with no class
    /// sub-folders or no images at all is an error. Hidden files and folders (names starting
    /// with `.`) are ignored.
    pub fn load_image_folder(
        dir: impl AsRef<Path>,
        size: usize,
        channels: usize,
    ) -> Result<(Dataset, Vec<String>)> {
        load_image_folder_with_progress(dir, size, channels, &|_, _| {})
    }

    /// [`load_image_folder`], calling `progress(decoded, total)` as the images are decoded (from
    /// the decoding threads), e.g. to drive a progress bar.
    pub fn load_image_folder_with_progress(
        dir: impl AsRef<Path>,
        size: usize,
        channels: usize,
        progress: &Progress<'_>,
    ) -> Result<(Dataset, Vec<String>)> {
        let dir = dir.as_ref();
        check_target("load_image_folder", size, channels)?;
        let mut warnings = Vec::new();
        let mut classes = Vec::new();
        let mut class_dirs = Vec::new();
        for p in read_dir_sorted(dir)? {
            if p.is_dir() {
                classes.push(
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
                class_dirs.push(p);
            } else {
                warnings.push(format!(
                    "{}: ignored, not inside a class folder",
                    p.display()
                ));
            }
        }
        if classes.is_empty() {
            return Err(Error::format(
                dir.display(),
                "no class sub-folders (expected one sub-folder of images per class)",
            ));
        }
        // The image files of each class, in order; other files are skipped with a warning.
        let mut files = Vec::new();
        let mut per_class = Vec::with_capacity(class_dirs.len());
        for cdir in &class_dirs {
            let mut all = Vec::new();
            files_under(cdir, &mut all)?;
            let before = files.len();
            for f in all {
                if is_image(&f) {
                    files.push(f);
                } else {
                    warnings.push(format!(
                        "{}: skipped, not a .jpg/.jpeg/.png file",
                        f.display()
                    ));
                }
            }
            per_class.push(before..files.len());
        }
        let decoded = decode_all(&files, size, channels, progress);
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (label, (cdir, range)) in class_dirs.iter().zip(per_class).enumerate() {
            let before = labels.len();
            for (f, pixels) in files[range.clone()].iter().zip(&decoded[range]) {
                match pixels {
                    Ok(pixels) => {
                        images.extend_from_slice(pixels);
                        labels.push(label as u32);
                    }
                    Err(e) => warnings.push(format!("{}: skipped, {e}", f.display())),
                }
            }
            if labels.len() == before {
                warnings.push(format!(
                    "{}: class folder has no usable images",
                    cdir.display()
                ));
            }
        }
        if labels.is_empty() {
            return Err(Error::format(
                dir.display(),
                format!("no decodable images in {} class folder(s)", classes.len()),
            ));
        }
        let data = Dataset {
            images,
            labels,
            channels,
            height: size,
            width: size,
            classes,
        };
        Ok((data, warnings))
    }
}
