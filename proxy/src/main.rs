//! `isthmus-proxy`: the Isthmus data plane (see the library's documentation): parse the flags,
//! set up logging and the runtime, then `app::bind` and serve until SIGTERM or Ctrl-C.
//! `isthmus-proxy capture …` installs a pod's transparent-capture rules instead
//! ([`isthmus_proxy::capture`]).

use anyhow::Context as _;
use clap::Parser;
use isthmus_proxy::app;
use isthmus_proxy::bootstrap::Options;
use isthmus_proxy::listener::error::ErrorChain;

fn main() -> std::process::ExitCode {
    // `isthmus-proxy capture …`: install the pod's capture rules and exit (the injected init
    // container's job).
    if std::env::args_os().nth(1).is_some_and(|a| a == "capture") {
        let args = isthmus_proxy::capture::CaptureArgs::parse_from(std::env::args_os().skip(1));
        return match args.run() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("isthmus-proxy capture: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    isthmus_runtime::supervised::stop_with_runner();
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(options) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Every cause once (some errors print their source themselves).
            eprintln!("isthmus-proxy: {}", ErrorChain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(options: Options) -> anyhow::Result<()> {
    // One worker: a current-thread runtime (no work stealing, no cross-thread wake-ups), as
    // Envoy's `--concurrency 1` is one worker thread.
    let mut runtime = match options.concurrency {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        app::bind(options).await?.serve(termination()).await?;
        Ok(())
    })
}

/// SIGTERM or Ctrl-C (SIGINT).
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
