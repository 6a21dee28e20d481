//! The source role of a sync session: it has the tree and sends the sink what it lacks. `mtr`
//! runs it over the project for an upload; `mtr-agent send` over one remote path for a
//! download ([`crate::get`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{TryRecvError, TrySendError};

use rayon::prelude::*;

use crate::chunker::Chunker;
use crate::codec::{FrameReader, FrameWriter};
use crate::compress::{self, Codec};
use crate::error::{Error, IoContext, Result};
use crate::index;
use crate::manifest::{self, diff, Manifest};
use crate::scan::{self, Filter, Progress};
use crate::wire::{
    ChunkSpec, Entry, EntryKind, FromSink, Hash, Op, SinkStats, SourceIndex, SyncState, ToSink,
    MAX_PREFILL_CHUNKS, PROTOCOL_VERSION,
};

/// What the peer said in its greeting. From a sink (`HelloAck`), all of it; from a download's
/// source ([`crate::get::request`]), its version and, in `root`, the path it sends (no
/// token, nothing dirty).
#[derive(Debug, Clone)]
pub struct Ack {
    /// The peer's program version.
    pub version: String,
    /// The sink's root, absolute (or the path a download's source sends, resolved).
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
    read_ack(r, expected_version)
}

/// Read the sink's answer to `Hello` and check its versions.
pub(crate) fn read_ack<R: Read>(r: &mut FrameReader<R>, expected_version: &str) -> Result<Ack> {
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
        other => Err(Error::Protocol(format!(
            "expected HelloAck, got {}",
            what(&other)
        ))),
    }
}

/// How a source session runs.
pub struct SourceConfig<'a> {
    /// The local tree.
    pub root: &'a Path,
    /// What to leave out.
    pub filter: &'a Filter,
    pub chunker: Chunker,
    /// Where the local chunk index lives (shared by every destination of this tree).
    pub index_path: PathBuf,
    /// Where the state of this destination lives (the tree it acknowledged last).
    pub state_path: PathBuf,
    /// Compute and report the plan; change nothing.
    pub dry_run: bool,
    /// How far reading and compressing chunks runs ahead of the writer.
    pub pipeline: Pipeline,
}

/// How the chunks a sink asked for are read and compressed ahead of the writer: `window`
/// chunks at a time on all cores, up to `depth` windows ready while one is written. The
/// defaults come from `cargo bench --bench params` (its pipeline table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipeline {
    pub window: usize,
    pub depth: usize,
}

/// The pipeline of the chunks a prefill asks for, which travel while the scan still reads and
/// hashes: a quarter of [`Pipeline::default`]'s window (~4 MiB in flight at the 64 KiB
/// average, against ~16), so the two together stay within the memory of a scan alone plus a
/// little. Through 1 Gbit/s the params sweep found 16x2 as fast as 64x2.
const PREFILL_PIPELINE: Pipeline = Pipeline {
    window: 16,
    depth: 2,
};

impl Default for Pipeline {
    fn default() -> Pipeline {
        Pipeline {
            window: 64,
            depth: 2,
        }
    }
}

pub use crate::wire::Change;

/// What a sync did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Entries in the local tree.
    pub entries: usize,
    /// Files read and hashed locally (the rest came from the index).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Nothing differed: only the handshake crossed the wire.
    pub no_op: bool,
    /// The changes, in the order sent.
    pub plan: Vec<Change>,
    /// Chunks sent, their raw size and their size on the wire.
    pub chunks_sent: u64,
    pub raw_bytes_sent: u64,
    pub payload_bytes_sent: u64,
    /// Paths skipped while scanning, with the reason.
    pub warnings: Vec<String>,
    /// What the sink reported.
    pub sink: SinkStats,
}

/// Ops per batch; each batch is answered by one `Need`.
const BATCH_OPS: usize = 2048;
/// Files with content per batch (each holds a descriptor open on the sink).
const BATCH_FILES: usize = 256;
/// Content bytes per batch.
const BATCH_BYTES: u64 = 256 << 20;
/// `Need` rounds answered per batch. An honest sink asks at most twice: once for the chunks
/// it lacks, and once more for those whose copy from a file on its side it found stale (the
/// file changed after the copy was planned; see `Sink::apply`). A third round is a sink that
/// keeps asking: answering it would send the same data without end.
const MAX_NEED_ROUNDS: usize = 2;
/// Chunks requested per batch, over all its rounds, as a multiple of the batch's distinct
/// chunks. An honest sink lists each chunk at most once per round (the second round, only
/// chunks whose copy failed: usually none of the first's), and makes at most
/// [`MAX_NEED_ROUNDS`]: never more than twice the batch's chunks, however it splits them.
const MAX_NEED_FACTOR: usize = 2;

/// The first fields of a [`SyncState`], read without its entries.
#[derive(bincode::Decode)]
struct StateHead {
    protocol: u32,
    token: Option<Hash>,
}

/// A message's name, for errors: a hostile peer's message in full could be megabytes.
fn what(m: &FromSink) -> &'static str {
    match m {
        FromSink::HelloAck { .. } => "HelloAck",
        FromSink::IndexBatch { .. } => "IndexBatch",
        FromSink::IndexEnd => "IndexEnd",
        FromSink::Need { .. } => "Need",
        FromSink::BatchDone => "BatchDone",
        FromSink::Committed { .. } => "Committed",
        FromSink::Error { .. } => "Error",
        FromSink::Refused { .. } => "Refused",
        FromSink::PrefillNeed { .. } => "PrefillNeed",
    }
}

fn expect<R: Read>(r: &mut FrameReader<R>, what: &str) -> Result<FromSink> {
    match r.msg::<FromSink>()? {
        FromSink::Error { message } => Err(Error::Remote(message)),
        m => {
            log::trace!("{what}: {m:?}");
            Ok(m)
        }
    }
}

/// Bring the sink up to date with the local tree. `ack` is the sink's greeting.
pub fn sync<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    ack: &Ack,
    cfg: &SourceConfig,
    progress: &dyn Progress,
) -> Result<Report> {
    let local = scan_local(cfg, progress)?;
    sync_scanned(r, w, ack, cfg, &local, &Prefills::default(), progress)
}

/// The local tree, scanned (and its index saved) by [`scan_local`], ready for
/// [`sync_scanned`]: the scan needs no peer, so it can run while the connection is made.
pub struct LocalTree(Scanned);

/// The first half of [`sync`]: scan the local tree (hashing what changed since the index).
pub fn scan_local(cfg: &SourceConfig, progress: &dyn Progress) -> Result<LocalTree> {
    scan_local_early(cfg, progress, None)
}

/// [`scan_local`], telling `early` the segments of long files that changed as they are found
/// ([`scan::scan_early`]): a session already up can pass them on with [`Prefills`] so the
/// sink starts building those files while the rest is read.
pub fn scan_local_early(
    cfg: &SourceConfig,
    progress: &dyn Progress,
    early: Option<&(dyn Fn(scan::Segment) + Sync)>,
) -> Result<LocalTree> {
    let load = || index::load::<SourceIndex>(&cfg.index_path);
    let tree = scan::scan_early(cfg.root, cfg.filter, load, &cfg.chunker, progress, early)?;
    if !cfg.dry_run && tree.index_outdated {
        index::save(&cfg.index_path, &tree.index())?;
    }
    Ok(LocalTree(Scanned {
        tree,
        origin: Origin {
            path: cfg.root.to_path_buf(),
            nest: None,
        },
    }))
}

/// The segments of long changed files told to the sink before the first batch, so it starts
/// building them while the scan goes on ([`ToSink::Prefill`]): it copies what it holds, and
/// the chunks it holds nowhere ([`FromSink::PrefillNeed`]) are sent at once, so the link
/// works while the rest of the tree is read. A file whose chunk list they make up exactly
/// then goes in its batch as [`Op::UpsertPrefilled`], without the list. Dry runs send none.
#[derive(Default)]
pub struct Prefills {
    /// Each file's size and the segments sent, by offset (the last sent for an offset counts,
    /// as on the sink).
    files: HashMap<String, (u64, BTreeMap<u64, Vec<ChunkSpec>>)>,
    /// Files with a segment not sent ([`MAX_PREFILL_CHUNKS`]): they go with their lists.
    partial: HashSet<String>,
    chunks: usize,
    /// Segments told whose answer is not read yet, oldest first.
    told: VecDeque<scan::Segment>,
    /// The chunks sent ahead (counts for the [`Report`]).
    sent: Report,
    pace: Pace,
    /// Threads of their own to read and compress the chunks asked for: on the global pool
    /// they would wait behind the scan's hashing, and the link with them.
    pool: Option<rayon::ThreadPool>,
}

impl Prefills {
    /// Tell the sink the segments the scan finds ([`scan_local_early`]) in the tree at `root`,
    /// and send the chunks of each that it asks for while `scanning()`: what it asks for
    /// once the scan has ended travels with the batches, which report their progress.
    /// `next(wait)` gives the next segment (waiting for one if `wait`), `None` once there are
    /// no more (not waiting: none yet). The next segment, when found, is told before the
    /// chunks of the last one are sent, so the sink's answer to it travels meanwhile and the
    /// link does not wait for it.
    pub fn send_all<R: Read, W: Write>(
        &mut self,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        root: &Path,
        mut next: impl FnMut(bool) -> Option<scan::Segment>,
        scanning: &dyn Fn() -> bool,
    ) -> Result<()> {
        loop {
            if self.told.is_empty() {
                match next(true) {
                    Some(seg) => self.tell(w, seg)?,
                    None => return Ok(()),
                }
                continue;
            }
            if self.told.len() < 2 {
                if let Some(seg) = next(false) {
                    self.tell(w, seg)?;
                }
            }
            let send = scanning();
            self.answer(r, w, root, send)?;
        }
    }

    /// Send a segment's `Prefill` (or leave its file's list to its batch).
    fn tell<W: Write>(&mut self, w: &mut FrameWriter<W>, seg: scan::Segment) -> Result<()> {
        let sized = self
            .files
            .get(&seg.path)
            .is_none_or(|(s, _)| *s == seg.size);
        if !sized || self.chunks + seg.chunks.len() > MAX_PREFILL_CHUNKS {
            self.partial.insert(seg.path);
            return Ok(());
        }
        self.chunks += seg.chunks.len();
        w.msg(&ToSink::Prefill {
            path: seg.path.clone(),
            size: seg.size,
            offset: seg.offset,
            chunks: seg.chunks.clone(),
        })?;
        w.flush()?;
        self.files
            .entry(seg.path.clone())
            .or_insert_with(|| (seg.size, BTreeMap::new()))
            .1
            .insert(seg.offset, seg.chunks.clone());
        self.told.push_back(seg);
        Ok(())
    }

    /// Read the sink's answer to the oldest segment told and, if `send`, send the chunks it
    /// asks for (those not sent, the file's batch asks for again).
    fn answer<R: Read, W: Write>(
        &mut self,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        root: &Path,
        send: bool,
    ) -> Result<()> {
        let Some(scan::Segment {
            path,
            offset,
            chunks,
            ..
        }) = self.told.pop_front()
        else {
            return Ok(());
        };
        let clock = std::time::Instant::now();
        let hashes = match expect(r, "prefill")? {
            FromSink::PrefillNeed { hashes } => hashes,
            m => {
                return Err(Error::Protocol(format!(
                    "expected PrefillNeed, got {}",
                    what(&m)
                )))
            }
        };
        // Only chunks of this segment, each once: anything else is a sink asking for what it
        // was never offered.
        let mut locs: HashMap<Hash, (String, u64, u32)> = HashMap::new();
        if !hashes.is_empty() {
            for (at, c) in crate::chunker::placed(&chunks) {
                locs.entry(c.hash)
                    .or_insert_with(|| (path.clone(), offset + at, c.len));
            }
        }
        let mut asked = HashSet::with_capacity(hashes.len());
        if !hashes
            .iter()
            .all(|h| asked.insert(*h) && locs.contains_key(h))
        {
            return Err(Error::Protocol(format!(
                "the receiving side asked for chunks of {path} that its prefill did not list, \
                 or asked twice"
            )));
        }
        if send && !hashes.is_empty() {
            if self.pool.is_none() {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                self.pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("prefill-{i}"))
                    .build()
                    .ok();
            }
            let origin = Origin {
                path: root.to_path_buf(),
                nest: None,
            };
            let mut raw = 0;
            send_chunks(
                w,
                Chunks {
                    origin: &origin,
                    entries: None,
                    hashes: &hashes,
                    locs: &locs,
                    pool: self.pool.as_ref(),
                },
                &mut self.sent,
                &scan::NoProgress,
                &mut raw,
                &self.pace,
                PREFILL_PIPELINE,
            )?;
            w.flush()?;
        }
        log::debug!(
            "prefill of {path} at {offset}: {} chunk(s) asked for, {} in {:.0?}",
            hashes.len(),
            if send { "sent" } else { "left to the batch" },
            clock.elapsed()
        );
        Ok(())
    }

    /// `op` as sent: the upsert of a file its prefills list exactly goes without its list.
    fn shorten(&self, op: Op) -> Op {
        match op {
            Op::Upsert {
                entry,
                chunks: Some(chunks),
            } if self.cover(&entry.path, &chunks) => Op::UpsertPrefilled { entry },
            op => op,
        }
    }

    /// Whether the segments sent for `path` make up `chunks`, end to end, as the sink will
    /// join them.
    fn cover(&self, path: &str, chunks: &[ChunkSpec]) -> bool {
        !self.partial.contains(path)
            && self.files.get(path).is_some_and(|(size, segs)| {
                crate::chunker::joined(*size, segs).is_some_and(|all| all == chunks)
            })
    }
}

/// The second half of [`sync`]: bring the sink up to date with a scanned tree, after the
/// `prefills` sent while it was scanned.
pub fn sync_scanned<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    ack: &Ack,
    cfg: &SourceConfig,
    local: &LocalTree,
    prefills: &Prefills,
    progress: &dyn Progress,
) -> Result<Report> {
    let job = Push {
        scanned: &local.0,
        excluded: &|p, is_dir| cfg.filter.excluded(p, is_dir),
        state_path: &cfg.state_path,
        dry_run: cfg.dry_run,
        pipeline: cfg.pipeline,
        prefills,
    };
    push(r, w, ack, &job, progress)
}

/// The chunk list of a file the scan listed (every file in `tree.entries` has one).
fn file_chunks<'t>(tree: &'t scan::Tree, path: &str) -> &'t [crate::wire::ChunkSpec] {
    tree.chunks(path)
        .unwrap_or_else(|| panic!("{path} was scanned without a chunk list"))
}

/// Where the files of a scanned tree are on disk.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// The scanned directory, or the one scanned file.
    pub path: PathBuf,
    /// The tree's paths are the scan's nested under this name ([`scan::Tree::nest`]), or the
    /// scanned file's one entry is named so.
    pub nest: Option<String>,
}

impl Origin {
    /// The file that tree path `p` names.
    fn file(&self, p: &str) -> PathBuf {
        match &self.nest {
            None => self.path.join(p),
            Some(n) if p == n => self.path.clone(),
            Some(n) => self.path.join(&p[n.len() + 1..]),
        }
    }
}

/// A tree ready to send: its entries and chunks, and where to read them.
pub(crate) struct Scanned {
    pub tree: scan::Tree,
    pub origin: Origin,
}

/// What [`push`] sends, and where it keeps what the sink acknowledged.
pub(crate) struct Push<'a> {
    pub scanned: &'a Scanned,
    /// Protects paths the sink holds from deletion (they are forgotten instead).
    pub excluded: &'a dyn Fn(&str, bool) -> bool,
    /// The state of this destination (the tree it acknowledged last).
    pub state_path: &'a Path,
    /// Compute the plan only.
    pub dry_run: bool,
    pub pipeline: Pipeline,
    /// What was told to the sink before the first batch.
    pub prefills: &'a Prefills,
}

/// Bring the sink up to date with a scanned tree: diff it against what the sink holds (the
/// cached state when its token matches, else the sink's listing), send the changes in
/// batches with the chunks the sink asks for, commit, and save the state.
pub(crate) fn push<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    ack: &Ack,
    job: &Push,
    progress: &dyn Progress,
) -> Result<Report> {
    let Push {
        scanned,
        excluded,
        state_path,
        dry_run,
        pipeline,
        prefills,
    } = *job;
    let tree = &scanned.tree;
    let mut report = Report {
        entries: tree.entries.len(),
        files_hashed: tree.files_hashed,
        bytes_hashed: tree.bytes_hashed,
        warnings: tree.warnings.clone(),
        chunks_sent: prefills.sent.chunks_sent,
        raw_bytes_sent: prefills.sent.raw_bytes_sent,
        payload_bytes_sent: prefills.sent.payload_bytes_sent,
        ..Report::default()
    };
    let current_token = manifest::token(&tree.entries);
    let matches = |protocol: u32, token: Option<Hash>| {
        protocol == PROTOCOL_VERSION && token.is_some() && token == ack.token
    };
    if ack.dirty.is_empty() && ack.token == Some(current_token) {
        report.no_op = true;
        // Only the state's head (its token) is read: the entries are not needed.
        let head: Option<StateHead> = index::load(state_path);
        if !head.is_some_and(|h| matches(h.protocol, h.token)) && !dry_run {
            save_state(state_path, Some(current_token), &tree.entries)?;
        }
        return Ok(report);
    }
    if !dry_run {
        // The sink reads its records while the diff is made.
        w.msg(&ToSink::ChangesFollow)?;
        w.flush()?;
    }
    let clock = std::time::Instant::now();
    let state: Option<SyncState> = index::load(state_path);
    let cached = state.filter(|s| matches(s.protocol, s.token));
    let base: Manifest = match cached {
        Some(s) => manifest::from_entries(s.entries),
        None => list_index(r, w)?,
    };
    let loaded = clock.elapsed();
    let force: HashSet<String> = ack.dirty.iter().cloned().collect();
    let d = diff(&base, &tree.entries, &force, excluded);
    log::debug!(
        "diff: base of {} entries in {loaded:.0?}, {} upserts and {} deletes in {:.0?}",
        base.len(),
        d.upserts.len(),
        d.deletes.len(),
        clock.elapsed() - loaded
    );
    for (p, content) in &d.upserts {
        report.plan.push(match (base.contains_key(p), content) {
            (false, _) => Change::Add(p.clone()),
            (true, true) => Change::Update(p.clone()),
            (true, false) => Change::Touch(p.clone()),
        });
    }
    report
        .plan
        .extend(d.deletes.iter().map(|p| Change::Delete(p.clone())));
    if dry_run {
        return Ok(report);
    }

    // Renamed paths are moved on the sink's side rather than rebuilt; what is the same under
    // a moved directory as where it moves from is not sent at all, unless the sink refuses the
    // move (`FromSink::Refused`): then it follows, in the batches after.
    let moves = manifest::moves(&base, &tree.entries, &d, &force);
    let implied = manifest::implied(&base, &tree.entries, &moves, &d);
    let mut refused: HashSet<String> = HashSet::new();
    let mut pending: VecDeque<&(String, bool)> = VecDeque::new();
    // Batches are made as they are sent: a first sync of 100k files holds one batch of ops
    // (and their chunk lists) at a time, not all of them.
    let mut upserts = d
        .upserts
        .iter()
        .filter(|(p, _)| !implied.upserts.contains_key(p));
    let mut tail: Option<Box<dyn Iterator<Item = Op> + '_>> = None;
    let mut next_batch =
        |pending: &mut VecDeque<&(String, bool)>, refused: &HashSet<String>| -> Option<Vec<Op>> {
            let (mut ops, mut files, mut bytes) = (Vec::new(), 0usize, 0u64);
            while let Some((path, content)) = pending.pop_front().or_else(|| upserts.next()) {
                let kind = tree.entries[path].clone();
                let chunks = match (&kind, content) {
                    (EntryKind::File { size, .. }, true) => {
                        files += 1;
                        bytes += size;
                        Some(file_chunks(tree, path).to_vec())
                    }
                    _ => None,
                };
                let entry = Entry {
                    path: path.clone(),
                    kind,
                };
                ops.push(match moves.get(path) {
                    Some(from) => Op::Move {
                        from: from.clone(),
                        entry,
                        chunks,
                    },
                    None => Op::Upsert { entry, chunks },
                });
                if ops.len() >= BATCH_OPS || files >= BATCH_FILES || bytes >= BATCH_BYTES {
                    return Some(ops);
                }
            }
            if !ops.is_empty() {
                return Some(ops);
            }
            // Deletes last, so deleted files can still serve chunks to renamed ones. Every move
            // has been answered by now: the deletes a refused one stood for are sent too.
            let tail = tail.get_or_insert_with(|| {
                let refused = refused.clone();
                let implied = &implied.deletes;
                Box::new(
                    d.deletes
                        .iter()
                        .filter(move |p| implied.get(*p).is_none_or(|dir| refused.contains(dir)))
                        .map(|p| Op::Delete { path: p.clone() })
                        .chain(d.forgets.iter().map(|p| Op::Forget { path: p.clone() })),
                )
            });
            let part: Vec<Op> = tail.by_ref().take(BATCH_OPS).collect();
            (!part.is_empty()).then_some(part)
        };

    let total: u64 = d
        .upserts
        .iter()
        .filter(|(p, c)| *c && !implied.upserts.contains_key(p))
        .filter_map(|(p, _)| match &tree.entries[p] {
            EntryKind::File { size, .. } => Some(*size),
            _ => None,
        })
        .sum();
    progress.phase("send", total);
    let pace = Pace::new();
    while let Some(batch) = next_batch(&mut pending, &refused) {
        let dir_moves: HashSet<String> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Move {
                    entry:
                        Entry {
                            path,
                            kind: EntryKind::Dir,
                        },
                    ..
                } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let locs: HashMap<Hash, (String, u64, u32)> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Upsert {
                    entry,
                    chunks: Some(_),
                }
                | Op::Move {
                    entry,
                    chunks: Some(_),
                    ..
                } => Some(entry.path.as_str()),
                _ => None,
            })
            .flat_map(|p| {
                crate::chunker::placed(file_chunks(tree, p))
                    .map(move |(at, c)| (c.hash, (p.to_string(), at, c.len)))
            })
            .collect();
        let batch_bytes: u64 = batch
            .iter()
            .filter_map(|op| match op {
                Op::Upsert {
                    entry:
                        Entry {
                            kind: EntryKind::File { size, .. },
                            ..
                        },
                    chunks: Some(_),
                }
                | Op::Move {
                    entry:
                        Entry {
                            kind: EntryKind::File { size, .. },
                            ..
                        },
                    chunks: Some(_),
                    ..
                } => Some(*size),
                _ => None,
            })
            .sum();
        let ops = batch.into_iter().map(|op| prefills.shorten(op)).collect();
        w.msg(&ToSink::Ops { ops })?;
        w.flush()?;
        let mut sent_raw = 0u64;
        let mut reply = expect(r, "ops")?;
        // The sink asks for chunks until it has all of this batch (usually once; again when
        // a copy it planned on its side turned out stale), and no more than that.
        let (mut rounds, mut requested) = (0usize, 0usize);
        loop {
            let hashes = match reply {
                FromSink::Refused { moves } if rounds == 0 => {
                    for dir in moves {
                        if !dir_moves.contains(&dir) || !refused.insert(dir.clone()) {
                            return Err(Error::Protocol(format!(
                                "the receiving side refused a move of {dir:?} it was not \
                                 asked to make"
                            )));
                        }
                        log::debug!("the receiving side does not move {dir}: sending its files");
                        pending.extend(
                            d.upserts
                                .iter()
                                .filter(|(p, _)| implied.upserts.get(p) == Some(&dir)),
                        );
                    }
                    reply = expect(r, "ops")?;
                    continue;
                }
                FromSink::Need { hashes } => hashes,
                FromSink::BatchDone => break,
                m => return Err(Error::Protocol(format!("expected Need, got {}", what(&m)))),
            };
            rounds += 1;
            requested = requested.saturating_add(hashes.len());
            let most = MAX_NEED_FACTOR * locs.len();
            if rounds > MAX_NEED_ROUNDS || requested > most {
                return Err(Error::Protocol(format!(
                    "the receiving side asked again and again for the chunks of one batch: \
                     {requested} chunk(s) in {rounds} round(s), for a batch of {}; an honest \
                     receiver asks in at most {MAX_NEED_ROUNDS} rounds, for at most {most}",
                    locs.len()
                )));
            }
            send_chunks(
                w,
                Chunks {
                    origin: &scanned.origin,
                    entries: Some(&tree.entries),
                    hashes: &hashes,
                    locs: &locs,
                    pool: None,
                },
                &mut report,
                progress,
                &mut sent_raw,
                &pace,
                pipeline,
            )?;
            w.msg(&ToSink::DataEnd)?;
            w.flush()?;
            reply = expect(r, "data")?;
        }
        // Content the sink already had counts as done too.
        progress.advance(batch_bytes.saturating_sub(sent_raw));
    }
    w.msg(&ToSink::Commit)?;
    w.flush()?;
    // The state is written while the sink commits, and put in place once the sink's token is
    // known to be ours.
    let (reply, prepared) = std::thread::scope(|scope| {
        let prepared =
            scope.spawn(|| prepare_state(state_path, Some(current_token), &tree.entries));
        let reply = expect(r, "commit");
        let prepared = prepared
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("saving the state panicked".into())));
        (reply, prepared)
    });
    match reply? {
        FromSink::Committed { token, stats } => {
            report.sink = stats;
            if token == current_token {
                prepared?.commit()?;
            } else {
                drop(prepared);
                log::warn!("the receiving tree differs from the sent one after the sync; the next sync compares them in full");
                save_state(state_path, None, &tree.entries)?;
            }
        }
        m => {
            return Err(Error::Protocol(format!(
                "expected Committed, got {}",
                what(&m)
            )))
        }
    }
    Ok(report)
}

fn save_state(state_path: &Path, token: Option<Hash>, entries: &Manifest) -> Result<()> {
    prepare_state(state_path, token, entries)?.commit()
}

fn prepare_state(
    state_path: &Path,
    token: Option<Hash>,
    entries: &Manifest,
) -> Result<index::Prepared> {
    let clock = std::time::Instant::now();
    let prepared = index::prepare(
        state_path,
        &SyncState {
            protocol: PROTOCOL_VERSION,
            token,
            entries: manifest::to_entries(entries),
        },
    )?;
    log::debug!(
        "state of {} entries written in {:.0?}",
        entries.len(),
        clock.elapsed()
    );
    Ok(prepared)
}

fn list_index<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
) -> Result<Manifest> {
    w.msg(&ToSink::ListIndex)?;
    w.flush()?;
    let mut m = Manifest::new();
    loop {
        match expect(r, "list")? {
            FromSink::IndexBatch { entries } => {
                for e in entries {
                    m.insert(e.path, e.kind);
                }
            }
            FromSink::IndexEnd => return Ok(m),
            other => {
                return Err(Error::Protocol(format!(
                    "expected IndexBatch, got {}",
                    what(&other)
                )))
            }
        }
    }
}

struct Prepared {
    hash: Hash,
    codec: Codec,
    raw_len: u32,
    payload: Vec<u8>,
}

/// The chunks [`send_chunks`] sends, and where they are.
#[derive(Clone, Copy)]
struct Chunks<'a> {
    origin: &'a Origin,
    /// The scanned files each chunk's file is checked against (none for a prefill's: the
    /// scan is still going; the sink verifies every chunk besides).
    entries: Option<&'a Manifest>,
    /// In the order to send.
    hashes: &'a [Hash],
    /// Where each is: (path, offset, length).
    locs: &'a HashMap<Hash, (String, u64, u32)>,
    /// Where they are read and compressed (else rayon's global pool).
    pool: Option<&'a rayon::ThreadPool>,
}

/// Read, verify and compress the requested chunks on all cores while the current thread
/// writes the previous window to the peer.
fn send_chunks<W: Write>(
    w: &mut FrameWriter<W>,
    chunks: Chunks,
    report: &mut Report,
    progress: &dyn Progress,
    sent_raw: &mut u64,
    pace: &Pace,
    pipeline: Pipeline,
) -> Result<()> {
    let Chunks { hashes, locs, .. } = chunks;
    for h in hashes {
        if !locs.contains_key(h) {
            return Err(Error::Protocol(
                "the sink asked for a chunk that was not offered".into(),
            ));
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Prepared>>>(pipeline.depth.max(1));
    std::thread::scope(|s| {
        // Owned here, so a write that fails drops it before the scope joins the reader: a
        // reader blocked on a full channel then wakes up instead of waiting forever.
        let rx = rx;
        s.spawn(move || {
            for window in hashes.chunks(pipeline.window.max(1)) {
                let costly = pace.costly();
                let prepared = match chunks.pool {
                    Some(pool) => pool.install(|| prepare_window(chunks, window, costly)),
                    None => prepare_window(chunks, window, costly),
                };
                let failed = prepared.is_err();
                let sent = match tx.try_send(prepared) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(p)) => {
                        // Ahead of the writer: the link holds the transfer back.
                        pace.set_costly(true);
                        tx.send(p).map_err(drop)
                    }
                    Err(TrySendError::Disconnected(_)) => Err(()),
                };
                if sent.is_err() || failed {
                    return;
                }
            }
        });
        let mut first = true;
        loop {
            let prepared = match rx.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Empty) => {
                    // The writer waits for chunks: the CPU holds the transfer back.
                    if !first {
                        pace.set_costly(false);
                    }
                    match rx.recv() {
                        Ok(p) => p,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            first = false;
            for p in prepared? {
                w.data(&p.hash, p.codec, p.raw_len, &p.payload)?;
                report.chunks_sent += 1;
                report.raw_bytes_sent += p.raw_len as u64;
                report.payload_bytes_sent += p.payload.len() as u64;
                *sent_raw += p.raw_len as u64;
                progress.advance(p.raw_len as u64);
            }
        }
        Ok(())
    })
}

/// Whether the costly codecs ([`compress::Codec::Shuffle16`]: CPU for a sixth of fp16's size)
/// pay: they do while the link holds the transfer back (chunks are ready before the writer
/// can take them), not while the CPU does (the writer waits for chunks). Starts on: a first
/// sync over a real network is link-bound.
struct Pace(AtomicBool);

impl Default for Pace {
    fn default() -> Pace {
        Pace::new()
    }
}

impl Pace {
    fn new() -> Pace {
        Pace(AtomicBool::new(true))
    }
    fn costly(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set_costly(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed)
    }
}

/// Read and compress one window of chunks. Files are checked against the scan before and
/// after reading (size and mtime), so a file changed mid-sync is reported, not sent torn; the
/// sink verifies every chunk's hash besides.
fn prepare_window(chunks: Chunks, window: &[Hash], costly: bool) -> Result<Vec<Prepared>> {
    let Chunks {
        origin,
        entries,
        locs,
        ..
    } = chunks;
    let unchanged = |p: &str, f: &std::fs::File| -> Result<()> {
        let Some(entries) = entries else {
            return Ok(());
        };
        let abs = origin.file(p);
        let m = f.metadata().ctx("stat", &abs)?;
        let st = scan::stat_of(&m);
        match entries.get(p) {
            Some(EntryKind::File { size, mtime_ns, .. })
                if *size == st.size && *mtime_ns == st.mtime_ns =>
            {
                Ok(())
            }
            _ => Err(Error::Changed(abs)),
        }
    };
    let mut files: HashMap<&str, std::fs::File> = HashMap::new();
    for h in window {
        let (p, _, _) = &locs[h];
        if !files.contains_key(p.as_str()) {
            let abs = origin.file(p);
            let f = match std::fs::File::open(&abs) {
                Ok(f) => f,
                // A prefill's file removed since it was read: its batch says what now.
                Err(_) if entries.is_none() => return Ok(Vec::new()),
                Err(e) => return Err(Error::io("open", &abs, e)),
            };
            unchanged(p, &f)?;
            files.insert(p, f);
        }
    }
    let prepared = window
        .par_iter()
        .map(|h| {
            let (p, off, len) = &locs[h];
            let mut raw = vec![0u8; *len as usize];
            match files[p.as_str()].read_exact_at(&mut raw, *off) {
                Ok(()) => {}
                // A prefill's file cut short as the scan still reads it: what is not there is
                // not sent (its batch sends what the file holds then).
                Err(_) if entries.is_none() => return Ok(None),
                Err(_) => return Err(Error::Changed(origin.file(p))),
            }
            let (codec, payload) =
                compress::compress_with(&raw, costly).unwrap_or((Codec::Raw, raw));
            Ok(Some(Prepared {
                hash: *h,
                codec,
                raw_len: *len,
                payload,
            }))
        })
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>>>()?;
    for (p, f) in &files {
        unchanged(p, f)?;
    }
    Ok(prepared)
}

/// End the session politely.
pub fn bye<W: Write>(w: &mut FrameWriter<W>) -> Result<()> {
    w.msg(&ToSink::Bye)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(i: u8, len: u32) -> ChunkSpec {
        ChunkSpec { hash: [i; 32], len }
    }

    fn upsert(path: &str, chunks: Vec<ChunkSpec>) -> Op {
        Op::Upsert {
            entry: Entry {
                path: path.into(),
                kind: EntryKind::File {
                    size: chunks.iter().map(|c| u64::from(c.len)).sum(),
                    mode: 0o644,
                    mtime_ns: 0,
                    digest: crate::chunker::file_digest(&chunks),
                },
            },
            chunks: Some(chunks),
        }
    }

    /// A file's upsert goes without its list only when the prefills sent for it make the list
    /// up end to end (in any order, the last sent for an offset counting, as on the sink).
    #[test]
    fn an_upsert_goes_without_its_list_only_when_its_prefills_make_it_up() {
        let seg = |path: &str, size, offset, chunks| scan::Segment {
            path: path.into(),
            size,
            offset,
            chunks,
        };
        let mut w = FrameWriter::new(Vec::new());
        let none: &[Hash] = &[];
        let mut r = needs(&[none; 6]);
        let root = Path::new("/nonexistent");
        let mut p = Prefills::default();
        let mut send = |p: &mut Prefills, s| {
            let mut one = Some(s);
            p.send_all(&mut r, &mut w, root, |_| one.take(), &|| true)
                .unwrap()
        };
        send(&mut p, seg("a", 300, 200, vec![spec(3, 100)]));
        send(&mut p, seg("a", 300, 0, vec![spec(1, 100), spec(9, 100)]));
        send(&mut p, seg("a", 300, 0, vec![spec(1, 100), spec(2, 100)]));
        let full = vec![spec(1, 100), spec(2, 100), spec(3, 100)];
        assert!(matches!(
            p.shorten(upsert("a", full.clone())),
            Op::UpsertPrefilled { entry } if entry.path == "a"
        ));
        let other = vec![spec(1, 100), spec(2, 100), spec(4, 100)];
        assert_eq!(p.shorten(upsert("a", other.clone())), upsert("a", other));
        // A segment missing, or one told for another size (not sent: no answer read): the
        // list goes.
        send(&mut p, seg("b", 300, 0, vec![spec(1, 100), spec(2, 100)]));
        assert_eq!(
            p.shorten(upsert("b", full.clone())),
            upsert("b", full.clone())
        );
        send(&mut p, seg("c", 300, 0, vec![spec(1, 100), spec(2, 100)]));
        send(&mut p, seg("c", 301, 200, vec![spec(3, 100)]));
        assert_eq!(
            p.shorten(upsert("c", full.clone())),
            upsert("c", full.clone())
        );
        // Other ops pass as they are.
        let delete = Op::Delete { path: "a".into() };
        assert_eq!(p.shorten(delete.clone()), delete);
    }

    /// With the next segment found, it is told before the last one's chunks are sent.
    #[test]
    fn the_next_segment_is_told_before_the_chunks_of_the_last_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..400u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let spec_of = |at: usize| ChunkSpec {
            hash: crate::chunker::hash(&data[at..at + 100]),
            len: 100,
        };
        let seg = |offset: usize| scan::Segment {
            path: "f".into(),
            size: 400,
            offset: offset as u64,
            chunks: vec![spec_of(offset), spec_of(offset + 100)],
        };
        let mut segs = vec![seg(0), seg(200)].into_iter();
        let mut sent = Vec::new();
        let mut w = FrameWriter::new(&mut sent);
        let mut r = needs(&[&[spec_of(100).hash], &[spec_of(200).hash]]);
        Prefills::default()
            .send_all(&mut r, &mut w, dir.path(), |_| segs.next(), &|| true)
            .unwrap();
        drop(w);
        let mut r = FrameReader::new(&sent[..]);
        let mut order = Vec::new();
        while let Some(f) = r.frame::<ToSink>().unwrap() {
            order.push(match f {
                crate::codec::Frame::Msg(ToSink::Prefill { offset, .. }) => {
                    format!("tell {offset}")
                }
                crate::codec::Frame::Data(d) => {
                    let at = (0..400).step_by(100).find(|&at| spec_of(at).hash == d.hash);
                    format!("data {}", at.unwrap())
                }
                crate::codec::Frame::Msg(m) => panic!("{m:?}"),
            });
        }
        assert_eq!(order, ["tell 0", "tell 200", "data 100", "data 200"]);
    }

    /// A reader of one `PrefillNeed` per list.
    fn needs(lists: &[&[Hash]]) -> FrameReader<std::io::Cursor<Vec<u8>>> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        for l in lists {
            w.msg(&FromSink::PrefillNeed { hashes: l.to_vec() })
                .unwrap();
        }
        w.flush().unwrap();
        drop(w);
        FrameReader::new(std::io::Cursor::new(buf))
    }

    /// The chunks a sink asks for after a prefill are sent from the file, in its order, and
    /// counted in the report; a sink asking for a chunk the segment did not list, or for one
    /// twice, gets an error and no data.
    #[test]
    fn a_prefill_sends_what_the_sink_asks_of_its_segment_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..600u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let chunks: Vec<ChunkSpec> = data[200..]
            .chunks(100)
            .map(|c| ChunkSpec {
                hash: crate::chunker::hash(c),
                len: 100,
            })
            .collect();
        let seg = || scan::Segment {
            path: "f".into(),
            size: 600,
            offset: 200,
            chunks: chunks.clone(),
        };
        let (third, first) = (chunks[2].hash, chunks[0].hash);

        let mut sent = Vec::new();
        let mut w = FrameWriter::new(&mut sent);
        let mut p = Prefills::default();
        let mut one = Some(seg());
        let scanning = || true;
        p.send_all(
            &mut needs(&[&[third, first]]),
            &mut w,
            dir.path(),
            |_| one.take(),
            &scanning,
        )
        .unwrap();
        drop(w);
        assert_eq!(p.sent.chunks_sent, 2);
        assert_eq!(p.sent.raw_bytes_sent, 200);
        let mut r = FrameReader::new(&sent[..]);
        assert!(matches!(
            r.frame::<ToSink>().unwrap(),
            Some(crate::codec::Frame::Msg(ToSink::Prefill {
                offset: 200,
                ..
            }))
        ));
        for (h, at) in [(third, 400), (first, 200)] {
            let Some(crate::codec::Frame::Data(d)) = r.frame::<ToSink>().unwrap() else {
                panic!("expected the data of the chunk at {at}");
            };
            assert_eq!(d.hash, h);
            let raw = compress::decompress(d.codec, &d.payload, d.raw_len).unwrap();
            assert_eq!(raw, data[at..at + 100]);
        }
        assert!(r.frame::<ToSink>().unwrap().is_none());

        // Once the scan has ended, what is asked for is left to the batch.
        let mut sent = Vec::new();
        let mut w = FrameWriter::new(&mut sent);
        let mut p = Prefills::default();
        let mut one = Some(seg());
        p.send_all(
            &mut needs(&[&[third]]),
            &mut w,
            dir.path(),
            |_| one.take(),
            &|| false,
        )
        .unwrap();
        drop(w);
        assert_eq!(p.sent.chunks_sent, 0);
        let mut r = FrameReader::new(&sent[..]);
        assert!(matches!(
            r.frame::<ToSink>().unwrap(),
            Some(crate::codec::Frame::Msg(ToSink::Prefill { .. }))
        ));
        assert!(r.frame::<ToSink>().unwrap().is_none());

        for asked in [vec![[9u8; 32]], vec![first, first]] {
            let mut sent = Vec::new();
            let mut w = FrameWriter::new(&mut sent);
            let mut one = Some(seg());
            let e = Prefills::default()
                .send_all(
                    &mut needs(&[&asked]),
                    &mut w,
                    dir.path(),
                    |_| one.take(),
                    &|| true,
                )
                .unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{e}");
            assert!(e.to_string().contains("did not list"), "{e}");
            w.flush().unwrap();
            drop(w);
            let mut r = FrameReader::new(&sent[..]);
            assert!(matches!(
                r.frame::<ToSink>().unwrap(),
                Some(crate::codec::Frame::Msg(ToSink::Prefill { .. }))
            ));
            assert!(
                r.frame::<ToSink>().unwrap().is_none(),
                "no data after {asked:?}"
            );
        }
    }
}
