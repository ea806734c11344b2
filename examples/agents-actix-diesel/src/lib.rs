//! # agents-actix-diesel
//!
//! The smaller tenancy-rs example: the agents and customers of the
//! insurance domain on PostgreSQL, served by **actix-web** through
//! `tenancy-actix` and stored through **tenancy-diesel** (diesel-async):
//!
//! - `TenantMiddleware` runs the tenant pipeline ([`pipeline`]: the tenant
//!   named by the reference application's session token, loaded from its
//!   tenant registry, status-gated, the token's user required to be a
//!   member) and puts the `TenantContext` in the request;
//! - every handler reaches data through
//!   `AsyncTenantPool::transaction_for(&ctx, ..)` — `BEGIN; CALL
//!   tenancy.seal(..)` in one message — so row-level security confines every
//!   query, and the query DSL's `for_tenant` keeps them index-friendly;
//! - inserts are stamped with the transaction's tenant (`dsl::stamped`), and
//!   a row claiming another tenant is refused before any SQL
//!   (`dsl::verified`, 403).
//!
//! ## Who may do what
//!
//! The rules are the reference application's, decided on every request from
//! the caller's membership in the tenant (never from the token's role
//! claim, which may be stale):
//!
//! | | tenant admin | manager | agent (member) | viewer |
//! |---|---|---|---|---|
//! | see agents | all | their team | themselves | all |
//! | add agents | yes | to their team | no (403) | no (403) |
//! | see customers | all | their team's, and shared ones | their own, and shared ones | shared ones |
//! | add customers | for any agent | for their team | for themselves | no (403) |
//!
//! A manager's team is their own agent record and every agent below it
//! (`manager_id`, any depth); an agent's customers are those whose
//! `agent_id` is their own agent record (linked to their account by
//! `user_id`). Deactivated (soft-deleted) agents and customers are 404 by id
//! and absent from lists, and a customer cannot be given to a deactivated
//! agent. A record the caller may not see is 404, as if it did not exist.
//!
//! Refusals are problem+json (`app.forbidden`, 403). Database refusals
//! never show PostgreSQL's text: a duplicate is 409 `app.conflict`, a
//! missing reference or an out-of-range value 422 `app.invalid`, each with a
//! plain message; anything else is 500 with a generic body, the detail logged.
//!
//! The tables are the reference application's (`examples/insurance-agent`
//! on PostgreSQL: `public.agents`, `public.customers`, tenant-leading keys,
//! forced row-level security) and so are the tenants (`tenancy.tenants`,
//! read through `PgTenantStore`): both applications can serve the same
//! database side by side. [`migrate`] applies that schema as the owner.
#![forbid(unsafe_code)]
#![allow(missing_docs)] // diesel::table! items

use actix_web::{HttpResponse, ResponseError, web};
use chrono::{DateTime, NaiveDate, Utc};
use diesel::result::DatabaseErrorKind;
use diesel::{
    BoolExpressionMethods, BoxableExpression, ExpressionMethods, Insertable, IntoSql,
    OptionalExtension, QueryDsl, Queryable, QueryableByName, Selectable, SelectableHelper,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use tenancy_actix::Tenant;
use tenancy_core::problem::{CONTENT_TYPE, Problem};
use tenancy_core::{Role, TenantContext, TenantId, TenantScoped, UserId};
use tenancy_diesel::AsyncTenantPool;
use tenancy_diesel::dsl::{Stamp, TenantScopedTable, stamped, verified};
use uuid::Uuid;

// The columns this example uses of the reference application's tables
// (`insurance_agent::postgres::schema_sql`); the others have defaults.
diesel::table! {
    agents (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        user_id -> Nullable<Text>,
        agent_code -> Text,
        name -> Text,
        licence_number -> Text,
        licence_expiry -> Date,
        manager_id -> Nullable<Uuid>,
        active -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    customers (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        agent_id -> Uuid,
        first_name -> Text,
        last_name -> Text,
        customer_type -> Text,
        shared -> Bool,
        active -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(agents, customers);
tenancy_diesel::tenant_table!(agents);
tenancy_diesel::tenant_table!(customers);

/// The reference application's schema (system schema, then its tables
/// with forced row-level security and grants for `app_role`), applied as
/// the owner. Idempotent; instances starting at once serialise.
pub async fn migrate(owner_url: &str, app_role: &str) -> Result<(), AppError> {
    let owner = sqlx::PgPool::connect(owner_url)
        .await
        .map_err(AppError::internal)?;
    insurance_agent::postgres::apply_schema(&owner, app_role)
        .await
        .map_err(AppError::internal)?;
    owner.close().await;
    Ok(())
}

/// An agent.
#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = agents)]
pub struct Agent {
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub id: Uuid,
    /// The account that signs in as this agent, if any.
    pub user_id: Option<String>,
    pub agent_code: String,
    pub name: String,
    pub licence_number: String,
    pub licence_expiry: NaiveDate,
    /// The agent's manager (an agent of the same tenant).
    pub manager_id: Option<Uuid>,
}

/// A new agent (the tenant is stamped from the transaction's context).
#[derive(Debug, Deserialize, Insertable)]
#[diesel(table_name = agents)]
pub struct NewAgent {
    #[serde(skip)]
    pub tenant_id: Uuid,
    #[serde(skip, default = "Uuid::new_v4")]
    pub id: Uuid,
    pub agent_code: String,
    pub name: String,
    pub licence_number: String,
    pub licence_expiry: NaiveDate,
    /// The agent's manager. A manager's new agent joins their own team:
    /// by default under the manager themselves, else under a member of it.
    #[serde(default)]
    pub manager_id: Option<Uuid>,
    #[serde(skip, default = "Utc::now")]
    pub created_at: DateTime<Utc>,
}

impl Stamp for NewAgent {
    fn stamp(&mut self, tenant: TenantId) {
        self.tenant_id = tenant.as_uuid();
    }
}

/// A customer.
#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = customers)]
pub struct Customer {
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub agent_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub customer_type: String,
    /// Readable by every member of the tenant (changed only by its owners).
    pub shared: bool,
}

/// A new customer as sent. `tenant_id` may be given (imports): it must then
/// be the caller's tenant, or the write guard refuses it (403) before any SQL.
#[derive(Debug, Deserialize)]
pub struct CustomerBody {
    pub tenant_id: Option<Uuid>,
    /// The owning agent (default: the caller's own agent record).
    pub agent_id: Option<Uuid>,
    pub first_name: String,
    pub last_name: String,
    /// `individual` (the default), `family` or `business`.
    pub customer_type: Option<String>,
    /// Readable by every member of the tenant (default `false`).
    #[serde(default)]
    pub shared: bool,
}

/// A new customer as stored.
#[derive(Debug, Insertable)]
#[diesel(table_name = customers)]
pub struct NewCustomer {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub agent_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub customer_type: String,
    pub shared: bool,
    pub created_at: DateTime<Utc>,
}

/// The tenant a request body claims.
struct Claim(TenantId);

impl TenantScoped for Claim {
    fn tenant_id(&self) -> TenantId {
        self.0
    }
}

/// Errors as problem+json.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Nothing visible with that id.
    #[error("no such {0}")]
    NotFound(&'static str),
    /// Malformed request (a path id that is not a UUID).
    #[error("{0}")]
    BadRequest(String),
    /// The request names no user (the pipeline admits none on these routes).
    #[error("sign in first")]
    Unauthorized,
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// A row claims another tenant (write guard), refused before any SQL.
    #[error("{0}")]
    TenantMismatch(String),
    /// A record with the same unique value exists.
    #[error("{0}")]
    Conflict(String),
    /// Input that breaks a rule (empty field, unknown reference, out of range).
    #[error("{0}")]
    Invalid(String),
    /// No database connection could be had in time (retry).
    #[error("the database is busy")]
    Unavailable,
    /// Anything else (logged, not shown).
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// 500: the detail is logged here and never answered.
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::Internal(e.to_string())
    }

    fn forbidden(detail: &str) -> Self {
        Self::Forbidden(detail.to_owned())
    }

    fn invalid(detail: &str) -> Self {
        Self::Invalid(detail.to_owned())
    }
}

/// Plain words for a constraint a write broke: the constraints of the
/// reference schema a request here can reach by name, any other by its
/// kind. Constraint names, table names and SQL never reach the client.
fn constraint_message(kind: &DatabaseErrorKind, constraint: Option<&str>) -> &'static str {
    match (kind, constraint) {
        (DatabaseErrorKind::UniqueViolation, Some("agents_tenant_id_agent_code_key")) => {
            "an agent with this agent_code already exists"
        }
        (DatabaseErrorKind::UniqueViolation, Some("agents_tenant_id_user_id_idx")) => {
            "this account is already linked to an agent"
        }
        (DatabaseErrorKind::ForeignKeyViolation, Some("agents_tenant_id_manager_id_fkey")) => {
            "manager_id is not an agent of this tenant"
        }
        (DatabaseErrorKind::ForeignKeyViolation, Some("customers_tenant_id_agent_id_fkey")) => {
            "agent_id is not an agent of this tenant"
        }
        (DatabaseErrorKind::UniqueViolation, _) => "a record with the same unique value exists",
        (DatabaseErrorKind::ForeignKeyViolation, _) => "a referenced record does not exist",
        _ => "a value is outside its allowed range",
    }
}

/// Database errors: unique violations are 409, foreign-key and check
/// violations 422, each with a plain message (the database's own text,
/// which names constraints and tables, is logged only); anything else is
/// 500.
impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        match e {
            E::NotFound => Self::NotFound("record"),
            E::DatabaseError(
                kind @ (DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::CheckViolation),
                info,
            ) => {
                tracing::info!(
                    kind = ?kind,
                    constraint = info.constraint_name(),
                    error = info.message(),
                    "write refused by a database constraint"
                );
                let message = constraint_message(&kind, info.constraint_name()).to_owned();
                match kind {
                    DatabaseErrorKind::UniqueViolation => Self::Conflict(message),
                    _ => Self::Invalid(message),
                }
            }
            other => Self::internal(other),
        }
    }
}

/// Tenancy errors: the write guard's refusal is 403 `tenant-mismatch`, no
/// connection 503, a query or the commit as any database error, the rest
/// (a transaction that could not be opened) 500.
impl From<tenancy_diesel::Error> for AppError {
    fn from(e: tenancy_diesel::Error) -> Self {
        match e {
            tenancy_diesel::Error::Mismatch(m) => {
                tracing::warn!(expected = %m.expected, found = %m.found, "a row claims another tenant");
                Self::TenantMismatch(tenancy_diesel::Error::Mismatch(m).to_string())
            }
            tenancy_diesel::Error::Pool(detail) => {
                tracing::warn!(error = %detail, "no database connection");
                Self::Unavailable
            }
            tenancy_diesel::Error::Database(e) => e.into(),
            other => Self::internal(other),
        }
    }
}

impl AppError {
    /// The problem this error answers with.
    pub fn problem(&self) -> Problem {
        match self {
            Self::NotFound(what) => {
                Problem::new(404, "app.not-found", "Not found", format!("no such {what}"))
            }
            Self::BadRequest(d) => Problem::new(400, "app.bad-request", "Bad request", d.clone()),
            Self::Unauthorized => {
                Problem::new(401, "app.unauthorized", "Unauthorized", "sign in first")
            }
            Self::Forbidden(d) => Problem::new(403, "app.forbidden", "Forbidden", d.clone()),
            Self::TenantMismatch(d) => Problem::new(403, "tenant-mismatch", "Forbidden", d.clone()),
            Self::Conflict(d) => Problem::new(409, "app.conflict", "Conflict", d.clone()),
            Self::Invalid(d) => Problem::new(422, "app.invalid", "Invalid input", d.clone()),
            Self::Unavailable => Problem::new(
                503,
                "app.unavailable",
                "Try again",
                "the database is busy; nothing was changed, retry shortly",
            ),
            Self::Internal(_) => Problem::new(
                500,
                "app.internal",
                "Internal error",
                "the request failed; the error was logged",
            ),
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.problem().status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type(CONTENT_TYPE);
        if matches!(self, Self::Unavailable) {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        response.body(self.problem().to_json().to_string())
    }
}

/// Who is asking: the user the session names and their role in the tenant,
/// from the membership the pipeline checked on this request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user the session names.
    pub user: UserId,
    /// Their role in the tenant.
    pub role: Role,
}

impl Caller {
    /// The caller of `ctx` (401 when the context carries no user, which the
    /// pipeline's membership requirement rules out).
    pub fn of(ctx: &TenantContext) -> Result<Self, AppError> {
        let actor = ctx.actor().ok_or(AppError::Unauthorized)?;
        Ok(Self {
            user: actor.user_id.clone(),
            role: actor.role,
        })
    }
}

/// A path id (400 when it is not a UUID).
fn parse_id(raw: &str) -> Result<Uuid, AppError> {
    raw.parse()
        .map_err(|_| AppError::BadRequest("the id is not a UUID".into()))
}

/// The caller's own active agent record, if they are an agent.
async fn agent_of(
    conn: &mut AsyncPgConnection,
    ctx: &TenantContext,
    user: &UserId,
) -> Result<Option<Uuid>, AppError> {
    Ok(agents::table
        .for_tenant(ctx)
        .filter(agents::user_id.eq(user.as_str()))
        .filter(agents::active.eq(true))
        .select(agents::id)
        .first(conn)
        .await
        .optional()?)
}

#[derive(QueryableByName)]
struct TeamMember {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// The agents `caller` may see (`None`: all of the tenant's): everyone for
/// tenant admins and viewers, a manager's team (their own record and every
/// agent below it), an agent themselves; nobody for a manager or agent
/// without an agent record.
async fn visible_agents(
    conn: &mut AsyncPgConnection,
    ctx: &TenantContext,
    caller: &Caller,
) -> Result<Option<Vec<Uuid>>, AppError> {
    if matches!(caller.role, Role::Admin | Role::Viewer) {
        return Ok(None);
    }
    let Some(me) = agent_of(conn, ctx, &caller.user).await? else {
        return Ok(Some(Vec::new()));
    };
    if caller.role != Role::Manager {
        return Ok(Some(vec![me]));
    }
    let team = diesel::sql_query(
        "WITH RECURSIVE team(id) AS (SELECT $2::uuid UNION \
         SELECT a.id FROM agents a JOIN team t ON a.manager_id = t.id WHERE a.tenant_id = $1) \
         SELECT id FROM team",
    )
    .bind::<diesel::sql_types::Uuid, _>(ctx.tenant_id().as_uuid())
    .bind::<diesel::sql_types::Uuid, _>(me)
    .load::<TeamMember>(conn)
    .await?;
    Ok(Some(team.into_iter().map(|m| m.id).collect()))
}

type CustomerFilter =
    Box<dyn BoxableExpression<customers::table, diesel::pg::Pg, SqlType = diesel::sql_types::Bool>>;

/// The customers `caller` may read: all for tenant admins; those of their
/// visible agents, and shared ones, for managers and agents; shared ones
/// only for viewers.
async fn readable_customers(
    conn: &mut AsyncPgConnection,
    ctx: &TenantContext,
    caller: &Caller,
) -> Result<CustomerFilter, AppError> {
    Ok(match caller.role {
        Role::Admin => Box::new(true.into_sql::<diesel::sql_types::Bool>()),
        Role::Manager | Role::Member => {
            let team = visible_agents(conn, ctx, caller).await?.unwrap_or_default();
            Box::new(
                customers::agent_id
                    .eq_any(team)
                    .or(customers::shared.eq(true)),
            )
        }
        Role::Viewer => Box::new(customers::shared.eq(true)),
    })
}

/// `GET /agents`: the active agents the caller may see.
pub async fn list_agents(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
) -> Result<web::Json<Vec<Agent>>, AppError> {
    let caller = Caller::of(&ctx)?;
    let rows = db
        .transaction_for(&ctx, async |conn| {
            let mut query = agents::table
                .for_tenant(&ctx)
                .filter(agents::active.eq(true))
                .order(agents::agent_code)
                .select(Agent::as_select())
                .into_boxed();
            if let Some(ids) = visible_agents(conn, &ctx, &caller).await? {
                query = query.filter(agents::id.eq_any(ids));
            }
            query.load(conn).await.map_err(AppError::from)
        })
        .await?;
    Ok(web::Json(rows))
}

/// `GET /agents/{id}`: 404 when deactivated, not visible to the caller, or
/// another tenant's.
pub async fn get_agent(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    path: web::Path<String>,
) -> Result<web::Json<Agent>, AppError> {
    let caller = Caller::of(&ctx)?;
    let id = parse_id(&path)?;
    let row = db
        .transaction_for(&ctx, async |conn| {
            let mut query = agents::table
                .for_tenant(&ctx)
                .filter(agents::id.eq(id))
                .filter(agents::active.eq(true))
                .select(Agent::as_select())
                .into_boxed();
            if let Some(ids) = visible_agents(conn, &ctx, &caller).await? {
                query = query.filter(agents::id.eq_any(ids));
            }
            query.first(conn).await.optional().map_err(AppError::from)
        })
        .await?;
    row.map(web::Json).ok_or(AppError::NotFound("agent"))
}

/// `POST /agents`: tenant admins, and managers for their own team (403
/// otherwise). A duplicate `agent_code` is 409.
pub async fn create_agent(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    body: web::Json<NewAgent>,
) -> Result<HttpResponse, AppError> {
    let caller = Caller::of(&ctx)?;
    if !matches!(caller.role, Role::Admin | Role::Manager) {
        return Err(AppError::forbidden(
            "only tenant admins and managers add agents",
        ));
    }
    let mut new = stamped(&ctx, vec![body.into_inner()]);
    if new.iter().any(|a| {
        a.agent_code.trim().is_empty()
            || a.name.trim().is_empty()
            || a.licence_number.trim().is_empty()
    }) {
        return Err(AppError::invalid(
            "agent_code, name and licence_number must not be empty",
        ));
    }
    let id = new[0].id;
    db.transaction_for(&ctx, async |conn| {
        if caller.role == Role::Manager {
            let team = visible_agents(conn, &ctx, &caller)
                .await?
                .unwrap_or_default();
            for agent in &mut new {
                match agent.manager_id {
                    Some(m) if !team.contains(&m) => {
                        return Err(AppError::forbidden(
                            "managers add agents to their own team only",
                        ));
                    }
                    Some(_) => {}
                    None => agent.manager_id = agent_of(conn, &ctx, &caller.user).await?,
                }
            }
        }
        diesel::insert_into(agents::table)
            .values(&new)
            .execute(conn)
            .await
            .map_err(AppError::from)
    })
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "id": id })))
}

/// `GET /customers`: the active customers the caller may read.
pub async fn list_customers(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
) -> Result<web::Json<Vec<Customer>>, AppError> {
    let caller = Caller::of(&ctx)?;
    let rows = db
        .transaction_for(&ctx, async |conn| {
            let readable = readable_customers(conn, &ctx, &caller).await?;
            customers::table
                .for_tenant(&ctx)
                .filter(customers::active.eq(true))
                .filter(readable)
                .order((customers::last_name, customers::first_name, customers::id))
                .select(Customer::as_select())
                .load(conn)
                .await
                .map_err(AppError::from)
        })
        .await?;
    Ok(web::Json(rows))
}

/// `GET /customers/{id}`: 404 when deactivated, not readable by the
/// caller, or another tenant's.
pub async fn get_customer(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    path: web::Path<String>,
) -> Result<web::Json<Customer>, AppError> {
    let caller = Caller::of(&ctx)?;
    let id = parse_id(&path)?;
    let row = db
        .transaction_for(&ctx, async |conn| {
            let readable = readable_customers(conn, &ctx, &caller).await?;
            customers::table
                .for_tenant(&ctx)
                .filter(customers::id.eq(id))
                .filter(customers::active.eq(true))
                .filter(readable)
                .select(Customer::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(AppError::from)
        })
        .await?;
    row.map(web::Json).ok_or(AppError::NotFound("customer"))
}

/// `POST /customers`: for an active agent within the caller's reach — any
/// for tenant admins, their team for managers, themselves for agents (the
/// default); viewers add none (403). Stamped with the caller's tenant
/// unless the body names one, which must then be the caller's (403
/// otherwise, before any SQL).
pub async fn create_customer(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    body: web::Json<CustomerBody>,
) -> Result<HttpResponse, AppError> {
    let caller = Caller::of(&ctx)?;
    if caller.role == Role::Viewer {
        return Err(AppError::forbidden("viewers cannot add customers"));
    }
    let body = body.into_inner();
    if let Some(t) = body.tenant_id {
        let claimed = TenantId::from_uuid(t).map_err(|e| AppError::Invalid(e.to_string()))?;
        verified(&ctx, &[Claim(claimed)])?;
    }
    if body.first_name.trim().is_empty() || body.last_name.trim().is_empty() {
        return Err(AppError::invalid(
            "first_name and last_name must not be empty",
        ));
    }
    let customer_type = body.customer_type.unwrap_or_else(|| "individual".into());
    if !["individual", "family", "business"].contains(&customer_type.as_str()) {
        return Err(AppError::invalid(
            "customer_type must be individual, family or business",
        ));
    }
    let id = Uuid::new_v4();
    db.transaction_for(&ctx, async |conn| {
        let agent_id = match body.agent_id {
            Some(a) => a,
            None => agent_of(conn, &ctx, &caller.user).await?.ok_or_else(|| {
                AppError::invalid("agent_id is required (the caller is not an agent)")
            })?,
        };
        let active: Option<Uuid> = agents::table
            .for_tenant(&ctx)
            .filter(agents::id.eq(agent_id))
            .filter(agents::active.eq(true))
            .select(agents::id)
            .first(conn)
            .await
            .optional()?;
        if active.is_none() {
            return Err(AppError::invalid(
                "agent_id is not an active agent of this tenant",
            ));
        }
        if let Some(team) = visible_agents(conn, &ctx, &caller).await?
            && !team.contains(&agent_id)
        {
            return Err(AppError::forbidden(
                "agents add customers to their own book only, managers to their team's",
            ));
        }
        let rows = [NewCustomer {
            tenant_id: ctx.tenant_id().as_uuid(),
            id,
            agent_id,
            first_name: body.first_name,
            last_name: body.last_name,
            customer_type,
            shared: body.shared,
            created_at: Utc::now(),
        }];
        diesel::insert_into(customers::table)
            .values(&rows[..])
            .execute(conn)
            .await
            .map_err(AppError::from)
    })
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "id": id })))
}

/// The tenant pipeline: sessions are the reference application's (`POST
/// /auth/login` there returns an HS256 token carrying the user and the
/// tenant, signed with its `session.key`), tenants come from its registry
/// (`store`), and the token's user must be a member of the tenant
/// (`memberships`) — 401 without a valid token, 403 for a non-member.
pub fn pipeline(
    session_secret: &[u8],
    store: std::sync::Arc<dyn tenancy_core::store::TenantStore>,
    memberships: std::sync::Arc<dyn tenancy_core::MembershipStore>,
) -> tenancy_core::pipeline::RequestPipeline {
    use tenancy_core::resolve::{JwtStrategy, ResolverChain};
    tenancy_core::pipeline::RequestPipeline::new(
        ResolverChain::new().with(
            JwtStrategy::hs256(session_secret)
                .only_issuer(insurance_agent::auth::ISSUER)
                .audience(&[insurance_agent::auth::ACCESS_AUDIENCE]),
        ),
        store.clone(),
    )
    .require_membership(std::sync::Arc::new(tenancy_core::Authorizer::new(
        memberships,
        store,
    )))
}

/// The middleware over [`pipeline`], reading the user from the same token.
pub fn middleware(
    sessions: insurance_agent::auth::Sessions,
    pipeline: tenancy_core::pipeline::RequestPipeline,
) -> tenancy_actix::TenantMiddleware {
    tenancy_actix::TenantMiddleware::new(pipeline).with_user(move |req| {
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        // An invalid token names no user; the pipeline's token strategy
        // refuses it with its own 401.
        let claims = sessions.verify(token).ok()?;
        Some(tenancy_core::UserId::new(claims.sub))
    })
}

/// The routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/agents", web::get().to(list_agents))
        .route("/agents", web::post().to(create_agent))
        .route("/agents/{id}", web::get().to(get_agent))
        .route("/customers", web::get().to(list_customers))
        .route("/customers", web::post().to(create_customer))
        .route("/customers/{id}", web::get().to(get_customer));
}
