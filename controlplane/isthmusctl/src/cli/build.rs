//! `isthmusctl up` and `demo` start `isthmusd` and `isthmus-proxy` from beside `isthmusctl`.
//! Under `cargo run` (which sets `CARGO`), a missing or older sibling is built first with the
//! same profile, so `cargo run --release --bin isthmusctl -- demo` is enough on a fresh clone.
//!
//! The three binaries are built in one `cargo build` that names `isthmusctl` too: cargo unifies
//! dependency features over the packages of one invocation, so naming the same set as the first
//! build reuses every compiled dependency instead of rebuilding `ring`, `rustls` or `tonic` with
//! another feature set. The variables `cargo run` sets for the program it runs
//! (`CARGO_PKG_VERSION_MAJOR`, `CARGO_MANIFEST_DIR`, ...) are removed from the inner build's
//! environment: `ring`'s build script reruns when they change, and everything above it with it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

const SIBLINGS: [&str; 2] = ["isthmusd", "isthmus-proxy"];
/// What the one `cargo build` names: the siblings and `isthmusctl` itself (see the module doc).
const BUILT_TOGETHER: [&str; 3] = ["isthmusctl", "isthmusd", "isthmus-proxy"];

pub fn ensure_binaries(progress: &dyn Fn(&str)) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate isthmusctl itself")?;
    let stale: Vec<&str> = SIBLINGS
        .into_iter()
        .filter(|name| older_or_missing(&exe.with_file_name(name), &exe))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        if stale.iter().any(|name| !exe.with_file_name(name).exists()) {
            bail!(
                "{} must be beside {} (build the workspace: cargo build --release)",
                stale.join(" and "),
                exe.display()
            );
        }
        return Ok(());
    };
    let release = exe
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "release");
    progress(&format!(
        "building {} (cargo build{})",
        stale.join(" and "),
        if release { " --release" } else { "" }
    ));
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            command.env_remove(&name);
        }
    }
    command.arg("build");
    if release {
        command.arg("--release");
    }
    for name in BUILT_TOGETHER {
        command.args(["--bin", name]);
    }
    let status = command.status().context("cannot run cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed ({status})");
    Ok(())
}

/// The variables `cargo run` gives the program it runs (cargo's reference, "Environment
/// variables Cargo sets for crates"); the user's own `CARGO_HOME`, `CARGO_TARGET_DIR`,
/// `CARGO_BUILD_*`, ... are kept.
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

fn older_or_missing(path: &Path, than: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(path), modified(than)) {
        (Some(sibling), Some(me)) => sibling < me,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn only_what_cargo_run_sets_is_removed() {
        for name in [
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
            "RUSTFLAGS",
        ] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }
}
