//! Domain names as they arrive in `Host` headers, normalised once.
//!
//! A [`DomainName`] is lowercase ASCII, without a port and without the
//! trailing root dot, and every label is a valid DNS label. Internationalised
//! names must arrive in their ASCII (punycode, `xn--…`) form, which is what
//! browsers send; raw Unicode in a `Host` header is refused. IP literals are
//! recognised and reported separately, because they never name a tenant.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest domain name: 253 characters without the trailing dot (RFC 1035).
pub const MAX_DOMAIN_LEN: usize = 253;

/// A normalised DNS name (lowercase, no port, no trailing dot).
///
/// ```
/// use tenancy_core::DomainName;
///
/// let d = DomainName::from_host(b"Acme.Example.COM.:8443")?;
/// assert_eq!(d.as_str(), "acme.example.com");
/// # Ok::<(), tenancy_core::HostError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(std::sync::Arc<str>);

/// Why a `Host` value is not a usable domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host was empty.
    #[error("host is empty")]
    Empty,
    /// The host was longer than [`MAX_DOMAIN_LEN`].
    #[error("host is {len} bytes long; a domain name is at most 253")]
    TooLong {
        /// Length of the refused input in bytes.
        len: usize,
    },
    /// The part after `:` was not a port number.
    #[error("host has an invalid port")]
    InvalidPort,
    /// The host contained non-ASCII bytes (send IDNs in punycode form).
    #[error("host is not ASCII: send internationalised names in punycode (xn--) form")]
    NotAscii,
    /// A label was empty, too long, had a forbidden character or an edge hyphen.
    #[error("host has an invalid label: labels are 1-63 characters of a-z, 0-9 and '-'")]
    InvalidLabel,
    /// The host was an IPv4 or IPv6 literal, which names no tenant.
    #[error("host is an IP address, not a domain name")]
    IpLiteral,
}

impl DomainName {
    /// Parses the value of a `Host` header (or URI authority host), normalising
    /// case, port and trailing dot.
    ///
    /// ```
    /// # use tenancy_core::{DomainName, HostError};
    /// assert_eq!(DomainName::from_host(b"127.0.0.1:8080"), Err(HostError::IpLiteral));
    /// assert_eq!(DomainName::from_host(b"[::1]:8080"), Err(HostError::IpLiteral));
    /// assert_eq!(DomainName::from_host("bücher.de".as_bytes()), Err(HostError::NotAscii));
    /// assert!(DomainName::from_host(b"xn--bcher-kva.de").is_ok());
    /// ```
    pub fn from_host(host: &[u8]) -> Result<Self, HostError> {
        // Refuse absurd lengths before any work (253 + ':' + 5-digit port + '.').
        if host.len() > MAX_DOMAIN_LEN + 7 {
            return Err(HostError::TooLong { len: host.len() });
        }
        if !host.is_ascii() {
            return Err(HostError::NotAscii);
        }
        if host.first() == Some(&b'[') {
            return Err(HostError::IpLiteral);
        }
        let name = match host.iter().rposition(|b| *b == b':') {
            Some(colon) => {
                let port = &host[colon + 1..];
                let valid = !port.is_empty()
                    && port.len() <= 5
                    && port.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok());
                if !valid {
                    return Err(HostError::InvalidPort);
                }
                &host[..colon]
            }
            None => host,
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        Self::from_name(name)
    }

    /// Parses a bare domain name (no port); used for configured domains.
    ///
    /// ```
    /// # use tenancy_core::DomainName;
    /// assert_eq!(DomainName::parse("Portal.Acme.test")?.as_str(), "portal.acme.test");
    /// assert!(DomainName::parse("acme.test:80").is_err());
    /// # Ok::<(), tenancy_core::HostError>(())
    /// ```
    pub fn parse(name: &str) -> Result<Self, HostError> {
        let bytes = name.as_bytes();
        Self::from_name(bytes.strip_suffix(b".").unwrap_or(bytes))
    }

    fn from_name(name: &[u8]) -> Result<Self, HostError> {
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > MAX_DOMAIN_LEN {
            return Err(HostError::TooLong { len: name.len() });
        }
        if !name.is_ascii() {
            return Err(HostError::NotAscii);
        }
        let lower = name.to_ascii_lowercase();
        let mut all_numeric = true;
        for label in lower.split(|b| *b == b'.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-');
            if !ok {
                return Err(HostError::InvalidLabel);
            }
            all_numeric &= label.iter().all(u8::is_ascii_digit);
        }
        if all_numeric {
            return Err(HostError::IpLiteral);
        }
        // Every byte was checked to be ASCII above.
        let s = String::from_utf8(lower).map_err(|_| HostError::NotAscii)?;
        Ok(Self(s.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The left-most label when `self` is exactly one label below `base`
    /// (`acme.example.com` under `example.com` → `acme`); `None` otherwise.
    ///
    /// ```
    /// # use tenancy_core::DomainName;
    /// let base = DomainName::parse("example.com")?;
    /// let host = DomainName::parse("acme.example.com")?;
    /// assert_eq!(host.label_under(&base), Some("acme"));
    /// assert_eq!(base.label_under(&base), None);
    /// assert_eq!(DomainName::parse("a.b.example.com")?.label_under(&base), None);
    /// assert_eq!(DomainName::parse("evilexample.com")?.label_under(&base), None);
    /// # Ok::<(), tenancy_core::HostError>(())
    /// ```
    pub fn label_under(&self, base: &DomainName) -> Option<&str> {
        let rest = self.0.strip_suffix(&*base.0)?;
        let label = rest.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then_some(label)
    }

    /// Whether `self` equals `base` or lies anywhere below it.
    pub fn is_within(&self, base: &DomainName) -> bool {
        match self.0.strip_suffix(&*base.0) {
            Some("") => true,
            Some(rest) => rest.ends_with('.'),
            None => false,
        }
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({})", &self.0)
    }
}

impl std::str::FromStr for DomainName {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DomainName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DomainName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        for (input, want) in [
            ("acme.example.com", "acme.example.com"),
            ("ACME.Example.Com", "acme.example.com"),
            ("acme.example.com.", "acme.example.com"),
            ("acme.example.com:8080", "acme.example.com"),
            ("acme.example.com.:8080", "acme.example.com"),
            ("localhost", "localhost"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(
                DomainName::from_host(input.as_bytes()).unwrap().as_str(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_bad_hosts() {
        use HostError::*;
        for (input, want) in [
            ("", Empty),
            (".", Empty),
            (":80", Empty),
            ("a.com:", InvalidPort),
            ("a.com:http", InvalidPort),
            ("a.com:123456", InvalidPort),
            ("a.com:65536", InvalidPort),
            ("a..com", InvalidLabel),
            ("-a.com", InvalidLabel),
            ("a_b.com", InvalidLabel),
            ("a b.com", InvalidLabel),
            ("a/../b", InvalidLabel),
            ("a.com..", InvalidLabel),
            ("10.0.0.1", IpLiteral),
            ("10.0.0.1:80", IpLiteral),
            ("[::1]", IpLiteral),
            ("bücher.de", NotAscii),
        ] {
            assert_eq!(
                DomainName::from_host(input.as_bytes()),
                Err(want),
                "{input:?}"
            );
        }
        let long = format!("{}.com", "a.".repeat(130));
        assert!(matches!(
            DomainName::from_host(long.as_bytes()),
            Err(TooLong { .. })
        ));
    }

    #[test]
    fn within() {
        let base = DomainName::parse("example.com").unwrap();
        assert!(DomainName::parse("example.com").unwrap().is_within(&base));
        assert!(
            DomainName::parse("a.b.example.com")
                .unwrap()
                .is_within(&base)
        );
        assert!(
            !DomainName::parse("badexample.com")
                .unwrap()
                .is_within(&base)
        );
    }
}
