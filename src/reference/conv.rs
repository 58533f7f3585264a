//! CPU twin of the conv kernels.
