//! Optimizers (SGD with momentum/Nesterov, Adam, AdamW) and learning-rate schedules.
