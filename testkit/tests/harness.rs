//! Proves the sshd harness with the stock OpenSSH client: key and password logins, builder
//! options, helpers that act on the remote side directly, parallel servers, and clean teardown.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mtr_testkit::sshd::{LocalHome, Server};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ssh ... script` and returns its output, with the sshd log in the message on failure.
fn ssh_ok(server: &Server, home: &LocalHome, script: &str) -> String {
    let out = home.ssh(server).arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "ssh {script:?}: {}\nstderr: {}\nsshd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    stdout(&out)
}

fn sshpass(server: &Server, password: &str) -> Output {
    let home = LocalHome::new();
    home.trust(server);
    Command::new("sshpass")
        .args(["-p", password, "ssh", "-F", "/dev/null", "-p"])
        .arg(server.port().to_string())
        .arg(format!(
            "-oUserKnownHostsFile={}",
            home.known_hosts().display()
        ))
        .args(["-oStrictHostKeyChecking=yes", "-oPubkeyAuthentication=no"])
        .arg(format!("{}@{}", server.user(), server.host()))
        .arg("echo via-password")
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn key_login_runs_a_command_as_the_test_user() {
    let server = Server::start();
    let home = LocalHome::for_server(&server);
    assert_eq!(ssh_ok(&server, &home, "echo hi"), "hi\n");
    assert_eq!(ssh_ok(&server, &home, "whoami").trim(), server.user());
    assert_eq!(
        ssh_ok(&server, &home, "pwd").trim(),
        server.home().to_str().unwrap()
    );
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
}

#[test]
fn unknown_host_key_is_refused_under_strict_checking() {
    let server = Server::start();
    let home = LocalHome::new();
    home.add_key(&server);
    let out = home.ssh(&server).arg("true").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn password_server_accepts_the_password_only() {
    let server = Server::builder().password("s3cret pass").start();
    assert_eq!(server.password(), Some("s3cret pass"));
    let out = sshpass(&server, "s3cret pass");
    assert_eq!(
        stdout(&out),
        "via-password\n",
        "{out:?}\nsshd log:\n{}",
        server.log()
    );
    assert!(!sshpass(&server, "wrong").status.success());
}

#[test]
fn key_only_server_refuses_passwords() {
    let server = Server::start();
    assert_eq!(server.password(), None);
    let out = sshpass(&server, "anything");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn bashrc_noise_reaches_stdout_before_the_command() {
    let server = Server::builder()
        .bashrc("echo 'Welcome to the cluster'")
        .start();
    let home = LocalHome::for_server(&server);
    assert_eq!(
        ssh_ok(&server, &home, "echo hi"),
        "Welcome to the cluster\nhi\n"
    );
}

#[test]
fn custom_login_shell_runs_the_command() {
    let server = Server::builder().shell("/bin/sh").start();
    let home = LocalHome::for_server(&server);
    assert_eq!(ssh_ok(&server, &home, "cat /proc/$$/comm"), "sh\n");
}

#[test]
fn extra_config_lines_override_the_defaults() {
    let server = Server::builder()
        .config("ForceCommand echo forced")
        .config("Match User nobody")
        .config("  PasswordAuthentication yes")
        .start();
    let home = LocalHome::for_server(&server);
    assert_eq!(ssh_ok(&server, &home, "echo hi"), "forced\n");
}

#[test]
fn listen_address_and_command_prefix_place_sshd() {
    // `nice -n 7 sshd ...` execs sshd in place, as `ip netns exec NS` does.
    let server = Server::builder()
        .listen("127.0.0.2".parse().unwrap())
        .command_prefix(["nice", "-n", "7"])
        .start();
    assert_eq!(server.host(), "127.0.0.2");
    assert!(server.known_hosts_line().starts_with("[127.0.0.2]:"));
    let stat = fs::read_to_string(format!("/proc/{}/stat", server.sshd_pid())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After "(comm)": state is field 3, nice field 19.
    assert_eq!(
        fields[16], "7",
        "sshd was not started through the prefix: {stat}"
    );
    let home = LocalHome::for_server(&server);
    assert_eq!(
        ssh_ok(&server, &home, "echo $SSH_CONNECTION")
            .split_whitespace()
            .nth(2),
        Some("127.0.0.2")
    );
}

#[test]
fn remote_helpers_act_as_the_user_without_ssh() {
    let server = Server::start();
    let dir = server.mkdir_remote("work/a");
    let file = server.write_remote("work/out/log.txt", "done\n");
    assert_eq!(dir, server.remote_path("work/a"));
    let listing = server.run_as_user_ok("stat -c '%U %n' work/a work/out/log.txt");
    let user = server.user();
    assert_eq!(listing, format!("{user} work/a\n{user} work/out/log.txt\n"));
    assert_eq!(fs::read_to_string(file).unwrap(), "done\n");
    assert!(!server.run_as_user("exit 3").status.success());
}

#[test]
fn servers_run_in_parallel_with_distinct_ports_and_users() {
    let servers: Vec<Server> = (0..3)
        .map(|_| thread::spawn(Server::start))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let threads: Vec<_> = servers
        .iter()
        .map(|s| (s.port(), s.user().to_owned()))
        .collect();
    for (i, a) in threads.iter().enumerate() {
        for b in &threads[i + 1..] {
            assert!(a.0 != b.0 && a.1 != b.1, "{a:?} vs {b:?}");
        }
    }
    thread::scope(|scope| {
        for server in &servers {
            scope.spawn(move || {
                let home = LocalHome::for_server(server);
                assert_eq!(ssh_ok(server, &home, "whoami").trim(), server.user());
            });
        }
    });
}

#[test]
fn drop_removes_sshd_sessions_user_and_files() {
    let server = Server::start();
    let home = LocalHome::for_server(&server);
    let (user, base) = (server.user().to_owned(), server.dir().to_owned());
    let uid = fs::metadata(server.home()).unwrap().uid();
    let sshd_pid = server.sshd_pid();
    server.run_as_user_ok("nohup sleep 1000 >/dev/null 2>&1 &");
    let mut ssh = home.ssh(&server);
    let mut session = ssh.arg("sleep 1000").stderr(Stdio::null()).spawn().unwrap();
    let sleeps = || {
        let procs = server.user_processes();
        procs.iter().filter(|(_, cmd)| cmd == "sleep 1000").count()
    };
    wait_for(|| sleeps() == 2, "two `sleep 1000` of the user");

    drop(server);

    assert!(!Path::new(&format!("/proc/{sshd_pid}")).exists());
    assert_eq!(live_processes(uid), "", "processes of uid {uid} survived");
    assert!(!Command::new("id")
        .arg(&user)
        .output()
        .unwrap()
        .status
        .success());
    assert!(!base.exists(), "{} survived", base.display());
    wait_for(
        || session.try_wait().unwrap().is_some(),
        "the ssh client to exit",
    );
}

/// `ps` lines of the processes of `uid` that are not zombies (pid 1 reaps those lazily).
fn live_processes(uid: u32) -> String {
    let out = Command::new("ps")
        .args(["-U", &uid.to_string(), "-o", "stat=,pid=,args="])
        .output();
    let out = stdout(&out.unwrap());
    out.lines()
        .filter(|l| !l.starts_with('Z'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}
