//! Which parts of a `VirtualService` the mesh's sidecars take, by Istio's `gateways` rules.
//!
//! `spec.gateways` lists the gateways (and the reserved `mesh`: every sidecar) the routes
//! apply to; empty means `mesh`. A match's own `gateways` replaces the spec's for that match.
//! Isthmus serves no Istio `Gateway` yet, so routes bound to gateways only apply to no proxy;
//! each such gateway is named in a warning rather than accepted in silence.

use isthmus_api::networking::VirtualServiceSpec;

/// The reserved gateway name of every sidecar.
pub const MESH: &str = "mesh";

/// What the sidecars take of `spec`, or `None` when nothing applies to them, and the gateways
/// named that no proxy serves.
pub fn for_sidecars(spec: &VirtualServiceSpec) -> (Option<VirtualServiceSpec>, Vec<String>) {
    let spec_applies = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == MESH);
    let mut unserved: Vec<String> = Vec::new();
    let mut note = |gateways: &[String]| {
        for g in gateways.iter().filter(|g| *g != MESH) {
            if !unserved.contains(g) {
                unserved.push(g.clone());
            }
        }
    };
    note(&spec.gateways);
    let applies = |gateways: &[String]| {
        if gateways.is_empty() {
            spec_applies
        } else {
            gateways.iter().any(|g| g == MESH)
        }
    };
    let mut out = spec.clone();
    out.http.clear();
    for route in &spec.http {
        for m in &route.matches {
            note(&m.gateways);
        }
        if route.matches.is_empty() {
            if spec_applies {
                out.http.push(route.clone());
            }
            continue;
        }
        let mut kept = route.clone();
        kept.matches.retain(|m| applies(&m.gateways));
        if !kept.matches.is_empty() {
            out.http.push(kept);
        }
    }
    out.tcp.clear();
    for route in &spec.tcp {
        for m in &route.matches {
            note(&m.gateways);
        }
        if route.matches.is_empty() {
            if spec_applies {
                out.tcp.push(route.clone());
            }
            continue;
        }
        let mut kept = route.clone();
        kept.matches.retain(|m| applies(&m.gateways));
        if !kept.matches.is_empty() {
            out.tcp.push(kept);
        }
    }
    let any = !out.http.is_empty() || !out.tcp.is_empty();
    (any.then_some(out), unserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> VirtualServiceSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn mesh_routes_stay_and_gateway_only_routes_go_with_the_gateway_named() {
        // No gateways: everything, nothing named.
        let plain = spec("hosts: [a]\nhttp: [{route: [{destination: {host: a}}]}]");
        assert_eq!(for_sidecars(&plain), (Some(plain.clone()), vec![]));
        // Bound to a gateway only: nothing for sidecars, the gateway named.
        let edge = spec(
            "hosts: [a]\ngateways: [istio-system/public]\nhttp: [{route: [{destination: {host: a}}]}]",
        );
        assert_eq!(
            for_sidecars(&edge),
            (None, vec!["istio-system/public".to_owned()])
        );
        // Both: the routes apply to sidecars.
        let both = spec(
            "hosts: [a]\ngateways: [public, mesh]\nhttp: [{route: [{destination: {host: a}}]}]",
        );
        let (kept, named) = for_sidecars(&both);
        assert_eq!(kept.unwrap().http.len(), 1);
        assert_eq!(named, ["public"]);
        // A match's own gateways decide for that match.
        let per_match = spec(
            "hosts: [a]
http:
- match: [{uri: {prefix: /edge}, gateways: [public]}]
  route: [{destination: {host: a}}]
- match: [{uri: {prefix: /in}, gateways: [mesh]}, {uri: {prefix: /x}, gateways: [public]}]
  route: [{destination: {host: a}}]
- route: [{destination: {host: a}}]
tcp:
- match: [{port: 5432, gateways: [public]}]
  route: [{destination: {host: a}}]
",
        );
        let (kept, named) = for_sidecars(&per_match);
        let kept = kept.unwrap();
        assert_eq!(kept.http.len(), 2, "{kept:?}");
        assert_eq!(kept.http[0].matches.len(), 1);
        assert!(kept.tcp.is_empty());
        assert_eq!(named, ["public"]);
    }
}
