//! PostgreSQL-backed [`TenantStore`] and [`MembershipStore`] over the
//! system schema (see [`crate::migrate`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tenancy_core::store::{TenantStore, TenantUpdate, UniqueViolation, WriteError};
use tenancy_core::{
    DomainName, Membership, MembershipStore, Permission, Placement, PlanId, Role, StoreError,
    Tenant, TenantId, TenantKind, TenantSlug, TenantStatus, UserId,
};
use uuid::Uuid;

use crate::DbError;

/// Tenant records in `tenancy.tenants` and `tenancy.tenant_domains`.
///
/// Reads need only `SELECT` (see [`crate::migrate::grant_system_read`]), so
/// the application role can resolve tenants; the write methods need a role
/// with write access to the system schema (the owner, or an operations role).
/// Every write fires a notification that [`crate::InvalidationListener`]
/// turns into cache invalidations in every process.
///
/// ```no_run
/// # async fn example(app_pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use tenancy_core::store::{CachedStore, TenantStore};
/// use tenancy_sqlx::PgTenantStore;
///
/// let store = CachedStore::new(PgTenantStore::new(app_pool));
/// let acme = store.by_slug(&"acme".parse()?).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgTenantStore {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    slug: String,
    display_name: String,
    kind: String,
    parent_id: Option<Uuid>,
    status: String,
    status_reason: Option<String>,
    trial_ends_at: Option<DateTime<Utc>>,
    purge_after: Option<DateTime<Utc>>,
    plan_id: Option<String>,
    plan_overrides: serde_json::Value,
    settings: serde_json::Value,
    placement: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
    domains: Vec<String>,
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> DbError {
    DbError::InvalidData {
        what,
        reason: reason.to_string(),
    }
}

impl TryFrom<TenantRow> for Tenant {
    type Error = DbError;

    fn try_from(r: TenantRow) -> Result<Self, DbError> {
        let id = TenantId::from_uuid(r.id).map_err(|e| invalid("tenants.id", e))?;
        let slug = TenantSlug::new(&r.slug).map_err(|e| invalid("tenants.slug", e))?;
        let status = match r.status.as_str() {
            "active" => TenantStatus::Active,
            "trial" => TenantStatus::Trial {
                ends_at: r
                    .trial_ends_at
                    .ok_or_else(|| invalid("tenants.trial_ends_at", "missing for a trial"))?,
            },
            "suspended" => TenantStatus::Suspended {
                reason: r.status_reason.unwrap_or_default(),
            },
            "offboarding" => TenantStatus::Offboarding {
                purge_after: r
                    .purge_after
                    .ok_or_else(|| invalid("tenants.purge_after", "missing while offboarding"))?,
            },
            "deleted" => TenantStatus::Deleted,
            other => return Err(invalid("tenants.status", format!("unknown {other:?}"))),
        };
        let placement: Placement =
            serde_json::from_value(r.placement).map_err(|e| invalid("tenants.placement", e))?;
        let mut t = Tenant::new(id, slug, r.display_name)
            .with_kind(TenantKind::new(r.kind))
            .with_status(status)
            .with_settings(r.settings)
            .with_placement(placement);
        if let Some(p) = r.parent_id {
            t = t.with_parent(TenantId::from_uuid(p).map_err(|e| invalid("tenants.parent_id", e))?);
        }
        if let Some(plan) = r.plan_id {
            t = t.with_plan(PlanId::new(plan));
        }
        t.plan_overrides = serde_json::from_value(r.plan_overrides)
            .map_err(|e| invalid("tenants.plan_overrides", e))?;
        for d in r.domains {
            t = t.with_domain(DomainName::parse(&d).map_err(|e| invalid("tenant_domains", e))?);
        }
        t.created_at = r.created_at;
        t.updated_at = r.updated_at;
        t.version = u64::try_from(r.version).map_err(|e| invalid("tenants.version", e))?;
        Ok(t)
    }
}

enum Key<'a> {
    Id(Uuid),
    Slug(&'a str),
    Domain(&'a str),
}

macro_rules! select_tenant {
    ($filter:literal) => {
        concat!(
            r#"
    SELECT t.id, t.slug, t.display_name, t.kind, t.parent_id, t.status, t.status_reason,
           t.trial_ends_at, t.purge_after, t.plan_id, t.plan_overrides, t.settings, t.placement,
           t.created_at, t.updated_at, t.version,
           COALESCE((SELECT array_agg(d.domain ORDER BY d.domain)
                     FROM tenancy.tenant_domains d WHERE d.tenant_id = t.id), '{}') AS domains
    FROM tenancy.tenants t WHERE "#,
            $filter
        )
    };
}

const SELECT_BY_ID: &str = select_tenant!("t.id = $1");
const SELECT_FOR_UPDATE: &str = select_tenant!("t.id = $1 FOR NO KEY UPDATE OF t");
const SELECT_BY_SLUG: &str = select_tenant!("t.slug = $1");
const SELECT_BY_DOMAIN: &str =
    select_tenant!("t.id = (SELECT tenant_id FROM tenancy.tenant_domains WHERE domain = $1)");
const SELECT_ALL: &str = select_tenant!("TRUE ORDER BY t.slug");

/// `(status, status_reason, trial_ends_at, purge_after)` columns.
type StatusColumns<'a> = (
    &'static str,
    Option<&'a str>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn status_columns(s: &TenantStatus) -> StatusColumns<'_> {
    match s {
        TenantStatus::Trial { ends_at } => ("trial", None, Some(*ends_at), None),
        TenantStatus::Suspended { reason } => ("suspended", Some(reason.as_str()), None, None),
        TenantStatus::Offboarding { purge_after } => {
            ("offboarding", None, None, Some(*purge_after))
        }
        TenantStatus::Deleted => ("deleted", None, None, None),
        // Active, and any status added later, is stored as active only if it is Active.
        TenantStatus::Active => ("active", None, None, None),
        _ => ("active", None, None, None),
    }
}

fn map_unique(e: sqlx::Error) -> DbError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
    {
        return DbError::Conflict(db.message().to_owned());
    }
    DbError::Sqlx(e)
}

impl PgTenantStore {
    /// A store reading through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn fetch(&self, key: Key<'_>) -> Result<Option<Arc<Tenant>>, DbError> {
        let query = match key {
            Key::Id(id) => sqlx::query_as::<_, TenantRow>(SELECT_BY_ID).bind(id),
            Key::Slug(slug) => sqlx::query_as(SELECT_BY_SLUG).bind(slug),
            Key::Domain(domain) => sqlx::query_as(SELECT_BY_DOMAIN).bind(domain),
        };
        let row = query.fetch_optional(&self.pool).await?;
        row.map(|r| Tenant::try_from(r).map(Arc::new)).transpose()
    }

    /// Every tenant (deleted ones included), by slug — for operations
    /// tooling such as migrations and reports, not the request path.
    pub async fn list(&self) -> Result<Vec<Arc<Tenant>>, DbError> {
        let rows: Vec<TenantRow> = sqlx::query_as(SELECT_ALL).fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| Tenant::try_from(r).map(Arc::new))
            .collect()
    }

    /// Inserts a new tenant with its domains, in one transaction.
    pub async fn create(&self, tenant: &Tenant) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let (status, reason, trial, purge) = status_columns(&tenant.status);
        sqlx::query(
            "INSERT INTO tenancy.tenants (id, slug, display_name, kind, parent_id, status, \
             status_reason, trial_ends_at, purge_after, plan_id, settings, placement, created_at, updated_at, \
             plan_overrides) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(tenant.id.as_uuid())
        .bind(tenant.slug.as_str())
        .bind(&tenant.display_name)
        .bind(tenant.kind.as_str())
        .bind(tenant.parent.map(|p| p.as_uuid()))
        .bind(status)
        .bind(reason)
        .bind(trial)
        .bind(purge)
        .bind(tenant.plan.as_ref().map(PlanId::as_str))
        .bind(&tenant.settings)
        .bind(serde_json::to_value(&tenant.placement).map_err(|e| invalid("placement", e))?)
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .bind(serde_json::to_value(&tenant.plan_overrides).map_err(|e| invalid("plan_overrides", e))?)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        for d in &tenant.domains {
            sqlx::query("INSERT INTO tenancy.tenant_domains (domain, tenant_id) VALUES ($1, $2)")
                .bind(d.as_str())
                .bind(tenant.id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(map_unique)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies `update` to tenant `id` in one transaction: the row is locked
    /// (`FOR NO KEY UPDATE`), the change is applied to the record as stored
    /// ([`TenantUpdate::apply_to`]), and the result is written with the
    /// version bumped. Concurrent updates of different fields both persist;
    /// an update that insists on a version someone else has moved past is
    /// [`WriteError::Conflict`].
    pub async fn apply(
        &self,
        id: TenantId,
        update: &TenantUpdate,
    ) -> Result<Arc<Tenant>, WriteError> {
        let store = |e: DbError| WriteError::Store(StoreError::new(e));
        let mut tx = self.pool.begin().await.map_err(|e| store(e.into()))?;
        let row: Option<TenantRow> = sqlx::query_as(SELECT_FOR_UPDATE)
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| store(e.into()))?;
        let current = Tenant::try_from(row.ok_or(WriteError::NotFound(id))?).map_err(store)?;
        let next = update.apply_to(&current, Utc::now())?;
        let (status, reason, trial, purge) = status_columns(&next.status);
        let version = |v: u64| i64::try_from(v).map_err(|e| store(invalid("version", e)));
        let done = sqlx::query(
            "UPDATE tenancy.tenants SET slug = $2, display_name = $3, status = $4, \
             status_reason = $5, trial_ends_at = $6, purge_after = $7, plan_id = $8, \
             settings = $9, placement = $10, plan_overrides = $11, updated_at = $12, version = $13 \
             WHERE id = $1 AND version = $14",
        )
        .bind(id.as_uuid())
        .bind(next.slug.as_str())
        .bind(&next.display_name)
        .bind(status)
        .bind(reason)
        .bind(trial)
        .bind(purge)
        .bind(next.plan.as_ref().map(PlanId::as_str))
        .bind(&next.settings)
        .bind(serde_json::to_value(&next.placement).map_err(|e| store(invalid("placement", e)))?)
        .bind(
            serde_json::to_value(&next.plan_overrides)
                .map_err(|e| store(invalid("plan_overrides", e)))?,
        )
        .bind(next.updated_at)
        .bind(version(next.version)?)
        .bind(version(current.version)?)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_or(e, || UniqueViolation::Slug(next.slug.clone())))?;
        if done.rows_affected() != 1 {
            // Unreachable while the row lock is held; refuse rather than guess.
            return Err(WriteError::Conflict {
                id,
                expected: current.version,
                actual: current.version.saturating_add(1),
            });
        }
        if update.touches_domains() {
            for d in current.domains.iter().filter(|d| !next.domains.contains(d)) {
                sqlx::query(
                    "DELETE FROM tenancy.tenant_domains WHERE tenant_id = $1 AND domain = $2",
                )
                .bind(id.as_uuid())
                .bind(d.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| store(e.into()))?;
            }
            for d in next.domains.iter().filter(|d| !current.domains.contains(d)) {
                sqlx::query(
                    "INSERT INTO tenancy.tenant_domains (domain, tenant_id) VALUES ($1, $2)",
                )
                .bind(d.as_str())
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_or(e, || UniqueViolation::Domain(d.clone())))?;
            }
        }
        // The update's outbox messages commit with it, or not at all.
        for m in update.emitted() {
            crate::outbox::enqueue(&mut tx, m).await.map_err(store)?;
        }
        tx.commit().await.map_err(|e| store(e.into()))?;
        Ok(Arc::new(next))
    }
}

/// A unique violation as the [`UniqueViolation`] `which` names; any other
/// error as a store failure.
fn unique_or(e: sqlx::Error, which: impl FnOnce() -> UniqueViolation) -> WriteError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
    {
        return WriteError::Unique(which());
    }
    WriteError::Store(StoreError::new(DbError::Sqlx(e)))
}

#[async_trait]
impl TenantStore for PgTenantStore {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(Key::Id(id.as_uuid()))
            .await
            .map_err(StoreError::new)
    }

    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(Key::Slug(slug.as_str()))
            .await
            .map_err(StoreError::new)
    }

    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.fetch(Key::Domain(domain.as_str()))
            .await
            .map_err(StoreError::new)
    }
}

#[async_trait]
impl tenancy_core::store::TenantWriter for PgTenantStore {
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError> {
        PgTenantStore::create(self, tenant)
            .await
            .map_err(StoreError::new)
    }

    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        self.apply(id, update).await
    }
}

/// Memberships in `tenancy.memberships`.
///
/// Reads need `SELECT`; [`PgMembershipStore::upsert`] and
/// [`PgMembershipStore::remove`] need write access to the system schema.
#[derive(Debug, Clone)]
pub struct PgMembershipStore {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    tenant_id: Uuid,
    user_id: String,
    role: String,
    grants: Vec<String>,
    status: String,
    last_active_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryFrom<MembershipRow> for Membership {
    type Error = DbError;

    fn try_from(r: MembershipRow) -> Result<Self, DbError> {
        let tenant =
            TenantId::from_uuid(r.tenant_id).map_err(|e| invalid("memberships.tenant_id", e))?;
        let role: Role = r.role.parse().map_err(|e| invalid("memberships.role", e))?;
        let status = r
            .status
            .parse()
            .map_err(|e| invalid("memberships.status", e))?;
        let mut m = Membership::new(UserId::new(r.user_id), tenant, role).with_status(status);
        for g in r.grants {
            m = m.with_grant(Permission::new(&g).map_err(|e| invalid("memberships.grants", e))?);
        }
        m.last_active_at = r.last_active_at;
        Ok(m)
    }
}

impl PgMembershipStore {
    /// A store reading through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Inserts or replaces a membership.
    pub async fn upsert(&self, m: &Membership) -> Result<(), DbError> {
        let grants: Vec<&str> = m.grants.iter().map(Permission::as_str).collect();
        sqlx::query(
            "INSERT INTO tenancy.memberships (tenant_id, user_id, role, grants, status, last_active_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = EXCLUDED.role, \
             grants = EXCLUDED.grants, status = EXCLUDED.status, \
             last_active_at = coalesce(EXCLUDED.last_active_at, tenancy.memberships.last_active_at)",
        )
        .bind(m.tenant_id.as_uuid())
        .bind(m.user_id.as_str())
        .bind(m.role.as_str())
        .bind(&grants)
        .bind(m.status.as_str())
        .bind(m.last_active_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a membership; `true` if it existed.
    pub async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, DbError> {
        let done =
            sqlx::query("DELETE FROM tenancy.memberships WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant.as_uuid())
                .bind(user.as_str())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every membership of `tenant`, by user id.
    pub async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, DbError> {
        let rows: Vec<MembershipRow> = sqlx::query_as(
            "SELECT tenant_id, user_id, role, grants, status, last_active_at FROM tenancy.memberships \
             WHERE tenant_id = $1 ORDER BY user_id",
        )
        .bind(tenant.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Membership::try_from).collect()
    }
}

#[async_trait]
impl MembershipStore for PgMembershipStore {
    async fn membership(
        &self,
        user: &UserId,
        tenant: TenantId,
    ) -> Result<Option<Membership>, StoreError> {
        let row: Option<MembershipRow> = sqlx::query_as(
            "SELECT tenant_id, user_id, role, grants, status, last_active_at FROM tenancy.memberships \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::new)?;
        row.map(Membership::try_from)
            .transpose()
            .map_err(StoreError::new)
    }

    async fn memberships_of(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let rows: Vec<MembershipRow> = sqlx::query_as(
            "SELECT tenant_id, user_id, role, grants, status, last_active_at FROM tenancy.memberships \
             WHERE user_id = $1 ORDER BY tenant_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::new)?;
        rows.into_iter()
            .map(Membership::try_from)
            .collect::<Result<_, _>>()
            .map_err(StoreError::new)
    }

    async fn members_of(&self, tenant: TenantId) -> Result<Vec<Membership>, StoreError> {
        PgMembershipStore::members_of(self, tenant)
            .await
            .map_err(StoreError::new)
    }
}

#[async_trait]
impl tenancy_core::MembershipWriter for PgMembershipStore {
    async fn put(&self, membership: &Membership) -> Result<(), StoreError> {
        self.upsert(membership).await.map_err(StoreError::new)
    }

    async fn remove(&self, user: &UserId, tenant: TenantId) -> Result<bool, StoreError> {
        PgMembershipStore::remove(self, user, tenant)
            .await
            .map_err(StoreError::new)
    }

    async fn touch(
        &self,
        user: &UserId,
        tenant: TenantId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenancy.memberships SET last_active_at = greatest(last_active_at, $3) \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(())
    }
}
