//! The audit trail beyond failed opens: the anomaly sink on real opens, and the metrics
//! counters. In a test binary of its own, because the audit sink is process-wide.
// A test reports failure by panicking: unwrap, expect and indexing are assertions here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use encrypted_types::audit::{
    AnomalyScope, AnomalySink, Limits, clear_sink, set_sink, with_actor, with_actor_async,
};
use encrypted_types::{Encrypted, Error, KeyMaterial, Keyring, TenantId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

encrypted_types::column_context!(Notes = "patients"."notes");

const CANARY: &str = "canary: diagnosis 4412 confidential";

fn install_keyring() {
    Keyring::builder()
        .data_key(1, Some(TenantId::from(7)), KeyMaterial::from_bytes([3; 32]))
        .primary(Some(TenantId::from(7)), 1)
        .build()
        .unwrap()
        .install();
}

fn sealed() -> Vec<u8> {
    Encrypted::<String, Notes>::with_tenant(CANARY.into(), Some(TenantId::from(7)))
        .seal()
        .unwrap()
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The sink and the keyring are process-wide: these tests run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_anomaly_sink_fires_once_above_the_limit_and_never_at_it() {
    let _g = serial();
    install_keyring();
    let value = sealed();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    set_sink(
        AnomalySink::new(Limits::per_minute().actor(1_000))
            .on_anomaly(move |a| log.lock().unwrap().push(a.clone())),
    );
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let open_as = |actor: &str, n: usize| {
            with_actor(actor, || {
                for _ in 0..n {
                    let v = Encrypted::<String, Notes>::open(&value).unwrap();
                    assert_eq!(v.as_str(), CANARY);
                }
            })
        };
        // Exactly at the limit: quiet.
        open_as("nurse-17", 1_000);
        open_as("nurse-18", 1_000);
        assert!(
            seen.lock().unwrap().is_empty(),
            "1,000 reads each is within the limit"
        );
        // One read more by one actor: one anomaly, for that actor only, and no second one for
        // the reads after it in the same window.
        open_as("nurse-17", 1);
        open_as("nurse-17", 200);
    });
    clear_sink();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].scope, AnomalyScope::Actor("nurse-17".into()));
    assert_eq!((seen[0].count, seen[0].limit), (1_001, 1_000));
    let log = out.text();
    assert_eq!(log.matches("event=\"anomaly\"").count(), 1, "{log}");
    assert!(log.contains("actor nurse-17"), "{log}");
}

#[test]
fn the_actor_follows_an_async_task_across_threads() {
    let _g = serial();
    install_keyring();
    let value = sealed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let actors = rt.block_on(async {
        let mut tasks = Vec::new();
        for name in ["import-a", "import-b"] {
            let value = value.clone();
            tasks.push(tokio::spawn(with_actor_async(name, async move {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                    Encrypted::<String, Notes>::open(&value).unwrap();
                    seen.push(encrypted_types::audit::current_actor());
                }
                seen
            })));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    for (seen, name) in actors.iter().zip(["import-a", "import-b"]) {
        assert!(seen.iter().all(|a| a.as_deref() == Some(name)), "{seen:?}");
    }
    assert_eq!(encrypted_types::audit::current_actor(), None);
}

fn counter(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> u64 {
    snapshot
        .iter()
        .filter(|(k, _, _, _)| {
            k.key().name() == name
                && labels
                    .iter()
                    .all(|(l, v)| k.key().labels().any(|x| x.key() == *l && x.value() == *v))
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[test]
fn seals_opens_and_failures_are_counters_of_the_metrics_facade() {
    let _g = serial();
    install_keyring();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let values: Vec<Vec<u8>> = (0..3).map(|_| sealed()).collect();
        for v in &values[..2] {
            Encrypted::<String, Notes>::open(v).unwrap();
        }
        let mut tampered = values[2].clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            Encrypted::<String, Notes>::open(&tampered).err(),
            Some(Error::AuthenticationFailed)
        );
        // A value of no tenant has no key here: a seal failure, counted by its reason.
        assert!(matches!(
            Encrypted::<String, Notes>::new("x".into()).seal(),
            Err(Error::NoPrimaryKey { .. })
        ));
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let col = [("table", "patients"), ("column", "notes")];
    assert_eq!(counter(&snapshot, "encrypted_types_seals_total", &col), 3);
    assert_eq!(counter(&snapshot, "encrypted_types_opens_total", &col), 2);
    assert_eq!(
        counter(
            &snapshot,
            "encrypted_types_open_failures_total",
            &[
                ("table", "patients"),
                ("column", "notes"),
                ("reason", "authentication_failed")
            ]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "encrypted_types_seal_failures_total",
            &[("reason", "no_primary_key")]
        ),
        1
    );
}

/// A derived model's read reports each row to the sink once, with the columns it opened (a
/// `None` field opens nothing), and never value by value.
#[test]
fn a_derived_read_reports_each_row_once_with_its_opened_columns() {
    use diesel::prelude::*;
    use encrypted_types::audit::AuditSink;
    use encrypted_types_tests::models::Patient;
    use encrypted_types_tests::schema::et_patients;

    type Calls = Arc<Mutex<Vec<(Option<TenantId>, &'static str, Vec<&'static str>)>>>;
    struct Recorder(Calls);
    impl AuditSink for Recorder {
        fn opened(&self, tenant: Option<&TenantId>, table: &'static str, column: &'static str) {
            // Marked, so the test sees a per-value call.
            self.0
                .lock()
                .unwrap()
                .push((tenant.cloned(), table, vec!["per-value", column]));
        }
        fn opened_row(
            &self,
            tenant: Option<&TenantId>,
            table: &'static str,
            columns: &[&'static str],
        ) {
            self.0
                .lock()
                .unwrap()
                .push((tenant.cloned(), table, columns.to_vec()));
        }
    }

    let _g = serial();
    let conn = &mut encrypted_types_tests::sqlite();
    // This binary's other tests install their own keyring.
    encrypted_types_tests::test_keyring().install();
    let patients = Patient::several(3, "audit-rows");
    diesel::insert_into(et_patients::table)
        .values(Patient::batch(&patients))
        .execute(conn)
        .unwrap();
    let calls: Calls = Arc::default();
    set_sink(Recorder(Arc::clone(&calls)));
    let back: Vec<Patient> = et_patients::table
        .select(Patient::as_select())
        .order(et_patients::id)
        .load(conn)
        .unwrap();
    clear_sink();
    assert_eq!(back.len(), 3);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for ((tenant, table, columns), p) in calls.iter().zip(&patients) {
        assert_eq!(tenant.as_ref(), Some(&TenantId::from(p.clinic_id)));
        assert_eq!(*table, "et_patients");
        // `phone` is `None` in every sample: not opened, not reported.
        assert_eq!(columns, &["name", "email", "ssn", "dob", "notes"]);
    }
}
