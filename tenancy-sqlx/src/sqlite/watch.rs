//! Changes made by other processes on the same SQLite control database,
//! seen within a fraction of a second ([`SqliteChangeWatcher`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use tenancy_core::crypto::keys::Keyring;
use tenancy_core::store::{CachedStore, TenantStore};
use tenancy_core::{DomainName, TenantId, TenantSlug};
use tokio::task::JoinHandle;

use super::SqliteControl;
use crate::DbError;

/// The SQLite counterpart of [`InvalidationListener`](crate::InvalidationListener)
/// and [`KeyInvalidationListener`](crate::KeyInvalidationListener): SQLite
/// has no `NOTIFY`, so every change to a tenant record, its domains or its
/// keys is written by triggers to a change log in the control database, in
/// the same transaction, and this task reads the log every `interval`
/// (one indexed query when nothing changed) and drops what changed from
/// the tenant cache and the keyring. A suspension, an offboarding, a purge
/// or a key destruction made by the command line reaches a running server
/// within one interval — not after the cache TTLs.
///
/// It fails safe: if the log cannot be read, or this watcher fell behind
/// the log's bound (10 000 changes), every cached tenant and key is dropped.
/// Stops when dropped.
///
/// ```no_run
/// # async fn f(control: tenancy_sqlx::sqlite::SqliteControl,
/// #     keyring: std::sync::Arc<tenancy_core::crypto::keys::Keyring>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tenancy_core::store::CachedStore;
/// use tenancy_sqlx::sqlite::SqliteChangeWatcher;
///
/// let cache = Arc::new(CachedStore::new(control.tenants()));
/// let _watcher =
///     SqliteChangeWatcher::start(&control, cache.clone(), Some(keyring), Duration::from_millis(200)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqliteChangeWatcher {
    task: JoinHandle<()>,
}

type Change = (i64, String, String, Option<String>);

impl SqliteChangeWatcher {
    /// Starts watching `control`'s change log from its current end.
    pub async fn start<S>(
        control: &SqliteControl,
        cache: Arc<CachedStore<S>>,
        keyring: Option<Arc<Keyring>>,
        interval: Duration,
    ) -> Result<Self, DbError>
    where
        S: TenantStore + 'static,
    {
        let pool = control.pool().clone();
        let mut last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM tenancy_changes")
            .fetch_one(&pool)
            .await?;
        let task = tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                match read(&pool, last).await {
                    Ok((changes, oldest)) => {
                        if failing || (oldest > last + 1 && last > 0) {
                            // Down, or fell behind the log's bound: whatever
                            // changed meanwhile is unknown.
                            tracing::warn!("change log gap; dropping every cached tenant and key");
                            cache.invalidate_all();
                            if let Some(k) = &keyring {
                                k.evict_all().await;
                            }
                            failing = false;
                        }
                        for (seq, kind, tenant, name) in changes {
                            apply(&cache, keyring.as_deref(), &kind, &tenant, name.as_deref())
                                .await;
                            last = seq;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::error!(error = %e, "cannot read the SQLite change log");
                        }
                        failing = true;
                    }
                }
            }
        });
        Ok(Self { task })
    }

    /// Stops watching.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for SqliteChangeWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Changes after `last` (at most 1 000, in order) and the oldest seq kept.
async fn read(pool: &SqlitePool, last: i64) -> Result<(Vec<Change>, i64), sqlx::Error> {
    let changes: Vec<Change> = sqlx::query_as(
        "SELECT seq, kind, tenant_id, name FROM tenancy_changes WHERE seq > $1 ORDER BY seq LIMIT 1000",
    )
    .bind(last)
    .fetch_all(pool)
    .await?;
    let oldest: i64 = if changes.is_empty() {
        last
    } else {
        sqlx::query_scalar("SELECT COALESCE(MIN(seq), 0) FROM tenancy_changes")
            .fetch_one(pool)
            .await?
    };
    Ok((changes, oldest))
}

async fn apply<S: TenantStore + 'static>(
    cache: &CachedStore<S>,
    keyring: Option<&Keyring>,
    kind: &str,
    tenant: &str,
    name: Option<&str>,
) {
    let Ok(id) = tenant.parse::<TenantId>() else {
        tracing::warn!(
            tenant,
            "unreadable tenant id in the change log; clearing the cache"
        );
        cache.invalidate_all();
        return;
    };
    match (kind, name) {
        ("key", _) => {
            if let Some(k) = keyring {
                k.evict(id).await;
            }
        }
        ("slug", Some(n)) => {
            if let Ok(slug) = n.parse::<TenantSlug>() {
                cache.invalidate_slug(&slug).await;
            }
            cache.invalidate(id).await;
        }
        ("domain", Some(n)) => {
            if let Ok(domain) = DomainName::parse(n) {
                cache.invalidate_domain(&domain).await;
            }
            cache.invalidate(id).await;
        }
        _ => cache.invalidate(id).await,
    }
    tracing::debug!(tenant.id = %id, kind, "changed in another process; cache entries dropped");
}
