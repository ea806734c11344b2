//! A tenant health probe for the database.

use std::time::Instant;

use async_trait::async_trait;
use tenancy_core::Tenant;
use tenancy_core::health::{HealthProbe, ProbeOutcome, Status};

use crate::TenantDb;

/// `database`: opens a transaction scoped to the tenant and checks that the
/// tenant setting arrived — the tenant's data path works end to end.
///
/// ```no_run
/// # async fn example(db: tenancy_sqlx::TenantDb, tenant: tenancy_core::Tenant) {
/// use std::time::Duration;
/// use tenancy_core::health::TenantHealth;
/// use tenancy_sqlx::DatabaseProbe;
///
/// let report = TenantHealth::new(Duration::from_secs(2))
///     .probe(DatabaseProbe::new(db))
///     .check(&tenant)
///     .await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DatabaseProbe {
    db: TenantDb,
}

impl DatabaseProbe {
    /// A probe over `db`.
    pub fn new(db: TenantDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl HealthProbe for DatabaseProbe {
    fn name(&self) -> &str {
        "database"
    }

    async fn check(&self, tenant: &Tenant) -> ProbeOutcome {
        let started = Instant::now();
        let mut tx = match self.db.begin_for_id(tenant.id).await {
            Ok(tx) => tx,
            Err(e) => return (Status::Unhealthy, format!("cannot open a transaction: {e}")),
        };
        let seen: Result<String, _> =
            sqlx::query_scalar("SELECT current_setting('app.tenant_id', true)")
                .fetch_one(&mut *tx)
                .await;
        let _ = tx.rollback().await;
        match seen {
            Ok(s) if s == tenant.id.to_string() => (
                Status::Healthy,
                format!("reachable in {} ms", started.elapsed().as_millis()),
            ),
            Ok(s) => (Status::Unhealthy, format!("tenant setting is {s:?}")),
            Err(e) => (Status::Unhealthy, format!("query failed: {e}")),
        }
    }
}
