//! `RequestAuthentication` as Envoy's JWT filter, as Istio writes it: one provider per issuer
//! with its inline keys, and one requirement for every request, "any of the providers, or no
//! token at all". So a request without a token passes (an `AuthorizationPolicy` with
//! `requestPrincipals` decides), and a request with a token that no provider verifies gets
//! 401. A verified token's payload is kept as the filter's dynamic metadata under
//! [`PAYLOAD_KEY`], where the RBAC filters read `requestPrincipals` and `request.auth.*`.

use std::collections::HashMap;

use isthmus_api::security::JwtRule;
use isthmus_proto::envoy::envoy::config::core::v3::{DataSource, data_source};
use isthmus_proto::envoy::envoy::config::route::v3::{RouteMatch, route_match};
use isthmus_proto::envoy::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider, JwtRequirement, JwtRequirementOrList,
    RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use isthmus_proto::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use isthmus_proto::envoy::google::protobuf::Empty;

use super::pack;

/// The filter's name, which is also the namespace of its dynamic metadata.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Where a verified token's payload is kept in the filter's metadata.
pub const PAYLOAD_KEY: &str = "payload";

/// The JWT filter of a workload's inbound HTTP ports; `None` without rules.
pub fn jwt_filter(rules: &[&JwtRule]) -> Option<HttpFilter> {
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut any = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        // Validation guarantees inline keys: a rule without them has no provider.
        let Some(jwks) = &rule.jwks else {
            continue;
        };
        let name = format!("origins-{i}");
        providers.insert(
            name.clone(),
            JwtProvider {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                forward: rule.forward_original_token,
                from_headers: rule
                    .from_headers
                    .iter()
                    .map(|h| JwtHeader {
                        name: h.name.clone(),
                        value_prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: rule.from_params.clone(),
                payload_in_metadata: PAYLOAD_KEY.into(),
                jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(
                    DataSource {
                        specifier: Some(data_source::Specifier::InlineString(jwks.clone())),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        );
        any.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name)),
        });
    }
    any.push(JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
    });
    let config = JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                        JwtRequirementOrList { requirements: any },
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    })
}
