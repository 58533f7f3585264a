//! ResNet configuration / parameter layout and safetensors state-dict I/O. Host-only: no GPU.

mod common;

use resnet_wgpu::io::{
    HostData, HostTensor, StateDict, check_against, infer_config, load_safetensors,
    load_safetensors_bytes, save_safetensors, to_safetensors_bytes,
};
use resnet_wgpu::nn::{Block, ParamKind, ResNetConfig, Stem};
use resnet_wgpu::{Error, Rng};
use std::collections::HashMap;
use std::path::PathBuf;

// ---------------------------------------------------------------- configuration and layout

#[test]
fn parameter_counts_match_torchvision() {
    let cases = [
        (ResNetConfig::resnet18(1000), 11_689_512),
        (ResNetConfig::resnet34(1000), 21_797_672),
        (ResNetConfig::resnet50(1000), 25_557_032),
        (ResNetConfig::resnet101(1000), 44_549_160),
        (ResNetConfig::resnet152(1000), 60_192_808),
    ];
    for (c, n) in cases {
        assert_eq!(c.num_parameters(), n, "{c}");
    }
    // Changing the head: 512 * 10 + 10 instead of 512 * 1000 + 1000.
    assert_eq!(
        ResNetConfig::resnet18(10).num_parameters(),
        11_689_512 - 513_000 + 5_130
    );
}

#[test]
fn resnet18_names_shapes_and_order() {
    let specs = ResNetConfig::resnet18(1000).param_specs();
    // torchvision's resnet18().state_dict() has 122 entries.
    assert_eq!(specs.len(), 122);
    let names: Vec<&str> = specs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        &names[..12],
        &[
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight",
            "layer1.0.bn1.bias",
            "layer1.0.bn1.running_mean",
            "layer1.0.bn1.running_var",
            "layer1.0.bn1.num_batches_tracked",
        ]
    );
    assert_eq!(&names[120..], &["fc.weight", "fc.bias"]);
    // The downsample of layer2.0 follows its bn2 and precedes layer2.1.
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert!(pos("layer2.0.bn2.num_batches_tracked") < pos("layer2.0.downsample.0.weight"));
    assert!(pos("layer2.0.downsample.1.num_batches_tracked") < pos("layer2.1.conv1.weight"));
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
    let shape = |n: &str| specs[pos(n)].shape.clone();
    let kind = |n: &str| specs[pos(n)].kind;
    assert_eq!(shape("conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(shape("layer1.1.conv2.weight"), [64, 64, 3, 3]);
    assert_eq!(shape("layer2.0.conv1.weight"), [128, 64, 3, 3]);
    assert_eq!(shape("layer2.0.downsample.0.weight"), [128, 64, 1, 1]);
    assert_eq!(shape("layer2.0.downsample.1.running_var"), [128]);
    assert_eq!(
        kind("layer2.0.downsample.1.running_var"),
        ParamKind::BnRunningVar
    );
    assert_eq!(
        shape("layer4.1.bn2.num_batches_tracked"),
        Vec::<usize>::new()
    );
    assert_eq!(
        kind("layer4.1.bn2.num_batches_tracked"),
        ParamKind::BnNumBatchesTracked
    );
    assert_eq!(shape("fc.weight"), [1000, 512]);
    assert_eq!(shape("fc.bias"), [1000]);
    assert_eq!(kind("fc.bias"), ParamKind::FcBias);
    let downsamples = names
        .iter()
        .filter(|n| n.ends_with("downsample.0.weight"))
        .count();
    assert_eq!(downsamples, 3);
}

#[test]
fn bottleneck_layout_and_block_structure() {
    let c = ResNetConfig::resnet50(1000);
    let specs = c.param_specs();
    // torchvision's resnet50().state_dict() has 320 entries.
    assert_eq!(specs.len(), 320);
    let shape = |n: &str| specs.iter().find(|p| p.name == n).unwrap().shape.clone();
    // layer1.0 needs a projection (64 -> 256 channels) although its stride is 1.
    assert_eq!(shape("layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
    assert_eq!(shape("layer1.0.conv1.weight"), [64, 64, 1, 1]);
    assert_eq!(shape("layer1.0.conv3.weight"), [256, 64, 1, 1]);
    assert_eq!(shape("layer2.0.conv1.weight"), [128, 256, 1, 1]);
    assert_eq!(shape("fc.weight"), [1000, 2048]);
    let blocks = c.blocks();
    assert_eq!(blocks.len(), 16);
    let b = blocks.iter().find(|b| b.prefix == "layer2.0").unwrap();
    assert_eq!(
        (b.in_channels, b.planes, b.out_channels, b.stride),
        (256, 128, 512, 2)
    );
    assert!(b.has_downsample);
    let convs = b.convs();
    // torchvision (v1.5) puts the stride on the 3x3 convolution.
    assert_eq!(
        convs
            .iter()
            .map(|c| (c.kernel, c.stride))
            .collect::<Vec<_>>(),
        [(1, 1), (3, 2), (1, 1)]
    );
    assert_eq!(convs[1].conv, "layer2.0.conv2");
    assert_eq!(convs[1].bn, "layer2.0.bn2");
    let ds = b.downsample().unwrap();
    assert_eq!(
        (ds.conv.as_str(), ds.bn.as_str()),
        ("layer2.0.downsample.0", "layer2.0.downsample.1")
    );
    assert_eq!((ds.kernel, ds.stride, ds.padding), (1, 2, 0));
    assert_eq!(b.last_bn(), "layer2.0.bn3");
    let b = blocks.iter().find(|b| b.prefix == "layer2.1").unwrap();
    assert!(!b.has_downsample && b.stride == 1 && b.in_channels == 512);

    let r18 = ResNetConfig::resnet18(1000);
    let stem = r18.stem_conv();
    assert_eq!(
        (stem.kernel, stem.stride, stem.padding, stem.out_channels),
        (7, 2, 3, 64)
    );
    assert_eq!(stem.output_size(224), Some(112));
    let blocks = r18.blocks();
    assert_eq!(blocks.len(), 8);
    assert!(!blocks[0].has_downsample && blocks[0].stride == 1);
    assert!(blocks[2].has_downsample && blocks[2].stride == 2 && blocks[2].prefix == "layer2.0");
    assert_eq!(blocks[2].convs()[0].stride, 2);
    let cifar = ResNetConfig::resnet18(10).with_stem(Stem::Cifar);
    let s = cifar.stem_conv();
    assert_eq!((s.kernel, s.stride, s.padding), (3, 1, 1));
    assert!(!Stem::Cifar.has_max_pool() && Stem::ImageNet.has_max_pool());
}

#[test]
fn config_builders_names_validation_and_display() {
    assert_eq!(
        ResNetConfig::from_name("resnet50").unwrap(),
        ResNetConfig::resnet50(1000)
    );
    assert_eq!(
        ResNetConfig::from_name("ResNet-101").unwrap(),
        ResNetConfig::resnet101(1000)
    );
    assert_eq!(
        "resnet_152".parse::<ResNetConfig>().unwrap(),
        ResNetConfig::resnet152(1000)
    );
    let e = ResNetConfig::from_name("resnet19").unwrap_err().to_string();
    assert!(e.contains("resnet19") && e.contains("resnet18"), "{e}");

    let c = ResNetConfig::resnet34(10)
        .with_in_channels(1)
        .with_stem(Stem::Cifar);
    assert_eq!((c.in_channels, c.num_classes, c.stem), (1, 10, Stem::Cifar));
    assert_eq!(c.param_specs()[0].shape, [64, 1, 3, 3]);
    assert_eq!(c.standard_name(), None);
    assert_eq!(ResNetConfig::resnet34(10).standard_name(), Some("resnet34"));
    assert_eq!(ResNetConfig::resnet152(7).depth(), 152);
    assert_eq!(ResNetConfig::resnet34(7).depth(), 34);
    let d = ResNetConfig::resnet18(1000).to_string();
    assert!(
        d.contains("ResNet-18") && d.contains("[2, 2, 2, 2]") && d.contains("1000"),
        "{d}"
    );

    let tiny = ResNetConfig::resnet18(10)
        .with_block(Block::Bottleneck)
        .with_layers([1, 1])
        .with_widths([4, 8]);
    tiny.validate().unwrap();
    assert_eq!(tiny.feature_channels(), 32);
    assert_eq!(tiny.param_specs().last().unwrap().shape, [10]);

    let bad = [
        (
            ResNetConfig::resnet18(10)
                .with_layers(Vec::new())
                .with_widths(Vec::new()),
            "empty",
        ),
        (ResNetConfig::resnet18(10).with_layers([2, 2, 2]), "widths"),
        (
            ResNetConfig::resnet18(10).with_layers([2, 0, 2, 2]),
            "0 blocks",
        ),
        (
            ResNetConfig::resnet18(10).with_widths([64, 0, 1, 1]),
            "width 0",
        ),
        (ResNetConfig::resnet18(0), "num_classes"),
        (
            ResNetConfig::resnet18(10).with_in_channels(0),
            "in_channels",
        ),
    ];
    for (c, want) in bad {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e} should mention {want}");
        assert!(c.init_params(&mut Rng::new(0)).is_err());
    }
}

#[test]
fn init_params_follows_torchvision() {
    let c = ResNetConfig::resnet18(10).with_widths([16, 32, 64, 128]);
    let d = c.init_params(&mut Rng::new(1)).unwrap();
    let specs = c.param_specs();
    assert_eq!(
        d.names().collect::<Vec<_>>(),
        specs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
    );
    for p in &specs {
        assert_eq!(d.get(&p.name).unwrap().shape, p.shape, "{}", p.name);
    }
    let f = |n: &str| d.get(n).unwrap().as_f32().unwrap().to_vec();
    // Kaiming normal, fan_out: std = sqrt(2 / (out * k * k)).
    for (name, fan_out) in [
        ("layer3.0.conv2.weight", 64.0f64 * 9.0),
        ("conv1.weight", 16.0 * 49.0),
    ] {
        let w = f(name);
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        let var = w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64;
        let want = 2.0 / fan_out;
        assert!(mean.abs() < 0.05 * want.sqrt(), "{name} mean {mean}");
        assert!(
            (var / want - 1.0).abs() < 0.1,
            "{name} var {var}, want {want}"
        );
    }
    assert!(f("layer1.0.bn2.weight").iter().all(|&x| x == 1.0));
    assert!(f("layer1.0.bn2.bias").iter().all(|&x| x == 0.0));
    assert!(
        f("layer2.0.downsample.1.running_mean")
            .iter()
            .all(|&x| x == 0.0)
    );
    assert!(
        f("layer2.0.downsample.1.running_var")
            .iter()
            .all(|&x| x == 1.0)
    );
    assert_eq!(
        d.get("bn1.num_batches_tracked").unwrap().data,
        HostData::I64(vec![0])
    );
    let bound = 1.0 / 128f32.sqrt();
    for n in ["fc.weight", "fc.bias"] {
        let v = f(n);
        assert!(v.iter().all(|x| x.abs() <= bound), "{n} out of ±{bound}");
        assert!(
            v.iter().any(|x| x.abs() > 0.5 * bound),
            "{n} suspiciously small"
        );
    }
    // Deterministic in the seed.
    assert_eq!(c.init_params(&mut Rng::new(1)).unwrap(), d);
    assert_ne!(c.init_params(&mut Rng::new(2)).unwrap(), d);

    let z = c
        .clone()
        .with_zero_init_residual(true)
        .init_params(&mut Rng::new(1))
        .unwrap();
    for n in ["layer1.0.bn2.weight", "layer4.1.bn2.weight"] {
        assert!(
            z.get(n)
                .unwrap()
                .as_f32()
                .unwrap()
                .iter()
                .all(|&x| x == 0.0),
            "{n}"
        );
    }
    for n in [
        "layer1.0.bn1.weight",
        "layer2.0.downsample.1.weight",
        "bn1.weight",
    ] {
        assert!(
            z.get(n)
                .unwrap()
                .as_f32()
                .unwrap()
                .iter()
                .all(|&x| x == 1.0),
            "{n}"
        );
    }
    let zb = ResNetConfig::resnet50(10)
        .with_widths([4, 8, 8, 8])
        .with_zero_init_residual(true)
        .init_params(&mut Rng::new(1))
        .unwrap();
    assert!(
        zb.get("layer3.5.bn3.weight")
            .unwrap()
            .as_f32()
            .unwrap()
            .iter()
            .all(|&x| x == 0.0)
    );
    assert!(
        zb.get("layer3.5.bn2.weight")
            .unwrap()
            .as_f32()
            .unwrap()
            .iter()
            .all(|&x| x == 1.0)
    );
}

// ---------------------------------------------------------------- golden files and inference

fn golden_params(file: &str) -> StateDict {
    let path = common::golden_dir().join(file);
    let all = load_safetensors(&path).unwrap_or_else(|e| panic!("golden file required: {e}"));
    all.strip_prefix("params.")
}

#[test]
fn golden_state_dicts_load_and_infer() {
    let cases = [
        (
            "tiny_basic.safetensors",
            Block::Basic,
            vec![2, 1, 1, 1],
            Stem::ImageNet,
        ),
        (
            "tiny_bottleneck.safetensors",
            Block::Bottleneck,
            vec![1, 1, 1, 1],
            Stem::ImageNet,
        ),
        (
            "tiny_cifar_basic.safetensors",
            Block::Basic,
            vec![1, 1, 1, 1],
            Stem::Cifar,
        ),
    ];
    for (file, block, layers, stem) in cases {
        let d = golden_params(file);
        let want = ResNetConfig {
            block,
            layers,
            widths: vec![8, 16, 32, 64],
            in_channels: 3,
            num_classes: 10,
            stem,
            zero_init_residual: false,
        };
        assert_eq!(d.len(), want.param_specs().len(), "{file}");
        let got = infer_config(&d).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got, want, "{file}");
        let report = check_against(&d, &got, true).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            report.is_clean() && report.missing_counters.is_empty(),
            "{file}: {report}"
        );
        assert_eq!(report.matched, d.len());
        // The values are the file's, bit for bit.
        let g = common::Golden::open(file);
        for (name, t) in d.iter() {
            let want = g.f32(&format!("params.{name}"));
            let got = t.to_f32_vec();
            assert_eq!(got.len(), want.len(), "{file} {name}");
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{file} {name}"
            );
            assert_eq!(t.shape, g.shape(&format!("params.{name}")), "{file} {name}");
        }
        assert!(matches!(
            d.get("bn1.num_batches_tracked").unwrap().data,
            HostData::I64(_)
        ));
    }
}

#[test]
fn infer_config_on_every_standard_depth() {
    let mut rng = Rng::new(3);
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
        // Narrow widths keep the dicts small; the layout is the same as at full width.
        let c = ResNetConfig::from_name(name)
            .unwrap()
            .with_widths([8, 16, 24, 32])
            .with_num_classes(7);
        let d = c.init_params(&mut rng).unwrap();
        assert_eq!(infer_config(&d).unwrap(), c, "{name}");
        assert!(check_against(&d, &c, true).unwrap().is_clean());
    }
    // Full-width ResNet-50, grayscale input, CIFAR stem.
    let c = ResNetConfig::resnet50(100)
        .with_in_channels(1)
        .with_stem(Stem::Cifar);
    let d = c.init_params(&mut rng).unwrap();
    assert_eq!(d.numel() - running_stats(&c), c.num_parameters());
    assert_eq!(infer_config(&d).unwrap(), c);
}

fn running_stats(c: &ResNetConfig) -> usize {
    c.param_specs()
        .iter()
        .filter(|p| !p.kind.is_trainable())
        .map(|p| p.numel())
        .sum()
}

#[test]
fn wrapper_prefixes_are_accepted() {
    let c = ResNetConfig::resnet18(5).with_widths([4, 8, 8, 8]);
    let d = c.init_params(&mut Rng::new(0)).unwrap();
    for prefix in ["module.", "model."] {
        let wrapped: StateDict = d
            .iter()
            .map(|(k, t)| (format!("{prefix}{k}"), t.clone()))
            .collect();
        assert_eq!(infer_config(&wrapped).unwrap(), c, "{prefix}");
        let r = check_against(&wrapped, &c, true).unwrap();
        assert_eq!(r.stripped_prefix, Some(prefix));
        assert_eq!(r.matched, d.len());
    }
    // A stray tensor outside the prefix is reported with its full name.
    let mut wrapped: StateDict = d
        .iter()
        .map(|(k, t)| (format!("module.{k}"), t.clone()))
        .collect();
    wrapped.insert("step", HostTensor::i64(vec![], vec![5]).unwrap());
    let e = check_against(&wrapped, &c, true).unwrap_err().to_string();
    assert!(e.contains("unexpected 1: step"), "{e}");
}

#[test]
fn infer_config_names_what_is_missing_or_inconsistent() {
    let c = ResNetConfig::resnet18(10).with_widths([4, 8, 8, 8]);
    let d = c.init_params(&mut Rng::new(0)).unwrap();
    let without = |names: &[&str]| {
        let mut d = d.clone();
        for n in names {
            d.remove(n).unwrap();
        }
        infer_config(&d).unwrap_err().to_string()
    };
    let e = without(&["fc.weight"]);
    assert!(e.contains("fc.weight") && e.contains("missing"), "{e}");
    let e = without(&["conv1.weight"]);
    assert!(e.contains("conv1.weight"), "{e}");
    let e = without(&["layer3.1.bn2.running_var"]);
    assert!(e.contains("layer3.1.bn2.running_var"), "{e}");
    // A gap in the block indices.
    let mut g = StateDict::new();
    for (k, t) in d.iter() {
        if !k.starts_with("layer2.0.") {
            g.insert(k, t.clone());
        }
    }
    let e = infer_config(&g).unwrap_err().to_string();
    assert!(e.contains("layer2.0"), "{e}");
    // A 5x5 stem.
    let mut s = d.clone();
    s.insert(
        "conv1.weight",
        HostTensor::f32(vec![4, 3, 5, 5], vec![0.0; 300]).unwrap(),
    );
    let e = infer_config(&s).unwrap_err().to_string();
    assert!(e.contains("5x5"), "{e}");
    // A shape that contradicts the inferred widths.
    let mut s = d.clone();
    s.insert(
        "layer1.1.conv2.weight",
        HostTensor::f32(vec![4, 4, 1, 1], vec![0.0; 16]).unwrap(),
    );
    let e = infer_config(&s).unwrap_err().to_string();
    assert!(
        e.contains("layer1.1.conv2.weight") && e.contains("[4, 4, 3, 3]"),
        "{e}"
    );
}

#[test]
fn strict_and_non_strict_matching() {
    let r18 = ResNetConfig::resnet18(10).with_widths([4, 8, 8, 8]);
    let d = r18.init_params(&mut Rng::new(0)).unwrap();
    // Another architecture, strictly: the message names the tensors.
    let r34 = r18.clone().with_layers([3, 4, 6, 3]);
    let e = check_against(&d, &r34, true).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
    let e = e.to_string();
    for n in [
        "layer1.2.conv1.weight",
        "layer3.5.bn2.running_var",
        "missing",
    ] {
        assert!(e.contains(n), "{n} not in: {e}");
    }
    let r50 = ResNetConfig::resnet50(10).with_widths([4, 8, 8, 8]);
    let e = check_against(&d, &r50, true).unwrap_err().to_string();
    assert!(e.contains("layer1.0.conv3.weight"), "{e}");
    assert!(
        e.contains("layer1.0.conv1.weight (expected [4, 4, 1, 1], found [4, 4, 3, 3])"),
        "{e}"
    );
    assert!(
        e.contains("fc.weight (expected [10, 32], found [10, 8])"),
        "{e}"
    );

    // Fine-tuning: a 1000-class backbone into a 10-class model, non-strict.
    let big = r18
        .clone()
        .with_num_classes(1000)
        .init_params(&mut Rng::new(1))
        .unwrap();
    let r = check_against(&big, &r18, false).unwrap();
    assert!(r.missing.is_empty() && r.unexpected.is_empty());
    let names: Vec<&str> = r.mismatched.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["fc.weight", "fc.bias"]);
    assert_eq!(r.mismatched[0].expected, [10, 8]);
    assert_eq!(r.mismatched[0].found, [1000, 8]);
    assert_eq!(r.matched, big.len() - 2);
    let e = check_against(&big, &r18, true).unwrap_err().to_string();
    assert!(e.contains("fc.bias (expected [10], found [1000])"), "{e}");

    // Headless backbone plus an extra tensor, non-strict.
    let mut h = d.clone();
    h.remove("fc.weight");
    h.remove("fc.bias");
    h.insert("head.proj", HostTensor::f32(vec![1], vec![0.0]).unwrap());
    let r = check_against(&h, &r18, false).unwrap();
    assert_eq!(r.missing, ["fc.weight", "fc.bias"]);
    assert_eq!(r.unexpected, ["head.proj"]);
    assert!(!r.is_clean());

    // Old torchvision checkpoints have no num_batches_tracked: tolerated even strictly.
    let mut old = d.clone();
    let counters: Vec<String> = d
        .names()
        .filter(|n| n.ends_with("num_batches_tracked"))
        .map(String::from)
        .collect();
    for n in &counters {
        old.remove(n);
    }
    let r = check_against(&old, &r18, true).unwrap();
    assert_eq!(r.missing_counters, counters);
    assert_eq!(infer_config(&old).unwrap(), r18);

    // A float where an int64 counter belongs (same shape) is reported as a type mismatch.
    let mut t = d.clone();
    t.insert(
        "bn1.num_batches_tracked",
        HostTensor::f32(vec![], vec![0.0]).unwrap(),
    );
    let e = check_against(&t, &r18, true).unwrap_err().to_string();
    assert!(
        e.contains("bn1.num_batches_tracked (expected I64, found F32)"),
        "{e}"
    );
}

// ---------------------------------------------------------------- safetensors round trip

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nn_io-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn same_bits(a: &StateDict, b: &StateDict) {
    assert_eq!(a.len(), b.len());
    for (k, t) in a.iter() {
        let u = b
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing after round trip"));
        assert_eq!(t.shape, u.shape, "{k}");
        match (&t.data, &u.data) {
            (HostData::F32(x), HostData::F32(y)) => {
                assert!(
                    x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{k}"
                );
                assert_eq!(x.len(), y.len());
            }
            (HostData::I64(x), HostData::I64(y)) => assert_eq!(x, y, "{k}"),
            _ => panic!("{k}: dtype changed"),
        }
    }
}

#[test]
fn round_trip_is_bit_identical() {
    let mut d = ResNetConfig::resnet18(10)
        .with_widths([4, 8, 8, 8])
        .init_params(&mut Rng::new(9))
        .unwrap();
    let specials = vec![
        f32::NAN,
        -0.0,
        f32::MIN_POSITIVE / 3.0,
        f32::INFINITY,
        -f32::MAX,
        1e-45,
    ];
    d.insert(
        "extra.specials",
        HostTensor::f32(vec![2, 3], specials).unwrap(),
    );
    d.insert(
        "extra.ints",
        HostTensor::i64(vec![3], vec![i64::MIN, -1, i64::MAX]).unwrap(),
    );
    d.insert("extra.empty", HostTensor::f32(vec![0, 4], vec![]).unwrap());
    d.insert(
        "bn1.num_batches_tracked",
        HostTensor::i64(vec![], vec![123_456_789_012]).unwrap(),
    );

    let bytes = to_safetensors_bytes(&d).unwrap();
    let back = load_safetensors_bytes(&bytes, "memory").unwrap();
    same_bits(&d, &back);
    assert_eq!(
        to_safetensors_bytes(&back).unwrap(),
        bytes,
        "re-serialising changed the bytes"
    );

    let dir = tmp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let meta = HashMap::from([("epoch".to_string(), "3".to_string())]);
    save_safetensors(&d, &path, Some(meta.clone())).unwrap();
    let back = load_safetensors(&path).unwrap();
    same_bits(&d, &back);
    assert_eq!(back.metadata(), &meta);
    // Saving the loaded dict keeps its metadata; the file is byte-identical.
    let path2 = dir.join("again.safetensors");
    save_safetensors(&back, &path2, None).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&path2).unwrap()
    );
    // Overwriting an existing file works and leaves no temporary file behind.
    save_safetensors(&d.strip_prefix("fc."), &path, None).unwrap();
    assert_eq!(load_safetensors(&path).unwrap().len(), 2);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    assert_eq!(files, ["again.safetensors", "model.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_saves_name_the_path_and_leave_files_alone() {
    let d = ResNetConfig::resnet18(2)
        .with_widths([2, 2, 2, 2])
        .init_params(&mut Rng::new(0))
        .unwrap();
    let dir = tmp_dir("failsave");
    // Into a directory that does not exist: an I/O error naming the path, nothing created.
    let path = dir.join("no_such_dir").join("m.safetensors");
    let e = save_safetensors(&d, &path, None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(!dir.join("no_such_dir").exists());
    // Over something the final rename cannot replace (a non-empty directory): the write of the
    // temporary file succeeds, the rename fails; the directory and its content are untouched and
    // the temporary file is removed.
    let target = dir.join("model.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"precious").unwrap();
    let e = save_safetensors(&d, &target, None).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"precious");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["model.safetensors"], "temporary file left behind");
    // A tensor whose data disagrees with its shape is refused before anything is written.
    let mut bad = StateDict::new();
    bad.insert(
        "w",
        HostTensor {
            shape: vec![2, 2],
            data: HostData::F32(vec![1.0]),
        },
    );
    let e = save_safetensors(&bad, dir.join("bad.safetensors"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`w`") && e.contains("[2, 2]"), "{e}");
    assert!(!dir.join("bad.safetensors").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- dtypes and corrupt input

/// A safetensors file from a hand-written header and data section.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn f16_and_bf16_are_converted_to_f32() {
    let h: Vec<f32> = vec![1.5, -2.0, 0.099975586, 65504.0, 6.0e-8, 0.0];
    let b: Vec<f32> = vec![1.5, -2.0, 0.100_097_656, 3.3895314e38, 1.0e-38, -0.0];
    let mut data = Vec::new();
    for x in &h {
        data.extend(half::f16::from_f32(*x).to_le_bytes());
    }
    for x in &b {
        data.extend(half::bf16::from_f32(*x).to_le_bytes());
    }
    data.extend(7i64.to_le_bytes());
    let header = r#"{"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},
        "b":{"dtype":"BF16","shape":[6],"data_offsets":[12,24]},
        "n":{"dtype":"I64","shape":[],"data_offsets":[24,32]}}"#;
    let d = load_safetensors_bytes(&raw_file(header, &data), "half.safetensors").unwrap();
    assert_eq!(d.names().collect::<Vec<_>>(), ["h", "b", "n"], "file order");
    let hv = d.get("h").unwrap();
    assert_eq!(hv.shape, [2, 3]);
    for (got, want) in hv.as_f32().unwrap().iter().zip(&h) {
        assert_eq!(*got, half::f16::from_f32(*want).to_f32());
        assert!(
            (got - want).abs() <= 1e-3 * want.abs() + 1e-7,
            "{got} vs {want}"
        );
    }
    for (got, want) in d.get("b").unwrap().as_f32().unwrap().iter().zip(&b) {
        assert_eq!(
            got.to_bits(),
            half::bf16::from_f32(*want).to_f32().to_bits()
        );
        assert!((got - want).abs() <= 8e-3 * want.abs(), "{got} vs {want}");
    }
    assert_eq!(d.get("n").unwrap().data, HostData::I64(vec![7]));
    assert_eq!(d.get("n").unwrap().shape, Vec::<usize>::new());
}

#[track_caller]
fn format_error(bytes: &[u8], file: &str, needles: &[&str]) {
    let e = load_safetensors_bytes(bytes, file).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }),
        "expected a format error, got {e:?}"
    );
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{file}: ")), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
}

#[test]
fn corrupt_files_are_format_errors_naming_file_and_problem() {
    let ok_header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let ok = raw_file(ok_header, &[0u8; 8]);
    load_safetensors_bytes(&ok, "ok").unwrap();

    format_error(&[], "empty.safetensors", &["too short"]);
    format_error(&[1, 2, 3], "short.safetensors", &["too short"]);
    // Header length beyond the end of the file.
    let mut long = ok.clone();
    long[..8].copy_from_slice(&1000u64.to_le_bytes());
    format_error(
        &long,
        "long.safetensors",
        &["header length 1000", "past the end"],
    );
    let mut huge = ok.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    format_error(&huge, "huge.safetensors", &["header length"]);
    // Truncated in the middle of the header.
    format_error(&ok[..20], "cut.safetensors", &["past the end"]);
    // Not JSON / not UTF-8 / wrong JSON shape.
    format_error(
        &raw_file("{\"w\": [1, 2", &[]),
        "json.safetensors",
        &["JSON"],
    );
    format_error(
        &raw_file("\u{0}\u{1}xx", &[]),
        "json2.safetensors",
        &["JSON"],
    );
    let mut utf = raw_file("{\"a\":1}", &[]);
    utf[9] = 0xff;
    format_error(&utf, "utf.safetensors", &["UTF-8"]);
    format_error(
        &raw_file(r#"{"w":{"dtype":"F32","shape":[2]}}"#, &[]),
        "nooff.safetensors",
        &["JSON"],
    );
    // Offsets beyond the data section (truncated data).
    let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    format_error(
        &raw_file(h, &[0u8; 8]),
        "trunc.safetensors",
        &["`w`", "16", "8 bytes", "out of range"],
    );
    // Trailing garbage.
    format_error(
        &raw_file(ok_header, &[0u8; 12]),
        "trail.safetensors",
        &["trailing"],
    );
    // Data length that disagrees with dtype and shape.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
               "w":{"dtype":"F32","shape":[3],"data_offsets":[8,16]}}"#;
    format_error(
        &raw_file(h, &[0u8; 16]),
        "size.safetensors",
        &["`w`", "needs 12 bytes", "span 8"],
    );
    // Non-contiguous offsets.
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
               "w":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    format_error(
        &raw_file(h, &[0u8; 12]),
        "gap.safetensors",
        &["`w`", "offsets"],
    );
    // Unknown dtype name.
    let h = r#"{"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
    format_error(
        &raw_file(h, &[0u8; 16]),
        "f128.safetensors",
        &["JSON", "F128"],
    );
    // An absurd shape.
    let h =
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#;
    format_error(&raw_file(h, &[0u8; 4]), "overflow.safetensors", &["`w`"]);
}

#[test]
fn unsupported_dtypes_name_file_tensor_and_dtype() {
    for (dtype, size) in [("U8", 1), ("F64", 8), ("I32", 4), ("BOOL", 1)] {
        let h = format!(
            r#"{{"ok":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},
                "layer1.0.conv1.weight":{{"dtype":"{dtype}","shape":[2],"data_offsets":[4,{}]}}}}"#,
            4 + 2 * size
        );
        let bytes = raw_file(&h, &vec![0u8; 4 + 2 * size]);
        format_error(
            &bytes,
            "weights.safetensors",
            &["`layer1.0.conv1.weight`", dtype, "unsupported"],
        );
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = std::env::temp_dir().join("nn_io-definitely-missing.safetensors");
    let e = load_safetensors(&path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(
        e.to_string()
            .contains("nn_io-definitely-missing.safetensors"),
        "{e}"
    );
}

#[test]
fn state_dict_basics() {
    let mut d = StateDict::new();
    assert!(d.is_empty());
    d.insert("a", HostTensor::f32(vec![2], vec![1.0, 2.0]).unwrap());
    d.insert("b", HostTensor::i64(vec![], vec![3]).unwrap());
    d.insert("c", HostTensor::f32(vec![1], vec![4.0]).unwrap());
    let old = d
        .insert("a", HostTensor::f32(vec![1], vec![5.0]).unwrap())
        .unwrap();
    assert_eq!(old.as_f32().unwrap(), [1.0, 2.0]);
    assert_eq!(d.names().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(d.remove("b").unwrap().as_i64().unwrap(), [3]);
    assert_eq!(d.names().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(d.get("c").unwrap().as_f32().unwrap(), [4.0]);
    assert_eq!(d.len(), 2);
    assert!(HostTensor::f32(vec![2, 2], vec![0.0; 3]).is_err());
    assert_eq!(
        HostTensor::i64(vec![2], vec![1, 2]).unwrap().to_f32_vec(),
        [1.0, 2.0]
    );
    let dbg = format!("{d:?}");
    assert!(dbg.contains("\"a\": HostTensor(F32 [1])"), "{dbg}");
}
