//! Keeping watch over an upload's tree between syncs, so that a sync that finds nothing
//! changed needs neither to check every file the sink wrote nor to read its index.
//!
//! After a session that left the tree synced, `mtr-agent` starts a watcher of its own
//! (`mtr-agent watch ROOT`, [`keep`]): it loads the sink's index, puts an inotify watch on the
//! root and every recorded directory, then checks every record as the sink would
//! ([`crate::sink`]'s check), so nothing that changed before the watches were in place goes
//! unseen. From then on, any event on a recorded path (a write, a truncation, a `chmod` or
//! `touch`, a create, delete or rename over or of it), a lost event (queue overflow) or a
//! watched directory removed or moved ends the watcher. Events on paths the sink did not write
//! (a job's `__pycache__/`, its outputs) are ignored, and unrecorded directories are not
//! watched.
//!
//! The next session's sink connects to its socket in the state directory ([`claim`]): the
//! watcher reads the events queued (inotify queues them in the syscall that made the change,
//! so every change made before the question is seen) and answers whether the tree is as the
//! index says, naming the index file it vouches for (device, inode, size, times) and the
//! root (device, inode); the sink checks both against what it has. The claim is held for the
//! session: if the session sends nothing that could change the tree, the sink asks the
//! watcher to go on ([`Claim::keep`]); otherwise the watcher ends with the claim, and the
//! agent starts a new one over the new index.
//!
//! It watches only local filesystems (ext2/3/4, xfs, btrfs, tmpfs, overlayfs, f2fs, zfs,
//! bcachefs: inotify does not see another NFS or Lustre client's writes), all of the tree on
//! one device, and takes at most a quarter of the user's inotify watches. What it cannot
//! see, and a stat check would: a write through a shared mapping (`mmap`) that never calls
//! `write`, and a write through a hard link to a recorded file from outside the tree. One
//! watcher per root (a lock file); it ends after [`IDLE`] without a sync.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::paths::{Root, STATE_DIR};
use crate::scan::stat_of;
use crate::sink;
use crate::wire::StatKey;

/// The watcher's socket, in the state directory.
pub const SOCKET: &str = "watch.sock";
/// Held by the one watcher of a root.
const LOCK: &str = "watch.lock";
/// How long a watcher waits for the next sync before it ends.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);
/// How long a sink waits for a watcher's answer before it checks the tree itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new watcher waits for the one before it to end.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The version of this exchange, in every answer: a sink trusts only a watcher of its own
/// kind (an older agent's watcher may still run after mtr was upgraded). Bump it when the
/// exchange or what a watcher vouches for changes.
const WATCH_VERSION: u32 = 1;
/// An answer: its word, [`WATCH_VERSION`], the root's and the index's identities.
const ANSWER_LEN: usize = 1 + 4 + 2 * Identity::LEN;

/// The sink's question, and its word at the end of a session that changed nothing.
const ASK: u8 = b'?';
const KEEP: u8 = b'k';
/// The watcher's answers.
const CLEAN: u8 = b'c';
const CHANGED: u8 = b'x';

/// inotify events that can change a recorded path or its directory.
const EVENTS: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// Events that say a watched directory itself is gone, or that events were lost.
const LOST: u32 = libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_IGNORED
    | libc::IN_UNMOUNT
    | libc::IN_Q_OVERFLOW;

/// `statfs` types of the filesystems whose every change inotify reports (local ones).
const LOCAL_FILESYSTEMS: [i64; 9] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0x794C_7630, // overlayfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
    0xCA45_1A4E, // bcachefs
    0x8584_58F6, // ramfs
];

/// Why a watcher ended ([`keep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Another watcher of the root did not end within [`LOCK_TIMEOUT`].
    Busy,
    /// The tree cannot be watched, or not trusted to be: why.
    Unwatchable(String),
    /// Something under the tree changed (or may have): what.
    Changed(String),
    /// A sync took the tree over (it may change it).
    Claimed,
    /// No sync for the idle time.
    Idle,
}

/// What names a file's version: the index a watcher vouches for, and the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    stat: StatKey,
}

impl Identity {
    const LEN: usize = 40;

    fn of(path: &Path) -> Option<Identity> {
        let m = fs::symlink_metadata(path).ok()?;
        Some(Identity {
            dev: m.dev(),
            stat: stat_of(&m),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.stat.ino.to_le_bytes());
        out.extend_from_slice(&self.stat.size.to_le_bytes());
        out.extend_from_slice(&self.stat.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.stat.ctime_ns.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Identity {
        let word = |i: usize| <[u8; 8]>::try_from(&b[i * 8..i * 8 + 8]).expect("8 bytes");
        Identity {
            dev: u64::from_le_bytes(word(0)),
            stat: StatKey {
                ino: u64::from_le_bytes(word(1)),
                size: u64::from_le_bytes(word(2)),
                mtime_ns: i64::from_le_bytes(word(3)),
                ctime_ns: i64::from_le_bytes(word(4)),
            },
        }
    }

    /// The same directory (its times change with its entries).
    fn same_dir(&self, other: &Identity) -> bool {
        self.dev == other.dev && self.stat.ino == other.stat.ino
    }
}

/// Runs `f` on a path to `name` in `dir` short enough for a socket address (107 bytes): the
/// path itself, else the same through the directory's descriptor in `/proc/self/fd`.
fn at<T>(dir: &Path, name: &str, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let direct = dir.join(name);
    if direct.as_os_str().len() < 100 {
        return f(&direct);
    }
    let d = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    f(&PathBuf::from(format!(
        "/proc/self/fd/{}/{name}",
        d.as_raw_fd()
    )))
}

/// A sink's hold on the watcher of its root, for one session.
pub(crate) struct Claim {
    stream: UnixStream,
    /// The watcher saw nothing change since the index in `state_dir` was saved, and the root
    /// and that index are the ones it watched.
    pub(crate) clean: bool,
}

/// Asks the watcher of `root` (state in `state_dir`) whether anything changed; `None` when no
/// watcher answers. The watcher is held until the claim is dropped or kept.
pub(crate) fn claim(state_dir: &Path, root: &Path) -> Option<Claim> {
    let clock = Instant::now();
    let mut stream = at(state_dir, SOCKET, |p| UnixStream::connect(p)).ok()?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    let mut answer = [0u8; ANSWER_LEN];
    if let Err(e) = stream
        .write_all(&[ASK])
        .and_then(|()| stream.read_exact(&mut answer))
    {
        log::debug!("sink: the watcher did not answer: {e}");
        return None;
    }
    let version = u32::from_le_bytes(answer[1..5].try_into().expect("4 bytes"));
    let root_seen = Identity::decode(&answer[5..5 + Identity::LEN]);
    let index_seen = Identity::decode(&answer[5 + Identity::LEN..]);
    let clean = answer[0] == CLEAN
        && version == WATCH_VERSION
        && Identity::of(root).is_some_and(|r| r.same_dir(&root_seen))
        && Identity::of(&state_dir.join("index")) == Some(index_seen);
    log::debug!(
        "sink: the watcher answered in {:.0?}: {}",
        clock.elapsed(),
        if clean { "unchanged" } else { "changed" }
    );
    Some(Claim { stream, clean })
}

impl Claim {
    /// Tells the watcher the session changed nothing; whether it goes on watching (it saw
    /// nothing change meanwhile either).
    pub(crate) fn keep(mut self) -> bool {
        let mut word = [0u8];
        self.stream.write_all(&[KEEP]).is_ok()
            && self.stream.read_exact(&mut word).is_ok()
            && word[0] == KEEP
    }
}

/// Keeps watch over `root`, an upload's root with its state in `root/.mtr-sync/`, until
/// something there changes, a sync takes it over, or `idle` passes without a sync; answers
/// syncs' [`claim`]s meanwhile. Returns why it ended. Run by `mtr-agent watch ROOT` in a
/// process of its own. `settled` is called once, when the watcher is set up and answers:
/// the index it loaded to check the tree is freed by then, and the caller can return that
/// memory to the system (a watcher idles for hours).
pub fn keep(root: &Path, idle: Duration, settled: &dyn Fn()) -> Stop {
    let state = root.join(STATE_DIR);
    let _lock = match sink::take_lock(&state.join(LOCK), LOCK_TIMEOUT, Duration::from_millis(20)) {
        Ok(Some(f)) => f,
        Ok(None) => return Stop::Busy,
        Err(e) => return Stop::Unwatchable(e.to_string()),
    };
    let watcher = match Watcher::start(root, &state) {
        Ok(w) => w,
        Err(stop) => return stop,
    };
    let listener = match at(&state, SOCKET, |p| {
        let _ = fs::remove_file(p);
        // SAFETY: umask has no failure mode; the socket is the user's alone.
        let old = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(p);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        bound
    }) {
        Ok(l) => l,
        Err(e) => return Stop::Unwatchable(format!("{}: {e}", state.join(SOCKET).display())),
    };
    settled();
    let stop = watcher.serve(&listener, idle);
    // Ours to remove: the lock is held until this process ends.
    let _ = at(&state, SOCKET, |p| fs::remove_file(p));
    stop
}

/// A watched directory: its path relative to the root ("" the root itself) and the names of
/// the records in it.
struct Watched {
    dir: String,
    names: HashSet<Box<[u8]>>,
}

struct Watcher {
    inotify: OwnedFd,
    /// By watch descriptor.
    dirs: HashMap<i32, Watched>,
    root_id: Identity,
    index: PathBuf,
    index_id: Identity,
}

impl Watcher {
    /// Watches every recorded directory, then checks every record: a watcher that starts
    /// vouches for the tree from the moment its watches were in place.
    fn start(root: &Path, state: &Path) -> Result<Watcher, Stop> {
        let unwatchable = |why: String| Stop::Unwatchable(why);
        let index = state.join("index");
        let index_id =
            Identity::of(&index).ok_or_else(|| unwatchable(format!("no {}", index.display())))?;
        let root_id =
            Identity::of(root).ok_or_else(|| unwatchable(format!("no {}", root.display())))?;
        let fs_type = filesystem_type(root).map_err(|e| unwatchable(format!("statfs: {e}")))?;
        if !LOCAL_FILESYSTEMS.contains(&fs_type) {
            return Err(unwatchable(format!(
                "{} is on a filesystem (type {fs_type:#x}) whose changes inotify may not see",
                root.display()
            )));
        }
        let (token, records) = sink::load_records(state, None);
        if token.is_none() {
            return Err(unwatchable("the index records no finished sync".into()));
        }
        let dirs: Vec<&str> = std::iter::once("")
            .chain(records.iter().filter(|r| r.is_dir()).map(|r| r.path()))
            .collect();
        let allowed = fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(8192);
        if dirs.len() > allowed / 4 {
            return Err(unwatchable(format!(
                "{} directories, more than a quarter of the {allowed} inotify watches allowed",
                dirs.len()
            )));
        }
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(unwatchable(format!(
                "inotify: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: fd is a new descriptor, owned here.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut by_dir: HashMap<&str, i32> = HashMap::with_capacity(dirs.len());
        let mut watched: HashMap<i32, Watched> = HashMap::new();
        for dir in dirs {
            let abs = if dir.is_empty() {
                root.to_path_buf()
            } else {
                root.join(dir)
            };
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() && m.dev() == root_id.dev => {}
                Ok(_) => {
                    return Err(Stop::Changed(format!(
                        "{} is not a directory of the root's filesystem",
                        abs.display()
                    )))
                }
                Err(e) => return Err(Stop::Changed(format!("{}: {e}", abs.display()))),
            }
            let wd = add_watch(inotify.as_raw_fd(), &abs)
                .map_err(|e| unwatchable(format!("watch {}: {e}", abs.display())))?;
            let fresh = Watched {
                dir: dir.to_string(),
                names: HashSet::new(),
            };
            if watched.insert(wd, fresh).is_some() {
                return Err(unwatchable(format!("{} is watched twice", abs.display())));
            }
            by_dir.insert(dir, wd);
        }
        for r in &records {
            let (dir, name) = r.path().rsplit_once('/').unwrap_or(("", r.path()));
            let Some(wd) = by_dir.get(dir) else {
                return Err(unwatchable(format!(
                    "{}: its directory is not recorded",
                    r.path()
                )));
            };
            let names = &mut watched.get_mut(wd).expect("watched").names;
            names.insert(name.as_bytes().into());
        }
        drop(by_dir);
        let watcher = Watcher {
            inotify,
            dirs: watched,
            root_id,
            index,
            index_id,
        };
        if let Some(first) = sink::check(&Root::new(root), &records).into_iter().next() {
            return Err(Stop::Changed(first));
        }
        drop(records);
        watcher
            .changed()
            .map_or(Ok(watcher), |c| Err(Stop::Changed(c)))
    }

    /// What changed, if anything: the events queued, then the index file (replaced).
    fn changed(&self) -> Option<String> {
        self.drain().or_else(|| {
            (Identity::of(&self.index) != Some(self.index_id)).then(|| "the index".into())
        })
    }

    /// Reads the events queued; the first that touches a recorded path, if any.
    fn drain(&self) -> Option<String> {
        // Aligned for `inotify_event`; room for hundreds of events a read.
        let mut buf = vec![0u64; 8192];
        loop {
            // SAFETY: reads into `buf`, of the length given.
            let n = unsafe {
                libc::read(
                    self.inotify.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len() * 8,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => None,
                    io::ErrorKind::Interrupted => continue,
                    _ => Some(format!("reading events: {e}")),
                };
            }
            // SAFETY: the kernel wrote `n` bytes of whole events.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            if let Some(c) = self.relevant(bytes) {
                return Some(c);
            }
        }
    }

    /// The first event in `bytes` (whole `inotify_event`s) that touches a recorded path.
    fn relevant(&self, mut bytes: &[u8]) -> Option<String> {
        const HEAD: usize = 16;
        while bytes.len() >= HEAD {
            let word = |i: usize| <[u8; 4]>::try_from(&bytes[i..i + 4]).expect("4 bytes");
            let wd = i32::from_ne_bytes(word(0));
            let mask = u32::from_ne_bytes(word(4));
            let len = u32::from_ne_bytes(word(12)) as usize;
            let name = &bytes[HEAD..HEAD + len.min(bytes.len() - HEAD)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            bytes = &bytes[(HEAD + len).min(bytes.len())..];
            if mask & libc::IN_Q_OVERFLOW != 0 {
                return Some("events were lost".into());
            }
            let Some(Watched { dir, names }) = self.dirs.get(&wd) else {
                return Some(format!("an event of unknown watch {wd}"));
            };
            if mask & LOST != 0 {
                return Some(format!("directory '{dir}' was removed or moved"));
            }
            if names.contains(name) {
                let name = String::from_utf8_lossy(name);
                return Some(if dir.is_empty() {
                    name.into_owned()
                } else {
                    format!("{dir}/{name}")
                });
            }
        }
        None
    }

    /// Answers syncs until something changes, one takes the tree over, or `idle` passes.
    fn serve(&self, listener: &UnixListener, idle: Duration) -> Stop {
        let mut deadline = Instant::now() + idle;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Stop::Idle;
            }
            let ready = poll2(self.inotify.as_raw_fd(), listener.as_raw_fd(), Some(left));
            if ready.0 {
                if let Some(c) = self.drain() {
                    return Stop::Changed(c);
                }
            }
            if ready.1 {
                let Ok((stream, _)) = listener.accept() else {
                    continue;
                };
                match self.answer(stream) {
                    Ok(()) => deadline = Instant::now() + idle,
                    Err(stop) => return stop,
                }
            }
        }
    }

    /// Answers one sink's claim, then holds it for the session: `Ok` when the session
    /// changed nothing and neither did anything else.
    fn answer(&self, mut stream: UnixStream) -> Result<(), Stop> {
        let mut word = [0u8];
        let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
        let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
        if stream.read_exact(&mut word).is_err() || word[0] != ASK {
            // Not a sink: nothing to answer.
            return Ok(());
        }
        let change = self.changed();
        let mut out = Vec::with_capacity(ANSWER_LEN);
        out.push(if change.is_none() { CLEAN } else { CHANGED });
        out.extend_from_slice(&WATCH_VERSION.to_le_bytes());
        self.root_id.encode(&mut out);
        self.index_id.encode(&mut out);
        let _ = stream.write_all(&out);
        if let Some(c) = change {
            return Err(Stop::Changed(c));
        }
        // The session runs: a change now is the sink's own (or another's), and ends the watch.
        let _ = stream.set_read_timeout(None);
        loop {
            let ready = poll2(self.inotify.as_raw_fd(), stream.as_raw_fd(), None);
            if ready.0 {
                if let Some(c) = self.drain() {
                    return Err(Stop::Changed(c));
                }
            }
            if ready.1 {
                let kept = stream.read_exact(&mut word).is_ok() && word[0] == KEEP;
                if !kept {
                    return Err(Stop::Claimed);
                }
                if let Some(c) = self.changed() {
                    return Err(Stop::Changed(c));
                }
                return stream.write_all(&[KEEP]).map_err(|_| Stop::Claimed);
            }
        }
    }
}

/// `poll` on two descriptors for input (or hang-up), up to `timeout` (`None`: no limit);
/// which are ready.
fn poll2(a: RawFd, b: RawFd, timeout: Option<Duration>) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    // SAFETY: polls the two entries of `fds`.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n <= 0 {
        return (false, false);
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    (ready(&fds[0]), ready(&fds[1]))
}

/// Adds a watch on directory `dir` (not through a symlink).
fn add_watch(inotify: RawFd, dir: &Path) -> io::Result<i32> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid descriptor and a NUL-terminated path.
    let wd = unsafe {
        libc::inotify_add_watch(
            inotify,
            c.as_ptr(),
            EVENTS | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW,
        )
    };
    if wd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(wd)
    }
}

/// The `statfs` type of the filesystem holding `path`.
fn filesystem_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs fills the zeroed struct on success.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(s.f_type as i64)
}
