//! The reference app over real HTTP, every scenario on both backends: the
//! embedded default (SQLite, one file per tenant) and PostgreSQL (shared
//! tables, row-level security; a fresh database per test): sign-in, tenant isolation (ids of one tenant used with
//! another tenant's credentials get 404, never data), record ownership
//! inside a tenant, plan limits, problem+json errors, and the run command
//! as a new user would use it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use insurance_agent::app;
use insurance_agent::data::PgUrls;
use insurance_agent::seed::DEMO_PASSWORD;
use serde_json::{Value, json};
use tenancy_core::store::TenantStore;
use tenancy_testkit::TestDb;
use tenancy_testkit::http::RawResponse;

#[macro_use]
mod common;
use common::*;

on_both_backends!(
    health_openapi_and_sign_in,
    ids_of_one_tenant_are_404_with_another_tenants_credentials,
    agents_see_their_own_customers_managers_their_team_admins_all,
    the_free_plan_stops_at_its_agent_limit,
    sensitive_fields_are_encrypted_at_rest_searchable_and_masked,
    every_state_change_is_audited_and_the_chain_verifies,
    a_policy_from_quote_to_commission_with_exact_money,
    usage_plan_changes_thresholds_and_compliance_reports,
    invitations_enforce_the_tenants_password_policy_and_are_single_use,
    a_providers_admins_administer_its_regional_office_and_no_further,
    the_hourly_api_quota_answers_429_per_tenant,
    a_plan_change_and_a_settings_change_sent_together_both_persist,
    shutdown_finishes_requests_in_flight_and_refuses_new_ones,
    concurrent_creates_never_exceed_a_stock_limit
);

fn ids(r: &RawResponse) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn health_openapi_and_sign_in(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    assert_eq!(app.running.seeded.len(), 4);
    assert_eq!(call(addr, "GET", "/health", None, None).await.status, 200);
    let doc = call(addr, "GET", "/openapi.json", None, None).await.json();
    assert!(
        doc["paths"]["/customers/{id}"]["patch"].is_object(),
        "{doc}"
    );

    let wrong = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "agent@sunrise.test", "password": "nope", "tenant": "sunrise-insurance"})),
    )
    .await;
    assert_problem(&wrong, 401, "app.unauthorized");
    // A real user of another tenant cannot sign in here.
    let foreign = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "asha@asha.test", "password": DEMO_PASSWORD, "tenant": "sunrise-insurance"})),
    )
    .await;
    assert_problem(&foreign, 401, "app.unauthorized");
    assert_eq!(
        wrong.json()["detail"],
        foreign.json()["detail"],
        "one message for every wrong part"
    );
    let malformed = call(addr, "POST", "/auth/login", None, Some(json!({"email": 5}))).await;
    assert_problem(&malformed, 422, "app.invalid");

    let token = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let me = call(addr, "GET", "/me", Some(&token), None).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["tenant"], "sunrise-insurance");
    assert_eq!(me.json()["role"], "agent");
    assert!(me.header("x-tenant-id").is_some());

    // No token on a tenant route: refused, with a problem body.
    let anonymous = call(addr, "GET", "/customers", None, None).await;
    assert!(
        anonymous.status == 400 || anonymous.status == 401,
        "{}",
        anonymous.text()
    );
    assert_eq!(
        anonymous.header("content-type"),
        Some("application/problem+json")
    );
    // A tampered token: 401.
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        call(addr, "GET", "/me", Some(&tampered), None).await.status,
        401
    );
    app.running.stop().await.unwrap();
}

async fn ids_of_one_tenant_are_404_with_another_tenants_credentials(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let sunrise = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let theirs = ids(&call(addr, "GET", "/customers", Some(&sunrise), None).await);
    let mine = ids(&call(addr, "GET", "/customers", Some(&bharat), None).await);
    assert_eq!(theirs.len(), 6);
    assert_eq!(mine.len(), 3);
    assert!(theirs.iter().all(|t| !mine.contains(t)));
    let agents = call(addr, "GET", "/agents", Some(&sunrise), None).await;
    let agent_id = agents.json()["items"][0]["id"].as_str().unwrap().to_owned();
    for id in &theirs {
        for (method, body) in [
            ("GET", None),
            ("PATCH", Some(json!({"lifecycle_stage": "churned"}))),
            ("DELETE", None),
        ] {
            let r = call(
                addr,
                method,
                &format!("/customers/{id}"),
                Some(&bharat),
                body,
            )
            .await;
            assert_problem(&r, 404, "app.not-found");
        }
    }
    assert_problem(
        &call(
            addr,
            "GET",
            &format!("/agents/{agent_id}"),
            Some(&bharat),
            None,
        )
        .await,
        404,
        "app.not-found",
    );
    // Creating a customer for another tenant's agent: that agent does not exist here.
    let r = call(
        addr,
        "POST",
        "/customers",
        Some(&bharat),
        Some(json!({"agent_id": agent_id, "first_name": "X", "last_name": "Y", "customer_type": "individual"})),
    )
    .await;
    assert_problem(&r, 404, "app.not-found");
    // Nothing of sunrise's changed.
    let after = call(addr, "GET", "/customers", Some(&sunrise), None).await;
    assert_eq!(ids(&after), theirs);
    assert!(
        after.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["lifecycle_stage"] != "churned")
    );
    // A malformed id is a 400, not a 500.
    assert_problem(
        &call(addr, "GET", "/customers/not-a-uuid", Some(&bharat), None).await,
        400,
        "app.bad-request",
    );
    app.running.stop().await.unwrap();
}

async fn agents_see_their_own_customers_managers_their_team_admins_all(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let own = ids(&call(addr, "GET", "/customers", Some(&agent), None).await);
    let team = ids(&call(addr, "GET", "/customers", Some(&manager), None).await);
    let all = ids(&call(addr, "GET", "/customers", Some(&admin), None).await);
    assert_eq!((own.len(), team.len(), all.len()), (3, 6, 6));
    assert!(own.iter().all(|c| team.contains(c)));
    let managers_own: Vec<&String> = team.iter().filter(|c| !own.contains(c)).collect();
    // The agent cannot read, change or delete the manager's customer...
    let m = managers_own[0];
    assert_eq!(
        call(addr, "GET", &format!("/customers/{m}"), Some(&agent), None)
            .await
            .status,
        404
    );
    // ...until it is shared: then read-only.
    let shared = call(
        addr,
        "PATCH",
        &format!("/customers/{m}"),
        Some(&manager),
        Some(json!({"shared": true})),
    )
    .await;
    assert_eq!(shared.status, 200, "{}", shared.text());
    assert_eq!(
        call(addr, "GET", &format!("/customers/{m}"), Some(&agent), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(
            addr,
            "PATCH",
            &format!("/customers/{m}"),
            Some(&agent),
            Some(json!({"engagement_score": 1}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/customers/{m}"),
            Some(&agent),
            None
        )
        .await
        .status,
        404
    );
    // The agent's own customer: changed, then deactivated (gone from lists, kept in the file).
    let o = &own[0];
    let r = call(
        addr,
        "PATCH",
        &format!("/customers/{o}"),
        Some(&agent),
        Some(json!({"lifecycle_stage": "active"})),
    )
    .await;
    assert_eq!(r.json()["lifecycle_stage"], "active");
    assert_problem(
        &call(
            addr,
            "PATCH",
            &format!("/customers/{o}"),
            Some(&agent),
            Some(json!({"lifecycle_stage": "gold"})),
        )
        .await,
        422,
        "app.invalid",
    );
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/customers/{o}"),
            Some(&agent),
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        call(addr, "GET", &format!("/customers/{o}"), Some(&admin), None)
            .await
            .status,
        404
    );
    assert_eq!(
        ids(&call(addr, "GET", "/customers", Some(&admin), None).await).len(),
        5
    );
    // Pagination.
    let page = call(
        addr,
        "GET",
        "/customers?limit=2&offset=1",
        Some(&admin),
        None,
    )
    .await
    .json();
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            page["total"].as_i64()
        ),
        (2, Some(5))
    );
    assert_problem(
        &call(addr, "GET", "/customers?limit=0", Some(&admin), None).await,
        400,
        "app.bad-request",
    );
    // Agents cannot add agents.
    let r = call(
        addr,
        "POST",
        "/agents",
        Some(&agent),
        Some(json!({"agent_code": "X1", "name": "X", "licence_number": "L", "licence_expiry": "2030-01-01"})),
    )
    .await;
    assert_problem(&r, 403, "app.forbidden");
    app.running.stop().await.unwrap();
}

async fn the_free_plan_stops_at_its_agent_limit(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let asha = login(addr, "asha@asha.test", "asha-agency").await; // free plan: 3 agents
    for i in 0..3 {
        let r = call(
            addr,
            "POST",
            "/agents",
            Some(&asha),
            Some(json!({"agent_code": format!("A{i}"), "name": "A", "licence_number": "L", "licence_expiry": "2030-01-01"})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = call(
        addr,
        "POST",
        "/agents",
        Some(&asha),
        Some(json!({"agent_code": "A9", "name": "A", "licence_number": "L", "licence_expiry": "2030-01-01"})),
    )
    .await;
    assert_problem(&r, 403, "quota-exceeded");
    // A duplicate agent code is a conflict.
    let enterprise = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let body = json!({"agent_code": "DUP", "name": "A", "licence_number": "L", "licence_expiry": "2030-01-01"});
    assert_eq!(
        call(
            addr,
            "POST",
            "/agents",
            Some(&enterprise),
            Some(body.clone())
        )
        .await
        .status,
        201
    );
    assert_problem(
        &call(addr, "POST", "/agents", Some(&enterprise), Some(body)).await,
        409,
        "app.conflict",
    );
    app.running.stop().await.unwrap();
}

/// `cargo run -p insurance-agent` as a new user would: a fresh data
/// directory, the default command, wait for health, one request, stop.
/// Starts the binary as a user would, with `env`; returns it, the address
/// it printed, and the line that said so.
async fn spawn_server(env: &[(&str, &str)]) -> (tokio::process::Child, SocketAddr, String) {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_insurance-agent"));
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .env("INSURANCE_BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr, line) = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("insurance-agent listening on http://") {
                return (
                    rest.split_whitespace().next().unwrap().parse().unwrap(),
                    line,
                );
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .unwrap();
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, line)
}

/// Runs an operations command of the binary with `env`.
async fn command(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_insurance-agent"));
    for (k, v) in env {
        command.env(k, v);
    }
    command.args(args).output().await.unwrap()
}

#[tokio::test]
async fn the_run_command_starts_on_a_fresh_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let env = [("INSURANCE_DATA_DIR", data_dir)];
    let (mut child, addr, line) = spawn_server(&env).await;
    assert!(line.contains("SQLite"), "{line}");
    assert_eq!(call(addr, "GET", "/health", None, None).await.status, 200);
    let token = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/customers", Some(&token), None)
            .await
            .status,
        200
    );
    child.kill().await.unwrap();
    assert!(dir.path().join("control.sqlite3").exists());
    // The operations commands on the same data directory.
    let out = command(&env, &["report", "audit", "sunrise-insurance"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("chain intact"),
        "{text}"
    );
    let out = command(
        &env,
        &["tenant", "suspend", "no-such-tenant", "--reason", "x"],
    )
    .await;
    assert!(!out.status.success(), "an unknown tenant is an error");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tenants"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "sqlite3")
            })
            .count(),
        4
    );
}

/// Polls `GET /customers` until it answers `want`; fails after `within`.
async fn status_within(
    addr: SocketAddr,
    token: &str,
    want: u16,
    within: Duration,
) -> (RawResponse, Duration) {
    let started = std::time::Instant::now();
    loop {
        let r = call(addr, "GET", "/customers", Some(token), None).await;
        if r.status == want {
            return (r, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "still {} after {within:?}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Suspends sunrise-insurance with the command line (`env` names the
/// deployment) and waits until the running server refuses `token` with
/// 403 `tenant-suspended`, at most `within`; returns how long it took.
async fn suspend_from_the_command_line(
    env: &[(&str, &str)],
    addr: SocketAddr,
    token: &str,
    within: Duration,
) -> Duration {
    let out = command(
        env,
        &[
            "tenant",
            "suspend",
            "sunrise-insurance",
            "--reason",
            "unpaid",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (refused, took) = status_within(addr, token, 403, within).await;
    assert_problem(&refused, 403, "tenant-suspended");
    took
}

/// On the embedded default the command line and the server are two
/// processes on one control database: a suspension made by the command
/// line is refused by the running server within a second (the change log,
/// not the cache TTL of a minute), and resuming it is seen as fast.
#[tokio::test]
async fn the_command_line_reaches_a_running_sqlite_server_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let env = [("INSURANCE_DATA_DIR", data_dir)];
    let (mut child, addr, _) = spawn_server(&env).await;
    let token = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    // Cached by the server.
    assert_eq!(
        call(addr, "GET", "/customers", Some(&token), None)
            .await
            .status,
        200
    );
    let took = suspend_from_the_command_line(&env, addr, &token, Duration::from_secs(1)).await;
    println!(
        "cross-process: suspension seen after {} ms",
        took.as_millis()
    );
    let out = command(&env, &["tenant", "resume", "sunrise-insurance"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Resumed: a new sign-in works within the second...
    let started = std::time::Instant::now();
    let fresh = loop {
        let body = json!({"email": "agent@sunrise.test", "password": DEMO_PASSWORD, "tenant": "sunrise-insurance"});
        let r = call(addr, "POST", "/auth/login", None, Some(body)).await;
        if r.status == 200 {
            break r.json()["token"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still {} after 1 s: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    println!(
        "cross-process: resumption seen after {} ms",
        started.elapsed().as_millis()
    );
    status_within(addr, &fresh, 200, Duration::from_secs(1)).await;
    // ... while the sessions from before the suspension stay ended (the
    // command line revoked them in the shared control database).
    let old = call(addr, "GET", "/customers", Some(&token), None).await;
    assert_problem(&old, 401, "session-revoked");
    child.kill().await.unwrap();
}

/// Deletes the tenant's newest audit event the way someone with direct
/// access to the storage could: as the superuser on PostgreSQL, by dropping
/// the append-only trigger in the tenant's file on SQLite.
async fn remove_newest_audit_event(app: &App, tenant: tenancy_core::TenantId) {
    match &app.pg {
        Some(pg) => {
            let admin = sqlx::PgPool::connect(&pg.admin_url).await.unwrap();
            let done = sqlx::query(
                "DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND seq = \
                 (SELECT max(seq) FROM tenancy.audit_log WHERE tenant_id = $1)",
            )
            .bind(tenant.as_uuid())
            .execute(&admin)
            .await
            .unwrap();
            assert_eq!(done.rows_affected(), 1);
            admin.close().await;
        }
        None => {
            let file = app._dir.path().join("tenants").join(format!(
                "{}.sqlite3",
                tenancy_core::Placement::name_for(tenant)
            ));
            assert!(file.exists(), "{}", file.display());
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&file)
                .busy_timeout(Duration::from_secs(5));
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            let done = sqlx::raw_sql(
                "DROP TRIGGER tenancy_audit_log_no_delete; \
                 DELETE FROM tenancy_audit_log WHERE seq = (SELECT max(seq) FROM tenancy_audit_log)",
            )
            .execute(&pool)
            .await
            .unwrap();
            assert_eq!(done.rows_affected(), 1);
            pool.close().await;
        }
    }
}

/// Every row of every table outside PostgreSQL's own schemas, as text,
/// one entry per table.
async fn database_rows(admin_url: &str) -> Vec<(String, Vec<u8>)> {
    let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' \
           AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(tables.len() > 10, "{tables:?}");
    let mut out = Vec::new();
    for (schema, table) in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"))
                .fetch_all(&admin)
                .await
                .unwrap();
        out.push((format!("{schema}.{table}"), rows.join("\n").into_bytes()));
    }
    admin.close().await;
    out
}

#[tokio::test]
async fn with_database_url_the_run_command_serves_postgres_and_sees_commands_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, urls) = fresh_database().await;
    let env = [
        ("INSURANCE_DATA_DIR", dir.path().to_str().unwrap()),
        ("DATABASE_URL", urls.app.as_str()),
        ("DATABASE_OWNER_URL", urls.owner.as_str()),
    ];
    let (mut child, addr, line) = spawn_server(&env).await;
    assert!(line.contains("PostgreSQL"), "{line}");
    assert!(
        !dir.path().join("control.sqlite3").exists(),
        "no SQLite in PostgreSQL mode"
    );
    let token = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/customers", Some(&token), None)
            .await
            .status,
        200
    );
    // A tenant suspended from the command line is refused by the running
    // server at once (the change is broadcast; no waiting for a cache TTL).
    suspend_from_the_command_line(&env, addr, &token, Duration::from_secs(2)).await;
    let out = command(&env, &["report", "audit", "sunrise-insurance"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("chain intact"),
        "{text}"
    );
    // Without the owner's URL the binary says what is missing.
    let out = command(&[("DATABASE_URL", urls.app.as_str())], &["tenant", "list"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DATABASE_OWNER_URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn postgres_mode_refuses_an_app_role_that_escapes_rls_and_grants_a_new_one() {
    // The owner of the tables as the request-serving role: row-level
    // security would not confine it, and the strict start-up audit says so.
    let dir = tempfile::tempdir().unwrap();
    let (_db, urls) = fresh_database().await;
    let wrong = PgUrls {
        app: urls.owner.clone(),
        owner: urls.owner.clone(),
        listen: None,
    };
    let err = insurance_agent::data::Data::open_postgres(dir.path(), &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("owner"), "{err}");
    // The same database with the application role starts.
    let data = insurance_agent::data::Data::open_postgres(dir.path(), &urls)
        .await
        .unwrap();
    insurance_agent::seed::demo(&data).await.unwrap();
    // Served later by another (equally unprivileged) role: the start-up
    // grants it what it needs, and it reads the tenants' data.
    let db = TestDb::from_env().unwrap();
    let role = format!(
        "ia_app_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = sqlx::PgPool::connect(&db.admin_url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}' NOSUPERUSER NOBYPASSRLS NOINHERIT"
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let (scheme_user, rest) = urls.app.split_once('@').unwrap();
    let scheme = &scheme_user[..scheme_user.find("://").unwrap() + 3];
    let other = PgUrls {
        app: format!("{scheme}{role}:pw-{role}@{rest}"),
        owner: urls.owner.clone(),
        listen: None,
    };
    let data = insurance_agent::data::Data::open_postgres(dir.path(), &other)
        .await
        .unwrap();
    let sunrise = tenancy_core::store::TenantStore::by_slug(
        &data.tenant_store(),
        &"sunrise-insurance".parse().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut tx = data
        .begin(&tenancy_core::TenantContext::new((*sunrise).clone()))
        .await
        .unwrap();
    let customers: i64 = insurance_agent::on!(
        tx,
        sqlx::query_scalar("SELECT count(*) FROM customers"),
        fetch_one
    )
    .unwrap();
    tx.commit().await.unwrap();
    assert!(customers > 0, "the new role reads the tenant's rows");
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn sensitive_fields_are_encrypted_at_rest_searchable_and_masked(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let secrets = [
        "ZXCVB9876Q",
        "987698769876",
        "9988776655",
        "HDFC00012345",
        "asthma since 2019",
    ];
    let created = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(json!({
            "first_name": "Lata", "last_name": "Desai", "customer_type": "individual",
            "sensitive": {
                "pan": "zxcvb9876q", "aadhaar": "9876 9876 9876", "phone": "+91 99887 76655",
                "bank_account": "HDFC00012345", "medical_history": "asthma since 2019"
            }
        })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.json()["sensitive"]["pan"],
        "••••",
        "{}",
        created.text()
    );
    for who in [&agent, &manager] {
        let full = call(addr, "GET", &format!("/customers/{id}"), Some(who), None)
            .await
            .json();
        assert_eq!(full["sensitive"]["pan"], "ZXCVB9876Q");
        assert_eq!(full["sensitive"]["aadhaar"], "987698769876");
        assert_eq!(full["sensitive"]["phone"], "+919988776655");
    }
    let found = call(addr, "GET", "/customers?pan=ZXCVB9876Q", Some(&agent), None)
        .await
        .json();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["sensitive"]["pan"], "••••");
    let by_phone = call(
        addr,
        "GET",
        "/customers?phone=%2B919988776655",
        Some(&manager),
        None,
    )
    .await
    .json();
    assert_eq!(by_phone["total"], 1, "{by_phone}");
    // Another tenant's search for the same PAN finds nothing.
    let elsewhere = call(
        addr,
        "GET",
        "/customers?pan=ZXCVB9876Q",
        Some(&bharat),
        None,
    )
    .await
    .json();
    assert_eq!(elsewhere["total"], 0);
    assert_problem(
        &call(addr, "GET", "/customers?pan=nope", Some(&agent), None).await,
        422,
        "app.invalid",
    );
    // A changed PAN: the old one no longer finds the customer.
    let r = call(
        addr,
        "PATCH",
        &format!("/customers/{id}"),
        Some(&agent),
        Some(json!({"sensitive": {"pan": "QWERT1111Z"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        call(addr, "GET", "/customers?pan=ZXCVB9876Q", Some(&agent), None)
            .await
            .json()["total"],
        0
    );
    assert_eq!(
        call(addr, "GET", "/customers?pan=QWERT1111Z", Some(&agent), None)
            .await
            .json()["total"],
        1
    );

    // No plaintext anywhere the data is stored: every file of the data
    // directory (databases, WAL, keys) on SQLite; on PostgreSQL, every row
    // of every table in the database, read as the superuser, plus the data
    // directory (keys).
    let mut secrets: Vec<&str> = secrets.to_vec();
    secrets.push("QWERT1111Z");
    let mut stored: Vec<(String, Vec<u8>)> = files_under(app._dir.path())
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    if let Some(pg) = &app.pg {
        stored.extend(database_rows(&pg.admin_url).await);
    }
    let mut control_seen = false;
    for (place, bytes) in &stored {
        // Positive control: the scan does see the customer's plain columns.
        control_seen |= bytes.windows(5).any(|w| w == b"Desai");
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} in plaintext in {place}"
            );
        }
    }
    assert!(
        control_seen,
        "the scan reads the files the customer is stored in"
    );
    app.running.stop().await.unwrap();
}

async fn every_state_change_is_audited_and_the_chain_verifies(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agents = call(addr, "GET", "/agents", Some(&admin), None)
        .await
        .json();
    let agent_id = agents["items"][0]["id"].as_str().unwrap().to_owned();
    let mut changes = 0;
    let c = call(
        addr,
        "POST",
        "/customers",
        Some(&admin),
        Some(json!({"agent_id": agent_id, "first_name": "A", "last_name": "B", "customer_type": "business"})),
    )
    .await;
    assert_eq!(c.status, 201);
    changes += 1;
    let id = c.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            addr,
            "PATCH",
            &format!("/customers/{id}"),
            Some(&admin),
            Some(json!({"kyc_status": "verified"}))
        )
        .await
        .status,
        200
    );
    changes += 1;
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/customers/{id}"),
            Some(&admin),
            None
        )
        .await
        .status,
        204
    );
    changes += 1;
    let a = call(
        addr,
        "POST",
        "/agents",
        Some(&admin),
        Some(json!({"agent_code": "AUD1", "name": "A", "licence_number": "L", "licence_expiry": "2030-01-01"})),
    )
    .await;
    assert_eq!(a.status, 201);
    changes += 1;
    // A refused change leaves nothing (and is not counted).
    assert_eq!(
        call(
            addr,
            "DELETE",
            &format!("/customers/{id}"),
            Some(&admin),
            None
        )
        .await
        .status,
        404
    );

    let log = call(addr, "GET", "/audit?limit=1000", Some(&admin), None).await;
    assert_eq!(log.status, 200, "{}", log.text());
    let items = log.json()["items"].as_array().unwrap().clone();
    let writes = items
        .iter()
        .filter(|e| {
            ["create", "update", "delete"].contains(&e["event"]["action"].as_str().unwrap())
        })
        .count();
    assert_eq!(writes, changes, "{items:?}");
    assert!(items.iter().any(|e| e["event"]["action"] == "login"));
    // A page bound beyond any stored sequence number is no bound (not a 500).
    let past_the_end = call(
        addr,
        "GET",
        &format!("/audit?limit=1000&before={}", u64::MAX),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(past_the_end.status, 200, "{}", past_the_end.text());
    assert_eq!(
        past_the_end.json()["items"].as_array().unwrap().len(),
        items.len()
    );
    let check = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(check["intact"], true, "{check}");
    assert_eq!(check["rows"].as_u64().unwrap() as usize, items.len());

    // The head, kept outside the database, exposes removal of the newest
    // events, which the chain alone cannot show.
    let anchor = check["anchor"].as_str().unwrap().to_owned();
    let verify_against = |a: &str| format!("/audit/verify?anchor={a}");
    let still = call(addr, "GET", &verify_against(&anchor), Some(&admin), None).await;
    assert_eq!(still.json()["intact"], true, "{}", still.text());
    assert_problem(
        &call(addr, "GET", &verify_against("12:zz"), Some(&admin), None).await,
        422,
        "app.invalid",
    );
    let tenant: tenancy_core::TenantId = call(addr, "GET", "/me", Some(&admin), None)
        .await
        .header("x-tenant-id")
        .unwrap()
        .parse()
        .unwrap();
    remove_newest_audit_event(&app, tenant).await;
    let shorter = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(
        shorter["intact"], true,
        "the chain alone cannot tell: {shorter}"
    );
    let caught = call(addr, "GET", &verify_against(&anchor), Some(&admin), None)
        .await
        .json();
    assert_eq!(caught["intact"], false, "{caught}");
    assert!(
        caught["breaks"][0]
            .as_str()
            .unwrap()
            .starts_with("Truncated"),
        "{caught}"
    );
    // A sign-in is audited: the log grows again over the removed position.
    // Still a valid chain, but not the anchored row.
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let regrown = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(regrown["intact"], true, "{regrown}");
    let caught = call(addr, "GET", &verify_against(&anchor), Some(&admin), None)
        .await
        .json();
    assert_eq!(caught["intact"], false, "{caught}");
    assert!(
        caught["breaks"][0]
            .as_str()
            .unwrap()
            .starts_with("AnchorMismatch"),
        "{caught}"
    );
    // The free plan has no audit-log access; agents never do.
    let asha = login(addr, "asha@asha.test", "asha-agency").await;
    assert_problem(
        &call(addr, "GET", "/audit", Some(&asha), None).await,
        403,
        "feature-not-in-plan",
    );
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_problem(
        &call(addr, "GET", "/audit", Some(&agent), None).await,
        403,
        "app.forbidden",
    );
    app.running.stop().await.unwrap();
}

async fn a_policy_from_quote_to_commission_with_exact_money(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let bharat = login(addr, "admin@bharat.test", "bharat-agents").await;
    let customer = ids(&call(addr, "GET", "/customers", Some(&agent), None).await)[0].clone();
    let quote = call(
        addr,
        "POST",
        "/policies",
        Some(&agent),
        Some(json!({
            "policy_number": "SUN-0001", "product": "Term Life 20", "customer_id": customer,
            "sum_assured_minor": 500_000_000, "premium_minor": 1_234_567, "premium_frequency": "monthly",
            "term_years": 20, "riders": [{"name": "Accidental death", "sum_assured_minor": 100_000_000}]
        })),
    )
    .await;
    assert_eq!(quote.status, 201, "{}", quote.text());
    assert_eq!(quote.json()["status"], "quoted");
    let policy = quote.json()["id"].as_str().unwrap().to_owned();
    let dup = call(
        addr,
        "POST",
        "/policies",
        Some(&agent),
        Some(json!({"policy_number": "SUN-0001", "product": "X", "customer_id": customer,
            "sum_assured_minor": 1, "premium_minor": 1, "premium_frequency": "yearly", "term_years": 1})),
    )
    .await;
    assert_problem(&dup, 409, "app.conflict");
    let d = call(addr, "GET", "/dashboard", Some(&agent), None)
        .await
        .json();
    assert_eq!(
        (
            d["conversion_90d"]["quoted"].as_i64(),
            d["conversion_90d"]["issued"].as_i64()
        ),
        (Some(1), Some(0))
    );

    // Cover started two months ago (monthly premiums): the first premium
    // and the next one are both due already.
    let commenced = chrono::Utc::now().date_naive() - chrono::Months::new(2);
    let issued = call(
        addr,
        "POST",
        &format!("/policies/{policy}/issue"),
        Some(&agent),
        Some(json!({ "commencement_date": commenced })),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.text());
    assert_eq!(issued.json()["status"], "active");
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/policies/{policy}/issue"),
            Some(&agent),
            Some(json!({})),
        )
        .await,
        409,
        "app.conflict",
    );
    let d = call(addr, "GET", "/dashboard", Some(&agent), None)
        .await
        .json();
    assert_eq!(d["conversion_90d"]["rate_bp"], 10_000);
    assert!(
        d["due_soon"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == policy.as_str())
    );

    let payments = call(
        addr,
        "GET",
        &format!("/payments?policy_id={policy}"),
        Some(&agent),
        None,
    )
    .await
    .json();
    assert_eq!(payments["total"], 1);
    let first = payments["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(payments["items"][0]["amount_minor"], 1_234_567);
    let paid = json!({"method": "upi", "transaction_ref": "UPI-123"});
    // Another tenant cannot touch it.
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/payments/{first}/complete"),
            Some(&bharat),
            Some(paid.clone()),
        )
        .await,
        404,
        "app.not-found",
    );
    // The agent who sold the policy may not record its premium as paid
    // (and so credit themselves the commission): settling is for tenant
    // admins and the finance role.
    let own = call(
        addr,
        "POST",
        &format!("/payments/{first}/complete"),
        Some(&agent),
        Some(json!({"method": "cash", "transaction_ref": "anything", "paid_date": "2020-01-01"})),
    )
    .await;
    assert_problem(&own, 403, "app.forbidden");
    let finance = login(addr, "finance@sunrise.test", "sunrise-insurance").await;
    let me = call(addr, "GET", "/me", Some(&finance), None).await.json();
    assert_eq!(me["role"], "finance", "{me}");
    let finance_id = me["user_id"].as_str().unwrap().to_owned();
    // Dates: not in the future, not before the premium was due.
    let due = chrono::NaiveDate::parse_from_str(
        payments["items"][0]["due_date"].as_str().unwrap(),
        "%Y-%m-%d",
    )
    .unwrap();
    for (date, why) in [
        (
            chrono::Utc::now().date_naive() + chrono::Days::new(2),
            "future",
        ),
        (due - chrono::Days::new(1), "before the due date"),
    ] {
        let r = call(
            addr,
            "POST",
            &format!("/payments/{first}/complete"),
            Some(&finance),
            Some(json!({"method": "upi", "transaction_ref": "UPI-123", "paid_date": date})),
        )
        .await;
        assert_problem(&r, 422, "app.invalid");
        assert_eq!(r.json()["field"], "paid_date", "{why}: {}", r.text());
    }
    let done = call(
        addr,
        "POST",
        &format!("/payments/{first}/complete"),
        Some(&finance),
        Some(paid.clone()),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["payment"]["confirmed_by"], finance_id.as_str());
    assert!(done.json()["payment"]["confirmed_at"].is_string());
    let c = &done.json()["commissions"][0];
    assert_eq!(c["kind"], "first_year");
    assert_eq!(c["rate_bp"], 2500);
    assert_eq!(
        c["amount_minor"], 308_642,
        "25 % of 1 234 567 paise, rounded half up"
    );
    let next = done.json()["next_payment_id"].as_str().unwrap().to_owned();
    // Who confirmed it is kept with the payment.
    let listed = call(
        addr,
        "GET",
        &format!("/payments?policy_id={policy}&status=completed"),
        Some(&agent),
        None,
    )
    .await
    .json();
    assert_eq!(listed["items"][0]["confirmed_by"], finance_id.as_str());
    // The same provider reference twice is a conflict.
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/payments/{next}/complete"),
            Some(&finance),
            Some(json!({"method": "card", "transaction_ref": "UPI-123"})),
        )
        .await,
        409,
        "app.conflict",
    );
    let d = call(addr, "GET", "/dashboard", Some(&agent), None)
        .await
        .json();
    assert_eq!(d["revenue_30d_minor"], 1_234_567);

    // Refund: agents may not; finance may, once; the pending commission is
    // cancelled.
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/payments/{first}/refund"),
            Some(&agent),
            None,
        )
        .await,
        403,
        "app.forbidden",
    );
    let refunded = call(
        addr,
        "POST",
        &format!("/payments/{first}/refund"),
        Some(&finance),
        None,
    )
    .await;
    assert_eq!(refunded.status, 200, "{}", refunded.text());
    assert_eq!(refunded.json()["refunded_by"], finance_id.as_str());
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/payments/{first}/refund"),
            Some(&finance),
            None,
        )
        .await,
        409,
        "app.conflict",
    );
    let cs = call(addr, "GET", "/commissions", Some(&agent), None)
        .await
        .json();
    assert_eq!(cs["items"][0]["status"], "cancelled");
    // Tenant admins settle too; pay-out is for admins and finance only.
    let complete_next = call(
        addr,
        "POST",
        &format!("/payments/{next}/complete"),
        Some(&admin),
        Some(json!({"method": "card", "transaction_ref": "CARD-9"})),
    )
    .await;
    assert_eq!(complete_next.status, 200, "{}", complete_next.text());
    let commission = complete_next.json()["commissions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/commissions/{commission}/pay"),
            Some(&agent),
            None,
        )
        .await,
        403,
        "app.forbidden",
    );
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("/commissions/{commission}/pay"),
            Some(&finance),
            None
        )
        .await
        .status,
        204
    );
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/commissions/{commission}/pay"),
            Some(&admin),
            None,
        )
        .await,
        409,
        "app.conflict",
    );
    // Status changes follow the table.
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("/policies/{policy}/status"),
            Some(&agent),
            Some(json!({"status": "lapsed"}))
        )
        .await
        .status,
        200
    );
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/policies/{policy}/status"),
            Some(&agent),
            Some(json!({"status": "quoted"})),
        )
        .await,
        409,
        "app.conflict",
    );
    app.running.stop().await.unwrap();
}

fn new_agent(code: &str) -> Value {
    json!({"agent_code": code, "name": "A", "licence_number": "L", "licence_expiry": "2030-01-01"})
}

async fn usage_plan_changes_thresholds_and_compliance_reports(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let asha = login(addr, "asha@asha.test", "asha-agency").await; // free: 3 agents
    for i in 0..3 {
        assert_eq!(
            call(
                addr,
                "POST",
                "/agents",
                Some(&asha),
                Some(new_agent(&format!("T{i}")))
            )
            .await
            .status,
            201
        );
    }
    let usage = call(addr, "GET", "/usage", Some(&asha), None).await.json();
    let agents = usage["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "agents")
        .unwrap()
        .clone();
    assert_eq!(
        (
            agents["used"].as_u64(),
            agents["limit"].as_u64(),
            agents["percent"].as_u64()
        ),
        (Some(3), Some(3), Some(100))
    );
    assert!(
        usage["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resource"] == "api_calls")
    );

    // Upgrade: asked by the admin (awaiting billing), applied here by an
    // operator; the new limit applies on the next request.
    let agent_login = login(addr, "asha@asha.test", "asha-agency").await;
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&agent_login),
        Some(json!({"plan": "professional"})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        (
            r.json()["plan"].as_str(),
            r.json()["request"]["plan"].as_str()
        ),
        (Some("free"), Some("professional"))
    );
    insurance_agent::ops::set_plan(
        &app.running.data,
        &insurance_agent::app::plans(None).unwrap(),
        &*tenant(&app, "asha-agency").await,
        "professional",
        "operator",
    )
    .await
    .unwrap();
    assert_eq!(
        call(addr, "POST", "/agents", Some(&asha), Some(new_agent("T3")))
            .await
            .status,
        201
    );
    // The threshold crossed on the free plan and the plan change are in the audit log.
    let log = call(addr, "GET", "/audit?limit=1000", Some(&asha), None)
        .await
        .json();
    let items = log["items"].as_array().unwrap();
    let threshold = items
        .iter()
        .find(|e| e["event"]["action"] == "quota.threshold")
        .unwrap();
    assert_eq!(threshold["event"]["details"]["percent"], 100);
    assert_eq!(threshold["event"]["resource_type"], "agents");
    assert!(items.iter().any(|e| e["event"]["action"] == "plan.changed"));

    // Downgrading below usage is refused, or accepted and marked over the limit.
    assert_problem(
        &call(
            addr,
            "POST",
            "/plan",
            Some(&asha),
            Some(json!({"plan": "free"})),
        )
        .await,
        409,
        "app.conflict",
    );
    let r = call(
        addr,
        "POST",
        "/plan",
        Some(&asha),
        Some(json!({"plan": "free", "allow_over_limit": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["over_limit"][0]["resource"], "agents");
    assert_problem(
        &call(addr, "POST", "/agents", Some(&asha), Some(new_agent("T4"))).await,
        403,
        "quota-exceeded",
    );
    assert_problem(
        &call(
            addr,
            "POST",
            "/plan",
            Some(&asha),
            Some(json!({"plan": "platinum"})),
        )
        .await,
        422,
        "app.invalid",
    );
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    assert_problem(
        &call(
            addr,
            "POST",
            "/plan",
            Some(&agent),
            Some(json!({"plan": "free"})),
        )
        .await,
        403,
        "app.forbidden",
    );

    // Compliance reports (enterprise tenant): who read which sensitive fields.
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let customer = ids(&call(addr, "GET", "/customers", Some(&admin), None).await)[0].clone();
    assert_eq!(
        call(
            addr,
            "GET",
            &format!("/customers/{customer}"),
            Some(&admin),
            None
        )
        .await
        .status,
        200
    );
    let report = call(
        addr,
        "GET",
        "/reports/data-access?days=1",
        Some(&admin),
        None,
    )
    .await
    .json();
    let line = report
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["resource_type"] == "customers")
        .unwrap()
        .clone();
    assert!(
        line["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "pan"),
        "{report}"
    );
    assert_eq!(line["records"], 1);
    let activity = call(addr, "GET", "/reports/user-activity", Some(&admin), None)
        .await
        .json();
    assert!(
        activity
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["action"] == "login" && l["count"].as_u64() >= Some(1))
    );
    assert_problem(
        &call(
            addr,
            "GET",
            "/reports/user-activity?days=0",
            Some(&admin),
            None,
        )
        .await,
        400,
        "app.bad-request",
    );
    app.running.stop().await.unwrap();
}

async fn invitations_enforce_the_tenants_password_policy_and_are_single_use(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let policy = json!({"min_length": 14, "require_upper": true, "require_lower": true,
        "require_digit": true, "require_symbol": true});
    assert_eq!(
        call(
            addr,
            "PUT",
            "/settings/password-policy",
            Some(&admin),
            Some(policy)
        )
        .await
        .status,
        200
    );
    let issued = call(
        addr,
        "POST",
        "/invitations",
        Some(&admin),
        Some(json!({"email": "New.Agent@sunrise.test", "role": "agent"})),
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    let token = issued.json()["token"].as_str().unwrap().to_owned();
    let accept = |password: &str, email: &str| json!({"token": token, "email": email, "name": "Nila", "password": password});
    // The default policy would accept this one; the tenant's does not.
    let weak = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(accept("Abcdefgh12", "new.agent@sunrise.test")),
    )
    .await;
    assert_problem(&weak, 422, "app.invalid");
    assert!(
        weak.json()["detail"]
            .as_str()
            .unwrap()
            .contains("14 characters"),
        "{}",
        weak.text()
    );
    let other = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(accept("Str0ng-Password!", "someone@else.test")),
    )
    .await;
    assert_problem(&other, 403, "app.forbidden");
    let ok = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(accept("Str0ng-Password!", "new.agent@sunrise.test")),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        (
            ok.json()["role"].as_str(),
            ok.json()["new_account"].as_bool()
        ),
        (Some("agent"), Some(true))
    );
    let again = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(accept("Str0ng-Password!", "new.agent@sunrise.test")),
    )
    .await;
    assert_problem(&again, 409, "app.invitation-used");
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "new.agent@sunrise.test", "password": "Str0ng-Password!", "tenant": "sunrise-insurance"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Tampered and garbage tokens.
    // One character changed in the middle of the secret part (the last
    // character of unpadded base64 carries padding bits: changing it can
    // make the token malformed rather than unknown).
    let mut bad: Vec<char> = token.chars().collect();
    let at = bad.len() - 10;
    bad[at] = if bad[at] == 'A' { 'B' } else { 'A' };
    let bad: String = bad.into_iter().collect();
    let r = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(json!({"token": bad, "email": "x@y.z", "name": "n", "password": "p"})),
    )
    .await;
    assert_problem(&r, 404, "app.invitation-unknown");
    let r = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(json!({"token": "nonsense", "email": "x@y.z", "name": "n", "password": "p"})),
    )
    .await;
    assert_problem(&r, 400, "app.invitation-invalid");

    // Who may invite whom.
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let manager = login(addr, "manager@sunrise.test", "sunrise-insurance").await;
    let body = |role: &str| json!({"email": "z@sunrise.test", "role": role});
    assert_problem(
        &call(
            addr,
            "POST",
            "/invitations",
            Some(&agent),
            Some(body("agent")),
        )
        .await,
        403,
        "app.forbidden",
    );
    assert_problem(
        &call(
            addr,
            "POST",
            "/invitations",
            Some(&manager),
            Some(body("tenant_admin")),
        )
        .await,
        403,
        "app.forbidden",
    );
    assert_eq!(
        call(
            addr,
            "POST",
            "/invitations",
            Some(&manager),
            Some(body("agent"))
        )
        .await
        .status,
        201
    );
    assert_problem(
        &call(
            addr,
            "POST",
            "/invitations",
            Some(&admin),
            Some(body("owner")),
        )
        .await,
        422,
        "app.invalid",
    );

    // An existing account joins with its own password.
    let issued = call(
        addr,
        "POST",
        "/invitations",
        Some(&admin),
        Some(json!({"email": "asha@asha.test", "role": "viewer"})),
    )
    .await;
    let t = issued.json()["token"].as_str().unwrap().to_owned();
    let wrong = call(
        addr,
        "POST",
        "/invitations/accept",
        None,
        Some(json!({"token": t, "email": "asha@asha.test", "name": "Asha", "password": "nope"})),
    )
    .await;
    assert_problem(&wrong, 401, "app.unauthorized");
    let joined = call(addr, "POST", "/invitations/accept", None,
        Some(json!({"token": t, "email": "asha@asha.test", "name": "Asha", "password": DEMO_PASSWORD}))).await;
    assert_eq!(joined.json()["new_account"], false, "{}", joined.text());
    let asha_here = login(addr, "asha@asha.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/me", Some(&asha_here), None)
            .await
            .json()["role"],
        "viewer"
    );
    app.running.stop().await.unwrap();
}

async fn a_providers_admins_administer_its_regional_office_and_no_further(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    // The provider's admin signs in to its child tenant as a tenant admin.
    let parent_admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let in_child = login(addr, "admin@sunrise.test", "sunrise-north").await;
    let me = call(addr, "GET", "/me", Some(&in_child), None).await.json();
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("sunrise-north"), Some("tenant_admin"))
    );
    let r = call(
        addr,
        "POST",
        "/agents",
        Some(&in_child),
        Some(new_agent("N1")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The child's data stays the child's: not visible from the parent.
    let parent_agents = call(addr, "GET", "/agents", Some(&parent_admin), None)
        .await
        .json();
    assert!(
        parent_agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["agent_code"] != "N1")
    );
    // An agent of the provider gets nothing in the child; the child's admin nothing in the parent.
    let refused = |email: &str, tenant: &str| json!({"email": email, "password": DEMO_PASSWORD, "tenant": tenant});
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(refused("agent@sunrise.test", "sunrise-north")),
    )
    .await;
    assert_problem(&r, 401, "app.unauthorized");
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(refused("admin@north.sunrise.test", "sunrise-insurance")),
    )
    .await;
    assert_problem(&r, 401, "app.unauthorized");
    // A token for the child used with the parent's data is the child's view only.
    let north_only = call(addr, "GET", "/agents", Some(&in_child), None)
        .await
        .json();
    assert_eq!(north_only["total"], 1);

    // The provider suspended: its admins keep nothing in the office (the
    // office itself is active), and the provider issues no new session.
    let provider = app
        .running
        .data
        .store()
        .by_slug(&"sunrise-insurance".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    app.running
        .data
        .transition(
            &provider,
            tenancy_core::lifecycle::Transition::Suspend {
                reason: "unpaid".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(refused("admin@sunrise.test", "sunrise-north")),
    )
    .await;
    assert_problem(&r, 401, "app.unauthorized");
    let r = call(addr, "GET", "/agents", Some(&in_child), None).await;
    assert_eq!(
        r.status,
        403,
        "an inherited session outlived the suspension: {}",
        r.text()
    );
    let r = call(
        addr,
        "POST",
        "/auth/login",
        None,
        Some(refused("admin@sunrise.test", "sunrise-insurance")),
    )
    .await;
    assert_problem(&r, 403, "tenant-suspended");
    app.running.stop().await.unwrap();
}

async fn the_hourly_api_quota_answers_429_per_tenant(backend: Backend) {
    // The embedded catalog, with the free plan's hourly API calls cut to 5.
    let plans_dir = tempfile::tempdir().unwrap();
    let plans = plans_dir.path().join("plans.toml");
    let catalog = app::PLANS.replace(
        "api_calls = { rate = { per_hour = 1000 } }",
        "api_calls = { rate = { per_hour = 5 } }",
    );
    assert_ne!(
        catalog,
        app::PLANS,
        "the free plan's rate line is where the test expects it"
    );
    std::fs::write(&plans, catalog).unwrap();
    let app = start_with(backend, Some(plans)).await;
    let addr = app.running.addr;
    let free = login(addr, "asha@asha.test", "asha-agency").await;
    let paid = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    for i in 0..5 {
        let r = call(addr, "GET", "/customers", Some(&free), None).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    let refused = call(addr, "GET", "/customers", Some(&free), None).await;
    assert_problem(&refused, 429, "rate-limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit-limit"), Some("5"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    // Nothing behind the refusal ran, and the quota is the tenant's own:
    // another tenant's users are served.
    assert!(refused.json().get("items").is_none());
    assert_eq!(
        call(addr, "GET", "/customers", Some(&paid), None)
            .await
            .status,
        200
    );
    app.running.stop().await.unwrap();
}

/// Handlers change the fields they own on the record as stored: a plan
/// change and a settings change sent at the same time both persist, round
/// after round (a handler writing back the whole record it was admitted
/// with would revert the other's change).
async fn a_plan_change_and_a_settings_change_sent_together_both_persist(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    for round in 0..6u64 {
        let plan = if round % 2 == 0 {
            "professional"
        } else {
            "enterprise"
        };
        let min_length = 10 + round;
        let policy = json!({"min_length": min_length, "require_upper": true,
            "require_lower": true, "require_digit": true, "require_symbol": false});
        let (p, s) = tokio::join!(
            call(
                addr,
                "POST",
                "/plan",
                Some(&admin),
                Some(json!({"plan": plan}))
            ),
            call(
                addr,
                "PUT",
                "/settings/password-policy",
                Some(&admin),
                Some(policy)
            ),
        );
        assert_eq!(s.status, 200, "round {round}: {}", s.text());
        // A downgrade applies (200); an upgrade is a request awaiting
        // billing (202), kept in the tenant record like the settings.
        let now = call(addr, "GET", "/plan", Some(&admin), None).await;
        match p.status {
            200 => assert_eq!(now.json()["plan"], plan, "round {round}: {}", now.text()),
            202 => assert_eq!(
                now.json()["pending"]["plan"],
                plan,
                "round {round}: {}",
                now.text()
            ),
            other => panic!("round {round}: {other} {}", p.text()),
        }
        let now = call(addr, "GET", "/settings/password-policy", Some(&admin), None).await;
        assert_eq!(
            now.json()["min_length"],
            min_length,
            "round {round}: {}",
            now.text()
        );
    }
}

/// Graceful shutdown: a create whose body is still arriving when the stop
/// comes is finished and acknowledged (and stored); a request arriving
/// during the drain gets 503 with `Retry-After`, never a reset or a 500.
async fn shutdown_finishes_requests_in_flight_and_refuses_new_ones(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let agents = call(addr, "GET", "/agents", Some(&admin), None).await;
    let agent_id = agents.json()["items"][0]["id"].as_str().unwrap().to_owned();
    let body = json!({"agent_id": agent_id, "first_name": "Last", "last_name": "Write",
                      "customer_type": "individual"})
    .to_string();
    let head = format!(
        "POST /customers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    // The request is in flight: head and half the body sent.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    slow.write_all(first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let App {
        _dir, pg, running, ..
    } = app;
    let data = running.data.clone();
    let stopping = tokio::spawn(running.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "the stop waits for the request in flight"
    );
    let refused = call(addr, "GET", "/me", Some(&admin), None).await;
    assert_problem(&refused, 503, "app.shutting-down");
    assert_eq!(refused.header("retry-after"), Some("1"));

    slow.write_all(rest).await.unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Acknowledged means stored.
    let tenant = data
        .store()
        .by_slug(&"sunrise-insurance".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let ctx = tenancy_core::TenantContext::new(tenant);
    let mut tx = data.begin(&ctx).await.unwrap();
    let stored: i64 = insurance_agent::on!(
        tx,
        sqlx::query_scalar(
            "SELECT count(*) FROM customers WHERE first_name = 'Last' AND last_name = 'Write'"
        ),
        fetch_one
    )
    .unwrap();
    assert_eq!(stored, 1);
    drop((_dir, pg));
}

/// A plan's stock limit holds under concurrency: 32 agents created at once
/// on the free plan (3 agents) — exactly 3 are created, every other request
/// is refused `quota-exceeded`, and 3 are stored.
async fn concurrent_creates_never_exceed_a_stock_limit(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let asha = login(addr, "asha@asha.test", "asha-agency").await; // free plan: 3 agents
    let mut tasks = Vec::new();
    for i in 0..32 {
        let token = asha.clone();
        tasks.push(tokio::spawn(async move {
            call(
                addr,
                "POST",
                "/agents",
                Some(&token),
                Some(
                    json!({"agent_code": format!("C{i}"), "name": "A", "licence_number": "L",
                            "licence_expiry": "2030-01-01"}),
                ),
            )
            .await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            201 => created += 1,
            _ => assert_problem(&r, 403, "quota-exceeded"),
        }
    }
    assert_eq!(created, 3, "the free plan allows 3 agents");
    let listed = call(addr, "GET", "/agents", Some(&asha), None).await.json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
    app.running.stop().await.unwrap();
}
