//! `seismo eval explain`: the explainer on simulated incidents of the demo fleet with injected causes, scored without an LLM judge.
//!
//! Each case is one incident of the demo fleet (its services, hosts, metrics and
//! dependency graph). A strong case injects a fault in one service as the simulator's
//! effects do (latency that spreads to every caller, errors that spread, a memory leak or
//! CPU saturation on one host), adds unrelated noise anomalies and sometimes a firing
//! alert or a deploy; its root-cause candidates come from correlate's own ranking
//! ([`seismo_correlate::rank::rank`]) of the changes, not from the truth. A weak case has
//! only one or two signals, or several small changes (below an ordinary bad minute) on
//! unrelated services. The anomalies are made at the incident level rather than detected
//! from simulated minutes, so forty cases take seconds plus the model's time.
//!
//! With `--demo-seeds N` the incidents of N whole demo runs join them: the simulator's
//! telemetry through detection and correlation, each incident scored against the
//! injected fault it matched (or as weak evidence when it matched none).
#![expect(
    clippy::disallowed_methods,
    reason = "evaluations report their wall time"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use seismo_correlate::rank::{self, Change, Evidence, Graph, MetricRole};
use seismo_explain::{ExplainConfig, Explainer, Source};
use seismo_schemas::{
    Anomaly, AnomalyKind, Explanation, Incident, IncidentEvent, IncidentEventKind, IncidentStatus,
    Labels, Severity,
};
use seismo_store::{IncidentWrite, SqliteStore, Store};
use serde::Serialize;

use crate::demo::fleet::Fleet;

/// What a case injected.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    /// `service=x` for a strong case; `None` for weak evidence.
    pub cause: Option<String>,
    pub fault: String,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub incident_id: String,
    pub truth: Truth,
    pub source: String,
    pub fallback: Option<String>,
    /// Model calls that returned a schema-valid answer, and calls made.
    pub valid_calls: u32,
    pub calls: u32,
    /// Mentions and violations in what the model (or template) wrote.
    pub mentions: u64,
    pub violations: u64,
    /// The same, checked again on the explanation as delivered (after unsupported
    /// sentences were dropped): what users read.
    pub delivered_mentions: u64,
    pub delivered_violations: u64,
    pub inconclusive: bool,
    pub top_cause: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub summary: String,
    /// The model's last schema-valid answer, before grounding.
    pub raw_answer: Option<String>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: Option<String>,
    pub cases: Vec<CaseResult>,
    pub strong: usize,
    pub weak: usize,
    pub schema_valid: f64,
    pub violations_per_mention: f64,
    pub delivered_violations_per_mention: f64,
    pub top_cause_accuracy: f64,
    pub abstained_weak: f64,
    pub abstained_strong: f64,
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
    pub tokens_per_incident: f64,
    pub cost_per_incident_usd: f64,
}

const FAULTS: [&str; 4] = ["latency", "errors", "memory", "cpu"];

/// What one made-up anomaly shows.
struct Shape<'a> {
    service: &'a str,
    host: &'a str,
    metric: &'a str,
    expected: f64,
    factor: f64,
    score: f64,
}

fn anomaly(series: usize, ts_ms: i64, s: &Shape<'_>) -> Anomaly {
    let Shape {
        service,
        host,
        metric,
        expected,
        factor,
        score,
    } = *s;
    let labels: Labels = [
        ("service".to_string(), service.to_string()),
        ("host".to_string(), host.to_string()),
    ]
    .into();
    let observed = expected * factor;
    let band = expected * 0.3;
    Anomaly {
        id: Anomaly::make_id(series as u64, ts_ms, "eval"),
        tenant: "default".into(),
        series_id: series as u64,
        name: metric.into(),
        labels,
        ts: Utc.timestamp_millis_opt(ts_ms).unwrap(),
        observed,
        expected,
        lower: expected - band,
        upper: expected + band,
        score,
        severity: if score > 0.9 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        kind: if factor > 3.0 {
            AnomalyKind::LevelShift
        } else {
            AnomalyKind::Point
        },
        detector: "eval".into(),
        explanation: Explanation {
            z_score: (observed - expected) / (band / 3.0).max(1e-12),
            summary: String::new(),
            ..Default::default()
        },
    }
}

/// The metric a fault moves and its ordinary value.
fn metric_of(fault: &str) -> (&'static str, f64) {
    match fault {
        "latency" => ("http_request_duration_p99_seconds", 0.04),
        "errors" => ("http_errors_ratio", 0.002),
        "memory" => ("memory_used_bytes", 2.0e9),
        _ => ("cpu_utilization", 0.35),
    }
}

/// Builds case `i`: its incident, anomalies, events and truth.
fn case(
    fleet: &Fleet,
    graph: &Graph,
    i: usize,
    weak: bool,
    rng: &mut SmallRng,
) -> (IncidentWrite, Vec<Anomaly>, Truth) {
    let services: Vec<&str> = fleet.services.iter().map(|s| s.name).collect();
    let t0 = fleet.start_ms + 2 * 86_400_000 + i as i64 * 3_600_000;
    let mut anomalies = Vec::new();
    let mut evidence = Vec::new();
    let mut events = Vec::new();
    let id = format!("eval-{i:03}");
    let mut k = 0;
    let mut add = |anoms: &mut Vec<Anomaly>,
                   ev: &mut Vec<Evidence>,
                   service: &str,
                   fault: &str,
                   factor: f64,
                   size: f64,
                   score: f64,
                   rng: &mut SmallRng| {
        let (metric, expected) = metric_of(fault);
        let host = format!("{service}-{}", rng.random_range(1..=3));
        k += 1;
        anoms.push(anomaly(
            i * 1000 + k,
            t0 + k as i64 * 60_000,
            &Shape {
                service,
                host: &host,
                metric,
                expected,
                factor,
                score,
            },
        ));
        ev.push(Evidence {
            service: service.to_string(),
            metric: metric.to_string(),
            role: MetricRole::of(metric),
            change: Change {
                size,
                before: expected,
                after: expected * factor,
                onset_ms: Some(t0 + k as i64 * 60_000),
            },
            falling: false,
        });
    };
    let truth = if weak {
        let n = if rng.random_bool(0.5) {
            rng.random_range(1..=2)
        } else {
            rng.random_range(3..=4)
        };
        for _ in 0..n {
            let s = services[rng.random_range(0..services.len())];
            let f = FAULTS[rng.random_range(0..FAULTS.len())];
            // Small: within what the series does on an ordinary bad minute.
            let size = rng.random_range(0.2..0.9);
            add(
                &mut anomalies,
                &mut evidence,
                s,
                f,
                1.0 + size * 0.5,
                size,
                rng.random_range(0.6..0.8),
                rng,
            );
        }
        Truth {
            cause: None,
            fault: format!("weak evidence ({n} small changes)"),
        }
    } else {
        let s = services[rng.random_range(0..services.len())];
        let f = FAULTS[rng.random_range(0..FAULTS.len())];
        let size = rng.random_range(3.0..10.0);
        let factor = match f {
            "latency" => rng.random_range(3.0..10.0),
            "errors" => rng.random_range(10.0..40.0),
            "memory" => rng.random_range(1.3..1.8),
            _ => rng.random_range(2.0..2.8),
        };
        for _ in 0..rng.random_range(2..=3) {
            add(
                &mut anomalies,
                &mut evidence,
                s,
                f,
                factor,
                size,
                rng.random_range(0.9..0.99),
                rng,
            );
        }
        // Latency and errors spread to the callers, smaller.
        if matches!(f, "latency" | "errors") {
            for c in fleet.callers(s).into_iter().take(3) {
                add(
                    &mut anomalies,
                    &mut evidence,
                    c,
                    f,
                    1.0 + (factor - 1.0) * 0.5,
                    size * 0.6,
                    rng.random_range(0.8..0.95),
                    rng,
                );
            }
        }
        // Unrelated noise.
        for _ in 0..rng.random_range(0..=2) {
            let n = services[rng.random_range(0..services.len())];
            let nf = FAULTS[rng.random_range(0..FAULTS.len())];
            add(&mut anomalies, &mut evidence, n, nf, 1.3, 0.5, 0.6, rng);
        }
        if rng.random_bool(0.4) {
            events.push(IncidentEvent {
                id: format!("{id}-firing"),
                incident_id: id.clone(),
                ts: Utc.timestamp_millis_opt(t0 + 120_000).unwrap(),
                kind: IncidentEventKind::AlertFiring,
                actor: "alertmanager".into(),
                message: format!(
                    "High{}/{s} firing: {s} {f} above threshold",
                    f.to_uppercase()
                ),
                from_status: None,
                to_status: None,
            });
        }
        if rng.random_bool(0.3) {
            events.push(IncidentEvent {
                id: format!("{id}-deploy"),
                incident_id: id.clone(),
                ts: Utc.timestamp_millis_opt(t0 - 300_000).unwrap(),
                kind: IncidentEventKind::AlertFiring,
                actor: "ci".into(),
                message: format!("Deploy firing: {s} deployed version 2.{i}.0"),
                from_status: None,
                to_status: None,
            });
        }
        Truth {
            cause: Some(format!("service={s}")),
            fault: format!("{f} on {s}"),
        }
    };
    let mut candidates = rank::rank(graph, &evidence, None);
    candidates.truncate(5);
    for c in &mut candidates {
        c.target = format!("service={}", c.target);
    }
    let at = Utc.timestamp_millis_opt(t0).unwrap();
    events.push(IncidentEvent {
        id: format!("{id}-created"),
        incident_id: id.clone(),
        ts: at,
        kind: IncidentEventKind::Created,
        actor: "seismo".into(),
        message: "opened".into(),
        from_status: None,
        to_status: Some(IncidentStatus::Detected),
    });
    let top = anomalies
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .expect("a case has anomalies");
    let incident = Incident {
        id: id.clone(),
        tenant: "default".into(),
        title: format!(
            "{} anomalous on {}",
            top.name,
            top.labels.get("service").cloned().unwrap_or_default()
        ),
        status: IncidentStatus::Detected,
        severity: top.severity,
        started_at: at,
        updated_at: at,
        resolved_at: None,
        scope: BTreeMap::new(),
        root_cause_candidates: candidates,
        anomaly_ids: Vec::new(),
        alert_fingerprints: Vec::new(),
    };
    let write = IncidentWrite {
        incident,
        new_anomaly_ids: anomalies.iter().map(|a| a.id.clone()).collect(),
        new_alert_fingerprints: Vec::new(),
        events,
    };
    (write, anomalies, truth)
}

fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let idx = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

/// Explains one stored incident and scores the explanation against `truth`.
async fn score(
    explainer: &Explainer,
    store: &Arc<dyn Store>,
    tenant: &str,
    incident_id: &str,
    truth: Truth,
) -> anyhow::Result<CaseResult> {
    let started = Instant::now();
    let e = explainer.explain(tenant, incident_id, true).await?;
    let wall = started.elapsed().as_millis() as u64;
    let calls = store.incident_llm_calls(tenant, incident_id).await?;
    // What users read, checked against the facts once more.
    let incident = store.get_incident(tenant, incident_id).await?;
    let (pack, _) = explainer.pack(&incident).await?;
    let mut delivered = seismo_explain::ground::Grounding::default();
    for text in std::iter::once(&e.summary)
        .chain(e.hypotheses.iter().map(|h| &h.text))
        .chain(&e.next_checks)
    {
        delivered.add(seismo_explain::ground::check(&pack.pseudonyms.hide(text), &pack).1);
    }
    Ok(CaseResult {
        incident_id: incident_id.to_string(),
        truth,
        source: e.source.as_str().into(),
        fallback: e.fallback.clone(),
        valid_calls: calls.iter().filter(|c| c.outcome == "ok").count() as u32,
        calls: calls.len() as u32,
        mentions: e.grounding.mentions,
        violations: e.grounding.violations,
        delivered_mentions: delivered.mentions,
        delivered_violations: delivered.violations,
        inconclusive: e.inconclusive,
        top_cause: e.hypotheses.first().map(|h| h.cause.clone()),
        input_tokens: e.usage.input_tokens,
        output_tokens: e.usage.output_tokens,
        cost_usd: e.usage.cost_usd,
        latency_ms: if e.source == Source::Model {
            e.usage.latency_ms
        } else {
            wall
        },
        summary: e.summary.clone(),
        raw_answer: calls.iter().rev().find_map(|c| c.answer.clone()),
    })
}

fn show(r: &CaseResult) {
    eprintln!(
        "  {:<22} {:<36} {:<8} {:>6} ms  {}",
        r.incident_id,
        r.truth.fault,
        r.source,
        r.latency_ms,
        r.top_cause
            .as_deref()
            .unwrap_or(if r.inconclusive { "inconclusive" } else { "-" })
    );
}

/// Runs `cases` simulated incidents (a quarter of them weak) from `seed`, then the
/// incidents of `demo_seeds` runs of the demo (seeds 1..=demo_seeds, the whole pipeline on
/// the simulator's telemetry; an incident matching an injected fault has that fault's
/// service as its cause, one matching none is weak evidence), through an explainer
/// configured by `cfg` (a model when `cfg.model.base_url` is set, the template otherwise).
pub async fn run(
    mut cfg: ExplainConfig,
    cases: usize,
    seed: u64,
    demo_seeds: u64,
    progress: bool,
) -> anyhow::Result<Report> {
    let fleet = Fleet::demo(3);
    let deps = fleet.dependencies();
    let graph = Graph::new(&deps);
    let store = SqliteStore::connect("sqlite::memory:").await?;
    store.migrate().await?;
    let store: Arc<dyn Store> = Arc::new(store);
    // The eval measures the model: no budget cuts it short, and hosts are pseudonymised
    // so that path is measured too.
    cfg.daily_token_budget = 0;
    if cfg.pseudonymise_labels.is_empty() {
        cfg.pseudonymise_labels = vec!["host".into()];
    }
    let model = (!cfg.model.base_url.is_empty()).then(|| cfg.model.model.clone());
    let explainer = Explainer::new(cfg.clone(), deps.clone(), "service".into(), store.clone())
        .map_err(anyhow::Error::msg)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let weak_every = 4;
    let mut results = Vec::new();
    for i in 0..cases {
        let weak = i % weak_every == weak_every - 1;
        let (write, anomalies, truth) = case(&fleet, &graph, i, weak, &mut rng);
        store.insert_anomalies(&anomalies).await?;
        store.write_incidents(std::slice::from_ref(&write)).await?;
        let r = score(&explainer, &store, "default", &write.incident.id, truth).await?;
        if progress {
            show(&r);
        }
        results.push(r);
    }
    for demo_seed in 1..=demo_seeds {
        let dir = tempfile::Builder::new()
            .prefix("seismo-eval-explain")
            .tempdir()?;
        let mut base = crate::Config::default();
        base.storage.url = format!("sqlite://{}", dir.path().join("demo.db").display());
        // The pipeline's own explain stage is off: the eval explains each incident itself.
        base.explain.enabled = false;
        let demo_store = crate::pipeline::open_store(&base).await?;
        let (summary, _) = crate::demo::run(
            &base,
            demo_store.clone(),
            &crate::demo::DemoOptions {
                days: 3,
                seed: demo_seed,
                progress: false,
                no_graph: false,
            },
        )
        .await?;
        let explainer = Explainer::new(
            cfg.clone(),
            deps.clone(),
            "service".into(),
            demo_store.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let mut ids: Vec<(String, Truth)> = Vec::new();
        for f in &summary.faults {
            for id in &f.incidents {
                ids.push((
                    id.clone(),
                    Truth {
                        cause: Some(format!("service={}", f.service)),
                        fault: format!("demo {demo_seed}: {}", f.name),
                    },
                ));
            }
        }
        for id in &summary.unexplained_incident_ids {
            ids.push((
                id.clone(),
                Truth {
                    cause: None,
                    fault: format!("demo {demo_seed}: false alarm"),
                },
            ));
        }
        for (id, truth) in ids {
            let r = score(&explainer, &demo_store, &fleet.tenant, &id, truth).await?;
            if progress {
                show(&r);
            }
            results.push(r);
        }
    }
    let strong: Vec<&CaseResult> = results.iter().filter(|r| r.truth.cause.is_some()).collect();
    let weak: Vec<&CaseResult> = results.iter().filter(|r| r.truth.cause.is_none()).collect();
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let calls: u32 = results.iter().map(|r| r.calls).sum();
    let valid: u32 = results.iter().map(|r| r.valid_calls).sum();
    let mentions: u64 = results.iter().map(|r| r.mentions).sum();
    let violations: u64 = results.iter().map(|r| r.violations).sum();
    let d_mentions: u64 = results.iter().map(|r| r.delivered_mentions).sum();
    let d_violations: u64 = results.iter().map(|r| r.delivered_violations).sum();
    let latencies: Vec<u64> = results.iter().map(|r| r.latency_ms).collect();
    let n = results.len().max(1) as f64;
    let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Report {
        model,
        strong: strong.len(),
        weak: weak.len(),
        // Without a model every answer is the template's, valid by construction.
        schema_valid: if calls == 0 {
            1.0
        } else {
            f64::from(valid) / f64::from(calls)
        },
        violations_per_mention: per(violations, mentions),
        delivered_violations_per_mention: per(d_violations, d_mentions),
        top_cause_accuracy: ratio(
            strong
                .iter()
                .filter(|r| r.top_cause.is_some() && r.top_cause == r.truth.cause)
                .count(),
            strong.len(),
        ),
        abstained_weak: ratio(weak.iter().filter(|r| r.inconclusive).count(), weak.len()),
        abstained_strong: ratio(
            strong.iter().filter(|r| r.inconclusive).count(),
            strong.len(),
        ),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p95_ms: percentile(&latencies, 0.95),
        tokens_per_incident: results
            .iter()
            .map(|r| (r.input_tokens + r.output_tokens) as f64)
            .sum::<f64>()
            / n,
        cost_per_incident_usd: results.iter().map(|r| r.cost_usd).sum::<f64>() / n,
        cases: results,
    })
}

/// The report as the terminal shows it.
pub fn render(r: &Report) -> String {
    let strong_ok = (r.top_cause_accuracy * r.strong as f64).round();
    format!(
        "explain eval: {} cases ({} with an injected cause, {} with weak evidence), explained by {}\n\
         \x20 schema-valid answers:          {:.1} %\n\
         \x20 grounding violations:          {:.2} % of {} mentions as written; {:.2} % of {} as delivered\n\
         \x20 top hypothesis = injected cause: {:.1} % ({strong_ok} of {})\n\
         \x20 abstained on weak evidence:    {:.1} %; on strong evidence {:.1} %\n\
         \x20 latency per incident:          p50 {} ms, p95 {} ms\n\
         \x20 tokens per incident:           {:.0} (cost {:.6} USD)\n",
        r.cases.len(),
        r.strong,
        r.weak,
        r.model
            .as_deref()
            .map_or("the template (no model)".to_string(), |m| format!(
                "model {m}"
            )),
        r.schema_valid * 100.0,
        r.violations_per_mention * 100.0,
        r.cases.iter().map(|c| c.mentions).sum::<u64>(),
        r.delivered_violations_per_mention * 100.0,
        r.cases.iter().map(|c| c.delivered_mentions).sum::<u64>(),
        r.top_cause_accuracy * 100.0,
        r.strong,
        r.abstained_weak * 100.0,
        r.abstained_strong * 100.0,
        r.latency_p50_ms,
        r.latency_p95_ms,
        r.tokens_per_incident,
        r.cost_per_incident_usd,
    )
}
