//! Debug lines on stderr, for `mtr -vv`: the sink's and the download source's phase timings
//! (index load, the stat pass, saves). Each line carries the time since the agent started.

use std::io::Write;
use std::time::Instant;

struct Logger {
    started: Instant,
}

impl ::log::Log for Logger {
    fn enabled(&self, m: &::log::Metadata) -> bool {
        m.level() <= ::log::Level::Debug
    }

    fn log(&self, record: &::log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!(
                "mtr-agent: [{:7.1} ms] {}\n",
                self.started.elapsed().as_secs_f64() * 1e3,
                record.args()
            );
            // One write per line: the session's threads never interleave within a line.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Sends `log` records up to debug to stderr.
pub fn init() {
    let logger = Box::new(Logger {
        started: Instant::now(),
    });
    if ::log::set_boxed_logger(logger).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Debug);
    }
}
