//! The tenant's custom domains (tenant admins): a domain is added only
//! after the tenant proves it controls the domain's DNS.
//!
//! `POST /domains` issues a challenge: a TXT record to publish at
//! `_tenancy-challenge.<domain>` with the value `tenancy-verify=<token>`
//! (a fresh random token; the challenge can be verified for 7 days).
//! `POST /domains/{domain}/verify` looks the record up and, when its value
//! is exactly the challenge's, adds the domain to the tenant's record —
//! from then on the domain names this tenant — and audits
//! `domain.verified`. A domain another tenant has verified is never taken
//! over: the tenant store refuses it (409), whatever DNS says.
//! `DELETE /domains/{domain}` removes a verified domain or a pending
//! challenge (audited `domain.removed`).
//!
//! Pending challenges are kept in the tenant's settings (key
//! [`CHALLENGES_KEY`]), at most [`MAX_PENDING`] at a time; expired ones are
//! dropped on the next change.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenancy_core::audit::AuditEvent;
use tenancy_core::ownership::{
    self, DomainChallenge, MAX_CHALLENGE_DOMAIN_LEN, OwnershipError, TxtResolver,
};
use tenancy_core::problem::Problem;
use tenancy_core::store::{TenantStore, TenantUpdate};
use tenancy_core::{DomainName, Role, Tenant, TenantError};

use super::{ApiError, AppState, Body, Caller, PathOf};

/// The tenant setting holding the pending challenges.
pub const CHALLENGES_KEY: &str = "domain_challenges";

/// Challenges a tenant can have pending at once.
pub const MAX_PENDING: usize = 10;

/// Attempts at a write when other changes to the tenant keep coming in
/// between its read and its write.
const WRITE_ATTEMPTS: usize = 8;

/// A domain to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// A fully qualified domain name (`portal.example.com`; internationalised
    /// names in their `xn--` form).
    pub domain: String,
}

/// A domain waiting for its DNS record, and the record to publish.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingDomain {
    /// The domain.
    pub domain: String,
    /// The record's type: `TXT`.
    pub record_type: String,
    /// The record's name: `_tenancy-challenge.<domain>`.
    pub record_name: String,
    /// The record's exact value: `tenancy-verify=<token>`.
    pub record_value: String,
    /// When the challenge was issued.
    pub created_at: DateTime<Utc>,
    /// When it can no longer be verified (add the domain again for a new one).
    pub expires_at: DateTime<Utc>,
    /// Whether it has expired.
    pub expired: bool,
}

impl PendingDomain {
    fn of(c: &DomainChallenge, now: DateTime<Utc>) -> Self {
        Self {
            domain: c.domain.to_string(),
            record_type: "TXT".to_owned(),
            record_name: c.record_name(),
            record_value: c.expected_value(),
            created_at: c.created_at,
            expires_at: c.expires_at(),
            expired: c.is_expired_at(now),
        }
    }
}

/// The tenant's custom domains.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Domains {
    /// Verified: requests for these hosts belong to this tenant.
    pub verified: Vec<String>,
    /// Waiting for their DNS record.
    pub pending: Vec<PendingDomain>,
}

/// A [`TxtResolver`] for a server without a DNS configuration: every check
/// is answered "DNS unavailable" (503), so the server still starts.
#[derive(Debug)]
pub struct NoDns(pub String);

#[async_trait::async_trait]
impl TxtResolver for NoDns {
    async fn txt(&self, _name: &str) -> Result<Vec<String>, OwnershipError> {
        Err(OwnershipError::Resolver(self.0.clone()))
    }
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only tenant admins manage the tenant's domains",
        ))
    }
}

fn store_error(e: tenancy_core::StoreError) -> ApiError {
    ApiError::from(TenantError::Store(e))
}

/// `input` as a domain a tenant can claim: a valid DNS name of at least two
/// labels, short enough for its challenge record (422 naming `domain`).
fn parse_domain(input: &str) -> Result<DomainName, ApiError> {
    let domain = DomainName::parse(input.trim()).map_err(|e| {
        ApiError::invalid_field("domain", format!("domain is not a domain name: {e}"))
    })?;
    if !domain.as_str().contains('.') {
        return Err(ApiError::invalid_field(
            "domain",
            "domain must be a fully qualified name such as portal.example.com",
        ));
    }
    if domain.as_str().len() > MAX_CHALLENGE_DOMAIN_LEN {
        return Err(ApiError::invalid_field(
            "domain",
            format!(
                "domain must be at most {MAX_CHALLENGE_DOMAIN_LEN} characters \
                 (its record _tenancy-challenge.<domain> must fit in a DNS name)"
            ),
        ));
    }
    Ok(domain)
}

/// The pending challenges in `tenant`'s settings.
fn challenges_of(tenant: &Tenant) -> Result<Vec<DomainChallenge>, ApiError> {
    match tenant.settings.get(CHALLENGES_KEY) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            ApiError::internal(format!("tenant setting {CHALLENGES_KEY} is invalid: {e}"))
        }),
    }
}

fn view(tenant: &Tenant) -> Result<Domains, ApiError> {
    let now = Utc::now();
    Ok(Domains {
        verified: tenant.domains.iter().map(ToString::to_string).collect(),
        pending: challenges_of(tenant)?
            .iter()
            .map(|c| PendingDomain::of(c, now))
            .collect(),
    })
}

/// The caller's tenant as stored now (not the cached copy the request
/// was admitted with).
async fn stored(state: &AppState, caller: &Caller) -> Result<Arc<Tenant>, ApiError> {
    state
        .data
        .tenant_store()
        .by_id(caller.ctx.tenant_id())
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

/// Runs `decide` on the tenant as stored, with its pending challenges to
/// change, and writes what it returns — its update (domains), plus the
/// challenges as left — only while the record is still the version read;
/// read and decided again when another change came in between. `decide`
/// returning no update writes nothing.
async fn write_challenges<T>(
    state: &AppState,
    caller: &Caller,
    mut decide: impl FnMut(
        &Tenant,
        &mut Vec<DomainChallenge>,
    ) -> Result<(Option<TenantUpdate>, T), ApiError>,
) -> Result<(Arc<Tenant>, T), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let current = stored(state, caller).await?;
        let mut challenges = challenges_of(&current)?;
        let (update, out) = decide(&current, &mut challenges)?;
        let Some(update) = update else {
            return Ok((current, out));
        };
        let value = if challenges.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&challenges).map_err(|e| ApiError::internal(e.to_string()))?
        };
        let update = update
            .expect_version(current.version)
            .settings_patch(serde_json::json!({ CHALLENGES_KEY: value }));
        match state.data.update_tenant(current.id, &update).await {
            Ok(next) => return Ok((next, out)),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "the tenant's record kept changing while this change was made: retry",
    ))
}

/// Records `action` on `domain` in the tenant's audit log.
async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    domain: &DomainName,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, action, "domains")
                .with_resource_id(domain)
                .with_details(details),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The tenant's verified domains and pending challenges (tenant admins).
#[utoipa::path(get, path = "/domains",
    responses((status = 200, body = Domains), (status = 403)), security(("bearer" = [])))]
pub async fn list(caller: Caller) -> Result<Json<Domains>, ApiError> {
    admin_only(&caller)?;
    Ok(Json(view(caller.ctx.tenant())?))
}

/// Starts adding a custom domain (tenant admins): 201 with the TXT record
/// to publish; 200 with the same record when the domain is already pending.
/// 409 when the domain is verified already (here or by another tenant), or
/// [`MAX_PENDING`] domains are pending.
#[utoipa::path(post, path = "/domains", request_body = NewDomain,
    responses((status = 201, body = PendingDomain), (status = 200, body = PendingDomain),
        (status = 403), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<NewDomain>,
) -> Result<(http::StatusCode, Json<PendingDomain>), ApiError> {
    admin_only(&caller)?;
    let domain = parse_domain(&req.domain)?;
    if let Some(owner) = state
        .data
        .tenant_store()
        .by_domain(&domain)
        .await
        .map_err(store_error)?
    {
        return Err(if owner.id == caller.ctx.tenant_id() {
            ApiError::conflict(format!("{domain} is already verified for this tenant"))
        } else {
            ApiError::conflict(format!(
                "{domain} is registered to another tenant: its owner must remove it first"
            ))
        });
    }
    let now = Utc::now();
    let (_, (challenge, created)) = write_challenges(&state, &caller, |tenant, challenges| {
        if tenant.domains.contains(&domain) {
            return Err(ApiError::conflict(format!(
                "{domain} is already verified for this tenant"
            )));
        }
        if let Some(c) = challenges
            .iter()
            .find(|c| c.domain == domain && !c.is_expired_at(now))
        {
            return Ok((None, (c.clone(), false)));
        }
        challenges.retain(|c| !c.is_expired_at(now));
        if challenges.len() >= MAX_PENDING {
            return Err(ApiError::conflict(format!(
                "{MAX_PENDING} domains are waiting for verification: verify or delete one first"
            )));
        }
        let c = DomainChallenge::new(domain.clone())
            .map_err(|_| ApiError::invalid_field("domain", "domain is too long"))?;
        challenges.push(c.clone());
        Ok((Some(TenantUpdate::new()), (c, true)))
    })
    .await?;
    if !created {
        return Ok((
            http::StatusCode::OK,
            Json(PendingDomain::of(&challenge, now)),
        ));
    }
    audit(
        &state,
        &caller,
        "domain.challenged",
        &domain,
        serde_json::json!({ "record_name": challenge.record_name() }),
    )
    .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(PendingDomain::of(&challenge, now)),
    ))
}

/// 422 `app.domain-not-verified`: what was found, and the record to publish.
fn not_verified(c: &DomainChallenge, e: &OwnershipError) -> ApiError {
    let reason = match e {
        OwnershipError::NotPublished { .. } => "not-published",
        OwnershipError::Mismatch { .. } => "mismatch",
        OwnershipError::Expired => "expired",
        _ => "unverified",
    };
    let mut p = Problem::new(
        422,
        "app.domain-not-verified",
        "Domain not verified",
        e.to_string(),
    );
    for (k, v) in [
        ("reason", reason.to_owned()),
        ("domain", c.domain.to_string()),
        ("record_type", "TXT".to_owned()),
        ("record_name", c.record_name()),
        ("record_value", c.expected_value()),
    ] {
        p.extensions.insert(k.into(), v.into());
    }
    ApiError(Box::new(p))
}

/// Checks the domain's TXT record (tenant admins). When it is exactly the
/// challenge's value the domain is added to the tenant and audited
/// (`domain.verified`); otherwise 422 `app.domain-not-verified` with the
/// record to publish and `reason` (`not-published`, `mismatch`, `expired`).
/// 409 when another tenant has the domain; 503 when DNS cannot be asked.
#[utoipa::path(post, path = "/domains/{domain}/verify", params(("domain" = String, Path)),
    responses((status = 200, body = Domains), (status = 403), (status = 404), (status = 409),
        (status = 422), (status = 503)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(domain): PathOf<String>,
) -> Result<Json<Domains>, ApiError> {
    admin_only(&caller)?;
    let domain = parse_domain(&domain)?;
    let tenant = stored(&state, &caller).await?;
    if tenant.domains.contains(&domain) {
        return Ok(Json(view(&tenant)?));
    }
    let challenge = challenges_of(&tenant)?
        .into_iter()
        .find(|c| c.domain == domain)
        .ok_or_else(|| ApiError::not_found("pending domain (add it with POST /domains)"))?;
    match ownership::verify(&challenge, state.dns.as_ref()).await {
        Ok(()) => {}
        Err(OwnershipError::Resolver(cause)) => {
            tracing::warn!(domain = %domain, error = %cause, "DNS could not be queried");
            return Err(ApiError::unavailable(
                "DNS could not be queried for the record; nothing was changed, retry shortly",
            ));
        }
        Err(e) => return Err(not_verified(&challenge, &e)),
    }
    // The domain joins the tenant and its challenge goes, in one write; the
    // store refuses a domain another tenant has (409).
    let (next, ()) = write_challenges(&state, &caller, |_, challenges| {
        if !challenges.contains(&challenge) {
            return Err(ApiError::conflict(
                "the challenge changed while it was being checked: verify again",
            ));
        }
        challenges.retain(|c| c.domain != domain);
        Ok((Some(TenantUpdate::new().add_domain(domain.clone())), ()))
    })
    .await?;
    let details = serde_json::json!({ "record_name": challenge.record_name() });
    if let Err(e) = audit(&state, &caller, "domain.verified", &domain, details).await {
        // No domain without its audit event: take it back, challenge kept.
        let undo = write_challenges(&state, &caller, |_, challenges| {
            if !challenges.contains(&challenge) {
                challenges.push(challenge.clone());
            }
            Ok((Some(TenantUpdate::new().remove_domain(domain.clone())), ()))
        })
        .await;
        if let Err(undo) = undo {
            tracing::error!(domain = %domain, error = %undo, "verified domain not audited and not removed");
        }
        return Err(e);
    }
    Ok(Json(view(&next)?))
}

/// Removes a verified domain (it no longer names the tenant) or a pending
/// challenge (tenant admins); audited (`domain.removed`).
#[utoipa::path(delete, path = "/domains/{domain}", params(("domain" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    PathOf(domain): PathOf<String>,
) -> Result<http::StatusCode, ApiError> {
    admin_only(&caller)?;
    let domain = parse_domain(&domain)?;
    let (_, was) = write_challenges(&state, &caller, |tenant, challenges| {
        let verified = tenant.domains.contains(&domain);
        let before = challenges.len();
        challenges.retain(|c| c.domain != domain);
        let update = if verified {
            TenantUpdate::new().remove_domain(domain.clone())
        } else if challenges.len() < before {
            TenantUpdate::new()
        } else {
            return Err(ApiError::not_found("domain"));
        };
        Ok((Some(update), if verified { "verified" } else { "pending" }))
    })
    .await?;
    audit(
        &state,
        &caller,
        "domain.removed",
        &domain,
        serde_json::json!({ "was": was }),
    )
    .await?;
    Ok(http::StatusCode::NO_CONTENT)
}
