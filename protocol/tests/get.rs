//! Downloads in one process: `get::serve` (the agent's side, the source) on one end of a socket
//! pair, `get::request` + `get::receive` (mtr's side, the sink) on the other. A directory or a
//! single file lands under the local name; a second download moves only what changed; files
//! already at the destination serve as chunk sources without any index; a hostile source
//! cannot write outside the destination; symlinks pointing out of it are skipped.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use protocol::chunker::{self, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::compress::Codec;
use protocol::get::{self, ReceiveConfig, Received, Request};
use protocol::scan::NoProgress;
use protocol::wire::{
    Change, ChunkSpec, Entry, EntryKind, FromSink, Op, SendRequest, ToSink, PROTOCOL_VERSION,
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

/// Deterministic incompressible bytes.
fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Overwrite `len` bytes at `at` with other random bytes, keeping the file's mtime moving.
fn overwrite(path: &Path, at: usize, len: usize, seed: u64) {
    let mut data = fs::read(path).unwrap();
    data[at..at + len].copy_from_slice(&random(len, seed));
    fs::write(path, data).unwrap();
}

fn remote_tree(s: &Setup) {
    let r = s.remote("proj/out");
    fs::create_dir_all(r.join("ckpt/empty")).unwrap();
    fs::create_dir_all(r.join("ünïcødé 目录")).unwrap();
    fs::write(r.join("log.txt"), "epoch 1\n").unwrap();
    fs::write(r.join("ckpt/model.bin"), random(600_000, 1)).unwrap();
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
    fs::write(&remote, random(4 << 20, 2)).unwrap();
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
    fs::write(remote.join("a.bin"), random(3 << 20, 4)).unwrap();
    fs::write(remote.join("b.bin"), random(1 << 20, 5)).unwrap();
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
    fs::write(&single, random(2 << 20, 7)).unwrap();
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
    fs::write(s.remote("ckpt/step-100/model.bin"), random(100_000, 11)).unwrap();
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
    fs::write(r.join("deep/sub/f"), random(50_000, 3)).unwrap();
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
    assert_eq!(fs::read(local.join("sub/f")).unwrap(), random(50_000, 3));
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

/// A source that follows the handshake, then sends `ops` (serving the chunks asked for from
/// `data`) and returns the sink's error message.
fn hostile(dest: &Path, state: &Path, ops: Vec<Op>, data: &[u8]) -> String {
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
    w.msg(&ToSink::Ops { ops }).unwrap();
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
        let msg = hostile(&dest, state.path(), ops, evil);
        assert!(msg.contains(expected), "{what}: {msg}");
    }
    // A link of the user's own, in the destination, is never written through either.
    fs::create_dir_all(&dest).unwrap();
    symlink(outside.path(), dest.join("mine")).unwrap();
    let msg = hostile(
        &dest,
        state.path(),
        vec![file_op("out/mine/pwned", evil)],
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
