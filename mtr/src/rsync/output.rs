//! Running rsync and reading what it says: its per-file lines (`--out-format`) become the
//! plan and the progress, its `--stats` the summary, and a failure an error that names the
//! server and says what to do.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{anyhow, Context, Result};
use protocol::scan::Progress;

use super::transport::display;
use crate::config::Settings;
use crate::ui::Ui;

/// Marks rsync's per-file lines (`--out-format`) among everything else it prints.
pub(super) const ITEM_PREFIX: &str = "mtr:";

/// What one item line (`--out-format=mtr:%i %n`) says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Add,
    Update,
    Touch,
    Delete,
}

/// One changed path, as rsync itemizes it (`.` for the transfer's top directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) change: Change,
    pub(super) path: String,
}

/// Totals from `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stats {
    pub(super) sent: u64,
    pub(super) received: u64,
    /// File data that travelled (not matched in the receiver's old copies).
    pub(super) literal: u64,
}

/// One finished rsync.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) status: ExitStatus,
    pub(super) items: Vec<Item>,
    /// Other lines on stdout (`skipping directory x`, `ignoring unsafe symlink ...`).
    pub(super) notes: Vec<String>,
    pub(super) stats: Stats,
    /// Its stderr (and the remote side's), line by line.
    pub(super) stderr_lines: Vec<String>,
}

impl Run {
    /// Success, or only "some files vanished" (a local file deleted while rsync ran).
    pub(super) fn succeeded(&self) -> bool {
        self.status.success() || self.status.code() == Some(24)
    }
}

/// Runs rsync with `stdin` as its standard input, reading its output as it comes (progress on
/// a terminal).
pub(super) fn run(mut cmd: Command, stdin: Vec<u8>, ui: &Ui) -> Result<Run> {
    // The arguments only: the environment holds the password (SSHPASS).
    log::debug!(
        "running {}",
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| shell_words::quote(&a.to_string_lossy()).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let output = child.stdout.take().expect("stdout is piped");
    let mut errors = child.stderr.take().expect("stderr is piped");
    let mut items = Vec::new();
    let mut notes = Vec::new();
    let mut stats = Stats::default();
    let stderr = std::thread::scope(|scope| -> io::Result<Vec<u8>> {
        // rsync may write before it has read everything: feed it from another thread. It may
        // also exit early (connection refused), closing the pipe: its status says why.
        scope.spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let stderr = scope.spawn(move || {
            let mut buf = Vec::new();
            errors.read_to_end(&mut buf).map(|_| buf)
        });
        let mut progress = None;
        let mut reader = BufReader::new(output);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if let Some(item) = parse_item(&line) {
                let bar = progress.get_or_insert_with(|| {
                    let bar = ui.progress();
                    bar.phase("rsync", 0);
                    bar
                });
                bar.advance(1);
                items.push(item);
            } else if !parse_stat(&line, &mut stats) && !line.is_empty() {
                let text = String::from_utf8_lossy(&unescape(&line)).into_owned();
                log::debug!("rsync: {text}");
                notes.push(text);
            }
            line.clear();
        }
        if let Some(bar) = progress {
            bar.finish();
        }
        stderr.join().expect("the stderr reader does not panic")
    })
    .context("cannot read rsync's output")?;
    let status = child.wait().context("cannot wait for rsync")?;
    let stderr_lines: Vec<String> = String::from_utf8_lossy(&stderr)
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    for l in &stderr_lines {
        log::debug!("rsync stderr: {l}");
    }
    log::debug!("rsync exited with {status}");
    Ok(Run {
        status,
        items,
        notes,
        stats,
        stderr_lines,
    })
}

/// Parses `mtr:YXcstpoguax name` (`mtr:*deleting   name`).
fn parse_item(line: &[u8]) -> Option<Item> {
    let rest = line.strip_prefix(ITEM_PREFIX.as_bytes())?;
    if rest.len() < 13 || rest[11] != b' ' {
        return None;
    }
    let (code, name) = (&rest[..11], &rest[12..]);
    let change = if code.starts_with(b"*deleting") {
        Change::Delete
    } else if &code[2..] == b"+++++++++" {
        Change::Add
    } else {
        match code[0] {
            b'<' | b'>' | b'c' | b'h' => Change::Update,
            b'.' => Change::Touch,
            _ => return None,
        }
    };
    let name = unescape(name);
    let name = String::from_utf8_lossy(&name);
    let path = match name.trim_end_matches('/') {
        "" | "." => ".".to_string(),
        p => p.strip_prefix("./").unwrap_or(p).to_string(),
    };
    Some(Item { change, path })
}

/// Reads one `--stats` line into `stats`; false when the line is not one of those used.
fn parse_stat(line: &[u8], stats: &mut Stats) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let number = |rest: &str| rest.split_whitespace().next()?.parse::<u64>().ok();
    let field = if let Some(r) = line.strip_prefix("Total bytes sent: ") {
        (&mut stats.sent, r)
    } else if let Some(r) = line.strip_prefix("Total bytes received: ") {
        (&mut stats.received, r)
    } else if let Some(r) = line.strip_prefix("Literal data: ") {
        (&mut stats.literal, r)
    } else {
        // The rest of the report: recognised, not used.
        return [
            "Number of ",
            "Total file size",
            "Total transferred file size",
            "Matched data",
            "File list ",
            "sent ",
            "total size is ",
        ]
        .iter()
        .any(|p| line.starts_with(p));
    };
    match number(field.1) {
        Some(n) => {
            *field.0 = n;
            true
        }
        None => false,
    }
}

/// Undoes rsync's escaping of unprintable bytes in names (`\#ooo`, octal); rsync escapes a
/// backslash only when `#ddd` follows it, so this is exact.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if let Some(&[b'\\', b'#', a, b, c]) = s.get(i..i + 5) {
            let octal = |d: u8| (b'0'..=b'7').contains(&d).then(|| u32::from(d - b'0'));
            if let (Some(a), Some(b), Some(c)) = (octal(a), octal(b), octal(c)) {
                if let Ok(byte) = u8::try_from(a * 64 + b * 8 + c) {
                    out.push(byte);
                    i += 5;
                    continue;
                }
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// rsync's closing lines about its own exit code (`rsync error: ... (code 23) at main.c(...)`)
/// and its consequences (the other side hung up): noise next to the cause.
pub(super) fn is_rsync_summary(line: &str) -> bool {
    line.starts_with("rsync error: ")
        || line.starts_with("rsync warning: ")
        || line.contains("connection unexpectedly closed")
        || line.contains("write error: Broken pipe")
        || line.contains("error in rsync protocol data stream")
}

/// Turns a failed rsync into an error that names the server and says what to do.
pub(super) fn failure(s: &Settings, known_hosts: &Path, run: &Run, what: &str) -> anyhow::Error {
    let server = display(s);
    let lines = &run.stderr_lines;
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let said = said(run);
    if lines.iter().any(|l| is_remote_rsync_missing(l)) {
        return anyhow!(
            "{what}: rsync is not installed on {server} (or not on the PATH of its \
             non-interactive shell): install it there (apt-get install rsync, dnf install \
             rsync, ...), or use `sync: agent`, which needs nothing on the server. The server \
             said: {said}"
        );
    }
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key verification failed") {
        return anyhow!(
            "{what}: the host key of {server} was refused (strict_host_key_checking: {}, checked \
             against {}): if the server is new, connect once with ssh to check and add its key, \
             or set strict_host_key_checking: accept-new; if its key changed, find out why \
             before removing the old line from known_hosts. ssh said: {said}",
            s.strict_host_key_checking,
            known_hosts.display()
        );
    }
    if lines.iter().any(|l| is_auth_failure(l)) {
        let how = match (&s.password, &s.key_filename) {
            (Some(_), _) => "check the `password` of this server",
            (None, Some(_)) => {
                "check that the public key of key_filename is in ~/.ssh/authorized_keys on the server"
            }
            (None, None) => "set key_filename or password for this server, or load a key into ssh-agent",
        };
        return anyhow!(
            "{what}: authentication failed for {server}: {how} (in {}). ssh said: {said}",
            s.describe_sources()
        );
    }
    let unreachable = [
        "Connection refused",
        "Connection timed out",
        "Could not resolve hostname",
        "No route to host",
        "Network is unreachable",
    ];
    if unreachable.iter().any(|n| has(n)) {
        return anyhow!(
            "{what}: cannot connect to {server}: check host and port in {} and that the server \
             is up. ssh said: {said}",
            s.describe_sources()
        );
    }
    anyhow!("{what}: {said}")
}

/// What rsync and ssh said, for an error message: the lines that give a cause (at most six),
/// and the exit code.
fn said(run: &Run) -> String {
    let code = run.status.code().map_or_else(
        || run.status.to_string(),
        |c| format!("rsync exit code {c}"),
    );
    let lines = &run.stderr_lines;
    let mut causes: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !is_rsync_summary(l))
        .collect();
    if causes.is_empty() {
        causes = lines.iter().map(String::as_str).collect();
    }
    causes.truncate(6);
    if causes.is_empty() {
        format!("({code})")
    } else {
        format!("{} ({code})", causes.join("; "))
    }
}

/// The remote login shell's "no such command" for rsync, in the words of bash and dash
/// (`rsync: command not found`, `rsync: not found`), zsh (`command not found: rsync`), tcsh
/// (`rsync: Command not found.`) or fish (`Unknown command: rsync`).
fn is_remote_rsync_missing(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("rsync")
        && ["command not found", ": not found", "unknown command"]
            .iter()
            .any(|n| line.contains(n))
}

/// ssh's authentication failures (`user@host: Permission denied (publickey,password).`,
/// `Permission denied, please try again.`), not rsync's `Permission denied (13)` on a file.
fn is_auth_failure(line: &str) -> bool {
    line.contains("Too many authentication failures")
        || line.contains("Permission denied, please try again")
        || line.split("Permission denied (").skip(1).any(|rest| {
            rest.split(')').next().is_some_and(|methods| {
                methods
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || "-,@.".contains(c))
                    && !methods.is_empty()
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_lines_become_plan_entries() {
        let item = |l: &str| parse_item(l.as_bytes());
        assert_eq!(
            item("mtr:<f+++++++++ new.py"),
            Some(Item {
                change: Change::Add,
                path: "new.py".into()
            })
        );
        assert_eq!(item("mtr:cd+++++++++ a dir/").unwrap().path, "a dir");
        assert_eq!(item("mtr:>f.st...... x").unwrap().change, Change::Update);
        assert_eq!(item("mtr:cL..T...... l").unwrap().change, Change::Update);
        assert_eq!(item("mtr:.f...p..... x").unwrap().change, Change::Touch);
        let del = item("mtr:*deleting   gone/new\\#012line").unwrap();
        assert_eq!(del.change, Change::Delete);
        assert_eq!(del.path, "gone/new\nline");
        assert_eq!(item("mtr:.d..t...... ./").unwrap().path, ".");
        assert_eq!(item("created directory x"), None);
        assert_eq!(item("mtr:short"), None);
    }

    #[test]
    fn unescaping_is_exact() {
        assert_eq!(unescape(br"a\#012b"), b"a\nb");
        assert_eq!(unescape(br"\#303\#251"), "é".as_bytes());
        assert_eq!(unescape(br"a\b\#01"), br"a\b\#01");
        assert_eq!(unescape(br"\#999"), br"\#999");
    }

    #[test]
    fn stats_lines_are_read() {
        let mut st = Stats::default();
        for l in [
            "Literal data: 200006 bytes",
            "Total bytes sent: 200386",
            "Total bytes received: 81",
        ] {
            assert!(parse_stat(l.as_bytes(), &mut st));
        }
        assert!(parse_stat(b"Number of files: 10 (reg: 6, dir: 4)", &mut st));
        assert!(!parse_stat(b"skipping directory d", &mut st));
        assert_eq!(
            st,
            Stats {
                sent: 200386,
                received: 81,
                literal: 200006
            }
        );
    }

    #[test]
    fn failures_are_told_apart() {
        assert!(is_auth_failure(
            "u@h: Permission denied (publickey,keyboard-interactive,password)."
        ));
        assert!(is_auth_failure("Permission denied, please try again."));
        assert!(!is_auth_failure(
            r#"rsync: [sender] send_files failed to open "/p/x": Permission denied (13)"#
        ));
        for line in [
            "bash: line 1: rsync: command not found",
            "sh: 1: rsync: not found",
            "zsh:1: command not found: rsync",
            "rsync: Command not found.",
            "fish: Unknown command: rsync",
        ] {
            assert!(is_remote_rsync_missing(line), "{line}");
        }
        assert!(!is_remote_rsync_missing(
            r#"rsync: [sender] link_stat "/x" failed: No such file or directory (2)"#
        ));
    }
}
