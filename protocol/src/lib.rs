//! `protocol`: mtr's content-addressed sync engine, shared by the `mtr` CLI and `mtr-agent`.
//!
//! It owns the wire messages and their framing ([`wire`], [`codec`]), content-defined chunking
//! ([`chunker`]), the local tree scan with its stat-validated index ([`scan`], [`index`]),
//! manifests and their diff ([`manifest`]), and the two roles of a sync session: the
//! [`source`] that has the tree and the [`sink`] that receives it, which a download ([`get`])
//! runs the other way round. A session runs over any `Read`/`Write` pair; this crate knows
//! nothing of SSH, terminals or command lines.
//!
//! ```
//! use protocol::chunker::Chunker;
//! let data = vec![7u8; 100_000];
//! let chunks = Chunker::default().chunk(&data);
//! assert_eq!(chunks.iter().map(|c| c.len as usize).sum::<usize>(), data.len());
//! ```

pub mod chunker;
pub mod codec;
pub mod compress;
pub mod error;
pub mod get;
pub mod index;
pub mod manifest;
pub mod paths;
pub mod scan;
pub mod sink;
pub mod source;
pub mod watch;
pub mod wire;

pub use error::{Error, Result};
pub use wire::{Hash, PROTOCOL_VERSION};
