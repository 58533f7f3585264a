//! Whole networks against PyTorch: the tiny ResNets of `../shared/golden` reproduce torchvision's
//! training-mode logits, loss and every parameter gradient through the tape, and one SGD step
//! (lr 0.1, momentum 0.9, weight decay 5e-4) reproduces the parameters, running statistics and
//! eval-mode logits after the step.

mod common;
use common::*;
use resnet_wgpu::io::{HostData, HostTensor, StateDict};
use resnet_wgpu::nn::{ResNet, ResNetConfig, Stem};
use resnet_wgpu::ops::TileModel;
use resnet_wgpu::optim::{Optimizer, ParamUpdate, Sgd};
use resnet_wgpu::{ConvAlgo, Gpu, GpuOptions, PlanFor, Rng, Tape, Tensor, Var};

const FILES: [&str; 3] = [
    "tiny_basic.safetensors",
    "tiny_bottleneck.safetensors",
    "tiny_cifar_basic.safetensors",
];

/// The `params.*` tensors of a golden file as a torchvision state dict.
fn params_dict(g: &Golden) -> StateDict {
    let mut dict = StateDict::new();
    for name in g.names() {
        if let Some(n) = name.strip_prefix("params.") {
            let data = if n.ends_with("num_batches_tracked") {
                HostData::I64(g.i64(&name))
            } else {
                HostData::F32(g.f32(&name))
            };
            dict.insert(
                n.to_string(),
                HostTensor::new(g.shape(&name), data).unwrap(),
            );
        }
    }
    dict
}

fn labels(g: &Golden) -> Vec<u32> {
    g.i64("labels").into_iter().map(|v| v as u32).collect()
}

#[test]
fn tiny_resnets_match_pytorch_forward_backward_and_sgd_step() {
    check_goldens(&gpu());
}

#[test]
fn tiny_resnets_match_pytorch_through_winograd() {
    // Every 3x3 stride-1 conv of the tiny nets (8-64 channels on planes of 8x8 to 1x1, which
    // ConvAlgo::Auto leaves direct) on Winograd: its three passes in training and the fused
    // inference block after the step.
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Winograd);
    check_goldens(&gpu);
}

#[test]
fn tiny_resnets_match_pytorch_with_a_gpu_s_plan() {
    // The kernels a GPU would run, on whatever adapter runs the tests: on lavapipe the tiny
    // nets' narrow convs take the GEMM tiles instead of the direct kernels, the GEMMs split
    // their reductions for a GPU's 396 workgroups, and SGD updates several tensors per
    // dispatch.
    let gpu = Gpu::with_options(GpuOptions {
        plan_for: Some(PlanFor::Gpu),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(gpu.plan_for(), PlanFor::Gpu);
    assert_eq!(TileModel::for_gpu(&gpu), TileModel::GPU);
    check_goldens(&gpu);
    // RESNET_WGPU_PLAN_FOR's values.
    assert_eq!(" GPU".parse::<PlanFor>().unwrap(), PlanFor::Gpu);
    assert_eq!("cpu".parse::<PlanFor>().unwrap(), PlanFor::Cpu);
    let e = "tpu".parse::<PlanFor>().unwrap_err().to_string();
    assert!(e.contains("\"tpu\"") && e.contains("gpu or cpu"), "{e}");
}

#[test]
fn tiny_resnets_match_pytorch_on_an_application_s_device() {
    // An application's device, opened its own way: WebGPU's default limits (8 storage buffers
    // per stage, 128 MiB bindings) and no optional features, so no timestamps and no subgroup
    // reductions. The Gpu describes and plans for the device's own adapter.
    let (adapter, device, queue) = application_device(|adapter, d| {
        d.required_limits = wgpu::Limits::default().using_alignment(adapter.limits());
    });
    let gpu = Gpu::from_device(device, queue);
    let info = adapter.get_info();
    assert_eq!(gpu.info().name, info.name);
    assert_eq!(gpu.info().backend, info.backend);
    let plan = std::env::var("RESNET_WGPU_PLAN_FOR").map(|v| v.parse().unwrap());
    let plan = plan.unwrap_or(PlanFor::for_device_type(info.device_type));
    assert_eq!(gpu.plan_for(), plan);
    assert!(!gpu.profiling_supported());
    assert_eq!(gpu.subgroup_lanes(), None);
    check_goldens(&gpu);
}

#[test]
fn an_application_s_device_takes_the_kernel_options_and_refuses_the_opening_ones() {
    let device = || application_device(|_, _| {});
    // The plan is the application's to choose, whatever its adapter.
    for plan in [PlanFor::Gpu, PlanFor::Cpu] {
        let (adapter, device, queue) = device();
        let options = GpuOptions {
            plan_for: Some(plan),
            shader_checks: Some(true),
            ..Default::default()
        };
        let gpu = Gpu::from_adapter_device_with(&adapter, device, queue, &options).unwrap();
        assert_eq!(gpu.plan_for(), plan);
        assert!(gpu.shader_checks());
    }
    // Options that choose or open an adapter have no meaning for an opened device.
    let refused = [
        (
            "backends",
            GpuOptions {
                backends: Some(wgpu::Backends::VULKAN),
                ..Default::default()
            },
        ),
        (
            "adapter_name",
            GpuOptions {
                adapter_name: Some("llvmpipe".into()),
                ..Default::default()
            },
        ),
        (
            "default_limits",
            GpuOptions {
                default_limits: true,
                ..Default::default()
            },
        ),
        // Opened without the cooperative-matrix features.
        (
            "tensor_cores",
            GpuOptions {
                tensor_cores: true,
                ..Default::default()
            },
        ),
    ];
    for (field, options) in refused {
        let (adapter, device, queue) = device();
        let e = Gpu::from_adapter_device_with(&adapter, device, queue, &options)
            .err()
            .unwrap_or_else(|| panic!("GpuOptions::{field} should be refused"))
            .to_string();
        assert!(e.contains(&format!("GpuOptions::{field}")), "{e}");
    }
}

/// Loss and every parameter's gradient (by name) of a ResNet-18 training step at 224x224,
/// batch 2 (random images), on a device planned for `plan`, and the dispatches it took.
fn resnet18_step(plan: PlanFor) -> (f32, Vec<(String, Vec<f32>)>, u64) {
    let gpu = Gpu::with_options(GpuOptions {
        plan_for: Some(plan),
        ..Default::default()
    })
    .unwrap();
    let mut net = ResNet::new(&gpu, ResNetConfig::resnet18(10), &mut Rng::new(7)).unwrap();
    let x = Tensor::from_slice(&gpu, &[2, 3, 224, 224], &random_vec(2 * 3 * 224 * 224, 5));
    let y = Tensor::from_u32(&gpu, &[2], &[3, 8]).unwrap();
    let before = gpu.dispatch_count();
    let tape = Tape::new();
    let (logits, binds) = net.forward_train(&tape, &x.unwrap(), |_| true).unwrap();
    let loss = logits.cross_entropy(&y, 0.0).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let dispatches = gpu.dispatch_count() - before;
    let named = named_gradients(&net, &binds, &grads);
    (loss.tensor().to_vec().unwrap()[0], named, dispatches)
}

#[test]
fn resnet18_gradients_agree_between_a_gpu_s_plan_and_a_cpu_adapter_s() {
    // The kernels a GPU runs at ResNet-18's own shapes, on whatever adapter runs the tests:
    // Winograd F(4x4, 3x3) on layer1 and layer2 (64 and 128 channels, at least 1,024 pixels),
    // the direct GEMMs with a GPU's tiles and splits elsewhere, grouped updates aside. The CPU
    // adapter's plan sums in other orders. At batch 2 the network is sensitive: an input
    // perturbed by 1e-6 moves some gradients by 5e-3 of their norm (ReLU masks and pooling
    // choices flip), and the two plans differ by as much (measured: 1.3e-3 to 6.8e-3 for
    // Auto and Direct on either plan). A kernel that dropped or doubled a split, a phase or a
    // Winograd tile would be off by far more.
    let (loss_cpu, cpu, dispatches_cpu) = resnet18_step(PlanFor::Cpu);
    let (loss_gpu, gpu, dispatches_gpu) = resnet18_step(PlanFor::Gpu);
    assert_ne!(dispatches_cpu, dispatches_gpu, "the plans should differ");
    assert!(
        (loss_cpu - loss_gpu).abs() <= 1e-5 * loss_cpu.abs(),
        "loss {loss_cpu} against {loss_gpu}"
    );
    assert_eq!(cpu.len(), 62, "every parameter's gradient");
    let norm =
        |v: &mut dyn Iterator<Item = f32>| v.map(|x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    for ((name, a), (_, b)) in cpu.iter().zip(&gpu) {
        let off = norm(&mut a.iter().zip(b).map(|(p, q)| p - q)) / norm(&mut a.iter().copied());
        assert!(
            off < 2e-2,
            "{name}: the plans' gradients differ by {off:e} of its norm"
        );
    }
}

/// The goldens' training step, gradients, SGD step and eval logits on `gpu`.
fn check_goldens(gpu: &Gpu) {
    for file in FILES {
        let g = Golden::open(file);
        // The architecture comes from the file's names and shapes, not from settings here.
        let (mut net, report) = ResNet::from_state_dict(gpu, &params_dict(&g), None, true).unwrap();
        assert!(report.is_clean(), "{file}: {report}");
        let x = g.tensor(gpu, "input");
        let y = Tensor::from_u32(gpu, &[4], &labels(&g)).unwrap();

        let tape = Tape::new();
        let (logits, binds) = net.forward_train(&tape, &x, |_| true).unwrap();
        assert_close(
            &logits.tensor().to_vec().unwrap(),
            &g.f32("train_logits"),
            1e-3,
            1e-4,
            &format!("{file}: train logits"),
        );
        let loss = logits.cross_entropy(&y, 0.0).unwrap();
        assert_close(
            &loss.tensor().to_vec().unwrap(),
            &g.f32("loss"),
            1e-3,
            1e-5,
            &format!("{file}: loss"),
        );
        let grads = tape.backward(&loss).unwrap();
        let mut checked = 0;
        for (i, p) in net.params().iter().enumerate() {
            let key = format!("grads.{}", p.name);
            if !g.has(&key) {
                assert!(
                    !p.is_trainable(),
                    "{file}: no golden gradient for {}",
                    p.name
                );
                continue;
            }
            let got = grads
                .get(binds.var(i))
                .unwrap_or_else(|| panic!("{file}: no gradient for {}", p.name));
            let expected = g.f32(&key);
            // Gradients are compared relative to the tensor's largest magnitude (about 1e-3).
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(
                &got.to_vec().unwrap(),
                &expected,
                1e-3,
                1e-3 * scale + 1e-6,
                &format!("{file}: {key}"),
            );
            checked += 1;
        }
        assert_eq!(
            checked,
            net.params().iter().filter(|p| p.is_trainable()).count()
        );

        // One SGD step, as torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4).
        let mut sgd = Sgd::new(0.9, false, 5e-4);
        let grad_list: Vec<(usize, Tensor)> = net
            .params()
            .iter()
            .enumerate()
            .filter_map(|(i, _)| grads.get(binds.var(i)).map(|g| (i, g.clone())))
            .collect();
        let updates: Vec<ParamUpdate<'_>> = grad_list
            .iter()
            .map(|(i, gr)| ParamUpdate {
                slot: *i,
                param: &net.params()[*i].tensor,
                grad: gr,
                lr: 0.1,
            })
            .collect();
        sgd.step(&updates).unwrap();
        drop(updates);
        let after = net.state_dict().unwrap();
        for (name, t) in after.iter() {
            let key = format!("after_step.{name}");
            if name.ends_with("num_batches_tracked") {
                assert_eq!(t.data, HostData::I64(g.i64(&key)), "{file}: {name}");
                continue;
            }
            let expected = g.f32(&key);
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(
                &t.to_f32_vec(),
                &expected,
                1e-3,
                1e-4 * scale + 1e-6,
                &format!("{file}: {key}"),
            );
        }
        let eval = net.infer(&x).unwrap();
        assert_close(
            &eval.to_vec().unwrap(),
            &g.f32("eval_logits_after_step"),
            1e-3,
            1e-3,
            &format!("{file}: eval logits after the step"),
        );
    }
}

#[test]
fn inference_fuses_each_conv_with_its_batch_norm() {
    // A device of its own: the test counts dispatches.
    // The last stages wide enough that a CPU adapter's plan runs some convs off the narrow
    // kernels (whose batch norms run apart).
    let gpu = new_gpu();
    let configs = [
        ResNetConfig::resnet18(5)
            .with_widths(vec![4, 8, 16, 32])
            .with_stem(Stem::ImageNet),
        ResNetConfig::resnet50(3)
            .with_layers(vec![1, 2, 1, 1])
            .with_widths(vec![4, 4, 8, 8])
            .with_stem(Stem::Cifar),
    ];
    for config in configs {
        let what = format!("{config}");
        let mut net = ResNet::new(&gpu, config, &mut Rng::new(3)).unwrap();
        let x = Tensor::from_slice(&gpu, &[2, 3, 32, 32], &random_vec(2 * 3 * 32 * 32, 4)).unwrap();
        // Training steps' forward passes move the running statistics away from 0 and 1.
        for _ in 0..2 {
            net.forward_train(&Tape::new(), &x, |_| true).unwrap();
        }
        let before = gpu.dispatch_count();
        gpu.start_profiling().unwrap();
        let fused = net.infer(&x).unwrap().to_vec().unwrap();
        let fused_dispatches = gpu.dispatch_count() - before;
        // The convs that a CPU adapter's plan runs on the narrow kernels, which have no
        // batch-norm epilogue: their batch norms (and residual joins) run apart.
        let kernels = gpu.finish_profiling().unwrap();
        let narrow = kernels
            .iter()
            .filter(|k| k.entry == "narrow_forward")
            .count() as u64;
        // With tracked parameters the eval-mode forward runs (and records) the separate ops.
        let tape = Tape::new();
        let b = net.bind(Some(&tape), |_| true);
        let before = gpu.dispatch_count();
        let apart = net
            .forward_with(&b, &Var::constant(x.clone()), false, None)
            .unwrap();
        let apart_dispatches = gpu.dispatch_count() - before;
        assert_close(
            &fused,
            &apart.tensor().to_vec().unwrap(),
            1e-5,
            1e-5,
            &format!("{what}: fused against separate kernels"),
        );
        // Each batch norm (and each residual join) of the other convs is a dispatch fewer.
        let bns = net
            .params()
            .iter()
            .filter(|p| p.name.ends_with("running_var"))
            .count() as u64;
        // Some are fused on every plan.
        assert!(
            narrow < bns,
            "{what}: {narrow} of {bns} convs on the narrow kernels"
        );
        assert!(
            fused_dispatches + bns - narrow <= apart_dispatches,
            "{what}: {fused_dispatches} fused dispatches, {apart_dispatches} apart, {bns} batch \
             norms, {narrow} convs on the narrow kernels"
        );
    }
}

/// Loss, every parameter gradient and the eval logits of one training step on `gpu`.
fn step_results(gpu: &Gpu, config: &ResNetConfig) -> Vec<Vec<f32>> {
    let mut net = ResNet::new(gpu, config.clone(), &mut Rng::new(5)).unwrap();
    let x = Tensor::from_slice(gpu, &[2, 3, 32, 32], &random_vec(2 * 3 * 32 * 32, 6)).unwrap();
    let labels = Tensor::from_u32(gpu, &[2], &[1, 4]).unwrap();
    let tape = Tape::new();
    let (logits, binds) = net.forward_train(&tape, &x, |_| true).unwrap();
    let loss = logits.cross_entropy(&labels, 0.0).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let mut out = vec![loss.tensor().to_vec().unwrap()];
    for i in 0..net.params().len() {
        if let Some(g) = grads.get(binds.var(i)) {
            out.push(g.to_vec().unwrap());
        }
    }
    out.push(net.infer(&x).unwrap().to_vec().unwrap());
    out
}

#[test]
fn kernels_compiled_with_and_without_runtime_checks_agree() {
    // The default compiles the kernels without wgpu's index clamping and loop bounding; the
    // checked build must compile too (it is the fallback for debugging a kernel) and the two
    // must compute the same numbers (the checks change no arithmetic). With
    // RESNET_WGPU_SHADER_CHECKS=1 set, both devices are checked.
    let checked = Gpu::with_options(GpuOptions {
        shader_checks: Some(true),
        ..Default::default()
    })
    .expect("a device with shader checks");
    assert!(checked.shader_checks());
    let unchecked = new_gpu();
    let config = ResNetConfig::resnet18(5)
        .with_widths(vec![4, 8, 8, 16])
        .with_stem(Stem::ImageNet);
    let a = step_results(&unchecked, &config);
    let b = step_results(&checked, &config);
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_close(
            a,
            b,
            1e-6,
            1e-7,
            &format!("result {i} checked against unchecked"),
        );
    }
}

#[test]
fn features_for_backbone_use() {
    let gpu = gpu();
    let config = ResNetConfig::resnet18(5)
        .with_widths(vec![4, 8, 8, 16])
        .with_stem(Stem::ImageNet);
    let mut net = ResNet::new(&gpu, config, &mut Rng::new(1)).unwrap();
    let x = Tensor::from_slice(&gpu, &[2, 3, 32, 32], &random_vec(2 * 3 * 32 * 32, 9)).unwrap();
    let (f, logits) = net.features(&x).unwrap();
    assert_eq!(f.stem.unwrap().shape(), &[2, 4, 8, 8]);
    let shapes: Vec<Vec<usize>> = f.stages.iter().map(|t| t.shape().to_vec()).collect();
    assert_eq!(
        shapes,
        vec![
            vec![2, 4, 8, 8],
            vec![2, 8, 4, 4],
            vec![2, 8, 2, 2],
            vec![2, 16, 1, 1]
        ]
    );
    assert_eq!(f.pooled.unwrap().shape(), &[2, 16]);
    assert_eq!(logits.shape(), &[2, 5]);
    assert_eq!(
        logits.to_vec().unwrap(),
        net.infer(&x).unwrap().to_vec().unwrap()
    );
}

#[test]
fn wrong_input_is_an_error() {
    let gpu = gpu();
    let config = ResNetConfig::resnet18(3)
        .with_widths(vec![4, 4, 4, 4])
        .with_stem(Stem::Cifar);
    let mut net = ResNet::new(&gpu, config, &mut Rng::new(1)).unwrap();
    let x = Tensor::zeros(&gpu, &[1, 1, 8, 8]).unwrap();
    let err = net.infer(&x).unwrap_err().to_string();
    assert!(
        err.contains("[N, 3, H, W]") && err.contains("[1, 1, 8, 8]"),
        "{err}"
    );
}

/// Floats per image of the activations PyTorch keeps for the backward of a basic-block ResNet
/// with the ImageNet stem on `hw` x `hw` images (torchvision's modules, ReLUs in place): the
/// input (the stem conv's weight gradient), the stem conv's output (its batch norm's input) and
/// ReLU output (the max pool's input), the pool's output; in each block the first conv's
/// output, its ReLU's output (the second conv's input), the second conv's output and the
/// block's output, and the downsampling conv's output where there is one. Not counted, so
/// that the budget stays below PyTorch's: the max pool's indices, batch-norm statistics, the
/// head's small tensors.
fn basic_activations(config: &ResNetConfig, hw: usize) -> usize {
    let mut s = hw.div_ceil(2);
    let mut floats = 3 * hw * hw + 2 * config.widths[0] * s * s;
    s = s.div_ceil(2);
    floats += config.widths[0] * s * s;
    let mut c_in = config.widths[0];
    for (stage, (&c, &blocks)) in config.widths.iter().zip(&config.layers).enumerate() {
        if stage > 0 {
            s = s.div_ceil(2);
        }
        floats += blocks * 4 * c * s * s;
        if stage > 0 || c != c_in {
            floats += c * s * s;
        }
        c_in = c;
    }
    floats
}

#[test]
fn a_training_step_keeps_each_activation_once() {
    // ResNet-18's layout, narrowed so that activations outweigh the parameters.
    let gpu = new_gpu();
    // What PyTorch keeps: on a CPU adapter's plan the convolutions would also keep x as their
    // GEMMs laid it out for the weight gradient, by default (Gpu::set_conv_keep_laid_out: more
    // memory for speed; tests/conv.rs checks what they keep).
    gpu.set_conv_keep_laid_out(false);
    let (n, hw) = (8, 96);
    let config = ResNetConfig::resnet18(10).with_widths(vec![8, 16, 32, 64]);
    let activations = 4 * n * basic_activations(&config, hw);
    let mut net = ResNet::new(&gpu, config, &mut Rng::new(5)).unwrap();
    let params = 4 * net.num_parameters();
    let x = Tensor::from_slice(&gpu, &[n, 3, hw, hw], &random_vec(n * 3 * hw * hw, 6)).unwrap();
    let labels = Tensor::from_u32(&gpu, &[n], &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    for step in 0..2 {
        gpu.synchronize().unwrap();
        gpu.trim_pool();
        gpu.reset_peak_memory();
        let s = gpu.pool_stats();
        let before = s.bytes_allocated - s.bytes_cached;
        let tape = Tape::new();
        let (logits, _) = net.forward_train(&tape, &x, |_| true).unwrap();
        let loss = logits.cross_entropy(&labels, 0.0).unwrap();
        let forward = gpu.pool_stats().peak_live_bytes - before;
        let grads = tape.backward(&loss).unwrap();
        drop(grads);
        loss.tensor().to_vec().unwrap();
        let step_growth = gpu.pool_stats().peak_live_bytes - before;
        let what = format!(
            "step {step}: activations {activations} B as PyTorch keeps them, parameters \
             {params} B; the forward's tensors and workspace took {forward} B, the whole step \
             {step_growth} B"
        );
        eprintln!("{what}");
        // Each activation kept once, as PyTorch keeps it or fused away (lavapipe: 0.79-0.82 of
        // PyTorch's, the stem's ReLU output fused away): keeping the batch norms' outputs as
        // well would take about 1.2.
        assert!(forward as f64 <= 0.9 * activations as f64, "{what}");
        // The backward adds the parameters' gradients and a few activation-sized gradients at a
        // time, freeing the activations as it goes (lavapipe: 0.83-0.85 of the activations
        // beside the gradients).
        assert!(
            step_growth as f64 <= params as f64 + 0.95 * activations as f64,
            "{what}"
        );
    }
}

#[test]
fn residual_joins_sum_their_gradients_in_the_convs() {
    // A device of its own: profiling is per device.
    let gpu = new_gpu();
    assert!(
        gpu.profiling_supported(),
        "{}: timestamp queries",
        gpu.info()
    );
    // Basic blocks with and without a downsampling shortcut, and bottlenecks, 32 channels or
    // more (narrower convs run kernels of their own on CPU adapters, then axpy). At each join
    // the conv replayed second (the block's first conv, or the downsampling one) adds its input
    // gradient to the other's as it writes it: the backward runs no elementwise add.
    let configs = [
        ResNetConfig::resnet18(5)
            .with_layers(vec![2, 2])
            .with_widths(vec![32, 64]),
        ResNetConfig::resnet50(5)
            .with_layers(vec![2, 1])
            .with_widths(vec![32, 32]),
    ];
    let x = Tensor::from_slice(&gpu, &[2, 3, 8, 8], &random_vec(2 * 3 * 64, 31)).unwrap();
    let labels = Tensor::from_u32(&gpu, &[2], &[1, 4]).unwrap();
    for config in configs {
        let config = config.with_stem(Stem::Cifar);
        let mut net = ResNet::new(&gpu, config.clone(), &mut Rng::new(3)).unwrap();
        let tape = Tape::new();
        let (logits, _) = net.forward_train(&tape, &x, |_| true).unwrap();
        let loss = logits.cross_entropy(&labels, 0.0).unwrap();
        gpu.start_profiling().unwrap();
        tape.backward(&loss).unwrap();
        let kernels = gpu.finish_profiling().unwrap();
        let adds: Vec<&str> = kernels
            .iter()
            .filter(|k| matches!(k.entry, "axpy" | "axpy4" | "add" | "add4"))
            .map(|k| k.entry)
            .collect();
        assert!(adds.is_empty(), "{config:?}: the backward ran {adds:?}");
    }
}
