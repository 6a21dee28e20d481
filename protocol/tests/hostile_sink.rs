//! A hostile or broken sink (a fake agent speaking the real protocol) talking to a real
//! source, mtr's side of an upload: a sink that keeps asking for a batch's chunks, round after
//! round or many times in one round, is refused with an error that says so, and the data sent
//! stays bounded; an honest second round (chunks whose local copy turned out stale) still
//! works. Every session runs under a timeout, so a source that answers forever fails the test
//! instead of hanging it.

mod common;
use common::*;

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use protocol::chunker::Chunker;
use protocol::codec::{Frame, FrameReader, FrameWriter};
use protocol::scan::{Filter, NoProgress, ScanOptions};
use protocol::source::{self, Report, SourceConfig};
use protocol::wire::{FromSink, Hash, Op, SinkStats, ToSink, PROTOCOL_VERSION};

const VERSION: &str = "test";
/// How long a session may take before the test calls it hung (they take well under a second).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Rounds after which the fake sink gives up on its own, so a source without a bound ends
/// (and fails the test on its error and byte count) rather than sending forever.
const GIVE_UP: usize = 50;

/// A tree of incompressible files, several chunks each; returns its bytes.
fn populate(root: &Path) -> u64 {
    let mut total = 0;
    for (i, len) in [300_000usize, 200_000, 700_000, 5_000]
        .into_iter()
        .enumerate()
    {
        let data = noise(len, 11 + 2 * i as u64);
        std::fs::write(root.join(format!("f{i}.bin")), &data).unwrap();
        total += len as u64;
    }
    total
}

/// What the fake sink saw and did.
#[derive(Debug, Default)]
struct Seen {
    /// Distinct chunks in the batches it was offered.
    offered: usize,
    /// `Need` messages it sent (each answered by data, then `DataEnd`).
    rounds: usize,
    /// Chunks and their raw bytes received over all rounds.
    chunks: u64,
    bytes: u64,
    /// It committed (the source got through every batch).
    committed: bool,
    /// `ChangesFollow` came before the first `Ops`.
    told_early: bool,
}

/// What the fake sink answers in round `n` (0: the answer to `Ops`) of a batch whose distinct
/// chunks are `hashes`: `Some(list)` is a `Need` for `list`, `None` is `BatchDone`.
type Script = dyn Fn(usize, &[Hash]) -> Option<Vec<Hash>> + Send;

/// The fake agent: greets, lists an empty index, answers each batch as `script` says
/// (reading the data frames and `DataEnd` after each `Need`; before the first, `Refused` of
/// `refuse` when it is not empty), commits, and stops when the source hangs up or says `Bye`.
fn fake_sink(stream: UnixStream, refuse: Vec<String>, script: Box<Script>) -> Seen {
    let mut r = FrameReader::new(stream.try_clone().unwrap());
    let mut w = FrameWriter::new(stream);
    let mut seen = Seen::default();
    let root = match r.msg::<ToSink>() {
        Ok(ToSink::Hello { root, .. }) => root,
        other => panic!("expected Hello, got {other:?}"),
    };
    w.msg(&FromSink::HelloAck {
        protocol: PROTOCOL_VERSION,
        version: VERSION.into(),
        root,
        token: None,
        dirty: Vec::new(),
    })
    .unwrap();
    w.flush().unwrap();
    loop {
        // The source ends the session by hanging up when it fails.
        let Ok(m) = r.msg::<ToSink>() else {
            return seen;
        };
        match m {
            ToSink::ListIndex => {
                w.msg(&FromSink::IndexEnd).unwrap();
                w.flush().unwrap();
            }
            ToSink::Ops { ops } => {
                let mut hashes = Vec::new();
                let mut distinct = HashSet::new();
                for op in ops {
                    if let Op::Upsert {
                        chunks: Some(c), ..
                    }
                    | Op::Move {
                        chunks: Some(c), ..
                    } = op
                    {
                        hashes.extend(c.iter().map(|c| c.hash).filter(|h| distinct.insert(*h)));
                    }
                }
                seen.offered += hashes.len();
                if !refuse.is_empty() {
                    let moves = refuse.clone();
                    if w.msg(&FromSink::Refused { moves }).is_err() {
                        return seen;
                    }
                }
                let mut round = 0;
                loop {
                    let Some(need) = script(round, &hashes) else {
                        if w.msg(&FromSink::BatchDone)
                            .and_then(|()| w.flush())
                            .is_err()
                        {
                            return seen;
                        }
                        break;
                    };
                    if round == GIVE_UP {
                        return seen;
                    }
                    round += 1;
                    let wanted: HashSet<Hash> = need.iter().copied().collect();
                    if w.msg(&FromSink::Need { hashes: need })
                        .and_then(|()| w.flush())
                        .is_err()
                    {
                        return seen;
                    }
                    seen.rounds += 1;
                    loop {
                        match r.frame::<ToSink>() {
                            Ok(Some(Frame::Data(d))) => {
                                assert!(wanted.contains(&d.hash), "a chunk nobody asked for");
                                seen.chunks += 1;
                                seen.bytes += d.raw_len as u64;
                            }
                            Ok(Some(Frame::Msg(ToSink::DataEnd))) => break,
                            Ok(Some(Frame::Msg(m))) => {
                                panic!("expected data or DataEnd, got {m:?}")
                            }
                            Ok(None) | Err(_) => return seen,
                        }
                    }
                }
            }
            ToSink::Commit => {
                seen.committed = true;
                w.msg(&FromSink::Committed {
                    token: [0; 32],
                    stats: SinkStats::default(),
                })
                .unwrap();
                w.flush().unwrap();
            }
            ToSink::ChangesFollow => seen.told_early = seen.offered == 0,
            ToSink::Bye => return seen,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The real source syncs `root` to the fake sink running `script`: the source's result
/// (its error as displayed) and what the sink saw. Panics if the session outlasts [`TIMEOUT`].
fn session(root: &Path, script: Box<Script>) -> (Result<Report, String>, Seen) {
    session_refusing(root, Vec::new(), script)
}

/// [`session`] with a sink that says it refused the moves of `refuse`.
fn session_refusing(
    root: &Path,
    refuse: Vec<String>,
    script: Box<Script>,
) -> (Result<Report, String>, Seen) {
    let state = tempfile::tempdir().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let sink = std::thread::spawn(move || fake_sink(b, refuse, script));
    let (tx, rx) = mpsc::channel();
    let root: PathBuf = root.to_path_buf();
    let state_dir = state.path().to_path_buf();
    std::thread::spawn(move || {
        let result = (|| {
            let mut r = FrameReader::new(a.try_clone().unwrap());
            let mut w = FrameWriter::new(a);
            let ack = source::handshake(&mut r, &mut w, root.to_str().unwrap(), VERSION)?;
            let filter = Filter::new(&root, &ScanOptions::default())?;
            let cfg = SourceConfig {
                root: &root,
                filter: &filter,
                chunker: Chunker::default(),
                index_path: state_dir.join("index"),
                state_path: state_dir.join("state"),
                dry_run: false,
                pipeline: Default::default(),
            };
            let report = source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress)?;
            source::bye(&mut w)?;
            Ok::<_, protocol::Error>(report)
            // Returning drops both halves of the socket: the sink sees the end.
        })();
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    let result = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("the source still runs after {TIMEOUT:?}: it never refused"));
    let seen = sink.join().unwrap();
    (result, seen)
}

#[test]
fn a_sink_that_asks_for_the_same_chunks_forever_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let tree = populate(root.path());
    let (result, seen) = session(
        root.path(),
        Box::new(|_: usize, all: &[Hash]| Some(all.to_vec())),
    );
    let err = result.expect_err("a sink asking forever was answered to the end");
    println!(
        "the source ended after {} rounds, {} bytes sent: {err}",
        seen.rounds, seen.bytes
    );
    assert!(err.contains("asked again and again"), "{err}");
    assert!(err.contains("protocol violation"), "{err}");
    // Named, not dumped: no message in Debug form, no hashes.
    assert!(!err.contains("Need {") && !err.contains("hashes"), "{err}");
    assert!(seen.offered > 4, "the tree has several chunks: {seen:?}");
    assert!(!seen.committed);
    // Two rounds answered in full (the honest most), the third refused before any data.
    assert_eq!(seen.rounds, 3, "{seen:?}");
    assert_eq!(seen.bytes, 2 * tree, "{seen:?}");
    assert!(seen.bytes <= 2 * tree + (64 << 10), "{seen:?}");
}

#[test]
fn a_need_listing_each_chunk_over_and_over_is_refused_before_any_data() {
    let root = tempfile::tempdir().unwrap();
    populate(root.path());
    // One round: every chunk three times (more than twice the batch's distinct chunks).
    let (result, seen) = session(
        root.path(),
        Box::new(|_: usize, all: &[Hash]| {
            Some(all.iter().cycle().take(3 * all.len()).copied().collect())
        }),
    );
    let err = result.expect_err("a Need of three times the batch was answered");
    println!("refused: {err}");
    assert!(err.contains("asked again and again"), "{err}");
    assert_eq!(seen.rounds, 1, "{seen:?}");
    assert_eq!(
        seen.bytes, 0,
        "nothing sent for a refused request: {seen:?}"
    );
    assert!(!seen.committed);
}

#[test]
fn a_third_need_round_is_refused_even_for_one_chunk() {
    let root = tempfile::tempdir().unwrap();
    populate(root.path());
    let (result, seen) = session(
        root.path(),
        Box::new(|_: usize, all: &[Hash]| Some(all[..1].to_vec())),
    );
    let err = result.expect_err("a third round was answered");
    assert!(err.contains("asked again and again"), "{err}");
    assert!(err.contains("in 3 round(s)"), "{err}");
    assert_eq!(seen.rounds, 3, "{seen:?}");
    assert_eq!(
        seen.chunks, 2,
        "only the first two rounds answered: {seen:?}"
    );
}

#[test]
fn an_honest_second_round_for_some_chunks_is_answered() {
    let root = tempfile::tempdir().unwrap();
    let tree = populate(root.path());
    // All chunks, then (as if two local copies turned out stale) two of them again, then done.
    let script = |round: usize, all: &[Hash]| match round {
        0 => Some(all.to_vec()),
        1 => Some(all[..2].to_vec()),
        _ => None,
    };
    let (result, seen) = session(root.path(), Box::new(script));
    let report = result.expect("an honest second round was refused");
    assert!(seen.committed, "{seen:?}");
    assert!(seen.told_early, "no ChangesFollow before the ops: {seen:?}");
    assert_eq!(seen.rounds, 2, "{seen:?}");
    assert_eq!(report.chunks_sent, seen.offered as u64 + 2);
    assert!(seen.bytes > tree && seen.bytes < 2 * tree, "{seen:?}");
}

#[test]
fn a_sink_refusing_a_move_it_was_not_asked_for_is_refused() {
    // A first sync has no moves: a sink that says it refused one lies, and the source must
    // not send what such a move would have stood for.
    let root = tempfile::tempdir().unwrap();
    populate(root.path());
    let (result, seen) = session_refusing(
        root.path(),
        vec!["f0.bin".into()],
        Box::new(|round, hashes| (round == 0).then(|| hashes.to_vec())),
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("refused a move of \"f0.bin\" it was not asked to make"),
        "{err}"
    );
    assert_eq!(seen.chunks, 0, "data was sent after a false refusal");
    assert!(!seen.committed);
}
