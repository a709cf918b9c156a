//! `isthmusctl echo`: a small HTTP echo service for demos and tests. Every request gets a JSON
//! answer naming the service and showing the request (method, path, headers), so a test can
//! see which backend answered and what the sidecar forwarded (e.g. the caller's identity in
//! `x-forwarded-client-cert`). `?delay_ms=N` answers after N milliseconds (at most a minute),
//! for tests of timeouts and draining; `?status=N` answers with that status (for tests of
//! retries and outlier detection). With `--grpc-listen` it also serves a gRPC echo
//! (`echo_grpc.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::Request;
use axum::response::IntoResponse;
use clap::Args;

#[derive(Debug, Args)]
pub struct EchoCommand {
    /// Where to listen; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The name every answer carries (also in the `x-echo-name` header).
    #[arg(long, default_value = "echo")]
    name: String,
    /// Write the bound address here once listening.
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// Also serve the gRPC echo (`isthmus.echo.v1.Echo`) here; port 0 picks a free port.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// Write the gRPC echo's bound address here once listening.
    #[arg(long, requires = "grpc_listen")]
    grpc_address_file: Option<PathBuf>,
}

impl EchoCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let bound = listener.local_addr()?;
        let name: Arc<str> = self.name.clone().into();
        let grpc = match self.grpc_listen {
            Some(address) => {
                let grpc = super::echo_grpc::bind(address).await?;
                let grpc_bound = grpc.local_addr()?;
                if let Some(file) = &self.grpc_address_file {
                    std::fs::write(file, grpc_bound.to_string())
                        .with_context(|| format!("writing {}", file.display()))?;
                }
                println!("echo {} (gRPC) listening on {grpc_bound}", self.name);
                Some(tokio::spawn(super::echo_grpc::serve(grpc, name.clone())))
            }
            None => None,
        };
        if let Some(file) = &self.address_file {
            std::fs::write(file, bound.to_string())
                .with_context(|| format!("writing {}", file.display()))?;
        }
        println!("echo {} listening on {bound}", self.name);
        let app = axum::Router::new().fallback(move |request: Request| {
            let name = name.clone();
            async move {
                if let Some(delay) = delay(&request) {
                    tokio::time::sleep(delay).await;
                }
                answer(&name, &request)
            }
        });
        match grpc {
            // Whichever stops first (an error) stops the command.
            Some(grpc) => tokio::select! {
                served = axum::serve(listener, app) => served?,
                grpc = grpc => grpc??,
            },
            None => axum::serve(listener, app).await?,
        }
        Ok(())
    }
}

/// The value of query parameter `name`.
fn query<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The `delay_ms` query parameter, capped at a minute.
fn delay(request: &Request) -> Option<std::time::Duration> {
    let ms: u64 = query(request, "delay_ms")?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms.min(60_000)))
}

/// The `status` query parameter, when it is a status code.
fn status(request: &Request) -> axum::http::StatusCode {
    query(request, "status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
        .unwrap_or(axum::http::StatusCode::OK)
}

fn answer(name: &str, request: &Request) -> axum::response::Response {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "name": name,
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(ToString::to_string),
        "headers": headers,
    });
    (
        status(request),
        [("x-echo-name", name.to_owned())],
        axum::Json(body),
    )
        .into_response()
}
