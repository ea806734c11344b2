//! Sign-in attempt counters in Redis, shared by every instance.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tenancy_core::StoreError;
use tenancy_core::signin::{AttemptState, AttemptStore};

/// Sets the key to `ARGV[2]` (for `ARGV[3]` ms; an empty value deletes it)
/// only while it still holds `ARGV[1]` (empty: absent): a compare-and-set,
/// so the sign-in rules stay in Rust, applied once, and a concurrent update
/// makes the loser read again.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// Give up after this many lost races on one key (each loss means another
/// attempt on the same key was charged meanwhile).
const MAX_ROUNDS: usize = 64;

/// Sign-in attempt counters (`tenancy:signin:<digest>`), for
/// [`tenancy_core::signin::SignInGuard`]: each update reads the key and
/// writes it back with a compare-and-set script, retrying when another
/// process changed it in between — exact across instances.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tenancy_core::signin::SignInGuard;
///
/// let attempts = tenancy_redis::RedisAttempts::connect("redis://127.0.0.1:6379").await?;
/// let guard = SignInGuard::new(Arc::new(attempts));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisAttempts {
    conn: ConnectionManager,
    cas: Script,
}

impl std::fmt::Debug for RedisAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAttempts").finish_non_exhaustive()
    }
}

impl RedisAttempts {
    /// Connects (with automatic reconnection) to `url`.
    pub async fn connect(url: &str) -> Result<Self, crate::RedisQuotaError> {
        let client = redis::Client::open(url)?;
        Ok(Self::new(ConnectionManager::new(client).await?))
    }

    /// Uses an existing connection manager.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            cas: Script::new(CAS_SCRIPT),
        }
    }
}

fn encode(state: &AttemptState) -> String {
    if *state == AttemptState::default() {
        String::new()
    } else {
        state.encode()
    }
}

#[async_trait]
impl AttemptStore for RedisAttempts {
    async fn update(
        &self,
        key: &str,
        keep: Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError> {
        let key = format!("tenancy:{key}");
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        for _ in 0..MAX_ROUNDS {
            let current: Option<String> = conn.get(&key).await.map_err(StoreError::new)?;
            let current = current.unwrap_or_default();
            let before = if current.is_empty() {
                AttemptState::default()
            } else {
                // A value this store did not write is not trusted to be empty.
                AttemptState::decode(&current).ok_or_else(|| {
                    StoreError::msg(format!("{key} holds {current:?}, not an attempt state"))
                })?
            };
            let after = update(before);
            let set: i64 = self
                .cas
                .key(&key)
                .arg(&current)
                .arg(encode(&after))
                .arg(keep_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::new)?;
            if set == 1 {
                return Ok((before, after));
            }
        }
        Err(StoreError::msg(format!(
            "{key}: {MAX_ROUNDS} concurrent updates in a row; try again"
        )))
    }
}
