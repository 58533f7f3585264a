//! Inference from files and from pixels in memory, and the errors a user can cause.

mod common;
use common::*;
use resnet_wgpu::Rng;
use resnet_wgpu::classify::{Classifier, parse_labels};
use resnet_wgpu::nn::{ResNet, ResNetConfig, Stem};

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-wgpu-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_weights(dir: &std::path::Path, classes: usize) -> std::path::PathBuf {
    let gpu = gpu();
    let config = ResNetConfig::resnet18(classes)
        .with_widths(vec![4, 8, 8, 8])
        .with_stem(Stem::ImageNet);
    let net = ResNet::new(&gpu, config, &mut Rng::new(3)).unwrap();
    let path = dir.join("tiny.safetensors");
    resnet_wgpu::io::save_safetensors(&net.state_dict().unwrap(), &path, None).unwrap();
    path
}

#[test]
fn classifies_files_and_pixels_alike() {
    let dir = temp_dir("classify");
    let weights = tiny_weights(&dir, 7);
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "a\nb\nc\nd\ne\nf\ng\n").unwrap();
    let mut c = Classifier::load(&gpu(), &weights)
        .unwrap()
        .with_size(32)
        .with_labels_file(&labels)
        .unwrap();
    // An RGBA image and a grayscale one, both of sizes other than the crop.
    let rgba = image::RgbaImage::from_fn(50, 40, |x, y| {
        image::Rgba([(x * 5) as u8, (y * 6) as u8, 90, 255])
    });
    let gray = image::GrayImage::from_fn(33, 61, |x, y| image::Luma([((x + y) * 3) as u8]));
    rgba.save(dir.join("a.png")).unwrap();
    gray.save(dir.join("b.png")).unwrap();
    let files = [dir.join("a.png"), dir.join("b.png")];
    let from_files = c.classify_files(&files, 5, 2).unwrap();
    assert_eq!(from_files.len(), 2);
    for preds in &from_files {
        assert_eq!(preds.len(), 5);
        assert!(
            preds
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability)
        );
        assert!(
            preds
                .iter()
                .all(|p| p.label == ["a", "b", "c", "d", "e", "f", "g"][p.class])
        );
    }
    let from_pixels = pollster::block_on(c.classify_rgba(rgba.as_raw(), 50, 40, 7)).unwrap();
    let total: f32 = from_pixels.iter().map(|p| p.probability).sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
    for (a, b) in from_files[0].iter().zip(&from_pixels) {
        assert_eq!(a.class, b.class);
        assert!((a.probability - b.probability).abs() < 1e-6);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn user_errors_name_the_file() {
    let dir = temp_dir("classify-errors");
    let weights = tiny_weights(&dir, 3);
    let c = Classifier::load(&gpu(), &weights).unwrap();
    // A labels file whose line count differs from the class count.
    let labels = dir.join("four.txt");
    std::fs::write(&labels, "a\nb\nc\nd\n").unwrap();
    let err = match Classifier::load(&gpu(), &weights)
        .unwrap()
        .with_labels_file(&labels)
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 4-line labels file was accepted for 3 classes"),
    };
    assert!(
        err.contains("four.txt") && err.contains("4 labels") && err.contains("3 classes"),
        "{err}"
    );
    assert!(parse_labels("x\ny\n\n", "l.txt", 2).is_ok());
    // A missing labels file.
    let err = match c.with_labels_file(dir.join("missing.txt")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a missing labels file was accepted"),
    };
    assert!(err.contains("missing.txt"), "{err}");
    // An undecodable image.
    let c = Classifier::load(&gpu(), &weights).unwrap();
    let bad = dir.join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = c.preprocess_file(&bad).unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
    // Weights that are not safetensors.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, [1u8, 2, 3]).unwrap();
    let err = match Classifier::load(&gpu(), &junk) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("junk weights were accepted"),
    };
    assert!(err.contains("junk.safetensors"), "{err}");
    // Wrong normalisation length.
    let c = Classifier::load(&gpu(), &weights).unwrap();
    let err = match c.with_normalization(&[0.1, 0.2], &[0.3]) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("two mean values were accepted for three channels"),
    };
    assert!(err.contains("mean has 2 values"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn weights_of_another_architecture_are_refused_strictly() {
    let gpu = gpu();
    let dir = temp_dir("arch");
    let weights = tiny_weights(&dir, 3);
    let dict = resnet_wgpu::io::load_safetensors(&weights).unwrap();
    let other = ResNetConfig::resnet18(3)
        .with_widths(vec![4, 8, 16, 8])
        .with_stem(Stem::ImageNet);
    let err = match ResNet::from_state_dict(&gpu, &dict, Some(other.clone()), true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("mismatched weights were accepted strictly"),
    };
    assert!(err.contains("layer3.0.conv1.weight"), "{err}");
    // Non-strict loading keeps what fits and reports the rest.
    let (_, report) = ResNet::from_state_dict(&gpu, &dict, Some(other), false).unwrap();
    assert!(!report.is_clean());
    assert!(
        report
            .mismatched
            .iter()
            .any(|m| m.name == "layer3.0.conv1.weight")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn weights_carry_their_preprocessing() {
    let gpu = gpu();
    let config = ResNetConfig::resnet18(3)
        .with_widths(vec![4, 4, 4, 4])
        .with_stem(Stem::Cifar)
        .with_in_channels(1);
    let net = ResNet::new(&gpu, config, &mut Rng::new(5)).unwrap();
    let labels: Vec<String> = ["cat", "dog", "cow"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut dict = net.state_dict().unwrap();
    let meta =
        resnet_wgpu::classify::preprocessing_metadata(&labels, &[0.3], &[0.2], 20, net.config());
    dict.metadata_mut().extend(meta);
    let bytes =
        resnet_wgpu::io::to_safetensors_bytes_with_metadata(&dict, Some(dict.metadata().clone()))
            .unwrap();
    let loaded = resnet_wgpu::io::load_safetensors_bytes(&bytes, "w.safetensors").unwrap();
    let c = Classifier::from_state_dict(&gpu, &loaded, "w.safetensors").unwrap();
    assert_eq!(
        (c.labels.clone(), c.mean.clone(), c.std.clone(), c.size),
        (labels, vec![0.3], vec![0.2], 20)
    );
    // Without metadata: the defaults for a one-channel network.
    let plain =
        Classifier::from_state_dict(&gpu, &net.state_dict().unwrap(), "p.safetensors").unwrap();
    assert_eq!(plain.size, 28);
    // Bad metadata names the file and the key.
    dict.metadata_mut()
        .insert("labels".into(), "not json".into());
    let err = match Classifier::from_state_dict(&gpu, &dict, "bad.safetensors") {
        Err(e) => e.to_string(),
        Ok(_) => panic!("bad metadata was accepted"),
    };
    assert!(
        err.contains("bad.safetensors") && err.contains("labels"),
        "{err}"
    );
}
