//! CPU twin of the batchnorm kernels.
