//! `mtr-agent`: the remote helper. `mtr` uploads it (static musl) and runs it over an SSH exec
//! channel. `mtr-agent serve` greets with [`protocol::wire::MAGIC`] and then serves one sync
//! session as the sink on stdin/stdout; `mtr-agent send BASE` greets the same way and serves
//! one download as its source ([`protocol::get::serve`]), keeping its chunk index in
//! `BASE/send/`; `mtr-agent run` greets and supervises one command of mtr's batch mode
//! ([`run`]). It never prompts and never prints to stdout outside the protocol; diagnostics go
//! to stderr. `-v` after `serve` or `send` turns on protocol debug lines on stderr (mtr passes
//! it when it runs with `-vv` and shows what the agent wrote when the session ends).

mod log;
mod run;

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v") {
        args.retain(|a| a != "-v");
        log::init();
    }
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(!args.iter().any(|a| a == "--no-watch")),
        Some("send") => send(args.get(1).map(PathBuf::from)),
        Some("run") => run(),
        Some("watch") => watch(args.get(1).map(PathBuf::from)),
        Some("--version") | Some("-V") => {
            println!(
                "mtr-agent {VERSION} (protocol {})",
                protocol::PROTOCOL_VERSION
            );
            0
        }
        _ => {
            eprintln!("usage: mtr-agent serve [--no-watch] | send BASE | run | watch ROOT | --version\n(mtr-agent is started by mtr over SSH; it is not meant to be run by hand)");
            2
        }
    };
    std::process::exit(code);
}

/// Serves one sync session; then, if the sink wants one and `watch`, starts the tree's watcher.
fn serve(watch: bool) -> i32 {
    // SAFETY: fds 0 and 1 are open for the life of the process and used only here.
    let stdin = unsafe { File::from_raw_fd(0) };
    let mut stdout = unsafe { File::from_raw_fd(1) };
    if stdout.write_all(protocol::wire::MAGIC).is_err() {
        return 1;
    }
    let remover = spawn_remover();
    match protocol::sink::serve_agent(stdin, stdout, VERSION, remover, watch) {
        Ok(root) => {
            if let Some(root) = root {
                start_watcher(&root);
            }
            0
        }
        Err(e) => {
            eprintln!("mtr-agent: {e}");
            1
        }
    }
}

/// Starts the process that removes replaced files for the sink (before any thread, so the
/// fork is safe): it reads NUL-terminated paths from a pipe and removes each, in a session of
/// its own with none of the channel's descriptors, so sshd sees the agent's session end
/// while it frees a large file's pages. It ends when the pipe does (the agent exited), after
/// the last path. `None` (the sink removes them itself) if it cannot be started.
fn spawn_remover() -> Option<File> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: the agent has no other thread yet; the child only reads, removes and exits.
    match unsafe { libc::fork() } {
        -1 => {
            // SAFETY: both ends are ours and unused.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            None
        }
        0 => {
            // SAFETY: the child owns the read end; the write end and stdio are closed or
            // pointed at /dev/null so the channel's descriptors are not held.
            unsafe {
                libc::close(fds[1]);
                libc::setsid();
                if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
                    for fd in 0..3 {
                        libc::dup2(null.as_raw_fd(), fd);
                    }
                }
            }
            // SAFETY: fds[0] is the read end, owned here.
            let mut input = std::io::BufReader::new(unsafe { File::from_raw_fd(fds[0]) });
            let mut path = Vec::new();
            while matches!(input.read_until(0, &mut path), Ok(n) if n > 0) {
                if path.pop() == Some(0) {
                    let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(&path));
                }
                path.clear();
            }
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        _ => {
            // SAFETY: the read end is the child's.
            unsafe { libc::close(fds[0]) };
            // SAFETY: fds[1] is the write end, owned here.
            Some(unsafe { File::from_raw_fd(fds[1]) })
        }
    }
}

/// Starts `mtr-agent watch ROOT` ([`protocol::watch`]) in a session of its own, holding none
/// of the channel's descriptors (stdio on `/dev/null`, everything else close-on-exec), so the
/// SSH session ends without it. Not waited for: it outlives the agent.
fn start_watcher(root: &std::path::Path) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("/proc/self/exe");
    if let Ok(exe) = std::env::current_exe() {
        cmd.arg0(exe);
    }
    // In `/`: a process whose working directory is in the tree would keep its filesystem
    // from being unmounted.
    cmd.arg("watch")
        .arg(root)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        ::log::debug!("agent: watcher not started: {e}");
    }
}

/// Keeps watch over ROOT until it changes or a sync takes it over ([`protocol::watch::keep`]),
/// niced: its one check of the tree when it starts yields to the user's jobs.
fn watch(root: Option<PathBuf>) -> i32 {
    let Some(root) = root.filter(|r| r.is_absolute()) else {
        eprintln!("mtr-agent: watch needs an absolute ROOT");
        return 2;
    };
    // SAFETY: prctl and setpriority with plain arguments, on this process only.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"mtr-agent-watch".as_ptr());
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    // Why it ended matters to no one: the next sync checks the tree if it is not watched.
    // SAFETY: mi_collect only returns this thread's freed memory to the system.
    let settled = || unsafe { libmimalloc_sys::mi_collect(true) };
    let _ = protocol::watch::keep(&root, protocol::watch::IDLE, &settled);
    0
}

/// Greets, then serves one download as its source. `base` is the private directory the agent
/// is installed under (`BASE/agent/...`, chosen by mtr's launch script); without it, the
/// user's cache directory.
fn send(base: Option<PathBuf>) -> i32 {
    let base = base.or_else(|| {
        let xdg = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
        xdg.or(home).map(|c| c.join("mtr"))
    });
    let Some(base) = base else {
        eprintln!("mtr-agent: no cache directory: pass BASE or set HOME");
        return 2;
    };
    // SAFETY: fds 0 and 1 are open for the life of the process and used only here.
    let stdin = unsafe { File::from_raw_fd(0) };
    let mut stdout = unsafe { File::from_raw_fd(1) };
    if stdout.write_all(protocol::wire::MAGIC).is_err() {
        return 1;
    }
    match protocol::get::serve(stdin, stdout, VERSION, &base.join("send")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mtr-agent: {e}");
            1
        }
    }
}

/// Greets on stdout, then on stderr too (mtr drops what the login shell and the launch script
/// wrote there before it), and supervises the command; stdout is the command's from then on.
fn run() -> i32 {
    if std::io::stdout()
        .write_all(protocol::wire::MAGIC)
        .and_then(|()| std::io::stdout().flush())
        .is_err()
    {
        return run::FAILURE;
    }
    let _ = std::io::stderr().write_all(protocol::wire::MAGIC);
    // Orphans of the command become ours, so the agent can reap them while it cleans up.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // SAFETY: fd 0 is open for the life of the process and read only by the supervisor.
    let stdin = unsafe { File::from_raw_fd(0) };
    run::supervise(stdin, run::Config::from_env())
}
