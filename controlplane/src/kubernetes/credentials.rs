//! `Secret`s as `credentialName` reads them: the reflector keeps only the TLS keys of each
//! `Secret` (`kubernetes.io/tls`'s `tls.crt`, `tls.key`, `ca.crt`, or Istio's generic `cert`,
//! `key`, `cacert`), and a `Secret` with none of them is kept empty. Service-account tokens are
//! never listed (the watch's field selector, as Istio's).
//!
//! Which proxy may use which `Secret` is the model's rule: a `credentialName` is looked up in
//! the namespace of the workload whose proxy presents it, never elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use isthmus_identity::pem::{certs_from_pem, key_from_pem};

use crate::config::cluster::TlsCredential;

/// The watch's field selector: every `Secret` but service-account tokens.
pub const SECRET_FIELD_SELECTOR: &str =
    "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1";

/// (certificate chain, private key, roots) keys, in the order they are looked for.
const CHAIN_KEYS: [&str; 2] = ["tls.crt", "cert"];
const KEY_KEYS: [&str; 2] = ["tls.key", "key"];
const ROOT_KEYS: [&str; 2] = ["ca.crt", "cacert"];

/// Drops everything the mesh never reads before a `Secret` is stored: other keys' values,
/// `stringData` (never returned anyway), bookkeeping.
pub fn trim_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    secret.metadata.annotations = None;
    secret.metadata.owner_references = None;
    secret.string_data = None;
    if let Some(data) = &mut secret.data {
        data.retain(|k, _| {
            CHAIN_KEYS.contains(&k.as_str())
                || KEY_KEYS.contains(&k.as_str())
                || ROOT_KEYS.contains(&k.as_str())
        });
    }
}

/// The TLS material of each `Secret` that has some, by (namespace, name).
pub fn credentials<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
) -> BTreeMap<(String, String), Arc<TlsCredential>> {
    let mut out = BTreeMap::new();
    for secret in secrets {
        let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
        else {
            continue;
        };
        let Some(data) = &secret.data else { continue };
        let first = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| data.get(*k))
                .map(|v| v.0.clone())
                .filter(|v| !v.is_empty())
        };
        let mut credential = TlsCredential {
            certificate_chain: first(&CHAIN_KEYS),
            private_key: first(&KEY_KEYS).map(zeroize::Zeroizing::new),
            roots: first(&ROOT_KEYS),
        };
        // What a proxy would refuse is not sent: one bad `Secret` would otherwise make the
        // proxy refuse the whole SDS update, its own certificate with it.
        if let Err(reason) = check(&mut credential) {
            tracing::warn!(
                namespace,
                name,
                "Secret not usable for credentialName: {reason}"
            );
        }
        if credential != TlsCredential::default() {
            out.insert((namespace.clone(), name.clone()), Arc::new(credential));
        }
    }
    out
}

/// Keeps of `credential` only what parses: the certificate and key when the key is the
/// leaf's, the roots when they hold a certificate; says what was dropped.
fn check(credential: &mut TlsCredential) -> Result<(), String> {
    let mut problems = Vec::new();
    if let (Some(chain), Some(key)) = (&credential.certificate_chain, &credential.private_key) {
        let parsed = certs_from_pem(chain, "tls.crt")
            .map_err(|e| e.to_string())
            .and_then(|chain| {
                let key = key_from_pem(key, "tls.key").map_err(|e| e.to_string())?;
                rustls::sign::CertifiedKey::from_der(chain, key, &isthmus_identity::provider())
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "tls.key is not the key of tls.crt's certificate".to_owned()
                        }
                        other => format!("tls.key: {other}"),
                    })
            });
        if let Err(e) = parsed {
            problems.push(e);
            credential.certificate_chain = None;
            credential.private_key = None;
        }
    } else if credential.certificate_chain.is_some() || credential.private_key.is_some() {
        problems.push("a certificate without its key, or a key without its certificate".into());
        credential.certificate_chain = None;
        credential.private_key = None;
    }
    if let Some(roots) = &credential.roots
        && let Err(e) = certs_from_pem(roots, "ca.crt")
    {
        problems.push(e.to_string());
        credential.roots = None;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("istio-system".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A self-signed certificate and its key, as PEM.
    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn tls_and_generic_secrets_and_nothing_else() {
        let (chain, key) = pem_pair("edge.example.com");
        let (roots, _) = pem_pair("clients-ca");
        let mut tls = secret(
            "edge",
            &[
                ("tls.crt", &chain),
                ("tls.key", &key),
                ("ca.crt", &chain),
                ("password", "hunter2"),
            ],
        );
        trim_secret(&mut tls);
        assert!(!tls.data.as_ref().unwrap().contains_key("password"));
        let generic = secret("edge-cacert", &[("cacert", &roots)]);
        let unrelated = secret("db", &[("password", "hunter2")]);
        let all = credentials([&tls, &generic, &unrelated]);
        assert_eq!(all.len(), 2);
        let edge = &all[&("istio-system".to_owned(), "edge".to_owned())];
        assert_eq!(edge.certificate_chain.as_deref(), Some(chain.as_bytes()));
        let shown = format!("{edge:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        // `<name>-cacert` comes before the Secret's own `ca.crt` (Istio's order).
        let state = crate::config::cluster::ClusterState {
            credentials: all,
            ..Default::default()
        };
        let resolved = state.credential("istio-system", "edge").unwrap();
        assert_eq!(resolved.roots.as_deref(), Some(roots.as_bytes()));
        assert!(state.credential("default", "edge").is_none());
    }

    #[test]
    fn what_a_proxy_would_refuse_is_dropped() {
        let (chain, _) = pem_pair("edge.example.com");
        let (_, other_key) = pem_pair("other.example.com");
        let (roots, _) = pem_pair("clients-ca");
        let mismatched = secret(
            "edge",
            &[
                ("tls.crt", &chain),
                ("tls.key", &other_key),
                ("ca.crt", &roots),
            ],
        );
        let garbage = secret("junk", &[("tls.crt", "not PEM"), ("tls.key", "nope")]);
        let all = credentials([&mismatched, &garbage]);
        let edge = &all[&("istio-system".to_owned(), "edge".to_owned())];
        assert!(edge.certificate_chain.is_none() && edge.private_key.is_none());
        assert_eq!(
            edge.roots.as_deref(),
            Some(roots.as_bytes()),
            "the roots stay"
        );
        assert!(!all.contains_key(&("istio-system".to_owned(), "junk".to_owned())));
    }
}
