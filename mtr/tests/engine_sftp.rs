//! `sync: sftp` end to end against a real sshd: the mirror (contents, exec bits, symlinks,
//! empty directories) through edits, deletes and renames; remote-created files surviving;
//! exclude rules; password auth; `--dry-run`; `--get` of files and directories, including a
//! hostile remote tree; no half-written file after a failed upload; and the fallback to SFTP
//! when `mtr-agent` cannot run on the server.

mod util;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Output;

use testkit::gen;
use testkit::sshd::Server;
use util::Project;

const SFTP: &str = "    sync: sftp\n";

/// A project configured for `sync: sftp`.
fn project() -> Project {
    project_on(Server::start())
}

fn project_on(server: Server) -> Project {
    let p = Project::with_server(server);
    p.write_config(SFTP);
    p
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `mtr --no-tty ARGS...`, with its outcome.
fn mtr(p: &Project, args: &[&str]) -> Output {
    p.mtr().arg("--no-tty").args(args).output().unwrap()
}

/// `mtr --no-tty ARGS...`, which must succeed; returns (stdout, stderr).
fn mtr_ok(p: &Project, args: &[&str]) -> (String, String) {
    let out = mtr(p, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "mtr {args:?} failed ({:?}):\nstdout: {stdout}\nstderr: {stderr}\nsshd log:\n{}",
        out.status,
        p.server.log()
    );
    (stdout, stderr)
}

/// Everything in the remote staging directory (temporaries of uploads).
fn staging(p: &Project) -> Vec<String> {
    match fs::read_dir(p.remote().join(".mtr-sync/sftp/staging")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn read_remote(p: &Project, rel: &str) -> String {
    fs::read_to_string(p.remote().join(rel)).unwrap_or_else(|e| panic!("reading remote {rel}: {e}"))
}

#[test]
fn mirrors_the_tree_through_edits_deletes_and_renames() {
    let p = project();
    gen::source_tree(p.root(), 60, 400_000, 11);
    p.write("bin/run.sh", "#!/bin/sh\necho hi\n");
    gen::set_mode(&p.root().join("bin/run.sh"), 0o755);
    p.write("data/blob.bin", vec![3u8; 1_500_000]);
    fs::create_dir_all(p.root().join("empty/nested")).unwrap();
    symlink("bin/run.sh", p.root().join("link")).unwrap();
    symlink("/nonexistent/target", p.root().join("dangling")).unwrap();
    p.write("ünïcødé/名前 with space.py", "print('hi')\n");

    let first = p.sync();
    p.assert_synced();
    assert!(first.contains("over sftp"), "{first}");
    assert!(
        !p.remote().join(".mtr").exists(),
        ".mtr/ must never be synced"
    );
    assert!(
        staging(&p).is_empty(),
        "temporaries left: {:?}",
        staging(&p)
    );

    let noop = p.sync();
    assert!(noop.contains("up to date"), "{noop}");

    // Edit (same size and bigger), mode change, delete, a file that becomes a directory, a
    // symlink retargeted, a directory renamed.
    p.write("bin/run.sh", "#!/bin/sh\necho HI\n");
    p.write("data/blob.bin", vec![4u8; 2_000_000]);
    gen::set_mode(&p.root().join("data/blob.bin"), 0o700);
    fs::remove_dir_all(p.root().join("empty/nested")).unwrap();
    fs::remove_file(p.root().join("link")).unwrap();
    symlink("data/blob.bin", p.root().join("link")).unwrap();
    fs::rename(p.root().join("bin"), p.root().join("tools")).unwrap();
    p.write("bin", "now a file\n");
    p.sync();
    p.assert_synced();
    assert_eq!(read_remote(&p, "tools/run.sh"), "#!/bin/sh\necho HI\n");
    let mode = fs::metadata(p.remote().join("data/blob.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    // A file turned into a directory and back again.
    fs::remove_file(p.root().join("bin")).unwrap();
    p.write("bin/inner.txt", "inside\n");
    p.sync();
    p.assert_synced();
    assert!(
        staging(&p).is_empty(),
        "temporaries left: {:?}",
        staging(&p)
    );
}

#[test]
fn only_the_mtime_changed_sets_it_without_uploading() {
    let p = project();
    p.write("a.txt", "same content\n");
    p.sync();
    let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(p.root().join("a.txt"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    let out = p.sync();
    assert!(out.contains("0 file(s), 0 B uploaded"), "{out}");
    let remote = fs::metadata(p.remote().join("a.txt")).unwrap();
    assert_eq!(remote.modified().unwrap(), past);
}

#[test]
fn remote_created_files_survive_and_excluded_paths_are_neither_sent_nor_deleted() {
    let p = project();
    p.write_config(&format!("{SFTP}    exclude: [\"*.ckpt\", \"/scratch/\"]\n"));
    p.write("train.py", "print(1)\n");
    p.write("model.ckpt", "excluded by a pattern");
    p.write("scratch/tmp.txt", "excluded, anchored");
    p.write(".gitignore", "build/\n");
    p.write("build/out.o", "ignored by .gitignore");
    p.write("src/.gitignore", "generated.py\n");
    p.write("src/generated.py", "ignored by a nested .gitignore");
    p.write("src/main.py", "main\n");
    p.write("notes/.mtrignore", "private.md\n");
    p.write("notes/private.md", "ignored by .mtrignore");
    p.write("notes/public.md", "synced\n");
    p.write("outputs/keep.txt", "synced, then deleted locally\n");
    p.sync();
    for excluded in [
        "model.ckpt",
        "scratch",
        "build",
        "src/generated.py",
        "notes/private.md",
    ] {
        assert!(!p.remote().join(excluded).exists(), "{excluded} was synced");
    }
    assert_eq!(read_remote(&p, "notes/public.md"), "synced\n");

    // What the remote job writes: beside synced files, in a directory deleted locally, and at
    // excluded paths.
    p.server
        .write_remote(format!("{}/results.txt", p.remote_rel), "job output\n");
    p.server
        .write_remote(format!("{}/outputs/job.log", p.remote_rel), "job log\n");
    p.server.write_remote(
        format!("{}/model.ckpt", p.remote_rel),
        "remote checkpoint\n",
    );
    p.server.write_remote(
        format!("{}/build/cache.bin", p.remote_rel),
        "remote build\n",
    );
    fs::remove_dir_all(p.root().join("outputs")).unwrap();
    p.write("train.py", "print(2)\n");
    p.sync();
    assert_eq!(read_remote(&p, "train.py"), "print(2)\n");
    assert_eq!(read_remote(&p, "results.txt"), "job output\n");
    assert_eq!(read_remote(&p, "outputs/job.log"), "job log\n");
    assert!(!p.remote().join("outputs/keep.txt").exists());
    assert_eq!(read_remote(&p, "model.ckpt"), "remote checkpoint\n");
    assert_eq!(read_remote(&p, "build/cache.bin"), "remote build\n");

    // A synced file that becomes excluded stays on the server, untouched.
    p.write_config(&format!(
        "{SFTP}    exclude: [\"*.ckpt\", \"/scratch/\", \"notes/\"]\n"
    ));
    p.sync();
    assert_eq!(read_remote(&p, "notes/public.md"), "synced\n");
    // ...and is not deleted once it is gone locally either.
    fs::remove_dir_all(p.root().join("notes")).unwrap();
    p.sync();
    assert_eq!(read_remote(&p, "notes/public.md"), "synced\n");
}

#[test]
fn a_home_relative_remote_dir_is_created_under_the_login_directory() {
    let p = project();
    let cfg = fs::read_to_string(p.root().join(".mtr/config.yaml")).unwrap();
    let cfg = cfg.replace(&p.remote().display().to_string(), "~/deep/new/proj");
    fs::write(p.root().join(".mtr/config.yaml"), cfg).unwrap();
    p.write("a.txt", "a\n");
    p.sync();
    assert_eq!(
        fs::read_to_string(p.server.remote_path("deep/new/proj/a.txt")).unwrap(),
        "a\n"
    );
}

#[test]
fn password_authentication_works_with_sftp() {
    let p = project_on(Server::builder().password("s3cret pass").start());
    fs::remove_file(p.home.key()).unwrap();
    let cfg = format!(
        "servers:\n  test:\n    host: 127.0.0.1\n    port: {}\n    user: {}\n    password: \"s3cret pass\"\n    remote_dir: {}\n{SFTP}",
        p.server.port(),
        p.server.user(),
        p.remote().display()
    );
    let cfg_path = p.root().join(".mtr/config.yaml");
    fs::write(&cfg_path, cfg).unwrap();
    fs::set_permissions(&cfg_path, fs::Permissions::from_mode(0o600)).unwrap();
    p.write("a.py", "a\n");
    p.write("sub/b.bin", vec![9u8; 100_000]);
    p.sync();
    p.assert_synced();
}

#[test]
fn dry_run_prints_the_plan_on_stdout_and_changes_nothing() {
    let p = project();
    p.write("keep.txt", "keep\n");
    p.write("edit.txt", "v1\n");
    p.write("gone.txt", "gone\n");
    p.sync();
    let before = p.server.run_as_user_ok(&format!(
        "cd '{}' && find . -printf '%p %s %T@\\n' | sort",
        p.remote().display()
    ));

    p.write("edit.txt", "v2, longer\n");
    p.write("new/file.txt", "new\n");
    fs::remove_file(p.root().join("gone.txt")).unwrap();
    let (stdout, _) = mtr_ok(&p, &["--sync-only", "--dry-run"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("sync plan for "), "{stdout}");
    assert!(lines[0].ends_with(": 4 change(s)"), "{stdout}");
    for expected in [
        "  ~ edit.txt",
        "  + new",
        "  + new/file.txt",
        "  - gone.txt",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    let after = p.server.run_as_user_ok(&format!(
        "cd '{}' && find . -printf '%p %s %T@\\n' | sort",
        p.remote().display()
    ));
    assert_eq!(before, after, "--dry-run changed the server");

    // The plan of a first sync into a directory that does not exist creates nothing.
    let q = project();
    q.write("a.txt", "a\n");
    let (stdout, _) = mtr_ok(&q, &["--sync-only", "--dry-run"]);
    assert!(stdout.contains("  + a.txt"), "{stdout}");
    assert!(
        !q.remote().exists(),
        "--dry-run created the remote directory"
    );
}

#[test]
fn a_failed_upload_leaves_no_partial_file_and_the_next_sync_completes() {
    let p = project();
    let mount = Tmpfs::mount(&p, "1m");
    p.write("small.txt", "small\n");
    p.write("big.bin", vec![5u8; 3_000_000]);
    let out = mtr(&p, &["--sync-only"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("cannot upload big.bin")
            && stderr.contains(p.server.user())
            && stderr.contains("full disk"),
        "{stderr}"
    );
    assert!(
        !p.remote().join("big.bin").exists(),
        "a partial big.bin reached its final name"
    );
    assert_no_partial_files(&p);

    // A temporary left by a run that was killed is removed by the next sync that uploads.
    mount.resize("64m");
    p.server.write_remote(
        format!("{}/.mtr-sync/sftp/staging/12345-1", p.remote_rel),
        vec![5u8; 1000],
    );
    p.sync();
    p.assert_synced();
    assert!(
        staging(&p).is_empty(),
        "temporaries left: {:?}",
        staging(&p)
    );
}

/// Every file on the server outside mtr's own directory equals the local one.
fn assert_no_partial_files(p: &Project) {
    let listing = p.server.run_as_user_ok(&format!(
        "cd '{}' && find . -path ./.mtr-sync -prune -o -type f -print",
        p.remote().display()
    ));
    for rel in listing.lines() {
        let rel = rel.trim_start_matches("./");
        assert_eq!(
            fs::read(p.remote().join(rel)).unwrap(),
            fs::read(p.root().join(rel)).unwrap(),
            "{rel} on the server is not the local file"
        );
    }
}

/// A small tmpfs mounted on the project's remote directory (unmounted on drop).
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(p: &Project, size: &str) -> Tmpfs {
        let path = p.server.mkdir_remote(&p.remote_rel);
        let uid = p.server.run_as_user_ok("id -u").trim().to_string();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},uid={uid},mode=0755"))
            .arg("tmpfs")
            .arg(&path)
            .status()
            .expect("mount (util-linux)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN)"
        );
        Tmpfs { path }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[test]
fn get_downloads_a_file_and_a_directory_and_skips_unchanged_files() {
    let p = project();
    p.write("a.txt", "a\n");
    p.sync();
    p.server.write_remote(
        format!("{}/out/model.pt", p.remote_rel),
        vec![7u8; 3_000_000],
    );
    p.server
        .write_remote(format!("{}/out/logs/run.log", p.remote_rel), "log\n");
    p.server
        .run_as_user_ok(&format!("cd '{}/out' && chmod 755 logs/run.log && mkdir empty && ln -s model.pt latest && ln -s ../model.pt logs/up", p.remote().display()));

    let dl = tempfile::tempdir().unwrap();
    let to = format!("{}/", dl.path().display());
    let (stdout, _) = mtr_ok(&p, &["--get", "out/model.pt", "--to", &to]);
    assert!(stdout.is_empty(), "--get wrote on stdout: {stdout}");
    assert_eq!(
        fs::read(dl.path().join("model.pt")).unwrap(),
        vec![7u8; 3_000_000]
    );

    mtr_ok(&p, &["--get", "out", "--to", &to]);
    if let Err(diff) = gen::tree_equal(&p.remote().join("out"), &dl.path().join("out"), &[]) {
        panic!("the download differs from the server:\n{diff}");
    }
    let leftovers: Vec<_> = fs::read_dir(dl.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".mtr-get"))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    // Unchanged (same size and mtime): not downloaded again, so the file is the same inode.
    use std::os::unix::fs::MetadataExt;
    let ino = |rel: &str| fs::metadata(dl.path().join(rel)).unwrap().ino();
    let before = ino("out/model.pt");
    let (_, stderr) = mtr_ok(&p, &["-v", "--get", "out", "--to", &to]);
    assert_eq!(
        ino("out/model.pt"),
        before,
        "an unchanged file was downloaded again"
    );
    assert!(stderr.contains("up to date"), "{stderr}");
    // A changed one is.
    p.server.write_remote(
        format!("{}/out/model.pt", p.remote_rel),
        vec![8u8; 3_000_001],
    );
    mtr_ok(&p, &["--get", "out", "--to", &to]);
    assert_eq!(
        fs::read(dl.path().join("out/model.pt")).unwrap(),
        vec![8u8; 3_000_001]
    );
}

#[test]
fn get_takes_absolute_paths_outside_remote_dir() {
    let p = project();
    p.write("a.txt", "a\n");
    p.sync();
    let elsewhere = p.server.write_remote("elsewhere/data.csv", "x,y\n1,2\n");
    let dl = tempfile::tempdir().unwrap();
    let to = dl.path().join("renamed.csv");
    mtr_ok(
        &p,
        &[
            "--get",
            elsewhere.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read_to_string(&to).unwrap(), "x,y\n1,2\n");
    // And `~/...`, relative to the login directory.
    let to2 = dl.path().join("home.csv");
    mtr_ok(
        &p,
        &[
            "--get",
            "~/elsewhere/data.csv",
            "--to",
            to2.to_str().unwrap(),
        ],
    );
    assert_eq!(fs::read_to_string(&to2).unwrap(), "x,y\n1,2\n");
}

#[test]
fn get_of_a_missing_path_fails_with_a_clear_error() {
    let p = project();
    p.write("a.txt", "a\n");
    p.sync();
    let dl = tempfile::tempdir().unwrap();
    let out = mtr(
        &p,
        &[
            "--get",
            "no/such/file.txt",
            "--to",
            dl.path().to_str().unwrap(),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("no such file or directory")
            && stderr.contains("no/such/file.txt")
            && stderr.contains(&format!("{}@127.0.0.1", p.server.user())),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(dl.path()).unwrap().count(), 0);
}

#[test]
fn get_refuses_symlinks_out_of_the_destination_and_never_writes_through_local_ones() {
    let p = project();
    p.write("a.txt", "a\n");
    p.sync();
    let outside = tempfile::tempdir().unwrap();
    gen::set_mode(outside.path(), 0o777);
    p.server
        .write_remote(format!("{}/out/ok.txt", p.remote_rel), "fine\n");
    p.server
        .write_remote(format!("{}/out/sub/victim.txt", p.remote_rel), "hostile\n");
    p.server.run_as_user_ok(&format!(
        "cd '{}/out' && ln -s /etc/passwd abs && ln -s ../../../escape rel && ln -s '{}' dir && ln -s sub/victim.txt inside",
        p.remote().display(),
        outside.path().display()
    ));

    let dl = tempfile::tempdir().unwrap();
    // A local symlink inside the destination, where the server has a directory.
    fs::create_dir_all(dl.path().join("out")).unwrap();
    symlink(outside.path(), dl.path().join("out/sub")).unwrap();

    let to = format!("{}/", dl.path().display());
    let (_, stderr) = mtr_ok(&p, &["--get", "out", "--to", &to]);
    for refused in ["abs", "rel", "dir"] {
        assert!(
            fs::symlink_metadata(dl.path().join("out").join(refused)).is_err(),
            "the symlink {refused} was created"
        );
        assert!(stderr.contains(&format!("out/{refused} ->")), "{stderr}");
    }
    assert!(stderr.contains("points outside"), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(
        fs::read_to_string(dl.path().join("out/ok.txt")).unwrap(),
        "fine\n"
    );
    assert_eq!(
        fs::read_link(dl.path().join("out/inside")).unwrap(),
        Path::new("sub/victim.txt")
    );
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was written through the local symlink"
    );
    // A destination that is itself a symlink is refused outright.
    let link = dl.path().join("link.txt");
    symlink(outside.path().join("x"), &link).unwrap();
    let out = mtr(&p, &["--get", "out/ok.txt", "--to", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn get_dry_run_lists_the_download_and_writes_nothing() {
    let p = project();
    p.write("a.txt", "a\n");
    p.sync();
    p.server
        .write_remote(format!("{}/out/x.txt", p.remote_rel), "x\n");
    let dl = tempfile::tempdir().unwrap();
    let to = format!("{}/", dl.path().display());
    let (stdout, _) = mtr_ok(&p, &["--dry-run", "--get", "out", "--to", &to]);
    assert!(stdout.contains("get plan for"), "{stdout}");
    assert!(stdout.contains("  + out/x.txt"), "{stdout}");
    assert_eq!(fs::read_dir(dl.path()).unwrap().count(), 0);
}

/// A server where `mtr-agent` cannot run: its login shell finds a `uname` that says FreeBSD.
fn freebsd_server() -> Server {
    let server = Server::builder()
        .bashrc("export PATH=\"$HOME/fakebin:$PATH\"")
        .start();
    server.write_remote(
        "fakebin/uname",
        "#!/bin/sh\ncase \"$1\" in -m) echo amd64;; *) echo FreeBSD;; esac\n",
    );
    server.run_as_user_ok("chmod 755 fakebin/uname");
    server
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("warning")).collect()
}

#[test]
fn without_a_runnable_agent_mtr_says_so_once_and_uses_sftp() {
    let p = Project::with_server(freebsd_server());
    p.write("train.py", "print('hi')\n");
    p.write("run.sh", "#!/bin/sh\necho run\n");
    gen::set_mode(&p.root().join("run.sh"), 0o755);

    // Sync with the default engine.
    let stderr = p.sync();
    p.assert_synced();
    let w = warnings(&stderr);
    assert_eq!(w.len(), 1, "{stderr}");
    assert!(
        w[0].contains("FreeBSD amd64")
            && w[0].contains(&format!("{}@127.0.0.1", p.server.user()))
            && w[0].contains("sync: sftp"),
        "{stderr}"
    );

    // A batch command (after a sync): one warning, output kept apart, the exit status.
    let out = p
        .mtr()
        .args(["--no-tty", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert_eq!(text(&out.stdout), "out\n");
    assert!(stderr.ends_with("err\n"), "{stderr}");
    assert_eq!(warnings(&stderr).len(), 1, "{stderr}");

    // Without the sync: stdin forwarded to its end, the run's only warning.
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "sh", "-c", "cat; echo done"])
        .write_stdin("from stdin\n")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), "from stdin\ndone\n");
    assert_eq!(warnings(&stderr).len(), 1, "{stderr}");

    // A command killed by a signal: 128+N.
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "sh", "-c", "kill -TERM $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));

    // --get, after the sync that found out.
    p.server
        .write_remote(format!("{}/result.txt", p.remote_rel), "42\n");
    let dl = tempfile::tempdir().unwrap();
    let to = format!("{}/", dl.path().display());
    let (_, stderr) = mtr_ok(&p, &["--get", "result.txt", "--to", &to]);
    assert_eq!(
        fs::read_to_string(dl.path().join("result.txt")).unwrap(),
        "42\n"
    );
    assert_eq!(warnings(&stderr).len(), 1, "{stderr}");
}

/// Noexec tmpfs mounts, owned by the server's account, at each of `paths` (unmounted and
/// removed on drop).
struct Noexec {
    paths: Vec<std::path::PathBuf>,
}

impl Noexec {
    fn mount(server: &Server, paths: Vec<std::path::PathBuf>) -> Noexec {
        let uid = server.run_as_user_ok("id -u").trim().to_string();
        for path in &paths {
            fs::create_dir_all(path).unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size=64m,noexec,uid={uid},mode=0700"))
                .arg("tmpfs")
                .arg(path)
                .status()
                .expect("mount (util-linux)");
            assert!(
                status.success(),
                "mounting a tmpfs needs root (CAP_SYS_ADMIN)"
            );
        }
        Noexec { paths }
    }
}

impl Drop for Noexec {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(path)
                .status();
            let _ = fs::remove_dir(path);
        }
    }
}

#[test]
fn a_server_that_executes_nothing_of_ours_is_synced_over_sftp() {
    let p = Project::new();
    let uid = p.server.run_as_user_ok("id -u").trim().to_string();
    // Every place the agent may be installed (XDG_RUNTIME_DIR is unset under this sshd).
    let _noexec = Noexec::mount(
        &p.server,
        vec![
            p.server.remote_path(".cache/mtr"),
            format!("/dev/shm/mtr-{uid}").into(),
            format!("/tmp/mtr-{uid}").into(),
        ],
    );
    p.write("a.py", "print('a')\n");
    let stderr = p.sync();
    p.assert_synced();
    let w = warnings(&stderr);
    assert_eq!(w.len(), 1, "{stderr}");
    assert!(
        w[0].contains("noexec") && w[0].contains("using sftp"),
        "{stderr}"
    );

    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "sh", "-c", "echo out; exit 3"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(warnings(&stderr).len(), 1, "{stderr}");
}
