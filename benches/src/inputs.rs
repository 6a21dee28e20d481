//! Inputs for `benches/engine.rs`: random, text-like, zeros and fp16-like buffers.

use testkit::gen::{self, Rng};

/// `len` incompressible bytes.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill(&mut data);
    data
}

/// `len` bytes of source-like text: Python, C++ and prose, in 64 KiB runs.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let ext = *rng.pick(&["py", "cpp", "h", "txt"]);
        let run = (len - data.len()).min(64 << 10);
        data.extend(gen::text(&mut rng, ext, run));
    }
    data
}

/// `len` bytes of fp16 weights, as in a checkpoint (see [`super::fp16`]).
pub fn fp16(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    super::fp16::fill(&mut data, seed);
    data
}
