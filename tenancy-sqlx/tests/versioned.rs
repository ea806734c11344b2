//! Versioned, field-level tenant writes: the same behaviour table
//! (`tenancy_testkit::store::versioned_writes`) over the in-memory store,
//! PostgreSQL and the SQLite control database — and over a store that
//! saves whole records as read (the behaviour before versions), which the
//! table must catch.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tenancy_core::store::{
    InMemoryTenantStore, TenantStore, TenantUpdate, TenantWriter, WriteError,
};
use tenancy_core::{DomainName, StoreError, Tenant, TenantId, TenantSlug};
use tenancy_sqlx::PgTenantStore;
use tenancy_testkit::TestDb;
use tenancy_testkit::store::{WRITERS, versioned_writes};

fn emit(path: &str, acked: usize, refused: usize) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout().lock(),
        "versioned-writes: path={path} writers={WRITERS} acknowledged={acked} refused={refused} lost=0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_keeps_every_acknowledged_change() {
    let r = versioned_writes(Arc::new(InMemoryTenantStore::new()), "mem")
        .await
        .unwrap();
    emit("memory", r.acknowledged, r.refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_keeps_every_acknowledged_change() {
    let env = TestDb::from_env().unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    tenancy_sqlx::migrate::run(&mut owner.acquire().await.unwrap())
        .await
        .unwrap();
    let store = PgTenantStore::new(env.owner_pool(8).await.unwrap());
    let r = versioned_writes(Arc::new(store), "pg").await.unwrap();
    emit("postgres", r.acknowledged, r.refused);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_control_keeps_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let control = tenancy_sqlx::sqlite::SqliteControl::open(dir.path().join("control.sqlite3"))
        .await
        .unwrap();
    let r = versioned_writes(Arc::new(control.tenants()), "sqlite")
        .await
        .unwrap();
    emit("sqlite", r.acknowledged, r.refused);
}

/// The broken twin: reads the record, then writes the whole record back as
/// it read it plus the change (what handlers did before versions).
struct WholeRecordSave(InMemoryTenantStore);

#[async_trait]
impl TenantStore for WholeRecordSave {
    async fn by_id(&self, id: TenantId) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.0.by_id(id).await
    }
    async fn by_slug(&self, slug: &TenantSlug) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.0.by_slug(slug).await
    }
    async fn by_domain(&self, domain: &DomainName) -> Result<Option<Arc<Tenant>>, StoreError> {
        self.0.by_domain(domain).await
    }
}

#[async_trait]
impl TenantWriter for WholeRecordSave {
    async fn create(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.0.create(tenant).await
    }
    async fn update(&self, id: TenantId, update: &TenantUpdate) -> Result<Arc<Tenant>, WriteError> {
        let copy = self.0.by_id(id).await?.ok_or(WriteError::NotFound(id))?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut next = update.apply_to(&copy, chrono::Utc::now())?;
        next.version = copy.version; // insert stores it at 1 again: keep the count honest
        self.0.remove(id);
        self.0.insert(next).map_err(WriteError::from)?;
        self.0.by_id(id).await?.ok_or(WriteError::NotFound(id))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_table_catches_a_store_that_saves_whole_records() {
    let err = versioned_writes(
        Arc::new(WholeRecordSave(InMemoryTenantStore::new())),
        "twin",
    )
    .await
    .unwrap_err();
    println!("versioned-writes-control: path=whole-record-save detected=\"{err}\"");
}
