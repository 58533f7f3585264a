//! The training loop: steps, epochs, validation, test evaluation, metrics and checkpoints.
//!
//! [`Trainer`] owns a [`ResNet`], an optimizer and a learning-rate schedule. Its core
//! ([`Trainer::step_async`], [`Trainer::evaluate_async`]) is async and runs unchanged on the web;
//! native code gets blocking wrappers, a prefetching loader and atomic checkpoints.

use crate::data::{Augment, Batch, Dataset, epoch_batches};
use crate::io::{HostData, HostTensor, StateDict};
use crate::nn::{Param, ResNet};
use crate::optim::{AdamW, Optimizer, ParamUpdate, Schedule, Sgd, clip_grad_norm};
use crate::tensor::Tensor;
use crate::{Error, Result, Rng, Tape};
use std::collections::HashMap;

/// Which optimizer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// SGD with momentum (coupled weight decay, as PyTorch).
    Sgd,
    /// Adam with L2 (coupled) weight decay.
    Adam,
    /// AdamW (decoupled weight decay).
    AdamW,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(Error::Invalid(format!(
                "unknown optimizer {s:?}: expected sgd, adam or adamw"
            ))),
        }
    }
}

/// Learning-rate schedule choice, resolved against the number of steps by [`TrainConfig::schedule`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    /// Constant learning rate.
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs.
    Step { every_epochs: usize, gamma: f32 },
    /// Linear warm-up for `warmup_epochs`, then cosine decay to zero.
    Cosine { warmup_epochs: usize },
    /// One-cycle (PyTorch's OneCycleLR, cosine annealing).
    OneCycle,
}

impl std::str::FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(ScheduleKind::Constant),
            "step" => Ok(ScheduleKind::Step {
                every_epochs: 30,
                gamma: 0.1,
            }),
            "cosine" => Ok(ScheduleKind::Cosine { warmup_epochs: 1 }),
            "onecycle" | "one-cycle" => Ok(ScheduleKind::OneCycle),
            _ => Err(Error::Invalid(format!(
                "unknown schedule {s:?}: expected constant, step, cosine or onecycle"
            ))),
        }
    }
}

/// Everything that shapes a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f32,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay (coupled for SGD/Adam, decoupled for AdamW).
    pub weight_decay: f32,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Clip gradients to this global L2 norm.
    pub clip_grad_norm: Option<f32>,
    /// Seed of shuffling, augmentation and initialisation.
    pub seed: u64,
    /// Training-time augmentation and normalisation.
    pub augment: Augment,
    /// Multiplier of the learning rate of everything but the head (fine-tuning).
    pub backbone_lr_mult: f32,
    /// Train only the classifier head.
    pub freeze_backbone: bool,
}

impl TrainConfig {
    /// Defaults for a small grayscale data set (Fashion-MNIST's statistics).
    pub fn new(mean: &[f32], std: &[f32]) -> TrainConfig {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            schedule: ScheduleKind::OneCycle,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            seed: 0,
            augment: Augment::crop_flip(mean, std),
            backbone_lr_mult: 1.0,
            freeze_backbone: false,
        }
    }

    /// The schedule over `steps_per_epoch * epochs` steps.
    pub fn schedule(&self, steps_per_epoch: usize) -> Schedule {
        let total = (steps_per_epoch * self.epochs).max(1);
        match self.schedule {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Step {
                every_epochs,
                gamma,
            } => Schedule::Step {
                step_size: (every_epochs * steps_per_epoch).max(1),
                gamma,
            },
            ScheduleKind::Cosine { warmup_epochs } => Schedule::Cosine {
                warmup: warmup_epochs * steps_per_epoch,
                total,
                min_lr_frac: 0.0,
            },
            ScheduleKind::OneCycle => Schedule::OneCycle {
                total,
                pct_start: 0.25,
                div_factor: 25.0,
                final_div_factor: 1e4,
            },
        }
    }

    fn make_optimizer(&self) -> Box<dyn Optimizer> {
        match self.optimizer {
            OptimizerKind::Sgd => {
                Box::new(Sgd::new(self.momentum, self.nesterov, self.weight_decay))
            }
            OptimizerKind::Adam => Box::new(AdamW::adam((0.9, 0.999), 1e-8, self.weight_decay)),
            OptimizerKind::AdamW => Box::new(AdamW::adamw((0.9, 0.999), 1e-8, self.weight_decay)),
        }
    }
}

/// Loss and accuracy of one step or one evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy (when there are more than 5 classes).
    pub top5: Option<f64>,
    /// Number of images.
    pub count: usize,
}

/// Accumulates loss and top-k hits over batches.
#[derive(Clone, Debug, Default)]
struct Tally {
    loss_sum: f64,
    top1: usize,
    top5: usize,
    count: usize,
    classes: usize,
}

impl Tally {
    fn add(&mut self, mean_loss: f32, logits: &[f32], labels: &[u32]) {
        let k = logits.len() / labels.len().max(1);
        self.classes = k;
        for (row, &label) in logits.chunks(k).zip(labels) {
            let target = row[label as usize];
            // Rank = number of classes scoring strictly higher (ties count in the label's favour).
            let rank = row.iter().filter(|&&v| v > target).count();
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
        }
        self.loss_sum += mean_loss as f64 * labels.len() as f64;
        self.count += labels.len();
    }

    fn metrics(&self) -> Metrics {
        let n = self.count.max(1) as f64;
        Metrics {
            loss: self.loss_sum / n,
            accuracy: self.top1 as f64 / n,
            top5: (self.classes > 5).then(|| self.top5 as f64 / n),
            count: self.count,
        }
    }
}

/// One epoch's record, as written by `--metrics-json` (one JSON object per line).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training top-1 accuracy (on augmented images, in training mode).
    pub train_accuracy: f64,
    /// Validation loss (when there is a validation set).
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy.
    pub val_accuracy: Option<f64>,
    /// Validation top-5 accuracy.
    pub val_top5: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Training throughput.
    pub images_per_s: f64,
    /// Seconds the epoch took.
    pub seconds: f64,
    /// Test accuracy (in the last record, when a test set was given).
    pub test_accuracy: Option<f64>,
    /// Test loss (in the last record).
    pub test_loss: Option<f64>,
}

/// The training state: model, optimizer, schedule position and RNG.
pub struct Trainer {
    /// The network being trained.
    pub model: ResNet,
    /// The run's settings.
    pub config: TrainConfig,
    optimizer: Box<dyn Optimizer>,
    schedule: Schedule,
    steps_per_epoch: usize,
    step: usize,
    epoch: usize,
    rng: Rng,
}

impl Trainer {
    /// A trainer for `model` that will run `steps_per_epoch` steps per epoch.
    pub fn new(model: ResNet, config: TrainConfig, steps_per_epoch: usize) -> Trainer {
        let optimizer = config.make_optimizer();
        let schedule = config.schedule(steps_per_epoch);
        let rng = Rng::new(config.seed);
        Trainer {
            model,
            config,
            optimizer,
            schedule,
            steps_per_epoch,
            step: 0,
            epoch: 0,
            rng,
        }
    }

    /// Steps per epoch for a data set of `len` images (the last partial batch is dropped).
    pub fn steps_for(len: usize, batch_size: usize) -> usize {
        (len / batch_size.max(1)).max(1)
    }

    /// Epochs completed.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f32 {
        self.schedule.lr_at(self.config.lr, self.step)
    }

    /// Whether `p` is trained: everything, or only the head when the backbone is frozen.
    fn trains(freeze_backbone: bool, p: &Param) -> bool {
        p.is_trainable() && (!freeze_backbone || p.is_head())
    }

    /// One optimisation step on `batch`. Returns the batch's loss and accuracy.
    pub async fn step_async(&mut self, batch: &Batch) -> Result<Metrics> {
        self.submit_step(batch)?.finish_async().await
    }

    /// Record and submit one optimisation step on `batch` without waiting for it: the returned
    /// [`PendingStep`] yields the loss and accuracy once the GPU is done. Recording the next step
    /// while this one runs keeps the GPU busy (see [`Trainer::train_epoch_async`]); the results
    /// are exactly those of [`Trainer::step_async`].
    pub fn submit_step(&mut self, batch: &Batch) -> Result<PendingStep> {
        let gpu = self.model.gpu().clone();
        let n = batch.labels.len();
        check_labels(&batch.labels, self.model.config().num_classes)?;
        let x = Tensor::from_slice(&gpu, &batch.shape, &batch.images)?;
        let y = Tensor::from_u32(&gpu, &[n], &batch.labels)?;
        let tape = Tape::new();
        let freeze = self.config.freeze_backbone;
        let (logits, binds) = self
            .model
            .forward_train(&tape, &x, |p| Self::trains(freeze, p))?;
        let loss = logits.cross_entropy(&y, self.config.label_smoothing)?;
        let grads = tape.backward(&loss)?;
        let lr = self.lr();
        let mut slots = Vec::new();
        for (i, p) in self.model.params().iter().enumerate() {
            if !Self::trains(freeze, p) {
                continue;
            }
            if let Some(g) = grads.get(binds.var(i)) {
                slots.push((i, g.clone()));
            }
        }
        if let Some(max_norm) = self.config.clip_grad_norm {
            let refs: Vec<&Tensor> = slots.iter().map(|(_, g)| g).collect();
            clip_grad_norm(&refs, max_norm)?;
        }
        let params = self.model.params();
        let updates: Vec<ParamUpdate<'_>> = slots
            .iter()
            .map(|(i, g)| {
                let p = &params[*i];
                let mult = if p.is_head() {
                    1.0
                } else {
                    self.config.backbone_lr_mult
                };
                ParamUpdate {
                    slot: *i,
                    param: &p.tensor,
                    grad: g,
                    lr: lr * mult,
                }
            })
            .collect();
        self.optimizer.step(&updates)?;
        drop(updates);
        self.step += 1;
        Ok(PendingStep {
            values: Tensor::start_read_all(&[loss.tensor(), logits.tensor()])?,
            labels: batch.labels.clone(),
            step: self.step,
            lr,
        })
    }

    /// Blocking [`Trainer::step_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(&mut self, batch: &Batch) -> Result<Metrics> {
        pollster::block_on(self.step_async(batch))
    }

    /// Eval-mode loss and accuracy over `data`, normalised with the training mean/std.
    pub async fn evaluate_async(&mut self, data: &Dataset, batch_size: usize) -> Result<Metrics> {
        evaluate_async(
            &mut self.model,
            data,
            &normalize_of(&self.config.augment),
            batch_size,
        )
        .await
    }

    /// Blocking [`Trainer::evaluate_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate(&mut self, data: &Dataset, batch_size: usize) -> Result<Metrics> {
        pollster::block_on(self.evaluate_async(data, batch_size))
    }

    /// [`Trainer::evaluate`], calling `on_batch` with the metrics so far after each batch (for
    /// progress; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_with(
        &mut self,
        data: &Dataset,
        batch_size: usize,
        on_batch: impl FnMut(&Metrics),
    ) -> Result<Metrics> {
        let normalize = normalize_of(&self.config.augment);
        evaluate_with(&mut self.model, data, &normalize, batch_size, on_batch)
    }

    /// Plan the next epoch's batches (shuffled and augmented from the trainer's RNG).
    pub fn epoch_batches<'a>(
        &mut self,
        data: &'a Dataset,
    ) -> Result<crate::data::EpochBatches<'a>> {
        epoch_batches(
            data,
            self.config.batch_size,
            Some(&mut self.rng),
            &self.config.augment,
            true,
        )
    }

    /// Prefetching version of [`Trainer::epoch_batches`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prefetch_epoch(
        &mut self,
        data: std::sync::Arc<Dataset>,
    ) -> Result<crate::data::PrefetchBatches> {
        crate::data::prefetch_batches(
            data,
            self.config.batch_size,
            Some(&mut self.rng),
            &self.config.augment,
            true,
            4,
        )
    }

    /// Mark an epoch complete.
    pub fn finish_epoch(&mut self) {
        self.epoch += 1;
    }

    /// Train one epoch on `data` (shuffled and augmented from the trainer's RNG), calling
    /// `on_batch` after each step; returns the epoch's training loss and accuracy.
    pub async fn train_epoch_async(
        &mut self,
        data: &Dataset,
        mut on_batch: impl FnMut(&Metrics),
    ) -> Result<Metrics> {
        let batches = self.epoch_batches(data)?;
        let metrics = self.run_steps_async(batches, |m, _| on_batch(m)).await?;
        self.finish_epoch();
        Ok(metrics)
    }

    /// One optimisation step per batch, keeping one step in flight: step t+1 is recorded while
    /// the GPU runs step t. `on_step` gets each step's loss and accuracy and its learning rate, in
    /// order; returns the metrics of all the steps together. Does not end the epoch.
    pub async fn run_steps_async(
        &mut self,
        batches: impl IntoIterator<Item = Batch>,
        mut on_step: impl FnMut(&Metrics, f32),
    ) -> Result<Metrics> {
        let mut tally = Tally::default();
        let mut take = |m: Metrics, lr: f32| {
            tally.loss_sum += m.loss * m.count as f64;
            tally.top1 += (m.accuracy * m.count as f64).round() as usize;
            tally.count += m.count;
            on_step(&m, lr);
        };
        let mut in_flight: Option<PendingStep> = None;
        for batch in batches {
            let next = self.submit_step(&batch)?;
            if let Some(done) = in_flight.replace(next) {
                let lr = done.lr;
                take(done.finish_async().await?, lr);
            }
        }
        if let Some(done) = in_flight {
            let lr = done.lr;
            take(done.finish_async().await?, lr);
        }
        Ok(tally.metrics())
    }

    /// Blocking [`Trainer::run_steps_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_steps(
        &mut self,
        batches: impl IntoIterator<Item = Batch>,
        on_step: impl FnMut(&Metrics, f32),
    ) -> Result<Metrics> {
        pollster::block_on(self.run_steps_async(batches, on_step))
    }

    /// Blocking [`Trainer::train_epoch_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train_epoch(
        &mut self,
        data: &Dataset,
        on_batch: impl FnMut(&Metrics),
    ) -> Result<Metrics> {
        pollster::block_on(self.train_epoch_async(data, on_batch))
    }

    /// The whole training state as a state dict plus metadata (for checkpoints).
    pub async fn checkpoint_async(&self) -> Result<(StateDict, HashMap<String, String>)> {
        let mut dict = StateDict::new();
        for (name, t) in self.model.state_dict_async().await?.iter() {
            dict.insert(format!("model.{name}"), t.clone());
        }
        for (name, t) in self.optimizer.state()? {
            let data = t.read().await?;
            dict.insert(
                format!("optim.{name}"),
                HostTensor {
                    shape: t.shape().to_vec(),
                    data: HostData::F32(data),
                },
            );
        }
        let mut meta = HashMap::new();
        meta.insert("format".into(), "resnet-wgpu-checkpoint-v1".into());
        meta.insert("epoch".into(), self.epoch.to_string());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("optimizer_steps".into(), self.optimizer.steps().to_string());
        meta.insert("steps_per_epoch".into(), self.steps_per_epoch.to_string());
        let s = self.rng.state();
        meta.insert("rng".into(), format!("{},{},{},{}", s[0], s[1], s[2], s[3]));
        meta.insert("architecture".into(), self.model.config().to_string());
        Ok((dict, meta))
    }

    /// Write a checkpoint atomically (temporary file, then rename).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&self, path: &std::path::Path) -> Result<()> {
        let (dict, meta) = pollster::block_on(self.checkpoint_async())?;
        crate::io::save_safetensors(&dict, path, Some(meta))
    }

    /// Restore a checkpoint written by [`Trainer::save_checkpoint`] for the same architecture.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn resume(&mut self, path: &std::path::Path) -> Result<()> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let dict = crate::io::load_safetensors_bytes(&bytes, &name)?;
        let meta = dict.metadata();
        let get = |k: &str| -> Result<&String> {
            meta.get(k).ok_or_else(|| {
                Error::format(&name, format!("not a checkpoint: metadata `{k}` missing"))
            })
        };
        if get("format")? != "resnet-wgpu-checkpoint-v1" {
            return Err(Error::format(&name, "not a resnet-wgpu checkpoint"));
        }
        let arch = get("architecture")?;
        if *arch != self.model.config().to_string() {
            return Err(Error::format(
                &name,
                format!(
                    "the checkpoint is for {arch}, but the model being trained is {}",
                    self.model.config()
                ),
            ));
        }
        let parse = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| Error::format(&name, format!("bad metadata `{k}`")))
        };
        let mut model_dict = StateDict::new();
        let mut optim = Vec::new();
        let gpu = self.model.gpu().clone();
        for (k, t) in dict.iter() {
            if let Some(n) = k.strip_prefix("model.") {
                model_dict.insert(n.to_string(), t.clone());
            } else if let Some(n) = k.strip_prefix("optim.") {
                optim.push((
                    n.to_string(),
                    Tensor::from_slice(&gpu, &t.shape, &t.to_f32_vec())?,
                ));
            }
        }
        let (model, _) =
            ResNet::from_state_dict(&gpu, &model_dict, Some(self.model.config().clone()), true)
                .map_err(|e| Error::format(&name, e))?;
        self.model = model;
        self.optimizer = self.config.make_optimizer();
        self.optimizer.load_state(optim)?;
        self.epoch = parse("epoch")?;
        self.step = parse("step")?;
        let rng: Vec<u64> = get("rng")?
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect();
        let rng: [u64; 4] = rng
            .try_into()
            .map_err(|_| Error::format(&name, "bad metadata `rng`"))?;
        self.rng = Rng::from_state(rng);
        Ok(())
    }
}

/// A training step recorded and submitted by [`Trainer::submit_step`] whose loss and logits are
/// still on their way back.
pub struct PendingStep {
    values: crate::tensor::PendingRead,
    labels: Vec<u32>,
    step: usize,
    lr: f32,
}

impl PendingStep {
    /// Wait for the step and return its loss and accuracy; a NaN or infinite loss is an error.
    pub async fn finish_async(self) -> Result<Metrics> {
        let values = self.values.finish().await?;
        let (loss, logits) = (values[0][0], &values[1]);
        if !loss.is_finite() {
            return Err(Error::Invalid(format!(
                "the training loss became {loss} at step {} (learning rate {}); stopping. \
                 Lower the learning rate or enable gradient clipping",
                self.step, self.lr
            )));
        }
        let mut tally = Tally::default();
        tally.add(loss, logits, &self.labels);
        Ok(tally.metrics())
    }

    /// Blocking [`PendingStep::finish_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish(self) -> Result<Metrics> {
        pollster::block_on(self.finish_async())
    }
}

/// Fail early (before training starts) when `path` cannot be written: its folder must accept a
/// new file and `path` must not be a directory. `what` names the option in the message.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_writable(path: &std::path::Path, what: &str) -> Result<()> {
    use std::io::Write;
    if path.is_dir() {
        return Err(Error::Invalid(format!(
            "{what} {} is a directory",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let probe = dir.join(format!(".resnet-wgpu-write-test-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok"))
        .map_err(|e| Error::Invalid(format!("{what} {} is not writable: {e}", path.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Error unless every label is below `classes`.
pub fn check_labels(labels: &[u32], classes: usize) -> Result<()> {
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::Invalid(format!(
            "label {bad} is out of range for a model with {classes} classes"
        )));
    }
    Ok(())
}

/// The normalisation of an augmentation, without its random parts.
pub fn normalize_of(a: &Augment) -> Augment {
    Augment::normalize(&a.mean, &a.std)
}

/// Eval-mode loss and accuracy of `model` over `data` (async; works on the web).
pub async fn evaluate_async(
    model: &mut ResNet,
    data: &Dataset,
    normalize: &Augment,
    batch_size: usize,
) -> Result<Metrics> {
    evaluate_with_async(model, data, normalize, batch_size, |_| ()).await
}

/// [`evaluate_async`], calling `on_batch` with the metrics so far (their `count` the images
/// evaluated) after each batch: for progress.
pub async fn evaluate_with_async(
    model: &mut ResNet,
    data: &Dataset,
    normalize: &Augment,
    batch_size: usize,
    mut on_batch: impl FnMut(&Metrics),
) -> Result<Metrics> {
    check_labels(&data.labels, model.config().num_classes)?;
    let gpu = model.gpu().clone();
    let mut tally = Tally::default();
    for batch in epoch_batches(data, batch_size, None, normalize, false)? {
        let x = Tensor::from_slice(&gpu, &batch.shape, &batch.images)?;
        let y = Tensor::from_u32(&gpu, &[batch.labels.len()], &batch.labels)?;
        let logits = model.infer(&x)?;
        let (loss, _) = crate::ops::cross_entropy(&logits, &y, 0.0)?;
        let values = Tensor::read_all(&[&loss, &logits]).await?;
        tally.add(values[0][0], &values[1], &batch.labels);
        on_batch(&tally.metrics());
    }
    Ok(tally.metrics())
}

/// Blocking [`evaluate_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(
    model: &mut ResNet,
    data: &Dataset,
    normalize: &Augment,
    batch_size: usize,
) -> Result<Metrics> {
    pollster::block_on(evaluate_async(model, data, normalize, batch_size))
}

/// Blocking [`evaluate_with_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_with(
    model: &mut ResNet,
    data: &Dataset,
    normalize: &Augment,
    batch_size: usize,
    on_batch: impl FnMut(&Metrics),
) -> Result<Metrics> {
    pollster::block_on(evaluate_with_async(
        model, data, normalize, batch_size, on_batch,
    ))
}
