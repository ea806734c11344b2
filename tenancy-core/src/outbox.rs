//! A transactional outbox: messages for other systems (billing, alerting)
//! written in the same transaction as the change they describe, and
//! delivered afterwards — signed, retried with back-off, each carrying an
//! idempotency key.
//!
//! # Why an outbox
//!
//! Calling a billing webhook from a request handler loses messages (the
//! process dies after the commit, before the call) or invents them (the call
//! succeeds, the transaction rolls back). With an outbox the message is a
//! row committed with the change: it exists exactly when the change does. A
//! [`Deliverer`] then sends it until the receiver acknowledges, so delivery
//! is *at least once*; the message's [`OutboxMessage::id`] travels as the
//! `Idempotency-Key` header, and a receiver that remembers keys it has
//! applied turns that into *exactly once in effect*.
//!
//! # Where messages come from
//!
//! - [`TenantUpdate::emit`](crate::store::TenantUpdate::emit): a message
//!   stored with a tenant record change (plan changes, lifecycle
//!   transitions) by every [`TenantWriter`](crate::store::TenantWriter) of
//!   this family: [`InMemoryTenantStore`](crate::store::InMemoryTenantStore)
//!   keeps them in its [`MemoryOutbox`]; the PostgreSQL and SQLite stores of
//!   `tenancy-sqlx` insert them in the update's transaction.
//! - Backends may emit on their own (usage counters, high-risk audit
//!   events); see `tenancy-sqlx`.
//!
//! # Delivery
//!
//! A [`Deliverer`] claims due messages of one [`channel`](OutboxMessage::channel)
//! for a lease, sends each through a [`Transport`] (the `webhook` feature
//! provides an HTTPS one, signed with [`crate::webhook`]), then marks it
//! delivered, or schedules a retry after [`Backoff::delay`], or gives up
//! after [`Backoff::max_attempts`] (the message is kept as dead, with its
//! last error, for an operator). A deliverer that dies mid-send leaves its
//! lease to expire; the next one sends the same message, with the same key.
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tenancy_core::outbox::{Deliverer, MemoryOutbox, OutboxMessage, Transport, DeliveryError};
//! use tenancy_core::TenantId;
//!
//! struct Print;
//! #[async_trait::async_trait]
//! impl Transport for Print {
//!     async fn send(&self, m: &OutboxMessage) -> Result<(), DeliveryError> {
//!         println!("{} {} {}", m.id, m.topic, m.payload);
//!         Ok(())
//!     }
//! }
//!
//! let outbox = Arc::new(MemoryOutbox::new());
//! let tenant = TenantId::new_v4();
//! outbox.enqueue(OutboxMessage::new(tenant, "billing", "plan.changed", serde_json::json!({"to": "pro"})));
//! let report = Deliverer::new(outbox.clone(), Arc::new(Print), "billing").run_once().await?;
//! assert_eq!(report.delivered, 1);
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StoreError;
use crate::TenantId;

/// The longest topic or channel name.
pub const MAX_NAME_LEN: usize = 64;

/// One message for another system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// Unique, random: the idempotency key of every delivery attempt.
    pub id: Uuid,
    /// The tenant the message is about.
    pub tenant: TenantId,
    /// Which deliverer sends it (`billing`, `alerts`).
    pub channel: String,
    /// What happened (`plan.change_requested`, `usage.recorded`, …).
    pub topic: String,
    /// The message body.
    pub payload: serde_json::Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

impl OutboxMessage {
    /// A new message with a random id, written now.
    ///
    /// ```
    /// # use tenancy_core::{TenantId, outbox::OutboxMessage};
    /// let m = OutboxMessage::new(TenantId::new_v4(), "billing", "usage.recorded",
    ///     serde_json::json!({"resource": "quotes", "amount": 1}));
    /// assert_eq!(m.channel, "billing");
    /// ```
    pub fn new(tenant: TenantId, channel: &str, topic: &str, payload: serde_json::Value) -> Self {
        Self {
            id: Uuid::new_v4(),
            tenant,
            channel: channel.to_owned(),
            topic: topic.to_owned(),
            payload,
            created_at: Utc::now(),
        }
    }

    /// The JSON document a transport sends: id, tenant, topic, time and
    /// payload (the receiver needs no other context).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": self.id,
            "tenant_id": self.tenant,
            "topic": self.topic,
            "created_at": self.created_at,
            "payload": self.payload,
        }))
        .unwrap_or_default()
    }

    /// Checks the names (1–64 characters of `a-z`, `0-9`, `.`, `_`, `-`);
    /// stores refuse messages that fail it.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (what, name) in [("channel", &self.channel), ("topic", &self.topic)] {
            let ok = !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !ok {
                return Err(StoreError::msg(format!(
                    "outbox {what} {name:?} must be 1-64 characters of a-z, 0-9, '.', '_' and '-'"
                )));
            }
        }
        Ok(())
    }
}

/// A message claimed for delivery.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claimed {
    /// The message.
    pub message: OutboxMessage,
    /// Attempts made before this one.
    pub attempts: u32,
}

impl Claimed {
    /// A claim (for stores outside this crate).
    pub fn new(message: OutboxMessage, attempts: u32) -> Self {
        Self { message, attempts }
    }
}

/// Where a [`Deliverer`] finds messages and records what became of them.
///
/// Writing is not part of this trait: messages are written by the
/// transaction that makes the change (see the [module docs](self)).
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Up to `limit` messages of `channel` due now and not leased, oldest
    /// first, leased for `lease` (another claim skips them until it ends).
    async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// The receiver acknowledged `id`: never send it again.
    async fn delivered(&self, id: Uuid) -> Result<(), StoreError>;

    /// Attempt failed: try again at `at` (the lease ends).
    async fn retry(&self, id: Uuid, at: DateTime<Utc>, error: &str) -> Result<(), StoreError>;

    /// Given up: kept with `error`, never claimed again.
    async fn dead(&self, id: Uuid, error: &str) -> Result<(), StoreError>;

    /// Messages of `channel` neither delivered nor dead.
    async fn pending(&self, channel: &str) -> Result<u64, StoreError>;
}

#[derive(Debug, Clone)]
struct Row {
    message: OutboxMessage,
    attempts: u32,
    available_at: DateTime<Utc>,
    leased_until: Option<DateTime<Utc>>,
    delivered: bool,
    dead: Option<String>,
}

/// An in-process outbox (tests, [`InMemoryTenantStore`](crate::store::InMemoryTenantStore)).
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    rows: Mutex<Vec<Row>>,
}

impl MemoryOutbox {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<Row>> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a message, due now.
    pub fn enqueue(&self, message: OutboxMessage) {
        self.rows().push(Row {
            message,
            attempts: 0,
            available_at: Utc::now(),
            leased_until: None,
            delivered: false,
            dead: None,
        });
    }

    /// Every message ever enqueued, oldest first (delivered or not).
    pub fn messages(&self) -> Vec<OutboxMessage> {
        self.rows().iter().map(|r| r.message.clone()).collect()
    }

    fn with_row(&self, id: Uuid, f: impl FnOnce(&mut Row)) -> Result<(), StoreError> {
        let mut rows = self.rows();
        let row = rows
            .iter_mut()
            .find(|r| r.message.id == id)
            .ok_or_else(|| StoreError::msg(format!("no outbox message {id}")))?;
        f(row);
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for MemoryOutbox {
    async fn claim(
        &self,
        channel: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = Utc::now();
        let until = chrono::Duration::from_std(lease)
            .ok()
            .and_then(|l| now.checked_add_signed(l))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut rows = self.rows();
        let mut out = Vec::new();
        for row in rows.iter_mut() {
            if out.len() >= limit {
                break;
            }
            let due = !row.delivered
                && row.dead.is_none()
                && row.message.channel == channel
                && row.available_at <= now
                && row.leased_until.is_none_or(|l| l <= now);
            if due {
                row.leased_until = Some(until);
                out.push(Claimed::new(row.message.clone(), row.attempts));
            }
        }
        Ok(out)
    }

    async fn delivered(&self, id: Uuid) -> Result<(), StoreError> {
        self.with_row(id, |r| {
            r.delivered = true;
            r.leased_until = None;
        })
    }

    async fn retry(&self, id: Uuid, at: DateTime<Utc>, _error: &str) -> Result<(), StoreError> {
        self.with_row(id, |r| {
            r.attempts = r.attempts.saturating_add(1);
            r.available_at = at;
            r.leased_until = None;
        })
    }

    async fn dead(&self, id: Uuid, error: &str) -> Result<(), StoreError> {
        self.with_row(id, |r| {
            r.attempts = r.attempts.saturating_add(1);
            r.dead = Some(error.to_owned());
            r.leased_until = None;
        })
    }

    async fn pending(&self, channel: &str) -> Result<u64, StoreError> {
        Ok(self
            .rows()
            .iter()
            .filter(|r| r.message.channel == channel && !r.delivered && r.dead.is_none())
            .count() as u64)
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Worth another attempt (network error, timeout, 5xx, 408, 429).
    #[error("delivery failed, will retry: {0}")]
    Retry(String),
    /// The receiver refused the message for good (e.g. 4xx): no retry.
    #[error("delivery refused, not retried: {0}")]
    Permanent(String),
}

/// Sends one message to its receiver.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Delivers `message`; `Ok` only once the receiver acknowledged it.
    async fn send(&self, message: &OutboxMessage) -> Result<(), DeliveryError>;
}

/// Exponential back-off with full jitter between attempts.
///
/// ```
/// # use std::time::Duration;
/// use tenancy_core::outbox::Backoff;
/// let b = Backoff::default();
/// assert!(b.delay(0) <= Duration::from_secs(1));
/// assert!(b.delay(40) <= Duration::from_secs(3600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's ceiling.
    pub base: Duration,
    /// No delay is longer.
    pub cap: Duration,
    /// Attempts before a message is given up as dead.
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 1 s doubling to at most 1 h; 20 attempts (the last one 4 to 8 hours
    /// after the first, with jitter).
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            max_attempts: 20,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay after failed attempt number `attempt`
    /// (0-based): `base * 2^attempt`, at most `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[ceiling/2, ceiling]` (jitter spreads the retries
    /// of many messages that failed together).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            u64::from_le_bytes(*Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[0; 8])) % spread
        };
        half + Duration::from_millis(jitter)
    }
}

/// What one [`Deliverer::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryReport {
    /// Acknowledged by the receiver.
    pub delivered: usize,
    /// Failed, scheduled again.
    pub retried: usize,
    /// Given up.
    pub dead: usize,
    /// Left unsent: half the lease had passed (claimed again later).
    pub deferred: usize,
    /// Sent or failed, but the outcome could not be recorded (sent again
    /// after the lease, with the same key).
    pub unrecorded: usize,
}

enum Outcome {
    Delivered,
    Retried,
    Dead,
}

/// Sends the due messages of one channel. See the [module docs](self).
#[derive(Clone)]
pub struct Deliverer {
    store: Arc<dyn OutboxStore>,
    transport: Arc<dyn Transport>,
    channel: String,
    backoff: Backoff,
    batch: usize,
    lease: Duration,
    interval: Duration,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("channel", &self.channel)
            .field("backoff", &self.backoff)
            .field("batch", &self.batch)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Delivers `channel` from `store` through `transport`: batches of 32,
    /// a 30 s lease, [`Backoff::default`], polling every second.
    pub fn new(store: Arc<dyn OutboxStore>, transport: Arc<dyn Transport>, channel: &str) -> Self {
        Self {
            store,
            transport,
            channel: channel.to_owned(),
            backoff: Backoff::default(),
            batch: 32,
            lease: Duration::from_secs(30),
            interval: Duration::from_secs(1),
        }
    }

    /// The retry schedule.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a claimed message is reserved for this deliverer: longer
    /// than a transport attempt may take (its timeout), or another
    /// deliverer sends the message meanwhile.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often [`Deliverer::run`] looks for due messages.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Messages claimed at a time.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Claims the due messages once and attempts each.
    ///
    /// A send must finish within the lease, or another deliverer could take
    /// the same message: once half the lease has passed, the rest of a
    /// batch is left unsent ([`DeliveryReport::deferred`]) for a later
    /// claim. A failure to record one message's outcome is logged and does
    /// not stop the others ([`DeliveryReport::unrecorded`]; that message is
    /// sent again after its lease, with the same key).
    pub async fn run_once(&self) -> Result<DeliveryReport, StoreError> {
        use tracing::Instrument as _;
        let mut report = DeliveryReport::default();
        loop {
            let claimed_at = std::time::Instant::now();
            let claimed = self
                .store
                .claim(&self.channel, self.batch, self.lease)
                .await?;
            let full = claimed.len() >= self.batch;
            let mut deferred = false;
            for c in claimed {
                if claimed_at.elapsed() > self.lease / 2 {
                    deferred = true;
                    report.deferred += 1;
                    continue;
                }
                let m = &c.message;
                let span = tracing::info_span!("outbox.deliver", tenant.id = %m.tenant,
                    outbox.id = %m.id, outbox.topic = %m.topic, outbox.attempt = c.attempts + 1);
                match self.attempt(&c).instrument(span.clone()).await {
                    Ok(Outcome::Delivered) => report.delivered += 1,
                    Ok(Outcome::Retried) => report.retried += 1,
                    Ok(Outcome::Dead) => report.dead += 1,
                    Err(e) => {
                        span.in_scope(|| {
                            tracing::warn!(error = %e, "outbox outcome not recorded; resent after the lease");
                        });
                        report.unrecorded += 1;
                    }
                }
            }
            if !full || deferred {
                return Ok(report);
            }
        }
    }

    async fn attempt(&self, c: &Claimed) -> Result<Outcome, StoreError> {
        let m = &c.message;
        match self.transport.send(m).await {
            Ok(()) => {
                self.store.delivered(m.id).await?;
                Ok(Outcome::Delivered)
            }
            Err(e) => {
                let attempts = c.attempts.saturating_add(1);
                let permanent = matches!(e, DeliveryError::Permanent(_));
                if permanent || attempts >= self.backoff.max_attempts {
                    tracing::error!(error = %e, attempts, "outbox message given up");
                    self.store.dead(m.id, &e.to_string()).await?;
                    Ok(Outcome::Dead)
                } else {
                    let delay = self.backoff.delay(c.attempts);
                    tracing::warn!(error = %e, retry_in = ?delay, "outbox delivery failed");
                    let at = chrono::Duration::from_std(delay)
                        .ok()
                        .and_then(|d| Utc::now().checked_add_signed(d))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    self.store.retry(m.id, at, &e.to_string()).await?;
                    Ok(Outcome::Retried)
                }
            }
        }
    }

    /// Runs until `shutdown` resolves, attempting due messages every
    /// [`Deliverer::interval`]; store errors are logged and retried.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.run_once().await {
                        tracing::warn!(channel = %self.channel, error = %e, "outbox unavailable");
                    }
                }
            }
        }
    }
}
