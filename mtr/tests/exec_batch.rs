//! Batch mode end to end (`mtr --no-tty CMD`, against a real sshd): argument quoting, the
//! working directory, `pre_cmd`, stdout and stderr kept apart byte for byte, stdin forwarded,
//! exit codes, and the remote command stopped by Ctrl+C or by losing mtr.

mod util;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use testkit::sshd::Server;
use util::{wait_for, Project};

/// A project whose remote directory exists, for runs with `--no-sync`.
fn project() -> Project {
    project_on(Server::start())
}

fn project_on(server: Server) -> Project {
    let p = Project::with_server(server);
    p.server.mkdir_remote(&p.remote_rel);
    p
}

/// `mtr --no-tty --no-sync ARGS...`: (status, stdout, stderr).
fn run(p: &Project, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync"])
        .args(args)
        .write_stdin(stdin.to_vec())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mtr` started in the background (std's Command, so the test can signal it).
fn spawn(p: &Project, args: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtr"));
    c.current_dir(p.root())
        .env("HOME", p.home.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SSH_AUTH_SOCK")
        .args(["--no-tty", "--no-sync"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The remote processes whose command line contains `marker`.
fn remote(p: &Project, marker: &str) -> Vec<(u32, String)> {
    p.server
        .user_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(marker))
        .collect()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn arguments_arrive_exactly_as_typed() {
    let p = project();
    let tricky = [
        "a b",
        "$HOME",
        "x;y",
        "*",
        "line\nbreak",
        "",
        "ünï 名前",
        "'\"",
        "\\",
        "-s",
        "`id`",
        "a  b\t",
    ];
    let mut args = vec!["printf", "[%s]"];
    args.extend(tricky);
    let (status, stdout, stderr) = run(&p, &args, b"");
    assert_eq!(status, 0, "{stderr}");
    let local = Command::new("printf").args(&args[1..]).output().unwrap();
    assert_eq!(
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(local.stdout).unwrap()
    );
}

#[test]
fn runs_in_the_remote_twin_of_the_local_subdirectory() {
    let p = Project::new();
    p.write("sub/dir/x.txt", "x");
    p.sync();
    let out = p
        .mtr()
        .current_dir(p.root().join("sub/dir"))
        .args(["--no-tty", "--no-sync", "pwd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        p.remote().join("sub/dir").display().to_string()
    );
}

#[test]
fn pre_cmd_runs_first_in_the_same_shell() {
    let p = project();
    p.write_config("    pre_cmd: export FOO=bar\n");
    let (status, stdout, stderr) = run(&p, &["sh", "-c", "echo $FOO"], b"");
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, b"bar\n");
}

#[test]
fn large_stdout_and_stderr_stay_apart_byte_for_byte() {
    let p = project();
    let dir = p.remote();
    testkit::gen::binary_file(&dir.join("a.bin"), 1 << 20, 1);
    testkit::gen::binary_file(&dir.join("b.bin"), 1 << 20, 2);
    let script = "for i in 1 2 3 4; do cat a.bin; cat b.bin >&2; done";
    let (status, stdout, stderr_text) = {
        let out = p
            .mtr()
            .args(["--no-tty", "--no-sync", "sh", "-c", script])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            out.stderr.clone(),
        )
    };
    assert_eq!(status, 0, "{}", String::from_utf8_lossy(&stderr_text));
    let a = std::fs::read(dir.join("a.bin")).unwrap();
    let b = std::fs::read(dir.join("b.bin")).unwrap();
    assert!(
        stdout == a.repeat(4),
        "stdout differs ({} bytes)",
        stdout.len()
    );
    assert!(
        stderr_text == b.repeat(4),
        "stderr differs ({} bytes)",
        stderr_text.len()
    );
}

#[test]
fn binary_stdin_is_forwarded_to_its_end() {
    let p = project();
    let mut data = vec![0u8; 3 << 20];
    testkit::gen::Rng::new(7).fill(&mut data);
    let (status, stdout, stderr) = run(&p, &["cat"], &data);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout == data, "got {} bytes back", stdout.len());

    let (status, stdout, _) = run(&p, &["sh", "-c", "read x; echo got:$x"], b"hello\n");
    assert_eq!(status, 0);
    assert_eq!(stdout, b"got:hello\n");
}

#[test]
fn exit_codes_pass_through() {
    let p = project();
    for code in [0, 1, 42, 126, 127] {
        let (status, _, stderr) = run(&p, &["sh", "-c", &format!("exit {code}")], b"");
        assert_eq!(status, code, "{stderr}");
    }
    let (status, _, stderr) = run(&p, &["sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(status, 128 + 15, "{stderr}");
    let (status, _, stderr) = run(&p, &["no-such-command-xyz"], b"");
    assert_eq!(status, 127, "{stderr}");
    assert!(stderr.contains("no-such-command-xyz"), "{stderr}");
}

#[test]
fn mtr_writes_nothing_of_its_own_on_stdout_or_stderr() {
    let server = Server::builder().bashrc("echo conda: base >&2").start();
    let p = project_on(server);
    let (status, stdout, stderr) = run(&p, &["sh", "-c", "echo out; echo err >&2"], b"");
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, b"out\n");
    assert!(
        !stderr.contains("mtr-launch") && !stderr.contains("MTR-AGENT"),
        "{stderr:?}"
    );
    assert!(stderr.ends_with("err\n"), "{stderr:?}");
}

#[test]
fn ctrl_c_reaches_the_remote_command() {
    let p = project();
    let mut mtr = spawn(&p, &["sleep", "1001.5"]);
    wait_for("the remote sleep", Duration::from_secs(30), || {
        !remote(&p, "sleep 1001.5").is_empty()
    });
    signal(&mtr, libc::SIGINT);
    let status = mtr.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    wait_for("the remote sleep to go", Duration::from_secs(5), || {
        remote(&p, "sleep 1001.5").is_empty()
    });
    let mut out = String::new();
    std::io::Read::read_to_string(mtr.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert_eq!(out, "");
}

#[test]
fn a_command_that_ignores_sigint_is_stopped_by_a_second_one() {
    let p = project();
    let mut mtr = spawn(&p, &["sh", "-c", "trap '' INT; exec sleep 1002.5"]);
    // The sleep itself, not the shell whose command line names it: only once the shell has
    // exec'd it is SIGINT sure to be ignored (a Ctrl+C before the trap ends the shell).
    wait_for("the remote sleep", Duration::from_secs(30), || {
        remote(&p, "sleep 1002.5")
            .iter()
            .any(|(_, cmd)| cmd == "sleep 1002.5")
    });
    signal(&mtr, libc::SIGINT);
    sleep(Duration::from_millis(500));
    assert!(mtr.try_wait().unwrap().is_none(), "mtr left on one Ctrl+C");
    signal(&mtr, libc::SIGINT);
    let status = mtr.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    assert!(remote(&p, "sleep 1002.5").is_empty());
}

#[test]
fn killing_mtr_kills_the_remote_command() {
    let p = project();
    let mut mtr = spawn(&p, &["sleep", "1003.5"]);
    wait_for("the remote sleep", Duration::from_secs(30), || {
        !remote(&p, "sleep 1003.5").is_empty()
    });
    signal(&mtr, libc::SIGKILL);
    mtr.wait().unwrap();
    wait_for("the remote sleep to go", Duration::from_secs(15), || {
        remote(&p, "sleep 1003.5").is_empty()
    });
}

#[test]
fn losing_the_ssh_session_kills_the_remote_command() {
    let p = project();
    let mut mtr = spawn(&p, &["sleep", "1004.5"]);
    wait_for("the remote sleep", Duration::from_secs(30), || {
        !remote(&p, "sleep 1004.5").is_empty()
    });
    let sessions: Vec<u32> = p
        .server
        .user_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("sshd"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!sessions.is_empty(), "{:?}", p.server.user_processes());
    for pid in sessions {
        // SAFETY: kill(2) on the test account's sshd session process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    wait_for("the remote sleep to go", Duration::from_secs(15), || {
        remote(&p, "sleep 1004.5").is_empty()
    });
    let status = mtr.wait().unwrap();
    assert_eq!(status.code(), Some(255), "{status:?}");
}

#[test]
fn stdin_of_a_command_that_does_not_read_it_does_not_block_ctrl_c() {
    let p = project();
    let mut mtr = Command::new(env!("CARGO_BIN_EXE_mtr"))
        .current_dir(p.root())
        .env("HOME", p.home.path())
        .env_remove("SSH_AUTH_SOCK")
        .args(["--no-tty", "--no-sync", "sleep", "1005.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = mtr.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'y'; 64 << 10];
        // Ends when mtr exits (broken pipe).
        while stdin.write_all(&chunk).is_ok() {}
    });
    wait_for("the remote sleep", Duration::from_secs(30), || {
        !remote(&p, "sleep 1005.5").is_empty()
    });
    sleep(Duration::from_millis(500));
    signal(&mtr, libc::SIGINT);
    sleep(Duration::from_millis(500));
    if mtr.try_wait().unwrap().is_none() {
        // The signal may be stuck behind unread input; the second one always ends it.
        signal(&mtr, libc::SIGINT);
    }
    let status = mtr.wait().unwrap();
    assert!(matches!(status.code(), Some(130 | 143)), "{status:?}");
    wait_for("the remote sleep to go", Duration::from_secs(15), || {
        remote(&p, "sleep 1005.5").is_empty()
    });
    feeder.join().unwrap();
}

#[test]
fn a_closed_local_stdout_ends_the_remote_writer_like_a_pipe() {
    let p = project();
    let mut mtr = spawn(&p, &["yes", "marker-1006"]);
    let mut first = [0u8; 12];
    std::io::Read::read_exact(mtr.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"marker-1006\n");
    drop(mtr.stdout.take());
    wait_for("mtr to end", Duration::from_secs(15), || {
        mtr.try_wait().unwrap().is_some()
    });
    assert_eq!(mtr.wait().unwrap().code(), Some(128 + 13));
    assert!(remote(&p, "marker-1006").is_empty());
}
