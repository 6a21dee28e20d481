//! `mtr --get` over SFTP: the remote file or directory `Download::remote` becomes exactly
//! `Download::local`.
//!
//! A file is downloaded to a temporary name beside its destination, gets the remote mode and
//! mtime, and is renamed into place; a local file with the same size and mtime is left alone
//! (its mode fixed if that alone differs). A directory is copied recursively (nothing local is
//! deleted). A path given to `--get` that is a symlink on the server is followed; symlinks
//! inside a downloaded directory are recreated as symlinks.
//!
//! The server is not trusted: a name that is empty, `.`, `..`, or holds `/` or NUL is refused;
//! a symlink is recreated only when its target is relative and stays inside the destination
//! (leading `..` components within the link's depth, none after a name); nothing is written
//! through, or replaces, a local symlink (every local directory a write goes into was created
//! by this download or checked with `lstat`). Refused entries are skipped with a warning.
//! The walk is iterative, so a deep tree cannot exhaust the stack.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use protocol::scan::Progress;
use ssh2::FileStat;

use super::{sftp_path, Remote};
use crate::config::Settings;
use crate::get::Download;
use crate::ssh::Ssh;
use crate::ui::{self, Ui};

/// Downloads `d.remote` to `d.local`; with `dry_run`, prints what would change on stdout and
/// writes nothing.
pub fn get(ssh: &Ssh, s: &Settings, ui: &Ui, d: &Download, dry_run: bool) -> Result<()> {
    let started = Instant::now();
    let remote = Remote::open(ssh)?;
    let src = sftp_path(&d.remote);
    let shown = format!("{}:{}", ssh.display(), d.remote);
    let Some(top) = remote.stat(&src)? else {
        let hint = if d.remote.starts_with('/') || d.remote.starts_with('~') {
            String::new()
        } else {
            format!(" (relative paths are under remote_dir {})", s.remote_dir)
        };
        bail!("{shown}: no such file or directory on the server{hint}");
    };
    let mut plan = Plan::default();
    if top.is_dir() {
        plan_dir(&remote, &src, &shown, &d.local, &mut plan)?;
    } else if top.is_file() {
        plan_top_file(&src, &top, &d.local, &mut plan)?;
    } else {
        bail!("{shown} is neither a regular file nor a directory");
    }
    for w in &plan.warnings {
        ui.warn(&format!("skipped {w}"));
    }
    let label = |rel: &Path| -> PathBuf {
        let name = d.local.file_name().map(PathBuf::from).unwrap_or_default();
        if rel.as_os_str().is_empty() {
            name
        } else {
            name.join(rel)
        }
    };
    if dry_run {
        let changes: Vec<&Item> = plan.items.iter().filter(|i| i.change().is_some()).collect();
        println!(
            "get plan for {shown} -> {}: {} change(s)",
            d.local.display(),
            changes.len()
        );
        for item in changes {
            let rel = label(item.rel()).display().to_string();
            match item.change() {
                Some(Change::Add) => println!("  + {rel}"),
                Some(Change::Update) => println!("  ~ {rel}"),
                Some(Change::Mode) => println!("  . {rel} (metadata)"),
                None => {}
            }
        }
        return Ok(());
    }

    if let Some(parent) = d.local.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let total: u64 = plan
        .items
        .iter()
        .map(|i| match i {
            Item::File {
                change: Change::Add | Change::Update,
                size,
                ..
            } => *size,
            _ => 0,
        })
        .sum();
    let progress = ui.progress();
    progress.phase("get", total);
    let result = execute(&remote, &d.local, &plan, &progress);
    progress.finish();
    let (files, bytes) = result.with_context(|| format!("download of {shown} failed"))?;
    let secs = started.elapsed().as_secs_f64();
    if files == 0 && plan.items.iter().all(|i| i.change().is_none()) {
        ui.info(&format!(
            "up to date: {} ({} unchanged, {secs:.2}s)",
            d.local.display(),
            plan.unchanged
        ));
    } else {
        ui.info(&format!(
            "downloaded {files} file(s), {} from {shown} to {} ({}/s, {} unchanged), {secs:.2}s",
            ui::bytes(bytes),
            d.local.display(),
            ui::bytes((bytes as f64 / secs.max(1e-3)) as u64),
            plan.unchanged,
        ));
    }
    Ok(())
}

/// What happens to one local path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Update,
    /// Only the mode differs.
    Mode,
}

#[derive(Debug)]
enum Item {
    /// A directory to create (`change` is `None` when it exists).
    Dir {
        rel: PathBuf,
        change: Option<Change>,
    },
    File {
        rel: PathBuf,
        src: PathBuf,
        size: u64,
        mtime: u64,
        mode: u32,
        change: Change,
    },
    Link {
        rel: PathBuf,
        target: PathBuf,
        change: Change,
    },
}

impl Item {
    fn rel(&self) -> &Path {
        match self {
            Item::Dir { rel, .. } | Item::File { rel, .. } | Item::Link { rel, .. } => rel,
        }
    }

    fn change(&self) -> Option<Change> {
        match self {
            Item::Dir { change, .. } => *change,
            Item::File { change, .. } | Item::Link { change, .. } => Some(*change),
        }
    }
}

#[derive(Debug, Default)]
struct Plan {
    /// In walk order: a directory before what goes in it.
    items: Vec<Item>,
    /// Entries refused or left alone, with the reason.
    warnings: Vec<String>,
    /// Files and symlinks already up to date.
    unchanged: u64,
}

/// What is at a local path, not following symlinks.
enum Local {
    Missing,
    Dir,
    File(fs::Metadata),
    Symlink(PathBuf),
    Other,
}

fn local_kind(path: &Path) -> Result<Local> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Local::Missing),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
        Ok(m) if m.file_type().is_symlink() => {
            Ok(Local::Symlink(fs::read_link(path).with_context(|| {
                format!("cannot read {}", path.display())
            })?))
        }
        Ok(m) if m.is_dir() => Ok(Local::Dir),
        Ok(m) if m.is_file() => Ok(Local::File(m)),
        Ok(_) => Ok(Local::Other),
    }
}

fn mtime_of(m: &fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// How a remote file compares with the local file `local` holds.
fn compare_file(st: &FileStat, local: &fs::Metadata) -> Option<Change> {
    let same = st.size == Some(local.len()) && st.mtime == Some(mtime_of(local));
    let mode = st.perm.unwrap_or(0o644) & 0o777;
    match (same, local.permissions().mode() & 0o777 == mode) {
        (true, true) => None,
        (true, false) => Some(Change::Mode),
        (false, _) => Some(Change::Update),
    }
}

fn plan_top_file(src: &Path, st: &FileStat, local: &Path, plan: &mut Plan) -> Result<()> {
    let change = match local_kind(local)? {
        Local::Missing => Some(Change::Add),
        Local::File(m) => compare_file(st, &m),
        Local::Symlink(_) => bail!(
            "{} is a symbolic link: mtr does not write through or replace one; remove it or \
             choose another --to",
            local.display()
        ),
        Local::Dir => bail!(
            "{} is a directory; choose another --to (a path ending in / downloads into it)",
            local.display()
        ),
        Local::Other => bail!("{} exists and is not a regular file", local.display()),
    };
    match change {
        None => plan.unchanged += 1,
        Some(change) => plan.items.push(Item::File {
            rel: PathBuf::new(),
            src: src.to_path_buf(),
            size: st.size.unwrap_or(0),
            mtime: st.mtime.unwrap_or(0),
            mode: st.perm.unwrap_or(0o644) & 0o777,
            change,
        }),
    }
    Ok(())
}

/// Why a name the server listed cannot be used locally, if it cannot.
fn bad_name(name: &OsStr) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        Some("an empty name")
    } else if b == b"." || b == b".." {
        Some("`.` or `..`")
    } else if b.contains(&b'/') {
        Some("a name holding `/`")
    } else if b.contains(&0) {
        Some("a name holding NUL")
    } else {
        None
    }
}

/// Whether a symlink at `rel` (relative to the destination root) with `target` resolves inside
/// the root whatever the other entries are: a relative target whose `..` components all come
/// first and climb no higher than the link's own directory.
fn safe_target(rel: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.as_os_str().as_bytes().contains(&0) {
        return false;
    }
    let depth = rel.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if !named => {
                ups += 1;
                if ups > depth {
                    return false;
                }
            }
            Component::Normal(_) => named = true,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn plan_dir(remote: &Remote, src: &Path, shown: &str, local: &Path, plan: &mut Plan) -> Result<()> {
    match local_kind(local)? {
        Local::Missing => plan.items.push(Item::Dir {
            rel: PathBuf::new(),
            change: Some(Change::Add),
        }),
        Local::Dir => plan.items.push(Item::Dir {
            rel: PathBuf::new(),
            change: None,
        }),
        Local::Symlink(_) => bail!(
            "{} is a symbolic link: mtr does not write through or replace one; remove it or \
             choose another --to",
            local.display()
        ),
        _ => bail!(
            "{} exists and is not a directory, but {shown} is one; choose another --to",
            local.display()
        ),
    }
    // (remote dir, path relative to the destination, whether the local dir is new and empty)
    let mut stack = vec![(src.to_path_buf(), PathBuf::new(), !local.exists())];
    while let Some((dir, rel_dir, fresh)) = stack.pop() {
        let mut entries = remote.list(&dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, st) in entries {
            let name = name.into_os_string();
            if name == "." || name == ".." {
                continue;
            }
            let rel = rel_dir.join(&name);
            if let Some(why) = bad_name(&name) {
                plan.warnings.push(format!(
                    "{name:?} in {}: the server sent {why}",
                    remote.show(&dir)
                ));
                continue;
            }
            let from = dir.join(&name);
            let to = local.join(&rel);
            let here = if fresh {
                Local::Missing
            } else {
                local_kind(&to)?
            };
            let ft = st.file_type();
            if ft.is_dir() {
                match here {
                    Local::Missing => {
                        plan.items.push(Item::Dir {
                            rel: rel.clone(),
                            change: Some(Change::Add),
                        });
                        stack.push((from, rel, true));
                    }
                    Local::Dir => stack.push((from, rel, false)),
                    Local::Symlink(_) => plan.warnings.push(format!(
                        "{}: a local symbolic link where the server has a directory (mtr \
                         never writes through one)",
                        to.display()
                    )),
                    _ => plan.warnings.push(format!(
                        "{}: a local file where the server has a directory",
                        to.display()
                    )),
                }
            } else if ft.is_file() {
                let change = match here {
                    Local::Missing => Some(Change::Add),
                    Local::File(m) => compare_file(&st, &m),
                    Local::Symlink(_) => {
                        plan.warnings.push(format!(
                            "{}: a local symbolic link where the server has a file (mtr never \
                             writes through or replaces one)",
                            to.display()
                        ));
                        continue;
                    }
                    _ => {
                        plan.warnings.push(format!(
                            "{}: a local directory where the server has a file",
                            to.display()
                        ));
                        continue;
                    }
                };
                match change {
                    None => plan.unchanged += 1,
                    Some(change) => plan.items.push(Item::File {
                        rel,
                        src: from,
                        size: st.size.unwrap_or(0),
                        mtime: st.mtime.unwrap_or(0),
                        mode: st.perm.unwrap_or(0o644) & 0o777,
                        change,
                    }),
                }
            } else if ft.is_symlink() {
                let target = remote.readlink(&from)?;
                if !safe_target(&rel, &target) {
                    plan.warnings.push(format!(
                        "{} -> {}: the symlink points outside {}",
                        remote.show(&from),
                        target.display(),
                        local.display()
                    ));
                    continue;
                }
                let change = match here {
                    Local::Missing => Change::Add,
                    Local::Symlink(t) if t == target => {
                        plan.unchanged += 1;
                        continue;
                    }
                    Local::Symlink(_) | Local::File(_) => Change::Update,
                    _ => {
                        plan.warnings.push(format!(
                            "{}: a local directory where the server has a symlink",
                            to.display()
                        ));
                        continue;
                    }
                };
                plan.items.push(Item::Link {
                    rel,
                    target,
                    change,
                });
            } else {
                plan.warnings.push(format!(
                    "{}: not a regular file, directory or symlink",
                    remote.show(&from)
                ));
            }
        }
    }
    Ok(())
}

/// Carries out the plan; returns the files downloaded and their bytes.
fn execute(
    remote: &Remote,
    root: &Path,
    plan: &Plan,
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    for item in &plan.items {
        let to = if item.rel().as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(item.rel())
        };
        match item {
            Item::Dir { change: None, .. } => {}
            Item::Dir { .. } => match fs::create_dir(&to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_real_dir(&to) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", to.display())),
            },
            Item::File {
                mode,
                change: Change::Mode,
                ..
            } => {
                // `set_permissions` follows symlinks: check again that it is a regular file.
                if matches!(local_kind(&to)?, Local::File(_)) {
                    fs::set_permissions(&to, fs::Permissions::from_mode(*mode))
                        .with_context(|| format!("cannot set the mode of {}", to.display()))?;
                }
            }
            Item::File {
                src, mtime, mode, ..
            } => {
                let mut tmp = Temp::create(&to)?;
                let n = remote.download(src, &mut tmp.file, &to, &mut |n| progress.advance(n))?;
                tmp.file
                    .set_permissions(fs::Permissions::from_mode(*mode))
                    .with_context(|| format!("cannot set the mode of {}", tmp.path.display()))?;
                let when = UNIX_EPOCH + Duration::from_secs(*mtime);
                tmp.file
                    .set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
                    .with_context(|| format!("cannot set the mtime of {}", tmp.path.display()))?;
                tmp.persist(&to)?;
                files += 1;
                bytes += n;
            }
            Item::Link { target, .. } => {
                let tmp = Temp::reserve(&to)?;
                std::os::unix::fs::symlink(target, &tmp.path)
                    .with_context(|| format!("cannot create symlink {}", tmp.path.display()))?;
                tmp.persist(&to)?;
            }
        }
    }
    Ok((files, bytes))
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A temporary file beside a destination, removed unless persisted.
struct Temp {
    path: PathBuf,
    file: fs::File,
    persisted: bool,
}

impl Temp {
    /// A new, empty, private file in `dest`'s directory (never an existing path: `O_EXCL`).
    fn create(dest: &Path) -> Result<Temp> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        for n in 0..100u32 {
            let path = dir.join(format!(".mtr-get-{}-{n}.tmp", std::process::id()));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Temp {
                        path,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!("cannot find a free temporary name in {}", dir.display())
    }

    /// A free name beside `dest`, for a symlink.
    fn reserve(dest: &Path) -> Result<Temp> {
        let t = Temp::create(dest)?;
        fs::remove_file(&t.path).with_context(|| format!("cannot remove {}", t.path.display()))?;
        Ok(t)
    }

    /// Renames the temporary over `dest`, replacing a file or symlink itself (never writing
    /// through one).
    fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).with_context(|| {
            format!("cannot move the download into place at {}", dest.display())
        })?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(bad_name(OsStr::new(bad)).is_some(), "{bad:?}");
        }
        for good in ["a", "..a", "a..", ".hidden", "ünï code", "a b"] {
            assert!(bad_name(OsStr::new(good)).is_none(), "{good:?}");
        }
    }

    #[test]
    fn symlinks_must_stay_inside_the_destination() {
        let ok = |rel: &str, target: &str| safe_target(Path::new(rel), Path::new(target));
        assert!(ok("link", "file"));
        assert!(ok("link", "./sub/file"));
        assert!(ok("a/link", "../file"));
        assert!(ok("a/b/link", "../../file"));
        assert!(ok("a/b/link", "../x/y"));
        assert!(!ok("link", "../file"));
        assert!(!ok("a/link", "../../file"));
        assert!(!ok("link", "/etc/passwd"));
        // `..` after a name could climb out through a symlink to the root.
        assert!(!ok("a/link", "x/../../y"));
        assert!(!ok("link", "r/.."));
        assert!(!ok("link", ""));
    }
}
