//! Nonce budgets shared by processes: two processes encrypting for one
//! tenant through one key store (PostgreSQL as the application role, or a
//! SQLite control file) never encrypt more than the budget under any key
//! version, and rotate exactly once at each boundary. The broken twin counts
//! per process, as a keyring without shared reservations would: the two
//! processes then exceed the budget.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{KeyState, KeyStore, Keyring, LocalKeyProvider, StoredKey};
use tenancy_core::crypto::{CryptoError, key_version};
use tenancy_sqlx::sqlite::SqliteControl;
use tenancy_sqlx::{PgKeyStore, TenantDb, migrate};
use tenancy_testkit::TestDb;

// 25 blocks per version: small enough that two processes rotate several
// versions together, large enough that a task cannot lose eight rotations
// in a row to the other process on a loaded machine (with 6 blocks per
// version it sometimes did: NonceBudgetExhausted, a starvation only such a
// tiny budget allows).
const BUDGET: u64 = 400;
const BLOCK: u64 = 16;
const PER_PROCESS: u64 = 3_000;

/// The broken twin: each process grants itself nonces up to the budget from
/// its own count, sharing nothing (the store only holds the keys).
struct PerProcessCounts {
    inner: Arc<dyn KeyStore>,
    counts: Mutex<BTreeMap<u32, u64>>,
}

#[async_trait]
impl KeyStore for PerProcessCounts {
    async fn keys(&self, t: TenantId) -> Result<Vec<StoredKey>, CryptoError> {
        self.inner.keys(t).await
    }
    async fn insert(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.insert(k).await
    }
    async fn update(&self, k: StoredKey) -> Result<(), CryptoError> {
        self.inner.update(k).await
    }
    async fn reserve(
        &self,
        _t: TenantId,
        version: u32,
        block: u64,
        limit: u64,
    ) -> Result<u64, CryptoError> {
        let mut counts = self.counts.lock().unwrap();
        let used = counts.entry(version).or_default();
        let granted = block.min(limit - *used);
        *used += granted;
        Ok(granted)
    }
    async fn rotate(&self, retire: u32, next: StoredKey) -> Result<bool, CryptoError> {
        self.inner.rotate(retire, next).await
    }
}

async fn store_for(backend: &str, target: &str) -> Arc<dyn KeyStore> {
    if backend == "pg" {
        let env = TestDb::from_env().unwrap();
        let db = TenantDb::connect(&env.app_url, env.seal_key().await.unwrap())
            .await
            .unwrap();
        Arc::new(PgKeyStore::new(db))
    } else {
        Arc::new(SqliteControl::open(target).await.unwrap().keys())
    }
}

/// One process: waits for the common start, then encrypts `PER_PROCESS`
/// values from 4 tasks and prints how many it made under each key version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker for the tests below; runs as a child process"]
async fn nonce_worker() {
    let var = |k: &str| std::env::var(k).unwrap();
    let (backend, target, kek_file) = (var("NW_BACKEND"), var("NW_TARGET"), var("NW_KEKS"));
    let tenant: TenantId = var("NW_TENANT").parse().unwrap();
    let start: u64 = var("NW_START_MS").parse().unwrap();
    let mut store = store_for(&backend, &target).await;
    if var("NW_SHARED") == "no" {
        store = Arc::new(PerProcessCounts {
            inner: store,
            counts: Mutex::default(),
        });
    }
    let provider =
        LocalKeyProvider::persistent(zeroize::Zeroizing::new([5u8; 32]), &kek_file).unwrap();
    let keys = Arc::new(
        Keyring::new(Arc::new(provider), store)
            .with_rotation_after(BUDGET)
            .with_nonce_block(BLOCK),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(start.saturating_sub(now))).await;
    let made = Arc::new(Mutex::new(BTreeMap::<u32, u64>::new()));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (keys, made, done) = (keys.clone(), made.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.fetch_add(1, Ordering::SeqCst) < PER_PROCESS {
                let sealed = keys.encrypt(tenant, b"c", b"value").await.unwrap();
                let v = key_version(&sealed).unwrap();
                *made.lock().unwrap().entry(v).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let made = made.lock().unwrap();
    let line: Vec<String> = made.iter().map(|(v, n)| format!("{v}={n}")).collect();
    println!("nonce-worker: {}", line.join(" "));
}

fn spawn_worker(backend: &str, target: &str, keks: &str, tenant: TenantId, shared: bool) -> Child {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2_000;
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "nonce_worker", "--ignored", "--nocapture"])
        .env("NW_BACKEND", backend)
        .env("NW_TARGET", target)
        .env("NW_KEKS", keks)
        .env("NW_TENANT", tenant.to_string())
        .env("NW_START_MS", start.to_string())
        .env("NW_SHARED", if shared { "yes" } else { "no" })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn histogram(child: Child) -> BTreeMap<u32, u64> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "worker failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("nonce-worker: "))
        .unwrap_or_else(|| panic!("no result from the worker: {stdout}"));
    line.split_whitespace()
        .map(|pair| {
            let (v, n) = pair.split_once('=').unwrap();
            (v.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

struct Outcome {
    /// Values encrypted under each version, by both processes together.
    total: BTreeMap<u32, u64>,
    /// Versions both processes encrypted under (they really overlapped).
    shared_versions: usize,
    keys: Vec<StoredKey>,
}

async fn two_processes(backend: &str, target: &str, shared: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let keks = dir.path().join("keks.json");
    let keks = keks.to_str().unwrap();
    let tenant = TenantId::new_v4();
    let a = spawn_worker(backend, target, keks, tenant, shared);
    let b = spawn_worker(backend, target, keks, tenant, shared);
    let (a, b) = (histogram(a), histogram(b));
    let mut total = a.clone();
    for (v, n) in &b {
        *total.entry(*v).or_default() += n;
    }
    let shared_versions = a.keys().filter(|v| b.contains_key(v)).count();
    let keys = store_for(backend, target)
        .await
        .keys(tenant)
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.version > 0)
        .collect();
    Outcome {
        total,
        shared_versions,
        keys,
    }
}

#[allow(clippy::print_stdout)] // the figures go in the test log
fn assert_budget_held(backend: &str, o: &Outcome) {
    let made: u64 = o.total.values().sum();
    assert_eq!(
        made,
        2 * PER_PROCESS,
        "{backend}: every encryption succeeded"
    );
    assert!(
        o.shared_versions >= 2,
        "{backend}: the processes must really share key versions: {:?}",
        o.total
    );
    for (v, n) in &o.total {
        assert!(
            *n <= BUDGET,
            "{backend}: version {v} encrypted {n} values, budget {BUDGET}"
        );
    }
    // Versions 1..=V, one stored key each: no version skipped or made twice.
    let versions: Vec<u32> = o.keys.iter().map(|k| k.version).collect();
    let last = *versions.last().unwrap();
    assert_eq!(versions, (1..=last).collect::<Vec<_>>(), "{backend}");
    assert_eq!(
        o.total.keys().copied().collect::<Vec<_>>(),
        versions,
        "{backend}: every version made was used"
    );
    for k in &o.keys[..o.keys.len() - 1] {
        // Rotated exactly at the boundary: the budget was spent (reserved to
        // the last nonce), and at most one block per process went unused.
        assert_eq!(k.state, KeyState::Retired, "{backend}");
        assert_eq!(
            k.reserved, BUDGET,
            "{backend}: version {} rotated before its budget was spent",
            k.version
        );
        assert!(
            o.total[&k.version] >= BUDGET - 2 * BLOCK,
            "{backend}: version {} wasted more than a block per process: {}",
            k.version,
            o.total[&k.version]
        );
    }
    assert_eq!(o.keys.last().unwrap().state, KeyState::Primary);
    println!(
        "nonce-budget: {backend}: {made} values over {} versions, per version {:?}",
        versions.len(),
        o.total.values().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn two_processes_on_postgres_share_the_budget() {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    migrate::run(&mut conn).await.unwrap();
    migrate::grant_system_read(&mut conn, "tenancy_app")
        .await
        .unwrap();
    drop(conn);
    let o = two_processes("pg", "", true).await;
    assert_budget_held("postgres", &o);

    // The broken twin: per-process counts let both processes spend the
    // whole budget of a version.
    let twin = two_processes("pg", "", false).await;
    let over = twin.total.values().filter(|n| **n > BUDGET).count();
    println!("nonce-control: postgres per-process counts: {over} versions over budget");
    assert!(over > 0, "the twin must exceed: {:?}", twin.total);
}

#[tokio::test]
async fn two_processes_on_sqlite_share_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sqlite3");
    SqliteControl::open(&control).await.unwrap();
    let o = two_processes("sqlite", control.to_str().unwrap(), true).await;
    assert_budget_held("sqlite", &o);

    let twin = two_processes("sqlite", control.to_str().unwrap(), false).await;
    let over = twin.total.values().filter(|n| **n > BUDGET).count();
    println!("nonce-control: sqlite per-process counts: {over} versions over budget");
    assert!(over > 0, "the twin must exceed: {:?}", twin.total);
}

/// A control database made before nonce reservations (no `reserved`
/// column, the old change-log trigger) is upgraded when opened, and a
/// reservation is not announced as a key change.
#[tokio::test]
async fn an_older_sqlite_control_database_is_upgraded() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sqlite3");
    {
        let mut c =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE tenancy_tenant_keys (tenant_id TEXT NOT NULL, version INTEGER NOT NULL, \
             wrapped BLOB NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, \
             PRIMARY KEY (tenant_id, version));
             CREATE TABLE tenancy_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, \
             tenant_id TEXT NOT NULL, name TEXT);
             CREATE TRIGGER tenancy_keys_changed_upd AFTER UPDATE ON tenancy_tenant_keys \
             BEGIN INSERT INTO tenancy_changes (kind, tenant_id) VALUES ('key', NEW.tenant_id); END;",
        )
        .execute(&mut c)
        .await
        .unwrap();
    }
    let control = SqliteControl::open(&path).await.unwrap();
    // Twice, as two processes starting together would.
    SqliteControl::open(&path).await.unwrap();
    let keys = Keyring::new(
        Arc::new(LocalKeyProvider::new(zeroize::Zeroizing::new([5u8; 32]))),
        Arc::new(control.keys()),
    )
    .with_nonce_block(4);
    let t = TenantId::new_v4();
    for _ in 0..10 {
        keys.encrypt(t, b"c", b"v").await.unwrap();
    }
    let stored = control.keys().keys(t).await.unwrap();
    assert!(stored[0].reserved >= 10, "reserved {}", stored[0].reserved);
    let key_changes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy_changes WHERE kind = 'key'")
            .fetch_one(control.pool())
            .await
            .unwrap();
    assert_eq!(
        key_changes, 1,
        "the key's creation only, not its reservations"
    );
}
