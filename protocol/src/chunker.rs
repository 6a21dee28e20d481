//! Content-defined chunking (FastCDC) and BLAKE3 chunk hashes, behind one type whose parameters
//! travel in the handshake so they can change with a protocol version.

use std::collections::BTreeMap;
use std::io;

use crate::wire::{ChunkSpec, ChunkerId, Hash};

/// Buffers at least this large are hashed on all cores.
const PARALLEL_HASH_MIN: usize = 4 << 20;
/// A segment is read, chunked and hashed a strip of about this many bytes at a time: a file
/// of any size costs a strip of memory per segment in flight. An input of one segment is
/// read in strips large enough to hash on all cores; one of several segments (chunked in
/// parallel already) in strips that stay in a core's L2 cache between the copy and the
/// hash. `cargo bench --bench engine -- chunk_file`, 2-core Xeon, page cache warm: 8 MiB
/// strips 1.01 GiB/s on 128 MiB, 1.52 on 512 MiB; 1 MiB strips 0.92 and 1.80.
fn strip_len(input_len: u64, segment: u64) -> usize {
    if input_len > segment {
        1 << 20
    } else {
        8 << 20
    }
}

/// Bytes to chunk: in memory, or read from a file a strip at a time (a file is read, not
/// mapped: a mapped file truncated by another process kills the reader with SIGBUS).
pub trait Input: Sync {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// `len` bytes at `offset`, borrowed or read into `buf`. Fewer bytes than asked (the
    /// input shrank) is an error of kind `UnexpectedEof`.
    fn read<'a>(&'a self, offset: u64, len: usize, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]>;
}

impl Input for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read<'a>(&'a self, offset: u64, len: usize, _: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

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
        self.chunk_input(&data)
            .expect("reading a slice within its length cannot fail")
    }

    /// Chunk `input`. Inputs larger than a segment are cut into fixed segments chunked on
    /// all cores; a segment start is a forced boundary, so an insertion costs at most one
    /// extra chunk per segment after it.
    pub fn chunk_input(&self, input: &dyn Input) -> io::Result<Vec<ChunkRef>> {
        self.chunk_input_each(input, &|_| {})
    }

    /// [`Chunker::chunk_input`], telling `each` (from any thread) every segment's chunks as
    /// soon as they are found.
    pub fn chunk_input_each(
        &self,
        input: &dyn Input,
        each: &(dyn Fn(&[ChunkRef]) + Sync),
    ) -> io::Result<Vec<ChunkRef>> {
        self.chunk_strips(input, strip_len(input.size(), self.segment), each)
    }

    fn chunk_strips(
        &self,
        input: &dyn Input,
        strip: usize,
        each: &(dyn Fn(&[ChunkRef]) + Sync),
    ) -> io::Result<Vec<ChunkRef>> {
        self.per_segment(
            input,
            |base, len| self.chunk_segment(input, base, len, strip),
            each,
        )
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
        self.rechunk_input(&data, old)
            .expect("reading a slice within its length cannot fail")
    }

    /// [`Chunker::rechunk`] of `input`.
    pub fn rechunk_input(&self, input: &dyn Input, old: &[ChunkSpec]) -> io::Result<Vec<ChunkRef>> {
        self.rechunk_input_each(input, old, &|_| {})
    }

    /// [`Chunker::rechunk_input`], telling `each` the chunks of every segment as soon as they
    /// are found (segments run in parallel, so in any order): a long file's first segments
    /// can be acted on while the rest is read.
    pub fn rechunk_input_each(
        &self,
        input: &dyn Input,
        old: &[ChunkSpec],
        each: &(dyn Fn(&[ChunkRef]) + Sync),
    ) -> io::Result<Vec<ChunkRef>> {
        self.rechunk_strips(input, old, strip_len(input.size(), self.segment), each)
    }

    fn rechunk_strips(
        &self,
        input: &dyn Input,
        old: &[ChunkSpec],
        strip: usize,
        each: &(dyn Fn(&[ChunkRef]) + Sync),
    ) -> io::Result<Vec<ChunkRef>> {
        let hint = Hint::new(old, input.size(), self);
        self.per_segment(
            input,
            |base, len| self.rechunk_segment(input, base, len, &hint, strip),
            each,
        )
    }

    /// `f(base, len)` for each segment of `input`, in parallel, each result told to `each`
    /// as it is found, and all of them joined in order.
    fn per_segment<F>(
        &self,
        input: &dyn Input,
        f: F,
        each: &(dyn Fn(&[ChunkRef]) + Sync),
    ) -> io::Result<Vec<ChunkRef>>
    where
        F: Fn(u64, usize) -> io::Result<Vec<ChunkRef>> + Sync,
    {
        use rayon::prelude::*;
        let size = input.size();
        let found = |base: u64, len: usize| {
            let chunks = f(base, len)?;
            each(&chunks);
            Ok(chunks)
        };
        if size <= self.segment {
            return found(0, size as usize);
        }
        let parts = (0..size.div_ceil(self.segment))
            .into_par_iter()
            .map(|i| {
                let base = i * self.segment;
                found(base, (size - base).min(self.segment) as usize)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// The bytes of the segment of `len` bytes at `base` that chunks starting in
    /// `[from, from + strip)` can touch: the chunk itself and the one after it.
    fn strip<'a>(
        &self,
        input: &'a dyn Input,
        base: u64,
        len: usize,
        from: usize,
        strip: usize,
        buf: &'a mut Vec<u8>,
    ) -> io::Result<&'a [u8]> {
        let to = from
            .saturating_add(strip)
            .saturating_add(2 * self.max as usize)
            .min(len);
        input.read(base + from as u64, to - from, buf)
    }

    /// [`Chunker::rechunk`] of the segment of `len` bytes at `base`, a strip at a time.
    fn rechunk_segment(
        &self,
        input: &dyn Input,
        base: u64,
        end: usize,
        hint: &Hint,
        strip: usize,
    ) -> io::Result<Vec<ChunkRef>> {
        let max = self.max as usize;
        // The room FastCDC has for a chunk starting `left` bytes before its segment's end;
        // it looks for a hash cut before the even number below it.
        let room = |left: usize| left.min(max);
        let searched = |room: usize| room & !1;
        let mut out: Vec<ChunkRef> = Vec::new();
        // Chunks FastCDC cut, hashed at the end of each strip (on all cores when large).
        let mut unhashed: Vec<usize> = Vec::new();
        // The last old chunk hashed here, where, and whether it matched.
        let mut memo: Option<(usize, usize, bool)> = None;
        let mut shifted = false;
        let mut b = 0usize;
        let mut buf = Vec::new();
        while b < end {
            let from = b;
            let view = self.strip(input, base, end, from, strip, &mut buf)?;
            let cdc = fastcdc::v2020::FastCDC::new(view, self.min, self.avg, self.max);
            let mut same = |k: usize, at: usize| {
                if let Some((mk, ma, ok)) = memo {
                    if (mk, ma) == (k, at) {
                        return ok;
                    }
                }
                let c = &hint.chunks[k];
                let (s, e) = (at - from, at - from + c.len as usize);
                let ok = at + c.len as usize <= end && hash(&view[s..e]) == c.hash;
                memo = Some((k, at, ok));
                ok
            };
            while b < end && b - from < strip {
                let at = base + b as u64;
                let mut taken = None;
                for (k, moved) in hint.candidates(at, shifted) {
                    let c = &hint.chunks[k];
                    let len = c.len as usize;
                    let (old_room, new_room) = (room(hint.left(k)), room(end - b));
                    let forced = len == old_room;
                    let alike = if forced {
                        // Cut at the maximum size or the segment's end: the same here if the
                        // room is the same.
                        new_room == len
                    } else {
                        // A hash cut, made looking at the byte after the chunk: the first of
                        // the next old chunk (in the same old segment, the cut not being
                        // forced). Below the searched room, which mask FastCDC applies
                        // depends on the position alone (the small one below `avg`).
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
                        let cut = from + cdc.cut(b - from, room(end - b)).1;
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
            fill_hashes(view, base + from as u64, &mut out, &mut unhashed);
        }
        Ok(out)
    }

    /// Chunk the segment of `len` bytes at `base`, a strip at a time.
    fn chunk_segment(
        &self,
        input: &dyn Input,
        base: u64,
        len: usize,
        strip: usize,
    ) -> io::Result<Vec<ChunkRef>> {
        let mut out = Vec::new();
        let mut unhashed = Vec::new();
        let mut b = 0usize;
        let mut buf = Vec::new();
        while b < len {
            let from = b;
            let view = self.strip(input, base, len, from, strip, &mut buf)?;
            let cdc = fastcdc::v2020::FastCDC::new(view, self.min, self.avg, self.max);
            while b < len && b - from < strip {
                // FastCDC looks at most `max` bytes ahead: the cut is the one it makes in
                // the whole segment.
                let cut = from + cdc.cut(b - from, (len - b).min(self.max as usize)).1;
                unhashed.push(out.len());
                out.push(ChunkRef {
                    offset: base + b as u64,
                    len: (cut - b) as u32,
                    hash: [0; 32],
                });
                b = cut;
            }
            fill_hashes(view, base + from as u64, &mut out, &mut unhashed);
        }
        Ok(out)
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

/// Each chunk of a list with the offset it starts at.
pub fn placed(chunks: &[ChunkSpec]) -> impl Iterator<Item = (u64, &ChunkSpec)> + '_ {
    chunks.iter().scan(0u64, |off, c| {
        let at = *off;
        *off += u64::from(c.len);
        Some((at, c))
    })
}

/// The chunk list that segments of a file of `size` bytes make up (by offset), if they cover
/// it end to end. Both ends of a session apply it to the prefills told, so they agree on which
/// upserts may go without a list ([`crate::wire::Op::UpsertPrefilled`]).
pub(crate) fn joined(
    size: u64,
    segments: &BTreeMap<u64, Vec<ChunkSpec>>,
) -> Option<Vec<ChunkSpec>> {
    let mut all = Vec::new();
    let mut end = 0u64;
    for (&offset, seg) in segments {
        if offset != end {
            return None;
        }
        end += seg.iter().map(|c| u64::from(c.len)).sum::<u64>();
        all.extend_from_slice(seg);
    }
    (end == size).then_some(all)
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

    /// `rechunk_input_each` tells each segment's chunks once, as found: together, the result.
    #[test]
    fn each_segment_is_told_once_as_it_is_found() {
        let c = Chunker {
            segment: 1 << 20,
            ..Chunker::default()
        };
        let data = pseudo_random((5 << 20) + 777, 12);
        let old = specs(&c.chunk(&data));
        let mut edited = data.clone();
        edited.splice(10..10, pseudo_random(100, 13));
        let told = std::sync::Mutex::new(Vec::new());
        let all = c
            .rechunk_input_each(&&edited[..], &old, &|seg| {
                told.lock().unwrap().push(seg.to_vec())
            })
            .unwrap();
        let mut told = told.into_inner().unwrap();
        told.sort_by_key(|seg| seg[0].offset);
        let starts: Vec<u64> = told.iter().map(|seg| seg[0].offset).collect();
        assert_eq!(starts, (0..6).map(|i| i << 20).collect::<Vec<u64>>());
        assert_eq!(told.concat(), all);
        assert_eq!(all, c.chunk(&edited));
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

    /// An input read like a file: copied into the caller's buffer, the largest read
    /// remembered, shorter than it claims from `shrunk_at` on (truncated while read).
    struct FileLike<'a> {
        data: &'a [u8],
        shrunk_at: u64,
        largest: std::sync::atomic::AtomicUsize,
    }

    impl<'a> FileLike<'a> {
        fn new(data: &'a [u8]) -> Self {
            FileLike {
                data,
                shrunk_at: u64::MAX,
                largest: Default::default(),
            }
        }
    }

    impl Input for FileLike<'_> {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }

        fn read<'a>(
            &'a self,
            offset: u64,
            len: usize,
            buf: &'a mut Vec<u8>,
        ) -> io::Result<&'a [u8]> {
            use std::sync::atomic::Ordering::Relaxed;
            self.largest.fetch_max(len, Relaxed);
            if offset + len as u64 > self.shrunk_at {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.clear();
            buf.extend_from_slice(&self.data[offset as usize..offset as usize + len]);
            Ok(buf)
        }
    }

    /// Chunking a strip at a time finds FastCDC's boundaries over each whole segment, with
    /// reads no larger than a strip and two chunks; rechunking agrees.
    #[test]
    fn strips_change_nothing_and_bound_each_read() {
        let c = Chunker {
            min: 64,
            avg: 256,
            max: 1024,
            segment: 300_000,
        };
        let data = pseudo_random(1_000_000, 5);
        let mut expect = Vec::new();
        for (i, seg) in data.chunks(c.segment as usize).enumerate() {
            let base = i as u64 * c.segment;
            for ch in fastcdc::v2020::FastCDC::new(seg, c.min, c.avg, c.max) {
                let at = base + ch.offset as u64;
                expect.push(ChunkRef {
                    offset: at,
                    len: ch.length as u32,
                    hash: hash(&seg[ch.offset..ch.offset + ch.length]),
                });
            }
        }
        let mut edited = data.clone();
        edited.splice(1000..1000, pseudo_random(77, 1));
        edited[500_000..520_000].fill(3);
        let old = specs(&expect);
        for strip in [1, 1000, 4099, 70_000, 1 << 20] {
            let input = FileLike::new(&data);
            assert_eq!(
                c.chunk_strips(&input, strip, &|_| {}).unwrap(),
                expect,
                "strip {strip}"
            );
            let largest = input.largest.into_inner();
            assert!(
                largest <= strip + 2 * c.max as usize,
                "strip {strip}: read {largest}"
            );
            let input = FileLike::new(&edited);
            assert_eq!(
                c.rechunk_strips(&input, &old, strip, &|_| {}).unwrap(),
                c.chunk(&edited),
                "strip {strip}"
            );
            assert!(input.largest.into_inner() <= strip + 2 * c.max as usize);
        }
    }

    /// An input that turns out shorter than its size is an `UnexpectedEof`, not a panic or a
    /// short chunk list.
    #[test]
    fn an_input_that_shrinks_while_read_is_an_error() {
        let c = Chunker::default();
        let data = pseudo_random(3 << 20, 8);
        let old = specs(&c.chunk(&data));
        for shrunk_at in [0, 1 << 20, (3 << 20) - 1] {
            let input = FileLike {
                shrunk_at,
                ..FileLike::new(&data)
            };
            let err = c.chunk_strips(&input, 1 << 20, &|_| {}).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{shrunk_at}");
            let err = c
                .rechunk_strips(&input, &old, 1 << 20, &|_| {})
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{shrunk_at}");
        }
    }

    #[test]
    fn small_inputs_are_one_chunk_and_empty_is_none() {
        assert!(Chunker::default().chunk(&[]).is_empty());
        let c = Chunker::default().chunk(b"hello");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len, 5);
    }
}
