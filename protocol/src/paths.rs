//! Path safety. Every path from the peer is relative, `/`-separated UTF-8; it must not be
//! absolute, contain `.`/`..`/empty components or NUL, or name mtr's own state directory. On
//! the receiving side nothing is ever written through a symlink: each parent component is
//! checked with `lstat` to be a real directory inside the root. A download's sink also checks
//! that symlink targets stay inside the tree ([`check_symlink_target`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::wire::StatKey;

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

/// Whether relative path `path` is `top` or under it.
pub fn within(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Check that a symlink at relative path `path` with target `target` points inside the tree,
/// whatever the tree holds: the target is relative, and its `..` components come first and
/// climb at most to the directory `floor` levels below the root (1: inside a download's top
/// entry; 0: anywhere under the root). `..` after a normal component is refused too: the
/// component could be a link to a shallower directory, which would make the rest climb out.
/// Returns why the target is refused.
pub fn check_symlink_target(path: &str, target: &str, floor: usize) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty target");
    }
    if target.contains('\0') {
        return Err("NUL in target");
    }
    if target.starts_with('/') {
        return Err("absolute target, outside the tree");
    }
    let mut depth = path.split('/').count() - 1;
    let mut descended = false;
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." if descended => return Err("`..` after a name may leave the tree"),
            ".." => {
                if depth <= floor {
                    return Err("`..` climbs out of the tree");
                }
                depth -= 1;
            }
            _ => descended = true,
        }
    }
    if depth < floor {
        return Err("points out of the tree");
    }
    Ok(())
}

/// Expand a leading `~` (alone or followed by `/`) to `$HOME`; the result must be absolute.
pub fn expand_home(path: &str) -> Result<PathBuf> {
    let p = if path == "~" || path.starts_with("~/") {
        let home = std::env::var_os("HOME")
            .ok_or_else(|| Error::Conflict(format!("cannot expand {path}: HOME is not set")))?;
        PathBuf::from(home).join(path.trim_start_matches('~').trim_start_matches('/'))
    } else {
        PathBuf::from(path)
    };
    if !p.is_absolute() {
        return Err(Error::Conflict(format!(
            "{path:?} must be absolute or start with ~/"
        )));
    }
    Ok(p)
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

/// What [`DirFd::lstat`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    File(StatKey),
    Dir,
    Symlink,
    /// A fifo, socket or device.
    Other,
}

impl Found {
    /// What `m` (from `lstat`) says the path holds.
    pub(crate) fn of(m: &std::fs::Metadata) -> Found {
        let t = m.file_type();
        if t.is_file() {
            Found::File(crate::scan::stat_of(m))
        } else if t.is_dir() {
            Found::Dir
        } else if t.is_symlink() {
            Found::Symlink
        } else {
            Found::Other
        }
    }
}

/// A directory opened to look at its entries by name (`O_PATH`, not through a symlink at its
/// last component): each lookup is one component from the directory, not a whole path from
/// `/`, which is most of what a `stat` of a deep path costs.
pub(crate) struct DirFd(std::fs::File);

impl DirFd {
    /// Open directory `path`; a symlink there is followed only if `follow` (a root that
    /// the user gave as a symlink).
    pub(crate) fn open(path: &Path, follow: bool) -> std::io::Result<DirFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | nofollow)
            .open(path)
            .map(DirFd)
    }

    /// `lstat` of entry `name`.
    pub(crate) fn lstat(&self, name: &str) -> std::io::Result<Found> {
        use std::os::fd::AsRawFd;
        let name = std::ffi::CString::new(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, a NUL-terminated name and a buffer of the right type;
        // the buffer is read only after the call succeeded and so filled it.
        let st = unsafe {
            if libc::fstatat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            st.assume_init()
        };
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Found::File(StatKey {
                size: st.st_size as u64,
                mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
                ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
                ino: st.st_ino,
            }),
            libc::S_IFDIR => Found::Dir,
            libc::S_IFLNK => Found::Symlink,
            _ => Found::Other,
        })
    }

    /// The target of symlink `name`.
    pub(crate) fn read_link(&self, name: &str) -> std::io::Result<PathBuf> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStringExt;
        let name = std::ffi::CString::new(name)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: a valid descriptor, a NUL-terminated name, and `buf` is writable for the
        // length given.
        let n = unsafe {
            libc::readlinkat(
                self.0.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(std::ffi::OsString::from_vec(buf)))
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
    fn symlink_targets_must_stay_inside_the_tree() {
        for (path, target) in [
            ("out/a/l", "../b"),
            ("out/a/l", "../../out/b"),
            ("out/l", "sub/file"),
            ("out/l", "./x/./y/"),
            ("out/a/b/l", "../../c"),
        ] {
            let floor = 1;
            match (check_symlink_target(path, target, floor), target) {
                (Err(why), "../../out/b") => assert!(why.contains("climbs"), "{why}"),
                (r, _) => r.unwrap_or_else(|why| panic!("{path} -> {target}: {why}")),
            }
        }
        for (path, target, floor) in [
            ("out/l", "/etc", 1),
            ("out/l", "..", 1),
            ("out/a/l", "../../x", 1),
            ("out/l", "x/../..", 1),
            ("out/l", "s/../x", 1),
            ("out", "anything", 1),
            ("l", "../x", 0),
            ("out/l", "", 1),
        ] {
            assert!(
                check_symlink_target(path, target, floor).is_err(),
                "{path} -> {target} accepted"
            );
        }
        check_symlink_target("l", "x", 0).unwrap();
        check_symlink_target("a/l", "../x", 0).unwrap();
    }

    #[test]
    fn within_matches_whole_components() {
        assert!(within("out", "out"));
        assert!(within("out/a", "out"));
        assert!(!within("outside", "out"));
        assert!(!within("o", "out"));
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
