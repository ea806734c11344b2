//! Token verification and sign-in throttling against their baselines, same
//! run.
//!
//! Run: `cargo bench -p tenancy-benches --bench identity` (no network: the
//! issuer's discovery document and key set are served from memory by a
//! `Fetch` of the bench's own, then cached as in production).
//!
//! - `verify_rs256/jsonwebtoken_decode` (**baseline**): `jsonwebtoken::decode`
//!   of an RS256 access token with the issuer's key already decoded, and the
//!   same issuer, audience and expiry checks.
//! - `verify_rs256/oidc_verifier_warm`: `OidcVerifier::verify` for the tenant
//!   trusting that issuer, key set cached: the tenant's settings read, the
//!   unverified header and issuer peeked, the key looked up by `kid`, then
//!   the same decode.
//! - `throttle/rate_check` (**baseline**): one `MemoryQuota::check_rate`
//!   (the per-tenant API rate check of the pipeline).
//! - `throttle/signin_begin_succeed`: `SignInGuard::begin` (account and
//!   client counters charged) then `succeeded` (account reset, client
//!   refunded) in memory — the sign-in limiter's whole work for one sign-in.
//!
//! The bench key (`fixtures/bench-rs256.pem`) is a throwaway RSA key used
//! for nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use tenancy_core::oidc::{
    Fetch, FetchError, IdentitySettings, IssuerSettings, OidcConfig, OidcVerifier,
};
use tenancy_core::plan::PlanCatalog;
use tenancy_core::quota::MemoryQuota;
use tenancy_core::signin::{MemoryAttempts, SignInGuard};
use tenancy_core::{Tenant, TenantContext, TenantId};

const ISSUER: &str = "https://login.bench.example";
const AUDIENCE: &str = "https://api.bench.example";
const PEM: &[u8] = include_bytes!("../fixtures/bench-rs256.pem");
const JWKS: &str = include_str!("../fixtures/bench-rs256.jwks.json");

/// Serves the discovery document and the key set from memory.
struct Static;

#[async_trait]
impl Fetch for Static {
    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        if url.ends_with("/.well-known/openid-configuration") {
            Ok(
                json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/jwks")})
                    .to_string()
                    .into_bytes(),
            )
        } else {
            Ok(JWKS.as_bytes().to_vec())
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench-1".into());
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "client-1",
        "exp": jsonwebtoken::get_current_timestamp() + 86_400,
    });
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(PEM).unwrap()).unwrap();

    let mut tenant = Tenant::new(TenantId::new_v4(), "bench".parse().unwrap(), "Bench");
    tenant.settings = json!({
        "identity": IdentitySettings::new(vec![IssuerSettings::new(ISSUER, &[AUDIENCE])])
    });
    let verifier = OidcVerifier::with_fetch(OidcConfig::default(), Arc::new(Static));
    rt.block_on(verifier.verify(&tenant, &token)).unwrap(); // warm the key cache

    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(JWKS).unwrap();
    let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);

    let mut g = c.benchmark_group("verify_rs256");
    g.bench_function("jsonwebtoken_decode", |b| {
        b.iter(|| {
            black_box(
                jsonwebtoken::decode::<Map<String, Value>>(black_box(&token), &key, &validation)
                    .unwrap(),
            )
        });
    });
    g.bench_function("oidc_verifier_warm", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(verifier.verify(&tenant, black_box(&token)))
                    .unwrap(),
            )
        });
    });
    g.finish();

    let catalog = PlanCatalog::from_json(
        r#"{"plans": [{"id": "p", "name": "P", "limits": {"api_calls": {"rate": {"per_second": 1000000000}}}}]}"#,
    )
    .unwrap();
    let ctx = TenantContext::new(tenant.clone()).with_entitlements(Arc::new(
        catalog
            .entitlements(&"p".into(), &Default::default())
            .unwrap(),
    ));
    let quota = MemoryQuota::new();
    let guard = SignInGuard::new(Arc::new(MemoryAttempts::new()));
    let ip = Some(std::net::IpAddr::from([203, 0, 113, 9]));
    let mut g = c.benchmark_group("throttle");
    g.bench_function("rate_check", |b| {
        b.iter(|| black_box(quota.check_rate(&ctx, "api_calls", 1).unwrap()));
    });
    g.bench_function("signin_begin_succeed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let attempt = guard
                    .begin(black_box("bench@example.com"), ip)
                    .await
                    .unwrap();
                attempt.succeeded().await.unwrap();
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
