//! Ingest's bounds on hostile or mistaken input: the `[ingest]` options and the series limiter.
//!
//! Every bound is an option with a safe default, every refusal names its option, and
//! every refusal is counted in `seismo_ingest_refused_total{limit}` (see [`Limit`]).
#![expect(
    clippy::disallowed_methods,
    reason = "ingest times requests and stamps receipt in wall time"
)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use seismo_schemas::{MetricPoint, SeriesId};
use serde::{Deserialize, Serialize};

use crate::{Parsed, metrics};

/// The `[ingest]` section: what one request or bus record may hold, which timestamps are
/// accepted, and how many series a tenant may keep active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Points whose `ts` is older than this many seconds before now are refused (unless
    /// `backfill`), in seconds. Detect and forecast learn in event time; a stray old point
    /// would be scored against a baseline that has moved on.
    pub max_past_secs: u64,
    /// Points whose `ts` is more than this many seconds after now are refused, in seconds
    /// (clock skew allowance; a point from the future would hold event time up).
    pub max_future_secs: u64,
    /// Accepts points of any age (still within 2000..2100): for loading history. Turns
    /// both `max_past_secs` and `max_future_secs` off.
    pub backfill: bool,
    /// Most series one tenant may have active (a point seen within `series_idle_secs`);
    /// a point of a further new series is refused, active series go on, in series.
    pub max_series_per_tenant: usize,
    /// A series with no point for this long stops counting as active, in seconds.
    pub series_idle_secs: u64,
    /// Most tenants with active series; a point of a further tenant is refused, in
    /// tenants. The limiter holds about 20 bytes per active series, so its memory is at
    /// most about max_tenants × max_series_per_tenant × 20 bytes.
    pub max_tenants: usize,
    /// Most refused lines an error answer lists (each reason cut to 256 bytes), in lines;
    /// the rest are only counted (`rejected_count`). Also the most refused lines of one
    /// bus record sent to `seismo.dlq` one by one; beyond it the whole record goes once.
    pub max_rejections_listed: usize,
    /// Largest decompressed body (gzip JSON lines, snappy remote_write), in bytes (413
    /// beyond, found before the body is decompressed whole).
    pub max_decompressed_bytes: usize,
    /// Most points in one request or bus record (non-blank JSON lines, remote_write
    /// samples), in points (413 beyond).
    pub max_points_per_request: usize,
    /// Most alerts in one Alertmanager webhook, in alerts (413 beyond).
    pub max_alerts_per_request: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_past_secs: 7 * 86_400,
            max_future_secs: 600,
            backfill: false,
            max_series_per_tenant: 100_000,
            series_idle_secs: 86_400,
            max_tenants: 10_000,
            max_rejections_listed: 100,
            max_decompressed_bytes: 32 << 20,
            max_points_per_request: 200_000,
            max_alerts_per_request: 10_000,
        }
    }
}

/// Every bound ingest enforces, as the `limit` label of `seismo_ingest_refused_total`:
/// a fixed set, so the metric's cardinality is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxPastSecs,
    MaxFutureSecs,
    MaxSeriesPerTenant,
    MaxTenants,
    MaxDecompressedBytes,
    MaxPointsPerRequest,
    MaxAlertsPerRequest,
    /// One of the per-alert bounds of `AlertmanagerAlert` (its name says which).
    Alert(AlertLimit),
    /// The caller's ingest quota (a per-token rate).
    Quota,
}

/// The per-alert bounds (constants of `seismo_schemas::AlertmanagerAlert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertLimit {
    Labels,
    Annotations,
    NameBytes,
    LabelValueBytes,
    AnnotationValueBytes,
}

impl Limit {
    /// The metric label, which is also the option's name under `[ingest]`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxPastSecs => "max_past_secs",
            Limit::MaxFutureSecs => "max_future_secs",
            Limit::MaxSeriesPerTenant => "max_series_per_tenant",
            Limit::MaxTenants => "max_tenants",
            Limit::MaxDecompressedBytes => "max_decompressed_bytes",
            Limit::MaxPointsPerRequest => "max_points_per_request",
            Limit::MaxAlertsPerRequest => "max_alerts_per_request",
            Limit::Alert(AlertLimit::Labels) => "alert_labels",
            Limit::Alert(AlertLimit::Annotations) => "alert_annotations",
            Limit::Alert(AlertLimit::NameBytes) => "alert_name_bytes",
            Limit::Alert(AlertLimit::LabelValueBytes) => "alert_label_value_bytes",
            Limit::Alert(AlertLimit::AnnotationValueBytes) => "alert_annotation_value_bytes",
            Limit::Quota => "quota",
        }
    }

    /// The limit named by `seismo_schemas::AlertError::limit`.
    pub fn of_alert(name: &str) -> Option<Limit> {
        let a = match name {
            "alert_labels" => AlertLimit::Labels,
            "alert_annotations" => AlertLimit::Annotations,
            "alert_name_bytes" => AlertLimit::NameBytes,
            "alert_label_value_bytes" => AlertLimit::LabelValueBytes,
            "alert_annotation_value_bytes" => AlertLimit::AnnotationValueBytes,
            _ => return None,
        };
        Some(Limit::Alert(a))
    }

    /// Counts `n` refusals (points for per-point bounds, requests or records otherwise).
    pub fn count(self, n: u64) {
        if n > 0 {
            metrics::REFUSED
                .with_label_values(&[self.as_str()])
                .inc_by(n);
        }
    }
}

/// A refusal of a whole request or record because it is too large: 413 over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    pub limit: Limit,
    pub message: String,
}

/// The timestamps a point may have, in UTC ms (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub earliest_ms: i64,
    pub latest_ms: i64,
    max_past_secs: u64,
    max_future_secs: u64,
}

impl TimeWindow {
    /// The window around `now_ms` under `cfg`; `None` with `backfill` (any age).
    pub fn around(now_ms: i64, cfg: &IngestConfig) -> Option<TimeWindow> {
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
        (!cfg.backfill).then(|| TimeWindow {
            earliest_ms: now_ms.saturating_sub(secs(cfg.max_past_secs)),
            latest_ms: now_ms.saturating_add(secs(cfg.max_future_secs)),
            max_past_secs: cfg.max_past_secs,
            max_future_secs: cfg.max_future_secs,
        })
    }

    /// Whether `ts` is inside; the error names the option that refuses it.
    pub fn check(&self, ts: i64) -> Result<(), (Limit, String)> {
        let at = chrono::DateTime::from_timestamp_millis(ts)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| ts.to_string());
        if ts < self.earliest_ms {
            return Err((
                Limit::MaxPastSecs,
                format!(
                    "ts {at} is more than {} s in the past (ingest.max_past_secs); load history with ingest.backfill = true",
                    self.max_past_secs
                ),
            ));
        }
        if ts > self.latest_ms {
            return Err((
                Limit::MaxFutureSecs,
                format!(
                    "ts {at} is more than {} s in the future (ingest.max_future_secs); is the producer's clock right?",
                    self.max_future_secs
                ),
            ));
        }
        Ok(())
    }
}

/// What a parser enforces while it reads one request or record.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Refused lines kept with their reason; the rest are only counted.
    pub max_listed: usize,
    /// Largest decompressed body, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most points (non-blank lines, samples).
    pub max_points: usize,
    /// Accepted timestamps; `None`: any (within 2000..2100).
    pub window: Option<TimeWindow>,
}

impl ParseLimits {
    /// Bounds that only keep memory in check: no time window, no point limit beyond what
    /// the body holds, and the default number of listed refusals.
    pub fn lenient() -> ParseLimits {
        let d = IngestConfig::default();
        ParseLimits {
            max_listed: d.max_rejections_listed,
            max_decompressed_bytes: d.max_decompressed_bytes,
            max_points: usize::MAX,
            window: None,
        }
    }
}

/// Ingest's limits for one process: the options, and the active-series limiter that the
/// HTTP handlers and the ingest stage share (cheap to clone; clones share the limiter).
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    config: IngestConfig,
    series: SeriesLimiter,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(config: IngestConfig) -> Limits {
        let series = SeriesLimiter::new(&config);
        Limits {
            inner: Arc::new(Inner { config, series }),
        }
    }

    /// Reports points older than their series' newest bucket of `secs` (detect's buckets):
    /// detect will not score them. Call before the limits are shared.
    pub fn with_detect_bucket(mut self, secs: u64) -> Limits {
        let inner = Arc::get_mut(&mut self.inner).expect("limits not shared yet");
        inner.series.bucket_ms = i64::try_from(secs).unwrap_or(0).saturating_mul(1000);
        self
    }

    pub fn config(&self) -> &IngestConfig {
        &self.inner.config
    }

    /// What parsers enforce for a request or record arriving at `now_ms`.
    pub fn parse_limits(&self, now_ms: i64) -> ParseLimits {
        let c = &self.inner.config;
        ParseLimits {
            max_listed: c.max_rejections_listed,
            max_decompressed_bytes: c.max_decompressed_bytes,
            max_points: c.max_points_per_request,
            window: TimeWindow::around(now_ms, c),
        }
    }

    /// Refuses the points of `parsed` whose series would exceed the series limits at
    /// `now_ms` (wall clock, UTC ms): they move to its refusals, with a reason. Returns
    /// how many admitted points are late: older than the newest bucket this process has
    /// seen of their series, so detect will store them but not score them.
    pub fn admit_series(&self, parsed: &mut Parsed, now_ms: i64) -> usize {
        if parsed.points.is_empty() {
            return 0;
        }
        // Series ids are hashed before taking the lock, which is then held only for the
        // map look-ups.
        let ids: Vec<SeriesId> = parsed.points.iter().map(MetricPoint::series_id).collect();
        let verdicts = self.inner.series.admit(&parsed.points, &ids, now_ms);
        let c = &self.inner.config;
        let late = verdicts.iter().filter(|v| matches!(v, Ok(true))).count();
        let refused: Vec<(usize, String)> = verdicts
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let limit = v.err()?;
                limit.count(1);
                let p = &parsed.points[i];
                Some((
                    i,
                    match limit {
                        Limit::MaxTenants => format!(
                            "tenant {:?} has no active series and {} tenants already do (ingest.max_tenants)",
                            p.tenant, c.max_tenants
                        ),
                        _ => format!(
                            "series {} is new and tenant {:?} already has {} active series (ingest.max_series_per_tenant; a series stays active for ingest.series_idle_secs after its last point)",
                            p.name, p.tenant, c.max_series_per_tenant
                        ),
                    },
                ))
            })
            .collect();
        parsed.refuse_points(refused);
        late
    }

    /// Active series of `tenant` now, for tests and diagnostics.
    pub fn active_series(&self, tenant: &str) -> usize {
        self.inner.series.active(tenant)
    }
}

/// The per-tenant active-series limiter: series id → when its last point arrived (wall
/// clock) and its newest bucket, swept of idle series every `sweep_every_ms`. Memory is
/// bounded by the limits: at most `max_tenants` maps of at most `max_series` entries.
struct SeriesLimiter {
    /// Detect's bucket width (0: lateness is not reported).
    bucket_ms: i64,
    max_series: usize,
    max_tenants: usize,
    idle_ms: i64,
    sweep_every_ms: i64,
    /// A std mutex, not Tokio's: nothing awaits while it is held, and each holder only
    /// does hash look-ups for one request or record.
    state: Mutex<SeriesState>,
}

#[derive(Default)]
struct SeriesState {
    /// Per tenant, per series: (wall-clock ms of its last point, its newest bucket).
    tenants: HashMap<String, HashMap<SeriesId, (i64, i64)>>,
    last_sweep_ms: i64,
}

impl SeriesLimiter {
    fn new(cfg: &IngestConfig) -> SeriesLimiter {
        let idle_ms = i64::try_from(cfg.series_idle_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        SeriesLimiter {
            bucket_ms: 0,
            max_series: cfg.max_series_per_tenant,
            max_tenants: cfg.max_tenants,
            idle_ms,
            // A tenth of the idle time (within 1 s..60 s): a series is counted at most
            // that much longer than `series_idle_secs`, and a sweep, which walks every
            // entry, runs rarely enough to cost little.
            sweep_every_ms: (idle_ms / 10).clamp(1_000, 60_000),
            state: Mutex::new(SeriesState::default()),
        }
    }

    /// Admits each point's series (`ids[i]` is `points[i]`'s), in order, saying whether
    /// the point is late; a refusal names the limit that refused it.
    fn admit(
        &self,
        points: &[MetricPoint],
        ids: &[SeriesId],
        now_ms: i64,
    ) -> Vec<Result<bool, Limit>> {
        let mut s = self.state.lock().expect("series limiter lock");
        if now_ms.saturating_sub(s.last_sweep_ms) >= self.sweep_every_ms {
            let oldest = now_ms.saturating_sub(self.idle_ms);
            s.tenants.retain(|_, series| {
                series.retain(|_, seen| seen.0 >= oldest);
                !series.is_empty()
            });
            s.last_sweep_ms = now_ms;
        }
        let SeriesState { tenants, .. } = &mut *s;
        points
            .iter()
            .zip(ids)
            .map(|(p, id)| {
                if !tenants.contains_key(&p.tenant) {
                    if tenants.len() >= self.max_tenants {
                        return Err(Limit::MaxTenants);
                    }
                    tenants.insert(p.tenant.clone(), HashMap::new());
                }
                let series = tenants.get_mut(&p.tenant).expect("inserted above");
                let full = series.len() >= self.max_series;
                let bucket = if self.bucket_ms > 0 {
                    p.ts.div_euclid(self.bucket_ms)
                } else {
                    0
                };
                match series.entry(*id) {
                    Entry::Occupied(mut seen) => {
                        let (t, newest) = seen.get_mut();
                        *t = (*t).max(now_ms);
                        let late = bucket < *newest;
                        *newest = (*newest).max(bucket);
                        Ok(late)
                    }
                    Entry::Vacant(_) if full => Err(Limit::MaxSeriesPerTenant),
                    Entry::Vacant(v) => {
                        v.insert((now_ms, bucket));
                        Ok(false)
                    }
                }
            })
            .collect()
    }

    fn active(&self, tenant: &str) -> usize {
        let s = self.state.lock().expect("series limiter lock");
        s.tenants.get(tenant).map_or(0, HashMap::len)
    }
}

/// The current wall-clock time, in UTC ms.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(tenant: &str, host: usize, ts: i64) -> MetricPoint {
        MetricPoint {
            tenant: tenant.into(),
            name: "cpu".into(),
            labels: [("host".to_string(), format!("h{host}"))].into(),
            ts,
            value: 1.0,
        }
    }

    fn parsed(points: Vec<MetricPoint>) -> Parsed {
        let mut p = Parsed::new(100);
        p.origins = (1..=points.len()).collect();
        p.points = points;
        p
    }

    #[test]
    fn new_series_are_refused_at_the_limit_until_old_ones_go_idle() {
        let limits = Limits::new(IngestConfig {
            max_series_per_tenant: 2,
            series_idle_secs: 60,
            ..IngestConfig::default()
        });
        let t0 = 1_000_000_000;
        let mut p = parsed(vec![point("a", 1, 0), point("a", 2, 0), point("a", 3, 0)]);
        limits.admit_series(&mut p, t0);
        assert_eq!(p.points.len(), 2);
        assert_eq!(p.rejected_count, 1);
        assert_eq!(p.rejected[0].line, 3);
        assert!(
            p.rejected[0]
                .reason
                .contains("ingest.max_series_per_tenant")
        );
        // The active series go on; another tenant has its own budget.
        let mut p = parsed(vec![point("a", 2, 0), point("a", 1, 0), point("b", 3, 0)]);
        limits.admit_series(&mut p, t0 + 30_000);
        assert_eq!((p.points.len(), p.rejected_count), (3, 0));
        // h1 and h2 were seen at +30 s; at +95 s they are idle (and swept), so h3 fits.
        let mut p = parsed(vec![point("a", 3, 0)]);
        limits.admit_series(&mut p, t0 + 95_000);
        assert_eq!((p.points.len(), p.rejected_count), (1, 0));
        assert_eq!(limits.active_series("a"), 1);
    }

    #[test]
    fn points_older_than_their_series_newest_bucket_are_counted_late() {
        let limits = Limits::new(IngestConfig::default()).with_detect_bucket(60);
        // h1 at minutes 5 and 7, h2 at minute 3: nothing is late yet.
        let mut p = parsed(vec![
            point("a", 1, 5 * 60_000),
            point("a", 1, 7 * 60_000),
            point("a", 2, 3 * 60_000),
        ]);
        assert_eq!(limits.admit_series(&mut p, 0), 0);
        // h1 in its newest bucket (7:30) is on time; at 6:59 it is late; h2 moves on.
        let mut p = parsed(vec![
            point("a", 1, 7 * 60_000 + 30_000),
            point("a", 1, 7 * 60_000 - 1),
            point("a", 2, 4 * 60_000),
        ]);
        assert_eq!(limits.admit_series(&mut p, 1_000), 1);
        assert_eq!(
            p.points.len(),
            3,
            "late points are still accepted (and stored)"
        );
        // Without detect's bucket width nothing is reported.
        let off = Limits::new(IngestConfig::default());
        let mut p = parsed(vec![point("a", 1, 7 * 60_000), point("a", 1, 0)]);
        assert_eq!(off.admit_series(&mut p, 0), 0);
    }

    #[test]
    fn tenants_beyond_the_limit_are_refused() {
        let limits = Limits::new(IngestConfig {
            max_tenants: 1,
            ..IngestConfig::default()
        });
        let mut p = parsed(vec![point("a", 1, 0), point("b", 1, 0), point("a", 2, 0)]);
        limits.admit_series(&mut p, 0);
        assert_eq!(p.points.len(), 2);
        assert!(
            p.rejected[0].reason.contains("ingest.max_tenants"),
            "{:?}",
            p.rejected
        );
        assert_eq!(p.rejected[0].line, 2);
    }

    #[test]
    fn the_window_names_the_option_that_refuses() {
        let cfg = IngestConfig::default();
        let now = 1_800_000_000_000;
        let w = TimeWindow::around(now, &cfg).unwrap();
        assert_eq!(w.check(now), Ok(()));
        assert_eq!(w.check(now - 7 * 86_400_000), Ok(()));
        let (l, m) = w.check(now - 7 * 86_400_000 - 1).unwrap_err();
        assert_eq!(l, Limit::MaxPastSecs);
        assert!(
            m.contains("ingest.max_past_secs") && m.contains("backfill"),
            "{m}"
        );
        assert_eq!(w.check(now + 600_000), Ok(()));
        let (l, m) = w.check(now + 600_001).unwrap_err();
        assert_eq!(l, Limit::MaxFutureSecs);
        assert!(m.contains("ingest.max_future_secs"), "{m}");
        let backfill = IngestConfig {
            backfill: true,
            ..cfg
        };
        assert_eq!(TimeWindow::around(now, &backfill), None);
        // Absurd settings saturate rather than overflow.
        let huge = IngestConfig {
            max_past_secs: u64::MAX,
            max_future_secs: u64::MAX,
            ..IngestConfig::default()
        };
        let w = TimeWindow::around(now, &huge).unwrap();
        assert_eq!(w.latest_ms, i64::MAX);
        assert_eq!(w.check(946_684_800_000), Ok(()));
    }
}
