//! `mtr --get` with the agent engine, end to end against a real sshd: files and directories
//! land where `--to`, `download_dir` or the current directory say; a second get moves only
//! what changed; local files survive; nothing of mtr's is left in the download directory;
//! `--dry-run` writes nothing; a command runs before the download; a missing path and a
//! hostile server (a replaced agent binary sending unsafe paths) fail with 255 and write
//! nothing outside the destination; every cipher mtr can negotiate carries a sync and a get.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use testkit::gen::{self, tree_equal};
use util::{amount, names, Project};

/// `mtr --no-tty -v --no-sync --get REMOTE ARGS...` from the project root.
fn get(p: &Project, remote: &str, args: &[&str]) -> Output {
    p.mtr()
        .args(["--no-tty", "-v", "--no-sync", "--get", remote])
        .args(args)
        .output()
        .unwrap()
}

/// [`get`] that must succeed and print nothing on stdout; returns its stderr.
fn get_ok(p: &Project, remote: &str, args: &[&str]) -> String {
    let out = get(p, remote, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "mtr --get {remote} {args:?} failed ({:?}):\n{stderr}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "a batch get printed on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Makes the remote account own everything under `path` (generated as root).
fn give_to_user(p: &Project, path: &Path) {
    let status = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{}:", p.server.user())])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown -R {}", path.display());
}

/// Nothing of mtr's (state, staging) in `dir`.
fn assert_no_litter(dir: &Path) {
    for name in names(dir) {
        assert!(
            !name.starts_with(".mtr-get") && name != ".mtr-sync",
            "mtr left {name} in {}",
            dir.display()
        );
    }
}

#[test]
fn a_file_lands_in_cwd_under_to_and_in_download_dir() {
    let p = Project::new();
    let data = p
        .server
        .remote_path(format!("{}/out/model.bin", p.remote_rel));
    p.server
        .write_remote(format!("{}/out/model.bin", p.remote_rel), b"");
    gen::binary_file(&data, 300_000, 1);
    give_to_user(&p, &data);

    get_ok(&p, "out/model.bin", &[]);
    assert_eq!(
        fs::read(p.root().join("model.bin")).unwrap(),
        fs::read(&data).unwrap()
    );

    get_ok(&p, "out/model.bin", &["--to", "newname.bin"]);
    assert_eq!(
        fs::read(p.root().join("newname.bin")).unwrap(),
        fs::read(&data).unwrap()
    );

    fs::create_dir(p.root().join("existing_dir")).unwrap();
    get_ok(&p, "out/model.bin", &["--to", "existing_dir/"]);
    get_ok(&p, "out/model.bin", &["--to", "new_dir/"]);
    for dir in ["existing_dir", "new_dir"] {
        assert_eq!(names(&p.root().join(dir)), ["model.bin"]);
    }

    let downloads = tempfile::tempdir().unwrap();
    p.write_config(&format!(
        "    download_dir: {}\n",
        downloads.path().display()
    ));
    get_ok(&p, "out/model.bin", &[]);
    assert_eq!(names(downloads.path()), ["model.bin"]);
    assert_eq!(
        fs::read(downloads.path().join("model.bin")).unwrap(),
        fs::read(&data).unwrap()
    );
    assert_no_litter(p.root());
}

#[test]
fn a_directory_arrives_byte_for_byte_and_a_second_get_moves_only_the_change() {
    let p = Project::new();
    let out = p.server.mkdir_remote(format!("{}/out", p.remote_rel));
    gen::source_tree(&out, 150, 1_500_000, 7);
    gen::binary_file(&out.join("ckpt/model.bin"), 4_000_000, 8);
    gen::write_file(&out.join("bin/run.sh"), "#!/bin/sh\necho hi\n");
    gen::set_mode(&out.join("bin/run.sh"), 0o755);
    fs::create_dir_all(out.join("empty/nested")).unwrap();
    std::os::unix::fs::symlink("../bin/run.sh", out.join("ckpt/run")).unwrap();
    std::os::unix::fs::symlink("ckpt/model.bin", out.join("latest")).unwrap();
    gen::write_file(&out.join("ünïcødé/名前.txt"), "こんにちは");
    give_to_user(&p, &out);

    let downloads = tempfile::tempdir().unwrap();
    let local = downloads.path().join("out");
    let to = format!("{}/", downloads.path().display());
    let to = to.as_str();
    let first = get_ok(&p, "out", &["--to", to]);
    assert!(first.contains("downloaded"), "{first}");
    if let Err(diff) = tree_equal(&out, &local, &[]) {
        panic!("the download differs:\n{diff}");
    }
    assert_eq!(names(downloads.path()), ["out"]);

    // 10% of the checkpoint changes on the server; a local file appears.
    let mut model = fs::read(out.join("ckpt/model.bin")).unwrap();
    let mut patch = vec![0u8; 400_000];
    gen::Rng::new(9).fill(&mut patch);
    model[1_000_000..1_400_000].copy_from_slice(&patch);
    fs::write(out.join("ckpt/model.bin"), &model).unwrap();
    gen::write_file(&local.join("notes/mine.txt"), "local only");

    let second = get_ok(&p, "out", &["--to", to]);
    let received = amount(&second, " of file data received");
    let wire = amount(&second, " on the wire");
    assert!(
        received < 1_000_000,
        "a 400 KB change received {received} B:\n{second}"
    );
    assert!(
        wire < 1_200_000,
        "a 400 KB change moved {wire} B:\n{second}"
    );
    assert_eq!(fs::read(local.join("ckpt/model.bin")).unwrap(), model);
    assert_eq!(
        fs::read(local.join("notes/mine.txt")).unwrap(),
        b"local only",
        "a local file did not survive"
    );
    fs::remove_dir_all(local.join("notes")).unwrap();
    if let Err(diff) = tree_equal(&out, &local, &[]) {
        panic!("the second download differs:\n{diff}");
    }
    assert_eq!(names(downloads.path()), ["out"]);
    assert!(!local.join(".mtr-sync").exists());

    let third = get_ok(&p, "out", &["--to", to]);
    assert!(third.contains("up to date"), "{third}");
    // The agent keeps its chunk index next to itself, so unchanged files are not re-read.
    p.server
        .run_as_user_ok("test -s \"$(ls -d ~/.cache/mtr/send/*/index | head -n 1)\"");
}

#[test]
fn an_absolute_path_outside_remote_dir_downloads() {
    let p = Project::new();
    p.server.write_remote("elsewhere/notes.txt", b"notes");
    p.server.write_remote("elsewhere/deep/more.txt", b"more");
    let abs = p.server.remote_path("elsewhere/notes.txt");
    get_ok(&p, abs.to_str().unwrap(), &[]);
    assert_eq!(fs::read(p.root().join("notes.txt")).unwrap(), b"notes");
    get_ok(&p, "~/elsewhere", &["--to", "copy"]);
    if let Err(diff) = tree_equal(
        &p.server.remote_path("elsewhere"),
        &p.root().join("copy"),
        &[],
    ) {
        panic!("{diff}");
    }
}

#[test]
fn a_missing_path_fails_with_255_naming_host_and_path() {
    let p = Project::new();
    let out = get(&p, "nope/missing.bin", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "one line:\n{stderr}");
    assert!(
        error[0].contains(&format!("127.0.0.1:{}", p.server.port())),
        "{stderr}"
    );
    assert!(error[0].contains("nope/missing.bin"), "{stderr}");
    assert!(error[0].contains("does not exist"), "{stderr}");
    assert!(!p.root().join("missing.bin").exists());
    assert_no_litter(p.root());
}

#[test]
fn dry_run_lists_what_would_change_and_writes_nothing() {
    let p = Project::new();
    p.server
        .write_remote(format!("{}/out/a.txt", p.remote_rel), b"a");
    p.server
        .write_remote(format!("{}/out/b.txt", p.remote_rel), b"b");
    let downloads = tempfile::tempdir().unwrap();
    let to = format!("{}/", downloads.path().display());
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "--dry-run", "--get", "out", "--to"])
        .arg(&to)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("get plan for"), "{stdout}");
    assert!(stdout.contains("3 change(s)"), "{stdout}");
    assert!(stdout.contains("  + out/a.txt"), "{stdout}");
    assert!(stdout.contains("  + out/b.txt"), "{stdout}");
    assert_eq!(
        names(downloads.path()),
        Vec::<String>::new(),
        "a dry run wrote"
    );
    assert!(
        !p.home.path().join(".cache/mtr/get").exists(),
        "a dry run saved state"
    );

    // After a real get, the dry run shows the remote change only.
    get_ok(&p, "out", &["--to", &to]);
    p.server
        .write_remote(format!("{}/out/b.txt", p.remote_rel), b"b2");
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "--dry-run", "--get", "out", "--to"])
        .arg(&to)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 change(s)") && stdout.contains("  ~ out/b.txt"),
        "{stdout}"
    );
    assert_eq!(fs::read(downloads.path().join("out/b.txt")).unwrap(), b"b");
}

#[test]
fn a_command_runs_then_its_output_is_downloaded() {
    let p = Project::new();
    p.write("make.py", "import os, sys\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt', 'w').write('result')\nprint('made')\nsys.exit(int(sys.argv[1]))\n");
    let out = p
        .mtr()
        .args(["--no-tty", "--get", "out/", "python3", "make.py", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made\n");
    assert_eq!(fs::read(p.root().join("out/r.txt")).unwrap(), b"result");

    // The command's exit code is mtr's, and the download still happens.
    fs::remove_dir_all(p.root().join("out")).unwrap();
    let out = p
        .mtr()
        .args(["--no-tty", "--get", "out", "python3", "make.py", "3"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(p.root().join("out/r.txt")).unwrap(), b"result");
}

/// The installed agent of this build on the server.
fn installed_agent(p: &Project) -> PathBuf {
    let found = p
        .server
        .run_as_user_ok("find ~/.cache/mtr/agent -name mtr-agent -type f");
    let lines: Vec<&str> = found.lines().collect();
    assert_eq!(lines.len(), 1, "{found}");
    PathBuf::from(lines[0])
}

#[test]
fn a_hostile_server_cannot_write_outside_the_destination() {
    let p = Project::new();
    // First contact installs the real agent.
    p.server.write_remote("fine/ok.txt", b"ok");
    get_ok(&p, "~/fine", &["--to", "first"]);
    let agent = installed_agent(&p);
    fs::copy(testkit::bins::build("mtr-hostile-agent"), &agent).unwrap();

    let base = tempfile::tempdir().unwrap();
    let downloads = base.path().join("dl");
    fs::create_dir(&downloads).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let dest = downloads.join("dest");
    let to = dest.to_str().unwrap();

    // The stand-in speaks the protocol: its honest scenario downloads.
    get_ok(&p, "~/honest", &["--to", to]);
    assert_eq!(
        fs::read_to_string(dest.join("ok.txt")).unwrap(),
        "written by a hostile server\n"
    );
    fs::remove_dir_all(&dest).unwrap();

    let absolute = outside.path().join("absolute");
    for (remote, expected) in [
        ("~/escape", "unsafe path \"../escape\""),
        (absolute.to_str().unwrap(), "unsafe path"),
        ("~/sibling", "outside the download"),
        ("~/symlink", "under a symlink that was refused"),
    ] {
        let out = get(&p, remote, &["--to", to]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{remote}: {stderr}");
        assert!(stderr.contains(expected), "{remote}: {stderr}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{}", p.server.port())),
            "{stderr}"
        );
        if remote == "~/symlink" {
            assert!(stderr.contains("skipped symlink"), "{stderr}");
            assert!(!Path::new("/etc/mtr-hostile-pwned").exists());
            assert!(!fs::symlink_metadata(dest.join("etc")).is_ok_and(|m| m.is_symlink()));
        }
        // Nothing outside the destination: the download dir holds at most `dest`.
        assert_eq!(names(base.path()), ["dl"], "{remote}");
        let left = names(&downloads);
        assert!(left.is_empty() || left == ["dest"], "{remote}: {left:?}");
        assert_eq!(names(outside.path()), Vec::<String>::new(), "{remote}");
    }
}

/// mtr's libssh2 en/decrypts the middle of each packet in one call (see
/// `vendor/libssh2-sys/PATCHED.md`): every cipher it can negotiate, with a separate MAC
/// before or after encryption too, must carry a sync up and a get back byte for byte. The
/// server checks each packet mtr sends, libssh2 each one it receives.
#[test]
fn every_cipher_carries_a_sync_and_a_get_byte_for_byte() {
    let cases = [
        ("aes128-gcm@openssh.com", None),
        ("aes256-gcm@openssh.com", None),
        ("chacha20-poly1305@openssh.com", None),
        ("aes128-ctr", Some("hmac-sha2-256")),
        ("aes256-ctr", Some("hmac-sha2-512-etm@openssh.com")),
        ("aes256-cbc", Some("hmac-sha2-256")),
    ];
    for (cipher, mac) in cases {
        let mut server = testkit::sshd::Server::builder().config(&format!("Ciphers {cipher}"));
        if let Some(mac) = mac {
            server = server.config(&format!("MACs {mac}"));
        }
        let p = Project::with_server(server.start());
        gen::source_tree(&p.root().join("src"), 30, 300_000, 11);
        // Packets of every length: a file of random bytes that spans many, and small ones.
        gen::binary_file(&p.root().join("data/big.bin"), 3_000_000, 12);
        for len in [0, 1, 15, 16, 17, 4095, 32_768, 32_769] {
            gen::binary_file(&p.root().join(format!("data/{len}.bin")), len, len as u64);
        }
        let log = p.sync_debug();
        assert!(
            log.contains(&format!("cipher {cipher} / {cipher}")),
            "{cipher} was not the cipher used:\n{log}"
        );
        p.assert_synced();

        let downloads = tempfile::tempdir().unwrap();
        let to = format!("{}/", downloads.path().display());
        get_ok(&p, "data", &["--to", &to]);
        if let Err(diff) = tree_equal(&p.root().join("data"), &downloads.path().join("data"), &[]) {
            panic!("{cipher}: the download differs:\n{diff}");
        }
    }
}
