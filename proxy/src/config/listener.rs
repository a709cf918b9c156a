//! `Listener` (LDS): where the proxy accepts connections, how it picks a filter chain (port,
//! SNI, transport protocol, ALPN), what TLS it terminates, and what runs on the connection:
//! network RBAC, then an HTTP connection manager or a TCP proxy.

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::core::v3::TrafficDirection;
use isthmus_proto::envoy::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, FilterChainMatch, Listener as EnvoyListener, ListenerFilter,
    filter, listener_filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy as EnvoyTcpProxy, tcp_proxy,
};
use isthmus_proto::envoy::google::protobuf::Any;

use super::check::{Checked, Invalid, Path, each, reject_set, required};
use super::cluster::http1_check;
use super::decode::{ads_source, opt_duration, short_type, socket_address, typed};
use super::listener_filter::{PortPredicate, port_predicate};
use super::rbac::{self, Cidr, Rules};
use super::route::{self, RouteTable};
use super::route_policies;
use super::tls::{self, DownstreamTls};

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub direction: Direction,
    /// Read the ClientHello's SNI and ALPN (and whether it is TLS at all) before choosing.
    pub tls_inspector: bool,
    /// The destination ports on which the TLS inspector does not run (`filter_disabled`).
    pub tls_inspector_disabled: Option<PortPredicate>,
    /// Choose by the original destination of a redirected connection (`SO_ORIGINAL_DST`).
    pub original_dst: bool,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    /// Who the node is, for telemetry (`isthmus.telemetry` metadata), when the control plane
    /// says.
    pub telemetry: Option<std::sync::Arc<super::telemetry::NodeFacts>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Unspecified,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub tls: Option<DownstreamTls>,
    /// Network RBAC filters, in order.
    pub rbac: Vec<Rules>,
    pub terminal: Terminal,
    /// A federation gateway's chain: the peer it serves (telemetry).
    pub peer: Option<crate::telemetry::labels::Label>,
}

/// Envoy's filter chain match, the parts this proxy honours. Empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// Destination address ranges (of the original destination on a capture listener).
    pub prefix_ranges: Vec<Cidr>,
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    Http(Box<HttpManager>),
    Tcp(TcpProxy),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// RBAC filters before the router, in order, by filter name.
    pub rbac: Vec<(String, Option<Rules>)>,
    /// The fault and CORS filters are in the chain: routes' fault and CORS settings apply.
    pub fault_filter: bool,
    pub cors_filter: bool,
    /// The JWT filter, which runs before RBAC.
    pub jwt: Option<std::sync::Arc<super::jwt_authn::JwtAuthn>>,
    pub forward_client_cert: ForwardClientCert,
    /// With `SanitizeSet`: put the peer's URI SAN into `x-forwarded-client-cert`.
    pub set_client_cert_uri: bool,
    /// The edge (`use_remote_address`, an ingress gateway): `x-forwarded-proto` is what the
    /// client used and its address is appended to `x-forwarded-for`, whatever it sent.
    pub use_remote_address: bool,
    /// `strip_any_host_port`: the authority loses its port before routing, and the request
    /// goes on (and is redirected) without it.
    pub strip_any_host_port: bool,
    /// Accept `GET http://host/path` (the app uses the proxy as its HTTP proxy).
    pub allow_absolute_url: bool,
    /// Upgrade protocols proxied (`upgrade_configs`, lowercase: `websocket`); other upgrade
    /// requests are refused with 403, as Envoy does.
    pub upgrades: Vec<String>,
    /// CONNECT requests are routed (`upgrade_configs` with `CONNECT`); otherwise 403.
    pub allow_connect: bool,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// Spans of its requests (`tracing`: the OpenTelemetry provider), when configured.
    pub tracing: Option<std::sync::Arc<super::tracing::Tracing>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    Rds(String),
    Inline(Box<RouteTable>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// Cluster and weight.
    pub clusters: Vec<(String, u32)>,
    pub idle_timeout: Option<Duration>,
    /// `tunneling_config.hostname`: the connection is carried in an HTTP/2 CONNECT stream to
    /// this authority (`host:port`) over the cluster's connection.
    pub tunnel: Option<String>,
}

const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";

pub fn convert(l: EnvoyListener, path: &Path) -> Checked<Listener> {
    #[allow(deprecated)]
    let EnvoyListener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,
        stats_matcher,
        filter_chains,
        fcds_config,
        default_filter_chain,
        metadata,
        deprecated_v1,
        drain_type: _,
        listener_filters,
        continue_on_listener_filters_timeout: _,
        socket_options,
        traffic_direction,
        udp_listener_config,
        api_listener,
        reuse_port,
        access_log,
        enable_mptcp,
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
        use_original_dst,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout: _,
        listener_filters_timeout: _,
        transparent,
        freebind,
        tcp_fast_open_queue_length,
        connection_balance_config,
        enable_reuse_port,
        max_connections_to_accept_per_socket_event: _,
        filter_chain_matcher,
        tcp_backlog_size: _,
        bind_to_port,
    } = l;
    reject_set!(path; additional_addresses, stats_matcher, fcds_config, deprecated_v1, socket_options,
        udp_listener_config, api_listener, reuse_port, access_log, enable_mptcp, tcp_keepalive,
        listener_specifier, transparent, freebind, tcp_fast_open_queue_length,
        connection_balance_config, enable_reuse_port, filter_chain_matcher);
    if bind_to_port.is_some_and(|b| !b.value) {
        return Err(Invalid::new(
            &path.field("bind_to_port"),
            "every listener binds its address",
        ));
    }
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }
    let direction = match TrafficDirection::try_from(traffic_direction) {
        Ok(TrafficDirection::Inbound) => Direction::Inbound,
        Ok(TrafficDirection::Outbound) => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    let mut tls_inspector = false;
    let mut tls_inspector_disabled = None;
    let mut original_dst = use_original_dst.is_some_and(|b| b.value);
    for (i, f) in listener_filters.into_iter().enumerate() {
        let path = path.field("listener_filters").index(i);
        let (kind, disabled) = listener_filter_type(f, &path)?;
        match kind.as_str() {
            TLS_INSPECTOR => {
                tls_inspector = true;
                tls_inspector_disabled = disabled;
            }
            ORIGINAL_DST if disabled.is_some() => {
                return Err(Invalid::new(
                    &path.field("filter_disabled"),
                    "original_dst runs on every connection of a capture listener",
                ));
            }
            ORIGINAL_DST => original_dst = true,
            other => {
                return Err(Invalid::new(
                    &path.field("typed_config"),
                    format!(
                        "listener filter {other} is not supported (tls_inspector, original_dst)"
                    ),
                ));
            }
        }
    }
    let chains = each(filter_chains, path, "filter_chains", chain)?;
    let default_chain = default_filter_chain
        .map(|c| chain(c, &path.field("default_filter_chain")))
        .transpose()?;
    if chains.is_empty() && default_chain.is_none() {
        return Err(Invalid::new(
            &path.field("filter_chains"),
            "a listener needs a filter chain",
        ));
    }
    let needs_inspector = chains.iter().any(|c| {
        !c.matcher.server_names.is_empty()
            || !c.matcher.application_protocols.is_empty()
            || c.matcher.transport_protocol.as_deref() == Some("tls")
    });
    if needs_inspector && !tls_inspector {
        return Err(Invalid::new(
            &path.field("listener_filters"),
            "filter chains match on TLS properties: the tls_inspector listener filter is required",
        ));
    }
    Ok(Listener {
        address: socket_address(address, &path.field("address"))?,
        name,
        direction,
        tls_inspector,
        tls_inspector_disabled,
        original_dst,
        chains,
        default_chain,
        telemetry: super::telemetry::node_facts(metadata.as_ref()),
    })
}

/// The type of a listener filter's typed config (only type-identified filters are accepted),
/// and the ports where it does not run.
fn listener_filter_type(
    f: ListenerFilter,
    path: &Path,
) -> Checked<(String, Option<PortPredicate>)> {
    let ListenerFilter {
        name: _,
        filter_disabled,
        config_type,
    } = f;
    let disabled = filter_disabled
        .map(|p| port_predicate(p, &path.field("filter_disabled")))
        .transpose()?;
    match config_type {
        Some(listener_filter::ConfigType::TypedConfig(any)) => Ok((
            any.type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            disabled,
        )),
        _ => Err(Invalid::required(&path.field("typed_config"))),
    }
}

fn chain(c: EnvoyChain, path: &Path) -> Checked<FilterChain> {
    #[allow(deprecated)]
    let EnvoyChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata,
        transport_socket,
        transport_socket_connect_timeout: _,
        name,
    } = c;
    reject_set!(path; use_proxy_proto);
    let matcher = filter_chain_match
        .map(|m| chain_match(m, &path.field("filter_chain_match")))
        .transpose()?
        .unwrap_or_default();
    let tls = tls::downstream(transport_socket, &path.field("transport_socket"))?;
    let mut rbac_filters = Vec::new();
    let mut terminal = None;
    let count = filters.len();
    for (i, f) in filters.into_iter().enumerate() {
        let path = path.field("filters").index(i);
        let any = network_filter_config(f, &path)?;
        let path = path.typed("typed_config", short_type(&any));
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        let last = i + 1 == count;
        match type_name {
            NETWORK_RBAC if !last => rbac_filters.push(rbac::network(&any, &path)?),
            HCM if last => terminal = Some(Terminal::Http(Box::new(http_manager(&any, &path)?))),
            TCP_PROXY if last => terminal = Some(Terminal::Tcp(self::tcp_proxy(&any, &path)?)),
            HCM | TCP_PROXY => return Err(Invalid::new(&path, "must be the last filter")),
            NETWORK_RBAC => return Err(Invalid::new(&path, "must come before a terminal filter")),
            other => {
                return Err(Invalid::new(
                    &path,
                    format!(
                        "network filter {other} is not supported (rbac, http_connection_manager, tcp_proxy)"
                    ),
                ));
            }
        }
    }
    Ok(FilterChain {
        name,
        matcher,
        tls,
        rbac: rbac_filters,
        terminal: required(terminal, &path.field("filters"))?,
        peer: super::telemetry::cluster_facts(metadata.as_ref()).peer,
    })
}

fn network_filter_config(f: Filter, path: &Path) -> Checked<Any> {
    // Filters are identified by their typed config, not by name.
    let Filter {
        name: _,
        config_type,
    } = f;
    match config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(Invalid::required(&path.field("typed_config"))),
    }
}

fn chain_match(m: FilterChainMatch, path: &Path) -> Checked<ChainMatch> {
    let FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    reject_set!(path; address_suffix, suffix_len, direct_source_prefix_ranges,
        source_type, source_prefix_ranges, source_ports);
    let prefix_ranges = each(prefix_ranges, path, "prefix_ranges", rbac::cidr)?;
    let destination_port = destination_port
        .map(|p| {
            u16::try_from(p.value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Invalid::new(&path.field("destination_port"), "not a port"))
        })
        .transpose()?;
    let transport_protocol = match transport_protocol.as_str() {
        "" => None,
        "tls" | "raw_buffer" => Some(transport_protocol),
        other => {
            return Err(Invalid::new(
                &path.field("transport_protocol"),
                format!("{other:?}: only tls or raw_buffer"),
            ));
        }
    };
    Ok(ChainMatch {
        destination_port,
        prefix_ranges,
        server_names: server_names
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        transport_protocol,
        application_protocols,
    })
}

fn http_manager(any: &Any, path: &Path) -> Checked<HttpManager> {
    #[allow(deprecated)]
    let HttpConnectionManager {
        codec_type,
        stat_prefix,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name: _,
        server_header_transformation,
        scheme_header_transformation,
        max_request_headers_kb: _,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        drain_timeout: _,
        drain_timeout_jitter: _,
        delayed_close_timeout: _,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        use_remote_address,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id: _,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue: _,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message: _,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier,
        strip_port_mode,
    } = typed(any, path)?;
    reject_set!(path; add_user_agent, common_http_protocol_options,
        http1_safe_max_connection_duration, http2_protocol_options, http3_protocol_options,
        server_header_transformation, scheme_header_transformation, stream_flush_timeout,
        request_headers_timeout, access_log, access_log_flush_interval,
        flush_access_log_on_new_request, access_log_options, xff_num_trusted_hops,
        original_ip_detection_extensions, early_header_mutation_extensions, internal_address_config,
        skip_xff_append, via, preserve_external_request_id, always_set_request_id_in_response,
        forward_client_cert_matcher, represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        normalize_path, merge_slashes, path_with_escaped_slashes_action,
        request_id_extension, local_reply_config, strip_matching_host_port,
        path_normalization_options, strip_trailing_host_dot, proxy_status_config,
        typed_header_validation_config, append_x_forwarded_port, append_local_overload,
        add_proxy_protocol_connection_state, forward_proto_config);
    // Virtual hosts are chosen on the authority without its port here, as Envoy's
    // `strip_any_host_port` (what an ingress gateway sets) does; that setting also takes the
    // port off the request itself. Envoy's other port modes are not this proxy's.
    let strip_any_host_port = match strip_port_mode {
        None => false,
        Some(http_connection_manager::StripPortMode::StripAnyHostPort(true)) => true,
        Some(_) => {
            return Err(Invalid::new(
                &path.field("strip_port_mode"),
                "only strip_any_host_port: true (virtual hosts are matched without the port)",
            ));
        }
    };
    // Accepted with this proxy's own behaviour: its server name, header size bound (60 KiB),
    // drain timings, request ids, 100-continue and remote address handling.
    use http_connection_manager::{CodecType, ForwardClientCertDetails as F, RouteSpecifier};
    let codec = match CodecType::try_from(codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(Invalid::new(
                &path.field("codec_type"),
                "AUTO, HTTP1 or HTTP2",
            ));
        }
    };
    let routes = match required(route_specifier, path)? {
        RouteSpecifier::Rds(Rds {
            config_source,
            route_config_name,
        }) => {
            let path = path.field("rds");
            ads_source(config_source, &path.field("config_source"))?;
            if route_config_name.is_empty() {
                return Err(Invalid::required(&path.field("route_config_name")));
            }
            RouteSource::Rds(route_config_name)
        }
        RouteSpecifier::RouteConfig(rc) => {
            RouteSource::Inline(Box::new(route::convert(rc, &path.field("route_config"))?))
        }
        RouteSpecifier::ScopedRoutes(_) => {
            return Err(Invalid::unsupported(&path.field("scoped_routes")));
        }
    };
    let forward_client_cert = match F::try_from(forward_client_cert_details) {
        Ok(F::Sanitize) => ForwardClientCert::Sanitize,
        Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(F::AppendForward) => ForwardClientCert::AppendForward,
        Ok(F::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        Err(_) => {
            return Err(Invalid::new(
                &path.field("forward_client_cert_details"),
                "unknown value",
            ));
        }
    };
    let mut set_client_cert_uri = false;
    if let Some(details) = set_current_client_cert_details {
        let path = path.field("set_current_client_cert_details");
        let http_connection_manager::SetCurrentClientCertDetails {
            subject,
            cert,
            chain,
            dns,
            uri,
            issuer,
            format,
        } = details;
        reject_set!(path; subject, cert, chain, dns, issuer, format);
        set_client_cert_uri = uri;
    }
    let mut upgrades = Vec::new();
    let mut allow_connect = false;
    for (i, upgrade) in upgrade_configs.into_iter().enumerate() {
        let path = path.field("upgrade_configs").index(i);
        let http_connection_manager::UpgradeConfig {
            upgrade_type,
            filters,
            enabled,
        } = upgrade;
        reject_set!(path; filters);
        if upgrade_type.is_empty() {
            return Err(Invalid::new(
                &path.field("upgrade_type"),
                "an upgrade protocol such as websocket or CONNECT",
            ));
        }
        if upgrade_type.eq_ignore_ascii_case("CONNECT") {
            allow_connect = enabled.is_none_or(|e| e.value);
        } else if enabled.is_none_or(|e| e.value) {
            upgrades.push(upgrade_type.to_ascii_lowercase());
        }
    }
    let allow_absolute_url = match http_protocol_options {
        Some(h1) => http1_check(h1, &path.field("http_protocol_options"))?,
        None => false,
    };
    let chain = http_filters_chain(http_filters, &path.field("http_filters"))?;
    Ok(HttpManager {
        stat_prefix,
        upgrades,
        allow_connect,
        codec,
        routes,
        rbac: chain.rbac,
        fault_filter: chain.fault,
        cors_filter: chain.cors,
        jwt: chain.jwt.map(std::sync::Arc::new),
        forward_client_cert,
        set_client_cert_uri,
        use_remote_address: use_remote_address.is_some_and(|b| b.value),
        strip_any_host_port,
        allow_absolute_url,
        stream_idle_timeout: opt_duration(stream_idle_timeout, &path.field("stream_idle_timeout"))?,
        request_timeout: opt_duration(request_timeout, &path.field("request_timeout"))?
            .filter(|d| !d.is_zero()),
        tracing: tracing_of(tracing, path)?,
    })
}

/// The manager's `tracing` (`config/tracing.rs`); none without a provider.
fn tracing_of(
    tracing: Option<http_connection_manager::Tracing>,
    path: &Path,
) -> Checked<Option<std::sync::Arc<super::tracing::Tracing>>> {
    let Some(tracing) = tracing else {
        return Ok(None);
    };
    Ok(super::tracing::convert(tracing, &path.field("tracing"))?.map(std::sync::Arc::new))
}

/// The HTTP filters of a connection manager, the router last.
struct HttpFilters {
    rbac: Vec<(String, Option<Rules>)>,
    fault: bool,
    cors: bool,
    jwt: Option<super::jwt_authn::JwtAuthn>,
}

/// RBAC, fault and CORS filters in any order, then the router, which must be last.
fn http_filters_chain(filters: Vec<HttpFilter>, path: &Path) -> Checked<HttpFilters> {
    let count = filters.len();
    let mut chain = HttpFilters {
        rbac: Vec::new(),
        fault: false,
        cors: false,
        jwt: None,
    };
    let mut router = false;
    for (i, f) in filters.into_iter().enumerate() {
        let path = path.index(i);
        let HttpFilter {
            name,
            is_optional,
            disabled,
            config_type,
        } = f;
        reject_set!(path; is_optional, disabled);
        let any = match config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            _ => return Err(Invalid::required(&path.field("typed_config"))),
        };
        let path = path.typed("typed_config", short_type(&any));
        let last = i + 1 == count;
        match any.type_url.rsplit('/').next().unwrap_or_default() {
            HTTP_RBAC if !last => chain.rbac.push((name, rbac::http(&any, &path)?)),
            route_policies::FAULT_TYPE if !last => {
                route_policies::fault_filter(&any, &path)?;
                chain.fault = true;
            }
            route_policies::CORS_FILTER_TYPE if !last => {
                route_policies::cors_filter(&any, &path)?;
                chain.cors = true;
            }
            // Before any RBAC filter, which reads what it verified.
            super::jwt_authn::JWT_AUTHN_TYPE if !last && chain.rbac.is_empty() => {
                if chain.jwt.is_some() {
                    return Err(Invalid::new(&path, "one JWT filter"));
                }
                chain.jwt = Some(super::jwt_authn::convert(&any, &path)?);
            }
            ROUTER if last => {
                router = true;
                router_check(&any, &path)?;
            }
            other => {
                return Err(Invalid::new(
                    &path,
                    format!(
                        "HTTP filter {other} is not supported here (jwt_authn before rbac, fault and cors filters, then the router last)"
                    ),
                ));
            }
        }
    }
    if !router {
        return Err(Invalid::new(path, "the router filter must be last"));
    }
    Ok(chain)
}

fn router_check(any: &Any, path: &Path) -> Checked<()> {
    use isthmus_proto::envoy::envoy::extensions::filters::http::router::v3::Router;
    #[allow(deprecated)]
    let Router {
        dynamic_stats: _,
        start_child_span: _,
        upstream_log,
        upstream_log_options,
        suppress_envoy_headers: _,
        strict_check_headers,
        respect_expected_rq_timeout,
        suppress_grpc_request_failure_code_stats: _,
        upstream_http_filters,
        reject_connect_request_early_data: _,
    } = typed(any, path)?;
    reject_set!(path; upstream_log, upstream_log_options, strict_check_headers,
        respect_expected_rq_timeout, upstream_http_filters);
    Ok(())
}

fn tcp_proxy(any: &Any, path: &Path) -> Checked<TcpProxy> {
    #[allow(deprecated)]
    let EnvoyTcpProxy {
        stat_prefix,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
        cluster_specifier,
    } = typed(any, path)?;
    reject_set!(path; on_demand, metadata_match, downstream_idle_timeout, upstream_idle_timeout,
        access_log, max_connect_attempts, backoff_options, hash_policy,
        max_downstream_connection_duration, max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval, flush_access_log_on_connected, access_log_options,
        proxy_protocol_tlvs, proxy_protocol_tlv_merge_policy, upstream_connect_mode,
        max_early_data_bytes, check_drain_close);
    let clusters = match required(cluster_specifier, path)? {
        tcp_proxy::ClusterSpecifier::Cluster(c) if !c.is_empty() => vec![(c, 1)],
        tcp_proxy::ClusterSpecifier::WeightedClusters(w) => w
            .clusters
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let path = path.field("weighted_clusters").field("clusters").index(i);
                let tcp_proxy::weighted_cluster::ClusterWeight {
                    name,
                    weight,
                    metadata_match,
                } = c;
                reject_set!(path; metadata_match);
                if name.is_empty() || weight == 0 {
                    return Err(Invalid::new(&path, "a cluster name and a positive weight"));
                }
                Ok((name, weight))
            })
            .collect::<Checked<_>>()?,
        _ => return Err(Invalid::required(&path.field("cluster"))),
    };
    let tunnel = tunneling_config
        .map(|t| tunnel(t, &path.field("tunneling_config")))
        .transpose()?;
    Ok(TcpProxy {
        stat_prefix,
        clusters,
        tunnel,
        // Envoy's default: an idle TCP connection is closed after an hour; 0 disables.
        idle_timeout: match opt_duration(idle_timeout, &path.field("idle_timeout"))? {
            None => Some(Duration::from_secs(3600)),
            Some(Duration::ZERO) => None,
            Some(d) => Some(d),
        },
    })
}

fn tunnel(t: tcp_proxy::TunnelingConfig, path: &Path) -> Checked<String> {
    #[allow(deprecated)]
    let tcp_proxy::TunnelingConfig {
        hostname,
        use_post,
        headers_to_add,
        propagate_response_headers,
        post_path,
        propagate_response_trailers,
        request_id_extension,
        request_id_header,
        request_id_metadata_key,
        formatters,
    } = t;
    reject_set!(path; use_post, headers_to_add, propagate_response_headers, post_path,
        propagate_response_trailers, request_id_extension, request_id_header,
        request_id_metadata_key, formatters);
    // Envoy's format operators (`%REQUESTED_SERVER_NAME%`) are outside the profile. The
    // tunnel's CONNECT request carries it as its URI: it must be an authority.
    let valid = hostname
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !hostname.contains(['%', '@'])
        && hostname.parse::<http::uri::Authority>().is_ok();
    if !valid {
        return Err(Invalid::new(
            &path.field("hostname"),
            "a literal host:port (format operators are not supported)",
        ));
    }
    Ok(hostname)
}
