//! `isthmus-proxy`: the Isthmus data plane (see the library's documentation).

use clap::Parser;
use isthmus_proxy::bootstrap;

fn main() -> std::process::ExitCode {
    isthmus_runtime::supervised::stop_with_runner();
    let args = bootstrap::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One worker: a current-thread runtime (no work stealing, no cross-thread wake-ups), as
    // Envoy's `--concurrency 1` is one worker thread.
    let mut runtime = match args.concurrency {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("isthmus-proxy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bootstrap::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
