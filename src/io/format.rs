//! Reading and writing [`StateDict`]s as safetensors.
//!
//! Loading accepts F32, F16 and BF16 (converted to f32) and I64 tensors; any other dtype is an
//! error naming the file, the tensor and the dtype. Corrupt input (short file, header length past
//! the end, bad JSON, offsets out of range, sizes that do not match dtype and shape) is an
//! [`Error::Format`] naming the file and the problem; it never panics. A loaded dict lists its
//! tensors in file (data offset) order.
//!
//! Saving goes through the `safetensors` crate (tensors laid out by dtype, then name, as every
//! safetensors writer does) and, for files, to a temporary file in the target's directory that is
//! renamed over the target once complete, so an interrupted save never destroys a good file.

use super::state_dict::{HostData, HostTensor, StateDict};
use crate::{Error, Result};
use ::safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;

/// Parse safetensors `bytes`; `name` (a file name or any label) appears in every error message.
pub fn load_safetensors_bytes(bytes: &[u8], name: &str) -> Result<StateDict> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::format(name, describe(bytes, &e)))?;
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| Error::format(name, describe(bytes, &e)))?;
    let mut dict = StateDict::new();
    for key in meta.offset_keys() {
        let view = st
            .tensor(&key)
            .map_err(|e| Error::format(name, format!("tensor `{key}`: {e}")))?;
        let t = convert(&view, &key, name)?;
        dict.insert(key, t);
    }
    if let Some(m) = meta.metadata() {
        *dict.metadata_mut() = m.clone();
    }
    Ok(dict)
}

/// Read and parse the safetensors file at `path`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_safetensors(path: impl AsRef<std::path::Path>) -> Result<StateDict> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_safetensors_bytes(&bytes, &path.display().to_string())
}

fn convert(
    view: &::safetensors::tensor::TensorView<'_>,
    key: &str,
    file: &str,
) -> Result<HostTensor> {
    let shape = view.shape().to_vec();
    let raw = view.data();
    let data = match view.dtype() {
        Dtype::F32 => HostData::F32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => HostData::F32(
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => HostData::F32(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::I64 => HostData::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
        ),
        other => {
            return Err(Error::format(
                file,
                format!(
                    "tensor `{key}` has unsupported dtype {other:?} \
                     (supported: F32, F16, BF16, I64)"
                ),
            ));
        }
    };
    HostTensor::new(shape, data).map_err(|e| Error::format(file, format!("tensor `{key}`: {e}")))
}

/// A readable explanation of a safetensors parse error; re-reads the header to name the
/// offending tensor where the crate does not.
fn describe(bytes: &[u8], e: &SafeTensorError) -> String {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match e {
        SafeTensorError::HeaderTooSmall => format!(
            "not a safetensors file: {} bytes, too short for the 8-byte header length",
            bytes.len()
        ),
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => format!(
            "not a safetensors file or truncated: header length {} runs past the end of the \
             {}-byte file or exceeds the 100 MB limit",
            header_len.unwrap_or(0),
            bytes.len()
        ),
        SafeTensorError::InvalidHeader(u) => format!("safetensors header is not UTF-8: {u}"),
        SafeTensorError::InvalidHeaderDeserialization(j) | SafeTensorError::JsonError(j) => {
            format!("safetensors header is not valid JSON metadata: {j}")
        }
        SafeTensorError::InvalidOffset(t) => format!(
            "tensor `{t}`: data offsets are not contiguous (each tensor must start where the \
             previous one ends, the first at 0)"
        ),
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::MetadataIncompleteBuffer
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MisalignedSlice => {
            diagnose(bytes).unwrap_or_else(|| format!("invalid safetensors file: {e}"))
        }
        other => format!("invalid safetensors file: {other}"),
    }
}

/// Name the tensor whose byte range does not match its dtype and shape, or explain how the data
/// section disagrees with the file size.
fn diagnose(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: Dtype,
        shape: Vec<usize>,
        data_offsets: (usize, usize),
    }
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = std::str::from_utf8(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    let map: HashMap<String, serde_json::Value> = serde_json::from_str(header).ok()?;
    let mut infos = Vec::new();
    for (k, v) in map {
        if k != "__metadata__" {
            infos.push((k, serde_json::from_value::<Info>(v).ok()?));
        }
    }
    infos.sort_by_key(|(_, i)| i.data_offsets);
    for (k, i) in &infos {
        let (s, e) = i.data_offsets;
        let bits = i
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(i.dtype.bitsize()));
        let Some(bits) = bits else {
            return Some(format!("tensor `{k}`: shape {:?} overflows", i.shape));
        };
        if e < s || e - s != bits / 8 || bits % 8 != 0 {
            return Some(format!(
                "tensor `{k}` ({:?}, shape {:?}) needs {} bytes but its data_offsets [{s}, {e}] \
                 span {}",
                i.dtype,
                i.shape,
                bits / 8,
                e.saturating_sub(s)
            ));
        }
    }
    let end = infos
        .iter()
        .map(|(_, i)| i.data_offsets.1)
        .max()
        .unwrap_or(0);
    let avail = bytes.len() - 8 - n;
    let last = infos.last().map(|(k, _)| k.as_str()).unwrap_or("none");
    Some(if end > avail {
        format!(
            "tensor data offsets run to byte {end} (tensor `{last}`) but the file holds only \
             {avail} bytes after the header (truncated file or offsets out of range)"
        )
    } else {
        format!(
            "tensor data covers {end} bytes but the file holds {avail} bytes after the header \
             (trailing bytes)"
        )
    })
}

/// A state-dict tensor as a safetensors view (little-endian bytes).
struct Out<'a>(&'a HostTensor);

impl View for Out<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I64(_) => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.0.data {
            #[cfg(target_endian = "little")]
            HostData::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            #[cfg(target_endian = "little")]
            HostData::I64(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            #[cfg(not(target_endian = "little"))]
            HostData::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            #[cfg(not(target_endian = "little"))]
            HostData::I64(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
            * if matches!(self.0.data, HostData::F32(_)) {
                4
            } else {
                8
            }
    }
}

/// Serialise `dict` (and its own metadata) to safetensors bytes.
pub fn to_safetensors_bytes(dict: &StateDict) -> Result<Vec<u8>> {
    let meta = (!dict.metadata().is_empty()).then(|| dict.metadata().clone());
    to_safetensors_bytes_with_metadata(dict, meta)
}

/// Serialise `dict` with `metadata` as the `__metadata__` (replacing the dict's own).
pub fn to_safetensors_bytes_with_metadata(
    dict: &StateDict,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    for (k, t) in dict.iter() {
        if t.data.len() != t.numel() {
            return Err(Error::shape(
                "save_safetensors",
                format!(
                    "tensor `{k}` has shape {:?} ({} elements) but holds {} values",
                    t.shape,
                    t.numel(),
                    t.data.len()
                ),
            ));
        }
    }
    ::safetensors::serialize(dict.iter().map(|(k, t)| (k, Out(t))), metadata)
        .map_err(|e| Error::Invalid(format!("cannot serialise state dict: {e}")))
}

/// Save `dict` to `path` atomically: the bytes go to a temporary file in the same directory,
/// which is flushed to disk and renamed over `path`. `metadata` becomes the file's
/// `__metadata__` (`None`: the dict's own metadata, if any).
#[cfg(not(target_arch = "wasm32"))]
pub fn save_safetensors(
    dict: &StateDict,
    path: impl AsRef<std::path::Path>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let meta = metadata.or_else(|| (!dict.metadata().is_empty()).then(|| dict.metadata().clone()));
    let bytes = to_safetensors_bytes_with_metadata(dict, meta)?;
    write_atomically(path.as_ref(), |f| std::io::Write::write_all(f, &bytes))
}

/// Write a file through `write` into a temporary sibling of `path`, sync it and rename it over
/// `path`. On any failure the temporary file is removed and `path` is left as it was. Every file
/// this crate saves goes through it (weights, checkpoints, conv tunings); it is public for
/// programs that save beside them.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn interrupted_write_keeps_old_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("rw-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("model.safetensors");
        std::fs::write(&target, b"good old contents").unwrap();
        let err = write_atomically(&target, |f| {
            std::io::Write::write_all(f, b"half a fi")?;
            Err(std::io::Error::other("simulated crash mid-write"))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("model.safetensors") && msg.contains("simulated"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"good old contents");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
        write_atomically(&target, |f| std::io::Write::write_all(f, b"new")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
