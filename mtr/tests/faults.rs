//! Faults end to end, against a real sshd:
//! - syncs interrupted at random points (the local `mtr`, the remote `mtr-agent` or the ssh
//!   session process killed) leave every remote file at its old or its new version and nothing
//!   beside the user's files but `.mtr-sync/`, and the next sync resends only what had not
//!   arrived;
//! - two projects syncing to one `remote_dir` are serialized by the sink's lock, and a sync
//!   that cannot get it gives up naming it;
//! - a file rewritten (truncated or in place) while it is synced is never recorded torn, and
//!   mtr reports it by name instead of dying of SIGBUS.
//!
//! Run with `--nocapture` to see what each round measured.

mod util;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use testkit::gen::{self, Rng};
use testkit::sshd::LocalHome;
use util::{wire_bytes, Project};

type Digest = [u8; 32];

const MB: u64 = 1_000_000;
/// Pieces hashed on their own (in parallel for large files).
const PIECE: u64 = 32 << 20;

// ---------------------------------------------------------------------------------------------
// Content fingerprints and tree snapshots

/// BLAKE3 of `data` when it fits one piece; else BLAKE3 over its length and the BLAKE3 of each
/// 32 MiB piece (so a 1 GB file is hashed on two threads by [`file_hash`]).
fn bytes_hash(data: &[u8]) -> Digest {
    if data.len() as u64 <= PIECE {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.update(&(data.len() as u64).to_le_bytes());
    for piece in data.chunks(PIECE as usize) {
        h.update(blake3::hash(piece).as_bytes());
    }
    *h.finalize().as_bytes()
}

/// [`bytes_hash`] of a file's contents.
fn file_hash(path: &Path) -> Digest {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = f.metadata().unwrap().len();
    if len <= PIECE {
        let mut buf = Vec::with_capacity(len as usize);
        (&f).read_to_end(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        return bytes_hash(&buf);
    }
    let pieces = len.div_ceil(PIECE);
    let mut hashes = vec![[0u8; 32]; pieces as usize];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let f = &f;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; PIECE as usize];
                    let mut i = t;
                    while i < pieces {
                        let off = i * PIECE;
                        let n = PIECE.min(len - off) as usize;
                        f.read_exact_at(&mut buf[..n], off).unwrap();
                        out.push((i, *blake3::hash(&buf[..n]).as_bytes()));
                        i += 2;
                    }
                    out
                })
            })
            .collect();
        for w in workers {
            for (i, h) in w.join().unwrap() {
                hashes[i as usize] = h;
            }
        }
    });
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    for x in &hashes {
        h.update(x);
    }
    *h.finalize().as_bytes()
}

/// A tree's files (content hash, size, permission bits), directories, and anything else found.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct Snap {
    files: BTreeMap<String, (Digest, u64, u32)>,
    dirs: BTreeSet<String>,
    other: Vec<String>,
}

impl Snap {
    fn hash(&self, path: &str) -> Option<Digest> {
        self.files.get(path).map(|f| f.0)
    }
}

/// Everything under `root` except its top-level entry `skip` (`.mtr` locally, `.mtr-sync`
/// remotely), without following symlinks.
fn snapshot(root: &Path, skip: &str) -> Snap {
    fn walk(root: &Path, rel: &str, skip: &str, s: &mut Snap) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for de in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let de = de.unwrap();
            let name = de.file_name().into_string().unwrap();
            if rel.is_empty() && name == skip {
                continue;
            }
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = de.file_type().unwrap();
            if ft.is_dir() {
                s.dirs.insert(r.clone());
                walk(root, &r, skip, s);
            } else if ft.is_file() {
                let m = de.metadata().unwrap();
                let mode = m.mode() & 0o777;
                s.files.insert(r, (file_hash(&de.path()), m.len(), mode));
            } else {
                s.other.push(r);
            }
        }
    }
    let mut s = Snap::default();
    walk(root, "", skip, &mut s);
    s
}

/// What in `remote` is neither the `old` nor the `new` version of the tree: a file whose
/// content is neither, a path in neither, a file of both versions that is missing.
fn not_old_or_new(remote: &Snap, old: &Snap, new: &Snap) -> Vec<String> {
    let mut bad = Vec::new();
    for o in &remote.other {
        bad.push(format!("{o}: not a regular file or a directory"));
    }
    for d in &remote.dirs {
        if !old.dirs.contains(d) && !new.dirs.contains(d) {
            bad.push(format!("{d}/: a directory in neither version"));
        }
    }
    for (p, (h, _, _)) in &remote.files {
        let (o, n) = (old.hash(p), new.hash(p));
        if o.is_none() && n.is_none() {
            bad.push(format!("{p}: a file in neither version"));
        } else if Some(*h) != o && Some(*h) != n {
            bad.push(format!("{p}: neither its old nor its new content"));
        }
    }
    for p in old.files.keys() {
        if new.files.contains_key(p) && !remote.files.contains_key(p) {
            bad.push(format!("{p}: missing, though in both versions"));
        }
    }
    bad
}

/// How `b` differs from `a` (empty when the trees are the same: contents, modes, directories).
fn differences(a: &Snap, b: &Snap) -> Vec<String> {
    let mut out = Vec::new();
    for (p, f) in &a.files {
        match b.files.get(p) {
            None => out.push(format!("{p}: missing")),
            Some(g) if g.0 != f.0 => out.push(format!("{p}: other content")),
            Some(g) if g.2 != f.2 => out.push(format!("{p}: mode {:o}, not {:o}", g.2, f.2)),
            _ => {}
        }
    }
    out.extend(
        b.files
            .keys()
            .filter(|p| !a.files.contains_key(*p))
            .map(|p| format!("{p}: extra file")),
    );
    out.extend(
        a.dirs
            .symmetric_difference(&b.dirs)
            .map(|d| format!("{d}/: in one tree only")),
    );
    out.extend(
        b.other
            .iter()
            .map(|o| format!("{o}: not a file or directory")),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Processes

/// `mtr` run from `root` with `home` as HOME (as [`Project::mtr`] does), not yet started.
fn mtr_in(root: &Path, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtr"));
    c.current_dir(root)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    c
}

/// Waits for `child` at most `limit`; kills it and returns `None` after that.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(10));
    }
}

/// [`wait_exit`], or the stacks of a process that hangs (by gdb, when installed), then killed.
fn wait_exit_or_stacks(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Ok(s);
        }
        sleep(Duration::from_millis(10));
    }
    let stacks = Command::new("gdb")
        .args([
            "-p",
            &child.id().to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(no gdb: {e})"));
    let _ = child.kill();
    let _ = child.wait();
    Err(stacks)
}

/// What a finished `mtr` run said.
struct Run {
    status: Option<ExitStatus>,
    stderr: String,
    started: Instant,
    ended: Instant,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Runs `cmd` to its end (at most `limit`, then it is killed), collecting stderr.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mtr");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, limit);
    let ended = Instant::now();
    Run {
        status,
        stderr: reader.join().unwrap(),
        started,
        ended,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// SIGKILL to the local `mtr`.
    Mtr,
    /// SIGKILL to the remote `mtr-agent serve`.
    Agent,
    /// SIGKILL to sshd's per-connection process running as the user (`sshd: USER@notty`).
    Session,
}

impl Kill {
    fn name(self) -> &'static str {
        match self {
            Kill::Mtr => "mtr",
            Kill::Agent => "agent",
            Kill::Session => "sshd-session",
        }
    }
}

/// The agent itself (`…/mtr-agent serve`), not the `sh -c` launch script that waits for it.
fn is_agent(cmd: &str) -> bool {
    util::runs_agent(cmd, "serve")
}

fn is_launcher(cmd: &str) -> bool {
    cmd.starts_with("sh -c ") && cmd.contains("mtr-agent")
}

/// sshd's per-connection process that runs as the user: `sshd: USER@notty` (OpenSSH < 9.8)
/// or `sshd-session: USER@notty`; the listening daemon and the privileged monitor run as root.
fn is_session(cmd: &str) -> bool {
    cmd.starts_with("sshd") && cmd.contains('@')
}

fn remote_pid(p: &Project, kind: Kill) -> Option<u32> {
    p.server
        .user_processes()
        .into_iter()
        .find(|(_, cmd)| match kind {
            Kill::Agent => is_agent(cmd),
            Kill::Session => is_session(cmd),
            Kill::Mtr => false,
        })
        .map(|(pid, _)| pid)
}

/// Waits until the server side of the connection is gone: no agent, no session process (the
/// agent holds the lock and may still write to staging until it exits).
fn wait_remote_idle(p: &Project, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left: Vec<(u32, String)> = p
            .server
            .user_processes()
            .into_iter()
            .filter(|(_, c)| is_agent(c) || is_launcher(c) || is_session(c))
            .collect();
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the server side still runs {left:?} {limit:?} after mtr exited"
        );
        sleep(Duration::from_millis(20));
    }
}

/// How long mtr may run on after the kill before it counts as hung (it gives a failing agent
/// 10 s to say why, `DRAIN_TIMEOUT` in agent_install.rs).
const HANG: Duration = Duration::from_secs(30);

/// An interrupted sync: when the kill was sent (`None`: mtr ended first), how mtr ended, and
/// its threads' stacks if it hung (it was then killed).
struct Interrupted {
    killed_at: Option<Duration>,
    /// From the start to mtr's exit.
    took: Duration,
    status: ExitStatus,
    stderr: String,
    hung: Option<String>,
}

/// `mtr --no-tty --sync-only`, with `kind`'s process SIGKILLed `delay` after the start (or as
/// soon after as it exists); waits for mtr to exit ([`HANG`] at most).
fn interrupted_sync(p: &Project, kind: Kill, delay: Duration) -> Interrupted {
    let errfile = p.server.dir().join("interrupted.stderr");
    let start = Instant::now();
    let mut child = mtr_in(p.root(), p.home.path())
        .args(["--no-tty", "--sync-only"])
        .stdout(Stdio::null())
        .stderr(File::create(&errfile).unwrap())
        .spawn()
        .expect("spawn mtr");
    let mut killed_at = None;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() >= delay {
            let pid = match kind {
                Kill::Mtr => Some(child.id()),
                k => remote_pid(p, k),
            };
            // SAFETY: kill(2) on a pid; a pid that is gone fails with ESRCH and we retry.
            if let Some(pid) = pid {
                if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                    killed_at = Some(start.elapsed());
                    break;
                }
            }
        }
        sleep(Duration::from_millis(2));
    }
    let (status, hung) = match wait_exit_or_stacks(&mut child, HANG) {
        Ok(status) => (status, None),
        Err(stacks) => (child.wait().unwrap(), Some(stacks)),
    };
    Interrupted {
        killed_at,
        took: start.elapsed(),
        status,
        stderr: fs::read_to_string(&errfile).unwrap_or_default(),
        hung,
    }
}

/// The stack of gdb's "Thread 1" (the main thread) in `stacks`, frames shortened.
fn main_thread(stacks: &str) -> String {
    let from = stacks.find("\nThread 1 ").map_or(0, |i| i + 1);
    stacks[from..]
        .lines()
        .take_while(|l| !l.starts_with("[Inferior"))
        .map(|l| l.chars().take(160).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Interrupted syncs

const BIG: &str = "data/weights.bin";
const BIG_SIZE: u64 = 1 << 30;

/// Writes `len` bytes of incompressible data from `seed` at `from` in `path` (created if
/// missing, never truncated): BLAKE3's XOF keyed by the seed, on two threads.
fn write_random(path: &Path, from: u64, len: u64, seed: u64) {
    const BLOCK: u64 = 8 << 20;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    let key = *blake3::hash(&seed.to_le_bytes()).as_bytes();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let f = &f;
            s.spawn(move || {
                let mut xof = blake3::Hasher::new_keyed(&key).finalize_xof();
                let mut buf = vec![0u8; BLOCK as usize];
                let mut off = t * BLOCK;
                while off < len {
                    let n = BLOCK.min(len - off) as usize;
                    xof.set_position(off);
                    xof.fill(&mut buf[..n]);
                    f.write_all_at(&buf[..n], from + off).unwrap();
                    off += 2 * BLOCK;
                }
            });
        }
    });
}

/// One round's change of the tree.
struct Change {
    /// The range of the big file rewritten with new data.
    region: (u64, u64),
    /// Small files edited or added (and still there).
    small: Vec<String>,
    deleted: usize,
}

impl Change {
    fn region_len(&self) -> u64 {
        self.region.1 - self.region.0
    }
}

/// Rewrites 30–40% of the big file (one range, new random data) and edits 6, adds 4 and
/// deletes 3 small files.
fn change_tree(p: &Project, rng: &mut Rng, small: &mut Vec<String>, round: usize) -> Change {
    let len = ((BIG_SIZE as f64 * (0.3 + 0.1 * rng.unit())) as u64) & !4095;
    let from = rng.below((BIG_SIZE - len) as usize) as u64;
    write_random(&p.root().join(BIG), from, len, rng.next_u64());
    let mut touched = Vec::new();
    for _ in 0..6 {
        let path = small[rng.below(small.len())].clone();
        let size = 200 + rng.below(20_000);
        p.write(&path, gen::text(rng, "py", size));
        touched.push(path);
    }
    for i in 0..4 {
        let near = Path::new(&small[rng.below(small.len())]).parent().unwrap();
        let path = near
            .join(format!("added_r{round}_{i}.py"))
            .to_str()
            .unwrap()
            .to_string();
        let size = 200 + rng.below(20_000);
        p.write(&path, gen::text(rng, "py", size));
        small.push(path.clone());
        touched.push(path);
    }
    let mut deleted = 0;
    for _ in 0..3 {
        let path = small.swap_remove(rng.below(small.len()));
        fs::remove_file(p.root().join(&path)).unwrap();
        touched.retain(|t| t != &path);
        deleted += 1;
    }
    touched.sort();
    touched.dedup();
    Change {
        region: (from, from + len),
        small: touched,
        deleted,
    }
}

/// Bytes of data (not holes) of `path` in `[from, to)`, by SEEK_DATA/SEEK_HOLE.
fn data_in_range(path: &Path, from: u64, to: u64) -> u64 {
    let f = File::open(path).unwrap();
    let fd = f.as_raw_fd();
    let (mut off, mut total) = (from, 0);
    while off < to {
        // SAFETY: lseek on a valid descriptor.
        let d = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
        if d < 0 || d as u64 >= to {
            break;
        }
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        if h <= d {
            break;
        }
        let end = (h as u64).min(to);
        total += end - d as u64;
        off = h as u64;
    }
    total
}

/// What `<remote>/.mtr-sync/staging/` holds.
#[derive(Default)]
struct Staging {
    files: usize,
    /// Allocated bytes (st_blocks × 512) of every file there.
    allocated: u64,
    /// Data bytes within the rewritten range of the big file's staged copy: chunks received
    /// (copies of unchanged chunks land outside that range).
    big_in_region: u64,
}

fn staging(remote: &Path, region: (u64, u64)) -> Staging {
    let mut s = Staging::default();
    let Ok(rd) = fs::read_dir(remote.join(".mtr-sync/staging")) else {
        return s;
    };
    // The sink names a staged file after the BLAKE3 of its path (sink.rs `staging_path`).
    let prefix = blake3::hash(BIG.as_bytes()).to_hex()[..32].to_string();
    for de in rd {
        let de = de.unwrap();
        let m = fs::symlink_metadata(de.path()).unwrap();
        s.files += 1;
        s.allocated += m.blocks() * 512;
        if m.is_file() && de.file_name().to_string_lossy().starts_with(&prefix) {
            s.big_in_region += data_in_range(&de.path(), region.0, region.1);
        }
    }
    s
}

fn mb(n: u64) -> String {
    format!("{:.1}", n as f64 / MB as f64)
}

struct Row {
    round: usize,
    kind: Kill,
    delay: Duration,
    killed_at: Option<Duration>,
    exit: String,
    staged: u64,
    arrived: u64,
    changed: u64,
    resent: u64,
    bound: u64,
    resume_secs: f64,
    error: String,
}

fn print_rows(rows: &[Row], full: Duration) {
    println!(
        "\ninterrupted syncs (kills spread over a full round sync of {:.2}s; MB = 10^6 bytes)",
        full.as_secs_f64()
    );
    println!(
        "{:>5} {:>12} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "round",
        "kill",
        "delay_ms",
        "kill_ms",
        "exit",
        "staged_MB",
        "arrived",
        "changed",
        "resent",
        "bound",
        "resume_s"
    );
    for r in rows {
        println!(
            "{:>5} {:>12} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2}",
            r.round,
            r.kind.name(),
            r.delay.as_millis(),
            r.killed_at
                .map_or("-".to_string(), |d| d.as_millis().to_string()),
            r.exit,
            mb(r.staged),
            mb(r.arrived),
            mb(r.changed),
            mb(r.resent),
            mb(r.bound),
            r.resume_secs
        );
    }
    for r in rows.iter().filter(|r| !r.error.is_empty()) {
        println!("  round {} ({}): {}", r.round, r.kind.name(), r.error);
    }
}

#[test]
fn interrupted_syncs_leave_old_or_new_files_and_resume() {
    let seed: u64 = std::env::var("MTR_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_fa17);
    println!("interrupted syncs: seed {seed} (MTR_FAULTS_SEED)");
    let mut rng = Rng::new(seed);
    let mut timing = Rng::new(seed ^ 0x7133_7133);
    let test_start = Instant::now();
    let p = Project::new();
    let mut small: Vec<String> = gen::source_tree(p.root(), 300, 3_000_000, seed)
        .into_iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    write_random(&p.root().join(BIG), 0, BIG_SIZE, seed ^ 1);

    // The remote is the local tree (by content hash, mode, directories).
    let assert_same = |local: &Snap, when: &str| {
        let remote = snapshot(&p.remote(), ".mtr-sync");
        let diff = differences(local, &remote);
        assert!(
            diff.is_empty(),
            "{when}: the remote differs from the local tree:\n{}",
            diff.join("\n")
        );
    };
    let t = Instant::now();
    p.sync();
    let first = t.elapsed();
    assert_same(&snapshot(p.root(), ".mtr"), "first sync");
    // A full sync of one round's change, to spread the kills over.
    change_tree(&p, &mut rng, &mut small, 0);
    let t = Instant::now();
    p.sync();
    let mut full = t.elapsed();
    let mut old = snapshot(p.root(), ".mtr");
    assert_same(&old, "calibration sync");
    println!(
        "first sync (1 GiB + 300 files): {:.2}s; a round's change synced in full: {:.2}s; setup {:.1}s",
        first.as_secs_f64(),
        full.as_secs_f64(),
        test_start.elapsed().as_secs_f64()
    );

    let kinds = [Kill::Mtr, Kill::Agent, Kill::Session];
    let mut hits = [0usize; 3];
    let mut rows: Vec<Row> = Vec::new();
    let mut over: Vec<String> = Vec::new();
    let mut hangs: Vec<String> = Vec::new();
    let mut recalibrated: Vec<String> = Vec::new();
    let mut round = 0;
    // 7 interruptions of each kind (a round whose mtr ended before the kill is repeated).
    while hits.iter().any(|&h| h < 7) {
        round += 1;
        assert!(
            round <= 40,
            "too many rounds ended before their kill (full sync re-measured at {recalibrated:?})"
        );
        let k = (0..3)
            .filter(|&i| hits[i] < 7)
            .min_by_key(|&i| (hits[i], (i + 3 - round % 3) % 3))
            .unwrap();
        let kind = kinds[k];
        let change = change_tree(&p, &mut rng, &mut small, round);
        let new = snapshot(p.root(), ".mtr");
        let delay = full.mul_f64(0.03 + 0.92 * timing.unit());

        let run = interrupted_sync(&p, kind, delay);
        wait_remote_idle(&p, Duration::from_secs(60));
        if run.killed_at.is_some() {
            hits[k] += 1;
        } else if run.status.success() {
            // A whole sync of a round's change ran before the kill (the machine got faster, as
            // when other tests end): spread the next kills over its duration instead.
            full = run.took;
            recalibrated.push(format!("{:.2}s after round {round}", full.as_secs_f64()));
        }
        let exit = match (&run.hung, run.status.code()) {
            (Some(_), _) => "HUNG".to_string(),
            (None, None) => "SIGKILL".to_string(),
            (None, Some(c)) => c.to_string(),
        };
        if let Some(stacks) = &run.hung {
            hangs.push(format!(
                "round {round}: mtr still ran {HANG:?} after its {} was killed at {:?}; its main thread:\n{}",
                kind.name(),
                run.killed_at,
                main_thread(stacks)
            ));
        }
        let remote = snapshot(&p.remote(), ".mtr-sync");
        let bad = not_old_or_new(&remote, &old, &new);
        if !bad.is_empty() {
            print_rows(&rows, full);
        }
        assert!(
            bad.is_empty(),
            "round {round}: after killing {} at {:?}, the remote holds what is neither the old nor the new tree:\n{}\nmtr said:\n{}",
            kind.name(),
            run.killed_at,
            bad.join("\n"),
            run.stderr
        );
        match (run.hung.is_some(), run.status.code()) {
            (true, _) => {}
            // The kill came after the work was done: it is all there.
            (false, Some(0)) => assert!(
                differences(&new, &remote).is_empty(),
                "round {round}: mtr succeeded, the remote is not the new tree"
            ),
            (false, Some(255)) => assert!(
                run.stderr.contains("127.0.0.1"),
                "round {round}: the error does not name the host:\n{}",
                run.stderr
            ),
            (false, None) => assert_eq!(kind, Kill::Mtr, "round {round}: mtr died of a signal"),
            (false, Some(c)) => panic!("round {round}: mtr exited {c}:\n{}", run.stderr),
        }

        // What had arrived: a placed file entirely; else the received chunks in staging.
        let st = staging(&p.remote(), change.region);
        let placed = |path: &str| remote.hash(path) == new.hash(path);
        let arrived_big = if placed(BIG) {
            change.region_len()
        } else {
            st.big_in_region
        };
        let changed_small: u64 = change.small.iter().map(|f| new.files[f].1).sum();
        let arrived_small: u64 = change
            .small
            .iter()
            .filter(|f| placed(f))
            .map(|f| new.files[f].1)
            .sum();
        let changed = change.region_len() + changed_small;
        let arrived = arrived_big + arrived_small;

        let t = Instant::now();
        let out = p.sync();
        let resume_secs = t.elapsed().as_secs_f64();
        let resent = wire_bytes(&out);
        assert_same(
            &new,
            &format!("round {round}: the sync after the interruption"),
        );
        // Old versions are removed by the agent's helper after the session.
        util::names_once_emptied(&p.remote().join(".mtr-sync/staging"));
        let left = staging(&p.remote(), (0, 0));
        assert_eq!(
            left.files,
            0,
            "round {round}: a completed sync left {} file(s) ({} MB) in .mtr-sync/staging",
            left.files,
            mb(left.allocated)
        );
        let bound = (changed.saturating_sub(arrived) as f64 * 1.1) as u64 + 2 * MB;
        if resent > bound {
            over.push(format!(
                "round {round} ({} killed at {:?}): resent {} MB > bound {} MB (changed {} MB, arrived {} MB)\n{out}",
                kind.name(),
                run.killed_at,
                mb(resent),
                mb(bound),
                mb(changed),
                mb(arrived)
            ));
        }
        let error = if run.killed_at.is_some() && kind != Kill::Mtr {
            run.stderr
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("")
                .chars()
                .take(200)
                .collect()
        } else {
            String::new()
        };
        let row = Row {
            round,
            kind,
            delay,
            killed_at: run.killed_at,
            exit,
            staged: st.allocated,
            arrived,
            changed,
            resent,
            bound,
            resume_secs,
            error,
        };
        println!(
            "round {round}: {} killed at {:?} (exit {}), {} small files changed, {} deleted; arrived {} of {} MB changed, resent {} MB (bound {}); {:.0}s in",
            kind.name(),
            row.killed_at,
            row.exit,
            change.small.len(),
            change.deleted,
            mb(arrived),
            mb(changed),
            mb(resent),
            mb(bound),
            test_start.elapsed().as_secs_f64()
        );
        rows.push(row);
        old = new;
    }
    print_rows(&rows, full);
    if !recalibrated.is_empty() {
        println!("full sync re-measured: {}", recalibrated.join(", "));
    }
    // The harness's own comparison, once (it is slow on 1 GB in a debug build).
    p.assert_synced();
    println!(
        "{} rounds, {:.1}s in all",
        rows.len(),
        test_start.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    if !hangs.is_empty() {
        failures.push(format!(
            "mtr hung after an interruption (killed after {HANG:?}):\n{}",
            hangs.join("\n\n")
        ));
    }
    if !over.is_empty() {
        failures.push(format!(
            "a resumed sync resent more than what had not arrived:\n{}",
            over.join("\n")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Concurrent syncs to one remote_dir

fn is_lock_error(stderr: &str) -> bool {
    stderr.contains("another mtr sync") && stderr.contains("lock")
}

/// Holds `<remote>/.mtr-sync/lock` as a sync would (flock), until dropped.
struct HeldLock(#[allow(dead_code)] File);

impl HeldLock {
    fn take(path: &Path) -> HeldLock {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        // SAFETY: flock on a valid descriptor.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, 0, "cannot take {}", path.display());
        HeldLock(f)
    }
}

#[test]
fn two_syncs_to_one_remote_dir_are_serialized() {
    let test_start = Instant::now();
    let p1 = Project::new();
    let dir2 = tempfile::Builder::new()
        .prefix("mtr-proj2-")
        .tempdir()
        .unwrap();
    let root2 = dir2.path();
    let home2 = LocalHome::for_server(&p1.server);
    // The same server entry, remote_dir included.
    fs::create_dir_all(root2.join(".mtr")).unwrap();
    fs::copy(
        p1.root().join(".mtr/config.yaml"),
        root2.join(".mtr/config.yaml"),
    )
    .unwrap();
    gen::source_tree(p1.root(), 150, 1_500_000, 11);
    gen::binary_file(&p1.root().join("shared/blob.bin"), 24_000_000, 1);
    p1.write("same.txt", "project one");
    gen::source_tree(root2, 150, 1_500_000, 22);
    gen::binary_file(&root2.join("shared/blob.bin"), 24_000_000, 2);
    gen::write_file(&root2.join("same.txt"), "project two");

    let ignore = [".mtr", ".mtr-sync"];
    let remote = p1.remote();
    let sync = |root: &Path, home: &Path| {
        let mut c = mtr_in(root, home);
        c.args(["--no-tty", "-v", "--sync-only"]);
        run(c, Duration::from_secs(150))
    };
    let mut overlapped = 0;
    let mut both_ok = 0;
    for i in 0..6 {
        // Something to send each time, and the tree the remote must end up as.
        p1.write("round.txt", format!("one {i}"));
        gen::write_file(&root2.join("round.txt"), format!("two {i}"));
        gen::binary_file(&p1.root().join("shared/blob.bin"), 24_000_000, 100 + i);
        gen::binary_file(&root2.join("shared/blob.bin"), 24_000_000, 200 + i);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| sync(p1.root(), p1.home.path()));
            let b = s.spawn(|| sync(root2, home2.path()));
            (a.join().unwrap(), b.join().unwrap())
        });
        for (name, r) in [("one", &a), ("two", &b)] {
            assert!(
                r.ok() || (r.code() == Some(255) && is_lock_error(&r.stderr)),
                "iteration {i}: project {name}'s sync neither succeeded nor failed on the lock ({:?}):\n{}\nsshd log:\n{}",
                r.status,
                r.stderr,
                p1.server.log()
            );
        }
        if a.started < b.ended && b.started < a.ended {
            overlapped += 1;
        }
        let one = gen::tree_equal(p1.root(), &remote, &ignore);
        let two = gen::tree_equal(root2, &remote, &ignore);
        assert!(
            one.is_ok() != two.is_ok(),
            "iteration {i}: the remote is not exactly one of the two projects:\nvs one: {one:?}\nvs two: {two:?}"
        );
        // Serialized: the remote is the tree of the sync that held the lock last, which ends last.
        if a.ok() && b.ok() {
            let last_one = a.ended > b.ended;
            assert_eq!(
                one.is_ok(),
                last_one,
                "iteration {i}: the remote is project {}'s, but project {}'s sync ended last",
                if one.is_ok() { "one" } else { "two" },
                if last_one { "one" } else { "two" }
            );
            both_ok += 1;
        }
        println!(
            "iteration {i}: one {:?} {:.2}s, two {:?} {:.2}s, remote = project {}",
            a.code(),
            (a.ended - a.started).as_secs_f64(),
            b.code(),
            (b.ended - b.started).as_secs_f64(),
            if one.is_ok() { "one" } else { "two" }
        );
    }
    assert!(
        overlapped >= 5,
        "the two syncs overlapped in {overlapped} of 6 iterations"
    );

    // A sync that finds the lock held waits for it...
    let lock = remote.join(".mtr-sync/lock");
    p1.write("round.txt", "one, after the lock");
    let hold = Duration::from_secs(3);
    let r = std::thread::scope(|s| {
        let held = HeldLock::take(&lock);
        let waiter = s.spawn(|| sync(p1.root(), p1.home.path()));
        sleep(hold);
        drop(held);
        waiter.join().unwrap()
    });
    assert!(
        r.ok(),
        "sync after the lock was released failed:\n{}",
        r.stderr
    );
    assert!(
        r.ended - r.started >= hold,
        "the sync ended {:?} after its start, while the lock was held for {hold:?}",
        r.ended - r.started
    );
    p1.assert_synced();

    // ...and gives up, naming the lock, when it stays held (sink.rs LOCK_TIMEOUT, 60 s).
    gen::write_file(&root2.join("round.txt"), "two, never sent");
    let held = HeldLock::take(&lock);
    let r = sync(root2, home2.path());
    drop(held);
    let waited = r.ended - r.started;
    assert!(
        r.status.is_some(),
        "a sync blocked on the lock still ran after {waited:?}"
    );
    assert_eq!(
        r.code(),
        Some(255),
        "a sync that never got the lock:\n{}",
        r.stderr
    );
    assert!(is_lock_error(&r.stderr), "{}", r.stderr);
    // One sentence, said once: where (host and directory), the lock file, what to do; not
    // the agent's path nor its stderr repeating the error.
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("mtr: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", r.stderr));
    let who = format!("{}@127.0.0.1:{}", p1.server.user(), p1.server.port());
    assert!(
        line.starts_with(&format!(
            "mtr: error: sync to {who}:{} failed: another mtr sync still holds the lock {} \
             after 60 s; let it finish, then run mtr again",
            remote.display(),
            lock.display()
        )),
        "{line}"
    );
    assert_eq!(line.matches("another mtr sync").count(), 1, "{line}");
    assert_eq!(
        line.matches(&lock.display().to_string()).count(),
        1,
        "{line}"
    );
    assert!(!line.contains("mtr-agent"), "{line}");
    p1.assert_synced();
    println!(
        "lock: {both_ok}/6 iterations with both syncs succeeding, one after the other; blocked sync gave up after {:.1}s: {line}; test {:.1}s",
        waited.as_secs_f64(),
        test_start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// A file rewritten during the sync

#[test]
fn a_file_changed_while_read_is_never_recorded_torn() {
    const LIVE: &str = "data/live.bin";
    const SIZE: usize = 128 << 20;
    let test_start = Instant::now();
    let p = Project::new();
    gen::source_tree(p.root(), 50, 300_000, 5);
    let path = p.root().join(LIVE);
    let versions: Mutex<HashSet<Digest>> = Mutex::new(HashSet::new());
    let mut buf = vec![0u8; SIZE];
    Rng::new(1000).fill(&mut buf);
    versions.lock().unwrap().insert(bytes_hash(&buf));
    p.write(LIVE, &buf);
    drop(buf);
    p.sync();
    p.assert_synced();

    let stop = AtomicBool::new(false);
    let begun = AtomicU64::new(0);
    let (mut ok, mut failed) = (0, 0);
    let mut outcomes = Vec::new();
    let written = std::thread::scope(|s| {
        // Rewrites the whole file (every other time truncated first, as `open(.., "wb")` does;
        // else in place) with a new
        // version, continuously (no pause inside a version), then pauses 0.3–2.5 s.
        let writer = s.spawn(|| {
            let mut rng = Rng::new(77);
            let mut buf = vec![0u8; SIZE];
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                Rng::new(1000 + k).fill(&mut buf);
                versions.lock().unwrap().insert(bytes_hash(&buf));
                begun.store(k, Ordering::Relaxed);
                let f = OpenOptions::new()
                    .write(true)
                    .truncate(k.is_multiple_of(2))
                    .open(&path)
                    .unwrap();
                for (i, piece) in buf.chunks(4 << 20).enumerate() {
                    f.write_all_at(piece, (i * (4 << 20)) as u64).unwrap();
                }
                drop(f);
                let pause = Instant::now() + Duration::from_millis(300 + rng.below(2200) as u64);
                while Instant::now() < pause && !stop.load(Ordering::Relaxed) {
                    sleep(Duration::from_millis(20));
                }
            }
            (k, buf)
        });
        // The writer stops when this scope ends, a failed assertion included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let started = Instant::now();
        let mut rng = Rng::new(78);
        let mut seen = 0;
        let mut n = 0;
        // At least 12 syncs (more chances to read the file as it is rewritten), until both
        // outcomes were seen twice; at most 20 syncs or 100 s.
        while n < 20
            && !(n >= 12 && ok >= 2 && failed >= 2)
            && started.elapsed() < Duration::from_secs(100)
        {
            n += 1;
            // Each sync has a new version to send: it starts 0–1.2 s after one was begun.
            let waiting = Instant::now();
            while begun.load(Ordering::Relaxed) == seen
                && waiting.elapsed() < Duration::from_secs(5)
            {
                sleep(Duration::from_millis(10));
            }
            seen = begun.load(Ordering::Relaxed);
            sleep(Duration::from_millis(rng.below(1200) as u64));
            let t = Instant::now();
            let out = p
                .mtr()
                .args(["--no-tty", "-v", "--sync-only"])
                .output()
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let remote = file_hash(&p.remote().join(LIVE));
            assert!(
                versions.lock().unwrap().contains(&remote),
                "sync {n} ({:?}): the remote {LIVE} is no complete version the writer wrote:\n{stderr}",
                out.status
            );
            if out.status.success() {
                ok += 1;
                outcomes.push(format!("sync {n}: ok in {secs:.2}s"));
            } else {
                // A signal here is mtr killed by its own read of the file: SIGBUS when a file it
                // maps shrinks under it.
                assert_eq!(
                    out.status.code(),
                    Some(255),
                    "sync {n} ended by {:?} (signal {:?}) instead of an error naming {LIVE}:\n{stderr}",
                    out.status,
                    out.status.signal()
                );
                assert!(
                    stderr.contains(LIVE),
                    "sync {n} failed without naming {LIVE}:\n{stderr}"
                );
                failed += 1;
                let line = stderr
                    .lines()
                    .find(|l| l.contains(LIVE))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                outcomes.push(format!("sync {n}: failed in {secs:.2}s: {line}"));
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    for o in &outcomes {
        println!("{o}");
    }
    let (versions_written, last) = written;
    assert!(
        failed >= 1,
        "no sync ever saw the file change ({ok} succeeded while {versions_written} versions were written)"
    );
    // Nothing torn was recorded as synced: one more sync makes the remote the local file.
    p.sync();
    p.assert_synced();
    assert_eq!(file_hash(&p.remote().join(LIVE)), bytes_hash(&last));
    println!(
        "live file: {ok} syncs succeeded, {failed} failed naming it, {versions_written} versions written; test {:.1}s",
        test_start.elapsed().as_secs_f64()
    );
}
