//! `sync: sftp`: the ssh2 session's SFTP subsystem. (Being built: issue 4.)

use anyhow::{bail, Result};

use crate::config::Settings;
use crate::get::Download;
use crate::ssh::Ssh;
use crate::ui::Ui;

/// Syncs the project to the server over SFTP.
pub fn sync(_ssh: &Ssh, s: &Settings, _ui: &Ui, _dry_run: bool) -> Result<()> {
    bail!(crate::exit::UsageError(format!(
        "sync: sftp is not implemented yet in this build (in {})",
        s.describe_sources()
    )))
}

/// Downloads `d.remote` to `d.local` over SFTP.
pub fn get(_ssh: &Ssh, _s: &Settings, _ui: &Ui, _d: &Download, _dry_run: bool) -> Result<()> {
    bail!(crate::exit::UsageError(
        "--get with sync: sftp is not implemented yet in this build".into()
    ))
}
