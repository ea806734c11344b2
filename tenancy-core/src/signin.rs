//! Sign-in protection: per-account and per-client limits with exponential
//! back-off and lockout, exact across processes.
//!
//! A [`SignInGuard`] is asked before a password (or a TOTP code, or an
//! invitation token) is checked: [`SignInGuard::begin`] charges one attempt
//! to the account and one to the client address, **before** the check, so
//! that a burst of concurrent guesses cannot all pass the test "not locked
//! yet" — the charge is one atomic update of the stored [`AttemptState`].
//! The outcome then settles the attempt: [`SignInAttempt::succeeded`] clears
//! the account's failures and gives the client back its charge (a correct
//! password never erases that client's earlier failures), and
//! [`SignInAttempt::failed`] keeps both charges.
//!
//! Each counter follows an [`AttemptRule`]: a number of free attempts, then
//! a back-off that doubles with every further attempt (1 s, 2 s, 4 s, …)
//! up to the lockout duration, reached at once from `lockout_after`
//! attempts. A counter is forgotten after a quiet period.
//!
//! | | account (default) | client address (default) |
//! |---|---|---|
//! | free attempts | 5 | 20 |
//! | back-off | 1 s, doubling | 1 s, doubling |
//! | lockout | 15 min from 10 attempts | 15 min from 40 attempts |
//! | forgotten after | 1 h without attempts | 1 h without attempts |
//! | on success | reset | the attempt is refunded |
//!
//! The account key is whatever the caller names the account by (the
//! submitted email, with the tenant), so an unknown account is throttled
//! exactly like a real one and the refusal says nothing about which it is.
//! Keys are stored as SHA-256 digests: the stores hold no email or address.
//! IPv6 clients are counted per /64 (one host usually holds a whole /64).
//!
//! Per-account lockout lets someone who knows an email lock its owner out
//! for the lockout duration; the per-client limit slows that down, and the
//! rules are yours to tune ([`SignInGuard::with_rules`]).
//!
//! Stores: [`MemoryAttempts`] (one process), `tenancy_sqlx::PgAttempts`
//! (PostgreSQL) and `tenancy_redis::RedisAttempts` (Redis) — the rules are
//! applied here, once; a store only updates one record atomically.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_core::signin::{MemoryAttempts, SignInGuard};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = SignInGuard::new(Arc::new(MemoryAttempts::new()));
//! let ip = "203.0.113.7".parse().ok();
//! for _ in 0..5 {
//!     let attempt = guard.begin("acme/ann@example.com", ip).await?;
//!     attempt.failed().await?; // wrong password
//! }
//! // The sixth guess waits for the back-off.
//! let refused = guard.begin("acme/ann@example.com", ip).await.unwrap_err();
//! assert_eq!(refused.status(), 429);
//! assert!(refused.retry_after().is_some());
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::quota::{Clock, SystemClock};

/// What is stored per key: the attempts counted, until when the key is
/// locked, and when the last attempt was made (milliseconds since the Unix
/// epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptState {
    /// Attempts charged and not refunded since the counter was last reset.
    pub attempts: u32,
    /// No attempt is admitted before this instant (ms since the epoch).
    pub locked_until_ms: u64,
    /// The last admitted attempt (ms since the epoch).
    pub last_ms: u64,
}

impl AttemptState {
    /// A state with these fields (what stores read back).
    pub fn new(attempts: u32, locked_until_ms: u64, last_ms: u64) -> Self {
        Self {
            attempts,
            locked_until_ms,
            last_ms,
        }
    }

    /// The compact text form stores keep: `attempts:locked_until_ms:last_ms`.
    ///
    /// ```
    /// use tenancy_core::signin::AttemptState;
    /// let s = AttemptState::new(3, 1_000, 900);
    /// assert_eq!(AttemptState::decode(&s.encode()), Some(s));
    /// assert_eq!(AttemptState::decode("3:x:1"), None);
    /// ```
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.attempts, self.locked_until_ms, self.last_ms
        )
    }

    /// Parses [`AttemptState::encode`]'s form; `None` when malformed.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let attempts = parts.next()?.parse().ok()?;
        let locked_until_ms = parts.next()?.parse().ok()?;
        let last_ms = parts.next()?.parse().ok()?;
        Some(Self::new(attempts, locked_until_ms, last_ms))
    }
}

/// How one counter (per account, or per client address) limits attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptRule {
    /// Attempts admitted before any back-off.
    pub free: u32,
    /// The first back-off; it doubles with every further attempt.
    pub backoff: Duration,
    /// The longest wait (the lockout).
    pub lockout: Duration,
    /// From this many attempts on, every attempt locks for `lockout`.
    pub lockout_after: u32,
    /// A counter without attempts for this long starts again from zero.
    pub forget_after: Duration,
    /// Whether a success resets the counter (accounts) or only refunds its
    /// own charge (client addresses).
    pub reset_on_success: bool,
}

impl AttemptRule {
    /// The default per-account rule (see the [module docs](self)).
    pub const fn account() -> Self {
        Self {
            free: 5,
            backoff: Duration::from_secs(1),
            lockout: Duration::from_secs(15 * 60),
            lockout_after: 10,
            forget_after: Duration::from_secs(3600),
            reset_on_success: true,
        }
    }

    /// The default per-client-address rule.
    pub const fn client() -> Self {
        Self {
            free: 20,
            backoff: Duration::from_secs(1),
            lockout: Duration::from_secs(15 * 60),
            lockout_after: 40,
            forget_after: Duration::from_secs(3600),
            reset_on_success: false,
        }
    }

    /// The same rule with `free` attempts before the back-off.
    pub const fn with_free(mut self, free: u32) -> Self {
        self.free = free;
        self
    }

    /// The same rule with this first back-off.
    pub const fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The same rule locking for `lockout` from `after` attempts.
    pub const fn with_lockout(mut self, lockout: Duration, after: u32) -> Self {
        self.lockout = lockout;
        self.lockout_after = after;
        self
    }

    /// The same rule forgetting a counter after this quiet period.
    pub const fn with_forget_after(mut self, quiet: Duration) -> Self {
        self.forget_after = quiet;
        self
    }

    /// How long a record must be kept: the lockout plus the quiet period.
    pub fn keep(&self) -> Duration {
        self.lockout.saturating_add(self.forget_after)
    }

    /// The wait imposed after the `attempts`-th attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_core::signin::AttemptRule;
    /// let r = AttemptRule::account(); // 5 free, 1 s doubling, 15 min from 10
    /// assert_eq!(r.wait_after(4), Duration::ZERO);
    /// assert_eq!(r.wait_after(5), Duration::from_secs(1));
    /// assert_eq!(r.wait_after(7), Duration::from_secs(4));
    /// assert_eq!(r.wait_after(10), Duration::from_secs(900));
    /// ```
    pub fn wait_after(&self, attempts: u32) -> Duration {
        if attempts >= self.lockout_after {
            return self.lockout;
        }
        match attempts.checked_sub(self.free) {
            None => Duration::ZERO,
            Some(n) => {
                let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
                self.backoff.saturating_mul(factor).min(self.lockout)
            }
        }
    }

    /// Charges one attempt at `now_ms`: the new state, and whether the
    /// attempt is admitted (`Err(wait)` while the key is locked; a refused
    /// attempt changes nothing).
    pub fn charge(&self, state: AttemptState, now_ms: u64) -> (AttemptState, Result<(), Duration>) {
        if now_ms < state.locked_until_ms {
            let wait = Duration::from_millis(state.locked_until_ms - now_ms);
            return (state, Err(wait));
        }
        let mut s = state;
        if now_ms.saturating_sub(s.last_ms) >= millis(self.forget_after) {
            s.attempts = 0;
        }
        s.attempts = s.attempts.saturating_add(1);
        s.last_ms = now_ms;
        let wait = self.wait_after(s.attempts);
        s.locked_until_ms = if wait.is_zero() {
            0
        } else {
            now_ms.saturating_add(millis(wait))
        };
        (s, Ok(()))
    }

    /// Settles a successful attempt: a reset, or its own charge refunded
    /// (and the lock lifted when the count falls below the free attempts).
    pub fn succeed(&self, state: AttemptState) -> AttemptState {
        if self.reset_on_success {
            return AttemptState::default();
        }
        self.refund(state)
    }

    /// Takes one attempt back (an attempt that could not be judged).
    pub fn refund(&self, state: AttemptState) -> AttemptState {
        let mut s = state;
        s.attempts = s.attempts.saturating_sub(1);
        if s.attempts < self.free {
            s.locked_until_ms = 0;
        }
        s
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where attempt counters live. A store only has to apply an update to one
/// record atomically (across processes, for shared stores); the rules are
/// applied by [`SignInGuard`].
#[async_trait]
pub trait AttemptStore: Send + Sync {
    /// Applies `update` to the record under `key` (the default state when
    /// there is none), stores the result for at least `keep`, and returns
    /// the state before and after. `update` may be called more than once
    /// (optimistic stores retry); only the last result is stored.
    async fn update(
        &self,
        key: &str,
        keep: Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError>;
}

/// Attempt counters in this process's memory (bounded: the least recently
/// used keys are dropped beyond the capacity; idle keys expire). Updates of
/// one key are atomic (moka's per-key `and_compute_with`).
#[derive(Debug)]
pub struct MemoryAttempts {
    records: moka::sync::Cache<String, AttemptState>,
}

impl Default for MemoryAttempts {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryAttempts {
    /// Up to a million keys, each kept 2 hours after its last attempt.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000, Duration::from_secs(2 * 3600))
    }

    /// At most `capacity` keys, each kept `idle` after its last update
    /// (make it at least the rules' [`AttemptRule::keep`]).
    pub fn with_capacity(capacity: u64, idle: Duration) -> Self {
        Self {
            records: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        }
    }
}

#[async_trait]
impl AttemptStore for MemoryAttempts {
    async fn update(
        &self,
        key: &str,
        _keep: Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError> {
        use moka::ops::compute::Op;
        let mut seen = (AttemptState::default(), AttemptState::default());
        self.records
            .entry(key.to_owned())
            .and_compute_with(|entry| {
                let before = entry.map(moka::Entry::into_value).unwrap_or_default();
                let after = update(before);
                seen = (before, after);
                if after == AttemptState::default() {
                    Op::Remove
                } else {
                    Op::Put(after)
                }
            });
        Ok(seen)
    }
}

/// Which counter refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Throttled {
    /// The account's.
    Account,
    /// The client address's.
    Client,
}

/// Why [`SignInGuard::begin`] did not admit an attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignInError {
    /// Too many attempts: wait `retry_after`.
    #[error("too many sign-in attempts: retry in {} s", crate::problem::secs_up(*retry_after))]
    Throttled {
        /// How long until an attempt is admitted again.
        retry_after: Duration,
        /// Which counter refused (for logs and audit, not for the client:
        /// the response is the same either way).
        by: Throttled,
    },
    /// The attempt store did not answer; the attempt is refused (without a
    /// count there is no limit).
    #[error("sign-in attempts cannot be counted right now: {0}")]
    Unavailable(#[from] StoreError),
}

impl SignInError {
    /// 429 when throttled, 503 when the store is down.
    pub fn status(&self) -> u16 {
        match self {
            Self::Throttled { .. } => 429,
            Self::Unavailable(_) => 503,
        }
    }

    /// A stable code: `sign-in-throttled` or `sign-in-unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "sign-in-throttled",
            Self::Unavailable(_) => "sign-in-unavailable",
        }
    }

    /// How long the client should wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            Self::Unavailable(_) => Some(Duration::from_secs(1)),
        }
    }

    /// The RFC 9457 response: the same for every account and client, with
    /// `Retry-After`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_core::signin::{SignInError, Throttled};
    /// let e = SignInError::Throttled { retry_after: Duration::from_millis(1500), by: Throttled::Account };
    /// let p = e.problem();
    /// assert_eq!((p.status, p.code), (429, "sign-in-throttled"));
    /// assert!(p.headers.contains(&("retry-after", "2".to_owned())));
    /// ```
    pub fn problem(&self) -> crate::problem::Problem {
        let (title, detail) = match self {
            Self::Throttled { .. } => (
                "Too Many Requests",
                "too many sign-in attempts; wait before trying again".to_owned(),
            ),
            Self::Unavailable(_) => (
                "Service Unavailable",
                "sign-in is unavailable right now; retry shortly".to_owned(),
            ),
        };
        let mut p = crate::problem::Problem::new(self.status(), self.code(), title, detail);
        if let Some(wait) = self.retry_after() {
            let secs = crate::problem::secs_up(wait).max(1);
            p.extensions
                .insert("retry_after".into(), serde_json::json!(secs));
            p.headers
                .push((crate::problem::RETRY_AFTER, secs.to_string()));
        }
        p
    }
}

/// Sign-in protection. See the [module docs](self).
#[derive(Clone)]
pub struct SignInGuard {
    store: Arc<dyn AttemptStore>,
    account: AttemptRule,
    client: AttemptRule,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SignInGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInGuard")
            .field("account", &self.account)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl SignInGuard {
    /// The default rules over `store`.
    pub fn new(store: Arc<dyn AttemptStore>) -> Self {
        Self {
            store,
            account: AttemptRule::account(),
            client: AttemptRule::client(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Replaces the per-account and per-client rules.
    pub fn with_rules(mut self, account: AttemptRule, client: AttemptRule) -> Self {
        self.account = account;
        self.client = client;
        self
    }

    /// Reads time from `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key a client address is counted under (IPv6 per /64).
    ///
    /// ```
    /// use tenancy_core::signin::SignInGuard;
    /// let a = SignInGuard::client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
    /// let b = SignInGuard::client_key("2001:db8:1:2:bbbb::9".parse().unwrap());
    /// assert_eq!(a, b);
    /// assert_ne!(a, SignInGuard::client_key("2001:db8:1:3::1".parse().unwrap()));
    /// ```
    pub fn client_key(ip: IpAddr) -> String {
        digest("client", &crate::client::counted_as(ip))
    }

    /// The key an account is counted under.
    pub fn account_key(account: &str) -> String {
        digest("account", account)
    }

    fn now_ms(&self) -> u64 {
        millis(self.clock.now())
    }

    /// Charges one attempt to `account` (and to the client address, when
    /// known) before the credentials are checked. Refused while either is
    /// backing off or locked; a refusal by the client counter charges
    /// nothing to the account.
    pub async fn begin(
        &self,
        account: &str,
        client: Option<IpAddr>,
    ) -> Result<SignInAttempt, SignInError> {
        let client_key = client.map(Self::client_key);
        if let Some(key) = &client_key {
            self.charge(key, &self.client, Throttled::Client).await?;
        }
        let account_key = Self::account_key(account);
        self.charge(&account_key, &self.account, Throttled::Account)
            .await?;
        Ok(SignInAttempt {
            guard: self.clone(),
            account_key,
            client_key,
        })
    }

    async fn charge(
        &self,
        key: &str,
        rule: &AttemptRule,
        by: Throttled,
    ) -> Result<(), SignInError> {
        let now = self.now_ms();
        let rule_copy = *rule;
        let (before, _) = self
            .store
            .update(key, rule.keep(), &move |s| rule_copy.charge(s, now).0)
            .await?;
        rule.charge(before, now)
            .1
            .map_err(|retry_after| SignInError::Throttled { retry_after, by })
    }

    /// The current state of an account's counter (for an operator's view;
    /// charges nothing).
    pub async fn account_state(&self, account: &str) -> Result<AttemptState, StoreError> {
        let (before, _) = self
            .store
            .update(&Self::account_key(account), self.account.keep(), &|s| s)
            .await?;
        Ok(before)
    }

    /// Lifts an account's back-off and lockout (an operator unlocking it).
    pub async fn unlock_account(&self, account: &str) -> Result<(), StoreError> {
        self.store
            .update(&Self::account_key(account), self.account.keep(), &|_| {
                AttemptState::default()
            })
            .await?;
        Ok(())
    }
}

fn digest(kind: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let out = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("signin:");
    for b in out {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// An admitted attempt; settle it with the outcome of the check. Dropping
/// it unsettled counts as a failure (the charges stay).
#[derive(Debug)]
#[must_use = "settle the attempt with `succeeded` or `failed`"]
pub struct SignInAttempt {
    guard: SignInGuard,
    account_key: String,
    client_key: Option<String>,
}

impl SignInAttempt {
    /// The credentials were right: the account's counter is reset and the
    /// client's charge refunded.
    pub async fn succeeded(self) -> Result<(), StoreError> {
        let g = &self.guard;
        let account = g.account;
        g.store
            .update(&self.account_key, account.keep(), &move |s| {
                account.succeed(s)
            })
            .await?;
        if let Some(key) = &self.client_key {
            let client = g.client;
            g.store
                .update(key, client.keep(), &move |s| client.succeed(s))
                .await?;
        }
        Ok(())
    }

    /// The credentials were wrong: the charges stay.
    pub async fn failed(self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The credentials could not be checked (the server was busy): both
    /// charges are taken back, so a refusal of the server's making counts
    /// against no one.
    pub async fn abandon(self) -> Result<(), StoreError> {
        let g = &self.guard;
        let account = g.account;
        g.store
            .update(&self.account_key, account.keep(), &move |s| {
                account.refund(s)
            })
            .await?;
        if let Some(key) = &self.client_key {
            let client = g.client;
            g.store
                .update(key, client.keep(), &move |s| client.refund(s))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::ManualClock;

    fn guard(clock: &ManualClock) -> SignInGuard {
        SignInGuard::new(Arc::new(MemoryAttempts::new())).with_clock(Arc::new(clock.clone()))
    }

    #[tokio::test]
    async fn back_off_doubles_then_locks_out() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let g = guard(&clock);
        let mut waits = Vec::new();
        for _ in 0..12 {
            loop {
                match g.begin("acme/ann", None).await {
                    Ok(a) => {
                        a.failed().await.unwrap();
                        break;
                    }
                    Err(SignInError::Throttled { retry_after, by }) => {
                        assert_eq!(by, Throttled::Account);
                        waits.push(retry_after.as_secs());
                        clock.advance(retry_after);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 900, 900]);
    }

    #[tokio::test]
    async fn success_resets_the_account_but_only_refunds_the_client() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let rules = (AttemptRule::account(), AttemptRule::client().with_free(3));
        let g = guard(&clock).with_rules(rules.0, rules.1);
        let ip = "198.51.100.4".parse().ok();
        for _ in 0..2 {
            g.begin("a", ip).await.unwrap().failed().await.unwrap();
        }
        // A correct password for another account from the same client.
        g.begin("b", ip).await.unwrap().succeeded().await.unwrap();
        // The client's two failures remain: the third attempt starts the back-off.
        g.begin("c", ip).await.unwrap().failed().await.unwrap();
        let refused = g.begin("d", ip).await.unwrap_err();
        assert!(matches!(
            refused,
            SignInError::Throttled {
                by: Throttled::Client,
                ..
            }
        ));
        // Account "a" had two failures; a success resets it.
        clock.advance(Duration::from_secs(2));
        g.begin("a", None).await.unwrap().succeeded().await.unwrap();
        assert_eq!(g.account_state("a").await.unwrap(), AttemptState::default());
    }

    #[tokio::test]
    async fn a_quiet_period_forgets() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let g = guard(&clock);
        for _ in 0..4 {
            g.begin("x", None).await.unwrap().failed().await.unwrap();
        }
        clock.advance(Duration::from_secs(3600));
        g.begin("x", None).await.unwrap().failed().await.unwrap();
        assert_eq!(g.account_state("x").await.unwrap().attempts, 1);
    }

    #[tokio::test]
    async fn concurrent_guesses_are_charged_exactly() {
        let g = SignInGuard::new(Arc::new(MemoryAttempts::new()));
        let admitted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (g, admitted) = (g.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                if let Ok(a) = g.begin("target", None).await {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    a.failed().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }
}
