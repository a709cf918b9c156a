//! `STATE/run.json`: what a running `isthmusctl up` started and where, for the operator
//! commands (`status`, `federation graph`, `doctor`) and for tests. Written once everything is
//! up; removed when the run stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub const RUN_FILE: &str = "run.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunFile {
    /// The `isthmusctl up` process.
    pub pid: u32,
    pub dir: PathBuf,
    pub meshes: Vec<MeshEntry>,
    pub processes: Vec<ProcessEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshEntry {
    pub name: String,
    pub trust_domain: String,
    pub config_dir: PathBuf,
    /// isthmusd's debug port (`/debug/*`, metrics).
    pub debug: SocketAddr,
    pub xds: SocketAddr,
    pub federation: Option<SocketAddr>,
    pub gateways: Vec<GatewayEntry>,
    pub workloads: Vec<WorkloadEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEntry {
    pub name: String,
    pub namespace: String,
    pub direction: String,
    pub peer: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The sidecar's outbound listener: the workload's HTTP proxy.
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessEntry {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
}

impl RunFile {
    pub fn path(state: &Path) -> PathBuf {
        state.join(RUN_FILE)
    }

    /// The run recorded in `state`, if its `isthmusctl up` still runs.
    pub fn read(state: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no running `isthmusctl up` uses {} (cannot read {})",
                state.display(),
                path.display()
            )
        })?;
        let run: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run file", path.display()))?;
        anyhow::ensure!(
            process_alive(run.pid),
            "{}: the `isthmusctl up` that wrote it (pid {}) is gone",
            path.display(),
            run.pid
        );
        Ok(run)
    }

    pub fn write(&self, state: &Path) -> anyhow::Result<()> {
        let path = Self::path(state);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn mesh(&self, name: &str) -> anyhow::Result<&MeshEntry> {
        self.meshes
            .iter()
            .find(|m| m.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.meshes.iter().map(|m| m.name.as_str()).collect();
                format!("no mesh {name} in this run (meshes: {})", names.join(", "))
            })
    }
}

/// Whether a process with this pid exists (signal 0).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The default state folder of `isthmusctl up` and the operator commands.
pub fn default_state() -> PathBuf {
    std::env::temp_dir().join("isthmus-up")
}
