//! `federation.maistra.io/v1`: `ServiceMeshPeer`, `ExportedServiceSet`, `ImportedServiceSet`,
//! with Maistra's field names and defaults.

#[cfg(feature = "crd")]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Validate;
use super::meta::{LabelSelector, Validator, is_dns_label};

/// Maistra's default discovery port on the peer's ingress address.
pub const DEFAULT_DISCOVERY_PORT: u32 = 8188;
/// Maistra's default service port on the peer's ingress address.
pub const DEFAULT_SERVICE_PORT: u32 = 15443;

resource!(
    /// A peer mesh: where its federation ingress is, which local gateways serve it, how it is
    /// authenticated. Its name is the local name for the peer.
    ServiceMeshPeer,
    ServiceMeshPeerSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "federation.maistra.io",
        version = "v1",
        kind = "ServiceMeshPeer",
        plural = "servicemeshpeers",
        shortname = "smp",
        namespaced,
        root = "KubeServiceMeshPeer",
        status = "crate::meta::WrittenStatus",
        doc = "A federated peer mesh: where to reach it and how to trust it."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMeshPeerSpec {
    pub remote: ServiceMeshPeerRemote,
    #[serde(default)]
    pub gateways: ServiceMeshPeerGateways,
    pub security: ServiceMeshPeerSecurity,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMeshPeerRemote {
    pub addresses: Vec<String>,
    /// 0 or absent: [`DEFAULT_DISCOVERY_PORT`].
    #[serde(default)]
    pub discovery_port: u32,
    /// 0 or absent: [`DEFAULT_SERVICE_PORT`].
    #[serde(default)]
    pub service_port: u32,
}

impl ServiceMeshPeerRemote {
    pub fn discovery_port(&self) -> u32 {
        if self.discovery_port == 0 {
            DEFAULT_DISCOVERY_PORT
        } else {
            self.discovery_port
        }
    }

    pub fn service_port(&self) -> u32 {
        if self.service_port == 0 {
            DEFAULT_SERVICE_PORT
        } else {
            self.service_port
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMeshPeerGateways {
    #[serde(default)]
    pub ingress: Option<LocalObjectReference>,
    #[serde(default)]
    pub egress: Option<LocalObjectReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMeshPeerSecurity {
    /// The principal the peer presents when calling us (SPIFFE ID without `spiffe://`).
    #[serde(rename = "clientID", default)]
    pub client_id: String,
    /// The peer's trust domain.
    #[serde(default)]
    pub trust_domain: String,
    /// Isthmus: the principal of the peer's control plane (SPIFFE ID without `spiffe://`), the
    /// only identity of the peer that may watch what we export to it. Default:
    /// `<trustDomain>/ns/isthmus-system/sa/isthmusd`.
    #[serde(
        rename = "controlPlaneID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub control_plane_id: String,
    /// Where the peer's root certificate is: a ConfigMap with key `root-cert.pem`.
    #[serde(default)]
    pub certificate_chain: Option<TypedLocalObjectReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TypedLocalObjectReference {
    #[serde(default)]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
}

impl Validate for ServiceMeshPeer {
    fn validate(&self, v: &mut Validator) {
        // The name appears in host names (`…svc.<peer>-imports.local`): a DNS label.
        v.check(
            is_dns_label(&self.metadata.name),
            "metadata.name",
            format!(
                "{:?} is not a DNS label; the peer name is used in host names",
                self.metadata.name
            ),
        );
        let s = &self.spec;
        v.check(
            !s.remote.addresses.is_empty(),
            "spec.remote.addresses",
            "at least one address is required",
        );
        for (field, port) in [
            ("discoveryPort", s.remote.discovery_port),
            ("servicePort", s.remote.service_port),
        ] {
            v.check(
                port <= 65535,
                format!("spec.remote.{field}"),
                format!("port {port} is not in 1-65535"),
            );
        }
        if !s.security.trust_domain.is_empty()
            && let Err(e) = isthmus_identity::TrustDomain::new(&s.security.trust_domain)
        {
            v.error("spec.security.trustDomain", e.to_string());
        }
        for (field, principal) in [
            ("clientID", &s.security.client_id),
            ("controlPlaneID", &s.security.control_plane_id),
        ] {
            if principal.is_empty() {
                continue;
            }
            match isthmus_identity::SpiffeId::parse(&format!("spiffe://{principal}")) {
                Err(e) => v.error(format!("spec.security.{field}"), e.to_string()),
                // The control plane's identity is checked against the peer's root only.
                Ok(id)
                    if field == "controlPlaneID"
                        && !s.security.trust_domain.is_empty()
                        && id.trust_domain().as_str() != s.security.trust_domain =>
                {
                    v.error(
                        format!("spec.security.{field}"),
                        format!(
                            "{principal:?} is not in the peer's trust domain {:?}",
                            s.security.trust_domain
                        ),
                    );
                }
                Ok(_) => {}
            }
        }
        if let Some(chain) = &s.security.certificate_chain {
            v.check(
                chain.kind.is_empty() || chain.kind == "ConfigMap",
                "spec.security.certificateChain.kind",
                format!("{:?}: only ConfigMap is supported", chain.kind),
            );
        }
    }
}

resource!(
    /// Which local services are offered to the peer of the same name, and under which names.
    ExportedServiceSet,
    ExportedServiceSetSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "federation.maistra.io",
        version = "v1",
        kind = "ExportedServiceSet",
        plural = "exportedservicesets",
        shortname = "ess",
        namespaced,
        root = "KubeExportedServiceSet",
        status = "crate::meta::WrittenStatus",
        doc = "The services this mesh exports to the peer of the same name."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportedServiceSetSpec {
    #[serde(default)]
    pub export_rules: Vec<ExportRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportRule {
    #[serde(rename = "type")]
    pub rule_type: RuleType,
    #[serde(default)]
    pub name_selector: Option<ServiceNameMapping>,
    #[serde(default)]
    pub label_selector: Option<ServiceLabelSelector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
pub enum RuleType {
    NameSelector,
    LabelSelector,
}

/// Matches `(namespace, name)`; `""` or `*` in a part means any. The alias renames the match;
/// an empty or `*` alias part keeps the original part.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceNameMapping {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub alias: Option<ServiceName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceName {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceLabelSelector {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub aliases: Vec<ServiceNameMapping>,
}

resource!(
    /// Which of the peer's exported services are imported here, and under which names.
    ImportedServiceSet,
    ImportedServiceSetSpec
);

#[cfg_attr(
    feature = "crd",
    derive(kube::CustomResource),
    kube(
        group = "federation.maistra.io",
        version = "v1",
        kind = "ImportedServiceSet",
        plural = "importedservicesets",
        shortname = "iss",
        namespaced,
        root = "KubeImportedServiceSet",
        status = "crate::meta::WrittenStatus",
        doc = "The services this mesh imports from the peer of the same name."
    )
)]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportedServiceSetSpec {
    #[serde(default)]
    pub domain_suffix: Option<String>,
    #[serde(default)]
    pub locality: Option<ImportedServiceLocality>,
    #[serde(default)]
    pub import_rules: Vec<ImportRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportedServiceLocality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub subzone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportRule {
    #[serde(rename = "type")]
    pub rule_type: RuleType,
    #[serde(default)]
    pub import_as_local: bool,
    #[serde(default)]
    pub domain_suffix: Option<String>,
    #[serde(default)]
    pub name_selector: Option<ServiceNameMapping>,
}

fn concrete(part: &str) -> bool {
    !part.is_empty() && part != "*"
}

impl Validate for ExportedServiceSet {
    fn validate(&self, v: &mut Validator) {
        for (i, rule) in self.spec.export_rules.iter().enumerate() {
            let path = format!("spec.exportRules[{i}]");
            match rule.rule_type {
                RuleType::NameSelector => v.check(
                    rule.name_selector.is_some(),
                    format!("{path}.nameSelector"),
                    "required for type NameSelector",
                ),
                RuleType::LabelSelector => v.check(
                    rule.label_selector.is_some(),
                    format!("{path}.labelSelector"),
                    "required for type LabelSelector",
                ),
            }
        }
    }
}

impl Validate for ImportedServiceSet {
    fn validate(&self, v: &mut Validator) {
        let s = &self.spec;
        if let Some(l) = &s.locality {
            v.check(
                (l.subzone.is_empty() || !l.zone.is_empty())
                    && (l.zone.is_empty() || !l.region.is_empty()),
                "spec.locality",
                "subzone requires zone, and zone requires region",
            );
        }
        for (i, rule) in s.import_rules.iter().enumerate() {
            let path = format!("spec.importRules[{i}]");
            v.check(
                rule.rule_type == RuleType::NameSelector,
                format!("{path}.type"),
                "imports support only NameSelector",
            );
            v.check(
                rule.name_selector.is_some(),
                format!("{path}.nameSelector"),
                "is required",
            );
            if rule.import_as_local {
                let alias_ns = rule
                    .name_selector
                    .as_ref()
                    .and_then(|n| n.alias.as_ref())
                    .map(|a| a.namespace.as_str())
                    .unwrap_or_default();
                v.check(
                    concrete(alias_ns),
                    format!("{path}.nameSelector.alias.namespace"),
                    "importAsLocal requires a concrete alias namespace",
                );
            }
        }
    }
}
