//! Per-tenant identity providers against a real OpenID provider (npm
//! `oidc-provider`, started per test): tokens obtained from its token
//! endpoint, and tokens forged with its genuine keys for the cases a real
//! issuer never produces.
#![cfg(feature = "oidc")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tenancy_core::oidc::{
    Fetch, FetchError, HttpFetch, IdentitySettings, IssuerSettings, OidcConfig, OidcVerifier,
};
use tenancy_core::{Tenant, TenantError, TenantId};
use tenancy_testkit::oidc::OidcProvider;

const API_A: &str = "https://api.a.test";
const API_B: &str = "https://api.b.test";

/// Counts fetches (to see refreshes happen, and not happen).
struct Counting {
    inner: HttpFetch,
    count: AtomicUsize,
}

#[async_trait]
impl Fetch for Counting {
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.get(url).await
    }
}

fn counting(timeout: Duration) -> Arc<Counting> {
    Arc::new(Counting {
        inner: HttpFetch::new(timeout).unwrap(),
        count: AtomicUsize::new(0),
    })
}

fn tenant(slug: &str, issuers: Vec<IssuerSettings>) -> Tenant {
    let settings = IdentitySettings::new(issuers);
    settings.validate(true).unwrap();
    let mut t = Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug);
    t.settings = json!({ "identity": settings });
    t
}

fn config() -> OidcConfig {
    OidcConfig::default()
        .allow_http_loopback(true)
        .with_leeway(Duration::ZERO)
        .with_timeout(Duration::from_secs(1))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token signed with `pem` (RS256) under `kid`.
fn forge(pem: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
}

fn claims(iss: &str, aud: &str, exp: u64) -> serde_json::Value {
    json!({"iss": iss, "aud": aud, "sub": "forged", "exp": exp, "iat": now()})
}

fn code(r: &Result<tenancy_core::identity::Principal, TenantError>) -> (u16, &'static str) {
    match r {
        Ok(_) => (200, "ok"),
        Err(e) => (e.status(), e.code()),
    }
}

async fn two_providers() -> (OidcProvider, OidcProvider) {
    let a = OidcProvider::start(&[("app-a", "secret-a")]).await.unwrap();
    let b = OidcProvider::start(&[("app-b", "secret-b")]).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_accepted_only_from_the_tenants_own_issuer() {
    let (a, b) = two_providers().await;
    let ta = tenant("tenant-a", vec![IssuerSettings::new(&a.issuer, &[API_A])]);
    let tb = tenant("tenant-b", vec![IssuerSettings::new(&b.issuer, &[API_B])]);
    let verifier = OidcVerifier::new(config()).unwrap();

    // Valid: a real token from A's token endpoint.
    let token_a = a.token("app-a", "secret-a", API_A).await.unwrap();
    let p = verifier.verify(&ta, &token_a).await.unwrap();
    // The user is namespaced by the issuer: B's provider cannot mint it.
    assert_eq!(p.user.as_str(), format!("{}#app-a", a.issuer));
    assert_eq!(p.claims["client_id"], "app-a");

    // Tenant B's issuer presented to tenant A: 403, and the other way round.
    let token_b = b.token("app-b", "secret-b", API_B).await.unwrap();
    assert_eq!(
        code(&verifier.verify(&ta, &token_b).await),
        (403, "issuer-not-trusted")
    );
    assert_eq!(
        code(&verifier.verify(&tb, &token_a).await),
        (403, "issuer-not-trusted")
    );
    assert_eq!(code(&verifier.verify(&tb, &token_b).await), (200, "ok"));
    // Twin: a tenant that trusts both issuers accepts B's token: the 403
    // above is the tenant binding, not a signature failure.
    let both = tenant(
        "both",
        vec![
            IssuerSettings::new(&a.issuer, &[API_A]),
            IssuerSettings::new(&b.issuer, &[API_B]),
        ],
    );
    assert_eq!(code(&verifier.verify(&both, &token_b).await), (200, "ok"));

    // Wrong audience: a genuine token of A for another API.
    let other_api = a
        .token("app-a", "secret-a", "https://api.other.test")
        .await
        .unwrap();
    assert_eq!(
        code(&verifier.verify(&ta, &other_api).await),
        (401, "token-invalid")
    );

    // Wrong issuer, signed with A's genuine key: not this tenant's issuer.
    let (pem, kid) = a.rs256_key().unwrap();
    let evil = forge(
        &pem,
        &kid,
        &claims("https://evil.example", API_A, now() + 600),
    );
    assert_eq!(
        code(&verifier.verify(&ta, &evil).await),
        (403, "issuer-not-trusted")
    );
    // A's issuer claimed, signed with B's key under A's kid: the signature fails.
    let (pem_b, _) = b.rs256_key().unwrap();
    let swapped = forge(&pem_b, &kid, &claims(&a.issuer, API_A, now() + 600));
    assert_eq!(
        code(&verifier.verify(&ta, &swapped).await),
        (401, "token-invalid")
    );

    // Expired (genuine key), and not yet valid.
    let expired = forge(&pem, &kid, &claims(&a.issuer, API_A, now() - 120));
    assert_eq!(
        code(&verifier.verify(&ta, &expired).await),
        (401, "token-invalid")
    );
    let mut early = claims(&a.issuer, API_A, now() + 600);
    early["nbf"] = json!(now() + 300);
    let early = forge(&pem, &kid, &early);
    assert_eq!(
        code(&verifier.verify(&ta, &early).await),
        (401, "token-invalid")
    );
    // Without exp: refused.
    let mut no_exp = claims(&a.issuer, API_A, 0);
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = forge(&pem, &kid, &no_exp);
    assert_eq!(
        code(&verifier.verify(&ta, &no_exp).await),
        (401, "token-invalid")
    );
    // Forged with the genuine key and everything right: accepted (the
    // control showing the refusals above are about the claim each changes).
    let good = forge(&pem, &kid, &claims(&a.issuer, API_A, now() + 600));
    assert_eq!(code(&verifier.verify(&ta, &good).await), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithms_are_the_tenants_choice_and_never_symmetric() {
    let (a, _b) = two_providers().await;
    let rs_only = tenant(
        "rs-only",
        vec![IssuerSettings::new(
            &a.issuer,
            &[API_A, "https://es256.a.test"],
        )],
    );
    let es_too = tenant(
        "es-too",
        vec![
            IssuerSettings::new(&a.issuer, &[API_A, "https://es256.a.test"])
                .with_algorithms(&["RS256", "ES256"]),
        ],
    );
    let verifier = OidcVerifier::new(config()).unwrap();
    // A genuine ES256 token of the tenant's own issuer.
    let es = a
        .token("app-a", "secret-a", "https://es256.a.test")
        .await
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&es).unwrap().alg,
        Algorithm::ES256
    );
    assert_eq!(
        code(&verifier.verify(&rs_only, &es).await),
        (401, "token-invalid")
    );
    assert_eq!(code(&verifier.verify(&es_too, &es).await), (200, "ok"));

    // HS256 with the issuer's public key as the secret (algorithm confusion).
    let jwks = tenancy_testkit::http::send(
        a.issuer.trim_start_matches("http://").parse().unwrap(),
        &tenancy_testkit::http::get("/jwks", &[]),
    )
    .await
    .unwrap()
    .body;
    let (_, kid) = a.rs256_key().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid);
    let confused = jsonwebtoken::encode(
        &header,
        &claims(&a.issuer, API_A, now() + 600),
        &EncodingKey::from_secret(&jwks),
    )
    .unwrap();
    assert_eq!(
        code(&verifier.verify(&es_too, &confused).await),
        (401, "token-invalid")
    );
    // `alg: none`.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(&a.issuer, API_A, now() + 600).to_string().as_bytes())
    );
    assert_eq!(
        code(&verifier.verify(&es_too, &none).await),
        (401, "token-invalid")
    );
    // Settings naming HS256 are refused outright.
    let bad = IdentitySettings::new(vec![
        IssuerSettings::new(&a.issuer, &[API_A]).with_algorithms(&["HS256"]),
    ]);
    assert!(bad.validate(true).is_err());
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_at_the_provider_is_picked_up_and_unknown_kids_cannot_hammer_it() {
    let (a, b) = two_providers().await;
    let ta = tenant("tenant-a", vec![IssuerSettings::new(&a.issuer, &[API_A])]);
    let fetch = counting(Duration::from_secs(1));
    let verifier = OidcVerifier::with_fetch(
        config()
            .with_key_lifetimes(Duration::from_secs(5), Duration::from_secs(3600))
            .with_refetch_intervals(Duration::from_secs(30), Duration::from_secs(5)),
        fetch.clone(),
    );
    let old = a.token("app-a", "secret-a", API_A).await.unwrap();
    verifier.verify(&ta, &old).await.unwrap();
    assert_eq!(fetch.count.load(Ordering::SeqCst), 2, "discovery + JWKS");
    for _ in 0..20 {
        verifier.verify(&ta, &old).await.unwrap();
    }
    assert_eq!(fetch.count.load(Ordering::SeqCst), 2, "cached");

    // Rotation mid-test: a token under the new kid re-fetches at once.
    let new_kid = a.rotate().await.unwrap();
    let new = a.token("app-a", "secret-a", API_A).await.unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(),
        Some(new_kid.as_str())
    );
    assert_eq!(code(&verifier.verify(&ta, &new).await), (200, "ok"));
    assert_eq!(fetch.count.load(Ordering::SeqCst), 4);
    // The old key is still published during the rotation.
    assert_eq!(code(&verifier.verify(&ta, &old).await), (200, "ok"));

    // Unknown kids (B's key under made-up ids): refused, and within the
    // interval no further fetch, however many are sent.
    let (pem_b, _) = b.rs256_key().unwrap();
    for i in 0..5 {
        let t = forge(
            &pem_b,
            &format!("made-up-{i}"),
            &claims(&a.issuer, API_A, now() + 600),
        );
        assert_eq!(
            code(&verifier.verify(&ta, &t).await),
            (401, "token-invalid")
        );
    }
    assert_eq!(
        fetch.count.load(Ordering::SeqCst),
        4,
        "the rotation's re-fetch counts for the interval"
    );

    // The provider retires the old key: once the cached set is refreshed
    // (5 s here), tokens under it are refused.
    a.unpublish_retired().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(
        code(&verifier.verify(&ta, &old).await),
        (401, "token-invalid")
    );
    assert_eq!(code(&verifier.verify(&ta, &new).await), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_keeps_cached_keys_until_they_expire_then_503() {
    let (mut a, _b) = two_providers().await;
    let ta = tenant("tenant-a", vec![IssuerSettings::new(&a.issuer, &[API_A])]);
    let verifier = OidcVerifier::new(
        config()
            .with_key_lifetimes(Duration::from_millis(500), Duration::from_secs(3))
            .with_refetch_intervals(Duration::from_secs(30), Duration::from_millis(200)),
    )
    .unwrap();
    let token = a.token("app-a", "secret-a", API_A).await.unwrap();
    verifier.verify(&ta, &token).await.unwrap();

    // Hanging provider: the fetch times out (1 s); cached keys still verify.
    a.pause().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    assert_eq!(code(&verifier.verify(&ta, &token).await), (200, "ok"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Down for good: until the keys expire (3 s after the last fetch)...
    a.resume().unwrap();
    a.stop().unwrap();
    assert_eq!(code(&verifier.verify(&ta, &token).await), (200, "ok"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ... then 503, never acceptance and never 500.
    let r = verifier.verify(&ta, &token).await;
    assert_eq!(code(&r), (503, "identity-provider-unavailable"));
    let problem = tenancy_core::problem::Problem::from_error(&r.unwrap_err(), None);
    assert!(problem.headers.contains(&("retry-after", "1".to_owned())));
    assert!(!problem.detail.contains("127.0.0.1"), "{}", problem.detail);

    // A verifier that never saw the keys: 503 at once.
    let cold = OidcVerifier::new(config()).unwrap();
    assert_eq!(
        code(&cold.verify(&ta, &token).await),
        (503, "identity-provider-unavailable")
    );
}
