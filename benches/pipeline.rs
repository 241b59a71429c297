//! Throughput of the embedded ingest→detect path, on seeded data of a written-down size.
//!
//! - `cores`: the pure cores only: parse JSON lines, validate, bucket and score.
//! - `embedded_durable`: the real path: the durable on-disk bus (every append fsync'd),
//!   ingest storing points in SQLite and re-keying them onto `seismo.points`, detect
//!   scoring them, storing anomalies and checkpointing its state, both started from the
//!   stage table as `seismo run` starts them.
//! - `embedded_memory`: the same stages over the in-process bus (what embedded mode used
//!   before its bus became durable), to state the cost of durability as a ratio.
//!
//! Size: 200 series (40 hosts of 5 metrics, so the per-host forests run too) × 1,000
//! one-minute points = 200,000 points per iteration, sent as records of 200 JSON lines
//! (one per minute), as a producer would.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo::cli::Stage;
use seismo::stages::{self, StageContext};
use seismo_detect::{DetectConfig, Detector};
use seismo_schemas::{MetricPoint, topics};
use seismo_store::{SqliteStore, Store};
use seismo_transport::{Consumer, DiskBus, InProcBus, OutRecord, Producer};

const SERIES: usize = 200;
const MINUTES: usize = 1000;
const METRICS: [&str; 5] = [
    "http_request_duration_p99_seconds",
    "http_requests_per_second",
    "http_errors_ratio",
    "cpu_utilization",
    "memory_used_bytes",
];

fn records() -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(1);
    (0..MINUTES)
        .map(|m| {
            let mut out = Vec::new();
            for s in 0..SERIES {
                let p = MetricPoint {
                    tenant: "default".into(),
                    name: METRICS[s % METRICS.len()].into(),
                    labels: [
                        ("service".to_string(), format!("svc{}", s / 20)),
                        ("host".to_string(), format!("h{}", s / METRICS.len())),
                    ]
                    .into(),
                    ts: 1_767_571_200_000 + m as i64 * 60_000,
                    value: 0.05 + 0.005 * rng.random::<f64>(),
                };
                serde_json::to_writer(&mut out, &p).unwrap();
                out.push(b'\n');
            }
            out
        })
        .collect()
}

fn cores(c: &mut Criterion, data: &[Vec<u8>]) {
    let mut g = c.benchmark_group("ingest_detect");
    g.throughput(Throughput::Elements((SERIES * MINUTES) as u64));
    g.sample_size(10);
    g.bench_function("cores", |b| {
        b.iter(|| {
            let mut det = Detector::new(DetectConfig::default());
            let mut anomalies = 0;
            for r in data {
                for p in seismo_ingest::parse_lines(r, None).points {
                    let rec = seismo_ingest::point_record(&p);
                    let p: MetricPoint = serde_json::from_slice(&rec.payload).unwrap();
                    anomalies += det.process(0, &p).len();
                }
            }
            anomalies
        })
    });
    g.finish();
}

/// Inputs of ingest and detect, the source, their outputs, and a sink for anomalies.
type Wiring = (
    Box<dyn Consumer>,
    Box<dyn Consumer>,
    Arc<dyn Producer>,
    Arc<dyn Producer>,
    Arc<dyn Producer>,
    Option<Box<dyn Consumer>>,
);

/// Runs ingest and detect over one bus: `durable` picks the on-disk bus.
async fn embedded_run(data: &[Vec<u8>], durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = seismo::Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("b.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    // The seeded points are dated 2026-01-05 onwards: history, as far as ingest knows.
    cfg.ingest.backfill = true;
    let store = SqliteStore::connect(&cfg.storage.url).await.unwrap();
    store.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let ctx = StageContext {
        cfg: cfg.clone(),
        store: store.clone(),
        health: Default::default(),
        points_partitions: 8,
        anomaly_partitions: 8,
        group: Arc::new(|s: Stage| s.name().to_string()),
        ingest_limits: seismo_ingest::Limits::new(cfg.ingest.clone()),
    };
    let (ingest_in, detect_in, source, ingest_out, detect_out, _sink): Wiring = if durable {
        let bus = DiskBus::open(seismo::pipeline::bus_config(&cfg)).unwrap();
        let ingest_in = bus.subscribe(&[topics::METRICS], "ingest").unwrap();
        let detect_in = bus.subscribe(&[topics::POINTS], "detect").unwrap();
        let source = bus.producer(&[topics::METRICS]).unwrap();
        let ingest_out = bus.producer(&[topics::POINTS, topics::DLQ]).unwrap();
        let detect_out = bus.producer(&[topics::ANOMALIES]).unwrap();
        bus.seal();
        (
            Box::new(ingest_in),
            Box::new(detect_in),
            Arc::new(source),
            Arc::new(ingest_out),
            Arc::new(detect_out),
            None,
        )
    } else {
        let bus = InProcBus::new(8, 4096);
        let ingest_in = bus.subscribe(topics::METRICS, "ingest", 1).remove(0);
        let detect_in = bus.subscribe(topics::POINTS, "detect", 1).remove(0);
        let sink = bus.subscribe(topics::ANOMALIES, "sink", 1).remove(0);
        let source = bus.producer(&[topics::METRICS]);
        let ingest_out = bus.producer(&[topics::POINTS, topics::DLQ]);
        let detect_out = bus.producer(&[topics::ANOMALIES]);
        bus.seal();
        (
            Box::new(ingest_in),
            Box::new(detect_in),
            Arc::new(source),
            Arc::new(ingest_out),
            Arc::new(detect_out),
            Some(Box::new(sink)),
        )
    };
    let ingest = stages::spawn(Stage::Ingest, &ctx, ingest_in, ingest_out);
    let detect = stages::spawn(Stage::Detect, &ctx, detect_in, detect_out);
    for r in data {
        source
            .send(topics::METRICS, vec![OutRecord::new(Vec::new(), r.clone())])
            .await
            .unwrap();
    }
    drop(source);
    ingest.await.unwrap().unwrap();
    let stats = detect.await.unwrap().unwrap();
    assert_eq!(stats.detect.points as usize, SERIES * MINUTES);
}

fn embedded(c: &mut Criterion, data: &[Vec<u8>]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("ingest_detect");
    g.throughput(Throughput::Elements((SERIES * MINUTES) as u64));
    g.sample_size(10);
    for (name, durable) in [("embedded_durable", true), ("embedded_memory", false)] {
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(embedded_run(data, durable)))
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let data = records();
    cores(c, &data);
    embedded(c, &data);
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
