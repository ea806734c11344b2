//! Customers' sensitive fields: validated and normalised, encrypted with
//! the customer's own data-subject key (wrapped by the tenant's KEK, bound
//! to the customer, the column and the row, so a value copied elsewhere
//! does not open), searchable by equality through keyed blind indexes (PAN,
//! phone), and masked wherever the caller only reads. Forgetting the
//! customer destroys the key ([`crate::subject`]). Values written before
//! subject keys, with the tenant's data key, still open.

use serde::{Deserialize, Serialize};
use tenancy_core::TenantId;
use tenancy_core::crypto::subject::is_subject_sealed;
use tenancy_core::crypto::{CryptoError, from_text, to_text};

use crate::api::ApiError;
use crate::data::Data;
use crate::id::Id;

/// The sensitive fields of a customer, in plaintext (requests, responses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SensitiveFields {
    /// Phone number (digits, optional leading `+`); searchable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// PAN (`ABCDE1234F`); searchable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan: Option<String>,
    /// Aadhaar number (12 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aadhaar: Option<String>,
    /// Bank account number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_account: Option<String>,
    /// Medical history (free text, at most 2 000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medical_history: Option<String>,
}

/// The stored form: ciphertexts (text form) and blind indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedFields {
    /// Phone, encrypted.
    pub phone_enc: Option<String>,
    /// Phone, blind index.
    pub phone_index: Option<Vec<u8>>,
    /// PAN, encrypted.
    pub pan_enc: Option<String>,
    /// PAN, blind index.
    pub pan_index: Option<Vec<u8>>,
    /// Aadhaar, encrypted.
    pub aadhaar_enc: Option<String>,
    /// Bank account, encrypted.
    pub bank_account_enc: Option<String>,
    /// Medical history, encrypted.
    pub medical_history_enc: Option<String>,
}

/// Normalises and checks a PAN.
pub fn normalize_pan(pan: &str) -> Result<String, ApiError> {
    let p: String = pan.trim().to_ascii_uppercase();
    let b = p.as_bytes();
    let ok = b.len() == 10
        && b[..5].iter().all(u8::is_ascii_uppercase)
        && b[5..9].iter().all(u8::is_ascii_digit)
        && b[9].is_ascii_uppercase();
    if ok {
        Ok(p)
    } else {
        Err(ApiError::invalid("pan must look like ABCDE1234F"))
    }
}

/// Normalises and checks a phone number (spaces and dashes dropped).
pub fn normalize_phone(phone: &str) -> Result<String, ApiError> {
    let p: String = phone
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = p.strip_prefix('+').unwrap_or(&p);
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(p)
    } else {
        Err(ApiError::invalid(
            "phone must be 8 to 15 digits, optionally starting with +",
        ))
    }
}

fn normalize(fields: &SensitiveFields) -> Result<SensitiveFields, ApiError> {
    let aadhaar = match &fields.aadhaar {
        Some(a) => {
            let d: String = a.chars().filter(|c| *c != ' ').collect();
            if d.len() != 12 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::invalid("aadhaar must be 12 digits"));
            }
            Some(d)
        }
        None => None,
    };
    let bank_account = match &fields.bank_account {
        Some(b) => {
            let b = b.trim().to_owned();
            if !(6..=20).contains(&b.len()) || !b.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ApiError::invalid(
                    "bank_account must be 6 to 20 letters or digits",
                ));
            }
            Some(b)
        }
        None => None,
    };
    if fields
        .medical_history
        .as_ref()
        .is_some_and(|m| m.chars().count() > 2000)
    {
        return Err(ApiError::invalid(
            "medical_history must be at most 2000 characters",
        ));
    }
    Ok(SensitiveFields {
        phone: fields.phone.as_deref().map(normalize_phone).transpose()?,
        pan: fields.pan.as_deref().map(normalize_pan).transpose()?,
        aadhaar,
        bank_account,
        medical_history: fields.medical_history.clone(),
    })
}

fn context(field: &str, row: Id) -> Vec<u8> {
    format!("customers.{field}:{row}").into_bytes()
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` takes
fn crypto_failed(e: CryptoError) -> ApiError {
    if e == CryptoError::SubjectErased {
        return ApiError::gone("this customer was forgotten: their personal data no longer exists");
    }
    if e.is_retryable() {
        tracing::warn!(error = %e, "field encryption: keys unavailable");
        return ApiError::unavailable("encryption keys are not reachable right now; retry shortly");
    }
    ApiError::internal(format!("field encryption: {e}"))
}

async fn seal_one(
    data: &Data,
    tenant: TenantId,
    row: Id,
    field: &str,
    value: Option<&String>,
) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) => {
            let subject = crate::subject::customer_subject(row)?;
            let ct = data
                .subjects()
                .encrypt(tenant, &subject, &context(field, row), v.as_bytes())
                .await
                .map_err(crypto_failed)?;
            Ok(Some(to_text(&ct)))
        }
    }
}

/// The blind index of a normalised value for `purpose` (`customers.pan`,
/// `customers.phone`).
pub async fn blind_index(
    data: &Data,
    tenant: TenantId,
    purpose: &str,
    normalized: &str,
) -> Result<Vec<u8>, ApiError> {
    let key = data
        .keyring()
        .blind_index(tenant, purpose, 16)
        .await
        .map_err(crypto_failed)?;
    Ok(key.index(normalized.as_bytes()))
}

/// Validates, normalises and encrypts `fields` for customer `row`.
pub async fn seal(
    data: &Data,
    tenant: TenantId,
    row: Id,
    fields: &SensitiveFields,
) -> Result<SealedFields, ApiError> {
    let f = normalize(fields)?;
    Ok(SealedFields {
        phone_enc: seal_one(data, tenant, row, "phone", f.phone.as_ref()).await?,
        phone_index: match &f.phone {
            Some(p) => Some(blind_index(data, tenant, "customers.phone", p).await?),
            None => None,
        },
        pan_enc: seal_one(data, tenant, row, "pan", f.pan.as_ref()).await?,
        pan_index: match &f.pan {
            Some(p) => Some(blind_index(data, tenant, "customers.pan", p).await?),
            None => None,
        },
        aadhaar_enc: seal_one(data, tenant, row, "aadhaar", f.aadhaar.as_ref()).await?,
        bank_account_enc: seal_one(data, tenant, row, "bank_account", f.bank_account.as_ref())
            .await?,
        medical_history_enc: seal_one(
            data,
            tenant,
            row,
            "medical_history",
            f.medical_history.as_ref(),
        )
        .await?,
    })
}

async fn open_one(
    data: &Data,
    tenant: TenantId,
    row: Id,
    field: &str,
    value: Option<&String>,
) -> Result<Option<String>, ApiError> {
    let Some(text) = value else {
        return Ok(None);
    };
    // A value that does not open is an error, never shown as ciphertext.
    let ct = from_text(text).map_err(crypto_failed)?;
    let opened = if is_subject_sealed(&ct) {
        let subject = crate::subject::customer_subject(row)?;
        data.subjects()
            .decrypt(tenant, &subject, &context(field, row), &ct)
            .await
    } else {
        data.keyring()
            .decrypt(tenant, &context(field, row), &ct)
            .await
    };
    let pt = match opened {
        Ok(pt) => pt,
        // The customer was forgotten: the value no longer exists.
        Err(CryptoError::SubjectErased) => return Ok(None),
        Err(e) => return Err(crypto_failed(e)),
    };
    let s = pt
        .as_str()
        .map_err(|e| ApiError::internal(format!("field encryption: {e}")))?;
    Ok(Some(s.to_owned()))
}

/// Decrypts the stored fields of customer `row`.
pub async fn open(
    data: &Data,
    tenant: TenantId,
    row: Id,
    s: &SealedFields,
) -> Result<SensitiveFields, ApiError> {
    Ok(SensitiveFields {
        phone: open_one(data, tenant, row, "phone", s.phone_enc.as_ref()).await?,
        pan: open_one(data, tenant, row, "pan", s.pan_enc.as_ref()).await?,
        aadhaar: open_one(data, tenant, row, "aadhaar", s.aadhaar_enc.as_ref()).await?,
        bank_account: open_one(
            data,
            tenant,
            row,
            "bank_account",
            s.bank_account_enc.as_ref(),
        )
        .await?,
        medical_history: open_one(
            data,
            tenant,
            row,
            "medical_history",
            s.medical_history_enc.as_ref(),
        )
        .await?,
    })
}

/// Which fields are set, each shown as `••••`: nothing is decrypted.
pub fn masked(s: &SealedFields) -> SensitiveFields {
    let present = |v: &Option<String>| v.as_ref().map(|_| "••••".to_owned());
    SensitiveFields {
        phone: present(&s.phone_enc),
        pan: present(&s.pan_enc),
        aadhaar: present(&s.aadhaar_enc),
        bank_account: present(&s.bank_account_enc),
        medical_history: present(&s.medical_history_enc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_normalised_and_checked() {
        assert_eq!(normalize_pan(" abcde1234f ").unwrap(), "ABCDE1234F");
        assert!(normalize_pan("ABCD12345F").is_err());
        assert_eq!(normalize_phone("+91 98765-43210").unwrap(), "+919876543210");
        assert!(normalize_phone("12ab").is_err());
        let bad = SensitiveFields {
            aadhaar: Some("1234".into()),
            ..Default::default()
        };
        assert!(normalize(&bad).is_err());
    }
}
