//! Ad-hoc SQL sees one tenant only, on SQLite, PostgreSQL and TimescaleDB: joins,
//! subqueries, CTEs, unions and every trick a query can try return the caller's rows and no
//! other's; writes and hidden tables are refused; row, time and memory limits stop it.
#![expect(clippy::disallowed_methods, reason = "tests time real runs")]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use seismo_query::{QueryEngine, QueryError, QueryLimits};
use seismo_schemas::{
    Alert, AlertStatus, Anomaly, AnomalyKind, BandPoint, Explanation, Forecast, Incident,
    IncidentEvent, IncidentEventKind, IncidentStatus, Labels, MetricPoint, Severity,
};
use seismo_store::{IncidentWrite, SqliteStore, Store};

const T0: i64 = 1_767_225_600_000;

/// How many of each a tenant gets: the caller and the rival differ in every count, so a
/// leaked row changes an answer.
#[derive(Clone, Copy)]
struct Sizes {
    series: usize,
    anomalies: usize,
    incidents: usize,
}
const ACME: Sizes = Sizes {
    series: 3,
    anomalies: 30,
    incidents: 3,
};
const RIVAL: Sizes = Sizes {
    series: 4,
    anomalies: 20,
    incidents: 2,
};

fn labels(service: &str, host: &str) -> Labels {
    [("service", service), ("host", host)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Rows of every result table for `tenant`; every text the rival owns contains "rival".
async fn fill(store: &dyn Store, tenant: &str, n: Sizes) {
    let svc = |i: usize| format!("{tenant}-svc{}", i % 3);
    let series: Vec<MetricPoint> = (0..n.series)
        .map(|i| MetricPoint {
            tenant: tenant.into(),
            name: format!("{tenant}_latency"),
            labels: labels(&svc(i), &format!("{tenant}-h{i}")),
            ts: T0,
            value: 1.0,
        })
        .collect();
    store.insert_points(&series).await.unwrap();
    let anomalies: Vec<Anomaly> = (0..n.anomalies)
        .map(|i| {
            let p = &series[i % n.series];
            Anomaly {
                id: format!("{tenant}-a{i:03}"),
                tenant: tenant.into(),
                series_id: p.series_id(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                ts: Utc.timestamp_millis_opt(T0 + i as i64 * 60_000).unwrap(),
                observed: 10.0 + i as f64,
                expected: 1.0,
                lower: 0.0,
                upper: 2.0,
                score: 0.5 + i as f64 / 100.0,
                severity: if i % 2 == 0 {
                    Severity::Warning
                } else {
                    Severity::Critical
                },
                kind: AnomalyKind::Point,
                detector: format!("{tenant}-detector"),
                explanation: Explanation::default(),
            }
        })
        .collect();
    store.insert_anomalies(&anomalies).await.unwrap();
    let per = n.anomalies / n.incidents;
    let writes: Vec<IncidentWrite> = (0..n.incidents)
        .map(|k| {
            let members: Vec<String> = anomalies[k * per..(k + 1) * per]
                .iter()
                .map(|a| a.id.clone())
                .collect();
            let at = anomalies[k * per].ts;
            let id = format!("{tenant}-i{k}");
            IncidentWrite {
                incident: Incident {
                    id: id.clone(),
                    tenant: tenant.into(),
                    title: format!("{tenant} incident {k}"),
                    status: IncidentStatus::Detected,
                    severity: Severity::Critical,
                    started_at: at,
                    updated_at: at,
                    resolved_at: None,
                    scope: labels(&svc(k), "x"),
                    root_cause_candidates: Vec::new(),
                    anomaly_ids: members.clone(),
                    alert_fingerprints: Vec::new(),
                },
                new_anomaly_ids: members,
                new_alert_fingerprints: Vec::new(),
                events: vec![IncidentEvent {
                    id: format!("{id}-created"),
                    incident_id: id,
                    ts: at,
                    kind: IncidentEventKind::Created,
                    actor: format!("{tenant}-seismo"),
                    message: format!("{tenant} opened"),
                    from_status: None,
                    to_status: None,
                }],
            }
        })
        .collect();
    store.write_incidents(&writes).await.unwrap();
    let alerts: Vec<Alert> = (0..n.incidents)
        .map(|k| Alert {
            tenant: tenant.into(),
            fingerprint: format!("{tenant}-fp{k}"),
            status: AlertStatus::Firing,
            labels: labels(&svc(k), "x"),
            annotations: Labels::new(),
            starts_at: Utc.timestamp_millis_opt(T0 + k as i64 * 1000).unwrap(),
            ends_at: None,
            source: format!("{tenant}-alertmanager"),
        })
        .collect();
    store.insert_alerts(&alerts).await.unwrap();
    let at = |m: i64| Utc.timestamp_millis_opt(T0 + m * 60_000).unwrap();
    let forecasts: Vec<Forecast> = series
        .iter()
        .flat_map(|p| {
            (0..5).map(move |m| Forecast {
                series_id: p.series_id(),
                generated_at: at(0),
                ts: at(m),
                yhat: 1.0,
                lower: 0.0,
                upper: 2.0,
                model: format!("{tenant}-model"),
            })
        })
        .collect();
    store.insert_forecasts(&forecasts).await.unwrap();
    let bands: Vec<BandPoint> = series
        .iter()
        .flat_map(|p| {
            (0..5).map(move |m| BandPoint {
                series_id: p.series_id(),
                ts: at(m),
                expected: 1.0,
                lower: 0.0,
                upper: 2.0,
            })
        })
        .collect();
    store.insert_bands(&bands).await.unwrap();
}

async fn filled(store: Arc<dyn Store>) -> Arc<dyn Store> {
    fill(store.as_ref(), "acme", ACME).await;
    fill(store.as_ref(), "rival", RIVAL).await;
    store
}

/// Every answer as JSON text, so a leaked row shows up by its name.
async fn json(engine: &QueryEngine, tenant: &str, sql: &str) -> (usize, String) {
    let a = engine
        .run(tenant, sql, None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (a.rows, String::from_utf8(a.to_json().unwrap()).unwrap())
}

async fn scalar(engine: &QueryEngine, tenant: &str, sql: &str) -> i64 {
    let (_, text) = json(engine, tenant, sql).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"][0]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("{sql}: {text}"))
}

async fn one_tenant_only(store: Arc<dyn Store>) {
    let store = filled(store).await;
    let engine = QueryEngine::new(store.clone(), QueryLimits::default());
    // Every way of reaching rows: each answer is the caller's alone.
    let acme_members = (ACME.anomalies / ACME.incidents * ACME.incidents) as i64;
    let counts: &[(&str, i64)] = &[
        ("SELECT count(*) AS n FROM anomalies", 30),
        ("SELECT count(*) AS n FROM incidents", 3),
        ("SELECT count(*) AS n FROM incident_anomalies", acme_members),
        ("SELECT count(*) AS n FROM incident_events", 3),
        ("SELECT count(*) AS n FROM alerts", 3),
        ("SELECT count(*) AS n FROM series", 3),
        ("SELECT count(*) AS n FROM forecasts", 15),
        ("SELECT count(*) AS n FROM bands", 15),
        // Joins, every way round.
        (
            "SELECT count(*) AS n FROM anomalies a JOIN incident_anomalies m ON m.anomaly_id = a.id \
             JOIN incidents i ON i.id = m.incident_id",
            acme_members,
        ),
        (
            "SELECT count(*) AS n FROM incident_anomalies m LEFT JOIN anomalies a ON a.id = m.anomaly_id \
             WHERE a.id IS NULL",
            0,
        ),
        ("SELECT count(*) AS n FROM anomalies a, series s", 30 * 3),
        (
            "SELECT count(*) AS n FROM forecasts f JOIN series s ON s.series_id = f.series_id",
            15,
        ),
        (
            "SELECT count(*) AS n FROM anomalies a FULL OUTER JOIN alerts l ON a.id = l.fingerprint",
            33,
        ),
        // Subqueries.
        (
            "SELECT count(*) AS n FROM anomalies WHERE id IN (SELECT anomaly_id FROM incident_anomalies)",
            acme_members,
        ),
        (
            "SELECT (SELECT count(*) FROM series) + (SELECT count(*) FROM alerts) AS n",
            6,
        ),
        (
            "SELECT count(*) AS n FROM incidents i WHERE EXISTS \
             (SELECT 1 FROM incident_events e WHERE e.incident_id = i.id)",
            3,
        ),
        (
            "SELECT count(*) AS n FROM (SELECT * FROM (SELECT id FROM anomalies) x) y",
            30,
        ),
        // CTEs, recursive ones too.
        (
            "WITH a AS (SELECT * FROM anomalies), i AS (SELECT * FROM incidents) \
             SELECT (SELECT count(*) FROM a) * 100 + (SELECT count(*) FROM i) AS n",
            3003,
        ),
        (
            "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r WHERE k < (SELECT count(*) FROM anomalies)) \
             SELECT max(k) AS n FROM r",
            30,
        ),
        // Unions and set operations over every table's text.
        (
            "SELECT count(*) AS n FROM (SELECT id FROM anomalies UNION ALL SELECT id FROM incidents \
             UNION ALL SELECT fingerprint FROM alerts UNION ALL SELECT name FROM series)",
            39,
        ),
        // Asking for the rival by name finds nothing.
        (
            "SELECT count(*) AS n FROM anomalies WHERE name LIKE 'rival%' OR id LIKE 'rival%'",
            0,
        ),
        (
            "SELECT count(*) AS n FROM series WHERE service LIKE 'rival%'",
            0,
        ),
        // Time bounds pushed into the scan narrow it exactly.
        (
            "SELECT count(*) AS n FROM anomalies WHERE ts >= TIMESTAMP '2026-01-01T00:10:00Z' \
             AND ts < TIMESTAMP '2026-01-01T00:20:00Z'",
            10,
        ),
        (
            "SELECT count(*) AS n FROM anomalies WHERE ts BETWEEN TIMESTAMP '2026-01-01T00:10:00Z' \
             AND TIMESTAMP '2026-01-01T00:20:00Z'",
            11,
        ),
        (
            "SELECT count(*) AS n FROM anomalies WHERE ts > TIMESTAMP '2026-01-01T00:28:59.999999Z'",
            1,
        ),
        (
            "SELECT count(*) AS n FROM anomalies WHERE TIMESTAMP '2026-01-01T00:00:00.000001Z' >= ts",
            1,
        ),
        (
            "SELECT count(*) AS n FROM anomalies WHERE ts = TIMESTAMP '2026-01-01T00:05:00Z'",
            1,
        ),
    ];
    for (sql, want) in counts {
        assert_eq!(scalar(&engine, "acme", sql).await, *want, "{sql}");
    }
    // Whole rows of every table and of joins: not one rival string anywhere.
    for sql in [
        "SELECT * FROM anomalies",
        "SELECT * FROM incidents",
        "SELECT * FROM incident_anomalies",
        "SELECT * FROM incident_events",
        "SELECT * FROM alerts",
        "SELECT * FROM series",
        "SELECT * FROM forecasts",
        "SELECT * FROM bands",
        "SELECT a.*, i.* FROM anomalies a CROSS JOIN incidents i",
        "SELECT s.*, f.* FROM series s LEFT JOIN forecasts f ON true",
        "WITH x AS (SELECT labels FROM anomalies UNION SELECT scope FROM incidents) SELECT * FROM x",
        "SELECT service, severity, count(*) AS n FROM anomalies GROUP BY service, severity ORDER BY n DESC",
    ] {
        let (rows, text) = json(&engine, "acme", sql).await;
        assert!(rows > 0, "{sql}");
        assert!(!text.contains("rival"), "{sql} leaked: {text}");
        // Bands carry no text to recognise; their count above tells.
        assert!(
            sql.contains("bands") || text.contains("acme"),
            "{sql}: {text}"
        );
    }
    // And the rival, asking the same, sees only its own.
    assert_eq!(
        scalar(&engine, "rival", "SELECT count(*) AS n FROM anomalies").await,
        20
    );
    let (_, text) = json(&engine, "rival", "SELECT * FROM anomalies a, incidents i").await;
    assert!(!text.contains("acme"));
    // The tenant is not a column to filter or to forge; other tables cannot be named;
    // nothing writes; one statement only.
    for sql in [
        "SELECT * FROM anomalies WHERE tenant = 'rival'",
        "SELECT tenant FROM incidents",
        "SELECT * FROM metric_points",
        "SELECT * FROM api_tokens",
        "SELECT * FROM stage_checkpoints",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM pg_catalog.pg_tables",
        "SELECT * FROM sqlite_master",
        "CREATE TABLE x AS SELECT * FROM anomalies",
        "CREATE VIEW v AS SELECT 1",
        "INSERT INTO anomalies (id) VALUES ('x')",
        "DELETE FROM anomalies",
        "UPDATE incidents SET status = 'RESOLVED'",
        "DROP TABLE anomalies",
        "SET datafusion.execution.target_partitions = 8",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY anomalies TO '/tmp/seismo-leak.csv'",
        "SELECT 1; SELECT 2",
        "SELEC 1",
    ] {
        match engine.run("acme", sql, None).await {
            Err(QueryError::Invalid(m)) => assert!(!m.is_empty()),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    // The data is still there after all that.
    assert_eq!(
        scalar(&engine, "acme", "SELECT count(*) AS n FROM anomalies").await,
        30
    );
}

async fn limits(store: Arc<dyn Store>) {
    let store = filled(store).await;
    let engine = QueryEngine::new(store.clone(), QueryLimits::default());
    // Rows: cut at the limit, and said so; an answer that just fits is not cut.
    let a = engine
        .run("acme", "SELECT * FROM anomalies ORDER BY ts", Some(7))
        .await
        .unwrap();
    assert_eq!((a.rows, a.truncated), (7, true));
    let a = engine
        .run("acme", "SELECT * FROM anomalies", Some(30))
        .await
        .unwrap();
    assert_eq!((a.rows, a.truncated), (30, false));
    let small = QueryEngine::new(
        store.clone(),
        QueryLimits {
            max_rows: 4,
            ..QueryLimits::default()
        },
    );
    let a = small
        .run("acme", "SELECT id FROM anomalies", Some(1000))
        .await
        .unwrap();
    assert_eq!((a.rows, a.truncated), (4, true), "the server's cap wins");
    // Time: 30^7 rows of cross join would take hours; it stops at the limit.
    let quick = QueryEngine::new(
        store.clone(),
        QueryLimits {
            timeout_ms: 300,
            ..QueryLimits::default()
        },
    );
    let started = std::time::Instant::now();
    let r = quick
        .run(
            "acme",
            "SELECT count(*) FROM anomalies a, anomalies b, anomalies c, anomalies d, anomalies e, \
             anomalies f, anomalies g",
            None,
        )
        .await;
    assert!(matches!(r, Err(QueryError::Timeout(_))), "{r:?}");
    // Generous: the point is that it stops, not how fast.
    assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
    // Rows made from nothing, and a recursion that never ends, stop the same way.
    for sql in [
        "SELECT sum(value % 7) FROM generate_series(1, 9000000000000000000)",
        "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r) SELECT count(*) FROM r",
    ] {
        let r = quick.run("acme", sql, None).await;
        assert!(matches!(r, Err(QueryError::Timeout(_))), "{sql}: {r:?}");
    }
    // A value of any size from a tiny query is not on offer.
    for sql in [
        "SELECT repeat('x', 2000000000)",
        "SELECT lpad('x', 2000000000)",
    ] {
        let r = engine.run("acme", sql, None).await;
        assert!(matches!(r, Err(QueryError::Invalid(_))), "{sql}: {r:?}");
    }

    // Memory: a join must hold its build side, here 27,000 long keys, which do not fit in
    // 1 MiB; nothing spills to disk.
    const HUNGRY: &str = "SELECT count(*) AS n FROM (SELECT a.labels || b.labels || c.labels AS k FROM anomalies a, \
         anomalies b, anomalies c) big JOIN (SELECT labels || labels || labels AS k FROM anomalies) small \
         ON big.k = small.k";
    let tight = QueryEngine::new(
        store.clone(),
        QueryLimits {
            memory_mb: 1,
            ..QueryLimits::default()
        },
    );
    let r = tight.run("acme", HUNGRY, None).await;
    assert!(matches!(r, Err(QueryError::Memory { .. })), "{r:?}");
    // The same query within the default limit answers: 10 identical label sets per host,
    // so each small key meets 10 x 10 x 10 big ones... of its own host.
    let n = scalar(&engine, "acme", HUNGRY).await;
    assert_eq!(n, 3 * 10 * 10 * 10 * 10);
}

async fn sqlite() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = SqliteStore::connect(&format!("sqlite://{}", dir.join("q.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

#[tokio::test]
async fn sqlite_answers_one_tenant_only() {
    one_tenant_only(sqlite().await).await;
}

#[tokio::test]
async fn postgres_answers_one_tenant_only() {
    one_tenant_only(Arc::new(seismo_store::testing::fresh_postgres().await)).await;
}

#[tokio::test]
async fn timescaledb_answers_one_tenant_only() {
    one_tenant_only(Arc::new(seismo_store::testing::fresh_timescale().await)).await;
}

#[tokio::test]
async fn sqlite_queries_stop_at_their_limits() {
    limits(sqlite().await).await;
}

#[tokio::test]
async fn postgres_queries_stop_at_their_limits() {
    limits(Arc::new(seismo_store::testing::fresh_postgres().await)).await;
}
