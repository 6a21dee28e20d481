//! The command line around a sync and a run: `--init`, `--dry-run`, password authentication
//! from the config file, config warnings.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use testkit::sshd::Server;
use util::Project;

#[test]
fn init_writes_a_template_once_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let run = || {
        assert_cmd::Command::cargo_bin("mtr")
            .unwrap()
            .current_dir(dir.path())
            .env("HOME", home.path())
            .arg("--init")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = fs::read_to_string(dir.path().join(".mtr/config.yaml")).unwrap();
    assert!(written.contains("servers:"));
    fs::write(dir.path().join(".mtr/config.yaml"), "mine").unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.yaml"));
    assert_eq!(
        fs::read_to_string(dir.path().join(".mtr/config.yaml")).unwrap(),
        "mine"
    );
}

#[test]
fn dry_run_prints_the_plan_and_the_command_and_changes_nothing() {
    let p = Project::new();
    p.write("train.py", "print(1)");
    let out = p
        .mtr()
        .args([
            "--no-tty",
            "--dry-run",
            "python3",
            "train.py",
            "--epochs",
            "10",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("+ train.py"), "{stdout}");
    assert!(stdout.contains("would run on"), "{stdout}");
    assert!(
        stdout.contains("exec python3 train.py --epochs 10"),
        "{stdout}"
    );
    assert!(
        !p.remote().join("train.py").exists(),
        "--dry-run changed the remote"
    );
}

#[test]
fn password_from_the_config_authenticates_natively() {
    let server = Server::builder().password("s3cret pass").start();
    let p = Project::with_server(server);
    // No key: only the password can work.
    fs::remove_file(p.home.key()).unwrap();
    let cfg = format!(
        "servers:\n  test:\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    password: \"s3cret pass\"\n    remote_dir: {}\n",
        p.server.port(),
        p.server.user(),
        p.remote().display()
    );
    let cfg_path = p.root().join(".mtr/config.yaml");
    fs::write(&cfg_path, cfg).unwrap();
    fs::set_permissions(&cfg_path, fs::Permissions::from_mode(0o644)).unwrap();
    p.write("a.py", "a");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", p.server.log());
    assert!(
        stderr.contains("warning") && stderr.contains("config.yaml"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
    p.assert_synced();

    fs::set_permissions(&cfg_path, fs::Permissions::from_mode(0o600)).unwrap();
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn a_wrong_password_fails_with_255_without_echoing_it() {
    let server = Server::builder().password("right").start();
    let p = Project::with_server(server);
    fs::remove_file(p.home.key()).unwrap();
    let cfg = format!(
        "servers:\n  test:\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    password: wrong-secret\n    remote_dir: /tmp/x\n",
        p.server.port(),
        p.server.user(),
    );
    fs::write(p.root().join(".mtr/config.yaml"), cfg).unwrap();
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");
}
