//! The shared isolation property suite over `TenantDb`, as the application role.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_sqlx::TenantDb;
use tenancy_sqlx::rls::{ApplyTenantTable, TenantTable};
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, Row, TABLES, Target};
use uuid::Uuid;

struct SqlxTarget {
    db: TenantDb,
    admin: PgPool,
    schema: String,
}

impl SqlxTarget {
    fn table(&self, t: usize) -> String {
        format!("\"{}\".\"{}\"", self.schema, TABLES[t])
    }
}

type R = (Uuid, Uuid, i64);
fn row((tenant_id, id, value): R) -> Row {
    Row {
        tenant_id,
        id,
        value,
    }
}

#[async_trait]
impl Target for SqlxTarget {
    async fn insert(&self, ctx: &TenantContext, table: usize, r: Row) -> Result<(), String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, id, value) VALUES ($1, $2, $3)",
            self.table(table)
        ))
        .bind(r.tenant_id)
        .bind(r.id)
        .bind(r.value)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }

    async fn select_all(&self, ctx: &TenantContext, table: usize) -> Result<Vec<Row>, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let rows: Vec<R> = sqlx::query_as(&format!(
            "SELECT tenant_id, id, value FROM {}",
            self.table(table)
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn select_one(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
    ) -> Result<Option<Row>, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let r: Option<R> = sqlx::query_as(&format!(
            "SELECT tenant_id, id, value FROM {} WHERE id = $1",
            self.table(table)
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(r.map(row))
    }

    async fn update(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
        value: i64,
    ) -> Result<u64, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let n = sqlx::query(&format!(
            "UPDATE {} SET value = $2 WHERE id = $1",
            self.table(table)
        ))
        .bind(id)
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?
        .rows_affected();
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn delete(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<u64, String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let n = sqlx::query(&format!("DELETE FROM {} WHERE id = $1", self.table(table)))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?
            .rows_affected();
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn oracle(&self, table: usize) -> Result<Vec<Row>, String> {
        let rows: Vec<R> = sqlx::query_as(&format!(
            "SELECT tenant_id, id, value FROM {}",
            self.table(table)
        ))
        .fetch_all(&self.admin)
        .await
        .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(row).collect())
    }
}

/// Creates the suite's tables in a fresh schema, isolated with `TenantTable`.
pub async fn setup(db: &TestDb) -> String {
    let schema = db.fresh_schema("iso").await.unwrap();
    let owner = db.owner_pool(1).await.unwrap();
    let mut conn = owner.acquire().await.unwrap();
    for stmt in isolation::create_tables_sql(&schema) {
        sqlx::query(&stmt).execute(&mut *conn).await.unwrap();
    }
    for t in TABLES {
        TenantTable::new(t)
            .schema(&schema)
            .index_on(["id"])
            .grant_to("tenancy_app")
            .apply(&mut conn)
            .await
            .unwrap();
    }
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolation_property_suite_over_tenant_db() {
    let env = TestDb::from_env().unwrap();
    let schema = setup(&env).await;
    // Fewer connections than tenants: physical connections are shared.
    let pool = TenantDb::pool_options()
        .max_connections(4)
        .connect(&env.app_url)
        .await
        .unwrap();
    let target = Arc::new(SqlxTarget {
        db: TenantDb::new(pool),
        admin: env.admin_pool(2).await.unwrap(),
        schema,
    });
    let tenants: Vec<TenantContext> = (0..8)
        .map(|i| {
            TenantContext::new(Tenant::new(
                TenantId::new_v4(),
                format!("iso-{i}").parse().unwrap(),
                "iso",
            ))
        })
        .collect();
    let config = isolation::Config::from_env();
    let report = isolation::run(target, &tenants, &config).await;
    report.assert_clean(&config, "sqlx");
}

/// Negative control: the same suite against tables *without* row-level
/// security must report leaks, or the suite proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_detects_a_data_path_without_rls() {
    let env = TestDb::from_env().unwrap();
    let schema = env.fresh_schema("iso_broken").await.unwrap();
    let owner = env.owner_pool(1).await.unwrap();
    for stmt in isolation::create_tables_sql(&schema) {
        sqlx::query(&stmt).execute(&owner).await.unwrap();
    }
    for t in TABLES {
        sqlx::query(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".\"{t}\" TO tenancy_app"
        ))
        .execute(&owner)
        .await
        .unwrap();
    }
    let pool = TenantDb::pool_options()
        .max_connections(2)
        .connect(&env.app_url)
        .await
        .unwrap();
    let target = Arc::new(SqlxTarget {
        db: TenantDb::new(pool),
        admin: env.admin_pool(1).await.unwrap(),
        schema,
    });
    let tenants: Vec<TenantContext> = (0..3)
        .map(|i| {
            TenantContext::new(Tenant::new(
                TenantId::new_v4(),
                format!("broken-{i}").parse().unwrap(),
                "b",
            ))
        })
        .collect();
    let config = isolation::Config {
        ops: 1500,
        seed: 42,
    };
    let report = isolation::run(target, &tenants, &config).await;
    assert!(
        report.leaks > 0,
        "the suite missed a data path without RLS: {report}"
    );
}
