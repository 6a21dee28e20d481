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
mod ssh;
mod sync;
mod ui;

use std::io::IsTerminal;

use anyhow::Result;

fn main() {
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

fn run(args: &cli::Args) -> Result<i32> {
    ui::init_logging(args.verbose, args.log_file.as_deref())?;
    let env = config::Env::from_process()?;
    if args.init {
        let path = config::init(&env.cwd)?;
        eprintln!("created {}: edit it to add your servers", path.display());
        return Ok(0);
    }
    let ui = ui::Ui::new(args.tty() == Some(false), args.verbose);
    let settings = config::load(&env, args.server.as_deref())?;
    for w in &settings.warnings {
        ui.warn(w);
    }
    if settings.sync != config::SyncEngine::Agent && (args.sync() || args.sync_only) {
        return Err(exit::UsageError(format!(
            "sync: {} is not implemented yet in this build; use `sync: agent` (in {})",
            settings.sync,
            settings.describe_sources()
        ))
        .into());
    }
    if args.get.is_some() {
        return Err(exit::UsageError(
            "--get is not implemented yet in this build; copy the file with scp or rsync".into(),
        )
        .into());
    }
    let ssh = ssh::Ssh::connect(&sync::ssh_options(&settings, &ui))?;
    if args.sync_only || args.sync() {
        sync::sync(&ssh, &settings, &ui, args.dry_run)?;
    }
    if args.sync_only {
        return Ok(0);
    }
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
        exec::interactive::run(&ssh, &cmd)
    } else {
        exec::batch::run(&ssh, &cmd)
    }
}
