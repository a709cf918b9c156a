//! `isthmus-proxy`: the Isthmus data plane (see the library's documentation).

use clap::Parser;
use isthmus_proxy::bootstrap;

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
