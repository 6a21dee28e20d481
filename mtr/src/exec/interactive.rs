//! Interactive mode (TODO: being written).

use super::RemoteCommand;
use crate::ssh::Ssh;

/// Run `cmd` on a PTY with the local terminal in raw mode; returns the remote exit code.
pub fn run(_ssh: &Ssh, _cmd: &RemoteCommand) -> anyhow::Result<i32> {
    anyhow::bail!("interactive mode is not implemented yet")
}
