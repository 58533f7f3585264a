//! # resnet-wgpu
//!
//! Train, fine-tune and run residual networks on any GPU through wgpu. Every numeric kernel is a
//! hand-written WGSL compute shader (see `shaders/`); a tape-based autograd engine records the
//! forward pass and replays it backwards by dispatching backward kernels.
//!
//! ```no_run
//! use resnet_wgpu::{Gpu, Tensor, Tape};
//! # fn main() -> resnet_wgpu::Result<()> {
//! let gpu = Gpu::new()?;
//! let tape = Tape::new();
//! let x = tape.leaf(Tensor::from_slice(&gpu, &[2, 2], &[1.0, -2.0, 3.0, -4.0])?);
//! let y = x.relu()?.sum()?;
//! let grads = tape.backward(&y)?;
//! assert_eq!(grads.get(&x).unwrap().to_vec()?, vec![1.0, 0.0, 1.0, 0.0]);
//! # Ok(()) }
//! ```

pub mod autograd;
pub mod classify;
pub mod data;
pub mod error;
pub mod gpu;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod reference;
pub mod rng;
pub mod tensor;
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use autograd::{Gradients, Tape, Var};
pub use error::{Error, Result};
pub use gpu::{
    ConvAlgo, ConvOrder, ConvPrecision, ConvStaging, Gpu, GpuInfo, GpuOptions, MmaConfig, PlanFor,
    WinogradTile,
};
pub use rng::Rng;
pub use tensor::{DType, Tensor};
