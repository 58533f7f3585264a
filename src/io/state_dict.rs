//! Host-side tensors and an ordered, named collection of them (a PyTorch-style state dict).

use crate::{Error, Result};
use std::collections::HashMap;
use std::fmt;

/// Values of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// Parameters and statistics (F16/BF16 files are converted to this on load).
    F32(Vec<f32>),
    /// Counters such as batch norm's `num_batches_tracked`.
    I64(Vec<i64>),
}

impl HostData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The safetensors dtype name (`F32` / `I64`).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "F32",
            HostData::I64(_) => "I64",
        }
    }
}

/// A tensor in host memory: a row-major shape (`[]` for a scalar) and its values.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostTensor({} {:?})", self.data.dtype_name(), self.shape)
    }
}

impl HostTensor {
    /// A tensor after checking that `data` has `shape`'s element count.
    pub fn new(shape: Vec<usize>, data: HostData) -> Result<Self> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "HostTensor::new",
                format!(
                    "shape {shape:?} needs {n} elements but {} were given",
                    data.len()
                ),
            ));
        }
        Ok(HostTensor { shape, data })
    }

    /// An f32 tensor (checked).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, HostData::F32(data))
    }

    /// An int64 tensor (checked).
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        Self::new(shape, HostData::I64(data))
    }

    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The f32 values, or `None` for an int64 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::I64(_) => None,
        }
    }

    /// The int64 values, or `None` for an f32 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// The values as f32 whatever the stored type (int64 converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// Named host tensors in insertion order, looked up by name in O(1), plus the string metadata
/// of the file they came from (safetensors `__metadata__`).
#[derive(Clone, Default, PartialEq)]
pub struct StateDict {
    entries: Vec<(String, HostTensor)>,
    index: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl StateDict {
    /// An empty dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the dict holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// The tensor called `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut HostTensor> {
        self.index.get(name).map(|&i| &mut self.entries[i].1)
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Insert or replace `name` (a replaced tensor keeps its position); returns the old tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) -> Option<HostTensor> {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, tensor)),
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, tensor));
                None
            }
        }
    }

    /// Remove `name`, keeping the order of the others.
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        let i = self.index.remove(name)?;
        let (_, t) = self.entries.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        Some(t)
    }

    /// Names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// `(name, tensor)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// String metadata (safetensors `__metadata__` of a loaded file; empty otherwise).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Mutable access to the metadata.
    pub fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        &mut self.metadata
    }

    /// The tensors whose names start with `prefix`, with the prefix removed, in order (for
    /// example `params.` of a golden file or `module.` of a `DataParallel` checkpoint).
    pub fn strip_prefix(&self, prefix: &str) -> StateDict {
        let mut out = StateDict {
            metadata: self.metadata.clone(),
            ..Default::default()
        };
        for (k, v) in self.iter() {
            if let Some(rest) = k.strip_prefix(prefix) {
                out.insert(rest, v.clone());
            }
        }
        out
    }

    /// Total number of elements over all tensors.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.numel()).sum()
    }
}

impl<S: Into<String>> FromIterator<(S, HostTensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (S, HostTensor)>>(iter: I) -> Self {
        let mut d = StateDict::new();
        for (k, v) in iter {
            d.insert(k, v);
        }
        d
    }
}
