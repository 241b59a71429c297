//! Crash tests with real processes: `seismo run` (embedded) and the distributed stages on a
//! real broker and PostgreSQL are killed with SIGKILL at random moments, five times each,
//! while telemetry streams in. Every acknowledged point must be stored, and the anomalies
//! and incidents must be exactly those of an uninterrupted run of the same input.
//!
//! Needs `SEISMO_TEST_KAFKA` and `SEISMO_TEST_PG_URL` (scripts/test.sh starts both); without
//! them the distributed half fails with instructions, never skips.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, spawn};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo_kafka::{KafkaConfig, KafkaProducer};
use seismo_schemas::{Labels, MetricPoint, topics};
use seismo_transport::{OutRecord, Producer};

const HOSTS: usize = 16;
const METRICS: [&str; 3] = ["latency_seconds", "error_ratio", "cpu_utilization"];
const MINUTES: i64 = 600;
const T0: i64 = 1_767_571_200_000; // 2026-01-05T00:00:00Z
const KILLS: usize = 5;

/// The fleet, minute by minute: every host's metrics, with spikes on a few hosts and
/// a shared incident across a service's hosts, all after the detectors' warm-up.
fn minutes() -> Vec<Vec<MetricPoint>> {
    let mut rng = SmallRng::seed_from_u64(11);
    (0..MINUTES)
        .map(|m| {
            let mut out = Vec::new();
            for h in 0..HOSTS {
                let labels: Labels = [
                    ("host".to_string(), format!("h{h}")),
                    ("service".to_string(), format!("svc{}", h % 4)),
                ]
                .into();
                for (i, name) in METRICS.iter().enumerate() {
                    let level = 10.0 * (i + 1) as f64 + h as f64;
                    let mut v = level
                        + (m as f64 * std::f64::consts::TAU / 1440.0).sin()
                        + rng.random_range(-0.3..0.3);
                    if (h % 5 == 0 && (m == 300 || m == 420))
                        || (h % 4 == 1 && (480..486).contains(&m))
                    {
                        v += 25.0 * (i + 1) as f64;
                    }
                    out.push(MetricPoint {
                        tenant: "default".into(),
                        name: (*name).into(),
                        labels: labels.clone(),
                        ts: T0 + m * 60_000,
                        value: v,
                    });
                }
            }
            out
        })
        .collect()
}

fn total_points() -> i64 {
    MINUTES * (HOSTS * METRICS.len()) as i64
}

fn body(points: &[MetricPoint]) -> String {
    points
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect()
}

/// What a run leaves in its store: anomaly ids, and each incident with its anomalies.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    points: i64,
    anomalies: BTreeSet<String>,
    incidents: BTreeSet<(String, Vec<String>)>,
    /// Every forecast row (series, made at, for, value bits): the same after kills only
    /// if the forecast stage's histories survived them. (Embedded only: the distributed
    /// half runs no forecast process.)
    forecasts: BTreeSet<String>,
}

async fn outcome_sqlite(db: &Path) -> Outcome {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_points")
        .fetch_one(&pool)
        .await
        .unwrap();
    let anomalies: Vec<String> = sqlx::query_scalar("SELECT id FROM anomalies")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT i.id, group_concat(a.anomaly_id) FROM incidents i \
         LEFT JOIN incident_anomalies a ON a.incident_id = i.id GROUP BY i.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let forecasts: Vec<(i64, i64, i64, f64)> =
        sqlx::query_as("SELECT series_id, generated_at, time, yhat FROM forecasts")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let mut o = outcome(points, anomalies, rows);
    o.forecasts = forecasts
        .into_iter()
        .map(|(s, g, t, y)| format!("{s:x}/{g}/{t}/{:x}", y.to_bits()))
        .collect();
    o
}

async fn outcome_pg(pool: &sqlx::PgPool) -> Outcome {
    let points: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_points")
        .fetch_one(pool)
        .await
        .unwrap();
    let anomalies: Vec<String> = sqlx::query_scalar("SELECT id FROM anomalies")
        .fetch_all(pool)
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT i.id, string_agg(a.anomaly_id, ',') FROM incidents i \
         LEFT JOIN incident_anomalies a ON a.incident_id = i.id GROUP BY i.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    outcome(points, anomalies, rows)
}

fn outcome(points: i64, anomalies: Vec<String>, rows: Vec<(String, Option<String>)>) -> Outcome {
    Outcome {
        forecasts: BTreeSet::new(),
        points,
        anomalies: anomalies.into_iter().collect(),
        incidents: rows
            .into_iter()
            .map(|(id, members)| {
                let mut m: Vec<String> = members
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                m.sort();
                (id, m)
            })
            .collect(),
    }
}

fn assert_same(what: &str, got: &Outcome, want: &Outcome) {
    let missing: Vec<_> = want.anomalies.difference(&got.anomalies).take(5).collect();
    let extra: Vec<_> = got.anomalies.difference(&want.anomalies).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: anomalies differ from the uninterrupted run: missing {missing:?}, extra {extra:?}"
    );
    let missing: Vec<_> = want.incidents.difference(&got.incidents).take(3).collect();
    let extra: Vec<_> = got.incidents.difference(&want.incidents).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: incidents differ from the uninterrupted run: missing {missing:#?}, extra {extra:#?}"
    );
}

/// Settings both embedded runs share: a short checkpoint interval (so kills land between
/// and during checkpoints), and no idle release (so both runs hold back the same tail).
fn embedded_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "SEISMO_STORAGE__URL".into(),
            format!("sqlite://{}", dir.join("seismo.db").display()),
        ),
        (
            "SEISMO_BUS__DIR".into(),
            dir.join("bus").display().to_string(),
        ),
        ("SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".into(), "150".into()),
        ("SEISMO_STAGES__IDLE_RELEASE_SECS".into(), "3600".into()),
        ("SEISMO_INGEST__BACKFILL".into(), "true".into()),
        // Ten-minute buckets, so the ten hours streamed give forecasts from the fourth
        // hour on; no CPU budget, whose wall clock would make runs differ.
        ("SEISMO_FORECAST__BUCKET_SECS".into(), "600".into()),
        ("SEISMO_FORECAST__BUDGET_MS_PER_SEC".into(), "0".into()),
    ]
}

/// Waits until every stage has taken and committed all its input and `points` are stored.
async fn caught_up(addr: &str, db_points: impl AsyncFn() -> i64, proc_: &Proc) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let lag0 = match client.get(format!("http://{addr}/readyz")).send().await {
            Ok(r) => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                v["stages"].as_object().is_some_and(|s| {
                    !s.is_empty() && s.values().all(|st| st["lag_records"].as_u64() == Some(0))
                })
            }
            Err(_) => false,
        };
        if lag0 && db_points().await == total_points() {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                return;
            }
        } else {
            quiet_since = None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the pipeline did not catch up:\n{}",
            proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sqlite_points(db: &Path) -> i64 {
    let Ok(pool) = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await
    else {
        return -1;
    };
    let n = sqlx::query_scalar("SELECT count(*) FROM metric_points")
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
    pool.close().await;
    n
}

/// One embedded run: posts every minute as a request (retrying until acknowledged), with
/// SIGKILLs at the given request indices, then waits for the pipeline and stops it.
async fn embedded_run(dir: &Path, kills: &[usize], seed: u64) -> Outcome {
    let env = embedded_env(dir);
    let log = dir.join("seismo.log");
    let db = dir.join("seismo.db");
    let mut p = spawn(&["run"], &env, &log);
    let mut addr = p.addr();
    let new_client = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let mut client = new_client();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut acked = 0i64;
    for (i, minute) in minutes().iter().enumerate() {
        let payload = body(minute);
        let mut killer = None;
        if kills.contains(&i) {
            // Kill while this request is in flight: before, during or after its fsync.
            let pid = p.child.id();
            let delay = Duration::from_micros(rng.random_range(0..3000));
            killer = Some(std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }));
        }
        loop {
            let r = client
                .post(format!("http://{addr}/api/v1/ingest/points"))
                .body(payload.clone())
                .send()
                .await;
            if let Some(k) = killer.take() {
                k.join().unwrap();
                let _ = p.child.wait();
                // A restart resumes from the log and the checkpoints.
                p = spawn(&["run"], &env, &log);
                addr = p.addr();
                // A fresh client: the new process may reuse the old port, and a pooled
                // connection to the dead one would fail the next request.
                client = new_client();
                // The request's fate is unknown to the client: send it again. If it was
                // durable before the kill, the replay is absorbed downstream.
                continue;
            }
            match r {
                Ok(resp) if resp.status() == 202 => {
                    acked += minute.len() as i64;
                    break;
                }
                Ok(resp) if resp.status() == 503 => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(resp) => panic!("unexpected {}: {:?}", resp.status(), resp.text().await),
                Err(e) => panic!("request {i} failed without a kill: {e:?}\n{}", p.log_text()),
            }
        }
    }
    assert_eq!(acked, total_points());
    caught_up(&addr, async || sqlite_points(&db).await, &p).await;
    assert!(p.sigterm().success(), "{}", p.log_text());
    outcome_sqlite(&db).await
}

fn kafka_brokers() -> String {
    std::env::var("SEISMO_TEST_KAFKA")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "SEISMO_TEST_KAFKA is not set: this test needs a Kafka-protocol broker. Run the \
                 test suite with scripts/test.sh (it starts one), or `scripts/services.sh start` \
                 and export what it prints"
            )
        })
}

async fn pg_count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// What a stuck run needs to be diagnosed: each checkpointed position next to the group's
/// committed offset and the partition's end, as the broker reports them.
async fn positions_report(pool: &sqlx::PgPool, brokers: &str, tag: &str) -> String {
    let group = format!("{tag}-detect");
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT consumer_group, topic, partition, next_offset, records FROM stage_positions \
         ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .create()
        .expect("a diagnostic consumer");
    let mut out = String::from("checkpointed positions | broker committed, end:\n");
    for (g, topic, part, next, records) in rows {
        let mut broker = String::new();
        if g == group {
            let mut tpl = rdkafka::TopicPartitionList::new();
            let topic = format!("{tag}.{topic}");
            tpl.add_partition(&topic, part as i32);
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(5))
                .ok()
                .and_then(|t| t.elements().first().map(|e| format!("{:?}", e.offset())));
            let end = consumer
                .fetch_watermarks(&topic, part as i32, Duration::from_secs(5))
                .ok()
                .map(|w| w.1);
            broker = format!(" | committed {committed:?}, end {end:?}");
        }
        out += &format!("  {g} {topic}[{part}] next {next} records {records}{broker}\n");
    }
    out
}

/// How many records of `seismo.anomalies` correlate has not checkpointed past, over all
/// partitions, as the broker's partition ends and the stored positions say.
async fn correlate_behind(pool: &sqlx::PgPool, brokers: &str, tag: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let done: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM stage_positions WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(format!("{tag}-correlate"))
    .bind(topics::ANOMALIES)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a diagnostic consumer");
    let topic = format!("{tag}.{}", topics::ANOMALIES);
    let mut behind = 0;
    for p in 0..4 {
        let Ok((_, end)) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) else {
            return i64::MAX;
        };
        let at = done.iter().find(|d| d.0 == i64::from(p)).map_or(0, |d| d.1);
        behind += (end - at).max(0);
    }
    behind
}

/// Polls `missing` every 200 ms until it reports nothing missing, or fails after 240 s
/// with what is missing, each stage's readiness, the checkpointed positions and the logs.
async fn wait_distributed(
    pool: &sqlx::PgPool,
    brokers: &str,
    tag: &str,
    procs: &[Proc],
    missing: impl AsyncFn() -> Option<String>,
) {
    let t = Instant::now();
    loop {
        let Some(what) = missing().await else {
            return;
        };
        if t.elapsed() >= Duration::from_secs(240) {
            let mut ready = Vec::new();
            for p in procs {
                ready.push(
                    match reqwest::get(format!("http://{}/readyz", p.addr())).await {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(e) => e.to_string(),
                    },
                );
            }
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!(
                "{what}:\nreadyz: {}\n{}\n{}",
                ready.join("\nreadyz: "),
                positions_report(pool, brokers, tag).await,
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distributed stages, with SIGKILLs of random stage processes while the input is
/// produced straight to Kafka (keyed by host, as producers should).
async fn distributed_run(dir: &Path, seed: u64) -> Outcome {
    let brokers = kafka_brokers();
    let db_url = seismo_store::testing::fresh_database().await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let tag = format!(
        "c{}x{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis() % 100_000_000
    );
    let env: Vec<(String, String)> = vec![
        ("SEISMO_KAFKA__BROKERS".into(), brokers.clone()),
        ("SEISMO_KAFKA__TOPIC_PREFIX".into(), format!("{tag}.")),
        ("SEISMO_KAFKA__GROUP_PREFIX".into(), tag.clone()),
        ("SEISMO_KAFKA__PARTITIONS".into(), "4".into()),
        ("SEISMO_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
        ("SEISMO_STORAGE__URL".into(), db_url.clone()),
        ("SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".into(), "200".into()),
        ("SEISMO_STAGES__IDLE_RELEASE_SECS".into(), "3600".into()),
        ("SEISMO_INGEST__BACKFILL".into(), "true".into()),
    ];
    let ok = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["topics", "create"]);
    ok(&["migrate"]);
    let names = ["ingest", "detect-a", "detect-b", "correlate"];
    let stage_of = |n: &str| n.split('-').next().unwrap().to_string();
    let start = |n: &str| {
        spawn(
            &["run", "--stage", &stage_of(n)],
            &env,
            &dir.join(format!("{n}.log")),
        )
    };
    let mut procs: Vec<Proc> = names.iter().map(|n| start(n)).collect();
    let producer = KafkaProducer::new(&KafkaConfig {
        brokers: brokers.clone(),
        topic_prefix: format!("{tag}."),
        ..KafkaConfig::default()
    })
    .unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let all = minutes();
    let chunk = 20;
    let kill_at: BTreeSet<usize> = (0..KILLS)
        .map(|k| (k + 1) * all.len() / chunk / (KILLS + 1))
        .collect();
    for (c, minutes) in all.chunks(chunk).enumerate() {
        // Per host, one record of this chunk's minutes, keyed by host so each host's
        // points stay in order on one partition.
        let mut records = Vec::new();
        for h in 0..HOSTS {
            let host = format!("h{h}");
            let lines: Vec<&MetricPoint> = minutes
                .iter()
                .flatten()
                .filter(|p| p.labels["host"] == host)
                .collect();
            let payload: String = lines
                .iter()
                .map(|p| serde_json::to_string(p).unwrap() + "\n")
                .collect();
            records.push(OutRecord::new(Bytes::from(host), Bytes::from(payload)));
        }
        producer.send(topics::METRICS, records).await.unwrap();
        if kill_at.contains(&c) {
            let victim = rng.random_range(0..procs.len());
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            procs[victim].kill9();
            // Restart once the group has noticed the death (session timeout 6 s), as an
            // orchestrator's back-off would: the broker used in tests (tansu) keeps a dead
            // member's partitions when a new member joins before the old session expires.
            tokio::time::sleep(Duration::from_millis(7000 + rng.random_range(0..1500))).await;
            procs[victim] = start(names[victim]);
        }
    }
    // Caught up: detect has checkpointed every point, and the incidents stop changing.
    wait_distributed(&pool, &brokers, &tag, &procs, async || {
        let detected = pg_count(
            &pool,
            "SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%-detect'",
        )
        .await;
        let stored = pg_count(&pool, "SELECT count(*) FROM metric_points").await;
        (detected != total_points() || stored != total_points()).then(|| {
            format!("distributed run did not catch up (detected {detected}, stored {stored})")
        })
    })
    .await;
    // And correlate has taken every anomaly detect sent: a restarted correlate can take
    // longer than any fixed quiet spell to rejoin its group on a loaded machine.
    wait_distributed(&pool, &brokers, &tag, &procs, async || {
        let behind = correlate_behind(&pool, &brokers, &tag).await;
        (behind != 0)
            .then(|| format!("correlate did not catch up ({behind} anomaly records behind)"))
    })
    .await;
    let mut last = outcome_pg(&pool).await;
    let mut stable_since = Instant::now();
    // Longer than a restarted stage takes to rejoin its group (session timeout 6 s): a
    // shorter quiet spell can be sampled while correlate is still replaying.
    while stable_since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = outcome_pg(&pool).await;
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    for p in &mut procs {
        assert!(p.sigterm().success(), "{}", p.log_text());
    }
    outcome_pg(&pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged_and_changes_no_result() {
    let base = tempfile::tempdir().unwrap();
    let reference_dir = base.path().join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    let reference = embedded_run(&reference_dir, &[], 0).await;
    assert_eq!(reference.points, total_points());
    assert!(reference.anomalies.len() >= 10, "{reference:?}");
    assert!(!reference.incidents.is_empty(), "{reference:?}");
    assert!(
        reference.forecasts.len() >= 1000,
        "{}",
        reference.forecasts.len()
    );
    println!(
        "reference: {} points, {} anomalies, {} incidents, {} forecast rows",
        reference.points,
        reference.anomalies.len(),
        reference.incidents.len(),
        reference.forecasts.len()
    );

    // Embedded: five kills at random requests, spread over the stream.
    let mut rng = SmallRng::seed_from_u64(5);
    let mut kills: Vec<usize> = (0..KILLS)
        .map(|k| k * MINUTES as usize / KILLS + rng.random_range(5..MINUTES as usize / KILLS))
        .collect();
    kills.sort();
    let crashed_dir = base.path().join("crashed");
    std::fs::create_dir_all(&crashed_dir).unwrap();
    let crashed = embedded_run(&crashed_dir, &kills, 9).await;
    let log = std::fs::read_to_string(crashed_dir.join("seismo.log")).unwrap();
    assert!(
        log.matches("seismo running embedded").count() == KILLS + 1,
        "every kill was followed by a restart"
    );
    assert!(
        log.contains("restored stage state"),
        "checkpoints were restored"
    );
    assert_eq!(
        crashed.points,
        total_points(),
        "every acknowledged point is stored"
    );
    assert_same("embedded", &crashed, &reference);
    let missing: Vec<_> = reference
        .forecasts
        .difference(&crashed.forecasts)
        .take(5)
        .collect();
    let extra: Vec<_> = crashed
        .forecasts
        .difference(&reference.forecasts)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "forecasts differ after kills (state lost?): missing {missing:?}, extra {extra:?}"
    );

    // Distributed: random stage processes killed five times.
    let dist_dir = base.path().join("distributed");
    std::fs::create_dir_all(&dist_dir).unwrap();
    let dist = distributed_run(&dist_dir, 3).await;
    assert_eq!(dist.points, total_points());
    assert_same("distributed", &dist, &reference);
}
