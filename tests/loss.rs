//! Softmax and the fused softmax + cross-entropy: PyTorch golden, CPU reference, stability, errors.

mod common;
use common::*;
use resnet_wgpu::{Tape, Tensor, ops, reference};

#[test]
fn cross_entropy_matches_golden() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let logits = g.tensor(&gpu, "xent.logits");
    let labels: Vec<u32> = g.i64("xent.labels").into_iter().map(|l| l as u32).collect();
    let k = logits.shape()[1];
    let labels = ops::upload_labels(&gpu, &labels, k).unwrap();
    let (loss, glogits) = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
    assert_eq!(loss.shape(), &[1]);
    assert_close(
        &loss.to_vec().unwrap(),
        &g.f32("xent.loss"),
        1e-4,
        1e-5,
        "xent.loss",
    );
    assert_close(
        &glogits.to_vec().unwrap(),
        &g.f32("xent.glogits"),
        1e-4,
        1e-5,
        "xent.glogits",
    );

    // The same through the tape.
    let tape = Tape::new();
    let lv = tape.leaf(logits.clone());
    let l = lv.cross_entropy(&labels, 0.0).unwrap();
    assert_close(
        &l.tensor().to_vec().unwrap(),
        &g.f32("xent.loss"),
        1e-4,
        1e-5,
        "tape loss",
    );
    let grads = tape.backward(&l).unwrap();
    assert_close(
        &grads.get(&lv).unwrap().to_vec().unwrap(),
        &g.f32("xent.glogits"),
        1e-4,
        1e-5,
        "tape glogits",
    );
}

#[test]
fn cross_entropy_matches_reference_with_label_smoothing() {
    let gpu = gpu();
    let cases = [
        (1, 1, 0.0),
        (1, 10, 0.1),
        (5, 3, 0.0),
        (7, 1000, 0.1),
        (3, 257, 0.3),
        (300, 10, 0.05),
        (2, 2, 1.0),
    ];
    for (i, &(n, k, eps)) in cases.iter().enumerate() {
        let logits: Vec<f32> = random_vec(n * k, 40 + i as u64)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let labels: Vec<u32> = (0..n).map(|r| ((r * 7 + i) % k) as u32).collect();
        let lt = Tensor::from_slice(&gpu, &[n, k], &logits).unwrap();
        let yt = ops::upload_labels(&gpu, &labels, k).unwrap();
        let (loss, g) = ops::cross_entropy(&lt, &yt, eps).unwrap();
        let (el, eg) = reference::cross_entropy(&logits, &labels, n, k, eps);
        let what = format!("n {n} k {k} eps {eps}");
        assert_close(
            &loss.to_vec().unwrap(),
            &[el],
            1e-4,
            1e-5,
            &format!("{what} loss"),
        );
        assert_close(
            &g.to_vec().unwrap(),
            &eg,
            1e-4,
            1e-6,
            &format!("{what} glogits"),
        );
    }
}

#[test]
fn large_logits_stay_finite_and_accurate() {
    let gpu = gpu();
    let (n, k) = (4, 37);
    let logits: Vec<f32> = random_vec(n * k, 9).iter().map(|v| v * 1e4 + 3e4).collect();
    let labels: Vec<u32> = vec![0, 5, 36, 17];
    let lt = Tensor::from_slice(&gpu, &[n, k], &logits).unwrap();
    let yt = ops::upload_labels(&gpu, &labels, k).unwrap();
    for eps in [0.0, 0.1] {
        let (loss, g) = ops::cross_entropy(&lt, &yt, eps).unwrap();
        let (el, eg) = reference::cross_entropy(&logits, &labels, n, k, eps);
        assert_close(
            &loss.to_vec().unwrap(),
            &[el],
            1e-5,
            1e-2,
            "large-logit loss",
        );
        assert_close(&g.to_vec().unwrap(), &eg, 1e-4, 1e-6, "large-logit glogits");
    }
    let p = ops::softmax(&lt).unwrap().to_vec().unwrap();
    assert_close(
        &p,
        &reference::softmax(&logits, n, k),
        1e-4,
        1e-6,
        "large-logit softmax",
    );
}

#[test]
fn softmax_matches_reference() {
    let gpu = gpu();
    for (i, &(n, k)) in [(1, 1), (3, 10), (2, 1000), (70, 5)].iter().enumerate() {
        let logits: Vec<f32> = random_vec(n * k, 60 + i as u64)
            .iter()
            .map(|v| 5.0 * v)
            .collect();
        let t = Tensor::from_slice(&gpu, &[n, k], &logits).unwrap();
        let p = ops::softmax(&t).unwrap().to_vec().unwrap();
        assert_close(
            &p,
            &reference::softmax(&logits, n, k),
            1e-4,
            1e-6,
            &format!("softmax {n}x{k}"),
        );
        for row in p.chunks(k) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn upstream_gradient_scales_the_fused_gradient() {
    let gpu = gpu();
    let (n, k) = (3, 4);
    let logits = random_vec(n * k, 77);
    let labels = [3u32, 0, 2];
    let tape = Tape::new();
    let lv = tape.leaf(Tensor::from_slice(&gpu, &[n, k], &logits).unwrap());
    let yt = ops::upload_labels(&gpu, &labels, k).unwrap();
    let loss = lv.cross_entropy(&yt, 0.2).unwrap().scale(-2.5).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let (_, eg) = reference::cross_entropy(&logits, &labels, n, k, 0.2);
    let eg: Vec<f32> = eg.iter().map(|g| -2.5 * g).collect();
    assert_close(
        &grads.get(&lv).unwrap().to_vec().unwrap(),
        &eg,
        1e-4,
        1e-6,
        "scaled glogits",
    );
}

#[test]
fn bad_labels_and_arguments_are_errors() {
    let gpu = gpu();
    let logits = Tensor::zeros(&gpu, &[2, 3]).unwrap();
    let err = ops::upload_labels(&gpu, &[0, 3], 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 3") && err.contains("3 classes"),
        "{err}"
    );
    let f32_labels = Tensor::zeros(&gpu, &[2]).unwrap();
    let err = ops::cross_entropy(&logits, &f32_labels, 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cross_entropy:") && err.contains("U32"),
        "{err}"
    );
    let short = Tensor::from_u32(&gpu, &[1], &[0]).unwrap();
    assert!(
        ops::cross_entropy(&logits, &short, 0.0)
            .unwrap_err()
            .to_string()
            .contains("[2]")
    );
    let ok = Tensor::from_u32(&gpu, &[2], &[0, 2]).unwrap();
    assert!(
        ops::cross_entropy(&logits, &ok, -0.1)
            .unwrap_err()
            .to_string()
            .contains("label_smoothing")
    );
    assert!(ops::cross_entropy(&logits, &ok, f32::NAN).is_err());
    assert!(ops::cross_entropy(&logits.reshape(&[6]).unwrap(), &ok, 0.0).is_err());
    assert!(ops::softmax(&ok).is_err());
    // A label that bypasses the host check poisons the loss with NaN instead of reading out of bounds.
    let bad = Tensor::from_u32(&gpu, &[2], &[0, 7]).unwrap();
    let (loss, g) = ops::cross_entropy(&logits, &bad, 0.0).unwrap();
    assert!(loss.to_vec().unwrap()[0].is_nan());
    let g = g.to_vec().unwrap();
    assert!(g[..3].iter().all(|v| v.is_finite()) && g[3..].iter().all(|v| v.is_nan()));
}
