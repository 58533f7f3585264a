//! Shared test helpers: the device, golden files and tolerant comparisons.
#![allow(dead_code)]

use resnet_wgpu::ops::{self, ConvPass, ConvTile};
use resnet_wgpu::{Gpu, PlanFor, Tensor};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The device shared by the tests of one test binary. Fails (never skips) without an adapter.
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(new_gpu).clone()
}

/// A device of its own, for tests that count allocations.
pub fn new_gpu() -> Gpu {
    match Gpu::new() {
        Ok(g) => g,
        Err(e) => panic!("tests need a GPU adapter (lavapipe in CI): {e}"),
    }
}

/// Whether `gpu` runs the conv GEMMs without barriers (shaders/gemm_lanes.wgsl): with
/// subgroups of 4, 8 or 16 lanes for them (`Gpu::conv_gemm_lanes`: lavapipe's 8 or 16,
/// asserted; SwiftShader's 4) on a CPU adapter's plan (not under RESNET_WGPU_PLAN_FOR=gpu, as CI
/// also runs the suite).
pub fn gemms_without_barriers_expected(gpu: &Gpu) -> bool {
    let lanes = gpu.conv_gemm_lanes();
    if gpu.info().name.contains("llvmpipe") {
        assert!(
            matches!(lanes, Some(8 | 16)),
            "lavapipe has subgroups of 8 or 16: {}",
            gpu.info()
        );
    }
    matches!(lanes, Some(4 | 8 | 16)) && gpu.plan_for() == PlanFor::Cpu
}

/// Whether the GEMMs without barriers read 32 bytes at a time on `gpu` by default
/// ([`Gpu::conv_wide_reads`]): where the device has 64-bit integers, which lavapipe (every
/// CI pass but the browser's) must offer, unless `RESNET_WGPU_WIDE_READS=0`.
pub fn wide_reads_expected(gpu: &Gpu) -> bool {
    let int64 = gpu
        .device()
        .features()
        .contains(wgpu::Features::SHADER_INT64);
    if gpu.info().name.contains("llvmpipe") {
        assert!(int64, "lavapipe has 64-bit integers: {}", gpu.info());
    }
    int64 && std::env::var("RESNET_WGPU_WIDE_READS").map_or(true, |v| v != "0")
}

/// A device an application opens its own way, from the default adapter, with `describe` to set
/// its limits and features; with that adapter. Fails (never skips) without an adapter.
pub fn application_device(
    describe: impl FnOnce(&wgpu::Adapter, &mut wgpu::DeviceDescriptor<'_>),
) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("tests need a GPU adapter (lavapipe in CI)");
    let mut descriptor = wgpu::DeviceDescriptor::default();
    describe(&adapter, &mut descriptor);
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor)).unwrap();
    (adapter, device, queue)
}

/// Every parameter's gradient in `grads`, by name, as `net.forward_train` bound them.
pub fn named_gradients(
    net: &resnet_wgpu::nn::ResNet,
    binds: &resnet_wgpu::nn::Bindings,
    grads: &resnet_wgpu::Gradients,
) -> Vec<(String, Vec<f32>)> {
    net.params()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let g = grads.get(binds.var(i))?;
            Some((p.name.clone(), g.to_vec().unwrap()))
        })
        .collect()
}

/// `../shared/golden` beside the project root (or `$RESNET_WGPU_GOLDEN`).
pub fn golden_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RESNET_WGPU_GOLDEN") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden")
}

/// A golden safetensors file's bytes; panics (fails the test) when missing.
pub fn golden_bytes(file: &str) -> Vec<u8> {
    let path = golden_dir().join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("golden file {} is required: {e}", path.display()))
}

/// Tensors of a golden file by name: shape and values as f32 (int64 converted).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(file: &str) -> Golden {
        Golden {
            bytes: golden_bytes(file),
        }
    }

    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).expect("valid golden safetensors")
    }

    pub fn names(&self) -> Vec<String> {
        self.st()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.st()
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name} missing"))
            .shape()
            .to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name} missing"));
        match t.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(t.data()),
            safetensors::Dtype::I64 => {
                let v: Vec<i64> = bytemuck::pod_collect_to_vec(t.data());
                v.into_iter().map(|x| x as f32).collect()
            }
            d => panic!("golden tensor {name} has unexpected dtype {d:?}"),
        }
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name} missing"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name} dtype");
        bytemuck::pod_collect_to_vec(t.data())
    }

    /// Upload a golden f32 tensor.
    pub fn tensor(&self, gpu: &Gpu, name: &str) -> Tensor {
        Tensor::from_slice(gpu, &self.shape(name), &self.f32(name)).unwrap()
    }
}

/// Assert `|a - e| <= atol + rtol * |e|` elementwise, reporting the worst element.
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
    let mut worst = (0usize, 0f32);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        let excess = (a - e).abs() - (atol + rtol * e.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} of {}: got {}, expected {} (rtol {rtol}, atol {atol})",
            actual.len(),
            actual[i],
            expected[i]
        );
    }
}

/// Assert that two runs of a conv's three passes (forward, input gradient, weight gradient)
/// gave the same bits, naming the pass that differs.
#[track_caller]
pub fn assert_same_pass_bits(a: &[Vec<f32>; 3], b: &[Vec<f32>; 3], what: &str) {
    for (pass, (x, y)) in ["forward", "input gradient", "weight gradient"]
        .iter()
        .zip(a.iter().zip(b))
    {
        let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: the {pass} differs");
    }
}

/// A tensor's values as bits, for comparisons that must be exact (NaNs and -0.0 included).
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// The root mean square of `v`.
pub fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32
}

/// [`assert_close`] with an absolute tolerance of `scale_tol` times the RMS of `expected`: for
/// algorithms whose rounding errors scale with the whole output (Winograd's transforms mix
/// each tile's values), not with each element.
pub fn assert_close_to_scale(
    actual: &[f32],
    expected: &[f32],
    rtol: f32,
    scale_tol: f32,
    what: &str,
) {
    let atol = scale_tol * rms(expected);
    let what = format!("{what} (atol {scale_tol} x RMS {})", rms(expected));
    assert_close(actual, expected, rtol, atol, &what);
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), for reproducible random tests.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Eval-mode batch-norm vectors (gamma, beta, running mean, running variance) as tensors on
/// `gpu`, for [`eval_bn`].
pub fn channel_tensors(gpu: &Gpu, vectors: &[Vec<f32>]) -> Vec<Tensor> {
    vectors
        .iter()
        .map(|v| Tensor::from_slice(gpu, &[v.len()], v).unwrap())
        .collect()
}

/// The eval-mode batch norm of four [`channel_tensors`] with `eps`.
pub fn eval_bn(t: &[Tensor], eps: f32) -> resnet_wgpu::ops::EvalBatchNorm<'_> {
    resnet_wgpu::ops::EvalBatchNorm {
        gamma: &t[0],
        beta: &t[1],
        running_mean: &t[2],
        running_var: &t[3],
        eps,
    }
}

/// One pass of the convolution of x with w (`stride`, padding 1), read back: the forward, or a
/// gradient from gy; with `tile` forced, else by the library's route (for the tuned routes'
/// tests).
pub fn conv_pass(
    pass: ConvPass,
    [x, w, gy]: [&Tensor; 3],
    stride: usize,
    tile: Option<ConvTile>,
) -> Vec<f32> {
    let shape = |t: &Tensor| -> [usize; 4] { t.shape().try_into().expect("an NCHW tensor") };
    let out = match pass {
        ConvPass::Forward => ops::conv2d_tiled(x, w, None, stride, 1, tile),
        ConvPass::InputGrad => ops::conv2d_backward_input_tiled(gy, w, shape(x), stride, 1, tile),
        ConvPass::WeightGrad => ops::conv2d_backward_weight_tiled(x, gy, shape(w), stride, 1, tile),
    };
    out.unwrap().to_vec().unwrap()
}

/// [`ops::conv2d_backward_input_add_tiled`] of random values against `axpy` after
/// [`ops::conv2d_backward_input_tiled`] (`what` names the case): asserts the same bits, and
/// returns the dispatches of the first less those of the second alone (0 where the kernels add
/// as they write, 1 where axpy adds after).
#[allow(clippy::too_many_arguments)]
pub fn input_grad_add_dispatches(
    gpu: &Gpu,
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    tile: Option<ConvTile>,
    seed: u64,
    what: &str,
) -> u64 {
    let (oh, ow) = ops::conv2d_output_size(x[2], x[3], w[2], stride, pad);
    let ys = [x[0], w[0], oh, ow];
    let wt = Tensor::from_slice(gpu, &w, &random_vec(w.iter().product(), seed)).unwrap();
    let gy = Tensor::from_slice(gpu, &ys, &random_vec(ys.iter().product(), seed + 1)).unwrap();
    let sum = random_vec(x.iter().product(), seed + 2);
    let apart = Tensor::from_slice(gpu, &x, &sum).unwrap();
    let before = gpu.dispatch_count();
    let gx = ops::conv2d_backward_input_tiled(&gy, &wt, x, stride, pad, tile).unwrap();
    let plain = gpu.dispatch_count() - before;
    ops::axpy(&apart, 1.0, &gx).unwrap();
    let into = Tensor::from_slice(gpu, &x, &sum).unwrap();
    let before = gpu.dispatch_count();
    let added = ops::conv2d_backward_input_add_tiled(&gy, &wt, x, stride, pad, into, tile).unwrap();
    let dispatches = gpu.dispatch_count() - before;
    assert!(
        bits(&added) == bits(&apart),
        "{what}: the sum's bits differ from axpy's"
    );
    dispatches - plain
}
