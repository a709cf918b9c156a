//! A delta xDS response as this server sends it: the wire format of Envoy's
//! `DeltaDiscoveryResponse`, written from the snapshot's shared resources.
//!
//! Building the generated `DeltaDiscoveryResponse` would copy every resource's body (and its
//! name and version as new strings) into the response, which then waits in the stream's queue
//! until gRPC frames it: during an initial sync of a thousand proxies, most of `isthmusd`'s
//! memory and a third of its time. Here a response holds references to the shared resources:
//! small bodies are copied once, into the frame, and large ones not at all
//! ([`DeltaResponse::encode_chunks`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::resources::NamedResource;

// Field numbers of `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;
// ... and of `envoy.service.discovery.v3.Resource`.
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_BODY: u32 = 2;
const RESOURCE_NAME: u32 = 3;

/// Resource versions are 16 hex digits on the wire.
const VERSION_LEN: usize = 16;

/// Bodies this long or longer go to HTTP/2 as chunks of their own, the snapshot's buffers
/// themselves; shorter ones are copied into the frame (each chunk becomes a DATA frame of its
/// own, too many for a response of small endpoints).
pub const SHARED_BODY_MIN: usize = 8 * 1024;

/// A `DeltaDiscoveryResponse` to encode. Encoding only: decoding one skips every field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<NamedResource>,
    pub type_url: String,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

impl DeltaResponse {
    /// `prefix` (gRPC's message header) and the encoding, in chunks that concatenate to them:
    /// each body of [`SHARED_BODY_MIN`] bytes or more is the snapshot's own buffer, so a
    /// route table pushed to a thousand proxies is not copied a thousand times; the rest is
    /// written into one buffer.
    pub fn encode_chunks(&self, prefix: &[u8]) -> Vec<Bytes> {
        let shared: usize = self
            .resources
            .iter()
            .map(|r| r.encoded_body().len())
            .filter(|len| *len >= SHARED_BODY_MIN)
            .sum();
        let mut buf = BytesMut::with_capacity(prefix.len() + self.encoded_len() - shared);
        let mut chunks = Vec::new();
        buf.put_slice(prefix);
        self.put_head(&mut buf);
        for resource in &self.resources {
            put_resource_head(resource, &mut buf);
            let body = resource.encoded_body();
            if body.len() >= SHARED_BODY_MIN {
                chunks.push(buf.split().freeze());
                chunks.push(body.clone());
            } else {
                buf.put_slice(body);
            }
            put_string(RESOURCE_NAME, &resource.name, &mut buf);
        }
        self.put_tail(&mut buf);
        if !buf.is_empty() {
            chunks.push(buf.freeze());
        }
        chunks
    }

    fn put_head(&self, buf: &mut impl BufMut) {
        put_string(SYSTEM_VERSION_INFO, &self.system_version_info, buf);
    }

    fn put_tail(&self, buf: &mut impl BufMut) {
        put_string(TYPE_URL, &self.type_url, buf);
        put_string(NONCE, &self.nonce, buf);
        for name in &self.removed_resources {
            put_bytes(REMOVED_RESOURCES, name.as_bytes(), buf);
        }
    }

    /// The response as the generated type (decoded from this encoding): what a proxy reads.
    #[cfg(test)]
    pub fn to_envoy(
        &self,
    ) -> isthmus_proto::envoy::envoy::service::discovery::v3::DeltaDiscoveryResponse {
        Message::decode(self.encode_to_vec().as_slice()).expect("a DeltaDiscoveryResponse")
    }
}

/// The length of one `Resource` message: its name, version and body.
fn resource_len(resource: &NamedResource) -> usize {
    let body = resource.encoded_body().len();
    string_len(RESOURCE_NAME, &resource.name)
        + delimited_len(RESOURCE_VERSION, VERSION_LEN)
        + delimited_len(RESOURCE_BODY, body)
}

/// A resource up to its body: the field's key and length, the version, the body's key and
/// length. Then come the body and the name.
fn put_resource_head(resource: &NamedResource, buf: &mut impl BufMut) {
    encoding::encode_key(RESOURCES, WireType::LengthDelimited, buf);
    encoding::encode_varint(resource_len(resource) as u64, buf);
    put_bytes(RESOURCE_VERSION, &version_digits(resource.version), buf);
    encoding::encode_key(RESOURCE_BODY, WireType::LengthDelimited, buf);
    encoding::encode_varint(resource.encoded_body().len() as u64, buf);
}

/// The length of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// A length-delimited field of raw bytes.
fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A string field, left out when empty (proto3).
fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_bytes(tag, value.as_bytes(), buf);
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

/// `version` as 16 lower-case hex digits, without an allocation.
fn version_digits(version: u64) -> [u8; VERSION_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; VERSION_LEN];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((version >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

impl Message for DeltaResponse {
    // Fields in the order of their numbers, as prost's generated types write them, so that
    // both encode alike.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.put_head(buf);
        for resource in &self.resources {
            put_resource_head(resource, buf);
            buf.put_slice(resource.encoded_body());
            put_string(RESOURCE_NAME, &resource.name, buf);
        }
        self.put_tail(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| delimited_len(RESOURCES, resource_len(r)))
            .sum();
        let removed: usize = self
            .removed_resources
            .iter()
            .map(|name| delimited_len(REMOVED_RESOURCES, name.len()))
            .sum();
        string_len(SYSTEM_VERSION_INFO, &self.system_version_info)
            + resources
            + string_len(TYPE_URL, &self.type_url)
            + removed
            + string_len(NONCE, &self.nonce)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use isthmus_proto::envoy::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
    use isthmus_proto::envoy::google::protobuf::Any;

    use super::*;
    use crate::xds::resources::{ENDPOINT, TypeResources};

    fn resources() -> TypeResources {
        TypeResources::new([
            (
                "outbound|80||a.shop".to_owned(),
                Any {
                    type_url: ENDPOINT.into(),
                    value: vec![7; 300],
                },
            ),
            (
                String::new(),
                Any {
                    type_url: ENDPOINT.into(),
                    value: Vec::new(),
                },
            ),
            (
                "b".repeat(200),
                Any {
                    type_url: String::new(),
                    value: vec![0, 1, 2],
                },
            ),
        ])
    }

    #[test]
    fn the_encoding_is_the_generated_types_byte_for_byte() {
        let typed = resources();
        let ours = DeltaResponse {
            system_version_info: typed.version.clone(),
            resources: typed.items().cloned().collect(),
            type_url: ENDPOINT.into(),
            removed_resources: vec!["gone".into(), String::new(), "é".repeat(100)],
            nonce: "42".into(),
        };
        let generated = DeltaDiscoveryResponse {
            system_version_info: typed.version.clone(),
            resources: typed
                .items()
                .map(|r| Resource {
                    name: r.name.to_string(),
                    version: r.version_string(),
                    resource: Some(r.body()),
                    ..Resource::default()
                })
                .collect(),
            type_url: ENDPOINT.into(),
            removed_resources: ours.removed_resources.clone(),
            nonce: "42".into(),
            ..DeltaDiscoveryResponse::default()
        };
        assert_eq!(ours.encoded_len(), generated.encoded_len());
        assert_eq!(ours.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(ours.to_envoy(), generated);
    }

    #[test]
    fn chunks_are_the_encoding_with_large_bodies_shared() {
        let body = |len: usize| Any {
            type_url: ENDPOINT.into(),
            value: vec![9; len],
        };
        let typed = TypeResources::new([
            ("a".to_owned(), body(10)),
            ("b".to_owned(), body(SHARED_BODY_MIN)),
            ("c".to_owned(), body(3)),
            ("d".to_owned(), body(SHARED_BODY_MIN * 4)),
        ]);
        let response = DeltaResponse {
            system_version_info: typed.version.clone(),
            resources: typed.items().cloned().collect(),
            type_url: ENDPOINT.into(),
            removed_resources: vec!["gone".into()],
            nonce: "7".into(),
        };
        let chunks = response.encode_chunks(b"PREFX");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = b"PREFX".to_vec();
        expected.extend(response.encode_to_vec());
        assert_eq!(joined, expected);
        // prefix, head, a, b's head; b's body; b's name, c, d's head; d's body; d's name, tail.
        assert_eq!(chunks.len(), 5);
        for (i, name) in [(1, "b"), (3, "d")] {
            let shared = typed.get(name).unwrap().encoded_body();
            assert_eq!(
                chunks[i].as_ptr(),
                shared.as_ptr(),
                "{name}'s body is not copied"
            );
            assert_eq!(chunks[i].len(), shared.len());
        }
        // Nothing shared: one chunk.
        let small = DeltaResponse {
            resources: typed
                .items()
                .filter(|r| r.encoded_body().len() < SHARED_BODY_MIN)
                .cloned()
                .collect(),
            ..response.clone()
        };
        assert_eq!(small.encode_chunks(b"P").len(), 1);
    }

    #[test]
    fn an_empty_response_encodes_as_the_generated_default() {
        let ours = DeltaResponse::default();
        assert_eq!(ours.encoded_len(), 0);
        assert_eq!(
            ours.encode_to_vec(),
            DeltaDiscoveryResponse::default().encode_to_vec()
        );
    }

    #[test]
    fn versions_are_sixteen_lower_case_hex_digits() {
        for v in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(
                std::str::from_utf8(&version_digits(v)).unwrap(),
                crate::xds::resources::format_version(v)
            );
        }
    }
}
