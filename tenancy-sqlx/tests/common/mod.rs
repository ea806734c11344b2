//! The isolation suite's `Target` over `TenantDb`, shared by the test files
//! of each PostgreSQL isolation model.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::TenantContext;
use tenancy_sqlx::TenantDb;
use tenancy_testkit::isolation::{Row, TABLES, Target};
use uuid::Uuid;

/// Every operation through `TenantDb::begin`; the oracle reads as superuser.
pub struct SqlxTarget {
    /// The door under test.
    pub db: TenantDb,
    /// A superuser pool for the oracle.
    pub admin: PgPool,
    /// The schema that qualifies table names in queries; `None`: names are
    /// unqualified and the transaction's `search_path` decides (schema model).
    pub qualify: Option<String>,
    /// The schemas whose tables the oracle reads (one per tenant, or the shared one).
    pub oracle_schemas: Vec<String>,
    /// Database-per-tenant: superuser pools on each tenant database, whose
    /// `public` tables the oracle reads instead.
    pub oracle_databases: Vec<PgPool>,
}

impl SqlxTarget {
    fn table(&self, t: usize) -> String {
        match &self.qualify {
            Some(schema) => format!("\"{schema}\".\"{}\"", TABLES[t]),
            None => TABLES[t].to_owned(),
        }
    }
}

/// A suite row as sqlx decodes it.
pub type R = (Uuid, Uuid, i64);

/// The tuple as a suite row.
pub fn row((tenant_id, id, value): R) -> Row {
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
        let mut rows: Vec<R> = Vec::new();
        for db in &self.oracle_databases {
            let part: Vec<R> = sqlx::query_as(&format!(
                "SELECT tenant_id, id, value FROM public.\"{}\"",
                TABLES[table]
            ))
            .fetch_all(db)
            .await
            .map_err(|e| e.to_string())?;
            rows.extend(part);
        }
        if !self.oracle_schemas.is_empty() {
            let union = self
                .oracle_schemas
                .iter()
                .map(|s| {
                    format!(
                        "SELECT tenant_id, id, value FROM \"{s}\".\"{}\"",
                        TABLES[table]
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let part: Vec<R> = sqlx::query_as(&union)
                .fetch_all(&self.admin)
                .await
                .map_err(|e| e.to_string())?;
            rows.extend(part);
        }
        Ok(rows.into_iter().map(row).collect())
    }
}
