//! `mtr --sync-only` and the sync before a command: connect, start the agent, run the
//! engine's source role against it, and tell the user what crossed the wire. `mtr --get`
//! with the agent engine runs the same engine the other way round ([`get`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use protocol::chunker::Chunker;
use protocol::get::{ReceiveConfig, Received, Request};
use protocol::scan::{Filter, ScanOptions, Segment};
use protocol::source::{self, Change, LocalTree, Report, SourceConfig};

use crate::agent_install;
use crate::config::Settings;
use crate::embedded;
use crate::exit::UsageError;
use crate::get::Download;
use crate::ssh::{Ssh, SshOptions};
use crate::ui::{self, SyncProgress, Ui};

/// What one sync did, with the bytes that crossed the wire after the handshake.
pub struct Outcome {
    pub report: Report,
    pub wire_sent: u64,
    pub wire_received: u64,
}

/// SSH options for the configured server.
pub fn ssh_options(s: &Settings, ui: &Ui) -> SshOptions {
    SshOptions {
        host: s.host.clone(),
        port: s.port,
        user: s.user.clone(),
        key_filename: s.key_filename.clone(),
        password: s.password.clone(),
        host_key_policy: s.strict_host_key_checking,
        connect_timeout: s.connect_timeout,
        interactive: ui.interactive,
        known_hosts: home().join(".ssh/known_hosts"),
    }
}

fn home() -> PathBuf {
    dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"))
}

fn cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(|| home().join(".cache"))
        .join("mtr")
}

fn key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex()[..32].to_string()
}

/// The local half of a sync, started before the connection is made: the scan of the project
/// (walk, stat, hashing what changed) needs no peer, so it runs while mtr connects and the
/// agent starts. Its progress shows once the connection is up (a host key prompt may need
/// the terminal before that).
pub struct LocalScan {
    filter: Arc<Filter>,
    index_path: PathBuf,
    progress: SyncProgress,
    scan: std::thread::JoinHandle<protocol::Result<LocalTree>>,
    /// The segments of long changed files the scan finds, for the agent to start building
    /// them ([`source::Prefills`]); ends when the scan does. `None` in a dry run.
    segments: Option<Receiver<Segment>>,
    started: Instant,
}

/// Starts scanning the project for [`sync`]. Invalid exclude rules are an error here, before
/// any connection.
pub fn start_scan(s: &Settings, ui: &Ui, dry_run: bool) -> Result<LocalScan> {
    let filter = Filter::new(
        &s.project_root,
        &ScanOptions {
            excludes: s.excludes.clone(),
            respect_gitignore: s.respect_gitignore,
        },
    )
    .with_context(|| format!("invalid exclude rules in {}", s.describe_sources()))?;
    let filter = Arc::new(filter);
    let root = s.project_root.clone();
    let index_path = cache_dir()
        .join("index")
        .join(key(&[&root.display().to_string()]));
    let progress = ui.progress_hidden();
    let started = Instant::now();
    let (found, segments) = if dry_run {
        (None, None)
    } else {
        let (tx, rx) = std::sync::mpsc::channel::<Segment>();
        (Some(tx), Some(rx))
    };
    let scan = {
        let (filter, index_path, progress) = (filter.clone(), index_path.clone(), progress.clone());
        std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || {
                let cfg = SourceConfig {
                    root: &root,
                    filter: &filter,
                    chunker: Chunker::default(),
                    index_path,
                    state_path: PathBuf::new(),
                    dry_run,
                    pipeline: Default::default(),
                };
                let early = found.map(|tx| move |seg| drop(tx.send(seg)));
                let early = early.as_ref().map(|f| f as &(dyn Fn(Segment) + Sync));
                source::scan_local_early(&cfg, &progress, early)
            })
            .context("cannot start the scan")?
    };
    Ok(LocalScan {
        filter,
        index_path,
        progress,
        scan,
        segments,
        started,
    })
}

/// Sync the project to the server over an open connection; `local` is the project's scan,
/// started by [`start_scan`] with the same settings.
pub fn sync(ssh: &Ssh, s: &Settings, ui: &Ui, dry_run: bool, local: LocalScan) -> Result<Outcome> {
    let target = format!("{}:{}", ssh.display(), s.remote_dir);
    let root = s.project_root.display().to_string();
    let LocalScan {
        filter,
        index_path,
        progress,
        scan,
        segments,
        started,
    } = local;
    progress.show(ui);
    let mut cfg = SourceConfig {
        root: &s.project_root,
        filter: &filter,
        chunker: Chunker::default(),
        index_path,
        // Known once the agent says where it runs.
        state_path: PathBuf::new(),
        dry_run,
        pipeline: Default::default(),
    };
    // The agent starts while the scan goes on (a no-op sync of a large tree then costs
    // about the longer of the two, not their sum).
    let mut agent = agent_install::start(ssh, &s.remote_dir, s.watch);
    let wire0 = agent.as_ref().map_or((0, 0), |a| {
        (a.writer.bytes_sent(), a.reader.bytes_received())
    });
    // While the scan reads the long files that changed, the agent starts building them from
    // what it holds, and the chunks it lacks travel (their segments arrive as the scan finds
    // them; the loop ends with it). What it lacks once the scan is over goes with the batches,
    // which show their progress.
    let mut prefills = source::Prefills::default();
    let prefilled = match (&mut agent, segments) {
        (Ok(a), Some(found)) => prefills.send_all(
            &mut a.reader,
            &mut a.writer,
            &s.project_root,
            |wait| {
                if wait {
                    found.recv().ok()
                } else {
                    found.try_recv().ok()
                }
            },
            &|| !scan.is_finished(),
        ),
        _ => Ok(()),
    };
    let local = scan
        .join()
        .unwrap_or_else(|_| Err(protocol::Error::Protocol("the scan panicked".into())));
    let mut agent = agent.map_err(|e| refused(e, &target))?;
    let local = local
        .map_err(anyhow::Error::new)
        .with_context(|| format!("cannot scan {}", s.project_root.display()))?;
    cfg.state_path = cache_dir()
        .join("state")
        .join(key(&[&root, ssh.display(), &agent.ack.root]));
    let (sent0, recv0) = wire0;
    let result = prefilled.and_then(|()| {
        source::sync_scanned(
            &mut agent.reader,
            &mut agent.writer,
            &agent.ack,
            &cfg,
            &local,
            &prefills,
            &progress,
        )
    });
    progress.finish();
    // Freeing a large tree's maps takes a while (~20 ms per 100k files) that nobody waits for.
    std::thread::spawn(move || drop(local));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let doing = format!("syncing to {}", s.remote_dir);
            if let Some(lost) = connection_lost(ssh, &e, &doing, "finish the sync") {
                return Err(lost);
            }
            // The agent's stderr says why a broken stream broke; its own error (`Remote`) is
            // complete, and the rest are ours.
            let detail = agent.abort();
            let detail = match e {
                protocol::Error::Transport(_) | protocol::Error::Protocol(_) => detail,
                _ => String::new(),
            };
            return Err(anyhow::Error::new(e)).context(format!("sync to {target} failed{detail}"));
        }
    };
    let outcome = Outcome {
        wire_sent: agent.writer.bytes_sent() - sent0,
        wire_received: agent.reader.bytes_received() - recv0,
        report,
    };
    source::bye(&mut agent.writer).ok();
    agent
        .finish()
        .with_context(|| format!("sync to {target}"))?;
    log::debug!("mtr-agent exited");
    for w in &outcome.report.warnings {
        ui.warn(&format!("skipped {w}"));
    }
    if dry_run {
        print_plan(&format!("sync plan for {target}"), &outcome.report.plan);
    } else {
        ui.info(&summary(&outcome, started.elapsed().as_secs_f64(), &target));
    }
    Ok(outcome)
}

/// The error for an agent that refused the session with an error of its own
/// ([`protocol::Error::Remote`]: another sync holds the lock, `remote_dir` cannot be made):
/// that error and where, in one line. What `agent_install` wraps it in (the agent's path and
/// its stderr, which repeats the error) goes to the debug log. Other errors pass as they are.
fn refused(e: anyhow::Error, target: &str) -> anyhow::Error {
    let remote = e
        .chain()
        .find_map(|c| match c.downcast_ref::<protocol::Error>() {
            Some(protocol::Error::Remote(m)) => Some(m.clone()),
            _ => None,
        });
    match remote {
        Some(message) => {
            log::debug!("{e:#}");
            anyhow!("sync to {target} failed: {message}")
        }
        None => e,
    }
}

/// When a session's stream failed because the SSH connection under it did ([`Ssh::lost`]):
/// the error that says so plainly, naming the host, and what to do (`again`). libssh2's
/// wording ("Failure while draining incoming flow") goes to the log (`-v`), not the line.
fn connection_lost(
    ssh: &Ssh,
    e: &protocol::Error,
    doing: &str,
    again: &str,
) -> Option<anyhow::Error> {
    if !matches!(e, protocol::Error::Transport(_)) {
        return None;
    }
    let cause = ssh.lost()?;
    let host = ssh.display();
    log::info!("the connection to {host} failed while {doing}: {e} (libssh2: {cause})");
    Some(anyhow!(
        "the connection to {host} was lost while {doing}; run mtr again to {again}"
    ))
}

/// Downloads `d.remote` to `d.local` with the agent engine: `mtr-agent send` is the source
/// of the remote path, this process the sink ([`protocol::get`]) with the download policy: it
/// writes only inside `d.local` (an existing symlink there is written through, like `cp`),
/// builds files in a hidden sibling of it that is removed at the end, keeps what it wrote in
/// `<cache>/mtr/get/<key>/` (so a later get moves only what changed and deletes only files it
/// wrote, never local files it did not, nor ones changed here since), and reuses the chunks
/// of files already at the destination on first contact. A dry run prints what would change
/// here and writes nothing.
pub fn get(ssh: &Ssh, _s: &Settings, ui: &Ui, d: &Download, dry_run: bool) -> Result<()> {
    let started = Instant::now();
    let source = format!("{}:{}", ssh.display(), d.remote);
    let dest = destination(&d.local, dry_run)?;
    let name = protocol::get::name_of(&dest).map_err(|e| UsageError(e.to_string()))?;
    let request = Request {
        path: d.remote.clone(),
        name,
        dry_run,
    };
    let failed = || format!("cannot download {source} to {}", dest.display());
    let mut agent = agent_install::start_sender(ssh, &request).with_context(failed)?;
    let cfg = ReceiveConfig {
        dest: dest.clone(),
        state_dir: cache_dir()
            .join("get")
            .join(key(&[&dest.to_string_lossy()])),
        dry_run,
    };
    let (sent0, recv0) = (agent.writer.bytes_sent(), agent.reader.bytes_received());
    let progress = ui.progress();
    let mut warnings = Vec::new();
    let result = protocol::get::receive(
        &mut agent.reader,
        &mut agent.writer,
        &cfg,
        embedded::VERSION,
        &progress,
        &mut |w| warnings.push(w),
    );
    progress.finish();
    for w in &warnings {
        ui.warn(w);
    }
    let received = match result {
        Ok(r) => r,
        Err(e) => {
            let doing = format!("downloading {} to {}", d.remote, dest.display());
            if let Some(lost) = connection_lost(ssh, &e, &doing, "finish the download") {
                return Err(lost);
            }
            // The agent's stderr says why a broken stream broke; other errors are complete.
            let detail = agent.abort();
            let detail = match e {
                protocol::Error::Transport(_) | protocol::Error::Protocol(_) => detail,
                _ => String::new(),
            };
            return Err(anyhow::Error::new(e)).context(format!("{}{detail}", failed()));
        }
    };
    let wire = agent.writer.bytes_sent() - sent0 + agent.reader.bytes_received() - recv0;
    agent.finish().with_context(failed)?;
    if dry_run {
        let header = format!("get plan for {source} to {}", dest.display());
        print_plan(&header, &received.plan);
    } else {
        let secs = started.elapsed().as_secs_f64();
        ui.info(&get_summary(&received, wire, secs, &source, &dest));
    }
    Ok(())
}

/// The path the download becomes, symlinks resolved: an existing `local` as it resolves (a
/// link to a directory kept elsewhere is written through), else `local` in its parent, which
/// is created unless this is a dry run.
fn destination(local: &Path, dry_run: bool) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(local) {
        return Ok(real);
    }
    let (Some(parent), Some(name)) = (local.parent(), local.file_name()) else {
        return Err(UsageError(format!("cannot download to {}", local.display())).into());
    };
    if !dry_run {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(std::fs::canonicalize(parent)
        .map(|p| p.join(name))
        .unwrap_or_else(|_| local.to_path_buf()))
}

fn get_summary(r: &Received, wire: u64, secs: f64, source: &str, dest: &Path) -> String {
    if r.changes == 0 {
        return format!(
            "up to date: {} from {source} ({} entries, {} on the wire, {secs:.2}s)",
            dest.display(),
            r.entries,
            ui::bytes(wire)
        );
    }
    format!(
        "downloaded {} change(s) from {source} to {}: {} of file data received as {} ({} reused locally), {} on the wire, {secs:.2}s",
        r.changes,
        dest.display(),
        ui::bytes(r.stats.bytes_received),
        ui::bytes(r.payload_bytes),
        ui::bytes(r.stats.bytes_copied_locally),
        ui::bytes(wire),
    )
}

/// Prints a plan on stdout: what `--dry-run` was asked for.
fn print_plan(header: &str, plan: &[Change]) {
    println!("{header}: {} change(s)", plan.len());
    for c in plan {
        match c {
            Change::Add(p) => println!("  + {}", shown(p)),
            Change::Update(p) => println!("  ~ {}", shown(p)),
            Change::Touch(p) => println!("  . {} (metadata)", shown(p)),
            Change::Delete(p) => println!("  - {}", shown(p)),
        }
    }
}

/// A path for the terminal: control characters (which a server could send in a name) escaped.
fn shown(p: &str) -> Cow<'_, str> {
    if p.chars().any(char::is_control) {
        Cow::Owned(p.escape_debug().to_string())
    } else {
        Cow::Borrowed(p)
    }
}

fn summary(o: &Outcome, secs: f64, target: &str) -> String {
    let r = &o.report;
    if r.no_op {
        return format!(
            "up to date: {target} ({} entries, {} on the wire, {secs:.2}s)",
            r.entries,
            ui::bytes(o.wire_sent + o.wire_received)
        );
    }
    format!(
        "synced {} change(s) to {target}: {} of file data sent as {} ({} reused on the remote), {} on the wire, {secs:.2}s",
        r.plan.len(),
        ui::bytes(r.raw_bytes_sent),
        ui::bytes(r.payload_bytes_sent),
        ui::bytes(r.sink.bytes_copied_locally),
        ui::bytes(o.wire_sent + o.wire_received),
    )
}
