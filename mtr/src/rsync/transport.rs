//! The local side of the transport: finding `rsync`, `ssh` and `sshpass` (with how to install
//! a missing one), and building the rsync command line: the remote shell (`-e`) with the
//! server's options, the password in the environment, remote paths as rsync takes them.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use super::output::ITEM_PREFIX;
use crate::config::Settings;
use crate::ui::Ui;

/// The oldest local rsync this engine drives (`--info`, `--no-h` and the filter rules it uses).
const MIN_RSYNC: Version = Version(3, 1, 0);
/// The first rsync that escapes remote arguments by itself; older ones get `-s`.
const ARG_ESCAPING_RSYNC: Version = Version(3, 2, 4);
/// Private keys tried, as mtr's own SSH does, when no `key_filename` is configured.
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];
/// How to install rsync here, for messages.
const INSTALL_RSYNC: &str =
    "Debian/Ubuntu: apt-get install rsync; Fedora/RHEL: dnf install rsync; macOS: brew install rsync";

/// An rsync version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The local programs this engine runs, found on `PATH`.
#[derive(Debug)]
pub(super) struct Tools {
    rsync: PathBuf,
    ssh: PathBuf,
    /// `sshpass`, when the server has a password.
    sshpass: Option<PathBuf>,
    /// The local rsync predates argument escaping: send arguments through the protocol (`-s`).
    secluded_args: bool,
    /// The known_hosts file mtr's own SSH uses (`$HOME/.ssh/known_hosts`).
    pub(super) known_hosts: PathBuf,
}

impl Tools {
    /// Finds rsync (checking its version), ssh, and sshpass when a password is configured;
    /// a missing one is an error that says how to install it.
    pub(super) fn find(s: &Settings, ui: &Ui) -> Result<Tools> {
        let rsync = which("rsync").ok_or_else(|| {
            anyhow!(
                "rsync is not installed here (not found on PATH), and `sync: rsync` (in {}) runs \
                 the local rsync: install it ({INSTALL_RSYNC}) or use `sync: agent`",
                s.describe_sources()
            )
        })?;
        let out = Command::new(&rsync)
            .arg("--version")
            .env("LC_ALL", "C")
            .output()
            .with_context(|| format!("cannot run {} --version", rsync.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text).ok_or_else(|| {
            anyhow!(
                "{} --version does not say which rsync it is ({:?}): install rsync ({INSTALL_RSYNC})",
                rsync.display(),
                text.lines().next().unwrap_or("")
            )
        })?;
        if version < MIN_RSYNC {
            bail!(
                "{} is rsync {version}; `sync: rsync` needs {MIN_RSYNC} or later: install a newer \
                 one ({INSTALL_RSYNC}) and put it first on PATH, or use `sync: agent`",
                rsync.display()
            );
        }
        let ssh = which("ssh").ok_or_else(|| {
            anyhow!(
                "ssh is not installed here (not found on PATH), and `sync: rsync` runs rsync over \
                 it: install the OpenSSH client (apt-get install openssh-client, dnf install \
                 openssh-clients) or use `sync: agent`"
            )
        })?;
        let sshpass = match s.password {
            None => None,
            Some(_) => Some(which("sshpass").ok_or_else(|| {
                anyhow!(
                    "sshpass is not installed here (not found on PATH), and `sync: rsync` with a \
                     `password` (server '{}' in {}) hands the password to ssh through it: install \
                     it (apt-get install sshpass, dnf install sshpass), or authenticate with a key \
                     (key_filename), or use `sync: agent`, which needs no sshpass",
                    s.server_name,
                    s.describe_sources()
                )
            })?),
        };
        Ok(Tools {
            rsync,
            ssh,
            sshpass,
            secluded_args: version < ARG_ESCAPING_RSYNC,
            known_hosts: crate::sync::ssh_options(s, ui).known_hosts,
        })
    }

    /// An rsync command with the transport and the output options every run uses.
    pub(super) fn command(&self, s: &Settings, ui: &Ui) -> Command {
        let mut cmd = Command::new(&self.rsync);
        cmd.arg("-e")
            .arg(self.rsh(s, ui))
            .arg("--compress")
            .arg(format!("--out-format={ITEM_PREFIX}%i %n"))
            .args(["--stats", "--no-human-readable"]);
        if self.secluded_args {
            cmd.arg("-s");
        }
        // English, unescaped-by-locale output to parse; no argument-handling overrides.
        cmd.env("LC_ALL", "C")
            .env_remove("RSYNC_OLD_ARGS")
            .env_remove("RSYNC_PROTECT_ARGS")
            .env_remove("RSYNC_RSH");
        if let Some(pw) = &s.password {
            cmd.env("SSHPASS", pw);
        }
        cmd
    }

    /// The remote shell (`-e`): `[sshpass -e] ssh OPTIONS`, each word quoted for rsync's own
    /// splitting.
    fn rsh(&self, s: &Settings, ui: &Ui) -> OsString {
        let mut words: Vec<OsString> = Vec::new();
        if let Some(sshpass) = &self.sshpass {
            words.extend([sshpass.into(), "-e".into()]);
        }
        words.push(self.ssh.clone().into());
        words.extend(["-p".into(), s.port.to_string().into()]);
        words.extend(["-l".into(), s.user.clone().into()]);
        let home = dirs::home_dir();
        match &s.key_filename {
            Some(key) => words.extend(["-i".into(), key.into(), "-oIdentitiesOnly=yes".into()]),
            // As mtr's own SSH: the agent, then the default keys of $HOME (OpenSSH would take
            // them from the password database's home).
            None => {
                for name in DEFAULT_KEYS {
                    if let Some(key) = home.as_ref().map(|h| h.join(".ssh").join(name)) {
                        if key.is_file() {
                            words.extend(["-i".into(), key.into()]);
                        }
                    }
                }
            }
        }
        let mut opt = OsString::from("-oUserKnownHostsFile=");
        opt.push(ssh_option_value(self.known_hosts.as_os_str()));
        words.push(opt);
        words.push(format!("-oStrictHostKeyChecking={}", s.strict_host_key_checking).into());
        words.push(format!("-oConnectTimeout={}", s.connect_timeout.as_secs().max(1)).into());
        words.extend([
            "-oServerAliveInterval=15".into(),
            "-oServerAliveCountMax=4".into(),
            "-oLogLevel=ERROR".into(),
        ]);
        if s.password.is_some() {
            // sshpass answers one password prompt; a wrong password must fail, not re-prompt.
            words.extend([
                "-oBatchMode=no".into(),
                "-oNumberOfPasswordPrompts=1".into(),
            ]);
        } else if !ui.interactive {
            words.push("-oBatchMode=yes".into());
        }
        let mut rsh = OsString::new();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                rsh.push(" ");
            }
            rsh.push(rsh_quote(w));
        }
        rsh
    }
}

/// The first executable file called `name` in a directory of `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The version in `rsync --version` output (`rsync  version 3.2.7  protocol version 31`, or
/// openrsync's `rsync version 2.6.9 compatible` on its second line).
fn parse_version(text: &str) -> Option<Version> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rsync") && l.contains("version"))?;
    let after = line.split("version").nth(1)?.trim_start();
    let digits: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some(Version(major, minor, patch))
}

/// Quotes one word for rsync's splitting of `-e`: words are split on spaces, quotes group,
/// and a doubled quote inside quotes is a literal one (there is no backslash escaping).
fn rsh_quote(word: &OsStr) -> OsString {
    let bytes = word.as_bytes();
    let plain = !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(b));
    if plain {
        return word.to_owned();
    }
    let mut out = vec![b'\''];
    for &b in bytes {
        out.push(b);
        if b == b'\'' {
            out.push(b'\'');
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

/// An ssh `-o` value: OpenSSH splits some (UserKnownHostsFile) on whitespace unless quoted.
fn ssh_option_value(value: &OsStr) -> OsString {
    if value.as_bytes().iter().any(u8::is_ascii_whitespace) {
        let mut quoted = OsString::from("\"");
        quoted.push(value);
        quoted.push("\"");
        quoted
    } else {
        value.to_owned()
    }
}

/// `user@host:port`, as mtr's own SSH names the server.
pub(super) fn display(s: &Settings) -> String {
    format!("{}@{}:{}", s.user, s.host, s.port)
}

/// `HOST:PATH` for rsync (the user goes to ssh's `-l`); IPv6 addresses in brackets.
pub(super) fn remote_arg(s: &Settings, path: &str) -> String {
    if s.host.contains(':') {
        format!("[{}]:{path}", s.host)
    } else {
        format!("{}:{path}", s.host)
    }
}

/// A remote path as rsync takes it: `~/x` becomes `x` (rsync's relative paths start in the
/// home directory, and a quoted `~` would not expand), `~` becomes `.`.
pub(super) fn rsync_remote_path(path: &str) -> String {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match path.strip_prefix('~') {
        Some("") => ".".into(),
        Some(rest) if rest.starts_with('/') => match rest.trim_start_matches('/') {
            "" => ".".into(),
            rel => rel.into(),
        },
        _ => path.into(),
    }
}

/// Escapes wildcards in a source path so the remote side does not expand them: `\*`, `\?`,
/// `\[` and `\\`, only when a wildcard is present (as rsync's own matching does).
pub(super) fn escape_glob(path: &str) -> String {
    String::from_utf8_lossy(&escape_pattern(path.as_bytes())).into_owned()
}

/// Escapes a literal path for an rsync filter rule or glob: wildcard characters and
/// backslashes get a backslash, but only when a wildcard is present, since rsync treats
/// backslashes literally in patterns without one.
pub(super) fn escape_pattern(path: &[u8]) -> Vec<u8> {
    if !path.iter().any(|b| b"*?[".contains(b)) {
        return path.to_vec();
    }
    let mut out = Vec::with_capacity(path.len() + 4);
    for &b in path {
        if b"*?[\\".contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests_support::settings_for;

    #[test]
    fn versions_are_read_from_rsync_and_openrsync() {
        let v = parse_version("rsync  version 3.2.7  protocol version 31\nCopyright ...");
        assert_eq!(v, Some(Version(3, 2, 7)));
        let v = parse_version("openrsync: protocol version 29\nrsync version 2.6.9 compatible\n");
        assert_eq!(v, Some(Version(2, 6, 9)));
        assert_eq!(
            parse_version("rsync  version v3.4.1  protocol version 32"),
            None
        );
        assert!(Version(3, 2, 3) < ARG_ESCAPING_RSYNC && Version(3, 10, 0) > ARG_ESCAPING_RSYNC);
    }

    #[test]
    fn rsh_words_survive_rsyncs_splitting() {
        assert_eq!(rsh_quote(OsStr::new("-oBatchMode=yes")), "-oBatchMode=yes");
        assert_eq!(
            rsh_quote(OsStr::new("/home/a b/it's key")),
            "'/home/a b/it''s key'"
        );
        assert_eq!(rsh_quote(OsStr::new("")), "''");
        assert_eq!(
            ssh_option_value(OsStr::new("/a b/known_hosts")),
            "\"/a b/known_hosts\""
        );
    }

    #[test]
    fn the_ssh_command_carries_the_servers_options_and_never_the_password() {
        let mut s = settings_for("~/proj");
        s.port = 2222;
        s.key_filename = Some(PathBuf::from("/keys/my key"));
        s.password = Some("sec ret".into());
        let tools = Tools {
            rsync: "/usr/bin/rsync".into(),
            ssh: "/usr/bin/ssh".into(),
            sshpass: Some("/usr/bin/sshpass".into()),
            secluded_args: false,
            known_hosts: "/home/u/.ssh/known_hosts".into(),
        };
        let ui = Ui {
            interactive: false,
            verbose: 0,
        };
        let rsh = tools.rsh(&s, &ui).into_string().unwrap();
        assert!(
            rsh.starts_with("/usr/bin/sshpass -e /usr/bin/ssh -p 2222 -l u -i '/keys/my key' -oIdentitiesOnly=yes"),
            "{rsh}"
        );
        assert!(rsh.contains("-oStrictHostKeyChecking=yes"), "{rsh}");
        assert!(rsh.contains("-oConnectTimeout=10"), "{rsh}");
        assert!(rsh.contains("-oBatchMode=no"), "{rsh}");
        assert!(!rsh.contains("sec"), "{rsh}");
        let cmd = tools.command(&s, &ui);
        assert!(cmd
            .get_args()
            .all(|a| !a.to_string_lossy().contains("sec ret")));
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "SSHPASS" && v == Some(OsStr::new("sec ret"))));
    }

    #[test]
    fn remote_paths_lose_their_tilde() {
        assert_eq!(rsync_remote_path("~/work/proj"), "work/proj");
        assert_eq!(rsync_remote_path("~/work/proj/"), "work/proj");
        assert_eq!(rsync_remote_path("~"), ".");
        assert_eq!(rsync_remote_path("~/"), ".");
        assert_eq!(rsync_remote_path("/abs/dir/"), "/abs/dir");
        assert_eq!(rsync_remote_path("/"), "/");
        assert_eq!(rsync_remote_path("~other/x"), "~other/x");
        let mut s = settings_for("/r");
        assert_eq!(remote_arg(&s, "x/"), "127.0.0.1:x/");
        s.host = "::1".into();
        assert_eq!(remote_arg(&s, "x/"), "[::1]:x/");
    }

    #[test]
    fn patterns_are_escaped_only_when_they_hold_a_wildcard() {
        assert_eq!(escape_pattern(br"a\b c"), br"a\b c".to_vec());
        assert_eq!(escape_pattern(br"a*b\c[d]?"), br"a\*b\\c\[d]\?".to_vec());
        assert_eq!(escape_glob("out/*.pt"), r"out/\*.pt");
    }
}
