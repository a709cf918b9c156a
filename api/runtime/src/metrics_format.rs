//! Metrics exposition with content negotiation, as Prometheus scrapes: OpenMetrics 1.0.0 when
//! the `Accept` header prefers `application/openmetrics-text`, the classic Prometheus text
//! format 0.0.4 otherwise (no header, `text/plain`, `*/*`, anything else).
//!
//! prometheus-client (0.25) only writes OpenMetrics text; [`openmetrics_to_text`] turns that
//! output into the classic format line by line: a counter family is named with the `_total`
//! its samples carry, an info family becomes the gauge `<name>_info`, `unknown` becomes
//! `untyped`; `# UNIT`, `# EOF`, `_created` samples and exemplars are dropped; `HELP` is
//! re-escaped (classic HELP knows only `\\` and `\n`) and sample timestamps become
//! milliseconds. Label values are escaped alike in both formats and pass through unchanged.
//!
//! Both metrics endpoints are [`handler`] (through [`response`] and [`encode`]): the proxies'
//! `/stats/prometheus` and `isthmusd`'s `/metrics`.

use std::fmt::Write as _;
use std::future::{Ready, ready};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use prometheus_client::registry::Registry;

/// The content type of an OpenMetrics response.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of a classic Prometheus text response.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// The registry in the format `accept` (an `Accept` header value, if any) asks for: (content
/// type, body).
pub fn encode(
    accept: Option<&str>,
    registry: &Registry,
) -> Result<(&'static str, String), std::fmt::Error> {
    let format = negotiate(accept);
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, registry)?;
    let body = match format {
        Format::OpenMetrics => openmetrics,
        Format::Text => openmetrics_to_text(&openmetrics),
    };
    Ok((format.content_type(), body))
}

/// A metrics endpoint as a request handler, for any server that hands a handler the request's
/// headers (axum's `get(handler(registry))`): the [`response`] to each request.
pub fn handler(
    registry: Arc<Registry>,
) -> impl Fn(HeaderMap) -> Ready<http::Response<String>> + Clone + Send + Sync + 'static {
    move |headers: HeaderMap| {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        ready(response(accept, &registry))
    }
}

/// The whole answer of a metrics endpoint: 200 with the registry [`encode`]d as `accept` asks,
/// or 500 with the encoding error as plain text.
pub fn response(accept: Option<&str>, registry: &Registry) -> http::Response<String> {
    let (status, content_type, body) = match encode(accept, registry) {
        Ok((content_type, body)) => (StatusCode::OK, content_type, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            e.to_string(),
        ),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The format for an `Accept` header value. Media ranges are taken by quality (`q`, default
/// 1; 0 or unparsable means not acceptable), then by specificity (`text/plain` before
/// `text/*` before `*/*`), then in the header's order; the first one we can serve decides:
/// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) is OpenMetrics; `text/plain`
/// (version 0.0.4 or none), `text/*` and `*/*` are the classic format. Without a header, or
/// with nothing we serve in it, the classic format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut ranges: Vec<MediaRange<'_>> = accept
        .split(',')
        .filter_map(MediaRange::parse)
        .filter(|r| r.q > 0.0)
        .collect();
    // Stable: equal quality and specificity keep the header's order.
    ranges.sort_by(|a, b| {
        b.q.total_cmp(&a.q)
            .then(b.specificity().cmp(&a.specificity()))
    });
    ranges
        .iter()
        .find_map(MediaRange::format)
        .unwrap_or(Format::Text)
}

/// One media range of an `Accept` header.
#[derive(Debug)]
struct MediaRange<'a> {
    /// `type/subtype`, lower case.
    essence: String,
    version: Option<&'a str>,
    q: f64,
}

impl<'a> MediaRange<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        if !essence.contains('/') {
            return None;
        }
        let mut version = None;
        let mut q = 1.0;
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "q" => {
                    q = value
                        .parse::<f64>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
                "version" => version = Some(value),
                _ => {}
            }
        }
        Some(Self {
            essence,
            version,
            q,
        })
    }

    fn specificity(&self) -> u8 {
        match self.essence.as_str() {
            "*/*" => 0,
            e if e.ends_with("/*") => 1,
            _ => 2,
        }
    }

    /// The format this range asks for, if we serve it.
    fn format(&self) -> Option<Format> {
        match (self.essence.as_str(), self.version) {
            ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                Some(Format::OpenMetrics)
            }
            ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Some(Format::Text),
            _ => None,
        }
    }
}

/// prometheus-client's OpenMetrics text as the classic Prometheus text format (see the module
/// documentation for what changes).
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family being written: its OpenMetrics name and type.
    let mut family: Option<(&str, &str)> = None;
    // A HELP waits for its TYPE, which decides the classic name.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            match keyword {
                "HELP" => {
                    flush_help(&mut out, help.take());
                    let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    help = Some((name, text));
                }
                "TYPE" => {
                    let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                    let kind = kind.trim();
                    let (classic_name, classic_kind) = classic_family(name, kind);
                    match help.take() {
                        Some((help_name, text)) if help_name == name => {
                            flush_help(&mut out, Some((&classic_name, text)));
                        }
                        other => flush_help(&mut out, other),
                    }
                    let _ = writeln!(out, "# TYPE {classic_name} {classic_kind}");
                    family = Some((name, kind));
                }
                // UNIT (OpenMetrics only), EOF, and other comments.
                _ => {}
            }
            continue;
        }
        flush_help(&mut out, help.take());
        if line.trim().is_empty() {
            continue;
        }
        if let Some(sample) = classic_sample(line, family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    flush_help(&mut out, help.take());
    out
}

/// The classic family name and type of an OpenMetrics family.
fn classic_family(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" => (format!("{name}_total"), "counter"),
        "info" => (format!("{name}_info"), "gauge"),
        "gauge" => (name.to_owned(), "gauge"),
        // A state set's samples are 0/1 gauges.
        "stateset" => (name.to_owned(), "gauge"),
        "histogram" => (name.to_owned(), "histogram"),
        "summary" => (name.to_owned(), "summary"),
        // `unknown`, `gaugehistogram` (no classic equivalent) and anything else.
        _ => (name.to_owned(), "untyped"),
    }
}

/// Writes a `# HELP` line, its text re-escaped for the classic format.
fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    let Some((name, text)) = help else {
        return;
    };
    let _ = writeln!(out, "# HELP {name} {}", classic_help(text));
}

/// prometheus-client writes help texts as they are, unescaped, in both formats: every
/// backslash is the text's own, and the classic format escapes it (`\\`). (A help text with a
/// newline would break either format; none of ours has one.)
fn classic_help(text: &str) -> String {
    text.replace('\\', "\\\\")
}

/// One sample line in the classic format, or `None` for a sample the classic format does not
/// have (`_created`).
fn classic_sample(line: &str, family: Option<(&str, &str)>) -> Option<String> {
    let (series, rest) = split_series(line);
    let name = series.split('{').next().unwrap_or(series);
    if let Some((family_name, kind)) = family
        && matches!(kind, "counter" | "histogram" | "summary" | "gaugehistogram")
        && name.strip_prefix(family_name) == Some("_created")
    {
        return None;
    }
    // value [timestamp] [# exemplar]
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let mut sample = format!("{series} {}", classic_value(value));
    if let Some(timestamp) = fields.next().filter(|t| !t.starts_with('#')) {
        let _ = write!(sample, " {}", classic_timestamp(timestamp));
    }
    Some(sample)
}

/// Splits a sample line after its name and labels: the label values may hold spaces, braces
/// and escaped quotes.
fn split_series(line: &str) -> (&str, &str) {
    let mut in_labels = false;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if in_quotes {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '{' if !in_labels => in_labels = true,
            '}' if in_labels => return (&line[..=i], &line[i + 1..]),
            '"' if in_labels => in_quotes = true,
            ' ' | '\t' if !in_labels => return (&line[..i], &line[i..]),
            _ => {}
        }
    }
    (line, "")
}

/// Go's parser takes `inf`, but the classic format spells infinities `+Inf` and `-Inf`.
fn classic_value(value: &str) -> &str {
    match value.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => "+Inf",
        "-inf" => "-Inf",
        "nan" => "NaN",
        _ => value,
    }
}

/// OpenMetrics timestamps are seconds (with a fraction), classic ones milliseconds.
fn classic_timestamp(seconds: &str) -> String {
    match seconds.parse::<f64>() {
        #[allow(clippy::cast_possible_truncation)]
        Ok(s) if s.is_finite() => format!("{}", (s * 1000.0).round() as i64),
        _ => seconds.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::Unit;

    /// Prometheus's own scrape header (2.x, and 3.x without UTF-8 names).
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        listener: String,
    }

    #[test]
    fn negotiation_follows_accept_and_quality() {
        use Format::{OpenMetrics, Text};
        for (accept, want) in [
            (None, Text),
            (Some(""), Text),
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            // Prometheus 3 adds an escaping parameter.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Prometheus configured for the classic format first.
            (
                Some(
                    "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
                ),
                Text,
            ),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=\"1.0.0\""),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text; version=0.0.1"),
                OpenMetrics,
            ),
            // A version we do not write.
            (Some("application/openmetrics-text; version=2.0.0"), Text),
            (Some("text/plain"), Text),
            (Some("text/plain; version=0.0.4"), Text),
            (Some("*/*"), Text),
            (Some("application/json"), Text),
            (
                Some(
                    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
                ),
                Text,
            ),
            // q=0: not acceptable.
            (Some("application/openmetrics-text;q=0"), Text),
            (Some("application/openmetrics-text;q=0, text/plain"), Text),
            (
                Some("text/plain;q=0, application/openmetrics-text"),
                OpenMetrics,
            ),
            // Quality beats order; an unparsable or out-of-range q is not acceptable.
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.8"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0.3, */*;q=0.5"), Text),
            (
                Some("application/openmetrics-text;q=abc, text/plain;q=0.1"),
                Text,
            ),
            (Some("application/openmetrics-text;q=2"), Text),
            // Equal quality: the specific range before the wildcard, else the header's order.
            (Some("*/*, application/openmetrics-text"), OpenMetrics),
            (Some("text/plain, application/openmetrics-text"), Text),
            (
                Some("application/openmetrics-text, text/plain"),
                OpenMetrics,
            ),
            // Garbage around good ranges.
            (
                Some(",, nonsense ; ;, application/openmetrics-text ;q=1"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn encode_returns_content_type_and_body_for_the_format() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("isthmus_x", "Things", counter.clone());
        counter.inc();

        let (content_type, body) = encode(None, &registry).unwrap();
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(
            body,
            "# HELP isthmus_x_total Things.\n# TYPE isthmus_x_total counter\nisthmus_x_total 1\n"
        );

        let (content_type, body) = encode(Some(PROMETHEUS_ACCEPT), &registry).unwrap();
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            body,
            "# HELP isthmus_x Things.\n# TYPE isthmus_x counter\nisthmus_x_total 1\n# EOF\n"
        );
    }

    #[test]
    fn the_handler_answers_by_the_request_accept_header() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("isthmus_x", "Things", counter.clone());
        let handler = handler(Arc::new(registry));
        let answer = |accept: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(a) = accept {
                headers.insert(header::ACCEPT, HeaderValue::from_str(a).unwrap());
            }
            handler(headers).into_inner()
        };

        let plain = answer(None);
        assert_eq!(plain.status(), StatusCode::OK);
        assert_eq!(plain.headers()[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        assert!(plain.body().contains("isthmus_x_total 0\n"));

        let open = answer(Some(PROMETHEUS_ACCEPT));
        assert_eq!(open.status(), StatusCode::OK);
        assert_eq!(
            open.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        assert!(open.body().ends_with("# EOF\n"));
    }
    #[test]
    fn counters_and_gauges_in_the_classic_format() {
        let mut registry = Registry::default();
        let sub = registry.sub_registry_with_prefix("isthmus_proxy");
        let connections = Family::<Labels, Counter>::default();
        let active = Family::<Labels, Gauge>::default();
        let empty = Family::<Labels, Counter>::default();
        let ratio: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        sub.register(
            "downstream_connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        sub.register(
            "downstream_connections_active",
            "Downstream connections open",
            active.clone(),
        );
        // prometheus-client leaves out a family without members (in both formats).
        sub.register("unused", "Never counted", empty);
        sub.register("ratio", "A ratio", ratio.clone());
        connections
            .get_or_create(&Labels {
                listener: "inbound_127.0.0.1_80".into(),
            })
            .inc_by(3);
        active
            .get_or_create(&Labels {
                listener: "inbound_127.0.0.1_80".into(),
            })
            .set(-2);
        ratio.set(0.25);
        assert_eq!(
            encode(None, &registry).unwrap().1,
            "# HELP isthmus_proxy_downstream_connections_total Downstream connections accepted.\n\
             # TYPE isthmus_proxy_downstream_connections_total counter\n\
             isthmus_proxy_downstream_connections_total{listener=\"inbound_127.0.0.1_80\"} 3\n\
             # HELP isthmus_proxy_downstream_connections_active Downstream connections open.\n\
             # TYPE isthmus_proxy_downstream_connections_active gauge\n\
             isthmus_proxy_downstream_connections_active{listener=\"inbound_127.0.0.1_80\"} -2\n\
             # HELP isthmus_proxy_ratio A ratio.\n\
             # TYPE isthmus_proxy_ratio gauge\n\
             isthmus_proxy_ratio 0.25\n"
        );
    }

    #[test]
    fn histograms_in_the_classic_format_without_exemplars() {
        let mut registry = Registry::default();
        let latency = Histogram::new([0.1, 1.0]);
        registry.register_with_unit(
            "isthmus_latency",
            "Request latency",
            Unit::Seconds,
            latency.clone(),
        );
        latency.observe(0.05);
        latency.observe(0.5);
        latency.observe(7.0);
        let with_exemplars = HistogramWithExemplars::new([1.0].into_iter());
        registry.register("isthmus_sizes", "Sizes", with_exemplars.clone());
        with_exemplars.observe(
            0.5,
            Some(Labels {
                listener: "trace \"1\"".into(),
            }),
            None,
        );
        let counted = CounterWithExemplar::<Labels>::default();
        registry.register("isthmus_traced", "Traced", counted.clone());
        counted.inc_by(
            2,
            Some(Labels {
                listener: "t # {x} 1".into(),
            }),
            None,
        );

        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry).unwrap();
        assert!(openmetrics.contains("# UNIT isthmus_latency_seconds seconds\n"));
        assert!(openmetrics.contains(" # {listener="), "{openmetrics}");

        assert_eq!(
            openmetrics_to_text(&openmetrics),
            "# HELP isthmus_latency_seconds Request latency.\n\
             # TYPE isthmus_latency_seconds histogram\n\
             isthmus_latency_seconds_sum 7.55\n\
             isthmus_latency_seconds_count 3\n\
             isthmus_latency_seconds_bucket{le=\"0.1\"} 1\n\
             isthmus_latency_seconds_bucket{le=\"1.0\"} 2\n\
             isthmus_latency_seconds_bucket{le=\"+Inf\"} 3\n\
             # HELP isthmus_sizes Sizes.\n\
             # TYPE isthmus_sizes histogram\n\
             isthmus_sizes_sum 0.5\n\
             isthmus_sizes_count 1\n\
             isthmus_sizes_bucket{le=\"1.0\"} 1\n\
             isthmus_sizes_bucket{le=\"+Inf\"} 1\n\
             # HELP isthmus_traced_total Traced.\n\
             # TYPE isthmus_traced_total counter\n\
             isthmus_traced_total 2\n"
        );
    }

    #[test]
    fn info_and_escaped_label_values() {
        let mut registry = Registry::default();
        registry.register(
            "isthmus_build",
            "Build of \"isthmus\" in C:\\bin",
            Info::new(vec![
                ("version", "1.0 \"beta\"".to_owned()),
                ("path", "C:\\isthmus\nnext} {x=\"1\"} 2".to_owned()),
            ]),
        );
        let refused = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("isthmus_refused", "Refused", refused.clone());
        refused
            .get_or_create(&vec![(
                "reason".to_owned(),
                "a\"} evil{x=\"1\\line\nnext".to_owned(),
            )])
            .inc();

        let text = encode(None, &registry).unwrap().1;
        assert_eq!(
            text,
            concat!(
                "# HELP isthmus_build_info Build of \"isthmus\" in C:\\\\bin.\n",
                "# TYPE isthmus_build_info gauge\n",
                r#"isthmus_build_info{version="1.0 \"beta\"",path="C:\\isthmus\nnext} {x=\"1\"} 2"} 1"#,
                "\n",
                "# HELP isthmus_refused_total Refused.\n",
                "# TYPE isthmus_refused_total counter\n",
                r#"isthmus_refused_total{reason="a\"} evil{x=\"1\\line\nnext"} 1"#,
                "\n",
            )
        );
    }

    #[test]
    fn conversion_of_openmetrics_the_encoder_does_not_write_today() {
        // `_created`, sample timestamps in seconds, exemplars with timestamps, help with a
        // quote and a backslash (as prometheus-client writes it: raw), infinities, unknown and
        // state-set families.
        let openmetrics = concat!(
            "# HELP a_seconds Time \"spent\" in \\ a.\n",
            "# TYPE a_seconds counter\n",
            "# UNIT a_seconds seconds\n",
            "a_seconds_total{x=\"1\"} 1.5 1700000000.25 # {trace_id=\"k\"} 1.0 1700000000.0\n",
            "a_seconds_created{x=\"1\"} 1699999999.0\n",
            "# HELP g Gauge.\n",
            "# TYPE g gauge\n",
            "g inf\n",
            "g{s=\"-\"} -inf\n",
            "# TYPE u unknown\n",
            "u 1\n",
            "# TYPE s stateset\n",
            "s{s=\"on\"} 1\n",
            "# EOF\n",
        );
        assert_eq!(
            openmetrics_to_text(openmetrics),
            concat!(
                "# HELP a_seconds_total Time \"spent\" in \\\\ a.\n",
                "# TYPE a_seconds_total counter\n",
                "a_seconds_total{x=\"1\"} 1.5 1700000000250\n",
                "# HELP g Gauge.\n",
                "# TYPE g gauge\n",
                "g +Inf\n",
                "g{s=\"-\"} -Inf\n",
                "# TYPE u untyped\n",
                "u 1\n",
                "# TYPE s gauge\n",
                "s{s=\"on\"} 1\n",
            )
        );
    }
}
