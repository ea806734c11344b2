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
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tenancy_core::TenantId;
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
