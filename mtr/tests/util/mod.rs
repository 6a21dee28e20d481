//! The harness for mtr's end-to-end tests: a real sshd with a throwaway user (testkit), a temp
//! project with its `.mtr/config.yaml`, a private HOME for the mtr process, and a command
//! builder that runs the `mtr` binary there.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use testkit::sshd::{LocalHome, Server};

/// A project synced to a server.
pub struct Project {
    pub server: Server,
    pub home: LocalHome,
    pub dir: tempfile::TempDir,
    /// Remote directory, relative to the remote user's home.
    pub remote_rel: String,
}

impl Project {
    /// A project whose config points at a fresh sshd, with the host key trusted.
    pub fn new() -> Project {
        Project::with_server(Server::start())
    }

    pub fn with_server(server: Server) -> Project {
        let home = LocalHome::for_server(&server);
        let dir = tempfile::Builder::new()
            .prefix("mtr-proj-")
            .tempdir()
            .unwrap();
        let p = Project {
            server,
            home,
            dir,
            remote_rel: "work/proj".into(),
        };
        p.write_config("");
        p
    }

    /// Local project root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Remote project root, absolute.
    pub fn remote(&self) -> PathBuf {
        self.server.remote_path(&self.remote_rel)
    }

    /// Write `.mtr/config.yaml` for the server, with `extra` lines added to its entry.
    pub fn write_config(&self, extra: &str) {
        let cfg = format!(
            "servers:\n  test:\n    host: {}\n    port: {}\n    user: {}\n    key_filename: {}\n    remote_dir: {}\n{extra}",
            self.server.host(),
            self.server.port(),
            self.server.user(),
            self.home.key().display(),
            self.remote().display(),
        );
        fs::create_dir_all(self.root().join(".mtr")).unwrap();
        fs::write(self.root().join(".mtr/config.yaml"), cfg).unwrap();
    }

    /// Write a local file (creating parents).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        testkit::gen::write_file(&self.root().join(rel), contents);
    }

    /// `mtr` run from the project root with the private HOME, in batch mode.
    pub fn mtr(&self) -> Command {
        let mut c = Command::cargo_bin("mtr").unwrap();
        c.current_dir(self.root())
            .env("HOME", self.home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SSH_AUTH_SOCK")
            .timeout(std::time::Duration::from_secs(120));
        c
    }

    /// `mtr --no-tty -v --sync-only`, which must succeed; returns its stderr.
    pub fn sync(&self) -> String {
        self.sync_at("-v")
    }

    /// [`Project::sync`] with `-vv`: its stderr is the debug log of both sides.
    pub fn sync_debug(&self) -> String {
        self.sync_at("-vv")
    }

    fn sync_at(&self, verbosity: &str) -> String {
        let out = self
            .mtr()
            .args(["--no-tty", verbosity, "--sync-only"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "mtr --sync-only failed ({:?}):\n{stderr}\nsshd log:\n{}",
            out.status,
            self.server.log()
        );
        assert!(
            out.stdout.is_empty(),
            "batch sync printed on stdout: {:?}",
            out.stdout
        );
        stderr
    }

    /// Assert the remote tree equals the local one (mtr's own dirs aside).
    pub fn assert_synced(&self) {
        if let Err(diff) =
            testkit::gen::tree_equal(self.root(), &self.remote(), &[".mtr", ".mtr-sync"])
        {
            panic!("remote tree differs from local:\n{diff}");
        }
    }
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// [`names`], or none when `dir` does not exist.
pub fn names_if_any(dir: &Path) -> Vec<String> {
    if dir.exists() {
        names(dir)
    } else {
        Vec::new()
    }
}

/// The names in `dir` once it is empty, or after 10 s: the agent's helper removes the old
/// versions of replaced files after the session, without anyone waiting.
pub fn names_once_emptied(dir: &Path) -> Vec<String> {
    eventually(Duration::from_secs(10), || names_if_any(dir).is_empty());
    names_if_any(dir)
}

/// Whether `done` held within `timeout` (asked every 20 ms).
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits until `done` holds; fails the test after `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(eventually(timeout, done), "timed out waiting for {what}");
}

/// The bytes a sync exchanged after the handshake, from its `-v` summary ("... X on the wire
/// ..."). The summary rounds to one decimal of its unit (±50 KB in MB, ±50 MB in GB).
pub fn wire_bytes(stderr: &str) -> u64 {
    amount(stderr, "on the wire")
}

/// The amount before `what` in a summary line (`... 1.2 MB of file data received ...`).
pub fn amount(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in:\n{stderr}"));
    let before = line.split(what).next().unwrap().trim_end();
    let mut words = before.rsplit(' ');
    let unit = words.next().unwrap();
    let num: f64 = words
        .next()
        .unwrap()
        .trim_start_matches('(')
        .parse()
        .unwrap();
    let mult = match unit {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => panic!("unit {u} in {line}"),
    };
    (num * mult) as u64
}

/// Whether a remote command line (`/proc/PID/cmdline`, space-joined) is `mtr-agent` running
/// `subcommand` (`serve`, `watch`, ...).
pub fn runs_agent(cmd: &str, subcommand: &str) -> bool {
    let mut args = cmd.split(' ');
    args.next().is_some_and(|a| a.ends_with("/mtr-agent")) && args.next() == Some(subcommand)
}
