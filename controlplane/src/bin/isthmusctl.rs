//! `isthmusctl`: the operator CLI. All logic lives in `isthmus_controlplane::cli`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // `isthmusctl echo` as a workload of a run stops with the run.
    isthmus_api::supervised::stop_with_runner();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match isthmus_controlplane::cli::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmusctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
