//! `sync: rsync`: the system `rsync` over `ssh`. (Being built: issue 4.)

use std::path::Path;

use anyhow::{bail, Result};

use crate::config::Settings;
use crate::get::Download;
use crate::ui::Ui;

/// Syncs the project to the server with rsync.
pub fn sync(s: &Settings, _ui: &Ui, _dry_run: bool) -> Result<()> {
    bail!(crate::exit::UsageError(format!(
        "sync: rsync is not implemented yet in this build (in {})",
        s.describe_sources()
    )))
}

/// Downloads `d.remote` to `d.local` with rsync.
pub fn get(_s: &Settings, _ui: &Ui, d: &Download, _dry_run: bool) -> Result<()> {
    let _: &Path = &d.local;
    bail!(crate::exit::UsageError(
        "--get with sync: rsync is not implemented yet in this build".into()
    ))
}
