//! The ingest stage under the same limits as HTTP ingest: what the limits refuse in bus
//! records goes to the DLQ with the reason, and the series limiter is one per process.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use seismo_ingest::http::{IngestHttp, router};
use seismo_ingest::{IngestConfig, Limits, now_ms, run};
use seismo_runtime::{Health, RetryPolicy};
use seismo_schemas::topics;
use seismo_store::{SqliteStore, Store};
use seismo_transport::{Consumer, InProcBus, Message, OutRecord, Producer};
use tower::ServiceExt;

fn line(tenant: &str, host: usize, ts: i64) -> String {
    format!(
        r#"{{"tenant":"{tenant}","name":"cpu","labels":{{"host":"h{host}"}},"ts":{ts},"value":1}}"#
    )
}

fn header<'a>(m: &'a Message, name: &str) -> &'a str {
    std::str::from_utf8(m.header(name).unwrap()).unwrap()
}

#[tokio::test]
async fn refusals_of_bus_records_go_to_the_dlq_and_the_series_limiter_is_shared() {
    let bus = InProcBus::new(1, 64);
    let input = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
    let mut points = bus.subscribe(topics::POINTS, "detect", 1).remove(0);
    let mut dlq = bus.subscribe(topics::DLQ, "ops", 1).remove(0);
    let output: Arc<dyn Producer> = Arc::new(bus.producer(&[topics::POINTS, topics::DLQ]));
    let source = bus.producer(&[topics::METRICS]);
    let limits = Limits::new(IngestConfig {
        max_series_per_tenant: 2,
        max_rejections_listed: 5,
        max_decompressed_bytes: 1 << 20,
        ..IngestConfig::default()
    });
    let app = router(IngestHttp {
        producer: Arc::new(bus.producer(&[topics::METRICS])),
        publish_timeout: Duration::from_millis(50),
        max_body_bytes: 1 << 20,
        scope_label: None,
        limits: limits.clone(),
    });
    bus.seal();
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let stage = tokio::spawn(run(
        Box::new(input),
        output,
        store.clone(),
        16,
        Health::default().stage("ingest"),
        RetryPolicy::default(),
        limits.clone(),
    ));

    // HTTP ingest makes two series of acme active...
    let now = now_ms();
    let body = [line("acme", 1, now), line("acme", 2, now)].join("\n");
    let req = Request::post("/api/v1/ingest/points")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(
        app.oneshot(req).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(limits.active_series("acme"), 2);
    // ...so a record written straight to the bus may go on with them but not add a third.
    let record = [
        line("acme", 1, now + 1000),
        line("acme", 3, now),
        line("acme", 2, now - 30 * 86_400_000),
    ]
    .join("\n");
    // 200 junk lines (more than the 5 listed one by one), and a snappy bomb.
    let junk = vec!["junk"; 200].join("\n");
    let bomb = vec![0x80, 0x80, 0x80, 0x80, 0x04, 0x00, 0x41, 0x41];
    source
        .send(
            topics::METRICS,
            vec![
                OutRecord::new(Bytes::new(), Bytes::from(record)),
                OutRecord::new(Bytes::new(), Bytes::from(junk.clone())),
                OutRecord::new(Bytes::new(), Bytes::from(bomb))
                    .header("content-encoding", "snappy"),
            ],
        )
        .await
        .unwrap();
    drop(source);
    let stats = stage.await.unwrap().unwrap();
    assert_eq!(stats.points, 3, "two from HTTP, one from the record");
    assert_eq!(stats.rejected, 2 + 200 + 1);
    assert_eq!(store.counts().await.unwrap().metric_points, 3);
    let batch = points.next_batch(100).await.unwrap().unwrap();
    let hosts: usize = batch
        .iter()
        .map(|m| seismo_schemas::points_of_record(&m.payload).count())
        .sum();
    assert_eq!(hosts, 3);

    let dead = dlq.next_batch(100).await.unwrap().unwrap();
    let reasons: Vec<(Option<&str>, &str)> = dead
        .iter()
        .map(|m| {
            (
                m.header("line").map(|l| std::str::from_utf8(l).unwrap()),
                header(m, "reason"),
            )
        })
        .collect();
    assert_eq!(dead.len(), 2 + 5 + 1 + 1, "{reasons:#?}");
    assert_eq!(reasons[0].0, Some("2"));
    assert!(reasons[0].1.contains("ingest.max_series_per_tenant"));
    assert_eq!(&dead[0].payload[..], line("acme", 3, now).as_bytes());
    assert_eq!(reasons[1].0, Some("3"));
    assert!(reasons[1].1.contains("ingest.max_past_secs"));
    // Junk: five lines one by one, then the whole record once.
    for (i, r) in reasons[2..7].iter().enumerate() {
        assert_eq!(r.0, Some((i + 1).to_string().as_str()));
        assert_eq!(&dead[2 + i].payload[..], b"junk");
    }
    assert_eq!(reasons[7].0, None);
    assert!(reasons[7].1.contains("195 more"), "{}", reasons[7].1);
    assert!(reasons[7].1.contains("ingest.max_rejections_listed"));
    assert_eq!(dead[7].payload, junk.as_bytes());
    assert!(
        reasons[8].1.contains("ingest.max_decompressed_bytes"),
        "{}",
        reasons[8].1
    );
}
