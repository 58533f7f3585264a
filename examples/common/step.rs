//! One training step recorded by hand, as the bench times it and the full-size tests run it:
//! the trainer's step without its data, clipping and schedule.

use resnet_wgpu::nn::ResNet;
use resnet_wgpu::optim::{Optimizer, ParamUpdate};
use resnet_wgpu::{Result, Tape, Tensor, Var};

/// Record `net`'s training step on `x` and `labels`: the forward pass, the cross-entropy loss,
/// the backward pass and `optimizer`'s update of every parameter at `lr`. Returns the loss
/// (recorded, not yet submitted).
pub fn train_step(
    net: &mut ResNet,
    x: &Tensor,
    labels: &Tensor,
    optimizer: &mut dyn Optimizer,
    lr: f32,
) -> Result<Var> {
    let tape = Tape::new();
    let (logits, binds) = net.forward_train(&tape, x, |_| true)?;
    let loss = logits.cross_entropy(labels, 0.0)?;
    let grads = tape.backward(&loss)?;
    let updates: Vec<ParamUpdate<'_>> = net
        .params()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let grad = grads.get(binds.var(i))?;
            Some(ParamUpdate {
                slot: i,
                param: &p.tensor,
                grad,
                lr,
            })
        })
        .collect();
    optimizer.step(&updates)?;
    Ok(loss)
}
