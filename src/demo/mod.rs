//! `seismo demo`: a simulated fleet with injected faults through the whole embedded pipeline.
#![expect(clippy::disallowed_methods, reason = "the demo reports its wall time")]

pub mod fleet;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use seismo_schemas::{
    AlertStatus, AlertmanagerAlert, AlertmanagerWebhook, IncidentEventKind, Labels, topics,
};
use seismo_store::Store;
use seismo_transport::{OutRecord, Producer};
use serde::Serialize;

pub use fleet::{Fault, Fleet, Simulator};

use crate::Config;
use crate::pipeline::{Embedded, PipelineStats};

/// A tick's points as JSON lines, the way a producer would send them.
fn encode_lines(points: &[seismo_schemas::MetricPoint]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 160);
    for p in points {
        serde_json::to_writer(&mut out, p).expect("points serialise");
        out.push(b'\n');
    }
    out
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub days: u64,
    pub seed: u64,
    pub progress: bool,
    /// Leave the fleet's dependency graph out of the configuration: correlation groups by
    /// learned co-occurrence, as for a user who configured no graph.
    pub no_graph: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            days: 3,
            seed: 42,
            progress: true,
            no_graph: false,
        }
    }
}

/// What happened to one injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    pub name: String,
    pub service: String,
    pub onset: DateTime<Utc>,
    pub caught: bool,
    /// Seconds of stream time from onset until an incident held one of its signals.
    pub detection_delay_s: Option<f64>,
    pub incidents: Vec<String>,
    /// The top-ranked root-cause candidate of the first matching incident.
    pub root_cause: Option<String>,
}

/// The demo's summary (`--summary-json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub points: u64,
    pub series: usize,
    pub wall_s: f64,
    pub points_per_s: f64,
    pub anomalies: u64,
    pub incidents: u64,
    pub forecasts: u64,
    /// Forecasts put off because the forecast stage's CPU budget was spent: the one
    /// place where the machine's speed, not event time, can change what the demo raises.
    pub forecasts_postponed: u64,
    pub alerts: u64,
    pub faults: Vec<FaultOutcome>,
    /// Number of incidents that match no injected fault: false alarms.
    pub unexplained_incidents: usize,
    /// Their ids, to look them up through the API.
    pub unexplained_incident_ids: Vec<String>,
    pub grouping: Grouping,
    /// Each incident's explanation, in order of start.
    pub explanations: Vec<ExplainedIncident>,
}

/// One incident's explanation, as the demo shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedIncident {
    pub incident_id: String,
    pub title: String,
    /// `model` or `template`.
    pub source: String,
    pub summary: String,
    pub inconclusive: bool,
    /// The cause the first hypothesis names.
    pub top_cause: Option<String>,
}

/// How well incidents group the anomalies, against the simulation's truth: each anomaly of
/// an affected service within a fault's window (plus 30 min) belongs to that fault; any
/// other is noise, a group of its own. Predicted groups are incidents; an anomaly in none
/// is a group of its own.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Grouping {
    /// Of the anomaly pairs one incident holds, the share the truth puts together.
    pub pairwise_precision: f64,
    /// Of the anomaly pairs the truth puts together, the share one incident holds.
    pub pairwise_recall: f64,
    pub pairwise_f1: f64,
    /// Signals in (anomalies and alerts) per incident out.
    pub noise_reduction: f64,
}

impl Grouping {
    /// Pairwise scores of `(truth, predicted)` labels, one per anomaly; `None` is a group of
    /// its own.
    pub fn score(
        labels: &[(Option<String>, Option<String>)],
        signals: u64,
        incidents: u64,
    ) -> Self {
        let pairs = |n: u64| n * n.saturating_sub(1) / 2;
        let mut both: HashMap<(&str, &str), u64> = HashMap::new();
        let mut truth: HashMap<&str, u64> = HashMap::new();
        let mut pred: HashMap<&str, u64> = HashMap::new();
        for (t, p) in labels {
            if let Some(t) = t {
                *truth.entry(t).or_default() += 1;
            }
            if let Some(p) = p {
                *pred.entry(p).or_default() += 1;
            }
            if let (Some(t), Some(p)) = (t, p) {
                *both.entry((t, p)).or_default() += 1;
            }
        }
        let tp: u64 = both.values().map(|n| pairs(*n)).sum();
        let pred_pairs: u64 = pred.values().map(|n| pairs(*n)).sum();
        let truth_pairs: u64 = truth.values().map(|n| pairs(*n)).sum();
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let (p, r) = (ratio(tp, pred_pairs), ratio(tp, truth_pairs));
        Grouping {
            pairwise_precision: p,
            pairwise_recall: r,
            pairwise_f1: if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            },
            noise_reduction: signals as f64 / incidents.max(1) as f64,
        }
    }
}

/// The configuration the demo runs with: defaults plus the fleet's dependency graph, with
/// ingest backfilling.
pub fn demo_config(base: &Config, fleet: &Fleet) -> Config {
    let mut cfg = base.clone();
    cfg.correlate.dependencies = fleet.dependencies();
    // The fleet's clock starts at a fixed date (2026-01-05) so every run is the same;
    // those points are history by now, which ingest refuses unless told to backfill.
    cfg.ingest.backfill = true;
    // Hosts have 2.6 GB for the service: a forecast that reaches it within the horizon
    // is a predicted breach (the leaking host gets there late on the last day).
    if cfg.forecast.thresholds.is_empty() {
        cfg.forecast
            .thresholds
            .push(seismo_forecast::thresholds::Threshold {
                name: "memory-limit".into(),
                metric: Some("memory_used_bytes".into()),
                labels: Default::default(),
                above: Some(2.6e9),
                below: None,
                trigger: seismo_forecast::thresholds::Trigger::Interval,
                severity: seismo_schemas::Severity::Warning,
            });
    }
    cfg
}

fn ts(fleet: &Fleet, minute: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(fleet.start_ms + minute as i64 * 60_000)
        .single()
        .unwrap_or_default()
}

/// A Prometheus-style alerting rule on checkout's error ratio, evaluated every simulated
/// minute, sending Alertmanager webhooks: fires after 3 minutes above 5%, resolves after 3
/// minutes below.
#[derive(Debug, Default)]
struct ErrorRateRule {
    above: u32,
    below: u32,
    firing_since: Option<DateTime<Utc>>,
}

impl ErrorRateRule {
    const SERVICE: &'static str = "checkout";

    fn eval(&mut self, ratio: f64, now: DateTime<Utc>) -> Option<AlertmanagerWebhook> {
        if ratio > 0.05 {
            self.above += 1;
            self.below = 0;
        } else {
            self.below += 1;
            self.above = 0;
        }
        let status = if self.firing_since.is_none() && self.above >= 3 {
            self.firing_since = Some(now);
            AlertStatus::Firing
        } else if self.firing_since.is_some() && self.below >= 3 {
            AlertStatus::Resolved
        } else {
            return None;
        };
        let starts_at = self.firing_since.expect("set when firing");
        if status == AlertStatus::Resolved {
            self.firing_since = None;
        }
        let labels: Labels = [
            ("alertname".to_string(), "HighErrorRate".to_string()),
            ("service".to_string(), Self::SERVICE.to_string()),
            ("severity".to_string(), "critical".to_string()),
        ]
        .into();
        Some(AlertmanagerWebhook {
            version: "4".into(),
            group_key: "{}:{alertname=\"HighErrorRate\"}".into(),
            truncated_alerts: 0,
            status,
            receiver: "seismo".into(),
            group_labels: Labels::new(),
            common_labels: labels.clone(),
            common_annotations: Labels::new(),
            external_url: String::new(),
            alerts: vec![AlertmanagerAlert {
                status,
                labels,
                annotations: [(
                    "summary".to_string(),
                    "checkout error ratio above 5%".to_string(),
                )]
                .into(),
                starts_at,
                ends_at: (status == AlertStatus::Resolved).then_some(now),
                generator_url: String::new(),
                fingerprint: Some("HighErrorRate/checkout".into()),
            }],
        })
    }
}

/// Feeds the simulator's telemetry into the pipeline's source, as producers would.
async fn produce(
    sim: Simulator,
    source: &dyn Producer,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    let fleet = sim.fleet().clone();
    let mut rule = ErrorRateRule::default();
    let mut points = 0;
    // A record per simulated minute, sent 30 at a time: each send waits for its records
    // to be durable, and a real fleet's many producers send concurrently.
    let mut pending = Vec::with_capacity(30);
    for tick in sim {
        points += tick.points.len() as u64;
        pending.push(OutRecord::new(Vec::new(), encode_lines(&tick.points)));
        if pending.len() == 30 {
            source
                .send(topics::METRICS, std::mem::take(&mut pending))
                .await?;
        }
        let ratio = tick
            .error_ratio
            .get(ErrorRateRule::SERVICE)
            .copied()
            .unwrap_or(0.0);
        if let Some(hook) = rule.eval(ratio, ts(&fleet, tick.minute)) {
            let records = hook
                .into_alerts(None)
                .map_err(anyhow::Error::msg)?
                .into_iter()
                .map(|a| {
                    OutRecord::new(
                        a.tenant.clone(),
                        serde_json::to_vec(&a).expect("alerts serialise"),
                    )
                })
                .collect();
            source.send(topics::ALERTS, records).await?;
        }
        progress.inc(1);
    }
    source.send(topics::METRICS, pending).await?;
    Ok(points)
}

/// Runs the demo on `store` and returns its summary.
pub async fn run(
    base: &Config,
    store: Arc<dyn Store>,
    opts: &DemoOptions,
) -> anyhow::Result<(Summary, PipelineStats)> {
    let fleet = Fleet::demo(opts.days);
    let mut cfg = demo_config(base, &fleet);
    if opts.no_graph {
        cfg.correlate.dependencies.clear();
    }
    // The demo's bus is throwaway, like its database: every run starts from nothing.
    let bus_dir = tempfile::Builder::new()
        .prefix("seismo-demo-bus")
        .tempdir()
        .context("creating the demo's bus folder")?;
    cfg.bus.dir = bus_dir.path().display().to_string();
    let started = Instant::now();
    // The counter is process-wide: several demos in one process (`eval explain
    // --demo-seeds`) report each run's own.
    let postponed_before = counter("seismo_forecast_postponed_total");
    let pipeline = Embedded::start(&cfg, store.clone())?;
    let progress = if opts.progress {
        ProgressBar::new(fleet.minutes)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} simulated {pos}/{len} minutes [{bar:40}] {percent}% {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let source = pipeline.source.clone();
    let produced = produce(Simulator::new(fleet.clone(), opts.seed), &source, &progress).await;
    drop(source);
    progress.finish_and_clear();
    let stats = pipeline.finish().await?;
    let points = produced?;
    let wall_s = started.elapsed().as_secs_f64();
    let postponed = counter("seismo_forecast_postponed_total") - postponed_before;
    let summary = summarise(&fleet, store.as_ref(), points, wall_s, postponed).await?;
    Ok((summary, stats))
}

/// A signal of an incident: the service it concerns and its time.
type Signal = (String, DateTime<Utc>);

/// Matches the stored incidents against the faults' ground truth.
pub async fn summarise(
    fleet: &Fleet,
    store: &dyn Store,
    points: u64,
    wall_s: f64,
    forecasts_postponed: u64,
) -> anyhow::Result<Summary> {
    let counts = store.counts().await?;
    let mut incidents = seismo_store::all_incidents(store, &fleet.tenant).await?;
    incidents.sort_by_key(|i| i.started_at);
    // Per incident: when it was opened, and its signals as (service, time).
    let mut signals: HashMap<String, (DateTime<Utc>, Vec<Signal>)> = HashMap::new();
    for inc in &incidents {
        let events = store.incident_events(&inc.tenant, &inc.id).await?;
        let opened = events
            .iter()
            .find(|e| e.kind == IncidentEventKind::Created)
            .map(|e| e.ts)
            .unwrap_or(inc.started_at);
        let mut sig: Vec<Signal> = store
            .anomalies_by_id(&inc.tenant, &inc.anomaly_ids)
            .await?
            .into_iter()
            .map(|a| (a.labels.get("service").cloned().unwrap_or_default(), a.ts))
            .collect();
        for e in events
            .iter()
            .filter(|e| e.kind == IncidentEventKind::AlertFiring)
        {
            let service = fleet
                .faults
                .iter()
                .find(|f| f.alert.is_some_and(|a| e.id.contains(a)))
                .map(|f| f.service);
            if let Some(s) = service {
                sig.push((s.to_string(), e.ts));
            }
        }
        signals.insert(inc.id.clone(), (opened, sig));
    }
    let grace = chrono::Duration::minutes(30);
    let mut explained = std::collections::HashSet::new();
    let mut faults = Vec::new();
    for f in &fleet.faults {
        let onset = ts(fleet, f.onset_min);
        let end = ts(fleet, f.end_min) + grace;
        let mut matched = Vec::new();
        let mut best: Option<f64> = None;
        let mut root = None;
        for inc in &incidents {
            let (opened, sig) = &signals[&inc.id];
            let hits: Vec<DateTime<Utc>> = sig
                .iter()
                .filter(|(s, t)| f.affected.contains(&s.as_str()) && *t >= onset && *t <= end)
                .map(|(_, t)| *t)
                .collect();
            let Some(first) = hits.iter().min() else {
                continue;
            };
            matched.push(inc.id.clone());
            explained.insert(inc.id.clone());
            let caught_at = (*opened).max(*first);
            let delay = (caught_at - onset).num_milliseconds() as f64 / 1000.0;
            if best.is_none_or(|b| delay < b) {
                best = Some(delay);
                root = inc.root_cause_candidates.first().map(|c| c.target.clone());
            }
        }
        faults.push(FaultOutcome {
            name: f.name.to_string(),
            service: f.service.to_string(),
            onset,
            caught: !matched.is_empty(),
            detection_delay_s: best,
            incidents: matched,
            root_cause: root,
        });
    }
    // Grouping against the truth, over every anomaly.
    let mut member_of: HashMap<String, String> = HashMap::new();
    for inc in &incidents {
        for a in &inc.anomaly_ids {
            member_of.insert(a.clone(), inc.id.clone());
        }
    }
    let mut anomalies = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_anomalies(&seismo_store::AnomalyQuery {
                tenant: fleet.tenant.clone(),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await?;
        anomalies.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(seismo_store::Cursor::decode(&c)?),
            None => break,
        }
    }
    let labels: Vec<(Option<String>, Option<String>)> = anomalies
        .iter()
        .map(|a| {
            let service = a.labels.get("service").map(String::as_str).unwrap_or("");
            let truth = fleet
                .faults
                .iter()
                .find(|f| {
                    f.affected.contains(&service)
                        && a.ts >= ts(fleet, f.onset_min)
                        && a.ts <= ts(fleet, f.end_min) + grace
                })
                .map(|f| f.name.to_string());
            (truth, member_of.get(&a.id).cloned())
        })
        .collect();
    let grouping = Grouping::score(&labels, counts.anomalies + counts.alerts, counts.incidents);
    let mut explanations = Vec::new();
    for inc in &incidents {
        let Some(e) = store.explanation(&inc.tenant, &inc.id).await? else {
            continue;
        };
        let e: seismo_explain::IncidentExplanation = serde_json::from_value(e.body)?;
        explanations.push(ExplainedIncident {
            incident_id: inc.id.clone(),
            title: inc.title.clone(),
            source: e.source.as_str().into(),
            summary: e.summary,
            inconclusive: e.inconclusive,
            top_cause: e.hypotheses.first().map(|h| h.cause.clone()),
        });
    }
    let unexplained_incident_ids: Vec<String> = incidents
        .iter()
        .filter(|i| !explained.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    Ok(Summary {
        points,
        series: fleet.series(),
        wall_s,
        points_per_s: points as f64 / wall_s.max(1e-9),
        anomalies: counts.anomalies,
        incidents: counts.incidents,
        forecasts: counts.forecasts,
        forecasts_postponed,
        alerts: counts.alerts,
        faults,
        unexplained_incidents: unexplained_incident_ids.len(),
        unexplained_incident_ids,
        grouping,
        explanations,
    })
}

/// The summary as the terminal shows it.
pub fn render(s: &Summary, store: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Seismo demo: {} points from {} series in {:.1} s ({:.0} points/s)\n",
        s.points, s.series, s.wall_s, s.points_per_s
    ));
    out.push_str(&format!(
        "  {} anomalies, {} incidents, {} forecasts, {} alerts → {store}\n\nInjected faults:\n",
        s.anomalies, s.incidents, s.forecasts, s.alerts
    ));
    for f in &s.faults {
        match f.detection_delay_s {
            Some(d) if f.caught => out.push_str(&format!(
                "  ✔ {:<30} caught {:>5.0} s after onset by {} incident(s); top root cause {}\n",
                f.name,
                d,
                f.incidents.len(),
                f.root_cause.as_deref().unwrap_or("?")
            )),
            _ => out.push_str(&format!("  ✘ {:<30} missed\n", f.name)),
        }
    }
    out.push_str(&format!(
        "Unexplained incidents (false alarms): {}\n",
        s.unexplained_incidents
    ));
    let g = &s.grouping;
    out.push_str(&format!(
        "Grouping: pairwise F1 {:.2} (precision {:.2}, recall {:.2}); {:.0} signals per incident\n",
        g.pairwise_f1, g.pairwise_precision, g.pairwise_recall, g.noise_reduction
    ));
    if !s.explanations.is_empty() {
        out.push_str("Explanations:\n");
    }
    for e in &s.explanations {
        out.push_str(&format!(
            "  {} ({}, by the {}): {}\n",
            e.incident_id, e.title, e.source, e.summary
        ));
    }
    out
}

/// Removes an SQLite database file and its WAL companions, so a demo starts clean.
pub fn reset_sqlite(url: &str) -> anyhow::Result<()> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .filter(|p| !p.contains(":memory:"))
    {
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{path}{suffix}");
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {p}")),
            }
        }
    }
    Ok(())
}

/// A counter's value in the process's metrics registry (0 if it was never registered).
fn counter(name: &str) -> u64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::Grouping;

    #[test]
    fn pairwise_grouping_counts_pairs_of_each_side() {
        let l = |t: Option<&str>, p: Option<&str>| (t.map(String::from), p.map(String::from));
        // Fault a: three anomalies, two in incident x, one in y; a noise anomaly in x.
        let labels = [
            l(Some("a"), Some("x")),
            l(Some("a"), Some("x")),
            l(Some("a"), Some("y")),
            l(None, Some("x")),
        ];
        let g = Grouping::score(&labels, 8, 2);
        // Pairs together in truth: 3; in incidents: 3 (x); in both: 1.
        assert!((g.pairwise_precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((g.pairwise_recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((g.pairwise_f1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(g.noise_reduction, 4.0);
        // Perfect grouping; anomalies in no incident are groups of their own.
        let perfect = [
            l(Some("a"), Some("x")),
            l(Some("a"), Some("x")),
            l(None, None),
            l(Some("b"), Some("y")),
        ];
        assert_eq!(Grouping::score(&perfect, 4, 2).pairwise_f1, 1.0);
    }
}
