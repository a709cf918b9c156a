//! The open-loop load generator shared by the benchmarks: each request has a scheduled send
//! time and its latency is measured from that time, so a stalled proxy is charged for the
//! requests that queue behind it (no coordinated omission). Also the applications they load
//! and readings of a process's CPU time and resident memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// What the load generator speaks to the client side: HTTP/1.1, or HTTP/2 with prior
/// knowledge (h2c; between the sidecars the cluster's protocol applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Raw TCP: each request is `body` bytes written, `body` bytes read back.
    Tcp,
}

/// A keep-alive client connection of either protocol.
pub enum Client {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Tcp(tokio::net::TcpStream, Vec<u8>),
}

impl Client {
    pub async fn connect(target: SocketAddr, protocol: Protocol) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        if protocol == Protocol::Tcp {
            return Ok(Self::Tcp(stream, vec![b'x'; TCP_MESSAGE]));
        }
        let io = TokioIo::new(stream);
        Ok(match protocol {
            Protocol::Tcp => unreachable!("handled above"),
            Protocol::Http1 => {
                let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Self::Http1(s)
            }
            Protocol::Http2 => {
                let (s, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await?;
                tokio::spawn(conn);
                Self::Http2(s)
            }
        })
    }

    /// One GET; true if it got a 2xx and its whole body.
    pub async fn get(
        &mut self,
        url: &hyper::Uri,
        header: Option<(&'static str, &'static str)>,
    ) -> bool {
        if let Self::Tcp(stream, buf) = self {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            return stream.write_all(buf).await.is_ok() && stream.read_exact(buf).await.is_ok();
        }
        let mut request = hyper::Request::get(url.clone());
        if let Some((k, v)) = header {
            request = request.header(k, v);
        }
        let response = match self {
            Self::Http1(s) => {
                request =
                    request.header("host", url.authority().map_or("127.0.0.1", |a| a.as_str()));
                s.send_request(request.body(Empty::new()).unwrap()).await
            }
            Self::Http2(s) => s.send_request(request.body(Empty::new()).unwrap()).await,
            Self::Tcp(..) => unreachable!("handled above"),
        };
        match response {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        }
    }
}

pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of `pid`'s live threads, to the nanosecond (the first field of each thread's
/// `/proc/<pid>/task/<tid>/schedstat`): `/proc/<pid>/stat` counts in ticks of 10 ms, too
/// coarse for a turn of 2 s at a few tenths of a core. Threads that ended are not counted (the
/// proxies' threads live as long as they do). Falls back to [`proc_cpu_seconds`] where the
/// kernel has no `schedstat`.
pub fn proc_cpu_precise(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return proc_cpu_seconds(pid);
    };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    if nanos == 0 {
        proc_cpu_seconds(pid)
    } else {
        nanos as f64 / 1e9
    }
}

pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The application: answers every request with `size` bytes.
pub async fn app(size: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'x'; size]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                // HTTP/1.1 or h2c, by the client's first bytes.
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

/// The size of a raw TCP request and of its answer.
pub const TCP_MESSAGE: usize = 1024;

/// A TCP application: answers every `TCP_MESSAGE` bytes it reads with as many.
pub async fn tcp_app() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; TCP_MESSAGE];
                while stream.read_exact(&mut buf).await.is_ok() {
                    if stream.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Open-loop load: `rate` requests per second for `seconds`, each measured from its scheduled
/// time, over `connections` keep-alive connections to `target` (an HTTP proxy when `url` is
/// absolute).
pub async fn load(
    target: SocketAddr,
    url: &str,
    header: Option<(&'static str, &'static str)>,
    protocol: Protocol,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> (Histogram<u64>, u64) {
    let total = rate * seconds;
    let (tx, rx) = async_channel(total as usize);
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let rx = rx.clone();
        let histogram = histogram.clone();
        let errors = errors.clone();
        let url: hyper::Uri = url.parse().unwrap();
        workers.push(tokio::spawn(async move {
            let mut sender: Option<Client> = None;
            while let Ok(scheduled) = rx.recv().await {
                if sender.is_none() {
                    sender = Client::connect(target, protocol).await.ok();
                }
                let ok = match sender.as_mut() {
                    Some(client) => client.get(&url, header).await,
                    None => false,
                };
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    sender = None;
                }
                let micros =
                    u64::try_from(Instant::elapsed(&scheduled).as_micros()).unwrap_or(u64::MAX);
                histogram.lock().await.saturating_record(micros.max(1));
            }
        }));
    }
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let _ = tx.send(scheduled).await;
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let h = histogram.lock().await.clone();
    (h, errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// CPU seconds of `pids` so far.
fn cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|p| proc_cpu_precise(*p)).sum()
}

/// One set-up of a side-by-side comparison: where its load goes, and the processes whose CPU
/// it is charged.
pub struct Setup<'a> {
    pub name: &'static str,
    pub target: SocketAddr,
    pub url: &'a str,
    pub header: Option<(&'static str, &'static str)>,
    pub pids: &'a [u32],
}

impl Setup<'_> {
    /// [`load`] on this set-up.
    pub async fn run(
        &self,
        protocol: Protocol,
        rate: u64,
        seconds: u64,
        connections: usize,
    ) -> (Histogram<u64>, u64) {
        load(
            self.target,
            self.url,
            self.header,
            protocol,
            rate,
            seconds,
            connections,
        )
        .await
    }
}

/// What one set-up measured over all its turns.
pub struct Turns {
    pub latency: Histogram<u64>,
    pub errors: u64,
    /// CPU seconds of the set-up's processes during its own turns.
    pub cpu: f64,
    /// The same, turn by turn (each `slice` seconds long), in the order they ran.
    pub cpu_turns: Vec<f64>,
}

/// The slice actually used, and the seconds each set-up gets (whole slices).
pub fn slices(seconds: u64, slice: u64) -> (u64, u64) {
    let slice = slice.clamp(1, seconds.max(1));
    (slice, seconds.div_ceil(slice) * slice)
}

/// Open-loop load on each set-up in turn, `slice` seconds at a time, until each has had
/// `seconds` (after a second of warm-up each), so that the machine's drift over the run weighs
/// on all of them alike.
pub async fn in_turns(
    setups: &[Setup<'_>],
    protocol: Protocol,
    rate: u64,
    connections: usize,
    (seconds, slice): (u64, u64),
) -> Vec<Turns> {
    let (slice, measured) = slices(seconds, slice);
    let run = async |s: &Setup<'_>, seconds: u64| s.run(protocol, rate, seconds, connections).await;
    // Warm-up: connections, pools, TLS sessions.
    for s in setups {
        let _ = run(s, 1).await;
    }
    let mut all: Vec<Turns> = setups
        .iter()
        .map(|_| Turns {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            errors: 0,
            cpu: 0.0,
            cpu_turns: Vec::new(),
        })
        .collect();
    for _ in 0..measured / slice {
        for (s, t) in setups.iter().zip(&mut all) {
            let before = cpu(s.pids);
            let (latency, errors) = run(s, slice).await;
            let used = cpu(s.pids) - before;
            t.cpu += used;
            t.cpu_turns.push(used);
            t.latency.add(&latency).unwrap();
            t.errors += errors;
        }
    }
    all
}

/// Open-loop load on two set-ups at once, each at `rate`, `slice` seconds at a time (after a
/// second of warm-up), both set-ups' CPU read over the same slices: what else the machine
/// does meanwhile (another tenant, a frequency step) weighs on both alike, where turns see it
/// on one and not the other. The two compete for the same cores, alike too. Per set-up: each
/// slice's CPU seconds, in the order they ran, and the requests that failed (a set-up that
/// drops requests would look cheaper).
pub async fn together(
    setups: [&Setup<'_>; 2],
    protocol: Protocol,
    rate: u64,
    connections: usize,
    (seconds, slice): (u64, u64),
) -> [(Vec<f64>, u64); 2] {
    let (slice, measured) = slices(seconds, slice);
    let run = async |s: &Setup<'_>, seconds: u64| s.run(protocol, rate, seconds, connections).await;
    let [a, b] = setups;
    let _ = tokio::join!(run(a, 1), run(b, 1));
    let mut used = [(Vec::new(), 0), (Vec::new(), 0)];
    for _ in 0..measured / slice {
        let before = [cpu(a.pids), cpu(b.pids)];
        let ((_, failed_a), (_, failed_b)) = tokio::join!(run(a, slice), run(b, slice));
        used[0].0.push(cpu(a.pids) - before[0]);
        used[1].0.push(cpu(b.pids) - before[1]);
        used[0].1 += failed_a;
        used[1].1 += failed_b;
    }
    used
}

/// A multi-consumer queue of scheduled send times (one per request).
pub fn async_channel(capacity: usize) -> (Sender, Receiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (Sender(tx), Receiver(Arc::new(Mutex::new(rx))))
}

pub struct Sender(tokio::sync::mpsc::Sender<Instant>);
impl Sender {
    async fn send(&self, t: Instant) -> Result<(), ()> {
        self.0.send(t).await.map_err(drop)
    }
}

#[derive(Clone)]
pub struct Receiver(Arc<Mutex<tokio::sync::mpsc::Receiver<Instant>>>);
impl Receiver {
    async fn recv(&self) -> Result<Instant, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
