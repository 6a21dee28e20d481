//! Load: a tree of 100,000 empty files (or `MTR_LOAD_FILES`) synced to a real sink in this
//! process (the agent's engine without SSH). The first sync and a no-op must not talk per file: the sink's answers
//! are counted frame by frame and must stay far below one per file (they grow with batches of
//! files), and the process's peak memory while syncing is bounded. The scale bench
//! (`benches/scale.rs`) measures the same over SSH with 100k files / 5 GB and 1M empty files.

mod common;
use common::peak_rss_kib;

use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::chunker::Chunker;
use protocol::codec::{Frame, FrameReader, FrameWriter};
use protocol::scan::{Filter, NoProgress, ScanOptions};
use protocol::source::{self, Report, SourceConfig};
use protocol::wire::FromSink;

/// Files in the tree: 100,000, or `MTR_LOAD_FILES` (a multiple of 1,000; e.g. 1000000 for the
/// 1M-file case, run by hand: `MTR_LOAD_FILES=1000000 cargo test --release -p mtr-protocol
/// --test load -- --nocapture`).
fn file_count() -> usize {
    std::env::var("MTR_LOAD_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}
const PER_DIR: usize = 1_000;
/// The sink answers at least this many files per message (a per-file protocol would answer
/// one or more per file).
const FILES_PER_ANSWER: usize = 100;
/// Peak resident memory both sides together may add while syncing the tree (debug build;
/// measured +100 MB):
/// a few hundred bytes per entry and side, not a copy per batch or per file. Per 100,000 files.
const MEMORY_BOUND_MB: u64 = 250;

/// A reader that copies what it reads into `log`.
struct Tee<R> {
    inner: R,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// One sync of `src` to `dst` with a sink in a thread; the sink's frames after the
/// handshake, counted.
fn sync(src: &Path, dst: &Path, state: &Path) -> (Report, usize, usize) {
    let (a, b) = UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || protocol::sink::serve(b.try_clone().unwrap(), b, "load"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = FrameReader::new(Tee {
        inner: a.try_clone().unwrap(),
        log: log.clone(),
    });
    let mut w = FrameWriter::new(a);
    let ack = source::handshake(&mut r, &mut w, dst.to_str().unwrap(), "load").unwrap();
    let after_handshake = log.lock().unwrap().len();
    let filter = Filter::new(src, &ScanOptions::default()).unwrap();
    let cfg = SourceConfig {
        root: src,
        filter: &filter,
        chunker: Chunker::default(),
        index_path: state.join("index"),
        state_path: state.join("state"),
        dry_run: false,
        pipeline: Default::default(),
    };
    let report = source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress).unwrap();
    source::bye(&mut w).unwrap();
    drop(w);
    sink.join().unwrap().unwrap();
    let bytes = log.lock().unwrap()[after_handshake..].to_vec();
    let n_bytes = bytes.len();
    let mut frames = FrameReader::new(Cursor::new(bytes));
    let mut answers = 0;
    while let Some(f) = frames.frame::<FromSink>().unwrap() {
        assert!(matches!(f, Frame::Msg(_)), "the sink sent file data");
        answers += 1;
    }
    (report, answers, n_bytes)
}

#[test]
fn a_hundred_thousand_files_sync_without_per_file_round_trips_in_bounded_memory() {
    let n = file_count();
    let bound_mb = MEMORY_BOUND_MB * (n as u64).div_ceil(100_000);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for d in 0..n / PER_DIR {
        let dir = src.path().join(format!("d{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..PER_DIR {
            fs::File::create(dir.join(format!("file-{f:04}.py"))).unwrap();
        }
    }
    let before = peak_rss_kib();

    let (first, answers, bytes) = sync(src.path(), dst.path(), state.path());
    let grown_mb = (peak_rss_kib() - before) / 1000;
    println!(
        "first sync: {} entries, {answers} answers from the sink ({bytes} B), peak RSS +{grown_mb} MB",
        first.entries
    );
    assert_eq!(first.entries, n + n / PER_DIR);
    assert!(
        answers <= n / FILES_PER_ANSWER,
        "{answers} answers from the sink for {n} files: per-file round trips"
    );
    assert!(
        grown_mb <= bound_mb,
        "syncing {n} empty files grew the peak RSS by {grown_mb} MB"
    );
    let synced = fs::read_dir(dst.path().join("d042")).unwrap().count();
    assert_eq!(synced, PER_DIR, "files of d042 on the sink");

    let (noop, answers, bytes) = sync(src.path(), dst.path(), state.path());
    println!("no-op: {answers} answers from the sink ({bytes} B)");
    assert!(noop.no_op, "the second sync was not a no-op");
    assert!(answers <= 2, "{answers} answers from the sink in a no-op");
    assert!(bytes <= 1024, "{bytes} B from the sink in a no-op");
    let grown_mb = (peak_rss_kib() - before) / 1000;
    assert!(
        grown_mb <= bound_mb,
        "a no-op over {n} files grew the peak RSS by {grown_mb} MB"
    );
}
