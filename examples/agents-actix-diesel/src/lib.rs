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
//! The tables are the reference application's own (`examples/insurance-agent`
//! on PostgreSQL: `public.agents`, `public.customers`, tenant-leading keys,
//! forced row-level security) and so are the tenants (`tenancy.tenants`,
//! read through `PgTenantStore`): both applications can serve the same
//! database side by side. [`migrate`] applies that schema as the owner.
#![forbid(unsafe_code)]
#![allow(missing_docs)] // diesel::table! items

use actix_web::{HttpResponse, ResponseError, web};
use chrono::{DateTime, NaiveDate, Utc};
use diesel::{ExpressionMethods, Insertable, QueryDsl, Queryable, Selectable, SelectableHelper};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use tenancy_actix::Tenant;
use tenancy_core::problem::{CONTENT_TYPE, Problem};
use tenancy_core::{TenantId, TenantScoped};
use tenancy_diesel::AsyncTenantPool;
use tenancy_diesel::dsl::{Stamp, TenantScopedTable, stamped, verified};
use uuid::Uuid;

// The columns this example uses of the reference application's tables
// (`insurance_agent::postgres::schema_sql`); the others have defaults.
diesel::table! {
    agents (tenant_id, id) {
        tenant_id -> Uuid,
        id -> Uuid,
        agent_code -> Text,
        name -> Text,
        licence_number -> Text,
        licence_expiry -> Date,
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

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = agents)]
pub struct Agent {
    #[serde(skip)]
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub agent_code: String,
    pub name: String,
    pub licence_number: String,
    pub licence_expiry: NaiveDate,
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
}

/// A new customer as sent. `tenant_id` may be given (imports): it must then
/// be the caller's tenant, or the write guard refuses it (403) before any SQL.
#[derive(Debug, Deserialize)]
pub struct CustomerBody {
    pub tenant_id: Option<Uuid>,
    pub agent_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    /// `individual` (the default), `family` or `business`.
    pub customer_type: Option<String>,
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
    /// Input that breaks a rule (empty field, duplicate code, unknown reference).
    #[error("{0}")]
    Invalid(String),
    /// A tenancy refusal (write guard, pool, database).
    #[error(transparent)]
    Tenancy(#[from] tenancy_diesel::Error),
    /// Anything else (logged, not shown).
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::Internal(e.to_string())
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        match e {
            diesel::result::Error::NotFound => Self::NotFound("record"),
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation
                | diesel::result::DatabaseErrorKind::ForeignKeyViolation,
                info,
            ) => Self::Invalid(info.message().to_owned()),
            other => Self::internal(other),
        }
    }
}

impl ResponseError for AppError {
    fn error_response(&self) -> HttpResponse {
        let p = match self {
            Self::NotFound(what) => {
                Problem::new(404, "app.not-found", "Not found", format!("no such {what}"))
            }
            Self::BadRequest(d) => Problem::new(400, "app.bad-request", "Bad request", d.clone()),
            Self::Invalid(d) => Problem::new(422, "app.invalid", "Invalid input", d.clone()),
            Self::Tenancy(e) => Problem::new(
                e.status(),
                if e.status() == 403 {
                    "tenant-mismatch"
                } else {
                    "app.internal"
                },
                if e.status() == 403 {
                    "Forbidden"
                } else {
                    "Internal error"
                },
                if e.status() == 403 {
                    e.to_string()
                } else {
                    "the request failed; the error was logged".into()
                },
            ),
            Self::Internal(_) => Problem::new(
                500,
                "app.internal",
                "Internal error",
                "the request failed; the error was logged",
            ),
        };
        HttpResponse::build(
            actix_web::http::StatusCode::from_u16(p.status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type(CONTENT_TYPE)
        .body(p.to_json().to_string())
    }
}

/// `GET /agents`: the tenant's agents.
pub async fn list_agents(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
) -> Result<web::Json<Vec<Agent>>, AppError> {
    let rows = db
        .transaction_for(&ctx, async |conn| {
            agents::table
                .for_tenant(&ctx)
                .filter(agents::active.eq(true))
                .order(agents::agent_code)
                .select(Agent::as_select())
                .load(conn)
                .await
                .map_err(AppError::from)
        })
        .await?;
    Ok(web::Json(rows))
}

/// `POST /agents`.
pub async fn create_agent(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    body: web::Json<NewAgent>,
) -> Result<HttpResponse, AppError> {
    let new = stamped(&ctx, vec![body.into_inner()]);
    if new.iter().any(|a| {
        a.agent_code.trim().is_empty()
            || a.name.trim().is_empty()
            || a.licence_number.trim().is_empty()
    }) {
        return Err(AppError::Invalid(
            "agent_code, name and licence_number must not be empty".into(),
        ));
    }
    let id = new[0].id;
    db.transaction_for(&ctx, async |conn| {
        diesel::insert_into(agents::table)
            .values(&new)
            .execute(conn)
            .await
            .map_err(AppError::from)
    })
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "id": id })))
}

/// `GET /customers`.
pub async fn list_customers(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
) -> Result<web::Json<Vec<Customer>>, AppError> {
    let rows = db
        .transaction_for(&ctx, async |conn| {
            customers::table
                .for_tenant(&ctx)
                .filter(customers::active.eq(true))
                .order((customers::last_name, customers::first_name))
                .select(Customer::as_select())
                .load(conn)
                .await
                .map_err(AppError::from)
        })
        .await?;
    Ok(web::Json(rows))
}

/// `GET /customers/{id}` (404 for another tenant's id).
pub async fn get_customer(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    path: web::Path<String>,
) -> Result<web::Json<Customer>, AppError> {
    let id: Uuid = path
        .parse()
        .map_err(|_| AppError::BadRequest("the id is not a UUID".into()))?;
    let row = db
        .transaction_for(&ctx, async |conn| {
            customers::table
                .for_tenant(&ctx)
                .filter(customers::id.eq(id))
                .select(Customer::as_select())
                .first(conn)
                .await
                .map_err(AppError::from)
        })
        .await
        .map_err(|e| match e {
            AppError::NotFound(_) => AppError::NotFound("customer"),
            other => other,
        })?;
    Ok(web::Json(row))
}

/// `POST /customers`: stamped with the caller's tenant unless the body names
/// one, which must then be the caller's (403 otherwise, before any SQL).
pub async fn create_customer(
    Tenant(ctx): Tenant,
    db: web::Data<AsyncTenantPool>,
    body: web::Json<CustomerBody>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if let Some(t) = body.tenant_id {
        let claimed = TenantId::from_uuid(t).map_err(|e| AppError::Invalid(e.to_string()))?;
        verified(&ctx, &[Claim(claimed)])?;
    }
    let customer_type = body.customer_type.unwrap_or_else(|| "individual".into());
    if !["individual", "family", "business"].contains(&customer_type.as_str()) {
        return Err(AppError::Invalid(
            "customer_type must be individual, family or business".into(),
        ));
    }
    let rows = [NewCustomer {
        tenant_id: ctx.tenant_id().as_uuid(),
        id: Uuid::new_v4(),
        agent_id: body.agent_id,
        first_name: body.first_name,
        last_name: body.last_name,
        customer_type,
        created_at: Utc::now(),
    }];
    let id = rows[0].id;
    db.transaction_for(&ctx, async |conn| {
        diesel::insert_into(customers::table)
            .values(&rows[..])
            .execute(conn)
            .await
            .map_err(AppError::from)
    })
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "id": id })))
}

/// The routes.
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

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/agents", web::get().to(list_agents))
        .route("/agents", web::post().to(create_agent))
        .route("/customers", web::get().to(list_customers))
        .route("/customers", web::post().to(create_customer))
        .route("/customers/{id}", web::get().to(get_customer));
}
