//! Optimizers against PyTorch's SGD step on the tiny ResNets and against the CPU reference;
//! schedules; gradient clipping; state save/load.

mod common;
use common::*;
use resnet_wgpu::optim::{
    AdamW, Optimizer, ParamUpdate, Schedule, Sgd, clip_grad_norm, clip_grad_norm_with,
};
use resnet_wgpu::{PlanFor, Tensor, reference};

fn golden_sgd_step(file: &str) {
    let gpu = gpu();
    let g = Golden::open(file);
    let mut names: Vec<String> = g
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("params.").map(str::to_string))
        .filter(|n| g.has(&format!("grads.{n}")))
        .collect();
    names.sort();
    assert!(
        names.len() > 10,
        "{file}: only {} parameters with gradients",
        names.len()
    );
    let params: Vec<Tensor> = names
        .iter()
        .map(|n| g.tensor(&gpu, &format!("params.{n}")))
        .collect();
    let grads: Vec<Tensor> = names
        .iter()
        .map(|n| g.tensor(&gpu, &format!("grads.{n}")))
        .collect();
    let updates: Vec<ParamUpdate> = params
        .iter()
        .zip(&grads)
        .enumerate()
        .map(|(slot, (param, grad))| ParamUpdate {
            slot,
            param,
            grad,
            lr: 0.1,
        })
        .collect();
    let mut sgd = Sgd::new(0.9, false, 5e-4);
    sgd.step(&updates).unwrap();
    assert_eq!(sgd.steps(), 1);
    for (n, p) in names.iter().zip(&params) {
        assert_close(
            &p.to_vec().unwrap(),
            &g.f32(&format!("after_step.{n}")),
            1e-5,
            1e-6,
            &format!("{file} {n}"),
        );
    }
}

#[test]
fn sgd_step_matches_golden_tiny_basic() {
    golden_sgd_step("tiny_basic.safetensors");
}

#[test]
fn sgd_step_matches_golden_tiny_bottleneck() {
    golden_sgd_step("tiny_bottleneck.safetensors");
}

#[test]
fn sgd_step_matches_golden_tiny_cifar_basic() {
    golden_sgd_step("tiny_cifar_basic.safetensors");
}

/// Shapes of a small "model": odd sizes, one larger than a 2-D grid would need... kept small.
const SHAPES: [&[usize]; 4] = [&[7], &[3, 5], &[1], &[16, 3, 3, 3]];

struct Model {
    params: Vec<Tensor>,
    host: Vec<Vec<f32>>,
}

fn model(seed: u64) -> Model {
    let gpu = gpu();
    let host: Vec<Vec<f32>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| random_vec(s.iter().product(), seed + i as u64))
        .collect();
    let params = SHAPES
        .iter()
        .zip(&host)
        .map(|(s, h)| Tensor::from_slice(&gpu, s, h).unwrap())
        .collect();
    Model { params, host }
}

fn grads(step: u64) -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| random_vec(s.iter().product(), 1000 * step + i as u64))
        .collect()
}

fn lr(slot: usize, step: u64) -> f32 {
    0.05 + 0.01 * slot as f32 + 0.02 * step as f32
}

fn gpu_step(opt: &mut dyn Optimizer, m: &Model, step: u64) {
    let gpu = gpu();
    let g: Vec<Tensor> = SHAPES
        .iter()
        .zip(grads(step))
        .map(|(s, h)| Tensor::from_slice(&gpu, s, &h).unwrap())
        .collect();
    let updates: Vec<ParamUpdate> = m
        .params
        .iter()
        .zip(&g)
        .enumerate()
        .map(|(slot, (param, grad))| ParamUpdate {
            slot,
            param,
            grad,
            lr: lr(slot, step),
        })
        .collect();
    opt.step(&updates).unwrap();
}

fn compare(m: &Model, host: &[Vec<f32>], what: &str) {
    for (i, (p, h)) in m.params.iter().zip(host).enumerate() {
        assert_close(
            &p.to_vec().unwrap(),
            h,
            1e-5,
            1e-6,
            &format!("{what} slot {i}"),
        );
    }
}

#[test]
fn sgd_variants_match_reference_over_two_steps() {
    for (momentum, nesterov, wd) in [
        (0.9, false, 5e-4),
        (0.9, true, 1e-2),
        (0.0, false, 1e-3),
        (0.5, false, 0.0),
    ] {
        let m = model(3);
        let mut opt = Sgd::new(momentum, nesterov, wd);
        let mut host = m.host.clone();
        let mut bufs: Vec<Option<Vec<f32>>> = vec![None; SHAPES.len()];
        for step in 0..2 {
            gpu_step(&mut opt, &m, step);
            for (slot, g) in grads(step).iter().enumerate() {
                reference::sgd_step(
                    &mut host[slot],
                    g,
                    &mut bufs[slot],
                    lr(slot, step),
                    momentum,
                    nesterov,
                    wd,
                );
            }
            compare(
                &m,
                &host,
                &format!("sgd mu {momentum} nesterov {nesterov} wd {wd} step {step}"),
            );
        }
        assert_eq!(opt.steps(), 2);
    }
}

/// Run three steps of the optimizer `make(grouping)` on `gpu` over tensors of awkward sizes (one
/// element, a ragged 70,001, and around one workgroup's 256), with a learning rate per tensor;
/// the first step leaves every third tensor out, so that later steps mix first and later steps
/// (per-tensor step counts) in one dispatch. Checks the dispatches of each step against
/// `slots` tensors per dispatch, and returns the parameters and the optimizer state.
fn grouped_run(
    gpu: &resnet_wgpu::Gpu,
    make: &dyn Fn() -> Box<dyn Optimizer>,
    slots: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let sizes = [
        1, 255, 256, 257, 70_001, 3, 512, 64, 64, 1000, 17, 9, 4096, 2, 300, 77, 5,
    ];
    let params: Vec<Tensor> = (0..)
        .zip(sizes)
        .map(|(i, n)| Tensor::from_slice(gpu, &[n], &random_vec(n, 2000 + i)).unwrap())
        .collect();
    let mut opt = make();
    for step in 0..3u64 {
        let grads: Vec<Tensor> = (0..)
            .zip(sizes)
            .map(|(i, n)| {
                Tensor::from_slice(gpu, &[n], &random_vec(n, 3000 + 100 * step + i)).unwrap()
            })
            .collect();
        let updates: Vec<ParamUpdate> = (0..)
            .zip(params.iter().zip(&grads))
            .filter(|(slot, _)| step > 0 || slot % 3 != 2)
            .map(|(slot, (param, grad))| ParamUpdate {
                slot,
                param,
                grad,
                lr: lr(slot, step),
            })
            .collect();
        let before = gpu.dispatch_count();
        opt.step(&updates).unwrap();
        let dispatches = gpu.dispatch_count() - before;
        let expected = updates.len().div_ceil(slots) as u64;
        assert_eq!(dispatches, expected, "{slots} per dispatch, step {step}");
    }
    let state = opt
        .state()
        .unwrap()
        .iter()
        .map(|(_, t)| t.to_vec().unwrap())
        .collect();
    let values = params.iter().map(|p| p.to_vec().unwrap()).collect();
    (values, state)
}

/// A device with Metal's limit of 29 storage buffers per stage (wgpu's Metal backend: 31
/// buffers, two of them its own), opened by the application.
fn metal_like_gpu() -> resnet_wgpu::Gpu {
    let (_, device, queue) = application_device(|adapter, d| {
        d.required_limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 29,
            ..adapter.limits()
        };
    });
    resnet_wgpu::Gpu::from_device(device, queue)
}

/// Run `make(grouping)` grouped with `slots` tensors per dispatch and per tensor: lavapipe binds
/// enough storage buffers per stage (the grouped kernels need 24 for SGD's eight slots, 20 for
/// Adam's five), so asked to, it groups, and so does a device with Metal's 29; a device with
/// WebGPU's default limits (8) groups two tensors per dispatch; and a CPU adapter's plan does
/// not group unless asked (it is slower there). All kernels share the arithmetic: the same bits.
fn assert_grouping_keeps_bits(
    what: &str,
    make: &dyn Fn(Option<bool>) -> Box<dyn Optimizer>,
    slots: usize,
) {
    let grouped = new_gpu();
    let webgpu = resnet_wgpu::Gpu::with_options(resnet_wgpu::GpuOptions {
        default_limits: true,
        ..Default::default()
    })
    .expect("a device with default limits");
    let bound = grouped.limits().max_storage_buffers_per_shader_stage;
    assert!(
        bound >= 29,
        "the grouped kernels need 24 storage buffers per stage, and this test a device with \
         Metal's 29, which lavapipe and desktop GPUs exceed; this adapter binds {bound}"
    );
    assert_eq!(webgpu.limits().max_storage_buffers_per_shader_stage, 8);
    let a = grouped_run(&grouped, &|| make(Some(true)), slots);
    let b = grouped_run(&grouped, &|| make(Some(false)), 1);
    let metal = grouped_run(&metal_like_gpu(), &|| make(Some(true)), slots);
    let pairs = grouped_run(&webgpu, &|| make(Some(true)), 2);
    let by_default = match grouped.plan_for() {
        PlanFor::Gpu => slots,
        PlanFor::Cpu => 1,
    };
    let c = grouped_run(&grouped, &|| make(None), by_default);
    for (kind, x, y) in [
        ("parameter", &a.0, &b.0),
        ("state", &a.1, &b.1),
        ("parameter (Metal's limit)", &metal.0, &b.0),
        ("state (Metal's limit)", &metal.1, &b.1),
        ("parameter (two per dispatch)", &pairs.0, &b.0),
        ("state (two per dispatch)", &pairs.1, &b.1),
        ("parameter (by default)", &c.0, &b.0),
    ] {
        assert_eq!(x.len(), y.len(), "{what}: {kind} tensors");
        for (i, (x, y)) in x.iter().zip(y).enumerate() {
            let same =
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same,
                "{what}: {kind} {i} differs between grouped and per-tensor updates"
            );
        }
    }
}

#[test]
fn grouped_sgd_gives_the_per_tensor_bits() {
    // Nesterov momentum with weight decay, eight tensors per dispatch.
    let make = |grouping: Option<bool>| -> Box<dyn Optimizer> {
        let opt = Sgd::new(0.9, true, 5e-4);
        Box::new(match grouping {
            Some(g) => opt.with_grouping(g),
            None => opt,
        })
    };
    assert_grouping_keeps_bits("sgd", &make, 8);
}

#[test]
fn grouped_adam_gives_the_per_tensor_bits() {
    // AdamW (decoupled decay) and Adam (coupled), five tensors per dispatch, each tensor with
    // its own step count and so its own bias corrections.
    for decoupled in [true, false] {
        let make = move |grouping: Option<bool>| -> Box<dyn Optimizer> {
            let opt = if decoupled {
                AdamW::adamw((0.9, 0.999), 1e-8, 0.05)
            } else {
                AdamW::adam((0.8, 0.99), 1e-6, 0.01)
            };
            Box::new(match grouping {
                Some(g) => opt.with_grouping(g),
                None => opt,
            })
        };
        assert_grouping_keeps_bits(if decoupled { "adamw" } else { "adam" }, &make, 5);
    }
}

#[test]
fn grouped_sgd_splits_where_a_gradient_is_another_parameter() {
    // wgpu rejects one buffer bound read-only and read-write in one dispatch: an update whose
    // parameter is an earlier update's gradient starts a new dispatch, after the earlier one
    // read it, as per-tensor updates in order would.
    let gpu = new_gpu();
    let (a0, x0, y0) = (random_vec(300, 1), random_vec(300, 2), random_vec(300, 3));
    let a = Tensor::from_slice(&gpu, &[300], &a0).unwrap();
    let x = Tensor::from_slice(&gpu, &[300], &x0).unwrap();
    let y = Tensor::from_slice(&gpu, &[300], &y0).unwrap();
    let mut opt = Sgd::new(0.9, false, 0.0).with_grouping(true);
    let updates = [
        ParamUpdate {
            slot: 0,
            param: &a,
            grad: &x,
            lr: 0.1,
        },
        ParamUpdate {
            slot: 1,
            param: &x,
            grad: &y,
            lr: 0.2,
        },
    ];
    let before = gpu.dispatch_count();
    opt.step(&updates).unwrap();
    assert_eq!(gpu.dispatch_count() - before, 2);
    let (mut ha, mut hx) = (a0.clone(), x0.clone());
    let (mut ba, mut bx) = (None, None);
    reference::sgd_step(&mut ha, &x0, &mut ba, 0.1, 0.9, false, 0.0);
    reference::sgd_step(&mut hx, &y0, &mut bx, 0.2, 0.9, false, 0.0);
    assert_close(
        &a.to_vec().unwrap(),
        &ha,
        1e-6,
        1e-7,
        "a (read x before it moved)",
    );
    assert_close(&x.to_vec().unwrap(), &hx, 1e-6, 1e-7, "x");
}

#[test]
fn adam_and_adamw_match_reference_over_two_steps() {
    for decoupled in [false, true] {
        let (betas, eps, wd) = ((0.9, 0.999), 1e-8, 1e-2);
        let m = model(5);
        let mut opt = if decoupled {
            AdamW::adamw(betas, eps, wd)
        } else {
            AdamW::adam(betas, eps, wd)
        };
        assert_eq!(opt.decoupled, decoupled);
        let mut host = m.host.clone();
        let mut mom: Vec<Vec<f32>> = host.iter().map(|h| vec![0.0; h.len()]).collect();
        let mut vel = mom.clone();
        for step in 0..2 {
            gpu_step(&mut opt, &m, step);
            for (slot, g) in grads(step).iter().enumerate() {
                reference::adam_step(
                    &mut host[slot],
                    g,
                    &mut mom[slot],
                    &mut vel[slot],
                    step + 1,
                    lr(slot, step),
                    betas,
                    eps,
                    wd,
                    decoupled,
                );
            }
            compare(
                &m,
                &host,
                &format!("adam decoupled {decoupled} step {step}"),
            );
        }
    }
}

#[test]
fn adamw_first_step_moves_each_weight_by_about_lr() {
    // With bias correction, |Δp| ≈ lr on the first step whatever the gradient's scale.
    let gpu = gpu();
    let p = Tensor::from_slice(&gpu, &[3], &[1.0, 2.0, 3.0]).unwrap();
    let g = Tensor::from_slice(&gpu, &[3], &[1e-3, -5.0, 100.0]).unwrap();
    let mut opt = AdamW::adamw((0.9, 0.999), 1e-8, 0.0);
    opt.step(&[ParamUpdate {
        slot: 0,
        param: &p,
        grad: &g,
        lr: 0.01,
    }])
    .unwrap();
    assert_close(
        &p.to_vec().unwrap(),
        &[0.99, 2.01, 2.99],
        1e-5,
        1e-5,
        "adamw first step",
    );
}

fn round_trip(mut a: Box<dyn Optimizer>, mut b: Box<dyn Optimizer>, what: &str) {
    let ma = model(11);
    for step in 0..2 {
        gpu_step(a.as_mut(), &ma, step);
    }
    let saved = a.state().unwrap();
    assert!(
        saved.iter().any(|(n, _)| n == "step"),
        "{what}: no step in {:?}",
        saved.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    // b continues from a copy of a's parameters and a's state.
    let mb = Model {
        params: ma.params.iter().map(|p| p.deep_clone().unwrap()).collect(),
        host: vec![],
    };
    // b's updates write its state in place, so it takes copies of tensors others hold.
    let held: Vec<Vec<f32>> = saved.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    b.load_state(saved.clone()).unwrap();
    assert_eq!(b.steps(), 2, "{what}");
    for step in 2..4 {
        gpu_step(a.as_mut(), &ma, step);
        gpu_step(b.as_mut(), &mb, step);
    }
    for (pa, pb) in ma.params.iter().zip(&mb.params) {
        assert_eq!(
            pa.to_vec().unwrap(),
            pb.to_vec().unwrap(),
            "{what}: diverged after load"
        );
    }
    assert_eq!(a.steps(), 4);
    let after: Vec<Vec<f32>> = saved.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
    assert_eq!(held, after, "{what}: the loaded tensors changed");
}

#[test]
fn state_save_load_round_trip_gives_identical_steps() {
    round_trip(
        Box::new(Sgd::new(0.9, true, 1e-4)),
        Box::new(Sgd::new(0.9, true, 1e-4)),
        "sgd",
    );
    round_trip(
        Box::new(Sgd::new(0.0, false, 1e-4)),
        Box::new(Sgd::new(0.0, false, 1e-4)),
        "plain sgd",
    );
    round_trip(
        Box::new(AdamW::adamw((0.9, 0.99), 1e-8, 0.05)),
        Box::new(AdamW::adamw((0.9, 0.99), 1e-8, 0.05)),
        "adamw",
    );
}

#[test]
fn saved_state_is_a_snapshot() {
    // The updates write the state in place; what state() returned stays as it was, grouped or
    // not.
    let optimizers: [(&str, Box<dyn Optimizer>); 4] = [
        (
            "sgd",
            Box::new(Sgd::new(0.9, false, 0.0).with_grouping(false)),
        ),
        (
            "grouped sgd",
            Box::new(Sgd::new(0.9, false, 0.0).with_grouping(true)),
        ),
        (
            "adam",
            Box::new(AdamW::adam((0.9, 0.99), 1e-8, 0.0).with_grouping(false)),
        ),
        (
            "grouped adamw",
            Box::new(AdamW::adamw((0.9, 0.99), 1e-8, 0.1).with_grouping(true)),
        ),
    ];
    for (what, mut opt) in optimizers {
        let m = model(21);
        gpu_step(opt.as_mut(), &m, 0);
        let saved = opt.state().unwrap();
        let before: Vec<Vec<f32>> = saved.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
        gpu_step(opt.as_mut(), &m, 1);
        let after: Vec<Vec<f32>> = saved.iter().map(|(_, t)| t.to_vec().unwrap()).collect();
        assert_eq!(before, after, "{what}");
        let now: Vec<Vec<f32>> = opt
            .state()
            .unwrap()
            .iter()
            .map(|(_, t)| t.to_vec().unwrap())
            .collect();
        assert_ne!(before, now, "{what}: the second step changed no state");
    }
}

#[test]
fn optimizer_errors() {
    let gpu = gpu();
    let p = Tensor::zeros(&gpu, &[3]).unwrap();
    let g = Tensor::zeros(&gpu, &[4]).unwrap();
    let mut sgd = Sgd::new(0.9, false, 0.0);
    let err = sgd
        .step(&[ParamUpdate {
            slot: 0,
            param: &p,
            grad: &g,
            lr: 0.1,
        }])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sgd:") && err.contains("[4]") && err.contains("[3]"),
        "{err}"
    );
    let g3 = Tensor::zeros(&gpu, &[3]).unwrap();
    let twice = [
        ParamUpdate {
            slot: 1,
            param: &p,
            grad: &g3,
            lr: 0.1,
        },
        ParamUpdate {
            slot: 1,
            param: &g,
            grad: &g,
            lr: 0.1,
        },
    ];
    assert!(sgd.step(&twice).is_err());
    assert_eq!(sgd.steps(), 0);
    // State of another shape for a slot is refused.
    sgd.step(&[ParamUpdate {
        slot: 0,
        param: &p,
        grad: &g3,
        lr: 0.1,
    }])
    .unwrap();
    let g4 = Tensor::zeros(&gpu, &[4]).unwrap();
    let err = sgd
        .step(&[ParamUpdate {
            slot: 0,
            param: &g,
            grad: &g4,
            lr: 0.1,
        }])
        .unwrap_err()
        .to_string();
    assert!(err.contains("momentum.0"), "{err}");
    assert!(sgd.load_state(vec![("bogus".into(), p.clone())]).is_err());
    assert!(
        AdamW::adam((0.9, 0.999), 1e-8, 0.0)
            .load_state(vec![("momentum.0".into(), p.clone())])
            .is_err()
    );
}

#[test]
fn schedules_at_known_points() {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 + 1e-5 * b.abs();
    assert_eq!(Schedule::Constant.lr_at(0.1, 12345), 0.1);
    let s = Schedule::Step {
        step_size: 30,
        gamma: 0.1,
    };
    assert!(close(s.lr_at(1.0, 0), 1.0) && close(s.lr_at(1.0, 29), 1.0));
    assert!(close(s.lr_at(1.0, 30), 0.1) && close(s.lr_at(1.0, 65), 0.01));
    let c = Schedule::Cosine {
        warmup: 10,
        total: 110,
        min_lr_frac: 0.01,
    };
    assert!(close(c.lr_at(0.5, 0), 0.05), "{}", c.lr_at(0.5, 0));
    assert!(close(c.lr_at(0.5, 9), 0.5) && close(c.lr_at(0.5, 10), 0.5));
    assert!(
        close(c.lr_at(0.5, 60), 0.5 * (0.01 + 0.99 * 0.5)),
        "{}",
        c.lr_at(0.5, 60)
    );
    assert!(close(c.lr_at(0.5, 110), 0.005) && close(c.lr_at(0.5, 500), 0.005));
    let no_warmup = Schedule::Cosine {
        warmup: 0,
        total: 100,
        min_lr_frac: 0.0,
    };
    assert!(close(no_warmup.lr_at(1.0, 0), 1.0) && no_warmup.lr_at(1.0, 100).abs() < 1e-7);
    // OneCycleLR(max_lr=1, total_steps=100, pct_start=0.25, div 25, final div 1e4), values from
    // PyTorch's formulas: phase ends at 24 and 99.
    let o = Schedule::OneCycle {
        total: 100,
        pct_start: 0.25,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    assert!(close(o.lr_at(1.0, 0), 0.04));
    assert!(close(o.lr_at(1.0, 24), 1.0));
    let mid = 0.04 + (1.0 - 0.04) / 2.0 * ((std::f64::consts::PI * 12.0 / 24.0).cos() + 1.0);
    assert!(close(o.lr_at(1.0, 12), mid as f32), "{}", o.lr_at(1.0, 12));
    let down = 4e-6 + (1.0 - 4e-6) / 2.0 * ((std::f64::consts::PI * 50.0 / 75.0).cos() + 1.0);
    assert!(close(o.lr_at(1.0, 74), down as f32), "{}", o.lr_at(1.0, 74));
    assert!(close(o.lr_at(1.0, 99), 4e-6) && close(o.lr_at(1.0, 150), 4e-6));
    // Runs too short for a rise (4 steps at 0.25: the first phase ends at step 0) start at the
    // peak and anneal from there, finite throughout (0 / 0 gave a NaN learning rate, which
    // `train --epochs 1` on 512 images at batch 128 hit).
    let short = Schedule::OneCycle {
        total: 4,
        pct_start: 0.25,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    let lrs: Vec<f32> = (0..5).map(|s| short.lr_at(1.0, s)).collect();
    assert!(lrs.iter().all(|lr| lr.is_finite()), "{lrs:?}");
    assert!(close(lrs[0], 1.0) && close(lrs[3], 4e-6), "{lrs:?}");
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
}

#[test]
fn clip_grad_norm_matches_reference() {
    let gpu = gpu();
    let sizes = [1usize, 300, 70_000, 7];
    for (max_norm, scale) in [(1.0f32, 1.0f32), (1e3, 1.0), (0.5, 1e-3)] {
        let mut host: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                random_vec(n, 70 + i as u64)
                    .iter()
                    .map(|v| v * scale)
                    .collect()
            })
            .collect();
        let tensors: Vec<Tensor> = host
            .iter()
            .map(|h| Tensor::from_slice(&gpu, &[h.len()], h).unwrap())
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let norm = clip_grad_norm(&refs, max_norm).unwrap();
        let expected = reference::clip_grad_norm(&mut host, max_norm);
        let what = format!("max_norm {max_norm} scale {scale}");
        assert_close(
            &norm.to_vec().unwrap(),
            &[expected],
            1e-5,
            1e-7,
            &format!("{what} norm"),
        );
        for (t, h) in tensors.iter().zip(&host) {
            assert_close(&t.to_vec().unwrap(), h, 1e-5, 1e-7, &what);
        }
    }
    assert!(clip_grad_norm(&[], 1.0).is_err());
    let t = Tensor::zeros(&gpu, &[2]).unwrap();
    assert!(clip_grad_norm_with(&[&t, &t], 1.0, Some(true)).is_err());
    assert!(clip_grad_norm(&[&t], 0.0).is_err());
    assert!(clip_grad_norm(&[&t, &t], 1.0).is_err());
}

#[test]
fn grouped_clipping_gives_the_per_tensor_bits() {
    // Seven gradients per dispatch (asked for: a CPU adapter's plan, lavapipe's, does not group
    // by default) against one per gradient: the same partial sums in the same places, so the
    // same norm and the same scaled bits. Sizes: 17 gradients (three groups, the last partial),
    // from one element to past the 256 workgroups one gradient's sum may use, clipped and not.
    // A device of its own: the dispatch counts must not include other tests'.
    let gpu = new_gpu();
    let sizes = [
        1, 255, 256, 257, 70_001, 3, 512, 64, 64, 1000, 17, 9, 4096, 2, 300, 77, 5,
    ];
    for max_norm in [1.0f32, 1e6] {
        let run = |grouping: Option<bool>| {
            let tensors: Vec<Tensor> = (0..)
                .zip(sizes)
                .map(|(i, n)| Tensor::from_slice(&gpu, &[n], &random_vec(n, 900 + i)).unwrap())
                .collect();
            let refs: Vec<&Tensor> = tensors.iter().collect();
            let before = gpu.dispatch_count();
            let norm = clip_grad_norm_with(&refs, max_norm, grouping).unwrap();
            let dispatches = gpu.dispatch_count() - before;
            let values: Vec<Vec<f32>> = tensors.iter().map(|t| t.to_vec().unwrap()).collect();
            (norm.to_vec().unwrap(), values, dispatches)
        };
        let grouped = run(Some(true));
        let single = run(Some(false));
        let default = run(None);
        let groups = sizes.len().div_ceil(7) as u64;
        assert_eq!(grouped.2, 2 * groups + 1, "grouped dispatches");
        assert_eq!(
            single.2,
            2 * sizes.len() as u64 + 1,
            "per-gradient dispatches"
        );
        let by_default = match gpu.plan_for() {
            PlanFor::Gpu => grouped.2,
            PlanFor::Cpu => single.2,
        };
        assert_eq!(
            default.2, by_default,
            "a CPU adapter's plan groups only when asked"
        );
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        assert!(same(&grouped.0, &single.0), "norm, max_norm {max_norm}");
        for (i, (a, b)) in grouped.1.iter().zip(&single.1).enumerate() {
            assert!(same(a, b), "gradient {i} differs, max_norm {max_norm}");
        }
    }
}
