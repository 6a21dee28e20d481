//! The trees of the scale bench (`benches/scale.rs`): many small files with a few large ones,
//! and many empty files. Generated on all cores; the bytes depend on the seed only.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::thread;

use testkit::gen;

/// Source-like files in fixed parts generated in parallel (the tree does not depend on the
/// thread count).
const PARTS: usize = 16;

/// Fills `root` (new) with `small_files` source-like text files totalling `small_bytes` under
/// `src/part_NN/`, and `large_files` fp16 files of `large_bytes` each under `checkpoints/`.
pub fn many_files(
    root: &Path,
    small_files: usize,
    small_bytes: u64,
    large_files: usize,
    large_bytes: u64,
    seed: u64,
) -> io::Result<()> {
    fs::create_dir_all(root)?;
    thread::scope(|s| {
        for part in 0..PARTS {
            let files = small_files / PARTS + usize::from(part < small_files % PARTS);
            let bytes = small_bytes / PARTS as u64;
            let dir = root.join(format!("src/part_{part:02}"));
            s.spawn(move || gen::source_tree(&dir, files, bytes, seed ^ (part as u64 + 1)));
        }
    });
    fs::create_dir_all(root.join("checkpoints"))?;
    for i in 0..large_files {
        let path = root.join(format!("checkpoints/shard_{i:02}.bin"));
        super::fp16::write_file(&path, large_bytes & !1, seed.wrapping_add(1000 + i as u64))?;
    }
    Ok(())
}

/// Fills `root` (new) with `files` empty files, `per_dir` to a directory (`d0000/f000000`...).
pub fn empty_files(root: &Path, files: usize, per_dir: usize) -> io::Result<()> {
    let dirs = files.div_ceil(per_dir);
    let threads = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> io::Result<()> {
                    for d in (t..dirs).step_by(threads) {
                        let dir = root.join(format!("d{d:04}"));
                        fs::create_dir_all(&dir)?;
                        for f in d * per_dir..((d + 1) * per_dir).min(files) {
                            File::create(dir.join(format!("f{f:07}")))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap())
    })
}
