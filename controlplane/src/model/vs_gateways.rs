//! Which parts of a `VirtualService` each proxy takes, by Istio's `gateways` rules.
//!
//! `spec.gateways` lists the gateways (and the reserved `mesh`: every sidecar) the routes
//! apply to; empty means `mesh`. A match's own `gateways` replaces the spec's for that match.
//! A gateway is named `<namespace>/<name>`, or `<name>` in the `VirtualService`'s namespace.
//! Ingress gateways (`router` nodes selected by a `Gateway`) take what is bound to their
//! `Gateway`; sidecars take what is bound to `mesh`.

use isthmus_api::networking::VirtualServiceSpec;

/// The reserved gateway name of every sidecar.
pub const MESH: &str = "mesh";

/// A gateway reference as a `VirtualService` in `namespace` writes it, resolved to
/// `<namespace>/<name>`; `mesh` stays `mesh`.
pub fn resolve(namespace: &str, reference: &str) -> String {
    if reference == MESH || reference.contains('/') {
        reference.to_owned()
    } else {
        format!("{namespace}/{reference}")
    }
}

/// What the sidecars take of `spec`, or `None` when nothing applies to them, and the gateways
/// named (other than `mesh`), resolved.
pub fn for_sidecars(
    namespace: &str,
    spec: &VirtualServiceSpec,
) -> (Option<VirtualServiceSpec>, Vec<String>) {
    let mut named: Vec<String> = Vec::new();
    let mut note = |gateways: &[String]| {
        for g in gateways.iter().filter(|g| *g != MESH) {
            let g = resolve(namespace, g);
            if !named.contains(&g) {
                named.push(g);
            }
        }
    };
    note(&spec.gateways);
    for m in spec.http.iter().flat_map(|r| &r.matches) {
        note(&m.gateways);
    }
    for m in spec.tcp.iter().flat_map(|r| &r.matches) {
        note(&m.gateways);
    }
    for m in spec.tls.iter().flat_map(|r| &r.matches) {
        note(&m.gateways);
    }
    (bound_to(namespace, spec, MESH), named)
}

/// What the proxies serving `gateway` (`<namespace>/<name>`, or `mesh`) take of `spec`, or
/// `None` when nothing applies to them.
pub fn bound_to(
    namespace: &str,
    spec: &VirtualServiceSpec,
    gateway: &str,
) -> Option<VirtualServiceSpec> {
    let names = |gateways: &[String]| gateways.iter().any(|g| resolve(namespace, g) == gateway);
    let spec_applies = if spec.gateways.is_empty() {
        gateway == MESH
    } else {
        names(&spec.gateways)
    };
    let applies = |gateways: &[String]| {
        if gateways.is_empty() {
            spec_applies
        } else {
            names(gateways)
        }
    };
    let mut out = spec.clone();
    out.http = keep(
        &spec.http,
        spec_applies,
        |r| &r.matches,
        |r| &mut r.matches,
        |m| applies(&m.gateways),
    );
    out.tcp = keep(
        &spec.tcp,
        spec_applies,
        |r| &r.matches,
        |r| &mut r.matches,
        |m| applies(&m.gateways),
    );
    out.tls = keep(
        &spec.tls,
        spec_applies,
        |r| &r.matches,
        |r| &mut r.matches,
        |m| applies(&m.gateways),
    );
    let any = !out.http.is_empty() || !out.tcp.is_empty() || !out.tls.is_empty();
    any.then_some(out)
}

/// The routes that apply: those without matches when the spec applies, and those with at
/// least one match that applies (keeping only such matches).
fn keep<R: Clone, M>(
    routes: &[R],
    spec_applies: bool,
    matches: impl Fn(&R) -> &Vec<M>,
    matches_mut: impl Fn(&mut R) -> &mut Vec<M>,
    applies: impl Fn(&M) -> bool,
) -> Vec<R> {
    let mut out = Vec::new();
    for route in routes {
        if matches(route).is_empty() {
            if spec_applies {
                out.push(route.clone());
            }
            continue;
        }
        let mut kept = route.clone();
        matches_mut(&mut kept).retain(&applies);
        if !matches(&kept).is_empty() {
            out.push(kept);
        }
    }
    out
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
        assert_eq!(
            for_sidecars("default", &plain),
            (Some(plain.clone()), vec![])
        );
        // Bound to a gateway only: nothing for sidecars, the gateway named.
        let edge = spec(
            "hosts: [a]\ngateways: [istio-system/public]\nhttp: [{route: [{destination: {host: a}}]}]",
        );
        assert_eq!(
            for_sidecars("default", &edge),
            (None, vec!["istio-system/public".to_owned()])
        );
        // Both: the routes apply to sidecars.
        let both = spec(
            "hosts: [a]\ngateways: [public, mesh]\nhttp: [{route: [{destination: {host: a}}]}]",
        );
        let (kept, named) = for_sidecars("default", &both);
        assert_eq!(kept.unwrap().http.len(), 1);
        assert_eq!(named, ["default/public"]);
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
        let (kept, named) = for_sidecars("default", &per_match);
        let kept = kept.unwrap();
        assert_eq!(kept.http.len(), 2, "{kept:?}");
        assert_eq!(kept.http[0].matches.len(), 1);
        assert!(kept.tcp.is_empty());
        assert_eq!(named, ["default/public"]);
        // The gateway's own share: the matches bound to it.
        let edge_part = bound_to("default", &per_match, "default/public").unwrap();
        assert_eq!(edge_part.http.len(), 2, "{edge_part:?}");
        assert_eq!(edge_part.http[0].matches.len(), 1);
        assert_eq!(edge_part.tcp.len(), 1);
        assert!(bound_to("default", &per_match, "other/public").is_none());
    }
}
