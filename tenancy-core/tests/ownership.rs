//! Custom-domain ownership through real DNS: a hickory authoritative server
//! for `example.test.` runs in the test on loopback (UDP and TCP), and
//! `HickoryTxtResolver::with_nameserver` asks it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tenancy_core::DomainName;
use tenancy_core::ownership::{
    self, CHALLENGE_TTL, DomainChallenge, HickoryTxtResolver, OwnershipError, TxtResolver,
};

const ZONE: &str = "example.test.";

/// An authoritative DNS server for [`ZONE`] on 127.0.0.1 (UDP and TCP on
/// one port) whose records the test changes while it runs.
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
        // UDP and TCP on the same port: retry if TCP finds the port taken.
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

    fn resolver(&self) -> HickoryTxtResolver {
        HickoryTxtResolver::with_nameserver(self.addr).unwrap()
    }

    /// Adds a TXT record at `name` made of these character-strings.
    async fn txt(&self, name: &str, parts: &[&str]) {
        let rdata = RData::TXT(TXT::new(parts.iter().map(|p| (*p).to_owned()).collect()));
        self.add(Record::from_rdata(fqdn(name), 0, rdata)).await;
    }

    async fn add(&self, record: Record) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        assert!(self.zone.upsert(record, serial).await, "record not added");
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap()
}

fn challenge(domain: &str) -> DomainChallenge {
    DomainChallenge::new(DomainName::parse(domain).unwrap()).unwrap()
}

#[tokio::test]
async fn the_published_token_verifies_through_real_dns() {
    let dns = Dns::start().await;
    let c = challenge("portal.example.test");
    assert_eq!(c.record_name(), "_tenancy-challenge.portal.example.test");
    dns.txt(&c.record_name(), &[&c.expected_value()]).await;
    ownership::verify(&c, &dns.resolver()).await.unwrap();
    // Other TXT records beside it (another challenge, an SPF-like value)
    // do not get in the way.
    dns.txt(&c.record_name(), &["tenancy-verify=someone-else"])
        .await;
    dns.txt(&c.record_name(), &["v=spf1 -all"]).await;
    ownership::verify(&c, &dns.resolver()).await.unwrap();
}

#[tokio::test]
async fn another_challenges_token_is_a_mismatch() {
    let dns = Dns::start().await;
    let mine = challenge("portal.example.test");
    let other = challenge("portal.example.test");
    dns.txt(&other.record_name(), &[&other.expected_value()])
        .await;
    let err = ownership::verify(&mine, &dns.resolver()).await.unwrap_err();
    assert_eq!(
        err,
        OwnershipError::Mismatch {
            record: "_tenancy-challenge.portal.example.test".into()
        }
    );
    assert!(
        err.to_string()
            .contains("_tenancy-challenge.portal.example.test"),
        "{err}"
    );
}

#[tokio::test]
async fn no_record_is_not_published_and_says_what_to_publish() {
    let dns = Dns::start().await;
    let c = challenge("portal.example.test");
    // The name does not exist at all (NXDOMAIN).
    let err = ownership::verify(&c, &dns.resolver()).await.unwrap_err();
    assert_eq!(
        err,
        OwnershipError::NotPublished {
            record: c.record_name()
        }
    );
    assert!(err.to_string().contains(&c.record_name()), "{err}");
    // The name exists with other types only (NODATA): still not published.
    dns.add(Record::from_rdata(
        fqdn(&c.record_name()),
        0,
        RData::A(A::new(127, 0, 0, 1)),
    ))
    .await;
    assert!(matches!(
        ownership::verify(&c, &dns.resolver()).await,
        Err(OwnershipError::NotPublished { .. })
    ));
}

#[tokio::test]
async fn the_right_value_at_the_domain_itself_is_not_published() {
    let dns = Dns::start().await;
    let c = challenge("portal.example.test");
    // The value is right, the name is not: only `_tenancy-challenge.` counts.
    dns.txt("portal.example.test", &[&c.expected_value()]).await;
    dns.txt("example.test", &[&c.expected_value()]).await;
    assert_eq!(
        ownership::verify(&c, &dns.resolver()).await,
        Err(OwnershipError::NotPublished {
            record: c.record_name()
        })
    );
}

#[tokio::test]
async fn a_stale_challenge_is_expired_even_when_published() {
    let dns = Dns::start().await;
    let mut c = challenge("portal.example.test");
    dns.txt(&c.record_name(), &[&c.expected_value()]).await;
    c.created_at = chrono::Utc::now() - CHALLENGE_TTL - chrono::Duration::seconds(1);
    assert!(c.is_expired_at(chrono::Utc::now()));
    assert_eq!(
        ownership::verify(&c, &dns.resolver()).await,
        Err(OwnershipError::Expired)
    );
    // A day younger than the limit still verifies.
    c.created_at = chrono::Utc::now() - CHALLENGE_TTL + chrono::Duration::days(1);
    ownership::verify(&c, &dns.resolver()).await.unwrap();
}

#[tokio::test]
async fn a_record_split_into_character_strings_counts_as_their_concatenation() {
    let dns = Dns::start().await;
    let c = challenge("portal.example.test");
    let value = c.expected_value();
    let (head, tail) = value.split_at(20);
    dns.txt(&c.record_name(), &[head, tail]).await;
    let seen = dns.resolver().txt(&c.record_name()).await.unwrap();
    assert_eq!(seen, vec![value.clone()]);
    ownership::verify(&c, &dns.resolver()).await.unwrap();
    // Two separate records holding the halves are not one value.
    let d = challenge("other.example.test");
    let value = d.expected_value();
    let (head, tail) = value.split_at(20);
    dns.txt(&d.record_name(), &[head]).await;
    dns.txt(&d.record_name(), &[tail]).await;
    assert!(matches!(
        ownership::verify(&d, &dns.resolver()).await,
        Err(OwnershipError::Mismatch { .. })
    ));
}

#[tokio::test]
async fn an_answer_too_long_for_udp_arrives_over_tcp() {
    let dns = Dns::start().await;
    let c = challenge("portal.example.test");
    // ~40 records of ~100 bytes: far over a UDP answer's size.
    for n in 0..40 {
        let filler = format!("filler-{n:02}-{}", "x".repeat(90));
        dns.txt(&c.record_name(), &[&filler]).await;
    }
    dns.txt(&c.record_name(), &[&c.expected_value()]).await;
    let seen = dns.resolver().txt(&c.record_name()).await.unwrap();
    assert_eq!(seen.len(), 41);
    ownership::verify(&c, &dns.resolver()).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_resolver_error_not_a_missing_record() {
    // A port with nothing listening (bound, then released).
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = HickoryTxtResolver::with_nameserver(addr).unwrap();
    let c = challenge("portal.example.test");
    let started = std::time::Instant::now();
    let err = ownership::verify(&c, &dns).await.unwrap_err();
    assert!(matches!(err, OwnershipError::Resolver(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_domain_too_long_for_its_record_name_is_refused() {
    let label = "a".repeat(63);
    let long = format!("{label}.{label}.{label}.{}", "b".repeat(40)); // 232 characters
    assert!(long.len() <= ownership::MAX_CHALLENGE_DOMAIN_LEN);
    assert!(DomainChallenge::new(DomainName::parse(&long).unwrap()).is_ok());
    let longer = format!("{label}.{label}.{label}.{}", "b".repeat(50)); // 242 characters
    assert!(longer.len() > ownership::MAX_CHALLENGE_DOMAIN_LEN);
    assert!(DomainChallenge::new(DomainName::parse(&longer).unwrap()).is_err());
}

#[test]
fn a_challenge_survives_a_round_trip_through_json() {
    let c = challenge("portal.example.test");
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["domain"], "portal.example.test");
    let back: DomainChallenge = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
    assert!(
        c.to_string()
            .starts_with("_tenancy-challenge.portal.example.test. TXT \"tenancy-verify="),
        "{c}"
    );
}

/// The broken twin: a verifier written carelessly — it accepts when any TXT
/// record at the name *starts with* the expected value (or, in its laziest
/// form, when any `tenancy-verify=` record exists at all).
async fn careless_verify(c: &DomainChallenge, dns: &dyn TxtResolver) -> bool {
    match dns.txt(&c.record_name()).await {
        Ok(values) => values
            .iter()
            .any(|v| v.starts_with(&c.expected_value()) || v.starts_with(ownership::VALUE_PREFIX)),
        Err(_) => false,
    }
}

#[tokio::test]
async fn hostile_records_that_fool_a_careless_verifier_are_refused() {
    let dns = Dns::start().await;
    // The attacker's challenge for a domain whose DNS they do not control,
    // and the real owner's challenge that is published there.
    let attacker = challenge("shop.example.test");
    let owner = challenge("shop.example.test");
    dns.txt(&owner.record_name(), &[&owner.expected_value()])
        .await;
    // 1. Another tenant's token at the name: the twin accepts, verify refuses.
    assert!(careless_verify(&attacker, &dns.resolver()).await);
    assert!(matches!(
        ownership::verify(&attacker, &dns.resolver()).await,
        Err(OwnershipError::Mismatch { .. })
    ));
    // 2. The attacker's token with a suffix (e.g. a value a third party lets
    // anyone extend): the twin accepts, verify refuses.
    let other = challenge("blog.example.test");
    dns.txt(
        &other.record_name(),
        &[&format!("{}extra", other.expected_value())],
    )
    .await;
    assert!(careless_verify(&other, &dns.resolver()).await);
    assert!(matches!(
        ownership::verify(&other, &dns.resolver()).await,
        Err(OwnershipError::Mismatch { .. })
    ));
    // The legitimate owner still verifies.
    ownership::verify(&owner, &dns.resolver()).await.unwrap();
}
