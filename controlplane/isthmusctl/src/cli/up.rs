//! `isthmusctl up DIR`: runs every mesh DIR describes on this machine (see `runner`), prints
//! what runs where, reports any process that stops (nothing restarts silently), applies edits
//! of DIR as they are saved, and on Ctrl-C stops everything it started.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use crate::runner::processes::tail;
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
}

impl UpCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        super::build::ensure_binaries(&|line| eprintln!("· {line}"))?;
        // Signals are caught before anything starts, so that none is missed.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut runner =
            Runner::start(&self.dir, &self.state, &|step| eprintln!("· {step}")).await?;
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
