//! The local tree scan: a parallel walk that applies the exclusion rules, and chunk lists for
//! every file, reused from the stat-validated [`SourceIndex`] so unchanged files are never read.
//!
//! Exclusion rules ([`Filter`]) are the one rule source for what is synced: `.mtr/` and
//! `.mtr-sync/` at the root always, the configured gitignore-style `exclude` patterns,
//! `.gitignore` files at every level when `respect_gitignore` is on, and `.mtrignore` files.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;
use rayon::prelude::*;

use crate::chunker::{self, ChunkRef, Chunker};
use crate::error::{Error, IoContext, Result};
use crate::paths::{CONFIG_DIR, STATE_DIR};
use crate::wire::{
    ChunkSpec, ChunkerId, EntryKind, SourceIndex, SourceIndexEntry, SourceIndexRef, StatKey,
    PROTOCOL_VERSION,
};

/// Files modified this close before the previous scan are hashed again (see `scan`).
const RACY_WINDOW_NS: i64 = 100_000_000;
/// Name of mtr's own ignore file, honoured at every level.
pub const MTRIGNORE: &str = ".mtrignore";
/// The ignore files a directory may hold: `.gitignore` (with `respect_gitignore`), then
/// [`MTRIGNORE`].
const IGNORE_FILES: [&str; 2] = [".gitignore", MTRIGNORE];

/// What to leave out of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// gitignore-style patterns, anchored at the root.
    pub excludes: Vec<String>,
    /// Honour `.gitignore` files at every level.
    pub respect_gitignore: bool,
}

/// Decides whether a path is excluded. Cheap to share between threads.
pub struct Filter {
    root: PathBuf,
    excludes: Gitignore,
    respect_gitignore: bool,
    /// Keep everything but mtr's state directory ([`Filter::download`]).
    everything: bool,
    dirs: Mutex<HashMap<String, Arc<Vec<Gitignore>>>>,
}

impl Filter {
    /// Build the filter for `root`. Bad patterns are errors naming the pattern.
    pub fn new(root: &Path, opts: &ScanOptions) -> Result<Filter> {
        let mut b = GitignoreBuilder::new(root);
        for pat in &opts.excludes {
            b.add_line(None, pat)
                .map_err(|e| Error::Conflict(format!("bad exclude pattern {pat:?}: {e}")))?;
        }
        let excludes = b
            .build()
            .map_err(|e| Error::Conflict(format!("bad exclude patterns: {e}")))?;
        Ok(Filter {
            root: root.to_path_buf(),
            excludes,
            respect_gitignore: opts.respect_gitignore,
            everything: false,
            dirs: Mutex::new(HashMap::new()),
        })
    }

    /// The filter of a download's source: everything under `root` is sent except mtr's state
    /// directory at its root (what an upload keeps there). No ignore files, no `.mtr/` rule.
    pub fn download(root: &Path) -> Filter {
        Filter {
            root: root.to_path_buf(),
            excludes: Gitignore::empty(),
            respect_gitignore: false,
            everything: true,
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// Ignore files of directory `dir` (relative, "" for the root), loaded once. `present`
    /// says which of them exist when the caller has just listed the directory (the walk);
    /// `None` looks for them.
    fn dir_rules(&self, dir: &str, present: Option<&[&str]>) -> Arc<Vec<Gitignore>> {
        if let Some(r) = self.dirs.lock().unwrap().get(dir) {
            return r.clone();
        }
        let abs = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let mut rules = Vec::new();
        let names = if self.respect_gitignore {
            &IGNORE_FILES[..]
        } else {
            &IGNORE_FILES[1..]
        };
        for name in names {
            let f = abs.join(name);
            let exists = match present {
                Some(listed) => listed.contains(name) && f.is_file(),
                None => f.is_file(),
            };
            if exists {
                let mut b = GitignoreBuilder::new(&abs);
                if b.add(&f).is_some() {
                    log::warn!("some lines of {} could not be parsed", f.display());
                }
                if let Ok(g) = b.build() {
                    rules.push(g);
                }
            }
        }
        let rules = Arc::new(rules);
        self.dirs
            .lock()
            .unwrap()
            .insert(dir.to_string(), rules.clone());
        rules
    }

    /// The rules that apply inside directory `dir` (relative, "" for the root) from its own
    /// ignore files, given `parent`: the rules of its parent directory. See [`Rules`].
    fn rules_in(&self, dir: &str, parent: &Rules, present: Option<&[&str]>) -> Rules {
        let own = self.dir_rules(dir, present);
        if own.is_empty() {
            return parent.clone();
        }
        let mut chain = Vec::with_capacity(parent.0.len() + 1);
        chain.extend(parent.0.iter().cloned());
        chain.push((dir.len(), own));
        Rules(Arc::new(chain))
    }

    /// Is `rel`, in a directory whose rules are `rules`, excluded (its parent directories
    /// being not)? Patterns are matched against paths relative to where they were written
    /// (no allocation).
    fn excluded_by(&self, rel: &str, is_dir: bool, rules: &Rules) -> bool {
        if self.everything {
            return rel == STATE_DIR;
        }
        if !rel.contains('/') && (rel == CONFIG_DIR || rel == STATE_DIR) {
            return true;
        }
        if self.excludes.matched(rel, is_dir).is_ignore() {
            return true;
        }
        // Deeper ignore files take precedence; within one file the last match wins.
        for (dir_len, files) in rules.0.iter().rev() {
            let under = if *dir_len == 0 {
                rel
            } else {
                &rel[dir_len + 1..]
            };
            for g in files.iter().rev() {
                match g.matched(under, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                    Match::None => {}
                }
            }
        }
        false
    }

    /// Is `rel` excluded, given that its parent directories are not?
    pub fn excluded_here(&self, rel: &str, is_dir: bool) -> bool {
        if self.everything {
            return rel == STATE_DIR;
        }
        let mut rules = self.rules_in("", &Rules::default(), None);
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            rules = self.rules_in(&rel[..end + i], &rules, None);
            end += i + 1;
        }
        self.excluded_by(rel, is_dir, &rules)
    }

    /// Is `rel` or any of its parent directories excluded? Each directory's rules are made
    /// once, on the way down (a diff asks this of every deleted path).
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        if self.everything {
            return rel == STATE_DIR
                || rel
                    .strip_prefix(STATE_DIR)
                    .is_some_and(|r| r.starts_with('/'));
        }
        let mut rules = self.rules_in("", &Rules::default(), None);
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            let dir = &rel[..end + i];
            if self.excluded_by(dir, true, &rules) {
                return true;
            }
            rules = self.rules_in(dir, &rules, None);
            end += i + 1;
        }
        self.excluded_by(rel, is_dir, &rules)
    }
}

/// The ignore files that apply in a directory, outermost first, each with the length of the
/// directory it is in (its patterns match paths relative to it). Shared by every directory
/// that adds no ignore file of its own.
#[derive(Clone, Default)]
struct Rules(Arc<Vec<(usize, Arc<Vec<Gitignore>>)>>);

/// A scanned tree: entries in path order and the chunks of every file.
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: std::collections::BTreeMap<String, EntryKind>,
    /// Every file's stat and chunk list, in path order: the new index ([`Tree::index`]).
    pub files: Vec<SourceIndexEntry>,
    /// When the scan started, and its chunker: the rest of the index.
    pub scanned_at_ns: i64,
    pub chunker: Option<ChunkerId>,
    /// The index differs from the one the scan was given (files hashed, or none given): save
    /// it.
    pub index_outdated: bool,
    /// Things skipped with a reason (special files, non-UTF-8 names).
    pub warnings: Vec<String>,
    /// Bytes read and hashed in this scan (0 when every file was in the index).
    pub bytes_hashed: u64,
    pub files_hashed: u64,
}

impl Tree {
    /// This tree as the contents of a directory `name`: every path gets `name/` in front,
    /// and `name` itself is a directory entry. A download's source sends its tree so, under
    /// the local destination's name.
    pub fn nest(self, name: &str) -> Tree {
        let nested = |p: String| format!("{name}/{p}");
        let mut entries: std::collections::BTreeMap<String, EntryKind> = self
            .entries
            .into_iter()
            .map(|(p, k)| (nested(p), k))
            .collect();
        entries.insert(name.to_string(), EntryKind::Dir);
        // A common prefix keeps the files in path order.
        let files = self
            .files
            .into_iter()
            .map(|e| SourceIndexEntry {
                path: nested(e.path),
                ..e
            })
            .collect();
        Tree {
            entries,
            files,
            ..self
        }
    }

    /// The chunk list of file `path`.
    pub fn chunks(&self, path: &str) -> Option<&[ChunkSpec]> {
        let i = self
            .files
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()?;
        Some(&self.files[i].chunks)
    }

    /// The index this scan leaves for the next one (saved as a [`SourceIndex`]).
    pub fn index(&self) -> SourceIndexRef<'_> {
        SourceIndexRef {
            protocol: PROTOCOL_VERSION,
            chunker: self.chunker,
            scanned_at_ns: self.scanned_at_ns,
            files: &self.files,
        }
    }
}

/// Progress callbacks; all optional.
pub trait Progress: Sync {
    /// A new phase starts (`scan`, `hash`, `send`); `total` is in its unit (0 if unknown).
    fn phase(&self, _name: &'static str, _total: u64) {}
    /// Work done in the current phase.
    fn advance(&self, _n: u64) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

enum Item {
    Dir(String),
    File(String, StatKey, u32),
    Symlink(String, String),
    Skipped(String),
}

impl Item {
    /// The path the item is sorted by (a skipped item's message starts with its path).
    fn path(&self) -> &str {
        match self {
            Item::Dir(p) | Item::File(p, ..) | Item::Symlink(p, _) | Item::Skipped(p) => p,
        }
    }
}

fn stat_key(m: &std::fs::Metadata) -> StatKey {
    StatKey {
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        ino: m.ino(),
    }
}

/// The stat key of a file's metadata (shared with the sink).
pub fn stat_of(m: &std::fs::Metadata) -> StatKey {
    stat_key(m)
}

/// Walk directory `rel_dir` ("" for the root), whose parent's rules are `parent`: its entries
/// and everything under them that is not excluded, subdirectories on all cores. Each entry is
/// `stat`ed relative to its directory's descriptor (one path component looked up, not the
/// whole path), directories not at all (their type comes from the listing), and ignore files
/// are looked for only in directories that list them.
fn walk(
    root: &Path,
    rel_dir: &str,
    filter: &Filter,
    parent: &Rules,
    progress: &dyn Progress,
) -> Result<Vec<Item>> {
    let abs = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel_dir)
    };
    let listing: Vec<std::fs::DirEntry> = std::fs::read_dir(&abs)
        .ctx("read directory", &abs)?
        .collect::<std::io::Result<_>>()
        .ctx("read directory", &abs)?;
    let ignore_files: Vec<&str> = listing
        .iter()
        .filter_map(|de| {
            let name = de.file_name();
            IGNORE_FILES
                .into_iter()
                .find(|n| name.as_encoded_bytes() == n.as_bytes())
        })
        .collect();
    let rules = filter.rules_in(rel_dir, parent, Some(&ignore_files));
    let mut items = Vec::with_capacity(listing.len());
    let mut subdirs = Vec::new();
    for de in listing {
        let name = de.file_name();
        let Some(name) = name.to_str() else {
            items.push(Item::Skipped(format!(
                "{}: name is not valid UTF-8",
                abs.join(de.file_name()).display()
            )));
            continue;
        };
        let rel = if rel_dir.is_empty() {
            name.to_string()
        } else {
            format!("{rel_dir}/{name}")
        };
        let ft = match de.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", de.path(), e)),
        };
        if filter.excluded_by(&rel, ft.is_dir(), &rules) {
            continue;
        }
        if ft.is_dir() {
            subdirs.push(rel.clone());
            items.push(Item::Dir(rel));
        } else if ft.is_file() {
            let meta = match de.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", de.path(), e)),
            };
            if !meta.is_file() {
                // Replaced by something else since the listing: seen as it is next time.
                continue;
            }
            items.push(Item::File(
                rel,
                stat_key(&meta),
                meta.permissions().mode() & 0o777,
            ));
        } else if ft.is_symlink() {
            let path = de.path();
            let target = match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read symlink", &path, e)),
            };
            match target.to_str() {
                Some(t) => items.push(Item::Symlink(rel, t.to_string())),
                None => items.push(Item::Skipped(format!(
                    "{}: symlink target is not valid UTF-8",
                    path.display()
                ))),
            }
        } else {
            items.push(Item::Skipped(format!(
                "{}: not a regular file, directory or symlink (fifo, socket or device)",
                de.path().display()
            )));
        }
    }
    progress.advance(items.len() as u64);
    let nested: Vec<Result<Vec<Item>>> = subdirs
        .par_iter()
        .map(|d| walk(root, d, filter, &rules, progress))
        .collect();
    let nested: Vec<Vec<Item>> = nested.into_iter().collect::<Result<_>>()?;
    Ok(in_path_order(rel_dir, items, &subdirs, nested))
}

/// The entries of directory `rel_dir` (`items`, in listing order) and the walks of its
/// `subdirs` (`nested`, each in path order) as one list in path order, so the scan needs no
/// sort of the whole tree: the entries by name, each subdirectory's walk where `name/` sorts
/// among them (`a`, `a.txt`, `a/x`: '.' sorts before '/'). Skipped items go last.
fn in_path_order(
    rel_dir: &str,
    items: Vec<Item>,
    subdirs: &[String],
    nested: Vec<Vec<Item>>,
) -> Vec<Item> {
    let strip = if rel_dir.is_empty() {
        0
    } else {
        rel_dir.len() + 1
    };
    let total = items.len() + nested.iter().map(Vec::len).sum::<usize>();
    let (mut own, skipped): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|i| !matches!(i, Item::Skipped(_)));
    own.sort_unstable_by(|a, b| a.path().cmp(b.path()));
    let mut trees: Vec<(&str, Vec<Item>)> =
        subdirs.iter().map(|d| &d[strip..]).zip(nested).collect();
    trees.sort_by(|a, b| as_dir(a.0).cmp(as_dir(b.0)));
    let mut trees = trees.into_iter().peekable();
    let mut out = Vec::with_capacity(total);
    for item in own {
        let name = &item.path()[strip..];
        while let Some((dir, _)) = trees.peek() {
            if !as_dir(dir).lt(name.bytes()) {
                break;
            }
            out.extend(trees.next().expect("peeked").1);
        }
        out.push(item);
    }
    for (_, walked) in trees {
        out.extend(walked);
    }
    out.extend(skipped);
    out
}

/// The bytes a subdirectory's walk sorts by: `name/` ("a-b/" before "a/", "a/" before "a0").
fn as_dir(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().chain([b'/'])
}

/// Read and chunk one file, checking it did not change while being read.
pub fn chunk_file(path: &Path, expected: &StatKey, chunker: &Chunker) -> Result<Vec<ChunkRef>> {
    rechunk_file(path, expected, chunker, &[])
}

/// [`chunk_file`] of a file that chunked as `old` before it changed: most of its chunks are
/// checked by hash instead of found again ([`Chunker::rechunk`]); the result is the same.
pub fn rechunk_file(
    path: &Path,
    expected: &StatKey,
    chunker: &Chunker,
    old: &[ChunkSpec],
) -> Result<Vec<ChunkRef>> {
    rechunk_file_each(path, expected, chunker, old, &|_| {})
}

/// [`rechunk_file`], telling `each` every segment's chunks as they are found
/// ([`Chunker::rechunk_input_each`]). A file read twice (it changed while read) tells the
/// segments of both reads.
fn rechunk_file_each(
    path: &Path,
    expected: &StatKey,
    chunker: &Chunker,
    old: &[ChunkSpec],
    each: &(dyn Fn(&[ChunkRef]) + Sync),
) -> Result<Vec<ChunkRef>> {
    for _attempt in 0..2 {
        let f = File::open(path).ctx("open", path)?;
        let before = stat_key(&f.metadata().ctx("stat", path)?);
        // Read, never mapped: a mapped file truncated by another process while it is hashed
        // would kill mtr with SIGBUS. The file is read a strip at a time, so its size costs
        // no memory.
        advise_sequential(&f);
        let input = FileInput {
            file: &f,
            size: before.size,
        };
        let read = if old.is_empty() {
            chunker.chunk_input_each(&input, each)
        } else {
            chunker.rechunk_input_each(&input, old, each)
        };
        let chunks = match read {
            Ok(chunks) => chunks,
            // Shorter than its size: truncated while read. Read it again.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e).ctx("read", path),
        };
        let after = stat_key(&std::fs::symlink_metadata(path).ctx("stat", path)?);
        if after == before && before.mtime_ns == expected.mtime_ns && before.size == expected.size {
            return Ok(chunks);
        }
    }
    Err(Error::Changed(path.to_path_buf()))
}

/// A file of `size` bytes as chunker input, read with `pread`.
struct FileInput<'f> {
    file: &'f File,
    size: u64,
}

impl chunker::Input for FileInput<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(
        &'a self,
        offset: u64,
        len: usize,
        buf: &'a mut Vec<u8>,
    ) -> std::io::Result<&'a [u8]> {
        use std::os::unix::fs::FileExt;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.file.read_exact_at(&mut buf[..len], offset)?;
        Ok(&buf[..len])
    }
}

/// Tell the kernel `f` is read front to back (a larger readahead).
fn advise_sequential(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain advisory call on an open descriptor; failure changes nothing.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
}

/// Whether an index entry with stat `st`, recorded by a scan that started at `scanned_at`,
/// can be reused. A file modified within a clock tick of that scan could have changed again
/// without its mtime changing: it is hashed again. Nanosecond timestamps tick in
/// milliseconds; a whole-second mtime suggests a coarse filesystem (FAT, some NFS), which
/// gets 2 s.
fn trusted(st: &StatKey, scanned_at: i64) -> bool {
    let window = if st.mtime_ns % 1_000_000_000 == 0 {
        2_000_000_000
    } else {
        RACY_WINDOW_NS
    };
    st.mtime_ns < scanned_at.saturating_sub(window)
}

/// Scan one regular file as a tree of one entry, `name` (a download of a single file),
/// reusing its chunk list from `index` when its stat is unchanged. The index records the file
/// under its own file name, so it serves whatever name the tree gives it.
pub fn scan_file(
    path: &Path,
    name: &str,
    index: Option<&SourceIndex>,
    chunker: &Chunker,
    progress: &dyn Progress,
) -> Result<(Tree, SourceIndex)> {
    let started = now_ns();
    let meta = std::fs::symlink_metadata(path).ctx("stat", path)?;
    if !meta.is_file() {
        return Err(Error::Conflict(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let key = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let st = stat_key(&meta);
    let recorded = index
        .filter(|ix| ix.protocol == PROTOCOL_VERSION && ix.chunker == Some(chunker.id()))
        .and_then(|ix| Some((ix.files.iter().find(|e| e.path == key)?, ix.scanned_at_ns)));
    let known = recorded.filter(|(e, at)| e.stat == st && trusted(&st, *at));
    let mut tree = Tree {
        scanned_at_ns: started,
        chunker: Some(chunker.id()),
        // Reused from the index or not: saved unless it was.
        index_outdated: known.is_none(),
        ..Tree::default()
    };
    let (st, specs) = match known {
        Some((e, _)) => (st, e.chunks.clone()),
        None => {
            progress.phase("hash", st.size);
            let old = recorded.map_or(&[][..], |(e, _)| &e.chunks[..]);
            let chunks = rechunk_file(path, &st, chunker, old)?;
            progress.advance(st.size);
            tree.files_hashed = 1;
            tree.bytes_hashed = st.size;
            (
                stat_key(&std::fs::symlink_metadata(path).ctx("stat", path)?),
                crate::chunker::specs(&chunks),
            )
        }
    };
    tree.entries.insert(
        name.to_string(),
        EntryKind::File {
            size: st.size,
            mode: meta.permissions().mode() & 0o777,
            mtime_ns: st.mtime_ns,
            digest: crate::chunker::file_digest(&specs),
        },
    );
    tree.files.push(SourceIndexEntry {
        path: name.to_string(),
        stat: st,
        chunks: specs.clone(),
    });
    let index = SourceIndex {
        protocol: PROTOCOL_VERSION,
        chunker: Some(chunker.id()),
        scanned_at_ns: started,
        files: vec![SourceIndexEntry {
            path: key,
            stat: st,
            chunks: specs,
        }],
    };
    Ok((tree, index))
}

/// The chunks of one segment of a long file that changed, found while the scan goes on: what
/// [`scan_early`] tells its caller, which can have the sink start building the file
/// ([`crate::wire::ToSink::Prefill`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: String,
    /// The file's size as scanned.
    pub size: u64,
    pub offset: u64,
    pub chunks: Vec<ChunkSpec>,
}

/// Files this long are told segment by segment ([`scan_early`]): a sink can copy several
/// hundred MB of a checkpoint while the rest is read. One segment arrives all at once.
fn early_worthy(size: u64, chunker: &Chunker) -> bool {
    size > chunker.segment
}

/// The segments of one file for [`scan_early`]'s `early`, from the first one found to differ
/// from the file's old chunk list on (those found alike before it are held until then): a
/// file only touched tells nothing, so the sink copies nothing it will not use.
struct EarlyFile<'a> {
    path: &'a str,
    size: u64,
    /// The old chunk list and where each of its chunks starts.
    old: &'a [ChunkSpec],
    old_starts: Vec<u64>,
    /// Whether a segment differed, and the ones held until one does.
    state: Mutex<(bool, Vec<Segment>)>,
    early: &'a (dyn Fn(Segment) + Sync),
}

impl<'a> EarlyFile<'a> {
    fn new(
        path: &'a str,
        size: u64,
        old: &'a [ChunkSpec],
        early: &'a (dyn Fn(Segment) + Sync),
    ) -> Self {
        let old_starts = chunker::placed(old).map(|(at, _)| at).collect();
        EarlyFile {
            path,
            size,
            old,
            old_starts,
            state: Mutex::new((false, Vec::new())),
            early,
        }
    }

    /// Whether `chunks` (one segment) are the old list's chunks over the same bytes.
    fn alike(&self, chunks: &[ChunkRef]) -> bool {
        let Some(first) = chunks.first() else {
            return true;
        };
        let Ok(i) = self.old_starts.binary_search(&first.offset) else {
            return false;
        };
        self.old.get(i..i + chunks.len()).is_some_and(|old| {
            old.iter()
                .zip(chunks)
                .all(|(o, c)| o.hash == c.hash && o.len == c.len)
        }) && {
            // And the old list has no more chunks in this segment.
            let end = first.offset + chunks.iter().map(|c| c.len as u64).sum::<u64>();
            self.old_starts
                .get(i + chunks.len())
                .is_none_or(|&s| s >= end)
        }
    }

    fn segment(&self, chunks: &[ChunkRef]) {
        let Some(first) = chunks.first() else {
            return;
        };
        let seg = Segment {
            path: self.path.to_string(),
            size: self.size,
            offset: first.offset,
            chunks: chunker::specs(chunks),
        };
        let alike = self.alike(chunks);
        let held = {
            let mut st = self.state.lock().expect("early state lock");
            if !st.0 && alike {
                st.1.push(seg);
                return;
            }
            st.0 = true;
            std::mem::take(&mut st.1)
        };
        for s in held {
            (self.early)(s);
        }
        (self.early)(seg);
    }
}

/// A file's stat (after reading it) and chunk list.
type Listed = (StatKey, Vec<ChunkSpec>);

/// What a scan does with a file it listed.
enum Plan {
    /// Its stat is the one index entry `usize` recorded for its path: reuse that chunk list.
    Reuse(usize),
    /// Its stat is that of index entry `usize` under another path (its directory was
    /// renamed): a copy of that chunk list.
    Moved(usize),
    /// Read and chunk it; with the index entry its path had, if any (rechunked from it).
    Hash(Option<usize>),
}

/// Scan `root`: walk it with `filter`, reuse chunk lists from `index` for files whose stat is
/// unchanged, chunk the rest on all cores. The tree holds the new index ([`Tree::index`]);
/// the old one is consumed: chunk lists reused are moved out of it, not copied.
pub fn scan(
    root: &Path,
    filter: &Filter,
    index: impl FnOnce() -> Option<SourceIndex> + Send,
    chunker: &Chunker,
    progress: &dyn Progress,
) -> Result<Tree> {
    scan_early(root, filter, index, chunker, progress, None)
}

/// [`scan`], telling `early` (from any thread) the segments of long files that changed since
/// the index (or are new), from the first segment that differs on, as they are found.
pub fn scan_early(
    root: &Path,
    filter: &Filter,
    index: impl FnOnce() -> Option<SourceIndex> + Send,
    chunker: &Chunker,
    progress: &dyn Progress,
    early: Option<&(dyn Fn(Segment) + Sync)>,
) -> Result<Tree> {
    let started = now_ns();
    progress.phase("scan", 0);
    let clock = std::time::Instant::now();
    // The index loads (decompressed and decoded: ~0.1 s per 100k files) while the tree is
    // listed.
    let (items, index) = std::thread::scope(|s| {
        let loading = s.spawn(|| {
            let index = index();
            log::debug!(
                "scan: index of {} files loaded in {:.0?}",
                index.as_ref().map_or(0, |i| i.files.len()),
                clock.elapsed()
            );
            index
        });
        let items = walk(root, "", filter, &Rules::default(), progress);
        log::debug!(
            "scan: {} entries under {} listed in {:.0?}",
            items.as_ref().map_or(0, |i| i.len()),
            root.display(),
            clock.elapsed()
        );
        (items, loading.join().unwrap_or(None))
    });
    let mut items = items?;
    // In path order, like the index (the walk lists it so): reused entries are found by a
    // merge, not a hash map, and the tree's maps are built from sorted input.
    let listed = items.iter().filter(|i| !matches!(i, Item::Skipped(_)));
    if !listed.is_sorted_by(|a, b| a.path() < b.path()) {
        debug_assert!(false, "the walk listed the tree out of order");
        items.sort_unstable_by(|a, b| a.path().cmp(b.path()));
    }

    let scanned_at = index.as_ref().map_or(i64::MIN, |i| i.scanned_at_ns);
    let (mut old, mut outdated) = match index {
        Some(ix) if ix.protocol == PROTOCOL_VERSION && ix.chunker == Some(chunker.id()) => {
            (ix.files, false)
        }
        _ => (Vec::new(), true),
    };
    if !old.is_sorted_by(|a, b| a.path < b.path) {
        // Saved by an older mtr: sorted once, and saved so.
        old.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        old.dedup_by(|a, b| a.path == b.path);
        outdated = true;
    }
    // A file whose directory was renamed keeps its whole stat, so it is found under its old
    // path: by inode and a ctime older than the last scan, which a file created since (even
    // one reusing the inode) cannot have. Built at the first file not found by its path (a
    // no-op never needs it).
    let mut by_stat: Option<HashMap<StatKey, usize>> = None;
    let trusted = |st: &StatKey| trusted(st, scanned_at);
    let settled = |st: &StatKey| {
        let changed = StatKey {
            mtime_ns: st.ctime_ns,
            ..*st
        };
        trusted(st) && trusted(&changed)
    };
    let mut plans: Vec<Plan> = Vec::new();
    let mut next = 0;
    for it in &items {
        let Item::File(p, st, _) = it else { continue };
        // `old` and `items` are both in path order.
        while next < old.len() && old[next].path.as_str() < p.as_str() {
            next += 1;
        }
        let same_path = (next < old.len() && old[next].path == *p).then_some(next);
        let plan = match same_path {
            Some(i) if old[i].stat == *st && trusted(st) => Plan::Reuse(i),
            _ => match by_stat
                .get_or_insert_with(|| old.iter().enumerate().map(|(i, e)| (e.stat, i)).collect())
                .get(st)
            {
                Some(&i) if settled(st) => Plan::Moved(i),
                _ => Plan::Hash(same_path),
            },
        };
        plans.push(plan);
    }

    // Big files first so the cores stay busy to the end.
    let mut to_hash: Vec<(usize, &String, &StatKey, &[ChunkSpec])> = items
        .iter()
        .filter_map(|it| match it {
            Item::File(p, st, _) => Some((p, st)),
            _ => None,
        })
        .zip(&plans)
        .enumerate()
        .filter_map(|(k, ((p, st), plan))| match plan {
            Plan::Hash(was) => Some((k, p, st, was.map_or(&[][..], |i| &old[i].chunks[..]))),
            _ => None,
        })
        .collect();
    let total: u64 = to_hash.iter().map(|(_, _, st, _)| st.size).sum();
    progress.phase("hash", total);
    to_hash.sort_by_key(|f| std::cmp::Reverse(f.2.size));
    let hashed: Vec<(usize, Result<Listed>)> = to_hash
        .into_par_iter()
        .map(|(k, p, st, was)| {
            let abs = root.join(p);
            let read = match early {
                Some(early) if early_worthy(st.size, chunker) => {
                    let told = EarlyFile::new(p, st.size, was, early);
                    rechunk_file_each(&abs, st, chunker, was, &|c| told.segment(c))
                }
                _ => rechunk_file(&abs, st, chunker, was),
            };
            let hashed = read.and_then(|chunks| {
                progress.advance(st.size);
                let st = stat_key(&std::fs::symlink_metadata(&abs).ctx("stat", &abs)?);
                Ok((st, crate::chunker::specs(&chunks)))
            });
            (k, hashed)
        })
        .collect();
    let mut done: Vec<Option<Listed>> = Vec::new();
    done.resize_with(plans.len(), || None);
    let mut tree = Tree {
        scanned_at_ns: started,
        chunker: Some(chunker.id()),
        ..Tree::default()
    };
    for (k, h) in hashed {
        let (st, specs) = h?;
        tree.bytes_hashed += st.size;
        tree.files_hashed += 1;
        done[k] = Some((st, specs));
    }
    let reused = plans.iter().filter(|p| matches!(p, Plan::Reuse(_))).count();
    // Anything but the same files under the same paths: saved, so the next scan finds them
    // by path (a renamed directory's files are otherwise looked up by stat every time).
    tree.index_outdated = outdated || reused != old.len() || reused != plans.len();
    // Copies first: the entries they copy may be moved out below.
    for (k, plan) in plans.iter().enumerate() {
        if let Plan::Moved(i) = plan {
            done[k] = Some((old[*i].stat, old[*i].chunks.clone()));
        }
    }

    let mut entries = Vec::with_capacity(items.len());
    let mut files = Vec::with_capacity(plans.len());
    let mut k = 0;
    for it in items {
        match it {
            Item::Dir(p) => entries.push((p, EntryKind::Dir)),
            Item::Symlink(p, t) => entries.push((p, EntryKind::Symlink { target: t })),
            Item::Skipped(w) => tree.warnings.push(w),
            Item::File(p, st, mode) => {
                let (st, chunks) = match &plans[k] {
                    Plan::Reuse(i) => (st, std::mem::take(&mut old[*i].chunks)),
                    _ => done[k]
                        .take()
                        .expect("every file is reused, copied or hashed"),
                };
                k += 1;
                entries.push((
                    p.clone(),
                    EntryKind::File {
                        size: st.size,
                        mode,
                        mtime_ns: st.mtime_ns,
                        digest: crate::chunker::file_digest(&chunks),
                    },
                ));
                files.push(SourceIndexEntry {
                    path: p,
                    stat: st,
                    chunks,
                });
            }
        }
    }
    // Sorted and unique: a bulk build, no per-entry search.
    tree.entries = entries.into_iter().collect();
    tree.files = files;
    log::debug!(
        "scan: {} files hashed ({} bytes), {} from the index; {:.0?} in all",
        tree.files_hashed,
        tree.bytes_hashed,
        tree.files.len() as u64 - tree.files_hashed,
        clock.elapsed()
    );
    Ok(tree)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn filter(root: &Path, excludes: &[&str], gitignore: bool) -> Filter {
        Filter::new(
            root,
            &ScanOptions {
                excludes: excludes.iter().map(|s| s.to_string()).collect(),
                respect_gitignore: gitignore,
            },
        )
        .unwrap()
    }

    #[test]
    fn excluded_is_its_definition_over_every_parent() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        fs::create_dir_all(r.join("a/keep")).unwrap();
        fs::write(r.join(".gitignore"), "*.log\ntmp/\n").unwrap();
        fs::write(r.join("a/.gitignore"), "!important.log\nkeep/\n").unwrap();
        fs::write(r.join("a/b/.mtrignore"), "c/\n*.bin\n").unwrap();
        let paths = [
            "x.log",
            "a/x.log",
            "a/important.log",
            "a/b/important.log",
            "a/keep",
            "a/keep/f.py",
            "a/b/c",
            "a/b/c/d/e.py",
            "a/b/w.bin",
            "a/b/w.py",
            "tmp/a/b.py",
            "z/tmp/y.py",
            "gone/deeper/still.py",
            ".mtr-sync/index",
        ];
        for (excludes, gitignore) in [(&["*.pyc", "d/"][..], true), (&[][..], false)] {
            let f = filter(r, excludes, gitignore);
            for p in paths {
                for is_dir in [false, true] {
                    let mut defined = false;
                    let mut end = 0;
                    while let Some(i) = p[end..].find('/') {
                        defined |= f.excluded_here(&p[..end + i], true);
                        end += i + 1;
                    }
                    defined |= f.excluded_here(p, is_dir);
                    assert_eq!(f.excluded(p, is_dir), defined, "{p} (dir: {is_dir})");
                }
            }
        }
        let f = Filter::download(r);
        for p in [
            "a/x.log",
            ".mtr-sync",
            ".mtr-sync/index",
            "a/.mtr-sync",
            ".mtr-syncx",
        ] {
            let defined = p == STATE_DIR || p.starts_with(".mtr-sync/");
            assert_eq!(f.excluded(p, false), defined, "{p}");
        }
    }

    #[test]
    fn excludes_gitignore_and_mtrignore_apply_at_every_level() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("src/build")).unwrap();
        fs::create_dir_all(r.join(".mtr")).unwrap();
        fs::write(r.join(".gitignore"), "*.log\n").unwrap();
        fs::write(r.join("src/.gitignore"), "build/\n!keep.log\n").unwrap();
        fs::write(r.join(".mtrignore"), "secret.txt\n").unwrap();
        let f = filter(r, &["__pycache__/", "*.pyc"], true);
        assert!(f.excluded("a.log", false));
        assert!(!f.excluded("src/keep.log", false));
        assert!(f.excluded("src/build", true));
        assert!(f.excluded("src/build/x.o", false));
        assert!(f.excluded("x/__pycache__/m.pyc", false));
        assert!(f.excluded("m.pyc", false));
        assert!(f.excluded("secret.txt", false));
        assert!(f.excluded(".mtr", true));
        assert!(f.excluded(".mtr/config.yaml", false));
        assert!(!f.excluded("src/main.py", false));
        let f = filter(r, &[], false);
        assert!(!f.excluded("a.log", false));
        assert!(f.excluded("secret.txt", false));
    }

    #[test]
    fn the_walk_lists_in_path_order() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // Names around '/' in byte order: '-' and '.' sort before it, '0' and 'a' after.
        for dir in ["a", "a/x", "a/x/z", "a-b", "a0", "b/c/d", "A", "é"] {
            fs::create_dir_all(r.join(dir)).unwrap();
        }
        for file in [
            "a.txt", "a/x.y", "a/x/z/f", "a/x0", "a-b/1", "a0/2", "ab", "b/c.d", "b/c/d/e", "A/.h",
            "é/ü", " sp",
        ] {
            fs::write(r.join(file), file).unwrap();
        }
        std::os::unix::fs::symlink("a", r.join("a.link")).unwrap();
        let listed: Vec<String> =
            walk(r, "", &filter(r, &[], true), &Rules::default(), &NoProgress)
                .unwrap()
                .iter()
                .map(|i| i.path().to_string())
                .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
        assert_eq!(listed.len(), 23);
    }

    /// The index a scan leaves, as the next scan loads it.
    fn owned(t: &Tree) -> SourceIndex {
        let ix = t.index();
        SourceIndex {
            protocol: ix.protocol,
            chunker: ix.chunker,
            scanned_at_ns: ix.scanned_at_ns,
            files: ix.files.to_vec(),
        }
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/empty")).unwrap();
        fs::write(r.join("a/x.py"), "print(1)\n").unwrap();
        std::os::unix::fs::symlink("x.py", r.join("a/link")).unwrap();
        let f = filter(r, &[], true);
        let c = Chunker::default();
        let t1 = scan(r, &f, || None, &c, &NoProgress).unwrap();
        let mut ix = owned(&t1);
        assert_eq!(t1.files_hashed, 1);
        assert!(matches!(t1.entries["a/empty"], EntryKind::Dir));
        assert!(matches!(&t1.entries["a/link"], EntryKind::Symlink { target } if target == "x.py"));
        // Pretend the last scan was long ago so the mtime is not "racy".
        ix.scanned_at_ns += 10_000_000_000;
        let t2 = scan(r, &f, || Some(ix.clone()), &c, &NoProgress).unwrap();
        assert_eq!(t2.files_hashed, 0);
        assert_eq!(t1.entries, t2.entries);
        assert!(!t2.index_outdated, "nothing changed: nothing to save");
        // A renamed directory: its file found by stat, not read, and the index saved anew.
        fs::rename(r.join("a"), r.join("b")).unwrap();
        let moved = scan(r, &f, || Some(ix.clone()), &c, &NoProgress).unwrap();
        assert_eq!(moved.files_hashed, 0);
        assert!(moved.index_outdated);
        assert_eq!(moved.chunks("b/x.py"), t1.chunks("a/x.py"));
        let mut saved = owned(&moved);
        saved.scanned_at_ns += 10_000_000_000;
        let again = scan(r, &f, || Some(saved), &c, &NoProgress).unwrap();
        assert!(!again.index_outdated);
        fs::rename(r.join("b"), r.join("a")).unwrap();
        // A racily-clean entry (modified right before the scan) is hashed again.
        ix.scanned_at_ns -= 10_000_000_000;
        ix.scanned_at_ns = fs::metadata(r.join("a/x.py"))
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
            + 50_000_000;
        let t3 = scan(r, &f, || Some(ix), &c, &NoProgress).unwrap();
        assert_eq!(t3.files_hashed, 1);
    }

    #[test]
    fn special_files_are_skipped_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = filter(d.path(), &[], false);
        let t = scan(d.path(), &f, || None, &Chunker::default(), &NoProgress).unwrap();
        assert!(t.entries.is_empty());
        assert_eq!(t.warnings.len(), 1);
        assert!(t.warnings[0].contains("pipe"), "{:?}", t.warnings);
    }
}
