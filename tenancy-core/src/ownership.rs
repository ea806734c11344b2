//! Proving that a tenant controls a custom domain, with a DNS TXT record.
//!
//! Before a tenant's custom domain (`portal.acme-insurance.com`) is added to
//! its record — and so starts resolving requests to that tenant — the tenant
//! proves it controls the domain's DNS:
//!
//! 1. [`DomainChallenge::new`] draws a random token (256 bits) for the
//!    domain. Keep the challenge with the tenant (a setting, a row).
//! 2. The tenant publishes a TXT record named
//!    [`record_name`](DomainChallenge::record_name)
//!    (`_tenancy-challenge.portal.acme-insurance.com`) whose value is
//!    [`expected_value`](DomainChallenge::expected_value)
//!    (`tenancy-verify=<token>`).
//! 3. [`verify`] looks the record up through a [`TxtResolver`] and succeeds
//!    only when one TXT record there is *exactly* the expected value:
//!    a record that merely starts with it, a record at the domain itself
//!    instead of the `_tenancy-challenge` name, or another challenge's
//!    token are all refused. A challenge is good for [`CHALLENGE_TTL`]
//!    (7 days); after that [`verify`] answers [`OwnershipError::Expired`]
//!    and a new challenge (a new token) is needed.
//!
//! A TXT record made of several character-strings (long values are often
//! split by DNS providers into 255-byte pieces) counts as their
//! concatenation, as RFC 7208 does for SPF. The comparison runs in constant
//! time.
//!
//! Proving control is not the same as owning the domain in your registry:
//! add the domain to the tenant with a store that refuses a domain another
//! tenant already has (the stores of tenancy-core and tenancy-sqlx do,
//! [`UniqueViolation::Domain`](crate::store::UniqueViolation::Domain)), so a
//! DNS check never moves a domain from one tenant to another.
//!
//! With feature `dns`, `HickoryTxtResolver` asks real DNS servers (the
//! system's resolvers or one given name server). Any other source — a DNS
//! provider's API, a test double — implements [`TxtResolver`]:
//!
//! ```
//! use async_trait::async_trait;
//! use tenancy_core::DomainName;
//! use tenancy_core::ownership::{self, DomainChallenge, OwnershipError, TxtResolver};
//!
//! /// Answers from a fixed list of (name, TXT value) pairs.
//! struct Fixed(Vec<(String, String)>);
//!
//! #[async_trait]
//! impl TxtResolver for Fixed {
//!     async fn txt(&self, name: &str) -> Result<Vec<String>, OwnershipError> {
//!         Ok(self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let challenge = DomainChallenge::new(DomainName::parse("portal.acme.test")?)?;
//! assert_eq!(challenge.record_name(), "_tenancy-challenge.portal.acme.test");
//! assert!(challenge.expected_value().starts_with("tenancy-verify="));
//!
//! // Nothing published yet.
//! let dns = Fixed(vec![]);
//! assert!(matches!(
//!     ownership::verify(&challenge, &dns).await,
//!     Err(OwnershipError::NotPublished { .. })
//! ));
//!
//! // The tenant published the record.
//! let dns = Fixed(vec![(challenge.record_name(), challenge.expected_value())]);
//! ownership::verify(&challenge, &dns).await?;
//!
//! // A value that only starts with the expected one is not it.
//! let dns = Fixed(vec![(challenge.record_name(), format!("{}x", challenge.expected_value()))]);
//! assert!(matches!(
//!     ownership::verify(&challenge, &dns).await,
//!     Err(OwnershipError::Mismatch { .. })
//! ));
//! # Ok(()) }
//! ```

use std::fmt;

use aes_gcm::aead::{OsRng, rand_core::RngCore};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{DomainName, HostError, MAX_DOMAIN_LEN};

/// The label the challenge record is published under:
/// `_tenancy-challenge.<domain>`.
pub const RECORD_LABEL: &str = "_tenancy-challenge";

/// What the TXT value starts with: `tenancy-verify=<token>`.
pub const VALUE_PREFIX: &str = "tenancy-verify=";

/// How long a challenge can be verified after it was created (7 days).
pub const CHALLENGE_TTL: Duration = Duration::days(7);

/// The longest domain a challenge can be made for: the record name
/// `_tenancy-challenge.<domain>` must itself be a valid DNS name (at most
/// 253 characters).
pub const MAX_CHALLENGE_DOMAIN_LEN: usize = MAX_DOMAIN_LEN - RECORD_LABEL.len() - 1;

/// A pending proof of control of `domain`: the token the tenant must
/// publish, and when it was issued.
///
/// The token is not a secret — the tenant publishes it in DNS — but it is
/// unguessable, so the record proves that whoever published it both
/// controls the domain's DNS and received this challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainChallenge {
    /// The domain whose control is being proven.
    pub domain: DomainName,
    /// 256 random bits, base64url without padding (43 characters).
    pub token: String,
    /// When the challenge was issued; it expires [`CHALLENGE_TTL`] later.
    pub created_at: DateTime<Utc>,
}

impl DomainChallenge {
    /// A new challenge for `domain` with a fresh random token, issued now.
    ///
    /// Refused ([`HostError::TooLong`], with the record name's length) when
    /// `domain` is longer than [`MAX_CHALLENGE_DOMAIN_LEN`], because its
    /// record name could not exist in DNS.
    ///
    /// ```
    /// use tenancy_core::DomainName;
    /// use tenancy_core::ownership::DomainChallenge;
    ///
    /// let a = DomainChallenge::new(DomainName::parse("acme.test")?)?;
    /// let b = DomainChallenge::new(DomainName::parse("acme.test")?)?;
    /// assert_eq!(a.token.len(), 43);
    /// assert_ne!(a.token, b.token);
    /// # Ok::<(), tenancy_core::HostError>(())
    /// ```
    pub fn new(domain: DomainName) -> Result<Self, HostError> {
        let record_len = RECORD_LABEL.len() + 1 + domain.as_str().len();
        if record_len > MAX_DOMAIN_LEN {
            return Err(HostError::TooLong { len: record_len });
        }
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        Ok(Self {
            domain,
            token: URL_SAFE_NO_PAD.encode(random),
            created_at: Utc::now(),
        })
    }

    /// The name of the TXT record to publish: `_tenancy-challenge.<domain>`.
    pub fn record_name(&self) -> String {
        format!("{RECORD_LABEL}.{}", self.domain)
    }

    /// The value the TXT record must have: `tenancy-verify=<token>`.
    pub fn expected_value(&self) -> String {
        format!("{VALUE_PREFIX}{}", self.token)
    }

    /// When the challenge stops being verifiable.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.created_at + CHALLENGE_TTL
    }

    /// Whether the challenge has expired at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at()
    }
}

/// Why a domain's ownership was not proven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// There is no TXT record at the challenge's name (the name does not
    /// exist, or has no TXT record).
    #[error(
        "no TXT record found at {record}: publish the challenge value there (a TXT record named {record}, not one at the domain itself) and try again once DNS has it"
    )]
    NotPublished {
        /// The record name that was looked up.
        record: String,
    },
    /// TXT records exist at the challenge's name, but none is exactly the
    /// expected value.
    #[error(
        "the TXT records at {record} do not match this challenge: publish its exact value (tenancy-verify=...) and remove stale ones if you like"
    )]
    Mismatch {
        /// The record name that was looked up.
        record: String,
    },
    /// The challenge is older than [`CHALLENGE_TTL`]; start a new one.
    #[error("the challenge expired: request a new one and publish its value")]
    Expired,
    /// DNS could not be asked (no answer, time-out, server failure):
    /// nothing is known about the record; try again later.
    #[error("DNS could not be queried: {0}")]
    Resolver(String),
}

/// Looks up TXT records.
///
/// An implementation returns each TXT record at `name` as one string — the
/// record's character-strings concatenated, in order. A `name` that does not
/// exist or has no TXT record is [`OwnershipError::NotPublished`] (an empty
/// list is treated the same by [`verify`]); a failure to get an answer is
/// [`OwnershipError::Resolver`].
#[async_trait]
pub trait TxtResolver: Send + Sync {
    /// The TXT records at `name` (a fully qualified name without the
    /// trailing dot, e.g. `_tenancy-challenge.acme.test`).
    async fn txt(&self, name: &str) -> Result<Vec<String>, OwnershipError>;
}

/// Checks `challenge` against DNS through `resolver`: `Ok(())` only when
/// one TXT record at [`DomainChallenge::record_name`] is exactly
/// [`DomainChallenge::expected_value`] and the challenge has not expired.
///
/// The comparison takes the same time whichever byte differs, and is exact:
/// no trimming, no case folding, no prefix match.
pub async fn verify(
    challenge: &DomainChallenge,
    resolver: &dyn TxtResolver,
) -> Result<(), OwnershipError> {
    if challenge.is_expired_at(Utc::now()) {
        return Err(OwnershipError::Expired);
    }
    let record = challenge.record_name();
    let values = resolver.txt(&record).await?;
    if values.is_empty() {
        return Err(OwnershipError::NotPublished { record });
    }
    let expected = challenge.expected_value();
    // Every value is compared (no early exit), so the time taken does not
    // tell which record matched.
    let found = values.iter().fold(false, |found, v| {
        same(v.as_bytes(), expected.as_bytes()) | found
    });
    if found {
        Ok(())
    } else {
        Err(OwnershipError::Mismatch { record })
    }
}

/// Equality in constant time: both sides are MACed under one key and the
/// tags compared with [`Mac::verify_slice`] (constant time; the fixed-size
/// tags also hide the lengths).
fn same(a: &[u8], b: &[u8]) -> bool {
    const KEY: &[u8] = b"tenancy-core ownership comparison";
    let (Ok(mut ma), Ok(mut mb)) = (
        Hmac::<Sha256>::new_from_slice(KEY),
        Hmac::<Sha256>::new_from_slice(KEY),
    ) else {
        return false;
    };
    ma.update(a);
    mb.update(b);
    let tag_b = mb.finalize().into_bytes();
    ma.verify_slice(&tag_b).is_ok()
}

impl fmt::Display for DomainChallenge {
    /// `<record name> TXT "<expected value>"`, as a zone file would have it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}. TXT \"{}\"",
            self.record_name(),
            self.expected_value()
        )
    }
}

#[cfg(feature = "dns")]
pub use self::hickory::HickoryTxtResolver;

#[cfg(feature = "dns")]
mod hickory {
    use std::net::SocketAddr;
    use std::time::Duration;

    use async_trait::async_trait;
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::net::NetError;
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::proto::rr::{Name, RData};

    use super::{OwnershipError, TxtResolver};

    /// How long one query waits for an answer.
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// A [`TxtResolver`] asking DNS servers with
    /// [hickory-resolver](https://docs.rs/hickory-resolver) (feature `dns`).
    ///
    /// Every look-up goes to the servers: nothing is cached, so a record
    /// published a moment ago (or removed) is seen on the next check, as
    /// far as the servers asked have it. A query waits 2 s for an answer
    /// and is retried once; names are looked up fully qualified (no search
    /// domains), and `/etc/hosts` is not read. Must be used within a tokio
    /// runtime.
    ///
    /// ```no_run
    /// use tenancy_core::DomainName;
    /// use tenancy_core::ownership::{self, DomainChallenge, HickoryTxtResolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dns = HickoryTxtResolver::system()?;
    /// let challenge = DomainChallenge::new(DomainName::parse("portal.acme-insurance.com")?)?;
    /// println!("publish: {challenge}");
    /// // ... once the tenant says it is published:
    /// ownership::verify(&challenge, &dns).await?;
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct HickoryTxtResolver {
        resolver: TokioResolver,
    }

    impl std::fmt::Debug for HickoryTxtResolver {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HickoryTxtResolver").finish_non_exhaustive()
        }
    }

    fn options(mut opts: ResolverOpts) -> ResolverOpts {
        opts.timeout = TIMEOUT;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.use_hosts_file = ResolveHosts::Never;
        opts.try_tcp_on_error = true;
        opts
    }

    fn unavailable(e: &NetError) -> OwnershipError {
        OwnershipError::Resolver(e.to_string())
    }

    impl HickoryTxtResolver {
        /// The system's resolvers (`/etc/resolv.conf` on Unix, the registry
        /// on Windows); [`OwnershipError::Resolver`] when that
        /// configuration cannot be read.
        pub fn system() -> Result<Self, OwnershipError> {
            let mut builder = TokioResolver::builder_tokio().map_err(|e| unavailable(&e))?;
            let opts = options(builder.options_mut().clone());
            *builder.options_mut() = opts;
            let resolver = builder.build().map_err(|e| unavailable(&e))?;
            Ok(Self { resolver })
        }

        /// Only the name server at `addr` (UDP, then TCP for long answers),
        /// e.g. an internal recursive resolver, or an authoritative server
        /// in tests.
        ///
        /// ```no_run
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// let dns = tenancy_core::ownership::HickoryTxtResolver::with_nameserver("127.0.0.1:5353".parse()?)?;
        /// # let _ = dns; Ok(()) }
        /// ```
        pub fn with_nameserver(addr: SocketAddr) -> Result<Self, OwnershipError> {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            let resolver = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
            .with_options(options(ResolverOpts::default()))
            .build()
            .map_err(|e| unavailable(&e))?;
            Ok(Self { resolver })
        }
    }

    #[async_trait]
    impl TxtResolver for HickoryTxtResolver {
        async fn txt(&self, name: &str) -> Result<Vec<String>, OwnershipError> {
            // Fully qualified: no search domain is ever appended.
            let fqdn = Name::from_ascii(format!("{name}."))
                .map_err(|e| OwnershipError::Resolver(format!("{name}: {e}")))?;
            match self.resolver.txt_lookup(fqdn).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        // One record: its character-strings joined, then
                        // read as text (a value that is not UTF-8 cannot
                        // equal an expected value, which is ASCII).
                        RData::TXT(txt) => {
                            Some(String::from_utf8_lossy(&txt.txt_data.concat()).into_owned())
                        }
                        _ => None,
                    })
                    .collect()),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Err(OwnershipError::NotPublished {
                        record: name.to_owned(),
                    })
                }
                Err(e) => Err(unavailable(&e)),
            }
        }
    }
}
