//! Tenant identifiers: [`TenantId`] (a UUID) and [`TenantSlug`] (a DNS label).
//!
//! Both types validate on construction, so a value of either type is always
//! well-formed: code that holds a `TenantId` never has to wonder whether it was
//! checked. Parsing never panics and returns a typed error that says what was
//! wrong with the input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The longest input [`TenantId::from_str`] will look at.
///
/// A hyphenated UUID is 36 characters; anything much longer is refused before
/// any parsing work is done, so hostile input cannot make parsing expensive.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// The longest tenant slug: a DNS label is at most 63 octets (RFC 1035).
pub const MAX_SLUG_LEN: usize = 63;

/// A tenant's stable identifier: a non-nil UUID.
///
/// Text form is the lowercase hyphenated UUID
/// (`67e55044-10b1-426f-9247-bb680e5fe0c8`); parsing also accepts uppercase hex.
/// The nil UUID is refused, because an all-zero id is far more often an
/// uninitialised value than a real tenant.
///
/// ```
/// use tenancy_core::TenantId;
///
/// let id: TenantId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse()?;
/// assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
///
/// assert!("not-a-uuid".parse::<TenantId>().is_err());
/// assert!("".parse::<TenantId>().is_err());
/// # Ok::<(), tenancy_core::TenantIdError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(Uuid);

/// Why a string is not a valid [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantIdError {
    /// The input was empty (or only whitespace).
    #[error("tenant id is empty: send a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8")]
    Empty,
    /// The input was longer than [`MAX_TENANT_ID_LEN`].
    #[error("tenant id is {len} bytes long; a tenant id is a 36-character hyphenated UUID")]
    TooLong {
        /// Length of the refused input in bytes.
        len: usize,
    },
    /// The input was not a hyphenated UUID.
    #[error(
        "tenant id is not a hyphenated UUID (expected the form 67e55044-10b1-426f-9247-bb680e5fe0c8)"
    )]
    NotUuid,
    /// The input was the nil UUID `00000000-0000-0000-0000-000000000000`.
    #[error("tenant id is the nil UUID, which never names a tenant")]
    Nil,
}

impl TenantId {
    /// A new random (version 4) tenant id.
    ///
    /// ```
    /// # use tenancy_core::TenantId;
    /// assert_ne!(TenantId::new_v4(), TenantId::new_v4());
    /// ```
    pub fn new_v4() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an existing UUID, refusing the nil UUID.
    ///
    /// ```
    /// # use tenancy_core::{TenantId, TenantIdError};
    /// let uuid = uuid::Uuid::new_v4();
    /// assert_eq!(TenantId::from_uuid(uuid)?.as_uuid(), uuid);
    /// assert_eq!(TenantId::from_uuid(uuid::Uuid::nil()), Err(TenantIdError::Nil));
    /// # Ok::<(), TenantIdError>(())
    /// ```
    pub fn from_uuid(uuid: Uuid) -> Result<Self, TenantIdError> {
        if uuid.is_nil() {
            Err(TenantIdError::Nil)
        } else {
            Ok(Self(uuid))
        }
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The hyphenated lower-case form written into a stack buffer (no
    /// allocation): what response headers and logs carry.
    ///
    /// ```
    /// use tenancy_core::TenantId;
    /// let id = TenantId::new_v4();
    /// let mut buf = [0u8; 36];
    /// assert_eq!(id.encode(&mut buf), id.to_string());
    /// ```
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }

    /// Parses raw bytes (for example a header value that may not be UTF-8).
    ///
    /// ```
    /// # use tenancy_core::{TenantId, TenantIdError};
    /// assert_eq!(TenantId::parse_bytes(b"\xff\xfe"), Err(TenantIdError::NotUuid));
    /// ```
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, TenantIdError> {
        if bytes.len() > MAX_TENANT_ID_LEN {
            return Err(TenantIdError::TooLong { len: bytes.len() });
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => s.parse(),
            Err(_) => Err(TenantIdError::NotUuid),
        }
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_TENANT_ID_LEN {
            return Err(TenantIdError::TooLong { len: s.len() });
        }
        let s = s.trim();
        if s.is_empty() {
            return Err(TenantIdError::Empty);
        }
        // Only the canonical hyphenated form: braced, URN and simple forms are
        // refused so that one tenant has exactly one spelling (modulo case).
        if s.len() != 36 {
            return Err(TenantIdError::NotUuid);
        }
        let uuid = Uuid::try_parse(s).map_err(|_| TenantIdError::NotUuid)?;
        Self::from_uuid(uuid)
    }
}

impl TryFrom<Uuid> for TenantId {
    type Error = TenantIdError;

    fn try_from(uuid: Uuid) -> Result<Self, Self::Error> {
        Self::from_uuid(uuid)
    }
}

impl From<TenantId> for Uuid {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0.hyphenated())
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A tenant's human-readable handle, usable as a DNS label and a URL path
/// segment: 1–63 characters of lowercase `a`–`z`, `0`–`9` and `-`, not
/// starting or ending with `-`.
///
/// Slugs are compared exactly; input is not lowercased for you, because a
/// silently rewritten identifier is a classic source of confusion. Hosts are
/// lowercased by the resolution strategies before a label is parsed.
///
/// ```
/// use tenancy_core::TenantSlug;
///
/// let slug: TenantSlug = "acme-insurance".parse()?;
/// assert_eq!(slug.as_str(), "acme-insurance");
///
/// assert!("Acme".parse::<TenantSlug>().is_err());
/// assert!("-acme".parse::<TenantSlug>().is_err());
/// assert!("..".parse::<TenantSlug>().is_err());
/// # Ok::<(), tenancy_core::SlugError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantSlug(std::sync::Arc<str>);

/// Why a string is not a valid [`TenantSlug`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlugError {
    /// The input was empty.
    #[error("tenant slug is empty: use 1-63 characters of a-z, 0-9 and '-'")]
    Empty,
    /// The input was longer than [`MAX_SLUG_LEN`].
    #[error("tenant slug is {len} bytes long; the limit is 63 (a DNS label)")]
    TooLong {
        /// Length of the refused input in bytes.
        len: usize,
    },
    /// The input contained a character outside `a`–`z`, `0`–`9`, `-`.
    #[error(
        "tenant slug has a forbidden character at byte {at}: use only lowercase a-z, 0-9 and '-'"
    )]
    InvalidChar {
        /// Byte offset of the first offending character.
        at: usize,
    },
    /// The input started or ended with `-`.
    #[error("tenant slug may not start or end with '-'")]
    EdgeHyphen,
}

impl TenantSlug {
    /// Validates and wraps a slug.
    ///
    /// ```
    /// # use tenancy_core::{TenantSlug, SlugError};
    /// assert!(TenantSlug::new("acme").is_ok());
    /// assert_eq!(TenantSlug::new("a_b"), Err(SlugError::InvalidChar { at: 1 }));
    /// ```
    pub fn new(s: &str) -> Result<Self, SlugError> {
        Self::validate(s.as_bytes())?;
        Ok(Self(s.into()))
    }

    /// Validates raw bytes (for example a URL path segment) as a slug.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, SlugError> {
        Self::validate(bytes)?;
        // validate() admits only ASCII, so this conversion cannot fail; the
        // error arm keeps the function total without a panic.
        let s = std::str::from_utf8(bytes).map_err(|_| SlugError::InvalidChar { at: 0 })?;
        Ok(Self(s.into()))
    }

    fn validate(bytes: &[u8]) -> Result<(), SlugError> {
        if bytes.is_empty() {
            return Err(SlugError::Empty);
        }
        if bytes.len() > MAX_SLUG_LEN {
            return Err(SlugError::TooLong { len: bytes.len() });
        }
        if let Some(at) = bytes
            .iter()
            .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'))
        {
            return Err(SlugError::InvalidChar { at });
        }
        if bytes.first() == Some(&b'-') || bytes.last() == Some(&b'-') {
            return Err(SlugError::EdgeHyphen);
        }
        Ok(())
    }

    /// The slug as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantSlug {
    type Err = SlugError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for TenantSlug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantSlug({})", &self.0)
    }
}

impl Serialize for TenantSlug {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantSlug {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_id_round_trips_and_normalises_case() {
        let upper = "67E55044-10B1-426F-9247-BB680E5FE0C8";
        let id: TenantId = upper.parse().unwrap();
        assert_eq!(id.to_string(), upper.to_lowercase());
        let again: TenantId = id.to_string().parse().unwrap();
        assert_eq!(id, again);
    }

    #[test]
    fn tenant_id_errors_are_specific() {
        assert_eq!("".parse::<TenantId>(), Err(TenantIdError::Empty));
        assert_eq!("   ".parse::<TenantId>(), Err(TenantIdError::Empty));
        assert_eq!(
            "x".repeat(65).parse::<TenantId>(),
            Err(TenantIdError::TooLong { len: 65 })
        );
        assert_eq!("acme".parse::<TenantId>(), Err(TenantIdError::NotUuid));
        // Other UUID spellings are refused: one tenant, one spelling.
        assert_eq!(
            "67e5504410b1426f9247bb680e5fe0c8".parse::<TenantId>(),
            Err(TenantIdError::NotUuid)
        );
        assert_eq!(
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}".parse::<TenantId>(),
            Err(TenantIdError::NotUuid)
        );
        assert_eq!(
            "00000000-0000-0000-0000-000000000000".parse::<TenantId>(),
            Err(TenantIdError::Nil)
        );
        assert_eq!(
            "67e55044-10b1-426f-9247-bb680e5fe0cg".parse::<TenantId>(),
            Err(TenantIdError::NotUuid)
        );
    }

    #[test]
    fn tenant_id_serde_validates() {
        let id = TenantId::new_v4();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TenantId>("\"nope\"").is_err());
        assert!(
            serde_json::from_str::<TenantId>("\"00000000-0000-0000-0000-000000000000\"").is_err()
        );
    }

    #[test]
    fn slug_rules() {
        assert!(TenantSlug::new("a").is_ok());
        assert!(TenantSlug::new("a-1-b").is_ok());
        assert!(TenantSlug::new(&"a".repeat(63)).is_ok());
        assert_eq!(TenantSlug::new(""), Err(SlugError::Empty));
        assert_eq!(
            TenantSlug::new(&"a".repeat(64)),
            Err(SlugError::TooLong { len: 64 })
        );
        assert_eq!(TenantSlug::new("-a"), Err(SlugError::EdgeHyphen));
        assert_eq!(TenantSlug::new("a-"), Err(SlugError::EdgeHyphen));
        assert_eq!(TenantSlug::new("aB"), Err(SlugError::InvalidChar { at: 1 }));
        assert_eq!(
            TenantSlug::new("a.b"),
            Err(SlugError::InvalidChar { at: 1 })
        );
        assert_eq!(TenantSlug::new("é"), Err(SlugError::InvalidChar { at: 0 }));
        assert_eq!(
            TenantSlug::parse_bytes(b"ab\xff"),
            Err(SlugError::InvalidChar { at: 2 })
        );
    }

    #[test]
    fn slug_serde_validates() {
        let slug = TenantSlug::new("acme").unwrap();
        assert_eq!(serde_json::to_string(&slug).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<TenantSlug>("\"ACME\"").is_err());
    }
}
