//! `isthmusctl status`: the configuration in force (and why the newest change was rejected, if
//! it was), every connected proxy with its version and ACK/NACK state per xDS type, and the
//! federation peers (the stream each way) with what crosses under which name, and the virtual
//! addresses allocated to services that declare none.

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;

use super::debug_client::get_json;

#[derive(Debug, Args)]
pub struct StatusCommand {
    /// isthmusd's debug address (host:port). Without it: every mesh of the running
    /// `isthmusctl up` (its --state), else 127.0.0.1:15014.
    #[arg(long)]
    pub debug_addr: Option<String>,
    /// Show what this proxy (node id) is sent: every resource, decoded.
    #[arg(long, value_name = "NODE_ID")]
    pub dump: Option<String>,
    /// The state folder of `isthmusctl up`.
    #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = crate::runner::run_file::default_state())]
    pub state: std::path::PathBuf,
}

/// The control planes to ask: (label, debug address).
fn targets(cmd: &StatusCommand) -> Vec<(Option<String>, String)> {
    if let Some(addr) = &cmd.debug_addr {
        return vec![(None, addr.clone())];
    }
    match crate::runner::RunFile::read(&cmd.state) {
        Ok(run) => run
            .meshes
            .iter()
            .map(|m| {
                (
                    Some(format!(
                        "MESH {} ({}), isthmusd debug {}",
                        m.name, m.trust_domain, m.debug
                    )),
                    m.debug.to_string(),
                )
            })
            .collect(),
        Err(_) => vec![(None, "127.0.0.1:15014".to_owned())],
    }
}

impl StatusCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let targets = targets(&self);
        if let Some(node) = &self.dump {
            let path = format!("/debug/config_dump?proxy={}", percent_encode(node));
            let mut last = None;
            for (_, addr) in &targets {
                match get_json(addr, &path).await {
                    Ok(dump) => {
                        println!("{}", serde_json::to_string_pretty(&dump)?);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| anyhow::anyhow!("no control plane to ask")));
        }
        for (label, addr) in &targets {
            if let Some(label) = label {
                println!("== {label}");
            }
            let config = get_json(addr, "/debug/config").await?;
            let xds = get_json(addr, "/debug/xds").await?;
            print!("{}", render(&config, &xds));
            let federation = get_json(addr, "/debug/federation").await?;
            print!("{}", render_federation(&federation));
            // An isthmusd older than the allocation has no such page: nothing to list.
            if let Ok(addresses) = get_json(addr, "/debug/addresses").await {
                print!("{}", render_addresses(&addresses));
            }
            if label.is_some() {
                println!();
            }
        }
        Ok(())
    }
}

/// The report, from the two debug documents.
pub fn render(config: &Value, xds: &Value) -> String {
    let mut out = String::new();
    let counts: Vec<String> = config["resources"]
        .as_object()
        .map(|m| m.iter().map(|(kind, n)| format!("{n} {kind}")).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "CONFIG   version {} applied {}: {}",
        config["version"],
        config["appliedAt"].as_str().unwrap_or("never"),
        if counts.is_empty() {
            "no resources".to_owned()
        } else {
            counts.join(", ")
        }
    );
    for error in config["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "REJECTED {}",
            error["message"].as_str().unwrap_or_default()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<56} {:<6} {:<16} {:<17} {:<17} STATE",
        "PROXY", "XDS", "TYPE", "SENT", "ACKED"
    );
    let streams = xds["streams"].as_array().cloned().unwrap_or_default();
    if streams.is_empty() {
        let _ = writeln!(out, "(no proxy connected)");
    }
    for stream in &streams {
        let node = stream["node"].as_str().unwrap_or_default();
        let protocol = stream["protocol"].as_str().unwrap_or_default();
        for t in stream["types"].as_array().into_iter().flatten() {
            let short = t["typeUrl"]
                .as_str()
                .unwrap_or_default()
                .rsplit('.')
                .next()
                .unwrap_or_default();
            let state = match (t["nack"].as_str(), t["acked"].as_str(), t["sent"].as_str()) {
                (Some(reason), ..) => format!("NACK: {reason}"),
                (None, Some(acked), Some(sent)) if acked == sent => "ACK".to_owned(),
                (None, _, Some(_)) => "waiting for ACK".to_owned(),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<56} {:<6} {:<16} {:<17} {:<17} {state}",
                node,
                protocol,
                short,
                t["sent"].as_str().unwrap_or("-"),
                t["acked"].as_str().unwrap_or("-"),
            );
        }
    }
    let errors = xds["nodeErrors"].as_object().cloned().unwrap_or_default();
    for (node, reason) in &errors {
        let _ = writeln!(
            out,
            "{node:<56} NO CONFIG: {}",
            reason.as_str().unwrap_or_default()
        );
    }
    out
}

/// The virtual addresses isthmusd allocated (imported services, `ServiceEntry`s without
/// addresses), from `/debug/addresses`; declared ones are the configuration's own.
pub fn render_addresses(status: &Value) -> String {
    let mut out = String::new();
    let allocated: Vec<&Value> = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["allocated"] == true)
        .collect();
    if allocated.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<56} {:<16} FROM",
        "ALLOCATED ADDRESS FOR", "ADDRESS"
    );
    for service in allocated {
        let from = match service["importedFrom"].as_str() {
            Some(peer) => format!("imported from {peer}"),
            None => format!(
                "ServiceEntry in {}",
                service["namespace"].as_str().unwrap_or_default()
            ),
        };
        let _ = writeln!(
            out,
            "{:<56} {:<16} {from}",
            service["host"].as_str().unwrap_or_default(),
            service["addresses"][0].as_str().unwrap_or_default(),
        );
    }
    out
}

/// The peers (our stream to each, theirs to us) and what crosses, from `/debug/federation`.
pub fn render_federation(status: &Value) -> String {
    let mut out = String::new();
    let peers = status["serviceMeshPeers"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if peers.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<32} {:<10} {:<22} {:<22} DETAIL",
        "PEER", "DIRECTION", "STATE", "LAST FULL SYNC"
    );
    for (peer, s) in &peers {
        let pod = &s["discoveryStatus"]["active"][0];
        let watch = &pod["watch"];
        if watch.is_object() {
            let state = match (watch["connected"].as_bool(), watch["stale"].as_bool()) {
                (Some(true), _) => "connected",
                (_, Some(true)) => "disconnected (stale)",
                _ if watch["expired"] == true => "disconnected (expired)",
                _ => "disconnected",
            };
            let detail = if watch["connected"] == true {
                watch["source"].as_str().unwrap_or_default().to_owned()
            } else {
                watch["lastDisconnectStatus"]
                    .as_str()
                    .unwrap_or("never connected")
                    .to_owned()
            };
            let _ = writeln!(
                out,
                "{peer:<32} {:<10} {state:<22} {:<22} {detail}",
                "imports",
                watch["lastFullSync"].as_str().unwrap_or("-"),
            );
        }
        for remote in pod["remotes"].as_array().into_iter().flatten() {
            let state = if remote["connected"] == true {
                "connected"
            } else {
                "disconnected"
            };
            let _ = writeln!(
                out,
                "{peer:<32} {:<10} {state:<22} {:<22} {}",
                "exports",
                remote["lastFullSync"].as_str().unwrap_or("-"),
                remote["source"].as_str().unwrap_or_default(),
            );
        }
        for warning in s["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{peer:<32} WARNING {}",
                warning.as_str().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<32} {:<52} AS", "SET", "SERVICE");
    let sets = [
        ("exportedServiceSets", "exportedServices", "exported"),
        ("importedServiceSets", "importedServices", "imported"),
    ];
    for (sets_key, list_key, verb) in sets {
        for (set, s) in status[sets_key].as_object().into_iter().flatten() {
            let label = format!("{verb} {set}");
            for service in s[list_key].as_array().into_iter().flatten() {
                let local = service["localService"]["hostname"]
                    .as_str()
                    .unwrap_or_default();
                let exported = service["exportedName"].as_str().unwrap_or_default();
                let (name, as_) = if verb == "exported" {
                    (local, exported.to_owned())
                } else if local.is_empty() {
                    (
                        exported,
                        format!(
                            "not imported: {}",
                            service["reason"].as_str().unwrap_or_default()
                        ),
                    )
                } else {
                    (exported, local.to_owned())
                };
                let _ = writeln!(out, "{label:<32} {name:<52} {as_}");
            }
            for rule in s["unmatchedRules"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{label:<32} {}", rule.as_str().unwrap_or_default());
            }
            if s["stale"] == true {
                let _ = writeln!(
                    out,
                    "{label:<32} STALE: the peer's discovery stream is down"
                );
            }
            for warning in s["warnings"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{label:<32} WARNING {}",
                    warning.as_str().unwrap_or_default()
                );
            }
        }
    }
    out
}

/// Node ids contain `~` and `.`, which are fine; anything else unusual is escaped.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn allocated_addresses_are_listed_with_where_their_names_come_from() {
        let status = json!({"services": [
            {"host": "ratings.bookinfo.svc.green-imports.local", "namespace": "istio-system",
             "addresses": ["240.240.12.7"], "allocated": true, "importedFrom": "green"},
            {"host": "api.example.com", "namespace": "shop",
             "addresses": ["240.240.200.1"], "allocated": true, "importedFrom": null},
            {"host": "echo.shop.svc.cluster.local", "namespace": "shop",
             "addresses": ["10.96.0.10"], "allocated": false, "importedFrom": null},
        ]});
        let text = render_addresses(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("ALLOCATED ADDRESS FOR"), "{text}");
        assert!(
            lines[2].starts_with("ratings.bookinfo.svc.green-imports.local")
                && lines[2].contains("240.240.12.7")
                && lines[2].ends_with("imported from green"),
            "{text}"
        );
        assert!(lines[3].ends_with("ServiceEntry in shop"), "{text}");
        assert!(
            !text.contains("10.96.0.10"),
            "declared addresses are the config's: {text}"
        );
        assert_eq!(render_addresses(&json!({"services": []})), "");
    }

    #[test]
    fn federation_report_names_peer_states_and_what_crosses() {
        let status = json!({
            "serviceMeshPeers": {"istio-system/green": {"discoveryStatus": {"active": [{"pod": "x",
                "remotes": [{"source": "spiffe://green.local/ns/istio-system/sa/isthmusd", "connected": true, "lastFullSync": "t1"}],
                "watch": {"source": "10.0.0.1:8188", "connected": false, "stale": true,
                    "lastDisconnectStatus": "Unavailable: connection refused"}}]}}},
            "exportedServiceSets": {"istio-system/green": {"exportedServices": [
                {"exportedName": "a.ns.svc.green-exports.local", "localService": {"hostname": "a.ns.svc.cluster.local", "name": "a", "namespace": "ns"}}]}},
            "importedServiceSets": {"istio-system/green": {"stale": true, "unmatchedRules": ["importRules[1] (ns/c): the peer does not export a service it selects"],
                "importedServices": [
                {"exportedName": "b.ns.svc.red-exports.local", "localService": {"hostname": "b.ns.svc.green-imports.local", "name": "b", "namespace": "ns"}},
                {"exportedName": "d.ns.svc.red-exports.local", "localService": {"hostname": "", "name": "", "namespace": ""}, "reason": "no import rule selects it"}]}}
        });
        let text = render_federation(&status);
        for expected in [
            "imports    disconnected (stale)",
            "Unavailable: connection refused",
            "exports    connected",
            "a.ns.svc.cluster.local",
            "b.ns.svc.red-exports.local                           b.ns.svc.green-imports.local",
            "not imported: no import rule selects it",
            "importRules[1] (ns/c)",
            "STALE",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
    }

    #[test]
    fn report_names_rejections_and_proxy_states() {
        let config = json!({"version": 2, "appliedAt": "2026-11-23T10:00:00Z", "resources": {"VirtualService": 1},
            "errors": [{"message": "routes.yaml:9 (document 2): VirtualService ratings: spec.http[0].mirror: not supported by Isthmus"}]});
        let xds = json!({"streams": [{"node": "sidecar~a", "protocol": "sotw", "types": [
            {"typeUrl": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "sent": "v2", "acked": "v2", "nack": null},
            {"typeUrl": "type.googleapis.com/envoy.config.listener.v3.Listener", "sent": "v3", "acked": "v1", "nack": "bad filter"}]}]});
        let text = render(&config, &xds);
        assert!(
            text.contains("CONFIG   version 2 applied 2026-11-23T10:00:00Z: 1 VirtualService"),
            "{text}"
        );
        assert!(
            text.contains(
                "REJECTED routes.yaml:9 (document 2): VirtualService ratings: spec.http[0].mirror"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("Cluster") && l.ends_with("ACK")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("Listener") && l.ends_with("NACK: bad filter")),
            "{text}"
        );
    }
}
