//! Interactive mode: the command runs on a remote PTY (the local `TERM`, size and tty modes)
//! while the local terminal is in raw mode, so keys — Ctrl+C included, as the byte 0x03 — reach
//! the remote program through its PTY, its output (stdout and stderr merged by the PTY) comes
//! back as it is written, and window resizes follow.
//!
//! libssh2 serialises everything on one session lock, and a blocking read would hold it while
//! waiting, so a single loop drives the session in non-blocking mode: it polls the SSH socket,
//! stdin and the signal pipe ([`terminal::Signals`]), then moves whatever can move, until the
//! remote side closes the channel. The terminal is restored on every way out (guard, panic
//! hook, terminating signals), and the session is put back in blocking mode.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use ssh2::{BlockDirections, Channel, Session};

use super::terminal::{self, RawMode, Signals, Size};
use super::RemoteCommand;
use crate::ssh::{signal_number, Ssh};

/// Bytes read from stdin and not yet accepted by the channel, past which stdin waits.
const STDIN_BACKLOG: usize = 64 * 1024;
/// Upper bound on one poll, a safety net: every wakeup source is polled.
const POLL_TIMEOUT: Timespec = Timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

/// Runs `cmd` on a PTY with the local terminal in raw mode; returns the remote exit code
/// (128+N when signal N killed it, or when signal N made mtr stop waiting).
pub fn run(ssh: &Ssh, cmd: &RemoteCommand) -> Result<i32> {
    let host = ssh.display();
    let size = terminal::size();
    let modes = terminal::pty_modes(terminal::current_modes().as_ref());
    let mut channel = ssh.channel()?;
    channel
        .request_pty(
            &terminal::term(),
            Some(modes),
            Some((size.cols, size.rows, size.width_px, size.height_px)),
        )
        .with_context(|| {
            format!("{host} refused a terminal (PTY) for the command; try again with --no-tty")
        })?;
    channel
        .exec(&cmd.script())
        .with_context(|| format!("cannot start the command on {host}"))?;

    let signals = Signals::register().context("cannot set up signal handling")?;
    let raw = RawMode::enter().context("cannot put the local terminal in raw mode")?;
    let non_blocking = NonBlocking::new(ssh.session());
    let end = Pump::new(ssh, &mut channel, &signals, size).run();
    drop(raw);
    match end {
        Ok(End::Closed) => {
            drop(non_blocking);
            exit_code(&mut channel)
                .with_context(|| format!("cannot get the command's exit status from {host}"))
        }
        Ok(End::Signal(sig)) => {
            abandon(channel, non_blocking);
            Ok(128 + sig)
        }
        Err(e) => {
            abandon(channel, non_blocking);
            Err(e.context(format!("interactive session with {host} failed")))
        }
    }
}

/// Lets go of a channel without waiting for the server, which may be gone: dropped while the
/// session is non-blocking, the channel does not wait for the server's close, and the remote
/// PTY is hung up when the connection closes.
fn abandon(channel: Channel, non_blocking: NonBlocking<'_>) {
    drop(channel);
    drop(non_blocking);
}

/// The remote status once the channel reached EOF: waits for the close that follows.
fn exit_code(channel: &mut Channel) -> Result<i32> {
    channel.wait_close()?;
    if let Some(sig) = channel.exit_signal().ok().and_then(|s| s.exit_signal) {
        return Ok(128 + signal_number(&sig));
    }
    Ok(channel.exit_status()?)
}

/// Keeps the session non-blocking while it lives.
struct NonBlocking<'a>(&'a Session);

impl<'a> NonBlocking<'a> {
    fn new(session: &'a Session) -> NonBlocking<'a> {
        session.set_blocking(false);
        NonBlocking(session)
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        self.0.set_blocking(true);
    }
}

/// How the pump stopped.
#[derive(Debug)]
enum End {
    /// The remote side sent EOF: the command is over.
    Closed,
    /// A terminating signal arrived for mtr.
    Signal(i32),
}

/// The loop moving bytes between the local terminal and the channel.
struct Pump<'a> {
    session: &'a Session,
    socket: BorrowedFd<'a>,
    channel: &'a mut Channel,
    signals: &'a Signals,
    /// Read from stdin, not yet written to the channel.
    to_remote: Vec<u8>,
    stdin_open: bool,
    eof_sent: bool,
    /// The size the remote PTY was last told.
    size: Size,
    /// A size change not yet accepted by libssh2 (non-blocking requests may need retries).
    resize: Option<Size>,
}

impl<'a> Pump<'a> {
    fn new(ssh: &'a Ssh, channel: &'a mut Channel, signals: &'a Signals, size: Size) -> Pump<'a> {
        Pump {
            session: ssh.session(),
            socket: ssh.socket(),
            channel,
            signals,
            to_remote: Vec::new(),
            stdin_open: true,
            eof_sent: false,
            size,
            resize: None,
        }
    }

    fn run(mut self) -> Result<End> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let pending = self.signals.take();
            if let Some(sig) = pending.terminate {
                return Ok(End::Signal(sig));
            }
            if pending.resized {
                let now = terminal::size();
                if now != self.size {
                    self.resize = Some(now);
                }
            }
            // Every call that may read the socket comes before the reads below, so no packet
            // is left queued inside libssh2 when we go back to poll.
            self.send_resize()?;
            self.send_input()?;
            if self.forward_output(&mut buf)? {
                return Ok(End::Closed);
            }
            self.wait(&mut buf)?;
        }
    }

    fn send_resize(&mut self) -> Result<()> {
        let Some(s) = self.resize else {
            return Ok(());
        };
        match self
            .channel
            .request_pty_size(s.cols, s.rows, Some(s.width_px), Some(s.height_px))
        {
            Ok(()) => {
                self.size = s;
                self.resize = None;
            }
            Err(e) if would_block(&e) => {}
            Err(e) => {
                // A server that refuses a resize still runs the command; keep going.
                log::debug!("window size change refused: {e}");
                self.resize = None;
            }
        }
        Ok(())
    }

    fn send_input(&mut self) -> Result<()> {
        while !self.to_remote.is_empty() {
            match self.channel.write(&self.to_remote) {
                Ok(n) => {
                    self.to_remote.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("sending input"),
            }
        }
        if !self.stdin_open && !self.eof_sent {
            match self.channel.send_eof() {
                Ok(()) => self.eof_sent = true,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e).context("sending end of input"),
            }
        }
        Ok(())
    }

    /// Copies everything the channel holds to stdout (and extended data to stderr); true once
    /// the remote side has sent EOF and nothing is left to read.
    fn forward_output(&mut self, buf: &mut [u8]) -> Result<bool> {
        for (stream, fd) in [(0, io::stdout().as_fd()), (1, io::stderr().as_fd())] {
            let mut s = self.channel.stream(stream);
            loop {
                match s.read(buf) {
                    Ok(0) => break,
                    Ok(n) => write_all(fd, &buf[..n]).context("writing to the terminal")?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("reading the command's output"),
                }
            }
        }
        Ok(self.channel.eof())
    }

    /// Sleeps until the socket, stdin or a signal has something, then takes what stdin has.
    fn wait(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut socket_events = PollFlags::IN;
        if matches!(
            self.session.block_directions(),
            BlockDirections::Outbound | BlockDirections::Both
        ) {
            socket_events |= PollFlags::OUT;
        }
        let stdin = io::stdin();
        let read_stdin = self.stdin_open && self.to_remote.len() < STDIN_BACKLOG;
        let mut fds = vec![
            PollFd::from_borrowed_fd(self.socket, socket_events),
            PollFd::from_borrowed_fd(self.signals.fd(), PollFlags::IN),
        ];
        if read_stdin {
            fds.push(PollFd::from_borrowed_fd(stdin.as_fd(), PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, Some(&POLL_TIMEOUT)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e)).context("waiting for input"),
        }
        let stdin_ready = read_stdin && !fds[2].revents().is_empty();
        drop(fds);
        if stdin_ready {
            match rustix::io::read(stdin.as_fd(), &mut *buf) {
                Ok(0) => self.stdin_open = false,
                Ok(n) => self.to_remote.extend_from_slice(&buf[..n]),
                Err(Errno::INTR | Errno::AGAIN) => {}
                // EIO: the terminal hung up; treat it as the end of input.
                Err(Errno::IO | Errno::BADF) => self.stdin_open = false,
                Err(e) => return Err(io::Error::from(e)).context("reading the terminal"),
            }
        }
        Ok(())
    }
}

/// libssh2's "would block" (`LIBSSH2_ERROR_EAGAIN`), for calls that return `ssh2::Error`.
fn would_block(e: &ssh2::Error) -> bool {
    const LIBSSH2_ERROR_EAGAIN: i32 = -37;
    e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_EAGAIN)
}

/// Writes all of `data` to `fd`, waiting when the descriptor is non-blocking and full.
fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
