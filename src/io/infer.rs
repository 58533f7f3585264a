//! Architecture inference from a state dict and matching a state dict against a configuration.

use super::state_dict::{HostData, StateDict};
use crate::nn::resnet::{Block, ParamKind, ResNetConfig, Stem};
use crate::{Error, Result};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Prefixes that PyTorch wrappers add to every name (`DataParallel`: `module.`, Lightning and
/// others: `model.`).
pub const WRAPPER_PREFIXES: [&str; 2] = ["module.", "model."];

/// The wrapper prefix of `dict`, if it has one: `module.` or `model.` when `conv1.weight` is
/// absent but `{prefix}conv1.weight` is present.
pub fn wrapper_prefix(dict: &StateDict) -> Option<&'static str> {
    if dict.contains("conv1.weight") {
        return None;
    }
    WRAPPER_PREFIXES
        .into_iter()
        .find(|p| dict.contains(&format!("{p}conv1.weight")))
}

/// `dict` without its wrapper prefix (see [`wrapper_prefix`]); tensors without the prefix are
/// dropped. Unchanged when there is no prefix.
pub fn strip_wrapper_prefix(dict: &StateDict) -> Cow<'_, StateDict> {
    match wrapper_prefix(dict) {
        Some(p) => Cow::Owned(dict.strip_prefix(p)),
        None => Cow::Borrowed(dict),
    }
}

fn missing(what: &str, name: &str) -> Error {
    Error::Invalid(format!(
        "cannot infer the ResNet architecture: {what} (`{name}`) is missing"
    ))
}

fn inconsistent(msg: String) -> Error {
    Error::Invalid(format!("cannot infer the ResNet architecture: {msg}"))
}

/// Infer the architecture of a torchvision-style ResNet state dict from its names and shapes:
/// stages and blocks per stage from the `layerN.M.` prefixes, widths from each stage's
/// `layerN.0.conv1.weight`, bottleneck blocks from the presence of `layer1.0.conv3.weight`, input
/// channels from `conv1.weight`'s second dimension, the stem from its kernel (7 → ImageNet with
/// max pool, 3 → CIFAR), classes from `fc.weight`. A `module.` / `model.` prefix is accepted.
///
/// The result is then checked: every tensor it implies must be present with the right shape
/// (extra tensors are allowed); otherwise the error names the problems.
pub fn infer_config(dict: &StateDict) -> Result<ResNetConfig> {
    let dict = strip_wrapper_prefix(dict);
    let dict = dict.as_ref();
    let shape = |name: &str, what: &str, rank: usize| -> Result<Vec<usize>> {
        let t = dict.get(name).ok_or_else(|| missing(what, name))?;
        if t.shape.len() != rank {
            return Err(inconsistent(format!(
                "`{name}` has shape {:?}, expected rank {rank}",
                t.shape
            )));
        }
        Ok(t.shape.clone())
    };
    let stem_w = shape("conv1.weight", "the stem convolution", 4)?;
    let stem = match (stem_w[2], stem_w[3]) {
        (7, 7) => Stem::ImageNet,
        (3, 3) => Stem::Cifar,
        (a, b) => {
            return Err(inconsistent(format!(
                "stem convolution `conv1.weight` has a {a}x{b} kernel; expected 7x7 (ImageNet \
                 stem) or 3x3 (CIFAR stem)"
            )));
        }
    };
    let fc = shape("fc.weight", "the classifier", 2)?;

    // Stages and blocks: collect every `layerN.M.` prefix.
    let mut found: HashSet<(usize, usize)> = HashSet::new();
    for name in dict.names() {
        let Some(rest) = name.strip_prefix("layer") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(s), Some(b), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(s), Ok(b)) = (s.parse::<usize>(), b.parse::<usize>()) {
            found.insert((s, b));
        }
    }
    if found.is_empty() {
        return Err(inconsistent(
            "no residual blocks (`layer1.0.*` tensors) found".into(),
        ));
    }
    let stages = found.iter().map(|&(s, _)| s).max().unwrap_or(0);
    let mut layers = Vec::with_capacity(stages);
    for s in 1..=stages {
        let n = found.iter().filter(|&&(st, _)| st == s).count();
        if n == 0 {
            return Err(inconsistent(format!(
                "stage `layer{s}` has no blocks but `layer{stages}` exists"
            )));
        }
        if let Some(b) = (0..n).find(|b| !found.contains(&(s, *b))) {
            return Err(inconsistent(format!(
                "stage `layer{s}` has {n} blocks but `layer{s}.{b}` is missing (block indices \
                 must run 0..{n})"
            )));
        }
        layers.push(n);
    }
    let block = if dict.contains("layer1.0.conv3.weight") {
        Block::Bottleneck
    } else {
        Block::Basic
    };
    let mut widths = Vec::with_capacity(stages);
    for s in 1..=stages {
        let name = format!("layer{s}.0.conv1.weight");
        widths.push(shape(&name, &format!("the first convolution of stage {s}"), 4)?[0]);
    }
    let config = ResNetConfig {
        block,
        layers,
        widths,
        in_channels: stem_w[1],
        num_classes: fc[0],
        stem,
        zero_init_residual: false,
    };
    config.validate().map_err(|e| inconsistent(e.to_string()))?;
    let report = check_against(dict, &config, false)?;
    if !report.missing.is_empty() || !report.mismatched.is_empty() {
        let mut r = report;
        r.unexpected.clear();
        return Err(inconsistent(format!(
            "the tensors do not fit {config}: {r}"
        )));
    }
    Ok(config)
}

/// A tensor whose shape (or type) differs from what the configuration expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
    /// Set when the shapes agree but the stored type does not (an int64 weight, or a float
    /// `num_batches_tracked`): e.g. `"expected F32, found I64"`.
    pub dtype: Option<String>,
}

/// What did not fit when a state dict was matched against a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors the configuration needs that the dict lacks (torchvision order).
    pub missing: Vec<String>,
    /// `num_batches_tracked` counters the dict lacks. Not an error even in strict mode (older
    /// torchvision checkpoints have none, and PyTorch tolerates that); a loader starts them at 0.
    pub missing_counters: Vec<String>,
    /// Tensors of the dict that the configuration does not have (dict order).
    pub unexpected: Vec<String>,
    /// Tensors present under the right name with the wrong shape or type (torchvision order).
    pub mismatched: Vec<Mismatch>,
    /// Tensors that matched.
    pub matched: usize,
    /// The wrapper prefix that was stripped (`module.` / `model.`), if any.
    pub stripped_prefix: Option<&'static str>,
}

impl LoadReport {
    /// True when nothing is missing, unexpected or mis-shaped (missing counters are allowed).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "missing {}: {}",
                self.missing.len(),
                self.missing.join(", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "unexpected {}: {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            ));
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| match &m.dtype {
                    Some(d) => format!("{} ({d})", m.name),
                    None => format!(
                        "{} (expected {:?}, found {:?})",
                        m.name, m.expected, m.found
                    ),
                })
                .collect();
            parts.push(format!("wrong shape {}: {}", m.len(), m.join(", ")));
        }
        if parts.is_empty() {
            write!(f, "all {} tensors match", self.matched)
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// Match `dict` (optionally wrapped in a `module.` / `model.` prefix) against the tensors that
/// `config` needs. `strict`: any missing, unexpected or mis-shaped tensor is an error whose
/// message lists every problem. Non-strict: the report of what did not fit is returned (load
/// what matches, e.g. a backbone whose head is replaced for fine-tuning).
pub fn check_against(dict: &StateDict, config: &ResNetConfig, strict: bool) -> Result<LoadReport> {
    config.validate()?;
    let stripped_prefix = wrapper_prefix(dict);
    let d = strip_wrapper_prefix(dict);
    let d = d.as_ref();
    let specs = config.param_specs();
    let mut report = LoadReport {
        stripped_prefix,
        ..Default::default()
    };
    let expected: HashSet<&str> = specs.iter().map(|p| p.name.as_str()).collect();
    for p in &specs {
        match d.get(&p.name) {
            None if p.kind == ParamKind::BnNumBatchesTracked => {
                report.missing_counters.push(p.name.clone())
            }
            None => report.missing.push(p.name.clone()),
            Some(t) => {
                let is_int = matches!(t.data, HostData::I64(_));
                // A counter saved as a one-element vector is accepted like the scalar.
                let shape_ok =
                    t.shape == p.shape || (p.kind.is_int() && t.numel() == 1 && t.shape.len() <= 1);
                let dtype = (is_int != p.kind.is_int()).then(|| {
                    let name = |i: bool| if i { "I64" } else { "F32" };
                    format!("expected {}, found {}", name(p.kind.is_int()), name(is_int))
                });
                if shape_ok && dtype.is_none() {
                    report.matched += 1;
                } else {
                    report.mismatched.push(Mismatch {
                        name: p.name.clone(),
                        expected: p.shape.clone(),
                        found: t.shape.clone(),
                        dtype: if shape_ok { dtype } else { None },
                    });
                }
            }
        }
    }
    // Tensors outside the wrapper prefix count as unexpected too.
    if let Some(p) = stripped_prefix {
        report
            .unexpected
            .extend(dict.names().filter(|n| !n.starts_with(p)).map(String::from));
    }
    report.unexpected.extend(
        d.names()
            .filter(|n| !expected.contains(n))
            .map(|n| format!("{}{n}", stripped_prefix.unwrap_or(""))),
    );
    if strict && !report.is_clean() {
        return Err(Error::Invalid(format!(
            "state dict does not match {config} (strict): {report}"
        )));
    }
    Ok(report)
}
