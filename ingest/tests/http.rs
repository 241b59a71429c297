//! HTTP ingest against a real in-process bus: accepted lines reach the bus, bad lines are
//! named, a full bus answers 503 with nothing half-published, and every limit refuses
//! with a status and a message naming its option.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use seismo_ingest::http::{IngestHttp, gunzip, router};
use seismo_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use seismo_ingest::{DecodeError, IngestConfig, Limits, now_ms, parse_lines};
use seismo_schemas::{Caller, Quota, Role, topics};
use seismo_transport::{Consumer, DiskBus, DiskBusConfig, InProcBus, Producer};
use serde_json::Value;
use tower::ServiceExt;

fn app_with(producer: Arc<dyn Producer>, max_body: usize, cfg: IngestConfig) -> axum::Router {
    router(IngestHttp {
        producer,
        publish_timeout: Duration::from_millis(50),
        max_body_bytes: max_body,
        scope_label: None,
        limits: Limits::new(cfg),
    })
}

fn app_cfg(bus: &InProcBus, max_body: usize, cfg: IngestConfig) -> axum::Router {
    app_with(
        Arc::new(bus.producer(&[topics::METRICS, topics::ALERTS])),
        max_body,
        cfg,
    )
}

fn app(bus: &InProcBus, max_body: usize) -> axum::Router {
    app_cfg(bus, max_body, IngestConfig::default())
}

/// An answer: status, headers, raw body and the body as JSON (Null when it is not).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
    json: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }

    fn rejected_lines(&self) -> Vec<u64> {
        self.json["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect()
    }

    fn reason(&self, i: usize) -> &str {
        self.json["rejected"][i]["reason"].as_str().unwrap()
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        json,
    }
}

fn request(uri: &str, body: impl Into<Body>, tenant: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method("POST").uri(uri);
    if let Some(t) = tenant {
        req = req.header("x-seismo-tenant", t);
    }
    req.body(body.into()).unwrap()
}

async fn post(app: &axum::Router, uri: &str, body: &str, tenant: Option<&str>) -> Answer {
    send(app, request(uri, body.to_string(), tenant)).await
}

/// Every point forwarded in `batch`, each record read with the tenant its header names.
fn points_of(batch: &[seismo_transport::Message]) -> Vec<seismo_schemas::MetricPoint> {
    batch
        .iter()
        .flat_map(|m| {
            let tenant = m
                .header("tenant")
                .map(|t| String::from_utf8(t.to_vec()).unwrap());
            parse_lines(&m.payload, tenant.as_deref()).points
        })
        .collect()
}

/// A minute ago: inside the default time window.
fn recent() -> i64 {
    now_ms() - 60_000
}

fn line_at(host: usize, ts: i64) -> String {
    format!(r#"{{"name":"cpu","labels":{{"host":"h{host}"}},"ts":{ts},"value":{host}}}"#)
}

fn line(i: usize) -> String {
    line_at(i, recent())
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
    let a = post(&app, "/api/v1/ingest/points", &body, Some("acme")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["accepted"], 2);
    assert_eq!(a.json["rejected_count"], 2);
    assert_eq!(a.rejected_lines(), vec![2, 5]);
    assert!(a.reason(0).contains("missing field"));
    // The accepted lines are on the bus, with the request's tenant in a header for the
    // lines that name none.
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(
        batch[0].header("tenant").map(|t| &t[..]),
        Some(&b"acme"[..])
    );
    let points = points_of(&batch);
    assert_eq!(points.len(), 2);
    assert!(points.iter().all(|p| p.tenant == "acme"));

    let a = post(&app, "/api/v1/ingest/points", &line(3), None).await;
    assert_eq!(
        (a.status, a.json["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(1))
    );
}

#[tokio::test]
async fn full_pipeline_answers_503_with_retry_after() {
    let bus = InProcBus::new(1, 1);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let a = post(&app, "/api/v1/ingest/points", &line(1), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    // Nobody consumes: the one slot is taken, so the next request is refused whole.
    let a = post(&app, "/api/v1/ingest/points", &line(2), None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(a.error().contains("nothing was accepted"));
    // After the consumer catches up, the retry goes through.
    assert_eq!(consumer.next_batch(10).await.unwrap().unwrap().len(), 1);
    let a = post(&app, "/api/v1/ingest/points", &line(2), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn oversized_bodies_and_bad_tenants_are_refused() {
    let bus = InProcBus::new(1, 8);
    let _consumer = bus.subscribe(topics::METRICS, "ingest", 1);
    let app = app(&bus, 128);
    bus.seal();
    let big = (0..10).map(line).collect::<Vec<_>>().join("\n");
    let a = post(&app, "/api/v1/ingest/points", &big, None).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = post(&app, "/api/v1/ingest/points", &line(1), Some("bad tenant!")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("tenant"));
}

#[tokio::test]
async fn points_outside_the_time_window_are_refused_unless_backfilling() {
    let bus = InProcBus::new(1, 16);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let strict = app(&bus, 1 << 20);
    let backfill = app_cfg(
        &bus,
        1 << 20,
        IngestConfig {
            backfill: true,
            ..IngestConfig::default()
        },
    );
    bus.seal();
    let now = now_ms();
    let body = [
        line_at(1, now - 8 * 86_400_000),
        line_at(2, now - 6 * 86_400_000),
        line_at(3, now + 20 * 60_000),
        line_at(4, now + 5 * 60_000),
    ]
    .join("\n");
    let a = post(&strict, "/api/v1/ingest/points", &body, None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["accepted"], 2);
    assert_eq!(a.rejected_lines(), [1, 3]);
    assert!(a.reason(0).contains("ingest.max_past_secs"), "{}", a.json);
    assert!(a.reason(0).contains("backfill"), "{}", a.json);
    assert!(a.reason(1).contains("ingest.max_future_secs"), "{}", a.json);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(points_of(&batch).len(), 2);

    // Backfilling takes any age (within 2000..2100).
    let old = [line_at(1, 1_700_000_000_000), line_at(3, now + 20 * 60_000)].join("\n");
    let a = post(&backfill, "/api/v1/ingest/points", &old, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["accepted"], 2);

    // remote_write samples are held to the same window.
    let req = WriteRequest {
        timeseries: vec![series("up", 1, &[now - 8 * 86_400_000, now - 1000])],
    };
    let a = send(&strict, remote_write_request(encode(&req))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (a.json["accepted"].as_u64(), a.rejected_lines()),
        (Some(1), vec![1])
    );
    assert!(a.reason(0).contains("ingest.max_past_secs"), "{}", a.json);
}

#[tokio::test]
async fn new_series_beyond_the_tenant_limit_are_refused_while_active_ones_go_on() {
    let bus = InProcBus::new(1, 64);
    let _consumer = bus.subscribe(topics::METRICS, "ingest", 1);
    let app = app_cfg(
        &bus,
        1 << 20,
        IngestConfig {
            max_series_per_tenant: 3,
            ..IngestConfig::default()
        },
    );
    bus.seal();
    let three = (1..=3).map(line).collect::<Vec<_>>().join("\n");
    let a = post(&app, "/api/v1/ingest/points", &three, Some("acme")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    // Two active series and a new one: the new one is refused, naming the option.
    let body = [line(2), line(4), line(1)].join("\n");
    let a = post(&app, "/api/v1/ingest/points", &body, Some("acme")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["accepted"], 2);
    assert_eq!(a.rejected_lines(), [2]);
    assert!(
        a.reason(0).contains("ingest.max_series_per_tenant"),
        "{}",
        a.json
    );
    // The same series go on; another tenant has its own budget.
    let a = post(&app, "/api/v1/ingest/points", &three, Some("acme")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = post(&app, "/api/v1/ingest/points", &line(4), Some("bravo")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    // remote_write shares the limiter.
    let req = WriteRequest {
        timeseries: vec![series("other_metric", 1, &[recent()])],
    };
    let mut r = remote_write_request(encode(&req));
    r.headers_mut()
        .insert("x-seismo-tenant", "acme".parse().unwrap());
    let a = send(&app, r).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.reason(0).contains("ingest.max_series_per_tenant"),
        "{}",
        a.json
    );
}

/// 8 MiB of lines, each refused with the longest reason it can have once JSON-escaped.
fn junk_body(bytes: usize, line: &str) -> String {
    let mut body = String::with_capacity(bytes + line.len());
    while body.len() < bytes {
        body.push_str(line);
        body.push('\n');
    }
    body
}

#[tokio::test]
async fn the_error_answer_for_8_mib_of_junk_stays_small() {
    let bus = InProcBus::new(1, 8);
    let _consumer = bus.subscribe(topics::METRICS, "ingest", 1);
    let app = app(&bus, 16 << 20);
    bus.seal();
    // Plain junk, and lines whose reason quotes a field of escaped quotes (each `"` is
    // `\"` in the reason and `\\\"` in the answer: the most an answer can grow).
    let quotes = format!(
        r#"{{"name":"{}","ts":{},"value":1}}"#,
        "\\\"".repeat(200),
        recent()
    );
    for junk in [
        "this is not JSON at all, just some junk padding the line out",
        &quotes,
    ] {
        let body = junk_body(8 << 20, junk);
        let lines = body.lines().count();
        assert!(lines <= IngestConfig::default().max_points_per_request);
        let a = post(&app, "/api/v1/ingest/points", &body, None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json["rejected_count"].as_u64(), Some(lines as u64));
        assert_eq!(a.json["rejected"].as_array().unwrap().len(), 100);
        assert_eq!(a.rejected_lines(), (1..=100).collect::<Vec<u64>>());
        assert!((0..100).all(|i| a.reason(i).len() <= 256));
        eprintln!(
            "8 MiB of junk ({lines} lines of {} bytes): error answer {} bytes",
            junk.len(),
            a.body.len()
        );
        assert!(a.body.len() <= 64 << 10, "{} bytes", a.body.len());
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn with_encoding(body: Vec<u8>, encoding: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/api/v1/ingest/points")
        .header("content-encoding", encoding)
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_gzip_bombs_refused() {
    let bus = InProcBus::new(1, 8);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let body = (0..5).map(line).collect::<Vec<_>>().join("\n");
    let a = send(&app, with_encoding(gzip(body.as_bytes()), "gzip")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["accepted"], 5);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(points_of(&batch).len(), 5);

    // 40 MiB of newlines compress to about 40 KiB: refused while decompressing.
    let bomb = gzip(&vec![b'\n'; 40 << 20]);
    assert!(bomb.len() < 64 << 10);
    let a = send(&app, with_encoding(bomb.clone(), "gzip")).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.error().contains("ingest.max_decompressed_bytes"),
        "{}",
        a.json
    );
    assert_eq!(a.json["limit"], "ingest.max_decompressed_bytes");

    let a = send(&app, with_encoding(b"not gzip".to_vec(), "gzip")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("gzip"), "{}", a.json);
    let a = send(&app, with_encoding(body.into_bytes(), "br")).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The buffer never grows past the limit, whatever the body holds.
    let limit = 3 << 20;
    match gunzip(&bomb, limit) {
        Err(DecodeError::TooLarge(t)) => assert_eq!(t.limit.as_str(), "max_decompressed_bytes"),
        other => panic!("{other:?}"),
    }
    let exact = gunzip(&gzip(&vec![7u8; limit]), limit).unwrap();
    assert_eq!(exact.len(), limit);
    assert!(exact.capacity() <= limit, "{}", exact.capacity());
}

fn series(name: &str, host: usize, ts: &[i64]) -> TimeSeries {
    TimeSeries {
        labels: vec![
            Label {
                name: "__name__".into(),
                value: name.into(),
            },
            Label {
                name: "host".into(),
                value: format!("h{host}"),
            },
        ],
        samples: ts
            .iter()
            .map(|&t| Sample {
                value: 1.0,
                timestamp: t,
            })
            .collect(),
    }
}

fn remote_write_request(body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/api/v1/write")
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn snappy_bombs_are_refused_before_decompressing() {
    let bus = InProcBus::new(1, 8);
    let _consumer = bus.subscribe(topics::METRICS, "ingest", 1);
    let app = app(&bus, 8 << 20);
    bus.seal();
    // Eight bytes that declare 1 GiB decompressed: refused on the header alone.
    let declared = vec![0x80, 0x80, 0x80, 0x80, 0x04, 0x00, 0x41, 0x41];
    let a = send(&app, remote_write_request(declared)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("1073741824"), "{}", a.json);
    assert!(
        a.error().contains("ingest.max_decompressed_bytes"),
        "{}",
        a.json
    );
    // A real block: 40 MiB of zeros in about 2 MiB.
    let zeros = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 40 << 20])
        .unwrap();
    assert!(zeros.len() < 8 << 20);
    let a = send(&app, remote_write_request(zeros)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["limit"], "ingest.max_decompressed_bytes");
}

#[tokio::test]
async fn requests_with_too_many_points_are_refused_whole() {
    // Room for one request's records: up to one per forward key.
    let bus = InProcBus::new(1, 64);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app_cfg(
        &bus,
        1 << 20,
        IngestConfig {
            max_points_per_request: 10,
            max_decompressed_bytes: 64 << 10,
            ..IngestConfig::default()
        },
    );
    bus.seal();
    let lines = |n: usize| (0..n).map(line).collect::<Vec<_>>().join("\n\n");
    let a = post(&app, "/api/v1/ingest/points", &lines(11), None).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.error().contains("ingest.max_points_per_request"),
        "{}",
        a.json
    );
    let a = post(&app, "/api/v1/ingest/points", &lines(10), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(
        points_of(&consumer.next_batch(64).await.unwrap().unwrap()).len(),
        10
    );

    let t = recent();
    let samples: Vec<i64> = (0..11).map(|i| t + i).collect();
    let req = |n: usize| WriteRequest {
        timeseries: vec![series("up", 1, &samples[..n])],
    };
    let a = send(&app, remote_write_request(encode(&req(11)))).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("11 samples"), "{}", a.json);
    assert!(
        a.error().contains("ingest.max_points_per_request"),
        "{}",
        a.json
    );
    let a = send(&app, remote_write_request(encode(&req(10)))).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);

    // Ten samples of a series with 30 labels of 1000 bytes would be 300 kB of points,
    // from a body a tenth of that size.
    let mut heavy = series("up", 1, &samples[..10]);
    heavy.labels.extend((0..30).map(|i| Label {
        name: format!("l{i}"),
        value: "x".repeat(1000),
    }));
    let a = send(
        &app,
        remote_write_request(encode(&WriteRequest {
            timeseries: vec![heavy],
        })),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("expand"), "{}", a.json);
    assert_eq!(a.json["limit"], "ingest.max_decompressed_bytes");
}

fn webhook(alerts: &[String]) -> String {
    format!(
        r#"{{"version":"4","status":"firing","alerts":[{}]}}"#,
        alerts.join(",")
    )
}

fn alert(name: &str, labels: &[(String, String)]) -> String {
    let mut l: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    l.insert("alertname".into(), name.into());
    serde_json::json!({
        "status": "firing",
        "labels": l,
        "startsAt": "2026-05-01T10:00:00Z",
    })
    .to_string()
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
    let a = post(&app, "/api/v1/ingest/alertmanager", hook, None).await;
    assert_eq!(
        (a.status, a.json["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(batch.len(), 2);
    let al: seismo_schemas::Alert = serde_json::from_slice(&batch[0].payload).unwrap();
    assert_eq!(al.labels["alertname"], "Down");
    assert_eq!(
        al.fingerprint.len(),
        16,
        "computed when Alertmanager sends none"
    );

    let a = post(
        &app,
        "/api/v1/ingest/alertmanager",
        "{\"version\":\"4\"",
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("Alertmanager"), "{}", a.json);
}

#[tokio::test]
async fn alert_limits_and_the_tenant_label_are_enforced() {
    let bus = InProcBus::new(1, 64);
    let mut consumer = bus.subscribe(topics::ALERTS, "correlate", 1).remove(0);
    let app = app_cfg(
        &bus,
        4 << 20,
        IngestConfig {
            max_alerts_per_request: 3,
            ..IngestConfig::default()
        },
    );
    bus.seal();
    let uri = "/api/v1/ingest/alertmanager";
    let four: Vec<String> = (0..4).map(|i| alert(&format!("A{i}"), &[])).collect();
    let a = post(&app, uri, &webhook(&four), None).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.error().contains("ingest.max_alerts_per_request"),
        "{}",
        a.json
    );
    let a = post(&app, uri, &webhook(&four[..3]), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(consumer.next_batch(10).await.unwrap().unwrap().len(), 3);

    let labels = |n: usize, len: usize| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("l{i}"), "v".repeat(len))).collect()
    };
    // 64 labels with alertname: 65.
    let a = post(&app, uri, &webhook(&[alert("Many", &labels(64, 1))]), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("65 labels; at most 64"), "{}", a.json);
    assert!(a.error().contains("Many"), "{}", a.json);
    let a = post(
        &app,
        uri,
        &webhook(&[alert("Long", &labels(1, 1025))]),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("longer than 1024 bytes"), "{}", a.json);
    let mut annotated: Value = serde_json::from_str(&alert("Annotated", &[])).unwrap();
    annotated["annotations"] = serde_json::json!({ "description": "d".repeat(16 * 1024 + 1) });
    let a = post(&app, uri, &webhook(&[annotated.to_string()]), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("longer than 16384 bytes"), "{}", a.json);

    // The tenant label confirms the request's tenant; it cannot choose another.
    let tenant = |t: &str| vec![("tenant".to_string(), t.to_string())];
    let hook = webhook(&[alert("Ok", &[]), alert("Elsewhere", &tenant("bravo"))]);
    let a = post(&app, uri, &hook, Some("acme")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("alert 1"), "{}", a.json);
    assert!(a.error().contains("Elsewhere"), "{}", a.json);
    assert!(a.error().contains("\"bravo\""), "{}", a.json);
    // Without a header the request's tenant is the default one.
    let a = post(&app, uri, &webhook(&[alert("X", &tenant("acme"))]), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = post(
        &app,
        uri,
        &webhook(&[alert("X", &tenant("bad tenant"))]),
        Some("acme"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("invalid tenant"), "{}", a.json);
    // Nothing of the refused webhooks was published.
    let a = post(
        &app,
        uri,
        &webhook(&[alert("Same", &tenant("acme"))]),
        Some("acme"),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(batch.len(), 1);
    let al: seismo_schemas::Alert = serde_json::from_slice(&batch[0].payload).unwrap();
    assert_eq!(
        (al.tenant.as_str(), al.labels["alertname"].as_str()),
        ("acme", "Same")
    );
}

#[tokio::test]
async fn a_webhook_of_the_most_alerts_is_admitted_whole_by_the_disk_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bus = DiskBus::open(DiskBusConfig {
        dir: dir.path().to_path_buf(),
        partitions: 4,
        topic_partitions: Default::default(),
        segment_bytes: 1 << 20,
        // Far less than the webhook: it is still admitted whole while the backlog is
        // under the limit, so a large webhook is never refused forever.
        max_backlog_bytes: 64 << 10,
    })
    .unwrap();
    let mut consumer = bus.subscribe(&[topics::ALERTS], "correlate").unwrap();
    let producer = bus.producer(&[topics::METRICS, topics::ALERTS]).unwrap();
    bus.seal();
    let app = app_with(Arc::new(producer), 8 << 20, IngestConfig::default());
    let n = IngestConfig::default().max_alerts_per_request;
    let alerts: Vec<String> = (0..n)
        .map(|i| alert("Big", &[("i".to_string(), i.to_string())]))
        .collect();
    let hook = webhook(&alerts);
    let a = post(&app, "/api/v1/ingest/alertmanager", &hook, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["accepted"].as_u64(), Some(n as u64));
    // The backlog is now over its limit: the next webhook waits for the consumer.
    let a = post(&app, "/api/v1/ingest/alertmanager", &hook, None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let mut got = 0;
    while got < n {
        let batch = consumer.next_batch(4096).await.unwrap().unwrap();
        got += batch.len();
        consumer.commit(&batch).await.unwrap();
    }
    assert_eq!(got, n);
    let a = post(&app, "/api/v1/ingest/alertmanager", &hook, None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
}

/// A quota that records what it was asked for and refuses beyond `allow` points.
struct TestQuota {
    allow: u64,
    taken: AtomicU64,
    asked: Mutex<Vec<u64>>,
}

impl Quota for TestQuota {
    fn take(&self, points: u64) -> Result<(), Duration> {
        self.asked.lock().unwrap().push(points);
        if self.taken.load(Ordering::SeqCst) + points > self.allow {
            return Err(Duration::from_millis(1200));
        }
        self.taken.fetch_add(points, Ordering::SeqCst);
        Ok(())
    }
}

fn caller(tenant: &str, role: Role, quota: Option<Arc<TestQuota>>) -> Caller {
    Caller {
        tenant: tenant.into(),
        actor: "token:t1".into(),
        role,
        quota: quota.map(|q| q as Arc<dyn Quota>),
    }
}

#[tokio::test]
async fn the_callers_tenant_and_quota_apply() {
    let bus = InProcBus::new(1, 16);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let quota = Arc::new(TestQuota {
        allow: 3,
        taken: AtomicU64::new(0),
        asked: Mutex::default(),
    });
    let base = app(&bus, 1 << 20);
    bus.seal();
    let as_caller = |c: Caller| base.clone().layer(axum::Extension(c));
    let acme = as_caller(caller("acme", Role::Ingest, Some(quota.clone())));
    let uri = "/api/v1/ingest/points";

    // The caller's tenant fills in lines that name none, and refuses lines naming another.
    let other = r#"{"tenant":"bravo","name":"cpu","ts":0,"value":1}"#;
    let a = post(&acme, uri, &[line(1), other.into()].join("\n"), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.reason(0).contains("does not match"), "{}", a.json);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(
        batch[0].header("tenant").map(|t| &t[..]),
        Some(&b"acme"[..])
    );
    let points = points_of(&batch);
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].tenant, "acme");
    assert_eq!(*quota.asked.lock().unwrap(), [1]);

    // Naming another tenant needs an admin token.
    let a = post(&acme, uri, &line(1), Some("bravo")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.error().contains("admin"), "{}", a.json);
    let a = post(&acme, uri, &line(1), Some("acme")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    consumer.next_batch(10).await.unwrap().unwrap();
    let admin = as_caller(caller("acme", Role::Admin, None));
    let a = post(&admin, uri, &line(1), Some("bravo")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(
        batch[0].header("tenant").map(|t| &t[..]),
        Some(&b"bravo"[..])
    );
    assert_eq!(points_of(&batch)[0].tenant, "bravo");

    // Beyond the quota: 429 with Retry-After rounded up, and nothing published.
    let a = post(&acme, uri, &[line(1), line(2)].join("\n"), None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "2");
    assert!(a.error().contains("nothing was accepted"), "{}", a.json);
    assert_eq!(*quota.asked.lock().unwrap(), [1, 1, 2]);
    let a = post(&acme, uri, &line(1), None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(
        batch.len(),
        1,
        "the refused request left nothing on the bus"
    );

    // remote_write and Alertmanager take the caller's tenant too.
    let req = WriteRequest {
        timeseries: vec![series("up", 1, &[recent()])],
    };
    let a = send(&admin, remote_write_request(encode(&req))).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let batch = consumer.next_batch(10).await.unwrap().unwrap();
    assert_eq!(points_of(&batch)[0].tenant, "acme");
    let hook = webhook(&[alert("X", &[("tenant".into(), "bravo".into())])]);
    let a = post(&acme, "/api/v1/ingest/alertmanager", &hook, None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = post(&acme, "/api/v1/ingest/alertmanager", &hook, Some("bravo")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn prometheus_remote_write_is_accepted_as_points() {
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
            timestamp: recent(),
        }],
    };
    let send = |body: Vec<u8>| {
        let app = app.clone();
        async move {
            let mut req = remote_write_request(body);
            req.headers_mut()
                .insert("x-seismo-tenant", "acme".parse().unwrap());
            let a = send(&app, req).await;
            (a.status, String::from_utf8_lossy(&a.body).to_string())
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

#[tokio::test]
async fn a_series_is_always_forwarded_under_one_key() {
    // Spread over partitions, a later minute of a series could overtake an earlier one on
    // the way to detect; one key per series keeps them on one partition, in order.
    let bus = InProcBus::new(4, 1024);
    let mut consumer = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let app = app(&bus, 1 << 20);
    bus.seal();
    let mut key_of: std::collections::HashMap<String, bytes::Bytes> = Default::default();
    let mut records = 0;
    for minute in 0..3 {
        let body = (0..40)
            .map(|h| line_at(h, recent() - 180_000 + minute * 60_000))
            .collect::<Vec<_>>()
            .join("\n");
        let a = post(&app, "/api/v1/ingest/points", &body, None).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        let batch = consumer.next_batch(1024).await.unwrap().unwrap();
        records = records.max(batch.len());
        for m in &batch {
            for p in parse_lines(&m.payload, None).points {
                let host = p.labels["host"].clone();
                let k = key_of.entry(host.clone()).or_insert_with(|| m.key.clone());
                assert_eq!(*k, m.key, "host {host} forwarded under two keys");
            }
        }
    }
    assert_eq!(key_of.len(), 40);
    assert!(records > 1 && records <= 40, "{records} records");
}
