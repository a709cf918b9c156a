//! The local runner behind `isthmusctl up` and `isthmusctl demo`: every mesh a folder
//! describes, run as processes on loopback.
//!
//! - [`description`]: reading DIR (one folder per mesh, standard resources plus our `Mesh` and
//!   `Workload` kinds), every problem located;
//! - [`plan`]: addresses and ports, and each mesh's rendered configuration (pure);
//! - [`processes`]: starting, watching and stopping the processes (process groups);
//! - [`run`]: the order things start in, readiness, reloads, the run file operators read;
//! - [`run_file`]: `STATE/run.json`, what a running `up` started and where;
//! - [`prometheus`]: `STATE/prometheus.yml`, a Prometheus configuration scraping the run;
//! - [`offline`]: a description's meshes as configuration, for dry runs;
//! - [`http`]: one-shot HTTP requests (admin and debug ports, calls through a sidecar).

pub mod description;
pub mod http;
pub mod offline;
pub mod plan;
pub mod processes;
pub mod prometheus;
pub mod run;
pub mod run_file;

pub use description::{Description, read_description};
pub use run::Runner;
pub use run_file::RunFile;

use std::path::PathBuf;

/// Our own binaries: next to the running executable (one cargo build), else on `PATH`.
pub fn our_binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name(name);
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from(name)
}
