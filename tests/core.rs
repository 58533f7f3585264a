//! Device, tensors, buffer pool, elementwise ops, reductions and the tape.

mod common;
use common::*;
use resnet_wgpu::gpu::gpu_span_nanos;
use resnet_wgpu::{ConvAlgo, Gpu, Tape, Tensor, ops, reference};

#[test]
fn adapter_is_reported() {
    let gpu = gpu();
    assert!(!gpu.info().name.is_empty());
    assert!(gpu.limits().max_compute_workgroups_per_dimension >= 65_535);
    println!("adapter: {}", gpu.info());
}

#[test]
fn upload_read_round_trip_and_shape_errors() {
    let gpu = gpu();
    let data = random_vec(1000, 1);
    let t = Tensor::from_slice(&gpu, &[10, 100], &data).unwrap();
    assert_eq!(t.to_vec().unwrap(), data);
    let err = Tensor::from_slice(&gpu, &[3, 3], &data)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 3]") && err.contains("1000"), "{err}");
    assert!(
        Tensor::zeros(&gpu, &[0, 4])
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let labels = Tensor::from_u32(&gpu, &[3], &[1, 2, 3]).unwrap();
    assert_eq!(labels.to_vec_u32().unwrap(), vec![1, 2, 3]);
    assert!(labels.to_vec().is_err());
}

/// A ReLU keeps a NaN, as PyTorch's does (WGSL's max(NaN, 0) is up to the implementation, and
/// GPUs return 0, which would hide a diverging run behind finite losses): the elementwise ReLUs
/// (one value and four per thread), the batch norm's, the max pool's, and the fused inference
/// conv's, direct and through Winograd.
#[test]
fn relu_keeps_nans() {
    let gpu = gpu();
    let nan_at = |v: &[f32]| v.iter().map(|v| v.is_nan()).collect::<Vec<_>>();
    for n in [7usize, 8] {
        let mut a = random_vec(n, 30);
        a[1] = f32::NAN;
        a[4] = -f32::NAN;
        let ta = Tensor::from_slice(&gpu, &[n], &a).unwrap();
        let y = ops::relu(&ta).unwrap().to_vec().unwrap();
        assert_eq!(nan_at(&y), nan_at(&a), "relu {n}");
        assert_eq!(
            nan_at(&reference::relu(&a)),
            nan_at(&a),
            "reference relu {n}"
        );
        let zeros = Tensor::zeros(&gpu, &[n]).unwrap();
        let y = ops::add_relu(&ta, &zeros).unwrap().to_vec().unwrap();
        assert_eq!(nan_at(&y), nan_at(&a), "add_relu {n}");
    }
    // Batch norm with its ReLU and the max pool's, on planes of 9 and 16 values.
    for hw in [3usize, 4] {
        let shape = [1, 2, hw, hw];
        let mut x = random_vec(2 * hw * hw, 31);
        x[hw + 1] = f32::NAN;
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let one = Tensor::full(&gpu, &[2], 1.0).unwrap();
        let zero = Tensor::zeros(&gpu, &[2]).unwrap();
        let y = ops::batch_norm_eval(&tx, &one, &zero, &zero, &one, 0.0, true).unwrap();
        assert_eq!(
            nan_at(&y.to_vec().unwrap()),
            nan_at(&x),
            "batch norm {hw}x{hw}"
        );
        let (y, _) = ops::max_pool2d_relu(&tx, 3, 2, 1).unwrap();
        let (ry, _) = reference::max_pool2d(&reference::relu(&x), shape, 3, 2, 1);
        assert!(ry.iter().any(|v| v.is_nan()));
        assert_eq!(
            nan_at(&y.to_vec().unwrap()),
            nan_at(&ry),
            "max pool {hw}x{hw}"
        );
    }
    // The fused conv + batch norm + ReLU with channel 1's running mean a NaN: that channel
    // is NaN everywhere and no other is. On a device of its own, whose conv algorithm is set.
    let gpu = new_gpu();
    let (x, w) = ([2, 16, 6, 6], [24, 16, 3, 3]);
    let tx = Tensor::from_slice(&gpu, &x, &random_vec(x.iter().product(), 32)).unwrap();
    let tw = Tensor::from_slice(&gpu, &w, &random_vec(w.iter().product(), 33)).unwrap();
    let mut mean = vec![0.0; 24];
    mean[1] = f32::NAN;
    let mean = Tensor::from_slice(&gpu, &[24], &mean).unwrap();
    let (one, zero) = (
        Tensor::full(&gpu, &[24], 1.0).unwrap(),
        Tensor::zeros(&gpu, &[24]).unwrap(),
    );
    let bn = ops::EvalBatchNorm {
        gamma: &one,
        beta: &zero,
        running_mean: &mean,
        running_var: &one,
        eps: 1e-5,
    };
    for algo in [ConvAlgo::Direct, ConvAlgo::Winograd] {
        gpu.set_conv_algo(algo);
        assert_eq!(
            ops::conv2d_winograd(&gpu, x, w, 1, 1).unwrap()[0],
            algo == ConvAlgo::Winograd
        );
        let y = ops::conv2d_bn_eval(&tx, &tw, 1, 1, &bn, None, true)
            .unwrap()
            .to_vec()
            .unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(v.is_nan(), (i / 36) % 24 == 1, "{algo:?}: value {i}");
        }
    }
}

#[test]
fn elementwise_matches_reference() {
    let gpu = gpu();
    for (i, n) in [1usize, 4, 255, 256, 1001, 1002, 70_000]
        .into_iter()
        .enumerate()
    {
        let a = random_vec(n, 10 + i as u64);
        let b = random_vec(n, 20 + i as u64);
        let ta = Tensor::from_slice(&gpu, &[n], &a).unwrap();
        let tb = Tensor::from_slice(&gpu, &[n], &b).unwrap();
        assert_eq!(
            ops::relu(&ta).unwrap().to_vec().unwrap(),
            reference::relu(&a)
        );
        assert_eq!(
            ops::add(&ta, &tb).unwrap().to_vec().unwrap(),
            reference::add(&a, &b)
        );
        let y = reference::relu(&a);
        let ty = Tensor::from_slice(&gpu, &[n], &y).unwrap();
        assert_eq!(
            ops::relu_backward(&ty, &tb).unwrap().to_vec().unwrap(),
            reference::relu_backward(&y, &b)
        );
        let s = ops::sum(&ta).unwrap().to_vec().unwrap()[0];
        assert_close(&[s], &[reference::sum(&a)], 1e-4, 1e-3, "sum");
        // The rest of the elementwise ops; sizes that are multiples of 4 take the kernels with
        // four elements per thread, the others one (the same arithmetic).
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(
            ops::add_relu(&ta, &tb).unwrap().to_vec().unwrap(),
            reference::relu(&sum),
            "add_relu {n}"
        );
        let scaled: Vec<f32> = a.iter().map(|x| -0.5 * x).collect();
        assert_eq!(ops::scale(&ta, -0.5).unwrap().to_vec().unwrap(), scaled);
        let g = Tensor::from_slice(&gpu, &[n], &b).unwrap();
        let masked = ops::relu_backward_consume(&ty, g).unwrap();
        assert_eq!(masked.to_vec().unwrap(), reference::relu_backward(&y, &b));
        let acc = Tensor::from_slice(&gpu, &[n], &b).unwrap();
        ops::axpy(&acc, 0.25, &ta).unwrap();
        let expected: Vec<f32> = b.iter().zip(&a).map(|(y, x)| y + 0.25 * x).collect();
        assert_close(&acc.to_vec().unwrap(), &expected, 1e-6, 1e-7, "axpy");
        ops::fill(&acc, 3.5).unwrap();
        assert!(acc.to_vec().unwrap().iter().all(|&v| v == 3.5), "fill {n}");
    }
    let err = ops::add(
        &Tensor::zeros(&gpu, &[2]).unwrap(),
        &Tensor::zeros(&gpu, &[3]).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("add:"), "{err}");
}

#[test]
fn large_grid_splits_over_two_dimensions() {
    // 65,535 * 256 < 17M elements: this needs a 2-D grid.
    let gpu = gpu();
    let n = 65_536 * 256 + 3;
    let t = Tensor::full(&gpu, &[n], 2.0).unwrap();
    let y = ops::scale(&t, 0.5).unwrap();
    let v = y.to_vec().unwrap();
    assert!(v.iter().all(|&x| x == 1.0));
    let s = ops::sum(&y).unwrap().to_vec().unwrap()[0];
    assert_eq!(s, n as f32);
}

#[test]
fn channel_sums_match_reference() {
    let gpu = gpu();
    let (n, c, hw) = (3, 5, 7 * 9);
    let x = random_vec(n * c * hw, 3);
    let t = Tensor::from_slice(&gpu, &[n, c, 7, 9], &x).unwrap();
    let got = ops::sum_channels(&t).unwrap().to_vec().unwrap();
    assert_close(
        &got,
        &reference::sum_channels(&x, n, c, hw),
        1e-5,
        1e-5,
        "sum_channels",
    );
}

#[test]
fn tape_accumulates_where_a_value_feeds_two_consumers() {
    let gpu = gpu();
    let tape = Tape::new();
    let x = tape.leaf(Tensor::from_slice(&gpu, &[4], &[1.0, -2.0, 3.0, -4.0]).unwrap());
    // y = sum(relu(x) + x) => dy/dx = [1 if x > 0] + 1
    let y = x.relu().unwrap().add(&x).unwrap().sum().unwrap();
    assert_eq!(y.tensor().to_vec().unwrap(), vec![1.0 + 3.0 - 2.0]);
    let grads = tape.backward(&y).unwrap();
    assert_eq!(
        grads.get(&x).unwrap().to_vec().unwrap(),
        vec![2.0, 1.0, 2.0, 1.0]
    );
}

#[test]
fn backward_writes_over_unshared_gradients() {
    let gpu = new_gpu();
    let n = 1 << 18; // 1 MiB per tensor
    let xs = random_vec(n, 11);
    let seed_values = random_vec(n, 12);
    let tape = Tape::new();
    let x = tape.leaf(Tensor::from_slice(&gpu, &[n], &xs).unwrap());
    let y = x.relu().unwrap().relu().unwrap().relu().unwrap();
    let seed = Tensor::from_slice(&gpu, &[n], &seed_values).unwrap();
    gpu.synchronize().unwrap();
    gpu.reset_peak_memory();
    let stats = gpu.pool_stats();
    let live = stats.bytes_allocated - stats.bytes_cached;
    let grads = tape.backward_with(&y, seed).unwrap();
    // Each ReLU's gradient replaces its upstream one, so the replay needs no tensor beyond those
    // already live (only a uniform buffer for the dispatches' parameters, if any).
    let extra = gpu.pool_stats().peak_live_bytes - live;
    assert!(extra < 256 << 10, "the backward took {extra} more bytes");
    let want: Vec<f32> = xs
        .iter()
        .zip(&seed_values)
        .map(|(&x, &g)| if x > 0.0 { g } else { 0.0 })
        .collect();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), want);
}

#[test]
fn peak_live_memory_counts_tensors_alive_together() {
    let gpu = new_gpu();
    gpu.synchronize().unwrap();
    gpu.trim_pool();
    gpu.reset_peak_memory();
    let base = gpu.pool_stats();
    // 4 MiB freed before 2 MiB are taken: the pool holds 6 MiB, at most 4 were in use.
    drop(Tensor::zeros(&gpu, &[1 << 20]).unwrap());
    let small = Tensor::zeros(&gpu, &[1 << 19]).unwrap();
    let s = gpu.pool_stats();
    assert_eq!(s.peak_bytes - base.peak_bytes, 6 << 20, "{s:?}");
    assert_eq!(s.peak_live_bytes - base.peak_live_bytes, 4 << 20, "{s:?}");
    drop(small);
}

#[test]
fn dispatches_copies_and_clears_keep_their_recorded_order() {
    // Consecutive dispatches share a compute pass; a copy or a clear ends it. Nothing is
    // submitted until the reads at the end.
    let gpu = gpu();
    let a = Tensor::from_slice(&gpu, &[3], &[1.0, -2.0, 3.0]).unwrap();
    let b = ops::relu(&a).unwrap();
    let copy = b.deep_clone().unwrap();
    ops::fill(&b, 7.0).unwrap();
    let z = Tensor::zeros(&gpu, &[3]).unwrap();
    ops::axpy(&z, 2.0, &b).unwrap();
    ops::axpy(&z, 1.0, &copy).unwrap();
    assert_eq!(copy.to_vec().unwrap(), vec![1.0, 0.0, 3.0]);
    assert_eq!(b.to_vec().unwrap(), vec![7.0; 3]);
    assert_eq!(z.to_vec().unwrap(), vec![15.0, 14.0, 17.0]);
}

#[test]
fn inference_records_nothing() {
    let gpu = gpu();
    let x = resnet_wgpu::Var::constant(Tensor::from_slice(&gpu, &[2], &[1.0, -1.0]).unwrap());
    let y = x.relu().unwrap().sum().unwrap();
    assert!(!y.requires_grad());
    assert!(y.tape().is_none());
}

#[test]
fn pool_stops_allocating_in_a_loop() {
    let gpu: Gpu = new_gpu();
    let step = |gpu: &Gpu| {
        let tape = Tape::new();
        let x = tape.leaf(Tensor::from_slice(gpu, &[64, 33], &random_vec(64 * 33, 5)).unwrap());
        let loss = x.relu().unwrap().add(&x).unwrap().mean().unwrap();
        let g = tape.backward(&loss).unwrap();
        g.get(&x).unwrap().to_vec().unwrap();
    };
    step(&gpu);
    step(&gpu);
    let after_two = gpu.pool_stats().allocations;
    for _ in 0..5 {
        step(&gpu);
    }
    assert_eq!(
        gpu.pool_stats().allocations,
        after_two,
        "the pool kept allocating"
    );
}

#[test]
fn identical_steps_reuse_their_bind_groups() {
    // A device of its own, counting the bind groups it creates.
    let gpu: Gpu = new_gpu();
    let x = Tensor::from_slice(&gpu, &[64, 33], &random_vec(64 * 33, 5)).unwrap();
    // Six temporaries of one size, freed in another order than taken (as a tape frees a
    // step's activations): the pool must still hand the same buffers to the same dispatches
    // every step, so that each finds its bind group. Last freed, first out, this order
    // assigns them differently for six steps in a row.
    let step = || {
        let a = ops::relu(&x).unwrap();
        let b = ops::scale(&a, 2.0).unwrap();
        let c = ops::add(&a, &b).unwrap();
        let d = ops::add_relu(&c, &a).unwrap();
        let e = ops::scale(&d, 0.5).unwrap();
        let f = ops::add(&e, &b).unwrap();
        drop((c, e, b));
        let out = f.to_vec().unwrap();
        drop((f, a, d));
        out
    };
    let first = step();
    step();
    let created = gpu.bind_groups_created();
    for _ in 0..6 {
        assert_eq!(step(), first);
    }
    assert_eq!(gpu.bind_groups_created(), created, "new bind groups");
}

#[test]
fn params_slots_start_over_without_losing_recorded_work() {
    // More distinct params than the uniform slots hold (4,096), all recorded before one
    // submit: starting the slots over must first submit the dispatches that read them.
    let gpu: Gpu = new_gpu();
    let n = 5000;
    let y = Tensor::full(&gpu, &[8], 0.0).unwrap();
    let ones = Tensor::full(&gpu, &[8], 1.0).unwrap();
    for i in 0..n {
        ops::axpy(&y, i as f32, &ones).unwrap();
    }
    // 0 + 1 + ... + 4999, exact in f32.
    let sum = (n * (n - 1) / 2) as f32;
    assert_eq!(y.to_vec().unwrap(), vec![sum; 8]);
}

#[test]
fn binding_limit_is_a_clear_error() {
    // With WebGPU's default limits a storage binding holds at most 128 MiB.
    let gpu = Gpu::with_options(resnet_wgpu::GpuOptions {
        default_limits: true,
        ..Default::default()
    })
    .expect("a device with default limits");
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let n = (limit / 4 + 1024) as usize;
    let big = Tensor::zeros(&gpu, &[n]).unwrap();
    let err = ops::relu(&big).unwrap_err().to_string();
    assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
    let err = Tensor::zeros(&gpu, &[gpu.limits().max_buffer_size as usize])
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_buffer_size"), "{err}");
}

#[test]
fn read_all_returns_each_tensor() {
    let gpu = gpu();
    let a = Tensor::from_slice(&gpu, &[3], &[1.0, 2.0, 3.0]).unwrap();
    let b = Tensor::from_slice(&gpu, &[2, 2], &[4.0, 5.0, 6.0, 7.0]).unwrap();
    let c = ops::relu(&Tensor::from_slice(&gpu, &[1], &[-1.0]).unwrap()).unwrap();
    let v = pollster::block_on(Tensor::read_all(&[&a, &b, &c])).unwrap();
    assert_eq!(
        v,
        vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0, 7.0], vec![0.0]]
    );
    assert!(
        pollster::block_on(Tensor::read_all(&[]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn profiler_times_every_dispatch() {
    // A device of its own: profiling is per device and other tests share `gpu()`.
    let gpu = new_gpu();
    if !gpu.profiling_supported() {
        let err = gpu.start_profiling().unwrap_err().to_string();
        assert!(err.contains("timestamp"), "{err}");
        println!("timestamp queries unsupported on {}", gpu.info());
        return;
    }
    assert!(gpu.finish_profiling().is_err(), "finish without start");
    let a = Tensor::from_slice(&gpu, &[5], &[1.0, -2.0, 3.0, -4.0, 5.0]).unwrap();
    let untimed = ops::relu(&a).unwrap();
    gpu.start_profiling().unwrap();
    assert!(gpu.is_profiling());
    let first = gpu.dispatch_count();
    let r = ops::relu(&a).unwrap();
    let s = ops::add(&r, &untimed).unwrap();
    // A read-back submits mid-way; the timings of both submits must come back.
    assert_eq!(s.to_vec().unwrap(), vec![2.0, 0.0, 6.0, 0.0, 10.0]);
    // More dispatches than one query set holds (2,048 passes).
    let mut x = s;
    for _ in 0..2100 {
        x = ops::scale(&x, 1.0).unwrap();
    }
    let times = gpu.finish_profiling().unwrap();
    assert!(!gpu.is_profiling());
    assert_eq!(times.len() as u64, gpu.dispatch_count() - first);
    assert_eq!(
        (times[0].file, times[0].entry),
        ("elementwise.wgsl", "relu_forward")
    );
    assert_eq!(times[1].entry, "add");
    assert!(times[2..].iter().all(|t| t.entry == "scale"));
    assert!(times.iter().all(|t| t.nanos.is_finite() && t.nanos >= 0.0));
    assert!(
        times.iter().map(|t| t.nanos).sum::<f64>() > 0.0,
        "{times:?}"
    );
    // Start times count from the first timed dispatch, in recording order (the scales form a
    // chain, each reading the last one's output), and the span covers every dispatch.
    assert_eq!(times[0].start, 0.0);
    assert!(
        times.windows(2).all(|w| w[1].start >= w[0].start),
        "{:?}",
        &times[..4]
    );
    let span = gpu_span_nanos(&times);
    assert!(
        times.iter().all(|t| t.start + t.nanos <= span),
        "span {span}"
    );
    let last = times.last().unwrap();
    assert!(
        last.start > 0.0 && span >= last.start + last.nanos,
        "{last:?}"
    );
    // Dispatches after the end are untimed, and a new session starts empty.
    drop(ops::relu(&a).unwrap());
    gpu.start_profiling().unwrap();
    drop(ops::add(&a, &a).unwrap());
    let times = gpu.finish_profiling().unwrap();
    assert_eq!(times.len(), 1);
    assert_eq!(times[0].entry, "add");
    assert_eq!(x.to_vec().unwrap(), vec![2.0, 0.0, 6.0, 0.0, 10.0]);
}

#[test]
fn peak_memory_can_be_reset() {
    let gpu = new_gpu();
    drop(Tensor::zeros(&gpu, &[1 << 20]).unwrap());
    gpu.synchronize().unwrap();
    gpu.trim_pool();
    let before = gpu.pool_stats();
    assert!(before.peak_bytes >= 4 << 20, "{before:?}");
    assert!(before.bytes_allocated < 4 << 20, "{before:?}");
    gpu.reset_peak_memory();
    let reset = gpu.pool_stats();
    assert_eq!(reset.peak_bytes, reset.bytes_allocated);
    let small = Tensor::zeros(&gpu, &[1000]).unwrap();
    let after = gpu.pool_stats();
    assert!(after.peak_bytes >= reset.peak_bytes + 4000, "{after:?}");
    assert!(after.peak_bytes < before.peak_bytes, "{after:?}");
    drop(small);
}

/// The results of every reducing kernel (`shaders/butterfly.wgsl`'s users) on ragged inputs.
fn reductions(gpu: &Gpu) -> Vec<Vec<f32>> {
    let t = |shape: &[usize], seed: u64| {
        let n = shape.iter().product();
        Tensor::from_slice(gpu, shape, &random_vec(n, seed)).unwrap()
    };
    let mut out = Vec::new();
    let x = t(&[3, 5, 13, 11], 1);
    out.push(ops::sum(&x).unwrap());
    out.push(ops::mean(&t(&[300_007], 2)).unwrap());
    out.push(ops::sum_last(&x).unwrap());
    out.push(ops::sum_channels(&x).unwrap());
    out.push(ops::f16_scale(&x).unwrap());
    out.push(ops::global_avg_pool(&x).unwrap());
    let logits = t(&[5, 1000], 3);
    out.push(ops::softmax(&logits).unwrap());
    let labels = ops::upload_labels(gpu, &[0, 999, 17, 500, 3], 1000).unwrap();
    let (loss, glogits) = ops::cross_entropy(&logits, &labels, 0.1).unwrap();
    out.extend([loss, glogits]);
    // At batch 1-4 the linear layer runs the matrix-vector kernel.
    out.push(ops::linear(&t(&[3, 700], 4), &t(&[37, 700], 5), Some(&t(&[37], 6))).unwrap());
    let grads = [t(&[1000], 7), t(&[70_001], 8)];
    out.push(resnet_wgpu::optim::clip_grad_norm(&[&grads[0], &grads[1]], 0.5).unwrap());
    out.extend(grads);
    // Batch norm on 7x7 planes (the scalar kernels) and 6x6 ones (vec4), with a ReLU, and on
    // planes of 67 reduction chunks, more than a finalizing workgroup has threads.
    for (shape, seed) in [
        ([4, 3, 7, 7], 10),
        ([4, 3, 6, 6], 20),
        ([1, 2, 520, 520], 30),
    ] {
        let c = shape[1];
        let x = t(&shape, seed);
        let gy = t(&shape, seed + 1);
        let (gamma, beta, rm) = (t(&[c], seed + 2), t(&[c], seed + 3), t(&[c], seed + 4));
        let rv = Tensor::full(gpu, &[c], 0.5).unwrap();
        let (y, saved) =
            ops::batch_norm_train(&x, &gamma, &beta, &rm, &rv, 0.1, 1e-5, true).unwrap();
        let (gx, gg, gb) = ops::batch_norm_backward(&x, &y, &gy, &gamma, &saved, true).unwrap();
        out.extend([y, rm, rv, gx, gg, gb]);
    }
    let refs: Vec<&Tensor> = out.iter().collect();
    pollster::block_on(Tensor::read_all(&refs)).unwrap()
}

#[test]
fn subgroup_reductions_give_the_memory_reductions_bits() {
    // The reductions pair values in the same order whether a level goes through a subgroup's
    // lanes or workgroup memory, so they must agree bit for bit (and the tests of each op check
    // the values, with the subgroups lavapipe offers).
    let gpu = new_gpu();
    let by_default = gpu.subgroup_lanes();
    let gemm_by_default = gpu.conv_gemm_lanes();
    gpu.set_subgroup_reductions(true)
        .expect("the reductions can use subgroups here (lavapipe: 8 lanes)");
    let lanes = gpu.subgroup_lanes().unwrap();
    // On from the start with 8 lanes or more (lavapipe), off with SwiftShader's 4; the conv
    // GEMMs without barriers take them from the start however few.
    let off = std::env::var("RESNET_WGPU_SUBGROUPS").is_ok_and(|v| v.trim() == "0");
    assert_eq!(by_default, (lanes >= 8 && !off).then_some(lanes));
    assert_eq!(gemm_by_default, (!off).then_some(lanes));
    assert!(lanes.is_power_of_two() && lanes >= 2, "{lanes} lanes");
    let with_lanes = reductions(&gpu);
    gpu.set_subgroup_reductions(false).unwrap();
    assert_eq!(gpu.subgroup_lanes(), None);
    assert_eq!(gpu.conv_gemm_lanes(), None, "one switch for both");
    let with_memory = reductions(&gpu);
    gpu.set_subgroup_reductions(true).unwrap();
    assert_eq!(gpu.subgroup_lanes(), Some(lanes));
    assert_eq!(gpu.conv_gemm_lanes(), Some(lanes));
    for (i, (a, b)) in with_lanes.iter().zip(&with_memory).enumerate() {
        assert_eq!(a.len(), b.len());
        if let Some(j) = (0..a.len()).find(|&j| a[j].to_bits() != b[j].to_bits()) {
            panic!(
                "result {i}, element {j}: {} with {lanes} lanes, {} through memory",
                a[j], b[j]
            );
        }
    }
}

/// PyTorch's ReLU backward zeroes the gradient where the output is `<= 0`, so it passes it at
/// a NaN output, which a mask `y > 0` would drop (batch norm's fused ReLU: `tests/batchnorm.rs`).
#[test]
fn relu_backward_passes_the_gradient_at_nans() {
    let gpu = gpu();
    for n in [7usize, 8] {
        let mut y = random_vec(n, 40);
        y[1] = f32::NAN;
        y[4] = -f32::NAN;
        let gy = random_vec(n, 41);
        let expected = reference::relu_backward(&y, &gy);
        assert_eq!((expected[1], expected[4]), (gy[1], gy[4]), "reference {n}");
        let ty = Tensor::from_slice(&gpu, &[n], &y).unwrap();
        let tgy = Tensor::from_slice(&gpu, &[n], &gy).unwrap();
        let gx = ops::relu_backward(&ty, &tgy).unwrap().to_vec().unwrap();
        assert_eq!(gx, expected, "relu_backward {n}");
        // The in-place kernel, over a gradient no other handle shares.
        let gx = ops::relu_backward_consume(&ty, tgy).unwrap();
        assert_eq!(gx.to_vec().unwrap(), expected, "relu_backward in place {n}");
    }
}
