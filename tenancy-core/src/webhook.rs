//! Signed webhooks, both ways: signing what the [`outbox`](crate::outbox)
//! sends, and verifying callbacks (a billing provider confirming a plan
//! change) so a tampered, forged, stale or replayed one is refused.
//!
//! # Wire format
//!
//! | Header | Value |
//! |---|---|
//! | `Idempotency-Key` | the message id (a UUID; at most 128 of `A-Z a-z 0-9 - _`), the same on every attempt |
//! | `Tenancy-Signature` | `t=<unix seconds>,v1=<hex HMAC-SHA256>` (up to four `v1`, for secret rotation) |
//!
//! The MAC covers `"{t}.{idempotency key}.{body}"` under a shared secret, so
//! neither the body, the key nor the time can be changed without the
//! secret. A verifier refuses signatures older (or newer) than its
//! tolerance (5 minutes by default) and remembers the keys it accepted for
//! that long, so a captured request cannot be replayed.
//!
//! ```
//! use tenancy_core::webhook::{WebhookSecret, WebhookVerifier, WebhookError, sign};
//!
//! let secret = WebhookSecret::new(b"0123456789abcdef0123456789abcdef".to_vec())?;
//! let body = br#"{"request_id":"r-1","status":"confirmed"}"#;
//! let header = sign(&secret, "0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11", chrono::Utc::now(), body);
//!
//! let verifier = WebhookVerifier::new(secret);
//! verifier.verify(Some(&header), Some("0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11"), body)?;
//! // The same request again is a replay.
//! assert!(matches!(
//!     verifier.verify(Some(&header), Some("0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11"), body),
//!     Err(WebhookError::Replayed { .. })
//! ));
//! # Ok::<(), WebhookError>(())
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The header carrying the message id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header carrying the timestamp and MAC.
pub const SIGNATURE_HEADER: &str = "tenancy-signature";
/// The header naming the message's topic (informational, not signed).
pub const TOPIC_HEADER: &str = "tenancy-topic";
/// The longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// A shared webhook secret (at least 16 bytes; 32 random bytes advised).
#[derive(Clone)]
pub struct WebhookSecret(HmacSha256);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// A secret from raw bytes; fewer than 16 is refused.
    ///
    /// ```
    /// # use tenancy_core::webhook::WebhookSecret;
    /// assert!(WebhookSecret::new(b"short".to_vec()).is_err());
    /// ```
    pub fn new(bytes: Vec<u8>) -> Result<Self, WebhookError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < 16 {
            return Err(WebhookError::WeakSecret);
        }
        // The keyed state is kept, not the bytes (HMAC accepts any length).
        HmacSha256::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| WebhookError::WeakSecret)
    }

    fn mac(&self, t: i64, key: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(key.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `Tenancy-Signature` value for `body` sent with idempotency key `key`
/// at `at`.
pub fn sign(secret: &WebhookSecret, key: &str, at: DateTime<Utc>, body: &[u8]) -> String {
    let t = at.timestamp();
    let tag = secret.mac(t, key, body).finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    format!("t={t},v1={hex}")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A required header was absent.
    #[error(
        "the {0} header is missing: signed webhooks carry Idempotency-Key and Tenancy-Signature"
    )]
    Missing(&'static str),
    /// A header was not in the expected form.
    #[error("the {0} header is malformed: expected t=<unix seconds>,v1=<hex HMAC-SHA256>")]
    Malformed(&'static str),
    /// The MAC does not match: tampered, or signed with another secret.
    #[error(
        "the webhook signature does not match: the body, key or time was changed, or the secret differs"
    )]
    BadSignature,
    /// The timestamp is outside the tolerance.
    #[error(
        "the webhook was signed {age_secs} s from now, outside the {tolerance_secs} s tolerance: send a fresh one"
    )]
    Expired {
        /// Seconds between the signature time and now (absolute).
        age_secs: u64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// This idempotency key was already accepted.
    #[error("webhook {key} was already received: replays are refused")]
    Replayed {
        /// The key.
        key: String,
    },
    /// A secret shorter than 16 bytes.
    #[error("a webhook secret needs at least 16 bytes (32 random bytes advised)")]
    WeakSecret,
}

impl WebhookError {
    /// The HTTP status to answer with: 409 for a replay, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            Self::Replayed { .. } => 409,
            Self::WeakSecret => 500,
            _ => 401,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Replayed { .. } => "webhook-replayed",
            Self::Expired { .. } => "webhook-expired",
            Self::WeakSecret => "webhook-misconfigured",
            _ => "webhook-signature-invalid",
        }
    }
}

/// Verifies signed requests and refuses replays. See the [module docs](self).
///
/// Accepted keys are remembered in memory for the tolerance (bounded at
/// 1 million); a receiver running several processes should also make the
/// effect idempotent (as the reference app does: a plan request is applied
/// only while pending).
#[derive(Clone)]
pub struct WebhookVerifier {
    secret: WebhookSecret,
    tolerance: Duration,
    seen: moka::sync::Cache<String, ()>,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A verifier with a 5-minute tolerance.
    pub fn new(secret: WebhookSecret) -> Self {
        Self::with_tolerance(secret, Duration::from_secs(300))
    }

    /// A verifier accepting signatures at most `tolerance` from now.
    pub fn with_tolerance(secret: WebhookSecret, tolerance: Duration) -> Self {
        Self {
            secret,
            tolerance,
            seen: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                // Twice the tolerance: a key is remembered for as long as
                // its signature could still pass the time check.
                .time_to_live(tolerance.saturating_mul(2).max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Verifies now; see [`WebhookVerifier::verify_at`].
    pub fn verify(
        &self,
        signature: Option<&str>,
        key: Option<&str>,
        body: &[u8],
    ) -> Result<(), WebhookError> {
        self.verify_at(signature, key, body, Utc::now())
    }

    /// Checks the headers' form, the MAC (constant time), the time against
    /// `now`, then that the key is new — in that order, so an unsigned
    /// request never marks a key as used.
    pub fn verify_at(
        &self,
        signature: Option<&str>,
        key: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), WebhookError> {
        let key = self.verify_signature_at(signature, key, body, now)?;
        if !self.seen.entry(key.to_owned()).or_insert(()).is_fresh() {
            return Err(WebhookError::Replayed {
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Forgets that `key` was received, so the same request can be sent
    /// again: for a receiver that could not apply an accepted request for
    /// a passing reason (its store was busy) and asks for a resend.
    pub fn forget(&self, key: &str) {
        self.seen.invalidate(key);
    }

    /// [`WebhookVerifier::verify_at`] without the replay check, for a
    /// receiver that deduplicates by idempotency key itself (an outbox
    /// redelivers a message with the same key after a lost
    /// acknowledgement; the receiver should answer 2xx and not apply it
    /// twice). Returns the key.
    pub fn verify_signature_at<'k>(
        &self,
        signature: Option<&str>,
        key: Option<&'k str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<&'k str, WebhookError> {
        let key = key.ok_or(WebhookError::Missing(IDEMPOTENCY_HEADER))?;
        // No '.': the MAC covers "t.key.body", so a key with a dot could be
        // re-split against the body.
        let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(key_char) {
            return Err(WebhookError::Malformed(IDEMPOTENCY_HEADER));
        }
        let signature = signature.ok_or(WebhookError::Missing(SIGNATURE_HEADER))?;
        let malformed = || WebhookError::Malformed(SIGNATURE_HEADER);
        let mut t = None;
        // Several v1 values are accepted (a sender rotating its secret signs
        // with both); one must match.
        let mut tags = Vec::new();
        for part in signature.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| malformed())?),
                Some(("v1", v)) if tags.len() < 4 => tags.push(unhex(v).ok_or_else(malformed)?),
                Some(("v1", _)) => return Err(malformed()),
                _ => {}
            }
        }
        let t = t.ok_or_else(malformed)?;
        if tags.is_empty() {
            return Err(malformed());
        }
        let mac = self.secret.mac(t, key, body);
        if !tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
            return Err(WebhookError::BadSignature);
        }
        let age_secs = now.timestamp().abs_diff(t);
        if age_secs > self.tolerance.as_secs() {
            return Err(WebhookError::Expired {
                age_secs,
                tolerance_secs: self.tolerance.as_secs(),
            });
        }
        Ok(key)
    }
}

/// Delivers outbox messages as signed HTTPS `POST`s (feature `webhook`).
#[cfg(feature = "webhook")]
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: WebhookSecret,
}

#[cfg(feature = "webhook")]
impl HttpTransport {
    /// Posts to `url`, signed with `secret`, each attempt timing out after
    /// 10 s (keep the deliverer's lease longer).
    ///
    /// ```no_run
    /// # fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use tenancy_core::webhook::{HttpTransport, WebhookSecret};
    /// let t = HttpTransport::new("https://billing.example.com/hooks", WebhookSecret::new(vec![7; 32])?)?;
    /// # Ok(()) }
    /// ```
    pub fn new(url: &str, secret: WebhookSecret) -> Result<Self, crate::outbox::DeliveryError> {
        let url = reqwest::Url::parse(url).map_err(|e| {
            crate::outbox::DeliveryError::Permanent(format!("webhook URL {url:?}: {e}"))
        })?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::outbox::DeliveryError::Permanent(e.to_string()))?;
        Ok(Self {
            client,
            url,
            secret,
        })
    }
}

#[cfg(feature = "webhook")]
#[async_trait::async_trait]
impl crate::outbox::Transport for HttpTransport {
    async fn send(
        &self,
        message: &crate::outbox::OutboxMessage,
    ) -> Result<(), crate::outbox::DeliveryError> {
        use crate::outbox::DeliveryError;
        let body = message.body();
        let key = message.id.to_string();
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_HEADER, &key)
            .header(TOPIC_HEADER, &message.topic)
            .header(
                SIGNATURE_HEADER,
                sign(&self.secret, &key, Utc::now(), &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::Retry(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(DeliveryError::Retry(format!("receiver answered {status}")))
        } else {
            Err(DeliveryError::Permanent(format!(
                "receiver answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::new(vec![7; 32]).unwrap()
    }

    #[test]
    fn tampering_with_body_key_or_time_breaks_the_signature() {
        let v = WebhookVerifier::new(secret());
        let now = Utc::now();
        let header = sign(&secret(), "k-1", now, b"{\"a\":1}");
        assert_eq!(
            v.verify_at(Some(&header), Some("k-1"), b"{\"a\":2}", now),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            v.verify_at(Some(&header), Some("k-2"), b"{\"a\":1}", now),
            Err(WebhookError::BadSignature)
        );
        let moved = header.replacen(
            &format!("t={}", now.timestamp()),
            &format!("t={}", now.timestamp() + 1),
            1,
        );
        assert_eq!(
            v.verify_at(Some(&moved), Some("k-1"), b"{\"a\":1}", now),
            Err(WebhookError::BadSignature)
        );
        let other = sign(
            &WebhookSecret::new(vec![8; 32]).unwrap(),
            "k-1",
            now,
            b"{\"a\":1}",
        );
        assert_eq!(
            v.verify_at(Some(&other), Some("k-1"), b"{\"a\":1}", now),
            Err(WebhookError::BadSignature)
        );
        // The refusals did not use the key up.
        assert_eq!(
            v.verify_at(Some(&header), Some("k-1"), b"{\"a\":1}", now),
            Ok(())
        );
    }

    #[test]
    fn a_rotated_secret_verifies_with_either_tag_and_hex_in_any_case() {
        let v = WebhookVerifier::new(secret());
        let now = Utc::now();
        let old = sign(&WebhookSecret::new(vec![8; 32]).unwrap(), "k-1", now, b"x");
        let new = sign(&secret(), "k-1", now, b"x");
        let tag = |h: &str| h.split("v1=").nth(1).unwrap().to_owned();
        let both = format!(
            "t={},v1={},v1={}",
            now.timestamp(),
            tag(&old),
            tag(&new).to_uppercase()
        );
        assert_eq!(v.verify_at(Some(&both), Some("k-1"), b"x", now), Ok(()));
        let neither = format!("t={},v1={}", now.timestamp(), tag(&old));
        assert_eq!(
            v.verify_at(Some(&neither), Some("k-2"), b"x", now),
            Err(WebhookError::BadSignature)
        );
    }

    #[test]
    fn stale_and_replayed_requests_are_refused() {
        let v = WebhookVerifier::new(secret());
        let then = Utc::now() - chrono::Duration::minutes(6);
        let header = sign(&secret(), "k", then, b"x");
        assert!(matches!(
            v.verify(Some(&header), Some("k"), b"x"),
            Err(WebhookError::Expired { .. })
        ));
        let header = sign(&secret(), "k", Utc::now(), b"x");
        assert_eq!(v.verify(Some(&header), Some("k"), b"x"), Ok(()));
        assert_eq!(
            v.verify(Some(&header), Some("k"), b"x")
                .unwrap_err()
                .status(),
            409
        );
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let v = WebhookVerifier::new(secret());
        assert_eq!(
            v.verify(None, Some("k"), b""),
            Err(WebhookError::Missing(SIGNATURE_HEADER))
        );
        assert_eq!(
            v.verify(Some("t=1,v1=00"), None, b""),
            Err(WebhookError::Missing(IDEMPOTENCY_HEADER))
        );
        for key in ["a.b", "k k", "ключ"] {
            assert_eq!(
                v.verify(Some("t=1,v1=00"), Some(key), b""),
                Err(WebhookError::Malformed(IDEMPOTENCY_HEADER)),
                "{key}"
            );
        }
        for bad in ["", "t=x,v1=00", "t=1", "v1=00", "t=1,v1=0g", "t=1,v1=0"] {
            assert_eq!(
                v.verify(Some(bad), Some("k"), b""),
                Err(WebhookError::Malformed(SIGNATURE_HEADER)),
                "{bad}"
            );
        }
    }
}
