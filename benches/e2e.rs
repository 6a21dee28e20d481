//! End-to-end: `mtr --sync-only` with each of its engines (`agent`, the default; `rsync`;
//! `sftp`) against plain `rsync -az --delete`, over a real sshd on loopback, on a generated
//! project (~10,000 source and object files, ~300 MB, plus 1 GiB of fp16 weights), through
//! scenarios that each tool syncs to its own remote copy, interleaved. Two download scenarios
//! close the run: `--get` of the 1 GiB weights file from each tool's remote copy, then again
//! after 10% of every remote copy changed, against `rsync -az` pulling the same file.
//!
//! ```text
//! sudo cargo bench --bench e2e                          # full size: takes many minutes
//! sudo MTR_BENCH_SCALE=0.05 cargo bench --bench e2e     # quick: 5% of every count and size
//! ```
//!
//! Needs root (testkit starts sshd for a throwaway account) and `rsync`. Settings, from the
//! environment:
//! - `MTR_BENCH_SCALE` (1.0): multiplies every file count and size.
//! - `MTR_BENCH_REPS` (3): repetitions of each scenario but the first sync; medians reported.
//! - `MTR_BENCH_TOOLS` (`mtr,mtr-rsync,mtr-sftp,rsync`): which tools to run (`mtr` is the
//!   agent engine, `mtr-rsync` and `mtr-sftp` are mtr with `sync: rsync` / `sync: sftp`).
//! - `MTR_BENCH_SCENARIOS` (all): comma-separated names to run (the first sync always runs).
//! - `MTR_BENCH_MTR`: an `mtr` binary to use (absolute, or relative to the workspace);
//!   otherwise the bench runs `cargo build --release -p mtr` first and uses a copy of
//!   `target/release/mtr` (a rebuild during the run changes nothing).
//! - `MTR_BENCH_SHARED_NET=1`: stay in the host's network namespace (see below).
//! - `MTR_BENCH_KEEP=1`: keep the local project and every run's stdout/stderr (the path is
//!   printed); the remote copies go with the sshd account either way.
//!
//! What is measured, per run: wall time; bytes on the wire, as the growth of `lo`'s rx counter
//! (loopback counts each byte once in rx), in a private network namespace made for the bench
//! so that nothing else's loopback traffic is counted; the local tool's peak RSS and CPU
//! (`wait4`, which for rsync covers its `ssh` child too); and the remote account's processes
//! (sshd session, `mtr-agent` or the rsync server), polled in `/proc` every 10 ms, as peak RSS
//! per process name and CPU seconds. Each scenario changes the local tree once per repetition,
//! waits 2.5 s (see [`SETTLE`]), then runs both tools, alternating which goes first. Every mtr
//! run is checked by comparing the remote tree with the local one (rsync's after each
//! scenario's last repetition); a mismatch is reported loudly and makes the bench exit with
//! status 1, as does any failed run (the table and JSON are written first).
//!
//! Note that rsync ≥ 3.2 negotiates its `-z` codec: between two rsync 3.2+ it is zstd.
//!
//! The big mutations are repeated without a reset, each repetition the same kind and size of
//! change: the rename toggles the directory's name back and forth, the overwrite writes new
//! seeded data over 50 new regions, and the head insertion adds another 100 bytes in front.
//!
//! Prints a table and writes every run and the medians to `target/bench-e2e.json`
//! (overwritten by each run, whatever its settings: `scale` and `reps` are recorded in it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mtr_benches::probe::{self, median, ProcStats, Watch};
use mtr_benches::project::{overwrite_fp16, Layout, Project};
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
    shared_net: bool,
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
        let tools = var("MTR_BENCH_TOOLS").map_or(Tool::ALL.to_vec(), |v| {
            v.split(',')
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
                .collect()
        });
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
            shared_net: var("MTR_BENCH_SHARED_NET").is_some_and(|v| v != "0"),
            keep: var("MTR_BENCH_KEEP").is_some_and(|v| v != "0"),
        }
    }
}

impl Options {
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
}

impl Tool {
    const ALL: [Tool; 4] = [Tool::Mtr, Tool::MtrRsync, Tool::MtrSftp, Tool::Rsync];

    fn name(self) -> &'static str {
        match self {
            Tool::Mtr => "mtr",
            Tool::MtrRsync => "mtr-rsync",
            Tool::MtrSftp => "mtr-sftp",
            Tool::Rsync => "rsync",
        }
    }

    /// The server entry in the project's config that selects this engine.
    fn server(self) -> &'static str {
        match self {
            Tool::Mtr => "agent",
            Tool::MtrRsync => "rsync",
            Tool::MtrSftp => "sftp",
            Tool::Rsync => unreachable!("plain rsync has no mtr config"),
        }
    }

    /// Names of the remote processes that do this tool's work (for their peak RSS).
    fn remote_process(self, name: &str) -> bool {
        match self {
            Tool::Mtr => name.starts_with("mtr-agent"),
            Tool::MtrRsync | Tool::Rsync => name.starts_with("rsync"),
            // internal-sftp runs inside the sshd session process.
            Tool::MtrSftp => name.starts_with("sshd") || name.starts_with("sftp"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    FirstSync,
    NoOp,
    EditOne,
    TouchAll,
    RenameDir,
    Overwrite,
    HeadInsert,
    GetFirst,
    GetOverwrite,
}

impl Scenario {
    const ALL: [Scenario; 9] = [
        Scenario::FirstSync,
        Scenario::NoOp,
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
            Scenario::EditOne => "edit-1-file",
            Scenario::TouchAll => "touch-all",
            Scenario::RenameDir => "rename-dir",
            Scenario::Overwrite => "overwrite-10%",
            Scenario::HeadInsert => "insert-head-100B",
            Scenario::GetFirst => "get-first",
            Scenario::GetOverwrite => "get-after-10%",
        }
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
    server: Server,
    uid: u32,
    project: Project,
    /// `HOME` of the mtr process: its known_hosts and cache.
    mtr_home: LocalHome,
    mtr: Result<PathBuf, String>,
    rsync_ssh: String,
    /// Each tool's remote copy of the project.
    dests: Vec<(Tool, PathBuf)>,
    /// Where each tool's `--get` downloads go: `<work>/get/<tool>/`.
    downloads: PathBuf,
    logs: PathBuf,
    runs: Vec<Run>,
}

fn main() -> ExitCode {
    let opts = Options::from_env();
    // Before anything else: the build may need the network, and unshare wants one thread.
    let mtr = if opts.tools.contains(&Tool::Mtr) {
        mtr_binary(&opts)
    } else {
        Err("not run (MTR_BENCH_TOOLS)".into())
    };
    let isolated = !opts.shared_net && isolate_network();

    let work = tempfile::Builder::new()
        .prefix("mtr-bench-")
        .tempdir()
        .expect("temp dir");
    let layout = Layout::scaled(opts.scale);
    eprintln!(
        "generating {} files, {:.0} MB ({:.0} MB of fp16 weights) in {}",
        layout.files(),
        layout.bytes() as f64 / MB,
        layout.weights_bytes as f64 / MB,
        work.path().display()
    );
    let t = Instant::now();
    let project = Project::generate(&work.path().join("project"), layout).expect("generate");
    eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());

    let server = Server::start();
    let uid = fs::metadata(server.home()).expect("remote home").uid();
    let mtr_home = LocalHome::new();
    mtr_home.add_key(&server);
    let dests: Vec<(Tool, PathBuf)> = Tool::ALL
        .into_iter()
        .map(|t| (t, server.mkdir_remote(t.name())))
        .collect();
    write_config(&project.root, &server, &mtr_home, &dests);
    let downloads = work.path().join("get");
    let rsync_ssh = format!(
        "ssh -F /dev/null -p {} -i {} -o UserKnownHostsFile={} \
         -o StrictHostKeyChecking=accept-new -o BatchMode=yes -o IdentitiesOnly=yes",
        server.port(),
        server.client_key().display(),
        work.path().join("rsync_known_hosts").display()
    );
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
        uid,
        project,
        mtr_home,
        mtr,
        rsync_ssh,
        dests,
        downloads,
        logs,
        runs: Vec::new(),
    };
    for scenario in Scenario::ALL {
        if bench.opts.wants(scenario) {
            bench.scenario(scenario);
        }
    }

    let table = bench.table();
    println!("\n{table}");
    let json_path = target_dir().join("bench-e2e.json");
    fs::create_dir_all(json_path.parent().unwrap()).unwrap();
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&bench.json(isolated)).unwrap(),
    )
    .expect("write bench-e2e.json");
    println!("wrote {}", json_path.display());

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

impl Bench {
    /// Runs every repetition of `scenario`: change the tree, then each tool, alternating order.
    fn scenario(&mut self, scenario: Scenario) {
        let reps = if scenario == Scenario::FirstSync {
            1
        } else {
            self.opts.reps
        };
        for rep in 0..reps {
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
                    "  {:<5} {:>8.2} s {:>10.2} MB  rss {:>6.1}/{:<6} MB  {}",
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
                let n = p
                    .overwrite_weights(0.10, 50, 100 + rep as u64)
                    .expect("overwrite");
                format!(
                    "overwrote 50 regions, {:.1} MB in all, of {}",
                    n as f64 / MB,
                    p.weights.display()
                )
            }
            Scenario::HeadInsert => {
                p.insert_at_head(100, 200 + rep as u64).expect("insert");
                format!("inserted 100 bytes at the head of {}", p.weights.display())
            }
            Scenario::GetFirst => {
                // Each repetition downloads into an empty directory.
                let _ = fs::remove_dir_all(&self.downloads);
                format!("download {} into an empty directory", p.weights.display())
            }
            Scenario::GetOverwrite => {
                let mut bytes = 0;
                for (_, dest) in &self.dests {
                    let remote = dest.join(&p.weights);
                    bytes = overwrite_fp16(&remote, 0.10, 50, 300 + rep as u64)
                        .unwrap_or_else(|e| panic!("overwrite {}: {e}", remote.display()));
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

    fn run(&self, scenario: Scenario, tool: Tool, rep: usize, verify: bool) -> Run {
        let log = self
            .logs
            .join(format!("{}-{}-{rep}", scenario.name(), tool.name()));
        let get = matches!(scenario, Scenario::GetFirst | Scenario::GetOverwrite);
        let weights = &self.project.weights;
        let dest = self.dest(tool);
        let download_dir = self.downloads.join(tool.name());
        if get {
            fs::create_dir_all(&download_dir).unwrap();
        }
        let cmd = match tool {
            Tool::Mtr | Tool::MtrRsync | Tool::MtrSftp => {
                let Ok(bin) = &self.mtr else {
                    return failed(scenario, tool, rep, self.mtr.clone().unwrap_err());
                };
                let mut cmd = Command::new(bin);
                cmd.args(["--no-tty", "-v", "-s", tool.server()]);
                if get {
                    cmd.args(["--no-sync", "--get"])
                        .arg(weights)
                        .arg("--to")
                        .arg(download_dir.join(weights.file_name().unwrap()));
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
            Tool::Rsync => {
                let mut cmd = Command::new("rsync");
                let remote = |path: &Path| {
                    format!(
                        "{}@{}:{}",
                        self.server.user(),
                        self.server.host(),
                        path.display()
                    )
                };
                if get {
                    cmd.args(["-az", "-e", &self.rsync_ssh])
                        .arg(remote(&dest.join(weights)))
                        .arg(format!("{}/", download_dir.display()));
                } else {
                    cmd.args(["-az", "--delete", "--exclude=/.mtr/", "-e", &self.rsync_ssh])
                        .arg(format!("{}/", self.project.root.display()))
                        .arg(format!("{}/", remote(dest)));
                }
                cmd.env("HOME", self.mtr_home.path())
                    .env_remove("SSH_AUTH_SOCK");
                cmd
            }
        };
        // What must equal what after the run: the remote copy and the local tree, or the
        // downloaded file and its remote original.
        let (expected, actual, ignore) = if get {
            let remote_dir = dest.join(weights.parent().unwrap());
            (remote_dir, download_dir, &[".mtr", ".mtr-sync"][..])
        } else {
            (
                self.project.root.clone(),
                dest.to_owned(),
                &[".mtr", ".mtr-sync"][..],
            )
        };
        let mut run = self.measure(cmd, &log);
        run.scenario = scenario;
        run.tool = tool;
        run.rep = rep;
        if run.error.is_none() && verify {
            run.verified = true;
            if let Err(diff) = tree_equal(&expected, &actual, ignore) {
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
        let rx = probe::loopback_rx_bytes();
        let start = Instant::now();
        // Reaped by wait4, which also yields its resource usage.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let watch = Watch::start(self.uid, child.id(), Duration::from_millis(10));
        let (code, usage) = wait4(child.id());
        let wall_s = start.elapsed().as_secs_f64();
        let wire_bytes = probe::loopback_rx_bytes() - rx;
        let sampled = watch.stop();
        // Let the remote side wind down (sshd's session, the agent) before the next run.
        let quiet = Instant::now() + Duration::from_secs(5);
        while !probe::processes(self.uid).is_empty() && Instant::now() < quiet {
            std::thread::sleep(Duration::from_millis(20));
        }

        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let (error, note) = if code == 0 {
            (None, None)
        } else {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            (
                Some(format!("exit status {code}; stderr (last lines):\n{tail}")),
                Some(format!("exit {code}: {}", last_line(&stderr))),
            )
        };
        Run {
            scenario: Scenario::FirstSync,
            tool: Tool::Mtr,
            rep: 0,
            wall_s,
            wire_bytes,
            local_rss_kib: usage.ru_maxrss as u64,
            local_anon_kib: sampled.local_anon_kib,
            local_file_kib: sampled.local_file_kib,
            local_cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
            remote: sampled.remote,
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
            "e2e: {} files, {:.0} MB (scale {}), medians of {} repetitions (first sync: 1)",
            self.project.layout.files(),
            self.project.layout.bytes() as f64 / MB,
            self.opts.scale,
            self.opts.reps
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
            let ratios = match (s.tool, rsync(s.scenario)) {
                (Tool::Mtr | Tool::MtrRsync | Tool::MtrSftp, Some(r)) if s.ok > 0 => format!(
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
            "RSS in MiB: peak of the local process (rsync: with its ssh; mmap'd files count), its\n\
             anonymous part alone (polled), and the remote mtr-agent / rsync server's (mtr-sftp:\n\
             the sshd session's, which runs internal-sftp), polled every 10 ms (\"-\": it exited\n\
             before a poll saw it);\n\
             cpu in s (remote: all the account's processes, sshd's session too).\n\
             t/rsync, B/rsync: the mtr engine's wall time and bytes on the wire over rsync's.\n",
        );
        t
    }

    fn json(&self, isolated: bool) -> serde_json::Value {
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
                "weights_bytes": l.weights_bytes,
            },
            "private_network_namespace": isolated,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "rsync_version": first_line_of(Command::new("rsync").arg("--version")),
            "mtr_version": self.mtr.as_ref().ok().map(|b| first_line_of(Command::new(b).arg("--version"))),
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

fn first_line_of(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

/// Waits for `pid`; returns its exit code (128+N if killed by signal N) and resource usage,
/// which covers the descendants it waited for (`ru_maxrss` is the largest of them).
fn wait4(pid: u32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
        if r == pid as i32 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage)
}

/// The workspace's target dir (`CARGO_TARGET_DIR`, else `<workspace>/target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `MTR_BENCH_MTR`, or a fresh `cargo build --release -p mtr`.
fn mtr_binary(opts: &Options) -> Result<PathBuf, String> {
    if let Some(bin) = &opts.mtr {
        // cargo runs benches in the package's dir: resolve from the workspace instead.
        let bin = workspace().join(bin);
        assert!(
            bin.is_file(),
            "MTR_BENCH_MTR: no such file: {}",
            bin.display()
        );
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building mtr: cargo build --release -p mtr");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "mtr"])
        .current_dir(workspace())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        eprintln!(
            "\n!!!!!!!! cargo build --release -p mtr failed: mtr runs will be skipped !!!!!!!!\n"
        );
        return Err(format!(
            "`cargo build --release -p mtr` failed ({status}); see its output above"
        ));
    }
    Ok(target_dir().join("release/mtr"))
}

/// Moves this process into a network namespace of its own with only `lo` up, so that its
/// counters see the benchmark's traffic alone. Returns false (and says why) if it cannot.
fn isolate_network() -> bool {
    // SAFETY: plain syscalls on locals; the process is still single-threaded.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            eprintln!(
                "warning: unshare(CLONE_NEWNET): {}; counting bytes on the shared loopback, \
                 where other traffic adds up",
                std::io::Error::last_os_error()
            );
            return false;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req);
        assert!(
            r == 0,
            "bringing lo up: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
    true
}

fn write_config(root: &Path, server: &Server, home: &LocalHome, dests: &[(Tool, PathBuf)]) {
    let mut config =
        String::from("# Written by benches/e2e.rs: one server entry per engine\nservers:\n");
    for (tool, dest) in dests.iter().filter(|(t, _)| *t != Tool::Rsync) {
        let engine = match tool {
            Tool::Mtr => "agent",
            Tool::MtrRsync => "rsync",
            _ => "sftp",
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
