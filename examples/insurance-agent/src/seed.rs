//! Demo data: created on first run so a new user can sign in at once, and
//! synthetic data at scale (`seed --tenants N`).

use chrono::{Duration, NaiveDate, Utc};
use tenancy_core::{Membership, PlanId, Role, Tenant, TenantContext, TenantId, TenantKind, UserId};

use crate::api::ApiError;
use crate::api::agents::{self, Agent};
use crate::api::customers::{self, Customer};
use crate::auth::hash_password;
use crate::data::Data;
use crate::domain::{ComplianceStatus, CustomerType, KycStatus, LifecycleStage, RiskProfile};
use crate::id::Id;
use crate::sensitive::{self, SealedFields, SensitiveFields};

/// The demo password of every demo user (printed at start-up).
pub const DEMO_PASSWORD: &str = "Demo-Password-1";

/// A demo tenant and who works there.
#[derive(Debug, Clone)]
pub struct DemoTenant<'a> {
    /// Slug.
    pub slug: &'a str,
    /// Display name.
    pub name: &'a str,
    /// `insurance_provider`, `independent_agent` or `agent_network`.
    pub kind: &'a str,
    /// Plan.
    pub plan: &'a str,
    /// Parent tenant's slug (regional offices of a provider).
    pub parent: Option<&'a str>,
    /// (email, name, role) of its users, roles by the application's names
    /// (`tenant_admin`, `manager`, `agent`, `viewer`, `finance`); the first
    /// is the tenant admin. Managers and agents get an agent record.
    pub users: &'a [(&'a str, &'a str, &'a str)],
}

/// The demo tenants created on first run.
pub const DEMO: &[DemoTenant<'static>] = &[
    DemoTenant {
        slug: "sunrise-insurance",
        name: "Sunrise Insurance",
        kind: "insurance_provider",
        plan: "enterprise",
        parent: None,
        users: &[
            ("admin@sunrise.test", "Sunita Rao", "tenant_admin"),
            ("manager@sunrise.test", "Mahesh Iyer", "manager"),
            ("agent@sunrise.test", "Arjun Mehta", "agent"),
            ("finance@sunrise.test", "Farah Khan", "finance"),
        ],
    },
    DemoTenant {
        slug: "sunrise-north",
        name: "Sunrise Insurance — North Region",
        kind: "insurance_provider",
        plan: "professional",
        parent: Some("sunrise-insurance"),
        users: &[("admin@north.sunrise.test", "Neha Kapoor", "tenant_admin")],
    },
    DemoTenant {
        slug: "asha-agency",
        name: "Asha Independent Agency",
        kind: "independent_agent",
        plan: "free",
        parent: None,
        users: &[("asha@asha.test", "Asha Verma", "tenant_admin")],
    },
    DemoTenant {
        slug: "bharat-agents",
        name: "Bharat Agents Network",
        kind: "agent_network",
        plan: "professional",
        parent: None,
        users: &[
            ("admin@bharat.test", "Bharat Singh", "tenant_admin"),
            ("agent@bharat.test", "Kavya Nair", "agent"),
        ],
    },
];

/// Creates a user account (or returns the existing one's id).
pub async fn ensure_user(
    data: &Data,
    email: &str,
    name: &str,
    password: &str,
) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    if let Some((id, _)) = data.user_by_email(&email).await? {
        return Ok(id);
    }
    let id = Id::new().to_string();
    data.insert_user(&id, &email, name, &hash_password(password)?)
        .await?;
    Ok(id)
}

/// [`ensure_user`] with the password already hashed (by the server's
/// [`Hasher`](crate::auth::Hasher), off the async workers).
pub async fn ensure_user_hashed(
    data: &Data,
    email: &str,
    name: &str,
    hash: &str,
) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    if let Some((id, _)) = data.user_by_email(&email).await? {
        return Ok(id);
    }
    let id = Id::new().to_string();
    data.insert_user(&id, &email, name, hash).await?;
    Ok(id)
}

/// Whether the data directory already holds tenants.
pub async fn is_seeded(data: &Data) -> Result<bool, ApiError> {
    Ok(!data.tenant_store().list().await?.is_empty())
}

/// Creates the demo tenants, users, agents and customers. Returns the
/// tenants created.
pub async fn demo(data: &Data) -> Result<Vec<Tenant>, ApiError> {
    let mut created: Vec<Tenant> = Vec::new();
    for d in DEMO {
        let parent = match d.parent {
            Some(parent) => Some(
                created
                    .iter()
                    .find(|c| c.slug.as_str() == parent)
                    .ok_or_else(|| {
                        ApiError::internal(format!("demo parent {parent} not created first"))
                    })?
                    .id,
            ),
            None => None,
        };
        created.push(tenant(data, d, parent).await?);
    }
    Ok(created)
}

/// Creates one tenant as the demo does: its users (password
/// [`DEMO_PASSWORD`]) and memberships, an agent record for every user but
/// the admins, and three customers per agent (with searchable PAN and phone).
pub async fn tenant(
    data: &Data,
    d: &DemoTenant<'_>,
    parent: Option<TenantId>,
) -> Result<Tenant, ApiError> {
    let mut t = Tenant::new(
        TenantId::new_v4(),
        d.slug
            .parse()
            .map_err(|e| ApiError::invalid(format!("slug {:?}: {e}", d.slug)))?,
        d.name,
    )
    .with_kind(TenantKind::new(d.kind))
    .with_plan(PlanId::new(d.plan));
    if let Some(parent) = parent {
        t = t.with_parent(parent);
    }
    let t = data.create_tenant(t).await?;
    let ctx = TenantContext::new(t.clone());
    let mut tx = data.begin_write(&ctx).await?;
    let mut manager: Option<Id> = None;
    for (i, (email, name, role_name)) in d.users.iter().enumerate() {
        let user = ensure_user(data, email, name, DEMO_PASSWORD).await?;
        let (role, grants) = crate::api::session::role_from_name(role_name)
            .ok_or_else(|| ApiError::internal(format!("demo role {role_name} is unknown")))?;
        let mut membership = Membership::new(UserId::new(user.clone()), t.id, role);
        membership.grants = grants;
        data.memberships().upsert(&membership).await?;
        if !matches!(role, Role::Manager | Role::Member) {
            continue;
        }
        let agent = demo_agent(
            &format!("{}-{:03}", d.slug.split('-').next().unwrap_or("AG"), i),
            name,
            Some(user),
            manager,
        );
        if role == Role::Manager {
            manager = Some(agent.id);
        }
        agents::insert(&mut tx, t.id.into(), &agent).await?;
        for (n, (first, last)) in [("Ravi", "Kumar"), ("Priya", "Shah"), ("Anil", "Gupta")]
            .iter()
            .enumerate()
        {
            let mut c = demo_customer(agent.id, first, last, n);
            c.sealed = sensitive::seal(data, t.id, c.id, &demo_sensitive(i * 10 + n)).await?;
            customers::insert(&mut tx, t.id.into(), &c).await?;
        }
    }
    tx.commit().await?;
    Ok(t)
}

fn demo_agent(code: &str, name: &str, user: Option<String>, manager: Option<Id>) -> Agent {
    Agent {
        id: Id::new(),
        user_id: user,
        agent_code: code.to_uppercase(),
        name: name.to_owned(),
        licence_number: format!("IRDAI-{}", &Id::new().to_string()[..8].to_uppercase()),
        licence_expiry: (Utc::now() + Duration::days(400)).date_naive(),
        experience_years: 5,
        business_name: None,
        regions: vec!["Maharashtra".to_owned()],
        manager_id: manager,
        compliance_status: ComplianceStatus::Compliant,
        active: true,
        created_at: Utc::now(),
    }
}

fn demo_customer(agent: Id, first: &str, last: &str, n: usize) -> Customer {
    let stages = [
        LifecycleStage::Prospect,
        LifecycleStage::Active,
        LifecycleStage::AtRisk,
    ];
    Customer {
        id: Id::new(),
        agent_id: agent,
        first_name: first.to_owned(),
        last_name: last.to_owned(),
        date_of_birth: NaiveDate::from_ymd_opt(1985, 1 + (n as u32 % 12), 15),
        email: Some(format!(
            "{}.{}@example.in",
            first.to_lowercase(),
            last.to_lowercase()
        )),
        customer_type: CustomerType::Individual,
        risk_profile: RiskProfile::Medium,
        lifecycle_stage: stages[n % stages.len()],
        engagement_score: 40 + (n as i64 * 10) % 60,
        kyc_status: KycStatus::Verified,
        shared: false,
        created_at: Utc::now(),
        sensitive: SensitiveFields::default(),
        sealed: SealedFields::default(),
    }
}

/// Demo identifiers for customer `n` (PAN `ABCDE` + 4 digits + `F`).
fn demo_sensitive(n: usize) -> SensitiveFields {
    SensitiveFields {
        phone: Some(format!("+9198765{:05}", n % 100_000)),
        pan: Some(format!("DEMOP{:04}K", n % 10_000)),
        ..SensitiveFields::default()
    }
}

/// A synthetic tenant (free plan limits lifted by the professional plan):
/// one admin, three agents, `customers` customers spread over them.
pub async fn synthetic(
    data: &Data,
    slug: &str,
    name: &str,
    customers: usize,
) -> Result<Tenant, ApiError> {
    let t = data
        .create_tenant(
            Tenant::new(
                TenantId::new_v4(),
                slug.parse()
                    .map_err(|e| ApiError::invalid(format!("slug: {e}")))?,
                name,
            )
            .with_kind(TenantKind::new("independent_agent"))
            .with_plan(PlanId::new("professional")),
        )
        .await?;
    let ctx = TenantContext::new(t.clone());
    let mut tx = data.begin_write(&ctx).await?;
    let mut agent_ids = Vec::new();
    for i in 0..3 {
        let a = demo_agent(&format!("SYN-{i:03}"), &format!("Agent {i}"), None, None);
        agents::insert(&mut tx, t.id.into(), &a).await?;
        agent_ids.push(a.id);
    }
    let names = [
        ("Ravi", "Kumar"),
        ("Priya", "Shah"),
        ("Anil", "Gupta"),
        ("Meera", "Joshi"),
    ];
    for n in 0..customers {
        let (first, last) = names[n % names.len()];
        let c = demo_customer(agent_ids[n % agent_ids.len()], first, last, n);
        customers::insert(&mut tx, t.id.into(), &c).await?;
    }
    tx.commit().await?;
    Ok(t)
}
