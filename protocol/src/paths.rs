//! Path safety. Every path from the peer is relative, `/`-separated UTF-8; it must not be
//! absolute, contain `.`/`..`/empty components or NUL, or name mtr's own state directory. On
//! the receiving side nothing is ever written through a symlink: each parent component is
//! checked with `lstat` to be a real directory inside the root.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The one hidden directory mtr keeps at the root of a synced tree (index, staging, lock).
pub const STATE_DIR: &str = ".mtr-sync";

/// The project's config directory, never synced.
pub const CONFIG_DIR: &str = ".mtr";

fn unsafe_path(path: &str, reason: &'static str) -> Error {
    Error::UnsafePath {
        path: path.chars().take(200).collect(),
        reason,
    }
}

/// Check a relative path received from the peer.
pub fn check_relative(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(unsafe_path(path, "empty path"));
    }
    if path.len() > 4096 {
        return Err(unsafe_path(path, "path too long"));
    }
    if path.starts_with('/') {
        return Err(unsafe_path(path, "absolute path"));
    }
    if path.contains('\0') {
        return Err(unsafe_path(path, "NUL in path"));
    }
    for (i, comp) in path.split('/').enumerate() {
        match comp {
            "" => return Err(unsafe_path(path, "empty path component")),
            "." | ".." => return Err(unsafe_path(path, "`.` or `..` component")),
            STATE_DIR if i == 0 => return Err(unsafe_path(path, "mtr's state directory")),
            _ => {}
        }
    }
    Ok(())
}

/// The parent of a relative path (`None` at the root).
pub fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// A root directory on the receiving side and safe ways to reach paths under it.
#[derive(Debug, Clone)]
pub struct Root {
    root: PathBuf,
}

impl Root {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Root { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Join a checked relative path (does not touch the filesystem).
    pub fn join(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// Verify every parent component of `rel` is a real directory (not a symlink), creating
    /// missing ones. Returns the absolute path of `rel`.
    pub fn prepare_parent(&self, rel: &str) -> Result<PathBuf> {
        check_relative(rel)?;
        let mut cur = self.root.clone();
        let comps: Vec<&str> = rel.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            cur.push(comp);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_path(rel, "a parent directory is a symlink"))
                }
                Ok(_) => {
                    return Err(Error::Conflict(format!(
                        "cannot create {}: {} is not a directory",
                        self.root.join(rel).display(),
                        cur.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&cur).ctx("create directory", &cur)?;
                }
                Err(e) => return Err(Error::io("stat", &cur, e)),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Like [`Root::prepare_parent`] but creates nothing: `Ok(None)` when a parent is missing.
    pub fn existing(&self, rel: &str) -> Result<Option<PathBuf>> {
        check_relative(rel)?;
        let mut cur = self.root.clone();
        let comps: Vec<&str> = rel.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            cur.push(comp);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_path(rel, "a parent directory is a symlink"))
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("stat", &cur, e)),
            }
        }
        Ok(Some(self.root.join(rel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            ".mtr-sync/index",
            ".mtr-sync",
            "a\0b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "a/b/c.txt",
            "ünï/cödé 漢字.py",
            "a/.mtr-sync",
            "..a",
            "a..b",
        ] {
            check_relative(good).unwrap();
        }
    }

    #[test]
    fn writes_never_go_through_a_symlinked_parent() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let r = Root::new(root.path());
        let err = r.prepare_parent("link/evil.txt").unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        assert!(r.existing("link/evil.txt").is_err());
        let p = r.prepare_parent("a/b/c.txt").unwrap();
        assert!(root.path().join("a/b").is_dir());
        assert_eq!(p, root.path().join("a/b/c.txt"));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
