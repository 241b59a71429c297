//! `seismo eval rca DIR`: root-cause ranking scored on microservice fault cases (AC@k, Avg@5).
//!
//! The layout is that of `../shared/data/rca`: one folder per system with `graph.json`
//! (`{service: [services it calls]}`) and `cases/<id>/{metrics.csv,truth.json}`, where
//! `metrics.csv` is long (`ts,service,pod,metric,value`) and `truth.json` names
//! `root_cause_service`, `fault_type` and `injected_at`. Each case is ranked by
//! `investigate` (the code behind `POST /api/v1/investigate` and `seismo investigate`)
//! given the system's entry point as the symptom and the injection time as the moment.
//! Scores are printed per fault type and per capture day, so a choice that only suits one
//! day shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::DateTime;
use seismo_correlate::rank::{self, Graph, MetricRole, SeriesData, Window};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Truth {
    root_cause_service: String,
    fault_type: String,
    injected_at: String,
}

/// One case's inputs.
pub struct Case {
    pub id: String,
    pub fault_type: String,
    pub root: String,
    pub at_ms: i64,
    /// The UTC date of the injection: cases of one day share a deployment and its pods.
    pub day: String,
    pub series: Vec<SeriesData>,
}

/// One system's graph and cases.
pub struct System {
    pub name: String,
    /// `{service: [services it calls]}`, as `[correlate.dependencies]` takes it.
    pub calls: BTreeMap<String, Vec<String>>,
    pub graph: Graph,
    pub cases: Vec<Case>,
}

fn parse_ms(s: &str) -> anyhow::Result<i64> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad timestamp {s:?}"))?
        .timestamp_millis())
}

/// Reads `metrics.csv` (`ts,service,pod,metric,value`, header first) into one series per
/// (service, metric), sorted by time.
pub fn read_metrics(path: &Path) -> anyhow::Result<Vec<SeriesData>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("{}: no {name:?} column in {header:?}", path.display()))
    };
    let (ts, service, metric, value) = (col("ts")?, col("service")?, col("metric")?, col("value")?);
    let mut by: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .with_context(|| format!("{}:{}: too few fields", path.display(), n + 2))
        };
        let v: f64 = get(value)?
            .parse()
            .with_context(|| format!("{}:{}: bad value", path.display(), n + 2))?;
        by.entry((get(service)?.to_string(), get(metric)?.to_string()))
            .or_default()
            .push((parse_ms(get(ts)?)?, v));
    }
    Ok(by
        .into_iter()
        .map(|((service, metric), mut points)| {
            points.sort_by_key(|p| p.0);
            SeriesData {
                service,
                metric,
                points,
            }
        })
        .collect())
}

/// Reads one system folder.
pub fn load_system(dir: &Path) -> anyhow::Result<System> {
    let graph_path = dir.join("graph.json");
    let calls: BTreeMap<String, Vec<String>> = serde_json::from_slice(
        &std::fs::read(&graph_path).with_context(|| format!("reading {}", graph_path.display()))?,
    )
    .with_context(|| {
        format!(
            "{}: not a {{service: [callees]}} object",
            graph_path.display()
        )
    })?;
    let mut ids: Vec<PathBuf> = std::fs::read_dir(dir.join("cases"))
        .with_context(|| format!("reading {}/cases", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    ids.sort();
    let mut cases = Vec::new();
    for p in ids {
        let truth: Truth = serde_json::from_slice(&std::fs::read(p.join("truth.json"))?)
            .with_context(|| format!("{}/truth.json", p.display()))?;
        let at_ms = parse_ms(&truth.injected_at)?;
        cases.push(Case {
            id: p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            fault_type: truth.fault_type,
            root: truth.root_cause_service,
            at_ms,
            day: truth.injected_at.get(..10).unwrap_or_default().to_string(),
            series: read_metrics(&p.join("metrics.csv"))?,
        });
    }
    Ok(System {
        name: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        graph: Graph::new(&calls),
        calls,
        cases,
    })
}

/// Faults that show in resource use or latency, as against code defects, which the paper
/// behind the data says rarely show in metrics.
pub fn is_resource_or_latency(fault: &str) -> bool {
    fault.starts_with("cpu")
        || fault.starts_with("mem")
        || fault.contains("delay")
        || fault.contains("network")
}

/// The rank of the true root cause in each case (None when it is not ranked).
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub system: String,
    pub case: String,
    pub fault_type: String,
    pub day: String,
    pub root: String,
    pub rank: Option<usize>,
    pub top: Vec<String>,
}

/// AC@1..5 and Avg@5 over a set of cases.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub cases: usize,
    pub ac: [f64; 5],
    pub avg5: f64,
}

pub fn scores<'a>(ranks: impl Iterator<Item = &'a Option<usize>>) -> Scores {
    let ranks: Vec<Option<usize>> = ranks.copied().collect();
    let n = ranks.len().max(1) as f64;
    let mut ac = [0.0; 5];
    for (k, slot) in ac.iter_mut().enumerate() {
        *slot = ranks
            .iter()
            .filter(|r| r.is_some_and(|r| r <= k + 1))
            .count() as f64
            / n;
    }
    Scores {
        cases: ranks.len(),
        ac,
        avg5: ac.iter().sum::<f64>() / 5.0,
    }
}

/// Ranks every case of one system with `investigate`.
pub fn run_system(sys: &System, roles: &BTreeMap<String, MetricRole>) -> Vec<CaseResult> {
    let entries = sys.graph.entry_points();
    // The user-facing service is the symptom an SRE names; with no single entry point the
    // ranking is left unrestricted.
    let symptom = (entries.len() == 1).then(|| entries[0].as_str());
    sys.cases
        .iter()
        .map(|c| {
            let w = Window::around(c.at_ms, rank::sampling_interval(&c.series));
            let ranked = rank::investigate(&sys.graph, &c.series, &w, symptom, roles);
            CaseResult {
                system: sys.name.clone(),
                case: c.id.clone(),
                fault_type: c.fault_type.clone(),
                day: c.day.clone(),
                root: c.root.clone(),
                rank: ranked
                    .iter()
                    .position(|r| r.target == c.root)
                    .map(|i| i + 1),
                top: ranked.iter().take(5).map(|r| r.target.clone()).collect(),
            }
        })
        .collect()
}

/// A metric name as Prometheus allows it (`[a-zA-Z_:][a-zA-Z0-9_:]*`): every run of other
/// characters becomes one `_`, trailing ones are dropped (`CpuUsageRate(%)` →
/// `CpuUsageRate`).
pub fn metric_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{out}")
    } else {
        out
    }
}

/// One capture day of a system, streamed once: the union of its cases' points. A day's
/// cases are consecutive windows of one recording that overlap and agree where they do, so
/// every case after the first has the day's earlier data as its history, as `seismo run`
/// on that system would have had; streamed alone, a case holds at most an hour before its
/// fault, less than `detect.warmup`, and no detector may alarm at all.
pub struct Day<'a> {
    pub name: String,
    pub cases: Vec<&'a Case>,
    /// The day's first sample, epoch ms.
    pub first_ms: i64,
    /// The data's sampling interval, ms.
    pub bucket: i64,
    series: Vec<SeriesData>,
}

impl Day<'_> {
    /// Buckets of the day's stream before `case`'s injection.
    pub fn history(&self, case: &Case) -> i64 {
        (case.at_ms - self.first_ms) / self.bucket
    }
}

/// `sys`'s cases by capture day, each day's points merged (a sample two cases share is
/// taken once).
pub fn days(sys: &System) -> Vec<Day<'_>> {
    let mut by_day: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
    for c in &sys.cases {
        by_day.entry(c.day.as_str()).or_default().push(c);
    }
    by_day
        .into_iter()
        .map(|(day, cases)| {
            let mut merged: BTreeMap<(&str, &str), BTreeMap<i64, f64>> = BTreeMap::new();
            for c in &cases {
                for s in &c.series {
                    merged
                        .entry((s.service.as_str(), s.metric.as_str()))
                        .or_default()
                        .extend(s.points.iter().copied());
                }
            }
            let series: Vec<SeriesData> = merged
                .into_iter()
                .map(|((service, metric), points)| SeriesData {
                    service: service.to_string(),
                    metric: metric.to_string(),
                    points: points.into_iter().collect(),
                })
                .collect();
            let first_ms = series
                .iter()
                .filter_map(|s| s.points.first().map(|p| p.0))
                .min()
                .unwrap_or(0);
            Day {
                name: format!("{} {day}", sys.name),
                bucket: rank::sampling_interval(&series),
                cases,
                first_ms,
                series,
            }
        })
        .collect()
}

/// Streams one day through the embedded pipeline (`seismo run`'s stages, bus and store)
/// with the system's graph in `[correlate.dependencies]`, `detect.bucket_secs` set to the
/// data's interval and ingest backfilling, and returns for each of its cases the
/// incidents stored and the anomalies raised in that case's fault window (from a bucket
/// before the injection to five after).
pub async fn stream_day(
    base: &crate::Config,
    calls: &BTreeMap<String, Vec<String>>,
    day: &Day<'_>,
) -> anyhow::Result<Vec<Streamed>> {
    use seismo_schemas::{MetricPoint, topics};
    use seismo_store::{AnomalyQuery, SqliteStore, Store};
    use seismo_transport::{OutRecord, Producer};
    let bucket = day.bucket;
    let mut cfg = base.clone();
    cfg.correlate.dependencies = calls.clone();
    cfg.ingest.backfill = true;
    cfg.detect.bucket_secs = (bucket / 1000).max(1) as u64;
    let bus_dir = tempfile::Builder::new()
        .prefix("seismo-rca-bus")
        .tempdir()?;
    cfg.bus.dir = bus_dir.path().display().to_string();
    let store = SqliteStore::connect("sqlite::memory:").await?;
    store.migrate().await?;
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    let pipeline = crate::pipeline::Embedded::start(&cfg, store.clone())?;
    // Every incident change, as a pager would have heard it: a case is also judged on its
    // incident as it stood then, not only at the end of the day (an incident open for
    // hours takes in later faults).
    let mut heard = pipeline
        .bus
        .subscribe(&[topics::INCIDENTS], "seismo-eval-rca")?;
    let listener = tokio::spawn(async move {
        use seismo_transport::Consumer;
        let mut changes: Vec<seismo_schemas::IncidentChange> = Vec::new();
        // A change published again (a replayed write) carries the incident as it is at
        // the replay: the first one heard is the one of its time.
        let mut seen = std::collections::HashSet::new();
        while let Some(batch) = heard.next_batch(1024).await {
            let batch = batch?;
            changes.extend(
                batch
                    .iter()
                    .filter_map(|m| {
                        serde_json::from_slice::<seismo_schemas::IncidentChange>(&m.payload).ok()
                    })
                    .filter(|c| seen.insert(c.id.clone())),
            );
            heard.commit(&batch).await?;
        }
        anyhow::Ok(changes)
    });
    // Every point in time order, one record per sampling round, as a scraper would send.
    let mut points: Vec<MetricPoint> = day
        .series
        .iter()
        .flat_map(|s| {
            let name = metric_name(&s.metric);
            s.points.iter().map(move |&(ts, value)| MetricPoint {
                tenant: seismo_schemas::DEFAULT_TENANT.into(),
                name: name.clone(),
                labels: [("service".to_string(), s.service.clone())].into(),
                ts,
                value,
            })
        })
        .collect();
    points.sort_by_key(|p| p.ts / bucket);
    let mut records = Vec::new();
    for round in points.chunk_by(|a, b| a.ts / bucket == b.ts / bucket) {
        let mut body = Vec::new();
        for p in round {
            serde_json::to_writer(&mut body, p)?;
            body.push(b'\n');
        }
        records.push(OutRecord::new(Vec::new(), body));
    }
    for chunk in records.chunks(30) {
        pipeline
            .source
            .send(topics::METRICS, chunk.to_vec())
            .await?;
    }
    pipeline.finish().await?;
    let mut changes = listener.await??;
    changes.sort_by_key(|c| c.at);
    let changes = std::sync::Arc::new(changes);
    // Every incident of the day, however many: a case judged on a truncated list would
    // miss its incidents silently.
    let incidents =
        seismo_store::all_incidents(store.as_ref(), seismo_schemas::DEFAULT_TENANT).await?;
    let mut out = Vec::with_capacity(day.cases.len());
    for case in &day.cases {
        let (from, to) = fault_window(case, bucket);
        let anomalies = store
            .list_anomalies(&AnomalyQuery {
                tenant: seismo_schemas::DEFAULT_TENANT.into(),
                from: chrono::DateTime::from_timestamp_millis(from),
                to: chrono::DateTime::from_timestamp_millis(to + 1),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        out.push(Streamed {
            incidents: incidents.clone(),
            changes: changes.clone(),
            window_anomalies: anomalies.items,
            bucket,
        });
    }
    Ok(out)
}

/// What streaming a case's day left in the store, for that case.
pub struct Streamed {
    pub incidents: Vec<seismo_schemas::Incident>,
    /// Every change published on `seismo.incidents` that day, in event-time order.
    pub changes: std::sync::Arc<Vec<seismo_schemas::IncidentChange>>,
    pub window_anomalies: Vec<seismo_schemas::Anomaly>,
    /// The data's sampling interval, ms.
    pub bucket: i64,
}

/// From a bucket before the injection to five after, epoch ms, inclusive.
fn fault_window(case: &Case, bucket: i64) -> (i64, i64) {
    (case.at_ms - bucket, case.at_ms + 5 * bucket)
}

/// How one case's streamed incidents fared.
pub struct StreamedScore {
    /// The first incident opened in the fault's window: the one that would have paged.
    pub first_opened: CaseResult,
    /// The incident that took the window's earliest anomaly, whenever it opened: where an
    /// SRE looking at the fault's first symptom lands (an incident already open for an
    /// earlier, related fault takes it in).
    pub holding: CaseResult,
    /// The same incident as it stood at the end of the fault window (its last change
    /// published by then, or its opening if it opened later): what the SRE paged for
    /// this fault saw, before later faults joined it.
    pub holding_then: CaseResult,
    /// Incidents opened in the window.
    pub opened_in_window: usize,
    /// Distinct incidents that took the window's anomalies: how far one fault is split.
    pub holding_window: usize,
}

fn result_of(case: &Case, incident: Option<&seismo_schemas::Incident>) -> CaseResult {
    let top: Vec<String> = incident
        .map(|i| {
            i.root_cause_candidates
                .iter()
                .map(|c| {
                    c.target
                        .split_once('=')
                        .map(|(_, v)| v)
                        .unwrap_or(&c.target)
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    CaseResult {
        system: String::new(),
        case: case.id.clone(),
        fault_type: case.fault_type.clone(),
        day: case.day.clone(),
        root: case.root.clone(),
        rank: top.iter().position(|t| *t == case.root).map(|i| i + 1),
        top: top.into_iter().take(5).collect(),
    }
}

/// Scores one case's streamed incidents (see [`StreamedScore`]).
pub fn score_streamed(case: &Case, streamed: &Streamed) -> StreamedScore {
    let (from, to) = fault_window(case, streamed.bucket);
    let mut inside: Vec<&seismo_schemas::Incident> = streamed
        .incidents
        .iter()
        .filter(|i| (from..=to).contains(&i.started_at.timestamp_millis()))
        .collect();
    inside.sort_by_key(|i| (i.started_at, i.id.clone()));
    let mut window = streamed.window_anomalies.iter().collect::<Vec<_>>();
    window.sort_by_key(|a| (a.ts, a.id.clone()));
    let holding = window.iter().find_map(|a| {
        streamed
            .incidents
            .iter()
            .find(|i| i.anomaly_ids.contains(&a.id))
    });
    let holding_window = streamed
        .incidents
        .iter()
        .filter(|i| window.iter().any(|a| i.anomaly_ids.contains(&a.id)))
        .count();
    let then = holding.and_then(|h| {
        let of_it = || streamed.changes.iter().filter(|c| c.incident.id == h.id);
        of_it()
            .rfind(|c| c.at.timestamp_millis() <= to)
            .or_else(|| of_it().next())
            .map(|c| &c.incident)
    });
    StreamedScore {
        first_opened: result_of(case, inside.first().copied()),
        holding: result_of(case, holding),
        holding_then: result_of(case, then),
        opened_in_window: inside.len(),
        holding_window,
    }
}

/// The systems under `dir`: `dir` itself when it holds `graph.json`, else its subfolders
/// that do.
pub fn systems(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join("graph.json").exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("graph.json").exists())
        .collect();
    out.sort();
    if out.is_empty() {
        bail!(
            "{}: no system folder (one with graph.json and cases/) found",
            dir.display()
        );
    }
    Ok(out)
}

/// The printed table: per system, rows for every fault type, the resource-and-latency
/// faults per day, code faults, and all cases.
pub fn render(results: &[CaseResult]) -> String {
    let mut out = String::new();
    let mut systems: Vec<&str> = results.iter().map(|r| r.system.as_str()).collect();
    systems.dedup();
    out.push_str(&format!(
        "{:<18} {:<28} {:>5} {:>6} {:>6} {:>6}\n",
        "system", "cases", "n", "AC@1", "AC@3", "Avg@5"
    ));
    for sys in systems {
        let of = |f: &dyn Fn(&CaseResult) -> bool| -> Scores {
            scores(
                results
                    .iter()
                    .filter(|r| r.system == sys && f(r))
                    .map(|r| &r.rank),
            )
        };
        let mut rows: Vec<(String, Scores)> = Vec::new();
        let mut faults: Vec<&str> = results
            .iter()
            .filter(|r| r.system == sys)
            .map(|r| r.fault_type.as_str())
            .collect();
        faults.sort();
        faults.dedup();
        for f in &faults {
            rows.push((format!("fault {f}"), of(&|r| r.fault_type == *f)));
        }
        let mut days: Vec<&str> = results
            .iter()
            .filter(|r| r.system == sys)
            .map(|r| r.day.as_str())
            .collect();
        days.sort();
        days.dedup();
        for d in &days {
            rows.push((
                format!("resource+latency {d}"),
                of(&|r| r.day == *d && is_resource_or_latency(&r.fault_type)),
            ));
        }
        rows.push((
            "resource+latency".into(),
            of(&|r| is_resource_or_latency(&r.fault_type)),
        ));
        rows.push((
            "code (return, exception)".into(),
            of(&|r| !is_resource_or_latency(&r.fault_type)),
        ));
        rows.push(("all".into(), of(&|_| true)));
        for (name, s) in rows.into_iter().filter(|(_, s)| s.cases > 0) {
            out.push_str(&format!(
                "{sys:<18} {name:<28} {:>5} {:>6.2} {:>6.2} {:>6.2}\n",
                s.cases, s.ac[0], s.ac[2], s.avg5
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_become_prometheus_names() {
        assert_eq!(metric_name("CpuUsageRate(%)"), "CpuUsageRate");
        assert_eq!(
            metric_name("PodServerLatencyP90(s)"),
            "PodServerLatencyP90_s"
        );
        assert_eq!(metric_name("9lives"), "_9lives");
        assert_eq!(metric_name("a b--c"), "a_b_c");
    }

    #[test]
    fn a_days_cases_are_streamed_as_one_recording() {
        let case = |id: &str, day: &str, at_ms: i64, from: i64, to: i64| Case {
            id: id.into(),
            fault_type: "cpu_contention".into(),
            root: "db".into(),
            at_ms,
            day: day.into(),
            series: vec![SeriesData {
                service: "db".into(),
                metric: "CpuUsageRate(%)".into(),
                points: (from..to).map(|m| (m * 60_000, m as f64)).collect(),
            }],
        };
        // Two overlapping windows of one day and one of the next.
        let sys = System {
            name: "shop".into(),
            calls: BTreeMap::new(),
            graph: Graph::new(&BTreeMap::new()),
            cases: vec![
                case("001", "d1", 60 * 60_000, 0, 75),
                case("002", "d1", 130 * 60_000, 70, 145),
                case("003", "d2", 1060 * 60_000, 1000, 1075),
            ],
        };
        let days = days(&sys);
        assert_eq!(days.len(), 2);
        let d1 = &days[0];
        assert_eq!(d1.name, "shop d1");
        assert_eq!(d1.cases.len(), 2);
        assert_eq!((d1.first_ms, d1.bucket), (0, 60_000));
        // The shared minutes 70..75 once each, in order.
        let points = &d1.series[0].points;
        assert_eq!(points.len(), 145);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0));
        // The second case has the first's minutes as history; the next day starts afresh.
        assert_eq!(d1.history(d1.cases[1]), 130);
        assert_eq!(days[1].history(days[1].cases[0]), 60);
    }

    #[test]
    fn scores_count_ranks_within_k() {
        let s = scores([Some(1), Some(3), None, Some(6)].iter());
        assert_eq!(s.ac, [0.25, 0.25, 0.5, 0.5, 0.5]);
        assert!((s.avg5 - 0.4).abs() < 1e-12);
    }

    #[test]
    fn a_generated_system_is_read_and_ranked() {
        // One case: db's CPU steps up at minute 60 of 75; front's latency follows.
        let dir = std::env::temp_dir().join(format!("seismo-rca-{}", std::process::id()));
        let case = dir.join("shop/cases/001");
        std::fs::create_dir_all(&case).unwrap();
        std::fs::write(
            dir.join("shop/graph.json"),
            r#"{"front":["db","ads"],"db":[],"ads":[]}"#,
        )
        .unwrap();
        let mut csv = String::from("ts,service,pod,metric,value\n");
        for i in 0..75i64 {
            let t = chrono::DateTime::from_timestamp(1_700_000_000 + i * 60, 0).unwrap();
            let ts = t.format("%Y-%m-%dT%H:%M:%SZ");
            let hot = (60..64).contains(&i);
            let wob = ((i * 37) % 11) as f64 / 100.0;
            for (svc, metric, v) in [
                ("ads", "CpuUsageRate(%)", 3.0 + wob),
                ("db", "CpuUsageRate(%)", if hot { 95.0 } else { 4.0 + wob }),
                (
                    "front",
                    "PodServerLatencyP90(s)",
                    if hot { 0.9 } else { 0.1 + wob / 10.0 },
                ),
            ] {
                csv.push_str(&format!("{ts},{svc},{svc}-0,{metric},{v}\n"));
            }
        }
        std::fs::write(case.join("metrics.csv"), csv).unwrap();
        let at = chrono::DateTime::from_timestamp(1_700_000_000 + 60 * 60, 0).unwrap();
        std::fs::write(
            case.join("truth.json"),
            format!(
                r#"{{"root_cause_service":"db","fault_type":"cpu_contention","injected_at":"{}"}}"#,
                at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        )
        .unwrap();
        let found = systems(&dir).unwrap();
        assert_eq!(found.len(), 1);
        let sys = load_system(&found[0]).unwrap();
        assert_eq!(rank::sampling_interval(&sys.cases[0].series), 60_000);
        let r = run_system(&sys, &BTreeMap::new());
        assert_eq!(r[0].rank, Some(1), "{r:?}");
        assert!(render(&r).contains("fault cpu_contention"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
