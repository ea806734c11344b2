//! Tenant filters and write guards for diesel queries.
//!
//! Row-level security is the second wall; these helpers are the first: every
//! query names its tenant explicitly, which keeps it index-friendly (the
//! tenant index leads with `tenant_id`) and correct even on a table whose
//! policy was dropped by mistake.
//!
//! - [`TenantScopedTable`] marks a table with a tenant column (implement it
//!   with [`tenant_table!`](crate::tenant_table)); `table.for_tenant(&ctx)`
//!   starts a query filtered to the context's tenant, which composes with
//!   further `.filter`, `.find`, `.order`, `diesel::update` and
//!   `diesel::delete`.
//! - [`tenant_is`] is the same predicate as an expression, for joins
//!   (`.filter(tenant_is::<policies::table>(&ctx))`) and boxed queries.
//! - [`verified`] and [`stamped`] guard inserts: rows of another tenant are
//!   refused with [`Error::Mismatch`], or rows get
//!   the context's tenant written into them.

use diesel::dsl::{Eq, Filter};
use diesel::expression::AsExpression;
use diesel::query_dsl::methods::FilterDsl;
use diesel::{Column, ExpressionMethods, Table};
use tenancy_core::{TenantContext, TenantId, TenantScoped};

use crate::Error;

/// A diesel table whose rows belong to tenants.
///
/// ```
/// diesel::table! {
///     customers (tenant_id, id) {
///         tenant_id -> Uuid,
///         id -> Uuid,
///         name -> Text,
///     }
/// }
/// tenancy_diesel::tenant_table!(customers);
///
/// use diesel::prelude::*;
/// use tenancy_diesel::dsl::TenantScopedTable;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = tenancy_core::TenantContext::new(tenancy_core::Tenant::new(
///     tenancy_core::TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let query = customers::table.for_tenant(&ctx).filter(customers::name.eq("Ann"));
/// let sql = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
/// assert!(sql.contains(r#"WHERE (("customers"."tenant_id" = $1) AND ("customers"."name" = $2))"#));
/// # Ok(()) }
/// ```
pub trait TenantScopedTable: Table + Sized {
    /// The tenant column (`tenant_id` unless named otherwise).
    type TenantColumn: Column<Table = Self> + ExpressionMethods + Default;

    /// This table's rows of `ctx`'s tenant: `WHERE <table>.tenant_id = $1`.
    fn for_tenant(self, ctx: &TenantContext) -> Filter<Self, TenantIs<Self>>
    where
        Self: FilterDsl<TenantIs<Self>>,
        <Self::TenantColumn as diesel::Expression>::SqlType: diesel::sql_types::SqlType,
        uuid::Uuid: AsExpression<<Self::TenantColumn as diesel::Expression>::SqlType>,
    {
        self.filter(tenant_is::<Self>(ctx))
    }
}

/// The predicate `<table>.tenant_id = <tenant of ctx>`.
pub type TenantIs<T> = Eq<<T as TenantScopedTable>::TenantColumn, uuid::Uuid>;

/// `<table>.tenant_id = <tenant of ctx>` as an expression, for joins and
/// boxed queries.
///
/// ```
/// diesel::table! { customers (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, } }
/// diesel::table! { policies (tenant_id, id) { tenant_id -> Uuid, id -> Uuid, customer_id -> Uuid, } }
/// diesel::allow_tables_to_appear_in_same_query!(customers, policies);
/// tenancy_diesel::tenant_table!(customers);
/// tenancy_diesel::tenant_table!(policies);
///
/// use diesel::prelude::*;
/// use tenancy_diesel::dsl::tenant_is;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let ctx = tenancy_core::TenantContext::new(tenancy_core::Tenant::new(
/// #     tenancy_core::TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let query = policies::table
///     .inner_join(customers::table.on(customers::id.eq(policies::customer_id)
///         .and(customers::tenant_id.eq(policies::tenant_id))))
///     .filter(tenant_is::<policies::table>(&ctx))
///     .filter(tenant_is::<customers::table>(&ctx))
///     .select(policies::id);
/// let sql = diesel::debug_query::<diesel::pg::Pg, _>(&query).to_string();
/// assert!(sql.contains(r#""policies"."tenant_id" = $1"#));
/// assert!(sql.contains(r#""customers"."tenant_id" = $2"#));
/// # Ok(()) }
/// ```
pub fn tenant_is<T>(ctx: &TenantContext) -> TenantIs<T>
where
    T: TenantScopedTable,
    <T::TenantColumn as diesel::Expression>::SqlType: diesel::sql_types::SqlType,
    uuid::Uuid: AsExpression<<T::TenantColumn as diesel::Expression>::SqlType>,
{
    T::TenantColumn::default().eq(ctx.tenant_id().as_uuid())
}

/// Implements [`TenantScopedTable`] for a `diesel::table!` module:
/// `tenant_table!(customers)` (column `tenant_id`) or
/// `tenant_table!(customers, org_id)`.
#[macro_export]
macro_rules! tenant_table {
    ($table:ident) => {
        $crate::tenant_table!($table, tenant_id);
    };
    ($table:ident, $column:ident) => {
        impl $crate::dsl::TenantScopedTable for $table::table {
            type TenantColumn = $table::$column;
        }
    };
}

/// `rows` if every one belongs to `ctx`'s tenant, else
/// [`Error::Mismatch`] naming the first that does not.
///
/// ```
/// use tenancy_core::{Tenant, TenantContext, TenantId, TenantScoped};
///
/// struct NewCustomer { tenant_id: TenantId, name: &'static str }
/// impl TenantScoped for NewCustomer {
///     fn tenant_id(&self) -> TenantId { self.tenant_id }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let mine = [NewCustomer { tenant_id: ctx.tenant_id(), name: "Ann" }];
/// assert!(tenancy_diesel::dsl::verified(&ctx, &mine).is_ok());
/// let foreign = [NewCustomer { tenant_id: TenantId::new_v4(), name: "Eve" }];
/// let err = tenancy_diesel::dsl::verified(&ctx, &foreign).err().ok_or("refused")?;
/// assert_eq!(err.status(), 403);
/// # Ok(()) }
/// ```
pub fn verified<'a, R: TenantScoped>(ctx: &TenantContext, rows: &'a [R]) -> Result<&'a [R], Error> {
    for row in rows {
        row.ensure_tenant(ctx)?;
    }
    Ok(rows)
}

/// A new row whose tenant column can be written.
pub trait Stamp {
    /// Sets the row's tenant.
    fn stamp(&mut self, tenant: TenantId);
}

/// `rows` with `ctx`'s tenant written into each.
///
/// ```
/// use tenancy_core::{Tenant, TenantContext, TenantId};
/// use tenancy_diesel::dsl::{Stamp, stamped};
///
/// struct NewCustomer { tenant_id: Option<TenantId>, name: &'static str }
/// impl Stamp for NewCustomer {
///     fn stamp(&mut self, tenant: TenantId) { self.tenant_id = Some(tenant); }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ctx = TenantContext::new(Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme"));
/// let rows = stamped(&ctx, vec![NewCustomer { tenant_id: None, name: "Ann" }]);
/// assert_eq!(rows[0].tenant_id, Some(ctx.tenant_id()));
/// # Ok(()) }
/// ```
pub fn stamped<R: Stamp>(ctx: &TenantContext, mut rows: Vec<R>) -> Vec<R> {
    let tenant = ctx.tenant_id();
    for row in &mut rows {
        row.stamp(tenant);
    }
    rows
}
