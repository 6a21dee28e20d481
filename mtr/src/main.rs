//! `mtr`: sync a project to a remote node and run commands there.
//!
//! `main` parses the arguments, runs, and maps the outcome to an exit code; the work lives in
//! the modules below.

mod agent_install;
mod cli;
mod config;
mod embedded;
mod exec;
mod exit;
mod get;
mod rsync;
mod sftp;
mod ssh;
mod sync;
mod ui;

use std::io::IsTerminal;

use anyhow::Result;

fn main() {
    fixed_mmap_threshold();
    let args = cli::parse();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mtr: error: {e:#}");
            exit::code_for(&e)
        }
    };
    std::process::exit(code)
}

/// Allocations of 1 MiB and more (file strips, chunk windows, frames) get their own mapping,
/// returned to the system when freed. glibc's default raises that threshold to the largest
/// block freed so far, after which such buffers are carved from the heap and the holes they
/// leave keep the resident set high: a first sync of 100k files / 5 GB peaked at 175 MB RSS
/// with the default and 137 MB with this, in the same time (`cargo bench --bench scale`).
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a tuning call made before any other thread exists; it changes no allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// An exclude rule for `--log-file` when it is inside the project (`/path/from/root`, glob
/// characters escaped), so mtr never syncs the log it is writing.
fn own_log_rule(
    root: &std::path::Path,
    cwd: &std::path::Path,
    log: &std::path::Path,
) -> Option<String> {
    let abs = cwd.join(log);
    let dir = abs.parent()?.canonicalize().ok()?;
    let root = root.canonicalize().ok()?;
    let rel = dir.join(abs.file_name()?);
    let rel = rel.strip_prefix(&root).ok()?.to_str()?;
    let mut rule = String::from("/");
    for c in rel.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#') {
            rule.push('\\');
        }
        rule.push(c);
    }
    Some(rule)
}

fn run(args: &cli::Args) -> Result<i32> {
    ui::init_logging(args.verbose, args.log_file.as_deref())?;
    let env = config::Env::from_process()?;
    if args.init {
        let path = config::init(&env.cwd)?;
        eprintln!("created {}: edit it to add your servers", path.display());
        return Ok(0);
    }
    let ui = ui::Ui::new(args.tty() == Some(false), args.verbose);
    let mut settings = config::load(&env, args.server.as_deref())?;
    if let Some(rule) = args
        .log_file
        .as_deref()
        .and_then(|log| own_log_rule(&settings.project_root, &env.cwd, log))
    {
        // mtr writes its log while it syncs: the file would change under the scan.
        settings.excludes.push(rule);
    }
    for w in &settings.warnings {
        ui.warn(w);
    }
    let download = args
        .get
        .as_deref()
        .map(|remote| get::plan(&settings, remote, args.to.as_deref(), &env.cwd))
        .transpose()?;
    if let Some(w) = download
        .as_ref()
        .and_then(|d| get::upload_hazard(&settings, d))
    {
        ui.warn(&w);
    }
    let sync = args.sync_only || args.sync();
    let engine = settings.sync;
    // rsync brings its own SSH connection; everything else shares this one.
    if engine == config::SyncEngine::Rsync && sync {
        rsync::sync(&settings, &ui, args.dry_run)?;
        if args.sync_only {
            return Ok(0);
        }
    }
    if let (Some(d), true, config::SyncEngine::Rsync) = (&download, args.command.is_empty(), engine)
    {
        rsync::get(&settings, &ui, d, args.dry_run)?;
        return Ok(0);
    }
    // The agent engine's scan needs no connection: it runs while the connection is made.
    let scan = match engine {
        config::SyncEngine::Agent if sync => Some(sync::start_scan(&settings, &ui, args.dry_run)?),
        _ => None,
    };
    let ssh = ssh::Ssh::connect(&sync::ssh_options(&settings, &ui))?;
    let mut fallback = Fallback {
        settings: &settings,
        ui: &ui,
        active: false,
    };
    if let Some(scan) = scan {
        if let Err(e) = sync::sync(&ssh, &settings, &ui, args.dry_run, scan) {
            fallback.absorb(e)?;
            sftp::sync(&ssh, &settings, &ui, args.dry_run)?;
        }
    } else if sync && engine == config::SyncEngine::Sftp {
        sftp::sync(&ssh, &settings, &ui, args.dry_run)?;
    }
    if args.sync_only {
        return Ok(0);
    }
    let code = if args.command.is_empty() && download.is_some() {
        0
    } else {
        run_command(&ssh, &settings, args, &mut fallback)?
    };
    if let Some(d) = &download {
        match engine {
            config::SyncEngine::Agent if fallback.active => {
                sftp::get(&ssh, &settings, &ui, d, args.dry_run)?
            }
            config::SyncEngine::Agent => {
                if let Err(e) = sync::get(&ssh, &settings, &ui, d, args.dry_run) {
                    fallback.absorb(e)?;
                    sftp::get(&ssh, &settings, &ui, d, args.dry_run)?;
                }
            }
            config::SyncEngine::Sftp => sftp::get(&ssh, &settings, &ui, d, args.dry_run)?,
            config::SyncEngine::Rsync => rsync::get(&settings, &ui, d, args.dry_run)?,
        }
    }
    Ok(code)
}

/// The switch away from `mtr-agent` on a server where it cannot run: said once, then kept for
/// the rest of the run (sync and `--get` over SFTP, batch commands on a plain channel).
struct Fallback<'a> {
    settings: &'a config::Settings,
    ui: &'a ui::Ui,
    active: bool,
}

impl Fallback<'_> {
    /// `Ok` when `e` says the agent cannot run on the server (warning the first time), so the
    /// caller does without it; `e` itself otherwise.
    fn absorb(&mut self, e: anyhow::Error) -> Result<()> {
        let Some(why) = agent_install::AgentUnavailable::find(&e) else {
            return Err(e);
        };
        if !self.active {
            self.ui.warn(&format!(
                "{}; using sftp instead (add `sync: sftp` to server {} in {} to skip this check)",
                why.reason,
                self.settings.server_name,
                self.settings.describe_sources()
            ));
            self.active = true;
        }
        Ok(())
    }
}

/// Runs the command (or, with none, the login shell) and returns its exit code.
fn run_command(
    ssh: &ssh::Ssh,
    settings: &config::Settings,
    args: &cli::Args,
    fallback: &mut Fallback,
) -> Result<i32> {
    let cmd = exec::RemoteCommand {
        workdir: settings.remote_workdir(),
        pre_cmd: settings.pre_cmd.clone(),
        argv: args.command.clone(),
    };
    if args.dry_run {
        println!("would run on {}: {}", ssh.display(), cmd.script());
        return Ok(0);
    }
    let pty = match args.tty() {
        Some(forced) => forced,
        None => std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
    };
    if pty {
        exec::interactive::run(ssh, &cmd)
    } else if fallback.active {
        exec::batch::run_plain(ssh, &cmd)
    } else {
        exec::batch::run(ssh, &cmd).or_else(|e| {
            fallback.absorb(e)?;
            exec::batch::run_plain(ssh, &cmd)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::own_log_rule;

    #[test]
    fn a_log_file_inside_the_project_is_excluded_and_one_outside_is_not() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("proj");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let rule = own_log_rule(&root, &root.join("sub"), "../nodir/x.log".as_ref());
        assert_eq!(
            rule, None,
            "its directory does not exist: nothing to exclude"
        );
        let rule = own_log_rule(&root, &root.join("sub"), "../top[1].log".as_ref());
        assert_eq!(rule.as_deref(), Some("/top\\[1\\].log"));
        std::fs::create_dir_all(root.join("logs")).unwrap();
        let rule = own_log_rule(&root, &root.join("sub"), "../logs/run*[1].txt".as_ref());
        assert_eq!(rule.as_deref(), Some("/logs/run\\*\\[1\\].txt"));
        assert_eq!(own_log_rule(&root, &root, "/tmp/mtr.log".as_ref()), None);
    }
}
