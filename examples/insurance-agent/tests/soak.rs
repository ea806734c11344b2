//! The soak: the reference application, run as its own binary on PostgreSQL
//! through pgbouncer (transaction pooling), as the application role under
//! the strict isolation audit, driven over HTTP by 64 clients across 8
//! tenants while its dependencies fail under it — one fault per phase.
//!
//! The harness keeps its own oracle: every acknowledged write (a customer
//! created, a score changed) and every response body. At the end it reads
//! the database as the superuser and counts
//! - responses that carried another tenant's data (each tenant's records
//!   carry a marker no other tenant's do; every body is scanned for the
//!   others' markers, and every `X-Tenant-ID` must be the caller's tenant),
//! - acknowledged writes missing (a created customer absent or moved to
//!   another tenant, a score other than the last acknowledged one),
//! - half-applied writes (a customer without its audit event, or an audit
//!   event without its customer: the two are written in one transaction),
//!
//! all of which must be 0, and checks each tenant's audit chain. Per phase it
//! reports requests, responses by status, and how long after the fault the
//! last failure was seen (recovery). A 500, or a 503 without `Retry-After`,
//! fails the run; so does a refused connection outside the restart phase.
//!
//! Short by default (phases of 7 s, under two minutes in all, in
//! `scripts/test`); `SOAK_PHASE_SECS` makes it longer (`scripts/soak`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a test: failures panic, figures go to the log

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use insurance_agent::data::{Data, PgUrls};
use insurance_agent::seed::{self, DEMO_PASSWORD, DemoTenant};
use serde_json::json;
use tenancy_testkit::TestDb;
use tenancy_testkit::http::{RawResponse, request, send};

const TENANTS: usize = 8;
const CLIENTS: usize = 64;

/// Phase names, in order; each runs the full load, with its fault injected
/// (none in the first three: `warm-up` fills caches, first KMS keys and the
/// like, so `baseline` measures the steady state)
/// a third of the way in (a pause lasts half the phase, 30 s at most). In `noisy-neighbour` one more tenant, on a plan of
/// 10 API calls a second, floods at 100 a second for the whole phase.
const PHASES: [&str; 10] = [
    "warm-up",
    "baseline",
    "noisy-neighbour",
    "postgres-restart",
    "pgbouncer-restart",
    "kill-backends",
    "kill-listeners",
    "redis-pause",
    "kms-pause",
    "sigterm-restart",
];

fn phase_length() -> Duration {
    let secs = std::env::var("SOAK_PHASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    Duration::from_secs(secs)
}

/// The soak database's URLs: the test database's, with `tenancy_soak`.
struct Urls {
    admin: String,
    owner: String,
    app: String,
    pool: String,
    redis: String,
    /// The KMS endpoint (moto), and the per-tenant alias prefix of this run.
    kms: String,
    kms_spec: String,
    fault: String,
}

impl Urls {
    fn kms_settings(&self) -> insurance_agent::data::KmsSettings {
        insurance_agent::data::KmsSettings {
            spec: self.kms_spec.clone(),
            region: "us-east-1".into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
            endpoint: Some(self.kms.clone()),
        }
    }
}

fn urls() -> Urls {
    let env = TestDb::from_env().expect("run through scripts/test (scripts/with-db)");
    let soak = |url: &str| {
        let (base, _) = url.rsplit_once('/').unwrap();
        format!("{base}/tenancy_soak")
    };
    Urls {
        admin: soak(&env.admin_url),
        owner: soak(&env.owner_url),
        app: soak(&env.app_url),
        pool: std::env::var("TENANCY_TEST_SOAK_POOL_URL").expect("scripts/with-db exports it"),
        redis: std::env::var("TENANCY_TEST_REDIS_URL").expect("scripts/with-db exports it"),
        kms: std::env::var("TENANCY_TEST_KMS_URL").expect("scripts/with-db exports it"),
        kms_spec: format!(
            "per-tenant:soak-{}",
            &tenancy_core::TenantId::new_v4().to_string()[..8]
        ),
        fault: std::env::var("TENANCY_TEST_FAULT").expect("scripts/with-db exports it"),
    }
}

fn fault(urls: &Urls, args: &[&str]) {
    let out = Command::new(&urls.fault).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "fault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the application binary, as an operator runs it.
fn start_server(dir: &std::path::Path, urls: &Urls, addr: SocketAddr) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let plans = dir.join("plans.toml");
    std::fs::write(
        &plans,
        format!("{}\n{SOAK_PLANS}", insurance_agent::app::PLANS),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_insurance-agent"))
        .arg("serve")
        .arg("--plans")
        .arg(&plans)
        .env("INSURANCE_DATA_DIR", dir)
        .env("INSURANCE_BIND", addr.to_string())
        .env("DATABASE_URL", &urls.pool)
        .env("DATABASE_OWNER_URL", &urls.owner)
        .env("DATABASE_LISTEN_URL", &urls.app)
        .env("INSURANCE_REDIS_URL", &urls.redis)
        .env("INSURANCE_KMS", &urls.kms_spec)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", &urls.kms)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

async fn wait_healthy(addr: SocketAddr, dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(r) = send(addr, &request("GET", "/health", None, None)).await
            && r.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("the server did not become healthy:\n{log}");
}

/// A tenant of the soak: who signs in, and the marker its records carry.
struct SoakTenant {
    id: String,
    admin: String,
    agent: String,
}

fn marker(tenant: usize) -> String {
    format!("Mark{tenant}x")
}

/// One acknowledged customer and what it must look like at the end.
#[derive(Debug, Clone)]
struct Acked {
    tenant: usize,
    last_name: String,
    pan: String,
    /// The last acknowledged score, and scores of later unacknowledged
    /// changes (each may or may not have been applied).
    score: i64,
    maybe: Vec<i64>,
}

#[derive(Default)]
struct Phase {
    /// The flooding tenant's responses by status (noisy-neighbour only).
    flood: BTreeMap<String, u64>,
    requests: u64,
    by_status: BTreeMap<String, u64>,
    leaks: Vec<String>,
    violations: Vec<String>,
    last_failure: Option<Instant>,
    latencies: Vec<Duration>,
}

#[derive(Default)]
struct Oracle {
    acked: HashMap<String, Acked>,
    /// Creates that got no acknowledgement (an error, a timeout, a 503),
    /// per tenant: each may or may not have been committed.
    unacked_creates: [u64; TENANTS],
    /// Agents created (201) and creations unanswered, per tenant.
    agents_acked: [i64; TENANTS],
    agents_unanswered: [i64; TENANTS],
    /// Payments whose completion was acknowledged, by tenant.
    paid: Vec<(usize, String)>,
    phases: Vec<Phase>,
}

/// A small deterministic generator (no dependency needed for a workload mix).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A PAN unique to (client, n): five letters, four digits, one letter.
fn pan(client: usize, n: u64) -> String {
    let mut prefix = (client as u64) * 1_000 + n / 10_000;
    let mut letters = String::new();
    for _ in 0..5 {
        letters.push((b'A' + (prefix % 26) as u8) as char);
        prefix /= 26;
    }
    format!("{letters}{:04}Q", n % 10_000)
}

struct Client {
    index: usize,
    tenant: usize,
    token: String,
    agent: bool,
    rng: Rng,
    created: u64,
    mine: Vec<String>,
}

/// What every client shares: the oracle and the tenants.
struct Shared {
    oracle: Mutex<Oracle>,
    tenants: Vec<SoakTenant>,
    /// The flooding tenant's admin token.
    noisy: String,
}

/// Where a client's step runs: which phase, and whether a refused
/// connection is expected (the server is being restarted).
#[derive(Clone, Copy)]
struct Step<'a> {
    shared: &'a Shared,
    phase: usize,
    io_allowed: bool,
}

/// What one response means for the oracle (the body is scanned for other
/// tenants' markers whatever its status).
fn check_response(
    step: Step<'_>,
    client: &Client,
    what: &str,
    started: Instant,
    result: &std::io::Result<RawResponse>,
) {
    let (tenants, io_allowed) = (&step.shared.tenants, step.io_allowed);
    let mut o = step.shared.oracle.lock().unwrap();
    let p = &mut o.phases[step.phase];
    p.requests += 1;
    p.latencies.push(started.elapsed());
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            *p.by_status.entry("io".into()).or_default() += 1;
            p.last_failure = Some(Instant::now());
            if !io_allowed {
                p.violations
                    .push(format!("{what}: connection failed outside a restart: {e}"));
            }
            return;
        }
    };
    *p.by_status.entry(r.status.to_string()).or_default() += 1;
    // A failure is the service's (5xx); 4xx are answers (a 409 when two
    // admins race for one payment, a 429 from the plan's limit).
    if r.status >= 500 {
        p.last_failure = Some(Instant::now());
    }
    let text = r.text();
    for other in (0..TENANTS).filter(|t| *t != client.tenant) {
        if text.contains(&marker(other)) {
            p.leaks.push(format!(
                "{what}: tenant {} saw tenant {other}'s data",
                client.tenant
            ));
        }
    }
    if r.status == 200
        && let Some(t) = r.header("x-tenant-id")
        && t != tenants[client.tenant].id
    {
        p.leaks.push(format!(
            "{what}: answered for tenant {t}, asked as {}",
            client.tenant
        ));
    }
    if r.status >= 500 && r.status != 503 {
        p.violations.push(format!("{what}: {} {}", r.status, text));
    }
    if r.status == 503 && r.header("retry-after").is_none() {
        p.violations
            .push(format!("{what}: 503 without Retry-After: {text}"));
    }
}

async fn client_step(c: &mut Client, addr: SocketAddr, step: Step<'_>) {
    let oracle = &step.shared.oracle;
    let phase = step.phase;
    let roll = c.rng.below(100);
    let started = Instant::now();
    let token = c.token.clone();
    if !c.agent {
        if roll < 15 {
            return complete_a_payment(c, addr, step).await;
        }
        if roll >= 95 {
            let n = c.created;
            c.created += 1;
            let body = json!({"agent_code": format!("S{}n{n}", c.index), "name": "Soak",
                              "licence_number": "L", "licence_expiry": "2030-01-01"});
            let r = send(addr, &request("POST", "/agents", Some(&token), Some(&body))).await;
            check_response(step, c, "add agent", started, &r);
            let mut o = step.shared.oracle.lock().unwrap();
            match &r {
                Ok(r) if r.status == 201 => o.agents_acked[c.tenant] += 1,
                Ok(r) if r.status < 500 => {}
                _ => o.agents_unanswered[c.tenant] += 1,
            }
            return;
        }
        let path = match roll {
            15..45 => "/customers",
            45..70 => "/dashboard",
            70..90 => "/me",
            _ => "/audit?limit=5",
        };
        let r = send(addr, &request("GET", path, Some(&token), None)).await;
        check_response(step, c, path, started, &r);
        return;
    }
    let own =
        (!c.mine.is_empty()).then(|| c.mine[c.rng.below(c.mine.len() as u64) as usize].clone());
    match (roll, own) {
        (0..30, _) | (_, None) => {
            let n = c.created;
            c.created += 1;
            let last_name = format!("C{}n{n}", c.index);
            let pan = pan(c.index, n);
            let body = json!({"first_name": marker(c.tenant), "last_name": last_name,
                              "customer_type": "individual", "sensitive": {"pan": pan}});
            let r = send(
                addr,
                &request("POST", "/customers", Some(&token), Some(&body)),
            )
            .await;
            check_response(step, c, "create", started, &r);
            if let Ok(r) = &r
                && r.status == 201
            {
                let v = r.json();
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                let score = v["engagement_score"].as_i64().unwrap_or(-1);
                c.mine.push(id.clone());
                oracle.lock().unwrap().acked.insert(
                    id,
                    Acked {
                        tenant: c.tenant,
                        last_name,
                        pan,
                        score,
                        maybe: Vec::new(),
                    },
                );
            } else if !matches!(&r, Ok(r) if r.status < 500 && r.status != 408) {
                // No answer, or a 5xx: the create may have been committed.
                oracle.lock().unwrap().unacked_creates[c.tenant] += 1;
            }
        }
        (30..50, Some(id)) => {
            let score = c.rng.below(101) as i64;
            let body = json!({ "engagement_score": score });
            let path = format!("/customers/{id}");
            let r = send(addr, &request("PATCH", &path, Some(&token), Some(&body))).await;
            check_response(step, c, "update", started, &r);
            let mut o = oracle.lock().unwrap();
            let a = o.acked.get_mut(&id).unwrap();
            match &r {
                Ok(r) if r.status == 200 => {
                    a.score = score;
                    a.maybe.clear();
                }
                Ok(r) if r.status < 500 && r.status != 429 => {
                    // A refusal changes nothing; nothing to remember.
                }
                _ => a.maybe.push(score),
            }
        }
        (50..65, Some(id)) => {
            let path = format!("/customers/{id}");
            let r = send(addr, &request("GET", &path, Some(&token), None)).await;
            check_response(step, c, "read", started, &r);
            if let Ok(r) = &r
                && r.status == 404
            {
                oracle.lock().unwrap().phases[phase]
                    .violations
                    .push(format!("read: acknowledged customer {id} is 404"));
            }
        }
        (65..80, Some(id)) => {
            let pan = oracle.lock().unwrap().acked[&id].pan.clone();
            let path = format!("/customers?pan={pan}");
            let r = send(addr, &request("GET", &path, Some(&token), None)).await;
            check_response(step, c, "search", started, &r);
            if let Ok(r) = &r
                && r.status == 200
            {
                let found = r.json()["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["id"] == id.as_str()));
                if !found {
                    oracle.lock().unwrap().phases[phase]
                        .violations
                        .push(format!(
                            "search: acknowledged customer {id} not found by PAN"
                        ));
                }
            }
        }
        (80..90, Some(id)) => {
            // Quote a policy for one of its customers and issue it: the
            // first premium falls due (an admin completes it).
            let n = c.created;
            c.created += 1;
            let body = json!({"policy_number": format!("P{}n{n}", c.index), "product": "Term",
                "customer_id": id, "sum_assured_minor": 100_000_000, "premium_minor": 120_000,
                "premium_frequency": "yearly", "term_years": 10});
            let r = send(
                addr,
                &request("POST", "/policies", Some(&token), Some(&body)),
            )
            .await;
            check_response(step, c, "quote", started, &r);
            if let Ok(r) = &r
                && r.status == 201
            {
                let policy = r.json()["id"].as_str().unwrap_or_default().to_owned();
                let path = format!("/policies/{policy}/issue");
                let started = Instant::now();
                let r = send(
                    addr,
                    &request("POST", &path, Some(&token), Some(&json!({}))),
                )
                .await;
                check_response(step, c, "issue", started, &r);
            }
        }
        _ => {
            let r = send(addr, &request("GET", "/customers", Some(&token), None)).await;
            check_response(step, c, "list", started, &r);
        }
    }
}

/// An admin completes one pending premium of its tenant (two admins may
/// race for the same one: the loser gets 409).
async fn complete_a_payment(c: &mut Client, addr: SocketAddr, step: Step<'_>) {
    let started = Instant::now();
    let token = c.token.clone();
    let r = send(
        addr,
        &request("GET", "/payments?status=pending", Some(&token), None),
    )
    .await;
    check_response(step, c, "pending payments", started, &r);
    let Ok(r) = r else { return };
    let items = r.json()["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return;
    }
    let pick = &items[c.rng.below(items.len() as u64) as usize];
    let Some(id) = pick["id"].as_str().map(str::to_owned) else {
        return;
    };
    let body = json!({"method": "upi", "transaction_ref": format!("UPI-{id}")});
    let path = format!("/payments/{id}/complete");
    let started = Instant::now();
    let r = send(addr, &request("POST", &path, Some(&token), Some(&body))).await;
    check_response(step, c, "complete payment", started, &r);
    if let Ok(r) = &r
        && r.status == 200
    {
        step.shared.oracle.lock().unwrap().paid.push((c.tenant, id));
    }
}

async fn login(addr: SocketAddr, email: &str, tenant: &str, dir: &std::path::Path) -> String {
    let body = json!({"email": email, "password": DEMO_PASSWORD, "tenant": tenant});
    let r = send(addr, &request("POST", "/auth/login", None, Some(&body)))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.text(),
        std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
    );
    r.json()["token"].as_str().unwrap().to_owned()
}

/// The soak's plans: the tenants' (enterprise, but 12 agents: the admins'
/// agent creations reach the limit under load), and the noisy neighbour's
/// (10 API calls a second).
const SOAK_PLANS: &str = r#"
[[plans]]
id = "soak-standard"
name = "Soak: standard"
[plans.limits]
agents = { stock = 12 }
customers = { stock = 10000000 }
policies = { stock = 10000000 }
api_calls = { rate = { per_hour = 1000000 } }
api_calls_per_user = { rate = { per_hour = 1000000 } }
api_calls_per_client = { rate = { per_hour = 1000000 } }
[plans.features]
advanced_analytics = true
bulk_export = true
audit_log_access = true
custom_branding = true

[[plans]]
id = "soak-noisy"
name = "Soak: noisy neighbour"
[plans.limits]
customers = { stock = 100000 }
api_calls = { rate = { per_second = 10 } }
api_calls_per_user = { rate = { per_second = 10 } }
api_calls_per_client = { rate = { per_second = 10 } }
[plans.features]
audit_log_access = true
"#;

/// The flood's pace: ten times the noisy plan's rate.
const FLOOD_PER_SECOND: u64 = 100;

/// The agents limit of `soak-standard`; each tenant starts with one (the
/// agent user's).
const AGENTS_LIMIT: i64 = 12;

/// Creates the soak's tenants (each an admin and an agent; the last one,
/// the noisy neighbour, an admin only) through the library, before the
/// server starts.
async fn prepare(dir: &std::path::Path, urls: &Urls) -> Vec<[String; 4]> {
    let data = Data::open_postgres_with_keys(
        dir,
        &PgUrls {
            app: urls.app.clone(),
            owner: urls.owner.clone(),
            listen: None,
        },
        urls.kms_settings().provider().unwrap(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    // Slugs unique to this run (a developer may rerun on the same database).
    let run = &tenancy_core::TenantId::new_v4().to_string()[..8];
    for t in 0..=TENANTS {
        let slug = format!("soak-{run}-{t}");
        let plan = if t == TENANTS {
            "soak-noisy"
        } else {
            "soak-standard"
        };
        let (admin, agent) = (format!("admin@{slug}.test"), format!("agent@{slug}.test"));
        let users = [
            (admin.as_str(), "Soak Admin", "tenant_admin"),
            (agent.as_str(), "Soak Agent", "agent"),
        ];
        let spec = DemoTenant {
            slug: &slug,
            name: &slug,
            kind: "independent_agent",
            plan,
            parent: None,
            users: &users,
        };
        let tenant = seed::tenant(&data, &spec, None).await.unwrap();
        out.push([
            tenant.id.to_string(),
            slug.clone(),
            admin.clone(),
            agent.clone(),
        ]);
    }
    out
}

/// Runs one phase: every client's loop for the phase's length, the fault a
/// third of the way in. Returns the clients and when the fault was over.
async fn run_phase(
    phase: usize,
    server: &mut Child,
    stack: (&std::path::Path, &Urls, SocketAddr),
    clients: Vec<Client>,
    shared: Arc<Shared>,
) -> (Vec<Client>, Option<Instant>) {
    let (dir, urls, addr) = stack;
    let length = phase_length();
    let deadline = Instant::now() + length;
    let restarting = PHASES[phase] == "sigterm-restart";
    let mut tasks = Vec::new();
    for mut c in clients {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let step = Step {
                shared: &shared,
                phase,
                io_allowed: restarting,
            };
            while Instant::now() < deadline {
                client_step(&mut c, addr, step).await;
            }
            c
        }));
    }
    let flood = (PHASES[phase] == "noisy-neighbour").then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / FLOOD_PER_SECOND as u32);
            let mut sent = Vec::new();
            while Instant::now() < deadline {
                tick.tick().await;
                let (shared, token) = (shared.clone(), shared.noisy.clone());
                sent.push(tokio::spawn(async move {
                    let r = send(addr, &request("GET", "/me", Some(&token), None)).await;
                    let status = r.map_or_else(|_| "io".to_owned(), |r| r.status.to_string());
                    *shared.oracle.lock().unwrap().phases[phase]
                        .flood
                        .entry(status)
                        .or_default() += 1;
                }));
            }
            for s in sent {
                s.await.unwrap();
            }
        })
    });
    tokio::time::sleep(length / 3).await;
    match PHASES[phase] {
        "warm-up" | "baseline" | "noisy-neighbour" => {}
        "postgres-restart" => fault(urls, &["postgres", "restart"]),
        "pgbouncer-restart" => fault(urls, &["pgbouncer", "restart"]),
        "kill-backends" => fault(urls, &["postgres", "kill-backends"]),
        "kill-listeners" => fault(urls, &["postgres", "kill-listeners"]),
        "redis-pause" | "kms-pause" => {
            let service = PHASES[phase].trim_end_matches("-pause");
            fault(urls, &[service, "pause"]);
            // Half the phase, 30 s at most (the full run's outage).
            tokio::time::sleep((length / 2).min(Duration::from_secs(30))).await;
            fault(urls, &[service, "resume"]);
        }
        "sigterm-restart" => {
            let status = Command::new("kill")
                .args(["-TERM", &server.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            // The drain waits for requests in flight; the process then exits 0.
            let deadline = Instant::now() + Duration::from_secs(40);
            let exited = loop {
                if let Some(status) = server.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the server did not stop after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(exited.success(), "SIGTERM: the server exited with {exited}");
            *server = start_server(dir, urls, addr);
            wait_healthy(addr, dir).await;
        }
        other => unreachable!("{other}"),
    }
    // Recovery counts from here: the fault is over (restarted, resumed).
    let over = Instant::now();
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.unwrap());
    }
    if let Some(flood) = flood {
        flood.await.unwrap();
    }
    let faulted = !matches!(PHASES[phase], "warm-up" | "baseline" | "noisy-neighbour");
    (back, faulted.then_some(over))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_under_faults() {
    let urls = urls();
    let dir = tempfile::tempdir().unwrap();
    let made = prepare(dir.path(), &urls).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = start_server(dir.path(), &urls, addr);
    wait_healthy(addr, dir.path()).await;

    let mut tenants = Vec::new();
    let [_, noisy_slug, noisy_admin, _] = &made[TENANTS];
    let noisy = login(addr, noisy_admin, noisy_slug, dir.path()).await;
    for [id, slug, admin, agent] in &made[..TENANTS] {
        tenants.push(SoakTenant {
            id: id.clone(),
            admin: login(addr, admin, slug, dir.path()).await,
            agent: login(addr, agent, slug, dir.path()).await,
        });
    }
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let tenant = i % TENANTS;
            let agent = (i / TENANTS) % 2 == 1;
            Client {
                index: i,
                tenant,
                token: if agent {
                    tenants[tenant].agent.clone()
                } else {
                    tenants[tenant].admin.clone()
                },
                agent,
                rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)),
                created: 0,
                mine: Vec::new(),
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        oracle: Mutex::new(Oracle::default()),
        tenants,
        noisy,
    });
    let mut recovery = Vec::new();
    for phase in 0..PHASES.len() {
        shared.oracle.lock().unwrap().phases.push(Phase::default());
        let (back, injected) = run_phase(
            phase,
            &mut server,
            (dir.path(), &urls, addr),
            clients,
            shared.clone(),
        )
        .await;
        clients = back;
        let last_failure = shared.oracle.lock().unwrap().phases[phase].last_failure;
        recovery.push(match (injected, last_failure) {
            (Some(at), Some(last)) if last > at => Some(last - at),
            (Some(_), _) => Some(Duration::ZERO),
            _ => None,
        });
    }

    // The verdict, read as the superuser.
    let tenants = &shared.tenants;
    let admin = sqlx::PgPool::connect(&urls.admin).await.unwrap();
    let acked: Vec<(String, Acked)> = shared
        .oracle
        .lock()
        .unwrap()
        .acked
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut lost = Vec::new();
    for (id, a) in &acked {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant_id::text, last_name, engagement_score::bigint FROM public.customers \
             WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_optional(&admin)
        .await
        .unwrap();
        match row {
            None => lost.push(format!("customer {id} ({}) missing", a.last_name)),
            Some((tenant, last_name, score)) => {
                if tenant != tenants[a.tenant].id || last_name != a.last_name {
                    lost.push(format!(
                        "customer {id} is {tenant}/{last_name}, expected {a:?}"
                    ));
                }
                if score != a.score && !a.maybe.contains(&score) {
                    lost.push(format!("customer {id}: score {score}, acknowledged {a:?}"));
                }
            }
        }
    }
    let half: Vec<(String,)> = sqlx::query_as(
        "SELECT c.id::text FROM public.customers c WHERE c.first_name LIKE 'Mark%' \
           AND c.tenant_id::text = ANY($1) AND NOT EXISTS \
           (SELECT 1 FROM tenancy.audit_log a WHERE a.tenant_id = c.tenant_id \
            AND a.resource_type = 'customers' AND a.action = 'create' AND a.resource_id = c.id::text) \
         UNION ALL \
         SELECT a.resource_id FROM tenancy.audit_log a WHERE a.resource_type = 'customers' \
           AND a.tenant_id::text = ANY($1) \
           AND a.action = 'create' AND a.actor_kind = 'user' AND NOT EXISTS \
           (SELECT 1 FROM public.customers c WHERE c.tenant_id = a.tenant_id AND c.id::text = a.resource_id)",
    )
    .bind(tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>())
    .fetch_all(&admin)
    .await
    .unwrap();
    // Every acknowledged payment is completed and carries its commission;
    // no completed payment of the run lacks one (one transaction).
    let paid = shared.oracle.lock().unwrap().paid.clone();
    for (t, id) in &paid {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT p.tenant_id::text, p.status, \
               (SELECT count(*) FROM public.commissions c WHERE c.tenant_id = p.tenant_id \
                AND c.payment_id = p.id) FROM public.payments p WHERE p.id = $1::uuid",
        )
        .bind(id)
        .fetch_optional(&admin)
        .await
        .unwrap();
        match row {
            Some((tenant, status, commissions))
                if tenant == tenants[*t].id && status == "completed" && commissions > 0 => {}
            other => lost.push(format!("payment {id} acknowledged as completed: {other:?}")),
        }
    }
    let half_paid: Vec<(String,)> = sqlx::query_as(
        "SELECT p.id::text FROM public.payments p WHERE p.status = 'completed' \
           AND p.tenant_id::text = ANY($1) AND NOT EXISTS (SELECT 1 FROM public.commissions c \
           WHERE c.tenant_id = p.tenant_id AND c.payment_id = p.id)",
    )
    .bind(tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>())
    .fetch_all(&admin)
    .await
    .unwrap();
    let half: Vec<(String,)> = half.into_iter().chain(half_paid).collect();
    // Stock: each tenant's customers as stored lie between what was
    // acknowledged and that plus the unanswered creates, and the count the
    // application enforces the plan with (`/usage`) is the stored one.
    let mut stock = Vec::new();
    let unacked = shared.oracle.lock().unwrap().unacked_creates;
    for (i, t) in tenants.iter().enumerate() {
        let (marked, all): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE first_name LIKE 'Mark%'), count(*) \
             FROM public.customers WHERE tenant_id = $1::uuid",
        )
        .bind(&t.id)
        .fetch_one(&admin)
        .await
        .unwrap();
        let acked_here = acked.iter().filter(|(_, a)| a.tenant == i).count() as i64;
        if marked < acked_here || marked > acked_here + unacked[i] as i64 {
            stock.push(format!(
                "tenant {i}: {marked} stored, {acked_here} acknowledged, {} unanswered",
                unacked[i]
            ));
        }
        let agents: i64 =
            sqlx::query_scalar("SELECT count(*) FROM public.agents WHERE tenant_id = $1::uuid")
                .bind(&t.id)
                .fetch_one(&admin)
                .await
                .unwrap();
        let (a_acked, a_open) = {
            let o = shared.oracle.lock().unwrap();
            (o.agents_acked[i], o.agents_unanswered[i])
        };
        if agents > AGENTS_LIMIT || agents - 1 < a_acked || agents - 1 > a_acked + a_open {
            stock.push(format!(
                "tenant {i}: {agents} agents stored (limit {AGENTS_LIMIT}), {a_acked} created, \
                 {a_open} unanswered"
            ));
        }
        let usage = send(addr, &request("GET", "/usage", Some(&t.admin), None))
            .await
            .unwrap()
            .json();
        let counted = usage["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "customers"))
            .and_then(|r| r["used"].as_i64());
        if counted != Some(all) {
            stock.push(format!(
                "tenant {i}: /usage counts {counted:?} customers, {all} stored"
            ));
        }
    }
    let mut broken_chains = Vec::new();
    for t in tenants.iter() {
        let r = send(addr, &request("GET", "/audit/verify", Some(&t.admin), None))
            .await
            .unwrap();
        if r.status != 200 || r.json()["intact"] != true {
            broken_chains.push(format!("{}: {} {}", t.id, r.status, r.text()));
        }
    }

    let o = shared.oracle.lock().unwrap();
    println!(
        "soak: {CLIENTS} clients, {TENANTS} tenants, phases of {} s, {} acknowledged creates, \
         {} acknowledged payments",
        phase_length().as_secs(),
        o.acked.len(),
        o.paid.len()
    );
    println!("soak: | phase | requests | by status | p50 ms | p99 ms | recovery s |");
    let mut leaks = 0;
    let mut violations = Vec::new();
    let p99 = |p: &Phase| {
        let mut lat = p.latencies.clone();
        lat.sort();
        lat.get(((lat.len() as f64 - 1.0) * 0.99) as usize)
            .copied()
            .unwrap_or_default()
    };
    for (i, p) in o.phases.iter().enumerate() {
        let mut lat = p.latencies.clone();
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 - 1.0) * q) as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "soak: | {} | {} | {:?} | {:.1} | {:.1} | {} |",
            PHASES[i],
            p.requests,
            p.by_status,
            pct(0.5),
            pct(0.99),
            recovery[i].map_or("–".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
        );
        leaks += p.leaks.len();
        violations.extend(p.violations.iter().take(5).cloned());
        for l in p.leaks.iter().take(5) {
            println!("soak: LEAK {l}");
        }
    }
    let at = |name: &str| PHASES.iter().position(|p| *p == name).unwrap();
    let (quiet, noisy) = (&o.phases[at("baseline")], &o.phases[at("noisy-neighbour")]);
    let flooded: u64 = noisy.flood.values().sum();
    let refused = noisy.flood.get("429").copied().unwrap_or(0);
    println!(
        "soak: noisy neighbour: {flooded} flood requests at {FLOOD_PER_SECOND}/s (10x its plan), \
         {refused} refused 429, others {:?}; the other tenants' p99 {:.1} ms without the flood, \
         {:.1} ms with it",
        noisy.flood,
        p99(quiet).as_secs_f64() * 1e3,
        p99(noisy).as_secs_f64() * 1e3
    );
    // The limiter granted what the plan allows over the phase: 10 a second
    // plus a burst of 10, never more; not starved either.
    let granted = noisy.flood.get("200").copied().unwrap_or(0);
    let secs = phase_length().as_secs();
    let rate_ok = granted <= 10 * secs + 10 + 1 && granted + 10 >= 10 * secs;
    println!(
        "soak: noisy neighbour granted {granted} in {secs} s (plan: 10/s, burst 10): \
         the limiter's count {}",
        if rate_ok { "holds" } else { "does NOT hold" }
    );
    // 2x is the requirement; the short run's p99 rests on ~1 500 samples per
    // phase on a shared CI machine, so it gets 3x headroom against noise.
    let allowed = if secs >= 20 { 2 } else { 3 };
    let noisy_ok = refused * 10 >= flooded * 8 && p99(noisy) <= p99(quiet) * allowed && rate_ok;
    // The per-dependency decisions (docs/soak.md): Redis fails closed — its
    // outage is refused, not waved through; the KMS degrades — cached keys
    // carry every request through its outage.
    let refused_in = |name: &str| {
        o.phases[at(name)]
            .by_status
            .get("503")
            .copied()
            .unwrap_or(0)
    };
    let decisions = [
        ("redis fails closed", refused_in("redis-pause") > 0),
        ("kms degrades", refused_in("kms-pause") == 0),
    ];
    println!("soak: decisions: {decisions:?}");
    println!(
        "soak: verdict: {leaks} responses with another tenant's data, {} acknowledged writes missing, \
         {} half-applied, {} broken audit chains, {} stock counts off",
        lost.len(),
        half.len(),
        broken_chains.len(),
        stock.len()
    );
    drop(o);
    // What the server logged as errors (first of each kind), for the report.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| l.contains(" ERROR ")) {
        // `<time>  ERROR <target>: <message>`: one line per target and message.
        let kind: String = line
            .split_once(" ERROR ")
            .map_or(line, |(_, rest)| rest)
            .chars()
            .take(140)
            .collect();
        if seen.insert(kind.clone()) && seen.len() <= 12 {
            println!("soak: server error: {kind}");
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    assert_eq!(leaks, 0, "responses carried another tenant's data");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(half.is_empty(), "half-applied writes: {half:?}");
    assert!(broken_chains.is_empty(), "{broken_chains:?}");
    assert!(stock.is_empty(), "stock counts: {stock:?}");
    assert!(decisions.iter().all(|(_, held)| *held), "{decisions:?}");
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        noisy_ok,
        "the flood must be refused (>= 80 % 429, no more granted than the plan allows) \
         and the others' p99 stay within {allowed}x"
    );
}
