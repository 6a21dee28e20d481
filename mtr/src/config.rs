//! Configuration: finds, parses, validates and merges the config files into [`Settings`].
//!
//! The project file `.mtr/config.yaml` is found by walking up from the current directory (the
//! directory holding `.mtr/` is the project root) and merged over the user file
//! `~/.config/mtr/config.yaml`. The format is that of the reference Python tool plus mtr's own
//! keys; every key, commented, is in `examples/config.yaml`. Unknown keys and bad values are
//! errors naming the file, the line and the key. YAML and serde stay in this module: the rest of
//! mtr sees the plain [`Settings`]. [`init`] writes the commented template for `mtr --init`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::Deserialize;

/// Where the project config lives, relative to the project root.
pub const PROJECT_CONFIG: &str = ".mtr/config.yaml";

/// Keys allowed at the top level of a config file.
const TOP_KEYS: &[&str] = &["default", "defaults", "servers"];

/// Keys allowed under `defaults:` and under each server (must match [`RawServer`]'s fields).
const SERVER_KEYS: &[&str] = &[
    "host",
    "user",
    "port",
    "key_filename",
    "password",
    "remote_dir",
    "pre_cmd",
    "exclude",
    "sync",
    "download_dir",
    "respect_gitignore",
    "strict_host_key_checking",
    "connect_timeout",
    "watch",
];

/// Default SSH port.
const DEFAULT_PORT: u16 = 22;

/// Default time allowed to establish the SSH connection.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exclude pattern always added: mtr's own directory is never synced.
const MTR_DIR_EXCLUDE: &str = ".mtr/";

/// How the project tree is copied to the server (`sync:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncEngine {
    /// mtr's own agent: content-defined chunks, only missing content travels (the default).
    #[default]
    Agent,
    /// The `rsync` command, as the reference tool did.
    Rsync,
    /// Plain SFTP uploads.
    Sftp,
}

impl SyncEngine {
    /// The config spelling (`agent`, `rsync`, `sftp`).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncEngine::Agent => "agent",
            SyncEngine::Rsync => "rsync",
            SyncEngine::Sftp => "sftp",
        }
    }
}

impl fmt::Display for SyncEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with the server's host key (`strict_host_key_checking:`), as in OpenSSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// The key must already be in `known_hosts` (the default).
    #[default]
    Yes,
    /// Unknown hosts are added to `known_hosts`; a changed key is still refused.
    AcceptNew,
    /// Any key is accepted (unsafe; for throwaway test hosts).
    No,
}

impl HostKeyPolicy {
    /// The OpenSSH spelling (`yes`, `accept-new`, `no`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::Yes => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::No => "no",
        }
    }
}

impl fmt::Display for HostKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolved configuration for one run: one server, every default applied.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The directory holding `.mtr/`: the root of the tree that is synced.
    pub project_root: PathBuf,
    /// The current directory relative to `project_root` (empty at the root). Commands run in the
    /// matching directory under `remote_dir`.
    pub cwd_relative: PathBuf,
    /// The config files that were read, lowest precedence first (user file, then project file).
    pub config_files: Vec<PathBuf>,
    /// The chosen server's name under `servers:`.
    pub server_name: String,
    /// Host name or address to connect to.
    pub host: String,
    /// SSH port (default 22).
    pub port: u16,
    /// Remote user name (default: the local user name).
    pub user: String,
    /// Private key file, `~` expanded and made absolute; `None` leaves the choice to the SSH
    /// layer (agent, default keys).
    pub key_filename: Option<PathBuf>,
    /// Password for password authentication, if configured (never printed by `Debug`).
    pub password: Option<String>,
    /// Remote project directory: absolute, or starting with `~` (expanded on the remote side).
    pub remote_dir: String,
    /// Shell command run before every remote command (e.g. `conda activate env`).
    pub pre_cmd: Option<String>,
    /// Gitignore-style patterns not synced: `.mtr/`, then `defaults.exclude`, then the server's
    /// `exclude` (user file before project file; duplicates dropped).
    pub excludes: Vec<String>,
    /// Whether `.gitignore` files also exclude paths from sync (default true).
    pub respect_gitignore: bool,
    /// How to sync (default [`SyncEngine::Agent`]).
    pub sync: SyncEngine,
    /// Where `--get` puts downloads when `--to` is not given, `~` expanded and made absolute
    /// (relative paths are taken from the current directory); `None` means the current directory.
    pub download_dir: Option<PathBuf>,
    /// Host key checking policy (default [`HostKeyPolicy::Yes`]).
    pub strict_host_key_checking: HostKeyPolicy,
    /// Time allowed to establish the SSH connection (default 10 s).
    pub connect_timeout: Duration,
    /// Leave a watcher on the server between syncs (the agent engine; default true), so a
    /// sync that finds nothing changed there need not check the remote tree.
    pub watch: bool,
    /// Non-fatal problems found while loading (e.g. a password in a file others can read), one
    /// line each, for the caller to print.
    pub warnings: Vec<String>,
}

impl Settings {
    /// The remote directory matching the local current directory: `remote_dir` joined with
    /// `cwd_relative`, `/`-separated (not shell-quoted).
    pub fn remote_workdir(&self) -> String {
        let mut dir = self.remote_dir.clone();
        for part in self.cwd_relative.components() {
            if !dir.ends_with('/') {
                dir.push('/');
            }
            dir.push_str(&part.as_os_str().to_string_lossy());
        }
        dir
    }

    /// The config files the settings came from, for error messages: `a` or `a and b`.
    pub fn describe_sources(&self) -> String {
        list_paths(&self.config_files, " and ")
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("project_root", &self.project_root)
            .field("cwd_relative", &self.cwd_relative)
            .field("config_files", &self.config_files)
            .field("server_name", &self.server_name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("key_filename", &self.key_filename)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("remote_dir", &self.remote_dir)
            .field("pre_cmd", &self.pre_cmd)
            .field("excludes", &self.excludes)
            .field("respect_gitignore", &self.respect_gitignore)
            .field("watch", &self.watch)
            .field("sync", &self.sync)
            .field("download_dir", &self.download_dir)
            .field("strict_host_key_checking", &self.strict_host_key_checking)
            .field("connect_timeout", &self.connect_timeout)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// The parts of the process environment that loading depends on (explicit, so tests need not
/// touch the real environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The current directory; discovery walks up from here.
    pub cwd: PathBuf,
    /// The home directory: holds `.config/mtr/config.yaml` and expands `~`.
    pub home: Option<PathBuf>,
    /// The local user name, the default for `user:`.
    pub local_user: Option<String>,
}

impl Env {
    /// Reads the current directory, `$HOME` (else the platform's home) and `$USER` (else
    /// `$LOGNAME`, else the name of the current uid in the password database).
    pub fn from_process() -> Result<Env, ConfigError> {
        let cwd = std::env::current_dir().map_err(ConfigError::Cwd)?;
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(dirs::home_dir);
        let local_user = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|u| !u.is_empty())
            .or_else(uid_name);
        Ok(Env {
            cwd,
            home,
            local_user,
        })
    }
}

/// The name of the current uid, from the password database.
fn uid_name() -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: getpwuid_r writes into `pw` and `buf`, both valid for the sizes passed.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    name.to_str().ok().map(str::to_string)
}

/// Everything that can go wrong with the configuration. All of these are the user's to fix in a
/// config file or on the command line (`main` maps them to exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The current directory cannot be read.
    #[error("cannot determine the current directory: {0}")]
    Cwd(#[source] io::Error),
    /// No `.mtr/config.yaml` in the current directory or any parent.
    #[error("{}", not_found_message(cwd, user_config.as_deref()))]
    NotFound {
        /// Where the search started.
        cwd: PathBuf,
        /// The user config, if it exists (it alone does not mark a project).
        user_config: Option<PathBuf>,
    },
    /// A config file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A config file is not valid YAML.
    #[error("{}: malformed YAML: {message}", at_line(path, *line))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The YAML parser's message.
        message: String,
    },
    /// Valid YAML, but an unknown key or a bad value.
    #[error("{}: {message}", at_line(path, *line))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
    /// No file defines any server.
    #[error(
        "no servers defined in {}; add one under `servers:` (`mtr --init` writes a commented template)",
        list_paths(files, " and ")
    )]
    NoServers {
        /// The files that were read.
        files: Vec<PathBuf>,
    },
    /// The server asked for (by `-s` or `default:`) is not defined.
    #[error("{}", unknown_server_message(name, known, named_by.as_deref()))]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The servers that are defined, in order.
        known: Vec<String>,
        /// The file whose `default:` named it; `None` when it came from `-s/--server`.
        named_by: Option<PathBuf>,
    },
    /// The chosen server lacks a required key (after merging with `defaults`).
    #[error(
        "server '{server}' has no `{key}`: set servers.{server}.{key} in {}",
        list_paths(files, " or ")
    )]
    MissingKey {
        /// The server.
        server: String,
        /// The missing key.
        key: &'static str,
        /// The files defining the server.
        files: Vec<PathBuf>,
    },
    /// No `user:` configured and the local user name is unknown.
    #[error(
        "server '{server}' has no `user` and $USER is not set: set servers.{server}.user in {}",
        list_paths(files, " or ")
    )]
    NoUser {
        /// The server.
        server: String,
        /// The files defining the server.
        files: Vec<PathBuf>,
    },
    /// `mtr --init` found a config already there.
    #[error("{} already exists; edit it, or delete it to write a fresh template", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// `mtr --init` could not write the template.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory being created.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn at_line(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

fn list_paths(files: &[PathBuf], separator: &str) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    names.join(separator)
}

fn not_found_message(cwd: &Path, user_config: Option<&Path>) -> String {
    let mut msg = format!(
        "no {PROJECT_CONFIG} in {} or any parent directory; run `mtr --init` in your project root",
        cwd.display()
    );
    if let Some(user) = user_config {
        msg.push_str(&format!(
            " (the user config {} supplies servers and defaults, but the project's .mtr/ marks \
             the root to sync)",
            user.display()
        ));
    }
    msg
}

fn unknown_server_message(name: &str, known: &[String], named_by: Option<&Path>) -> String {
    let origin = match named_by {
        None => "given by -s/--server".to_string(),
        Some(path) => format!("named by `default:` in {}", path.display()),
    };
    format!(
        "unknown server '{name}' ({origin}); known servers: {}",
        known.join(", ")
    )
}

/// The user config path: `<home>/.config/mtr/config.yaml`, as for the reference tool (on every
/// platform).
pub fn user_config_path(home: &Path) -> PathBuf {
    home.join(".config").join("mtr").join("config.yaml")
}

/// The nearest directory, from `cwd` up, that holds `.mtr/config.yaml`.
pub fn find_project_root(cwd: &Path) -> Option<PathBuf> {
    cwd.ancestors()
        .find(|dir| dir.join(PROJECT_CONFIG).is_file())
        .map(Path::to_path_buf)
}

/// Finds and reads the config files, picks the server (`server` from `-s`, else `default:`,
/// else the first one listed) and resolves its settings.
pub fn load(env: &Env, server: Option<&str>) -> Result<Settings, ConfigError> {
    let user_path = env.home.as_deref().map(user_config_path);
    let user_path = user_path.filter(|p| p.is_file());
    let Some(project_root) = find_project_root(&env.cwd) else {
        return Err(ConfigError::NotFound {
            cwd: env.cwd.clone(),
            user_config: user_path,
        });
    };
    let mut layers = Vec::new();
    for path in user_path
        .into_iter()
        .chain([project_root.join(PROJECT_CONFIG)])
    {
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let raw = parse_file(&path, &text)?;
        layers.push(Layer { path, raw });
    }
    let warnings = layers
        .iter()
        .filter(|l| l.raw.has_password())
        .filter_map(|l| password_permission_warning(&l.path))
        .collect();
    let merged = Merged::from_layers(layers);
    let mut settings = merged.resolve(server, env)?;
    settings.cwd_relative = env
        .cwd
        .strip_prefix(&project_root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    settings.project_root = project_root;
    settings.warnings = warnings;
    Ok(settings)
}

/// One config file as written: every key optional, nothing merged or defaulted.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys default, defaults, servers"
)]
struct RawFile {
    default: Option<String>,
    defaults: Option<RawServer>,
    servers: Option<RawServers>,
}

impl RawFile {
    fn has_password(&self) -> bool {
        let servers = self.servers.iter().flat_map(|s| s.0.iter().map(|(_, s)| s));
        self.defaults
            .iter()
            .chain(servers)
            .any(|s| s.password.is_some())
    }
}

/// The keys of one server, or of `defaults:` (which may hold any server key).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of server settings")]
struct RawServer {
    host: Option<String>,
    user: Option<String>,
    port: Option<Port>,
    key_filename: Option<String>,
    password: Option<String>,
    remote_dir: Option<RemoteDir>,
    pre_cmd: Option<String>,
    exclude: Option<Vec<String>>,
    sync: Option<SyncEngine>,
    download_dir: Option<String>,
    respect_gitignore: Option<Flag>,
    strict_host_key_checking: Option<HostKeyPolicy>,
    connect_timeout: Option<Seconds>,
    watch: Option<Flag>,
}

impl RawServer {
    /// `over`'s keys replace `self`'s; `exclude` lists are concatenated (`self` first).
    fn overlay(self, over: RawServer) -> RawServer {
        let exclude = match (self.exclude, over.exclude) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            (a, b) => b.or(a),
        };
        RawServer {
            host: over.host.or(self.host),
            user: over.user.or(self.user),
            port: over.port.or(self.port),
            key_filename: over.key_filename.or(self.key_filename),
            password: over.password.or(self.password),
            remote_dir: over.remote_dir.or(self.remote_dir),
            pre_cmd: over.pre_cmd.or(self.pre_cmd),
            exclude,
            sync: over.sync.or(self.sync),
            download_dir: over.download_dir.or(self.download_dir),
            respect_gitignore: over.respect_gitignore.or(self.respect_gitignore),
            strict_host_key_checking: over
                .strict_host_key_checking
                .or(self.strict_host_key_checking),
            connect_timeout: over.connect_timeout.or(self.connect_timeout),
            watch: over.watch.or(self.watch),
        }
    }
}

/// `servers:` in file order.
#[derive(Debug, Default)]
struct RawServers(Vec<(String, RawServer)>);

impl<'de> Deserialize<'de> for RawServers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawServers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of server names to their settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServers, A::Error> {
                let mut servers = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    servers.push((name, map.next_value()?));
                }
                Ok(RawServers(servers))
            }
        }
        d.deserialize_map(V)
    }
}

/// A port number, 1-65535 (an integer or a string of digits).
#[derive(Debug, Clone, Copy)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(Port(p)),
                    _ => Err(E::invalid_value(Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                match v.trim().parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `remote_dir`: absolute, or `~` / `~/...` (left for the remote side to expand).
#[derive(Debug, Clone)]
struct RemoteDir(String);

impl<'de> Deserialize<'de> for RemoteDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RemoteDir;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an absolute path or one starting with ~/ (a relative remote_dir is ambiguous)",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RemoteDir, E> {
                if !(v == "~" || v.starts_with("~/") || v.starts_with('/')) {
                    return Err(E::invalid_value(Unexpected::Str(v), &self));
                }
                let trimmed = v.trim_end_matches('/');
                Ok(RemoteDir(
                    if trimmed.is_empty() { "/" } else { trimmed }.to_string(),
                ))
            }
        }
        d.deserialize_str(V)
    }
}

/// A boolean; YAML 1.1's `yes`/`no`/`on`/`off` are accepted too, as the reference tool's
/// parser (PyYAML) read them as booleans.
#[derive(Debug, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" => Ok(Flag(true)),
                    "false" | "no" | "off" => Ok(Flag(false)),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in seconds, greater than 0 (integer or decimal).
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of seconds greater than 0")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                if v == 0 {
                    return Err(E::invalid_value(Unexpected::Unsigned(v), &self));
                }
                Ok(Seconds(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                match Duration::try_from_secs_f64(v) {
                    Ok(d) if !d.is_zero() => Ok(Seconds(d)),
                    _ => Err(E::invalid_value(Unexpected::Float(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SyncEngine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SyncEngine;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one of: agent, rsync, sftp")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SyncEngine, E> {
                match v {
                    "agent" => Ok(SyncEngine::Agent),
                    "rsync" => Ok(SyncEngine::Rsync),
                    "sftp" => Ok(SyncEngine::Sftp),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for HostKeyPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HostKeyPolicy;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one of: yes, accept-new, no")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HostKeyPolicy, E> {
                Ok(if v {
                    HostKeyPolicy::Yes
                } else {
                    HostKeyPolicy::No
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HostKeyPolicy, E> {
                match v {
                    "yes" => Ok(HostKeyPolicy::Yes),
                    "accept-new" => Ok(HostKeyPolicy::AcceptNew),
                    "no" | "off" => Ok(HostKeyPolicy::No),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses one config file. Malformed YAML is a [`ConfigError::Syntax`]; unknown keys and bad
/// values are [`ConfigError::Invalid`] with the line of the offending key or value.
fn parse_file(path: &Path, text: &str) -> Result<RawFile, ConfigError> {
    // A first pass over the whole document, so a syntax error anywhere is reported as such
    // (the typed pass stops at the first problem it meets).
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let (mut line, message) = split_location(&e);
        if line.is_none() {
            line = second_document_line(text);
        }
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        }
    })?;
    let invalid = |e: serde_yaml::Error| {
        let (line, message) = split_location(&e);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            message: explain(&message),
        }
    };
    if has_merge_key(&value) {
        // PyYAML honours `<<: *anchor`; serde_yaml only does so on a `Value`. Re-emitting the
        // merged value keeps key paths in the errors, but its line numbers are not the file's.
        let unlocated = |e: serde_yaml::Error| match invalid(e) {
            ConfigError::Invalid { path, message, .. } => ConfigError::Invalid {
                path,
                line: None,
                message,
            },
            other => other,
        };
        value.apply_merge().map_err(unlocated)?;
        let merged = serde_yaml::to_string(&value).map_err(unlocated)?;
        return serde_yaml::from_str(&merged).map_err(unlocated);
    }
    serde_yaml::from_str(text).map_err(invalid)
}

fn has_merge_key(value: &serde_yaml::Value) -> bool {
    match value {
        serde_yaml::Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        serde_yaml::Value::Sequence(seq) => seq.iter().any(has_merge_key),
        serde_yaml::Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// The error's 1-based line and its message without serde_yaml's trailing
/// " at line L column C".
/// Where a second YAML document starts (serde_yaml reports "more than one document" without a
/// location): the line after the longest prefix of whole lines that is one document. Config
/// files are small; past 2,000 lines this gives up.
fn second_document_line(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.split_inclusive('\n').take(2_000).collect();
    let mut end = 0;
    let mut prefix_len = 0;
    for (i, l) in lines.iter().enumerate() {
        prefix_len += l.len();
        if serde_yaml::from_str::<serde_yaml::Value>(&text[..prefix_len]).is_ok() {
            end = i + 1;
        }
    }
    (end < lines.len()).then_some(end + 1)
}

fn split_location(e: &serde_yaml::Error) -> (Option<usize>, String) {
    let text = e.to_string();
    let Some(loc) = e.location() else {
        return (None, text);
    };
    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    (Some(loc.line()), message)
}

/// Rewrites a serde_yaml message (`servers.gpu: unknown field `hots`, expected ...`) in mtr's
/// words, naming the key and where it sits.
fn explain(message: &str) -> String {
    let (path, body) = split_path(message);
    let backticked = |s: &str| s.split('`').nth(1).unwrap_or_default().to_string();
    if body.starts_with("unknown field `") {
        let key = backticked(body);
        return match path {
            None => format!(
                "unknown top-level key '{key}' (expected one of: {})",
                TOP_KEYS.join(", ")
            ),
            Some(p) => format!(
                "unknown key '{key}' in {p} (expected one of: {})",
                SERVER_KEYS.join(", ")
            ),
        };
    }
    if body.starts_with("duplicate field `") {
        let key = backticked(body);
        return format!(
            "duplicate key '{key}' in {}",
            path.unwrap_or("the top level")
        );
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = body.strip_prefix(prefix) else {
            continue;
        };
        let Some(i) = rest.rfind(", expected ") else {
            continue;
        };
        let got = match &rest[..i] {
            "unit value" => "an empty value",
            got => got,
        };
        let expected = &rest[i + ", expected ".len()..];
        let what = match path {
            None => "the top level".to_string(),
            Some(p) => match p.rsplit_once('.') {
                Some((parent, key)) => format!("'{key}' in {parent}"),
                None => format!("'{p}'"),
            },
        };
        return format!("bad value for {what}: expected {expected}, got {got}");
    }
    match path {
        Some(p) => format!("{p}: {body}"),
        None => body.to_string(),
    }
}

/// Splits serde_yaml's "path: message" (the path is absent at the top level).
fn split_path(message: &str) -> (Option<&str>, &str) {
    const MESSAGES: &[&str] = &[
        "unknown field `",
        "duplicate field `",
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "missing field `",
        "unknown variant `",
    ];
    if MESSAGES.iter().any(|m| message.starts_with(m)) {
        return (None, message);
    }
    let split = MESSAGES
        .iter()
        .filter_map(|m| message.find(&format!(": {m}")))
        .min();
    match split {
        Some(i) => (Some(&message[..i]), &message[i + 2..]),
        None => (None, message),
    }
}

/// A file that was read.
struct Layer {
    path: PathBuf,
    raw: RawFile,
}

/// A server after merging the files.
struct MergedServer {
    name: String,
    raw: RawServer,
    /// The files defining it, for error messages.
    files: Vec<PathBuf>,
}

/// All files merged, before a server is chosen.
struct Merged {
    files: Vec<PathBuf>,
    /// `default:` and the file that set it.
    default: Option<(String, PathBuf)>,
    defaults: RawServer,
    /// Project servers first (in file order), then those only the user file has.
    servers: Vec<MergedServer>,
}

impl Merged {
    /// Merges `layers`, lowest precedence first.
    fn from_layers(layers: Vec<Layer>) -> Merged {
        let mut merged = Merged {
            files: Vec::new(),
            default: None,
            defaults: RawServer::default(),
            servers: Vec::new(),
        };
        for Layer { path, raw } in layers {
            merged.files.push(path.clone());
            if let Some(name) = raw.default {
                merged.default = Some((name, path.clone()));
            }
            if let Some(defaults) = raw.defaults {
                merged.defaults = std::mem::take(&mut merged.defaults).overlay(defaults);
            }
            let mut servers = Vec::new();
            for (name, server) in raw.servers.map(|s| s.0).unwrap_or_default() {
                let mut entry = match merged.servers.iter().position(|s| s.name == name) {
                    Some(i) => merged.servers.remove(i),
                    None => MergedServer {
                        name,
                        raw: RawServer::default(),
                        files: Vec::new(),
                    },
                };
                entry.raw = entry.raw.overlay(server);
                entry.files.push(path.clone());
                servers.push(entry);
            }
            // This layer's servers come first; the lower layers' other servers follow.
            servers.append(&mut merged.servers);
            merged.servers = servers;
        }
        merged
    }

    /// Chooses the server and applies `defaults` and the built-in defaults.
    fn resolve(self, server: Option<&str>, env: &Env) -> Result<Settings, ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers { files: self.files });
        }
        let (wanted, named_by) = match (server, &self.default) {
            (Some(name), _) => (name.to_string(), None),
            (None, Some((name, file))) => (name.clone(), Some(file.clone())),
            (None, None) => (self.servers[0].name.clone(), None),
        };
        let known: Vec<String> = self.servers.iter().map(|s| s.name.clone()).collect();
        let Some(chosen) = self.servers.into_iter().find(|s| s.name == wanted) else {
            return Err(ConfigError::UnknownServer {
                name: wanted,
                known,
                named_by,
            });
        };
        let MergedServer { name, raw, files } = chosen;
        let raw = self.defaults.overlay(raw);
        let missing = |key| ConfigError::MissingKey {
            server: name.clone(),
            key,
            files: files.clone(),
        };
        let host = raw
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| missing("host"))?;
        let remote_dir = raw.remote_dir.ok_or_else(|| missing("remote_dir"))?.0;
        let user = match raw.user.filter(|u| !u.is_empty()) {
            Some(user) => user,
            None => env.local_user.clone().ok_or_else(|| ConfigError::NoUser {
                server: name.clone(),
                files: files.clone(),
            })?,
        };
        let local_path = |p: String| {
            let p = expand_tilde(&p, env.home.as_deref());
            env.cwd.join(p)
        };
        let mut excludes = vec![MTR_DIR_EXCLUDE.to_string()];
        for pattern in raw.exclude.unwrap_or_default() {
            if !excludes.contains(&pattern) {
                excludes.push(pattern);
            }
        }
        Ok(Settings {
            project_root: PathBuf::new(),
            cwd_relative: PathBuf::new(),
            config_files: self.files,
            server_name: name,
            host,
            port: raw.port.map_or(DEFAULT_PORT, |p| p.0),
            user,
            key_filename: raw.key_filename.filter(|k| !k.is_empty()).map(local_path),
            password: raw.password,
            remote_dir,
            pre_cmd: raw.pre_cmd.filter(|c| !c.trim().is_empty()),
            excludes,
            respect_gitignore: raw.respect_gitignore.map(|f| f.0).unwrap_or(true),
            sync: raw.sync.unwrap_or_default(),
            download_dir: raw.download_dir.filter(|d| !d.is_empty()).map(local_path),
            strict_host_key_checking: raw.strict_host_key_checking.unwrap_or_default(),
            connect_timeout: raw.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |s| s.0),
            watch: raw.watch.map(|f| f.0).unwrap_or(true),
            warnings: Vec::new(),
        })
    }
}

/// Expands a leading `~` or `~/` with `home` (other paths unchanged).
fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (home, path) {
        (Some(home), "~") => home.to_path_buf(),
        (Some(home), _) if path.starts_with("~/") => home.join(&path[2..]),
        _ => PathBuf::from(path),
    }
}

/// A warning when `path`, which holds a password, can be read by group or others.
#[cfg(unix)]
fn password_permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} contains a password and is readable by others (mode {:o}); run `chmod 600 {}` \
             or use a key instead",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn password_permission_warning(_path: &Path) -> Option<String> {
    None
}

/// The `mtr --init` template; `{remote_dir}` is replaced by a directory named after the project.
const INIT_TEMPLATE: &str = r#"# mtr configuration for this project.
#
# mtr finds this file by walking up from the current directory; the directory holding .mtr/ is
# the project root, synced to the server's remote_dir. Keys here override those in
# ~/.config/mtr/config.yaml (same format). Every key is described in mtr's examples/config.yaml.

# Server used when -s/--server is not given (default: the first one under servers:).
# default: dev-node

# Settings shared by all servers; a server's own keys override them (exclude lists add up).
defaults:
  # How to sync: agent (default; sends only content the server lacks), rsync, or sftp.
  sync: agent

  # Also skip what the project's .gitignore files ignore.
  respect_gitignore: true

  # Gitignore-style patterns never synced (.mtr/ is always excluded).
  exclude:
    - ".git/"
    - "__pycache__/"
    - "*.pyc"

  # Where --get puts downloads (default: the current directory).
  # download_dir: "./downloads"

servers:
  dev-node:
    host: "192.168.1.100"
    # user: "your_username"            # default: your local user name
    # port: 22
    # key_filename: "~/.ssh/id_ed25519"  # default: ssh-agent, then your default keys
    remote_dir: "{remote_dir}"

    # Run before every command (optional).
    # pre_cmd: "source ~/.bashrc && conda activate myenv"

    # Password authentication (optional; prefer keys, and keep this file private: chmod 600).
    # password: "secret"

    # Host key check, as OpenSSH's StrictHostKeyChecking: yes (default), accept-new, no.
    # strict_host_key_checking: yes

    # Seconds allowed to connect (default 10).
    # connect_timeout: 10

    # Leave a watcher on the node between syncs (default true; agent engine), so a sync that
    # finds nothing changed there skips checking the remote tree.
    # watch: true

    # Where --get puts downloads from this server (overrides defaults).
    # download_dir: "./downloads/dev-node"
"#;

/// The template text for a project in `project_dir`.
fn init_template(project_dir: &Path) -> String {
    let name = project_dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .filter(|n| !n.starts_with('.'))
        .unwrap_or("project");
    INIT_TEMPLATE.replace("{remote_dir}", &format!("~/projects/{name}"))
}

/// Writes a commented `.mtr/config.yaml` template in `cwd` and returns its path. Never
/// overwrites: an existing file is [`ConfigError::AlreadyExists`].
pub fn init(cwd: &Path) -> Result<PathBuf, ConfigError> {
    let path = cwd.join(PROJECT_CONFIG);
    if path.exists() {
        return Err(ConfigError::AlreadyExists { path });
    }
    let dir = cwd.join(".mtr");
    fs::create_dir_all(&dir).map_err(|source| ConfigError::Write {
        path: dir.clone(),
        source,
    })?;
    let write_err = |source: io::Error| match source.kind() {
        io::ErrorKind::AlreadyExists => ConfigError::AlreadyExists { path: path.clone() },
        _ => ConfigError::Write {
            path: path.clone(),
            source,
        },
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(init_template(cwd).as_bytes())
        .map_err(write_err)?;
    Ok(path)
}

/// Settings for unit tests elsewhere in the crate: one server `test`, key-less, agent engine.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn settings_for(remote_dir: &str) -> Settings {
        Settings {
            project_root: PathBuf::from("/project"),
            cwd_relative: PathBuf::new(),
            config_files: vec![PathBuf::from("/project/.mtr/config.yaml")],
            server_name: "test".into(),
            host: "127.0.0.1".into(),
            port: 22,
            user: "u".into(),
            key_filename: None,
            password: None,
            remote_dir: remote_dir.into(),
            pre_cmd: None,
            excludes: vec![".mtr/".into()],
            respect_gitignore: true,
            sync: SyncEngine::Agent,
            download_dir: None,
            strict_host_key_checking: HostKeyPolicy::Yes,
            connect_timeout: Duration::from_secs(10),
            watch: true,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A temp dir holding a home (`home/`) and a project (`proj/`).
    struct Fixture {
        tmp: TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir_all(tmp.path().join("home")).unwrap();
            fs::create_dir_all(tmp.path().join("proj")).unwrap();
            Fixture { tmp }
        }
        fn home(&self) -> PathBuf {
            self.tmp.path().join("home")
        }
        fn proj(&self) -> PathBuf {
            self.tmp.path().join("proj")
        }
        fn project_config(&self, text: &str) -> PathBuf {
            write(&self.proj().join(PROJECT_CONFIG), text)
        }
        fn user_config(&self, text: &str) -> PathBuf {
            write(&user_config_path(&self.home()), text)
        }
        fn env_in(&self, cwd: &Path) -> Env {
            Env {
                cwd: cwd.to_path_buf(),
                home: Some(self.home()),
                local_user: Some("alice".into()),
            }
        }
        fn load(&self, server: Option<&str>) -> Result<Settings, ConfigError> {
            load(&self.env_in(&self.proj()), server)
        }
    }

    fn write(path: &Path, text: &str) -> PathBuf {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        path.to_path_buf()
    }

    fn parse(text: &str) -> Result<RawFile, ConfigError> {
        parse_file(Path::new("/p/.mtr/config.yaml"), text)
    }

    fn parse_err(text: &str) -> (Option<usize>, String) {
        match parse(text) {
            Ok(raw) => panic!("parsed: {raw:?}"),
            Err(ConfigError::Invalid { line, message, .. }) => (line, message),
            Err(e) => panic!("not an Invalid error: {e:?}"),
        }
    }

    const MINIMAL: &str = "servers:\n  gpu:\n    host: gpu.example\n    remote_dir: ~/proj\n";

    #[test]
    fn a_second_document_is_a_syntax_error_with_its_line() {
        // Found by the property test below: serde_yaml gives this error no location.
        for (text, line) in [("  servers: \nservers: ", 2), ("''0", 1)] {
            match parse(text) {
                Err(ConfigError::Syntax { line: got, .. }) => {
                    assert_eq!(got, Some(line), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let f = Fixture::new();
        let file = f.project_config(MINIMAL);
        let s = f.load(None).unwrap();
        assert_eq!(s.project_root, f.proj());
        assert_eq!(s.cwd_relative, PathBuf::new());
        assert_eq!(s.config_files, [file]);
        assert_eq!(s.server_name, "gpu");
        assert_eq!(s.host, "gpu.example");
        assert_eq!(s.port, 22);
        assert_eq!(s.user, "alice");
        assert_eq!(s.key_filename, None);
        assert_eq!(s.password, None);
        assert_eq!(s.remote_dir, "~/proj");
        assert_eq!(s.pre_cmd, None);
        assert_eq!(s.excludes, [".mtr/"]);
        assert!(s.respect_gitignore);
        assert_eq!(s.sync, SyncEngine::Agent);
        assert_eq!(s.download_dir, None);
        assert_eq!(s.strict_host_key_checking, HostKeyPolicy::Yes);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert!(s.warnings.is_empty());
        assert_eq!(s.remote_workdir(), "~/proj");
    }

    #[test]
    fn discovery_walks_up_from_a_subdirectory() {
        let f = Fixture::new();
        f.project_config(MINIMAL);
        let sub = f.proj().join("src").join("models");
        fs::create_dir_all(&sub).unwrap();
        let s = load(&f.env_in(&sub), None).unwrap();
        assert_eq!(s.project_root, f.proj());
        assert_eq!(s.cwd_relative, Path::new("src/models"));
        assert_eq!(s.remote_workdir(), "~/proj/src/models");
        assert_eq!(find_project_root(&sub), Some(f.proj()));
    }

    #[test]
    fn nearest_project_wins_when_nested() {
        let f = Fixture::new();
        f.project_config(MINIMAL);
        let inner = f.proj().join("inner");
        write(
            &inner.join(PROJECT_CONFIG),
            "servers:\n  other:\n    host: h\n    remote_dir: /x\n",
        );
        let s = load(&f.env_in(&inner), None).unwrap();
        assert_eq!(s.project_root, inner);
        assert_eq!(s.server_name, "other");
    }

    #[test]
    fn no_config_at_all_tells_to_run_init() {
        let f = Fixture::new();
        let err = f.load(None).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::NotFound {
                user_config: None,
                ..
            }
        ));
        assert!(err.to_string().contains("mtr --init"), "{err}");
    }

    #[test]
    fn user_config_alone_is_not_a_project() {
        let f = Fixture::new();
        let user = f.user_config(MINIMAL);
        let err = f.load(None).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigError::NotFound { user_config: Some(ref p), .. } if *p == user)
        );
        assert!(
            msg.contains("mtr --init") && msg.contains("project root"),
            "{msg}"
        );
    }

    #[test]
    fn project_file_merges_over_user_file_key_by_key() {
        let f = Fixture::new();
        let user = f.user_config(
            "default: cpu\n\
             defaults:\n  exclude: [\"*.log\"]\n  sync: rsync\n  connect_timeout: 3\n\
             servers:\n\
             \x20 gpu:\n    host: old.example\n    user: bob\n    port: 2222\n    remote_dir: /old\n    exclude: [data/]\n\
             \x20 cpu:\n    host: cpu.example\n    remote_dir: /cpu\n",
        );
        let project = f.project_config(
            "default: gpu\n\
             defaults:\n  exclude: [\"*.ckpt\"]\n  respect_gitignore: false\n\
             servers:\n  gpu:\n    host: new.example\n    exclude: [out/]\n",
        );
        let s = f.load(None).unwrap();
        assert_eq!(
            s.describe_sources(),
            format!("{} and {}", user.display(), project.display())
        );
        assert_eq!(s.config_files, [user, project]);
        assert_eq!(s.server_name, "gpu", "project's default: wins");
        assert_eq!(s.host, "new.example", "project key replaces user key");
        assert_eq!(s.user, "bob", "user-file key kept when project lacks it");
        assert_eq!(s.port, 2222);
        assert_eq!(s.remote_dir, "/old");
        assert_eq!(
            s.sync,
            SyncEngine::Rsync,
            "defaults from the user file apply"
        );
        assert!(!s.respect_gitignore);
        assert_eq!(s.connect_timeout, Duration::from_secs(3));
        assert_eq!(
            s.excludes,
            [".mtr/", "*.log", "*.ckpt", "data/", "out/"],
            "defaults then server, user file before project file"
        );
        // The user file's other server is still available.
        assert_eq!(f.load(Some("cpu")).unwrap().host, "cpu.example");
    }

    #[test]
    fn server_keys_override_defaults_and_excludes_add_up() {
        let f = Fixture::new();
        f.project_config(
            "defaults:\n  sync: rsync\n  exclude: [a/, b/]\n  download_dir: /dl\n  user: shared\n\
             servers:\n  gpu:\n    host: h\n    remote_dir: /r\n    sync: sftp\n    exclude: [b/, c/]\n",
        );
        let s = f.load(None).unwrap();
        assert_eq!(s.sync, SyncEngine::Sftp);
        assert_eq!(s.user, "shared");
        assert_eq!(s.download_dir, Some(PathBuf::from("/dl")));
        assert_eq!(s.excludes, [".mtr/", "a/", "b/", "c/"]);
    }

    const THREE_SERVERS: &str = "servers:\n\
        \x20 zeta:\n    host: z\n    remote_dir: /z\n\
        \x20 alpha:\n    host: a\n    remote_dir: /a\n\
        \x20 mid:\n    host: m\n    remote_dir: /m\n";

    #[test]
    fn first_listed_server_is_chosen_by_default_in_file_order() {
        let f = Fixture::new();
        f.project_config(THREE_SERVERS);
        assert_eq!(f.load(None).unwrap().server_name, "zeta");
    }

    #[test]
    fn default_key_chooses_the_server() {
        let f = Fixture::new();
        f.project_config(&format!("default: mid\n{THREE_SERVERS}"));
        assert_eq!(f.load(None).unwrap().server_name, "mid");
    }

    #[test]
    fn dash_s_overrides_default_key() {
        let f = Fixture::new();
        f.project_config(&format!("default: mid\n{THREE_SERVERS}"));
        let s = f.load(Some("alpha")).unwrap();
        assert_eq!((s.server_name.as_str(), s.host.as_str()), ("alpha", "a"));
    }

    #[test]
    fn unknown_server_lists_the_known_ones() {
        let f = Fixture::new();
        f.project_config(THREE_SERVERS);
        let err = f.load(Some("nope")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown server 'nope' (given by -s/--server); known servers: zeta, alpha, mid"
        );
    }

    #[test]
    fn unknown_default_server_names_the_file() {
        let f = Fixture::new();
        let file = f.project_config(&format!("default: gone\n{THREE_SERVERS}"));
        let msg = f.load(None).unwrap_err().to_string();
        assert!(
            msg.contains("'gone'") && msg.contains(&file.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("zeta, alpha, mid"), "{msg}");
    }

    #[test]
    fn empty_servers_is_an_error_naming_the_file() {
        let f = Fixture::new();
        let file = f.project_config("servers:\n");
        let err = f.load(None).unwrap_err();
        assert!(matches!(err, ConfigError::NoServers { .. }));
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );

        f.project_config("# nothing yet\n");
        assert!(matches!(f.load(None), Err(ConfigError::NoServers { .. })));
    }

    #[test]
    fn missing_host_names_server_and_file() {
        let f = Fixture::new();
        let file = f.project_config("servers:\n  gpu:\n    remote_dir: /r\n");
        let err = f.load(None).unwrap_err();
        assert!(matches!(err, ConfigError::MissingKey { key: "host", .. }));
        let msg = err.to_string();
        assert!(msg.contains("servers.gpu.host"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_remote_dir_is_an_error() {
        let f = Fixture::new();
        f.project_config("servers:\n  gpu:\n    host: h\n");
        let err = f.load(None).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::MissingKey {
                    key: "remote_dir",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_user_without_local_user_is_an_error() {
        let f = Fixture::new();
        f.project_config(MINIMAL);
        let mut env = f.env_in(&f.proj());
        env.local_user = None;
        let err = load(&env, None).unwrap_err();
        assert!(matches!(err, ConfigError::NoUser { .. }), "{err}");
    }

    #[test]
    fn unknown_key_reports_file_line_and_key() {
        let f = Fixture::new();
        let file = f.project_config(
            "defaults:\n  sync: agent\n\nservers:\n  gpu:\n    host: h\n    hots: typo\n    remote_dir: /r\n",
        );
        let msg = f.load(None).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}:7: unknown key 'hots' in servers.gpu (expected one of: {})",
                file.display(),
                SERVER_KEYS.join(", ")
            )
        );
    }

    #[test]
    fn unknown_top_level_and_defaults_keys_report_their_line() {
        let (line, msg) = parse_err("servers: {}\nserver: gpu\n");
        assert_eq!(line, Some(2));
        assert!(
            msg.starts_with(
                "unknown top-level key 'server' (expected one of: default, defaults, servers)"
            ),
            "{msg}"
        );

        // serde_yaml reports the first line as line 1 (its Display omits it; we must not).
        let (line, msg) = parse_err("hosts: x\n");
        assert_eq!(line, Some(1));
        assert!(msg.contains("'hosts'"), "{msg}");

        let (line, msg) = parse_err("defaults:\n  sync: agent\n  excludes: [a]\n");
        assert_eq!(line, Some(3));
        assert!(
            msg.starts_with("unknown key 'excludes' in defaults"),
            "{msg}"
        );
    }

    #[test]
    fn every_documented_key_is_accepted_in_defaults_and_servers() {
        for key in SERVER_KEYS {
            parse(&format!(
                "defaults:\n  {key}:\nservers:\n  s:\n    {key}:\n"
            ))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }

    #[test]
    fn bad_sync_value_names_the_key_line_and_choices() {
        let (line, msg) = parse_err("servers:\n  gpu:\n    host: h\n    sync: scp\n");
        assert_eq!(line, Some(4));
        assert_eq!(
            msg,
            "bad value for 'sync' in servers.gpu: expected one of: agent, rsync, sftp, got string \"scp\""
        );
    }

    #[test]
    fn bad_port_values_are_rejected_with_their_line() {
        for (value, got) in [
            ("abc", "string \"abc\""),
            ("70000", "integer `70000`"),
            ("0", "integer `0`"),
            ("-1", "integer `-1`"),
        ] {
            let (line, msg) = parse_err(&format!("servers:\n  gpu:\n    port: {value}\n"));
            assert_eq!(line, Some(3), "{value}");
            assert_eq!(
                msg,
                format!("bad value for 'port' in servers.gpu: expected a port number (1-65535), got {got}")
            );
        }
    }

    #[test]
    fn port_accepts_integers_and_digit_strings() {
        let f = Fixture::new();
        f.project_config("servers:\n  gpu:\n    host: h\n    remote_dir: /r\n    port: \"2222\"\n");
        assert_eq!(f.load(None).unwrap().port, 2222);
    }

    #[test]
    fn relative_remote_dir_is_rejected() {
        let (line, msg) = parse_err("servers:\n  gpu:\n    host: h\n    remote_dir: projects/x\n");
        assert_eq!(line, Some(4));
        assert!(
            msg.starts_with("bad value for 'remote_dir' in servers.gpu: expected an absolute path"),
            "{msg}"
        );
    }

    #[test]
    fn remote_dir_keeps_tilde_and_drops_trailing_slash() {
        let f = Fixture::new();
        f.project_config("servers:\n  gpu:\n    host: h\n    remote_dir: ~/work/\n");
        assert_eq!(f.load(None).unwrap().remote_dir, "~/work");
        f.project_config("servers:\n  gpu:\n    host: h\n    remote_dir: /\n");
        assert_eq!(f.load(None).unwrap().remote_dir, "/");
    }

    #[test]
    fn mtr_keys_parse_and_bad_values_are_rejected() {
        let f = Fixture::new();
        f.project_config(
            "defaults:\n  strict_host_key_checking: accept-new\n\
             servers:\n  gpu:\n    host: h\n    remote_dir: /r\n    connect_timeout: 2.5\n",
        );
        let s = f.load(None).unwrap();
        assert_eq!(s.strict_host_key_checking, HostKeyPolicy::AcceptNew);
        assert_eq!(s.connect_timeout, Duration::from_millis(2500));

        let (line, msg) = parse_err("servers:\n  g:\n    strict_host_key_checking: ask\n");
        assert_eq!(line, Some(3));
        assert!(
            msg.contains("expected one of: yes, accept-new, no"),
            "{msg}"
        );
        let (_, msg) = parse_err("servers:\n  g:\n    connect_timeout: 0\n");
        assert!(msg.contains("greater than 0"), "{msg}");
        let (_, msg) = parse_err("defaults:\n  connect_timeout: soon\n");
        assert!(
            msg.starts_with("bad value for 'connect_timeout' in defaults"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let (line, msg) = parse_err("servers:\n  gpu:\n    exclude: foo\n");
        assert_eq!(line, Some(3));
        assert!(
            msg.starts_with("bad value for 'exclude' in servers.gpu: expected a sequence"),
            "{msg}"
        );

        let (line, msg) = parse_err("servers:\n  gpu:\n    respect_gitignore: maybe\n");
        assert_eq!(line, Some(3));
        assert!(msg.contains("expected true or false"), "{msg}");

        let (line, msg) = parse_err("default: [a, b]\n");
        assert_eq!(line, Some(1));
        assert!(msg.starts_with("bad value for 'default'"), "{msg}");

        let (line, msg) = parse_err("servers:\n  gpu: just-a-host\n");
        assert_eq!(line, Some(2));
        assert!(
            msg.starts_with(
                "bad value for 'gpu' in servers: expected a mapping of server settings"
            ),
            "{msg}"
        );

        let (_, msg) = parse_err("- a\n- b\n");
        assert!(
            msg.contains("expected a mapping with the keys default, defaults, servers"),
            "{msg}"
        );
    }

    #[test]
    fn yaml_1_1_booleans_are_accepted_for_compatibility() {
        let f = Fixture::new();
        f.project_config(
            "defaults:\n  respect_gitignore: no\nservers:\n  g:\n    host: h\n    remote_dir: /r\n",
        );
        assert!(!f.load(None).unwrap().respect_gitignore);
    }

    #[test]
    fn watch_defaults_to_on_and_a_server_can_turn_it_off() {
        let f = Fixture::new();
        f.project_config(
            "servers:\n  g:\n    host: h\n    remote_dir: /r\n  shared:\n    host: s\n    \
             remote_dir: /r\n    watch: false\n",
        );
        assert!(f.load(Some("g")).unwrap().watch);
        assert!(!f.load(Some("shared")).unwrap().watch);
        f.project_config(
            "defaults:\n  watch: off\nservers:\n  g:\n    host: h\n    remote_dir: /r\n",
        );
        assert!(!f.load(None).unwrap().watch);
    }

    #[test]
    fn malformed_yaml_reports_file_and_line() {
        let f = Fixture::new();
        let file = f.project_config("servers:\n  gpu:\n    host: h\n\tremote_dir: /r\n");
        let err = f.load(None).unwrap_err();
        let ConfigError::Syntax { line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*line, Some(4));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}:4: malformed YAML: ", file.display())),
            "{msg}"
        );
    }

    #[test]
    fn syntax_error_after_a_semantic_one_is_reported_as_syntax() {
        let err = parse("bogus: 1\nservers: [\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn duplicate_server_is_malformed_yaml() {
        let err = parse("servers:\n  a: {}\n  a: {}\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn merge_keys_are_applied_as_pyyaml_did() {
        let f = Fixture::new();
        f.project_config(
            "servers:\n  a: &base\n    host: a\n    remote_dir: /r\n    port: 2200\n  b:\n    <<: *base\n    host: b\n",
        );
        let s = f.load(Some("b")).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.remote_dir.as_str()),
            ("b", 2200, "/r")
        );
    }

    #[test]
    fn errors_in_files_with_merge_keys_name_the_key_without_a_line() {
        let text = "servers:\n  a: &base\n    host: a\n  b:\n    <<: *base\n    prt: 1\n";
        let (line, msg) = parse_err(text);
        assert_eq!(line, None);
        assert!(msg.starts_with("unknown key 'prt' in servers.b"), "{msg}");
    }

    #[test]
    fn several_yaml_documents_are_malformed() {
        let err = parse("---\nservers: {}\n---\ndefault: x\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn key_filename_and_download_dir_expand_tilde_and_resolve_from_cwd() {
        let f = Fixture::new();
        f.project_config(
            "servers:\n  g:\n    host: h\n    remote_dir: /r\n    key_filename: ~/.ssh/id\n    download_dir: dl\n",
        );
        let s = f.load(None).unwrap();
        assert_eq!(s.key_filename, Some(f.home().join(".ssh/id")));
        assert_eq!(s.download_dir, Some(f.proj().join("dl")));
    }

    #[test]
    fn numeric_scalars_are_read_as_strings() {
        let f = Fixture::new();
        f.project_config("servers:\n  g:\n    host: 10.0.0.7\n    user: 1000\n    password: 123456\n    remote_dir: /r\n");
        let s = f.load(None).unwrap();
        assert_eq!((s.host.as_str(), s.user.as_str()), ("10.0.0.7", "1000"));
        assert_eq!(s.password.as_deref(), Some("123456"));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let f = Fixture::new();
        f.project_config(
            "servers:\n  g:\n    host: h\n    remote_dir: /r\n    password: hunter2\n",
        );
        let s = f.load(None).unwrap();
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn password_in_a_readable_file_produces_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new();
        let file =
            f.project_config("servers:\n  g:\n    host: h\n    remote_dir: /r\n    password: pw\n");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let s = f.load(None).unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(s.warnings[0].contains(&file.display().to_string()));
        assert!(s.warnings[0].contains("chmod 600"));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(f.load(None).unwrap().warnings.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn readable_file_without_password_gives_no_warning() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new();
        let file = f.project_config(MINIMAL);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(f.load(None).unwrap().warnings.is_empty());
    }

    #[test]
    fn init_writes_a_template_that_loads() {
        let f = Fixture::new();
        let path = init(&f.proj()).unwrap();
        assert_eq!(path, f.proj().join(PROJECT_CONFIG));
        let s = f.load(None).unwrap();
        assert_eq!(s.server_name, "dev-node");
        assert_eq!(s.sync, SyncEngine::Agent);
        assert_eq!(s.remote_dir, "~/projects/proj");
        assert_eq!(s.excludes, [".mtr/", ".git/", "__pycache__/", "*.pyc"]);
    }

    #[test]
    fn init_refuses_to_overwrite_an_existing_config() {
        let f = Fixture::new();
        let path = f.project_config("# mine\n");
        let err = init(&f.proj()).unwrap_err();
        assert!(matches!(err, ConfigError::AlreadyExists { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\n");
    }

    #[test]
    fn init_template_uses_a_safe_project_name() {
        assert!(init_template(Path::new("/x/my-proj_1.0")).contains("~/projects/my-proj_1.0"));
        assert!(init_template(Path::new("/x/my proj: v2"))
            .contains("remote_dir: \"~/projects/project\""));
        for dir in ["/", "/x/.hidden", "/x/émoji"] {
            parse(&init_template(Path::new(dir))).unwrap_or_else(|e| panic!("{dir}: {e}"));
        }
    }

    const EXAMPLE: &str = include_str!("../../examples/config.yaml");

    #[test]
    fn example_config_parses_and_resolves() {
        let raw = parse(EXAMPLE).unwrap();
        assert!(raw.servers.as_ref().is_some_and(|s| s.0.len() >= 2));
        let f = Fixture::new();
        f.project_config(EXAMPLE);
        let s = f.load(None).unwrap();
        assert!(!s.host.is_empty());
        for server in raw.servers.unwrap().0 {
            f.load(Some(&server.0))
                .unwrap_or_else(|e| panic!("{}: {e}", server.0));
        }
    }

    #[test]
    fn example_config_documents_every_key() {
        for key in TOP_KEYS.iter().chain(SERVER_KEYS) {
            assert!(
                EXAMPLE.contains(&format!("{key}:")),
                "examples/config.yaml lacks `{key}`"
            );
        }
    }
}

/// Property tests of the loader: any text, whether near-valid YAML built from the real keys or
/// arbitrary characters, yields settings or an error naming the file (with a line for syntax
/// errors and for bad keys or values); never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "servers",
        "defaults",
        "default",
        "host",
        "port",
        "user",
        "key_filename",
        "password",
        "remote_dir",
        "pre_cmd",
        "exclude",
        "respect_gitignore",
        "sync",
        "download_dir",
        "strict_host_key_checking",
        "connect_timeout",
        "watch",
        "gpu",
        "dev",
        "unknown_key",
        "",
    ];
    const VALUES: &[&str] = &[
        "",
        "gpu",
        "~/proj",
        "/abs",
        "22",
        "-1",
        "70000",
        "0x16",
        "1e3",
        "yes",
        "no",
        "true",
        "null",
        "~",
        "[]",
        "[a, b]",
        "{}",
        "{a: 1}",
        "\"quoted\"",
        "'single'",
        "|",
        ">",
        "*ref",
        "&anchor x",
        "!!binary aGk=",
        "agent",
        "rsync",
        "sftp",
        "accept-new",
        "\"\\u0000\"",
        "\u{1F600}",
        "\t",
        "- item",
        ": :",
        "#comment",
        "%YAML 1.2",
        "---",
        "...",
    ];

    fn line() -> impl Strategy<Value = String> {
        (
            0usize..4,
            prop::sample::select(KEYS),
            prop::sample::select(VALUES),
            any::<bool>(),
        )
            .prop_map(|(depth, key, value, list)| {
                let indent = "  ".repeat(depth);
                let dash = if list { "- " } else { "" };
                format!("{indent}{dash}{key}: {value}")
            })
    }

    fn near_yaml() -> impl Strategy<Value = String> {
        prop::collection::vec(line(), 0..24).prop_map(|lines| lines.join("\n"))
    }

    fn check(text: &str) {
        match parse_file(Path::new("/p/.mtr/config.yaml"), text) {
            Ok(_) => {}
            Err(ConfigError::Syntax { path, line, .. }) => {
                assert_eq!(path, Path::new("/p/.mtr/config.yaml"));
                assert!(line.is_some(), "a syntax error without a line for {text:?}");
            }
            Err(e @ ConfigError::Invalid { .. }) => {
                assert!(e.to_string().contains("/p/.mtr/config.yaml"), "{e}");
            }
            Err(e) => panic!("unexpected error kind for {text:?}: {e:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn near_valid_yaml_never_panics(text in near_yaml()) {
            check(&text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            check(&text);
        }

        /// Through the whole loader too (discovery, merge with a user file, validation).
        #[test]
        fn loading_never_panics(project in near_yaml(), user in near_yaml()) {
            let tmp = tempfile::tempdir().unwrap();
            let proj = tmp.path().join("proj");
            let home = tmp.path().join("home");
            std::fs::create_dir_all(proj.join(".mtr")).unwrap();
            std::fs::create_dir_all(home.join(".config/mtr")).unwrap();
            std::fs::write(proj.join(PROJECT_CONFIG), &project).unwrap();
            std::fs::write(user_config_path(&home), &user).unwrap();
            let env = Env { cwd: proj, home: Some(home), local_user: Some("alice".into()) };
            let _ = load(&env, None);
            let _ = load(&env, Some("gpu"));
        }
    }
}
