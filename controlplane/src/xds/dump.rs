//! A readable dump of a proxy's snapshot, for `/debug/config_dump` and `isthmusctl status
//! --dump`: per type its version, per resource its version and the decoded message.

use isthmus_proto::dns::{NAME_TABLE_TYPE, NameTable};
use isthmus_proto::envoy::envoy::config::cluster::v3::Cluster;
use isthmus_proto::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use isthmus_proto::envoy::envoy::config::listener::v3::Listener;
use isthmus_proto::envoy::envoy::config::route::v3::RouteConfiguration;
use isthmus_proto::envoy::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use isthmus_proto::envoy::google::protobuf::Any;
use prost::Message;
use serde_json::{Value, json};

use super::resources::{CLUSTER, ENDPOINT, LISTENER, ProxySnapshot, ROUTE, SECRET};

fn decode<M: Message + Default + std::fmt::Debug>(any: &Any) -> String {
    M::decode(any.value.as_slice())
        .map_or_else(|e| format!("undecodable: {e}"), |m| format!("{m:#?}"))
}

fn describe(type_url: &str, any: &Any) -> String {
    match type_url {
        LISTENER => decode::<Listener>(any),
        ROUTE => decode::<RouteConfiguration>(any),
        CLUSTER => decode::<Cluster>(any),
        ENDPOINT => decode::<ClusterLoadAssignment>(any),
        // Never the private key: only what the certificate is.
        SECRET => match Secret::decode(any.value.as_slice()).map(|s| s.r#type) {
            Ok(Some(secret::Type::TlsCertificate(_))) => {
                "TlsCertificate (chain and key, not shown)".into()
            }
            Ok(other) => format!("{other:#?}"),
            Err(e) => format!("undecodable: {e}"),
        },
        NAME_TABLE_TYPE => decode::<NameTable>(any),
        _ => format!("{} bytes", any.value.len()),
    }
}

pub fn snapshot_json(snapshot: &ProxySnapshot) -> Value {
    let types: serde_json::Map<String, Value> =
        [LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET, NAME_TABLE_TYPE]
            .into_iter()
            .filter_map(|type_url| {
                let resources = snapshot.get(type_url)?;
                let items: serde_json::Map<String, Value> = resources
            .items()
            .map(|r| {
                (
                    r.name.to_string(),
                    json!({"version": r.version_string(), "config": describe(type_url, &r.body())}),
                )
            })
            .collect();
                Some((
                    type_url.to_owned(),
                    json!({"version": resources.version, "resources": items}),
                ))
            })
            .collect();
    Value::Object(types)
}
