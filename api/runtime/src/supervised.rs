//! Processes started by `isthmusctl up` stop with it, even when it is killed outright: a run
//! tags every process it starts with [`RUN_TAG`] and [`RUNNER_PID`], and our binaries call
//! [`stop_with_runner`] first thing, which asks the kernel for SIGTERM when the parent exits
//! (Linux `PR_SET_PDEATHSIG`). Processes not started by a run are unaffected.

/// Set on every process of a run: the run's state folder.
pub const RUN_TAG: &str = "ISTHMUS_RUN";
/// Set on every process of a run: the pid of the `isthmusctl` that started it.
pub const RUNNER_PID: &str = "ISTHMUS_RUNNER_PID";

/// When started by a run, stops this process (SIGTERM) once its parent is gone, and exits at
/// once if the runner is already gone.
pub fn stop_with_runner() {
    let Some(runner) = std::env::var(RUNNER_PID)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    // The runner may have died before the call above. (The parent is not always the runner:
    // a workload's command may start us through a shell.)
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner), None).is_err() {
        std::process::exit(0);
    }
}
