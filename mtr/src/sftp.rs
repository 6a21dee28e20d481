//! `sync: sftp`: the project mirrored over the SSH session's SFTP subsystem, in pure Rust — no
//! agent, no remote shell, no rsync. It is the engine for servers where `mtr-agent` cannot run
//! (another OS or architecture, `noexec` everywhere), and the one mtr falls back to there.
//!
//! - [`sync`] (`sftp/push.rs`): the local tree (walked by `protocol::scan`, with the same
//!   exclusion rules as the agent engine) against the record of what mtr left on the server;
//!   uploads what changed, deletes only what it uploaded.
//! - [`get`] (`sftp/pull.rs`): `mtr --get` as a native download that trusts nothing the server
//!   says about names and symlinks.
//!
//! This module holds what both directions share: [`Remote`], the SFTP session with mtr's path
//! rule (SFTP paths are relative to the login directory, so `~/x` is `x`), errors that name the
//! host and path, streaming transfers, and the atomic rename into place.
//!
//! Throughput: libssh2 cuts one `write` of a large buffer into 30 000-byte SFTP requests, sends
//! them all, and only then waits for the first acknowledgement; it returns what was
//! acknowledged and expects the rest of the same buffer on the next call. [`Remote::upload`]
//! keeps that buffer topped up from the local file, so [`PIPELINE`] bytes stay in flight for
//! the whole file instead of draining at every buffer boundary. Reads ask for up to four times
//! the buffer ahead (libssh2 caps that at 8 MiB). Either way a transfer is bounded by the link
//! and the server's channel window (2 MiB with OpenSSH), not by a round trip per request.

mod pull;
mod push;

use std::ffi::{c_char, c_int, c_ulong, c_void};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{ErrorCode, FileStat, OpenFlags, OpenType, Sftp};

use crate::ssh::Ssh;

pub use pull::get;
pub use push::sync;

/// Bytes an upload keeps in flight (libssh2 holds a copy of each request until it is acked).
const PIPELINE: usize = 8 << 20;
/// Read size of a download; libssh2 reads up to four times this ahead.
const READ_BUF: usize = 2 << 20;

// SFTP status codes (draft-ietf-secsh-filexfer-02 and later), as libssh2 reports them.
const FX_NO_SUCH_FILE: c_ulong = 2;
const FX_PERMISSION_DENIED: c_ulong = 3;
const FX_FAILURE: c_ulong = 4;
const FX_OP_UNSUPPORTED: c_ulong = 8;
const FX_NO_SUCH_PATH: c_ulong = 10;
/// libssh2's "the server answered with an SFTP error status".
const LIBSSH2_ERROR_SFTP_PROTOCOL: c_int = -31;

/// The remote path SFTP understands for a configured one: `~` and `~/x` become `.` and `x`
/// (the SFTP server starts in the login directory); anything else is taken as is.
pub(crate) fn sftp_path(path: &str) -> PathBuf {
    match path.strip_prefix('~') {
        Some("") | Some("/") => PathBuf::from("."),
        Some(rest) if rest.starts_with('/') => PathBuf::from(rest.trim_start_matches('/')),
        _ => PathBuf::from(path),
    }
}

/// Whether an SFTP error says the path does not exist.
pub(crate) fn is_not_found(e: &ssh2::Error) -> bool {
    matches!(e.code(), ErrorCode::SFTP(n) if n as c_ulong == FX_NO_SUCH_FILE || n as c_ulong == FX_NO_SUCH_PATH)
}

/// An SFTP error in words. SFTP version 3 (OpenSSH) reports most server-side failures —
/// a full disk, a quota, a name that is a directory — as a bare "failure".
pub(crate) fn describe(e: &ssh2::Error) -> String {
    match e.code() {
        ErrorCode::SFTP(n) => match n as c_ulong {
            FX_NO_SUCH_FILE | FX_NO_SUCH_PATH => "no such file or directory".into(),
            FX_PERMISSION_DENIED => "permission denied".into(),
            FX_FAILURE => "the server reported a failure (a full disk or quota, or a \
                           directory in the way?)"
                .into(),
            FX_OP_UNSUPPORTED => "the server does not support this operation".into(),
            5 => "the server did not understand the request".into(),
            6 | 7 => "the connection was lost".into(),
            11 => "it already exists".into(),
            12 => "the filesystem is read-only".into(),
            14 => "no space left on the server's filesystem".into(),
            15 => "disk quota exceeded".into(),
            18 => "the directory is not empty".into(),
            19 => "a path component is not a directory".into(),
            24 => "it is a directory".into(),
            other => format!("SFTP status {other}"),
        },
        ErrorCode::Session(_) => e.message().to_string(),
    }
}

/// The mode and modification time a transferred file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits (`mode & 0o777`).
    pub mode: u32,
    /// Seconds since the epoch: SFTP version 3 carries whole seconds only.
    pub mtime: u64,
}

impl Meta {
    fn stat(self) -> FileStat {
        FileStat {
            size: None,
            uid: None,
            gid: None,
            perm: Some(self.mode & 0o777),
            atime: Some(self.mtime),
            mtime: Some(self.mtime),
        }
    }
}

/// Seconds of a nanosecond mtime, as SFTP stores it (times before 1970 become 0).
pub(crate) fn mtime_secs(mtime_ns: i64) -> u64 {
    mtime_ns.div_euclid(1_000_000_000).max(0) as u64
}

/// The SFTP session on one server, with messages that name it.
pub(crate) struct Remote<'a> {
    ssh: &'a Ssh,
    sftp: Sftp,
    /// The channel for `posix-rename@openssh.com`, opened on first use.
    renamer: Option<Renamer<'a>>,
    /// The server lacks `posix-rename@openssh.com`: replacing is delete, then rename.
    no_posix_rename: bool,
}

impl<'a> Remote<'a> {
    /// Starts the SFTP subsystem on the connection.
    pub fn open(ssh: &'a Ssh) -> Result<Remote<'a>> {
        let sftp = ssh.session().sftp().map_err(|e| {
            anyhow!(
                "cannot start SFTP on {}: {}. The server must offer the sftp subsystem \
                 (`Subsystem sftp` in sshd_config), and a login shell that prints text for \
                 non-interactive sessions breaks it when the subsystem is an external \
                 sftp-server; otherwise use `sync: rsync`",
                ssh.display(),
                describe(&e)
            )
        })?;
        Ok(Remote {
            ssh,
            sftp,
            renamer: None,
            no_posix_rename: false,
        })
    }

    /// `user@host:port`, for messages.
    pub fn host(&self) -> &str {
        self.ssh.display()
    }

    /// `user@host:port:path`, for messages.
    pub fn show(&self, path: &Path) -> String {
        format!("{}:{}", self.host(), path.display())
    }

    /// `lstat`; `None` when nothing is there.
    pub fn lstat(&self, path: &Path) -> Result<Option<FileStat>> {
        match self.sftp.lstat(path) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("cannot stat", path, &e)),
        }
    }

    /// `stat` (follows symlinks); `None` when nothing is there.
    pub fn stat(&self, path: &Path) -> Result<Option<FileStat>> {
        match self.sftp.stat(path) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("cannot stat", path, &e)),
        }
    }

    /// `mkdir` (mode 0777 less the server's umask).
    pub fn mkdir(&self, path: &Path) -> std::result::Result<(), ssh2::Error> {
        self.sftp.mkdir(path, 0o777)
    }

    /// Creates `path` and its missing parents, following symlinks on the way (the configured
    /// directory is the user's choice, symlinks and all). True when `path` was created.
    pub fn mkdir_all(&self, path: &Path) -> Result<bool> {
        if self.stat(path)?.is_some_and(|st| st.is_dir()) {
            return Ok(false);
        }
        let mut at = PathBuf::new();
        let mut created = false;
        for comp in path.components() {
            at.push(comp);
            created = match self.stat(&at)? {
                Some(st) if st.is_dir() => false,
                Some(_) => bail!("{} exists and is not a directory", self.show(&at)),
                None => {
                    self.mkdir(&at)
                        .map_err(|e| self.error("cannot create directory", &at, &e))?;
                    true
                }
            };
        }
        Ok(created)
    }

    /// Sets the mode and mtime of `path`, following a symlink (callers `lstat` first).
    pub fn set_meta(&self, path: &Path, meta: Meta) -> Result<()> {
        self.sftp
            .setstat(path, meta.stat())
            .map_err(|e| self.error("cannot set the mode and time of", path, &e))
    }

    /// Sets the permission bits of `path`, following a symlink (callers `lstat` first).
    pub fn set_mode(&self, path: &Path, mode: u32) -> Result<()> {
        let stat = FileStat {
            size: None,
            uid: None,
            gid: None,
            perm: Some(mode & 0o777),
            atime: None,
            mtime: None,
        };
        self.sftp
            .setstat(path, stat)
            .map_err(|e| self.error("cannot set the mode of", path, &e))
    }

    /// Removes a file or symlink (a symlink itself, never its target).
    pub fn unlink(&self, path: &Path) -> std::result::Result<(), ssh2::Error> {
        self.sftp.unlink(path)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &Path) -> std::result::Result<(), ssh2::Error> {
        self.sftp.rmdir(path)
    }

    /// Creates a symlink at `link` whose target is `target`.
    pub fn symlink(&self, target: &str, link: &Path) -> Result<()> {
        // OpenSSH's server takes SSH_FXP_SYMLINK's two paths in the opposite order of the
        // draft (target first), and libssh2 sends them in the order given: target, then link.
        self.sftp
            .symlink(Path::new(target), link)
            .map_err(|e| self.error("cannot create symlink", link, &e))
    }

    /// The target of the symlink at `path`.
    pub fn readlink(&self, path: &Path) -> Result<PathBuf> {
        self.sftp
            .readlink(path)
            .map_err(|e| self.error("cannot read symlink", path, &e))
    }

    /// The names in directory `path` with their attributes (as the server reports them,
    /// `.` and `..` included), read in one pass.
    pub fn list(&self, path: &Path) -> Result<Vec<(PathBuf, FileStat)>> {
        let mut dir = self
            .sftp
            .opendir(path)
            .map_err(|e| self.error("cannot open directory", path, &e))?;
        let mut out = Vec::new();
        loop {
            match dir.readdir() {
                Ok(entry) => out.push(entry),
                // ssh2 reports the end of the listing as LIBSSH2_ERROR_FILE.
                Err(e) if e.code() == ErrorCode::Session(-16) => break,
                Err(e) => return Err(self.error("cannot list directory", path, &e)),
            }
        }
        Ok(out)
    }

    /// Uploads `src` (the local file `local`) to `dst` (created, or truncated, with mode 0600),
    /// then sets `meta` on it. `acked` hears how many bytes the server acknowledged as they are.
    pub fn upload(
        &self,
        mut src: std::fs::File,
        local: &Path,
        dst: &Path,
        meta: Meta,
        acked: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let mut out = self
            .sftp
            .open_mode(
                dst,
                OpenFlags::WRITE | OpenFlags::TRUNCATE,
                0o600,
                OpenType::File,
            )
            .map_err(|e| self.error("cannot create", dst, &e))?;
        let what = || format!("writing {}", self.show(dst));
        // `buf[start..end]` is what libssh2 has not acknowledged yet, or not seen: each call
        // must pass the unacknowledged bytes again, followed by new ones.
        let mut buf = vec![0u8; PIPELINE];
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            while !eof && end < buf.len() {
                match src.read(&mut buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", local.display()))
                    }
                }
            }
            if start == end {
                break;
            }
            let n = out
                .write(&buf[start..end])
                .map_err(|e| anyhow!("{}: {}", what(), io_describe(&e)))?;
            if n == 0 {
                bail!("{}: the server accepted no data", what());
            }
            start += n;
            total += n as u64;
            acked(n as u64);
            if start >= buf.len() / 2 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
        }
        out.setstat(meta.stat())
            .map_err(|e| self.error("cannot set the mode and time of", dst, &e))?;
        // Closing reports errors a filesystem may only notice then (NFS, quotas); ssh2's
        // `close` is hidden from its docs but is the only way to hear them.
        out.close()
            .map_err(|e| self.error("cannot finish writing", dst, &e))?;
        Ok(total)
    }

    /// Downloads `src` into `out`; `got` hears how many bytes arrived as they do.
    pub fn download(
        &self,
        src: &Path,
        out: &mut std::fs::File,
        local: &Path,
        got: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let mut file = self
            .sftp
            .open(src)
            .map_err(|e| self.error("cannot open", src, &e))?;
        let mut buf = vec![0u8; READ_BUF];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("downloading {}: {}", self.show(src), io_describe(&e)),
            };
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", local.display()))?;
            total += n as u64;
            got(n as u64);
        }
        Ok(total)
    }

    /// Reads all of the small file `path`, refusing one over `limit` bytes; `None` when there
    /// is no such file.
    pub fn read_small(&self, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        let mut file = match self.sftp.open(path) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error("cannot open", path, &e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("reading {}: {}", self.show(path), io_describe(&e)))?;
        if bytes.len() as u64 > limit {
            bail!("{} is larger than {limit} bytes", self.show(path));
        }
        Ok(Some(bytes))
    }

    /// Moves `from` to `to`, replacing what is there (a file or a symlink, never a
    /// directory) in one step, so `to` is always its old or its new version. Uses OpenSSH's
    /// `posix-rename@openssh.com`; a server without it gets delete-then-rename.
    pub fn rename_over(&mut self, from: &Path, to: &Path) -> Result<()> {
        let fail = |this: &Self, e: String| {
            anyhow!(
                "cannot move {} into place at {}: {e}",
                this.show(from),
                this.show(to)
            )
        };
        if !self.no_posix_rename {
            if self.renamer.is_none() {
                match Renamer::open(self.ssh) {
                    Ok(r) => self.renamer = Some(r),
                    Err(e) => {
                        log::debug!("no second SFTP channel on {}: {e}", self.host());
                        self.no_posix_rename = true;
                    }
                }
            }
            if let Some(r) = &self.renamer {
                match r.rename(from, to) {
                    Ok(()) => return Ok(()),
                    Err(RenameError::Unsupported) => {
                        log::debug!(
                            "{} lacks posix-rename@openssh.com: replacing files is not atomic there",
                            self.host()
                        );
                        self.no_posix_rename = true;
                    }
                    Err(RenameError::Status(code)) => {
                        let e = ssh2::Error::new(ErrorCode::SFTP(code as c_int), "rename");
                        return Err(fail(self, describe(&e)));
                    }
                    Err(RenameError::Session(msg)) => return Err(fail(self, msg)),
                }
            }
        }
        // SFTP version 3's RENAME refuses to replace: clear the way first.
        match self.sftp.unlink(to) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(fail(self, describe(&e))),
        }
        self.sftp
            .rename(from, to, None)
            .map_err(|e| fail(self, describe(&e)))
    }

    fn error(&self, what: &str, path: &Path, e: &ssh2::Error) -> anyhow::Error {
        anyhow!("{what} {}: {}", self.show(path), describe(e))
    }
}

/// An I/O error from an ssh2 file handle. ssh2 keeps only the message of its error there, so
/// the bare "failure" of SFTP version 3 gets its explanation back here.
fn io_describe(e: &std::io::Error) -> String {
    match e.to_string().as_str() {
        "failure" => describe(&ssh2::Error::new(
            ErrorCode::SFTP(FX_FAILURE as c_int),
            "failure",
        )),
        other => other.to_string(),
    }
}

/// Why a `posix-rename@openssh.com` failed.
enum RenameError {
    /// The server does not offer the extension.
    Unsupported,
    /// The server refused with this SFTP status.
    Status(c_ulong),
    /// The session failed (connection, protocol).
    Session(String),
}

/// libssh2 functions ssh2 does not wrap. They are in the libssh2 that `libssh2-sys` builds
/// and links statically (1.11), which is the default build.
mod ffi {
    use super::*;

    extern "C" {
        pub fn libssh2_sftp_init(session: *mut c_void) -> *mut c_void;
        pub fn libssh2_sftp_shutdown(sftp: *mut c_void) -> c_int;
        pub fn libssh2_sftp_last_error(sftp: *mut c_void) -> c_ulong;
        pub fn libssh2_sftp_posix_rename_ex(
            sftp: *mut c_void,
            source: *const c_char,
            source_len: usize,
            dest: *const c_char,
            dest_len: usize,
        ) -> c_int;
    }
}

/// A second SFTP channel, used only for `posix-rename@openssh.com`: ssh2 does not expose that
/// call, nor the raw handle of its own SFTP channel, but the libssh2 under it has the call.
/// It borrows the session and runs in blocking mode like every SFTP call of this module.
struct Renamer<'a> {
    session: &'a ssh2::Session,
    raw: NonNull<c_void>,
}

impl<'a> Renamer<'a> {
    fn open(ssh: &'a Ssh) -> std::result::Result<Renamer<'a>, String> {
        let session = ssh.session();
        let mut guard = session.raw();
        let sess: *mut _ = &mut *guard;
        // SAFETY: `sess` is the live session, locked by `guard` for the duration of the call
        // (the lock every ssh2 call takes). A null return is an error, reported below.
        let raw = unsafe { ffi::libssh2_sftp_init(sess.cast()) };
        drop(guard);
        match NonNull::new(raw) {
            Some(raw) => Ok(Renamer { session, raw }),
            None => Err(ssh2::Error::last_session_error(session)
                .map_or_else(|| "unknown error".to_string(), |e| e.message().to_string())),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> std::result::Result<(), RenameError> {
        let (from, to) = (from.as_os_str().as_bytes(), to.as_os_str().as_bytes());
        let guard = self.session.raw();
        // SAFETY: `raw` came from `libssh2_sftp_init` on this session and is shut down only in
        // `drop`; the session lock is held; the byte slices outlive the call, which reads
        // exactly the lengths given.
        let rc = unsafe {
            ffi::libssh2_sftp_posix_rename_ex(
                self.raw.as_ptr(),
                from.as_ptr().cast(),
                from.len(),
                to.as_ptr().cast(),
                to.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: as above.
        let status = unsafe { ffi::libssh2_sftp_last_error(self.raw.as_ptr()) };
        drop(guard);
        match (rc, status) {
            (LIBSSH2_ERROR_SFTP_PROTOCOL, FX_OP_UNSUPPORTED) => Err(RenameError::Unsupported),
            (LIBSSH2_ERROR_SFTP_PROTOCOL, status) => Err(RenameError::Status(status)),
            _ => Err(RenameError::Session(
                ssh2::Error::last_session_error(self.session).map_or_else(
                    || format!("libssh2 error {rc}"),
                    |e| e.message().to_string(),
                ),
            )),
        }
    }
}

impl Drop for Renamer<'_> {
    fn drop(&mut self) {
        let _guard = self.session.raw();
        // SAFETY: `raw` is this channel's handle, used by nothing else and not shut down yet;
        // the session (borrowed for 'a) is still alive and locked.
        unsafe { ffi::libssh2_sftp_shutdown(self.raw.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_relative_paths_are_relative_to_the_login_directory() {
        assert_eq!(sftp_path("~"), PathBuf::from("."));
        assert_eq!(sftp_path("~/"), PathBuf::from("."));
        assert_eq!(sftp_path("~/work/proj"), PathBuf::from("work/proj"));
        assert_eq!(sftp_path("/srv/proj"), PathBuf::from("/srv/proj"));
        assert_eq!(sftp_path("~other/x"), PathBuf::from("~other/x"));
    }

    #[test]
    fn mtimes_are_whole_seconds() {
        assert_eq!(mtime_secs(1_700_000_000_999_999_999), 1_700_000_000);
        assert_eq!(mtime_secs(-5), 0);
    }
}
