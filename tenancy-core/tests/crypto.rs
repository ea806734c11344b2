//! Field encryption: round trips, tampering, truncation, wrong tenant,
//! context or key, text encoding, blind indexes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use tenancy_core::TenantId;
use tenancy_core::crypto::{
    BlindIndexKey, CryptoError, DataKey, decrypt, encrypt, from_text, key_version, to_text,
};

fn tenant() -> TenantId {
    TenantId::new_v4()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip_over_arbitrary_bytes_and_contexts(
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
        context in proptest::collection::vec(any::<u8>(), 0..128),
        version in any::<u32>(),
    ) {
        let t = tenant();
        let k = DataKey::generate(version);
        let c = encrypt(&k, t, &context, &plaintext).unwrap();
        let p = decrypt(|_| Some(&k), t, &context, &c).unwrap();
        prop_assert_eq!(p.as_slice(), plaintext.as_slice());
        let text = to_text(&c);
        prop_assert!(text.starts_with("tnc1:"));
        prop_assert_eq!(from_text(&text).unwrap(), c);
    }

    /// Flipping any single bit of any byte is detected.
    #[test]
    fn any_single_byte_change_is_an_error(
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let t = tenant();
        let k = DataKey::generate(1);
        let mut c = encrypt(&k, t, b"ctx", &plaintext).unwrap();
        let i = pos.index(c.len());
        c[i] ^= 1 << bit;
        let r = decrypt(|v| (v == 1).then_some(&k), t, b"ctx", &c);
        prop_assert!(r.is_err(), "byte {} bit {} changed and still decrypted", i, bit);
    }

    /// Every truncation is an error.
    #[test]
    fn truncation_is_an_error(plaintext in proptest::collection::vec(any::<u8>(), 0..128), cut in any::<prop::sample::Index>()) {
        let t = tenant();
        let k = DataKey::generate(1);
        let c = encrypt(&k, t, b"ctx", &plaintext).unwrap();
        let n = cut.index(c.len());
        prop_assert!(decrypt(|_| Some(&k), t, b"ctx", &c[..n]).is_err());
    }

    /// Garbage never decrypts and never panics.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200), text in ".{0,100}") {
        let k = DataKey::generate(1);
        prop_assert!(decrypt(|_| Some(&k), tenant(), b"", &bytes).is_err());
        let _ = from_text(&text);
    }
}

#[test]
fn another_tenant_context_or_key_is_an_error() {
    let (a, b) = (tenant(), tenant());
    let k1 = DataKey::generate(1);
    let other = DataKey::generate(1); // same version, different key
    let c = encrypt(&k1, a, b"customers.pan:42", b"ABCDE1234F").unwrap();
    assert_eq!(
        decrypt(|_| Some(&k1), b, b"customers.pan:42", &c),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        decrypt(|_| Some(&k1), a, b"customers.pan:43", &c),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        decrypt(|_| Some(&k1), a, b"customers.aadhaar:42", &c),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        decrypt(|_| Some(&other), a, b"customers.pan:42", &c),
        Err(CryptoError::Authentication)
    );
    assert_eq!(
        decrypt(|_| None, a, b"customers.pan:42", &c),
        Err(CryptoError::UnknownKeyVersion(1))
    );
    // A key of another version offered for this one is refused, not tried.
    let k2 = DataKey::generate(2);
    assert_eq!(
        decrypt(|_| Some(&k2), a, b"customers.pan:42", &c),
        Err(CryptoError::UnknownKeyVersion(1))
    );
}

#[test]
fn old_versions_keep_decrypting_after_rotation() {
    let t = tenant();
    let (v1, v2) = (DataKey::generate(1), DataKey::generate(2));
    let old = encrypt(&v1, t, b"c", b"written under v1").unwrap();
    let new = encrypt(&v2, t, b"c", b"written under v2").unwrap();
    let keyring = |v: u32| match v {
        1 => Some(&v1),
        2 => Some(&v2),
        _ => None,
    };
    assert_eq!(key_version(&old).unwrap(), 1);
    assert_eq!(key_version(&new).unwrap(), 2);
    assert_eq!(
        decrypt(keyring, t, b"c", &old).unwrap().as_slice(),
        b"written under v1"
    );
    assert_eq!(
        decrypt(keyring, t, b"c", &new).unwrap().as_slice(),
        b"written under v2"
    );
}

#[test]
fn unknown_format_and_bad_text_are_typed_errors() {
    let t = tenant();
    let k = DataKey::generate(1);
    let mut c = encrypt(&k, t, b"", b"x").unwrap();
    c[0] = 2;
    assert_eq!(
        decrypt(|_| Some(&k), t, b"", &c),
        Err(CryptoError::UnknownFormat(2))
    );
    assert_eq!(from_text("ABCDE1234F"), Err(CryptoError::NotEncrypted));
    assert_eq!(from_text("tnc1:***"), Err(CryptoError::NotEncrypted));
    assert_eq!(
        decrypt(|_| Some(&k), t, b"", &[]),
        Err(CryptoError::Truncated)
    );
    assert!(DataKey::from_slice(1, &[0u8; 31]).is_err());
}

#[test]
fn same_plaintext_encrypts_differently_each_time() {
    let t = tenant();
    let k = DataKey::generate(1);
    let a = encrypt(&k, t, b"c", b"same").unwrap();
    let b = encrypt(&k, t, b"c", b"same").unwrap();
    assert_ne!(a, b, "random nonces");
    assert_eq!(k.encryptions(), 2);
}

#[test]
fn blind_indexes_match_within_a_tenant_never_across() {
    let root = [42u8; 32];
    let (a, b) = (tenant(), tenant());
    let ia = BlindIndexKey::derive(&root, a, "customers.pan", 16);
    let ib = BlindIndexKey::derive(&root, b, "customers.pan", 16);
    let phone_a = BlindIndexKey::derive(&root, a, "customers.phone", 16);
    assert_eq!(ia.index(b"ABCDE1234F"), ia.index(b"ABCDE1234F"));
    assert_ne!(ia.index(b"ABCDE1234F"), ia.index(b"ABCDE1234G"));
    assert_ne!(
        ia.index(b"ABCDE1234F"),
        ib.index(b"ABCDE1234F"),
        "tenants differ"
    );
    assert_ne!(
        ia.index(b"ABCDE1234F"),
        phone_a.index(b"ABCDE1234F"),
        "columns differ"
    );
    let other_root = BlindIndexKey::derive(&[1u8; 32], a, "customers.pan", 16);
    assert_ne!(ia.index(b"x"), other_root.index(b"x"));
    assert_eq!(
        BlindIndexKey::derive(&root, a, "p", 1).index(b"x").len(),
        4,
        "clamped"
    );
    assert_eq!(
        BlindIndexKey::derive(&root, a, "p", 64).index(b"x").len(),
        32,
        "clamped"
    );
}
