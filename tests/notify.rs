//! Paging end to end: a firing alert through the embedded pipeline and the real HTTP API to recording PagerDuty, Slack and webhook servers.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_and_inhibition_hold_what_they_match_and_nothing_else() {
    let (pd, pd_url) = Recorder::start(0).await;
    let (hook, hook_url) = Recorder::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    cfg.stages.idle_release_secs = 1;
    cfg.notify.group_wait_secs = 1;
    cfg.notify.repeat_interval_secs = 0;
    cfg.notify.receivers = vec![
        receiver("pd", ReceiverKind::Pagerduty, &pd_url),
        receiver("bot", ReceiverKind::Webhook, &hook_url),
    ];
    cfg.notify.routes = vec![RouteConfig {
        matchers: vec!["severity=critical".into()],
        receivers: vec!["pd".into()],
        continue_matching: false,
    }];
    cfg.notify.default_receivers = vec!["bot".into()];
    // While something critical is open in a tenant, its new warnings do not page.
    cfg.notify.inhibit_rules = vec![seismo_notify::config::InhibitRule {
        source_matchers: vec!["severity=critical".into()],
        target_matchers: vec!["severity=warning".into()],
        equal: vec!["tenant".into()],
    }];
    let server = start(&cfg).await;
    let client = reqwest::Client::new();

    // A silence on search holds search's page, not cart's.
    let r = client
        .post(format!("{}/api/v1/silences", server.url))
        .json(&serde_json::json!({
            "matchers": ["service=search"],
            "ends_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "comment": "reindexing",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let silence: Value = r.json().await.unwrap();
    let bad = client
        .post(format!("{}/api/v1/silences", server.url))
        .json(&serde_json::json!({"matchers": ["service"], "ends_at": "2099-01-01T00:00:00Z", "comment": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "a matcher without = is refused");
    // Silences are read every 2 s: let the stage see it before the alerts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let source = &server.running.source;
    source
        .send(
            topics::ALERTS,
            vec![alert("search", "warning"), alert("cart", "warning")],
        )
        .await
        .unwrap();
    let got = hook.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got_now = hook.got();
    assert_eq!(
        got_now.len(),
        1,
        "only cart pages: {:?}",
        got_now
            .iter()
            .map(|g| &g.body["incident"]["scope"])
            .collect::<Vec<_>>()
    );
    assert_eq!(got[0].body["incident"]["scope"]["service"], "cart");
    // Ending the silence lets search's page out.
    let r = client
        .delete(format!(
            "{}/api/v1/silences/{}",
            server.url,
            silence["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = hook.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body["incident"]["scope"]["service"], "search");

    // Inhibition: while checkout's critical incident is open, a new warning elsewhere in
    // the tenant waits; the critical page itself goes out. Resolving it releases the warning.
    source
        .send(topics::ALERTS, vec![alert("checkout", "critical")])
        .await
        .unwrap();
    let crit = pd.wait_for(1).await;
    let crit_id = crit[0].body["dedup_key"].as_str().unwrap().to_string();
    source
        .send(topics::ALERTS, vec![alert("payments", "warning")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        hook.got().len(),
        2,
        "payments' warning is held while checkout is critical"
    );
    server.transition(&crit_id, "RESOLVED").await;
    let got = hook.wait_for(3).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].body["incident"]["scope"]["service"], "payments");
    server.stop().await;
}

/// The status of each incident that PagerDuty heard of, by its dedup key: the actions
/// and the distinct delivery ids of each action.
fn pages(pd: &Recorder) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for g in pd.got() {
        let key = g.body["dedup_key"].as_str().unwrap_or_default().to_string();
        let action = g.body["event_action"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let id = g.headers["x-seismo-delivery"].to_str().unwrap().to_string();
        out.entry(key)
            .or_default()
            .entry(action)
            .or_default()
            .insert(id);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_neither_pages_twice_nor_drops_a_page() {
    use rand::{Rng, SeedableRng};
    let (pd, pd_url) = Recorder::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("seismo.toml");
    std::fs::write(
        &config,
        format!(
            r#"[storage]
url = "sqlite://{db}"
[bus]
dir = "{bus}"
[stages]
checkpoint_interval_ms = 200
idle_release_secs = 1
[notify]
group_wait_secs = 1
repeat_interval_secs = 0
default_receivers = ["pd"]
[[notify.receivers]]
name = "pd"
type = "pagerduty"
url = "{pd_url}"
routing_key = "K"
"#,
            db = dir.path().join("seismo.db").display(),
            bus = dir.path().join("bus").display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("seismo.log");
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    // Moves every incident PagerDuty knows one step: triggered → acknowledged → resolved.
    let step = |url: String, known: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>| {
        let client = client.clone();
        async move {
            for id in known.keys() {
                let detail: Value = match client
                    .get(format!("{url}/api/v1/incidents/{id}"))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => continue,
                };
                let next = match detail["incident"]["status"].as_str() {
                    Some("DETECTED") => "ACKNOWLEDGED",
                    Some("ACKNOWLEDGED") => "RESOLVED",
                    _ => continue,
                };
                let _ = client
                    .post(format!("{url}/api/v1/incidents/{id}/transition"))
                    .json(&serde_json::json!({ "status": next }))
                    .send()
                    .await;
            }
        }
    };
    for round in 0..5 {
        let mut p = common::spawn(&["--config", config.to_str().unwrap(), "run"], &[], &log);
        let url = format!("http://{}", p.addr());
        let hook = serde_json::json!({
            "version": "4",
            "status": "firing",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "Down", "service": format!("svc{round}"), "severity": "critical"},
                "startsAt": chrono::Utc::now().to_rfc3339(),
            }],
        });
        let r = client
            .post(format!("{url}/api/v1/ingest/alertmanager"))
            .json(&hook)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        step(url.clone(), pages(&pd)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..2500))).await;
        p.kill9();
    }
    // A last run, not killed, until every incident is triggered, acknowledged and resolved.
    let mut p = common::spawn(&["--config", config.to_str().unwrap(), "run"], &[], &log);
    let url = format!("http://{}", p.addr());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = pages(&pd);
        let done = seen.len() == 5 && seen.values().all(|a| a.contains_key("resolve"));
        if done || Instant::now() > deadline {
            break;
        }
        step(url.clone(), seen).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut details = String::new();
    for id in pages(&pd).keys() {
        let d: Value = client
            .get(format!("{url}/api/v1/incidents/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        details.push_str(&format!(
            "{id}: {} timeline {} notifications {}\n",
            d["incident"]["status"], d["timeline"], d["notifications"]
        ));
    }
    p.sigterm();
    let seen = pages(&pd);
    assert_eq!(
        seen.len(),
        5,
        "every incident paged: {seen:#?}\n{}",
        p.log_text()
    );
    for (id, actions) in &seen {
        for action in ["trigger", "acknowledge", "resolve"] {
            let n = actions.get(action).map_or(0, |d| d.len());
            assert_eq!(
                n,
                1,
                "incident {id}: {n} distinct {action} deliveries: {actions:?}\n{details}\n{}",
                p.log_text()
            );
        }
    }
    // Requests, as against deliveries: a kill between a receiver's answer and the log
    // write sends that one page again under the same delivery id (and dedup_key).
    let requests = pd.got().len();
    eprintln!("{requests} requests for 15 deliveries over 5 SIGKILLs");
    assert!(
        requests <= 15 + 5,
        "at most one repeat per kill: {requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_incident_resolves_itself_and_its_page_resolves() {
    let (pd, pd_url) = Recorder::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    cfg.stages.checkpoint_interval_ms = 100;
    cfg.stages.idle_release_secs = 1;
    cfg.notify.group_wait_secs = 1;
    cfg.notify.group_interval_secs = 1;
    cfg.notify.repeat_interval_secs = 0;
    cfg.notify.retry_for_secs = 30;
    cfg.notify.receivers = vec![receiver("pd", ReceiverKind::Pagerduty, &pd_url)];
    cfg.notify.default_receivers = vec!["pd".into()];
    let server = start(&cfg).await;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let alert = |service: &str, status: AlertStatus, start: i64, end: Option<i64>| {
        let a = Alert {
            tenant: "default".into(),
            fingerprint: format!("fp-{service}"),
            status,
            labels: [
                ("alertname".to_string(), "HighErrorRate".to_string()),
                ("service".to_string(), service.to_string()),
                ("severity".to_string(), "critical".to_string()),
            ]
            .into(),
            annotations: Labels::new(),
            starts_at: t0 + chrono::Duration::minutes(start),
            ends_at: end.map(|m| t0 + chrono::Duration::minutes(m)),
            source: "alertmanager".into(),
        };
        OutRecord::new("default", serde_json::to_vec(&a).unwrap())
    };
    let send = |r: OutRecord| server.running.source.send(topics::ALERTS, vec![r]);
    send(alert("checkout", AlertStatus::Firing, 0, None))
        .await
        .unwrap();
    let got = pd.wait_for(1).await;
    assert_eq!(got[0].body["event_action"], "trigger");
    let id = got[0].body["dedup_key"].as_str().unwrap().to_string();
    // Its alert resolves at minute 5 and checkout stays quiet; at minute 45 another
    // service's alert moves the clock past quiet_secs (30 min) of silence.
    send(alert("checkout", AlertStatus::Resolved, 0, Some(5)))
        .await
        .unwrap();
    send(alert("mail", AlertStatus::Firing, 45, None))
        .await
        .unwrap();
    let got = pd.wait_for(3).await;
    let resolves: Vec<&Got> = got
        .iter()
        .filter(|g| g.body["dedup_key"] == id.as_str() && g.body["event_action"] == "resolve")
        .collect();
    assert_eq!(resolves.len(), 1, "{got:#?}");
    let inc = server.incident(&id).await;
    assert_eq!(inc["incident"]["status"], "RESOLVED", "{inc:#}");
    let step = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to_status"] == "RESOLVED")
        .cloned()
        .unwrap_or_default();
    assert_eq!(step["actor"], "seismo", "{inc:#}");
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("signals cleared"),
        "{step}"
    );
    // The other incident is still firing: it stays open.
    assert_eq!(
        got.iter()
            .filter(|g| g.body["event_action"] == "resolve")
            .count(),
        1
    );
    server.stop().await;
}
