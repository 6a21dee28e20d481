//! Batch mode (TODO: being written).

use super::RemoteCommand;
use crate::ssh::Ssh;

/// Run `cmd` without a PTY; returns the remote exit code.
pub fn run(_ssh: &Ssh, _cmd: &RemoteCommand) -> anyhow::Result<i32> {
    anyhow::bail!("batch mode is not implemented yet")
}
