//! `seismo report weekly` on the demo's data: every figure agrees with what the API answers
//! for the same week, and the files it writes hold the charts.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use seismo::Config;
use seismo::demo::{self, DemoOptions};
use seismo::pipeline;
use seismo::report::{self, ReportOptions};
use serde_json::Value;

/// Every item of an API listing, following its cursors.
async fn all_items(client: &reqwest::Client, base: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}{path}&limit=1000&cursor={c}"),
            None => format!("{base}{path}&limit=1000"),
        };
        let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weekly_report_agrees_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.storage.url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    let store = pipeline::open_store(&cfg).await.unwrap();
    let opts = DemoOptions {
        days: 2,
        seed: 5,
        progress: false,
        no_graph: false,
    };
    let (summary, _) = demo::run(&cfg, Arc::clone(&store), &opts).await.unwrap();
    assert!(summary.incidents > 0);
    let fleet = demo::fleet::Fleet::demo(2);
    let to = Utc.timestamp_millis_opt(fleet.start_ms).unwrap() + Duration::days(2);
    let w = report::weekly(
        store.as_ref(),
        &ReportOptions {
            tenant: "default".into(),
            to,
            service_label: cfg.correlate.service_label.clone(),
            top: 10,
        },
    )
    .await
    .unwrap();

    // The API over the same week.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    let server = tokio::spawn(seismo::http::serve(
        listener,
        seismo::http::router(&cfg, None, Some(store.clone()), Default::default()),
        async move { stop.cancelled().await },
        seismo::http::HttpLimits::from_config(&cfg),
    ));
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let window = format!(
        "?from={}&to={}",
        w.from.timestamp_millis(),
        w.to.timestamp_millis()
    );
    let anomalies = all_items(&client, &base, &format!("/api/v1/anomalies{window}")).await;
    let (predicted, happened): (Vec<&Value>, Vec<&Value>) =
        anomalies.iter().partition(|a| a["kind"] == "predicted");
    assert_eq!(w.anomalies, happened.len() as u64);
    assert!(w.anomalies > 0);
    let mut by_service: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_series: BTreeMap<String, u64> = BTreeMap::new();
    for a in &happened {
        let s = a["labels"]["service"]
            .as_str()
            .unwrap_or("(none)")
            .to_string();
        *by_service.entry(s).or_default() += 1;
        *by_series
            .entry(a["series_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(w.anomalies_by_service, by_service);
    assert_eq!(
        w.anomalies_by_day
            .values()
            .flat_map(|m| m.values())
            .sum::<u64>(),
        w.anomalies
    );
    for n in &w.noisiest {
        assert_eq!(by_series[&n.series_id], n.anomalies, "{}", n.series_id);
    }
    let top = by_series.values().max().unwrap();
    assert_eq!(w.noisiest[0].anomalies, *top);
    // The demo's memory limit is forecast to be crossed: a capacity warning.
    assert!(!w.capacity.is_empty(), "no capacity warning: {predicted:?}");
    for c in &w.capacity {
        assert!(
            predicted
                .iter()
                .any(|p| p["series_id"] == c.series_id.as_str()
                    && p["explanation"]["breach"]["threshold"] == c.threshold.as_str())
        );
    }
    let incidents = all_items(&client, &base, &format!("/api/v1/incidents{window}")).await;
    assert_eq!(w.incidents.len(), incidents.len());
    for row in &w.incidents {
        let api = incidents
            .iter()
            .find(|i| i["id"] == row.id.as_str())
            .unwrap();
        assert_eq!(api["severity"], row.severity.as_str());
        assert_eq!(api["status"], row.status.as_str());
        let started =
            chrono::DateTime::parse_from_rfc3339(api["started_at"].as_str().unwrap()).unwrap();
        let resolved = api["resolved_at"]
            .as_str()
            .map(|r| chrono::DateTime::parse_from_rfc3339(r).unwrap());
        assert_eq!(
            row.resolve_secs,
            resolved.map(|r| (r - started).num_milliseconds() as f64 / 1000.0)
        );
    }
    assert_eq!(
        w.time_to_resolve.count,
        incidents
            .iter()
            .filter(|i| !i["resolved_at"].is_null())
            .count()
    );
    token.cancel();
    server.await.unwrap().unwrap();

    // The files: Markdown and HTML with the charts, and the figures as JSON.
    let out = dir.path().join("report");
    report::write(&w, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("![Anomalies per day, by service](anomalies-per-day.svg)"));
    assert!(md.contains(&format!("**{} anomalies**", w.anomalies)));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2);
    let chart = std::fs::read_to_string(out.join("anomalies-per-day.svg")).unwrap();
    // The busiest services have a colour each; beyond eight, the rest stack as "other".
    let mut busiest: Vec<(&String, &u64)> = w.anomalies_by_service.iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let named = if busiest.len() > 8 { 7 } else { busiest.len() };
    for (service, _) in &busiest[..named] {
        assert!(
            chart.contains(&format!(">{service}</text>")),
            "legend lacks {service}"
        );
    }
    if busiest.len() > 8 {
        assert!(chart.contains(&format!(">other ({})</text>", busiest.len() - 7)));
    }
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["anomalies"], w.anomalies);
}
