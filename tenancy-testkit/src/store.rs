//! One behaviour table for every [`TenantWriter`]: versioned, field-level
//! tenant writes (memory, PostgreSQL and SQLite stores run the same checks).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tenancy_core::store::InMemoryTenantStore;
//!
//! let report = tenancy_testkit::store::versioned_writes(Arc::new(InMemoryTenantStore::new()), "mem").await?;
//! assert!(report.acknowledged > 0);
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use tenancy_core::lifecycle::{Lifecycle, LifecycleError, Transition};
use tenancy_core::store::{TenantUpdate, TenantWriter, WriteError};
use tenancy_core::{PlanId, Tenant, TenantId, TenantStatus};

/// What [`versioned_writes`] observed in its race of concurrent writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedWritesReport {
    /// Writers whose change was acknowledged.
    pub acknowledged: usize,
    /// Writers refused with a conflict.
    pub refused: usize,
}

/// How many writers race in [`versioned_writes`].
pub const WRITERS: usize = 32;

/// Runs the versioned-write table against `store` (each call creates its
/// own tenants, with slugs starting with `prefix`) and returns the figures
/// of the concurrent-writer race. An `Err` names the rule that broke:
///
/// 1. a plan change and a settings patch made concurrently from the same
///    read both persist;
/// 2. an update that insists on the version it read is refused once anyone
///    wrote since (`WriteError::Conflict`, 409), and changes nothing;
/// 3. a request admitted before a suspension (holding the active record)
///    changes settings without un-suspending the tenant, and a lifecycle
///    transition decided from its stale copy is refused;
/// 4. [`WRITERS`] concurrent writers, each insisting on the version it
///    read: every acknowledged change is present, every refused one absent,
///    and the version counts exactly the acknowledged writes.
pub async fn versioned_writes(
    store: Arc<dyn TenantWriter>,
    prefix: &str,
) -> Result<VersionedWritesReport, String> {
    let fresh = |n: &str| -> Result<Tenant, String> {
        let id = TenantId::new_v4();
        let slug = format!("{prefix}-{n}-{}", &id.to_string()[..8]);
        Ok(Tenant::new(
            id,
            slug.parse().map_err(|e| format!("{e}"))?,
            n,
        ))
    };
    let read = |store: Arc<dyn TenantWriter>, id: TenantId| async move {
        store
            .by_id(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("tenant {id} vanished"))
    };

    // 1. Different fields, concurrently, from the same read: both persist.
    let t = fresh("fields")?;
    store.create(&t).await.map_err(|e| e.to_string())?;
    let seen = read(store.clone(), t.id).await?;
    if seen.version != 1 {
        return Err(format!(
            "a created tenant is at version {}, not 1",
            seen.version
        ));
    }
    let plan = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update(t.id, &TenantUpdate::new().plan(Some(PlanId::new("pro"))))
                .await
        })
    };
    let settings = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .update(
                    t.id,
                    &TenantUpdate::new().settings_patch(serde_json::json!({ "theme": "dark" })),
                )
                .await
        })
    };
    for (what, task) in [("plan change", plan), ("settings patch", settings)] {
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{what} refused: {e}"))?;
    }
    let now = read(store.clone(), t.id).await?;
    if now.plan != Some(PlanId::new("pro")) || now.settings["theme"] != "dark" || now.version != 3 {
        return Err(format!(
            "concurrent plan and settings changes: plan {:?}, settings {}, version {} (want pro, dark, 3)",
            now.plan, now.settings, now.version
        ));
    }

    // 2. A stale version is refused and changes nothing.
    store
        .update(
            t.id,
            &TenantUpdate::new().expect_version(3).display_name("Fresh"),
        )
        .await
        .map_err(|e| format!("an update at the current version was refused: {e}"))?;
    match store
        .update(
            t.id,
            &TenantUpdate::new().expect_version(3).display_name("Stale"),
        )
        .await
    {
        Err(e @ WriteError::Conflict { .. }) if e.status() == 409 => {}
        other => {
            return Err(format!(
                "a stale update was not refused with 409: {other:?}"
            ));
        }
    }
    let now = read(store.clone(), t.id).await?;
    if now.display_name != "Fresh" || now.version != 4 {
        return Err(format!(
            "the refused update changed the record: {:?} at version {}",
            now.display_name, now.version
        ));
    }

    // 3. Admitted before a suspension.
    let t = fresh("suspend")?;
    store.create(&t).await.map_err(|e| e.to_string())?;
    let admitted = read(store.clone(), t.id).await?;
    let lifecycle = Lifecycle::new(store.clone());
    lifecycle
        .apply(
            &admitted,
            Transition::Suspend {
                reason: "unpaid".into(),
            },
            "operator",
        )
        .await
        .map_err(|e| format!("suspend: {e}"))?;
    store
        .update(
            t.id,
            &TenantUpdate::new().settings_patch(serde_json::json!({ "locale": "de" })),
        )
        .await
        .map_err(|e| format!("the admitted request's settings change: {e}"))?;
    let now = read(store.clone(), t.id).await?;
    if !matches!(now.status, TenantStatus::Suspended { .. }) {
        return Err(format!(
            "a request admitted before the suspension wrote the tenant back to {:?}",
            now.status
        ));
    }
    match lifecycle
        .apply(
            &admitted,
            Transition::Offboard {
                grace: chrono::Duration::days(30),
            },
            "stale",
        )
        .await
    {
        Err(LifecycleError::Write(e @ WriteError::StatusChanged { .. })) if e.status() == 409 => {}
        other => {
            return Err(format!(
                "a transition decided from the pre-suspension copy was not refused: {other:?}"
            ));
        }
    }

    // 4. Many writers, each insisting on the version it read.
    let t = fresh("race")?;
    store.create(&t).await.map_err(|e| e.to_string())?;
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let (store, start) = (store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let seen = store.by_id(t.id).await.ok().flatten();
            start.wait().await;
            let Some(seen) = seen else {
                return (i, Err(format!("writer {i} could not read the tenant")));
            };
            let update = TenantUpdate::new()
                .expect_version(seen.version)
                .settings_patch(serde_json::json!({ format!("w{i}"): i }));
            (i, Ok(store.update(t.id, &update).await))
        }));
    }
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for task in tasks {
        let (i, outcome) = task.await.map_err(|e| e.to_string())?;
        match outcome? {
            Ok(_) => {
                acked.insert(i);
            }
            Err(e) if e.is_conflict() && e.status() == 409 => {
                refused.insert(i);
            }
            Err(e) => return Err(format!("writer {i} failed otherwise: {e}")),
        }
    }
    let now = read(store.clone(), t.id).await?;
    for i in 0..WRITERS {
        let present = now.settings.get(format!("w{i}")).is_some();
        if acked.contains(&i) && !present {
            return Err(format!("writer {i}'s acknowledged change is lost"));
        }
        if refused.contains(&i) && present {
            return Err(format!("writer {i} was refused but its change is stored"));
        }
    }
    if now.version != 1 + acked.len() as u64 || acked.is_empty() {
        return Err(format!(
            "{} acknowledged writes, version {}",
            acked.len(),
            now.version
        ));
    }
    Ok(VersionedWritesReport {
        acknowledged: acked.len(),
        refused: refused.len(),
    })
}
