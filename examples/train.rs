//! Train a ResNet on real data with a progress bar, validation each epoch, checkpoints and a final
//! test evaluation.
//!
//! ```text
//! cargo run --release --example train                      # Fashion-MNIST, defaults that reach >92%
//! cargo run --release --example train -- --dataset cifar10 --data-dir data/cifar-10-batches-bin \
//!     --arch resnet18 --stem cifar --epochs 30
//! cargo run --release --example train -- --dataset folder --data-dir my_photos --size 64 \
//!     --init pretrained.safetensors --freeze-backbone
//! ```

#[path = "common/progress.rs"]
mod progress;

use clap::Parser;
use progress::Progress;
use resnet_wgpu::classify::preprocessing_metadata;
use resnet_wgpu::data::{self, Augment, Dataset};
use resnet_wgpu::nn::{ResNet, ResNetConfig, Stem};
use resnet_wgpu::train::{
    EpochRecord, OptimizerKind, ScheduleKind, TrainConfig, Trainer, check_writable,
};
use resnet_wgpu::{Error, Gpu, Result, Rng};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Train a ResNet on Fashion-MNIST, MNIST, CIFAR-10 or an image folder")]
struct Args {
    /// fashion-mnist | mnist | cifar10 | folder
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Directory of the data (default for fashion-mnist: /usr/share/datasets/fashion-mnist or
    /// ./data/fashion-mnist).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// resnet18 | resnet34 | resnet50 | resnet101 | resnet152 (blocks per stage and block type)
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// imagenet (7x7/2 conv + max pool) or cifar (3x3/1 conv, for small images)
    #[arg(long, default_value = "cifar")]
    stem: String,
    /// Blocks per stage, overriding the architecture's (e.g. 1,1,1,1 for a ResNet-10).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Channels of the four stages, e.g. 64,128,256,512 (torchvision's). Default: 32,64,128,256.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (default: 0.1 for sgd, 2e-3 for adamw).
    #[arg(long)]
    lr: Option<f32>,
    /// sgd | adam | adamw
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// constant | step | cosine | onecycle
    #[arg(long, default_value = "onecycle")]
    schedule: String,
    /// Weight decay (default 5e-4 for sgd, 0.05 for adamw).
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Clip gradients to this global L2 norm.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on N training images only (a seeded random subset).
    #[arg(long)]
    limit_train: Option<usize>,
    /// Evaluate on N test images only (a seeded random subset).
    #[arg(long)]
    limit_test: Option<usize>,
    /// Images held out from the training set for validation (default: 5,000, or a tenth of a
    /// smaller training set; 0: no validation).
    #[arg(long)]
    val_size: Option<usize>,
    /// Image side for folder data sets (resize shorter side + center crop).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Channels for folder data sets: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Disable random crop and flip.
    #[arg(long)]
    no_augment: bool,
    /// Where the trained weights go (torchvision-named safetensors).
    #[arg(long, default_value = "resnet.safetensors")]
    out: PathBuf,
    /// Checkpoint written every epoch (default: OUT with .ckpt.safetensors).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from a checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write one JSON record per epoch to this file.
    #[arg(long)]
    metrics_json: Option<PathBuf>,
    /// Start from pretrained weights (non-strict; the head is replaced when classes differ).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train only the classifier head.
    #[arg(long)]
    freeze_backbone: bool,
    /// Learning-rate multiplier for everything but the head.
    #[arg(long, default_value_t = 1.0)]
    backbone_lr_mult: f32,
    /// No progress bar (log lines only).
    #[arg(long)]
    quiet: bool,
    /// Convolution math: `f32` (exact), or `f16` (operands rounded to f16 on tensor cores,
    /// f32 accumulation; needs an adapter with cooperative matrices, e.g. NVIDIA through Vulkan).
    #[arg(long, default_value = "f32")]
    precision: resnet_wgpu::ConvPrecision,
    /// Time every conv tile (and Winograd, for the 3x3 stride-1 convs) on this adapter at the
    /// first step and keep the fastest per shape (like cuDNN's benchmark mode): faster on
    /// adapters the built-in tile model does not describe, at the cost of a few seconds at the
    /// start; results may then differ from an untuned run by rounding. With `--precision f16`
    /// both engines are timed, and the f32 one runs where it is faster.
    #[arg(long)]
    autotune: bool,
    /// With --autotune: read the conv tuning from this file if it exists (one written on this
    /// adapter, driver and crate version; otherwise an error says what differs), and write
    /// what was tuned there after each epoch and at the end, so that later runs skip tuning.
    #[arg(long, requires = "autotune")]
    autotune_cache: Option<PathBuf>,
}

struct Data {
    train: Dataset,
    val: Option<Dataset>,
    test: Dataset,
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// The trainer's model on `data` in eval mode, with progress (`label`: which set).
fn evaluate(
    trainer: &mut Trainer,
    data: &Dataset,
    label: &str,
    quiet: bool,
) -> Result<resnet_wgpu::train::Metrics> {
    let mut pb = Progress::new(label, data.len() as u64, "images", quiet);
    let m = trainer.evaluate_with(data, 256, |m| {
        pb.set(
            m.count as u64,
            format!("loss {:.4} acc {:.3}", m.loss, m.accuracy),
        );
    })?;
    pb.finish();
    Ok(m)
}

fn load_data(a: &Args) -> Result<Data> {
    // Image folders decode every file: show it.
    let quiet = a.dataset != "folder" || a.quiet;
    let bar = std::sync::Mutex::new(Progress::new("decoding", 0, "images", quiet));
    let (train, test, warnings) = data::load_named_splits(
        &a.dataset,
        a.data_dir.as_deref(),
        a.size,
        a.channels,
        &|done, total| {
            let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
            bar.set_length(total as u64);
            bar.set(done as u64, String::new());
        },
    )?;
    bar.into_inner().unwrap_or_else(|e| e.into_inner()).finish();
    for w in warnings {
        eprintln!("warning: {w}");
    }
    // Seeded random subsets: folders list their images class by class, so the first N would
    // hold only the first classes.
    let train = match a.limit_train {
        Some(n) if n < train.len() => train.split(n, a.seed ^ 0x1317)?.1,
        _ => train,
    };
    let test = match a.limit_test {
        Some(n) if n < test.len() => test.split(n, a.seed ^ 0x7E57)?.1,
        _ => test,
    };
    let val_size = validation_size(a.val_size, train.len())?;
    let (train, val) = if val_size > 0 {
        let (t, v) = train.split(val_size, a.seed ^ 0x5A11)?;
        (t, Some(v))
    } else {
        (train, None)
    };
    let (mean, std) =
        data::standard_normalization(&a.dataset).unwrap_or_else(|| data::channel_stats(&train));
    Ok(Data {
        train,
        val,
        test,
        mean,
        std,
    })
}

/// Images to hold out for validation from `train` training images: `asked` if given (it must
/// leave some to train on), else 5,000 or a tenth of a smaller set.
fn validation_size(asked: Option<usize>, train: usize) -> Result<usize> {
    match asked {
        Some(n) if n > 0 && n >= train => Err(Error::Invalid(format!(
            "--val-size {n} would hold out all {train} training images: expected fewer \
             (0 turns validation off)"
        ))),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_VAL_SIZE.min(train / 10)),
    }
}

/// Validation images held out by default (from a training set of at least ten times as many).
const DEFAULT_VAL_SIZE: usize = 5000;

fn model_config(a: &Args, data: &Data) -> Result<ResNetConfig> {
    let mut c = ResNetConfig::from_name(&a.arch)?.with_num_classes(data.train.num_classes());
    let stem = match a.stem.as_str() {
        "imagenet" => Stem::ImageNet,
        "cifar" => Stem::Cifar,
        s => {
            return Err(Error::Invalid(format!(
                "unknown --stem {s:?}: expected imagenet or cifar"
            )));
        }
    };
    c = c.with_stem(stem).with_in_channels(data.train.channels);
    c = c.with_widths(a.widths.clone().unwrap_or_else(|| vec![32, 64, 128, 256]));
    if let Some(layers) = &a.layers {
        c = c.with_layers(layers.clone());
    }
    c.validate()?;
    Ok(c)
}

fn run(a: Args) -> Result<()> {
    let gpu = Gpu::with_conv_precision(a.precision)?;
    gpu.set_conv_autotune(a.autotune)?;
    println!("adapter: {}", gpu.info());
    if let Some(path) = a.autotune_cache.as_ref().filter(|p| p.exists()) {
        let n = gpu.load_conv_tuning(path)?;
        println!(
            "autotune: {n} tuned conv shapes and passes from {}",
            path.display()
        );
    }
    if let Some(config) = gpu.mma_config() {
        println!("convolutions: f16 operands on tensor cores ({config:?}), f32 accumulation");
    }
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| a.out.with_extension("ckpt.safetensors"));
    check_writable(&a.out, "--out")?;
    check_writable(&checkpoint, "--checkpoint")?;
    if let Some(m) = &a.metrics_json {
        check_writable(m, "--metrics-json")?;
    }
    let data = load_data(&a)?;
    println!(
        "data: {} train, {} validation, {} test images of {}x{}x{}, {} classes",
        data.train.len(),
        data.val.as_ref().map_or(0, |v| v.len()),
        data.test.len(),
        data.train.channels,
        data.train.height,
        data.train.width,
        data.train.num_classes()
    );
    let optimizer: OptimizerKind = a.optimizer.parse()?;
    let mut cfg = TrainConfig::new(&data.mean, &data.std);
    cfg.epochs = a.epochs;
    cfg.batch_size = a.batch_size;
    cfg.optimizer = optimizer;
    let adam = optimizer != OptimizerKind::Sgd;
    cfg.lr = a.lr.unwrap_or(if adam { 2e-3 } else { 0.1 });
    cfg.weight_decay = a
        .weight_decay
        .unwrap_or(if optimizer == OptimizerKind::AdamW {
            0.05
        } else {
            5e-4
        });
    cfg.momentum = a.momentum;
    cfg.schedule = a.schedule.parse::<ScheduleKind>()?;
    cfg.label_smoothing = a.label_smoothing;
    cfg.clip_grad_norm = a.clip_grad_norm;
    cfg.seed = a.seed;
    cfg.freeze_backbone = a.freeze_backbone;
    cfg.backbone_lr_mult = a.backbone_lr_mult;
    if a.no_augment {
        cfg.augment = Augment::normalize(&data.mean, &data.std);
    } else if data.train.height < 16 {
        cfg.augment.pad_crop = 1;
    }
    if data.train.len() < cfg.batch_size {
        return Err(Error::Invalid(format!(
            "--batch-size {} is larger than the {} training images",
            cfg.batch_size,
            data.train.len()
        )));
    }

    let mut rng = Rng::new(a.seed);
    let model = match &a.init {
        Some(path) => {
            let dict = resnet_wgpu::io::load_safetensors(path)?;
            let (mut m, report) = ResNet::from_state_dict(&gpu, &dict, None, false)?;
            if m.config().num_classes != data.train.num_classes() {
                println!(
                    "init: replacing the {}-class head with a {}-class one",
                    m.config().num_classes,
                    data.train.num_classes()
                );
                m.replace_head(data.train.num_classes(), &mut rng)?;
            }
            if m.config().in_channels != data.train.channels {
                return Err(Error::Invalid(format!(
                    "{}: the pretrained network takes {} input channels, the data has {}",
                    path.display(),
                    m.config().in_channels,
                    data.train.channels
                )));
            }
            if !report.is_clean() {
                println!("init: {report}");
            }
            println!("init: loaded {} ({})", path.display(), m.config());
            m
        }
        None => ResNet::new(&gpu, model_config(&a, &data)?, &mut rng)?,
    };
    println!(
        "model: {} ({} parameters)",
        model.config(),
        model.num_parameters()
    );
    let steps = Trainer::steps_for(data.train.len(), cfg.batch_size);
    let mut trainer = Trainer::new(model, cfg, steps);
    if let Some(path) = &a.resume {
        trainer.resume(path)?;
        println!("resumed {} at epoch {}", path.display(), trainer.epoch());
    }
    let mut metrics_file = match &a.metrics_json {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(a.resume.is_some())
                .write(true)
                .truncate(a.resume.is_none())
                .open(p)
                .map_err(|e| Error::io(p, e))?,
        ),
        None => None,
    };

    let train = Arc::new(data.train.clone());
    let epochs = trainer.config.epochs;
    let run_start = Instant::now();
    for epoch in trainer.epoch()..epochs {
        let start = Instant::now();
        let label = format!("epoch {}/{}", epoch + 1, epochs);
        let images = (steps * trainer.config.batch_size) as u64;
        let mut pb = Progress::new(&label, images, "images", a.quiet);
        // Running means for the progress bar; the trainer keeps one step in flight.
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0f64, 0usize);
        let batches = trainer.prefetch_epoch(train.clone())?;
        let epoch_metrics = trainer.run_steps(batches, |m, lr| {
            loss_sum += m.loss * m.count as f64;
            correct += m.accuracy * m.count as f64;
            seen += m.count;
            let msg = format!(
                "loss {:.4} acc {:.3} lr {lr:.4}",
                loss_sum / seen as f64,
                correct / seen as f64,
            );
            pb.set(seen as u64, msg);
        })?;
        pb.finish();
        let seconds = start.elapsed().as_secs_f64();
        trainer.finish_epoch();
        let mut rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: epoch_metrics.loss,
            train_accuracy: epoch_metrics.accuracy,
            lr: trainer.lr() as f64,
            images_per_s: epoch_metrics.count as f64 / seconds,
            seconds,
            ..Default::default()
        };
        if let Some(val) = &data.val {
            let v = evaluate(&mut trainer, val, "validation", a.quiet)?;
            rec.val_loss = Some(v.loss);
            rec.val_accuracy = Some(v.accuracy);
            rec.val_top5 = v.top5;
        }
        trainer.save_checkpoint(&checkpoint)?;
        let last = epoch + 1 == epochs;
        // The last epoch's tuning is saved at the end, with the test evaluation's.
        if let Some(path) = a.autotune_cache.as_ref().filter(|_| !last) {
            gpu.save_conv_tuning(path)?;
        }
        if last {
            let t = evaluate(&mut trainer, &data.test, "test", a.quiet)?;
            rec.test_accuracy = Some(t.accuracy);
            rec.test_loss = Some(t.loss);
        }
        println!(
            "epoch {}/{}: train loss {:.4} acc {:.4} | val loss {} acc {} | {:.0} img/s, {:.1}s",
            rec.epoch,
            epochs,
            rec.train_loss,
            rec.train_accuracy,
            rec.val_loss.map_or("-".into(), |v| format!("{v:.4}")),
            rec.val_accuracy.map_or("-".into(), |v| format!("{v:.4}")),
            rec.images_per_s,
            seconds
        );
        if let Some(f) = metrics_file.as_mut() {
            let line = serde_json::to_string(&rec).expect("serialisable record");
            writeln!(f, "{line}").map_err(|e| Error::io(a.metrics_json.as_ref().unwrap(), e))?;
        }
        if last {
            println!(
                "test: loss {:.4} accuracy {:.4} on {} images ({:.1} min in all)",
                rec.test_loss.unwrap_or(f64::NAN),
                rec.test_accuracy.unwrap_or(f64::NAN),
                data.test.len(),
                run_start.elapsed().as_secs_f64() / 60.0
            );
        }
    }
    // The weights carry their preprocessing and class names, for evaluate and classify.
    let dict = trainer.model.state_dict()?;
    let meta = preprocessing_metadata(
        &data.train.classes,
        &data.mean,
        &data.std,
        data.train.height,
        trainer.model.config(),
    );
    resnet_wgpu::io::save_safetensors(&dict, &a.out, Some(meta))?;
    println!("saved {}", a.out.display());
    if let Some(path) = &a.autotune_cache {
        gpu.save_conv_tuning(path)?;
        println!("autotune: tuning saved to {}", path.display());
    }
    if a.autotune {
        let tuned = gpu.tuned_convs();
        let moved = tuned.iter().filter(|t| t.direct_moved()).count();
        let wino = tuned.iter().filter(|t| t.winograd).count();
        let f2 = tuned
            .iter()
            .filter(|t| t.winograd && (t.winograd_f16 || t.winograd_tile.m() == 2))
            .count();
        let algos = tuned
            .iter()
            .filter(|t| t.winograd != t.model_winograd)
            .count();
        println!(
            "autotune: {} conv shapes and passes tuned, {moved} on another direct plan than \
             the untuned one, {wino} on Winograd ({f2} of them F(2x2, 3x3); {algos} against Auto's \
             rule)",
            tuned.len()
        );
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
