//! The data behind the engine's parameters: FastCDC's average chunk size (with min = avg/4 and
//! max = 4 avg, as the chunker uses) and the zstd level, measured on the e2e bench's kinds of
//! data. Prints two tables and writes `target/bench-params.json`.
//!
//! ```text
//! cargo bench --bench params
//! ```
//!
//! Chunk sizes, on a 256 MiB fp16 checkpoint and 64 MiB of source-like text:
//! - `chunk+hash MB/s`: one core, FastCDC + BLAKE3 (what a scan costs per changed byte);
//! - `manifest B/GB`: chunk-list bytes per GB of data (36 B a chunk: the index, the manifest
//!   sent in every batch, the sink's records);
//! - `10% overwrite`: bytes a sync would send (chunks the receiver lacks) after 10% of the
//!   checkpoint is overwritten in 32 scattered places, over the bytes changed;
//! - `100 B insert`: bytes sent after 100 bytes are inserted at the checkpoint's head;
//! - `text edit`: bytes sent after 200 edits of 40 bytes in the text, over the bytes changed.
//!
//! zstd levels, on 64 KiB chunks of each input: compressed/raw and MB/s of raw input on one
//! core; `1 Gbit s/GB` is the time one GB takes through a 1 Gbit/s link with 2 cores
//! compressing: the larger of compress time and wire time (the e2e link).
//!
//! The send pipeline ([`source::Pipeline`]: chunks read and compressed per window, windows
//! ready ahead of the writer): a first sync of the e2e project at scale 0.15 (1.5k files and a
//! 0.3 GB checkpoint), both roles in this process over a socket pair relayed at 1 Gbit/s
//! (paced by a token bucket; no ssh cipher) and unpaced, into `/dev/shm` (the disk's writeback
//! is noise here); wall seconds, medians of 5.
//! `MTR_BENCH_PIPELINE=0` skips it.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use mtr_benches::inputs;
use mtr_benches::project::{Layout, Project};
use protocol::chunker::{ChunkRef, Chunker};
use protocol::codec::{FrameReader, FrameWriter};
use protocol::scan::{Filter, NoProgress, ScanOptions};
use protocol::source::{self, Pipeline, SourceConfig};
use serde_json::json;

const CKPT: usize = 256 << 20;
const TEXT: usize = 64 << 20;
const LINK_BYTES_PER_S: f64 = 1e9 / 8.0;
const CORES: f64 = 2.0;

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Bytes of `new`'s chunks whose hash is not among `old`'s: what a receiver holding `old` lacks.
fn missing(old: &[ChunkRef], new: &[ChunkRef]) -> u64 {
    let have: HashSet<_> = old.iter().map(|c| c.hash).collect();
    new.iter()
        .filter(|c| !have.contains(&c.hash))
        .map(|c| c.len as u64)
        .sum()
}

/// Copy `from` to `to`, at most `rate` bytes a second (`None`: as fast as they go), until
/// `from` ends; then shut `to`'s writing half.
fn relay(mut from: UnixStream, mut to: UnixStream, rate: Option<f64>) {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A first sync of `src` into a new directory with `pipeline`, the source's bytes paced at
/// `rate`: its wall time in seconds, and the chunk payload sent in bytes.
fn first_sync(src: &Path, filter: &Filter, pipeline: Pipeline, rate: Option<f64>) -> (f64, u64) {
    // In memory when it can be: the disk's writeback is noise to this question.
    let dst = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (source_end, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, sink_end) = UnixStream::pair().unwrap();
    let up = {
        let (from, to) = (
            relay_in.try_clone().unwrap(),
            relay_out.try_clone().unwrap(),
        );
        std::thread::spawn(move || relay(from, to, rate))
    };
    let down = std::thread::spawn(move || relay(relay_out, relay_in, None));
    let sink = std::thread::spawn(move || {
        let r = sink_end.try_clone().unwrap();
        protocol::sink::serve(r, sink_end, "params")
    });
    let t = Instant::now();
    let mut r = FrameReader::new(source_end.try_clone().unwrap());
    let mut w = FrameWriter::new(source_end.try_clone().unwrap());
    let ack = source::handshake(&mut r, &mut w, dst.path().to_str().unwrap(), "params").unwrap();
    let cfg = SourceConfig {
        root: src,
        filter,
        chunker: Chunker::default(),
        // The local index is kept: each run hashes nothing, as a first sync of a tree
        // already scanned.
        index_path: src.with_extension("index"),
        state_path: state.path().join("state"),
        dry_run: false,
        pipeline,
    };
    let report = source::sync(&mut r, &mut w, &ack, &cfg, &NoProgress).unwrap();
    source::bye(&mut w).unwrap();
    drop((r, w));
    let _ = source_end.shutdown(std::net::Shutdown::Write);
    sink.join().unwrap().unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(source_end);
    up.join().unwrap();
    down.join().unwrap();
    assert!(report.chunks_sent > 0, "the sync sent nothing");
    (secs, report.payload_bytes_sent)
}

/// The pipeline table (see the header).
fn pipeline_sweep(out: &mut String) -> Vec<serde_json::Value> {
    let tree = tempfile::tempdir().unwrap();
    let src = tree.path().join("project");
    Project::generate(&src, Layout::scaled(0.15)).unwrap();
    let filter = Filter::new(&src, &ScanOptions::default()).unwrap();
    // Scanned (and indexed) once, before the runs.
    first_sync(&src, &filter, Pipeline::default(), None);
    writeln!(
        out,
        "{:>7} {:>6} {:>11} {:>9} {:>11} {:>9} {:>16}",
        "window", "depth", "1Gb wall s", "1Gb MB", "unpaced s", "unp. MB", "ahead MiB (max)"
    )
    .unwrap();
    let mut rows = Vec::new();
    for window in [8usize, 16, 32, 64, 128, 256] {
        for depth in [1usize, 2, 4] {
            let p = Pipeline { window, depth };
            let mut sent = (0, 0);
            let paced = median_of(5, || {
                sent.0 = first_sync(&src, &filter, p, Some(LINK_BYTES_PER_S)).1;
            });
            let unpaced = median_of(5, || {
                sent.1 = first_sync(&src, &filter, p, None).1;
            });
            let mb = |b: u64| b as f64 / 1e6;
            // Windows queued, one being prepared, one being written; chunks of at most
            // 256 KiB, raw and compressed.
            let ahead = ((depth + 2) * window * (256 << 10) * 2) as f64 / (1 << 20) as f64;
            writeln!(
                out,
                "{window:>7} {depth:>6} {paced:>11.2} {:>9.1} {unpaced:>11.2} {:>9.1} {ahead:>16.0}",
                mb(sent.0),
                mb(sent.1)
            )
            .unwrap();
            rows.push(json!({
                "window": window, "depth": depth, "wall_s_1gbit": paced,
                "payload_bytes_1gbit": sent.0, "wall_s_unpaced": unpaced,
                "payload_bytes_unpaced": sent.1, "ahead_mib_max": ahead,
            }));
        }
    }
    rows
}

/// Median of three runs of `f`, in seconds.
fn timed(f: impl FnMut()) -> f64 {
    median_of(3, f)
}

/// Median of `n` runs of `f`, in seconds.
fn median_of(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn main() {
    let ckpt = inputs::fp16(CKPT, 21);
    let text = inputs::text(TEXT, 22);

    // The checkpoint with 10% overwritten in 32 places, and with 100 B inserted at its head.
    let mut overwritten = ckpt.clone();
    let mut seed = 0x5eed_u64;
    let piece = (CKPT / 10 / 32) & !1;
    for i in 0..32 {
        let slot = CKPT / 32;
        let at = (i * slot + (xorshift(&mut seed) as usize % (slot - piece))) & !1;
        overwritten[at..at + piece].copy_from_slice(&inputs::fp16(piece, 100 + i as u64));
    }
    let changed_ckpt = (32 * piece) as u64;
    let mut inserted = vec![0x42u8; 100];
    inserted.extend_from_slice(&ckpt);
    let mut edited = text.clone();
    for _ in 0..200 {
        let at = xorshift(&mut seed) as usize % (TEXT - 40);
        edited[at..at + 40].copy_from_slice(&b"# edited: loss = model(x).mean() + 0.125 \n"[..40]);
    }
    let changed_text = 200 * 40;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut out = String::new();
    let mut rows = Vec::new();
    writeln!(
        out,
        "{:>9} {:>15} {:>15} {:>14} {:>14} {:>14} {:>11}",
        "avg KiB",
        "fp16 MB/s",
        "text MB/s",
        "manifest B/GB",
        "10% overwrite",
        "100 B insert",
        "text edit"
    )
    .unwrap();
    for avg_kib in [16u32, 32, 64, 128, 256] {
        let avg = avg_kib << 10;
        let c = Chunker {
            min: avg / 4,
            avg,
            max: avg * 4,
            ..Chunker::default()
        };
        let (mut a, mut t) = (Vec::new(), Vec::new());
        let fp16_s = pool.install(|| timed(|| a = c.chunk(&ckpt)));
        let text_s = pool.install(|| timed(|| t = c.chunk(&text)));
        let over = missing(&a, &c.chunk(&overwritten)) as f64 / changed_ckpt as f64;
        let ins = missing(&a, &c.chunk(&inserted));
        let edit = missing(&t, &c.chunk(&edited)) as f64 / changed_text as f64;
        let per_gb = a.len() as f64 * 36.0 * (1e9 / CKPT as f64);
        writeln!(
            out,
            "{avg_kib:>9} {:>15.0} {:>15.0} {per_gb:>14.0} {over:>13.2}x {:>11.2} MB {edit:>10.1}x",
            CKPT as f64 / fp16_s / 1e6,
            TEXT as f64 / text_s / 1e6,
            ins as f64 / 1e6,
        )
        .unwrap();
        rows.push(json!({
            "avg_kib": avg_kib, "fp16_mb_s": CKPT as f64 / fp16_s / 1e6,
            "text_mb_s": TEXT as f64 / text_s / 1e6, "manifest_bytes_per_gb": per_gb,
            "overwrite_10pct_sent_over_changed": over, "insert_100b_sent_bytes": ins,
            "text_edit_sent_over_changed": edit,
        }));
    }

    writeln!(out).unwrap();
    writeln!(
        out,
        "{:>6} {:>12} {:>12} {:>14} {:>12} {:>12} {:>14}",
        "level",
        "text ratio",
        "text MB/s",
        "text 1Gb s/GB",
        "fp16 ratio",
        "fp16 MB/s",
        "fp16 1Gb s/GB"
    )
    .unwrap();
    let mut levels = Vec::new();
    for level in [-3, 1, 3, 6] {
        let mut cells = Vec::new();
        for data in [&text, &ckpt] {
            let sample = &data[..32 << 20];
            let mut z = 0usize;
            let secs = timed(|| {
                z = sample
                    .chunks(64 << 10)
                    .map(|c| zstd::bulk::compress(c, level).unwrap().len().min(c.len()))
                    .sum()
            });
            let ratio = z as f64 / sample.len() as f64;
            let mb_s = sample.len() as f64 / secs / 1e6;
            let per_gb = (1e9 / (mb_s * 1e6 * CORES)).max(1e9 * ratio / LINK_BYTES_PER_S);
            cells.push((ratio, mb_s, per_gb));
        }
        let [(tr, ts, tg), (fr, fs, fg)] = [cells[0], cells[1]];
        writeln!(
            out,
            "{level:>6} {tr:>12.3} {ts:>12.0} {tg:>14.2} {fr:>12.3} {fs:>12.0} {fg:>14.2}"
        )
        .unwrap();
        levels.push(json!({
            "level": level, "text_ratio": tr, "text_mb_s": ts, "text_s_per_gb_1gbit": tg,
            "fp16_ratio": fr, "fp16_mb_s": fs, "fp16_s_per_gb_1gbit": fg,
        }));
    }
    print!("{out}");
    let mut pipeline = Vec::new();
    if std::env::var("MTR_BENCH_PIPELINE").as_deref() != Ok("0") {
        let mut table = String::new();
        writeln!(table).unwrap();
        pipeline = pipeline_sweep(&mut table);
        print!("{table}");
        out.push_str(&table);
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-params.json");
    let doc = json!({ "chunk_sizes": rows, "zstd_levels": levels, "pipeline": pipeline });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {}", path.display());
}
