//! `seismo eval host`: weeks of one server's metrics through the whole embedded pipeline, to measure what correlation costs over a long run.
//!
//! A server-metric entity (the layout of ../shared/data/multivariate: `train.csv` then
//! `test.csv`, one row a sampling step) is sent as one host, every row one record of one
//! point per metric, through `seismo run`'s embedded stages, bus and a SQLite file store.
//! What is measured is what grew with the run: wall time from the first point sent to the
//! last stage drained, resident memory at the end of every day, and the size of the
//! incidents (members and the bytes of their API answer). Run once as is and once with
//! `--no-correlate`, as separate processes (`scripts/bench-long-host.sh`): the ratio of the
//! two drain times is what correlation costs.
#![expect(
    clippy::disallowed_methods,
    reason = "evaluations report their wall time"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::multivariate::{self, Entity};
use crate::cli::Stage;
use crate::pipeline::Embedded;

/// The first row's time, as `seismo eval multivariate` dates it: a Monday, 00:00 UTC.
const EPOCH_MS: i64 = 1_767_571_200_000;
/// Rows sent per bus append: an hour of one-minute rows, as a scraper's batch might be.
const ROWS_PER_SEND: usize = 60;
/// A day's points may wait on the bus, no more: the sender holds back beyond that, so the
/// memory read at the end of a day is the pipeline's at that day, not at a backlog's.
const MAX_DAYS_WAITING: u64 = 1;

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub entity: String,
    pub metrics: usize,
    pub rows: usize,
    pub days: f64,
    pub points: u64,
    pub correlate: bool,
    /// From the first point sent to every stage drained, seconds.
    pub wall_secs: f64,
    pub points_per_sec: f64,
    /// Resident memory once each day's rows were sent, MiB.
    pub rss_mib_by_day: Vec<f64>,
    /// The process's peak resident memory, MiB (Linux's VmHWM).
    pub peak_rss_mib: f64,
    pub anomalies: u64,
    pub incidents: usize,
    /// Signals (anomalies and alerts) of the largest incident.
    pub largest_incident_signals: usize,
    /// Bytes of `GET /api/v1/incidents/{id}` for the largest incident.
    pub largest_get_bytes: usize,
    /// Incidents opened per day of the rows outside the labelled anomalies (train rows and
    /// test rows more than an hour from a labelled segment).
    pub quiet_incidents_per_day: f64,
    pub quiet_days: f64,
    /// Labelled test segments in which an incident opened.
    pub segments_with_incident: usize,
    pub segments: usize,
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Reads the entity named `name` under `dir` (an entity folder, a group or a folder of
/// groups), or the first one; only that one is read, so the memory measured is the run's.
pub fn pick(dir: &Path, name: Option<&str>) -> anyhow::Result<Entity> {
    let named =
        |p: &Path| name.is_none_or(|n| p.file_name().is_some_and(|f| f.to_string_lossy() == n));
    let (group, path) = multivariate::entity_dirs(dir)?
        .into_iter()
        .find(|(_, p)| named(p))
        .with_context(|| {
            format!(
                "no entity {} under {}",
                name.map(|n| format!("{n:?}")).unwrap_or_default(),
                dir.display()
            )
        })?;
    multivariate::open_entity(&path, &group, multivariate::default_step(&group))
}

/// Streams `e` (train rows, then test rows) through the embedded pipeline and measures it.
pub async fn run(base: &crate::Config, e: &Entity, correlate: bool) -> anyhow::Result<Report> {
    use seismo_schemas::{MetricPoint, topics};
    use seismo_store::{SqliteStore, Store};
    use seismo_transport::{OutRecord, Producer};

    let width = e.metrics.len();
    let rows = e.train.len() / width.max(1) + e.labels.len();
    let train_rows = e.train.len() / width.max(1);
    let step_ms = e.step_secs as i64 * 1000;
    let mut cfg = base.clone();
    cfg.ingest.backfill = true;
    cfg.detect.bucket_secs = e.step_secs;
    let dir = tempfile::Builder::new().prefix("seismo-host").tempdir()?;
    cfg.bus.dir = dir.path().join("bus").display().to_string();
    let url = format!("sqlite://{}", dir.path().join("seismo.db").display());
    let store = SqliteStore::connect(&url).await?;
    store.migrate().await?;
    let store: Arc<dyn Store> = Arc::new(store);
    let skip: &[Stage] = if correlate { &[] } else { &[Stage::Correlate] };
    let pipeline = Embedded::start_without(&cfg, store.clone(), skip)?;

    let row = |r: usize| -> &[f64] {
        if r < train_rows {
            &e.train[r * width..(r + 1) * width]
        } else {
            let t = r - train_rows;
            &e.test[t * width..(t + 1) * width]
        }
    };
    let labels: BTreeMap<String, String> = [("host".to_string(), e.name.clone())].into();
    let rows_per_day = (86_400 / e.step_secs.max(1)) as usize;
    let started = Instant::now();
    let mut rss_by_day = Vec::new();
    let mut points = 0u64;
    let mut day_bytes = 0u64;
    let mut sent_in_day = 0u64;
    let mut r = 0;
    while r < rows {
        let end = (r + ROWS_PER_SEND).min(rows);
        let mut records = Vec::with_capacity(end - r);
        for i in r..end {
            let ts = EPOCH_MS + i as i64 * step_ms;
            let mut body = Vec::new();
            for (m, &value) in e.metrics.iter().zip(row(i)) {
                if !value.is_finite() {
                    continue;
                }
                serde_json::to_writer(
                    &mut body,
                    &MetricPoint {
                        tenant: seismo_schemas::DEFAULT_TENANT.into(),
                        name: m.clone(),
                        labels: labels.clone(),
                        ts,
                        value,
                    },
                )?;
                body.push(b'\n');
                points += 1;
            }
            sent_in_day += body.len() as u64;
            records.push(OutRecord::new(Vec::new(), body));
        }
        pipeline.source.send(topics::METRICS, records).await?;
        let day_before = r / rows_per_day;
        r = end;
        if r / rows_per_day != day_before || r == rows {
            day_bytes = day_bytes.max(sent_in_day);
            sent_in_day = 0;
            // Hold back until at most a day's points wait for ingest.
            while pipeline.bus.backlog_bytes(topics::METRICS) > MAX_DAYS_WAITING * day_bytes {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            rss_by_day.push(seismo_runtime::resident_bytes() as f64 / MIB);
        }
    }
    let stats = pipeline.finish().await?;
    let wall = started.elapsed().as_secs_f64();

    // Every incident, then the largest one's API answer.
    let incidents =
        seismo_store::all_incidents(store.as_ref(), seismo_schemas::DEFAULT_TENANT).await?;
    let mut largest: Option<(usize, String)> = None;
    for i in &incidents {
        let full = store
            .get_incident(seismo_schemas::DEFAULT_TENANT, &i.id)
            .await?;
        let n = full.anomaly_ids.len() + full.alert_fingerprints.len();
        if largest.as_ref().is_none_or(|(m, _)| n > *m) {
            largest = Some((n, i.id.clone()));
        }
    }
    // The API's own router, in this process only (no listener), so no token is needed.
    cfg.http.auth = seismo_api::AuthMode::Off;
    let router = crate::http::router(&cfg, None, Some(store.clone()), Default::default());
    let largest_get_bytes = match &largest {
        Some((_, id)) => get_bytes(router, &format!("/api/v1/incidents/{id}")).await?,
        None => 0,
    };

    // Quiet time: rows more than an hour from any labelled segment.
    let margin = (3_600 / e.step_secs.max(1)) as usize;
    let segments = e.segments();
    let near_fault = |row: usize| {
        row >= train_rows
            && segments
                .iter()
                .any(|&(s, t)| row + margin >= s + train_rows && row < t + train_rows + margin)
    };
    let quiet_rows = (0..rows).filter(|&r| !near_fault(r)).count();
    let row_of = |i: &seismo_schemas::Incident| {
        ((i.started_at.timestamp_millis() - EPOCH_MS).max(0) / step_ms) as usize
    };
    let quiet_opened = incidents.iter().filter(|i| !near_fault(row_of(i))).count();
    let segments_with_incident = segments
        .iter()
        .filter(|&&(s, t)| {
            incidents.iter().any(|i| {
                let r = row_of(i);
                r >= s + train_rows && r < t + train_rows + margin
            })
        })
        .count();
    let quiet_days = quiet_rows as f64 / rows_per_day as f64;
    Ok(Report {
        entity: format!("{}/{}", e.group, e.name),
        metrics: width,
        rows,
        days: rows as f64 / rows_per_day as f64,
        points,
        correlate,
        wall_secs: wall,
        points_per_sec: points as f64 / wall.max(1e-9),
        rss_mib_by_day: rss_by_day,
        peak_rss_mib: peak_rss_bytes() as f64 / MIB,
        anomalies: stats.detect.anomalies,
        incidents: incidents.len(),
        largest_incident_signals: largest.map(|l| l.0).unwrap_or(0),
        largest_get_bytes,
        quiet_incidents_per_day: quiet_opened as f64 / quiet_days.max(1e-9),
        quiet_days,
        segments_with_incident,
        segments: segments.len(),
    })
}

/// The body size of a GET through the API's own router.
async fn get_bytes(router: axum::Router, path: &str) -> anyhow::Result<usize> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::get(path)
        .header("host", "127.0.0.1")
        .body(axum::body::Body::empty())?;
    let resp = router.oneshot(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "GET {path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body.len())
}

/// The report as text.
pub fn render(r: &Report) -> String {
    let by_day = |i: usize| r.rss_mib_by_day.get(i).copied().unwrap_or(f64::NAN);
    let n = r.rss_mib_by_day.len();
    format!(
        "{entity}: {metrics} metrics, {rows} rows ({days:.1} days), {points} points, correlation {corr}\n\
         drained in {wall:.1} s ({pps:.0} points/s)\n\
         resident memory, MiB: day 1 {d1:.0}, day {q} {dq:.0}, day {h} {dh:.0}, last day {dl:.0}; peak {peak:.0}\n\
         anomalies {anom}, incidents {inc}; largest incident {sig} signals, its GET {get} bytes\n\
         quiet stretches ({qd:.1} days, an hour or more from a labelled anomaly): {qpd:.2} incidents a day opened\n\
         labelled segments with an incident: {swi} of {seg}\n",
        entity = r.entity,
        metrics = r.metrics,
        rows = r.rows,
        days = r.days,
        points = r.points,
        corr = if r.correlate { "on" } else { "off" },
        wall = r.wall_secs,
        pps = r.points_per_sec,
        d1 = by_day(0),
        q = n / 4 + 1,
        dq = by_day(n / 4),
        h = n / 2 + 1,
        dh = by_day(n / 2),
        dl = by_day(n.saturating_sub(1)),
        peak = r.peak_rss_mib,
        anom = r.anomalies,
        inc = r.incidents,
        sig = r.largest_incident_signals,
        get = r.largest_get_bytes,
        qd = r.quiet_days,
        qpd = r.quiet_incidents_per_day,
        swi = r.segments_with_incident,
        seg = r.segments,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Three days of four noisy metrics a minute, two of them stepping up tenfold for 30
    /// minutes on the third day (the labelled segment).
    fn entity() -> Entity {
        let mut rng = SmallRng::seed_from_u64(7);
        let (width, train_rows, test_rows) = (4, 1440, 2880);
        // Test rows 600..630 (10:00 to 10:30 of the third day).
        let fault = 600..630;
        let mut value = |m: usize, faulty: bool| {
            let base = 10.0 + m as f64 + rng.random_range(-0.3..0.3);
            if m < 2 && faulty { base * 10.0 } else { base }
        };
        let mut train = Vec::new();
        for _ in 0..train_rows {
            for m in 0..width {
                train.push(value(m, false));
            }
        }
        let mut test = Vec::new();
        for r in 0..test_rows {
            for m in 0..width {
                test.push(value(m, fault.contains(&r)));
            }
        }
        Entity {
            group: "gen".into(),
            name: "host-1".into(),
            step_secs: 60,
            metrics: (0..width).map(|m| format!("m{m}")).collect(),
            train,
            test,
            labels: (0..test_rows).map(|r| fault.contains(&r)).collect(),
            lines: vec![(600, 630, vec![0, 1])],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_host_run_is_measured_with_and_without_correlation() {
        let e = entity();
        let cfg = crate::Config::default();
        let on = run(&cfg, &e, true).await.unwrap();
        assert_eq!(on.points, 4 * 4320);
        assert_eq!(on.rss_mib_by_day.len(), 3, "{on:?}");
        assert!(on.anomalies > 0, "{on:?}");
        assert_eq!(on.segments, 1);
        assert_eq!(on.segments_with_incident, 1, "{on:?}");
        assert!(on.largest_incident_signals >= 2, "{on:?}");
        assert!(on.largest_get_bytes > 0, "{on:?}");
        let off = run(&cfg, &e, false).await.unwrap();
        assert_eq!(
            off.anomalies, on.anomalies,
            "detect does not depend on correlate"
        );
        assert_eq!(off.incidents, 0, "{off:?}");
        assert!(render(&on).contains("correlation on"));
    }
}
