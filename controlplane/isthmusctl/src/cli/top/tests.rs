//! `top`'s parsing and computation on fixture text shaped like the sidecars' exposition
//! (Istio's standard metrics with every label of the telemetry contract, in the classic text
//! format `api/runtime/src/metrics_format.rs` serves).

use std::fmt::Write as _;

use super::exposition::{self, Labels};
use super::signals::{
    Direction, Snapshot, Window, bucket_increase, histogram_quantile, increase, peers, services,
};
use super::{Report, latency, parse_interval, render};

/// Istio's latency buckets (milliseconds), as the contract fixes them.
const BOUNDS: [&str; 20] = [
    "0.5",
    "1.0",
    "5.0",
    "10.0",
    "25.0",
    "50.0",
    "100.0",
    "250.0",
    "500.0",
    "1000.0",
    "2500.0",
    "5000.0",
    "10000.0",
    "30000.0",
    "60000.0",
    "300000.0",
    "600000.0",
    "1800000.0",
    "3600000.0",
    "+Inf",
];

/// One series' labels, every label of the contract, in the exposition's syntax.
struct Series {
    reporter: &'static str,
    source_mesh: &'static str,
    destination_mesh: &'static str,
    service: &'static str,
    code: &'static str,
}

impl Series {
    fn labels(&self) -> String {
        let (source_workload, source_ns) = match self.source_mesh {
            "red" => ("client", "shop"),
            "green" => ("productpage", "bookinfo"),
            _ => ("unknown", "unknown"),
        };
        let name = self.service.split('.').next().unwrap_or("unknown");
        format!(
            "reporter=\"{}\",source_workload=\"{source_workload}\",source_workload_namespace=\"{source_ns}\",\
             source_principal=\"spiffe://{}.local/ns/{source_ns}/sa/{source_workload}\",source_app=\"{source_workload}\",\
             source_mesh=\"{}\",destination_workload=\"{name}\",destination_workload_namespace=\"bookinfo\",\
             destination_principal=\"spiffe://{}.local/ns/bookinfo/sa/{name}\",destination_app=\"{name}\",\
             destination_service=\"{}\",destination_service_name=\"{name}\",destination_service_namespace=\"bookinfo\",\
             destination_mesh=\"{}\",request_protocol=\"http\",response_code=\"{}\",grpc_response_status=\"\",\
             response_flags=\"{}\",connection_security_policy=\"mutual_tls\"",
            self.reporter,
            self.source_mesh,
            self.source_mesh,
            self.destination_mesh,
            self.service,
            self.destination_mesh,
            self.code,
            if self.code.starts_with('5') {
                "UF,URX"
            } else {
                "-"
            },
        )
    }
}

/// A whole exposition: the request counters, and a latency histogram per series where every
/// observation of `count` fell in the bucket `le` (and the ones above it).
fn exposition(series: &[(Series, f64, &str)]) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP isthmus_proxy_downstream_connections_total Downstream connections accepted.\n",
    );
    out.push_str("# TYPE isthmus_proxy_downstream_connections_total counter\n");
    out.push_str("isthmus_proxy_downstream_connections_total{listener=\"virtualInbound\"} 12\n");
    out.push_str(
        "# HELP istio_requests_total Total requests.\n# TYPE istio_requests_total counter\n",
    );
    for (s, count, _) in series {
        let _ = writeln!(out, "istio_requests_total{{{}}} {count}", s.labels());
    }
    out.push_str("# HELP istio_request_duration_milliseconds Request duration.\n");
    out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
    for (s, count, le) in series {
        let labels = s.labels();
        let _ = writeln!(
            out,
            "istio_request_duration_milliseconds_sum{{{labels}}} {}",
            count * 3.0
        );
        let _ = writeln!(
            out,
            "istio_request_duration_milliseconds_count{{{labels}}} {count}"
        );
        let at = exposition::parse_float(le).unwrap();
        for bound in BOUNDS {
            let value = if exposition::parse_float(bound).unwrap() >= at {
                *count
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{bound}\"}} {value}"
            );
        }
    }
    out
}

fn snapshot(text: &str) -> Snapshot {
    Snapshot::from_samples(exposition::parse(text).unwrap())
}

const RATINGS: &str = "ratings.bookinfo.svc.cluster.local";
const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local";

fn at_green(source_mesh: &'static str, code: &'static str) -> Series {
    Series {
        reporter: "destination",
        source_mesh,
        destination_mesh: "green",
        service: RATINGS,
        code,
    }
}

#[test]
fn parses_labels_with_commas_quotes_and_braces_infinities_timestamps_and_exemplars() {
    let text = "# HELP a_total A \"counter\".\n\
                # TYPE a_total counter\n\
                a_total{flags=\"UH,UF\",path=\"/a?b=c}\",quote=\"say \\\"hi\\\"\\n\\\\\"} 3 1700000000000\n\
                \n\
                b_bucket{ le = \"+Inf\" , } 7\n\
                c NaN\n\
                d:e -Inf\n\
                f_total{x=\"y\"} 1.5e3 # {trace_id=\"abc\"} 1.0 1700000000.0\n\
                # EOF\n";
    let samples = exposition::parse(text).unwrap();
    assert_eq!(samples.len(), 5, "{samples:?}");
    let a = &samples[0];
    assert_eq!(a.name, "a_total");
    assert_eq!(a.value, 3.0);
    assert_eq!(a.labels["flags"], "UH,UF");
    assert_eq!(a.labels["path"], "/a?b=c}");
    assert_eq!(a.labels["quote"], "say \"hi\"\n\\");
    assert_eq!(samples[1].labels["le"], "+Inf");
    assert!(samples[2].value.is_nan());
    assert_eq!(samples[3].name, "d:e");
    assert_eq!(samples[3].value, f64::NEG_INFINITY);
    assert_eq!(samples[4].value, 1500.0);
    assert_eq!(samples[4].labels.len(), 1);
}

#[test]
fn malformed_lines_are_errors_with_their_line() {
    for (text, line, says) in [
        ("ok 1\n{x=\"y\"} 1\n", 2, "no metric name"),
        ("a{x=\"y} 1\n", 1, "unterminated"),
        ("a{x=y} 1\n", 1, "quoted value"),
        ("a{x=\"1\",x=\"2\"} 1\n", 1, "twice"),
        ("a{x=\"1\" y=\"2\"} 1\n", 1, "`,` or `}` expected"),
        ("\n\na{x=\"1\"}\n", 3, "no value"),
        ("a one\n", 1, "bad value"),
    ] {
        let error = exposition::parse(text).unwrap_err();
        assert_eq!(error.line, line, "{text:?}: {error}");
        assert!(error.to_string().contains(says), "{text:?}: {error}");
    }
}

#[test]
fn histogram_quantile_interpolates_as_prometheus() {
    let inf = f64::INFINITY;
    type Case<'a> = (f64, &'a [(f64, f64)], Option<f64>);
    let cases: &[Case<'_>] = &[
        // rank 15 in (1, 5]: 1 + 4 * 5/10.
        (
            0.5,
            &[(1.0, 10.0), (5.0, 20.0), (10.0, 30.0), (inf, 30.0)],
            Some(3.0),
        ),
        // rank 29.7 in (5, 10]: 5 + 5 * 9.7/10.
        (
            0.99,
            &[(1.0, 10.0), (5.0, 20.0), (10.0, 30.0), (inf, 30.0)],
            Some(9.85),
        ),
        // In the first bucket: from 0.
        (0.5, &[(1.0, 10.0), (inf, 10.0)], Some(0.5)),
        // In the +Inf bucket: the highest finite bound.
        (0.5, &[(1.0, 0.0), (5.0, 0.0), (inf, 10.0)], Some(5.0)),
        // Any order; buckets missing between bounds only widen the interpolation.
        (0.5, &[(inf, 4.0), (100.0, 4.0), (10.0, 0.0)], Some(55.0)),
        // Not monotonic (a scrape between two bucket updates): counts raised to the max so far.
        (0.5, &[(1.0, 10.0), (5.0, 8.0), (inf, 10.0)], Some(0.5)),
        // The same bound twice: added up.
        (
            0.5,
            &[(1.0, 2.0), (1.0, 2.0), (2.0, 8.0), (inf, 8.0)],
            Some(1.0),
        ),
        // Where Prometheus answers NaN.
        (0.5, &[(1.0, 10.0), (5.0, 20.0)], None),
        (0.5, &[(inf, 10.0)], None),
        (0.5, &[(1.0, 0.0), (inf, 0.0)], None),
        (0.5, &[], None),
        (f64::NAN, &[(1.0, 1.0), (inf, 1.0)], None),
        // Out of range.
        (-1.0, &[(1.0, 1.0), (inf, 1.0)], Some(f64::NEG_INFINITY)),
        (2.0, &[(1.0, 1.0), (inf, 1.0)], Some(inf)),
    ];
    for (q, buckets, expected) in cases {
        let got = histogram_quantile(*q, buckets);
        match (got, expected) {
            (Some(got), Some(expected)) => assert!(
                (got - expected).abs() < 1e-9 || got == *expected,
                "q={q} {buckets:?}: {got} != {expected}"
            ),
            (None, None) => {}
            _ => panic!("q={q} {buckets:?}: {got:?} != {expected:?}"),
        }
    }
}

#[test]
fn counter_increases_count_resets_and_new_series_from_zero() {
    assert_eq!(increase(Some(10.0), 50.0), 40.0);
    assert_eq!(increase(Some(10.0), 10.0), 0.0);
    // The proxy restarted: 7 since.
    assert_eq!(increase(Some(500.0), 7.0), 7.0);
    // A series born between the scrapes.
    assert_eq!(increase(None, 3.0), 3.0);
}

#[test]
fn bucket_increases_handle_resets_and_buckets_missing_from_the_first_scrape() {
    let inf = f64::INFINITY;
    let before = vec![(1.0, 5.0), (10.0, 8.0), (inf, 9.0)];
    assert_eq!(
        bucket_increase(Some(&before), &vec![(1.0, 6.0), (10.0, 12.0), (inf, 14.0)]),
        vec![(1.0, 1.0), (10.0, 4.0), (inf, 5.0)]
    );
    // Reset: everything now is new.
    let reset = vec![(1.0, 1.0), (10.0, 2.0), (inf, 2.0)];
    assert_eq!(bucket_increase(Some(&before), &reset), reset);
    // A bucket the first scrape lacked has no increase; the others keep theirs.
    let grown = vec![(1.0, 6.0), (5.0, 7.0), (10.0, 12.0), (inf, 14.0)];
    assert_eq!(
        bucket_increase(Some(&before), &grown),
        vec![(1.0, 1.0), (10.0, 4.0), (inf, 5.0)]
    );
    assert_eq!(bucket_increase(None, &grown), grown);
}

/// Green's ratings sidecar, scraped 2 s apart: red's client made 40 requests (2 of them 503,
/// all within 5 ms), green's productpage 10 (within 25 ms); nothing else moved.
fn ratings_window() -> Window {
    let before = snapshot(&exposition(&[
        (at_green("red", "200"), 100.0, "5.0"),
        (at_green("red", "503"), 1.0, "5.0"),
        (at_green("green", "200"), 50.0, "25.0"),
        (at_green("green", "404"), 3.0, "25.0"),
    ]));
    let after = snapshot(&exposition(&[
        (at_green("red", "200"), 138.0, "5.0"),
        (at_green("red", "503"), 3.0, "5.0"),
        (at_green("green", "200"), 60.0, "25.0"),
        (at_green("green", "404"), 3.0, "25.0"),
    ]));
    Window::between("green", &before, &after, 2.0)
}

#[test]
fn services_have_rates_success_and_latency_per_source_mesh() {
    let rows = services(&[ratings_window()]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (row.mesh.as_str(), row.service.as_str()),
        ("green", RATINGS)
    );
    assert!((row.signals.requests_per_second - 25.0).abs() < 1e-9);
    assert!((row.signals.success_rate.unwrap() - 48.0 / 50.0).abs() < 1e-9);
    let sources: Vec<&str> = row
        .by_source_mesh
        .iter()
        .map(|s| s.source_mesh.as_str())
        .collect();
    assert_eq!(sources, ["green", "red"]);
    let red = &row.by_source_mesh[1].signals;
    assert!((red.requests_per_second - 20.0).abs() < 1e-9);
    assert!((red.success_rate.unwrap() - 0.95).abs() < 1e-9);
    // All of red's in (1, 5]: p50 at rank 20 of 40 is 1 + 4 * 20/40.
    assert!((red.p50_ms.unwrap() - 3.0).abs() < 1e-9, "{red:?}");
    assert!((red.p99_ms.unwrap() - (1.0 + 4.0 * 39.6 / 40.0)).abs() < 1e-9);
    let green = &row.by_source_mesh[0].signals;
    assert!((green.requests_per_second - 5.0).abs() < 1e-9);
    assert_eq!(green.success_rate, Some(1.0), "404 is not a failure");
    // Together: 40 in (1, 5], 10 in (10, 25]: the median is in the first group.
    assert!((row.signals.p50_ms.unwrap() - (1.0 + 4.0 * 25.0 / 40.0)).abs() < 1e-9);
    assert!(row.signals.p99_ms.unwrap() > 10.0);
}

#[test]
fn no_traffic_is_zero_rate_and_no_ratio_and_no_time_is_no_rate() {
    let text = exposition(&[(at_green("red", "200"), 100.0, "5.0")]);
    let quiet = Window::between("green", &snapshot(&text), &snapshot(&text), 2.0);
    let rows = services(&[quiet]);
    let signals = rows[0].signals;
    assert_eq!(signals.requests_per_second, 0.0);
    assert_eq!(
        (signals.success_rate, signals.p50_ms, signals.p99_ms),
        (None, None, None)
    );
    let json = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(json["successRate"], serde_json::Value::Null);
    assert_eq!(json["requestsPerSecond"], 0.0);
    let rendered = render(&Report::new(
        None,
        &[Window::between(
            "green",
            &snapshot(&text),
            &snapshot(&text),
            2.0,
        )],
        2.0,
        vec![],
    ));
    assert!(
        rendered.contains("-        0.0rps  -            -"),
        "{rendered}"
    );

    // Two scrapes at the same instant: no rates at all, rather than a division by zero.
    let none = Window::between("green", &Snapshot::default(), &snapshot(&text), 0.0);
    assert!(none.requests.is_empty() && none.durations.is_empty());
    assert!(services(&[none]).is_empty());
    // A sidecar with no Istio metrics at all.
    assert!(
        services(&[Window::between(
            "green",
            &Snapshot::default(),
            &Snapshot::default(),
            2.0
        )])
        .is_empty()
    );
}

#[test]
fn a_restarted_sidecar_counts_from_zero() {
    let before = snapshot(&exposition(&[(at_green("red", "200"), 5000.0, "5.0")]));
    let after = snapshot(&exposition(&[(at_green("red", "200"), 30.0, "1.0")]));
    let rows = services(&[Window::between("green", &before, &after, 2.0)]);
    let red = &rows[0].by_source_mesh[0].signals;
    assert!((red.requests_per_second - 15.0).abs() < 1e-9);
    // The histogram restarted too: only the new observations, all in (0.5, 1].
    assert!(
        red.p99_ms.unwrap() <= 1.0 && red.p50_ms.unwrap() > 0.5,
        "{red:?}"
    );
}

#[test]
fn missing_buckets_still_give_quantiles_and_a_missing_inf_gives_none() {
    let labels = at_green("red", "200").labels();
    let text = |count: f64, with_inf: bool| {
        let mut t = format!(
            "istio_requests_total{{{labels}}} {count}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"10.0\"}} 0\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"100.0\"}} {count}\n"
        );
        if with_inf {
            let _ = writeln!(
                t,
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
        }
        t
    };
    let window = Window::between(
        "green",
        &snapshot(&text(0.0, true)),
        &snapshot(&text(20.0, true)),
        2.0,
    );
    let red = services(&[window])[0].by_source_mesh[0].signals;
    assert!((red.p50_ms.unwrap() - 55.0).abs() < 1e-9, "{red:?}");
    let window = Window::between(
        "green",
        &snapshot(&text(0.0, false)),
        &snapshot(&text(20.0, false)),
        2.0,
    );
    let red = services(&[window])[0].by_source_mesh[0].signals;
    assert_eq!((red.requests_per_second, red.p50_ms), (10.0, None));
}

#[test]
fn peers_are_what_crosses_each_way_and_nothing_in_mesh() {
    let client = |destination_mesh: &'static str, service: &'static str| Series {
        reporter: "source",
        source_mesh: "red",
        destination_mesh,
        service,
        code: "200",
    };
    // Red's client sidecar: 40 to green's imported ratings, 10 to red's own frontend, 4 to
    // somewhere unknown.
    let before = snapshot(&exposition(&[
        (client("green", IMPORTED), 0.0, "5.0"),
        (client("red", "frontend.shop.svc.cluster.local"), 0.0, "1.0"),
        (client("unknown", "unknown"), 0.0, "1.0"),
    ]));
    let after = snapshot(&exposition(&[
        (client("green", IMPORTED), 40.0, "5.0"),
        (
            client("red", "frontend.shop.svc.cluster.local"),
            10.0,
            "1.0",
        ),
        (client("unknown", "unknown"), 4.0, "1.0"),
    ]));
    let red_client = Window::between("red", &before, &after, 2.0);
    let windows = [red_client, ratings_window()];
    let rows = peers(&windows);
    let seen: Vec<(&str, Direction, &str)> = rows
        .iter()
        .map(|r| (r.mesh.as_str(), r.direction, r.peer.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("green", Direction::Inbound, "red"),
            ("red", Direction::Outbound, "green")
        ]
    );
    let inbound = &rows[0];
    assert!((inbound.signals.requests_per_second - 20.0).abs() < 1e-9);
    assert_eq!(inbound.services[0].service, RATINGS);
    let outbound = &rows[1];
    assert!((outbound.signals.requests_per_second - 20.0).abs() < 1e-9);
    assert_eq!(outbound.services.len(), 1);
    assert_eq!(outbound.services[0].service, IMPORTED);
    // The client's own (source) series are no service rows.
    assert_eq!(services(&windows).len(), 1);

    // --mesh red: red's rows only (red serves nothing here).
    let report = Report::new(Some("red"), &windows, 2.0, vec![]);
    assert!(report.services.is_empty());
    assert_eq!(report.peers.len(), 1);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["peers"][0]["direction"], "outbound");
    assert_eq!(json["peers"][0]["services"][0]["service"], IMPORTED);
    assert_eq!(json["mesh"], "red");
}

#[test]
fn the_table_and_the_json_name_the_same_rows() {
    let report = Report::new(
        None,
        &[ratings_window()],
        2.0,
        vec!["sidecar of red/shop/x (admin 127.0.0.1:1): cannot connect".into()],
    );
    let text = render(&report);
    for line in [
        "MESH   SERVICE                             FROM   SUCCESS  RPS      LATENCY_P50  LATENCY_P99",
        "green  ratings.bookinfo.svc.cluster.local  (all)  96.00%   25.0rps  3.50ms       24.2ms",
        "over 2.0 s, 1 sidecar\n",
        "green  ratings.bookinfo.svc.cluster.local  green  100.00%  5.0rps   17.5ms       24.9ms",
        "green  ratings.bookinfo.svc.cluster.local  red    95.00%   20.0rps  3.00ms       4.96ms",
        "MESH   DIRECTION  PEER  SERVICE                             SUCCESS  RPS      LATENCY_P50  LATENCY_P99",
        "green  inbound    red   ratings.bookinfo.svc.cluster.local  95.00%   20.0rps  3.00ms       4.96ms",
        "warning: sidecar of red/shop/x",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let json = serde_json::to_value(&report).unwrap();
    let service = &json["services"][0];
    assert_eq!(service["mesh"], "green");
    assert_eq!(service["bySourceMesh"][1]["sourceMesh"], "red");
    assert_eq!(service["bySourceMesh"][1]["requestsPerSecond"], 20.0);
    assert!(service["p50Ms"].is_f64() && service["p99Ms"].is_f64());
    assert_eq!(json["windowSeconds"], 2.0);
    assert_eq!(json["sidecars"], 1);
}

#[test]
fn intervals_and_latencies_read_and_print() {
    assert_eq!(parse_interval("2").unwrap().as_millis(), 2000);
    assert_eq!(parse_interval("0.5s").unwrap().as_millis(), 500);
    assert!(parse_interval("0").is_err());
    assert!(parse_interval("two").is_err());
    assert_eq!(latency(None), "-");
    assert_eq!(latency(Some(0.123)), "0.12ms");
    assert_eq!(latency(Some(12.34)), "12.3ms");
    assert_eq!(latency(Some(250.0)), "250ms");
    assert_eq!(latency(Some(2500.0)), "2.50s");
}

#[test]
fn the_labels_fixture_is_the_contract() {
    let labels: Labels = exposition::parse(&format!("x{{{}}} 1", at_green("red", "200").labels()))
        .unwrap()
        .remove(0)
        .labels;
    for name in [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_mesh",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_mesh",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(labels.contains_key(name), "{name}");
    }
}

#[test]
fn trust_domains_in_mesh_labels_are_read_as_mesh_names() {
    // A proxy that knows only trust domains: green's productpage calling green's ratings is
    // in-mesh traffic, red.local's client is mesh red.
    let series = |source_mesh| Series {
        reporter: "destination",
        source_mesh,
        destination_mesh: "green.local",
        service: RATINGS,
        code: "200",
    };
    let before = snapshot(&exposition(&[
        (series("green.local"), 0.0, "5.0"),
        (series("red.local"), 0.0, "5.0"),
    ]));
    let after = snapshot(&exposition(&[
        (series("green.local"), 10.0, "5.0"),
        (series("red.local"), 20.0, "5.0"),
    ]));
    let mut window = Window::between("green", &before, &after, 2.0);
    let names = [("green.local", "green"), ("red.local", "red")]
        .map(|(td, name)| (td.to_owned(), name.to_owned()))
        .into();
    window.name_meshes(&names);
    let windows = [window];
    let rows = services(&windows);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].mesh, "green");
    let sources: Vec<&str> = rows[0]
        .by_source_mesh
        .iter()
        .map(|s| s.source_mesh.as_str())
        .collect();
    assert_eq!(sources, ["green", "red"]);
    let peers = peers(&windows);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        (peers[0].peer.as_str(), peers[0].signals.requests_per_second),
        ("red", 10.0)
    );
}
