//! The watcher an agent leaves over an upload's tree (`protocol::watch`): both roles of a sync
//! in one process, the watcher on a thread, and the sink's own answer to whether it wants a
//! new watcher (`serve_agent` returns the root when it does: the last one did not vouch for
//! the session, or the session changed the tree).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::codec::{FrameReader, FrameWriter};
use protocol::scan::{Filter, NoProgress, ScanOptions};
use protocol::source::{self, Pipeline, SourceConfig};
use protocol::watch::{self, Stop};

const VERSION: &str = "test";

struct Pair {
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Pair {
    /// A small tree: files at the root and two levels down.
    fn new() -> Pair {
        let p = Pair {
            src: tempfile::tempdir().unwrap(),
            dst: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        };
        p.write("train.py", "print('v1')\n");
        p.write("pkg/model.py", "class Model: pass\n");
        p.write("pkg/data/loader.py", "def load(): pass\n");
        p.write("pkg/data/table.bin", vec![3u8; 200_000]);
        p
    }

    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.src.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn remote(&self, rel: &str) -> PathBuf {
        self.dst.path().join(rel)
    }

    /// One sync as `mtr-agent serve` runs it; the root to watch when the sink wants a watcher.
    fn sync(&self) -> Option<PathBuf> {
        let (a, b) = UnixStream::pair().unwrap();
        let sink = std::thread::spawn(move || {
            protocol::sink::serve_agent(b.try_clone().unwrap(), b, VERSION, None, true)
        });
        let mut r = FrameReader::new(a.try_clone().unwrap());
        let mut w = FrameWriter::new(a);
        let dst = self.dst.path().to_str().unwrap();
        let ack = source::handshake(&mut r, &mut w, dst, VERSION).unwrap();
        let filter = Filter::new(self.src.path(), &ScanOptions::default()).unwrap();
        let cfg = SourceConfig {
            root: self.src.path(),
            filter: &filter,
            chunker: Default::default(),
            index_path: self.state.path().join("index"),
            state_path: self.state.path().join("state"),
            dry_run: false,
            pipeline: Pipeline::default(),
        };
        source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress).unwrap();
        source::bye(&mut w).unwrap();
        drop(w);
        let wanted = sink.join().unwrap().unwrap();
        for rel in ["train.py", "pkg/model.py", "pkg/data/loader.py"] {
            assert_eq!(
                fs::read(self.src.path().join(rel)).unwrap(),
                fs::read(self.remote(rel)).unwrap(),
                "{rel} differs after the sync"
            );
        }
        wanted
    }

    /// Starts a watcher over the sink's root and waits until it answers.
    fn watch(&self, root: PathBuf) -> JoinHandle<Stop> {
        let watcher =
            std::thread::spawn(move || watch::keep(&root, Duration::from_secs(600), &|| ()));
        let socket = self.socket();
        wait_for("the watcher's socket", || {
            assert!(
                !watcher.is_finished(),
                "the watcher ended before it answered"
            );
            socket.exists()
        });
        watcher
    }

    fn socket(&self) -> PathBuf {
        self.remote(".mtr-sync").join(watch::SOCKET)
    }

    /// Synced, with a watcher over the sink's root.
    fn watched() -> (Pair, JoinHandle<Stop>) {
        let p = Pair::new();
        let root = p.sync().expect("a first sync wants a watcher");
        let w = p.watch(root);
        (p, w)
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The watcher's end, which must come soon.
fn ended(w: JoinHandle<Stop>) -> Stop {
    wait_for("end of the watcher", || w.is_finished());
    w.join().unwrap()
}

#[test]
fn a_watcher_vouches_for_no_ops_and_ignores_what_the_sink_did_not_write() {
    let (p, w) = Pair::watched();
    // A no-op: the watcher vouched, the session changed nothing, it watches on.
    assert_eq!(p.sync(), None, "the watcher was not kept through a no-op");
    // A job's files beside the synced ones: not the sink's, not its business.
    fs::create_dir_all(p.remote("pkg/__pycache__")).unwrap();
    fs::write(p.remote("pkg/__pycache__/model.cpython-311.pyc"), "pyc").unwrap();
    fs::write(p.remote("pkg/data/out.log"), "epoch 1").unwrap();
    fs::rename(p.remote("pkg/data/out.log"), p.remote("pkg/data/out.1.log")).unwrap();
    fs::read(p.remote("pkg/model.py")).unwrap();
    assert_eq!(p.sync(), None, "the watcher was not kept");
    assert!(!w.is_finished());
    // A change of the sink's own: the source's edit. The watcher ends with the claim, and
    // the sink wants a new one over the new index.
    p.write("pkg/model.py", "class Model: v2\n");
    let root = p
        .sync()
        .expect("a sync that changed the tree wants a new watcher");
    assert!(matches!(ended(w), Stop::Changed(_) | Stop::Claimed));
    assert!(!p.socket().exists(), "the socket outlived its watcher");
    let w = p.watch(root);
    assert_eq!(p.sync(), None);
    // A job's write to a synced file: the watcher ends, and the next sync checks the tree
    // and puts the file back.
    fs::write(p.remote("pkg/data/loader.py"), "changed on the node").unwrap();
    assert_eq!(ended(w), Stop::Changed("pkg/data/loader.py".into()));
    assert!(p.sync().is_some(), "unwatched, the sink wants a watcher");
}

#[test]
fn every_kind_of_change_to_a_recorded_path_ends_the_watch() {
    type Change = fn(&Pair);
    let changes: [(&str, Change); 8] = [
        ("append", |p| {
            fs::OpenOptions::new()
                .append(true)
                .open(p.remote("train.py"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"#"))
                .unwrap()
        }),
        ("truncate", |p| {
            fs::File::options()
                .write(true)
                .open(p.remote("pkg/data/table.bin"))
                .unwrap()
                .set_len(10)
                .unwrap()
        }),
        ("touch", |p| {
            fs::File::options()
                .write(true)
                .open(p.remote("pkg/model.py"))
                .unwrap()
                .set_modified(std::time::SystemTime::UNIX_EPOCH)
                .unwrap()
        }),
        ("chmod", |p| {
            fs::set_permissions(p.remote("train.py"), fs::Permissions::from_mode(0o600)).unwrap()
        }),
        ("delete", |p| {
            fs::remove_file(p.remote("pkg/data/loader.py")).unwrap()
        }),
        ("rename over", |p| {
            fs::write(p.remote("new.py"), "x").unwrap();
            fs::rename(p.remote("new.py"), p.remote("train.py")).unwrap()
        }),
        ("rename a directory", |p| {
            fs::rename(p.remote("pkg/data"), p.remote("pkg/data2")).unwrap()
        }),
        ("remove the root", |p| {
            fs::rename(p.dst.path(), p.dst.path().with_extension("moved")).unwrap();
        }),
    ];
    for (what, change) in changes {
        let (p, w) = Pair::watched();
        change(&p);
        let stop = ended(w);
        assert!(matches!(stop, Stop::Changed(_)), "{what}: {stop:?}");
        let moved = p.dst.path().with_extension("moved");
        if moved.exists() {
            fs::remove_dir_all(moved).unwrap();
        } else {
            assert!(p.sync().is_some(), "{what}: the next sync checks the tree");
        }
    }
}

#[test]
fn a_watcher_that_missed_a_change_is_not_trusted() {
    // The index replaced behind the watcher's back (a copy: same records, another file).
    let (p, w) = Pair::watched();
    let index = p.remote(".mtr-sync/index");
    fs::copy(&index, index.with_extension("copy")).unwrap();
    fs::rename(index.with_extension("copy"), &index).unwrap();
    assert!(p.sync().is_some(), "a watcher of another index vouched");
    assert!(matches!(ended(w), Stop::Changed(_)));

    // Something that answers on the socket without watching: its word names no index the
    // sink has, so the sink checks the tree itself and puts back the file changed meanwhile.
    let p = Pair::new();
    p.sync().unwrap();
    fs::write(p.remote("train.py"), "changed on the node").unwrap();
    let listener = UnixListener::bind(p.socket()).unwrap();
    let liar = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut ask = [0u8];
        std::io::Read::read_exact(&mut s, &mut ask).unwrap();
        let mut answer = vec![b'c', 1, 0, 0, 0];
        answer.extend([0u8; 80]);
        std::io::Write::write_all(&mut s, &answer).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        rest
    });
    assert!(p.sync().is_some());
    assert!(
        liar.join().unwrap().is_empty(),
        "the sink asked a liar to go on"
    );
}

#[test]
fn one_watcher_per_root_and_none_without_a_finished_sync() {
    let (p, w) = Pair::watched();
    let root = p.dst.path().canonicalize().unwrap();
    // A second watcher waits for the first, which answers on: it gives up.
    let second = std::thread::spawn({
        let root = root.clone();
        move || watch::keep(&root, Duration::from_secs(600), &|| ())
    });
    assert_eq!(second.join().unwrap(), Stop::Busy);
    assert!(!w.is_finished());
    // A sync takes over and changes the tree; a watcher started over a root whose state
    // says no sync finished does not start.
    p.write("train.py", "print('v2')\n");
    p.sync().unwrap();
    ended(w);
    fs::remove_file(p.remote(".mtr-sync/index")).unwrap();
    assert!(matches!(
        watch::keep(&root, Duration::from_secs(600), &|| ()),
        Stop::Unwatchable(_)
    ));
    // An idle watcher ends on its own and takes its socket along.
    let p = Pair::new();
    let root = p.sync().unwrap();
    assert_eq!(
        watch::keep(&root, Duration::from_millis(300), &|| ()),
        Stop::Idle
    );
    assert!(!p.socket().exists());
}

#[test]
fn a_deep_root_is_watched_through_its_directory_descriptor() {
    // A socket's address holds 107 bytes; this root's state directory alone is longer.
    let p = Pair::new();
    let deep: PathBuf = p.dst.path().join("a".repeat(60)).join("b".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    let q = Pair {
        src: p.src,
        dst: tempfile::TempDir::new_in(&deep).unwrap(),
        state: p.state,
    };
    let root = q.sync().unwrap();
    assert!(root.join(".mtr-sync").join(watch::SOCKET).as_os_str().len() > 107);
    let w = q.watch(root);
    assert_eq!(q.sync(), None, "the watcher of a deep root was not asked");
    fs::write(q.remote("train.py"), "x").unwrap();
    assert!(matches!(ended(w), Stop::Changed(_)));
}
