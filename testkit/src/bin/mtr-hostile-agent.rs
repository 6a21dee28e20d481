//! A hostile `mtr-agent` for mtr's download tests. Installed in place of the real agent, it
//! speaks the real protocol as `mtr-agent send` but offers what a real agent never sends. The
//! scenario is the file name of the requested path:
//!
//! - `escape`: a file at `../escape`, beside the destination's parent;
//! - `absolute`: a file at an absolute path, `pwned` in the requested path's directory;
//! - `sibling`: a file beside the destination instead of in it;
//! - `symlink`: the destination directory, a symlink in it to `/etc`, then a file through it;
//! - anything else: the destination as a directory holding `ok.txt`, as a real agent would.
//!
//! It serves the chunks the sink asks for, and stops when the sink reports an error (which it
//! echoes on stderr). Any other subcommand exits with status 2.

use std::io::Write;
use std::path::Path;

use protocol::chunker::{self, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::compress::Codec;
use protocol::wire::{
    Entry, EntryKind, FromSink, Op, SendRequest, ToSink, MAGIC, PROTOCOL_VERSION,
};

fn main() {
    if std::env::args().nth(1).as_deref() != Some("send") {
        eprintln!("mtr-hostile-agent: only `send` is implemented");
        std::process::exit(2);
    }
    let mut stdout = std::io::stdout();
    stdout.write_all(MAGIC).unwrap();
    stdout.flush().unwrap();
    let mut r = FrameReader::new(std::io::stdin());
    let mut w = FrameWriter::new(stdout);
    let req: SendRequest = r.msg().expect("a send request");
    w.msg(&ToSink::Hello {
        protocol: PROTOCOL_VERSION,
        version: req.version.clone(),
        root: req.path.clone(),
        chunker: Chunker::default().id(),
    })
    .unwrap();
    w.flush().unwrap();
    let _: FromSink = r.msg().expect("HelloAck");

    let name = req.name.as_str();
    let data = b"written by a hostile server\n".as_slice();
    let ops = match Path::new(&req.path).file_name().and_then(|n| n.to_str()) {
        Some("escape") => vec![file("../escape", data)],
        Some("absolute") => {
            let dir = Path::new(&req.path).parent().unwrap();
            vec![file(dir.join("pwned").to_str().unwrap(), data)]
        }
        Some("sibling") => vec![file("neighbour.txt", data)],
        Some("symlink") => vec![
            dir(name),
            link(&format!("{name}/etc"), "/etc"),
            file(&format!("{name}/etc/mtr-hostile-pwned"), data),
        ],
        _ => vec![dir(name), file(&format!("{name}/ok.txt"), data)],
    };
    w.msg(&ToSink::Ops { ops }).unwrap();
    w.flush().unwrap();
    loop {
        match r.msg::<FromSink>() {
            Ok(FromSink::Need { hashes }) => {
                for h in hashes {
                    w.data(&h, Codec::Raw, data.len() as u32, data).unwrap();
                }
                w.msg(&ToSink::DataEnd).unwrap();
                w.flush().unwrap();
            }
            Ok(FromSink::BatchDone) => {
                w.msg(&ToSink::Commit).unwrap();
                w.flush().unwrap();
            }
            Ok(FromSink::Committed { .. }) => {
                w.msg(&ToSink::Bye).unwrap();
                w.flush().unwrap();
                return;
            }
            Ok(FromSink::Error { message }) => {
                eprintln!("mtr-hostile-agent: refused: {message}");
                return;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                eprintln!("mtr-hostile-agent: {e}");
                return;
            }
        }
    }
}

/// A file of `data` (one chunk: it is small).
fn file(path: &str, data: &[u8]) -> Op {
    let chunks = chunker::specs(&Chunker::default().chunk(data));
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::File {
                size: data.len() as u64,
                mode: 0o644,
                mtime_ns: 0,
                digest: chunker::file_digest(&chunks),
            },
        },
        chunks: Some(chunks),
    }
}

fn dir(path: &str) -> Op {
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Dir,
        },
        chunks: None,
    }
}

fn link(path: &str, target: &str) -> Op {
    Op::Upsert {
        entry: Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        },
        chunks: None,
    }
}
