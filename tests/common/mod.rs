//! Helpers shared by the integration tests that run the `lamina` binary.

use std::process::Command;

/// Runs the lamina binary from the crate root (so paths in its messages are
/// the relative ones given) and returns exit code, stdout and stderr.
pub fn lamina(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the lamina binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
