//! Content-defined chunking (FastCDC) and BLAKE3 chunk hashes, behind one type whose parameters
//! travel in the handshake so they can change with a protocol version.

use crate::wire::{ChunkSpec, ChunkerId, Hash};

/// Buffers at least this large are hashed on all cores.
const PARALLEL_HASH_MIN: usize = 4 << 20;
/// A segment is chunked and hashed a strip of about this many bytes at a time; each strip is
/// then handed to the caller's `done`, which may drop its pages (a mapped file stays out of
/// the resident set instead of counting in full).
const STRIP: usize = 16 << 20;

/// Told of each byte range of the input that will not be read again, in order within a
/// segment (segments run in parallel).
pub type Done<'a> = &'a (dyn Fn(u64, u64) + Sync);

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
        self.chunk_with(data, &|_, _| {})
    }

    /// [`Chunker::chunk`], calling `done(offset, len)` for each strip of `data` once read.
    pub fn chunk_with(&self, data: &[u8], done: Done) -> Vec<ChunkRef> {
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
                    self.chunk_segment(seg, base, done)
                })
                .collect();
        }
        self.chunk_segment(data, 0, done)
    }

    /// Chunk `data`, a new version of a file that chunked as `old`: the result is exactly
    /// [`Chunker::chunk`]'s, found mostly by hashing. Where an old chunk starts at a boundary
    /// (at the same offset, or shifted by the change in length: an insertion or deletion
    /// before it), its bytes hash the same, and the cut after it is one FastCDC makes there
    /// too, it is taken as is; elsewhere FastCDC runs until its boundaries meet old ones
    /// again. A cut depends only on the chunk's bytes, the byte after it and the room left
    /// in its segment, so a chunk is taken when the next old chunk also hashes the same (it
    /// holds that byte), or when both cuts were forced at the same length (the maximum size
    /// or the segment's end). An unchanged 1 GB file costs a BLAKE3 pass instead of FastCDC
    /// + BLAKE3, about three times less.
    pub fn rechunk(&self, data: &[u8], old: &[ChunkSpec]) -> Vec<ChunkRef> {
        self.rechunk_with(data, old, &|_, _| {})
    }

    /// [`Chunker::rechunk`], calling `done(offset, len)` for each strip of `data` once read.
    pub fn rechunk_with(&self, data: &[u8], old: &[ChunkSpec], done: Done) -> Vec<ChunkRef> {
        use rayon::prelude::*;
        if data.is_empty() {
            return Vec::new();
        }
        let hint = Hint::new(old, data.len() as u64, self);
        let segment = self.segment as usize;
        if data.len() > segment {
            return data
                .par_chunks(segment)
                .enumerate()
                .flat_map_iter(|(i, seg)| {
                    self.rechunk_segment(seg, (i * segment) as u64, &hint, done)
                })
                .collect();
        }
        self.rechunk_segment(data, 0, &hint, done)
    }

    /// [`Chunker::rechunk`] of the segment `seg`, which starts at `base` in the file.
    fn rechunk_segment(&self, seg: &[u8], base: u64, hint: &Hint, done: Done) -> Vec<ChunkRef> {
        let cdc = fastcdc::v2020::FastCDC::new(seg, self.min, self.avg, self.max);
        let max = self.max as usize;
        let end = seg.len();
        // The room FastCDC has for a chunk starting `left` bytes before its segment's end;
        // it looks for a hash cut before the even number below it.
        let room = |left: usize| left.min(max);
        let searched = |room: usize| room & !1;
        let mut out: Vec<ChunkRef> = Vec::new();
        // Chunks FastCDC cut, hashed at the end (on all cores when large).
        let mut unhashed: Vec<usize> = Vec::new();
        // The last old chunk hashed here, where, and whether it matched.
        let mut memo: Option<(usize, usize, bool)> = None;
        let mut same = |k: usize, at: usize| {
            if let Some((mk, ma, ok)) = memo {
                if (mk, ma) == (k, at) {
                    return ok;
                }
            }
            let c = &hint.chunks[k];
            let ok = at + c.len as usize <= end && hash(&seg[at..at + c.len as usize]) == c.hash;
            memo = Some((k, at, ok));
            ok
        };
        let mut shifted = false;
        let mut b = 0usize;
        // The end of the last strip handed to `done`.
        let mut released = 0usize;
        while b < end {
            if b - released >= STRIP {
                // Chunks found so far end at or before `b`: hash them, and let their bytes go
                // (candidates hashed from here on start at `b`).
                fill_hashes(seg, base, &mut out, &mut unhashed);
                done(base + released as u64, (b - released) as u64);
                released = b;
            }
            let at = base + b as u64;
            let mut taken = None;
            for (k, moved) in hint.candidates(at, shifted) {
                let c = &hint.chunks[k];
                let len = c.len as usize;
                let (old_room, new_room) = (room(hint.left(k)), room(end - b));
                let forced = len == old_room;
                let alike = if forced {
                    // Cut at the maximum size or the segment's end: the same here if the room
                    // is the same.
                    new_room == len
                } else {
                    // A hash cut, made looking at the byte after the chunk: the first of the
                    // next old chunk (in the same old segment, the cut not being forced).
                    // Below the searched room, which mask FastCDC applies depends on the
                    // position alone (the small one below `avg`).
                    len < searched(new_room) && k + 1 < hint.chunks.len()
                };
                if alike && same(k, b) && (forced || same(k + 1, b + len)) {
                    taken = Some(*c);
                    shifted = moved;
                    break;
                }
            }
            match taken {
                Some(c) => {
                    out.push(ChunkRef { offset: at, ..c });
                    b += c.len as usize;
                }
                None => {
                    let cut = cdc.cut(b, end - b).1;
                    unhashed.push(out.len());
                    out.push(ChunkRef {
                        offset: at,
                        len: (cut - b) as u32,
                        hash: [0; 32],
                    });
                    b = cut;
                }
            }
        }
        fill_hashes(seg, base, &mut out, &mut unhashed);
        if released < end {
            done(base + released as u64, (end - released) as u64);
        }
        out
    }

    /// Chunk the segment `seg`, which starts at `base` in the input, a strip at a time.
    fn chunk_segment(&self, seg: &[u8], base: u64, done: Done) -> Vec<ChunkRef> {
        let mut out = Vec::new();
        let mut unhashed = Vec::new();
        let mut released = 0usize;
        for c in fastcdc::v2020::FastCDC::new(seg, self.min, self.avg, self.max) {
            unhashed.push(out.len());
            out.push(ChunkRef {
                offset: base + c.offset as u64,
                len: c.length as u32,
                hash: [0; 32],
            });
            let end = c.offset + c.length;
            if end - released >= STRIP {
                fill_hashes(seg, base, &mut out, &mut unhashed);
                done(base + released as u64, (end - released) as u64);
                released = end;
            }
        }
        fill_hashes(seg, base, &mut out, &mut unhashed);
        if released < seg.len() {
            done(base + released as u64, (seg.len() - released) as u64);
        }
        out
    }
}

/// Hash the chunks of `out` listed in `unhashed` (all in `seg`, which starts at `base`), on
/// all cores when they are many bytes, and empty the list.
fn fill_hashes(seg: &[u8], base: u64, out: &mut [ChunkRef], unhashed: &mut Vec<usize>) {
    use rayon::prelude::*;
    let fill = |i: &usize| {
        let c = out[*i];
        let from = (c.offset - base) as usize;
        (*i, hash(&seg[from..from + c.len as usize]))
    };
    let bytes: usize = unhashed.iter().map(|i| out[*i].len as usize).sum();
    let hashes: Vec<(usize, Hash)> = if bytes >= PARALLEL_HASH_MIN {
        unhashed.par_iter().map(fill).collect()
    } else {
        unhashed.iter().map(fill).collect()
    };
    for (i, h) in hashes {
        out[i].hash = h;
    }
    unhashed.clear();
}

/// The old chunks of a file, found by offset, for [`Chunker::rechunk`].
struct Hint {
    chunks: Vec<ChunkRef>,
    /// Chunk index by offset.
    at: std::collections::HashMap<u64, usize>,
    /// New length minus old length: where an insertion or deletion moved the chunks after it.
    shift: i64,
    old_len: u64,
    segment: u64,
}

impl Hint {
    fn new(old: &[ChunkSpec], new_len: u64, chunker: &Chunker) -> Hint {
        // A list no chunker of these parameters makes (a damaged index) hints nothing.
        let old = if old.iter().all(|c| c.len > 0 && c.len <= chunker.max) {
            old
        } else {
            &[]
        };
        let segment = chunker.segment;
        let mut off = 0u64;
        let chunks: Vec<ChunkRef> = old
            .iter()
            .map(|c| {
                let r = ChunkRef {
                    offset: off,
                    len: c.len,
                    hash: c.hash,
                };
                off += c.len as u64;
                r
            })
            .collect();
        let at = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (c.offset, i))
            .collect();
        Hint {
            chunks,
            at,
            shift: new_len as i64 - off as i64,
            old_len: off,
            segment,
        }
    }

    /// Old chunks that may start at `at` in the new file, and whether they moved: one at the
    /// same offset and one moved by the change in length, the moved one first if `moved_first`
    /// (the last chunk taken had moved).
    fn candidates(&self, at: u64, moved_first: bool) -> impl Iterator<Item = (usize, bool)> + '_ {
        let moved = (self.shift != 0)
            .then(|| u64::try_from(at as i64 - self.shift).ok())
            .flatten()
            .map(|o| (o, true));
        let order = if moved_first {
            [moved, Some((at, false))]
        } else {
            [Some((at, false)), moved]
        };
        order
            .into_iter()
            .flatten()
            .filter_map(|(o, m)| Some((*self.at.get(&o)?, m)))
    }

    /// Bytes from old chunk `k`'s start to the end of its segment (or of the old file).
    fn left(&self, k: usize) -> usize {
        let o = self.chunks[k].offset;
        let seg_end = (o / self.segment + 1).saturating_mul(self.segment);
        (seg_end.min(self.old_len) - o) as usize
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

    /// `rechunk` must give exactly what `chunk` gives, whatever the edit: boundaries and
    /// hashes are what both peers compare.
    #[test]
    fn rechunk_equals_chunk_after_any_edit() {
        let small = Chunker {
            min: 256,
            avg: 1024,
            max: 4096,
            segment: 64 << 10,
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        for round in 0..200 {
            let c = if round % 10 == 9 {
                Chunker::default()
            } else {
                small
            };
            let scale = if round % 10 == 9 { 16 } else { 1 };
            let len = (next(300 << 10) + 1) * scale / 4 + next(3);
            let mut old = pseudo_random(len, round as u64 + 1);
            if round % 7 == 0 {
                // Runs of zeros make forced cuts at the maximum size.
                let at = next(len);
                let n = next(len - at).min(40_000 * scale);
                old[at..at + n].fill(0);
            }
            let mut new = old.clone();
            match round % 8 {
                0 => {
                    for _ in 0..1 + next(6) {
                        let at = next(new.len());
                        let n = next(new.len() - at).min(5000 * scale);
                        let fresh = pseudo_random(n, next(1 << 30) as u64);
                        new[at..at + n].copy_from_slice(&fresh);
                    }
                }
                1 => {
                    let n = 1 + next(300);
                    new.splice(0..0, pseudo_random(n, 5));
                }
                2 => {
                    let at = next(new.len());
                    new.splice(at..at, pseudo_random(1 + next(9000), 6));
                }
                3 => {
                    let at = next(new.len());
                    let n = next(new.len() - at).min(9000);
                    new.drain(at..at + n);
                }
                4 => new.extend(pseudo_random(1 + next(70_000), 7)),
                5 => new.truncate(next(new.len()) + 1),
                6 => {}
                _ => new = pseudo_random(new.len(), 99),
            }
            let old_chunks = specs(&c.chunk(&old));
            let expect = c.chunk(&new);
            assert_eq!(
                c.rechunk(&new, &old_chunks),
                expect,
                "round {round}: {} -> {} bytes",
                old.len(),
                new.len()
            );
        }
        // Tiny segments put most chunks near a segment's end, where the room left decides
        // cuts; edits right at an old boundary change only the byte after a chunk.
        let tiny = Chunker {
            min: 64,
            avg: 256,
            max: 1024,
            segment: 2048,
        };
        for round in 0..3000 {
            let old = pseudo_random(next(40_000) + 1, round as u64 + 7);
            let bounds = tiny.chunk(&old);
            let at = bounds[next(bounds.len())].offset as usize;
            let mut new = old.clone();
            match round % 4 {
                0 => new[at] ^= 1 + next(255) as u8,
                1 => {
                    new.splice(at..at, pseudo_random(1 + next(5), round as u64));
                }
                2 => {
                    new.drain(at..(at + 1 + next(5)).min(old.len()));
                }
                _ => {
                    new.splice(0..0, pseudo_random(1 + next(2100), round as u64));
                }
            }
            assert_eq!(
                tiny.rechunk(&new, &specs(&bounds)),
                tiny.chunk(&new),
                "tiny round {round}"
            );
        }
        // Hints that no chunker made are ignored, and no hint is like a fresh chunking.
        let data = pseudo_random(200 << 10, 3);
        let c = Chunker::default();
        let junk = [ChunkSpec {
            hash: [0; 32],
            len: 0,
        }];
        assert_eq!(c.rechunk(&data, &junk), c.chunk(&data));
        assert_eq!(c.rechunk(&data, &[]), c.chunk(&data));
        assert!(c.rechunk(&[], &specs(&c.chunk(&data))).is_empty());
    }

    /// `done` hears of every byte once, strip by strip in each segment, after the chunks
    /// there are found; the chunks are `chunk`'s.
    #[test]
    fn strips_are_released_once_each_and_change_nothing() {
        let c = Chunker {
            segment: 40 << 20,
            ..Chunker::default()
        };
        let data = pseudo_random(100 << 20, 11);
        let mut edited = data.clone();
        edited[5 << 20..6 << 20].fill(7);
        let check = |run: &dyn Fn(Done) -> Vec<ChunkRef>, expect: Vec<ChunkRef>| {
            let ranges = std::sync::Mutex::new(Vec::new());
            let done = |off: u64, len: u64| ranges.lock().unwrap().push((off, len));
            assert_eq!(run(&done), expect);
            let mut r = ranges.into_inner().unwrap();
            r.sort_unstable();
            // Covered exactly, in strips no larger than a strip and the largest chunk.
            let mut at = 0;
            for &(off, len) in &r {
                assert_eq!(off, at, "gap or overlap at {off}");
                assert!(len as usize <= STRIP + c.max as usize, "{len}");
                at += len;
            }
            assert_eq!(at, data.len() as u64);
            assert!(r.len() >= 6, "{} strips", r.len());
        };
        let chunks = c.chunk(&data);
        check(&|done| c.chunk_with(&data, done), chunks.clone());
        let old = specs(&chunks);
        check(
            &|done| c.rechunk_with(&edited, &old, done),
            c.chunk(&edited),
        );
    }

    #[test]
    fn small_inputs_are_one_chunk_and_empty_is_none() {
        assert!(Chunker::default().chunk(&[]).is_empty());
        let c = Chunker::default().chunk(b"hello");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len, 5);
    }
}
