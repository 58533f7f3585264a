//! CPU twin of the pool kernels.
