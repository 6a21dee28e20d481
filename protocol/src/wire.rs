//! Every type that crosses a process boundary: protocol messages and the persisted index and
//! state files. Nothing outside this module derives `Serialize`/`Deserialize`. Changing any type
//! here changes the format: bump [`PROTOCOL_VERSION`]. The one exception is a message variant
//! added at the end of its enum, which leaves every other encoding as it was: mtr always runs
//! the agent it carries (installed under its build's hash), so both ends know the new variant,
//! and the persisted formats, which the version also guards, stay valid.
//!
//! Persisted types also derive bincode's own `Encode`/`Decode`, which write and read the same
//! bytes as the serde path (tested below) but take a hash's 32 bytes in one call instead of
//! 32: loading the index of 100k files is most of a no-op's work on both sides, and saving it
//! part of every sync's commit.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol and of the persisted formats. Both peers must agree exactly.
pub const PROTOCOL_VERSION: u32 = 3;

/// Written by the agent on stdout before any frame, so the client can skip shell noise that a
/// login script printed before the agent started.
pub const MAGIC: &[u8; 12] = b"\x00MTR-AGENT\x01\n";

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// What a path in a tree is.
#[derive(
    Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, PartialEq, Eq, Hash,
)]
pub enum EntryKind {
    /// A directory (every directory is listed, so empty ones survive).
    Dir,
    /// A regular file. `digest` is the hash of its chunk list (see `chunker::file_digest`).
    File {
        size: u64,
        /// Permission bits (`mode & 0o777`).
        mode: u32,
        mtime_ns: i64,
        digest: Hash,
    },
    /// A symbolic link, kept as a link; its target is never followed.
    Symlink { target: String },
}

/// One path of a tree, relative to its root, `/`-separated, valid UTF-8.
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

/// One chunk of a file: its hash and length. Offsets follow from the order.
#[derive(
    Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ChunkSpec {
    pub hash: Hash,
    pub len: u32,
}

/// A change the source asks the sink to make.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or update `entry`. For files whose content the sink may not hold, `chunks` lists
    /// the chunks in order; `None` means "content unchanged, update metadata".
    Upsert {
        entry: Entry,
        chunks: Option<Vec<ChunkSpec>>,
    },
    /// Create `entry` by renaming `from`, a path the sink holds that the same sync deletes (a
    /// rename on the source's side): a file of the same content, or a directory whose every
    /// path has a counterpart under `entry`. A directory's move stands for the paths under it
    /// that are the same as their counterparts under `from`: neither their upserts nor the
    /// counterparts' deletes are sent (what differs follows as ops of its own). When `from`
    /// cannot serve (changed on the sink's side, or holding files mtr did not write) this is
    /// an `Upsert` of `entry` with `chunks`, and `from` is left for its `Delete`; a directory
    /// the sink does not move it names in [`FromSink::Refused`], and the source then sends
    /// what the move stood for.
    Move {
        from: String,
        entry: Entry,
        chunks: Option<Vec<ChunkSpec>>,
    },
    /// Delete a path the sink wrote earlier (a directory only once it is empty of mtr's files).
    Delete { path: String },
    /// Stop tracking a path the sink wrote earlier without touching it (it became excluded:
    /// excluded paths are neither sent nor deleted).
    Forget { path: String },
    /// An `Upsert` of a file whose chunk list is what its [`ToSink::Prefill`]s listed, in
    /// order of offset (the last prefill sent for an offset counting): a long file that
    /// changed does not send its list twice.
    UpsertPrefilled { entry: Entry },
}

/// Chunks a session's prefills may list in all (~64 GB of files; their lists cost the sink
/// ~36 MB): the source sends no more, and a sink refuses more.
pub const MAX_PREFILL_CHUNKS: usize = 1 << 20;

/// Source → sink messages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToSink {
    /// First message. `root` is the sink's root directory (remote_dir); `~/` is expanded there.
    /// From a download's source it is the path being sent, for messages: mtr's sink writes
    /// where mtr decided, never where the peer says.
    Hello {
        protocol: u32,
        version: String,
        root: String,
        chunker: ChunkerId,
    },
    /// Ask the sink for every entry it holds (answered by `IndexBatch`* then `IndexEnd`).
    ListIndex,
    /// A batch of changes; answered by `Need`.
    Ops { ops: Vec<Op> },
    /// All chunks the last `Need` asked for have been sent (as data frames).
    DataEnd,
    /// Make the sync durable and report the new tree token.
    Commit,
    /// The changes a dry run would make, instead of `Ops` (a download's source tells its
    /// sink, which prints them).
    Plan { changes: Vec<Change> },
    /// Paths the source left out (special files, names that are not UTF-8), for the user.
    Warnings { messages: Vec<String> },
    /// A fatal error on the source's side; the session ends after it.
    Error { message: String },
    /// End of session.
    Bye,
    /// Before the first `Ops`, while the source is still reading: the chunks of one segment of
    /// a long file that changed (`size` bytes now), starting at `offset`. The sink may start
    /// building the file's new version from the chunks its recorded version holds; the file's
    /// `Upsert` later says what it is, and only what a prefill wrote exactly as listed there
    /// is kept. Answered by [`FromSink::PrefillNeed`]; the chunks it names follow as data
    /// frames, before the source's next message that is not a `Prefill` (the source may tell
    /// the next segment first, so the sink answers it while these travel).
    Prefill {
        path: String,
        size: u64,
        offset: u64,
        chunks: Vec<ChunkSpec>,
    },
    /// The sync is not a no-op: ops follow once the source has made its diff. Sent as soon as
    /// the source knows, so the sink reads its records meanwhile. Not answered.
    ChangesFollow,
}

/// One line of a sync plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new path.
    Add(String),
    /// A path whose content changed.
    Update(String),
    /// Only metadata (mode, mtime) changed.
    Touch(String),
    Delete(String),
}

/// mtr → `mtr-agent send`: the first message of a download, which makes the agent the source
/// of one path. The agent answers with [`ToSink::Hello`] (its own versions, and the path
/// resolved in `root`), then runs a source session whose sink is mtr.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SendRequest {
    pub protocol: u32,
    pub version: String,
    /// The path to send: absolute, or starting with `~` (expanded on the agent's side).
    pub path: String,
    /// The name of the tree's one top-level entry: the file itself, or the directory holding
    /// the tree (the local destination's file name, so the sink never renames anything).
    pub name: String,
    /// Compute the plan and send it as [`ToSink::Plan`]; change nothing.
    pub dry_run: bool,
}

/// Sink → source messages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FromSink {
    HelloAck {
        protocol: u32,
        version: String,
        /// Absolute path of the root on the sink.
        root: String,
        /// Token of the tree as of the last commit, if the sink has one.
        token: Option<Hash>,
        /// Paths the sink wrote whose stat no longer matches what it recorded (changed or removed
        /// on the sink's side since).
        dirty: Vec<String>,
    },
    IndexBatch {
        entries: Vec<Entry>,
    },
    IndexEnd,
    /// The chunks of the last `Ops` batch the sink lacks, in the order it wants them.
    Need {
        hashes: Vec<Hash>,
    },
    /// The data of the last batch is in place.
    BatchDone,
    Committed {
        token: Hash,
        stats: SinkStats,
    },
    /// A fatal error; the session ends after it.
    Error {
        message: String,
    },
    /// Before the `Need` of a batch: the directories of its [`Op::Move`]s that the sink did not
    /// move (built as new, empty directories instead). The source sends the upserts and
    /// deletes those moves stood for in the batches that follow.
    Refused {
        moves: Vec<String>,
    },
    /// The answer to a [`ToSink::Prefill`]: the chunks of its segment the sink holds nowhere,
    /// in the order it wants them (none when it does not prefill the file; none already asked
    /// for by an earlier answer). The source sends them as data frames right away, so they
    /// travel while it still reads the rest of the tree; any it does not send (or that do not
    /// verify) the file's batch asks for again.
    PrefillNeed {
        hashes: Vec<Hash>,
    },
}

/// What the sink did, for the client's summary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub files_written: u64,
    pub bytes_written: u64,
    pub bytes_copied_locally: u64,
    pub bytes_received: u64,
    pub deleted: u64,
    /// The sink process's peak resident memory, in KiB.
    pub peak_rss_kib: u64,
}

/// Which chunking parameters a peer uses; both must agree for chunk hashes to match.
#[derive(
    Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ChunkerId {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub segment: u64,
}

/// The sink's persisted record of a path it wrote.
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, PartialEq, Eq)]
pub struct SinkRecord {
    pub entry: Entry,
    /// Chunks of a file (empty for dirs and symlinks).
    pub chunks: Vec<ChunkSpec>,
    /// Stat of the file as the sink left it; a mismatch means someone else changed it.
    pub stat: StatKey,
}

/// The fields of `stat` that tell whether a file changed since it was recorded.
#[derive(
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// The sink's persisted state (`<root>/.mtr-sync/index`).
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, Default)]
pub struct SinkIndex {
    pub protocol: u32,
    pub token: Option<Hash>,
    pub records: Vec<SinkRecord>,
}

/// The leading fields of a [`SinkIndex`]: decoding one reads no record.
#[derive(bincode::Decode, Clone, Debug, Default)]
pub struct SinkIndexHead {
    pub protocol: u32,
    pub token: Option<Hash>,
}

/// The source's persisted chunk index for one local tree: stat → chunks, so unchanged files are
/// never re-read.
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, Default)]
pub struct SourceIndex {
    pub protocol: u32,
    pub chunker: Option<ChunkerId>,
    /// When the scan that produced this index started; entries whose mtime is not clearly
    /// older are re-hashed next time (a write in the same clock tick would be invisible).
    pub scanned_at_ns: i64,
    pub files: Vec<SourceIndexEntry>,
}

/// A [`SourceIndex`] to save, borrowing its files: encodes to the same bytes.
#[derive(bincode::Encode, Debug)]
pub struct SourceIndexRef<'a> {
    pub protocol: u32,
    pub chunker: Option<ChunkerId>,
    pub scanned_at_ns: i64,
    pub files: &'a [SourceIndexEntry],
}

/// One file of a [`SourceIndex`].
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug)]
pub struct SourceIndexEntry {
    pub path: String,
    pub stat: StatKey,
    pub chunks: Vec<ChunkSpec>,
}

/// What the source remembers of a destination: the tree the sink acknowledged last.
#[derive(Serialize, Deserialize, bincode::Encode, bincode::Decode, Clone, Debug, Default)]
pub struct SyncState {
    pub protocol: u32,
    pub token: Option<Hash>,
    pub entries: Vec<Entry>,
}

/// mtr → `mtr-agent run` (batch mode): the command to supervise, then its input and control.
/// The agent answers nothing: after its greeting, its stdout and stderr are the command's.
/// Signal numbers are the ones Linux and the BSDs share (HUP 1, INT 2, QUIT 3, KILL 9, PIPE 13,
/// TERM 15).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToRunner {
    /// First message: run `$SHELL -c script` in a new process group, with `env` added.
    /// `heartbeat_ms`: when nothing arrives from mtr for that long while the agent is reading,
    /// mtr is taken as gone (0: never); mtr sends `Ping` well within it.
    Start {
        script: String,
        env: Vec<(String, String)>,
        heartbeat_ms: u32,
    },
    /// Bytes for the command's stdin.
    Stdin(Bytes),
    /// The command's stdin ends.
    StdinEof,
    /// Deliver this signal to the command's process group.
    Signal(i32),
    /// Stop the command: SIGTERM to its group, SIGKILL after a grace period.
    Kill,
    /// mtr is alive.
    Ping,
}

/// A byte string on the wire (one length and the bytes, not a sequence of numbers).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde writes for `value` (what older mtr saved), and what bincode's own derives
    /// write for what they read back from it: the same bytes when the two agree.
    fn reloaded<T: Serialize + bincode::Encode + bincode::Decode<()>>(
        value: &T,
    ) -> (Vec<u8>, Vec<u8>) {
        let cfg = bincode::config::standard();
        let saved = bincode::serde::encode_to_vec(value, cfg).unwrap();
        assert_eq!(saved, bincode::encode_to_vec(value, cfg).unwrap());
        let (back, used): (T, usize) = bincode::decode_from_slice(&saved, cfg).unwrap();
        assert_eq!(used, saved.len());
        (saved, bincode::encode_to_vec(&back, cfg).unwrap())
    }

    #[test]
    fn persisted_files_encode_and_decode_through_bincode_as_through_serde() {
        let stat = StatKey {
            size: 1 << 40,
            mtime_ns: -1_500_000_000,
            ctime_ns: i64::MAX,
            ino: 7,
        };
        let chunks = vec![
            ChunkSpec {
                hash: [0xab; 32],
                len: 65_536,
            },
            ChunkSpec {
                hash: [1; 32],
                len: 3,
            },
        ];
        let kinds = [
            EntryKind::Dir,
            EntryKind::File {
                size: 300,
                mode: 0o755,
                mtime_ns: -3,
                digest: [9; 32],
            },
            EntryKind::Symlink {
                target: "../é/x".into(),
            },
        ];
        let entries: Vec<Entry> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Entry {
                path: format!("dir/{i}"),
                kind: k.clone(),
            })
            .collect();
        let sink = SinkIndex {
            protocol: PROTOCOL_VERSION,
            token: Some([4; 32]),
            records: entries
                .iter()
                .map(|e| SinkRecord {
                    entry: e.clone(),
                    chunks: chunks.clone(),
                    stat,
                })
                .collect(),
        };
        let source = SourceIndex {
            protocol: PROTOCOL_VERSION,
            chunker: Some(ChunkerId {
                min: 1,
                avg: 2,
                max: 3,
                segment: 1 << 33,
            }),
            scanned_at_ns: -9,
            files: vec![SourceIndexEntry {
                path: "a".into(),
                stat,
                chunks,
            }],
        };
        let states = [
            SyncState {
                protocol: PROTOCOL_VERSION,
                token: None,
                entries: entries.clone(),
            },
            SyncState::default(),
        ];
        let (a, b) = reloaded(&sink);
        assert_eq!(a, b);
        let (a, b) = reloaded(&SinkIndex::default());
        assert_eq!(a, b);
        let (a, b) = reloaded(&source);
        assert_eq!(a, b);
        let borrowed = SourceIndexRef {
            protocol: source.protocol,
            chunker: source.chunker,
            scanned_at_ns: source.scanned_at_ns,
            files: &source.files,
        };
        let cfg = bincode::config::standard();
        assert_eq!(bincode::encode_to_vec(&borrowed, cfg).unwrap(), a);
        let (a, b) = reloaded(&SourceIndex::default());
        assert_eq!(a, b);
        for s in &states {
            let (a, b) = reloaded(s);
            assert_eq!(a, b);
        }
    }
}
