//! Authentication end to end: the real router and embedded pipeline on port 0 over a temp SQLite, tokens from the library, the API and the CLI.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use reqwest::{Method, StatusCode};
use seismo::Config;
use seismo::pipeline::{self, Embedded};
use seismo_api::AuthMode;
use seismo_api::auth::NewToken;
use seismo_schemas::{
    Anomaly, AnomalyKind, Explanation, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Labels, MetricPoint, Role, Severity,
};
use seismo_store::{IncidentWrite, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A running server: the embedded pipeline and the HTTP router of `seismo run`.
struct Server {
    url: String,
    db_url: String,
    store: Arc<dyn Store>,
    running: Embedded,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(auth: AuthMode, tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    cfg.http.auth = auth;
    tweak(&mut cfg);
    let store = pipeline::open_store(&cfg).await.unwrap();
    seed(store.as_ref()).await;
    let running = Embedded::start(&cfg, store.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    let served = tokio::spawn(seismo::http::serve(
        listener,
        seismo::http::router(
            &cfg,
            Some(&running),
            Some(store.clone()),
            running.health.clone(),
        ),
        async move { cancelled.cancelled().await },
        seismo::http::HttpLimits::from_config(&cfg),
    ));
    Server {
        url,
        db_url: cfg.storage.url.clone(),
        store,
        running,
        stop,
        served,
        _dir: dir,
    }
}

impl Server {
    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap().unwrap();
        self.running.stop().await.unwrap();
    }

    /// A new token of `tenant` with `role`, as `seismo token create` makes it.
    async fn token(&self, tenant: &str, role: Role, rate: Option<f64>) -> String {
        let new = NewToken {
            tenant: tenant.into(),
            role,
            name: format!("{} of {tenant}", role.as_str()),
            rate_per_sec: rate,
        };
        seismo_api::auth::create_token(self.store.as_ref(), new, "test")
            .await
            .unwrap()
            .1
    }

    /// Sends a request; `auth` is the whole Authorization header value.
    async fn call(
        &self,
        method: &Method,
        path: &str,
        auth: Option<&str>,
        tenant: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.url))
            .body(body.to_vec());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(t) = tenant {
            req = req.header("x-seismo-tenant", t);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (code, _, v) = self
            .call(&Method::GET, path, Some(&bearer(token)), None, b"")
            .await;
        (code, v)
    }

    async fn status_of(&self, tenant: &str, id: &str) -> IncidentStatus {
        self.store.get_incident(tenant, id).await.unwrap().status
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn id_of(token: &str) -> &str {
    &token[4..16]
}

fn anomaly(tenant: &str, i: i64) -> Anomaly {
    let labels: Labels = [("service".to_string(), "db".to_string())].into();
    Anomaly {
        id: Anomaly::make_id(i as u64, i, tenant),
        tenant: tenant.into(),
        series_id: i as u64,
        name: "latency".into(),
        labels,
        ts: Utc.timestamp_opt(1_700_000_000 + i * 60, 0).unwrap(),
        observed: 2.0,
        expected: 1.0,
        lower: 0.5,
        upper: 1.5,
        score: 0.9,
        severity: Severity::Warning,
        kind: AnomalyKind::Point,
        detector: "test".into(),
        explanation: Explanation::default(),
    }
}

/// Incident `inc-<tenant>` with two anomalies, for tenants acme and bravo.
async fn seed(store: &dyn Store) {
    for (n, tenant) in ["acme", "bravo"].into_iter().enumerate() {
        let anomalies = [
            anomaly(tenant, n as i64 * 10),
            anomaly(tenant, n as i64 * 10 + 1),
        ];
        store.insert_anomalies(&anomalies).await.unwrap();
        let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let id = format!("inc-{tenant}");
        store
            .write_incidents(&[IncidentWrite {
                incident: Incident {
                    id: id.clone(),
                    tenant: tenant.into(),
                    title: "latency anomalous on db".into(),
                    status: IncidentStatus::Detected,
                    severity: Severity::Warning,
                    started_at: at,
                    updated_at: at,
                    resolved_at: None,
                    scope: [("service".to_string(), "db".to_string())].into(),
                    root_cause_candidates: vec![],
                    anomaly_ids: vec![],
                    alert_fingerprints: vec![],
                },
                new_anomaly_ids: anomalies.iter().map(|a| a.id.clone()).collect(),
                new_alert_fingerprints: vec![],
                events: vec![IncidentEvent {
                    id: format!("{id}-created"),
                    incident_id: id,
                    ts: at,
                    kind: IncidentEventKind::Created,
                    actor: "seismo".into(),
                    message: "opened".into(),
                    from_status: None,
                    to_status: Some(IncidentStatus::Detected),
                }],
            }])
            .await
            .unwrap();
    }
}

fn point_line(name: &str, tenant: Option<&str>) -> String {
    let tenant = tenant.map_or(String::new(), |t| format!("\"tenant\":\"{t}\","));
    format!(
        "{{{tenant}\"name\":\"{name}\",\"labels\":{{\"host\":\"h1\"}},\"ts\":{},\"value\":1}}\n",
        Utc::now().timestamp_millis()
    )
}

fn alertmanager_body() -> Vec<u8> {
    json!({
        "version": "4",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "Down", "service": "db" },
            "startsAt": Utc::now().to_rfc3339(),
        }],
    })
    .to_string()
    .into_bytes()
}

/// Every route but the public ones, with a body each would accept, and the lowest role
/// that may call it.
fn routes(victim_token_id: &str) -> Vec<(Method, String, Vec<u8>, Role)> {
    vec![
        (Method::GET, "/api/v1/anomalies".into(), vec![], Role::Read),
        (Method::GET, "/api/v1/incidents".into(), vec![], Role::Read),
        (
            Method::GET,
            "/api/v1/incidents/inc-acme".into(),
            vec![],
            Role::Read,
        ),
        (
            Method::POST,
            "/api/v1/incidents/inc-acme/transition".into(),
            br#"{"status":"INVESTIGATING"}"#.to_vec(),
            Role::Write,
        ),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            br#"{"role":"read","name":"made over HTTP"}"#.to_vec(),
            Role::Admin,
        ),
        (Method::GET, "/api/v1/tokens".into(), vec![], Role::Admin),
        (
            Method::DELETE,
            format!("/api/v1/tokens/{victim_token_id}"),
            vec![],
            Role::Admin,
        ),
        (Method::GET, "/api/v1/audit".into(), vec![], Role::Admin),
        (Method::GET, "/api/v1/series".into(), vec![], Role::Read),
        (
            Method::POST,
            "/api/v1/ingest/points".into(),
            point_line("cpu", None).into_bytes(),
            Role::Ingest,
        ),
        (
            Method::POST,
            "/api/v1/ingest/alertmanager".into(),
            alertmanager_body(),
            Role::Ingest,
        ),
        (
            Method::POST,
            "/api/v1/write".into(),
            common::remote_write_body(),
            Role::Ingest,
        ),
    ]
}

fn allowed(role: Role, need: Role) -> bool {
    role == Role::Admin || role == need || (need == Role::Read && role == Role::Write)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_without_a_valid_token() {
    let s = start(AuthMode::On, |_| {}).await;
    let admin = s.token("acme", Role::Admin, None).await;
    let victim = s.token("acme", Role::Read, None).await;
    let revoked = s.token("acme", Role::Admin, None).await;
    let (code, _, _) = s
        .call(
            &Method::DELETE,
            &format!("/api/v1/tokens/{}", id_of(&revoked)),
            Some(&bearer(&admin)),
            None,
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let wrong_secret = format!("{}{}", &admin[..17], "0".repeat(64));
    assert_ne!(wrong_secret, admin);
    let unknown_id = format!("smo_00000000dead_{}", &admin[17..]);
    let tokens_before = s.store.list_tokens(None).await.unwrap();
    let audit_before = s
        .store
        .list_audit(&audit_q("acme"))
        .await
        .unwrap()
        .items
        .len();
    for (method, path, body, _) in routes(id_of(&victim)) {
        for auth in [
            None,
            Some(String::new()),
            Some("Bearer".to_string()),
            Some("Bearer not-a-token".to_string()),
            Some(format!("Basic {admin}")),
            Some(format!("Bearer {}", admin.to_uppercase())),
            Some(bearer(&wrong_secret)),
            Some(bearer(&unknown_id)),
            Some(bearer(&revoked)),
        ] {
            let (code, headers, v) = s.call(&method, &path, auth.as_deref(), None, &body).await;
            assert_eq!(
                code,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}: {v}"
            );
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert!(v["error"].is_string(), "{v}");
        }
    }
    // Nothing any of them asked for happened.
    assert_eq!(
        s.status_of("acme", "inc-acme").await,
        IncidentStatus::Detected
    );
    assert_eq!(s.store.list_tokens(None).await.unwrap(), tokens_before);
    assert_eq!(
        s.store
            .list_audit(&audit_q("acme"))
            .await
            .unwrap()
            .items
            .len(),
        audit_before
    );
    // Probes and scrapers need no token.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (code, _, _) = s.call(&Method::GET, path, None, None, b"").await;
        assert_eq!(code, StatusCode::OK, "{path}");
    }
    // Unknown paths are no way around it either.
    let (code, _, _) = s
        .call(&Method::GET, "/api/v1/nothing", None, None, b"")
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

fn audit_q(tenant: &str) -> seismo_store::AuditQuery {
    seismo_store::AuditQuery {
        tenant: tenant.into(),
        limit: 1000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_takes_only_its_roles() {
    let s = start(AuthMode::On, |_| {}).await;
    for role in [Role::Ingest, Role::Read, Role::Write, Role::Admin] {
        let token = s.token("acme", role, None).await;
        let victim = s.token("acme", Role::Read, None).await;
        for (method, path, body, need) in routes(id_of(&victim)) {
            let (code, _, v) = s
                .call(&method, &path, Some(&bearer(&token)), None, &body)
                .await;
            if allowed(role, need) {
                assert!(
                    code.is_success(),
                    "{} token: {method} {path} answered {code}: {v}",
                    role.as_str()
                );
            } else {
                assert_eq!(
                    code,
                    StatusCode::FORBIDDEN,
                    "{} token: {method} {path}: {v}",
                    role.as_str()
                );
            }
        }
        // The transition went through once; put the incident back for the next role.
        let now = s.status_of("acme", "inc-acme").await;
        assert_eq!(
            now == IncidentStatus::Investigating,
            matches!(role, Role::Write | Role::Admin),
            "{}",
            role.as_str()
        );
        if now == IncidentStatus::Investigating {
            let (code, _, v) = s
                .call(
                    &Method::POST,
                    "/api/v1/incidents/inc-acme/transition",
                    Some(&bearer(&token)),
                    None,
                    br#"{"status":"MITIGATED"}"#,
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{v}");
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_another_tenants_data() {
    let s = start(AuthMode::On, |_| {}).await;
    let acme_admin = s.token("acme", Role::Admin, None).await;
    let bravo_read = s.token("bravo", Role::Read, None).await;
    let bravo_write = s.token("bravo", Role::Write, None).await;
    let bravo_ingest = s.token("bravo", Role::Ingest, None).await;
    let bravo_admin = s.token("bravo", Role::Admin, None).await;

    // Ids of another tenant's objects are not found, for reading or writing.
    let (code, _) = s.get("/api/v1/incidents/inc-acme", &bravo_read).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _, _) = s
        .call(
            &Method::POST,
            "/api/v1/incidents/inc-acme/transition",
            Some(&bearer(&bravo_write)),
            None,
            br#"{"status":"RESOLVED"}"#,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        s.status_of("acme", "inc-acme").await,
        IncidentStatus::Detected
    );
    let (code, _, _) = s
        .call(
            &Method::DELETE,
            &format!("/api/v1/tokens/{}", id_of(&acme_admin)),
            Some(&bearer(&bravo_admin)),
            None,
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = s.get("/api/v1/tokens", &acme_admin).await;
    assert_eq!(code, StatusCode::OK, "acme's admin token still works");

    // Listings, filtered by labels or not, hold only the token's tenant.
    for path in [
        "/api/v1/anomalies",
        "/api/v1/anomalies?label=service:db",
        "/api/v1/incidents",
        "/api/v1/incidents?label=service:db",
    ] {
        let (code, v) = s.get(path, &bravo_read).await;
        assert_eq!(code, StatusCode::OK);
        let items = v["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{path}");
        assert!(items.iter().all(|i| i["tenant"] == "bravo"), "{path}: {v}");
    }
    for path in ["/api/v1/tokens", "/api/v1/audit"] {
        let (_, v) = s.get(path, &bravo_admin).await;
        let items = v["items"].as_array().unwrap();
        assert!(!items.is_empty(), "{path}");
        assert!(items.iter().all(|i| i["tenant"] == "bravo"), "{path}: {v}");
    }

    // Naming another tenant in the header is refused to all but admin tokens.
    for (token, path, method, body) in [
        (
            &bravo_read,
            "/api/v1/incidents/inc-acme",
            Method::GET,
            vec![],
        ),
        (&bravo_read, "/api/v1/anomalies", Method::GET, vec![]),
        (
            &bravo_write,
            "/api/v1/incidents/inc-acme/transition",
            Method::POST,
            br#"{"status":"RESOLVED"}"#.to_vec(),
        ),
        (
            &bravo_ingest,
            "/api/v1/ingest/points",
            Method::POST,
            point_line("cpu", None).into_bytes(),
        ),
        (
            &bravo_ingest,
            "/api/v1/write",
            Method::POST,
            common::remote_write_body(),
        ),
        (
            &bravo_ingest,
            "/api/v1/ingest/alertmanager",
            Method::POST,
            alertmanager_body(),
        ),
    ] {
        let (code, _, v) = s
            .call(&method, path, Some(&bearer(token)), Some("acme"), &body)
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {v}");
    }
    assert_eq!(
        s.status_of("acme", "inc-acme").await,
        IncidentStatus::Detected
    );
    // An admin may act on any tenant it names, and only on valid tenant names.
    let (code, _, v) = s
        .call(
            &Method::GET,
            "/api/v1/incidents/inc-acme",
            Some(&bearer(&bravo_admin)),
            Some("acme"),
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["incident"]["tenant"], "acme");
    let (code, _, _) = s
        .call(
            &Method::GET,
            "/api/v1/incidents",
            Some(&bearer(&bravo_admin)),
            Some("no such/tenant"),
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // A point naming another tenant in its line is refused, and stored nowhere; one that
    // names none lands in the token's tenant.
    let (code, _, v) = s
        .call(
            &Method::POST,
            "/api/v1/ingest/points",
            Some(&bearer(&bravo_ingest)),
            None,
            point_line("stolen", Some("acme")).as_bytes(),
        )
        .await;
    assert!(code.is_client_error(), "{code}: {v}");
    assert_eq!(v["accepted"].as_u64().unwrap_or(0), 0, "{v}");
    let own = point_line("own", None);
    let (code, _, v) = s
        .call(
            &Method::POST,
            "/api/v1/ingest/points",
            Some(&bearer(&bravo_ingest)),
            None,
            own.as_bytes(),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    let series = |tenant: &str, name: &str| {
        MetricPoint {
            tenant: tenant.into(),
            name: name.into(),
            labels: [("host".to_string(), "h1".to_string())].into(),
            ts: 0,
            value: 0.0,
        }
        .series_id()
    };
    let mut stored = Vec::new();
    for _ in 0..200 {
        stored = s
            .store
            .points(series("bravo", "own"), 0, i64::MAX)
            .await
            .unwrap();
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored.len(), 1, "the accepted point reached the store");
    for (tenant, name) in [("acme", "stolen"), ("bravo", "stolen"), ("acme", "own")] {
        assert!(
            s.store
                .points(series(tenant, name), 0, i64::MAX)
                .await
                .unwrap()
                .is_empty(),
            "{tenant}/{name}"
        );
    }
    s.stop().await;
}

/// Runs `seismo token ...` against the server's database.
fn cli(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .arg("token")
        .args(args)
        .env("SEISMO_STORAGE__URL", &s.db_url)
        .env("USER", "carol")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `POST /api/v1/query` answers for the token's tenant only, in JSON or Arrow, refuses
/// writes and bad SQL, and takes only read tokens.
#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_for_the_tokens_tenant_only() {
    let s = start(AuthMode::On, |_| {}).await;
    let bravo_read = s.token("bravo", Role::Read, None).await;
    let bravo_ingest = s.token("bravo", Role::Ingest, None).await;
    let query = |token: String, body: Value, tenant: Option<&'static str>| {
        let s = &s;
        async move {
            s.call(
                &Method::POST,
                "/api/v1/query",
                Some(&bearer(&token)),
                tenant,
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    // Joined, nested and common-table forms all see bravo's two anomalies and one incident.
    for sql in [
        "SELECT a.id, i.id AS incident FROM anomalies a JOIN incident_anomalies m ON m.anomaly_id = a.id \
         JOIN incidents i ON i.id = m.incident_id",
        "SELECT id, (SELECT count(*) FROM incidents) AS incident FROM anomalies WHERE id IN \
         (SELECT anomaly_id FROM incident_anomalies)",
        "WITH x AS (SELECT * FROM anomalies), y AS (SELECT id FROM incidents) SELECT x.id, y.id AS incident FROM x, y",
    ] {
        let (code, headers, v) = query(bravo_read.clone(), json!({ "sql": sql }), None).await;
        assert_eq!(code, StatusCode::OK, "{sql}: {v}");
        assert_eq!(v["row_count"], 2, "{sql}: {v}");
        assert_eq!(headers["x-seismo-truncated"], "false");
        let text = v["rows"].to_string();
        assert!(!text.contains("acme"), "{sql} leaked: {text}");
    }
    let (_, headers, v) = query(
        bravo_read.clone(),
        json!({"sql": "SELECT * FROM incidents"}),
        None,
    )
    .await;
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(v["rows"][0]["id"], "inc-bravo");
    assert_eq!(v["rows"][0]["started_at"], "2023-11-14T22:13:20Z");
    // A row limit cuts the answer and says so.
    let (code, headers, v) = query(
        bravo_read.clone(),
        json!({"sql": "SELECT id FROM anomalies", "max_rows": 1}),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (v["row_count"].as_u64(), v["truncated"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(headers["x-seismo-truncated"], "true");
    // Arrow IPC: the same rows, decoded by Arrow's own reader.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/query", s.url))
        .header("authorization", bearer(&bravo_read))
        .header("accept", "application/vnd.apache.arrow.stream")
        .body(json!({"sql": "SELECT id, ts, score FROM anomalies ORDER BY ts"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = resp.bytes().await.unwrap();
    let reader =
        seismo_query::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().field(0).name(), "id");
    // Writes, other tables and bad SQL are refused with the reason.
    for sql in [
        "DELETE FROM anomalies",
        "DROP TABLE incidents",
        "SELECT * FROM api_tokens",
        "SELECT * FROM anomalies WHERE tenant = 'acme'",
        "SELEC 1",
    ] {
        let (code, _, v) = query(bravo_read.clone(), json!({ "sql": sql }), None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{sql}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let (code, _, _) = query(
        bravo_read.clone(),
        json!({"sql": "SELECT 1", "tenant": "acme"}),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "unknown fields are refused");
    // Naming another tenant takes an admin; an ingest token may not query at all.
    let (code, _, _) = query(bravo_read.clone(), json!({"sql": "SELECT 1"}), Some("acme")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _, _) = query(bravo_ingest, json!({"sql": "SELECT 1"}), None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // `seismo query` on the same database, as a tenant named on the command line.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_seismo"))
            .arg("query")
            .args(args)
            .env("SEISMO_STORAGE__URL", &s.db_url)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "SELECT id FROM incidents",
        "--tenant",
        "bravo",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], json!([{"id": "inc-bravo"}]));
    let out = cli(&[
        "SELECT i.id, count(*) AS members FROM incidents i JOIN incident_anomalies m ON m.incident_id = i.id GROUP BY i.id",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The default tenant has no incidents.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("inc-"));
    let out = cli(&["SELECT id, title FROM incidents", "--tenant", "acme"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("inc-acme") && !table.contains("inc-bravo"),
        "{table}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 row"));
    let out = cli(&["DELETE FROM incidents", "--tenant", "acme"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DML"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_transitions_are_audited_and_revocations_apply() {
    let s = start(AuthMode::On, |cfg| cfg.http.auth_cache_ms = 300).await;
    // A token from the CLI, printed once, alone on standard output.
    let (ok, out, err) = cli(
        &s,
        &[
            "create", "--tenant", "acme", "--role", "admin", "--name", "ops",
        ],
    );
    assert!(ok, "{err}");
    let admin = out.trim().to_string();
    assert!(seismo_api::auth::parse_token(&admin).is_some(), "{out}");
    assert!(err.contains(id_of(&admin)), "{err}");
    let (ok, _, err) = cli(&s, &["create", "--tenant", "bad/tenant", "--role", "read"]);
    assert!(!ok && err.contains("tenant"), "{err}");
    let (ok, _, err) = cli(&s, &["create", "--tenant", "acme", "--role", "root"]);
    assert!(!ok && err.contains("root"), "{err}");

    // A write token over the API; its secret comes back once and never again.
    let (code, _, made) = s
        .call(
            &Method::POST,
            "/api/v1/tokens",
            Some(&bearer(&admin)),
            None,
            br#"{"role":"write","name":"alice's laptop","rate_per_sec":50}"#,
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{made}");
    let writer = made["token"].as_str().unwrap().to_string();
    assert_eq!(
        (made["tenant"].as_str(), made["role"].as_str()),
        (Some("acme"), Some("write"))
    );
    let (_, listed) = s.get("/api/v1/tokens", &admin).await;
    let text = listed.to_string();
    assert!(
        text.contains(id_of(&writer)) && !text.contains(&writer[17..]),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    let (ok, out, _) = cli(&s, &["list", "--tenant", "acme"]);
    assert!(
        ok && out.contains(id_of(&writer)) && out.contains("alice's laptop"),
        "{out}"
    );
    assert!(!out.contains(&writer[17..]), "{out}");

    // A transition by a person through the write token.
    let (code, _, v) = s
        .call(
            &Method::POST,
            "/api/v1/incidents/inc-acme/transition",
            Some(&bearer(&writer)),
            None,
            br#"{"status":"ACKNOWLEDGED","actor":"alice","note":"on it"}"#,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (_, v) = s.get("/api/v1/incidents/inc-acme", &writer).await;
    let timeline = v["timeline"].as_array().unwrap();
    assert_eq!(
        timeline.last().unwrap()["actor"],
        format!("alice (token:{})", id_of(&writer))
    );

    // Revoked over the API: refused at once, cache or not.
    let (code, _, v) = s
        .call(
            &Method::DELETE,
            &format!("/api/v1/tokens/{}", id_of(&writer)),
            Some(&bearer(&admin)),
            None,
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    let (code, _) = s.get("/api/v1/incidents", &writer).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // Revoked by the CLI (another process): refused within http.auth_cache_ms.
    let (ok, out, _) = cli(&s, &["create", "--tenant", "acme", "--role", "read"]);
    assert!(ok);
    let reader = out.trim().to_string();
    assert_eq!(s.get("/api/v1/incidents", &reader).await.0, StatusCode::OK);
    let (ok, out, err) = cli(&s, &["revoke", id_of(&reader)]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let (ok, _, err) = cli(&s, &["revoke", "00000000dead"]);
    assert!(!ok && err.contains("no token"), "{err}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.get("/api/v1/incidents", &reader).await.0,
        StatusCode::UNAUTHORIZED
    );

    // The audit log tells it all, newest first, page by page.
    let mut entries: Vec<Value> = Vec::new();
    let mut path = "/api/v1/audit?limit=2".to_string();
    loop {
        let (code, v) = s.get(&path, &admin).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        entries.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/audit?limit=2&cursor={c}"),
            None => break,
        }
    }
    let seen: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let by_admin = format!("token:{}", id_of(&admin));
    let s3 = |a: &str, t: &str, b: &str| (a.to_string(), t.to_string(), b.to_string());
    assert_eq!(
        seen,
        [
            s3("token.revoke", id_of(&reader), "cli:carol"),
            s3("token.create", id_of(&reader), "cli:carol"),
            s3("token.revoke", id_of(&writer), &by_admin),
            s3(
                "incident.transition",
                "inc-acme",
                &format!("token:{}", id_of(&writer))
            ),
            s3("token.create", id_of(&writer), &by_admin),
            s3("token.create", id_of(&admin), "cli:carol"),
        ]
    );
    let transition = &entries[3]["detail"];
    assert_eq!(
        (
            &transition["from"],
            &transition["to"],
            &transition["person"],
            &transition["note"]
        ),
        (
            &json!("DETECTED"),
            &json!("ACKNOWLEDGED"),
            &json!("alice"),
            &json!("on it")
        )
    );
    // Reading it needs admin, and time bounds apply.
    let (ok, out, _) = cli(&s, &["create", "--tenant", "acme", "--role", "write"]);
    assert!(ok);
    assert_eq!(
        s.get("/api/v1/audit", out.trim()).await.0,
        StatusCode::FORBIDDEN
    );
    let (code, v) = s.get("/api/v1/audit?to=1000", &admin).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_beyond_a_tokens_rate_is_429_with_retry_after() {
    let s = start(AuthMode::On, |cfg| cfg.http.ingest_rate_per_token = 5.0).await;
    // Its own rate: 10 points per second, bursts of 20.
    let own = s.token("acme", Role::Ingest, Some(10.0)).await;
    // The server's default: 5 per second, bursts of 10.
    let default = s.token("acme", Role::Ingest, None).await;
    let lines =
        |n: usize, name: &str| -> String { (0..n).map(|_| point_line(name, None)).collect() };
    let post = |token: String, body: String| {
        let s = &s;
        async move {
            s.call(
                &Method::POST,
                "/api/v1/ingest/points",
                Some(&bearer(&token)),
                None,
                body.as_bytes(),
            )
            .await
        }
    };
    let (code, _, v) = post(own.clone(), lines(20, "a")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    let (code, headers, v) = post(own.clone(), lines(5, "a")).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Budgets are per token: another token of the same tenant still has its own.
    let (code, _, v) = post(default.clone(), lines(10, "b")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    let (code, headers, _) = post(default.clone(), lines(3, "b")).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    // The budget comes back at the token's rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _, v) = post(own, lines(5, "a")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_off_serves_anonymous_admins_of_the_named_tenant() {
    let s = start(AuthMode::Off, |_| {}).await;
    let token = s.token("acme", Role::Read, None).await;
    // Tokens exist, yet nothing asks for one.
    let (code, _, v) = s
        .call(
            &Method::GET,
            "/api/v1/incidents/inc-bravo",
            None,
            Some("bravo"),
            b"",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, _, v) = s
        .call(
            &Method::POST,
            "/api/v1/incidents/inc-acme/transition",
            None,
            Some("acme"),
            br#"{"status":"ACKNOWLEDGED","actor":"bob"}"#,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    // A token changes nothing either: without a header the tenant is `default`.
    let (code, _) = s.get("/api/v1/incidents/inc-acme", &token).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _, v) = s
        .call(&Method::GET, "/api/v1/incidents", None, None, b"")
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
    let entries = s.store.list_audit(&audit_q("acme")).await.unwrap().items;
    assert_eq!(entries[0].record.actor, "anonymous");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_is_open_on_loopback_only_until_a_token_exists() {
    // Undecided `auto` (the router built without `auth_mode`): the first request decides,
    // and a token made before it turns authentication on.
    let s = start(AuthMode::Auto, |_| {}).await;
    let token = s.token("acme", Role::Read, None).await;
    let (code, _, _) = s
        .call(&Method::GET, "/api/v1/incidents", None, None, b"")
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/api/v1/incidents", &token).await.0, StatusCode::OK);
    s.stop().await;

    let s = start(AuthMode::Auto, |_| {}).await;
    let (code, _, _) = s
        .call(&Method::GET, "/api/v1/incidents", None, None, b"")
        .await;
    assert_eq!(code, StatusCode::OK, "loopback, no token: open");
    // Decided once: a token created later does not close it until a restart.
    s.token("acme", Role::Read, None).await;
    let (code, _, _) = s
        .call(&Method::GET, "/api/v1/incidents", None, None, b"")
        .await;
    assert_eq!(code, StatusCode::OK);

    // What `seismo run` decides at start.
    let mut cfg = Config::default();
    let loopback = "127.0.0.1:8080".parse().unwrap();
    let anywhere = "0.0.0.0:8080".parse().unwrap();
    let empty = {
        let mut c = Config::default();
        c.storage.url = "sqlite::memory:".into();
        pipeline::open_store(&c).await.unwrap()
    };
    let decide = |cfg: &Config, store: Arc<dyn Store>, at| {
        let cfg = cfg.clone();
        async move { seismo::http::auth_mode(&cfg, store.as_ref(), at).await }
    };
    assert_eq!(
        decide(&cfg, empty.clone(), loopback).await.unwrap(),
        AuthMode::Off
    );
    let err = decide(&cfg, empty.clone(), anywhere)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seismo token create") && err.contains("http.auth = \"off\""),
        "{err}"
    );
    assert_eq!(
        decide(&cfg, s.store.clone(), loopback).await.unwrap(),
        AuthMode::On
    );
    assert_eq!(
        decide(&cfg, s.store.clone(), anywhere).await.unwrap(),
        AuthMode::On
    );
    cfg.http.auth = AuthMode::Off;
    assert_eq!(
        decide(&cfg, empty.clone(), anywhere).await.unwrap(),
        AuthMode::Off
    );
    cfg.http.auth = AuthMode::On;
    assert_eq!(decide(&cfg, empty, loopback).await.unwrap(), AuthMode::On);
    s.stop().await;
}

#[test]
fn run_refuses_to_serve_an_open_api_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .arg("run")
        .env(
            "SEISMO_STORAGE__URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .env("SEISMO_BUS__DIR", dir.path().join("bus"))
        .env("SEISMO_HTTP__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("seismo token create") && err.contains("http.auth"),
        "{err}"
    );
    // Nothing was started: no bus was created.
    assert!(!dir.path().join("bus").exists());
}
