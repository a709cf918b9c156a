//! Table tests of the conversions, one file per resource: rows of an Envoy message built in
//! Rust and what it must become, a model (or a property of it) or a rejection at a field path.

// Rows build deprecated-free messages, but the types carry deprecated fields.
#![allow(deprecated)]

mod cluster;
mod endpoint;
mod listener;
mod rbac;
mod route;
mod secret;
mod tls;
mod tracing;

use std::fmt::Debug;

use isthmus_proto::envoy::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, config_source,
};
use isthmus_proto::envoy::google::protobuf::Any;
use prost::{Message, Name};

use super::check::{Checked, Path};

/// What a row expects of its conversion.
pub(super) enum Expect<T> {
    /// Accepted as exactly this model.
    Model(T),
    /// Accepted, and the model has this property.
    Holds(fn(&T) -> bool),
    /// Rejected at this field path.
    Rejected(&'static str),
}

/// A table: why, the input, what is expected.
pub(super) type Table<I, T> = Vec<(&'static str, I, Expect<T>)>;

/// Runs every row of `table` through `convert` (from the resource's root).
pub(super) fn run<I, T: PartialEq + Debug>(
    table: Table<I, T>,
    convert: impl Fn(I, &Path) -> Checked<T>,
) {
    for (why, input, expect) in table {
        let got = convert(input, &Path::root());
        match (expect, got) {
            (Expect::Model(want), Ok(got)) => assert_eq!(got, want, "{why}"),
            (Expect::Holds(property), Ok(got)) => assert!(property(&got), "{why}: {got:#?}"),
            (Expect::Rejected(path), Err(e)) => assert_eq!(e.path.as_str(), path, "{why}: {e}"),
            (Expect::Rejected(path), Ok(got)) => {
                panic!("{why}: accepted, expected a rejection at {path}: {got:#?}")
            }
            (_, Err(e)) => panic!("{why}: rejected: {e}"),
        }
    }
}

/// `m` as a typed extension.
pub(super) fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The ADS config source, the one the profile accepts.
pub(super) fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    })
}

/// A config source that is not ADS (a path on disk).
pub(super) fn not_ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Path(
            "/etc/envoy/eds.yaml".into(),
        )),
        ..ConfigSource::default()
    })
}
