//! Which of the headers telemetry reads or strips a request or response carries, found in one
//! pass over its names. Most messages carry none of them, and a lookup by a name that is absent
//! still hashes that name: a sidecar asked up to a dozen such questions per request (the trace
//! formats in order, the metadata exchange both ways), about as costly as the rest of its
//! telemetry together. The two values read on every request that has them, `traceparent` and
//! `content-type`, are read in a request's pass (`of_request`): looking them up again would
//! hash their names.

use http::HeaderMap;

use super::peer_metadata::{HEADER, ID_HEADER, KEPT_HEADER_NAME};
use super::trace::propagation::{Parent, parse_traceparent};

/// The telemetry headers present in one header map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderScan {
    pub traceparent: Traceparent,
    pub tracestate: bool,
    /// The single `b3` header.
    pub b3: bool,
    /// Any `x-b3-*` header.
    pub x_b3: bool,
    /// `x-envoy-peer-metadata` or `x-envoy-peer-metadata-id`.
    pub peer_metadata: bool,
    /// `x-isthmus-peer-metadata-kept`.
    pub kept: bool,
    pub request_id: bool,
    /// The first `content-type` says gRPC (`application/grpc`, `application/grpc+proto`, ...).
    pub grpc: bool,
}

/// A message's W3C `traceparent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Traceparent {
    #[default]
    Absent,
    /// Exactly one, well formed: the calling span, and whether it was sampled.
    Valid(Parent, bool),
    /// Malformed, or more than one: as if absent, but the other formats are tried.
    Unusable,
}

impl HeaderScan {
    /// The names present; values are not read (`traceparent` and `grpc` stay unset): a
    /// response's scan.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for name in headers.keys() {
            scan.saw(name.as_str());
        }
        scan
    }

    /// [`HeaderScan::of`], with a request's `traceparent` and `content-type` read in the same
    /// pass. Walking the values costs about twice walking the names, which is why a response
    /// is scanned by name only.
    pub fn of_request(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        let mut content_type = false;
        // Each value of a repeated header comes with its name again.
        for (name, value) in headers {
            match name.as_str() {
                "traceparent" => {
                    scan.traceparent = match scan.traceparent {
                        Traceparent::Absent => parse_traceparent(value.as_bytes())
                            .map_or(Traceparent::Unusable, |(parent, sampled)| {
                                Traceparent::Valid(parent, sampled)
                            }),
                        _ => Traceparent::Unusable,
                    }
                }
                "content-type" => {
                    if !content_type {
                        content_type = true;
                        scan.grpc = value.as_bytes().starts_with(b"application/grpc");
                    }
                }
                other => scan.saw(other),
            }
        }
        scan
    }

    fn saw(&mut self, name: &str) {
        match name {
            "tracestate" => self.tracestate = true,
            "b3" => self.b3 = true,
            "x-request-id" => self.request_id = true,
            n if n == HEADER || n == ID_HEADER => self.peer_metadata = true,
            n if n == KEPT_HEADER_NAME.as_str() => self.kept = true,
            n if n.starts_with("x-b3-") => self.x_b3 = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_header_whatever_else_is_there() {
        type Found = fn(&HeaderScan) -> bool;
        let cases: [(&str, Found); 7] = [
            ("tracestate", |s| s.tracestate),
            ("b3", |s| s.b3),
            ("x-b3-sampled", |s| s.x_b3),
            ("x-envoy-peer-metadata", |s| s.peer_metadata),
            ("x-envoy-peer-metadata-id", |s| s.peer_metadata),
            ("x-isthmus-peer-metadata-kept", |s| s.kept),
            ("x-request-id", |s| s.request_id),
        ];
        for (name, found) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", "text/plain".parse().unwrap());
            headers.append(http::HeaderName::from_static(name), "1".parse().unwrap());
            headers.append(http::HeaderName::from_static(name), "2".parse().unwrap());
            headers.insert("x-b3", "not a b3 header".parse().unwrap());
            let scan = HeaderScan::of(&headers);
            assert!(found(&scan), "{name} not found");
            assert_eq!(
                HeaderScan::of_request(&headers),
                scan,
                "{name}: the same by value"
            );
            let mut only = HeaderScan::default();
            let expected = match name {
                "tracestate" => &mut only.tracestate,
                "b3" => &mut only.b3,
                "x-b3-sampled" => &mut only.x_b3,
                "x-isthmus-peer-metadata-kept" => &mut only.kept,
                "x-request-id" => &mut only.request_id,
                _ => &mut only.peer_metadata,
            };
            *expected = true;
            assert_eq!(scan, only, "{name}: nothing else is reported");
        }
        assert_eq!(HeaderScan::of(&HeaderMap::new()), HeaderScan::default());
    }

    #[test]
    fn reads_one_traceparent_and_refuses_two_or_a_bad_one() {
        const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let scan = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            headers.insert("x-b3-sampled", "1".parse().unwrap());
            for v in values {
                headers.append("traceparent", v.parse().unwrap());
            }
            HeaderScan::of_request(&headers).traceparent
        };
        let parent = Parent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
        };
        assert_eq!(scan(&[GOOD]), Traceparent::Valid(parent, true));
        assert_eq!(scan(&[]), Traceparent::Absent);
        assert_eq!(scan(&[GOOD, GOOD]), Traceparent::Unusable, "two");
        assert_eq!(scan(&["00-4bf9-00f0-01"]), Traceparent::Unusable);
        assert_eq!(scan(&["not one", GOOD]), Traceparent::Unusable);
    }

    #[test]
    fn grpc_is_what_the_first_content_type_says() {
        let scan = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("content-type", v.parse().unwrap());
            }
            HeaderScan::of_request(&headers).grpc
        };
        assert!(scan(&["application/grpc"]));
        assert!(scan(&["application/grpc+proto"]));
        assert!(!scan(&["application/json"]));
        assert!(!scan(&[]));
        assert!(
            !scan(&["text/plain", "application/grpc"]),
            "the first one counts"
        );
    }
}
