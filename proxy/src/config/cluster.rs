//! `Cluster` (CDS): how to reach a set of endpoints — discovery, load balancing, limits,
//! outlier detection, upstream protocol and TLS.

use std::collections::HashMap;
use std::time::Duration;

use isthmus_proto::envoy::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as EnvoyCluster, OutlierDetection, UpstreamConnectionOptions,
    circuit_breakers, cluster,
};
use isthmus_proto::envoy::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    RoutingPriority,
};
use isthmus_proto::envoy::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use isthmus_proto::envoy::google::protobuf::Any;

use super::check::{Checked, Invalid, Path, one_of, reject_set, required};
use super::decode::{ads_source, opt_duration, short_type, typed, u32_or};
use super::endpoint::{self, LoadAssignment};
use super::tls::{self, UpstreamTls};

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    pub limits: Limits,
    pub outlier: Option<Outlier>,
    /// Below this share of healthy hosts (percent), Envoy balances over all hosts anyway.
    pub panic_threshold: f64,
    /// `locality_weighted_lb_config`: within a priority, each locality gets its
    /// `load_balancing_weight`'s share; a locality without one gets nothing.
    pub locality_weighted: bool,
    pub protocol: UpstreamProtocol,
    pub tls: Option<UpstreamTls>,
    /// TCP keepalive on the connections to the cluster's hosts.
    pub keepalive: Option<Keepalive>,
    /// The service and mesh it leads to (telemetry; Istio's `istio.services` metadata and
    /// `isthmus.telemetry`).
    pub telemetry: std::sync::Arc<super::telemetry::ClusterFacts>,
}

/// `upstream_connection_options.tcp_keepalive`: unset fields keep the system's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

fn keepalive(o: UpstreamConnectionOptions, path: &Path) -> Checked<Option<Keepalive>> {
    let UpstreamConnectionOptions {
        tcp_keepalive,
        set_local_interface_name_on_upstream_connections,
        happy_eyeballs_config,
    } = o;
    reject_set!(path; set_local_interface_name_on_upstream_connections, happy_eyeballs_config);
    Ok(tcp_keepalive.map(|k| {
        let secs = |v: Option<isthmus_proto::envoy::google::protobuf::UInt32Value>| {
            v.map(|v| Duration::from_secs(u64::from(v.value.max(1))))
        };
        Keepalive {
            probes: k.keepalive_probes.map(|v| v.value),
            time: secs(k.keepalive_time),
            interval: secs(k.keepalive_interval),
        }
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Endpoints given in the cluster.
    Static(LoadAssignment),
    /// Endpoints from EDS, by this name.
    Eds { service_name: String },
    /// Endpoints resolved from DNS names; `strict`: every address, else the first.
    Dns {
        strict: bool,
        assignment: LoadAssignment,
    },
    /// The connection's original destination (passthrough of captured traffic); TCP only.
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of two choices on outstanding requests.
    LeastRequest,
    Random,
    /// Envoy's RING_HASH and MAGLEV: a request's hash (its route's `hash_policy`) picks the
    /// host, the same host while it stays (rendezvous hashing here, so neither the ring size
    /// nor the table size matters); a request without one is placed at random.
    ConsistentHash,
}

/// Circuit breakers of the default priority (Envoy's defaults: 1024, 1024, 1024, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    /// Retries in flight at once, across the cluster.
    pub max_retries: u32,
    /// Instead of `max_retries`: retries in flight as a share of open requests.
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's retry budget: `percent` of the open requests (default 20), at least
/// `min_concurrency` (default 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

impl Eq for RetryBudget {}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

/// Consecutive-error ejection, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    /// Percent chance that reaching `consecutive_5xx` ejects (Envoy: 100).
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    /// Envoy: 0, so gateway failures alone do not eject unless enforced.
    pub enforcing_consecutive_gateway_failure: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// What the cluster speaks to its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamProtocol {
    /// `None`: opaque TCP, or HTTP/1.1 when used by an HTTP route.
    pub http: Option<HttpVersion>,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn convert(c: EnvoyCluster, path: &Path) -> Checked<Cluster> {
    #[allow(deprecated)]
    let EnvoyCluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _,
        stats_matcher,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate: _,
        dns_jitter,
        dns_failure_refresh_rate,
        respect_dns_ttl: _,
        dns_lookup_family: _,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init: _,
        outlier_detection,
        cleanup_interval,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        track_timeout_budgets,
        upstream_config,
        track_cluster_stats,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = c;
    reject_set!(path; transport_socket_matches, transport_socket_matcher, stats_matcher,
        per_connection_buffer_high_watermark_timeout, health_checks, max_requests_per_connection,
        upstream_http_protocol_options, common_http_protocol_options, http_protocol_options,
        http2_protocol_options, dns_jitter, dns_failure_refresh_rate, dns_resolvers,
        use_tcp_for_dns_lookups, dns_resolution_config, typed_dns_resolver_config,
        cleanup_interval, upstream_bind_config, lb_subset_config, protocol_selection,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal, filters, load_balancing_policy, lrs_server,
        lrs_report_endpoint_metrics, track_timeout_budgets, upstream_config, track_cluster_stats,
        preconnect_policy, connection_pool_per_downstream_connection, queuing_policies);
    if name.is_empty() {
        return Err(Invalid::required(&path.field("name")));
    }

    let kind = match cluster_discovery_type {
        None => cluster::DiscoveryType::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => one_of(
            t,
            &[
                cluster::DiscoveryType::Static,
                cluster::DiscoveryType::StrictDns,
                cluster::DiscoveryType::LogicalDns,
                cluster::DiscoveryType::Eds,
                cluster::DiscoveryType::OriginalDst,
            ],
            &path.field("type"),
        )?,
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err(Invalid::unsupported(&path.field("cluster_type")));
        }
    };
    let static_assignment = |assignment| -> Checked<LoadAssignment> {
        let path = path.field("load_assignment");
        endpoint::convert(required(assignment, &path)?, &path)
    };
    let discovery = match kind {
        cluster::DiscoveryType::Eds => {
            reject_set!(path; load_assignment);
            let path = path.field("eds_cluster_config");
            let cluster::EdsClusterConfig {
                eds_config,
                service_name,
            } = required(eds_cluster_config, &path)?;
            ads_source(eds_config, &path.field("eds_config"))?;
            Discovery::Eds {
                service_name: if service_name.is_empty() {
                    name.clone()
                } else {
                    service_name
                },
            }
        }
        cluster::DiscoveryType::OriginalDst => {
            reject_set!(path; eds_cluster_config, load_assignment);
            if lb_policy != cluster::LbPolicy::ClusterProvided as i32 {
                return Err(Invalid::new(
                    &path.field("lb_policy"),
                    "an ORIGINAL_DST cluster needs CLUSTER_PROVIDED",
                ));
            }
            Discovery::OriginalDst
        }
        cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns => {
            reject_set!(path; eds_cluster_config);
            Discovery::Dns {
                strict: kind == cluster::DiscoveryType::StrictDns,
                assignment: static_assignment(load_assignment)?,
            }
        }
        _ => {
            reject_set!(path; eds_cluster_config);
            let assignment = static_assignment(load_assignment)?;
            if let Some((i, j)) = first_non_ip(&assignment) {
                return Err(Invalid::new(
                    &path
                        .field("load_assignment")
                        .field("endpoints")
                        .index(i)
                        .field("lb_endpoints")
                        .index(j),
                    "a static cluster needs IP addresses",
                ));
            }
            Discovery::Static(assignment)
        }
    };

    let lb = one_of(
        lb_policy,
        &[
            cluster::LbPolicy::ClusterProvided,
            cluster::LbPolicy::RoundRobin,
            cluster::LbPolicy::LeastRequest,
            cluster::LbPolicy::Random,
            cluster::LbPolicy::RingHash,
            cluster::LbPolicy::Maglev,
        ],
        &path.field("lb_policy"),
    )?;
    let lb = match lb {
        cluster::LbPolicy::LeastRequest => LbPolicy::LeastRequest,
        cluster::LbPolicy::Random => LbPolicy::Random,
        cluster::LbPolicy::RingHash | cluster::LbPolicy::Maglev => LbPolicy::ConsistentHash,
        _ => LbPolicy::RoundRobin,
    };
    // The ring's or the table's size: accepted for a consistent hash (it needs neither).
    match (&lb_config, lb) {
        (None, _)
        | (
            Some(cluster::LbConfig::RingHashLbConfig(_) | cluster::LbConfig::MaglevLbConfig(_)),
            LbPolicy::ConsistentHash,
        ) => {}
        _ => return Err(Invalid::unsupported(&path.field("lb_config"))),
    }
    let mut panic_threshold = 50.0;
    let mut locality_weighted = false;
    if let Some(common) = common_lb_config {
        let path = path.field("common_lb_config");
        let cluster::CommonLbConfig {
            healthy_panic_threshold,
            update_merge_window: _,
            ignore_new_hosts_until_first_hc,
            close_connections_on_host_set_change,
            consistent_hashing_lb_config,
            override_host_status,
            locality_config_specifier,
        } = common;
        reject_set!(path; ignore_new_hosts_until_first_hc, close_connections_on_host_set_change,
            consistent_hashing_lb_config, override_host_status);
        match locality_config_specifier {
            None => {}
            Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                _,
            )) => locality_weighted = true,
            Some(_) => {
                return Err(Invalid::new(
                    &path.field("zone_aware_lb_config"),
                    "not supported (locality_weighted_lb_config is)",
                ));
            }
        }
        if let Some(p) = healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) {
                return Err(Invalid::new(
                    &path.field("healthy_panic_threshold"),
                    "a percentage",
                ));
            }
            panic_threshold = p.value;
        }
    }

    Ok(Cluster {
        connect_timeout: opt_duration(connect_timeout, &path.field("connect_timeout"))?
            .unwrap_or(Duration::from_secs(5)),
        lb,
        limits: limits(circuit_breakers, &path.field("circuit_breakers"))?,
        outlier: outlier_detection
            .map(|o| outlier(o, &path.field("outlier_detection")))
            .transpose()?,
        panic_threshold,
        locality_weighted,
        protocol: protocol(
            typed_extension_protocol_options,
            &path.field("typed_extension_protocol_options"),
        )?,
        tls: tls::upstream(transport_socket, &path.field("transport_socket"))?,
        keepalive: upstream_connection_options
            .map(|o| keepalive(o, &path.field("upstream_connection_options")))
            .transpose()?
            .flatten(),
        telemetry: std::sync::Arc::new(super::telemetry::cluster_facts(metadata.as_ref())),
        discovery,
        name,
    })
}

fn first_non_ip(assignment: &LoadAssignment) -> Option<(usize, usize)> {
    assignment.groups.iter().enumerate().find_map(|(i, g)| {
        g.endpoints
            .iter()
            .position(|e| e.host.parse::<std::net::IpAddr>().is_err())
            .map(|j| (i, j))
    })
}

fn limits(breakers: Option<CircuitBreakers>, path: &Path) -> Checked<Limits> {
    let mut limits = Limits::default();
    let Some(CircuitBreakers {
        thresholds,
        per_host_thresholds,
    }) = breakers
    else {
        return Ok(limits);
    };
    reject_set!(path; per_host_thresholds);
    for (i, t) in thresholds.into_iter().enumerate() {
        let path = path.field("thresholds").index(i);
        let circuit_breakers::Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            track_remaining: _,
            max_connection_pools,
        } = t;
        reject_set!(path; max_connection_pools);
        let retry_budget = match retry_budget {
            None => limits.retry_budget,
            Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent,
                min_retry_concurrency,
                budget_interval,
            }) => {
                reject_set!(path.field("retry_budget"); budget_interval);
                let percent = budget_percent.map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(Invalid::new(
                        &path.field("retry_budget").field("budget_percent"),
                        "a percentage, 0 to 100",
                    ));
                }
                Some(RetryBudget {
                    percent,
                    min_concurrency: min_retry_concurrency.map_or(3, |m| m.value),
                })
            }
        };
        one_of(
            priority,
            &[RoutingPriority::Default],
            &path.field("priority"),
        )?;
        limits = Limits {
            max_connections: u32_or(max_connections, limits.max_connections),
            max_pending_requests: u32_or(max_pending_requests, limits.max_pending_requests),
            max_requests: u32_or(max_requests, limits.max_requests),
            max_retries: u32_or(max_retries, limits.max_retries),
            retry_budget,
        };
    }
    Ok(limits)
}

fn outlier(o: OutlierDetection, path: &Path) -> Checked<Outlier> {
    let OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    // Success-rate and failure-percentage ejection are not implemented: they must be unset
    // (Envoy would apply success-rate ejection by default; isthmusd never asks for it).
    reject_set!(path; enforcing_success_rate, success_rate_minimum_hosts, success_rate_request_volume,
        success_rate_stdev_factor, split_external_local_origin_errors, consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure, enforcing_local_origin_success_rate,
        failure_percentage_threshold, enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin, failure_percentage_minimum_hosts,
        failure_percentage_request_volume, max_ejection_time_jitter,
        successful_active_health_check_uneject_host, monitors, always_eject_one_host,
        detect_degraded_hosts);
    let percent = |v: Option<_>, default, field: &str| -> Checked<u32> {
        let v = u32_or(v, default);
        if v > 100 {
            return Err(Invalid::new(&path.field(field), "a percentage"));
        }
        Ok(v)
    };
    let base = opt_duration(base_ejection_time, &path.field("base_ejection_time"))?
        .unwrap_or(Duration::from_secs(30));
    Ok(Outlier {
        consecutive_5xx: u32_or(consecutive_5xx, 5),
        enforcing_consecutive_5xx: percent(
            enforcing_consecutive_5xx,
            100,
            "enforcing_consecutive_5xx",
        )?,
        consecutive_gateway_failure: u32_or(consecutive_gateway_failure, 5),
        enforcing_consecutive_gateway_failure: percent(
            enforcing_consecutive_gateway_failure,
            0,
            "enforcing_consecutive_gateway_failure",
        )?,
        interval: opt_duration(interval, &path.field("interval"))?
            .unwrap_or(Duration::from_secs(10)),
        base_ejection_time: base,
        max_ejection_time: opt_duration(max_ejection_time, &path.field("max_ejection_time"))?
            .unwrap_or(Duration::from_secs(300))
            .max(base),
        max_ejection_percent: percent(max_ejection_percent, 10, "max_ejection_percent")?,
    })
}

fn protocol(options: HashMap<String, Any>, path: &Path) -> Checked<UpstreamProtocol> {
    let mut protocol = UpstreamProtocol {
        http: None,
        idle_timeout: None,
        max_requests_per_connection: None,
        max_concurrent_streams: None,
    };
    for (key, any) in options {
        let path = path.key(&key);
        if key != HTTP_OPTIONS {
            return Err(Invalid::new(&path, format!("only {HTTP_OPTIONS}")));
        }
        let path = path.typed("typed_config", short_type(&any));
        let HttpProtocolOptions {
            common_http_protocol_options,
            upstream_http_protocol_options,
            http_filters,
            header_validation_config,
            outlier_detection,
            request_mirror_policies,
            hash_policy,
            retry_policy,
            upstream_protocol_options,
        } = typed(&any, &path)?;
        reject_set!(path; upstream_http_protocol_options, http_filters, header_validation_config,
            outlier_detection, request_mirror_policies, hash_policy, retry_policy);
        if let Some(common) = common_http_protocol_options {
            let path = path.field("common_http_protocol_options");
            let CommonHttpOptions {
                idle_timeout,
                max_connection_duration,
                max_connection_duration_jitter,
                max_headers_count,
                max_response_headers_kb,
                max_stream_duration,
                headers_with_underscores_action,
                max_requests_per_connection,
            } = common;
            reject_set!(path; max_connection_duration, max_connection_duration_jitter, max_headers_count,
                max_response_headers_kb, max_stream_duration, headers_with_underscores_action);
            protocol.idle_timeout = opt_duration(idle_timeout, &path.field("idle_timeout"))?;
            protocol.max_requests_per_connection = max_requests_per_connection.map(|v| v.value);
        }
        use http_protocol_options::explicit_http_config::ProtocolConfig;
        let path = path.field("explicit_http_config");
        match upstream_protocol_options {
            None => {}
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                match explicit.protocol_config {
                    Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                        http1_check(h1, &path.field("http_protocol_options"))?;
                        protocol.http = Some(HttpVersion::Http1);
                    }
                    Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        protocol.max_concurrent_streams =
                            http2_streams(h2, &path.field("http2_protocol_options"))?;
                        protocol.http = Some(HttpVersion::Http2);
                    }
                    _ => return Err(Invalid::new(&path, "only HTTP/1.1 or HTTP/2")),
                }
            }
            Some(_) => return Err(Invalid::new(&path, "only explicit_http_config")),
        }
    }
    Ok(protocol)
}

pub fn http1_check(h1: Http1ProtocolOptions, path: &Path) -> Checked<bool> {
    let Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers: _,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser: _,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = h1;
    reject_set!(path; accept_http_10, default_host_for_http_10, header_key_format, allow_chunked_length,
        override_stream_error_on_invalid_http_message, send_fully_qualified_url, allow_custom_methods,
        ignore_http_11_upgrade);
    Ok(allow_absolute_url.is_some_and(|b| b.value))
}

fn http2_streams(h2: Http2ProtocolOptions, path: &Path) -> Checked<Option<u32>> {
    let Http2ProtocolOptions {
        hpack_table_size: _,
        max_concurrent_streams,
        initial_stream_window_size: _,
        initial_connection_window_size: _,
        allow_connect: _,
        allow_metadata,
        max_outbound_frames: _,
        max_outbound_control_frames: _,
        max_consecutive_inbound_frames_with_empty_payload: _,
        max_inbound_priority_frames_per_stream: _,
        max_inbound_window_update_frames_per_data_frame_sent: _,
        stream_error_on_invalid_http_messaging: _,
        override_stream_error_on_invalid_http_message: _,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec: _,
        max_metadata_size: _,
        enable_huffman_encoding: _,
        max_header_field_size_kb: _,
        disallow_obs_text: _,
        stream_reset_burst: _,
        stream_reset_rate: _,
    } = h2;
    reject_set!(path; allow_metadata, custom_settings_parameters, connection_keepalive);
    // Tuning knobs of Envoy's codec; this proxy uses its own bounded settings.
    Ok(max_concurrent_streams.map(|v| v.value))
}
