//! Micro benchmarks of the sync engine's CPU work, on 16 MiB seeded inputs of four kinds
//! (random, source-like text, zeros, fp16 weights), reported as bytes per second:
//!
//! - `fastcdc`: FastCDC v2020 boundaries alone, with the chunker's parameters;
//! - `chunker`: `protocol::chunker::Chunker::default().chunk()` (boundaries + BLAKE3, fused);
//! - `rechunk`: `Chunker::rechunk()` of a changed file given its old chunk list (what a sync
//!   does for a file whose stat changed): unchanged, and with 10% overwritten in 16 places;
//! - `blake3`: BLAKE3 alone, over the whole buffer and over 64 KiB pieces;
//! - `compress`: `protocol::compress::compress` chunk by chunk (zstd, or for fp16 the shuffled
//!   codec: zstd on the high bytes, low bytes as is), and zstd levels 1 and 3 directly on the
//!   same chunks for comparison (text and fp16; the ratios and codecs are printed once at start);
//! - `decompress`: `protocol::compress::decompress` of what `compress` made, by raw bytes;
//! - `chunk_file`: `protocol::scan::chunk_file` of 128 MiB and 512 MiB fp16 files in the page
//!   cache (one segment and two, read a strip at a time with `pread`): what hashing a
//!   checkpoint costs a scan; `_rechunk`: the same file checked against its old chunk list
//!   (a touched or edited checkpoint).
//!
//! Run: `cargo bench --bench engine` (a short run: 10 samples, 2 s each).
//! Filter: `cargo bench --bench engine -- chunker/fp16`.
//! Compare with a saved baseline:
//!
//! ```text
//! git stash; cargo bench --bench engine -- --save-baseline main; git stash pop
//! cargo bench --bench engine -- --baseline main
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use mtr_benches::inputs;
use protocol::chunker::Chunker;

const LEN: usize = 16 << 20;

/// The four kinds of input, generated once from fixed seeds.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("random", inputs::random(LEN, 1)),
        ("text", inputs::text(LEN, 2)),
        ("zeros", vec![0u8; LEN]),
        ("fp16", inputs::fp16(LEN, 4)),
    ]
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(LEN as u64));
    g
}

fn chunking(c: &mut Criterion) {
    let corpus = corpus();
    let chunker = Chunker::default();

    let mut g = group(c, "fastcdc");
    for (kind, data) in &corpus {
        g.bench_function(*kind, |b| {
            b.iter(|| {
                fastcdc::v2020::FastCDC::new(black_box(data), chunker.min, chunker.avg, chunker.max)
                    .count()
            })
        });
    }
    g.finish();

    let mut g = group(c, "chunker");
    for (kind, data) in &corpus {
        g.bench_function(*kind, |b| b.iter(|| chunker.chunk(black_box(data))));
    }
    g.finish();

    let mut g = group(c, "rechunk");
    for (kind, data) in corpus.iter().filter(|(k, _)| matches!(*k, "text" | "fp16")) {
        let old = protocol::chunker::specs(&chunker.chunk(data));
        let mut edited = data.clone();
        let slot = LEN / 16;
        for i in 0..16 {
            let at = i * slot + slot / 3;
            let fresh = inputs::random(slot / 10, 100 + i as u64);
            edited[at..at + fresh.len()].copy_from_slice(&fresh);
        }
        g.bench_function(format!("{kind}/unchanged"), |b| {
            b.iter(|| chunker.rechunk(black_box(data), &old))
        });
        g.bench_function(format!("{kind}/10%_overwritten"), |b| {
            b.iter(|| chunker.rechunk(black_box(&edited), &old))
        });
    }
    g.finish();

    let mut g = group(c, "blake3");
    let (_, data) = &corpus[0];
    g.bench_function("whole", |b| b.iter(|| blake3::hash(black_box(data))));
    g.bench_function("64KiB_pieces", |b| {
        b.iter(|| {
            data.chunks(64 << 10)
                .map(|p| blake3::hash(black_box(p)).as_bytes()[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.finish();
}

/// An input and its chunk boundaries: compression works chunk by chunk.
struct Chunked {
    kind: &'static str,
    data: Vec<u8>,
    chunks: Vec<(usize, usize)>,
}

impl Chunked {
    /// `f` applied to every chunk, summed.
    fn each(&self, f: impl Fn(&[u8]) -> usize) -> usize {
        self.chunks
            .iter()
            .map(|&(o, l)| f(black_box(&self.data[o..o + l])))
            .sum()
    }
}

fn compression(c: &mut Criterion) {
    let chunker = Chunker::default();
    let inputs: Vec<Chunked> = corpus()
        .into_iter()
        .filter(|(kind, _)| matches!(*kind, "text" | "fp16"))
        .map(|(kind, data)| {
            let chunks = chunker
                .chunk(&data)
                .iter()
                .map(|c| (c.offset as usize, c.len as usize))
                .collect();
            Chunked { kind, data, chunks }
        })
        .collect();

    for input in &inputs {
        let ratio = |f: &dyn Fn(&[u8]) -> usize| input.each(f) as f64 / LEN as f64;
        let ours = ratio(&|c| protocol::compress::compress(c).map_or(c.len(), |(_, z)| z.len()));
        let mut codecs = std::collections::BTreeMap::new();
        for &(o, l) in &input.chunks {
            let codec = protocol::compress::compress(&input.data[o..o + l]).map(|(c, _)| c);
            *codecs.entry(format!("{codec:?}")).or_insert(0) += 1;
        }
        let z1 = ratio(&|c| zstd::bulk::compress(c, 1).unwrap().len());
        let z3 = ratio(&|c| zstd::bulk::compress(c, 3).unwrap().len());
        eprintln!(
            "{}: {} chunks; size after protocol::compress {ours:.3} (codecs {codecs:?}), \
             zstd -1 {z1:.3}, zstd -3 {z3:.3}",
            input.kind,
            input.chunks.len()
        );
    }

    let mut g = group(c, "compress");
    for input in &inputs {
        let kind = input.kind;
        g.bench_function(format!("protocol/{kind}"), |b| {
            b.iter(|| input.each(|c| protocol::compress::compress(c).map_or(0, |(_, z)| z.len())))
        });
        g.bench_function(format!("zstd1/{kind}"), |b| {
            b.iter(|| input.each(|c| zstd::bulk::compress(c, 1).unwrap().len()))
        });
        g.bench_function(format!("zstd3/{kind}"), |b| {
            b.iter(|| input.each(|c| zstd::bulk::compress(c, 3).unwrap().len()))
        });
    }
    g.finish();

    let mut g = group(c, "decompress");
    for input in &inputs {
        let encoded: Vec<_> = input
            .chunks
            .iter()
            .map(|&(o, l)| {
                let raw = &input.data[o..o + l];
                let (codec, payload) = protocol::compress::compress(raw)
                    .unwrap_or((protocol::compress::Codec::Raw, raw.to_vec()));
                (codec, payload, l as u32)
            })
            .collect();
        g.bench_function(format!("protocol/{}", input.kind), |b| {
            b.iter(|| {
                encoded
                    .iter()
                    .map(|(codec, p, l)| {
                        protocol::compress::decompress(*codec, black_box(p), *l)
                            .unwrap()
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

fn files(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let chunker = Chunker::default();
    let mut g = c.benchmark_group("chunk_file");
    // One segment (chunked by one thread), and two.
    for mib in [128usize, 512] {
        let path = dir.path().join(format!("ckpt{mib}.bin"));
        std::fs::write(&path, inputs::fp16(mib << 20, 5)).expect("write the bench file");
        let st = protocol::scan::stat_of(&std::fs::metadata(&path).expect("stat the bench file"));
        g.throughput(Throughput::Bytes((mib << 20) as u64));
        g.bench_function(format!("fp16_{mib}MiB"), |b| {
            b.iter(|| protocol::scan::chunk_file(black_box(&path), &st, &chunker).unwrap())
        });
        // The same file after a touch: checked against its old chunk list.
        let old = protocol::chunker::specs(
            &protocol::scan::chunk_file(&path, &st, &chunker).expect("chunk the bench file"),
        );
        g.bench_function(format!("fp16_{mib}MiB_rechunk"), |b| {
            b.iter(|| protocol::scan::rechunk_file(black_box(&path), &st, &chunker, &old).unwrap())
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = chunking, compression, files
}
criterion_main!(benches);
