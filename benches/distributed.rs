//! Distributed-mode benchmark on a real broker and PostgreSQL: ingest throughput from Kafka
//! into PostgreSQL, and end-to-end latency from produce to anomaly row.
//!
//! Run with `scripts/bench-distributed.sh` (starts the services, builds in release mode).
//! Throughput: POINTS points are produced to seismo.metrics first, then one
//! `seismo run --stage ingest` process is started and timed until every point is in
//! metric_points (and re-keyed onto seismo.points). Latency: with ingest and detect
//! running and warmed up, a spike is produced and the time until its anomaly row exists is
//! measured, repeatedly.
#![expect(clippy::disallowed_methods, reason = "benchmarks time wall-clock runs")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use seismo_kafka::{KafkaConfig, KafkaProducer};
use seismo_schemas::{Labels, MetricPoint, topics};
use seismo_transport::{OutRecord, Producer};
use sqlx::PgPool;

const SERIES: usize = 1000;
const POINTS_PER_RECORD: usize = 500;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench-distributed.sh"))
}

fn point(s: usize, i: i64, value: f64) -> MetricPoint {
    let labels: Labels = [
        ("service".to_string(), format!("svc{}", s % 20)),
        ("host".to_string(), format!("h{s}")),
    ]
    .into();
    MetricPoint {
        tenant: "default".into(),
        name: "latency".into(),
        labels,
        ts: 1_767_225_600_000 + i * 60_000,
        value,
    }
}

/// Records of `steps` time steps for every series, `POINTS_PER_RECORD` points per record,
/// keyed by series so each series stays in order.
fn records(from: i64, steps: i64) -> Vec<OutRecord> {
    let per_series = (POINTS_PER_RECORD as i64).min(steps);
    let mut out = Vec::new();
    for s in 0..SERIES {
        let mut i = from;
        while i < from + steps {
            let mut body = Vec::with_capacity(per_series as usize * 120);
            for j in i..(i + per_series).min(from + steps) {
                let v = 10.0 + (j as f64 / 30.0).sin() + ((j * 7919 + s as i64) % 13) as f64 * 0.01;
                body.extend(serde_json::to_vec(&point(s, j, v)).unwrap());
                body.push(b'\n');
            }
            out.push(OutRecord::new(Bytes::from(format!("s{s}")), body));
            i += per_series;
        }
    }
    out
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stage(vars: &[(String, String)], stage: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(["run", "--stage", stage])
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SEISMO_HTTP__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("BENCH_STAGE_LOG") {
                Some(p) => Stdio::from(
                    std::fs::File::create(format!("{}.{stage}", p.to_string_lossy())).unwrap(),
                ),
                None => Stdio::null(),
            })
            .spawn()
            .unwrap(),
    )
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let steps: i64 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let brokers = env("SEISMO_TEST_KAFKA");
    let db = seismo_store::testing::fresh_database().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let tag = format!("bench{}", std::process::id());
    let vars: Vec<(String, String)> = vec![
        ("SEISMO_KAFKA__BROKERS".into(), brokers.clone()),
        ("SEISMO_KAFKA__TOPIC_PREFIX".into(), format!("{tag}.")),
        ("SEISMO_KAFKA__GROUP_PREFIX".into(), tag.clone()),
        ("SEISMO_KAFKA__PARTITIONS".into(), "4".into()),
        ("SEISMO_STORAGE__URL".into(), db.clone()),
        (
            "SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".into(),
            "1000".into(),
        ),
    ];
    for args in [&["topics", "create"][..], &["migrate"][..]] {
        let ok = Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(args)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "seismo {args:?} failed");
    }
    let kcfg = KafkaConfig {
        brokers,
        topic_prefix: format!("{tag}."),
        linger_ms: 20,
        ..KafkaConfig::default()
    };
    let producer = KafkaProducer::new(&kcfg).unwrap();

    // Throughput: the input is on the broker before ingest starts.
    let total = SERIES as i64 * steps;
    let recs = records(0, steps);
    let t = Instant::now();
    for chunk in recs.chunks(200) {
        producer
            .send(topics::METRICS, chunk.to_vec())
            .await
            .unwrap();
    }
    println!(
        "produced {total} points in {} records to seismo.metrics in {:.2} s",
        recs.len(),
        t.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let ingest = stage(&vars, "ingest");
    // Polling count(*) over a growing table would compete with ingest for the CPU, so the
    // poll asks for the last time step only (one partition, BRIN-pruned). Each series is
    // ordered within its partition and ingest stores batches in order, so once every
    // series' last point is stored, all points are; the full count is checked after.
    let last_ts = point(0, steps - 1, 0.0).ts;
    let at = |ts: i64| {
        format!(
            "SELECT count(*) FROM metric_points WHERE time = timestamptz 'epoch' + {ts} * INTERVAL '1 millisecond'"
        )
    };
    let (first_poll, last_poll) = (at(point(0, 0, 0.0).ts), at(last_ts));
    let mut first_stored = None;
    loop {
        if first_stored.is_none() && count(&pool, &first_poll).await > 0 {
            first_stored = Some(Instant::now());
        }
        if count(&pool, &last_poll).await >= SERIES as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "ingest stalled"
        );
        // Each poll scans the newest partition's unsummarised pages: poll gently, so the
        // measurement does not take CPU from what it measures.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = started.elapsed().as_secs_f64();
    let steady = first_stored
        .expect("seen before the end")
        .elapsed()
        .as_secs_f64();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM metric_points").await,
        total
    );
    println!(
        "ingest: {total} points Kafka -> PostgreSQL (+ re-keyed to seismo.points): {all:.2} s from \
         process start = {:.0} points/s; {steady:.2} s from the first stored batch = {:.0} points/s",
        total as f64 / all,
        total as f64 / steady
    );

    // Latency: detect joins, learns the history above, then spikes are produced one at a
    // time; each is followed by the next minute's point, which closes its bucket.
    let detect = stage(&vars, "detect");
    let warm_until = Instant::now() + Duration::from_secs(300);
    while count(
        &pool,
        "SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%detect'",
    )
    .await
        < total
    {
        assert!(Instant::now() < warm_until, "detect did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lat = Vec::new();
    for k in 0..20 {
        let s = k * 37 % SERIES;
        let i = steps + k as i64 * 2;
        let spike = point(s, i, 500.0);
        let next = point(s, i + 1, 10.0);
        let id = seismo_schemas::Anomaly::make_id(
            spike.series_id(),
            spike.ts,
            seismo_detect::DETECTOR_NAME,
        );
        let mut body = serde_json::to_vec(&spike).unwrap();
        body.push(b'\n');
        body.extend(serde_json::to_vec(&next).unwrap());
        let t = Instant::now();
        producer
            .send(
                topics::METRICS,
                vec![OutRecord::new(Bytes::from(format!("s{s}")), body)],
            )
            .await
            .unwrap();
        loop {
            let found: i64 = sqlx::query_scalar("SELECT count(*) FROM anomalies WHERE id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
            if found > 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "anomaly {id} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "latency produce -> anomaly row (ingest + detect processes, 20 spikes): median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    drop(detect);
    drop(ingest);
}
