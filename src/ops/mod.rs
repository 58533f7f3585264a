//! Ops: one file per family, forward and backward side by side.
//!
//! Each family has tensor-level functions (plain kernels, usable without autograd) and
//! [`Var`](crate::autograd::Var)-level methods that record their backward on a tape.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod reduce;
pub mod tune;

pub use batchnorm::*;
pub use conv::*;
pub use elementwise::*;
pub use linear::*;
pub use loss::*;
pub use pool::*;
pub use reduce::*;
pub use tune::{ConvKey, ConvPass, TunedConv};
