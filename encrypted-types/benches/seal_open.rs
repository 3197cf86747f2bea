//! Seal and open through `Encrypted<String, C>` beside the raw AEADs of the same sizes.
//!
//! The raw baselines are aes-gcm's and aes-gcm-siv's own `Aead::encrypt`/`decrypt` with a
//! fixed nonce and no AAD: the least work either primitive can do. A third seal baseline draws
//! each nonce from the OS (`getrandom`), which is what a hand-rolled AES-GCM seal costs. The
//! library's numbers include everything a `ToSql` pays: loading the keyring, choosing the key,
//! a fresh nonce, encoding, the AAD and the allocation of the output. `suite-1` is the
//! library's AES-256-GCM path (opened for old values, sealed only by the `test-vectors`
//! feature's `seal_with_suite`), `encrypted-types` the suite-2 (AES-256-GCM-SIV) path every
//! value takes. With the `aws-lc` feature, that path runs on AWS-LC, and AWS-LC's own raw
//! AES-256-GCM and AES-256-GCM-SIV (`raw-awslc-*`, same fixed nonce, no AAD) are measured too.
#![allow(missing_docs)] // criterion_main! generates undocumented items.
#![allow(clippy::expect_used)] // a benchmark whose setup fails must stop loudly, not measure nothing.

use std::hint::black_box;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_gcm_siv::AesGcmSiv;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use encrypted_types::format::{self, Context};
use encrypted_types::{Encrypted, FallibleModel, KeyMaterial, Keyring};

encrypted_types::column_context!(BenchCol = "bench"."value");

const SIZES: [usize; 4] = [16, 64, 256, 4096];

fn bench(c: &mut Criterion) {
    let key = [7u8; 32];
    Keyring::builder()
        .data_key(1, None, KeyMaterial::from_bytes(key))
        .primary(None, 1)
        .build()
        .expect("valid keyring")
        .install();
    let keyring = Keyring::current().expect("installed");
    let data_key = keyring.key(1.into()).expect("key 1");
    let ctx = Context::new("bench", "value", None, "string");
    let raw = Aes256Gcm::new(&key.into());
    // Suite 2's instantiation: AES-256-GCM-SIV over the encrypt-only AES key schedule.
    let siv = AesGcmSiv::<aes::Aes256Enc>::new(&key.into());
    let nonce = Nonce::from([9u8; 12]);
    let siv_nonce = aes_gcm_siv::Nonce::from([9u8; 12]);

    let mut seal = c.benchmark_group("seal");
    for size in SIZES {
        let text = "x".repeat(size);
        seal.throughput(Throughput::Bytes(size as u64));
        seal.bench_with_input(BenchmarkId::new("raw-aes-gcm", size), &text, |b, t| {
            b.iter(|| {
                raw.encrypt(&nonce, black_box(t.as_bytes()))
                    .expect("encrypt")
            });
        });
        seal.bench_with_input(
            BenchmarkId::new("raw-aes-gcm+os-nonce", size),
            &text,
            |b, t| {
                b.iter(|| {
                    let mut n = [0u8; 12];
                    getrandom::fill(&mut n).expect("getrandom");
                    raw.encrypt(&Nonce::from(n), black_box(t.as_bytes()))
                        .expect("encrypt")
                });
            },
        );
        seal.bench_with_input(BenchmarkId::new("raw-aes-gcm-siv", size), &text, |b, t| {
            b.iter(|| {
                siv.encrypt(&siv_nonce, black_box(t.as_bytes()))
                    .expect("encrypt")
            });
        });
        #[cfg(feature = "aws-lc")]
        for (name, alg) in awslc::ALGS {
            let key = awslc::key(alg, &key);
            seal.bench_with_input(BenchmarkId::new(name, size), &text, |b, t| {
                b.iter(|| awslc::seal(&key, black_box(t.as_bytes())));
            });
        }
        seal.bench_with_input(BenchmarkId::new("suite-1", size), &text, |b, t| {
            b.iter(|| {
                let mut n = [0u8; 12];
                getrandom::fill(&mut n).expect("getrandom");
                format::seal_with_suite(data_key, &ctx, black_box(t), 1, n).expect("seal")
            });
        });
        let value: Encrypted<String, BenchCol> = Encrypted::new(text.clone());
        seal.bench_with_input(BenchmarkId::new("encrypted-types", size), &value, |b, v| {
            b.iter(|| black_box(v).seal().expect("seal"));
        });
    }
    seal.finish();

    let mut open = c.benchmark_group("open");
    for size in SIZES {
        let text = "x".repeat(size);
        open.throughput(Throughput::Bytes(size as u64));
        let raw_ct = raw.encrypt(&nonce, text.as_bytes()).expect("encrypt");
        open.bench_with_input(BenchmarkId::new("raw-aes-gcm", size), &raw_ct, |b, ct| {
            b.iter(|| {
                raw.decrypt(&nonce, black_box(ct.as_slice()))
                    .expect("decrypt")
            });
        });
        let siv_ct = siv.encrypt(&siv_nonce, text.as_bytes()).expect("encrypt");
        open.bench_with_input(
            BenchmarkId::new("raw-aes-gcm-siv", size),
            &siv_ct,
            |b, ct| {
                b.iter(|| {
                    siv.decrypt(&siv_nonce, black_box(ct.as_slice()))
                        .expect("decrypt")
                });
            },
        );
        #[cfg(feature = "aws-lc")]
        for (name, alg) in awslc::ALGS {
            let key = awslc::key(alg, &key);
            let ct = awslc::seal(&key, text.as_bytes());
            open.bench_with_input(BenchmarkId::new(name, size), &ct, |b, ct| {
                b.iter(|| awslc::open(&key, black_box(ct)));
            });
        }
        let suite1 = format::seal_with_suite(data_key, &ctx, &text, 1, [3; 12]).expect("seal");
        open.bench_with_input(BenchmarkId::new("suite-1", size), &suite1, |b, s| {
            b.iter(|| Encrypted::<String, BenchCol>::open(black_box(s)).expect("open"));
        });
        let sealed = Encrypted::<String, BenchCol>::new(text)
            .seal()
            .expect("seal");
        open.bench_with_input(
            BenchmarkId::new("encrypted-types", size),
            &sealed,
            |b, s| {
                b.iter(|| Encrypted::<String, BenchCol>::open(black_box(s)).expect("open"));
            },
        );
    }
    open.finish();

    // The key lookup at scale: a 64-byte value opened through a keyring of 10 keys and of
    // 200,001 (the key table of 100,000 tenants), cycling over 1,024 values sealed under keys
    // spread across it, so the lookup's path changes from value to value as in a real read.
    let mut keys = c.benchmark_group("keys");
    for n in [10_u32, 200_001] {
        let mut builder = Keyring::builder();
        for id in 1..=n {
            builder = builder.data_key(id, None, KeyMaterial::from_bytes(key));
        }
        let ring = builder.primary(None, 1).build().expect("valid keyring");
        let text = "x".repeat(64);
        let values: Vec<Vec<u8>> = (0..1024_u32)
            .map(|i| {
                let id = 1 + (i.wrapping_mul(2_654_435_761) % n);
                let k = ring.key(id.into()).expect("key");
                format::seal(k, &ctx, &text).expect("seal")
            })
            .collect();
        let mut next = values.iter().cycle();
        keys.bench_function(BenchmarkId::new("open-64", n), |b| {
            b.iter(|| {
                let v = next.next().expect("cycle");
                Encrypted::<String, BenchCol>::open_with(&ring, black_box(v)).expect("open")
            });
        });
    }
    keys.finish();
    row(c);
}

encrypted_types::column_context!(RowName = "patients"."name");
encrypted_types::column_context!(RowEmail = "patients"."email");
encrypted_types::column_context!(RowPhone = "patients"."phone");
encrypted_types::column_context!(RowNotes = "patients"."notes");

/// The clinic row of the third performance review (§3.1): four string fields of 15, 25, 11 and
/// 200 bytes, sealed and opened through the library's path (`seal_with` / `open_with` of each
/// field: key choice, nonce, encoding, AAD, output), beside raw RustCrypto AES-256-GCM of the
/// same fields with the same AADs (the library's, for suite 1), in place, no nonce drawn: Σ R(f)
/// of that review, the bound the row work is compared with. Diesel's column copies excluded.
fn row(c: &mut Criterion) {
    use aes_gcm::aead::AeadInOut;
    let tenant = encrypted_types::TenantId::from("clinic-7");
    let key = [7u8; 32];
    let ring = Keyring::builder()
        .data_key(1, Some(tenant.clone()), KeyMaterial::from_bytes(key))
        .primary(Some(tenant.clone()), 1)
        .build()
        .expect("valid keyring");
    let fields: [(&str, String); 4] = [
        ("name", "x".repeat(15)),
        ("email", "x".repeat(25)),
        ("phone", "x".repeat(11)),
        ("notes", "x".repeat(200)),
    ];
    // The AADs the library builds for these fields (FORMAT.md §2), with suite 1's header.
    let aads: Vec<Vec<u8>> = fields
        .iter()
        .map(|(column, _)| {
            let mut aad = format::DOMAIN.to_vec();
            aad.extend_from_slice(&[1, 1, 0, 0, 0, 1]);
            Context::new("patients", column, Some(&tenant), "string")
                .encode(&mut aad)
                .expect("context");
            aad
        })
        .collect();
    let raw = Aes256Gcm::new(&key.into());
    let nonce = Nonce::from([9u8; 12]);
    let mut group = c.benchmark_group("row");
    // Σ R(f): each field sealed in place under the same nonce and its AAD.
    let seal_raw_row = || -> Vec<(Vec<u8>, aes_gcm::Tag)> {
        fields
            .iter()
            .zip(&aads)
            .map(|((_, v), aad)| {
                let mut buf = black_box(v.as_bytes()).to_vec();
                let tag = raw
                    .encrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into())
                    .expect("encrypt");
                (buf, tag)
            })
            .collect()
    };
    group.bench_function("raw-aes-gcm-seal", |b| b.iter(seal_raw_row));
    let sealed_raw = seal_raw_row();
    group.bench_function("raw-aes-gcm-open", |b| {
        b.iter(|| {
            sealed_raw
                .iter()
                .zip(&aads)
                .map(|((ct, tag), aad)| {
                    let mut buf = black_box(ct).clone();
                    raw.decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), tag)
                        .expect("decrypt");
                    buf
                })
                .collect::<Vec<_>>()
        });
    });
    let [(_, n), (_, e), (_, p), (_, t)] = &fields;
    let name = Encrypted::<String, RowName>::for_tenant(n.clone(), tenant.clone());
    let email = Encrypted::<String, RowEmail>::for_tenant(e.clone(), tenant.clone());
    let phone = Encrypted::<String, RowPhone>::for_tenant(p.clone(), tenant.clone());
    let notes = Encrypted::<String, RowNotes>::for_tenant(t.clone(), tenant.clone());
    group.bench_function("encrypted-types-seal", |b| {
        b.iter(|| {
            [
                black_box(&name).seal_with(&ring).expect("seal"),
                black_box(&email).seal_with(&ring).expect("seal"),
                black_box(&phone).seal_with(&ring).expect("seal"),
                black_box(&notes).seal_with(&ring).expect("seal"),
            ]
        });
    });
    let (sn, se, sp, st) = (
        name.seal_with(&ring).expect("seal"),
        email.seal_with(&ring).expect("seal"),
        phone.seal_with(&ring).expect("seal"),
        notes.seal_with(&ring).expect("seal"),
    );
    group.bench_function("encrypted-types-open", |b| {
        b.iter(|| {
            (
                Encrypted::<String, RowName>::open_with(&ring, black_box(&sn)).expect("open"),
                Encrypted::<String, RowEmail>::open_with(&ring, black_box(&se)).expect("open"),
                Encrypted::<String, RowPhone>::open_with(&ring, black_box(&sp)).expect("open"),
                Encrypted::<String, RowNotes>::open_with(&ring, black_box(&st)).expect("open"),
            )
        });
    });
    // The derive's own row path, what an insert and a select run: the write struct built from
    // the model (one keyring read, one key, one nonce and one derived state for the row), and
    // the stored row opened (one keyring read, the state derived once, the tenant checked by
    // reference). Installed, as in an application.
    ring.install();
    let model = BenchPatient {
        id: 1,
        clinic_id: "clinic-7".to_owned(),
        name: n.clone(),
        email: e.clone(),
        phone: p.clone(),
        notes: t.clone(),
    };
    group.bench_function("derive-row-seal", |b| {
        b.iter(|| BenchPatient::batch(std::slice::from_ref(black_box(&model))));
    });
    let written = BenchPatient::batch(std::slice::from_ref(&model));
    let bytes = |w: &encrypted_types::Written| w.bytes().expect("sealed").to_vec();
    let stored = written
        .first()
        .map(|w| {
            (
                bytes(&w.name),
                bytes(&w.email),
                bytes(&w.phone),
                bytes(&w.notes),
            )
        })
        .expect("one row");
    let open_row = || {
        let (n, e, p, t) = black_box(&stored).clone();
        <BenchPatient as FallibleModel>::open(BenchRaw {
            id: 1,
            clinic_id: "clinic-7".to_owned(),
            name: n,
            email: e,
            phone: p,
            notes: t,
        })
        .expect("open")
    };
    group.bench_function("derive-row-open", |b| {
        b.iter(open_row);
    });
    // The same read with the audit sink installed (a 60 s coalescing interval): one call per
    // row into thread-local counts.
    encrypted_types::audit::set_sink(encrypted_types::audit::CoalescingSink::default());
    group.bench_function("derive-row-open+audit", |b| {
        b.iter(open_row);
    });
    encrypted_types::audit::clear_sink();
    Keyring::uninstall();
    group.finish();
}

mod clinic {
    diesel::table! {
        patients (id) {
            id -> BigInt,
            clinic_id -> Text,
            name -> Binary,
            email -> Binary,
            phone -> Binary,
            notes -> Binary,
        }
    }
}

/// The clinic row as a model: the same table, columns, tenant and AADs as the fields above.
#[derive(encrypted_types::Encrypted)]
#[encrypted(table = clinic::patients, tenant = clinic_id)]
struct BenchPatient {
    id: i64,
    clinic_id: String,
    #[encrypted]
    name: String,
    #[encrypted]
    email: String,
    #[encrypted]
    phone: String,
    #[encrypted]
    notes: String,
}

/// The row as stored, which Diesel builds from the columns (its copies excluded here).
type BenchRaw = <BenchPatient as FallibleModel>::Raw;

/// AWS-LC's raw AEADs: seal into a fresh buffer (as `Aead::encrypt` does), open a copy.
#[cfg(feature = "aws-lc")]
mod awslc {
    use aws_lc_rs::aead::{
        AES_256_GCM, AES_256_GCM_SIV, Aad, Algorithm, LessSafeKey, Nonce, UnboundKey,
    };

    pub(crate) const ALGS: [(&str, &Algorithm); 2] = [
        ("raw-awslc-gcm", &AES_256_GCM),
        ("raw-awslc-gcm-siv", &AES_256_GCM_SIV),
    ];

    pub(crate) fn key(alg: &'static Algorithm, key: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(alg, key).expect("a 32-byte key"))
    }

    pub(crate) fn seal(key: &LessSafeKey, plain: &[u8]) -> Vec<u8> {
        let mut out = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([9; 12]),
            Aad::empty(),
            &mut out,
        )
        .expect("seal");
        out
    }

    pub(crate) fn open(key: &LessSafeKey, sealed: &[u8]) -> Vec<u8> {
        let mut buf = sealed.to_vec();
        let len = key
            .open_in_place(
                Nonce::assume_unique_for_key([9; 12]),
                Aad::empty(),
                &mut buf,
            )
            .expect("open")
            .len();
        buf.truncate(len);
        buf
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
