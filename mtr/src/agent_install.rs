//! Puts `mtr-agent` on the server and starts it over an SSH exec channel: one `sh -c` script
//! checks the OS and architecture, finds an installed agent of exactly this build and runs it
//! (`mtr-agent serve` for a sync, `mtr-agent send` for a download, `mtr-agent run` for a batch
//! command); when there is none, a second script streams the carried binary into a
//! private directory (temp name, then its SHA-256 checked against this build's with
//! the server's `sha256sum` — else `shasum -a 256`, `busybox sha256sum`, `openssl dgst` —
//! before `chmod` and `rename`; no such tool: refused), and the first runs again.
//! The agent's greeting ([`protocol::wire::MAGIC`]) is looked for past any login-shell noise,
//! then the protocol handshake checks its version.
//!
//! Layout on the server: `<base>/agent/<version>-<os>-<arch>-<hash>/mtr-agent`, where `<base>`
//! is the first usable of `${XDG_CACHE_HOME:-~/.cache}/mtr`, `$XDG_RUNTIME_DIR/mtr`,
//! `/dev/shm/mtr-<uid>`, `/tmp/mtr-<uid>`; a later one is used only when the earlier ones are
//! on a `noexec` filesystem or unusable. Each base, its `agent/` and the build's directory are
//! mode 0700, owned by the user and not symlinks, and the agent is a regular file of the user's
//! (not a symlink); anything else is refused, never used nor written through.
//!
//! Every command sent goes through the user's login shell (bash, fish, tcsh...), so it is
//! exactly `sh -c '<script>'` where the script is one line without `'`, `\`, `!` or newlines,
//! which every one of those shells passes through unchanged.

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use protocol::codec::{skip_to_magic, FrameReader, FrameWriter};
use protocol::source::Ack;
use protocol::wire::MAGIC;

use crate::embedded;
use crate::ssh::{Outgoing, Ssh};

/// Most login-shell output accepted before the agent's greeting.
const NOISE_LIMIT: usize = 64 << 10;
/// How long a failing agent gets to say why before the channel is given up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an agent told to end (after `Bye`) gets to exit.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts and installs allowed in one `start`: each base once, plus one reinstall.
const MAX_ROUNDS: usize = 10;

/// Shell snippets that print each candidate base directory (or nothing when it does not
/// apply), best first.
const BASES: [&str; 4] = [
    r#"case ${XDG_CACHE_HOME:-} in /*) echo "$XDG_CACHE_HOME/mtr";; *) if [ -n "${HOME:-}" ]; then echo "$HOME/.cache/mtr"; fi;; esac"#,
    r#"if [ -n "${XDG_RUNTIME_DIR:-}" ]; then echo "$XDG_RUNTIME_DIR/mtr"; fi"#,
    r#"echo "/dev/shm/mtr-$(id -u)""#,
    r#"echo "/tmp/mtr-$(id -u)""#,
];

/// Exit statuses of the scripts (the agent never uses them before its greeting).
const EXIT_UNSUPPORTED: i32 = 90;
const EXIT_MISSING: i32 = 91;
/// The install script found no tool to hash the upload with.
const EXIT_NO_SHA256: i32 = 96;
/// The upload's SHA-256 is not this build's: nothing was installed.
const EXIT_CORRUPT: i32 = 97;

/// `mtr-agent` cannot run on this server at all: no agent is carried for its OS and
/// architecture, or no private directory there allows executing programs. Only these cases
/// (never a network, authentication or install failure), so the caller may fall back to an
/// engine that needs no agent (`sync: sftp`).
#[derive(Debug, thiserror::Error)]
#[error("{reason}; use `sync: rsync` or `sync: sftp` for this server")]
pub struct AgentUnavailable {
    /// `user@host:port`.
    pub host: String,
    /// Why, naming the host.
    pub reason: String,
}

impl AgentUnavailable {
    /// The `AgentUnavailable` in `e`'s chain, if any.
    pub fn find(e: &anyhow::Error) -> Option<&AgentUnavailable> {
        e.chain().find_map(|c| c.downcast_ref::<AgentUnavailable>())
    }
}

/// A running agent after a successful handshake.
pub struct AgentSession {
    pub reader: FrameReader<ssh2::Stream>,
    pub writer: FrameWriter<Outgoing>,
    /// What the agent said in its greeting (its root, last tree token, dirty paths).
    pub ack: Ack,
    channel: ssh2::Channel,
    session: ssh2::Session,
    /// Where the agent's executable is on the server.
    pub remote_path: String,
    host: String,
}

/// Installs the agent if needed, starts it and greets it for `remote_dir`.
pub fn start(ssh: &Ssh, remote_dir: &str, watch: bool) -> Result<AgentSession> {
    AgentSession::start(ssh, remote_dir, watch)
}

/// What the agent is started for: its subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode<'a> {
    /// `mtr-agent serve`: one sync session, after the protocol handshake; `--no-watch`
    /// unless `watch` (no watcher left over the tree, see `protocol::watch`).
    Serve { watch: bool },
    /// `mtr-agent run`: supervise one command (batch mode); no handshake.
    Run,
    /// `mtr-agent send BASE`: the source of a download, after the request and the agent's
    /// greeting ([`protocol::get::request`]). It keeps its chunk index under its own base.
    Send(&'a protocol::get::Request),
}

/// A `mtr-agent run` that greeted, waiting for its `ToRunner::Start`. Its channel's stdout and
/// stderr become the command's; on stderr, what precedes the agent's second greeting
/// ([`MAGIC`]) is the login shell's and the launch script's.
pub struct Runner {
    pub channel: ssh2::Channel,
    /// Stdout read past the greeting while looking for it (the command's, so normally none).
    pub stdout: Vec<u8>,
    /// Where the agent's executable is on the server.
    pub remote_path: String,
}

/// Installs the agent if needed and starts `mtr-agent send` for a download: the request is
/// sent and the agent's greeting checked. In the session's `ack`, `root` is the remote path
/// resolved by the agent.
pub fn start_sender(ssh: &Ssh, request: &protocol::get::Request) -> Result<AgentSession> {
    let (agent, layout) = (Agent::embedded(), Layout::default());
    match start_mode(ssh, Mode::Send(request), &request.path, &agent, &layout)? {
        Started::Session(s) => Ok(*s),
        Started::Runner(_) => unreachable!("send mode yields a session"),
    }
}

/// Installs the agent if needed and starts `mtr-agent run`.
pub fn start_runner(ssh: &Ssh) -> Result<Runner> {
    match start_mode(ssh, Mode::Run, "", &Agent::embedded(), &Layout::default())? {
        Started::Runner(r) => Ok(r),
        Started::Session(_) => unreachable!("run mode yields a runner"),
    }
}

enum Started {
    Session(Box<AgentSession>),
    Runner(Runner),
}

impl AgentSession {
    /// Installs the agent if needed, starts it and greets it for `remote_dir`.
    pub fn start(ssh: &Ssh, remote_dir: &str, watch: bool) -> Result<AgentSession> {
        let mode = Mode::Serve { watch };
        start_with(
            ssh,
            remote_dir,
            &Agent::embedded(),
            &Layout::default(),
            mode,
        )
    }

    /// Ends the session: sends EOF and waits for the agent to exit. An agent that exits
    /// non-zero is an error carrying what it wrote on stderr.
    pub fn finish(mut self) -> Result<()> {
        let flushed = self.writer.flush();
        let (status, stderr) = drain(&mut self.channel, &self.session, FINISH_TIMEOUT);
        let stderr = log_lines(agent_stderr(&stderr));
        let stderr = stderr.as_str();
        let what = || format!("mtr-agent on {} ({})", self.host, self.remote_path);
        flushed.with_context(|| format!("{} stopped reading", what()))?;
        match status {
            Some(0) => {
                if !stderr.trim().is_empty() {
                    log::debug!("{} said: {}", what(), stderr.trim());
                }
                Ok(())
            }
            Some(n) => bail!("{} exited with status {n}{}", what(), said(stderr)),
            None => bail!("{} ended without an exit status{}", what(), said(stderr)),
        }
    }

    /// Ends a session that failed: closes the agent's input, waits briefly for it to exit and
    /// returns what it said, as ` (mtr-agent exited with status 1: ...)`, or an empty string.
    pub fn abort(mut self) -> String {
        let (status, stderr) = drain(&mut self.channel, &self.session, DRAIN_TIMEOUT);
        let stderr = log_lines(agent_stderr(&stderr));
        let stderr = stderr.trim();
        match status {
            Some(0) | None if stderr.is_empty() => String::new(),
            Some(n) => format!(" (mtr-agent exited with status {n}{})", said(stderr)),
            None => format!(" (mtr-agent said: {stderr})"),
        }
    }
}

/// What the agent itself wrote on stderr: what follows the launch script's last report line
/// (before it come the login shell's and the script's own lines).
pub(crate) fn agent_stderr(stderr: &str) -> &str {
    match stderr.rfind("mtr-launch: ") {
        Some(at) => stderr[at..].split_once('\n').map_or("", |(_, rest)| rest),
        None => stderr,
    }
}

/// Logs the agent's debug lines (`mtr-agent: [  12.3 ms] ...`, written when it runs with
/// `-v`) and returns the rest of what it wrote: its errors.
fn log_lines(stderr: &str) -> String {
    let mut rest = String::new();
    for line in stderr.lines() {
        if line.starts_with(AGENT_LOG_PREFIX) {
            log::debug!("{line}");
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    rest
}

/// How the agent's debug lines start (`mtr-agent/src/log.rs`).
const AGENT_LOG_PREFIX: &str = "mtr-agent: [";

/// ` -v` when mtr logs debug lines: the agent then writes its own on stderr.
fn agent_verbosity() -> &'static str {
    if log::log_enabled!(log::Level::Debug) {
        " -v"
    } else {
        ""
    }
}

fn said(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// An agent executable and the identity that keys its install path.
#[derive(Clone, Copy)]
pub(crate) struct Agent<'a> {
    pub bytes: &'a [u8],
    pub version: &'a str,
    pub hash: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
}

impl Agent<'static> {
    pub fn embedded() -> Self {
        Agent {
            bytes: embedded::AGENT,
            version: embedded::VERSION,
            hash: embedded::AGENT_HASH,
            os: embedded::AGENT_OS,
            arch: embedded::AGENT_ARCH,
        }
    }
}

impl Agent<'_> {
    /// `<version>-<os>-<arch>-<hash>`: the directory of this build under `<base>/agent/`.
    fn subdir(&self) -> String {
        let sub = format!("{}-{}-{}-{}", self.version, self.os, self.arch, self.hash);
        assert!(
            sub.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)),
            "agent id {sub:?} must be safe in a shell script"
        );
        sub
    }

    /// SHA-256 of the executable (hex), as `sha256sum` prints it.
    fn sha256(&self) -> std::borrow::Cow<'static, str> {
        if std::ptr::eq(self.bytes, embedded::AGENT) {
            embedded::agent_sha256().into()
        } else {
            embedded::sha256_hex(self.bytes).into()
        }
    }

    /// What `uname -s` and `uname -m` print on a server this agent runs on.
    fn uname(&self) -> String {
        let os = match self.os {
            "linux" => "Linux",
            "darwin" => "Darwin",
            "freebsd" => "FreeBSD",
            other => other,
        };
        format!("{os} {}", self.arch)
    }
}

/// Where agents may be installed: shell snippets printing each candidate base dir.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub bases: Vec<String>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            bases: BASES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Layout {
    /// `mtr_base N` prints base N; `mtr_safe DIR` is true for a directory that is ours and
    /// not a symlink; `mtr_file PATH` for a regular file that is ours and not a symlink.
    fn functions(&self) -> String {
        let cases: String = self
            .bases
            .iter()
            .enumerate()
            .map(|(i, expr)| format!("{i}) {expr};; "))
            .collect();
        format!(
            "mtr_base() {{ case $1 in {cases}esac; }}; \
             mtr_safe() {{ if [ -L \"$1\" ]; then return 1; fi; [ -d \"$1\" ] && [ -O \"$1\" ]; }}; \
             mtr_file() {{ if [ -L \"$1\" ]; then return 1; fi; [ -f \"$1\" ] && [ -O \"$1\" ]; }}; "
        )
    }
}

/// `sh -c '<script>'`, safe to hand to any login shell.
pub(crate) fn sh_c(script: &str) -> String {
    debug_assert!(
        !script.contains(['\'', '\\', '!', '\n']),
        "script must survive fish and tcsh: {script}"
    );
    format!("sh -c {}", shell_words::quote(script))
}

/// The script that finds and runs an installed agent. It reports on stderr, one
/// `mtr-launch: ...` line per event (see [`LaunchReport`]), and on stdout prints
/// `MTR-PATH=<base> <path>` right before running an agent.
///
/// An agent is run only if the base, `agent/`, the build's directory and the agent itself are
/// the user's and none is a symlink; otherwise the script reports the first that is not
/// (`unsafe`) and moves on. `serve` and `send` run in a subshell whose status 126 means
/// "cannot execute" (a noexec mount): the next base is tried. `send` gets its base, where it
/// keeps its chunk index. `run` cannot: its status is the user's command's, 126 included, so
/// the script first checks that the agent executes (`--version`), then `exec`s it. When mtr
/// logs debug lines, `serve` and `send` get `-v` and write theirs on stderr (see [`log_lines`]).
pub(crate) fn launch_script(agent: &Agent, layout: &Layout, mode: Mode) -> String {
    let v = agent_verbosity();
    let start = match mode {
        Mode::Serve { watch } => {
            let w = if watch { "" } else { " --no-watch" };
            format!("(umask $um; exec \"$p\" serve{v}{w}); rc=$?; ")
        }
        Mode::Send(_) => format!("(exec \"$p\" send{v} \"$b\"); rc=$?; "),
        Mode::Run => "\"$p\" --version >/dev/null 2>&1; rc=$?; \
             if [ $rc -ne 126 ]; then umask $um; exec \"$p\" run; fi; "
            .to_string(),
    };
    format!(
        "um=$(umask); umask 077; {fns}sub={sub}; os=$(uname -s); arch=$(uname -m); \
         if [ \"$os $arch\" = \"{uname}\" ]; then :; else \
         echo \"mtr-launch: unsupported $os $arch\" >&2; exit {EXIT_UNSUPPORTED}; fi; \
         mtr_unsafe() {{ for x in \"$1\" \"$1/agent\" \"$1/agent/$sub\"; do \
         if mtr_safe \"$x\"; then :; else echo \"$x\"; return; fi; done; \
         if mtr_file \"$2\"; then :; else echo \"$2\"; fi; }}; \
         i=0; while [ $i -lt {n} ]; do \
         b=$(mtr_base $i); p=\"$b/agent/$sub/mtr-agent\"; \
         if [ -n \"$b\" ] && {{ [ -e \"$p\" ] || [ -L \"$p\" ]; }}; then \
         u=$(mtr_unsafe \"$b\" \"$p\"); \
         if [ -z \"$u\" ]; then \
         echo \"mtr-launch: run $i $p\" >&2; echo \"MTR-PATH=$i $p\"; {start}\
         if [ $rc -eq 126 ]; then echo \"mtr-launch: noexec $i $p\" >&2; else exit $rc; fi; \
         else echo \"mtr-launch: unsafe $i $u\" >&2; fi; fi; \
         i=$((i+1)); done; echo \"mtr-launch: missing\" >&2; exit {EXIT_MISSING}",
        fns = layout.functions(),
        sub = agent.subdir(),
        uname = agent.uname(),
        n = layout.bases.len(),
    )
}

/// The script that installs the agent (streamed on stdin, `size` bytes) into base `base`,
/// printing the installed path.
///
/// Nothing is followed or reused that is not the user's own: the base, `<base>/agent` and the
/// build's directory are each refused (status 92) when a symlink or not a directory owned by
/// the user, and each made 0700; an existing agent path that is a symlink or not a regular file
/// is refused too. The upload goes to a temp name; only if its SHA-256 (hashed on the server)
/// is this build's is it made executable and renamed into place (else status 97, the
/// temp file removed). A server with no tool to hash it is refused before anything is written
/// (status 96).
pub(crate) fn install_script(agent: &Agent, layout: &Layout, base: usize) -> String {
    format!(
        // `mtr_quit` reads the rest of the binary before exiting: mtr writes all of it before
        // it reads the outcome, and would wait forever for a script that stopped reading.
        "umask 077; {fns}mtr_quit() {{ cat >/dev/null; exit $1; }}; sub={sub}; b=$(mtr_base {base}); \
         if [ -z \"$b\" ]; then echo \"mtr-install: unavailable\" >&2; mtr_quit 94; fi; \
         if command -v sha256sum >/dev/null 2>&1; then mtr_sha() {{ sha256sum; }}; \
         elif command -v shasum >/dev/null 2>&1; then mtr_sha() {{ shasum -a 256; }}; \
         elif command -v busybox >/dev/null 2>&1 && busybox sha256sum </dev/null >/dev/null 2>&1; \
         then mtr_sha() {{ busybox sha256sum; }}; \
         elif command -v openssl >/dev/null 2>&1; then mtr_sha() {{ openssl dgst -sha256 -r; }}; \
         else echo \"mtr-install: no sha256sum, shasum, busybox or openssl to verify the upload with\" >&2; \
         mtr_quit {EXIT_NO_SHA256}; fi; \
         d=\"$b/agent/$sub\"; p=\"$d/mtr-agent\"; \
         for x in \"$b\" \"$b/agent\" \"$d\"; do \
         if [ -L \"$x\" ]; then echo \"mtr-install: $x is a symbolic link\" >&2; mtr_quit 92; fi; \
         mkdir -p \"$x\" || mtr_quit 93; \
         if mtr_safe \"$x\"; then :; else \
         echo \"mtr-install: $x is not a directory owned by $(id -un)\" >&2; mtr_quit 92; fi; \
         chmod 700 \"$x\" || mtr_quit 93; done; \
         if [ -L \"$p\" ]; then echo \"mtr-install: $p is a symbolic link\" >&2; mtr_quit 92; fi; \
         if [ -e \"$p\" ]; then if [ -f \"$p\" ]; then :; else \
         echo \"mtr-install: $p is not a regular file\" >&2; mtr_quit 92; fi; fi; \
         t=\"$d/.mtr-agent.tmp.$$\"; rm -f \"$t\"; \
         if cat > \"$t\"; then :; else rm -f \"$t\"; \
         echo \"mtr-install: could not write $t\" >&2; mtr_quit 95; fi; \
         n=$(wc -c < \"$t\"); h=$(mtr_sha < \"$t\"); h=${{h%% *}}; \
         if [ \"$h\" = {sha256} ]; then :; else rm -f \"$t\"; \
         echo \"mtr-install: the upload arrived corrupted ($n bytes with SHA-256 $h, where this \
         build has {size} bytes with SHA-256 {sha256}); nothing was installed at $p\" >&2; \
         exit {EXIT_CORRUPT}; fi; \
         if chmod 700 \"$t\" && mv -f \"$t\" \"$p\"; then echo \"$p\"; else rm -f \"$t\"; \
         echo \"mtr-install: could not write $p\" >&2; exit 95; fi",
        fns = layout.functions(),
        sub = agent.subdir(),
        size = agent.bytes.len(),
        sha256 = agent.sha256(),
    )
}

/// What the launch script reported on stderr when no agent greeted.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LaunchReport {
    /// `uname -s` and `uname -m` of a server no agent is carried for.
    pub unsupported: Option<(String, String)>,
    /// Agents started, as (base, path).
    pub runs: Vec<(usize, String)>,
    /// Bases whose agent could not be executed (noexec filesystem).
    pub noexec: Vec<(usize, String)>,
    /// Bases refused, each with its first path (the base, `agent/`, the build's directory, the
    /// agent) that is a symlink, not a directory (a regular file), or not the user's.
    pub unsafe_bases: Vec<(usize, String)>,
    /// No runnable agent was found.
    pub missing: bool,
    /// Everything else on stderr (shell errors, the agent's own messages).
    pub other: Vec<String>,
}

impl LaunchReport {
    pub fn parse(stderr: &str) -> LaunchReport {
        let mut r = LaunchReport::default();
        for line in stderr.lines() {
            let Some(event) = line.strip_prefix("mtr-launch: ") else {
                if !line.trim().is_empty() {
                    r.other.push(line.to_string());
                }
                continue;
            };
            let (kind, rest) = event.split_once(' ').unwrap_or((event, ""));
            let indexed = || {
                let (i, path) = rest.split_once(' ')?;
                Some((i.parse::<usize>().ok()?, path.to_string()))
            };
            match kind {
                "unsupported" => {
                    let (os, arch) = rest.split_once(' ').unwrap_or((rest, ""));
                    r.unsupported = Some((os.to_string(), arch.to_string()));
                }
                "run" => r.runs.extend(indexed()),
                "noexec" => r.noexec.extend(indexed()),
                "unsafe" => r.unsafe_bases.extend(indexed()),
                "missing" => r.missing = true,
                _ => r.other.push(line.to_string()),
            }
        }
        r
    }

    /// The last agent that was started but neither greeted nor failed to execute.
    pub fn failed_run(&self) -> Option<&(usize, String)> {
        self.runs
            .last()
            .filter(|(i, _)| !self.noexec.iter().any(|(j, _)| j == i))
    }

    /// Whether base `i` is known to be unusable.
    fn excludes(&self, i: usize) -> bool {
        self.noexec.iter().any(|(j, _)| *j == i) || self.unsafe_bases.iter().any(|(j, _)| *j == i)
    }
}

/// The base to install into next: the first not known to be unusable nor tried already.
pub(crate) fn next_base(report: &LaunchReport, tried: &[usize], count: usize) -> Option<usize> {
    (0..count).find(|i| !report.excludes(*i) && !tried.contains(i))
}

/// Splits the stdout noise before the greeting into the `MTR-PATH=` line's (base, path) and
/// the rest (what the login shell printed).
pub(crate) fn split_noise(noise: &[u8]) -> (Option<(usize, String)>, String) {
    let text = String::from_utf8_lossy(noise);
    let mut found = None;
    let mut rest = String::new();
    for line in text.split_inclusive('\n') {
        if let Some(v) = line.trim_end_matches('\n').strip_prefix("MTR-PATH=") {
            if let Some((i, path)) = v.split_once(' ') {
                if let Ok(i) = i.parse() {
                    found = Some((i, path.to_string()));
                    continue;
                }
            }
        }
        rest.push_str(line);
    }
    (found, rest)
}

/// What one run of the launch script came to.
enum Launch {
    /// An agent greeted; its channel is positioned after the greeting.
    Greeted {
        channel: ssh2::Channel,
        reader: FrameReader<ssh2::Stream>,
        base: usize,
        path: String,
    },
    /// The script ended without a greeting.
    Ended {
        status: Option<i32>,
        report: LaunchReport,
        error: String,
    },
}

fn start_with(
    ssh: &Ssh,
    remote_dir: &str,
    agent: &Agent,
    layout: &Layout,
    mode: Mode,
) -> Result<AgentSession> {
    match start_mode(ssh, mode, remote_dir, agent, layout)? {
        Started::Session(s) => Ok(*s),
        Started::Runner(_) => unreachable!("serve mode yields a session"),
    }
}

fn start_mode(
    ssh: &Ssh,
    mode: Mode,
    remote_dir: &str,
    agent: &Agent,
    layout: &Layout,
) -> Result<Started> {
    let host = ssh.display().to_string();
    let mut installed: Vec<usize> = Vec::new();
    let mut unusable: Vec<String> = Vec::new();
    let mut reinstalled = false;
    for _ in 0..MAX_ROUNDS {
        match launch(ssh, agent, layout, mode)? {
            Launch::Greeted {
                mut channel,
                mut reader,
                base,
                path,
            } => {
                if mode == Mode::Run {
                    // The path is keyed by this build's hash: no version check needed.
                    let stdout = reader.get_mut().buffer().to_vec();
                    drop(reader);
                    log::debug!("mtr-agent run started on {host} from {path}");
                    return Ok(Started::Runner(Runner {
                        channel,
                        stdout,
                        remote_path: path,
                    }));
                }
                let mut writer = FrameWriter::new(Outgoing::new(ssh.session(), channel.stream(0)));
                let greeting = match mode {
                    Mode::Send(request) => {
                        protocol::get::request(&mut reader, &mut writer, request, agent.version)
                    }
                    _ => protocol::source::handshake(
                        &mut reader,
                        &mut writer,
                        remote_dir,
                        agent.version,
                    ),
                };
                match greeting {
                    Ok(ack) => {
                        log::debug!("mtr-agent {} running on {host} from {path}", ack.version);
                        return Ok(Started::Session(Box::new(AgentSession {
                            reader,
                            writer,
                            ack,
                            channel,
                            session: ssh.session().clone(),
                            remote_path: path,
                            host,
                        })));
                    }
                    Err(e) => {
                        let mismatch = matches!(e, protocol::Error::Version(_));
                        drop((reader, writer));
                        let (_, stderr) = drain(&mut channel, ssh.session(), DRAIN_TIMEOUT);
                        if mismatch && !reinstalled {
                            log::debug!("{path} on {host}: {e}; reinstalling");
                            reinstalled = true;
                            install(ssh, agent, layout, base)?;
                            continue;
                        }
                        let context = if mismatch {
                            " (even after reinstalling it)"
                        } else {
                            ""
                        };
                        return Err(anyhow!(e)).context(format!(
                            "mtr-agent at {path} on {host} failed to start a session for \
                             {remote_dir}{context}{}",
                            said(&log_lines(agent_stderr(&stderr)))
                        ));
                    }
                }
            }
            Launch::Ended {
                status,
                report,
                error,
            } => {
                if let Some((os, arch)) = &report.unsupported {
                    return Err(AgentUnavailable {
                        reason: format!(
                            "no mtr-agent for {}-{arch} (the server {host} runs {os} {arch})",
                            os.to_ascii_lowercase()
                        ),
                        host,
                    }
                    .into());
                }
                if let Some((base, path)) = report.failed_run() {
                    if !reinstalled {
                        log::debug!("{path} on {host} did not greet ({error}); reinstalling");
                        reinstalled = true;
                        install(ssh, agent, layout, *base)?;
                        continue;
                    }
                    bail!(
                        "mtr-agent at {path} on {host} did not start ({error}; exit status {}){}",
                        status.map_or("none".to_string(), |s| s.to_string()),
                        said(&report.other.join("\n"))
                    );
                }
                if !report.missing {
                    bail!(
                        "starting mtr-agent on {host} failed (exit status {}){}",
                        status.map_or("none".to_string(), |s| s.to_string()),
                        said(&report.other.join("\n"))
                    );
                }
                for (_, path) in &report.noexec {
                    log::debug!("{path} on {host} cannot be executed (noexec filesystem?)");
                }
                let Some(base) = next_base(&report, &installed, layout.bases.len()) else {
                    return Err(AgentUnavailable {
                        reason: format!(
                            "cannot run mtr-agent on {host}: no private directory there allows \
                             executing programs ({})",
                            reasons(&report, &unusable)
                        ),
                        host,
                    }
                    .into());
                };
                installed.push(base);
                match install(ssh, agent, layout, base) {
                    Ok(path) => log::debug!("installed mtr-agent at {path} on {host}"),
                    Err(Install::Unusable(why)) => unusable.push(why),
                    Err(Install::Failed(e)) => return Err(e),
                }
            }
        }
    }
    bail!("could not start mtr-agent on {host}: it was installed but never ran")
}

fn reasons(report: &LaunchReport, unusable: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    for (_, path) in &report.noexec {
        out.push(format!("{path}: on a noexec filesystem"));
    }
    for (_, dir) in &report.unsafe_bases {
        out.push(format!(
            "{dir}: a symlink, or not a directory or file of yours"
        ));
    }
    out.extend(unusable.iter().cloned());
    if out.is_empty() {
        "none was usable".into()
    } else {
        out.join("; ")
    }
}

/// Runs the launch script and reads up to the agent's greeting.
fn launch(ssh: &Ssh, agent: &Agent, layout: &Layout, mode: Mode) -> Result<Launch> {
    let host = ssh.display();
    let mut channel = ssh
        .exec(&sh_c(&launch_script(agent, layout, mode)))
        .with_context(|| format!("cannot start mtr-agent on {host}"))?;
    let mut reader = FrameReader::new(channel.stream(0));
    match skip_to_magic(reader.get_mut(), MAGIC, NOISE_LIMIT) {
        Ok(noise) => {
            let (found, noise) = split_noise(&noise);
            if !noise.is_empty() {
                log::debug!("login shell output on {host} before mtr-agent: {noise:?}");
            }
            let (base, path) = found.unwrap_or((0, "mtr-agent".into()));
            Ok(Launch::Greeted {
                channel,
                reader,
                base,
                path,
            })
        }
        Err(e) => {
            drop(reader);
            let (status, stderr) = drain(&mut channel, ssh.session(), DRAIN_TIMEOUT);
            log::debug!("launch on {host} ended with {status:?}: {e}; stderr: {stderr:?}");
            Ok(Launch::Ended {
                status,
                report: LaunchReport::parse(&stderr),
                error: e.to_string(),
            })
        }
    }
}

enum Install {
    /// This base cannot be used (unset, a symlink, not ours): try the next one.
    Unusable(String),
    Failed(anyhow::Error),
}

impl From<Install> for anyhow::Error {
    fn from(e: Install) -> Self {
        match e {
            Install::Unusable(why) => anyhow!(why),
            Install::Failed(e) => e,
        }
    }
}

/// Uploads the agent into base `base`; returns its path on the server.
fn install(ssh: &Ssh, agent: &Agent, layout: &Layout, base: usize) -> Result<String, Install> {
    upload(ssh, agent, layout, base, agent.bytes)
}

/// [`install`], streaming `bytes` as the agent: its own, except in tests of an upload that
/// arrives corrupted.
fn upload(
    ssh: &Ssh,
    agent: &Agent,
    layout: &Layout,
    base: usize,
    bytes: &[u8],
) -> Result<String, Install> {
    let host = ssh.display();
    let out = ssh
        .run(&sh_c(&install_script(agent, layout, base)), bytes)
        .map_err(|e| Install::Failed(e.context(format!("installing mtr-agent on {host}"))))?;
    install_outcome(
        host,
        layout,
        base,
        out.status,
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// What the install script's exit status and output say: the installed path, a base to skip,
/// or an error naming the host and what to do.
fn install_outcome(
    host: &str,
    layout: &Layout,
    base: usize,
    status: i32,
    stdout: &str,
    stderr: &str,
) -> Result<String, Install> {
    let stdout = stdout.trim();
    let message = stderr
        .trim()
        .lines()
        .map(|l| l.strip_prefix("mtr-install: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    match status {
        0 if !stdout.is_empty() => Ok(stdout.to_string()),
        94 => Err(Install::Unusable(format!(
            "{}: not set",
            base_label(layout, base)
        ))),
        92 => Err(Install::Unusable(message)),
        EXIT_NO_SHA256 => Err(Install::Failed(anyhow!(
            "cannot install mtr-agent on {host}: there is no sha256sum, shasum, busybox or \
             openssl there to verify the upload with, and an unverified agent is never run; \
             install coreutils on {host}, or use `sync: rsync` or `sync: sftp` for this server"
        ))),
        EXIT_CORRUPT => Err(Install::Failed(anyhow!(
            "installing mtr-agent on {host} into {} failed: {}; run mtr again, and if this \
             repeats, check what the login shell on {host} does with its input, or use \
             `sync: rsync` for this server",
            base_label(layout, base),
            if message.is_empty() {
                "the upload arrived corrupted; nothing was installed"
            } else {
                message.as_str()
            }
        ))),
        status => Err(Install::Failed(anyhow!(
            "installing mtr-agent on {host} into {} failed (exit status {status}){}",
            base_label(layout, base),
            said(&message)
        ))),
    }
}

/// A readable name for base `i` in messages.
fn base_label(layout: &Layout, i: usize) -> String {
    const LABELS: [&str; 4] = [
        "~/.cache/mtr",
        "$XDG_RUNTIME_DIR/mtr",
        "/dev/shm/mtr-<uid>",
        "/tmp/mtr-<uid>",
    ];
    match (layout.bases.get(i), LABELS.get(i)) {
        (Some(expr), Some(label)) if expr == BASES[i] => label.to_string(),
        (Some(expr), _) => expr.clone(),
        _ => format!("base {i}"),
    }
}

/// Closes the agent's input and collects its exit status and stderr, discarding unread
/// stdout; a stuck agent costs at most `timeout`.
fn drain(
    channel: &mut ssh2::Channel,
    session: &ssh2::Session,
    timeout: Duration,
) -> (Option<i32>, String) {
    let old = session.timeout();
    session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
    channel.send_eof().ok();
    let mut sink = [0u8; 16 << 10];
    let mut discarded = 0usize;
    while let Ok(n) = channel.read(&mut sink) {
        if n == 0 {
            break;
        }
        discarded += n;
    }
    if discarded > 0 {
        log::debug!("discarded {discarded} bytes the agent wrote after the session");
    }
    let mut stderr = Vec::new();
    channel.stderr().take(1 << 20).read_to_end(&mut stderr).ok();
    // libssh2 reports 0 when no exit status came, so only trust it after a clean close.
    let status = match channel.wait_close() {
        Ok(()) => channel.exit_status().ok(),
        Err(_) => None,
    };
    session.set_timeout(old);
    (status, String::from_utf8_lossy(&stderr).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output, Stdio};

    pub(super) const SERVE: Mode<'static> = Mode::Serve { watch: true };

    /// An agent for this machine (`Linux x86_64`): a shell script printing its argument.
    fn agent(bytes: &[u8]) -> Agent<'_> {
        Agent {
            bytes,
            version: "0.1.0",
            hash: "0123456789abcdef",
            os: "linux",
            arch: "x86_64",
        }
    }

    const SCRIPT: &[u8] = b"#!/bin/sh\necho \"agent $1\"\n";

    /// Bases `<dir>/b0`, `<dir>/b1` (unset), `<dir>/b2`.
    fn layout(dir: &Path) -> Layout {
        let d = dir.display().to_string();
        assert!(!d.contains(['"', '$', '\'', ' ']));
        Layout {
            bases: vec![
                format!("echo \"{d}/b0\""),
                ":".into(),
                format!("echo \"{d}/b2\""),
            ],
        }
    }

    /// Runs `command` as a login shell would (`<shell> -c <command>`), with `stdin`.
    fn login_shell(shell: &str, command: &str, stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(script: &str, stdin: &[u8]) -> (i32, String, String) {
        let out = login_shell("sh", &sh_c(script), stdin);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn scripts_are_one_line_of_plain_characters() {
        let a = agent(SCRIPT);
        for script in [
            launch_script(&a, &Layout::default(), SERVE),
            launch_script(&a, &Layout::default(), Mode::Run),
            launch_script(&a, &Layout::default(), Mode::Send(&get_request())),
            install_script(&a, &Layout::default(), 0),
        ] {
            assert!(!script.contains(['\'', '\\', '!', '\n']), "{script}");
            let cmd = sh_c(&script);
            assert!(cmd.starts_with("sh -c '") && cmd.ends_with('\''), "{cmd}");
        }
    }

    #[test]
    fn commands_survive_every_login_shell_present() {
        let dir = tempfile::tempdir().unwrap();
        let script = launch_script(&agent(SCRIPT), &layout(dir.path()), SERVE);
        for shell in ["sh", "bash", "dash", "zsh", "fish", "tcsh", "csh"] {
            if Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {shell}"))
                .output()
                .is_ok_and(|o| !o.status.success())
            {
                continue;
            }
            let out = login_shell(shell, &sh_c(&script), b"");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(EXIT_MISSING), "{shell}: {stderr}");
            assert_eq!(stderr, "mtr-launch: missing\n", "{shell}");

            // The install script too, its hash check included.
            let to = tempfile::tempdir().unwrap();
            let install = install_script(&agent(SCRIPT), &layout(to.path()), 0);
            let out = login_shell(shell, &sh_c(&install), SCRIPT);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{shell}: {stderr}");
            let out = login_shell(shell, &sh_c(&install), b"#!/bin/sh\necho \"agent $2\"\n");
            assert_eq!(out.status.code(), Some(EXIT_CORRUPT), "{shell}");
        }
    }

    #[test]
    fn installs_privately_then_launches() {
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(SCRIPT), layout(dir.path()));
        let (status, _, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, EXIT_MISSING, "{stderr}");
        let report = LaunchReport::parse(&stderr);
        assert!(report.missing && report.runs.is_empty());
        assert_eq!(next_base(&report, &[], 3), Some(0));

        let (status, stdout, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 0, "{stderr}");
        let path = dir
            .path()
            .join("b0/agent/0.1.0-linux-x86_64-0123456789abcdef/mtr-agent");
        assert_eq!(stdout.trim(), path.display().to_string());
        assert_eq!(fs::read(&path).unwrap(), SCRIPT);
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&dir.path().join("b0")), 0o700);
        assert_eq!(mode(&dir.path().join("b0/agent")), 0o700);

        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, 0, "{stderr}");
        assert_eq!(
            stdout,
            format!("MTR-PATH=0 {}\nagent serve\n", path.display())
        );
        let (found, noise) = split_noise(stdout.as_bytes());
        assert_eq!(found, Some((0, path.display().to_string())));
        assert_eq!(noise, "agent serve\n");
    }

    fn get_request() -> protocol::get::Request {
        protocol::get::Request {
            path: "~/out".into(),
            name: "out".into(),
            dry_run: false,
        }
    }

    #[test]
    fn send_is_told_the_base_it_runs_from() {
        let dir = tempfile::tempdir().unwrap();
        let script: &[u8] = b"#!/bin/sh\necho \"agent $1 $2\"\n";
        let (a, l) = (agent(script), layout(dir.path()));
        let (status, _, stderr) = run(&install_script(&a, &l, 0), script);
        assert_eq!(status, 0, "{stderr}");
        let request = get_request();
        let (status, stdout, stderr) = run(&launch_script(&a, &l, Mode::Send(&request)), b"");
        assert_eq!(status, 0, "{stderr}");
        let (_, said) = split_noise(stdout.as_bytes());
        assert_eq!(said, format!("agent send {}/b0\n", dir.path().display()));
    }

    #[test]
    fn reinstall_overwrites_and_short_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let (status, _, stderr) = run(&install_script(&agent(b"old"), &l, 0), b"old");
        assert_eq!(status, 0, "{stderr}");
        let a = agent(SCRIPT);
        let (status, stdout, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 0, "{stderr}");
        assert_eq!(fs::read(stdout.trim()).unwrap(), SCRIPT);

        let (status, _, stderr) = run(&install_script(&a, &l, 2), &SCRIPT[..5]);
        assert_eq!(status, EXIT_CORRUPT, "{stderr}");
        assert!(stderr.contains("arrived corrupted (5 bytes"), "{stderr}");
        let sub = dir
            .path()
            .join("b2/agent/0.1.0-linux-x86_64-0123456789abcdef");
        assert_eq!(
            fs::read_dir(sub).unwrap().count(),
            0,
            "temp file left behind"
        );
    }

    #[test]
    fn unset_base_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let (status, _, stderr) = run(
            &install_script(&agent(SCRIPT), &layout(dir.path()), 1),
            SCRIPT,
        );
        assert_eq!(status, 94, "{stderr}");
    }

    #[test]
    fn noexec_base_falls_through_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(SCRIPT), layout(dir.path()));
        for base in [0, 2] {
            let (status, _, stderr) = run(&install_script(&a, &l, base), SCRIPT);
            assert_eq!(status, 0, "{stderr}");
        }
        // What a noexec mount does to exec: EACCES, status 126.
        let first = dir
            .path()
            .join("b0/agent/0.1.0-linux-x86_64-0123456789abcdef/mtr-agent");
        fs::set_permissions(&first, fs::Permissions::from_mode(0o600)).unwrap();

        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, 0, "{stderr}");
        assert!(stdout.ends_with("agent serve\n"), "{stdout}");
        let (found, _) = split_noise(stdout.as_bytes());
        assert_eq!(found.unwrap().0, 2);
        let report = LaunchReport::parse(&stderr);
        assert_eq!(report.noexec, [(0, first.display().to_string())]);
        assert_eq!(report.runs.len(), 2);
        assert_eq!(report.failed_run(), Some(&report.runs[1]));
    }

    #[test]
    fn run_mode_passes_the_status_through_and_still_skips_noexec() {
        // An agent whose "command" exits 126, which must not read as "cannot execute".
        const RUN: &[u8] =
            b"#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho \"agent $1\"\nexit 126\n";
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(RUN), layout(dir.path()));
        for base in [0, 2] {
            let (status, _, stderr) = run(&install_script(&a, &l, base), RUN);
            assert_eq!(status, 0, "{stderr}");
        }
        let (status, stdout, stderr) = run(&launch_script(&a, &l, Mode::Run), b"");
        assert_eq!(status, 126, "{stderr}");
        assert!(stdout.ends_with("agent run\n"), "{stdout}");
        assert_eq!(split_noise(stdout.as_bytes()).0.unwrap().0, 0);
        assert!(LaunchReport::parse(&stderr).noexec.is_empty(), "{stderr}");

        let first = dir
            .path()
            .join("b0/agent/0.1.0-linux-x86_64-0123456789abcdef/mtr-agent");
        fs::set_permissions(&first, fs::Permissions::from_mode(0o600)).unwrap();
        let (status, stdout, stderr) = run(&launch_script(&a, &l, Mode::Run), b"");
        assert_eq!(status, 126, "{stderr}");
        assert_eq!(split_noise(stdout.as_bytes()).0.unwrap().0, 2);
        let report = LaunchReport::parse(&stderr);
        assert_eq!(report.noexec, [(0, first.display().to_string())]);
    }

    #[test]
    fn symlinked_or_foreign_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(SCRIPT), layout(dir.path()));
        fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("b0")).unwrap();
        let (status, _, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 92, "{stderr}");
        assert!(stderr.contains("symbolic link"), "{stderr}");

        // An agent planted behind the symlink is never run.
        let planted = dir
            .path()
            .join("elsewhere/agent/0.1.0-linux-x86_64-0123456789abcdef");
        fs::create_dir_all(&planted).unwrap();
        fs::write(planted.join("mtr-agent"), SCRIPT).unwrap();
        fs::set_permissions(planted.join("mtr-agent"), fs::Permissions::from_mode(0o700)).unwrap();
        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, EXIT_MISSING, "{stdout}{stderr}");
        let report = LaunchReport::parse(&stderr);
        assert_eq!(report.unsafe_bases.len(), 1);
        assert_eq!(next_base(&report, &[], 3), Some(1));

        // A base owned by someone else is refused too.
        fs::create_dir(dir.path().join("b2")).unwrap();
        std::os::unix::fs::chown(dir.path().join("b2"), Some(65534), Some(65534)).ok();
        if fs::metadata(dir.path().join("b2")).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 65534
        }) {
            let (status, _, stderr) = run(&install_script(&a, &l, 2), SCRIPT);
            assert_eq!(status, 92, "{stderr}");
            assert!(stderr.contains("not a directory owned by"), "{stderr}");
        }
    }

    const SUB: &str = "0.1.0-linux-x86_64-0123456789abcdef";
    /// An agent someone else put there: it must never run.
    const PLANTED: &[u8] = b"#!/bin/sh\necho \"planted $1\"\n";

    /// Every path under `dir` with its contents (files) or target (symlinks), not following
    /// symlinks.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
            for de in fs::read_dir(dir).unwrap() {
                let de = de.unwrap();
                let r = format!("{rel}/{}", de.file_name().to_str().unwrap());
                let t = de.file_type().unwrap();
                if t.is_symlink() {
                    let target = fs::read_link(de.path()).unwrap();
                    out.push((r, target.into_os_string().into_encoded_bytes()));
                } else if t.is_dir() {
                    out.push((r.clone(), b"<dir>".to_vec()));
                    walk(&de.path(), &r, out);
                } else {
                    out.push((r, fs::read(de.path()).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, "", &mut out);
        out.sort();
        out
    }

    fn plant(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, PLANTED).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn private_dir(path: &Path) {
        fs::create_dir_all(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn sha256_is_what_sha256sum_prints() {
        assert_eq!(
            embedded::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(agent(SCRIPT).sha256(), embedded::sha256_hex(SCRIPT));
        assert_eq!(
            Agent::embedded().sha256(),
            embedded::sha256_hex(embedded::AGENT)
        );
    }

    #[test]
    fn a_corrupted_upload_is_refused_and_leaves_no_executable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(SCRIPT), layout(dir.path()));
        // Right size, one bit flipped: only the hash can tell.
        let mut bad = SCRIPT.to_vec();
        bad[12] ^= 0x20;
        let (status, stdout, stderr) = run(&install_script(&a, &l, 0), &bad);
        assert_eq!(status, EXIT_CORRUPT, "{stderr}");
        assert_eq!(stdout, "");
        let sub = dir.path().join("b0/agent").join(SUB);
        let want = format!(
            "the upload arrived corrupted ({} bytes with SHA-256 {}, where this build has {} \
             bytes with SHA-256 {}); nothing was installed at {}/mtr-agent",
            bad.len(),
            embedded::sha256_hex(&bad),
            SCRIPT.len(),
            embedded::sha256_hex(SCRIPT),
            sub.display()
        );
        assert!(stderr.contains(&want), "{stderr}");
        assert!(tree(&sub).is_empty(), "left behind: {:?}", tree(&sub));
        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, EXIT_MISSING, "{stdout}{stderr}");

        // A good agent installed earlier survives a corrupted reinstall, untouched.
        let (status, _, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 0, "{stderr}");
        let (status, _, stderr) = run(&install_script(&a, &l, 0), &bad);
        assert_eq!(status, EXIT_CORRUPT, "{stderr}");
        assert_eq!(tree(&sub), [("/mtr-agent".to_string(), SCRIPT.to_vec())]);
        assert_eq!(mode(&sub.join("mtr-agent")), 0o700);
    }

    /// A directory of links to the programs `tools` (from this machine's PATH), to run a
    /// script with only those; `None` when one is missing here.
    fn only(tools: &[&str]) -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("PATH").unwrap();
        for tool in tools {
            let found = std::env::split_paths(&path)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())?;
            std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
        }
        Some(dir)
    }

    /// [`run`] with PATH holding only `tools`.
    fn run_with(tools: &Path, script: &str, stdin: &[u8]) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new(tools.join("sh"))
            .arg("-c")
            .arg(sh_c(script))
            .env("PATH", tools)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the install script needs besides a hashing tool.
    const BASIC: [&str; 8] = ["sh", "cat", "mkdir", "chmod", "mv", "rm", "wc", "id"];

    #[test]
    fn each_sha256_tool_verifies_the_upload_and_none_refuses_it() {
        let (a, mut bad) = (agent(SCRIPT), SCRIPT.to_vec());
        bad[0] ^= 1;
        let mut tried = Vec::new();
        for tool in ["sha256sum", "shasum", "busybox", "openssl"] {
            let Some(tools) = only(&[&BASIC[..], &[tool][..]].concat()) else {
                continue;
            };
            tried.push(tool);
            let dir = tempfile::tempdir().unwrap();
            let l = layout(dir.path());
            let (status, stderr) = run_with(tools.path(), &install_script(&a, &l, 0), &bad);
            assert_eq!(status, EXIT_CORRUPT, "{tool}: {stderr}");
            assert!(
                stderr.contains(&format!("SHA-256 {},", embedded::sha256_hex(&bad))),
                "{tool}: {stderr}"
            );
            let (status, stderr) = run_with(tools.path(), &install_script(&a, &l, 0), SCRIPT);
            assert_eq!(status, 0, "{tool}: {stderr}");
            let path = dir.path().join("b0/agent").join(SUB).join("mtr-agent");
            assert_eq!(fs::read(path).unwrap(), SCRIPT, "{tool}");
        }
        assert!(!tried.is_empty(), "no SHA-256 tool on this machine");

        // None at all: refused before anything is written.
        let tools = only(&BASIC).expect("basic tools");
        let dir = tempfile::tempdir().unwrap();
        let (status, stderr) = run_with(
            tools.path(),
            &install_script(&a, &layout(dir.path()), 0),
            SCRIPT,
        );
        assert_eq!(status, EXIT_NO_SHA256, "{stderr}");
        assert!(
            stderr.contains("no sha256sum, shasum, busybox or openssl"),
            "{stderr}"
        );
        assert!(
            tree(dir.path()).is_empty(),
            "written unverified: {:?}",
            tree(dir.path())
        );
    }

    #[test]
    fn planted_symlinks_under_the_base_are_refused_never_followed() {
        enum Plant {
            AgentDir,
            BuildDir,
            Agent,
            Dangling,
            DirAtAgent,
        }
        for case in [
            Plant::AgentDir,
            Plant::BuildDir,
            Plant::Agent,
            Plant::Dangling,
            Plant::DirAtAgent,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (a, l) = (agent(SCRIPT), layout(dir.path()));
            let (b0, elsewhere) = (dir.path().join("b0"), dir.path().join("elsewhere"));
            private_dir(&b0);
            private_dir(&elsewhere);
            let ln = |target: &Path, at: &Path| {
                fs::create_dir_all(at.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, at).unwrap();
            };
            let (culprit, complaint) = match case {
                Plant::AgentDir => {
                    plant(&elsewhere.join(SUB).join("mtr-agent"));
                    ln(&elsewhere, &b0.join("agent"));
                    (b0.join("agent"), "is a symbolic link")
                }
                Plant::BuildDir => {
                    plant(&elsewhere.join("mtr-agent"));
                    ln(&elsewhere, &b0.join("agent").join(SUB));
                    (b0.join("agent").join(SUB), "is a symbolic link")
                }
                Plant::Agent => {
                    plant(&elsewhere.join("mtr-agent"));
                    let at = b0.join("agent").join(SUB).join("mtr-agent");
                    ln(&elsewhere.join("mtr-agent"), &at);
                    (at, "is a symbolic link")
                }
                Plant::Dangling => {
                    let at = b0.join("agent").join(SUB).join("mtr-agent");
                    ln(&elsewhere.join("new"), &at);
                    (at, "is a symbolic link")
                }
                Plant::DirAtAgent => {
                    let at = b0.join("agent").join(SUB).join("mtr-agent");
                    plant(&at.join("mtr-agent"));
                    (at, "is not a regular file")
                }
            };
            let culprit = culprit.display().to_string();
            let before = (tree(&elsewhere), tree(&b0));

            let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
            assert_eq!(status, EXIT_MISSING, "{culprit}: {stdout}{stderr}");
            assert!(
                !stdout.contains("planted"),
                "{culprit}: the planted agent ran"
            );
            let report = LaunchReport::parse(&stderr);
            assert_eq!(report.unsafe_bases, [(0, culprit.clone())], "{stderr}");
            assert!(report.runs.is_empty(), "{stderr}");
            assert_eq!(next_base(&report, &[], 3), Some(1));

            let (status, stdout, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
            assert_eq!(status, 92, "{culprit}: {stdout}{stderr}");
            assert!(
                stderr.contains(&format!("{culprit} {complaint}")),
                "{culprit}: {stderr}"
            );
            assert_eq!(
                (tree(&elsewhere), tree(&b0)),
                before,
                "{culprit}: written through"
            );
        }
    }

    #[test]
    fn foreign_directories_and_agents_under_the_base_are_refused() {
        use std::os::unix::fs::{chown, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let (a, l) = (agent(SCRIPT), layout(dir.path()));
        let b0 = dir.path().join("b0");
        private_dir(&b0);
        // `<base>/agent` of someone else's, holding an agent of theirs.
        let theirs = b0.join("agent");
        plant(&theirs.join(SUB).join("mtr-agent"));
        for p in [
            theirs.clone(),
            theirs.join(SUB),
            theirs.join(SUB).join("mtr-agent"),
        ] {
            chown(&p, Some(65534), Some(65534)).ok();
        }
        if fs::metadata(&theirs).unwrap().uid() != 65534 {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        let before = tree(&theirs);
        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, EXIT_MISSING, "{stdout}{stderr}");
        assert!(!stdout.contains("planted"), "their agent ran");
        let report = LaunchReport::parse(&stderr);
        assert_eq!(
            report.unsafe_bases,
            [(0, theirs.display().to_string())],
            "{stderr}"
        );
        let (status, _, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 92, "{stderr}");
        assert!(
            stderr.contains(&format!("{} is not a directory owned by", theirs.display())),
            "{stderr}"
        );
        assert_eq!(tree(&theirs), before, "their directory was written");

        // Our directories, their agent: not run either (a reinstall replaces it).
        chown(&theirs, Some(0), Some(0)).unwrap();
        chown(theirs.join(SUB), Some(0), Some(0)).unwrap();
        let agent_path = theirs.join(SUB).join("mtr-agent");
        let (status, stdout, stderr) = run(&launch_script(&a, &l, SERVE), b"");
        assert_eq!(status, EXIT_MISSING, "{stdout}{stderr}");
        assert!(!stdout.contains("planted"), "their agent ran");
        assert_eq!(
            LaunchReport::parse(&stderr).unsafe_bases,
            [(0, agent_path.display().to_string())],
            "{stderr}"
        );
        let (status, _, stderr) = run(&install_script(&a, &l, 0), SCRIPT);
        assert_eq!(status, 0, "{stderr}");
        assert_eq!(fs::read(&agent_path).unwrap(), SCRIPT);
        assert_eq!(fs::metadata(&agent_path).unwrap().uid(), 0);
        for p in [theirs.clone(), theirs.join(SUB), agent_path] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
    }

    #[test]
    fn install_failures_name_the_host_and_what_to_do() {
        let l = Layout::default();
        let failed = |status: i32, stderr: &str| match install_outcome(
            "u@gpu7:22",
            &l,
            0,
            status,
            "",
            stderr,
        ) {
            Err(Install::Failed(e)) => format!("{e:#}"),
            Err(Install::Unusable(why)) => panic!("unusable: {why}"),
            Ok(path) => panic!("installed at {path}"),
        };
        let msg = failed(
            EXIT_NO_SHA256,
            "mtr-install: no sha256sum, shasum, busybox or openssl to verify the upload with\n",
        );
        for part in ["u@gpu7:22", "install coreutils", "sync: rsync", "never run"] {
            assert!(msg.contains(part), "{msg}");
        }
        let msg = failed(
            EXIT_CORRUPT,
            "mtr-install: the upload arrived corrupted (3 bytes with SHA-256 ab, where ...); \
             nothing was installed at /p/mtr-agent\n",
        );
        for part in [
            "u@gpu7:22",
            "~/.cache/mtr",
            "nothing was installed",
            "3 bytes",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        assert!(matches!(
            install_outcome("h", &l, 0, 92, "", "mtr-install: /x/agent is a symbolic link\n"),
            Err(Install::Unusable(why)) if why == "/x/agent is a symbolic link"
        ));
        assert_eq!(
            install_outcome("h", &l, 0, 0, "/p/mtr-agent\n", "").ok(),
            Some("/p/mtr-agent".to_string())
        );
    }

    #[test]
    fn other_systems_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = Agent {
            arch: "riscv64",
            ..agent(SCRIPT)
        };
        let (status, _, stderr) = run(&launch_script(&a, &layout(dir.path()), SERVE), b"");
        assert_eq!(status, EXIT_UNSUPPORTED, "{stderr}");
        let report = LaunchReport::parse(&stderr);
        let (os, arch) = report.unsupported.unwrap();
        assert_eq!(
            os,
            String::from_utf8(Command::new("uname").arg("-s").output().unwrap().stdout)
                .unwrap()
                .trim()
        );
        assert_eq!(
            arch,
            String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
                .unwrap()
                .trim()
        );
    }

    #[test]
    fn default_bases_follow_xdg_and_home() {
        let base = |i: usize, env: &[(&str, &str)]| {
            let script = format!("{}mtr_base {i}", Layout::default().functions());
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(script)
                .env_clear()
                .env("PATH", "/usr/bin:/bin");
            for (k, v) in env {
                cmd.env(k, v);
            }
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        let uid = unsafe { libc::getuid() };
        assert_eq!(base(0, &[("HOME", "/h")]), "/h/.cache/mtr\n");
        assert_eq!(
            base(0, &[("HOME", "/h"), ("XDG_CACHE_HOME", "/c")]),
            "/c/mtr\n"
        );
        assert_eq!(
            base(0, &[("HOME", "/h"), ("XDG_CACHE_HOME", "rel")]),
            "/h/.cache/mtr\n"
        );
        assert_eq!(base(0, &[]), "");
        assert_eq!(base(1, &[]), "");
        assert_eq!(
            base(1, &[("XDG_RUNTIME_DIR", "/run/user/7")]),
            "/run/user/7/mtr\n"
        );
        assert_eq!(base(2, &[]), format!("/dev/shm/mtr-{uid}\n"));
        assert_eq!(base(3, &[]), format!("/tmp/mtr-{uid}\n"));
    }

    #[test]
    fn launch_report_parses_events_and_keeps_other_lines() {
        let report = LaunchReport::parse(
            "bash: warning: setlocale\nmtr-launch: run 0 /h/.cache/mtr/agent/x/mtr-agent\n\
             sh: 1: /h/.cache/mtr/agent/x/mtr-agent: Permission denied\n\
             mtr-launch: noexec 0 /h/.cache/mtr/agent/x/mtr-agent\n\
             mtr-launch: unsafe 3 /tmp/mtr-1000\nmtr-launch: missing\n",
        );
        assert_eq!(
            report.runs,
            [(0, "/h/.cache/mtr/agent/x/mtr-agent".to_string())]
        );
        assert_eq!(report.noexec.len(), 1);
        assert_eq!(report.unsafe_bases, [(3, "/tmp/mtr-1000".to_string())]);
        assert!(report.missing);
        assert_eq!(report.failed_run(), None);
        assert_eq!(report.other.len(), 2);
        assert_eq!(next_base(&report, &[], 4), Some(1));
        assert_eq!(next_base(&report, &[1, 2], 4), None);
    }

    #[test]
    fn the_agents_debug_lines_are_not_its_error() {
        assert_eq!(
            log_lines("mtr-agent: [   1.0 ms] sink: index\nmtr-agent: disk full\n"),
            "mtr-agent: disk full\n"
        );
        assert_eq!(log_lines("mtr-agent: [   1.0 ms] sink: index"), "");
    }

    #[test]
    fn agent_stderr_is_what_follows_the_launch_lines() {
        assert_eq!(
            agent_stderr("conda: base\nmtr-launch: run 0 /p\ndisk full\n"),
            "disk full\n"
        );
        assert_eq!(agent_stderr("mtr-launch: run 0 /p"), "");
        assert_eq!(agent_stderr("plain\n"), "plain\n");
    }

    #[test]
    fn noise_without_path_line_is_all_noise() {
        assert_eq!(split_noise(b"Welcome\n"), (None, "Welcome\n".to_string()));
        assert_eq!(
            split_noise(b"Welcome\nMTR-PATH=2 /dev/shm/mtr-0/a b/mtr-agent\n"),
            (
                Some((2, "/dev/shm/mtr-0/a b/mtr-agent".to_string())),
                "Welcome\n".to_string()
            )
        );
    }
}

/// Against a real sshd on loopback (needs root, like every e2e test), with a stand-in agent: a
/// shell script that greets, answers the handshake with canned frames, then waits for EOF.
#[cfg(test)]
mod live_tests {
    use super::tests::SERVE;
    use super::*;
    use crate::ssh::test_support::connect;
    use protocol::chunker::Chunker;
    use protocol::wire::{FromSink, ToSink, PROTOCOL_VERSION};
    use testkit::sshd::Server;

    const VERSION: &str = "9.9.9-test";
    const HASH: &str = "feedfacecafebeef";
    const REMOTE_DIR: &str = "~/proj";

    fn octal(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\{b:03o}")).collect()
    }

    fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        w.msg(msg).unwrap();
        w.flush().unwrap();
        drop(w);
        buf
    }

    /// A stand-in agent that reports `version`, then exits `code` after EOF, saying `stderr`.
    fn fake_agent(version: &str, code: i32, stderr: &str) -> Vec<u8> {
        let hello = frame(&ToSink::Hello {
            protocol: PROTOCOL_VERSION,
            version: VERSION.into(),
            root: REMOTE_DIR.into(),
            chunker: Chunker::default().id(),
        });
        let ack = frame(&FromSink::HelloAck {
            protocol: PROTOCOL_VERSION,
            version: version.into(),
            root: "/abs/proj".into(),
            token: None,
            dirty: vec![],
        });
        format!(
            "#!/bin/sh\n[ \"$1\" = serve ] || exit 2\nprintf '{}'\nhead -c {} >/dev/null\n\
             printf '{}'\ncat >/dev/null\necho '{stderr}' >&2\nexit {code}\n",
            octal(MAGIC),
            hello.len(),
            octal(&ack)
        )
        .into_bytes()
    }

    fn agent(bytes: &[u8]) -> Agent<'_> {
        Agent {
            bytes,
            version: VERSION,
            hash: HASH,
            os: "linux",
            arch: "x86_64",
        }
    }

    fn cache_path(server: &Server) -> std::path::PathBuf {
        server.remote_path(format!(
            ".cache/mtr/agent/{VERSION}-linux-x86_64-{HASH}/mtr-agent"
        ))
    }

    #[test]
    fn the_carried_agent_installs_and_greets() {
        let server = Server::builder()
            .bashrc("echo Welcome to the cluster")
            .start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let mut session = start(&ssh, "~/proj", true).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(session.ack.version, embedded::VERSION);
        assert_eq!(
            session.ack.root,
            server.remote_path("proj").display().to_string()
        );
        assert!(session.remote_path.ends_with(&format!(
            "/.cache/mtr/agent/{}-linux-x86_64-{}/mtr-agent",
            embedded::VERSION,
            embedded::AGENT_HASH
        )));
        protocol::source::bye(&mut session.writer).unwrap();
        session.finish().unwrap_or_else(|e| panic!("{e:#}"));
    }

    #[test]
    fn installs_then_reuses_the_agent_past_login_noise() {
        let server = Server::builder()
            .bashrc("echo Welcome to the cluster; echo conda: base >&2")
            .start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let bytes = fake_agent(VERSION, 0, "bye");
        let session = start_with(&ssh, REMOTE_DIR, &agent(&bytes), &Layout::default(), SERVE)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        let path = cache_path(&server);
        assert_eq!(session.remote_path, path.display().to_string());
        assert_eq!(session.ack.version, VERSION);
        assert_eq!(session.ack.root, "/abs/proj");
        session.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let inode = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().ino()
        };
        let first = inode(&path);

        let session =
            start_with(&ssh, REMOTE_DIR, &agent(&bytes), &Layout::default(), SERVE).unwrap();
        session.finish().unwrap();
        assert_eq!(inode(&path), first, "the installed agent was reused");
    }

    #[test]
    fn agent_of_another_version_is_replaced_once() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let stale = fake_agent("0.0.1", 0, "");
        let msg = match start_with(&ssh, REMOTE_DIR, &agent(&stale), &Layout::default(), SERVE) {
            Ok(_) => panic!("an agent of another version was used"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            msg.contains("version mismatch") && msg.contains("even after reinstalling"),
            "{msg}"
        );
        assert!(
            msg.contains(&cache_path(&server).display().to_string()),
            "{msg}"
        );

        let good = fake_agent(VERSION, 0, "");
        let session =
            start_with(&ssh, REMOTE_DIR, &agent(&good), &Layout::default(), SERVE).unwrap();
        session.finish().unwrap();
        assert_eq!(std::fs::read(cache_path(&server)).unwrap(), good);
    }

    #[test]
    fn agent_that_never_greets_is_reinstalled() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        server.write_remote(
            cache_path(&server).strip_prefix(server.home()).unwrap(),
            "#!/bin/sh\necho corrupt >&2\nexit 1\n",
        );
        server.run_as_user_ok(&format!("chmod 700 {}", cache_path(&server).display()));
        let good = fake_agent(VERSION, 0, "");
        let session = start_with(&ssh, REMOTE_DIR, &agent(&good), &Layout::default(), SERVE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        session.finish().unwrap();
        assert_eq!(std::fs::read(cache_path(&server)).unwrap(), good);
    }

    #[test]
    fn a_corrupted_upload_is_refused_and_a_good_one_then_installs() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let good = fake_agent(VERSION, 0, "");
        let a = agent(&good);
        // What a corrupting link would deliver: the right size, one bit off.
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        let msg = match upload(&ssh, &a, &Layout::default(), 0, &bad) {
            Err(Install::Failed(e)) => format!("{e:#}"),
            Err(Install::Unusable(why)) => panic!("unusable: {why}"),
            Ok(path) => panic!("installed a corrupted agent at {path}"),
        };
        assert!(msg.contains("arrived corrupted"), "{msg}");
        assert!(msg.contains("nothing was installed"), "{msg}");
        assert!(msg.contains(ssh.display()), "{msg}");
        let path = cache_path(&server);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "a corrupted agent was installed"
        );
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");

        let session = start_with(&ssh, REMOTE_DIR, &a, &Layout::default(), SERVE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        session.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }

    /// Removes a directory (the `/dev/shm` fallback base a test makes) when dropped.
    struct RemoveOnDrop(String);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_symlink_planted_in_the_cache_is_never_followed() {
        let server = Server::start();
        let uid = server.run_as_user_ok("id -u").trim().to_string();
        let shm = format!("/dev/shm/mtr-{uid}");
        let _cleanup = RemoveOnDrop(shm.clone());
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        // `~/.cache/mtr/agent` leads elsewhere, to an agent of this very build's path.
        let sub = format!("{VERSION}-linux-x86_64-{HASH}");
        let planted = "#!/bin/sh\ntouch \"$HOME/planted-ran\"\nexit 1\n";
        server.write_remote(format!("elsewhere/{sub}/mtr-agent"), planted);
        server.run_as_user_ok(&format!(
            "chmod 700 ~/elsewhere/{sub}/mtr-agent && mkdir -p ~/.cache/mtr && \
             chmod 700 ~/.cache/mtr && ln -s ~/elsewhere ~/.cache/mtr/agent"
        ));
        let good = fake_agent(VERSION, 0, "");
        let session = start_with(&ssh, REMOTE_DIR, &agent(&good), &Layout::default(), SERVE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            session.remote_path.starts_with(&format!("{shm}/agent/")),
            "{}",
            session.remote_path
        );
        session.finish().unwrap();
        assert!(
            !server.remote_path("planted-ran").exists(),
            "the planted agent ran"
        );
        let elsewhere = server.remote_path(format!("elsewhere/{sub}"));
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            1,
            "written through the symlink"
        );
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("mtr-agent")).unwrap(),
            planted
        );
    }

    #[test]
    fn noexec_cache_falls_back_to_a_private_dir() {
        let server = Server::start();
        let uid = server.run_as_user_ok("id -u").trim().to_string();
        let shm = format!("/dev/shm/mtr-{uid}");
        let _cleanup = RemoveOnDrop(shm.clone());
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        // A file that cannot be executed fails like one on a noexec mount (EACCES, 126).
        let rel = cache_path(&server);
        server.write_remote(rel.strip_prefix(server.home()).unwrap(), "not runnable");
        let good = fake_agent(VERSION, 0, "");
        let session = start_with(&ssh, REMOTE_DIR, &agent(&good), &Layout::default(), SERVE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            session.remote_path.starts_with(&format!("{shm}/agent/")),
            "{}",
            session.remote_path
        );
        session.finish().unwrap();
        let meta = std::fs::symlink_metadata(&shm).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(meta.uid().to_string(), uid);
    }

    #[test]
    fn agent_exit_status_and_stderr_reach_finish() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let bytes = fake_agent(VERSION, 3, "disk full");
        let session =
            start_with(&ssh, REMOTE_DIR, &agent(&bytes), &Layout::default(), SERVE).unwrap();
        let msg = format!("{:#}", session.finish().unwrap_err());
        assert!(msg.contains("exited with status 3: disk full"), "{msg}");
        assert!(msg.contains(&ssh.display().to_string()), "{msg}");

        let session =
            start_with(&ssh, REMOTE_DIR, &agent(&bytes), &Layout::default(), SERVE).unwrap();
        assert_eq!(
            session.abort(),
            " (mtr-agent exited with status 3: disk full)"
        );
    }

    #[test]
    fn other_architectures_point_to_rsync() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let ssh = connect(&server, dir.path());
        let bytes = fake_agent(VERSION, 0, "");
        let a = Agent {
            arch: "aarch64",
            ..agent(&bytes)
        };
        let msg = match start_with(&ssh, REMOTE_DIR, &a, &Layout::default(), SERVE) {
            Ok(_) => panic!("started an agent for another architecture"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.starts_with("no mtr-agent for linux-x86_64"), "{msg}");
        assert!(msg.contains("sync: rsync"), "{msg}");
    }
}
