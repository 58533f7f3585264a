//! CPU twin of the optimizer kernels.
