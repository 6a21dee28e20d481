//! What mtr itself shows: a progress display on a terminal (indicatif, on stderr), a one-line
//! summary, warnings, and log lines (`-v`, `--log-file`). In batch mode nothing goes to
//! stdout and nothing animates; stdout belongs to the remote command.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How mtr talks to the user.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// A person is watching stderr: show progress and the summary.
    pub interactive: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Ui {
    /// Interactive when stderr is a terminal and `--no-tty` was not given.
    pub fn new(no_tty: bool, verbose: u8) -> Ui {
        Ui {
            interactive: !no_tty && std::io::stderr().is_terminal(),
            verbose,
        }
    }

    /// A progress display for one sync (hidden in batch mode).
    pub fn progress(&self) -> SyncProgress {
        let p = self.progress_hidden();
        p.show(self);
        p
    }

    /// A progress display that draws nothing until [`SyncProgress::show`]: for work that
    /// starts while the terminal may still be needed (a host key prompt while connecting).
    pub fn progress_hidden(&self) -> SyncProgress {
        SyncProgress {
            bar: ProgressBar::hidden(),
        }
    }

    /// Print a line for the user on stderr (interactive, or `-v` in batch mode).
    pub fn info(&self, msg: &str) {
        if self.interactive || self.verbose > 0 {
            eprintln!("{msg}");
        }
        log::debug!("{msg}");
    }

    /// Print a warning on stderr, always.
    pub fn warn(&self, msg: &str) {
        eprintln!("mtr: warning: {msg}");
    }
}

/// indicatif behind the engine's progress callbacks. Clones show the same display.
#[derive(Clone)]
pub struct SyncProgress {
    bar: ProgressBar,
}

impl protocol::scan::Progress for SyncProgress {
    fn phase(&self, name: &'static str, total: u64) {
        let style = match (name, total) {
            (_, 0) => ProgressStyle::with_template("{spinner} {prefix:>6} {pos} entries")
                .expect("valid template"),
            _ => ProgressStyle::with_template(
                "{spinner} {prefix:>6} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        };
        self.bar.set_style(style);
        self.bar.set_prefix(name);
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.enable_steady_tick(Duration::from_millis(100));
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl SyncProgress {
    /// Draw from now on (on stderr, when a person watches it).
    pub fn show(&self, ui: &Ui) {
        if ui.interactive {
            self.bar
                .set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        }
    }

    /// Remove the display.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

struct Logger {
    level: log::LevelFilter,
    file: Option<Mutex<std::fs::File>>,
    /// Debug lines carry the time since logging started, so `-vv` is a timeline.
    started: Option<std::time::Instant>,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_lowercase();
        let line = match self.started {
            Some(t) => format!(
                "mtr: {level}: [{:7.1} ms] {}",
                t.elapsed().as_secs_f64() * 1e3,
                record.args()
            ),
            None => format!("mtr: {level}: {}", record.args()),
        };
        match &self.file {
            Some(f) => {
                let _ = writeln!(f.lock().unwrap(), "{line}");
            }
            None => eprintln!("{line}"),
        }
    }

    fn flush(&self) {}
}

/// Route `log` records: warnings by default, more with each `-v`, to stderr or `log_file`.
pub fn init_logging(verbose: u8, log_file: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let level = match (verbose, log_file.is_some()) {
        (0, false) => log::LevelFilter::Warn,
        (0, true) | (1, _) => log::LevelFilter::Info,
        (2, _) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let file = match log_file {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?,
        )),
        None => None,
    };
    let started = (level >= log::LevelFilter::Debug).then(std::time::Instant::now);
    log::set_boxed_logger(Box::new(Logger {
        level,
        file,
        started,
    }))
    .map(|()| log::set_max_level(level))
    .context("logger already set")
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1_500_000), "1.5 MB");
    }
}
