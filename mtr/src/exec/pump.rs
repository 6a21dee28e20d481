//! One SSH channel driven in non-blocking mode by a single loop. libssh2 serialises everything
//! on one session lock and a blocking read would hold it while waiting, so one thread does all
//! channel I/O: it polls the SSH socket and a wakeup socket, writes what other threads queued
//! in the [`Outbox`], hands what the remote wrote on stdout and stderr to a [`Handler`], and
//! calls the handler's `tick` on every turn (timers, signals), until the remote side sends EOF.
//! Then [`Pump::exit_status`] waits for the close and reads the status.
//!
//! Flow control: the outbox holds at most [`BACKLOG`] bytes of ordinary messages (producers
//! wait), urgent ones jump the queue (never splitting a message already started), and a
//! handler that is not ready for more output leaves it in the channel, so the SSH window holds
//! the remote back; it wakes the pump when it is ready again.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use ssh2::{BlockDirections, Channel, Session};

use crate::ssh::{signal_number, Ssh};

/// Ordinary bytes the outbox holds before [`Outbox::send`] waits.
pub const BACKLOG: usize = 256 << 10;
/// Longest a session given up on may block afterwards (its teardown).
const ABANDON_TIMEOUT_MS: u32 = 2000;
/// Longest sleep between two turns, so `tick` runs at least this often.
const TICK: Duration = Duration::from_millis(250);

/// One of the remote command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn id(self) -> i32 {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// What the loop does after a `tick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Leave the loop now ([`End::Stopped`]), without waiting for the remote side.
    Stop,
}

/// How [`Pump::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The remote side sent EOF and all its output was handed over.
    Eof,
    /// The handler asked to stop.
    Stopped,
}

/// The side of the pump that consumes output and decides when to stop.
pub trait Handler {
    /// Whether the handler takes more of `stream` now. When it does not, the data stays in the
    /// channel until the pump is woken ([`Outbox::wake`]).
    fn accepts(&mut self, _stream: Stream) -> bool {
        true
    }
    /// Bytes the remote side wrote on `stream`, as they arrive.
    fn output(&mut self, stream: Stream, data: &[u8]) -> Result<()>;
    /// Called on every turn of the loop, at least every 250 ms.
    fn tick(&mut self, outbox: &Outbox) -> Result<Flow>;
}

/// Bytes waiting to go to the remote side; cheap to clone and to share with threads.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    space: Condvar,
    wake: UnixStream,
}

#[derive(Default)]
struct Queue {
    urgent: VecDeque<Vec<u8>>,
    normal: VecDeque<Vec<u8>>,
    normal_bytes: usize,
    /// Send EOF once everything queued has gone.
    eof: bool,
    /// The pump is gone: nothing will be sent any more.
    closed: bool,
}

impl Outbox {
    /// Queues `bytes` behind everything else, waiting while the backlog is full. False when
    /// the pump has ended and the bytes will never be sent.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        let mut q = self.shared.queue.lock().unwrap();
        while q.normal_bytes >= BACKLOG && !q.closed {
            q = self.shared.space.wait(q).unwrap();
        }
        if q.closed {
            return false;
        }
        q.normal_bytes += bytes.len();
        q.normal.push_back(bytes);
        drop(q);
        self.wake();
        true
    }

    /// Queues `bytes` ahead of ordinary messages not yet started.
    pub fn send_urgent(&self, bytes: Vec<u8>) {
        self.shared.queue.lock().unwrap().urgent.push_back(bytes);
        self.wake();
    }

    /// Sends EOF on the channel once everything queued before has gone.
    #[allow(dead_code)] // for raw byte streams (batch mode ends its input with a frame)
    pub fn send_eof(&self) {
        self.shared.queue.lock().unwrap().eof = true;
        self.wake();
    }

    /// Makes the pump take a turn soon (a handler ready for output again, a flag set).
    pub fn wake(&self) {
        // A full wakeup socket already guarantees a turn.
        let _ = (&self.shared.wake).write(&[1]);
    }

    fn pop(&self) -> Option<Vec<u8>> {
        let mut q = self.shared.queue.lock().unwrap();
        if let Some(b) = q.urgent.pop_front() {
            return Some(b);
        }
        let b = q.normal.pop_front()?;
        q.normal_bytes -= b.len();
        self.shared.space.notify_all();
        Some(b)
    }

    fn eof_due(&self) -> bool {
        let q = self.shared.queue.lock().unwrap();
        q.eof && q.urgent.is_empty() && q.normal.is_empty()
    }

    fn close(&self) {
        self.shared.queue.lock().unwrap().closed = true;
        self.shared.space.notify_all();
    }
}

/// A channel driven by one loop; the session is non-blocking while the pump lives.
pub struct Pump<'a> {
    session: &'a Session,
    socket: BorrowedFd<'a>,
    /// `None` only while dropping.
    channel: Option<Channel>,
    outbox: Outbox,
    woken: UnixStream,
    /// The message being written, and how much of it went.
    current: Vec<u8>,
    sent: usize,
    eof_sent: bool,
}

impl<'a> Pump<'a> {
    /// Takes over `channel` (already started) and puts the session in non-blocking mode.
    pub fn new(ssh: &'a Ssh, channel: Channel) -> Result<Pump<'a>> {
        let (wake, woken) = UnixStream::pair().context("cannot create a wakeup socket")?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        ssh.session().set_blocking(false);
        Ok(Pump {
            session: ssh.session(),
            socket: ssh.socket(),
            channel: Some(channel),
            outbox: Outbox {
                shared: Arc::new(Shared {
                    queue: Mutex::new(Queue::default()),
                    space: Condvar::new(),
                    wake,
                }),
            },
            woken,
            current: Vec::new(),
            sent: 0,
            eof_sent: false,
        })
    }

    /// The queue other threads use to send to the remote side.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    fn channel(&mut self) -> &mut Channel {
        self.channel.as_mut().expect("channel present until drop")
    }

    /// Moves bytes until the remote side sends EOF or the handler stops.
    pub fn run(&mut self, handler: &mut impl Handler) -> Result<End> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            self.drain_wakeups();
            if handler.tick(&self.outbox)? == Flow::Stop {
                return Ok(End::Stopped);
            }
            // Writing may read the socket too, so it comes before the reads: no packet is
            // left queued inside libssh2 when the loop goes back to poll.
            self.send()?;
            let mut reading = false;
            for stream in [Stream::Stdout, Stream::Stderr] {
                if handler.accepts(stream) {
                    reading = true;
                    self.receive(stream, handler, &mut buf)?;
                }
            }
            if self.channel().eof() {
                return Ok(End::Eof);
            }
            self.wait(reading, TICK)?;
        }
    }

    fn drain_wakeups(&mut self) {
        let mut buf = [0u8; 256];
        while matches!((&self.woken).read(&mut buf), Ok(n) if n > 0) {}
    }

    fn send(&mut self) -> Result<()> {
        loop {
            if self.sent == self.current.len() {
                match self.outbox.pop() {
                    Some(next) => {
                        self.current = next;
                        self.sent = 0;
                        continue;
                    }
                    None => break,
                }
            }
            let (current, sent) = (std::mem::take(&mut self.current), self.sent);
            let written = self.channel().write(&current[sent..]);
            self.current = current;
            match written {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("sending to the server"),
            }
        }
        if !self.eof_sent && self.outbox.eof_due() {
            match self.channel().send_eof() {
                Ok(()) => self.eof_sent = true,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e).context("sending end of input"),
            }
        }
        Ok(())
    }

    fn receive(&mut self, stream: Stream, h: &mut impl Handler, buf: &mut [u8]) -> Result<()> {
        let mut s = self.channel().stream(stream.id());
        while h.accepts(stream) {
            match s.read(buf) {
                Ok(0) => break,
                Ok(n) => h.output(stream, &buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading from the server"),
            }
        }
        Ok(())
    }

    /// Sleeps until the socket or the wakeup socket has something, or `timeout`. The socket is
    /// watched for input only when the caller will read it (else unread input would spin).
    fn wait(&self, reading: bool, timeout: Duration) -> Result<()> {
        let mut socket_events = PollFlags::empty();
        let writing = self.sent < self.current.len();
        let dirs = self.session.block_directions();
        if reading || writing || matches!(dirs, BlockDirections::Inbound | BlockDirections::Both) {
            socket_events |= PollFlags::IN;
        }
        if matches!(dirs, BlockDirections::Outbound | BlockDirections::Both) {
            socket_events |= PollFlags::OUT;
        }
        let mut fds = [
            PollFd::from_borrowed_fd(self.socket, socket_events),
            PollFd::from_borrowed_fd(self.woken.as_fd(), PollFlags::IN),
        ];
        let timeout = Timespec::try_from(timeout).expect("small timeout");
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(io::Error::from(e)).context("waiting for the server"),
        }
    }

    /// After [`End::Eof`]: waits (up to `timeout`) for the channel to close and returns the
    /// remote exit status, 128+N when signal N killed the remote process.
    pub fn exit_status(mut self, timeout: Duration) -> Result<i32> {
        let status = self.close_status(timeout);
        if status.is_err() {
            self.session.set_timeout(ABANDON_TIMEOUT_MS);
        }
        status
    }

    fn close_status(&mut self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.channel().wait_close() {
                Ok(()) => break,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e).context("waiting for the command's exit status"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server sent no exit status within {} s",
                    timeout.as_secs()
                );
            }
            self.wait(true, Duration::from_millis(100))?;
        }
        let channel = self.channel();
        if let Some(sig) = channel.exit_signal().ok().and_then(|s| s.exit_signal) {
            return Ok(128 + signal_number(&sig));
        }
        Ok(channel.exit_status()?)
    }
}

impl Pump<'_> {
    /// Gives up on a channel whose server may be gone or stuck. The channel is let go without
    /// waiting, but libssh2 may keep it (a close it could not send), and freeing the session
    /// later would wait for that send forever in blocking mode: the session gets a short
    /// timeout, so it is meant to be dropped soon after (mtr is leaving).
    pub fn abandon(self) {
        self.session.set_timeout(ABANDON_TIMEOUT_MS);
        drop(self);
    }
}

impl Drop for Pump<'_> {
    /// Lets go of the channel without waiting for the server, which may be gone (freed while
    /// the session is non-blocking, libssh2 does not wait for the close), then puts the session
    /// back in blocking mode.
    fn drop(&mut self) {
        self.outbox.close();
        drop(self.channel.take());
        self.session.set_blocking(true);
    }
}

/// libssh2's "would block" (`LIBSSH2_ERROR_EAGAIN`), for calls that return `ssh2::Error`.
pub fn would_block(e: &ssh2::Error) -> bool {
    const LIBSSH2_ERROR_EAGAIN: i32 = -37;
    e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_EAGAIN)
}

/// Writes all of `data` to `fd` (stdout, stderr), waiting when it is non-blocking and full.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> (Outbox, UnixStream) {
        let (wake, woken) = UnixStream::pair().unwrap();
        wake.set_nonblocking(true).unwrap();
        let outbox = Outbox {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                space: Condvar::new(),
                wake,
            }),
        };
        (outbox, woken)
    }

    #[test]
    fn urgent_messages_jump_the_queue_and_eof_waits_for_it_to_empty() {
        let (o, _woken) = outbox();
        assert!(o.send(b"a".to_vec()));
        assert!(o.send(b"b".to_vec()));
        o.send_eof();
        o.send_urgent(b"!".to_vec());
        assert!(!o.eof_due());
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| o.pop()).collect();
        assert_eq!(order, [b"!".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert!(o.eof_due());
    }

    #[test]
    fn send_waits_for_room_and_gives_up_once_closed() {
        let (o, _woken) = outbox();
        assert!(o.send(vec![0; BACKLOG]));
        let producer = {
            let o = o.clone();
            std::thread::spawn(move || o.send(vec![1]))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!producer.is_finished(), "send did not wait for room");
        assert_eq!(o.pop().unwrap().len(), BACKLOG);
        assert!(producer.join().unwrap());
        o.close();
        assert!(!o.send(vec![2]));
    }
}
