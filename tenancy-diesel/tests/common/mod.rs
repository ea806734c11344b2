//! Set-up shared by the diesel test files: a schema per test (diesel's
//! `table!` needs a fixed schema name), created by the owner, isolated with
//! the DDL applied through diesel.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use tenancy_core::{Tenant, TenantContext, TenantId};
use tenancy_diesel::rls::TenantTable;
use tenancy_testkit::TestDb;
use tenancy_testkit::isolation::{self, TABLES};

/// Whether the schema gets row-level security (the second wall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walls {
    /// Policies, forced, on every table.
    Rls,
    /// Plain tables with grants only: the application filter alone.
    NoRls,
}

/// Drops and recreates `schema` with the isolation suite's tables, as the
/// owner, over a diesel connection.
pub fn create_schema(env: &TestDb, schema: &str, walls: Walls) {
    // The policies call tenancy.tenant(): the sealed binding comes first.
    seal_key(env);
    let mut owner = PgConnection::establish(&env.owner_url).unwrap();
    owner
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\"; \
             GRANT USAGE ON SCHEMA \"{schema}\" TO tenancy_app, tenancy_ops"
        ))
        .unwrap();
    for statement in isolation::create_tables_sql(schema) {
        owner.batch_execute(&statement).unwrap();
    }
    for t in TABLES {
        match walls {
            Walls::Rls => tenancy_diesel::rls::apply(
                &mut owner,
                &TenantTable::new(t)
                    .schema(schema)
                    .index_on(["id"])
                    .grant_to("tenancy_app"),
            )
            .unwrap(),
            Walls::NoRls => owner
                .batch_execute(&format!(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".\"{t}\" TO tenancy_app"
                ))
                .unwrap(),
        }
    }
}

/// The database's seal key, installing the sealed binding when missing
/// (from sync or async tests: it runs on a thread of its own).
pub fn seal_key(env: &TestDb) -> tenancy_core::rls::SealKey {
    env.seal_key_blocking().unwrap()
}

/// `n` tenants for the suite.
pub fn tenants(n: usize, prefix: &str) -> Vec<TenantContext> {
    (0..n)
        .map(|i| {
            TenantContext::new(Tenant::new(
                TenantId::new_v4(),
                format!("{prefix}-{i}").parse().unwrap(),
                prefix,
            ))
        })
        .collect()
}
