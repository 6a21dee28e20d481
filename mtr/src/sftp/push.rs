//! `sync: sftp`, upload direction: bring `remote_dir` up to date with the local tree.
//!
//! The local tree comes from `protocol::scan` (the same walk and exclusion rules as the agent
//! engine, and the same chunk index, so unchanged files are not read again). What mtr left on
//! the server is recorded in `<remote_dir>/.mtr-sync/sftp/state` (a `SyncState`: the tree as
//! uploaded, with sizes, mtimes, modes and content digests), kept on the server so every
//! laptop syncing there, and a wiped or re-created `remote_dir`, see the truth. A file is sent
//! when it is new or its size, mtime or content differs from that record; when only its mtime
//! or mode changed (same content digest), only those are set.
//!
//! - Deletes come first, children before parents, and touch only paths in the record (remote
//!   files the job created survive, and a deleted directory that holds some stays); excluded
//!   paths are dropped from the record, never deleted.
//! - Then creates and updates, parents first. A file is written under
//!   `.mtr-sync/sftp/staging/`, gets its mode and mtime, and is renamed into place
//!   (`posix-rename@openssh.com`): a remote file is always its old or its new version. Stale
//!   temporaries of an interrupted run are removed after the next sync that uploads.
//! - Every directory a change goes through is checked once with `lstat`: nothing is written
//!   or deleted through a symlink on the server. A path mtr has no record of, but that holds
//!   the same size and mtime as the local file, is adopted instead of sent again (a lost
//!   record, or a tree another engine synced).
//! - The record is saved even when the sync fails half-way, so what was uploaded stays
//!   mtr's to delete later.
//!
//! Not covered: a synced file changed on the server (not locally) is not noticed until it
//! changes locally (checking would cost a round trip per file); SFTP version 3 carries whole
//! seconds, so remote mtimes lose their fraction.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use protocol::chunker::Chunker;
use protocol::index;
use protocol::manifest::{self, Manifest};
use protocol::paths::STATE_DIR;
use protocol::scan::{self, Filter, Progress, ScanOptions};
use protocol::source::Change;
use protocol::wire::{EntryKind, SourceIndex, SyncState, PROTOCOL_VERSION};

use super::{is_not_found, mtime_secs, sftp_path, Meta, Remote};
use crate::config::Settings;
use crate::ssh::Ssh;
use crate::ui::{self, Ui};

/// mtr's directory for this engine, under `<remote_dir>/.mtr-sync/`.
const ENGINE_DIR: &str = "sftp";
/// The record of what mtr uploaded, in [`ENGINE_DIR`].
const STATE_FILE: &str = "state";
/// Where files are written before they are renamed into place, in [`ENGINE_DIR`].
const STAGING: &str = "staging";
/// Largest record accepted from the server.
const STATE_LIMIT: u64 = 1 << 30;

/// Syncs the project to the server over SFTP; with `dry_run`, prints the plan on stdout and
/// changes nothing.
pub fn sync(ssh: &Ssh, s: &Settings, ui: &Ui, dry_run: bool) -> Result<()> {
    let started = Instant::now();
    let target = format!("{}:{}", ssh.display(), s.remote_dir);
    let filter = Filter::new(
        &s.project_root,
        &ScanOptions {
            excludes: s.excludes.clone(),
            respect_gitignore: s.respect_gitignore,
        },
    )
    .with_context(|| format!("invalid exclude rules in {}", s.describe_sources()))?;
    let mut remote = Remote::open(ssh)?;
    let root = sftp_path(&s.remote_dir);
    let cache = cache_dir();
    let state_copy = cache.join("sftp").join(key(&[
        &s.project_root.display().to_string(),
        ssh.display(),
        &s.remote_dir,
    ]));
    let base = read_state(&remote, &root, &state_copy)
        .with_context(|| format!("sync to {target} failed"))?;

    let progress = ui.progress();
    let index_path = cache
        .join("index")
        .join(key(&[&s.project_root.display().to_string()]));
    let tree = scan::scan(
        &s.project_root,
        &filter,
        || index::load::<SourceIndex>(&index_path),
        &Chunker::default(),
        &progress,
    )
    .map_err(|e| {
        progress.finish();
        anyhow!(e).context(format!("cannot scan {}", s.project_root.display()))
    })?;
    if !dry_run && tree.index_outdated {
        index::save(&index_path, &tree.index())
            .with_context(|| format!("cannot save the local index {}", index_path.display()))?;
    }
    for w in &tree.warnings {
        ui.warn(&format!("skipped {w}"));
    }

    let base = base.unwrap_or_default();
    let d = manifest::diff(&base, &tree.entries, &HashSet::new(), |p, is_dir| {
        filter.excluded(p, is_dir)
    });
    let plan = plan(&base, &d);
    if dry_run {
        progress.finish();
        print_plan(&plan, &target);
        return Ok(());
    }
    if d.is_empty() {
        progress.finish();
        ui.info(&format!(
            "up to date: {target} ({} entries, sftp, {:.2}s)",
            tree.entries.len(),
            started.elapsed().as_secs_f64()
        ));
        return Ok(());
    }

    let total: u64 = d
        .upserts
        .iter()
        .filter(|(_, content)| *content)
        .filter_map(|(p, _)| match &tree.entries[p] {
            EntryKind::File { size, .. } => Some(*size),
            _ => None,
        })
        .sum();
    progress.phase("send", total);
    let mut apply = Apply {
        remote: &mut remote,
        root: root.clone(),
        local: &s.project_root,
        dirs: HashMap::new(),
        owned: base.clone(),
        staging: None,
        temps: 0,
        stats: Stats::default(),
        warnings: Vec::new(),
        progress: &progress,
    };
    let result = apply.run(&base, &tree.entries, &d);
    progress.finish();
    for w in &apply.warnings {
        ui.warn(&format!("skipped {w}"));
    }
    // Saved whatever happened: what was uploaded is mtr's, to delete later.
    let saved = if apply.owned != base {
        apply.save_state(&state_copy)
    } else {
        Ok(())
    };
    result.with_context(|| format!("sync to {target} failed"))?;
    saved.with_context(|| format!("sync to {target} failed"))?;
    let (stats, staged) = (apply.stats, apply.staging);
    if let Some(staging) = staged {
        clean_staging(&remote, &staging);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "synced {} change(s) to {target} over sftp: {} file(s), {} uploaded",
        plan.len(),
        stats.files,
        ui::bytes(stats.bytes)
    );
    if stats.bytes >= 10_000_000 {
        let rate = stats.bytes as f64 / secs.max(1e-3);
        summary.push_str(&format!(" ({}/s)", ui::bytes(rate as u64)));
    }
    if stats.adopted > 0 {
        summary.push_str(&format!(", {} already there", stats.adopted));
    }
    if stats.deleted > 0 {
        summary.push_str(&format!(", {} deleted", stats.deleted));
    }
    ui.info(&format!("{summary}, {secs:.2}s"));
    Ok(())
}

/// The changes of a diff, as the agent engine reports them.
fn plan(base: &Manifest, d: &manifest::Diff) -> Vec<Change> {
    let mut plan: Vec<Change> = d
        .upserts
        .iter()
        .map(|(p, content)| match (base.contains_key(p), content) {
            (false, _) => Change::Add(p.clone()),
            (true, true) => Change::Update(p.clone()),
            (true, false) => Change::Touch(p.clone()),
        })
        .collect();
    plan.extend(d.deletes.iter().map(|p| Change::Delete(p.clone())));
    plan
}

/// The `--dry-run` plan on stdout, in the agent engine's format.
fn print_plan(plan: &[Change], target: &str) {
    println!("sync plan for {target}: {} change(s)", plan.len());
    for c in plan {
        match c {
            Change::Add(p) => println!("  + {p}"),
            Change::Update(p) => println!("  ~ {p}"),
            Change::Touch(p) => println!("  . {p} (metadata)"),
            Change::Delete(p) => println!("  - {p}"),
        }
    }
}

fn cache_dir() -> PathBuf {
    let home = || dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    dirs::cache_dir()
        .unwrap_or_else(|| home().join(".cache"))
        .join("mtr")
}

/// The cache key of `sync.rs`, so both engines share one chunk index per local tree.
fn key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex()[..32].to_string()
}

fn engine_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join(ENGINE_DIR)
}

/// The record on the server, through a local copy (`protocol::index` owns the format). `None`
/// when there is none, or one of another protocol version (then nothing is deleted, and files
/// already there are adopted by size and mtime).
fn read_state(remote: &Remote, root: &Path, copy: &Path) -> Result<Option<Manifest>> {
    let path = engine_dir(root).join(STATE_FILE);
    let Some(bytes) = remote.read_small(&path, STATE_LIMIT)? else {
        return Ok(None);
    };
    write_local(copy, &bytes)?;
    let state: Option<SyncState> = index::load(copy);
    match state {
        Some(s) if s.protocol == PROTOCOL_VERSION => Ok(Some(manifest::from_entries(s.entries))),
        Some(s) => {
            log::info!(
                "{} is of protocol {}, not {PROTOCOL_VERSION}: starting from scratch",
                remote.show(&path),
                s.protocol
            );
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Replaces the local file `path` with `bytes` (temp file and rename).
fn write_local(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".state.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Removes what is left in the staging directory (temporaries of interrupted runs).
fn clean_staging(remote: &Remote, staging: &Path) {
    let names = match remote.list(staging) {
        Ok(names) => names,
        Err(e) => {
            log::debug!("{e:#}");
            return;
        }
    };
    for (name, _) in names {
        if name == Path::new(".") || name == Path::new("..") {
            continue;
        }
        let path = staging.join(&name);
        match remote.unlink(&path) {
            Ok(()) => log::debug!("removed the stale temporary {}", remote.show(&path)),
            Err(e) => log::debug!("cannot remove {}: {e}", remote.show(&path)),
        }
    }
}

/// What a directory on the server is, as far as this sync has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dir {
    /// A real directory that was there.
    Existing,
    /// Created by this sync: holds only what this sync put there.
    Created,
    /// Nothing there.
    Missing,
    /// Cannot be written into: a symlink, or not a directory.
    Unusable(String),
}

#[derive(Debug, Default)]
struct Stats {
    files: u64,
    bytes: u64,
    adopted: u64,
    deleted: u64,
}

/// One sync's changes applied to the server.
struct Apply<'r, 'a> {
    remote: &'r mut Remote<'a>,
    /// `remote_dir`, as an SFTP path.
    root: PathBuf,
    /// The local project root.
    local: &'r Path,
    /// Directories checked (or created) so far, by relative path ("" is the root).
    dirs: HashMap<String, Dir>,
    /// The record being updated as changes succeed.
    owned: Manifest,
    /// The staging directory, once created.
    staging: Option<PathBuf>,
    temps: u64,
    stats: Stats,
    /// Paths left alone, with the reason.
    warnings: Vec<String>,
    progress: &'r dyn Progress,
}

impl Apply<'_, '_> {
    fn run(&mut self, base: &Manifest, current: &Manifest, d: &manifest::Diff) -> Result<()> {
        let root = match self.remote.mkdir_all(&self.root)? {
            true => Dir::Created,
            false => Dir::Existing,
        };
        self.dirs.insert(String::new(), root);
        for path in &d.forgets {
            self.owned.remove(path);
        }
        for path in &d.deletes {
            self.delete(path, &base[path])?;
        }
        for (path, content) in &d.upserts {
            let kind = &current[path];
            match kind {
                EntryKind::Dir => self.upsert_dir(path)?,
                EntryKind::Symlink { target } => {
                    self.upsert_symlink(path, target, base.get(path))?
                }
                EntryKind::File { .. } => self.upsert_file(path, kind, *content, base.get(path))?,
            }
        }
        Ok(())
    }

    /// Saves the record on the server (and its local copy `copy`).
    fn save_state(&mut self, copy: &Path) -> Result<()> {
        let state = SyncState {
            protocol: PROTOCOL_VERSION,
            token: Some(manifest::token(&self.owned)),
            entries: manifest::to_entries(&self.owned),
        };
        index::save(copy, &state).with_context(|| format!("cannot write {}", copy.display()))?;
        let tmp = self.temp()?;
        let src =
            std::fs::File::open(copy).with_context(|| format!("cannot read {}", copy.display()))?;
        let meta = Meta {
            mode: 0o600,
            mtime: mtime_secs(scan::now_ns()),
        };
        self.remote.upload(src, copy, &tmp, meta, &mut |_| {})?;
        let path = engine_dir(&self.root).join(STATE_FILE);
        self.remote.rename_over(&tmp, &path)
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Checks (or creates) the directories down to `rel`; the reason when one is unusable.
    fn ensure_dir(&mut self, rel: &str) -> Result<std::result::Result<Dir, String>> {
        let mut parent_created = false;
        let mut end = 0;
        loop {
            let next = rel[end..].find('/').map(|i| end + i);
            let prefix = &rel[..next.unwrap_or(rel.len())];
            let state = match self.dirs.get(prefix).cloned() {
                Some(Dir::Unusable(why)) => return Ok(Err(why)),
                Some(Dir::Missing) => self.create_dir(prefix)?,
                Some(d) => d,
                None if parent_created => self.create_dir(prefix)?,
                None => match self.remote.lstat(&self.at(prefix))? {
                    Some(st) if st.is_dir() => Dir::Existing,
                    None => self.create_dir(prefix)?,
                    Some(st) => Dir::Unusable(unusable(self.remote, &self.at(prefix), &st)),
                },
            };
            self.dirs.insert(prefix.to_string(), state.clone());
            if let Dir::Unusable(why) = state {
                return Ok(Err(why));
            }
            parent_created = state == Dir::Created;
            match next {
                Some(i) => end = i + 1,
                None => return Ok(Ok(state)),
            }
        }
    }

    fn create_dir(&mut self, rel: &str) -> Result<Dir> {
        let path = self.at(rel);
        match self.remote.mkdir(&path) {
            Ok(()) => Ok(Dir::Created),
            Err(e) => match self.remote.lstat(&path)? {
                Some(st) if st.is_dir() => Ok(Dir::Existing),
                _ => Err(anyhow!(
                    "cannot create directory {}: {}",
                    self.remote.show(&path),
                    super::describe(&e)
                )),
            },
        }
    }

    /// Like [`Apply::ensure_dir`] for the parent of `rel`, creating nothing: `None` when the
    /// parent is missing (so `rel` is gone too) or unusable.
    fn existing_parent(&mut self, rel: &str) -> Result<Option<Dir>> {
        let mut end = 0;
        while let Some(i) = rel[end..].find('/').map(|i| end + i) {
            let prefix = &rel[..i];
            let state = match self.dirs.get(prefix).cloned() {
                Some(d) => d,
                None => match self.remote.lstat(&self.at(prefix))? {
                    Some(st) if st.is_dir() => Dir::Existing,
                    None => Dir::Missing,
                    Some(st) => Dir::Unusable(unusable(self.remote, &self.at(prefix), &st)),
                },
            };
            self.dirs.insert(prefix.to_string(), state.clone());
            if matches!(state, Dir::Missing | Dir::Unusable(_)) {
                return Ok(None);
            }
            end = i + 1;
        }
        Ok(Some(self.dirs[""].clone()))
    }

    /// The directory holding `rel`, checked or created; `None` (with a warning) when changes
    /// cannot go there.
    fn parent_of(&mut self, rel: &str) -> Result<Option<Dir>> {
        let parent = rel.rfind('/').map_or("", |i| &rel[..i]);
        if parent.is_empty() {
            return Ok(Some(self.dirs[""].clone()));
        }
        match self.ensure_dir(parent)? {
            Ok(d) => Ok(Some(d)),
            Err(why) => {
                self.warnings.push(format!("{rel}: {why}"));
                Ok(None)
            }
        }
    }

    fn delete(&mut self, rel: &str, was: &EntryKind) -> Result<()> {
        let path = self.at(rel);
        if self.existing_parent(rel)?.is_some() {
            let res = match was {
                EntryKind::Dir => self.remote.rmdir(&path),
                _ => self.remote.unlink(&path),
            };
            match res {
                Ok(()) => {
                    self.stats.deleted += 1;
                    if matches!(was, EntryKind::Dir) {
                        self.dirs.insert(rel.to_string(), Dir::Missing);
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => match self.remote.lstat(&path)? {
                    // A directory the remote side put files in stays; so does a path that is no
                    // longer what mtr wrote there.
                    Some(st) if st.is_dir() => {
                        log::debug!("kept {}: {}", self.remote.show(&path), super::describe(&e))
                    }
                    None => {}
                    Some(_) => bail!(
                        "cannot delete {}: {}",
                        self.remote.show(&path),
                        super::describe(&e)
                    ),
                },
            }
        }
        self.owned.remove(rel);
        Ok(())
    }

    /// Clears a directory out of the way of a file or symlink at `rel`; an error when the
    /// remote side put files in it.
    fn remove_dir(&mut self, rel: &str, what: &str) -> Result<()> {
        let path = self.at(rel);
        match self.remote.rmdir(&path) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(_) => bail!(
                "cannot replace directory {} with a {what}: it holds files mtr did not write; \
                 move them away on the server and sync again",
                self.remote.show(&path)
            ),
        }
        self.dirs.remove(rel);
        self.owned.remove(rel);
        Ok(())
    }

    fn upsert_dir(&mut self, rel: &str) -> Result<()> {
        let Some(parent) = self.parent_of(rel)? else {
            return Ok(());
        };
        let path = self.at(rel);
        let state = if parent == Dir::Created {
            self.create_dir(rel)?
        } else {
            match self.remote.lstat(&path)? {
                Some(st) if st.is_dir() => Dir::Existing,
                None => self.create_dir(rel)?,
                // A file or symlink where the local tree has a directory: the local tree wins
                // (a symlink is removed, never followed).
                Some(_) => {
                    self.remote.unlink(&path).map_err(|e| {
                        anyhow!(
                            "cannot replace {} with a directory: {}",
                            self.remote.show(&path),
                            super::describe(&e)
                        )
                    })?;
                    self.create_dir(rel)?
                }
            }
        };
        self.dirs.insert(rel.to_string(), state);
        self.owned.insert(rel.to_string(), EntryKind::Dir);
        Ok(())
    }

    fn upsert_symlink(&mut self, rel: &str, target: &str, was: Option<&EntryKind>) -> Result<()> {
        let Some(parent) = self.parent_of(rel)? else {
            return Ok(());
        };
        let in_the_way = match was {
            Some(EntryKind::Dir) => true,
            Some(_) => false,
            None if parent == Dir::Created => false,
            None => self
                .remote
                .lstat(&self.at(rel))?
                .is_some_and(|st| st.is_dir()),
        };
        if in_the_way {
            self.remove_dir(rel, "symlink")?;
        }
        let tmp = self.temp()?;
        self.remote.symlink(target, &tmp)?;
        let path = self.at(rel);
        self.remote.rename_over(&tmp, &path)?;
        self.owned.insert(
            rel.to_string(),
            EntryKind::Symlink {
                target: target.to_string(),
            },
        );
        Ok(())
    }

    fn upsert_file(
        &mut self,
        rel: &str,
        kind: &EntryKind,
        content: bool,
        was: Option<&EntryKind>,
    ) -> Result<()> {
        let EntryKind::File {
            size,
            mode,
            mtime_ns,
            ..
        } = kind
        else {
            unreachable!("upsert_file is for files");
        };
        let Some(parent) = self.parent_of(rel)? else {
            return Ok(());
        };
        let meta = Meta {
            mode: *mode,
            mtime: mtime_secs(*mtime_ns),
        };
        let path = self.at(rel);
        match was {
            // Only the mtime or mode changed: set them, if the file is still the one mtr wrote.
            Some(EntryKind::File { size: old, .. }) if !content => {
                if let Some(st) = self.remote.lstat(&path)? {
                    if st.is_file() && st.size == Some(*old) {
                        self.remote.set_meta(&path, meta)?;
                        self.owned.insert(rel.to_string(), kind.clone());
                        return Ok(());
                    }
                }
            }
            Some(EntryKind::Dir) => self.remove_dir(rel, "file")?,
            Some(_) => {}
            None if parent == Dir::Created => {}
            // Not recorded: what is there may already be this file (same size and mtime).
            None => match self.remote.lstat(&path)? {
                Some(st)
                    if st.is_file() && st.size == Some(*size) && st.mtime == Some(meta.mtime) =>
                {
                    if st.perm.map(|p| p & 0o777) != Some(*mode & 0o777) {
                        self.remote.set_mode(&path, *mode)?;
                    }
                    self.stats.adopted += 1;
                    self.progress.advance(*size);
                    self.owned.insert(rel.to_string(), kind.clone());
                    return Ok(());
                }
                Some(st) if st.is_dir() => self.remove_dir(rel, "file")?,
                _ => {}
            },
        }
        let local = self.local.join(rel);
        let src = match std::fs::File::open(&local) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warnings
                    .push(format!("{rel}: deleted locally during the sync"));
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", local.display())),
        };
        let tmp = self.temp()?;
        let progress = self.progress;
        let sent = self
            .remote
            .upload(src, &local, &tmp, meta, &mut |n| progress.advance(n))
            .and_then(|sent| self.remote.rename_over(&tmp, &path).map(|()| sent))
            .map_err(|e| {
                // Best effort: a partial temporary only takes space (the next sync that
                // uploads removes it anyway).
                let _ = self.remote.unlink(&tmp);
                e.context(format!(
                    "cannot upload {rel} to {}",
                    self.remote.show(&path)
                ))
            })?;
        self.stats.files += 1;
        self.stats.bytes += sent;
        self.owned.insert(rel.to_string(), kind.clone());
        Ok(())
    }

    /// A fresh name in the staging directory.
    fn temp(&mut self) -> Result<PathBuf> {
        if self.staging.is_none() {
            let rel = format!("{STATE_DIR}/{ENGINE_DIR}/{STAGING}");
            if let Err(why) = self.ensure_dir(&rel)? {
                bail!("cannot use the staging directory: {why}");
            }
            self.staging = Some(self.at(&rel));
        }
        self.temps += 1;
        let name = format!("{}-{}", std::process::id(), self.temps);
        Ok(self.staging.as_ref().expect("set above").join(name))
    }
}

/// Why a path that should be a directory cannot be written into.
fn unusable(remote: &Remote, path: &Path, st: &ssh2::FileStat) -> String {
    if st.file_type().is_symlink() {
        format!(
            "{} is a symbolic link on the server (mtr never writes through one)",
            remote.show(path)
        )
    } else {
        format!("{} is not a directory on the server", remote.show(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(digest: u8) -> EntryKind {
        EntryKind::File {
            size: 1,
            mode: 0o644,
            mtime_ns: 1,
            digest: [digest; 32],
        }
    }

    #[test]
    fn the_plan_says_add_update_touch_and_delete() {
        let base: Manifest = [
            ("a".to_string(), file(1)),
            ("b".to_string(), file(2)),
            ("gone".to_string(), file(3)),
        ]
        .into();
        let mut touched = file(2);
        if let EntryKind::File { mtime_ns, .. } = &mut touched {
            *mtime_ns = 2;
        }
        let current: Manifest = [
            ("a".to_string(), file(9)),
            ("b".to_string(), touched),
            ("new".to_string(), EntryKind::Dir),
        ]
        .into();
        let d = manifest::diff(&base, &current, &HashSet::new(), |_, _| false);
        assert_eq!(
            plan(&base, &d),
            [
                Change::Update("a".into()),
                Change::Touch("b".into()),
                Change::Add("new".into()),
                Change::Delete("gone".into()),
            ]
        );
    }
}
