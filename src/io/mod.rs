//! Host-side state dicts and safetensors load/save with torchvision names.
//!
//! - [`StateDict`] / [`HostTensor`]: named host tensors in order (f32 or int64).
//! - [`load_safetensors_bytes`] (everywhere), [`load_safetensors`] and [`save_safetensors`]
//!   (native; atomic), [`to_safetensors_bytes`].
//! - [`infer_config`]: the ResNet architecture of a torchvision-style state dict;
//!   [`check_against`]: strict or non-strict matching against a configuration.

mod format;
mod infer;
mod state_dict;

#[cfg(not(target_arch = "wasm32"))]
pub use format::write_atomically;
#[cfg(not(target_arch = "wasm32"))]
pub use format::{load_safetensors, save_safetensors};
pub use format::{
    load_safetensors_bytes, to_safetensors_bytes, to_safetensors_bytes_with_metadata,
};
pub use infer::{
    LoadReport, Mismatch, WRAPPER_PREFIXES, check_against, infer_config, strip_wrapper_prefix,
    wrapper_prefix,
};
pub use state_dict::{HostData, HostTensor, StateDict};
