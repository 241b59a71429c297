//! PostgreSQL store tests on a real plain server: migrations, native partitions, COPY
//! idempotence, checkpoints, tokens and audit, and the fall-back on a server that has
//! TimescaleDB's files without preloading it (tests/timescaledb.rs runs the same contracts
//! on TimescaleDB).

use chrono::{TimeZone, Utc};
use seismo_schemas::{Labels, MetricPoint};
use seismo_store::testing::{fresh_database, fresh_postgres};
use seismo_store::{Layout, PgStore, Store, TimescaleMode, TimescaleSupport};

fn point(host: &str, ts: i64, value: f64) -> MetricPoint {
    let labels: Labels = [("host".to_string(), host.to_string())].into();
    MetricPoint {
        tenant: "default".into(),
        name: "cpu".into(),
        labels,
        ts,
        value,
    }
}

#[tokio::test]
async fn plain_postgres_gets_native_partitions_with_the_same_tables() {
    // scripts/services.sh installs TimescaleDB's files on this server but does not preload
    // the library: `auto` must fall back to native partitions, not fail.
    let store = fresh_postgres().await;
    match store.timescale_support().await.unwrap() {
        TimescaleSupport::Unusable(why) => assert!(why.contains("preload"), "{why}"),
        other => {
            panic!("this test expects TimescaleDB installed but not preloaded, found {other:?}")
        }
    }
    let extensions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(extensions, 0, "the probe left nothing behind");
    assert_eq!(store.layout().await.unwrap(), Layout::NativePartitions);
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    let partitioned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        partitioned,
        ["anomalies", "bands", "forecasts", "metric_points"]
    );
    let brin: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE indexdef ILIKE '%USING brin%'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(brin, 4);
    // The 1-minute rollup Grafana reads exists in both layouts.
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'metric_points_1m' ORDER BY ordinal_position",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(cols, ["series_id", "bucket", "avg", "min", "max", "count"]);
}

#[tokio::test]
async fn requiring_timescaledb_fails_clearly_without_it() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, TimescaleMode::Require)
        .await
        .unwrap();
    let err = store.migrate().await.unwrap_err().to_string();
    // The server's reason and what to change.
    assert!(err.contains("must be preloaded"), "{err}");
    assert!(err.contains("shared_preload_libraries"), "{err}");
    // Nothing half-made: the failed migration left no tables behind.
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'metric_points'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn points_are_copied_once_into_daily_partitions() {
    let store = fresh_postgres().await;
    let day = 86_400_000;
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 20, 23, 0, 0)
        .unwrap()
        .timestamp_millis();
    let host = |i: i64| if i % 2 == 0 { "a" } else { "b" };
    let points: Vec<MetricPoint> = (0..3000)
        .map(|i| point(host(i), t0 + i * 60_000, i as f64 * 0.5))
        .collect();
    assert_eq!(store.insert_points(&points).await.unwrap(), 3000);
    // A replay of the same batch, and an overlapping one, add nothing twice.
    assert_eq!(store.insert_points(&points).await.unwrap(), 0);
    let more: Vec<MetricPoint> = (2990..3010)
        .map(|i| point(host(i), t0 + i * 60_000, i as f64 * 0.5))
        .collect();
    assert_eq!(store.insert_points(&more).await.unwrap(), 10);
    let c = store.counts().await.unwrap();
    assert_eq!((c.metric_points, c.series), (3010, 2));
    // 3010 minutes from 23:00 span four calendar days (UTC).
    let parts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'metric_points'::regclass",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(parts, 4);
    let a = points[0].series_id();
    let got = store.points(a, t0, t0 + day).await.unwrap();
    assert_eq!(got.len(), 720);
    assert_eq!(got[1], (t0 + 2 * 60_000, 1.0));
    // Exact values survive the binary COPY.
    let odd = [
        point("c", t0, 0.1 + 0.2),
        point("c", t0 + 1, 1e-300),
        point("c", t0 + 2, -123_456.789e10),
    ];
    store.insert_points(&odd).await.unwrap();
    let got = store.points(odd[0].series_id(), t0, t0 + 3).await.unwrap();
    let values: Vec<f64> = got.iter().map(|g| g.1).collect();
    assert_eq!(values, [0.1 + 0.2, 1e-300, -123_456.789e10]);
}

#[tokio::test]
async fn engine_transitions_follow_the_contract() {
    let store = fresh_postgres().await;
    seismo_store::testing::engine_transition_conformance(&store).await;
}

#[tokio::test]
async fn explanations_and_model_calls_follow_the_contract() {
    let store = fresh_postgres().await;
    seismo_store::testing::explain_conformance(&store).await;
}

#[tokio::test]
async fn checkpoints_are_incremental_and_never_move_backwards() {
    let store = fresh_postgres().await;
    seismo_store::testing::checkpoint_conformance(&store).await;
}

#[tokio::test]
async fn tokens_and_audit_follow_the_contract() {
    let store = fresh_postgres().await;
    seismo_store::testing::access_conformance(&store).await;
}

#[tokio::test]
async fn forecasts_query_by_run_and_tenant() {
    let store = fresh_postgres().await;
    seismo_store::testing::forecast_conformance(&store).await;
}

#[tokio::test]
async fn the_newest_points_of_a_window_are_cut_in_the_database() {
    let store = fresh_postgres().await;
    seismo_store::testing::newest_points_conformance(&store).await;
}

#[tokio::test]
async fn expected_bands_query_by_time_and_tenant() {
    let store = fresh_postgres().await;
    seismo_store::testing::band_conformance(&store).await;
}

#[tokio::test]
async fn series_list_by_name_labels_and_pages() {
    let store = fresh_postgres().await;
    seismo_store::testing::series_conformance(&store).await;
}

#[tokio::test]
async fn alerts_fired_and_resolved_in_one_batch_are_stored_once() {
    let store = fresh_postgres().await;
    seismo_store::testing::alert_conformance(&store).await;
}

#[tokio::test]
async fn errors_that_fail_every_time_are_not_retried_and_a_cancelled_statement_is() {
    let pool = sqlx::PgPool::connect(&fresh_database().await)
        .await
        .unwrap();
    let refused = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let e = sqlx::query(sql).execute(&pool).await.unwrap_err();
            seismo_store::StoreError::from(e)
        }
    };
    // A data exception (22012) and a cardinality violation (21000) come back identical on
    // every retry.
    let e = refused("SELECT 1 / 0").await;
    assert!(!e.is_transient(), "{e}");
    let e = refused("SELECT (SELECT g FROM generate_series(1, 2) g)").await;
    assert!(!e.is_transient(), "{e}");
    // A statement the server cancelled (57014, here at its timeout) may pass next time.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET statement_timeout = 20")
        .execute(&mut *conn)
        .await
        .unwrap();
    let e = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    let e = seismo_store::StoreError::from(e);
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn stages_migrating_one_database_at_once_all_succeed_and_grant_the_reader() {
    let url = fresh_database().await;
    let first = PgStore::connect(&url, TimescaleMode::Off).await.unwrap();
    first.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // As after an upgrade that adds a readable table: the grants are missing again, and
    // every stage migrates as it starts. Concurrent GRANTs on one table fail in PostgreSQL.
    sqlx::query(&format!(
        "REVOKE SELECT ON anomalies, incidents, series FROM {}",
        seismo_store::READER_ROLE
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mut stores = Vec::new();
    for _ in 0..6 {
        stores.push(PgStore::connect(&url, TimescaleMode::Off).await.unwrap());
    }
    let mut runs = tokio::task::JoinSet::new();
    for s in stores {
        runs.spawn(async move { s.migrate().await });
    }
    while let Some(r) = runs.join_next().await {
        r.unwrap().unwrap();
    }
    let (reads, secrets): (bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege($1, 'anomalies', 'SELECT') \
         AND has_table_privilege($1, 'series', 'SELECT'), \
         has_table_privilege($1, 'api_tokens', 'SELECT')",
    )
    .bind(seismo_store::READER_ROLE)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(reads && !secrets, "reads {reads}, reads tokens {secrets}");
}
