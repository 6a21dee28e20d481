//! Chunk compression: zstd where it pays, raw where it does not (fp16/bf16 weights barely
//! compress, and compressing them would make the CPU the bottleneck). Decompression is bounded
//! by the declared raw length, itself bounded by the frame limit.

use crate::codec::MAX_CHUNK;
use crate::error::{Error, Result};

/// zstd level for chunk data: fast, and most of the gain on source text and object files.
pub const LEVEL: i32 = 1;

/// Bytes of a chunk compressed first to decide whether the rest is worth compressing.
const SAMPLE: usize = 8 << 10;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd with a per-thread context (creating one per chunk costs more than small chunks).
fn zcompress(raw: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        c.as_mut()?.compress(raw).ok()
    })
}

/// Compress `raw`; `None` when it would not be at least 1/8 smaller, in which case sending it
/// raw costs less than the CPU on both sides. Large chunks are judged by a sample first, so
/// incompressible data (fp16 weights keep ~92% of their size) costs little CPU.
pub fn compress(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 64 {
        return None;
    }
    let worth = |input: usize, output: usize| output < input - input / 8;
    if raw.len() > 4 * SAMPLE {
        let mid = raw.len() / 2;
        let sample = &raw[mid..mid + SAMPLE];
        let out = zcompress(sample)?;
        if !worth(SAMPLE, out.len()) {
            return None;
        }
    }
    let out = zcompress(raw)?;
    worth(raw.len(), out.len()).then_some(out)
}

/// Decompress a payload that must expand to exactly `raw_len` bytes.
pub fn decompress(payload: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let raw_len = raw_len as usize;
    if raw_len > MAX_CHUNK {
        return Err(Error::Protocol(format!(
            "chunk of {raw_len} bytes is over the limit"
        )));
    }
    let out = DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("just set").decompress(payload, raw_len)
        })
        .map_err(|e| Error::Protocol(format!("corrupt compressed chunk: {e}")))?;
    if out.len() != raw_len {
        return Err(Error::Protocol(format!(
            "chunk decompressed to {} bytes, {} declared",
            out.len(),
            raw_len
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_and_round_trips() {
        let text = "def train(model, epochs):\n    return model\n".repeat(500);
        let c = compress(text.as_bytes()).expect("text compresses");
        assert!(c.len() < text.len() / 4);
        assert_eq!(decompress(&c, text.len() as u32).unwrap(), text.as_bytes());
    }

    #[test]
    fn random_data_travels_raw() {
        let mut x = 1u64;
        let data: Vec<u8> = (0..65536)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        assert!(compress(&data).is_none());
    }

    #[test]
    fn fp16_weights_travel_raw() {
        // Gaussian weights (sigma 0.02) as IEEE half floats: zstd keeps ~92% of them.
        let mut x = 7u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut data = Vec::with_capacity(128 << 10);
        while data.len() < 128 << 10 {
            let g = (-2.0 * next().ln()).sqrt() * (2.0 * std::f64::consts::PI * next()).cos();
            let v = (g * 0.02) as f32;
            let bits = v.to_bits();
            let sign = ((bits >> 16) & 0x8000) as u16;
            let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
            let half = if exp <= 0 {
                sign
            } else {
                sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
            };
            data.extend_from_slice(&half.to_le_bytes());
        }
        assert!(compress(&data).is_none(), "fp16 weights were compressed");
    }

    #[test]
    fn bomb_and_lies_are_refused() {
        let zeros = vec![0u8; MAX_CHUNK];
        let c = compress(&zeros).unwrap();
        // Declares less than it expands to.
        assert!(decompress(&c, 1000).is_err());
        // Declares more than the limit.
        assert!(decompress(&c, (MAX_CHUNK + 1) as u32).is_err());
        // Declares more than it expands to.
        let small = compress(&[b'a'; 1000]).unwrap();
        assert!(decompress(&small, 2000).is_err());
        assert!(decompress(b"not zstd at all", 100).is_err());
    }
}
