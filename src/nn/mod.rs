//! Modules: parameters, layers and the ResNet builder.
