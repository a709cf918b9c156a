//! Protocols across two `isthmus-proxy` sidecars under STRICT mTLS (client sidecar -> mTLS ->
//! server sidecar -> application): WebSocket upgrades and gRPC streaming with trailers.

#![allow(clippy::unwrap_used)]
// test helpers: a failed unwrap is a failed test
// Wall-clock time is right here: these tests wait on real processes.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use isthmus_e2e::envoy::curl;
use isthmus_e2e::mesh::{STRICT, mesh_yaml, write};
use isthmus_e2e::proxy::IsthmusProxy;
use isthmus_e2e::{Isthmusd, free_port};

/// The mesh of `tests/support/mesh.rs` (echo v1 behind a server sidecar, a client sidecar),
/// STRICT mTLS, `extra` configuration, the application's ports (`APP_PORTS`). Returns the
/// client's outbound port.
fn pair(dir: &Path, ip: &str, app_ports: &str, extra: &str) -> Pair {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    write(&config, "mesh.yaml", &mesh_yaml(ip, free_port()));
    write(&config, "extra.yaml", extra);
    write(&config, "peer-authentication.yaml", STRICT);
    // Only v1 runs: route everything there.
    write(
        &config,
        "routes.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.local]
  http:
  - route: [{destination: {host: echo.shop.local, subset: v1}}]
",
    );
    let daemon = Isthmusd::start(dir, "red.local", &[]).unwrap();
    let server = IsthmusProxy::sidecar(
        dir,
        &daemon,
        &format!("{ip}.1"),
        "echo-v1",
        &[
            format!("APP_PORTS={app_ports}"),
            format!("OUTBOUND_PORT={}", free_port()),
        ],
    );
    let (outbound, tcp_local) = (free_port(), free_port());
    let client = IsthmusProxy::sidecar(
        dir,
        &daemon,
        &format!("{ip}.3"),
        "client",
        &[
            format!("OUTBOUND_PORT={outbound}"),
            // A local port for the TCP service of `TCP_SERVICE`, if the test declares it.
            format!("OUTBOUND_TCP_PORTS=tcp-echo.shop.local:7000={tcp_local}"),
        ],
    );
    for proxy in [&server, &client] {
        proxy.wait_ready(Duration::from_secs(20)).unwrap();
    }
    Pair {
        _daemon: daemon,
        server,
        client,
        outbound,
        tcp_local,
    }
}

/// Two sidecars and their control plane; the client's outbound HTTP port and its local port
/// for `tcp-echo.shop.local:7000`.
struct Pair {
    _daemon: Isthmusd,
    server: IsthmusProxy,
    client: IsthmusProxy,
    outbound: u16,
    tcp_local: u16,
}

/// A WebSocket-style server: answers an upgrade with 101 (echoing the caller identity it was
/// given in `x-seen-xfcc`), then sends back every byte upper-cased. A request without an
/// upgrade gets 200.
fn upgrade_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let header = |name: &str| {
                    head.iter()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                let mut out = stream;
                if !header("upgrade").eq_ignore_ascii_case("websocket") {
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-seen-xfcc: {}\r\n\r\n",
                    header("x-forwarded-client-cert")
                );
                out.write_all(answer.as_bytes()).unwrap();
                // Bytes already buffered by the reader come first.
                let mut buf = reader.buffer().to_vec();
                loop {
                    let upper: Vec<u8> = buf.iter().map(u8::to_ascii_uppercase).collect();
                    if out.write_all(&upper).is_err() {
                        return;
                    }
                    buf = vec![0u8; 4096];
                    match reader.get_mut().read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.truncate(n),
                    }
                }
            });
        }
    });
    port
}

/// Sends an upgrade request through the client sidecar (as its HTTP proxy); returns the
/// stream and the response head.
fn upgrade(outbound: u16, protocol: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", outbound)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET http://echo.shop.local:8080/ws HTTP/1.1\r\nhost: echo.shop.local:8080\r\nconnection: Upgrade\r\nupgrade: {protocol}\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn websocket_upgrades_cross_both_sidecars_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let app = upgrade_server();
    let Pair {
        server,
        client,
        outbound,
        ..
    } = pair(dir.path(), "127.0.75", &format!("http={app}"), "");
    let logs = || format!("client:\n{}\nserver:\n{}", client.logs(), server.logs());
    // A plain request first: the path works.
    let (status, body) = curl(&[
        "-x",
        &format!("http://127.0.0.1:{outbound}"),
        "http://echo.shop.local:8080/",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!((status, body.as_str()), (200, "ok"), "{}", logs());

    let (mut stream, head) = upgrade(outbound, "websocket");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}\n{}", logs());
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(
        head.contains("URI=spiffe://red.local/ns/shop/sa/client"),
        "the server sidecar passed the caller's identity on the upgrade: {head}"
    );
    // Both ways, several times, on the upgraded connection.
    for message in ["hello", "across two sidecars", "and back"] {
        stream.write_all(message.as_bytes()).unwrap();
        let mut got = vec![0u8; message.len()];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), message.to_uppercase());
    }
    drop(stream);

    // An upgrade the connection manager does not allow: 403, as in Envoy.
    let (_, head) = upgrade(outbound, "something-else");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// A gRPC service (port named `grpc`: HTTP/2 between the sidecars) on echo v1 only.
const GRPC_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc-echo, namespace: shop}
spec:
  hosts: [grpc-echo.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9090, name: grpc}]
  workloadSelector: {labels: {version: v1}}
";

/// `isthmusctl echo` with its gRPC side; (HTTP port, gRPC port), killed on drop.
struct GrpcEcho(std::process::Child);

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_echo(dir: &Path) -> (GrpcEcho, u16, u16) {
    let (http_file, grpc_file) = (dir.join("echo.addr"), dir.join("echo-grpc.addr"));
    let child = std::process::Command::new(isthmus_e2e::bin("isthmusctl"))
        .args(["echo", "--listen", "127.0.0.1:0", "--name", "grpc-v1"])
        .arg("--address-file")
        .arg(&http_file)
        .args(["--grpc-listen", "127.0.0.1:0", "--grpc-address-file"])
        .arg(&grpc_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let echo = GrpcEcho(child);
    let port = |file: &Path| {
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    };
    for _ in 0..200 {
        if let (Some(http), Some(grpc)) = (port(&http_file), port(&grpc_file)) {
            return (echo, http, grpc);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("isthmusctl echo did not start");
}

#[test]
fn grpc_unary_and_streaming_calls_cross_both_sidecars_with_their_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, http, grpc) = grpc_echo(dir.path());
    let Pair {
        server,
        client,
        outbound,
        ..
    } = pair(
        dir.path(),
        "127.0.76",
        &format!("http={http},grpc={grpc}"),
        GRPC_SERVICE,
    );
    let logs = || format!("client:\n{}\nserver:\n{}", client.logs(), server.logs());
    // h2c to the client sidecar's outbound listener, with the service's authority.
    isthmus_e2e::grpc_echo::check_calls(
        &format!("127.0.0.1:{outbound}"),
        "http://grpc-echo.shop.local:9090",
        "grpc-v1",
        "spiffe://red.local/ns/shop/sa/client",
        &logs,
    );
    // Istio's request metrics name the protocol and the gRPC status, on both sides.
    for (proxy, reporter) in [(&client, "source"), (&server, "destination")] {
        let (_, stats) = proxy.admin_get("/stats/prometheus");
        let calls = istio_series(&stats, "istio_requests_total", reporter);
        assert!(
            calls.iter().any(|l| l.contains("request_protocol=\"grpc\"")
                && l.contains("grpc_response_status=\"0\"")
                && l.contains("destination_service=\"grpc-echo.shop.local\"")
                && l.contains("source_principal=\"spiffe://red.local/ns/shop/sa/client\"")),
            "{reporter}: {calls:#?}"
        );
    }
}

/// The series of `metric` that `reporter` reports in `stats`.
fn istio_series<'s>(stats: &'s str, metric: &str, reporter: &str) -> Vec<&'s str> {
    let head = format!("{metric}{{reporter=\"{reporter}\"");
    stats.lines().filter(|l| l.starts_with(&head)).collect()
}

/// An opaque TCP service on echo v1.
const TCP_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo, namespace: shop}
spec:
  hosts: [tcp-echo.shop.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo}]
  workloadSelector: {labels: {version: v1}}
";

/// A sidecar pair on `ip` in front of the gRPC echo server, which answers plain HTTP too, with
/// `TCP_SERVICE` on a local TCP port of the client.
fn tcp_pair(dir: &Path, ip: &str) -> (GrpcEcho, Pair) {
    let (echo, http, _) = grpc_echo(dir);
    let app_ports = format!("http={http},tcp-echo={http}");
    (echo, pair(dir, ip, &app_ports, TCP_SERVICE))
}

/// Explicit mode's local port for a TCP service (`OUTBOUND_TCP_PORTS`): the application
/// connects to a local port, and the bytes cross both sidecars over mTLS untouched.
#[test]
fn a_local_tcp_port_carries_opaque_bytes_across_both_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, pair) = tcp_pair(dir.path(), "127.0.77");
    let Pair {
        server,
        client,
        tcp_local,
        ..
    } = pair;
    let local = tcp_local;
    let listeners = client.config_dump()["listeners"].clone();
    assert!(
        listeners.get(format!("outbound_tcp_{local}")).is_some(),
        "{listeners}"
    );
    // HTTP spoken by the application itself, carried as bytes: no sidecar header is added.
    let logs = || format!("client:\n{}\nserver:\n{}", client.logs(), server.logs());
    let (status, body) = curl(&[&format!("http://127.0.0.1:{local}/raw")])
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!(status, 200, "{body}\n{}", logs());
    assert!(body.contains("\"name\":\"grpc-v1\""), "{body}");
    assert!(!body.contains("x-forwarded-client-cert"), "{body}");
    let (_, stats) = server.admin_get("/stats/prometheus");
    assert!(
        stats.contains(
            "isthmus_proxy_downstream_connections_total{listener=\"inbound_127.0.77.1_7000\"}"
        ),
        "the server sidecar's TCP listener carried it: {stats}"
    );
    // Istio's TCP metrics on both sides: the caller by its certificate, the service, bytes.
    for (proxy, reporter) in [(&client, "source"), (&server, "destination")] {
        let (_, stats) = proxy.admin_get("/stats/prometheus");
        let opened = istio_series(&stats, "istio_tcp_connections_opened_total", reporter);
        assert!(
            opened.iter().any(
                |l| l.contains("destination_service=\"tcp-echo.shop.local\"")
                    && l.contains("request_protocol=\"tcp\"")
                    && l.contains("source_principal=\"spiffe://red.local/ns/shop/sa/client\"")
            ),
            "{reporter}: {opened:#?}"
        );
        let received = istio_series(&stats, "istio_tcp_received_bytes_total", reporter);
        assert!(
            received.iter().any(|l| l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)),
            "{reporter}: {received:#?}"
        );
    }
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter(stats: &str, metric: &str, labels: &str) -> f64 {
    stats
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sidecars resume TLS sessions between them: the first connection is a full handshake, the
/// next ones resume its session, and the server still knows the caller by its certificate.
#[test]
fn later_connections_between_two_sidecars_resume_the_tls_session() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, pair) = tcp_pair(dir.path(), "127.0.13");
    let Pair {
        server,
        client,
        tcp_local,
        ..
    } = pair;
    for _ in 0..3 {
        let (status, body) = curl(&[&format!("http://127.0.0.1:{tcp_local}/raw")])
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", client.logs(), server.logs()));
        assert_eq!(status, 200, "{body}");
    }
    let handshakes = "isthmus_proxy_tls_handshakes_total";
    let upstream = "side=\"upstream\",resumed=\"true\"";
    let downstream = "side=\"downstream\",resumed=\"true\"";
    // Resumed handshakes: the client's as the upstream side, the server's as the downstream.
    let resumed = |expected: f64| {
        let (_, client_stats) = client.admin_get("/stats/prometheus");
        let (_, server_stats) = server.admin_get("/stats/prometheus");
        assert_eq!(
            counter(&client_stats, handshakes, upstream),
            expected,
            "{client_stats}"
        );
        assert_eq!(
            counter(&server_stats, handshakes, downstream),
            expected,
            "{server_stats}"
        );
        server_stats
    };
    let server_stats = resumed(2.0);
    // A resumed connection's caller is the certificate of the session's first handshake.
    let opened = counter(
        &server_stats,
        "istio_tcp_connections_opened_total",
        "source_principal=\"spiffe://red.local/ns/shop/sa/client\"",
    );
    assert_eq!(opened, 3.0, "{server_stats}");

    // A change that leaves TLS as it was (another service) rebuilds both sidecars' runtimes
    // but keeps their TLS configurations, ticket keys and stores: the next connection resumes.
    // `/clusters` reads the runtime in force: the change has been applied when it lists the new
    // service's cluster.
    let applied =
        |proxy: &IsthmusProxy| proxy.admin_get("/clusters").1.contains("other.shop.local");
    assert!(!applied(&client) && !applied(&server));
    write(
        &dir.path().join("config"),
        "other.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: shop}
spec:
  hosts: [other.shop.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.1}]
",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !applied(&client) || !applied(&server) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new service never reached both sidecars"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = curl(&[&format!("http://127.0.0.1:{tcp_local}/raw")])
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", client.logs(), server.logs()));
    assert_eq!(status, 200, "{body}");
    let server_stats = resumed(3.0);
    assert_eq!(
        counter(
            &server_stats,
            handshakes,
            "side=\"downstream\",resumed=\"false\""
        ),
        1.0,
        "still the one full handshake: {server_stats}"
    );
}
