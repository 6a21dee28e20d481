//! `mtr --sync-only` end to end against a real sshd: first sync, no-op, edits, deletes,
//! renames, remote-created files, excludes, agent install and upgrade, host keys, bad config.

mod util;

use std::fs;
use std::time::Duration;

use testkit::sshd::Server;
use util::{wire_bytes, Project};

#[test]
fn first_sync_copies_the_tree_and_a_second_is_a_noop() {
    let p = Project::new();
    testkit::gen::source_tree(p.root(), 200, 2_000_000, 1);
    p.write("bin/run.sh", "#!/bin/sh\necho hi\n");
    testkit::gen::set_mode(&p.root().join("bin/run.sh"), 0o755);
    fs::create_dir_all(p.root().join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", p.root().join("link")).unwrap();
    p.write("ünïcødé/名前.py", "print('hi')\n");
    p.sync();
    p.assert_synced();
    assert!(
        !p.remote().join(".mtr").exists(),
        ".mtr/ must never be synced"
    );

    let second = p.sync();
    assert!(second.contains("up to date"), "{second}");
    assert!(
        wire_bytes(&second) < 4096,
        "no-op exchanged too much:\n{second}"
    );
}

#[test]
fn debug_output_shows_the_agents_timeline() {
    let p = Project::new();
    p.write("train.py", "print(1)");
    p.sync();
    // The watcher the first sync left vouches for the tree once it is up.
    let socket = p.remote().join(".mtr-sync/watch.sock");
    util::wait_for("the watcher", Duration::from_secs(20), || socket.exists());
    p.write("train.py", "print(2)");
    let stderr = p.sync_debug();
    // The agent's own debug lines, each once, as mtr's, with the agent's clock.
    for phase in [
        "sink: the watcher saw no change",
        "sink: index of 1 entries loaded in",
    ] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(phase)).collect();
        assert_eq!(lines.len(), 1, "{phase}:\n{stderr}");
        assert!(lines[0].contains("mtr: debug: ["), "{}", lines[0]);
        assert!(lines[0].contains("mtr-agent: ["), "{}", lines[0]);
    }
    // Without -vv the agent says nothing.
    p.write("train.py", "print(3)");
    assert!(!p.sync().contains("mtr-agent: ["));
}

#[test]
fn replaced_files_are_removed_after_the_session_by_the_agents_helper() {
    let p = Project::new();
    let random = |seed| {
        let mut buf = vec![0u8; 8 << 20];
        testkit::gen::Rng::new(seed).fill(&mut buf);
        buf
    };
    p.write("data/big.bin", random(5));
    p.sync();
    p.write("data/big.bin", random(6));
    p.sync();
    p.assert_synced();
    let staging = p.remote().join(".mtr-sync/staging");
    let left = util::names_once_emptied(&staging);
    assert!(
        left.is_empty(),
        "old versions left in {}: {left:?}",
        staging.display()
    );
    // The helper ends with the agent: no process of the remote user stays behind but the
    // tree's watcher.
    let others = || {
        let mut procs = p.server.user_processes();
        procs.retain(|(_, cmd)| !is_watcher(cmd));
        procs
    };
    let ended = util::eventually(std::time::Duration::from_secs(10), || others().is_empty());
    assert!(ended, "left running: {:?}", others());
}

/// Whether a remote command line is the watcher an agent leaves over a synced tree.
fn is_watcher(cmd: &str) -> bool {
    util::runs_agent(cmd, "watch")
}

#[test]
fn the_watcher_left_on_the_node_vouches_for_the_next_no_op() {
    let p = Project::new();
    testkit::gen::source_tree(p.root(), 60, 300_000, 2);
    p.write("model/a.py", "v1");
    p.sync();
    let socket = p.remote().join(".mtr-sync/watch.sock");
    util::wait_for("the watcher's socket", Duration::from_secs(20), || {
        socket.exists()
    });
    let watchers = || {
        let mut procs = p.server.user_processes();
        procs.retain(|(_, cmd)| is_watcher(cmd));
        procs
    };
    assert_eq!(watchers().len(), 1, "{:?}", p.server.user_processes());
    // The no-op: the sink neither checks nor reads its index, and the watcher watches on.
    let log = p.sync_debug();
    assert!(log.contains("the watcher saw no change"), "{log}");
    assert!(
        !log.contains("sink: ") || !log.contains("entries checked"),
        "{log}"
    );
    assert!(!log.contains("sink: index of"), "{log}");
    assert_eq!(watchers().len(), 1, "{:?}", p.server.user_processes());
    // A job on the node writes over a synced file: the watcher ends, and the next sync checks
    // the tree and puts the file back.
    let edited = format!("{}/model/a.py", p.remote_rel);
    p.server.write_remote(&edited, "edited on the node");
    util::wait_for("the watcher to end", Duration::from_secs(20), || {
        !socket.exists()
    });
    let log = p.sync_debug();
    assert!(log.contains(", 1 changed"), "{log}");
    p.assert_synced();
    util::wait_for("a new watcher", Duration::from_secs(20), || socket.exists());
    assert_eq!(watchers().len(), 1, "{:?}", p.server.user_processes());
    // `watch: false`: the sync ends the watcher and leaves none.
    p.write_config("    watch: false\n");
    let log = p.sync_debug();
    assert!(log.contains(", 0 changed"), "{log}");
    util::wait_for("no watcher", Duration::from_secs(20), || {
        watchers().is_empty() && !socket.exists()
    });
    p.write("model/a.py", "v2");
    p.sync();
    p.assert_synced();
    std::thread::sleep(Duration::from_millis(500));
    assert!(watchers().is_empty(), "{:?}", p.server.user_processes());
}

#[test]
fn edits_deletes_and_renames_reach_the_remote() {
    let p = Project::new();
    testkit::gen::source_tree(p.root(), 100, 1_000_000, 2);
    p.write("data/blob.bin", vec![7u8; 3_000_000]);
    p.write("model/a.py", "v1");
    p.sync();
    p.write("model/a.py", "v2");
    fs::remove_file(p.root().join("data/blob.bin")).unwrap();
    fs::rename(p.root().join("model"), p.root().join("model2")).unwrap();
    p.sync();
    p.assert_synced();
}

#[test]
fn remote_created_files_survive_and_excluded_files_are_untouched() {
    let p = Project::new();
    p.write_config("    exclude: [\"*.ckpt\", \"logs/\"]\n");
    p.write("train.py", "print(1)");
    p.write("local.ckpt", "local only");
    p.write("outputs/keep.txt", "x");
    p.sync();
    assert!(!p.remote().join("local.ckpt").exists());
    p.server.write_remote(
        format!("{}/outputs/result.bin", p.remote_rel),
        b"remote result",
    );
    p.server
        .write_remote(format!("{}/local.ckpt", p.remote_rel), b"remote ckpt");
    p.server
        .write_remote(format!("{}/logs/run.log", p.remote_rel), b"remote log");
    fs::remove_dir_all(p.root().join("outputs")).unwrap();
    p.sync();
    assert_eq!(
        fs::read(p.remote().join("outputs/result.bin")).unwrap(),
        b"remote result"
    );
    assert_eq!(
        fs::read(p.remote().join("local.ckpt")).unwrap(),
        b"remote ckpt"
    );
    assert_eq!(
        fs::read(p.remote().join("logs/run.log")).unwrap(),
        b"remote log"
    );
    assert!(!p.remote().join("outputs/keep.txt").exists());
}

fn installed_agents(p: &Project) -> Vec<String> {
    let out = p
        .server
        .run_as_user_ok("find ~/.cache/mtr/agent -name mtr-agent -type f | sort");
    out.lines().map(str::to_string).collect()
}

#[test]
fn an_agent_of_another_version_is_replaced_never_used() {
    let p = Project::new();
    p.write("a.py", "a");
    // Another version already installed, and a corrupt binary at the current path.
    p.server.run_as_user_ok(
        "mkdir -p ~/.cache/mtr/agent/0.0.1-linux-x86_64-0000000000000000 && \
         printf '#!/bin/sh\\necho old agent; exit 3\\n' > ~/.cache/mtr/agent/0.0.1-linux-x86_64-0000000000000000/mtr-agent && \
         chmod 700 ~/.cache/mtr/agent/0.0.1-linux-x86_64-0000000000000000/mtr-agent",
    );
    p.sync();
    let agents = installed_agents(&p);
    assert_eq!(agents.len(), 2, "{agents:?}");
    let current = agents
        .iter()
        .find(|a| !a.contains("0.0.1-"))
        .unwrap()
        .clone();
    let good = p.server.run_as_user_ok(&format!("cksum < {current}"));
    // Replace the current agent with an impostor that greets with the wrong version (beside
    // it, then renamed over it: the tree's watcher runs the binary).
    p.server.run_as_user_ok(&format!(
        "printf '#!/bin/sh\\necho impostor\\nexit 1\\n' > {current}.new && chmod 700 {current}.new && mv {current}.new {current}"
    ));
    p.write("b.py", "b");
    p.sync();
    p.assert_synced();
    assert_eq!(p.server.run_as_user_ok(&format!("cksum < {current}")), good);
}

#[test]
fn login_shell_noise_does_not_break_the_handshake() {
    let server = Server::builder()
        .bashrc("echo 'Welcome to the cluster!'; echo 'conda: base activated'")
        .start();
    let p = Project::with_server(server);
    p.write("a.py", "a");
    p.sync();
    p.assert_synced();
}

#[test]
fn a_changed_host_key_is_refused_loudly() {
    let p = Project::new();
    // Trust a different key for this host:port.
    let other = Server::start();
    let line = other.known_hosts_line();
    let key = line.split_once(' ').unwrap().1;
    fs::write(
        p.home.known_hosts(),
        format!("[127.0.0.1]:{} {key}\n", p.server.port()),
    )
    .unwrap();
    p.write("a.py", "a");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("host key"), "{err}");
    assert!(err.contains("known_hosts"), "{err}");
    assert!(!p.remote().join("a.py").exists());
}

#[test]
fn an_unknown_host_is_refused_in_batch_mode_unless_accept_new() {
    let p = Project::new();
    fs::write(p.home.known_hosts(), "").unwrap();
    p.write("a.py", "a");
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p.remote().join("a.py").exists());
    p.write_config("    strict_host_key_checking: accept-new\n");
    p.sync();
    p.assert_synced();
    let known = fs::read_to_string(p.home.known_hosts()).unwrap();
    assert!(
        known.contains(&format!("[127.0.0.1]:{}", p.server.port())),
        "{known}"
    );
}

#[test]
fn bad_config_is_a_usage_error_naming_file_line_and_key() {
    let p = Project::new();
    fs::write(
        p.root().join(".mtr/config.yaml"),
        "servers:\n  test:\n    host: 127.0.0.1\n    hots: typo\n    remote_dir: /tmp/x\n",
    )
    .unwrap();
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.yaml:4"), "{err}");
    assert!(err.contains("hots"), "{err}");

    fs::write(
        p.root().join(".mtr/config.yaml"),
        "servers:\n  test:\n    host: h\n",
    )
    .unwrap();
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote_dir"));

    p.write_config("");
    let out = p
        .mtr()
        .args(["--no-tty", "-s", "nope", "--sync-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("test"), "{err}");
}

#[test]
fn an_unreachable_host_fails_with_255_and_names_it() {
    let p = Project::new();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    fs::write(
        p.root().join(".mtr/config.yaml"),
        format!(
            "servers:\n  test:\n    host: 127.0.0.1\n    port: {port}\n    remote_dir: /tmp/x\n"
        ),
    )
    .unwrap();
    let out = p.mtr().args(["--no-tty", "--sync-only"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// A file longer than a segment (256 MiB) changed near its head: while mtr still reads it, the
/// agent starts building the new version from the old one (its debug log says how much it
/// prefilled), and the file arrives exact with only the changed chunks on the wire.
#[test]
fn a_long_file_changed_at_its_head_is_built_while_mtr_reads_it() {
    let p = Project::new();
    let mut big = vec![0u8; 300 << 20];
    testkit::gen::Rng::new(17).fill(&mut big);
    p.write("ckpt.bin", &big);
    p.sync();
    big.splice(64..64, [b'x'; 100]);
    p.write("ckpt.bin", &big);
    let stderr = p.sync_debug();
    let prefilled: u64 = stderr
        .lines()
        .find(|l| l.contains("bytes prefilled in"))
        .and_then(|l| l.split("sink: ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("nothing prefilled:\n{stderr}"));
    assert!(prefilled > 290 << 20, "{prefilled} bytes prefilled");
    let wire = wire_bytes(&stderr);
    assert!(wire < 2_000_000, "{wire} bytes on the wire");
    let theirs = fs::read(p.remote().join("ckpt.bin")).unwrap();
    assert!(theirs == big, "the remote file differs");
}
