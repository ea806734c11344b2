//! The client's address behind reverse proxies: `X-Forwarded-For` and
//! `Forwarded` (RFC 7239) are believed only when the connection comes from a
//! proxy you trust, and only as far as the chain of trusted proxies goes.
//!
//! Without configuration ([`TrustedProxies::none`]) the peer address of the
//! connection is the client, whatever the headers say: a client can write
//! any `X-Forwarded-For` it likes. With trusted proxies, the forwarded
//! chain is read from the right (the hop nearest to this server) and the
//! first address that is not a trusted proxy is the client. Addresses left
//! of it were written by the client and are ignored.
//!
//! ```
//! use std::net::IpAddr;
//! use tenancy_core::client::TrustedProxies;
//! use tenancy_core::resolve::SimpleRequest;
//!
//! let proxies = TrustedProxies::parse("10.0.0.0/8")?;
//! let req = SimpleRequest::new("/").with_header("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3");
//! let peer: IpAddr = "10.0.0.1".parse()?;
//! // 10.1.2.3 is a trusted proxy; 203.0.113.9 is the client; 6.6.6.6 is what the client claimed.
//! assert_eq!(proxies.client_ip(peer, &req)?, "203.0.113.9".parse::<IpAddr>()?);
//! // From an untrusted peer the header is ignored.
//! let direct: IpAddr = "198.51.100.1".parse()?;
//! assert_eq!(proxies.client_ip(direct, &req)?, direct);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::resolve::{HeaderLookup, RequestView};

/// A tenant's network policy (tenant setting `network`): the address blocks
/// its requests may come from. Enforced by the request pipeline after the
/// status gate: a request from elsewhere — or whose address is unknown — is
/// 403 `address-not-allowed`. A tenant without the setting accepts every
/// address; an empty list accepts none.
///
/// ```
/// use tenancy_core::client::NetworkPolicy;
///
/// let p = NetworkPolicy::from_setting(&serde_json::json!({"allow": ["10.0.0.0/8", "2001:db8::/32"]}))?;
/// assert!(p.allows(Some("10.1.2.3".parse()?)));
/// assert!(!p.allows(Some("192.0.2.1".parse()?)));
/// assert!(!p.allows(None));
/// assert!(NetworkPolicy::from_setting(&serde_json::json!({"allow": ["10.0.0.0/33"]})).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    allow: Vec<IpNet>,
}

/// The tenant setting holding a [`NetworkPolicy`].
pub const NETWORK_SETTING: &str = "network";

impl NetworkPolicy {
    /// Only these blocks.
    pub fn allow(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            allow: nets.into_iter().collect(),
        }
    }

    /// Parses the setting's value: `{"allow": ["<address or CIDR>", …]}`.
    pub fn from_setting(value: &serde_json::Value) -> Result<Self, ClientAddrError> {
        let bad = |why: &str| ClientAddrError::InvalidProxy(format!("network.allow: {why}"));
        let list = value
            .get("allow")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| bad("expected {\"allow\": [\"10.0.0.0/8\", …]}"))?;
        if value.as_object().is_some_and(|o| o.len() > 1) {
            return Err(bad("unknown keys beside \"allow\""));
        }
        let mut allow = Vec::with_capacity(list.len());
        for item in list {
            let text = item
                .as_str()
                .ok_or_else(|| bad("entries must be strings"))?;
            let parsed = TrustedProxies::parse(text)?;
            if parsed.nets.len() != 1 {
                return Err(bad("one address or CIDR block per entry"));
            }
            allow.extend(parsed.nets);
        }
        Ok(Self { allow })
    }

    /// The policy in `tenant`'s settings, if it has one. A malformed setting
    /// is an error, never "no policy".
    pub fn of(tenant: &crate::Tenant) -> Result<Option<Self>, ClientAddrError> {
        match tenant.settings.get(NETWORK_SETTING) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => Self::from_setting(v).map(Some),
        }
    }

    /// Whether a request from `ip` may proceed (unknown: no).
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| {
            let ip = ip.to_canonical();
            self.allow.iter().any(|n| n.contains(&ip))
        })
    }
}

/// How many forwarded hops are read at most; a longer chain is refused.
pub const MAX_HOPS: usize = 32;

/// Why the client address could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientAddrError {
    /// A trusted-proxy setting is not an address or CIDR block.
    #[error("trusted proxy {0:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)")]
    InvalidProxy(String),
    /// A trusted proxy forwarded a header this server cannot read.
    #[error("the {header} header forwarded by a trusted proxy is malformed: {reason}")]
    Malformed {
        /// `x-forwarded-for` or `forwarded`.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The proxies whose forwarding headers are believed. See the
/// [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// No proxy is trusted: the peer address is the client.
    pub fn none() -> Self {
        Self::default()
    }

    /// These blocks are trusted proxies.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
        }
    }

    /// Parses a list of addresses and CIDR blocks separated by commas or
    /// white space (`"10.0.0.0/8, 192.168.1.7"`). An empty list trusts no one.
    pub fn parse(list: &str) -> Result<Self, ClientAddrError> {
        let mut nets = Vec::new();
        for item in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            let net = IpNet::from_str(item)
                .or_else(|_| IpAddr::from_str(item).map(IpNet::from))
                .map_err(|_| ClientAddrError::InvalidProxy(item.to_owned()))?;
            nets.push(net);
        }
        Ok(Self { nets })
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that arrived from `peer`. `Forwarded` is read
    /// when present, else `X-Forwarded-For`; a header sent more than once,
    /// an unreadable hop, or more than [`MAX_HOPS`] hops from a trusted
    /// proxy is an error (a trusted proxy never sends one).
    pub fn client_ip(
        &self,
        peer: IpAddr,
        req: &dyn RequestView,
    ) -> Result<IpAddr, ClientAddrError> {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Ok(peer);
        }
        let (header, hops) = match req.header("forwarded") {
            HeaderLookup::One(v) => ("forwarded", forwarded_hops(v)?),
            HeaderLookup::Many => return Err(malformed("forwarded", "sent more than once")),
            HeaderLookup::Absent => match req.header("x-forwarded-for") {
                HeaderLookup::One(v) => ("x-forwarded-for", xff_hops(v)?),
                HeaderLookup::Many => {
                    return Err(malformed("x-forwarded-for", "sent more than once"));
                }
                HeaderLookup::Absent => return Ok(peer),
            },
        };
        if hops.len() > MAX_HOPS {
            return Err(malformed(header, "too many hops"));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let ip = hop.ok_or_else(|| malformed(header, "a hop is not an IP address"))?;
            client = ip.to_canonical();
            if !self.trusts(client) {
                return Ok(client);
            }
        }
        // Every hop is a trusted proxy: the leftmost is the origin.
        Ok(client)
    }
}

/// The address a client is counted under: IPv4 as is, IPv6 per /64 (one
/// host usually holds a whole /64, so per-address limits on IPv6 would be
/// limits on nothing).
pub fn counted_as(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn malformed(header: &'static str, reason: &'static str) -> ClientAddrError {
    ClientAddrError::Malformed { header, reason }
}

fn text<'a>(header: &'static str, raw: &'a [u8]) -> Result<&'a str, ClientAddrError> {
    std::str::from_utf8(raw).map_err(|_| malformed(header, "not ASCII"))
}

/// `X-Forwarded-For: client, proxy1, proxy2` (an entry may carry a port).
fn xff_hops(raw: &[u8]) -> Result<Vec<Option<IpAddr>>, ClientAddrError> {
    let value = text("x-forwarded-for", raw)?;
    if value.split(',').count() > MAX_HOPS {
        return Err(malformed("x-forwarded-for", "too many hops"));
    }
    Ok(value.split(',').map(|h| node(h.trim())).collect())
}

/// `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`.
fn forwarded_hops(raw: &[u8]) -> Result<Vec<Option<IpAddr>>, ClientAddrError> {
    let value = text("forwarded", raw)?;
    if value.split(',').count() > MAX_HOPS {
        return Err(malformed("forwarded", "too many hops"));
    }
    let mut hops = Vec::new();
    for element in value.split(',') {
        let mut for_ = None;
        for pair in element.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("for") {
                for_ = Some(node(v.trim().trim_matches('"')));
            }
        }
        hops.push(for_.flatten());
    }
    Ok(hops)
}

/// An address, possibly with a port: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`.
fn node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return IpAddr::from_str(addr).ok();
    }
    let (addr, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    IpAddr::from_str(addr).ok().filter(IpAddr::is_ipv4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::SimpleRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_is_read_only_from_trusted_proxies() {
        let p = TrustedProxies::parse("10.0.0.0/8 192.168.1.7").unwrap();
        let r = SimpleRequest::new("/").with_header(
            "forwarded",
            r#"for=1.1.1.1, for="[2001:db8::7]:4711";proto=https, for=10.2.2.2"#,
        );
        assert_eq!(
            p.client_ip(ip("192.168.1.7"), &r).unwrap(),
            ip("2001:db8::7")
        );
        assert_eq!(
            p.client_ip(ip("192.168.1.8"), &r).unwrap(),
            ip("192.168.1.8")
        );
        // Nothing trusted: the header is ignored.
        assert_eq!(
            TrustedProxies::none()
                .client_ip(ip("10.0.0.1"), &r)
                .unwrap(),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ports_mapped_addresses_and_all_trusted_chains() {
        let p = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let r =
            SimpleRequest::new("/").with_header("x-forwarded-for", "203.0.113.5:5123, 10.0.0.9");
        assert_eq!(
            p.client_ip(ip("::ffff:10.0.0.1"), &r).unwrap(),
            ip("203.0.113.5")
        );
        let all = SimpleRequest::new("/").with_header("x-forwarded-for", "10.9.9.9, 10.0.0.9");
        assert_eq!(p.client_ip(ip("10.0.0.1"), &all).unwrap(), ip("10.9.9.9"));
        let none = SimpleRequest::new("/");
        assert_eq!(p.client_ip(ip("10.0.0.1"), &none).unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_an_error_garbage_left_of_the_client_is_ignored() {
        let p = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let spoofed =
            SimpleRequest::new("/").with_header("x-forwarded-for", "nonsense, 203.0.113.5");
        assert_eq!(
            p.client_ip(ip("10.0.0.1"), &spoofed).unwrap(),
            ip("203.0.113.5")
        );
        let broken = SimpleRequest::new("/").with_header("x-forwarded-for", "203.0.113.5, unknown");
        assert!(p.client_ip(ip("10.0.0.1"), &broken).is_err());
        let long =
            SimpleRequest::new("/").with_header("x-forwarded-for", vec!["10.0.0.2"; 40].join(","));
        assert!(p.client_ip(ip("10.0.0.1"), &long).is_err());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
    }
}
