//! Sign-in attempt counters in PostgreSQL, shared by every instance: the
//! store behind [`tenancy_core::signin::SignInGuard`] when the application
//! runs more than one process.
//!
//! Each update is one short transaction that locks the key's row
//! (`INSERT … ON CONFLICT DO NOTHING`, then `SELECT … FOR UPDATE`), so
//! concurrent attempts from any number of processes are charged one after
//! another and the limits are exact. Rows expire (`expires_at`) and are
//! pruned as updates go by.
//!
//! The table (`tenancy.signin_attempts`, migration `0017`) is not tenant
//! data and is writable by the application role: SQL running inside a
//! tenant transaction could reset the counters. If that matters in your
//! threat model, keep them in Redis (`tenancy_redis::RedisAttempts`) or in
//! a database the application's tenant connections cannot reach.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::StoreError;
use tenancy_core::signin::{AttemptState, AttemptStore};

use crate::DbError;

/// Prune expired rows once every this many updates.
const PRUNE_EVERY: u64 = 256;

/// Sign-in attempt counters in `tenancy.signin_attempts`.
///
/// ```no_run
/// use std::sync::Arc;
/// use tenancy_core::signin::SignInGuard;
/// use tenancy_sqlx::PgAttempts;
///
/// # async fn demo(pool: sqlx::PgPool) {
/// let guard = SignInGuard::new(Arc::new(PgAttempts::new(pool)));
/// # }
/// ```
#[derive(Debug)]
pub struct PgAttempts {
    pool: PgPool,
    updates: AtomicU64,
}

fn store_error(e: sqlx::Error) -> StoreError {
    StoreError::new(DbError::from(e))
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn ms_u64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

impl PgAttempts {
    /// Counters in the database `pool` connects to (the application role
    /// needs the grants of [`crate::migrate::grant_system_read`]).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            updates: AtomicU64::new(0),
        }
    }

    /// Deletes up to 1 000 expired rows; how many were deleted.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM tenancy.signin_attempts WHERE key IN \
             (SELECT key FROM tenancy.signin_attempts WHERE expires_at < now() LIMIT 1000)",
        )
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl AttemptStore for PgAttempts {
    async fn update(
        &self,
        key: &str,
        keep: Duration,
        update: &(dyn Fn(AttemptState) -> AttemptState + Send + Sync),
    ) -> Result<(AttemptState, AttemptState), StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(
            "INSERT INTO tenancy.signin_attempts (key, attempts, locked_until_ms, last_ms, expires_at) \
             VALUES ($1, 0, 0, 0, now()) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let (attempts, locked_until_ms, last_ms, expired): (i32, i64, i64, bool) = sqlx::query_as(
            "SELECT attempts, locked_until_ms, last_ms, expires_at < now() \
             FROM tenancy.signin_attempts WHERE key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let before = if expired {
            AttemptState::default()
        } else {
            AttemptState::new(
                u32::try_from(attempts).unwrap_or(0),
                ms_u64(locked_until_ms),
                ms_u64(last_ms),
            )
        };
        let after = update(before);
        if after == AttemptState::default() {
            sqlx::query("DELETE FROM tenancy.signin_attempts WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        } else {
            sqlx::query(
                "UPDATE tenancy.signin_attempts SET attempts = $2, locked_until_ms = $3, last_ms = $4, \
                 expires_at = now() + make_interval(secs => $5) WHERE key = $1",
            )
            .bind(key)
            .bind(i32::try_from(after.attempts).unwrap_or(i32::MAX))
            .bind(ms_i64(after.locked_until_ms))
            .bind(ms_i64(after.last_ms))
            .bind(keep.as_secs_f64())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        if self.updates.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1
            && let Err(e) = self.prune().await
        {
            tracing::warn!(error = %e, "could not prune expired sign-in attempts");
        }
        Ok((before, after))
    }
}
