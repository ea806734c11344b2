//! Per-tenant field encryption and blind indexes.
//!
//! Run: `cargo run -p tenancy-core --example encrypt_fields`
#![allow(clippy::print_stdout)] // an example prints

use std::sync::Arc;

use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::to_text;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A master key from configuration wraps per-tenant KEKs, which wrap
    // per-tenant data keys. (Use LocalKeyProvider::persistent, or a KMS, for
    // data you keep: this in-memory one forgets its KEKs when it exits.)
    let provider = LocalKeyProvider::new(zeroize::Zeroizing::new([42u8; 32]));
    let keyring = Keyring::new(Arc::new(provider), Arc::new(InMemoryKeyStore::default()));
    let (acme, globex) = (TenantId::new_v4(), TenantId::new_v4());

    // The context binds a value to its column and row.
    let ct = keyring
        .encrypt(acme, b"customers.pan:42", b"ABCDE1234F")
        .await?;
    println!("stored: {}", to_text(&ct));
    let pt = keyring.decrypt(acme, b"customers.pan:42", &ct).await?;
    println!("opened: {}", pt.as_str()?);
    // The same ciphertext under another tenant, or another row: an error, never plaintext.
    println!(
        "as globex:  {:?}",
        keyring
            .decrypt(globex, b"customers.pan:42", &ct)
            .await
            .err()
    );
    println!(
        "other row:  {:?}",
        keyring.decrypt(acme, b"customers.pan:43", &ct).await.err()
    );

    // Blind indexes: equality search without decrypting, different per tenant.
    let idx = keyring.blind_index(acme, "customers.pan", 16).await?;
    let other = keyring.blind_index(globex, "customers.pan", 16).await?;
    println!("index(acme)   = {:02x?}", idx.index(b"ABCDE1234F"));
    println!("index(globex) = {:02x?}", other.index(b"ABCDE1234F"));

    // Rotation keeps old values readable; shredding makes them unreadable.
    keyring.rotate(acme).await?;
    println!(
        "after rotation: {}",
        keyring
            .decrypt(acme, b"customers.pan:42", &ct)
            .await?
            .as_str()?
    );
    keyring.shred(acme).await?;
    println!(
        "after shredding: {:?}",
        keyring.decrypt(acme, b"customers.pan:42", &ct).await.err()
    );
    Ok(())
}
