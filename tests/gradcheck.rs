//! Central-difference gradient check of a small composed graph through the tape:
//! conv -> batch norm -> relu -> add (residual, with a 1x1 conv shortcut) -> max pool ->
//! global average pool -> linear -> cross-entropy.

mod common;
use common::*;
use resnet_wgpu::ops::BatchNorm;
use resnet_wgpu::{Tape, Tensor, Var};

struct Inputs {
    x: Vec<f32>,
    w1: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w2: Vec<f32>,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

const X: [usize; 4] = [2, 3, 7, 7];
const W1: [usize; 4] = [5, 3, 3, 3];
const W2: [usize; 4] = [5, 3, 1, 1];
const CLASSES: usize = 4;

/// Loss of the graph; with `tape`, every input is a leaf and the gradients are returned too.
fn run(inp: &Inputs, with_grads: bool) -> (f64, Vec<Vec<f32>>) {
    let gpu = gpu();
    let tape = Tape::new();
    let t = |shape: &[usize], v: &Vec<f32>| {
        let t = Tensor::from_slice(&gpu, shape, v).unwrap();
        if with_grads {
            tape.leaf(t)
        } else {
            Var::constant(t)
        }
    };
    let x = t(&X, &inp.x);
    let w1 = t(&W1, &inp.w1);
    let gamma = t(&[5], &inp.gamma);
    let beta = t(&[5], &inp.beta);
    let w2 = t(&W2, &inp.w2);
    let fc_w = t(&[CLASSES, 5], &inp.fc_w);
    let fc_b = t(&[CLASSES], &inp.fc_b);
    let rm = Tensor::zeros(&gpu, &[5]).unwrap();
    let rv = Tensor::full(&gpu, &[5], 1.0).unwrap();
    let labels = Tensor::from_u32(&gpu, &[2], &[1, 3]).unwrap();

    let h = x.conv2d(&w1, None, 1, 1).unwrap();
    let h = h
        .batch_norm(&gamma, &beta, &rm, &rv, BatchNorm::train())
        .unwrap()
        .relu()
        .unwrap();
    let shortcut = x.conv2d(&w2, None, 1, 0).unwrap();
    let h = h.add(&shortcut).unwrap();
    let h = h.max_pool2d(3, 2, 1).unwrap().global_avg_pool().unwrap();
    let loss = h
        .linear(&fc_w, Some(&fc_b))
        .unwrap()
        .cross_entropy(&labels, 0.0)
        .unwrap();
    let value = loss.tensor().to_vec().unwrap()[0] as f64;
    if !with_grads {
        return (value, vec![]);
    }
    let grads = tape.backward(&loss).unwrap();
    let g = [&x, &w1, &gamma, &beta, &w2, &fc_w, &fc_b]
        .iter()
        .map(|v| {
            grads
                .get(v)
                .expect("every input gets a gradient")
                .to_vec()
                .unwrap()
        })
        .collect();
    (value, g)
}

#[test]
fn composed_graph_matches_central_differences() {
    let inp = Inputs {
        x: random_vec(X.iter().product(), 1),
        w1: random_vec(W1.iter().product(), 2)
            .iter()
            .map(|v| v * 0.4)
            .collect(),
        gamma: random_vec(5, 3).iter().map(|v| 1.0 + 0.3 * v).collect(),
        beta: random_vec(5, 4).iter().map(|v| 0.2 * v).collect(),
        w2: random_vec(W2.iter().product(), 5)
            .iter()
            .map(|v| v * 0.5)
            .collect(),
        fc_w: random_vec(CLASSES * 5, 6),
        fc_b: random_vec(CLASSES, 7).iter().map(|v| 0.1 * v).collect(),
    };
    let (_, grads) = run(&inp, true);
    let eps = 3e-3f32;
    let mut checked = 0;
    for (which, grad) in grads.iter().enumerate() {
        let len = grad.len();
        // Up to 6 coordinates per input, spread over the tensor.
        for k in 0..len.min(6) {
            let i = (k * 7919 + which * 31) % len;
            let perturbed = |delta: f32| {
                let mut p = Inputs {
                    x: inp.x.clone(),
                    w1: inp.w1.clone(),
                    gamma: inp.gamma.clone(),
                    beta: inp.beta.clone(),
                    w2: inp.w2.clone(),
                    fc_w: inp.fc_w.clone(),
                    fc_b: inp.fc_b.clone(),
                };
                let v = [
                    &mut p.x,
                    &mut p.w1,
                    &mut p.gamma,
                    &mut p.beta,
                    &mut p.w2,
                    &mut p.fc_w,
                    &mut p.fc_b,
                ];
                let target = v.into_iter().nth(which).unwrap();
                target[i] += delta;
                run(&p, false).0
            };
            let numeric = (perturbed(eps) - perturbed(-eps)) / (2.0 * eps as f64);
            let analytic = grad[i] as f64;
            let tol = 2e-3 + 3e-2 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() <= tol,
                "input {which} element {i}: analytic {analytic:.6}, numeric {numeric:.6}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30);
}
