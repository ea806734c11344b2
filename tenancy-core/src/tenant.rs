//! The [`Tenant`] record and its [`TenantStatus`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{DomainName, TenantId, TenantSlug};

/// An application-defined kind of tenant, such as `"provider"` or `"agent"`.
///
/// The library attaches no meaning to kinds; applications use them to shape
/// their own behaviour (for example which sub-tenants a tenant may have).
///
/// ```
/// # use tenancy_core::TenantKind;
/// let kind = TenantKind::new("insurance-provider");
/// assert_eq!(kind.as_str(), "insurance-provider");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantKind(String);

impl TenantKind {
    /// A kind named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The kind's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TenantKind {
    /// The kind `"default"`.
    fn default() -> Self {
        Self::new("default")
    }
}

/// The identifier of a plan (subscription tier) a tenant is on.
///
/// ```
/// # use tenancy_core::PlanId;
/// assert_eq!(PlanId::new("professional").as_str(), "professional");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanId(String);

impl PlanId {
    /// A plan id named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The plan's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a tenant's data lives.
///
/// Every tenant is reached through the same scoped transaction; the placement
/// tells the data layer which isolation model to use behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Placement {
    /// Shared tables, rows tagged with `tenant_id`, enforced by row-level security.
    #[default]
    Shared,
    /// A PostgreSQL schema of the tenant's own in the shared database; the
    /// scoped transaction sets `search_path` to it with transaction scope.
    Schema {
        /// The schema name (see [`Placement::schema`] for the rules).
        schema: String,
    },
    /// A database of the tenant's own (a PostgreSQL database or a SQLite
    /// file); the data layer maps the name to a connection.
    Database {
        /// The database name (same rules as a schema name).
        database: String,
    },
}

/// A placement name that is not a safe identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid placement name {name:?}: use 1-63 characters a-z, 0-9 and _, starting with a letter or _"
)]
pub struct PlacementError {
    /// The refused name.
    pub name: String,
}

impl Placement {
    /// The schema placement `name`, checked: 1–63 characters of `a-z`,
    /// `0-9`, `_`, not starting with a digit, and not `pg_`-prefixed or
    /// `public`/`information_schema`. Quoting still happens at use; the rule
    /// keeps names portable (PostgreSQL schema, database and file names).
    ///
    /// ```
    /// use tenancy_core::Placement;
    ///
    /// assert!(Placement::schema("tenant_acme").is_ok());
    /// assert!(Placement::schema("Acme; DROP SCHEMA public").is_err());
    /// assert!(Placement::schema("pg_catalog").is_err());
    /// ```
    pub fn schema(name: &str) -> Result<Self, PlacementError> {
        check_name(name)?;
        Ok(Self::Schema {
            schema: name.to_owned(),
        })
    }

    /// The database placement `name`, checked like [`Placement::schema`].
    pub fn database(name: &str) -> Result<Self, PlacementError> {
        check_name(name)?;
        Ok(Self::Database {
            database: name.to_owned(),
        })
    }

    /// The conventional name for a tenant's schema or database:
    /// `t_<id without hyphens>` (34 characters).
    ///
    /// ```
    /// let id: tenancy_core::TenantId = "6f1c0c8e-2d5b-4c1a-9a57-3f8e2b7d9c41".parse()?;
    /// assert_eq!(tenancy_core::Placement::name_for(id), "t_6f1c0c8e2d5b4c1a9a573f8e2b7d9c41");
    /// # Ok::<(), tenancy_core::TenantIdError>(())
    /// ```
    pub fn name_for(tenant: crate::TenantId) -> String {
        format!("t_{}", tenant.as_uuid().simple())
    }

    /// The placement's name (`None` for [`Placement::Shared`]), re-checked:
    /// data layers call this rather than reading the field, so a name that
    /// bypassed [`Placement::schema`] is refused before it reaches SQL.
    pub fn checked_name(&self) -> Result<Option<&str>, PlacementError> {
        match self {
            Self::Shared => Ok(None),
            Self::Schema { schema: name } | Self::Database { database: name } => {
                check_name(name)?;
                Ok(Some(name))
            }
        }
    }

    /// `"shared"`, `"schema"` or `"database"`.
    pub fn model(&self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Schema { .. } => "schema",
            Self::Database { .. } => "database",
        }
    }
}

fn check_name(name: &str) -> Result<(), PlacementError> {
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && !bytes[0].is_ascii_digit()
        && !name.starts_with("pg_")
        && name != "public"
        && name != "information_schema";
    if ok {
        Ok(())
    } else {
        Err(PlacementError {
            name: name.to_owned(),
        })
    }
}

/// Where a tenant is in its lifecycle.
///
/// The status gate ([`crate::gate`]) turns a status into an access decision:
/// only active tenants and trials that have not ended may serve requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TenantStatus {
    /// On trial until `ends_at`.
    Trial {
        /// When the trial ends.
        ends_at: DateTime<Utc>,
    },
    /// In good standing.
    Active,
    /// Temporarily barred, with a reason shown to the tenant's users.
    Suspended {
        /// Why the tenant is suspended (shown to its users).
        reason: String,
    },
    /// Leaving: data is kept until `purge_after`, then deleted.
    Offboarding {
        /// When the grace period ends.
        purge_after: DateTime<Utc>,
    },
    /// Gone. Treated exactly like a tenant that never existed.
    Deleted,
}

/// A tenant: the unit of isolation.
///
/// Construct one with [`Tenant::new`] and the `with_*` methods; stores return
/// tenants behind an [`std::sync::Arc`] so that a cached tenant is shared, not
/// copied, by every request that uses it.
///
/// ```
/// use tenancy_core::{Tenant, TenantId, TenantKind, TenantStatus};
///
/// let provider = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme Insurance")
///     .with_kind(TenantKind::new("provider"));
/// let office = Tenant::new(TenantId::new_v4(), "acme-north".parse()?, "Acme North")
///     .with_parent(provider.id)
///     .with_domain("north.acme.test".parse()?);
/// assert_eq!(office.parent, Some(provider.id));
/// assert_eq!(office.status, TenantStatus::Active);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tenant {
    /// Stable identifier.
    pub id: TenantId,
    /// Human-readable handle, unique among tenants.
    pub slug: TenantSlug,
    /// Name shown to people.
    pub display_name: String,
    /// Application-defined kind.
    pub kind: TenantKind,
    /// The parent tenant, for hierarchies (a provider and its regional offices).
    pub parent: Option<TenantId>,
    /// Lifecycle state.
    pub status: TenantStatus,
    /// The plan the tenant is on, if plans are used.
    pub plan: Option<PlanId>,
    /// Per-tenant overrides of the plan's limits and features.
    #[serde(default)]
    pub plan_overrides: crate::plan::Overrides,
    /// Custom domains that identify this tenant (normalised, unique among tenants).
    pub domains: Vec<DomainName>,
    /// Free-form settings and branding.
    pub settings: serde_json::Value,
    /// Where the tenant's data lives.
    pub placement: Placement,
    /// When the tenant was created.
    pub created_at: DateTime<Utc>,
    /// When the tenant record last changed.
    pub updated_at: DateTime<Utc>,
    /// The record's version: 0 until a store holds it, 1 once created, and
    /// one more on every change (see [`TenantUpdate`](crate::store::TenantUpdate)).
    #[serde(default)]
    pub version: u64,
}

impl Tenant {
    /// An active tenant with the default kind, no parent, no plan, no domains,
    /// empty settings and shared placement.
    pub fn new(id: TenantId, slug: TenantSlug, display_name: impl Into<String>) -> Self {
        let now = Utc::now();
        Self {
            id,
            slug,
            display_name: display_name.into(),
            kind: TenantKind::default(),
            parent: None,
            status: TenantStatus::Active,
            plan: None,
            plan_overrides: crate::plan::Overrides::default(),
            domains: Vec::new(),
            settings: serde_json::Value::Object(serde_json::Map::new()),
            placement: Placement::default(),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: TenantKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the parent tenant.
    pub fn with_parent(mut self, parent: TenantId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: TenantStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets the plan.
    pub fn with_plan(mut self, plan: PlanId) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Sets the plan overrides.
    pub fn with_plan_overrides(mut self, overrides: crate::plan::Overrides) -> Self {
        self.plan_overrides = overrides;
        self
    }

    /// Adds a custom domain.
    pub fn with_domain(mut self, domain: DomainName) -> Self {
        if !self.domains.contains(&domain) {
            self.domains.push(domain);
        }
        self
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: serde_json::Value) -> Self {
        self.settings = settings;
        self
    }

    /// Sets the placement.
    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }
}
