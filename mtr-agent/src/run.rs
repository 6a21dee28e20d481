//! `mtr-agent run`: supervises one command for mtr's batch mode. libssh2 cannot send SSH signal
//! requests, and sshd does not kill a no-PTY command when the connection drops, so the agent
//! stands between: it reads one [`ToRunner::Start`], runs `$SHELL -c <script>` in a new process
//! group whose stdout and stderr are the agent's own (the SSH channel's, byte for byte, never
//! copied), feeds the command's stdin from `Stdin` frames, and delivers `Signal`s to the group.
//!
//! Nothing outlives mtr: when the agent's input ends without the command having exited (the
//! connection dropped, mtr was killed), when mtr asks (`Kill`), or when no frame arrived for the
//! heartbeat period while the agent was reading, the group gets SIGTERM, then SIGKILL after
//! [`Config::grace`]. When the command exits, members of its group still running (background
//! jobs) get SIGHUP and SIGTERM, then SIGKILL after the grace period, so a `cmd &` left behind
//! cannot keep a GPU; a job meant to outlive mtr must leave the group (`setsid`). The agent
//! exits with the command's status, 128+N when signal N killed it.
//!
//! Threads: one reads frames, one writes the command's stdin (a command that does not read
//! its stdin stalls only that thread; the heartbeat is not checked while it does), one waits
//! for the command; the caller's thread reacts to their events.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use protocol::codec::FrameReader;
use protocol::wire::ToRunner;

/// Exit status for the agent's own failures (no command, a broken protocol), as mtr uses.
pub const FAILURE: i32 = 255;
/// Grace between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);
/// Stdin frames queued for the command before the agent stops reading its input.
const STDIN_QUEUE: usize = 16;

/// How to run the command.
pub struct Config {
    /// The shell that runs the script (`$SHELL`, else `/bin/sh`).
    pub shell: OsString,
    /// Between SIGTERM and SIGKILL when the command is stopped.
    pub grace: Duration,
    /// The command's stdout and stderr (the agent's own in production).
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Config {
    /// The agent's: the login shell from `$SHELL`, and the agent's stdout and stderr.
    pub fn from_env() -> Config {
        Config {
            shell: std::env::var_os("SHELL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "/bin/sh".into()),
            grace: GRACE,
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
        }
    }
}

/// What the helper threads report to the supervising thread.
enum Event {
    Msg(ToRunner),
    /// The input ended or broke: mtr is gone.
    Lost(String),
    Exited(ExitStatus),
}

/// Runs the command `input` asks for and returns the status to exit with.
pub fn supervise<R: Read + AsFd + Send + 'static>(input: R, cfg: Config) -> i32 {
    // Watched for hangup: the reader cannot see the input end while it waits for the
    // command to take its stdin.
    let hangup = match input.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("cannot watch the input: {e}")),
    };
    let mut reader = FrameReader::new(input);
    let (script, env, heartbeat) = match reader.msg::<ToRunner>() {
        Ok(ToRunner::Start {
            script,
            env,
            heartbeat_ms,
        }) => (script, env, Duration::from_millis(heartbeat_ms.into())),
        Ok(other) => return fail(&format!("expected Start, got {other:?}")),
        Err(e) => return fail(&format!("no command to run: {e}")),
    };
    let mut cmd = Command::new(&cfg.shell);
    cmd.arg("-c")
        .arg(&script)
        .envs(env)
        // The shell runs the way sshd would have run it (bash reads ~/.bashrc only at level 1).
        .env_remove("SHLVL")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(cfg.stdout)
        .stderr(cfg.stderr);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(&format!(
                "cannot start {}: {e}",
                cfg.shell.to_string_lossy()
            ))
        }
    };
    let group = Group(child.id() as i32);
    let stdin = child.stdin.take().expect("piped stdin");

    let (events, rx) = mpsc::channel();
    let blocked = Arc::new(AtomicBool::new(false));
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let (stdin_tx, stdin_rx) = mpsc::sync_channel(STDIN_QUEUE);
    thread::spawn(move || feed_stdin(stdin, stdin_rx));
    {
        let (events, blocked, last_seen) = (events.clone(), blocked.clone(), last_seen.clone());
        thread::spawn(move || read_input(reader, events, stdin_tx, blocked, last_seen));
    }
    thread::spawn(move || wait_child(child, events));

    let status = watch(
        &rx, group, heartbeat, cfg.grace, &blocked, &last_seen, &hangup,
    );
    group.clean_up(cfg.grace);
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Reacts to events until the command exits; returns its status.
fn watch(
    rx: &Receiver<Event>,
    group: Group,
    heartbeat: Duration,
    grace: Duration,
    blocked: &AtomicBool,
    last_seen: &Mutex<Instant>,
    input: &OwnedFd,
) -> ExitStatus {
    // Set once the group was told to stop: when to send SIGKILL.
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let mut lost = false;
    let stop = |why: &str, kill_at: &mut Option<Instant>| {
        if kill_at.is_none() {
            say(&format!("{why}; stopping the command"));
            group.signal(libc::SIGTERM);
            *kill_at = Some(Instant::now() + grace);
        }
    };
    loop {
        let mut timeout = Duration::from_millis(250);
        if let Some(at) = kill_at.filter(|_| !killed) {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        match rx.recv_timeout(timeout) {
            Ok(Event::Exited(status)) => return status,
            Ok(Event::Msg(ToRunner::Signal(n))) => group.signal(n),
            Ok(Event::Msg(ToRunner::Kill)) => stop("mtr asked", &mut kill_at),
            Ok(Event::Msg(ToRunner::Start { .. })) => say("ignoring a second Start"),
            Ok(Event::Msg(_)) => {}
            Ok(Event::Lost(why)) => {
                lost = true;
                stop(&why, &mut kill_at);
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The waiting thread always reports before it ends.
            Err(RecvTimeoutError::Disconnected) => unreachable!("the child waiter is gone"),
        }
        if !lost && hung_up(input) {
            lost = true;
            stop("mtr went away", &mut kill_at);
        }
        let idle = last_seen.lock().unwrap().elapsed();
        if !lost && !heartbeat.is_zero() && idle > heartbeat && !blocked.load(Ordering::SeqCst) {
            stop(
                &format!("no word from mtr for {} s", idle.as_secs()),
                &mut kill_at,
            );
        }
        if !killed && kill_at.is_some_and(|at| Instant::now() >= at) {
            group.signal(libc::SIGKILL);
            killed = true;
        }
    }
}

/// Whether the writer of `fd` (a pipe or socket) has closed it, even with input left unread.
fn hung_up(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

fn read_input(
    mut reader: FrameReader<impl Read>,
    events: Sender<Event>,
    stdin: SyncSender<Vec<u8>>,
    blocked: Arc<AtomicBool>,
    last_seen: Arc<Mutex<Instant>>,
) {
    let mut stdin = Some(stdin);
    loop {
        let msg = match reader.frame::<ToRunner>() {
            Ok(Some(protocol::codec::Frame::Msg(m))) => m,
            Ok(Some(protocol::codec::Frame::Data(_))) => {
                let _ = events.send(Event::Lost("unexpected data frame from mtr".into()));
                return;
            }
            Ok(None) => {
                let _ = events.send(Event::Lost("mtr went away".into()));
                return;
            }
            Err(e) => {
                let _ = events.send(Event::Lost(format!("input from mtr broke: {e}")));
                return;
            }
        };
        *last_seen.lock().unwrap() = Instant::now();
        match msg {
            ToRunner::Stdin(bytes) => {
                if let Some(tx) = &stdin {
                    blocked.store(true, Ordering::SeqCst);
                    let _ = tx.send(bytes.0);
                    blocked.store(false, Ordering::SeqCst);
                    *last_seen.lock().unwrap() = Instant::now();
                }
            }
            // Dropping the sender closes the command's stdin once the queue is written.
            ToRunner::StdinEof => stdin = None,
            other => {
                if events.send(Event::Msg(other)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes queued input to the command; input it no longer reads is dropped.
fn feed_stdin(mut stdin: ChildStdin, queue: Receiver<Vec<u8>>) {
    let mut open = true;
    for bytes in queue {
        if open && stdin.write_all(&bytes).is_err() {
            open = false;
        }
    }
}

fn wait_child(mut child: Child, events: Sender<Event>) {
    loop {
        match child.wait() {
            Ok(status) => {
                let _ = events.send(Event::Exited(status));
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                say(&format!("cannot wait for the command: {e}"));
                let _ = events.send(Event::Exited(ExitStatus::from_raw(FAILURE << 8)));
                return;
            }
        }
    }
}

/// The command's process group.
#[derive(Clone, Copy)]
struct Group(i32);

impl Group {
    fn signal(self, sig: i32) {
        // SAFETY: kill(2) has no memory effects; a negative pid names the group.
        unsafe { libc::kill(-self.0, sig) };
    }

    /// Whether any process is left in the group (zombies included).
    fn alive(self) -> bool {
        // Reap members that became our children (when the agent is a subreaper).
        // SAFETY: waitpid with a null status pointer.
        while unsafe { libc::waitpid(-self.0, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-self.0, 0) == 0 }
    }

    /// Ends what the command left running in its group: SIGHUP and SIGTERM, then SIGKILL after
    /// `grace`.
    fn clean_up(self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(libc::SIGHUP);
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            if !self.alive() {
                return;
            }
        }
        self.signal(libc::SIGKILL);
    }
}

/// A diagnostic on stderr; never fails (a closed stderr must not end the supervision).
fn say(msg: &str) {
    let _ = writeln!(io::stderr(), "mtr-agent: {msg}");
}

fn fail(msg: &str) -> i32 {
    say(msg);
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::codec::FrameWriter;
    use protocol::wire::Bytes;
    use std::fs;
    use std::io::PipeWriter;
    use std::path::Path;

    /// The supervisor running in a thread over a pipe, its command's output in files.
    struct Run {
        input: Option<FrameWriter<PipeWriter>>,
        done: Receiver<i32>,
        dir: tempfile::TempDir,
    }

    impl Run {
        fn start(script: &str, heartbeat_ms: u32) -> Run {
            let dir = tempfile::tempdir().unwrap();
            let (r, w) = io::pipe().unwrap();
            let cfg = Config {
                shell: "/bin/sh".into(),
                grace: Duration::from_millis(300),
                stdout: fs::File::create(dir.path().join("out")).unwrap().into(),
                stderr: fs::File::create(dir.path().join("err")).unwrap().into(),
            };
            let (tx, done) = mpsc::channel();
            thread::spawn(move || tx.send(supervise(r, cfg)).unwrap());
            let mut run = Run {
                input: Some(FrameWriter::new(w)),
                done,
                dir,
            };
            let script = format!("cd {} || exit 99\n{script}", run.dir.path().display());
            run.send(&ToRunner::Start {
                script,
                env: vec![("MTR_TEST".into(), "yes".into())],
                heartbeat_ms,
            });
            run
        }

        fn send(&mut self, msg: &ToRunner) {
            let w = self.input.as_mut().unwrap();
            w.msg(msg).unwrap();
            w.flush().unwrap();
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        /// Waits until the script wrote `name` (a pid file, say), returns its trimmed content.
        fn wait_file(&self, name: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(s) = fs::read_to_string(self.path(name)) {
                    if s.ends_with('\n') {
                        return s.trim().to_string();
                    }
                }
                assert!(Instant::now() < deadline, "{name} never appeared");
                thread::sleep(Duration::from_millis(10));
            }
        }

        fn status(&self) -> i32 {
            self.done
                .recv_timeout(Duration::from_secs(20))
                .expect("the supervisor did not return")
        }

        fn read(&self, name: &str) -> Vec<u8> {
            fs::read(self.path(name)).unwrap()
        }
    }

    fn gone(pid: &str) -> bool {
        // A zombie no one reaps (pid 1 of a container) is gone too.
        match fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        }
    }

    fn wait_gone(pid: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(Instant::now() < deadline, "process {pid} is still there");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn exit_codes_and_deaths_by_signal_come_back() {
        assert_eq!(Run::start("exit 0", 0).status(), 0);
        assert_eq!(Run::start("exit 42", 0).status(), 42);
        assert_eq!(Run::start("exit 126", 0).status(), 126);
        assert_eq!(Run::start("kill -TERM $$", 0).status(), 128 + 15);
        assert_eq!(Run::start("kill -KILL $$", 0).status(), 128 + 9);
    }

    #[test]
    fn output_goes_to_the_given_descriptors_and_env_is_added() {
        let run = Run::start("echo out-$MTR_TEST; echo err >&2", 0);
        assert_eq!(run.status(), 0);
        assert_eq!(run.read("out"), b"out-yes\n");
        assert_eq!(run.read("err"), b"err\n");
    }

    #[test]
    fn stdin_frames_reach_the_command_then_eof() {
        let mut run = Run::start("cat > got", 0);
        let mut expected = Vec::new();
        for i in 0..300u32 {
            let chunk: Vec<u8> = (0..7000u32).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            run.send(&ToRunner::Stdin(Bytes(chunk)));
        }
        run.send(&ToRunner::StdinEof);
        assert_eq!(run.status(), 0);
        assert_eq!(run.read("got"), expected);
    }

    #[test]
    fn the_heartbeat_waits_while_the_command_does_not_read_its_input() {
        let mut run = Run::start("echo $$ > pid; exec sleep 1000", 300);
        let pid = run.wait_file("pid");
        // Far more than the pipes and the queue hold (frames this compressible fit in the
        // pipe): the agent stops reading its input.
        for _ in 0..40 {
            run.send(&ToRunner::Stdin(Bytes(vec![b'x'; 64 << 10])));
        }
        thread::sleep(Duration::from_millis(1000));
        assert!(
            run.done.try_recv().is_err(),
            "stopped while its input was backed up"
        );
        // SAFETY: kill(2).
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGTERM) };
        assert_eq!(run.status(), 128 + 15);
    }

    #[test]
    fn input_closed_behind_unread_stdin_still_kills_the_command() {
        let mut run = Run::start("echo $$ > pid; exec sleep 1000", 0);
        run.wait_file("pid");
        // Enough to fill the command's stdin pipe, the writing thread and the queue: the
        // reader then waits on the queue and cannot see its input end.
        for _ in 0..19 {
            run.send(&ToRunner::Stdin(Bytes(vec![b'x'; 64 << 10])));
        }
        thread::sleep(Duration::from_millis(300));
        run.input = None;
        assert_eq!(run.status(), 128 + 15);
    }

    #[test]
    fn signals_reach_the_whole_process_group() {
        let mut run = Run::start("sleep 1000 & echo $! > bg; exec sleep 1000", 0);
        let bg = run.wait_file("bg");
        run.send(&ToRunner::Signal(libc::SIGTERM));
        assert_eq!(run.status(), 128 + 15);
        wait_gone(&bg);

        let mut run = Run::start("echo $$ > pid; exec sleep 1000", 0);
        run.wait_file("pid");
        run.send(&ToRunner::Signal(libc::SIGINT));
        assert_eq!(run.status(), 128 + 2);
    }

    #[test]
    fn input_ending_without_the_command_ending_kills_it_even_when_it_ignores_sigterm() {
        let mut run = Run::start("trap '' TERM; echo $$ > pid; exec sleep 1000", 0);
        let pid = run.wait_file("pid");
        run.input = None;
        assert_eq!(run.status(), 128 + 9);
        wait_gone(&pid);
    }

    #[test]
    fn kill_asks_sigterm_first() {
        let mut run = Run::start("echo $$ > pid; exec sleep 1000", 0);
        run.wait_file("pid");
        run.send(&ToRunner::Kill);
        assert_eq!(run.status(), 128 + 15);
    }

    #[test]
    fn silence_past_the_heartbeat_stops_the_command_and_pings_keep_it() {
        let mut run = Run::start("echo $$ > pid; exec sleep 1000", 400);
        run.wait_file("pid");
        for _ in 0..8 {
            thread::sleep(Duration::from_millis(100));
            run.send(&ToRunner::Ping);
        }
        assert!(run.done.try_recv().is_err(), "stopped despite pings");
        assert_eq!(run.status(), 128 + 15);
    }

    #[test]
    fn background_jobs_do_not_outlive_the_command() {
        let run = Run::start("sleep 1000 & echo $! > bg; exit 3", 0);
        assert_eq!(run.status(), 3);
        wait_gone(&run.wait_file("bg"));
    }

    #[test]
    fn a_missing_or_wrong_first_message_is_a_failure() {
        let (r, w) = io::pipe().unwrap();
        drop(w);
        let cfg = |_: ()| Config {
            shell: "/bin/sh".into(),
            grace: Duration::from_millis(100),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        };
        assert_eq!(supervise(r, cfg(())), FAILURE);
        let (r, w) = io::pipe().unwrap();
        let mut w = FrameWriter::new(w);
        w.msg(&ToRunner::Ping).unwrap();
        w.flush().unwrap();
        assert_eq!(supervise(r, cfg(())), FAILURE);
    }
}
