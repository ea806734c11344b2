//! Agents: the people who sell policies, with a senior → junior hierarchy.

use crate::data::Tx;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::{Role, UserId};

use super::{ApiError, AppState, Body, Caller, Page, PageQuery, PathOf, QueryOf};
use crate::domain::ComplianceStatus;
use crate::id::Id;
use crate::validate;
use tenancy_core::audit::{Action, AuditEvent};

/// An agent.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Agent {
    /// Id.
    pub id: Id,
    /// The user account of the agent, if they sign in.
    pub user_id: Option<String>,
    /// Code, unique in the tenant.
    pub agent_code: String,
    /// Full name.
    pub name: String,
    /// Licence number.
    pub licence_number: String,
    /// Licence expiry date.
    pub licence_expiry: NaiveDate,
    /// Years of experience.
    pub experience_years: i64,
    /// Trading name.
    pub business_name: Option<String>,
    /// Regions the agent operates in.
    #[sqlx(json)]
    pub regions: Vec<String>,
    /// The agent's manager.
    pub manager_id: Option<Id>,
    /// Compliance standing.
    #[sqlx(try_from = "String")]
    pub compliance_status: ComplianceStatus,
    /// `false` once deactivated (kept for the audit trail).
    pub active: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, agent_code, name, licence_number, licence_expiry, \
    experience_years, business_name, regions, manager_id, compliance_status, active, created_at";

/// A new agent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewAgent {
    /// Code, unique in the tenant.
    pub agent_code: String,
    /// Full name.
    pub name: String,
    /// Licence number.
    pub licence_number: String,
    /// Licence expiry date.
    pub licence_expiry: NaiveDate,
    /// Years of experience.
    #[serde(default)]
    pub experience_years: i64,
    /// Trading name.
    pub business_name: Option<String>,
    /// Regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Manager (an agent of this tenant).
    pub manager_id: Option<Id>,
    /// The user account that signs in as this agent.
    pub user_id: Option<String>,
}

/// The agent record of `user` in the transaction's tenant.
pub async fn agent_of(tx: &mut Tx, user: &UserId) -> Result<Option<Id>, ApiError> {
    Ok(crate::on!(
        tx,
        sqlx::query_scalar("SELECT id FROM agents WHERE user_id = $1 AND active = TRUE")
            .bind(user.as_str()),
        fetch_optional
    )?)
}

/// The agents `caller` may see: everyone for admins and viewers, a manager's
/// team (themselves and everyone below them), an agent themselves.
pub async fn visible_agents(tx: &mut Tx, caller: &Caller) -> Result<Option<Vec<Id>>, ApiError> {
    match caller.role {
        Role::Admin | Role::Viewer => Ok(None),
        _ => {
            let Some(me) = agent_of(tx, &caller.user).await? else {
                return Ok(Some(Vec::new()));
            };
            if caller.role == Role::Manager {
                let team: Vec<Id> = crate::on!(
                    tx,
                    sqlx::query_scalar(
                        "WITH RECURSIVE team(id) AS (SELECT $1 UNION \
                     SELECT a.id FROM agents a JOIN team t ON a.manager_id = t.id) \
                     SELECT id FROM team",
                    )
                    .bind(me),
                    fetch_all
                )?;
                Ok(Some(team))
            } else {
                Ok(Some(vec![me]))
            }
        }
    }
}

/// `(read filter, write filter)` SQL over a table with `agent_id` and
/// `shared` columns (qualified by `prefix`, e.g. `"p."`): owners (the agent,
/// their managers up the hierarchy, tenant admins) read and write; records
/// shared tenant-wide are readable by every member; viewers read shared
/// records only.
pub async fn reach(
    tx: &mut Tx,
    caller: &Caller,
    prefix: &str,
) -> Result<(String, String), ApiError> {
    Ok(match caller.role {
        Role::Admin => ("TRUE".to_owned(), "TRUE".to_owned()),
        Role::Manager | Role::Member => {
            let team = visible_agents(tx, caller).await?;
            let own = in_set(&format!("{prefix}agent_id"), team.as_deref());
            (format!("({own} OR {prefix}shared = TRUE)"), own)
        }
        _ => (format!("{prefix}shared = TRUE"), "FALSE".to_owned()),
    })
}

/// `id IN (...)` for a visibility set (`None` = no restriction).
pub(crate) fn in_set(column: &str, set: Option<&[Id]>) -> String {
    match set {
        None => "TRUE".to_owned(),
        Some([]) => "FALSE".to_owned(),
        // Ids are parsed UUIDs: their text form is safe in SQL.
        Some(ids) => format!(
            "{column} IN ({})",
            ids.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Lists the agents the caller may see.
#[utoipa::path(get, path = "/agents", params(PageQuery),
    responses((status = 200, body = Page<Agent>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<PageQuery>,
) -> Result<Json<Page<Agent>>, ApiError> {
    let (limit, offset) = page.bounds()?;
    let mut tx = state.data.begin(&caller.ctx).await?;
    let set = visible_agents(&mut tx, &caller).await?;
    let filter = in_set("id", set.as_deref());
    let items: Vec<Agent> = crate::on!(tx, sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agents WHERE active = TRUE AND {filter} ORDER BY agent_code LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset), fetch_all)?;
    let total: i64 = crate::on!(
        tx,
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM agents WHERE active = TRUE AND {filter}"
        )),
        fetch_one
    )?;
    tx.commit().await?;
    Ok(Json(Page {
        items,
        limit,
        offset,
        total,
    }))
}

/// One active agent (404 when deactivated, not visible to the caller, or
/// not in this tenant).
#[utoipa::path(get, path = "/agents/{id}", params(("id" = Id, Path)),
    responses((status = 200, body = Agent), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<Json<Agent>, ApiError> {
    let mut tx = state.data.begin(&caller.ctx).await?;
    let set = visible_agents(&mut tx, &caller).await?;
    let filter = in_set("id", set.as_deref());
    let agent: Option<Agent> = crate::on!(
        tx,
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM agents WHERE id = $1 AND active = TRUE AND {filter}"
        ))
        .bind(id),
        fetch_optional
    )?;
    tx.commit().await?;
    agent.map(Json).ok_or_else(|| ApiError::not_found("agent"))
}

/// Adds an agent (tenant admins, and managers for their own team). The
/// plan's `agents` limit applies.
#[utoipa::path(post, path = "/agents", request_body = NewAgent,
    responses((status = 201, body = Agent), (status = 403), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(new): Body<NewAgent>,
) -> Result<(http::StatusCode, Json<Agent>), ApiError> {
    if !matches!(caller.role, Role::Admin | Role::Manager) {
        return Err(ApiError::forbidden(
            "only tenant admins and managers add agents",
        ));
    }
    let agent_code = validate::text("agent_code", &new.agent_code, validate::SHORT)?;
    let name = validate::text("name", &new.name, validate::NAME)?;
    let licence_number = validate::text("licence_number", &new.licence_number, validate::SHORT)?;
    let business_name = validate::opt_text(
        "business_name",
        new.business_name.as_deref(),
        validate::NAME,
    )?;
    let regions = validate::text_list("regions", &new.regions, validate::SHORT)?;
    if !(0..=80).contains(&new.experience_years) {
        return Err(ApiError::invalid_field(
            "experience_years",
            "experience_years must be between 0 and 80",
        ));
    }
    // The account that signs in as this agent must be a member of this
    // tenant: an agent record never links to a stranger's account.
    let user_id = match validate::opt_text("user_id", new.user_id.as_deref(), validate::NAME)? {
        None => None,
        Some(u) => {
            let user = UserId::new(u.clone());
            let member = tenancy_core::MembershipStore::membership(
                &state.data.memberships(),
                &user,
                caller.ctx.tenant_id(),
            )
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            if member.is_none() {
                return Err(ApiError::invalid_field(
                    "user_id",
                    "user_id must be the account of a member of this tenant (invite them first)",
                ));
            }
            Some(u)
        }
    };
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    super::check_stock(&state, &caller, &mut tx, "agents").await?;
    let mut manager = new.manager_id;
    if caller.role == Role::Manager {
        // A manager's new agent joins their team.
        let team = visible_agents(&mut tx, &caller).await?.unwrap_or_default();
        match manager {
            Some(m) if !team.contains(&m) => {
                return Err(ApiError::forbidden(
                    "managers add agents to their own team only",
                ));
            }
            None => manager = agent_of(&mut tx, &caller.user).await?,
            _ => {}
        }
    }
    let agent = Agent {
        id: Id::new(),
        user_id,
        agent_code,
        name,
        licence_number,
        licence_expiry: new.licence_expiry,
        experience_years: new.experience_years,
        business_name,
        regions,
        manager_id: manager,
        compliance_status: ComplianceStatus::Pending,
        active: true,
        created_at: Utc::now(),
    };
    insert(&mut tx, caller.ctx.tenant_id().into(), &agent).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, Action::CREATE, "agents")
                .with_resource_id(agent.id),
        )
        .await?;
    tx.commit().await?;
    Ok((http::StatusCode::CREATED, Json(agent)))
}

/// Inserts `agent` (used by the API and the seeder).
pub async fn insert(tx: &mut Tx, tenant: Id, agent: &Agent) -> Result<(), ApiError> {
    // JSON: jsonb on PostgreSQL, text on SQLite.
    let regions = sqlx::types::Json(&agent.regions);
    crate::on!(tx, sqlx::query(
        "INSERT INTO agents (tenant_id, id, user_id, agent_code, name, licence_number, licence_expiry, \
         experience_years, business_name, regions, manager_id, compliance_status, active, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(tenant)
    .bind(agent.id)
    .bind(&agent.user_id)
    .bind(&agent.agent_code)
    .bind(&agent.name)
    .bind(&agent.licence_number)
    .bind(agent.licence_expiry)
    .bind(agent.experience_years)
    .bind(&agent.business_name)
    .bind(regions)
    .bind(agent.manager_id)
    .bind(agent.compliance_status.as_str())
    .bind(agent.active)
    .bind(agent.created_at), execute)?;
    Ok(())
}

/// Deactivates an agent (tenant admins; soft delete: the record and its
/// book stay for the audit trail, the agent's account no longer acts as it).
#[utoipa::path(delete, path = "/agents/{id}", params(("id" = Id, Path)),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn deactivate(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(id): PathOf<Id>,
) -> Result<http::StatusCode, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden("only tenant admins deactivate agents"));
    }
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    let done = crate::on!(
        tx,
        sqlx::query("UPDATE agents SET active = FALSE WHERE id = $1 AND active = TRUE").bind(id),
        execute
    )?;
    if done == 0 {
        return Err(ApiError::not_found("agent"));
    }
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, Action::DELETE, "agents").with_resource_id(id),
        )
        .await?;
    tx.commit().await?;
    Ok(http::StatusCode::NO_CONTENT)
}
