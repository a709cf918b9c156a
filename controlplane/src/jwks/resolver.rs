//! The task that keeps [`JwksCache`] current: each `jwksUri` of the configuration (a rule
//! without inline `jwks`) is fetched when it first appears and every [`REFRESH`] after; a
//! failed fetch keeps the last good keys and is retried sooner. URIs the configuration no
//! longer names are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::security::RequestAuthentication;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{JwksCache, JwksEntry, fetch};
use crate::config::ConfigSnapshot;

/// How often keys are fetched again (Istio's default refresh interval).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(30);

/// The `jwksUri`s of `snapshot` that have no inline keys beside them.
pub fn wanted(snapshot: &ConfigSnapshot) -> BTreeSet<String> {
    snapshot
        .of_type::<RequestAuthentication>()
        .flat_map(|(_, r)| &r.spec.jwt_rules)
        .filter(|rule| rule.jwks.is_none())
        .filter_map(|rule| rule.jwks_uri.clone())
        .collect()
}

/// Publishes the cache on the returned channel; the task ends when the configuration is no
/// longer published.
pub fn start(
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
) -> (
    watch::Receiver<Arc<JwksCache>>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(Arc::new(JwksCache::default()));
    let task = async move {
        // When each URI is due.
        let mut due: BTreeMap<String, Instant> = BTreeMap::new();
        let mut cache = JwksCache::default();
        loop {
            let uris = wanted(&config.borrow_and_update());
            due.retain(|uri, _| uris.contains(uri));
            cache.entries.retain(|uri, _| uris.contains(uri));
            for uri in &uris {
                due.entry(uri.clone()).or_insert_with(Instant::now);
            }
            let now = Instant::now();
            let ready: Vec<String> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(uri, _)| uri.clone())
                .collect();
            for uri in ready {
                let entry = cache.entries.entry(uri.clone()).or_default();
                let next = match fetch::fetch(&uri).await {
                    Ok(keys) => {
                        *entry = JwksEntry {
                            keys: Some(keys),
                            error: None,
                        };
                        REFRESH
                    }
                    Err(error) => {
                        tracing::warn!(uri, error, "JWKS fetch failed; the last good keys stay");
                        entry.error = Some(error);
                        RETRY
                    }
                };
                due.insert(uri, Instant::now() + next);
            }
            cache.settled = true;
            tx.send_if_modified(|current| {
                let changed = **current != cache;
                if changed {
                    *current = Arc::new(cache.clone());
                }
                changed
            });
            let next = due.values().min().copied();
            tokio::select! {
                changed = config.changed() => if changed.is_err() { return },
                () = sleep_until(next) => {}
            }
        }
    };
    (rx, task)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_text;

    #[test]
    fn only_uris_without_inline_keys_are_fetched() {
        let yaml = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: a, namespace: shop}
spec:
  jwtRules:
  - {issuer: "https://a.example", jwksUri: "https://a.example/jwks"}
  - {issuer: "https://b.example", jwksUri: "https://b.example/jwks", jwks: '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}
"#;
        let snapshot = load_text(yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            wanted(&snapshot).into_iter().collect::<Vec<_>>(),
            ["https://a.example/jwks"]
        );
    }

    /// A JWKS endpoint on loopback, then one that answers nothing: the keys arrive, and the
    /// last good ones stay after a failed refresh of another URI.
    #[tokio::test]
    async fn fetched_keys_are_published_and_a_failure_keeps_nothing_it_did_not_have() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map_or(0, |a| a.port());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().map_or(0, |a| a.port())
        };
        let yaml = format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: a, namespace: shop}}
spec:
  jwtRules:
  - {{issuer: "https://a.example", jwksUri: "http://127.0.0.1:{port}/jwks"}}
  - {{issuer: "https://b.example", jwksUri: "http://127.0.0.1:{dead}/jwks"}}
"#
        );
        let snapshot = load_text(&yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e:?}"));
        let (_config_tx, config_rx) = watch::channel(Arc::new(snapshot));
        let (mut cache, task) = start(config_rx);
        tokio::spawn(task);
        let published = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if cache.changed().await.is_err() {
                    return None;
                }
                let c = cache.borrow_and_update().clone();
                if c.entries.len() == 2 {
                    return Some(c);
                }
            }
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no cache published"));
        let good = &published.entries[&format!("http://127.0.0.1:{port}/jwks")];
        assert!(
            good.keys.as_deref().is_some_and(|k| k.contains("c2VjcmV0")),
            "{good:?}"
        );
        let bad = &published.entries[&format!("http://127.0.0.1:{dead}/jwks")];
        assert!(bad.keys.is_none() && bad.error.is_some(), "{bad:?}");
        assert_eq!(published.resolved().len(), 1);
    }
}
