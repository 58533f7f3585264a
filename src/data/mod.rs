//! Data sets, augmentation and batching.
