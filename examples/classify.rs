//! Classify images with a trained ResNet and print the top-5 classes per image.
//!
//! ```text
//! cargo run --release --example classify -- --weights resnet18.safetensors \
//!     --labels imagenet_classes.txt cat.jpg cup.png
//! ```

use clap::Parser;
use resnet_wgpu::classify::Classifier;
use resnet_wgpu::{Gpu, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Classify JPEG/PNG images with a ResNet (architecture inferred from the weights)"
)]
struct Args {
    /// torchvision-named safetensors weights.
    #[arg(long)]
    weights: PathBuf,
    /// Class names, one per line (as many as the model has classes).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Normalisation mean per channel (default: ImageNet's for RGB models).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Normalisation std per channel.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Side of the center crop (the shorter side is resized to it first).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Images per GPU batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn run(a: Args) -> Result<()> {
    let gpu = Gpu::new()?;
    eprintln!("adapter: {}", gpu.info());
    let mut c = Classifier::load(&gpu, &a.weights)?.with_size(a.size);
    eprintln!("model: {}", c.model.config());
    if let Some(l) = &a.labels {
        c = c.with_labels_file(l)?;
    }
    if a.mean.is_some() || a.std.is_some() {
        let mean = a.mean.clone().unwrap_or_else(|| c.mean.clone());
        let std = a.std.clone().unwrap_or_else(|| c.std.clone());
        c = c.with_normalization(&mean, &std)?;
    }
    let start = Instant::now();
    let results = c.classify_files(&a.images, a.top, a.batch)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    for (path, preds) in a.images.iter().zip(results) {
        println!("{}", path.display());
        for p in preds {
            println!(
                "  {:6.2}%  {} ({})",
                p.probability * 100.0,
                p.label,
                p.class
            );
        }
    }
    eprintln!("{} images in {ms:.1} ms", a.images.len());
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
