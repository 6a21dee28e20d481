//! The three sync engines side by side: one project, one server, three server entries that
//! differ only in `sync:` (`agent`, `rsync`, `sftp`) and in their remote directories. Every
//! scenario runs each engine, and the three remote trees must be byte-for-byte equal to each
//! other and to the local tree without its excluded paths — so exclude, `.gitignore` and
//! `.mtrignore` semantics, deletes, renames, modes, symlinks and empty directories are the
//! same whatever the engine. Remote-created files must survive every engine's deletes.

mod util;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use testkit::gen::{self, tree_equal};
use testkit::sshd::Server;
use util::Project;

const ENGINES: [&str; 3] = ["agent", "rsync", "sftp"];

/// What mtr keeps for itself on each side: never compared.
const OWN: [&str; 2] = [".mtr", ".mtr-sync"];

struct Engines {
    p: Project,
}

impl Engines {
    fn new() -> Engines {
        Engines::with_server(Server::start(), "")
    }

    /// A project with one server entry per engine; `extra` is added to each entry.
    fn with_server(server: Server, extra: &str) -> Engines {
        let p = Project::with_server(server);
        let mut cfg = String::from("defaults:\n  exclude: [\"*.ckpt\", \"/scratch/\"]\nservers:\n");
        for engine in ENGINES {
            let key = match p.server.password() {
                Some(_) if extra.contains("password") => String::new(),
                _ => format!("    key_filename: {}\n", p.home.key().display()),
            };
            cfg.push_str(&format!(
                "  {engine}:\n    host: {}\n    port: {}\n    user: {}\n{key}    remote_dir: {}\n    sync: {engine}\n    exclude: [\"logs/\"]\n{extra}",
                p.server.host(),
                p.server.port(),
                p.server.user(),
                p.server.remote_path(format!("work/{engine}")).display(),
            ));
        }
        fs::create_dir_all(p.root().join(".mtr")).unwrap();
        fs::write(p.root().join(".mtr/config.yaml"), cfg).unwrap();
        Engines { p }
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.p.root().join(rel)
    }

    fn remote(&self, engine: &str) -> PathBuf {
        self.p.server.remote_path(format!("work/{engine}"))
    }

    /// `mtr --sync-only` with every engine; each must succeed and print nothing on stdout.
    fn sync_all(&self) {
        for engine in ENGINES {
            let out = self
                .p
                .mtr()
                .args(["--no-tty", "-s", engine, "--sync-only"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sync: {engine} failed ({:?}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout.is_empty(),
                "sync: {engine} printed on stdout in batch mode: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// The three remote trees equal each other and `expected` (a copy of the local tree with
    /// the excluded paths removed).
    fn assert_remotes_equal(&self, step: &str, survivors: &[&str]) {
        let expected = tempfile::tempdir().unwrap();
        copy_tree(self.p.root(), expected.path());
        for excluded in [
            "model.ckpt",
            "src/deep/old.ckpt",
            "scratch",
            "logs",
            "src/logs",
            "build",
            "src/generated.py",
            "secret.env",
            "src/notes/private.md",
        ] {
            remove(&expected.path().join(excluded));
        }
        let mut ignore: Vec<&str> = OWN.to_vec();
        ignore.extend_from_slice(survivors);
        for engine in ENGINES {
            if let Err(diff) = tree_equal(expected.path(), &self.remote(engine), &ignore) {
                panic!("{step}: sync: {engine} left a remote tree unlike the local one:\n{diff}");
            }
        }
        for engine in &ENGINES[1..] {
            if let Err(diff) = tree_equal(&self.remote("agent"), &self.remote(engine), &OWN) {
                panic!("{step}: the agent's and {engine}'s remote trees differ:\n{diff}");
            }
        }
    }
}

fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// Copies a tree, keeping modes and symlinks (not following them).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

fn write(e: &Engines, rel: &str, contents: &str) {
    gen::write_file(&e.local(rel), contents);
}

/// A small project with something of everything the engines must treat alike.
fn populate(e: &Engines) {
    gen::source_tree(&e.local("src"), 40, 200_000, 7);
    write(e, "README.md", "# demo\n");
    write(e, "train.py", "print('train')\n");
    write(e, "run.sh", "#!/bin/sh\necho run\n");
    gen::set_mode(&e.local("run.sh"), 0o755);
    gen::binary_file(&e.local("data/blob.bin"), 300_000, 3);
    fs::create_dir_all(e.local("empty/nested")).unwrap();
    symlink("train.py", e.local("link-to-train")).unwrap();
    symlink("../README.md", e.local("data/readme-link")).unwrap();
    symlink("/nonexistent/target", e.local("dangling")).unwrap();
    write(e, "with space/a file (1).txt", "spaces\n");
    write(e, "unicodé/naïve.txt", "unicode\n");
    // Excluded, each by a different rule.
    write(e, "model.ckpt", "defaults.exclude *.ckpt");
    write(e, "src/deep/old.ckpt", "*.ckpt at any depth");
    write(
        e,
        "scratch/tmp.txt",
        "defaults.exclude /scratch/ (anchored)",
    );
    write(e, "logs/run.log", "server exclude logs/");
    write(e, "src/logs/inner.log", "logs/ unanchored: at any depth");
    write(e, ".gitignore", "build/\nsecret.env\n");
    write(e, "build/out.o", "ignored by .gitignore");
    write(e, "secret.env", "ignored by .gitignore");
    write(e, "src/.gitignore", "generated.py\n");
    write(e, "src/generated.py", "ignored by a nested .gitignore");
    write(e, "src/notes/.mtrignore", "private.md\n");
    write(e, "src/notes/private.md", "ignored by .mtrignore");
    write(e, "src/notes/public.md", "synced");
}

#[test]
fn every_engine_leaves_the_same_remote_tree_through_a_series_of_changes() {
    let e = Engines::new();
    populate(&e);
    e.sync_all();
    e.assert_remotes_equal("first sync", &[]);

    // Files the remote job writes: in the tree, and in a directory that is deleted locally.
    for engine in ENGINES {
        let r = e.remote(engine);
        e.p.server.run_as_user_ok(&format!(
            "echo out > '{0}/results.txt' && echo mine > '{0}/empty/nested/job.out'",
            r.display()
        ));
    }
    let survivors = ["results.txt", "empty"];

    e.sync_all();
    e.assert_remotes_equal("no-op", &survivors);

    // Edit, grow, shrink, delete, mode change, a file becomes a symlink and back.
    write(&e, "train.py", "print('train, edited')\n");
    gen::binary_file(&e.local("data/blob.bin"), 450_000, 4);
    write(&e, "README.md", "#\n");
    fs::remove_file(e.local("run.sh")).unwrap();
    gen::set_mode(&e.local("train.py"), 0o755);
    fs::remove_file(e.local("link-to-train")).unwrap();
    write(&e, "link-to-train", "now a file\n");
    fs::remove_file(e.local("data/readme-link")).unwrap();
    write(&e, "data/new.txt", "new\n");
    e.sync_all();
    e.assert_remotes_equal("edits", &survivors);

    // A directory renamed, another deleted (it holds a remote-created file: that survives).
    let src_dirs: Vec<PathBuf> = fs::read_dir(e.local("src"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with("notes") && !p.ends_with("logs"))
        .collect();
    let moved = &src_dirs[0];
    fs::rename(moved, e.local("src/renamed_dir")).unwrap();
    fs::remove_dir_all(e.local("empty")).unwrap();
    e.sync_all();
    e.assert_remotes_equal("rename and delete", &survivors);
    for engine in ENGINES {
        let r = e.remote(engine);
        assert_eq!(
            fs::read_to_string(r.join("empty/nested/job.out")).unwrap(),
            "mine\n",
            "sync: {engine} deleted a file the remote job wrote"
        );
        assert_eq!(
            fs::read_to_string(r.join("results.txt")).unwrap(),
            "out\n",
            "sync: {engine} touched a file the remote job wrote"
        );
        assert!(
            !r.join("run.sh").exists(),
            "sync: {engine} kept a file deleted locally"
        );
    }

    // An excluded path that exists on the remote is neither overwritten nor deleted.
    for engine in ENGINES {
        fs::write(e.remote(engine).join("model.ckpt"), "remote weights").unwrap();
    }
    write(&e, "model.ckpt", "local weights, excluded");
    e.sync_all();
    for engine in ENGINES {
        assert_eq!(
            fs::read_to_string(e.remote(engine).join("model.ckpt")).unwrap(),
            "remote weights",
            "sync: {engine} touched an excluded path"
        );
    }
}

#[test]
fn every_engine_carries_file_modes_and_mtimes_closely_enough_for_a_no_op() {
    let e = Engines::new();
    write(&e, "a.py", "a\n");
    write(&e, "bin/tool", "#!/bin/sh\n");
    gen::set_mode(&e.local("bin/tool"), 0o750);
    gen::set_mode(&e.local("a.py"), 0o640);
    e.sync_all();
    for engine in ENGINES {
        let r = e.remote(engine);
        for (rel, mode) in [("bin/tool", 0o750), ("a.py", 0o640)] {
            let got = fs::metadata(r.join(rel)).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "sync: {engine}: mode of {rel}");
        }
    }
    // A second run with nothing changed changes nothing remotely (same inode, same mtime).
    let before: Vec<_> = ENGINES
        .iter()
        .map(|engine| {
            let m = fs::metadata(e.remote(engine).join("a.py")).unwrap();
            (
                std::os::unix::fs::MetadataExt::ino(&m),
                m.modified().unwrap(),
            )
        })
        .collect();
    e.sync_all();
    for (engine, (ino, mtime)) in ENGINES.iter().zip(before) {
        let m = fs::metadata(e.remote(engine).join("a.py")).unwrap();
        assert_eq!(
            (
                std::os::unix::fs::MetadataExt::ino(&m),
                m.modified().unwrap()
            ),
            (ino, mtime),
            "sync: {engine} rewrote an unchanged file"
        );
    }
}

#[test]
fn every_engine_authenticates_with_a_password_from_the_config() {
    let server = Server::builder().password("pa ss'word").start();
    let e = Engines::with_server(server, "    password: \"pa ss'word\"\n");
    // No key at all: only the password can work.
    fs::remove_file(e.p.home.key()).unwrap();
    write(&e, "x.txt", "x\n");
    e.sync_all();
    e.assert_remotes_equal("password", &[]);
}

#[test]
fn dry_run_lists_the_same_changes_for_every_engine_and_changes_nothing() {
    let e = Engines::new();
    write(&e, "keep.txt", "keep\n");
    write(&e, "gone.txt", "gone\n");
    e.sync_all();
    write(&e, "keep.txt", "changed\n");
    fs::remove_file(e.local("gone.txt")).unwrap();
    write(&e, "new.txt", "new\n");
    for engine in ENGINES {
        let out =
            e.p.mtr()
                .args(["--no-tty", "-s", engine, "--sync-only", "--dry-run"])
                .output()
                .unwrap();
        assert!(out.status.success(), "{engine}: {:?}", out);
        let plan = String::from_utf8_lossy(&out.stdout);
        for line in ["+ new.txt", "~ keep.txt", "- gone.txt"] {
            assert!(
                plan.lines().any(|l| l.trim() == line),
                "sync: {engine} --dry-run: no line {line:?} in:\n{plan}"
            );
        }
        let r = e.remote(engine);
        assert_eq!(fs::read_to_string(r.join("keep.txt")).unwrap(), "keep\n");
        assert!(r.join("gone.txt").exists() && !r.join("new.txt").exists());
    }
}
