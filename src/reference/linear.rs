//! CPU twin of the linear kernels.
