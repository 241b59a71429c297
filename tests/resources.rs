//! Resource tests against a real `seismo run` process: what hostile or careless clients
//! can make it hold. Each case measures the process's resident memory (VmRSS) before and
//! after and prints the figures (`cargo test --test resources -- --nocapture`).
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;

const MB: u64 = 1 << 20;

fn start(dir: &Path, extra: &[(&str, &str)]) -> Proc {
    let log = dir.join("seismo.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .arg("run")
        .env(
            "SEISMO_STORAGE__URL",
            format!("sqlite://{}", dir.join("seismo.db").display()),
        )
        .env("SEISMO_BUS__DIR", dir.join("bus"))
        .env("SEISMO_HTTP__LISTEN", "127.0.0.1:0")
        .env("SEISMO_LOG", "warn,seismo=info")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc::new(child, log)
}

async fn settle(p: &Proc, addr: &str) {
    // Wait until every stage has taken its input, so memory reflects held state only.
    let client = reqwest::Client::new();
    let t = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if v["stages"]
                .as_object()
                .is_some_and(|s| s.values().all(|st| st["lag_records"].as_u64() == Some(0)))
            {
                return;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_starve_the_server() {
    // This test process opens the sockets, so it needs room for them too.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[("SEISMO_HTTP__HEADER_TIMEOUT_MS", "60000")]);
    let addr = p.addr();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    println!(
        "healthz with 1,100 idle connections open: {} ms",
        t.elapsed().as_millis()
    );
    // And a connection that never finishes its request head is closed after the header
    // timeout, idle keep-alive ones included.
    drop(idle);
    let q = start(
        &{
            let d = dir.path().join("short");
            std::fs::create_dir_all(&d).unwrap();
            d
        },
        &[("SEISMO_HTTP__HEADER_TIMEOUT_MS", "500")],
    );
    let addr = q.addr();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a partial request head is not held open past the header timeout")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_of_junk_gets_a_small_answer_and_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[]);
    let addr = p.addr();
    settle(&p, &addr).await;
    let before = p.rss();
    let client = reqwest::Client::new();
    // Two shapes of 8 MiB (http.max_body_bytes) of junk: many short bad lines, each echoed
    // in a refusal if nothing capped them, and one huge line.
    let many: String = (0..)
        .map(|i| format!("{{\"name\":\"junk{i}\",\"ts\":[{i}],\"value\":\"x\"}}\n"))
        .scan(0usize, |len, l| {
            *len += l.len();
            (*len <= 8 * MB as usize).then_some(l)
        })
        .collect();
    let one = format!("{{\"name\":\"{}\"}}", "x".repeat(8 * MB as usize - 12));
    let (stop, sampler) = p.peak_sampler();
    for (what, body) in [("short bad lines", many), ("one 8 MiB line", one)] {
        let len = body.len();
        let r = client
            .post(format!("http://{addr}/api/v1/ingest/points"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let answer = r.bytes().await.unwrap();
        println!(
            "8 MiB of junk ({what}, {len} bytes): a {} byte answer",
            answer.len()
        );
        assert!(answer.len() <= 64 * 1024, "{what}: {} bytes", answer.len());
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["accepted"], 0);
        assert!(v["rejected_count"].as_u64().unwrap() >= 1);
    }
    settle(&p, &addr).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let after = sampler.join().unwrap().max(p.rss());
    let growth = after.saturating_sub(before);
    println!(
        "8 MiB of junk: RSS {} MB -> peak {} MB (growth {:.1} MB)",
        before / MB,
        after / MB,
        growth as f64 / MB as f64
    );
    assert!(growth <= 50 * MB, "grew {growth} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_century_of_gaps_costs_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[("SEISMO_INGEST__BACKFILL", "true")]);
    let addr = p.addr();
    settle(&p, &addr).await;
    let before = p.rss();
    // 50 series, each with one point in 2000 and one in 2099 (about 6.7 KB of input).
    let mut body = String::new();
    for ts in [946_684_800_000i64, 4_070_908_800_000] {
        for s in 0..50 {
            body.push_str(&format!(
                "{{\"name\":\"gappy\",\"labels\":{{\"s\":\"{s}\"}},\"ts\":{ts},\"value\":1}}\n"
            ));
        }
    }
    let (stop, sampler) = p.peak_sampler();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/ingest/points"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    settle(&p, &addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let after = sampler.join().unwrap().max(p.rss());
    let growth = after.saturating_sub(before);
    println!(
        "100-year gaps: RSS {} MB -> peak {} MB (growth {:.1} MB)",
        before / MB,
        after / MB,
        growth as f64 / MB as f64
    );
    assert!(growth <= 50 * MB, "grew {growth} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_overload_gets_503s_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let inflight = 32 * MB;
    let p = start(
        dir.path(),
        &[
            ("SEISMO_INGEST__BACKFILL", "true"),
            ("SEISMO_HTTP__MAX_INFLIGHT_BYTES", &inflight.to_string()),
            ("SEISMO_BUS__MAX_BACKLOG_BYTES", &(64 * MB).to_string()),
        ],
    );
    let addr = p.addr();
    settle(&p, &addr).await;
    let before = p.rss();
    // 16 clients each posting 2 MB requests as fast as they are answered, for 15 s.
    let body: String = (0..16_000)
        .map(|i| {
            format!(
                "{{\"name\":\"load\",\"labels\":{{\"host\":\"h{}\",\"k\":\"{}\"}},\"ts\":{},\"value\":{i}}}\n",
                i % 50,
                i % 7,
                1_767_571_200_000i64 + (i / 350) * 1000
            )
        })
        .collect();
    let body = bytes::Bytes::from(body);
    let stop = Instant::now() + Duration::from_secs(15);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (addr, body) = (addr.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut busy) = (0u64, 0u64);
            while Instant::now() < stop {
                match client
                    .post(format!("http://{addr}/api/v1/ingest/points"))
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => ok += 1,
                    Ok(r) if r.status() == 503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(r) => panic!("unexpected {}", r.status()),
                    Err(e) => panic!("{e}"),
                }
            }
            (ok, busy)
        }));
    }
    let mut peak = before;
    while Instant::now() < stop {
        peak = peak.max(p.rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (o, b) = t.await.unwrap();
        ok += o;
        busy += b;
    }
    let growth = peak.saturating_sub(before);
    println!(
        "overload: {ok} requests accepted, {busy} answered 503; RSS {} MB -> peak {} MB (growth {:.0} MB; in-flight bound {} MB)",
        before / MB,
        peak / MB,
        growth as f64 / MB as f64,
        inflight / MB
    );
    assert!(busy > 0, "the overload was never refused");
    assert!(ok > 0);
    // The bound: request bytes in flight, plus parsing and batching overheads of the
    // stages, which do not grow with the load.
    assert!(growth <= inflight + 200 * MB, "grew {growth} bytes");
}
