//! The full-size work of the benchmarks, as a GPU would run it, on wgpu's no-op backend
//! (`examples/common/noop.rs`): ResNet-18's training step at 224x224 and batch 128, its 32x32
//! step at batch 256, inference at batch 64 and ResNet-50's step. lavapipe cannot run these in a
//! test's time, and the tests that run kernels stay at small batches; here the GPU's plan at full
//! size is checked for what only its size can break (grids beyond 65,535 workgroups, bindings
//! beyond the device's limits, buffers beyond its largest), its memory is counted exactly (the
//! pool's accounting is the host's), and its steady state is checked to allocate nothing.
//! No kernel runs, so no values are checked: the golden tests do that at small sizes.

#[path = "../examples/common/noop.rs"]
mod noop;
#[path = "../examples/common/step.rs"]
mod step;

use resnet_wgpu::nn::{ResNet, ResNetConfig};
use resnet_wgpu::optim::Sgd;
use resnet_wgpu::{Error, Gpu, PlanFor, Rng, Tensor};

const MIB: u64 = 1 << 20;

/// Record and submit `steps` SGD training steps of `config` on `[batch, 3, side, side]` images;
/// after each step, the pool's statistics.
fn train_steps(
    gpu: &Gpu,
    config: ResNetConfig,
    batch: usize,
    side: usize,
    steps: usize,
) -> resnet_wgpu::Result<Vec<resnet_wgpu::gpu::PoolStats>> {
    let classes = config.num_classes;
    let mut net = ResNet::new(gpu, config, &mut Rng::new(0))?;
    let x = Tensor::zeros(gpu, &[batch, 3, side, side])?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
    let y = Tensor::from_u32(gpu, &[batch], &labels)?;
    let mut sgd = Sgd::new(0.9, false, 5e-4);
    let mut stats = Vec::new();
    for _ in 0..steps {
        let loss = step::train_step(&mut net, &x, &y, &mut sgd, 0.1)?;
        loss.tensor().to_vec()?;
        stats.push(gpu.pool_stats());
    }
    Ok(stats)
}

#[test]
fn resnet18_step_at_224_and_batch_128_fits_an_h100_and_pytorch_s_memory() {
    let gpu = noop::noop_gpu(noop::h100_limits(), PlanFor::Gpu).unwrap();
    let stats = train_steps(&gpu, ResNetConfig::resnet18(1000), 128, 224, 3).unwrap();
    let last = stats.last().unwrap();
    // PyTorch 2.11 with cuDNN, f32, on the same step: 2,995 MiB allocated at its peak
    // (`torch.cuda.max_memory_allocated`, docs/gpu-runs/run5-pytorch.txt). The live peak counts
    // the same things: weights, gradients, momentum, the input and the activations kept.
    assert!(
        last.peak_live_bytes <= 2995 * MIB,
        "live peak {:.1} MiB, PyTorch's 2,995",
        last.peak_live_bytes as f64 / MIB as f64
    );
    // Once the first steps have filled the pool, a step takes every buffer from it.
    assert_eq!(
        stats[1].allocations, last.allocations,
        "the third step allocated new buffers"
    );
}

#[test]
fn resnet18_step_at_32_and_batch_256_and_inference_at_batch_64_fit_an_h100() {
    let gpu = noop::noop_gpu(noop::h100_limits(), PlanFor::Gpu).unwrap();
    let stats = train_steps(&gpu, ResNetConfig::resnet18(10), 256, 32, 3).unwrap();
    assert_eq!(stats[1].allocations, stats[2].allocations);

    let mut net = ResNet::new(&gpu, ResNetConfig::resnet18(1000), &mut Rng::new(0)).unwrap();
    for batch in [1, 64] {
        let x = Tensor::zeros(&gpu, &[batch, 3, 224, 224]).unwrap();
        let y = net.infer(&x).unwrap();
        assert_eq!(y.shape(), &[batch, 1000]);
        y.to_vec().unwrap();
    }
}

#[test]
fn resnet50_step_at_224_fits_an_h100() {
    // Batch 32 rather than the bench's 128 keeps the no-op device's host memory (every buffer
    // is zeroed host memory) near 3 GiB. The grids that pass 65,535 workgroups at full size
    // (the stem's pooling and its batch norm's input gradient, folded into two dimensions) are
    // ResNet-18's too, and checked above at batch 128.
    let gpu = noop::noop_gpu(noop::h100_limits(), PlanFor::Gpu).unwrap();
    let stats = train_steps(&gpu, ResNetConfig::resnet50(1000), 32, 224, 2).unwrap();
    assert!(stats[1].peak_live_bytes > 0);
}

#[test]
fn webgpu_s_default_limits_refuse_the_full_size_step_by_name_and_run_a_smaller_batch() {
    let gpu = noop::noop_gpu(wgpu::Limits::default(), PlanFor::Gpu).unwrap();
    // Batch 128 at 224x224: the stem's output alone is 392 MiB, past WebGPU's default
    // 256 MiB buffers.
    match train_steps(&gpu, ResNetConfig::resnet18(1000), 128, 224, 1) {
        Err(Error::Limit { limit, needed, .. }) => {
            assert_eq!(limit, "max_buffer_size");
            assert_eq!(needed, 128 * 64 * 112 * 112 * 4);
        }
        other => panic!("expected the buffer-size limit, got {other:?}"),
    }
    // Batch 16 fits, with the grouped optimizer's narrow variants for 8 storage buffers.
    train_steps(&gpu, ResNetConfig::resnet18(1000), 16, 224, 2).unwrap();
}
