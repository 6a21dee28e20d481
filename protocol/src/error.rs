//! Typed errors of the sync engine. Every variant names the path or peer it concerns; the
//! binaries add host context on top.

use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a local or remote path. The cause is part of the message, not a
    /// `source`: anyhow's `{:#}` would print it twice.
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The byte stream to the peer failed (closed, reset, short read).
    #[error("connection to the peer failed: {0}")]
    Transport(std::io::Error),
    /// The peer sent something that is not valid protocol: a bad frame, an oversized length,
    /// a message out of order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer speaks another protocol or agent version.
    #[error("version mismatch: {0}")]
    Version(String),
    /// The peer asked for something unsafe (absolute path, `..`, write through a symlink).
    #[error("refused unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// The peer reported an error and ended the session.
    #[error("{0}")]
    Remote(String),
    /// A local file changed while it was being read.
    #[error("{0} changed while it was being synced; run the sync again")]
    Changed(PathBuf),
    /// A conflict the engine refuses to resolve by destroying data.
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// Wrap an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }

    /// Whether this is a write that failed for want of space: the disk is full (`ENOSPC`)
    /// or the user's quota is spent (`EDQUOT`).
    pub fn is_storage_full(&self) -> bool {
        match self {
            Error::Io { cause, .. } => {
                matches!(
                    cause.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            _ => false,
        }
    }
}

/// Extension to attach a path to `io::Result`s.
pub trait IoContext<T> {
    /// Attach `op` and `path` to the error.
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
