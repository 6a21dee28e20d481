//! The source role of a sync session: it has the tree and sends the sink what it lacks.

use std::io::{Read, Write};

use crate::chunker::Chunker;
use crate::codec::{FrameReader, FrameWriter};
use crate::error::{Error, Result};
use crate::wire::{FromSink, Hash, ToSink, PROTOCOL_VERSION};

/// What the sink said in its greeting.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The sink's program version.
    pub version: String,
    /// The sink's root, absolute.
    pub root: String,
    /// Token of the tree as of the sink's last commit.
    pub token: Option<Hash>,
    /// Paths the sink wrote that changed on its side since.
    pub dirty: Vec<String>,
}

/// Greet the sink: send `Hello` for `root` and check it runs `expected_version` of the same
/// protocol. An agent of another version is an error (never used).
pub fn handshake<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    root: &str,
    expected_version: &str,
) -> Result<Ack> {
    w.msg(&ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: expected_version.to_string(),
        root: root.to_string(),
        chunker: Chunker::default().id(),
    })?;
    w.flush()?;
    match r.msg::<FromSink>()? {
        FromSink::HelloAck {
            protocol,
            version,
            root,
            token,
            dirty,
        } => {
            if protocol != PROTOCOL_VERSION || version != expected_version {
                return Err(Error::Version(format!(
                    "the agent speaks protocol {protocol} version {version}, expected protocol {PROTOCOL_VERSION} version {expected_version}"
                )));
            }
            Ok(Ack {
                version,
                root,
                token,
                dirty,
            })
        }
        FromSink::Error { message } => Err(Error::Remote(message)),
        other => Err(Error::Protocol(format!("expected HelloAck, got {other:?}"))),
    }
}
