//! Test-only programs of this crate (`src/bin/`), built on demand for tests of other packages,
//! which cargo does not build them for: `cargo build -p mtr-testkit --bin NAME` into the
//! calling test's own target directory and profile, so the build shares its artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the test program `name` and returns its path. Panics, with cargo's output, when
/// the build fails.
pub fn build(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // <target>/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in <target>/<profile>/deps");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir.parent().expect("a target dir").to_path_buf());
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("a profile dir name");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "mtr-testkit", "--bin", name])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build -p mtr-testkit --bin {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join(name);
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}
