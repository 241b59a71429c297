//! `seismo report weekly`: a week of anomalies, incidents, response times, noisy series and capacity warnings, as Markdown and HTML with SVG charts.

mod svg;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use seismo_schemas::{AnomalyKind, IncidentStatus, Labels, SeriesId};
use seismo_store::{AnomalyQuery, IncidentQuery, Store};
use serde::Serialize;

/// The actor of the engine's own incident steps: not a person responding.
const ENGINE_ACTOR: &str = "seismo";
/// Label value for series and incidents without a service.
const NO_SERVICE: &str = "(none)";

/// What the report covers.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub tenant: String,
    /// The end of the week (exclusive); it starts 7 days earlier.
    pub to: DateTime<Utc>,
    /// The label naming a series' service (`correlate.service_label`).
    pub service_label: String,
    /// Rows in the noisiest-series table.
    pub top: usize,
}

/// Median and 90th percentile of some durations, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Durations {
    pub count: usize,
    pub median_secs: Option<f64>,
    pub p90_secs: Option<f64>,
}

impl Durations {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of them at or below it.
        let rank = |q: f64| {
            (!v.is_empty()).then(|| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
        };
        Durations {
            count: v.len(),
            median_secs: rank(0.5),
            p90_secs: rank(0.9),
        }
    }
}

/// One incident of the week.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentRow {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    /// Until the first step a person took out of DETECTED.
    pub acknowledge_secs: Option<f64>,
    /// Until it resolved (by a person or on its own).
    pub resolve_secs: Option<f64>,
}

/// One of the series that raised most anomalies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoisySeries {
    pub series_id: String,
    pub name: String,
    pub labels: Labels,
    pub anomalies: u64,
}

/// A threshold a forecast said a series would cross.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityWarning {
    pub series_id: String,
    pub name: String,
    pub labels: Labels,
    pub threshold: String,
    pub limit: f64,
    /// When the forecast reaches the threshold.
    pub eta: Option<DateTime<Utc>>,
    /// When the forecast's interval first reaches it.
    pub earliest: DateTime<Utc>,
    /// When the newest warning was raised.
    pub raised_at: DateTime<Utc>,
    /// The newest word on it withdrew the prediction (later forecasts stopped crossing).
    #[serde(skip)]
    withdrawn: bool,
}

/// The week's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Weekly {
    pub tenant: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub anomalies: u64,
    pub anomalies_by_service: BTreeMap<String, u64>,
    pub anomalies_by_severity: BTreeMap<String, u64>,
    /// Per UTC day, per service.
    pub anomalies_by_day: BTreeMap<NaiveDate, BTreeMap<String, u64>>,
    pub incidents: Vec<IncidentRow>,
    /// An incident counts once for each service its scope lists.
    pub incidents_by_service: BTreeMap<String, u64>,
    pub incidents_by_severity: BTreeMap<String, u64>,
    pub time_to_acknowledge: Durations,
    pub time_to_resolve: Durations,
    pub noisiest: Vec<NoisySeries>,
    pub capacity: Vec<CapacityWarning>,
}

fn service_of(labels: &Labels, label: &str) -> String {
    labels
        .get(label)
        .cloned()
        .unwrap_or_else(|| NO_SERVICE.to_string())
}

/// Reads the week from the store. Anomalies are read page by page and only counted, so
/// a busy week costs time, not memory.
pub async fn weekly(store: &dyn Store, opts: &ReportOptions) -> anyhow::Result<Weekly> {
    let from = opts.to - Duration::days(7);
    let mut w = Weekly {
        tenant: opts.tenant.clone(),
        from,
        to: opts.to,
        anomalies: 0,
        anomalies_by_service: BTreeMap::new(),
        anomalies_by_severity: BTreeMap::new(),
        anomalies_by_day: BTreeMap::new(),
        incidents: Vec::new(),
        incidents_by_service: BTreeMap::new(),
        incidents_by_severity: BTreeMap::new(),
        time_to_acknowledge: Durations::default(),
        time_to_resolve: Durations::default(),
        noisiest: Vec::new(),
        capacity: Vec::new(),
    };
    let mut per_series: BTreeMap<SeriesId, (u64, String, Labels)> = BTreeMap::new();
    let mut warnings: BTreeMap<(SeriesId, String), CapacityWarning> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_anomalies(&AnomalyQuery {
                tenant: opts.tenant.clone(),
                from: Some(from),
                to: Some(opts.to),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await
            .context("reading anomalies")?;
        for a in &page.items {
            if a.kind == AnomalyKind::Predicted {
                // A forecast, not something that happened: a capacity warning.
                if let Some(b) = &a.explanation.breach {
                    let key = (a.series_id, b.threshold.clone());
                    let newer = warnings.get(&key).is_none_or(|w| w.raised_at < a.ts);
                    if newer {
                        warnings.insert(
                            key,
                            CapacityWarning {
                                series_id: format!("{:016x}", a.series_id),
                                name: a.name.clone(),
                                labels: a.labels.clone(),
                                threshold: b.threshold.clone(),
                                limit: b.limit,
                                eta: b.eta,
                                earliest: b.earliest,
                                raised_at: a.ts,
                                withdrawn: b.withdrawn,
                            },
                        );
                    }
                }
                continue;
            }
            let service = service_of(&a.labels, &opts.service_label);
            w.anomalies += 1;
            *w.anomalies_by_service.entry(service.clone()).or_default() += 1;
            *w.anomalies_by_severity
                .entry(a.severity.as_str().to_string())
                .or_default() += 1;
            *w.anomalies_by_day
                .entry(a.ts.date_naive())
                .or_default()
                .entry(service)
                .or_default() += 1;
            per_series
                .entry(a.series_id)
                .or_insert_with(|| (0, a.name.clone(), a.labels.clone()))
                .0 += 1;
        }
        match page.next_cursor {
            Some(c) => cursor = Some(seismo_store::Cursor::decode(&c)?),
            None => break,
        }
    }
    let mut noisy: Vec<(SeriesId, (u64, String, Labels))> = per_series.into_iter().collect();
    noisy.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    w.noisiest = noisy
        .into_iter()
        .take(opts.top)
        .map(|(id, (n, name, labels))| NoisySeries {
            series_id: format!("{id:016x}"),
            name,
            labels,
            anomalies: n,
        })
        .collect();
    let mut capacity: Vec<CapacityWarning> =
        warnings.into_values().filter(|c| !c.withdrawn).collect();
    capacity.sort_by_key(|c| (c.eta, c.raised_at));
    w.capacity = capacity;

    let mut acks = Vec::new();
    let mut resolves = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_incidents(&IncidentQuery {
                tenant: opts.tenant.clone(),
                from: Some(from),
                to: Some(opts.to),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await
            .context("reading incidents")?;
        for inc in &page.items {
            let events = store.incident_events(&opts.tenant, &inc.id).await?;
            let acknowledged = events
                .iter()
                .filter(|e| e.actor != ENGINE_ACTOR)
                .filter(|e| {
                    e.from_status == Some(IncidentStatus::Detected) && e.to_status.is_some()
                })
                .map(|e| e.ts)
                .min();
            let secs = |t: DateTime<Utc>| (t - inc.started_at).num_milliseconds() as f64 / 1000.0;
            let row = IncidentRow {
                id: inc.id.clone(),
                title: inc.title.clone(),
                severity: inc.severity.as_str().to_string(),
                status: inc.status.as_str().to_string(),
                started_at: inc.started_at,
                acknowledge_secs: acknowledged.map(secs),
                resolve_secs: inc.resolved_at.map(secs),
            };
            acks.extend(row.acknowledge_secs);
            resolves.extend(row.resolve_secs);
            let services: Vec<String> = match inc.scope.get(&opts.service_label) {
                Some(s) => s.split(',').map(str::to_string).collect(),
                None => vec![NO_SERVICE.to_string()],
            };
            for s in services {
                *w.incidents_by_service.entry(s).or_default() += 1;
            }
            *w.incidents_by_severity
                .entry(row.severity.clone())
                .or_default() += 1;
            w.incidents.push(row);
        }
        match page.next_cursor {
            Some(c) => cursor = Some(seismo_store::Cursor::decode(&c)?),
            None => break,
        }
    }
    w.incidents.sort_by_key(|i| i.started_at);
    w.time_to_acknowledge = Durations::of(acks);
    w.time_to_resolve = Durations::of(resolves);
    Ok(w)
}

/// The end of a report's week from the command line: RFC 3339, or a date whose end it is.
pub fn parse_end(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("--to {s:?}: use RFC 3339 or YYYY-MM-DD"))?;
    let next = day.succ_opt().context("--to is out of range")?;
    Ok(next.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

fn human(secs: Option<f64>) -> String {
    match secs {
        None => "–".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s"),
        Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

fn labels_text(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Markdown cells may not hold pipes or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The charts: (file name, SVG).
pub fn charts(w: &Weekly) -> Vec<(String, String)> {
    // Every UTC date the week touches: 8 when it does not start at midnight.
    let last = (w.to - Duration::milliseconds(1)).date_naive();
    let days: Vec<NaiveDate> = w
        .from
        .date_naive()
        .iter_days()
        .take_while(|d| *d <= last)
        .collect();
    let mut services: Vec<(&String, &u64)> = w.anomalies_by_service.iter().collect();
    services.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let per_day = |wanted: &dyn Fn(&str) -> bool| -> Vec<f64> {
        days.iter()
            .map(|d| {
                w.anomalies_by_day.get(d).map_or(0, |m| {
                    m.iter()
                        .filter(|(s, _)| wanted(s))
                        .map(|(_, n)| *n)
                        .sum::<u64>()
                }) as f64
            })
            .collect()
    };
    // The busiest services each get a colour; the rest stack as one "other".
    let shown = if services.len() > svg::PALETTE.len() {
        svg::PALETTE.len() - 1
    } else {
        services.len()
    };
    let mut series: Vec<(String, Vec<f64>)> = services[..shown]
        .iter()
        .map(|(s, _)| ((*s).clone(), per_day(&|x| x == s.as_str())))
        .collect();
    if shown < services.len() {
        let rest: Vec<&str> = services[shown..].iter().map(|(s, _)| s.as_str()).collect();
        series.push((
            format!("other ({})", rest.len()),
            per_day(&|x| rest.contains(&x)),
        ));
    }
    let by_day = svg::stacked_bars(
        "Anomalies per day, by service",
        &days
            .iter()
            .map(|d| d.format("%a %d %b").to_string())
            .collect::<Vec<_>>(),
        &series,
    );
    let mut inc: Vec<(&String, &u64)> = w.incidents_by_service.iter().collect();
    inc.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let by_service = svg::stacked_bars(
        "Incidents by service",
        &inc.iter().map(|(s, _)| (*s).clone()).collect::<Vec<_>>(),
        &[(
            "incidents".to_string(),
            inc.iter().map(|(_, n)| **n as f64).collect(),
        )],
    );
    vec![
        ("anomalies-per-day.svg".into(), by_day),
        ("incidents-by-service.svg".into(), by_service),
    ]
}

/// The report as Markdown, its charts referenced by file name.
pub fn markdown(w: &Weekly) -> String {
    let mut m = String::new();
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    m += &format!(
        "# Seismo weekly report: {}\n\n{} to {}.\n\n",
        w.tenant,
        day(w.from),
        day(w.to)
    );
    m += &format!(
        "**{} anomalies** and **{} incidents**. Time to acknowledge: median {}, p90 {} ({} acknowledged). Time to resolve: median {}, p90 {} ({} resolved).\n\n",
        w.anomalies,
        w.incidents.len(),
        human(w.time_to_acknowledge.median_secs),
        human(w.time_to_acknowledge.p90_secs),
        w.time_to_acknowledge.count,
        human(w.time_to_resolve.median_secs),
        human(w.time_to_resolve.p90_secs),
        w.time_to_resolve.count,
    );
    m += "## Anomalies\n\n![Anomalies per day, by service](anomalies-per-day.svg)\n\n";
    m += "| service | anomalies |\n|---|---:|\n";
    let mut by: Vec<_> = w.anomalies_by_service.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (s, n) in by {
        m += &format!("| {} | {n} |\n", cell(s));
    }
    m += "\n| severity | anomalies |\n|---|---:|\n";
    for (s, n) in &w.anomalies_by_severity {
        m += &format!("| {s} | {n} |\n");
    }
    m += "\n## Incidents\n\n![Incidents by service](incidents-by-service.svg)\n\n";
    m += "| started | incident | severity | status | acknowledged after | resolved after |\n|---|---|---|---|---:|---:|\n";
    for i in &w.incidents {
        m += &format!(
            "| {} | {} (`{}`) | {} | {} | {} | {} |\n",
            day(i.started_at),
            cell(&i.title),
            i.id,
            i.severity,
            i.status,
            human(i.acknowledge_secs),
            human(i.resolve_secs)
        );
    }
    m += "\n## Noisiest series\n\n| series | labels | anomalies |\n|---|---|---:|\n";
    for n in &w.noisiest {
        m += &format!(
            "| {} (`{}`) | {} | {} |\n",
            cell(&n.name),
            n.series_id,
            cell(&labels_text(&n.labels)),
            n.anomalies
        );
    }
    m += "\n## Capacity warnings\n\n";
    if w.capacity.is_empty() {
        m += "No forecast crossed a threshold this week.\n";
    } else {
        m += "| series | labels | threshold | limit | reaches it (forecast) | earliest (interval) | warned at |\n|---|---|---|---:|---|---|---|\n";
        for c in &w.capacity {
            m += &format!(
                "| {} (`{}`) | {} | {} | {} | {} | {} | {} |\n",
                cell(&c.name),
                c.series_id,
                cell(&labels_text(&c.labels)),
                cell(&c.threshold),
                c.limit,
                c.eta.map_or("–".into(), day),
                day(c.earliest),
                day(c.raised_at)
            );
        }
    }
    m
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one HTML page: the Markdown's tables and headings, the charts inline.
pub fn html(w: &Weekly, charts: &[(String, String)]) -> String {
    let mut h = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Seismo weekly report</title>\n<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.n{text-align:right}</style></head><body>\n",
    );
    let mut in_table = false;
    for line in markdown(w).lines() {
        if let Some(rest) = line.strip_prefix("![") {
            let file = rest.split("](").nth(1).unwrap_or("").trim_end_matches(')');
            if let Some((_, svg)) = charts.iter().find(|(n, _)| n == file) {
                h += svg;
                h += "\n";
            }
            continue;
        }
        if line.starts_with('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                h += "<table>\n";
                in_table = true;
            }
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| escape(c.trim()).replace("\\|", "|"))
                .collect();
            h += "<tr>";
            for c in cells {
                let numeric = c.parse::<f64>().is_ok();
                h += &format!("<td{}>{c}</td>", if numeric { " class=\"n\"" } else { "" });
            }
            h += "</tr>\n";
            continue;
        }
        if in_table {
            h += "</table>\n";
            in_table = false;
        }
        if let Some(t) = line.strip_prefix("# ") {
            h += &format!("<h1>{}</h1>\n", escape(t));
        } else if let Some(t) = line.strip_prefix("## ") {
            h += &format!("<h2>{}</h2>\n", escape(t));
        } else if !line.is_empty() {
            let text = escape(line);
            // **bold**
            let mut out = String::new();
            for (i, part) in text.split("**").enumerate() {
                if i % 2 == 1 {
                    out += &format!("<b>{part}</b>");
                } else {
                    out += part;
                }
            }
            h += &format!("<p>{out}</p>\n");
        }
    }
    if in_table {
        h += "</table>\n";
    }
    h += "</body></html>\n";
    h
}

/// Writes `report.md`, `report.html`, `report.json` and the charts into `dir`.
pub fn write(w: &Weekly, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let charts = charts(w);
    for (name, svg) in &charts {
        std::fs::write(dir.join(name), svg)?;
    }
    std::fs::write(dir.join("report.md"), markdown(w))?;
    std::fs::write(dir.join("report.html"), html(w, &charts))?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(w)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_nearest_rank() {
        let d = Durations::of(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(d.count, 5);
        assert_eq!(d.median_secs, Some(3.0));
        assert_eq!(d.p90_secs, Some(5.0));
        assert_eq!(Durations::of(vec![]).median_secs, None);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Durations::of(ten).p90_secs, Some(9.0));
    }

    #[test]
    fn durations_read_for_people() {
        assert_eq!(human(Some(42.0)), "42 s");
        assert_eq!(human(Some(600.0)), "10 min");
        assert_eq!(human(Some(5.5 * 3600.0)), "5.5 h");
        assert_eq!(human(None), "–");
    }
}
