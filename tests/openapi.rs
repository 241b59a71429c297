//! Every operation the OpenAPI description documents, called over HTTP on a running
//! embedded process: each answers with a status the description lists for it, the
//! served description is the generated one, and no documented operation goes uncalled.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use seismo::Config;
use seismo::pipeline::{self, Embedded};
use seismo_schemas::{
    Anomaly, AnomalyKind, BandPoint, Explanation, Forecast, Incident, IncidentStatus, Labels,
    MetricPoint, Severity,
};
use seismo_store::{IncidentWrite, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One call: method, documented path, concrete URI, body and its content type.
struct Call {
    method: &'static str,
    path: &'static str,
    uri: String,
    body: Option<(Vec<u8>, &'static str)>,
}

fn call(method: &'static str, path: &'static str, uri: impl Into<String>) -> Call {
    Call {
        method,
        path,
        uri: uri.into(),
        body: None,
    }
}

fn with_json(mut c: Call, v: Value) -> Call {
    c.body = Some((v.to_string().into_bytes(), "application/json"));
    c
}

async fn seed(store: &Arc<dyn Store>) -> (u64, String) {
    let t0 = Utc::now().timestamp_millis() / 60_000 * 60_000 - 3 * 3_600_000;
    let labels: Labels = [("service".to_string(), "db".to_string())].into();
    let points: Vec<MetricPoint> = (0..180)
        .map(|i| MetricPoint {
            tenant: "default".into(),
            name: "latency".into(),
            labels: labels.clone(),
            ts: t0 + i * 60_000,
            value: 1.0 + (i % 7) as f64,
        })
        .collect();
    store.insert_points(&points).await.unwrap();
    let series = points[0].series_id();
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    store
        .insert_bands(&[BandPoint {
            series_id: series,
            ts: at(t0),
            expected: 1.0,
            lower: 0.0,
            upper: 2.0,
        }])
        .await
        .unwrap();
    store
        .insert_forecasts(&[Forecast {
            series_id: series,
            generated_at: at(t0 + 3_600_000),
            ts: at(t0 + 7_200_000),
            yhat: 1.0,
            lower: 0.0,
            upper: 2.0,
            model: "theta".into(),
        }])
        .await
        .unwrap();
    let anomaly = Anomaly {
        id: Anomaly::make_id(series, t0 + 90 * 60_000, "test"),
        tenant: "default".into(),
        series_id: series,
        name: "latency".into(),
        labels: labels.clone(),
        ts: at(t0 + 90 * 60_000),
        observed: 9.0,
        expected: 1.0,
        lower: 0.0,
        upper: 2.0,
        score: 0.99,
        severity: Severity::Critical,
        kind: AnomalyKind::Point,
        detector: "test".into(),
        explanation: Explanation {
            summary: "latency far above its band".into(),
            ..Default::default()
        },
    };
    store
        .insert_anomalies(std::slice::from_ref(&anomaly))
        .await
        .unwrap();
    let incident = Incident {
        id: "inc-openapi".into(),
        tenant: "default".into(),
        title: "latency anomalous on db".into(),
        status: IncidentStatus::Detected,
        severity: Severity::Critical,
        started_at: anomaly.ts,
        updated_at: anomaly.ts,
        resolved_at: None,
        scope: labels,
        root_cause_candidates: vec![],
        anomaly_ids: vec![anomaly.id.clone()],
        alert_fingerprints: vec![],
    };
    store
        .write_incidents(&[IncidentWrite {
            incident: incident.clone(),
            new_anomaly_ids: vec![anomaly.id],
            new_alert_fingerprints: vec![],
            events: vec![],
        }])
        .await
        .unwrap();
    (series, incident.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    // The template explainer, so explanations can be made and read.
    cfg.explain.enabled = true;
    let store = pipeline::open_store(&cfg).await.unwrap();
    let (series, incident) = seed(&store).await;
    let running = Embedded::start(&cfg, store.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let feed = running.feed.clone();
    let server = tokio::spawn(seismo::http::serve(
        listener,
        seismo::http::router(
            &cfg,
            Some(&running),
            Some(store.clone()),
            running.health.clone(),
        ),
        async move {
            stop.cancelled().await;
            feed.close();
        },
        seismo::http::HttpLimits::from_config(&cfg),
    ));
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let doc: Value = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc, seismo_api::openapi::document());

    let id = format!("{series:016x}");
    let window = "from=2000-01-01T00:00:00Z&to=2000-01-03T00:00:00Z";
    let point = json!({"name": "cpu", "labels": {"host": "h1"}, "ts": Utc::now().timestamp_millis(), "value": 0.5});
    let alert = json!({"version": "4", "status": "firing", "alerts": [{"status": "firing",
        "labels": {"alertname": "Down", "service": "db"}, "startsAt": Utc::now().to_rfc3339()}]});
    let mut calls = vec![
        call("get", "/healthz", "/healthz"),
        call("get", "/readyz", "/readyz"),
        call("get", "/metrics", "/metrics"),
        call("get", "/api/v1/openapi.json", "/api/v1/openapi.json"),
        call(
            "get",
            "/api/v1/anomalies",
            "/api/v1/anomalies?label=service:db&min_score=0.5&limit=10",
        ),
        call(
            "get",
            "/api/v1/incidents",
            "/api/v1/incidents?status=DETECTED&label=service:db",
        ),
        call(
            "get",
            "/api/v1/incidents/{id}",
            format!("/api/v1/incidents/{incident}"),
        ),
        call(
            "post",
            "/api/v1/incidents/{id}/explanation",
            format!("/api/v1/incidents/{incident}/explanation"),
        ),
        call(
            "get",
            "/api/v1/incidents/{id}/explanation",
            format!("/api/v1/incidents/{incident}/explanation"),
        ),
        call(
            "get",
            "/api/v1/incidents/{id}/postmortem",
            format!("/api/v1/incidents/{incident}/postmortem"),
        ),
        with_json(
            call(
                "post",
                "/api/v1/incidents/{id}/transition",
                format!("/api/v1/incidents/{incident}/transition"),
            ),
            json!({"status": "ACKNOWLEDGED", "actor": "ann"}),
        ),
        with_json(
            call("post", "/api/v1/investigate", "/api/v1/investigate"),
            json!({"service": "db", "at": Utc::now().to_rfc3339()}),
        ),
        with_json(
            call("post", "/api/v1/query", "/api/v1/query"),
            json!({"sql": "SELECT service, count(*) AS n FROM anomalies GROUP BY service ORDER BY n DESC", "max_rows": 5}),
        ),
        call(
            "get",
            "/api/v1/forecasts",
            format!("/api/v1/forecasts?series_id={id}&runs=all"),
        ),
        call(
            "get",
            "/api/v1/series",
            "/api/v1/series?name=latency&label=service:db&limit=5",
        ),
        call("get", "/api/v1/series/{id}", format!("/api/v1/series/{id}")),
        call(
            "get",
            "/api/v1/series/{id}/forecast",
            format!("/api/v1/series/{id}/forecast"),
        ),
        call(
            "get",
            "/api/v1/stream/incidents",
            "/api/v1/stream/incidents?kind=opened",
        ),
        with_json(
            call("post", "/api/v1/silences", "/api/v1/silences"),
            json!({"matchers": ["service=db"], "ends_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(), "comment": "maintenance"}),
        ),
        call("get", "/api/v1/silences", "/api/v1/silences?expired=true"),
        with_json(
            call("post", "/api/v1/tokens", "/api/v1/tokens"),
            json!({"role": "read", "name": "grafana"}),
        ),
        call("get", "/api/v1/tokens", "/api/v1/tokens"),
        call("get", "/api/v1/audit", "/api/v1/audit?limit=10"),
        Call {
            body: Some((format!("{point}\n").into_bytes(), "application/x-ndjson")),
            ..call("post", "/api/v1/ingest/points", "/api/v1/ingest/points")
        },
        with_json(
            call(
                "post",
                "/api/v1/ingest/alertmanager",
                "/api/v1/ingest/alertmanager",
            ),
            alert,
        ),
        Call {
            body: Some((common::remote_write_body(), "application/x-protobuf")),
            ..call("post", "/api/v1/write", "/api/v1/write")
        },
    ];
    // The window parameters parse on every route that takes them (their answers may be empty).
    calls.push(call(
        "get",
        "/api/v1/anomalies",
        format!("/api/v1/anomalies?{window}"),
    ));
    let mut called = BTreeSet::new();
    let mut made: Vec<(&'static str, String)> = Vec::new();
    let run = |c: Call| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let mut req = client.request(
                c.method.to_uppercase().parse().unwrap(),
                format!("{base}{}", c.uri),
            );
            if let Some((body, ctype)) = c.body {
                req = req.header("content-type", ctype).body(body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            // An event stream does not end: its headers are the answer.
            let body = if ctype.starts_with("text/event-stream") {
                Value::Null
            } else if ctype.starts_with("application/json") {
                resp.json().await.unwrap()
            } else {
                Value::String(resp.text().await.unwrap())
            };
            (c.method, c.path, c.uri, status, body)
        }
    };
    for c in calls.drain(..) {
        let (method, path, uri, status, body) = run(c).await;
        let documented = &doc["paths"][path][method]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{method} {uri} answered {status}, which its description does not list: {body}"
        );
        assert!(
            (200..300).contains(&status),
            "{method} {uri} answered {status}: {body}"
        );
        called.insert((method, path));
        if path == "/api/v1/tokens" && method == "post" {
            made.push(("token", body["id"].as_str().unwrap().to_string()));
        }
        if path == "/api/v1/silences" && method == "post" {
            made.push(("silence", body["id"].as_str().unwrap().to_string()));
        }
    }
    // What the calls above made, ended.
    for (what, id) in made {
        let (method, path, uri, status, body) = match what {
            "token" => {
                run(call(
                    "delete",
                    "/api/v1/tokens/{id}",
                    format!("/api/v1/tokens/{id}"),
                ))
                .await
            }
            _ => {
                run(call(
                    "delete",
                    "/api/v1/silences/{id}",
                    format!("/api/v1/silences/{id}"),
                ))
                .await
            }
        };
        assert_eq!(status, 200, "{method} {uri}: {body}");
        assert!(doc["paths"][path][method]["responses"].get("200").is_some());
        called.insert((method, path));
    }
    let documented: BTreeSet<(&str, &str)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.as_str(), p.as_str()))
        })
        .collect();
    let called: BTreeSet<(&str, &str)> = called.into_iter().collect();
    assert_eq!(called, documented, "every documented operation was called");
    token.cancel();
    server.await.unwrap().unwrap();
    running.finish().await.unwrap();
}
