//! The sink role of a sync session: it receives a tree into a root directory.
//!
//! Invariants:
//! - every path from the peer is checked ([`crate::paths`]); nothing is written through a
//!   symlink or outside the root;
//! - a file is built in `<root>/.mtr-sync/staging/` and renamed into place: a user-visible file
//!   is always its old or its new version, and an interrupted build is reused (verified chunk
//!   by chunk) by the next run;
//! - chunks already on the sink are copied locally (`copy_file_range`) from the files the
//!   sink's index says hold them, trusted only while their `stat` matches the index; only
//!   missing chunks are asked for, and every received chunk is verified against its hash;
//! - only paths the sink wrote (its index) are ever deleted; files created on the remote side
//!   survive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::chunker;
use crate::codec::{Frame, FrameReader, FrameWriter, MAX_CHUNK};
use crate::compress;
use crate::error::{Error, IoContext, Result};
use crate::index;
use crate::manifest;
use crate::paths::{check_relative, Root};
use crate::scan::stat_of;
use crate::wire::{
    ChunkSpec, Entry, EntryKind, FromSink, Hash, Op, SinkIndex, SinkRecord, SinkStats, StatKey,
    ToSink, PROTOCOL_VERSION,
};

/// Entries per `IndexBatch` message.
const INDEX_BATCH: usize = 4096;
/// How often the index is saved during a long sync, so an interruption loses little.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How long to wait for another sync of the same root to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Serve one session on `input`/`output` as the sink. `version` is this program's version;
/// a peer of another version is told ours and the session ends.
pub fn serve<R: Read, W: Write>(input: R, output: W, version: &str) -> Result<()> {
    let mut r = FrameReader::new(input);
    let mut w = FrameWriter::new(output);
    let result = session(&mut r, &mut w, version);
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
) -> Result<()> {
    let (root, peer_protocol, peer_version) = match r.msg::<ToSink>()? {
        ToSink::Hello {
            protocol,
            version,
            root,
            ..
        } => (root, protocol, version),
        other => return Err(Error::Protocol(format!("expected Hello, got {other:?}"))),
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
        return Ok(());
    }
    let mut sink = Sink::open(&root)?;
    let dirty = sink.validate();
    w.msg(&FromSink::HelloAck {
        protocol: PROTOCOL_VERSION,
        version: version.to_string(),
        root: sink.root.path().display().to_string(),
        token: sink.token,
        dirty,
    })?;
    w.flush()?;
    loop {
        let msg = match r.frame::<ToSink>()? {
            None => return Ok(()),
            Some(Frame::Msg(m)) => m,
            Some(Frame::Data(_)) => {
                return Err(Error::Protocol("data frame outside a batch".into()))
            }
        };
        match msg {
            ToSink::ListIndex => {
                let entries: Vec<Entry> =
                    sink.records.values().map(|r| r.rec.entry.clone()).collect();
                for batch in entries.chunks(INDEX_BATCH) {
                    w.msg(&FromSink::IndexBatch {
                        entries: batch.to_vec(),
                    })?;
                }
                w.msg(&FromSink::IndexEnd)?;
                w.flush()?;
            }
            ToSink::Ops { ops } => {
                sink.token = None;
                sink.batch(ops, r, w)?;
                w.msg(&FromSink::BatchDone)?;
                w.flush()?;
                sink.maybe_save()?;
            }
            ToSink::Commit => {
                let token = sink.commit()?;
                sink.stats.peak_rss_kib = peak_rss_kib();
                w.msg(&FromSink::Committed {
                    token,
                    stats: sink.stats.clone(),
                })?;
                w.flush()?;
            }
            ToSink::Bye => return Ok(()),
            other => return Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

struct Rec {
    rec: SinkRecord,
    /// Changed on the sink's side since it was recorded: not a trusted chunk source.
    dirty: bool,
}

#[derive(Clone)]
struct Loc {
    path: String,
    offset: u64,
    len: u32,
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
}

struct Staged {
    path: String,
    entry: EntryKind,
    chunks: Vec<ChunkSpec>,
    tmp: PathBuf,
    file: File,
}

/// The receiving side's state for one root.
struct Sink {
    root: Root,
    records: BTreeMap<String, Rec>,
    locs: HashMap<Hash, Loc>,
    token: Option<Hash>,
    stats: SinkStats,
    last_save: Instant,
    _lock: File,
}

fn expand_root(root: &str) -> Result<PathBuf> {
    let p = if root == "~" || root.starts_with("~/") {
        let home = std::env::var_os("HOME")
            .ok_or_else(|| Error::Conflict(format!("cannot expand {root}: HOME is not set")))?;
        PathBuf::from(home).join(root.trim_start_matches('~').trim_start_matches('/'))
    } else {
        PathBuf::from(root)
    };
    if !p.is_absolute() {
        return Err(Error::Conflict(format!(
            "remote_dir {root:?} must be absolute or start with ~/"
        )));
    }
    Ok(p)
}

fn lock(path: &Path) -> Result<File> {
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
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io("lock", path, e));
        }
        if start.elapsed() > LOCK_TIMEOUT {
            return Err(Error::Conflict(format!(
                "another mtr sync to {} has held its lock for {}s; try again later",
                path.parent()
                    .and_then(|p| p.parent())
                    .unwrap_or(path)
                    .display(),
                LOCK_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Sink {
    fn open(root: &str) -> Result<Sink> {
        let path = expand_root(root)?;
        fs::create_dir_all(&path).ctx("create remote_dir", &path)?;
        let path = fs::canonicalize(&path).ctx("resolve", &path)?;
        let root = Root::new(path);
        let state = root.state_dir();
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
        fs::create_dir_all(state.join("staging")).ctx("create", state.join("staging"))?;
        let lock = lock(&state.join("lock"))?;
        let ix: SinkIndex = index::load(&state.join("index")).unwrap_or_default();
        let (token, records) = if ix.protocol == PROTOCOL_VERSION {
            (ix.token, ix.records)
        } else {
            (None, Vec::new())
        };
        let records = records
            .into_iter()
            .filter(|r| check_relative(&r.entry.path).is_ok())
            .map(|r| {
                (
                    r.entry.path.clone(),
                    Rec {
                        rec: r,
                        dirty: false,
                    },
                )
            })
            .collect();
        Ok(Sink {
            root,
            records,
            locs: HashMap::new(),
            token,
            stats: SinkStats::default(),
            last_save: Instant::now(),
            _lock: lock,
        })
    }

    /// Check every recorded path against the filesystem; returns the ones that changed.
    fn validate(&mut self) -> Vec<String> {
        let root = self.root.clone();
        let changed: Vec<String> = self
            .records
            .par_iter()
            .filter(|(path, r)| !still_valid(&root, path, &r.rec))
            .map(|(p, _)| p.clone())
            .collect();
        for p in &changed {
            if let Some(r) = self.records.get_mut(p) {
                r.dirty = true;
            }
        }
        for (path, r) in &self.records {
            if r.dirty {
                continue;
            }
            let mut off = 0;
            for c in &r.rec.chunks {
                self.locs.entry(c.hash).or_insert_with(|| Loc {
                    path: path.clone(),
                    offset: off,
                    len: c.len,
                });
                off += c.len as u64;
            }
        }
        changed
    }

    fn forget_locs(&mut self, path: &str) {
        if let Some(r) = self.records.get(path) {
            for c in &r.rec.chunks {
                if self.locs.get(&c.hash).is_some_and(|l| l.path == path) {
                    self.locs.remove(&c.hash);
                }
            }
        }
    }

    fn record(&mut self, entry: Entry, chunks: Vec<ChunkSpec>, stat: StatKey) {
        let path = entry.path.clone();
        self.forget_locs(&path);
        let mut off = 0;
        for c in &chunks {
            self.locs.entry(c.hash).or_insert_with(|| Loc {
                path: path.clone(),
                offset: off,
                len: c.len,
            });
            off += c.len as u64;
        }
        self.records.insert(
            path,
            Rec {
                rec: SinkRecord {
                    entry,
                    chunks,
                    stat,
                },
                dirty: false,
            },
        );
    }

    fn unrecord(&mut self, path: &str) {
        self.forget_locs(path);
        self.records.remove(path);
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

    fn batch<R: Read, W: Write>(
        &mut self,
        ops: Vec<Op>,
        r: &mut FrameReader<R>,
        w: &mut FrameWriter<W>,
    ) -> Result<()> {
        let mut staged: Vec<Staged> = Vec::new();
        let mut need = Need::default();
        let mut copies: Vec<Copy> = Vec::new();
        for op in ops {
            match op {
                Op::Delete { path } => self.delete(&path)?,
                Op::Forget { path } => {
                    check_relative(&path)?;
                    self.unrecord(&path);
                }
                Op::Upsert { entry, chunks } => {
                    check_relative(&entry.path)?;
                    match entry.kind.clone() {
                        EntryKind::Dir => self.upsert_dir(entry)?,
                        EntryKind::Symlink { target } => self.upsert_symlink(entry, &target)?,
                        EntryKind::File { .. } => {
                            if let Some((s, filled)) = self.upsert_file(entry, chunks)? {
                                let idx = staged.len();
                                let mut off = 0;
                                for c in &s.chunks {
                                    if !filled.contains(&off) {
                                        match self.locs.get(&c.hash) {
                                            Some(loc) => copies.push(Copy {
                                                idx,
                                                off,
                                                hash: c.hash,
                                                src: loc.clone(),
                                            }),
                                            None => need.add(c.hash, idx, off),
                                        }
                                    }
                                    off += c.len as u64;
                                }
                                staged.push(s);
                            }
                        }
                    }
                }
            }
        }
        // Ask for what is missing first, so the source reads and sends while we copy.
        w.msg(&FromSink::Need {
            hashes: need.order.clone(),
        })?;
        w.flush()?;
        let failed = self.copy_local(&staged, copies)?;
        self.receive(&staged, &mut need.waiting, r)?;
        if !failed.is_empty() {
            // A copy source changed under us: those chunks travel after all.
            let mut again = Need::default();
            for c in failed {
                again.add(c.hash, c.idx, c.off);
            }
            w.msg(&FromSink::Need {
                hashes: again.order.clone(),
            })?;
            w.flush()?;
            self.receive(&staged, &mut again.waiting, r)?;
        }
        for s in staged {
            self.place(s)?;
        }
        Ok(())
    }

    /// Copy chunks the sink already holds into the staged files, merging runs that are
    /// contiguous on both sides into one `copy_file_range`. A source whose `stat` no longer
    /// matches the index is not trusted: its copies are returned to be requested instead.
    fn copy_local(&mut self, staged: &[Staged], mut copies: Vec<Copy>) -> Result<Vec<Copy>> {
        copies.sort_by_key(|c| (c.idx, c.off));
        let mut sources: HashMap<String, Option<File>> = HashMap::new();
        let mut failed = Vec::new();
        let mut i = 0;
        while i < copies.len() {
            let first = &copies[i];
            let mut j = i + 1;
            let mut len = first.src.len as u64;
            while j < copies.len()
                && copies[j].idx == first.idx
                && copies[j].src.path == first.src.path
                && copies[j].off == first.off + len
                && copies[j].src.offset == first.src.offset + len
            {
                len += copies[j].src.len as u64;
                j += 1;
            }
            let src = sources.entry(first.src.path.clone()).or_insert_with(|| {
                let rec = self.records.get(&first.src.path).filter(|r| !r.dirty)?;
                let abs = self.root.existing(&first.src.path).ok().flatten()?;
                let f = File::open(&abs).ok()?;
                let m = f.metadata().ok()?;
                (m.is_file() && stat_of(&m) == rec.rec.stat).then_some(f)
            });
            let dst = &staged[first.idx];
            let ok = match src {
                Some(f) => copy_range(f, first.src.offset, &dst.file, first.off, len)
                    .ctx("copy into", &dst.tmp)?,
                None => false,
            };
            if ok {
                self.stats.bytes_copied_locally += len;
            } else {
                failed.extend(copies[i..j].iter().cloned());
            }
            i = j;
        }
        for (path, f) in &sources {
            if f.is_none() {
                if let Some(r) = self.records.get_mut(path) {
                    r.dirty = true;
                }
                self.forget_locs(path);
            }
        }
        Ok(failed)
    }

    fn delete(&mut self, path: &str) -> Result<()> {
        check_relative(path)?;
        let Some(rec) = self.records.get(path) else {
            return Ok(()); // never delete what mtr did not write
        };
        let is_dir = matches!(rec.rec.entry.kind, EntryKind::Dir);
        if let Some(abs) = self.root.existing(path)? {
            match fs::symlink_metadata(&abs) {
                // Left in place if the remote side put files in it.
                Ok(m) if m.is_dir() && is_dir && fs::remove_dir(&abs).is_ok() => {
                    self.stats.deleted += 1;
                }
                Ok(m) if !m.is_dir() && !is_dir => {
                    fs::remove_file(&abs).ctx("delete", &abs)?;
                    self.stats.deleted += 1;
                }
                _ => {} // replaced by something else on the remote side: leave it
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
        let tmp = self.staging_path(&entry.path, "link");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).ctx("create symlink", &tmp)?;
        fs::rename(&tmp, &abs).ctx("rename into place", &abs)?;
        self.unrecord(&entry.path);
        self.record(entry, Vec::new(), StatKey::default());
        Ok(())
    }

    fn staging_path(&self, path: &str, tag: &str) -> PathBuf {
        let h = blake3::hash(path.as_bytes());
        self.root
            .state_dir()
            .join("staging")
            .join(format!("{}-{tag}", &h.to_hex()[..32]))
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
        let have = self.records.get(&entry.path).filter(|r| {
            !r.dirty
                && matches!(&r.rec.entry.kind, EntryKind::File { digest: d, .. } if *d == digest)
        });
        if let Some(have) = have {
            // Content in place: metadata only.
            let chunks = have.rec.chunks.clone();
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
        self.root.prepare_parent(&entry.path)?;
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
        let tmp = self.staging_path(&entry.path, &hex(&digest[..8]));
        let mut filled = HashSet::new();
        let file = match fs::symlink_metadata(&tmp) {
            Ok(m) if m.is_file() => {
                // An interrupted earlier run: keep every chunk that verifies.
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&tmp)
                    .ctx("open", &tmp)?;
                let have_len = m.len();
                let mut off = 0u64;
                let mut buf = Vec::new();
                for c in &chunks {
                    if off + c.len as u64 <= have_len {
                        buf.resize(c.len as usize, 0);
                        f.read_exact_at(&mut buf, off).ctx("read", &tmp)?;
                        if chunker::hash(&buf) == c.hash {
                            filled.insert(off);
                        }
                    }
                    off += c.len as u64;
                }
                f
            }
            other => {
                if other.is_ok() {
                    fs::remove_file(&tmp).ctx("remove", &tmp)?;
                }
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .ctx("create", &tmp)?
            }
        };
        file.set_len(size).ctx("allocate", &tmp)?;
        Ok(Some((
            Staged {
                path: entry.path.clone(),
                entry: entry.kind.clone(),
                chunks,
                tmp,
                file,
            },
            filled,
        )))
    }

    /// Receive the data frames of a batch until `DataEnd`.
    fn receive<R: Read>(
        &mut self,
        staged: &[Staged],
        need: &mut HashMap<Hash, Vec<(usize, u64)>>,
        r: &mut FrameReader<R>,
    ) -> Result<()> {
        loop {
            match r.frame::<ToSink>()? {
                Some(Frame::Data(d)) => {
                    let targets = need.remove(&d.hash).ok_or_else(|| {
                        Error::Protocol(format!("unrequested chunk {}", hex(&d.hash[..8])))
                    })?;
                    let raw = if d.compressed {
                        compress::decompress(&d.payload, d.raw_len)?
                    } else {
                        if d.payload.len() != d.raw_len as usize {
                            return Err(Error::Protocol("raw chunk length mismatch".into()));
                        }
                        d.payload
                    };
                    if chunker::hash(&raw) != d.hash {
                        return Err(Error::Protocol(format!(
                            "chunk {} does not match its hash",
                            hex(&d.hash[..8])
                        )));
                    }
                    self.stats.bytes_received += raw.len() as u64;
                    for (idx, off) in targets {
                        let s = &staged[idx];
                        let expect = chunk_len_at(&s.chunks, off);
                        if expect != Some(raw.len() as u32) {
                            return Err(Error::Protocol(format!(
                                "chunk {} has the wrong length for {}",
                                hex(&d.hash[..8]),
                                s.path
                            )));
                        }
                        s.file.write_all_at(&raw, off).ctx("write", &s.tmp)?;
                    }
                }
                Some(Frame::Msg(ToSink::DataEnd)) => break,
                Some(Frame::Msg(m)) => {
                    return Err(Error::Protocol(format!("expected chunk data, got {m:?}")))
                }
                None => {
                    return Err(Error::Transport(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during a transfer",
                    )))
                }
            }
        }
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
        if let Ok(m) = fs::symlink_metadata(&abs) {
            if m.is_dir() {
                self.clear_for(&s.path, &abs, &m)?;
            }
        }
        fs::rename(&s.tmp, &abs).ctx("rename into place", &abs)?;
        let stat = stat_of(&fs::symlink_metadata(&abs).ctx("stat", &abs)?);
        self.stats.files_written += 1;
        self.stats.bytes_written += size;
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

    fn save(&mut self, token: Option<Hash>) -> Result<()> {
        let ix = SinkIndex {
            protocol: PROTOCOL_VERSION,
            token,
            records: self.records.values().map(|r| r.rec.clone()).collect(),
        };
        index::save(&self.root.state_dir().join("index"), &ix)?;
        self.last_save = Instant::now();
        Ok(())
    }

    fn maybe_save(&mut self) -> Result<()> {
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save(None)?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<Hash> {
        let token = manifest::token(self.records.iter().map(|(p, r)| (p, &r.rec.entry.kind)));
        self.save(Some(token))?;
        self.token = Some(token);
        // Leftovers of interrupted runs that this sync did not need.
        let staging = self.root.state_dir().join("staging");
        if let Ok(rd) = fs::read_dir(&staging) {
            for de in rd.flatten() {
                let _ = fs::remove_file(de.path());
            }
        }
        Ok(token)
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

fn chunk_len_at(chunks: &[ChunkSpec], off: u64) -> Option<u32> {
    let mut o = 0u64;
    for c in chunks {
        if o == off {
            return Some(c.len);
        }
        o += c.len as u64;
        if o > off {
            return None;
        }
    }
    None
}

fn still_valid(root: &Root, path: &str, rec: &SinkRecord) -> bool {
    let Ok(Some(abs)) = root.existing(path) else {
        return false;
    };
    let Ok(m) = fs::symlink_metadata(&abs) else {
        return false;
    };
    match &rec.entry.kind {
        EntryKind::Dir => m.is_dir(),
        EntryKind::Symlink { target } => {
            m.file_type().is_symlink()
                && fs::read_link(&abs).ok().as_deref() == Some(Path::new(target))
        }
        EntryKind::File { .. } => m.is_file() && stat_of(&m) == rec.stat,
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
