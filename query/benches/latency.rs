//! Latency of ad-hoc SQL over a million anomaly rows, beside the same question asked of the
//! database directly: `cargo bench -p seismo-query --bench latency` (needs
//! SEISMO_TEST_PG_URL; `scripts/services.sh start` prints it). Prints a table of medians.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seismo_query::{QueryEngine, QueryLimits};
use seismo_store::{PgStore, SqliteStore, Store, TimescaleMode};

/// Anomalies of the tenant asked about; another tenant holds a tenth as many beside them.
const ROWS: i64 = 1_000_000;
const RUNS: usize = 5;

/// (what, SQL through Seismo, the same asked of PostgreSQL directly, of SQLite directly).
const QUERIES: &[(&str, &str, &str, &str)] = &[
    (
        "count all",
        "SELECT count(*) FROM anomalies",
        "SELECT count(*) FROM anomalies WHERE tenant = 'acme'",
        "SELECT count(*) FROM anomalies WHERE tenant = 'acme'",
    ),
    (
        "by service and severity",
        "SELECT service, severity, count(*) AS n, avg(score) FROM anomalies GROUP BY 1, 2 ORDER BY n DESC",
        "SELECT labels->>'service', severity, count(*) AS n, avg(score) FROM anomalies WHERE tenant = 'acme' GROUP BY 1, 2 ORDER BY n DESC",
        "SELECT json_extract(labels, '$.service'), severity, count(*) AS n, avg(score) FROM anomalies WHERE tenant = 'acme' GROUP BY 1, 2 ORDER BY n DESC",
    ),
    (
        "top 20 of the last day",
        "SELECT id, service, score FROM anomalies WHERE ts >= TIMESTAMP '2026-01-23T00:00:00Z' ORDER BY score DESC LIMIT 20",
        "SELECT id, labels->>'service', score FROM anomalies WHERE tenant = 'acme' AND time >= '2026-01-23T00:00:00Z' ORDER BY score DESC LIMIT 20",
        "SELECT id, json_extract(labels, '$.service'), score FROM anomalies WHERE tenant = 'acme' AND time >= 1769126400000 ORDER BY score DESC LIMIT 20",
    ),
    (
        "incidents by members (3-way join)",
        "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id \
         JOIN anomalies a ON a.id = m.anomaly_id GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10",
        "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id \
         JOIN anomalies a ON a.id = m.anomaly_id WHERE i.tenant = 'acme' AND a.tenant = 'acme' GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10",
        "SELECT i.id, count(*) AS n, max(a.score) FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id \
         JOIN anomalies a ON a.id = m.anomaly_id WHERE i.tenant = 'acme' AND a.tenant = 'acme' GROUP BY i.id ORDER BY n DESC, i.id LIMIT 10",
    ),
];

/// Fills PostgreSQL: `ROWS` anomalies two seconds apart from 2026-01-01 (23 days), a
/// tenth as many for a second tenant, 10,000 incidents of ten anomalies each.
const FILL_PG: &[&str] = &[
    "SELECT seismo_ensure_partitions('anomalies', '2026-01-01', '2026-01-25')",
    "INSERT INTO anomalies SELECT 'a' || g, 'acme', g % 1000, 'latency', \
     jsonb_build_object('service', 'svc' || (g % 20), 'host', 'h' || (g % 1000)), \
     timestamptz '2026-01-01' + g * interval '2 seconds', 50 + g % 50, 1, 0, 2, (g % 997) / 997.0, \
     (ARRAY['info', 'warning', 'critical'])[1 + g % 3], 'point', 'iforest', '{}'::jsonb \
     FROM generate_series(1, $ROWS) g",
    "INSERT INTO anomalies SELECT 'r' || g, 'rival', g % 1000, 'latency', \
     jsonb_build_object('service', 'rsvc' || (g % 20)), timestamptz '2026-01-01' + g * interval '20 seconds', \
     1, 1, 0, 2, 0.5, 'info', 'point', 'iforest', '{}'::jsonb FROM generate_series(1, $ROWS / 10) g",
    "INSERT INTO incidents SELECT 'i' || k, 'acme', 'incident ' || k, 'DETECTED', 'warning', \
     timestamptz '2026-01-01' + k * interval '3 minutes', timestamptz '2026-01-01' + k * interval '3 minutes', \
     NULL, '{}'::jsonb, '[]'::jsonb FROM generate_series(0, 9999) k",
    "INSERT INTO incident_anomalies SELECT 'i' || (g / 10), 'a' || g FROM generate_series(1, 99999) g",
    "ANALYZE",
];

/// The same rows for SQLite (times as epoch ms).
const FILL_SQLITE: &[&str] = &[
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $ROWS) \
     INSERT INTO anomalies SELECT 'a' || x, 'acme', x % 1000, 'latency', \
     json_object('service', 'svc' || (x % 20), 'host', 'h' || (x % 1000)), 1767225600000 + x * 2000, \
     50 + x % 50, 1, 0, 2, (x % 997) / 997.0, CASE x % 3 WHEN 0 THEN 'info' WHEN 1 THEN 'warning' ELSE 'critical' END, \
     'point', 'iforest', '{}' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $ROWS / 10) \
     INSERT INTO anomalies SELECT 'r' || x, 'rival', x % 1000, 'latency', json_object('service', 'rsvc' || (x % 20)), \
     1767225600000 + x * 20000, 1, 1, 0, 2, 0.5, 'info', 'point', 'iforest', '{}' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < 9999) \
     INSERT INTO incidents SELECT 'i' || x, 'acme', 'incident ' || x, 'DETECTED', 'warning', \
     1767225600000 + x * 180000, 1767225600000 + x * 180000, NULL, '{}', '[]' FROM g",
    "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 99999) \
     INSERT INTO incident_anomalies SELECT 'i' || (x / 10), 'a' || x FROM g",
    "ANALYZE",
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f().await; // warm: the database's cache and the engine's first plan
    let mut took = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        f().await;
        took.push(t.elapsed());
    }
    median(took)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn compare<Db: sqlx::Database>(
    name: &str,
    store: Arc<dyn Store>,
    pool: &sqlx::Pool<Db>,
    direct: impl Fn(usize) -> &'static str,
) where
    for<'c> &'c sqlx::Pool<Db>: sqlx::Executor<'c, Database = Db>,
    for<'q> <Db as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, Db>,
{
    let engine = QueryEngine::new(store, QueryLimits::default());
    println!(
        "\n{name}: {ROWS} anomaly rows for the tenant (and {} for another), median of {RUNS}",
        ROWS / 10
    );
    println!(
        "{:<36} {:>12} {:>12} {:>8}",
        "query", "seismo ms", "direct ms", "ratio"
    );
    for (i, (what, sql, _, _)) in QUERIES.iter().enumerate() {
        let ours = time(|| {
            let engine = engine.clone();
            async move {
                let a = engine.run("acme", sql, None).await.expect(sql);
                assert!(a.rows > 0 && !a.truncated, "{sql}");
            }
        })
        .await;
        let peer_sql = direct(i);
        let peer = time(|| async {
            let rows = sqlx::query(peer_sql)
                .fetch_all(pool)
                .await
                .expect(peer_sql)
                .len();
            assert!(rows > 0, "{peer_sql}");
        })
        .await;
        println!(
            "{what:<36} {:>12.1} {:>12.1} {:>8.2}",
            ms(ours),
            ms(peer),
            ours.as_secs_f64() / peer.as_secs_f64()
        );
    }
}

async fn fill<Db: sqlx::Database>(pool: &sqlx::Pool<Db>, steps: &[&str])
where
    for<'c> &'c sqlx::Pool<Db>: sqlx::Executor<'c, Database = Db>,
    for<'q> <Db as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, Db>,
{
    let t = Instant::now();
    for s in steps {
        let s = s.replace("$ROWS", &ROWS.to_string());
        sqlx::query(&s).execute(pool).await.expect(&s);
    }
    eprintln!("filled in {:.1} s", t.elapsed().as_secs_f64());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // PostgreSQL (plain; the native-partition layout).
    let url = seismo_store::testing::fresh_database().await;
    let pg = PgStore::connect(&url, TimescaleMode::Off).await.unwrap();
    pg.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    fill(&pool, FILL_PG).await;
    compare("PostgreSQL 15", Arc::new(pg), &pool, |i| QUERIES[i].2).await;

    // SQLite (the embedded default).
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let lite = SqliteStore::connect(&db).await.unwrap();
    lite.migrate().await.unwrap();
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    fill(&pool, FILL_SQLITE).await;
    compare("SQLite", Arc::new(lite), &pool, |i| QUERIES[i].3).await;
}
