//! Content-defined chunking (FastCDC) and BLAKE3 chunk hashes, behind one type whose parameters
//! travel in the handshake so they can change with a protocol version.

use crate::wire::{ChunkSpec, ChunkerId, Hash};

/// Buffers at least this large are hashed on all cores.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// A chunk found in a buffer: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub offset: u64,
    pub len: u32,
    pub hash: Hash,
}

/// The chunker: FastCDC (v2020) boundaries, BLAKE3 hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunker {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// Inputs larger than this are cut into segments of this size, chunked in parallel.
    pub segment: u64,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
            segment: 256 << 20,
        }
    }
}

impl Chunker {
    /// The parameters as sent in the handshake.
    pub fn id(&self) -> ChunkerId {
        ChunkerId {
            min: self.min,
            avg: self.avg,
            max: self.max,
            segment: self.segment,
        }
    }

    /// Chunk `data`.
    pub fn chunk(&self, data: &[u8]) -> Vec<ChunkRef> {
        use rayon::prelude::*;
        if data.is_empty() {
            return Vec::new();
        }
        let segment = self.segment as usize;
        if data.len() > segment {
            // Large inputs: fixed segments chunked on all cores. A segment start is a forced
            // boundary, so an insertion costs at most one extra chunk per segment after it.
            return data
                .par_chunks(segment)
                .enumerate()
                .flat_map_iter(|(i, seg)| {
                    let base = (i * segment) as u64;
                    self.chunk_segment(seg).into_iter().map(move |c| ChunkRef {
                        offset: c.offset + base,
                        ..c
                    })
                })
                .collect();
        }
        self.chunk_segment(data)
    }

    fn chunk_segment(&self, data: &[u8]) -> Vec<ChunkRef> {
        use rayon::prelude::*;
        let bounds: Vec<(usize, usize)> =
            fastcdc::v2020::FastCDC::new(data, self.min, self.avg, self.max)
                .map(|c| (c.offset, c.length))
                .collect();
        let one = |&(offset, len): &(usize, usize)| ChunkRef {
            offset: offset as u64,
            len: len as u32,
            hash: hash(&data[offset..offset + len]),
        };
        if data.len() >= PARALLEL_HASH_MIN {
            bounds.par_iter().map(one).collect()
        } else {
            bounds.iter().map(one).collect()
        }
    }
}

/// Hash of a chunk.
pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Digest of a file: the hash of its chunk list. Equal content gives equal digests.
pub fn file_digest(chunks: &[ChunkSpec]) -> Hash {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.hash);
        h.update(&c.len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// The wire form of a chunk list.
pub fn specs(chunks: &[ChunkRef]) -> Vec<ChunkSpec> {
    chunks
        .iter()
        .map(|c| ChunkSpec {
            hash: c.hash,
            len: c.len,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_input_in_order_within_bounds() {
        let data = pseudo_random(3 << 20, 42);
        let c = Chunker::default();
        let chunks = c.chunk(&data);
        let mut off = 0u64;
        for (i, ch) in chunks.iter().enumerate() {
            assert_eq!(ch.offset, off);
            assert!(ch.len <= c.max);
            if i + 1 < chunks.len() {
                assert!(ch.len >= c.min);
            }
            assert_eq!(
                ch.hash,
                hash(&data[off as usize..(off + ch.len as u64) as usize])
            );
            off += ch.len as u64;
        }
        assert_eq!(off, data.len() as u64);
    }

    /// Golden boundaries: if these change, chunk hashes of every existing tree change, which
    /// needs a protocol version bump.
    #[test]
    fn golden_boundaries_for_a_fixed_seed() {
        let data = pseudo_random(1 << 20, 7);
        let lens: Vec<u32> = Chunker::default()
            .chunk(&data)
            .iter()
            .map(|c| c.len)
            .collect();
        assert_eq!(
            lens, GOLDEN_LENS,
            "chunk boundaries changed: bump PROTOCOL_VERSION"
        );
        let digest = file_digest(&specs(&Chunker::default().chunk(&data)));
        assert_eq!(hex(&digest)[..16], *GOLDEN_DIGEST16);
    }

    fn hex(h: &[u8]) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    const GOLDEN_LENS: &[u32] = &[
        68473, 61863, 33232, 80885, 79693, 74196, 74592, 29670, 69592, 76128, 134601, 54672,
        114531, 96448,
    ];
    const GOLDEN_DIGEST16: &str = "3efbca6ee1f0f165";

    #[test]
    fn an_insertion_at_the_head_changes_only_the_first_chunks() {
        let data = pseudo_random(4 << 20, 9);
        let mut edited = b"100 bytes of new header.".repeat(4);
        edited.extend_from_slice(&data);
        let a = Chunker::default().chunk(&data);
        let b = Chunker::default().chunk(&edited);
        let old: std::collections::HashSet<_> = a.iter().map(|c| c.hash).collect();
        let new_bytes: u64 = b
            .iter()
            .filter(|c| !old.contains(&c.hash))
            .map(|c| c.len as u64)
            .sum();
        assert!(
            new_bytes <= (2 * 256) << 10,
            "{new_bytes} new bytes after a 96-byte insertion"
        );
    }

    #[test]
    fn segments_cover_large_inputs_and_bound_the_cost_of_an_insertion() {
        let c = Chunker {
            segment: 1 << 20,
            ..Chunker::default()
        };
        let data = pseudo_random(5 << 20, 11);
        let a = c.chunk(&data);
        let mut off = 0;
        for ch in &a {
            assert_eq!(ch.offset, off);
            assert_eq!(
                ch.hash,
                hash(&data[off as usize..(off + ch.len as u64) as usize])
            );
            off += ch.len as u64;
        }
        assert_eq!(off, data.len() as u64);
        let mut edited = vec![b'x'; 100];
        edited.extend_from_slice(&data);
        let old: std::collections::HashSet<_> = a.iter().map(|c| c.hash).collect();
        let new_bytes: u64 = c
            .chunk(&edited)
            .iter()
            .filter(|ch| !old.contains(&ch.hash))
            .map(|ch| ch.len as u64)
            .sum();
        // At most about two chunks per segment.
        assert!(new_bytes <= (6 * 2 * 256) << 10, "{new_bytes}");
    }

    #[test]
    fn small_inputs_are_one_chunk_and_empty_is_none() {
        assert!(Chunker::default().chunk(&[]).is_empty());
        let c = Chunker::default().chunk(b"hello");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len, 5);
    }
}
