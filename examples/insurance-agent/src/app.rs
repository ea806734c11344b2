//! Starting the server: open the data directory (seeding demo data on first
//! run), load the plans and the session key, bind, serve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenancy_core::client::TrustedProxies;
use tenancy_core::oidc::{IdentitySettings, IssuerDirectory, OidcConfig, OidcVerifier};
use tenancy_core::ownership::{HickoryTxtResolver, TxtResolver};
use tenancy_core::plan::PlanCatalog;
use tenancy_core::signin::{AttemptRule, MemoryAttempts, SignInGuard};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::auth::{Hasher, Sessions};
use crate::data::{Data, PgUrls};
use crate::drain::{Admission, DRAIN_TIMEOUT, Drain};
use crate::seed;
pub use crate::server::Limits;

/// The embedded plan catalog (`config/plans.toml`).
pub const PLANS: &str = include_str!("../config/plans.toml");

/// Errors of start-up and the command line.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (control database, tenant files, session key).
    pub data_dir: PathBuf,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// A plan catalog file replacing the embedded one.
    pub plans: Option<PathBuf>,
    /// PostgreSQL instead of the embedded SQLite (the data directory then
    /// keeps only the secrets).
    pub postgres: Option<PgUrls>,
    /// Redis for the API quota (feature `redis`), shared by every instance;
    /// `None`: counted in this process's memory.
    pub redis: Option<String>,
    /// Client addresses, sign-in protection and password hashing.
    pub security: Security,
    /// Connection cap and the deadlines of slow clients.
    pub limits: Limits,
    /// Where the billing outbox and high-risk alerts are delivered.
    pub billing: crate::billing::Billing,
}

/// How the server protects sign-in, learns client addresses and checks
/// custom domains.
#[derive(Debug, Clone)]
pub struct Security {
    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed
    /// (`INSURANCE_TRUSTED_PROXIES`); none by default.
    pub trusted_proxies: TrustedProxies,
    /// Sign-in limits per account (the email).
    pub account_rule: AttemptRule,
    /// Sign-in limits per client address.
    pub client_rule: AttemptRule,
    /// Password hashes computed at once (half the CPUs by default).
    pub hashing_permits: usize,
    /// How tenants' identity providers are reached and their keys cached.
    pub oidc: OidcConfig,
    /// The bearer token `/metrics` asks non-loopback clients for
    /// (`INSURANCE_METRICS_TOKEN`); without it only loopback is served.
    pub metrics_token: Option<String>,
    /// The DNS server asked for custom-domain TXT records
    /// (`INSURANCE_DNS_SERVER`, `ip:port`); `None`: the system's resolvers.
    pub dns_server: Option<SocketAddr>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::none(),
            account_rule: AttemptRule::account(),
            client_rule: AttemptRule::client(),
            hashing_permits: crate::auth::default_hashing_permits(),
            oidc: OidcConfig::default(),
            metrics_token: None,
            dns_server: None,
        }
    }
}

/// The TXT look-ups of custom-domain checks: `server` only, or the system's
/// resolvers. Without a readable system configuration the server still
/// starts, and domain checks answer 503 until `INSURANCE_DNS_SERVER` is set.
fn txt_resolver(server: Option<SocketAddr>) -> Result<Arc<dyn TxtResolver>, Error> {
    Ok(match server {
        Some(addr) => Arc::new(
            HickoryTxtResolver::with_nameserver(addr)
                .map_err(|e| format!("INSURANCE_DNS_SERVER={addr}: {e}"))?,
        ),
        None => match HickoryTxtResolver::system() {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: custom domains cannot be verified (set INSURANCE_DNS_SERVER)");
                Arc::new(crate::api::domains::NoDns(format!(
                    "no DNS server configured (set INSURANCE_DNS_SERVER): {e}"
                )))
            }
        },
    })
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where the data is, in words (`data in ./data (SQLite)` or
    /// `PostgreSQL, row-level security; audit clean`).
    pub storage: String,
    /// The demo tenants seeded by this start (empty when the data directory
    /// already had tenants).
    pub seeded: Vec<String>,
    /// The server's data access (operations code in the same process: a
    /// suspension made here is seen by the next request).
    pub data: Data,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    refresher: JoinHandle<()>,
    deliverers: Vec<JoinHandle<()>>,
    issuers: IssuerDirectory,
}

impl Running {
    /// Drains (new requests get 503, those in flight finish), stops
    /// listening, and waits.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.refresher.abort();
        (&mut self.task).await??;
        self.stop_deliverers();
        Ok(())
    }

    /// Stops delivering the outbox (what is pending stays for the next start).
    pub fn stop_deliverers(&mut self) {
        for d in self.deliverers.drain(..) {
            d.abort();
        }
    }

    /// Re-reads the tenants' identity providers now (a change made in this
    /// process; changes made elsewhere arrive within [`ISSUER_REFRESH`]).
    pub async fn reload_identity(&self) -> Result<(), Error> {
        load_issuers(&self.data, &self.issuers).await
    }

    /// Waits until the server stops (SIGTERM or Ctrl-C, after draining).
    pub async fn wait(mut self) -> Result<(), Error> {
        (&mut self.task).await??;
        self.refresher.abort();
        self.stop_deliverers();
        Ok(())
    }
}

/// The plan catalog: `path`, or the embedded one.
pub fn plans(path: Option<&Path>) -> Result<PlanCatalog, Error> {
    let text = match path {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?
        }
        None => PLANS.to_owned(),
    };
    Ok(PlanCatalog::from_toml(&text)?)
}

/// The API quota's limiter: Redis when configured, else this process's memory
/// (which `/usage` can also read). A limiter that cannot answer refuses the
/// request (503 with `Retry-After`): without a count there is no limit.
async fn rate_limiter(
    redis: Option<&str>,
) -> Result<
    (
        Arc<dyn tenancy_core::pipeline::RateCheck>,
        Option<Arc<tenancy_core::quota::MemoryQuota>>,
    ),
    Error,
> {
    match redis {
        None => {
            let memory = Arc::new(tenancy_core::quota::MemoryQuota::new());
            Ok((memory.clone(), Some(memory)))
        }
        #[cfg(feature = "redis")]
        Some(url) => Ok((
            Arc::new(
                tenancy_redis::RedisQuota::connect(url)
                    .await
                    .map_err(|e| format!("INSURANCE_REDIS_URL: {e}"))?,
            ),
            None,
        )),
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(
            "INSURANCE_REDIS_URL is set but this build has no Redis support: \
                        build with `--features redis`"
                .into(),
        ),
    }
}

/// How often the issuer directory is re-read from the tenants' settings.
pub const ISSUER_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Fills `issuers` from every tenant's `identity` setting. A tenant whose
/// setting is malformed, or names an issuer another tenant has, keeps no
/// issuer (logged): its provider's tokens resolve no tenant.
pub async fn load_issuers(data: &Data, issuers: &IssuerDirectory) -> Result<(), Error> {
    for tenant in data.tenant_store().list().await? {
        let settings = match IdentitySettings::of(&tenant) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tenant.id = %tenant.id, error = %e, "identity setting ignored");
                None
            }
        };
        if let Err(e) = issuers.set(tenant.id, settings.as_ref()) {
            tracing::warn!(tenant.id = %tenant.id, error = %e, "identity setting ignored");
            issuers.set(tenant.id, None)?;
        }
    }
    Ok(())
}

/// Where sign-in attempts are counted: Redis when configured, else
/// PostgreSQL when the data is there (shared by every instance), else this
/// process's memory.
async fn attempt_store(
    data: &Data,
    redis: Option<&str>,
) -> Result<Arc<dyn tenancy_core::signin::AttemptStore>, Error> {
    #[cfg(feature = "redis")]
    if let Some(url) = redis {
        return Ok(Arc::new(
            tenancy_redis::RedisAttempts::connect(url)
                .await
                .map_err(|e| format!("INSURANCE_REDIS_URL: {e}"))?,
        ));
    }
    #[cfg(not(feature = "redis"))]
    let _ = redis;
    Ok(match data.postgres_app_pool() {
        Some(pool) => Arc::new(tenancy_sqlx::PgAttempts::new(pool)),
        None => Arc::new(MemoryAttempts::new()),
    })
}

/// The session signing key (`session.key`), created on first run.
pub fn session_key(dir: &Path) -> Result<Vec<u8>, Error> {
    Ok(crate::data::secret_file(dir, "session.key")?.to_vec())
}

/// Once a day, every tenant's audit events older than its retention
/// minimum are sealed into archive segments and pruned from the live log
/// (`insurance-agent audit archive` does the same on demand).
fn spawn_audit_archival(data: &Data) -> JoinHandle<()> {
    let data = data.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
        every.tick().await;
        loop {
            every.tick().await;
            let tenants = match data.tenant_store().list().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "audit archival: tenants not listed");
                    continue;
                }
            };
            for t in tenants {
                let retention = match crate::api::settings::audit_retention_of(&t.settings) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(tenant.id = %t.id, error = ?e, "audit archival: bad retention");
                        continue;
                    }
                };
                if let Err(e) = data.archive_audit(&t, &retention, chrono::Utc::now()).await {
                    tracing::warn!(tenant.id = %t.id, error = %e, "audit log not archived");
                }
            }
        }
    })
}

/// Opens the data directory (seeding the demo on first run) and starts
/// serving on `config.bind`.
pub async fn start(config: &Config) -> Result<Running, Error> {
    let data = Data::open_with(&config.data_dir, config.postgres.as_ref()).await?;
    let seeded = if seed::is_seeded(&data).await? {
        Vec::new()
    } else {
        seed::demo(&data)
            .await?
            .iter()
            .map(|t| t.slug.to_string())
            .collect()
    };
    let storage = match data.backend_name() {
        "postgres" => "PostgreSQL, row-level isolation; strict isolation audit passed".to_owned(),
        _ => format!("SQLite, data in {}", config.data_dir.display()),
    };
    let (rate, quota) = rate_limiter(config.redis.as_deref()).await?;
    let issuers = IssuerDirectory::new();
    load_issuers(&data, &issuers).await?;
    let observer = crate::observe::Observer::new(&data, config.security.metrics_token.clone())?;
    let billing_secret = crate::billing::secret(&config.billing, &config.data_dir)?;
    let state = AppState {
        sessions: Sessions::new(session_key(&config.data_dir)?).with_epochs(data.session_epochs()),
        plans: Arc::new(plans(config.plans.as_deref())?),
        rate,
        quota,
        data: data.clone(),
        hasher: Hasher::new(config.security.hashing_permits),
        signin: SignInGuard::new(attempt_store(&data, config.redis.as_deref()).await?)
            .with_rules(config.security.account_rule, config.security.client_rule),
        proxies: Arc::new(config.security.trusted_proxies.clone()),
        oidc: Arc::new(OidcVerifier::new(config.security.oidc)?),
        issuers: issuers.clone(),
        monthly: tenancy_core::quota::monthly::MonthlyQuota::new(data.monthly_usage()).with_events(
            Arc::new(crate::observe::AuditedThresholds(observer.audit.clone())),
        ),
        observer,
        billing: Arc::new(tenancy_core::webhook::WebhookVerifier::new(
            billing_secret.clone(),
        )),
        dns: txt_resolver(config.security.dns_server)?,
        refusals_audited: moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(std::time::Duration::from_secs(60))
            .build(),
    };
    // Identity settings changed by another process (the command line) reach
    // the issuer directory within this period.
    let refresher = {
        let (data, issuers) = (data.clone(), issuers.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ISSUER_REFRESH);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = load_issuers(&data, &issuers).await {
                    tracing::warn!(error = %e, "could not reload the tenants' identity providers");
                }
            }
        })
    };
    let listener = crate::server::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let mut deliverers = crate::billing::spawn(&data, &config.billing, &config.data_dir)?;
    deliverers.push(spawn_audit_archival(&data));
    let (stop, stopped) = oneshot::channel::<()>();
    let drain = Arc::new(Drain::default());
    let app = api::router(state).layer(axum::middleware::from_fn_with_state(
        Arc::new(Admission {
            drain: drain.clone(),
            limits: config.limits,
        }),
        crate::drain::admit,
    ));
    let limits = config.limits;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            tokio::select! {
                _ = stopped => {}
                () = crate::drain::signal() => {}
            }
            // New requests get 503 from here on; those in flight finish.
            drain.drain(DRAIN_TIMEOUT).await;
        };
        crate::server::serve(listener, app, limits, shutdown, DRAIN_TIMEOUT).await
    });
    Ok(Running {
        addr,
        storage,
        seeded,
        data,
        stop: Some(stop),
        task,
        refresher,
        issuers,
        deliverers,
    })
}
