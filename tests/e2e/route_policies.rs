//! A `VirtualService`'s fault injection, mirroring and CORS, on the caller's sidecar, real
//! processes: `isthmusd`, the caller's `isthmus-proxy` (then a stock Envoy on the same
//! configuration), `isthmusctl echo` as the service, and a recording server as the mirror.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_e2e::envoy::Echo;
use isthmus_e2e::mesh::{envoy_client, until};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};

/// One HTTP/1.1 response: status, headers (lower-case names), body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client of the sidecar's outbound port (the sidecar as HTTP proxy).
struct Client {
    reader: BufReader<TcpStream>,
    outbound: u16,
}

impl Client {
    fn new(outbound: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", outbound)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
            outbound,
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        match self.try_send(method, path, headers) {
            Ok(r) => r,
            // The connection was closed (by a local reply that ends it): once more, afresh.
            Err(_) => {
                *self = Self::new(self.outbound);
                self.try_send(method, path, headers).unwrap()
            }
        }
    }

    fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} http://echo.shop.local:8080{path} HTTP/1.1\r\nhost: echo.shop.local:8080\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A server that records each request's `Host` and path, and answers 500 (an answer the
/// caller must never see).
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || serve(stream, &record));
            }
        });
        Self { port, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, record: &Mutex<Vec<(String, String)>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut host = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("host")
            {
                host = value.trim().to_owned();
            }
        }
        record.lock().unwrap().push((host, path));
        let answer = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 6\r\n\r\nmirror";
        if reader.get_mut().write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(echo: u16, mirror: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, namespace: shop}}
spec: {{address: 127.0.74.1, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: mirror, namespace: shop}}
spec:
  hosts: [mirror.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {mirror}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: shop}}
spec:
  hosts: [echo.shop.local]
  http:
  - match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: echo.shop.local}}}}]
  - match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 1s, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo.shop.local}}}}]
  - match: [{{uri: {{prefix: /mirror}}}}]
    mirror: {{host: mirror.shop.local}}
    mirrorPercentage: {{value: 100}}
    route: [{{destination: {{host: echo.shop.local}}}}]
  - match: [{{uri: {{prefix: /cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: 'https://app.example.com'}}]
      allowMethods: [GET, POST]
      allowHeaders: [x-user]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
    route: [{{destination: {{host: echo.shop.local}}}}]
  - route: [{{destination: {{host: echo.shop.local}}}}]
"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    _echo: Echo,
    mirror: Recorder,
    daemon: Isthmusd,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start(dir.path(), "echo").unwrap();
    let mirror = Recorder::start();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("routes.yaml"),
        config(echo.addr.port(), mirror.port),
    )
    .unwrap();
    let daemon = Isthmusd::start(dir.path(), "red.local", &[]).unwrap();
    Setup {
        _dir: dir,
        _echo: echo,
        mirror,
        daemon,
    }
}

fn check_policies(outbound: u16, mirror: &Recorder, logs: &dyn Fn() -> String) {
    until(
        "the sidecar routes to echo",
        Duration::from_secs(20),
        || {
            TcpStream::connect(("127.0.0.1", outbound)).is_ok()
                && Client::new(outbound).send("GET", "/", &[]).status == 200
        },
    );
    let mut client = Client::new(outbound);

    // Abort: 50 % of 1,000 requests, within 5 points; the rest reach the service.
    let mut aborted = 0;
    for i in 0..1000 {
        let r = client.send("GET", "/abort", &[]);
        match r.status {
            503 => {
                assert_eq!(r.body, "fault filter abort", "request {i}: {r:?}");
                aborted += 1;
            }
            200 => assert!(r.body.contains("\"name\""), "request {i}: {r:?}"),
            other => panic!("request {i}: status {other}: {r:?}\n{}", logs()),
        }
    }
    assert!(
        (450..=550).contains(&aborted),
        "{aborted} of 1000 aborted, not 50 % ± 5 %"
    );

    // Delay: the answer comes after the fixed delay (Envoy's timers may fire a little early
    // by this clock; without the fault the answer takes about a millisecond).
    let started = Instant::now();
    let r = client.send("GET", "/delay", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Mirror: the caller gets the service's answer, never the mirror's; the mirror gets a copy
    // with `-shadow` on its authority.
    let r = client.send("GET", "/mirror/1", &[]);
    assert_eq!(r.status, 200, "the mirror's 500 is ignored: {r:?}");
    assert!(r.body.contains("\"name\""), "{r:?}");
    until("the mirror gets the copy", Duration::from_secs(10), || {
        mirror
            .seen()
            .iter()
            .any(|(host, path)| host == "echo.shop.local-shadow:8080" && path == "/mirror/1")
    });
    assert!(
        mirror
            .seen()
            .iter()
            .all(|(_, path)| path.starts_with("/mirror")),
        "only the mirrored route is copied: {:?}",
        mirror.seen()
    );

    // CORS: an allowed preflight is answered with the policy.
    let origin = ("origin", "https://app.example.com");
    let preflight = client.send(
        "OPTIONS",
        "/cors",
        &[origin, ("access-control-request-method", "POST")],
    );
    assert_eq!(preflight.status, 200, "{preflight:?}");
    for (name, value) in [
        ("access-control-allow-origin", "https://app.example.com"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-user"),
        ("access-control-max-age", "86400"),
        ("access-control-allow-credentials", "true"),
    ] {
        assert_eq!(preflight.header(name), Some(value), "{name}: {preflight:?}");
    }
    // An allowed request gets the origin and the exposed headers from the service's answer.
    let r = client.send("GET", "/cors", &[origin]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("x-trace"));
    // Another origin gets no CORS headers; its preflight goes on to the service.
    let other = ("origin", "https://evil.example.com");
    let r = client.send("GET", "/cors", &[other]);
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    let r = client.send(
        "OPTIONS",
        "/cors",
        &[other, ("access-control-request-method", "POST")],
    );
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    assert!(
        r.body.contains("\"name\""),
        "forwarded to the service: {r:?}"
    );
}

fn isthmus_sidecar(root: &Path, xds: &str, outbound: u16) -> IsthmusProxy {
    let proxy = IsthmusProxy::start(
        root,
        "client",
        &[
            "--node-id".into(),
            "sidecar~127.0.74.1~client.shop~shop.svc.cluster.local".into(),
            "--xds-plaintext".into(),
            "--xds-address".into(),
            xds.to_owned(),
            "--metadata".into(),
            format!("OUTBOUND_PORT={outbound}"),
        ],
    );
    proxy.wait_ready(Duration::from_secs(20)).unwrap();
    proxy
}

#[test]
fn isthmus_proxy_injects_faults_mirrors_and_answers_cors() {
    let setup = setup();
    let outbound = free_port();
    let proxy = isthmus_sidecar(setup._dir.path(), &setup.daemon.xds.to_string(), outbound);
    check_policies(outbound, &setup.mirror, &|| proxy.logs());
}

#[test]
fn stock_envoy_takes_the_same_policies_with_no_rejected_update() {
    let setup = setup();
    let outbound = free_port();
    let envoy = envoy_client(
        setup._dir.path(),
        &setup.daemon.xds.to_string(),
        "127.0.74.1",
        outbound,
    );
    check_policies(outbound, &setup.mirror, &|| envoy.logs());
    envoy.assert_no_rejected_update();
}
