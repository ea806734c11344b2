//! A subject-key store in a SQLite file of its own, beside the KEKs.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tenancy_core::TenantId;
use tenancy_core::crypto::CryptoError;
use tenancy_core::crypto::subject::{StoredSubjectKey, SubjectId, SubjectKeyStore};

use crate::DbError;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tenancy_subject_keys (
    tenant_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    wrapped    BLOB,
    created_at TEXT NOT NULL,
    erased_at  TEXT,
    PRIMARY KEY (tenant_id, subject),
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
)";

/// Wrapped data-subject keys and erasure tombstones
/// ([`SubjectKeyStore`]) in a SQLite file of their own.
///
/// Keep the file beside the KEKs, **not** in the database it protects: a
/// backup of that database then holds only ciphertext, and an erasure here
/// makes the subject's values unreadable in every earlier copy too.
///
/// Erasure is physical, not a flag: the connection runs with
/// `secure_delete` (freed space is overwritten with zeros) and a rollback
/// journal that is deleted at each commit, so after
/// [`SubjectKeyStore::erase`] the wrapped key's bytes are in neither the
/// file nor a journal beside it. Several processes may share the file.
///
/// ```no_run
/// use std::sync::Arc;
/// use tenancy_core::crypto::keys::Keyring;
/// use tenancy_core::crypto::subject::SubjectKeys;
/// use tenancy_sqlx::sqlite::SqliteSubjectKeyStore;
///
/// # async fn f(keyring: Arc<Keyring>) -> Result<(), tenancy_sqlx::DbError> {
/// let store = SqliteSubjectKeyStore::open("./keys/subject-keys.sqlite3").await?;
/// let subjects = SubjectKeys::new(keyring, Arc::new(store));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteSubjectKeyStore {
    pool: SqlitePool,
}

fn backend(e: impl std::fmt::Display) -> CryptoError {
    tracing::error!(error = %e, "subject key store failed");
    CryptoError::KeyStore(e.to_string())
}

type Row = (
    String,
    Option<Vec<u8>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn entry(
    tenant: TenantId,
    (subject, wrapped, created_at, erased_at): Row,
) -> Result<StoredSubjectKey, CryptoError> {
    let subject = SubjectId::new(subject)?;
    Ok(match (wrapped, erased_at) {
        (Some(w), None) => StoredSubjectKey::live(tenant, subject, w, created_at),
        (None, Some(at)) => StoredSubjectKey::erased(tenant, subject, created_at, at),
        _ => return Err(backend("a subject key row is neither live nor erased")),
    })
}

impl SqliteSubjectKeyStore {
    /// Opens (creating) the store at `path`; its directory is created too.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbError::Export(format!("cannot create {}: {e}", parent.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Delete)
                    .synchronous(SqliteSynchronous::Full)
                    .pragma("secure_delete", "ON")
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool (for tests and reports).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl SubjectKeyStore for SqliteSubjectKeyStore {
    async fn get(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
    ) -> Result<Option<StoredSubjectKey>, CryptoError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT subject, wrapped, created_at, erased_at FROM tenancy_subject_keys \
             WHERE tenant_id = $1 AND subject = $2",
        )
        .bind(tenant.to_string())
        .bind(subject.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| entry(tenant, r)).transpose()
    }

    async fn insert(&self, key: StoredSubjectKey) -> Result<StoredSubjectKey, CryptoError> {
        sqlx::query(
            "INSERT INTO tenancy_subject_keys (tenant_id, subject, wrapped, created_at, erased_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(key.tenant.to_string())
        .bind(key.subject.as_str())
        .bind(&key.wrapped)
        .bind(key.created_at)
        .bind(key.erased_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        self.get(key.tenant, &key.subject)
            .await?
            .ok_or_else(|| backend("a subject key vanished while it was stored"))
    }

    async fn erase(
        &self,
        tenant: TenantId,
        subject: &SubjectId,
        at: DateTime<Utc>,
    ) -> Result<bool, CryptoError> {
        // One write transaction (SQLite serialises writers, so no first
        // use can slip in between): the live row goes — its cell zeroed by
        // secure_delete — and a tombstone takes its place.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let created: Option<DateTime<Utc>> = sqlx::query_scalar(
            "DELETE FROM tenancy_subject_keys \
             WHERE tenant_id = $1 AND subject = $2 AND wrapped IS NOT NULL RETURNING created_at",
        )
        .bind(tenant.to_string())
        .bind(subject.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO tenancy_subject_keys (tenant_id, subject, wrapped, created_at, erased_at) \
             VALUES ($1, $2, NULL, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant.to_string())
        .bind(subject.as_str())
        .bind(created.unwrap_or(at))
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(created.is_some())
    }

    async fn list(
        &self,
        tenant: TenantId,
        after: Option<&SubjectId>,
        limit: usize,
    ) -> Result<Vec<StoredSubjectKey>, CryptoError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT subject, wrapped, created_at, erased_at FROM tenancy_subject_keys \
             WHERE tenant_id = $1 AND subject > $2 ORDER BY subject LIMIT $3",
        )
        .bind(tenant.to_string())
        .bind(after.map_or("", SubjectId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(|r| entry(tenant, r)).collect()
    }

    async fn purge(&self, tenant: TenantId) -> Result<u64, CryptoError> {
        let done = sqlx::query("DELETE FROM tenancy_subject_keys WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }
}
