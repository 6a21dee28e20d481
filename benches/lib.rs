//! Shared helpers for the benchmarks: seeded in-memory inputs for the micro benchmarks
//! ([`inputs`]), the project tree of the end-to-end comparison and the edits its scenarios make
//! ([`project`]), and what the end-to-end run samples from `/proc` ([`probe`]).
//!
//! Everything generated is a pure function of its seed (through [`testkit::gen::Rng`]), so two
//! runs, or two machines, measure the same bytes.

pub mod inputs {
    //! Inputs for `benches/engine.rs`: random, text-like, zeros and fp16-like buffers.

    use testkit::gen::{self, Rng};

    /// `len` incompressible bytes.
    pub fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        Rng::new(seed).fill(&mut data);
        data
    }

    /// `len` bytes of source-like text: Python, C++ and prose, in 64 KiB runs.
    pub fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let ext = *rng.pick(&["py", "cpp", "h", "txt"]);
            let run = (len - data.len()).min(64 << 10);
            data.extend(gen::text(&mut rng, ext, run));
        }
        data
    }

    /// `len` bytes of fp16 weights, as in a checkpoint (see [`super::fp16`]).
    pub fn fp16(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        super::fp16::fill(&mut data, seed);
        data
    }
}

pub mod fp16 {
    //! fp16 weights drawn from N(0, 0.02²), like a trained layer: zstd keeps ~92% of them.
    //!
    //! The same distribution as `testkit::gen::fp16_like`, but generated in fixed 1 MiB blocks
    //! each seeded from `(seed, block)`, so a 1 GB file is written on all cores and streamed
    //! (testkit's version builds the whole file in one buffer on one core). The bytes depend on
    //! the seed and the offset only, never on the thread count.

    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::thread;

    use testkit::gen::Rng;

    const BLOCK: usize = 1 << 20;

    /// Fills `buf` with the fp16 values that sit at offset 0 for `seed`.
    pub fn fill(buf: &mut [u8], seed: u64) {
        for (i, block) in buf.chunks_mut(BLOCK).enumerate() {
            fill_block(block, seed, i as u64);
        }
    }

    /// Writes `len` bytes of fp16 values for `seed` into `file` at `offset` (a multiple of 2),
    /// on all cores.
    pub fn write_at(file: &File, offset: u64, len: u64, seed: u64) -> io::Result<()> {
        let blocks = len.div_ceil(BLOCK as u64);
        let threads = thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || -> io::Result<()> {
                        let mut buf = vec![0u8; BLOCK];
                        for b in (t..blocks).step_by(threads as usize) {
                            let start = b * BLOCK as u64;
                            let n = (len - start).min(BLOCK as u64) as usize;
                            fill_block(&mut buf[..n], seed, b);
                            file.write_all_at(&buf[..n], offset + start)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap())
        })
    }

    /// Creates `path` holding `len` bytes of fp16 values for `seed`.
    pub fn write_file(path: &Path, len: u64, seed: u64) -> io::Result<()> {
        let file = File::create(path)?;
        file.set_len(len)?;
        write_at(&file, 0, len, seed)
    }

    fn fill_block(block: &mut [u8], seed: u64, index: u64) {
        let mut rng = Rng::new(seed ^ index.wrapping_mul(0xa076_1d64_78bd_642f));
        for pair in block.chunks_mut(4) {
            // Box–Muller gives two independent normals per draw: use both.
            let u1 = 1.0 - rng.unit();
            let u2 = rng.unit();
            let r = (-2.0 * u1.ln()).sqrt() * 0.02;
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            let mut bytes = [0u8; 4];
            bytes[..2].copy_from_slice(&f32_to_f16((r * c) as f32).to_le_bytes());
            bytes[2..].copy_from_slice(&f32_to_f16((r * s) as f32).to_le_bytes());
            pair.copy_from_slice(&bytes[..pair.len()]);
        }
    }

    /// Round-toward-zero f32 → f16, enough for values of small magnitude.
    fn f32_to_f16(x: f32) -> u16 {
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let mant = bits & 0x7f_ffff;
        if exp >= 31 {
            sign | 0x7c00
        } else if exp <= 0 {
            if exp < -10 {
                return sign;
            }
            sign | ((mant | 0x80_0000) >> (14 - exp)) as u16
        } else {
            sign | ((exp as u16) << 10) | (mant >> 13) as u16
        }
    }
}

pub mod project {
    //! The project the end-to-end benchmark syncs, and the edits its scenarios make.
    //!
    //! At scale 1: `src/` (5,500 source files, 130 MB), `third_party/vendored/` (3,000 source
    //! files, 100 MB: the directory the rename scenario moves), `build/` (1,500 object-file-like
    //! binaries, 70 MB), and `weights/model.bin` (1 GiB of fp16 weights). About 10,000 files and
    //! 300 MB besides the weights; every count and size scales linearly.

    use std::fs::{self, File, FileTimes};
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    use testkit::gen::{self, Rng};

    /// Sizes of the generated project, from a scale factor.
    #[derive(Clone, Copy, Debug)]
    pub struct Layout {
        pub src_files: usize,
        pub src_bytes: u64,
        pub vendored_files: usize,
        pub vendored_bytes: u64,
        pub obj_files: usize,
        pub obj_bytes: u64,
        pub weights_bytes: u64,
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
                // Even, so fp16 values stay aligned.
                weights_bytes: bytes((1u64 << 30) as f64) & !1,
            }
        }

        pub fn files(&self) -> usize {
            self.src_files + self.vendored_files + self.obj_files + 1
        }

        pub fn bytes(&self) -> u64 {
            self.src_bytes + self.vendored_bytes + self.obj_bytes + self.weights_bytes
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
        /// The 1 GiB (at scale 1) fp16 file, relative to `root`.
        pub weights: PathBuf,
    }

    const VENDORED: &str = "third_party/vendored";
    const VENDORED_RENAMED: &str = "third_party/vendored_v2";

    impl Project {
        /// Generates the project under `root` (which must not exist yet).
        pub fn generate(root: &Path, layout: Layout) -> io::Result<Project> {
            fs::create_dir_all(root)?;
            let src = gen::source_tree(&root.join("src"), layout.src_files, layout.src_bytes, 11);
            gen::source_tree(
                &root.join(VENDORED),
                layout.vendored_files,
                layout.vendored_bytes,
                12,
            );
            object_files(&root.join("build"), layout.obj_files, layout.obj_bytes, 13)?;
            let weights = PathBuf::from("weights/model.bin");
            fs::create_dir_all(root.join("weights"))?;
            super::fp16::write_file(&root.join(&weights), layout.weights_bytes, 14)?;

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
            let to = if self.moving_dir == Path::new(VENDORED) {
                VENDORED_RENAMED
            } else {
                VENDORED
            };
            fs::rename(self.root.join(&self.moving_dir), self.root.join(to))?;
            self.moving_dir = PathBuf::from(to);
            Ok(())
        }

        /// Bytes under the directory the rename scenario moves.
        pub fn moving_dir_bytes(&self) -> u64 {
            dir_bytes(&self.root.join(&self.moving_dir))
        }

        /// Overwrites `fraction` of the weights in `regions` equal regions, one at a seeded
        /// offset inside each of `regions` equal slots (scattered, never overlapping), with new
        /// fp16 values. Returns the bytes overwritten.
        ///
        /// The size stays the same: rsync's quick check, which compares mtimes in whole
        /// seconds, misses the change if the file was last synced within the same second.
        pub fn overwrite_weights(&self, fraction: f64, regions: u64, seed: u64) -> io::Result<u64> {
            overwrite_fp16(&self.root.join(&self.weights), fraction, regions, seed)
        }

        /// Rewrites the weights with `bytes` new bytes in front (a new file renamed over the
        /// old one, as a program saving a file does).
        pub fn insert_at_head(&self, bytes: usize, seed: u64) -> io::Result<()> {
            let path = self.root.join(&self.weights);
            let tmp = path.with_extension("bin.tmp");
            let mut head = vec![0u8; bytes];
            Rng::new(seed).fill(&mut head);
            {
                let mut out = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
                out.write_all(&head)?;
                io::copy(&mut File::open(&path)?, &mut out)?;
                out.into_inner()?.sync_data()?;
            }
            fs::rename(tmp, path)
        }
    }

    /// Overwrites `fraction` of the fp16 file at `path` in place, in `regions` scattered regions
    /// (see [`Project::overwrite_weights`]); returns the bytes overwritten.
    pub fn overwrite_fp16(path: &Path, fraction: f64, regions: u64, seed: u64) -> io::Result<u64> {
        let file = File::options().write(true).open(path)?;
        let len = file.metadata()?.len();
        let slot = len / regions;
        let region = ((len as f64 * fraction / regions as f64) as u64 & !1).min(slot);
        let mut rng = Rng::new(seed);
        for i in 0..regions {
            let within = rng.below((slot - region + 1) as usize) as u64 & !1;
            super::fp16::write_at(&file, i * slot + within, region, rng.next_u64())?;
        }
        file.sync_data()?;
        Ok(region * regions)
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
            0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0x84, 0xc3, 0x31, 0xc0, 0x83, 0xff, 0x74, 0x75,
            0x4c, 0x8d, 0x41, 0x5d, 0x55, 0x53, 0x5b, 0x24, 0x44, 0x45, 0x01, 0x00, 0x10, 0x20,
            0xeb, 0xe9, 0x39, 0xc7, 0x66, 0x90, 0x49, 0x8e, 0x3d, 0xf8,
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
}

pub mod probe {
    //! What the end-to-end benchmark samples while a tool runs: bytes received on the loopback
    //! interface, and the peak RSS and CPU time of every process of the remote account.

    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::{self, JoinHandle};
    use std::time::Duration;

    /// Bytes received on `lo` so far (`/proc/net/dev`, this process's network namespace).
    /// Loopback counts each byte sent once in `rx` (and once in `tx`): rx alone is the traffic.
    pub fn loopback_rx_bytes() -> u64 {
        let text = fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev");
        text.lines()
            .find_map(|l| {
                let (name, rest) = l.split_once(':')?;
                (name.trim() == "lo").then(|| rest.split_whitespace().next()?.parse().ok())?
            })
            .expect("no lo line in /proc/net/dev")
    }

    /// Peak memory and CPU of the processes sharing one name (`/proc/<pid>/status` `Name:`).
    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    pub struct ProcStats {
        /// The highest `VmHWM` seen of any one of them, in KiB.
        pub peak_rss_kib: u64,
        /// Their user + system CPU time, summed, at the last sample of each (seconds).
        pub cpu_s: f64,
        /// How many distinct pids were seen.
        pub processes: usize,
    }

    /// What a [`Watch`] saw.
    #[derive(Clone, Debug, Default)]
    pub struct Sampled {
        /// The remote account's processes, by name.
        pub remote: BTreeMap<String, ProcStats>,
        /// Peak `RssAnon` of the local process, in KiB: its own memory.
        pub local_anon_kib: u64,
        /// Peak `RssFile` of the local process, in KiB: file pages it maps (mmap'd inputs), which
        /// count in its RSS but are page cache the kernel can drop.
        pub local_file_kib: u64,
    }

    /// Polls `/proc` for the processes of one uid, and for one local process, until stopped;
    /// see [`Watch::stop`].
    pub struct Watch {
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Sampled>,
    }

    /// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
    const TICKS: f64 = 100.0;

    impl Watch {
        /// Starts sampling, every `every`, the processes whose owner is `uid` (except those
        /// that already run, left from an earlier run) and the local process `local`.
        pub fn start(uid: u32, local: u32, every: Duration) -> Watch {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let old = processes(uid);
            let thread = thread::spawn(move || {
                // pid -> (name, peak KiB, cpu ticks)
                let mut seen: BTreeMap<u32, (String, u64, u64)> = BTreeMap::new();
                let mut out = Sampled::default();
                loop {
                    let last = flag.load(Ordering::Relaxed);
                    sample(uid, &old, &mut seen);
                    if let Ok(status) = fs::read_to_string(format!("/proc/{local}/status")) {
                        let anon = kib_field(&status, "RssAnon:");
                        out.local_anon_kib = out.local_anon_kib.max(anon);
                        out.local_file_kib = out.local_file_kib.max(kib_field(&status, "RssFile:"));
                    }
                    if last {
                        break;
                    }
                    thread::sleep(every);
                }
                for (name, peak, ticks) in seen.into_values() {
                    let s = out.remote.entry(name).or_default();
                    s.peak_rss_kib = s.peak_rss_kib.max(peak);
                    s.cpu_s += ticks as f64 / TICKS;
                    s.processes += 1;
                }
                out
            });
            Watch { stop, thread }
        }

        /// Takes a last sample and returns what was seen.
        pub fn stop(self) -> Sampled {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().expect("proc watcher panicked")
        }
    }

    /// The pids of the live processes of `uid`.
    pub fn processes(uid: u32) -> Vec<u32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|dent| {
                let pid = dent.file_name().to_str()?.parse::<u32>().ok()?;
                // The owner of /proc/<pid> is the process's effective uid: a stat, no read.
                (dent.metadata().ok()?.uid() == uid).then_some(pid)
            })
            .collect()
    }

    fn sample(uid: u32, old: &[u32], seen: &mut BTreeMap<u32, (String, u64, u64)>) {
        for pid in processes(uid) {
            if old.contains(&pid) {
                continue;
            }
            let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue; // exited meanwhile
            };
            let Some(name) = status.lines().find_map(|l| l.strip_prefix("Name:")) else {
                continue;
            };
            let name = name.trim().to_owned();
            let hwm = kib_field(&status, "VmHWM:");
            let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
                    // After "(comm)": state is field 3; utime and stime are fields 14 and 15.
                    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
                })
                .unwrap_or(0);
            let entry = seen.entry(pid).or_insert_with(|| (name.clone(), 0, 0));
            // A process that execs changes its name (sh -> mtr-agent): keep the latest one.
            entry.0 = name;
            entry.1 = entry.1.max(hwm);
            entry.2 = entry.2.max(ticks);
        }
    }

    /// The value of a `Key:   123 kB` line of `/proc/<pid>/status`; 0 if absent.
    fn kib_field(status: &str, key: &str) -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The median of `values` (mean of the middle two for an even count); 0 when empty.
    pub fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}
