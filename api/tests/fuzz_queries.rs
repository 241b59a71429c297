//! Property tests of the query API's parsers: generated query strings, cursors, incident ids and transition bodies never make a handler panic or answer 500, and whatever is refused is refused with a JSON error.
//!
//! Cases: `PROPTEST_CASES` (default 256); e.g. `PROPTEST_CASES=1000000 cargo test
//! --release -p seismo-api --test fuzz_queries`.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use proptest::prelude::*;
use seismo_api::{ApiState, router};
use seismo_schemas::{Anomaly, AnomalyKind, Explanation, Labels, Severity};
use seismo_store::{SqliteStore, Store};
use tower::ServiceExt;

/// One runtime and one seeded router for every case: building them per case would make
/// the cases, not the parsers, the cost.
fn fixture() -> &'static (tokio::runtime::Runtime, axum::Router, String) {
    static F: OnceLock<(tokio::runtime::Runtime, axum::Router, String)> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (app, cursor) = rt.block_on(async {
            let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
            store.migrate().await.unwrap();
            let store: Arc<dyn Store> = Arc::new(store);
            let anomalies: Vec<Anomaly> = (0..30i64)
                .map(|i| Anomaly {
                    id: Anomaly::make_id(i as u64, i, "fuzz"),
                    tenant: "default".into(),
                    series_id: i as u64,
                    name: "latency".into(),
                    labels: Labels::from([("service".to_string(), format!("s{}", i % 3))]),
                    ts: Utc.timestamp_opt(1_700_000_000 + i * 60, 0).unwrap(),
                    observed: 2.0,
                    expected: 1.0,
                    lower: 0.5,
                    upper: 1.5,
                    score: i as f64 / 30.0,
                    severity: Severity::Warning,
                    kind: AnomalyKind::Point,
                    detector: "fuzz".into(),
                    explanation: Explanation::default(),
                })
                .collect();
            store.insert_anomalies(&anomalies).await.unwrap();
            let app = router(ApiState::new(store));
            // A real cursor, for mutations that stay close to valid ones.
            let (_, body) = call(&app, "GET", "/api/v1/anomalies?limit=5", "").await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let cursor = v["next_cursor"].as_str().unwrap().to_string();
            (app, cursor)
        });
        (rt, app, cursor)
    })
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// Percent-encodes every byte outside unreserved characters, so any generated string can
/// ride in a query.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Values that stress the parsers: numbers at and beyond the edges, dates, labels with
/// odd separators, and arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-0".to_string()),
        Just("9".repeat(40)),
        (0i64..5_000_000_000_000i64).prop_map(|ms| ms.to_string()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?",
        "[a-z:=,]{0,12}",
        ".{0,40}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("from"),
        Just("to"),
        Just("label"),
        Just("min_score"),
        Just("series_id"),
        Just("limit"),
        Just("cursor"),
        Just("status"),
        Just("severity"),
        Just("unknown"),
    ]
    .prop_map(str::to_string)
}

/// A cursor: arbitrary text, or a real one with a few bytes changed, cut or extended.
fn cursor() -> impl Strategy<Value = String> {
    let real = fixture().2.clone();
    let len = real.len();
    prop_oneof![
        ".{0,60}",
        (0..len, any::<u8>()).prop_map(move |(at, b)| {
            let mut c = real.clone().into_bytes();
            c[at] = b'!' + b % 90;
            String::from_utf8_lossy(&c).into_owned()
        }),
        (0..len).prop_map({
            let real = fixture().2.clone();
            move |at| real[..at].to_string()
        }),
        "[A-Za-z0-9_-]{0,80}".prop_map({
            let real = fixture().2.clone();
            move |tail| format!("{real}{tail}")
        }),
    ]
}

/// What any request must get: an answer other than 500, and a JSON body when refused.
fn check(status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(body)
    );
    if status.is_client_error() && status != StatusCode::METHOD_NOT_ALLOWED {
        prop_assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "{status}: {}",
            String::from_utf8_lossy(body)
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn listing_queries_never_fail(
        path in prop_oneof![Just("/api/v1/anomalies"), Just("/api/v1/incidents")],
        pairs in proptest::collection::vec((key(), value()), 0..6),
    ) {
        let (rt, app, _) = fixture();
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let uri = format!("{path}?{}", query.join("&"));
        let (status, body) = rt.block_on(call(app, "GET", &uri, ""));
        check(status, &body)?;
    }

    #[test]
    fn cursors_never_fail(c in cursor(), limit in 0u32..12) {
        let (rt, app, _) = fixture();
        let uri = format!("/api/v1/anomalies?limit={limit}&cursor={}", encode(&c));
        let (status, body) = rt.block_on(call(app, "GET", &uri, ""));
        check(status, &body)?;
    }

    #[test]
    fn incident_ids_and_transitions_never_fail(
        id in ".{1,80}",
        body in prop_oneof![
            ".{0,200}",
            (
                prop_oneof![Just("ACKNOWLEDGED"), Just("RESOLVED"), Just("nope"), Just("")],
                ".{0,300}",
                ".{0,300}",
            )
                .prop_map(|(s, actor, note)| serde_json::json!({"status": s, "actor": actor, "note": note}).to_string()),
        ],
    ) {
        let (rt, app, _) = fixture();
        let id = encode(&id);
        let (status, out) = rt.block_on(call(app, "GET", &format!("/api/v1/incidents/{id}"), ""));
        check(status, &out)?;
        let (status, out) = rt.block_on(call(
            app,
            "POST",
            &format!("/api/v1/incidents/{id}/transition"),
            &body,
        ));
        check(status, &out)?;
    }
}
