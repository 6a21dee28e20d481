//! A `password` from the config never leaves mtr except to the SSH server: not on stdout or
//! stderr at the highest verbosity, not in `--log-file`, not in `--dry-run` output, not in
//! error messages, and not in the argv of any process mtr starts (checked while they run, for
//! the rsync engine's `ssh`/`sshpass`, through `/proc`). Every engine, with every mode of
//! output.

mod util;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::sshd::Server;
use util::Project;

const SECRET: &str = "Pa55-w0rd/with spaces'n\"quotes";

/// A project whose only credential is `password` (no key), for `engine`.
fn project(engine: &str, password: &str) -> Project {
    let server = Server::builder().password(SECRET).start();
    let p = Project::with_server(server);
    fs::remove_file(p.home.key()).unwrap();
    let quoted = password.replace('\\', "\\\\").replace('"', "\\\"");
    let cfg = format!(
        "servers:\n  test:\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    password: \"{quoted}\"\n    remote_dir: {}\n    sync: {engine}\n",
        p.server.port(),
        p.server.user(),
        p.remote().display()
    );
    fs::write(p.root().join(".mtr/config.yaml"), cfg).unwrap();
    fs::set_permissions(
        p.root().join(".mtr/config.yaml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    p.write("train.py", "print('hi')\n");
    p
}

fn assert_clean(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for needle in [SECRET, "Pa55-w0rd", "wrong-Pa55"] {
        assert!(
            !text.contains(needle),
            "{what} contains the password ({needle:?}):\n{text}"
        );
    }
}

/// Runs mtr with `args` at `-vv` with a log file, checking every process mtr starts (and
/// their children) while it runs: none has the password in its argv.
fn run_watched(p: &Project, args: &[&str]) -> std::process::Output {
    let log = p.root().join("mtr.log");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("mtr"))
        .args(["--no-tty", "-vv", "--log-file"])
        .arg(&log)
        .args(args)
        .current_dir(p.root())
        .env("HOME", p.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while child.try_wait().unwrap().is_none() {
        for (proc_pid, cmdline) in descendants(pid) {
            seen += 1;
            assert_clean(&format!("argv of process {proc_pid}"), &cmdline);
        }
        assert!(Instant::now() < deadline, "mtr {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(seen > 0, "the watch never saw mtr itself");
    assert_clean("stdout", &out.stdout);
    assert_clean("stderr", &out.stderr);
    assert_clean("the log file", &fs::read(&log).unwrap_or_default());
    out
}

/// `root` and every process below it, with their argv (NUL-separated).
fn descendants(root: u32) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    let all: Vec<(u32, u32)> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    while let Some(pid) = stack.pop() {
        if let Ok(cmdline) = fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")) {
            out.push((pid, cmdline));
        }
        stack.extend(all.iter().filter(|(_, pp)| *pp == pid).map(|(p, _)| *p));
    }
    out
}

#[test]
fn the_password_never_shows_in_output_logs_or_argv() {
    for engine in ["agent", "rsync", "sftp"] {
        let p = project(engine, SECRET);
        let out = run_watched(&p, &["--sync-only"]);
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_watched(&p, &["--dry-run", "python3", "train.py"]);
        assert!(out.status.success(), "{engine} --dry-run");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("would run on"),
            "{engine}: the dry run printed its plan"
        );
        let out = run_watched(&p, &["sh", "-c", "echo ran"]);
        assert_eq!(out.status.code(), Some(0), "{engine}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    }
}

#[test]
fn a_wrong_password_is_not_in_the_error() {
    for engine in ["agent", "rsync", "sftp"] {
        let p = project(engine, "wrong-Pa55 word");
        let out = run_watched(&p, &["--sync-only"]);
        assert_eq!(out.status.code(), Some(255), "{engine}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.to_lowercase().contains("authentication") || err.contains("password"),
            "{engine}: the error says what failed: {err}"
        );
    }
}
