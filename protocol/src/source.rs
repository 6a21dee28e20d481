//! The source role of a sync session: it has the tree and sends the sink what it lacks.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::chunker::{self, Chunker};
use crate::codec::{FrameReader, FrameWriter};
use crate::compress;
use crate::error::{Error, IoContext, Result};
use crate::index;
use crate::manifest::{self, diff, Manifest};
use crate::scan::{self, Filter, Progress};
use crate::wire::{
    Entry, EntryKind, FromSink, Hash, Op, SinkStats, SourceIndex, SyncState, ToSink,
    PROTOCOL_VERSION,
};

/// What the sink said in its greeting.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The sink's program version.
    pub version: String,
    /// The sink's root, absolute.
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
        other => Err(Error::Protocol(format!("expected HelloAck, got {other:?}"))),
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
}

/// One line of a sync plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new path.
    Add(String),
    /// A path whose content changed.
    Update(String),
    /// Only metadata (mode, mtime) changed.
    Touch(String),
    Delete(String),
}

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
/// Chunks read and compressed in parallel at a time.
const WINDOW: usize = 64;

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
    let old_index: Option<SourceIndex> = index::load(&cfg.index_path);
    let (tree, new_index) = scan::scan(
        cfg.root,
        cfg.filter,
        old_index.as_ref(),
        &cfg.chunker,
        progress,
    )?;
    if !cfg.dry_run && (tree.files_hashed > 0 || old_index.is_none()) {
        index::save(&cfg.index_path, &new_index)?;
    }
    let mut report = Report {
        entries: tree.entries.len(),
        files_hashed: tree.files_hashed,
        bytes_hashed: tree.bytes_hashed,
        warnings: tree.warnings.clone(),
        ..Report::default()
    };
    let current_token = manifest::token(&tree.entries);
    let state: Option<SyncState> = index::load(&cfg.state_path);
    let cached = state
        .filter(|s| s.protocol == PROTOCOL_VERSION && s.token.is_some() && s.token == ack.token);
    if ack.dirty.is_empty() && ack.token == Some(current_token) {
        report.no_op = true;
        if cached.is_none() && !cfg.dry_run {
            save_state(cfg, Some(current_token), &tree.entries)?;
        }
        return Ok(report);
    }
    let base: Manifest = match cached {
        Some(s) => manifest::from_entries(s.entries),
        None => list_index(r, w)?,
    };
    let force: HashSet<String> = ack.dirty.iter().cloned().collect();
    let d = diff(&base, &tree.entries, &force, |p, is_dir| {
        cfg.filter.excluded(p, is_dir)
    });
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
    if cfg.dry_run {
        return Ok(report);
    }

    let mut batches: Vec<Vec<Op>> = Vec::new();
    let (mut ops, mut files, mut bytes) = (Vec::new(), 0usize, 0u64);
    for (path, content) in &d.upserts {
        let kind = tree.entries[path].clone();
        let chunks = match (&kind, content) {
            (EntryKind::File { size, .. }, true) => {
                files += 1;
                bytes += size;
                Some(chunker::specs(&tree.chunks[path]))
            }
            _ => None,
        };
        ops.push(Op::Upsert {
            entry: Entry {
                path: path.clone(),
                kind,
            },
            chunks,
        });
        if ops.len() >= BATCH_OPS || files >= BATCH_FILES || bytes >= BATCH_BYTES {
            batches.push(std::mem::take(&mut ops));
            (files, bytes) = (0, 0);
        }
    }
    if !ops.is_empty() {
        batches.push(ops);
    }
    // Deletes last, so deleted files can still serve chunks to renamed ones.
    let tail: Vec<Op> = d
        .deletes
        .iter()
        .map(|p| Op::Delete { path: p.clone() })
        .chain(d.forgets.iter().map(|p| Op::Forget { path: p.clone() }))
        .collect();
    for part in tail.chunks(BATCH_OPS) {
        batches.push(part.to_vec());
    }

    let total: u64 = d
        .upserts
        .iter()
        .filter(|(_, c)| *c)
        .filter_map(|(p, _)| match &tree.entries[p] {
            EntryKind::File { size, .. } => Some(*size),
            _ => None,
        })
        .sum();
    progress.phase("send", total);
    for batch in batches {
        let locs: HashMap<Hash, (String, u64, u32)> = batch
            .iter()
            .filter_map(|op| match op {
                Op::Upsert {
                    entry,
                    chunks: Some(_),
                } => Some(entry.path.as_str()),
                _ => None,
            })
            .flat_map(|p| {
                tree.chunks[p]
                    .iter()
                    .map(move |c| (c.hash, (p.to_string(), c.offset, c.len)))
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
                } => Some(*size),
                _ => None,
            })
            .sum();
        w.msg(&ToSink::Ops { ops: batch })?;
        w.flush()?;
        let mut sent_raw = 0u64;
        let mut reply = expect(r, "ops")?;
        // The sink asks for chunks until it has all of this batch (usually once; again when
        // a copy it planned on its side turned out stale).
        loop {
            let hashes = match reply {
                FromSink::Need { hashes } => hashes,
                FromSink::BatchDone => break,
                m => return Err(Error::Protocol(format!("expected Need, got {m:?}"))),
            };
            send_chunks(
                w,
                cfg.root,
                &tree.entries,
                &hashes,
                &locs,
                &mut report,
                progress,
                &mut sent_raw,
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
    match expect(r, "commit")? {
        FromSink::Committed { token, stats } => {
            report.sink = stats;
            if token == current_token {
                save_state(cfg, Some(token), &tree.entries)?;
            } else {
                log::warn!("the remote tree differs from the local one after the sync; the next sync compares them in full");
                save_state(cfg, None, &tree.entries)?;
            }
        }
        m => return Err(Error::Protocol(format!("expected Committed, got {m:?}"))),
    }
    Ok(report)
}

fn save_state(cfg: &SourceConfig, token: Option<Hash>, entries: &Manifest) -> Result<()> {
    index::save(
        &cfg.state_path,
        &SyncState {
            protocol: PROTOCOL_VERSION,
            token,
            entries: manifest::to_entries(entries),
        },
    )
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
                    "expected IndexBatch, got {other:?}"
                )))
            }
        }
    }
}

struct Prepared {
    hash: Hash,
    compressed: bool,
    raw_len: u32,
    payload: Vec<u8>,
}

/// Read, verify and compress the requested chunks on all cores while the current thread
/// writes the previous window to the peer.
#[allow(clippy::too_many_arguments)]
fn send_chunks<W: Write>(
    w: &mut FrameWriter<W>,
    root: &Path,
    entries: &Manifest,
    hashes: &[Hash],
    locs: &HashMap<Hash, (String, u64, u32)>,
    report: &mut Report,
    progress: &dyn Progress,
    sent_raw: &mut u64,
) -> Result<()> {
    for h in hashes {
        if !locs.contains_key(h) {
            return Err(Error::Protocol(
                "the sink asked for a chunk that was not offered".into(),
            ));
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Prepared>>>(2);
    std::thread::scope(|s| {
        s.spawn(move || {
            for window in hashes.chunks(WINDOW) {
                let prepared = prepare_window(root, entries, window, locs);
                let failed = prepared.is_err();
                if tx.send(prepared).is_err() || failed {
                    return;
                }
            }
        });
        for prepared in rx {
            for p in prepared? {
                w.data(&p.hash, p.compressed, p.raw_len, &p.payload)?;
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

/// Read and compress one window of chunks. Files are checked against the scan before and
/// after reading (size and mtime), so a file changed mid-sync is reported, not sent torn; the
/// sink verifies every chunk's hash besides.
fn prepare_window(
    root: &Path,
    entries: &Manifest,
    window: &[Hash],
    locs: &HashMap<Hash, (String, u64, u32)>,
) -> Result<Vec<Prepared>> {
    let unchanged = |p: &str, f: &std::fs::File| -> Result<()> {
        let abs = root.join(p);
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
            let abs = root.join(p);
            let f = std::fs::File::open(&abs).ctx("open", &abs)?;
            unchanged(p, &f)?;
            files.insert(p, f);
        }
    }
    let prepared = window
        .par_iter()
        .map(|h| {
            let (p, off, len) = &locs[h];
            let mut raw = vec![0u8; *len as usize];
            files[p.as_str()]
                .read_exact_at(&mut raw, *off)
                .map_err(|_| Error::Changed(root.join(p)))?;
            Ok(match compress::compress(&raw) {
                Some(c) => Prepared {
                    hash: *h,
                    compressed: true,
                    raw_len: *len,
                    payload: c,
                },
                None => Prepared {
                    hash: *h,
                    compressed: false,
                    raw_len: *len,
                    payload: raw,
                },
            })
        })
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
