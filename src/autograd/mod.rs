//! Tape-based reverse-mode autograd.
//!
//! A [`Tape`] records, for each differentiable op, a closure holding exactly the tensors its
//! backward needs. [`Tape::backward`] replays the closures in reverse order, accumulating gradients
//! where one value feeds several consumers (a residual block's input does): either in a pass of
//! its own, or, where the op replayed second offers it ([`Accumulated`]), in the kernel that
//! computes that op's gradient. Ops on [`Var`]s that belong to no tape (inference) record
//! nothing and keep no activations alive.

use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A backward closure: upstream gradient in, one optional gradient per recorded input out.
///
/// The closure owns the upstream gradient. When no other handle shares its buffer
/// ([`Tensor::is_unique`]), an op may write an input's gradient of the same shape over it
/// instead of allocating one (ReLU and batch norm do): the replay never reads a gradient after
/// passing it on, so this only lowers the step's memory.
///
/// [`Var::record_accumulating`]'s closures also receive the inputs' gradients so far
/// ([`Accumulated`]).
pub type BackwardFn =
    Box<dyn for<'a> FnOnce(Tensor, &mut Accumulated<'a>) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    output: usize,
    inputs: Vec<Option<usize>>,
    backward: BackwardFn,
}

/// The gradients that a replayed op's inputs have received so far, from the consumers replayed
/// before it (a residual block's input: its shortcut's gradient when its first conv is
/// replayed).
///
/// An op that can add its own input gradient to another in the kernel that computes it (the
/// convolution's input gradient can) [`take`](Accumulated::take)s the gradient so far and
/// returns the sum as that input's gradient, written over it. The tape would otherwise add the
/// two in a pass of its own: reading both, writing one, where the fused kernel only reads the
/// one it adds to.
pub struct Accumulated<'a> {
    inputs: &'a [Option<usize>],
    grads: &'a mut HashMap<usize, Tensor>,
}

impl Accumulated<'_> {
    /// Input `i`'s gradient so far, when it has one and no other handle shares its buffer (so
    /// that writing the sum over it cannot be observed elsewhere). Taking it moves it out of
    /// the tape: the op must then return input `i`'s gradient with it added.
    pub fn take(&mut self, i: usize) -> Option<Tensor> {
        let id = self.inputs.get(i).copied().flatten()?;
        if !self.grads.get(&id)?.is_unique() {
            return None;
        }
        self.grads.remove(&id)
    }
}

#[derive(Default)]
struct TapeInner {
    nodes: Vec<Node>,
    leaves: HashSet<usize>,
    next_id: usize,
}

/// A recording of one forward pass. Create one per training step.
#[derive(Clone, Default)]
pub struct Tape(Rc<RefCell<TapeInner>>);

/// A tensor as seen by autograd: the value plus, when it is tracked, its tape and id.
#[derive(Clone)]
pub struct Var {
    tensor: Tensor,
    node: Option<(Tape, usize)>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, id {:?})", self.tensor, self.id())
    }
}

/// Gradients of the tape's leaves, returned by [`Tape::backward`].
#[derive(Default)]
pub struct Gradients {
    grads: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of a leaf, if it influenced the output.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        var.id().and_then(|id| self.grads.get(&id))
    }

    /// Remove and return the gradient of a leaf.
    pub fn take(&mut self, var: &Var) -> Option<Tensor> {
        var.id().and_then(|id| self.grads.remove(&id))
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    fn fresh_id(&self) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.next_id += 1;
        inner.next_id
    }

    /// A leaf whose gradient [`Tape::backward`] returns (a parameter or an input of interest).
    pub fn leaf(&self, tensor: Tensor) -> Var {
        let id = self.fresh_id();
        self.0.borrow_mut().leaves.insert(id);
        Var {
            tensor,
            node: Some((self.clone(), id)),
        }
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Back-propagate from a scalar (one-element) output, seeding its gradient with 1.
    pub fn backward(&self, output: &Var) -> Result<Gradients> {
        if output.tensor.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "output must hold one element, got shape {:?}; use backward_with",
                    output.shape()
                ),
            ));
        }
        let seed = Tensor::full(output.tensor.gpu(), output.shape(), 1.0)?;
        self.backward_with(output, seed)
    }

    /// Back-propagate from `output` with upstream gradient `grad`. Consumes the recording: the
    /// saved activations are released as the replay passes them.
    pub fn backward_with(&self, output: &Var, grad: Tensor) -> Result<Gradients> {
        let out_id = match &output.node {
            Some((tape, id)) if Rc::ptr_eq(&tape.0, &self.0) => *id,
            _ => {
                return Err(Error::shape(
                    "backward",
                    "the output was not recorded on this tape",
                ));
            }
        };
        if grad.shape() != output.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "gradient shape {:?} differs from output shape {:?}",
                    grad.shape(),
                    output.shape()
                ),
            ));
        }
        let (nodes, leaves) = {
            let mut inner = self.0.borrow_mut();
            (std::mem::take(&mut inner.nodes), inner.leaves.clone())
        };
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        grads.insert(out_id, grad);
        for node in nodes.into_iter().rev() {
            // Node outputs are never leaves, so their gradient is dropped once it is used.
            let Some(gout) = grads.remove(&node.output) else {
                continue;
            };
            let mut so_far = Accumulated {
                inputs: &node.inputs,
                grads: &mut grads,
            };
            let gins = (node.backward)(gout, &mut so_far)?;
            debug_assert_eq!(gins.len(), node.inputs.len());
            // A gradient so far that the op took is part of the one it returned, and no longer
            // in `grads`: what is there now (another input's, when one value was two inputs)
            // is added as usual.
            for (input, g) in node.inputs.iter().zip(gins) {
                let (Some(id), Some(g)) = (input, g) else {
                    continue;
                };
                let sum = match grads.remove(id) {
                    Some(acc) => accumulate(acc, g)?,
                    None => g,
                };
                grads.insert(*id, sum);
            }
        }
        grads.retain(|id, _| leaves.contains(id));
        Ok(Gradients { grads })
    }
}

/// `acc + g` for a value that feeds several consumers (a residual block's input: its shortcut and
/// its first conv), written over whichever of the two no other handle shares, or into a new
/// tensor when both are shared (an add's backward hands both its inputs one gradient).
fn accumulate(acc: Tensor, g: Tensor) -> Result<Tensor> {
    // axpy with alpha 1 adds exactly like add: 1 * g is g, and addition commutes.
    if acc.is_unique() {
        ops::axpy(&acc, 1.0, &g)?;
        Ok(acc)
    } else if g.is_unique() {
        ops::axpy(&g, 1.0, &acc)?;
        Ok(g)
    } else {
        ops::add(&acc, &g)
    }
}

impl Var {
    /// An untracked value (inference inputs, labels, frozen parameters).
    pub fn constant(tensor: Tensor) -> Var {
        Var { tensor, node: None }
    }

    /// The value.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Take the value out.
    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }

    /// The value's shape.
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    /// Whether this value is tracked by a tape.
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The id on its tape, if tracked.
    pub fn id(&self) -> Option<usize> {
        self.node.as_ref().map(|(_, id)| *id)
    }

    /// The tape, if tracked.
    pub fn tape(&self) -> Option<&Tape> {
        self.node.as_ref().map(|(t, _)| t)
    }

    /// Wrap `output` of an op over `inputs`. When any input is tracked, record `backward`, which
    /// must return one gradient (or `None`) per input, in order. Otherwise record nothing and drop
    /// the closure with everything it captured.
    pub fn record(
        op: &'static str,
        inputs: &[&Var],
        output: Tensor,
        backward: impl FnOnce(Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Result<Var> {
        Var::record_accumulating(op, inputs, output, move |gy, _| backward(gy))
    }

    /// [`Var::record`] for an op whose backward can add an input's gradient to the one that
    /// input has so far ([`Accumulated::take`]).
    pub fn record_accumulating(
        op: &'static str,
        inputs: &[&Var],
        output: Tensor,
        backward: impl for<'a> FnOnce(Tensor, &mut Accumulated<'a>) -> Result<Vec<Option<Tensor>>>
        + 'static,
    ) -> Result<Var> {
        let mut tape: Option<&Tape> = None;
        for v in inputs {
            if let Some((t, _)) = &v.node {
                match tape {
                    Some(first) if !Rc::ptr_eq(&first.0, &t.0) => {
                        return Err(Error::shape(op, "inputs were recorded on different tapes"));
                    }
                    _ => tape = Some(t),
                }
            }
        }
        let Some(tape) = tape.cloned() else {
            return Ok(Var::constant(output));
        };
        let id = tape.fresh_id();
        tape.0.borrow_mut().nodes.push(Node {
            output: id,
            inputs: inputs.iter().map(|v| v.id()).collect(),
            backward: Box::new(backward),
        });
        Ok(Var {
            tensor: output,
            node: Some((tape, id)),
        })
    }

    /// Whether any of `vars` is tracked: ops use it to skip saving tensors for inference.
    pub fn any_tracked(vars: &[&Var]) -> bool {
        vars.iter().any(|v| v.requires_grad())
    }
}
