//! Batch mode (`--no-tty`, or stdin/stdout not terminals): no PTY; the remote stdout and stderr
//! reach the local ones byte for byte, local stdin is forwarded up to its EOF, and mtr itself
//! writes nothing on stdout. libssh2 cannot send SSH signal requests, so `mtr-agent run`
//! supervises the command (see `mtr-agent/src/run.rs`) and mtr talks to it in
//! [`ToRunner`] frames on the channel's stdin: the command, its input, signals, heartbeats.
//!
//! Signals: the first SIGINT, SIGTERM or SIGHUP is delivered to the remote process group as
//! is, and mtr keeps waiting for the command's own exit status. A second one asks the agent to
//! stop the command (SIGTERM, SIGKILL after 3 s) and mtr waits a little longer for its status;
//! a third, or no status by then, makes mtr leave at once (128+N). Whatever way mtr leaves,
//! the agent sees its input end and stops the command, and mtr pings every second so a
//! half-open connection is noticed too (the agent gives up after 10 s of silence).
//!
//! Threads: the pump ([`super::pump`]) does all channel I/O; one thread reads stdin, one
//! waits for signals, and one per output stream writes to the local stdout/stderr so a slow
//! reader of mtr's output never stalls the heartbeats (the channel window holds the remote back
//! instead). If the local stdout closes (`mtr ... | head`), the remote group gets SIGPIPE, as
//! a local writer to a closed pipe would.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::codec::msg_frame;
use protocol::wire::{Bytes, ToRunner, MAGIC};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::pump::{self, End, Flow, Handler, Outbox, Pump, Stream};
use super::RemoteCommand;
use crate::agent_install;
use crate::ssh::Ssh;

/// How often mtr tells the agent it is alive.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Silence after which the agent stops the command.
const HEARTBEAT_MS: u32 = 10_000;
/// After asking the agent to stop the command: how long to wait for its status. The agent
/// sends SIGKILL 3 s after SIGTERM.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Output queued for the local stdout (or stderr) before the pump stops reading that stream.
const OUTPUT_BACKLOG: usize = 1 << 20;
/// Most stderr accepted before the agent's second greeting (login-shell noise).
const NOISE_LIMIT: usize = 64 << 10;
/// Unacknowledged data older than this breaks the connection (the pings keep data flowing).
const TCP_USER_TIMEOUT_MS: u32 = 30_000;
/// How long the server may take to close the channel after the command's EOF.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` without a PTY; returns the remote exit code (128+N when signal N killed it, or
/// when mtr left on signal N before the command ended).
pub fn run(ssh: &Ssh, cmd: &RemoteCommand) -> Result<i32> {
    let host = ssh.display().to_string();
    let runner = agent_install::start_runner(ssh)?;
    log::debug!("running the command under {} on {host}", runner.remote_path);
    set_user_timeout(ssh);
    let mut pump = Pump::new(ssh, runner.channel)?;
    let outbox = pump.outbox();
    let stdout = Output::spawn(Stream::Stdout, outbox.clone());
    let stderr = Output::spawn(Stream::Stderr, outbox.clone());
    stdout.write(runner.stdout);
    outbox.send_urgent(frame(&ToRunner::Start {
        script: cmd.script(),
        env: Vec::new(),
        heartbeat_ms: HEARTBEAT_MS,
    }));
    let signals = Signals::start(outbox.clone()).context("cannot set up signal handling")?;
    {
        let outbox = outbox.clone();
        thread::spawn(move || forward_stdin(outbox));
    }

    let mut batch = Batch {
        stdout,
        stderr,
        noise: Some(Vec::new()),
        signals: &signals.received,
        count: 0,
        last_signal: 0,
        give_up_at: None,
        last_ping: Instant::now(),
        pipe_sent: false,
    };
    let end = pump.run(&mut batch);
    let result = match end {
        Ok(End::Eof) => pump
            .exit_status(CLOSE_TIMEOUT)
            .with_context(|| format!("lost the command's exit status from {host}")),
        Ok(End::Stopped) => {
            pump.abandon();
            Ok(128 + batch.last_signal)
        }
        Err(e) => {
            pump.abandon();
            Err(e.context(format!(
                "the connection to {host} broke while the command ran; the server stops \
                 the command when it notices"
            )))
        }
    };
    batch.finish();
    signals.stop();
    result
}

fn frame(msg: &ToRunner) -> Vec<u8> {
    msg_frame(msg).expect("runner messages are small")
}

/// Reads the local stdin to its end into `Stdin` frames, then `StdinEof`.
fn forward_stdin(outbox: Outbox) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !outbox.send(frame(&ToRunner::Stdin(Bytes(buf[..n].to_vec())))) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("reading stdin: {e}; treating it as its end");
                break;
            }
        }
    }
    outbox.send(frame(&ToRunner::StdinEof));
}

/// Breaks the connection when what mtr sends goes unacknowledged for long (a dead server or
/// network), so a half-open connection ends the run instead of hanging it.
fn set_user_timeout(ssh: &Ssh) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let ms: libc::c_uint = TCP_USER_TIMEOUT_MS;
        // SAFETY: setsockopt reads `size_of::<c_uint>()` bytes from a live local.
        let rc = unsafe {
            libc::setsockopt(
                ssh.socket().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&ms as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            log::debug!("TCP_USER_TIMEOUT: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ssh, TCP_USER_TIMEOUT_MS);
}

/// SIGINT, SIGTERM and SIGHUP, caught for the run and passed to the pump as they arrive.
struct Signals {
    received: Receiver<i32>,
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl Signals {
    fn start(outbox: Outbox) -> io::Result<Signals> {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let handle = signals.handle();
        let (tx, received) = mpsc::channel();
        let thread = thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
                outbox.wake();
            }
        });
        Ok(Signals {
            received,
            handle,
            thread,
        })
    }

    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// A local output stream written by a thread of its own.
struct Output {
    tx: Option<Sender<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Output {
    /// The local stream matching `stream`; `outbox` wakes the pump when room frees up.
    fn spawn(stream: Stream, outbox: Outbox) -> Output {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queued, broken) = (queued.clone(), broken.clone());
            thread::spawn(move || {
                let (stdout, stderr) = (io::stdout(), io::stderr());
                let fd = match stream {
                    Stream::Stdout => stdout.as_fd(),
                    Stream::Stderr => stderr.as_fd(),
                };
                for bytes in rx {
                    if !broken.load(Ordering::SeqCst) {
                        if let Err(e) = pump::write_all(fd, &bytes) {
                            log::debug!("writing to the local {stream:?}: {e}");
                            broken.store(true, Ordering::SeqCst);
                        }
                    }
                    queued.fetch_sub(bytes.len(), Ordering::SeqCst);
                    outbox.wake();
                }
            })
        };
        Output {
            tx: Some(tx),
            queued,
            broken,
            thread: Some(thread),
        }
    }

    fn write(&self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.queued.fetch_add(bytes.len(), Ordering::SeqCst);
        if let Some(tx) = &self.tx {
            let _ = tx.send(bytes);
        }
    }

    fn has_room(&self) -> bool {
        self.queued.load(Ordering::SeqCst) < OUTPUT_BACKLOG
    }

    /// Writes everything queued, then ends the thread.
    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The batch run's side of the pump.
struct Batch<'a> {
    stdout: Output,
    stderr: Output,
    /// Stderr before the agent's second greeting, while it is awaited.
    noise: Option<Vec<u8>>,
    signals: &'a Receiver<i32>,
    /// Terminating signals received so far, and the last one.
    count: usize,
    last_signal: i32,
    /// After asking the agent to stop the command: when to stop waiting for it.
    give_up_at: Option<Instant>,
    last_ping: Instant,
    pipe_sent: bool,
}

impl Batch<'_> {
    fn finish(&mut self) {
        if let Some(noise) = self.noise.take() {
            // The agent never greeted on stderr: what came is all there is to show.
            self.stderr.write(noise);
        }
        self.stdout.finish();
        self.stderr.finish();
    }

    /// Holds stderr until the agent's greeting there; what precedes it is the login shell's
    /// and the launch script's, logged, not shown.
    fn stderr_output(&mut self, data: &[u8]) {
        let Some(noise) = self.noise.as_mut() else {
            self.stderr.write(data.to_vec());
            return;
        };
        noise.extend_from_slice(data);
        if let Some(at) = noise.windows(MAGIC.len()).position(|w| w == MAGIC) {
            let rest = noise.split_off(at + MAGIC.len());
            noise.truncate(at);
            let text = String::from_utf8_lossy(noise);
            let shell: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("mtr-launch: "))
                .collect();
            if !shell.is_empty() {
                log::debug!("login shell stderr: {:?}", shell.join("\n"));
            }
            self.noise = None;
            self.stderr.write(rest);
        } else if noise.len() > NOISE_LIMIT {
            log::debug!("no agent greeting on stderr; passing it through");
            let all = self.noise.take().unwrap_or_default();
            self.stderr.write(all);
        }
    }
}

impl Handler for Batch<'_> {
    fn accepts(&mut self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout.has_room(),
            Stream::Stderr => self.stderr.has_room(),
        }
    }

    fn output(&mut self, stream: Stream, data: &[u8]) -> Result<()> {
        match stream {
            Stream::Stdout => self.stdout.write(data.to_vec()),
            Stream::Stderr => self.stderr_output(data),
        }
        Ok(())
    }

    fn tick(&mut self, outbox: &Outbox) -> Result<Flow> {
        while let Ok(sig) = self.signals.try_recv() {
            self.count += 1;
            self.last_signal = sig;
            match self.count {
                1 => {
                    log::debug!("signal {sig}: passing it to the remote command");
                    outbox.send_urgent(frame(&ToRunner::Signal(sig)));
                }
                2 => {
                    log::debug!("signal {sig} again: stopping the remote command");
                    outbox.send_urgent(frame(&ToRunner::Kill));
                    self.give_up_at = Some(Instant::now() + KILL_WAIT);
                }
                _ => return Ok(Flow::Stop),
            }
        }
        if self.give_up_at.is_some_and(|at| Instant::now() >= at) {
            return Ok(Flow::Stop);
        }
        if !self.pipe_sent && self.stdout.broken.load(Ordering::SeqCst) {
            self.pipe_sent = true;
            outbox.send_urgent(frame(&ToRunner::Signal(libc::SIGPIPE)));
        }
        if self.last_ping.elapsed() >= PING_EVERY {
            self.last_ping = Instant::now();
            outbox.send_urgent(frame(&ToRunner::Ping));
        }
        Ok(Flow::Continue)
    }
}

/// Runs `cmd` on a plain exec channel, for a server where `mtr-agent` cannot run
/// ([`agent_install::AgentUnavailable`]): stdout and stderr byte for byte, stdin forwarded up
/// to its EOF, the exit status passed through (128+N when signal N killed the command).
///
/// Without the agent nothing can signal the remote command: libssh2 cannot send SSH signal
/// requests. Ctrl+C (SIGINT, SIGTERM, SIGHUP) only closes the channel, and mtr leaves with
/// 128+N; the remote command then sees its output pipes close (SIGPIPE at its next write) but
/// gets no signal, so a quiet one may run on. What the login shell prints on stdout is not told
/// apart from the command's output either.
pub fn run_plain(ssh: &Ssh, cmd: &RemoteCommand) -> Result<i32> {
    let host = ssh.display().to_string();
    log::debug!(
        "running the command on {host} without mtr-agent: Ctrl+C can only close the channel, \
         not signal the remote process group (libssh2 cannot send signals)"
    );
    set_user_timeout(ssh);
    let mut pump = Pump::new(ssh, ssh.exec(&cmd.script())?)?;
    let outbox = pump.outbox();
    let signals = Signals::start(outbox.clone()).context("cannot set up signal handling")?;
    let mut plain = Plain {
        stdout: Output::spawn(Stream::Stdout, outbox.clone()),
        stderr: Output::spawn(Stream::Stderr, outbox.clone()),
        signals: &signals.received,
        last_signal: 0,
    };
    thread::spawn(move || forward_raw_stdin(outbox));
    let end = pump.run(&mut plain);
    let result = match end {
        Ok(End::Eof) => pump
            .exit_status(CLOSE_TIMEOUT)
            .with_context(|| format!("lost the command's exit status from {host}")),
        Ok(End::Stopped) => {
            pump.abandon();
            Ok(128 + plain.last_signal)
        }
        Err(e) => {
            pump.abandon();
            Err(e.context(format!(
                "the connection to {host} broke while the command ran"
            )))
        }
    };
    plain.stdout.finish();
    plain.stderr.finish();
    drop(plain);
    signals.stop();
    result
}

/// Reads the local stdin to its end onto the channel, then sends EOF.
fn forward_raw_stdin(outbox: Outbox) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !outbox.send(buf[..n].to_vec()) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("reading stdin: {e}; treating it as its end");
                break;
            }
        }
    }
    outbox.send_eof();
}

/// A plain run's side of the pump.
struct Plain<'a> {
    stdout: Output,
    stderr: Output,
    signals: &'a Receiver<i32>,
    /// The signal that ended the run (SIGPIPE when the local stdout closed).
    last_signal: i32,
}

impl Handler for Plain<'_> {
    fn accepts(&mut self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout.has_room(),
            Stream::Stderr => self.stderr.has_room(),
        }
    }

    fn output(&mut self, stream: Stream, data: &[u8]) -> Result<()> {
        match stream {
            Stream::Stdout => self.stdout.write(data.to_vec()),
            Stream::Stderr => self.stderr.write(data.to_vec()),
        }
        Ok(())
    }

    fn tick(&mut self, _outbox: &Outbox) -> Result<Flow> {
        if let Ok(sig) = self.signals.try_recv() {
            // All mtr can do without the agent: close the channel (see `run_plain`).
            log::debug!("signal {sig}: closing the channel; the remote command gets no signal");
            self.last_signal = sig;
            return Ok(Flow::Stop);
        }
        if self.stdout.broken.load(Ordering::SeqCst) {
            self.last_signal = libc::SIGPIPE;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}
