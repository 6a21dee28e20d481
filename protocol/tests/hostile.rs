//! A hostile or broken source (a fake client speaking the real protocol) talking to a real
//! sink, the agent's side of an upload: unsafe paths, writes through symlinks (made in the same
//! batch or committed earlier), lying chunk lists, unrequested, duplicated or corrupt chunks,
//! huge declared frame lengths, decompression bombs, messages out of order. Each is refused
//! with an error and nothing is written outside the root; memory stays bounded (measured in a
//! process of its own). Also: an interrupted transfer leaves no partial file among the user's
//! files, and the next session reuses what already arrived.

mod common;
use common::*;

use std::fs;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;

use protocol::chunker::{self, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::compress::Codec;
use protocol::source;
use protocol::wire::{ChunkSpec, Entry, EntryKind, FromSink, Hash, Op, ToSink};

const VERSION: &str = "test";

struct Peer {
    r: FrameReader<UnixStream>,
    w: FrameWriter<UnixStream>,
    /// The same socket, for bytes no `FrameWriter` would write. To hang up, drop it too (or
    /// use [`sink_error`]).
    raw: UnixStream,
    sink: std::thread::JoinHandle<protocol::Result<()>>,
}

fn connect(root: &Path) -> Peer {
    let (a, b) = UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || {
        let r = b.try_clone().unwrap();
        protocol::sink::serve(r, b, VERSION)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let raw = a.try_clone().unwrap();
    let mut w = FrameWriter::new(a);
    source::handshake(&mut r, &mut w, root.to_str().unwrap(), VERSION).unwrap();
    Peer { r, w, raw, sink }
}

fn file_entry(path: &str, data: &[u8]) -> (Entry, Vec<ChunkSpec>) {
    let chunks = chunker::specs(&Chunker::default().chunk(data));
    (
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: data.len() as u64,
                mode: 0o644,
                mtime_ns: 0,
                digest: chunker::file_digest(&chunks),
            },
        },
        chunks,
    )
}

/// Send `ops`; returns the sink's error message.
fn refused(root: &Path, ops: Vec<Op>) -> String {
    let mut p = connect(root);
    p.w.msg(&ToSink::Ops { ops }).unwrap();
    p.w.flush().unwrap();
    let msg = loop {
        match p.r.msg::<FromSink>() {
            Ok(FromSink::Error { message }) => break message,
            Ok(FromSink::Need { .. }) => {
                p.w.msg(&ToSink::DataEnd).unwrap();
                p.w.flush().unwrap();
            }
            Ok(other) => panic!("sink accepted: {other:?}"),
            Err(e) => panic!("no error message from the sink: {e}"),
        }
    };
    drop(p.w);
    assert!(p.sink.join().unwrap().is_err());
    msg
}

#[test]
fn unsafe_paths_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned");
    for path in [
        target.to_str().unwrap().to_string(),
        "../pwned".into(),
        "a/../../pwned".into(),
        ".mtr-sync/index".into(),
    ] {
        let (e, c) = file_entry(&path, b"evil");
        let msg = refused(
            root.path(),
            vec![Op::Upsert {
                entry: e,
                chunks: Some(c),
            }],
        );
        assert!(msg.contains("unsafe path"), "{path}: {msg}");
    }
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn writes_through_a_symlink_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (e, c) = file_entry("link/evil.txt", b"evil");
    let msg = refused(
        root.path(),
        vec![
            Op::Upsert {
                entry: Entry {
                    path: "link".into(),
                    kind: EntryKind::Symlink {
                        target: outside.path().to_str().unwrap().into(),
                    },
                },
                chunks: None,
            },
            Op::Upsert {
                entry: e,
                chunks: Some(c),
            },
        ],
    );
    assert!(msg.contains("symlink"), "{msg}");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_chunk_list_that_lies_about_size_or_digest_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (mut e, c) = file_entry("a.bin", &[1u8; 1000]);
    if let EntryKind::File { size, .. } = &mut e.kind {
        *size = 1 << 40;
    }
    let msg = refused(
        root.path(),
        vec![Op::Upsert {
            entry: e,
            chunks: Some(c),
        }],
    );
    assert!(msg.contains("does not match"), "{msg}");
}

#[test]
fn corrupt_and_unrequested_chunks_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = vec![5u8; 5000];
    let (e, c) = file_entry("a.bin", &data);
    for (hash, payload) in [(c[0].hash, vec![6u8; 5000]), ([0u8; 32], data.clone())] {
        let mut p = connect(root.path());
        p.w.msg(&ToSink::Ops {
            ops: vec![Op::Upsert {
                entry: e.clone(),
                chunks: Some(c.clone()),
            }],
        })
        .unwrap();
        p.w.flush().unwrap();
        assert!(matches!(
            p.r.msg::<FromSink>().unwrap(),
            FromSink::Need { .. }
        ));
        p.w.data(&hash, Codec::Raw, payload.len() as u32, &payload)
            .unwrap();
        p.w.msg(&ToSink::DataEnd).unwrap();
        p.w.flush().unwrap();
        match p.r.msg::<FromSink>().unwrap() {
            FromSink::Error { message } => {
                assert!(message.contains("chunk"), "{message}")
            }
            other => panic!("accepted: {other:?}"),
        }
        drop(p.w);
        assert!(p.sink.join().unwrap().is_err());
        assert!(
            !root.path().join("a.bin").exists(),
            "a corrupt file was placed"
        );
    }
}

#[test]
fn an_interrupted_transfer_leaves_no_partial_file_and_is_resumed() {
    let root = tempfile::tempdir().unwrap();
    let mut x = 77u64;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as u8
        })
        .collect();
    fs::write(root.path().join("big.bin"), b"old version").unwrap();
    let (e, c) = file_entry("big.bin", &data);
    // First session: send half of the chunks, then vanish.
    let mut p = connect(root.path());
    // Make the sink record big.bin's old version as its own? No: it was not written by mtr, so
    // the sink will replace it but must never leave it half-written.
    p.w.msg(&ToSink::Ops {
        ops: vec![Op::Upsert {
            entry: e.clone(),
            chunks: Some(c.clone()),
        }],
    })
    .unwrap();
    p.w.flush().unwrap();
    let FromSink::Need { hashes } = p.r.msg::<FromSink>().unwrap() else {
        panic!()
    };
    let mut off = 0usize;
    let mut sent = 0;
    for ch in &c {
        if sent < hashes.len() / 2 {
            p.w.data(
                &ch.hash,
                Codec::Raw,
                ch.len,
                &data[off..off + ch.len as usize],
            )
            .unwrap();
            sent += 1;
        }
        off += ch.len as usize;
    }
    p.w.flush().unwrap();
    drop((p.w, p.r, p.raw));
    assert!(p.sink.join().unwrap().is_err());
    assert_eq!(
        fs::read(root.path().join("big.bin")).unwrap(),
        b"old version"
    );
    let user_files: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(user_files.len(), 2, "{user_files:?}"); // big.bin and .mtr-sync

    // Second session: the sink asks only for what did not arrive.
    let mut p = connect(root.path());
    p.w.msg(&ToSink::Ops {
        ops: vec![Op::Upsert {
            entry: e,
            chunks: Some(c.clone()),
        }],
    })
    .unwrap();
    p.w.flush().unwrap();
    let FromSink::Need { hashes: again } = p.r.msg::<FromSink>().unwrap() else {
        panic!()
    };
    assert_eq!(
        again.len(),
        hashes.len() - sent,
        "arrived chunks were asked for again"
    );
    send_named(&mut p, &again, &data, &c);
    p.w.msg(&ToSink::DataEnd).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    commit_and_leave(p);
    assert!(fs::read(root.path().join("big.bin")).unwrap() == data);
    assert_eq!(
        fs::read_dir(root.path().join(".mtr-sync/staging"))
            .unwrap()
            .count(),
        0
    );
}

/// Send the chunks of `data` (cut as `chunks`) that `hashes` names, raw.
fn send_named(p: &mut Peer, hashes: &[Hash], data: &[u8], chunks: &[ChunkSpec]) {
    let mut off = 0usize;
    for ch in chunks {
        if hashes.contains(&ch.hash) {
            let raw = &data[off..off + ch.len as usize];
            p.w.data(&ch.hash, Codec::Raw, ch.len, raw).unwrap();
        }
        off += ch.len as usize;
    }
}

/// Upload `data` as `path` in a session of its own; its chunk list.
fn place(root: &Path, path: &str, data: &[u8]) -> Vec<ChunkSpec> {
    let (e, c) = file_entry(path, data);
    let mut p = connect(root);
    let op = Op::Upsert {
        entry: e,
        chunks: Some(c.clone()),
    };
    run_batch(&mut p, vec![op], data, &c);
    commit_and_leave(p);
    c
}

/// Files in the sink's staging directory.
fn staged(root: &Path) -> usize {
    fs::read_dir(root.join(".mtr-sync/staging")).map_or(0, |rd| rd.count())
}

/// Send a `Prefill` and read the chunks the sink asks for in answer (sending none of them).
fn prefill(p: &mut Peer, msg: &ToSink) -> Vec<Hash> {
    assert!(matches!(msg, ToSink::Prefill { .. }));
    p.w.msg(msg).unwrap();
    p.w.flush().unwrap();
    match p.r.msg::<FromSink>().unwrap() {
        FromSink::PrefillNeed { hashes } => hashes,
        other => panic!("expected PrefillNeed, got {other:?}"),
    }
}

/// Commit, say goodbye, and check the sink ended well.
fn commit_and_leave(mut p: Peer) {
    p.w.msg(&ToSink::Commit).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    source::bye(&mut p.w).unwrap();
    p.sink.join().unwrap().unwrap();
}

/// Drive one batch by hand: answer every `Need` from `data` until `BatchDone`; returns the
/// number of chunks each `Need` asked for.
fn run_batch(p: &mut Peer, ops: Vec<Op>, data: &[u8], chunks: &[ChunkSpec]) -> Vec<usize> {
    p.w.msg(&ToSink::Ops { ops }).unwrap();
    p.w.flush().unwrap();
    let mut rounds = Vec::new();
    loop {
        match p.r.msg::<FromSink>().unwrap() {
            FromSink::Need { hashes } => {
                rounds.push(hashes.len());
                send_named(p, &hashes, data, chunks);
                p.w.msg(&ToSink::DataEnd).unwrap();
                p.w.flush().unwrap();
            }
            FromSink::BatchDone => return rounds,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn files_placed_before_the_source_vanished_are_recorded_and_not_sent_again() {
    let root = tempfile::tempdir().unwrap();
    let data = noise(4 << 20, 41);
    let (e, c) = file_entry("ckpt.bin", &data);
    let upsert = || Op::Upsert {
        entry: e.clone(),
        chunks: Some(c.clone()),
    };
    // The source sends a whole batch and vanishes before the sink answers it (as when mtr is
    // killed while the sink copies and places): no `BatchDone` read, no `Commit`.
    let mut p = connect(root.path());
    p.w.msg(&ToSink::Ops {
        ops: vec![upsert()],
    })
    .unwrap();
    p.w.flush().unwrap();
    let FromSink::Need { hashes } = p.r.msg::<FromSink>().unwrap() else {
        panic!("expected Need")
    };
    assert_eq!(hashes.len(), c.len());
    send_named(&mut p, &hashes, &data, &c);
    p.w.msg(&ToSink::DataEnd).unwrap();
    p.w.flush().unwrap();
    drop((p.w, p.r, p.raw));
    // Ended by the lost peer (an error writing `BatchDone`, or the end of the stream).
    let _ = p.sink.join().unwrap();
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == data);

    // The next session trusts what was placed: no chunk asked for.
    let mut p = connect(root.path());
    let asked = run_batch(&mut p, vec![upsert()], &data, &c);
    assert_eq!(
        asked,
        [0],
        "chunks placed in the interrupted session were asked for again"
    );
    commit_and_leave(p);
}

#[test]
fn a_copy_source_changed_during_the_session_is_requested_instead() {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (a, c) = file_entry("a.bin", &data);
    let mut p = connect(root.path());
    let first = run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: a,
            chunks: Some(c.clone()),
        }],
        &data,
        &c,
    );
    assert_eq!(first, vec![c.len()]);
    commit_and_leave(p);

    // Next session: the sink plans to copy b.bin from a.bin, but a.bin changes first.
    let mut p = connect(root.path());
    fs::write(root.path().join("a.bin"), b"changed by the remote job").unwrap();
    let (b, c) = file_entry("b.bin", &data);
    let rounds = run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: b,
            chunks: Some(c.clone()),
        }],
        &data,
        &c,
    );
    assert_eq!(
        rounds,
        vec![0, c.len()],
        "planned as a local copy, then requested"
    );
    source::bye(&mut p.w).unwrap();
    p.sink.join().unwrap().unwrap();
    assert!(fs::read(root.path().join("b.bin")).unwrap() == data);
    assert_eq!(
        fs::read(root.path().join("a.bin")).unwrap(),
        b"changed by the remote job"
    );
}

/// Run `ops` to completion (answering `Need` with nothing) and commit; the sink must not fail.
/// Returns the directory moves it refused.
fn applied(root: &Path, ops: Vec<Op>) -> Vec<String> {
    let mut p = connect(root);
    p.w.msg(&ToSink::Ops { ops }).unwrap();
    p.w.flush().unwrap();
    let mut refused = Vec::new();
    loop {
        match p.r.msg::<FromSink>().unwrap() {
            FromSink::Refused { moves } => refused.extend(moves),
            FromSink::Need { hashes } => {
                assert!(hashes.is_empty(), "the sink wanted data");
                p.w.msg(&ToSink::DataEnd).unwrap();
                p.w.flush().unwrap();
            }
            FromSink::BatchDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    p.w.msg(&ToSink::Commit).unwrap();
    p.w.msg(&ToSink::Bye).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    drop(p.w);
    p.sink.join().unwrap().unwrap();
    refused
}

#[test]
fn moves_from_unsafe_or_foreign_paths_move_nothing() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, b"secret").unwrap();
    let (e, c) = file_entry("stolen", b"secret");
    for from in [secret.to_str().unwrap().to_string(), "../secret".into()] {
        let msg = refused(
            root.path(),
            vec![Op::Move {
                from: from.clone(),
                entry: e.clone(),
                chunks: Some(c.clone()),
            }],
        );
        assert!(msg.contains("unsafe path"), "{from}: {msg}");
    }
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
    // A file the sink did not write (same content, even) is never moved: the data is asked
    // for instead.
    fs::write(root.path().join("theirs"), b"secret").unwrap();
    let msg = refused(
        root.path(),
        vec![Op::Move {
            from: "theirs".into(),
            entry: e.clone(),
            chunks: Some(c.clone()),
        }],
    );
    assert!(msg.contains("never sent"), "{msg}");
    assert_eq!(fs::read(root.path().join("theirs")).unwrap(), b"secret");
    // A directory: into itself, or one the sink did not write.
    fs::create_dir(root.path().join("theirs_dir")).unwrap();
    fs::write(root.path().join("theirs_dir/x"), b"x").unwrap();
    let dir = |path: &str| Entry {
        path: path.into(),
        kind: EntryKind::Dir,
    };
    let refused = applied(
        root.path(),
        vec![
            Op::Move {
                from: "theirs_dir".into(),
                entry: dir("moved"),
                chunks: None,
            },
            Op::Upsert {
                entry: dir("mine"),
                chunks: None,
            },
            Op::Move {
                from: "mine".into(),
                entry: dir("mine/inner"),
                chunks: None,
            },
        ],
    );
    // Each refused move is named, so the source sends what it would have stood for.
    assert_eq!(refused, ["moved", "mine/inner"]);
    assert_eq!(fs::read(root.path().join("theirs_dir/x")).unwrap(), b"x");
    assert!(root.path().join("moved").is_dir());
    assert!(!root.path().join("moved/x").exists());
    assert!(root.path().join("mine/inner").is_dir());
}

#[test]
fn corrupt_shuffled_chunks_and_unknown_codecs_are_refused() {
    let root = tempfile::tempdir().unwrap();
    // Like half floats: few values in the high bytes (5.5 bits), noise in the low ones.
    let mut x = 88172645463325252u64;
    let data: Vec<u8> = (0..40_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 2 == 1 {
                (x % 45) as u8
            } else {
                x as u8
            }
        })
        .collect();
    let (codec, good) = protocol::compress::compress(&data).unwrap();
    assert_eq!(codec, Codec::Shuffle16);
    let (e, c) = file_entry("w.bin", &data);
    assert_eq!(c.len(), 1);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1; // in the raw plane: only the hash can tell
    let mut short = good.clone();
    short.pop();
    for payload in [flipped, short] {
        let mut p = connect(root.path());
        p.w.msg(&ToSink::Ops {
            ops: vec![Op::Upsert {
                entry: e.clone(),
                chunks: Some(c.clone()),
            }],
        })
        .unwrap();
        p.w.flush().unwrap();
        assert!(matches!(
            p.r.msg::<FromSink>().unwrap(),
            FromSink::Need { .. }
        ));
        p.w.data(&c[0].hash, Codec::Shuffle16, c[0].len, &payload)
            .unwrap();
        p.w.msg(&ToSink::DataEnd).unwrap();
        p.w.flush().unwrap();
        match p.r.msg::<FromSink>().unwrap() {
            FromSink::Error { message } => assert!(message.contains("chunk"), "{message}"),
            other => panic!("accepted: {other:?}"),
        }
        drop(p.w);
        assert!(p.sink.join().unwrap().is_err());
        assert!(!root.path().join("w.bin").exists());
    }
    // A codec byte no version defines.
    let mut frame = Vec::new();
    {
        let mut w = FrameWriter::new(&mut frame);
        w.data(&c[0].hash, Codec::Raw, 4, b"abcd").unwrap();
        w.flush().unwrap();
    }
    frame[4 + 1 + 32] = 9;
    let err = FrameReader::new(&frame[..]).frame::<ToSink>().unwrap_err();
    assert!(err.to_string().contains("codec"), "{err}");
}

// ---- Frames no honest peer writes -------------------------------------------------------

#[test]
fn the_bomb_is_a_valid_zstd_frame() {
    let out = zstd::stream::decode_all(&bomb(8)[..]).unwrap();
    assert_eq!(out.len(), 1 << 20);
    assert!(out.iter().all(|b| *b == 0));
    assert_eq!(bomb(8192).len(), 6 + 4 * 8192);
}

/// Write `bytes` as they are, then up to `filler` bytes of zeros (what a sink that believed a
/// declared length would go on reading), until the sink hangs up.
fn blast(p: &mut Peer, bytes: &[u8], filler: usize) {
    if p.w.flush().is_err() || p.raw.write_all(bytes).is_err() {
        return;
    }
    let zeros = vec![0u8; 64 << 10];
    let mut left = filler;
    while left > 0 {
        let n = left.min(zeros.len());
        if p.raw.write_all(&zeros[..n]).is_err() {
            return;
        }
        left -= n;
    }
}

/// Hang up and return the sink's error (it must have one).
fn sink_error(p: Peer) -> String {
    let Peer { r, w, raw, sink } = p;
    drop((r, w));
    let _ = raw.shutdown(Shutdown::Both);
    drop(raw);
    match sink.join().unwrap() {
        Ok(()) => panic!("the sink accepted the session"),
        Err(e) => e.to_string(),
    }
}

/// A root (`<base>/root`) and what is beside it.
struct Place {
    base: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("root")).unwrap();
        Place { base }
    }

    fn root(&self) -> std::path::PathBuf {
        self.base.path().join("root")
    }

    /// Nothing beside the root, nothing in it but mtr's state and `allowed`.
    fn assert_clean(&self, allowed: &[&str], what: &str) {
        assert_eq!(names(self.base.path()), ["root"], "{what}: written outside");
        for n in names(&self.root()) {
            assert!(
                n == ".mtr-sync" || allowed.contains(&n.as_str()),
                "{what}: {n} was placed"
            );
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// `a.bin` (several chunks) and its chunk list.
fn file_a() -> (Vec<u8>, Entry, Vec<ChunkSpec>) {
    let data = noise(600_000, 9);
    let (e, c) = file_entry("a.bin", &data);
    assert!(c.len() > 1);
    (data, e, c)
}

/// Where each chunk of `c` is in its file.
fn chunk<'a>(data: &'a [u8], c: &[ChunkSpec], i: usize) -> &'a [u8] {
    let off: usize = c[..i].iter().map(|c| c.len as usize).sum();
    &data[off..off + c[i].len as usize]
}

/// Send the batch writing `a.bin`; returns what the sink asked for.
fn start_batch(p: &mut Peer, e: &Entry, c: &[ChunkSpec]) -> Vec<Hash> {
    p.w.msg(&ToSink::Ops {
        ops: vec![Op::Upsert {
            entry: e.clone(),
            chunks: Some(c.to_vec()),
        }],
    })
    .unwrap();
    p.w.flush().unwrap();
    match p.r.msg::<FromSink>().unwrap() {
        FromSink::Need { hashes } => hashes,
        other => panic!("expected Need, got {other:?}"),
    }
}

/// When a hostile frame arrives: between batches, or in the middle of one.
#[derive(Clone, Copy, Debug)]
enum When {
    Idle,
    InBatch,
}

/// One session: `When`, then `bytes`, then `filler` bytes; returns the sink's error.
fn hostile_frame(root: &Path, when: When, bytes: &[u8], filler: usize) -> String {
    let (_, e, c) = file_a();
    let mut p = connect(root);
    if let When::InBatch = when {
        start_batch(&mut p, &e, &c);
    }
    blast(&mut p, bytes, filler);
    sink_error(p)
}

#[test]
fn huge_declared_lengths_are_refused_before_allocation() {
    let place = Place::new();
    let (_, _, c) = file_a();
    for when in [When::Idle, When::InBatch] {
        for (what, bytes, expected) in huge_frames(&c[0].hash) {
            let msg = hostile_frame(&place.root(), when, &bytes, 1 << 20);
            assert!(msg.contains(expected), "{what} ({when:?}): {msg}");
            place.assert_clean(&[], what);
        }
    }
}

#[test]
fn decompression_bombs_stop_at_the_declared_length() {
    let place = Place::new();
    let (data, _, c) = file_a();
    let (hash, len) = (c[0].hash, c[0].len);
    let gib = bomb(8192);
    let zeros = |n: usize| zstd::bulk::compress(&vec![0u8; n], 1).unwrap();
    let in_batch = [
        (
            "a zstd chunk expanding to 1 GiB",
            data_frame(&hash, CODEC_ZSTD, len, &gib),
            "corrupt compressed chunk",
        ),
        (
            "a shuffled chunk whose plane expands to 1 GiB",
            data_frame(&hash, CODEC_SHUFFLE16, len, &shuffled(&gib, len)),
            "corrupt compressed chunk",
        ),
        (
            "a zstd chunk shorter than declared",
            data_frame(&hash, CODEC_ZSTD, len, &zeros(len as usize - 1)),
            "declared",
        ),
        (
            "a zstd chunk of the right length and the wrong bytes",
            data_frame(&hash, CODEC_ZSTD, len, &zeros(len as usize)),
            "does not match its hash",
        ),
        (
            "a raw chunk of the right length and the wrong bytes",
            data_frame(&hash, 0, len, &noise(len as usize, 1)),
            "does not match its hash",
        ),
        (
            "the right bytes under another requested chunk's hash",
            data_frame(&c[1].hash, 0, len, chunk(&data, &c, 0)),
            "chunk",
        ),
    ];
    for (what, bytes, expected) in in_batch {
        let mut p = connect(&place.root());
        let (_, e, _) = file_a();
        start_batch(&mut p, &e, &c);
        blast(&mut p, &bytes, 0);
        p.w.msg(&ToSink::DataEnd).unwrap();
        p.w.flush().unwrap();
        let msg = sink_error(p);
        assert!(msg.contains(expected), "{what}: {msg}");
        place.assert_clean(&[], what);
    }
    for (what, bytes, expected) in [
        (
            "a message expanding to 1 GiB",
            zmsg_frame(1 << 20, &gib),
            "corrupt compressed message",
        ),
        (
            "a message shorter than declared",
            zmsg_frame(4096, &zeros(100)),
            "length mismatch",
        ),
    ] {
        let msg = hostile_frame(&place.root(), When::Idle, &bytes, 0);
        assert!(msg.contains(expected), "{what}: {msg}");
        place.assert_clean(&[], what);
    }
}

#[test]
fn duplicated_and_out_of_order_messages_are_refused() {
    let (data, e, c) = file_a();
    let send = |p: &mut Peer, i: usize| {
        p.w.data(&c[i].hash, Codec::Raw, c[i].len, chunk(&data, &c, i))
            .unwrap();
    };
    let msg = |p: &mut Peer, m: ToSink| {
        p.w.msg(&m).unwrap();
        p.w.flush().unwrap();
    };
    let hello = ToSink::Hello {
        protocol: protocol::wire::PROTOCOL_VERSION,
        version: VERSION.into(),
        root: "/elsewhere".into(),
        chunker: Chunker::default().id(),
    };
    // A batch's worth of ops no sink can take in one message.
    let flood = ToSink::Ops {
        ops: (0..50_000)
            .map(|i| Op::Upsert {
                entry: Entry {
                    path: format!("flood/some/deep/directory/number-{i}"),
                    kind: EntryKind::Dir,
                },
                chunks: None,
            })
            .collect(),
    };
    type Script<'a> = Box<dyn Fn(&mut Peer) + 'a>;
    let cases: Vec<(&str, When, Script<'_>, &str)> = vec![
        (
            "data before any Ops",
            When::Idle,
            Box::new(|p: &mut Peer| {
                send(p, 0);
                msg(p, ToSink::DataEnd)
            }),
            "data frame outside a batch",
        ),
        (
            "the same chunk twice",
            When::InBatch,
            Box::new(|p: &mut Peer| {
                send(p, 0);
                send(p, 0);
                msg(p, ToSink::DataEnd)
            }),
            "unrequested chunk",
        ),
        (
            "DataEnd before every chunk",
            When::InBatch,
            Box::new(|p: &mut Peer| {
                send(p, 0);
                msg(p, ToSink::DataEnd)
            }),
            "were never sent",
        ),
        (
            "DataEnd outside a batch",
            When::Idle,
            Box::new(|p: &mut Peer| msg(p, ToSink::DataEnd)),
            "unexpected DataEnd",
        ),
        (
            "a Plan in an upload",
            When::Idle,
            Box::new(|p: &mut Peer| msg(p, ToSink::Plan { changes: vec![] })),
            "unexpected Plan",
        ),
        (
            "a second Hello",
            When::Idle,
            Box::new(|p: &mut Peer| msg(p, hello.clone())),
            "unexpected Hello",
        ),
        (
            "a second Hello in a transfer",
            When::InBatch,
            Box::new(|p: &mut Peer| msg(p, hello.clone())),
            "got Hello",
        ),
        (
            "Bye in the middle of a transfer",
            When::InBatch,
            Box::new(|p: &mut Peer| {
                send(p, 0);
                msg(p, ToSink::Bye)
            }),
            "got Bye",
        ),
        (
            "Commit in the middle of a transfer",
            When::InBatch,
            Box::new(|p: &mut Peer| msg(p, ToSink::Commit)),
            "got Commit",
        ),
        (
            "Ops in the middle of a transfer",
            When::InBatch,
            Box::new(|p: &mut Peer| msg(p, flood.clone())),
            "got Ops",
        ),
    ];
    for (what, when, script, expected) in cases {
        // A root of its own: chunks a session stored stay staged for the next one.
        let place = Place::new();
        let mut p = connect(&place.root());
        if let When::InBatch = when {
            let need = start_batch(&mut p, &e, &c);
            assert_eq!(need.len(), c.len());
        }
        script(&mut p);
        let said = sink_error(p);
        assert!(said.contains(expected), "{what}: {said}");
        // An error names what came, never all of it.
        assert!(said.len() < 300, "{what}: a {} byte error", said.len());
        place.assert_clean(&[], what);
    }

    // A chunk again once its batch is done.
    let place = Place::new();
    let mut p = connect(&place.root());
    start_batch(&mut p, &e, &c);
    for i in 0..c.len() {
        send(&mut p, i);
    }
    msg(&mut p, ToSink::DataEnd);
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    send(&mut p, 0);
    p.w.flush().unwrap();
    let said = sink_error(p);
    assert!(said.contains("data frame outside a batch"), "{said}");
    place.assert_clean(&["a.bin"], "a chunk after its batch");

    // Chunks in another order than asked for are fine: each goes where its hash says.
    fs::remove_file(place.root().join("a.bin")).unwrap();
    let mut p = connect(&place.root());
    start_batch(&mut p, &e, &c);
    for i in (0..c.len()).rev() {
        send(&mut p, i);
    }
    msg(&mut p, ToSink::DataEnd);
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    commit_and_leave(p);
    assert!(fs::read(place.root().join("a.bin")).unwrap() == data);
}

#[test]
fn a_symlink_committed_earlier_is_never_written_through() {
    let place = Place::new();
    let outside = place.base.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"victim").unwrap();
    let link = |path: &str, target: &Path| Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.to_str().unwrap().into(),
            },
        },
        chunks: None,
    };
    let dir = |path: &str| Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Dir,
        },
        chunks: None,
    };
    // An upload may carry a link out of the tree: it is kept as a link.
    applied(&place.root(), vec![link("link", &outside), dir("d")]);
    assert_eq!(fs::read_link(place.root().join("link")).unwrap(), outside);

    let (e, c) = file_entry("link/pwned", b"evil");
    let (victim, vc) = file_entry("link/victim", b"evil");
    for (what, ops) in [
        (
            "a file",
            vec![Op::Upsert {
                entry: e,
                chunks: Some(c),
            }],
        ),
        (
            "a file over one there",
            vec![Op::Upsert {
                entry: victim.clone(),
                chunks: Some(vc.clone()),
            }],
        ),
        ("a directory", vec![dir("link/sub")]),
        ("a symlink", vec![link("link/l2", Path::new("/"))]),
        (
            "a moved directory",
            vec![Op::Move {
                from: "d".into(),
                entry: Entry {
                    path: "link/d".into(),
                    kind: EntryKind::Dir,
                },
                chunks: None,
            }],
        ),
    ] {
        let msg = refused(&place.root(), ops);
        assert!(msg.contains("symlink"), "{what}: {msg}");
    }
    // A move from behind it moves nothing: the sink wrote nothing there, so it asks for the
    // data instead (which never comes).
    let msg = refused(
        &place.root(),
        vec![Op::Move {
            from: "link/victim".into(),
            entry: Entry {
                path: "stolen".into(),
                ..victim.clone()
            },
            chunks: Some(vc.clone()),
        }],
    );
    assert!(msg.contains("never sent"), "{msg}");
    // Deleting or forgetting through it touches nothing: the sink never wrote there.
    applied(
        &place.root(),
        vec![
            Op::Delete {
                path: "link/victim".into(),
            },
            Op::Forget {
                path: "link/victim".into(),
            },
        ],
    );
    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"victim");
    assert!(!place.root().join("stolen").exists());

    // The link itself can be replaced by a file: the link goes, not what it points to.
    let mut p = connect(&place.root());
    let data = b"a file now".to_vec();
    let (f, fc) = file_entry("link", &data);
    run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: f,
            chunks: Some(fc.clone()),
        }],
        &data,
        &fc,
    );
    source::bye(&mut p.w).unwrap();
    p.sink.join().unwrap().unwrap();
    assert_eq!(fs::read(place.root().join("link")).unwrap(), data);
    assert!(!fs::symlink_metadata(place.root().join("link"))
        .unwrap()
        .is_symlink());
    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"victim");
    assert_eq!(names(place.base.path()), ["outside", "root"]);
}

// ---- Memory ---------------------------------------------------------------------------

#[test]
fn memory_stays_bounded_under_hostile_frames() {
    run_alone("hostile_frames_in_a_process_of_their_own");
}

#[test]
#[ignore = "run alone by memory_stays_bounded_under_hostile_frames"]
fn hostile_frames_in_a_process_of_their_own() {
    if std::env::var_os(MEMORY_CHILD).is_none() {
        return;
    }
    let place = Place::new();
    let (_, _, c) = file_a();
    // Warm up: an honest batch with compressed chunks (threads, zstd contexts, buffers).
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let (te, tc) = file_entry("text.txt", &text);
    let mut p = connect(&place.root());
    p.w.msg(&ToSink::Ops {
        ops: vec![Op::Upsert {
            entry: te,
            chunks: Some(tc.clone()),
        }],
    })
    .unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::Need { .. }
    ));
    for i in 0..tc.len() {
        let raw = chunk(&text, &tc, i);
        let (codec, z) = protocol::compress::compress(raw).unwrap();
        p.w.data(&tc[i].hash, codec, tc[i].len, &z).unwrap();
    }
    p.w.msg(&ToSink::DataEnd).unwrap();
    p.w.msg(&ToSink::Bye).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    p.sink.join().unwrap().unwrap();

    let before = peak_rss_kib();
    let gib = bomb(8192);
    let (hash, len) = (c[0].hash, c[0].len);
    let mut sessions = 0;
    for _round in 0..4 {
        for when in [When::Idle, When::InBatch] {
            for (what, bytes, expected) in huge_frames(&hash) {
                // What a sink that trusted the header would read: well past the bound.
                let msg = hostile_frame(&place.root(), when, &bytes, 128 << 20);
                assert!(msg.contains(expected), "{what}: {msg}");
                sessions += 1;
            }
        }
        for (what, bytes) in [
            ("zstd bomb", data_frame(&hash, CODEC_ZSTD, len, &gib)),
            (
                "shuffled bomb",
                data_frame(&hash, CODEC_SHUFFLE16, len, &shuffled(&gib, len)),
            ),
        ] {
            let (_, e, _) = file_a();
            let mut p = connect(&place.root());
            start_batch(&mut p, &e, &c);
            // The bomb as every chunk the batch needs, again and again.
            for _ in 0..c.len() {
                blast(&mut p, &bytes, 0);
            }
            let _ = p.w.msg(&ToSink::DataEnd);
            let _ = p.w.flush();
            let msg = sink_error(p);
            assert!(msg.contains("chunk"), "{what}: {msg}");
            sessions += 1;
        }
        let msg = hostile_frame(&place.root(), When::Idle, &zmsg_frame(1 << 20, &gib), 0);
        assert!(msg.contains("corrupt compressed message"), "{msg}");
        // A message as large as allowed, of which a few bytes come: the length alone costs
        // no memory.
        let mut bytes = header(64 << 20, KIND_MSG);
        bytes.extend_from_slice(&[7; 1024]);
        let msg = hostile_frame(&place.root(), When::Idle, &bytes, 0);
        assert!(msg.contains("ended inside a frame"), "{msg}");
        sessions += 2;
    }
    let after = peak_rss_kib();
    eprintln!(
        "peak RSS {before} KiB before {sessions} hostile sessions, {after} KiB after \
         (+{} KiB)",
        after - before
    );
    assert!(
        after - before < 64 << 10,
        "hostile frames cost {} KiB",
        after - before
    );
    place.assert_clean(&["text.txt"], "hostile sessions");
}

/// `Prefill` (an upload's word that a long file is changing, sent while mtr still reads it) is
/// checked like an op: an unsafe path, or chunks past the file's size, are refused.
#[test]
fn prefills_outside_the_root_or_their_file_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = noise(1 << 20, 51);
    let (_, c) = file_entry("a.bin", &data);
    let size = data.len() as u64;
    for (path, size, offset, what) in [
        ("../a.bin", size, 0, "unsafe path"),
        ("a.bin", size - 1, 0, "outside the file"),
        ("a.bin", size, u64::MAX - 10, "outside the file"),
    ] {
        let mut p = connect(root.path());
        p.w.msg(&ToSink::Prefill {
            path: path.into(),
            size,
            offset,
            chunks: c.clone(),
        })
        .unwrap();
        p.w.flush().unwrap();
        let msg = sink_error(p);
        assert!(msg.contains(what), "{path} at {offset}: {msg}");
    }
    assert_eq!(names(root.path()), [".mtr-sync"]);
}

/// A prefill only ever starts a staged file: the file's `Upsert` decides its content (a
/// prefill that lied about where the chunks go keeps none of its lies), and one that no
/// `Upsert` claims is removed with the session, the file untouched.
#[test]
fn prefills_never_decide_a_file_and_leave_nothing_unclaimed() {
    let root = tempfile::tempdir().unwrap();
    let old = noise(3 << 20, 52);
    let c = place(root.path(), "ckpt.bin", &old);
    let staged = || staged(root.path());
    let told = |chunks: Vec<ChunkSpec>| ToSink::Prefill {
        path: "ckpt.bin".into(),
        size: old.len() as u64,
        offset: 0,
        chunks,
    };

    // Told, then committed with no upsert.
    let mut p = connect(root.path());
    assert!(prefill(&mut p, &told(c.clone())).is_empty());
    commit_and_leave(p);
    assert_eq!(staged(), 0);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == old);

    // Told the old chunks in reverse order, then sent the file with its head changed.
    let mut new = old.clone();
    new[..1000].fill(7);
    let (e, nc) = file_entry("ckpt.bin", &new);
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told(c.iter().rev().cloned().collect()));
    assert!(
        asked.is_empty(),
        "the recorded version holds every chunk told"
    );
    let rounds = run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: e,
            chunks: Some(nc.clone()),
        }],
        &new,
        &nc,
    );
    commit_and_leave(p);
    assert!(rounds[0] <= 2, "only the changed head travels: {rounds:?}");
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == new);
    assert_eq!(staged(), 0);

    // Told twice over the same bytes (as a file read again while it changed): not prefilled,
    // built as usual.
    let mut newer = new.clone();
    newer[2 << 20..(2 << 20) + 1000].fill(8);
    let (e, nc2) = file_entry("ckpt.bin", &newer);
    let mut p = connect(root.path());
    // The first list's head is no longer the sink's: it asks for it (and is never sent it).
    let asked = prefill(&mut p, &told(c.clone()));
    let lacking: Vec<Hash> = c
        .iter()
        .map(|x| x.hash)
        .filter(|h| !nc.iter().any(|y| y.hash == *h))
        .collect();
    assert!(!asked.is_empty() && asked == lacking, "{asked:?}");
    assert!(
        prefill(&mut p, &told(nc2.clone())).is_empty(),
        "told twice: not prefilled"
    );
    run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: e,
            chunks: Some(nc2.clone()),
        }],
        &newer,
        &nc2,
    );
    commit_and_leave(p);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == newer);
    assert_eq!(staged(), 0);
}

/// The chunks a prefill's file lacks are asked for in answer (`PrefillNeed`) and sent at once,
/// before the batch: the file's `Upsert` then asks for none of them. What was asked for and
/// does not verify is dropped and asked for again by the batch; a chunk not asked for, or
/// sent after the source's next message, is refused; a chunk another file here holds is not
/// asked for (the batch copies it).
#[test]
fn a_prefill_asks_for_what_no_file_holds_and_takes_only_that() {
    let root = tempfile::tempdir().unwrap();
    let old = noise(3 << 20, 61);
    let other = noise(2 << 20, 63);
    let (e, c) = file_entry("ckpt.bin", &old);
    let (oe, oc) = file_entry("other.bin", &other);
    let mut both = old.clone();
    both.extend_from_slice(&other);
    let mut p = connect(root.path());
    let upserts = vec![
        Op::Upsert {
            entry: e,
            chunks: Some(c.clone()),
        },
        Op::Upsert {
            entry: oe,
            chunks: Some(oc.clone()),
        },
    ];
    let mut all = c.clone();
    all.extend_from_slice(&oc);
    run_batch(&mut p, upserts, &both, &all);
    commit_and_leave(p);

    // ckpt.bin with 1000 bytes overwritten at 1.5 MiB, the prefill told in one segment.
    let edit = |base: &[u8], fill: u8| {
        let mut new = base.to_vec();
        new[3 << 19..(3 << 19) + 1000].fill(fill);
        new
    };
    let told = |chunks: &[ChunkSpec], size: usize| ToSink::Prefill {
        path: "ckpt.bin".into(),
        size: size as u64,
        offset: 0,
        chunks: chunks.to_vec(),
    };
    let lacking = |new: &[ChunkSpec], had: &[ChunkSpec]| -> Vec<Hash> {
        new.iter()
            .map(|x| x.hash)
            .filter(|h| !had.iter().any(|y| y.hash == *h))
            .collect()
    };
    let upsert = |data: &[u8]| {
        let (e, c) = file_entry("ckpt.bin", data);
        (
            Op::Upsert {
                entry: e,
                chunks: Some(c.clone()),
            },
            c,
        )
    };

    // Told in two segments, the second before the first's chunks are sent (as mtr does), and
    // sent as asked: the batch asks for nothing.
    let new = edit(&old, 1);
    let (op, nc) = upsert(&new);
    let mut p = connect(root.path());
    let half = nc.len() / 2;
    let mid: u64 = nc[..half].iter().map(|x| u64::from(x.len)).sum();
    let mut asked = prefill(&mut p, &told(&nc[..half], new.len()));
    let ToSink::Prefill { chunks, .. } = told(&nc[half..], new.len()) else {
        unreachable!()
    };
    asked.extend(prefill(
        &mut p,
        &ToSink::Prefill {
            path: "ckpt.bin".into(),
            size: new.len() as u64,
            offset: mid,
            chunks,
        },
    ));
    assert!(!asked.is_empty() && asked == lacking(&nc, &c), "{asked:?}");
    send_named(&mut p, &asked, &new, &nc);
    let rounds = run_batch(&mut p, vec![op], &new, &nc);
    assert_eq!(rounds.iter().sum::<usize>(), 0, "asked again: {rounds:?}");
    commit_and_leave(p);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == new);

    // Sent corrupt (a payload that is not the chunk its hash names): dropped, and asked for
    // again by the batch.
    let newer = edit(&new, 2);
    let (op, nc2) = upsert(&newer);
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told(&nc2, newer.len()));
    assert_eq!(asked, lacking(&nc2, &nc));
    for h in &asked {
        let len = nc2.iter().find(|x| x.hash == *h).unwrap().len;
        p.w.data(h, Codec::Raw, len, &vec![9u8; len as usize])
            .unwrap();
    }
    let rounds = run_batch(&mut p, vec![op], &newer, &nc2);
    assert_eq!(rounds.iter().sum::<usize>(), asked.len(), "{rounds:?}");
    commit_and_leave(p);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == newer);

    // A chunk not asked for (one the sink holds), or one asked for but sent after the next
    // message: refused.
    let newest = edit(&newer, 3);
    let (_, nc3) = upsert(&newest);
    let held: Vec<Hash> = vec![nc3.iter().find(|x| !asked.contains(&x.hash)).unwrap().hash];
    let mut p = connect(root.path());
    prefill(&mut p, &told(&nc3, newest.len()));
    send_named(&mut p, &held, &newest, &nc3);
    p.w.flush().unwrap();
    let msg = sink_error(p);
    assert!(msg.contains("data frame outside a batch"), "{msg}");
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told(&nc3, newest.len()));
    assert!(!asked.is_empty());
    p.w.msg(&ToSink::ChangesFollow).unwrap();
    send_named(&mut p, &asked, &newest, &nc3);
    p.w.flush().unwrap();
    let msg = sink_error(p);
    assert!(msg.contains("data frame outside a batch"), "{msg}");
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == newer);

    // ckpt.bin becomes a copy of other.bin: nothing is asked for, nothing travels.
    let (op, _) = upsert(&other);
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told(&oc, other.len()));
    assert!(asked.is_empty(), "{asked:?}");
    let rounds = run_batch(&mut p, vec![op], &other, &oc);
    assert_eq!(rounds.iter().sum::<usize>(), 0, "{rounds:?}");
    commit_and_leave(p);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == other);
    assert_eq!(staged(root.path()), 0);
}

/// A session that ends after its prefills' chunks arrived (mtr killed, the connection lost)
/// keeps them: the next session asks for none of them, told the file's segments again or
/// not.
#[test]
fn chunks_a_prefill_received_survive_an_interrupted_session() {
    let root = tempfile::tempdir().unwrap();
    let old = noise(3 << 20, 65);
    place(root.path(), "ckpt.bin", &old);
    let mut new = old.clone();
    for at in [100_000usize, 1_600_000, 3_000_000] {
        new[at..at + 5000].copy_from_slice(&noise(5000, at as u64));
    }
    let (e, nc) = file_entry("ckpt.bin", &new);
    let told = ToSink::Prefill {
        path: "ckpt.bin".into(),
        size: new.len() as u64,
        offset: 0,
        chunks: nc.clone(),
    };
    let hang_up = |p: Peer| {
        let Peer { r, w, raw, sink } = p;
        drop((r, w));
        let _ = raw.shutdown(Shutdown::Both);
        drop(raw);
        sink.join().unwrap().unwrap();
    };
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told);
    assert!(asked.len() >= 3, "{asked:?}");
    send_named(&mut p, &asked, &new, &nc);
    p.w.flush().unwrap();
    hang_up(p);

    // Told again (mtr's index was not saved either): nothing asked for; interrupted again.
    let mut p = connect(root.path());
    let asked = prefill(&mut p, &told);
    assert!(asked.is_empty(), "asked again: {asked:?}");
    hang_up(p);

    // Sent with no prefill (mtr's index was saved).
    let mut p = connect(root.path());
    let rounds = run_batch(
        &mut p,
        vec![Op::Upsert {
            entry: e,
            chunks: Some(nc.clone()),
        }],
        &new,
        &nc,
    );
    assert_eq!(rounds.iter().sum::<usize>(), 0, "sent again: {rounds:?}");
    commit_and_leave(p);
    assert!(fs::read(root.path().join("ckpt.bin")).unwrap() == new);
    assert_eq!(staged(root.path()), 0);
}

/// `UpsertPrefilled` builds a file from the chunk lists its prefills told, checked like any
/// list: prefills that do not cover the file end to end, or a list that is not the file's
/// (its size and digest), are refused; prefills told in parts, in any order, build it.
#[test]
fn an_upsert_of_prefills_needs_prefills_that_make_up_the_file() {
    let root = tempfile::tempdir().unwrap();
    let data = noise(1 << 20, 53);
    let (e, c) = file_entry("f.bin", &data);
    let half = c.len() / 2;
    let mid: u64 = c[..half].iter().map(|c| u64::from(c.len)).sum();
    let tell = |p: &mut Peer, offset: u64, chunks: &[ChunkSpec]| {
        let msg = ToSink::Prefill {
            path: "f.bin".into(),
            size: data.len() as u64,
            offset,
            chunks: chunks.to_vec(),
        };
        // No recorded version, nothing here holds them: every chunk is asked for (and not
        // sent: the batch asks again).
        let all: Vec<Hash> = chunks.iter().map(|c| c.hash).collect();
        assert_eq!(prefill(p, &msg), all);
    };
    let upsert = || Op::UpsertPrefilled { entry: e.clone() };
    let refused = |tell_first: &dyn Fn(&mut Peer)| {
        let mut p = connect(root.path());
        tell_first(&mut p);
        p.w.msg(&ToSink::Ops {
            ops: vec![upsert()],
        })
        .unwrap();
        p.w.flush().unwrap();
        sink_error(p)
    };
    let msg = refused(&|_| {});
    assert!(msg.contains("do not cover"), "{msg}");
    let msg = refused(&|p| tell(p, mid, &c[half..]));
    assert!(msg.contains("do not cover"), "{msg}");
    let mut swapped = c.clone();
    swapped.swap(0, 1);
    let msg = refused(&|p| tell(p, 0, &swapped));
    assert!(msg.contains("does not match its size or digest"), "{msg}");
    assert!(!root.path().join("f.bin").exists());

    let mut p = connect(root.path());
    tell(&mut p, mid, &c[half..]);
    tell(&mut p, 0, &c[..half]);
    run_batch(&mut p, vec![upsert()], &data, &c);
    commit_and_leave(p);
    assert!(fs::read(root.path().join("f.bin")).unwrap() == data);
}
