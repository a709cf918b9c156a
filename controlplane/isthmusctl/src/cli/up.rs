//! `isthmusctl up DIR`: runs every mesh DIR describes on this machine (see `runner`), prints
//! what runs where, reports any process that stops (nothing restarts silently), applies edits
//! of DIR as they are saved, and on Ctrl-C stops everything it started.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::runner::processes::tail;
use crate::runner::run::RunOptions;
use crate::runner::run_file::default_state;
use crate::runner::{RunFile, Runner};

#[derive(Debug, Args)]
pub struct UpCommand {
    /// The folder describing the meshes: one sub-folder per mesh (docs/local-runner.md).
    pub dir: PathBuf,
    /// Where each mesh's CA, rendered configuration and logs go, and `run.json` (what the
    /// operator commands read).
    #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = default_state())]
    pub state: PathBuf,
    /// Send every proxy's spans to this OTLP/gRPC collector (`host:port`, e.g. Jaeger's
    /// 4317); passed to every isthmusd as `--tracing-otlp-endpoint`. No tracing without it.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// Percentage (0 to 100) of requests that start a sampled trace; isthmusd's default, 1,
    /// without it.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub trace_sampling: Option<f64>,
}

/// `host:port` (`[v6]:port` for IPv6).
fn parse_endpoint(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not host:port");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
    };
    if host_ok && port != 0 {
        Ok(text.to_owned())
    } else {
        Err(bad())
    }
}

/// A percentage from 0 to 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

impl UpCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        super::build::ensure_binaries(&|line| eprintln!("· {line}"))?;
        // Signals are caught before anything starts, so that none is missed.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let options = RunOptions {
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sampling: self.trace_sampling,
        };
        let mut runner = Runner::start_with(&self.dir, &self.state, options, &|step| {
            eprintln!("· {step}")
        })
        .await?;
        print!("{}", runner.table());
        println!(
            "\nEverything is up. Logs: {}/<mesh>/logs; run file: {}.\nEdits of {} apply as you save them. Ctrl-C stops everything.",
            self.state.display(),
            RunFile::path(&self.state).display(),
            self.dir.display()
        );
        let mut seen = fingerprint(&self.dir);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
                _ = tick.tick() => {
                    for exited in runner.exited() {
                        eprintln!(
                            "warning: {} stopped ({}); not restarted. The end of {}:\n{}",
                            exited.name, exited.status, exited.log.display(), tail(&exited.log, 10)
                        );
                    }
                    let now = fingerprint(&self.dir);
                    if now != seen {
                        seen = now;
                        match runner.reload() {
                            Ok(warnings) => {
                                eprintln!("· {} changed: configuration re-rendered", self.dir.display());
                                for w in warnings {
                                    eprintln!("warning: {w}");
                                }
                            }
                            Err(e) => eprintln!("error: {e:#}\n(the last good configuration stays in force)"),
                        }
                    }
                }
            }
        }
        eprintln!("· stopping everything");
        runner.stop().await;
        eprintln!("· stopped");
        Ok(())
    }
}

/// Every file under `dir` with its size and modification time: a change shows as a
/// different fingerprint.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => out.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_flags_are_checked_and_passed_to_isthmusd() {
        for ok in ["127.0.0.1:4317", "jaeger.observability:4317", "[::1]:4317"] {
            assert_eq!(parse_endpoint(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "jaeger",
            "jaeger:0",
            "http://jaeger:4317",
            ":4317",
            "[nope]:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());

        assert_eq!(
            RunOptions::default().isthmusd_args("red"),
            ["--mesh-id", "red"]
        );
        let options = RunOptions {
            otlp_endpoint: Some("127.0.0.1:4317".into()),
            trace_sampling: Some(100.0),
        };
        assert_eq!(
            options.isthmusd_args("green"),
            [
                "--mesh-id",
                "green",
                "--tracing-otlp-endpoint",
                "127.0.0.1:4317",
                "--tracing-sampling",
                "100"
            ]
        );
    }
}
