//! Recorded sessions replayed into a fresh sink: what a source sends is a pure function of the
//! trees, so the bytes of a first sync (or of a download) replayed later must rebuild the same
//! tree with no peer at all. These recordings are also the seed corpus of the fuzz targets in
//! `fuzz/` (which prepend their own `Hello` the same way): set `MTR_FUZZ_SEEDS=<dir>` to write
//! them there (`fuzz/README.md` says how they were made).

use std::fs;
use std::io::{self, Cursor, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use protocol::chunker::Chunker;
use protocol::codec::{FrameReader, FrameWriter};
use protocol::get::{self, ReceiveConfig, Request};
use protocol::scan::{Filter, NoProgress, ScanOptions};
use protocol::source::{self, SourceConfig};
use protocol::wire::{ToSink, PROTOCOL_VERSION};

const VERSION: &str = "fuzz";

/// A writer that copies what it writes into `log` while `log` is `Some`.
struct Tee<W> {
    inner: W,
    log: Arc<Mutex<Option<Vec<u8>>>>,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(log) = self.log.lock().unwrap().as_mut() {
            log.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Deterministic bytes: text-like when `text`, else incompressible.
fn bytes(len: usize, seed: u64, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if text {
                b"def train(model, epochs):\n    return loss  # fp16\n"[(x as usize ^ i) % 48]
            } else {
                x as u8
            }
        })
        .collect()
}

fn write(root: &Path, rel: &str, contents: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// A small tree with something of every kind: text, binary of several chunks, duplicates,
/// an empty file, an executable, a symlink, an empty directory.
fn populate(root: &Path) {
    populate_small(root);
    write(root, "data/blob.bin", &bytes(300_000, 6, false));
    write(root, "data/copy.bin", &bytes(300_000, 6, false));
}

/// The same kinds of entries, small enough (~40 KB of frames) to seed a fuzzer.
fn populate_small(root: &Path) {
    for i in 0..4 {
        write(
            root,
            &format!("src/pkg{}/mod{i}.py", i % 3),
            &bytes(500 + i * 700, i as u64, true),
        );
    }
    write(root, "data/small.bin", &bytes(40_000, 7, false));
    write(root, "empty.txt", b"");
    write(root, "run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("run.sh", root.join("link")).unwrap();
    fs::create_dir_all(root.join("empty/dir")).unwrap();
}

/// `a` and `b` hold the same paths, kinds, bytes, modes and link targets (`skip` at the root
/// of `b` aside).
fn assert_same_tree(a: &Path, b: &Path, skip: &str) {
    fn list(root: &Path, dir: &Path, out: &mut Vec<(String, String)>, skip: &str) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if rel == skip {
                continue;
            }
            let m = fs::symlink_metadata(&path).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap())
            } else if m.is_dir() {
                list(root, &path, out, skip);
                "dir".into()
            } else {
                format!(
                    "file {:o} {}",
                    m.permissions().mode() & 0o777,
                    blake3::hash(&fs::read(&path).unwrap())
                )
            };
            out.push((rel, what));
        }
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    list(a, a, &mut left, skip);
    list(b, b, &mut right, skip);
    left.sort();
    right.sort();
    assert_eq!(left, right, "{} and {} differ", a.display(), b.display());
}

/// The source's bytes after the handshake of a first sync of `src` to a fresh sink.
fn record_upload(src: &Path) -> Vec<u8> {
    let dst = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let sink =
        std::thread::spawn(move || protocol::sink::serve(b.try_clone().unwrap(), b, VERSION));
    let log = Arc::new(Mutex::new(None));
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(Tee {
        inner: a,
        log: log.clone(),
    });
    let ack = source::handshake(&mut r, &mut w, dst.path().to_str().unwrap(), VERSION).unwrap();
    *log.lock().unwrap() = Some(Vec::new());
    let filter = Filter::new(src, &ScanOptions::default()).unwrap();
    let cfg = SourceConfig {
        root: src,
        filter: &filter,
        chunker: Chunker::default(),
        index_path: state.path().join("index"),
        state_path: state.path().join("state"),
        dry_run: false,
        pipeline: Default::default(),
    };
    source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress).unwrap();
    source::bye(&mut w).unwrap();
    drop(w);
    sink.join().unwrap().unwrap();
    let bytes = log.lock().unwrap().take().unwrap();
    bytes
}

/// What the fuzz target `sink_session` does with its input: a `Hello` for `root`, then `body`,
/// served by the sink with its output discarded.
fn replay_upload(root: &Path, body: &[u8]) -> protocol::Result<()> {
    let mut input = Vec::new();
    {
        let mut w = FrameWriter::new(&mut input);
        w.msg(&ToSink::Hello {
            protocol: PROTOCOL_VERSION,
            version: VERSION.into(),
            root: root.to_str().unwrap().into(),
            chunker: Chunker::default().id(),
        })?;
        w.flush()?;
    }
    input.extend_from_slice(body);
    protocol::sink::serve(Cursor::new(input), io::sink(), VERSION)
}

/// The agent's bytes for a download of `remote` (mtr's side records nothing).
fn record_get(remote: &Path) -> Vec<u8> {
    let local = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let log = Arc::new(Mutex::new(Some(Vec::new())));
    let agent_log = log.clone();
    let cache_dir = cache.path().to_path_buf();
    let agent = std::thread::spawn(move || {
        let out = Tee {
            inner: b.try_clone().unwrap(),
            log: agent_log,
        };
        get::serve(b, out, VERSION, &cache_dir)
    });
    let dest = local.path().join("dl");
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(a);
    let req = Request {
        path: remote.to_str().unwrap().into(),
        name: "dl".into(),
        dry_run: false,
    };
    get::request(&mut r, &mut w, &req, VERSION).unwrap();
    let cfg = ReceiveConfig {
        dest,
        state_dir: state.path().join("dl"),
        dry_run: false,
    };
    get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut |_| {}).unwrap();
    drop((r, w));
    agent.join().unwrap().unwrap();
    let bytes = log.lock().unwrap().take().unwrap();
    bytes
}

/// What the fuzz target `get_receive` does with its input: mtr's side of a download reading
/// `input` as everything the agent says, into `dir/dl`.
fn replay_get(dir: &Path, input: &[u8]) -> protocol::Result<()> {
    let mut r = FrameReader::new(Cursor::new(input));
    let mut w = FrameWriter::new(io::sink());
    let req = Request {
        path: "/remote".into(),
        name: "dl".into(),
        dry_run: false,
    };
    get::request(&mut r, &mut w, &req, VERSION)?;
    let cfg = ReceiveConfig {
        dest: dir.join("dl"),
        state_dir: dir.join("state"),
        dry_run: false,
    };
    get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut |_| {}).map(drop)
}

fn save_seed(name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("MTR_FUZZ_SEEDS") {
        let path = Path::new(&dir).join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn a_recorded_first_sync_replays_into_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    populate(src.path());
    let body = record_upload(src.path());
    assert!(body.len() > 1000, "a sync sends something");

    let dst = tempfile::tempdir().unwrap();
    replay_upload(dst.path(), &body).unwrap();
    assert_same_tree(src.path(), dst.path(), ".mtr-sync");

    let small = tempfile::tempdir().unwrap();
    populate_small(small.path());
    let seed = record_upload(small.path());
    let dst = tempfile::tempdir().unwrap();
    replay_upload(dst.path(), &seed).unwrap();
    assert_same_tree(small.path(), dst.path(), ".mtr-sync");
    save_seed("sink_session/first-sync", &seed);

    // Cut short anywhere, the replay fails cleanly and leaves no file half-written in place.
    for cut in [1, body.len() / 3, body.len() / 2, body.len() - 1] {
        let dst = tempfile::tempdir().unwrap();
        assert!(
            replay_upload(dst.path(), &body[..cut]).is_err(),
            "cut at {cut}"
        );
        if dst.path().join("data/blob.bin").exists() {
            assert_eq!(
                fs::read(dst.path().join("data/blob.bin")).unwrap(),
                fs::read(src.path().join("data/blob.bin")).unwrap(),
                "cut at {cut}: a file in place is whole"
            );
        }
    }
}

#[test]
fn a_recorded_download_replays_into_the_same_tree() {
    let remote = tempfile::tempdir().unwrap();
    populate(remote.path());
    let input = record_get(remote.path());

    let dir = tempfile::tempdir().unwrap();
    replay_get(dir.path(), &input).unwrap();
    assert_same_tree(remote.path(), &dir.path().join("dl"), "");

    let small = tempfile::tempdir().unwrap();
    populate_small(small.path());
    let seed = record_get(small.path());
    let dir = tempfile::tempdir().unwrap();
    replay_get(dir.path(), &seed).unwrap();
    assert_same_tree(small.path(), &dir.path().join("dl"), "");
    save_seed("get_receive/first-get", &seed);
    save_seed("frame_decoder/get-stream", &seed);
}
