//! Audit retention in the reference app: a tenant admin sets how long
//! events stay live and in all; archival seals older events into segments
//! and prunes them from the live log; `GET /audit/verify` and
//! `report audit` verify across the archive and the live log, and still
//! find a removed segment or truncated newest events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[macro_use]
mod common;

use common::{App, Backend, assert_problem, call, login, start, tenant};
use serde_json::json;

on_both_backends!(audit_events_move_to_the_archive_and_the_chain_still_verifies);

/// `report audit` run by the command line against the app's data.
async fn report_audit(app: &App, slug: &str, anchor: Option<&str>) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_insurance-agent"));
    cmd.env("INSURANCE_DATA_DIR", app._dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_OWNER_URL");
    if let Some(pg) = &app.pg {
        cmd.env("DATABASE_URL", &pg.app_url)
            .env("DATABASE_OWNER_URL", &pg.owner_url);
    }
    cmd.args(["report", "audit", slug]);
    if let Some(a) = anchor {
        cmd.args(["--anchor", a]);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn audit_events_move_to_the_archive_and_the_chain_still_verifies(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let slug = "sunrise-insurance";

    // Retention is typed and bounded.
    let bad = call(
        addr,
        "PATCH",
        "/settings",
        Some(&admin),
        Some(json!({"audit_retention": {"min_days": 5}})),
    )
    .await;
    assert_problem(&bad, 422, "app.invalid");
    assert_eq!(bad.json()["field"], "audit_retention.min_days");
    let bad = call(
        addr,
        "PATCH",
        "/settings",
        Some(&admin),
        Some(json!({"audit_retention": {"min_days": 90, "max_days": 30}})),
    )
    .await;
    assert_eq!(
        bad.json()["field"],
        "audit_retention.max_days",
        "{}",
        bad.text()
    );
    let bad = call(
        addr,
        "PATCH",
        "/settings",
        Some(&admin),
        Some(json!({"audit_retention": {"min_days": 90, "forever": true}})),
    )
    .await;
    assert_problem(&bad, 422, "app.invalid");
    let set = call(
        addr,
        "PATCH",
        "/settings",
        Some(&admin),
        Some(json!({"audit_retention": {"min_days": 30, "max_days": 400}})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(
        set.json()["audit_retention"],
        json!({"min_days": 30, "max_days": 400})
    );

    // Some history, and its head recorded before archival.
    for i in 0..5 {
        let r = call(
            addr,
            "PATCH",
            "/settings",
            Some(&admin),
            Some(json!({"time_zone": if i % 2 == 0 { "Asia/Kolkata" } else { "UTC" }})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let before = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(before["intact"], true, "{before}");
    let anchor = before["anchor"].as_str().unwrap().to_owned();
    let total = before["rows"].as_u64().unwrap();

    // Archival as it will run 40 days from now: every event so far is
    // older than the 30-day minimum.
    let t = tenant(&app, slug).await;
    let retention = insurance_agent::api::settings::audit_retention_of(&t.settings).unwrap();
    assert_eq!(retention.min_days, 30);
    let later = chrono::Utc::now() + chrono::Duration::days(40);
    let run = app
        .running
        .data
        .archive_audit(&t, &retention, later)
        .await
        .unwrap();
    assert_eq!(run.archived_rows, total);
    assert_eq!(run.destroyed_rows, 0);
    let segments = app.running.data.audit_archive().paths(t.id).unwrap();
    assert_eq!(segments.len(), 1);

    // The live log is empty, yet the chain verifies across the archive, and
    // against the anchor taken before.
    let after = call(
        addr,
        "GET",
        &format!("/audit/verify?anchor={anchor}"),
        Some(&admin),
        None,
    )
    .await
    .json();
    assert_eq!(after["intact"], true, "{after}");
    assert_eq!(after["archived_rows"].as_u64(), Some(total));
    let (ok, out) = report_audit(&app, slug, Some(&anchor)).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{total} archived events in 1 segments")),
        "{out}"
    );
    assert!(out.contains("chain intact"), "{out}");
    // New events continue the chain after the archive.
    let r = call(
        addr,
        "PATCH",
        "/settings",
        Some(&admin),
        Some(json!({"time_zone": "UTC"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let grown = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(grown["intact"], true, "{grown}");
    assert_eq!(grown["live_rows"].as_u64(), Some(1), "{grown}");
    let head = grown["anchor"].as_str().unwrap().to_owned();

    // A removed segment is found by both.
    let (_, _, path) = &segments[0];
    let saved = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    let broken = call(addr, "GET", "/audit/verify", Some(&admin), None)
        .await
        .json();
    assert_eq!(broken["intact"], false, "{broken}");
    let (ok, out) = report_audit(&app, slug, None).await;
    assert!(!ok, "{out}");
    assert!(out.contains("CHAIN BROKEN"), "{out}");
    std::fs::write(path, saved).unwrap();
    let (ok, out) = report_audit(&app, slug, Some(&head)).await;
    assert!(ok, "{out}");
    app.running.stop().await.unwrap();
}
