//! API tests: the real router over real stores (in-memory SQLite and PostgreSQL), called without a socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use seismo_api::{ApiState, router};
use seismo_schemas::{
    Anomaly, AnomalyKind, Explanation, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Labels, Severity,
};
use seismo_store::{IncidentWrite, SqliteStore, Store};
use serde_json::Value;
use tower::ServiceExt;

fn anomaly(i: i64, service: &str, score: f64) -> Anomaly {
    let labels: Labels = [("service".to_string(), service.to_string())].into();
    Anomaly {
        id: Anomaly::make_id(i as u64, i, "test"),
        tenant: "default".into(),
        series_id: i as u64,
        name: "latency".into(),
        labels,
        ts: Utc.timestamp_opt(1_700_000_000 + i * 60, 0).unwrap(),
        observed: 2.0,
        expected: 1.0,
        lower: 0.5,
        upper: 1.5,
        score,
        severity: Severity::Warning,
        kind: AnomalyKind::Point,
        detector: "test".into(),
        explanation: Explanation {
            summary: format!("anomaly {i}"),
            ..Default::default()
        },
    }
}

async fn seeded(store: Arc<dyn Store>) -> axum::Router {
    let anomalies: Vec<Anomaly> = (0..25)
        .map(|i| {
            anomaly(
                i,
                if i % 2 == 0 { "db" } else { "web" },
                f64::from(i as i32) / 25.0,
            )
        })
        .collect();
    store.insert_anomalies(&anomalies).await.unwrap();
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let incident = Incident {
        id: "inc1".into(),
        tenant: "default".into(),
        title: "latency anomalous on db".into(),
        status: IncidentStatus::Detected,
        severity: Severity::Warning,
        started_at: at,
        updated_at: at,
        resolved_at: None,
        scope: [("service".to_string(), "db".to_string())].into(),
        root_cause_candidates: vec![],
        anomaly_ids: vec![],
        alert_fingerprints: vec![],
    };
    let write = IncidentWrite {
        incident: incident.clone(),
        new_anomaly_ids: anomalies[..3].iter().map(|a| a.id.clone()).collect(),
        new_alert_fingerprints: vec![],
        events: vec![IncidentEvent {
            id: "inc1-created".into(),
            incident_id: "inc1".into(),
            ts: at,
            kind: IncidentEventKind::Created,
            actor: "seismo".into(),
            message: "opened".into(),
            from_status: None,
            to_status: Some(IncidentStatus::Detected),
        }],
    };
    // Written twice: the second write must change nothing (idempotence).
    store
        .write_incidents(&[write.clone(), write])
        .await
        .unwrap();
    router(ApiState::new(store)).merge(seismo_api::ops_router(
        Default::default(),
        std::time::Duration::from_secs(60),
    ))
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A GET whose answer is not JSON: status, content type and body.
async fn get_text(app: &axum::Router, uri: &str) -> (StatusCode, String, String) {
    let resp = app
        .clone()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, kind, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn anomalies_filter_by_label_score_and_time(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let (code, v) = call(
        &app,
        "GET",
        "/api/v1/anomalies?label=service:db&min_score=0.5",
        "",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let items = v["items"].as_array().unwrap();
    // Even i with i/25 >= 0.5: 14, 16, ..., 24.
    assert_eq!(items.len(), 6);
    assert!(
        items
            .iter()
            .all(|a| a["labels"]["service"] == "db" && a["score"].as_f64().unwrap() >= 0.5)
    );
    let from = 1_700_000_000_000i64 + 20 * 60_000;
    let (_, v) = call(&app, "GET", &format!("/api/v1/anomalies?from={from}"), "").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    let (_, v) = call(&app, "GET", "/api/v1/anomalies?to=2023-11-14T22:15:00Z", "").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
}

async fn pagination_walks_every_anomaly_once_newest_first(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let mut seen = Vec::new();
    let mut uri = "/api/v1/anomalies?limit=7".to_string();
    loop {
        let (code, v) = call(&app, "GET", &uri, "").await;
        assert_eq!(code, StatusCode::OK);
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["ts"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/anomalies?limit=7&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);
}

async fn bad_parameters_are_refused_with_the_reason(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    for (uri, needle) in [
        ("/api/v1/anomalies?limit=0", "limit"),
        ("/api/v1/anomalies?min_score=2", "min_score"),
        ("/api/v1/anomalies?from=yesterday", "RFC 3339"),
        ("/api/v1/anomalies?cursor=zzz", "cursor"),
        ("/api/v1/anomalies?colour=red", "unknown parameter"),
        ("/api/v1/incidents?status=ON_FIRE", "status"),
    ] {
        let (code, v) = call(&app, "GET", uri, "").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{uri}: {v}");
    }
}

async fn incident_detail_transitions_and_errors(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let (code, v) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["incident"]["status"], "DETECTED");
    assert_eq!(v["anomalies"].as_array().unwrap().len(), 3);
    assert_eq!(v["timeline"].as_array().unwrap().len(), 1);

    let (code, _) = call(&app, "GET", "/api/v1/incidents/nope", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, v) = call(
        &app,
        "POST",
        "/api/v1/incidents/inc1/transition",
        r#"{"status":"ACKNOWLEDGED","actor":"alice"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ACKNOWLEDGED");

    // ACKNOWLEDGED cannot go back to DETECTED, nor jump to LEARNED.
    for target in ["DETECTED", "LEARNED"] {
        let (code, v) = call(
            &app,
            "POST",
            "/api/v1/incidents/inc1/transition",
            &format!(r#"{{"status":"{target}"}}"#),
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT, "{target}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("cannot go from ACKNOWLEDGED"),
            "{v}"
        );
    }

    let (code, v) = call(
        &app,
        "POST",
        "/api/v1/incidents/inc1/transition",
        r#"{"status": "RESOLVED""#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("malformed JSON"),
        "{v}"
    );
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/incidents/nope/transition",
        r#"{"status":"RESOLVED"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, v) = call(
        &app,
        "POST",
        "/api/v1/incidents/inc1/transition",
        r#"{"status":"RESOLVED","note":"rolled back"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(v["resolved_at"].is_string());
    let (_, v) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    let timeline = v["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 3);
    assert_eq!(
        timeline[2]["message"],
        "ACKNOWLEDGED → RESOLVED: rolled back"
    );
    assert_eq!(timeline[1]["actor"], "alice");

    let (_, v) = call(
        &app,
        "GET",
        "/api/v1/incidents?status=RESOLVED&label=service:db",
        "",
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (_, v) = call(&app, "GET", "/api/v1/incidents?status=DETECTED", "").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
}

async fn tenants_do_not_see_each_other(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let req = Request::builder()
        .uri("/api/v1/incidents/inc1")
        .header("x-seismo-tenant", "other")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let req = Request::builder()
        .uri("/api/v1/anomalies")
        .header("x-seismo-tenant", "other")
        .body(Body::empty())
        .unwrap();
    let body = app
        .oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
}

async fn health_and_metrics_answer(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let (code, v) = call(&app, "GET", "/healthz", "").await;
    assert_eq!((code, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (status, _, _) = get_text(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
}

async fn transitions_are_bounded_in_size_and_number(store: Arc<dyn Store>) {
    let app = seeded(store).await;
    let post = |body: String| {
        let app = app.clone();
        async move { call(&app, "POST", "/api/v1/incidents/inc1/transition", &body).await }
    };
    let note = "n".repeat(seismo_api::MAX_NOTE_BYTES);
    let (code, v) = post(format!(r#"{{"status":"INVESTIGATING","note":"{note}x"}}"#)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("4096"), "{v}");
    let actor = "a".repeat(seismo_api::MAX_ACTOR_BYTES);
    let (code, v) = post(format!(
        r#"{{"status":"INVESTIGATING","actor":"{actor}x"}}"#
    ))
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("256"), "{v}");
    // At the limits exactly, accepted.
    let (code, v) = post(format!(
        r#"{{"status":"INVESTIGATING","actor":"{actor}","note":"{note}"}}"#
    ))
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    // INVESTIGATING ⇄ MITIGATED could go on for ever; the API stops it at the limit.
    for i in 1..seismo_api::MAX_STATUS_CHANGES {
        let to = if i % 2 == 1 {
            "MITIGATED"
        } else {
            "INVESTIGATING"
        };
        let (code, v) = post(format!(r#"{{"status":"{to}"}}"#)).await;
        assert_eq!(code, StatusCode::OK, "change {i}: {v}");
    }
    let (code, v) = post(r#"{"status":"RESOLVED"}"#.to_string()).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("changed status 100 times"),
        "{v}"
    );
    let (_, v) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    assert_eq!(v["timeline"].as_array().unwrap().len(), 101);
}

async fn one_incident_answers_with_at_most_a_thousand_anomalies(store: Arc<dyn Store>) {
    let n = seismo_api::MAX_INCIDENT_ANOMALIES + 5;
    let anomalies: Vec<Anomaly> = (100..100 + n as i64)
        .map(|i| anomaly(i, "db", 0.9))
        .collect();
    store.insert_anomalies(&anomalies).await.unwrap();
    let app = seeded(store.clone()).await;
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let mut incident = store.get_incident("default", "inc1").await.unwrap();
    incident.updated_at = at;
    store
        .write_incidents(&[IncidentWrite {
            incident,
            new_anomaly_ids: anomalies.iter().map(|a| a.id.clone()).collect(),
            new_alert_fingerprints: vec![],
            events: vec![],
        }])
        .await
        .unwrap();
    let (code, v) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["anomalies_total"], n + 3);
    let shown = v["anomalies"].as_array().unwrap();
    assert_eq!(shown.len(), seismo_api::MAX_INCIDENT_ANOMALIES);
    let ids = v["incident"]["anomaly_ids"].as_array().unwrap();
    assert_eq!(ids.len(), seismo_api::MAX_INCIDENT_ANOMALIES);
    assert!(shown.iter().all(|a| ids.contains(&a["id"])));
}

/// One undecodable row is skipped (and counted), not a 500 for the whole listing; `exec`
/// runs SQL on the store's database.
async fn listings_skip_rows_that_cannot_be_read<F, Fut>(store: Arc<dyn Store>, exec: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let app = seeded(store.clone()).await;
    let mut second = store.get_incident("default", "inc1").await.unwrap();
    second.id = "inc2".into();
    store
        .write_incidents(&[IncidentWrite {
            incident: second,
            new_anomaly_ids: vec![],
            new_alert_fingerprints: vec![],
            events: vec![],
        }])
        .await
        .unwrap();
    let bad = anomaly(0, "db", 0.0).id;
    exec(format!(
        "UPDATE anomalies SET severity = 'bogus' WHERE id = '{bad}'"
    ))
    .await;
    exec("UPDATE incidents SET status = 'bogus' WHERE id = 'inc2'".to_string()).await;
    exec("UPDATE incident_events SET kind = 'bogus' WHERE id = 'inc1-created'".to_string()).await;
    let before = seismo_store::skipped_rows();
    // Walked in pages of 4, the 24 good anomalies come back, each once.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/anomalies?limit=4".to_string();
    loop {
        let (code, v) = call(&app, "GET", &uri, "").await;
        assert_eq!(code, StatusCode::OK, "{v}");
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].clone()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/anomalies?limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 24);
    assert!(!seen.contains(&Value::from(bad.clone())));
    let (code, v) = call(&app, "GET", "/api/v1/incidents", "").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["inc1"]);
    let (code, v) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["anomalies"].as_array().unwrap().len(), 2);
    assert_eq!(v["anomalies_total"], 3);
    assert_eq!(v["timeline"].as_array().unwrap().len(), 0);
    assert!(seismo_store::skipped_rows() >= before + 4);
    let resp = app
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("seismo_store_rows_skipped_total"), "{text}");
}

#[tokio::test]
async fn listings_skip_rows_that_cannot_be_read_on_sqlite() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    listings_skip_rows_that_cannot_be_read(Arc::new(store), |sql| {
        let pool = pool.clone();
        async move {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn listings_skip_rows_that_cannot_be_read_on_postgres() {
    let store = seismo_store::testing::fresh_postgres().await;
    let pool = store.pool().clone();
    listings_skip_rows_that_cannot_be_read(Arc::new(store), |sql| {
        let pool = pool.clone();
        async move {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
    })
    .await;
}

/// A shop of three services (front calls cart and ads, cart calls db) sampled every minute
/// for 75 minutes; from minute 60, db's CPU is pinned and cart's and front's latency follow.
async fn investigate_ranks_the_starved_database_first(store: Arc<dyn Store>) {
    use seismo_schemas::MetricPoint;
    let t0 = 1_700_000_000_000i64;
    let mut points = Vec::new();
    let mut rng = 7u64;
    for i in 0..75i64 {
        let hot = (60..65).contains(&i);
        for (svc, name, base, hot_v) in [
            ("db", "cpu_usage", 5.0, 97.0),
            ("db", "server_latency_seconds", 0.01, 0.2),
            ("cart", "server_latency_seconds", 0.02, 0.21),
            ("front", "server_latency_seconds", 0.05, 0.25),
            ("ads", "cpu_usage", 3.0, 3.0),
            ("ads", "server_latency_seconds", 0.01, 0.01),
        ] {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let wobble = 1.0 + ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.1;
            points.push(MetricPoint {
                tenant: "default".into(),
                name: name.into(),
                labels: [("service".to_string(), svc.to_string())].into(),
                ts: t0 + i * 60_000,
                value: if hot { hot_v } else { base } * wobble,
            });
        }
    }
    store.insert_points(&points).await.unwrap();
    let cfg = seismo_correlate::CorrelateConfig {
        dependencies: [
            (
                "front".to_string(),
                vec!["cart".to_string(), "ads".to_string()],
            ),
            ("cart".to_string(), vec!["db".to_string()]),
        ]
        .into(),
        ..Default::default()
    };
    let app = router(ApiState::new(store).with_correlate(cfg));
    let at = chrono::DateTime::from_timestamp_millis(t0 + 60 * 60_000)
        .unwrap()
        .to_rfc3339();
    let (code, v) = call(
        &app,
        "POST",
        "/api/v1/investigate",
        &format!(r#"{{"service":"front","at":"{at}"}}"#),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["candidates"][0]["target"], "service=db", "{v:#}");
    assert_eq!(v["series_examined"], 6);
    assert_eq!(v["bucket_secs"], 60.0);
    // The symptom named by a series' labels instead.
    let (code, v) = call(
        &app,
        "POST",
        "/api/v1/investigate",
        &format!(r#"{{"labels":{{"service":"cart"}},"at":"{at}"}}"#),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["symptom"], "cart");
    assert_eq!(v["candidates"][0]["target"], "service=db", "{v:#}");
    // What cart does not call cannot be its cause.
    assert!(
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["target"] != "service=ads")
    );
    for (body, want) in [
        (r#"{"service":"front"}"#.to_string(), "missing field `at`"),
        (
            format!(r#"{{"labels":{{"service":"nope"}},"at":"{at}"}}"#),
            "no series matches",
        ),
        (
            format!(r#"{{"srvice":"front","at":"{at}"}}"#),
            "unknown field",
        ),
    ] {
        let (code, v) = call(&app, "POST", "/api/v1/investigate", &body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}: {v}");
    }
}

/// Every status change through the API is announced on `seismo.incidents` as one
/// canonical change, with the incident as it stands after it.
async fn transitions_are_announced_on_the_bus(store: Arc<dyn Store>) {
    use seismo_schemas::{ChangeKind, IncidentChange, topics};
    use seismo_transport::{Consumer, InProcBus};
    let bus = InProcBus::new(1, 100);
    let mut consumer = bus.subscribe(topics::INCIDENTS, "test", 1).remove(0);
    let producer: Arc<dyn seismo_transport::Producer> =
        Arc::new(bus.producer(&[topics::INCIDENTS]));
    let _ = seeded(store.clone()).await;
    let app = router(ApiState::new(store).with_changes(Some(producer)));
    for (to, kind) in [
        ("ACKNOWLEDGED", ChangeKind::Acknowledged),
        ("RESOLVED", ChangeKind::Resolved),
        ("INVESTIGATING", ChangeKind::Reopened),
    ] {
        let (code, v) = call(
            &app,
            "POST",
            "/api/v1/incidents/inc1/transition",
            &format!(r#"{{"status":"{to}","actor":"ann"}}"#),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let batch = consumer.next_batch(10).await.unwrap().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0].key[..], b"inc1");
        let change: IncidentChange = serde_json::from_slice(&batch[0].payload).unwrap();
        assert_eq!(change.kind, kind);
        assert_eq!(change.incident.status.as_str(), to);
        assert_eq!(change.actor, "ann");
    }
    // A refused transition announces nothing.
    let (code, _) = call(
        &app,
        "POST",
        "/api/v1/incidents/inc1/transition",
        r#"{"status":"DETECTED"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(consumer.lag(), 0);
}

/// The next server-sent event of a stream (comments skipped), or `None` when nothing comes
/// within `wait` or the stream ended.
async fn next_event(
    body: &mut Body,
    buf: &mut String,
    wait: std::time::Duration,
) -> Option<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                continue;
            }
            return Some((field("event:"), field("id:"), field("data:")));
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .ok()??;
        if let Ok(data) = frame.unwrap().into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

async fn open_stream(app: &axum::Router, uri: &str, tenant: &str) -> (StatusCode, Body) {
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .uri(uri)
                .header(seismo_api::auth::TENANT_HEADER, tenant)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    if status == StatusCode::OK {
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
    }
    (status, resp.into_body())
}

/// Status changes reach the live stream of their tenant once published, in order, each
/// with its kind and id; a kind filter and the tenant hold; closing the feed ends streams.
async fn transitions_reach_the_live_stream(store: Arc<dyn Store>) {
    use seismo_api::stream::{ChangeFeed, FeedingProducer};
    use seismo_schemas::{IncidentChange, topics};
    use seismo_transport::InProcBus;
    let bus = InProcBus::new(1, 100);
    let _keep = bus.subscribe(topics::INCIDENTS, "notify", 1);
    let feed = ChangeFeed::default();
    let producer: Arc<dyn seismo_transport::Producer> = Arc::new(FeedingProducer::new(
        Arc::new(bus.producer(&[topics::INCIDENTS])),
        feed.clone(),
    ));
    let _ = seeded(store.clone()).await;
    let app = router(
        ApiState::new(store.clone())
            .with_changes(Some(producer))
            .with_feed(Some(feed.clone())),
    );
    let wait = std::time::Duration::from_secs(5);
    let (code, mut all) = open_stream(&app, "/api/v1/stream/incidents", "default").await;
    assert_eq!(code, StatusCode::OK);
    let (_, mut resolved_only) =
        open_stream(&app, "/api/v1/stream/incidents?kind=resolved", "default").await;
    let (_, mut other) = open_stream(&app, "/api/v1/stream/incidents", "other").await;
    let (mut b1, mut b2, mut b3) = (String::new(), String::new(), String::new());
    for to in ["ACKNOWLEDGED", "RESOLVED"] {
        let (code, v) = call(
            &app,
            "POST",
            "/api/v1/incidents/inc1/transition",
            &format!(r#"{{"status":"{to}","actor":"ann"}}"#),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let (event, id, data) = next_event(&mut all, &mut b1, wait).await.expect("a change");
        let change: IncidentChange = serde_json::from_str(&data).unwrap();
        assert_eq!(event, to.to_lowercase());
        assert_eq!(id, change.id);
        assert_eq!(change.incident.id, "inc1");
        assert_eq!(change.incident.status.as_str(), to);
    }
    let (event, _, _) = next_event(&mut resolved_only, &mut b2, wait).await.unwrap();
    assert_eq!(event, "resolved", "the filter let only resolutions through");
    assert!(
        next_event(&mut other, &mut b3, std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "another tenant heard of it"
    );
    // Bad filters are refused with the reason; a process without a feed says so.
    let (code, _) = open_stream(&app, "/api/v1/stream/incidents?kind=exploded", "default").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = open_stream(&app, "/api/v1/stream/incidents?since=1", "default").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let bare = router(ApiState::new(store));
    let (code, _) = open_stream(&bare, "/api/v1/stream/incidents", "default").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    // Shutting down ends the open streams, so the server's drain does not wait on them.
    feed.close();
    let end = tokio::time::timeout(wait, all.frame()).await;
    assert!(matches!(end, Ok(None)), "the stream ended (not timed out)");
    assert!(b1.trim().is_empty(), "nothing else was sent: {b1}");
}

/// The tenant's series are listed by name and label in pages; one series answers with its
/// points beside its expected band, anomalies and newest forecast, for its tenant only.
async fn series_are_listed_and_shown_with_band_anomalies_and_forecast(store: Arc<dyn Store>) {
    use seismo_schemas::{BandPoint, Forecast, MetricPoint};
    let minute = 60_000i64;
    let t0 = 1_767_225_600_000i64; // 2026-01-01
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    let point = |tenant: &str, service: &str, i: i64| MetricPoint {
        tenant: tenant.into(),
        name: "latency".into(),
        labels: [("service".to_string(), service.to_string())].into(),
        ts: t0 + i * minute,
        value: i as f64,
    };
    let mut points: Vec<MetricPoint> = (0..120).map(|i| point("default", "db", i)).collect();
    points.extend((0..10).map(|i| point("default", "web", i)));
    points.push(point("acme", "db", 0));
    store.insert_points(&points).await.unwrap();
    let db = points[0].series_id();
    let theirs = points.last().unwrap().series_id();
    store
        .insert_bands(
            &(0..24)
                .map(|k| BandPoint {
                    series_id: db,
                    ts: at(t0 + k * 5 * minute),
                    expected: 1.0,
                    lower: 0.0,
                    upper: 2.0,
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let mut a = anomaly(7, "db", 0.9);
    a.series_id = db;
    a.ts = at(t0 + 30 * minute);
    store.insert_anomalies(&[a.clone()]).await.unwrap();
    store
        .insert_forecasts(
            &(0..3)
                .map(|k| Forecast {
                    series_id: db,
                    generated_at: at(t0 + 60 * minute),
                    ts: at(t0 + (60 + k * 60) * minute),
                    yhat: 1.0,
                    lower: 0.0,
                    upper: 3.0,
                    model: "theta".into(),
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let app = router(ApiState::new(store));
    let (status, v) = call(&app, "GET", "/api/v1/series", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    assert!(v.get("next_after").is_none());
    let (_, v) = call(
        &app,
        "GET",
        "/api/v1/series?label=service:db&name=latency",
        "",
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["series_id"], format!("{db:016x}"));
    // Pages of one.
    let (_, first) = call(&app, "GET", "/api/v1/series?limit=1", "").await;
    let after = first["next_after"].as_str().unwrap().to_string();
    let (_, second) = call(
        &app,
        "GET",
        &format!("/api/v1/series?limit=1&after={after}"),
        "",
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(
        first["items"][0]["series_id"],
        second["items"][0]["series_id"]
    );
    assert!(second.get("next_after").is_none(), "{second}");
    // One series over two hours.
    let window = format!("from={t0}&to={}", t0 + 120 * minute);
    let (status, v) = call(
        &app,
        "GET",
        &format!("/api/v1/series/{db:016x}?{window}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "latency");
    assert_eq!(v["labels"]["service"], "db");
    assert_eq!(v["observed"].as_array().unwrap().len(), 120);
    assert_eq!(
        v["observed"][5],
        serde_json::json!([(t0 + 5 * minute) as f64, 5.0])
    );
    assert_eq!(v["band"].as_array().unwrap().len(), 24);
    assert_eq!(v["anomalies"].as_array().unwrap().len(), 1);
    assert_eq!(v["anomalies"][0]["id"], a.id);
    assert_eq!(v["forecast"].as_array().unwrap().len(), 1, "{v}");
    // Another tenant's series is not found; bad requests say why.
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v1/series/{theirs:016x}?{window}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (uri, want) in [
        ("/api/v1/series/xyz".to_string(), "hex series id"),
        (
            format!("/api/v1/series/{db:016x}?from=0&to={}", 8 * 86_400_000i64),
            "7 days",
        ),
        ("/api/v1/series?label=service".to_string(), "name:value"),
        ("/api/v1/series?after=nothex".to_string(), "hex series id"),
        ("/api/v1/series?name=bad%20name".to_string(), "name"),
    ] {
        let (status, v) = call(&app, "GET", &uri, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{uri}: {v}");
    }
}

/// An incident's scope lists its services and hosts; a filter finds it by any one of them,
/// and only by a whole one.
async fn incidents_filter_by_any_of_their_services_and_hosts(store: Arc<dyn Store>) {
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let incident = Incident {
        id: "multi".into(),
        tenant: "default".into(),
        title: "latency anomalous on db, with 1 related service".into(),
        status: IncidentStatus::Detected,
        severity: Severity::Warning,
        started_at: at,
        updated_at: at,
        resolved_at: None,
        scope: [
            ("service".to_string(), "cart,db".to_string()),
            ("host".to_string(), "h1,h2".to_string()),
        ]
        .into(),
        root_cause_candidates: vec![],
        anomaly_ids: vec![],
        alert_fingerprints: vec![],
    };
    store
        .write_incidents(&[IncidentWrite {
            incident,
            new_anomaly_ids: vec![],
            new_alert_fingerprints: vec![],
            events: vec![],
        }])
        .await
        .unwrap();
    let app = router(ApiState::new(store));
    for (filter, found) in [
        ("label=service:db", true),
        ("label=service:cart", true),
        ("label=host:h2", true),
        ("label=service:cart&label=host:h1", true),
        ("label=service:d", false),
        ("label=service:cart,db", false),
        ("label=host:h3", false),
    ] {
        let (code, v) = call(&app, "GET", &format!("/api/v1/incidents?{filter}"), "").await;
        assert_eq!(code, StatusCode::OK, "{filter}: {v}");
        assert_eq!(
            v["items"].as_array().unwrap().len(),
            usize::from(found),
            "{filter}: {v}"
        );
    }
}

async fn explanations_are_served_regenerated_and_drafted_as_post_mortems(store: Arc<dyn Store>) {
    let app = seeded(store.clone()).await;
    let (status, v) = call(&app, "GET", "/api/v1/incidents/inc1/explanation", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("POST"), "{v}");
    // Without an explainer in the process, regeneration is refused with the reason.
    let (status, v) = call(&app, "POST", "/api/v1/incidents/inc1/explanation", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    let explainer = seismo_explain::Explainer::new(
        Default::default(),
        Default::default(),
        "service".into(),
        store.clone(),
    )
    .unwrap();
    let app = router(ApiState::new(store.clone()).with_explainer(Some(Arc::new(explainer))));
    let (status, made) = call(&app, "POST", "/api/v1/incidents/inc1/explanation", "").await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["source"], "template");
    assert_eq!(made["fallback"], "no model configured");
    // No root-cause candidate: inconclusive, and it says so.
    assert_eq!(made["inconclusive"], true);
    assert!(
        made["summary"].as_str().unwrap().contains("Inconclusive"),
        "{made}"
    );
    let (status, got) = call(&app, "GET", "/api/v1/incidents/inc1/explanation", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, made);
    let (_, detail) = call(&app, "GET", "/api/v1/incidents/inc1", "").await;
    assert_eq!(detail["explanation"], made);
    let (status, _) = call(&app, "POST", "/api/v1/incidents/nope/explanation", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Resolved: the explanation carries a post-mortem draft, served as Markdown.
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/incidents/inc1/transition",
        r#"{"status":"RESOLVED","actor":"alice","note":"fixed"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, made) = call(&app, "POST", "/api/v1/incidents/inc1/explanation", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        made["postmortem"]["timeline"].as_array().unwrap().len() >= 2,
        "{made}"
    );
    let (status, kind, md) = get_text(&app, "/api/v1/incidents/inc1/postmortem").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind, "text/markdown; charset=utf-8");
    for part in [
        "# Post-mortem draft",
        "## Impact",
        "## Cause",
        "## Timeline",
        "## Actions",
        "- [ ] ",
    ] {
        assert!(md.contains(part), "{part} missing from {md}");
    }
}

async fn sqlite() -> Arc<dyn Store> {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

async fn postgres() -> Arc<dyn Store> {
    Arc::new(seismo_store::testing::fresh_postgres().await)
}

async fn forecasts_are_served_beside_the_observed_values(store: Arc<dyn Store>) {
    use seismo_schemas::{Forecast, MetricPoint};
    let hour = 3_600_000i64;
    let t0 = 1_767_225_600_000i64; // 2026-01-01
    let points: Vec<MetricPoint> = (0..6)
        .map(|h| MetricPoint {
            tenant: "default".into(),
            name: "disk".into(),
            labels: Default::default(),
            ts: t0 + h * hour,
            value: h as f64,
        })
        .collect();
    store.insert_points(&points).await.unwrap();
    let id = points[0].series_id();
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    let run = |gen_h: i64| -> Vec<Forecast> {
        (0..3)
            .map(|k| Forecast {
                series_id: id,
                generated_at: at(t0 + gen_h * hour),
                ts: at(t0 + (gen_h + k) * hour),
                yhat: (gen_h + k) as f64,
                lower: 0.0,
                upper: 10.0,
                model: "mstl".into(),
            })
            .collect()
    };
    store.insert_forecasts(&run(4)).await.unwrap();
    store.insert_forecasts(&run(5)).await.unwrap();
    let app = seeded(store).await;
    let window = format!("from={}&to={}", t0, t0 + 10 * hour);
    let (status, v) = call(
        &app,
        "GET",
        &format!("/api/v1/forecasts?series_id={id:016x}&{window}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let rows = v["forecasts"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "the newest run only: {v}");
    assert_eq!(rows[0]["yhat"], 5.0);
    let (_, v) = call(
        &app,
        "GET",
        &format!("/api/v1/forecasts?series_id={id:016x}&{window}&runs=all"),
        "",
    )
    .await;
    assert_eq!(v["forecasts"].as_array().unwrap().len(), 6);
    let (status, v) = call(
        &app,
        "GET",
        &format!("/api/v1/series/{id:016x}/forecast?{window}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["observed"].as_array().unwrap().len(), 6);
    assert_eq!(v["observed"][5][1], 5.0);
    assert_eq!(v["forecast"].as_array().unwrap().len(), 3);
    // Bad or missing parameters say what is wrong; another tenant's series is not found.
    for (uri, want) in [
        ("/api/v1/forecasts".to_string(), "series_id is required"),
        (
            format!("/api/v1/forecasts?series_id={id:016x}&runs=some"),
            "runs=",
        ),
        ("/api/v1/forecasts?series_id=zz".to_string(), "hex"),
        (
            format!("/api/v1/forecasts?series_id={id:016x}&from=0&to=99999999999999"),
            "90 days",
        ),
    ] {
        let (status, v) = call(&app, "GET", &uri, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v.to_string().contains(want), "{uri}: {v}");
    }
    let req = Request::builder()
        .uri(format!("/api/v1/series/{id:016x}/forecast?{window}"))
        .header("x-seismo-tenant", "other")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

/// Every API test runs on both stores: the API must not care which one it reads.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::sqlite().await).await } )*
        }
        mod on_postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::postgres().await).await } )*
        }
    };
}

on_every_store!(
    anomalies_filter_by_label_score_and_time,
    pagination_walks_every_anomaly_once_newest_first,
    bad_parameters_are_refused_with_the_reason,
    incident_detail_transitions_and_errors,
    tenants_do_not_see_each_other,
    health_and_metrics_answer,
    transitions_are_bounded_in_size_and_number,
    one_incident_answers_with_at_most_a_thousand_anomalies,
    investigate_ranks_the_starved_database_first,
    transitions_are_announced_on_the_bus,
    transitions_reach_the_live_stream,
    incidents_filter_by_any_of_their_services_and_hosts,
    explanations_are_served_regenerated_and_drafted_as_post_mortems,
    forecasts_are_served_beside_the_observed_values,
    series_are_listed_and_shown_with_band_anomalies_and_forecast
);
