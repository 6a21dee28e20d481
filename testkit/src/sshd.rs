//! A real OpenSSH server for one test: `/usr/sbin/sshd` on `127.0.0.1:<free port>` with its own
//! config, host key and temp dir, serving a fresh unix account that holds the matching client
//! key in its `authorized_keys`. Everything (sshd, its sessions, the account's processes, the
//! account, the temp dir) goes away when the [`Server`] is dropped, so tests run in parallel.
//!
//! Needs root (to create accounts and run sshd); fails, never skips, without it or without sshd.
//!
//! A server can also listen on another address, started through a command prefix: e.g. in a
//! network namespace, `Server::builder().listen(addr).command_prefix(["ip", "netns", "exec",
//! "ns1"])`, for a "remote host" behind a link of its own (the benchmarks shape one with `tc`).
//!
//! ```no_run
//! use mtr_testkit::sshd::{LocalHome, Server};
//!
//! let server = Server::start();
//! let home = LocalHome::for_server(&server);
//! let out = home.ssh(&server).arg("echo hi").output().unwrap();
//! assert_eq!(out.stdout, b"hi\n", "sshd log:\n{}", server.log());
//! assert_eq!(server.run_as_user_ok("whoami").trim(), server.user());
//! ```

mod home;
mod user;

pub use home::LocalHome;

use std::ffi::OsString;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::gen::set_mode;
use user::User;

const SSHD: &str = "/usr/sbin/sshd";
const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Generous: the CI machine has 2 shared cores.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`Server`]; `Server::builder().password("pw").start()`.
#[derive(Clone, Debug)]
pub struct Builder {
    password: Option<String>,
    config: Vec<String>,
    bashrc: String,
    shell: PathBuf,
    listen: IpAddr,
    prefix: Vec<OsString>,
}

impl Builder {
    /// Gives the account this password and turns `PasswordAuthentication` on (off by default).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Adds an sshd_config line. sshd keeps the first value it reads for a keyword, so these go
    /// before the harness's defaults and override them; a `Match` line and all lines after it go
    /// at the end. Keep `LogLevel` at INFO or above: start-up waits for "Server listening".
    pub fn config(mut self, line: &str) -> Self {
        self.config.push(line.to_owned());
        self
    }

    /// Shell code put at the top of the account's `~/.bashrc`, before Debian's "not interactive:
    /// return", so it runs for `ssh host cmd` too: `.bashrc("echo Welcome to the cluster")`
    /// makes a chatty login that writes to stdout before any command's output.
    pub fn bashrc(mut self, code: &str) -> Self {
        self.bashrc.push_str(code);
        self.bashrc.push('\n');
        self
    }

    /// The account's login shell (default `/bin/bash`), e.g. `/bin/sh` or `/usr/bin/fish`.
    pub fn shell(mut self, path: impl Into<PathBuf>) -> Self {
        self.shell = path.into();
        self
    }

    /// The address sshd listens on (default 127.0.0.1), and the host clients connect to. It must
    /// exist where sshd runs (see [`Builder::command_prefix`]) and be reachable from here.
    pub fn listen(mut self, addr: IpAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Runs sshd as `PREFIX... /usr/sbin/sshd -D ...`, e.g. `["ip", "netns", "exec", "ns1"]` to
    /// start it in a network namespace. The prefix must exec sshd in place (as `ip netns exec`
    /// does), not fork it: dropping the server kills the process it started.
    pub fn command_prefix<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    pub fn start(self) -> Server {
        Server::start_with(self)
    }
}

/// A running sshd and its account. Fields drop in order: sshd, then the account, then the dir.
pub struct Server {
    sshd: Sshd,
    user: User,
    port: u16,
    host: String,
    password: Option<String>,
    host_key: String,
    dir: tempfile::TempDir,
}

impl Server {
    /// A server with public key auth only and default options.
    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn builder() -> Builder {
        Builder {
            password: None,
            config: Vec::new(),
            bashrc: String::new(),
            shell: PathBuf::from("/bin/bash"),
            listen: HOST,
            prefix: Vec::new(),
        }
    }

    fn start_with(opts: Builder) -> Server {
        preflight();
        user::sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix("mtr-sshd-")
            .tempdir()
            .expect("temp dir");
        let base = dir.path();
        set_mode(base, 0o755); // the account must reach its home inside
        fs::write(base.join(user::OWNER_FILE), std::process::id().to_string()).unwrap();

        let user = User::create(&base.join("home"), &opts.shell);
        // A password even for key-only servers: sshd without PAM refuses locked ("!") accounts.
        let password = opts.password.clone();
        let random = || format!("{:x}", random_u64());
        user.set_password(&password.clone().unwrap_or_else(random));
        if !opts.bashrc.is_empty() {
            let rc = user.home.join(".bashrc");
            let old = fs::read_to_string(&rc).unwrap_or_default();
            fs::write(&rc, format!("{}{old}", opts.bashrc)).unwrap();
            user.chown(&rc);
        }

        keygen(&base.join("host_key"), "mtr-test-host");
        keygen(&base.join("client_key"), "mtr-test-client");
        let ssh_dir = user.home.join(".ssh");
        fs::create_dir_all(&ssh_dir).unwrap();
        let keys = ssh_dir.join("authorized_keys");
        fs::copy(base.join("client_key.pub"), &keys).unwrap();
        set_mode(&ssh_dir, 0o700);
        set_mode(&keys, 0o600);
        user.chown(&ssh_dir);
        user.chown(&keys);

        let host_key = fs::read_to_string(base.join("host_key.pub")).unwrap();
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let (sshd, port) = Sshd::spawn(base, &user.name, &opts);
        Server {
            sshd,
            user,
            port,
            host: opts.listen.to_string(),
            password,
            host_key,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address sshd listens on: `127.0.0.1` unless built with [`Builder::listen`].
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn user(&self) -> &str {
        &self.user.name
    }

    /// The account's home on the "remote" side.
    pub fn home(&self) -> &Path {
        &self.user.home
    }

    /// `home()/rel`: where a file synced to `~/rel` lands.
    pub fn remote_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.user.home.join(rel)
    }

    /// The private key the account accepts (its `.pub` sits beside it). Owned by root, 0600.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The password, when built with [`Builder::password`].
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`, a known_hosts line for this server's host key.
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.host, self.port, self.host_key)
    }

    /// sshd's log so far (`LogLevel VERBOSE` by default): put it in failing-test messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The pid of the listening sshd (tests of teardown, or killing the server mid-run).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.0.id()
    }

    /// A scratch dir owned by root that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sh -c script` as the account, in its home, directly (not through sshd).
    pub fn run_as_user(&self, script: &str) -> Output {
        self.user.run(script)
    }

    /// [`Server::run_as_user`] that panics unless the script succeeds; returns its stdout.
    pub fn run_as_user_ok(&self, script: &str) -> String {
        let out = self.user.run(script);
        assert!(
            out.status.success(),
            "as {}: {script}: {}",
            self.user.name,
            user::describe(&out)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// The account's live processes as (pid, command line), sshd's per-session ones included:
    /// to check that a remote command was started, or killed and left no orphan.
    pub fn user_processes(&self) -> Vec<(u32, String)> {
        let cmdline = |pid| fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        user::live_processes(self.user.uid)
            .into_iter()
            .map(|pid| {
                let args = String::from_utf8_lossy(&cmdline(pid)).replace('\0', " ");
                (pid, args.trim_end().to_owned())
            })
            .collect()
    }

    /// SIGKILLs every process of the account (agents, their watchers and helpers, sessions),
    /// waiting until none is alive: to start the next run from a cold server.
    pub fn kill_user_processes(&self) {
        self.user.kill_processes();
    }

    /// Creates `~/rel` (and missing parents) as the account; returns its path.
    pub fn mkdir_remote(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.remote_path(rel);
        self.run_as_user_ok(&format!("mkdir -p '{}'", path.display()));
        path
    }

    /// Writes `~/rel` (creating parents) owned by the account, as a remote job would.
    pub fn write_remote(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.remote_path(rel);
        if let Some(parent) = path.parent() {
            self.run_as_user_ok(&format!("mkdir -p '{}'", parent.display()));
        }
        fs::write(&path, contents).unwrap();
        self.user.chown(&path);
        path
    }
}

/// The sshd child; dropping it kills sshd and the per-connection processes it forked.
struct Sshd(Child);

impl Sshd {
    /// Starts sshd on a free port, retrying when another process takes the port first.
    fn spawn(base: &Path, user: &str, opts: &Builder) -> (Sshd, u16) {
        let conf = base.join("sshd_config");
        let log = base.join("sshd.log");
        for _ in 0..20 {
            let port = free_port();
            fs::write(&conf, sshd_config(base, port, user, opts)).unwrap();
            let mut cmd = match opts.prefix.split_first() {
                Some((program, args)) => {
                    let mut cmd = Command::new(program);
                    cmd.args(args).arg(SSHD);
                    cmd
                }
                None => Command::new(SSHD),
            };
            let child = cmd
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
            let mut sshd = Sshd(child);
            if sshd.wait_ready(opts.listen, port, &log) {
                return (sshd, port);
            }
        }
        panic!("sshd: no free port after 20 tries");
    }

    /// Waits for "Server listening" in the log and an SSH banner on the port; false if the port
    /// was taken; panics with the log if sshd fails otherwise.
    fn wait_ready(&mut self, addr: IpAddr, port: u16, log: &Path) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        let listening = format!("Server listening on {addr} port {port}");
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(status) = self.0.try_wait().unwrap() {
                if text.contains("Address already in use") {
                    return false;
                }
                panic!("sshd exited ({status}) before listening; its log:\n{text}");
            }
            if text.contains(&listening) && banner(addr, port) {
                return true;
            }
            if Instant::now() > deadline {
                panic!("sshd not ready on port {port} after {START_TIMEOUT:?}; its log:\n{text}");
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let pid = self.0.id();
        for child in children_of(pid) {
            unsafe { libc::kill(child as i32, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sshd_config(base: &Path, port: u16, user: &str, opts: &Builder) -> String {
    let split = opts
        .config
        .iter()
        .position(|l| l.trim_start().to_ascii_lowercase().starts_with("match "))
        .unwrap_or(opts.config.len());
    let (head, tail) = opts.config.split_at(split);
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut lines: Vec<String> = head.to_vec();
    lines.extend([
        format!("ListenAddress {}", opts.listen),
        format!("Port {port}"),
        format!("HostKey {}", base.join("host_key").display()),
        format!("PidFile {}", base.join("sshd.pid").display()),
        "AuthorizedKeysFile .ssh/authorized_keys".into(),
        format!("AllowUsers {user}"),
        "StrictModes no".into(),
        "UsePAM no".into(),
        "PubkeyAuthentication yes".into(),
        format!("PasswordAuthentication {}", yes_no(opts.password.is_some())),
        "KbdInteractiveAuthentication no".into(),
        "PermitRootLogin no".into(),
        "LogLevel VERBOSE".into(),
        "MaxStartups 100".into(),
        "Subsystem sftp internal-sftp".into(),
    ]);
    if sshd_version() >= (9, 8) {
        lines.push("PerSourcePenalties no".into());
    }
    lines.extend(tail.iter().cloned());
    lines.join("\n") + "\n"
}

fn preflight() {
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the e2e tests need root to create users and run sshd: \
             run them as root, e.g. `sudo scripts/test.sh`"
        );
    }
    if !Path::new(SSHD).exists() {
        panic!("sshd not found: run scripts/test.sh or apt-get install openssh-server");
    }
    // Privilege separation dir, normally made by the service unit.
    fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
}

/// sshd's (major, minor) version, from `sshd -V` (or the usage text of versions without `-V`).
fn sshd_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new(SSHD).arg("-V").output().expect("sshd -V");
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        let parse = || {
            let v = text.split("OpenSSH_").nth(1)?;
            let mut nums = v.split(|c: char| !c.is_ascii_digit());
            Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
        };
        parse().unwrap_or((0, 0))
    })
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (package openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {}", user::describe(&out));
}

/// A port free on loopback here: free in a fresh network namespace too.
fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// True when the port answers with an SSH identification line.
fn banner(addr: IpAddr, port: u16) -> bool {
    let Ok(stream) = TcpStream::connect((addr, port)) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-")
}

/// Pids whose parent is `pid` (sshd's per-connection processes).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

/// A random u64 from std's randomly seeded hasher (no `rand` crate).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()) ^ u128::from(std::process::id()));
    h.finish()
}
