//! Chunk compression: zstd where it pays; for 16-bit data (fp16/bf16 weights) that zstd
//! barely shrinks, zstd on the plane of high bytes (sign and exponent: few values) with the
//! plane of low bytes (mantissa: noise) sent as is; raw otherwise. Each is judged on a sample
//! first, so incompressible data costs little CPU. Decompression is bounded by the declared raw
//! length, itself bounded by the frame limit.

use crate::codec::MAX_CHUNK;
use crate::error::{Error, Result};

/// zstd level for chunk data: fast, and most of the gain on source text and object files.
pub const LEVEL: i32 = 1;

/// Bytes of a chunk compressed first to decide whether the rest is worth compressing.
const SAMPLE: usize = 8 << 10;

/// How a chunk travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// As is.
    Raw,
    /// zstd.
    Zstd,
    /// Split into its even and odd bytes: `plane: u8` (which of them is compressed, 0 or 1),
    /// `len: u32 LE` and that plane zstd-compressed, then the other plane as is, then the odd
    /// last byte if any. For arrays of 16-bit numbers, whose high bytes say much less than
    /// their low ones (fp16 weights: 84% of their size where zstd alone keeps 92%).
    Shuffle16,
}

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

/// zstd-decompress `payload`, which must expand to exactly `len` bytes.
fn zdecompress(payload: &[u8], len: usize) -> Result<Vec<u8>> {
    let out = DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("just set").decompress(payload, len)
        })
        .map_err(|e| Error::Protocol(format!("corrupt compressed chunk: {e}")))?;
    if out.len() != len {
        return Err(Error::Protocol(format!(
            "chunk decompressed to {} bytes, {len} declared",
            out.len()
        )));
    }
    Ok(out)
}

/// Whether `output` bytes instead of `input` save at least 1/8: less is not worth the CPU on
/// both sides.
fn worth(input: usize, output: usize) -> bool {
    output < input - input / 8
}

/// Encode `raw` for the wire; `None` when no codec makes it at least 1/8 smaller (it travels
/// raw). Large chunks are judged by a sample from their middle first.
pub fn compress(raw: &[u8]) -> Option<(Codec, Vec<u8>)> {
    compress_with(raw, true)
}

/// [`compress`], trying [`Codec::Shuffle16`] only if `costly` (it spends about 2 ns of CPU per
/// byte to save a sixth of fp16 data: worth it on a link slower than that).
pub fn compress_with(raw: &[u8], costly: bool) -> Option<(Codec, Vec<u8>)> {
    if raw.len() < 64 {
        return None;
    }
    let sample = if raw.len() > 4 * SAMPLE {
        // Even, so the sample's bytes keep their place in 16-bit words.
        let mid = (raw.len() / 2) & !1;
        &raw[mid..mid + SAMPLE]
    } else {
        raw
    };
    let z = zcompress(sample)?;
    if worth(sample.len(), z.len()) {
        if sample.len() == raw.len() {
            return Some((Codec::Zstd, z));
        }
        let z = zcompress(raw)?;
        return worth(raw.len(), z.len()).then_some((Codec::Zstd, z));
    }
    if !costly {
        return None;
    }
    // The plane of fewer distinct values is the high bytes, whatever the chunk's offset.
    let (even, odd) = (entropy(sample, 0), entropy(sample, 1));
    let (plane, bits) = if odd <= even { (1, odd) } else { (0, even) };
    // Half the bytes at `bits` each, half at 8: not worth a try unless that is about 7/8.
    if bits > 6.5 {
        return None;
    }
    let out = shuffle16(raw, plane)?;
    worth(raw.len(), out.len()).then_some((Codec::Shuffle16, out))
}

/// Order-0 entropy, in bits per byte, of the bytes of `data` at positions `parity` mod 2.
fn entropy(data: &[u8], parity: usize) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in data.iter().skip(parity).step_by(2) {
        counts[*b as usize] += 1;
        n += 1;
    }
    let n = f64::from(n.max(1));
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// [`Codec::Shuffle16`] of `raw`, compressing the even (`plane` 0) or odd (1) bytes.
fn shuffle16(raw: &[u8], plane: u8) -> Option<Vec<u8>> {
    let half = raw.len() / 2;
    let (mut even, mut odd) = (vec![0u8; half], vec![0u8; half]);
    split(&raw[..2 * half], &mut even, &mut odd);
    let (packed, kept) = if plane == 1 { (odd, even) } else { (even, odd) };
    let z = zcompress(&packed)?;
    let mut out = Vec::with_capacity(5 + z.len() + half + 1);
    out.push(plane);
    out.extend_from_slice(&(z.len() as u32).to_le_bytes());
    out.extend_from_slice(&z);
    out.extend_from_slice(&kept);
    out.extend_from_slice(&raw[2 * half..]);
    Some(out)
}

/// Undo [`shuffle16`] into a chunk of `raw_len` bytes.
fn unshuffle16(payload: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let bad = |why: &str| Error::Protocol(format!("corrupt shuffled chunk: {why}"));
    let half = raw_len / 2;
    if payload.len() < 5 {
        return Err(bad("too short"));
    }
    let plane = payload[0];
    if plane > 1 {
        return Err(bad("unknown plane"));
    }
    let zlen = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes")) as usize;
    let rest = &payload[5..];
    if zlen > rest.len() || rest.len() - zlen != raw_len - half {
        return Err(bad("lengths do not add up"));
    }
    let packed = zdecompress(&rest[..zlen], half)?;
    let (kept, tail) = rest[zlen..].split_at(half);
    let (even, odd) = if plane == 1 {
        (kept, &packed[..])
    } else {
        (&packed[..], kept)
    };
    let mut out = vec![0u8; raw_len];
    join(even, odd, &mut out[..2 * half]);
    out[2 * half..].copy_from_slice(tail);
    Ok(out)
}

/// Even bytes of `words` to `even`, odd ones to `odd` (8 bytes at a time).
fn split(words: &[u8], even: &mut [u8], odd: &mut [u8]) {
    // The even (or, shifted, odd) bytes of a little-endian u64, packed into a u32.
    fn pack(x: u64) -> u32 {
        let x = x & 0x00ff_00ff_00ff_00ff;
        let x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
        (x | (x >> 16)) as u32
    }
    let mut w = words.chunks_exact(8);
    let (mut e, mut o) = (even.chunks_exact_mut(4), odd.chunks_exact_mut(4));
    for ((w, e), o) in (&mut w).zip(&mut e).zip(&mut o) {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        e.copy_from_slice(&pack(x).to_le_bytes());
        o.copy_from_slice(&pack(x >> 8).to_le_bytes());
    }
    let rest = w.remainder();
    for (i, (e, o)) in e
        .into_remainder()
        .iter_mut()
        .zip(o.into_remainder())
        .enumerate()
    {
        *e = rest[2 * i];
        *o = rest[2 * i + 1];
    }
}

/// The inverse of [`split`].
fn join(even: &[u8], odd: &[u8], words: &mut [u8]) {
    // Four bytes spread to the even bytes of a u64.
    fn spread(x: u32) -> u64 {
        let x = u64::from(x);
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        (x | (x << 8)) & 0x00ff_00ff_00ff_00ff
    }
    let mut w = words.chunks_exact_mut(8);
    let (mut e, mut o) = (even.chunks_exact(4), odd.chunks_exact(4));
    for ((w, e), o) in (&mut w).zip(&mut e).zip(&mut o) {
        let e = u32::from_le_bytes(e.try_into().expect("4 bytes"));
        let o = u32::from_le_bytes(o.try_into().expect("4 bytes"));
        w.copy_from_slice(&(spread(e) | spread(o) << 8).to_le_bytes());
    }
    let rest = w.into_remainder();
    for (i, (e, o)) in e.remainder().iter().zip(o.remainder()).enumerate() {
        rest[2 * i] = *e;
        rest[2 * i + 1] = *o;
    }
}

/// Decode a payload of `codec` that must expand to exactly `raw_len` bytes.
pub fn decompress(codec: Codec, payload: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let raw_len = raw_len as usize;
    if raw_len > MAX_CHUNK {
        return Err(Error::Protocol(format!(
            "chunk of {raw_len} bytes is over the limit"
        )));
    }
    match codec {
        Codec::Raw if payload.len() == raw_len => Ok(payload.to_vec()),
        Codec::Raw => Err(Error::Protocol("raw chunk length mismatch".into())),
        Codec::Zstd => zdecompress(payload, raw_len),
        Codec::Shuffle16 => unshuffle16(payload, raw_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Gaussian weights (sigma 0.02) as IEEE half floats, little-endian.
    fn fp16(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut data = Vec::with_capacity(len + 1);
        while data.len() < len {
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
        data.truncate(len);
        data
    }

    fn round_trip(raw: &[u8]) -> Option<Codec> {
        let (codec, payload) = compress(raw)?;
        assert_eq!(decompress(codec, &payload, raw.len() as u32).unwrap(), raw);
        Some(codec)
    }

    #[test]
    fn text_compresses_and_round_trips() {
        let text = "def train(model, epochs):\n    return model\n".repeat(500);
        let (codec, c) = compress(text.as_bytes()).expect("text compresses");
        assert_eq!(codec, Codec::Zstd);
        assert!(c.len() < text.len() / 4);
        assert_eq!(
            decompress(codec, &c, text.len() as u32).unwrap(),
            text.as_bytes()
        );
    }

    #[test]
    fn random_data_travels_raw() {
        assert!(compress(&pseudo_random(65536, 1)).is_none());
        assert!(compress(&pseudo_random(3000, 2)).is_none());
    }

    #[test]
    fn fp16_weights_are_shuffled_at_any_offset_and_length() {
        let data = fp16(256 << 10, 7);
        // A chunk may start at an odd offset of the file, and end anywhere.
        for (start, len) in [
            (0, 128 << 10),
            (1, 128 << 10),
            (0, 65537),
            (3, 40001),
            (1, 16001),
        ] {
            let raw = &data[start..start + len];
            let (codec, payload) =
                compress(raw).unwrap_or_else(|| panic!("fp16 at {start}+{len} travels raw"));
            assert_eq!(codec, Codec::Shuffle16, "at {start}+{len}");
            assert!(
                payload.len() < raw.len() * 87 / 100,
                "{} of {} at {start}+{len}",
                payload.len(),
                raw.len()
            );
            assert_eq!(round_trip(raw), Some(Codec::Shuffle16));
        }
    }

    #[test]
    fn a_cpu_bound_sender_sends_fp16_raw_and_text_still_compressed() {
        assert!(compress_with(&fp16(64 << 10, 9), false).is_none());
        let text = "import torch\n".repeat(3000);
        assert_eq!(
            compress_with(text.as_bytes(), false).map(|(c, _)| c),
            Some(Codec::Zstd)
        );
    }

    #[test]
    fn split_and_join_are_inverse_for_every_length() {
        for len in 0..80 {
            let raw = pseudo_random(2 * len, len as u64);
            let (mut even, mut odd) = (vec![0; len], vec![0; len]);
            split(&raw, &mut even, &mut odd);
            for i in 0..len {
                assert_eq!((even[i], odd[i]), (raw[2 * i], raw[2 * i + 1]));
            }
            let mut back = vec![0; 2 * len];
            join(&even, &odd, &mut back);
            assert_eq!(back, raw);
        }
        for plane in [0, 1] {
            for len in [64, 65, 1000, 1001, 4097] {
                let raw = fp16(len, len as u64);
                let packed = shuffle16(&raw, plane).unwrap();
                assert_eq!(unshuffle16(&packed, len).unwrap(), raw);
            }
        }
    }

    #[test]
    fn bomb_and_lies_are_refused() {
        let zeros = vec![0u8; MAX_CHUNK];
        let (codec, c) = compress(&zeros).unwrap();
        // Declares less than it expands to.
        assert!(decompress(codec, &c, 1000).is_err());
        // Declares more than the limit.
        assert!(decompress(codec, &c, (MAX_CHUNK + 1) as u32).is_err());
        // Declares more than it expands to.
        let (codec, small) = compress(&[b'a'; 1000]).unwrap();
        assert!(decompress(codec, &small, 2000).is_err());
        assert!(decompress(Codec::Zstd, b"not zstd at all", 100).is_err());
        assert!(decompress(Codec::Raw, b"abc", 4).is_err());
    }

    #[test]
    fn hostile_shuffled_payloads_are_errors_not_panics() {
        let raw = fp16(10_001, 3);
        let (codec, good) = compress(&raw).unwrap();
        assert_eq!(codec, Codec::Shuffle16);
        let n = raw.len() as u32;
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            decompress(Codec::Shuffle16, &p, n)
        };
        assert!(with(&|p| p[0] = 2).is_err(), "unknown plane");
        assert!(with(&|p| p[1..5].copy_from_slice(&u32::MAX.to_le_bytes())).is_err());
        assert!(with(&|p| p[1..5].copy_from_slice(&0u32.to_le_bytes())).is_err());
        assert!(
            with(&|p| p.truncate(p.len() - 1)).is_err(),
            "short raw plane"
        );
        assert!(with(&|p| p.push(0)).is_err(), "trailing byte");
        assert!(with(&|p| p.truncate(4)).is_err(), "no header");
        assert!(
            decompress(Codec::Shuffle16, &good, n - 1).is_err(),
            "wrong length"
        );
        assert!(
            decompress(Codec::Shuffle16, &good, n + 2).is_err(),
            "wrong length"
        );
        assert!(decompress(Codec::Shuffle16, &[], 0).is_err());
        // The compressed plane must expand to exactly half the chunk.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_CHUNK], 1).unwrap();
        let mut p = vec![1];
        p.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
        p.extend_from_slice(&bomb);
        p.extend_from_slice(&[0; 50]);
        assert!(decompress(Codec::Shuffle16, &p, 100).is_err());
        // Garbage of every small size.
        for len in 0..300 {
            let junk = pseudo_random(len, len as u64 + 5);
            let _ = decompress(Codec::Shuffle16, &junk, (len as u32) * 3);
        }
    }
}
