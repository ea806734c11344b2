//! Destruction certificates: a signed record of what was destroyed when a
//! tenant was purged — key versions, rows per table, the audit log, when —
//! that anyone holding the operator's public key can verify later.
//!
//! The record is signed with Ed25519 over its canonical JSON (fields in
//! declaration order, maps sorted). Verification re-serialises the record it
//! read, so any change — a row count, a date, a key version — fails.
//!
//! ```
//! use chrono::Utc;
//! use tenancy_core::destruction::{CertificateSigner, DestructionCertificate, DestructionRecord};
//! use tenancy_core::TenantId;
//!
//! let signer = CertificateSigner::from_seed([7u8; 32]);
//! let mut record = DestructionRecord::new(TenantId::new_v4(), "acme", Utc::now());
//! record.rows.insert("customers".into(), 1200);
//! record.data_key_versions = vec![0, 1, 2];
//! let cert = signer.sign(record)?;
//!
//! let verifier = signer.verifier();
//! assert_eq!(verifier.verify(&cert)?.rows["customers"], 1200);
//!
//! let mut forged = cert.clone();
//! forged.record.rows.insert("customers".into(), 1);
//! assert!(verifier.verify(&forged).is_err());
//!
//! // A field added to a signed certificate is refused as it is read.
//! let mut added = serde_json::to_value(&cert).unwrap();
//! added["record"]["note"] = "rows retained".into();
//! assert!(serde_json::from_value::<DestructionCertificate>(added).is_err());
//! # Ok::<(), tenancy_core::destruction::CertificateError>(())
//! ```

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::TenantId;

/// The format tag of a destruction record.
pub const RECORD_FORMAT: &str = "tenancy-rs/destruction/v1";

/// Why a certificate could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The signature does not verify under this key: the record was changed,
    /// or another key signed it.
    #[error("the destruction certificate does not verify: it was altered or signed by another key")]
    BadSignature,
    /// The certificate is not well-formed (format, encoding).
    #[error("not a destruction certificate: {0}")]
    Malformed(String),
}

/// The export made before the purge, as the audit log recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)] // an added field would not be signed
pub struct ExportEvidence {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (actor id).
    pub by: String,
    /// Records exported.
    pub records: Option<u64>,
    /// Its sequence number in the tenant's audit log.
    pub audit_seq: u64,
}

/// What was destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)] // an added field would not be signed
#[non_exhaustive]
pub struct DestructionRecord {
    /// [`RECORD_FORMAT`].
    pub format: String,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Its slug.
    pub tenant_slug: String,
    /// When offboarding's grace period ended.
    pub purge_after: Option<DateTime<Utc>>,
    /// When the purge completed.
    pub purged_at: DateTime<Utc>,
    /// Versions of the tenant's data keys destroyed (0: the blind-index root).
    pub data_key_versions: Vec<u32>,
    /// Whether the key provider destroyed the tenant's KEKs.
    pub keks_destroyed: bool,
    /// Data-subject keys and tombstones removed.
    pub subject_keys: u64,
    /// Rows deleted, per table.
    pub rows: BTreeMap<String, u64>,
    /// Audit events destroyed (live and archived).
    pub audit_events: u64,
    /// Archive segments destroyed.
    pub audit_segments: u64,
    /// Whether the audit chain verified (archive and live log) just before
    /// it was destroyed.
    pub audit_chain_intact: bool,
    /// The export made before the purge (`None`: waived by the operator).
    pub export: Option<ExportEvidence>,
    /// Who purged.
    pub purged_by: String,
}

impl DestructionRecord {
    /// An empty record for `tenant`, purged at `at`.
    pub fn new(tenant_id: TenantId, slug: &str, at: DateTime<Utc>) -> Self {
        Self {
            format: RECORD_FORMAT.to_owned(),
            tenant_id,
            tenant_slug: slug.to_owned(),
            purge_after: None,
            purged_at: at,
            data_key_versions: Vec::new(),
            keks_destroyed: false,
            subject_keys: 0,
            rows: BTreeMap::new(),
            audit_events: 0,
            audit_segments: 0,
            audit_chain_intact: false,
            export: None,
            purged_by: String::new(),
        }
    }

    fn canonical(&self) -> Result<Vec<u8>, CertificateError> {
        serde_json::to_vec(self).map_err(|e| CertificateError::Malformed(e.to_string()))
    }
}

/// A signed [`DestructionRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)] // an added field would not be signed
pub struct DestructionCertificate {
    /// What was destroyed.
    pub record: DestructionRecord,
    /// The signer's Ed25519 public key, base64.
    pub public_key: String,
    /// The Ed25519 signature over the record's canonical JSON, base64.
    pub signature: String,
}

/// Signs destruction records with an Ed25519 key kept by the operator.
pub struct CertificateSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSigner")
            .field(
                "public_key",
                &STANDARD.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl CertificateSigner {
    /// The signer of a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Signs `record`.
    pub fn sign(
        &self,
        record: DestructionRecord,
    ) -> Result<DestructionCertificate, CertificateError> {
        let sig = self.key.sign(&record.canonical()?);
        Ok(DestructionCertificate {
            record,
            public_key: STANDARD.encode(self.key.verifying_key().as_bytes()),
            signature: STANDARD.encode(sig.to_bytes()),
        })
    }

    /// The matching verifier (publish its key).
    pub fn verifier(&self) -> CertificateVerifier {
        CertificateVerifier {
            key: self.key.verifying_key(),
        }
    }
}

/// Verifies destruction certificates against one public key.
#[derive(Debug, Clone)]
pub struct CertificateVerifier {
    key: VerifyingKey,
}

impl CertificateVerifier {
    /// A verifier of the base64 public key.
    pub fn from_base64(public_key: &str) -> Result<Self, CertificateError> {
        let bytes: [u8; 32] = STANDARD
            .decode(public_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                CertificateError::Malformed("a public key is 32 bytes of base64".into())
            })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| CertificateError::Malformed("not an Ed25519 public key".into()))?;
        Ok(Self { key })
    }

    /// The public key, base64.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.key.as_bytes())
    }

    /// The record, if the certificate was signed by this key and not changed
    /// since. The certificate's own `public_key` field is not trusted.
    pub fn verify<'c>(
        &self,
        cert: &'c DestructionCertificate,
    ) -> Result<&'c DestructionRecord, CertificateError> {
        if cert.record.format != RECORD_FORMAT {
            return Err(CertificateError::Malformed(format!(
                "unknown format {:?}",
                cert.record.format
            )));
        }
        let sig: [u8; 64] = STANDARD
            .decode(&cert.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                CertificateError::Malformed("a signature is 64 bytes of base64".into())
            })?;
        self.key
            .verify(&cert.record.canonical()?, &Signature::from_bytes(&sig))
            .map_err(|_| CertificateError::BadSignature)?;
        Ok(&cert.record)
    }
}
