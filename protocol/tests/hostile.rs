//! A hostile or broken source talking to a real sink: unsafe paths, writes through symlinks,
//! lying chunk lists, unrequested or corrupt chunks. Each is refused with an error and nothing
//! is written outside the root. Also: an interrupted transfer leaves no partial file among the
//! user's files, and the next session reuses what already arrived.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::Path;

use protocol::chunker::{self, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::compress::Codec;
use protocol::source;
use protocol::wire::{ChunkSpec, Entry, EntryKind, FromSink, Op, ToSink};

const VERSION: &str = "test";

struct Peer {
    r: FrameReader<UnixStream>,
    w: FrameWriter<UnixStream>,
    sink: std::thread::JoinHandle<protocol::Result<()>>,
}

fn connect(root: &Path) -> Peer {
    let (a, b) = UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || {
        let r = b.try_clone().unwrap();
        protocol::sink::serve(r, b, VERSION)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(a);
    source::handshake(&mut r, &mut w, root.to_str().unwrap(), VERSION).unwrap();
    Peer { r, w, sink }
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
    drop(p.w);
    drop(p.r);
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
    let mut off = 0usize;
    for ch in &c {
        if again.contains(&ch.hash) {
            p.w.data(
                &ch.hash,
                Codec::Raw,
                ch.len,
                &data[off..off + ch.len as usize],
            )
            .unwrap();
        }
        off += ch.len as usize;
    }
    p.w.msg(&ToSink::DataEnd).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    p.w.msg(&ToSink::Commit).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    source::bye(&mut p.w).unwrap();
    p.sink.join().unwrap().unwrap();
    assert!(fs::read(root.path().join("big.bin")).unwrap() == data);
    assert_eq!(
        fs::read_dir(root.path().join(".mtr-sync/staging"))
            .unwrap()
            .count(),
        0
    );
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
                let mut off = 0usize;
                for ch in chunks {
                    if hashes.contains(&ch.hash) {
                        p.w.data(
                            &ch.hash,
                            Codec::Raw,
                            ch.len,
                            &data[off..off + ch.len as usize],
                        )
                        .unwrap();
                    }
                    off += ch.len as usize;
                }
                p.w.msg(&ToSink::DataEnd).unwrap();
                p.w.flush().unwrap();
            }
            FromSink::BatchDone => return rounds,
            other => panic!("unexpected {other:?}"),
        }
    }
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
    p.w.msg(&ToSink::Commit).unwrap();
    p.w.flush().unwrap();
    assert!(matches!(
        p.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    source::bye(&mut p.w).unwrap();
    p.sink.join().unwrap().unwrap();

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
fn applied(root: &Path, ops: Vec<Op>) {
    let mut p = connect(root);
    p.w.msg(&ToSink::Ops { ops }).unwrap();
    p.w.flush().unwrap();
    loop {
        match p.r.msg::<FromSink>().unwrap() {
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
    applied(
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
