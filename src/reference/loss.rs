//! CPU twin of the loss kernels.
