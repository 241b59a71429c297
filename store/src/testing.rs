//! Helpers for tests that need a real PostgreSQL: a fresh, migrated database per test.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use crate::{PgStore, Store, TimescaleMode};

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
