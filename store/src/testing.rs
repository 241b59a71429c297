//! Helpers for tests that need a real PostgreSQL: a fresh, migrated database per test.
#![expect(
    clippy::disallowed_methods,
    reason = "test databases take the clock for a unique name"
)]

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use chrono::{DateTime, TimeZone, Utc};
use seismo_schemas::Role;

use crate::access::{ACTION_INCIDENT_TRANSITION, ACTION_TOKEN_CREATE, ACTION_TOKEN_REVOKE};
use crate::{
    AccessStore, ApiToken, AuditQuery, AuditRecord, CheckpointStore, Cursor, IncidentWrite,
    PartitionCheckpoint, PgStore, Position, Store, StoreError, TimescaleMode,
};

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

/// The environment variable naming the TimescaleDB test server (a PostgreSQL that preloads
/// the extension; `scripts/services.sh start` prints it).
pub const TSDB_URL_ENV: &str = "SEISMO_TEST_TSDB_URL";

/// The TimescaleDB test server's URL; panics with instructions when it is not configured.
pub fn tsdb_url() -> String {
    match std::env::var(TSDB_URL_ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "{TSDB_URL_ENV} is not set: this test needs a PostgreSQL server with TimescaleDB \
             preloaded. Run the test suite with scripts/test.sh (it builds TimescaleDB once and \
             starts one), or start one with `scripts/services.sh start` and export what it prints"
        ),
    }
}

/// Creates an empty database on the test server and returns its URL.
pub async fn fresh_database() -> String {
    database_on(&pg_url()).await
}

/// A migrated store on a fresh database of the TimescaleDB test server, failing (not
/// falling back to native partitions) when the extension cannot be used there.
pub async fn fresh_timescale() -> PgStore {
    let url = database_on(&tsdb_url()).await;
    let store = PgStore::connect(&url, TimescaleMode::Require)
        .await
        .expect("connecting to the TimescaleDB test database");
    store
        .migrate()
        .await
        .expect("migrating the TimescaleDB test database (is timescaledb preloaded there?)");
    store
}

/// Creates an empty database on the server at `url` and returns its URL.
pub async fn database_on(url: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let url = url.to_string();
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

/// The tokens and audit contract, run against every store: tokens come back as stored,
/// listings and revocations stay within their tenant, a revocation happens (and is
/// recorded) once, and the audit log pages newest first within one tenant.
pub async fn access_conformance(store: &dyn AccessStore) {
    let at = |s: i64| -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_767_225_600_000 + s * 1000)
            .unwrap()
    };
    let token = |id: &str, tenant: &str, role: Role, rate: Option<f64>, s: i64| ApiToken {
        id: id.into(),
        tenant: tenant.into(),
        role,
        name: format!("{id} of {tenant}"),
        secret_sha256: format!("{id:0>64}"),
        rate_per_sec: rate,
        created_at: at(s),
        revoked_at: None,
    };
    assert!(!store.has_tokens().await.unwrap());
    assert_eq!(store.token("000000000001").await.unwrap(), None);
    let a_admin = token("0000000000a1", "acme", Role::Admin, None, 1);
    let a_ingest = token("0000000000a2", "acme", Role::Ingest, Some(250.5), 2);
    let b_read = token("0000000000b1", "bravo", Role::Read, None, 3);
    for t in [&a_admin, &a_ingest, &b_read] {
        store.create_token(t, "cli:test").await.unwrap();
    }
    assert!(store.has_tokens().await.unwrap());
    // Ids are unique: a second token with a taken id is refused, not merged.
    assert!(store.create_token(&a_admin, "cli:test").await.is_err());
    assert_eq!(
        store.token(&a_ingest.id).await.unwrap().as_ref(),
        Some(&a_ingest)
    );
    let ids = |v: Vec<ApiToken>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_tokens(Some("acme")).await.unwrap()),
        [a_admin.id.as_str(), a_ingest.id.as_str()]
    );
    assert_eq!(
        ids(store.list_tokens(Some("bravo")).await.unwrap()),
        [b_read.id.as_str()]
    );
    assert_eq!(store.list_tokens(None).await.unwrap().len(), 3);

    // A revocation confined to another tenant finds nothing; an unknown id neither.
    let err = store
        .revoke_token(Some("bravo"), &a_ingest.id, "token:x", at(10))
        .await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
    let err = store
        .revoke_token(None, "00000000dead", "token:x", at(10))
        .await;
    assert!(matches!(err, Err(StoreError::NotFound)), "{err:?}");
    let revoked = store
        .revoke_token(Some("acme"), &a_ingest.id, "token:0000000000a1", at(10))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at(10)));
    // Again: nothing changes, nothing more is recorded.
    let again = store
        .revoke_token(None, &a_ingest.id, "cli:test", at(20))
        .await
        .unwrap();
    assert_eq!(again.revoked_at, Some(at(10)));
    assert_eq!(
        store.token(&a_ingest.id).await.unwrap().unwrap().revoked_at,
        Some(at(10))
    );

    store
        .append_audit(&AuditRecord {
            time: at(30),
            tenant: "acme".into(),
            actor: "token:0000000000a1".into(),
            action: ACTION_INCIDENT_TRANSITION.into(),
            target: "inc1".into(),
            detail: serde_json::json!({ "from": "DETECTED", "to": "ACKNOWLEDGED" }),
        })
        .await
        .unwrap();
    let q = |limit: usize, cursor: Option<Cursor>| AuditQuery {
        tenant: "acme".into(),
        limit,
        cursor,
        ..Default::default()
    };
    let all = store.list_audit(&q(100, None)).await.unwrap();
    assert_eq!(all.next_cursor, None);
    let seen: Vec<(&str, &str, &str)> = all
        .items
        .iter()
        .map(|e| {
            (
                e.record.action.as_str(),
                e.record.target.as_str(),
                e.record.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (ACTION_INCIDENT_TRANSITION, "inc1", "token:0000000000a1"),
            (ACTION_TOKEN_REVOKE, "0000000000a2", "token:0000000000a1"),
            (ACTION_TOKEN_CREATE, "0000000000a2", "cli:test"),
            (ACTION_TOKEN_CREATE, "0000000000a1", "cli:test"),
        ]
    );
    assert_eq!(all.items[0].record.detail["to"], "ACKNOWLEDGED");
    assert_eq!(all.items[2].record.detail["rate_per_sec"], 250.5);
    assert_eq!(all.items[2].record.time, at(2));
    // Pages of one walk the same entries in the same order.
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.list_audit(&q(1, cursor)).await.unwrap();
        walked.extend(p.items.iter().map(|e| e.id));
        match p.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(walked, all.items.iter().map(|e| e.id).collect::<Vec<_>>());
    // Time bounds, and tenants apart.
    let window = store
        .list_audit(&AuditQuery {
            from: Some(at(2)),
            to: Some(at(30)),
            ..q(100, None)
        })
        .await
        .unwrap();
    assert_eq!(window.items.len(), 2);
    let bravo = store
        .list_audit(&AuditQuery {
            tenant: "bravo".into(),
            ..q(100, None)
        })
        .await
        .unwrap();
    assert_eq!(bravo.items.len(), 1);
    assert_eq!(bravo.items[0].record.target, b_read.id);
    let bad = Cursor {
        ts_ms: 0,
        id: "abc".into(),
    };
    assert!(matches!(
        store.list_audit(&q(10, Some(bad))).await,
        Err(StoreError::Invalid(_))
    ));

    // Revoked tokens still count as tokens having been created.
    for t in [&a_admin, &b_read] {
        store
            .revoke_token(None, &t.id, "cli:test", at(40))
            .await
            .unwrap();
    }
    assert!(store.has_tokens().await.unwrap());
    assert!(
        store
            .list_tokens(None)
            .await
            .unwrap()
            .iter()
            .all(|t| t.revoked_at.is_some())
    );
}

/// The engine's status steps, run against every store: a step applies only from the
/// statuses it lists and only within its tenant, is recorded once (a replay changes
/// nothing and reports the incident again), and a person's choice wins.
pub async fn engine_transition_conformance(store: &dyn Store) {
    use seismo_schemas::IncidentStatus::{Acknowledged, Detected, Investigating, Resolved};
    use seismo_schemas::{Incident, IncidentEvent, IncidentEventKind, Severity};
    let t = |s: i64| -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_767_225_600_000 + s * 1000)
            .unwrap()
    };
    let incident = Incident {
        id: "inc1".into(),
        tenant: "acme".into(),
        title: "latency on db".into(),
        status: Detected,
        severity: Severity::Warning,
        started_at: t(0),
        updated_at: t(0),
        resolved_at: None,
        scope: Default::default(),
        root_cause_candidates: Vec::new(),
        anomaly_ids: Vec::new(),
        alert_fingerprints: Vec::new(),
    };
    store
        .write_incidents(&[IncidentWrite {
            incident,
            new_anomaly_ids: Vec::new(),
            new_alert_fingerprints: Vec::new(),
            events: Vec::new(),
        }])
        .await
        .unwrap();
    let event = |id: &str, s: i64| IncidentEvent {
        id: format!("inc1-{id}"),
        incident_id: "inc1".into(),
        ts: t(s),
        kind: IncidentEventKind::StatusChanged,
        actor: "seismo".into(),
        message: "its signals cleared".into(),
        from_status: None,
        to_status: None,
    };
    let open = [Detected, Acknowledged];
    async fn step(
        store: &dyn Store,
        tenant: &str,
        from: &[seismo_schemas::IncidentStatus],
        to: seismo_schemas::IncidentStatus,
        e: IncidentEvent,
    ) -> Option<Incident> {
        store
            .engine_transition(tenant, "inc1", from, to, &e)
            .await
            .unwrap()
    }
    assert_eq!(
        step(store, "bravo", &open, Resolved, event("r1", 100)).await,
        None
    );
    let resolved = step(store, "acme", &open, Resolved, event("r1", 100))
        .await
        .unwrap();
    assert_eq!(
        (resolved.status, resolved.resolved_at),
        (Resolved, Some(t(100)))
    );
    // A replay is reported again, and recorded once.
    let again = step(store, "acme", &open, Resolved, event("r1", 100))
        .await
        .unwrap();
    assert_eq!(again.status, Resolved);
    let events = store.incident_events("acme", "inc1").await.unwrap();
    let r1: Vec<_> = events.iter().filter(|e| e.id == "inc1-r1").collect();
    assert_eq!(r1.len(), 1);
    assert_eq!(
        (r1[0].from_status, r1[0].to_status),
        (Some(Detected), Some(Resolved))
    );
    // Reopened when the signals recur.
    let reopened = step(store, "acme", &[Resolved], Detected, event("o1", 200))
        .await
        .unwrap();
    assert_eq!((reopened.status, reopened.resolved_at), (Detected, None));
    // A person takes over: the engine no longer resolves it.
    store
        .transition_incident("acme", "inc1", Investigating, "alice", "on it", t(250))
        .await
        .unwrap();
    assert_eq!(
        step(store, "acme", &open, Resolved, event("r2", 300)).await,
        None
    );
    let now = store.get_incident("acme", "inc1").await.unwrap();
    assert_eq!(now.status, Investigating);
    let events = store.incident_events("acme", "inc1").await.unwrap();
    assert!(events.iter().all(|e| e.id != "inc1-r2"));
}

/// What every store must do with explanations and the model-call log.
pub async fn explain_conformance(store: &dyn Store) {
    use crate::explain::{LlmCall, StoredExplanation};
    let t0 = chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, 1_767_571_200_000).unwrap();
    assert_eq!(store.explanation("t", "i1").await.unwrap(), None);
    let mut e = StoredExplanation {
        tenant: "t".into(),
        incident_id: "i1".into(),
        facts_hash: "h1".into(),
        source: "template".into(),
        body: serde_json::json!({"summary": "first"}),
        created_at: t0,
    };
    store.save_explanation(&e).await.unwrap();
    e.facts_hash = "h2".into();
    e.body = serde_json::json!({"summary": "second", "n": 2.5});
    store.save_explanation(&e).await.unwrap();
    assert_eq!(store.explanation("t", "i1").await.unwrap(), Some(e.clone()));
    // Another tenant sees nothing.
    assert_eq!(store.explanation("u", "i1").await.unwrap(), None);

    let call = |id: &str, at_min: i64, outcome: &str, answer: Option<&str>| LlmCall {
        id: id.into(),
        tenant: "t".into(),
        incident_id: "i1".into(),
        purpose: "explain".into(),
        model: "m".into(),
        prompt_version: "p1".into(),
        facts_hash: "h2".into(),
        input_tokens: 100,
        output_tokens: 20,
        latency_ms: 5,
        cost_usd: 0.001,
        outcome: outcome.into(),
        answer: answer.map(String::from),
        at: t0 + chrono::Duration::minutes(at_min),
    };
    assert_eq!(
        store
            .cached_answer("h2", "m", "p1", "explain")
            .await
            .unwrap(),
        None
    );
    store
        .record_llm_call(&call("c1", 0, "ok", Some("{\"a\":1}")))
        .await
        .unwrap();
    store
        .record_llm_call(&call("c2", 1, "http 500", None))
        .await
        .unwrap();
    store
        .record_llm_call(&call("c3", 2, "ok", Some("{\"a\":3}")))
        .await
        .unwrap();
    // A repeated id changes nothing.
    store
        .record_llm_call(&call("c3", 9, "ok", Some("{\"a\":9}")))
        .await
        .unwrap();
    assert_eq!(
        store
            .cached_answer("h2", "m", "p1", "explain")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"a\":3}"),
        "the newest successful answer"
    );
    for (h, m, p, u) in [
        ("h1", "m", "p1", "explain"),
        ("h2", "x", "p1", "explain"),
        ("h2", "m", "p2", "explain"),
        ("h2", "m", "p1", "postmortem"),
    ] {
        assert_eq!(
            store.cached_answer(h, m, p, u).await.unwrap(),
            None,
            "{h} {m} {p} {u}"
        );
    }
    assert_eq!(store.tokens_used_since("t", t0).await.unwrap(), 360);
    assert_eq!(
        store
            .tokens_used_since("t", t0 + chrono::Duration::minutes(1))
            .await
            .unwrap(),
        240
    );
    assert_eq!(store.tokens_used_since("u", t0).await.unwrap(), 0);
    let calls = store.incident_llm_calls("t", "i1").await.unwrap();
    assert_eq!(
        calls.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1", "c2", "c3"]
    );
    assert_eq!(calls[2], call("c3", 2, "ok", Some("{\"a\":3}")));
}

/// The forecasts query: newest run or every run, by time, and only the tenant's series.
pub async fn forecast_conformance(store: &dyn Store) {
    use seismo_schemas::{Forecast, MetricPoint};
    let hour = 3_600_000;
    let t0 = 1_767_225_600_000; // 2026-01-01
    let p = MetricPoint {
        tenant: "acme".into(),
        name: "disk".into(),
        labels: Default::default(),
        ts: t0,
        value: 1.0,
    };
    store.insert_points(std::slice::from_ref(&p)).await.unwrap();
    let id = p.series_id();
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    let run = |gen_h: i64, yhat: f64| -> Vec<Forecast> {
        (0..4)
            .map(|k| Forecast {
                series_id: id,
                generated_at: at(t0 + gen_h * hour),
                ts: at(t0 + (gen_h + k) * hour),
                yhat: yhat + k as f64,
                lower: yhat - 1.0,
                upper: yhat + 10.0,
                model: "mstl".into(),
            })
            .collect()
    };
    store.insert_forecasts(&run(1, 10.0)).await.unwrap();
    store.insert_forecasts(&run(2, 20.0)).await.unwrap();
    // A replayed run is not stored twice.
    store.insert_forecasts(&run(2, 20.0)).await.unwrap();
    let all = store
        .forecasts("acme", id, t0, t0 + 10 * hour, false)
        .await
        .unwrap();
    assert_eq!(all.len(), 8, "{all:?}");
    assert!(
        all.windows(2)
            .all(|w| (w[0].generated_at, w[0].ts) < (w[1].generated_at, w[1].ts))
    );
    let latest = store
        .forecasts("acme", id, t0, t0 + 10 * hour, true)
        .await
        .unwrap();
    assert_eq!(latest.len(), 4);
    assert!(latest.iter().all(|f| f.generated_at == at(t0 + 2 * hour)));
    assert_eq!(latest[0].yhat, 20.0);
    assert_eq!(latest[0].model, "mstl");
    // The window bounds the rows: [t0 + 3 h, t0 + 4 h) holds one row of each run.
    let window = store
        .forecasts("acme", id, t0 + 3 * hour, t0 + 4 * hour, false)
        .await
        .unwrap();
    assert_eq!(window.len(), 2);
    // Another tenant sees nothing of this series.
    assert!(
        store
            .forecasts("other", id, t0, t0 + 10 * hour, false)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `newest_points` keeps the newest of a window, oldest first, and the window's bounds.
pub async fn newest_points_conformance(store: &dyn Store) {
    use seismo_schemas::MetricPoint;
    let t0 = 1_767_225_600_000; // 2026-01-01T00:00Z
    let points: Vec<MetricPoint> = (0..50)
        .map(|k| MetricPoint {
            tenant: "acme".into(),
            name: "latency".into(),
            labels: Default::default(),
            ts: t0 + k * 60_000,
            value: k as f64,
        })
        .collect();
    store.insert_points(&points).await.unwrap();
    let id = points[0].series_id();
    let want = |ks: std::ops::Range<i64>| -> Vec<(i64, f64)> {
        ks.map(|k| (t0 + k * 60_000, k as f64)).collect()
    };
    let end = t0 + 50 * 60_000;
    assert_eq!(
        store.newest_points(id, t0, end, 5).await.unwrap(),
        want(45..50)
    );
    assert_eq!(
        store.newest_points(id, t0, end, 500).await.unwrap(),
        want(0..50)
    );
    // `to` is exclusive: the point at 40 minutes is past a window ending there.
    let to = t0 + 40 * 60_000;
    assert_eq!(
        store.newest_points(id, t0, to, 3).await.unwrap(),
        want(37..40)
    );
    assert!(
        store
            .newest_points(id, end, end + 1, 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .newest_points(id ^ 1, t0, end, 3)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The expected-band contract: rows by time within the window, a replay stored once, and
/// another tenant sees nothing; rows cross days (native partitions are made on demand).
pub async fn band_conformance(store: &dyn Store) {
    use seismo_schemas::{BandPoint, MetricPoint};
    let step = 5 * 60_000;
    let t0 = 1_767_225_600_000 - 3_600_000; // 2025-12-31T23:00Z
    let p = MetricPoint {
        tenant: "acme".into(),
        name: "latency".into(),
        labels: Default::default(),
        ts: t0,
        value: 1.0,
    };
    store.insert_points(std::slice::from_ref(&p)).await.unwrap();
    let id = p.series_id();
    let bands: Vec<BandPoint> = (0..24)
        .map(|k| BandPoint {
            series_id: id,
            ts: Utc.timestamp_millis_opt(t0 + k * step).unwrap(),
            expected: k as f64,
            lower: k as f64 - 1.5,
            upper: k as f64 + 2.5,
        })
        .collect();
    assert_eq!(store.insert_bands(&bands).await.unwrap(), 24);
    assert_eq!(store.insert_bands(&bands[..5]).await.unwrap(), 0);
    let got = store.bands("acme", id, t0, t0 + 24 * step).await.unwrap();
    assert_eq!(got, bands);
    let window = store
        .bands("acme", id, t0 + 10 * step, t0 + 14 * step)
        .await
        .unwrap();
    assert_eq!(window, bands[10..14]);
    assert!(
        store
            .bands("other", id, t0, t0 + 24 * step)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The series listing contract: filters by name, labels and id, pages by id, and never
/// shows another tenant's series.
pub async fn series_conformance(store: &dyn Store) {
    use seismo_schemas::MetricPoint;
    let point = |tenant: &str, name: &str, service: &str, host: &str| MetricPoint {
        tenant: tenant.into(),
        name: name.into(),
        labels: [
            ("service".to_string(), service.to_string()),
            ("host".to_string(), host.to_string()),
        ]
        .into(),
        ts: 1_767_225_600_000,
        value: 1.0,
    };
    let mut points = Vec::new();
    for i in 0..12 {
        let service = if i % 3 == 0 { "db" } else { "web" };
        points.push(point("acme", "cpu", service, &format!("h{i}")));
        points.push(point("acme", "mem", service, &format!("h{i}")));
    }
    points.push(point("other", "cpu", "db", "h0"));
    store.insert_points(&points).await.unwrap();
    let q = |f: &dyn Fn(&mut crate::SeriesQuery)| {
        let mut q = crate::SeriesQuery {
            tenant: "acme".into(),
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let all = store.list_series(&q(&|_| {})).await.unwrap();
    assert_eq!(all.len(), 24);
    assert!(
        all.windows(2)
            .all(|w| (w[0].series_id as i64) < (w[1].series_id as i64))
    );
    let db_cpu = store
        .list_series(&q(&|q| {
            q.name = Some("cpu".into());
            q.labels = vec![("service".into(), "db".into())];
        }))
        .await
        .unwrap();
    assert_eq!(db_cpu.len(), 4);
    assert!(
        db_cpu
            .iter()
            .all(|s| s.name == "cpu" && s.labels["service"] == "db")
    );
    let one = store
        .list_series(&q(&|q| q.series_id = Some(points[5].series_id())))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].labels["host"], "h2");
    // Pages of 10 walk every series once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_series(&q(&|q| {
                q.limit = 10;
                q.after = after;
            }))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.series_id);
        seen.extend(page.into_iter().map(|s| s.series_id));
    }
    assert_eq!(seen, all.iter().map(|s| s.series_id).collect::<Vec<_>>());
    // Another tenant's series is not found by its id.
    let theirs = points.last().unwrap().series_id();
    assert!(
        store
            .list_series(&q(&|q| q.series_id = Some(theirs)))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An alert that fires and resolves within one batch is stored once, resolved (one
/// PostgreSQL statement may not update a row twice).
pub async fn alert_conformance(store: &dyn Store) {
    use seismo_schemas::{Alert, AlertStatus};
    let at = Utc.timestamp_millis_opt(1_767_225_600_000).unwrap();
    let firing = Alert {
        tenant: "acme".into(),
        fingerprint: "f1".into(),
        status: AlertStatus::Firing,
        labels: [("alertname".to_string(), "Down".to_string())].into(),
        annotations: Default::default(),
        starts_at: at,
        ends_at: None,
        source: "test".into(),
    };
    let resolved = Alert {
        status: AlertStatus::Resolved,
        ends_at: Some(at + chrono::Duration::minutes(5)),
        ..firing.clone()
    };
    let other = Alert {
        fingerprint: "f2".into(),
        ..firing.clone()
    };
    store
        .insert_alerts(&[firing.clone(), other, resolved])
        .await
        .unwrap();
    assert_eq!(store.counts().await.unwrap().alerts, 2);
    // A replay of the same batch changes nothing.
    store.insert_alerts(&[firing]).await.unwrap();
    assert_eq!(store.counts().await.unwrap().alerts, 2);
}
