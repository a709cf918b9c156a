//! The processes a run starts: each in its own process group (so a workload's own children
//! stop with it), its output in a log file, never restarted behind the user's back. Stopping
//! sends SIGTERM to every group, waits, then SIGKILL to whatever is left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long processes get to stop after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Unique within the run, e.g. `red/sidecar/shop/client`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
}

#[derive(Debug)]
struct Running {
    spec: ProcessSpec,
    child: tokio::process::Child,
    pid: u32,
}

/// A process that stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub name: String,
    pub status: String,
    pub log: PathBuf,
}

/// The variable every process of a run (and whatever it starts) carries: the run's state
/// folder. A test finds leftovers by it.
pub use isthmus_runtime::supervised::{RUN_TAG, RUNNER_PID};

/// Every process of the run, in start order.
#[derive(Debug)]
pub struct Supervisor {
    running: Vec<Running>,
    tag: String,
}

impl Supervisor {
    /// Processes tagged with [`RUN_TAG`]`=tag`.
    pub fn new(tag: String) -> Self {
        Self {
            running: Vec::new(),
            tag,
        }
    }

    /// Starts `spec`; its pid.
    pub fn start(&mut self, spec: ProcessSpec) -> anyhow::Result<u32> {
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let log = std::fs::File::create(&spec.log)
            .with_context(|| format!("cannot create {}", spec.log.display()))?;
        let child = tokio::process::Command::new(&spec.program)
            .args(&spec.args)
            .envs(&spec.env)
            .env(RUN_TAG, &self.tag)
            // Our own binaries stop when the runner dies, however it dies.
            .env(RUNNER_PID, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("{}: cannot start {}", spec.name, spec.program.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{}: exited at once", spec.name))?;
        self.running.push(Running { spec, child, pid });
        Ok(pid)
    }

    /// (name, pid, log) of every process still tracked.
    pub fn list(&self) -> Vec<(String, u32, PathBuf)> {
        self.running
            .iter()
            .map(|r| (r.spec.name.clone(), r.pid, r.spec.log.clone()))
            .collect()
    }

    /// The processes that exited since the last call (they are no longer tracked).
    pub fn exited(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        self.running.retain_mut(|r| match r.child.try_wait() {
            Ok(Some(status)) => {
                // Whatever the process left in its group goes with it.
                let _ = killpg(Pid::from_raw(pid_i32(r.pid)), Signal::SIGKILL);
                exited.push(Exited {
                    name: r.spec.name.clone(),
                    status: describe(status),
                    log: r.spec.log.clone(),
                });
                false
            }
            _ => true,
        });
        exited
    }

    /// Stops the process named `name` (SIGTERM, then SIGKILL after the deadline); its spec,
    /// to start it again.
    pub async fn stop_one(&mut self, name: &str) -> Option<ProcessSpec> {
        let index = self.running.iter().position(|r| r.spec.name == name)?;
        let mut one = self.running.remove(index);
        terminate(std::slice::from_mut(&mut one)).await;
        Some(one.spec)
    }

    /// Stops every process, last started first.
    pub async fn stop_all(&mut self) {
        let mut all = std::mem::take(&mut self.running);
        all.reverse();
        terminate(&mut all).await;
    }
}

async fn terminate(processes: &mut [Running]) {
    for r in processes.iter() {
        let _ = killpg(Pid::from_raw(pid_i32(r.pid)), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
    for r in processes.iter_mut() {
        let _ = tokio::time::timeout_at(deadline, r.child.wait()).await;
    }
    for r in processes.iter_mut() {
        // The group, not only the leader: a workload's children must not outlive it.
        let _ = killpg(Pid::from_raw(pid_i32(r.pid)), Signal::SIGKILL);
        let _ = r.child.wait().await;
    }
}

fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last `n` lines of a log file.
pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
