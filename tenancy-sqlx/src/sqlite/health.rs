//! A tenant health probe for a tenant's SQLite file.

use std::time::Instant;

use async_trait::async_trait;
use tenancy_core::health::{HealthProbe, ProbeOutcome, Status};
use tenancy_core::{Tenant, TenantContext};

use super::SqliteTenantDb;

/// `database`: checks the tenant's own file — it is on disk where its
/// placement says, a scoped transaction opens on it, and its stamp names
/// the tenant (a file removed, or swapped for another tenant's, is
/// unhealthy, even while a pool still holds the old one open).
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::sqlite::SqliteTenantDb, tenant: tenancy_core::Tenant) {
/// use std::time::Duration;
/// use tenancy_core::health::TenantHealth;
/// use tenancy_sqlx::sqlite::SqliteProbe;
///
/// let report = TenantHealth::new(Duration::from_secs(2))
///     .probe(SqliteProbe::new(db))
///     .check(&tenant)
///     .await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteProbe {
    db: SqliteTenantDb,
}

impl SqliteProbe {
    /// A probe over the tenant files of `db`.
    pub fn new(db: SqliteTenantDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl HealthProbe for SqliteProbe {
    fn name(&self) -> &str {
        "database"
    }

    async fn check(&self, tenant: &Tenant) -> ProbeOutcome {
        let started = Instant::now();
        let path = match self.db.path_of(tenant) {
            Ok(p) => p,
            Err(e) => return (Status::Unhealthy, e.to_string()),
        };
        // A connection of its own, not the pool's: a file removed or
        // swapped since the pool opened it is seen as it is on disk now.
        let mut conn = match self.db.open_checked(tenant.id, &path).await {
            Ok(conn) => conn,
            Err(e) => return (Status::Unhealthy, e.to_string()),
        };
        let answered = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut conn)
            .await;
        let _ = sqlx::Connection::close(conn).await;
        // The transaction the application opens works too.
        let ctx = TenantContext::new(tenant.clone());
        let pooled = match self.db.begin(&ctx).await {
            Ok(tx) => tx.rollback().await,
            Err(e) => Err(e),
        };
        match (answered, pooled) {
            (Ok(_), Ok(())) => (
                Status::Healthy,
                format!("reachable in {} ms", started.elapsed().as_millis()),
            ),
            (Err(e), _) => (Status::Unhealthy, format!("query failed: {e}")),
            (_, Err(e)) => (Status::Unhealthy, format!("cannot open a transaction: {e}")),
        }
    }
}
