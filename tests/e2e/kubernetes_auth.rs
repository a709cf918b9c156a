//! Kubernetes mode's caller authentication: `TokenReviewAuthenticator` with a real kube-rs
//! client against the test API server (`support/test_api_server.rs`), alone and behind the
//! CA's gRPC service: service-account tokens for the audience `isthmus-ca` get their workload
//! identity, everything else is refused with its reason, positive reviews are cached, and an
//! unreachable API server is `UNAVAILABLE`, not a refusal.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use isthmus_controlplane::auth::token_review::{AUDIENCE, TokenReviewAuthenticator};
use isthmus_controlplane::auth::{AuthError, Authenticator, CallerAuthenticator};
use isthmus_controlplane::ca::authority::{Authority, TtlPolicy};
use isthmus_controlplane::ca::material::CaMaterial;
use isthmus_controlplane::ca::metrics::{CaMetrics, RefusalLabels};
use isthmus_controlplane::ca::service::CaService;
use isthmus_e2e::test_api_server::TestApiServer;
use isthmus_identity::pem::certs_from_pem;
use isthmus_identity::{CertInfo, SpiffeId, TrustDomain, generate_csr};
use isthmus_proto::ca::CreateCertificateRequest;
use isthmus_proto::ca::certificate_service_server::CertificateService;

const SA_TOKEN: &str = "sa-token-ratings";
const SA_USER: &str = "system:serviceaccount:bookinfo:ratings";
const SA_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:bookinfo",
    "system:authenticated",
];
const RATINGS: &str = "spiffe://red.local/ns/bookinfo/sa/ratings";

/// A hang guard only: every review answers in milliseconds.
const GUARD: Duration = Duration::from_secs(20);

fn td() -> TrustDomain {
    TrustDomain::new("red.local").unwrap()
}

/// A real kube-rs client of the cluster at `url` (plain HTTP, no credentials).
fn kube_client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn authenticator(server: &TestApiServer) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(kube_client(&server.url()), td())
}

async fn authenticate(auth: &impl Authenticator, token: &str) -> Result<SpiffeId, AuthError> {
    tokio::time::timeout(GUARD, auth.authenticate(token.to_owned()))
        .await
        .expect("an answer within the guard")
}

/// How many TokenReviews the server received.
fn reviews(server: &TestApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|(method, path)| {
            method == "POST" && path.starts_with("/apis/authentication.k8s.io/v1/tokenreviews")
        })
        .count()
}

/// An address nothing listens on.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn service_account_token_for_the_ca_audience_gets_its_workload_identity() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    let auth = authenticator(&server);

    let id = authenticate(&auth, SA_TOKEN).await.unwrap();
    assert_eq!(id.to_string(), RATINGS);
    assert_eq!(reviews(&server), 1);

    // A token bound to several audiences, ours among them.
    server.add_token_with_audiences(
        "sa-token-both",
        "system:serviceaccount:shop:cart",
        SA_GROUPS,
        &["https://kubernetes.default.svc.cluster.local", AUDIENCE],
    );
    let id = authenticate(&auth, "sa-token-both").await.unwrap();
    assert_eq!(id.to_string(), "spiffe://red.local/ns/shop/sa/cart");
}

#[tokio::test]
async fn a_second_call_is_served_from_the_cache() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    let auth = authenticator(&server);

    assert_eq!(
        authenticate(&auth, SA_TOKEN).await.unwrap().to_string(),
        RATINGS
    );
    assert_eq!(reviews(&server), 1);
    // The same token again, also through a clone (the daemon's services share one cache).
    assert_eq!(
        authenticate(&auth, SA_TOKEN).await.unwrap().to_string(),
        RATINGS
    );
    assert_eq!(
        authenticate(&auth.clone(), SA_TOKEN)
            .await
            .unwrap()
            .to_string(),
        RATINGS
    );
    assert_eq!(reviews(&server), 1, "{:?}", server.requests());

    // Another token is reviewed on its own.
    server.add_token_with_audiences(
        "sa-token-2",
        "system:serviceaccount:a:b",
        SA_GROUPS,
        &[AUDIENCE],
    );
    authenticate(&auth, "sa-token-2").await.unwrap();
    assert_eq!(reviews(&server), 2);

    // Without a cache every call is a review.
    let uncached = authenticator(&server).with_cache(Duration::ZERO, 0);
    authenticate(&uncached, SA_TOKEN).await.unwrap();
    authenticate(&uncached, SA_TOKEN).await.unwrap();
    assert_eq!(reviews(&server), 4);
}

#[tokio::test]
async fn cached_reviews_expire() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    let auth = authenticator(&server).with_cache(Duration::from_secs(1), 16);
    authenticate(&auth, SA_TOKEN).await.unwrap();
    authenticate(&auth, SA_TOKEN).await.unwrap();
    assert_eq!(reviews(&server), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    authenticate(&auth, SA_TOKEN).await.unwrap();
    assert_eq!(reviews(&server), 2);
}

#[tokio::test]
async fn a_user_that_is_not_a_service_account_is_refused() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(
        "admin-token",
        "kubernetes-admin",
        &["system:masters", "system:authenticated"],
        &[AUDIENCE],
    );
    let auth = authenticator(&server);
    for _ in 0..2 {
        match authenticate(&auth, "admin-token").await {
            Err(e @ AuthError::NotServiceAccount { .. }) => {
                assert!(e.to_string().contains("kubernetes-admin"), "{e}");
                assert_eq!(e.reason(), "not_service_account");
                assert_eq!(e.code(), tonic::Code::Unauthenticated);
            }
            other => panic!("{other:?}"),
        }
    }
    // Refusals are not cached.
    assert_eq!(reviews(&server), 2);
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let server = TestApiServer::start().await.unwrap();
    // Bound to the API server's own audience only (a pod's default token).
    server.add_token(SA_TOKEN, SA_USER, SA_GROUPS);
    let auth = authenticator(&server);
    match authenticate(&auth, SA_TOKEN).await {
        Err(e @ AuthError::Rejected { .. }) => {
            assert!(e.to_string().contains("audience"), "{e}");
            assert_eq!(e.reason(), "token_rejected");
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        other => panic!("{other:?}"),
    }
    server.add_token_with_audiences("other-audience", SA_USER, SA_GROUPS, &["vault"]);
    assert!(matches!(
        authenticate(&auth, "other-audience").await,
        Err(AuthError::Rejected { .. })
    ));
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_not_remembered() {
    let server = TestApiServer::start().await.unwrap();
    let auth = authenticator(&server);
    match authenticate(&auth, SA_TOKEN).await {
        Err(e @ AuthError::Rejected { .. }) => {
            assert!(e.to_string().contains("invalid bearer token"), "{e}");
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        other => panic!("{other:?}"),
    }
    // The token becomes valid (a pod created meanwhile): the refusal was not cached.
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    assert_eq!(
        authenticate(&auth, SA_TOKEN).await.unwrap().to_string(),
        RATINGS
    );
    assert_eq!(reviews(&server), 2);
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable() {
    let auth = TokenReviewAuthenticator::new(kube_client(&closed_url()), td());
    for _ in 0..2 {
        match authenticate(&auth, SA_TOKEN).await {
            Err(e @ AuthError::ApiServer(_)) => {
                assert_eq!(e.code(), tonic::Code::Unavailable);
                assert_eq!(e.reason(), "token_review_failed");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn an_api_server_going_away_is_unavailable_and_cached_reviews_outlive_it() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    server.add_token_with_audiences(
        "sa-token-2",
        "system:serviceaccount:a:b",
        SA_GROUPS,
        &[AUDIENCE],
    );
    let auth = authenticator(&server);
    authenticate(&auth, SA_TOKEN).await.unwrap();
    drop(server);
    // Let the aborted server task go, and its connections with it.
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(
        authenticate(&auth, SA_TOKEN).await.unwrap().to_string(),
        RATINGS
    );
    match authenticate(&auth, "sa-token-2").await {
        Err(e @ AuthError::ApiServer(_)) => assert_eq!(e.code(), tonic::Code::Unavailable),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_api_server_times_out_as_unavailable() {
    // Accepts connections (the kernel's backlog) but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let auth = TokenReviewAuthenticator::new(kube_client(&url), td())
        .with_timeout(Duration::from_millis(300));
    match authenticate(&auth, SA_TOKEN).await {
        Err(e @ AuthError::ApiServer(_)) => {
            assert!(e.to_string().contains("timed out"), "{e}");
            assert_eq!(e.code(), tonic::Code::Unavailable);
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
}

/// The CA's gRPC service with the Kubernetes authenticator, as the daemon wires it.
struct Ca {
    service: CaService<CallerAuthenticator>,
    metrics: CaMetrics,
    _state: tempfile::TempDir,
}

impl Ca {
    fn new(url: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let material = CaMaterial::load_or_generate(state.path(), &td()).unwrap();
        let authority = Authority::new(td(), material, TtlPolicy::default()).unwrap();
        let metrics = CaMetrics::default();
        let auth = TokenReviewAuthenticator::new(kube_client(url), td());
        let service = CaService::new(
            Arc::new(authority),
            CallerAuthenticator::Kubernetes(auth),
            metrics.clone(),
        );
        Self {
            service,
            metrics,
            _state: state,
        }
    }

    async fn request(&self, token: &str, id: &str) -> Result<String, tonic::Status> {
        let csr = generate_csr(&SpiffeId::parse(id).unwrap()).unwrap();
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr: csr.csr_pem,
            validity_seconds: 0,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let response = tokio::time::timeout(GUARD, self.service.create_certificate(request))
            .await
            .expect("an answer within the guard")?;
        Ok(response.into_inner().cert_chain.join(""))
    }

    fn refused(&self, reason: &str) -> u64 {
        self.metrics
            .refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
            })
            .get()
    }
}

#[tokio::test]
async fn the_ca_issues_to_service_accounts_and_refuses_the_rest() {
    let server = TestApiServer::start().await.unwrap();
    server.add_token_with_audiences(SA_TOKEN, SA_USER, SA_GROUPS, &[AUDIENCE]);
    server.add_token("default-token", SA_USER, SA_GROUPS);
    let ca = Ca::new(&server.url());

    let chain = ca.request(SA_TOKEN, RATINGS).await.unwrap();
    let certs = certs_from_pem(chain.as_bytes(), "the issued chain").unwrap();
    let info = CertInfo::parse(&certs[0]).unwrap();
    assert_eq!(info.uri_sans, vec![RATINGS.to_owned()]);

    // Entitled to its own identity only.
    let status = ca
        .request(SA_TOKEN, "spiffe://red.local/ns/bookinfo/sa/reviews")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let status = ca.request("default-token", RATINGS).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("audience"), "{status:?}");
    let status = ca.request("nobody", RATINGS).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(ca.refused("token_rejected"), 2);
    // Two certificates for the same token, one review.
    assert_eq!(reviews(&server), 3);
}

#[tokio::test]
async fn the_ca_is_unavailable_while_the_api_server_is() {
    let ca = Ca::new(&closed_url());
    let status = ca.request(SA_TOKEN, RATINGS).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(ca.refused("token_review_failed"), 1);
}
