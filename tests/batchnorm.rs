//! Batch norm: PyTorch goldens, CPU reference on random shapes, fused ReLU, eval mode, errors and
//! central-difference gradient checks through the tape.

mod common;
use common::*;
use resnet_wgpu::ops::{self, BatchNorm};
use resnet_wgpu::{Tape, Tensor, Var, reference};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn positive_vec(n: usize, seed: u64) -> Vec<f32> {
    random_vec(n, seed)
        .into_iter()
        .map(|v| 0.5 + 0.5 * v.abs())
        .collect()
}

#[test]
fn golden_tensor_api() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let x = g.tensor(&gpu, "bn.x");
    let gamma = g.tensor(&gpu, "bn.gamma");
    let beta = g.tensor(&gpu, "bn.beta");
    let rm = g.tensor(&gpu, "bn.running_mean_in");
    let rv = g.tensor(&gpu, "bn.running_var_in");
    let (y, saved) = ops::batch_norm_train(&x, &gamma, &beta, &rm, &rv, 0.1, 1e-5, false).unwrap();
    assert_close(&y.to_vec().unwrap(), &g.f32("bn.y"), RTOL, ATOL, "bn.y");
    assert_close(
        &rm.to_vec().unwrap(),
        &g.f32("bn.running_mean_out"),
        RTOL,
        ATOL,
        "running_mean",
    );
    assert_close(
        &rv.to_vec().unwrap(),
        &g.f32("bn.running_var_out"),
        RTOL,
        ATOL,
        "running_var",
    );
    let y_eval = ops::batch_norm_eval(&x, &gamma, &beta, &rm, &rv, 1e-5, false).unwrap();
    assert_close(
        &y_eval.to_vec().unwrap(),
        &g.f32("bn.y_eval"),
        RTOL,
        ATOL,
        "bn.y_eval",
    );
    let gy = g.tensor(&gpu, "bn.gy");
    let (gx, gg, gb) = ops::batch_norm_backward(&x, &y, &gy, &gamma, &saved, false).unwrap();
    assert_close(&gx.to_vec().unwrap(), &g.f32("bn.gx"), RTOL, ATOL, "bn.gx");
    assert_close(
        &gg.to_vec().unwrap(),
        &g.f32("bn.ggamma"),
        RTOL,
        ATOL,
        "bn.ggamma",
    );
    assert_close(
        &gb.to_vec().unwrap(),
        &g.f32("bn.gbeta"),
        RTOL,
        ATOL,
        "bn.gbeta",
    );
}

#[test]
fn golden_through_the_tape() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let tape = Tape::new();
    let x = tape.leaf(g.tensor(&gpu, "bn.x"));
    let gamma = tape.leaf(g.tensor(&gpu, "bn.gamma"));
    let beta = tape.leaf(g.tensor(&gpu, "bn.beta"));
    let rm = g.tensor(&gpu, "bn.running_mean_in");
    let rv = g.tensor(&gpu, "bn.running_var_in");
    let y = x
        .batch_norm(&gamma, &beta, &rm, &rv, BatchNorm::train())
        .unwrap();
    assert!(y.requires_grad());
    assert_close(
        &y.tensor().to_vec().unwrap(),
        &g.f32("bn.y"),
        RTOL,
        ATOL,
        "bn.y",
    );
    assert_close(
        &rm.to_vec().unwrap(),
        &g.f32("bn.running_mean_out"),
        RTOL,
        ATOL,
        "running_mean",
    );
    assert_close(
        &rv.to_vec().unwrap(),
        &g.f32("bn.running_var_out"),
        RTOL,
        ATOL,
        "running_var",
    );
    let grads = tape.backward_with(&y, g.tensor(&gpu, "bn.gy")).unwrap();
    assert_close(
        &grads.get(&x).unwrap().to_vec().unwrap(),
        &g.f32("bn.gx"),
        RTOL,
        ATOL,
        "bn.gx",
    );
    assert_close(
        &grads.get(&gamma).unwrap().to_vec().unwrap(),
        &g.f32("bn.ggamma"),
        RTOL,
        ATOL,
        "ggamma",
    );
    assert_close(
        &grads.get(&beta).unwrap().to_vec().unwrap(),
        &g.f32("bn.gbeta"),
        RTOL,
        ATOL,
        "gbeta",
    );

    // Inference: eval mode on constants records nothing and leaves the running stats alone.
    let xc = Var::constant(g.tensor(&gpu, "bn.x"));
    let gc = Var::constant(g.tensor(&gpu, "bn.gamma"));
    let bc = Var::constant(g.tensor(&gpu, "bn.beta"));
    let y_eval = xc
        .batch_norm(&gc, &bc, &rm, &rv, BatchNorm::eval())
        .unwrap();
    assert!(!y_eval.requires_grad());
    assert_close(
        &y_eval.tensor().to_vec().unwrap(),
        &g.f32("bn.y_eval"),
        RTOL,
        ATOL,
        "bn.y_eval",
    );
    assert_close(
        &rm.to_vec().unwrap(),
        &g.f32("bn.running_mean_out"),
        RTOL,
        ATOL,
        "running_mean kept",
    );
}

/// One random case against the reference: training forward, running stats, backward; then eval
/// forward and eval backward with the updated stats.
fn check_case(n: usize, c: usize, h: usize, w: usize, relu: bool, seed: u64) {
    let gpu = gpu();
    let hw = h * w;
    let what = format!("[{n}, {c}, {h}, {w}] relu={relu}");
    // An offset mean per channel checks the variance is not computed as E[x^2] - E[x]^2.
    let x: Vec<f32> = random_vec(n * c * hw, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| 3.0 * v + 5.0 * ((i / hw) % c) as f32 - 10.0)
        .collect();
    let gamma = random_vec(c, seed + 1)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect::<Vec<_>>();
    let beta = random_vec(c, seed + 2);
    let rm0 = random_vec(c, seed + 3);
    let rv0 = positive_vec(c, seed + 4);
    let gy = random_vec(n * c * hw, seed + 5);
    let shape = [n, c, h, w];
    let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
    let tg = Tensor::from_slice(&gpu, &[c], &gamma).unwrap();
    let tb = Tensor::from_slice(&gpu, &[c], &beta).unwrap();
    let trm = Tensor::from_slice(&gpu, &[c], &rm0).unwrap();
    let trv = Tensor::from_slice(&gpu, &[c], &rv0).unwrap();
    let tgy = Tensor::from_slice(&gpu, &shape, &gy).unwrap();

    let r = reference::batch_norm_train(&x, n, c, hw, &gamma, &beta, &rm0, &rv0, 0.1, 1e-5, relu);
    let (y, saved) = ops::batch_norm_train(&tx, &tg, &tb, &trm, &trv, 0.1, 1e-5, relu).unwrap();
    assert_close(&y.to_vec().unwrap(), &r.y, 1e-4, 1e-4, &format!("y {what}"));
    assert_close(
        &saved.mean.to_vec().unwrap(),
        &r.mean,
        1e-5,
        1e-5,
        &format!("mean {what}"),
    );
    assert_close(
        &saved.invstd.to_vec().unwrap(),
        &r.invstd,
        1e-4,
        1e-6,
        &format!("invstd {what}"),
    );
    assert_close(
        &trm.to_vec().unwrap(),
        &r.running_mean,
        1e-5,
        1e-5,
        &format!("running_mean {what}"),
    );
    assert_close(
        &trv.to_vec().unwrap(),
        &r.running_var,
        1e-4,
        1e-5,
        &format!("running_var {what}"),
    );

    let (gx, gg, gb) = ops::batch_norm_backward(&tx, &y, &tgy, &tg, &saved, relu).unwrap();
    let (rgx, rgg, rgb) = reference::batch_norm_backward(
        &x, &r.y, &gy, n, c, hw, &gamma, &r.mean, &r.invstd, relu, false,
    );
    let m = (n * hw) as f32;
    assert_close(
        &gx.to_vec().unwrap(),
        &rgx,
        1e-3,
        1e-4,
        &format!("gx {what}"),
    );
    assert_close(
        &gg.to_vec().unwrap(),
        &rgg,
        1e-3,
        1e-5 * m,
        &format!("ggamma {what}"),
    );
    assert_close(
        &gb.to_vec().unwrap(),
        &rgb,
        1e-3,
        1e-5 * m,
        &format!("gbeta {what}"),
    );

    // Eval with the updated stats, forward and (frozen-stats) backward.
    let (rm1, rv1) = (r.running_mean.clone(), r.running_var.clone());
    let ye = ops::batch_norm_eval(&tx, &tg, &tb, &trm, &trv, 1e-5, relu).unwrap();
    let rye = reference::batch_norm_eval(&x, n, c, hw, &gamma, &beta, &rm1, &rv1, 1e-5, relu);
    assert_close(
        &ye.to_vec().unwrap(),
        &rye,
        1e-4,
        1e-4,
        &format!("y_eval {what}"),
    );
    let es = ops::batch_norm_eval_stats(&trm, &trv, 1e-5).unwrap();
    let rinv: Vec<f32> = rv1.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    let (gx, gg, gb) = ops::batch_norm_eval_backward(&tx, &ye, &tgy, &tg, &es, relu).unwrap();
    let (rgx, rgg, rgb) =
        reference::batch_norm_backward(&x, &rye, &gy, n, c, hw, &gamma, &rm1, &rinv, relu, true);
    assert_close(
        &gx.to_vec().unwrap(),
        &rgx,
        1e-4,
        1e-5,
        &format!("eval gx {what}"),
    );
    assert_close(
        &gg.to_vec().unwrap(),
        &rgg,
        1e-3,
        1e-5 * m,
        &format!("eval ggamma {what}"),
    );
    assert_close(
        &gb.to_vec().unwrap(),
        &rgb,
        1e-3,
        1e-5 * m,
        &format!("eval gbeta {what}"),
    );
}

#[test]
fn random_shapes_match_reference() {
    let cases = [
        (1, 3, 5, 7, false),
        (2, 7, 3, 3, false),
        (3, 67, 4, 5, false),
        (1, 1, 1, 2, false),
        (5, 2, 1, 1, false),
        (2, 16, 9, 11, false),
        // Planes of exactly, half and just over a partial workgroup's 64 threads: the values a
        // thread visits step through the planes in whole, half or ragged strides.
        (3, 5, 8, 8, false),
        (4, 3, 4, 8, false),
        (2, 4, 5, 13, false),
    ];
    for (i, &(n, c, h, w, relu)) in cases.iter().enumerate() {
        check_case(n, c, h, w, relu, 100 + 10 * i as u64);
    }
}

#[test]
fn fused_relu_matches_reference() {
    for (i, &(n, c, h, w)) in [(1, 3, 5, 7), (2, 67, 3, 3), (4, 5, 6, 2)]
        .iter()
        .enumerate()
    {
        check_case(n, c, h, w, true, 300 + 10 * i as u64);
    }
}

#[test]
fn long_channels_use_several_reduction_chunks() {
    // M = 3 * 61 * 61 = 11,163 values per channel: three 4096-value chunks, the last partial.
    check_case(3, 3, 61, 61, false, 500);
    check_case(3, 2, 61, 61, true, 510);
}

#[test]
fn many_chunks_per_channel() {
    // M = 4 * 512 * 520 = 1,064,960 values: 261 chunks, each inside one plane, merged by the
    // channel's finalizing workgroup: 5 by threads 0-4, 4 by the others, then by butterfly.
    check_case(4, 1, 512, 520, false, 520);
}

#[test]
fn statistics_far_from_zero() {
    // Values 1000 + 0.01 u (u uniform in [-1, 1]): the variance, about 3.3e-5, is 1e-11 of the
    // mean's square, so sums of squares about zero would lose it to rounding; the statistics
    // stay exact only if every sum is taken about a running mean. Against f64 two-pass sums.
    // Planes of 33 x 31 values (one per thread) and 32 x 31 (vec4s).
    for (h, w) in [(33, 31), (32, 31)] {
        far_from_zero_case(h, w);
    }
}

fn far_from_zero_case(h: usize, w: usize) {
    let gpu = gpu();
    let (n, c, hw) = (2, 3, h * w);
    let x: Vec<f32> = random_vec(n * c * hw, 530)
        .iter()
        .map(|v| 1000.0 + 0.01 * v)
        .collect();
    let tx = Tensor::from_slice(&gpu, &[n, c, h, w], &x).unwrap();
    let ones = Tensor::full(&gpu, &[c], 1.0).unwrap();
    let zeros = Tensor::zeros(&gpu, &[c]).unwrap();
    let (rm, rv) = (zeros.clone(), ones.clone());
    let (_, saved) = ops::batch_norm_train(&tx, &ones, &zeros, &rm, &rv, 0.1, 0.0, false).unwrap();
    let (mean, invstd) = (saved.mean.to_vec().unwrap(), saved.invstd.to_vec().unwrap());
    for ch in 0..c {
        let values: Vec<f64> = (0..n)
            .flat_map(|i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw])
            .map(|&v| f64::from(v))
            .collect();
        let m = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / values.len() as f64;
        assert!(
            (f64::from(mean[ch]) - m).abs() < 1e-4,
            "{h}x{w} channel {ch}: mean {} against {m}",
            mean[ch]
        );
        let expected = 1.0 / var.sqrt();
        let rel = (f64::from(invstd[ch]) - expected).abs() / expected;
        assert!(
            rel < 1e-3,
            "{h}x{w} channel {ch}: invstd {} against {expected}",
            invstd[ch]
        );
    }
}

#[test]
fn residual_join_matches_separate_ops() {
    // relu(bn(x) + r) in one kernel (a residual block's last step) against batch norm followed
    // by add / add_relu: outputs, running statistics and the gradients of x, gamma, beta and r,
    // in training and eval mode, tracked and (eval) untracked. Planes of 35 values (the element
    // kernels one value per thread) and of 24 (vec4s).
    for (n, c, h, w) in [(3, 6, 5, 7), (2, 5, 4, 6)] {
        residual_case(n, c, h, w);
    }
    // A residual of another shape is an error naming both shapes.
    let gpu = gpu();
    let tx = Var::constant(Tensor::zeros(&gpu, &[3, 6, 5, 7]).unwrap());
    let bad = Var::constant(Tensor::zeros(&gpu, &[3, 6, 5, 8]).unwrap());
    let v = Var::constant(Tensor::full(&gpu, &[6], 1.0).unwrap());
    let (trm, trv) = (
        Tensor::zeros(&gpu, &[6]).unwrap(),
        Tensor::full(&gpu, &[6], 1.0).unwrap(),
    );
    let err = tx
        .batch_norm_add(&v, &v, &trm, &trv, BatchNorm::train(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("residual") && err.contains("[3, 6, 5, 7]") && err.contains("[3, 6, 5, 8]"),
        "{err}"
    );
}

#[test]
fn residual_join_masks_its_gradient_in_the_partial_sums() {
    // relu(bn(x) + r)'s backward masks the upstream gradient by the ReLU as its partial sums
    // read it and writes the masked values back for r, on planes of any size: planes of 35
    // values (scalar kernels) take as many dispatches as planes of 24 (vec4s), with no mask
    // pass of their own.
    let gpu = new_gpu();
    let dispatches = |shape: [usize; 4]| {
        let numel = shape.iter().product();
        let c = shape[1];
        let tape = Tape::new();
        let t = |v: Vec<f32>, s: &[usize]| tape.leaf(Tensor::from_slice(&gpu, s, &v).unwrap());
        let (x, r) = (
            t(random_vec(numel, 71), &shape),
            t(random_vec(numel, 72), &shape),
        );
        let (g, b) = (t(vec![1.0; c], &[c]), t(vec![0.0; c], &[c]));
        let (rm, rv) = (
            Tensor::zeros(&gpu, &[c]).unwrap(),
            Tensor::full(&gpu, &[c], 1.0).unwrap(),
        );
        let opts = BatchNorm::train().with_relu();
        let y = x.batch_norm_add(&g, &b, &rm, &rv, opts, &r).unwrap();
        let seed = Tensor::from_slice(&gpu, &shape, &random_vec(numel, 73)).unwrap();
        let before = gpu.dispatch_count();
        tape.backward_with(&y, seed).unwrap();
        gpu.dispatch_count() - before
    };
    assert_eq!(dispatches([3, 6, 5, 7]), dispatches([2, 5, 4, 6]));
}

fn residual_case(n: usize, c: usize, h: usize, w: usize) {
    let gpu = gpu();
    let shape = [n, c, h, w];
    let numel = n * c * h * w;
    let x: Vec<f32> = random_vec(numel, 61)
        .iter()
        .map(|v| 2.0 * v + 1.0)
        .collect();
    let r = random_vec(numel, 62);
    let gamma: Vec<f32> = random_vec(c, 63).iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = random_vec(c, 64);
    let (rm, rv) = (random_vec(c, 65), positive_vec(c, 66));
    let gy = random_vec(numel, 67);
    for training in [true, false] {
        for relu in [false, true] {
            let what = format!("{shape:?} training {training} relu {relu}");
            let opts = if training {
                BatchNorm::train()
            } else {
                BatchNorm::eval()
            };
            let opts = if relu { opts.with_relu() } else { opts };
            // (y, running mean, running var, gx, ggamma, gbeta, gr) one way or the other.
            // fused: one op; keep_seed: the test keeps a handle on the upstream gradient, which
            // the backward must then leave as it was (no masking in place).
            let run = |fused: bool, keep_seed: bool| {
                let tape = Tape::new();
                let t = |v: &[f32], s: &[usize]| tape.leaf(Tensor::from_slice(&gpu, s, v).unwrap());
                let (tx, tr, tg, tb) = (
                    t(&x, &shape),
                    t(&r, &shape),
                    t(&gamma, &[c]),
                    t(&beta, &[c]),
                );
                let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
                let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
                let y = if fused {
                    tx.batch_norm_add(&tg, &tb, &trm, &trv, opts, &tr).unwrap()
                } else {
                    let plain = BatchNorm {
                        relu: false,
                        ..opts
                    };
                    let h = tx.batch_norm(&tg, &tb, &trm, &trv, plain).unwrap();
                    if relu { h.add_relu(&tr) } else { h.add(&tr) }.unwrap()
                };
                let seed = Tensor::from_slice(&gpu, &shape, &gy).unwrap();
                let kept = keep_seed.then(|| seed.clone());
                let grads = tape.backward_with(&y, seed).unwrap();
                if let Some(kept) = kept {
                    assert_eq!(
                        kept.to_vec().unwrap(),
                        gy,
                        "{what}: a kept seed was written"
                    );
                }
                let g = |v: &Var| grads.get(v).unwrap().to_vec().unwrap();
                [
                    y.tensor().to_vec().unwrap(),
                    trm.to_vec().unwrap(),
                    trv.to_vec().unwrap(),
                    g(&tx),
                    g(&tg),
                    g(&tb),
                    g(&tr),
                ]
            };
            let (fused, apart) = (run(true, false), run(false, false));
            let shared = run(true, true);
            let names = [
                "y",
                "running_mean",
                "running_var",
                "gx",
                "ggamma",
                "gbeta",
                "gr",
            ];
            for ((a, b), name) in fused.iter().zip(&apart).zip(names) {
                assert_close(a, b, 1e-5, 1e-6, &format!("{what}: {name}"));
            }
            for ((a, b), name) in shared.iter().zip(&apart).zip(names) {
                assert_close(a, b, 1e-5, 1e-6, &format!("{what}, seed kept: {name}"));
            }
            if !training {
                // Untracked eval: the running statistics directly, nothing recorded.
                let v =
                    |v: &[f32], s: &[usize]| Var::constant(Tensor::from_slice(&gpu, s, v).unwrap());
                let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
                let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
                let y = v(&x, &shape)
                    .batch_norm_add(
                        &v(&gamma, &[c]),
                        &v(&beta, &[c]),
                        &trm,
                        &trv,
                        opts,
                        &v(&r, &shape),
                    )
                    .unwrap();
                assert!(!y.requires_grad());
                assert_close(
                    &y.tensor().to_vec().unwrap(),
                    &fused[0],
                    1e-5,
                    1e-6,
                    &format!("{what}: untracked y"),
                );
            }
        }
    }
}

#[test]
fn eval_mode_through_the_tape() {
    // Frozen running statistics with tracked inputs (fine-tuning a backbone in eval mode).
    let gpu = gpu();
    let (n, c, h, w) = (2, 5, 3, 4);
    let hw = h * w;
    let x = random_vec(n * c * hw, 41);
    let gamma: Vec<f32> = random_vec(c, 42).iter().map(|v| 1.0 + 0.3 * v).collect();
    let beta = random_vec(c, 43);
    let rm = random_vec(c, 44);
    let rv = positive_vec(c, 45);
    let gy = random_vec(n * c * hw, 46);
    for relu in [false, true] {
        let tape = Tape::new();
        let tx = tape.leaf(Tensor::from_slice(&gpu, &[n, c, h, w], &x).unwrap());
        let tg = tape.leaf(Tensor::from_slice(&gpu, &[c], &gamma).unwrap());
        let tb = tape.leaf(Tensor::from_slice(&gpu, &[c], &beta).unwrap());
        let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
        let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
        let opts = if relu {
            BatchNorm::eval().with_relu()
        } else {
            BatchNorm::eval()
        };
        let y = tx.batch_norm(&tg, &tb, &trm, &trv, opts).unwrap();
        let ry = reference::batch_norm_eval(&x, n, c, hw, &gamma, &beta, &rm, &rv, 1e-5, relu);
        assert_close(&y.tensor().to_vec().unwrap(), &ry, 1e-4, 1e-5, "eval y");
        let grads = tape
            .backward_with(&y, Tensor::from_slice(&gpu, &[n, c, h, w], &gy).unwrap())
            .unwrap();
        let inv: Vec<f32> = rv.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        let (rgx, rgg, rgb) =
            reference::batch_norm_backward(&x, &ry, &gy, n, c, hw, &gamma, &rm, &inv, relu, true);
        assert_close(
            &grads.get(&tx).unwrap().to_vec().unwrap(),
            &rgx,
            1e-4,
            1e-5,
            "eval gx",
        );
        assert_close(
            &grads.get(&tg).unwrap().to_vec().unwrap(),
            &rgg,
            1e-4,
            1e-4,
            "eval ggamma",
        );
        assert_close(
            &grads.get(&tb).unwrap().to_vec().unwrap(),
            &rgb,
            1e-4,
            1e-4,
            "eval gbeta",
        );
        // Eval mode never touches the running statistics.
        assert_eq!(trm.to_vec().unwrap(), rm);
        assert_eq!(trv.to_vec().unwrap(), rv);
    }
}

#[test]
fn options_and_errors() {
    let o = BatchNorm::train();
    assert!(o.training && !o.relu && o.momentum == 0.1 && o.eps == 1e-5);
    let e = BatchNorm::eval().with_relu();
    assert!(!e.training && e.relu && e.momentum == 0.1 && e.eps == 1e-5);

    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[2, 3, 4, 4]).unwrap();
    let v3 = Tensor::zeros(&gpu, &[3]).unwrap();
    let v3b = Tensor::full(&gpu, &[3], 1.0).unwrap();
    let v4 = Tensor::zeros(&gpu, &[4]).unwrap();
    let err = ops::batch_norm_train(&x, &v4, &v3, &v3, &v3b, 0.1, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("batch_norm:") && err.contains("gamma") && err.contains("[2, 3, 4, 4]"),
        "{err}"
    );
    let err = ops::batch_norm_eval(&x, &v3, &v3, &v4, &v3b, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("batch_norm_eval:") && err.contains("running_mean"),
        "{err}"
    );
    let one = Tensor::zeros(&gpu, &[1, 3, 1, 1]).unwrap();
    let err = ops::batch_norm_train(&one, &v3, &v3, &v3, &v3b, 0.1, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
    let err = ops::batch_norm_train(&x, &v3, &v3, &v3, &v3, 0.1, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("share one buffer"), "{err}");
    let flat = Tensor::zeros(&gpu, &[6]).unwrap();
    let err = ops::batch_norm_eval(&flat, &v3, &v3, &v3, &v3b, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[N, C, H, W]") && err.contains("[6]"), "{err}");
    let labels = Tensor::from_u32(&gpu, &[2, 3, 4, 4], &[0; 96]).unwrap();
    assert!(ops::batch_norm_eval(&labels, &v3, &v3, &v3, &v3b, 1e-5, false).is_err());
    let (y, saved) = ops::batch_norm_train(&x, &v3, &v3, &v3, &v3b, 0.1, 1e-5, false).unwrap();
    let gy_bad = Tensor::zeros(&gpu, &[2, 3, 4, 5]).unwrap();
    let err = ops::batch_norm_backward(&x, &y, &gy_bad, &v3, &saved, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("batch_norm_backward:") && err.contains("gy"),
        "{err}"
    );
    // The backward may write over gy: it cannot be x (or the ReLU's y) too.
    let err = ops::batch_norm_backward(&x, &y, &x, &v3, &saved, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gy must not share a buffer"), "{err}");
    let err = ops::batch_norm_backward(&x, &y, &y, &v3, &saved, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gy must not share a buffer"), "{err}");
}

/// Central differences of `L = sum(y * r)` through the tape, for x, gamma and beta.
fn grad_check(relu: bool, training: bool) {
    let gpu = gpu();
    let (n, c, h, w) = (2, 3, 3, 2);
    let shape = [n, c, h, w];
    let numel = n * c * h * w;
    let x: Vec<f32> = random_vec(numel, 61).iter().map(|v| 2.0 * v).collect();
    let gamma: Vec<f32> = random_vec(c, 62).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta: Vec<f32> = random_vec(c, 63).iter().map(|v| 0.5 * v).collect();
    let rm = random_vec(c, 64);
    let rv = positive_vec(c, 65);
    let r = random_vec(numel, 66);
    let opts = BatchNorm {
        training,
        momentum: 0.1,
        eps: 1e-5,
        relu,
    };
    // Loss on the CPU from read-back values; running stats are fresh copies each call.
    let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
        let v = |d: &[f32], s: &[usize]| Var::constant(Tensor::from_slice(&gpu, s, d).unwrap());
        let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
        let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
        let y = v(x, &shape)
            .batch_norm(&v(g, &[c]), &v(b, &[c]), &trm, &trv, opts)
            .unwrap();
        y.tensor()
            .to_vec()
            .unwrap()
            .iter()
            .zip(&r)
            .map(|(y, r)| (*y as f64) * (*r as f64))
            .sum()
    };
    let tape = Tape::new();
    let tx = tape.leaf(Tensor::from_slice(&gpu, &shape, &x).unwrap());
    let tg = tape.leaf(Tensor::from_slice(&gpu, &[c], &gamma).unwrap());
    let tb = tape.leaf(Tensor::from_slice(&gpu, &[c], &beta).unwrap());
    let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
    let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
    let y = tx.batch_norm(&tg, &tb, &trm, &trv, opts).unwrap();
    let grads = tape
        .backward_with(&y, Tensor::from_slice(&gpu, &shape, &r).unwrap())
        .unwrap();
    let analytic = [
        grads.get(&tx).unwrap().to_vec().unwrap(),
        grads.get(&tg).unwrap().to_vec().unwrap(),
        grads.get(&tb).unwrap().to_vec().unwrap(),
    ];
    let eps = 1e-2f32;
    let base = [x.clone(), gamma.clone(), beta.clone()];
    for (which, name) in ["x", "gamma", "beta"].iter().enumerate() {
        for i in 0..base[which].len() {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let num = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2]))
                / (2.0 * eps as f64);
            let a = analytic[which][i] as f64;
            assert!(
                (a - num).abs() <= 2e-2 + 2e-2 * num.abs(),
                "bn grad check (relu={relu}, training={training}) d{name}[{i}]: analytic {a}, numeric {num}"
            );
        }
    }
}

#[test]
fn gradient_check_training() {
    grad_check(false, true);
}

#[test]
fn gradient_check_training_relu() {
    grad_check(true, true);
}

#[test]
fn gradient_check_eval() {
    grad_check(false, false);
}

#[test]
fn batch_norm_max_pool_relu_matches_the_separate_ops() {
    // The fused op's max pool normalizes as it reads, with the batch norm's expression; its
    // backward gathers the pool's gradient instead of holding it, and sums it in another order.
    // Results agree to rounding (a GPU compiler may contract the two kernels' multiply-adds
    // differently).
    let gpu = gpu();
    let cases = [
        (2, 3, 9, 9, 3, 2, 1),
        (1, 5, 8, 7, 3, 2, 1),
        (2, 2, 6, 6, 2, 2, 0),
        (1, 4, 5, 11, 3, 1, 1),
    ];
    for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let seed = 70 + 10 * i as u64;
        let x = random_vec(n * c * h * w, seed);
        // Some negative gammas: the pool must take the maximum after the batch norm.
        let gamma: Vec<f32> = random_vec(c, seed + 1).iter().map(|v| 1.5 * v).collect();
        let beta = random_vec(c, seed + 2);
        let rm = random_vec(c, seed + 3);
        let rv = positive_vec(c, seed + 4);
        let gy = random_vec(n * c * oh * ow, seed + 5);
        for training in [true, false] {
            // x_shared: the test holds x (the backward then writes gx over a copy); otherwise x
            // is an intermediate that only the op keeps, as in the model.
            for x_shared in [true, false] {
                let run = |fused: bool| {
                    let tape = Tape::new();
                    let leaf =
                        |v: &[f32], s: &[usize]| tape.leaf(Tensor::from_slice(&gpu, s, v).unwrap());
                    let (x0, tg, tb) = (
                        leaf(&x, &[n, c, h, w]),
                        leaf(&gamma, &[c]),
                        leaf(&beta, &[c]),
                    );
                    let trm = Tensor::from_slice(&gpu, &[c], &rm).unwrap();
                    let trv = Tensor::from_slice(&gpu, &[c], &rv).unwrap();
                    let opts = if training {
                        BatchNorm::train()
                    } else {
                        BatchNorm::eval()
                    };
                    let tx = if x_shared {
                        x0.clone()
                    } else {
                        x0.scale(1.0).unwrap()
                    };
                    let y = if fused {
                        tx.batch_norm_max_pool_relu(&tg, &tb, &trm, &trv, opts, k, s, p)
                            .unwrap()
                    } else {
                        tx.batch_norm(&tg, &tb, &trm, &trv, opts)
                            .unwrap()
                            .max_pool2d_relu(k, s, p)
                            .unwrap()
                    };
                    drop(tx);
                    let yv = y.tensor().to_vec().unwrap();
                    let tgy = Tensor::from_slice(&gpu, &[n, c, oh, ow], &gy).unwrap();
                    let grads = tape.backward_with(&y, tgy).unwrap();
                    let g = |v: &Var| grads.get(v).unwrap().to_vec().unwrap();
                    let stats = (trm.to_vec().unwrap(), trv.to_vec().unwrap());
                    (yv, [g(&x0), g(&tg), g(&tb)], stats)
                };
                let what = format!("{:?} training {training} x shared {x_shared}", cases[i]);
                let (fy, fg, fstats) = run(true);
                let (sy, sg, sstats) = run(false);
                assert_close(&fy, &sy, 1e-5, 1e-6, &format!("{what}: y"));
                assert_eq!(fstats, sstats, "{what}: running statistics");
                for (name, (f, s)) in ["gx", "ggamma", "gbeta"].iter().zip(fg.iter().zip(&sg)) {
                    assert_close(f, s, 1e-4, 1e-5, &format!("{what}: {name}"));
                }
            }
        }
    }
}

#[test]
fn batch_norm_max_pool_relu_keeps_the_relu_to_itself() {
    let gpu = gpu();
    let x = Var::constant(Tensor::zeros(&gpu, &[1, 2, 4, 4]).unwrap());
    let v = Var::constant(Tensor::full(&gpu, &[2], 1.0).unwrap());
    let stat = Tensor::full(&gpu, &[2], 1.0).unwrap();
    let err = x
        .batch_norm_max_pool_relu(&v, &v, &stat, &stat, BatchNorm::eval().with_relu(), 3, 2, 1)
        .expect_err("a ReLU in the options is an error");
    assert!(
        err.to_string().contains("batch_norm_max_pool_relu"),
        "{err}"
    );
}

#[test]
fn fused_relu_passes_the_gradient_at_nan_outputs() {
    // As PyTorch's ReLU backward: the gradient is zeroed where the output is <= 0, so it
    // passes at a NaN output (here one written into y where the ReLU had clipped to 0), on
    // planes of 9 values (the scalar kernels) and 16 (vec4).
    let gpu = gpu();
    for hw in [3usize, 4] {
        let (n, c) = (2, 3);
        let shape = [n, c, hw, hw];
        let len = n * c * hw * hw;
        let x = random_vec(len, 50);
        let gy = random_vec(len, 51);
        let gamma = positive_vec(c, 52);
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let tg = Tensor::from_slice(&gpu, &[c], &gamma).unwrap();
        let tb = Tensor::zeros(&gpu, &[c]).unwrap();
        let (rm, rv) = (
            Tensor::zeros(&gpu, &[c]).unwrap(),
            Tensor::full(&gpu, &[c], 1.0).unwrap(),
        );
        let (y, saved) = ops::batch_norm_train(&tx, &tg, &tb, &rm, &rv, 0.1, 1e-5, true).unwrap();
        let mut y = y.to_vec().unwrap();
        let clipped: Vec<usize> = (0..len).filter(|&i| y[i] == 0.0).take(2).collect();
        assert_eq!(clipped.len(), 2, "{hw}x{hw}: values the ReLU clipped");
        for &i in &clipped {
            y[i] = f32::NAN;
        }
        let ty = Tensor::from_slice(&gpu, &shape, &y).unwrap();
        let tgy = Tensor::from_slice(&gpu, &shape, &gy).unwrap();
        let (gx, gg, gb) = ops::batch_norm_backward(&tx, &ty, &tgy, &tg, &saved, true).unwrap();
        let (mean, invstd) = (saved.mean.to_vec().unwrap(), saved.invstd.to_vec().unwrap());
        let (rgx, rgg, rgb) = reference::batch_norm_backward(
            &x,
            &y,
            &gy,
            n,
            c,
            hw * hw,
            &gamma,
            &mean,
            &invstd,
            true,
            false,
        );
        let got = [gx, gg, gb].map(|t| t.to_vec().unwrap());
        for ((name, got), want) in ["gx", "ggamma", "gbeta"]
            .iter()
            .zip(&got)
            .zip([rgx, rgg, rgb])
        {
            assert_close(got, &want, 1e-3, 1e-4, &format!("{name} {hw}x{hw}"));
        }
    }
}
