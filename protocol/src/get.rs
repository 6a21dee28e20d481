//! Downloads (`mtr --get`): the sync engine in the other direction. `mtr-agent send` is the
//! source of one path on the server ([`serve`]); mtr is the sink of one local destination
//! ([`request`], then [`receive`]), with the atomicity and path checks of an upload's sink plus
//! [`SinkOptions::download`]: everything lands in the destination, symlinks point inside it,
//! and local files the download did not write are never deleted.
//!
//! The tree sent has one top-level entry, named after the destination (the local path's file
//! name): the file itself, or the directory holding the remote directory's contents. The
//! sink's root is the destination's parent, so a file, a directory, and a change from one to
//! the other are the same session, and the sink never renames what it receives. What the sink
//! wrote (its index) lives in a state directory of the caller's choosing (mtr's cache); files
//! are built in a hidden sibling of the destination (same filesystem), removed once the
//! download is in place, so nothing of mtr's is left beside the user's files.
//!
//! The session: mtr sends [`SendRequest`]; the agent answers `Hello` (its versions, the path
//! resolved) and scans while mtr validates its index and answers `HelloAck`; from there it is
//! an upload's session with the roles swapped, ending with `Bye` (after a [`ToSink::Plan`] in
//! a dry run). What the agent's scan left out arrives as [`ToSink::Warnings`]; a failure on its
//! side, such as a missing path, as [`ToSink::Error`].

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::chunker::Chunker;
use crate::codec::{FrameReader, FrameWriter};
use crate::error::{Error, IoContext, Result};
use crate::index;
use crate::paths::{self, check_relative};
use crate::scan::{self, Filter, NoProgress, Progress};
use crate::sink::{self, End, Sink, SinkConfig, SinkOptions};
use crate::source::{self, Ack, Origin, Push, Scanned};
use crate::wire::{
    Change, FromSink, SendRequest, SinkStats, SourceIndex, ToSink, PROTOCOL_VERSION,
};

/// What mtr asks the agent to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The remote path: absolute, or starting with `~` (expanded by the agent).
    pub path: String,
    /// The name of the tree's top-level entry: the destination's file name ([`name_of`]).
    pub name: String,
    /// Only compute what would change.
    pub dry_run: bool,
}

/// The name a download's tree is sent under: `dest`'s file name, which must be UTF-8 and a
/// plain name.
pub fn name_of(dest: &Path) -> Result<String> {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| check_relative(n).is_ok() && !n.contains('/'))
        .ok_or_else(|| {
            Error::Conflict(format!(
                "cannot download to {}: its file name must be a plain UTF-8 name",
                dest.display()
            ))
        })?;
    Ok(name.to_string())
}

/// The agent's side: read the [`SendRequest`], then be the source of its path. `version` is
/// this program's; a peer of another version is told ours and the session ends. `cache` is
/// where the source's chunk index and per-destination state are kept (a private directory
/// of the agent's).
pub fn serve<R: Read, W: Write>(input: R, output: W, version: &str, cache: &Path) -> Result<()> {
    let mut r = FrameReader::new(input);
    let mut w = FrameWriter::new(output);
    let result = send(&mut r, &mut w, version, cache);
    if let Err(e) = &result {
        // The peer's own errors it knows already; ours it is told (best effort).
        if !matches!(e, Error::Remote(_)) {
            let _ = w.msg(&ToSink::Error {
                message: e.to_string(),
            });
            let _ = w.flush();
        }
    }
    result
}

fn send<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    version: &str,
    cache: &Path,
) -> Result<()> {
    let req: SendRequest = r.msg()?;
    let chunker = Chunker::default();
    let hello = |root: String| ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: version.to_string(),
        root,
        chunker: chunker.id(),
    };
    if req.protocol != PROTOCOL_VERSION || req.version != version {
        w.msg(&hello(req.path))?;
        return w.flush();
    }
    if check_relative(&req.name).is_err() || req.name.contains('/') {
        return Err(Error::Protocol(format!(
            "download name {:?} is not a plain name",
            req.name
        )));
    }
    let path = paths::expand_home(&req.path)?;
    w.msg(&hello(path.display().to_string()))?;
    w.flush()?;
    // Scan while the sink checks its side.
    let scanned = scan_path(&path, &req, cache, &chunker);
    let ack = source::read_ack(r, version)?;
    let (scanned, state_path) = scanned?;
    if !scanned.tree.warnings.is_empty() {
        w.msg(&ToSink::Warnings {
            messages: scanned.tree.warnings.clone(),
        })?;
    }
    let filter = Filter::download(&scanned.origin.path);
    let prefix = format!("{}/", req.name);
    let excluded = |p: &str, is_dir: bool| {
        p.strip_prefix(&prefix)
            .is_some_and(|rel| filter.excluded(rel, is_dir))
    };
    let job = Push {
        scanned: &scanned,
        excluded: &excluded,
        state_path: &state_path,
        dry_run: req.dry_run,
        pipeline: source::Pipeline::default(),
        prefills: &source::Prefills::default(),
    };
    let report = source::push(r, w, &ack, &job, &NoProgress)?;
    if req.dry_run {
        w.msg(&ToSink::Plan {
            changes: report.plan,
        })?;
    }
    source::bye(w)
}

/// Scan what `req` names (symlinks to it followed) as a tree under `req.name`, reusing and
/// updating the chunk index kept for that path in `cache`. Returns the tree and where the
/// state of this destination is kept.
fn scan_path(
    path: &Path,
    req: &SendRequest,
    cache: &Path,
    chunker: &Chunker,
) -> Result<(Scanned, PathBuf)> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Conflict(format!(
                "{} does not exist",
                path.display()
            )))
        }
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    let real = fs::canonicalize(path).ctx("resolve", path)?;
    let dir = cache.join(key(real.as_os_str().as_bytes()));
    let index_path = dir.join("index");
    let state_path = dir.join(format!("state-{}", key(req.name.as_bytes())));
    let old: Option<SourceIndex> = index::load(&index_path);
    let tree = if meta.is_dir() {
        let filter = Filter::download(&real);
        let tree = scan::scan(&real, &filter, || old, chunker, &NoProgress)?;
        // Saved before nesting: the index is keyed by paths under `real`.
        if !req.dry_run && tree.index_outdated {
            index::save(&index_path, &tree.index())?;
        }
        tree.nest(&req.name)
    } else if meta.is_file() {
        let (tree, ix) = scan::scan_file(&real, &req.name, old.as_ref(), chunker, &NoProgress)?;
        if !req.dry_run && tree.index_outdated {
            index::save(&index_path, &ix)?;
        }
        tree
    } else {
        return Err(Error::Conflict(format!(
            "{} is neither a regular file nor a directory",
            path.display()
        )));
    };
    let origin = Origin {
        path: real,
        nest: Some(req.name.clone()),
    };
    Ok((Scanned { tree, origin }, state_path))
}

fn key(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// mtr's side of the handshake: send the request and read the agent's greeting, checking it
/// runs `version` of this protocol. The returned [`Ack`] holds the agent's version and, in
/// `root`, the path it sends, resolved.
pub fn request<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    req: &Request,
    version: &str,
) -> Result<Ack> {
    w.msg(&SendRequest {
        protocol: PROTOCOL_VERSION,
        version: version.to_string(),
        path: req.path.clone(),
        name: req.name.clone(),
        dry_run: req.dry_run,
    })?;
    w.flush()?;
    match r.msg::<ToSink>()? {
        ToSink::Hello {
            protocol,
            version: theirs,
            root,
            chunker,
        } => {
            if protocol != PROTOCOL_VERSION || theirs != version {
                return Err(Error::Version(format!(
                    "the agent speaks protocol {protocol} version {theirs}, expected protocol {PROTOCOL_VERSION} version {version}"
                )));
            }
            if chunker != Chunker::default().id() {
                return Err(Error::Protocol(format!(
                    "the agent chunks with other parameters ({chunker:?})"
                )));
            }
            Ok(Ack {
                version: theirs,
                root,
                token: None,
                dirty: Vec::new(),
            })
        }
        ToSink::Error { message } => Err(Error::Remote(message)),
        other => Err(Error::Protocol(format!(
            "expected Hello, got {}",
            sink::what(&other)
        ))),
    }
}

/// Where a download lands.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    /// The path the remote file or directory becomes: absolute; its parent is created when
    /// missing. Its file name must be the request's `name`.
    pub dest: PathBuf,
    /// The sink's index and lock for this destination (never inside the destination).
    pub state_dir: PathBuf,
    /// Take the source's plan; change nothing, create nothing.
    pub dry_run: bool,
}

/// What a download did.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Upserts and deletes received (0: the destination was up to date).
    pub changes: u64,
    /// Paths the sink holds for this destination after the download.
    pub entries: usize,
    /// What a dry run would change, as it would apply here.
    pub plan: Vec<Change>,
    /// Files written, bytes received (raw) and copied locally, deletes.
    pub stats: SinkStats,
    /// Chunk bytes as they crossed the wire (compressed or raw).
    pub payload_bytes: u64,
    /// Bytes of local files read to reuse their chunks.
    pub bytes_hashed: u64,
}

/// mtr's side after [`request`]: receive the download into `cfg.dest` as the sink, with
/// [`SinkOptions::download`]. Files already at the destination serve as chunk sources. The
/// source must end with `Bye` after committing; anything else is an error. What was skipped
/// or kept (a symlink out of the destination, a locally changed file) goes to `warn`, also
/// when the download fails.
pub fn receive<R: Read, W: Write>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    cfg: &ReceiveConfig,
    version: &str,
    progress: &dyn Progress,
    warn: &mut dyn FnMut(String),
) -> Result<Received> {
    let name = name_of(&cfg.dest)?;
    let parent = cfg.dest.parent().ok_or_else(|| {
        Error::Conflict(format!("{} has no parent directory", cfg.dest.display()))
    })?;
    if !cfg.dry_run {
        fs::create_dir_all(parent).ctx("create directory", parent)?;
    }
    let root = match fs::canonicalize(parent) {
        Ok(p) => p,
        Err(_) if cfg.dry_run => parent.to_path_buf(),
        Err(e) => return Err(Error::io("resolve", parent, e)),
    };
    let staging = root.join(format!(
        ".mtr-get-{}",
        &key(cfg.dest.as_os_str().as_bytes())[..16]
    ));
    if let Ok(m) = fs::symlink_metadata(&staging) {
        if !m.is_dir() {
            return Err(Error::Conflict(format!(
                "{} is in the way of mtr's staging directory; remove it",
                staging.display()
            )));
        }
    }
    let mut sink = Sink::open(SinkConfig {
        root,
        state_dir: cfg.state_dir.clone(),
        staging_dir: staging.clone(),
        options: SinkOptions::download(&name),
        dry_run: cfg.dry_run,
        remover: None,
        watch: false,
    })?;
    sink.greet(w, version)?;
    let result = drive(&mut sink, r, w, cfg.dry_run, progress);
    if let Err(e) = &result {
        // Tell the source why (best effort); it stops sending.
        if !matches!(e, Error::Remote(_) | Error::Transport(_)) {
            let _ = w.msg(&FromSink::Error {
                message: e.to_string(),
            });
            let _ = w.flush();
        }
    }
    // Old versions swapped out of place are in staging: gone first.
    sink.empty_trash();
    // Staging is kept only for a resume after a lost connection.
    if !cfg.dry_run && !matches!(result, Err(Error::Transport(_))) {
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                log::warn!("cannot remove {}: {e}", staging.display())
            }
            _ => {}
        }
    }
    for message in sink.take_warnings() {
        warn(message);
    }
    result?;
    Ok(sink.into_received())
}

/// Serve the source until it says `Bye` with everything committed.
fn drive<R: Read, W: Write>(
    sink: &mut Sink,
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<()> {
    if !dry_run {
        // While the source scans and diffs.
        sink.reuse_existing(&Chunker::default(), progress);
    }
    match sink.run(r, w, progress)? {
        End::Bye if !sink.uncommitted() => Ok(()),
        End::Bye => Err(Error::Protocol(
            "the agent ended the download before committing it".into(),
        )),
        End::Eof => Err(Error::Transport(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection before the download was complete",
        ))),
    }
}
