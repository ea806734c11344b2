//! A tenant health probe for the database.

use std::time::Instant;

use async_trait::async_trait;
use tenancy_core::health::{HealthProbe, ProbeOutcome, Status};
use tenancy_core::{Placement, Tenant, TenantContext};

use crate::TenantDb;

/// `database`: opens the tenant's own scoped transaction — through its
/// placement: the shared tables, its schema, or its database — and checks
/// that the sealed binding names the tenant and that the placement's
/// storage is there (a schema tenant whose schema was dropped, or a database
/// tenant whose database is gone, is unhealthy).
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
        let ctx = TenantContext::new(tenant.clone());
        let mut tx = match self.db.begin(&ctx).await {
            Ok(tx) => tx,
            Err(e) => return (Status::Unhealthy, format!("cannot open a transaction: {e}")),
        };
        let schema = match &tenant.placement {
            Placement::Schema { schema } => Some(schema.clone()),
            _ => None,
        };
        let seen: Result<(Option<uuid::Uuid>, bool), _> = sqlx::query_as(
            "SELECT tenancy.tenant(), \
                    $1::text IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        )
        .bind(schema.as_deref())
        .fetch_one(&mut *tx)
        .await;
        let _ = tx.rollback().await;
        match seen {
            Ok((Some(t), true)) if t == tenant.id.as_uuid() => (
                Status::Healthy,
                format!("reachable in {} ms", started.elapsed().as_millis()),
            ),
            Ok((_, false)) => (
                Status::Unhealthy,
                format!(
                    "schema {} does not exist",
                    schema.as_deref().unwrap_or_default()
                ),
            ),
            Ok((t, _)) => (Status::Unhealthy, format!("the sealed tenant is {t:?}")),
            Err(e) => (Status::Unhealthy, format!("query failed: {e}")),
        }
    }
}
