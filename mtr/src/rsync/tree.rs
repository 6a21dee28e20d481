//! What to send and what to delete: the walk of the project with the agent engine's
//! [`Filter`], the deletions computed from the state file (what the last sync sent), and
//! the two inputs rsync gets from them: the file list and the filter rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use protocol::scan::Filter;

use super::transport::display;
use super::transport::escape_pattern;
use crate::config::Settings;

/// Version line of the state file.
const STATE_MAGIC: &[u8] = b"mtr-rsync-state 1\n";

/// What a synced path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
}

/// The project as the agent engine would sync it.
#[derive(Debug, Default)]
pub(super) struct LocalTree {
    /// Every path to sync (relative, `/`-separated), parents before children.
    pub(super) entries: BTreeMap<String, Kind>,
    /// For each directory (`""` for the root), the names of its children that are not synced:
    /// excluded, special files, names that are not UTF-8. Hidden from rsync when it reads
    /// that directory whole.
    hidden: HashMap<String, Vec<OsString>>,
    /// Things skipped with a reason, worded as the agent engine words them.
    pub(super) warnings: Vec<String>,
}

/// Walks `root` as `protocol::scan` does: excluded paths (and everything under an excluded
/// directory) are left out, symlinks are not followed, special files and names or link
/// targets that are not UTF-8 are skipped with a warning.
pub(super) fn walk(root: &Path, filter: &Filter) -> Result<LocalTree> {
    let mut tree = LocalTree::default();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let rd = fs::read_dir(&abs)
            .with_context(|| format!("cannot read directory {}", abs.display()))?;
        for de in rd {
            let de = de.with_context(|| format!("cannot read directory {}", abs.display()))?;
            let name = de.file_name();
            let path = de.path();
            let Some(name_str) = name.to_str() else {
                tree.warnings
                    .push(format!("{}: name is not valid UTF-8", path.display()));
                tree.hidden.entry(dir.clone()).or_default().push(name);
                continue;
            };
            let rel = if dir.is_empty() {
                name_str.to_string()
            } else {
                format!("{dir}/{name_str}")
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
            };
            let ft = meta.file_type();
            let kind = if filter.excluded_here(&rel, ft.is_dir()) {
                None
            } else if ft.is_dir() {
                Some(Kind::Dir)
            } else if ft.is_file() {
                Some(Kind::File)
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .with_context(|| format!("cannot read symlink {}", path.display()))?;
                if target.to_str().is_some() {
                    Some(Kind::Symlink)
                } else {
                    tree.warnings.push(format!(
                        "{}: symlink target is not valid UTF-8",
                        path.display()
                    ));
                    None
                }
            } else {
                tree.warnings.push(format!(
                    "{}: not a regular file, directory or symlink (fifo, socket or device)",
                    path.display()
                ));
                None
            };
            match kind {
                Some(kind) => {
                    if kind == Kind::Dir {
                        stack.push(rel.clone());
                    }
                    tree.entries.insert(rel, kind);
                }
                None => tree.hidden.entry(dir.clone()).or_default().push(name),
            }
        }
    }
    Ok(tree)
}

/// Paths synced last time, now gone locally and not excluded: `(path, was a directory)`.
/// A path that is now excluded is forgotten instead (excluded paths are never deleted).
pub(super) fn deletions(
    previous: &BTreeMap<String, bool>,
    tree: &LocalTree,
    filter: &Filter,
) -> Vec<(String, bool)> {
    previous
        .iter()
        .filter(|(path, _)| !tree.entries.contains_key(*path))
        .filter(|(path, is_dir)| !filter.excluded(path, **is_dir))
        .map(|(path, is_dir)| (path.clone(), *is_dir))
        .collect()
}

/// The directories rsync must read whole to find the deleted paths: the parents (`""` for
/// the root) that still exist locally as directories. Deeper deletions are reached from there
/// (rsync deletes a directory by going through its contents).
pub(super) fn scan_dirs(deleted: &[(String, bool)], tree: &LocalTree) -> BTreeSet<String> {
    deleted
        .iter()
        .filter_map(|(path, _)| {
            let parent = path.rfind('/').map_or("", |i| &path[..i]);
            (parent.is_empty() || tree.entries.get(parent) == Some(&Kind::Dir))
                .then(|| parent.to_string())
        })
        .collect()
}

/// The rules for a sync with deletions (NUL-separated, for `--from0`):
/// - `H /dir/name` hides the unsynced children of the directories read whole;
/// - `R /path` (`/path/` for a directory) lets rsync delete a path mtr sent and that is gone;
/// - `P *` protects everything else on the server (remote-created and excluded paths).
pub(super) fn delete_rules(
    tree: &LocalTree,
    deleted: &[(String, bool)],
    scan_dirs: &BTreeSet<String>,
) -> Vec<u8> {
    let mut rules = Vec::new();
    for dir in scan_dirs {
        for name in tree.hidden.get(dir).into_iter().flatten() {
            let mut path = Vec::new();
            if !dir.is_empty() {
                path.extend_from_slice(dir.as_bytes());
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            rules.extend_from_slice(b"H /");
            rules.extend_from_slice(&escape_pattern(&path));
            rules.push(0);
        }
    }
    for (path, is_dir) in deleted {
        rules.extend_from_slice(b"R /");
        rules.extend_from_slice(&escape_pattern(path.as_bytes()));
        if *is_dir {
            rules.push(b'/');
        }
        rules.push(0);
    }
    rules.extend_from_slice(b"P *\0");
    rules
}

/// The list for `--files-from=- --from0`: every entry, the directories to read whole with a
/// trailing `/` (`./` for the root).
pub(super) fn file_list(tree: &LocalTree, scan_dirs: &BTreeSet<String>) -> Vec<u8> {
    let mut list = Vec::new();
    if scan_dirs.contains("") {
        list.extend_from_slice(b"./\0");
    }
    for (path, kind) in &tree.entries {
        list.extend_from_slice(path.as_bytes());
        if *kind == Kind::Dir && scan_dirs.contains(path) {
            list.push(b'/');
        }
        list.push(0);
    }
    list
}

/// `<cache>/mtr/rsync/<hash of project root, server, remote_dir>`.
pub(super) fn state_path(s: &Settings) -> PathBuf {
    let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    let cache = dirs::cache_dir().unwrap_or_else(|| home.join(".cache"));
    let mut h = blake3::Hasher::new();
    for part in [
        s.project_root.as_os_str().as_bytes(),
        display(s).as_bytes(),
        s.remote_dir.as_bytes(),
    ] {
        h.update(part);
        h.update(b"\0");
    }
    cache
        .join("mtr")
        .join("rsync")
        .join(&h.finalize().to_hex()[..32])
}

/// The paths the last sync sent (`true` for directories). A missing file is a first sync; an
/// unreadable or foreign one is logged and read as empty, which only means nothing is deleted
/// this time.
pub(super) fn load_state(path: &Path) -> BTreeMap<String, bool> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            log::warn!(
                "cannot read {} ({e}): deletions are not synced this time",
                path.display()
            );
            return BTreeMap::new();
        }
    };
    parse_state(&bytes).unwrap_or_else(|| {
        log::warn!(
            "{} is not an rsync state file of this mtr: deletions are not synced this time",
            path.display()
        );
        BTreeMap::new()
    })
}

fn parse_state(bytes: &[u8]) -> Option<BTreeMap<String, bool>> {
    let body = bytes.strip_prefix(STATE_MAGIC)?;
    let mut out = BTreeMap::new();
    for record in body.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let (&kind, path) = record.split_first()?;
        let path = std::str::from_utf8(path).ok()?.to_string();
        match kind {
            b'd' => out.insert(path, true),
            b'f' => out.insert(path, false),
            _ => return None,
        };
    }
    Some(out)
}

fn encode_state(tree: &LocalTree) -> Vec<u8> {
    let mut out = STATE_MAGIC.to_vec();
    for (path, kind) in &tree.entries {
        out.push(if *kind == Kind::Dir { b'd' } else { b'f' });
        out.extend_from_slice(path.as_bytes());
        out.push(0);
    }
    out
}

/// Replaces the state file atomically (a temporary file in the same directory, renamed).
pub(super) fn save_state(path: &Path, tree: &LocalTree) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".state-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(&encode_state(tree))
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot save {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::scan::ScanOptions;

    fn filter(root: &Path, excludes: &[&str]) -> Filter {
        Filter::new(
            root,
            &ScanOptions {
                excludes: excludes.iter().map(|s| s.to_string()).collect(),
                respect_gitignore: true,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_walk_matches_the_agent_engines_scan() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for (p, body) in [
            ("src/a.py", "a"),
            ("src/build/x.o", "o"),
            ("src/keep.log", "k"),
            ("x.log", "l"),
            ("notes/private.md", "p"),
            ("notes/public.md", "p"),
            (".gitignore", "*.log\n"),
            ("src/.gitignore", "build/\n!keep.log\n"),
            ("notes/.mtrignore", "private.md\n"),
            ("m.ckpt", "c"),
            (".mtr/config.yaml", "x"),
        ] {
            testkit::gen::write_file(&r.join(p), body);
        }
        fs::create_dir_all(r.join("empty/nested")).unwrap();
        std::os::unix::fs::symlink("src/a.py", r.join("link")).unwrap();
        let f = filter(r, &["*.ckpt", ".mtr/"]);
        let tree = walk(r, &f).unwrap();
        let scanned = protocol::scan::scan(
            r,
            &f,
            || None,
            &protocol::chunker::Chunker::default(),
            &protocol::scan::NoProgress,
        )
        .unwrap();
        let ours: Vec<&String> = tree.entries.keys().collect();
        let theirs: Vec<&String> = scanned.entries.keys().collect();
        assert_eq!(ours, theirs);
        assert_eq!(tree.entries["link"], Kind::Symlink);
        assert_eq!(tree.entries["empty/nested"], Kind::Dir);
        let mut root_hidden = tree.hidden[""].clone();
        root_hidden.sort();
        assert_eq!(root_hidden, [".mtr", "m.ckpt", "x.log"]);
        assert_eq!(tree.hidden["src"], ["build"]);
    }

    #[test]
    fn only_what_was_sent_and_is_not_excluded_is_deleted() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        testkit::gen::write_file(&r.join("keep/a.py"), "a");
        testkit::gen::write_file(&r.join("keep/skip.tmp"), "t");
        let f = filter(r, &["*.tmp"]);
        let tree = walk(r, &f).unwrap();
        let previous: BTreeMap<String, bool> = [
            ("keep", true),
            ("keep/a.py", false),
            ("keep/gone.py", false),
            ("keep/was.tmp", false),
            ("old", true),
            ("old/sub", true),
            ("old/sub/x", false),
            ("top.txt", false),
        ]
        .into_iter()
        .map(|(p, d)| (p.to_string(), d))
        .collect();
        let deleted = deletions(&previous, &tree, &f);
        let names: Vec<&str> = deleted.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            ["keep/gone.py", "old", "old/sub", "old/sub/x", "top.txt"]
        );
        let dirs = scan_dirs(&deleted, &tree);
        assert_eq!(dirs.iter().collect::<Vec<_>>(), ["", "keep"]);
        let rules = delete_rules(&tree, &deleted, &dirs);
        let rules: Vec<&[u8]> = rules.split(|&b| b == 0).collect();
        assert_eq!(
            rules,
            [
                &b"H /keep/skip.tmp"[..],
                b"R /keep/gone.py",
                b"R /old/",
                b"R /old/sub/",
                b"R /old/sub/x",
                b"R /top.txt",
                b"P *",
                b"",
            ]
        );
        let list = file_list(&tree, &dirs);
        assert_eq!(list, b"./\0keep/\0keep/a.py\0");
    }

    #[test]
    fn the_state_round_trips_and_a_foreign_file_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let mut tree = LocalTree::default();
        tree.entries.insert("d".into(), Kind::Dir);
        tree.entries.insert("d/new\nline".into(), Kind::File);
        tree.entries.insert("l".into(), Kind::Symlink);
        let path = d.path().join("sub/state");
        save_state(&path, &tree).unwrap();
        let back = load_state(&path);
        assert_eq!(
            back.into_iter().collect::<Vec<_>>(),
            [
                ("d".to_string(), true),
                ("d/new\nline".to_string(), false),
                ("l".to_string(), false)
            ]
        );
        fs::write(&path, b"something else").unwrap();
        assert!(load_state(&path).is_empty());
        assert!(load_state(&d.path().join("missing")).is_empty());
    }
}
