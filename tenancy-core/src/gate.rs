//! The status gate: may this tenant serve a request right now?
//!
//! | status | outcome | HTTP |
//! |---|---|---|
//! | active | admitted | — |
//! | trial, not ended | admitted | — |
//! | trial, ended | [`TenantError::TrialExpired`] | 402 |
//! | suspended | [`TenantError::Suspended`] with the reason | 403 |
//! | offboarding | [`TenantError::Offboarding`] | 403 |
//! | deleted | [`TenantError::NotFound`], exactly as for an unknown tenant | 404 |
//!
//! Deleted and unknown tenants are deliberately indistinguishable, so that a
//! client cannot probe which tenants once existed.

use chrono::{DateTime, Utc};

use crate::{Tenant, TenantError, TenantStatus};

/// Which tenants a piece of work may run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Admission {
    /// Requests and ordinary jobs: active tenants and running trials only.
    #[default]
    Serving,
    /// Lifecycle work (export, reminders): also offboarding tenants and
    /// ended trials. Suspended and deleted tenants are still refused.
    Maintenance,
}

/// Admits `tenant` at time `now` for ordinary work ([`Admission::Serving`]).
///
/// ```
/// use chrono::{Duration, Utc};
/// use tenancy_core::{gate, Tenant, TenantId, TenantStatus};
///
/// let now = Utc::now();
/// let t = Tenant::new(TenantId::new_v4(), "acme".parse()?, "Acme")
///     .with_status(TenantStatus::Trial { ends_at: now - Duration::days(1) });
/// assert_eq!(gate::check(&t, now).unwrap_err().status(), 402);
///
/// let deleted = t.clone().with_status(TenantStatus::Deleted);
/// assert_eq!(gate::check(&deleted, now).unwrap_err().status(), 404);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check(tenant: &Tenant, now: DateTime<Utc>) -> Result<(), TenantError> {
    check_for(tenant, now, Admission::Serving)
}

/// Admits `tenant` at time `now` under `admission`.
pub fn check_for(
    tenant: &Tenant,
    now: DateTime<Utc>,
    admission: Admission,
) -> Result<(), TenantError> {
    let maintenance = admission == Admission::Maintenance;
    match &tenant.status {
        TenantStatus::Active => Ok(()),
        TenantStatus::Trial { ends_at } if now < *ends_at || maintenance => Ok(()),
        TenantStatus::Trial { ends_at } => Err(TenantError::TrialExpired { ended_at: *ends_at }),
        TenantStatus::Suspended { reason } => Err(TenantError::Suspended {
            reason: reason.as_str().into(),
        }),
        TenantStatus::Offboarding { .. } if maintenance => Ok(()),
        TenantStatus::Offboarding { .. } => Err(TenantError::Offboarding),
        TenantStatus::Deleted => Err(TenantError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::TenantId;

    #[test]
    fn gate_table() {
        let now = Utc::now();
        let base = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme");
        let cases = [
            (TenantStatus::Active, Ok(()), Ok(())),
            (
                TenantStatus::Trial {
                    ends_at: now + Duration::hours(1),
                },
                Ok(()),
                Ok(()),
            ),
            (
                TenantStatus::Trial {
                    ends_at: now - Duration::seconds(1),
                },
                Err(402),
                Ok(()),
            ),
            (
                TenantStatus::Suspended {
                    reason: "unpaid".into(),
                },
                Err(403),
                Err(403),
            ),
            (
                TenantStatus::Offboarding {
                    purge_after: now + Duration::days(30),
                },
                Err(403),
                Ok(()),
            ),
            (TenantStatus::Deleted, Err(404), Err(404)),
        ];
        for (status, serving, maintenance) in cases {
            let t = base.clone().with_status(status.clone());
            let got = |a| check_for(&t, now, a).map_err(|e| e.status());
            assert_eq!(got(Admission::Serving), serving, "{status:?}");
            assert_eq!(got(Admission::Maintenance), maintenance, "{status:?}");
        }
    }

    #[test]
    fn suspension_reason_is_reported() {
        let t = Tenant::new(TenantId::new_v4(), "acme".parse().unwrap(), "Acme").with_status(
            TenantStatus::Suspended {
                reason: "invoice overdue".into(),
            },
        );
        let err = check(&t, Utc::now()).unwrap_err();
        assert!(err.to_string().contains("invoice overdue"));
    }
}
