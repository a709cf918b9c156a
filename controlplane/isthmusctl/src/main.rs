//! `isthmusctl`: the operator CLI. All logic lives in the library ([`isthmusctl::cli`]).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // `isthmusctl echo` as a workload of a run stops with the run.
    isthmus_runtime::supervised::stop_with_runner();
    // `isthmusctl status | head`: when the reader goes away, stop quietly as other Unix tools
    // do (std ignores SIGPIPE, so `print!` panics on the broken pipe instead).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let broken_pipe =
            message.starts_with("failed printing to stdout") && message.contains("Broken pipe");
        if broken_pipe {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match isthmusctl::cli::Cli::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmusctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
