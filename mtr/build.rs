//! Builds `mtr-agent` as a static musl binary and leaves it at `$OUT_DIR/mtr-agent` for
//! `src/embedded.rs` to carry, with `MTR_AGENT_HASH` (first 16 hex digits of its BLAKE3 hash)
//! for the runtime, which keys the remote install path by it.
//!
//! The agent is built by a nested `cargo build --release --target x86_64-unknown-linux-musl`
//! of the workspace that holds this package, in a target dir of its own (so it never contends
//! for the outer build's lock), with the outer build's flags, wrappers and package variables
//! removed from its environment. Setting `MTR_AGENT_BIN=/abs/path/to/mtr-agent` skips that
//! build and carries the given file instead (cross builds, packaging, tests).

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};

const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

/// Variables the outer build sets that would leak into the nested one: its package, features
/// and cfg, its target dir and target, its flags and wrappers (clippy's among them).
const STRIP_EXACT: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
];
const STRIP_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_FEATURE_", "CARGO_CFG_", "DEP_"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("mtr sits inside its workspace")
        .to_path_buf();

    println!("cargo:rerun-if-env-changed=MTR_AGENT_BIN");
    println!("cargo:rerun-if-changed=build.rs");
    let agent = match env::var_os("MTR_AGENT_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::read(&path).unwrap_or_else(|e| {
                fail(&format!(
                    "cannot read MTR_AGENT_BIN={}: {e}",
                    path.display()
                ))
            })
        }
        None => {
            for rel in ["protocol", "mtr-agent", "Cargo.toml", "Cargo.lock"] {
                println!("cargo:rerun-if-changed={}", workspace.join(rel).display());
            }
            build_agent(&workspace, &out_dir)
        }
    };

    write_if_changed(&out_dir.join("mtr-agent"), &agent);
    let hash = blake3::hash(&agent).to_hex();
    println!("cargo:rustc-env=MTR_AGENT_HASH={}", &hash[..16]);
}

/// Runs the nested musl build and returns the agent's bytes.
fn build_agent(workspace: &Path, out_dir: &Path) -> Vec<u8> {
    if !workspace.join("Cargo.toml").is_file() || !workspace.join("mtr-agent").is_dir() {
        fail(&format!(
            "cannot build mtr-agent: the mtr workspace (Cargo.toml, mtr-agent/) is not at {}; \
             build from the workspace, or set MTR_AGENT_BIN to a prebuilt static mtr-agent",
            workspace.display()
        ));
    }
    let target_dir = agent_target_dir(out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "mtr-agent",
            "--target",
            AGENT_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .stdin(Stdio::null());
    for (key, _) in env::vars_os() {
        if should_strip(&key) {
            cmd.env_remove(&key);
        }
    }
    // The agent is uploaded to every server: keep symbols for backtraces, drop debug info.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    // zstd-sys and blake3 compile C for the musl target.
    let cc_var = format!("CC_{}", AGENT_TARGET.replace('-', "_"));
    if env::var_os(&cc_var).is_none() && on_path("musl-gcc") {
        cmd.env(&cc_var, "musl-gcc");
    }

    let out = cmd.output().unwrap_or_else(|e| {
        fail(&format!(
            "cannot run {} to build mtr-agent: {e}",
            Path::new(&cargo).display()
        ))
    });
    if !out.status.success() {
        fail(&format!(
            "building mtr-agent for {AGENT_TARGET} failed ({}).\n\
             mtr carries a static musl build of its remote agent. If the musl target or its C \
             compiler is missing, install the musl target: rustup target add {AGENT_TARGET}; \
             apt-get install musl-tools\n\
             (or set MTR_AGENT_BIN to a prebuilt static mtr-agent).\n\
             --- cargo's output ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let bin = target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join("mtr-agent");
    fs::read(&bin).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", bin.display())))
}

/// Where the nested build keeps its artifacts. `$OUT_DIR` differs between `cargo build`,
/// `cargo clippy` and `cargo test` of the same profile; one dir beside the `build/` dirs of
/// the profile (`target/debug/build/mtr-agent-musl`) spares rebuilding the agent for each.
/// Outer builds of one target dir never run at once, so neither do the nested ones.
fn agent_target_dir(out_dir: &Path) -> PathBuf {
    match out_dir.ancestors().nth(2) {
        Some(build) if build.file_name() == Some(OsStr::new("build")) => {
            build.join("mtr-agent-musl")
        }
        _ => out_dir.join("agent-target"),
    }
}

fn should_strip(key: &OsStr) -> bool {
    let Some(key) = key.to_str() else {
        return false;
    };
    STRIP_EXACT.contains(&key) || STRIP_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Rewrites `path` only when its contents differ, so an unchanged agent causes no rebuild.
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    fs::write(path, bytes)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
