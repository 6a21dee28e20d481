//! Persisted state files (the source's chunk index and sync state, the sink's index): bincode
//! with a protocol version, written atomically (temp file + rename in the same directory). A
//! missing, corrupt or older file reads as "no state": these are caches, and losing one costs a
//! rescan, never data.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext, Result};

/// Load a state file; `None` when it is missing or unreadable (logged). Decoded as it is
/// decompressed: neither the file nor its decompressed bytes are held whole, and a `T` of
/// only the leading fields of what was saved (in order) decompresses and decodes no more than
/// they take. Encoded with bincode's own derives, which write what serde would (see `wire`).
pub fn load<T: bincode::Decode<()>>(path: &Path) -> Option<T> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("cannot read {}: {e}; starting from scratch", path.display());
            return None;
        }
    };
    let raw = match zstd::stream::read::Decoder::new(f) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("cannot read {}: {e}; starting from scratch", path.display());
            return None;
        }
    };
    // bincode reads a few bytes at a time: buffer the decoder's output, and decode from the
    // buffer itself (bincode's `Reader` for a `BufReader` peeks at it for varints, instead of
    // reading them a byte at a time).
    let mut raw = std::io::BufReader::with_capacity(64 << 10, raw);
    match bincode::decode_from_reader(&mut raw, bincode::config::standard()) {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!(
                "{} is unreadable ({e}); starting from scratch",
                path.display()
            );
            None
        }
    }
}

/// Save a state file atomically, creating its directory. Encoded as it is compressed and
/// written: the encoding is never held whole.
pub fn save<T: bincode::Encode>(path: &Path, value: &T) -> Result<()> {
    prepare(path, value)?.commit()
}

/// A state file written beside its place, not yet in it: [`Prepared::commit`] puts it there;
/// dropped uncommitted, it is removed and the old file stays.
#[must_use = "a prepared state file takes effect only when committed"]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Prepared {
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).ctx("rename", &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The zstd level state files are written at (see [`prepare`]).
const INDEX_LEVEL: i32 = -1;

/// Write a state file's new version beside it (see [`save`]), to be put in place later.
pub fn prepare<T: bincode::Encode>(path: &Path, value: &T) -> Result<Prepared> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Conflict(format!("{} has no parent directory", path.display())))?;
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    remove_stale_temps(dir);
    let prepared = Prepared {
        tmp: dir.join(format!(".{name}.tmp{}", std::process::id())),
        path: path.to_path_buf(),
        committed: false,
    };
    let tmp = &prepared.tmp;
    let f = std::fs::File::create(tmp).ctx("create", tmp)?;
    // zstd's fast level -1: on 100k files (`cargo bench --bench manifest -- index`) saves in
    // 27-30 ms against 32-36 at level 1 and loads in 19-21 against 23-25, for 1.4% more bytes
    // (the hashes do not compress at any level). Any level reads back the same way.
    let z = zstd::stream::write::Encoder::new(f, INDEX_LEVEL).ctx("compress", tmp)?;
    let mut w = std::io::BufWriter::with_capacity(64 << 10, z);
    bincode::encode_into_std_write(value, &mut w, bincode::config::standard()).map_err(
        |e| match e {
            bincode::error::EncodeError::Io { inner, .. } => Error::io("write", tmp, inner),
            e => Error::Protocol(format!("cannot encode {}: {e}", path.display())),
        },
    )?;
    let z = w
        .into_inner()
        .map_err(|e| Error::io("write", tmp, e.into_error()))?;
    z.finish().ctx("write", tmp)?;
    Ok(prepared)
}

/// Remove the temp files (`.NAME.tmpPID`) that processes no longer running left in `dir`, a
/// directory of mtr's state (a process that exits while writing one, such as mtr leaving after
/// a failed connect while its early scan saves the index, never gets to remove it). Once per
/// directory in a process: the sink writes a file per long chunk list into one directory, and
/// listing it for each would cost the square of their number.
fn remove_stale_temps(dir: &Path) {
    static CHECKED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let first = CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir.to_path_buf());
    if !first {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for de in rd.flatten() {
        let file = de.file_name();
        let Some(pid) = file
            .to_str()
            .filter(|f| f.starts_with('.'))
            .and_then(|f| f.rsplit_once(".tmp"))
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(de.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SyncState;

    #[test]
    fn state_round_trips_and_corruption_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/state");
        let s = SyncState {
            protocol: 1,
            token: Some([3; 32]),
            entries: vec![],
        };
        save(&p, &s).unwrap();
        let back: SyncState = load(&p).unwrap();
        assert_eq!(back.token, s.token);
        #[derive(bincode::Decode)]
        struct Head {
            protocol: u32,
            token: Option<crate::wire::Hash>,
        }
        let head: Head = load(&p).unwrap();
        assert_eq!((head.protocol, head.token), (1, s.token));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load::<SyncState>(&p).is_none());
        assert!(load::<SyncState>(&d.path().join("missing")).is_none());
    }

    #[test]
    fn temp_files_of_exited_processes_are_removed_at_the_next_save() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        // A child that has exited (and been reaped) has no process any more.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = d.path().join(format!(".state.tmp{dead}"));
        let ours = d.path().join(format!(".state.tmp{}", std::process::id()));
        // Process 1 always runs: its temp file may be being written.
        let running = d.path().join(".state.tmp1");
        // Another state file's, in the same directory of mtr's state.
        let other = d.path().join(format!(".other.tmp{dead}"));
        // Not a temp file of ours.
        let foreign = [
            d.path().join(format!("notes.tmp{dead}")),
            d.path().join(".state.tmpfile"),
        ];
        for f in [&stale, &running, &other].into_iter().chain(&foreign) {
            std::fs::write(f, b"half").unwrap();
        }
        let prepared = prepare(&p, &7u32).unwrap();
        assert!(!stale.exists(), "a dead process's temp file stays");
        assert!(
            !other.exists(),
            "a dead process's temp file of another state file stays"
        );
        assert!(ours.exists(), "our own temp file is the one being written");
        assert!(
            running.exists(),
            "a running process's temp file was removed"
        );
        for f in &foreign {
            assert!(f.exists(), "{} is not a temp file of mtr's", f.display());
        }
        prepared.commit().unwrap();
        assert_eq!(load::<u32>(&p), Some(7));
    }
}
