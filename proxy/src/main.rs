//! `isthmus-proxy`: the Isthmus data plane.
//!
//! Today it bootstraps the workload's identity: it obtains a certificate from `isthmusd` with
//! its bootstrap token, renews it at half-life, and reports it on the admin port (`/ready`,
//! `/certs`). Listeners, routing and xDS build on this identity.

mod admin;
mod bootstrap;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = bootstrap::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match bootstrap::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
