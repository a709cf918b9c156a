//! Small conversions every resource uses: typed extensions (`Any`), durations, wrapped numbers,
//! the ADS config source, socket addresses.

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::core::v3::{
    Address, ApiVersion, ConfigSource, SocketAddress, address, config_source, socket_address,
};
use isthmus_proto::envoy::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};

use super::check::{Checked, Invalid, Path, reject_set, required};

/// `any` decoded as `M`, which must be its type.
pub fn typed<M: Message + Name + Default>(any: &Any, path: &Path) -> Checked<M> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(Invalid::new(
            path,
            format!("expected {expected}, got {:?}", any.type_url),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| Invalid::new(path, format!("cannot decode {}: {e}", M::full_name())))
}

/// The short name of a typed extension's type, for paths: `HttpConnectionManager`.
pub fn short_type(any: &Any) -> &str {
    any.type_url.rsplit('.').next().unwrap_or_default()
}

pub fn duration(d: &PbDuration, path: &Path) -> Checked<Duration> {
    let secs = u64::try_from(d.seconds).map_err(|_| Invalid::new(path, "negative duration"))?;
    let nanos = u32::try_from(d.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| Invalid::new(path, "nanos out of range"))?;
    Ok(Duration::new(secs, nanos))
}

pub fn opt_duration(d: Option<PbDuration>, path: &Path) -> Checked<Option<Duration>> {
    d.map(|d| duration(&d, path)).transpose()
}

/// The config source of an xDS-delivered resource: only ADS (the stream the proxy has).
pub fn ads_source(source: Option<ConfigSource>, path: &Path) -> Checked<()> {
    let ConfigSource {
        authorities,
        initial_fetch_timeout,
        resource_api_version,
        config_source_specifier,
    } = required(source, path)?;
    reject_set!(path; authorities, initial_fetch_timeout);
    if resource_api_version != ApiVersion::V3 as i32
        && resource_api_version != ApiVersion::Auto as i32
    {
        return Err(Invalid::new(&path.field("resource_api_version"), "only V3"));
    }
    match config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(()),
        _ => Err(Invalid::new(
            &path.field("config_source_specifier"),
            "only `ads` (resources come over the proxy's one ADS stream)",
        )),
    }
}

/// A TCP socket address with an IP literal.
pub fn socket_address(address: Option<Address>, path: &Path) -> Checked<SocketAddr> {
    let (host, port) = host_port(address, path)?;
    let ip = host.parse().map_err(|_| {
        Invalid::new(
            &path.field("socket_address").field("address"),
            format!("{host:?} is not an IP address"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// A TCP socket address whose host may be a DNS name (for DNS clusters).
pub fn host_port(address: Option<Address>, path: &Path) -> Checked<(String, u16)> {
    let Address { address } = required(address, path)?;
    let path = path.field("socket_address");
    let SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    } = match address {
        Some(address::Address::SocketAddress(s)) => s,
        _ => return Err(Invalid::new(&path, "only socket_address")),
    };
    reject_set!(path; resolver_name, ipv4_compat, network_namespace_filepath);
    if protocol != socket_address::Protocol::Tcp as i32 {
        return Err(Invalid::new(&path.field("protocol"), "only TCP"));
    }
    let port = match port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| Invalid::new(&path.field("port_value"), format!("{p} is not a port")))?,
        _ => {
            return Err(Invalid::new(
                &path.field("port_value"),
                "required (named ports are not supported)",
            ));
        }
    };
    if address.is_empty() {
        return Err(Invalid::required(&path.field("address")));
    }
    Ok((address, port))
}

/// A `UInt32Value`'s value, or `default`.
pub fn u32_or(
    value: Option<isthmus_proto::envoy::google::protobuf::UInt32Value>,
    default: u32,
) -> u32 {
    value.map_or(default, |v| v.value)
}
