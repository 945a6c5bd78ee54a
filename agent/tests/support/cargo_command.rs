//! A `cargo` command for a test to build something of the workspace with, shared by the
//! agent's tests and the e2e crate (included with `#[path]`): one list of what to strip.

use std::process::Command;

/// `cargo` (the one running the tests) without what cargo set for the running test
/// (CARGO_PKG_NAME, ...): build scripts that read them (ring's) would see a change and
/// rebuild, and everything above them with it.
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    const SET_FOR_CRATES: [&str; 8] = [
        "CARGO_MANIFEST_",
        "CARGO_PKG_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if SET_FOR_CRATES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}
