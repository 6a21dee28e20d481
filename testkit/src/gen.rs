//! Deterministic test data: a small PRNG ([`Rng`], splitmix64), project trees that look and
//! compress like source code ([`source_tree`]), incompressible and fp16-weight-like binary files,
//! and [`tree_equal`], which compares two trees the way a sync must mirror them (contents, mode
//! bits, symlinks as links, empty directories, any file name) and says what differs.
//!
//! Everything here is a pure function of its seed: no data files, no `rand` crate.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// splitmix64: tiny, fast, and good enough for test data (not for cryptography).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Writes `contents` to `path`, creating missing parent directories.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Sets the permission bits of `path` (e.g. `0o755` to make a script executable).
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `bytes` of incompressible random data to `path`.
pub fn binary_file(path: &Path, bytes: usize, seed: u64) {
    let mut data = vec![0u8; bytes];
    Rng::new(seed).fill(&mut data);
    write_file(path, data);
}

/// Writes `bytes` of little-endian IEEE fp16 values drawn from N(0, 0.02²), like the weights
/// of a trained layer. zstd keeps about 92% of such data, as it does for real fp16 checkpoints.
pub fn fp16_like(path: &Path, bytes: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(bytes + 1);
    while data.len() < bytes {
        data.extend_from_slice(&f32_to_f16(rng.gaussian() as f32 * 0.02).to_le_bytes());
    }
    data.truncate(bytes);
    write_file(path, data);
}

/// Round-toward-zero f32 → f16 conversion, enough for values of small magnitude.
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp >= 31 {
        sign | 0x7c00 // overflow: infinity
    } else if exp <= 0 {
        if exp < -10 {
            return sign; // underflow: zero
        }
        let m = mant | 0x80_0000; // subnormal: restore the implicit bit
        sign | (m >> (14 - exp)) as u16
    } else {
        sign | ((exp as u16) << 10) | (mant >> 13) as u16
    }
}

const WORDS: &[&str] = &[
    "data", "model", "layer", "batch", "index", "value", "count", "size", "shape", "tensor",
    "input", "output", "grad", "loss", "step", "epoch", "config", "path", "name", "buffer", "node",
    "edge", "graph", "cache", "state", "result", "error", "status", "item", "list", "map", "key",
    "table", "row", "col", "weight", "bias", "scale", "offset", "stride", "device", "stream",
    "kernel", "block", "thread", "queue", "task", "worker", "pool", "client", "server", "request",
    "response", "header", "token", "vocab", "embed", "attn", "head", "mask", "norm", "init",
    "load", "save", "parse", "build", "update", "reset", "check", "apply", "compute", "forward",
    "backward", "train", "eval", "test", "run", "start", "stop", "read", "write", "open", "close",
    "send", "recv", "get", "set", "add", "remove", "find", "sort", "merge", "split", "total",
    "max", "min", "mean", "first", "last", "next", "prev", "local", "remote",
];
const DIR_WORDS: &[&str] = &[
    "src", "lib", "core", "utils", "models", "data", "ops", "kernels", "io", "net", "tests",
    "scripts", "configs", "tools", "common", "layers", "runtime", "include", "detail", "docs",
];
const EXTENSIONS: &[(&str, u32)] = &[("py", 45), ("cpp", 20), ("h", 20), ("txt", 15)];

/// Fills `dir` with `files` text files totalling exactly `total_bytes`, in nested directories,
/// and returns their paths relative to `dir`, in creation order.
///
/// Sizes follow a log-normal mix (many small files, a few large ones); contents are
/// Python, C++ or prose assembled from a fixed vocabulary, so they compress about like real
/// source (zstd ratio 3–6×). The same arguments always produce the same tree.
pub fn source_tree(dir: &Path, files: usize, total_bytes: u64, seed: u64) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    let weights: Vec<f64> = (0..files).map(|_| (rng.gaussian() * 1.2).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (w / sum * total_bytes as f64) as u64)
        .collect();
    let assigned: u64 = sizes.iter().sum();
    if let Some(last) = sizes.last_mut() {
        *last += total_bytes.saturating_sub(assigned);
    }

    let mut dirs = vec![PathBuf::new()];
    let mut taken = HashSet::new();
    let mut paths = Vec::with_capacity(files);
    for size in sizes {
        if rng.below(100) < 15 || dirs.len() == 1 {
            let parent = rng.pick(&dirs).clone();
            if parent.components().count() < 5 {
                let sub = parent.join(format!("{}_{}", rng.pick(DIR_WORDS), rng.below(100)));
                if taken.insert(sub.clone()) {
                    dirs.push(sub);
                }
            }
        }
        let ext = weighted_ext(&mut rng);
        let path = loop {
            let parent = rng.pick(&dirs);
            let stem = format!("{}_{}", rng.pick(WORDS), rng.pick(WORDS));
            let candidate = parent.join(format!("{stem}{}.{ext}", rng.below(1000)));
            if taken.insert(candidate.clone()) {
                break candidate;
            }
        };
        write_file(&dir.join(&path), text(&mut rng, ext, size as usize));
        paths.push(path);
    }
    paths
}

fn weighted_ext(rng: &mut Rng) -> &'static str {
    let total: u32 = EXTENSIONS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.below(total as usize) as u32;
    for (ext, w) in EXTENSIONS {
        if roll < *w {
            return ext;
        }
        roll -= w;
    }
    unreachable!()
}

/// `len` bytes of text that reads like a file with extension `ext`.
pub fn text(rng: &mut Rng, ext: &str, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 128);
    while out.len() < len {
        match ext {
            "py" => python_line(rng, &mut out),
            "cpp" | "h" | "cc" | "hpp" => cpp_line(rng, &mut out),
            _ => prose_line(rng, &mut out),
        }
        out.push('\n');
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len())]
}

fn ident(rng: &mut Rng) -> String {
    let mut s = rng.pick(WORDS).to_string();
    for _ in 0..rng.below(3) {
        s.push('_');
        s.push_str(word(rng));
    }
    s
}

fn type_name(rng: &mut Rng) -> String {
    let w = rng.pick(WORDS);
    let mut c = w.chars();
    let first = c.next().unwrap().to_ascii_uppercase();
    format!(
        "{first}{}{}",
        c.as_str(),
        rng.pick(&["", "Config", "Manager", "Impl", "State"])
    )
}

fn python_line(rng: &mut Rng, out: &mut String) {
    let indent = "    ".repeat(rng.below(3));
    let (a, b, c) = (ident(rng), ident(rng), ident(rng));
    let n = rng.below(256);
    let _ = match rng.below(9) {
        0 => write!(out, "def {a}(self, {b}, {c}={n}):"),
        1 => write!(out, "{indent}{a} = self.{b}({c}, {n})"),
        2 => write!(out, "{indent}if {a} is not None and {b} > {n}:"),
        3 => write!(out, "{indent}return {a}[{n}:] + {b}"),
        4 => write!(
            out,
            "{indent}# {a} {b} {c}: {} the {}",
            rng.pick(WORDS),
            rng.pick(WORDS)
        ),
        5 => write!(out, "from {a}.{b} import {}", type_name(rng)),
        6 => write!(out, "class {}({}):", type_name(rng), type_name(rng)),
        7 => write!(out, "{indent}for {a} in range(len({b})):"),
        _ => Ok(()),
    };
}

fn cpp_line(rng: &mut Rng, out: &mut String) {
    let indent = "  ".repeat(rng.below(3));
    let (a, b, c) = (ident(rng), ident(rng), ident(rng));
    let n = rng.below(256);
    let ty = rng.pick(&[
        "int",
        "float",
        "size_t",
        "auto",
        "const std::string&",
        "double",
    ]);
    let _ = match rng.below(9) {
        0 => write!(out, "{ty} {}::{a}({ty} {b}, int {c}) {{", type_name(rng)),
        1 => write!(out, "{indent}{ty} {a} = {b}->{c}({n});"),
        2 => write!(out, "{indent}if ({a} != nullptr && {b} < {n}) {{"),
        3 => write!(out, "{indent}return {a}[{n}] * {b};"),
        4 => write!(
            out,
            "{indent}// {a} {b} {c}: {} the {}",
            rng.pick(WORDS),
            rng.pick(WORDS)
        ),
        5 => write!(out, "#include \"{a}/{b}.h\""),
        6 => write!(out, "{indent}for (int i = 0; i < {a}.size(); ++i) {{"),
        7 => write!(out, "{indent}}}"),
        _ => Ok(()),
    };
}

fn prose_line(rng: &mut Rng, out: &mut String) {
    for i in 0..4 + rng.below(10) {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word(rng));
    }
    out.push('.');
}

/// What one path is, as far as a mirror is concerned.
#[derive(Debug, PartialEq)]
enum Entry {
    File { mode: u32, len: u64 },
    Dir,
    Symlink(PathBuf),
    Other,
}

/// Compares the trees at `a` and `b`: the same paths, each the same kind (file, directory,
/// symlink), files with the same bytes and the same executable bits (`mode & 0o111`), symlinks
/// with the same target (never followed). Paths in `ignore` (relative, e.g. `".mtr"`) are
/// skipped with everything under them, on both sides. Returns a readable list of the first
/// differences.
pub fn tree_equal(a: &Path, b: &Path, ignore: &[&str]) -> Result<(), String> {
    tree_equal_mode(a, b, ignore, 0o111)
}

/// [`tree_equal`] comparing the file mode bits in `mode_mask` (`0o777` for all of them).
pub fn tree_equal_mode(a: &Path, b: &Path, ignore: &[&str], mode_mask: u32) -> Result<(), String> {
    let ignore: Vec<PathBuf> = ignore.iter().map(PathBuf::from).collect();
    let left = scan(a, &ignore).map_err(|e| format!("scanning {}: {e}", a.display()))?;
    let right = scan(b, &ignore).map_err(|e| format!("scanning {}: {e}", b.display()))?;

    let mut diffs = Vec::new();
    for (path, l) in &left {
        let shown = path.display();
        match (l, right.get(path)) {
            (_, None) => diffs.push(format!("{shown}: only in {}", a.display())),
            (Entry::File { mode: ma, len: la }, Some(Entry::File { mode: mb, len: lb })) => {
                if ma & mode_mask != mb & mode_mask {
                    let (ma, mb) = (ma & mode_mask, mb & mode_mask);
                    diffs.push(format!(
                        "{shown}: mode {ma:o} vs {mb:o} (mask {mode_mask:o})"
                    ));
                }
                if la != lb {
                    diffs.push(format!("{shown}: size {la} vs {lb}"));
                } else if let Some(at) = first_difference(&a.join(path), &b.join(path))
                    .map_err(|e| format!("reading {shown}: {e}"))?
                {
                    diffs.push(format!("{shown}: contents differ at byte {at}"));
                }
            }
            (l, Some(r)) if l != r => diffs.push(format!("{shown}: {l:?} vs {r:?}")),
            _ => {}
        }
    }
    for path in right.keys().filter(|p| !left.contains_key(*p)) {
        diffs.push(format!("{}: only in {}", path.display(), b.display()));
    }

    if diffs.is_empty() {
        return Ok(());
    }
    let total = diffs.len();
    diffs.truncate(20);
    let mut report = format!(
        "{} and {} differ ({total} differences):",
        a.display(),
        b.display()
    );
    for d in diffs {
        report.push_str("\n  ");
        report.push_str(&d);
    }
    if total > 20 {
        report.push_str("\n  ...");
    }
    Err(report)
}

/// All paths under `root` (relative), except `root` itself and ignored subtrees.
fn scan(root: &Path, ignore: &[PathBuf]) -> io::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for dent in fs::read_dir(root.join(&rel))? {
            let dent = dent?;
            let path = rel.join(dent.file_name());
            if ignore.iter().any(|i| path.starts_with(i)) {
                continue;
            }
            let meta = dent.path().symlink_metadata()?;
            let ft = meta.file_type();
            let entry = if ft.is_symlink() {
                Entry::Symlink(fs::read_link(dent.path())?)
            } else if ft.is_dir() {
                stack.push(path.clone());
                Entry::Dir
            } else if ft.is_file() {
                Entry::File {
                    mode: meta.permissions().mode() & 0o7777,
                    len: meta.len(),
                }
            } else {
                Entry::Other
            };
            out.insert(path, entry);
        }
    }
    Ok(out)
}

/// The offset of the first differing byte of two files of equal length, if any.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(None);
        }
        fb.read_exact(&mut bb[..n])?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ratio(data: &[u8]) -> f64 {
        zstd::bulk::compress(data, 3).unwrap().len() as f64 / data.len() as f64
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        let mut rng = Rng::new(1);
        let mean = (0..10_000).map(|_| rng.gaussian()).sum::<f64>() / 10_000.0;
        assert!(mean.abs() < 0.05, "gaussian mean {mean}");
        assert!((0..1000).all(|_| rng.below(10) < 10));
    }

    #[test]
    fn source_tree_is_deterministic_sized_and_nested() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = source_tree(x.path(), 200, 1_000_000, 42);
        source_tree(y.path(), 200, 1_000_000, 42);
        assert_eq!(files.len(), 200);
        tree_equal(x.path(), y.path(), &[]).unwrap();

        let total: u64 = files
            .iter()
            .map(|f| fs::metadata(x.path().join(f)).unwrap().len())
            .sum();
        assert_eq!(total, 1_000_000);
        assert!(
            files.iter().any(|f| f.components().count() >= 3),
            "no nesting"
        );
        for ext in ["py", "cpp", "h", "txt"] {
            assert!(
                files.iter().any(|f| f.extension().unwrap() == ext),
                "no .{ext}"
            );
        }
    }

    #[test]
    fn generated_data_compresses_like_the_real_thing() {
        let dir = tempfile::tempdir().unwrap();
        let src = text(&mut Rng::new(3), "py", 1 << 20);
        let cpp = text(&mut Rng::new(3), "cpp", 1 << 20);
        fp16_like(&dir.path().join("w"), 1 << 20, 3);
        binary_file(&dir.path().join("r"), 1 << 20, 3);
        let fp16 = fs::read(dir.path().join("w")).unwrap();
        let random = fs::read(dir.path().join("r")).unwrap();

        for (what, r) in [("py", ratio(&src)), ("cpp", ratio(&cpp))] {
            assert!((0.15..0.35).contains(&r), "{what} ratio {r}");
        }
        assert!(
            (0.88..0.96).contains(&ratio(&fp16)),
            "fp16 ratio {}",
            ratio(&fp16)
        );
        assert!(ratio(&random) > 0.99);
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(0.0), 0);
        assert_eq!(f32_to_f16(6.0e-8), 0x0001); // smallest subnormal
        assert_eq!(f32_to_f16(1.0e6), 0x7c00);
    }

    /// A tree with every kind of entry a mirror must keep.
    fn sample(dir: &Path) {
        write_file(&dir.join("a/b/c.txt"), "hello");
        write_file(&dir.join("run.sh"), "#!/bin/sh\n");
        set_mode(&dir.join("run.sh"), 0o755);
        write_file(&dir.join("données/模型.py"), "print(1)\n");
        fs::create_dir_all(dir.join("empty/dir")).unwrap();
        symlink("a/b/c.txt", dir.join("link")).unwrap();
        symlink("/nonexistent", dir.join("dangling")).unwrap();
    }

    fn pair() -> (tempfile::TempDir, tempfile::TempDir) {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(x.path());
        sample(y.path());
        tree_equal(x.path(), y.path(), &[]).unwrap();
        (x, y)
    }

    fn differs(x: &Path, y: &Path, needle: &str) {
        let err = tree_equal(x, y, &[]).unwrap_err();
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }

    #[test]
    fn tree_equal_reports_content_size_and_mode() {
        let (x, y) = pair();
        write_file(&y.path().join("a/b/c.txt"), "hellO");
        differs(x.path(), y.path(), "a/b/c.txt: contents differ at byte 4");
        write_file(&y.path().join("a/b/c.txt"), "hello!");
        differs(x.path(), y.path(), "a/b/c.txt: size 5 vs 6");

        let (x, y) = pair();
        set_mode(&y.path().join("run.sh"), 0o644);
        differs(x.path(), y.path(), "run.sh: mode 111 vs 0");
        set_mode(&y.path().join("run.sh"), 0o775);
        tree_equal(x.path(), y.path(), &[]).unwrap();
        assert!(tree_equal_mode(x.path(), y.path(), &[], 0o777).is_err());
    }

    #[test]
    fn tree_equal_reports_links_dirs_and_missing_paths() {
        let (x, y) = pair();
        fs::remove_file(y.path().join("link")).unwrap();
        symlink("run.sh", y.path().join("link")).unwrap();
        differs(
            x.path(),
            y.path(),
            "link: Symlink(\"a/b/c.txt\") vs Symlink(\"run.sh\")",
        );

        let (x, y) = pair();
        fs::remove_file(y.path().join("link")).unwrap();
        fs::copy(x.path().join("a/b/c.txt"), y.path().join("link")).unwrap();
        differs(x.path(), y.path(), "link: Symlink");

        let (x, y) = pair();
        fs::remove_dir(y.path().join("empty/dir")).unwrap();
        differs(
            x.path(),
            y.path(),
            &format!("empty/dir: only in {}", x.path().display()),
        );

        let (x, y) = pair();
        write_file(&y.path().join("données/模型2.py"), "");
        differs(x.path(), y.path(), "données/模型2.py: only in");
    }

    #[test]
    fn tree_equal_skips_ignored_subtrees() {
        let (x, y) = pair();
        write_file(&y.path().join(".mtr/state"), "x");
        write_file(&x.path().join("a/b/junk"), "x");
        assert!(tree_equal(x.path(), y.path(), &[".mtr"]).is_err());
        tree_equal(x.path(), y.path(), &[".mtr", "a/b/junk"]).unwrap();
    }
}
