//! Matrix multiply and the linear layer: PyTorch goldens, CPU reference on awkward shapes, tape.

mod common;
use common::*;
use resnet_wgpu::{Tape, Tensor, Var, ops, reference};

#[test]
fn linear_matches_golden_via_tensor_api() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let (x, w, b, gy) = (
        g.tensor(&gpu, "linear.x"),
        g.tensor(&gpu, "linear.w"),
        g.tensor(&gpu, "linear.b"),
        g.tensor(&gpu, "linear.gy"),
    );
    let y = ops::linear(&x, &w, Some(&b)).unwrap();
    assert_eq!(y.shape(), g.shape("linear.y").as_slice());
    assert_close(
        &y.to_vec().unwrap(),
        &g.f32("linear.y"),
        1e-4,
        1e-5,
        "linear.y",
    );
    let gx = ops::matmul(&gy, &w, false, false).unwrap();
    let gw = ops::matmul(&gy, &x, true, false).unwrap();
    let gb = ops::sum_channels(&gy).unwrap();
    assert_close(
        &gx.to_vec().unwrap(),
        &g.f32("linear.gx"),
        1e-4,
        1e-5,
        "linear.gx",
    );
    assert_close(
        &gw.to_vec().unwrap(),
        &g.f32("linear.gw"),
        1e-4,
        1e-5,
        "linear.gw",
    );
    assert_close(
        &gb.to_vec().unwrap(),
        &g.f32("linear.gb"),
        1e-4,
        1e-5,
        "linear.gb",
    );
}

#[test]
fn linear_matches_golden_via_tape() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    let tape = Tape::new();
    let x = tape.leaf(g.tensor(&gpu, "linear.x"));
    let w = tape.leaf(g.tensor(&gpu, "linear.w"));
    let b = tape.leaf(g.tensor(&gpu, "linear.b"));
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_close(
        &y.tensor().to_vec().unwrap(),
        &g.f32("linear.y"),
        1e-4,
        1e-5,
        "linear.y",
    );
    let grads = tape.backward_with(&y, g.tensor(&gpu, "linear.gy")).unwrap();
    for (v, name) in [(&x, "gx"), (&w, "gw"), (&b, "gb")] {
        let got = grads
            .get(v)
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_vec()
            .unwrap();
        assert_close(&got, &g.f32(&format!("linear.{name}")), 1e-4, 1e-5, name);
    }
}

#[test]
fn matmul_all_transposes_match_reference() {
    let gpu = gpu();
    let shapes = [
        (1, 1, 1),
        (7, 65, 130),
        (130, 7, 65),
        (65, 130, 1),
        (1, 200, 7),
        (64, 64, 64),
        (3, 1, 130),
        (129, 17, 66),
        // At most four rows with B transposed take the matvec kernel: K below, at and past its
        // 32 lanes, N across its eight columns per workgroup, and a classifier's 2048 x 1000.
        (2, 31, 9),
        (4, 33, 17),
        (4, 64, 8),
        (1, 2048, 1000),
    ];
    let mut seed = 100;
    for &(m, k, n) in &shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            seed += 1;
            let a = random_vec(m * k, seed);
            let b = random_vec(k * n, seed + 1000);
            let ashape = if ta { [k, m] } else { [m, k] };
            let bshape = if tb { [n, k] } else { [k, n] };
            let at = Tensor::from_slice(&gpu, &ashape, &a).unwrap();
            let bt = Tensor::from_slice(&gpu, &bshape, &b).unwrap();
            let c = ops::matmul(&at, &bt, ta, tb).unwrap();
            assert_eq!(c.shape(), &[m, n]);
            let what = format!("matmul m {m} k {k} n {n} ta {ta} tb {tb}");
            let expected = reference::matmul(&a, &b, m, k, n, ta, tb);
            // Rounding grows with the length of the sums (K = 2048 cancels down to 1e-2 here).
            let atol = 1e-5 * (k as f32 / 128.0).max(1.0);
            assert_close(&c.to_vec().unwrap(), &expected, 1e-4, atol, &what);
        }
    }
}

#[test]
fn matmul_splits_row_tiles_over_z() {
    // More than 65,535 row tiles of 64 rows: the grid spills into z.
    let gpu = gpu();
    let m = 65_535 * 64 + 70;
    let a: Vec<f32> = (0..m).map(|i| (i % 7) as f32).collect();
    let at = Tensor::from_slice(&gpu, &[m, 1], &a).unwrap();
    let bt = Tensor::from_slice(&gpu, &[1, 2], &[1.0, -2.0]).unwrap();
    let c = ops::matmul(&at, &bt, false, false)
        .unwrap()
        .to_vec()
        .unwrap();
    for (i, &v) in a
        .iter()
        .enumerate()
        .step_by(997)
        .chain(a.iter().enumerate().skip(m - 100))
    {
        assert_eq!([c[2 * i], c[2 * i + 1]], [v, -2.0 * v], "row {i}");
    }
}

#[test]
fn matvec_spills_its_workgroups_into_y() {
    // One row against 600,000 columns: 75,000 workgroups of eight columns, past the 65,535 of
    // one grid dimension.
    let gpu = gpu();
    let n = 600_000;
    let w: Vec<f32> = (0..2 * n).map(|i| (i % 13) as f32 - 6.0).collect();
    let at = Tensor::from_slice(&gpu, &[1, 2], &[0.5, -2.0]).unwrap();
    let bt = Tensor::from_slice(&gpu, &[n, 2], &w).unwrap();
    let c = ops::matmul(&at, &bt, false, true)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(c.len(), n);
    for (i, &v) in c.iter().enumerate() {
        assert_eq!(v, 0.5 * w[2 * i] - 2.0 * w[2 * i + 1], "column {i}");
    }
}

#[test]
fn linear_without_bias_and_random_shapes_match_reference() {
    let gpu = gpu();
    for (i, &(n, fi, o, bias)) in [
        (1, 1, 1, true),
        (5, 130, 10, true),
        (66, 7, 65, false),
        (2, 512, 3, true),
        (4, 300, 1000, true),
        (3, 77, 40, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 500 + i as u64 * 10;
        let x = random_vec(n * fi, seed);
        let w = random_vec(o * fi, seed + 1);
        let b = random_vec(o, seed + 2);
        let gy = random_vec(n * o, seed + 3);
        let tape = Tape::new();
        let xv = tape.leaf(Tensor::from_slice(&gpu, &[n, fi], &x).unwrap());
        let wv = tape.leaf(Tensor::from_slice(&gpu, &[o, fi], &w).unwrap());
        let bv = tape.leaf(Tensor::from_slice(&gpu, &[o], &b).unwrap());
        let y = xv.linear(&wv, bias.then_some(&bv)).unwrap();
        let what = format!("linear n {n} i {fi} o {o} bias {bias}");
        let ey = reference::linear(&x, &w, bias.then_some(b.as_slice()), n, fi, o);
        assert_close(&y.tensor().to_vec().unwrap(), &ey, 1e-4, 1e-5, &what);
        let grads = tape
            .backward_with(&y, Tensor::from_slice(&gpu, &[n, o], &gy).unwrap())
            .unwrap();
        let (gx, gw, gb) = reference::linear_backward(&x, &w, &gy, n, fi, o);
        assert_close(
            &grads.get(&xv).unwrap().to_vec().unwrap(),
            &gx,
            1e-4,
            1e-5,
            &format!("{what} gx"),
        );
        assert_close(
            &grads.get(&wv).unwrap().to_vec().unwrap(),
            &gw,
            1e-4,
            1e-5,
            &format!("{what} gw"),
        );
        if bias {
            assert_close(
                &grads.get(&bv).unwrap().to_vec().unwrap(),
                &gb,
                1e-4,
                1e-5,
                &format!("{what} gb"),
            );
        } else {
            assert!(grads.get(&bv).is_none());
        }
    }
}

#[test]
fn untracked_inputs_get_no_gradient() {
    let gpu = gpu();
    let tape = Tape::new();
    let x = Var::constant(Tensor::from_slice(&gpu, &[2, 3], &random_vec(6, 1)).unwrap());
    let w = tape.leaf(Tensor::from_slice(&gpu, &[4, 3], &random_vec(12, 2)).unwrap());
    let b = Var::constant(Tensor::zeros(&gpu, &[4]).unwrap());
    let loss = x.linear(&w, Some(&b)).unwrap().sum().unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.len(), 1);
    // d sum(x wᵀ) / dw[o, i] = sum_n x[n, i]
    let xs = x.tensor().to_vec().unwrap();
    let col: Vec<f32> = (0..3).map(|i| xs[i] + xs[3 + i]).collect();
    let expected: Vec<f32> = (0..4).flat_map(|_| col.clone()).collect();
    assert_close(
        &grads.get(&w).unwrap().to_vec().unwrap(),
        &expected,
        1e-5,
        1e-6,
        "gw",
    );
    // Inference: nothing recorded.
    let y = x.linear(&Var::constant(w.tensor().clone()), None).unwrap();
    assert!(!y.requires_grad());
}

#[test]
fn var_matmul_gradients_match_reference() {
    let gpu = gpu();
    let (m, k, n) = (5, 70, 9);
    let a = random_vec(m * k, 7);
    let b = random_vec(k * n, 8);
    let gy = random_vec(m * n, 9);
    let tape = Tape::new();
    let av = tape.leaf(Tensor::from_slice(&gpu, &[m, k], &a).unwrap());
    let bv = tape.leaf(Tensor::from_slice(&gpu, &[k, n], &b).unwrap());
    let c = av.matmul(&bv).unwrap();
    assert_close(
        &c.tensor().to_vec().unwrap(),
        &reference::matmul(&a, &b, m, k, n, false, false),
        1e-4,
        1e-5,
        "c",
    );
    let grads = tape
        .backward_with(&c, Tensor::from_slice(&gpu, &[m, n], &gy).unwrap())
        .unwrap();
    let ga = reference::matmul(&gy, &b, m, n, k, false, true);
    let gb = reference::matmul(&a, &gy, k, m, n, true, false);
    assert_close(
        &grads.get(&av).unwrap().to_vec().unwrap(),
        &ga,
        1e-4,
        1e-5,
        "ga",
    );
    assert_close(
        &grads.get(&bv).unwrap().to_vec().unwrap(),
        &gb,
        1e-4,
        1e-5,
        "gb",
    );
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[3, 4]).unwrap();
    let b = Tensor::zeros(&gpu, &[5, 6]).unwrap();
    let err = ops::matmul(&a, &b, false, false).unwrap_err().to_string();
    assert!(
        err.starts_with("matmul:") && err.contains("[3, 4]") && err.contains("[5, 6]"),
        "{err}"
    );
    assert!(ops::matmul(&a, &Tensor::zeros(&gpu, &[3, 6]).unwrap(), true, false).is_ok());
    let v = Tensor::zeros(&gpu, &[4]).unwrap();
    assert!(
        ops::matmul(&a, &v, false, false)
            .unwrap_err()
            .to_string()
            .contains("rank 2")
    );
    let labels = Tensor::from_u32(&gpu, &[3, 4], &[0; 12]).unwrap();
    assert!(ops::matmul(&labels, &a, false, true).is_err());
    let err = ops::linear(&a, &b, None).unwrap_err().to_string();
    assert!(
        err.starts_with("linear:") && err.contains("4 features"),
        "{err}"
    );
    let w = Tensor::zeros(&gpu, &[6, 4]).unwrap();
    let err = ops::linear(&a, &w, Some(&Tensor::zeros(&gpu, &[5]).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias") && err.contains("6"), "{err}");
}
