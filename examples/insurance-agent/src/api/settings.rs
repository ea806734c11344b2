//! The tenant's own settings, typed: branding, time zone and commission
//! rates. `GET /settings` shows them; `PATCH /settings` (tenant admins)
//! changes the sections it names — every value validated, unknown keys
//! refused (422) — merged into the tenant record as stored, and audited.
//! Security settings have their own endpoints (admins in person only);
//! the plan changes through `/plan`; operators' settings (network policy,
//! identity providers, maintenance) only through the command line.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tenancy_core::Role;
use tenancy_core::audit::archive::Retention;
use tenancy_core::audit::{Action, AuditEvent};
use tenancy_core::store::TenantUpdate;

use super::{ApiError, AppState, Body, Caller};
use crate::domain::CommissionRates;
use crate::validate;

/// How the tenant presents itself to its users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    /// The name shown (1–100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The primary colour, `#RRGGBB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_color: Option<String>,
    /// The logo, an `https://` URL without credentials (at most 2 048 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// Where users write for help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support_email: Option<String>,
}

impl Branding {
    /// The branding with every value checked (422 naming the field).
    pub fn validated(self) -> Result<Self, ApiError> {
        let display_name =
            validate::opt_text("branding.display_name", self.display_name.as_deref(), 100)?;
        let primary_color = match self.primary_color.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => {
                let hex = c.strip_prefix('#').unwrap_or("");
                if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ApiError::invalid_field(
                        "branding.primary_color",
                        "branding.primary_color must look like #1A2B3C",
                    ));
                }
                Some(c.to_ascii_uppercase())
            }
        };
        let logo_url =
            match validate::opt_text("branding.logo_url", self.logo_url.as_deref(), 2048)? {
                None => None,
                Some(u) => Some(https_url(&u)?),
            };
        let support_email = self
            .support_email
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(|e| validate::email("branding.support_email", e))
            .transpose()?;
        Ok(Self {
            display_name,
            primary_color,
            logo_url,
            support_email,
        })
    }
}

/// `https://host/path`, without user info: browsers load it for every user
/// of the tenant, so nothing else is accepted.
fn https_url(u: &str) -> Result<String, ApiError> {
    let refuse = || {
        ApiError::invalid_field(
            "branding.logo_url",
            "branding.logo_url must be an https:// URL without credentials",
        )
    };
    let rest = u.strip_prefix("https://").ok_or_else(refuse)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || u.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refuse());
    }
    Ok(u.to_owned())
}

/// The tenant's settings as its admins edit them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantSettingsView {
    /// Branding.
    pub branding: Branding,
    /// The IANA time zone the tenant works in (`Asia/Kolkata`); calendar
    /// months and "today" are counted in it.
    pub time_zone: String,
    /// Commission rates, basis points.
    pub commission_rates: CommissionRates,
    /// How long audit events are kept: at least `min_days` in the live log,
    /// then archived into sealed segments; destroyed after `max_days`
    /// (never, when absent).
    #[schema(value_type = Object)]
    pub audit_retention: Retention,
}

/// The audit retention when a tenant sets none: a year live, archived
/// segments kept.
pub const DEFAULT_AUDIT_RETENTION: Retention = Retention {
    min_days: 365,
    max_days: None,
};

/// The shortest minimum a tenant may choose (days).
pub const MIN_AUDIT_RETENTION_DAYS: u32 = 30;

/// The tenant's audit retention (the default when unset).
pub fn audit_retention_of(settings: &serde_json::Value) -> Result<Retention, ApiError> {
    match settings.get("audit_retention") {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_AUDIT_RETENTION),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::internal(format!("tenant audit_retention is invalid: {e}"))),
    }
}

/// A change to some sections; absent sections are left as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Replaces the branding.
    pub branding: Option<Branding>,
    /// An IANA time zone name.
    pub time_zone: Option<String>,
    /// Replaces the commission rates (each 0–10 000).
    pub commission_rates: Option<CommissionRates>,
    /// Replaces the audit retention: `min_days` 30–3650, `max_days` (or
    /// null: kept) not below `min_days`.
    #[schema(value_type = Option<Object>)]
    pub audit_retention: Option<Retention>,
}

/// The tenant's time zone (UTC when unset; a malformed setting is an error).
pub fn time_zone_of(settings: &serde_json::Value) -> Result<chrono_tz::Tz, ApiError> {
    match settings.get("time_zone") {
        None | Some(serde_json::Value::Null) => Ok(chrono_tz::UTC),
        Some(serde_json::Value::String(name)) => name
            .parse()
            .map_err(|_| ApiError::internal(format!("tenant time_zone {name:?} is not known"))),
        Some(other) => Err(ApiError::internal(format!(
            "tenant time_zone {other} is not a name"
        ))),
    }
}

fn view(settings: &serde_json::Value) -> Result<TenantSettingsView, ApiError> {
    let branding = match settings.get("branding") {
        None | Some(serde_json::Value::Null) => Branding::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| ApiError::internal(format!("tenant branding is invalid: {e}")))?,
    };
    Ok(TenantSettingsView {
        branding,
        time_zone: time_zone_of(settings)?.name().to_owned(),
        commission_rates: CommissionRates::of(settings).map_err(ApiError::internal)?,
        audit_retention: audit_retention_of(settings)?,
    })
}

/// The caller's tenant's settings (every member reads them).
#[utoipa::path(get, path = "/settings", responses((status = 200, body = TenantSettingsView)),
    security(("bearer" = [])))]
pub async fn get(caller: Caller) -> Result<Json<TenantSettingsView>, ApiError> {
    Ok(Json(view(&caller.ctx.tenant().settings)?))
}

/// Changes the sections named (tenant admins); unknown keys and invalid
/// values are refused with 422.
#[utoipa::path(patch, path = "/settings", request_body = SettingsPatch,
    responses((status = 200, body = TenantSettingsView), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Body(patch): Body<SettingsPatch>,
) -> Result<Json<TenantSettingsView>, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::forbidden(
            "only tenant admins change the tenant's settings",
        ));
    }
    let mut changes = serde_json::Map::new();
    if let Some(b) = patch.branding {
        let b = b.validated()?;
        changes.insert(
            "branding".into(),
            serde_json::to_value(b).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    if let Some(tz) = patch.time_zone {
        let parsed: chrono_tz::Tz = tz.trim().parse().map_err(|_| {
            ApiError::invalid_field(
                "time_zone",
                "time_zone must be an IANA time zone name, e.g. Asia/Kolkata",
            )
        })?;
        changes.insert("time_zone".into(), parsed.name().into());
    }
    if let Some(rates) = patch.commission_rates {
        for (field, bp) in [
            ("commission_rates.first_year_bp", rates.first_year_bp),
            ("commission_rates.renewal_bp", rates.renewal_bp),
            ("commission_rates.bonus_bp", rates.bonus_bp),
        ] {
            if !(0..=10_000).contains(&bp) {
                return Err(ApiError::invalid_field(
                    field,
                    format!("{field} must be between 0 and 10000 basis points"),
                ));
            }
        }
        changes.insert(
            "commission_rates".into(),
            serde_json::to_value(rates).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    if let Some(r) = patch.audit_retention {
        if !(MIN_AUDIT_RETENTION_DAYS..=3650).contains(&r.min_days) {
            return Err(ApiError::invalid_field(
                "audit_retention.min_days",
                format!(
                    "audit_retention.min_days must be between {MIN_AUDIT_RETENTION_DAYS} and 3650"
                ),
            ));
        }
        let r = Retention::days(r.min_days, r.max_days)
            .map_err(|e| ApiError::invalid_field("audit_retention.max_days", e.to_string()))?;
        changes.insert(
            "audit_retention".into(),
            serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    if changes.is_empty() {
        return Err(ApiError::invalid(
            "name at least one of branding, time_zone, commission_rates, audit_retention",
        ));
    }
    let fields: Vec<String> = changes.keys().cloned().collect();
    let mut tx = state.data.begin_write(&caller.ctx).await?;
    state
        .data
        .audit()
        .append(
            &mut tx,
            AuditEvent::from_context(&caller.ctx, Action::UPDATE, "settings")
                .with_fields(fields.iter().map(String::as_str))
                .with_details(serde_json::Value::Object(changes.clone())),
        )
        .await?;
    tx.commit().await?;
    let updated = state
        .data
        .update_tenant(
            caller.ctx.tenant_id(),
            &TenantUpdate::new().settings_patch(serde_json::Value::Object(changes)),
        )
        .await?;
    Ok(Json(view(&updated.settings)?))
}
