//! HTTP ingest against a real in-process bus: accepted lines reach the bus, bad lines are
//! named, a full bus answers 503 with nothing half-published.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use seismo_ingest::http::{IngestHttp, router};
use seismo_ingest::parse_lines;
use seismo_schemas::topics;
use seismo_transport::{Consumer, InProcBus};
use serde_json::Value;
use tower::ServiceExt;

fn app(bus: &InProcBus, max_body: usize) -> axum::Router {
    let producer = bus.producer(&[topics::METRICS, topics::ALERTS]);
    router(IngestHttp {
        producer: Arc::new(producer),
        publish_timeout: Duration::from_millis(50),
        max_body_bytes: max_body,
        scope_label: None,
    })
}

async fn post(
    app: &axum::Router,
    uri: &str,
    body: &str,
    tenant: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder().method("POST").uri(uri);
    if let Some(t) = tenant {
        req = req.header("x-seismo-tenant", t);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn line(i: usize) -> String {
    format!(r#"{{"name":"cpu","labels":{{"host":"h{i}"}},"ts":1700000000000,"value":{i}}}"#)
}

#[tokio::test]
async fn accepted_lines_reach_the_bus_and_bad_lines_are_numbered() {
    let bus = InProcBus::new(2, 16);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let body = [
        line(1),
        "{\"name\":\"cpu\"}".into(),
        line(2),
        "".into(),
        "[1,2".into(),
    ]
    .join("\n");
    let (code, _, v) = post(&app, "/api/v1/ingest/points", &body, Some("acme")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(v["accepted"], 2);
    let rejected: Vec<u64> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(rejected, vec![2, 5]);
    assert!(
        v["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("missing field")
    );
    // The accepted lines are on the bus, with the request's tenant filled in.
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    let parsed = parse_lines(&batch[0].payload, None);
    assert_eq!(parsed.points.len(), 2);
    assert!(parsed.points.iter().all(|p| p.tenant == "acme"));

    let (code, _, v) = post(&app, "/api/v1/ingest/points", &line(3), None).await;
    assert_eq!(
        (code, v["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(1))
    );
}

#[tokio::test]
async fn full_pipeline_answers_503_with_retry_after() {
    let bus = InProcBus::new(1, 1);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let (code, _, _) = post(&app, "/api/v1/ingest/points", &line(1), None).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    // Nobody consumes: the one slot is taken, so the next request is refused whole.
    let (code, retry, v) = post(&app, "/api/v1/ingest/points", &line(2), None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted")
    );
    // After the consumer catches up, the retry goes through.
    assert_eq!(consumer.next_batch(10).await.unwrap().unwrap().len(), 1);
    let (code, _, _) = post(&app, "/api/v1/ingest/points", &line(2), None).await;
    assert_eq!(code, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn oversized_bodies_and_bad_tenants_are_refused() {
    let bus = InProcBus::new(1, 8);
    let _consumer = bus.subscribe(topics::METRICS, "ingest", 1);
    let app = app(&bus, 128);
    bus.seal();
    let big = (0..10).map(line).collect::<Vec<_>>().join("\n");
    let (code, _, _) = post(&app, "/api/v1/ingest/points", &big, None).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, _, v) = post(&app, "/api/v1/ingest/points", &line(1), Some("bad tenant!")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("tenant"));
}

#[tokio::test]
async fn alertmanager_webhooks_become_alerts() {
    let bus = InProcBus::new(2, 8);
    let mut consumer = bus.subscribe(topics::ALERTS, "correlate", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let hook = r#"{"version":"4","status":"firing","alerts":[
        {"status":"firing","labels":{"alertname":"Down","service":"db"},"startsAt":"2024-05-01T10:00:00Z"},
        {"status":"resolved","labels":{"alertname":"Slow","service":"db"},"startsAt":"2024-05-01T09:00:00Z","endsAt":"2024-05-01T09:30:00Z"}]}"#;
    let (code, _, v) = post(&app, "/api/v1/ingest/alertmanager", hook, None).await;
    assert_eq!(
        (code, v["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(batch.len(), 2);
    let a: seismo_schemas::Alert = serde_json::from_slice(&batch[0].payload).unwrap();
    assert_eq!(a.labels["alertname"], "Down");
    assert_eq!(
        a.fingerprint.len(),
        16,
        "computed when Alertmanager sends none"
    );

    let (code, _, v) = post(
        &app,
        "/api/v1/ingest/alertmanager",
        "{\"version\":\"4\"",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("Alertmanager"), "{v}");
}

#[tokio::test]
async fn prometheus_remote_write_is_accepted_as_points() {
    use seismo_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
    let bus = InProcBus::new(2, 16);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let series = |name: Option<&str>| TimeSeries {
        labels: name
            .map(|n| Label {
                name: "__name__".into(),
                value: n.into(),
            })
            .into_iter()
            .chain([Label {
                name: "job".into(),
                value: "api".into(),
            }])
            .collect(),
        samples: vec![Sample {
            value: 2.5,
            timestamp: 1_700_000_000_000,
        }],
    };
    let send = |body: Vec<u8>| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/api/v1/write")
                .header("content-encoding", "snappy")
                .header("content-type", "application/x-protobuf")
                .header("x-seismo-tenant", "acme")
                .body(Body::from(body))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).to_string())
        }
    };
    // What Prometheus sends: 204 once the points are on the bus.
    let good = encode(&WriteRequest {
        timeseries: vec![series(Some("up"))],
    });
    assert_eq!(send(good).await.0, StatusCode::NO_CONTENT);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    let parsed = parse_lines(&batch[0].payload, None);
    assert_eq!(parsed.points.len(), 1);
    assert_eq!(
        (
            parsed.points[0].name.as_str(),
            parsed.points[0].tenant.as_str()
        ),
        ("up", "acme")
    );
    // A series without a name is refused with its reason (400: Prometheus drops it
    // rather than retrying); a body that is not remote_write is refused whole.
    let (code, body) = send(encode(&WriteRequest {
        timeseries: vec![series(None)],
    }))
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("__name__"), "{body}");
    let (code, body) = send(b"not snappy".to_vec()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("snappy"), "{body}");
}
