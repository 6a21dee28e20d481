//! Throwaway unix accounts for one test each: created with `useradd`, removed (processes, home,
//! group) with `userdel` when dropped. `useradd`/`userdel`/`chpasswd` lock `/etc/passwd` and fail
//! when another one holds the lock, so calls are serialized in-process and retried on lock errors
//! (another process may hold it too). Accounts left by a killed test run are swept on first use.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Every test account's name starts with this; the rest is random hex.
pub(super) const PREFIX: &str = "mtrt";
/// Written in a server's temp dir (the parent of the account's home): the test process's pid.
pub(super) const OWNER_FILE: &str = "owner.pid";

static USERDB: Mutex<()> = Mutex::new(());

pub(super) struct User {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl User {
    /// Creates a fresh account whose home (made from /etc/skel) is `home` and login shell `shell`.
    pub fn create(home: &Path, shell: &Path) -> User {
        for _ in 0..10 {
            let name = format!("{PREFIX}{:08x}", super::random_u64() as u32);
            let home_arg = home.to_str().expect("temp dir path is UTF-8");
            let shell_arg = shell.to_str().expect("shell path is UTF-8");
            let out = userdb(
                Command::new("useradd").args(["-m", "-d", home_arg, "-s", shell_arg, &name]),
                None,
            );
            if out.status.success() {
                let uid = fs::metadata(home).expect("useradd -m made the home").uid();
                return User {
                    name,
                    uid,
                    home: home.to_owned(),
                };
            }
            if out.status.code() != Some(9) {
                // 9: name already in use, try another one
                panic!("useradd {name} failed: {}", describe(&out));
            }
        }
        panic!("useradd: no free random user name after 10 tries");
    }

    pub fn set_password(&self, password: &str) {
        let line = format!("{}:{password}\n", self.name);
        let out = userdb(&mut Command::new("chpasswd"), Some(&line));
        assert!(
            out.status.success(),
            "chpasswd {}: {}",
            self.name,
            describe(&out)
        );
    }

    /// Makes the account own `path` (not recursive).
    pub fn chown(&self, path: &Path) {
        let gid = fs::metadata(&self.home).expect("home exists").gid();
        std::os::unix::fs::chown(path, Some(self.uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }

    /// Runs `sh -c script` as this account, in its home, without going through sshd.
    pub fn run(&self, script: &str) -> Output {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "sh", "-c", script])
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .output()
            .expect("runuser")
    }

    /// SIGKILLs the account's processes until none is left alive (zombies, which pid 1 reaps
    /// in its own time, don't count).
    pub(super) fn kill_processes(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = live_processes(self.uid);
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            sleep(Duration::from_millis(10));
        }
    }
}

/// Pids of the processes, zombies excepted, whose real or effective uid is `uid`.
pub fn live_processes(uid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uid = uid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("");
                line.split_whitespace().skip(1).take(2).collect::<Vec<_>>()
            };
            let zombie = field("State:").first() == Some(&"Z");
            !zombie && field("Uid:").contains(&uid.as_str())
        })
        .collect()
}

impl Drop for User {
    fn drop(&mut self) {
        self.kill_processes();
        let out = userdb(Command::new("userdel").args(["-r", "-f", &self.name]), None);
        // 12: could not remove the home dir (e.g. already gone): the temp dir goes anyway.
        if !out.status.success() && out.status.code() != Some(12) {
            eprintln!("warning: userdel {} failed: {}", self.name, describe(&out));
        }
    }
}

/// Runs a shadow-utils command with the in-process lock held, retrying while another process
/// holds the `/etc/passwd` lock.
fn userdb(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let _guard = USERDB.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() > deadline {
            return out;
        }
        sleep(Duration::from_millis(50));
    }
}

pub(super) fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Once per process: removes test accounts (and their sshd and temp dir) whose owning test
/// process is gone, e.g. after a test run was killed before its `Drop`s ran.
pub(super) fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in passwd.lines().filter(|l| l.starts_with(PREFIX)) {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(uid), Some(home)) = (
                fields.first(),
                fields.get(2).and_then(|u| u.parse().ok()),
                fields.get(5),
            ) else {
                continue;
            };
            let Some(base) = Path::new(home).parent() else {
                continue;
            };
            if is_stale(base) {
                kill_sshd_of(base);
                drop(User {
                    name: name.to_string(),
                    uid,
                    home: PathBuf::from(home),
                });
                let _ = fs::remove_dir_all(base);
            }
        }
    });
}

/// A server's temp dir is stale when it is gone, or when the test process that wrote its owner
/// file is gone.
fn is_stale(base: &Path) -> bool {
    if !base.exists() {
        return true;
    }
    match fs::read_to_string(base.join(OWNER_FILE)).map(|s| s.trim().parse::<u32>()) {
        Ok(Ok(pid)) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        _ => false, // not made by this harness: leave it alone
    }
}

/// Kills the sshd whose pid file is in `base`, if that pid still runs with a config under `base`.
fn kill_sshd_of(base: &Path) {
    let Ok(pid) = fs::read_to_string(base.join("sshd.pid")) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(&*base.to_string_lossy()) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
