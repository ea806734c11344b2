//! The shared isolation property suite.
//!
//! Every data path (sqlx, diesel sync and async, each isolation model)
//! implements [`Target`] and runs [`run`]. The suite drives one task per
//! tenant, all concurrently over the target's shared pool, through random
//! sequences (proptest strategies, reproducible from the printed seed) of:
//!
//! - its own inserts, updates, deletes, point reads and full-table reads,
//!   checked against an exact model of the tenant's rows — any row of another
//!   tenant in a result is a **leak**;
//! - attacks on **live** rows of other tenants (ids are picked among rows
//!   their owner has not deleted): reads, updates and deletes by id, inserts
//!   stamped with another tenant's id, and — where the target supports them
//!   ([`Target::attack`]) — SQL run inside the attacker's own transaction:
//!   re-scoping the tenant setting, `RESET`, `UPDATE … RETURNING`,
//!   `INSERT … ON CONFLICT … RETURNING`, `COPY … TO STDOUT`,
//!   schema-qualified reads and writes into another tenant's schema, a
//!   temporary table left to shadow the next tenant's table on the same
//!   connection, a foreign-key reference to another tenant's row (refused
//!   like a reference to a missing row, so it is no existence oracle), and
//!   reads through views and functions over a tenant table. Any row of
//!   another tenant seen or changed is a **leak**.
//!
//! Afterwards the final contents of every table are read around isolation
//! (by the target's `oracle`, e.g. as superuser) and compared, tenant by
//! tenant, with the models: a row changed, lost or planted by anyone else is
//! a **leak**. The report's `Display` is the line
//! `isolation-suite: ops=<n> leaks=<k>`; `ops` counts executed operations
//! only, and [`Report::kinds`] keeps executed, live-row and leaked counts
//! per attack kind (`isolation-kind: …` lines).
//!
//! Operation count: [`Config::from_env`] reads `TENANCY_ISOLATION_OPS`
//! (default 100 000) and `TENANCY_ISOLATION_SEED`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use tenancy_core::{TenantContext, TenantId};
use uuid::Uuid;

/// The tables every target provides, each with columns
/// `(tenant_id uuid NOT NULL, id uuid NOT NULL, value bigint NOT NULL, PRIMARY KEY (tenant_id, id))`.
pub const TABLES: [&str; 3] = ["customers", "policies", "payments"];

/// The most rows the suite keeps per tenant and table (so full reads stay cheap).
pub const MAX_ROWS: usize = 40;

/// `CREATE TABLE` statements for [`TABLES`] in `schema` (owner runs them;
/// the data path then applies its own isolation DDL).
pub fn create_tables_sql(schema: &str) -> Vec<String> {
    TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE \"{schema}\".\"{t}\" (tenant_id uuid NOT NULL, id uuid NOT NULL, \
                 value bigint NOT NULL, PRIMARY KEY (tenant_id, id))"
            )
        })
        .collect()
}

/// Objects the attacks of kinds [`Attack::ForeignKeyRef`],
/// [`Attack::ViewRead`] and [`Attack::FunctionRead`] go through, for each of
/// [`TABLES`] in `schema`, as a careful deployment would write them: a child
/// table `<t>_links` whose foreign key includes `tenant_id` (give it the
/// same isolation as the tenant tables), a view `<t>_v` with
/// `security_invoker`, and a `SECURITY INVOKER` function `<t>_f()`, both
/// readable by `app_role`. The owner runs them.
pub fn attack_fixtures_sql(schema: &str, app_role: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES {
        out.push(format!(
            "CREATE TABLE \"{schema}\".\"{t}_links\" (tenant_id uuid NOT NULL, id uuid NOT NULL, \
             parent uuid NOT NULL, PRIMARY KEY (tenant_id, id), \
             FOREIGN KEY (tenant_id, parent) REFERENCES \"{schema}\".\"{t}\" (tenant_id, id))"
        ));
        out.push(format!(
            "CREATE VIEW \"{schema}\".\"{t}_v\" WITH (security_invoker = true) AS \
             SELECT tenant_id, id, value FROM \"{schema}\".\"{t}\""
        ));
        out.push(format!(
            "CREATE FUNCTION \"{schema}\".\"{t}_f\"() \
             RETURNS TABLE (tenant_id uuid, id uuid, value bigint) \
             LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog \
             AS $f$ SELECT tenant_id, id, value FROM \"{schema}\".\"{t}\" $f$"
        ));
        out.push(format!(
            "GRANT SELECT ON \"{schema}\".\"{t}_v\" TO \"{app_role}\""
        ));
    }
    out
}

/// One row of a suite table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    /// The tenant column as stored.
    pub tenant_id: Uuid,
    /// Row id.
    pub id: Uuid,
    /// Payload.
    pub value: i64,
}

/// Attacks a target may run inside the attacker's own tenant transaction
/// ([`Target::attack`]), beyond reads and writes by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Attack {
    /// `set_config('app.tenant_id', <victim>, true)`, then read the victim's row.
    SwitchSetting,
    /// `RESET app.tenant_id`, then read every row.
    ResetSetting,
    /// `UPDATE … SET value = value WHERE id = <victim id> RETURNING *`.
    UpdateReturning,
    /// `INSERT <victim's key> … ON CONFLICT DO UPDATE … RETURNING *`.
    UpsertReturning,
    /// `COPY (SELECT … ) TO STDOUT` of the whole table.
    CopyOut,
    /// Read the victim's row in the victim's schema by qualified name, and
    /// insert a row there (schema tenants).
    SchemaQualified,
    /// Plant a row in a temporary table named like the tenant table, commit,
    /// and look for it from the victim's next transaction on the same
    /// connection (temporary tables are searched first and have no
    /// row-level security).
    TempShadow,
    /// Insert a child row that references the victim's row as its parent:
    /// the reference must be refused with the same error as a reference to
    /// a row that does not exist (no cross-tenant link, no existence oracle).
    ForeignKeyRef,
    /// Read through a view over the tenant table (the deployment's, and one
    /// the attacker tries to create).
    ViewRead,
    /// Read through a set-returning function over the tenant table (the
    /// deployment's, and one the attacker tries to create).
    FunctionRead,
}

impl Attack {
    /// Every kind.
    pub const ALL: [Attack; 10] = [
        Attack::SwitchSetting,
        Attack::ResetSetting,
        Attack::UpdateReturning,
        Attack::UpsertReturning,
        Attack::CopyOut,
        Attack::SchemaQualified,
        Attack::TempShadow,
        Attack::ForeignKeyRef,
        Attack::ViewRead,
        Attack::FunctionRead,
    ];

    /// The name used in report lines.
    pub fn name(self) -> &'static str {
        match self {
            Attack::SwitchSetting => "switch-setting",
            Attack::ResetSetting => "reset-setting",
            Attack::UpdateReturning => "update-returning",
            Attack::UpsertReturning => "upsert-returning",
            Attack::CopyOut => "copy-out",
            Attack::SchemaQualified => "schema-qualified",
            Attack::TempShadow => "temp-shadow",
            Attack::ForeignKeyRef => "fk-reference",
            Attack::ViewRead => "view-read",
            Attack::FunctionRead => "function-read",
        }
    }
}

/// A data path under test. Every method except `oracle` runs inside the
/// isolation of `ctx`'s tenant (a scoped transaction, a tenant schema, a
/// tenant database...). Errors are returned as text.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Inserts `row` (whose `tenant_id` may be another tenant's: an attack
    /// that must fail) into table `table` (index into [`TABLES`]).
    async fn insert(&self, ctx: &TenantContext, table: usize, row: Row) -> Result<(), String>;
    /// Every row of `table` visible to `ctx`.
    async fn select_all(&self, ctx: &TenantContext, table: usize) -> Result<Vec<Row>, String>;
    /// The row with `id`, if visible to `ctx`.
    async fn select_one(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
    ) -> Result<Option<Row>, String>;
    /// Sets `value` on row `id`; returns rows affected.
    async fn update(
        &self,
        ctx: &TenantContext,
        table: usize,
        id: Uuid,
        value: i64,
    ) -> Result<u64, String>;
    /// Deletes row `id`; returns rows affected.
    async fn delete(&self, ctx: &TenantContext, table: usize, id: Uuid) -> Result<u64, String>;
    /// Every row of every tenant in `table`, read around isolation.
    async fn oracle(&self, table: usize) -> Result<Vec<Row>, String>;

    /// Runs `attack` inside `ctx`'s own tenant transaction against `victim`
    /// (a live row of another tenant in `table`) and returns every row the
    /// attack saw, returned or changed. An error means the attack was
    /// refused. `Ok(None)`: the target does not run this kind (the
    /// operation is not counted).
    async fn attack(
        &self,
        ctx: &TenantContext,
        attack: Attack,
        table: usize,
        victim: Row,
    ) -> Result<Option<Vec<Row>>, String> {
        let _ = (ctx, attack, table, victim);
        Ok(None)
    }
}

/// How much to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Total operations across all tenants.
    pub ops: usize,
    /// Seed for the operation sequences.
    pub seed: u64,
}

impl Config {
    /// `TENANCY_ISOLATION_OPS` (default 100 000) and `TENANCY_ISOLATION_SEED`
    /// (default random).
    pub fn from_env() -> Self {
        let ops = std::env::var("TENANCY_ISOLATION_OPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let seed = std::env::var("TENANCY_ISOLATION_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8]))
            });
        Self { ops, seed }
    }
}

/// One attack kind's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Attacks executed.
    pub executed: u64,
    /// Of those, attacks whose victim row still existed when the attack ended.
    pub live: u64,
    /// Leaks they caused.
    pub leaks: u64,
}

/// The suite's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations executed (skipped ones are not counted).
    pub ops: u64,
    /// Counts per attack kind (`read-foreign`, `switch-setting`, …, and
    /// `final-state` for rows changed, lost or planted found by the oracle).
    pub kinds: BTreeMap<&'static str, KindStats>,
    /// Isolation violations observed.
    pub leaks: u64,
    /// Non-leak failures (errors where success was expected, model mismatches).
    pub failures: Vec<String>,
    /// Leak descriptions (first 20).
    pub leak_samples: Vec<String>,
    /// The seed used.
    pub seed: u64,
}

impl Report {
    /// Writes the `isolation-suite: ops=<n> leaks=<k>` line (and the seed) to
    /// the process's stdout, past the test harness's output capture, so it
    /// appears in CI logs whether the test passes or fails.
    pub fn emit(&self, label: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{self} path={label} seed={}", self.seed);
        for (kind, k) in &self.kinds {
            let _ = writeln!(
                out,
                "isolation-kind: path={label} kind={kind} executed={} live={} leaks={}",
                k.executed, k.live, k.leaks
            );
        }
    }

    /// For a broken twin: writes one `isolation-control: path=<p> kind=<k>
    /// leaks=<n>` line per kind, then panics unless every kind in `exposed`
    /// was executed and leaked.
    pub fn assert_detects(&self, label: &str, exposed: &[&str]) {
        use std::io::Write;
        {
            let mut out = std::io::stdout().lock();
            for (kind, k) in &self.kinds {
                let _ = writeln!(
                    out,
                    "isolation-control: path={label} kind={kind} leaks={}",
                    k.leaks
                );
            }
        }
        for kind in exposed {
            let k = self.kinds.get(kind).copied().unwrap_or_default();
            assert!(
                k.leaks > 0,
                "{label}: the broken twin's {kind} attacks went undetected ({k:?}); the suite proves nothing for them"
            );
        }
    }

    /// Emits the line, then panics unless the run had no failure, no leak,
    /// and executed (nearly) the configured number of operations.
    pub fn assert_clean(&self, config: &Config, label: &str) {
        self.emit(label);
        assert!(self.failures.is_empty(), "failures: {:#?}", self.failures);
        assert_eq!(self.leaks, 0, "leaks: {:#?}", self.leak_samples);
        // Each tenant's last op may be cut short by the shared budget.
        assert!(
            self.ops + 8 >= config.ops as u64,
            "ran {} ops of {}",
            self.ops,
            config.ops
        );
        // Attacks by id aim at rows that exist.
        for (kind, k) in &self.kinds {
            if k.executed >= 100 && *kind != "insert-foreign" && *kind != "final-state" {
                assert!(
                    k.live * 10 >= k.executed * 9,
                    "{kind}: only {} of {} attacks hit a live row",
                    k.live,
                    k.executed
                );
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "isolation-suite: ops={} leaks={}", self.ops, self.leaks)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        table: usize,
        value: i64,
    },
    SelectAll {
        table: usize,
    },
    SelectOwn {
        table: usize,
        pick: Index,
    },
    Update {
        table: usize,
        pick: Index,
        value: i64,
    },
    Delete {
        table: usize,
        pick: Index,
    },
    ReadForeign {
        table: usize,
        pick: Index,
    },
    UpdateForeign {
        table: usize,
        pick: Index,
        value: i64,
    },
    DeleteForeign {
        table: usize,
        pick: Index,
    },
    InsertForeign {
        table: usize,
        victim: Index,
        value: i64,
    },
    Attack {
        kind: Attack,
        table: usize,
        pick: Index,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let table = 0..TABLES.len();
    prop_oneof![
        4 => (table.clone(), any::<i64>()).prop_map(|(table, value)| Op::Insert { table, value }),
        2 => table.clone().prop_map(|table| Op::SelectAll { table }),
        2 => (table.clone(), any::<Index>()).prop_map(|(table, pick)| Op::SelectOwn { table, pick }),
        2 => (table.clone(), any::<Index>(), any::<i64>())
            .prop_map(|(table, pick, value)| Op::Update { table, pick, value }),
        1 => (table.clone(), any::<Index>()).prop_map(|(table, pick)| Op::Delete { table, pick }),
        1 => (table.clone(), any::<Index>()).prop_map(|(table, pick)| Op::ReadForeign { table, pick }),
        1 => (table.clone(), any::<Index>(), any::<i64>())
            .prop_map(|(table, pick, value)| Op::UpdateForeign { table, pick, value }),
        1 => (table.clone(), any::<Index>()).prop_map(|(table, pick)| Op::DeleteForeign { table, pick }),
        1 => (table.clone(), any::<Index>(), any::<i64>())
            .prop_map(|(table, victim, value)| Op::InsertForeign { table, victim, value }),
        2 => (0..Attack::ALL.len(), table, any::<Index>())
            .prop_map(|(k, table, pick)| Op::Attack { kind: Attack::ALL[k], table, pick }),
    ]
}

/// The live rows (inserted and not deleted by their owner), per tenant and
/// table, for attacks.
#[derive(Default)]
struct Registry {
    ids: Mutex<BTreeMap<(Uuid, usize), BTreeMap<Uuid, i64>>>,
}

impl Registry {
    fn add(&self, tenant: Uuid, table: usize, id: Uuid, value: i64) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((tenant, table))
            .or_default()
            .insert(id, value);
    }

    fn remove(&self, tenant: Uuid, table: usize, id: Uuid) {
        if let Some(rows) = self
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&(tenant, table))
        {
            rows.remove(&id);
        }
    }

    fn is_live(&self, tenant: Uuid, table: usize, id: Uuid) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant, table))
            .is_some_and(|rows| rows.contains_key(&id))
    }

    /// A live row of another tenant in `table`, if there is one.
    fn foreign(&self, me: Uuid, table: usize, pick: &Index) -> Option<(Uuid, Uuid)> {
        self.foreign_row(me, table, pick)
            .map(|r| (r.tenant_id, r.id))
    }

    fn foreign_row(&self, me: Uuid, table: usize, pick: &Index) -> Option<Row> {
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let candidates: Vec<Row> = ids
            .iter()
            .filter(|((t, tb), _)| *t != me && *tb == table)
            .flat_map(|((t, _), v)| {
                v.iter().map(move |(id, value)| Row {
                    tenant_id: *t,
                    id: *id,
                    value: *value,
                })
            })
            .collect();
        (!candidates.is_empty()).then(|| candidates[pick.index(candidates.len())])
    }
}

#[derive(Default)]
struct Tally {
    ops: u64,
    leaks: Vec<String>,
    failures: Vec<String>,
    kinds: BTreeMap<&'static str, KindStats>,
}

impl Tally {
    fn leak(&mut self, what: String) {
        self.leaks.push(what);
    }

    /// An attack of `kind` ran; `live`: its victim still exists; `leaked`
    /// leaks it caused (also recorded with [`Tally::leak`]).
    fn attacked(&mut self, kind: &'static str, live: bool, leaked: u64) {
        let k = self.kinds.entry(kind).or_default();
        k.executed += 1;
        k.live += u64::from(live);
        k.leaks += leaked;
    }
    fn fail(&mut self, what: String) {
        if self.failures.len() < 50 {
            self.failures.push(what);
        }
    }
}

type Model = Vec<BTreeMap<Uuid, i64>>;

async fn drive(
    target: Arc<dyn Target>,
    ctx: TenantContext,
    others: Vec<TenantId>,
    ops: Vec<Op>,
    budget: usize,
    registry: Arc<Registry>,
) -> (Tally, Model) {
    let me = ctx.tenant_id().as_uuid();
    let mut model: Model = vec![BTreeMap::new(); TABLES.len()];
    let mut t = Tally::default();
    for op in ops {
        if t.ops >= budget as u64 {
            break;
        }
        // Counted only when it runs (`continue` before this skips it).
        match op {
            Op::Insert { table, value } => {
                t.ops += 1;
                if model[table].len() >= MAX_ROWS {
                    // Keep tables small: delete the oldest instead.
                    if let Some((&id, _)) = model[table].iter().next() {
                        registry.remove(me, table, id);
                        match target.delete(&ctx, table, id).await {
                            Ok(1) => {
                                model[table].remove(&id);
                            }
                            r => t.fail(format!("delete own row {id}: {r:?}")),
                        }
                    }
                    continue;
                }
                let id = Uuid::new_v4();
                let row = Row {
                    tenant_id: me,
                    id,
                    value,
                };
                match target.insert(&ctx, table, row).await {
                    Ok(()) => {
                        model[table].insert(id, value);
                        registry.add(me, table, id, value);
                    }
                    Err(e) => t.fail(format!("insert own row: {e}")),
                }
            }
            Op::SelectAll { table } => {
                t.ops += 1;
                match target.select_all(&ctx, table).await {
                    Ok(rows) => {
                        let mut seen = BTreeMap::new();
                        let foreign = rows.iter().filter(|r| r.tenant_id != me).count() as u64;
                        t.attacked("read-all", true, foreign);
                        for r in rows {
                            if r.tenant_id != me {
                                t.leak(format!(
                                    "{me} read row {} of tenant {} in {}",
                                    r.id, r.tenant_id, TABLES[table]
                                ));
                            } else {
                                seen.insert(r.id, r.value);
                            }
                        }
                        if seen != model[table] {
                            t.fail(format!(
                                "{me}: {} holds {} own rows, model has {}",
                                TABLES[table],
                                seen.len(),
                                model[table].len()
                            ));
                        }
                    }
                    Err(e) => t.fail(format!("select all: {e}")),
                }
            }
            Op::SelectOwn { table, pick } => {
                let Some((&id, &value)) = model[table]
                    .iter()
                    .nth(pick.index(model[table].len().max(1)))
                else {
                    continue;
                };
                t.ops += 1;
                match target.select_one(&ctx, table, id).await {
                    Ok(Some(r))
                        if r == (Row {
                            tenant_id: me,
                            id,
                            value,
                        }) => {}
                    Ok(Some(r)) if r.tenant_id != me => {
                        t.leak(format!("{me} read foreign row {r:?}"));
                    }
                    r => t.fail(format!("select own {id}: {r:?}")),
                }
            }
            Op::Update { table, pick, value } => {
                let Some(id) = model[table]
                    .keys()
                    .nth(pick.index(model[table].len().max(1)))
                    .copied()
                else {
                    continue;
                };
                t.ops += 1;
                match target.update(&ctx, table, id, value).await {
                    Ok(1) => {
                        model[table].insert(id, value);
                        registry.add(me, table, id, value);
                    }
                    r => t.fail(format!("update own {id}: {r:?}")),
                }
            }
            Op::Delete { table, pick } => {
                let Some(id) = model[table]
                    .keys()
                    .nth(pick.index(model[table].len().max(1)))
                    .copied()
                else {
                    continue;
                };
                t.ops += 1;
                // Out of the registry first: attackers aim at live rows.
                registry.remove(me, table, id);
                match target.delete(&ctx, table, id).await {
                    Ok(1) => {
                        model[table].remove(&id);
                    }
                    r => t.fail(format!("delete own {id}: {r:?}")),
                }
            }
            Op::ReadForeign { table, pick } => {
                let Some((owner, id)) = registry.foreign(me, table, &pick) else {
                    continue;
                };
                t.ops += 1;
                let leaked = match target.select_one(&ctx, table, id).await {
                    Ok(None) | Err(_) => 0,
                    Ok(Some(r)) => {
                        t.leak(format!("{me} read {owner}'s row {r:?}"));
                        1
                    }
                };
                let live = registry.is_live(owner, table, id);
                t.attacked("read-foreign", live, leaked);
            }
            Op::UpdateForeign { table, pick, value } => {
                let Some((owner, id)) = registry.foreign(me, table, &pick) else {
                    continue;
                };
                t.ops += 1;
                let leaked = match target.update(&ctx, table, id, value).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => {
                        t.leak(format!("{me} updated {n} row(s) of {owner} ({id})"));
                        1
                    }
                };
                let live = registry.is_live(owner, table, id);
                t.attacked("update-foreign", live, leaked);
            }
            Op::DeleteForeign { table, pick } => {
                let Some((owner, id)) = registry.foreign(me, table, &pick) else {
                    continue;
                };
                t.ops += 1;
                let live = registry.is_live(owner, table, id);
                let leaked = match target.delete(&ctx, table, id).await {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => {
                        t.leak(format!("{me} deleted {n} row(s) of {owner} ({id})"));
                        1
                    }
                };
                t.attacked("delete-foreign", live, leaked);
            }
            Op::InsertForeign {
                table,
                victim,
                value,
            } => {
                if others.is_empty() {
                    continue;
                }
                t.ops += 1;
                let victim = others[victim.index(others.len())].as_uuid();
                let row = Row {
                    tenant_id: victim,
                    id: Uuid::new_v4(),
                    value,
                };
                let leaked = if target.insert(&ctx, table, row).await.is_ok() {
                    t.leak(format!("{me} inserted a row stamped for {victim}"));
                    1
                } else {
                    0
                };
                t.attacked("insert-foreign", true, leaked);
            }
            Op::Attack { kind, table, pick } => {
                let Some(victim) = registry.foreign_row(me, table, &pick) else {
                    continue;
                };
                let seen = match target.attack(&ctx, kind, table, victim).await {
                    Ok(None) => continue,
                    Ok(Some(rows)) => rows,
                    Err(_) => Vec::new(),
                };
                t.ops += 1;
                let foreign: Vec<&Row> = seen.iter().filter(|r| r.tenant_id != me).collect();
                for r in &foreign {
                    t.leak(format!("{me}: {} attack saw or changed {r:?}", kind.name()));
                }
                let live = registry.is_live(victim.tenant_id, table, victim.id);
                t.attacked(kind.name(), live, foreign.len() as u64);
            }
        }
    }
    (t, model)
}

/// Runs the suite: one task per tenant in `tenants` (at least 2), sharing
/// `target`, for `config.ops` operations in total, then verifies the final
/// state through the oracle.
pub async fn run(target: Arc<dyn Target>, tenants: &[TenantContext], config: &Config) -> Report {
    let mut report = Report {
        seed: config.seed,
        ..Report::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&config.seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        proptest::test_runner::Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let per_tenant = config.ops / tenants.len().max(1);
    let registry = Arc::new(Registry::default());
    let ids: Vec<TenantId> = tenants.iter().map(TenantContext::tenant_id).collect();
    let mut tasks = Vec::new();
    for ctx in tenants {
        // Some operations are skipped (nothing to pick yet, a kind the
        // target does not run): generate more than the budget.
        let ops = match proptest::collection::vec(op_strategy(), per_tenant * 2 + 16)
            .new_tree(&mut runner)
        {
            Ok(tree) => tree.current(),
            Err(e) => {
                report
                    .failures
                    .push(format!("cannot generate operations: {e}"));
                return report;
            }
        };
        let others: Vec<TenantId> = ids
            .iter()
            .copied()
            .filter(|i| *i != ctx.tenant_id())
            .collect();
        tasks.push((
            ctx.tenant_id().as_uuid(),
            tokio::spawn(drive(
                target.clone(),
                ctx.clone(),
                others,
                ops,
                per_tenant,
                registry.clone(),
            )),
        ));
    }
    let mut models: BTreeMap<Uuid, Model> = BTreeMap::new();
    let mut leaks = Vec::new();
    for (tenant, task) in tasks {
        match task.await {
            Ok((tally, model)) => {
                report.ops += tally.ops;
                for (kind, k) in tally.kinds {
                    let total = report.kinds.entry(kind).or_default();
                    total.executed += k.executed;
                    total.live += k.live;
                    total.leaks += k.leaks;
                }
                leaks.extend(tally.leaks);
                report.failures.extend(tally.failures);
                models.insert(tenant, model);
            }
            Err(e) => report.failures.push(format!("tenant task panicked: {e}")),
        }
    }
    // Final state, read around isolation, must equal each tenant's model.
    for (table, name) in TABLES.iter().enumerate() {
        match target.oracle(table).await {
            Ok(rows) => {
                let mut actual: BTreeMap<Uuid, BTreeMap<Uuid, i64>> = BTreeMap::new();
                for r in rows {
                    actual.entry(r.tenant_id).or_default().insert(r.id, r.value);
                }
                let tenants_seen: HashSet<Uuid> =
                    actual.keys().chain(models.keys()).copied().collect();
                for tenant in tenants_seen {
                    let want = models.get(&tenant).map(|m| &m[table]);
                    let got = actual.get(&tenant);
                    let empty = BTreeMap::new();
                    let (want, got) = (want.unwrap_or(&empty), got.unwrap_or(&empty));
                    if want != got {
                        let changed = want
                            .iter()
                            .filter(|(id, v)| got.get(*id) != Some(*v))
                            .count()
                            + got.keys().filter(|id| !want.contains_key(*id)).count();
                        for _ in 0..changed {
                            leaks.push(format!(
                                "{name}: tenant {tenant}'s final rows differ from its own writes"
                            ));
                        }
                    }
                }
            }
            Err(e) => report.failures.push(format!("oracle {name}: {e}")),
        }
    }
    let attack_leaks: u64 = report.kinds.values().map(|k| k.leaks).sum();
    let final_state = (leaks.len() as u64).saturating_sub(attack_leaks);
    report.kinds.insert(
        "final-state",
        KindStats {
            executed: 1,
            live: 1,
            leaks: final_state,
        },
    );
    report.leaks = leaks.len() as u64;
    report.leak_samples = leaks.into_iter().take(20).collect();
    report
}
