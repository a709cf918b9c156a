//! `isthmusctl up` and `demo` start `isthmusd` and `isthmus-proxy` from beside `isthmusctl`.
//! Under `cargo run` (which sets `CARGO`), a missing or older sibling is built first with the
//! same profile, so `cargo run --release --bin isthmusctl -- demo` is enough on a fresh clone.
//!
//! The three binaries are built in one `cargo build` that names `isthmusctl` too: cargo unifies
//! dependency features over the packages of one invocation, so naming the same set as the first
//! build reuses every compiled dependency instead of rebuilding `ring`, `rustls` or `tonic` with
//! another feature set.

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

fn older_or_missing(path: &Path, than: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(path), modified(than)) {
        (Some(sibling), Some(me)) => sibling < me,
        _ => true,
    }
}
