//! What the end-to-end benchmarks sample from `/proc` while a tool runs: the peak RSS and CPU
//! time of every process of the remote account, and the local process's resident memory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Peak memory and CPU of the processes sharing one name (`/proc/<pid>/status` `Name:`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcStats {
    /// The highest `VmHWM` seen of any one of them, in KiB.
    pub peak_rss_kib: u64,
    /// The highest `RssAnon` seen of any one of them (polled), in KiB: memory of its own, not
    /// the file pages it maps.
    pub peak_anon_kib: u64,
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
            let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
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
            for p in seen.into_values() {
                let s = out.remote.entry(p.name).or_default();
                s.peak_rss_kib = s.peak_rss_kib.max(p.hwm_kib);
                s.peak_anon_kib = s.peak_anon_kib.max(p.anon_kib);
                s.cpu_s += p.ticks as f64 / TICKS;
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

/// What was seen of one remote process.
struct Seen {
    name: String,
    hwm_kib: u64,
    anon_kib: u64,
    ticks: u64,
}

fn sample(uid: u32, old: &[u32], seen: &mut BTreeMap<u32, Seen>) {
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
        let anon = kib_field(&status, "RssAnon:");
        let entry = seen.entry(pid).or_insert_with(|| Seen {
            name: name.clone(),
            hwm_kib: 0,
            anon_kib: 0,
            ticks: 0,
        });
        // A process that execs changes its name (sh -> mtr-agent): keep the latest one.
        entry.name = name;
        entry.hwm_kib = entry.hwm_kib.max(hwm);
        entry.anon_kib = entry.anon_kib.max(anon);
        entry.ticks = entry.ticks.max(ticks);
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
