//! `cargo bench --bench exec` (as root): how long `mtr CMD` takes end to end for a trivial
//! command, against `ssh host true` and the reference Python tool, on one sshd on loopback.
//!
//! Rows, each a median of `MTR_BENCH_REPS` (default 10) interleaved runs:
//! `ssh true` (OpenSSH client), `mtr --no-sync true`, `mtr true` (no-op sync + run), and, when
//! the reference tool is installed (`python3 -m venv v && v/bin/pip install mtr-cli==2.0.0`,
//! then `MTR_REFERENCE=v/bin/mtr`), `reference --no-sync true` and `reference true`. The project
//! is `examples/demo`. Prints a table and writes `target/bench-exec.json`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use mtr_benches::run::{self, workspace};
use testkit::sshd::{LocalHome, Server};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Row {
    name: &'static str,
    cmd: Command,
    times: Vec<f64>,
}

fn main() {
    if !run::wanted("exec") {
        return;
    }
    let reps: usize = std::env::var("MTR_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mtr = run::mtr_binary(None).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start();
    let home = LocalHome::for_server(&server);
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("demo");
    copy_dir(&workspace().join("examples/demo"), &project);
    let remote = server.mkdir_remote("demo");
    std::fs::create_dir_all(project.join(".mtr")).unwrap();
    std::fs::write(
        project.join(".mtr/config.yaml"),
        format!(
            "servers:\n  bench:\n    host: {}\n    port: {}\n    user: {}\n    key_filename: {}\n    remote_dir: {}\n",
            server.host(),
            server.port(),
            server.user(),
            home.key().display(),
            remote.display()
        ),
    )
    .unwrap();

    let with_env = |mut c: Command| {
        c.current_dir(&project)
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let mut ssh = home.ssh(&server);
    ssh.arg("true");
    let mut rows = vec![Row {
        name: "ssh host true",
        cmd: with_env(ssh),
        times: Vec::new(),
    }];
    let mtr_cmd = |args: &[&str]| {
        let mut c = Command::new(&mtr);
        c.args(args);
        with_env(c)
    };
    rows.push(Row {
        name: "mtr --no-sync true",
        cmd: mtr_cmd(&["--no-tty", "--no-sync", "true"]),
        times: Vec::new(),
    });
    rows.push(Row {
        name: "mtr true",
        cmd: mtr_cmd(&["--no-tty", "true"]),
        times: Vec::new(),
    });
    // The reference tool runs plain `ssh` (and rsync runs it too), and OpenSSH reads the
    // known_hosts of the passwd user, not $HOME's: a wrapper first on PATH points it at this
    // home's known_hosts. It costs one `sh` exec (~1 ms) per connection.
    let wrapper_dir = work.path().join("bin");
    std::fs::create_dir_all(&wrapper_dir).unwrap();
    let wrapper = wrapper_dir.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -oUserKnownHostsFile={} -oStrictHostKeyChecking=yes -oBatchMode=yes \"$@\"\n",
            home.known_hosts().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path_with_ssh_wrapper = format!(
        "{}:{}",
        wrapper_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    if let Some(reference) = std::env::var_os("MTR_REFERENCE") {
        for (name, args) in [
            (
                "reference --no-sync true",
                &["--no-check-update", "--no-tty", "--no-sync", "true"][..],
            ),
            (
                "reference true",
                &["--no-check-update", "--no-tty", "true"][..],
            ),
        ] {
            let mut c = Command::new(&reference);
            c.args(args).env("PATH", &path_with_ssh_wrapper);
            rows.push(Row {
                name,
                cmd: with_env(c),
                times: Vec::new(),
            });
        }
    } else {
        eprintln!("MTR_REFERENCE not set: the reference tool is not measured");
    }

    // Warm up: install the agent, first sync, reference's first rsync.
    for r in rows.iter_mut() {
        let out = r.cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{} failed: {}",
            r.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..reps {
        for r in rows.iter_mut() {
            let t = Instant::now();
            let out = r.cmd.output().unwrap();
            r.times.push(t.elapsed().as_secs_f64());
            assert!(out.status.success(), "{} failed", r.name);
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ssh_t = median(&rows[0].times);
    let reference_true = rows
        .iter()
        .find(|r| r.name == "reference true")
        .map(|r| median(&r.times));
    println!(
        "\n{:<26} {:>9} {:>9} {:>12}",
        "command", "median s", "/ssh", "/reference"
    );
    let mut json = Vec::new();
    for r in &rows {
        let m = median(&r.times);
        let vs_ref = reference_true
            .map(|x| format!("{:.2}", m / x))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<26} {:>9.3} {:>9.2} {:>12}",
            r.name,
            m,
            m / ssh_t,
            vs_ref
        );
        json.push(format!(
            "{{\"command\":\"{}\",\"median_s\":{m:.4},\"runs\":{}}}",
            r.name,
            r.times.len()
        ));
    }
    println!("(/reference: against `reference true`)");
    let target = run::target_dir();
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(
        target.join("bench-exec.json"),
        format!("[{}]\n", json.join(",")),
    )
    .unwrap();
}
