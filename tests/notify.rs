//! Paging end to end: a firing alert through the embedded pipeline and the real HTTP API to recording PagerDuty, Slack and webhook servers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use seismo::Config;
use seismo::pipeline::{self, Embedded};
use seismo_notify::{ReceiverConfig, ReceiverKind, RouteConfig};
use seismo_schemas::{Alert, AlertStatus, Labels, topics};
use seismo_transport::{OutRecord, Producer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One request a receiver got: when, its headers and its JSON body.
#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

/// A local HTTP server that records every POST; the first `refuse_first` requests get a
/// 429 with `Retry-After: 1`.
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<Got>>>,
    refuse_first: usize,
}

impl Recorder {
    async fn start(refuse_first: usize) -> (Recorder, String) {
        let r = Recorder {
            got: Arc::default(),
            refuse_first,
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let mut got = state.got.lock().unwrap();
                    got.push(Got {
                        at: Instant::now(),
                        headers,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        raw: body,
                    });
                    if got.len() <= state.refuse_first {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "slow down",
                        )
                    } else {
                        (StatusCode::ACCEPTED, [("retry-after", "0")], "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (at most 30 s).
    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Server {
    url: String,
    running: Embedded,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cfg: &Config) -> Server {
    let store = pipeline::open_store(cfg).await.unwrap();
    let running = Embedded::start(cfg, store.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    let served = tokio::spawn(seismo::http::serve(
        listener,
        seismo::http::router(cfg, Some(&running), Some(store), running.health.clone()),
        async move { cancelled.cancelled().await },
        seismo::http::HttpLimits::from_config(cfg),
    ));
    Server {
        url,
        running,
        stop,
        served,
    }
}

impl Server {
    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap().unwrap();
        self.running.stop().await.unwrap();
    }

    async fn transition(&self, id: &str, status: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/incidents/{id}/transition", self.url))
            .json(&serde_json::json!({ "status": status, "actor": "ann" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn incident(&self, id: &str) -> Value {
        reqwest::get(format!("{}/api/v1/incidents/{id}", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn receiver(name: &str, kind: ReceiverKind, url: &str) -> ReceiverConfig {
    ReceiverConfig {
        name: name.into(),
        kind,
        url: Some(url.into()),
        routing_key: (kind == ReceiverKind::Pagerduty).then(|| "ROUTING-KEY".to_string()),
        routing_key_env: None,
        secret: (kind == ReceiverKind::Webhook).then(|| "s3cret".to_string()),
        secret_env: None,
    }
}

fn alert(service: &str, severity: &str) -> OutRecord {
    let labels: Labels = [
        ("alertname".to_string(), "HighErrorRate".to_string()),
        ("service".to_string(), service.to_string()),
        ("severity".to_string(), severity.to_string()),
    ]
    .into();
    let a = Alert {
        tenant: "default".into(),
        fingerprint: format!("fp-{service}"),
        status: AlertStatus::Firing,
        labels,
        annotations: Labels::new(),
        starts_at: chrono::Utc::now(),
        ends_at: None,
        source: "alertmanager".into(),
    };
    OutRecord::new("default", serde_json::to_vec(&a).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_pages_once_then_acknowledges_and_resolves_in_step() {
    let (pd, pd_url) = Recorder::start(1).await;
    let (slack, slack_url) = Recorder::start(0).await;
    let (hook, hook_url) = Recorder::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    cfg.stages.checkpoint_interval_ms = 100;
    // Correlate holds inputs for detect's watermarks; with no points flowing it releases
    // them after this idle time.
    cfg.stages.idle_release_secs = 1;
    cfg.notify.group_wait_secs = 1;
    cfg.notify.group_interval_secs = 1;
    cfg.notify.repeat_interval_secs = 0;
    cfg.notify.retry_for_secs = 30;
    cfg.notify.receivers = vec![
        receiver("pd", ReceiverKind::Pagerduty, &pd_url),
        receiver("chat", ReceiverKind::Slack, &slack_url),
        receiver("bot", ReceiverKind::Webhook, &hook_url),
    ];
    cfg.notify.routes = vec![RouteConfig {
        matchers: vec!["severity=critical".into(), "service=checkout".into()],
        receivers: vec!["pd".into(), "chat".into()],
        continue_matching: false,
    }];
    cfg.notify.default_receivers = vec!["bot".into()];
    let server = start(&cfg).await;
    server
        .running
        .source
        .send(topics::ALERTS, vec![alert("checkout", "critical")])
        .await
        .unwrap();

    // PagerDuty: refused once with Retry-After: 1, then accepted: two requests, one page.
    let got = pd.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    let trigger = &got[1].body;
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], "ROUTING-KEY");
    assert_eq!(trigger["payload"]["severity"], "critical");
    let id = trigger["dedup_key"].as_str().unwrap().to_string();
    assert_eq!(
        got[0].headers["x-seismo-delivery"], got[1].headers["x-seismo-delivery"],
        "a retry is the same delivery"
    );
    let chat = slack.wait_for(1).await;
    assert!(
        chat[0].body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Triggered:")
    );

    server.transition(&id, "ACKNOWLEDGED").await;
    let got = pd.wait_for(3).await;
    assert_eq!(got[2].body["event_action"], "acknowledge");
    assert_eq!(got[2].body["dedup_key"], id.as_str());
    server.transition(&id, "RESOLVED").await;
    let got = pd.wait_for(4).await;
    assert_eq!(got[3].body["event_action"], "resolve");
    assert_eq!(slack.wait_for(3).await.len(), 3);

    // A warning on another service takes the default route: the signed webhook.
    server
        .running
        .source
        .send(topics::ALERTS, vec![alert("search", "warning")])
        .await
        .unwrap();
    let h = hook.wait_for(1).await;
    assert_eq!(h.len(), 1);
    let ts: i64 = h[0].headers["x-seismo-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        h[0].headers["x-seismo-signature"].to_str().unwrap(),
        seismo_notify::receivers::signature("s3cret", ts, &h[0].raw)
    );
    assert_eq!(h[0].body["action"], "trigger");

    // The pages are on the incident.
    let detail = server.incident(&id).await;
    let sent: Vec<(String, String, String, u64)> = detail["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["receiver"].as_str().unwrap().to_string(),
                n["action"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
                n["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [
        ("pd", "trigger", "delivered", 2),
        ("pd", "acknowledge", "delivered", 1),
        ("pd", "resolve", "delivered", 1),
        ("chat", "trigger", "delivered", 1),
    ] {
        assert!(
            sent.iter()
                .any(|s| (s.0.as_str(), s.1.as_str(), s.2.as_str(), s.3) == want),
            "{want:?} not in {sent:?}"
        );
    }
    server.stop().await;

    // Forget notify's checkpoint: on restart it reads seismo.incidents from the start and
    // finds every page in the notification log. Nothing is sent twice.
    let pool = sqlx::SqlitePool::connect(&cfg.storage.url).await.unwrap();
    for table in ["stage_positions", "stage_state"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE consumer_group = 'notify'"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let before = (pd.got().len(), slack.got().len(), hook.got().len());
    let again = start(&cfg).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (pd.got().len(), slack.got().len(), hook.got().len()),
        before,
        "a replay pages nobody again"
    );
    again.stop().await;
}
