//! One SSH connection to the server (libssh2 through the `ssh2` crate): TCP connect with a
//! timeout, the host key checked against OpenSSH's `known_hosts` the way `ssh` does it
//! ([`known_hosts`]), authentication (key file, ssh-agent, default keys, password,
//! keyboard-interactive), then exec channels.
//!
//! Nothing here writes to stdout. Prompts (unknown host, passphrase, password) go to the
//! terminal (`/dev/tty`), and only when [`SshOptions::interactive`] allows it.

mod known_hosts;

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ssh2::{Channel, KeyboardInteractivePrompt, MethodType, Prompt, Session};

pub(crate) use known_hosts::known_hosts_name;
use known_hosts::{
    fingerprint, hostkey_prefs, key_type, key_type_label, known_hosts_line, known_types, lookup,
    parse_known_hosts, HostStatus, KnownLine,
};

/// How long authentication may take once connected (agents, slow PAM stacks).
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::config::HostKeyPolicy;

/// Where and how to connect.
#[derive(Clone)]
pub struct SshOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key to try first; when unset, the default keys `~/.ssh/id_{ed25519,ecdsa,rsa}`
    /// are tried after the agent.
    pub key_filename: Option<PathBuf>,
    /// Password for password and keyboard-interactive authentication.
    pub password: Option<String>,
    /// Host key checking. `Yes`: an unknown host is refused, unless the user accepts its key
    /// on the terminal (only when `interactive`), which records it as `ssh` does. `AcceptNew`:
    /// an unknown host's key is recorded. `No`: any key is accepted, even a changed one (with a
    /// warning), and nothing is recorded. A revoked key is always refused, and a changed key
    /// is refused unless `No`.
    pub host_key_policy: HostKeyPolicy,
    /// Limit for the TCP connect (each address) and for the SSH handshake.
    pub connect_timeout: Duration,
    /// May prompt on the terminal (unknown host key, passphrase, password).
    pub interactive: bool,
    /// The known_hosts file to check and to add keys to (normally `~/.ssh/known_hosts`).
    pub known_hosts: PathBuf,
}

impl fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("key_filename", &self.key_filename)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("host_key_policy", &self.host_key_policy)
            .field("connect_timeout", &self.connect_timeout)
            .field("interactive", &self.interactive)
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

/// What a command run with [`Ssh::run`] did.
#[derive(Debug)]
pub struct Output {
    /// Its exit status; 128+N when signal N killed it.
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// An authenticated SSH connection, in blocking mode.
pub struct Ssh {
    session: Session,
    display: String,
    /// What the socket had carried when authentication ended (see [`Traffic`]).
    at_auth: Option<Traffic>,
}

/// TCP payload bytes a socket carried, from the kernel (`TCP_INFO`): SSH's own framing,
/// padding and MACs included, TCP/IP headers not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
}

impl Traffic {
    /// What `fd`, a TCP socket, has carried so far; `None` for anything else.
    fn of(fd: BorrowedFd<'_>) -> Option<Traffic> {
        // SAFETY: an all-zero tcp_info is a valid value of a plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large; an
        // older kernel fills a prefix and leaves the rest zero.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let has_bytes_sent = len as usize
            >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_sent) + size_of::<u64>();
        (rc == 0).then(|| Traffic {
            // bytes_sent (Linux 4.19) counts retransmissions too; before it, bytes_acked,
            // which counts the SYN as one byte.
            sent: if has_bytes_sent {
                info.tcpi_bytes_sent
            } else {
                info.tcpi_bytes_acked.saturating_sub(1)
            },
            received: info.tcpi_bytes_received,
        })
    }
}

impl Drop for Ssh {
    /// With `-vv`, says what the connection carried after the handshake and authentication:
    /// the cost of the work itself (a no-op sync's round trips), apart from connecting.
    fn drop(&mut self) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        if let (Some(auth), Some(now)) = (self.at_auth, Traffic::of(self.socket())) {
            log::debug!(
                "{}: {} B sent, {} B received after authentication ({} B / {} B before: \
                 TCP payload)",
                self.display,
                now.sent.saturating_sub(auth.sent),
                now.received.saturating_sub(auth.received),
                auth.sent,
                auth.received
            );
        }
    }
}

impl Ssh {
    /// Connects, checks the host key and authenticates. Errors name `user@host:port` and say
    /// what to do.
    pub fn connect(opts: &SshOptions) -> Result<Ssh> {
        let display = format!("{}@{}:{}", opts.user, opts.host, opts.port);
        let tcp = tcp_connect(opts, &display)?;
        log::debug!("{display}: TCP connected");
        let mut session =
            Session::new().with_context(|| format!("cannot start an SSH session to {display}"))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(millis(opts.connect_timeout));

        let name = known_hosts_name(&opts.host, opts.port);
        let known = read_known_hosts(&opts.known_hosts)?;
        let supported = session
            .supported_algs(MethodType::HostKey)
            .unwrap_or_default();
        let prefs = hostkey_prefs(&known_types(&known, &name), &supported);
        if let Err(e) = session.method_pref(MethodType::HostKey, &prefs) {
            log::debug!("host key preference {prefs:?} refused: {e}");
        }
        prefer_fast_ciphers(&session);
        session.handshake().with_context(|| {
            format!("SSH handshake with {display} failed (is it an SSH server on that port?)")
        })?;

        log::debug!(
            "{display}: cipher {} / {}, kex {}",
            session.methods(MethodType::CryptCs).unwrap_or("?"),
            session.methods(MethodType::CryptSc).unwrap_or("?"),
            session.methods(MethodType::Kex).unwrap_or("?"),
        );
        verify_host_key(&session, opts, &name, &known)?;
        session.set_timeout(millis(AUTH_TIMEOUT));
        authenticate(&session, opts, &display)?;
        session.set_timeout(0);
        log::debug!("{display}: authenticated");
        let mut ssh = Ssh {
            session,
            display,
            at_auth: None,
        };
        ssh.at_auth = Traffic::of(ssh.socket());
        Ok(ssh)
    }

    /// `user@host:port`, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The underlying session (for PTY requests, SFTP, keepalives).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// libssh2's report when the connection itself failed (see [`lost`]); `None` while it
    /// stands.
    pub fn lost(&self) -> Option<String> {
        lost(&self.session)
    }

    /// The connection's TCP socket, for polling while the session is non-blocking.
    pub fn socket(&self) -> BorrowedFd<'_> {
        // SAFETY: the session owns the stream it was given in `connect` and keeps it open for
        // as long as it lives, which outlives the borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.session.as_raw_fd()) }
    }

    /// Opens a session channel without starting anything, so the caller can request a PTY or
    /// set environment variables before `exec`.
    ///
    /// OpenSSH's sshd sends a message of its own right after authentication
    /// (`hostkeys-00@openssh.com`) and, Nagle being on for it, holds the channel's confirmation
    /// until that message is acknowledged; Linux delays that ACK by 40 ms. So the channel is
    /// opened without blocking, and whatever arrives meanwhile is acknowledged at once.
    pub fn channel(&self) -> Result<Channel> {
        const EAGAIN: i32 = -37;
        let timeout = match self.session.timeout() {
            0 => None,
            ms => Some(Duration::from_millis(ms.into())),
        };
        let started = std::time::Instant::now();
        self.session.set_blocking(false);
        let opened = loop {
            match self.session.channel_session() {
                Err(e) if e.code() == ssh2::ErrorCode::Session(EAGAIN) => {
                    let left = match timeout {
                        Some(t) if started.elapsed() >= t => {
                            break Err(anyhow!(
                                "{} did not open a channel within {} s",
                                self.display,
                                t.as_secs()
                            ))
                        }
                        Some(t) => (t - started.elapsed()).as_millis().min(1000) as i32,
                        None => 1000,
                    };
                    let mut pfd = libc::pollfd {
                        fd: self.session.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, left.max(1)) };
                    ack_now(self.socket());
                }
                other => break other.map_err(anyhow::Error::new),
            }
        };
        self.session.set_blocking(true);
        opened.with_context(|| format!("cannot open an SSH channel to {}", self.display))
    }

    /// Starts `command` (interpreted by the user's login shell) on a new channel.
    pub fn exec(&self, command: &str) -> Result<Channel> {
        let mut channel = self.channel()?;
        channel
            .exec(command)
            .with_context(|| format!("cannot start a command on {}", self.display))?;
        Ok(channel)
    }

    /// Runs `command` with `stdin` as its input and collects its output. Meant for short
    /// commands: stdout is read to its end before stderr, so a command that writes more than
    /// the channel window (2 MiB) to stderr before finishing its stdout would stall.
    pub fn run(&self, command: &str, stdin: &[u8]) -> Result<Output> {
        let ctx = || format!("running a command on {}", self.display);
        let mut channel = self.exec(command)?;
        channel.write_all(stdin).with_context(ctx)?;
        channel.send_eof().with_context(ctx)?;
        let mut stdout = Vec::new();
        channel.read_to_end(&mut stdout).with_context(ctx)?;
        let mut stderr = Vec::new();
        channel
            .stderr()
            .read_to_end(&mut stderr)
            .with_context(ctx)?;
        channel.wait_close().with_context(ctx)?;
        let status = match channel.exit_signal().ok().and_then(|s| s.exit_signal) {
            Some(signal) => 128 + signal_number(&signal),
            None => channel.exit_status().with_context(ctx)?,
        };
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// The number of a signal as SSH names it (`KILL`), for `128+N` statuses; 127 if unknown.
pub(crate) fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 127,
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// Acknowledges at once what `fd` has received and not yet acknowledged (`TCP_QUICKACK`:
/// a pending delayed ACK is sent now).
fn ack_now(fd: BorrowedFd<'_>) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a pointer to an int of the size given;
    // failure (not a TCP socket) changes nothing.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Resolves the host and tries each address in turn.
fn tcp_connect(opts: &SshOptions, display: &str) -> Result<TcpStream> {
    let addrs: Vec<_> = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve host {:?} (for {display})", opts.host))?
        .collect();
    let mut errors = Vec::new();
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, opts.connect_timeout) {
            Ok(tcp) => {
                tcp.set_nodelay(true).ok();
                return Ok(tcp);
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    bail!(
        "cannot connect to {display} ({}); check that the server is up and that host and port \
         are right",
        if errors.is_empty() {
            "the name resolved to no address".to_string()
        } else {
            errors.join("; ")
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Host key check (the file's logic is in `known_hosts`)
// ---------------------------------------------------------------------------------------------

fn read_known_hosts(path: &Path) -> Result<Vec<KnownLine>> {
    match fs::read(path) {
        Ok(bytes) => Ok(parse_known_hosts(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn verify_host_key(
    session: &Session,
    opts: &SshOptions,
    name: &str,
    known: &[KnownLine],
) -> Result<()> {
    let (key, _) = session
        .host_key()
        .ok_or_else(|| anyhow!("{name} sent no host key"))?;
    let key = key.to_vec();
    let label = key_type_label(key_type(&key).unwrap_or("unknown"));
    let fp = fingerprint(&key);
    let file = tilde(&opts.known_hosts);
    match lookup(known, name, &key) {
        HostStatus::Known { line } => {
            log::debug!("host key of {name} ({label} {fp}) matches {file}:{line}");
            Ok(())
        }
        HostStatus::Revoked { line } => bail!(
            "the {label} host key of {name} ({fp}) is marked @revoked in {file}:{line}; \
             refusing to connect"
        ),
        HostStatus::Changed { line } if opts.host_key_policy == HostKeyPolicy::No => {
            log::warn!(
                "the {label} host key of {name} changed (now {fp}, recorded in {file}:{line}); \
                 accepting it because host key checking is off"
            );
            Ok(())
        }
        HostStatus::Changed { line } => bail!(
            "\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
             @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
             IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
             The {label} host key of {name} has changed. It now has the fingerprint\n\
             {fp}\n\
             and does not match the key recorded in {file}:{line}.\n\
             If the server was reinstalled and you trust the new key, remove the old one with\n\
             \x20 ssh-keygen -R '{name}' -f {file}\n\
             Host key verification failed for {}@{}:{}.",
            opts.user,
            opts.host,
            opts.port
        ),
        HostStatus::Unknown { other_types } => {
            let others = if other_types.is_empty() {
                String::new()
            } else {
                format!(
                    " (keys of another type are recorded for it: {})",
                    other_types.join(", ")
                )
            };
            let record = match opts.host_key_policy {
                HostKeyPolicy::No => false,
                HostKeyPolicy::AcceptNew => true,
                HostKeyPolicy::Yes if opts.interactive => {
                    if !confirm_host(name, &label, &fp, &others)? {
                        bail!("host key verification failed for {name}: the key was not accepted");
                    }
                    true
                }
                HostKeyPolicy::Yes => {
                    let p = if opts.port == 22 {
                        String::new()
                    } else {
                        format!("-p {} ", opts.port)
                    };
                    bail!(
                        "host key verification failed: {name} is not in {file}{others}; its \
                         {label} key has the fingerprint {fp}. Check it, then record it: connect \
                         once with `ssh {p}{}@{}`, or run `ssh-keyscan {p}{} >> {file}`",
                        opts.user,
                        opts.host,
                        opts.host
                    )
                }
            };
            if record {
                append_known_host(&opts.known_hosts, &known_hosts_line(name, &key))?;
                log::info!("permanently added {name} ({label}) to {file}");
            } else {
                log::warn!("{name} is not in {file}; accepting its {label} key {fp} unchecked");
            }
            Ok(())
        }
    }
}

/// Asks on the terminal whether to trust an unknown host key, as `ssh` does.
fn confirm_host(name: &str, label: &str, fp: &str, others: &str) -> Result<bool> {
    let Ok(tty) = OpenOptions::new().read(true).write(true).open("/dev/tty") else {
        bail!("{name} is not a known host and there is no terminal to ask about its key {fp}");
    };
    let mut out = &tty;
    let mut input = BufReader::new(&tty);
    write!(
        out,
        "The authenticity of host '{name}' can't be established{others}.\n\
         {label} key fingerprint is {fp}.\n\
         Are you sure you want to continue connecting (yes/no/[fingerprint])? "
    )?;
    loop {
        out.flush()?;
        let mut answer = String::new();
        if input.read_line(&mut answer)? == 0 {
            return Ok(false);
        }
        match answer.trim() {
            "yes" => return Ok(true),
            "no" => return Ok(false),
            a if a == fp => return Ok(true),
            _ => write!(out, "Please type 'yes', 'no' or the fingerprint: ")?,
        }
    }
}

/// Appends a line to known_hosts, creating it (0600) and its directory (0700) if needed.
fn append_known_host(path: &Path, line: &str) -> Result<()> {
    let ctx = || format!("cannot record the host key in {}", path.display());
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(ctx)?;
        }
    }
    let needs_newline = fs::read(path).is_ok_and(|b| !b.is_empty() && !b.ends_with(b"\n"));
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(ctx)?;
    if needs_newline {
        file.write_all(b"\n").with_context(ctx)?;
    }
    file.write_all(line.as_bytes()).with_context(ctx)
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// Whether a private key file needs a passphrase: OpenSSH-format keys with a cipher, legacy PEM
/// keys with `Proc-Type: 4,ENCRYPTED`, encrypted PKCS#8.
pub(crate) fn key_needs_passphrase(text: &str) -> bool {
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    if let Some(start) = text.find(BEGIN) {
        let body = &text[start + BEGIN.len()..];
        let body = &body[..body.find(END).unwrap_or(body.len())];
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let Ok(bytes) = STANDARD.decode(b64) else {
            return false;
        };
        let Some(rest) = bytes.strip_prefix(b"openssh-key-v1\0") else {
            return false;
        };
        return key_type(rest).is_some_and(|cipher| cipher != "none");
    }
    text.contains("Proc-Type: 4,ENCRYPTED") || text.contains("BEGIN ENCRYPTED PRIVATE KEY")
}

/// `~/...` for paths under the home directory, for messages.
pub(crate) fn tilde(path: &Path) -> String {
    if let Some(home) = dirs::home_dir() {
        if let Ok(rest) = path.strip_prefix(&home) {
            return format!("~/{}", rest.display());
        }
    }
    path.display().to_string()
}

/// The auth state: what was tried, for the final message.
struct Auth<'a> {
    session: &'a Session,
    opts: &'a SshOptions,
    display: &'a str,
    tried: Vec<String>,
    hints: Vec<String>,
}

fn authenticate(session: &Session, opts: &SshOptions, display: &str) -> Result<()> {
    let methods = match session.auth_methods(&opts.user) {
        Ok(m) => m.to_string(),
        Err(_) if session.authenticated() => return Ok(()),
        Err(e) => bail!("cannot start authenticating to {display}: {e}"),
    };
    let offers = |m: &str| methods.split(',').any(|x| x == m);
    let mut auth = Auth {
        session,
        opts,
        display,
        tried: Vec::new(),
        hints: Vec::new(),
    };

    if offers("publickey") {
        if let Some(key) = &opts.key_filename {
            if !key.exists() {
                bail!(
                    "the key_filename {} for {display} does not exist",
                    key.display()
                );
            }
            if auth.key(key, true)? {
                return Ok(());
            }
        }
        if auth.agent() {
            return Ok(());
        }
        if opts.key_filename.is_none() {
            if let Some(home) = dirs::home_dir() {
                for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                    let key = home.join(".ssh").join(name);
                    if key.exists() && auth.key(&key, false)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    let mut password = opts.password.clone();
    if offers("password") {
        if password.is_none() && opts.interactive {
            let prompt = format!("{}@{}'s password: ", opts.user, opts.host);
            password = rpassword::prompt_password(prompt).ok();
        }
        if let Some(pw) = &password {
            if session.userauth_password(&opts.user, pw).is_ok() && session.authenticated() {
                return Ok(());
            }
            auth.tried.push("password".into());
        }
    }
    if offers("keyboard-interactive") && (password.is_some() || opts.interactive) {
        let mut answers = Answers {
            password: password.as_deref(),
            interactive: opts.interactive,
        };
        if session
            .userauth_keyboard_interactive(&opts.user, &mut answers)
            .is_ok()
            && session.authenticated()
        {
            return Ok(());
        }
        auth.tried.push("keyboard-interactive".into());
    }
    Err(auth.failure(&methods))
}

impl Auth<'_> {
    /// Tries one private key file; `explicit` for `key_filename` (vs a default key).
    fn key(&mut self, path: &Path, explicit: bool) -> Result<bool> {
        let shown = tilde(path);
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if explicit => bail!("cannot read the key_filename {shown}: {e}"),
            Err(e) => {
                log::debug!("skipping {shown}: {e}");
                return Ok(false);
            }
        };
        if !key_needs_passphrase(&text) {
            return Ok(self.try_key_file(path, None, &shown));
        }
        if !self.opts.interactive {
            self.tried.push(format!("key {shown} (needs a passphrase)"));
            self.hints.push(format!(
                "{shown} is encrypted and mtr cannot ask for its passphrase without a terminal: \
                 load it into ssh-agent with `ssh-add {shown}`"
            ));
            return Ok(false);
        }
        for _ in 0..3 {
            let prompt = format!("Enter passphrase for key '{shown}': ");
            let Ok(passphrase) = rpassword::prompt_password(prompt) else {
                break;
            };
            match self
                .session
                .userauth_pubkey_file(&self.opts.user, None, path, Some(&passphrase))
            {
                Ok(()) if self.session.authenticated() => return Ok(true),
                // LIBSSH2_ERROR_FILE: the passphrase did not decrypt the key.
                Err(e) if e.code() == ssh2::ErrorCode::Session(-16) => {
                    tell_tty("Bad passphrase, try again.");
                    continue;
                }
                _ => break,
            }
        }
        self.tried.push(format!("key {shown}"));
        Ok(false)
    }

    fn try_key_file(&mut self, path: &Path, passphrase: Option<&str>, shown: &str) -> bool {
        match self
            .session
            .userauth_pubkey_file(&self.opts.user, None, path, passphrase)
        {
            Ok(()) if self.session.authenticated() => true,
            Ok(()) => {
                self.tried.push(format!("key {shown}"));
                false
            }
            Err(e) => {
                log::debug!("key {shown} for {}: {e}", self.display);
                if e.code() == ssh2::ErrorCode::Session(-16) {
                    self.tried
                        .push(format!("key {shown} (unreadable: {})", e.message()));
                } else {
                    self.tried.push(format!("key {shown}"));
                }
                false
            }
        }
    }

    /// Tries every identity of the running ssh-agent.
    fn agent(&mut self) -> bool {
        if std::env::var_os("SSH_AUTH_SOCK").is_none() {
            return false;
        }
        let Ok(mut agent) = self.session.agent() else {
            return false;
        };
        if let Err(e) = agent.connect() {
            self.tried
                .push(format!("agent (cannot connect: {})", e.message()));
            return false;
        }
        let identities = agent
            .list_identities()
            .and_then(|()| agent.identities())
            .unwrap_or_default();
        for id in &identities {
            if agent.userauth(&self.opts.user, id).is_ok() && self.session.authenticated() {
                agent.disconnect().ok();
                return true;
            }
        }
        agent.disconnect().ok();
        self.tried.push(format!(
            "agent ({} key{})",
            identities.len(),
            if identities.len() == 1 { "" } else { "s" }
        ));
        false
    }

    fn failure(self, methods: &str) -> anyhow::Error {
        let tried = if self.tried.is_empty() {
            // An explicit key, a running agent or a password always leave a trace.
            "nothing to try: no ssh-agent, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa, no password"
                .to_string()
        } else {
            format!("tried: {}", self.tried.join(", "))
        };
        let mut msg = format!(
            "authentication failed for {} ({tried}; the server accepts: {methods})",
            self.display
        );
        for hint in &self.hints {
            msg.push_str("; ");
            msg.push_str(hint);
        }
        msg.push_str(
            ". Add your public key to ~/.ssh/authorized_keys on the server and load it into \
             ssh-agent, or set key_filename or password for this server in .mtr/config.yaml",
        );
        anyhow!(msg)
    }
}

/// Answers keyboard-interactive prompts: password prompts with the password, others on the
/// terminal when allowed (one-time codes), else empty.
struct Answers<'a> {
    password: Option<&'a str>,
    interactive: bool,
}

impl KeyboardInteractivePrompt for Answers<'_> {
    fn prompt<'b>(
        &mut self,
        _user: &str,
        instructions: &str,
        prompts: &[Prompt<'b>],
    ) -> Vec<String> {
        if self.interactive && !instructions.is_empty() {
            tell_tty(instructions);
        }
        prompts
            .iter()
            .map(|p| {
                let is_password = p.text.to_ascii_lowercase().contains("password");
                match (is_password, self.password) {
                    (true, Some(pw)) => pw.to_string(),
                    _ if self.interactive => ask_tty(&p.text, p.echo).unwrap_or_default(),
                    _ => String::new(),
                }
            })
            .collect()
    }
}

/// Writes a line to the terminal (stderr when there is none).
fn tell_tty(line: &str) {
    match OpenOptions::new().write(true).open("/dev/tty") {
        Ok(mut tty) => {
            let _ = writeln!(tty, "{line}");
        }
        Err(_) => eprintln!("{line}"),
    }
}

fn ask_tty(prompt: &str, echo: bool) -> std::io::Result<String> {
    if !echo {
        return rpassword::prompt_password(prompt);
    }
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    (&tty).write_all(prompt.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&tty).read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Ciphers in order of speed on current CPUs: AES-GCM runs on the AES instructions through
/// OpenSSL (several GB/s), while libssh2's default first choice, its own portable
/// chacha20-poly1305, costs a core for a few hundred MB/s.
const CIPHER_PREFS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
];

fn prefer_fast_ciphers(session: &Session) {
    for method in [MethodType::CryptCs, MethodType::CryptSc] {
        let supported = session.supported_algs(method).unwrap_or_default();
        let mut prefs: Vec<&str> = CIPHER_PREFS
            .iter()
            .copied()
            .filter(|c| supported.contains(c))
            .collect();
        let rest: Vec<&str> = supported
            .iter()
            .copied()
            .filter(|c| !CIPHER_PREFS.contains(c))
            .collect();
        prefs.extend(rest);
        if let Err(e) = session.method_pref(method, &prefs.join(",")) {
            log::debug!("cipher preference {prefs:?} refused: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn traffic_counts_a_sockets_payload_and_nothing_else() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert_eq!(
            Traffic::of(client.as_fd()),
            Some(Traffic::default()),
            "a new connection has carried nothing"
        );
        client.write_all(&[7; 3000]).unwrap();
        let mut got = [0; 3000];
        server.read_exact(&mut got).unwrap();
        server.write_all(b"ok").unwrap();
        let mut ok = [0; 2];
        client.read_exact(&mut ok).unwrap();
        let client_side = Traffic::of(client.as_fd()).unwrap();
        assert_eq!(client_side.received, 2);
        assert!(client_side.sent >= 3000, "{client_side:?}");
        assert_eq!(Traffic::of(server.as_fd()).unwrap().received, 3000);

        let file = fs::File::open("/dev/null").unwrap();
        assert_eq!(Traffic::of(file.as_fd()), None, "not a socket");
    }

    fn openssh_key(cipher: &str) -> String {
        let mut body = b"openssh-key-v1\0".to_vec();
        body.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
        body.extend_from_slice(cipher.as_bytes());
        body.extend_from_slice(&[0; 16]);
        let b64 = STANDARD.encode(body);
        let wrapped: Vec<_> = b64
            .as_bytes()
            .chunks(70)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            wrapped.join("\n")
        )
    }

    #[test]
    fn detects_keys_that_need_a_passphrase() {
        assert!(!key_needs_passphrase(&openssh_key("none")));
        assert!(key_needs_passphrase(&openssh_key("aes256-ctr")));
        assert!(key_needs_passphrase(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,E0\n"
        ));
        assert!(key_needs_passphrase(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII\n"
        ));
        assert!(!key_needs_passphrase(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n"
        ));
    }
}

/// Helpers for tests against a real sshd ([`testkit::sshd::Server`]).
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use testkit::sshd::Server;

    /// Options for `server` with its client key and a known_hosts in `dir` that trusts it.
    pub fn options(server: &Server, dir: &Path) -> SshOptions {
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, format!("{}\n", server.known_hosts_line())).unwrap();
        SshOptions {
            host: server.host().to_string(),
            port: server.port(),
            user: server.user().to_string(),
            key_filename: Some(server.client_key()),
            password: None,
            host_key_policy: HostKeyPolicy::Yes,
            connect_timeout: Duration::from_secs(10),
            interactive: false,
            known_hosts,
        }
    }

    pub fn connect(server: &Server, dir: &Path) -> Ssh {
        Ssh::connect(&options(server, dir))
            .unwrap_or_else(|e| panic!("{e:#}\nsshd log:\n{}", server.log()))
    }
}

/// Against a real sshd on loopback (needs root, like every e2e test).
#[cfg(test)]
mod live_tests {
    use super::test_support::{connect, options};
    use super::*;
    use testkit::sshd::Server;

    fn server_key(server: &Server) -> Vec<u8> {
        let line = server.known_hosts_line();
        blob_of(line.split_whitespace().nth(2).unwrap())
    }

    fn blob_of(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    fn err(opts: &SshOptions) -> String {
        match Ssh::connect(opts) {
            Ok(_) => panic!("connected to {}", opts.host),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn runs_commands_with_stdin_and_status() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        assert_eq!(
            ssh.display(),
            format!("{}@127.0.0.1:{}", server.user(), server.port())
        );
        let out = ssh.run("cat; echo oops >&2; exit 3", b"input\n").unwrap();
        assert_eq!(
            (out.status, &out.stdout[..], &out.stderr[..]),
            (3, &b"input\n"[..], &b"oops\n"[..])
        );
        let out = ssh.run("echo $0 is fine", b"").unwrap();
        assert_eq!(out.status, 0);
        let out = ssh.run("kill -TERM $$", b"").unwrap();
        assert_eq!(out.status, 128 + 15);
    }

    #[test]
    fn changed_host_key_is_refused_naming_the_line() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let opts = options(&server, dir.path());
        let name = known_hosts_name(server.host(), server.port());
        let other = "AAAAC3NzaC1lZDI1NTE5AAAAILKt0qSJuVUn3khbwRvzg6YD37qTKv3jIHO3SZmohO2F";
        fs::write(
            &opts.known_hosts,
            format!("# mine\n{name} ssh-ed25519 {other}\n"),
        )
        .unwrap();
        let msg = err(&opts);
        assert!(
            msg.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("{}:2", opts.known_hosts.display())),
            "{msg}"
        );
        assert!(msg.contains(&fingerprint(&server_key(&server))), "{msg}");
        assert!(msg.contains("ED25519"), "{msg}");
        for policy in [HostKeyPolicy::Yes, HostKeyPolicy::AcceptNew] {
            let opts = SshOptions {
                host_key_policy: policy,
                ..opts.clone()
            };
            assert!(err(&opts).contains("HAS CHANGED"));
        }
        // Hashed entries are found too.
        let hashed = format!("{name} ssh-ed25519 {other}\n");
        fs::write(&opts.known_hosts, hashed).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&opts.known_hosts)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(fs::read_to_string(&opts.known_hosts)
            .unwrap()
            .starts_with("|1|"));
        assert!(err(&opts).contains(&format!("{}:1", opts.known_hosts.display())));
    }

    #[test]
    fn unknown_host_is_refused_in_batch_and_recorded_with_accept_new() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(&server, dir.path());
        opts.known_hosts = dir.path().join("new/.ssh/known_hosts");
        let msg = err(&opts);
        assert!(msg.contains("is not in"), "{msg}");
        assert!(msg.contains(&fingerprint(&server_key(&server))), "{msg}");
        assert!(!opts.known_hosts.exists());

        opts.host_key_policy = HostKeyPolicy::No;
        Ssh::connect(&opts).unwrap();
        assert!(!opts.known_hosts.exists(), "policy no records nothing");

        opts.host_key_policy = HostKeyPolicy::AcceptNew;
        Ssh::connect(&opts).unwrap();
        let recorded = fs::read_to_string(&opts.known_hosts).unwrap();
        assert_eq!(recorded.trim(), server.known_hosts_line());
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(opts.known_hosts.parent().unwrap()), 0o700);
        assert_eq!(mode(&opts.known_hosts), 0o600);

        opts.host_key_policy = HostKeyPolicy::Yes;
        Ssh::connect(&opts).unwrap();
    }

    #[test]
    fn wrong_key_fails_naming_host_and_what_was_tried() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("stranger");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let opts = SshOptions {
            key_filename: Some(key.clone()),
            ..options(&server, dir.path())
        };
        let msg = err(&opts);
        let who = format!("{}@127.0.0.1:{}", server.user(), server.port());
        assert!(
            msg.starts_with(&format!(
                "authentication failed for {who} (tried: key {}",
                key.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("the server accepts: publickey"), "{msg}");

        let missing = SshOptions {
            key_filename: Some(dir.path().join("nope")),
            ..opts.clone()
        };
        assert!(err(&missing).contains("does not exist"));
    }

    #[test]
    fn encrypted_key_without_terminal_points_to_ssh_agent() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("locked");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let opts = SshOptions {
            key_filename: Some(key),
            ..options(&server, dir.path())
        };
        let msg = err(&opts);
        assert!(
            msg.contains("needs a passphrase") && msg.contains("ssh-add"),
            "{msg}"
        );
    }

    #[test]
    fn password_authentication() {
        let server = Server::builder().password("pw-1234").start();
        let dir = tempfile::tempdir().unwrap();
        let stranger = dir.path().join("stranger");
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger)
            .output()
            .unwrap();
        let mut opts = SshOptions {
            key_filename: Some(stranger),
            password: Some("wrong".into()),
            ..options(&server, dir.path())
        };
        let msg = err(&opts);
        assert!(msg.contains("password"), "{msg}");
        opts.password = Some("pw-1234".into());
        let ssh = Ssh::connect(&opts).unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        assert_eq!(ssh.run("echo ok", b"").unwrap().stdout, b"ok\n");
    }
}

/// libssh2's codes for a connection that failed under the session (its socket closed, reset
/// or timed out; the server disconnected), as opposed to one channel or the remote process.
const CONNECTION_LOST: [i32; 5] = [
    -1,  // LIBSSH2_ERROR_SOCKET_NONE
    -7,  // LIBSSH2_ERROR_SOCKET_SEND
    -13, // LIBSSH2_ERROR_SOCKET_DISCONNECT
    -30, // LIBSSH2_ERROR_SOCKET_TIMEOUT
    -43, // LIBSSH2_ERROR_SOCKET_RECV
];

/// libssh2's own words when the connection under `session` failed. A read or write on a
/// channel then fails with an `io::Error` that keeps only libssh2's message ("Failure while
/// draining incoming flow", "transport read"), which tells a user nothing; the session's
/// last error still has the code. Callers say plainly that the connection was lost and keep
/// this for the log. Socket errors end a session, so one found here is never stale.
fn lost(session: &Session) -> Option<String> {
    let e = ssh2::Error::last_session_error(session)?;
    match e.code() {
        ssh2::ErrorCode::Session(code) if CONNECTION_LOST.contains(&code) => {
            Some(e.message().to_string())
        }
        _ => None,
    }
}

/// A channel stream to write to. `Write::flush` of an `ssh2::Stream` is
/// `libssh2_channel_flush_ex`, which *discards* the data received on that stream and not yet
/// read, so a writer that flushes could lose what the peer sent meanwhile (an agent's error,
/// say). A blocking write has handed everything to the transport already: flushing it is a
/// no-op here.
///
/// A write that makes no progress for [`WRITE_STALL`] fails: libssh2 waits for window space
/// forever, even on a channel whose process died (the server closes it, the window never
/// opens), and the peer (`mtr-agent`) reads continuously while a transfer lasts. A write that
/// fails because the connection is gone says so (`ConnectionAborted`), libssh2's wording in
/// the debug log only.
pub struct Outgoing {
    stream: ssh2::Stream,
    session: Session,
}

/// How long one write to the agent may wait for the channel to take data.
pub const WRITE_STALL: Duration = Duration::from_secs(20);

impl Outgoing {
    pub fn new(session: &Session, stream: ssh2::Stream) -> Outgoing {
        Outgoing {
            stream,
            session: session.clone(),
        }
    }
}

impl std::io::Write for Outgoing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let before = self.session.timeout();
        self.session.set_timeout(millis(WRITE_STALL));
        let written = self.stream.write(buf);
        self.session.set_timeout(before);
        written.map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the remote end took no data for {} s (did mtr-agent die?)",
                        WRITE_STALL.as_secs()
                    ),
                )
            } else if let Some(cause) = lost(&self.session) {
                log::debug!("writing to the remote end failed: {e} (libssh2: {cause})");
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the SSH connection was lost",
                )
            } else {
                e
            }
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
