//! Downloads in one process: `get::serve` (the agent's side, the source) on one end of a socket
//! pair, `get::request` + `get::receive` (mtr's side, the sink) on the other. A directory or a
//! single file lands under the local name; a second download moves only what changed; files
//! already at the destination serve as chunk sources without any index; a hostile source
//! cannot write outside the destination; symlinks pointing out of it are skipped. A fake agent
//! speaking the real protocol sends what no real one does (huge declared frame lengths,
//! decompression bombs, chunks whose hash does not match, duplicated or out-of-order messages):
//! each is refused with an error, nothing is written outside the destination, and memory stays
//! bounded (measured in a process of its own).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use protocol::chunker::{self, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::compress::Codec;
use protocol::get::{self, ReceiveConfig, Received, Request};
use protocol::scan::NoProgress;
use protocol::wire::{
    Change, ChunkSpec, Entry, EntryKind, FromSink, Hash, Op, SendRequest, ToSink, PROTOCOL_VERSION,
};

const VERSION: &str = "test";

/// A "server" tree, a local download directory, the agent's cache and mtr's state.
struct Setup {
    remote: tempfile::TempDir,
    local: tempfile::TempDir,
    cache: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            remote: tempfile::tempdir().unwrap(),
            local: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn remote(&self, rel: &str) -> PathBuf {
        self.remote.path().join(rel)
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.local.path().join(rel)
    }

    /// Download remote `path` to local `dest` (relative to the download directory).
    fn get(&self, path: &str, dest: &str, dry_run: bool) -> protocol::Result<Got> {
        let (a, b) = UnixStream::pair().unwrap();
        let cache = self.cache.path().to_path_buf();
        let agent = std::thread::spawn(move || {
            let r = b.try_clone().unwrap();
            get::serve(r, b, VERSION, &cache)
        });
        let dest = self.local(dest);
        let mut r = FrameReader::new(a.try_clone().unwrap());
        let mut w = FrameWriter::new(a);
        let req = Request {
            path: path.to_string(),
            name: get::name_of(&dest)?,
            dry_run,
        };
        let mut warnings = Vec::new();
        let result = get::request(&mut r, &mut w, &req, VERSION).and_then(|_| {
            let cfg = ReceiveConfig {
                state_dir: self.state.path().join(dest.file_name().unwrap()),
                dest,
                dry_run,
            };
            get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut |m| {
                warnings.push(m)
            })
        });
        drop((r, w));
        let agent = agent.join().unwrap();
        let received = result?;
        agent?;
        Ok(Got { received, warnings })
    }

    fn get_ok(&self, path: &str, dest: &str) -> Got {
        self.get(path, dest, false)
            .unwrap_or_else(|e| panic!("get {path} -> {dest}: {e}"))
    }

    /// Nothing but `names` in the download directory (no staging left behind).
    fn assert_only(&self, names: &[&str]) {
        let mut found: Vec<String> = fs::read_dir(self.local.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        assert_eq!(
            found, names,
            "the download directory holds more than the download"
        );
    }
}

/// What a download did, and what it warned about.
#[derive(Debug)]
struct Got {
    received: Received,
    warnings: Vec<String>,
}

impl std::ops::Deref for Got {
    type Target = Received;
    fn deref(&self) -> &Received {
        &self.received
    }
}

#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>, u32, i64),
    Link(PathBuf),
}

/// Every path under `root` (or `root` itself, a file) with content, mode and mtime.
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    fn node(p: &Path) -> Node {
        let m = fs::symlink_metadata(p).unwrap();
        if m.file_type().is_symlink() {
            Node::Link(fs::read_link(p).unwrap())
        } else if m.is_dir() {
            Node::Dir
        } else {
            Node::File(
                fs::read(p).unwrap(),
                m.permissions().mode() & 0o777,
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            )
        }
    }
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
        for de in fs::read_dir(dir).unwrap() {
            let de = de.unwrap();
            let r = format!("{rel}/{}", de.file_name().into_string().unwrap());
            let n = node(&de.path());
            if n == Node::Dir {
                walk(&de.path(), &r, out);
            }
            out.insert(r, n);
        }
    }
    let mut out = BTreeMap::new();
    let top = node(root);
    if top == Node::Dir {
        walk(root, "", &mut out);
    }
    out.insert(String::new(), top);
    out
}

fn assert_same(remote: &Path, local: &Path) {
    assert_eq!(snapshot(remote), snapshot(local), "the download differs");
}

/// Overwrite `len` bytes at `at` with other random bytes, keeping the file's mtime moving.
fn overwrite(path: &Path, at: usize, len: usize, seed: u64) {
    let mut data = fs::read(path).unwrap();
    data[at..at + len].copy_from_slice(&noise(len, seed));
    fs::write(path, data).unwrap();
}

fn remote_tree(s: &Setup) {
    let r = s.remote("proj/out");
    fs::create_dir_all(r.join("ckpt/empty")).unwrap();
    fs::create_dir_all(r.join("ünïcødé 目录")).unwrap();
    fs::write(r.join("log.txt"), "epoch 1\n").unwrap();
    fs::write(r.join("ckpt/model.bin"), noise(600_000, 1)).unwrap();
    fs::write(r.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(r.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(r.join("ünïcødé 目录/ファイル.txt"), "こんにちは").unwrap();
    symlink("ckpt/model.bin", r.join("latest")).unwrap();
    symlink("../log.txt", r.join("ckpt/log")).unwrap();
    // An upload's state directory at the remote path's root is never downloaded.
    fs::create_dir_all(r.join(".mtr-sync")).unwrap();
    fs::write(r.join(".mtr-sync/index"), "state").unwrap();
}

#[test]
fn a_directory_arrives_under_the_local_name_and_a_second_get_is_a_noop() {
    let s = Setup::new();
    remote_tree(&s);
    let remote = s.remote("proj/out");
    let got = s.get_ok(remote.to_str().unwrap(), "results");
    assert!(got.changes > 0);
    fs::remove_dir_all(remote.join(".mtr-sync")).unwrap();
    assert_same(&remote, &s.local("results"));
    s.assert_only(&["results"]);

    let again = s.get_ok(remote.to_str().unwrap(), "results");
    assert_eq!(again.changes, 0, "nothing changed: {again:?}");
    assert_eq!(again.stats.bytes_received, 0);
}

#[test]
fn a_single_file_gets_the_local_name_and_a_change_moves_only_itself() {
    let s = Setup::new();
    let remote = s.remote("model.bin");
    fs::write(&remote, noise(4 << 20, 2)).unwrap();
    let first = s.get_ok(remote.to_str().unwrap(), "other-name.bin");
    assert_eq!(first.stats.bytes_received, 4 << 20);
    assert_same(&remote, &s.local("other-name.bin"));
    s.assert_only(&["other-name.bin"]);

    // 10% of the file changes on the server.
    overwrite(&remote, 1 << 20, 400_000, 3);
    let second = s.get_ok(remote.to_str().unwrap(), "other-name.bin");
    assert_same(&remote, &s.local("other-name.bin"));
    assert!(
        second.stats.bytes_received < 1 << 20,
        "a 10% change moved {} bytes",
        second.stats.bytes_received
    );
    assert!(second.stats.bytes_copied_locally > 3 << 20, "{second:?}");
    s.assert_only(&["other-name.bin"]);
}

#[test]
fn files_already_at_the_destination_are_reused_without_an_index() {
    let s = Setup::new();
    let remote = s.remote("data");
    fs::create_dir_all(&remote).unwrap();
    fs::write(remote.join("a.bin"), noise(3 << 20, 4)).unwrap();
    fs::write(remote.join("b.bin"), noise(1 << 20, 5)).unwrap();
    // An older copy of the tree, made by other means: no state for it anywhere.
    fs::create_dir_all(s.local("data")).unwrap();
    fs::copy(remote.join("a.bin"), s.local("data/a.bin")).unwrap();
    fs::copy(remote.join("b.bin"), s.local("data/old-name.bin")).unwrap();
    overwrite(&remote.join("a.bin"), 0, 100_000, 6);

    let got = s.get_ok(remote.to_str().unwrap(), "data");
    assert!(
        got.stats.bytes_received < 600_000,
        "moved {} bytes of a tree the destination mostly held",
        got.stats.bytes_received
    );
    assert!(got.stats.bytes_copied_locally >= 3 << 20, "{got:?}");
    assert_eq!(
        fs::read(s.local("data/a.bin")).unwrap(),
        fs::read(remote.join("a.bin")).unwrap()
    );
    assert_eq!(
        fs::read(s.local("data/b.bin")).unwrap(),
        fs::read(remote.join("b.bin")).unwrap()
    );
    assert!(
        s.local("data/old-name.bin").exists(),
        "a local file was deleted"
    );

    // A single file that is already identical is only adopted.
    let single = s.remote("single.bin");
    fs::write(&single, noise(2 << 20, 7)).unwrap();
    fs::copy(&single, s.local("single.bin")).unwrap();
    let got = s.get_ok(single.to_str().unwrap(), "single.bin");
    assert_eq!(got.stats.bytes_received, 0, "{got:?}");
}

#[test]
fn local_files_survive_and_only_what_the_download_wrote_is_deleted() {
    let s = Setup::new();
    let remote = s.remote("out");
    fs::create_dir_all(&remote).unwrap();
    for name in ["gone.txt", "edited.txt", "kept.txt"] {
        fs::write(remote.join(name), name).unwrap();
    }
    let path = remote.to_str().unwrap();
    s.get_ok(path, "out");
    fs::write(s.local("out/mine.txt"), "local work").unwrap();
    fs::write(s.local("out/edited.txt"), "edited here").unwrap();
    fs::remove_file(remote.join("gone.txt")).unwrap();
    fs::remove_file(remote.join("edited.txt")).unwrap();
    let got = s.get_ok(path, "out");
    assert!(
        !s.local("out/gone.txt").exists(),
        "a file the download wrote survived"
    );
    assert_eq!(fs::read(s.local("out/mine.txt")).unwrap(), b"local work");
    assert_eq!(fs::read(s.local("out/edited.txt")).unwrap(), b"edited here");
    assert!(
        got.warnings.iter().any(|w| w.contains("edited.txt")),
        "{:?}",
        got.warnings
    );
    assert_eq!(fs::read(s.local("out/kept.txt")).unwrap(), b"kept.txt");
}

#[test]
fn a_path_that_turns_from_file_to_directory_follows() {
    let s = Setup::new();
    let remote = s.remote("thing");
    fs::write(&remote, "a file").unwrap();
    let path = remote.to_str().unwrap();
    s.get_ok(path, "thing");
    fs::remove_file(&remote).unwrap();
    fs::create_dir_all(remote.join("sub")).unwrap();
    fs::write(remote.join("sub/x"), "x").unwrap();
    s.get_ok(path, "thing");
    assert_same(&remote, &s.local("thing"));
    fs::remove_dir_all(&remote).unwrap();
    fs::write(&remote, "a file again").unwrap();
    s.get_ok(path, "thing");
    assert_same(&remote, &s.local("thing"));
}

#[test]
fn what_the_source_skips_is_reported() {
    let s = Setup::new();
    fs::create_dir_all(s.remote("out")).unwrap();
    fs::write(s.remote("out/a.txt"), "a").unwrap();
    let fifo = std::ffi::CString::new(s.remote("out/pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let got = s.get_ok(s.remote("out").to_str().unwrap(), "out");
    assert!(
        got.warnings
            .iter()
            .any(|w| w.contains("the source skipped") && w.contains("pipe")),
        "{:?}",
        got.warnings
    );
    assert!(s.local("out/a.txt").exists() && !s.local("out/pipe").exists());
}

#[test]
fn a_remote_path_that_is_a_symlink_is_followed() {
    let s = Setup::new();
    fs::create_dir_all(s.remote("ckpt/step-100")).unwrap();
    fs::write(s.remote("ckpt/step-100/model.bin"), noise(100_000, 11)).unwrap();
    symlink("ckpt/step-100", s.remote("latest")).unwrap();
    symlink("ckpt/step-100/model.bin", s.remote("latest.bin")).unwrap();
    s.get_ok(s.remote("latest").to_str().unwrap(), "latest");
    assert_same(&s.remote("ckpt/step-100"), &s.local("latest"));
    s.get_ok(s.remote("latest.bin").to_str().unwrap(), "model.bin");
    assert_same(&s.remote("ckpt/step-100/model.bin"), &s.local("model.bin"));
}

#[test]
fn symlinks_out_of_the_destination_are_skipped_with_a_warning() {
    let s = Setup::new();
    let r = s.remote("links");
    fs::create_dir_all(r.join("a/b")).unwrap();
    fs::write(r.join("a/file"), "x").unwrap();
    symlink("/etc", r.join("abs")).unwrap();
    symlink("../..", r.join("a/up")).unwrap();
    symlink("b/../../..", r.join("a/sneaky")).unwrap();
    symlink("../file", r.join("a/b/inside")).unwrap();
    let got = s.get_ok(r.to_str().unwrap(), "links");
    let local = s.local("links");
    assert_eq!(
        fs::read_link(local.join("a/b/inside")).unwrap(),
        Path::new("../file")
    );
    for skipped in ["abs", "a/up", "a/sneaky"] {
        assert!(
            fs::symlink_metadata(local.join(skipped)).is_err(),
            "{skipped} was created"
        );
        assert!(
            got.warnings.iter().any(|w| w.contains(skipped)),
            "no warning for {skipped}: {:?}",
            got.warnings
        );
    }
    s.assert_only(&["links"]);
}

#[test]
fn a_moved_directory_never_carries_a_symlink_out_of_the_destination() {
    let s = Setup::new();
    let r = s.remote("links");
    fs::create_dir_all(r.join("deep/sub")).unwrap();
    fs::write(r.join("deep/sub/f"), noise(50_000, 3)).unwrap();
    fs::write(r.join("x"), "x").unwrap();
    // Inside the destination from here (to links/x), out of it one level up.
    symlink("../../x", r.join("deep/sub/link")).unwrap();
    s.get_ok(r.to_str().unwrap(), "links");
    let local = s.local("links");
    assert!(fs::symlink_metadata(local.join("deep/sub/link")).is_ok());
    fs::rename(r.join("deep/sub"), r.join("sub")).unwrap();
    let got = s.get_ok(r.to_str().unwrap(), "links");
    assert!(
        fs::symlink_metadata(local.join("sub/link")).is_err(),
        "a moved symlink now points out of the destination"
    );
    assert!(got.warnings.iter().any(|w| w.contains("sub/link")));
    assert_eq!(fs::read(local.join("sub/f")).unwrap(), noise(50_000, 3));
    assert!(!local.join("deep/sub").exists());
}

#[test]
fn dry_run_lists_local_changes_and_writes_nothing() {
    let s = Setup::new();
    let r = s.remote("out");
    fs::create_dir_all(&r).unwrap();
    fs::write(r.join("new.txt"), "new").unwrap();
    fs::write(r.join("there.txt"), "remote version").unwrap();
    fs::create_dir_all(s.local("out")).unwrap();
    fs::write(s.local("out/there.txt"), "local version").unwrap();
    let got = s.get(r.to_str().unwrap(), "out", true).unwrap();
    assert_eq!(
        got.plan,
        vec![
            Change::Update("out".into()),
            Change::Add("out/new.txt".into()),
            Change::Update("out/there.txt".into()),
        ]
    );
    assert!(!s.local("out/new.txt").exists());
    assert_eq!(
        fs::read(s.local("out/there.txt")).unwrap(),
        b"local version"
    );
    s.assert_only(&["out"]);
    assert_eq!(
        fs::read_dir(s.state.path()).unwrap().count(),
        0,
        "a dry run saved state"
    );

    let got = s.get(r.to_str().unwrap(), "fresh", true).unwrap();
    assert_eq!(got.plan.len(), 3);
    s.assert_only(&["out"]);
}

#[test]
fn a_missing_remote_path_is_an_error_naming_it() {
    let s = Setup::new();
    let missing = s.remote("no/such/file.bin");
    let err = s
        .get(missing.to_str().unwrap(), "file.bin", false)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    s.assert_only(&[]);
}

/// A source that follows the handshake, then sends `first` (`Ops`, serving the chunks asked for
/// from `data`) and returns the sink's error message.
fn hostile(dest: &Path, state: &Path, first: ToSink, data: &[u8]) -> String {
    let (a, b) = UnixStream::pair().unwrap();
    let cfg = ReceiveConfig {
        dest: dest.to_path_buf(),
        state_dir: state.to_path_buf(),
        dry_run: false,
    };
    let mtr = std::thread::spawn(move || {
        let mut r = FrameReader::new(b.try_clone().unwrap());
        let mut w = FrameWriter::new(b);
        let req = Request {
            path: "/anything".into(),
            name: get::name_of(&cfg.dest).unwrap(),
            dry_run: false,
        };
        get::request(&mut r, &mut w, &req, VERSION)?;
        get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut drop)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(a);
    let _: SendRequest = r.msg().unwrap();
    w.msg(&ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: VERSION.into(),
        root: "/".into(),
        chunker: Chunker::default().id(),
    })
    .unwrap();
    w.flush().unwrap();
    assert!(matches!(
        r.msg::<FromSink>().unwrap(),
        FromSink::HelloAck { .. }
    ));
    let chunks = Chunker::default().chunk(data);
    w.msg(&first).unwrap();
    w.flush().unwrap();
    let said = loop {
        match r.msg::<FromSink>() {
            Ok(FromSink::Need { hashes }) => {
                for h in hashes {
                    let c = chunks.iter().find(|c| c.hash == h).unwrap();
                    let raw = &data[c.offset as usize..][..c.len as usize];
                    w.data(&h, Codec::Raw, c.len, raw).unwrap();
                }
                w.msg(&ToSink::DataEnd).unwrap();
                w.flush().unwrap();
            }
            Ok(FromSink::Error { message }) => break message,
            Ok(FromSink::BatchDone) => {
                w.msg(&ToSink::Commit).unwrap();
                w.flush().unwrap();
            }
            Ok(other) => panic!("the sink accepted: {other:?}"),
            Err(e) => panic!("no error from the sink: {e}"),
        }
    };
    drop((r, w));
    let local = mtr.join().unwrap().unwrap_err().to_string();
    assert_eq!(local, said);
    said
}

fn file_op(path: &str, data: &[u8]) -> Op {
    let chunks: Vec<ChunkSpec> = chunker::specs(&Chunker::default().chunk(data));
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: data.len() as u64,
                mode: 0o644,
                mtime_ns: 0,
                digest: chunker::file_digest(&chunks),
            },
        },
        chunks: Some(chunks),
    }
}

fn link_op(path: &str, target: &str) -> Op {
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        },
        chunks: None,
    }
}

fn dir_op(path: &str) -> Op {
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Dir,
        },
        chunks: None,
    }
}

#[test]
fn a_hostile_source_cannot_write_outside_the_destination() {
    let base = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let downloads = base.path().join("downloads");
    fs::create_dir_all(&downloads).unwrap();
    fs::write(downloads.join("users-file.txt"), "mine").unwrap();
    let dest = downloads.join("out");
    let evil = b"evil".as_slice();
    let abs = outside.path().join("pwned");
    let cases: Vec<(Vec<Op>, &str)> = vec![
        (vec![file_op("../escape", evil)], "unsafe path"),
        (vec![file_op("out/../../escape", evil)], "unsafe path"),
        (vec![file_op(abs.to_str().unwrap(), evil)], "unsafe path"),
        (
            vec![file_op("users-file.txt", evil)],
            "outside the download",
        ),
        (vec![file_op("outside", evil)], "outside the download"),
        (
            vec![Op::Delete {
                path: "users-file.txt".into(),
            }],
            "outside the download",
        ),
        (
            vec![
                dir_op("out"),
                link_op("out/etc", outside.path().to_str().unwrap()),
                file_op("out/etc/pwned", evil),
            ],
            "under a symlink that was refused",
        ),
        (
            vec![
                dir_op("out"),
                link_op("out/up", ".."),
                file_op("out/up/escape", evil),
            ],
            "under a symlink that was refused",
        ),
    ];
    for (ops, expected) in cases {
        let what = format!("{ops:?}");
        let msg = hostile(&dest, state.path(), ToSink::Ops { ops }, evil);
        assert!(msg.contains(expected), "{what}: {msg}");
    }
    // An upload's prefill has no place in a download.
    let prefill = ToSink::Prefill {
        path: "out/big".into(),
        size: 1 << 20,
        offset: 0,
        chunks: Vec::new(),
    };
    let msg = hostile(&dest, state.path(), prefill, evil);
    assert!(msg.contains("unexpected Prefill"), "{msg}");
    // A link of the user's own, in the destination, is never written through either.
    fs::create_dir_all(&dest).unwrap();
    symlink(outside.path(), dest.join("mine")).unwrap();
    let msg = hostile(
        &dest,
        state.path(),
        ToSink::Ops {
            ops: vec![file_op("out/mine/pwned", evil)],
        },
        evil,
    );
    assert!(msg.contains("symlink"), "{msg}");

    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "written outside"
    );
    assert!(!base.path().join("escape").exists());
    assert_eq!(fs::read(downloads.join("users-file.txt")).unwrap(), b"mine");
    let names: Vec<String> = fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn frame_bounds_apply_to_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let cfg = ReceiveConfig {
        dest: dir.path().join("out"),
        state_dir: state.path().to_path_buf(),
        dry_run: false,
    };
    let mtr = std::thread::spawn(move || {
        let mut r = FrameReader::new(b.try_clone().unwrap());
        let mut w = FrameWriter::new(b);
        let req = Request {
            path: "/x".into(),
            name: "out".into(),
            dry_run: false,
        };
        get::request(&mut r, &mut w, &req, VERSION)?;
        get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut drop)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(a.try_clone().unwrap());
    let _: SendRequest = r.msg().unwrap();
    w.msg(&ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: VERSION.into(),
        root: "/x".into(),
        chunker: Chunker::default().id(),
    })
    .unwrap();
    w.flush().unwrap();
    let _: FromSink = r.msg().unwrap();
    // A message frame that claims 1 GiB.
    use std::io::Write;
    let mut raw = a;
    raw.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    raw.write_all(&[0]).unwrap();
    let err = mtr.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("exceeds the limit"), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_agent_of_another_version_is_reported() {
    let (a, b) = UnixStream::pair().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let path = cache.path().to_path_buf();
    let agent = std::thread::spawn(move || {
        let r = b.try_clone().unwrap();
        get::serve(r, b, "other", &path)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let mut w = FrameWriter::new(a);
    let req = Request {
        path: "/x".into(),
        name: "x".into(),
        dry_run: false,
    };
    let err = get::request(&mut r, &mut w, &req, VERSION).unwrap_err();
    assert!(matches!(err, protocol::Error::Version(_)), "{err}");
    drop((r, w));
    agent.join().unwrap().unwrap();
}

// ---- A fake agent sending what no real one does ------------------------------------------

/// Where a download lands (`<base>/downloads/out`), mtr's state for it, and a directory
/// beside them that must stay as it is.
struct Land {
    base: tempfile::TempDir,
}

impl Land {
    fn new() -> Land {
        let base = tempfile::tempdir().unwrap();
        for d in ["downloads", "state", "outside"] {
            fs::create_dir(base.path().join(d)).unwrap();
        }
        fs::write(base.path().join("downloads/users-file.txt"), "mine").unwrap();
        fs::write(base.path().join("outside/victim"), "victim").unwrap();
        Land { base }
    }

    fn dest(&self) -> PathBuf {
        self.base.path().join("downloads/out")
    }

    fn state(&self) -> PathBuf {
        self.base.path().join("state")
    }

    /// Nothing was written outside the destination (no staging left either), and in it
    /// nothing but `allowed` files.
    fn assert_clean(&self, allowed: &[&str], what: &str) {
        let names = |d: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(self.base.path().join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(""),
            ["downloads", "outside", "state"],
            "{what}: written outside"
        );
        assert_eq!(names("outside"), ["victim"], "{what}: written outside");
        let downloads = names("downloads");
        assert!(
            downloads == ["out", "users-file.txt"] || downloads == ["users-file.txt"],
            "{what}: {downloads:?}"
        );
        assert_eq!(
            fs::read(self.base.path().join("downloads/users-file.txt")).unwrap(),
            b"mine",
            "{what}"
        );
        if self.dest().exists() {
            for de in fs::read_dir(self.dest()).unwrap() {
                let n = de.unwrap().file_name().into_string().unwrap();
                assert!(allowed.contains(&n.as_str()), "{what}: out/{n} was placed");
            }
        }
    }
}

/// A fake `mtr-agent send` on one end of a socket pair, mtr downloading on the other.
struct Fake {
    r: FrameReader<UnixStream>,
    w: FrameWriter<UnixStream>,
    /// The same socket, for bytes no `FrameWriter` would write.
    raw: UnixStream,
    mtr: std::thread::JoinHandle<protocol::Result<Received>>,
}

/// mtr asks for a download into `land`; the fake reads the request and, if `greet`, answers
/// `Hello` and reads mtr's `HelloAck`.
fn fake_agent(land: &Land, greet: bool) -> Fake {
    let (a, b) = UnixStream::pair().unwrap();
    let cfg = ReceiveConfig {
        dest: land.dest(),
        state_dir: land.state(),
        dry_run: false,
    };
    let mtr = std::thread::spawn(move || {
        let mut r = FrameReader::new(b.try_clone().unwrap());
        let mut w = FrameWriter::new(b);
        let req = Request {
            path: "/anything".into(),
            name: "out".into(),
            dry_run: false,
        };
        get::request(&mut r, &mut w, &req, VERSION)?;
        get::receive(&mut r, &mut w, &cfg, VERSION, &NoProgress, &mut drop)
    });
    let mut r = FrameReader::new(a.try_clone().unwrap());
    let raw = a.try_clone().unwrap();
    let w = FrameWriter::new(a);
    let _: SendRequest = r.msg().unwrap();
    let mut fake = Fake { r, w, raw, mtr };
    if greet {
        fake.say(ToSink::Hello {
            protocol: PROTOCOL_VERSION,
            version: VERSION.into(),
            root: "/anything".into(),
            chunker: Chunker::default().id(),
        });
        assert!(matches!(
            fake.r.msg::<FromSink>().unwrap(),
            FromSink::HelloAck { .. }
        ));
    }
    fake
}

/// The file the fake sends, `out/a.bin` (several chunks).
fn a_bin() -> (Vec<u8>, Vec<ChunkSpec>) {
    let data = noise(600_000, 21);
    let c = chunker::specs(&Chunker::default().chunk(&data));
    assert!(c.len() > 1);
    (data, c)
}

fn chunk_of<'a>(data: &'a [u8], c: &[ChunkSpec], i: usize) -> &'a [u8] {
    let off: usize = c[..i].iter().map(|c| c.len as usize).sum();
    &data[off..off + c[i].len as usize]
}

impl Fake {
    fn say(&mut self, m: ToSink) {
        self.w.msg(&m).unwrap();
        self.w.flush().unwrap();
    }

    fn send(&mut self, data: &[u8], c: &[ChunkSpec], i: usize) {
        self.w
            .data(&c[i].hash, Codec::Raw, c[i].len, chunk_of(data, c, i))
            .unwrap();
    }

    /// Send the batch of `out` and `out/a.bin`; returns what mtr asked for.
    fn batch(&mut self, data: &[u8]) -> Vec<Hash> {
        self.say(ToSink::Ops {
            ops: vec![dir_op("out"), file_op("out/a.bin", data)],
        });
        match self.r.msg::<FromSink>().unwrap() {
            FromSink::Need { hashes } => hashes,
            other => panic!("expected Need, got {other:?}"),
        }
    }

    /// Write `bytes` as they are, then up to `filler` zeros, until mtr hangs up.
    fn blast(&mut self, bytes: &[u8], filler: usize) {
        if self.w.flush().is_err() || self.raw.write_all(bytes).is_err() {
            return;
        }
        let zeros = vec![0u8; 64 << 10];
        let mut left = filler;
        while left > 0 {
            let n = left.min(zeros.len());
            if self.raw.write_all(&zeros[..n]).is_err() {
                return;
            }
            left -= n;
        }
    }

    /// Hang up; returns mtr's error (there must be one).
    fn error(self) -> String {
        let Fake { r, w, raw, mtr } = self;
        drop((r, w));
        let _ = raw.shutdown(Shutdown::Both);
        drop(raw);
        match mtr.join().unwrap() {
            Ok(got) => panic!("mtr accepted the download: {got:?}"),
            Err(e) => e.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum When {
    /// In place of the agent's `Hello`.
    Greeting,
    /// After the handshake, between batches.
    Idle,
    /// In the middle of a batch's transfer.
    InBatch,
}

fn fake_at(land: &Land, when: When, data: &[u8]) -> Fake {
    let mut f = fake_agent(land, !matches!(when, When::Greeting));
    if let When::InBatch = when {
        f.batch(data);
    }
    f
}

#[test]
fn huge_declared_lengths_from_the_agent_are_refused_before_allocation() {
    let (data, c) = a_bin();
    for when in [When::Greeting, When::Idle, When::InBatch] {
        for (what, bytes, expected) in huge_frames(&c[0].hash) {
            let land = Land::new();
            let mut f = fake_at(&land, when, &data);
            f.blast(&bytes, 1 << 20);
            let msg = f.error();
            assert!(msg.contains(expected), "{what} ({when:?}): {msg}");
            land.assert_clean(&[], what);
        }
    }
}

#[test]
fn decompression_bombs_and_wrong_chunks_from_the_agent_are_refused() {
    let (data, c) = a_bin();
    let (hash, len) = (c[0].hash, c[0].len);
    let gib = bomb(8192);
    let zeros = |n: usize| zstd::bulk::compress(&vec![0u8; n], 1).unwrap();
    for (what, bytes, expected) in [
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
            data_frame(&hash, CODEC_RAW, len, &noise(len as usize, 5)),
            "does not match its hash",
        ),
        (
            "the right bytes under another requested chunk's hash",
            data_frame(&c[1].hash, CODEC_RAW, len, chunk_of(&data, &c, 0)),
            "chunk",
        ),
    ] {
        let land = Land::new();
        let mut f = fake_at(&land, When::InBatch, &data);
        f.blast(&bytes, 0);
        let _ = f.w.msg(&ToSink::DataEnd);
        let _ = f.w.flush();
        let msg = f.error();
        assert!(msg.contains(expected), "{what}: {msg}");
        land.assert_clean(&[], what);
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
        for when in [When::Greeting, When::Idle] {
            let land = Land::new();
            let mut f = fake_at(&land, when, &data);
            f.blast(&bytes, 0);
            let msg = f.error();
            assert!(msg.contains(expected), "{what} ({when:?}): {msg}");
            land.assert_clean(&[], what);
        }
    }
}

#[test]
fn duplicated_and_out_of_order_messages_from_the_agent_are_refused() {
    let (data, c) = a_bin();
    let hello = ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: VERSION.into(),
        root: "/elsewhere".into(),
        chunker: Chunker::default().id(),
    };
    let flood = ToSink::Ops {
        ops: (0..50_000)
            .map(|i| dir_op(&format!("out/flood/some/deep/directory/number-{i}")))
            .collect(),
    };
    let all = |f: &mut Fake| {
        for i in 0..c.len() {
            f.send(&data, &c, i);
        }
        f.say(ToSink::DataEnd);
        assert!(matches!(
            f.r.msg::<FromSink>().unwrap(),
            FromSink::BatchDone
        ));
    };
    type Script<'a> = Box<dyn Fn(&mut Fake) + 'a>;
    let cases: Vec<(&str, When, Script<'_>, &str, &[&str])> = vec![
        (
            "Ops before Hello",
            When::Greeting,
            Box::new(|f: &mut Fake| f.say(ToSink::Ops { ops: vec![] })),
            "expected Hello, got Ops",
            &[],
        ),
        (
            "data before any Ops",
            When::Idle,
            Box::new(|f: &mut Fake| {
                f.send(&data, &c, 0);
                f.say(ToSink::DataEnd)
            }),
            "data frame outside a batch",
            &[],
        ),
        (
            "the same chunk twice",
            When::InBatch,
            Box::new(|f: &mut Fake| {
                f.send(&data, &c, 0);
                f.send(&data, &c, 0);
                f.say(ToSink::DataEnd)
            }),
            "unrequested chunk",
            &[],
        ),
        (
            "DataEnd before every chunk",
            When::InBatch,
            Box::new(|f: &mut Fake| {
                f.send(&data, &c, 0);
                f.say(ToSink::DataEnd)
            }),
            "were never sent",
            &[],
        ),
        (
            "a chunk again after its batch",
            When::InBatch,
            Box::new(|f: &mut Fake| {
                all(f);
                f.send(&data, &c, 0);
                f.say(ToSink::Commit)
            }),
            "data frame outside a batch",
            &["a.bin"],
        ),
        (
            "DataEnd outside a batch",
            When::Idle,
            Box::new(|f: &mut Fake| f.say(ToSink::DataEnd)),
            "unexpected DataEnd",
            &[],
        ),
        (
            "a Plan in a download that is no dry run",
            When::Idle,
            Box::new(|f: &mut Fake| f.say(ToSink::Plan { changes: vec![] })),
            "unexpected Plan",
            &[],
        ),
        (
            "a second Hello",
            When::Idle,
            Box::new(|f: &mut Fake| f.say(hello.clone())),
            "unexpected Hello",
            &[],
        ),
        (
            "a second Hello in a transfer",
            When::InBatch,
            Box::new(|f: &mut Fake| f.say(hello.clone())),
            "got Hello",
            &[],
        ),
        (
            "Bye in the middle of a transfer",
            When::InBatch,
            Box::new(|f: &mut Fake| {
                f.send(&data, &c, 0);
                f.say(ToSink::Bye)
            }),
            "got Bye",
            &[],
        ),
        (
            "Commit in the middle of a transfer",
            When::InBatch,
            Box::new(|f: &mut Fake| f.say(ToSink::Commit)),
            "got Commit",
            &[],
        ),
        (
            "Ops in the middle of a transfer",
            When::InBatch,
            Box::new(|f: &mut Fake| f.say(flood.clone())),
            "got Ops",
            &[],
        ),
        (
            "Bye before Commit",
            When::InBatch,
            Box::new(|f: &mut Fake| {
                all(f);
                f.say(ToSink::Bye)
            }),
            "before committing",
            &["a.bin"],
        ),
    ];
    for (what, when, script, expected, allowed) in cases {
        let land = Land::new();
        let mut f = fake_at(&land, when, &data);
        script(&mut f);
        let said = f.error();
        assert!(said.contains(expected), "{what}: {said}");
        // An error names what came, never all of it.
        assert!(said.len() < 300, "{what}: a {} byte error", said.len());
        land.assert_clean(allowed, what);
    }

    // Chunks in another order than asked for are fine: each goes where its hash says.
    let land = Land::new();
    let mut f = fake_at(&land, When::InBatch, &data);
    for i in (0..c.len()).rev() {
        f.send(&data, &c, i);
    }
    f.say(ToSink::DataEnd);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    f.say(ToSink::Commit);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    f.say(ToSink::Bye);
    let Fake { r, w, raw, mtr } = f;
    drop((r, w, raw));
    mtr.join().unwrap().unwrap();
    assert!(fs::read(land.dest().join("a.bin")).unwrap() == data);
    land.assert_clean(&["a.bin"], "reordered chunks");
}

#[test]
fn a_link_the_download_made_is_never_written_through() {
    let land = Land::new();
    // First download: a link inside the destination, which is allowed.
    let mut f = fake_agent(&land, true);
    f.say(ToSink::Ops {
        ops: vec![dir_op("out"), dir_op("out/sub"), link_op("out/link", "sub")],
    });
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::Need { hashes } if hashes.is_empty()
    ));
    f.say(ToSink::DataEnd);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    f.say(ToSink::Commit);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    f.say(ToSink::Bye);
    let Fake { r, w, raw, mtr } = f;
    drop((r, w, raw));
    mtr.join().unwrap().unwrap();
    assert_eq!(
        fs::read_link(land.dest().join("link")).unwrap(),
        Path::new("sub")
    );

    // The next one writes under it: refused, though the link stays inside.
    let evil = b"through the link".as_slice();
    for ops in [
        vec![file_op("out/link/x", evil)],
        vec![dir_op("out/link/d")],
        vec![link_op("out/link/l", "x")],
    ] {
        let what = format!("{ops:?}");
        let mut f = fake_agent(&land, true);
        f.say(ToSink::Ops { ops });
        let msg = f.error();
        assert!(msg.contains("symlink"), "{what}: {msg}");
        land.assert_clean(&["sub", "link"], &what);
        assert_eq!(fs::read_dir(land.dest().join("sub")).unwrap().count(), 0);
    }
}

// ---- Memory ---------------------------------------------------------------------------

#[test]
fn memory_stays_bounded_under_a_hostile_agent() {
    run_alone("hostile_agent_in_a_process_of_its_own");
}

#[test]
#[ignore = "run alone by memory_stays_bounded_under_a_hostile_agent"]
fn hostile_agent_in_a_process_of_its_own() {
    if std::env::var_os(MEMORY_CHILD).is_none() {
        return;
    }
    let (data, c) = a_bin();
    // Warm up: an honest download with compressed chunks (threads, zstd contexts, buffers).
    let text: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let warm = Land::new();
    let mut f = fake_agent(&warm, true);
    f.say(ToSink::Ops {
        ops: vec![dir_op("out"), file_op("out/text.txt", &text)],
    });
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::Need { .. }
    ));
    for ch in Chunker::default().chunk(&text) {
        let raw = &text[ch.offset as usize..][..ch.len as usize];
        let (codec, z) = protocol::compress::compress(raw).unwrap();
        f.w.data(&ch.hash, codec, ch.len, &z).unwrap();
    }
    f.say(ToSink::DataEnd);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::BatchDone
    ));
    f.say(ToSink::Commit);
    assert!(matches!(
        f.r.msg::<FromSink>().unwrap(),
        FromSink::Committed { .. }
    ));
    f.say(ToSink::Bye);
    let Fake { r, w, raw, mtr } = f;
    drop((r, w, raw));
    mtr.join().unwrap().unwrap();

    let before = peak_rss_kib();
    let gib = bomb(8192);
    let (hash, len) = (c[0].hash, c[0].len);
    let mut sessions = 0;
    for _round in 0..4 {
        for when in [When::Greeting, When::Idle, When::InBatch] {
            for (what, bytes, expected) in huge_frames(&hash) {
                let land = Land::new();
                let mut f = fake_at(&land, when, &data);
                // What a sink that trusted the header would read: well past the bound.
                f.blast(&bytes, 128 << 20);
                let msg = f.error();
                assert!(msg.contains(expected), "{what}: {msg}");
                land.assert_clean(&[], what);
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
            let land = Land::new();
            let mut f = fake_at(&land, When::InBatch, &data);
            // The bomb as every chunk the batch needs.
            for _ in 0..c.len() {
                f.blast(&bytes, 0);
            }
            let _ = f.w.msg(&ToSink::DataEnd);
            let _ = f.w.flush();
            let msg = f.error();
            assert!(msg.contains("chunk"), "{what}: {msg}");
            land.assert_clean(&[], what);
            sessions += 1;
        }
        for (bytes, expected) in [
            (zmsg_frame(1 << 20, &gib), "corrupt compressed message"),
            // As large as allowed, of which a few bytes come: the length alone costs nothing.
            (
                [header(64 << 20, KIND_MSG), vec![7; 1024]].concat(),
                "ended inside a frame",
            ),
        ] {
            let land = Land::new();
            let mut f = fake_at(&land, When::Idle, &data);
            f.blast(&bytes, 0);
            let msg = f.error();
            assert!(msg.contains(expected), "{msg}");
            sessions += 1;
        }
    }
    let after = peak_rss_kib();
    eprintln!(
        "peak RSS {before} KiB before {sessions} hostile downloads, {after} KiB after \
         (+{} KiB)",
        after - before
    );
    assert!(
        after - before < 64 << 10,
        "a hostile agent cost {} KiB",
        after - before
    );
}
