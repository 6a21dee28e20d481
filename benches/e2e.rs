//! End-to-end: `mtr --sync-only` with each of its engines (`agent`, the default; `rsync`;
//! `sftp`) against plain `rsync -az --delete` and, when installed, the reference Python tool
//! (`mtr-cli`), over a real sshd in a network namespace behind a `tbf`-shaped veth link (1 Gbit/s
//! by default), on a generated project (~10,000 source and object files, ~300 MB, plus a 2 GB
//! safetensors-style fp16 checkpoint), through scenarios that each tool syncs to its own remote
//! copy, interleaved. `mtr-true` runs a no-op sync and `true` end to end. Two download scenarios
//! close the run: `--get` of the checkpoint from each tool's remote copy, then again after 10%
//! of every remote copy changed, against `rsync -az` pulling the same file. Dirty pages are
//! written out (`sync`) before every measured run, so none pays for a setup's or another run's
//! writes.
//!
//! ```text
//! sudo cargo bench --bench e2e                          # full size: takes many minutes
//! sudo MTR_BENCH_SCALE=0.05 cargo bench --bench e2e     # quick: 5% of every count and size
//! sudo MTR_REFERENCE=/tmp/refvenv/bin/mtr cargo bench --bench e2e   # with the reference rows
//! ```
//!
//! Needs root (testkit starts sshd for a throwaway account; the link needs `ip` and `tc`) and
//! `rsync`. Settings, from the environment:
//! - `MTR_BENCH_SCALE` (1.0): multiplies every file count and size.
//! - `MTR_BENCH_REPS` (3): repetitions of each scenario; medians reported. Before each first
//!   sync after the first, every tool starts cold: the account's processes are killed, the
//!   remote copies, the installed agent and its state, and mtr's local cache are removed.
//! - `MTR_BENCH_RATE` (`1gbit`): the link's `tbf` rate (`100mbit`, any `tc` rate, or `unlimited`
//!   for an unshaped veth); `cargo bench --bench e2e -- --rate 100mbit` says the same (and wins).
//! - `MTR_BENCH_NET` (`netns`): `loopback` runs sshd on loopback in a private namespace, unshaped
//!   (also the fallback, announced loudly, when the namespace cannot be made); `shared` on the
//!   host's loopback (`MTR_BENCH_SHARED_NET=1` means the same).
//! - `MTR_REFERENCE`: the reference tool's `mtr` (`python3 -m venv /tmp/refvenv &&
//!   /tmp/refvenv/bin/pip install mtr-cli==2.0.0`); without it the reference rows are skipped,
//!   with a note.
//! - `MTR_BENCH_TOOLS` (`mtr,mtr-rsync,mtr-sftp,rsync,reference`): which tools to run (`mtr` is
//!   the agent engine, `mtr-rsync` and `mtr-sftp` are mtr with `sync: rsync` / `sync: sftp`).
//! - `MTR_BENCH_SCENARIOS` (all): comma-separated names to run (the first sync always runs).
//! - `MTR_BENCH_MTR`: an `mtr` binary to use (absolute, or relative to the workspace);
//!   otherwise the bench runs `cargo build --release -p mtr` first and uses a copy of
//!   `target/release/mtr` (a rebuild during the run changes nothing).
//! - `MTR_BENCH_KEEP=1`: keep the local project and every run's stdout/stderr (the path is
//!   printed); the remote copies go with the sshd account either way.
//!
//! The link (see `mtr_benches::net` for the exact commands): the bench stays in its network
//! namespace, sshd runs in a new one reached over a veth pair, with `tbf rate R burst 256kb
//! latency 100ms` on both ends. Its achieved rate is measured at the start (plain TCP, and
//! `ssh host head -c N /dev/zero`) and printed with the table.
//!
//! What is measured, per run: wall time; bytes on the wire, both directions, from the veth's
//! counters (on loopback: `lo`'s rx); the local tool's peak RSS and CPU (`wait4`, which for
//! rsync covers its `ssh` child too, and for the reference its rsync and ssh); and the remote
//! account's processes (sshd session, `mtr-agent` or the rsync server), polled in `/proc` every
//! 10 ms, as peak RSS per process name and CPU seconds. Each scenario changes the local tree once
//! per repetition, waits 2.5 s (see [`SETTLE`]), then runs every tool, alternating the order.
//! Every mtr run is checked by comparing the remote tree with the local one (the others' after
//! each scenario's last repetition); a mismatch is reported loudly and makes the bench exit with
//! status 1, as does any failed run (the table and JSON are written first).
//!
//! The reference tool has no sync-only mode: its sync rows run `reference true` (its rsync,
//! then `ssh host 'cd DIR && true'`), and its `--get` rows `reference --no-sync --get`. It syncs
//! with `rsync -av` (no compression, no `--delete`): after the rename its remote copy keeps the
//! directory's old name too, which its check ignores. It runs the OpenSSH client, which reads
//! the passwd user's `known_hosts`; an `ssh` wrapper first on its `PATH` adds `-F /dev/null`
//! and this run's `known_hosts` (the options plain rsync's `-e ssh` gets too).
//!
//! Note that rsync ≥ 3.2 negotiates its `-z` codec: between two rsync 3.2+ it is zstd.
//!
//! The big mutations are repeated without a reset, each repetition the same kind and size of
//! change: the rename toggles the directory's name back and forth, the overwrite writes new
//! seeded values over 10% of the checkpoint's tensor data (whole tensors and row ranges in
//! others, picked anew), and the header insertion adds another 100-byte metadata entry at the
//! front of the checkpoint's JSON header, which moves every tensor by 100 bytes.
//!
//! Prints a table and writes every run and the medians to `target/bench-e2e.json`
//! (overwritten by each run, whatever its settings: they are recorded in it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mtr_benches::checkpoint;
use mtr_benches::net::{Net, NetOptions, Rates};
use mtr_benches::probe::{median, ProcStats};
use mtr_benches::project::{Layout, Project};
use mtr_benches::run::{self, load_average};
use serde_json::json;
use testkit::gen::tree_equal;
use testkit::sshd::{LocalHome, Server};

const MB: f64 = 1e6;

/// The pause between changing the tree and syncing it. mtr hashes again, on its next run too,
/// a file whose mtime is within 2 s of its last scan (the change could hide in the same clock
/// tick), so without a pause every scenario would also pay for the previous one's files. The
/// pause also keeps successive changes in different seconds, which rsync's quick check needs.
const SETTLE: Duration = Duration::from_millis(2500);

/// Settings from the environment.
struct Options {
    scale: f64,
    reps: usize,
    tools: Vec<Tool>,
    scenarios: Option<Vec<String>>,
    mtr: Option<PathBuf>,
    reference: Option<PathBuf>,
    net: NetOptions,
    keep: bool,
}

impl Options {
    fn from_env() -> Options {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let parse = |k: &str, default: f64| {
            var(k).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{k}={v:?}: expected a number"))
            })
        };
        let reference = var("MTR_REFERENCE").map(|v| {
            let path = run::workspace().join(v);
            assert!(
                path.is_file(),
                "MTR_REFERENCE: no such file: {} (install it: python3 -m venv /tmp/refvenv && \
                 /tmp/refvenv/bin/pip install mtr-cli==2.0.0)",
                path.display()
            );
            path
        });
        let tools = match var("MTR_BENCH_TOOLS") {
            None => {
                let mut tools = Tool::ALL.to_vec();
                if reference.is_none() {
                    eprintln!(
                        "note: MTR_REFERENCE is not set: the reference tool's rows are skipped \
                         (MTR_REFERENCE=/path/to/venv/bin/mtr, with mtr-cli==2.0.0 installed)"
                    );
                    tools.retain(|t| *t != Tool::Reference);
                }
                tools
            }
            Some(v) => {
                let tools: Vec<Tool> = v
                    .split(',')
                    .map(|t| {
                        Tool::ALL
                            .into_iter()
                            .find(|tool| tool.name() == t.trim())
                            .unwrap_or_else(|| {
                                panic!(
                                    "MTR_BENCH_TOOLS: unknown tool {t:?}; known: {}",
                                    Tool::ALL.map(Tool::name).join(", ")
                                )
                            })
                    })
                    .collect();
                assert!(
                    reference.is_some() || !tools.contains(&Tool::Reference),
                    "MTR_BENCH_TOOLS names the reference tool but MTR_REFERENCE is not set"
                );
                tools
            }
        };
        let scenarios = var("MTR_BENCH_SCENARIOS").map(|v| {
            let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
            for n in &names {
                assert!(
                    Scenario::ALL.iter().any(|s| s.name() == n),
                    "MTR_BENCH_SCENARIOS: unknown scenario {n:?}; known: {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                );
            }
            names
        });
        Options {
            scale: parse("MTR_BENCH_SCALE", 1.0),
            reps: parse("MTR_BENCH_REPS", 3.0).max(1.0) as usize,
            tools,
            scenarios,
            mtr: var("MTR_BENCH_MTR").map(PathBuf::from),
            reference,
            net: NetOptions::from_env(),
            keep: var("MTR_BENCH_KEEP").is_some_and(|v| v != "0"),
        }
    }

    /// Whether `scenario` runs: the first sync always does, the others unless filtered out.
    fn wants(&self, scenario: Scenario) -> bool {
        match &self.scenarios {
            _ if scenario == Scenario::FirstSync => true,
            None => true,
            Some(names) => names.iter().any(|n| n == scenario.name()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// mtr with its default agent engine.
    Mtr,
    /// mtr with `sync: rsync`.
    MtrRsync,
    /// mtr with `sync: sftp`.
    MtrSftp,
    /// Plain `rsync -az --delete` (the baseline).
    Rsync,
    /// The reference Python tool (`mtr-cli`, `MTR_REFERENCE`).
    Reference,
}

impl Tool {
    const ALL: [Tool; 5] = [
        Tool::Mtr,
        Tool::MtrRsync,
        Tool::MtrSftp,
        Tool::Rsync,
        Tool::Reference,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Mtr => "mtr",
            Tool::MtrRsync => "mtr-rsync",
            Tool::MtrSftp => "mtr-sftp",
            Tool::Rsync => "rsync",
            Tool::Reference => "reference",
        }
    }

    /// The server entry in the project's config that this tool uses.
    fn server(self) -> &'static str {
        match self {
            Tool::Mtr => "agent",
            Tool::MtrRsync => "rsync",
            Tool::MtrSftp => "sftp",
            Tool::Reference => "reference",
            Tool::Rsync => unreachable!("plain rsync has no mtr config"),
        }
    }

    /// Names of the remote processes that do this tool's work (for their peak RSS).
    fn remote_process(self, name: &str) -> bool {
        match self {
            Tool::Mtr => name.starts_with("mtr-agent"),
            Tool::MtrRsync | Tool::Rsync | Tool::Reference => name.starts_with("rsync"),
            // internal-sftp runs inside the sshd session process.
            Tool::MtrSftp => name.starts_with("sshd") || name.starts_with("sftp"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    FirstSync,
    NoOp,
    MtrTrue,
    EditOne,
    TouchAll,
    RenameDir,
    Overwrite,
    HeadInsert,
    GetFirst,
    GetOverwrite,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::FirstSync,
        Scenario::NoOp,
        Scenario::MtrTrue,
        Scenario::EditOne,
        Scenario::TouchAll,
        Scenario::RenameDir,
        Scenario::Overwrite,
        Scenario::HeadInsert,
        Scenario::GetFirst,
        Scenario::GetOverwrite,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::FirstSync => "first-sync",
            Scenario::NoOp => "no-op",
            Scenario::MtrTrue => "mtr-true",
            Scenario::EditOne => "edit-1-file",
            Scenario::TouchAll => "touch-all",
            Scenario::RenameDir => "rename-dir",
            Scenario::Overwrite => "overwrite-10%",
            Scenario::HeadInsert => "insert-head-100B",
            Scenario::GetFirst => "get-first",
            Scenario::GetOverwrite => "get-after-10%",
        }
    }

    fn is_get(self) -> bool {
        matches!(self, Scenario::GetFirst | Scenario::GetOverwrite)
    }
}

/// One run of one tool.
struct Run {
    scenario: Scenario,
    tool: Tool,
    rep: usize,
    wall_s: f64,
    wire_bytes: u64,
    local_rss_kib: u64,
    local_cpu_s: f64,
    /// Peak RssAnon / RssFile of the local process (not its children), polled.
    local_anon_kib: u64,
    local_file_kib: u64,
    remote: BTreeMap<String, ProcStats>,
    /// The failure: exit status and the tail of stderr, or the tree difference.
    error: Option<String>,
    /// The failure in one line, for the table.
    note: Option<String>,
    /// Whether the remote tree was compared with the local one (and matched, if no error).
    verified: bool,
}

impl Run {
    /// Peak RSS of the tool's own remote process (`mtr-agent`, `rsync`); `None` if the run
    /// was too short for the poll to see it.
    fn remote_rss_kib(&self) -> Option<u64> {
        self.remote
            .iter()
            .filter(|(name, _)| self.tool.remote_process(name))
            .map(|(_, s)| s.peak_rss_kib)
            .max()
    }

    fn remote_cpu_s(&self) -> f64 {
        self.remote.values().map(|s| s.cpu_s).sum()
    }
}

struct Bench {
    opts: Options,
    // Drop order: the server (sshd and its sessions) before the link it sits behind.
    server: Server,
    net: Net,
    rates: Rates,
    uid: u32,
    project: Project,
    /// `HOME` of the mtr and reference processes: mtr's known_hosts and cache.
    mtr_home: LocalHome,
    /// Held for its files: a home that trusts the server, whose known_hosts rsync's `ssh` and
    /// the reference's `ssh` wrapper read.
    _ssh_home: LocalHome,
    mtr: Result<PathBuf, String>,
    /// `ssh ...` for rsync's `-e`.
    rsync_ssh: String,
    /// `PATH` for the reference tool: the `ssh` wrapper first.
    reference_path: String,
    /// Each tool's remote copy of the project.
    dests: Vec<(Tool, PathBuf)>,
    /// Where each tool's `--get` downloads go: `<work>/get/<tool>/`.
    downloads: PathBuf,
    logs: PathBuf,
    runs: Vec<Run>,
    load_start: String,
    /// The workspace's revision when the run started (see [`run::source_revision`]).
    revision: String,
}

fn main() -> ExitCode {
    if !run::wanted("e2e") {
        return ExitCode::SUCCESS;
    }
    let opts = Options::from_env();
    let load_start = load_average();
    let revision = run::source_revision();
    // Before anything else: the build may need the network, and the loopback fallback moves
    // this thread (only) into a new namespace, so it comes before any thread starts.
    let mtr = if opts
        .tools
        .iter()
        .any(|t| matches!(t, Tool::Mtr | Tool::MtrRsync | Tool::MtrSftp))
    {
        run::mtr_binary(opts.mtr.as_deref())
    } else {
        Err("not run (MTR_BENCH_TOOLS)".into())
    };
    let net = Net::setup(&opts.net);
    eprintln!("link: {}", net.describe());

    let work = tempfile::Builder::new()
        .prefix("mtr-bench-")
        .tempdir()
        .expect("temp dir");
    let layout = Layout::scaled(opts.scale);
    eprintln!(
        "generating {} files, {:.0} MB ({:.0} MB of fp16 checkpoint, {} layers) in {}",
        layout.files(),
        layout.bytes() as f64 / MB,
        layout.weights_bytes() as f64 / MB,
        layout.model.layers,
        work.path().display()
    );
    let t = Instant::now();
    let project = Project::generate(&work.path().join("project"), layout).expect("generate");
    eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());

    let server = net.server().start();
    let uid = fs::metadata(server.home()).expect("remote home").uid();
    let mtr_home = LocalHome::new();
    mtr_home.add_key(&server);
    let ssh_home = LocalHome::for_server(&server);
    let rates = Rates::measure(&net, ssh_home.ssh(&server));
    eprintln!("link {}", rates.describe());
    let dests: Vec<(Tool, PathBuf)> = Tool::ALL
        .into_iter()
        .map(|t| (t, server.mkdir_remote(t.name())))
        .collect();
    write_config(&project.root, &server, &mtr_home, &dests);
    let downloads = work.path().join("get");
    let rsync_ssh = format!(
        "ssh -F /dev/null -p {} -i {} -o UserKnownHostsFile={} \
         -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes",
        server.port(),
        server.client_key().display(),
        ssh_home.known_hosts().display()
    );
    let reference_path = ssh_wrapper(&work.path().join("bin"), &ssh_home);
    let logs = work.path().join("logs");
    fs::create_dir(&logs).unwrap();
    // A copy, so that a rebuild of target/release/mtr during the run changes nothing.
    let mtr = mtr.map(|bin| {
        let copy = work.path().join("mtr");
        fs::copy(&bin, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        copy
    });

    let mut bench = Bench {
        opts,
        server,
        net,
        rates,
        uid,
        project,
        mtr_home,
        _ssh_home: ssh_home,
        mtr,
        rsync_ssh,
        reference_path,
        dests,
        downloads,
        logs,
        runs: Vec::new(),
        load_start,
        revision,
    };
    for scenario in Scenario::ALL {
        if bench.opts.wants(scenario) {
            bench.scenario(scenario);
        }
    }

    let table = bench.table();
    println!("\n{table}");
    run::write_json("bench-e2e.json", &bench.json());

    if bench.opts.keep {
        println!("kept {} (project/, logs/)", work.keep().display());
    }
    let failures: Vec<&Run> = bench.runs.iter().filter(|r| r.error.is_some()).collect();
    for r in &failures {
        println!(
            "\n--- {} {} #{}: {}",
            r.scenario.name(),
            r.tool.name(),
            r.rep + 1,
            clip(r.error.as_deref().unwrap(), 25)
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("\n{} run(s) failed (above)", failures.len());
        ExitCode::FAILURE
    }
}

/// Writes `dir/ssh`, which runs the OpenSSH client with `-F /dev/null` and `home`'s
/// known_hosts (strict, no prompts); returns a `PATH` with `dir` first.
fn ssh_wrapper(dir: &Path, home: &LocalHome) -> String {
    fs::create_dir_all(dir).unwrap();
    let wrapper = dir.join("ssh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -F /dev/null -oUserKnownHostsFile={} \
             -oStrictHostKeyChecking=yes -oBatchMode=yes \"$@\"\n",
            home.known_hosts().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

impl Bench {
    /// Runs every repetition of `scenario`: change the tree, then each tool, alternating order.
    fn scenario(&mut self, scenario: Scenario) {
        let reps = self.opts.reps;
        for rep in 0..reps {
            if scenario == Scenario::FirstSync && rep > 0 {
                let dests: Vec<PathBuf> = self.dests.iter().map(|(_, d)| d.clone()).collect();
                run::cold_start(&self.server, self.mtr_home.path(), &dests);
            }
            let what = self.change(scenario, rep);
            eprintln!("\n[{} {}/{reps}] {what}", scenario.name(), rep + 1);
            std::thread::sleep(SETTLE);
            let mut tools = self.opts.tools.clone();
            if rep % 2 == 1 {
                tools.reverse();
            }
            for tool in tools {
                let verify = tool == Tool::Mtr || rep + 1 == reps;
                let run = self.run(scenario, tool, rep, verify);
                eprintln!(
                    "  {:<9} {:>8.2} s {:>10.2} MB  rss {:>6.1}/{:<6} MB  {}",
                    tool.name(),
                    run.wall_s,
                    run.wire_bytes as f64 / MB,
                    run.local_rss_kib as f64 / 1024.0,
                    mib(run.remote_rss_kib()),
                    match (&run.note, run.verified) {
                        (Some(note), _) => format!("FAILED: {note}"),
                        (None, true) => "ok, trees equal".into(),
                        (None, false) => "ok".into(),
                    }
                );
                self.runs.push(run);
            }
        }
    }

    /// Applies one repetition's change to the local tree; returns what it did.
    fn change(&mut self, scenario: Scenario, rep: usize) -> String {
        let p = &mut self.project;
        match scenario {
            Scenario::FirstSync => format!(
                "{} files, {:.0} MB",
                p.layout.files(),
                p.layout.bytes() as f64 / MB
            ),
            Scenario::NoOp => "nothing changed".into(),
            Scenario::MtrTrue => "nothing changed; sync, then run `true` remotely".into(),
            Scenario::EditOne => {
                p.edit_small_file(rep).expect("edit");
                format!("inserted a line in {}", p.small_file.display())
            }
            Scenario::TouchAll => {
                let when = SystemTime::now();
                let n = p.touch_all(when).expect("touch");
                format!("set the mtime of all {n} files")
            }
            Scenario::RenameDir => {
                let from = p.moving_dir.clone();
                let bytes = p.moving_dir_bytes();
                p.rename_dir().expect("rename");
                format!(
                    "renamed {} ({:.0} MB) to {}",
                    from.display(),
                    bytes as f64 / MB,
                    p.moving_dir.display()
                )
            }
            Scenario::Overwrite => {
                let done = p
                    .overwrite_weights(0.10, 100 + rep as u64)
                    .expect("overwrite");
                format!(
                    "overwrote {:.1} MB of {}: {} whole tensors, row ranges in {} others",
                    done.bytes as f64 / MB,
                    p.weights.display(),
                    done.whole,
                    done.regions
                )
            }
            Scenario::HeadInsert => {
                p.insert_at_head(100, 200 + rep as u64).expect("insert");
                format!(
                    "inserted 100 bytes in the JSON header of {} (every tensor moves)",
                    p.weights.display()
                )
            }
            Scenario::GetFirst => {
                // Each repetition downloads into an empty directory.
                let _ = fs::remove_dir_all(&self.downloads);
                format!("download {} into an empty directory", p.weights.display())
            }
            Scenario::GetOverwrite => {
                let mut bytes = 0;
                for (tool, dest) in &self.dests {
                    let remote = dest.join(&p.weights);
                    if !self.opts.tools.contains(tool) || !remote.exists() {
                        continue;
                    }
                    bytes = checkpoint::overwrite(&remote, 0.10, 300 + rep as u64)
                        .unwrap_or_else(|e| panic!("overwrite {}: {e}", remote.display()))
                        .bytes;
                }
                format!(
                    "overwrote {:.1} MB of every remote copy of {}, then download it again",
                    bytes as f64 / MB,
                    p.weights.display()
                )
            }
        }
    }

    fn dest(&self, tool: Tool) -> &Path {
        &self.dests.iter().find(|(t, _)| *t == tool).unwrap().1
    }

    /// The command that runs `scenario` for `tool`.
    fn command(
        &self,
        scenario: Scenario,
        tool: Tool,
        download_dir: &Path,
    ) -> Result<Command, String> {
        let get = scenario.is_get();
        let weights = &self.project.weights;
        let get_to = download_dir.join(weights.file_name().unwrap());
        let remote = |path: &Path| {
            format!(
                "{}@{}:{}",
                self.server.user(),
                self.server.host(),
                path.display()
            )
        };
        let cmd = match tool {
            Tool::Mtr | Tool::MtrRsync | Tool::MtrSftp => {
                let bin = self.mtr.as_ref().map_err(Clone::clone)?;
                let mut cmd = Command::new(bin);
                cmd.args(["--no-tty", "-v", "-s", tool.server()]);
                if get {
                    cmd.args(["--no-sync", "--get"])
                        .arg(weights)
                        .arg("--to")
                        .arg(get_to);
                } else if scenario == Scenario::MtrTrue {
                    cmd.arg("true");
                } else {
                    cmd.arg("--sync-only");
                }
                cmd.current_dir(&self.project.root)
                    .env("HOME", self.mtr_home.path())
                    .env_remove("XDG_CONFIG_HOME")
                    .env_remove("XDG_CACHE_HOME")
                    .env_remove("SSH_AUTH_SOCK");
                cmd
            }
            Tool::Reference => {
                let bin = self.opts.reference.as_ref().expect("MTR_REFERENCE");
                let mut cmd = Command::new(bin);
                cmd.args(["--no-check-update", "--no-tty", "-s", tool.server()]);
                if get {
                    cmd.args(["--no-sync", "--get"])
                        .arg(weights)
                        .arg("--to")
                        .arg(get_to);
                } else {
                    // No sync-only mode: a sync is always followed by a command.
                    cmd.arg("true");
                }
                cmd.current_dir(&self.project.root)
                    .env("HOME", self.mtr_home.path())
                    .env("PATH", &self.reference_path)
                    .env_remove("SSH_AUTH_SOCK");
                cmd
            }
            Tool::Rsync => {
                let dest = self.dest(tool);
                let mut cmd;
                if get {
                    cmd = Command::new("rsync");
                    cmd.args(["-az", "-e", &self.rsync_ssh])
                        .arg(remote(&dest.join(weights)))
                        .arg(format!("{}/", download_dir.display()));
                } else {
                    let src = format!("{}/", self.project.root.display());
                    let dst = format!("{}/", remote(dest));
                    let rsync = ["-az", "--delete", "--exclude=/.mtr/"];
                    if scenario == Scenario::MtrTrue {
                        // What `mtr true` does, with rsync and ssh: sync, then run.
                        cmd = Command::new("sh");
                        cmd.arg("-c")
                            .arg(format!(
                                "rsync {} -e \"$1\" \"$2\" \"$3\" && $1 \"$4\" \"$5\"",
                                rsync.join(" ")
                            ))
                            .arg("sh")
                            .arg(&self.rsync_ssh)
                            .arg(src)
                            .arg(dst)
                            .arg(format!("{}@{}", self.server.user(), self.server.host()))
                            .arg(format!("cd '{}' && true", dest.display()));
                    } else {
                        cmd = Command::new("rsync");
                        cmd.args(rsync)
                            .args(["-e", &self.rsync_ssh])
                            .arg(src)
                            .arg(dst);
                    }
                }
                cmd.env("HOME", self.mtr_home.path())
                    .env_remove("SSH_AUTH_SOCK");
                cmd
            }
        };
        Ok(cmd)
    }

    fn run(&self, scenario: Scenario, tool: Tool, rep: usize, verify: bool) -> Run {
        let log = self
            .logs
            .join(format!("{}-{}-{rep}", scenario.name(), tool.name()));
        let get = scenario.is_get();
        let weights = &self.project.weights;
        let dest = self.dest(tool);
        let download_dir = self.downloads.join(tool.name());
        if get {
            fs::create_dir_all(&download_dir).unwrap();
        }
        let cmd = match self.command(scenario, tool, &download_dir) {
            Ok(cmd) => cmd,
            Err(e) => return failed(scenario, tool, rep, e),
        };
        // What must equal what after the run: the remote copy and the local tree, or the
        // downloaded file and its remote original.
        let mut ignore = vec![".mtr", ".mtr-sync"];
        let (expected, actual) = if get {
            (dest.join(weights.parent().unwrap()), download_dir)
        } else {
            if tool == Tool::Reference {
                // It syncs without --delete: the renamed directory's old name stays.
                ignore.push(self.project.other_dir_name());
            }
            (self.project.root.clone(), dest.to_owned())
        };
        let mut run = self.measure(cmd, &log);
        run.scenario = scenario;
        run.tool = tool;
        run.rep = rep;
        if run.error.is_none() && verify {
            run.verified = true;
            if let Err(diff) = tree_equal(&expected, &actual, &ignore) {
                eprintln!(
                    "\n!!!!!!!! {} {} #{}: {} differs from {} !!!!!!!!\n{diff}\n",
                    scenario.name(),
                    tool.name(),
                    rep + 1,
                    actual.display(),
                    expected.display()
                );
                let mut lines = diff.lines().map(str::trim);
                let count = lines
                    .next()
                    .and_then(|l| l.rsplit_once('('))
                    .map_or("", |x| x.1);
                run.note = Some(format!(
                    "MISMATCH after a successful run ({} e.g. {}",
                    count.trim_end_matches(':'),
                    lines.next().unwrap_or("?")
                ));
                run.error = Some(format!("MISMATCH after a successful run: {diff}"));
            }
        }
        run
    }

    /// Runs `cmd` to completion, measuring it and the remote account meanwhile.
    fn measure(&self, mut cmd: Command, log: &Path) -> Run {
        let err_path = log.with_extension("stderr");
        cmd.stdin(Stdio::null())
            .stdout(File::create(log.with_extension("stdout")).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let m = run::measure(&mut cmd, self.uid, &|| self.net.wire_bytes());
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let (error, note) = if m.code == 0 {
            (None, None)
        } else {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            (
                Some(format!(
                    "exit status {}; stderr (last lines):\n{tail}",
                    m.code
                )),
                Some(format!("exit {}: {}", m.code, last_line(&stderr))),
            )
        };
        Run {
            scenario: Scenario::FirstSync,
            tool: Tool::Mtr,
            rep: 0,
            wall_s: m.wall_s,
            wire_bytes: m.wire_bytes,
            local_rss_kib: m.local_rss_kib,
            local_anon_kib: m.sampled.local_anon_kib,
            local_file_kib: m.sampled.local_file_kib,
            local_cpu_s: m.local_cpu_s,
            remote: m.sampled.remote,
            error,
            note,
            verified: false,
        }
    }

    /// Medians per (scenario, tool), in run order.
    fn summary(&self) -> Vec<Summary> {
        let mut out: Vec<Summary> = Vec::new();
        for run in &self.runs {
            if out
                .iter()
                .any(|s| s.scenario == run.scenario && s.tool == run.tool)
            {
                continue;
            }
            let runs: Vec<&Run> = self
                .runs
                .iter()
                .filter(|r| r.scenario == run.scenario && r.tool == run.tool)
                .collect();
            let ok: Vec<&&Run> = runs.iter().filter(|r| r.error.is_none()).collect();
            let med =
                |f: &dyn Fn(&Run) -> f64| median(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
            out.push(Summary {
                scenario: run.scenario,
                tool: run.tool,
                runs: runs.len(),
                ok: ok.len(),
                wall_s: med(&|r| r.wall_s),
                wire_bytes: med(&|r| r.wire_bytes as f64),
                local_rss_kib: ok.iter().map(|r| r.local_rss_kib).max().unwrap_or(0),
                local_anon_kib: ok.iter().map(|r| r.local_anon_kib).max().unwrap_or(0),
                remote_rss_kib: ok.iter().filter_map(|r| r.remote_rss_kib()).max(),
                local_cpu_s: med(&|r| r.local_cpu_s),
                remote_cpu_s: med(&|r| r.remote_cpu_s()),
                note: runs.iter().find_map(|r| r.note.clone()),
            });
        }
        out
    }

    fn table(&self) -> String {
        let summary = self.summary();
        let rsync = |sc: Scenario| {
            summary
                .iter()
                .find(|s| s.scenario == sc && s.tool == Tool::Rsync && s.ok > 0)
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "e2e: {} files, {:.0} MB (scale {}), medians of {} repetitions; mtr from {}",
            self.project.layout.files(),
            self.project.layout.bytes() as f64 / MB,
            self.opts.scale,
            self.opts.reps,
            self.revision
        );
        let _ = writeln!(
            t,
            "link: {} (tbf: {}, rate: {}); {}",
            self.net.describe(),
            if self.net.rate().is_some() {
                "yes"
            } else {
                "no"
            },
            self.net.rate().unwrap_or("unlimited"),
            self.rates.describe()
        );
        let _ = writeln!(
            t,
            "load average (1/5/15 min): {} at the start, {} at the end",
            self.load_start,
            load_average()
        );
        let _ = writeln!(
            t,
            "{:<17} {:<9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}  note",
            "scenario",
            "tool",
            "wall s",
            "MB wire",
            "RSS loc",
            "anon loc",
            "RSS rem",
            "cpu loc",
            "cpu rem",
            "t/rsync",
            "B/rsync"
        );
        for s in &summary {
            let ratios = match rsync(s.scenario) {
                Some(r) if s.ok > 0 && s.tool != Tool::Rsync => format!(
                    "{:>7} {:>7}",
                    ratio(s.wall_s, r.wall_s),
                    ratio(s.wire_bytes, r.wire_bytes)
                ),
                _ => format!("{:>7} {:>7}", "", ""),
            };
            let note = match &s.note {
                Some(e) => format!("{}/{} FAILED: {e}", s.runs - s.ok, s.runs),
                None => String::new(),
            };
            if s.ok == 0 {
                let dashes = format!(
                    "{:>8} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
                    "-", "-", "-", "-", "-", "-", "-", "-", "-"
                );
                let _ = writeln!(
                    t,
                    "{:<17} {:<9} {dashes}  {note}",
                    s.scenario.name(),
                    s.tool.name()
                );
                continue;
            }
            let _ = writeln!(
                t,
                "{:<17} {:<9} {:>8.2} {:>10.3} {:>8.1} {:>8.1} {:>8} {:>7.2} {:>7.2} {ratios}  {note}",
                s.scenario.name(),
                s.tool.name(),
                s.wall_s,
                s.wire_bytes / MB,
                s.local_rss_kib as f64 / 1024.0,
                s.local_anon_kib as f64 / 1024.0,
                mib(s.remote_rss_kib),
                s.local_cpu_s,
                s.remote_cpu_s,
            );
        }
        t.push_str(
            "MB wire: both directions on the link. RSS in MiB: peak of the local process (rsync:\n\
             with its ssh; reference: with its rsync and ssh; mmap'd files count), its anonymous\n\
             part alone (polled; reference: the Python process), and the remote mtr-agent / rsync\n\
             server's (mtr-sftp: the sshd session's, which runs internal-sftp), polled every 10 ms\n\
             (\"-\": it exited before a poll saw it); cpu in s (remote: all the account's processes,\n\
             sshd's session too). t/rsync, B/rsync: wall time and bytes on the wire over rsync's.\n\
             mtr-true: a no-op sync then `true` (rsync: `rsync ... && ssh host 'cd DIR && true'`).\n",
        );
        if self.opts.tools.contains(&Tool::Reference) {
            t.push_str(
                "reference: every sync row is `reference true` (it has no sync-only mode: its\n\
                 rsync -av, no -z, no --delete, then ssh host 'cd DIR && true').\n",
            );
        }
        t
    }

    fn json(&self) -> serde_json::Value {
        let l = &self.project.layout;
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario.name(),
                    "tool": r.tool.name(),
                    "rep": r.rep,
                    "wall_s": r.wall_s,
                    "wire_bytes": r.wire_bytes,
                    "local_peak_rss_kib": r.local_rss_kib,
                    "local_peak_rss_anon_kib": r.local_anon_kib,
                    "local_peak_rss_file_kib": r.local_file_kib,
                    "local_cpu_s": r.local_cpu_s,
                    "remote": r.remote.iter().map(|(name, s)| (name.clone(), json!({
                        "peak_rss_kib": s.peak_rss_kib,
                        "peak_rss_anon_kib": s.peak_anon_kib,
                        "cpu_s": s.cpu_s,
                        "processes": s.processes,
                    }))).collect::<serde_json::Map<_, _>>(),
                    "verified": r.verified,
                    "error": r.error,
                })
            })
            .collect();
        let summary: Vec<_> = self
            .summary()
            .iter()
            .map(|s| {
                json!({
                    "scenario": s.scenario.name(),
                    "tool": s.tool.name(),
                    "runs": s.runs,
                    "ok": s.ok,
                    "median_wall_s": s.wall_s,
                    "median_wire_bytes": s.wire_bytes,
                    "max_local_peak_rss_kib": s.local_rss_kib,
                    "max_local_peak_rss_anon_kib": s.local_anon_kib,
                    "max_remote_peak_rss_kib": s.remote_rss_kib,
                    "median_local_cpu_s": s.local_cpu_s,
                    "median_remote_cpu_s": s.remote_cpu_s,
                    "error": s.note,
                })
            })
            .collect();
        json!({
            "scale": self.opts.scale,
            "reps": self.opts.reps,
            "layout": {
                "files": l.files(),
                "bytes": l.bytes(),
                "src": [l.src_files, l.src_bytes],
                "vendored": [l.vendored_files, l.vendored_bytes],
                "objects": [l.obj_files, l.obj_bytes],
                "checkpoint": {
                    "format": "safetensors, F16",
                    "layers": l.model.layers,
                    "vocab": l.model.vocab,
                    "data_bytes": l.weights_bytes(),
                },
            },
            "link": self.net.json(),
            "link_rate": self.net.rate(),
            "link_tbf": self.net.rate().is_some(),
            "link_measured": self.rates.json(),
            "load_average": {"start": self.load_start, "end": load_average()},
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "rsync_version": run::first_line(Command::new("rsync").arg("--version")),
            "source_revision": self.revision,
            "mtr_version": self.mtr.as_ref().ok().map(|b| run::first_line(Command::new(b).arg("--version"))),
            "reference": self.opts.reference.as_ref().map(|b| json!({
                "path": b,
                "version": run::first_line(Command::new(b).arg("--version")),
            })),
            "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "summary": summary,
            "runs": runs,
        })
    }
}

struct Summary {
    scenario: Scenario,
    tool: Tool,
    runs: usize,
    ok: usize,
    wall_s: f64,
    wire_bytes: f64,
    local_rss_kib: u64,
    local_anon_kib: u64,
    remote_rss_kib: Option<u64>,
    local_cpu_s: f64,
    remote_cpu_s: f64,
    note: Option<String>,
}

fn failed(scenario: Scenario, tool: Tool, rep: usize, error: String) -> Run {
    Run {
        scenario,
        tool,
        rep,
        wall_s: 0.0,
        wire_bytes: 0,
        local_rss_kib: 0,
        local_cpu_s: 0.0,
        local_anon_kib: 0,
        local_file_kib: 0,
        remote: BTreeMap::new(),
        note: Some(last_line(&error).to_owned()),
        error: Some(error),
        verified: false,
    }
}

/// KiB as MiB with one decimal, or "-".
fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// The first `n` lines of `text`, with "..." if there were more.
fn clip(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().take(n + 1).collect();
    if lines.len() > n {
        lines[n] = "...";
    }
    lines.join("\n")
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// One server entry per mtr engine, and one for the reference tool (which reads the same file:
/// `sync: rsync` is its only engine; mtr accepts the entry too).
fn write_config(root: &Path, server: &Server, home: &LocalHome, dests: &[(Tool, PathBuf)]) {
    let mut config = String::from(
        "# Written by benches/e2e.rs: one server entry per engine, and the reference tool's\n\
         servers:\n",
    );
    for (tool, dest) in dests.iter().filter(|(t, _)| *t != Tool::Rsync) {
        let engine = match tool {
            Tool::Mtr => "agent",
            Tool::MtrSftp => "sftp",
            _ => "rsync",
        };
        let _ = write!(
            config,
            "  {}:\n    host: {}\n    port: {}\n    user: {}\n    key_filename: {}\n    \
             remote_dir: {}\n    sync: {engine}\n    strict_host_key_checking: accept-new\n",
            tool.server(),
            server.host(),
            server.port(),
            server.user(),
            home.key().display(),
            dest.display()
        );
    }
    fs::create_dir_all(root.join(".mtr")).unwrap();
    fs::write(root.join(".mtr/config.yaml"), config).unwrap();
}
