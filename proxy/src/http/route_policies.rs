//! What a route's CORS policy and fault injection do to a request, in Istio's filter order:
//! CORS first (a preflight is answered here), then the fault (a delay, then an abort).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{Body, local_reply};
use crate::config::route_policies::{Abort, Cors, Fault, PerMillion};

/// Whether this request falls in a share of `per_million`.
pub fn sampled(per_million: PerMillion) -> bool {
    per_million >= 1_000_000 || rand::random_range(0..1_000_000) < per_million
}

/// What CORS makes of a request.
#[derive(Debug)]
pub enum CorsVerdict {
    /// A preflight answered here.
    Answer(Response<Body>),
    /// On to the route, with these headers for its response.
    Pass(HeaderMap),
}

const REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
const ALLOW_CREDENTIALS: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");
const MAX_AGE: HeaderName = HeaderName::from_static("access-control-max-age");

/// Envoy's CORS filter: a request with an `Origin` the policy allows gets the CORS headers; a
/// preflight (`OPTIONS` with `Access-Control-Request-Method`) from such an origin is answered
/// here; one from another origin goes on, or is answered without CORS headers.
pub fn cors<B>(request: &Request<B>, cors: &Cors) -> CorsVerdict {
    let mut headers = HeaderMap::new();
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return CorsVerdict::Pass(headers);
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(REQUEST_METHOD);
    let allowed = origin
        .to_str()
        .is_ok_and(|o| cors.origins.iter().any(|m| m.matches(o)));
    if !allowed {
        if preflight && !cors.forward_not_matching_preflights {
            return CorsVerdict::Answer(local_reply(StatusCode::OK, ""));
        }
        return CorsVerdict::Pass(headers);
    }
    headers.insert(ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        headers.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if preflight {
        let fields = [
            (ALLOW_METHODS, &cors.allow_methods),
            (ALLOW_HEADERS, &cors.allow_headers),
            (MAX_AGE, &cors.max_age),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
        let mut answer = local_reply(StatusCode::OK, "");
        answer.headers_mut().extend(headers);
        return CorsVerdict::Answer(answer);
    }
    if let Some(expose) = &cors.expose_headers {
        headers.insert(EXPOSE_HEADERS, expose.clone());
    }
    CorsVerdict::Pass(headers)
}

/// What the fault did: delayed the request, and the answer when it aborts it.
#[derive(Debug)]
pub struct FaultOutcome {
    pub delayed: bool,
    pub abort: Option<Response<Body>>,
}

/// Envoy's fault filter on one request: the delay (when sampled), then the abort (when
/// sampled), answered as gRPC to a gRPC request.
pub async fn fault<B>(request: &Request<B>, fault: &Fault) -> FaultOutcome {
    let mut delayed = false;
    if let Some((delay, share)) = fault.delay
        && sampled(share)
    {
        tokio::time::sleep(delay).await;
        delayed = true;
    }
    let abort = fault
        .abort
        .filter(|(_, share)| sampled(*share))
        .map(|(abort, _)| abort_reply(request, abort));
    FaultOutcome { delayed, abort }
}

fn abort_reply<B>(request: &Request<B>, abort: Abort) -> Response<Body> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    match abort {
        Abort::Http(status) if !grpc => local_reply(status, "fault filter abort"),
        // A gRPC caller reads the status from `grpc-status` (trailers-only): an HTTP status
        // becomes gRPC's, as Envoy maps it.
        Abort::Http(status) => grpc_reply(http_to_grpc(status)),
        Abort::Grpc(code) => grpc_reply(code),
    }
}

fn grpc_reply(code: u32) -> Response<Body> {
    let mut response = local_reply(StatusCode::OK, "");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("fault filter abort"),
    );
    response
}

/// gRPC's mapping of HTTP statuses (its HTTP-to-gRPC status code document).
fn http_to_grpc(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::matcher::{Matcher, StringMatch};

    fn policy() -> Cors {
        Cors {
            origins: vec![Matcher {
                pattern: StringMatch::Exact("https://app.example.com".into()),
                ignore_case: false,
            }],
            allow_methods: Some(HeaderValue::from_static("GET,POST")),
            allow_headers: Some(HeaderValue::from_static("x-user")),
            expose_headers: Some(HeaderValue::from_static("x-trace")),
            max_age: Some(HeaderValue::from_static("86400")),
            allow_credentials: true,
            forward_not_matching_preflights: true,
        }
    }

    fn request(method: Method, origin: &str, preflight: bool) -> Request<()> {
        let mut r = Request::builder().method(method).uri("/");
        if !origin.is_empty() {
            r = r.header("origin", origin);
        }
        if preflight {
            r = r.header("access-control-request-method", "POST");
        }
        r.body(()).unwrap_or_default()
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_policy() {
        let CorsVerdict::Answer(answer) = cors(
            &request(Method::OPTIONS, "https://app.example.com", true),
            &policy(),
        ) else {
            panic!("a preflight from an allowed origin is answered here");
        };
        let h = answer.headers();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(h[ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ALLOW_METHODS], "GET,POST");
        assert_eq!(h[ALLOW_HEADERS], "x-user");
        assert_eq!(h[MAX_AGE], "86400");
        assert_eq!(h[ALLOW_CREDENTIALS], "true");
        assert!(!h.contains_key(EXPOSE_HEADERS));
    }

    #[test]
    fn other_origins_and_plain_requests_pass_without_cors_headers() {
        for r in [
            request(Method::OPTIONS, "https://evil.example.com", true),
            request(Method::GET, "https://evil.example.com", false),
            request(Method::GET, "", false),
        ] {
            let CorsVerdict::Pass(headers) = cors(&r, &policy()) else {
                panic!("passed on: {r:?}");
            };
            assert!(headers.is_empty(), "{r:?}: {headers:?}");
        }
        let ignore = Cors {
            forward_not_matching_preflights: false,
            ..policy()
        };
        let r = request(Method::OPTIONS, "https://evil.example.com", true);
        let CorsVerdict::Answer(answer) = cors(&r, &ignore) else {
            panic!("IGNORE answers an unmatched preflight here");
        };
        assert!(!answer.headers().contains_key(ALLOW_ORIGIN));
    }

    #[test]
    fn an_allowed_request_gets_the_origin_and_exposed_headers() {
        let r = request(Method::GET, "https://app.example.com", false);
        let CorsVerdict::Pass(headers) = cors(&r, &policy()) else {
            panic!("a plain request goes on");
        };
        assert_eq!(headers[ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(headers[EXPOSE_HEADERS], "x-trace");
        assert!(!headers.contains_key(ALLOW_METHODS));
    }

    #[test]
    fn shares_are_parts_per_million() {
        assert!(sampled(1_000_000));
        assert!(!sampled(0));
        let hits = (0..100_000).filter(|_| sampled(250_000)).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
    }
}
