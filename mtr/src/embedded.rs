//! The `mtr-agent` binary that `mtr` carries and uploads to servers, built by `build.rs` as a
//! static musl executable, with the identity that keys its install path on the remote.

/// The agent executable.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mtr-agent"));
/// First 16 hex digits of the BLAKE3 hash of [`AGENT`].
pub const AGENT_HASH: &str = env!("MTR_AGENT_HASH");
/// The OS the agent runs on, as in the install path (`uname -s`, lowercased).
pub const AGENT_OS: &str = "linux";
/// The architecture the agent runs on, as in the install path (`uname -m`).
pub const AGENT_ARCH: &str = "x86_64";
/// Version of `mtr`; the agent must report exactly this one.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// SHA-256 of [`AGENT`] (lowercase hex), computed once: the install script compares the
/// upload with it, hashed on the server, before making it executable.
pub fn agent_sha256() -> &'static str {
    static SHA256: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA256.get_or_init(|| sha256_hex(AGENT))
}

/// SHA-256 of `bytes` as 64 lowercase hex digits (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
