//! `mtr --sync-only` and the sync before a command: connect, start the agent, run the
//! engine's source role against it, and tell the user what crossed the wire.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use protocol::chunker::Chunker;
use protocol::scan::{Filter, ScanOptions};
use protocol::source::{self, Change, Report, SourceConfig};

use crate::agent_install;
use crate::config::Settings;
use crate::ssh::{Ssh, SshOptions};
use crate::ui::{self, Ui};

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

/// Sync the project to the server over an open connection.
pub fn sync(ssh: &Ssh, s: &Settings, ui: &Ui, dry_run: bool) -> Result<Outcome> {
    let started = Instant::now();
    let target = format!("{}:{}", ssh.display(), s.remote_dir);
    let mut agent = agent_install::start(ssh, &s.remote_dir)?;
    let filter = Filter::new(
        &s.project_root,
        &ScanOptions {
            excludes: s.excludes.clone(),
            respect_gitignore: s.respect_gitignore,
        },
    )
    .with_context(|| format!("invalid exclude rules in {}", s.describe_sources()))?;
    let root = s.project_root.display().to_string();
    let cfg = SourceConfig {
        root: &s.project_root,
        filter: &filter,
        chunker: Chunker::default(),
        index_path: cache_dir().join("index").join(key(&[&root])),
        state_path: cache_dir()
            .join("state")
            .join(key(&[&root, ssh.display(), &agent.ack.root])),
        dry_run,
    };
    let (sent0, recv0) = (agent.writer.bytes_sent(), agent.reader.bytes_received());
    let progress = ui.progress();
    let result = source::sync(
        &mut agent.reader,
        &mut agent.writer,
        &agent.ack,
        &cfg,
        &progress,
    );
    progress.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let detail = agent.abort();
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
    for w in &outcome.report.warnings {
        ui.warn(&format!("skipped {w}"));
    }
    if dry_run {
        print_plan(&outcome.report, &target);
    } else {
        ui.info(&summary(&outcome, started.elapsed().as_secs_f64(), &target));
    }
    Ok(outcome)
}

/// Downloads `d.remote` to `d.local` with the agent engine (the agent is the source, mtr the
/// sink). (Being built: issue 4.)
pub fn get(
    _ssh: &Ssh,
    _s: &Settings,
    _ui: &Ui,
    _d: &crate::get::Download,
    _dry_run: bool,
) -> Result<()> {
    anyhow::bail!(crate::exit::UsageError(
        "--get is not implemented yet in this build".into()
    ))
}

fn print_plan(r: &Report, target: &str) {
    // The plan is what --dry-run was asked for: it goes to stdout.
    println!("sync plan for {target}: {} change(s)", r.plan.len());
    for c in &r.plan {
        match c {
            Change::Add(p) => println!("  + {p}"),
            Change::Update(p) => println!("  ~ {p}"),
            Change::Touch(p) => println!("  . {p} (metadata)"),
            Change::Delete(p) => println!("  - {p}"),
        }
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
