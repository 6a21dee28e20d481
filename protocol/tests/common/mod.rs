//! Helpers shared by the hostile-peer tests of both directions (`hostile.rs`: a fake client
//! against the agent's sink; `get.rs`: a fake agent against `--get`'s sink): frames written
//! byte by byte as no honest peer would, and incompressible data.

#![allow(dead_code)]

use protocol::wire::Hash;

/// Frame kinds and chunk codecs as they are on the wire (`protocol::codec`).
pub const KIND_MSG: u8 = 0;
pub const KIND_DATA: u8 = 1;
pub const KIND_ZMSG: u8 = 2;
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
pub const CODEC_SHUFFLE16: u8 = 2;

/// A frame header: the length of what follows the length field, and the kind.
pub fn header(len: u32, kind: u8) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.push(kind);
    v
}

/// A data frame with any codec byte and declared raw length.
pub fn data_frame(hash: &Hash, codec: u8, raw_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = header((1 + 32 + 1 + 4 + payload.len()) as u32, KIND_DATA);
    v.extend_from_slice(hash);
    v.push(codec);
    v.extend_from_slice(&raw_len.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A compressed message frame declaring `raw_len` bytes once decompressed.
pub fn zmsg_frame(raw_len: u32, z: &[u8]) -> Vec<u8> {
    let mut v = header((1 + 4 + z.len()) as u32, KIND_ZMSG);
    v.extend_from_slice(&raw_len.to_le_bytes());
    v.extend_from_slice(z);
    v
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros: 4 bytes on the wire for each,
/// so 32 KiB expand to 1 GiB.
pub fn bomb(blocks: usize) -> Vec<u8> {
    // Magic; no content size, checksum or dictionary; a 128 KiB window.
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let block = (128u32 << 10) << 3 | 1 << 1 | last; // size, RLE, last
        z.extend_from_slice(&block.to_le_bytes()[..3]);
        z.push(0);
    }
    z
}

/// A [`Codec::Shuffle16`] payload for a chunk of `raw_len` bytes whose compressed plane is
/// `z`: the lengths add up, so only decompressing `z` can tell.
pub fn shuffled(z: &[u8], raw_len: u32) -> Vec<u8> {
    let raw_len = raw_len as usize;
    let mut v = vec![1];
    v.extend_from_slice(&(z.len() as u32).to_le_bytes());
    v.extend_from_slice(z);
    v.resize(v.len() + raw_len - raw_len / 2, 0);
    v
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Frame headers that declare lengths far past the limits, and the words of the error that
/// refuses each (either peer).
pub fn huge_frames(hash: &Hash) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "a 4 GiB message",
            header(u32::MAX, KIND_MSG),
            "exceeds the limit",
        ),
        (
            "a 4 GiB compressed message",
            header(u32::MAX, KIND_ZMSG),
            "out of bounds",
        ),
        (
            "a message declaring 4 GiB once decompressed",
            zmsg_frame(u32::MAX, &[0; 16]),
            "over the limit",
        ),
        (
            "a 4 GiB data frame",
            header(u32::MAX, KIND_DATA),
            "out of bounds",
        ),
        (
            "a chunk declaring 4 GiB",
            data_frame(hash, CODEC_ZSTD, u32::MAX, &[0; 16]),
            "over the limit",
        ),
        (
            "a frame of no known kind",
            header(16, 9),
            "unknown frame kind",
        ),
    ]
}

/// Set in the process [`run_alone`] starts: the memory tests' bodies run only there.
pub const MEMORY_CHILD: &str = "MTR_HOSTILE_MEMORY_CHILD";

/// This process's peak resident memory (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs `test` of this binary alone in a process of its own (peak memory is per process, and
/// other tests run on other threads of this one).
pub fn run_alone(test: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--include-ignored", "--nocapture"])
        .env(MEMORY_CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    eprint!("{stderr}");
}
