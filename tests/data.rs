//! Data loading: idx / CIFAR-10 / image folders, preprocessing, augmentation, batching.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};
use resnet_wgpu::Rng;
use resnet_wgpu::data::*;

const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A fresh, empty temporary directory unique to this process and `name`.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-wgpu-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: usize, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let pixels: Vec<u8> = (0..n * rows * cols).map(|_| rng.below(256) as u8).collect();
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        bytes.extend((d as u32).to_be_bytes());
    }
    bytes.extend(&pixels);
    (bytes, pixels)
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend((labels.len() as u32).to_be_bytes());
    bytes.extend(labels);
    bytes
}

fn err_text<T: std::fmt::Debug>(r: resnet_wgpu::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// A small data set whose image `i` has every pixel of channel `c` equal to `(i * 7 + c) % 256`
/// except a marker: pixel 0 of channel 0 equals `i`.
fn toy(n: usize, c: usize, h: usize, w: usize, classes: usize) -> Dataset {
    let mut images = Vec::new();
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                images.push(if ch == 0 && p == 0 {
                    i as u8
                } else {
                    ((i * 7 + ch * 31 + p) % 256) as u8
                });
            }
        }
    }
    let labels = (0..n).map(|i| (i % classes) as u32).collect();
    let names = (0..classes).map(|k| format!("c{k}")).collect();
    Dataset::new(images, labels, c, h, w, names).unwrap()
}

// ---------------------------------------------------------------- idx

#[test]
fn fashion_mnist_real_files_load() {
    let test = load_mnist_dir(FASHION_DIR, false, &FASHION_MNIST_CLASSES).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.image_shape(), [1, 28, 28]);
    assert_eq!(test.images.len(), 10_000 * 784);
    assert!(test.labels.iter().all(|&l| l < 10));
    assert_eq!(test.class_counts(), vec![1000; 10]);
    assert_eq!(test.classes[0], "T-shirt/top");
    assert_eq!(test.classes[9], "Ankle boot");
    // The default-location loader finds the same files.
    let again = load_fashion_mnist(None, false).unwrap();
    assert_eq!(again.labels, test.labels);

    let train = load_fashion_mnist(Some(Path::new(FASHION_DIR)), true).unwrap();
    assert_eq!(train.len(), 60_000);
    let (mean, std) = channel_stats(&train);
    assert!((mean[0] - 0.2860).abs() < 1e-3, "mean {mean:?}");
    assert!((std[0] - 0.3530).abs() < 1e-3, "std {std:?}");
    assert!((mean[0] - FASHION_MNIST_MEAN[0]).abs() < 1e-3);
    assert!((std[0] - FASHION_MNIST_STD[0]).abs() < 1e-3);
}

#[test]
fn idx_round_trip_raw_and_gzipped() {
    let dir = temp_dir("idx-round-trip");
    let (train_img, train_px) = idx_images(7, 5, 3, 1);
    let train_lab: Vec<u8> = vec![0, 1, 2, 9, 4, 5, 3];
    let (test_img, test_px) = idx_images(4, 2, 6, 2);
    let test_lab: Vec<u8> = vec![9, 8, 7, 6];
    // Raw train files, gzipped test files.
    std::fs::write(dir.join("train-images-idx3-ubyte"), &train_img).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(&train_lab)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gzip(&test_img)).unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&idx_labels(&test_lab)),
    )
    .unwrap();

    let train = load_mnist_dir(&dir, true, &MNIST_CLASSES).unwrap();
    assert_eq!(train.image_shape(), [1, 5, 3]);
    assert_eq!(train.images, train_px);
    assert_eq!(
        train.labels,
        train_lab.iter().map(|&l| l as u32).collect::<Vec<_>>()
    );
    assert_eq!(train.classes[3], "3");
    assert_eq!(train.image(2), &train_px[2 * 15..3 * 15]);

    let test = load_mnist_dir(&dir, false, &FASHION_MNIST_CLASSES).unwrap();
    assert_eq!(test.image_shape(), [1, 2, 6]);
    assert_eq!(test.images, test_px);
    assert_eq!(test.labels, vec![9, 8, 7, 6]);

    // Byte-level parsers give the same for raw and gzipped input.
    let a = parse_idx_images(&test_img, "raw").unwrap();
    let b = parse_idx_images(&gzip(&test_img), "gz").unwrap();
    assert_eq!(a, b);
    assert_eq!((a.count, a.rows, a.cols), (4, 2, 6));
    assert_eq!(
        parse_idx_labels(&gzip(&idx_labels(&test_lab)), "gz").unwrap(),
        vec![9, 8, 7, 6]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_idx_files_error_naming_the_file() {
    let dir = temp_dir("idx-bad");
    let (img, _) = idx_images(3, 4, 4, 3);
    let lab = idx_labels(&[1, 2, 3]);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good_img = write("good-images", &img);
    let good_lab = write("good-labels", &lab);

    // Wrong magic: a label file given as images.
    let e = err_text(load_idx(&good_lab, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("good-labels") && e.contains("magic"), "{e}");
    let mut bad = img.clone();
    bad[3] = 4;
    let p = write("magic-images", &bad);
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("magic-images") && e.contains("magic"), "{e}");

    // Truncated (raw and gzipped).
    let p = write("short-images", &img[..img.len() - 5]);
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("short-images") && e.contains("truncated"), "{e}");
    let p = write("short-images.gz", &gzip(&img[..img.len() - 5]));
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(
        e.contains("short-images.gz") && e.contains("truncated"),
        "{e}"
    );
    let p = write("short-labels", &lab[..lab.len() - 1]);
    let e = err_text(load_idx(&good_img, &p, &MNIST_CLASSES));
    assert!(e.contains("short-labels") && e.contains("truncated"), "{e}");
    let p = write("tiny", &[0, 0]);
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("tiny"), "{e}");

    // Count mismatch between the two files.
    let p = write("four-labels", &idx_labels(&[1, 2, 3, 4]));
    let e = err_text(load_idx(&good_img, &p, &MNIST_CLASSES));
    assert!(
        e.contains("good-images") && e.contains("four-labels") && e.contains("mismatch"),
        "{e}"
    );

    // Label out of range for the class list.
    let p = write("big-labels", &idx_labels(&[1, 12, 3]));
    let e = err_text(load_idx(&good_img, &p, &MNIST_CLASSES));
    assert!(e.contains("big-labels") && e.contains("12"), "{e}");

    // Bad gzip (right magic, garbage after it) and a truncated gzip stream.
    let p = write("garbage.gz", &[0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("garbage.gz") && e.contains("gzip"), "{e}");
    let gz = gzip(&img);
    let p = write("cut.gz", &gz[..gz.len() / 2]);
    let e = err_text(load_idx(&p, &good_lab, &MNIST_CLASSES));
    assert!(e.contains("cut.gz") && e.contains("gzip"), "{e}");

    // Missing files in a directory.
    let e = err_text(load_mnist_dir(&dir, true, &MNIST_CLASSES));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- CIFAR-10

fn cifar_records(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        bytes.push(l);
        bytes.extend((0..3072).map(|p| ((p * 3 + i * 11) % 256) as u8));
    }
    bytes
}

#[test]
fn cifar10_binary_parses_and_errors() {
    let bytes = cifar_records(&[3, 0, 9]);
    let d = parse_cifar10(&bytes, "mem").unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d.image_shape(), [3, 32, 32]);
    assert_eq!(d.labels, vec![3, 0, 9]);
    assert_eq!(d.image(1), &bytes[3073 + 1..2 * 3073]);
    assert_eq!(d.classes[3], "cat");

    let e = err_text(parse_cifar10(&bytes[..3073 * 2 + 100], "short.bin"));
    assert!(e.contains("short.bin") && e.contains("3073"), "{e}");
    let mut bad = bytes.clone();
    bad[3073] = 10;
    let e = err_text(parse_cifar10(&bad, "label.bin"));
    assert!(e.contains("label.bin") && e.contains("label 10"), "{e}");

    let dir = temp_dir("cifar");
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let test = load_cifar10_dir(&dir, false).unwrap();
    assert_eq!(test, d);
    let meta = "a0\nb1\nc2\nd3\ne4\nf5\ng6\nh7\ni8\nj9\n\n";
    std::fs::write(dir.join("batches.meta.txt"), meta).unwrap();
    assert_eq!(load_cifar10_dir(&dir, false).unwrap().classes[9], "j9");

    for i in 1..=5 {
        if i != 2 {
            std::fs::write(
                dir.join(format!("data_batch_{i}.bin")),
                cifar_records(&[i, 1]),
            )
            .unwrap();
        }
    }
    let e = err_text(load_cifar10_dir(&dir, true));
    assert!(e.contains("data_batch_2.bin"), "{e}");
    std::fs::write(dir.join("data_batch_2.bin"), cifar_records(&[2, 1])).unwrap();
    let train = load_cifar10_dir(&dir, true).unwrap();
    assert_eq!(train.labels, vec![1, 1, 2, 1, 3, 1, 4, 1, 5, 1]);
    std::fs::write(dir.join("data_batch_4.bin"), &bytes[..100]).unwrap();
    let e = err_text(load_cifar10_dir(&dir, true));
    assert!(e.contains("data_batch_4.bin"), "{e}");
    std::fs::write(dir.join("batches.meta.txt"), "one\ntwo\n").unwrap();
    let e = err_text(load_cifar10_dir(&dir, false));
    assert!(e.contains("batches.meta.txt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- image folders

#[test]
fn image_folder_loads_converts_and_warns() {
    let dir = temp_dir("folder");
    std::fs::create_dir_all(dir.join("cat")).unwrap();
    std::fs::create_dir_all(dir.join("dog/nested")).unwrap();
    // cat: a solid RGB PNG (landscape) and a gray JPEG (portrait).
    RgbImage::from_pixel(40, 30, image::Rgb([200, 100, 50]))
        .save(dir.join("cat/a.png"))
        .unwrap();
    GrayImage::from_pixel(20, 50, image::Luma([77]))
        .save(dir.join("cat/b.jpg"))
        .unwrap();
    // dog: an RGBA PNG in a nested folder, an undecodable "PNG" and a text file.
    RgbaImage::from_pixel(16, 16, image::Rgba([10, 20, 30, 128]))
        .save(dir.join("dog/nested/c.png"))
        .unwrap();
    std::fs::write(dir.join("dog/broken.png"), b"this is not a png").unwrap();
    std::fs::write(dir.join("dog/notes.txt"), b"hello").unwrap();
    std::fs::write(dir.join("dog/.hidden.png"), b"ignored silently").unwrap();

    let (d, warnings) = load_image_folder(&dir, 8, 3).unwrap();
    assert_eq!(d.classes, vec!["cat", "dog"]);
    assert_eq!(d.labels, vec![0, 0, 1]);
    assert_eq!(d.image_shape(), [3, 8, 8]);
    let plane = 64;
    let rgb = d.image(0);
    for (c, v) in [200u8, 100, 50].into_iter().enumerate() {
        assert!(
            rgb[c * plane..(c + 1) * plane].iter().all(|&p| p == v),
            "channel {c}"
        );
    }
    // Gray JPEG replicated to 3 channels (JPEG of a flat gray image is exact within 1).
    let gray = d.image(1);
    assert!(gray.iter().all(|&p| p.abs_diff(77) <= 1), "{gray:?}");
    assert_eq!(&gray[..plane], &gray[plane..2 * plane]);
    assert_eq!(&gray[..plane], &gray[2 * plane..]);
    // RGBA: alpha dropped.
    let rgba = d.image(2);
    for (c, v) in [10u8, 20, 30].into_iter().enumerate() {
        assert!(
            rgba[c * plane..(c + 1) * plane].iter().all(|&p| p == v),
            "channel {c}"
        );
    }
    assert!(
        warnings.iter().any(|w| w.contains("broken.png")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("notes.txt")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains(".hidden")),
        "{warnings:?}"
    );

    // One channel: luma with PIL's weights; gray stays gray.
    let (d1, _) = load_image_folder(&dir, 5, 1).unwrap();
    assert_eq!(d1.image_shape(), [1, 5, 5]);
    let luma = ((200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16) as u8;
    assert!(d1.image(0).iter().all(|&p| p == luma));
    assert!(d1.image(1).iter().all(|&p| p.abs_diff(77) <= 1));

    // Errors name the folder.
    let empty = temp_dir("folder-empty");
    let e = err_text(load_image_folder(&empty, 8, 3));
    assert!(e.contains("folder-empty") && e.contains("class"), "{e}");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::write(empty.join("a/bad.jpg"), b"nope").unwrap();
    let e = err_text(load_image_folder(&empty, 8, 3));
    assert!(
        e.contains("folder-empty") && e.contains("no decodable images"),
        "{e}"
    );
    let e = err_text(load_image_folder(dir.join("missing"), 8, 3));
    assert!(e.contains("missing"), "{e}");
    assert!(load_image_folder(&dir, 8, 2).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn image_folder_keeps_file_order_while_decoding_in_parallel() {
    // 3 classes of 17 images, each a solid color that encodes its class and index, in PNG and
    // JPEG, some larger than others so that the decoding threads finish out of order.
    let dir = temp_dir("folder-order");
    let color = |class: u8, i: u8| [40 * class + 10, 5 * i, 255 - 3 * i];
    for class in 0..3u8 {
        let cdir = dir.join(format!("class{class}"));
        std::fs::create_dir_all(&cdir).unwrap();
        for i in 0..17u8 {
            let side = if i % 4 == 0 { 300 } else { 12 };
            let img = RgbImage::from_pixel(side, side, image::Rgb(color(class, i)));
            img.save(cdir.join(format!("{i:02}.png"))).unwrap();
        }
    }
    std::fs::write(dir.join("class1/05b.jpg"), b"not a jpeg").unwrap();
    let (d, warnings) = load_image_folder(&dir, 4, 3).unwrap();
    assert_eq!(d.len(), 51);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("05b.jpg"), "{warnings:?}");
    for class in 0..3u8 {
        for i in 0..17u8 {
            let k = 17 * class as usize + i as usize;
            assert_eq!(d.labels[k], class as u32, "image {k}");
            let img = d.image(k);
            for (c, v) in color(class, i).into_iter().enumerate() {
                assert!(
                    img[16 * c..16 * (c + 1)].iter().all(|&p| p == v),
                    "image {k} (class {class}, file {i}), channel {c}: {img:?}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn named_folder_splits_load_once_and_match_the_single_loads() {
    let dir = temp_dir("folder-splits");
    for class in 0..3u8 {
        let cdir = dir.join(format!("c{class}"));
        std::fs::create_dir_all(&cdir).unwrap();
        for i in 0..6u8 {
            RgbImage::from_pixel(9, 7, image::Rgb([50 * class, 20 * i, 7]))
                .save(cdir.join(format!("{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(dir.join("c2/skip.txt"), b"not an image").unwrap();
    let calls = std::sync::Mutex::new(Vec::new());
    let (train, test, warnings) = load_named_splits("folder", Some(&dir), 4, 3, &|done, total| {
        calls.lock().unwrap().push((done, total))
    })
    .unwrap();
    // One decode of the 18 images, not one per split; one warning, not two.
    let mut calls = calls.into_inner().unwrap();
    calls.sort();
    assert_eq!(calls, (1..=18).map(|d| (d, 18)).collect::<Vec<_>>());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // The same 80/20 split as load_named's.
    let (train1, _) = load_named("folder", Some(&dir), true, 4, 3).unwrap();
    let (test1, _) = load_named("folder", Some(&dir), false, 4, 3).unwrap();
    assert_eq!((train.len(), test.len()), (15, 3));
    assert_eq!(train.images, train1.images);
    assert_eq!(train.labels, train1.labels);
    assert_eq!(test.images, test1.images);
    assert_eq!(test.labels, test1.labels);
    // train/ and test/ sub-folders are used as given.
    let both = temp_dir("folder-splits-given");
    for (split, n) in [("train", 4u8), ("test", 2)] {
        for class in ["a", "b"] {
            let cdir = both.join(split).join(class);
            std::fs::create_dir_all(&cdir).unwrap();
            for i in 0..n {
                RgbImage::from_pixel(5, 5, image::Rgb([i, 1, 2]))
                    .save(cdir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let (train, test, _) = load_named_splits("folder", Some(&both), 4, 3, &|_, _| {}).unwrap();
    assert_eq!((train.len(), test.len()), (8, 4));
    assert_eq!(test.labels, vec![0, 0, 1, 1]);
    let e = err_text(load_named_splits("folder", None, 4, 3, &|_, _| {}));
    assert!(e.contains("--data-dir"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&both).unwrap();
}

// ---------------------------------------------------------------- preprocessing

#[test]
fn resize_and_center_crop_match_torchvision_geometry() {
    // No resize needed (shorter side already 4): crop 4x4 from 6x4, left = round(2/2) = 1.
    let img = RgbImage::from_fn(6, 4, |x, y| image::Rgb([(x * 10 + y) as u8, 0, 255]));
    let out = resize_center_crop(&DynamicImage::ImageRgb8(img), 4, 3).unwrap();
    assert_eq!(out.len(), 48);
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(out[y * 4 + x], ((x + 1) * 10 + y) as u8);
            assert_eq!(out[16 + y * 4 + x], 0);
            assert_eq!(out[32 + y * 4 + x], 255);
        }
    }
    // Offset 0.5 rounds half to even (Python round): 5x4 crops from column 0.
    let img = GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 10 + y) as u8]));
    let out = resize_center_crop(&DynamicImage::ImageLuma8(img), 4, 1).unwrap();
    assert_eq!(out[..4], [0, 10, 20, 30]);
    // Portrait 4x7: top = round(3/2) = 2 (half to even).
    let img = GrayImage::from_fn(4, 7, |x, y| image::Luma([(y * 10 + x) as u8]));
    let out = resize_center_crop(&DynamicImage::ImageLuma8(img), 4, 1).unwrap();
    assert_eq!(out[..4], [20, 21, 22, 23]);

    // With a resize: 20x10 -> 10x5 (shorter side 5), then crop left = round(2.5) = 2.
    let img = GrayImage::from_fn(20, 10, |x, y| image::Luma([(x * 12 + y * 3) as u8]));
    let resized = image::imageops::resize(&img, 10, 5, image::imageops::FilterType::Triangle);
    let out = resize_center_crop(&DynamicImage::ImageLuma8(img.clone()), 5, 1).unwrap();
    for y in 0..5 {
        for x in 0..5 {
            assert_eq!(
                out[y * 5 + x],
                resized.get_pixel(x as u32 + 2, y as u32).0[0]
            );
        }
    }
    // 7x3 to size 2: long side int(2*7/3) = 4, crop left = round(1) = 1.
    let img = GrayImage::from_fn(7, 3, |x, _| image::Luma([(x * 30) as u8]));
    let resized = image::imageops::resize(&img, 4, 2, image::imageops::FilterType::Triangle);
    let out = resize_center_crop(&DynamicImage::ImageLuma8(img), 2, 1).unwrap();
    assert_eq!(
        out,
        vec![
            resized.get_pixel(1, 0).0[0],
            resized.get_pixel(2, 0).0[0],
            resized.get_pixel(1, 1).0[0],
            resized.get_pixel(2, 1).0[0]
        ]
    );
    // Upscaling a flat image stays flat.
    let img = RgbImage::from_pixel(3, 2, image::Rgb([9, 99, 199]));
    let out = resize_center_crop(&DynamicImage::ImageRgb8(img), 7, 3).unwrap();
    assert!(out[..49].iter().all(|&v| v == 9) && out[98..].iter().all(|&v| v == 199));
}

#[test]
fn preprocess_normalises_and_rgba_matches_image() {
    let (w, h) = (9usize, 6usize);
    let rgba: Vec<u8> = (0..w * h * 4).map(|i| ((i * 37) % 256) as u8).collect();
    let img =
        DynamicImage::ImageRgba8(RgbaImage::from_raw(w as u32, h as u32, rgba.clone()).unwrap());
    let a = preprocess_image(&img, 4, 3, &IMAGENET_MEAN, &IMAGENET_STD).unwrap();
    let b = preprocess_rgba(&rgba, w, h, 4, 3, &IMAGENET_MEAN, &IMAGENET_STD).unwrap();
    assert_eq!(a, b);
    let raw = resize_center_crop(&img, 4, 3).unwrap();
    assert_eq!(a.len(), 48);
    for (i, (&v, &r)) in a.iter().zip(&raw).enumerate() {
        let c = i / 16;
        let expect = (r as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!((v - expect).abs() < 1e-6);
    }
    let g = preprocess_rgba(&rgba, w, h, 4, 1, &[0.5], &[0.25]).unwrap();
    assert_eq!(g.len(), 16);
    // Errors.
    assert!(preprocess_rgba(&rgba[1..], w, h, 4, 3, &IMAGENET_MEAN, &IMAGENET_STD).is_err());
    assert!(preprocess_rgba(&rgba, w, h, 4, 3, &[0.5], &[0.5]).is_err());
    assert!(preprocess_rgba(&rgba, w, h, 4, 3, &[0.5; 3], &[0.0; 3]).is_err());
    assert!(preprocess_rgba(&rgba, w, h, 0, 3, &IMAGENET_MEAN, &IMAGENET_STD).is_err());
    assert!(preprocess_image(&img, 4, 4, &[0.0; 4], &[1.0; 4]).is_err());
}

// ---------------------------------------------------------------- augmentation and batching

#[test]
fn augment_crop_and_flip_as_specified() {
    // One 2-channel 3x4 image.
    let src: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
    let aug = Augment {
        pad_crop: 1,
        hflip: true,
        mean: vec![0.0, 0.5],
        std: vec![1.0, 2.0],
    };
    let norm = |c: usize, v: f32| (v / 255.0 - aug.mean[c]) / aug.std[c];
    let px = |c: usize, y: isize, x: isize| -> f32 {
        if (0..3).contains(&y) && (0..4).contains(&x) {
            norm(c, src[c * 12 + y as usize * 4 + x as usize] as f32)
        } else {
            norm(c, 0.0) // zero padding, normalised
        }
    };
    let mut out = vec![0f32; 24];
    for dx in 0..=2 {
        for dy in 0..=2 {
            for flip in [false, true] {
                aug.apply(&src, [2, 3, 4], dx, dy, flip, &mut out);
                for c in 0..2 {
                    for y in 0..3 {
                        for x in 0..4 {
                            let xs = if flip { 3 - x } else { x } as isize + dx as isize - 1;
                            let want = px(c, y as isize + dy as isize - 1, xs);
                            assert!((out[c * 12 + y * 4 + x] - want).abs() < 1e-6);
                        }
                    }
                }
            }
        }
    }
    // Centre crop without flip is just normalisation.
    aug.apply(&src, [2, 3, 4], 1, 1, false, &mut out);
    assert!((out[5] - norm(0, 50.0)).abs() < 1e-6);
    // Flip only mirrors rows.
    aug.apply(&src, [2, 3, 4], 1, 1, true, &mut out);
    assert!((out[0] - norm(0, 30.0)).abs() < 1e-6 && (out[3] - norm(0, 0.0)).abs() < 1e-6);

    // Over an epoch, every augmented image is one of the allowed crops/flips, and both flip
    // states and several offsets occur.
    let d = toy(64, 1, 5, 5, 3);
    let aug = Augment {
        pad_crop: 2,
        hflip: true,
        mean: vec![0.1],
        std: vec![0.3],
    };
    let mut rng = Rng::new(5);
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![0f32; 25];
    for b in epoch_batches(&d, 16, Some(&mut rng), &aug, false).unwrap() {
        for (k, &idx) in b.indices.iter().enumerate() {
            let got = &b.images[k * 25..(k + 1) * 25];
            let mut found = None;
            'search: for dx in 0..=4 {
                for dy in 0..=4 {
                    for flip in [false, true] {
                        aug.apply(d.image(idx), [1, 5, 5], dx, dy, flip, &mut out);
                        if out == got {
                            found = Some((dx, dy, flip));
                            break 'search;
                        }
                    }
                }
            }
            seen.insert(found.expect("batch image is not an allowed crop/flip"));
        }
    }
    assert!(seen.iter().any(|s| s.2) && seen.iter().any(|s| !s.2));
    assert!(seen.len() > 10, "{seen:?}");
}

#[test]
fn batches_are_deterministic_and_complete() {
    let d = toy(23, 3, 4, 5, 4);
    let aug = Augment::crop_flip(&[0.5, 0.4, 0.3], &[0.2, 0.25, 0.3]);
    let run = |seed: u64| -> Vec<Batch> {
        let mut rng = Rng::new(seed);
        epoch_batches(&d, 5, Some(&mut rng), &aug, false)
            .unwrap()
            .collect()
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a, run(12));
    assert_eq!(a.len(), 5);
    assert_eq!(a[0].shape, [5, 3, 4, 5]);
    assert_eq!(a[4].shape, [3, 3, 4, 5]);
    assert_eq!(a[4].images.len(), 3 * 60);
    let mut all: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
    assert_ne!(all, (0..23).collect::<Vec<_>>(), "shuffled");
    all.sort_unstable();
    assert_eq!(all, (0..23).collect::<Vec<_>>());
    for b in &a {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], d.labels[i]);
        }
    }

    // The caller's rng advances deterministically (checkpointable).
    let mut r1 = Rng::new(3);
    let mut r2 = Rng::new(3);
    let _ = epoch_batches(&d, 5, Some(&mut r1), &aug, false).unwrap();
    let _ = epoch_batches(&d, 5, Some(&mut r2), &aug, false).unwrap();
    assert_eq!(r1, r2);
    assert_ne!(r1, Rng::new(3));

    // drop_last.
    let mut rng = Rng::new(1);
    let mut it = epoch_batches(&d, 5, Some(&mut rng), &aug, true).unwrap();
    assert_eq!(it.len(), 4);
    assert!(it.all(|b| b.shape[0] == 5));

    // No rng: data-set order, plain normalisation; random augmentation is refused.
    let norm = Augment::normalize(&[0.5, 0.4, 0.3], &[0.2, 0.25, 0.3]);
    let seq: Vec<Batch> = epoch_batches(&d, 10, None, &norm, false).unwrap().collect();
    assert_eq!(seq.len(), 3);
    assert_eq!(seq[0].indices, (0..10).collect::<Vec<_>>());
    assert_eq!(seq[2].labels, d.labels[20..].to_vec());
    let v = seq[1].images[60 * 3 + 25]; // sample 13, channel 1, pixel 5
    let raw = d.image(13)[25] as f32;
    assert!((v - (raw / 255.0 - 0.4) / 0.25).abs() < 1e-6);
    assert!(epoch_batches(&d, 10, None, &aug, false).is_err());
    assert!(epoch_batches(&d, 0, None, &norm, false).is_err());
    assert!(epoch_batches(&d, 4, None, &Augment::normalize(&[0.5], &[0.2]), false).is_err());
    // Empty data set: no batches.
    assert_eq!(
        epoch_batches(&d.take(0), 4, None, &norm, false)
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn prefetch_yields_exactly_the_synchronous_batches() {
    let d = Arc::new(toy(37, 1, 6, 6, 5));
    let aug = Augment::crop_flip(&[0.3], &[0.4]);
    let mut r1 = Rng::new(42);
    let sync: Vec<Batch> = epoch_batches(&d, 4, Some(&mut r1), &aug, false)
        .unwrap()
        .collect();
    let mut r2 = Rng::new(42);
    let pre = prefetch_batches(d.clone(), 4, Some(&mut r2), &aug, false, 2).unwrap();
    assert_eq!(pre.len(), sync.len());
    let pre: Vec<Batch> = pre.collect();
    assert_eq!(pre, sync);
    assert_eq!(r1, r2);
    // Dropping a prefetcher early stops its thread (no hang).
    let mut r3 = Rng::new(1);
    let mut early = prefetch_batches(d.clone(), 2, Some(&mut r3), &aug, true, 1).unwrap();
    assert!(early.next().is_some());
    drop(early);
    let seq: Vec<Batch> =
        prefetch_batches(d, 8, None, &Augment::normalize(&[0.3], &[0.4]), false, 4)
            .unwrap()
            .collect();
    assert_eq!(seq.len(), 5);
    assert_eq!(seq[4].indices, vec![32, 33, 34, 35, 36]);
}

#[test]
fn channel_stats_on_known_values() {
    // Channel 0 all 0 and 255 half/half -> mean 0.5, std 0.5; channel 1 constant 51 -> 0.2, 0.
    let mut images = Vec::new();
    for i in 0..2 {
        images.extend([if i == 0 { 0 } else { 255 }; 4]);
        images.extend([51u8; 4]);
    }
    let d = Dataset::new(images, vec![0, 1], 2, 2, 2, vec!["a".into(), "b".into()]).unwrap();
    let (m, s) = channel_stats(&d);
    assert!((m[0] - 0.5).abs() < 1e-6 && (s[0] - 0.5).abs() < 1e-6);
    assert!((m[1] - 0.2).abs() < 1e-6 && s[1].abs() < 1e-3);
}

#[test]
fn split_subset_take_sizes() {
    let d = toy(50, 1, 2, 2, 5);
    let (train, val) = d.split(0.2, 9).unwrap();
    assert_eq!((train.len(), val.len()), (40, 10));
    let mut ids: Vec<u8> = train
        .images
        .chunks(4)
        .chain(val.images.chunks(4))
        .map(|im| im[0])
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..50).collect::<Vec<u8>>(), "disjoint and complete");
    assert_eq!(
        d.split(0.2, 9).unwrap(),
        (train.clone(), val.clone()),
        "seeded"
    );
    assert_ne!(d.split(0.2, 10).unwrap().1, val);
    let (t2, v2) = d.split(7usize, 1).unwrap();
    assert_eq!((t2.len(), v2.len()), (43, 7));
    assert_eq!(d.split(0usize, 1).unwrap().0.len(), 50);
    assert_eq!(d.split(1.0, 1).unwrap().1.len(), 50);
    assert!(d.split(51usize, 1).is_err());
    assert!(d.split(1.5, 1).is_err());

    let s = d.subset(&[3, 3, 49]).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s.image(2), d.image(49));
    assert_eq!(s.labels, vec![3, 3, 4]);
    assert!(d.subset(&[50]).is_err());
    assert_eq!(d.take(5).len(), 5);
    assert_eq!(d.take(500).len(), 50);
    assert_eq!(d.take(5).image(4), d.image(4));
    assert_eq!(d.num_classes(), 5);
    assert_eq!(d.class_counts(), vec![10; 5]);
    assert!(
        Dataset::new(
            vec![0; 7],
            vec![0, 1],
            1,
            2,
            2,
            vec!["a".into(), "b".into()]
        )
        .is_err()
    );
    assert!(
        Dataset::new(
            vec![0; 8],
            vec![0, 2],
            1,
            2,
            2,
            vec!["a".into(), "b".into()]
        )
        .is_err()
    );
}
