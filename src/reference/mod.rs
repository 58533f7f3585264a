//! Plain CPU implementations of every op, the twins of the WGSL kernels. Tests compare the GPU
//! against these on random shapes; they are also handy for debugging. All tensors are flat
//! row-major `f32` slices with explicit shapes.

pub mod batchnorm;
pub mod conv;
pub mod elementwise;
pub mod f16;
pub mod linear;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod winograd;

pub use batchnorm::*;
pub use conv::*;
pub use elementwise::*;
pub use f16::*;
pub use linear::*;
pub use loss::*;
pub use optim::*;
pub use pool::*;
pub use winograd::*;
