//! Faults from the environment, end to end against a real sshd: a remote disk that fills up
//! during a sync (every engine), connections that fail in every way short of an unreachable
//! host (that one is in `sync.rs`), and local trees holding what cannot be synced: fifos,
//! sockets, device nodes, unreadable files, hard links.
//!
//! Runs as root, like every e2e test: it mounts a tmpfs as the remote directory, makes device
//! nodes, and drops the capabilities that let root read any file from the `mtr` it starts.

mod util;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::gen;
use testkit::sshd::Server;
use util::{names_if_any, names_once_emptied, Project};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `mtr --no-tty --sync-only` (no `-v`): its output and how long it took. Killed after 60 s:
/// nothing here takes a tenth of that unless it hangs.
fn sync_out(p: &Project) -> (Output, Duration) {
    let start = Instant::now();
    let out = p
        .mtr()
        .args(["--no-tty", "--sync-only"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// The only line of a failed run's stderr, which must be mtr's error: one line, exit 255.
fn one_line_error(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "{what}: mtr hung (killed after the test's timeout: {:?}); stderr:\n{err}",
        out.status
    );
    assert_eq!(
        out.status.code(),
        Some(255),
        "{what}: expected exit 255, got {:?}; stderr:\n{err}",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected a one-line error, got {} lines:\n{err}",
        lines.len()
    );
    assert!(
        lines[0].starts_with("mtr: error: "),
        "{what}: not mtr's error line:\n{err}"
    );
    lines[0].to_string()
}

// ---------------------------------------------------------------------------------------------
// Remote disk full
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted at a path, unmounted when dropped (lazily if something still holds it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: u32, uid: u32, gid: u32) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_mb}m,uid={uid},gid={gid},mode=0755"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs at {} failed: {}",
            at.display(),
            text(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    /// Free bytes on the filesystem.
    fn free(&self) -> u64 {
        let c = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Every file under `dir` (mtr's state dirs aside) as path -> BLAKE3 of its bytes; symlinks
/// and directories as markers.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for de in fs::read_dir(dir).unwrap() {
            let de = de.unwrap();
            let path = de.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".mtr" || rel == ".mtr-sync" {
                continue;
            }
            let ft = de.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else if ft.is_file() {
                let hash = blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string();
                out.insert(rel, hash);
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()));
            } else {
                out.insert(rel, "special".into());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Fills the remote disk with one sync under engine `engine` (`None`: the default agent) and
/// checks the failure; returns the project, the mount (drops first) and the error line.
fn disk_full(engine: Option<&str>) -> (Project, String, Tmpfs) {
    let p = Project::new();
    let extra = engine.map_or(String::new(), |e| format!("    sync: {e}\n"));
    p.write_config(&extra);
    let home = fs::metadata(p.server.home()).unwrap();
    let mount = Tmpfs::mount(&p.remote(), 64, home.uid(), home.gid());
    gen::source_tree(p.root(), 40, 1_000_000, 21);
    gen::binary_file(&p.root().join("data/small.bin"), 2_000_000, 22);
    p.sync();
    p.assert_synced();
    let before = snapshot(&p.remote());
    assert!(before.len() > 40, "{before:?}");
    let free_before = mount.free();

    // 100 MB of random bytes: no codec shrinks it below the 64 MB the disk has.
    gen::binary_file(&p.root().join("data/big.bin"), 100_000_000, 23);
    let (out, took) = sync_out(&p);
    let what = format!("sync of a 100 MB file to a 64 MB disk ({engine:?})");
    let line = one_line_error(&out, &what);
    let host = format!("127.0.0.1:{}", p.server.port());
    assert!(line.contains(&host), "{what}: no host in: {line}");
    assert!(line.contains("big.bin"), "{what}: no path in: {line}");
    println!("{what}: {took:?}: {line}");

    // The user's files: every old one as it was, nothing half-written among them.
    assert_eq!(
        snapshot(&p.remote()),
        before,
        "{what}: the remote files changed"
    );
    assert!(!p.remote().join("data/big.bin").exists());
    let stray: Vec<String> = names_if_any(&p.remote().join("data"))
        .into_iter()
        .filter(|n| n.contains("big"))
        .collect();
    assert!(stray.is_empty(), "{what}: partial files left: {stray:?}");
    // ...and the space the failed upload took is given back: a remote disk left full of a
    // useless partial file breaks the user's jobs there.
    let free_after = mount.free();
    assert!(
        free_after + 1_000_000 >= free_before,
        "{what}: {} MB free before, {} MB after: the partial upload still takes the disk",
        free_before / 1_000_000,
        free_after / 1_000_000
    );
    (p, line, mount)
}

/// After the failure, a sync without the big file succeeds and the tree is whole.
fn recovers(p: &Project) {
    fs::remove_file(p.root().join("data/big.bin")).unwrap();
    p.write("data/new.txt", "written after the disk filled up\n");
    p.sync();
    p.assert_synced();
}

#[test]
fn a_full_remote_disk_fails_cleanly_and_the_next_sync_recovers() {
    let (p, line, _mount) = disk_full(None);
    assert_eq!(
        line.matches("No space left on device").count(),
        1,
        "the cause, once: {line}"
    );
    // The agent builds files in its staging directory: nothing may stay there.
    let staging = names_once_emptied(&p.remote().join(".mtr-sync/staging"));
    assert!(staging.is_empty(), "staging not cleaned: {staging:?}");
    recovers(&p);
}

#[test]
fn a_full_remote_disk_fails_cleanly_with_rsync() {
    let (p, _line, _mount) = disk_full(Some("rsync"));
    recovers(&p);
}

#[test]
fn a_full_remote_disk_fails_cleanly_with_sftp() {
    let (p, _line, _mount) = disk_full(Some("sftp"));
    let staging = names_if_any(&p.remote().join(".mtr-sync/sftp/staging"));
    assert!(staging.is_empty(), "staging not cleaned: {staging:?}");
    recovers(&p);
}

// ---------------------------------------------------------------------------------------------
// Connection failures
// ---------------------------------------------------------------------------------------------

/// A config entry for `host:port` with `extra` lines (no key: the test says what it wants).
fn config_for(p: &Project, port: u16, extra: &str) {
    let cfg = format!(
        "servers:\n  test:\n    host: 127.0.0.1\n    port: {port}\n    user: {}\n    remote_dir: {}\n{extra}",
        p.server.user(),
        p.remote().display(),
    );
    let path = p.root().join(".mtr/config.yaml");
    fs::write(&path, cfg).unwrap();
    gen::set_mode(&path, 0o600); // it may hold a password
}

/// How a fake server treats each connection.
#[derive(Clone, Copy, Debug)]
enum Fake {
    /// Accepts and closes at once.
    Close,
    /// Accepts and never says anything (holds the socket open).
    Silent,
    /// Sends an SSH banner, reads what the client sends, then closes mid-handshake.
    BannerThenClose,
}

/// A TCP server on loopback behaving as `how`; returns its port. Its thread lives on, blocked
/// in `accept`, for the rest of the test process.
fn fake_server(how: Fake) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            match how {
                Fake::Close => drop(s),
                Fake::Silent => held.push(s),
                Fake::BannerThenClose => {
                    let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n");
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 4096];
                    // The client's banner (and key exchange init): proof it got this far.
                    let _ = s.read(&mut buf);
                    drop(s);
                }
            }
        }
    });
    port
}

/// mtr against a fake server: one-line error naming the host, exit 255; returns it and the
/// time taken.
fn against_fake(how: Fake, extra: &str) -> (String, Duration) {
    let p = Project::new();
    let port = fake_server(how);
    config_for(&p, port, extra);
    p.write("a.py", "a");
    let (out, took) = sync_out(&p);
    let what = format!("{how:?} server");
    let line = one_line_error(&out, &what);
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "{what}: host not named: {line}"
    );
    println!("{what}: {took:?}: {line}");
    (line, took)
}

#[test]
fn a_server_that_closes_at_once_fails_fast_naming_the_host() {
    let (line, took) = against_fake(Fake::Close, "    connect_timeout: 3\n");
    assert!(line.contains("SSH handshake"), "{line}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_server_that_closes_mid_handshake_fails_fast_naming_the_host() {
    let (line, took) = against_fake(Fake::BannerThenClose, "    connect_timeout: 3\n");
    assert!(line.contains("SSH handshake"), "{line}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_server_that_never_sends_a_banner_fails_after_connect_timeout() {
    let (line, took) = against_fake(Fake::Silent, "    connect_timeout: 2\n");
    assert!(line.contains("SSH handshake"), "{line}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "connect_timeout 2 s, failed after {took:?}"
    );
}

#[test]
fn the_default_connect_timeout_is_10_seconds() {
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains("| `connect_timeout` | defaults, server | seconds (default 10) |"),
        "README no longer documents the default"
    );
    let (_, took) = against_fake(Fake::Silent, "");
    assert!(
        took >= Duration::from_millis(9900) && took < Duration::from_secs(14),
        "no connect_timeout set: failed after {took:?}, expected the 10 s default"
    );
}

#[test]
fn a_wrong_password_fails_with_255_naming_the_host() {
    let server = Server::builder().password("the-right-one").start();
    let p = Project::with_server(server);
    // No default key to fall back to: the password is the only way in.
    fs::remove_file(p.home.key()).unwrap();
    config_for(&p, p.server.port(), "    password: \"not-the-password\"\n");
    p.write("a.py", "a");
    let (out, took) = sync_out(&p);
    let line = one_line_error(&out, "wrong password");
    let who = format!("{}@127.0.0.1:{}", p.server.user(), p.server.port());
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains(&who), "{line}");
    assert!(line.contains("password"), "{line}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!p.remote().join("a.py").exists());

    // The right one works: the failure was the password, not the setup.
    config_for(&p, p.server.port(), "    password: \"the-right-one\"\n");
    p.sync();
    p.assert_synced();
}

#[test]
fn a_key_the_server_does_not_accept_fails_with_255_naming_the_host_and_key() {
    let p = Project::new();
    let key = p.home.path().join("stranger");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    config_for(
        &p,
        p.server.port(),
        &format!("    key_filename: {}\n", key.display()),
    );
    p.write("a.py", "a");
    let (out, took) = sync_out(&p);
    let line = one_line_error(&out, "wrong key");
    let who = format!("{}@127.0.0.1:{}", p.server.user(), p.server.port());
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains(&who), "{line}");
    assert!(line.contains("stranger"), "{line}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!p.remote().join("a.py").exists());
}

/// Which way a [`cutting_relay`] counts the bytes after which it cuts.
#[derive(Clone, Copy)]
enum Cut {
    /// From the client to the server (an upload's data).
    Sent(u64),
    /// From the server to the client (a download's data).
    Received(u64),
}

/// Copies `from` to `to` until either ends or `limit` bytes went through, then shuts down
/// both `ends` both ways, as when the server's side of a connection goes away.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<u64>, ends: [TcpStream; 2]) {
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while limit.is_none_or(|l| sent < l) {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => limit.map_or(n, |l| n.min((l - sent) as usize)),
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    for end in ends {
        let _ = end.shutdown(Shutdown::Both);
    }
}

/// A TCP relay on loopback to the server at `to` that cuts each connection it carries once
/// `cut` says; returns its port. Its thread lives on, blocked in `accept`, for the rest of the
/// test process.
fn cutting_relay(to: u16, cut: Cut) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (up, down) = match cut {
                Cut::Sent(n) => (Some(n), None),
                Cut::Received(n) => (None, Some(n)),
            };
            let c = || client.try_clone().unwrap();
            let s = || server.try_clone().unwrap();
            let (from_client, to_server, ends) = (c(), s(), [c(), s()]);
            std::thread::spawn(move || pump(from_client, to_server, up, ends));
            let (from_server, to_client, ends) = (s(), c(), [c(), s()]);
            std::thread::spawn(move || pump(from_server, to_client, down, ends));
        }
    });
    port
}

/// Points `p` at a relay to its server cutting as `cut`, its host key trusted there too;
/// returns `user@127.0.0.1:<relay port>`, as mtr names the host.
fn through_relay(p: &Project, cut: Cut) -> String {
    let relay = cutting_relay(p.server.port(), cut);
    let trusted = p.server.known_hosts_line().replacen(
        &format!("]:{} ", p.server.port()),
        &format!("]:{relay} "),
        1,
    );
    let mut kh = fs::OpenOptions::new()
        .append(true)
        .open(p.home.known_hosts())
        .unwrap();
    writeln!(kh, "{trusted}").unwrap();
    config_for(
        p,
        relay,
        &format!("    key_filename: {}\n", p.home.key().display()),
    );
    format!("{}@127.0.0.1:{relay}", p.server.user())
}

/// The error line of a run whose connection was cut: plain words naming the host.
fn assert_plainly_lost(line: &str, who: &str, doing: &str) {
    assert!(
        line.contains(&format!("the connection to {who} was lost while {doing}")),
        "{line}"
    );
    assert!(line.contains("run mtr again"), "{line}");
    // libssh2's words, or the engine's, are not the user's.
    for jargon in ["draining", "transport read", "Failure", "peer", "libssh2"] {
        assert!(!line.contains(jargon), "{jargon:?} in: {line}");
    }
}

#[test]
fn a_connection_lost_mid_sync_is_said_plainly_naming_the_host() {
    let p = Project::new();
    p.write("a.py", "a");
    // Straight to the server first: the agent is installed, so the next sync's bytes are the
    // transfer's.
    p.sync();
    gen::binary_file(&p.root().join("big.bin"), 32 << 20, 7);
    let who = through_relay(&p, Cut::Sent(4 << 20));

    let (out, took) = sync_out(&p);
    let line = one_line_error(&out, "connection cut mid-sync");
    assert_plainly_lost(&line, &who, "syncing to");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!("upload cut, {took:?}: {line}");

    // With -v the cause is in the log, and the error line is the same.
    let out = p
        .mtr()
        .args(["--no-tty", "-v", "--sync-only"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    let cause = err
        .lines()
        .find(|l| l.starts_with("mtr: info: ") && l.contains("libssh2: "))
        .unwrap_or_else(|| panic!("no cause logged with -v:\n{err}"));
    assert!(cause.contains(&who), "{cause}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("mtr: error: ") && l.contains("was lost while syncing")),
        "{err}"
    );
    println!("with -v: {cause}");

    // Nothing half-written in place; straight to the server again, the sync completes.
    let remote_big = p.remote().join("big.bin");
    assert!(
        !remote_big.exists()
            || fs::read(&remote_big).unwrap() == fs::read(p.root().join("big.bin")).unwrap()
    );
    p.write_config("");
    p.sync();
    p.assert_synced();
}

#[test]
fn a_connection_lost_mid_download_is_said_plainly_naming_the_host() {
    let p = Project::new();
    p.write("a.py", "a");
    p.sync();
    let mut big = vec![0u8; 32 << 20];
    testkit::gen::Rng::new(8).fill(&mut big);
    p.server
        .write_remote(format!("{}/out/big.bin", p.remote_rel), &big);
    let who = through_relay(&p, Cut::Received(4 << 20));
    let dest = tempfile::tempdir().unwrap();
    let to = format!("{}/", dest.path().display());

    let start = Instant::now();
    let out = p
        .mtr()
        .args(["--no-tty", "--no-sync", "--get", "out", "--to", &to])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let took = start.elapsed();
    let line = one_line_error(&out, "connection cut mid-download");
    assert_plainly_lost(&line, &who, "downloading");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!("download cut, {took:?}: {line}");
    assert!(!dest.path().join("out/big.bin").exists());
}

// ---------------------------------------------------------------------------------------------
// Special, unreadable and hard-linked files
// ---------------------------------------------------------------------------------------------

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A character device like /dev/null (1:3).
fn mknod_null(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let dev = libc::makedev(1, 3);
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, dev) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    assert!(fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn fifos_sockets_and_devices_are_skipped_with_one_warning_each() {
    for engine in [None, Some("rsync"), Some("sftp")] {
        let p = Project::new();
        if let Some(e) = engine {
            p.write_config(&format!("    sync: {e}\n"));
        }
        p.write("src/main.py", "print('hi')\n");
        mkfifo(&p.root().join("src/the-fifo"));
        let _sock = std::os::unix::net::UnixListener::bind(p.root().join("the-socket")).unwrap();
        mknod_null(&p.root().join("dev/the-null"));
        for round in 0..2 {
            let (out, _) = sync_out(&p);
            let err = text(&out.stderr);
            assert!(
                out.status.success(),
                "{engine:?} round {round}: {:?}\n{err}\nsshd log:\n{}",
                out.status,
                p.server.log()
            );
            let warnings: Vec<&str> = err
                .lines()
                .filter(|l| l.starts_with("mtr: warning:"))
                .collect();
            assert_eq!(
                warnings.len(),
                3,
                "{engine:?} round {round}: expected 3 warnings:\n{err}"
            );
            if round == 0 {
                println!("{engine:?}:\n{}", warnings.join("\n"));
            }
            for name in ["the-fifo", "the-socket", "the-null"] {
                let n = warnings.iter().filter(|w| w.contains(name)).count();
                assert_eq!(
                    n, 1,
                    "{engine:?} round {round}: {name} warned {n} times:\n{err}"
                );
            }
            assert_eq!(
                err.lines().count(),
                3,
                "{engine:?} round {round}: more than the warnings:\n{err}"
            );
            for rel in ["src/the-fifo", "the-socket", "dev/the-null"] {
                assert!(
                    fs::symlink_metadata(p.remote().join(rel)).is_err(),
                    "{engine:?}: {rel} reached the remote"
                );
            }
            assert_eq!(
                fs::read_to_string(p.remote().join("src/main.py")).unwrap(),
                "print('hi')\n"
            );
        }
    }
}

/// `mtr --no-tty --sync-only` run as root without the capabilities that let root read any
/// file (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`): a mode 000 file is then unreadable to it,
/// as it would be to a normal user, while everything else (owned by root) stays readable.
fn sync_without_dac_override(p: &Project) -> Output {
    const DROP: &str = "-dac_override,-dac_read_search";
    let mtr = assert_cmd::cargo::cargo_bin("mtr");
    Command::new("setpriv")
        .arg(format!("--inh-caps={DROP}"))
        .arg(format!("--bounding-set={DROP}"))
        .arg("--")
        .arg(mtr)
        .args(["--no-tty", "--sync-only"])
        .current_dir(p.root())
        .env("HOME", p.home.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("running setpriv (util-linux)")
}

#[test]
fn an_unreadable_file_fails_the_sync_naming_it_and_changes_nothing_remote() {
    let p = Project::new();
    gen::source_tree(p.root(), 30, 300_000, 31);
    p.write("model/a.py", "v1\n");
    p.write("model/gone.py", "to be deleted\n");
    p.sync();
    p.assert_synced();
    let before = snapshot(&p.remote());

    // Changes that must not reach the remote either: the sync fails as a whole.
    p.write("model/a.py", "v2\n");
    fs::remove_file(p.root().join("model/gone.py")).unwrap();
    p.write("model/new.py", "new\n");
    let secret = p.root().join("model/secret.key");
    p.write("model/secret.key", "no one may read this\n");
    gen::set_mode(&secret, 0o000);
    // Proof the mechanism works: without the capabilities, root cannot read it.
    let cat = Command::new("setpriv")
        .args([
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            "cat",
        ])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(
        !cat.status.success(),
        "dropping CAP_DAC_OVERRIDE did not make the file unreadable"
    );

    let out = sync_without_dac_override(&p);
    let line = one_line_error(&out, "unreadable file");
    assert!(
        line.contains(&secret.display().to_string()),
        "the file is not named: {line}"
    );
    assert_eq!(
        line.matches("Permission denied").count(),
        1,
        "the cause once: {line}"
    );
    println!("unreadable file: {line}");
    assert_eq!(snapshot(&p.remote()), before, "the remote changed");

    // Readable again: the sync goes through.
    gen::set_mode(&secret, 0o600);
    let out = sync_without_dac_override(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    p.assert_synced();
}

#[test]
fn hard_links_are_synced_as_two_files_with_the_same_content() {
    let p = Project::new();
    gen::binary_file(&p.root().join("data/one.bin"), 700_000, 41);
    fs::create_dir_all(p.root().join("other")).unwrap();
    fs::hard_link(
        p.root().join("data/one.bin"),
        p.root().join("other/two.bin"),
    )
    .unwrap();
    p.write("readme.txt", "x\n");
    p.sync();
    p.assert_synced();
    let one = p.remote().join("data/one.bin");
    let two = p.remote().join("other/two.bin");
    for f in [&one, &two] {
        assert!(fs::symlink_metadata(f).unwrap().file_type().is_file());
    }
    let local = fs::read(p.root().join("data/one.bin")).unwrap();
    assert_eq!(fs::read(&one).unwrap(), local);
    assert_eq!(fs::read(&two).unwrap(), local);

    // An edit through one name is an edit of both.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(p.root().join("other/two.bin"))
        .unwrap();
    f.write_all(b"edited through the second name").unwrap();
    drop(f);
    p.sync();
    p.assert_synced();
    let local = fs::read(p.root().join("data/one.bin")).unwrap();
    assert!(local.starts_with(b"edited through the second name"));
    assert_eq!(fs::read(&one).unwrap(), local);
    assert_eq!(fs::read(&two).unwrap(), local);

    // One name gone: the other stays, whole.
    fs::remove_file(p.root().join("data/one.bin")).unwrap();
    p.sync();
    p.assert_synced();
    assert!(!one.exists());
    assert_eq!(fs::read(&two).unwrap(), local);
}
