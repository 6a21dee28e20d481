//! Scale: mtr's agent engine on big trees, over the same shaped link as the e2e bench (see
//! `mtr_benches::net`): a first sync and no-ops, with the peak memory of `mtr` and `mtr-agent`,
//! and the no-op's wall time against `ssh host true` measured in the same run, interleaved.
//!
//! ```text
//! sudo cargo bench --bench scale                               # 100k files, ~5 GB
//! sudo MTR_BENCH_LAYOUTS=100k,1m cargo bench --bench scale     # and 1M empty files (slow)
//! ```
//!
//! Layouts (`MTR_BENCH_LAYOUTS`, default `100k`):
//! - `100k`: 99,990 source-like files totalling 1 GB in 16 parts of nested directories, plus 10
//!   fp16 files of 400 MB (4 GB): 100,000 files, 5 GB.
//! - `1m`: 1,000,000 empty files, 1,000 to a directory.
//!
//! For each: `MTR_BENCH_FIRST_SYNCS` (default 3) first syncs (`mtr --sync-only`, tree checked
//! afterwards), each after the first from a cold server (the account's processes killed, the
//! remote copy, the agent and its state, and mtr's local cache removed), then
//! `MTR_BENCH_REPS` (default 5) rounds of `ssh host true` (OpenSSH), the no-op
//! `mtr --sync-only` and `mtr true`, interleaved, medians reported (peak RSS: the highest).
//! Targets (from the issue), reported as met or missed, never failing the bench: `mtr` and
//! `mtr-agent` each under 150 MB (10^6 bytes) peak RSS on `100k`; a no-op on `100k` under 1.5x
//! `ssh host true`. Peak RSS is `VmHWM` (mtr reads files with `pread`, so it is mostly heap);
//! the anonymous part is shown beside it.
//!
//! Other settings as in the e2e bench: `MTR_BENCH_SCALE` (multiplies every count and size; the
//! targets are judged at scale 1 only), `MTR_BENCH_RATE`, `MTR_BENCH_NET`, `MTR_BENCH_MTR`,
//! `MTR_BENCH_KEEP`. Writes `target/bench-scale.json`. Exits 1 if a run failed or a tree differs.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mtr_benches::net::{Net, NetOptions, Rates};
use mtr_benches::probe::median;
use mtr_benches::run::{self, load_average, Measured};
use mtr_benches::trees;
use serde_json::json;
use testkit::gen::tree_equal;
use testkit::sshd::{LocalHome, Server};

const MB: f64 = 1e6;
/// The targets: peak RSS of `mtr` and of `mtr-agent` on `100k`, and the no-op over ssh true.
const RSS_TARGET_BYTES: f64 = 150e6;
const NOOP_TARGET_RATIO: f64 = 1.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Files100k,
    Empty1m,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Files100k => "100k",
            Layout::Empty1m => "1m",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::Files100k => "100,000 files, 5 GB (99,990 source-like, 10 x 400 MB fp16)",
            Layout::Empty1m => "1,000,000 empty files",
        }
    }

    fn generate(self, root: &Path, scale: f64) {
        let n = |x: f64| ((x * scale) as usize).max(1);
        let bytes = |x: f64| ((x * scale) as u64).max(1000);
        match self {
            Layout::Files100k => {
                trees::many_files(root, n(99_990.0), bytes(1e9), 10, bytes(400e6), 5)
            }
            Layout::Empty1m => trees::empty_files(root, n(1e6), 1_000),
        }
        .unwrap_or_else(|e| panic!("generating {}: {e}", root.display()))
    }
}

/// One measured run.
struct Row {
    layout: Layout,
    what: &'static str,
    m: Measured,
    error: Option<String>,
}

impl Row {
    /// Peak VmHWM and RssAnon of the remote mtr-agent, in KiB.
    fn agent_kib(&self) -> (Option<u64>, Option<u64>) {
        let agent = self
            .m
            .sampled
            .remote
            .iter()
            .filter(|(name, _)| name.starts_with("mtr-agent"));
        let hwm = agent.clone().map(|(_, s)| s.peak_rss_kib).max();
        let anon = agent.map(|(_, s)| s.peak_anon_kib).max();
        (hwm, anon)
    }
}

struct Scale {
    server: Server,
    net: Net,
    uid: u32,
    home: LocalHome,
    mtr: PathBuf,
    /// The workspace's revision when the run started (see [`run::source_revision`]).
    revision: String,
    reps: usize,
    /// How many first syncs to run, each from a cold server (`MTR_BENCH_FIRST_SYNCS`).
    first_syncs: usize,
    scale: f64,
    logs: PathBuf,
    rows: Vec<Row>,
}

fn main() -> ExitCode {
    if !run::wanted("scale") {
        return ExitCode::SUCCESS;
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let layouts: Vec<Layout> = var("MTR_BENCH_LAYOUTS")
        .unwrap_or_else(|| "100k".into())
        .split(',')
        .map(|l| match l.trim() {
            "100k" => Layout::Files100k,
            "1m" => Layout::Empty1m,
            other => panic!("MTR_BENCH_LAYOUTS: unknown layout {other:?}; known: 100k, 1m"),
        })
        .collect();
    let reps: usize = var("MTR_BENCH_REPS").map_or(5, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("MTR_BENCH_REPS={v:?}: expected a number"))
    });
    let first_syncs: usize = var("MTR_BENCH_FIRST_SYNCS").map_or(3, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("MTR_BENCH_FIRST_SYNCS={v:?}: expected a number"))
    });
    let keep = var("MTR_BENCH_KEEP").is_some_and(|v| v != "0");
    let scale: f64 = var("MTR_BENCH_SCALE").map_or(1.0, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("MTR_BENCH_SCALE={v:?}: expected a number"))
    });
    let load_start = load_average();
    let revision = run::source_revision();
    let mtr = match run::mtr_binary(var("MTR_BENCH_MTR").as_deref().map(Path::new)) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("scale: no mtr to measure: {e}");
            return ExitCode::FAILURE;
        }
    };
    let net = Net::setup(&NetOptions::from_env());
    eprintln!("link: {}", net.describe());
    let work = tempfile::Builder::new()
        .prefix("mtr-scale-")
        .tempdir()
        .expect("temp dir");
    // A copy, so that a rebuild of target/release/mtr during the run changes nothing.
    let mtr_copy = work.path().join("mtr");
    fs::copy(&mtr, &mtr_copy).unwrap_or_else(|e| panic!("copy {}: {e}", mtr.display()));
    let server = net.server().start();
    let uid = fs::metadata(server.home()).expect("remote home").uid();
    let home = LocalHome::for_server(&server);
    let rates = Rates::measure(&net, home.ssh(&server));
    eprintln!("link {}", rates.describe());
    let logs = work.path().join("logs");
    fs::create_dir(&logs).unwrap();
    let mut scale = Scale {
        server,
        net,
        uid,
        home,
        mtr: mtr_copy,
        revision,
        reps: reps.max(1),
        first_syncs: first_syncs.max(1),
        scale,
        logs,
        rows: Vec::new(),
    };
    for layout in layouts {
        scale.layout(layout, &work.path().join(layout.name()), keep);
    }

    let table = scale.table(&rates, &load_start);
    println!("\n{table}");
    run::write_json("bench-scale.json", &scale.json(&rates, &load_start));
    if keep {
        println!("kept {} (trees, logs/)", work.keep().display());
    }
    let failed: Vec<&Row> = scale.rows.iter().filter(|r| r.error.is_some()).collect();
    for r in &failed {
        println!(
            "\n--- {} {}: {}",
            r.layout.name(),
            r.what,
            r.error.as_deref().unwrap()
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

impl Scale {
    /// Generates `layout` in `root`, syncs it once, then measures the no-ops against ssh.
    fn layout(&mut self, layout: Layout, root: &Path, keep: bool) {
        eprintln!(
            "\n[{}] generating {} (scale {}) in {}",
            layout.name(),
            layout.describe(),
            self.scale,
            root.display()
        );
        let t = Instant::now();
        layout.generate(root, self.scale);
        eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
        let remote = self.server.mkdir_remote(layout.name());
        fs::create_dir_all(root.join(".mtr")).unwrap();
        fs::write(
            root.join(".mtr/config.yaml"),
            format!(
                "servers:\n  agent:\n    host: {}\n    port: {}\n    user: {}\n    \
                 key_filename: {}\n    remote_dir: {}\n    sync: agent\n",
                self.server.host(),
                self.server.port(),
                self.server.user(),
                self.home.key().display(),
                remote.display()
            ),
        )
        .unwrap();

        let mtr = |args: &[&str]| {
            let mut cmd = Command::new(&self.mtr);
            cmd.args(["--no-tty"])
                .args(args)
                .current_dir(root)
                .env("HOME", self.home.path())
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("XDG_CACHE_HOME")
                .env_remove("SSH_AUTH_SOCK");
            cmd
        };
        for rep in 0..self.first_syncs {
            if rep > 0 {
                run::cold_start(
                    &self.server,
                    self.home.path(),
                    std::slice::from_ref(&remote),
                );
                std::thread::sleep(Duration::from_millis(2500));
            }
            let mut first = self.measure(layout, "first-sync", mtr(&["--sync-only"]));
            if first.error.is_none() {
                eprintln!("  checking the remote tree");
                if let Err(diff) = tree_equal(root, &remote, &[".mtr", ".mtr-sync"]) {
                    eprintln!(
                        "\n!!!!!!!! {} differs after the first sync !!!!!!!!\n{diff}",
                        remote.display()
                    );
                    first.error = Some(format!("MISMATCH after a successful run: {diff}"));
                }
            }
            self.rows.push(first);
        }
        // Past mtr's racy-mtime window for whatever was written last.
        std::thread::sleep(Duration::from_millis(2500));
        for rep in 0..self.reps {
            let mut ssh = self.home.ssh(&self.server);
            ssh.arg("true");
            let mut runs: Vec<(&'static str, Command)> = vec![
                ("ssh host true", ssh),
                ("no-op", mtr(&["--sync-only"])),
                ("mtr true", mtr(&["true"])),
            ];
            runs.rotate_left(rep % 3);
            for (what, cmd) in runs {
                let row = self.measure(layout, what, cmd);
                self.rows.push(row);
            }
        }
        if !keep {
            let _ = fs::remove_dir_all(root);
            let _ = fs::remove_dir_all(&remote);
        }
    }

    fn measure(&self, layout: Layout, what: &'static str, mut cmd: Command) -> Row {
        let log = self
            .logs
            .join(format!("{}-{}", layout.name(), what.replace(' ', "_")));
        let n = self.rows.len();
        let err_path = log.with_extension(format!("{n}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(log.with_extension(format!("{n}.stdout"))).unwrap())
            .stderr(File::create(&err_path).unwrap());
        let m = run::measure(&mut cmd, self.uid, &|| self.net.wire_bytes());
        let error = (m.code != 0).then(|| {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            let lines: Vec<&str> = stderr.lines().collect();
            format!(
                "exit status {}; stderr (last lines):\n{}",
                m.code,
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        });
        let row = Row {
            layout,
            what,
            m,
            error,
        };
        let (agent, _) = row.agent_kib();
        eprintln!(
            "  {:<14} {:>8.3} s {:>10.3} MB  local {:>7.1} MB  agent {:>7} MB  {}",
            what,
            row.m.wall_s,
            row.m.wire_bytes as f64 / MB,
            row.m.local_rss_kib as f64 * 1024.0 / MB,
            mb(agent),
            if row.error.is_some() { "FAILED" } else { "ok" }
        );
        row
    }

    fn rows(&self, layout: Layout, what: &str) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.layout == layout && r.what == what && r.error.is_none())
            .collect()
    }

    fn layouts(&self) -> Vec<Layout> {
        let mut out: Vec<Layout> = Vec::new();
        for r in &self.rows {
            if !out.contains(&r.layout) {
                out.push(r.layout);
            }
        }
        out
    }

    fn table(&self, rates: &Rates, load_start: &str) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "scale: agent engine, scale {}, medians of {} interleaved rounds and of {} cold \
             first syncs; mtr from {}",
            self.scale, self.reps, self.first_syncs, self.revision
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
            rates.describe()
        );
        let _ = writeln!(
            t,
            "load average (1/5/15 min): {load_start} at the start, {} at the end",
            load_average()
        );
        let _ = writeln!(
            t,
            "{:<7} {:<14} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  note",
            "layout",
            "run",
            "wall s",
            "MB wire",
            "mtr RSS",
            "mtr anon",
            "agent RSS",
            "agnt anon",
            "/ssh true"
        );
        for layout in self.layouts() {
            let ssh = median(
                &self
                    .rows(layout, "ssh host true")
                    .iter()
                    .map(|r| r.m.wall_s)
                    .collect::<Vec<_>>(),
            );
            for what in ["first-sync", "no-op", "mtr true", "ssh host true"] {
                let ok = self.rows(layout, what);
                let all = self
                    .rows
                    .iter()
                    .filter(|r| r.layout == layout && r.what == what)
                    .count();
                let note = if ok.len() < all {
                    format!("{}/{all} FAILED", all - ok.len())
                } else {
                    String::new()
                };
                if ok.is_empty() {
                    let _ = writeln!(t, "{:<7} {:<14} {:>9}  {note}", layout.name(), what, "-");
                    continue;
                }
                let wall = median(&ok.iter().map(|r| r.m.wall_s).collect::<Vec<_>>());
                let wire = median(&ok.iter().map(|r| r.m.wire_bytes as f64).collect::<Vec<_>>());
                let is_mtr = what != "ssh host true";
                let local = ok.iter().map(|r| r.m.local_rss_kib).max();
                let local_anon = ok.iter().map(|r| r.m.sampled.local_anon_kib).max();
                let agent = ok.iter().filter_map(|r| r.agent_kib().0).max();
                let agent_anon = ok.iter().filter_map(|r| r.agent_kib().1).max();
                let over_ssh = if what == "first-sync" || ssh == 0.0 {
                    String::new()
                } else {
                    format!("{:.2}", wall / ssh)
                };
                let col = |v: Option<u64>| if is_mtr { mb(v) } else { String::new() };
                let _ = writeln!(
                    t,
                    "{:<7} {:<14} {:>9.3} {:>10.3} {:>9} {:>9} {:>9} {:>9} {:>9}  {note}",
                    layout.name(),
                    what,
                    wall,
                    wire / MB,
                    col(local),
                    col(local_anon),
                    col(agent),
                    col(agent_anon),
                    over_ssh
                );
            }
        }
        t.push_str(
            "RSS in MB (10^6 bytes), the highest of the layout's runs: mtr's peak (wait4; includes\n\
             its binary's pages) and its anonymous part (polled), the remote\n\
             mtr-agent's VmHWM and RssAnon (polled every 10 ms). /ssh true: median wall time over\n\
             the median of `ssh host true` (OpenSSH client, same link, same rounds).\n",
        );
        for (target, met) in self.targets() {
            let _ = writeln!(
                t,
                "target: {target}: {}",
                if met { "met" } else { "MISSED" }
            );
        }
        t
    }

    /// Each target on `100k` with its measured value, and whether it was met.
    fn targets(&self) -> Vec<(String, bool)> {
        let layout = Layout::Files100k;
        if !self.layouts().contains(&layout) || self.scale != 1.0 {
            return Vec::new();
        }
        let mtr_runs: Vec<&Row> = ["first-sync", "no-op", "mtr true"]
            .iter()
            .flat_map(|w| self.rows(layout, w))
            .collect();
        let mut out = Vec::new();
        let bytes = |kib: u64| kib as f64 * 1024.0;
        if let Some(local) = mtr_runs.iter().map(|r| r.m.local_rss_kib).max() {
            let anon = mtr_runs
                .iter()
                .map(|r| r.m.sampled.local_anon_kib)
                .max()
                .unwrap_or(0);
            out.push((
                format!(
                    "mtr peak RSS < 150 MB on 100k: {:.1} MB (anonymous: {:.1} MB)",
                    bytes(local) / MB,
                    bytes(anon) / MB
                ),
                bytes(local) < RSS_TARGET_BYTES,
            ));
        }
        if let Some(agent) = mtr_runs.iter().filter_map(|r| r.agent_kib().0).max() {
            let anon = mtr_runs
                .iter()
                .filter_map(|r| r.agent_kib().1)
                .max()
                .unwrap_or(0);
            out.push((
                format!(
                    "mtr-agent peak RSS < 150 MB on 100k: {:.1} MB (anonymous: {:.1} MB)",
                    bytes(agent) / MB,
                    bytes(anon) / MB
                ),
                bytes(agent) < RSS_TARGET_BYTES,
            ));
        }
        let med = |what: &str| {
            let v: Vec<f64> = self.rows(layout, what).iter().map(|r| r.m.wall_s).collect();
            (!v.is_empty()).then(|| median(&v))
        };
        if let (Some(noop), Some(ssh)) = (med("no-op"), med("ssh host true")) {
            out.push((
                format!(
                    "no-op on 100k < 1.5x ssh host true: {noop:.3} s / {ssh:.3} s = {:.2}x",
                    noop / ssh
                ),
                noop / ssh < NOOP_TARGET_RATIO,
            ));
        }
        out
    }

    fn json(&self, rates: &Rates, load_start: &str) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let (agent, agent_anon) = r.agent_kib();
                json!({
                    "layout": r.layout.name(),
                    "run": r.what,
                    "wall_s": r.m.wall_s,
                    "wire_bytes": r.m.wire_bytes,
                    "local_peak_rss_kib": r.m.local_rss_kib,
                    "local_peak_rss_anon_kib": r.m.sampled.local_anon_kib,
                    "agent_peak_rss_kib": agent,
                    "agent_peak_rss_anon_kib": agent_anon,
                    "local_cpu_s": r.m.local_cpu_s,
                    "error": r.error,
                })
            })
            .collect();
        let targets: Vec<_> = self
            .targets()
            .into_iter()
            .map(|(what, met)| json!({"target": what, "met": met}))
            .collect();
        json!({
            "scale": self.scale,
            "reps": self.reps,
            "first_syncs": self.first_syncs,
            "link": self.net.json(),
            "link_rate": self.net.rate(),
            "link_tbf": self.net.rate().is_some(),
            "link_measured": rates.json(),
            "load_average": {"start": load_start, "end": load_average()},
            "source_revision": self.revision,
            "mtr_version": run::first_line(Command::new(&self.mtr).arg("--version")),
            "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "targets": targets,
            "runs": rows,
        })
    }
}

/// KiB as MB (10^6 bytes) with one decimal, or "-".
fn mb(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 * 1024.0 / MB))
}
