//! [`ResNet`]: the network's parameters on the GPU and its forward pass.
//!
//! Parameters and buffers carry torchvision's state-dict names. Training runs record on a
//! [`Tape`]; inference uses constant bindings and records nothing.

use super::resnet::{Block, BlockSpec, ParamKind, ResNetConfig, Stem};
use crate::autograd::{Tape, Var};
use crate::io::{HostData, HostTensor, LoadReport, StateDict};
use crate::ops::{self, BatchNorm};
use crate::tensor::Tensor;
use crate::{Error, Gpu, Result, Rng};
use std::collections::HashMap;

/// One named parameter or buffer.
#[derive(Clone, Debug)]
pub struct Param {
    /// torchvision state-dict name, e.g. `layer2.0.downsample.1.running_var`.
    pub name: String,
    /// What it is.
    pub kind: ParamKind,
    /// The value on the GPU.
    pub tensor: Tensor,
}

impl Param {
    /// Whether the optimizer updates it (weights and biases, not running statistics).
    pub fn is_trainable(&self) -> bool {
        !matches!(
            self.kind,
            ParamKind::BnRunningMean | ParamKind::BnRunningVar | ParamKind::BnNumBatchesTracked
        )
    }

    /// Whether it belongs to the classifier head (`fc`).
    pub fn is_head(&self) -> bool {
        self.name.starts_with("fc.")
    }
}

/// Which outputs [`ResNet::features`] returns.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// Output of the stem (after the max pool for the ImageNet stem), `[N, widths[0], H', W']`.
    pub stem: Option<Tensor>,
    /// Output of each stage, `layer1` .. `layerN`.
    pub stages: Vec<Tensor>,
    /// Globally pooled features before `fc`, `[N, C]`.
    pub pooled: Option<Tensor>,
}

/// A ResNet: configuration plus parameters on one GPU.
pub struct ResNet {
    config: ResNetConfig,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// `num_batches_tracked` per batch-norm prefix (kept on the host: it is a counter).
    batches_tracked: HashMap<String, i64>,
    gpu: Gpu,
}

/// The values the forward pass reads for each parameter: tracked leaves while training,
/// constants otherwise. Built by [`ResNet::bind`].
pub struct Bindings {
    vars: Vec<Var>,
}

impl Bindings {
    /// The variable bound to parameter `i` (same order as [`ResNet::params`]).
    pub fn var(&self, i: usize) -> &Var {
        &self.vars[i]
    }
}

/// What a batch norm's recorded op includes after the normalization.
#[derive(Clone, Copy)]
enum BnTail<'a> {
    Nothing,
    /// A residual block's join: `bn(x) + identity`.
    Residual(&'a Var),
    /// The ImageNet stem's ReLU and 3x3/2 max pool (padding 1), the ReLU after the pool.
    MaxPoolRelu,
}

/// The ImageNet stem's max pool: kernel, stride, padding.
const STEM_POOL: [usize; 3] = [3, 2, 1];

impl ResNet {
    /// A freshly initialised network (torchvision's initialisation).
    pub fn new(gpu: &Gpu, config: ResNetConfig, rng: &mut Rng) -> Result<ResNet> {
        config.validate()?;
        let dict = config.init_params(rng)?;
        let (net, _) = Self::from_state_dict(gpu, &dict, Some(config), true)?;
        Ok(net)
    }

    /// Build from a state dict; with `config` `None` the architecture is inferred from the names
    /// and shapes. Strict loading fails on any missing, unexpected or mis-shaped tensor; non-strict
    /// loading initialises what is missing or mis-shaped (seeded) and reports it.
    pub fn from_state_dict(
        gpu: &Gpu,
        dict: &StateDict,
        config: Option<ResNetConfig>,
        strict: bool,
    ) -> Result<(ResNet, LoadReport)> {
        let config = match config {
            Some(c) => c,
            None => crate::io::infer_config(dict)?,
        };
        config.validate()?;
        let report = crate::io::check_against(dict, &config, strict)?;
        let dict = crate::io::strip_wrapper_prefix(dict);
        let init = config.init_params(&mut Rng::new(0x5EED))?;
        let mut params = Vec::new();
        let mut batches_tracked = HashMap::new();
        for spec in config.param_specs() {
            let source = match dict.get(&spec.name) {
                Some(t) if t.shape == spec.shape => t,
                _ => init.get(&spec.name).expect("init covers every spec"),
            };
            if spec.kind == ParamKind::BnNumBatchesTracked {
                let n = match &source.data {
                    HostData::I64(v) => v.first().copied().unwrap_or(0),
                    HostData::F32(v) => v.first().copied().unwrap_or(0.0) as i64,
                };
                let prefix = spec
                    .name
                    .trim_end_matches(".num_batches_tracked")
                    .to_string();
                batches_tracked.insert(prefix, n);
                continue;
            }
            let data = source.to_f32_vec();
            let tensor = Tensor::from_slice(gpu, &spec.shape, &data)?;
            params.push(Param {
                name: spec.name.clone(),
                kind: spec.kind,
                tensor,
            });
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok((
            ResNet {
                config,
                params,
                index,
                batches_tracked,
                gpu: gpu.clone(),
            },
            report,
        ))
    }

    /// The architecture.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Parameters and running statistics, in torchvision's order (without `num_batches_tracked`).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    fn idx(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| Error::Invalid(format!("the network has no parameter {name}")))
    }

    /// Bind parameters for a forward pass: trainable ones for which `track(param)` is true become
    /// leaves of `tape`; everything else (and everything when `tape` is `None`) is constant.
    pub fn bind(&self, tape: Option<&Tape>, track: impl Fn(&Param) -> bool) -> Bindings {
        let vars = self
            .params
            .iter()
            .map(|p| match tape {
                Some(t) if p.is_trainable() && track(p) => t.leaf(p.tensor.clone()),
                _ => Var::constant(p.tensor.clone()),
            })
            .collect();
        Bindings { vars }
    }

    fn conv(
        &self,
        b: &Bindings,
        x: &Var,
        name: &str,
        stride: usize,
        padding: usize,
    ) -> Result<Var> {
        x.conv2d(
            b.var(self.idx(&format!("{name}.weight"))?),
            None,
            stride,
            padding,
        )
    }

    /// Batch norm `name` of `x`, plus `residual` when given, then a ReLU when `relu` (one
    /// kernel; the tape records one op).
    fn bn(
        &mut self,
        b: &Bindings,
        x: &Var,
        name: &str,
        training: bool,
        relu: bool,
        tail: BnTail<'_>,
    ) -> Result<Var> {
        let g = self.idx(&format!("{name}.weight"))?;
        let be = self.idx(&format!("{name}.bias"))?;
        let rm = self.idx(&format!("{name}.running_mean"))?;
        let rv = self.idx(&format!("{name}.running_var"))?;
        let mut opts = if training {
            BatchNorm::train()
        } else {
            BatchNorm::eval()
        };
        if relu {
            opts = opts.with_relu();
        }
        if training {
            *self.batches_tracked.entry(name.to_string()).or_insert(0) += 1;
        }
        let (gamma, beta) = (b.var(g), b.var(be));
        let (mean, var) = (&self.params[rm].tensor, &self.params[rv].tensor);
        match tail {
            BnTail::Nothing => x.batch_norm(gamma, beta, mean, var, opts),
            BnTail::Residual(r) => x.batch_norm_add(gamma, beta, mean, var, opts, r),
            BnTail::MaxPoolRelu => {
                let [k, s, p] = STEM_POOL;
                x.batch_norm_max_pool_relu(gamma, beta, mean, var, opts, k, s, p)
            }
        }
    }

    /// `conv` then its batch norm `bn` and `tail`, then a ReLU when `relu`. In eval mode with
    /// nothing to differentiate (inference) the conv and the batch norm (with a residual) are
    /// one fused kernel ([`ops::conv2d_bn_eval`]); otherwise two ops recorded on the tape, the
    /// conv and the batch norm with the tail and the ReLU.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        b: &Bindings,
        x: &Var,
        conv: &str,
        bn: &str,
        stride: usize,
        padding: usize,
        training: bool,
        relu: bool,
        tail: BnTail<'_>,
    ) -> Result<Var> {
        let w = b.var(self.idx(&format!("{conv}.weight"))?);
        let gamma = b.var(self.idx(&format!("{bn}.weight"))?);
        let beta = b.var(self.idx(&format!("{bn}.bias"))?);
        let residual = match tail {
            BnTail::Residual(r) => Some(r),
            _ => None,
        };
        let tracked = [Some(x), Some(w), Some(gamma), Some(beta), residual]
            .into_iter()
            .flatten()
            .any(Var::requires_grad);
        if !training && !tracked {
            let mean = &self.params[self.idx(&format!("{bn}.running_mean"))?].tensor;
            let var = &self.params[self.idx(&format!("{bn}.running_var"))?].tensor;
            let y = ops::conv2d_bn_eval(
                x.tensor(),
                w.tensor(),
                stride,
                padding,
                &ops::EvalBatchNorm {
                    gamma: gamma.tensor(),
                    beta: beta.tensor(),
                    running_mean: mean,
                    running_var: var,
                    eps: BatchNorm::eval().eps,
                },
                residual.map(Var::tensor),
                relu,
            )?;
            let y = Var::constant(y);
            let [k, s, p] = STEM_POOL;
            return match tail {
                BnTail::MaxPoolRelu => y.max_pool2d_relu(k, s, p),
                _ => Ok(y),
            };
        }
        let h = self.conv(b, x, conv, stride, padding)?;
        self.bn(b, &h, bn, training, relu, tail)
    }

    fn block(&mut self, b: &Bindings, x: &Var, spec: &BlockSpec, training: bool) -> Result<Var> {
        let p = &spec.prefix;
        let identity = if spec.has_downsample {
            let (conv, bn) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
            let tail = BnTail::Nothing;
            self.conv_bn(b, x, &conv, &bn, spec.stride, 0, training, false, tail)?
        } else {
            x.clone()
        };
        // The layers of the residual branch: (conv, bn, stride, padding); the last one adds the
        // identity before its ReLU.
        let layers: Vec<(String, String, usize, usize)> = match self.config.block {
            Block::Basic => vec![
                (format!("{p}.conv1"), format!("{p}.bn1"), spec.stride, 1),
                (format!("{p}.conv2"), format!("{p}.bn2"), 1, 1),
            ],
            Block::Bottleneck => vec![
                (format!("{p}.conv1"), format!("{p}.bn1"), 1, 0),
                (format!("{p}.conv2"), format!("{p}.bn2"), spec.stride, 1),
                (format!("{p}.conv3"), format!("{p}.bn3"), 1, 0),
            ],
        };
        let last = layers.len() - 1;
        let mut h = x.clone();
        for (i, (conv, bn, stride, padding)) in layers.iter().enumerate() {
            let tail = if i == last {
                BnTail::Residual(&identity)
            } else {
                BnTail::Nothing
            };
            h = self.conv_bn(b, &h, conv, bn, *stride, *padding, training, true, tail)?;
        }
        Ok(h)
    }

    fn check_input(&self, x: &Var) -> Result<()> {
        let s = x.shape();
        if s.len() != 4 || s[1] != self.config.in_channels {
            return Err(Error::shape(
                "resnet forward",
                format!(
                    "input must be [N, {}, H, W], got {s:?}",
                    self.config.in_channels
                ),
            ));
        }
        Ok(())
    }

    /// The forward pass. `training` selects batch statistics (and updates the running ones) or the
    /// running statistics. Returns the logits `[N, classes]`; fills `features` when given.
    pub fn forward_with(
        &mut self,
        b: &Bindings,
        x: &Var,
        training: bool,
        mut features: Option<&mut Features>,
    ) -> Result<Var> {
        self.check_input(x)?;
        let h = match self.config.stem {
            // relu(bn) then the max pool, as torchvision, with the ReLU moved after the pool
            // (they commute): the backward keeps no full-size ReLU output, and the batch norm's
            // backward never holds the pool's full-size input gradient.
            Stem::ImageNet => {
                let tail = BnTail::MaxPoolRelu;
                self.conv_bn(b, x, "conv1", "bn1", 2, 3, training, false, tail)?
            }
            Stem::Cifar => {
                let tail = BnTail::Nothing;
                self.conv_bn(b, x, "conv1", "bn1", 1, 1, training, true, tail)?
            }
        };
        if let Some(f) = features.as_deref_mut() {
            f.stem = Some(h.tensor().clone());
        }
        let mut h = h;
        let blocks = self.config.blocks();
        let stages = self.config.layers.len();
        for (i, spec) in blocks.iter().enumerate() {
            h = self.block(b, &h, spec, training)?;
            let last_of_stage = blocks.get(i + 1).is_none_or(|n| n.stage != spec.stage);
            if let (true, Some(f)) = (last_of_stage, features.as_deref_mut()) {
                f.stages.push(h.tensor().clone());
            }
        }
        debug_assert!(features.as_ref().is_none_or(|f| f.stages.len() == stages));
        let pooled = h.global_avg_pool()?;
        if let Some(f) = features {
            f.pooled = Some(pooled.tensor().clone());
        }
        let w = b.var(self.idx("fc.weight")?);
        let bias = b.var(self.idx("fc.bias")?);
        pooled.linear(w, Some(bias))
    }

    /// Training-mode forward recording on `tape`: returns the logits and the bindings whose
    /// leaves receive gradients. `track` chooses which trainable parameters are leaves.
    pub fn forward_train(
        &mut self,
        tape: &Tape,
        x: &Tensor,
        track: impl Fn(&Param) -> bool,
    ) -> Result<(Var, Bindings)> {
        let b = self.bind(Some(tape), track);
        let logits = self.forward_with(&b, &Var::constant(x.clone()), true, None)?;
        Ok((logits, b))
    }

    /// Eval-mode inference: logits `[N, classes]`. Records nothing, keeps no activations.
    pub fn infer(&mut self, x: &Tensor) -> Result<Tensor> {
        let b = self.bind(None, |_| false);
        Ok(self
            .forward_with(&b, &Var::constant(x.clone()), false, None)?
            .into_tensor())
    }

    /// Eval-mode feature extraction: the stem output, each stage's output and the pooled
    /// features (for detection, segmentation or embeddings), plus the logits.
    pub fn features(&mut self, x: &Tensor) -> Result<(Features, Tensor)> {
        let b = self.bind(None, |_| false);
        let mut f = Features::default();
        let logits = self.forward_with(&b, &Var::constant(x.clone()), false, Some(&mut f))?;
        Ok((f, logits.into_tensor()))
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.is_trainable())
            .map(|p| p.tensor.numel())
            .sum()
    }

    /// Copy everything to the host as a torchvision-named state dict (async; works on the web).
    pub async fn state_dict_async(&self) -> Result<StateDict> {
        let mut dict = StateDict::new();
        for spec in self.config.param_specs() {
            let t = if spec.kind == ParamKind::BnNumBatchesTracked {
                let prefix = spec.name.trim_end_matches(".num_batches_tracked");
                let n = self.batches_tracked.get(prefix).copied().unwrap_or(0);
                HostTensor {
                    shape: vec![],
                    data: HostData::I64(vec![n]),
                }
            } else {
                let p = &self.params[self.idx(&spec.name)?];
                HostTensor {
                    shape: spec.shape.clone(),
                    data: HostData::F32(p.tensor.read().await?),
                }
            };
            dict.insert(spec.name.clone(), t);
        }
        Ok(dict)
    }

    /// Blocking [`ResNet::state_dict_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn state_dict(&self) -> Result<StateDict> {
        pollster::block_on(self.state_dict_async())
    }

    /// Replace the classifier head with a freshly initialised one for `num_classes` classes.
    pub fn replace_head(&mut self, num_classes: usize, rng: &mut Rng) -> Result<()> {
        let mut config = self.config.clone();
        config.num_classes = num_classes;
        let init = config.init_params(rng)?;
        for name in ["fc.weight", "fc.bias"] {
            let t = init.get(name).expect("init has the head");
            let i = self.idx(name)?;
            self.params[i].tensor = Tensor::from_slice(&self.gpu, &t.shape, &t.to_f32_vec())?;
        }
        self.config = config;
        Ok(())
    }
}
