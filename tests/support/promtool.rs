//! `promtool` (Debian's `prometheus` package; `tests/run.sh` installs it): the checks of
//! metrics endpoints, rule files and configurations.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// What `promtool check metrics` says of Istio's `istio_request_duration_milliseconds`: a lint
/// (exit code 3), not a format error, about a name Istio's dashboards and alerts query.
pub const ISTIO_DURATION_LINT: &str =
    r#"istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds""#;

/// `promtool args` in `dir` with `stdin`: (success, everything it printed).
pub fn run(dir: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package `prometheus`; tests/run.sh installs it)");
    if let Some(mut input) = child.stdin.take() {
        // A promtool that does not read its stdin closes it: not an error.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("promtool ran");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `promtool check metrics` on an exposition: `Ok` when clean but for Istio's duration name,
/// else everything promtool said.
pub fn check_metrics(body: &str) -> Result<(), String> {
    let (clean, said) = run(Path::new("."), &["check", "metrics"], body);
    let other: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && *l != ISTIO_DURATION_LINT)
        .collect();
    let only_istio = said.lines().any(|l| l == ISTIO_DURATION_LINT);
    if other.is_empty() && (clean || only_istio) {
        Ok(())
    } else {
        Err(said)
    }
}
