//! Store tests on a real TimescaleDB (2.28.3, preloaded): hypertables, compression and
//! retention policies, the 1-minute continuous aggregate with backfilled points, and the
//! store contracts the plain-PostgreSQL tests check. They fail, never skip, when the
//! extension is missing (`SEISMO_TEST_TSDB_URL`, started by scripts/test.sh).
#![expect(
    clippy::disallowed_methods,
    reason = "tests stamp live data with the wall clock"
)]

use chrono::{Duration, Utc};
use seismo_schemas::{Labels, MetricPoint};
use seismo_store::testing::fresh_timescale;
use seismo_store::{Layout, PgStore, Store, TimescaleSupport};
use sqlx::Row;

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

async fn scalar_i64(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs the refresh policy of the rollup now, as its schedule would within a minute.
async fn run_refresh_policy(store: &PgStore) {
    let job: i32 = sqlx::query_scalar(
        "SELECT job_id FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_name = 'metric_points_1m'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!("CALL run_job({job})"))
        .execute(store.pool())
        .await
        .unwrap();
}

/// Minutes of the rollup that are materialised (not computed from raw rows on read).
async fn materialised_minutes(store: &PgStore) -> i64 {
    let table: String = sqlx::query_scalar(
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates WHERE view_name = 'metric_points_1m'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    scalar_i64(store, &format!("SELECT count(*) FROM {table}")).await
}

#[tokio::test]
async fn timescaledb_gets_hypertables_policies_and_the_rollup() {
    let store = fresh_timescale().await;
    assert_eq!(
        store.timescale_support().await.unwrap(),
        TimescaleSupport::Usable
    );
    assert_eq!(store.layout().await.unwrap(), Layout::Hypertables);
    // Migrating again changes nothing (and finds the policies in place).
    store.migrate().await.unwrap();
    let version: String =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(version, "2.28.3");
    let hypertables: Vec<String> = sqlx::query_scalar(
        "SELECT hypertable_name::text FROM timescaledb_information.hypertables \
         WHERE hypertable_schema = 'public' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        hypertables,
        ["anomalies", "bands", "forecasts", "metric_points"]
    );
    let compressed: Vec<(String, String)> = sqlx::query_as(
        "SELECT attname::text, coalesce(segmentby_column_index::text, 'order') \
         FROM timescaledb_information.compression_settings \
         WHERE hypertable_name = 'metric_points' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        compressed,
        [
            ("series_id".to_string(), "1".to_string()),
            ("time".to_string(), "order".to_string())
        ]
    );
    let jobs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT proc_name::text, hypertable_name::text, \
         coalesce(config->>'drop_after', config->>'compress_after', config->>'start_offset') \
         FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL ORDER BY 1, 2",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let jobs: Vec<(&str, &str, Option<&str>)> = jobs
        .iter()
        .map(|(p, h, c)| (p.as_str(), h.as_str(), c.as_deref()))
        .collect();
    assert_eq!(
        jobs,
        [
            ("policy_compression", "metric_points", Some("2 days")),
            (
                "policy_refresh_continuous_aggregate",
                "metric_points_1m",
                Some("29 days")
            ),
            ("policy_retention", "anomalies", Some("365 days")),
            ("policy_retention", "bands", Some("30 days")),
            ("policy_retention", "forecasts", Some("30 days")),
            ("policy_retention", "metric_points", Some("30 days")),
            ("policy_retention", "metric_points_1m", Some("365 days")),
        ]
    );
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
async fn backfilled_points_reach_the_rollup() {
    let store = fresh_timescale().await;
    let minute = 60_000;
    let now = Utc::now().timestamp_millis();
    let start = |days_ago: i64| (now - days_ago * 86_400_000).div_euclid(minute) * minute;
    // Ten days old: older than any "last hour" refresh window. 3 points a minute.
    let t10 = start(10);
    let old: Vec<MetricPoint> = (0..300)
        .map(|i| point("a", t10 + i * 20_000, i as f64))
        .collect();
    assert_eq!(store.insert_points(&old).await.unwrap(), 300);
    // Nothing is materialised yet: the rollup reads the raw rows.
    let minutes = |from: i64, to: i64| {
        format!(
            "SELECT count(*) FROM metric_points_1m WHERE bucket >= to_timestamp({}) AND bucket < to_timestamp({})",
            from / 1000,
            to / 1000
        )
    };
    assert_eq!(
        scalar_i64(&store, &minutes(t10, t10 + 100 * minute)).await,
        100
    );
    run_refresh_policy(&store).await;
    assert_eq!(materialised_minutes(&store).await, 100);
    let row =
        sqlx::query("SELECT avg, min, max, count FROM metric_points_1m ORDER BY bucket LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(row.get::<f64, _>("avg"), 1.0);
    assert_eq!(row.get::<f64, _>("min"), 0.0);
    assert_eq!(row.get::<f64, _>("max"), 2.0);
    assert_eq!(row.get::<i64, _>("count"), 3);

    // Replayed data five days old lands below what is materialised: the next run of
    // the policy aggregates it.
    let t5 = start(5);
    let replay: Vec<MetricPoint> = (0..60).map(|i| point("b", t5 + i * minute, 7.0)).collect();
    store.insert_points(&replay).await.unwrap();
    run_refresh_policy(&store).await;
    assert_eq!(materialised_minutes(&store).await, 160);
    assert_eq!(scalar_i64(&store, &minutes(t5, t5 + 60 * minute)).await, 60);
}

#[tokio::test]
async fn compressed_chunks_stay_readable_and_writable() {
    let store = fresh_timescale().await;
    let minute = 60_000;
    let t0 = (Utc::now() - Duration::days(6))
        .timestamp_millis()
        .div_euclid(minute)
        * minute;
    let points: Vec<MetricPoint> = (0..600)
        .map(|i| point("a", t0 + i * minute, i as f64))
        .collect();
    store.insert_points(&points).await.unwrap();
    let compressed = scalar_i64(
        &store,
        "SELECT count(compress_chunk(c, if_not_compressed => true)) \
         FROM show_chunks('metric_points', older_than => INTERVAL '2 days') c",
    )
    .await;
    assert!(compressed >= 1);
    let id = points[0].series_id();
    let got = store.points(id, t0, t0 + 600 * minute).await.unwrap();
    assert_eq!(got.len(), 600);
    assert_eq!(got[599], (t0 + 599 * minute, 599.0));
    // A replay into the compressed chunk adds nothing twice; a late point goes in.
    assert_eq!(store.insert_points(&points[..50]).await.unwrap(), 0);
    let late = point("a", t0 + 30 * minute + 1, -1.0);
    assert_eq!(store.insert_points(&[late]).await.unwrap(), 1);
    assert_eq!(
        store.points(id, t0, t0 + 600 * minute).await.unwrap().len(),
        601
    );
}

#[tokio::test]
async fn engine_transitions_follow_the_contract() {
    let store = fresh_timescale().await;
    seismo_store::testing::engine_transition_conformance(&store).await;
}

#[tokio::test]
async fn explanations_and_model_calls_follow_the_contract() {
    let store = fresh_timescale().await;
    seismo_store::testing::explain_conformance(&store).await;
}

#[tokio::test]
async fn checkpoints_are_incremental_and_never_move_backwards() {
    let store = fresh_timescale().await;
    seismo_store::testing::checkpoint_conformance(&store).await;
}

#[tokio::test]
async fn tokens_and_audit_follow_the_contract() {
    let store = fresh_timescale().await;
    seismo_store::testing::access_conformance(&store).await;
}

#[tokio::test]
async fn forecasts_query_by_run_and_tenant() {
    let store = fresh_timescale().await;
    seismo_store::testing::forecast_conformance(&store).await;
}

#[tokio::test]
async fn expected_bands_query_by_time_and_tenant() {
    let store = fresh_timescale().await;
    seismo_store::testing::band_conformance(&store).await;
}

#[tokio::test]
async fn series_list_by_name_labels_and_pages() {
    let store = fresh_timescale().await;
    seismo_store::testing::series_conformance(&store).await;
}

#[tokio::test]
async fn alerts_fired_and_resolved_in_one_batch_are_stored_once() {
    let store = fresh_timescale().await;
    seismo_store::testing::alert_conformance(&store).await;
}
