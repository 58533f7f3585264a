//! The crate's error type. Every failure a user can cause (bad shapes, bad files, missing adapter,
//! limits exceeded) comes back as an [`Error`] whose message names the thing and what was expected.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// All errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable GPU adapter or device.
    #[error("GPU unavailable: {0}")]
    NoAdapter(String),
    /// An op was called with incompatible shapes, dtypes or arguments.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A problem exceeds a device limit.
    #[error("{what} needs {needed} but the device limit `{limit}` is {available}")]
    Limit {
        what: String,
        limit: &'static str,
        needed: u64,
        available: u64,
    },
    /// A GPU operation failed (buffer mapping, device lost, validation).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A file or byte stream had the wrong format.
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Anything else a caller asked for that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Shape/argument error for `op`.
    pub fn shape(op: &'static str, msg: impl fmt::Display) -> Self {
        Error::Shape {
            op,
            msg: msg.to_string(),
        }
    }
    /// Format error for the file or stream named `path`.
    pub fn format(path: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::Format {
            path: path.to_string(),
            msg: msg.to_string(),
        }
    }
    /// I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
