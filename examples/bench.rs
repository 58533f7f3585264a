//! Convolution benchmark over the distinct conv shapes of ResNet-18 at 224x224.
//!
//! `cargo run --release --example bench -- [--batch N] [--iters N]`
//!
//! For each shape: wall time per forward, input-gradient and weight-gradient pass (the weight
//! gradient includes its split-K reduction), averaged over `--iters` runs after one warm-up and
//! synchronised with `Gpu::synchronize`, and the GFLOP/s that gives (2 * MACs / time).

use clap::Parser;
use resnet_wgpu::{Gpu, Result, Tensor, ops};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Time the conv kernels on the conv shapes of ResNet-18 (224x224 input)")]
struct Args {
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed iterations per pass (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// What to time: `convs` (per-layer conv kernels), `models` (ResNet-18/50 inference at
    /// 224x224, batch 1, and a ResNet-18 training step at `--batch`) or `all`.
    #[arg(long, default_value = "all")]
    what: String,
}

/// The model figures: ResNet-18/50 inference at 224x224 (batch 1 and 64) and training
/// steps (forward, backward, SGD momentum) for ResNet-18 and ResNet-50 at 224x224, batch `batch`,
/// and ResNet-18 at 32x32 (10 classes), batch 256.
fn bench_models(gpu: &Gpu, batch: usize, iters: usize) -> Result<()> {
    use resnet_wgpu::nn::{ResNet, ResNetConfig};
    use resnet_wgpu::optim::{Optimizer, ParamUpdate, Sgd};
    use resnet_wgpu::{Rng, Tape};
    println!("\n{:<40} {:>12} {:>10}", "model", "ms", "images/s");
    for (name, config, n) in [
        ("ResNet-18", ResNetConfig::resnet18(1000), 1),
        ("ResNet-18", ResNetConfig::resnet18(1000), 64),
        ("ResNet-50", ResNetConfig::resnet50(1000), 1),
        ("ResNet-50", ResNetConfig::resnet50(1000), 64),
    ] {
        let mut net = ResNet::new(gpu, config, &mut Rng::new(0))?;
        let x = Tensor::full(gpu, &[n, 3, 224, 224], 0.5)?;
        let t = time(gpu, iters, || net.infer(&x))?;
        println!(
            "{:<40} {:>12.2} {:>10.1}",
            format!("{name} inference 224, batch {n}"),
            t * 1e3,
            n as f64 / t
        );
    }
    for (name, config, hw, n) in [
        ("ResNet-18", ResNetConfig::resnet18(1000), 224, batch),
        ("ResNet-18", ResNetConfig::resnet18(10), 32, 256),
        ("ResNet-50", ResNetConfig::resnet50(1000), 224, batch),
    ] {
        let mut net = ResNet::new(gpu, config, &mut Rng::new(0))?;
        let x = Tensor::full(gpu, &[n, 3, hw, hw], 0.5)?;
        let labels = Tensor::from_u32(gpu, &[n], &vec![1; n])?;
        let mut sgd = Sgd::new(0.9, false, 5e-4);
        let t = time(gpu, iters, || {
            let tape = Tape::new();
            let (logits, binds) = net.forward_train(&tape, &x, |_| true)?;
            let loss = logits.cross_entropy(&labels, 0.0)?;
            let grads = tape.backward(&loss)?;
            let updates: Vec<ParamUpdate<'_>> = net
                .params()
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    grads.get(binds.var(i)).map(|g| ParamUpdate {
                        slot: i,
                        param: &p.tensor,
                        grad: g,
                        lr: 0.01,
                    })
                })
                .collect();
            sgd.step(&updates)?;
            Ok(loss.into_tensor())
        })?;
        println!(
            "{:<40} {:>12.2} {:>10.1}",
            format!("{name} train step {hw}, batch {n}"),
            t * 1e3,
            n as f64 / t
        );
    }
    Ok(())
}

struct Shape {
    name: &'static str,
    c: usize,
    hw: usize,
    k: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

const fn shape(
    name: &'static str,
    c: usize,
    hw: usize,
    k: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
) -> Shape {
    Shape {
        name,
        c,
        hw,
        k,
        kernel,
        stride,
        pad,
    }
}

/// Distinct conv shapes of ResNet-18 (input channels, input size, output channels, kernel,
/// stride, padding), with how often each occurs in the network.
const SHAPES: [(Shape, usize); 11] = [
    (shape("stem 7x7/2", 3, 224, 64, 7, 2, 3), 1),
    (shape("layer1 3x3", 64, 56, 64, 3, 1, 1), 4),
    (shape("layer2 3x3/2", 64, 56, 128, 3, 2, 1), 1),
    (shape("layer2 3x3", 128, 28, 128, 3, 1, 1), 3),
    (shape("layer2 down 1x1/2", 64, 56, 128, 1, 2, 0), 1),
    (shape("layer3 3x3/2", 128, 28, 256, 3, 2, 1), 1),
    (shape("layer3 3x3", 256, 14, 256, 3, 1, 1), 3),
    (shape("layer3 down 1x1/2", 128, 28, 256, 1, 2, 0), 1),
    (shape("layer4 3x3/2", 256, 14, 512, 3, 2, 1), 1),
    (shape("layer4 3x3", 512, 7, 512, 3, 1, 1), 3),
    (shape("layer4 down 1x1/2", 256, 14, 512, 1, 2, 0), 1),
];

fn time(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    drop(f()?);
    gpu.synchronize()?;
    let start = Instant::now();
    for _ in 0..iters {
        drop(f()?);
    }
    gpu.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let iters = args.iters.max(1);
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.info());
    println!(
        "batch {}, {iters} timed iterations per pass after one warm-up\n",
        args.batch
    );
    if args.what == "models" {
        return bench_models(&gpu, args.batch, iters);
    }
    println!(
        "{:<20} {:>16} {:>6} {:>8} | {:>9} {:>8} | {:>9} {:>8} | {:>9} {:>8} {:>6}",
        "layer",
        "in -> out",
        "count",
        "GMAC",
        "fwd ms",
        "GFLOP/s",
        "dx ms",
        "GFLOP/s",
        "dw ms",
        "GFLOP/s",
        "splits"
    );
    let mut totals = [0f64; 3];
    let mut total_macs = 0f64;
    for (s, count) in &SHAPES {
        let n = args.batch;
        let x_shape = [n, s.c, s.hw, s.hw];
        let w_shape = [s.k, s.c, s.kernel, s.kernel];
        let (oh, ow) = ops::conv2d_output_size(s.hw, s.hw, s.kernel, s.stride, s.pad);
        let x = Tensor::full(&gpu, &x_shape, 0.5)?;
        let w = Tensor::full(&gpu, &w_shape, 0.01)?;
        let gy = Tensor::full(&gpu, &[n, s.k, oh, ow], 0.1)?;
        let macs = (n * s.k * oh * ow * s.c * s.kernel * s.kernel) as f64;
        let fwd = time(&gpu, iters, || ops::conv2d(&x, &w, None, s.stride, s.pad))?;
        let dx = time(&gpu, iters, || {
            ops::conv2d_backward_input(&gy, &w, x_shape, s.stride, s.pad)
        })?;
        let dw = time(&gpu, iters, || {
            ops::conv2d_backward_weight(&x, &gy, w_shape, s.stride, s.pad)
        })?;
        let splits = ops::conv2d_weight_grad_splits(x_shape, w_shape, s.stride, s.pad)?;
        let gflops = |t: f64| 2.0 * macs / t / 1e9;
        println!(
            "{:<20} {:>16} {:>6} {:>8.3} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} | {:>9.3} {:>8.1} {:>6}",
            s.name,
            format!("{}x{}² -> {}x{}²", s.c, s.hw, s.k, oh),
            count,
            macs / 1e9,
            fwd * 1e3,
            gflops(fwd),
            dx * 1e3,
            gflops(dx),
            dw * 1e3,
            gflops(dw),
            splits
        );
        for (t, v) in totals.iter_mut().zip([fwd, dx, dw]) {
            *t += v * *count as f64;
        }
        total_macs += macs * *count as f64;
    }
    let g = |t: f64| 2.0 * total_macs / t / 1e9;
    println!(
        "\nResNet-18 convs, weighted by count ({:.2} GMAC per pass): forward {:.1} ms ({:.1} GFLOP/s), \
         input gradient {:.1} ms ({:.1} GFLOP/s), weight gradient {:.1} ms ({:.1} GFLOP/s)",
        total_macs / 1e9,
        totals[0] * 1e3,
        g(totals[0]),
        totals[1] * 1e3,
        g(totals[1]),
        totals[2] * 1e3,
        g(totals[2])
    );
    println!("(the stem's input gradient is never needed in training but is timed here too)");
    if args.what == "all" {
        bench_models(&gpu, args.batch, iters)?;
    }
    Ok(())
}
