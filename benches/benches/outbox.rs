//! The cost of the transactional outbox and of webhook signatures, against
//! baselines in the same run.
//!
//! Run: `scripts/bench --bench outbox` (starts the throwaway PostgreSQL).
//!
//! - `outbox_write/{pg,sqlite}_update` (**baseline**): a tenant record
//!   change (settings patch) through the tenant store, one transaction.
//! - `outbox_write/{pg,sqlite}_update_with_message`: the same change with a
//!   message emitted into the outbox in that transaction
//!   (`TenantUpdate::emit`).
//! - `webhook/hmac_sha256` (**baseline**): HMAC-SHA256 of a 512-byte body
//!   with the `hmac` crate, what a hand-written signer computes.
//! - `webhook/sign`, `webhook/verify_signature`: `tenancy_core::webhook`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stdout
)]

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tenancy_core::outbox::OutboxMessage;
use tenancy_core::store::{TenantUpdate, TenantWriter};
use tenancy_core::webhook::{WebhookSecret, WebhookVerifier, sign};
use tenancy_core::{Tenant, TenantId};
use tenancy_sqlx::sqlite::SqliteControl;
use tenancy_sqlx::{PgTenantStore, migrate};
use tenancy_testkit::TestDb;

fn tenant(slug: &str) -> Tenant {
    let id = TenantId::new_v4();
    let slug = format!("{slug}-{}", &id.to_string()[..8]);
    Tenant::new(id, slug.parse().unwrap(), &slug)
}

fn update(t: &Tenant, n: u64, message: bool) -> TenantUpdate {
    let u = TenantUpdate::new().settings_patch(serde_json::json!({ "n": n }));
    if message {
        u.emit(OutboxMessage::new(
            t.id,
            "bench",
            "settings.changed",
            serde_json::json!({ "n": n }),
        ))
    } else {
        u
    }
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pg, sqlite, _dir) = rt.block_on(async {
        let env = TestDb::from_env().unwrap();
        let owner = env.owner_pool(2).await.unwrap();
        migrate::run(&mut owner.acquire().await.unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let control = SqliteControl::open(dir.path().join("c.sqlite3"))
            .await
            .unwrap();
        (PgTenantStore::new(owner), control.tenants(), dir)
    });
    let mut group = c.benchmark_group("outbox_write");
    for (name, store) in [
        ("pg", &pg as &dyn TenantWriter),
        ("sqlite", &sqlite as &dyn TenantWriter),
    ] {
        let t = tenant(name);
        rt.block_on(store.create(&t)).unwrap();
        for (suffix, message) in [("update", false), ("update_with_message", true)] {
            let mut n = 0u64;
            group.bench_function(format!("{name}_{suffix}"), |b| {
                b.iter(|| {
                    n += 1;
                    rt.block_on(store.update(t.id, &update(&t, n, message)))
                        .unwrap();
                });
            });
        }
    }
    group.finish();
}

fn signatures(c: &mut Criterion) {
    let key = vec![7u8; 32];
    let secret = WebhookSecret::new(key.clone()).unwrap();
    let verifier = WebhookVerifier::new(secret.clone());
    let body = vec![b'x'; 512];
    let now = chrono::Utc::now();
    let header = sign(&secret, "0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11", now, &body);
    let mut group = c.benchmark_group("webhook");
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(&body);
            std::hint::black_box(mac.finalize().into_bytes());
        });
    });
    group.bench_function("sign", |b| {
        b.iter(|| {
            std::hint::black_box(sign(
                &secret,
                "0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11",
                now,
                &body,
            ))
        });
    });
    group.bench_function("verify_signature", |b| {
        b.iter(|| {
            verifier
                .verify_signature_at(
                    Some(&header),
                    Some("0b7d7c1e-3b1c-4c55-9d8e-2f6f0d8d1a11"),
                    &body,
                    now,
                )
                .unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, writes, signatures);
criterion_main!(benches);
