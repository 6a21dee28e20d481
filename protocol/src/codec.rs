//! Framing and encoding. The only place that calls bincode.
//!
//! A frame is `len: u32 LE` (of what follows), `kind: u8`, then the body. Kind 0 is a bincode
//! message; kind 1 is chunk data (`hash[32] codec:u8 raw_len:u32 LE payload`), kept out of
//! bincode so bulk bytes are copied once. Lengths are bounded before anything is allocated, so a
//! hostile or corrupt peer gets an error, never a huge allocation or a panic.

use std::io::{self, BufReader, BufWriter, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::compress::Codec;
use crate::error::{Error, Result};
use crate::wire::Hash;

/// Largest message frame accepted (a manifest batch, a chunk list of a huge file).
pub const MAX_MSG_FRAME: usize = 64 << 20;
/// Largest chunk accepted, compressed or raw.
pub const MAX_CHUNK: usize = 4 << 20;
const DATA_HEADER: usize = 32 + 1 + 4;
const KIND_MSG: u8 = 0;
const KIND_DATA: u8 = 1;
/// A message frame whose bincode body is zstd-compressed: `raw_len: u32 LE`, then the payload.
const KIND_ZMSG: u8 = 2;
/// Message bodies at least this large are compressed when that saves space (paths and
/// manifests compress well).
const ZMSG_MIN: usize = 2048;
/// A data frame's codec byte.
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const CODEC_SHUFFLE16: u8 = 2;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MSG_FRAME>()
}

/// Encode a wire value to bytes (also used for persisted files).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::Protocol(format!("cannot encode: {e}")))
}

/// Decode a wire value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| Error::Protocol(format!("malformed message: {e}")))?;
    if used != bytes.len() {
        return Err(Error::Protocol(format!(
            "malformed message: {} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// One message frame as bytes, for callers that queue frames themselves (a non-blocking
/// writer) instead of writing through a [`FrameWriter`].
pub fn msg_frame<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = FrameWriter {
        w: BufWriter::with_capacity(0, &mut out),
        sent: 0,
    };
    w.msg(value)?;
    w.flush()?;
    drop(w);
    Ok(out)
}

/// A chunk of file data on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    pub hash: Hash,
    /// How `payload` encodes the chunk.
    pub codec: Codec,
    /// Length of the chunk once decompressed.
    pub raw_len: u32,
    pub payload: Vec<u8>,
}

/// One frame read from the peer.
#[derive(Debug)]
pub enum Frame<T> {
    Msg(T),
    Data(DataFrame),
}

/// Writes frames to the peer, buffered.
pub struct FrameWriter<W: Write> {
    w: BufWriter<W>,
    sent: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(w: W) -> Self {
        FrameWriter {
            w: BufWriter::with_capacity(256 << 10, w),
            sent: 0,
        }
    }

    /// Bytes written so far (frames, headers included).
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Queue a message frame.
    pub fn msg<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let body = encode(value)?;
        if body.len() + 1 > MAX_MSG_FRAME {
            return Err(Error::Protocol(format!(
                "message of {} bytes exceeds the frame limit",
                body.len()
            )));
        }
        if body.len() >= ZMSG_MIN {
            if let Ok(z) = zstd::bulk::compress(&body, 1) {
                if z.len() + 4 < body.len() {
                    return self.put(KIND_ZMSG, &(body.len() as u32).to_le_bytes(), &z);
                }
            }
        }
        self.put(KIND_MSG, &[], &body)
    }

    /// Queue a data frame.
    pub fn data(&mut self, hash: &Hash, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        if payload.len() > MAX_CHUNK || raw_len as usize > MAX_CHUNK {
            return Err(Error::Protocol(format!(
                "chunk of {} bytes exceeds the limit",
                payload.len()
            )));
        }
        let mut head = [0u8; DATA_HEADER];
        head[..32].copy_from_slice(hash);
        head[32] = match codec {
            Codec::Raw => CODEC_RAW,
            Codec::Zstd => CODEC_ZSTD,
            Codec::Shuffle16 => CODEC_SHUFFLE16,
        };
        head[33..].copy_from_slice(&raw_len.to_le_bytes());
        self.put(KIND_DATA, &head, payload)
    }

    fn put(&mut self, kind: u8, head: &[u8], body: &[u8]) -> Result<()> {
        let len = (1 + head.len() + body.len()) as u32;
        let w = &mut self.w;
        (|| -> io::Result<()> {
            w.write_all(&len.to_le_bytes())?;
            w.write_all(&[kind])?;
            w.write_all(head)?;
            w.write_all(body)
        })()
        .map_err(Error::Transport)?;
        self.sent += 4 + len as u64;
        Ok(())
    }

    /// Send everything queued.
    pub fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(Error::Transport)
    }
}

/// Reads frames from the peer, buffered, with bounded lengths.
pub struct FrameReader<R: Read> {
    r: BufReader<R>,
    received: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r: BufReader::with_capacity(256 << 10, r),
            received: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
    }

    /// Read the next frame. A clean end of stream before a frame starts is `Ok(None)`.
    pub fn frame<T: DeserializeOwned>(&mut self) -> Result<Option<Frame<T>>> {
        let mut len = [0u8; 4];
        match read_full(&mut self.r, &mut len)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(Error::Protocol("stream ended inside a frame header".into())),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(Error::Protocol("empty frame".into()));
        }
        let mut kind = [0u8; 1];
        self.exact(&mut kind)?;
        let body_len = len - 1;
        let frame = match kind[0] {
            KIND_MSG => {
                if body_len > MAX_MSG_FRAME {
                    return Err(Error::Protocol(format!(
                        "message frame of {body_len} bytes exceeds the limit"
                    )));
                }
                let mut body = vec![0u8; body_len];
                self.exact(&mut body)?;
                Frame::Msg(decode(&body)?)
            }
            KIND_ZMSG => {
                if !(4..=MAX_MSG_FRAME).contains(&body_len) {
                    return Err(Error::Protocol(format!(
                        "compressed message frame of {body_len} bytes is out of bounds"
                    )));
                }
                let mut raw_len = [0u8; 4];
                self.exact(&mut raw_len)?;
                let raw_len = u32::from_le_bytes(raw_len) as usize;
                if raw_len > MAX_MSG_FRAME {
                    return Err(Error::Protocol(format!(
                        "compressed message declares {raw_len} bytes, over the limit"
                    )));
                }
                let mut z = vec![0u8; body_len - 4];
                self.exact(&mut z)?;
                let body = zstd::bulk::decompress(&z, raw_len)
                    .map_err(|e| Error::Protocol(format!("corrupt compressed message: {e}")))?;
                if body.len() != raw_len {
                    return Err(Error::Protocol("compressed message length mismatch".into()));
                }
                Frame::Msg(decode(&body)?)
            }
            KIND_DATA => {
                if body_len < DATA_HEADER || body_len - DATA_HEADER > MAX_CHUNK {
                    return Err(Error::Protocol(format!(
                        "data frame of {body_len} bytes is out of bounds"
                    )));
                }
                let mut head = [0u8; DATA_HEADER];
                self.exact(&mut head)?;
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&head[..32]);
                let codec = match head[32] {
                    CODEC_RAW => Codec::Raw,
                    CODEC_ZSTD => Codec::Zstd,
                    CODEC_SHUFFLE16 => Codec::Shuffle16,
                    c => return Err(Error::Protocol(format!("unknown chunk codec {c:#x}"))),
                };
                let raw_len = u32::from_le_bytes(head[33..37].try_into().unwrap());
                if raw_len as usize > MAX_CHUNK {
                    return Err(Error::Protocol(format!(
                        "chunk declares {raw_len} bytes, over the limit"
                    )));
                }
                let mut payload = vec![0u8; body_len - DATA_HEADER];
                self.exact(&mut payload)?;
                Frame::Data(DataFrame {
                    hash,
                    codec,
                    raw_len,
                    payload,
                })
            }
            k => return Err(Error::Protocol(format!("unknown frame kind {k}"))),
        };
        self.received += 4 + len as u64;
        Ok(Some(frame))
    }

    /// Read the next frame, which must be a message.
    pub fn msg<T: DeserializeOwned>(&mut self) -> Result<T> {
        match self.frame()? {
            Some(Frame::Msg(m)) => Ok(m),
            Some(Frame::Data(_)) => Err(Error::Protocol("unexpected data frame".into())),
            None => Err(Error::Transport(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            ))),
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if read_full(&mut self.r, buf)? != buf.len() {
            return Err(Error::Protocol("stream ended inside a frame".into()));
        }
        Ok(())
    }

    /// The underlying reader (e.g. to skip a preamble before framing starts).
    pub fn get_mut(&mut self) -> &mut BufReader<R> {
        &mut self.r
    }
}

/// Read until `buf` is full or EOF; returns bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Transport(e)),
        }
    }
    Ok(n)
}

/// Skip bytes until `magic` has been read; returns what came before it (shell noise).
/// Gives up after `limit` bytes of noise.
pub fn skip_to_magic(r: &mut impl Read, magic: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if read_full(r, &mut byte)? == 0 {
            return Err(Error::Protocol(format!(
                "the agent ended before its greeting; it printed: {:?}",
                String::from_utf8_lossy(&seen)
            )));
        }
        seen.push(byte[0]);
        if seen.ends_with(magic) {
            seen.truncate(seen.len() - magic.len());
            return Ok(seen);
        }
        if seen.len() > limit {
            return Err(Error::Protocol(format!(
                "no agent greeting after {limit} bytes of output: {:?}",
                String::from_utf8_lossy(&seen[..seen.len().min(200)])
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FromSink, ToSink};

    fn roundtrip_bytes(f: impl FnOnce(&mut FrameWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        f(&mut w);
        w.flush().unwrap();
        drop(w);
        buf
    }

    #[test]
    fn message_and_data_frames_round_trip() {
        let bytes = roundtrip_bytes(|w| {
            w.msg(&ToSink::ListIndex).unwrap();
            w.data(&[9; 32], Codec::Zstd, 10, b"abc").unwrap();
            w.msg(&ToSink::Bye).unwrap();
        });
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(
            r.frame::<ToSink>().unwrap(),
            Some(Frame::Msg(ToSink::ListIndex))
        ));
        match r.frame::<ToSink>().unwrap() {
            Some(Frame::Data(d)) => {
                assert_eq!(d.hash, [9; 32]);
                assert_eq!(d.codec, Codec::Zstd);
                assert_eq!(d.raw_len, 10);
                assert_eq!(d.payload, b"abc");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(r.msg::<ToSink>().unwrap(), ToSink::Bye));
        assert!(r.frame::<ToSink>().unwrap().is_none());
        assert_eq!(r.bytes_received(), bytes.len() as u64);
    }

    #[test]
    fn large_messages_are_compressed_and_round_trip() {
        use crate::wire::{Entry, EntryKind};
        let entries: Vec<Entry> = (0..2000)
            .map(|i| Entry {
                path: format!("src/module_{i}/implementation.py"),
                kind: EntryKind::Dir,
            })
            .collect();
        let msg = FromSink::IndexBatch { entries };
        let plain = encode(&msg).unwrap().len();
        let bytes = roundtrip_bytes(|w| w.msg(&msg).unwrap());
        assert!(bytes.len() < plain / 4, "{} vs {plain}", bytes.len());
        assert_eq!(bytes[4], KIND_ZMSG);
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.msg::<FromSink>().unwrap(), msg);
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let bytes = roundtrip_bytes(|w| w.msg(&FromSink::IndexEnd).unwrap());
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            assert!(r.frame::<FromSink>().is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut bytes = (u32::MAX).to_le_bytes().to_vec();
        bytes.push(KIND_MSG);
        let err = FrameReader::new(&bytes[..]).frame::<ToSink>().unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        let mut data = ((DATA_HEADER + 1) as u32 + 1).to_le_bytes().to_vec();
        data.push(KIND_DATA);
        data.extend_from_slice(&[0; 32]);
        data.push(0);
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.push(0);
        let err = FrameReader::new(&data[..]).frame::<ToSink>().unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            let n = (seed % 64) as usize;
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push(seed as u8);
            }
            // Make some of them look like plausible small frames.
            if buf.len() > 5 {
                let l = (buf.len() - 4) as u32;
                buf[..4].copy_from_slice(&l.to_le_bytes());
                buf[4] = (seed % 3) as u8;
            }
            let mut r = FrameReader::new(&buf[..]);
            while let Ok(Some(_)) = r.frame::<ToSink>() {}
        }
    }

    #[test]
    fn a_queued_frame_reads_back_like_a_written_one() {
        use crate::wire::{Bytes, ToRunner};
        let msg = ToRunner::Stdin(Bytes(vec![0, 1, 2, 255]));
        let bytes = msg_frame(&msg).unwrap();
        assert_eq!(bytes, roundtrip_bytes(|w| w.msg(&msg).unwrap()));
        assert_eq!(bytes.len(), 4 + 1 + 1 + 1 + 4, "bytes travel as one string");
        assert_eq!(FrameReader::new(&bytes[..]).msg::<ToRunner>().unwrap(), msg);
    }

    #[test]
    fn shell_noise_before_magic_is_skipped() {
        let mut input = b"Welcome to node7!\nconda: base\n".to_vec();
        input.extend_from_slice(crate::wire::MAGIC);
        input.extend_from_slice(b"rest");
        let mut r = &input[..];
        let noise = skip_to_magic(&mut r, crate::wire::MAGIC, 1 << 16).unwrap();
        assert_eq!(noise, b"Welcome to node7!\nconda: base\n");
        assert_eq!(r, b"rest");
        assert!(skip_to_magic(&mut &b"no magic here"[..], crate::wire::MAGIC, 1 << 16).is_err());
        assert!(skip_to_magic(&mut &vec![b'x'; 100][..], crate::wire::MAGIC, 50).is_err());
    }
}
