//! Which of the headers telemetry reads or strips a request or response carries, found in one
//! pass over its names. Most messages carry none of them, and a lookup by a name that is absent
//! still hashes that name: a sidecar asked up to a dozen such questions per request (the trace
//! formats in order, the metadata exchange both ways), about as costly as the rest of its
//! telemetry together.

use http::HeaderMap;

use super::peer_metadata::{HEADER, ID_HEADER, KEPT_HEADER_NAME};

/// The telemetry headers present in one header map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderScan {
    pub traceparent: bool,
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
}

impl HeaderScan {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for name in headers.keys() {
            match name.as_str() {
                "traceparent" => scan.traceparent = true,
                "tracestate" => scan.tracestate = true,
                "b3" => scan.b3 = true,
                "x-request-id" => scan.request_id = true,
                n if n == HEADER || n == ID_HEADER => scan.peer_metadata = true,
                n if n == KEPT_HEADER_NAME.as_str() => scan.kept = true,
                n if n.starts_with("x-b3-") => scan.x_b3 = true,
                _ => {}
            }
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_header_whatever_else_is_there() {
        type Found = fn(&HeaderScan) -> bool;
        let cases: [(&str, Found); 8] = [
            ("traceparent", |s| s.traceparent),
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
            let mut only = HeaderScan::default();
            let expected = match name {
                "traceparent" => &mut only.traceparent,
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
}
