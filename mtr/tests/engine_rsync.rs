//! `sync: rsync` end to end against a real sshd: mirror fidelity, deletions that spare remote
//! work, exclude semantics equal to the agent engine's, password auth through sshpass, missing
//! tools, `--dry-run`, and `--get` of files, directories and paths outside `remote_dir`.
//!
//! Needs root, sshd, rsync, sshpass and ssh (scripts/test.sh installs them); without them the
//! tests fail and say how to install, never skip.

mod util;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use testkit::gen::{self, tree_equal};
use testkit::sshd::Server;
use util::Project;

const RSYNC: &str = "    sync: rsync\n";

/// The local programs the engine runs; a missing one fails the test with how to install it.
fn tool(name: &str) -> PathBuf {
    let package = match name {
        "ssh" => "openssh-client",
        other => other,
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: run scripts/test.sh or apt-get install {package}")
        })
}

/// A project whose server entry says `sync: rsync` (and `extra`).
fn project_with(server: Server, extra: &str) -> Project {
    for t in ["rsync", "sshpass", "ssh"] {
        tool(t);
    }
    let p = Project::with_server(server);
    p.write_config(&format!("{RSYNC}{extra}"));
    p
}

fn project() -> Project {
    project_with(Server::start(), "")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mtr --no-tty ARGS` in the project, which must succeed; returns its output.
fn mtr_ok(p: &Project, args: &[&str]) -> Output {
    let out = p.mtr().arg("--no-tty").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "mtr {args:?} failed ({:?}):\n{}\nsshd log:\n{}",
        out.status,
        stderr(&out),
        p.server.log()
    );
    out
}

/// A directory of symlinks to the given tools, to run mtr with a PATH lacking the others.
fn path_with(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mtr-path-")
        .tempdir()
        .unwrap();
    for t in tools {
        symlink(tool(t), dir.path().join(t)).unwrap();
    }
    dir
}

/// Inode and mtime: unchanged when a sync leaves the file alone.
fn identity(path: &Path) -> (u64, i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

/// [`Project::assert_synced`], also ignoring the remote-created `survivors`.
fn assert_synced_except(p: &Project, survivors: &[&str]) {
    let mut ignore = vec![".mtr", ".mtr-sync"];
    ignore.extend_from_slice(survivors);
    if let Err(diff) = tree_equal(p.root(), &p.remote(), &ignore) {
        panic!("remote tree differs from local:\n{diff}");
    }
}

/// Drops `key_filename` from the project config: the password is the only way in.
fn password_only(p: &Project) {
    let path = p.root().join(".mtr/config.yaml");
    let cfg: String = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("key_filename"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(path, cfg).unwrap();
    fs::remove_file(p.home.key()).unwrap();
}

#[test]
fn first_sync_mirrors_the_tree_and_a_second_changes_nothing() {
    let p = project();
    gen::source_tree(p.root(), 150, 1_000_000, 11);
    p.write("bin/run.sh", "#!/bin/sh\necho hi\n");
    gen::set_mode(&p.root().join("bin/run.sh"), 0o755);
    gen::binary_file(&p.root().join("data/weights.bin"), 500_000, 3);
    fs::create_dir_all(p.root().join("empty/nested")).unwrap();
    symlink("bin/run.sh", p.root().join("link")).unwrap();
    symlink("/nonexistent/target", p.root().join("dangling")).unwrap();
    p.write("ünïcødé/名前.py", "print('hi')\n");
    p.write("with space/it's (1).txt", "spaces\n");
    p.write("star*name?.txt", "wildcards in a name\n");
    p.write("new\nline.txt", "a newline in a name\n");
    let first = p.sync();
    p.assert_synced();
    assert!(
        !p.remote().join(".mtr").exists(),
        ".mtr/ must never be synced"
    );
    assert!(
        first.contains("synced") && first.contains("rsync"),
        "{first}"
    );

    let before = identity(&p.remote().join("data/weights.bin"));
    let second = p.sync();
    assert!(second.contains("up to date"), "{second}");
    assert_eq!(identity(&p.remote().join("data/weights.bin")), before);

    // Batch mode without -v says nothing at all.
    let out = mtr_ok(&p, &["--sync-only"]);
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn edits_deletes_renames_and_kind_changes_reach_the_remote() {
    let p = project();
    gen::source_tree(&p.root().join("src"), 60, 300_000, 12);
    p.write("model/a.py", "v1");
    p.write("model/deep/b.py", "b");
    p.write("data/blob.bin", vec![7u8; 200_000]);
    p.write("was_file", "file");
    p.write("was_dir/x", "x");
    p.write("tool.sh", "#!/bin/sh\n");
    symlink("model/a.py", p.root().join("was_link")).unwrap();
    p.sync();
    p.assert_synced();

    p.write("model/a.py", "v2, longer than before");
    fs::remove_file(p.root().join("data/blob.bin")).unwrap();
    fs::rename(p.root().join("model"), p.root().join("model2")).unwrap();
    gen::set_mode(&p.root().join("tool.sh"), 0o755);
    fs::remove_file(p.root().join("was_file")).unwrap();
    p.write("was_file/now_inside", "dir now");
    fs::remove_dir_all(p.root().join("was_dir")).unwrap();
    p.write("was_dir", "file now");
    fs::remove_file(p.root().join("was_link")).unwrap();
    p.write("was_link", "file now");
    p.sync();
    p.assert_synced();

    // And back again.
    fs::remove_file(p.root().join("was_link")).unwrap();
    symlink("tool.sh", p.root().join("was_link")).unwrap();
    fs::remove_dir_all(p.root().join("model2")).unwrap();
    p.sync();
    p.assert_synced();
}

#[test]
fn remote_created_files_survive_even_inside_a_locally_deleted_directory() {
    let p = project();
    p.write("train.py", "print(1)");
    p.write("top.txt", "top");
    p.write("outputs/keep.txt", "mine");
    p.write("outputs/deeper/mine.txt", "mine");
    p.write("runs/a/b/c.txt", "mine");
    p.write("glob*[x].txt", "a name that is also a pattern");
    p.sync();
    let rel = |r: &str| format!("{}/{r}", p.remote_rel);
    p.server.write_remote(rel("results.txt"), "remote result");
    p.server
        .write_remote(rel("outputs/deeper/job.log"), "remote log");
    p.server.write_remote(rel("train.py.bak"), "remote backup");
    // Matched by the pattern `glob*[x].txt` if mtr's rule for that name were not escaped.
    p.server
        .write_remote(rel("globZx.txt"), "remote, pattern-like name");
    fs::remove_dir_all(p.root().join("outputs")).unwrap();
    fs::remove_dir_all(p.root().join("runs")).unwrap();
    fs::remove_file(p.root().join("top.txt")).unwrap();
    fs::remove_file(p.root().join("glob*[x].txt")).unwrap();
    p.sync();

    let r = p.remote();
    assert_eq!(
        fs::read_to_string(r.join("results.txt")).unwrap(),
        "remote result"
    );
    assert_eq!(
        fs::read_to_string(r.join("train.py.bak")).unwrap(),
        "remote backup"
    );
    assert_eq!(
        fs::read_to_string(r.join("outputs/deeper/job.log")).unwrap(),
        "remote log"
    );
    // mtr's files are gone, the directories holding remote files stay, the others go.
    assert!(!r.join("outputs/keep.txt").exists());
    assert!(!r.join("outputs/deeper/mine.txt").exists());
    assert!(!r.join("runs").exists());
    assert!(!r.join("top.txt").exists());
    assert!(!r.join("glob*[x].txt").exists());
    assert!(r.join("globZx.txt").exists());
    // The root was read whole to find top.txt: its excluded .mtr/ still did not travel.
    assert!(!r.join(".mtr").exists(), ".mtr/ must never be synced");
    assert_synced_except(
        &p,
        &["results.txt", "train.py.bak", "globZx.txt", "outputs"],
    );

    // The kept directory is now the remote job's: later syncs leave it alone.
    p.sync();
    assert!(r.join("outputs/deeper/job.log").exists());
}

#[test]
fn excludes_gitignore_and_mtrignore_leave_the_same_remote_tree_as_the_agent() {
    let mut p = project();
    p.write_config("    exclude: [\"*.ckpt\", \"/scratch/\", \"logs/\"]\n");
    gen::source_tree(&p.root().join("src"), 30, 100_000, 13);
    p.write("train.py", "print('train')\n");
    p.write("model.ckpt", "excluded by a pattern");
    p.write("src/deep/old.ckpt", "excluded at any depth");
    p.write("scratch/tmp.txt", "anchored exclude");
    p.write("sub/scratch/kept.txt", "anchored: not this one");
    p.write("logs/run.log", "excluded dir");
    p.write(".gitignore", "build/\nsecret.env\n*.log\n!important.log\n");
    p.write("build/out.o", "ignored");
    p.write("secret.env", "ignored");
    p.write("important.log", "re-included by !");
    p.write("src/.gitignore", "generated.py\n");
    p.write("src/generated.py", "ignored by a nested .gitignore");
    p.write("src/notes/.mtrignore", "private.md\n");
    p.write("src/notes/private.md", "ignored by .mtrignore");
    p.write("src/notes/public.md", "synced");
    p.write("stale.txt", "synced, then excluded and deleted");

    let engines = [("agent", ""), ("rsync", RSYNC)];
    let sync_both = |p: &mut Project| {
        for (name, extra) in engines {
            p.remote_rel = format!("work/{name}");
            p.write_config(&format!(
                "{extra}    exclude: [\"*.ckpt\", \"/scratch/\", \"logs/\"]\n"
            ));
            p.sync();
        }
    };
    let compare = |p: &Project, step: &str| {
        let agent = p.server.remote_path("work/agent");
        let rsync = p.server.remote_path("work/rsync");
        if let Err(diff) = tree_equal(&agent, &rsync, &[".mtr", ".mtr-sync"]) {
            panic!("{step}: the agent's and rsync's remote trees differ:\n{diff}");
        }
    };
    sync_both(&mut p);
    compare(&p, "first sync");
    let rsync = p.server.remote_path("work/rsync");
    for gone in [
        "model.ckpt",
        "scratch",
        "logs",
        "build",
        "secret.env",
        "src/generated.py",
    ] {
        assert!(!rsync.join(gone).exists(), "{gone} was synced");
    }
    assert!(rsync.join("sub/scratch/kept.txt").exists());
    assert!(rsync.join("important.log").exists());

    // An excluded path on the server is neither overwritten nor deleted, and a synced path
    // that becomes excluded and is then deleted locally is forgotten, not deleted.
    for name in ["agent", "rsync"] {
        let r = p.server.remote_path(format!("work/{name}"));
        fs::write(r.join("model.ckpt"), "remote weights").unwrap();
    }
    p.write(".mtrignore", "stale.txt\n");
    fs::remove_file(p.root().join("stale.txt")).unwrap();
    fs::remove_dir_all(p.root().join("src/notes")).unwrap();
    // rsync reads the root and src/ whole to find what went: their excluded children must
    // still not travel.
    fs::remove_file(p.root().join("train.py")).unwrap();
    sync_both(&mut p);
    compare(&p, "after excluding and deleting");
    assert_eq!(
        fs::read_to_string(rsync.join("model.ckpt")).unwrap(),
        "remote weights"
    );
    assert!(rsync.join("stale.txt").exists());
    assert!(!rsync.join("src/notes").exists());
    assert!(!rsync.join("train.py").exists());
    for excluded in [
        "scratch",
        "logs",
        "build",
        "secret.env",
        "src/generated.py",
        ".mtr",
    ] {
        assert!(!rsync.join(excluded).exists(), "{excluded} was synced");
    }
}

#[test]
fn a_home_relative_remote_dir_with_spaces_is_created_and_used() {
    let p = project();
    let cfg = format!(
        "servers:\n  test:\n    host: {}\n    port: {}\n    user: {}\n    key_filename: {}\n    remote_dir: \"~/deep er/it's proj\"\n{RSYNC}",
        p.server.host(),
        p.server.port(),
        p.server.user(),
        p.home.key().display(),
    );
    fs::write(p.root().join(".mtr/config.yaml"), cfg).unwrap();
    p.write("a.py", "a");
    p.write("d/b.py", "b");
    p.sync();
    let remote = p.server.remote_path("deep er/it's proj");
    if let Err(diff) = tree_equal(p.root(), &remote, &[".mtr"]) {
        panic!("{diff}");
    }
    fs::remove_file(p.root().join("d/b.py")).unwrap();
    p.sync();
    assert!(!remote.join("d/b.py").exists());
}

#[test]
fn a_password_goes_through_sshpass_in_the_environment_never_in_argv() {
    let password = "pa ss'word";
    let server = Server::builder().password(password).start();
    let p = project_with(server, &format!("    password: \"{password}\"\n"));
    // Only the password can work: no key in the config (the harness wrote one), none in HOME.
    password_only(&p);

    // Wrappers record how each program is called, then run the real one.
    let bin = tempfile::Builder::new()
        .prefix("mtr-wrap-")
        .tempdir()
        .unwrap();
    let log = bin.path().join("log");
    fs::create_dir(&log).unwrap();
    for name in ["rsync", "ssh", "sshpass"] {
        let script = format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{log}/{name}.argv'\n\
             printf '%s' \"${{SSHPASS-unset}}\" > '{log}/{name}.env'\nexec '{real}' \"$@\"\n",
            log = log.display(),
            real = tool(name).display()
        );
        let path = bin.path().join(name);
        fs::write(&path, script).unwrap();
        gen::set_mode(&path, 0o755);
    }
    let path = std::env::join_paths(
        std::iter::once(bin.path().to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();

    p.write("x.txt", "x\n");
    let out = p
        .mtr()
        .env("PATH", &path)
        .args(["--no-tty", "--sync-only"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), p.server.log());
    p.assert_synced();

    let read = |f: &str| fs::read_to_string(log.join(f)).unwrap_or_default();
    let sshpass_argv = read("sshpass.argv");
    assert_eq!(sshpass_argv.lines().next(), Some("-e"), "{sshpass_argv}");
    assert_eq!(read("sshpass.env"), password);
    for argv in ["rsync.argv", "ssh.argv", "sshpass.argv"] {
        let args = read(argv);
        assert!(!args.is_empty(), "{argv} was not called");
        assert!(
            !args.contains("pa ss"),
            "the password is in {argv}:\n{args}"
        );
    }
}

#[test]
fn a_wrong_password_is_an_authentication_error() {
    let server = Server::builder().password("right").start();
    let p = project_with(server, "    password: wrong\n");
    password_only(&p);
    p.write("x.txt", "x");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", p.server.port())),
        "{err}"
    );
    assert!(!p.remote().join("x.txt").exists());
}

#[test]
fn a_missing_local_rsync_is_a_clear_error_saying_how_to_install_it() {
    let p = project();
    p.write("a.py", "a");
    let bin = path_with(&["ssh", "sshpass"]);
    let out = p
        .mtr()
        .env("PATH", bin.path())
        .args(["--no-tty", "--sync-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("rsync is not installed here"), "{err}");
    assert!(err.contains("apt-get install rsync"), "{err}");
    assert!(!p.remote().exists());

    let out = p
        .mtr()
        .env("PATH", bin.path())
        .args(["--no-tty", "--get", "a.py"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("apt-get install rsync"));
}

#[test]
fn a_missing_sshpass_is_a_clear_error_saying_how_to_install_it() {
    let server = Server::builder().password("pw").start();
    let p = project_with(server, "    password: pw\n");
    p.write("a.py", "a");
    let bin = path_with(&["ssh", "rsync"]);
    let out = p
        .mtr()
        .env("PATH", bin.path())
        .args(["--no-tty", "--sync-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sshpass is not installed here"), "{err}");
    assert!(err.contains("apt-get install sshpass"), "{err}");
    assert!(!p.remote().exists());
}

#[test]
fn a_missing_remote_rsync_is_a_clear_error_naming_the_host() {
    // The account's non-interactive shell finds mkdir but no rsync.
    let server = Server::builder()
        .bashrc("export PATH=\"$HOME/only-mkdir\"")
        .start();
    server.run_as_user_ok("mkdir -p ~/only-mkdir && ln -s \"$(command -v mkdir)\" ~/only-mkdir/");
    let p = project_with(server, "");
    p.write("a.py", "a");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    let host = format!("{}@127.0.0.1:{}", p.server.user(), p.server.port());
    assert!(
        err.contains(&format!("rsync is not installed on {host}")),
        "{err}"
    );
}

#[test]
fn host_keys_follow_strict_host_key_checking() {
    let p = project();
    fs::write(p.home.known_hosts(), "").unwrap();
    p.write("a.py", "a");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("host key") && err.contains("known_hosts"),
        "{err}"
    );
    assert!(!p.remote().join("a.py").exists());

    // accept-new adds the key (to the known_hosts file mtr's own SSH reads; hashed or not, as
    // the ssh config says), after which the strict policy accepts the server.
    p.write_config(&format!(
        "{RSYNC}    strict_host_key_checking: accept-new\n"
    ));
    p.sync();
    p.assert_synced();
    assert!(!fs::read_to_string(p.home.known_hosts()).unwrap().is_empty());
    p.write_config(RSYNC);
    p.write("b.py", "b");
    p.sync();
    p.assert_synced();
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let p = project();
    // Before any sync: the plan lists everything, and not even remote_dir is created.
    p.write("keep.txt", "keep\n");
    p.write("gone.txt", "gone\n");
    p.write("dir/sub.txt", "sub\n");
    let out = mtr_ok(&p, &["--sync-only", "--dry-run"]);
    let plan = stdout(&out);
    assert!(plan.starts_with("sync plan for "), "{plan}");
    assert!(plan.contains(": 4 change(s)"), "{plan}");
    assert!(
        !p.remote().exists(),
        "a dry run created {}",
        p.remote().display()
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    p.sync();
    p.write("keep.txt", "changed\n");
    fs::remove_file(p.root().join("gone.txt")).unwrap();
    p.write("new.txt", "new\n");
    let out = mtr_ok(&p, &["--sync-only", "--dry-run"]);
    let plan = stdout(&out);
    let lines: Vec<&str> = plan.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "sync plan for {}@127.0.0.1:{}:{}: 3 change(s)",
            p.server.user(),
            p.server.port(),
            p.remote().display()
        )
    );
    for line in ["  + new.txt", "  ~ keep.txt", "  - gone.txt"] {
        assert!(lines.contains(&line), "no {line:?} in:\n{plan}");
    }
    let r = p.remote();
    assert_eq!(fs::read_to_string(r.join("keep.txt")).unwrap(), "keep\n");
    assert!(r.join("gone.txt").exists() && !r.join("new.txt").exists());

    // No state was written either: the real sync still knows gone.txt is mtr's to delete.
    p.sync();
    p.assert_synced();
}

#[test]
fn get_downloads_a_file_to_the_current_dir_or_to() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    let mut data = vec![0u8; 300_000];
    gen::Rng::new(5).fill(&mut data);
    p.server
        .write_remote(format!("{}/out/model.pt", p.remote_rel), &data);
    mtr_ok(&p, &["--get", "out/model.pt"]);
    let got = fs::read(p.root().join("model.pt")).unwrap();
    assert_eq!(got, data);

    let out = mtr_ok(
        &p,
        &["-v", "--get", "out/model.pt", "--to", "dl/new/renamed.pt"],
    );
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains("downloaded"), "{}", stderr(&out));
    assert_eq!(fs::read(p.root().join("dl/new/renamed.pt")).unwrap(), got);

    // A file reached through a symlink arrives as the file.
    p.server.run_as_user_ok(&format!(
        "ln -s model.pt '{}/out/latest.pt'",
        p.remote().display()
    ));
    mtr_ok(&p, &["--get", "out/latest.pt", "--to", "dl/"]);
    let latest = p.root().join("dl/latest.pt");
    assert!(fs::symlink_metadata(&latest).unwrap().is_file());
    assert_eq!(fs::read(&latest).unwrap(), got);
}

#[test]
fn get_downloads_a_directory_as_that_directory_and_updates_it() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    let rel = |r: &str| format!("{}/results/{r}", p.remote_rel);
    p.server.write_remote(rel("a.txt"), "a");
    p.server.write_remote(rel("sub/b.bin"), vec![1u8; 100_000]);
    p.server.write_remote(rel("run.sh"), "#!/bin/sh\n");
    p.server.run_as_user_ok(&format!(
        "cd '{}/results' && chmod 755 run.sh && mkdir -p empty/nested && ln -s a.txt link",
        p.remote().display()
    ));
    let dl = tempfile::tempdir().unwrap();
    let to = format!("{}/", dl.path().display());
    mtr_ok(&p, &["--get", "results", "--to", &to]);
    let local = dl.path().join("results");
    if let Err(diff) = tree_equal(&p.remote().join("results"), &local, &[]) {
        panic!("{diff}");
    }

    // Again after a remote change: local/... still mirrors remote/... (no results/results).
    p.server.write_remote(rel("a.txt"), "a, changed");
    p.server.write_remote(rel("sub/c.txt"), "c");
    mtr_ok(&p, &["--get", "results", "--to", &to]);
    if let Err(diff) = tree_equal(&p.remote().join("results"), &local, &[]) {
        panic!("{diff}");
    }
    assert!(!local.join("results").exists());
}

#[test]
fn get_takes_absolute_and_home_paths_outside_remote_dir() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    let abs = p
        .server
        .write_remote("elsewhere/log.txt", "outside remote_dir");
    let dl = tempfile::tempdir().unwrap();
    let to = |name: &str| dl.path().join(name).display().to_string();
    mtr_ok(
        &p,
        &["--get", &abs.display().to_string(), "--to", &to("abs.txt")],
    );
    assert_eq!(
        fs::read_to_string(dl.path().join("abs.txt")).unwrap(),
        "outside remote_dir"
    );
    mtr_ok(&p, &["--get", "~/elsewhere", "--to", &to("home")]);
    assert_eq!(
        fs::read_to_string(dl.path().join("home/log.txt")).unwrap(),
        "outside remote_dir"
    );
}

#[test]
fn get_takes_wildcards_literally() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    p.server
        .write_remote(format!("{}/a*b", p.remote_rel), "the star one");
    p.server
        .write_remote(format!("{}/aXb", p.remote_rel), "another");
    let dl = tempfile::tempdir().unwrap();
    mtr_ok(
        &p,
        &["--get", "a*b", "--to", &format!("{}/", dl.path().display())],
    );
    let names: Vec<_> = fs::read_dir(dl.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a*b"]);
    assert_eq!(
        fs::read_to_string(dl.path().join("a*b")).unwrap(),
        "the star one"
    );
}

#[test]
fn get_of_a_missing_path_fails_with_255_naming_host_and_path() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    let dl = tempfile::tempdir().unwrap();
    let out = p
        .mtr()
        .args(["--no-tty", "--get", "nope/missing.bin", "--to"])
        .arg(dl.path().join("x.bin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{}", p.server.port())),
        "{err}"
    );
    assert!(err.contains("nope/missing.bin"), "{err}");
    assert!(err.contains("no such file or directory"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read_dir(dl.path()).unwrap().count(), 0);
}

#[test]
fn get_refuses_symlinks_pointing_out_of_the_destination() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    p.server
        .write_remote(format!("{}/res/ok.txt", p.remote_rel), "ok");
    p.server.run_as_user_ok(&format!(
        "cd '{}/res' && ln -s /etc/passwd abs && mkdir sub && ln -s ../../outside sub/up && \
         ln -s ok.txt fine && ln -s ../ok.txt sub/fine",
        p.remote().display()
    ));
    let dl = tempfile::tempdir().unwrap();
    let out = mtr_ok(
        &p,
        &[
            "--get",
            "res",
            "--to",
            &dl.path().join("box/res").display().to_string(),
        ],
    );
    let local = dl.path().join("box/res");
    assert!(fs::symlink_metadata(local.join("abs")).is_err());
    assert!(fs::symlink_metadata(local.join("sub/up")).is_err());
    assert_eq!(
        fs::read_link(local.join("fine")).unwrap(),
        Path::new("ok.txt")
    );
    assert_eq!(
        fs::read_to_string(local.join("sub/fine")).unwrap(),
        "ok",
        "a link inside the download is kept"
    );
    // Nothing but the destination was written.
    let top: Vec<_> = fs::read_dir(dl.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["box"]);
    let err = stderr(&out);
    assert!(err.contains("abs") && err.contains("/etc/passwd"), "{err}");
    assert!(
        err.contains("sub/up") && err.contains("points outside"),
        "{err}"
    );
}

#[test]
fn get_dry_run_lists_the_download_and_writes_nothing() {
    let p = project();
    p.write("a.py", "a");
    p.sync();
    p.server
        .write_remote(format!("{}/res/x.txt", p.remote_rel), "x");
    p.server
        .write_remote(format!("{}/res/y/z.txt", p.remote_rel), "z");
    let dl = tempfile::tempdir().unwrap();
    let dest = dl.path().join("not/yet/res");
    let out = mtr_ok(
        &p,
        &[
            "--no-sync",
            "--dry-run",
            "--get",
            "res",
            "--to",
            &dest.display().to_string(),
        ],
    );
    let plan = stdout(&out);
    assert!(plan.starts_with("get plan for "), "{plan}");
    assert!(
        plan.contains(&format!("  + {}", dest.join("y/z.txt").display())),
        "{plan}"
    );
    assert_eq!(fs::read_dir(dl.path()).unwrap().count(), 0);
}
