//! `mtr --get REMOTE_PATH [--to LOCAL_PATH]`: which remote path, and where it lands locally.
//! The engines do the transfer (`sync::get` for the agent, `rsync::get`, `sftp::get`); this
//! module only decides the two paths, the same way for all of them.
//!
//! - A relative remote path is under `remote_dir`; an absolute one or one starting with `~` is
//!   taken as is (`~` expands on the server).
//! - The local destination is `--to` when given: inside it when it is an existing directory
//!   or ends with `/`, else exactly that path. Without `--to`, the download goes inside the
//!   server's `download_dir`, else `defaults.download_dir`, else the current directory.
//! - A directory is downloaded as a directory of the same name (`--get out` → `./out/...`).

use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::exit::UsageError;

/// What to download and where to put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// The remote path: absolute, or starting with `~`. No trailing `/`.
    pub remote: String,
    /// The local path the remote file or directory becomes (absolute).
    pub local: PathBuf,
}

/// Resolves `--get REMOTE` and `--to` against the settings and the current directory.
pub fn plan(
    s: &Settings,
    remote: &str,
    to: Option<&Path>,
    cwd: &Path,
) -> Result<Download, UsageError> {
    if remote.is_empty() {
        return Err(UsageError("--get needs a remote path".into()));
    }
    if remote.contains('\0') {
        return Err(UsageError(format!("--get {remote:?}: NUL in the path")));
    }
    let joined = if remote.starts_with('/') || remote == "~" || remote.starts_with("~/") {
        remote.to_string()
    } else {
        format!("{}/{}", s.remote_dir.trim_end_matches('/'), remote)
    };
    let remote_path = normalize(&joined);
    let name = || match remote_path.rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "~" && n != ".." => Ok(n.to_string()),
        _ => Err(UsageError(format!(
            "--get {remote}: {remote_path} has no name to save it under; add --to LOCAL_PATH"
        ))),
    };
    let local = match to {
        Some(t) => {
            let t = cwd.join(t);
            let ends_with_slash = t.as_os_str().to_string_lossy().ends_with('/');
            if ends_with_slash || t.is_dir() {
                t.join(name()?)
            } else {
                t
            }
        }
        None => s
            .download_dir
            .clone()
            .unwrap_or_else(|| cwd.to_path_buf())
            .join(name()?),
    };
    Ok(Download {
        remote: remote_path,
        local,
    })
}

/// A warning when the download lands inside the project where the next sync would upload it
/// again (and overwrite the remote original if the job has changed it since): the destination
/// is under the project root and no exclude rule, `.gitignore` or `.mtrignore` covers it.
pub fn upload_hazard(s: &Settings, d: &Download) -> Option<String> {
    let rel = d.local.strip_prefix(&s.project_root).ok()?;
    let rel = rel.to_str()?;
    if rel.is_empty() {
        return None;
    }
    let filter = protocol::scan::Filter::new(
        &s.project_root,
        &protocol::scan::ScanOptions {
            excludes: s.excludes.clone(),
            respect_gitignore: s.respect_gitignore,
        },
    )
    .ok()?;
    if filter.excluded(rel, true) || filter.excluded(rel, false) {
        return None;
    }
    Some(format!(
        "{} is inside the project: the next sync uploads it back to the server, over what the \
         remote job may have written since; add `{rel}` to `exclude` (or set `download_dir` \
         outside the project) in {}",
        d.local.display(),
        s.describe_sources()
    ))
}

/// Removes `.` components, repeated and trailing slashes; `..` is kept (the server resolves it).
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests_support::settings_for;

    fn s(remote_dir: &str, download_dir: Option<&str>) -> Settings {
        let mut s = settings_for(remote_dir);
        s.download_dir = download_dir.map(PathBuf::from);
        s
    }

    #[test]
    fn relative_paths_are_under_remote_dir() {
        let d = plan(
            &s("/r/proj", None),
            "out/model.pt",
            None,
            Path::new("/here"),
        )
        .unwrap();
        assert_eq!(d.remote, "/r/proj/out/model.pt");
        assert_eq!(d.local, PathBuf::from("/here/model.pt"));
        let d = plan(&s("~/proj/", None), "./out//", None, Path::new("/here")).unwrap();
        assert_eq!(d.remote, "~/proj/out");
        assert_eq!(d.local, PathBuf::from("/here/out"));
    }

    #[test]
    fn absolute_and_home_paths_are_taken_as_is() {
        let d = plan(&s("/r", None), "/var/log/x.log", None, Path::new("/h")).unwrap();
        assert_eq!(d.remote, "/var/log/x.log");
        let d = plan(&s("/r", None), "~/notes.txt", None, Path::new("/h")).unwrap();
        assert_eq!(d.remote, "~/notes.txt");
        assert_eq!(d.local, PathBuf::from("/h/notes.txt"));
    }

    #[test]
    fn destination_precedence_is_to_then_download_dir_then_cwd() {
        let dl = s("/r", Some("/dl"));
        let d = plan(&dl, "a/b.bin", None, Path::new("/h")).unwrap();
        assert_eq!(d.local, PathBuf::from("/dl/b.bin"));
        let d = plan(&dl, "a/b.bin", Some(Path::new("x.bin")), Path::new("/h")).unwrap();
        assert_eq!(d.local, PathBuf::from("/h/x.bin"));
        let d = plan(&dl, "a/b.bin", Some(Path::new("sub/")), Path::new("/h")).unwrap();
        assert_eq!(d.local, PathBuf::from("/h/sub/b.bin"));
        let tmp = tempfile::tempdir().unwrap();
        let d = plan(&dl, "a/b.bin", Some(tmp.path()), Path::new("/h")).unwrap();
        assert_eq!(d.local, tmp.path().join("b.bin"));
    }

    #[test]
    fn downloads_into_the_synced_tree_are_flagged_unless_excluded() {
        let root = tempfile::tempdir().unwrap();
        let mut s = s("/r", None);
        s.project_root = root.path().to_path_buf();
        let inside = plan(&s, "out", None, root.path()).unwrap();
        let warning = upload_hazard(&s, &inside).expect("a warning");
        assert!(warning.contains("add `out` to `exclude`"), "{warning}");
        s.excludes.push("out/".into());
        assert_eq!(upload_hazard(&s, &inside), None);
        let outside = plan(&s, "out", Some(Path::new("/elsewhere/")), root.path()).unwrap();
        assert_eq!(upload_hazard(&s, &outside), None);
        std::fs::write(root.path().join(".gitignore"), "*.pt\n").unwrap();
        let ignored = plan(&s, "model.pt", None, root.path()).unwrap();
        assert_eq!(upload_hazard(&s, &ignored), None);
    }

    #[test]
    fn a_path_without_a_name_needs_to() {
        assert!(plan(&s("/r", None), "/", None, Path::new("/h")).is_err());
        assert!(plan(&s("/r", None), "~", None, Path::new("/h")).is_err());
        assert!(plan(&s("/r", None), "", None, Path::new("/h")).is_err());
        let d = plan(
            &s("/r", None),
            "~",
            Some(Path::new("home")),
            Path::new("/h"),
        )
        .unwrap();
        assert_eq!(d.local, PathBuf::from("/h/home"));
    }
}
