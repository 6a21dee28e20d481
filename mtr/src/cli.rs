//! Command-line arguments: the clap parser and the raw values it yields.
//!
//! The flags are those of the reference Python tool (`mtr-cli` 2.0.0), so scripts written for it
//! keep working. Everything after the first positional word belongs to the remote command:
//! `mtr python3 -s x.py` runs `python3 -s x.py` remotely and does not select a server. Nothing
//! here is validated against the config; [`crate::config`] turns the config files into settings,
//! and `main` combines the two.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// Raw command-line arguments, as typed by the user.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "mtr",
    version,
    about = "Sync the project to a remote node and run a command there.",
    after_help = "Options after the first word of COMMAND belong to the command: \
                  `mtr python3 -s x.py` passes `-s x.py` to python3.\n\
                  Use `--` to pass a command that starts with `-`: `mtr -s gpu -- -weird-cmd`."
)]
pub struct Args {
    /// Server to use, by its name under `servers:` in the config.
    #[arg(short = 's', long = "server", value_name = "NAME")]
    pub server: Option<String>,

    /// Sync the project before running the command (default).
    #[arg(long = "sync", overrides_with = "no_sync")]
    sync: bool,

    /// Don't sync; run the command on what is already on the server.
    #[arg(long = "no-sync", overrides_with = "sync")]
    no_sync: bool,

    /// Use a remote terminal (PTY) even when stdin/stdout are not terminals.
    #[arg(long = "tty", overrides_with = "no_tty")]
    tty: bool,

    /// Never allocate a remote terminal: plain stdout/stderr, for scripts and CI.
    #[arg(long = "no-tty", overrides_with = "tty")]
    no_tty: bool,

    /// Show what would be synced and run, without doing it.
    #[arg(long = "dry-run")]
    pub dry_run: bool,

    /// Write a commented `.mtr/config.yaml` template in the current directory and exit.
    #[arg(long = "init")]
    pub init: bool,

    /// Sync the project and exit without running a command.
    #[arg(long = "sync-only", conflicts_with_all = ["no_sync", "command"])]
    pub sync_only: bool,

    /// Download REMOTE_PATH (relative to the server's remote_dir, or absolute) instead of
    /// running a command.
    #[arg(long = "get", value_name = "REMOTE_PATH", conflicts_with = "sync_only")]
    pub get: Option<String>,

    /// Where `--get` puts the download (default: `download_dir` from the config, else the
    /// current directory).
    #[arg(long = "to", value_name = "LOCAL_PATH", requires = "get")]
    pub to: Option<PathBuf>,

    /// More output about what mtr does; repeat for more (-vv).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Also write mtr's log to PATH.
    #[arg(long = "log-file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Accepted for compatibility with the reference tool; ignored.
    #[arg(long = "enable-log", hide = true)]
    pub enable_log: bool,

    /// Accepted for compatibility with the reference tool; ignored.
    #[arg(long = "log-level", value_name = "LEVEL", hide = true)]
    pub log_level: Option<String>,

    /// Accepted for compatibility with the reference tool; ignored.
    #[arg(long = "no-check-update", hide = true)]
    pub no_check_update: bool,

    /// The command to run on the server, in the directory matching the current one.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<String>,
}

impl Args {
    /// Whether to sync before running: false only with `--no-sync` (the last of
    /// `--sync`/`--no-sync` wins).
    pub fn sync(&self) -> bool {
        !self.no_sync
    }

    /// The TTY choice: `Some(true)` for `--tty`, `Some(false)` for `--no-tty`, `None` to decide
    /// from whether stdin/stdout are terminals.
    pub fn tty(&self) -> Option<bool> {
        if self.tty {
            Some(true)
        } else if self.no_tty {
            Some(false)
        } else {
            None
        }
    }
}

/// Parses the process arguments; on a usage error prints it and exits with status 2
/// (`--help` and `--version` exit 0).
pub fn parse() -> Args {
    Args::parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Args {
        let mut argv = vec!["mtr"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        let mut argv = vec!["mtr"];
        argv.extend_from_slice(args);
        match Args::try_parse_from(argv) {
            Ok(a) => panic!("{args:?} parsed as {a:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn plain_command_is_collected() {
        let a = parse(&["python", "train.py", "--epochs", "10"]);
        assert_eq!(a.command, ["python", "train.py", "--epochs", "10"]);
        assert_eq!(a.server, None);
        assert!(a.sync());
        assert_eq!(a.tty(), None);
        assert!(!a.dry_run && !a.init && !a.sync_only);
    }

    #[test]
    fn options_after_the_first_word_belong_to_the_command() {
        let a = parse(&["python3", "-s", "x.py"]);
        assert_eq!(a.server, None);
        assert_eq!(a.command, ["python3", "-s", "x.py"]);

        let a = parse(&["ls", "--no-sync", "-v", "--help", "--version"]);
        assert!(a.sync());
        assert_eq!(a.verbose, 0);
        assert_eq!(a.command, ["ls", "--no-sync", "-v", "--help", "--version"]);
    }

    #[test]
    fn server_before_double_dash_then_command() {
        let a = parse(&["-s", "gpu", "--", "python", "-c", "x"]);
        assert_eq!(a.server.as_deref(), Some("gpu"));
        assert_eq!(a.command, ["python", "-c", "x"]);

        let a = parse(&["--server=gpu", "python", "-c", "print('a b')"]);
        assert_eq!(a.server.as_deref(), Some("gpu"));
        assert_eq!(a.command, ["python", "-c", "print('a b')"]);
    }

    #[test]
    fn double_dash_allows_a_command_starting_with_a_dash() {
        let a = parse(&["--", "-weird", "--flag"]);
        assert_eq!(a.command, ["-weird", "--flag"]);
    }

    #[test]
    fn double_dash_inside_the_command_is_passed_through() {
        let a = parse(&["git", "log", "--", "file"]);
        assert_eq!(a.command, ["git", "log", "--", "file"]);
        let a = parse(&["-s", "gpu", "--", "git", "log", "--", "-file"]);
        assert_eq!(a.command, ["git", "log", "--", "-file"]);
        let a = parse(&["python", "-", "-1"]);
        assert_eq!(a.command, ["python", "-", "-1"]);
    }

    #[test]
    fn sync_and_tty_toggles_last_one_wins() {
        assert!(!parse(&["--no-sync", "ls"]).sync());
        assert!(parse(&["--no-sync", "--sync", "ls"]).sync());
        assert!(!parse(&["--sync", "--no-sync", "ls"]).sync());
        assert_eq!(parse(&["--tty", "ls"]).tty(), Some(true));
        assert_eq!(parse(&["--no-tty", "ls"]).tty(), Some(false));
        assert_eq!(parse(&["--no-tty", "--tty", "ls"]).tty(), Some(true));
        assert_eq!(parse(&["--tty", "--no-tty", "ls"]).tty(), Some(false));
    }

    #[test]
    fn all_mode_flags_parse() {
        let a = parse(&["--dry-run", "--no-tty", "-vv", "--log-file", "/tmp/l", "ls"]);
        assert!(a.dry_run);
        assert_eq!(a.verbose, 2);
        assert_eq!(a.log_file, Some(PathBuf::from("/tmp/l")));

        assert!(parse(&["--init"]).init);
        assert!(parse(&["--sync-only", "-s", "gpu"]).sync_only);

        let a = parse(&["--get", "outputs/model.pt", "--to", "./dl"]);
        assert_eq!(a.get.as_deref(), Some("outputs/model.pt"));
        assert_eq!(a.to, Some(PathBuf::from("./dl")));
        assert!(a.command.is_empty());

        let a = parse(&["-v", "--verbose", "-v", "ls"]);
        assert_eq!(a.verbose, 3);
    }

    #[test]
    fn no_arguments_parse_to_an_empty_command() {
        let a = parse(&[]);
        assert!(a.command.is_empty());
        assert!(a.get.is_none() && !a.init && !a.sync_only);
    }

    #[test]
    fn reference_tool_logging_flags_are_accepted_and_hidden() {
        let a = parse(&[
            "--enable-log",
            "--log-level",
            "DEBUG",
            "--no-check-update",
            "ls",
        ]);
        assert!(a.enable_log && a.no_check_update);
        assert_eq!(a.log_level.as_deref(), Some("DEBUG"));
        assert_eq!(a.command, ["ls"]);

        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("--enable-log"), "{help}");
        assert!(!help.contains("--log-level"), "{help}");
        assert!(!help.contains("--no-check-update"), "{help}");
        assert!(help.contains("--no-sync"), "{help}");
    }

    #[test]
    fn version_prints_mtr_and_the_crate_version() {
        let e = parse_err(&["--version"]);
        assert_eq!(e.kind(), ErrorKind::DisplayVersion);
        assert_eq!(e.exit_code(), 0);
        assert_eq!(
            e.to_string().trim(),
            format!("mtr {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn unknown_option_before_the_command_is_a_usage_error_with_status_2() {
        let e = parse_err(&["--no-synk", "python"]);
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn missing_option_value_is_a_usage_error() {
        let e = parse_err(&["-s"]);
        assert_eq!(e.exit_code(), 2);
        let e = parse_err(&["--get"]);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn to_requires_get() {
        let e = parse_err(&["--to", "x", "ls"]);
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn sync_only_conflicts_with_no_sync_and_with_a_command() {
        assert_eq!(parse_err(&["--sync-only", "--no-sync"]).exit_code(), 2);
        assert_eq!(parse_err(&["--sync-only", "ls"]).exit_code(), 2);
    }
}
