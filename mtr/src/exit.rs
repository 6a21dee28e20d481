//! Exit codes, in one place: the remote command's status passes through; mtr's own failures
//! are 255 (connection, auth, sync) or 2 (usage and configuration).

use std::fmt;

/// Exit code for usage and configuration errors (as clap uses).
pub const USAGE: i32 = 2;
/// Exit code for mtr's own failures: connection, authentication, sync.
pub const FAILURE: i32 = 255;

/// An error the user caused by how mtr was called or configured; exits with [`USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error that ended mtr.
pub fn code_for(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|e| e.is::<UsageError>() || e.is::<crate::config::ConfigError>())
    {
        USAGE
    } else {
        FAILURE
    }
}
