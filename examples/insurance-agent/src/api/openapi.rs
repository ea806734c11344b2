//! The OpenAPI document, generated from the handlers (utoipa) and served at
//! `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    agents, audit, billing, customers, dashboard, domains, invitations, members, mfa, payments,
    policies, session, settings, tenant,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "insurance-agent",
        description = "Reference application of tenancy-rs: a multi-tenant back end for insurance agents. \
            Errors are RFC 9457 problem+json.",
    ),
    paths(
        super::health,
        crate::observe::live,
        crate::observe::ready,
        crate::observe::tenant,
        crate::observe::metrics,
        session::login,
        session::refresh,
        session::logout,
        mfa::enroll,
        mfa::confirm,
        mfa::security,
        mfa::set_security,
        session::me,
        agents::list,
        agents::get,
        agents::create,
        agents::deactivate,
        customers::list,
        customers::get,
        customers::create,
        customers::update,
        customers::deactivate,
        customers::forget,
        customers::export,
        policies::list,
        policies::get,
        policies::create,
        policies::issue,
        policies::change_status,
        payments::list,
        payments::complete,
        payments::fail,
        payments::refund,
        payments::commissions,
        payments::pay_commission,
        dashboard::dashboard,
        invitations::invite,
        invitations::accept,
        invitations::revoke,
        invitations::password_policy,
        invitations::set_password_policy,
        settings::get,
        settings::patch,
        domains::list,
        domains::create,
        domains::verify,
        domains::remove,
        members::list,
        members::change_role,
        members::suspend,
        members::resume,
        members::remove,
        tenant::usage,
        billing::get,
        billing::change,
        billing::callback,
        tenant::data_access,
        tenant::user_activity,
        tenant::export,
        audit::list,
        audit::verify,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
