//! fp16 weights drawn from N(0, 0.02²), like a trained layer: zstd keeps ~92% of them.
//!
//! The same distribution as `testkit::gen::fp16_like`, but generated in fixed 1 MiB blocks
//! each seeded from `(seed, block)`, so a 1 GB file is written on all cores and streamed
//! (testkit's version builds the whole file in one buffer on one core). The bytes depend on
//! the seed and the offset only, never on the thread count.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;

use testkit::gen::Rng;

const BLOCK: usize = 1 << 20;

/// Fills `buf` with the fp16 values that sit at offset 0 for `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    for (i, block) in buf.chunks_mut(BLOCK).enumerate() {
        fill_block(block, seed, i as u64);
    }
}

/// Writes `len` bytes of fp16 values for `seed` into `file` at `offset` (a multiple of 2),
/// on all cores.
pub fn write_at(file: &File, offset: u64, len: u64, seed: u64) -> io::Result<()> {
    let blocks = len.div_ceil(BLOCK as u64);
    let threads = thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> io::Result<()> {
                    let mut buf = vec![0u8; BLOCK];
                    for b in (t..blocks).step_by(threads as usize) {
                        let start = b * BLOCK as u64;
                        let n = (len - start).min(BLOCK as u64) as usize;
                        fill_block(&mut buf[..n], seed, b);
                        file.write_all_at(&buf[..n], offset + start)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap())
    })
}

/// Creates `path` holding `len` bytes of fp16 values for `seed`.
pub fn write_file(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let file = File::create(path)?;
    file.set_len(len)?;
    write_at(&file, 0, len, seed)
}

fn fill_block(block: &mut [u8], seed: u64, index: u64) {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f));
    for pair in block.chunks_mut(4) {
        // Box–Muller gives two independent normals per draw: use both.
        let u1 = 1.0 - rng.unit();
        let u2 = rng.unit();
        let r = (-2.0 * u1.ln()).sqrt() * 0.02;
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        let mut bytes = [0u8; 4];
        bytes[..2].copy_from_slice(&f32_to_f16((r * c) as f32).to_le_bytes());
        bytes[2..].copy_from_slice(&f32_to_f16((r * s) as f32).to_le_bytes());
        pair.copy_from_slice(&bytes[..pair.len()]);
    }
}

/// Round-toward-zero f32 → f16, enough for values of small magnitude.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp >= 31 {
        sign | 0x7c00
    } else if exp <= 0 {
        if exp < -10 {
            return sign;
        }
        sign | ((mant | 0x80_0000) >> (14 - exp)) as u16
    } else {
        sign | ((exp as u16) << 10) | (mant >> 13) as u16
    }
}
