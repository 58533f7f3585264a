//! The benchmark suite: per-kernel throughput on ResNet-18's shapes and whole-model figures.
//!
//! `cargo run --release --example bench -- [--batch N] [--iters N] [--what WHAT] [--json PATH]`
//!
//! - `convs`: every distinct conv shape of ResNet-18 (or with `--conv-shapes r50` of ResNet-50)
//!   at 224x224, batch `--batch`: forward, input gradient (every phase) and weight gradient
//!   (GEMM plus split-K reduction), in GFLOP/s (2 * MACs / time).
//! - `kernels`: `convs` plus training-mode batch norm (forward and backward) on the activations
//!   of ResNet-18's four stages and 3x3/2 max pooling (forward and backward) on the stem output,
//!   in GB/s: the minimum bytes each pass must read and write once, divided by its time.
//! - `models`: ResNet-18/50 inference at 224x224 (latency at batch 1, throughput at
//!   `--infer-batch`, and that batch again with the separate conv, batch-norm and add kernels
//!   that inference's fused ones replace), the train example's default model's inference at
//!   the batch of 256 that the example evaluates with (`main`), and training steps (forward, backward, SGD momentum;
//!   each step submitted once recorded, as the trainer does, so that recording the next one
//!   overlaps the GPU's work; the timed steps end with a synchronize) for ResNet-18 and
//!   ResNet-50 at 224x224, batch `--batch`, ResNet-18 at 32x32 (10 classes), batch
//!   `--cifar-batch`, and the train example's default model on Fashion-MNIST's images at its
//!   batch of 128 (`main`: the README's main job), each with the CPU time spent recording the step,
//!   its GPU time (the dispatches' sum, and their span from the first start to the last end,
//!   which adds the device's idle gaps between them), the kernel families it spends that time
//!   in, and its peak memory: the pool's (cached buffers included) and that of the tensors in
//!   use at once.
//!   Before them, the host's CPU time per dispatch: recording, and finishing and submitting, a
//!   chain of 400 small dispatches.
//! - `memory`: the batch norm and max pooling figures of `kernels` alone.
//! - `all`: `kernels` and `models`.
//! - `tiles` (tuning, not in `all`): every pass of every conv shape with each tile of `--tiles`
//!   in turn, then with the library's plan (and with `--checks-ab` the plan on a second device
//!   compiled with wgpu's runtime checks), and the first figure again at the end as a drift
//!   check. With `--precision f16`, the f16 engine's tiles (64x64, 128x64, 128x128).
//!
//! With `--autotune` every figure runs with conv autotuning on ([`Gpu::set_conv_autotune`]):
//! each figure's warm-up tunes the shapes it meets, and a table of the tuned tiles and
//! algorithms (with every tile's time, Winograd's where the shape takes it, and the model's
//! choice) ends the output. With `--precision f16` both engines' tiles are timed, and
//! Winograd with its GEMMs on either.
//!
//! Each figure first repeats its work for `--warmup-ms` and until its speed settles (at least
//! once, which compiles its pipelines), so that a GPU's clocks are up. Wall times are averaged
//! over `--iters` synchronised runs after that warm-up. When the adapter
//! has timestamp queries, each figure also gets GPU time from [`Gpu::start_profiling`]: the sum
//! of the GPU times of the figure's dispatches, averaged over `--iters` separate profiled runs
//! (one run for models), and throughputs are computed from GPU time; otherwise from wall time.
//!
//! A smoke run on a software adapter (lavapipe): `--batch 1 --iters 1 --infer-batch 2
//! --cifar-batch 8 --models r18`.

#[path = "common/noop.rs"]
mod noop;
#[path = "common/step.rs"]
mod step;

use clap::Parser;
use resnet_wgpu::gpu::{KernelTime, gpu_span_nanos};
use resnet_wgpu::nn::{ResNet, ResNetConfig};
use resnet_wgpu::ops::{ConvTile, GemmTile, MmaTile};
use resnet_wgpu::optim::Sgd;
use resnet_wgpu::{Error, Gpu, GpuOptions, Result, Rng, Tape, Tensor, Var, ops};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Parser)]
// A later occurrence of an option replaces an earlier one (scripts/gpu/run.sh's preflight appends
// its own --iters and --warmup-ms).
#[command(
    about = "Benchmark the kernels and the ResNet models (training and inference)",
    args_override_self = true
)]
struct Args {
    /// Batch size of the kernel benchmarks and of the 224x224 training steps.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed iterations per figure (after the warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Warm-up per figure: the figure's work repeats for at least this many milliseconds, and
    /// until its speed settles, before it is timed (at least one run, which also compiles its
    /// pipelines). GPUs raise their clocks only under sustained load: on an H200, the same
    /// kernels ran up to 3.5x slower after a moment of light load than a second later.
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    /// What to time: `convs`, `kernels` (convs, batch norm, pooling), `memory` (batch norm and
    /// pooling only), `models`, `all` (all of those), or `tiles`: every conv pass with each of
    /// `--tiles` in turn, for tuning the tile choice on a new adapter.
    #[arg(long, default_value = "all")]
    what: String,
    /// Batch size of the inference throughput figure.
    #[arg(long, default_value_t = 64)]
    infer_batch: usize,
    /// Batch size of the ResNet-18 32x32 training step.
    #[arg(long, default_value_t = 256)]
    cifar_batch: usize,
    /// Models to time, comma-separated: `r18`, `r50`, and `main`: the train example's default
    /// model (ResNet-18 at widths 32-256 with the CIFAR stem) training on Fashion-MNIST's
    /// 1x28x28 images at its batch of 128, the README's main job.
    #[arg(long, default_value = "r18,r50,main")]
    models: String,
    /// Kernel families (entry points, their dispatches summed) listed per model, most GPU time
    /// first; the JSON holds the same.
    #[arg(long, default_value_t = 10)]
    families: usize,
    /// The model whose distinct conv shapes `--what convs` (and `kernels`, `all`) and `--what
    /// tiles` time: `r18` (11 shapes of its 20 convs) or `r50` (23 of its 53, mostly 1x1).
    #[arg(long, default_value = "r18")]
    conv_shapes: String,
    /// Time on the wall clock only, even where timestamp queries are available.
    #[arg(long)]
    no_timestamps: bool,
    /// Run on wgpu's no-op backend, as on an H100 (its limits, a GPU's plan) that runs no
    /// kernel: the calls are checked and recorded at full size on any machine, the memory
    /// figures are exact, and the times are the host's alone (recording and submitting); the
    /// kernels' rates mean nothing there. A GPU run's commands with `--noop` check that they
    /// run through before the GPU's time is spent on them.
    #[arg(long)]
    noop: bool,
    /// Also write every result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The conv tiles `--what tiles` compares, comma-separated. Default: every tile of the
    /// engine `--precision` selects (f32: 64x64, 128x64, 64x128, 128x128, 32x128, 32x256,
    /// 64x256; f16: 64x64, 128x64, 128x128).
    #[arg(long)]
    tiles: Option<String>,
    /// With `--what tiles`: also time the library's plan on a second device whose kernels are
    /// compiled with wgpu's runtime checks (`GpuOptions::shader_checks`), beside the rest.
    #[arg(long)]
    checks_ab: bool,
    /// Convolution math: `f32` (exact) or `f16` (tensor cores; see `ConvPrecision`).
    #[arg(long, default_value = "f32")]
    precision: resnet_wgpu::ConvPrecision,
    /// Tune the conv tiles and algorithms on this adapter (`Gpu::set_conv_autotune`) before
    /// each figure's timed runs, and list what was tuned.
    #[arg(long)]
    autotune: bool,
    /// Reduction order of the conv GEMMs: `rsc` (taps outer wherever the channels allow) or
    /// `crs` (channel-major everywhere); see `ConvOrder`. Default: `RESNET_WGPU_CONV_ORDER`,
    /// else rsc.
    #[arg(long)]
    order: Option<resnet_wgpu::ConvOrder>,
    /// Copies of a reduction chunk the f32 conv GEMMs stage in workgroup memory: `double`
    /// (where the device holds them) or `single`; see `ConvStaging`. Default:
    /// `RESNET_WGPU_CONV_STAGING`, else `ConvStaging::for_adapter`'s (double natively).
    #[arg(long)]
    staging: Option<resnet_wgpu::ConvStaging>,
    /// Copies of a reduction chunk the f16 engine's GEMMs stage (with `--precision f16`):
    /// `single` or `double` (where the device holds them); see `Gpu::set_f16_staging`.
    /// Default: `RESNET_WGPU_F16_STAGING`, else single.
    #[arg(long)]
    f16_staging: Option<resnet_wgpu::ConvStaging>,
    /// Algorithm of the 3x3 stride-1 convolutions (their three passes and inference's fused
    /// block): `auto` (Winograd where the adapter gains), `winograd` or `direct`; see
    /// `ConvAlgo`. Default: `RESNET_WGPU_CONV_ALGO`, else auto.
    #[arg(long)]
    algo: Option<resnet_wgpu::ConvAlgo>,
    /// Output tile of the Winograd convolutions on the f32 engine: `auto` (per convolution and
    /// pass), `4` (F(4x4, 3x3)) or `2` (F(2x2, 3x3)); see `WinogradTile`. Default:
    /// `RESNET_WGPU_WINOGRAD_TILE`, else auto.
    #[arg(long)]
    winograd_tile: Option<String>,
}

/// The gpu's Winograd tile setting, for the header and the JSON.
fn winograd_tile_name(gpu: &Gpu) -> String {
    gpu.winograd_tile()
        .map_or("auto (per convolution)".into(), |t| t.to_string())
}

/// The conv table's mark of the passes' Winograd tiles: "" (all direct), " W4" (all three
/// F(4x4, 3x3)), or each pass's, as " W4/4/2" (- for a direct pass).
fn winograd_mark(tiles: [Option<usize>; 3]) -> String {
    match tiles {
        [None, None, None] => String::new(),
        [Some(a), Some(b), Some(c)] if a == b && b == c => format!(" W{a}"),
        _ => {
            let m = tiles.map(|t| t.map_or("-".to_string(), |m| m.to_string()));
            format!(" W{}", m.join("/"))
        }
    }
}

/// What one figure measured.
#[derive(Clone, Debug, Serialize)]
struct Timing {
    /// Mean wall time per run, synchronised, in milliseconds.
    wall_ms: f64,
    /// Mean summed GPU time of the run's dispatches in milliseconds (timestamp queries).
    gpu_ms: Option<f64>,
    /// Mean GPU time per run from its first dispatch's start to its last one's end, idle gaps
    /// between dispatches included (barriers, pass boundaries), in milliseconds.
    gpu_span_ms: Option<f64>,
    /// Dispatches per run.
    dispatches: Option<usize>,
}

impl Timing {
    /// GPU time when measured, else wall time, in seconds.
    fn seconds(&self) -> f64 {
        self.gpu_ms.unwrap_or(self.wall_ms) / 1e3
    }
}

/// The warm-up ends once two batches' times per run are within this fraction of each other...
const STEADY: f64 = 0.03;
/// ...or after this many times `--warmup-ms`.
const MAX_WARMUP: u32 = 10;

/// Runs each figure and holds what every figure shares.
struct Bench {
    gpu: Gpu,
    iters: usize,
    warmup: std::time::Duration,
    timestamps: bool,
}

impl Bench {
    /// Time `f`: the warm-up, `iters` synchronised runs on the wall clock, then (with
    /// timestamps) `profiled` runs under the profiler. Returns the timing and the profiled runs'
    /// dispatches.
    fn measure(
        &self,
        profiled: usize,
        mut f: impl FnMut() -> Result<Tensor>,
    ) -> Result<(Timing, Vec<KernelTime>)> {
        let gpu = &self.gpu;
        self.warm_up(&mut f)?;
        let start = Instant::now();
        for _ in 0..self.iters {
            drop(f()?);
        }
        gpu.synchronize()?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3 / self.iters as f64;
        if !self.timestamps || profiled == 0 {
            let timing = Timing {
                wall_ms,
                gpu_ms: None,
                gpu_span_ms: None,
                dispatches: None,
            };
            return Ok((timing, Vec::new()));
        }
        gpu.start_profiling()?;
        for _ in 0..profiled {
            drop(f()?);
        }
        let kernels = gpu.finish_profiling()?;
        let total: f64 = kernels.iter().map(|k| k.nanos).sum();
        let timing = Timing {
            wall_ms,
            gpu_ms: Some(total / 1e6 / profiled as f64),
            gpu_span_ms: Some(gpu_span_nanos(&kernels) / 1e6 / profiled as f64),
            dispatches: Some(kernels.len() / profiled),
        };
        Ok((timing, kernels))
    }

    /// Run `f` until `warmup` has passed since the first run (which compiles the pipelines) and
    /// its speed has settled: the last two batches' time per run within [`STEADY`] of each
    /// other, or [`MAX_WARMUP`] times `warmup` in all. A GPU raises its clocks over a fraction of
    /// a second of sustained load. With 300 ms alone, ResNet-18 inference at batch 64 on the
    /// H200 (right after the lightly loaded batch-1 figure) took 2.8x longer per timed run than
    /// its profiled run right after them; rising clocks are the likely cause. The runs go in
    /// batches, synchronised once each, each batch doubling until it takes about 20 ms, so that
    /// small kernels keep the device busy rather than waiting on the host. Where the first run
    /// alone outlasts `warmup` (a CPU adapter), it is the whole warm-up.
    fn warm_up(&self, f: &mut impl FnMut() -> Result<Tensor>) -> Result<()> {
        let start = Instant::now();
        let (mut batch, mut runs) = (1, 0);
        let mut last: Option<f64> = None;
        loop {
            let t = Instant::now();
            for _ in 0..batch {
                drop(f()?);
            }
            self.gpu.synchronize()?;
            let secs = t.elapsed().as_secs_f64();
            let per_run = secs / batch as f64;
            runs += batch;
            if start.elapsed() >= self.warmup {
                let steady = last.is_some_and(|l| (per_run - l).abs() <= STEADY * l);
                if runs == 1 || steady || start.elapsed() >= self.warmup * MAX_WARMUP {
                    return Ok(());
                }
            }
            last = Some(per_run);
            if secs < 0.02 {
                batch = (batch * 2).min(256);
            }
        }
    }

    /// [`Bench::measure`] with `iters` profiled runs, for kernels.
    fn kernel(&self, f: impl FnMut() -> Result<Tensor>) -> Result<Timing> {
        Ok(self.measure(self.iters, f)?.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Convolutions

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

/// A conv shape at one batch size: the tensors' shapes and the multiply-adds of one pass.
struct ConvAt {
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
    macs: f64,
}

impl Shape {
    fn at(&self, batch: usize) -> ConvAt {
        let (oh, ow) =
            ops::conv2d_output_size(self.hw, self.hw, self.kernel, self.stride, self.pad);
        ConvAt {
            x: [batch, self.c, self.hw, self.hw],
            w: [self.k, self.c, self.kernel, self.kernel],
            y: [batch, self.k, oh, ow],
            macs: (batch * self.k * oh * ow * self.c * self.kernel * self.kernel) as f64,
        }
    }
}

impl ConvAt {
    /// Varied x, w and gy on `gpu` (only the time is measured; constants can run faster than
    /// real data on a power-limited chip).
    fn tensors(&self, gpu: &Gpu) -> Result<(Tensor, Tensor, Tensor)> {
        let varied = |shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = pattern(n).into_iter().map(|a| a * scale).collect();
            Tensor::from_slice(gpu, shape, &v)
        };
        Ok((
            varied(&self.x, 1.0)?,
            varied(&self.w, 0.05)?,
            varied(&self.y, 0.1)?,
        ))
    }

    /// 2 * MACs / time (GPU time when measured).
    fn gflops(&self, t: &Timing) -> f64 {
        2.0 * self.macs / t.seconds() / 1e9
    }
}

/// Distinct conv shapes of ResNet-18 (input channels, input size, output channels, kernel,
/// stride, padding), with how often each occurs in the network: its 20 convolutions.
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

/// The same for ResNet-50 (torchvision's bottlenecks, stride on the 3x3 conv): its 53
/// convolutions. `reduce` is a bottleneck's first 1x1 conv (`reduce0` the first block's, which
/// reads the stage's input), `expand` its last (in layer1 with the downsample, the same shape).
const SHAPES_R50: [(Shape, usize); 23] = [
    (shape("stem 7x7/2", 3, 224, 64, 7, 2, 3), 1),
    (shape("layer1 reduce0 1x1", 64, 56, 64, 1, 1, 0), 1),
    (shape("layer1 reduce 1x1", 256, 56, 64, 1, 1, 0), 2),
    (shape("layer1 3x3", 64, 56, 64, 3, 1, 1), 3),
    (shape("layer1 expand 1x1", 64, 56, 256, 1, 1, 0), 4),
    (shape("layer2 reduce0 1x1", 256, 56, 128, 1, 1, 0), 1),
    (shape("layer2 reduce 1x1", 512, 28, 128, 1, 1, 0), 3),
    (shape("layer2 3x3/2", 128, 56, 128, 3, 2, 1), 1),
    (shape("layer2 3x3", 128, 28, 128, 3, 1, 1), 3),
    (shape("layer2 expand 1x1", 128, 28, 512, 1, 1, 0), 4),
    (shape("layer2 down 1x1/2", 256, 56, 512, 1, 2, 0), 1),
    (shape("layer3 reduce0 1x1", 512, 28, 256, 1, 1, 0), 1),
    (shape("layer3 reduce 1x1", 1024, 14, 256, 1, 1, 0), 5),
    (shape("layer3 3x3/2", 256, 28, 256, 3, 2, 1), 1),
    (shape("layer3 3x3", 256, 14, 256, 3, 1, 1), 5),
    (shape("layer3 expand 1x1", 256, 14, 1024, 1, 1, 0), 6),
    (shape("layer3 down 1x1/2", 512, 28, 1024, 1, 2, 0), 1),
    (shape("layer4 reduce0 1x1", 1024, 14, 512, 1, 1, 0), 1),
    (shape("layer4 reduce 1x1", 2048, 7, 512, 1, 1, 0), 2),
    (shape("layer4 3x3/2", 512, 14, 512, 3, 2, 1), 1),
    (shape("layer4 3x3", 512, 7, 512, 3, 1, 1), 2),
    (shape("layer4 expand 1x1", 512, 7, 2048, 1, 1, 0), 3),
    (shape("layer4 down 1x1/2", 1024, 14, 2048, 1, 2, 0), 1),
];

/// The model whose conv shapes `--what convs` and `--what tiles` time (`--conv-shapes`): its
/// name and its distinct shapes with their counts.
fn conv_shapes(model: &str) -> Result<(&'static str, &'static [(Shape, usize)])> {
    match model {
        "r18" => Ok(("ResNet-18", &SHAPES)),
        "r50" => Ok(("ResNet-50", &SHAPES_R50)),
        _ => Err(Error::Invalid(format!(
            "unknown model {model:?} in --conv-shapes (use r18 or r50)"
        ))),
    }
}

/// One pass of one conv shape.
#[derive(Serialize)]
struct ConvPass {
    #[serde(flatten)]
    timing: Timing,
    /// 2 * MACs / time (GPU time when measured).
    gflops: f64,
}

#[derive(Serialize)]
struct ConvRow {
    layer: &'static str,
    input: [usize; 4],
    weight: [usize; 4],
    output: [usize; 4],
    stride: usize,
    padding: usize,
    /// Occurrences in the model (`--conv-shapes`).
    count: usize,
    gmac: f64,
    /// Split-K factor of the weight gradient.
    weight_grad_splits: usize,
    /// The Winograd tile each pass ran (m of F(m x m, 3x3): 2 or 4; None: direct; `ConvAlgo`,
    /// `WinogradTile`); their GFLOP/s count the direct convolution's multiply-adds either way.
    winograd: [Option<usize>; 3],
    forward: ConvPass,
    input_grad: ConvPass,
    weight_grad: ConvPass,
}

/// Per-pass totals over ResNet-18's convs, weighted by count.
#[derive(Serialize)]
struct ConvTotals {
    gmac_per_pass: f64,
    forward_ms: f64,
    input_grad_ms: f64,
    weight_grad_ms: f64,
}

/// The conv table of `shapes`, the distinct conv shapes of the model `name`.
fn bench_convs(
    b: &Bench,
    batch: usize,
    name: &str,
    shapes: &[(Shape, usize)],
) -> Result<(Vec<ConvRow>, ConvTotals)> {
    let gpu = &b.gpu;
    println!(
        "Convolutions of {name} at 224x224, batch {batch} (ms: wall / GPU; GFLOP/s from {} time)",
        if b.timestamps { "GPU" } else { "wall" }
    );
    println!(
        "{:<18} {:>19} {:>3} {:>7} | {:<15} {:>7} | {:<15} {:>7} | {:<15} {:>7} {:>3}",
        "layer",
        "in -> out",
        "n",
        "GMAC",
        "  fwd wall/GPU",
        "GFLOP/s",
        "   dx wall/GPU",
        "GFLOP/s",
        "   dw wall/GPU",
        "GFLOP/s",
        "spl"
    );
    let mut rows = Vec::new();
    let mut totals = [0f64; 3];
    let mut total_macs = 0f64;
    for (s, count) in shapes {
        let conv = s.at(batch);
        let (x_shape, w_shape, macs, oh) = (conv.x, conv.w, conv.macs, conv.y[2]);
        let (x, w, gy) = conv.tensors(gpu)?;
        let pass = |timing: Timing| ConvPass {
            gflops: conv.gflops(&timing),
            timing,
        };
        let forward = pass(b.kernel(|| ops::conv2d(&x, &w, None, s.stride, s.pad))?);
        let input_grad =
            pass(b.kernel(|| ops::conv2d_backward_input(&gy, &w, x_shape, s.stride, s.pad))?);
        let weight_grad =
            pass(b.kernel(|| ops::conv2d_backward_weight(&x, &gy, w_shape, s.stride, s.pad))?);
        let row = ConvRow {
            layer: s.name,
            input: x_shape,
            weight: w_shape,
            output: conv.y,
            stride: s.stride,
            padding: s.pad,
            count: *count,
            gmac: macs / 1e9,
            weight_grad_splits: ops::conv2d_weight_grad_splits(
                gpu, x_shape, w_shape, s.stride, s.pad,
            )?,
            winograd: ops::conv2d_winograd_tiles(gpu, x_shape, w_shape, s.stride, s.pad)?
                .map(|t| t.map(|t| t.m())),
            forward,
            input_grad,
            weight_grad,
        };
        let cell = |p: &ConvPass| format!("{} {:>7.1}", ms_pair(&p.timing), p.gflops);
        println!(
            "{:<18} {:>19} {:>3} {:>7.3} | {} | {} | {} {:>3}",
            format!("{}{}", row.layer, winograd_mark(row.winograd)),
            format!("{}x{}² -> {}x{}²", s.c, s.hw, s.k, oh),
            count,
            row.gmac,
            cell(&row.forward),
            cell(&row.input_grad),
            cell(&row.weight_grad),
            row.weight_grad_splits
        );
        for (t, p) in totals
            .iter_mut()
            .zip([&row.forward, &row.input_grad, &row.weight_grad])
        {
            *t += p.timing.seconds() * *count as f64;
        }
        total_macs += macs * *count as f64;
        rows.push(row);
    }
    let g = |t: f64| 2.0 * total_macs / t / 1e9;
    println!(
        "{name} convs, weighted by count ({:.2} GMAC per pass): forward {:.2} ms ({:.1} GFLOP/s), \
         input gradient {:.2} ms ({:.1} GFLOP/s), weight gradient {:.2} ms ({:.1} GFLOP/s)",
        total_macs / 1e9,
        totals[0] * 1e3,
        g(totals[0]),
        totals[1] * 1e3,
        g(totals[1]),
        totals[2] * 1e3,
        g(totals[2])
    );
    println!("(the stem's input gradient is never needed in training but is timed here too)");
    println!(
        "(W4: the three passes by Winograd F(4x4, 3x3), W2: F(2x2, 3x3), W4/2/-: each pass's, - \
         direct; GFLOP/s always count the direct convolution's multiply-adds)\n"
    );
    let totals = ConvTotals {
        gmac_per_pass: total_macs / 1e9,
        forward_ms: totals[0] * 1e3,
        input_grad_ms: totals[1] * 1e3,
        weight_grad_ms: totals[2] * 1e3,
    };
    Ok((rows, totals))
}

/// `--what tiles`: each conv pass of each shape timed with every tile in turn.
#[derive(Serialize)]
struct TileSweep {
    tiles: Vec<String>,
    rows: Vec<TileSweepRow>,
    /// The first figure (first shape's forward pass, first tile) timed again at the end, in
    /// GFLOP/s: a difference between the two is the machine changing speed during the sweep,
    /// not a tile.
    drift: [f64; 2],
}

#[derive(Serialize)]
struct TileSweepRow {
    layer: &'static str,
    /// `forward`, `input_grad` or `weight_grad`.
    pass: &'static str,
    /// GFLOP/s with each tile of `TileSweep::tiles`, in order.
    gflops: Vec<f64>,
    /// GFLOP/s with the library's own plan (tile and split per GEMM).
    plan_gflops: f64,
    /// The plan's GFLOP/s with wgpu's runtime checks compiled in (`--checks-ab`).
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_checked_gflops: Option<f64>,
}

/// Time every conv pass of every shape of `shapes` with each tile in `tiles`, back to back,
/// then with the library's plan. Tuning data for `TileModel`: the tiles of one shape are timed
/// within a second of each other, so a machine that changes speed during the sweep (clocks,
/// other work) shows in the drift figure instead of in the comparison.
fn bench_tiles(
    b: &Bench,
    batch: usize,
    shapes: &[(Shape, usize)],
    tiles: &[ConvTile],
    checked: Option<&Bench>,
) -> Result<TileSweep> {
    let gpu = &b.gpu;
    // The sweep compares the direct GEMMs' tiles: the plan column is the direct plan too
    // (Winograd's GEMMs take the model's tile for their own shapes).
    let algo = gpu.conv_algo();
    gpu.set_conv_algo(resnet_wgpu::ConvAlgo::Direct);
    if let Some(c) = checked {
        c.gpu.set_conv_algo(resnet_wgpu::ConvAlgo::Direct);
    }
    let sweep = sweep_tiles(b, batch, shapes, tiles, checked);
    gpu.set_conv_algo(algo);
    sweep
}

/// [`bench_tiles`] with the direct convolutions set.
fn sweep_tiles(
    b: &Bench,
    batch: usize,
    shapes: &[(Shape, usize)],
    tiles: &[ConvTile],
    checked: Option<&Bench>,
) -> Result<TileSweep> {
    let gpu = &b.gpu;
    let names: Vec<String> = tiles.iter().map(ToString::to_string).collect();
    println!(
        "Conv tiles, batch {batch} (GFLOP/s from {} time; * = fastest; plan = the library's own \
         choice of direct GEMM; checked = the plan with wgpu's runtime checks compiled in)",
        if b.timestamps { "GPU" } else { "wall" }
    );
    print!("{:<18} {:<4}", "layer", "pass");
    for n in &names {
        print!(" {n:>9}");
    }
    print!(" {:>9}", "plan");
    if checked.is_some() {
        print!(" {:>9}", "checked");
    }
    println!();
    let mut rows = Vec::new();
    let mut first = None;
    for (s, _) in shapes {
        let conv = s.at(batch);
        let (x_shape, w_shape) = (conv.x, conv.w);
        let (x, w, gy) = conv.tensors(gpu)?;
        // The same tensors on the checked device.
        let on_checked = checked.map(|c| conv.tensors(&c.gpu)).transpose()?;
        let gflops = |t: Timing| conv.gflops(&t);
        for pass in ["forward", "input_grad", "weight_grad"] {
            let run = |(x, w, gy): (&Tensor, &Tensor, &Tensor), tile: Option<ConvTile>| match pass {
                "forward" => ops::conv2d_tiled(x, w, None, s.stride, s.pad, tile),
                "input_grad" => {
                    ops::conv2d_backward_input_tiled(gy, w, x_shape, s.stride, s.pad, tile)
                }
                _ => ops::conv2d_backward_weight_tiled(x, gy, w_shape, s.stride, s.pad, tile),
            };
            let mut row = TileSweepRow {
                layer: s.name,
                pass,
                gflops: Vec::new(),
                plan_gflops: 0.0,
                plan_checked_gflops: None,
            };
            for &tile in tiles {
                row.gflops
                    .push(gflops(b.kernel(|| run((&x, &w, &gy), Some(tile)))?));
            }
            row.plan_gflops = gflops(b.kernel(|| run((&x, &w, &gy), None))?);
            if let (Some(c), Some((x, w, gy))) = (checked, &on_checked) {
                row.plan_checked_gflops = Some(gflops(c.kernel(|| run((x, w, gy), None))?));
            }
            first.get_or_insert(row.gflops[0]);
            let best = row.gflops.iter().copied().fold(0.0, f64::max);
            let label = match pass {
                "forward" => "fwd",
                "input_grad" => "dx",
                _ => "dw",
            };
            print!("{:<18} {:<4}", s.name, label);
            for g in &row.gflops {
                print!(" {:>8.1}{}", g, if *g == best { "*" } else { " " });
            }
            print!(" {:>9.1}", row.plan_gflops);
            if let Some(g) = row.plan_checked_gflops {
                print!(" {g:>9.1}");
            }
            println!();
            rows.push(row);
        }
    }
    // The first figure again, now that the sweep has run.
    let s = &shapes[0].0;
    let conv = s.at(batch);
    let (x, w, _) = conv.tensors(gpu)?;
    let t =
        b.kernel(|| ops::conv2d_tiled(&x, &w, None, s.stride, s.pad, tiles.first().copied()))?;
    let again = conv.gflops(&t);
    let drift = [first.unwrap_or(0.0), again];
    println!(
        "drift: {} forward with {} at {:.1} GFLOP/s first, {:.1} at the end\n",
        s.name,
        names.first().map_or("", String::as_str),
        drift[0],
        drift[1]
    );
    Ok(TileSweep {
        tiles: names,
        rows,
        drift,
    })
}

/// "wall / GPU" milliseconds, 15 characters wide.
fn ms_pair(t: &Timing) -> String {
    match t.gpu_ms {
        Some(g) => format!("{:>7.3}/{:<7.3}", t.wall_ms, g),
        None => format!("{:>7.3}/{:<7}", t.wall_ms, "-"),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory-bound kernels: batch norm, pooling and the classifiers at batch 1

#[derive(Serialize)]
struct MemoryRow {
    op: String,
    shape: Vec<usize>,
    /// Minimum bytes the pass must read and write once.
    bytes: u64,
    #[serde(flatten)]
    timing: Timing,
    /// `bytes` / time (GPU time when measured).
    gb_per_s: f64,
}

fn bench_memory_kernels(b: &Bench, batch: usize) -> Result<Vec<MemoryRow>> {
    let gpu = &b.gpu;
    println!(
        "Memory-bound kernels, batch {batch} (GB/s: minimum bytes read + written / {} time)",
        if b.timestamps { "GPU" } else { "wall" }
    );
    println!(
        "{:<30} {:>20} {:>9} {:<15} {:>8}",
        "op", "shape", "MB", " ms wall/GPU", "GB/s"
    );
    let mut rows = Vec::new();
    let mut push = |op: &str, shape: &[usize], bytes: usize, timing: Timing| {
        let row = MemoryRow {
            op: op.to_string(),
            shape: shape.to_vec(),
            bytes: bytes as u64,
            gb_per_s: bytes as f64 / timing.seconds() / 1e9,
            timing,
        };
        println!(
            "{:<30} {:>20} {:>9.2} {} {:>8.2}",
            row.op,
            format!("{:?}", row.shape),
            bytes as f64 / 1e6,
            ms_pair(&row.timing),
            row.gb_per_s
        );
        rows.push(row);
    };
    // Batch norm in training mode on the output of each ResNet-18 stage. The forward must read x
    // and write y; the backward must read x and gy and write gx (the per-channel vectors are
    // negligible). The kernels read x twice in each (statistics, then normalisation).
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let shape = [batch, c, hw, hw];
        let bytes = 4 * batch * c * hw * hw;
        let x = Tensor::from_slice(gpu, &shape, &pattern(bytes / 4))?;
        let gy = Tensor::full(gpu, &shape, 0.1)?;
        let gamma = Tensor::full(gpu, &[c], 1.0)?;
        let beta = Tensor::zeros(gpu, &[c])?;
        let (rm, rv) = (Tensor::zeros(gpu, &[c])?, Tensor::full(gpu, &[c], 1.0)?);
        let forward = || ops::batch_norm_train(&x, &gamma, &beta, &rm, &rv, 0.1, 1e-5, false);
        push(
            "batch_norm train forward",
            &shape,
            2 * bytes,
            b.kernel(|| Ok(forward()?.0))?,
        );
        let (y, saved) = forward()?;
        let timing =
            b.kernel(|| Ok(ops::batch_norm_backward(&x, &y, &gy, &gamma, &saved, false)?.0))?;
        push("batch_norm backward", &shape, 3 * bytes, timing);
    }
    // Max pooling 3x3/2 (padding 1) on the stem output. The forward reads x and writes y and the
    // u32 argmax indices; the backward reads gy and the indices and writes gx.
    let shape = [batch, 64, 112, 112];
    let x_numel = batch * 64 * 112 * 112;
    let x = Tensor::from_slice(gpu, &shape, &pattern(x_numel))?;
    let (y, idx) = ops::max_pool2d(&x, 3, 2, 1)?;
    let y_numel = y.numel();
    let timing = b.kernel(|| Ok(ops::max_pool2d(&x, 3, 2, 1)?.0))?;
    push(
        "max_pool 3x3/2 forward",
        &shape,
        4 * (x_numel + 2 * y_numel),
        timing,
    );
    let timing = b.kernel(|| ops::max_pool2d_backward(&y, &idx, shape, 3, 2, 1))?;
    push(
        "max_pool 3x3/2 backward",
        &shape,
        4 * (2 * y_numel + x_numel),
        timing,
    );
    // The classifiers of ResNet-18 and -50 at batch 1 (inference), shape [1, K, N]: reading the
    // [N, K] weights is nearly all the traffic (x, bias and y are K + 2N floats).
    for (k, n) in [(512, 1000), (2048, 1000)] {
        let x = Tensor::from_slice(gpu, &[1, k], &pattern(k))?;
        let w = Tensor::from_slice(gpu, &[n, k], &pattern(n * k))?;
        let bias = Tensor::zeros(gpu, &[n])?;
        let timing = b.kernel(|| ops::linear(&x, &w, Some(&bias)))?;
        push(
            "linear, batch 1",
            &[1, k, n],
            4 * (k + n * k + 2 * n),
            timing,
        );
    }
    println!();
    Ok(rows)
}

/// Deterministic varied values (so max pooling and batch norm see real data).
fn pattern(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Models

/// GPU time of one kernel family (entry point) within a profiled run.
#[derive(Serialize)]
struct Family {
    file: &'static str,
    entry: &'static str,
    dispatches: usize,
    gpu_ms: f64,
    /// Fraction of the run's GPU time.
    share: f64,
}

#[derive(Serialize)]
struct ModelRow {
    model: &'static str,
    /// `inference`, `inference-separate` (the same without the fused conv + batch-norm
    /// kernels) or `train`.
    mode: &'static str,
    image_size: usize,
    batch: usize,
    classes: usize,
    #[serde(flatten)]
    timing: Timing,
    /// Images per second from wall time (everything included).
    images_per_s: f64,
    /// Mean CPU time recording a training step (forward to the optimizer step, before the
    /// submit and wait), in milliseconds.
    cpu_record_ms: Option<f64>,
    /// Peak bytes allocated from the buffer pool, cached buffers included: parameters,
    /// optimizer state, activations and workspaces of the step (compare PyTorch's
    /// `max_memory_reserved`).
    peak_bytes: u64,
    /// Peak bytes of the tensors in use at once (compare PyTorch's `max_memory_allocated`).
    peak_live_bytes: u64,
    /// The kernel families with the most GPU time in one profiled run (`--families` of them).
    top_kernels: Vec<Family>,
}

/// Sum the profiled dispatches by entry point; the `n` largest, largest first.
fn families(kernels: &[KernelTime], n: usize) -> Vec<Family> {
    let total: f64 = kernels.iter().map(|k| k.nanos).sum();
    let mut by_entry: HashMap<(&'static str, &'static str), (usize, f64)> = HashMap::new();
    for k in kernels {
        let e = by_entry.entry((k.file, k.entry)).or_default();
        e.0 += 1;
        e.1 += k.nanos;
    }
    let mut fams: Vec<Family> = by_entry
        .into_iter()
        .map(|((file, entry), (dispatches, nanos))| Family {
            file,
            entry,
            dispatches,
            gpu_ms: nanos / 1e6,
            share: if total > 0.0 { nanos / total } else { 0.0 },
        })
        .collect();
    fams.sort_by(|a, b| b.gpu_ms.total_cmp(&a.gpu_ms));
    fams.truncate(n);
    fams
}

fn model_config(name: &str, classes: usize) -> Result<(&'static str, ResNetConfig)> {
    match name {
        "r18" => Ok(("ResNet-18", ResNetConfig::resnet18(classes))),
        "r50" => Ok(("ResNet-50", ResNetConfig::resnet50(classes))),
        // examples/train.rs's defaults on Fashion-MNIST.
        "main" => Ok((
            "ResNet-18 (main job)",
            ResNetConfig::resnet18(classes)
                .with_stem(resnet_wgpu::nn::Stem::Cifar)
                .with_in_channels(1)
                .with_widths(vec![32, 64, 128, 256]),
        )),
        _ => Err(Error::Invalid(format!(
            "unknown model {name:?} in --models (use r18, r50, main)"
        ))),
    }
}

fn bench_models(b: &Bench, args: &Args) -> Result<Vec<ModelRow>> {
    let gpu = &b.gpu;
    let models: Vec<&str> = args.models.split(',').map(str::trim).collect();
    for m in &models {
        model_config(m, 1)?;
    }
    println!(
        "Models (wall ms, synchronised; GPU ms: summed kernel time of one profiled run; span: \
         that run's first dispatch start to last dispatch end on the GPU, gaps included; \
         record: CPU time recording a training step; pool: peak pool memory, cached buffers \
         included; live: peak memory of the tensors in use at once)"
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "model", "wall ms", "GPU ms", "span ms", "images/s", "record ms", "pool MiB", "live MiB"
    );
    let mut rows = Vec::new();
    let mut print_row = |row: ModelRow| {
        println!(
            "{:<42} {:>10.2} {:>10} {:>10} {:>10.1} {:>10} {:>10.1} {:>10.1}",
            format!(
                "{} {} {}, batch {}",
                row.model, row.mode, row.image_size, row.batch
            ),
            row.timing.wall_ms,
            opt(row.timing.gpu_ms),
            opt(row.timing.gpu_span_ms),
            row.images_per_s,
            opt(row.cpu_record_ms),
            row.peak_bytes as f64 / (1 << 20) as f64,
            row.peak_live_bytes as f64 / (1 << 20) as f64
        );
        for f in &row.top_kernels {
            println!(
                "    {:<38} {:>10.2} ms {:>5.1}% {:>6} dispatches",
                format!("{}::{}", f.file, f.entry),
                f.gpu_ms,
                f.share * 100.0,
                f.dispatches
            );
        }
        rows.push(row);
    };
    // Inference: latency at batch 1, throughput at --infer-batch; then that batch again with
    // the separate conv, batch-norm and add kernels that inference's fused ones replace (the
    // eval-mode forward with tracked parameters, as fine-tuning with frozen statistics runs it:
    // its GPU time compares with the fused row's, less one tiny `eval_stats` dispatch per batch
    // norm that the tape needs; recording the tape costs CPU time and memory). The main job's
    // model at the batch of 256 that the train example evaluates with.
    let mut inferences = Vec::new();
    for &m in &models {
        if m == "main" {
            inferences.push((m, 28, 10, 256, "inference"));
            continue;
        }
        for (n, mode) in [
            (1, "inference"),
            (args.infer_batch, "inference"),
            (args.infer_batch, "inference-separate"),
        ] {
            inferences.push((m, 224, 1000, n, mode));
        }
    }
    for (m, hw, classes, n, mode) in inferences {
        let (model, config) = model_config(m, classes)?;
        fresh_peak(gpu)?;
        let c = config.in_channels;
        let mut net = ResNet::new(gpu, config, &mut Rng::new(0))?;
        let x = Tensor::from_slice(gpu, &[n, c, hw, hw], &pattern(n * c * hw * hw))?;
        let (timing, kernels) = b.measure(1, || {
            if mode == "inference" {
                return net.infer(&x);
            }
            // Tracked weights take the separate kernels; no backward follows, so nothing
            // is laid out for one.
            let keep = gpu.conv_keep_laid_out();
            gpu.set_conv_keep_laid_out(false);
            let tape = Tape::new();
            let tracked = net.bind(Some(&tape), |_| true);
            let y = net.forward_with(&tracked, &Var::constant(x.clone()), false, None);
            gpu.set_conv_keep_laid_out(keep);
            Ok(y?.into_tensor())
        })?;
        print_row(ModelRow {
            model,
            mode,
            image_size: hw,
            batch: n,
            classes,
            images_per_s: n as f64 * 1e3 / timing.wall_ms,
            timing,
            cpu_record_ms: None,
            peak_bytes: gpu.pool_stats().peak_bytes,
            peak_live_bytes: gpu.pool_stats().peak_live_bytes,
            top_kernels: families(&kernels, args.families),
        });
    }
    // Training steps: forward, backward, SGD with momentum and weight decay.
    let mut steps = Vec::new();
    for m in &models {
        if *m == "main" {
            steps.push((*m, 28, 128, 10));
            continue;
        }
        steps.push((*m, 224, args.batch, 1000));
        if *m == "r18" {
            steps.push((*m, 32, args.cifar_batch, 10));
        }
    }
    for (m, hw, n, classes) in steps {
        let (model, config) = model_config(m, classes)?;
        fresh_peak(gpu)?;
        let c = config.in_channels;
        let mut net = ResNet::new(gpu, config, &mut Rng::new(0))?;
        let x = Tensor::from_slice(gpu, &[n, c, hw, hw], &pattern(n * c * hw * hw))?;
        let labels = Tensor::from_u32(gpu, &[n], &vec![1; n])?;
        let mut sgd = Sgd::new(0.9, false, 5e-4);
        let mut record = Vec::new();
        let (timing, kernels) = b.measure(1, || {
            let start = Instant::now();
            let loss = step::train_step(&mut net, &x, &labels, &mut sgd, 0.01)?;
            record.push(start.elapsed().as_secs_f64());
            // Submit each step as the trainer does, so that recording the next step overlaps
            // the GPU's work on this one (the timed runs still end with a synchronize). Not in
            // the record time: a software adapter may run the work inside the submit call.
            gpu.flush();
            Ok(loss.into_tensor())
        })?;
        // The warm-up compiles pipelines and the profiled run (the last, with timestamps) pays
        // for them: average the timed runs only.
        let end = record.len() - usize::from(b.timestamps);
        let timed = &record[end - b.iters..end];
        print_row(ModelRow {
            model,
            mode: "train",
            image_size: hw,
            batch: n,
            classes,
            images_per_s: n as f64 * 1e3 / timing.wall_ms,
            timing,
            cpu_record_ms: Some(timed.iter().sum::<f64>() * 1e3 / timed.len() as f64),
            peak_bytes: gpu.pool_stats().peak_bytes,
            peak_live_bytes: gpu.pool_stats().peak_live_bytes,
            top_kernels: families(&kernels, args.families),
        });
    }
    println!();
    Ok(rows)
}

/// Host time per dispatch, apart from any model's own work.
#[derive(Serialize)]
struct HostRow {
    /// Dispatches per run: a chain of ReLUs on 256 elements.
    dispatches: usize,
    /// Median CPU time recording one dispatch (allocation, bind group, pass commands), in
    /// microseconds.
    record_us: f64,
    /// Median CPU time finishing the encoder and submitting it, per dispatch, in microseconds.
    submit_us: f64,
}

/// The CPU time the library spends per dispatch: record a chain of small dispatches, then
/// submit it, timing each part (median of 25 runs after 5 untimed ones). On a fast GPU this
/// host time, times a step's dispatches, bounds small models' steps.
fn bench_host(gpu: &Gpu) -> Result<HostRow> {
    const DISPATCHES: usize = 400;
    let x = Tensor::from_slice(gpu, &[256], &pattern(256))?;
    let (mut record, mut submit) = (Vec::new(), Vec::new());
    for run in 0..30 {
        let start = Instant::now();
        let mut h = x.clone();
        for _ in 0..DISPATCHES {
            h = ops::relu(&h)?;
        }
        let recorded = Instant::now();
        gpu.flush();
        let submitted = Instant::now();
        gpu.synchronize()?;
        if run >= 5 {
            record.push((recorded - start).as_secs_f64());
            submit.push((submitted - recorded).as_secs_f64());
        }
    }
    let median_us = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e6 / DISPATCHES as f64
    };
    let row = HostRow {
        dispatches: DISPATCHES,
        record_us: median_us(record),
        submit_us: median_us(submit),
    };
    println!(
        "Host time per dispatch ({} small dispatches, median of 25 runs): recording {:.2} us, \
         finishing and submitting {:.2} us\n",
        row.dispatches, row.record_us, row.submit_us
    );
    Ok(row)
}

/// Free the previous figure's cached buffers and restart the peak-memory count.
fn fresh_peak(gpu: &Gpu) -> Result<()> {
    gpu.synchronize()?;
    gpu.trim_pool();
    gpu.reset_peak_memory();
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct Report {
    adapter: Adapter,
    /// Whether GPU times come from timestamp queries (else only wall times were measured).
    timestamps: bool,
    batch: usize,
    iters: usize,
    /// Minimum warm-up per figure in milliseconds.
    warmup_ms: u64,
    /// The model of the conv table and tile sweep (`--conv-shapes`): `ResNet-18` or `ResNet-50`.
    conv_shapes: &'static str,
    /// Conv precision: `F32` or `F16`.
    precision: String,
    /// Conv reduction order: `Rsc` or `Crs`.
    order: String,
    /// Conv staging: `Double` or `Single` (double only where the device holds it).
    staging: String,
    /// The f16 engine's staging (with precision `F16`): `Single` or `Double`.
    f16_staging: String,
    /// Algorithm of the 3x3 stride-1 convs: `Auto`, `Winograd` or `Direct`.
    algo: String,
    /// The f32 engine's Winograd tile: `F(4x4, 3x3)`, `F(2x2, 3x3)` or `auto (per
    /// convolution)`.
    winograd_tile: String,
    /// Whether the kernels were compiled with wgpu's runtime checks
    /// (`RESNET_WGPU_SHADER_CHECKS=1`; off by default).
    shader_checks: bool,
    /// What the kernels were planned for (`Gpu::plan_for`): `Gpu` or `Cpu`, the adapter's type
    /// unless `RESNET_WGPU_PLAN_FOR` said otherwise.
    plan_for: String,
    /// The subgroup lanes the workgroup reductions exchange values between (`Gpu::subgroup_lanes`);
    /// absent where they go through workgroup memory alone (`RESNET_WGPU_SUBGROUPS=0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    subgroup_lanes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    convs: Option<Vec<ConvRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conv_totals: Option<ConvTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_kernels: Option<Vec<MemoryRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<HostRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<Vec<ModelRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tile_sweep: Option<TileSweep>,
    /// With `--autotune`: every conv shape and pass tuned, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    tuned_convs: Option<Vec<TunedRow>>,
}

/// One tuned conv shape and pass (`--autotune`).
#[derive(Serialize)]
struct TunedRow {
    pass: String,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    padding: usize,
    /// The engine and tile the model would have used ("f32 64x64", "f16 128x64", ...), or
    /// "lanes": the GEMMs without barriers, the untuned plan on CPU adapters where they take
    /// the pass.
    model: String,
    /// The engine and tile tuning chose (or "lanes").
    tuned: String,
    /// Wall milliseconds per run with each f32 tile, in the order of `ConvTile::ALL` (64x64,
    /// 128x64, 64x128, 128x128, 32x128, 32x256, 64x256).
    millis: Vec<f64>,
    /// With `--precision f16`, wall milliseconds per run with each f16 tile, in the order of
    /// `MmaTile::ALL` (64x64, 128x64, 128x128).
    #[serde(skip_serializing_if = "Option::is_none")]
    f16_millis: Option<Vec<f64>>,
    /// Wall milliseconds per run through Winograd with its GEMMs on the f32 engine, with
    /// F(2x2, 3x3) and F(4x4, 3x3), where the shape can take it (null: not timed)...
    winograd_millis: [Option<f64>; 2],
    /// ...and with `--precision f16`, F(2x2, 3x3) with its GEMMs on the f16 engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    f16_winograd_millis: Option<f64>,
    /// Wall milliseconds per run on the GEMMs without barriers, where they take the pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    lanes_millis: Option<f64>,
    /// The algorithm ConvAlgo::Auto's rule would run ("direct", "W4": Winograd F(4x4, 3x3),
    /// "W2", "W2 f16": its GEMMs on the f16 engine).
    model_algo: String,
    /// The algorithm tuning chose for ConvAlgo::Auto (as `model_algo`).
    tuned_algo: String,
}

/// A tuned pass's algorithm: direct, or Winograd with its tile and engine ("W4", "W2 f16").
fn algo_name(winograd: bool, tile: resnet_wgpu::WinogradTile, f16: bool) -> String {
    match (winograd, f16) {
        (false, _) => "direct".into(),
        (true, false) => format!("W{}", tile.m()),
        (true, true) => "W2 f16".into(),
    }
}

/// Print and return what `--autotune` tuned.
fn report_tuned(gpu: &Gpu) -> Vec<TunedRow> {
    let tuned = gpu.tuned_convs();
    let changed = tuned.iter().filter(|t| t.direct_moved()).count();
    let algos = tuned
        .iter()
        .filter(|t| t.winograd != t.model_winograd)
        .count();
    println!(
        "Tuned convs ({} shapes and passes, {changed} moved off the untuned direct plan, \
         {algos} off Auto's algorithm; wall ms per run with each tile (f32, then f16 with \
         --precision f16), on the GEMMs without barriers (lanes) where they take the pass, and \
         through Winograd F(2x2, 3x3) and F(4x4, 3x3), W2 and W4 (W2 f16: its GEMMs on the f16 \
         engine), where the shape takes it)",
        tuned.len()
    );
    let f16 = tuned.iter().any(|t| t.f16_millis.is_some());
    let mut names: Vec<String> = ConvTile::ALL
        .iter()
        .map(|&t| format!("{:>9}", t.to_string()))
        .collect();
    if f16 {
        names.extend(
            MmaTile::ALL
                .iter()
                .map(|&t| format!("{:>11}", GemmTile::F16(t).to_string())),
        );
    }
    let lanes = tuned.iter().any(|t| t.lanes_millis.is_some());
    if lanes {
        names.push(format!("{:>9}", "lanes"));
    }
    names.push(format!("{:>9}", "W2"));
    names.push(format!("{:>9}", "W4"));
    if f16 {
        names.push(format!("{:>9}", "W2 f16"));
    }
    println!(
        "{:<11} {:>20} {:>20} {:>4} {:>11} {:>11} {}",
        "pass",
        "x",
        "w",
        "s/p",
        "model",
        "tuned",
        names.join(" "),
    );
    let rows: Vec<TunedRow> = tuned
        .iter()
        .map(|t| TunedRow {
            pass: format!("{:?}", t.key.pass),
            x: t.key.x,
            w: t.key.w,
            stride: t.key.stride,
            padding: t.key.padding,
            model: if t.lanes_millis.is_some() {
                "lanes".into()
            } else {
                t.model.to_string()
            },
            tuned: if t.lanes {
                "lanes".into()
            } else {
                t.tile.to_string()
            },
            millis: t.millis.to_vec(),
            f16_millis: t.f16_millis.map(|ms| ms.to_vec()),
            winograd_millis: t.winograd_millis,
            f16_winograd_millis: t.f16_winograd_millis,
            lanes_millis: t.lanes_millis,
            model_algo: algo_name(
                t.model_winograd,
                t.model_winograd_tile,
                t.key.precision == resnet_wgpu::ConvPrecision::F16,
            ),
            tuned_algo: algo_name(t.winograd, t.winograd_tile, t.winograd_f16),
        })
        .collect();
    // The model and tuned columns: the engine and tile, or the Winograd tile (and engine)
    // where ConvAlgo::Auto runs Winograd.
    for (r, t) in rows.iter().zip(&tuned) {
        let mut ms: Vec<String> = r.millis.iter().map(|m| format!("{m:>9.3}")).collect();
        if f16 {
            let f16_ms = r.f16_millis.as_deref().unwrap_or(&[]);
            ms.extend(f16_ms.iter().map(|m| format!("{m:>11.3}")));
        }
        let wino = |ms: Option<f64>| ms.map_or("-".into(), |m| format!("{m:>9.3}"));
        if lanes {
            ms.push(format!("{:>9}", wino(r.lanes_millis)));
        }
        ms.extend(r.winograd_millis.map(|m| format!("{:>9}", wino(m))));
        if f16 {
            ms.push(format!("{:>9}", wino(r.f16_winograd_millis)));
        }
        let model = if t.model_winograd {
            r.model_algo.clone()
        } else {
            r.model.clone()
        };
        let tuned = if t.winograd {
            r.tuned_algo.clone()
        } else {
            r.tuned.clone()
        };
        println!(
            "{:<11} {:>20} {:>20} {:>4} {:>11} {:>11} {}",
            r.pass,
            format!("{:?}", r.x),
            format!("{:?}", r.w),
            format!("{}/{}", r.stride, r.padding),
            model,
            tuned,
            ms.join(" "),
        );
    }
    println!();
    rows
}

#[derive(Serialize)]
struct Adapter {
    name: String,
    backend: String,
    driver: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (convs, kernels, models, tiles) = match args.what.as_str() {
        "convs" => (true, false, false, false),
        "kernels" => (true, true, false, false),
        "memory" => (false, true, false, false),
        "models" => (false, false, true, false),
        "all" => (true, true, true, false),
        "tiles" => (false, false, false, true),
        w => {
            return Err(Error::Invalid(format!(
                "--what {w:?}: expected convs, kernels, memory, models, all or tiles"
            )));
        }
    };
    let f16 = args.precision == resnet_wgpu::ConvPrecision::F16;
    // The engine's tiles: every f32 tile, or those the f16 engine has (a conv tile forced under
    // F16 runs the f16 tile of the same shape, where there is one).
    let engine_tiles: Vec<ConvTile> = ConvTile::ALL
        .into_iter()
        .filter(|&t| {
            let (m, n, _) = t.dims();
            let (fm, fn_, _) = MmaTile::for_f32_tile(t).dims();
            !f16 || (m, n) == (fm, fn_)
        })
        .collect();
    let sweep_tiles = match &args.tiles {
        None => engine_tiles.clone(),
        Some(list) => list
            .split(',')
            .map(|t| {
                let tile = ConvTile::parse(t).ok_or_else(|| {
                    Error::Invalid(format!(
                        "--tiles: unknown tile {t:?} (expected one of {})",
                        ConvTile::names()
                    ))
                })?;
                if !engine_tiles.contains(&tile) {
                    let names: Vec<String> = engine_tiles.iter().map(ToString::to_string).collect();
                    return Err(Error::Invalid(format!(
                        "--tiles: the f16 engine has no {t} tile (it has {})",
                        names.join(",")
                    )));
                }
                Ok(tile)
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if args.checks_ab && !tiles {
        return Err(Error::Invalid("--checks-ab goes with --what tiles".into()));
    }
    if args.checks_ab && f16 {
        return Err(Error::Invalid(
            "--checks-ab compares the f32 plan with and without runtime checks: leave out \
             --precision f16"
                .into(),
        ));
    }
    if args.autotune && tiles {
        return Err(Error::Invalid(
            "--autotune tunes the library's own plan: not with --what tiles, which forces each \
             tile"
                .into(),
        ));
    }
    if args.noop && (f16 || args.autotune) {
        return Err(Error::Invalid(
            "--noop runs no kernel: not with --precision f16 (no-op devices have no tensor \
             cores) nor with --autotune (which would tune on times without the GPU's work)"
                .into(),
        ));
    }
    let gpu = if args.noop {
        noop::noop_gpu(noop::h100_limits(), resnet_wgpu::PlanFor::Gpu)?
    } else {
        Gpu::with_conv_precision(args.precision)?
    };
    gpu.set_conv_autotune(args.autotune)?;
    if let Some(order) = args.order {
        gpu.set_conv_order(order);
    }
    if let Some(staging) = args.staging {
        gpu.set_conv_staging(staging);
    }
    if let Some(staging) = args.f16_staging {
        gpu.set_f16_staging(staging);
    }
    if let Some(algo) = args.algo {
        gpu.set_conv_algo(algo);
    }
    if let Some(tile) = &args.winograd_tile {
        gpu.set_winograd_tile(resnet_wgpu::WinogradTile::parse_choice(tile)?);
    }
    let (conv_model, shapes) = conv_shapes(&args.conv_shapes)?;
    let info = gpu.info().clone();
    let bench = Bench {
        timestamps: !args.no_timestamps && !args.noop && gpu.profiling_supported(),
        iters: args.iters.max(1),
        warmup: std::time::Duration::from_millis(args.warmup_ms),
        gpu,
    };
    println!("adapter: {info}");
    if args.noop {
        println!(
            "no-op device (--noop): an H100's limits and a GPU's plan, no kernel runs: wall times \
             are the host's alone, memory figures exact"
        );
    }
    println!("conv precision: {:?}", args.precision);
    println!("conv reduction order: {:?}", bench.gpu.conv_order());
    println!("conv staging: {:?}", bench.gpu.conv_staging());
    if args.precision == resnet_wgpu::ConvPrecision::F16 {
        println!("f16 engine staging: {:?}", bench.gpu.f16_staging());
    }
    println!(
        "conv algorithm (3x3 stride 1): {:?}, Winograd tile on the f32 engine: {}",
        bench.gpu.conv_algo(),
        winograd_tile_name(&bench.gpu)
    );
    let plan = bench.gpu.plan_for();
    println!(
        "kernels planned for: {}",
        if args.noop {
            format!("{plan:?} (--noop)")
        } else if plan == resnet_wgpu::PlanFor::for_device_type(info.device_type) {
            format!("{plan:?} (the adapter's type)")
        } else {
            format!(
                "{plan:?} (RESNET_WGPU_PLAN_FOR; the adapter is {:?})",
                info.device_type
            )
        }
    );
    println!(
        "conv tiles: {}{}",
        if args.autotune {
            "autotuned (--autotune)"
        } else {
            "the adapter's tile model"
        },
        if resnet_wgpu::ops::conv_shares_a(&bench.gpu) {
            ", f32 tiles with tall micro-tiles whose subgroups share A"
        } else {
            ""
        }
    );
    println!(
        "conv GEMMs without workgroup memory or barriers (gemm_lanes.wgsl): {}",
        match bench.gpu.conv_gemm_lanes() {
            Some(lanes) if resnet_wgpu::ops::conv_gemms_without_barriers(&bench.gpu) => format!(
                "Winograd's, and the direct convolutions' where no tile is forced (CPU \
                 adapter, {lanes} lanes), reading {}",
                if resnet_wgpu::ops::conv_gemm_wide_reads(&bench.gpu) {
                    "32 bytes at a time where the depth allows (64-bit integers)"
                } else {
                    "vec4s of f32"
                }
            ),
            _ => "none".into(),
        }
    );
    println!(
        "Winograd F(4x4, 3x3) transforms: {}",
        if resnet_wgpu::ops::winograd_transforms_by_quads(&bench.gpu) {
            "vec4s by quads of lanes (winograd_quads.wgsl)"
        } else {
            "one value at a time (winograd.wgsl)"
        }
    );
    let gemms_without_barriers = resnet_wgpu::ops::conv_gemms_without_barriers(&bench.gpu);
    println!(
        "x laid out for the weight gradient: {}",
        match (gemms_without_barriers, bench.gpu.conv_keep_laid_out()) {
            (true, true) => "kept from the forward pass (Gpu::set_conv_keep_laid_out)",
            (true, false) => "laid out again (RESNET_WGPU_KEEP_LAID_OUT=0)",
            (false, _) => "by the weight gradient's own kernels (tiled GEMMs)",
        }
    );
    println!(
        "shader runtime checks: {}",
        if bench.gpu.shader_checks() {
            "on (RESNET_WGPU_SHADER_CHECKS=1)"
        } else {
            "off (trusted kernels)"
        }
    );
    println!(
        "reductions: {}",
        match bench.gpu.subgroup_lanes() {
            Some(n) => format!("subgroup shuffles within {n} lanes, then workgroup memory"),
            None => "workgroup memory alone".to_string(),
        }
    );
    println!(
        "batch {}, {} timed iterations per figure after a warm-up of at least {} ms; GPU time: {}\n",
        args.batch,
        bench.iters,
        args.warmup_ms,
        if bench.timestamps {
            "timestamp queries"
        } else if args.noop {
            "none (--noop)"
        } else if args.no_timestamps {
            "off (--no-timestamps), wall time only"
        } else {
            "unavailable (no timestamp queries), wall time only"
        }
    );
    let mut report = Report {
        adapter: Adapter {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
        },
        timestamps: bench.timestamps,
        batch: args.batch,
        iters: bench.iters,
        warmup_ms: args.warmup_ms,
        conv_shapes: conv_model,
        precision: format!("{:?}", args.precision),
        order: format!("{:?}", bench.gpu.conv_order()),
        staging: format!("{:?}", bench.gpu.conv_staging()),
        f16_staging: format!("{:?}", bench.gpu.f16_staging()),
        algo: format!("{:?}", bench.gpu.conv_algo()),
        winograd_tile: winograd_tile_name(&bench.gpu),
        shader_checks: bench.gpu.shader_checks(),
        subgroup_lanes: bench.gpu.subgroup_lanes(),
        plan_for: format!("{:?}", bench.gpu.plan_for()),
        convs: None,
        conv_totals: None,
        memory_kernels: None,
        host: None,
        models: None,
        tile_sweep: None,
        tuned_convs: None,
    };
    if convs {
        let (rows, totals) = bench_convs(&bench, args.batch, conv_model, shapes)?;
        report.convs = Some(rows);
        report.conv_totals = Some(totals);
    }
    if kernels {
        report.memory_kernels = Some(bench_memory_kernels(&bench, args.batch)?);
    }
    if models {
        report.host = Some(bench_host(&bench.gpu)?);
        report.models = Some(bench_models(&bench, &args)?);
    }
    if tiles {
        let checked = if args.checks_ab {
            let gpu = Gpu::with_options(GpuOptions {
                shader_checks: Some(true),
                ..Default::default()
            })?;
            Some(Bench {
                timestamps: bench.timestamps && gpu.profiling_supported(),
                iters: bench.iters,
                warmup: bench.warmup,
                gpu,
            })
        } else {
            None
        };
        report.tile_sweep = Some(bench_tiles(
            &bench,
            args.batch,
            shapes,
            &sweep_tiles,
            checked.as_ref(),
        )?);
    }
    if args.autotune {
        report.tuned_convs = Some(report_tuned(&bench.gpu));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("serialising the results: {e}")))?;
        resnet_wgpu::io::write_atomically(path, |f| std::io::Write::write_all(f, text.as_bytes()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}
