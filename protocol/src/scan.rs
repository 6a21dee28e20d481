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
use crate::wire::{ChunkSpec, EntryKind, SourceIndex, SourceIndexEntry, StatKey, PROTOCOL_VERSION};

/// Files modified this close before the previous scan are hashed again (see `scan`).
const RACY_WINDOW_NS: i64 = 100_000_000;
/// Name of mtr's own ignore file, honoured at every level.
pub const MTRIGNORE: &str = ".mtrignore";

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

    /// Ignore files of directory `dir` (relative, "" for the root), loaded once.
    fn dir_rules(&self, dir: &str) -> Arc<Vec<Gitignore>> {
        if let Some(r) = self.dirs.lock().unwrap().get(dir) {
            return r.clone();
        }
        let abs = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let mut rules = Vec::new();
        let names: &[&str] = if self.respect_gitignore {
            &[".gitignore", MTRIGNORE]
        } else {
            &[MTRIGNORE]
        };
        for name in names {
            let f = abs.join(name);
            if f.is_file() {
                let mut b = GitignoreBuilder::new(&abs);
                if b.add(&f).is_none() {
                    if let Ok(g) = b.build() {
                        rules.push(g);
                    }
                } else {
                    log::warn!("some lines of {} could not be parsed", f.display());
                    if let Ok(g) = b.build() {
                        rules.push(g);
                    }
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

    /// Is `rel` excluded, given that its parent directories are not?
    pub fn excluded_here(&self, rel: &str, is_dir: bool) -> bool {
        if self.everything {
            return rel == STATE_DIR;
        }
        if !rel.contains('/') && (rel == CONFIG_DIR || rel == STATE_DIR) {
            return true;
        }
        let abs = self.root.join(rel);
        if self.excludes.matched(&abs, is_dir).is_ignore() {
            return true;
        }
        // Deeper ignore files take precedence; within one file the last match wins.
        let mut dir = rel;
        loop {
            dir = match dir.rfind('/') {
                Some(i) => &dir[..i],
                None if dir.is_empty() => break,
                None => "",
            };
            let rules = self.dir_rules(dir);
            for g in rules.iter().rev() {
                match g.matched(&abs, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                    Match::None => {}
                }
            }
            if dir.is_empty() {
                break;
            }
        }
        false
    }

    /// Is `rel` or any of its parent directories excluded?
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            if self.excluded_here(&rel[..end + i], true) {
                return true;
            }
            end += i + 1;
        }
        self.excluded_here(rel, is_dir)
    }
}

/// A scanned tree: entries in path order and the chunks of every file.
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: std::collections::BTreeMap<String, EntryKind>,
    pub chunks: HashMap<String, Vec<ChunkRef>>,
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
        Tree {
            entries,
            chunks: self
                .chunks
                .into_iter()
                .map(|(p, c)| (nested(p), c))
                .collect(),
            ..self
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

fn walk(root: &Path, rel_dir: &str, filter: &Filter, progress: &dyn Progress) -> Result<Vec<Item>> {
    let abs = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel_dir)
    };
    let rd = std::fs::read_dir(&abs).ctx("read directory", &abs)?;
    let mut items = Vec::new();
    let mut subdirs = Vec::new();
    for de in rd {
        let de = de.ctx("read directory", &abs)?;
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
        let path = de.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        let ft = meta.file_type();
        if filter.excluded_here(&rel, ft.is_dir()) {
            continue;
        }
        if ft.is_dir() {
            subdirs.push(rel.clone());
            items.push(Item::Dir(rel));
        } else if ft.is_file() {
            items.push(Item::File(
                rel,
                stat_key(&meta),
                meta.permissions().mode() & 0o777,
            ));
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).ctx("read symlink", &path)?;
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
                path.display()
            )));
        }
    }
    progress.advance(items.len() as u64);
    let nested: Vec<Result<Vec<Item>>> = subdirs
        .par_iter()
        .map(|d| walk(root, d, filter, progress))
        .collect();
    for n in nested {
        items.extend(n?);
    }
    Ok(items)
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
            chunker.chunk_input(&input)
        } else {
            chunker.rechunk_input(&input, old)
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

/// Chunk references (with offsets) of a chunk list.
fn refs(specs: &[ChunkSpec]) -> Vec<ChunkRef> {
    let mut off = 0u64;
    specs
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
        .collect()
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
    let mut tree = Tree::default();
    let (st, chunks) = match known {
        Some((e, _)) => (st, refs(&e.chunks)),
        None => {
            progress.phase("hash", st.size);
            let old = recorded.map_or(&[][..], |(e, _)| &e.chunks[..]);
            let chunks = rechunk_file(path, &st, chunker, old)?;
            progress.advance(st.size);
            tree.files_hashed = 1;
            tree.bytes_hashed = st.size;
            (
                stat_key(&std::fs::symlink_metadata(path).ctx("stat", path)?),
                chunks,
            )
        }
    };
    let specs = crate::chunker::specs(&chunks);
    tree.entries.insert(
        name.to_string(),
        EntryKind::File {
            size: st.size,
            mode: meta.permissions().mode() & 0o777,
            mtime_ns: st.mtime_ns,
            digest: crate::chunker::file_digest(&specs),
        },
    );
    tree.chunks.insert(name.to_string(), chunks);
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

/// A file chunked by a scan: its path, stat after reading, permission bits and chunks.
type Hashed = (String, StatKey, u32, Vec<ChunkRef>);

/// Scan `root`: walk it with `filter`, reuse chunk lists from `index` for files whose stat is
/// unchanged, chunk the rest on all cores. Returns the tree and the new index.
pub fn scan(
    root: &Path,
    filter: &Filter,
    index: Option<&SourceIndex>,
    chunker: &Chunker,
    progress: &dyn Progress,
) -> Result<(Tree, SourceIndex)> {
    let started = now_ns();
    progress.phase("scan", 0);
    let items = walk(root, "", filter, progress)?;

    let known: HashMap<&str, &SourceIndexEntry> = match index {
        Some(ix) if ix.protocol == PROTOCOL_VERSION && ix.chunker == Some(chunker.id()) => {
            ix.files.iter().map(|e| (e.path.as_str(), e)).collect()
        }
        _ => HashMap::new(),
    };
    // A file whose directory was renamed keeps its whole stat, so it is found under its old
    // path: by inode and a ctime older than the last scan, which a file created since (even
    // one reusing the inode) cannot have. Built at the first file not found by its path (a
    // no-op never needs it).
    let mut moved: Option<HashMap<&StatKey, &SourceIndexEntry>> = None;
    let scanned_at = index.map(|i| i.scanned_at_ns).unwrap_or(i64::MIN);
    let trusted = |st: &StatKey| trusted(st, scanned_at);
    let settled = |st: &StatKey| {
        let changed = StatKey {
            mtime_ns: st.ctime_ns,
            ..*st
        };
        trusted(st) && trusted(&changed)
    };

    let mut tree = Tree::default();
    // Files to hash, with their chunks before they changed, if known.
    let mut to_hash: Vec<(String, StatKey, u32, &[ChunkSpec])> = Vec::new();
    let mut reused: Vec<(String, StatKey, u32, &[ChunkSpec])> = Vec::new();
    for it in items {
        match it {
            Item::Dir(p) => {
                tree.entries.insert(p, EntryKind::Dir);
            }
            Item::Symlink(p, t) => {
                tree.entries.insert(p, EntryKind::Symlink { target: t });
            }
            Item::Skipped(w) => tree.warnings.push(w),
            Item::File(p, st, mode) => {
                let hit = match known.get(p.as_str()).copied() {
                    Some(e) if e.stat == st => Some(e).filter(|_| trusted(&st)),
                    _ => moved
                        .get_or_insert_with(|| known.values().map(|e| (&e.stat, *e)).collect())
                        .get(&st)
                        .copied()
                        .filter(|_| settled(&st)),
                };
                match hit {
                    Some(e) => reused.push((p, st, mode, &e.chunks)),
                    None => {
                        let old = known.get(p.as_str()).map_or(&[][..], |e| &e.chunks[..]);
                        to_hash.push((p, st, mode, old))
                    }
                }
            }
        }
    }

    let total: u64 = to_hash.iter().map(|(_, s, _, _)| s.size).sum();
    progress.phase("hash", total);
    // Big files first so the cores stay busy to the end.
    to_hash.sort_by_key(|f| std::cmp::Reverse(f.1.size));
    let hashed: Vec<Result<Hashed>> = to_hash
        .into_par_iter()
        .map(|(p, st, mode, old)| {
            let abs = root.join(&p);
            let chunks = rechunk_file(&abs, &st, chunker, old)?;
            progress.advance(st.size);
            let st = stat_key(&std::fs::symlink_metadata(&abs).ctx("stat", &abs)?);
            Ok((p, st, mode, chunks))
        })
        .collect();

    let mut new_index = SourceIndex {
        protocol: PROTOCOL_VERSION,
        chunker: Some(chunker.id()),
        scanned_at_ns: started,
        files: Vec::new(),
    };
    let mut add = |tree: &mut Tree, p: String, st: StatKey, mode: u32, chunks: Vec<ChunkRef>| {
        let specs = crate::chunker::specs(&chunks);
        tree.entries.insert(
            p.clone(),
            EntryKind::File {
                size: st.size,
                mode,
                mtime_ns: st.mtime_ns,
                digest: crate::chunker::file_digest(&specs),
            },
        );
        new_index.files.push(SourceIndexEntry {
            path: p.clone(),
            stat: st,
            chunks: specs,
        });
        tree.chunks.insert(p, chunks);
    };
    for h in hashed {
        let (p, st, mode, chunks) = h?;
        tree.bytes_hashed += st.size;
        tree.files_hashed += 1;
        add(&mut tree, p, st, mode, chunks);
    }
    for (p, st, mode, specs) in reused {
        add(&mut tree, p, st, mode, refs(specs));
    }
    Ok((tree, new_index))
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
    fn unchanged_files_are_not_read_again() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/empty")).unwrap();
        fs::write(r.join("a/x.py"), "print(1)\n").unwrap();
        std::os::unix::fs::symlink("x.py", r.join("a/link")).unwrap();
        let f = filter(r, &[], true);
        let c = Chunker::default();
        let (t1, mut ix) = scan(r, &f, None, &c, &NoProgress).unwrap();
        assert_eq!(t1.files_hashed, 1);
        assert!(matches!(t1.entries["a/empty"], EntryKind::Dir));
        assert!(matches!(&t1.entries["a/link"], EntryKind::Symlink { target } if target == "x.py"));
        // Pretend the last scan was long ago so the mtime is not "racy".
        ix.scanned_at_ns += 10_000_000_000;
        let (t2, _) = scan(r, &f, Some(&ix), &c, &NoProgress).unwrap();
        assert_eq!(t2.files_hashed, 0);
        assert_eq!(t1.entries, t2.entries);
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
        let (t3, _) = scan(r, &f, Some(&ix), &c, &NoProgress).unwrap();
        assert_eq!(t3.files_hashed, 1);
    }

    #[test]
    fn special_files_are_skipped_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = filter(d.path(), &[], false);
        let (t, _) = scan(d.path(), &f, None, &Chunker::default(), &NoProgress).unwrap();
        assert!(t.entries.is_empty());
        assert_eq!(t.warnings.len(), 1);
        assert!(t.warnings[0].contains("pipe"), "{:?}", t.warnings);
    }
}
