//! The isolation suite's `Target` over `TenantDb`, shared by the test files
//! of each PostgreSQL isolation model.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use async_trait::async_trait;
use sqlx::PgPool;
use tenancy_core::TenantContext;
use tenancy_sqlx::TenantDb;
use tenancy_testkit::isolation::{Attack, Row, TABLES, Target};
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
    /// Schema-per-tenant: each tenant's schema (for schema-qualified attacks).
    pub schemas: Vec<(Uuid, String)>,
    /// Named (cached) prepared statements; `false` behind pgbouncer in
    /// transaction mode, where clients share server connections.
    pub persistent: bool,
    /// The `qualify` schema holds `isolation::attack_fixtures_sql` (links
    /// tables, views, functions): foreign-key, view and function attacks run.
    pub fixtures: bool,
    /// A one-connection handle on the same database for temp-table
    /// shadowing: the attacker's transaction and the victim's next one are
    /// sure to share the connection.
    pub shadow: Option<TenantDb>,
    /// The suite's tenants (the victim's context for temp-table shadowing;
    /// a tenant not listed gets a shared placement).
    pub tenants: Vec<TenantContext>,
}

impl SqlxTarget {
    /// A target over `db` with everything else off.
    pub fn new(db: TenantDb, admin: PgPool) -> Self {
        Self {
            db,
            admin,
            qualify: None,
            oracle_schemas: Vec::new(),
            oracle_databases: Vec::new(),
            schemas: Vec::new(),
            persistent: true,
            fixtures: false,
            shadow: None,
            tenants: Vec::new(),
        }
    }

    /// `<schema>.<table><suffix>` for fixture objects.
    fn fixture(&self, t: usize, suffix: &str) -> Option<String> {
        let schema = self.qualify.as_ref().filter(|_| self.fixtures)?;
        Some(format!("\"{schema}\".\"{}{suffix}\"", TABLES[t]))
    }

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

/// Runs `sql` (simple protocol) inside `tx` under a savepoint; an error
/// rolls back to it and is returned.
fn guarded<'a>(
    tx: &'a mut tenancy_sqlx::TenantTx,
    sql: &'a str,
) -> futures_util::future::BoxFuture<'a, Result<Vec<R>, String>> {
    Box::pin(guarded_inner(tx, sql))
}

async fn guarded_inner(tx: &mut tenancy_sqlx::TenantTx, sql: &str) -> Result<Vec<R>, String> {
    use sqlx::Executor as _;
    (&mut **tx)
        .execute("SAVEPOINT attack")
        .await
        .map_err(|e| e.to_string())?;
    match (&mut **tx).fetch_all(sql).await {
        Ok(rows) => {
            use sqlx::Row as _;
            let mut out = Vec::new();
            for r in rows {
                if r.columns().len() == 3
                    && let (Ok(t), Ok(i), Ok(v)) = (r.try_get(0), r.try_get(1), r.try_get(2))
                {
                    out.push((t, i, v));
                }
            }
            Ok(out)
        }
        Err(e) => {
            (&mut **tx)
                .execute("ROLLBACK TO SAVEPOINT attack")
                .await
                .map_err(|e| e.to_string())?;
            Err(e.to_string())
        }
    }
}

/// `COPY … TO STDOUT` rows (text format, tab-separated).
fn copy_out<'a>(
    tx: &'a mut tenancy_sqlx::TenantTx,
    sql: &'a str,
) -> futures_util::future::BoxFuture<'a, Result<Vec<R>, String>> {
    Box::pin(copy_out_inner(tx, sql))
}

async fn copy_out_inner(tx: &mut tenancy_sqlx::TenantTx, sql: &str) -> Result<Vec<R>, String> {
    use futures_util::TryStreamExt;
    let mut stream = tx.copy_out_raw(sql).await.map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    while let Some(chunk) = stream.try_next().await.map_err(|e| e.to_string())? {
        text.extend_from_slice(&chunk);
    }
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let mut f = line.split('\t');
        let (Some(t), Some(i), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let (Ok(t), Ok(i), Ok(v)) = (t.parse(), i.parse(), v.parse()) {
            out.push((t, i, v));
        }
    }
    Ok(out)
}

impl SqlxTarget {
    /// The attacker plants a row (stamped with the victim's tenant, under a
    /// fresh id) in a temporary table named like the tenant table and
    /// commits; the victim's next transaction on the same connection reads
    /// the unqualified name. Planted rows the victim sees are returned.
    async fn temp_shadow(
        &self,
        shadow: &TenantDb,
        ctx: &TenantContext,
        table: usize,
        victim: Row,
    ) -> Result<Vec<Row>, String> {
        let bare = TABLES[table];
        let planted = Uuid::new_v4();
        let mut tx = shadow.begin(ctx).await.map_err(|e| e.to_string())?;
        let _ = guarded(
            &mut tx,
            &format!("CREATE TEMP TABLE {bare} (tenant_id uuid, id uuid, value bigint)"),
        )
        .await;
        let _ = guarded(
            &mut tx,
            &format!(
                "INSERT INTO pg_temp.{bare} VALUES ('{}', '{planted}', {})",
                victim.tenant_id, victim.value
            ),
        )
        .await;
        tx.commit().await.map_err(|e| e.to_string())?;
        // The victim, on the same (only) connection, with its tables on the
        // search path and an unqualified name, as application code writes it.
        let victim_ctx = match self
            .tenants
            .iter()
            .find(|t| t.tenant_id().as_uuid() == victim.tenant_id)
        {
            Some(t) => t.clone(),
            None => TenantContext::new(tenancy_core::Tenant::new(
                tenancy_core::TenantId::from_uuid(victim.tenant_id).map_err(|e| e.to_string())?,
                "victim".parse().map_err(|e| format!("{e}"))?,
                "victim",
            )),
        };
        let mut tx = shadow.begin(&victim_ctx).await.map_err(|e| e.to_string())?;
        if let Some(schema) = &self.qualify {
            let _ = guarded(&mut tx, &format!("SET LOCAL search_path = \"{schema}\"")).await;
        }
        let seen = guarded(&mut tx, &format!("SELECT tenant_id, id, value FROM {bare}"))
            .await
            .unwrap_or_default();
        tx.rollback().await.map_err(|e| e.to_string())?;
        Ok(seen
            .into_iter()
            .filter(|(_, id, _)| *id == planted)
            .map(row)
            .collect())
    }
}

#[async_trait]
impl Target for SqlxTarget {
    async fn attack(
        &self,
        ctx: &TenantContext,
        attack: Attack,
        table: usize,
        victim: Row,
    ) -> Result<Option<Vec<Row>>, String> {
        let name = self.table(table);
        let (v_tenant, v_id) = (victim.tenant_id, victim.id);
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        let select = format!("SELECT tenant_id, id, value FROM {name}");
        let seen: Vec<R> = match attack {
            Attack::SwitchSetting => {
                let mut seen = Vec::new();
                for switch in [
                    format!("SELECT set_config('app.tenant_id', '{v_tenant}', true)"),
                    format!("SET LOCAL app.tenant_id = '{v_tenant}'"),
                ] {
                    let _ = guarded(&mut tx, &switch).await;
                    if let Ok(rows) = guarded(&mut tx, &format!("{select} WHERE id = '{v_id}'")).await {
                        seen.extend(rows);
                    }
                }
                seen
            }
            Attack::ResetSetting => {
                let _ = guarded(&mut tx, "RESET app.tenant_id").await;
                guarded(&mut tx, &select).await.unwrap_or_default()
            }
            Attack::UpdateReturning => guarded(
                &mut tx,
                &format!("UPDATE {name} SET value = value WHERE id = '{v_id}' RETURNING tenant_id, id, value"),
            )
            .await
            .unwrap_or_default(),
            Attack::UpsertReturning => guarded(
                &mut tx,
                &format!(
                    "INSERT INTO {name} (tenant_id, id, value) VALUES ('{v_tenant}', '{v_id}', 0) \
                     ON CONFLICT (tenant_id, id) DO UPDATE SET value = {name}.value \
                     RETURNING tenant_id, id, value"
                ),
            )
            .await
            .unwrap_or_default(),
            Attack::CopyOut => copy_out(
                &mut tx,
                &format!("COPY (SELECT tenant_id, id, value FROM {name}) TO STDOUT"),
            )
            .await
            .unwrap_or_default(),
            Attack::SchemaQualified => {
                let Some((_, schema)) = self.schemas.iter().find(|(t, _)| *t == v_tenant) else {
                    return Ok(None);
                };
                let other = format!("\"{schema}\".\"{}\"", TABLES[table]);
                let mut seen = guarded(
                    &mut tx,
                    &format!("SELECT tenant_id, id, value FROM {other} WHERE id = '{v_id}'"),
                )
                .await
                .unwrap_or_default();
                // A row planted in the victim's schema, stamped with either tenant.
                for stamp in [ctx.tenant_id().as_uuid(), v_tenant] {
                    if let Ok(rows) = guarded(
                        &mut tx,
                        &format!(
                            "INSERT INTO {other} (tenant_id, id, value) \
                             VALUES ('{stamp}', gen_random_uuid(), 0) RETURNING tenant_id, id, value"
                        ),
                    )
                    .await
                    {
                        // Any row written into another tenant's schema is a leak.
                        seen.extend(rows.into_iter().map(|(_, i, v)| (v_tenant, i, v)));
                    }
                }
                seen
            }
            Attack::ForeignKeyRef => {
                let Some(links) = self.fixture(table, "_links") else {
                    return Ok(None);
                };
                let me = ctx.tenant_id().as_uuid();
                let missing = Uuid::new_v4();
                let link = |stamp: Uuid, parent: Uuid| {
                    format!(
                        "INSERT INTO {links} (tenant_id, id, parent) \
                         VALUES ('{stamp}', gen_random_uuid(), '{parent}') RETURNING tenant_id, id, 0::bigint"
                    )
                };
                let to_victim = guarded(&mut tx, &link(me, v_id)).await;
                let to_missing = guarded(&mut tx, &link(me, missing)).await;
                let stamped_victim = guarded(&mut tx, &link(v_tenant, v_id)).await;
                let mut seen = Vec::new();
                // A link to the victim's row that was accepted, in either stamp.
                if to_victim.is_ok() || stamped_victim.is_ok() {
                    seen.push((v_tenant, v_id, victim.value));
                }
                // Refused differently from a link to nothing: an existence oracle.
                if let (Err(a), Err(b)) = (&to_victim, &to_missing) {
                    let norm = |e: &str, id: Uuid| e.replace(&id.to_string(), "<id>");
                    if norm(a, v_id) != norm(b, missing) {
                        seen.push((v_tenant, v_id, victim.value));
                    }
                }
                seen
            }
            Attack::ViewRead => {
                let Some(view) = self.fixture(table, "_v") else {
                    return Ok(None);
                };
                let mut seen = guarded(&mut tx, &format!("SELECT tenant_id, id, value FROM {view}"))
                    .await
                    .unwrap_or_default();
                // A view of the attacker's own: needs TEMP (or CREATE somewhere).
                if guarded(
                    &mut tx,
                    &format!("CREATE TEMP VIEW attack_view AS SELECT tenant_id, id, value FROM {name}"),
                )
                .await
                .is_ok()
                {
                    seen.extend(
                        guarded(&mut tx, "SELECT tenant_id, id, value FROM pg_temp.attack_view")
                            .await
                            .unwrap_or_default(),
                    );
                }
                seen
            }
            Attack::FunctionRead => {
                let Some(f) = self.fixture(table, "_f") else {
                    return Ok(None);
                };
                let mut seen = guarded(&mut tx, &format!("SELECT tenant_id, id, value FROM {f}()"))
                    .await
                    .unwrap_or_default();
                if guarded(
                    &mut tx,
                    &format!(
                        "CREATE FUNCTION pg_temp.attack_f() RETURNS TABLE (tenant_id uuid, id uuid, value bigint) \
                         LANGUAGE sql SECURITY DEFINER AS $f$ SELECT tenant_id, id, value FROM {name} $f$"
                    ),
                )
                .await
                .is_ok()
                {
                    seen.extend(
                        guarded(&mut tx, "SELECT tenant_id, id, value FROM pg_temp.attack_f()")
                            .await
                            .unwrap_or_default(),
                    );
                }
                seen
            }
            Attack::TempShadow => {
                let Some(shadow) = &self.shadow else {
                    return Ok(None);
                };
                tx.rollback().await.map_err(|e| e.to_string())?;
                return self.temp_shadow(shadow, ctx, table, victim).await.map(Some);
            }
            _ => return Ok(None),
        };
        // Attacks never commit: whatever they changed is rolled back.
        tx.rollback().await.map_err(|e| e.to_string())?;
        Ok(Some(seen.into_iter().map(row).collect()))
    }

    async fn insert(&self, ctx: &TenantContext, table: usize, r: Row) -> Result<(), String> {
        let mut tx = self.db.begin(ctx).await.map_err(|e| e.to_string())?;
        sqlx::query(&format!(
            "INSERT INTO {} (tenant_id, id, value) VALUES ($1, $2, $3)",
            self.table(table)
        ))
        .persistent(self.persistent)
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
        .persistent(self.persistent)
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
        .persistent(self.persistent)
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
        .persistent(self.persistent)
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
            .persistent(self.persistent)
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
