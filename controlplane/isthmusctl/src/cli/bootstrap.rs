//! `isthmusctl bootstrap envoy`: the bootstrap that makes a stock Envoy the sidecar of one
//! workload, configured only by `isthmusd` over ADS.
//!
//! The node id is Istio's `sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`;
//! node metadata carries the application's ports and the outbound listener's port (see
//! `model::workload`). With `--role federation` the Envoy is a federation gateway instead: a
//! `router~…` node with `ISTHMUS_ROLE: federation`, whose listener `isthmusd` derives from the
//! `ServiceMeshPeer` that names its workload as a gateway. Over the mTLS port, Envoy authenticates to `isthmusd` with a workload
//! certificate from `isthmusctl cert request` (files in `--tls-dir`); `isthmusd` then sends
//! configuration only for the workload that certificate names.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use isthmus_identity::TrustDomain;
use serde_json::{Value, json};

use isthmus_controlplane::daemon::control_plane_identity;

#[derive(Debug, Subcommand)]
pub enum BootstrapCommand {
    /// Write an Envoy (v3) bootstrap for the sidecar of a workload.
    Envoy(EnvoyBootstrap),
    /// Write the xDS bootstrap of a proxyless gRPC client (`GRPC_XDS_BOOTSTRAP`), for
    /// `xds:///<host>:<port>` targets.
    Grpc(GrpcBootstrap),
}

#[derive(Debug, Args)]
pub struct GrpcBootstrap {
    /// The WorkloadEntry the client application runs as.
    #[arg(long)]
    workload: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's address (the node id's IP field).
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// isthmusd's plaintext xDS address (--xds-plaintext-addr).
    #[arg(long)]
    xds_address: String,
    /// Required: the client connects without TLS to an isthmusd started with
    /// --xds-plaintext-addr (loopback only; it trusts the node id). gRPC's bootstrap cannot
    /// check isthmusd's SPIFFE identity, so there is no mTLS form yet.
    #[arg(long, required = true)]
    insecure_plaintext: bool,
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (`isthmusctl cert request`):
    /// the `default` certificate provider (file_watcher) of gRPC's xDS credentials, so that the
    /// client's calls are mTLS with that identity (the application creates its channel with
    /// xDS credentials).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

impl GrpcBootstrap {
    fn render(&self) -> anyhow::Result<Value> {
        let ns = &self.namespace;
        if self
            .xds_address
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            bail!("--xds-address {:?}: expected host:port", self.xds_address);
        }
        let mut bootstrap = json!({
            "xds_servers": [{
                "server_uri": self.xds_address,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"]
            }],
            "node": {
                "id": format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", self.address, self.workload),
                "cluster": format!("{}.{ns}", self.workload),
                "metadata": {
                    "GENERATOR": "grpc",
                    "NAMESPACE": ns,
                    "WORKLOAD_NAME": self.workload,
                },
                "locality": {}
            }
        });
        if let Some(dir) = &self.cert_dir {
            let file = |name: &str| -> anyhow::Result<String> {
                let path = dir.join(name);
                if !path.is_file() {
                    bail!(
                        "--cert-dir {}: {name} is missing (isthmusctl cert request writes it)",
                        dir.display()
                    );
                }
                Ok(path.display().to_string())
            };
            bootstrap["certificate_providers"] = json!({"default": {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": file("cert-chain.pem")?,
                    "private_key_file": file("key.pem")?,
                    "ca_certificate_file": file("root-cert.pem")?,
                    "refresh_interval": "60s"
                }
            }});
            bootstrap["node"]["metadata"]["ISTHMUS_XDS_CREDENTIALS"] = json!("true");
        }
        Ok(bootstrap)
    }
}

fn write_json(value: &Value, output: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match output {
        Some(path) => {
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
        }
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
pub struct EnvoyBootstrap {
    /// The WorkloadEntry this Envoy is the sidecar of.
    #[arg(long)]
    workload: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's address (the node id's IP field).
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// isthmusd's xDS address: its mTLS port (with --tls-dir), or the plaintext port it was
    /// started with (with --insecure-plaintext).
    #[arg(long, default_value = "127.0.0.1:15012")]
    xds_address: String,
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (`isthmusctl cert request`):
    /// connect to isthmusd over mTLS with that identity.
    #[arg(long, required_unless_present = "insecure_plaintext")]
    tls_dir: Option<PathBuf>,
    /// INSECURE, for tests: connect without TLS to an isthmusd started with
    /// --xds-plaintext-addr (it hands any local process any node's private key).
    #[arg(long, conflicts_with = "tls_dir")]
    insecure_plaintext: bool,
    /// The trust domain of isthmusd's certificate, with --tls-dir.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The namespace isthmusd runs in (its identity is …/ns/<namespace>/sa/isthmusd).
    #[arg(long, default_value = "isthmus-system")]
    ca_namespace: String,
    /// Envoy's admin port (localhost only).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The outbound HTTP listener's port (the application's HTTP proxy).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Where the application listens, per service port name or inbound port: `http=8080`.
    #[arg(long = "app-port", value_name = "NAME=PORT")]
    app_ports: Vec<String>,
    /// A local port for a TCP service: `db.shop.local:5432=15432` (repeatable).
    #[arg(long = "outbound-tcp-port", value_name = "HOST:PORT=LOCAL")]
    outbound_tcp_ports: Vec<String>,
    /// How traffic reaches the sidecar: NONE (explicit listeners) or REDIRECT (iptables
    /// capture to 15001/15006).
    #[arg(long, default_value = "NONE", value_parser = ["NONE", "REDIRECT"])]
    interception_mode: String,
    /// What the Envoy is: a workload's sidecar, a federation gateway (ingress or egress:
    /// which, `isthmusd` knows from the `ServiceMeshPeer`s that name `--workload`), or an
    /// ingress gateway (serving the Istio `Gateway`s whose selector picks the workload).
    #[arg(long, default_value = "sidecar", value_parser = ["sidecar", "federation", "ingress"])]
    role: String,
    /// Use state-of-the-world ADS instead of delta (incremental) ADS.
    #[arg(long)]
    sotw: bool,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

impl BootstrapCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Envoy(b) => write_json(&b.render()?, b.output.as_ref()),
            Self::Grpc(b) => write_json(&b.render()?, b.output.as_ref()),
        }
    }
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

impl EnvoyBootstrap {
    fn render(&self) -> anyhow::Result<Value> {
        let gateway = self.role != "sidecar";
        if gateway && !(self.app_ports.is_empty() && self.outbound_tcp_ports.is_empty()) {
            bail!(
                "--role {}: a gateway has no application (--app-port, --outbound-tcp-port are a sidecar's)",
                self.role
            );
        }
        for pair in &self.app_ports {
            match pair.split_once('=') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => bail!("--app-port {pair:?}: expected NAME=PORT"),
            }
        }
        let (host, port) = self
            .xds_address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .with_context(|| format!("--xds-address {:?}: expected host:port", self.xds_address))?;
        let ns = &self.namespace;
        let node_id = format!(
            "{}~{}~{}.{ns}~{ns}.svc.cluster.local",
            if gateway { "router" } else { "sidecar" },
            self.address,
            self.workload
        );
        let mut xds_cluster = json!({
            "name": "xds-grpc",
            "type": if host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" },
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": "xds-grpc",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}]
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }}
                }
            }
        });
        if let Some(dir) = &self.tls_dir {
            let file = |name: &str| -> anyhow::Result<String> {
                let path = dir.join(name);
                if !path.is_file() {
                    bail!(
                        "--tls-dir {}: {name} is missing (isthmusctl cert request writes it)",
                        dir.display()
                    );
                }
                Ok(path.display().to_string())
            };
            let isthmusd = control_plane_identity(&self.trust_domain, &self.ca_namespace)?;
            xds_cluster["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [{
                            "certificate_chain": {"filename": file("cert-chain.pem")?},
                            "private_key": {"filename": file("key.pem")?}
                        }],
                        "validation_context": {
                            "trusted_ca": {"filename": file("root-cert.pem")?},
                            "match_typed_subject_alt_names": [
                                {"san_type": "URI", "matcher": {"exact": isthmusd.to_string()}}
                            ]
                        }
                    }
                }
            });
        }
        let ads = json!({"ads": {}, "resource_api_version": "V3"});
        let metadata = if gateway {
            json!({
                "ISTHMUS_ROLE": "federation",
                "NAMESPACE": ns,
                "WORKLOAD_NAME": self.workload,
            })
        } else {
            json!({
                "APP_PORTS": self.app_ports.join(","),
                "OUTBOUND_PORT": self.outbound_port.to_string(),
                "INTERCEPTION_MODE": self.interception_mode,
                "OUTBOUND_TCP_PORTS": self.outbound_tcp_ports.join(","),
                "NAMESPACE": ns,
                "WORKLOAD_NAME": self.workload,
            })
        };
        Ok(json!({
            "node": {
                "id": node_id,
                "cluster": format!("{}.{ns}", self.workload),
                "metadata": metadata
            },
            "admin": {"address": socket_address("127.0.0.1", self.admin_port)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if self.sotw { "GRPC" } else { "DELTA_GRPC" },
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                    "set_node_on_first_message_only": true
                },
                "lds_config": ads,
                "cds_config": ads
            },
            "static_resources": {"clusters": [xds_cluster]}
        }))
    }
}
