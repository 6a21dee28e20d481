//! The sink role of a sync session: it receives a tree into a root directory. `mtr-agent
//! serve` runs it for an upload (root: `remote_dir`); `mtr` runs it for a download
//! ([`crate::get`]), with [`SinkOptions::download`] against a server it does not trust.
//!
//! Invariants:
//! - every path from the peer is checked ([`crate::paths`]); nothing is written through a
//!   symlink or outside the root (outside the destination, for a download);
//! - a file is built in a staging directory on the root's filesystem (`<root>/.mtr-sync/staging/`
//!   for an upload, a hidden sibling of a download's destination) and renamed (or swapped)
//!   into place: a user-visible file is always its old or its new version, and an interrupted
//!   build is reused (verified chunk by chunk) by the next run;
//! - chunks already on the sink are copied locally (`copy_file_range`) from the files the
//!   sink's index says hold them, trusted only while their `stat` is the one the copy was
//!   planned with; only missing chunks are asked for, and every received chunk is verified
//!   against its hash before it is written;
//! - a renamed path ([`Op::Move`]) is moved only if the sink wrote it, it is unchanged since,
//!   and (a directory) it holds nothing else: what the sink did not write never moves;
//! - only paths the sink wrote (its index) are ever deleted; files created on the sink's side
//!   survive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Bound::{Excluded, Included};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunker::{self, Chunker};
use crate::codec::{DataFrame, Frame, FrameReader, FrameWriter, MAX_CHUNK};
use crate::compress::{self, Codec};
use crate::error::{Error, IoContext, Result};
use crate::index;
use crate::manifest;
use crate::paths::{self, check_relative, DirFd, Found, Root, STATE_DIR};
use crate::scan::{self, stat_of, Progress};
use crate::watch;
use crate::wire::{
    Change, ChunkSpec, Entry, EntryKind, FromSink, Hash, Op, SinkIndex, SinkIndexHead, SinkRecord,
    SinkStats, StatKey, ToSink, MAX_PREFILL_CHUNKS, PROTOCOL_VERSION,
};

/// Entries per `IndexBatch` message.
const INDEX_BATCH: usize = 4096;
/// How often the index is saved during a long sync, so an interruption loses little.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Files of this many bytes placed since the last save have the index saved before the next
/// batch, however soon: were the agent killed, their data would travel again (1 GiB: ~9 s on
/// a 1 Gbit link, against ~0.15 s to save a 100k-file index). On a slower link
/// [`SAVE_EVERY`] comes first.
const SAVE_BYTES: u64 = 1 << 30;
/// How long to wait for another sync of the same root to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The source's warnings shown at most (the rest are counted).
const MAX_WARNINGS: usize = 100;

/// How far a sink trusts its peer beyond the checks it always makes, and what it keeps. The
/// default is an upload's sink (`mtr-agent serve`); [`SinkOptions::download`] is mtr's when it
/// receives a download from a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkOptions {
    /// Accept only this top-level entry and paths under it (a download's destination); any
    /// other path is refused as unsafe.
    pub confine_to: Option<String>,
    /// Skip, with a warning, symlinks whose target is absolute or may climb out of the tree
    /// (out of `confine_to` when set; see [`paths::check_symlink_target`]). A path under a
    /// skipped link is then refused as unsafe: a real source never sends one.
    pub contain_symlinks: bool,
    /// When the peer deletes a file the sink wrote but that changed on the sink's side since,
    /// keep it (with a warning) instead of deleting the change.
    pub keep_changed: bool,
    /// On first contact (no index yet), chunk the files already under the root (`confine_to`)
    /// and files the sink wrote that changed since, so their chunks are copied locally
    /// instead of transferred.
    pub reuse_existing: bool,
}

impl SinkOptions {
    /// mtr receiving a download into `name` (a file or directory of the root) from a server
    /// it does not trust.
    pub fn download(name: &str) -> SinkOptions {
        SinkOptions {
            confine_to: Some(name.to_string()),
            contain_symlinks: true,
            keep_changed: true,
            reuse_existing: true,
        }
    }
}

/// Where a sink writes and where it keeps its state.
pub(crate) struct SinkConfig {
    /// The directory received paths are relative to: absolute, existing, symlinks resolved.
    pub root: PathBuf,
    /// The index and the lock.
    pub state_dir: PathBuf,
    /// Where files are built before the rename into place: on the root's filesystem, created
    /// when first needed.
    pub staging_dir: PathBuf,
    pub options: SinkOptions,
    /// Answer the handshake and listings, take a [`ToSink::Plan`]; change nothing (no lock,
    /// no directories created).
    pub dry_run: bool,
    /// Where to send the paths of replaced files to remove (see [`serve_with_remover`]);
    /// `None`: a thread of the sink's own removes them, and the sink waits for it.
    pub remover: Option<File>,
    /// Ask the root's watcher ([`watch`]) whether the tree changed since the index was
    /// saved, instead of checking every record (an upload's sink).
    pub watch: bool,
}

/// Serve one session on `input`/`output` as the sink. `version` is this program's version;
/// a peer of another version is told ours and the session ends.
pub fn serve<R: Read, W: Write>(input: R, output: W, version: &str) -> Result<()> {
    serve_with_remover(input, output, version, None)
}

/// [`serve`], handing the old versions of replaced files to `remover` (the write end of a
/// pipe; each path ends with a NUL) instead of removing them itself: the agent's helper
/// process, so the session ends without waiting while a large file's pages are freed
/// (~0.6 s for a 2 GB checkpoint).
pub fn serve_with_remover<R: Read, W: Write>(
    input: R,
    output: W,
    version: &str,
    remover: Option<File>,
) -> Result<()> {
    serve_agent(input, output, version, remover, true).map(drop)
}

/// [`serve_with_remover`], as `mtr-agent serve` runs it. With `watch`, a watcher that saw
/// nothing change vouches for the tree ([`watch`]) and the root to keep watch over
/// ([`watch::keep`]) is returned when the session left it synced and no watcher watches it;
/// without, a watcher left from before is ended and none is wanted.
pub fn serve_agent<R: Read, W: Write>(
    input: R,
    output: W,
    version: &str,
    remover: Option<File>,
    watch: bool,
) -> Result<Option<PathBuf>> {
    let mut r = FrameReader::new(input);
    let mut w = FrameWriter::new(output);
    let result = session(&mut r, &mut w, version, remover, watch);
    if let Err(e) = &result {
        // Best effort: the peer may be gone.
        let _ = w.msg(&FromSink::Error {
            message: e.to_string(),
        });
        let _ = w.flush();
    }
    result
}

fn session<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    version: &str,
    remover: Option<File>,
    watch: bool,
) -> Result<Option<PathBuf>> {
    let (root, peer_protocol, peer_version) = match r.msg::<ToSink>()? {
        ToSink::Hello {
            protocol,
            version,
            root,
            ..
        } => (root, protocol, version),
        other => {
            return Err(Error::Protocol(format!(
                "expected Hello, got {}",
                what(&other)
            )))
        }
    };
    if peer_protocol != PROTOCOL_VERSION || peer_version != version {
        w.msg(&FromSink::HelloAck {
            protocol: PROTOCOL_VERSION,
            version: version.to_string(),
            root,
            token: None,
            dirty: Vec::new(),
        })?;
        w.flush()?;
        return Ok(None);
    }
    let mut sink = Sink::open(SinkConfig {
        remover,
        watch,
        ..serve_config(&root)?
    })?;
    sink.greet(w, version)?;
    sink.run(r, w, &scan::NoProgress)?;
    Ok(sink.hand_over().then(|| sink.root.path().to_path_buf()))
}

/// An upload's sink: `root` (`remote_dir`, `~/` expanded) created if missing, its state in
/// `<root>/.mtr-sync/`.
fn serve_config(root: &str) -> Result<SinkConfig> {
    let path = paths::expand_home(root)?;
    fs::create_dir_all(&path).ctx("create remote_dir", &path)?;
    let path = fs::canonicalize(&path).ctx("resolve", &path)?;
    let state = path.join(STATE_DIR);
    match fs::symlink_metadata(&state) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Conflict(format!(
                "{} exists and is not mtr's state directory; move it away",
                state.display()
            )))
        }
        Err(_) => fs::create_dir(&state).ctx("create", &state)?,
    }
    Ok(SinkConfig {
        root: path,
        staging_dir: state.join("staging"),
        state_dir: state,
        options: SinkOptions::default(),
        dry_run: false,
        remover: None,
        watch: true,
    })
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The source said `Bye`.
    Bye,
    /// The stream ended without a `Bye`.
    Eof,
}

/// A short name of a message, for errors (never the whole message: it can be large).
pub(crate) fn what(m: &ToSink) -> &'static str {
    match m {
        ToSink::Hello { .. } => "Hello",
        ToSink::ListIndex => "ListIndex",
        ToSink::Ops { .. } => "Ops",
        ToSink::DataEnd => "DataEnd",
        ToSink::Commit => "Commit",
        ToSink::Plan { .. } => "Plan",
        ToSink::Warnings { .. } => "Warnings",
        ToSink::Error { .. } => "Error",
        ToSink::Bye => "Bye",
        ToSink::Prefill { .. } => "Prefill",
        ToSink::ChangesFollow => "ChangesFollow",
    }
}

pub(crate) struct Rec {
    rec: SinkRecord,
    /// Changed on the sink's side since it was recorded: not a trusted chunk source.
    dirty: bool,
    /// Its chunk list is kept in a file of its own (`chunks/<digest>`, see [`ASIDE_MIN`]) and
    /// saved in the index as an empty list; `rec.chunks` stays empty until a batch needs it
    /// ([`Sink::load_aside`]).
    aside: bool,
}

impl Rec {
    pub(crate) fn path(&self) -> &str {
        &self.rec.entry.path
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.rec.entry.kind, EntryKind::Dir)
    }

    fn new(rec: SinkRecord) -> Rec {
        // A file with content always has chunks: an empty list means "kept aside".
        let aside = rec.chunks.is_empty()
            && matches!(rec.entry.kind, EntryKind::File { size, .. } if size > 0);
        Rec {
            rec,
            dirty: false,
            aside,
        }
    }
}

/// Where the record of `path` is in `records`, which are in path order.
fn position(records: &[Rec], path: &str) -> Option<usize> {
    records.binary_search_by(|r| r.path().cmp(path)).ok()
}

/// Chunk lists this long (files of ~16 MiB and more) are kept out of the index, each in a
/// file named by its digest: a sync that does not change such a file neither reads nor
/// rewrites its list (a 2 GB checkpoint's is ~1.1 MB).
const ASIDE_MIN: usize = 256;

/// A [`SinkIndex`] of the records in memory, encoded as one without copying them.
struct IndexOut<'a> {
    token: Option<Hash>,
    records: &'a BTreeMap<String, Rec>,
}

impl bincode::Encode for IndexOut<'_> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> std::result::Result<(), bincode::error::EncodeError> {
        PROTOCOL_VERSION.encode(e)?;
        self.token.encode(e)?;
        // A sequence is its length, then its items.
        (self.records.len() as u64).encode(e)?;
        for r in self.records.values() {
            // A `SinkRecord`'s fields, in order; a list kept aside is saved empty.
            r.rec.entry.encode(e)?;
            if r.aside {
                0u64.encode(e)?;
            } else {
                r.rec.chunks.encode(e)?;
            }
            r.rec.stat.encode(e)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Loc {
    /// Shared by all the chunks of one file.
    path: Arc<str>,
    offset: u64,
    len: u32,
}

/// Raise this process's soft limit on open files to its hard limit (at most 65,536): a
/// batch holds a staged file and a copy source open per file it builds, and a batch under a
/// renamed directory may build ~1,000 (see `source::IMPLIED_FILES`) where many systems
/// default to 1,024 descriptors.
fn allow_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(1 << 16);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

/// A batch is looked up alone ([`Sink::find_locs`]) when the sink records more than this many
/// times the chunks it names.
const FEW_CHUNKS: usize = 16;

/// A batch whose files list less than this in chunks (counted once each) looks for them in the
/// short chunk lists only, not in the ones kept aside (files of ~16 MiB and more, see
/// [`ASIDE_MIN`]): reading those costs ~5 ms per 2 GB file, each time, and an edit's chunks
/// are rarely found in a checkpoint. Those that would be travel instead.
const ASIDE_LOOKUP_MIN: u64 = 4 << 20;

/// The chunks an op lists for a file to build. A move's are needed only when it cannot be
/// made ([`Sink::apply`] locates every chunk then).
fn op_chunks(op: &Op) -> &[ChunkSpec] {
    match op {
        Op::Upsert {
            chunks: Some(c), ..
        } => c,
        _ => &[],
    }
}

/// Locate each chunk of `chunks` (the file at `path`) where no other file holds it yet.
fn add_locs(locs: &mut HashMap<Hash, Loc>, path: &str, chunks: &[ChunkSpec]) {
    add_locs_of(locs, path, chunks, |_| true);
}

/// [`add_locs`] for the chunks `wanted` says are.
fn add_locs_of(
    locs: &mut HashMap<Hash, Loc>,
    path: &str,
    chunks: &[ChunkSpec],
    wanted: impl Fn(&Hash) -> bool,
) {
    let mut shared: Option<Arc<str>> = None;
    let mut offset = 0;
    for c in chunks {
        if wanted(&c.hash) {
            if let std::collections::hash_map::Entry::Vacant(v) = locs.entry(c.hash) {
                v.insert(Loc {
                    path: shared.get_or_insert_with(|| Arc::from(path)).clone(),
                    offset,
                    len: c.len,
                });
            }
        }
        offset += c.len as u64;
    }
}

/// Chunks to request, and where each goes once it arrives.
#[derive(Default)]
struct Need {
    order: Vec<Hash>,
    waiting: HashMap<Hash, Vec<(usize, u64)>>,
}

impl Need {
    fn add(&mut self, hash: Hash, idx: usize, off: u64) {
        let w = self.waiting.entry(hash).or_default();
        if w.is_empty() {
            self.order.push(hash);
        }
        w.push((idx, off));
    }
}

/// A chunk to copy from a file already on the sink into staged file `idx` at `off`.
#[derive(Clone)]
struct Copy {
    idx: usize,
    off: u64,
    hash: Hash,
    src: Loc,
    /// The `stat` the source had when the copy was planned: a file that changed since (or was
    /// replaced by a move) is not read.
    stat: StatKey,
}

struct Staged {
    path: String,
    /// Where it goes (`path` under the root), for errors: the user knows that name.
    dest: PathBuf,
    entry: EntryKind,
    chunks: Vec<ChunkSpec>,
    /// Where each chunk starts.
    starts: Vec<u64>,
    tmp: PathBuf,
    file: File,
    /// What its prefill's copies, maybe still running, were counted on to write.
    prefill: Option<PrefillCheck>,
}

impl Staged {
    /// The length of the chunk at `off`, if one starts there.
    fn len_at(&self, off: u64) -> Option<u32> {
        let i = self.starts.binary_search(&off).ok()?;
        Some(self.chunks[i].len)
    }

    fn size(&self) -> u64 {
        match self.entry {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }
}

/// Check every record in `loaded` (in path order) against the filesystem under `root`;
/// returns the paths that changed.
/// Directories first, outermost first: one is still valid when it is a directory (not a
/// symlink) and its parent is valid, so each costs one `lstat`. Then the other entries,
/// a directory at a time: each is looked up by name in its directory, opened once
/// without following a symlink. Entries under a directory that is not recorded are
/// checked as before, component by component from the root.
pub(crate) fn check(root: &Root, loaded: &[Rec]) -> Vec<String> {
    let is_dir = Rec::is_dir;
    let find = |p: &str| position(loaded, p).map(|i| &loaded[i]);
    let mut by_depth: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for r in loaded {
        let p = r.path();
        if is_dir(r) {
            by_depth
                .entry(p.bytes().filter(|&b| b == b'/').count())
                .or_default()
                .push(p);
        }
    }
    let recorded_dir = |p: &str| find(p).is_some_and(is_dir);
    let mut valid: HashSet<&str> = HashSet::new();
    for level in by_depth.into_values() {
        let ok: Vec<&str> = level
            .into_par_iter()
            .filter(|d| {
                let parent = parent_of(d);
                if parent.is_empty() || valid.contains(parent) {
                    matches_record(&root.join(d), &find(d).expect("listed").rec)
                } else if recorded_dir(parent) {
                    false
                } else {
                    still_valid(root, d, &find(d).expect("listed").rec)
                }
            })
            .collect();
        valid.extend(ok);
    }
    // The other entries, by directory.
    let mut by_dir: HashMap<&str, Vec<(&str, &SinkRecord)>> = HashMap::new();
    for r in loaded {
        let p = r.path();
        if !is_dir(r) {
            by_dir.entry(parent_of(p)).or_default().push((p, &r.rec));
        }
    }
    let mut changed: Vec<String> = by_dir
        .into_par_iter()
        .flat_map_iter(|(dir, entries)| {
            let mut bad = Vec::new();
            if dir.is_empty() || valid.contains(dir) {
                let opened = if dir.is_empty() {
                    DirFd::open(root.path(), true)
                } else {
                    DirFd::open(&root.join(dir), false)
                };
                for (p, rec) in entries {
                    let name = p.rsplit('/').next().unwrap_or(p);
                    if !opened.as_ref().is_ok_and(|d| matches_at(d, name, rec)) {
                        bad.push(p.to_string());
                    }
                }
            } else if recorded_dir(dir) {
                bad.extend(entries.iter().map(|(p, _)| p.to_string()));
            } else {
                for (p, rec) in entries {
                    if !still_valid(root, p, rec) {
                        bad.push(p.to_string());
                    }
                }
            }
            bad
        })
        .collect();
    changed.extend(
        loaded
            .iter()
            .filter(|r| is_dir(r) && !valid.contains(r.path()))
            .map(|r| r.path().to_string()),
    );
    changed
}

/// A file found on the sink that the sink did not write (or that changed since), chunked
/// so its chunks can be copied: trusted while its `stat` is unchanged, never deleted.
struct Seed {
    stat: StatKey,
    chunks: Vec<ChunkSpec>,
}

/// The receiving side's state for one root.
pub(crate) struct Sink {
    root: Root,
    state_dir: PathBuf,
    staging_dir: PathBuf,
    staging_ready: bool,
    opts: SinkOptions,
    dry_run: bool,
    records: BTreeMap<String, Rec>,
    /// The records as the index held them, in path order, until something other than `Bye`
    /// arrives ([`Sink::ensure_records`]): a no-op sync checks them and ends without
    /// building the map (55-75 ms for 100k records).
    loaded: Vec<Rec>,
    locs: HashMap<Hash, Loc>,
    /// Whether `locs` holds the records' chunks yet: built on first need, so a no-op sync
    /// (most of them) never pays for it.
    locs_ready: bool,
    /// Whether the chunk lists kept aside were read ([`Sink::load_aside`]).
    aside_loaded: bool,
    seeds: HashMap<String, Seed>,
    /// Symlinks skipped under [`SinkOptions::contain_symlinks`]: nothing may go under them.
    refused: HashSet<String>,
    token: Option<Hash>,
    /// Ops were applied since the last commit.
    uncommitted: bool,
    stats: SinkStats,
    /// Upserts and deletes received.
    changes: u64,
    /// Chunk bytes as they crossed the wire (compressed or raw).
    payload_received: u64,
    /// Bytes read to index files found on the sink ([`SinkOptions::reuse_existing`]).
    bytes_hashed: u64,
    /// What a dry run would change ([`ToSink::Plan`], as seen from the sink).
    plan: Vec<Change>,
    /// Things skipped or kept, for the user.
    warnings: Vec<String>,
    last_save: Instant,
    /// Bytes of the files placed since the last save.
    placed_unsaved: u64,
    /// [`SAVE_BYTES`] (smaller in tests).
    save_bytes: u64,
    /// Old versions of replaced files, removed in the background.
    trash: Trash,
    /// Long files being built ahead of their `Upsert`.
    prefills: Prefills,
    /// The tree's watcher, held for the session ([`watch`]).
    watch: Option<watch::Claim>,
    /// The watcher vouched for the tree: the index is read (unchecked) only when a message
    /// other than `Bye` arrives, and the records in `loaded` are empty until then.
    deferred: bool,
    /// The tree is to be watched between sessions ([`SinkConfig::watch`], not a dry run).
    watched: bool,
    /// The source sent something that may change the tree or the index.
    changed: bool,
    _lock: Option<File>,
}

/// Take the sync lock at `path`, waiting up to [`LOCK_TIMEOUT`] for another sync to release
/// it. The error is one sentence: the peer adds where (host, directory), so it names only the
/// lock and what to do.
fn lock(path: &Path) -> Result<File> {
    take_lock(path, LOCK_TIMEOUT, Duration::from_millis(100))?.ok_or_else(|| {
        Error::Conflict(format!(
            "another mtr sync still holds the lock {} after {} s; let it finish, then run mtr \
             again",
            path.display(),
            LOCK_TIMEOUT.as_secs()
        ))
    })
}

/// Open (creating it, mode 0600) the lock file at `path` and take an exclusive `flock` on it,
/// trying every `every` for up to `timeout`: `None` if another process still holds it then.
pub(crate) fn take_lock(path: &Path, timeout: Duration, every: Duration) -> Result<Option<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .ctx("open lock", path)?;
    let start = Instant::now();
    loop {
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io("lock", path, e));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// The records of the index in `state_dir`, in path order, with its token (nothing from an
/// index of another protocol). Recorded paths that are unsafe or outside `confine` are dropped.
pub(crate) fn load_records(state_dir: &Path, confine: Option<&str>) -> (Option<Hash>, Vec<Rec>) {
    let clock = Instant::now();
    let ix: SinkIndex = index::load(&state_dir.join("index")).unwrap_or_default();
    log::debug!(
        "sink: index of {} entries loaded in {:.0?}",
        ix.records.len(),
        clock.elapsed()
    );
    if ix.protocol != PROTOCOL_VERSION {
        return (None, Vec::new());
    }
    // Into a vector of the right size first: a filtered iterator would grow it by doubling,
    // moving ~200 bytes a record each time (100k records: tens of ms).
    let mut kept = Vec::with_capacity(ix.records.len());
    for r in ix.records {
        let inside = confine.is_none_or(|top| paths::within(&r.entry.path, top));
        if inside && check_relative(&r.entry.path).is_ok() {
            kept.push(Rec::new(r));
        }
    }
    // Saved from the map, so in order; an index that is not is put in order here.
    if !kept.is_sorted_by(|a, b| a.path() <= b.path()) {
        kept.sort_by(|a, b| a.path().cmp(b.path()));
    }
    (ix.token, kept)
}

impl Sink {
    /// Lock the state (unless a dry run) and load the index.
    pub(crate) fn open(cfg: SinkConfig) -> Result<Sink> {
        allow_open_files();
        let root = Root::new(cfg.root);
        let lock = if cfg.dry_run {
            None
        } else {
            fs::create_dir_all(&cfg.state_dir).ctx("create", &cfg.state_dir)?;
            Some(lock(&cfg.state_dir.join("lock"))?)
        };
        // A watcher that saw nothing change since the index was saved vouches for the tree:
        // the index need not be checked, nor even read unless the source changes something.
        let claim = if cfg.dry_run {
            None
        } else {
            // Unwatched: a watcher left from before is asked, and ended (dropped), unheard.
            watch::claim(&cfg.state_dir, root.path()).filter(|_| cfg.watch)
        };
        let token = claim
            .as_ref()
            .filter(|c| c.clean)
            .and_then(|_| index::load::<SinkIndexHead>(&cfg.state_dir.join("index")))
            .filter(|h| h.protocol == PROTOCOL_VERSION)
            .and_then(|h| h.token);
        let deferred = token.is_some();
        let (token, kept) = if deferred {
            log::debug!("sink: the watcher saw no change since the index was saved");
            (token, Vec::new())
        } else {
            load_records(&cfg.state_dir, cfg.options.confine_to.as_deref())
        };
        Ok(Sink {
            root,
            state_dir: cfg.state_dir,
            staging_dir: cfg.staging_dir,
            staging_ready: false,
            opts: cfg.options,
            dry_run: cfg.dry_run,
            records: BTreeMap::new(),
            loaded: kept,
            locs: HashMap::new(),
            locs_ready: false,
            aside_loaded: false,
            seeds: HashMap::new(),
            refused: HashSet::new(),
            token,
            uncommitted: false,
            stats: SinkStats::default(),
            changes: 0,
            payload_received: 0,
            bytes_hashed: 0,
            plan: Vec::new(),
            warnings: Vec::new(),
            last_save: Instant::now(),
            placed_unsaved: 0,
            save_bytes: SAVE_BYTES,
            trash: Trash::removing_with(cfg.remover),
            prefills: Prefills::default(),
            watch: claim,
            deferred,
            watched: cfg.watch && !cfg.dry_run,
            changed: false,
            _lock: lock,
        })
    }

    /// Validate the index against the filesystem (unless the watcher vouched for it) and
    /// answer the source's `Hello`.
    pub(crate) fn greet<W: Write>(&mut self, w: &mut FrameWriter<W>, version: &str) -> Result<()> {
        let clock = Instant::now();
        let dirty = if self.deferred {
            Vec::new()
        } else {
            let dirty = self.validate();
            log::debug!(
                "sink: {} entries checked in {:.0?}, {} changed",
                self.loaded.len(),
                clock.elapsed(),
                dirty.len()
            );
            dirty
        };
        w.msg(&FromSink::HelloAck {
            protocol: PROTOCOL_VERSION,
            version: version.to_string(),
            root: self.root.path().display().to_string(),
            token: self.token,
            dirty,
        })?;
        w.flush()
    }

    /// What the session did, for a download's report.
    pub(crate) fn into_received(self) -> crate::get::Received {
        crate::get::Received {
            changes: self.changes,
            entries: self.records.len() + self.loaded.len(),
            plan: self.plan,
            stats: self.stats,
            payload_bytes: self.payload_received,
            bytes_hashed: self.bytes_hashed,
        }
    }

    /// Wait until the old versions of replaced files are removed.
    pub(crate) fn empty_trash(&mut self) {
        self.trash = Trash::default();
    }

    /// What was skipped or kept so far, for the user.
    pub(crate) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Serve the source's requests until `Bye` or the end of the stream. A session that ends
    /// with changes applied and not committed (the source vanished, a batch failed) leaves
    /// the index recording what was placed, so the next sync does not send it again.
    pub(crate) fn run<R: Read, W: Write>(
        &mut self,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        progress: &dyn Progress,
    ) -> Result<End> {
        let end = self.serve_requests(r, w, progress);
        // An interrupted session keeps the prefills holding chunks that travel, for the next
        // one's batch to reuse (a commit removes what it did not).
        self.prefills.discard(!matches!(end, Ok(End::Bye)));
        if self.uncommitted && !self.dry_run {
            let clock = Instant::now();
            match self.save(None) {
                Ok(()) => log::debug!(
                    "sink: session ended uncommitted; index of {} entries saved in {:.0?}",
                    self.records.len(),
                    clock.elapsed()
                ),
                Err(e) => log::debug!("sink: session ended uncommitted; index not saved: {e}"),
            }
        }
        end
    }

    fn serve_requests<R: Read, W: Write>(
        &mut self,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        progress: &dyn Progress,
    ) -> Result<End> {
        loop {
            let msg = match r.frame::<ToSink>()? {
                None => return Ok(End::Eof),
                Some(Frame::Msg(m)) => m,
                Some(Frame::Data(d)) => match self.prefills.wanted.remove(&d.hash) {
                    // A chunk the last `PrefillNeed` asked for.
                    Some(targets) => {
                        self.prefill_data(d, targets)?;
                        continue;
                    }
                    None => return Err(Error::Protocol("data frame outside a batch".into())),
                },
            };
            // The data answering the `PrefillNeed`s comes before the source's first message
            // that is not a `Prefill`, or never.
            if !matches!(msg, ToSink::Prefill { .. }) {
                self.prefills.wanted.clear();
            }
            if !matches!(msg, ToSink::Bye) {
                self.ensure_records();
            }
            if matches!(
                msg,
                ToSink::Ops { .. } | ToSink::Commit | ToSink::Prefill { .. }
            ) {
                self.changed = true;
            }
            match msg {
                ToSink::ListIndex => {
                    let entries: Vec<Entry> =
                        self.records.values().map(|r| r.rec.entry.clone()).collect();
                    for batch in entries.chunks(INDEX_BATCH) {
                        w.msg(&FromSink::IndexBatch {
                            entries: batch.to_vec(),
                        })?;
                    }
                    w.msg(&FromSink::IndexEnd)?;
                    w.flush()?;
                }
                ToSink::Ops { ops } if !self.dry_run => {
                    let ops = self.prefills.expand(ops)?;
                    self.maybe_save()?;
                    self.token = None;
                    self.uncommitted = true;
                    self.batch(ops, r, w, progress)?;
                    w.msg(&FromSink::BatchDone)?;
                    w.flush()?;
                }
                ToSink::Commit if !self.dry_run => {
                    let token = self.commit()?;
                    self.uncommitted = false;
                    self.stats.peak_rss_kib = peak_rss_kib();
                    w.msg(&FromSink::Committed {
                        token,
                        stats: self.stats.clone(),
                    })?;
                    w.flush()?;
                }
                ToSink::Plan { changes } if self.dry_run => self.take_plan(changes)?,
                ToSink::Prefill {
                    path,
                    size,
                    offset,
                    chunks,
                } if !self.dry_run && self.opts.confine_to.is_none() => {
                    let hashes = self.prefill(path, size, offset, &chunks)?;
                    w.msg(&FromSink::PrefillNeed { hashes })?;
                    w.flush()?;
                }
                ToSink::Warnings { messages } => {
                    let kept = messages.len().min(MAX_WARNINGS);
                    self.warnings.extend(
                        messages[..kept]
                            .iter()
                            .map(|m| format!("the source skipped {}", printable(m))),
                    );
                    if messages.len() > kept {
                        self.warnings.push(format!(
                            "the source skipped {} more paths",
                            messages.len() - kept
                        ));
                    }
                }
                // The records were read above, while the source makes its diff.
                ToSink::ChangesFollow => {}
                ToSink::Error { message } => return Err(Error::Remote(printable(&message))),
                ToSink::Bye => return Ok(End::Bye),
                other => {
                    let when = if self.dry_run { " in a dry run" } else { "" };
                    return Err(Error::Protocol(format!(
                        "unexpected {}{when}",
                        what(&other)
                    )));
                }
            }
        }
    }

    /// Whether ops were applied and not committed (a source that leaves now left a partial
    /// tree behind).
    pub(crate) fn uncommitted(&self) -> bool {
        self.uncommitted
    }

    /// At the end of a session: lets the watcher that vouched for the tree go on watching if
    /// nothing was sent that could change it; else the watcher ends (dropping the claim).
    /// Whether a new watcher is wanted: the session committed, and none watches on.
    fn hand_over(&mut self) -> bool {
        if !self.watched {
            return false;
        }
        let claim = self.watch.take();
        if !self.changed && claim.is_some_and(|c| c.clean && c.keep()) {
            return false;
        }
        self.token.is_some() && !self.uncommitted
    }

    /// Refuse a path from the peer that is unsafe, outside `confine_to`, or under a symlink
    /// that was refused.
    fn admit(&self, path: &str) -> Result<()> {
        check_relative(path)?;
        if let Some(top) = &self.opts.confine_to {
            if !paths::within(path, top) {
                return Err(Error::UnsafePath {
                    path: path.chars().take(200).collect(),
                    reason: "outside the download",
                });
            }
        }
        if !self.refused.is_empty() {
            let mut at = path;
            while let Some(parent) = paths::parent(at) {
                if self.refused.contains(parent) {
                    return Err(Error::UnsafePath {
                        path: path.chars().take(200).collect(),
                        reason: "under a symlink that was refused",
                    });
                }
                at = parent;
            }
        }
        Ok(())
    }

    /// Record a dry run's plan as it would apply here: an added path that exists already is an
    /// update, and a changed file that would be kept is not a delete.
    fn take_plan(&mut self, changes: Vec<Change>) -> Result<()> {
        for c in changes {
            let (Change::Add(p) | Change::Update(p) | Change::Touch(p) | Change::Delete(p)) = &c;
            self.admit(p)?;
            let exists = || {
                self.root
                    .existing(p)
                    .ok()
                    .flatten()
                    .is_some_and(|abs| fs::symlink_metadata(abs).is_ok())
            };
            let c = match c {
                Change::Add(p) if exists() => Change::Update(p),
                Change::Delete(p) if self.kept(&p) && exists() => {
                    self.warnings.push(format!(
                        "would keep {}: changed here since mtr wrote it",
                        self.root.join(&p).display()
                    ));
                    continue;
                }
                c => c,
            };
            self.plan.push(c);
        }
        Ok(())
    }

    /// Whether a delete of `path` keeps it: a non-directory the sink wrote that changed since,
    /// under [`SinkOptions::keep_changed`].
    fn kept(&self, path: &str) -> bool {
        self.opts.keep_changed
            && self
                .records
                .get(path)
                .is_some_and(|r| r.dirty && !matches!(r.rec.entry.kind, EntryKind::Dir))
    }

    /// Check every recorded path against the filesystem ([`check`]); marks and returns the
    /// ones that changed.
    fn validate(&mut self) -> Vec<String> {
        let changed = check(&self.root, &self.loaded);
        for p in &changed {
            if let Some(i) = position(&self.loaded, p) {
                self.loaded[i].dirty = true;
            }
        }
        changed
    }

    /// Whether an upsert names what a trusted record already says (a file under a directory
    /// that moved): nothing to build, no chunk to look up.
    fn holds(&self, op: &Op) -> bool {
        matches!(op, Op::Upsert { entry, .. } if self.recorded_as(entry))
    }

    /// Whether a trusted record says exactly `entry`.
    fn recorded_as(&self, entry: &Entry) -> bool {
        self.records
            .get(&entry.path)
            .is_some_and(|r| !r.dirty && r.rec.entry.kind == entry.kind)
    }

    /// Build the map of records from the index as loaded (once, before anything changes).
    fn ensure_records(&mut self) {
        if std::mem::take(&mut self.deferred) {
            // Vouched for by the watcher: trusted as recorded, unchecked.
            let (token, loaded) = load_records(&self.state_dir, self.opts.confine_to.as_deref());
            if token != self.token {
                log::debug!("sink: the index changed since its head was read; records checked");
                self.loaded = loaded;
                self.validate();
            } else {
                self.loaded = loaded;
            }
        }
        if !self.loaded.is_empty() {
            let clock = Instant::now();
            self.records = std::mem::take(&mut self.loaded)
                .into_iter()
                .map(|r| (r.path().to_string(), r))
                .collect();
            log::debug!(
                "sink: {} records in order in {:.0?}",
                self.records.len(),
                clock.elapsed()
            );
        }
    }

    fn recorded_chunks(&self) -> usize {
        self.records.values().map(|r| r.rec.chunks.len()).sum()
    }

    /// Fill `locs` with the chunks of the records still trusted (once; later changes keep it
    /// up to date). Chunks found earlier (seeds) stay where the records do not hold them.
    fn ensure_locs(&mut self) {
        if self.locs_ready {
            return;
        }
        self.load_aside();
        self.locs_ready = true;
        let clock = Instant::now();
        let chunks = self.recorded_chunks();
        let mut locs: HashMap<Hash, Loc> = HashMap::with_capacity(chunks + self.locs.len());
        for (path, r) in &self.records {
            if !r.dirty {
                add_locs(&mut locs, path, &r.rec.chunks);
            }
        }
        for (h, l) in std::mem::take(&mut self.locs) {
            locs.entry(h).or_insert(l);
        }
        self.locs = locs;
        log::debug!(
            "sink: {} chunk locations in {:.0?}",
            self.locs.len(),
            clock.elapsed()
        );
    }

    /// The chunks of `wanted` that trusted records hold, found by one pass over their chunk
    /// lists: for a batch that names few chunks, far cheaper than locating every chunk.
    fn find_locs(&self, wanted: &HashSet<Hash>) -> HashMap<Hash, Loc> {
        let clock = Instant::now();
        let mut found: HashMap<Hash, Loc> = HashMap::new();
        for (path, r) in self.records.iter().filter(|(_, r)| !r.dirty) {
            add_locs_of(&mut found, path, &r.rec.chunks, |h| wanted.contains(h));
        }
        log::debug!(
            "sink: {} of {} chunks found in {:.0?}",
            found.len(),
            wanted.len(),
            clock.elapsed()
        );
        found
    }

    /// [`SinkOptions::reuse_existing`]: chunk the files this sink can copy from but has no
    /// chunk list for — on first contact every regular file under the root (`confine_to`), and
    /// always the files it wrote that changed since — so a download into a directory that
    /// already holds an older copy moves only what differs. Symlinks are never followed; a
    /// file that cannot be read is skipped.
    pub(crate) fn reuse_existing(&mut self, chunker: &Chunker, progress: &dyn Progress) {
        if !self.opts.reuse_existing {
            return;
        }
        self.ensure_records();
        self.ensure_locs();
        let mut found: Vec<(String, StatKey)> = Vec::new();
        if self.records.is_empty() {
            let top = self.opts.confine_to.clone().unwrap_or_default();
            self.find_files(&top, &mut found);
        } else {
            for (path, r) in &self.records {
                if !r.dirty || !matches!(r.rec.entry.kind, EntryKind::File { .. }) {
                    continue;
                }
                if let Ok(Some(abs)) = self.root.existing(path) {
                    match fs::symlink_metadata(&abs) {
                        Ok(m) if m.is_file() => found.push((path.clone(), stat_of(&m))),
                        _ => {}
                    }
                }
            }
        }
        if found.is_empty() {
            return;
        }
        progress.phase("index", found.iter().map(|(_, st)| st.size).sum());
        let root = &self.root;
        let chunked: Vec<(String, Seed)> = found
            .into_par_iter()
            .filter_map(|(path, st)| {
                let abs = root.join(&path);
                let chunks = scan::chunk_file(&abs, &st, chunker)
                    .map_err(|e| log::debug!("not reusing {}: {e}", abs.display()))
                    .ok()?;
                progress.advance(st.size);
                let stat = stat_of(&fs::symlink_metadata(&abs).ok()?);
                Some((
                    path,
                    Seed {
                        stat,
                        chunks: chunker::specs(&chunks),
                    },
                ))
            })
            .collect();
        for (path, seed) in chunked {
            add_locs(&mut self.locs, &path, &seed.chunks);
            self.bytes_hashed += seed.stat.size;
            self.seeds.insert(path, seed);
        }
    }

    /// Regular files at or under `rel` ("" for the root), without following symlinks.
    fn find_files(&self, rel: &str, out: &mut Vec<(String, StatKey)>) {
        let abs = if rel.is_empty() {
            self.root.path().to_path_buf()
        } else {
            match self.root.existing(rel) {
                Ok(Some(abs)) => abs,
                _ => return,
            }
        };
        let Ok(m) = fs::symlink_metadata(&abs) else {
            return;
        };
        if m.is_file() && !rel.is_empty() {
            out.push((rel.to_string(), stat_of(&m)));
            return;
        }
        if !m.is_dir() {
            return;
        }
        let Ok(rd) = fs::read_dir(&abs) else {
            return;
        };
        for de in rd.flatten() {
            let Some(name) = de.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if rel.is_empty() && name == STATE_DIR {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            self.find_files(&child, out);
        }
    }

    /// The `stat` a chunk source at `path` must still have: a file the sink wrote (and that
    /// did not change since), else a file found on the sink.
    fn trusted_stat(&self, path: &str) -> Option<StatKey> {
        match self.records.get(path) {
            Some(r) if !r.dirty => Some(r.rec.stat),
            _ => self.seeds.get(path).map(|s| s.stat),
        }
    }

    fn forget_locs(&mut self, path: &str) {
        if !self.locs_ready {
            // Built from the records when needed: nothing to forget yet.
            return;
        }
        let recorded = self.records.get(path).map(|r| &r.rec.chunks);
        let seeded = self.seeds.get(path).map(|s| &s.chunks);
        for c in recorded.into_iter().chain(seeded).flatten() {
            if self.locs.get(&c.hash).is_some_and(|l| &*l.path == path) {
                self.locs.remove(&c.hash);
            }
        }
    }

    /// Record `entry` as written, with `stat`. An empty `chunks` for a file with content is
    /// its list kept aside and not read ([`Sink::load_aside`]): a move or a touch of it.
    fn record(&mut self, entry: Entry, chunks: Vec<ChunkSpec>, stat: StatKey) {
        let path = entry.path.clone();
        self.forget_locs(&path);
        self.seeds.remove(&path);
        if self.locs_ready {
            add_locs(&mut self.locs, &path, &chunks);
        }
        self.records.insert(
            path,
            Rec::new(SinkRecord {
                entry,
                chunks,
                stat,
            }),
        );
    }

    fn unrecord(&mut self, path: &str) {
        self.forget_locs(path);
        self.records.remove(path);
        self.seeds.remove(path);
    }

    /// Remove whatever non-directory or mtr-written directory tree is at `rel` so something
    /// else can take its place. A directory holding files mtr did not write is a conflict.
    fn clear_for(&mut self, rel: &str, abs: &Path, meta: &fs::Metadata) -> Result<()> {
        if !meta.is_dir() {
            fs::remove_file(abs).ctx("remove", abs)?;
            self.unrecord(rel);
            return Ok(());
        }
        if let Some(foreign) = self.first_foreign(rel, abs)? {
            return Err(Error::Conflict(format!(
                "cannot replace directory {} with a file: it holds {} which mtr did not write; move it away",
                abs.display(),
                foreign.display()
            )));
        }
        fs::remove_dir_all(abs).ctx("remove", abs)?;
        let prefix = format!("{rel}/");
        let gone: Vec<String> = self
            .records
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.unrecord(&p);
        }
        self.unrecord(rel);
        Ok(())
    }

    fn first_foreign(&self, rel: &str, abs: &Path) -> Result<Option<PathBuf>> {
        for de in fs::read_dir(abs).ctx("read directory", abs)? {
            let de = de.ctx("read directory", abs)?;
            let name = de.file_name();
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            if !self.records.contains_key(&child_rel) {
                return Ok(Some(de.path()));
            }
            if de.file_type().ctx("stat", de.path())?.is_dir() {
                if let Some(f) = self.first_foreign(&child_rel, &de.path())? {
                    return Ok(Some(f));
                }
            }
        }
        Ok(None)
    }

    /// Apply an upsert: directories and symlinks at once; a file with new content is staged,
    /// its chunks planned as local copies (from the files holding them, as they are now) or
    /// added to what to ask for.
    fn upsert(
        &mut self,
        entry: Entry,
        chunks: Option<Vec<ChunkSpec>>,
        staged: &mut Vec<Staged>,
        need: &mut Need,
        copies: &mut Vec<Copy>,
    ) -> Result<()> {
        match entry.kind.clone() {
            EntryKind::Dir => self.upsert_dir(entry),
            EntryKind::Symlink { target } => self.upsert_symlink(entry, &target),
            EntryKind::File { .. } => {
                if let Some((s, filled)) = self.upsert_file(entry, chunks)? {
                    let idx = staged.len();
                    let mut off = 0;
                    for c in &s.chunks {
                        if !filled.contains(&off) {
                            let src = self
                                .locs
                                .get(&c.hash)
                                .and_then(|l| Some((l.clone(), self.trusted_stat(&l.path)?)));
                            match src {
                                Some((src, stat)) => copies.push(Copy {
                                    idx,
                                    off,
                                    hash: c.hash,
                                    src,
                                    stat,
                                }),
                                None => need.add(c.hash, idx, off),
                            }
                        }
                        off += c.len as u64;
                    }
                    staged.push(s);
                }
                Ok(())
            }
        }
    }

    /// [`Op::Move`] of a file: rename `from` to `entry` when `from` is a file this sink wrote,
    /// unchanged since, with the same content. `Ok(false)` (nothing done) when it cannot serve.
    /// The file keeps its inode, so copies planned earlier from either path fail their `stat`
    /// check and travel instead of reading the wrong bytes.
    fn move_file(&mut self, from: &str, entry: &Entry) -> Result<bool> {
        let EntryKind::File {
            mode,
            mtime_ns,
            digest,
            ..
        } = entry.kind
        else {
            return Ok(false);
        };
        let Some(rec) = self.records.get(from).filter(|r| {
            from != entry.path
                && !r.dirty
                && matches!(&r.rec.entry.kind, EntryKind::File { digest: d, .. } if *d == digest)
        }) else {
            return Ok(false);
        };
        let (recorded, chunks) = (rec.rec.stat, rec.rec.chunks.clone());
        let Some(src) = self.root.existing(from)? else {
            return Ok(false);
        };
        // Never through a symlink that replaced the file since.
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&src)
        else {
            return Ok(false);
        };
        match f.metadata() {
            Ok(m) if m.is_file() && stat_of(&m) == recorded => {}
            _ => return Ok(false),
        }
        let dst = self.root.prepare_parent(&entry.path)?;
        if let Ok(m) = fs::symlink_metadata(&dst) {
            if m.is_dir() {
                self.clear_for(&entry.path, &dst, &m)?;
            }
        }
        set_meta_fd(&f, &src, mode, mtime_ns)?;
        fs::rename(&src, &dst).ctx("rename into place", &dst)?;
        let stat = stat_of(&f.metadata().ctx("stat", &dst)?);
        self.unrecord(from);
        self.stats.files_written += 1;
        self.record(entry.clone(), chunks, stat);
        Ok(true)
    }

    /// [`Op::Move`] of a directory: rename `from` to `entry` when `from` is a directory this
    /// sink wrote holding nothing but what it wrote, all unchanged since, and nothing is at
    /// `entry` yet; its records follow it. `Ok(false)` (nothing done) otherwise.
    fn move_dir(&mut self, from: &str, entry: &Entry) -> Result<bool> {
        let to = entry.path.as_str();
        if paths::within(to, from)
            || paths::within(from, to)
            || !self
                .records
                .get(from)
                .is_some_and(|r| !r.dirty && matches!(r.rec.entry.kind, EntryKind::Dir))
        {
            return Ok(false);
        }
        let clock = Instant::now();
        let prefix = format!("{from}/");
        // The records under `from`: keys from "from/" up to "from0" ('0' follows '/').
        let end = format!("{from}0");
        let under = || {
            self.records
                .range::<str, _>((Included(prefix.as_str()), Excluded(end.as_str())))
        };
        if under().any(|(_, r)| r.dirty) {
            return Ok(false); // changed on this side since
        }
        let Some(src) = self.root.existing(from)? else {
            return Ok(false);
        };
        match fs::symlink_metadata(&src) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(false),
        }
        // A file created on this side would move along: not for mtr to move.
        if self.first_foreign(from, &src)?.is_some() {
            return Ok(false);
        }
        // Nor a symlink that would point out of the tree from its new depth.
        if self.opts.contain_symlinks {
            let floor = usize::from(self.opts.confine_to.is_some());
            let escapes = under().any(|(p, r)| match &r.rec.entry.kind {
                EntryKind::Symlink { target } => {
                    let moved = format!("{to}{}", &p[from.len()..]);
                    paths::check_symlink_target(&moved, target, floor).is_err()
                }
                _ => false,
            });
            if escapes {
                return Ok(false);
            }
        }
        let dst = self.root.prepare_parent(to)?;
        if fs::symlink_metadata(&dst).is_ok() {
            return Ok(false);
        }
        fs::rename(&src, &dst).ctx("rename into place", &dst)?;
        let checked = clock.elapsed();
        // Renaming a directory leaves the stat of what is under it as it was: its records
        // follow it (an unread list kept aside stays one, see `record`).
        let keys: Vec<String> = under().map(|(p, _)| p.clone()).collect();
        let moved = keys.len();
        for p in keys {
            self.forget_locs(&p);
            let Some(r) = self.records.remove(&p) else {
                continue;
            };
            let path = format!("{to}{}", &p[from.len()..]);
            self.record(
                Entry {
                    path,
                    kind: r.rec.entry.kind,
                },
                r.rec.chunks,
                r.rec.stat,
            );
        }
        self.unrecord(from);
        self.record(entry.clone(), Vec::new(), StatKey::default());
        log::debug!(
            "sink: moved {from} to {to} in {checked:.0?} (checked and renamed), its {moved} \
             records in {:.0?}",
            clock.elapsed() - checked
        );
        Ok(true)
    }

    fn batch<R: Read, W: Write>(
        &mut self,
        ops: Vec<Op>,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        progress: &dyn Progress,
    ) -> Result<()> {
        // A batch naming few chunks (an edit) has them looked up for it alone: locating every
        // chunk of a large tree costs more than the rest of such a sync. The lookup is
        // dropped after the batch; a copy from a file the batch itself changed fails its
        // `stat` check and is requested instead.
        if !self.locs_ready {
            let mut wanted: HashSet<Hash> = HashSet::new();
            let mut wanted_bytes = 0u64;
            for c in ops.iter().filter(|op| !self.holds(op)).flat_map(op_chunks) {
                if wanted.insert(c.hash) {
                    wanted_bytes += u64::from(c.len);
                }
            }
            if wanted_bytes >= ASIDE_LOOKUP_MIN {
                self.load_aside();
            }
            if wanted.len().saturating_mul(FEW_CHUNKS) < self.recorded_chunks() {
                self.locs = self.find_locs(&wanted);
            } else {
                self.ensure_locs();
            }
        }
        let mut staged: Vec<Staged> = Vec::new();
        let result = self.apply(ops, &mut staged, r, w, progress);
        if !self.locs_ready {
            self.locs.clear();
        }
        if result.as_ref().is_err_and(Error::is_storage_full) {
            // The disk is full: the partial files of this batch would only keep it full (and
            // the user's own jobs there failing); the next sync sends their data again.
            for s in staged {
                drop(s.file);
                if let Err(e) = fs::remove_file(&s.tmp) {
                    log::debug!("cannot remove {}: {e}", s.tmp.display());
                }
            }
        }
        result
    }

    /// [`Sink::batch`]: the files it builds stay in `staged` until placed.
    fn apply<R: Read, W: Write>(
        &mut self,
        ops: Vec<Op>,
        staged: &mut Vec<Staged>,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut need = Need::default();
        let mut copies: Vec<Copy> = Vec::new();
        let mut refused = Vec::new();
        for op in ops {
            match op {
                Op::Delete { path } => {
                    self.admit(&path)?;
                    self.changes += 1;
                    self.delete(&path)?
                }
                Op::Forget { path } => {
                    self.admit(&path)?;
                    self.unrecord(&path);
                }
                Op::UpsertPrefilled { entry } => {
                    // Made an `Upsert` before the batch (`Prefills::expand`).
                    return Err(Error::Protocol(format!(
                        "{}: an upsert of its prefills out of place",
                        entry.path
                    )));
                }
                Op::Upsert { entry, chunks } => {
                    self.admit(&entry.path)?;
                    self.changes += 1;
                    self.upsert(entry, chunks, staged, &mut need, &mut copies)?;
                }
                Op::Move {
                    from,
                    entry,
                    chunks,
                } => {
                    self.admit(&from)?;
                    self.admit(&entry.path)?;
                    self.changes += 1;
                    let moved = match &entry.kind {
                        EntryKind::Dir => {
                            let moved = self.move_dir(&from, &entry)?;
                            if !moved {
                                // The source sends what the move stood for.
                                refused.push(entry.path.clone());
                            }
                            moved
                        }
                        EntryKind::File { .. } => self.move_file(&from, &entry)?,
                        EntryKind::Symlink { .. } => false,
                    };
                    if !moved {
                        // Its chunks were not looked up for this batch (moves rarely fail).
                        self.ensure_locs();
                        self.upsert(entry, chunks, staged, &mut need, &mut copies)?;
                    }
                }
            }
        }
        if !refused.is_empty() {
            log::debug!("sink: {} directory move(s) refused", refused.len());
            w.msg(&FromSink::Refused { moves: refused })?;
        }
        // Ask for what is missing first, so the source reads and sends while we copy.
        w.msg(&FromSink::Need {
            hashes: need.order.clone(),
        })?;
        w.flush()?;
        if !staged.is_empty() {
            progress.phase("receive", staged.iter().map(|s| s.size()).sum());
        }
        // Local copies run on a thread of their own while the missing chunks arrive.
        let root = self.root.clone();
        let clock = Instant::now();
        let (copied, received) = std::thread::scope(|scope| {
            let staged = &*staged;
            let copier = scope.spawn(move || {
                let copied = copy_local(&root, staged, copies, progress);
                if let Ok(c) = &copied {
                    log::debug!(
                        "sink: {} bytes copied locally in {:.0?}",
                        c.bytes,
                        clock.elapsed()
                    );
                }
                copied
            });
            let received = self.receive(staged, &mut need.waiting, r, progress);
            log::debug!(
                "sink: {} chunks received in {:.0?}",
                need.order.len(),
                clock.elapsed()
            );
            let copied = copier
                .join()
                .unwrap_or_else(|_| Err(Error::Protocol("the copy thread panicked".into())));
            (copied, received)
        });
        let Copied {
            bytes,
            failed,
            stale,
        } = copied?;
        received?;
        self.stats.bytes_copied_locally += bytes;
        self.distrust(stale);
        let missed = self.wait_for_prefills(staged);
        if !failed.is_empty() || !missed.is_empty() {
            // A copy source changed under us (or a prefill's copy failed): those chunks
            // travel after all.
            let mut again = Need::default();
            for c in failed {
                again.add(c.hash, c.idx, c.off);
            }
            for (idx, off, hash) in missed {
                again.add(hash, idx, off);
            }
            w.msg(&FromSink::Need {
                hashes: again.order.clone(),
            })?;
            w.flush()?;
            self.receive(staged, &mut again.waiting, r, progress)?;
        }
        // In order; what is not placed yet stays in `staged`.
        let clock = Instant::now();
        let placed = staged.len();
        staged.reverse();
        while let Some(s) = staged.pop() {
            self.place(s)?;
        }
        log::debug!("sink: {placed} files placed in {:.0?}", clock.elapsed());
        Ok(())
    }

    /// After the batch's copies: wait for the prefills' and list the chunks they were counted
    /// on for and did not write.
    fn wait_for_prefills(&mut self, staged: &[Staged]) -> Vec<(usize, u64, Hash)> {
        if staged.iter().all(|s| s.prefill.is_none()) {
            return Vec::new();
        }
        let clock = Instant::now();
        for s in staged {
            if let Some(check) = &s.prefill {
                check.copies.wait();
            }
        }
        log::debug!("sink: prefills waited for {:.0?}", clock.elapsed());
        let (missed, copied) = prefill_misses(staged);
        self.stats.bytes_copied_locally += copied;
        missed
    }

    /// After [`copy_local`]: sources found changed are no longer trusted (their records are
    /// dirty, their chunks no longer located there).
    fn distrust(&mut self, stale: Vec<(String, StatKey)>) {
        for (path, stat) in stale {
            if self.trusted_stat(&path) == Some(stat) {
                if let Some(r) = self.records.get_mut(&path) {
                    r.dirty = true;
                }
                self.forget_locs(&path);
                self.seeds.remove(&path);
            }
        }
    }

    fn delete(&mut self, path: &str) -> Result<()> {
        check_relative(path)?;
        let Some(rec) = self.records.get(path) else {
            return Ok(()); // never delete what mtr did not write
        };
        let is_dir = matches!(rec.rec.entry.kind, EntryKind::Dir);
        let kept = self.kept(path);
        if let Some(abs) = self.root.existing(path)? {
            match fs::symlink_metadata(&abs) {
                // Left in place if the sink's side put files in it.
                Ok(m) if m.is_dir() && is_dir && fs::remove_dir(&abs).is_ok() => {
                    self.stats.deleted += 1;
                }
                Ok(m) if !m.is_dir() && !is_dir && kept => {
                    self.warnings.push(format!(
                        "kept {}: it changed here since mtr wrote it",
                        abs.display()
                    ));
                }
                Ok(m) if !m.is_dir() && !is_dir => {
                    fs::remove_file(&abs).ctx("delete", &abs)?;
                    self.stats.deleted += 1;
                }
                _ => {} // replaced by something else on the sink's side: leave it
            }
        }
        self.unrecord(path);
        Ok(())
    }

    fn upsert_dir(&mut self, entry: Entry) -> Result<()> {
        let abs = self.root.prepare_parent(&entry.path)?;
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                self.clear_for(&entry.path, &abs, &m)?;
                fs::create_dir(&abs).ctx("create directory", &abs)?;
            }
            Err(_) => fs::create_dir(&abs).ctx("create directory", &abs)?,
        }
        self.record(entry, Vec::new(), StatKey::default());
        Ok(())
    }

    fn upsert_symlink(&mut self, entry: Entry, target: &str) -> Result<()> {
        if self.opts.contain_symlinks {
            let floor = usize::from(self.opts.confine_to.is_some());
            if let Err(why) = paths::check_symlink_target(&entry.path, target, floor) {
                self.warnings.push(format!(
                    "skipped symlink {} -> {target:?}: {why}",
                    self.root.join(&entry.path).display()
                ));
                self.refused.insert(entry.path);
                return Ok(());
            }
        }
        let abs = self.root.prepare_parent(&entry.path)?;
        if let Ok(m) = fs::symlink_metadata(&abs) {
            if m.file_type().is_symlink()
                && fs::read_link(&abs).ok().as_deref() == Some(Path::new(target))
            {
                self.record(entry, Vec::new(), StatKey::default());
                return Ok(());
            }
            if m.is_dir() {
                self.clear_for(&entry.path, &abs, &m)?;
            }
        }
        let tmp = self.staging_path(&entry.path, "link")?;
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).ctx("create symlink", &tmp)?;
        fs::rename(&tmp, &abs).ctx("rename into place", &abs)?;
        self.unrecord(&entry.path);
        self.record(entry, Vec::new(), StatKey::default());
        Ok(())
    }

    /// [`ToSink::Prefill`]: the segment's chunks that the file's recorded version holds are
    /// copied into its prefill in staging, by the prefill thread; those no file here holds
    /// are returned, for the source to send at once ([`FromSink::PrefillNeed`]). A file
    /// without a trusted recorded version (a new one: a first sync) has all its chunks that
    /// no file here holds asked for.
    fn prefill(
        &mut self,
        path: String,
        size: u64,
        offset: u64,
        chunks: &[ChunkSpec],
    ) -> Result<Vec<Hash>> {
        self.admit(&path)?;
        let end = chunks.iter().try_fold(offset, |end, c| {
            let valid = c.len > 0 && c.len as usize <= MAX_CHUNK;
            valid.then(|| end.checked_add(c.len as u64)).flatten()
        });
        let Some(end) = end.filter(|&end| end <= size) else {
            return Err(Error::Protocol(format!(
                "{path}: prefill of chunks outside the file"
            )));
        };
        self.prefills.list(&path, size, offset, chunks)?;
        if end == offset || self.prefills.ignored.contains(&path) {
            return Ok(Vec::new());
        }
        if !self.prefills.files.contains_key(&path) {
            let p = self.start_prefill(&path)?;
            self.prefills.files.insert(path.clone(), p);
        }
        let p = self.prefills.files.get_mut(&path).expect("started above");
        // Segments of one file never overlap (a file read twice tells its segments again):
        // its copies must never write over each other, or one its list no longer has could
        // land on the batch's own writes. Such a file is built as usual.
        if p.segments
            .range(..end)
            .next_back()
            .is_some_and(|(_, &seg_end)| seg_end > offset)
        {
            log::debug!("sink: {path} told twice; not prefilled");
            if let Some(p) = self.prefills.files.remove(&path) {
                p.remove();
            }
            self.prefills.ignored.insert(path);
            return Ok(Vec::new());
        }
        p.segments.insert(offset, end);
        // Chunks contiguous in both files are copied in one call.
        let mut runs: Vec<PrefillRun> = Vec::new();
        let mut new: Vec<(u64, &ChunkSpec)> = Vec::new();
        let mut off = offset;
        for c in chunks {
            match p.old.get(&c.hash) {
                Some(&src) => {
                    p.planned.insert(off, (c.hash, c.len));
                    match runs.last_mut() {
                        Some(r) if r.src_off + r.len == src && r.dst_off + r.len == off => {
                            r.len += c.len as u64;
                            r.chunks.push((off, c.hash, c.len));
                        }
                        _ => runs.push(PrefillRun {
                            src_off: src,
                            dst_off: off,
                            len: c.len as u64,
                            chunks: vec![(off, c.hash, c.len)],
                        }),
                    }
                }
                None if p.holds(off, c) => {
                    p.planned.insert(off, (c.hash, c.len));
                    p.copies.arrived(off, c);
                }
                None => new.push((off, c)),
            }
            off += c.len as u64;
        }
        if let Some(src) = &p.src {
            let job = PrefillJob {
                src: src.clone(),
                dst: p.file.try_clone().ctx("open", &p.tmp)?,
                runs,
                copies: p.copies.clone(),
            };
            self.prefills.send(job);
        }
        // What the recorded version lacks: asked for now unless another file here holds it
        // (the batch copies that one: a checkpoint copied over another travels not at all).
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_locs();
        let mut order = Vec::new();
        let shared: Arc<str> = Arc::from(path.as_str());
        for (off, c) in new {
            if self.locs.contains_key(&c.hash) {
                continue;
            }
            let targets = self.prefills.wanted.entry(c.hash).or_default();
            if targets.is_empty() {
                order.push(c.hash);
            }
            targets.push((shared.clone(), off, c.len));
        }
        Ok(order)
    }

    /// A chunk a [`FromSink::PrefillNeed`] asked for: written into its file's prefill
    /// wherever the segment lists it, and counted as that prefill's. One that does not verify
    /// (the source's file changed as it was read) is dropped: the batch asks for it again.
    fn prefill_data(&mut self, d: DataFrame, targets: Vec<(Arc<str>, u64, u32)>) -> Result<()> {
        self.payload_received += d.payload.len() as u64;
        let hash = d.hash;
        let Some(raw) = decode(d)? else {
            log::debug!(
                "sink: prefill chunk {} does not verify; dropped",
                hex(&hash[..8])
            );
            return Ok(());
        };
        self.stats.bytes_received += raw.len() as u64;
        for (path, off, len) in targets {
            // Dropped since it was asked for (told twice), or listed at another length.
            let Some(p) = self.prefills.files.get_mut(&*path) else {
                continue;
            };
            if len as usize != raw.len() {
                continue;
            }
            p.file.write_all_at(&raw, off).ctx("write", &p.tmp)?;
            p.planned.insert(off, (hash, len));
            p.copies.arrived(off, &ChunkSpec { hash, len });
        }
        Ok(())
    }

    /// The prefill of `path`: built from its recorded version where that can serve (trusted,
    /// unchanged since the sink wrote it, its chunk list known, still that version on disk);
    /// otherwise (a new file, one changed here) only from what arrives.
    fn start_prefill(&mut self, path: &str) -> Result<Prefilled> {
        self.load_aside();
        let recorded = self
            .records
            .get(path)
            .filter(|r| !r.dirty)
            .filter(|r| matches!(r.rec.entry.kind, EntryKind::File { .. }))
            .filter(|r| !r.rec.chunks.is_empty())
            .and_then(|r| {
                let src = open_unchanged(&self.root, path, r.rec.stat)?;
                Some((r, src))
            });
        let (stat, src, old) = match recorded {
            Some((r, src)) => {
                let mut old = HashMap::with_capacity(r.rec.chunks.len());
                for (at, c) in chunker::placed(&r.rec.chunks) {
                    old.entry(c.hash).or_insert(at);
                }
                (Some(r.rec.stat), Some(Arc::new(src)), old)
            }
            None => (None, None, HashMap::new()),
        };
        let tmp = self.staging_path(path, "prefill")?;
        // An interrupted session's prefill of this file (kept for the chunks that traveled):
        // built on, its chunks that verify where a segment lists them kept (`leftover`).
        let leftover = match fs::symlink_metadata(&tmp) {
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        };
        let file = if leftover > 0 {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .ctx("open", &tmp)?
        } else {
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).ctx("remove", &tmp);
                }
                _ => {}
            }
            create_staged(&tmp)?
        };
        Ok(Prefilled {
            tmp,
            file,
            leftover,
            stat,
            src,
            old,
            segments: BTreeMap::new(),
            planned: HashMap::new(),
            copies: Arc::default(),
        })
    }

    /// Where `path` is built: in the staging directory, created when first needed.
    fn staging_path(&mut self, path: &str, tag: &str) -> Result<PathBuf> {
        if !self.staging_ready {
            fs::create_dir_all(&self.staging_dir).ctx("create", &self.staging_dir)?;
            self.staging_ready = true;
        }
        let h = blake3::hash(path.as_bytes());
        Ok(self
            .staging_dir
            .join(format!("{}-{tag}", &h.to_hex()[..32])))
    }

    /// Returns the staged file and the offsets already filled, or `None` when the file
    /// needed no data.
    fn upsert_file(
        &mut self,
        entry: Entry,
        chunks: Option<Vec<ChunkSpec>>,
    ) -> Result<Option<(Staged, HashSet<u64>)>> {
        let EntryKind::File {
            size,
            mode,
            mtime_ns,
            digest,
        } = entry.kind
        else {
            unreachable!()
        };
        if self.recorded_as(&entry) {
            // Exactly as recorded (a directory moved with it, say): nothing to write, nor
            // to record (the same digest is the same chunk list).
            return Ok(None);
        }
        let recorded = self.records.get(&entry.path).filter(|r| {
            !r.dirty
                && matches!(&r.rec.entry.kind, EntryKind::File { digest: d, .. } if *d == digest)
        });
        let have = match recorded {
            Some(r) => Some(r.rec.chunks.clone()),
            // A file found here with this content already: adopt it.
            None => self
                .seeds
                .get(&entry.path)
                .filter(|s| chunker::file_digest(&s.chunks) == digest)
                .map(|s| s.chunks.clone()),
        };
        if let Some(chunks) = have {
            // Content in place: metadata only.
            let abs = self
                .root
                .existing(&entry.path)?
                .ok_or_else(|| Error::Protocol(format!("{} vanished", entry.path)))?;
            set_meta(&abs, mode, mtime_ns)?;
            let stat = stat_of(&fs::symlink_metadata(&abs).ctx("stat", &abs)?);
            self.record(entry, chunks, stat);
            return Ok(None);
        }
        // Refuse unsafe destinations before asking for any data.
        let dest = self.root.prepare_parent(&entry.path)?;
        let chunks = chunks.ok_or_else(|| {
            Error::Protocol(format!(
                "{}: content changed but no chunk list was sent",
                entry.path
            ))
        })?;
        let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
        if total != size
            || chunks
                .iter()
                .any(|c| c.len as usize > MAX_CHUNK || c.len == 0)
            || chunker::file_digest(&chunks) != digest
        {
            return Err(Error::Protocol(format!(
                "{}: chunk list does not match its size or digest",
                entry.path
            )));
        }
        let tmp = self.staging_path(&entry.path, &hex(&digest[..8]))?;
        let mut filled = HashSet::new();
        let mut check = None;
        let prefilled = self.prefills.take(&entry.path, &self.root);
        let file = if let Some(p) = prefilled {
            // Built ahead from its prefills: what they write where this list has it counts
            // as filled (checked after the batch's copies; a miss travels then). The name
            // says which content a staged file was for.
            fs::rename(&p.tmp, &tmp).ctx("rename", &p.tmp)?;
            let at: HashMap<u64, (Hash, u32)> = chunker::placed(&chunks)
                .map(|(off, c)| (off, (c.hash, c.len)))
                .collect();
            if p.planned.iter().all(|(off, c)| at.get(off) == Some(c)) {
                // Everything it copies is this list's: it may go on while the batch runs.
                filled.extend(p.planned.keys());
                check = Some(PrefillCheck {
                    copies: p.copies,
                    offsets: p.planned.into_keys().collect(),
                });
            } else {
                // It also copies chunks this list does not have there, which must not land
                // over the batch's own writes: wait for it, and keep what it wrote right.
                p.copies.wait();
                let written = p.copies.written.lock().expect("prefill lock");
                for (&off, &c) in &at {
                    if let Some(copied) = prefilled_at(&written, off, c) {
                        filled.insert(off);
                        self.stats.bytes_copied_locally += copied;
                    }
                }
            }
            p.file
        } else {
            // An interrupted earlier session's prefill of this file, holding chunks that
            // traveled: staged as its leftover would be.
            let leftover = self.staging_path(&entry.path, "prefill")?;
            if fs::symlink_metadata(&tmp).is_err()
                && fs::symlink_metadata(&leftover).is_ok_and(|m| m.is_file())
            {
                log::debug!("sink: {} resumes from an earlier prefill", entry.path);
                fs::rename(&leftover, &tmp).ctx("rename", &leftover)?;
            }
            match fs::symlink_metadata(&tmp) {
                Ok(m) if m.is_file() => {
                    // An interrupted earlier run: keep every chunk that verifies.
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&tmp)
                        .ctx("open", &tmp)?;
                    let have_len = m.len();
                    let mut buf = Vec::new();
                    for (off, c) in chunker::placed(&chunks) {
                        if off + c.len as u64 <= have_len
                            && holds_at(&f, off, c, &mut buf).ctx("read", &tmp)?
                        {
                            filled.insert(off);
                        }
                    }
                    f
                }
                other => {
                    if other.is_ok() {
                        fs::remove_file(&tmp).ctx("remove", &tmp)?;
                    }
                    create_staged(&tmp)?
                }
            }
        };
        file.set_len(size).ctx("allocate", &tmp)?;
        let starts = chunker::placed(&chunks).map(|(at, _)| at).collect();
        Ok(Some((
            Staged {
                path: entry.path.clone(),
                dest,
                entry: entry.kind.clone(),
                chunks,
                starts,
                tmp,
                file,
                prefill: check,
            },
            filled,
        )))
    }

    /// Receive the data frames of a batch until `DataEnd`. This thread reads; workers decode,
    /// verify and write, so decompression and hashing run on every core.
    fn receive<R: Read>(
        &mut self,
        staged: &[Staged],
        need: &mut HashMap<Hash, Vec<(usize, u64)>>,
        r: &mut FrameReader<R>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let stored = AtomicU64::new(0);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(DataFrame, Vec<(usize, u64)>)>(2 * workers);
        let (mut tx, rx) = (Some(tx), Mutex::new(rx));
        let read = std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let job = rx.lock().expect("receiver lock").recv();
                    let Ok((d, targets)) = job else {
                        return;
                    };
                    match store(staged, d, targets, progress) {
                        Ok(n) => {
                            stored.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failure.lock().expect("failure lock").get_or_insert(e);
                        }
                    }
                });
            }
            let tx = tx.take().expect("one sender");
            loop {
                // After a failure (a full disk, say), the rest of the batch is read and dropped
                // and the error is answered to `DataEnd`: the source reads nothing while it
                // sends (mtr's flush even discards what arrived meanwhile: ssh2's
                // `Stream::flush` drops unread input), and a sink that stopped reading would
                // leave it blocked on the channel's flow control, which libssh2 never gives up
                // on, even once the channel is closed.
                let failed = failure.lock().expect("failure lock").is_some();
                match r.frame::<ToSink>()? {
                    Some(Frame::Data(_)) if failed => {}
                    Some(Frame::Data(d)) => {
                        let targets = need.remove(&d.hash).ok_or_else(|| {
                            Error::Protocol(format!("unrequested chunk {}", hex(&d.hash[..8])))
                        })?;
                        self.payload_received += d.payload.len() as u64;
                        if tx.send((d, targets)).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Frame::Msg(ToSink::DataEnd)) => return Ok(()),
                    Some(Frame::Msg(m)) => {
                        // Its name only: the message can be megabytes (a whole batch of ops).
                        return Err(Error::Protocol(format!(
                            "expected chunk data, got {}",
                            what(&m)
                        )));
                    }
                    None => {
                        return Err(Error::Transport(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection during a transfer",
                        )))
                    }
                }
            }
        });
        if let Some(e) = failure.into_inner().expect("failure lock") {
            return Err(e);
        }
        read?;
        self.stats.bytes_received += stored.into_inner();
        if let Some(h) = need.keys().next() {
            return Err(Error::Protocol(format!(
                "{} requested chunks were never sent (e.g. {})",
                need.len(),
                hex(&h[..8])
            )));
        }
        Ok(())
    }

    /// Move a completed staged file into place and record it.
    fn place(&mut self, s: Staged) -> Result<()> {
        let EntryKind::File {
            mode,
            mtime_ns,
            size,
            ..
        } = s.entry
        else {
            unreachable!()
        };
        set_meta_fd(&s.file, &s.tmp, mode, mtime_ns)?;
        drop(s.file);
        let abs = self.root.prepare_parent(&s.path)?;
        let replacing = match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {
                self.clear_for(&s.path, &abs, &m)?;
                false
            }
            Ok(_) => true,
            Err(_) => false,
        };
        // Swapping leaves the old version in staging, freed in the background: a rename over
        // it would free its blocks, and make ext4 allocate and flush the new file's, in the
        // call.
        if replacing && exchange(&s.tmp, &abs) {
            self.trash.discard(s.tmp);
        } else {
            fs::rename(&s.tmp, &abs).ctx("rename into place", &abs)?;
        }
        let stat = stat_of(&fs::symlink_metadata(&abs).ctx("stat", &abs)?);
        self.stats.files_written += 1;
        self.stats.bytes_written += size;
        self.placed_unsaved += size;
        self.record(
            Entry {
                path: s.path,
                kind: s.entry,
            },
            s.chunks,
            stat,
        );
        Ok(())
    }

    /// Where the chunk list of digest `digest` is kept aside.
    fn aside_path(&self, digest: &Hash) -> PathBuf {
        self.state_dir.join("chunks").join(hex(digest))
    }

    /// Read the chunk lists kept aside into their records (before a batch uses them). A list
    /// that is missing or does not match its record's digest makes the record untrusted: its
    /// chunks are not copied from, its file is rebuilt when it changes.
    fn load_aside(&mut self) {
        if std::mem::replace(&mut self.aside_loaded, true) {
            return;
        }
        let clock = Instant::now();
        let mut loaded = 0;
        let mut lists: HashMap<Hash, Vec<ChunkSpec>> = HashMap::new();
        let wanted: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.aside && r.rec.chunks.is_empty() && !r.dirty)
            .map(|(p, _)| p.clone())
            .collect();
        for path in wanted {
            let EntryKind::File { size, digest, .. } = self.records[&path].rec.entry.kind else {
                continue;
            };
            let list = match lists.get(&digest) {
                Some(l) => Some(l.clone()),
                None => index::load::<Vec<ChunkSpec>>(&self.aside_path(&digest)).filter(|l| {
                    chunker::file_digest(l) == digest
                        && l.iter().map(|c| c.len as u64).sum::<u64>() == size
                }),
            };
            let r = self.records.get_mut(&path).expect("listed above");
            match list {
                Some(l) => {
                    loaded += 1;
                    lists.entry(digest).or_insert_with(|| l.clone());
                    r.rec.chunks = l;
                }
                None => {
                    log::debug!("sink: the chunk list of {path} is lost; not copying from it");
                    r.dirty = true;
                }
            }
        }
        if loaded > 0 {
            log::debug!(
                "sink: {loaded} chunk lists kept aside loaded in {:.0?}",
                clock.elapsed()
            );
        }
    }

    /// Write the long chunk lists not kept aside yet into files of their own.
    fn store_aside(&mut self) -> Result<()> {
        let mut todo: Vec<(String, Hash)> = Vec::new();
        for (path, r) in &self.records {
            if let EntryKind::File { digest, .. } = r.rec.entry.kind {
                if !r.aside && r.rec.chunks.len() >= ASIDE_MIN {
                    todo.push((path.clone(), digest));
                }
            }
        }
        for (path, digest) in todo {
            let at = self.aside_path(&digest);
            let r = self.records.get_mut(&path).expect("listed above");
            if !at.exists() {
                index::save(&at, &r.rec.chunks)?;
            }
            r.aside = true;
        }
        Ok(())
    }

    /// Remove the lists kept aside that no record names any more.
    fn prune_aside(&self) {
        let Ok(rd) = fs::read_dir(self.state_dir.join("chunks")) else {
            return;
        };
        let named: HashSet<String> = self
            .records
            .values()
            .filter(|r| r.aside)
            .filter_map(|r| match r.rec.entry.kind {
                EntryKind::File { digest, .. } => Some(hex(&digest)),
                _ => None,
            })
            .collect();
        for de in rd.flatten() {
            if !de.file_name().to_str().is_some_and(|n| named.contains(n)) {
                let _ = fs::remove_file(de.path());
            }
        }
    }

    fn save(&mut self, token: Option<Hash>) -> Result<()> {
        self.store_aside()?;
        let ix = IndexOut {
            token,
            records: &self.records,
        };
        index::save(&self.state_dir.join("index"), &ix)?;
        self.last_save = Instant::now();
        self.placed_unsaved = 0;
        Ok(())
    }

    /// Before a batch, save what the earlier ones did if it is worth it ([`SAVE_EVERY`],
    /// [`SAVE_BYTES`]); before rather than after a batch, so one followed by `Commit` saves
    /// once.
    fn maybe_save(&mut self) -> Result<()> {
        let due = self.last_save.elapsed() >= SAVE_EVERY || self.placed_unsaved >= self.save_bytes;
        if self.uncommitted && due {
            self.save(None)?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<Hash> {
        let clock = Instant::now();
        let token = manifest::token(self.records.iter().map(|(p, r)| (p, &r.rec.entry.kind)));
        let hashed = clock.elapsed();
        self.save(Some(token))?;
        log::debug!(
            "sink: commit: token of {} entries in {hashed:.0?}, index saved in {:.0?}",
            self.records.len(),
            clock.elapsed() - hashed
        );
        self.token = Some(token);
        self.prune_aside();
        // Leftovers of interrupted runs that this sync did not need.
        if let Ok(rd) = fs::read_dir(&self.staging_dir) {
            for de in rd.flatten() {
                if !self.trash.holds(&de.path()) {
                    let _ = fs::remove_file(de.path());
                }
            }
        }
        Ok(token)
    }
}

/// Long files built ahead of their `Upsert` ([`ToSink::Prefill`]): while the source still
/// reads a changed checkpoint, the chunks its recorded version holds are copied into a staged
/// file by a thread of their own. The `Upsert` keeps only what was written exactly where its
/// chunk list has it, and only if the recorded version is still the one copied from; what is
/// never claimed is removed when the session ends.
#[derive(Default)]
struct Prefills {
    /// Each file's size and chunk lists told, by offset (the last told for an offset counts).
    lists: HashMap<String, (u64, BTreeMap<u64, Vec<ChunkSpec>>)>,
    /// Chunks listed in all ([`MAX_PREFILL_CHUNKS`]).
    listed: usize,
    files: HashMap<String, Prefilled>,
    /// Paths whose prefill was dropped (told twice over the same bytes).
    ignored: HashSet<String>,
    /// The chunks [`FromSink::PrefillNeed`]s asked for and not yet received, and where each
    /// goes: (path, offset, length).
    wanted: HashMap<Hash, Vec<(Arc<str>, u64, u32)>>,
    jobs: Option<std::sync::mpsc::Sender<PrefillJob>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

struct Prefilled {
    tmp: PathBuf,
    file: File,
    /// The length of the file left by an interrupted session, if any: chunks in it that
    /// verify are not asked for again.
    leftover: u64,
    /// The recorded version copied from, open, and the `stat` it was trusted at (none: a
    /// prefill of what arrives only).
    stat: Option<StatKey>,
    src: Option<Arc<File>>,
    /// Where each chunk of the recorded version starts.
    old: HashMap<Hash, u64>,
    /// The segments told (start -> end), which never overlap.
    segments: BTreeMap<u64, u64>,
    /// What the copies queued are to write: chunk start -> (hash, length).
    planned: HashMap<u64, (Hash, u32)>,
    /// What they wrote, and how many are still queued.
    copies: Arc<PrefillCopies>,
}

impl Prefilled {
    /// Whether the file an interrupted session left holds chunk `c` at `off`.
    fn holds(&self, off: u64, c: &ChunkSpec) -> bool {
        off.saturating_add(c.len.into()) <= self.leftover
            && holds_at(&self.file, off, c, &mut Vec::new()).unwrap_or(false)
    }

    /// Close and remove the file (copies still queued write to it unlinked).
    fn remove(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.tmp);
    }
}

/// What the prefill of one file holds (chunk start -> what is there), and how many of its
/// copy jobs are still to run: a batch waits for its own files' copies only.
#[derive(Default)]
struct PrefillCopies {
    written: Mutex<HashMap<u64, Written>>,
    queued: Mutex<usize>,
    idle: std::sync::Condvar,
}

/// A chunk a prefill holds, and whether the source sent it ([`Sink::prefill_data`], or to an
/// interrupted session) rather than the prefill thread copying it here.
#[derive(Clone, Copy)]
struct Written {
    hash: Hash,
    len: u32,
    received: bool,
}

/// The bytes the prefill's copies saved by holding chunk `want` (hash, length) at `off`: its
/// length if copied here, 0 if the source sent it; `None` if it is not there.
fn prefilled_at(written: &HashMap<u64, Written>, off: u64, want: (Hash, u32)) -> Option<u64> {
    let w = written.get(&off).filter(|w| (w.hash, w.len) == want)?;
    Some(if w.received { 0 } else { u64::from(w.len) })
}

impl PrefillCopies {
    /// Chunk `c` is at `off`, sent by the source (to this session or an interrupted one).
    fn arrived(&self, off: u64, c: &ChunkSpec) {
        let w = Written {
            hash: c.hash,
            len: c.len,
            received: true,
        };
        self.written.lock().expect("prefill lock").insert(off, w);
    }

    /// Whether it holds a chunk the source sent.
    fn any_received(&self) -> bool {
        let written = self.written.lock().expect("prefill lock");
        written.values().any(|w| w.received)
    }

    fn queued(&self, change: isize) {
        let mut q = self.queued.lock().expect("prefill lock");
        *q = q.saturating_add_signed(change);
        if *q == 0 {
            self.idle.notify_all();
        }
    }

    /// Wait until every job queued for the file ran.
    fn wait(&self) {
        let mut q = self.queued.lock().expect("prefill lock");
        while *q > 0 {
            q = self.idle.wait(q).expect("prefill lock");
        }
    }
}

/// Marks a prefill job done when dropped.
struct JobDone<'a>(&'a PrefillCopies);

impl Drop for JobDone<'_> {
    fn drop(&mut self) {
        self.0.queued(-1);
    }
}

/// Chunks contiguous in both files, copied in one call.
struct PrefillRun {
    src_off: u64,
    dst_off: u64,
    len: u64,
    chunks: Vec<(u64, Hash, u32)>,
}

struct PrefillJob {
    src: Arc<File>,
    dst: File,
    runs: Vec<PrefillRun>,
    copies: Arc<PrefillCopies>,
}

/// A prefill claimed by its file's `Upsert`, its copies maybe still running.
struct Claimed {
    tmp: PathBuf,
    file: File,
    planned: HashMap<u64, (Hash, u32)>,
    copies: Arc<PrefillCopies>,
}

/// The chunks of a staged file its prefill was to write: checked once its copies are done
/// ([`Sink::wait_for_prefills`]).
struct PrefillCheck {
    copies: Arc<PrefillCopies>,
    offsets: Vec<u64>,
}

impl Prefills {
    /// Keep the chunks a prefill lists at `offset` of `path`, a file of `size` bytes.
    fn list(&mut self, path: &str, size: u64, offset: u64, chunks: &[ChunkSpec]) -> Result<()> {
        self.listed += chunks.len();
        if self.listed > MAX_PREFILL_CHUNKS {
            return Err(Error::Protocol(format!(
                "prefills list more than {MAX_PREFILL_CHUNKS} chunks"
            )));
        }
        let (sized, segs) = self
            .lists
            .entry(path.to_string())
            .or_insert_with(|| (size, BTreeMap::new()));
        if *sized != size {
            return Err(Error::Protocol(format!(
                "{path}: prefills for two sizes of the file"
            )));
        }
        segs.insert(offset, chunks.to_vec());
        Ok(())
    }

    /// `ops` with each [`Op::UpsertPrefilled`] an `Upsert` of the chunks its prefills listed,
    /// which must cover the file end to end (its digest is checked as any list's).
    fn expand(&mut self, ops: Vec<Op>) -> Result<Vec<Op>> {
        ops.into_iter()
            .map(|op| match op {
                Op::UpsertPrefilled { entry } => {
                    let chunks = self
                        .lists
                        .remove(&entry.path)
                        .and_then(|(size, segs)| chunker::joined(size, &segs));
                    let chunks = chunks.ok_or_else(|| {
                        Error::Protocol(format!(
                            "{}: its prefills do not cover the file",
                            entry.path
                        ))
                    })?;
                    Ok(Op::Upsert {
                        entry,
                        chunks: Some(chunks),
                    })
                }
                op => Ok(op),
            })
            .collect()
    }

    /// Queue `job` for the prefill thread, started by the first.
    fn send(&mut self, job: PrefillJob) {
        if self.jobs.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<PrefillJob>();
            let worker = std::thread::Builder::new()
                .name("prefill".into())
                .spawn(move || prefill_copies(rx));
            match worker {
                Ok(w) => {
                    self.worker = Some(w);
                    self.jobs = Some(tx);
                }
                Err(e) => {
                    log::debug!("sink: no prefill thread: {e}");
                    return;
                }
            }
        }
        if let Some(tx) = &self.jobs {
            let copies = job.copies.clone();
            copies.queued(1);
            if tx.send(job).is_err() {
                copies.queued(-1);
            }
        }
    }

    /// Wait for every copy queued, and end the thread.
    fn finish(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    /// The prefill of `path` for its `Upsert` (its copies may still run: what they wrote is
    /// checked after the batch's own copies); `None` (and the file removed) if there is none
    /// or its recorded version changed since.
    fn take(&mut self, path: &str, root: &Root) -> Option<Claimed> {
        let p = self.files.remove(path)?;
        // What it copied came from the recorded version: only good if that is still there.
        // One with nothing copied holds only chunks that arrived and verified.
        let unchanged = p.stat.is_none_or(|stat| {
            root.existing(path)
                .ok()
                .flatten()
                .and_then(|abs| fs::symlink_metadata(abs).ok())
                .is_some_and(|m| m.is_file() && stat_of(&m) == stat)
        });
        if !unchanged {
            log::debug!("sink: {path} changed while prefilled; building it anew");
            p.remove();
            return None;
        }
        Some(Claimed {
            tmp: p.tmp,
            file: p.file,
            planned: p.planned,
            copies: p.copies,
        })
    }

    /// Remove the prefills no `Upsert` claimed; with `keep_received`, not those holding
    /// chunks the source sent.
    fn discard(&mut self, keep_received: bool) {
        self.finish();
        for (path, p) in self.files.drain() {
            if keep_received && p.copies.any_received() {
                log::debug!("sink: the prefill of {path} is kept for the next sync");
                continue;
            }
            p.remove();
        }
    }
}

/// The chunks of `staged` files their prefills were counted on for and did not write (staged
/// file, offset, hash), and the bytes they did write; once their copies are done.
fn prefill_misses(staged: &[Staged]) -> (Vec<(usize, u64, Hash)>, u64) {
    let (mut missed, mut copied) = (Vec::new(), 0);
    for (idx, s) in staged.iter().enumerate() {
        let Some(check) = &s.prefill else {
            continue;
        };
        let written = check.copies.written.lock().expect("prefill lock");
        for &off in &check.offsets {
            let Ok(i) = s.starts.binary_search(&off) else {
                continue;
            };
            let c = &s.chunks[i];
            match prefilled_at(&written, off, (c.hash, c.len)) {
                Some(bytes) => copied += bytes,
                None => missed.push((idx, off, c.hash)),
            }
        }
    }
    (missed, copied)
}

/// The prefill thread: run the queued copies, recording what each wrote. After an error (a
/// full disk, say) the rest is skipped: the `Upsert`s copy or fetch it and report the error.
fn prefill_copies(jobs: std::sync::mpsc::Receiver<PrefillJob>) {
    let mut clock = None;
    let mut bytes = 0u64;
    let mut failed = false;
    for job in jobs {
        let PrefillJob {
            src,
            dst,
            runs,
            copies,
        } = job;
        // Counted as done however it ends (a panic too), so no one waits for it forever.
        let _done = JobDone(&copies);
        let clock = clock.get_or_insert_with(Instant::now);
        for run in runs {
            if failed {
                break;
            }
            match copy_range(&src, run.src_off, &dst, run.dst_off, run.len) {
                Ok(true) => {
                    bytes += run.len;
                    let mut w = copies.written.lock().expect("prefill lock");
                    w.extend(run.chunks.into_iter().map(|(o, hash, len)| {
                        let copied = Written {
                            hash,
                            len,
                            received: false,
                        };
                        (o, copied)
                    }));
                }
                Ok(false) => {}
                Err(e) => {
                    log::debug!("sink: prefill stopped: {e}");
                    failed = true;
                }
            }
        }
        log::trace!("sink: prefilled {bytes} bytes in {:.0?}", clock.elapsed());
    }
    if let Some(c) = clock {
        log::debug!("sink: {bytes} bytes prefilled in {:.0?}", c.elapsed());
    }
}

/// What [`copy_local`] did.
#[derive(Default)]
struct Copied {
    bytes: u64,
    /// Copies whose source changed: to be requested instead.
    failed: Vec<Copy>,
    /// The sources that changed, with the `stat` they were trusted at.
    stale: Vec<(String, StatKey)>,
}

/// Copy chunks the sink already holds into the staged files, merging runs that are contiguous
/// on both sides into one `copy_file_range`. Only I/O: it runs on a thread of its own while
/// the missing chunks arrive. A source whose `stat` is no longer the one the copy was planned
/// with is not read: its copies are returned to be requested instead.
fn copy_local(
    root: &Root,
    staged: &[Staged],
    mut copies: Vec<Copy>,
    progress: &dyn Progress,
) -> Result<Copied> {
    copies.sort_by_key(|c| (c.idx, c.off));
    let mut sources: HashMap<(Arc<str>, StatKey), Option<File>> = HashMap::new();
    let mut out = Copied::default();
    let mut i = 0;
    while i < copies.len() {
        let first = &copies[i];
        let mut j = i + 1;
        let mut len = first.src.len as u64;
        while j < copies.len()
            && copies[j].idx == first.idx
            && copies[j].src.path == first.src.path
            && copies[j].stat == first.stat
            && copies[j].off == first.off + len
            && copies[j].src.offset == first.src.offset + len
        {
            len += copies[j].src.len as u64;
            j += 1;
        }
        let key = (first.src.path.clone(), first.stat);
        let src = sources
            .entry(key)
            .or_insert_with(|| open_unchanged(root, &first.src.path, first.stat));
        let dst = &staged[first.idx];
        let ok = match src {
            Some(f) => copy_range(f, first.src.offset, &dst.file, first.off, len)
                .ctx("copy into", &dst.dest)?,
            None => false,
        };
        if ok {
            out.bytes += len;
            progress.advance(len);
        } else {
            out.failed.extend(copies[i..j].iter().cloned());
        }
        i = j;
    }
    out.stale = sources
        .into_iter()
        .filter(|(_, f)| f.is_none())
        .map(|((path, stat), _)| (path.to_string(), stat))
        .collect();
    Ok(out)
}

/// The file at `path`, opened, if it is still a regular file of `stat` (a chunk source
/// trusted at that `stat`).
fn open_unchanged(root: &Root, path: &str, stat: StatKey) -> Option<File> {
    let abs = root.existing(path).ok().flatten()?;
    let f = File::open(abs).ok()?;
    let m = f.metadata().ok()?;
    (m.is_file() && stat_of(&m) == stat).then_some(f)
}

/// Files to remove, by a thread of their own: freeing a large file's blocks takes a while
/// (a third of a second per GB on ext4), which need not hold up the session. The thread is
/// joined when the sink is dropped.
#[derive(Default)]
struct Trash {
    queue: Option<std::sync::mpsc::Sender<PathBuf>>,
    worker: Option<std::thread::JoinHandle<()>>,
    paths: HashSet<PathBuf>,
    /// A process that removes them instead (see [`serve_with_remover`]).
    remover: Option<File>,
}

impl Trash {
    fn removing_with(remover: Option<File>) -> Trash {
        let mut trash = Trash::default();
        trash.remover = remover;
        trash
    }

    fn discard(&mut self, path: PathBuf) {
        self.paths.insert(path.clone());
        if let Some(remover) = &mut self.remover {
            use std::os::unix::ffi::OsStrExt;
            let mut line = path.as_os_str().as_bytes().to_vec();
            line.push(0);
            if remover.write_all(&line).is_ok() {
                return;
            }
            log::debug!("the remover is gone; removing replaced files here");
            self.remover = None;
        }
        if self.queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            self.worker = Some(std::thread::spawn(move || {
                for p in rx {
                    if let Err(e) = fs::remove_file(&p) {
                        log::debug!("cannot remove {}: {e}", p.display());
                    }
                }
            }));
            self.queue = Some(tx);
        }
        if let Some(Err(e)) = self.queue.as_ref().map(|q| q.send(path)) {
            let _ = fs::remove_file(e.0);
        }
    }

    /// Whether `path` was discarded here (and is removed by the worker).
    fn holds(&self, path: &Path) -> bool {
        self.paths.contains(path)
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Rename `from` over `to` atomically swapping the two (`RENAME_EXCHANGE`), so `from` then
/// holds what `to` held. False (nothing done) where the filesystem or OS cannot.
fn exchange(from: &Path, to: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let (Ok(a), Ok(b)) = (
            CString::new(from.as_os_str().as_bytes()),
            CString::new(to.as_os_str().as_bytes()),
        ) else {
            return false;
        };
        // SAFETY: two NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (from, to);
        false
    }
}

/// Copy `len` bytes between files at the given offsets, in the kernel where it can
/// (`copy_file_range`), else through a buffer. `Ok(false)` when the source is shorter than
/// expected (it changed).
fn copy_range(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    len: u64,
) -> std::io::Result<bool> {
    let mut left = len;
    while left > 0 {
        let mut so = src_off as libc::loff_t;
        let mut d = dst_off as libc::loff_t;
        // SAFETY: valid descriptors and offset pointers for the duration of the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut so,
                dst.as_raw_fd(),
                &mut d,
                left as usize,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EXDEV)
                | Some(libc::ENOSYS)
                | Some(libc::EINVAL)
                | Some(libc::EOPNOTSUPP) => return copy_buffered(src, src_off, dst, dst_off, left),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(false);
        }
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    Ok(true)
}

fn copy_buffered(
    src: &File,
    mut src_off: u64,
    dst: &File,
    mut dst_off: u64,
    mut left: u64,
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; (1 << 20).min(left as usize)];
    while left > 0 {
        let n = buf.len().min(left as usize);
        match src.read_exact_at(&mut buf[..n], src_off) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        dst.write_all_at(&buf[..n], dst_off)?;
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    Ok(true)
}

/// Decode a received chunk, verify it against its hash, and only then write it where it
/// goes (checking it has the length the file's chunk list says there). Returns its length.
fn store(
    staged: &[Staged],
    d: DataFrame,
    targets: Vec<(usize, u64)>,
    progress: &dyn Progress,
) -> Result<u64> {
    let hash = d.hash;
    let raw = decode(d)?.ok_or_else(|| {
        Error::Protocol(format!("chunk {} does not match its hash", hex(&hash[..8])))
    })?;
    for (idx, off) in targets {
        let s = &staged[idx];
        if s.len_at(off) != Some(raw.len() as u32) {
            return Err(Error::Protocol(format!(
                "chunk {} has the wrong length for {}",
                hex(&hash[..8]),
                s.path
            )));
        }
        s.file.write_all_at(&raw, off).ctx("write", &s.dest)?;
        progress.advance(raw.len() as u64);
    }
    Ok(raw.len() as u64)
}

/// The chunk a data frame carries, decompressed; `None` if it is not the chunk its hash
/// names.
fn decode(d: DataFrame) -> Result<Option<Vec<u8>>> {
    let raw = match d.codec {
        Codec::Raw if d.payload.len() == d.raw_len as usize => d.payload,
        codec => compress::decompress(codec, &d.payload, d.raw_len)?,
    };
    Ok((chunker::hash(&raw) == d.hash).then_some(raw))
}

/// Whether `f` holds chunk `c` at `off` (read into `buf`).
fn holds_at(f: &File, off: u64, c: &ChunkSpec, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.resize(c.len as usize, 0);
    f.read_exact_at(buf, off)?;
    Ok(chunker::hash(buf) == c.hash)
}

/// A new file in staging, private to mtr (mode 0600) until it is placed.
fn create_staged(tmp: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .ctx("create", tmp)
}

fn still_valid(root: &Root, path: &str, rec: &SinkRecord) -> bool {
    match root.existing(path) {
        Ok(Some(abs)) => matches_record(&abs, rec),
        _ => false,
    }
}

/// The directory of a relative path ("" at the root).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Whether entry `name` of directory `dir` is what `rec` recorded.
fn matches_at(dir: &DirFd, name: &str, rec: &SinkRecord) -> bool {
    dir.lstat(name)
        .is_ok_and(|found| is_recorded(found, || dir.read_link(name).ok(), rec))
}

/// Whether `abs` (reached without symlinks) is what `rec` recorded.
fn matches_record(abs: &Path, rec: &SinkRecord) -> bool {
    fs::symlink_metadata(abs)
        .is_ok_and(|m| is_recorded(Found::of(&m), || fs::read_link(abs).ok(), rec))
}

/// Whether what a path holds (`found`, and its target if a symlink) is what `rec` recorded.
fn is_recorded(found: Found, target: impl FnOnce() -> Option<PathBuf>, rec: &SinkRecord) -> bool {
    match (&rec.entry.kind, found) {
        (EntryKind::File { .. }, Found::File(stat)) => stat == rec.stat,
        (EntryKind::Symlink { target: t }, Found::Symlink) => {
            target().as_deref() == Some(Path::new(t))
        }
        (EntryKind::Dir, Found::Dir) => true,
        _ => false,
    }
}

fn set_meta(abs: &Path, mode: u32, mtime_ns: i64) -> Result<()> {
    let f = File::open(abs).ctx("open", abs)?;
    set_meta_fd(&f, abs, mode, mtime_ns)
}

fn set_meta_fd(f: &File, path: &Path, mode: u32, mtime_ns: i64) -> Result<()> {
    f.set_permissions(fs::Permissions::from_mode(mode & 0o777))
        .ctx("chmod", path)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    ];
    // SAFETY: valid descriptor and a two-element timespec array.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(Error::io(
            "set mtime",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// This process's peak resident memory, in KiB.
pub fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        ru.ru_maxrss as u64
    } else {
        0
    }
}

/// Text from the peer, safe to show on a terminal: control characters escaped, at most 1000
/// characters.
fn printable(text: &str) -> String {
    let text: String = text.chars().take(1000).collect();
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChunkSpec, Entry, EntryKind, SinkRecord, StatKey};

    /// A prefill copy that fails (here its source is shorter than planned) is a miss, asked
    /// for again after the batch's copies; what the prefill wrote counts as copied, and the
    /// job counts as done.
    #[test]
    fn a_prefill_copy_that_fails_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        fs::write(&old, vec![7u8; 100_000]).unwrap();
        let tmp = dir.path().join("staged");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .unwrap();
        let (h1, h2) = ([1u8; 32], [2u8; 32]);
        let copies: Arc<PrefillCopies> = Arc::default();
        copies.queued(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let run = |src_off, dst_off, hash| PrefillRun {
            src_off,
            dst_off,
            len: 50_000,
            chunks: vec![(dst_off, hash, 50_000)],
        };
        tx.send(PrefillJob {
            src: Arc::new(File::open(&old).unwrap()),
            dst: file.try_clone().unwrap(),
            runs: vec![run(0, 0, h1), run(90_000, 50_000, h2)],
            copies: copies.clone(),
        })
        .unwrap();
        drop(tx);
        prefill_copies(rx);
        assert_eq!(*copies.queued.lock().unwrap(), 0, "the job is counted done");
        let staged = Staged {
            path: "f".into(),
            dest: tmp.clone(),
            entry: EntryKind::File {
                size: 100_000,
                mode: 0o644,
                mtime_ns: 0,
                digest: [0; 32],
            },
            chunks: vec![
                ChunkSpec {
                    hash: h1,
                    len: 50_000,
                },
                ChunkSpec {
                    hash: h2,
                    len: 50_000,
                },
            ],
            starts: vec![0, 50_000],
            tmp: tmp.clone(),
            file,
            prefill: Some(PrefillCheck {
                copies,
                offsets: vec![0, 50_000],
            }),
        };
        let (missed, copied) = prefill_misses(&[staged]);
        assert_eq!(missed, vec![(0, 50_000, h2)]);
        assert_eq!(copied, 50_000);
        assert_eq!(fs::read(&tmp).unwrap()[..50_000], [7u8; 50_000]);
    }

    /// A batch that placed enough bytes has the index saved before the next batch: a killed
    /// agent (no chance to save) loses at most the batch it was in.
    #[test]
    fn files_placed_are_saved_before_the_next_batch() {
        use crate::chunker::{self, Chunker};
        use crate::compress::Codec;
        use std::os::unix::net::UnixStream;

        let root = tempfile::tempdir().unwrap();
        let mut sink = Sink::open(serve_config(root.path().to_str().unwrap()).unwrap()).unwrap();
        sink.save_bytes = 1000;
        let (a, b) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            let mut r = FrameReader::new(b.try_clone().unwrap());
            let mut w = FrameWriter::new(b);
            sink.run(&mut r, &mut w, &scan::NoProgress)
        });
        let mut r = FrameReader::new(a.try_clone().unwrap());
        let mut w = FrameWriter::new(a);
        let upsert = |path: &str, data: &[u8]| {
            let chunks = chunker::specs(&Chunker::default().chunk(data));
            let kind = EntryKind::File {
                size: data.len() as u64,
                mode: 0o644,
                mtime_ns: 0,
                digest: chunker::file_digest(&chunks),
            };
            let entry = Entry {
                path: path.into(),
                kind,
            };
            (
                Op::Upsert {
                    entry,
                    chunks: Some(chunks.clone()),
                },
                chunks,
            )
        };
        let recorded = || -> Vec<String> {
            let ix: SinkIndex =
                index::load(&root.path().join(".mtr-sync/index")).unwrap_or_default();
            ix.records.into_iter().map(|r| r.entry.path).collect()
        };
        let (first, chunks) = upsert("a.bin", &[7u8; 4000]);
        w.msg(&ToSink::Ops { ops: vec![first] }).unwrap();
        w.flush().unwrap();
        let FromSink::Need { hashes } = r.msg::<FromSink>().unwrap() else {
            panic!("expected Need")
        };
        for c in chunks.iter().filter(|c| hashes.contains(&c.hash)) {
            w.data(&c.hash, Codec::Raw, c.len, &vec![7u8; c.len as usize])
                .unwrap();
        }
        w.msg(&ToSink::DataEnd).unwrap();
        w.flush().unwrap();
        assert!(matches!(r.msg::<FromSink>().unwrap(), FromSink::BatchDone));
        assert!(recorded().is_empty(), "saved before it was due");
        let (second, _) = upsert("b.bin", b"");
        w.msg(&ToSink::Ops { ops: vec![second] }).unwrap();
        w.flush().unwrap();
        // The sink answers the second batch after saving the first.
        assert!(matches!(
            r.msg::<FromSink>().unwrap(),
            FromSink::Need { .. }
        ));
        assert_eq!(recorded(), ["a.bin"]);
        drop((r, w));
        let _ = served.join().unwrap();
    }

    /// The index is saved from the records in place: its bytes must be a `SinkIndex`'s.
    #[test]
    fn index_saved_in_place_encodes_as_a_sink_index() {
        let rec = |i: u8| SinkRecord {
            entry: Entry {
                path: format!("dir/f{i}"),
                kind: EntryKind::File {
                    size: 7 * i as u64,
                    mode: 0o644,
                    mtime_ns: -5,
                    digest: [i; 32],
                },
            },
            chunks: vec![
                ChunkSpec {
                    hash: [i; 32],
                    len: 7,
                };
                i as usize
            ],
            stat: StatKey {
                size: i as u64,
                mtime_ns: 1,
                ctime_ns: 2,
                ino: 3,
            },
        };
        // Record 4's list is kept aside: saved empty, read back as aside.
        let records: BTreeMap<String, Rec> = (0..5)
            .map(|i| {
                let r = rec(i);
                let dirty = i % 2 == 0;
                let aside = i == 4;
                (
                    r.entry.path.clone(),
                    Rec {
                        rec: r,
                        dirty,
                        aside,
                    },
                )
            })
            .collect();
        let saved = |i: u8| {
            let mut r = rec(i);
            if i == 4 {
                r.chunks.clear();
            }
            r
        };
        for token in [None, Some([9; 32])] {
            let whole = SinkIndex {
                protocol: PROTOCOL_VERSION,
                token,
                records: (0..5).map(saved).collect(),
            };
            assert_eq!(
                whole
                    .records
                    .iter()
                    .map(|r| Rec::new(r.clone()).aside)
                    .collect::<Vec<_>>(),
                [false, false, false, false, true]
            );
            let cfg = bincode::config::standard();
            let out = IndexOut {
                token,
                records: &records,
            };
            assert_eq!(
                bincode::encode_to_vec(&out, cfg).unwrap(),
                bincode::serde::encode_to_vec(&whole, cfg).unwrap()
            );
        }
    }
}
