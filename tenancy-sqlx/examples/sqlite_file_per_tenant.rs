//! One SQLite file per tenant behind one door.
//!
//! Run: `cargo run -p tenancy-sqlx --features sqlite --example sqlite_file_per_tenant`
#![allow(clippy::print_stdout)] // an example prints

use tenancy_core::{Placement, Tenant, TenantContext, TenantId};
use tenancy_sqlx::sqlite::{SqliteTenantDb, guard_table_sql};
use tenancy_sqlx::tenant_migrate::{TenantMigration, TenantMigrator};

fn tenant(slug: &str) -> Result<TenantContext, Box<dyn std::error::Error>> {
    let id = TenantId::new_v4();
    Ok(TenantContext::new(
        Tenant::new(id, slug.parse()?, slug)
            .with_placement(Placement::database(&Placement::name_for(id))?),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tenancy-example-{}", TenantId::new_v4()));
    let db = SqliteTenantDb::new(&dir);
    let migrator = TenantMigrator::new(vec![TenantMigration::new(
        1,
        "customers",
        &format!(
            "CREATE TABLE customers (tenant_id TEXT NOT NULL, id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n{}",
            guard_table_sql("customers")
        ),
    )])?;
    let (acme, globex) = (tenant("acme")?, tenant("globex")?);
    for t in [&acme, &globex] {
        db.provision(t.tenant(), &migrator).await?; // creates the file (WAL), stamps it, migrates it
    }

    let mut tx = db.begin(&acme).await?;
    sqlx::query("INSERT INTO customers (tenant_id, name) VALUES (?, 'Asha')")
        .bind(acme.tenant_id().to_string())
        .execute(&mut *tx)
        .await?;
    // A row claiming another tenant is refused by the file's triggers.
    let refused = sqlx::query("INSERT INTO customers (tenant_id, name) VALUES (?, 'Eve')")
        .bind(globex.tenant_id().to_string())
        .execute(&mut *tx)
        .await;
    println!("foreign row refused: {}", refused.is_err());
    tx.commit().await?;

    for t in [&acme, &globex] {
        let mut tx = db.begin(t).await?;
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM customers")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        println!(
            "{:<7} sees {names:?}   ({})",
            t.slug(),
            db.path_of(t.tenant())?.display()
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
