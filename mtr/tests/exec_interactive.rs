//! Interactive mode end to end: `mtr` runs in a tmux pane (a real terminal) against a real
//! sshd, and the tests type into the pane and read its screen: a remote REPL, Ctrl+C, window
//! resizes, the local terminal modes after mtr exits (normally and on SIGTERM), exit codes.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use util::Project;

/// How long the screen may take to show what a test waits for.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A tmux server of its own (socket `-S` in a temp dir), running one pane with an interactive
/// `dash` whose HOME is the project's private one, in the project root. dash, unlike bash, does
/// not put back the terminal modes a killed job left, so what the tests see is what mtr left.
struct Pane {
    /// Holds the server's socket, so nothing is left behind.
    dir: tempfile::TempDir,
}

impl Pane {
    fn start(p: &Project) -> Pane {
        let shell = format!(
            "cd {} && exec env -u SSH_AUTH_SOCK -u XDG_CACHE_HOME -u XDG_CONFIG_HOME \
             HOME={} PS1='$ ' dash -i",
            quote(p.root()),
            quote(p.home.path()),
        );
        let pane = Pane {
            dir: tempfile::tempdir().unwrap(),
        };
        pane.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            &shell,
        ]);
        pane.tmux(&["set-option", "-g", "status", "off"]);
        pane.wait_for_prompt();
        pane
    }

    /// Waits until the last line is the pane shell's prompt (`$`; tmux drops trailing spaces).
    fn wait_for_prompt(&self) -> String {
        self.wait_until("the shell prompt", |s| s.trim_end().ends_with('$'))
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
        self.tmux(&["send-keys", "Enter"]);
    }

    /// Sends a key by its tmux name (`C-c`).
    fn key(&self, key: &str) {
        self.tmux(&["send-keys", key]);
    }

    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-J", "-S", "-200"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen contains `needle`; returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_until(needle, |s| s.contains(needle))
    }

    fn wait_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if start.elapsed() > SCREEN_TIMEOUT {
                panic!("timed out waiting for {what:?}; the screen shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pane's size as tmux sees it: (rows, cols).
    fn size(&self) -> (u32, u32) {
        let out = self.tmux(&["display-message", "-p", "#{pane_height} #{pane_width}"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .arg("kill-server")
            .output();
    }
}

fn quote(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn mtr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mtr")
}

/// A project whose remote directory exists, so `--no-sync` runs can `cd` into it.
fn project() -> Project {
    let p = Project::new();
    p.server.mkdir_remote(&p.remote_rel);
    p
}

/// The shell line that runs `mtr --no-sync ARGS`.
fn mtr_line(args: &str) -> String {
    format!("{} --no-sync {args}", mtr_bin())
}

#[test]
fn a_remote_python_repl_reads_keys_and_prints_as_it_goes() {
    let p = project();
    let pane = Pane::start(&p);
    pane.type_line(&mtr_line("python3"));
    pane.wait_for(">>> ");
    pane.type_line("import getpass, os; print(6*7, getpass.getuser(), os.getcwd())");
    let remote = p.remote();
    let expected = format!("42 {} {}", p.server.user(), remote.display());
    pane.wait_for(&expected);
    pane.type_line("exit()");
    pane.wait_for_prompt();
}

#[test]
fn ctrl_c_interrupts_the_remote_program_not_mtr() {
    let p = project();
    let pane = Pane::start(&p);
    pane.type_line(&mtr_line("python3"));
    pane.wait_for(">>> ");
    pane.type_line("import time; time.sleep(100)");
    // Give python the line before interrupting it.
    pane.wait_for("time.sleep(100)\n");
    std::thread::sleep(Duration::from_millis(200));
    pane.key("C-c");
    pane.wait_for("KeyboardInterrupt");
    // The REPL survived: mtr passed Ctrl+C on as a byte instead of dying.
    pane.type_line("print('still', 'here')");
    pane.wait_for("still here");
    pane.type_line("exit()");
}

#[test]
fn window_resizes_reach_the_remote_pty() {
    let p = project();
    let pane = Pane::start(&p);
    pane.type_line(&mtr_line("bash --norc --noprofile"));
    pane.wait_for("bash-");
    let (rows, cols) = pane.size();
    pane.type_line("echo \"size=$(stty size)\"");
    pane.wait_for(&format!("size={rows} {cols}"));

    pane.tmux(&["resize-window", "-x", "90", "-y", "25"]);
    let (rows2, cols2) = pane.size();
    assert_eq!((rows2, cols2), (25, 90));
    pane.type_line("echo \"size=$(stty size)\"");
    pane.wait_for(&format!("size={rows2} {cols2}"));
    pane.type_line("exit");
}

#[test]
fn the_local_terminal_modes_are_restored_after_mtr_exits() {
    let p = project();
    let pane = Pane::start(&p);
    let before = p.root().join("stty-before");
    let after = p.root().join("stty-after");
    pane.type_line(&format!("stty -a > {}", quote(&before)));
    pane.type_line(&mtr_line("python3"));
    pane.wait_for(">>> ");
    pane.type_line("exit()");
    // Keys typed before mtr exits go to the remote side, as with ssh: wait for the shell.
    pane.wait_for_prompt();
    pane.type_line(&format!(
        "stty -a > {} && echo saved-$((40+2))",
        quote(&after)
    ));
    pane.wait_for("saved-42");
    assert_stty_equal(&before, &after);
}

#[test]
fn sigterm_restores_the_terminal_and_exits_with_143() {
    let p = project();
    let pane = Pane::start(&p);
    let before = p.root().join("stty-before");
    let after = p.root().join("stty-after");
    let pidfile = p.root().join("mtr.pid");
    pane.type_line(&format!("stty -a > {}", quote(&before)));
    // `exec` inside `sh -c`: the pid written is mtr's own.
    pane.type_line(&format!(
        "sh -c 'echo $$ > {}; exec \"$@\"' - {}; echo \"rc=$?\"",
        pidfile.display(),
        mtr_line("python3"),
    ));
    pane.wait_for(">>> ");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    pane.wait_for("rc=143");
    // The remote program went with the connection (its PTY hung up).
    let start = Instant::now();
    while p
        .server
        .user_processes()
        .iter()
        .any(|(_, c)| c.contains("python3"))
    {
        assert!(
            start.elapsed() < SCREEN_TIMEOUT,
            "remote python3 outlived mtr: {:?}",
            p.server.user_processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pane.type_line(&format!(
        "stty -a > {} && echo saved-$((40+2))",
        quote(&after)
    ));
    pane.wait_for("saved-42");
    assert_stty_equal(&before, &after);
}

#[test]
fn the_exit_code_of_an_interactive_command_passes_through() {
    let p = project();
    let pane = Pane::start(&p);
    pane.type_line(&format!(
        "{}; echo \"rc=$?\"",
        mtr_line("--tty sh -c 'exit 42'")
    ));
    pane.wait_for("rc=42");
    pane.type_line(&format!(
        "{}; echo \"rc=$?\"",
        mtr_line("sh -c 'kill -KILL $$'")
    ));
    pane.wait_for("rc=137");
}

#[test]
fn tty_without_a_local_terminal_still_runs_on_a_pty() {
    let p = project();
    let out = p
        .mtr()
        .args([
            "--no-sync",
            "--tty",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-pty; exit 7",
        ])
        .write_stdin("")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The remote PTY turns "\n" into "\r\n", as with `ssh -t`.
    assert_eq!(stdout, "on-a-pty\r\n");
}

#[test]
fn tty_mode_forwards_piped_input_and_streams_large_output() {
    let p = project();
    let out = p
        .mtr()
        .args([
            "--no-sync",
            "--tty",
            "sh",
            "-c",
            "read x; echo got-$x; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end",
        ])
        .write_stdin("abc\n")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("got-abc\r\n"),
        "{:?}",
        &stdout[..stdout.len().min(200)]
    );
    assert_eq!(stdout.matches('x').count(), 3_000_000);
    assert!(stdout.ends_with("\r\nend\r\n"));
}

fn assert_stty_equal(before: &PathBuf, after: &PathBuf) {
    let before = std::fs::read_to_string(before).unwrap();
    let after = std::fs::read_to_string(after).unwrap();
    assert!(!before.is_empty());
    assert_eq!(before, after, "terminal modes differ after mtr exited");
}
