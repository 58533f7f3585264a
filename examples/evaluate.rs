//! Evaluate trained weights (ours or a torchvision-named state dict trained by PyTorch) on a test
//! set; prints `accuracy: 0.9123` and the loss. The architecture is inferred from the weights.
//!
//! ```text
//! cargo run --release --example evaluate -- --weights resnet.safetensors --dataset fashion-mnist
//! ```

#[path = "common/progress.rs"]
mod progress;

use clap::Parser;
use progress::Progress;
use resnet_wgpu::classify::Classifier;
use resnet_wgpu::data::{self, Augment};
use resnet_wgpu::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Evaluate a ResNet's test accuracy")]
struct Args {
    #[arg(long)]
    weights: PathBuf,
    /// fashion-mnist | mnist | cifar10 | folder
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Normalisation mean per channel (default: the data set's usual values).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Image side for folder data sets.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Channels for folder data sets: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Evaluate the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
    /// No progress bar (or, without a terminal, progress lines).
    #[arg(long)]
    quiet: bool,
}

fn run(a: Args) -> Result<()> {
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.info());
    let (test, warnings) =
        data::load_named(&a.dataset, a.data_dir.as_deref(), false, a.size, a.channels)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let test = match a.limit {
        Some(n) => test.take(n),
        None => test,
    };
    let dict = resnet_wgpu::io::load_safetensors(&a.weights)?;
    // Normalisation: the flags, else the weights' metadata (written by the train example), else
    // the data set's usual values, else the statistics of the evaluated images.
    let clf = Classifier::from_state_dict(&gpu, &dict, &a.weights.display().to_string())?;
    let from_weights = dict
        .metadata()
        .contains_key("mean")
        .then(|| (clf.mean.clone(), clf.std.clone()));
    let (mean, std) = from_weights
        .or_else(|| data::standard_normalization(&a.dataset))
        .unwrap_or_else(|| data::channel_stats(&test));
    let mut model = clf.model;
    eprintln!("model: {}", model.config());
    if model.config().in_channels != test.channels {
        return Err(Error::Invalid(format!(
            "{}: the model takes {} channels but the data has {}",
            a.weights.display(),
            model.config().in_channels,
            test.channels
        )));
    }
    let c = test.channels;
    let fit = |v: Option<Vec<f32>>, d: Vec<f32>| -> Vec<f32> {
        match v {
            Some(v) if v.len() == 1 => vec![v[0]; c],
            Some(v) => v,
            None => d,
        }
    };
    let norm = Augment::normalize(&fit(a.mean.clone(), mean), &fit(a.std.clone(), std));
    let mut pb = Progress::new("evaluating", test.len() as u64, "images", a.quiet);
    let m = resnet_wgpu::train::evaluate_with(&mut model, &test, &norm, a.batch_size, |m| {
        pb.set(m.count as u64, format!("acc {:.3}", m.accuracy));
    })?;
    pb.finish();
    println!("images: {}", m.count);
    println!("loss: {:.4}", m.loss);
    println!("accuracy: {:.4}", m.accuracy);
    if let Some(t5) = m.top5 {
        println!("top5: {t5:.4}");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
