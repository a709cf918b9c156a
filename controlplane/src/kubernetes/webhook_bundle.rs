//! The admission webhooks' CA bundle: `isthmusd` serves its sidecar-injection and validation
//! webhooks with a certificate from the mesh CA, so the API server must trust the mesh root
//! when it calls them. As istiod does for its own webhooks, the [`super::leader`] Lease holder
//! keeps `webhooks[*].clientConfig.caBundle` of the named cluster-scoped
//! `admissionregistration.k8s.io/v1` `MutatingWebhookConfiguration` and
//! `ValidatingWebhookConfiguration` equal to base64 of the mesh root PEM.
//!
//! - While this replica leads, each configuration is watched by name (a kube-rs watcher with a
//!   `metadata.name` field selector: list, watch, relist after `410 Gone`, default backoff).
//!   When leadership is lost the watch is dropped; a new leader lists again and checks.
//! - Whenever any webhook's `caBundle` differs (missing, blanked, another CA's), every webhook
//!   of that configuration gets the bundle, in one replace (PUT) carrying the
//!   `resourceVersion` that was read: a JSON merge patch replaces a list whole and cannot set
//!   one field of each item, and the write must not drop a webhook someone else added
//!   meanwhile. On `409 Conflict` the object is read again and the write retried. The object
//!   is handled as JSON ([`DynamicObject`]), so fields this build's `k8s-openapi` does not
//!   know survive the write.
//! - A configuration that does not exist is logged once (warning, by name) and waited for: the
//!   watch reports it when it is created. `404` on a write means it went away meanwhile.
//! - Other errors are logged and the configuration is read and checked again after a backoff.

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use isthmus_runtime::backoff::Backoff;
use kube::api::{ApiResource, DynamicObject, PostParams, TypeMeta};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::leader::until_leading;

/// The `MutatingWebhookConfiguration` of sidecar injection.
pub const DEFAULT_INJECTOR_CONFIG: &str = "isthmus-sidecar-injector";

/// The `ValidatingWebhookConfiguration` of configuration validation.
pub const DEFAULT_VALIDATOR_CONFIG: &str = "isthmus-validator";

/// The webhook configurations whose `caBundle` `isthmusd` keeps (`None`: leave it alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfigs {
    /// The `MutatingWebhookConfiguration` (`--injector-webhook-config`).
    pub mutating: Option<String>,
    /// The `ValidatingWebhookConfiguration` (`--validator-webhook-config`).
    pub validating: Option<String>,
}

impl Default for WebhookConfigs {
    /// [`DEFAULT_INJECTOR_CONFIG`] and [`DEFAULT_VALIDATOR_CONFIG`].
    fn default() -> Self {
        Self {
            mutating: Some(DEFAULT_INJECTOR_CONFIG.to_owned()),
            validating: Some(DEFAULT_VALIDATOR_CONFIG.to_owned()),
        }
    }
}

/// The two kinds of webhook configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    Mutating,
    Validating,
}

impl WebhookKind {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Mutating => "MutatingWebhookConfiguration",
            Self::Validating => "ValidatingWebhookConfiguration",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Mutating => "mutatingwebhookconfigurations",
            Self::Validating => "validatingwebhookconfigurations",
        }
    }

    /// `admissionregistration.k8s.io/v1`, this kind.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: self.kind().into(),
            plural: self.plural().into(),
        }
    }
}

/// How the patcher paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pace {
    /// Each API call's limit.
    request_timeout: Duration,
    /// Writes of one check, rereading after each `409`.
    attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// base64 of the PEM, as a `caBundle` holds it on the wire.
pub fn ca_bundle(bundle_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(bundle_pem.as_bytes())
}

/// The webhooks of a configuration (its JSON, or its fields besides `apiVersion`, `kind` and
/// `metadata`) whose `clientConfig.caBundle` is not `bundle` (base64), by name (a webhook
/// without a name as `webhooks[i]`). A webhook without a `clientConfig` has no CA to set.
pub fn stale_webhooks(configuration: &Value, bundle: &str) -> Vec<String> {
    let Some(webhooks) = configuration.get("webhooks").and_then(Value::as_array) else {
        return Vec::new();
    };
    webhooks
        .iter()
        .enumerate()
        .filter(|(_, webhook)| {
            webhook
                .get("clientConfig")
                .filter(|c| c.is_object())
                .is_some_and(|c| c.get("caBundle").and_then(Value::as_str) != Some(bundle))
        })
        .map(|(i, webhook)| {
            webhook
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("webhooks[{i}]"), str::to_owned)
        })
        .collect()
}

/// Sets `clientConfig.caBundle` of every webhook that has a `clientConfig` to `bundle`;
/// whether anything changed.
fn set_bundles(configuration: &mut Value, bundle: &str) -> bool {
    let Some(webhooks) = configuration
        .get_mut("webhooks")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let mut changed = false;
    for webhook in webhooks {
        let Some(client) = webhook
            .get_mut("clientConfig")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if client.get("caBundle").and_then(Value::as_str) != Some(bundle) {
            client.insert("caBundle".into(), Value::String(bundle.to_owned()));
            changed = true;
        }
    }
    changed
}

/// Keeps the `caBundle` of the configurations `settings` names equal to base64 of
/// `bundle_pem` while `leader` is `true`. Runs until the `leader` watch closes.
pub async fn patch_ca_bundles(
    client: Client,
    settings: WebhookConfigs,
    bundle_pem: String,
    leader: watch::Receiver<bool>,
) {
    let bundle = ca_bundle(&bundle_pem);
    let configurations = [
        (WebhookKind::Mutating, settings.mutating),
        (WebhookKind::Validating, settings.validating),
    ];
    let keepers = configurations
        .into_iter()
        .filter_map(|(kind, name)| Some((kind, name.filter(|n| !n.is_empty())?)))
        .map(|(kind, name)| {
            keep_bundle(
                client.clone(),
                kind,
                name,
                bundle.clone(),
                leader.clone(),
                Pace::default(),
            )
        });
    let keepers: Vec<_> = keepers.collect();
    if keepers.is_empty() {
        // Nothing to keep; end with the election, as the other lease holders' tasks do.
        let mut leader = leader;
        while leader.changed().await.is_ok() {}
        return;
    }
    futures::future::join_all(keepers).await;
    tracing::info!("leader election stopped; webhook CA bundle patcher ends");
}

/// Why a term of leadership ended.
enum Term {
    /// The election stopped (its watch closed).
    Stopped,
    /// Leadership lost, or the watch ended: wait to lead again.
    Over,
}

/// One configuration, for as long as the election runs.
async fn keep_bundle(
    client: Client,
    kind: WebhookKind,
    name: String,
    bundle: String,
    mut leader: watch::Receiver<bool>,
    pace: Pace,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
    let mut keeper = Keeper {
        api,
        kind,
        name,
        bundle,
        pace,
        missing_reported: false,
    };
    loop {
        if !until_leading(&mut leader).await {
            return;
        }
        tracing::debug!(kind = kind.kind(), name = %keeper.name, "leading: watching the webhook configuration");
        match keeper.lead(&mut leader).await {
            Term::Stopped => return,
            Term::Over => {}
        }
    }
}

/// What one configuration's keeper knows.
struct Keeper {
    api: Api<DynamicObject>,
    kind: WebhookKind,
    name: String,
    /// base64 of the mesh root.
    bundle: String,
    pace: Pace,
    /// The configuration's absence was logged (once, until it appears).
    missing_reported: bool,
}

/// How a check of the configuration ended.
enum Checked {
    /// It holds the bundle (now, or already).
    Current,
    /// It does not exist.
    Missing,
}

impl Keeper {
    /// Watches the configuration and writes the bundle where it differs, while leading.
    async fn lead(&mut self, leader: &mut watch::Receiver<bool>) -> Term {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
        let mut listed = false;
        let mut retry: Option<Instant> = None;
        let mut backoff = Backoff::new(self.pace.backoff_base, self.pace.backoff_max);
        loop {
            let outcome = tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Term::Stopped;
                    }
                    if !*leader.borrow_and_update() {
                        tracing::debug!(kind = self.kind.kind(), name = %self.name, "no longer leading");
                        return Term::Over;
                    }
                    continue;
                }
                event = events.next() => match event {
                    None => return Term::Over,
                    Some(Err(e)) => {
                        tracing::warn!(kind = self.kind.kind(), name = %self.name, "watch of the webhook configuration failed, retrying: {e}");
                        continue;
                    }
                    Some(Ok(watcher::Event::Init)) => {
                        listed = false;
                        continue;
                    }
                    Some(Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object))) => {
                        listed = true;
                        self.check(object, leader).await
                    }
                    // Listed, and it was not there.
                    Some(Ok(watcher::Event::InitDone)) if !listed => Ok(Checked::Missing),
                    Some(Ok(watcher::Event::InitDone)) => continue,
                    Some(Ok(watcher::Event::Delete(_))) => Ok(Checked::Missing),
                },
                () = sleep_until(retry) => self.reread(leader).await,
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        kind = self.kind.kind(),
                        name = %self.name,
                        error = e,
                        retry_in = ?delay,
                        "cannot write the webhook configuration's caBundle"
                    );
                    retry = Some(Instant::now() + delay);
                    continue;
                }
            };
            retry = None;
            backoff.reset();
            match outcome {
                Checked::Current => self.missing_reported = false,
                Checked::Missing => self.report_missing(),
            }
        }
    }

    fn report_missing(&mut self) {
        if !self.missing_reported {
            tracing::warn!(
                kind = self.kind.kind(),
                name = %self.name,
                "the webhook configuration does not exist; its caBundle is written once it is created"
            );
            self.missing_reported = true;
        }
    }

    /// Reads the configuration and checks it (after a failure).
    async fn reread(&self, leader: &watch::Receiver<bool>) -> Result<Checked, String> {
        match self.call(self.api.get_opt(&self.name)).await? {
            Some(object) => self.check(object, leader).await,
            None => Ok(Checked::Missing),
        }
    }

    /// Writes the bundle into `object` if any webhook lacks it, while `leader` says we lead;
    /// after a `409 Conflict`, reads the configuration again and retries, up to `attempts`
    /// writes.
    async fn check(
        &self,
        mut object: DynamicObject,
        leader: &watch::Receiver<bool>,
    ) -> Result<Checked, String> {
        for _ in 0..self.pace.attempts.max(1) {
            let stale = stale_webhooks(&object.data, &self.bundle);
            // Not leading any more: the next leader checks it again.
            if stale.is_empty() || !*leader.borrow() || !set_bundles(&mut object.data, &self.bundle)
            {
                return Ok(Checked::Current);
            }
            // The server keeps the field managers; the path's type is the body's.
            object.metadata.managed_fields = None;
            object.types = Some(TypeMeta {
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: self.kind.kind().into(),
            });
            let written = self
                .call(
                    self.api
                        .replace(&self.name, &PostParams::default(), &object),
                )
                .await;
            match written {
                Ok(_) => {
                    tracing::info!(
                        kind = self.kind.kind(),
                        name = %self.name,
                        webhooks = ?stale,
                        "wrote the mesh root into the webhooks' caBundle"
                    );
                    return Ok(Checked::Current);
                }
                Err(Failure::Status(status)) if status.is_not_found() => {
                    return Ok(Checked::Missing);
                }
                Err(Failure::Status(status)) if status.is_conflict() => {
                    tracing::debug!(kind = self.kind.kind(), name = %self.name, "conflict; reading again");
                    match self.call(self.api.get_opt(&self.name)).await? {
                        Some(current) => object = current,
                        None => return Ok(Checked::Missing),
                    }
                }
                Err(other) => return Err(other.to_string()),
            }
        }
        Err(format!(
            "still conflicting after {} attempts",
            self.pace.attempts.max(1)
        ))
    }

    /// One API call, bounded by the request timeout.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.pace.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(Failure::Status(status)),
            Ok(Err(e)) => Err(Failure::Other(e.to_string())),
            Err(_) => Err(Failure::Other(format!(
                "no answer in {:?}",
                self.pace.request_timeout
            ))),
        }
    }
}

/// A failed call.
#[derive(Debug)]
enum Failure {
    Status(Box<kube::core::Status>),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{} ({})", status.message, status.code),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<Failure> for String {
    fn from(failure: Failure) -> Self {
        failure.to_string()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn configuration(bundles: &[Option<&str>]) -> Value {
        let webhooks: Vec<Value> = bundles
            .iter()
            .enumerate()
            .map(|(i, bundle)| {
                let mut client = json!({"service": {"name": "isthmusd", "namespace": "isthmus-system", "path": "/inject"}});
                if let Some(b) = bundle {
                    client["caBundle"] = json!(b);
                }
                json!({"name": format!("w{i}.isthmus.io"), "clientConfig": client, "sideEffects": "None"})
            })
            .collect();
        json!({"webhooks": webhooks})
    }

    #[test]
    fn the_bundle_is_base64_of_the_pem() {
        assert_eq!(ca_bundle("PEM\n"), "UEVNCg==");
    }

    #[test]
    fn webhooks_without_the_bundle_need_it() {
        let bundle = ca_bundle("root");
        // Missing, blank, another CA's, ours.
        let config = configuration(&[None, Some(""), Some("b3RoZXI="), Some(&bundle)]);
        assert_eq!(
            stale_webhooks(&config, &bundle),
            ["w0.isthmus.io", "w1.isthmus.io", "w2.isthmus.io"]
        );
        assert!(
            stale_webhooks(&configuration(&[Some(&bundle), Some(&bundle)]), &bundle).is_empty()
        );
        // No webhooks, or one without a clientConfig: nothing to write.
        assert!(stale_webhooks(&json!({}), &bundle).is_empty());
        assert!(stale_webhooks(&json!({"webhooks": []}), &bundle).is_empty());
        assert!(stale_webhooks(&json!({"webhooks": [{"name": "x"}]}), &bundle).is_empty());
        // A nameless webhook is named by its place.
        assert_eq!(
            stale_webhooks(&json!({"webhooks": [{"clientConfig": {}}]}), &bundle),
            ["webhooks[0]"]
        );
    }

    #[test]
    fn every_webhook_gets_the_bundle_and_nothing_else_changes() {
        let bundle = ca_bundle("root");
        let mut config = configuration(&[None, Some("b3RoZXI="), Some(&bundle)]);
        config["webhooks"][0]["rules"] = json!([{"operations": ["CREATE"]}]);
        let before = config.clone();
        assert!(set_bundles(&mut config, &bundle));
        assert!(stale_webhooks(&config, &bundle).is_empty());
        for (i, webhook) in config["webhooks"].as_array().unwrap().iter().enumerate() {
            let mut expected = before["webhooks"][i].clone();
            expected["clientConfig"]["caBundle"] = json!(bundle);
            assert_eq!(*webhook, expected);
        }
        assert!(!set_bundles(&mut config, &bundle), "already current");
    }

    #[test]
    fn both_configurations_by_default_and_an_empty_name_is_none() {
        let settings = WebhookConfigs::default();
        assert_eq!(
            settings.mutating.as_deref(),
            Some("isthmus-sidecar-injector")
        );
        assert_eq!(settings.validating.as_deref(), Some("isthmus-validator"));
        assert_eq!(
            WebhookKind::Validating.api_resource().api_version,
            "admissionregistration.k8s.io/v1"
        );
    }
}
