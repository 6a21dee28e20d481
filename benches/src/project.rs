//! The project the end-to-end benchmark syncs, and the edits its scenarios make.
//!
//! At scale 1: `src/` (5,500 source files, 130 MB), `third_party/vendored/` (3,000 source
//! files, 100 MB: the directory the rename scenario moves), `build/` (1,500 object-file-like
//! binaries, 70 MB), and `weights/model.safetensors` (a 2.02 GB fp16 checkpoint, see
//! [`super::checkpoint`]). About 10,000 files and 300 MB besides the checkpoint; every count and
//! size scales linearly.

use std::fs::{self, File, FileTimes};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use testkit::gen::{self, Rng};

use super::checkpoint::{self, Model, Overwritten};

/// Sizes of the generated project, from a scale factor.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub src_files: usize,
    pub src_bytes: u64,
    pub vendored_files: usize,
    pub vendored_bytes: u64,
    pub obj_files: usize,
    pub obj_bytes: u64,
    /// The checkpoint's model (its size: [`Model::data_bytes`]).
    pub model: Model,
}

impl Layout {
    pub fn scaled(scale: f64) -> Layout {
        let files = |n: f64| ((n * scale) as usize).max(10);
        let bytes = |n: f64| ((n * scale) as u64).max(100_000);
        Layout {
            src_files: files(5_500.0),
            src_bytes: bytes(130e6),
            vendored_files: files(3_000.0),
            vendored_bytes: bytes(100e6),
            obj_files: files(1_500.0),
            obj_bytes: bytes(70e6),
            model: Model::scaled(scale),
        }
    }

    /// The checkpoint's tensor data (its header adds a few KB).
    pub fn weights_bytes(&self) -> u64 {
        self.model.data_bytes()
    }

    pub fn files(&self) -> usize {
        self.src_files + self.vendored_files + self.obj_files + 1
    }

    pub fn bytes(&self) -> u64 {
        self.src_bytes + self.vendored_bytes + self.obj_bytes + self.weights_bytes()
    }
}

/// A generated project and the paths its scenarios touch.
pub struct Project {
    pub root: PathBuf,
    pub layout: Layout,
    /// A small source file (1–16 KB) under `src/`, relative to `root`.
    pub small_file: PathBuf,
    /// The directory the rename scenario moves, currently; relative to `root`.
    pub moving_dir: PathBuf,
    /// The checkpoint (2.02 GB at scale 1), relative to `root`.
    pub weights: PathBuf,
}

const VENDORED: &str = "third_party/vendored";
const VENDORED_RENAMED: &str = "third_party/vendored_v2";

impl Project {
    /// Generates the project under `root` (which must not exist yet).
    pub fn generate(root: &Path, layout: Layout) -> io::Result<Project> {
        fs::create_dir_all(root)?;
        // Each part from its own seed, on threads of its own: the same bytes as one by one.
        let (src, objects) = std::thread::scope(|s| {
            let src = s.spawn(|| {
                gen::source_tree(&root.join("src"), layout.src_files, layout.src_bytes, 11)
            });
            let vendored = s.spawn(|| {
                gen::source_tree(
                    &root.join(VENDORED),
                    layout.vendored_files,
                    layout.vendored_bytes,
                    12,
                )
            });
            let objects = s.spawn(|| {
                object_files(&root.join("build"), layout.obj_files, layout.obj_bytes, 13)
            });
            vendored.join().expect("generating the vendored tree");
            (
                src.join().expect("generating src/"),
                objects.join().expect("generating build/"),
            )
        });
        objects?;
        let weights = PathBuf::from("weights/model.safetensors");
        fs::create_dir_all(root.join("weights"))?;
        checkpoint::write(&root.join(&weights), layout.model, 14)?;

        let small_file = src
            .iter()
            .map(|p| PathBuf::from("src").join(p))
            .find(|p| {
                let len = fs::metadata(root.join(p)).map_or(0, |m| m.len());
                (1_000..16_000).contains(&len)
            })
            .expect("a source file of 1-16 KB");
        Ok(Project {
            root: root.to_owned(),
            layout,
            small_file,
            moving_dir: PathBuf::from(VENDORED),
            weights,
        })
    }

    /// Inserts a line in the middle of the small source file.
    pub fn edit_small_file(&self, rep: usize) -> io::Result<()> {
        let path = self.root.join(&self.small_file);
        let mut text = fs::read(&path)?;
        let mid = text.len() / 2;
        let at = text[mid..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| mid + i + 1);
        let line = format!("# edited by the benchmark, repetition {rep}\n");
        text.splice(at..at, line.into_bytes());
        fs::write(path, text)
    }

    /// Sets the mtime of every file to `when`; contents stay the same.
    pub fn touch_all(&self, when: SystemTime) -> io::Result<usize> {
        let mut count = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for dent in fs::read_dir(&dir)? {
                let dent = dent?;
                let ft = dent.file_type()?;
                if dent.file_name() == ".mtr" {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(dent.path());
                } else if ft.is_file() {
                    let file = File::options().write(true).open(dent.path())?;
                    file.set_times(FileTimes::new().set_modified(when))?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Renames the vendored directory, back and forth on successive calls.
    pub fn rename_dir(&mut self) -> io::Result<()> {
        let to = self.other_dir_name();
        fs::rename(self.root.join(&self.moving_dir), self.root.join(to))?;
        self.moving_dir = PathBuf::from(to);
        Ok(())
    }

    /// The name the renamed directory does not have now (it had it, or will have it next).
    pub fn other_dir_name(&self) -> &'static str {
        if self.moving_dir == Path::new(VENDORED) {
            VENDORED_RENAMED
        } else {
            VENDORED
        }
    }

    /// Bytes under the directory the rename scenario moves.
    pub fn moving_dir_bytes(&self) -> u64 {
        dir_bytes(&self.root.join(&self.moving_dir))
    }

    /// Overwrites `fraction` of the checkpoint's tensor data in place, in whole tensors and
    /// row ranges picked by `seed` (see [`checkpoint::overwrite`]).
    pub fn overwrite_weights(&self, fraction: f64, seed: u64) -> io::Result<Overwritten> {
        checkpoint::overwrite(&self.root.join(&self.weights), fraction, seed)
    }

    /// Saves the checkpoint again with a metadata entry of `bytes` bytes added in front of its
    /// JSON header: every tensor moves (see [`checkpoint::insert_in_header`]).
    pub fn insert_at_head(&self, bytes: usize, tag: u64) -> io::Result<()> {
        checkpoint::insert_in_header(&self.root.join(&self.weights), bytes, tag)
    }
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for dent in fs::read_dir(&d).into_iter().flatten().flatten() {
            match dent.metadata() {
                Ok(m) if m.is_dir() => stack.push(dent.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// `files` object-file-like binaries totalling about `total` bytes, in nested directories.
///
/// Each one is an ELF-ish header followed by sections: machine-code-like bytes (a skewed
/// alphabet), symbol strings, zero padding and relocation-like random bytes. zstd shrinks them
/// to about half, as it does real `.o` files.
fn object_files(dir: &Path, files: usize, total: u64, seed: u64) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let weights: Vec<f64> = (0..files).map(|_| (rng.gaussian() * 1.0).exp()).collect();
    let sum: f64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let len = (w / sum * total as f64) as usize;
        let sub = dir
            .join(format!("obj_{:02}", i % 37))
            .join(format!("{}", i % 5));
        fs::create_dir_all(&sub)?;
        fs::write(sub.join(format!("unit_{i}.o")), object_bytes(&mut rng, len))?;
    }
    Ok(())
}

fn object_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    // The bytes x86 code uses most (opcodes, ModRM, common immediates).
    const CODE: &[u8] = &[
        0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0x84, 0xc3, 0x31, 0xc0, 0x83, 0xff, 0x74, 0x75, 0x4c,
        0x8d, 0x41, 0x5d, 0x55, 0x53, 0x5b, 0x24, 0x44, 0x45, 0x01, 0x00, 0x10, 0x20, 0xeb, 0xe9,
        0x39, 0xc7, 0x66, 0x90, 0x49, 0x8e, 0x3d, 0xf8,
    ];
    let mut out = Vec::with_capacity(len + 4096);
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0\x3e\0");
    while out.len() < len {
        let n = 256 + rng.below(8192);
        match rng.below(10) {
            0..=3 => (0..n).for_each(|_| out.push(*rng.pick(CODE) ^ (rng.below(4) as u8))),
            4..=6 => {
                let mut names = gen::text(rng, "cpp", n);
                names
                    .iter_mut()
                    .filter(|b| **b == b' ')
                    .for_each(|b| *b = 0);
                out.extend(names);
            }
            7 => out.resize(out.len() + n, 0),
            _ => {
                let mut raw = vec![0u8; n];
                rng.fill(&mut raw);
                out.extend(raw);
            }
        }
    }
    out.truncate(len);
    out
}
