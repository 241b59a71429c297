//! Fault tests with real processes: the store locked (SQLite, embedded) or unreachable
//! (PostgreSQL behind a proxy that drops every connection, distributed) for 60 s while
//! telemetry keeps arriving. Nothing acknowledged may be lost, the stages must recover by
//! themselves, and `/readyz` must report the outage while it lasts.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::spawn;

use bytes::Bytes;
use seismo_kafka::{KafkaConfig, KafkaProducer};
use seismo_transport::{OutRecord, Producer};
use tokio::net::{TcpListener, TcpStream};

const OUTAGE: Duration = Duration::from_secs(60);
const T0: i64 = 1_767_571_200_000;

/// Minute `m` of 40 series as JSON lines.
fn minute(m: i64) -> String {
    (0..40)
        .map(|s| {
            format!(
                "{{\"name\":\"queue_depth\",\"labels\":{{\"host\":\"h{}\",\"shard\":\"s{s}\"}},\"ts\":{},\"value\":{}}}\n",
                s % 8,
                T0 + m * 60_000,
                (m + s) % 17
            )
        })
        .collect()
}

/// Polls `/readyz` until `done` says stop; returns whether it ever answered 503, and
/// whether it answered 200 at the end.
async fn watch_ready(addr: String, done: Arc<AtomicBool>) -> (bool, String) {
    let client = reqwest::Client::new();
    let mut saw_503 = false;
    let mut report = String::new();
    while !done.load(Ordering::Acquire) {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 503
            && !saw_503
        {
            saw_503 = true;
            report = r.text().await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (saw_503, report)
}

async fn until(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let t = Instant::now();
    while !f().await {
        assert!(
            t.elapsed() < limit,
            "timed out waiting for {what}:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_a_locked_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("seismo.db");
    let env = vec![
        (
            "SEISMO_STORAGE__URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
        (
            "SEISMO_BUS__DIR".to_string(),
            dir.path().join("bus").display().to_string(),
        ),
        (
            "SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".to_string(),
            "200".to_string(),
        ),
        ("SEISMO_INGEST__BACKFILL".to_string(), "true".to_string()),
    ];
    let p = spawn(&["run"], &env, &dir.path().join("seismo.log"));
    let addr = p.addr();
    let client = reqwest::Client::new();
    let post = async |m: i64| {
        let r = client
            .post(format!("http://{addr}/api/v1/ingest/points"))
            .body(minute(m))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
    };
    for m in 0..200 {
        post(m).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_ready(addr.clone(), done.clone()));
    // Another process takes SQLite's write lock and holds it for the whole outage.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3,time,sys\nc=sqlite3.connect({:?},timeout=30,isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep({})\nc.execute('COMMIT')",
                db.display().to_string(),
                OUTAGE.as_secs()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(locker.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    // Producers keep being acknowledged while the store is locked: the bus holds the
    // points durably until the store takes them.
    let t = Instant::now();
    let mut m = 200;
    while t.elapsed() < OUTAGE - Duration::from_secs(5) {
        post(m).await;
        m += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(locker.wait().unwrap().success());
    let total = m * 40;
    until(
        "every acknowledged point to be stored",
        Duration::from_secs(120),
        async || {
            let Ok(pool) =
                sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await
            else {
                return false;
            };
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_points")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            pool.close().await;
            n == total
        },
        || p.log_text(),
    )
    .await;
    until(
        "/readyz to recover",
        Duration::from_secs(60),
        async || {
            client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
        || p.log_text(),
    )
    .await;
    done.store(true, Ordering::Release);
    let (saw_503, report) = watcher.await.unwrap();
    assert!(
        saw_503,
        "/readyz never reported the outage:\n{}",
        p.log_text()
    );
    assert!(report.contains("locked"), "{report}");
    assert!(p.log_text().contains("recovered"), "{}", p.log_text());
}

/// A TCP proxy that can cut every connection and refuse new ones.
async fn proxy(upstream: String, down: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            if down.load(Ordering::Acquire) {
                continue; // dropped: the connection is refused at once
            }
            let upstream = upstream.clone();
            let down = down.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cut = async {
                    while !down.load(Ordering::Acquire) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy(&mut cr, &mut sw) => {}
                    _ = tokio::io::copy(&mut sr, &mut cw) => {}
                    _ = cut => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_survives_an_unreachable_database() {
    let brokers = std::env::var("SEISMO_TEST_KAFKA").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        panic!("SEISMO_TEST_KAFKA is not set: run the tests with scripts/test.sh (it starts a broker)")
    });
    let db_url = seismo_store::testing::fresh_database().await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let (prefix, rest) = db_url.split_once('@').unwrap();
    let (hostport, dbname) = rest.split_once('/').unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let via = proxy(hostport.to_string(), down.clone()).await;
    let proxied = format!("{prefix}@{via}/{dbname}");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(
        "f{}x{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis() % 100_000_000
    );
    let env: Vec<(String, String)> = vec![
        ("SEISMO_KAFKA__BROKERS".into(), brokers.clone()),
        ("SEISMO_KAFKA__TOPIC_PREFIX".into(), format!("{tag}.")),
        ("SEISMO_KAFKA__GROUP_PREFIX".into(), tag.clone()),
        ("SEISMO_KAFKA__PARTITIONS".into(), "2".into()),
        ("SEISMO_STORAGE__URL".into(), proxied),
        ("SEISMO_STAGES__CHECKPOINT_INTERVAL_MS".into(), "200".into()),
        ("SEISMO_INGEST__BACKFILL".into(), "true".into()),
    ];
    for args in [&["topics", "create"][..], &["migrate"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ingest = spawn(
        &["run", "--stage", "ingest"],
        &env,
        &dir.path().join("ingest.log"),
    );
    let detect = spawn(
        &["run", "--stage", "detect"],
        &env,
        &dir.path().join("detect.log"),
    );
    let addr = ingest.addr();
    let producer = KafkaProducer::new(&KafkaConfig {
        brokers,
        topic_prefix: format!("{tag}."),
        ..KafkaConfig::default()
    })
    .unwrap();
    let send = async |from: i64, to: i64| {
        let records = (from..to)
            // One key: every minute on one partition, in order. Detect refuses a point
            // older than its series' last one, so minutes spread over partitions would
            // reach it out of order and be counted as refused, not lost.
            .map(|m| OutRecord::new(Bytes::from_static(b"minutes"), Bytes::from(minute(m))))
            .collect();
        producer
            .send(seismo_schemas::topics::METRICS, records)
            .await
            .unwrap();
    };
    send(0, 100).await;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_ready(addr.clone(), done.clone()));
    down.store(true, Ordering::Release);
    let t = Instant::now();
    let mut m = 100;
    while t.elapsed() < OUTAGE {
        send(m, m + 10).await;
        m += 10;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    down.store(false, Ordering::Release);
    let total = m * 40;
    let seen = std::sync::Mutex::new((0i64, None::<i64>));
    let logs = || {
        format!(
            "expected {total}, stored and detected {:?}\n{}\n----\n{}",
            seen.lock().unwrap(),
            ingest.log_text(),
            detect.log_text()
        )
    };
    until(
        "every point to be stored and detected",
        Duration::from_secs(180),
        async || {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_points").fetch_one(&pool).await.unwrap_or(0);
            let detected: Option<i64> = sqlx::query_scalar("SELECT sum(records)::bigint FROM stage_positions WHERE consumer_group LIKE '%-detect'")
                .fetch_one(&pool)
                .await
                .unwrap_or(None);
            *seen.lock().unwrap() = (stored, detected);
            stored == total && detected == Some(total)
        },
        logs,
    )
    .await;
    done.store(true, Ordering::Release);
    let (saw_503, _) = watcher.await.unwrap();
    assert!(saw_503, "/readyz never reported the outage:\n{}", logs());
    assert!(ingest.log_text().contains("recovered"), "{}", logs());
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}
