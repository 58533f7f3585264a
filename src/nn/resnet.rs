//! ResNet configuration and parameter layout, in torchvision's terms.
//!
//! A [`ResNetConfig`] describes the architecture (block type, blocks and width per stage, stem,
//! input channels, classes). From it come:
//! - [`ResNetConfig::param_specs`]: every tensor of the state dict with torchvision's name, shape
//!   and order (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.0.weight`, `fc.bias`...);
//! - [`ResNetConfig::blocks`], [`ResNetConfig::stem_conv`]: the structure a forward pass walks;
//! - [`ResNetConfig::init_params`]: a host-side state dict initialised as torchvision does.
//!
//! Structure (torchvision): stem conv (`conv1`, width `widths[0]`) + `bn1` + ReLU (+ 3x3 stride-2
//! max pool for the ImageNet stem), then one stage `layer{i+1}` per entry of `layers`; the first
//! block of every stage but the first has stride 2. A block gets a projection shortcut
//! (`downsample.0` 1x1 conv + `downsample.1` batch norm) when its stride is not 1 or its input
//! channels differ from `planes * expansion`. Then global average pooling and `fc`.

use crate::io::{HostTensor, StateDict};
use crate::{Error, Result, Rng};
use std::fmt;
use std::str::FromStr;

/// Residual block type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// Two 3x3 convolutions (ResNet-18/34); expansion 1.
    Basic,
    /// 1x1 reduce, 3x3 (carrying the stride, as torchvision), 1x1 expand; expansion 4.
    Bottleneck,
}

impl Block {
    /// Output channels per `planes`: 1 for basic, 4 for bottleneck blocks.
    pub fn expansion(&self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }

    /// Convolutions on the main path of one block (2 or 3).
    pub fn convs_per_block(&self) -> usize {
        match self {
            Block::Basic => 2,
            Block::Bottleneck => 3,
        }
    }
}

/// The network's stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7 stride-2 padding-3 conv, then a 3x3 stride-2 padding-1 max pool (torchvision).
    ImageNet,
    /// 3x3 stride-1 padding-1 conv, no pool (small images such as CIFAR-10).
    Cifar,
}

impl Stem {
    /// Kernel size of the stem convolution.
    pub fn kernel(self) -> usize {
        match self {
            Stem::ImageNet => 7,
            Stem::Cifar => 3,
        }
    }

    /// Whether the stem ends with the 3x3 stride-2 max pool.
    pub fn has_max_pool(self) -> bool {
        self == Stem::ImageNet
    }
}

/// Kind of one state-dict tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// Convolution weight `[out, in, k, k]` (no conv biases in a ResNet).
    ConvWeight,
    /// Batch-norm scale (gamma) `[c]`.
    BnWeight,
    /// Batch-norm shift (beta) `[c]`.
    BnBias,
    /// Batch-norm running mean `[c]` (buffer, not trained).
    BnRunningMean,
    /// Batch-norm running variance `[c]` (buffer, not trained).
    BnRunningVar,
    /// Batch-norm step counter, int64 scalar of shape `[]` (buffer).
    BnNumBatchesTracked,
    /// Classifier weight `[classes, features]`.
    FcWeight,
    /// Classifier bias `[classes]`.
    FcBias,
}

impl ParamKind {
    /// Whether an optimizer updates this tensor (conv, batch-norm weight/bias, fc).
    pub fn is_trainable(self) -> bool {
        matches!(
            self,
            ParamKind::ConvWeight
                | ParamKind::BnWeight
                | ParamKind::BnBias
                | ParamKind::FcWeight
                | ParamKind::FcBias
        )
    }

    /// Whether the tensor is stored as int64 (only `num_batches_tracked`).
    pub fn is_int(self) -> bool {
        self == ParamKind::BnNumBatchesTracked
    }
}

/// One tensor of the state dict: torchvision name, shape and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Number of elements (1 for the scalar `num_batches_tracked`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A convolution followed by its batch norm, as the forward pass applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Module name of the convolution, e.g. `layer2.0.conv1` or `layer2.0.downsample.0`; its
    /// weight is `{conv}.weight`.
    pub conv: String,
    /// Module name of the batch norm after it, e.g. `layer2.0.bn1` or `layer2.0.downsample.1`;
    /// its tensors are `{bn}.weight`, `{bn}.bias`, `{bn}.running_mean`, `{bn}.running_var`,
    /// `{bn}.num_batches_tracked`.
    pub bn: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvSpec {
    fn new(conv: String, bn: String, cin: usize, cout: usize, k: usize, stride: usize) -> Self {
        ConvSpec {
            conv,
            bn,
            in_channels: cin,
            out_channels: cout,
            kernel: k,
            stride,
            padding: k / 2,
        }
    }

    /// The convolution weight's shape `[out, in, k, k]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }

    /// Output spatial size for an input of size `n` (`(n + 2p - k) / s + 1`), or `None` when the
    /// input is smaller than the kernel.
    pub fn output_size(&self, n: usize) -> Option<usize> {
        (n + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|d| d / self.stride + 1)
    }

    fn push_specs(&self, out: &mut Vec<ParamSpec>) {
        out.push(spec(
            format!("{}.weight", self.conv),
            self.weight_shape(),
            ParamKind::ConvWeight,
        ));
        push_bn(out, &self.bn, self.out_channels);
    }
}

/// One residual block: what a forward pass needs to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Module prefix, e.g. `layer2.0`.
    pub prefix: String,
    /// Stage index (0-based; the module is `layer{stage+1}`).
    pub stage: usize,
    /// Index of the block within its stage.
    pub index: usize,
    pub block: Block,
    pub in_channels: usize,
    /// Width of the inner convolutions (`planes`).
    pub planes: usize,
    /// `planes * expansion`.
    pub out_channels: usize,
    pub stride: usize,
    pub has_downsample: bool,
}

impl BlockSpec {
    /// The main path's conv + batch-norm pairs in order (ReLU after each but the last; the last
    /// one's output is added to the shortcut, then ReLU).
    pub fn convs(&self) -> Vec<ConvSpec> {
        let p = &self.prefix;
        let name = |i: usize| (format!("{p}.conv{i}"), format!("{p}.bn{i}"));
        let (c1, b1) = name(1);
        let (c2, b2) = name(2);
        match self.block {
            Block::Basic => vec![
                ConvSpec::new(c1, b1, self.in_channels, self.planes, 3, self.stride),
                ConvSpec::new(c2, b2, self.planes, self.planes, 3, 1),
            ],
            Block::Bottleneck => {
                let (c3, b3) = name(3);
                vec![
                    ConvSpec::new(c1, b1, self.in_channels, self.planes, 1, 1),
                    ConvSpec::new(c2, b2, self.planes, self.planes, 3, self.stride),
                    ConvSpec::new(c3, b3, self.planes, self.out_channels, 1, 1),
                ]
            }
        }
    }

    /// The projection shortcut (1x1 conv with the block's stride + batch norm), if any.
    pub fn downsample(&self) -> Option<ConvSpec> {
        self.has_downsample.then(|| {
            ConvSpec::new(
                format!("{}.downsample.0", self.prefix),
                format!("{}.downsample.1", self.prefix),
                self.in_channels,
                self.out_channels,
                1,
                self.stride,
            )
        })
    }

    /// Name of the block's last batch norm (`bn2` / `bn3`), the one `zero_init_residual` zeroes.
    pub fn last_bn(&self) -> String {
        format!("{}.bn{}", self.prefix, self.block.convs_per_block())
    }
}

/// A ResNet architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    pub block: Block,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Planes per stage (the stem's width is `widths[0]`).
    pub widths: Vec<usize>,
    pub in_channels: usize,
    pub num_classes: usize,
    pub stem: Stem,
    /// Initialise the last batch-norm scale of every block to zero (torchvision's
    /// `zero_init_residual`). Affects [`ResNetConfig::init_params`] only.
    pub zero_init_residual: bool,
}

const STANDARD: [(&str, usize, Block, [usize; 4]); 5] = [
    ("resnet18", 18, Block::Basic, [2, 2, 2, 2]),
    ("resnet34", 34, Block::Basic, [3, 4, 6, 3]),
    ("resnet50", 50, Block::Bottleneck, [3, 4, 6, 3]),
    ("resnet101", 101, Block::Bottleneck, [3, 4, 23, 3]),
    ("resnet152", 152, Block::Bottleneck, [3, 8, 36, 3]),
];

const STANDARD_WIDTHS: [usize; 4] = [64, 128, 256, 512];

fn spec(name: String, shape: Vec<usize>, kind: ParamKind) -> ParamSpec {
    ParamSpec { name, shape, kind }
}

fn push_bn(out: &mut Vec<ParamSpec>, bn: &str, c: usize) {
    out.push(spec(format!("{bn}.weight"), vec![c], ParamKind::BnWeight));
    out.push(spec(format!("{bn}.bias"), vec![c], ParamKind::BnBias));
    out.push(spec(
        format!("{bn}.running_mean"),
        vec![c],
        ParamKind::BnRunningMean,
    ));
    out.push(spec(
        format!("{bn}.running_var"),
        vec![c],
        ParamKind::BnRunningVar,
    ));
    out.push(spec(
        format!("{bn}.num_batches_tracked"),
        vec![],
        ParamKind::BnNumBatchesTracked,
    ));
}

impl ResNetConfig {
    fn standard(block: Block, layers: [usize; 4], num_classes: usize) -> Self {
        ResNetConfig {
            block,
            layers: layers.to_vec(),
            widths: STANDARD_WIDTHS.to_vec(),
            in_channels: 3,
            num_classes,
            stem: Stem::ImageNet,
            zero_init_residual: false,
        }
    }

    /// ResNet-18: basic blocks `[2, 2, 2, 2]`, widths `[64, 128, 256, 512]`, ImageNet stem.
    pub fn resnet18(num_classes: usize) -> Self {
        Self::standard(Block::Basic, [2, 2, 2, 2], num_classes)
    }

    /// ResNet-34: basic blocks `[3, 4, 6, 3]`.
    pub fn resnet34(num_classes: usize) -> Self {
        Self::standard(Block::Basic, [3, 4, 6, 3], num_classes)
    }

    /// ResNet-50: bottleneck blocks `[3, 4, 6, 3]`.
    pub fn resnet50(num_classes: usize) -> Self {
        Self::standard(Block::Bottleneck, [3, 4, 6, 3], num_classes)
    }

    /// ResNet-101: bottleneck blocks `[3, 4, 23, 3]`.
    pub fn resnet101(num_classes: usize) -> Self {
        Self::standard(Block::Bottleneck, [3, 4, 23, 3], num_classes)
    }

    /// ResNet-152: bottleneck blocks `[3, 8, 36, 3]`.
    pub fn resnet152(num_classes: usize) -> Self {
        Self::standard(Block::Bottleneck, [3, 8, 36, 3], num_classes)
    }

    /// A standard torchvision architecture by name with 1000 classes: `resnet18`, `resnet34`,
    /// `resnet50`, `resnet101`, `resnet152` (case-insensitive; `resnet-18` and `resnet_18` also
    /// accepted). Change the head with [`ResNetConfig::with_num_classes`].
    pub fn from_name(name: &str) -> Result<Self> {
        let key: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        STANDARD
            .iter()
            .find(|s| s.0 == key)
            .map(|s| Self::standard(s.2.clone(), s.3, 1000))
            .ok_or_else(|| {
                let known: Vec<&str> = STANDARD.iter().map(|s| s.0).collect();
                Error::Invalid(format!(
                    "unknown ResNet `{name}`; known: {}",
                    known.join(", ")
                ))
            })
    }

    /// Replace the block type.
    pub fn with_block(mut self, block: Block) -> Self {
        self.block = block;
        self
    }

    /// Replace the number of blocks per stage.
    pub fn with_layers(mut self, layers: impl Into<Vec<usize>>) -> Self {
        self.layers = layers.into();
        self
    }

    /// Replace the width (planes) of each stage.
    pub fn with_widths(mut self, widths: impl Into<Vec<usize>>) -> Self {
        self.widths = widths.into();
        self
    }

    /// Replace the number of input channels (3 for RGB, 1 for grayscale).
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Replace the number of classes of the head.
    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Replace the stem.
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// Set torchvision's `zero_init_residual` for [`ResNetConfig::init_params`].
    pub fn with_zero_init_residual(mut self, on: bool) -> Self {
        self.zero_init_residual = on;
        self
    }

    /// Check that the configuration describes a buildable network.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(format!("invalid ResNet config: {msg}")));
        if self.layers.is_empty() {
            return bad("`layers` is empty (need at least one stage)".into());
        }
        if self.layers.len() != self.widths.len() {
            return bad(format!(
                "`layers` has {} stages but `widths` has {}",
                self.layers.len(),
                self.widths.len()
            ));
        }
        if let Some(i) = self.layers.iter().position(|&n| n == 0) {
            return bad(format!(
                "stage {} has 0 blocks (layers {:?})",
                i + 1,
                self.layers
            ));
        }
        if let Some(i) = self.widths.iter().position(|&n| n == 0) {
            return bad(format!(
                "stage {} has width 0 (widths {:?})",
                i + 1,
                self.widths
            ));
        }
        if self.in_channels == 0 {
            return bad("in_channels is 0".into());
        }
        if self.num_classes == 0 {
            return bad("num_classes is 0".into());
        }
        Ok(())
    }

    /// The torchvision name (`resnet18`...) when the architecture body is a standard one
    /// (block, layers, widths and ImageNet stem; any input channels and classes).
    pub fn standard_name(&self) -> Option<&'static str> {
        if self.widths != STANDARD_WIDTHS || self.stem != Stem::ImageNet {
            return None;
        }
        STANDARD
            .iter()
            .find(|s| s.2 == self.block && self.layers == s.3)
            .map(|s| s.0)
    }

    /// Weighted layers: convolutions on the main path plus stem conv and fc (18 for ResNet-18).
    pub fn depth(&self) -> usize {
        self.layers.iter().sum::<usize>() * self.block.convs_per_block() + 2
    }

    /// Channels after the last stage, fed to `fc` (`widths.last() * expansion`).
    pub fn feature_channels(&self) -> usize {
        self.widths.last().copied().unwrap_or(0) * self.block.expansion()
    }

    /// The stem convolution (`conv1` + `bn1`).
    pub fn stem_conv(&self) -> ConvSpec {
        let k = self.stem.kernel();
        let stride = if self.stem == Stem::ImageNet { 2 } else { 1 };
        let w0 = self.widths.first().copied().unwrap_or(0);
        ConvSpec::new(
            "conv1".into(),
            "bn1".into(),
            self.in_channels,
            w0,
            k,
            stride,
        )
    }

    /// Every residual block in forward order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let e = self.block.expansion();
        let mut inplanes = self.widths.first().copied().unwrap_or(0);
        let mut out = Vec::new();
        for (s, (&n, &planes)) in self.layers.iter().zip(&self.widths).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let has_downsample = stride != 1 || inplanes != planes * e;
                out.push(BlockSpec {
                    prefix: format!("layer{}.{b}", s + 1),
                    stage: s,
                    index: b,
                    block: self.block.clone(),
                    in_channels: inplanes,
                    planes,
                    out_channels: planes * e,
                    stride,
                    has_downsample,
                });
                inplanes = planes * e;
            }
        }
        out
    }

    /// Every state-dict tensor, in torchvision's order, with torchvision's names and shapes.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        self.stem_conv().push_specs(&mut out);
        for b in self.blocks() {
            for c in b.convs() {
                c.push_specs(&mut out);
            }
            if let Some(d) = b.downsample() {
                d.push_specs(&mut out);
            }
        }
        let f = self.feature_channels();
        out.push(spec(
            "fc.weight".into(),
            vec![self.num_classes, f],
            ParamKind::FcWeight,
        ));
        out.push(spec(
            "fc.bias".into(),
            vec![self.num_classes],
            ParamKind::FcBias,
        ));
        out
    }

    /// Number of trainable parameters (conv weights, batch-norm weights and biases, fc), not
    /// counting running statistics: 11,689,512 for ResNet-18 with 1000 classes.
    pub fn num_parameters(&self) -> usize {
        self.param_specs()
            .iter()
            .filter(|p| p.kind.is_trainable())
            .map(ParamSpec::numel)
            .sum()
    }

    /// A state dict initialised as torchvision does: conv weights from
    /// `kaiming_normal_(mode='fan_out', nonlinearity='relu')` (normal with std
    /// `sqrt(2 / (out_channels * k * k))`), batch-norm weight 1 and bias 0 (weight 0 for each
    /// block's last batch norm with `zero_init_residual`), running mean 0, running variance 1,
    /// `num_batches_tracked` 0, `fc` weight and bias uniform in `±1/sqrt(features)`.
    /// Tensors are drawn from `rng` in [`ResNetConfig::param_specs`] order.
    pub fn init_params(&self, rng: &mut Rng) -> Result<StateDict> {
        self.validate()?;
        let zeroed: Vec<String> = if self.zero_init_residual {
            self.blocks()
                .iter()
                .map(|b| format!("{}.weight", b.last_bn()))
                .collect()
        } else {
            Vec::new()
        };
        let fc_bound = 1.0 / (self.feature_channels() as f32).sqrt();
        let mut dict = StateDict::new();
        for p in self.param_specs() {
            let n = p.numel();
            let t = match p.kind {
                ParamKind::ConvWeight => {
                    let fan_out = p.shape[0] * p.shape[2] * p.shape[3];
                    let std = (2.0 / fan_out as f64).sqrt() as f32;
                    HostTensor::f32(
                        p.shape.clone(),
                        (0..n).map(|_| rng.normal() * std).collect(),
                    )
                }
                ParamKind::BnWeight => {
                    let v = if zeroed.contains(&p.name) { 0.0 } else { 1.0 };
                    HostTensor::f32(p.shape.clone(), vec![v; n])
                }
                ParamKind::BnBias | ParamKind::BnRunningMean => {
                    HostTensor::f32(p.shape.clone(), vec![0.0; n])
                }
                ParamKind::BnRunningVar => HostTensor::f32(p.shape.clone(), vec![1.0; n]),
                ParamKind::BnNumBatchesTracked => HostTensor::i64(p.shape.clone(), vec![0]),
                ParamKind::FcWeight | ParamKind::FcBias => HostTensor::f32(
                    p.shape.clone(),
                    (0..n)
                        .map(|_| rng.uniform_range(-fc_bound, fc_bound))
                        .collect(),
                ),
            }?;
            dict.insert(p.name, t);
        }
        Ok(dict)
    }
}

impl FromStr for ResNetConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ResNetConfig::from_name(s)
    }
}

impl fmt::Display for ResNetConfig {
    /// e.g. `ResNet-18 (basic [2, 2, 2, 2], widths [64, 128, 256, 512], ImageNet stem,
    /// 3 -> 1000 classes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let block = match self.block {
            Block::Basic => "basic",
            Block::Bottleneck => "bottleneck",
        };
        let stem = match self.stem {
            Stem::ImageNet => "ImageNet stem",
            Stem::Cifar => "CIFAR stem",
        };
        write!(
            f,
            "ResNet-{} ({block} {:?}, widths {:?}, {stem}, {} -> {} classes)",
            self.depth(),
            self.layers,
            self.widths,
            self.in_channels,
            self.num_classes
        )
    }
}
