//! The library's errors. Each one names the file, key or value at fault so the CLI can print
//! it on one line and exit non-zero.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An image could not be decoded or is unusable.
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    /// A checkpoint is unreadable, truncated or does not fit the model.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A configuration file or value is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// No usable compute device.
    #[error("{0}")]
    Device(String),
    /// Training cannot go on (a non-finite loss, ...).
    #[error("{0}")]
    Training(String),
    /// Input shapes that cannot go through the model together.
    #[error("{0}")]
    Shape(String),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// A checkpoint problem in `path`.
    pub fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), message: message.into() }
    }

    /// An image problem in `path`.
    pub fn image(path: &Path, message: impl Into<String>) -> Self {
        Error::Image { path: path.to_path_buf(), message: message.into() }
    }
}
