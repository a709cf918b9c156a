//! Steady traffic for fault tests: an application that sends GETs through its sidecar (the
//! sidecar's outbound port as its HTTP proxy, keep-alive connections, as `HTTP_PROXY` clients
//! do) at a fixed rate, and counts every request that did not get a 200 with its whole body,
//! with when and why. Runs on a thread of its own until stopped.

// Wall-clock time is right here: this paces real requests.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// One request that failed: when (since the start) and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Duration,
    pub why: String,
}

/// What a run of traffic saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub sent: u64,
    pub ok: u64,
    /// Requests sent again because the keep-alive connection they went out on had been closed
    /// by the sidecar before any response (counted apart: a client's retry, not a failure).
    pub resent: u64,
    pub failures: Vec<Failure>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} ok, {} failed, {} resent on a fresh connection in {:.1} s",
            self.sent,
            self.ok,
            self.failures.len(),
            self.resent,
            self.elapsed.as_secs_f64()
        )?;
        for failure in self.failures.iter().take(20) {
            write!(
                f,
                "\n  at {:.3} s: {}",
                failure.at.as_secs_f64(),
                failure.why
            )?;
        }
        if self.failures.len() > 20 {
            write!(f, "\n  … {} more", self.failures.len() - 20)?;
        }
        Ok(())
    }
}

/// Traffic in progress; [`Traffic::stop`] ends it and says what it saw.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Outcome>,
}

impl Traffic {
    /// `rps` GETs a second of `url` (absolute, `http://host:port/path`) through the HTTP proxy
    /// at `proxy`, over `connections` keep-alive connections.
    pub fn start(proxy: SocketAddr, url: &str, rps: u32, connections: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let url: http::Uri = url.parse().expect("an absolute URL");
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run(proxy, url, rps, connections.max(1), stop2, sent2))
        });
        Self { stop, sent, thread }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the traffic thread")
    }
}

async fn run(
    proxy: SocketAddr,
    url: http::Uri,
    rps: u32,
    connections: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Outcome {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rps));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..connections {
        let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
        // Spread the connections' ticks over one interval.
        let offset = interval.mul_f64(f64::from(n) / f64::from(connections));
        tasks.spawn(async move {
            tokio::time::sleep(offset).await;
            connection(proxy, url, interval, start, stop, sent).await
        });
    }
    let mut outcome = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        let part = done.expect("a traffic task");
        outcome.sent += part.sent;
        outcome.ok += part.ok;
        outcome.resent += part.resent;
        outcome.failures.extend(part.failures);
    }
    outcome.failures.sort_by_key(|f| f.at);
    outcome.elapsed = start.elapsed();
    outcome
}

/// One application connection to its sidecar: a GET every `interval`, reconnecting (and
/// counting the request that found it broken) when the connection fails.
async fn connection(
    proxy: SocketAddr,
    url: http::Uri,
    interval: Duration,
    start: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        out.sent += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let at = start.elapsed();
        match request(proxy, &url, &mut sender, &mut out.resent).await {
            Ok(()) => out.ok += 1,
            Err(why) => {
                sender = None;
                out.failures.push(Failure { at, why });
            }
        }
    }
    out
}

/// One GET. A keep-alive connection the sidecar closed between two requests is replaced and
/// the GET sent again once, as HTTP clients do for idempotent requests on a reused connection
/// that ends before any response; any other failure is the request's.
async fn request(
    proxy: SocketAddr,
    url: &http::Uri,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    resent: &mut u64,
) -> Result<(), String> {
    let reused = sender.as_ref().is_some_and(|s| !s.is_closed());
    match attempt(proxy, url, sender).await {
        Err(Attempt::StaleConnection(_)) if reused => {
            *sender = None;
            *resent += 1;
            attempt(proxy, url, sender).await.map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

enum Attempt {
    /// The connection ended before any byte of a response.
    StaleConnection(String),
    Failed(String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StaleConnection(why) | Self::Failed(why) => f.write_str(why),
        }
    }
}

async fn attempt(
    proxy: SocketAddr,
    url: &http::Uri,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
) -> Result<(), Attempt> {
    let failed = |why: String| Attempt::Failed(why);
    if sender.as_ref().is_some_and(|s| s.is_closed()) {
        *sender = None;
    }
    if sender.is_none() {
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| failed(format!("connect to the sidecar: {e}")))?;
        tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| failed(format!("handshake: {e}")))?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender
        .as_mut()
        .ok_or_else(|| failed("no connection".into()))?;
    if let Err(e) = s.ready().await {
        *sender = None;
        return Err(Attempt::StaleConnection(format!("connection: {e}")));
    }
    let request = http::Request::get(url.clone())
        .header(
            http::header::HOST,
            url.authority().map_or("", |a| a.as_str()),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let response =
        match tokio::time::timeout(Duration::from_secs(10), s.send_request(request)).await {
            Err(_) => {
                *sender = None;
                return Err(failed("no response within 10 s".into()));
            }
            Ok(Err(e)) => {
                *sender = None;
                let why = format!("request: {e}");
                return Err(if e.is_canceled() || e.is_incomplete_message() {
                    Attempt::StaleConnection(why)
                } else {
                    failed(why)
                });
            }
            Ok(Ok(response)) => response,
        };
    let status = response.status();
    let keep = !response
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response.into_body().collect().await;
    if !keep || body.is_err() {
        *sender = None;
    }
    let body = body.map_err(|e| failed(format!("body: {e}")))?.to_bytes();
    if status != http::StatusCode::OK {
        return Err(failed(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    Ok(())
}
