//! `sync: rsync`: the system `rsync` over the system `ssh`, with the agent engine's semantics.
//!
//! - **What is synced** is decided by mtr, not by rsync: the project is walked with the same
//!   [`Filter`] as the agent engine (`.mtr/`, `exclude`, `.gitignore`, `.mtrignore`) and rsync
//!   gets the exact list (`--files-from=- --from0`, no `-r`). No rule is translated into
//!   rsync's filter language, so the remote tree is the agent's by construction.
//! - **Deletions** keep the promise that remote work survives. A state file in the local cache
//!   lists what the last sync sent; a path in it that is gone locally (and not now excluded) is
//!   "risked" (`R /path`) and everything else is protected (`P *`) for `--delete-after`, which
//!   runs only in the directories that lost something. rsync therefore removes only files mtr
//!   sent, never an excluded path, and a deleted directory that holds files of the remote job
//!   loses mtr's files and stays. Sender-side `H` rules keep the excluded children of those
//!   directories from being sent when rsync reads them whole.
//! - **Transport**: `ssh` with the server's port, user, key, known_hosts file (the one mtr's own
//!   SSH uses), host-key policy and connect timeout; a password goes through `sshpass -e`, in
//!   the environment (`SSHPASS`), never on a command line. `remote_dir` is created with a
//!   `mkdir -p` in front of the remote rsync.
//! - **`--get`** is rsync's own download into exactly the resolved local path; symlinks on the
//!   server that point out of the download are skipped (`--safe-links`) with a warning.
//! - rsync's stdout is captured (`--out-format`, `--stats`) for the dry-run plan, progress and
//!   the `-v` summary, so in batch mode mtr's stdout stays empty but for a `--dry-run` plan.

mod output;
mod transport;
mod tree;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use protocol::scan::{Filter, ScanOptions};
use tempfile::TempDir;

use crate::config::Settings;
use crate::get::Download;
use crate::ui::{self, Ui};
use output::{failure, is_rsync_summary, run, Change, Item, Run};
use transport::{display, escape_glob, remote_arg, rsync_remote_path, Tools};
use tree::{
    delete_rules, deletions, file_list, load_state, save_state, scan_dirs, state_path, walk,
};

/// Syncs the project to the server with rsync. With `dry_run`, prints what would change (on
/// stdout) and changes nothing, locally or remotely.
pub fn sync(s: &Settings, ui: &Ui, dry_run: bool) -> Result<()> {
    let started = Instant::now();
    let tools = Tools::find(s, ui)?;
    let target = format!("{}:{}", display(s), s.remote_dir);
    let filter = Filter::new(
        &s.project_root,
        &ScanOptions {
            excludes: s.excludes.clone(),
            respect_gitignore: s.respect_gitignore,
        },
    )
    .with_context(|| format!("invalid exclude rules in {}", s.describe_sources()))?;
    let tree = walk(&s.project_root, &filter)?;
    for w in &tree.warnings {
        ui.warn(&format!("skipped {w}"));
    }

    let state = state_path(s);
    let previous = load_state(&state);
    let deleted = deletions(&previous, &tree, &filter);
    let scan_dirs = scan_dirs(&deleted, &tree);

    let remote_dir = rsync_remote_path(&s.remote_dir);
    let mut cmd = tools.command(s, ui);
    cmd.args(["--links", "--perms", "--times", "--omit-dir-times"])
        .args(["--files-from=-", "--from0"]);
    if dry_run {
        cmd.arg("--dry-run");
    } else {
        // Create remote_dir (and its parents) first: rsync itself makes only the last level.
        cmd.arg(format!(
            "--rsync-path=mkdir -p -- {} && rsync",
            shell_words::quote(&remote_dir)
        ));
    }
    // Held until rsync is done with it.
    let mut rules_file = None;
    if !deleted.is_empty() {
        let mut f = tempfile::Builder::new()
            .prefix("mtr-rsync-rules-")
            .tempfile()
            .context("cannot create a temporary file for rsync's rules")?;
        f.write_all(&delete_rules(&tree, &deleted, &scan_dirs))
            .and_then(|()| f.flush())
            .with_context(|| format!("cannot write {}", f.path().display()))?;
        let mut rule = OsString::from("--filter=merge ");
        rule.push(f.path());
        cmd.arg("--delete-after").arg(rule);
        rules_file = Some(f);
    }
    let mut source = s.project_root.clone().into_os_string();
    source.push("/");
    cmd.arg("--").arg(source).arg(remote_arg(
        s,
        &format!("{}/", remote_dir.trim_end_matches('/')),
    ));

    let run = run(cmd, file_list(&tree, &scan_dirs), ui)?;
    drop(rules_file);
    if !run.succeeded() {
        return Err(failure(
            s,
            &tools.known_hosts,
            &run,
            &format!("rsync to {target} failed"),
        ));
    }
    for line in &run.stderr_lines {
        if let Some(dir) = line.strip_prefix("cannot delete non-empty directory: ") {
            log::info!("kept {dir} on {target}: it holds files mtr did not send");
        } else if line.starts_with("file has vanished: ") {
            ui.warn(&format!(
                "{line} (it changed while rsync ran; run mtr again to sync it)"
            ));
        } else if !is_rsync_summary(line) {
            ui.warn(&format!("rsync: {line}"));
        }
    }
    let changes: Vec<&Item> = run.items.iter().filter(|i| i.path != ".").collect();
    if dry_run {
        print_plan(&format!("sync plan for {target}"), &changes);
        return Ok(());
    }
    if let Err(e) = save_state(&state, &tree) {
        ui.warn(&format!(
            "{e:#}; files deleted locally before the next sync will stay on the server"
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    let wire = ui::bytes(run.stats.sent + run.stats.received);
    ui.info(&if changes.is_empty() {
        format!(
            "up to date: {target} ({} entries, {wire} on the wire, {secs:.2}s, rsync)",
            tree.entries.len()
        )
    } else {
        format!(
            "synced {} change(s) to {target} with rsync: {} of file data sent, {wire} on the wire, {secs:.2}s",
            changes.len(),
            ui::bytes(run.stats.literal),
        )
    });
    Ok(())
}

/// Downloads `d.remote` to exactly `d.local` with rsync: a file becomes that file, a directory
/// that directory (merged into it when it exists). With `dry_run`, prints what would change.
pub fn get(s: &Settings, ui: &Ui, d: &Download, dry_run: bool) -> Result<()> {
    let started = Instant::now();
    let tools = Tools::find(s, ui)?;
    let source = format!("{}:{}", display(s), d.remote);
    let local = &d.local;
    let existing = fs::symlink_metadata(local).ok().map(|m| m.is_dir());
    let (dest, _scratch) = download_dest(local, dry_run)?;

    // rsync must be told whether the source is a directory (`src/` mirrors its contents) or a
    // file; try the likelier shape first and switch when rsync says it is the other one.
    let mut shape = if existing == Some(true) {
        Shape::Dir
    } else {
        Shape::File
    };
    let run = loop {
        let run = download(s, ui, &tools, &d.remote, &dest, shape, dry_run)?;
        match (shape, other_shape(&run, shape)) {
            (_, false) => break run,
            (Shape::File, true) if existing == Some(false) => bail!(
                "--get {}: it is a directory on {}, but {} exists and is not one; remove it or pass --to another path",
                d.remote,
                display(s),
                local.display()
            ),
            (Shape::File, true) => shape = Shape::Dir,
            (Shape::Dir, true) => bail!(
                "--get {}: it is a file on {}, but {} is a directory; pass --to a file path (or --to {}/)",
                d.remote,
                display(s),
                local.display(),
                local.display()
            ),
        }
    };
    if !run.succeeded() {
        if run.stderr_lines.iter().any(|l| is_missing_source(l)) {
            bail!(
                "--get {}: no such file or directory on {}",
                d.remote,
                display(s)
            );
        }
        return Err(failure(
            s,
            &tools.known_hosts,
            &run,
            &format!("downloading {source} to {} failed", local.display()),
        ));
    }
    for note in &run.notes {
        if let Some(link) = note.strip_prefix("ignoring unsafe symlink ") {
            ui.warn(&format!(
                "not downloaded: symlink {link} points outside {} (links that leave the download are refused)",
                local.display()
            ));
        } else if note.starts_with("skipping non-regular file") {
            ui.warn(&format!("not downloaded: {note}"));
        }
    }
    for line in run.stderr_lines.iter().filter(|l| !is_rsync_summary(l)) {
        ui.warn(&format!("rsync: {line}"));
    }
    let changes: Vec<Item> = run
        .items
        .iter()
        .filter(|i| i.path != ".")
        .map(|i| Item {
            change: i.change,
            path: match shape {
                Shape::File => local.display().to_string(),
                Shape::Dir => local.join(&i.path).display().to_string(),
            },
        })
        .collect();
    let changes: Vec<&Item> = changes.iter().collect();
    if dry_run {
        print_plan(
            &format!("get plan for {source} -> {}", local.display()),
            &changes,
        );
        return Ok(());
    }
    ui.info(&format!(
        "downloaded {source} to {}: {} change(s), {} of file data, {} on the wire, {:.2}s",
        local.display(),
        changes.len(),
        ui::bytes(run.stats.literal),
        ui::bytes(run.stats.sent + run.stats.received),
        started.elapsed().as_secs_f64(),
    ));
    Ok(())
}

/// Where rsync writes a download: `local`, after creating its parents. A dry run creates
/// nothing: when the parents are missing it plans against an empty temporary directory (kept
/// alive by the returned guard), where everything is new, as the real run would find it.
fn download_dest(local: &Path, dry_run: bool) -> Result<(PathBuf, Option<TempDir>)> {
    let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok((local.to_path_buf(), None));
    };
    if !dry_run {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {} for --get", parent.display()))?;
    } else if !parent.is_dir() {
        let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
        let name = local.file_name().unwrap_or(OsStr::new("download"));
        return Ok((scratch.path().join(name), Some(scratch)));
    }
    Ok((local.to_path_buf(), None))
}

/// What `--get` asks rsync to copy: a directory's contents or a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    File,
    Dir,
}

/// One download attempt with the given shape.
fn download(
    s: &Settings,
    ui: &Ui,
    tools: &Tools,
    remote: &str,
    dest: &Path,
    shape: Shape,
    dry_run: bool,
) -> Result<Run> {
    let remote = escape_glob(&rsync_remote_path(remote));
    let mut cmd = tools.command(s, ui);
    // `--info=name1` makes rsync say which unsafe symlinks it skipped.
    cmd.args(["--perms", "--times", "--info=name1"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let mut dest = dest.as_os_str().to_owned();
    let source = match shape {
        // --copy-links: a file reached through a symlink arrives as the file (never as a link
        // that would dangle here); a directory, even through a link, is "skipping directory".
        Shape::File => {
            cmd.arg("--copy-links");
            remote
        }
        Shape::Dir => {
            cmd.args(["--recursive", "--links", "--safe-links"]);
            dest.push("/");
            format!("{}/", remote.trim_end_matches('/'))
        }
    };
    cmd.arg("--").arg(remote_arg(s, &source)).arg(dest);
    run(cmd, Vec::new(), ui)
}

/// Whether a download attempt found the source to be of the other shape.
fn other_shape(run: &Run, shape: Shape) -> bool {
    match shape {
        Shape::File => run
            .notes
            .iter()
            .any(|n| n.starts_with("skipping directory ")),
        Shape::Dir => {
            !run.succeeded()
                && run
                    .stderr_lines
                    .iter()
                    .any(|l| l.contains("Not a directory (20)"))
        }
    }
}

/// rsync's complaint that the source does not exist.
fn is_missing_source(line: &str) -> bool {
    (line.contains("link_stat") || line.contains("change_dir"))
        && line.contains("No such file or directory")
        && !line.contains("[Receiver]")
}

/// Prints the plan (stdout: it is what `--dry-run` asks for), in the agent engine's format.
fn print_plan(title: &str, changes: &[&Item]) {
    println!("{title}: {} change(s)", changes.len());
    for item in changes {
        match item.change {
            Change::Add => println!("  + {}", item.path),
            Change::Update => println!("  ~ {}", item.path),
            Change::Touch => println!("  . {} (metadata)", item.path),
            Change::Delete => println!("  - {}", item.path),
        }
    }
}
