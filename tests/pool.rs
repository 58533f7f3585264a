//! Pooling: PyTorch goldens (max pool 3x3/2/1, global average pool), CPU reference on random
//! shapes for max and average pooling forward and backward, errors, and a gradient check.

mod common;
use common::*;
use resnet_wgpu::{Tape, Tensor, Var, ops, reference};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn shape4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

#[test]
fn golden_maxpool() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let x = g.tensor(&gpu, "maxpool.x");
    let (y, idx) = ops::max_pool2d(&x, 3, 2, 1).unwrap();
    assert_eq!(y.shape(), g.shape("maxpool.y").as_slice());
    assert_close(
        &y.to_vec().unwrap(),
        &g.f32("maxpool.y"),
        RTOL,
        ATOL,
        "maxpool.y",
    );
    let gy = g.tensor(&gpu, "maxpool.gy");
    let gx = ops::max_pool2d_backward(&gy, &idx, shape4(x.shape()), 3, 2, 1).unwrap();
    assert_close(
        &gx.to_vec().unwrap(),
        &g.f32("maxpool.gx"),
        RTOL,
        ATOL,
        "maxpool.gx",
    );

    // The same through the tape.
    let tape = Tape::new();
    let xv = tape.leaf(x.clone());
    let yv = xv.max_pool2d(3, 2, 1).unwrap();
    assert_close(
        &yv.tensor().to_vec().unwrap(),
        &g.f32("maxpool.y"),
        RTOL,
        ATOL,
        "tape maxpool.y",
    );
    let grads = tape.backward_with(&yv, gy).unwrap();
    assert_close(
        &grads.get(&xv).unwrap().to_vec().unwrap(),
        &g.f32("maxpool.gx"),
        RTOL,
        ATOL,
        "tape gx",
    );
}

#[test]
fn golden_global_avg_pool() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let x = g.tensor(&gpu, "gap.x");
    let y = ops::global_avg_pool(&x).unwrap();
    assert_eq!(y.shape(), g.shape("gap.y").as_slice());
    assert_close(&y.to_vec().unwrap(), &g.f32("gap.y"), RTOL, ATOL, "gap.y");
    let gy = g.tensor(&gpu, "gap.gy");
    let gx = ops::global_avg_pool_backward(&gy, shape4(x.shape())).unwrap();
    assert_close(
        &gx.to_vec().unwrap(),
        &g.f32("gap.gx"),
        RTOL,
        ATOL,
        "gap.gx",
    );

    let tape = Tape::new();
    let xv = tape.leaf(x);
    let yv = xv.global_avg_pool().unwrap();
    assert_close(
        &yv.tensor().to_vec().unwrap(),
        &g.f32("gap.y"),
        RTOL,
        ATOL,
        "tape gap.y",
    );
    let grads = tape.backward_with(&yv, gy).unwrap();
    assert_close(
        &grads.get(&xv).unwrap().to_vec().unwrap(),
        &g.f32("gap.gx"),
        RTOL,
        ATOL,
        "tape gap.gx",
    );
}

/// (shape, kernel, stride, padding): overlapping windows, padding, odd sizes, batch 1, 1x1, 7x7.
const CASES: &[([usize; 4], usize, usize, usize)] = &[
    ([1, 3, 9, 9], 3, 2, 1),
    ([2, 5, 7, 11], 3, 2, 1),
    ([1, 1, 13, 6], 3, 1, 1),
    ([3, 2, 8, 8], 2, 2, 0),
    ([2, 3, 5, 5], 1, 1, 0),
    ([1, 4, 6, 6], 1, 2, 0),
    ([1, 2, 11, 9], 7, 2, 3),
    ([2, 2, 10, 7], 4, 3, 2),
    ([1, 7, 3, 3], 3, 3, 0),
];

/// NaNs win, the window's last one in row-major order, as in the reference: the kernel also
/// loads the taps outside the input (reading an inside one), which must never count. Each case
/// has a NaN at every third value, and one 5x5 plane a NaN at the first inside tap and at the
/// last inside tap of its top-right window, whose taps past the right edge come after both.
#[test]
fn max_pool_takes_the_window_s_last_nan() {
    let gpu = gpu();
    let crafted = ([1, 1, 5, 5], 3, 2, 1);
    for (i, &(shape, k, s, p)) in CASES.iter().chain([&crafted]).enumerate() {
        let what = format!("max_pool2d with NaNs {shape:?} k{k} s{s} p{p}");
        let numel = shape.iter().product();
        let mut x = random_vec(numel, 900 + i as u64);
        if (shape, k, s, p) == crafted {
            // Output (0, 2): rows -1..=1, columns 3..=5; column 5 is past the edge.
            x[3] = f32::NAN;
            x[5 + 4] = f32::NAN;
        } else {
            x.iter_mut().step_by(3).for_each(|v| *v = f32::NAN);
        }
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let (y, idx) = ops::max_pool2d(&tx, k, s, p).unwrap();
        let (ry, ridx) = reference::max_pool2d(&x, shape, k, s, p);
        assert_eq!(idx.to_vec_u32().unwrap(), ridx, "{what}: indices");
        let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(y.to_vec().unwrap()), bits(ry), "{what}: y");
    }
}

#[test]
fn max_pool_matches_reference() {
    let gpu = gpu();
    for (i, &(shape, k, s, p)) in CASES.iter().enumerate() {
        let what = format!("max_pool2d {shape:?} k{k} s{s} p{p}");
        let numel = shape.iter().product();
        // Quantised values create ties, checking that the first maximum wins.
        let x: Vec<f32> = random_vec(numel, 700 + i as u64)
            .iter()
            .map(|v| (v * 4.0).round())
            .collect();
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let (y, idx) = ops::max_pool2d(&tx, k, s, p).unwrap();
        let (ry, ridx) = reference::max_pool2d(&x, shape, k, s, p);
        assert_eq!(y.to_vec().unwrap(), ry, "{what}: y");
        assert_eq!(idx.to_vec_u32().unwrap(), ridx, "{what}: indices");
        let gy = random_vec(ry.len(), 800 + i as u64);
        let tgy = Tensor::from_slice(&gpu, y.shape(), &gy).unwrap();
        let gx = ops::max_pool2d_backward(&tgy, &idx, shape, k, s, p).unwrap();
        let rgx = reference::max_pool2d_backward(&gy, &ridx, shape);
        assert_close(
            &gx.to_vec().unwrap(),
            &rgx,
            1e-6,
            1e-6,
            &format!("{what}: gx"),
        );
    }
}

#[test]
fn max_pool_relu_matches_relu_then_max_pool() {
    let gpu = gpu();
    for (i, &(shape, k, s, p)) in CASES.iter().enumerate() {
        let what = format!("max_pool2d_relu {shape:?} k{k} s{s} p{p}");
        let numel = shape.iter().product();
        // Quantised values around zero: ties, zeros and windows without a positive value.
        let x: Vec<f32> = random_vec(numel, 900 + i as u64)
            .iter()
            .map(|v| (v * 2.0).round() - 0.5)
            .collect();
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let (y, idx) = ops::max_pool2d_relu(&tx, k, s, p).unwrap();
        let gy = random_vec(y.numel(), 1000 + i as u64);
        let (ry, rgx) = reference::relu_max_pool2d(&x, &gy, shape, k, s, p);
        assert_eq!(y.to_vec().unwrap(), ry, "{what}: y");
        // The indices are x's argmax, not relu(x)'s: a window without a positive value may
        // point elsewhere, and passes no gradient either way.
        let tgy = Tensor::from_slice(&gpu, y.shape(), &gy).unwrap();
        let gx = ops::max_pool2d_relu_backward(&tgy, &y, &idx, shape, k, s, p).unwrap();
        assert_close(
            &gx.to_vec().unwrap(),
            &rgx,
            1e-6,
            1e-6,
            &format!("{what}: gx"),
        );
        // The recorded op gives the same gradient.
        let tape = Tape::new();
        let xv = tape.leaf(tx.clone());
        let yv = xv.max_pool2d_relu(k, s, p).unwrap();
        let grads = tape.backward_with(&yv, tgy).unwrap();
        assert_close(
            &grads.get(&xv).unwrap().to_vec().unwrap(),
            &rgx,
            1e-6,
            1e-6,
            &format!("{what}: recorded gx"),
        );
    }
}

#[test]
fn max_pool_padding_is_minus_infinity() {
    // All-negative input: padding must never win.
    let gpu = gpu();
    let x: Vec<f32> = random_vec(2 * 5 * 5, 9)
        .iter()
        .map(|v| -2.0 - v.abs())
        .collect();
    let tx = Tensor::from_slice(&gpu, &[1, 2, 5, 5], &x).unwrap();
    let (y, idx) = ops::max_pool2d(&tx, 3, 2, 1).unwrap();
    let (ry, ridx) = reference::max_pool2d(&x, [1, 2, 5, 5], 3, 2, 1);
    assert!(y.to_vec().unwrap().iter().all(|&v| v <= -2.0));
    assert_eq!(y.to_vec().unwrap(), ry);
    assert_eq!(idx.to_vec_u32().unwrap(), ridx);
}

#[test]
fn avg_pool_matches_reference() {
    let gpu = gpu();
    for (i, &(shape, k, s, p)) in CASES.iter().enumerate() {
        let what = format!("avg_pool2d {shape:?} k{k} s{s} p{p}");
        let numel = shape.iter().product();
        let x = random_vec(numel, 900 + i as u64);
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let y = ops::avg_pool2d(&tx, k, s, p).unwrap();
        let ry = reference::avg_pool2d(&x, shape, k, s, p);
        assert_close(&y.to_vec().unwrap(), &ry, RTOL, ATOL, &format!("{what}: y"));
        let gy = random_vec(ry.len(), 1000 + i as u64);
        let tgy = Tensor::from_slice(&gpu, y.shape(), &gy).unwrap();
        let gx = ops::avg_pool2d_backward(&tgy, shape, k, s, p).unwrap();
        let rgx = reference::avg_pool2d_backward(&gy, shape, k, s, p);
        assert_close(
            &gx.to_vec().unwrap(),
            &rgx,
            RTOL,
            ATOL,
            &format!("{what}: gx"),
        );
    }
}

#[test]
fn avg_pool_counts_padding() {
    // count_include_pad = True: a corner 3x3 window with padding 1 over ones averages 4/9.
    let gpu = gpu();
    let tx = Tensor::full(&gpu, &[1, 1, 4, 4], 1.0).unwrap();
    let y = ops::avg_pool2d(&tx, 3, 2, 1).unwrap().to_vec().unwrap();
    assert_close(
        &y,
        &[4.0 / 9.0, 6.0 / 9.0, 6.0 / 9.0, 1.0],
        1e-6,
        1e-6,
        "avg_pool2d padding",
    );
}

#[test]
fn global_avg_pool_matches_reference() {
    let gpu = gpu();
    // Odd plane counts (not multiples of the 4 planes per workgroup), planes longer than 64 lanes
    // (the tree kernel) and of 64 values or fewer (a thread per plane; 350 planes, more than
    // one workgroup's 256).
    for (i, shape) in [
        [1, 3, 1, 1],
        [2, 5, 7, 7],
        [3, 7, 13, 11],
        [1, 1, 2, 3],
        [70, 5, 1, 1],
        [2, 3, 8, 8],
        [1, 2, 5, 13],
    ]
    .into_iter()
    .enumerate()
    {
        let numel = shape.iter().product();
        let x = random_vec(numel, 1100 + i as u64);
        let tx = Tensor::from_slice(&gpu, &shape, &x).unwrap();
        let y = ops::global_avg_pool(&tx).unwrap();
        assert_eq!(y.shape(), &shape[..2]);
        assert_close(
            &y.to_vec().unwrap(),
            &reference::global_avg_pool(&x, shape),
            RTOL,
            ATOL,
            "gap y",
        );
        let gy = random_vec(shape[0] * shape[1], 1200 + i as u64);
        let tgy = Tensor::from_slice(&gpu, &shape[..2], &gy).unwrap();
        let gx = ops::global_avg_pool_backward(&tgy, shape).unwrap();
        assert_close(
            &gx.to_vec().unwrap(),
            &reference::global_avg_pool_backward(&gy, shape),
            RTOL,
            ATOL,
            "gap gx",
        );
    }
}

#[test]
fn errors_name_the_op_and_shapes() {
    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[1, 2, 5, 5]).unwrap();
    let check = |r: resnet_wgpu::Result<Tensor>, op: &str, needle: &str| {
        let err = r.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{op}:")) && err.contains(needle),
            "{err}"
        );
    };
    check(
        ops::max_pool2d(&x, 0, 1, 0).map(|r| r.0),
        "max_pool2d",
        "kernel",
    );
    check(
        ops::max_pool2d(&x, 3, 0, 0).map(|r| r.0),
        "max_pool2d",
        "stride",
    );
    check(
        ops::max_pool2d(&x, 3, 2, 2).map(|r| r.0),
        "max_pool2d",
        "padding",
    );
    check(
        ops::max_pool2d(&x, 7, 1, 0).map(|r| r.0),
        "max_pool2d",
        "[1, 2, 5, 5]",
    );
    check(
        ops::avg_pool2d(&x, 3, 1, 2),
        "avg_pool2d",
        "half the kernel",
    );
    check(ops::avg_pool2d(&x, 6, 1, 0), "avg_pool2d", "output size");
    let flat = Tensor::zeros(&gpu, &[2, 25]).unwrap();
    check(ops::avg_pool2d(&flat, 3, 1, 1), "avg_pool2d", "[2, 25]");
    check(ops::global_avg_pool(&flat), "global_avg_pool", "[2, 25]");
    let ints = Tensor::from_u32(&gpu, &[1, 2, 5, 5], &[0; 50]).unwrap();
    check(
        ops::max_pool2d(&ints, 3, 1, 1).map(|r| r.0),
        "max_pool2d",
        "U32",
    );

    let (y, idx) = ops::max_pool2d(&x, 3, 2, 1).unwrap();
    let bad = Tensor::zeros(&gpu, &[1, 2, 2, 2]).unwrap();
    check(
        ops::max_pool2d_backward(&bad, &idx, [1, 2, 5, 5], 3, 2, 1),
        "max_pool2d_backward",
        "[1, 2, 3, 3]",
    );
    check(
        ops::max_pool2d_backward(&y, &y, [1, 2, 5, 5], 3, 2, 1),
        "max_pool2d_backward",
        "indices",
    );
    check(
        ops::avg_pool2d_backward(&bad, [1, 2, 5, 5], 3, 2, 1),
        "avg_pool2d_backward",
        "[1, 2, 3, 3]",
    );
    check(
        ops::global_avg_pool_backward(&bad, [1, 2, 5, 5]),
        "global_avg_pool_backward",
        "[1, 2]",
    );
}

#[test]
fn untracked_pooling_records_nothing() {
    let gpu = gpu();
    let x = Var::constant(Tensor::from_slice(&gpu, &[1, 1, 4, 4], &random_vec(16, 3)).unwrap());
    assert!(!x.max_pool2d(2, 2, 0).unwrap().requires_grad());
    assert!(!x.avg_pool2d(2, 2, 0).unwrap().requires_grad());
    assert!(!x.global_avg_pool().unwrap().requires_grad());
}

/// Central differences of `L = sum(pool(x) * r)` through the tape.
fn grad_check(op: &str, shape: [usize; 4], f: impl Fn(&Var) -> Var) {
    let gpu = gpu();
    let numel: usize = shape.iter().product();
    let x = random_vec(numel, 1300);
    let tape = Tape::new();
    let xv = tape.leaf(Tensor::from_slice(&gpu, &shape, &x).unwrap());
    let y = f(&xv);
    let r = random_vec(y.tensor().numel(), 1301);
    let grads = tape
        .backward_with(&y, Tensor::from_slice(&gpu, y.shape(), &r).unwrap())
        .unwrap();
    let analytic = grads.get(&xv).unwrap().to_vec().unwrap();
    let loss = |x: &[f32]| -> f64 {
        let y = f(&Var::constant(Tensor::from_slice(&gpu, &shape, x).unwrap()));
        y.tensor()
            .to_vec()
            .unwrap()
            .iter()
            .zip(&r)
            .map(|(y, r)| (*y as f64) * (*r as f64))
            .sum()
    };
    let eps = 1e-2f32;
    for i in 0..numel {
        let mut plus = x.clone();
        let mut minus = x.clone();
        plus[i] += eps;
        minus[i] -= eps;
        let num = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
        let a = analytic[i] as f64;
        assert!(
            (a - num).abs() <= 1e-2 + 1e-2 * num.abs(),
            "{op} grad check x[{i}]: analytic {a}, numeric {num}"
        );
    }
}

#[test]
fn gradient_check_avg_pool() {
    grad_check("avg_pool2d", [1, 2, 5, 6], |x| {
        x.avg_pool2d(3, 2, 1).unwrap()
    });
    grad_check("global_avg_pool", [2, 2, 3, 3], |x| {
        x.global_avg_pool().unwrap()
    });
}
