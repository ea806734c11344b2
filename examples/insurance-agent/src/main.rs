//! `insurance-agent`: the server and its operations commands.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line program talks on stdout

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use insurance_agent::app::{self, Config, Error};
use insurance_agent::data::{Data, PgUrls};
use insurance_agent::{ops, seed};
use tenancy_core::lifecycle::Transition;
use tenancy_core::oidc::{IdentitySettings, IssuerSettings};
use tenancy_core::store::TenantStore;
use tenancy_core::{PlanId, Tenant, TenantId, TenantKind};

#[derive(Parser)]
#[command(
    name = "insurance-agent",
    version,
    about = "Multi-tenant back end for insurance agents (tenancy-rs reference app)"
)]
struct Cli {
    /// Data directory: keys and session key; on SQLite also the control database and one file per tenant.
    #[arg(
        long,
        env = "INSURANCE_DATA_DIR",
        default_value = "data",
        global = true
    )]
    data_dir: PathBuf,
    /// PostgreSQL instead of the embedded SQLite: the application role
    /// (neither superuser, nor BYPASSRLS, nor the tables' owner).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// With `--database-url`: the role owning the schema (applies it at
    /// start-up, writes tenants and memberships).
    #[arg(
        long,
        env = "DATABASE_OWNER_URL",
        global = true,
        hide_env_values = true
    )]
    database_owner_url: Option<String>,
    /// With `--database-url` through a transaction-mode pooler (pgbouncer):
    /// the application role on a direct connection, for change notifications.
    #[arg(
        long,
        env = "DATABASE_LISTEN_URL",
        global = true,
        hide_env_values = true
    )]
    database_listen_url: Option<String>,
    /// Redis for the API quota, shared by every instance (build feature
    /// `redis`); without it each process counts in memory.
    #[arg(
        long,
        env = "INSURANCE_REDIS_URL",
        global = true,
        hide_env_values = true
    )]
    redis_url: Option<String>,
    /// Accept identity providers on plain http at a loopback address
    /// (local development and tests only).
    #[arg(long, env = "INSURANCE_OIDC_ALLOW_HTTP_LOOPBACK", global = true)]
    oidc_allow_http_loopback: bool,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers name
    /// the client (addresses or CIDR blocks, comma-separated). Without it the
    /// connection's address is the client's, whatever the headers say.
    #[arg(long, env = "INSURANCE_TRUSTED_PROXIES", global = true)]
    trusted_proxies: Option<String>,
    /// The bearer token `GET /metrics` asks clients other than loopback for
    /// (without it, metrics are served to loopback only).
    #[arg(
        long,
        env = "INSURANCE_METRICS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    /// The DNS server (`ip:port`) asked for the TXT records that prove a
    /// tenant controls a custom domain; without it, the system's resolvers.
    #[arg(long, env = "INSURANCE_DNS_SERVER", global = true)]
    dns_server: Option<SocketAddr>,
    /// Where billing messages (plan requests and changes, usage records,
    /// lifecycle transitions) are posted, signed with `billing-webhook.key`
    /// from the data directory; without it they wait in the outbox.
    #[arg(long, env = "INSURANCE_BILLING_WEBHOOK_URL", global = true)]
    billing_webhook_url: Option<String>,
    /// Where high-risk audit events are posted (signed the same way).
    #[arg(long, env = "INSURANCE_ALERT_WEBHOOK_URL", global = true)]
    alert_webhook_url: Option<String>,
    /// The secret shared with the billing side (at least 16 bytes); without
    /// it, `billing-webhook.key` in the data directory (created on first start).
    #[arg(
        long,
        env = "INSURANCE_BILLING_SECRET",
        global = true,
        hide_env_values = true
    )]
    billing_secret: Option<String>,
    /// The alert webhook's own secret (at least 16 bytes); without it,
    /// `alerts-webhook.key` in the data directory.
    #[arg(
        long,
        env = "INSURANCE_ALERT_SECRET",
        global = true,
        hide_env_values = true
    )]
    alert_secret: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the server (the default command). Seeds demo data on first run.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "INSURANCE_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// A plan catalog (TOML) replacing the embedded one.
        #[arg(long)]
        plans: Option<PathBuf>,
    },
    /// Brings every tenant file (SQLite) or the shared schema (PostgreSQL) to the latest version.
    Migrate,
    /// Creates synthetic tenants with agents and customers.
    Seed {
        /// How many tenants.
        #[arg(long, default_value_t = 10)]
        tenants: usize,
        /// Customers per tenant.
        #[arg(long, default_value_t = 100)]
        customers: usize,
    },
    /// Tenant operations.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// A customer's data-subject rights: forget, export.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Audit log retention.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Seals audit events older than the tenant's retention minimum into
    /// archive segments (`audit-archive/` in the data directory) and prunes
    /// them from the live log; destroys archived events older than its
    /// maximum. The server does this daily.
    Archive {
        /// The tenant (omit with --all).
        slug: Option<String>,
        /// Every tenant.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Forgets a customer on their request: destroys their data-subject key
    /// (their encrypted fields never decrypt again, also from earlier
    /// backups), redacts their personal fields and keeps the financial
    /// records. Audited.
    Forget {
        /// The tenant.
        slug: String,
        /// The customer id.
        id: String,
        /// Who is acting (recorded as `operator:<name>`).
        #[arg(long)]
        operator: String,
    },
    /// Writes everything stored about a customer, decrypted, as JSON
    /// (a subject-access request). Audited.
    Export {
        /// The tenant.
        slug: String,
        /// The customer id.
        id: String,
        /// Who is acting (recorded as `operator:<name>`).
        #[arg(long)]
        operator: String,
        /// A new file to write (owner-readable only); without it, standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes a new data-key version primary for a tenant (or all): new
    /// values use it, older values still decrypt.
    Rotate {
        /// The tenant (omit with --all).
        slug: Option<String>,
        /// Every tenant.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Stock usage against the plan.
    Usage {
        /// The tenant.
        slug: String,
    },
    /// Actions per user from the tenant's audit log.
    Activity {
        /// The tenant.
        slug: String,
        /// Days back.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Verifies the tenant's audit hash chain across its archive segments
    /// and the live log.
    Audit {
        /// The tenant.
        slug: String,
        /// A head printed by an earlier run (`<seq>:<hash>`): the chain must
        /// still reach it (detects removal of the newest events).
        #[arg(long)]
        anchor: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Lists tenants.
    List,
    /// Creates a tenant (on SQLite with its own data file).
    Create {
        /// URL-safe name.
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// insurance_provider, independent_agent or agent_network.
        #[arg(long, default_value = "independent_agent")]
        kind: String,
        /// free, professional or enterprise.
        #[arg(long, default_value = "free")]
        plan: String,
        /// The first tenant admin's email (password printed once).
        #[arg(long)]
        admin_email: String,
    },
    /// Suspends a tenant (its requests are refused with 403).
    Suspend {
        /// The tenant.
        slug: String,
        /// Why (shown to its users).
        #[arg(long)]
        reason: String,
    },
    /// Changes a tenant's plan at once (operators; tenant admins' upgrades
    /// wait for billing's confirmation).
    Plan {
        /// The tenant.
        slug: String,
        /// The plan (free, professional, enterprise, or one of `--plans`).
        plan: String,
        /// A plan catalog (TOML) replacing the embedded one.
        #[arg(long)]
        plans: Option<PathBuf>,
    },
    /// Resumes a suspended tenant.
    Resume {
        /// The tenant.
        slug: String,
    },
    /// Starts offboarding: requests are refused, data kept for the grace period.
    Offboard {
        /// The tenant.
        slug: String,
        /// Days before the data may be purged.
        #[arg(long, default_value_t = 30)]
        grace_days: i64,
    },
    /// Exports every table as JSON Lines (sensitive fields decrypted) into a directory.
    Export {
        /// The tenant.
        slug: String,
        /// Where to write `<table>.jsonl`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Purges an offboarded tenant after its grace period and an export
    /// made since offboarding began: keys crypto-shredded, audit log
    /// destroyed, data removed (its file, or its rows), memberships removed.
    /// Writes a signed destruction certificate.
    Purge {
        /// The tenant.
        slug: String,
        /// Purge although no export was made since offboarding began (the
        /// certificate records that none was).
        #[arg(long)]
        without_export: bool,
        /// Who is purging (recorded in the certificate).
        #[arg(long, default_value = "operator")]
        operator: String,
    },
    /// Writes a sealed backup of one tenant (its record, members, wrapped
    /// keys, customers' subject keys and every table) to a new file.
    Backup {
        /// The tenant.
        slug: String,
        /// The file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restores a tenant from a backup into this deployment (a SQLite file
    /// of its own, or the shared PostgreSQL tables), under the same id. An
    /// interrupted restore resumes when run again.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Overwrite the tenant's data if it exists here.
        #[arg(long)]
        replace: bool,
        /// Continue an interrupted restore of this backup.
        #[arg(long, conflicts_with = "clone_as")]
        resume: bool,
        /// Restore as a new tenant with this slug (a clone or sandbox copy:
        /// new id, own keys, fields re-encrypted) instead of the same one.
        #[arg(long = "as", value_name = "SLUG", conflicts_with = "replace")]
        clone_as: Option<String>,
        /// The clone's display name (default: the source's, "(copy)").
        #[arg(long, requires = "clone_as")]
        name: Option<String>,
    },
    /// Verifies a destruction certificate against this deployment's
    /// signing key (or the public key given).
    VerifyCertificate {
        /// The certificate file.
        file: PathBuf,
        /// The signer's public key (base64); default: this data directory's.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Sets the identity provider (OpenID Connect issuer) whose access
    /// tokens the tenant accepts, or removes it.
    Identity {
        /// The tenant.
        slug: String,
        /// The issuer URL (https). Omit with --clear.
        #[arg(long, required_unless_present = "clear")]
        issuer: Option<String>,
        /// An accepted audience (repeat for several).
        #[arg(long = "audience", required_unless_present = "clear")]
        audiences: Vec<String>,
        /// An accepted signature algorithm (repeat; default RS256).
        #[arg(long = "algorithm")]
        algorithms: Vec<String>,
        /// Removes the tenant's identity provider.
        #[arg(long, conflicts_with_all = ["issuer", "audiences", "algorithms"])]
        clear: bool,
    },
    /// Limits where the tenant's requests may come from (address blocks),
    /// or lifts the limit.
    Network {
        /// The tenant.
        slug: String,
        /// An allowed address or CIDR block (repeat for several).
        #[arg(long = "allow", required_unless_present = "clear")]
        allow: Vec<String>,
        /// Accept requests from everywhere again.
        #[arg(long, conflicts_with = "allow")]
        clear: bool,
    },
    /// Puts a tenant in maintenance (its requests get 503 with Retry-After;
    /// impersonated operator sessions still pass), or ends it.
    Maintenance {
        /// The tenant.
        slug: String,
        /// How long, in minutes (without it: until `--off`).
        #[arg(long, conflicts_with = "off")]
        minutes: Option<i64>,
        /// What clients are told.
        #[arg(long, conflicts_with = "off")]
        message: Option<String>,
        /// Ends the maintenance now.
        #[arg(long)]
        off: bool,
    },
    /// Acts as one of the tenant's users for a while: prints an access token
    /// (no refresh), audited in the tenant's log with the reason. Everything
    /// done with it records both identities; it cannot change credentials
    /// or security settings.
    Impersonate {
        /// The tenant.
        slug: String,
        /// The user's email.
        email: String,
        /// Who is acting (recorded as `operator:<name>`).
        #[arg(long)]
        operator: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// How long the token lasts (1–60).
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
    /// Gives a user a role in a tenant (an identity provider's user is
    /// `<issuer>#<subject>`).
    Member {
        /// The tenant.
        slug: String,
        /// The user id.
        user: String,
        /// tenant_admin, manager, agent, viewer or finance.
        role: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        // Colours only for a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the data is: the data directory, and PostgreSQL when configured.
struct At {
    data_dir: PathBuf,
    postgres: Option<PgUrls>,
    redis: Option<String>,
    proxies: tenancy_core::client::TrustedProxies,
    allow_http_loopback: bool,
    metrics_token: Option<String>,
    dns_server: Option<SocketAddr>,
    billing_webhook_url: Option<String>,
    alert_webhook_url: Option<String>,
    billing_secret: Option<String>,
    alert_secret: Option<String>,
}

impl At {
    async fn open(&self) -> Result<Data, Error> {
        Ok(Data::open_with(&self.data_dir, self.postgres.as_ref()).await?)
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let postgres = match (cli.database_url, cli.database_owner_url) {
        (Some(app), Some(owner)) => Some(PgUrls {
            app,
            owner,
            listen: cli.database_listen_url,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "DATABASE_URL is set but DATABASE_OWNER_URL is not: give the role that \
                        owns the schema too (it applies the schema; DATABASE_URL must be the \
                        application role, which row-level security confines)"
                    .into(),
            );
        }
        (None, Some(_)) => {
            return Err("DATABASE_OWNER_URL is set but DATABASE_URL is not".into());
        }
    };
    let at = At {
        data_dir: cli.data_dir,
        postgres,
        redis: cli.redis_url,
        proxies: match cli.trusted_proxies.as_deref() {
            Some(list) => tenancy_core::client::TrustedProxies::parse(list)
                .map_err(|e| format!("INSURANCE_TRUSTED_PROXIES: {e}"))?,
            None => tenancy_core::client::TrustedProxies::none(),
        },
        allow_http_loopback: cli.oidc_allow_http_loopback,
        metrics_token: cli.metrics_token,
        dns_server: cli.dns_server,
        billing_webhook_url: cli.billing_webhook_url,
        alert_webhook_url: cli.alert_webhook_url,
        billing_secret: cli.billing_secret,
        alert_secret: cli.alert_secret,
    };
    // No subcommand: serve, honouring INSURANCE_BIND as `serve` does.
    let command = match cli.command {
        Some(c) => c,
        None => Command::Serve {
            bind: match std::env::var("INSURANCE_BIND") {
                Ok(v) => v
                    .parse()
                    .map_err(|e| format!("INSURANCE_BIND={v:?} is not an address: {e}"))?,
                Err(_) => "127.0.0.1:8080".parse()?,
            },
            plans: None,
        },
    };
    match command {
        Command::Serve { bind, plans } => serve(at, bind, plans).await,
        Command::Migrate => migrate(&at).await,
        Command::Seed { tenants, customers } => seed_many(&at, tenants, customers).await,
        Command::Tenant(t) => tenant(&at, t).await,
        Command::Keys(k) => keys(&at, k).await,
        Command::Report(r) => report(&at, r).await,
        Command::Customer(c) => customer(&at, c).await,
        Command::Audit(AuditCommand::Archive { slug, all }) => archive_audit(&at, slug, all).await,
    }
}

async fn archive_audit(at: &At, slug: Option<String>, all: bool) -> Result<(), Error> {
    let data = at.open().await?;
    let tenants = match (slug, all) {
        (Some(s), false) => vec![find(&data, &s).await?],
        (None, true) => data.tenant_store().list().await?,
        _ => return Err("name one tenant, or --all".into()),
    };
    let now = chrono::Utc::now();
    for t in tenants {
        let retention = insurance_agent::api::settings::audit_retention_of(&t.settings)?;
        let run = data.archive_audit(&t, &retention, now).await?;
        println!(
            "{}: {} events archived in {} segments, {} destroyed (retention {} days live{})",
            t.slug,
            run.archived_rows,
            run.segments,
            run.destroyed_rows,
            retention.min_days,
            retention
                .max_days
                .map(|d| format!(", {d} in all"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn customer(at: &At, command: CustomerCommand) -> Result<(), Error> {
    use insurance_agent::subject::{self, Requester};
    let data = at.open().await?;
    let (slug, id, operator) = match &command {
        CustomerCommand::Forget { slug, id, operator }
        | CustomerCommand::Export {
            slug, id, operator, ..
        } => (slug.clone(), id.clone(), operator.clone()),
    };
    if operator.trim().is_empty() {
        return Err("--operator must name who is acting".into());
    }
    let tenant = find(&data, &slug).await?;
    let id: insurance_agent::id::Id = id
        .parse()
        .map_err(|_| format!("{id:?} is not a customer id (a UUID)"))?;
    let ctx = tenancy_core::TenantContext::new((*tenant).clone());
    let by = Requester::Operator(operator.trim());
    match command {
        CustomerCommand::Forget { .. } => {
            let done = subject::forget(&data, &ctx, by, id).await?;
            println!(
                "customer {} forgotten at {}{}; key destroyed: {}; kept {} policies and {} payments",
                done.customer_id,
                done.erased_at,
                if done.already_erased {
                    " (already)"
                } else {
                    ""
                },
                done.destroyed_key,
                done.policies_kept,
                done.payments_kept
            );
        }
        CustomerCommand::Export { out, .. } => {
            let export = subject::export(&data, &ctx, by, id).await?;
            let json = serde_json::to_vec_pretty(&export)?;
            match out {
                Some(path) => {
                    use std::io::Write as _;
                    let mut f = insurance_agent::ops::private_file(&path).map_err(|e| {
                        format!("{}: {e} (the file must not exist yet)", path.display())
                    })?;
                    f.write_all(&json)?;
                    f.sync_all()?;
                    println!(
                        "written to {} (contains decrypted personal data: keep it private)",
                        path.display()
                    );
                }
                None => {
                    use std::io::Write as _;
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&json)?;
                    stdout.write_all(b"\n")?;
                }
            }
        }
    }
    Ok(())
}

async fn serve(at: At, bind: SocketAddr, plans: Option<PathBuf>) -> Result<(), Error> {
    let running = app::start(&Config {
        data_dir: at.data_dir.clone(),
        bind,
        plans,
        postgres: at.postgres,
        redis: at.redis,
        security: app::Security {
            trusted_proxies: at.proxies,
            metrics_token: at.metrics_token,
            dns_server: at.dns_server,
            oidc: tenancy_core::oidc::OidcConfig::default()
                .allow_http_loopback(at.allow_http_loopback),
            ..app::Security::default()
        },
        limits: app::Limits::default(),
        billing: insurance_agent::billing::Billing {
            webhook_url: at.billing_webhook_url,
            alert_url: at.alert_webhook_url,
            secret: at
                .billing_secret
                .map(|s| tenancy_core::webhook::WebhookSecret::new(s.into_bytes()))
                .transpose()
                .map_err(|e| format!("INSURANCE_BILLING_SECRET: {e}"))?,
            alert_secret: at
                .alert_secret
                .map(|s| tenancy_core::webhook::WebhookSecret::new(s.into_bytes()))
                .transpose()
                .map_err(|e| format!("INSURANCE_ALERT_SECRET: {e}"))?,
            ..Default::default()
        },
    })
    .await?;
    let url = format!("http://{}", running.addr);
    println!("insurance-agent listening on {url}  ({})", running.storage);
    if !running.seeded.is_empty() {
        println!("Created demo tenants: {}", running.seeded.join(", "));
    }
    println!();
    println!("Demo users (password {}):", seed::DEMO_PASSWORD);
    for t in seed::DEMO {
        for (email, _, role) in t.users {
            println!("  {:<28} tenant {:<18} {}", email, t.slug, role);
        }
    }
    println!();
    println!("Try:");
    println!(
        "  TOKEN=$(curl -s {url}/auth/login -H 'content-type: application/json' \\\n    -d '{{\"email\":\"agent@sunrise.test\",\"password\":\"{}\",\"tenant\":\"sunrise-insurance\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')",
        seed::DEMO_PASSWORD
    );
    println!("  curl -s {url}/me -H \"authorization: Bearer $TOKEN\"");
    println!("  curl -s {url}/customers -H \"authorization: Bearer $TOKEN\"");
    println!("  curl -s {url}/openapi.json | head -c 300");
    println!();
    println!("Ctrl-C stops the server.");
    running.wait().await
}

async fn migrate(at: &At) -> Result<(), Error> {
    let data = at.open().await?;
    let total = data.tenant_store().list().await?.len();
    let bar = bar(total as u64, "migrating");
    let report = data.migrate_all(|_| bar.inc(1)).await?;
    bar.finish_and_clear();
    println!(
        "{} migrated, {} already up to date, {} quarantined",
        report.migrated.len(),
        report.up_to_date,
        report.quarantined.len()
    );
    for (tenant, error) in &report.quarantined {
        println!("  quarantined {tenant}: {error}");
    }
    if report.quarantined.is_empty() && report.canary_failure.is_none() {
        Ok(())
    } else {
        Err("some tenants were not migrated (see above)".into())
    }
}

/// The key that seals backups: `INSURANCE_BACKUP_KEY` (base64 of 32
/// bytes), else `backup.key` in the data directory (created on first use;
/// copy it to the deployment that restores).
fn backup_key(data: &Data) -> Result<tenancy_core::backup::BackupKey, Error> {
    if let Ok(text) = std::env::var("INSURANCE_BACKUP_KEY") {
        let secret = tenancy_core::crypto::keys::LocalKeyProvider::master_from_base64(&text)
            .map_err(|e| format!("INSURANCE_BACKUP_KEY: {e}"))?;
        return Ok(tenancy_core::backup::BackupKey::new(*secret));
    }
    Ok(tenancy_core::backup::BackupKey::new(
        insurance_agent::data::secret_file(data.dir(), "backup.key")?,
    ))
}

async fn find(data: &Data, slug: &str) -> Result<std::sync::Arc<Tenant>, Error> {
    data.tenant_store()
        .by_slug(&slug.parse()?)
        .await?
        .ok_or_else(|| Error::from(format!("no tenant {slug:?}")))
}

async fn keys(at: &At, command: KeysCommand) -> Result<(), Error> {
    let data = at.open().await?;
    let KeysCommand::Rotate { slug, all } = command;
    let tenants = match (slug, all) {
        (Some(s), false) => vec![find(&data, &s).await?],
        (None, true) => data.tenant_store().list().await?,
        _ => return Err("name one tenant, or pass --all".into()),
    };
    let bar = bar(tenants.len() as u64, "rotating");
    for t in &tenants {
        let v = data.keyring().rotate(t.id).await?;
        bar.println(format!("{:<24} data key version {v}", t.slug.as_str()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

async fn report(at: &At, command: ReportCommand) -> Result<(), Error> {
    let data = at.open().await?;
    match command {
        ReportCommand::Usage { slug } => {
            let t = find(&data, &slug).await?;
            let plans = app::plans(None)?;
            let e = match &t.plan {
                Some(p) => Some(plans.entitlements(p, &t.plan_overrides)?),
                None => None,
            };
            let ctx = tenancy_core::TenantContext::new((*t).clone());
            let mut tx = data.begin(&ctx).await?;
            println!(
                "{slug} on plan {}",
                t.plan.as_ref().map_or("-", PlanId::as_str)
            );
            for (resource, sql) in insurance_agent::api::STOCK {
                let used: i64 = insurance_agent::on!(tx, sqlx::query_scalar(sql), fetch_one)?;
                let limit = e.as_ref().and_then(|e| e.stock_limit(resource));
                println!(
                    "  {resource:<10} {used:>8} of {}",
                    limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string())
                );
            }
            tx.commit().await?;
            Ok(())
        }
        ReportCommand::Activity { slug, days } => {
            let t = find(&data, &slug).await?;
            let ctx = tenancy_core::TenantContext::new((*t).clone());
            let mut tx = data.begin(&ctx).await?;
            let since = chrono::Utc::now() - chrono::Duration::days(days);
            let mut counts = std::collections::BTreeMap::<(String, String), u64>::new();
            for (_, e) in data.audit().since(&mut tx, since).await? {
                *counts
                    .entry((e.actor.id().to_owned(), e.action.clone()))
                    .or_default() += 1;
            }
            tx.commit().await?;
            for ((actor, action), n) in counts {
                println!("{actor:<38} {action:<16} {n}");
            }
            Ok(())
        }
        ReportCommand::Audit { slug, anchor } => {
            let anchor = anchor
                .as_deref()
                .map(str::parse::<tenancy_core::audit::chain::Anchor>)
                .transpose()?;
            let t = find(&data, &slug).await?;
            let ctx = tenancy_core::TenantContext::new((*t).clone());
            let mut tx = data.begin(&ctx).await?;
            let anchors: Vec<_> = anchor.into_iter().collect();
            let report = data
                .audit()
                .verify_archive(&mut tx, &data.audit_archive(), &anchors)
                .await?;
            tx.commit().await?;
            let r = &report.chain;
            println!(
                "{slug}: {} archived events in {} segments{} + {} live events, {}",
                report.archived_rows,
                report.segments,
                if report.floor > 0 {
                    format!(" (retained from #{})", report.floor + 1)
                } else {
                    String::new()
                },
                report.live_rows,
                if r.is_intact() {
                    "chain intact"
                } else {
                    "CHAIN BROKEN"
                }
            );
            for b in &r.breaks {
                println!("  {b:?}");
            }
            if let Some(head) = r.anchor() {
                println!("  head {head}  (keep it elsewhere; check later with --anchor {head})");
            }
            if r.is_intact() {
                Ok(())
            } else {
                Err("the audit chain is broken".into())
            }
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

async fn seed_many(at: &At, tenants: usize, customers: usize) -> Result<(), Error> {
    let data = at.open().await?;
    let bar = bar(tenants as u64, "seeding");
    for i in 0..tenants {
        let slug = format!("synthetic-{}", &TenantId::new_v4().to_string()[..8]);
        seed::synthetic(&data, &slug, &format!("Synthetic Agency {i}"), customers).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("created {tenants} tenants with {customers} customers each");
    Ok(())
}

async fn tenant(at: &At, command: TenantCommand) -> Result<(), Error> {
    let data = at.open().await?;
    let by_slug = |slug: &str| {
        let data = data.clone();
        let slug = slug.to_owned();
        async move {
            data.tenant_store()
                .by_slug(&slug.parse()?)
                .await?
                .ok_or_else(|| Error::from(format!("no tenant {slug:?}")))
        }
    };
    match command {
        TenantCommand::List => {
            for t in data.tenant_store().list().await? {
                println!(
                    "{:<24} {:<36} {:<20} {:<12} {:?}",
                    t.slug.as_str(),
                    t.id,
                    t.kind.as_str(),
                    t.plan.as_ref().map_or("-", PlanId::as_str),
                    t.status
                );
            }
            Ok(())
        }
        TenantCommand::Create {
            slug,
            name,
            kind,
            plan,
            admin_email,
        } => {
            let plans = app::plans(None)?;
            plans.plan(&PlanId::new(plan.clone()))?;
            let password = format!("Init-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let t = data
                .create_tenant(
                    Tenant::new(TenantId::new_v4(), slug.parse()?, name)
                        .with_kind(TenantKind::new(kind))
                        .with_plan(PlanId::new(plan)),
                )
                .await?;
            let user = seed::ensure_user(&data, &admin_email, &admin_email, &password).await?;
            data.memberships()
                .upsert(&tenancy_core::Membership::new(
                    tenancy_core::UserId::new(user),
                    t.id,
                    tenancy_core::Role::Admin,
                ))
                .await?;
            println!("created tenant {} ({})", t.slug.as_str(), t.id);
            println!("admin {admin_email} with initial password {password} (change it)");
            Ok(())
        }
        TenantCommand::Identity {
            slug,
            issuer,
            audiences,
            algorithms,
            clear,
        } => {
            let t = by_slug(&slug).await?;
            let value = match issuer.filter(|_| !clear) {
                None => serde_json::Value::Null,
                Some(issuer) => {
                    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
                    let mut one = IssuerSettings::new(issuer, &audiences);
                    if !algorithms.is_empty() {
                        let algs: Vec<&str> = algorithms.iter().map(String::as_str).collect();
                        one = one.with_algorithms(&algs);
                    }
                    let settings = IdentitySettings::new(vec![one]);
                    settings.validate(at.allow_http_loopback)?;
                    // One issuer, one tenant.
                    let directory = tenancy_core::oidc::IssuerDirectory::new();
                    app::load_issuers(&data, &directory).await?;
                    directory.set(t.id, Some(&settings))?;
                    serde_json::to_value(&settings)?
                }
            };
            let removed = value.is_null();
            let patch = serde_json::json!({ tenancy_core::oidc::SETTING: value });
            data.update_tenant(
                t.id,
                &tenancy_core::store::TenantUpdate::new().settings_patch(patch),
            )
            .await?;
            println!(
                "{slug}: identity provider {}",
                if removed { "removed" } else { "set" }
            );
            Ok(())
        }
        TenantCommand::Network { slug, allow, clear } => {
            let t = by_slug(&slug).await?;
            let value = if clear {
                serde_json::Value::Null
            } else {
                let value = serde_json::json!({ "allow": allow });
                tenancy_core::client::NetworkPolicy::from_setting(&value)?;
                value
            };
            let patch = serde_json::json!({ tenancy_core::client::NETWORK_SETTING: value });
            data.update_tenant(
                t.id,
                &tenancy_core::store::TenantUpdate::new().settings_patch(patch),
            )
            .await?;
            if clear {
                println!("{slug}: requests accepted from every address");
            } else {
                println!("{slug}: requests accepted only from {}", allow.join(", "));
            }
            Ok(())
        }
        TenantCommand::Maintenance {
            slug,
            minutes,
            message,
            off,
        } => {
            use tenancy_core::maintenance::{MAINTENANCE_SETTING, Maintenance};
            let t = by_slug(&slug).await?;
            let value = if off {
                serde_json::Value::Null
            } else {
                let mut window = match minutes {
                    Some(m) if (1..=10_080).contains(&m) => {
                        Maintenance::until(chrono::Utc::now() + chrono::Duration::minutes(m))
                    }
                    Some(_) => return Err("--minutes must be between 1 and 10080 (a week)".into()),
                    None => Maintenance::open_ended(),
                };
                if let Some(m) = message {
                    window = window.with_message(m);
                }
                serde_json::to_value(window)?
            };
            let patch = serde_json::json!({ MAINTENANCE_SETTING: value });
            data.update_tenant(
                t.id,
                &tenancy_core::store::TenantUpdate::new().settings_patch(patch),
            )
            .await?;
            if off {
                println!("{slug}: maintenance ended");
            } else {
                println!("{slug}: in maintenance (requests get 503 with Retry-After)");
            }
            Ok(())
        }
        TenantCommand::Impersonate {
            slug,
            email,
            operator,
            reason,
            minutes,
        } => {
            let t = by_slug(&slug).await?;
            let sessions = insurance_agent::auth::Sessions::new(app::session_key(&at.data_dir)?)
                .with_epochs(data.session_epochs());
            let (token, ttl) =
                ops::impersonate(&data, &sessions, &t, &email, &operator, &reason, minutes).await?;
            eprintln!("acting as {email} in {slug} for {} min (audited)", ttl / 60);
            println!("{token}");
            Ok(())
        }
        TenantCommand::Member { slug, user, role } => {
            let t = by_slug(&slug).await?;
            let (role, grants) = insurance_agent::api::session::role_from_name(&role)
                .ok_or("role must be tenant_admin, manager, agent, viewer or finance")?;
            let mut m =
                tenancy_core::Membership::new(tenancy_core::UserId::new(user.clone()), t.id, role);
            m.grants = grants;
            tenancy_core::MembershipWriter::put(&data.memberships(), &m).await?;
            println!(
                "{user} is {} in {slug}",
                insurance_agent::api::session::role_name(m.role, &m.grants)
            );
            Ok(())
        }
        TenantCommand::Suspend { slug, reason } => {
            let t = by_slug(&slug).await?;
            data.transition(&t, Transition::Suspend { reason }, "cli")
                .await?;
            println!("suspended {slug}");
            Ok(())
        }
        TenantCommand::Plan { slug, plan, plans } => {
            let t = by_slug(&slug).await?;
            let catalog = app::plans(plans.as_deref())?;
            let next = ops::set_plan(&data, &catalog, &t, &plan, "operator").await?;
            println!(
                "{slug} is on plan {}",
                next.plan.as_ref().map_or("(none)", |p| p.as_str())
            );
            Ok(())
        }
        TenantCommand::Offboard { slug, grace_days } => {
            let t = by_slug(&slug).await?;
            let t = ops::offboard(&data, &t, grace_days).await?;
            println!("{slug} is offboarding: {:?}", t.status);
            Ok(())
        }
        TenantCommand::Export { slug, out } => {
            let t = by_slug(&slug).await?;
            let counts = ops::export_to(&data, &t, &out, "cli").await?;
            for (table, n) in counts {
                println!("{:<12} {n} rows", table);
            }
            println!(
                "written to {} (contains decrypted personal data: keep it private)",
                out.display()
            );
            Ok(())
        }
        TenantCommand::Purge {
            slug,
            without_export,
            operator,
        } => {
            let t = by_slug(&slug).await?;
            let (_, cert) = ops::purge(
                &data,
                &t,
                ops::PurgeOptions {
                    require_export: !without_export,
                    operator: &operator,
                },
            )
            .await?;
            let removed = match data.backend_name() {
                "postgres" => "its rows deleted",
                _ => "its data file removed",
            };
            let r = &cert.record;
            println!(
                "{slug} purged: keys destroyed (versions {:?}), {} subject keys, {} audit events, {removed}",
                r.data_key_versions, r.subject_keys, r.audit_events
            );
            for (table, n) in &r.rows {
                println!("  {table:<12} {n} rows");
            }
            println!(
                "destruction certificate: {} (signed by {})",
                data.dir()
                    .join("certificates")
                    .join(format!("{}.json", t.id))
                    .display(),
                cert.public_key
            );
            Ok(())
        }
        TenantCommand::Backup { slug, out } => {
            let t = by_slug(&slug).await?;
            let key = backup_key(&data)?;
            let bar = ProgressBar::new_spinner();
            bar.set_message(format!("backing up {slug}"));
            let report = insurance_agent::backup::backup_to(&data, &t, &out, &key, &|n| {
                bar.set_position(n);
            })
            .await?;
            bar.finish_and_clear();
            for (table, sum) in &report.manifest.tables {
                println!("  {table:<22} {} rows", sum.rows);
            }
            println!(
                "written to {} (sealed with backup.key; it holds personal data: keep it private)",
                out.display()
            );
            Ok(())
        }
        TenantCommand::Restore {
            file,
            replace,
            resume,
            clone_as,
            name,
        } => {
            let key = backup_key(&data)?;
            let header = insurance_agent::backup::peek(&file)?;
            println!(
                "restoring {} ({}) from a backup of {}{}",
                header.tenant_slug,
                header.tenant_id,
                header.created_at,
                clone_as
                    .as_ref()
                    .map(|s| format!(" as a new tenant {s}"))
                    .unwrap_or_default()
            );
            let bar = ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rows ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style);
            }
            let tick = |n: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(n);
            };
            let (t, manifest) = match clone_as {
                Some(slug) => {
                    let clone = insurance_agent::backup::CloneAs {
                        slug: slug.parse()?,
                        name,
                    };
                    insurance_agent::backup::clone_from(&data, &file, &key, clone, &tick).await?
                }
                None => {
                    insurance_agent::backup::restore_from(
                        &data,
                        &file,
                        &key,
                        insurance_agent::backup::RestoreOptions { replace, resume },
                        &tick,
                    )
                    .await?
                }
            };
            bar.finish_and_clear();
            let total: u64 = manifest.tables.values().map(|s| s.rows).sum();
            println!(
                "restored {} ({}): {total} rows of the backup, verified",
                t.slug, t.id
            );
            Ok(())
        }
        TenantCommand::VerifyCertificate { file, public_key } => {
            let cert: tenancy_core::destruction::DestructionCertificate =
                serde_json::from_slice(&std::fs::read(&file)?)
                    .map_err(|e| format!("{}: not a certificate: {e}", file.display()))?;
            let verifier = match public_key {
                Some(k) => tenancy_core::destruction::CertificateVerifier::from_base64(&k)?,
                None => ops::certificate_signer(&data)?.verifier(),
            };
            let r = verifier.verify(&cert)?;
            println!(
                "valid: tenant {} ({}) purged at {} by {}",
                r.tenant_slug, r.tenant_id, r.purged_at, r.purged_by
            );
            Ok(())
        }
        TenantCommand::Resume { slug } => {
            let t = by_slug(&slug).await?;
            data.transition(&t, Transition::Resume, "cli").await?;
            println!("resumed {slug}");
            Ok(())
        }
    }
}
