//! Modules: parameters, layers and the ResNet builder.
//!
//! [`resnet`] holds the architecture description ([`ResNetConfig`]), the torchvision parameter
//! layout ([`ParamSpec`]), the structure a forward pass walks ([`BlockSpec`], [`ConvSpec`]) and
//! host-side initialisation.

pub mod model;
pub mod resnet;

pub use model::{Bindings, Features, Param, ResNet};
pub use resnet::{Block, BlockSpec, ConvSpec, ParamKind, ParamSpec, ResNetConfig, Stem};
