//! Data-subject rights: a customer forgotten on request never decrypts
//! again — read as the superuser from the stored bytes, and from a copy of
//! the database taken before the erasure — while the tenant's other
//! customers and the forgotten customer's financial records stay; and the
//! subject-access export returns everything stored about one customer.
//! The command line does the same for operators.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[macro_use]
mod common;

use std::sync::Arc;

use common::{App, Backend, assert_problem, call, login, start, tenant};
use serde_json::{Value, json};
use tenancy_core::crypto::subject::{SubjectId, SubjectKeys};
use tenancy_core::crypto::{CryptoError, from_text};
use tenancy_sqlx::sqlite::SqliteSubjectKeyStore;

on_both_backends!(a_forgotten_customer_never_decrypts_again);

/// The stored ciphertexts of a customer (pan, phone, medical history) and
/// their names, read past the application: as the superuser on PostgreSQL,
/// from the tenant's file on SQLite.
async fn stored(app: &App, tenant: tenancy_core::TenantId, id: &str) -> Value {
    let sql = "SELECT first_name, last_name, email, pan_enc, phone_enc, medical_history_enc, \
               pan_index, erased_at FROM customers WHERE id = $1";
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
        Option<String>,
    );
    let row: Row = match &app.pg {
        Some(pg) => {
            let admin = sqlx::PgPool::connect(&pg.admin_url).await.unwrap();
            let uuid: uuid::Uuid = id.parse().unwrap();
            let r = sqlx::query_as(&sql.replace("erased_at FROM", "erased_at::text FROM"))
                .bind(uuid)
                .fetch_one(&admin)
                .await
                .unwrap();
            admin.close().await;
            r
        }
        None => {
            let file = app._dir.path().join("tenants").join(format!(
                "{}.sqlite3",
                tenancy_core::Placement::name_for(tenant)
            ));
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&file)
                    .busy_timeout(std::time::Duration::from_secs(5)),
            )
            .await
            .unwrap();
            let r = sqlx::query_as(sql).bind(id).fetch_one(&pool).await.unwrap();
            pool.close().await;
            r
        }
    };
    json!({
        "first_name": row.0, "last_name": row.1, "email": row.2,
        "pan_enc": row.3, "phone_enc": row.4, "medical_history_enc": row.5,
        "pan_index": row.6.map(|b| b.len()), "erased_at": row.7,
    })
}

/// Subject keys over the app's live tenant keys, with the vault at `vault`.
async fn subject_keys(app: &App, vault: &std::path::Path) -> SubjectKeys {
    SubjectKeys::new(
        app.running.data.keyring_shared(),
        Arc::new(SqliteSubjectKeyStore::open(vault).await.unwrap()),
    )
}

async fn decrypt_copy(
    keys: &SubjectKeys,
    tenant: tenancy_core::TenantId,
    id: &str,
    copy: &Value,
) -> Vec<Result<String, CryptoError>> {
    let subject = SubjectId::new(format!("customer:{id}")).unwrap();
    let mut out = Vec::new();
    for field in ["pan", "phone", "medical_history"] {
        let text = copy[format!("{field}_enc")].as_str().unwrap();
        let ct = from_text(text).unwrap();
        let context = format!("customers.{field}:{id}");
        out.push(
            keys.decrypt(tenant, &subject, context.as_bytes(), &ct)
                .await
                .map(|p| p.as_str().unwrap().to_owned()),
        );
    }
    out
}

async fn a_forgotten_customer_never_decrypts_again(backend: Backend) {
    let app = start(backend).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    let sunrise = tenant(&app, "sunrise-insurance").await.id;

    let create = |first: &str, pan: &str, phone: &str| {
        json!({"first_name": first, "last_name": "Iyer", "email": format!("{}@example.test", first.to_lowercase()),
               "customer_type": "individual",
               "sensitive": {"pan": pan, "phone": phone, "medical_history": format!("{first}: asthma since 2001")}})
    };
    let x = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(create("Meera", "MEERA1234Z", "+919812345678")),
    )
    .await;
    assert_eq!(x.status, 201, "{}", x.text());
    let x = x.json()["id"].as_str().unwrap().to_owned();
    let y = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(create("Yogesh", "YOGES5678K", "+919800000001")),
    )
    .await;
    assert_eq!(y.status, 201, "{}", y.text());
    let y = y.json()["id"].as_str().unwrap().to_owned();
    let quote = call(
        addr,
        "POST",
        "/policies",
        Some(&agent),
        Some(json!({
            "policy_number": "SUN-ERASE-1", "product": "Term Life 20", "customer_id": x,
            "sum_assured_minor": 500_000_000, "premium_minor": 1_234_567, "premium_frequency": "monthly",
            "term_years": 20
        })),
    )
    .await;
    assert_eq!(quote.status, 201, "{}", quote.text());
    let policy = quote.json()["id"].as_str().unwrap().to_owned();
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

    // Only tenant admins may export or forget.
    assert_problem(
        &call(
            addr,
            "GET",
            &format!("/customers/{x}/export"),
            Some(&agent),
            None,
        )
        .await,
        403,
        "app.forbidden",
    );
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/customers/{x}/forget"),
            Some(&agent),
            None,
        )
        .await,
        403,
        "app.forbidden",
    );

    // Subject access: everything about Meera, decrypted.
    let export = call(
        addr,
        "GET",
        &format!("/customers/{x}/export"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(export.status, 200, "{}", export.text());
    let export = export.json();
    assert_eq!(export["format"], "insurance-agent/subject-access/v1");
    assert_eq!(export["subject"], format!("customer:{x}"));
    assert_eq!(export["customer"]["first_name"], "Meera");
    assert_eq!(export["customer"]["sensitive"]["pan"], "MEERA1234Z");
    assert_eq!(export["customer"]["sensitive"]["phone"], "+919812345678");
    assert_eq!(export["policies"].as_array().unwrap().len(), 1);
    let payments = export["payments"].as_array().unwrap().len();
    assert!(payments >= 1, "{export}");
    assert_eq!(export["access_log"][0]["action"], "create", "{export}");
    assert!(export["erased_at"].is_null());

    // What a backup taken now holds: the row as stored, and (for the
    // control below) the subject-key vault as it is now.
    let before = stored(&app, sunrise, &x).await;
    assert_eq!(before["first_name"], "Meera");
    let vault = app._dir.path().join("subject-keys.sqlite3");
    let old_vault = tempfile::tempdir().unwrap();
    let old_vault = old_vault.path().join("subject-keys.sqlite3");
    std::fs::copy(&vault, &old_vault).unwrap();

    let started = std::time::Instant::now();
    let forgot = call(
        addr,
        "POST",
        &format!("/customers/{x}/forget"),
        Some(&admin),
        None,
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(forgot.status, 200, "{}", forgot.text());
    let forgot = forgot.json();
    assert_eq!(forgot["destroyed_key"], true, "{forgot}");
    assert_eq!(forgot["already_erased"], false);
    assert_eq!(forgot["policies_kept"], 1);
    assert_eq!(forgot["payments_kept"].as_u64().unwrap() as usize, payments);
    #[allow(clippy::print_stdout)]
    {
        println!("forget over HTTP ({backend:?}): {} ms", elapsed.as_millis());
    }
    // Again: harmless, and said so.
    let again = call(
        addr,
        "POST",
        &format!("/customers/{x}/forget"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["already_erased"], true);
    assert_eq!(again.json()["destroyed_key"], false);
    assert_eq!(again.json()["erased_at"], forgot["erased_at"]);

    // Stored bytes, read past the application.
    let after = stored(&app, sunrise, &x).await;
    assert_eq!(after["first_name"], "[erased]", "{after}");
    assert_eq!(after["last_name"], "[erased]");
    for col in [
        "email",
        "pan_enc",
        "phone_enc",
        "medical_history_enc",
        "pan_index",
    ] {
        assert!(after[col].is_null(), "{col} survived: {after}");
    }
    assert!(after["erased_at"].is_string(), "{after}");

    // The copy taken before: its ciphertexts no longer open with the live
    // keys — through the running app's subject keys or fresh ones.
    for r in decrypt_copy(app.running.data.subjects(), sunrise, &x, &before).await {
        assert_eq!(r, Err(CryptoError::SubjectErased));
    }
    let live = subject_keys(&app, &vault).await;
    for r in decrypt_copy(&live, sunrise, &x, &before).await {
        assert_eq!(r, Err(CryptoError::SubjectErased));
    }
    // Control: with the subject keys as they were before the erasure (the
    // vault copied earlier), the same copy opens. The key's destruction is
    // what stands between a backup and Meera's data.
    let old = subject_keys(&app, &old_vault).await;
    let opened: Vec<String> = decrypt_copy(&old, sunrise, &x, &before)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(opened[0], "MEERA1234Z");

    // The blind index no longer matches; the record is gone from reads.
    let by_pan = call(addr, "GET", "/customers?pan=MEERA1234Z", Some(&admin), None).await;
    assert_eq!(by_pan.json()["total"], 0, "{}", by_pan.text());
    assert_problem(
        &call(addr, "GET", &format!("/customers/{x}"), Some(&admin), None).await,
        404,
        "app.not-found",
    );
    // The rest of the tenant is untouched: Yogesh decrypts and is found.
    let yogesh = call(addr, "GET", &format!("/customers/{y}"), Some(&admin), None).await;
    assert_eq!(yogesh.status, 200, "{}", yogesh.text());
    assert_eq!(yogesh.json()["sensitive"]["pan"], "YOGES5678K");
    assert_eq!(
        call(addr, "GET", "/customers?pan=YOGES5678K", Some(&admin), None)
            .await
            .json()["total"],
        1
    );
    // The financial records stay.
    let p = call(
        addr,
        "GET",
        &format!("/policies/{policy}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["sum_assured_minor"], 500_000_000);

    // The export after: redacted values, the financial records, the log.
    let export = call(
        addr,
        "GET",
        &format!("/customers/{x}/export"),
        Some(&admin),
        None,
    )
    .await
    .json();
    assert_eq!(export["customer"]["first_name"], "[erased]");
    assert_eq!(export["customer"]["sensitive"], json!({}), "{export}");
    assert!(export["customer"]["email"].is_null());
    assert_eq!(export["erased_at"], forgot["erased_at"]);
    assert_eq!(export["active"], false);
    assert_eq!(export["policies"].as_array().unwrap().len(), 1);
    assert_eq!(export["payments"].as_array().unwrap().len(), payments);
    let actions: Vec<&str> = export["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "erase").count(),
        2,
        "{actions:?}"
    );
    assert!(actions.contains(&"export"), "{actions:?}");
    assert!(!export.to_string().contains("Meera"), "{export}");

    // The tenant's audit log has the erasure, by the admin.
    let audit = call(addr, "GET", "/audit?action=erase", Some(&admin), None)
        .await
        .json();
    let event = &audit["items"][0]["event"];
    assert_eq!(event["resource_id"], x, "{audit}");
    assert_eq!(event["details"]["destroyed_key"], false, "{audit}"); // newest: the repeat

    // Unknown customers: 404, nothing erased.
    let nobody = uuid::Uuid::new_v4();
    assert_problem(
        &call(
            addr,
            "POST",
            &format!("/customers/{nobody}/forget"),
            Some(&admin),
            None,
        )
        .await,
        404,
        "app.not-found",
    );
    app.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_forget_and_export_from_the_command_line() {
    let app = start(Backend::Sqlite).await;
    let addr = app.running.addr;
    let agent = login(addr, "agent@sunrise.test", "sunrise-insurance").await;
    let c = call(
        addr,
        "POST",
        "/customers",
        Some(&agent),
        Some(
            json!({"first_name": "Kavya", "last_name": "Nair", "customer_type": "individual",
                    "sensitive": {"pan": "KAVYA4321N"}}),
        ),
    )
    .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let id = c.json()["id"].as_str().unwrap().to_owned();
    let data_dir = app._dir.path().to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        let data_dir = data_dir.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_insurance-agent"))
                .env("INSURANCE_DATA_DIR", &data_dir)
                .env_remove("DATABASE_URL")
                .env_remove("DATABASE_OWNER_URL")
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("kavya.json");
    let export = run(args(&format!(
        "customer export sunrise-insurance {id} --operator dpo --out {}",
        file.display()
    )))
    .await;
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let json: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["customer"]["sensitive"]["pan"], "KAVYA4321N");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the export is readable by others: {mode:o}"
        );
    }
    // An existing file is never overwritten.
    let again = run(args(&format!(
        "customer export sunrise-insurance {id} --operator dpo --out {}",
        file.display()
    )))
    .await;
    assert!(!again.status.success());
    let bad = run(args(
        "customer forget sunrise-insurance not-a-uuid --operator dpo",
    ))
    .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a customer id"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let forget = run(args(&format!(
        "customer forget sunrise-insurance {id} --operator dpo"
    )))
    .await;
    let stdout = String::from_utf8_lossy(&forget.stdout);
    assert!(
        forget.status.success(),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    assert!(stdout.contains("key destroyed: true"), "{stdout}");
    // The server sees it at once: the search no longer finds Kavya.
    let admin = login(addr, "admin@sunrise.test", "sunrise-insurance").await;
    assert_eq!(
        call(addr, "GET", "/customers?pan=KAVYA4321N", Some(&admin), None)
            .await
            .json()["total"],
        0
    );
    let audit = call(addr, "GET", "/audit?action=erase", Some(&admin), None)
        .await
        .json();
    assert_eq!(
        audit["items"][0]["event"]["actor"]["id"], "operator:dpo",
        "{audit}"
    );
    app.running.stop().await.unwrap();
}
