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

use crate::config::cluster::TlsCredential;

/// The watch's field selector: every `Secret` but service-account tokens.
pub const SECRET_FIELD_SELECTOR: &str = "type!=kubernetes.io/service-account-token";

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
        let credential = TlsCredential {
            certificate_chain: first(&CHAIN_KEYS),
            private_key: first(&KEY_KEYS).map(zeroize::Zeroizing::new),
            roots: first(&ROOT_KEYS),
        };
        if credential != TlsCredential::default() {
            out.insert((namespace.clone(), name.clone()), Arc::new(credential));
        }
    }
    out
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

    #[test]
    fn tls_and_generic_secrets_and_nothing_else() {
        let mut tls = secret(
            "edge",
            &[
                ("tls.crt", "CHAIN"),
                ("tls.key", "KEY"),
                ("password", "hunter2"),
            ],
        );
        trim_secret(&mut tls);
        assert!(!tls.data.as_ref().unwrap().contains_key("password"));
        let generic = secret("edge-cacert", &[("cacert", "ROOTS")]);
        let unrelated = secret("db", &[("password", "hunter2")]);
        let all = credentials([&tls, &generic, &unrelated]);
        assert_eq!(all.len(), 2);
        let edge = &all[&("istio-system".to_owned(), "edge".to_owned())];
        assert_eq!(edge.certificate_chain.as_deref(), Some(&b"CHAIN"[..]));
        assert_eq!(
            edge.private_key.as_deref().map(Vec::as_slice),
            Some(&b"KEY"[..])
        );
        assert!(!format!("{edge:?}").contains("KEY\""), "{edge:?}");
        // The roots of `<name>-cacert` complete a Secret without its own.
        let state = crate::config::cluster::ClusterState {
            credentials: all,
            ..Default::default()
        };
        let resolved = state.credential("istio-system", "edge").unwrap();
        assert_eq!(resolved.roots.as_deref(), Some(&b"ROOTS"[..]));
        assert!(state.credential("default", "edge").is_none());
    }
}
