//! `LocalKeyProvider::persistent` shared by several processes: KEKs one
//! process creates are used (not replaced) by the others, and a tenant
//! shredded by one process stays shredded — a running process holding its
//! KEK never writes it back, and a copy of the wrapped data keys taken
//! before the purge never unwraps again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;

use base64::Engine as _;
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{KeyProvider, LocalKeyProvider};

fn master() -> zeroize::Zeroizing<[u8; 32]> {
    zeroize::Zeroizing::new([9u8; 32])
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Runs one operation in a child process (this test binary, `kek_worker`).
fn in_other_process(path: &std::path::Path, op: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kek_worker", "--ignored", "--nocapture"])
        .env("KEK_WORKER_PATH", path)
        .env("KEK_WORKER_OP", op)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "worker failed: {stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("kek-worker: "))
        .unwrap_or_default()
        .to_owned()
}

/// The other process: `generate:<tenant>` prints the wrapped key,
/// `destroy:<tenant>` shreds the tenant's KEKs, `unwrap:<tenant>:<b64>`
/// prints `ok` or the error.
#[tokio::test]
#[ignore = "worker for the tests below; runs as a child process"]
async fn kek_worker() {
    let path = std::env::var("KEK_WORKER_PATH").unwrap();
    let op = std::env::var("KEK_WORKER_OP").unwrap();
    let p = LocalKeyProvider::persistent(master(), &path).unwrap();
    let mut parts = op.split(':');
    let (verb, tenant) = (parts.next().unwrap(), parts.next().unwrap());
    let tenant: TenantId = tenant.parse().unwrap();
    let answer = match verb {
        "generate" => b64(&p.generate(tenant).await.unwrap().1),
        "destroy" => {
            p.destroy(tenant).await.unwrap();
            "destroyed".to_owned()
        }
        "unwrap" => {
            let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts.next().unwrap())
                .unwrap();
            match p.unwrap(tenant, &wrapped).await {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("refused: {e}"),
            }
        }
        other => panic!("unknown op {other}"),
    };
    println!("kek-worker: {answer}");
}

#[tokio::test]
async fn a_kek_created_by_another_process_is_used_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keks.json");
    // This process is running (it has opened the file) before the other
    // creates the tenant's KEK.
    let here = LocalKeyProvider::persistent(master(), &path).unwrap();
    let tenant = TenantId::new_v4();
    let theirs = in_other_process(&path, &format!("generate:{tenant}"));
    let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(theirs)
        .unwrap();
    // Keys wrapped there unwrap here, and keys wrapped here unwrap there:
    // one KEK, not two.
    here.unwrap(tenant, &theirs).await.unwrap();
    let (_, mine) = here.generate(tenant).await.unwrap();
    assert_eq!(&mine[..4], &theirs[..4], "the same KEK version");
    assert_eq!(
        in_other_process(&path, &format!("unwrap:{tenant}:{}", b64(&mine))),
        "ok"
    );
    // And after other tenants' changes made here, theirs still unwraps there.
    here.generate(TenantId::new_v4()).await.unwrap();
    assert_eq!(
        in_other_process(&path, &format!("unwrap:{tenant}:{}", b64(&theirs))),
        "ok"
    );
}

#[tokio::test]
async fn a_tenant_shredded_by_another_process_stays_shredded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keks.json");
    let server = LocalKeyProvider::persistent(master(), &path).unwrap();
    let (victim, other) = (TenantId::new_v4(), TenantId::new_v4());
    // The running server has used the victim's KEK (and holds the wrapped
    // data key, as a copy of the database taken before the purge would).
    let (_, before_purge) = server.generate(victim).await.unwrap();
    server.unwrap(victim, &before_purge).await.unwrap();
    // The command line purges it.
    assert_eq!(
        in_other_process(&path, &format!("destroy:{victim}")),
        "destroyed"
    );
    // The server keeps encrypting for other tenants — each a write of the
    // file — and never writes the victim's KEK back.
    for _ in 0..3 {
        server.generate(other).await.unwrap();
        server.rotate_kek(TenantId::new_v4()).await.unwrap();
    }
    assert!(server.unwrap(victim, &before_purge).await.is_err());
    assert!(
        in_other_process(&path, &format!("unwrap:{victim}:{}", b64(&before_purge)))
            .starts_with("refused"),
    );
    let restarted = LocalKeyProvider::persistent(master(), &path).unwrap();
    assert!(restarted.unwrap(victim, &before_purge).await.is_err());
    // A shredded tenant never gets a KEK again (nothing new can be
    // encrypted for it by mistake).
    assert!(server.generate(victim).await.is_err());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&victim.to_string()), "tombstone kept");
    assert!(
        !text.contains(&format!("\"{victim}\": {{")),
        "no KEK entry for the shredded tenant: {text}"
    );
}
