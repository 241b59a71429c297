//! Helpers for tests that need a real PostgreSQL: a fresh, migrated database per test.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use crate::{CheckpointStore, PartitionCheckpoint, PgStore, Position, Store, TimescaleMode};

/// The environment variable naming the test server (`scripts/services.sh start` prints it).
pub const PG_URL_ENV: &str = "SEISMO_TEST_PG_URL";

/// The test server's URL. Panics with instructions when it is not configured: tests that
/// need PostgreSQL must fail loudly, never skip silently.
pub fn pg_url() -> String {
    match std::env::var(PG_URL_ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{PG_URL_ENV} is not set: this test needs a PostgreSQL server. Run the test suite \
             with scripts/test.sh (it starts one), or start one with `scripts/services.sh start` \
             and export what it prints"
        ),
    }
}

/// Creates an empty database on the test server and returns its URL.
pub async fn fresh_database() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let url = pg_url();
    let name = format!(
        "seismo_t_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    );
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("cannot connect to the test PostgreSQL at {url} ({e}); start it with scripts/services.sh start")
    });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("{PG_URL_ENV}={url} does not end in /DATABASE"),
    }
}

/// A migrated store on a fresh database.
pub async fn fresh_postgres() -> PgStore {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, TimescaleMode::Auto)
        .await
        .expect("connecting to the test database");
    store.migrate().await.expect("migrating the test database");
    store
}

/// The checkpoint contract, run against every store: entries are written incrementally,
/// a partition's state comes back whole, and a stale save never rolls a partition back.
pub async fn checkpoint_conformance(store: &dyn CheckpointStore) {
    let cp = |offset: i64, upserts: &[(&str, &str)], deletes: &[&str]| PartitionCheckpoint {
        partition: 3,
        format: 7,
        positions: vec![
            Position {
                topic: "a".into(),
                partition: 3,
                next_offset: offset,
                records: offset as u64,
            },
            Position {
                topic: "b".into(),
                partition: 3,
                next_offset: offset / 2,
                records: 1,
            },
        ],
        upserts: upserts
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        deletes: deletes.iter().map(|k| k.as_bytes().to_vec()).collect(),
    };
    let empty = store.load_partition("g", 3).await.unwrap();
    assert!(empty.positions.is_empty() && empty.entries.is_empty());
    let ok = store
        .save_partitions("g", &[cp(100, &[("x", "1"), ("y", "1")], &[])])
        .await
        .unwrap();
    assert_eq!(ok, [true]);
    // Only what changed is written: x changes, y goes, z arrives.
    store
        .save_partitions("g", &[cp(200, &[("x", "2"), ("z", "2")], &["y"])])
        .await
        .unwrap();
    // A stale owner's late save must not roll the partition back.
    let ok = store
        .save_partitions("g", &[cp(150, &[("x", "stale")], &["z"])])
        .await
        .unwrap();
    assert_eq!(ok, [false]);
    let got = store.load_partition("g", 3).await.unwrap();
    assert_eq!(got.format, 7);
    let mut entries: Vec<(String, String)> = got
        .entries
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [("x".into(), "2".into()), ("z".into(), "2".into())]
    );
    let mut next: Vec<(String, i64)> = got
        .positions
        .iter()
        .map(|p| (p.topic.clone(), p.next_offset))
        .collect();
    next.sort();
    assert_eq!(next, [("a".into(), 200), ("b".into(), 100)]);
    assert!(
        store
            .load_partition("other", 3)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(store.positions("g").await.unwrap().len(), 2);
    store.clear_partition("g", 3).await.unwrap();
    assert!(
        store
            .load_partition("g", 3)
            .await
            .unwrap()
            .positions
            .is_empty()
    );
}
