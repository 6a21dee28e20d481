//! Running the tools the end-to-end benchmarks measure: where the workspace and its target dir
//! are, the `mtr` binary to run, one measured run of a command ([`measure`]), and what the
//! `harness = false` benches do with the arguments `cargo bench` / `cargo test` give them
//! ([`wanted`]), and putting a server back where it stood before mtr's first contact
//! ([`cold_start`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::sshd::Server;

use super::probe::{self, Sampled, Watch};

/// The workspace root.
/// The first line of what `cmd` prints (a `--version`), or why it could not run.
pub fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The workspace's target dir (`CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Whether a `harness = false` bench named `name` should run, from its arguments: `cargo bench`
/// passes `--bench` (and any filter after `--`), `cargo test --benches` passes neither. Like
/// criterion: without `--bench` it is a test run and the bench only says it was skipped; `--list`
/// prints its name; a filter that `name` does not contain skips it.
pub fn wanted(name: &str) -> bool {
    let args = without_rate(std::env::args().skip(1));
    if args.iter().any(|a| a == "--list") {
        println!("{name}: bench");
        return false;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("{name}: not run without --bench (use `cargo bench --bench {name}`)");
        return false;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("{name}: filtered out");
        return false;
    }
    true
}

/// The value of `--rate R` or `--rate=R` among a bench's arguments (the last one given).
pub fn rate_arg(args: impl Iterator<Item = String>) -> Option<String> {
    let mut rate = None;
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--rate" {
            rate = args.next();
        } else if let Some(v) = a.strip_prefix("--rate=") {
            rate = Some(v.to_owned());
        }
    }
    rate
}

/// A bench's arguments without `--rate R` / `--rate=R`, so the rate is not taken for a filter.
fn without_rate(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--rate" {
            args.next();
        } else if !a.starts_with("--rate=") {
            out.push(a);
        }
    }
    out
}

/// `explicit` (absolute, or relative to the workspace), or a fresh
/// `cargo build --release -p mtr`. On a build failure, says so loudly and returns the error.
pub fn mtr_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(bin) = explicit {
        // cargo runs benches in the package's dir: resolve from the workspace instead.
        let bin = workspace().join(bin);
        assert!(
            bin.is_file(),
            "MTR_BENCH_MTR: no such file: {}",
            bin.display()
        );
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building mtr: cargo build --release -p mtr");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "mtr"])
        .current_dir(workspace())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        eprintln!(
            "\n!!!!!!!! cargo build --release -p mtr failed: mtr runs will be skipped !!!!!!!!\n"
        );
        return Err(format!(
            "`cargo build --release -p mtr` failed ({status}); see its output above"
        ));
    }
    Ok(target_dir().join("release/mtr"))
}

/// What one run of a command measured.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Exit code (128+N if killed by signal N).
    pub code: i32,
    pub wall_s: f64,
    pub wire_bytes: u64,
    /// Peak RSS of the local command or the largest of the descendants it waited for (`wait4`),
    /// in KiB; CPU seconds of all of them.
    pub local_rss_kib: u64,
    pub local_cpu_s: f64,
    /// The polled local process and the remote account's processes.
    pub sampled: Sampled,
}

/// Runs `cmd` to completion (its stdio set by the caller), sampling it and the processes of
/// `uid` (the remote account) every 10 ms, and counting `wire()` before and after; then waits
/// up to 5 s for the account's processes to go (sshd's session, the agent) before returning.
/// Dirty pages are written out first: a scenario's setup (a 2 GB checkpoint rewritten) or the
/// previous run's files would otherwise be flushed during the run and throttle its writes,
/// which cost whichever tool ran first after a setup up to a second in 2 GB scenarios.
pub fn measure(cmd: &mut Command, uid: u32, wire: &dyn Fn() -> u64) -> Measured {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let before = wire();
    let start = Instant::now();
    // Reaped by wait4, which also yields its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let watch = Watch::start(uid, child.id(), Duration::from_millis(10));
    let (code, usage) = wait4(child.id());
    let wall_s = start.elapsed().as_secs_f64();
    let wire_bytes = wire() - before;
    let sampled = watch.stop();
    let quiet = Instant::now() + Duration::from_secs(5);
    while !probe::processes(uid).is_empty() && Instant::now() < quiet {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        code,
        wall_s,
        wire_bytes,
        local_rss_kib: usage.ru_maxrss as u64,
        local_cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
        sampled,
    }
}

/// Waits for `pid`; returns its exit code (128+N if killed by signal N) and resource usage,
/// which covers the descendants it waited for (`ru_maxrss` is the largest of them).
pub fn wait4(pid: u32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
        if r == pid as i32 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage)
}

/// Writes `value` as pretty JSON to `<target>/<name>` and says where.
pub fn write_json(name: &str, value: &serde_json::Value) {
    let path = target_dir().join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, serde_json::to_string_pretty(value).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("wrote {}", path.display());
}

/// The workspace's git revision, `+dirty` when the working tree has changes (the `mtr` built
/// from it then includes them); `?` without git.
pub fn source_revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{rev}+dirty"),
            _ => rev,
        },
        None => "?".into(),
    }
}

/// The current load average line of `/proc/loadavg` (1, 5, 15 minutes).
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Puts `server` back where it stood before mtr's first contact, so the next sync is a first
/// sync: no process of the account left (agents, their watchers and helpers), each of
/// `remote_dirs` (under its home) empty, no agent installed nor its state in any of the
/// places the agent may live, and no cache of mtr's in `local_home`.
pub fn cold_start(server: &Server, local_home: &Path, remote_dirs: &[PathBuf]) {
    server.kill_user_processes();
    let home = server.home();
    for dir in remote_dirs {
        fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
        let rel = dir
            .strip_prefix(home)
            .unwrap_or_else(|_| panic!("{} is not under {}", dir.display(), home.display()));
        server.mkdir_remote(rel);
    }
    let uid = fs::metadata(home)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or_else(|e| panic!("{}: {e}", home.display()));
    let state = [
        home.join(".cache/mtr"),
        PathBuf::from(format!("/dev/shm/mtr-{uid}")),
        PathBuf::from(format!("/tmp/mtr-{uid}")),
        local_home.join(".cache"),
    ];
    for dir in state {
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("remove {}: {e}", dir.display())
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_rate_is_an_argument_not_a_filter() {
        let given = ["--bench", "--rate", "100mbit", "e2e"];
        assert_eq!(rate_arg(args(&given)).as_deref(), Some("100mbit"));
        assert_eq!(without_rate(args(&given)), ["--bench", "e2e"]);
        let given = ["--rate=10mbit", "--bench"];
        assert_eq!(rate_arg(args(&given)).as_deref(), Some("10mbit"));
        assert_eq!(without_rate(args(&given)), ["--bench"]);
        assert_eq!(rate_arg(args(&["--bench"])), None);
    }
}
