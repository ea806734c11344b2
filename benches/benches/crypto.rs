//! Field encryption against raw `aes-gcm` with the same key, same run.
//!
//! Run: `cargo bench -p tenancy-benches --bench crypto` (no database needed).
//!
//! - `encrypt_{1KiB,64KiB}/raw_aes_gcm` (**baseline**): `Aes256Gcm::encrypt`
//!   with a fresh random nonce and no associated data.
//! - `encrypt_*/tenancy`: `crypto::encrypt` — the same plus the versioned
//!   header and associated data binding tenant, key version and context.
//! - `decrypt_*/*`: the reverse.
//! - `blind_index/hmac_16`: one blind index of a 10-byte value.
//! - `keyring_decrypt_1KiB/{raw_aes_gcm,cache_hit,cache_miss}`: decrypting
//!   through a `Keyring` whose unwrapped key is cached, against the same
//!   after evicting the tenant each time (a key-store read and an unwrap by
//!   the local provider; a KMS adds its network round trip on top).
//! - `keyring_encrypt_1KiB/{raw_aes_gcm,warm}`: encrypting through a warm
//!   `Keyring` (cached primary key, nonces taken from the block reserved in
//!   the key store; the reservations are amortised into the figure).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use tenancy_core::TenantId;
use tenancy_core::crypto::keys::{InMemoryKeyStore, Keyring, LocalKeyProvider};
use tenancy_core::crypto::{BlindIndexKey, DataKey, decrypt, encrypt};

fn bench(c: &mut Criterion) {
    let tenant = TenantId::new_v4();
    let key = DataKey::generate(1);
    let raw = Aes256Gcm::new(key.expose_bytes().into());
    for (name, size) in [("1KiB", 1024usize), ("64KiB", 64 * 1024)] {
        let plaintext = vec![0x5au8; size];
        let mut g = c.benchmark_group(format!("encrypt_{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("raw_aes_gcm", |b| {
            b.iter(|| {
                let mut nonce = [0u8; 12];
                OsRng.fill_bytes(&mut nonce);
                black_box(
                    raw.encrypt(&Nonce::from(nonce), black_box(plaintext.as_slice()))
                        .unwrap(),
                )
            });
        });
        g.bench_function("tenancy", |b| {
            b.iter(|| {
                black_box(
                    encrypt(&key, tenant, b"customers.pan:42", black_box(&plaintext)).unwrap(),
                )
            });
        });
        g.finish();

        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let raw_sealed = raw
            .encrypt(&Nonce::from(nonce), plaintext.as_slice())
            .unwrap();
        let sealed = encrypt(&key, tenant, b"customers.pan:42", &plaintext).unwrap();
        let mut g = c.benchmark_group(format!("decrypt_{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function("raw_aes_gcm", |b| {
            b.iter(|| {
                black_box(
                    raw.decrypt(&Nonce::from(nonce), black_box(raw_sealed.as_slice()))
                        .unwrap(),
                )
            });
        });
        g.bench_function("tenancy", |b| {
            b.iter(|| {
                black_box(
                    decrypt(
                        |_| Some(&key),
                        tenant,
                        b"customers.pan:42",
                        black_box(&sealed),
                    )
                    .unwrap(),
                )
            });
        });
        g.finish();
    }
    let index = BlindIndexKey::derive(&[9u8; 32], tenant, "customers.pan", 16);
    c.bench_function("blind_index/hmac_16", |b| {
        b.iter(|| black_box(index.index(black_box(b"ABCDE1234F"))));
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = Keyring::new(
        Arc::new(LocalKeyProvider::new(
            LocalKeyProvider::master_from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
                .unwrap(),
        )),
        Arc::new(InMemoryKeyStore::default()),
    );
    let plaintext = vec![0x5au8; 1024];
    let sealed = rt
        .block_on(keys.encrypt(tenant, b"customers.pan:42", &plaintext))
        .unwrap();
    let mut g = c.benchmark_group("keyring_decrypt_1KiB");
    g.bench_function("raw_aes_gcm", |b| {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let raw_sealed = raw
            .encrypt(&Nonce::from(nonce), plaintext.as_slice())
            .unwrap();
        b.iter(|| {
            black_box(
                raw.decrypt(&Nonce::from(nonce), raw_sealed.as_slice())
                    .unwrap(),
            )
        });
    });
    g.bench_function("cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                keys.decrypt(tenant, b"customers.pan:42", black_box(&sealed))
                    .await
                    .unwrap(),
            )
        });
    });
    g.bench_function("cache_miss", |b| {
        b.to_async(&rt).iter(|| async {
            keys.evict(tenant).await;
            black_box(
                keys.decrypt(tenant, b"customers.pan:42", black_box(&sealed))
                    .await
                    .unwrap(),
            )
        });
    });
    g.finish();

    // Encryption through the keyring: the primary key from the caches and
    // one nonce of the block reserved in the key store (a reservation every
    // 65 536 encryptions at most, amortised into the figure).
    let mut g = c.benchmark_group("keyring_encrypt_1KiB");
    g.bench_function("raw_aes_gcm", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            OsRng.fill_bytes(&mut nonce);
            black_box(
                raw.encrypt(&Nonce::from(nonce), black_box(plaintext.as_slice()))
                    .unwrap(),
            )
        });
    });
    g.bench_function("warm", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                keys.encrypt(tenant, b"customers.pan:42", black_box(&plaintext))
                    .await
                    .unwrap(),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
