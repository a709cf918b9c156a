//! `isthmusctl up` as a real process for end-to-end tests: the bundled example, copies of it
//! to break, and a check that a run left no process behind.

// Wall-clock time is right here: these helpers wait on real processes.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin;

pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-meshes")
}

pub fn isthmusctl() -> Command {
    let mut command = Command::new(bin("isthmusctl"));
    // Under `cargo test` CARGO is set; the binaries are already built by the test command.
    command.env_remove("CARGO");
    command
}

/// Pids of processes (any depth) started by the run whose state folder is `state`: every one
/// carries `ISTHMUS_RUN=<state>`.
pub fn leftovers(state: &Path) -> Vec<u32> {
    let tag = format!("ISTHMUS_RUN={}", state.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        // A zombie has no environment left; it is gone for our purposes.
        if environ.split(|b| *b == 0).any(|var| var == tag.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until no process of the run is left, for at most `limit`.
pub fn assert_nothing_left(state: &Path, limit: Duration) {
    let start = Instant::now();
    loop {
        let left = leftovers(state);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "processes left behind by the run in {}: {left:?}",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `isthmusctl up DIR` in the background, until `run.json` says everything is up.
#[derive(Debug)]
pub struct Up {
    child: Child,
    pub state: tempfile::TempDir,
}

impl Up {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_path(dir, None)
    }

    /// With `PATH` set to `path` for the run's processes.
    pub fn start_with_path(dir: &Path, path: Option<&str>) -> Self {
        Self::launch(dir, path, &[])
    }

    /// With more flags for `isthmusctl up` (`--otlp-endpoint`, ...).
    pub fn start_with_args(dir: &Path, args: &[&str]) -> Self {
        Self::launch(dir, None, args)
    }

    fn launch(dir: &Path, path: Option<&str>, args: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(state.path().join("up.log")).unwrap();
        let mut command = isthmusctl();
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let child = command
            .arg("up")
            .arg(dir)
            .arg("--state")
            .arg(state.path())
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut up = Self { child, state };
        let start = Instant::now();
        while !up.state.path().join("run.json").exists() {
            if let Some(status) = up.child.try_wait().unwrap() {
                panic!("isthmusctl up exited ({status}):\n{}", up.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "not up in 90 s:\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("up.log")).unwrap_or_default()
    }

    pub fn run(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state.path().join("run.json")).unwrap())
            .unwrap()
    }

    /// The outbound listener (HTTP proxy) of `workload` in `mesh`.
    pub fn proxy_of(&self, mesh: &str, workload: &str) -> String {
        let run = self.run();
        let mesh = run["meshes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == mesh)
            .unwrap();
        let w = mesh["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == workload)
            .unwrap();
        w["outbound"].as_str().unwrap().to_owned()
    }

    /// SIGKILL: the runner gets no chance to stop anything.
    pub fn kill_outright(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGINT, as Ctrl-C sends; the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "still running 30 s after SIGINT:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    /// As a user would: Ctrl-C, so that the run stops what it started.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of the example to break.
pub fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(example().join("red"))
        .arg(example().join("green"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

pub fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}
