//! The trainer on real data: a small ResNet learns a Fashion-MNIST subset; resuming from a
//! checkpoint continues bit for bit; a diverging run stops with a clear error; bad inputs fail
//! early with messages naming the file.

mod common;
use common::*;
use resnet_wgpu::data::{self, Augment, Dataset};
use resnet_wgpu::nn::{ResNet, ResNetConfig, Stem};
use resnet_wgpu::train::{self, OptimizerKind, ScheduleKind, TrainConfig, Trainer};
use resnet_wgpu::{Rng, Tape, Tensor};

fn fashion(train: bool) -> Dataset {
    data::load_fashion_mnist(None, train)
        .expect("Fashion-MNIST is required (apt-get install dataset-fashion-mnist)")
}

fn small_config(widths: [usize; 4]) -> ResNetConfig {
    ResNetConfig::resnet18(10)
        .with_layers(vec![1, 1, 1, 1])
        .with_widths(widths.to_vec())
        .with_stem(Stem::Cifar)
        .with_in_channels(1)
}

fn norm() -> (Vec<f32>, Vec<f32>) {
    (
        data::FASHION_MNIST_MEAN.to_vec(),
        data::FASHION_MNIST_STD.to_vec(),
    )
}

#[test]
fn learns_a_real_fashion_mnist_subset() {
    let gpu = gpu();
    let train_set = fashion(true).take(2000);
    let test_set = fashion(false).take(1000);
    let (mean, std) = norm();
    let mut cfg = TrainConfig::new(&mean, &std);
    cfg.epochs = 3;
    cfg.batch_size = 32;
    cfg.augment = Augment::normalize(&mean, &std);
    cfg.seed = 1;
    let model = ResNet::new(&gpu, small_config([8, 16, 32, 64]), &mut Rng::new(1)).unwrap();
    let steps = Trainer::steps_for(train_set.len(), cfg.batch_size);
    let mut trainer = Trainer::new(model, cfg, steps);
    let before = trainer.evaluate(&test_set, 250).unwrap();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let m = trainer.train_epoch(&train_set, |_| {}).unwrap();
        println!(
            "epoch {}: train loss {:.4} accuracy {:.4}",
            trainer.epoch(),
            m.loss,
            m.accuracy
        );
        losses.push(m.loss);
    }
    let after = trainer.evaluate(&test_set, 250).unwrap();
    println!(
        "test before {:.4} / {:.4}, after {:.4} / {:.4}",
        before.loss, before.accuracy, after.loss, after.accuracy
    );
    assert!(
        losses[2] < losses[0] * 0.7,
        "training loss did not fall enough: {losses:?}"
    );
    assert!(after.loss < before.loss, "test loss did not fall");
    assert!(
        after.accuracy >= 0.70,
        "test accuracy {:.4} on 1000 held-out images is below 70%",
        after.accuracy
    );
    assert_eq!(after.count, 1000);
    assert!(after.top5.unwrap() > after.accuracy);
    // With progress: the metrics so far after each batch of 250, then the same result.
    let mut counts = Vec::new();
    let with = trainer
        .evaluate_with(&test_set, 250, |m| counts.push(m.count))
        .unwrap();
    assert_eq!(counts, [250, 500, 750, 1000]);
    assert_eq!(with, after);
}

fn tiny_trainer(gpu: &resnet_wgpu::Gpu, seed: u64, optimizer: OptimizerKind) -> Trainer {
    let (mean, std) = norm();
    let mut cfg = TrainConfig::new(&mean, &std);
    cfg.epochs = 2;
    cfg.batch_size = 32;
    cfg.seed = 7;
    cfg.optimizer = optimizer;
    cfg.lr = if optimizer == OptimizerKind::Sgd {
        0.05
    } else {
        1e-3
    };
    cfg.schedule = ScheduleKind::Cosine { warmup_epochs: 1 };
    cfg.augment.pad_crop = 2;
    let model = ResNet::new(gpu, small_config([4, 4, 8, 8]), &mut Rng::new(seed)).unwrap();
    Trainer::new(model, cfg, 4)
}

#[test]
fn resume_continues_bit_for_bit() {
    let gpu = gpu();
    let data = fashion(false).take(128);
    let dir = std::env::temp_dir().join(format!("resnet-wgpu-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for opt in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
        // Two epochs straight.
        let mut straight = tiny_trainer(&gpu, 3, opt);
        let mut curve_a = Vec::new();
        for _ in 0..2 {
            straight
                .train_epoch(&data, |m| curve_a.push(m.loss))
                .unwrap();
        }
        // One epoch, checkpoint, a fresh trainer (other initial weights) resumes, one more epoch.
        let mut first = tiny_trainer(&gpu, 3, opt);
        let mut curve_b = Vec::new();
        first.train_epoch(&data, |m| curve_b.push(m.loss)).unwrap();
        let ckpt = dir.join(format!("{opt:?}.ckpt.safetensors"));
        first.save_checkpoint(&ckpt).unwrap();
        drop(first);
        let mut resumed = tiny_trainer(&gpu, 99, opt);
        resumed.resume(&ckpt).unwrap();
        assert_eq!(resumed.epoch(), 1);
        resumed
            .train_epoch(&data, |m| curve_b.push(m.loss))
            .unwrap();
        assert_eq!(curve_a, curve_b, "{opt:?}: loss curves differ");
        let a = straight.model.state_dict().unwrap();
        let b = resumed.model.state_dict().unwrap();
        for (name, t) in a.iter() {
            let u = b.get(name).unwrap();
            assert_eq!(t, u, "{opt:?}: {name} differs after resuming");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn same_seed_same_curve() {
    let gpu = gpu();
    let data = fashion(false).take(64);
    let run = || {
        let mut t = tiny_trainer(&gpu, 5, OptimizerKind::Sgd);
        let mut c = Vec::new();
        t.train_epoch(&data, |m| c.push(m.loss)).unwrap();
        c
    };
    assert_eq!(run(), run());
}

#[test]
fn pipelined_epoch_equals_step_by_step() {
    // train_epoch keeps one step in flight; the losses must be those of waiting for each step.
    let gpu = gpu();
    let data = fashion(false).take(64);
    let mut a = tiny_trainer(&gpu, 5, OptimizerKind::Sgd);
    let mut pipelined = Vec::new();
    a.train_epoch(&data, |m| pipelined.push(m.loss)).unwrap();
    let mut b = tiny_trainer(&gpu, 5, OptimizerKind::Sgd);
    let batches: Vec<_> = b.epoch_batches(&data).unwrap().collect();
    let stepped: Vec<_> = batches.iter().map(|x| b.step(x).unwrap().loss).collect();
    assert_eq!(pipelined, stepped);
    assert!(pipelined.len() >= 2, "need several steps in flight");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let gpu = gpu();
    let data = fashion(false).take(96);
    let mut t = tiny_trainer(&gpu, 5, OptimizerKind::Sgd);
    t.config.lr = 1e30;
    t.config.schedule = ScheduleKind::Constant;
    let err = t.train_epoch(&data, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("loss became") && err.contains("stopping"),
        "{err}"
    );
}

#[test]
fn bad_inputs_fail_early_naming_the_file() {
    let gpu = gpu();
    let dir = std::env::temp_dir().join(format!("resnet-wgpu-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A checkpoint of another architecture.
    let data = fashion(false).take(32);
    let mut a = tiny_trainer(&gpu, 1, OptimizerKind::Sgd);
    a.train_epoch(&data, |_| {}).unwrap();
    let ckpt = dir.join("other.ckpt.safetensors");
    a.save_checkpoint(&ckpt).unwrap();
    let (mean, std) = norm();
    let other = ResNet::new(&gpu, small_config([8, 8, 8, 8]), &mut Rng::new(1)).unwrap();
    let mut b = Trainer::new(other, TrainConfig::new(&mean, &std), 1);
    let err = b.resume(&ckpt).unwrap_err().to_string();
    assert!(
        err.contains("other.ckpt.safetensors") && err.contains("widths"),
        "{err}"
    );
    // Not a checkpoint at all.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let err = b.resume(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.safetensors"), "{err}");
    // Unwritable outputs are refused before training starts.
    let err = train::check_writable(&dir.join("no/such/dir/out.safetensors"), "--out").unwrap_err();
    assert!(
        err.to_string().contains("--out") && err.to_string().contains("no/such/dir"),
        "{err}"
    );
    let err = train::check_writable(&dir, "--out").unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    train::check_writable(&dir.join("fine.safetensors"), "--out").unwrap();
    // Labels beyond the model's classes.
    let mut bad = data.clone();
    bad.labels[0] = 10;
    bad.classes.push("extra".into());
    let err = a.evaluate(&bad, 16).unwrap_err().to_string();
    assert!(
        err.contains("label 10") && err.contains("10 classes"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn training_steps_stop_allocating() {
    let gpu = new_gpu();
    let model = ResNet::new(&gpu, small_config([4, 4, 8, 8]), &mut Rng::new(2)).unwrap();
    let (mean, std) = norm();
    let mut t = Trainer::new(model, TrainConfig::new(&mean, &std), 10);
    let data = fashion(false).take(64);
    let batch = data::epoch_batches(&data, 32, None, &Augment::normalize(&mean, &std), true)
        .unwrap()
        .next()
        .unwrap();
    t.step(&batch).unwrap();
    t.step(&batch).unwrap();
    let allocated = gpu.pool_stats().allocations;
    let submits = gpu.submit_count();
    for _ in 0..3 {
        t.step(&batch).unwrap();
    }
    assert_eq!(
        gpu.pool_stats().allocations,
        allocated,
        "training steps kept allocating buffers"
    );
    // Upload, forward, backward, optimizer and the read-back of loss and logits: one submit.
    assert_eq!(
        gpu.submit_count() - submits,
        3,
        "one submit per training step"
    );
    // Inference records nothing: no tape, no saved activations.
    let x = Tensor::from_slice(&gpu, &batch.shape, &batch.images).unwrap();
    let tape = Tape::new();
    t.model.infer(&x).unwrap();
    assert!(tape.is_empty());
}
