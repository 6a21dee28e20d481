//! Micro benchmarks of the engine's per-entry work on a 100,000-entry tree (the scale a big
//! project with build outputs reaches), reported as entries per second:
//!
//! - `manifest/build`: entries → `Manifest` (a `BTreeMap` by path);
//! - `manifest/token`: the tree token over every entry (what makes a no-op one round trip);
//! - `manifest/diff_1pct`: the diff against a base where 1% of the files changed, 0.1% were
//!   deleted and 0.1% added;
//! - `index/save` and `index/load`: the source's chunk index for the same tree (bincode +
//!   zstd, atomic rename) written to and read from a temp dir; the file size is printed once.
//!
//! Run: `cargo bench --bench manifest`.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::manifest::{self, Manifest};
use protocol::wire::{ChunkSpec, Entry, EntryKind, SourceIndex, SourceIndexEntry, StatKey};
use testkit::gen::Rng;

const ENTRIES: usize = 100_000;

/// A deterministic tree: 100k files in ~1,000 directories, paths like a source tree's.
fn tree(seed: u64) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    let mut entries = Vec::with_capacity(ENTRIES + 1_000);
    for d in 0..1_000 {
        let dir = format!("src/module_{:03}/sub_{}", d / 10, d % 10);
        entries.push(Entry {
            path: dir.clone(),
            kind: EntryKind::Dir,
        });
        for f in 0..ENTRIES / 1_000 {
            let mut digest = [0u8; 32];
            rng.fill(&mut digest);
            entries.push(Entry {
                path: format!("{dir}/file_{f:03}_{}.py", rng.below(1000)),
                kind: EntryKind::File {
                    size: rng.below(64 << 10) as u64,
                    mode: 0o644,
                    mtime_ns: 1_700_000_000_000_000_000 + rng.below(1 << 30) as i64,
                    digest,
                },
            });
        }
    }
    entries
}

/// `base` with 1% of its files changed, 0.1% deleted and 0.1% added.
fn changed(base: &[Entry], seed: u64) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(base.len());
    for e in base {
        let roll = rng.below(1000);
        match &e.kind {
            EntryKind::File { .. } if roll < 1 => continue,
            EntryKind::File {
                size,
                mode,
                mtime_ns,
                ..
            } if roll < 11 => {
                let mut digest = [0u8; 32];
                rng.fill(&mut digest);
                out.push(Entry {
                    path: e.path.clone(),
                    kind: EntryKind::File {
                        size: size + 1,
                        mode: *mode,
                        mtime_ns: mtime_ns + 1,
                        digest,
                    },
                });
            }
            EntryKind::File { .. } if roll < 12 => {
                out.push(e.clone());
                out.push(Entry {
                    path: format!("{}.new", e.path),
                    kind: e.kind.clone(),
                });
            }
            _ => out.push(e.clone()),
        }
    }
    out
}

fn index_of(entries: &[Entry]) -> SourceIndex {
    let files = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File {
                size,
                mtime_ns,
                digest,
                ..
            } => Some(SourceIndexEntry {
                path: e.path.clone(),
                stat: StatKey {
                    size: *size,
                    mtime_ns: *mtime_ns,
                    ctime_ns: *mtime_ns,
                    ino: *size ^ 0x5555,
                },
                // Most source files are one chunk; a few are several.
                chunks: (0..1 + (*size as usize >> 15))
                    .map(|_| ChunkSpec {
                        hash: *digest,
                        len: (*size as u32).max(1),
                    })
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    SourceIndex {
        protocol: protocol::wire::PROTOCOL_VERSION,
        chunker: None,
        scanned_at_ns: 0,
        files,
    }
}

fn manifests(c: &mut Criterion) {
    let base_entries = tree(1);
    let current_entries = changed(&base_entries, 2);
    let base: Manifest = manifest::from_entries(base_entries.clone());
    let current: Manifest = manifest::from_entries(current_entries);
    let d = manifest::diff(&base, &current, &HashSet::new(), |_, _| false);
    eprintln!(
        "manifest: {} entries; diff: {} upserts, {} deletes",
        base.len(),
        d.upserts.len(),
        d.deletes.len()
    );

    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Elements(base.len() as u64));
    g.bench_function("build", |b| {
        b.iter(|| manifest::from_entries(black_box(base_entries.clone())))
    });
    g.bench_function("token", |b| b.iter(|| manifest::token(black_box(&base))));
    g.bench_function("diff_1pct", |b| {
        b.iter(|| {
            manifest::diff(
                black_box(&base),
                black_box(&current),
                &HashSet::new(),
                |_, _| false,
            )
        })
    });
    g.finish();
}

fn index(c: &mut Criterion) {
    let index = index_of(&tree(1));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index");
    protocol::index::save(&path, &index).unwrap();
    eprintln!(
        "index: {} files, {} bytes on disk",
        index.files.len(),
        std::fs::metadata(&path).unwrap().len()
    );

    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(index.files.len() as u64));
    g.bench_function("save", |b| {
        b.iter(|| protocol::index::save(&path, black_box(&index)).unwrap())
    });
    g.bench_function("load", |b| {
        b.iter(|| {
            let loaded: SourceIndex = protocol::index::load(black_box(&path)).unwrap();
            loaded.files.len()
        })
    });
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
    targets = manifests, index
}
criterion_main!(benches);
