//! Evaluate trained weights (ours or a torchvision-named state dict trained by PyTorch) on a test
//! set; prints `accuracy: 0.9123` and the loss. The architecture is inferred from the weights.
//!
//! ```text
//! cargo run --release --example evaluate -- --weights resnet.safetensors --dataset fashion-mnist
//! ```

use clap::Parser;
use resnet_wgpu::data::{self, Augment};
use resnet_wgpu::nn::ResNet;
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
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Evaluate the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
}

fn run(a: Args) -> Result<()> {
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.info());
    let dir = a.data_dir.as_deref();
    let need =
        || dir.ok_or_else(|| Error::Invalid(format!("--dataset {} needs --data-dir", a.dataset)));
    let (test, mean, std) = match a.dataset.as_str() {
        "fashion-mnist" => (
            data::load_fashion_mnist(dir, false)?,
            data::FASHION_MNIST_MEAN.to_vec(),
            data::FASHION_MNIST_STD.to_vec(),
        ),
        "mnist" => (
            data::load_mnist_dir(need()?, false, &data::MNIST_CLASSES)?,
            data::MNIST_MEAN.to_vec(),
            data::MNIST_STD.to_vec(),
        ),
        "cifar10" => (
            data::load_cifar10_dir(need()?, false)?,
            data::CIFAR10_MEAN.to_vec(),
            data::CIFAR10_STD.to_vec(),
        ),
        "folder" => {
            let (ds, warnings) = data::load_image_folder(need()?, a.size, 3)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            let (m, s) = data::channel_stats(&ds);
            (ds, m, s)
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown --dataset {other:?}: expected fashion-mnist, mnist, cifar10 or folder"
            )));
        }
    };
    let test = match a.limit {
        Some(n) => test.take(n),
        None => test,
    };
    let dict = resnet_wgpu::io::load_safetensors(&a.weights)?;
    let (mut model, _) = ResNet::from_state_dict(&gpu, &dict, None, true)?;
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
    let m = resnet_wgpu::train::evaluate(&mut model, &test, &norm, a.batch_size)?;
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
