//! Custom domains over HTTP (both backends), checked against a real DNS
//! server: a hickory authoritative server for `example.test.` runs in the
//! test on loopback, the app asks it (`Security::dns_server`), and the test
//! publishes the TXT records a tenant would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use insurance_agent::app::Security;
use serde_json::json;
use tenancy_core::resolve::{CustomDomainStrategy, ResolverChain, SimpleRequest};
use tenancy_core::{TenantContext, TenantError};
use tenancy_sqlx::AuditQuery;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    a_domain_is_added_once_its_txt_record_is_published,
    only_tenant_admins_manage_domains_and_input_is_checked,
    a_domain_verified_by_one_tenant_cannot_be_taken_by_another,
);

const ZONE: &str = "example.test.";

/// An authoritative DNS server for [`ZONE`] on 127.0.0.1 (UDP and TCP on
/// one port) whose records the test adds while the app runs.
struct Dns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    serial: AtomicU32,
    _server: Server<Catalog>,
}

impl Dns {
    async fn start() -> Self {
        let origin = Name::from_ascii(ZONE).unwrap();
        let zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii("ns.example.test.").unwrap(),
            Name::from_ascii("hostmaster.example.test.").unwrap(),
            1,
            3600,
            600,
            86_400,
            0,
        );
        zone.upsert(Record::from_rdata(origin.clone(), 0, RData::SOA(soa)), 1)
            .await;
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Self {
            addr,
            zone,
            serial: AtomicU32::new(2),
            _server: server,
        }
    }

    /// Publishes a TXT record `name` = `value`.
    async fn publish(&self, name: &str, value: &str) {
        let name = Name::from_ascii(format!("{name}.")).unwrap();
        let rdata = RData::TXT(TXT::new(vec![value.to_owned()]));
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        assert!(
            self.zone
                .upsert(Record::from_rdata(name, 0, rdata), serial)
                .await
        );
    }
}

/// The app, asking `dns` for TXT records.
async fn start_with_dns(backend: Backend, dns: SocketAddr) -> App {
    let security = Security {
        dns_server: Some(dns),
        ..Security::default()
    };
    start_configured(backend, None, security).await
}

/// Which tenant a request with `Host: host` names through the tenants'
/// custom domains (the library's custom-domain strategy over the app's
/// tenant store, as a host-routed deployment resolves them).
async fn tenant_by_host(app: &App, host: &str) -> Option<String> {
    let chain = ResolverChain::new().with(CustomDomainStrategy::new());
    let request = SimpleRequest::new("/").with_host(host);
    match chain.resolve(&request, &*app.running.data.store()).await {
        Ok(resolved) => Some(resolved.tenant.slug.to_string()),
        Err(TenantError::Missing) => None,
        Err(e) => panic!("resolving {host}: {e}"),
    }
}

/// The `domains` events in the tenant's audit log, newest first:
/// (action, domain).
async fn audit_actions(app: &App, slug: &str) -> Vec<(String, String)> {
    let ctx = TenantContext::new(tenant(app, slug).await);
    let data = &app.running.data;
    let mut tx = data.begin(&ctx).await.unwrap();
    let page = data
        .audit()
        .query(&mut tx, &AuditQuery::new().limit(200))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    page.events
        .into_iter()
        .filter(|(_, e)| e.resource_type == "domains")
        .map(|(_, e)| (e.action, e.resource_id.unwrap_or_default()))
        .collect()
}

/// The whole path: challenge (201, the record to publish; asked again, the
/// same record), verify before publishing (422 `not-published`), with a
/// wrong value (422 `mismatch`), with the right one (200: the domain is the
/// tenant's, listed, names the tenant by host, audited); removal (204) ends
/// all of it.
async fn a_domain_is_added_once_its_txt_record_is_published(backend: Backend) {
    let dns = Dns::start().await;
    let app = start_with_dns(backend, dns.addr).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;

    let created = call(
        addr,
        "POST",
        "/domains",
        Some(&admin),
        Some(json!({"domain": "Portal.Example.test."})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let pending = created.json();
    assert_eq!(pending["domain"], "portal.example.test");
    assert_eq!(pending["record_type"], "TXT");
    assert_eq!(
        pending["record_name"],
        "_tenancy-challenge.portal.example.test"
    );
    let value = pending["record_value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("tenancy-verify="), "{value}");
    assert_eq!(pending["expired"], false);
    // Asked again: the same challenge, not a new token.
    let again = call(
        addr,
        "POST",
        "/domains",
        Some(&admin),
        Some(json!({"domain": "portal.example.test"})),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["record_value"], value.as_str());
    let listed = call(addr, "GET", "/domains", Some(&admin), None).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["verified"], json!([]));
    assert_eq!(listed.json()["pending"][0]["record_value"], value.as_str());

    // Not published yet.
    let verify = "/domains/portal.example.test/verify";
    let r = call(addr, "POST", verify, Some(&admin), None).await;
    assert_problem(&r, 422, "app.domain-not-verified");
    assert_eq!(r.json()["reason"], "not-published", "{}", r.text());
    assert_eq!(
        r.json()["record_name"],
        "_tenancy-challenge.portal.example.test"
    );
    assert_eq!(r.json()["record_value"], value.as_str());
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("_tenancy-challenge.portal.example.test"),
        "{}",
        r.text()
    );
    // A value that only starts with the right one is not it.
    dns.publish(
        "_tenancy-challenge.portal.example.test",
        &format!("{value}-and-more"),
    )
    .await;
    let r = call(addr, "POST", verify, Some(&admin), None).await;
    assert_problem(&r, 422, "app.domain-not-verified");
    assert_eq!(r.json()["reason"], "mismatch", "{}", r.text());
    assert_eq!(tenant_by_host(&app, "portal.example.test").await, None);

    // Published.
    dns.publish("_tenancy-challenge.portal.example.test", &value)
        .await;
    let r = call(addr, "POST", verify, Some(&admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["verified"], json!(["portal.example.test"]));
    assert_eq!(r.json()["pending"], json!([]));
    let listed = call(addr, "GET", "/domains", Some(&admin), None).await;
    assert_eq!(listed.json()["verified"], json!(["portal.example.test"]));
    assert_eq!(listed.json()["pending"], json!([]));
    // The tenant record has it, and the host now names the tenant.
    let sunrise = tenant(&app, "sunrise-insurance").await;
    assert_eq!(
        sunrise
            .domains
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["portal.example.test"]
    );
    assert_eq!(
        tenant_by_host(&app, "Portal.Example.Test:443")
            .await
            .as_deref(),
        Some("sunrise-insurance")
    );
    // Verifying again is harmless; adding it again is a conflict.
    let r = call(addr, "POST", verify, Some(&admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        addr,
        "POST",
        "/domains",
        Some(&admin),
        Some(json!({"domain": "portal.example.test"})),
    )
    .await;
    assert_problem(&r, 409, "app.conflict");

    // Removed: no longer the tenant's, no longer resolving.
    let r = call(
        addr,
        "DELETE",
        "/domains/portal.example.test",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(tenant(&app, "sunrise-insurance").await.domains.is_empty());
    assert_eq!(tenant_by_host(&app, "portal.example.test").await, None);
    let r = call(
        addr,
        "DELETE",
        "/domains/portal.example.test",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, 404, "app.not-found");

    let d = "portal.example.test".to_owned();
    assert_eq!(
        audit_actions(&app, "sunrise-insurance").await,
        vec![
            ("domain.removed".to_owned(), d.clone()),
            ("domain.verified".to_owned(), d.clone()),
            ("domain.challenged".to_owned(), d),
        ]
    );
    app.running.stop().await.unwrap();
}

/// Agents get 403 on every domain route; names that are not domains are
/// 422 naming `domain`; at most 10 challenges wait at once; a pending
/// challenge can be deleted; DNS that does not answer is 503, nothing changed.
async fn only_tenant_admins_manage_domains_and_input_is_checked(backend: Backend) {
    let dns = Dns::start().await;
    let app = start_with_dns(backend, dns.addr).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let doc = call(addr, "GET", "/openapi.json", None, None).await.json();
    for (path, method) in [
        ("/domains", "get"),
        ("/domains", "post"),
        ("/domains/{domain}/verify", "post"),
        ("/domains/{domain}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }

    let body = json!({"domain": "agent.example.test"});
    for (method, path, body) in [
        ("GET", "/domains", None),
        ("POST", "/domains", Some(body)),
        ("POST", "/domains/agent.example.test/verify", None),
        ("DELETE", "/domains/agent.example.test", None),
    ] {
        let r = call(addr, method, path, Some(&agent), body).await;
        assert_problem(&r, 403, "app.forbidden");
    }

    // 245 characters: a valid name, too long for `_tenancy-challenge.<domain>`.
    let long = format!(
        "{}.{}.example.test",
        vec!["a".repeat(63); 3].join("."),
        "b".repeat(40)
    );
    assert_eq!(long.len(), 245);
    for bad in [
        "not a domain",
        "",
        "localhost",
        "127.0.0.1",
        "*.example.test",
        "ex_ample.test",
        long.as_str(),
    ] {
        let r = call(
            addr,
            "POST",
            "/domains",
            Some(&admin),
            Some(json!({ "domain": bad })),
        )
        .await;
        assert_problem(&r, 422, "app.invalid");
        assert_eq!(r.json()["field"], "domain", "{bad:?}: {}", r.text());
    }
    let r = call(
        addr,
        "POST",
        "/domains",
        Some(&admin),
        Some(json!({"domain": "a.example.test", "owner": "x"})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());

    // Ten pending at most; deleting one makes room.
    for n in 0..10 {
        let r = call(
            addr,
            "POST",
            "/domains",
            Some(&admin),
            Some(json!({ "domain": format!("d{n}.example.test") })),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let eleventh = json!({"domain": "d10.example.test"});
    let r = call(
        addr,
        "POST",
        "/domains",
        Some(&admin),
        Some(eleventh.clone()),
    )
    .await;
    assert_problem(&r, 409, "app.conflict");
    let r = call(
        addr,
        "DELETE",
        "/domains/d0.example.test",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(addr, "POST", "/domains", Some(&admin), Some(eleventh)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let listed = call(addr, "GET", "/domains", Some(&admin), None)
        .await
        .json();
    assert_eq!(listed["pending"].as_array().unwrap().len(), 10, "{listed}");

    // No pending challenge for this one.
    let r = call(
        addr,
        "POST",
        "/domains/never.example.test/verify",
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, 404, "app.not-found");

    // The DNS server goes away: 503 with Retry-After, nothing changed.
    let value = listed["pending"][0]["record_value"]
        .as_str()
        .unwrap()
        .to_owned();
    let domain = listed["pending"][0]["domain"].as_str().unwrap().to_owned();
    dns.publish(&format!("_tenancy-challenge.{domain}"), &value)
        .await;
    drop(dns);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = call(
        addr,
        "POST",
        &format!("/domains/{domain}/verify"),
        Some(&admin),
        None,
    )
    .await;
    assert_problem(&r, 503, "app.unavailable");
    assert!(r.header("retry-after").is_some(), "{}", r.text());
    assert!(tenant(&app, "sunrise-insurance").await.domains.is_empty());
    app.running.stop().await.unwrap();
}

/// Two tenants start on the same domain. Sunrise publishes its token and
/// verifies first. Asha can no longer start a challenge for it (409); its
/// pending challenge fails against Sunrise's record (422 `mismatch`); and
/// when Asha publishes its own token as well, the store refuses to give it
/// a domain another tenant has (409): the domain stays Sunrise's.
async fn a_domain_verified_by_one_tenant_cannot_be_taken_by_another(backend: Backend) {
    let dns = Dns::start().await;
    let app = start_with_dns(backend, dns.addr).await;
    let addr = app.running.addr;
    let sunrise = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let asha = login(addr, "asha@asha.test", "asha-agency").await;
    let shop = json!({"domain": "shop.example.test"});
    let record = "_tenancy-challenge.shop.example.test";

    let mine = call(addr, "POST", "/domains", Some(&sunrise), Some(shop.clone())).await;
    assert_eq!(mine.status, 201, "{}", mine.text());
    let theirs = call(addr, "POST", "/domains", Some(&asha), Some(shop.clone())).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text());
    let mine = mine.json()["record_value"].as_str().unwrap().to_owned();
    let theirs = theirs.json()["record_value"].as_str().unwrap().to_owned();
    assert_ne!(mine, theirs, "each tenant has its own token");

    dns.publish(record, &mine).await;
    let r = call(
        addr,
        "POST",
        "/domains/shop.example.test/verify",
        Some(&sunrise),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Claimed elsewhere: no new challenge.
    let r = call(addr, "POST", "/domains", Some(&asha), Some(shop)).await;
    assert_problem(&r, 409, "app.conflict");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("another tenant"),
        "{}",
        r.text()
    );
    // Sunrise's record is not Asha's token.
    let r = call(
        addr,
        "POST",
        "/domains/shop.example.test/verify",
        Some(&asha),
        None,
    )
    .await;
    assert_problem(&r, 422, "app.domain-not-verified");
    assert_eq!(r.json()["reason"], "mismatch", "{}", r.text());
    // Asha's own token published beside it: DNS now says yes, the store
    // still says no.
    dns.publish(record, &theirs).await;
    let r = call(
        addr,
        "POST",
        "/domains/shop.example.test/verify",
        Some(&asha),
        None,
    )
    .await;
    assert_problem(&r, 409, "tenant.unique");
    assert!(tenant(&app, "asha-agency").await.domains.is_empty());
    assert_eq!(
        tenant(&app, "sunrise-insurance")
            .await
            .domains
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["shop.example.test"]
    );
    assert_eq!(
        tenant_by_host(&app, "shop.example.test").await.as_deref(),
        Some("sunrise-insurance")
    );
    assert!(
        !audit_actions(&app, "asha-agency")
            .await
            .iter()
            .any(|(action, _)| action == "domain.verified"),
        "no verification recorded for Asha"
    );
    app.running.stop().await.unwrap();
}
