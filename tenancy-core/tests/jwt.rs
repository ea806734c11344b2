//! The JWT strategy: verification, algorithms, expiry, claims.
#![cfg(feature = "jwt")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;
use tenancy_core::resolve::{HeaderStrategy, JwtStrategy, ResolverChain, SimpleRequest, Strategy};
use tenancy_core::store::{InMemoryTenantStore, TenantRef};
use tenancy_core::{Tenant, TenantError, TenantId};

const SECRET: &[u8] = b"test-secret-of-reasonable-length-0123456789";
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const RSA_OTHER_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_other_private.pem");

fn hs(claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs(claims: &serde_json::Value, pem: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(pem).unwrap(),
    )
    .unwrap()
}

fn bearer(token: &str) -> SimpleRequest {
    SimpleRequest::new("/").with_header("Authorization", format!("Bearer {token}"))
}

fn claims(tenant: TenantId, exp_offset: i64) -> serde_json::Value {
    let exp = get_current_timestamp() as i64 + exp_offset;
    json!({ "sub": "user-1", "tenant_id": tenant.to_string(), "exp": exp })
}

fn code(r: Result<Option<TenantRef>, TenantError>) -> (u16, &'static str) {
    let e = r.unwrap_err();
    (e.status(), e.code())
}

#[test]
fn hs256_valid_token_names_tenant() {
    let t = TenantId::new_v4();
    let s = JwtStrategy::hs256(SECRET);
    assert_eq!(
        s.identify(&bearer(&hs(&claims(t, 300), SECRET))).unwrap(),
        Some(TenantRef::Id(t))
    );
}

#[test]
fn rs256_valid_token_names_tenant_and_wrong_key_is_refused() {
    let t = TenantId::new_v4();
    let s = JwtStrategy::rs256_pem(RSA_PUBLIC).unwrap();
    assert_eq!(
        s.identify(&bearer(&rs(&claims(t, 300), RSA_PRIVATE)))
            .unwrap(),
        Some(TenantRef::Id(t))
    );
    assert_eq!(
        code(s.identify(&bearer(&rs(&claims(t, 300), RSA_OTHER_PRIVATE)))),
        (401, "token-invalid")
    );
    assert!(JwtStrategy::rs256_pem(b"not a pem").is_err());
}

#[test]
fn refused_tokens() {
    let t = TenantId::new_v4();
    let s = JwtStrategy::hs256(SECRET);
    let b64 = |v: serde_json::Value| {
        use std::fmt::Write;
        // base64url without padding, by hand, to forge headers jsonwebtoken refuses to make.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char)
                    .unwrap();
            }
        }
        out
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(t, 300))
    );
    let cases = [
        ("alg none", alg_none),
        ("wrong secret", hs(&claims(t, 300), b"another-secret")),
        ("expired", hs(&claims(t, -3600), SECRET)),
        ("no exp", hs(&json!({"tenant_id": t.to_string()}), SECRET)),
        (
            "RS256 where HS256 expected",
            rs(&claims(t, 300), RSA_PRIVATE),
        ),
        ("garbage", "not.a.jwt".to_owned()),
        (
            "no tenant claim",
            hs(
                &json!({"sub": "u", "exp": get_current_timestamp() + 300}),
                SECRET,
            ),
        ),
        (
            "tenant claim not a string",
            hs(
                &json!({"tenant_id": 42, "exp": get_current_timestamp() + 300}),
                SECRET,
            ),
        ),
    ];
    for (name, token) in cases {
        assert_eq!(
            code(s.identify(&bearer(&token))),
            (401, "token-invalid"),
            "{name}"
        );
    }
    // A malformed tenant id inside a valid token is a malformed id.
    let bad_id = hs(
        &json!({"tenant_id": "acme", "exp": get_current_timestamp() + 300}),
        SECRET,
    );
    assert_eq!(
        code(s.identify(&bearer(&bad_id))),
        (400, "tenant-id-malformed")
    );
    let huge = "a".repeat(9 * 1024);
    assert_eq!(code(s.identify(&bearer(&huge))), (401, "token-invalid"));
}

#[test]
fn other_schemes_and_absent_header_do_not_match() {
    let s = JwtStrategy::hs256(SECRET);
    assert_eq!(s.identify(&SimpleRequest::new("/")).unwrap(), None);
    let basic = SimpleRequest::new("/").with_header("authorization", "Basic dXNlcjpwYXNz");
    assert_eq!(s.identify(&basic).unwrap(), None);
    let twice = SimpleRequest::new("/")
        .with_header("authorization", "Bearer a")
        .with_header("authorization", "Bearer b");
    assert_eq!(code(s.identify(&twice)), (400, "tenant-header-duplicated"));
}

#[test]
fn issuer_audience_and_slug_claims() {
    let s = JwtStrategy::hs256(SECRET)
        .issuer(&["https://auth.example.com"])
        .audience(&["tenancy"])
        .claim("org")
        .claim_is_slug();
    let exp = get_current_timestamp() + 300;
    let good = hs(
        &json!({"org": "acme", "iss": "https://auth.example.com", "aud": "tenancy", "exp": exp}),
        SECRET,
    );
    assert_eq!(
        s.identify(&bearer(&good)).unwrap(),
        Some(TenantRef::Slug("acme".parse().unwrap()))
    );
    let wrong_iss = hs(
        &json!({"org": "acme", "iss": "https://evil.test", "aud": "tenancy", "exp": exp}),
        SECRET,
    );
    assert_eq!(
        code(s.identify(&bearer(&wrong_iss))),
        (401, "token-invalid")
    );
    let wrong_aud = hs(
        &json!({"org": "acme", "iss": "https://auth.example.com", "aud": "other", "exp": exp}),
        SECRET,
    );
    assert_eq!(
        code(s.identify(&bearer(&wrong_aud))),
        (401, "token-invalid")
    );
}

#[tokio::test]
async fn token_tenant_that_differs_from_header_is_a_conflict() {
    let a = Tenant::new(TenantId::new_v4(), "a".parse().unwrap(), "A");
    let b = Tenant::new(TenantId::new_v4(), "b".parse().unwrap(), "B");
    let store = InMemoryTenantStore::with_tenants([a.clone(), b.clone()]).unwrap();
    let chain = ResolverChain::new()
        .with(JwtStrategy::hs256(SECRET))
        .with(HeaderStrategy::tenant_id());
    let req = bearer(&hs(&claims(a.id, 300), SECRET)).with_header("x-tenant-id", b.id.to_string());
    assert!(matches!(
        chain.resolve(&req, &store).await,
        Err(TenantError::Conflict {
            first: "jwt",
            second: "header"
        })
    ));
    let same = bearer(&hs(&claims(a.id, 300), SECRET)).with_header("x-tenant-id", a.id.to_string());
    assert_eq!(chain.resolve(&same, &store).await.unwrap().tenant.id, a.id);
}
