//! safetensors load/save with torchvision names.
