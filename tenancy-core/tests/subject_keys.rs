//! Data-subject keys in memory: the shared erasure table passes, and its
//! broken twin — a store that flags a subject erased but keeps the wrapped
//! key — is refused by it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use tenancy_core::crypto::keys::LocalKeyProvider;
use tenancy_core::crypto::subject::InMemorySubjectKeyStore;
use tenancy_testkit::subject::{FIRST_USES, FlagOnlyStore, erasure};

fn provider() -> Arc<LocalKeyProvider> {
    Arc::new(LocalKeyProvider::new(zeroize::Zeroizing::new([3u8; 32])))
}

#[tokio::test]
async fn erasure_destroys_exactly_one_subjects_key_in_memory() {
    let report = erasure(Arc::new(InMemorySubjectKeyStore::default()), provider())
        .await
        .unwrap();
    assert_eq!(
        report.keys_after_race, 1,
        "{FIRST_USES} first uses, one key"
    );
    assert_eq!(report.readable_after_racing_erasure, 0);
}

#[tokio::test]
async fn a_store_that_only_flags_the_subject_is_refused() {
    let err = erasure(Arc::new(FlagOnlyStore::default()), provider())
        .await
        .unwrap_err();
    assert!(err.contains("still holds A's wrapped key"), "{err}");
}
