//! A request's hash for a consistent-hash cluster (Envoy's route `hash_policy`): the values of
//! the keys the route names, in order; a cookie with a TTL that the request lacks is made up
//! here and set on the response, so the client's next requests keep their host.

use std::net::IpAddr;

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap};

use crate::config::route::HashKey;
use crate::hashing::combine;

/// The hash of the request, or `None` when it has none of the keys; and a `Set-Cookie` for
/// the response when a cookie was made up.
pub fn request_hash(
    keys: &[HashKey],
    headers: &HeaderMap,
    query: Option<&str>,
    source: IpAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    let mut add = |value: &[u8]| hash = Some(combine(hash.unwrap_or(0), value));
    for key in keys {
        match key {
            HashKey::Header(name) => {
                if let Some(v) = headers.get(name) {
                    add(v.as_bytes());
                }
            }
            HashKey::Cookie { name, ttl, path } => match cookie(headers, name) {
                Some(value) => add(value.as_bytes()),
                None => {
                    if let Some(ttl) = ttl {
                        let value = format!("{:016x}", rand::random::<u64>());
                        add(value.as_bytes());
                        let path = if path.is_empty() {
                            String::new()
                        } else {
                            format!("; Path={path}")
                        };
                        // A zero TTL is a session cookie (no Max-Age, which would delete it);
                        // a part of a second counts as one.
                        let max_age = match ttl.as_millis() {
                            0 => String::new(),
                            ms => format!("; Max-Age={}", ms.div_ceil(1000)),
                        };
                        set_cookie = HeaderValue::from_str(&format!(
                            "{name}=\"{value}\"{max_age}{path}; HttpOnly"
                        ))
                        .ok();
                    }
                }
            },
            HashKey::SourceIp => add(source.to_string().as_bytes()),
            HashKey::QueryParameter(name) => {
                let value = query.unwrap_or_default().split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                });
                if let Some(v) = value {
                    add(v.as_bytes());
                }
            }
        }
    }
    (hash, set_cookie)
}

/// The value of cookie `name` in the request's `Cookie` headers (quotes removed).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"').to_owned())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_key_gives_the_same_hash_and_a_missing_key_none() {
        let keys = [HashKey::Header(http::HeaderName::from_static("x-user"))];
        let ip: IpAddr = [10, 0, 0, 1].into();
        let alice = request_hash(&keys, &headers(&[("x-user", "alice")]), None, ip).0;
        assert!(alice.is_some());
        assert_eq!(
            alice,
            request_hash(&keys, &headers(&[("x-user", "alice")]), None, ip).0
        );
        assert_ne!(
            alice,
            request_hash(&keys, &headers(&[("x-user", "bob")]), None, ip).0
        );
        assert_eq!(request_hash(&keys, &HeaderMap::new(), None, ip).0, None);
        let by_query = [HashKey::QueryParameter("u".into())];
        assert!(
            request_hash(&by_query, &HeaderMap::new(), Some("a=1&u=7"), ip)
                .0
                .is_some()
        );
        let by_ip = [HashKey::SourceIp];
        assert_ne!(
            request_hash(&by_ip, &HeaderMap::new(), None, ip).0,
            request_hash(&by_ip, &HeaderMap::new(), None, [10, 0, 0, 2].into()).0
        );
    }

    #[test]
    fn a_missing_cookie_with_a_ttl_is_made_up_and_set() {
        let keys = [HashKey::Cookie {
            name: "session".into(),
            ttl: Some(Duration::from_secs(60)),
            path: "/".into(),
        }];
        let ip: IpAddr = [10, 0, 0, 1].into();
        let (hash, set) = request_hash(&keys, &HeaderMap::new(), None, ip);
        let set = set.unwrap_or(HeaderValue::from_static(""));
        let text = set.to_str().unwrap_or_default();
        assert!(
            hash.is_some() && text.starts_with("session=\"") && text.contains("Max-Age=60; Path=/"),
            "{text}"
        );
        // The cookie sent back gives the same hash.
        let value = text.split('"').nth(1).unwrap_or_default().to_owned();
        let cookie = HeaderValue::from_str(&format!("other=1; session=\"{value}\""))
            .unwrap_or(HeaderValue::from_static(""));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, cookie);
        let (again, none) = request_hash(&keys, &h, None, ip);
        assert_eq!((again, none), (hash, None));
    }
}
