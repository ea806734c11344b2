//! Resolution strategies and the chain, including hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use tenancy_core::resolve::{
    CustomDomainStrategy, HeaderStrategy, PathPrefixStrategy, ResolverChain, SimpleRequest,
    StaticStrategy, Strategy, SubdomainStrategy,
};
use tenancy_core::store::{InMemoryTenantStore, TenantRef};
use tenancy_core::{Tenant, TenantError, TenantId};

fn tenant(slug: &str) -> Tenant {
    Tenant::new(TenantId::new_v4(), slug.parse().unwrap(), slug)
}

struct World {
    acme: Tenant,
    globex: Tenant,
    store: InMemoryTenantStore,
}

fn world() -> World {
    let acme = tenant("acme").with_domain("portal.acme.test".parse().unwrap());
    let globex = tenant("globex");
    let store = InMemoryTenantStore::with_tenants([acme.clone(), globex.clone()]).unwrap();
    World {
        acme,
        globex,
        store,
    }
}

fn full_chain() -> ResolverChain {
    ResolverChain::new()
        .with(HeaderStrategy::tenant_id())
        .with(PathPrefixStrategy::new("t"))
        .with(SubdomainStrategy::new("example.com".parse().unwrap()))
        .with(CustomDomainStrategy::new().exclude("example.com".parse().unwrap()))
}

#[tokio::test]
async fn each_strategy_resolves_its_tenant() {
    let w = world();
    let chain = full_chain();
    let cases: Vec<(SimpleRequest, &str)> = vec![
        (
            SimpleRequest::new("/").with_header("X-Tenant-ID", w.acme.id.to_string()),
            "header",
        ),
        (SimpleRequest::new("/t/acme/policies"), "path"),
        (
            SimpleRequest::new("/").with_host("acme.example.com:8080"),
            "subdomain",
        ),
        (
            SimpleRequest::new("/").with_host("PORTAL.acme.test."),
            "custom-domain",
        ),
    ];
    for (req, strategy) in cases {
        let got = chain.resolve(&req, &w.store).await.unwrap();
        assert_eq!(got.tenant.id, w.acme.id, "{req:?}");
        assert_eq!(got.strategy, strategy);
    }
}

#[tokio::test]
async fn agreeing_strategies_are_fine_disagreeing_ones_conflict() {
    let w = world();
    let chain = full_chain();
    let agree = SimpleRequest::new("/t/acme/x")
        .with_host("acme.example.com")
        .with_header("x-tenant-id", w.acme.id.to_string());
    let got = chain.resolve(&agree, &w.store).await.unwrap();
    assert_eq!((got.tenant.id, got.strategy), (w.acme.id, "header"));

    let conflicts = [
        (
            SimpleRequest::new("/")
                .with_host("acme.example.com")
                .with_header("x-tenant-id", w.globex.id.to_string()),
            ("header", "subdomain"),
        ),
        (
            SimpleRequest::new("/t/globex/x").with_host("acme.example.com"),
            ("path", "subdomain"),
        ),
        (
            SimpleRequest::new("/t/globex/x").with_host("portal.acme.test"),
            ("path", "custom-domain"),
        ),
    ];
    for (req, (first, second)) in conflicts {
        match chain.resolve(&req, &w.store).await {
            Err(TenantError::Conflict {
                first: f,
                second: s,
            }) => {
                assert_eq!((f, s), (first, second), "{req:?}");
            }
            other => panic!("expected conflict for {req:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn priority_order_decides_which_strategy_is_reported() {
    let w = world();
    let chain = ResolverChain::new()
        .with(SubdomainStrategy::new("example.com".parse().unwrap()))
        .with(HeaderStrategy::tenant_id());
    let req = SimpleRequest::new("/")
        .with_host("acme.example.com")
        .with_header("x-tenant-id", w.acme.id.to_string());
    assert_eq!(
        chain.resolve(&req, &w.store).await.unwrap().strategy,
        "subdomain"
    );
}

#[tokio::test]
async fn unknown_tenants_are_not_found_unregistered_domains_fall_through() {
    let w = world();
    let chain = full_chain();
    for req in [
        SimpleRequest::new("/").with_header("x-tenant-id", TenantId::new_v4().to_string()),
        SimpleRequest::new("/t/nobody/x"),
        SimpleRequest::new("/").with_host("nobody.example.com"),
    ] {
        assert!(
            matches!(
                chain.resolve(&req, &w.store).await,
                Err(TenantError::NotFound)
            ),
            "{req:?}"
        );
    }
    // An unregistered custom domain does not match: nothing named → Missing.
    let req = SimpleRequest::new("/").with_host("localhost:3000");
    assert!(matches!(
        chain.resolve(&req, &w.store).await,
        Err(TenantError::Missing)
    ));
    // ... and with a header, the header wins without conflict.
    let req = req.with_header("x-tenant-id", w.globex.id.to_string());
    assert_eq!(
        chain.resolve(&req, &w.store).await.unwrap().tenant.id,
        w.globex.id
    );
}

#[tokio::test]
async fn fallback_applies_only_when_nothing_matched() {
    let w = world();
    let chain = ResolverChain::new()
        .with(HeaderStrategy::tenant_id())
        .fallback(TenantRef::Id(w.acme.id));
    let none = SimpleRequest::new("/");
    let got = chain.resolve(&none, &w.store).await.unwrap();
    assert_eq!((got.tenant.id, got.strategy), (w.acme.id, "fallback"));
    let other = SimpleRequest::new("/").with_header("x-tenant-id", w.globex.id.to_string());
    assert_eq!(
        chain.resolve(&other, &w.store).await.unwrap().tenant.id,
        w.globex.id
    );
    let missing_fallback = ResolverChain::new().fallback(TenantRef::Id(TenantId::new_v4()));
    assert!(matches!(
        missing_fallback.resolve(&none, &w.store).await,
        Err(TenantError::NotFound)
    ));
}

#[tokio::test]
async fn static_strategy_is_single_tenant_mode() {
    let w = world();
    let chain = ResolverChain::new()
        .with(StaticStrategy::new(TenantRef::Id(w.acme.id)))
        .with(HeaderStrategy::tenant_id());
    let plain = SimpleRequest::new("/");
    assert_eq!(
        chain.resolve(&plain, &w.store).await.unwrap().tenant.id,
        w.acme.id
    );
    let other = plain.with_header("x-tenant-id", w.globex.id.to_string());
    assert!(matches!(
        chain.resolve(&other, &w.store).await,
        Err(TenantError::Conflict {
            first: "static",
            second: "header"
        })
    ));
}

#[test]
fn header_strategy_hostile_values() {
    let s = HeaderStrategy::tenant_id();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "tenant-id-malformed"),
        (b"' OR 1=1 --".to_vec(), "tenant-id-malformed"),
        (b"acme".to_vec(), "tenant-id-malformed"),
        (vec![0xff, 0xfe, 0x00], "tenant-id-malformed"),
        (vec![b'a'; 9 * 1024], "tenant-id-malformed"),
        (
            b"00000000-0000-0000-0000-000000000000".to_vec(),
            "tenant-id-malformed",
        ),
    ];
    for (value, code) in cases {
        let req = SimpleRequest::new("/").with_header("x-tenant-id", value.clone());
        let err = s.identify(&req).unwrap_err();
        assert_eq!((err.code(), err.status()), (code, 400), "{value:?}");
    }
    let id = TenantId::new_v4().to_string();
    let twice = SimpleRequest::new("/")
        .with_header("x-tenant-id", id.clone())
        .with_header("X-Tenant-Id", id);
    let err = s.identify(&twice).unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        ("tenant-header-duplicated", 400)
    );
}

#[test]
fn subdomain_strategy_host_handling() {
    let s = SubdomainStrategy::new("example.com".parse().unwrap())
        .with_base("staging.example.net".parse().unwrap());
    let slug = |h: &str| {
        s.identify(&SimpleRequest::new("/").with_host(h))
            .map(|r| match r {
                Some(TenantRef::Slug(s)) => Some(s.to_string()),
                None => None,
                Some(other) => panic!("unexpected {other:?}"),
            })
    };
    assert_eq!(slug("acme.example.com").unwrap().as_deref(), Some("acme"));
    assert_eq!(slug("ACME.EXAMPLE.COM").unwrap().as_deref(), Some("acme"));
    assert_eq!(slug("acme.example.com.").unwrap().as_deref(), Some("acme"));
    assert_eq!(
        slug("acme.example.com:443").unwrap().as_deref(),
        Some("acme")
    );
    assert_eq!(
        slug("acme.staging.example.net").unwrap().as_deref(),
        Some("acme")
    );
    assert_eq!(
        slug("xn--bcher-kva.example.com").unwrap().as_deref(),
        Some("xn--bcher-kva")
    );
    for none in [
        "example.com",
        "www.example.com",
        "API.example.com",
        "a.b.example.com",
        "evilexample.com",
        "acme.example.com.evil.test",
        "127.0.0.1:8080",
        "[::1]:8080",
    ] {
        assert_eq!(slug(none).unwrap(), None, "{none}");
    }
    for bad in [
        "bücher.example.com",
        "a_b.example.com",
        "a..example.com",
        "x.example.com:99999",
    ] {
        assert_eq!(slug(bad).unwrap_err().status(), 400, "{bad}");
    }
    let no_host = s.identify(&SimpleRequest::new("/")).unwrap();
    assert_eq!(no_host, None);
    let custom = SubdomainStrategy::new("example.com".parse().unwrap()).reserved(["status"]);
    assert!(
        custom
            .identify(&SimpleRequest::new("/").with_host("www.example.com"))
            .unwrap()
            .is_some()
    );
    assert!(
        custom
            .identify(&SimpleRequest::new("/").with_host("status.example.com"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn path_strategy_refuses_traversal_and_encoding() {
    let s = PathPrefixStrategy::new("/t/");
    for bad in [
        "/t/../admin",
        "/t/%2e%2e/admin",
        "/t/ACME/x",
        "/t//x",
        "/t/",
        "/t/acme%00/x",
        "/t/a'--/x",
    ] {
        let err = s.identify(&SimpleRequest::new(bad)).unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (400, "tenant-slug-malformed"),
            "{bad}"
        );
    }
    for none in ["/", "/t", "/tenants/acme", "/x/t/acme", ""] {
        assert_eq!(
            s.identify(&SimpleRequest::new(none)).unwrap(),
            None,
            "{none}"
        );
    }
    assert_eq!(
        s.identify(&SimpleRequest::new("/t/acme?x=1")).unwrap(),
        Some(TenantRef::Slug("acme".parse().unwrap()))
    );
}

#[test]
fn malformed_input_never_falls_back_to_a_later_strategy() {
    // A garbage header must not be "rescued" by a valid subdomain.
    let chain = full_chain();
    let req = SimpleRequest::new("/")
        .with_host("acme.example.com")
        .with_header("x-tenant-id", "garbage");
    assert_eq!(
        chain.identify(&req).unwrap_err().code(),
        "tenant-id-malformed"
    );
}

fn chain_with_everything() -> ResolverChain {
    let chain = full_chain().with(HeaderStrategy::slug("x-tenant-slug"));
    #[cfg(feature = "jwt")]
    let chain = chain.with(tenancy_core::resolve::JwtStrategy::hs256(b"secret"));
    chain
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary header bytes, hosts and paths: every strategy returns a value
    /// or a typed 4xx error; nothing panics.
    #[test]
    fn hostile_requests_never_panic(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        host in proptest::collection::vec(any::<u8>(), 0..300),
        path in ".{0,200}",
        slug_header in "[ -~]{0,80}",
        auth in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let req = SimpleRequest::new(format!("/{path}"))
            .with_host(host)
            .with_header("x-tenant-id", header)
            .with_header("x-tenant-slug", slug_header)
            .with_header("authorization", [b"Bearer ".as_slice(), &auth].concat());
        for s in chain_with_everything().strategies() {
            match s.identify(&req) {
                Ok(_) => {}
                Err(e) => prop_assert!((400..500).contains(&e.status()), "{e:?}"),
            }
        }
    }

    /// Hosts that look like real hosts: normalisation is idempotent and
    /// subdomain extraction agrees with a simple model.
    #[test]
    fn subdomain_matches_model(
        label in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        upper in any::<bool>(),
        port in proptest::option::of(1u16..),
        dot in any::<bool>(),
    ) {
        let mut host = format!("{label}.example.com");
        if upper { host = host.to_uppercase(); }
        if dot { host.push('.'); }
        if let Some(p) = port { host = format!("{host}:{p}"); }
        let s = SubdomainStrategy::new("example.com".parse().unwrap()).reserved(Vec::<String>::new());
        let got = s.identify(&SimpleRequest::new("/").with_host(host)).unwrap();
        prop_assert_eq!(got, Some(TenantRef::Slug(label.parse().unwrap())));
    }
}
