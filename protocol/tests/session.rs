//! Both roles of a sync session in one process over a socket pair: random trees, every kind of
//! mutation, and the sink's tree compared with the source's after each sync.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use protocol::chunker::Chunker;
use protocol::codec::{FrameReader, FrameWriter};
use protocol::scan::{Filter, NoProgress, ScanOptions, Segment};
use protocol::source::{self, Pipeline, Report, SourceConfig};

const VERSION: &str = "test";

struct Pair {
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
    state: tempfile::TempDir,
    excludes: Vec<String>,
    pipeline: Pipeline,
    chunker: Chunker,
    /// Scan first and send the segments of long changed files as prefills (as mtr does while
    /// the scan runs), then sync; `between` runs after the prefills were sent.
    prefill: bool,
    between: Option<Box<dyn Fn()>>,
    /// The segments sent as prefills by the last sync.
    prefilled: std::sync::Mutex<Vec<Segment>>,
    /// Bytes the source wrote to the sink in the last sync.
    sent: Arc<AtomicU64>,
    /// Of those, the bytes written with the prefills, before the first batch.
    ahead: AtomicU64,
    /// Whether the prefills are sent as if the scan still ran (their chunks travel with
    /// them), or as after it (their chunks go with the batch).
    scanning: bool,
}

/// A writer that counts what goes through it.
struct Counting<W> {
    inner: W,
    n: Arc<AtomicU64>,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Pair {
    fn new() -> Pair {
        Pair {
            src: tempfile::tempdir().unwrap(),
            dst: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            excludes: Vec::new(),
            pipeline: Pipeline::default(),
            chunker: Chunker::default(),
            prefill: false,
            between: None,
            prefilled: Default::default(),
            sent: Default::default(),
            ahead: Default::default(),
            scanning: true,
        }
    }
    fn src(&self) -> &Path {
        self.src.path()
    }
    fn dst(&self) -> &Path {
        self.dst.path()
    }

    fn try_sync(&self, dry_run: bool) -> protocol::Result<Report> {
        let (a, b) = UnixStream::pair().unwrap();
        let dst = self.dst().to_path_buf();
        let sink = std::thread::spawn(move || {
            let r = b.try_clone().unwrap();
            protocol::sink::serve(r, b, VERSION)
        });
        let mut r = FrameReader::new(a.try_clone().unwrap());
        self.sent.store(0, Ordering::Relaxed);
        let mut w = FrameWriter::new(Counting {
            inner: a,
            n: self.sent.clone(),
        });
        let ack = source::handshake(&mut r, &mut w, dst.to_str().unwrap(), VERSION)?;
        let filter = Filter::new(
            self.src(),
            &ScanOptions {
                excludes: self.excludes.clone(),
                respect_gitignore: true,
            },
        )?;
        let cfg = SourceConfig {
            root: self.src(),
            filter: &filter,
            chunker: self.chunker,
            index_path: self.state.path().join("index"),
            state_path: self.state.path().join("state"),
            dry_run,
            pipeline: self.pipeline,
        };
        let report = if self.prefill {
            let found = std::sync::Mutex::new(Vec::new());
            let local = source::scan_local_early(
                &cfg,
                &NoProgress,
                Some(&|seg| found.lock().unwrap().push(seg)),
            )?;
            let found = found.into_inner().unwrap();
            let mut prefills = source::Prefills::default();
            let mut segs = found.iter().cloned();
            let scanning = || self.scanning;
            prefills.send_all(&mut r, &mut w, self.src(), |_| segs.next(), &scanning)?;
            *self.prefilled.lock().unwrap() = found;
            self.ahead
                .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
            if let Some(between) = &self.between {
                between();
            }
            source::sync_scanned(&mut r, &mut w, &ack, &cfg, &local, &prefills, &NoProgress)
        } else {
            source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress)
        };
        let _ = source::bye(&mut w);
        drop(w);
        let sink_result = sink.join().unwrap();
        let report = report?;
        sink_result?;
        Ok(report)
    }

    fn sync(&self) -> Report {
        let r = self.try_sync(false).unwrap();
        assert_trees_equal(self.src(), self.dst(), &self.excludes);
        r
    }
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>, u32, i64),
    Link(PathBuf),
}

fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, rel: &str, skip: &[&str], out: &mut BTreeMap<String, Node>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for de in fs::read_dir(&dir).unwrap() {
            let de = de.unwrap();
            let name = de.file_name().into_string().unwrap();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if skip.contains(&r.as_str()) {
                continue;
            }
            let m = fs::symlink_metadata(de.path()).unwrap();
            if m.file_type().is_symlink() {
                out.insert(r, Node::Link(fs::read_link(de.path()).unwrap()));
            } else if m.is_dir() {
                out.insert(r.clone(), Node::Dir);
                walk(root, &r, skip, out);
            } else {
                use std::os::unix::fs::MetadataExt;
                let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                out.insert(
                    r,
                    Node::File(
                        fs::read(de.path()).unwrap(),
                        m.permissions().mode() & 0o777,
                        mtime,
                    ),
                );
            }
        }
    }
    walk(root, "", skip, &mut out);
    out
}

fn assert_trees_equal(src: &Path, dst: &Path, excludes: &[String]) {
    let mut skip = vec![".mtr", ".mtr-sync"];
    skip.extend(excludes.iter().map(|s| s.as_str()));
    let a = snapshot(src, &skip);
    let b = snapshot(dst, &skip);
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k} differs");
    }
    for k in b.keys() {
        assert!(a.contains_key(k), "{k} exists only on the sink");
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
}

fn random_tree(root: &Path, rng: &mut Rng, files: usize) {
    let dirs = ["", "src", "src/model", "data", "ünïcødé 目录", "build/obj"];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..files {
        let d = dirs[rng.below(dirs.len() as u64) as usize];
        let size = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(4000) as usize,
            7 | 8 => rng.below(200_000) as usize,
            _ => 300_000 + rng.below(700_000) as usize,
        };
        let p = root.join(d).join(format!("f{i}.bin"));
        fs::write(&p, rng.bytes(size)).unwrap();
    }
    fs::create_dir_all(root.join("empty/nested")).unwrap();
    std::os::unix::fs::symlink("../src", root.join("data/link-to-src")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    age_files(root);
}

/// Give every file an mtime well in the past, as files a user did not just edit have (files
/// modified within the index's racy window are re-read on purpose).
fn age_files(root: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for e in walk_files(root) {
        fs::File::options()
            .write(true)
            .open(&e)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for de in fs::read_dir(root).unwrap() {
        let de = de.unwrap();
        let ft = de.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk_files(&de.path()));
        } else if ft.is_file() {
            out.push(de.path());
        }
    }
    out
}

#[test]
fn first_sync_then_noop_sends_no_data() {
    let p = Pair::new();
    random_tree(p.src(), &mut Rng(1), 60);
    let r1 = p.sync();
    assert!(!r1.no_op);
    assert!(r1.chunks_sent > 0);
    let r2 = p.sync();
    assert!(r2.no_op, "second sync should be a no-op: {:?}", r2.plan);
    assert_eq!(r2.chunks_sent, 0);
    assert_eq!(r2.files_hashed, 0, "unchanged files must not be re-read");
}

#[test]
fn every_send_pipeline_shape_delivers_the_same_tree() {
    for (window, depth) in [(0, 0), (1, 1), (3, 5), (1000, 1)] {
        let mut p = Pair::new();
        p.pipeline = Pipeline { window, depth };
        random_tree(p.src(), &mut Rng(window as u64 + 7), 40);
        let r = p.sync();
        assert!(
            r.chunks_sent > 0,
            "window {window}, depth {depth}: nothing sent"
        );
    }
}

#[test]
fn every_mutation_kind_converges() {
    let p = Pair::new();
    let mut rng = Rng(2);
    random_tree(p.src(), &mut rng, 40);
    p.sync();
    let s = p.src();
    // edit
    fs::write(s.join("src/edited.py"), "print('v1')\n").unwrap();
    p.sync();
    fs::write(s.join("src/edited.py"), "print('v2')\n").unwrap();
    p.sync();
    // add a big file, then insert bytes at its head
    let big = rng.bytes(3 << 20);
    fs::write(s.join("data/big.bin"), &big).unwrap();
    p.sync();
    let mut edited = b"HEADER".to_vec();
    edited.extend_from_slice(&big);
    fs::write(s.join("data/big.bin"), &edited).unwrap();
    let r = p.sync();
    assert!(
        r.raw_bytes_sent < 600_000,
        "head insertion sent {} bytes",
        r.raw_bytes_sent
    );
    // rename a directory: content is copied on the sink, not resent
    fs::rename(s.join("data"), s.join("data2")).unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0, "a renamed directory resent data");
    // chmod +x
    fs::set_permissions(s.join("src/edited.py"), fs::Permissions::from_mode(0o755)).unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0);
    // symlink changes target; empty dir; unicode name
    fs::remove_file(s.join("dangling")).unwrap();
    std::os::unix::fs::symlink("src/edited.py", s.join("dangling")).unwrap();
    fs::create_dir_all(s.join("new/empty/dir")).unwrap();
    fs::write(s.join("ünïcødé 目录/ファイル.txt"), "こんにちは").unwrap();
    p.sync();
    // file -> dir and dir -> file
    fs::remove_file(s.join("src/edited.py")).unwrap();
    fs::create_dir_all(s.join("src/edited.py/inner")).unwrap();
    fs::write(s.join("src/edited.py/inner/x"), "x").unwrap();
    fs::remove_dir_all(s.join("new")).unwrap();
    fs::write(s.join("new"), "now a file").unwrap();
    p.sync();
    // symlink -> file, file -> symlink
    fs::remove_file(s.join("dangling")).unwrap();
    fs::write(s.join("dangling"), "file now").unwrap();
    p.sync();
    // delete everything
    for e in fs::read_dir(s).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            fs::remove_dir_all(e.path()).unwrap();
        } else {
            fs::remove_file(e.path()).unwrap();
        }
    }
    p.sync();
}

#[test]
fn remote_created_files_survive_and_deleted_files_go() {
    let p = Pair::new();
    fs::create_dir_all(p.src().join("out")).unwrap();
    fs::write(p.src().join("train.py"), "x").unwrap();
    fs::write(p.src().join("out/keep.txt"), "x").unwrap();
    p.sync();
    fs::write(p.dst().join("out/checkpoint.pt"), "remote work").unwrap();
    fs::write(p.dst().join("log.txt"), "remote log").unwrap();
    fs::remove_dir_all(p.src().join("out")).unwrap();
    p.try_sync(false).unwrap();
    assert_eq!(
        fs::read(p.dst().join("out/checkpoint.pt")).unwrap(),
        b"remote work"
    );
    assert_eq!(fs::read(p.dst().join("log.txt")).unwrap(), b"remote log");
    assert!(!p.dst().join("out/keep.txt").exists());
    assert!(p.dst().join("train.py").exists());
}

#[test]
fn a_file_changed_on_the_sink_is_restored() {
    let p = Pair::new();
    fs::write(p.src().join("a.py"), "original").unwrap();
    p.sync();
    fs::write(p.dst().join("a.py"), "changed remotely").unwrap();
    let r = p.sync();
    assert!(!r.no_op);
    fs::remove_file(p.dst().join("a.py")).unwrap();
    p.sync();
}

#[test]
fn excluded_paths_are_neither_sent_nor_deleted() {
    let mut p = Pair::new();
    fs::write(p.src().join("a.py"), "a").unwrap();
    fs::write(p.src().join("big.ckpt"), "local ckpt").unwrap();
    p.sync();
    p.excludes = vec!["*.ckpt".into()];
    fs::write(p.src().join("big.ckpt"), "local ckpt v2").unwrap();
    fs::write(p.src().join("other.ckpt"), "never sent").unwrap();
    p.try_sync(false).unwrap();
    assert_eq!(fs::read(p.dst().join("big.ckpt")).unwrap(), b"local ckpt");
    assert!(!p.dst().join("other.ckpt").exists());
    fs::remove_file(p.src().join("big.ckpt")).unwrap();
    p.try_sync(false).unwrap();
    assert!(
        p.dst().join("big.ckpt").exists(),
        "an excluded path was deleted"
    );
    let r = p.try_sync(false).unwrap();
    assert!(r.no_op, "{:?}", r.plan);
}

#[test]
fn a_lost_client_state_falls_back_to_listing_the_sink() {
    let p = Pair::new();
    random_tree(p.src(), &mut Rng(5), 20);
    p.sync();
    fs::remove_file(p.state.path().join("state")).unwrap();
    fs::remove_file(p.state.path().join("index")).unwrap();
    let r = p.sync();
    assert!(r.no_op);
    fs::write(p.src().join("src/new.py"), "new").unwrap();
    fs::remove_file(p.state.path().join("state")).unwrap();
    let r = p.sync();
    assert_eq!(r.plan.len(), 1, "{:?}", r.plan);
}

#[test]
fn dry_run_changes_nothing() {
    let p = Pair::new();
    fs::write(p.src().join("a.py"), "a").unwrap();
    let r = p.try_sync(true).unwrap();
    assert_eq!(r.plan.len(), 1);
    assert!(!p.dst().join("a.py").exists());
}

#[test]
fn copies_and_duplicates_travel_once() {
    let p = Pair::new();
    let data = Rng(9).bytes(2 << 20);
    fs::write(p.src().join("a.bin"), &data).unwrap();
    p.sync();
    fs::write(p.src().join("copy1.bin"), &data).unwrap();
    fs::create_dir(p.src().join("sub")).unwrap();
    fs::write(p.src().join("sub/copy2.bin"), &data).unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0);
}

#[test]
fn an_edit_in_a_large_tree_finds_the_chunks_it_names_alone() {
    // The sink looks up the few chunks a small batch names instead of locating all it holds.
    let p = Pair::new();
    let big = Rng(21).bytes(16 << 20);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    p.sync();
    fs::write(p.src().join("head.bin"), &big[..400_000]).unwrap();
    let r = p.sync();
    assert!(r.raw_bytes_sent < 300_000, "{}", r.raw_bytes_sent);
    // The only file holding them goes in the same sync: what cannot be copied travels.
    fs::write(p.src().join("head2.bin"), &big[..800_000]).unwrap();
    fs::remove_file(p.src().join("big.bin")).unwrap();
    fs::remove_file(p.src().join("head.bin")).unwrap();
    p.sync();
}

#[test]
fn long_chunk_lists_kept_aside_serve_later_syncs() {
    let p = Pair::new();
    let aside = p.dst().join(".mtr-sync/chunks");
    let listed = || fs::read_dir(&aside).map_or(0, |rd| rd.count());
    let mut big = Rng(22).bytes(32 << 20);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    fs::write(p.src().join("small.txt"), "small").unwrap();
    p.sync();
    assert_eq!(
        listed(),
        1,
        "the big file's list is kept aside, the small one's is not"
    );
    // An edit in the middle reuses the rest, through the list read back from its file; the
    // old list goes.
    big[16 << 20..(16 << 20) + 1000].fill(7);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    let r = p.sync();
    assert!(r.raw_bytes_sent < 1 << 20, "{}", r.raw_bytes_sent);
    assert_eq!(listed(), 1);
    // A lost list costs data, never correctness.
    for de in fs::read_dir(&aside).unwrap() {
        fs::remove_file(de.unwrap().path()).unwrap();
    }
    big[..1000].fill(9);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    fs::write(p.src().join("copy.bin"), &big[8 << 20..]).unwrap();
    let r = p.sync();
    assert!(r.raw_bytes_sent > 16 << 20, "{}", r.raw_bytes_sent);
    assert_eq!(listed(), 2, "both files' lists are kept aside again");
}

#[test]
fn a_long_list_no_sync_reads_stays_kept_aside_through_moves_and_touches() {
    let p = Pair::new();
    let aside = p.dst().join(".mtr-sync/chunks");
    let listed = || fs::read_dir(&aside).map_or(0, |rd| rd.count());
    let mut big = Rng(24).bytes(32 << 20);
    fs::create_dir(p.src().join("ckpt")).unwrap();
    fs::write(p.src().join("ckpt/big.bin"), &big).unwrap();
    fs::write(p.src().join("small.txt"), "small").unwrap();
    // Enough short lists that an edit's chunks are looked up in them alone.
    fs::create_dir(p.src().join("src")).unwrap();
    for i in 0..40 {
        fs::write(p.src().join(format!("src/m{i}.py")), format!("# {i}")).unwrap();
    }
    p.sync();
    assert_eq!(listed(), 1);
    // Syncs that never need the big file's list (its directory renamed with an edit beside
    // it; then the file touched) move and re-record it unread: it must stay kept aside.
    fs::rename(p.src().join("ckpt"), p.src().join("ckpt2")).unwrap();
    fs::write(p.src().join("small.txt"), "edited").unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 6);
    assert_eq!(listed(), 1, "the moved file's list was dropped");
    let f = fs::File::options()
        .write(true)
        .open(p.src().join("ckpt2/big.bin"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(listed(), 1, "the touched file's list was dropped");
    // Then an edit in its middle reuses the rest through that list.
    big[16 << 20..(16 << 20) + 1000].fill(7);
    fs::write(p.src().join("ckpt2/big.bin"), &big).unwrap();
    let r = p.sync();
    assert!(r.raw_bytes_sent < 1 << 20, "{}", r.raw_bytes_sent);
    assert!(r.sink.bytes_copied_locally > 30 << 20, "{:?}", r.sink);
}

/// Inode numbers of the regular files under `root`, by relative path.
fn inodes(root: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    walk_files(root)
        .into_iter()
        .map(|p| {
            let ino = fs::metadata(&p).unwrap().ino();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            (rel, ino)
        })
        .collect()
}

#[test]
fn a_renamed_directory_is_moved_on_the_sink_without_data() {
    let p = Pair::new();
    let mut rng = Rng(11);
    let s = p.src();
    for d in ["vendored/a", "vendored/b/c", "vendored/empty"] {
        fs::create_dir_all(s.join(d)).unwrap();
    }
    for i in 0..30 {
        let d = ["vendored", "vendored/a", "vendored/b/c"][i % 3];
        fs::write(
            s.join(d).join(format!("m{i}.py")),
            rng.bytes(5000 + i * 300),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("a/m1.py", s.join("vendored/link")).unwrap();
    fs::write(s.join("other.py"), "x").unwrap();
    age_files(s);
    // Files changed (ctime) just before a scan are read again by the next one, on purpose.
    std::thread::sleep(std::time::Duration::from_millis(200));
    p.sync();
    let before = inodes(&p.dst().join("vendored"));

    fs::rename(s.join("vendored"), s.join("vendored_v2")).unwrap();
    let r = p.sync();
    // The move stands for the 30 files, 5 directories and the link under it: only the move,
    // the deletes of what is not under the directory (none) and the commit are sent.
    let sent = p.sent.load(Ordering::Relaxed);
    assert!(sent < 600, "{sent} bytes sent for a renamed directory");
    assert_eq!(r.raw_bytes_sent, 0, "a renamed directory resent data");
    assert_eq!(
        r.sink.bytes_copied_locally, 0,
        "a renamed directory was copied, not moved"
    );
    assert_eq!(r.files_hashed, 0, "moved files were read again locally");
    assert_eq!(
        inodes(&p.dst().join("vendored_v2")),
        before,
        "the sink rebuilt files instead of moving them"
    );
    let r = p.sync();
    assert!(r.no_op, "moved records went stale: {:?}", r.plan);

    // Renamed back, with edits: one file changed, one added, one deleted.
    fs::rename(s.join("vendored_v2"), s.join("vendored")).unwrap();
    fs::write(s.join("vendored/a/m1.py"), "changed").unwrap();
    fs::write(s.join("vendored/b/new.py"), "new").unwrap();
    fs::remove_file(s.join("vendored/m0.py")).unwrap();
    let r = p.sync();
    assert_eq!(r.sink.bytes_copied_locally, 0, "{:?}", r.sink);
    assert!(r.raw_bytes_sent < 100, "{} bytes sent", r.raw_bytes_sent);
    assert!(p.sync().no_op);
}

/// Directories under `root` (not `root` itself), by relative path, in path order.
fn walk_dirs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in fs::read_dir(&d).unwrap() {
            let de = de.unwrap();
            if de.file_type().unwrap().is_dir() {
                let path = de.path();
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.push(rel.to_string());
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn random_directory_renames_with_edits_and_refused_moves_converge() {
    let p = Pair::new();
    let mut rng = Rng(31);
    let s = p.src();
    random_tree(s, &mut rng, 80);
    for d in ["src/model/layers/attn", "data/shards/a", "data/shards/b"] {
        fs::create_dir_all(s.join(d)).unwrap();
        for i in 0..6 {
            fs::write(
                s.join(d).join(format!("g{i}.bin")),
                rng.bytes(3000 + i * 500),
            )
            .unwrap();
        }
    }
    age_files(s);
    p.sync();
    let mut refusals = 0;
    for round in 0..12 {
        let dirs = walk_dirs(s);
        let from = dirs[rng.below(dirs.len() as u64) as usize].clone();
        // A new name beside it, or under another directory that is not inside it.
        let parents: Vec<&String> = dirs
            .iter()
            .filter(|d| **d != from && !d.starts_with(&format!("{from}/")))
            .collect();
        let parent = match rng.below(3) {
            0 if !parents.is_empty() => parents[rng.below(parents.len() as u64) as usize].clone(),
            _ => from
                .rsplit_once('/')
                .map_or(String::new(), |(p, _)| p.to_string()),
        };
        let to = if parent.is_empty() {
            format!("moved{round}")
        } else {
            format!("{parent}/moved{round}")
        };
        fs::rename(s.join(&from), s.join(&to)).unwrap();
        // Sometimes an edit, an addition and a removal inside it as well.
        let files: Vec<PathBuf> = walk_files(&s.join(&to));
        let edited = rng.below(2) == 0 && !files.is_empty();
        if edited {
            let f = &files[rng.below(files.len() as u64) as usize];
            fs::write(f, rng.bytes(2000)).unwrap();
            fs::write(s.join(&to).join(format!("new{round}.bin")), rng.bytes(500)).unwrap();
            if files.len() > 1 {
                let gone = &files[rng.below(files.len() as u64) as usize];
                let _ = fs::remove_file(gone);
            }
        }
        // Sometimes a job on the sink left a file in the old directory: the sink refuses the
        // move and the source sends what it stood for.
        let foreign = (rng.below(3) == 0).then(|| p.dst().join(&from).join("job.log"));
        if let Some(f) = &foreign {
            fs::write(f, "written on the node").unwrap();
        }
        let r = p.try_sync(false).unwrap();
        assert!(!r.no_op, "round {round}: {from} -> {to} not seen");
        if !edited {
            // Moved or copied on the sink, never sent.
            assert_eq!(r.raw_bytes_sent, 0, "round {round}: {from} -> {to}");
        }
        if let Some(f) = foreign {
            refusals += 1;
            assert_eq!(
                fs::read(&f).unwrap(),
                b"written on the node",
                "round {round}"
            );
            // The job's file goes, and the directories left only for it.
            fs::remove_file(&f).unwrap();
            let mut d = f.parent().unwrap().to_path_buf();
            while d != p.dst()
                && !s.join(d.strip_prefix(p.dst()).unwrap()).exists()
                && fs::remove_dir(&d).is_ok()
            {
                d = d.parent().unwrap().to_path_buf();
            }
        }
        assert_trees_equal(s, p.dst(), &p.excludes);
        let again = p.try_sync(false).unwrap();
        assert!(again.no_op, "round {round}: {:?}", again.plan);
    }
    assert!(
        refusals >= 2,
        "only {refusals} refused moves: pick another seed"
    );
}

#[test]
fn renamed_files_are_moved_and_swapped_contents_stay_right() {
    let p = Pair::new();
    let mut rng = Rng(12);
    let s = p.src();
    fs::create_dir_all(s.join("ckpt")).unwrap();
    let (a, b) = (rng.bytes(300_000), rng.bytes(200_000));
    fs::write(s.join("ckpt/a.bin"), &a).unwrap();
    fs::write(s.join("ckpt/b.bin"), &b).unwrap();
    fs::write(s.join("c.bin"), &a).unwrap();
    age_files(s);
    p.sync();
    let ino = inodes(p.dst())["ckpt/a.bin"];
    // A file moved to another directory and renamed; a copy of it stays.
    fs::create_dir_all(s.join("best")).unwrap();
    fs::rename(s.join("ckpt/a.bin"), s.join("best/model.bin")).unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(r.sink.bytes_copied_locally, 0, "{:?}", r.sink);
    assert_eq!(inodes(p.dst())["best/model.bin"], ino);
    // Two files swap contents (each is the other's rename): nothing moves onto a file whose
    // old content another file still needs.
    let tmp = s.join("tmp.bin");
    fs::rename(s.join("ckpt/b.bin"), &tmp).unwrap();
    fs::rename(s.join("best/model.bin"), s.join("ckpt/b.bin")).unwrap();
    fs::rename(&tmp, s.join("best/model.bin")).unwrap();
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, 0);
    assert!(p.sync().no_op);
}

#[test]
fn a_directory_holding_remote_files_is_not_moved_and_they_stay() {
    let p = Pair::new();
    let s = p.src();
    fs::create_dir_all(s.join("data")).unwrap();
    let payload = Rng(13).bytes(100_000);
    fs::write(s.join("data/x.bin"), &payload).unwrap();
    age_files(s);
    p.sync();
    fs::write(p.dst().join("data/remote.log"), "written by a job").unwrap();
    fs::rename(s.join("data"), s.join("data2")).unwrap();
    let r = p.try_sync(false).unwrap();
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(
        fs::read(p.dst().join("data/remote.log")).unwrap(),
        b"written by a job"
    );
    assert_eq!(fs::read(p.dst().join("data2/x.bin")).unwrap(), payload);
    assert!(!p.dst().join("data/x.bin").exists());
    assert!(!p.dst().join("data2/remote.log").exists());
    // What the refused move stood for was sent instead, and recorded.
    let r = p.try_sync(false).unwrap();
    assert!(r.no_op, "{:?}", r.plan);
}

#[test]
fn a_large_directory_that_cannot_move_is_rebuilt_within_a_common_open_files_limit() {
    let p = Pair::new();
    let s = p.src();
    let mut rng = Rng(23);
    for i in 0..1500 {
        fs::create_dir_all(s.join(format!("data/{}", i % 10))).unwrap();
        fs::write(s.join(format!("data/{}/f{i}.bin", i % 10)), rng.bytes(3000)).unwrap();
    }
    age_files(s);
    p.sync();
    // A file the sink did not write keeps `data/` where it is: the renamed tree's files are
    // built from copies, many to a batch (they were expected to move).
    fs::write(p.dst().join("data/remote.log"), "written by a job").unwrap();
    fs::rename(s.join("data"), s.join("data2")).unwrap();
    // The sink raises the soft limit on open files for its batches; start from a common
    // default (this process's other tests need few).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_max >= 4096 {
            lim.rlim_cur = 1024;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    let r = p.try_sync(false).unwrap();
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(
        fs::read(p.dst().join("data/remote.log")).unwrap(),
        b"written by a job"
    );
    let mut under_data = walk_files(&p.dst().join("data"));
    under_data.retain(|f| !f.ends_with("remote.log"));
    assert!(under_data.is_empty(), "{under_data:?}");
    for f in walk_files(&s.join("data2")) {
        let rel = f.strip_prefix(s).unwrap();
        assert_eq!(fs::read(p.dst().join(rel)).unwrap(), fs::read(&f).unwrap());
    }
}

#[test]
fn a_moved_file_changed_on_the_sink_is_sent_again() {
    let p = Pair::new();
    let s = p.src();
    fs::write(s.join("a.bin"), Rng(14).bytes(100_000)).unwrap();
    age_files(s);
    p.sync();
    fs::write(p.dst().join("a.bin"), "changed remotely").unwrap();
    fs::rename(s.join("a.bin"), s.join("b.bin")).unwrap();
    let r = p.sync();
    assert!(r.raw_bytes_sent >= 100_000, "{}", r.raw_bytes_sent);
}

/// Half floats from N(0, 0.02²), as in a checkpoint.
fn fp16_weights(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut unit = || ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let g = (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos() * 0.02;
        let bits = (g as f32).to_bits();
        let exp = ((bits >> 23) & 0xff) as i32 - 112;
        let half = ((bits >> 16) & 0x8000) as u16
            | if exp > 0 {
                ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
            } else {
                0
            };
        out.extend_from_slice(&half.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn fp16_weights_travel_shuffled_and_smaller() {
    let p = Pair::new();
    let mut rng = Rng(15);
    // Odd length and an odd header: chunks start at odd and even offsets.
    let mut data = b"x".to_vec();
    data.extend(fp16_weights(3_000_001, &mut rng));
    fs::write(p.src().join("model.bin"), &data).unwrap();
    let r = p.sync();
    assert!(
        (r.payload_bytes_sent as f64) < 0.875 * r.raw_bytes_sent as f64,
        "{} of {} bytes on the wire",
        r.payload_bytes_sent,
        r.raw_bytes_sent
    );
}

#[test]
fn a_file_moved_over_a_copy_source_is_not_read_for_its_old_content() {
    let p = Pair::new();
    let mut rng = Rng(16);
    let s = p.src();
    let (old_x, y) = (rng.bytes(200_000), rng.bytes(200_000));
    fs::write(s.join("x.bin"), &old_x).unwrap();
    fs::write(s.join("y.bin"), &y).unwrap();
    age_files(s);
    p.sync();
    // `a.bin` (first in the batch) is a copy of x's old content, which only x holds; then y
    // moves over x.
    fs::write(s.join("a.bin"), &old_x).unwrap();
    fs::rename(s.join("y.bin"), s.join("x.bin")).unwrap();
    let r = p.sync();
    assert_eq!(fs::read(p.dst().join("a.bin")).unwrap(), old_x);
    assert_eq!(fs::read(p.dst().join("x.bin")).unwrap(), y);
    assert!(r.raw_bytes_sent >= 200_000, "{}", r.raw_bytes_sent);
}

#[test]
fn changes_on_the_sink_are_found_at_every_depth() {
    let p = Pair::new();
    for (f, body) in [
        ("top.txt", "top"),
        ("a/one.txt", "one"),
        ("a/b/two.txt", "two"),
        ("a/b/c/three.txt", "three"),
        ("d/four.txt", "four"),
        ("e/five.txt", "five"),
    ] {
        fs::create_dir_all(p.src().join(f).parent().unwrap()).unwrap();
        fs::write(p.src().join(f), body).unwrap();
    }
    std::os::unix::fs::symlink("one.txt", p.src().join("a/link")).unwrap();
    age_files(p.src());
    p.sync();
    assert!(p.sync().no_op);

    // On the sink: a deep file rewritten (same size), a symlink retargeted, a directory
    // replaced by a symlink to a copy of it elsewhere, a file replaced by a directory.
    let elsewhere = tempfile::tempdir().unwrap();
    fs::write(elsewhere.path().join("four.txt"), "four").unwrap();
    fs::write(p.dst().join("a/b/c/three.txt"), "THREE").unwrap();
    fs::remove_file(p.dst().join("a/link")).unwrap();
    std::os::unix::fs::symlink("b", p.dst().join("a/link")).unwrap();
    fs::remove_dir_all(p.dst().join("d")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), p.dst().join("d")).unwrap();
    fs::remove_file(p.dst().join("e/five.txt")).unwrap();
    fs::create_dir(p.dst().join("e/five.txt")).unwrap();

    let r = p.sync();
    assert!(!r.no_op);
    let planned: Vec<&str> = r
        .plan
        .iter()
        .map(|c| match c {
            source::Change::Add(p)
            | source::Change::Update(p)
            | source::Change::Touch(p)
            | source::Change::Delete(p) => p.as_str(),
        })
        .collect();
    for changed in ["a/b/c/three.txt", "a/link", "d", "d/four.txt", "e/five.txt"] {
        assert!(
            planned.contains(&changed),
            "{changed} not resent: {planned:?}"
        );
    }
    for unchanged in ["top.txt", "a/one.txt", "a/b/two.txt"] {
        assert!(
            !planned.contains(&unchanged),
            "{unchanged} resent: {planned:?}"
        );
    }
    // Nothing was written through the symlink that stood in for `d`.
    assert_eq!(
        fs::read_to_string(elsewhere.path().join("four.txt")).unwrap(),
        "four"
    );
    assert!(p.sync().no_op);
}

/// Whether a file named `*-prefill` shows up in `staging` within 10 s.
fn prefill_seen(staging: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let named = |de: fs::DirEntry| de.file_name().to_string_lossy().ends_with("-prefill");
        if fs::read_dir(staging).is_ok_and(|mut rd| rd.any(|de| de.is_ok_and(named))) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// The chunks of a long changed file that the sink holds nowhere travel with its prefills,
/// before the first batch, and only once; a long file that becomes a copy of another the sink
/// holds sends no data at all.
#[test]
fn a_prefilled_files_new_chunks_travel_ahead_once() {
    let mut p = Pair::new();
    p.chunker = Chunker {
        segment: 1 << 20,
        ..Chunker::default()
    };
    p.prefill = true;
    let mut big = Rng(41).bytes(6 << 20);
    let other = Rng(42).bytes(5 << 20);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    fs::write(p.src().join("other.bin"), &other).unwrap();
    p.sync();

    // 4 KiB overwritten in three segments.
    let old = Chunker::default().chunk(&big);
    for at in [300_000usize, 2_500_000, 5_000_000] {
        big[at..at + 4096].copy_from_slice(&Rng(at as u64).bytes(4096));
    }
    fs::write(p.src().join("big.bin"), &big).unwrap();
    let new = Chunker::default().chunk(&big);
    let changed: u64 = new
        .iter()
        .filter(|c| !old.iter().any(|o| o.hash == c.hash))
        .map(|c| c.len as u64)
        .sum();
    assert!(changed > 3 * 4096, "{changed}");
    let r = p.sync();
    assert_eq!(r.raw_bytes_sent, changed, "each new chunk sent once");
    assert_eq!(r.sink.bytes_received, changed);
    let ahead = p.ahead.load(Ordering::Relaxed);
    assert!(ahead > changed, "{ahead} bytes before the first batch");
    assert!(r.sink.bytes_copied_locally >= big.len() as u64 - changed);

    // Asked for once the scan has ended: left to the batch, which sends them once.
    p.scanning = false;
    let before = big.clone();
    big[4_000_000..4_004_096].copy_from_slice(&Rng(7).bytes(4096));
    fs::write(p.src().join("big.bin"), &big).unwrap();
    let changed: u64 = Chunker::default()
        .chunk(&big)
        .iter()
        .filter(|c| {
            !Chunker::default()
                .chunk(&before)
                .iter()
                .any(|o| o.hash == c.hash)
        })
        .map(|c| c.len as u64)
        .sum();
    let r = p.sync();
    assert!(!p.prefilled.lock().unwrap().is_empty());
    assert_eq!(r.raw_bytes_sent, changed);
    assert!(p.ahead.load(Ordering::Relaxed) < 16 << 10);
    p.scanning = true;

    // big.bin becomes a copy of other.bin: copied on the sink, nothing asked of the source.
    fs::write(p.src().join("big.bin"), &other).unwrap();
    let r = p.sync();
    assert!(!p.prefilled.lock().unwrap().is_empty());
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(r.sink.bytes_received, 0);
    assert!(p.ahead.load(Ordering::Relaxed) < 64 << 10);
}

/// A long file changed near its head is built on the sink from the prefills sent while the
/// scan ran: every segment is told once the first differs, the sink copies them from the
/// version it holds, and only the changed chunks travel. A new one is built from its
/// prefills' chunks alone. A file only touched sends none; one changed on the sink meanwhile
/// is rebuilt right; no staged file is left behind.
#[test]
fn long_changed_files_are_built_ahead_from_their_prefills() {
    let mut p = Pair::new();
    p.chunker = Chunker {
        segment: 1 << 20,
        ..Chunker::default()
    };
    p.prefill = true;
    let staging = p.dst().join(".mtr-sync/staging");
    let left = staging.clone();
    let leftovers = move || fs::read_dir(&left).map_or(0, |rd| rd.count());
    let mut big = Rng(31).bytes(6 << 20);
    fs::write(p.src().join("big.bin"), &big).unwrap();
    fs::write(p.src().join("small.txt"), "small").unwrap();
    // On first contact every segment is told, and every chunk travels with them.
    let r = p.sync();
    assert_eq!(p.prefilled.lock().unwrap().len(), 6);
    assert_eq!(r.raw_bytes_sent, big.len() as u64 + 5);
    assert!(p.ahead.load(Ordering::Relaxed) > big.len() as u64);
    assert_eq!(leftovers(), 0);

    // 100 bytes inserted near the head: all 7 segments are told.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen2, staging2) = (seen.clone(), staging.clone());
    p.between = Some(Box::new(move || {
        seen2.store(prefill_seen(&staging2), std::sync::atomic::Ordering::SeqCst)
    }));
    big.splice(100..100, Rng(32).bytes(100));
    fs::write(p.src().join("big.bin"), &big).unwrap();
    let r = p.sync();
    let segs = p.prefilled.lock().unwrap().clone();
    let mut offsets: Vec<u64> = segs.iter().map(|s| s.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..7).map(|i| i << 20).collect::<Vec<u64>>());
    let told: u64 = segs
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| c.len as u64)
        .sum();
    assert_eq!(told, big.len() as u64);
    assert!(segs
        .iter()
        .all(|s| s.path == "big.bin" && s.size == big.len() as u64));
    assert!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        "no prefill was started"
    );
    assert!(r.raw_bytes_sent < 1 << 20, "{}", r.raw_bytes_sent);
    assert!(
        r.sink.bytes_copied_locally > 5 << 20,
        "{}",
        r.sink.bytes_copied_locally
    );
    assert_eq!(leftovers(), 0, "the prefill became the file");

    // Touched, same content: nothing told, nothing staged.
    let f = fs::File::options()
        .write(true)
        .open(p.src().join("big.bin"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    p.between = None;
    let r = p.sync();
    assert!(p.prefilled.lock().unwrap().is_empty());
    assert_eq!(r.raw_bytes_sent, 0);
    assert_eq!(leftovers(), 0);

    // The sink's copy changes after the prefills started: the file is still the source's.
    big.splice(5000..5000, Rng(33).bytes(10));
    fs::write(p.src().join("big.bin"), &big).unwrap();
    let (seen2, staging2, theirs) = (seen.clone(), staging.clone(), p.dst().join("big.bin"));
    p.between = Some(Box::new(move || {
        seen2.store(prefill_seen(&staging2), std::sync::atomic::Ordering::SeqCst);
        let f = fs::File::options().write(true).open(&theirs).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 4096], 3 << 20).unwrap();
    }));
    p.sync();
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(leftovers(), 0);
}
