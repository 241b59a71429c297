//! The distributed mode on a real broker and a real PostgreSQL: stage processes in consumer
//! groups, the DLQ, and a detect process killed with SIGKILL mid-stream.
//!
//! Needs `SEISMO_TEST_KAFKA` and `SEISMO_TEST_PG_URL` (scripts/test.sh starts both with
//! scripts/services.sh); without them the test fails with instructions, never skips.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo_detect::{DetectConfig, Detector};
use seismo_ingest::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use seismo_kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use seismo_schemas::{Labels, MetricPoint, topics};
use seismo_transport::{Consumer, OutRecord, Producer};
use sqlx::PgPool;

const SERIES: usize = 100;
const STEPS: i64 = 1000;
/// Series sent as Prometheus remote_write instead of JSON lines.
const REMOTE_WRITE_SERIES: usize = 10;
const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const STEP_MS: i64 = 60_000;

fn kafka_brokers() -> String {
    std::env::var("SEISMO_TEST_KAFKA").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        panic!(
            "SEISMO_TEST_KAFKA is not set: this test needs a Kafka-protocol broker. Run the test \
             suite with scripts/test.sh (it starts one), or `scripts/services.sh start` and export what it prints"
        )
    })
}

/// The simulated fleet: seeded noise around per-series levels, a daily wave, and spikes,
/// some shortly after the detect process is killed (a detector that lost its baselines
/// would still be warming up and miss them).
fn series_points() -> Vec<Vec<MetricPoint>> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..SERIES)
        .map(|s| {
            let labels: Labels = [
                ("service".to_string(), format!("svc{}", s % 10)),
                ("host".to_string(), format!("h{s}")),
            ]
            .into();
            let level = 10.0 + s as f64;
            (0..STEPS)
                .map(|i| {
                    let mut v = level
                        + (i as f64 * std::f64::consts::TAU / 1440.0).sin()
                        + rng.random_range(-0.2..0.2);
                    if s % 7 == 0 && (i == 350 || i == 720 || i == 900) {
                        v += 40.0;
                    }
                    MetricPoint {
                        tenant: "default".into(),
                        name: "latency".into(),
                        labels: labels.clone(),
                        ts: T0 + i * STEP_MS,
                        value: v,
                    }
                })
                .collect()
        })
        .collect()
}

/// What detect must produce: the pure core run over each series in order, once.
fn reference_anomalies(all: &[Vec<MetricPoint>]) -> BTreeSet<String> {
    let mut det = Detector::new(DetectConfig::default());
    let mut ids = BTreeSet::new();
    for series in all {
        for p in series {
            ids.extend(det.process(0, p).into_iter().map(|a| a.id));
        }
    }
    ids
}

/// Records for time steps `[from, to)`: per series, 50 steps per record, keyed by series
/// so each series stays in order on one partition, as a real producer must do.
fn records(all: &[Vec<MetricPoint>], from: i64, to: i64) -> Vec<OutRecord> {
    let mut out = Vec::new();
    for (s, series) in all.iter().enumerate() {
        let key = Bytes::from(format!("series-{s}"));
        for chunk in series[from as usize..to as usize].chunks(50) {
            let payload = if s < REMOTE_WRITE_SERIES {
                let mut labels: Vec<Label> = chunk[0]
                    .labels
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect();
                labels.push(Label {
                    name: "__name__".into(),
                    value: chunk[0].name.clone(),
                });
                remote_write::encode(&WriteRequest {
                    timeseries: vec![TimeSeries {
                        labels,
                        samples: chunk
                            .iter()
                            .map(|p| Sample {
                                value: p.value,
                                timestamp: p.ts,
                            })
                            .collect(),
                    }],
                })
            } else {
                let mut body = Vec::new();
                for p in chunk {
                    body.extend(serde_json::to_vec(p).unwrap());
                    body.push(b'\n');
                }
                body
            };
            out.push(OutRecord::new(key.clone(), payload));
        }
    }
    out
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    vars: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Env {
    fn seismo(&self, args: &[&str], log_name: &str) -> Proc {
        let log = self.dir.path().join(format!("{log_name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SEISMO_HTTP__LISTEN", "127.0.0.1:0")
            .env("SEISMO_LOG", "warn,seismo=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc {
            name: log_name.to_string(),
            child,
            log,
        }
    }

    fn seismo_ok(&self, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seismo {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn wait_for(
    what: &str,
    procs: &[&Proc],
    timeout: Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let start = Instant::now();
    while !done().await {
        if start.elapsed() > timeout {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| {
                    let t = p.log_text();
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    format!(
                        "--- {} ---\n{}",
                        p.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

fn kill9(p: &mut Proc) {
    // SIGKILL: no shutdown path runs, exactly like a crashed or OOM-killed pod.
    let status = Command::new("kill")
        .args(["-KILL", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    p.child.wait().unwrap();
}

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} did not stop on SIGTERM:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restores(p: &Proc) -> usize {
    p.log_text().matches("restored stage state").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_detect_processes_survive_a_sigkill_without_loss_or_duplicates() {
    let brokers = kafka_brokers();
    let db_url = seismo_store::testing::fresh_database().await;
    let pool = PgPool::connect(&db_url).await.unwrap();
    let tag = format!(
        "t{}x{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis() % 100_000_000
    );
    let env = Env {
        vars: vec![
            ("SEISMO_KAFKA__BROKERS".into(), brokers.clone()),
            ("SEISMO_KAFKA__TOPIC_PREFIX".into(), format!("{tag}.")),
            ("SEISMO_KAFKA__GROUP_PREFIX".into(), tag.clone()),
            ("SEISMO_KAFKA__PARTITIONS".into(), "4".into()),
            ("SEISMO_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("SEISMO_STORAGE__URL".into(), db_url.clone()),
            ("SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".into(), "300".into()),
            // The points are dated January 2026: history, as far as ingest knows.
            ("SEISMO_INGEST__BACKFILL".into(), "true".into()),
        ],
        dir: tempfile::tempdir().unwrap(),
    };
    env.seismo_ok(&["topics", "create"]);
    env.seismo_ok(&["migrate"]);
    let kcfg = KafkaConfig {
        brokers,
        topic_prefix: format!("{tag}."),
        ..KafkaConfig::default()
    };
    let producer = KafkaProducer::new(&kcfg).unwrap();

    let all = series_points();
    let expected = reference_anomalies(&all);
    assert!(
        expected.len() >= 30,
        "the fleet should have anomalies to find"
    );
    let total = SERIES as i64 * STEPS;

    let ingest = env.seismo(&["run", "--stage", "ingest"], "ingest");
    let mut detect_a = env.seismo(&["run", "--stage", "detect"], "detect-a");
    let mut detect_b = env.seismo(&["run", "--stage", "detect"], "detect-b");

    // Both processes share the work: wait until the group has given each of them some of
    // the partitions before any input arrives.
    let owns_partitions = |p: &Proc| {
        p.log_text().lines().any(|l| {
            l.contains("partitions assigned") && l.contains("parts=[") && !l.contains("parts=[]")
        })
    };
    wait_for(
        "both detect processes to own partitions",
        &[&detect_a, &detect_b],
        Duration::from_secs(60),
        async || owns_partitions(&detect_a) && owns_partitions(&detect_b),
    )
    .await;

    // Malformed input, interleaved with the good: two bad JSON lines and one record that
    // is neither JSON nor remote_write.
    producer
        .send(
            topics::METRICS,
            vec![
                OutRecord::new(
                    Bytes::from("bad"),
                    Bytes::from("not json\n{\"name\":\"x\",\"ts\":1}\n"),
                ),
                OutRecord::new(
                    Bytes::from("bad"),
                    Bytes::from_static(b"\xff\xfe\x00garbage"),
                ),
            ],
        )
        .await
        .unwrap();
    // Phase 1: the first 400 steps, fully checkpointed before anything else happens.
    producer
        .send(topics::METRICS, records(&all, 0, 400))
        .await
        .unwrap();
    let phase1 = SERIES as i64 * 400;
    wait_for(
        "detect to checkpoint phase 1",
        &[&ingest, &detect_a, &detect_b],
        Duration::from_secs(120),
        async || {
            scalar(&pool, "SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%detect'").await >= phase1
        },
    )
    .await;
    // Phase 2 while detect A is killed mid-stream.
    producer
        .send(topics::METRICS, records(&all, 400, 700))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut detect_a);
    producer
        .send(topics::METRICS, records(&all, 700, STEPS))
        .await
        .unwrap();
    // Restart after the group has noticed the death (session timeout 6 s): the survivor
    // takes the dead member's partitions over from their checkpoints first, and hands
    // some back when the restarted process joins.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut detect_a2 = env.seismo(&["run", "--stage", "detect"], "detect-a2");

    wait_for(
        "every point stored and folded into a checkpoint",
        &[&ingest, &detect_a2, &detect_b],
        Duration::from_secs(180),
        async || {
            scalar(&pool, "SELECT count(*) FROM metric_points").await == total
                && scalar(&pool, "SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%detect'").await
                    >= total
        },
    )
    .await;

    // No point lost and none learned twice: the checkpoints count each input record once.
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM metric_points").await,
        total
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%detect'"
        )
        .await,
        total
    );
    // Exactly the anomalies of one uninterrupted run: none missing, none duplicated, and
    // no warm-up burst after the restart (a process that lost its baselines would miss
    // the spikes after the kill and raise others).
    let got: Vec<String> = sqlx::query_scalar("SELECT id FROM anomalies ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "duplicate anomaly rows");
    let missing: Vec<_> = expected.difference(&got_set).collect();
    let extra: Vec<_> = got_set.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "anomalies differ from the uninterrupted reference: {} missing {:?}, {} extra {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
    // The killed process's partitions were taken over from their checkpoints.
    assert!(
        restores(&detect_a2) + restores(&detect_b) >= 1,
        "no partition was restored from a checkpoint after the kill"
    );

    // The DLQ holds the malformed records, raw, with their reasons and origin.
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut dlq =
        KafkaConsumer::new(&kcfg, &format!("{tag}-dlq-check"), &[topics::DLQ], stop).unwrap();
    let mut dead = Vec::new();
    let start = Instant::now();
    while dead.len() < 3 && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(batch)) = dlq.next_batch(100).await {
            dead.extend(batch);
        }
    }
    assert_eq!(dead.len(), 3, "DLQ records: {dead:?}");
    let reason = |m: &seismo_transport::Message| {
        String::from_utf8_lossy(m.header("reason").unwrap()).to_string()
    };
    let mut reasons: Vec<String> = dead.iter().map(reason).collect();
    reasons.sort();
    assert!(
        reasons.iter().any(|r| r.starts_with("malformed JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing field `value`")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("snappy")), "{reasons:?}");
    for m in &dead {
        assert_eq!(
            m.header("source_topic").map(|v| &v[..]),
            Some(&b"seismo.metrics"[..])
        );
        assert!(m.header("source_offset").is_some());
    }
    assert!(dead.iter().any(|m| &m.payload[..] == b"not json"));

    // HTTP ingest of the distributed mode answers 202 once the broker has the records,
    // and they flow on into the table.
    let log = ingest.log_text();
    let addr = log
        .split("http=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the ingest stage logs its HTTP address")
        .to_string();
    let body: String = (0..5)
        .map(|i| {
            format!(
                "{{\"name\":\"http_probe\",\"ts\":{},\"value\":{i}}}\n",
                T0 + i * STEP_MS
            )
        })
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/ingest/points"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    wait_for(
        "points sent over HTTP to be stored",
        &[&ingest],
        Duration::from_secs(60),
        async || scalar(&pool, "SELECT count(*) FROM metric_points").await == total + 5,
    )
    .await;

    // A graceful stop drains and exits cleanly.
    assert!(sigterm(&mut detect_b).success(), "{}", detect_b.log_text());
    assert!(
        sigterm(&mut detect_a2).success(),
        "{}",
        detect_a2.log_text()
    );
    drop(ingest);
}
